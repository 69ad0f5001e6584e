"""R³L: reflect-then-retry credit — pivotal masking, positive amplification, SFT rows (wave-2 spec §3).

The ``reflect_retry`` sampler (`turngym.agents.reflect_retry`) writes per-row prompt signals:

* ``r3l_role`` ``[B]``: 0 base rollout, 1 distillation row (base prefix + suffix regenerated after a reflection,
  guidance removed), 2 reflection SFT row, 3 retry SFT row (guided context);
* ``r3l_pivot`` ``[B]``: ``k_pivot`` of the row's pair (0 for a base without a retry);
* ``r3l_pair``: links a base to its distillation row (not read here).

Math (explore rows = roles 0 and 1; statistics per prompt group over explore rows only; NaN outcome = 0)::

    A_i  = (R_i − b_g) / (std_u,g R + 1e-6)      scale_by_std (paper)     |  R_i − b_g   (release, OPMD)
    b_g  = mean_g R  |  τ·(logsumexp_g(R/τ) − log n_g)  (baseline="logavgexp")
    singleton group: A_i = R_i (b = 0, no scaling); zero-variance group (≥ 2 equal): A_i = 0
    Â_i  = A_max if R_i ≥ r_max ("absolute") / R_i = max_g R > min_g R ("group");  α·A_i if A_i > 0;  A_i otherwise
    Â_i  = sft_advantage on SFT rows (roles 2, 3)
    m_ik = k ≥ pivot_i        (pivotal credit; SFT retry rows always, explore rows iff pivotal_mask)
    turn advantage A_ik = m_ik·Â_i; loss_mask = action_mask ∧ m  (exclude_masked_from_denominator)

The trainer's loss is then ``loss_type="reinforce"``: ``ℓ = −Â·log π·κ`` with ``κ = 1/(1+τ)`` (release OPMD factor),
no importance ratio, no clipping, token-mean over the loss mask (masked prefix tokens leave the denominator).

Without ``r3l_role`` / ``r3l_pivot`` (a batch from the plain ``group`` sampler) every row is a base row with pivot 0:
the method degrades to GRPO with positive amplification, reported as ``r3l_signals_missing = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.groups import GroupNormStats
from turngym.errors import CreditError

__all__ = ["ROLE_BASE", "ROLE_DISTILL", "ROLE_REFLECT", "ROLE_RETRY", "R3LConfig", "r3l_advantages"]

ROLE_BASE, ROLE_DISTILL, ROLE_REFLECT, ROLE_RETRY = 0, 1, 2, 3
DIV_EPS = 1e-6
"""Added to the group std in the denominator (framework default, spec §1.1)."""


@dataclass(frozen=True)
class R3LConfig:
    """R³L credit (spec §3.3). Defaults = the paper; release parity: ``max_reward_advantage=1.0,
    scale_by_std=False`` (optionally ``baseline="logavgexp"``)."""

    alpha: float = 3.0
    """Amplification factor of positive advantages."""
    max_reward_advantage: float | None = None
    """Advantage of a row that reached the maximum reward: None → alpha (paper); 1.0 = release."""
    r_max: float = 1.0
    """Success threshold of the "absolute" mode (R ≥ r_max gets the max-reward advantage)."""
    r_max_mode: Literal["absolute", "group"] = "absolute"
    """"absolute": R ≥ r_max (release); "group": R equals the group's largest reward and the group is not constant."""
    scale_by_std: bool = True
    """Divide by the group std (paper GRPO); False = release OPMD (R − b)."""
    baseline: Literal["mean", "logavgexp"] = "mean"
    """Group baseline b: the mean, or τ·log mean exp(R/τ) (release option)."""
    tau: float = 1.0
    """Temperature of the logavgexp baseline and of the OPMD loss factor 1/(1+τ)."""
    pivotal_mask: bool = True
    """Mask turns before the pivot on both rows of a retry pair; False = "w/o pivotal credit" ablation."""
    sft_advantage: float = 1.0
    """Constant advantage of reflection / retry SFT rows (on retry rows: turns ≥ pivot only)."""
    exclude_masked_from_denominator: bool = True
    """Masked prefix tokens leave the loss denominators (release: loss_mask); False = only zero their advantage."""

    def __post_init__(self):
        if self.r_max_mode not in ("absolute", "group"):
            raise ValueError(f"R3LConfig.r_max_mode must be 'absolute' or 'group', got {self.r_max_mode!r}.")
        if self.baseline not in ("mean", "logavgexp"):
            raise ValueError(f"R3LConfig.baseline must be 'mean' or 'logavgexp', got {self.baseline!r}.")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"R3LConfig.tau must be a finite number > 0, got {self.tau}. Fix: tau=1.0 (release).")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"R3LConfig.alpha must be a finite number > 0, got {self.alpha}. Fix: alpha=3.0 "
                             "(paper) or alpha=1.0 (no amplification).")


def _group_stats(r: Tensor, g: Tensor, valid: Tensor, n: int):
    """Per-group count, mean, unbiased std, min, max and log-sum-exp helpers over the valid rows (float64)."""
    w = valid.double()
    rz = torch.where(valid, r, torch.zeros_like(r))
    cnt = torch.zeros(n, dtype=torch.float64).scatter_add_(0, g, w)
    tot = torch.zeros(n, dtype=torch.float64).scatter_add_(0, g, rz)
    mean = tot / cnt.clamp(min=1.0)
    dev = torch.where(valid, r - mean[g], torch.zeros_like(r))
    ss = torch.zeros(n, dtype=torch.float64).scatter_add_(0, g, dev * dev)
    std = torch.sqrt(ss / (cnt - 1.0).clamp(min=1.0))
    inf = torch.full_like(r, math.inf)
    gmin = torch.full((n,), math.inf, dtype=torch.float64).scatter_reduce_(0, g, torch.where(valid, r, inf), "amin")
    gmax = torch.full((n,), -math.inf, dtype=torch.float64).scatter_reduce_(0, g, torch.where(valid, r, -inf), "amax")
    return cnt, mean, std, gmin, gmax


def r3l_advantages(outcome: Tensor, group_index: Tensor, role: Tensor, cfg: R3LConfig
                   ) -> tuple[Tensor, Tensor, GroupNormStats]:
    """Per-row advantages ``Â`` of R³L (before the pivot mask).

    Args:
        outcome: ``[B]`` rewards; NaN counts as 0 (a failed base).
        group_index: ``[B]`` prompt group of each row.
        role: ``[B]`` long, `ROLE_BASE` .. `ROLE_RETRY`.
        cfg: Knobs.

    Returns:
        ``(Â [B] float64, amplified [B] bool (max-reward or α-scaled rows), explore-group stats)``.
    """
    if outcome.dim() != 1 or group_index.shape != outcome.shape or role.shape != outcome.shape:
        raise ValueError(f"r3l_advantages expects outcome[B], group_index[B], role[B]; got {tuple(outcome.shape)}, "
                         f"{tuple(group_index.shape)}, {tuple(role.shape)}.")
    r = torch.nan_to_num(outcome.double().cpu(), nan=0.0)
    g = group_index.long().cpu()
    role = role.cpu()
    explore = (role == ROLE_BASE) | (role == ROLE_DISTILL)
    n = int(g.max()) + 1 if g.numel() else 0
    cnt, mean, std, gmin, gmax = _group_stats(r, g, explore, n)
    if cfg.baseline == "logavgexp":  # τ (logsumexp(R/τ) − log n), stabilised by the group max
        z = r / cfg.tau
        zmax = (gmax / cfg.tau)[g]
        e = torch.where(explore, torch.exp(z - zmax), torch.zeros_like(z))
        se = torch.zeros(n, dtype=torch.float64).scatter_add_(0, g, e)
        b = cfg.tau * (torch.log(se.clamp(min=1e-300)) + gmax / cfg.tau - torch.log(cnt.clamp(min=1.0)))
    else:
        b = mean
    a = r - b[g]
    if cfg.scale_by_std:
        a = a / (std[g] + DIV_EPS)
    single = (cnt == 1)[g]
    zero_var = ((cnt >= 2) & (gmin == gmax))[g]
    a = torch.where(single, r, a)  # no baseline for a lone row [C]
    a = torch.where(zero_var, torch.zeros_like(a), a)
    a_max = cfg.alpha if cfg.max_reward_advantage is None else float(cfg.max_reward_advantage)
    if cfg.r_max_mode == "absolute":
        top = r >= cfg.r_max
    else:
        top = (r == gmax[g]) & (gmax > gmin)[g]
    a_hat = torch.where(top, torch.full_like(a, a_max), torch.where(a > 0, cfg.alpha * a, a))
    amplified = explore & (top | (a > 0))
    a_hat = torch.where(explore, a_hat, torch.full_like(a, float(cfg.sft_advantage)))
    stats = GroupNormStats(n_groups=int((cnt > 0).sum()), n_singleton=int((cnt == 1).sum()),
                           n_zero_var=int(((cnt >= 2) & (gmin == gmax)).sum()))
    return a_hat.to(outcome.device), amplified.to(outcome.device), stats


def _signal_or(batch: GroupBatch, name: str, fill: float) -> tuple[Tensor, bool]:
    v = batch.prompt_signals.get(name)
    if v is None:
        return torch.full((batch.batch_size,), fill, device=batch.outcome.device), True
    return torch.nan_to_num(v.float(), nan=fill), False


def _nansum(batch: GroupBatch, name: str) -> float:
    v = batch.prompt_signals.get(name)
    return float(torch.nan_to_num(v.double(), nan=0.0).sum()) if v is not None else 0.0


@register_credit("r3l", R3LConfig)
def r3l(batch: GroupBatch, cfg: R3LConfig) -> CreditOutput:
    """R³L turn advantages, pivotal loss mask and the REINFORCE loss switch (module docstring, spec §3.2).

    Diagnostics (besides `standard_diagnostics`): ``r3l_signals_missing`` (1: no role/pivot signals, every row a
    base with pivot 0 — amplified GRPO), ``r3l_base_rows``, ``r3l_distill_rows``, ``r3l_sft_rows``,
    ``r3l_amplified_rows``, ``r3l_masked_tokens`` (policy tokens outside the loss mask), ``r3l_loss_tokens``, and the
    sampler's counters summed over rows: ``r3l_replay_failures``, ``r3l_invalid_reflections``,
    ``r3l_reflection_tokens``.
    """
    role_f, miss_role = _signal_or(batch, "r3l_role", float(ROLE_BASE))
    pivot_f, miss_pivot = _signal_or(batch, "r3l_pivot", 0.0)
    role = role_f.round().long()
    if bool(((role < ROLE_BASE) | (role > ROLE_RETRY)).any()) or bool((role_f != role.float()).any()):
        raise CreditError(f"r3l: prompt signal r3l_role must be 0 (base), 1 (distill), 2 (reflect) or 3 (retry); got "
                          f"{sorted(set(role_f.tolist()))}. It is written by the reflect_retry sampler.")
    if bool((pivot_f < 0).any()) or bool((pivot_f != pivot_f.round()).any()):
        raise CreditError(f"r3l: prompt signal r3l_pivot must be a non-negative turn index; got "
                          f"{sorted(set(pivot_f.tolist()))}.")
    pivot = pivot_f.long()

    a_hat, amplified, stats = r3l_advantages(batch.outcome, batch.group_index, role, cfg)  # [B]
    b, k = batch.turn_mask.shape
    kk = torch.arange(k, device=pivot.device)[None, :]
    after = kk >= pivot[:, None]  # [B, K]
    masked_rows = (role == ROLE_RETRY) if not cfg.pivotal_mask else torch.ones_like(role, dtype=torch.bool)
    m = after | ~masked_rows[:, None]  # [B, K] True = trained
    turn_adv = torch.where(m & batch.turn_mask, a_hat[:, None].float().expand(b, k),
                           torch.zeros(b, k, device=batch.turn_mask.device))
    r = torch.nan_to_num(batch.outcome.float(), nan=0.0)
    last = batch.last_turn_index.clamp(min=0)
    tr = torch.zeros_like(batch.turn_rewards)
    tr.scatter_(1, last[:, None], r[:, None])  # the outcome on the last turn (raw reward, for diagnostics)

    m_tok = batch.broadcast_turns(m.float()) > 0.5  # [B, L], False off policy tokens
    loss_mask = batch.action_mask & m_tok
    n_masked = int((batch.action_mask & ~m_tok).sum())
    extra = {
        "r3l_signals_missing": float(miss_role or miss_pivot),
        "r3l_base_rows": float((role == ROLE_BASE).sum()),
        "r3l_distill_rows": float((role == ROLE_DISTILL).sum()),
        "r3l_sft_rows": float(((role == ROLE_REFLECT) | (role == ROLE_RETRY)).sum()),
        "r3l_amplified_rows": float(amplified.sum()),
        "r3l_masked_tokens": float(n_masked),
        "r3l_loss_tokens": float(loss_mask.sum()),
        "r3l_replay_failures": _nansum(batch, "r3l_replay_failed"),
        "r3l_invalid_reflections": _nansum(batch, "r3l_reflection_invalid"),
        "r3l_reflection_tokens": _nansum(batch, "r3l_reflection_tokens"),
    }
    out = finish(batch, turn_adv, tr, stats={"group": stats}, extra=extra)
    out.loss_mask = loss_mask if cfg.exclude_masked_from_denominator else None
    out.loss_type = "reinforce"
    out.loss_scale = 1.0 / (1.0 + cfg.tau)
    return out
