"""The run directory: resolved config, metrics (JSONL + TensorBoard + optional W&B), sampled trajectories,
and the live progress bar.

Layout::

    run_dir/
        config.yaml          the resolved TrainConfig (`turngym train --resume run_dir` reads it back); its last
                             line is a comment holding the sha256 of the lines above, checked on resume
        metrics.jsonl        one JSON object per line: {"step", "kind", "time", "elapsed_s", <metric keys>}
        trajectories.jsonl   {"step", "kind", "trajectory": Trajectory.to_dict()} for a few trajectories per step
        tb/                  TensorBoard event files (when tensorboard is installed and cfg.tensorboard)
        tokenizer/           the policy's tokenizer (`turngym.trainers.loop` writes it; evaluation reads it back)
        checkpoints/         see turngym.trainers.checkpoint

Every metric key a trainer logs must be documented in :data:`METRICS` (``docs/metrics.md`` is generated
from it, and a test checks the two agree). Keys may be ``fnmatch`` patterns (``credit/*``) for families
whose members depend on the method. An undocumented key raises :class:`KeyError` naming it.

Resume bookkeeping: ``RunLog(run_dir, cfg, resume_step=S)`` keeps exactly the lines logged up to the
checkpoint at step ``S`` and drops the rest (a killed run may have logged steps after its last
checkpoint, and a partly written last line). When the checkpoint stored :meth:`RunLog.state_dict` the
files are cut at those exact byte offsets; otherwise every line with ``step > S`` is dropped. The state also holds
the sha256 of those bytes, which :func:`check_log_prefix` compares on resume (a mismatch is reported, not refused). The rule a
trainer follows: log every line of step ``S`` (and call :meth:`RunLog.state_dict`) before saving
checkpoint ``S``; lines of the SFT warm start and the initial evaluation carry ``step = 0``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from turngym.errors import ConfigError

__all__ = [
    "METRICS",
    "RunLog",
    "check_config_checksum",
    "check_log_prefix",
    "check_metric_keys",
    "check_run_dir_free",
    "default_run_dir",
    "describe_metric",
    "progress_stats",
    "read_metrics",
    "render_metrics_doc",
    "view_run",
]

#: Every key that may appear in metrics.jsonl, with its meaning. Patterns use fnmatch syntax.
METRICS: dict[str, str] = {
    # --- line fields
    "step": "RL training steps completed when the line was written (0 for the SFT warm start and the "
    "initial evaluation).",
    "kind": "What the line reports: `train` (an RL step), `eval` (held-out evaluation), `sft` (a warm-start step).",
    "time": "Unix time when the line was written.",
    "elapsed_s": "Seconds since the run (or the resumed run) started.",
    # --- rollout
    "rollout/success": "Fraction of this step's training trajectories whose episode succeeded (env "
    "`info['success']`).",
    "rollout/reward": "Mean outcome (env `info['outcome']`, in [0, 1]) of this step's training trajectories.",
    "rollout/reward_std": "Standard deviation of the outcome over this step's training trajectories.",
    "rollout/return": "Mean sum of per-turn env rewards per trajectory.",
    "rollout/turns": "Mean number of turns per trajectory.",
    "rollout/action_tokens": "Mean number of sampled (trained) tokens per trajectory.",
    "rollout/traj_tokens": "Mean total tokens per trajectory (prompt, actions and observations).",
    "rollout/tool_calls": "Mean number of tool calls per trajectory.",
    "rollout/tool_errors": "Mean number of failed tool calls (timeouts, bad arguments, crashes) per trajectory.",
    "rollout/parse_errors": "Mean number of malformed actions (no valid call and no answer) per trajectory.",
    "rollout/answered": "Fraction of trajectories that ended with a final answer.",
    "rollout/stop/*": "Fraction of trajectories per stop reason (e.g. `rollout/stop/max_turns`).",
    "rollout/trajectories": "Trajectories trained on in this step.",
    "rollout/zero_var_groups": "Fraction of groups whose outcomes were all equal (no outcome signal).",
    # --- DAPO switches
    "dapo/dropped_groups": "Groups dropped by dynamic sampling in this step (all outcomes equal).",
    "dapo/rounds": "Sampling rounds dynamic sampling needed to fill this step's batch.",
    "dapo/overlong_penalty": "Mean overlong-shaping penalty added to the outcome per trajectory.",
    # --- credit
    "credit/adv_mean": "Mean advantage over action tokens.",
    "credit/adv_std": "Standard deviation of the advantage over action tokens.",
    "credit/adv_absmax": "Largest absolute advantage over action tokens.",
    "credit/turns_per_traj": "Mean valid turns per trajectory as seen by the credit method.",
    "credit/*_frac_zero_var": "Fraction of normalization groups with zero variance, per group statistic of the "
    "credit method.",
    "credit/*_singletons": "Normalization groups with a single member, per group statistic of the credit method.",
    "credit/*_groups": "Number of normalization groups, per group statistic of the credit method.",
    "credit/*": "A method-specific credit diagnostic (`CreditOutput.diagnostics`); see the method's docstring "
    "in `turngym.credit`.",
    "signals/*": "Per-step statistics of the signal providers (e.g. mean information gain, match score), and "
    "their failure counts; a provider with a `metrics()` method logs its counters as `signals/<provider>/<key>` "
    "(judge prompts, unparseable replies, failed decompositions, ...).",
    # --- update
    "train/loss": "Total loss of the last minibatch (policy + KL + value - entropy terms).",
    "train/pg_loss": "Clipped policy-gradient surrogate, mean over the step's minibatches.",
    "train/kl": "KL estimate (`kl_type`) to the reference policy over action tokens, mean over minibatches.",
    "train/entropy": "Mean token entropy of the policy over action tokens.",
    "train/value_loss": "Clipped value loss (PPO only).",
    "train/value_mean": "Mean critic value over action tokens (PPO only).",
    "train/explained_var": "Explained variance of the returns by the critic (PPO only).",
    "train/clip_frac": "Fraction of action tokens whose ratio was clipped.",
    "train/ratio_mean": "Mean importance ratio over action tokens (at the ratio level in use).",
    "train/approx_kl": "Approximate KL between the behaviour and the updated policy (mean of k3 over action tokens).",
    "train/grad_norm": "Global gradient norm before clipping, mean over optimizer steps.",
    "train/lr": "Learning rate at the end of the step.",
    "train/critic_lr": "Learning rate of the critic's parameter group at the end of the step (PPO only).",
    "train/optimizer_steps": "Optimizer steps taken in this step (ppo_epochs x minibatches, minus skipped ones).",
    # --- async rollouts (max_staleness > 0)
    "async/staleness_mean": "Mean staleness of this step's trajectories: learner version (updates so far) minus "
    "the version of the behaviour weights that sampled them; at most max_staleness.",
    "async/staleness_max": "Largest staleness among this step's trajectories.",
    "async/wait_s": "Wall seconds the learner waited for this step's batch (0 when the producer is ahead).",
    "async/buffered_groups": "Finished groups already sampled for later steps when this step's batch was taken.",
    # --- performance
    "perf/step_s": "Wall seconds of the whole step.",
    "perf/rollout_s": "Wall seconds spent sampling this step's rollouts (generation, envs, tools); with async "
    "rollouts, the producer's time on this step's batch, overlapped with training.",
    "perf/rollout_cpu_s": "CPU seconds of the trainer process (all threads) while sampling this step's rollouts "
    "(synchronous sampling only).",
    "perf/rollout_generate_s": "Wall seconds of this step's rollouts spent inside the sampler's generate calls "
    "(synchronous sampling only).",
    "perf/rollout_env_s": "Wall seconds of this step's rollouts spent in env steps and tool calls (synchronous "
    "sampling only).",
    "perf/rollout_render_s": "Wall seconds of this step's rollouts spent rendering observations into tokens "
    "(synchronous sampling only).",
    "perf/rollout_setup_s": "Wall seconds of this step's rollouts spent in env resets and prompt rendering "
    "(synchronous sampling only).",
    "perf/signals_s": "Wall seconds spent in signal providers.",
    "perf/pack_s": "Wall seconds spent packing the trajectories into the `GroupBatch` (with overlong shaping).",
    "perf/logprobs_s": "Wall seconds spent on the batch's behaviour log-probs (when the sampler gave none) and "
    "reference log-probs (kl_coef > 0).",
    "perf/credit_s": "Wall seconds spent in credit assignment (with the viewer's annotations in GRPO).",
    "perf/update_s": "Wall seconds spent in forward/backward passes and optimizer steps.",
    "perf/update_cpu_s": "CPU seconds of the trainer process (all threads) during the update.",
    "perf/sync_s": "Wall seconds spent handing the new weights to the sampler: the async rollout producer (a copy "
    "to CPU) or the vLLM engine (`load_weights`, generation_backend=vllm); about 0 when the HF sampler is the "
    "learner itself.",
    "perf/tokens_per_s": "Sampled tokens per second of rollout time (throughput shown on the progress bar).",
    "perf/decode_compile_s": "Seconds the compiled decode step spent compiling so far (decode=auto/compiled; the "
                             "first steps of a process).",
    "perf/train_tokens_per_s": "Tokens (prompt + actions + observations) trained per second of update time.",
    "perf/trajectories_per_s": "Trajectories per second of the whole step.",
    "perf/max_memory_mb": "Peak accelerator memory in MiB (CUDA only).",
    # --- evaluation
    "eval/success": "Success rate on the held-out evaluation tasks.",
    "eval/reward": "Mean outcome on the held-out evaluation tasks.",
    "eval/success_lo95": "Self-play (algo=multi): lower end of the 95% Wilson interval of `eval/success` over the "
    "games (the learner's win rate against the scripted opponent).",
    "eval/success_hi95": "Self-play (algo=multi): upper end of the 95% Wilson interval of `eval/success`.",
    "eval/turns": "Mean turns per held-out episode.",
    "eval/tool_calls": "Mean tool calls per held-out episode.",
    "eval/tool_errors": "Mean failed tool calls per held-out episode.",
    "eval/tasks": "Number of held-out tasks evaluated.",
    "eval/s": "Wall seconds of the evaluation.",
    # --- SFT warm start
    "sft/step": "SFT warm-start steps completed.",
    "sft/loss": "Cross-entropy on the expert's action tokens (observation tokens masked out).",
    "sft/token_acc": "Greedy next-token accuracy on the expert's action tokens.",
    "sft/lr": "SFT learning rate.",
    "sft/episodes": "Expert demonstration episodes in the SFT data.",
    "sft/expert_success": "Success rate of the noisy scripted expert on the SFT episodes.",
    "sft/pretrain_loss": "Language-model loss (every token) at the end of the pretraining stage.",
    "pretrain/step": "Language-model pretraining steps completed (before SFT; `pretrain_steps`).",
    "pretrain/loss": "Next-token cross-entropy over every token of the expert episodes (pretraining).",
    # --- multi-agent trainer (algo=multi)
    "multi/*": "Multi-agent trainer: per-role rollout and evaluation metrics (`multi/<role>/reward`, "
    "`multi/eval/<role>/success`, ...), per-learner update and credit metrics (`multi/<learner>/train/loss`, "
    "`multi/<learner>/credit/adv_std`), team success per episode (`multi/team_success`) and self-play pool size "
    "(`multi/pool_size`); self-play evaluation against the frozen warm-started learner (`multi/eval/vs_start/success`, "
    "`.../reward`, `.../games`, Wilson interval `.../success_lo95`, `.../success_hi95`); see `turngym.trainers.multi`.",
    # --- agent rollouts through the gateway (rollout=agent:..., turngym.trainers.agent_rollout)
    "agent/*": "Agent rollouts (`rollout=agent:...`, turngym.trainers.agent_rollout): `agent/episodes` run this step, "
    "`agent/failures` (the agent raised, timed out or returned no reward: episode dropped, traceback logged), "
    "`agent/budget_stops` (episodes stopped at max_traj_tokens), `agent/splits` (history changes that split an "
    "episode).",
    "gateway/*": "The agent rollout's gateway: `gateway/generate_calls` (batched policy.generate calls), "
    "`gateway/max_batch` (most requests in one call), `gateway/errors` (requests refused with an HTTP error).",
    # --- learned signal components (turngym.trainers.learned)
    "learned/*": "A learned signal component's metric (`learned/<component>/<key>`: OPRL's implicit PRM loss and "
    "pairs, LaRe's decoder loss, ...), from its `before_credit` / `after_credit` hooks; see the component's "
    "docstring.",
    # --- non-finite guard
    "nonfinite/skipped": "1 when this step was skipped because its loss or advantages were NaN/inf.",
    "nonfinite/consecutive": "Consecutive skipped steps so far (the run stops at max_nonfinite_steps).",
    "nonfinite/total": "Skipped non-finite steps over the whole run.",
}

_RESERVED = ("step", "kind", "time", "elapsed_s")
_KINDS = ("train", "eval", "sft")


def describe_metric(key: str) -> str | None:
    """The documentation of ``key``: an exact entry of :data:`METRICS`, else the most specific pattern."""
    if key in METRICS:
        return METRICS[key]
    matches = [p for p in METRICS if "*" in p and fnmatch.fnmatchcase(key, p)]
    if not matches:
        return None
    return METRICS[max(matches, key=lambda p: len(p.replace("*", "")))]


def check_metric_keys(keys: Iterable[str]) -> None:
    """Raise KeyError naming every key that :data:`METRICS` does not document."""
    missing = sorted(k for k in keys if describe_metric(k) is None)
    if missing:
        raise KeyError(
            f"undocumented metric key(s) {missing}: add each to METRICS in turngym/trainers/runlog.py with a "
            "one-line description, then regenerate docs/metrics.md (`turngym docs`)."
        )


def render_metrics_doc() -> str:
    """``docs/metrics.md``, generated from :data:`METRICS`."""
    groups: dict[str, list[str]] = {}
    for key in METRICS:
        group = key.split("/", 1)[0] if "/" in key else "line fields"
        groups.setdefault(group, []).append(key)
    out = [
        "# Metrics",
        "",
        "Every key that `turngym train` writes to `metrics.jsonl` (and to TensorBoard / W&B under the same name).",
        "Generated from `METRICS` in `turngym/trainers/runlog.py` by `turngym docs`; a test checks they agree.",
        "A `*` stands for any text (the family depends on the method or the env).",
        "",
    ]
    for group, keys in groups.items():
        out += [f"## {group}", "", "| key | meaning |", "| --- | --- |"]
        out += [f"| `{k}` | {METRICS[k].replace('|', chr(92) + '|')} |" for k in keys]
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- helpers


def default_run_dir(cfg: Any, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<algo>-<credit>`` (a numeric suffix is added if it exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{getattr(cfg, 'algo', 'run')}-{getattr(cfg, 'credit', '')}".rstrip("-")
    path = Path(root) / name
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{name}-{n}"
    return path


def _clean(value: Any) -> Any:
    """Metric value -> strict-JSON value: tensors/numpy scalars to float, NaN/inf to None."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"metric values must be scalars, got {value!r}") from err
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) or value is None:
        return value
    raise TypeError(f"metric values must be numbers or strings, got {type(value).__name__}: {value!r}")


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x / 1000:.1f}k"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1):
        return str(int(x))
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def progress_stats(metrics: Mapping[str, Any]) -> str:
    """The progress bar's live text: success, reward, KL and throughput from a train line."""
    parts = []
    for key, label, spec in (
        ("rollout/success", "success", ".2f"),
        ("rollout/reward", "reward", ".3f"),
        ("train/kl", "KL", ".4f"),
        ("perf/tokens_per_s", "tok/s", ".0f"),
    ):
        if key in metrics:
            parts.append(f"{label} {_fmt(metrics[key], spec)}")
    if metrics.get("nonfinite/skipped"):
        parts.append("[skipped: NaN/inf]")
    return "  ".join(parts)


def read_metrics(run_dir: str | os.PathLike[str], kind: str | None = None) -> list[dict[str, Any]]:
    """Parsed lines of ``run_dir/metrics.jsonl`` (optionally of one ``kind``); unparsable lines are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict) and (kind is None or d.get("kind") == kind):
            out.append(d)
    return out


def _truncate_jsonl(path: Path, *, keep_bytes: int | None, max_step: int | None) -> int:
    """Cut a JSONL file after a resume; returns the number of lines kept.

    With ``keep_bytes`` the file is cut at that offset (if it is at least that long); otherwise lines
    with ``step > max_step`` and unparsable lines are dropped (``max_step=None`` drops every line).
    """
    if not path.exists():
        return 0
    data = path.read_bytes()
    if keep_bytes is not None and len(data) >= keep_bytes:
        kept_bytes = data[:keep_bytes]
        lines = kept_bytes.decode("utf-8", errors="replace").splitlines()
    else:
        lines = []
        if max_step is not None:
            for raw in data.decode("utf-8", errors="replace").splitlines():
                try:
                    d = json.loads(raw)
                except ValueError:
                    continue  # a line cut by the kill
                if isinstance(d, dict) and isinstance(d.get("step"), int) and d["step"] <= max_step:
                    lines.append(raw)
        kept_bytes = "".join(line + "\n" for line in lines).encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(kept_bytes)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(lines)


_CHECKSUM_LINE = "# sha256 of the lines above (checked by --resume): "
_CHECKSUM_RE = re.compile(r"^# sha256\b.*$", re.MULTILINE)  # damage to the line itself reads as a mismatch


def with_checksum(text: str) -> str:
    """``text`` (ending in a newline) plus a last comment line holding its sha256."""
    return f"{text}{_CHECKSUM_LINE}{hashlib.sha256(text.encode('utf-8')).hexdigest()}\n"


def check_config_checksum(path: str | os.PathLike[str]) -> str | None:
    """Why a run's ``config.yaml`` fails its checksum line; ``""`` when it matches (or there is no file); None when
    it has no checksum line (written by hand, or by a turngym before checksummed configs: unverified)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return ""
    except OSError as err:
        return f"{p} is unreadable: {err}"
    text = data.decode("utf-8", errors="replace")
    found = list(_CHECKSUM_RE.finditer(text))
    if not found:
        return None
    m = found[-1]
    want = m.group(0).removeprefix(_CHECKSUM_LINE)
    if text[m.end():].strip("\n") or hashlib.sha256(text[: m.start()].encode("utf-8")).hexdigest() != want:
        return f"{p} does not match its checksum line (edited or damaged since turngym wrote it)"
    return ""


def _sha256_of(path: Path) -> Any:
    """A sha256 object fed with ``path``'s bytes (nothing when it does not exist), to be updated as lines go in."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h


def check_log_prefix(run_dir: str | os.PathLike[str], state: Mapping[str, Any], step: int) -> list[str]:
    """One line per log file of ``run_dir`` whose first bytes differ from what :meth:`RunLog.state_dict` recorded
    (``state``, stored in the checkpoint of ``step``): the lines a resume keeps were edited, damaged or lost."""
    out = []
    for key, name in (("metrics", "metrics.jsonl"), ("trajectories", "trajectories.jsonl")):
        size, want = state.get(f"{key}_bytes"), state.get(f"{key}_sha256")
        if not isinstance(size, int) or not isinstance(want, str):
            continue  # a checkpoint written before the logs were checksummed
        path = Path(run_dir) / name
        data = path.read_bytes()[:size] if path.is_file() else b""
        if len(data) < size:
            out.append(f"{path} has {len(data)} bytes, {size} when checkpoint {step} was saved: lines were lost "
                       f"(the lines up to step {step} that remain are kept)")
        elif hashlib.sha256(data).hexdigest() != want:
            out.append(f"{path} up to step {step} differs from what was logged (edited or damaged); kept as it is: "
                       "it is a log, not training state")
    return out


# --------------------------------------------------------------------------- the run log


def check_run_dir_free(run_dir: str | os.PathLike[str] | None, resume: bool) -> None:
    """Raise ConfigError when a new (not resumed) run would write into a directory holding a run."""
    if resume or not run_dir:
        return
    path = Path(run_dir)
    if (path / "metrics.jsonl").exists() or (path / "checkpoints").exists():
        raise ConfigError(
            f"run_dir {str(path)!r} already holds a run. Fix: `turngym train --resume {path}` to continue it, "
            "or choose another run_dir."
        )


class RunLog:
    """Writes one run's directory: config, metrics, trajectories, TensorBoard, W&B, progress bar.

    Args:
        run_dir: The run directory; none uses ``cfg.run_dir`` or :func:`default_run_dir`.
        cfg: The resolved config dataclass (written to ``config.yaml`` with ``run_dir`` filled in).
        resume_step: Continue a run whose last good checkpoint is at this step; none with
            ``cfg.resume`` means the run had no checkpoint yet (the files are emptied and the run starts over).
            Trainers get the step from `checkpoint.resume_checkpoint`, which refuses (before this class touches
            anything) when checkpoints exist but none verifies.
        resume_state: :meth:`state_dict` stored in that checkpoint (exact byte offsets), if any.
        strict: Raise on undocumented metric keys (see :data:`METRICS`).
        progress: Show the live progress bar; default ``cfg.progress``.
        console: A ``rich.console.Console`` to draw on (tests pass one writing to a buffer).
        write: False on the ranks of a data-parallel run other than rank 0 (`turngym.trainers.dp`): nothing is
            created, written or printed; `log` still checks the keys and returns the line.

    Raises:
        ConfigError: A new run (not resuming) was pointed at a directory that already holds a run.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None,
        cfg: Any,
        *,
        resume_step: int | None = None,
        resume_state: Mapping[str, Any] | None = None,
        strict: bool = True,
        progress: bool | None = None,
        console: Any = None,
        write: bool = True,
    ) -> None:
        path = Path(run_dir or getattr(cfg, "run_dir", None) or default_run_dir(cfg))
        resuming = bool(getattr(cfg, "resume", False)) or resume_step is not None
        self.writes = write
        if not write:  # a data-parallel rank other than 0: rank 0 writes the run directory
            self.run_dir, self.cfg, self.strict, self._last, self._t0 = path, cfg, strict, {}, time.time()
            self._metrics = self._trajs = self._tb = self._wandb = None
            self._bar = _Progress(enabled=False)
            return
        check_run_dir_free(path, resuming)
        path.mkdir(parents=True, exist_ok=True)
        self.run_dir = path
        self.cfg = cfg
        if hasattr(cfg, "replace") and getattr(cfg, "run_dir", None) != str(path):
            self.cfg = cfg.replace(run_dir=str(path))
        self.strict = strict
        self.metrics_path = path / "metrics.jsonl"
        self.trajectories_path = path / "trajectories.jsonl"
        self.config_path = path / "config.yaml"
        self._t0 = time.time()
        self._last: dict[str, dict[str, Any]] = {}

        if resuming:
            rs = dict(resume_state or {})
            _truncate_jsonl(self.metrics_path, keep_bytes=rs.get("metrics_bytes"), max_step=resume_step)
            _truncate_jsonl(self.trajectories_path, keep_bytes=rs.get("trajectories_bytes"), max_step=resume_step)
        self._write_config()
        self._metrics = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._trajs = open(self.trajectories_path, "a", encoding="utf-8")  # noqa: SIM115
        # running sha256 of each file's bytes, stored with the offsets so a resume can check the prefix it keeps
        self._sha = {"metrics": _sha256_of(self.metrics_path), "trajectories": _sha256_of(self.trajectories_path)}

        self._tb = None
        if getattr(cfg, "tensorboard", False):
            self._tb = _make_tb_writer(path / "tb", purge_step=None if resume_step is None else resume_step + 1)
        self._wandb = None
        if getattr(cfg, "wandb", False):
            self._wandb = _make_wandb(self)

        show = getattr(cfg, "progress", True) if progress is None else progress
        self._bar = _Progress(console=console, enabled=show)
        self.totals = {"train": int(getattr(cfg, "steps", 0) or 0), "sft": int(getattr(cfg, "sft_steps", 0) or 0)}
        self.completed = {"train": resume_step or 0}

    # ------------------------------------------------------------------ files

    def _write_config(self) -> None:
        from turngym.config import dump_yaml, write_yaml_atomic

        write_yaml_atomic(self.config_path, with_checksum(dump_yaml(self.cfg)))

    def log(self, step: int, metrics: Mapping[str, Any], *, kind: str = "train") -> dict[str, Any]:
        """Append one metrics line and forward it to TensorBoard / W&B / the progress bar.

        Args:
            step: RL steps completed (0 during SFT and the initial evaluation).
            metrics: ``{key: number}``; every key documented in :data:`METRICS`. NaN/inf are written as null.
            kind: ``"train"``, ``"eval"`` or ``"sft"``.

        Returns:
            The line as written.
        """
        if kind not in _KINDS:
            raise ValueError(f"kind={kind!r}; expected one of {_KINDS}")
        clash = [k for k in metrics if k in _RESERVED]
        if clash:
            raise KeyError(f"metric keys {clash} are reserved line fields; use another name")
        if self.strict:
            check_metric_keys(metrics)
        now = time.time()
        line: dict[str, Any] = {"step": int(step), "kind": kind, "time": round(now, 3),
                                "elapsed_s": round(now - self._t0, 3)}
        line.update({k: _clean(v) for k, v in metrics.items()})
        if not self.writes:
            return line
        text = json.dumps(line, allow_nan=False) + "\n"
        self._metrics.write(text)
        self._sha["metrics"].update(text.encode("utf-8"))
        self._metrics.flush()
        self._last[kind] = line
        if self._tb is not None:
            tb_step = int(line.get("sft/step", line.get("pretrain/step", step))) if kind == "sft" else int(step)
            for k, v in line.items():
                if k not in _RESERVED and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, tb_step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in line.items() if k not in ("kind", "time")}, step=int(step))
        self._update_progress(step, kind, line)
        return line

    def log_trajectories(self, step: int, trajectories: Iterable[Any], *, kind: str = "train", limit: int | None = None) -> int:
        """Append sampled trajectories (``Trajectory`` objects or dicts) to trajectories.jsonl.

        Returns:
            How many were written (at most ``limit``, default ``cfg.save_trajectories``).
        """
        limit = int(getattr(self.cfg, "save_trajectories", 4)) if limit is None else limit
        if not self.writes:
            return 0
        n = 0
        for traj in trajectories:
            if n >= limit:
                break
            d = traj.to_dict() if hasattr(traj, "to_dict") else dict(traj)
            text = json.dumps({"step": int(step), "kind": kind, "trajectory": d}, ensure_ascii=False,
                              default=_json_default) + "\n"
            self._trajs.write(text)
            self._sha["trajectories"].update(text.encode("utf-8"))
            n += 1
        self._trajs.flush()
        return n

    def state_dict(self) -> dict[str, Any]:
        """Byte offsets and sha256 of the metrics and trajectory files (flushed and fsync'ed): store in the
        checkpoint (:func:`check_log_prefix` compares them on resume)."""
        if not self.writes:
            return {}
        self.sync()
        return {"metrics_bytes": self._metrics.tell(), "trajectories_bytes": self._trajs.tell(),
                "metrics_sha256": self._sha["metrics"].hexdigest(),
                "trajectories_sha256": self._sha["trajectories"].hexdigest()}

    def sync(self) -> None:
        """Flush and fsync the metric and trajectory files."""
        if not self.writes:
            return
        for fh in (self._metrics, self._trajs):
            if not fh.closed:
                fh.flush()
                os.fsync(fh.fileno())
        if self._tb is not None:
            self._tb.flush()

    def last(self, kind: str = "train") -> dict[str, Any]:
        """The last line logged of ``kind`` in this process (empty dict if none)."""
        return dict(self._last.get(kind, {}))

    # ------------------------------------------------------------------ console

    def _update_progress(self, step: int, kind: str, line: Mapping[str, Any]) -> None:
        if kind == "train":
            self._bar.update("train", f"RL {getattr(self.cfg, 'algo', '')}/{getattr(self.cfg, 'credit', '')}",
                             int(step), self.totals.get("train", 0), progress_stats(line))
        elif kind == "sft" and "pretrain/step" in line:
            self._bar.update("pretrain", "LM pretraining", int(line["pretrain/step"]),
                             int(getattr(self.cfg, "pretrain_steps", 0) or 0), f"loss {_fmt(line.get('pretrain/loss'))}")
        elif kind == "sft":
            sft_step = int(line.get("sft/step", 0))
            loss = line.get("sft/loss")
            self._bar.update("sft", "SFT warm start", sft_step, self.totals.get("sft", 0), f"loss {_fmt(loss)}")
        else:
            parts = [f"{k.split('/', 1)[1]} {_fmt(v)}" for k, v in line.items() if k.startswith("eval/")]
            self.message(f"eval @ step {step}: " + "  ".join(parts))

    def message(self, text: str) -> None:
        """Print a line above the progress bar (rank 0 only in a data-parallel run)."""
        if self.writes:
            self._bar.print(text)

    def close(self) -> None:
        """Flush and close everything (safe to call twice)."""
        self._bar.stop()
        if self._metrics is not None and not self._metrics.closed:
            self.sync()
            self._metrics.close()
            self._trajs.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> RunLog:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def _make_tb_writer(log_dir: Path, purge_step: int | None) -> Any:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return None  # documented: TensorBoard files only when tensorboard is installed
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _make_wandb(runlog: RunLog) -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError("wandb=true but wandb is not installed. Fix: `pip install wandb`, or wandb=false.") from None
    from turngym.config import to_dict

    id_file = runlog.run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
    id_file.write_text(run_id + "\n")
    return wandb.init(
        project=getattr(runlog.cfg, "wandb_project", "turngym"),
        dir=str(runlog.run_dir),
        config=to_dict(runlog.cfg),
        id=run_id,
        resume="allow",
        name=runlog.run_dir.name,
    )


class _Progress:
    """A rich progress bar on a terminal; plain lines otherwise; nothing when disabled."""

    def __init__(self, console: Any = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = None
        self._tasks: dict[str, Any] = {}
        self._console = console
        self._live = False
        if not enabled:
            return
        from rich.console import Console

        self._console = console or Console(stderr=False)
        self._live = bool(self._console.is_terminal)

    def _ensure(self) -> Any:
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._progress.start()
        return self._progress

    def update(self, name: str, description: str, completed: int, total: int, stats: str) -> None:
        if not self.enabled:
            return
        if not self._live:
            every = max(1, total // 10) if name == "sft" and total else 1  # plain output: SFT every 10%
            if completed % every and completed != total:
                return
            self._console.print(f"{description} {completed}/{total or '?'}  {stats}", highlight=False)
            return
        prog = self._ensure()
        if name not in self._tasks:
            self._tasks[name] = prog.add_task(description, total=total or None, stats=stats)
        prog.update(self._tasks[name], completed=completed, stats=stats)

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            self._console.print(text, highlight=False)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# --------------------------------------------------------------------------- viewer


def view_run(run_dir: str | os.PathLike[str], *, step: int | None = None, n: int = 2, console: Any = None) -> int:
    """Print a run's summary (config, train/eval curve tail) and ``n`` sampled trajectories of one step.

    Args:
        run_dir: A run directory written by :class:`RunLog`.
        step: Which step's trajectories to show; none shows the latest step that has some.
        n: How many trajectories to show.
        console: A ``rich.console.Console``; default stdout.

    Returns:
        0, or 2 when ``run_dir`` is not a run directory.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        console.print(f"{run} is not a turngym run directory (no config.yaml).", highlight=False)
        return 2
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    console.print(f"[bold]{run}[/bold]  env={cfg.get('env_id')} model={cfg.get('model')} algo={cfg.get('algo')} "
                  f"credit={cfg.get('credit')} steps={cfg.get('steps')}")
    evals = read_metrics(run, "eval")
    for line in evals:
        console.print(f"  eval @ step {line['step']}: success {_fmt(line.get('eval/success'))} "
                      f"reward {_fmt(line.get('eval/reward'))}", highlight=False)
    train = read_metrics(run, "train")
    if train:
        table = Table("step", "success", "reward", "KL", "loss", "tok/s", title="last train steps")
        for line in train[-10:]:
            table.add_row(str(line["step"]), _fmt(line.get("rollout/success"), ".2f"), _fmt(line.get("rollout/reward")),
                          _fmt(line.get("train/kl"), ".4f"), _fmt(line.get("train/loss")),
                          _fmt(line.get("perf/tokens_per_s"), ".0f"))
        console.print(table)
    path = run / "trajectories.jsonl"
    rows: list[dict[str, Any]] = []
    if path.is_file():
        for raw in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(raw))
            except ValueError:
                continue
    if not rows:
        console.print("(no sampled trajectories)")
        return 0
    show_step = step if step is not None else max(r.get("step", 0) for r in rows)
    chosen = [r for r in rows if r.get("step") == show_step][:n]
    if not chosen:
        console.print(f"(no trajectories at step {show_step}; steps with some: "
                      f"{sorted({r.get('step') for r in rows})})")
        return 0
    for i, r in enumerate(chosen):
        t = r.get("trajectory", {})
        console.rule(f"step {show_step} · trajectory {i} · {t.get('group_id', '')} · outcome {t.get('outcome')} "
                     f"· stop {t.get('stop_reason')}")
        for msg in t.get("prompt_messages", []):
            if msg.get("role") == "user":
                console.print(f"[bold]user:[/bold] {msg.get('content', '')}", highlight=False)
        for k, turn in enumerate(t.get("turns", [])):
            console.print(f"[bold cyan]turn {k} action:[/bold cyan] {turn.get('action_text', '')}", highlight=False)
            for obs in turn.get("obs_messages", []):
                content = str(obs.get("content", ""))
                content = content if len(content) <= 400 else content[:400] + " …"
                console.print(f"  [dim]{obs.get('role')}:[/dim] {content}", highlight=False)
        console.print(f"final answer: {t.get('final_answer')!r}  gold: {t.get('meta', {}).get('gold_answer')!r}",
                      highlight=False)
    return 0


if __name__ == "__main__":  # python -m turngym.trainers.runlog > docs/metrics.md
    sys.stdout.write(render_metrics_doc())
