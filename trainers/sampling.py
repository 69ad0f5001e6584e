"""Sampling for the trainers: rollouts with the current policy (`rollout`: local or Ray workers, the configured
sampler and its options), the step's task seeds, held-out evaluation (`evaluate`) and rollout metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from turngym.trainers.config import TrainConfig, eval_config
from turngym.types import Trajectory

if TYPE_CHECKING:
    from turngym.trainers.policy_setup import Setup


def sampling_params(cfg: TrainConfig, *, temperature: float | None = None):
    from turngym.agents.policy import SamplingParams

    return SamplingParams(temperature=cfg.temperature if temperature is None else temperature,
                          top_p=cfg.top_p if temperature is None else 1.0, max_new_tokens=cfg.max_new_tokens)


def rollout(cfg: TrainConfig, s: Setup, seeds: Sequence[int], group_size: int, *, temperature: float | None = None,
            policy: Any = None, sample_seed: int | None = None, sampler: str | None = None,
            step: int | None = None) -> tuple[list[Trajectory], Any]:
    """Roll out ``group_size`` trajectories per seed with the current policy; returns (trajectories, stats).

    ``step`` (training rollouts) is the RL step, handed to an env with a curriculum as ``curriculum_step``
    (`step_env_kwargs`); evaluation passes none.

    ``sample_seed`` seeds the sampler for this call, so a resumed run draws the same tokens. ``sampler`` replaces
    ``cfg.sampler`` for this call (evaluation plays full episodes: ``"group"``). With ``cfg.rollout`` set (and no
    ``policy`` / ``sampler`` given: training rollouts, not evaluation) the user's agent plays the episodes through
    the gateway (`turngym.trainers.agent_rollout`).
    """
    if step is not None:
        cfg = cfg.replace(env_kwargs=step_env_kwargs(cfg, step))
    if cfg.rollout is not None and policy is None and sampler is None:  # the user's agent through the gateway
        from turngym.trainers.agent_rollout import rollout as agent_rollout

        return agent_rollout(cfg, s, seeds, group_size, temperature=temperature, sample_seed=sample_seed)
    if cfg.rollout_backend == "ray" and policy is None:  # Ray rollout workers, weights pushed when changed
        from turngym.agents.ray_rollout import collect

        return collect(cfg, s, seeds, group_size, temperature=temperature, sample_seed=sample_seed, sampler=sampler)
    from turngym.agents.rollout import collect_rollouts

    policy = policy or s.policy
    if sample_seed is not None and hasattr(policy, "reseed"):
        policy.reseed(sample_seed)
    return collect_rollouts(
        cfg.env_id, policy, s.renderer, seeds, group_size, sampler=sampler or cfg.sampler,
        params=sampling_params(cfg, temperature=temperature), max_turns=cfg.max_turns,
        max_traj_tokens=cfg.max_traj_tokens, env_kwargs=cfg.env_kwargs, return_stats=True,
        sampler_kwargs=cfg.sampler_options if sampler in (None, cfg.sampler) else None,
    )


def step_env_kwargs(cfg: TrainConfig, step: int) -> dict[str, Any]:
    """``cfg.env_kwargs`` plus ``curriculum_step=step`` for an env with a curriculum (an env kwarg ``curriculum``,
    e.g. ``tool/ReasoningGym-v0``), unless the user fixed ``curriculum_step``; otherwise unchanged."""
    if not cfg.env_kwargs.get("curriculum") or "curriculum_step" in cfg.env_kwargs:
        return cfg.env_kwargs
    return {**cfg.env_kwargs, "curriculum_step": int(step)}


def task_seeds(cfg: TrainConfig, step: int) -> list[int]:
    """Training task seeds of ``step``: a pure function of (seed, step), so a resumed run sees the same data."""
    rng = np.random.default_rng([cfg.seed, step])
    return [int(x) for x in rng.integers(0, cfg.eval_seed, size=cfg.tasks_per_step)]


def rank_groups(cfg: TrainConfig, step: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int, int]]:
    """This rank's share of ``step``'s task groups under data parallelism: ``(index, task_seed, sample_seed)`` of
    groups ``rank, rank + world_size, ...`` of `task_seeds` (whole groups, round robin, as `shard_groups`). Each group
    gets its own sampler seed, a pure function of (seed, step, index), and is rolled out alone, so a group's
    trajectories do not depend on how many ranks share the step (`turngym.trainers.dp`)."""
    out = []
    for i, task_seed in enumerate(task_seeds(cfg, step)):
        if i % world_size == rank:
            sample_seed = int(np.random.default_rng([cfg.seed, step, i, 13]).integers(2**31))
            out.append((i, task_seed, sample_seed))
    return out


def succeeded(t: Trajectory) -> bool:
    """The env's ``info['success']`` of the final step (falls back to ``outcome >= 1``)."""
    if t.turns and "success" in t.turns[-1].info:
        return bool(t.turns[-1].info["success"])
    return t.outcome >= 1.0


def rollout_metrics(trajs: list[Trajectory], prefix: str = "rollout") -> dict[str, float]:
    """Success, reward, turns, tokens, tool use and stop reasons of a list of trajectories."""
    n = max(len(trajs), 1)
    out = {
        f"{prefix}/success": sum(succeeded(t) for t in trajs) / n,
        f"{prefix}/reward": float(np.mean([t.outcome for t in trajs])) if trajs else 0.0,
        f"{prefix}/turns": float(np.mean([t.num_turns for t in trajs])) if trajs else 0.0,
        f"{prefix}/tool_calls": sum(len(u.tool_calls) for t in trajs for u in t.turns) / n,
        f"{prefix}/tool_errors": sum(sum(not r.ok for r in u.tool_results) for t in trajs for u in t.turns) / n,
    }
    if prefix == "rollout":
        out.update({
            "rollout/reward_std": float(np.std([t.outcome for t in trajs])) if trajs else 0.0,
            "rollout/return": sum(t.total_reward for t in trajs) / n,
            "rollout/action_tokens": sum(len(u.action_ids) for t in trajs for u in t.turns) / n,
            "rollout/traj_tokens": sum(len(t.token_ids()) for t in trajs) / n,
            "rollout/parse_errors": sum(len(u.info.get("parse_errors", []) or []) for t in trajs for u in t.turns) / n,
            "rollout/answered": sum(t.final_answer is not None for t in trajs) / n,
            "rollout/trajectories": float(len(trajs)),
        })
        for reason in sorted({t.stop_reason for t in trajs}):
            out[f"rollout/stop/{reason}"] = sum(t.stop_reason == reason for t in trajs) / n
    return out


def evaluate(cfg: TrainConfig, s: Setup) -> tuple[dict[str, float], list[Trajectory]]:
    """Held-out success on ``cfg.eval_tasks`` fixed seeds (``eval_seed + i``), one full episode each (the "group"
    sampler whatever ``cfg.sampler`` trains with: SLATE's truncated steps and tree rollouts are training-time
    samplers, and would make the evaluation differ between methods)."""
    t0 = time.perf_counter()
    seeds = [cfg.eval_seed + i for i in range(cfg.eval_tasks)]
    was_training = s.model.training
    s.model.eval()
    # a fixed sampler seed: with eval_temperature > 0 every evaluation of a run draws from the same noise
    trajs, _ = rollout(eval_config(cfg), s, seeds, 1, temperature=cfg.eval_temperature, sample_seed=cfg.eval_seed,
                       sampler="group")
    s.model.train(was_training)
    m = rollout_metrics(trajs, prefix="eval")
    m["eval/tasks"] = float(len(trajs))
    m["eval/s"] = time.perf_counter() - t0
    return m, trajs
