"""The RL learning-rate schedule: warm-up, constant / linear / cosine decay, resumable from optimizer state."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from turngym.trainers.config import TrainConfig
from turngym.trainers.schedule import lr_factor, optimizer_step_count, planned_optimizer_steps, set_lr

# 2 tasks x 4 rollouts = 8 trajectories, minibatches of 4: 2 optimizer steps per RL step, 5 RL steps -> 10
SMALL = {"tasks_per_step": 2, "group_size": 4, "minibatch_size": 4, "steps": 5}


def test_planned_steps_count_minibatches_epochs_and_accumulation():
    assert planned_optimizer_steps(TrainConfig(**SMALL)) == 10
    assert planned_optimizer_steps(TrainConfig(**SMALL, ppo_epochs=3)) == 30
    assert planned_optimizer_steps(TrainConfig(**SMALL, grad_accum=2)) == 5


def test_constant_without_warmup_never_changes_the_rate():
    cfg = TrainConfig(**SMALL)
    assert [lr_factor(cfg, s) for s in range(20)] == [1.0] * 20


def test_linear_warmup_then_constant():
    cfg = TrainConfig(**SMALL, warmup_steps=4)
    assert [lr_factor(cfg, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_decay_runs_from_one_to_the_floor_at_the_planned_end(decay):
    cfg = TrainConfig(**SMALL, warmup_steps=2, lr_decay=decay, lr_min_ratio=0.1)
    f = [lr_factor(cfg, s) for s in range(14)]
    assert f[:2] == [0.5, 1.0]  # warm-up, then the decay starts at 1
    assert all(a >= b for a, b in itertools.pairwise(f[1:]))  # never rises again
    assert f[10] == pytest.approx(0.1) and f[13] == pytest.approx(0.1)  # floor at step 10 = planned, held after
    mid = lr_factor(cfg, 6)  # half-way through the 8 decay steps
    assert mid == pytest.approx(0.55)  # both shapes pass the mid-point between 1 and the floor
    quarter = lr_factor(cfg, 4)
    expect = 0.1 + 0.9 * (0.75 if decay == "linear" else 0.5 * (1 + math.cos(math.pi / 4)))
    assert quarter == pytest.approx(expect)


def test_set_lr_follows_the_optimizer_and_resumes_from_its_state():
    cfg = TrainConfig(**SMALL, lr=0.1, warmup_steps=2, lr_decay="linear")
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=cfg.lr)
    seen = []
    for _ in range(4):
        seen.append(set_lr(cfg, opt))
        w.grad = torch.ones(3)
        opt.step()
    assert optimizer_step_count(opt) == 4
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.1 * 7 / 8])  # warm-up, then the decay from step 2

    # a resumed run: a fresh optimizer loads the saved state and continues the schedule at step 4
    opt2 = torch.optim.AdamW([w], lr=cfg.lr)
    opt2.load_state_dict(opt.state_dict())
    assert set_lr(cfg, opt2) == pytest.approx(0.1 * 6 / 8)
    assert opt2.param_groups[0]["initial_lr"] == pytest.approx(0.1)


def test_each_param_group_keeps_its_own_base_rate():
    cfg = TrainConfig(**SMALL, lr=0.1, warmup_steps=4)
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr": 0.02}], lr=cfg.lr)  # PPO: policy + critic
    set_lr(cfg, opt)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.025, 0.005])
