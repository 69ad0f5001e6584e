"""Statistics of `turngym bench study`: bootstrap CIs over seeds and held-out tasks, paired differences, speed.

A study run ends with per-task held-out outcomes (``final_eval[mode] = [0/1 per task]`` for the same fixed task
seeds in every run). Two sources of noise sit in a method's final success: which RL seed it ran with, and which
held-out tasks were drawn. The **hierarchical bootstrap** resamples both: each replicate draws the task indices
once (with replacement, shared by every method, since every run is evaluated on the same tasks: this is what
pairs methods) and, per method, its seeds (with replacement); the method's success is the mean over the drawn
seeds of each run's success on the drawn tasks. The 95% CI is the 2.5 / 97.5 percentile of the replicates; the
paired difference of a method against a reference (GRPO) uses the same task draw for both in each replicate.
With 3-5 seeds the seed resampling understates the between-seed spread a little (a bootstrap over n points has
variance (n-1)/n of the sample's); the tables say how many seeds each row has.

*Steps to the reference's final success*: the first evaluated step at which a method's mean curve (over seeds)
reaches the reference method's final mean success; the reference's own figure is the first step at which its
mean curve reaches its final value. ``None`` when never reached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["bootstrap_table", "steps_to_reach"]


def _runs_matrix(runs: Sequence[Sequence[float]]) -> np.ndarray:
    m = np.asarray(runs, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1:
        raise ValueError(f"per-task outcomes must be a non-empty [runs, tasks] matrix, got shape {m.shape}")
    return m


def bootstrap_table(outcomes: Mapping[str, Sequence[Sequence[float]]], reference: str | None = None, *,
                    n_boot: int = 4000, seed: int = 0, level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Mean success with a hierarchical-bootstrap CI per method, and the paired difference against ``reference``.

    Args:
        outcomes: method -> ``[runs, tasks]`` 0/1 outcomes (each run = one seed; the same tasks in the same order
            for every run of every method).
        reference: Method the differences are taken against (skipped when absent).
        n_boot: Bootstrap replicates.
        seed: Seed of the resampling (fixed: the table is reproducible).
        level: Confidence level.

    Returns:
        method -> ``{"n": runs, "mean", "lo", "hi", "diff", "diff_lo", "diff_hi", "p_le_0"}`` (the ``diff*`` keys
        only with a reference; ``p_le_0`` = share of replicates where the difference is <= 0).
    """
    mats = {m: _runs_matrix(v) for m, v in outcomes.items() if len(v)}
    if not mats:
        return {}
    n_tasks = {m.shape[1] for m in mats.values()}
    if len(n_tasks) != 1:
        raise ValueError(f"every run must be evaluated on the same tasks; task counts differ: {sorted(n_tasks)}")
    t = n_tasks.pop()
    rng = np.random.default_rng(seed)
    reps = {m: np.empty(n_boot) for m in mats}
    for b in range(n_boot):
        idx = rng.integers(0, t, size=t)
        for m, mat in mats.items():
            rows = rng.integers(0, mat.shape[0], size=mat.shape[0])
            reps[m][b] = mat[np.ix_(rows, idx)].mean()
    a = (1.0 - level) / 2.0
    out: dict[str, dict[str, Any]] = {}
    for m, mat in mats.items():
        lo, hi = np.quantile(reps[m], [a, 1.0 - a])
        out[m] = {"n": int(mat.shape[0]), "mean": float(mat.mean()), "lo": float(lo), "hi": float(hi)}
        if reference in mats and m != reference:
            d = reps[m] - reps[reference]
            dlo, dhi = np.quantile(d, [a, 1.0 - a])
            out[m] |= {"diff": float(mat.mean() - mats[reference].mean()), "diff_lo": float(dlo),
                       "diff_hi": float(dhi), "p_le_0": float((d <= 0).mean())}
    return out


def mean_curve(curves: Sequence[Sequence[Sequence[float]]]) -> list[tuple[int, float]]:
    """``[(step, mean success over runs)]`` on the steps every run evaluated (curves are ``[step, env_steps, s]``)."""
    if not curves:
        return []
    common = set.intersection(*({int(p[0]) for p in c} for c in curves))
    return [(s, sum(next(p[2] for p in c if int(p[0]) == s) for c in curves) / len(curves)) for s in sorted(common)]


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float) -> int | None:
    """First step > 0 of a mean curve at which success >= ``target`` (minus 1e-9); None if never."""
    if not math.isfinite(target):
        return None
    return next((s for s, v in curve if s > 0 and v >= target - 1e-9), None)
