"""Every registered credit method trains 2 RL steps on CPU with the tiny model through its trainer.

Value-based methods (``gae``, ``ppo-bad``) go through the PPO trainer, the others through GRPO; methods that need
signals get them from `turngym.trainers.batch_signals.signal_providers`, exactly as `turngym train` does. Each run
starts from the method's own preset (when one exists), shrunk to a few trajectories.

A random-init tiny policy almost never succeeds, so every outcome would be 0 and every outcome-based advantage
exactly 0 (nothing to learn). The runs therefore switch on DAPO's overlong shaping with a buffer spanning almost
the whole budget: the outcome then depends on the length of the trajectory's sampled tokens, so a group's
rollouts get different rewards and the credit methods see a real, non-constant signal.

Checks per method: every train step logged a finite loss and finite advantages, no step was skipped as
non-finite, and the policy weights after the 2 RL steps differ from those saved right before the first one
(both checkpoints are read back from the run directory). PPO runs also check the critic's weights moved.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from turngym.credit import CREDIT
from turngym.trainers.checkpoint import checkpoint_dirs, load_checkpoint
from turngym.trainers.config import VALUE_CREDITS, preset_names, resolve_train_config

pytestmark = pytest.mark.slow

ENV = "search/HopQA-v0"
TINY = [
    f"env_id={ENV}", "steps=2", "tasks_per_step=2", "group_size=2",
    "minibatch_size=4", "grad_accum=1", "ppo_epochs=1", "sft_steps=0", "eval_tasks=2", "eval_every=0",
    "max_turns=3", "max_new_tokens=40", "max_traj_tokens=512", "overlong_buffer=500", "checkpoint_every=10",
    "keep_checkpoints=4", "save_trajectories=0", "tensorboard=false", "progress=false", "report=false",
    "torch_threads=1", "seed=1", "lr=1e-3", "dynamic_sampling=false",
]


def preset_for(method: str) -> str | None:
    """The method's preset (``dr_grpo`` -> ``dr-grpo``, ``gae`` -> ``ppo``), if there is one."""
    name = {"gae": "ppo"}.get(method, method.replace("_", "-"))
    return name if name in preset_names() else None


#: The shared warm start: enough SFT on the noisy expert that the policy makes tool calls and answers.
WARM = {"sft_steps": 60, "sft_batch_size": 8, "sft_lr": 3e-3, "sft_episodes": 64, "max_turns": 3,
        "max_new_tokens": 48, "max_traj_tokens": 512}


#: Per-method overrides of this smoke test. CAPO's preset normalises per episode (2·r_v − 1[any flagged turn]); every
#: rollout of these 2-step runs is wrong and has a flagged turn, so that is exactly 0 here: the test trains the
#: module's default per-turn token pool instead.
METHOD_EXTRA: dict[str, list[str]] = {"capo": ["credit.norm=token_pool"]}


def run_method(method: str, run_dir: Path, model: str, extra: list[str] = ()) -> dict:
    algo = "ppo" if method in VALUE_CREDITS else "grpo"
    cfg = resolve_train_config(
        preset_for(method), [*TINY, f"credit={method}", f"algo={algo}", f"model={model}",
                             f"run_dir={run_dir}", *extra],
    )
    if algo == "ppo":
        from turngym.trainers.ppo import train
    else:
        from turngym.trainers.grpo import train
    return train(cfg)


def policy_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Policy tensors of a checkpoint (PPO checkpoints hold ``policy.*`` and ``critic.*``)."""
    if any(k.startswith("policy.") for k in state):
        return {k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")}
    return state


def multi_agent_only(method: str) -> bool:
    """Methods that need a multi-agent episode (counterfactual replays): trained by `turngym.trainers.multi`."""
    from turngym.trainers.multi import COUNTERFACTUAL_CREDITS

    return method in COUNTERFACTUAL_CREDITS


@pytest.mark.parametrize("method", CREDIT.names())
def test_method_trains_two_steps(method: str, tmp_path: Path, warm_model: str, check_train_lines):
    if multi_agent_only(method):
        pytest.skip(f"{method} needs multi-agent counterfactual replays: tests/multi_train trains it")
    run_dir = tmp_path / "run"
    summary = run_method(method, run_dir, warm_model, METHOD_EXTRA.get(method, []))
    assert summary["steps"] == 2 and summary["credit"] == method

    train_lines = check_train_lines(run_dir, 2, method)

    dirs = checkpoint_dirs(run_dir)
    first, last = load_checkpoint(dirs[0]), load_checkpoint(dirs[-1])
    assert (first.step, last.step) == (0, 2)
    before, after = policy_state(first.model_state), policy_state(last.model_state)
    assert before.keys() == after.keys() and before
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, f"{method}: no policy parameter changed in 2 RL steps"
    assert all(torch.isfinite(after[k]).all() for k in after)
    if method in VALUE_CREDITS:
        head = [k for k in last.model_state if k.startswith("critic.value_head.")]
        assert head and any(not torch.equal(first.model_state[k], last.model_state[k]) for k in head)
        assert all(d.get("train/value_loss") is not None and math.isfinite(d["train/value_loss"])
                   for d in train_lines)


def test_evaluation_plays_full_episodes_whatever_the_training_sampler(warm_model: str):
    """SLATE trains on truncated steps and tree rollouts share prefixes; the held-out evaluation still plays one
    full episode per task, so every method is measured the same way (greedy: the same tokens for every sampler)."""
    from turngym.trainers import policy_setup, sampling

    episodes = {}
    for sampler in ("group", "truncated_step", "tree"):
        cfg = resolve_train_config(None, [*TINY, f"model={warm_model}", f"sampler={sampler}", "eval_tasks=4",
                                          "eval_temperature=0"])
        s = policy_setup.setup(cfg)
        m, trajs = sampling.evaluate(cfg, s)
        assert m["eval/tasks"] == 4 and len({t.group_id for t in trajs}) == 4, sampler
        assert all("slate" not in t.meta and "tree" not in t.meta for t in trajs), sampler
        episodes[sampler] = [t.token_ids() for t in trajs]
    assert episodes["truncated_step"] == episodes["group"] == episodes["tree"]
