"""Team credit for cooperative multi-agent episodes with a shared outcome: difference (counterfactual) rewards.

In a cooperative env every agent gets the same team outcome ``G``; a per-role group baseline (GRPO over the
group ``(task seed, role)``) then blames an agent for its teammates' mistakes. Difference rewards (Wolpert &
Tumer, 2002; the counterfactual baseline of COMA, Foerster et al., 2018) credit agent ``i`` with what its own
behaviour changed::

    D_i = G(z) − G(z_{−i}, c_i)

where ``z`` is the joint behaviour of the episode, ``z_{−i}`` the other agents' behaviour and ``c_i`` a default
behaviour of agent ``i``: here its scripted role policy (``env.expert_action``). ``G(z_{−i}, c_i)`` is measured by
replaying the episode's seed with agent ``i`` scripted (`turngym.agents.multi_rollout.counterfactual_outcomes`;
the other agents keep their recorded actions while what they observe is unchanged, and follow their scripted
policies after a divergence). The rollout writes it to ``Trajectory.meta["prompt_signals"]["cf_outcome"]``, which
the `GroupBatch` exposes as ``batch.prompt_signals["cf_outcome"]`` ``[B]``.

The advantage of trajectory ``b`` (agent ``i``, group ``g`` = same seed and role) is, with ``D_b = R_b − C_b``::

    normalize="group":   Â_b = (D_b − mean_g D) / (std_g D + eps)      (GRPO on D; 0 for a zero-variance group)
    normalize="center":  Â_b = D_b − mean_g D
    normalize="none":    Â_b = D_b

broadcast to every policy token of the trajectory (token ratio). With ``mix = λ > 0`` the GRPO outcome advantage
is blended in: ``Â = (1 − λ)·Â_D + λ·Â_GRPO(R)``. A NaN ``R`` or a missing ``C`` gives advantage 0 (the row is
excluded from its group's statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.groups import group_norm_with_stats

__all__ = ["CF_SIGNAL", "DifferenceConfig", "difference_advantages", "difference_rewards"]

CF_SIGNAL = "cf_outcome"
"""Name of the prompt-level signal with the counterfactual outcome ``G(z_{−i}, c_i)``."""


@dataclass(frozen=True)
class DifferenceConfig:
    """Difference-reward team credit (``credit=team-difference``)."""

    normalize: Literal["group", "center", "none"] = "group"
    """How D = R − C is normalised within each (seed, role) group."""
    mix: float = 0.0
    """Weight λ in [0, 1] of the plain GRPO outcome advantage blended in."""
    div_eps: float = 1e-6
    """Added to the group std in the denominator."""
    baseline_noise: float = 0.0
    """Mistake probability of the scripted default policy in the counterfactual replay (read by the trainer)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"team-difference: mix must be in [0, 1], got {self.mix}.")
        if not 0.0 <= self.baseline_noise <= 1.0:
            raise ValueError(f"team-difference: baseline_noise must be in [0, 1], got {self.baseline_noise}.")


def difference_rewards(outcome: Tensor, counterfactual: Tensor) -> Tensor:
    """``D = R − C`` per trajectory; NaN where either is NaN.

    Args:
        outcome: ``[B]`` team outcome ``G(z)`` of each trajectory's episode.
        counterfactual: ``[B]`` outcome ``G(z_{−i}, c_i)`` with the trajectory's agent replaced by its default.

    Returns:
        ``[B]`` difference rewards.
    """
    if outcome.dim() != 1 or counterfactual.shape != outcome.shape:
        raise ValueError(f"difference_rewards expects outcome[B] and counterfactual[B]; got "
                         f"{tuple(outcome.shape)} and {tuple(counterfactual.shape)}.")
    return outcome.float() - counterfactual.float()


def difference_advantages(outcome: Tensor, counterfactual: Tensor, group_index: Tensor,
                          cfg: DifferenceConfig = DifferenceConfig()) -> tuple[Tensor, object]:
    """Per-trajectory advantage from difference rewards (module docstring).

    Args:
        outcome: ``[B]`` team outcome, NaN = unavailable.
        counterfactual: ``[B]`` counterfactual outcome, NaN = missing.
        group_index: ``[B]`` dense (seed, role) group ids.
        cfg: Normalisation and mixing.

    Returns:
        ``([B] advantages, GroupNormStats)``; 0 where ``D`` is NaN.
    """
    if group_index.shape != outcome.shape:
        raise ValueError(f"difference_advantages: group_index{tuple(group_index.shape)} must match "
                         f"outcome{tuple(outcome.shape)}.")
    d = difference_rewards(outcome, counterfactual)
    ok = torch.isfinite(d)
    if cfg.normalize == "none":
        adv, st = torch.where(ok, d, torch.zeros_like(d)), None
    else:
        adv, st = group_norm_with_stats(d, group_index, valid=ok, scale=cfg.normalize == "group",
                                        div_eps=cfg.div_eps, singleton="zero")
        adv = torch.where(ok, adv.float(), torch.zeros_like(d))
    if cfg.mix > 0:
        r_ok = torch.isfinite(outcome)
        grpo, _ = group_norm_with_stats(outcome.float(), group_index, valid=r_ok, div_eps=cfg.div_eps,
                                        singleton="zero")
        adv = (1.0 - cfg.mix) * adv + cfg.mix * torch.where(r_ok, grpo.float(), torch.zeros_like(adv))
    return adv.float(), st


@register_credit("team-difference", DifferenceConfig)
def team_difference(batch: GroupBatch, cfg: DifferenceConfig) -> CreditOutput:
    """Difference-reward team credit (module docstring), broadcast to every policy token. Token ratio.

    Needs ``batch.prompt_signals["cf_outcome"]`` (`turngym.agents.multi_rollout.attach_counterfactuals`).
    Diagnostics: ``diff_mean`` (mean D), ``cf_mean`` (mean counterfactual outcome), ``cf_missing`` (rows without
    one).
    """
    cf = batch.prompt_signal(CF_SIGNAL, needed_by="team-difference")
    adv, st = difference_advantages(batch.outcome, cf, batch.group_index, cfg)
    d = difference_rewards(batch.outcome, cf)
    ok = torch.isfinite(d)
    extra = {
        "diff_mean": float(d[ok].mean()) if bool(ok.any()) else 0.0,
        "cf_mean": float(cf[torch.isfinite(cf)].mean()) if bool(torch.isfinite(cf).any()) else 0.0,
        "cf_missing": float((~torch.isfinite(cf)).sum()),
    }
    turn_adv = adv[:, None].expand_as(batch.turn_rewards)
    last = batch.last_turn_index.clamp(min=0)
    tr = torch.zeros_like(batch.turn_rewards)
    tr.scatter_(1, last[:, None], torch.nan_to_num(d, nan=0.0)[:, None])
    return finish(batch, turn_adv, tr, stats={"diff": st} if st is not None else None, extra=extra)
