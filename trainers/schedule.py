"""The RL learning-rate schedule: linear warm-up, then constant or decaying to ``lr_min_ratio * lr``.

Pure functions of the optimizer's own step count (AdamW's per-parameter ``step``), so a resumed run, whose
optimizer state is restored from the checkpoint, continues the schedule where it stopped. Each param group's
base rate is kept in ``group["initial_lr"]`` (the key torch's schedulers use), saved with the optimizer state.
"""

from __future__ import annotations

import math

import torch

from turngym.trainers.config import TrainConfig


def planned_optimizer_steps(cfg: TrainConfig) -> int:
    """Optimizer steps of the whole run: ``steps x ppo_epochs x ceil(minibatches / grad_accum)``, with
    ``tasks_per_step x group_size`` trajectories split into minibatches of ``minibatch_size``."""
    minibatches = math.ceil(cfg.tasks_per_step * cfg.group_size / cfg.minibatch_size)
    return max(1, cfg.steps * cfg.ppo_epochs * math.ceil(minibatches / cfg.grad_accum))


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps. Then ``lr_decay``: "constant"
    (1), "linear" or "cosine" from 1 to ``lr_min_ratio`` at `planned_optimizer_steps` (held there after).
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "constant":
        return 1.0
    span = max(1, planned_optimizer_steps(cfg) - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    shape = 1.0 - progress if cfg.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr_min_ratio + (1.0 - cfg.lr_min_ratio) * shape


def optimizer_step_count(optimizer: torch.optim.Optimizer) -> int:
    """Optimizer steps taken so far (AdamW's ``step`` of its first stepped parameter; 0 before any)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and "step" in st:
                return int(st["step"])
    return 0


def set_lr(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> float:
    """Set every param group's rate for the coming optimizer step; returns the first group's."""
    factor = lr_factor(cfg, optimizer_step_count(optimizer))
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
    return optimizer.param_groups[0]["lr"]
