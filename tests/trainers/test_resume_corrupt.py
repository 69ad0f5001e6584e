"""`--resume` never hides corruption: a rejected checkpoint is named with its reason and the next older one is
used; when checkpoints exist but none verifies, or the KL reference or config.yaml fails its checksum, `turngym
train --resume` exits 2 with one line and leaves the run directory byte-identical.

The run directories here are built without training (a tiny ``nn.Linear`` checkpointed by the real
`save_checkpoint`, config and metrics written by the real `RunLog`), so the refusals cost no model; one slow test
resumes a real tiny GRPO run past a damaged newest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from turngym.cli import main
from turngym.trainers.checkpoint import (
    CheckpointError,
    ResumeError,
    load_reference,
    resume_checkpoint,
    save_checkpoint,
    save_reference,
)
from turngym.trainers.config import resolve_train_config
from turngym.trainers.runlog import RunLog, check_config_checksum, read_metrics

TINY = [
    "env_id=search/HopQA-v0", "model=tiny", "model_size=1m", "device=cpu", "tasks_per_step=2", "group_size=2",
    "minibatch_size=4", "ppo_epochs=1", "sft_steps=0", "eval_tasks=1", "max_turns=2", "max_new_tokens=16",
    "max_traj_tokens=256", "save_trajectories=0", "tensorboard=false", "progress=false", "report=false",
    "torch_threads=1", "seed=0", "kl_coef=0.1", "checkpoint_every=1", "keep_checkpoints=10",
]
ALGOS = {
    "grpo": (None, [*TINY, "algo=grpo", "credit=grpo"]),
    "ppo": (None, [*TINY, "algo=ppo", "credit=gae"]),
    "multi": ("multi-searchteam", ["device=cpu", "progress=false", "tensorboard=false", "report=false"]),
}


def _make_run(tmp_path: Path, algo: str = "grpo", steps: tuple[int, ...] = (0, 1, 2)) -> Path:
    """A run directory as a trainer leaves it: config.yaml, metrics.jsonl, checkpoints ``steps``, KL reference."""
    preset, args = ALGOS[algo]
    run = tmp_path / "run"
    cfg = resolve_train_config(preset, [*args, f"run_dir={run}", f"cache_dir={tmp_path / 'cache'}"],
                               check_names=False)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with RunLog(run, cfg, progress=False) as log:
        save_reference(run, model)
        for step in steps:
            if step:
                model(torch.randn(3, 4)).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
            log.log(step, {"rollout/reward": 0.1 * step} if step else {"eval/success": 0.0},
                    kind="train" if step else "eval")
            save_checkpoint(run, step, model=model, optimizer=opt, config=cfg, keep=10,
                            extra={"runlog": log.state_dict()})
    return run


def _ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _snapshot(run: Path) -> dict[str, str]:
    """Every path under ``run`` -> sha256 of its bytes (``dir`` for folders)."""
    return {str(p.relative_to(run)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*"))}


# --------------------------------------------------------------------------- one damaged checkpoint: fall back


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda run: _flip_byte(_ckpt(run, 2) / "model.pt"), "model.pt checksum mismatch"),
        (lambda run: _truncate(_ckpt(run, 2) / "optimizer.pt"), "optimizer.pt is truncated"),
        (lambda run: (_ckpt(run, 2) / "manifest.json").write_text('{"format": 1, "files": {'),
         "unreadable manifest.json"),
        (lambda run: _flip_byte(_ckpt(run, 2) / "rng.pt"), "rng.pt checksum mismatch"),
    ],
    ids=["flipped-model-byte", "truncated-optimizer", "bad-manifest-json", "flipped-rng-byte"],
)
def test_damaged_newest_checkpoint_is_named_and_the_older_one_used(tmp_path, capsys, damage, reason):
    run = _make_run(tmp_path)
    damage(run)
    ckpt = resume_checkpoint(run, reference=True)
    assert ckpt is not None and ckpt.step == 1 and ckpt.path == _ckpt(run, 1)
    err = capsys.readouterr().err
    rejected = [line for line in err.splitlines() if "rejected checkpoint" in line]
    assert len(rejected) == 1, err
    assert str(_ckpt(run, 2)) in rejected[0] and reason in rejected[0], rejected[0]


def test_trainer_resumes_from_the_older_checkpoint_and_says_why(tmp_path, capsys, monkeypatch):
    """The trainer itself goes through the checks: grpo.train (trainers/loop.py) picks step 1 and names the damaged step 2 (stopped
    right after the check, before any model is built)."""
    from turngym.trainers import grpo, loop, policy_setup

    run = _make_run(tmp_path)
    _flip_byte(_ckpt(run, 2) / "model.pt")
    chosen = []
    real = loop.resume_checkpoint  # the loop every single-agent trainer runs
    monkeypatch.setattr(loop, "resume_checkpoint", lambda *a, **k: chosen.append(real(*a, **k)) or chosen[-1])

    class Stop(Exception):
        pass

    def stop(cfg):
        raise Stop

    monkeypatch.setattr(policy_setup, "setup", stop)
    with pytest.raises(Stop):
        grpo.train(resolve_train_config(None, [], resume_dir=str(run), check_names=False))
    assert [c.step for c in chosen] == [1]
    assert f"rejected checkpoint {_ckpt(run, 2)}: model.pt checksum mismatch" in capsys.readouterr().err


def test_unlisted_file_in_a_checkpoint_is_not_loaded(tmp_path):
    """A file the loader would read but the manifest does not list (so no checksum) rejects the folder."""
    run = _make_run(tmp_path)
    manifest = json.loads((_ckpt(run, 2) / "manifest.json").read_text())
    del manifest["files"]["optimizer.pt"]
    (_ckpt(run, 2) / "manifest.json").write_text(json.dumps(manifest))
    warnings: list[str] = []
    assert resume_checkpoint(run, warn=warnings.append).step == 1
    assert any("optimizer.pt is not in manifest.json" in w for w in warnings), warnings


# --------------------------------------------------------------------------- refusals: exit 2, nothing touched


@pytest.mark.parametrize("algo", ["grpo", "ppo", "multi"])
def test_all_checkpoints_corrupt_refuses_and_touches_nothing(tmp_path, capsys, algo):
    run = _make_run(tmp_path, algo)
    _flip_byte(_ckpt(run, 2) / "model.pt")
    _truncate(_ckpt(run, 1) / "optimizer.pt")
    (_ckpt(run, 0) / "manifest.json").write_text("not json")
    before = _snapshot(run)
    assert len(read_metrics(run)) == 3

    assert main(["train", "--resume", str(run)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "no valid checkpoint" in errors[0], errors
    for name in ("step-00000002: model.pt checksum mismatch", "step-00000001: optimizer.pt is truncated",
                 "step-00000000: unreadable manifest.json"):
        assert name in errors[0]
    assert _snapshot(run) == before, "the refused resume changed the run directory"


def test_flipped_byte_in_kl_reference_refuses_and_touches_nothing(tmp_path, capsys):
    run = _make_run(tmp_path)
    _flip_byte(run / "reference" / "model.pt")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_reference(run)
    with pytest.raises(ResumeError, match=r"KL reference .*model\.pt is unusable: model\.pt checksum mismatch"):
        resume_checkpoint(run, reference=True, warn=lambda _: None)
    assert resume_checkpoint(run, reference=False, warn=lambda _: None).step == 2  # kl_coef=0 never reads it

    before = _snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "KL reference" in errors[0] and "checksum mismatch" in errors[0], errors
    assert _snapshot(run) == before


def test_edited_config_yaml_refuses_and_touches_nothing(tmp_path, capsys):
    """config.yaml carries its sha256 in its last line; a changed value (here lr) is caught, not trained with."""
    run = _make_run(tmp_path)
    text = (run / "config.yaml").read_text()
    assert check_config_checksum(run / "config.yaml") == ""
    (run / "config.yaml").write_text(text.replace("\nlr: ", "\nlr: 1", 1))
    before = _snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "does not match its checksum line" in errors[0], errors
    assert _snapshot(run) == before


# --------------------------------------------------------------------------- accepted, with a warning


def test_files_without_checksums_from_older_runs_resume_with_a_warning(tmp_path):
    """A KL reference without manifest.json and a config.yaml without its checksum line (older turngym, or a
    config written by hand) are accepted, each with a warning that it is unverified."""
    run = _make_run(tmp_path)
    (run / "reference" / "manifest.json").unlink()
    lines = (run / "config.yaml").read_text().splitlines(keepends=True)
    assert lines[-1].startswith("# sha256")
    (run / "config.yaml").write_text("".join(lines[:-1]))
    warnings: list[str] = []
    assert resume_checkpoint(run, reference=True, warn=warnings.append).step == 2
    assert load_reference(run) is not None
    assert any("config.yaml has no checksum line" in w and "unverified" in w for w in warnings), warnings
    assert any("no manifest.json" in w and "unverified" in w for w in warnings), warnings


def test_edited_metrics_line_is_reported_but_does_not_block(tmp_path):
    """metrics.jsonl is a log, not training state: a changed line before the checkpoint is named, not refused."""
    run = _make_run(tmp_path)
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().replace('"rollout/reward": 0.1',
                                                                                   '"rollout/reward": 0.9'))
    warnings: list[str] = []
    assert resume_checkpoint(run, warn=warnings.append).step == 2
    assert [w for w in warnings if "metrics.jsonl up to step 2 differs from what was logged" in w], warnings
    warnings.clear()
    (run / "metrics.jsonl").write_text("")
    assert resume_checkpoint(run, warn=warnings.append).step == 2
    assert [w for w in warnings if "lines were lost" in w], warnings


def test_run_without_any_checkpoint_starts_over_and_says_so(tmp_path):
    """Stopped during the warm start, before its first checkpoint: nothing to lose, the run starts over."""
    run = _make_run(tmp_path, steps=())
    warnings: list[str] = []
    assert resume_checkpoint(run, warn=warnings.append) is None
    assert any("no checkpoint yet" in w and "starting over" in w for w in warnings), warnings


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_real_run_resumes_past_a_damaged_newest_checkpoint(tmp_path, capsys):
    """A real tiny GRPO run (kl_coef > 0, a checkpoint every step) whose newest checkpoint has a flipped byte
    resumes from the one before, says which it rejected, and ends with every train step logged once."""
    run = tmp_path / "run"
    args = [*TINY, f"cache_dir={tmp_path / 'cache'}", f"run_dir={run}", "entropy_coef=0.05"]
    assert main(["train", *args, "steps=2"]) == 0
    _flip_byte(_ckpt(run, 2) / "model.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"rejected checkpoint {_ckpt(run, 2)}: model.pt checksum mismatch" in err, err
    assert [d["step"] for d in read_metrics(run, "train")] == [1, 2]
    assert (run / "reference" / "manifest.json").is_file()
