"""One SFT warm start shared by every benchmark run: trained once, saved with ``save_pretrained``, reused.

The checkpoint directory holds the model and tokenizer (``save_pretrained``) plus ``sft.json`` with the
settings it was trained with (``key``) and its metrics. `sft_checkpoint` reuses a directory whose key matches
and retrains otherwise, so a benchmark that changes an SFT setting never picks up a stale model. Load it for
training with ``TrainConfig(model=str(path), sft_steps=0, ...)`` (`turngym.agents.tiny.load_policy_model`
accepts a ``save_pretrained`` directory).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from turngym.trainers.config import TrainConfig

__all__ = ["SFT_KEY_FIELDS", "sft_checkpoint", "sft_key"]

#: TrainConfig fields that determine the SFT checkpoint (a change in any of them retrains).
SFT_KEY_FIELDS = (
    "env_id", "env_kwargs", "model", "model_size", "seed", "pretrain_steps", "pretrain_lr", "sft_steps", "sft_lr",
    "sft_episodes", "sft_batch_size",
    "expert_noise", "max_turns", "max_new_tokens", "max_traj_tokens", "eval_seed",
)


def sft_key(cfg: TrainConfig) -> dict[str, Any]:
    """The JSON-able settings that identify an SFT checkpoint."""
    return json.loads(json.dumps({f: getattr(cfg, f) for f in SFT_KEY_FIELDS}, sort_keys=True, default=str))


def sft_checkpoint(cfg: TrainConfig, path: str | os.PathLike[str], *, eval_tasks: int = 0,
                   log: Any = None) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse) the SFT warm start of ``cfg`` and save it to ``path``.

    Args:
        cfg: Training config whose ``sft_*`` fields, env and model define the warm start (``sft_steps >= 1``).
        path: Checkpoint directory; reused when its ``sft.json`` key matches ``cfg``.
        eval_tasks: Held-out tasks (greedy) to evaluate the SFT policy on; 0 skips it.
        log: Optional ``log(str)`` for progress lines.

    Returns:
        ``(path, info)`` with ``info = {"key", "metrics", "eval", "seconds", "cpu_s", "reused"}``.
    """
    from turngym.trainers import policy_setup, sampling

    path = Path(path)
    key = sft_key(cfg)
    meta = path / "sft.json"
    if meta.is_file():
        info = json.loads(meta.read_text(encoding="utf-8"))
        if info.get("key") == key:
            return path, {**info, "reused": True}
    if cfg.sft_steps < 1:
        raise ValueError(f"sft_checkpoint needs sft_steps >= 1, got {cfg.sft_steps}.")
    say = log or (lambda _msg: None)
    say(f"SFT warm start: {cfg.sft_steps} steps on {cfg.sft_episodes} expert episodes of {cfg.env_id} -> {path}")
    t0, c0 = time.perf_counter(), time.process_time()
    s = policy_setup.setup(cfg)
    metrics = policy_setup.warm_start(cfg, s, lambda m: None)
    ev: dict[str, float] = {}
    if eval_tasks > 0:
        ev, _ = sampling.evaluate(cfg.replace(eval_tasks=eval_tasks), s)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    s.model.save_pretrained(tmp)
    s.tokenizer.save_pretrained(tmp)
    info = {"key": key, "metrics": metrics, "eval": ev, "seconds": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0}
    (tmp / "sft.json").write_text(json.dumps(info, indent=1, sort_keys=True), encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    say(f"SFT done in {info['seconds']:.0f}s: loss {metrics.get('sft/loss', float('nan')):.3f}"
        + (f", held-out success {ev['eval/success']:.3f}" if ev else ""))
    return path, {**info, "reused": False}
