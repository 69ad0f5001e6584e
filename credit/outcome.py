"""Outcome-only baselines (spec §3.1): GRPO, Dr.GRPO, RLOO, REINFORCE++ batch normalisation.

Each maps the scalar outcome ``R[B]`` to one advantage per trajectory and broadcasts it to every policy token.
A NaN outcome drops the trajectory from its group's statistics and gives it zero advantage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.groups import group_norm_with_stats

__all__ = [
    "GRPOConfig",
    "RLOOConfig",
    "ReinforcePPConfig",
    "ZeroConfig",
    "grpo_advantages",
    "reinforce_pp_advantages",
    "rloo_advantages",
]


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO / Dr.GRPO outcome normalisation (verl parity by default)."""

    norm_adv_by_std: bool = True
    """Divide by the group std (False = Dr.GRPO)."""
    unbiased: bool = True
    """Unbiased (n−1) std as in torch/verl."""
    div_eps: float = 1e-6
    """Added to the std in the denominator."""
    singleton: Literal["raw", "zero"] = "raw"
    """Group of one: "raw" (verl: mean 0, std 1) or "zero"."""


@dataclass(frozen=True)
class DrGRPOConfig(GRPOConfig):
    """Dr.GRPO: GRPO without the std division."""

    norm_adv_by_std: bool = False
    """Dr.GRPO keeps the std off."""


@dataclass(frozen=True)
class RLOOConfig:
    """RLOO: leave-one-out mean baseline."""

    singleton: Literal["raw", "zero"] = "raw"
    """Group of one has no baseline: "raw" keeps R, "zero" gives 0."""


@dataclass(frozen=True)
class ReinforcePPConfig:
    """REINFORCE++: whiten the (optionally group-baselined) outcome over the whole batch.

    Defaults differ from verl's ``reinforce_plus_plus[_baseline]`` in two places (see `reinforce_pp_advantages`);
    ``whiten="tokens", singleton="raw"`` reproduces verl.
    """

    group_baseline: bool = False
    """Subtract the group mean first (REINFORCE++-baseline)."""
    var_eps: float = 1e-8
    """Added to the batch variance inside the square root (verl: 1e-8)."""
    whiten: Literal["trajectories", "tokens"] = "trajectories"
    """Batch mean/variance over trajectories (each counts once) or over policy tokens (verl: a trajectory counts
    as many times as it has policy tokens)."""
    singleton: Literal["zero", "raw"] = "zero"
    """With ``group_baseline``: a group of one valid trajectory has no baseline; "zero" sets its R' to 0 (it
    carries no signal), "raw" keeps R' = R (verl: mean 0 for a group of one)."""

    def __post_init__(self):
        if self.whiten not in ("trajectories", "tokens"):
            raise ValueError(f"ReinforcePPConfig.whiten must be 'trajectories' or 'tokens', got {self.whiten!r}.")
        if self.singleton not in ("zero", "raw"):
            raise ValueError(f"ReinforcePPConfig.singleton must be 'zero' or 'raw', got {self.singleton!r}.")


def grpo_advantages(outcome: Tensor, group_index: Tensor, cfg: GRPOConfig = GRPOConfig()):
    """GRPO: ``Â_i = (R_i − mean_g R) / (std_g R + eps)`` (or without the std for Dr.GRPO).

    Args:
        outcome: ``[B]``, NaN = unavailable (excluded, advantage 0).
        group_index: ``[B]``.
        cfg: Knobs.

    Returns:
        ``([B] advantages, GroupNormStats)``.
    """
    if outcome.dim() != 1 or group_index.shape != outcome.shape:
        raise ValueError(f"grpo_advantages expects outcome[B] and group_index[B]; got {tuple(outcome.shape)}, "
                         f"{tuple(group_index.shape)}.")
    return group_norm_with_stats(outcome.float(), group_index, scale=cfg.norm_adv_by_std, unbiased=cfg.unbiased,
                                 div_eps=cfg.div_eps, singleton=cfg.singleton)


def rloo_advantages(outcome: Tensor, group_index: Tensor, singleton: str = "raw") -> Tensor:
    """RLOO: ``Â_i = R_i − mean_{j≠i, j∈g(i)} R_j = n/(n−1)·(R_i − mean_g R)``.

    Args:
        outcome: ``[B]``, NaN = unavailable (excluded, advantage 0).
        group_index: ``[B]``.
        singleton: Group of one: "raw" (R, no baseline) or "zero".

    Returns:
        ``[B]`` advantages.
    """
    ok = torch.isfinite(outcome)
    x = torch.where(ok, outcome.double(), torch.zeros_like(outcome, dtype=torch.float64))
    g = group_index.long()
    n_groups = int(g.max()) + 1 if g.numel() else 0
    cnt = torch.zeros(n_groups, dtype=torch.float64, device=x.device).scatter_add_(0, g, ok.double())[g]
    tot = torch.zeros(n_groups, dtype=torch.float64, device=x.device).scatter_add_(0, g, x)[g]
    base = (tot - x) / (cnt - 1).clamp(min=1)
    adv = x - base
    single = torch.full_like(x, 0.0) if singleton == "zero" else x
    adv = torch.where(cnt <= 1, single, adv)
    return torch.where(ok, adv, torch.zeros_like(adv)).float()


def reinforce_pp_advantages(outcome: Tensor, group_index: Tensor, cfg: ReinforcePPConfig = ReinforcePPConfig(),
                            token_counts: Tensor | None = None):
    """REINFORCE++: ``Â = (R' − mean R') / sqrt(var_u R' + var_eps)`` over the valid trajectories of the batch,
    with ``R' = R`` or, with ``group_baseline``, ``R' = R − mean_g R`` (REINFORCE++-baseline, arXiv:2501.03262).

    Statistics (``cfg.whiten``): ``"trajectories"`` (default) takes the mean and the unbiased (n−1) variance over
    the valid trajectories, one value each. ``"tokens"`` weights trajectory ``i`` by its policy-token count
    ``n_i`` (``mean = Σ n_i R'_i / N``, ``var = Σ n_i (R'_i − mean)² / (N − 1)``, ``N = Σ n_i``): verl's
    ``masked_whiten`` over the response tokens of the batch, where every token of a trajectory holds the same
    value, so long trajectories pull the statistics towards their outcome.

    Groups of one (``group_baseline``, ``cfg.singleton``): ``"zero"`` (default) gives such a trajectory R' = 0,
    so it adds a zero to the batch statistics and gets advantage ``−mean / std``; ``"raw"`` keeps R' = R as
    verl does (its group mean is 0).

    Args:
        outcome: ``[B]``, NaN = unavailable (excluded from every statistic, advantage 0).
        group_index: ``[B]``.
        cfg: Knobs.
        token_counts: ``[B]`` policy tokens per trajectory; needed for ``whiten="tokens"``.

    Returns:
        ``[B]`` advantages (0 for NaN outcomes; exactly 0 when every valid R' is equal or only one valid
        trajectory, or with ``"tokens"`` one valid token, is left).
    """
    if outcome.dim() != 1 or group_index.shape != outcome.shape:
        raise ValueError(f"reinforce_pp_advantages expects outcome[B] and group_index[B]; got "
                         f"{tuple(outcome.shape)}, {tuple(group_index.shape)}.")
    ok = torch.isfinite(outcome)
    x = outcome.double()
    if cfg.group_baseline:
        x = group_norm_with_stats(x, group_index, scale=False, singleton=cfg.singleton)[0]
    if cfg.whiten == "trajectories":
        key = torch.zeros_like(group_index)
        return group_norm_with_stats(x, key, valid=ok, unbiased=True, var_eps=cfg.var_eps, div_eps=0.0,
                                     singleton="zero")[0].float()
    if token_counts is None or token_counts.shape != outcome.shape:
        raise ValueError("reinforce_pp_advantages with whiten='tokens' needs token_counts[B] (policy tokens per "
                         f"trajectory); got {None if token_counts is None else tuple(token_counts.shape)}.")
    w = torch.where(ok, token_counts.double(), torch.zeros_like(x))  # [B]
    xz = torch.where(ok, x, torch.zeros_like(x))
    n = w.sum()
    if n <= 1:
        return torch.zeros_like(outcome, dtype=torch.float32)
    mean = (w * xz).sum() / n
    var = (w * (xz - mean) ** 2).sum() / (n - 1)
    adv = (xz - mean) / torch.sqrt(var + cfg.var_eps)
    adv = torch.where(var > 0, adv, torch.zeros_like(adv))  # all tokens equal: exactly 0
    return torch.where(ok, adv, torch.zeros_like(adv)).float()


def _outcome_output(batch: GroupBatch, adv: Tensor, stats=None, extra=None) -> CreditOutput:
    turn_adv = adv[:, None].expand_as(batch.turn_rewards)
    last = batch.last_turn_index.clamp(min=0)
    tr = torch.zeros_like(batch.turn_rewards)
    tr.scatter_(1, last[:, None], torch.nan_to_num(batch.outcome, nan=0.0)[:, None])
    return finish(batch, turn_adv, tr, stats={"group": stats} if stats else None, extra=extra)


@register_credit("grpo", GRPOConfig)
def grpo(batch: GroupBatch, cfg: GRPOConfig) -> CreditOutput:
    """GRPO outcome advantage broadcast to every policy token (spec §3.1). Token ratio."""
    adv, st = grpo_advantages(batch.outcome, batch.group_index, cfg)
    return _outcome_output(batch, adv, st)


@register_credit("dr_grpo", DrGRPOConfig)
def dr_grpo(batch: GroupBatch, cfg: DrGRPOConfig) -> CreditOutput:
    """Dr.GRPO: GRPO without the std division (pair with the ``seq-mean-token-sum-norm`` loss)."""
    adv, st = grpo_advantages(batch.outcome, batch.group_index, cfg)
    return _outcome_output(batch, adv, st)


@dataclass(frozen=True)
class ZeroConfig:
    """The "sharpening only" control: no settings."""


@register_credit("zero", ZeroConfig)
def zero(batch: GroupBatch, cfg: ZeroConfig) -> CreditOutput:
    """Control, not a method: every advantage is 0, so only the loss's other terms (entropy, KL) move the policy.

    The credit study runs it beside GRPO to separate what the credited reward adds from what an entropy penalty
    alone does (benchmarks/README.md, "Credit-method study").
    """
    return _outcome_output(batch, torch.zeros_like(batch.outcome, dtype=torch.float32))


@register_credit("rloo", RLOOConfig)
def rloo(batch: GroupBatch, cfg: RLOOConfig) -> CreditOutput:
    """RLOO leave-one-out baseline broadcast to every policy token."""
    return _outcome_output(batch, rloo_advantages(batch.outcome, batch.group_index, cfg.singleton))


@register_credit("reinforce_pp", ReinforcePPConfig)
def reinforce_pp(batch: GroupBatch, cfg: ReinforcePPConfig) -> CreditOutput:
    """REINFORCE++ batch-whitened outcome broadcast to every policy token (how it differs from verl: docs/credit.md)."""
    counts = batch.action_mask.sum(dim=1) if cfg.whiten == "tokens" else None  # [B]
    return _outcome_output(batch, reinforce_pp_advantages(batch.outcome, batch.group_index, cfg, counts))
