"""Atomic checkpoints: a kill at any moment never damages the last good one.

Layout of a run directory::

    run_dir/checkpoints/
        step-00000012/        one complete checkpoint
            model.pt          model state dict (tensors only; loaded with weights_only=True)
            optimizer.pt      optimizer (and scheduler) state dicts (tensors and numbers only)
            rng.pt            torch CPU / CUDA RNG states
            state.json        step, Python/NumPy RNG states, data-order state, extra trainer state
            config.yaml       the resolved config at save time
            manifest.json     written last: size and sha256 of every file above
        latest                text file naming the newest complete checkpoint (replaced atomically)
    run_dir/reference/
        model.pt              the KL reference's weights (``kl_coef > 0``), written once per run and never
                              pruned, so a resumed run reads back the reference the run started with
        manifest.json         size and sha256 of model.pt (written before it; absent in runs of turngym before
                              checksummed references, which resume with a warning that the file is unverified)

Protocol: every file is written and fsync'ed inside ``checkpoints/.tmp-step-...``, the manifest goes in
last, the folder is renamed to ``step-...`` (``os.replace``, atomic on POSIX), then ``latest`` is
replaced atomically, then checkpoints beyond ``keep`` are deleted (oldest first, renamed away before
removal). :func:`load_latest` trusts nothing: it tries ``latest`` and then every ``step-*`` folder,
newest first, and returns the first whose manifest verifies; partial temp folders are ignored and
swept on the next save. A folder loads only the files its manifest lists, each after its size and sha256 match.

`--resume` goes through :func:`resume_checkpoint`, which checks every file a resume reads before the trainer
writes anything: it names each rejected checkpoint and why (then uses the next older one), and raises
:class:`ResumeError` (the CLI exits 2, the run directory untouched) when checkpoints exist but none verifies, when
the KL reference does not match its checksum, or when the run's ``config.yaml`` does not match its checksum line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from turngym.errors import ConfigError, TurngymError

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ResumeError",
    "capture_rng",
    "checkpoint_dirs",
    "load_latest",
    "load_reference",
    "restore_rng",
    "resume_checkpoint",
    "save_checkpoint",
    "save_reference",
]

CKPT_SUBDIR = "checkpoints"
REFERENCE_SUBDIR = "reference"
LATEST = "latest"
_STEP_RE = re.compile(r"^step-(\d+)$")
_MANIFEST = "manifest.json"
_FORMAT = 1


class CheckpointError(TurngymError, RuntimeError):
    """A checkpoint could not be written or restored (not raised for a partial one: that is skipped)."""


class ResumeError(CheckpointError, ConfigError):
    """`--resume` cannot continue a run (no valid checkpoint, or a file it reads fails its checksum); raised before
    anything in the run directory is changed (a `ConfigError`, so `turngym train` exits 2)."""


@dataclass
class Checkpoint:
    """A verified checkpoint read back from disk.

    Attributes:
        path: Its folder.
        step: Training steps completed when it was saved.
        model_state: Model ``state_dict`` (or only trainable tensors when saved with ``trainable_only``).
        optimizer_state: Optimizer ``state_dict`` or None.
        scheduler_state: LR scheduler ``state_dict`` or None.
        rng: RNG states for :func:`restore_rng`.
        data_state: The trainer's data-order state (a JSON-able dict), e.g. the next task seed.
        extra: Any other JSON-able trainer state (NaN-guard counters, best eval, ...).
        config: The resolved config dict at save time.
        trainable_only: Whether ``model_state`` holds only the trainable tensors.
        components: ``{name: state_dict}`` of the learned signal components (`turngym.trainers.learned`), or None.
    """

    path: Path
    step: int
    model_state: dict[str, torch.Tensor] | None
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    rng: dict[str, Any]
    data_state: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    trainable_only: bool = False
    components: dict[str, Any] | None = None

    def restore(
        self,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        *,
        rng: bool = True,
    ) -> None:
        """Load the saved states into live objects (and the global RNGs unless ``rng=False``)."""
        if model is not None:
            if self.model_state is None:
                raise CheckpointError(f"checkpoint {self.path} holds no model state")
            _missing, unexpected = model.load_state_dict(self.model_state, strict=not self.trainable_only)
            if self.trainable_only and unexpected:
                raise CheckpointError(
                    f"checkpoint {self.path} has tensors the model lacks: {sorted(unexpected)[:5]}; "
                    "was it saved from a different model (or LoRA setting)?"
                )
        if optimizer is not None and self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        if scheduler is not None and self.scheduler_state is not None:
            scheduler.load_state_dict(self.scheduler_state)
        if rng:
            restore_rng(self.rng)


# --------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """Python, NumPy (global) and torch (CPU + every CUDA device) RNG states."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    out: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": _jsonable(np_state),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["torch_cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states are restored only when CUDA is available)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np_state = dict(state["numpy"])
        inner = dict(np_state["state"])
        inner["key"] = np.asarray(inner["key"], dtype=np.uint32)
        np_state["state"] = inner
        np.random.set_state(np_state)
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and math.isnan(obj):  # NaN -> null keeps strict JSON
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"checkpoint state must be JSON-able (dicts, lists, numbers, strings, numpy arrays); got {type(obj).__name__}"
    )


# --------------------------------------------------------------------------- save


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _torch_save_synced(obj: Any, path: Path) -> None:
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_state(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if trainable_only:
        keep = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in keep}
    return {k: v.detach().to("cpu").clone() for k, v in state.items()}


def step_dir_name(step: int) -> str:
    """``step-00000012``: zero-padded so names sort by step."""
    return f"step-{step:08d}"


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    data_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    config: Any = None,
    keep: int = 2,
    trainable_only: bool = False,
    rng: Mapping[str, Any] | None = None,
    components: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically and prune old ones.

    Args:
        run_dir: The run directory (checkpoints go to ``run_dir/checkpoints``).
        step: Training steps completed; names the checkpoint.
        model: Module whose ``state_dict`` is saved.
        optimizer: Optimizer whose ``state_dict`` is saved.
        scheduler: Optional LR scheduler (anything with ``state_dict``).
        data_state: JSON-able data-order state (next task seed, sampler state, ...).
        extra: Other JSON-able trainer state.
        config: Config dataclass or dict, stored as ``config.yaml``.
        keep: Number of most recent checkpoints to keep (>= 1).
        trainable_only: Save only parameters with ``requires_grad`` (LoRA adapters); restore with
            ``strict=False``.
        rng: RNG states to store; default :func:`capture_rng` at call time.
        components: ``{name: state_dict}`` of learned signal components (``components.pt``; tensors, numbers,
            strings, lists and dicts only, read back with ``weights_only=True``).

    Returns:
        The folder of the new checkpoint.
    """
    if keep < 1:
        raise ValueError(f"keep={keep} must be >= 1")
    if step < 0:
        raise ValueError(f"step={step} must be >= 0")
    root = Path(run_dir) / CKPT_SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    _sweep_partial(root)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        files: list[str] = []
        if model is not None:
            _torch_save_synced(_model_state(model, trainable_only), tmp / "model.pt")
            files.append("model.pt")
        if optimizer is not None or scheduler is not None:
            opt = {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
            }
            _torch_save_synced(opt, tmp / "optimizer.pt")
            files.append("optimizer.pt")
        if components:
            _torch_save_synced(dict(components), tmp / "components.pt")
            files.append("components.pt")
        rng_state = dict(rng) if rng is not None else capture_rng()
        tensors = {k: v for k, v in rng_state.items() if k in ("torch", "torch_cuda")}
        _torch_save_synced(tensors, tmp / "rng.pt")
        files.append("rng.pt")
        state = {
            "format": _FORMAT,
            "step": int(step),
            "time": time.time(),
            "trainable_only": bool(trainable_only),
            "rng": _jsonable({k: v for k, v in rng_state.items() if k not in tensors}),
            "data_state": _jsonable(dict(data_state or {})),
            "extra": _jsonable(dict(extra or {})),
        }
        _write_bytes_synced(tmp / "state.json", json.dumps(state, allow_nan=False).encode())
        files.append("state.json")
        if config is not None:
            _write_bytes_synced(tmp / "config.yaml", _config_yaml(config).encode())
            files.append("config.yaml")
        manifest = {
            "format": _FORMAT,
            "step": int(step),
            "files": {name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in files},
        }
        _write_bytes_synced(tmp / _MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): move the old one out of the way
            _remove_tree(final, root)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_latest(root, final.name)
    _prune(root, keep=keep, protect=final.name)
    return final


def _config_yaml(config: Any) -> str:
    from turngym.config import dump_yaml

    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dump_yaml(config)
    import yaml

    return yaml.safe_dump(_jsonable(dict(config)), sort_keys=False)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.{os.getpid()}.tmp"
    _write_bytes_synced(tmp, (name + "\n").encode())
    os.replace(tmp, root / LATEST)
    _fsync_dir(root)


def _remove_tree(path: Path, root: Path) -> None:
    trash = root / f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    os.replace(path, trash)  # atomic: the name never points at a half-deleted folder
    shutil.rmtree(trash, ignore_errors=True)


def _sweep_partial(root: Path) -> None:
    """Remove temp and trash folders left by a killed writer (only ones not owned by a live process)."""
    for p in root.iterdir():
        if not p.name.startswith((".tmp-", ".trash-")):
            continue
        parts = p.name.split("-")
        try:
            pid = int(parts[-2])
        except (ValueError, IndexError):
            pid = -1
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prune(root: Path, *, keep: int, protect: str) -> None:
    dirs = checkpoint_dirs(root.parent)
    for path in dirs[:-keep] if len(dirs) > keep else []:
        if path.name != protect:
            _remove_tree(path, root)


# --------------------------------------------------------------------------- load


def checkpoint_dirs(run_dir: str | os.PathLike[str]) -> list[Path]:
    """``step-*`` folders under ``run_dir/checkpoints``, oldest first (not verified)."""
    root = Path(run_dir) / CKPT_SUBDIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def verify(path: str | os.PathLike[str], *, required: tuple[str, ...] = ("state.json", "rng.pt")) -> str:
    """Why checkpoint folder ``path`` is unusable, or ``""`` when its manifest verifies.

    Checks that the manifest parses (and names the folder's step, for a ``step-*`` folder), that it lists the
    ``required`` files and every other file the loader would read, and that each listed file has its recorded size
    and sha256.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / _MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {_MANIFEST} (partial write)"
    except (OSError, ValueError) as err:
        return f"unreadable {_MANIFEST}: {err}"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return f"{_MANIFEST} lists no files"
    m = _STEP_RE.match(path.name)
    if m and manifest.get("step") != int(m.group(1)):
        return f"{_MANIFEST} is for step {manifest.get('step')!r}, not {int(m.group(1))}"
    for name in required:
        if name not in files:
            return f"{_MANIFEST} does not list {name}"
    for name in _LOADED:
        if name not in files and (path / name).exists():
            return f"{name} is not in {_MANIFEST} (unverified file)"
    for name, meta in files.items():
        f = path / name
        if not (isinstance(meta, dict) and isinstance(meta.get("size"), int) and isinstance(meta.get("sha256"), str)):
            return f"{_MANIFEST} has no size and sha256 for {name}"
        if not f.is_file():
            return f"missing {name}"
        size = f.stat().st_size
        if size < meta["size"]:
            return f"{name} is truncated: {size} bytes, {_MANIFEST} says {meta['size']}"
        if size != meta["size"]:
            return f"{name} has {size} bytes, {_MANIFEST} says {meta['size']}"
        if _sha256(f) != meta["sha256"]:
            return f"{name} checksum mismatch (sha256 differs from {_MANIFEST}: changed after it was written)"
    return ""


#: Files :func:`load_checkpoint` reads; each must be listed (and so checksummed) in the manifest.
_LOADED = ("model.pt", "optimizer.pt", "rng.pt", "state.json", "config.yaml", "components.pt")


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read one checkpoint folder after verifying it (only the files its manifest lists are read).

    Raises:
        CheckpointError: The folder is partial or corrupt (the reason is in the message).
    """
    path = Path(path)
    problem = verify(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is unusable: {problem}")
    listed = set(json.loads((path / _MANIFEST).read_text())["files"])
    try:
        state = json.loads((path / "state.json").read_text())
        model_state = optimizer_state = scheduler_state = None
        if "model.pt" in listed:
            model_state = torch.load(path / "model.pt", map_location=map_location, weights_only=True)
        if "optimizer.pt" in listed:
            opt = torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True)
            optimizer_state, scheduler_state = opt.get("optimizer"), opt.get("scheduler")
        components = None
        if "components.pt" in listed:
            components = torch.load(path / "components.pt", map_location=map_location, weights_only=True)
        rng = dict(state.get("rng", {}))
        rng.update(torch.load(path / "rng.pt", map_location="cpu", weights_only=True))
        config: dict[str, Any] = {}
        if "config.yaml" in listed:
            import yaml

            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except Exception as err:  # verified bytes that still do not parse: treat as corrupt
        raise CheckpointError(f"checkpoint {path} is unusable: {type(err).__name__}: {err}") from err
    return Checkpoint(
        path=path,
        step=int(state["step"]),
        model_state=model_state,
        optimizer_state=optimizer_state,
        scheduler_state=scheduler_state,
        rng=rng,
        data_state=state.get("data_state", {}),
        extra=state.get("extra", {}),
        config=config,
        trainable_only=bool(state.get("trainable_only", False)),
        components=components,
    )


def _candidates(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``latest`` pointer's folder and every ``step-*`` folder, newest step first."""
    root = Path(run_dir) / CKPT_SUBDIR
    candidates: list[Path] = []
    try:
        name = (root / LATEST).read_text().strip()
        if _STEP_RE.match(name):
            candidates.append(root / name)
    except OSError:
        pass
    candidates += [p for p in reversed(checkpoint_dirs(run_dir)) if p not in candidates]
    # the pointer can lag behind a newer complete folder (killed between rename and pointer update)
    candidates.sort(key=lambda p: -int(_STEP_RE.match(p.name).group(1)))  # type: ignore[union-attr]
    return [p for p in candidates if p.is_dir()]


def load_latest(
    run_dir: str | os.PathLike[str], *, map_location: str | torch.device = "cpu", log: Any = None
) -> Checkpoint | None:
    """The newest checkpoint of ``run_dir`` that verifies, or None when there is none.

    Tries the ``latest`` pointer first, then every ``step-*`` folder newest first; partial or corrupt
    folders are skipped (``log``, if given, is called with a one-line reason for each). Trainers resume
    through :func:`resume_checkpoint`, which reports the skipped ones and refuses when none verifies.
    """
    for path in _candidates(run_dir):
        try:
            return load_checkpoint(path, map_location=map_location)
        except CheckpointError as err:
            if log is not None:
                log(f"skipping {err}")
    return None


def _warn_stderr(text: str) -> None:
    print(f"turngym: warning: {text}", file=sys.stderr, flush=True)


def resume_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    reference: bool = False,
    map_location: str | torch.device = "cpu",
    warn: Callable[[str], None] | None = None,
) -> Checkpoint | None:
    """The checkpoint `--resume` continues from, after checking every file a resume reads; writes nothing.

    Each rejected checkpoint folder is reported through ``warn`` (its path and the reason: which file, checksum
    mismatch, truncation, unreadable manifest) and the next older one is tried.

    Args:
        run_dir: The run directory to continue.
        reference: Also verify the stored KL reference (trainers pass ``kl_coef > 0``) when there is a checkpoint
            to continue from.
        map_location: Where the checkpoint's tensors are loaded.
        warn: Called with one line per problem that does not stop the resume; default: printed to stderr.

    Returns:
        The newest valid checkpoint, or None when the run has no checkpoint folder at all (it stopped before its
        first checkpoint, during the warm start): the run then starts over.

    Raises:
        ResumeError: ``run_dir`` holds checkpoints but none verifies; the KL reference fails its checksum; or
            ``config.yaml`` fails its checksum line. Nothing was changed.
    """
    from turngym.trainers.runlog import check_config_checksum, check_log_prefix

    warn = warn or _warn_stderr
    run = Path(run_dir)
    problem = check_config_checksum(run / "config.yaml")
    if problem:
        raise ResumeError(f"--resume {run}: {problem}; nothing was changed. Fix: give changes as key=value overrides "
                          "after `--resume RUN_DIR` instead of editing config.yaml, or delete its last line (the "
                          "checksum) to accept the file as it is.")
    if problem is None:
        warn(f"{run / 'config.yaml'} has no checksum line (written by hand or by an older turngym): unverified")
    ckpt, rejected = None, []
    candidates = _candidates(run)
    for i, path in enumerate(candidates):
        try:
            ckpt = load_checkpoint(path, map_location=map_location)
            break
        except CheckpointError as err:
            reason = str(err).split(" is unusable: ", 1)[-1]
            rejected.append(f"{path.name}: {reason}")
            warn(f"rejected checkpoint {path}: {reason}; "
                 + ("trying the next older one" if i + 1 < len(candidates) else "no older one"))
    if ckpt is None and rejected:
        raise ResumeError(f"--resume {run}: no valid checkpoint ({'; '.join(rejected)}); nothing was changed. "
                          "Fix: restore the checkpoints from a backup, or start a new run in another run_dir.")
    if reference and ckpt is not None:  # starting over stores a new reference
        problem = verify_reference(run)
        if problem:
            raise ResumeError(f"--resume {run}: {problem}; nothing was changed. Fix: restore the file from a backup, "
                              f"or delete {run / REFERENCE_SUBDIR} so the resumed weights become the new reference.")
        if problem is None:
            warn(f"{run / REFERENCE_SUBDIR / 'model.pt'} has no {_MANIFEST} (stored by an older turngym): "
                 "the KL reference is unverified")
    if ckpt is None:
        warn(f"--resume {run}: no checkpoint yet (the run stopped before its first one): starting over")
    else:
        for problem in check_log_prefix(run, ckpt.extra.get("runlog") or {}, ckpt.step):
            warn(problem)
    return ckpt


# --------------------------------------------------------------------------- KL reference


def save_reference(run_dir: str | os.PathLike[str], model: torch.nn.Module, *, trainable_only: bool = False) -> Path:
    """Store ``model``'s weights as the run's KL reference, ``run_dir/reference/model.pt`` (atomic replace).

    Outside ``checkpoints/``, so checkpoint pruning never removes it. Its size and sha256 go to
    ``reference/manifest.json``, replaced before the weights (a kill in between leaves a manifest without weights,
    which reads as "no stored reference").

    Args:
        run_dir: The run directory.
        model: The module whose ``state_dict`` is the reference.
        trainable_only: Store only parameters with ``requires_grad`` (LoRA adapters: the frozen base weights are
            rebuilt by the trainer's setup, as for checkpoints).

    Returns:
        The path of the written file.
    """
    root = Path(run_dir) / REFERENCE_SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / "model.pt"
    tmp = root / f".model.pt.{os.getpid()}.tmp"
    tmp_manifest = root / f".{_MANIFEST}.{os.getpid()}.tmp"
    try:
        _torch_save_synced(_model_state(model, trainable_only), tmp)
        manifest = {"format": _FORMAT, "files": {"model.pt": {"size": tmp.stat().st_size, "sha256": _sha256(tmp)}}}
        _write_bytes_synced(tmp_manifest, json.dumps(manifest, indent=1).encode())
        os.replace(tmp_manifest, root / _MANIFEST)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp_manifest.unlink(missing_ok=True)
        raise
    _fsync_dir(root)
    return final


def verify_reference(run_dir: str | os.PathLike[str]) -> str | None:
    """Why the stored KL reference of ``run_dir`` is unusable; ``""`` when it verifies or there is none; None when
    ``model.pt`` has no manifest (stored by a turngym before checksummed references: unverified)."""
    root = Path(run_dir) / REFERENCE_SUBDIR
    if not (root / "model.pt").is_file():
        return ""
    if not (root / _MANIFEST).exists():
        return None
    problem = verify(root, required=("model.pt",))
    return f"KL reference {root / 'model.pt'} is unusable: {problem}" if problem else ""


def load_reference(
    run_dir: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor] | None:
    """The KL reference weights :func:`save_reference` stored in ``run_dir``, or None when there are none.

    Verified against ``reference/manifest.json`` first (a reference without one, from an older turngym, loads
    unverified; :func:`resume_checkpoint` warns about it).

    Raises:
        CheckpointError: The file fails its checksum or does not load.
    """
    path = Path(run_dir) / REFERENCE_SUBDIR / "model.pt"
    if not path.is_file():
        return None
    problem = verify_reference(run_dir)
    if problem:
        raise CheckpointError(problem)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"KL reference {path} is unusable: {type(err).__name__}: {err}") from err
