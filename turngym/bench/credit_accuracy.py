"""`turngym bench credit-accuracy`: where does each credit method put the credit?

For each policy (the SFT warm start, and any RL checkpoints given with ``--policy``), one batch of group rollouts
(``tasks`` task seeds x ``group_size`` samples each) and one batch of tree rollouts (``tree_tasks`` seeds, forks of
``tree_branching``) go through EVERY method of `turngym.credit.CREDIT`, and each method's advantages are compared with
the env's ground truth (its world model: ``info["value"]`` / ``info["value_delta"]``, e.g. HopQA's fraction of the
gold plan completed). Any env whose steps carry those two keys works (``--env``).

Definitions (per sampled trajectory, turns ``k = 0..T-1``):

* **Ground-truth turn value** ``V_k = V(s_{k+1})``: the env's ``info["value"]`` after turn ``k``, except on the
  **answer turn**, where the episode ends and ``V_k`` is the outcome (``V(terminal) = outcome``). Trajectories that
  stop without answering (turn or token limit) keep the env values.
* **Ground-truth turn credit** ``ΔV_k = V_k − V(s_k)``: what turn ``k`` changed (the env's ``info["value_delta"]``;
  on the answer turn ``outcome − V(s_k)``). It sums to the outcome along an answered trajectory.
* **Decisive turn**: a turn whose observation resolved a new hop (``info["value_delta"] > 0``), or the answer turn
  (the turn whose action gave the final answer; a wrong answer decides the outcome too). This is the sampled
  trajectory's version of the task's ``meta["decisive_turns"]`` (the gold turns that resolve a hop, plus the answer).
* **Per-turn advantage** ``Ā_k``: the mean token advantage over the policy tokens of turn ``k`` (for turn-level
  methods exactly the turn's advantage; for token-level methods — GAE, PPO-BAD, TEMPO, DelTA — their mean).

Reported per method, pooled over the group batch:

* ``decisive mass share`` = Σ|A_t| over policy tokens of decisive turns / Σ|A_t| over all policy tokens; the
  ``uniform`` reference is the fraction of policy tokens that sit in decisive turns (the share of any method that
  spreads |A| evenly over tokens), and ``lift`` = share / uniform. Note: a method that z-normalises a signal inside a
  pool puts equal |A| mass on the pool's positive and negative deviations, so this share says little about methods
  whose pools mix decisive and non-decisive turns; the within-episode and bifurcation measures below do not have
  that blind spot.
* ``ρ(Ā, ΔV)`` and ``ρ(Ā, V)``: Spearman rank correlations (scipy) between ``Ā_k`` and ``ΔV_k`` / ``V_k``, pooled over
  every turn of the batch (NaN when either side is constant). Pooled, an outcome-only method scores well whenever
  successful episodes have more hop-resolving turns: it cannot tell turns of one episode apart.

Within-episode measures (turn-level credit vs outcome-only credit):

* ``within-episode ρ``: for each episode of the group batch, the Spearman ρ between ``Ā_k`` and ``ΔV_k`` over its
  turns, then the mean over the episodes used. An episode is **used** when it has ≥ 2 turns with both values finite
  and ``ΔV`` is not constant over them (a constant ΔV has no ranking to recover: skipped). When ``Ā`` is constant over
  the episode (``max − min ≤ 1e-6·max(1, max|Ā|)``) its ρ is **0 by definition**, so an outcome-only method (one
  advantage per episode) scores exactly 0, a method equal to ΔV scores 1 and its reverse −1. Ties are average ranks
  (scipy's Spearman); a 2-turn episode gives ±1. Reported with the number of episodes used.
* **Bifurcation pairs** (tree batch): two leaves of one task's rollout tree whose paths first split at fork level
  ``d`` share turns ``0..d−1`` token for token and were sampled independently from turn ``d`` on. One pair per pair of
  sibling branches (their first-born leaves: every path index after ``d`` is 0), so each fork event counts once;
  ``j`` = the first turn where the two trajectories' tokens differ (pairs that never differ are dropped). For the
  pair ``(a, b)``::

      share = |Ā_a,j − Ā_b,j| / Σ_{k ≥ j} |Ā_a,k − Ā_b,k|     (Ā = 0 on a turn the trajectory does not have)

  i.e. the fraction of the pair's difference in credit (over the turns from the fork on) that sits on the turn where
  the two trajectories actually diverged. Per-turn means, not per-token sums: with sums, the share would grow with
  the token length of the diverging turn (an outcome-only method would look turn-aware on long turns); a turn is the
  decision being credited. A turn beyond a trajectory's end counts as advantage 0 (it receives no gradient), so a
  method cannot hide credit in the longer tail. Pairs whose denominator is 0 (identical credit, e.g. GRPO on two
  leaves with equal outcomes) are undefined and not counted: the pair count is per method. References: the same
  share computed with ΔV in place of Ā (``ground truth ΔV``) and ``1 / (turns from j to the longer end)`` (an
  outcome-only method on two leaves of equal length).
* ``fork sign agreement``: over the pairs whose ground truth differs on the diverging turn (``ΔV_a,j ≠ ΔV_b,j``; the
  state before turn ``j`` is shared, so this is the difference in value reached by the two actions), the fraction
  where ``Ā_a,j − Ā_b,j`` has the sign of ``ΔV_a,j − ΔV_b,j`` (a tie in Ā counts 0.5; chance = 0.5).

Every figure has a 95% percentile-bootstrap CI (``bootstrap`` resamples, fixed seed; the same resampled indices for
every method of a batch): pooled figures and the within-episode ρ resample episodes, the bifurcation figures resample
pairs. Episodes of one task share its group normalisation, so these CIs (episodes / pairs taken as independent) are
somewhat narrow.

Signals come from the providers of `turngym.trainers.batch_signals.signal_providers` (gold-answer probe, tool matching,
answer clusters + support, rule step judge) run once with the behaviour policy; a provider that cannot run on the env
(e.g. no gold tool calls) is skipped and the methods that need it are n/a. Methods that need critic values (``gae``,
``ppo-bad``) get a Monte-Carlo **group turn-depth value**: every policy token of turn ``k`` of a row gets the mean
outcome of the rows of its group that reach turn ``k`` (no critic is trained). DelTA gets the policy's last hidden
states from one forward pass. GiGPO's anchor state before turn ``k`` is the env's progress anchor (``info["anchor"]``
of turn ``k−1``; ``progress=0/h`` for turn 0), written to ``Turn.info["anchor_obs"]``. Methods whose signals cannot be
produced for this env are reported as n/a with the reason.

Policies: ``warm`` is the SFT warm start built (or reused) in ``sft_dir``; any other source is a ``save_pretrained``
directory, a ``turngym train`` run directory (its newest valid checkpoint) or one checkpoint folder
(``.../checkpoints/step-00000010``), loaded as `turngym.evaluate.load_trained` does. Every policy is rolled out with
this benchmark's env settings and budgets, so its rows are comparable.

Usage::

    turngym bench credit-accuracy --quick --out bench_out/credit-accuracy
    turngym bench credit-accuracy --tasks 16 --group-size 8 --sft-dir WARM --threads 1 \\
        --policy warm --policy mid=RUN/checkpoints/step-00000010 --policy late=RUN/checkpoints/step-00000050
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from turngym.errors import ConfigError, CreditError, SignalError
from turngym.types import Trajectory

__all__ = [
    "CreditAccuracyConfig",
    "MethodResult",
    "bifurcation_pairs",
    "bootstrap_ci",
    "decisive_mass_share",
    "fill_signals",
    "first_divergence",
    "fork_shares",
    "fork_sign_agreement",
    "load_policy",
    "main",
    "mc_turn_values",
    "per_turn_advantages",
    "rollout_batch",
    "rollout_tree_batch",
    "run",
    "score_batch",
    "spearman",
    "turn_ground_truth",
    "within_episode_spearman",
]

#: Config overrides per method: the presets' PPO settings (turngym/configs/ppo*.yaml) for the GAE family.
METHOD_OVERRIDES: dict[str, dict[str, Any]] = {"gae": {"lam": 1.0}, "ppo-bad": {"lam": 0.95}}

#: Why a method cannot run on HopQA rollouts (shown instead of the raw error when the method fails).
NA_REASONS: dict[str, str] = {
    "pure": "needs per-turn process-reward-model scores (PRMProvider); no PRM ships with the built-in envs",
    "team-difference": "multi-agent team credit: needs counterfactual team outcomes (cf_outcome) from a "
    "multi-agent env",
}

#: The methods whose declared signal providers fill the benchmark's batches (each provider once, in this order);
#: PURE's rule PRM is left out on purpose (PURE is scored only with a real PRM: `NA_REASONS`).
SIGNAL_METHODS = ("a2tgpo", "matchtir", "siop", "slate", "capo", "calm", "lare")

#: Notes shown next to a method's numbers.
NOTES: dict[str, str] = {
    "gae": "critic values: MC group turn-depth value",
    "ppo-bad": "critic values: MC group turn-depth value; λ 0.95",
    "slate": "full-episode groups: judged turn = last turn, broadcast over the row",
    "gigpo": "anchors: env progress state before the turn",
    "delta": "DelTA over GRPO; hidden states from one forward pass",
    "oprl": "implicit PRM untrained (a copy of the policy): step rewards 0, so GRPO's credit; OPRL's PRM learns "
    "online during training",
    "lare": "decoder untrained on one batch: the outcome on the last turn (its fallback); the decoder learns online",
    "r3l": "group batch without retries: amplified GRPO, no pivot mask",
    "capo": "rule critique stand-in (gold calls and answer), no LLM judge",
    "calm": "rule subgoal stand-in (gold calls), no LLM judge",
    "tempo": "token-level; group rollouts (not a tree)",
}

#: Env keyword arguments used when none are given (HopQA: the main job's one document per search).
DEFAULT_ENV_KWARGS: dict[str, dict[str, Any]] = {"search/HopQA-v0": {"topk": 1}}

#: Tolerance of "constant" / "equal" advantages (relative to max(1, |values|)).
TOL = 1e-6


@dataclass(frozen=True)
class CreditAccuracyConfig:
    """Settings of `turngym bench credit-accuracy`."""

    env_id: str = "search/HopQA-v0"
    """Env with a ground-truth progress model (``info["value"]`` and ``info["value_delta"]`` on every step)."""
    tasks: int = 16
    """Task seeds in the group batch."""
    group_size: int = 8
    """Rollouts per task (G)."""
    env_kwargs: dict[str, Any] | None = None
    """Env keyword arguments; None = `DEFAULT_ENV_KWARGS` of the env (HopQA: one document per search)."""
    pretrain_steps: int = 400
    """Language-model pretraining steps of the tiny policy before SFT (the main job's warm start)."""
    sft_steps: int = 100
    """SFT warm-start steps of the tiny policy."""
    sft_episodes: int = 1024
    """Expert episodes for pretraining and SFT."""
    model_size: str = "1m"
    """Tiny model size."""
    max_new_tokens: int = 64
    """Token budget per turn."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    seed: int = 0
    """Seed of the SFT run, the task seeds, the sampler and the bootstrap."""
    methods: tuple[str, ...] = ()
    """Credit methods to compare; empty = every method in CREDIT."""
    out_dir: str = "bench_out/credit-accuracy"
    """Where the table, chart and JSON go."""
    sft_dir: str | None = None
    """SFT checkpoint directory (reused when its settings match); none = ``out_dir/sft``."""
    policies: tuple[tuple[str, str], ...] = (("warm", "warm"),)
    """``(name, source)`` per policy: source ``"warm"`` (the SFT warm start) or a model / run / checkpoint dir."""
    tree_tasks: int | None = None
    """Task seeds of the tree batch (bifurcation pairs); None = ``tasks``; 0 = no tree batch."""
    tree_branching: tuple[int, ...] = (2, 2, 2)
    """Forks of the tree sampler: ``branching[d]`` children before turn ``d`` (level 0: independent roots)."""
    bootstrap: int = 1000
    """Bootstrap resamples per CI (0 = no CIs)."""
    torch_threads: int = 1
    """CPU threads for torch."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further TrainConfig overrides (e.g. ``{"max_traj_tokens": 512}``)."""

    def __post_init__(self) -> None:
        if not self.policies:
            raise ConfigError("credit-accuracy needs at least one policy; e.g. policies=(('warm', 'warm'),).")
        names = [n for n, _ in self.policies]
        if len(set(names)) != len(names):
            raise ConfigError(f"policy names must be distinct, got {names}; name them with --policy NAME=DIR.")
        if any(b < 1 for b in self.tree_branching) or not self.tree_branching:
            raise ConfigError(f"tree_branching needs factors >= 1, got {self.tree_branching}.")
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap must be >= 0, got {self.bootstrap}.")

    @property
    def resolved_env_kwargs(self) -> dict[str, Any]:
        return dict(self.env_kwargs) if self.env_kwargs is not None else dict(DEFAULT_ENV_KWARGS.get(self.env_id, {}))

    @property
    def n_tree_tasks(self) -> int:
        return self.tasks if self.tree_tasks is None else self.tree_tasks

    def train_config(self):
        from turngym.trainers.config import TrainConfig

        base = {"env_id": self.env_id, "env_kwargs": self.resolved_env_kwargs, "model_size": self.model_size,
                "seed": self.seed, "pretrain_steps": self.pretrain_steps, "sft_steps": self.sft_steps,
                "sft_episodes": self.sft_episodes, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "torch_threads": self.torch_threads, "tensorboard": False,
                "progress": False, "report": False}
        return TrainConfig(**(base | self.extra))  # ``extra`` (``--set``) wins


QUICK = {"tasks": 4, "group_size": 4, "pretrain_steps": 0, "sft_steps": 30, "sft_episodes": 48, "max_new_tokens": 40,
         "tree_tasks": 2, "bootstrap": 200}
"""Sizes of ``--quick`` (a few minutes on an idle core)."""

#: CI keys of `MethodResult.ci`.
CI_KEYS = ("decisive_share", "lift", "rho_delta", "rho_value", "within_rho", "fork_share", "fork_agree")


@dataclass
class MethodResult:
    """One row of the table (``ci[metric] = [lo, hi]``, the 95% bootstrap interval; NaN = not available)."""

    method: str
    status: str  # "ok" or "n/a"
    decisive_share: float = math.nan
    lift: float = math.nan
    rho_delta: float = math.nan
    rho_value: float = math.nan
    within_rho: float = math.nan
    within_n: int = 0
    fork_share: float = math.nan
    fork_n: int = 0
    fork_agree: float = math.nan
    fork_agree_n: int = 0
    ratio_level: str = ""
    seconds: float = 0.0
    note: str = ""
    ci: dict[str, list[float]] = field(default_factory=dict)
    fork_status: str = ""  # "", "ok" or "n/a" (tree batch)


# ----------------------------------------------------------------------------------------------- ground truth


def turn_ground_truth(trajs: list[Trajectory], k_max: int) -> tuple[Tensor, Tensor, Tensor]:
    """Ground-truth ``(V [B, K], ΔV [B, K], decisive [B, K])`` from the env's per-step info (module docstring).

    ``V``/``ΔV`` are NaN on invalid turns; ``decisive`` is False there.

    Raises:
        ConfigError: a turn has no ``info["value"]`` (the env has no progress model).
    """
    b = len(trajs)
    v = torch.full((b, k_max), math.nan)
    dv = torch.full((b, k_max), math.nan)
    dec = torch.zeros((b, k_max), dtype=torch.bool)
    for i, t in enumerate(trajs):
        n = len(t.turns)
        for k, u in enumerate(t.turns):
            if "value" not in u.info:
                raise ConfigError(
                    f"turn {k} of trajectory {i} ({t.env_id}) has no info['value']: credit accuracy needs an env "
                    "with a ground-truth progress model (e.g. search/HopQA-v0, tool/Calc-v0)."
                )
            after = float(u.info["value"])
            step_delta = float(u.info.get("value_delta", 0.0) or 0.0)
            before = after - step_delta
            answer = k == n - 1 and t.final_answer is not None
            if answer:
                after = float(t.outcome)
            v[i, k] = after
            dv[i, k] = after - before
            dec[i, k] = step_delta > 0 or answer
    return v, dv, dec


def add_progress_anchors(trajs: list[Trajectory], key: str = "anchor_obs") -> None:
    """Write GiGPO's anchor (the env state BEFORE each turn) into ``Turn.info[key]``.

    The env records ``info["anchor"]`` = the progress state AFTER a step; the state before turn ``k`` is the anchor
    of turn ``k−1``, and ``progress=0/h`` before turn 0 (``h`` = number of gold calls). A trajectory whose env already
    wrote ``info[key]`` on every turn (e.g. TextWorld) keeps the env's anchors.
    """
    for t in trajs:
        if t.turns and all(key in u.info for u in t.turns):
            continue
        h = max(1, len(t.meta.get("gold_calls") or []))
        prev = f"progress=0/{h}"
        for u in t.turns:
            u.info[key] = prev
            prev = u.info.get("anchor", prev)


# ------------------------------------------------------------------------------------------------ metrics


def per_turn_advantages(adv: Tensor, turn_id: Tensor, turn_mask: Tensor) -> Tensor:
    """``Ā [B, K]``: mean of ``adv [B, L]`` over each turn's policy tokens; NaN on invalid / empty turns."""
    b, k_max = turn_mask.shape
    on = turn_id >= 0
    idx = torch.where(on, turn_id, torch.full_like(turn_id, k_max))
    s = torch.zeros(b, k_max + 1, dtype=torch.float64).scatter_add_(1, idx, torch.where(on, adv.double(), 0.0))
    c = torch.zeros(b, k_max + 1, dtype=torch.float64).scatter_add_(1, idx, on.double())
    mean = s[:, :k_max] / c[:, :k_max].clamp(min=1)
    return torch.where(turn_mask & (c[:, :k_max] > 0), mean, torch.full_like(mean, math.nan)).float()


def decisive_mass_share(adv: Tensor, turn_id: Tensor, decisive: Tensor) -> tuple[float, float]:
    """``(share, uniform)``: Σ|A| on decisive-turn tokens / Σ|A| on policy tokens, and the token share of decisive
    turns. ``adv``, ``turn_id``: ``[B, L]``; ``decisive``: ``[B, K]``. ``share`` is NaN when every |A| is 0."""
    num, den, dec_tok, tok = _share_parts(adv, turn_id, decisive)
    total, n = float(den.sum()), float(tok.sum())
    uniform = float(dec_tok.sum()) / n if n else math.nan
    share = float(num.sum()) / total if total > 0 else math.nan
    return share, uniform


def _share_parts(adv: Tensor, turn_id: Tensor, decisive: Tensor) -> tuple[np.ndarray, ...]:
    """Per-row sums ``(Σ|A| decisive, Σ|A|, decisive tokens, policy tokens)``, each ``[B]`` float64."""
    on = turn_id >= 0
    dec_tok = on & torch.gather(decisive, 1, turn_id.clamp(min=0))  # [B, L]
    mass = torch.where(on, adv.double().abs(), 0.0)
    return (torch.where(dec_tok, mass, 0.0).sum(1).numpy(), mass.sum(1).numpy(),
            dec_tok.double().sum(1).numpy(), on.double().sum(1).numpy())


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation (scipy) over the entries where both are finite; NaN if < 3 or constant."""
    from scipy.stats import spearmanr

    ok = torch.isfinite(x) & torch.isfinite(y)
    xs, ys = x[ok].double().numpy(), y[ok].double().numpy()
    if xs.size < 3 or xs.min() == xs.max() or ys.min() == ys.max():
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(xs, ys).statistic
    return float(rho)


def _rank_corr(x: np.ndarray, y: np.ndarray, min_n: int = 3) -> float:
    """Spearman ρ (Pearson on average ranks, = scipy's) of finite pairs; NaN if fewer than ``min_n`` or constant."""
    from scipy.stats import rankdata

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < min_n or x.min() == x.max() or y.min() == y.max():
        return math.nan
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx * rx).sum() * (ry * ry).sum()))


def _constant(x: np.ndarray, tol: float = TOL) -> bool:
    return x.size == 0 or float(x.max() - x.min()) <= tol * max(1.0, float(np.abs(x).max()))


def within_episode_spearman(ta: Tensor, dv: Tensor, tol: float = TOL) -> np.ndarray:
    """Per-episode Spearman ρ between ``Ā_k`` and ``ΔV_k`` over the episode's own turns (module docstring).

    Args:
        ta: ``[B, K]`` per-turn advantages (NaN on invalid turns).
        dv: ``[B, K]`` ground-truth turn credit (NaN on invalid turns).
        tol: Relative tolerance of "Ā is constant".

    Returns:
        ``[B]`` float64: ρ of each used episode (≥ 2 turns with both finite, ΔV not constant; a constant Ā gives 0),
        NaN for the episodes not used.
    """
    if ta.shape != dv.shape or ta.dim() != 2:
        raise ValueError(f"within_episode_spearman expects ta[B,K] and dv[B,K]; got {tuple(ta.shape)}, "
                         f"{tuple(dv.shape)}.")
    a, d = ta.double().numpy(), dv.double().numpy()
    out = np.full(a.shape[0], math.nan)
    for i in range(a.shape[0]):
        ok = np.isfinite(a[i]) & np.isfinite(d[i])
        ai, di = a[i][ok], d[i][ok]
        if ai.size < 2 or _constant(di, tol):
            continue
        out[i] = 0.0 if _constant(ai, tol) else _rank_corr(ai, di, min_n=2)
    return out


def first_divergence(a: Trajectory, b: Trajectory) -> int | None:
    """First turn index where ``a`` and ``b`` differ (action or observation tokens); None if they never differ or
    do not share their prompt."""
    if list(a.prompt_ids) != list(b.prompt_ids):
        return None
    n = min(len(a.turns), len(b.turns))
    for k in range(n):
        ua, ub = a.turns[k], b.turns[k]
        if list(ua.action_ids) != list(ub.action_ids) or list(ua.obs_ids) != list(ub.obs_ids):
            return k
    return n if len(a.turns) != len(b.turns) else None


def bifurcation_pairs(trajs: Sequence[Trajectory]) -> list[tuple[int, int, int]]:
    """``(a, b, j)`` per bifurcation pair of tree rollouts (``meta["tree"]["path"]``; module docstring).

    Within a group, leaves ``a`` and ``b`` form a pair when their paths (padded with 0) first differ at level ``d``
    and are 0 after it (the first-born leaves of two sibling branches: one pair per fork event and sibling pair).
    ``j`` is `first_divergence`; pairs that never differ are dropped. Trajectories without a tree path form no pair.
    """
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(trajs):
        if isinstance(t.meta.get("tree"), dict) and "path" in t.meta["tree"]:
            groups.setdefault(str(t.group_id), []).append(i)
    out: list[tuple[int, int, int]] = []
    for idx in groups.values():
        depth = max(len(trajs[i].meta["tree"]["path"]) for i in idx)
        paths = {i: list(trajs[i].meta["tree"]["path"]) + [0] * (depth - len(trajs[i].meta["tree"]["path"]))
                 for i in idx}
        for x, a in enumerate(idx):
            for b in idx[x + 1:]:
                pa, pb = paths[a], paths[b]
                d = next((lv for lv in range(depth) if pa[lv] != pb[lv]), None)
                if d is None or any(pa[d + 1:]) or any(pb[d + 1:]):
                    continue
                j = first_divergence(trajs[a], trajs[b])
                if j is not None:
                    out.append((a, b, j))
    return out


def fork_shares(ta: Tensor, pairs: Sequence[tuple[int, int, int]], tol: float = TOL) -> np.ndarray:
    """Per pair ``|Ā_a,j − Ā_b,j| / Σ_{k≥j} |Ā_a,k − Ā_b,k|`` (missing turns count 0); NaN when the denominator is 0.

    Args:
        ta: ``[B, K]`` per-turn values (advantages, or ΔV for the ground-truth reference); NaN = no turn.
        pairs: ``(a, b, j)`` from `bifurcation_pairs`.

    Returns:
        ``[P]`` float64.
    """
    a_all = np.nan_to_num(ta.double().numpy(), nan=0.0)
    out = np.full(len(pairs), math.nan)
    for p, (a, b, j) in enumerate(pairs):
        diff = np.abs(a_all[a, j:] - a_all[b, j:])
        den = float(diff.sum())
        scale = max(1.0, float(np.abs(a_all[a, j:]).max(initial=0.0)), float(np.abs(a_all[b, j:]).max(initial=0.0)))
        if den > tol * scale:
            out[p] = float(diff[0]) / den
    return out


def fork_sign_agreement(ta: Tensor, dv: Tensor, pairs: Sequence[tuple[int, int, int]], tol: float = TOL
                        ) -> np.ndarray:
    """Per pair: 1 if ``Ā_a,j − Ā_b,j`` has the sign of ``ΔV_a,j − ΔV_b,j``, 0.5 if the Ā are equal, 0 otherwise;
    NaN where the ground truth does not differ on turn ``j`` (or a value is missing). ``[P]`` float64."""
    a_all, d_all = ta.double().numpy(), dv.double().numpy()
    out = np.full(len(pairs), math.nan)
    for p, (a, b, j) in enumerate(pairs):
        g = d_all[a, j] - d_all[b, j]
        s = a_all[a, j] - a_all[b, j]
        if not (math.isfinite(g) and math.isfinite(s)) or abs(g) <= tol:
            continue
        if abs(s) <= tol * max(1.0, abs(a_all[a, j]), abs(a_all[b, j])):
            out[p] = 0.5
        else:
            out[p] = 1.0 if (s > 0) == (g > 0) else 0.0
    return out


def suffix_uniform_share(trajs: Sequence[Trajectory], pairs: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """``1 / (max(T_a, T_b) − j)`` per pair: the share of an outcome-only method on two leaves of equal length."""
    return np.array([1.0 / max(1, max(len(trajs[a].turns), len(trajs[b].turns)) - j) for a, b, j in pairs],
                    dtype=np.float64)


# ------------------------------------------------------------------------------------------------ bootstrap


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` resampled unit indices (with replacement) from a fixed seed; empty if ``n_boot`` or ``n`` is 0."""
    if n_boot <= 0 or n <= 0:
        return np.zeros((0, n), dtype=np.int64)
    return np.random.default_rng([seed, n, 17]).integers(0, n, size=(n_boot, n))


def bootstrap_ci(stat: Callable[[np.ndarray], float], idx: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval ``[lo, hi]`` of ``stat(unit_indices)`` over the rows of ``idx`` (from
    `bootstrap_indices`); resamples where the statistic is undefined (NaN) are left out; NaN if none is defined."""
    if idx.shape[0] == 0:
        return [math.nan, math.nan]
    vals = np.array([stat(r) for r in idx], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return [math.nan, math.nan]
    q = (1.0 - level) / 2.0
    return [float(np.quantile(vals, q)), float(np.quantile(vals, 1.0 - q))]


def _mean_ci(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, int, list[float]]:
    """``(mean, n, ci)`` of the finite entries of ``values`` (bootstrap over those entries)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return math.nan, 0, [math.nan, math.nan]
    idx = bootstrap_indices(v.size, n_boot, seed)
    return float(v.mean()), int(v.size), bootstrap_ci(lambda r: float(v[r].mean()), idx)


def mc_turn_values(batch) -> Tensor:
    """Monte-Carlo group turn-depth value ``[B, L]``: each policy token of turn ``k`` gets the mean outcome of the
    rows of its group that have a turn ``k``; 0 off the policy tokens (never read there)."""
    b, k_max = batch.turn_mask.shape
    r = torch.nan_to_num(batch.outcome.double(), nan=0.0)[:, None].expand(b, k_max)
    key = (batch.group_index[:, None] * k_max + torch.arange(k_max)[None, :]).reshape(-1)
    m = batch.turn_mask.reshape(-1).double()
    n_key = int(key.max()) + 1
    s = torch.zeros(n_key, dtype=torch.float64).scatter_add_(0, key, r.reshape(-1) * m)
    c = torch.zeros(n_key, dtype=torch.float64).scatter_add_(0, key, m)
    v = (s / c.clamp(min=1))[key].view(b, k_max)
    return batch.broadcast_turns(torch.where(batch.turn_mask, v, 0.0).float())


@torch.no_grad()
def hidden_states(model, batch, chunk_size: int = 16) -> Tensor:
    """``[B, L, H]`` last hidden state at each response position (DelTA's token features)."""
    from turngym.trainers.forward import chunk_logprobs, iter_chunks

    out: Tensor | None = None
    for chunk in iter_chunks(batch, torch.arange(batch.batch_size), chunk_size):
        _, _, h = chunk_logprobs(model, chunk, with_hidden=True)
        if out is None:
            out = torch.zeros(batch.batch_size, batch.length, h.shape[-1])
        out[chunk.rows, : chunk.length] = h.float().cpu()
    assert out is not None
    return out


# ------------------------------------------------------------------------------------------------ pipeline


def _is_run_or_checkpoint(path: Path) -> bool:
    return ((path / "config.yaml").is_file() and (path / "checkpoints").is_dir()) or (
        (path / "manifest.json").is_file() and (path / "model.pt").is_file())


def load_policy(cfg: CreditAccuracyConfig, source: str, log=print) -> tuple[Any, Any, dict[str, Any]]:
    """``(run_cfg, setup, info)`` of one policy: ``"warm"`` (the SFT warm start, trained once into ``cfg.sft_dir``),
    a ``save_pretrained`` directory, a ``turngym train`` run directory or one of its checkpoint folders.

    The env, budgets and sampling settings are this benchmark's for every policy.
    """
    from turngym.trainers import policy_setup

    tcfg = cfg.train_config()
    if source == "warm":
        from turngym.bench.sft import sft_checkpoint

        sft_dir = Path(cfg.sft_dir) if cfg.sft_dir else Path(cfg.out_dir) / "sft"
        path, sft_info = sft_checkpoint(tcfg, sft_dir, log=log)
        run_cfg = tcfg.replace(model=str(path), sft_steps=0)
        s = policy_setup.setup(run_cfg)
        return run_cfg, s, {"source": "warm", "sft_dir": str(path), "sft": sft_info}
    path = Path(source).expanduser()
    if not path.is_dir():
        raise ConfigError(f"policy source {source!r} is neither 'warm' nor a directory (a save_pretrained model, a "
                          "turngym run directory or a checkpoint folder).")
    if not _is_run_or_checkpoint(path):
        run_cfg = tcfg.replace(model=str(path), sft_steps=0)
        return run_cfg, policy_setup.setup(run_cfg), {"source": str(path), "kind": "save_pretrained"}
    from turngym.agents.policy import HFPolicy
    from turngym.agents.render import Renderer, prompt_tool_schemas
    from turngym.envs import make
    from turngym.evaluate import load_trained

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    model, tok = load_trained(str(path), device="cpu")
    env = make(cfg.env_id, **cfg.resolved_env_kwargs)
    renderer = Renderer(tok, prompt_tool_schemas(env))
    env.close()
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    s = policy_setup.Setup(model, tok, renderer, HFPolicy(model, tok), torch.device("cpu"), pad_id)
    run_cfg = tcfg.replace(sft_steps=0)
    return run_cfg, s, {"source": str(path), "kind": "checkpoint"}


def _task_seeds(cfg: CreditAccuracyConfig, n: int, stream: int) -> list[int]:
    return [int(x) for x in np.random.default_rng([cfg.seed, stream]).integers(0, cfg.train_config().eval_seed,
                                                                                size=n)]


def rollout_batch(cfg: CreditAccuracyConfig, log=print, policy: str = "warm", loaded: tuple | None = None
                  ) -> tuple[list[Trajectory], Any, dict[str, Any]]:
    """One batch of group rollouts of ``policy`` (a `load_policy` source) with all signals filled.

    Returns ``(trajectories, setup, info)``; ``loaded`` = a `load_policy` result to reuse.
    """
    from turngym.trainers import sampling

    run_cfg, s, pinfo = loaded if loaded is not None else load_policy(cfg, policy, log=log)
    s.model.eval()
    seeds = _task_seeds(cfg, cfg.tasks, 1)
    t0 = time.perf_counter()
    trajs, _ = sampling.rollout(run_cfg, s, seeds, cfg.group_size, sample_seed=cfg.seed)
    rollout_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    providers, failed = fill_signals_checked(trajs, run_cfg, s)
    info = {**pinfo, "seeds": seeds, "rollout_s": rollout_s, "signals_s": time.perf_counter() - t0,
            "providers": providers, "providers_failed": failed,
            "success": float(np.mean([sampling.succeeded(t) for t in trajs]))}
    info.setdefault("sft", {})
    info.setdefault("sft_dir", None)
    return trajs, s, info


def rollout_tree_batch(cfg: CreditAccuracyConfig, run_cfg: Any, s: Any) -> tuple[list[Trajectory], dict[str, Any]]:
    """One batch of tree rollouts (``cfg.n_tree_tasks`` seeds, ``cfg.tree_branching``) with all signals filled."""
    from turngym.agents.rollout import collect_rollouts
    from turngym.trainers import sampling

    seeds = _task_seeds(cfg, cfg.n_tree_tasks, 2)
    if hasattr(s.policy, "reseed"):
        s.policy.reseed(cfg.seed + 1)
    t0 = time.perf_counter()
    trajs = collect_rollouts(run_cfg.env_id, s.policy, s.renderer, seeds, math.prod(cfg.tree_branching),
                             sampler="tree", params=sampling.sampling_params(run_cfg),
                             max_turns=run_cfg.max_turns, max_traj_tokens=run_cfg.max_traj_tokens,
                             env_kwargs=run_cfg.env_kwargs, sampler_kwargs={"branching": tuple(cfg.tree_branching)})
    rollout_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    providers, failed = fill_signals_checked(trajs, run_cfg, s)
    return trajs, {"seeds": seeds, "rollout_s": rollout_s, "signals_s": time.perf_counter() - t0,
                   "providers": providers, "providers_failed": failed,
                   "success": float(np.mean([sampling.succeeded(t) for t in trajs])) if trajs else math.nan}


def _providers(run_cfg: Any, s: Any) -> list[Any]:
    from turngym.trainers import batch_signals

    providers, seen = [], set()
    for m in SIGNAL_METHODS:
        for p in batch_signals.signal_providers(run_cfg.replace(credit=m, credit_overrides={}), s):
            if p.name not in seen:
                providers.append(p)
                seen.add(p.name)
    return providers


def fill_signals(trajs: list[Trajectory], run_cfg: Any, s: Any) -> list[str]:
    """Run every provider the trainers use (probe, tool match, SIOP clusters + support, rule judge) with the
    behaviour policy ``s.model``, and write GiGPO's progress anchors. Returns the provider names."""
    from turngym.credit.signals import run_providers

    providers = _providers(run_cfg, s)
    run_providers(trajs, providers)
    add_progress_anchors(trajs)
    return [p.name for p in providers]


def fill_signals_checked(trajs: list[Trajectory], run_cfg: Any, s: Any) -> tuple[list[str], dict[str, str]]:
    """`fill_signals`, except that a provider raising `SignalError` (its data is absent on this env, e.g. no gold
    tool calls) is skipped: returns ``(names run, {name: reason} skipped)``; the methods needing it become n/a."""
    ran, failed = [], {}
    for p in _providers(run_cfg, s):
        try:
            p(trajs)
            ran.append(p.name)
        except SignalError as err:
            failed[p.name] = str(err).split("\n")[0]
    add_progress_anchors(trajs)
    return ran, failed


def _prepare_batch(trajs: list[Trajectory], model: Any, pad_id: int, methods: list[str]):
    from turngym.credit import GroupBatch
    from turngym.trainers.forward import batch_logprobs

    device = next(model.parameters()).device
    batch = GroupBatch.from_trajectories(trajs, pad_id=pad_id)
    if batch.old_logprobs is None:  # e.g. scripted rollouts: score the sampled tokens with the policy
        batch.old_logprobs = batch_logprobs(model, batch.to(device)).cpu()
    batch.values = mc_turn_values(batch)
    if "delta" in methods:
        batch.token_features["hidden"] = hidden_states(model, batch.to(device))
    fill_learned(batch, model, methods)
    return batch


def fill_learned(batch, model: Any, methods: list[str]) -> None:
    """The learned signal components the methods declare (OPRL's implicit PRM, LaRe's decoder), built fresh from
    the scored policy as a trainer builds them at step 0 (`turngym.trainers.learned`), write their signals into
    ``batch``. A one-batch benchmark cannot train them: the PRM equals the policy (step rewards 0) and the decoder
    has no data (LaRe falls back to the outcome) — see `NOTES`."""
    from turngym.credit import credit_needs
    from turngym.trainers import learned

    device = next(model.parameters()).device
    for name in methods:
        if not credit_needs(name).learned:
            continue
        comps = learned.build_learned(name, learned.LearnedContext(method=name, model=model, device=device))
        on_device = batch.to(device)
        learned.before_credit(comps, on_device, step=0)
        batch.token_features |= {k: v.cpu() for k, v in on_device.token_features.items()}
        batch.turn_signals |= {k: v.cpu() for k, v in on_device.turn_signals.items() if k not in batch.turn_signals}
        if on_device.old_logprobs is not None:
            batch.old_logprobs = on_device.old_logprobs.cpu()


def score_batch(trajs: list[Trajectory], model: Any, pad_id: int, methods: list[str], *, bootstrap: int = 0,
                seed: int = 0) -> tuple[list[MethodResult], dict[str, Any]]:
    """Every method on one batch of group trajectories (signals already filled), scored against the ground truth:
    pooled figures and the within-episode ρ, with ``bootstrap`` resamples per CI (0 = none).

    Returns ``(rows, batch_stats)``.
    """
    batch = _prepare_batch(trajs, model, pad_id, methods)
    v, dv, decisive = turn_ground_truth(trajs, batch.max_turns)
    rows = evaluate_methods(batch, methods, decisive, v, dv, bootstrap=bootstrap, seed=seed)
    _, uniform = decisive_mass_share(torch.ones_like(batch.turn_id, dtype=torch.float32), batch.turn_id, decisive)
    w = within_episode_spearman(dv, dv)
    stats = {"trajectories": len(trajs), "turns": int(batch.turn_mask.sum()), "decisive_turns": int(decisive.sum()),
             "decisive_token_share": uniform,
             "answered": sum(t.final_answer is not None for t in trajs) / max(len(trajs), 1),
             "within_episodes": int(np.isfinite(w).sum())}
    return rows, stats


def score_tree_batch(trajs: list[Trajectory], model: Any, pad_id: int, methods: list[str], *, bootstrap: int = 0,
                     seed: int = 0) -> tuple[dict[str, MethodResult], dict[str, Any]]:
    """Every method on one batch of tree trajectories, scored on its bifurcation pairs (fork share and fork sign
    agreement, with CIs). Returns ``({method: row}, stats)``; ``stats`` holds the references (ground truth ΔV,
    uniform over the suffix)."""
    pairs = bifurcation_pairs(trajs)
    batch = _prepare_batch(trajs, model, pad_id, methods)
    _, dv, _ = turn_ground_truth(trajs, batch.max_turns)
    rows: dict[str, MethodResult] = {}
    for name, out, err, secs in _run_methods(batch, methods):
        if out is None:
            rows[name] = MethodResult(name, "n/a", note=err, seconds=secs)
            continue
        ta = per_turn_advantages(out.advantages.float().cpu(), batch.turn_id, batch.turn_mask)
        r = MethodResult(name, "ok", ratio_level=out.ratio_level, seconds=secs)
        r.fork_share, r.fork_n, r.ci["fork_share"] = _mean_ci(fork_shares(ta, pairs), bootstrap, seed)
        r.fork_agree, r.fork_agree_n, r.ci["fork_agree"] = _mean_ci(fork_sign_agreement(ta, dv, pairs), bootstrap,
                                                                   seed)
        rows[name] = r
    gt = _mean_ci(fork_shares(dv, pairs), bootstrap, seed)
    uni = _mean_ci(suffix_uniform_share(trajs, pairs), bootstrap, seed)
    levels: dict[str, int] = {}
    for _, _, j in pairs:
        levels[str(j)] = levels.get(str(j), 0) + 1
    n_diff = int(np.isfinite(fork_sign_agreement(dv, dv, pairs)).sum())
    stats = {"trajectories": len(trajs), "pairs": len(pairs), "pairs_by_fork_turn": dict(sorted(levels.items())),
             "pairs_gt_differs": n_diff,
             "gt_share": gt[0], "gt_share_n": gt[1], "gt_share_ci": gt[2],
             "uniform_share": uni[0], "uniform_share_ci": uni[2],
             "answered": sum(t.final_answer is not None for t in trajs) / max(len(trajs), 1)}
    return rows, stats


def _run_methods(batch, methods: list[str]):
    """``(name, CreditOutput | None, n/a reason, seconds)`` per method."""
    from turngym.credit import assign_credit

    for name in methods:
        t0 = time.perf_counter()
        try:
            out = assign_credit(name, batch, **METHOD_OVERRIDES.get(name, {}))
        except (CreditError, SignalError) as err:
            reason = NA_REASONS.get(name) or str(err).split(". ")[0]
            if name == "siop" and not bool(batch.has_answer.any()):
                reason = "no trajectory of the batch answered, so SIOP has no answer clusters to score support for"
            yield name, None, reason, time.perf_counter() - t0
            continue
        yield name, out, "", time.perf_counter() - t0


def evaluate_methods(batch, methods: list[str], decisive: Tensor, v: Tensor, dv: Tensor, *, bootstrap: int = 0,
                     seed: int = 0) -> list[MethodResult]:
    """Run each method on ``batch`` and score it (pooled figures, within-episode ρ, CIs over episodes); failures to
    produce a method's inputs become n/a rows."""
    rows = []
    idx = bootstrap_indices(batch.batch_size, bootstrap, seed)
    v_np, dv_np = v.double().numpy(), dv.double().numpy()
    for name, out, err, secs in _run_methods(batch, methods):
        if out is None:
            rows.append(MethodResult(name, "n/a", note=err, seconds=secs))
            continue
        adv = out.advantages.float().cpu()
        ta = per_turn_advantages(adv, batch.turn_id, batch.turn_mask)
        share, uniform = decisive_mass_share(adv, batch.turn_id, decisive)
        r = MethodResult(
            name, "ok", decisive_share=share, lift=share / uniform if uniform and uniform > 0 else math.nan,
            rho_delta=spearman(ta, dv), rho_value=spearman(ta, v), ratio_level=out.ratio_level, seconds=secs,
            note=NOTES.get(name, "") if math.isfinite(share) else "every advantage is 0 on this batch",
        )
        r.within_rho, r.within_n, r.ci["within_rho"] = _mean_ci(within_episode_spearman(ta, dv), bootstrap, seed)
        if idx.shape[0]:
            num, den, dtok, tok = _share_parts(adv, batch.turn_id, decisive)
            ta_np = ta.double().numpy()

            def share_of(rr, num=num, den=den):
                d = den[rr].sum()
                return num[rr].sum() / d if d > 0 else math.nan

            def lift_of(rr, num=num, den=den, dtok=dtok, tok=tok):
                d, u = den[rr].sum(), dtok[rr].sum() / max(tok[rr].sum(), 1.0)
                return (num[rr].sum() / d) / u if d > 0 and u > 0 else math.nan

            r.ci["decisive_share"] = bootstrap_ci(share_of, idx)
            r.ci["lift"] = bootstrap_ci(lift_of, idx)
            r.ci["rho_delta"] = bootstrap_ci(lambda rr, a=ta_np: _rank_corr(a[rr].ravel(), dv_np[rr].ravel()), idx)
            r.ci["rho_value"] = bootstrap_ci(lambda rr, a=ta_np: _rank_corr(a[rr].ravel(), v_np[rr].ravel()), idx)
        rows.append(r)
    return rows


def run_policy(cfg: CreditAccuracyConfig, name: str, source: str, methods: list[str], log=print) -> dict[str, Any]:
    """Group and tree batches of one policy, scored; the policy's part of the summary."""
    t0 = time.perf_counter()
    loaded = load_policy(cfg, source, log=log)
    run_cfg, s, _ = loaded
    trajs, s, info = rollout_batch(cfg, log=log, loaded=loaded)
    rows, stats = score_batch(trajs, s.model, s.pad_id, methods, bootstrap=cfg.bootstrap, seed=cfg.seed)
    tree_stats: dict[str, Any] = {}
    if cfg.n_tree_tasks > 0:
        s.model.eval()
        tree, tinfo = rollout_tree_batch(cfg, run_cfg, s)
        tree_rows, tree_stats = score_tree_batch(tree, s.model, s.pad_id, methods, bootstrap=cfg.bootstrap,
                                                 seed=cfg.seed)
        tree_stats |= {"tasks": cfg.n_tree_tasks, "branching": list(cfg.tree_branching), "info": tinfo}
        for r in rows:
            t = tree_rows.get(r.method)
            if t is None:
                continue
            r.fork_status = t.status
            if t.status == "ok":
                r.fork_share, r.fork_n, r.fork_agree, r.fork_agree_n = t.fork_share, t.fork_n, t.fork_agree, \
                    t.fork_agree_n
                r.ci["fork_share"], r.ci["fork_agree"] = t.ci.get("fork_share", []), t.ci.get("fork_agree", [])
            elif r.status == "ok":
                r.note = (r.note + "; " if r.note else "") + f"tree batch n/a: {t.note}"
    batch = stats | {"tasks": cfg.tasks, "group_size": cfg.group_size, "success": info["success"]}
    return {"name": name, "source": source, "rows": [dataclasses.asdict(r) for r in rows], "batch": batch,
            "tree": tree_stats,
            "info": {k: v_ for k, v_ in info.items() if k != "sft"} | {"sft_metrics": info["sft"].get("metrics", {})},
            "seconds": time.perf_counter() - t0}


def run(cfg: CreditAccuracyConfig, log=print) -> dict[str, Any]:
    """The whole benchmark; writes ``credit_accuracy.md``, ``credit_accuracy.png`` and ``credit_accuracy.json``.

    ``summary["policies"]`` holds one entry per policy; ``summary["rows"]`` / ``["batch"]`` / ``["info"]`` are the
    first policy's (the single-policy layout of earlier versions).
    """
    from turngym.credit import CREDIT

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    methods = list(cfg.methods) or list(CREDIT.names())
    for m in methods:
        CREDIT[m]  # unknown name -> RegistryError with did-you-mean, before any work
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    policies = []
    for name, source in cfg.policies:
        log(f"credit-accuracy: policy {name} ({source})")
        policies.append(run_policy(cfg, name, source, methods, log=log))
    first = policies[0]
    summary = {
        "config": dataclasses.asdict(cfg), "policies": policies,
        "rows": first["rows"], "batch": first["batch"], "info": first["info"],
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": time.perf_counter() - t_start,
    }
    paths = {"table": out_dir / "credit_accuracy.md", "chart": out_dir / "credit_accuracy.png",
             "json": out_dir / "credit_accuracy.json"}
    paths["table"].write_text(markdown_table(summary), encoding="utf-8")
    plot(summary, paths["chart"])
    summary["paths"] = {k: str(p) for k, p in paths.items()}
    paths["json"].write_text(json.dumps(jsonable(summary), indent=1, default=_json_default, allow_nan=False),
                             encoding="utf-8")
    return summary


def _json_default(o: Any) -> Any:
    return str(o)


def jsonable(o: Any) -> Any:
    """``o`` with non-finite floats replaced by None (strict JSON: no NaN literals)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    return o


def machine() -> str:
    """One line describing the machine (CPU model, cores, torch threads)."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _ci(r: dict[str, Any], key: str, fmt: str = ".3f") -> str:
    """``value [lo, hi]`` (the CI only when available)."""
    val = _f(r.get(key), fmt)
    ci = (r.get("ci") or {}).get(key) or []
    if val == "n/a" or len(ci) != 2 or any(c is None or not math.isfinite(c) for c in ci):
        return val
    return f"{val} [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def _policy_tables(p: dict[str, Any], c: dict[str, Any]) -> list[str]:
    b, tr = p["batch"], p.get("tree") or {}
    head = (
        f"Group batch: {b['trajectories']} trajectories ({b['tasks']} {c['env_id']} tasks x G={b['group_size']}), "
        f"{b['turns']} turns, {b['decisive_turns']} decisive; uniform share (policy tokens in decisive turns) "
        f"= {_f(b['decisive_token_share'])}; batch success {_f(b['success'], '.2f')}, answered "
        f"{_f(b['answered'], '.2f')}; {b.get('within_episodes', 'n/a')} episodes with a non-constant ΔV "
        "(within-episode ρ)."
    )
    lines = [head, "",
             "| method | decisive mass share | lift vs uniform | ρ(Ā, ΔV) pooled | ρ(Ā, V) pooled | ratio | notes |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in p["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | n/a | n/a | n/a | n/a | | {r['note']} |")
            continue
        lines.append(f"| {r['method']} | {_ci(r, 'decisive_share')} | {_ci(r, 'lift', '.2f')} | {_ci(r, 'rho_delta')} "
                     f"| {_ci(r, 'rho_value')} | {r['ratio_level']} | {r['note']} |")
    lines.append("")
    if tr:
        bl = ", ".join(f"turn {j}: {n}" for j, n in tr.get("pairs_by_fork_turn", {}).items())
        lines += [(f"Tree batch: {tr['trajectories']} trajectories ({tr['tasks']} tasks, branching "
                   f"{tuple(tr['branching'])}), batch success {_f(tr['info'].get('success'), '.2f')}; "
                   f"{tr['pairs']} bifurcation pairs (diverging {bl or 'nowhere'}), {tr['pairs_gt_differs']} "
                   f"with a ground-truth difference on the diverging turn (sign agreement)."), ""]
    lines += ["| method | within-episode ρ(Ā, ΔV) | episodes | fork share | pairs | fork sign agreement | pairs |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in p["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | n/a | | n/a | | n/a | |")
            continue
        fork = (f"{_ci(r, 'fork_share')} | {r['fork_n']} | {_ci(r, 'fork_agree')} | {r['fork_agree_n']}"
                if r.get("fork_status") == "ok" else "n/a | | n/a |")
        lines.append(f"| {r['method']} | {_ci(r, 'within_rho')} | {r['within_n']} | {fork} |")
    if tr:
        gt = {"fork_share": tr["gt_share"], "ci": {"fork_share": tr["gt_share_ci"]}}
        uni = {"fork_share": tr["uniform_share"], "ci": {"fork_share": tr["uniform_share_ci"]}}
        lines.append(f"| *ground truth ΔV* | 1 | | {_ci(gt, 'fork_share')} | {tr['gt_share_n']} | 1 | |")
        lines.append(f"| *uniform over the suffix turns* | | | {_ci(uni, 'fork_share')} | {tr['pairs']} | | |")
    return lines


def report_header(c: dict[str, Any], policies: list[dict[str, Any]]) -> str:
    """The report's first line: the env, how the ``warm`` policy was built (only when one of the policies is it;
    the others were loaded from their directories as they are) and the CI method."""
    start = (f"warm start = {c.get('pretrain_steps', 0)} LM pretraining and {c['sft_steps']} SFT steps on "
             f"{c['sft_episodes']} expert episodes (seed {c['seed']})"
             if any(p.get("source") == "warm" for p in policies) else "each policy loaded from its directory as is")
    return (f"Tiny {c['model_size']} policies on {c['env_id']}; {start}. 95% percentile-bootstrap CIs in brackets "
            f"({c.get('bootstrap', 0)} resamples: episodes for the group batch, pairs for the tree batch).")


def markdown_table(summary: dict[str, Any]) -> str:
    """The markdown report of one credit-accuracy run (one section per policy, then a cross-policy summary)."""
    c = summary["config"]
    policies = summary.get("policies") or [{"name": "warm", "source": "warm", "rows": summary["rows"],
                                            "batch": summary["batch"], "tree": {}}]
    lines = [report_header(c, policies), ""]
    for p in policies:
        lines += [f"#### Policy `{p['name']}` ({p['source']})", "", *_policy_tables(p, c), ""]
    if len(policies) > 1:
        names = [p["name"] for p in policies]
        lines += ["#### Across policies: within-episode ρ(Ā, ΔV) / fork share", "",
                  "| method | " + " | ".join(f"{n} within-ep ρ" for n in names) + " | "
                  + " | ".join(f"{n} fork share" for n in names) + " |",
                  "| --- | " + " | ".join(["---:"] * (2 * len(names))) + " |"]
        by = [{r["method"]: r for r in p["rows"]} for p in policies]
        for m in [r["method"] for r in policies[0]["rows"]]:
            cells = [(_ci(d[m], "within_rho") if m in d and d[m]["status"] == "ok" else "n/a") for d in by]
            cells += [(_ci(d[m], "fork_share") if m in d and d[m].get("fork_status") == "ok" else "n/a") for d in by]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Machine: {summary['machine']}. Date: {summary['date']}. Wall time {summary['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars per method (one colour per policy), with the CIs as error bars: decisive mass share, pooled
    ρ(Ā, ΔV), within-episode ρ(Ā, ΔV) and fork share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = summary.get("policies") or [{"name": "warm", "rows": summary["rows"], "batch": summary["batch"],
                                            "tree": {}}]
    names = [r["method"] for r in policies[0]["rows"]]
    panels = (("decisive_share", "share of |advantage| on decisive turns", (0, 1)),
              ("rho_delta", "pooled Spearman ρ(turn advantage, ΔV)", (-1, 1)),
              ("within_rho", "within-episode Spearman ρ(turn advantage, ΔV)", (-1, 1)),
              ("fork_share", "share of the pair's credit difference on the diverging turn", (0, 1)))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, 0.6 * len(names) + 3.0), 3.2 * len(panels)))
    width = 0.8 / len(policies)
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    for ax, (key, title, ylim) in zip(axes, panels):
        for pi, p in enumerate(policies):
            by = {r["method"]: r for r in p["rows"]}
            vals, lo, hi = [], [], []
            for m in names:
                r = by.get(m, {})
                ok = r.get("status") == "ok" and (key != "fork_share" or r.get("fork_status") == "ok")
                v = r.get(key) if ok else None
                v = v if isinstance(v, float) and math.isfinite(v) else math.nan
                ci = (r.get("ci") or {}).get(key) or [math.nan, math.nan]
                vals.append(v)
                # a point estimate may sit outside its percentile interval (small samples): no negative bar
                lo.append(max(0.0, v - ci[0]) if math.isfinite(v) and ci and math.isfinite(ci[0]) else 0.0)
                hi.append(max(0.0, ci[1] - v) if math.isfinite(v) and ci and math.isfinite(ci[1]) else 0.0)
            x = [i + (pi - (len(policies) - 1) / 2) * width for i in range(len(names))]
            ax.bar(x, [0.0 if not math.isfinite(v) else v for v in vals], width, yerr=[lo, hi], capsize=2,
                   color=colors[pi % len(colors)], label=p["name"], error_kw={"lw": 0.7})
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylim(*ylim)
    uni = policies[0]["batch"].get("decisive_token_share")
    if isinstance(uni, float) and math.isfinite(uni):
        axes[0].axhline(uni, color="#999999", ls="--", lw=1, label=f"uniform ({uni:.2f}, {policies[0]['name']})")
    tr = policies[0].get("tree") or {}
    if isinstance(tr.get("gt_share"), float) and math.isfinite(tr["gt_share"]):
        axes[3].axhline(tr["gt_share"], color="#999999", ls="--", lw=1, label=f"ground truth ΔV ({tr['gt_share']:.2f})")
    axes[0].legend(fontsize=7)
    axes[3].legend(fontsize=7)
    fig.suptitle(f"Credit accuracy on {summary['config']['env_id']} (bars: 95% bootstrap CIs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ CLI


def parse_policies(specs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``["warm", "mid=DIR", "DIR"]`` -> ``(("warm", "warm"), ("mid", "DIR"), (basename, "DIR"))``."""
    out = []
    for spec in specs:
        for item in (x.strip() for x in spec.split(",")):
            if not item:
                continue
            name, sep, source = item.partition("=")
            if not sep:
                source = item
                name = "warm" if item == "warm" else (Path(item).name or item)
            out.append((name.strip(), source.strip()))
    return tuple(out)


def build_parser() -> argparse.ArgumentParser:
    d = CreditAccuracyConfig()
    p = argparse.ArgumentParser(prog="turngym bench credit-accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"tiny sizes ({QUICK}); explicit flags still win")
    p.add_argument("--out", default=d.out_dir, help="output directory")
    p.add_argument("--env", default=d.env_id, help="env id whose steps carry info['value'] / info['value_delta']")
    p.add_argument("--env-kwargs", default=None, help="env keyword arguments as JSON (default: HopQA topk=1)")
    p.add_argument("--tasks", type=int, help=f"task seeds (default {d.tasks})")
    p.add_argument("--group-size", type=int, help=f"rollouts per task (default {d.group_size})")
    p.add_argument("--tree-tasks", type=int, help="task seeds of the tree batch (default: --tasks; 0 = no tree)")
    p.add_argument("--tree-branching", default=None,
                   help=f"forks of the tree batch, comma-separated (default {','.join(map(str, d.tree_branching))})")
    p.add_argument("--bootstrap", type=int, help=f"bootstrap resamples per CI (default {d.bootstrap}; 0 = none)")
    p.add_argument("--pretrain-steps", type=int, help=f"LM pretraining steps (default {d.pretrain_steps})")
    p.add_argument("--sft-steps", type=int, help=f"SFT steps (default {d.sft_steps})")
    p.add_argument("--sft-episodes", type=int, help=f"SFT expert episodes (default {d.sft_episodes})")
    p.add_argument("--sft-dir", help="SFT checkpoint directory to reuse / create (default OUT/sft)")
    p.add_argument("--policy", action="append", default=[], metavar="[NAME=]SOURCE",
                   help="a policy to measure (repeatable): 'warm' (the SFT warm start), a save_pretrained dir, a run "
                        "dir or a checkpoint folder; default: warm")
    p.add_argument("--policies", default="", help="comma-separated [NAME=]SOURCE list (same as repeated --policy)")
    p.add_argument("--max-new-tokens", type=int, help=f"tokens per turn (default {d.max_new_tokens})")
    p.add_argument("--model-size", default=d.model_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--methods", default="", help="comma-separated methods (default: all of CREDIT)")
    p.add_argument("--threads", type=int, default=d.torch_threads, help="torch CPU threads")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other TrainConfig field of the rollouts and warm start, e.g. max_traj_tokens=1280")
    return p


def config_from_args(args: argparse.Namespace) -> CreditAccuracyConfig:
    kw: dict[str, Any] = dict(QUICK) if args.quick else {}
    for attr in ("tasks", "group_size", "pretrain_steps", "sft_steps", "sft_episodes", "max_new_tokens",
                 "tree_tasks", "bootstrap"):
        if getattr(args, attr, None) is not None:
            kw[attr] = getattr(args, attr)
    if getattr(args, "tree_branching", None):
        kw["tree_branching"] = tuple(int(x) for x in args.tree_branching.split(",") if x.strip())
    if getattr(args, "env_kwargs", None):
        kw["env_kwargs"] = json.loads(args.env_kwargs)
    if getattr(args, "set", None):
        from turngym.config import parse_overrides
        from turngym.trainers.config import TrainConfig

        kw["extra"] = parse_overrides(TrainConfig, args.set)
    policies = parse_policies([*getattr(args, "policy", []), getattr(args, "policies", "")])
    if policies:
        kw["policies"] = policies
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return CreditAccuracyConfig(env_id=args.env, out_dir=args.out, sft_dir=args.sft_dir, model_size=args.model_size,
                                seed=args.seed, methods=methods, torch_threads=args.threads, **kw)


def main(argv: list[str] | None = None) -> int:
    """``turngym bench credit-accuracy [--quick] [...]``; prints the markdown table."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    cfg = config_from_args(args)
    summary = run(cfg, log=lambda m: print(m, file=sys.stderr))
    print(Path(summary["paths"]["table"]).read_text(encoding="utf-8"))
    print(f"wrote {summary['paths']['table']}, {summary['paths']['chart']}, {summary['paths']['json']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
