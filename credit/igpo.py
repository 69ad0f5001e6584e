"""Information-gain credit: IGPO (spec §4.1) and A²TGPO (spec §4.2).

Both read the gold-answer probe written by `turngym.credit.signals.GoldProbeProvider`:

* ``prompt_signals["probe_score"]`` ``[B]``: ``s_{−1}``, mean gold-token log-prob given the prompt only;
* ``turn_signals["probe_score"]`` ``[B, K]``: ``s_k``, the same after turn ``k`` and its observation
  (defined for ``k < T_b − 1``; the probe after the final turn is never run).

IG of turn ``k`` (``k < T_b − 1``): ``prob_diff``: ``exp(s_k) − exp(s_{k−1})``; ``log_prob_diff``: ``s_k − s_{k−1}``.
A NaN probe makes that IG missing: excluded from statistics, normalised value 0 (spec §4.1 edge cases).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.groups import (
    composite_key,
    group_norm_masked,
    group_norm_with_stats,
    reverse_discounted_cumsum,
)

__all__ = [
    "A2TGPOConfig",
    "IGPOConfig",
    "a2tgpo_turn_advantages",
    "igpo_turn_advantages",
    "information_gain",
]

IGType = Literal["prob_diff", "log_prob_diff"]


@dataclass(frozen=True)
class IGPOConfig:
    """IGPO (spec §4.1). Defaults = the paper (prob_diff, joint); the release uses log_prob_diff + separate."""

    ig_type: IGType = "prob_diff"
    """IG on geometric-mean probabilities (paper) or on mean log-probs (release)."""
    norm_mode: Literal["joint", "separate"] = "joint"
    """Normalise IG and outcome rewards in one pool per group (joint) or in two pools (separate)."""
    gamma: float = 1.0
    """Discount across turns."""
    format_fail_reward: float | None = -2.0
    """Outcome used for trajectories without a final answer (IGPO: −2); None keeps ``outcome``. An episode its env
    ended (a game won or lost by a move: `GroupBatch.scored`) keeps its outcome."""
    w_outcome: float = 1.0
    """Curriculum weight on the raw outcome (1.0 = off)."""
    w_ig: float = 1.0
    """Curriculum weight on the raw IG (1.0 = off)."""
    probe_signal: str = "probe_score"
    """Name of the probe signal (turn- and prompt-level)."""
    unbiased: bool = False
    """IGPO uses the population std."""
    var_eps: float = 1e-8
    """Inside the square root."""
    div_eps: float = 1e-6
    """In the denominator."""


@dataclass(frozen=True)
class A2TGPOConfig:
    """A²TGPO (spec §4.2): defaults = the official run script (α 0.3, β 0.3, γ 1, log-prob IG)."""

    alpha: float = 0.3
    """Weight of the variance-rescaled IG term."""
    beta: float = 0.3
    """Clip-scale amplitude: c ∈ (1 − β, 1 + β)."""
    gamma: float = 1.0
    """Discount across IG turns."""
    ig_type: IGType = "log_prob_diff"
    """IG on mean log-probs (code) or probabilities (abstract)."""
    ig_baseline: Literal["prompt", "after_first_turn"] = "prompt"
    """"prompt": every tool turn gets an IG (framework default); "after_first_turn": code parity."""
    format_fail_reward: float | None = None
    """Outcome for trajectories without a final answer; None keeps ``outcome``."""
    probe_signal: str = "probe_score"
    """Name of the probe signal."""
    dynamic_turn_clip: bool = True
    """Return the adaptive clip scale (False: clip_scale None)."""
    unbiased: bool = False
    """Population std (code)."""
    var_eps: float = 1e-8
    """Inside the square root."""
    div_eps: float = 1e-6
    """In the denominator."""


def information_gain(prompt_probe: Tensor, probe: Tensor, turn_mask: Tensor, ig_type: IGType) -> Tensor:
    """IG of every non-final turn: ``f(s_k) − f(s_{k−1})`` with ``s_{−1}`` = prompt probe, ``f`` = exp or id.

    Args:
        prompt_probe: ``[B]`` prompt-only probe score.
        probe: ``[B, K]`` probe score after turn k (its observation included).
        turn_mask: ``[B, K]``.
        ig_type: "prob_diff" or "log_prob_diff".

    Returns:
        ``[B, K]`` IG, NaN on the last turn of each row, on invalid turns and where a probe is missing.
    """
    if probe.dim() != 2 or prompt_probe.shape != probe.shape[:1] or turn_mask.shape != probe.shape:
        raise ValueError(f"information_gain expects prompt_probe[B], probe[B,K], turn_mask[B,K]; got "
                         f"{tuple(prompt_probe.shape)}, {tuple(probe.shape)}, {tuple(turn_mask.shape)}.")
    if ig_type not in ("prob_diff", "log_prob_diff"):
        raise ValueError(f"ig_type must be 'prob_diff' or 'log_prob_diff', got {ig_type!r}.")
    s = probe.double()
    prev = torch.cat([prompt_probe.double()[:, None], s[:, :-1]], dim=1)
    ig = (s.exp() - prev.exp()) if ig_type == "prob_diff" else (s - prev)
    k = torch.arange(probe.shape[1], device=probe.device)[None, :]
    bearing = turn_mask & (k < turn_mask.sum(1, keepdim=True) - 1)
    return torch.where(bearing & torch.isfinite(ig), ig, torch.full_like(ig, float("nan"))).float()


def _probe(batch: GroupBatch, name: str, who: str) -> tuple[Tensor, Tensor]:
    """Turn and prompt probe scores; all-NaN when absent and no row has an IG-bearing turn (direct answers)."""
    needs_ig = bool((batch.num_turns > 1).any())
    b, k = batch.turn_mask.shape
    if name in batch.turn_signals or needs_ig:
        probe = batch.signal(name, needed_by=who)
    else:
        probe = torch.full((b, k), float("nan"), device=batch.turn_mask.device)
    if name in batch.prompt_signals or needs_ig:
        prompt_probe = batch.prompt_signal(name, needed_by=who)
    else:
        prompt_probe = torch.full((b,), float("nan"), device=batch.turn_mask.device)
    return probe, prompt_probe


def _outcome(batch: GroupBatch, format_fail_reward: float | None) -> Tensor:
    out = batch.outcome.float()
    if format_fail_reward is not None:
        out = torch.where(batch.scored, out, torch.full_like(out, float(format_fail_reward)))
    return out


def igpo_turn_advantages(ig: Tensor, outcome: Tensor, group_index: Tensor, turn_mask: Tensor, cfg: IGPOConfig):
    """IGPO turn rewards, group normalisation and discounted accumulation.

    ``r_{i,k} = w_ig·IG_{i,k}`` (k < T_i − 1), ``r_{i,T_i−1} = w_out·R_i``; ``r̂`` = group_norm over the group (joint)
    or over (group, is_outcome) (separate); ``A_{i,k} = Σ_{j≥k} γ^{j−k} r̂_{i,j}``.

    Args:
        ig: ``[B, K]`` from `information_gain` (NaN = missing).
        outcome: ``[B]`` (NaN = missing).
        group_index: ``[B]``.
        turn_mask: ``[B, K]``.
        cfg: `IGPOConfig`.

    Returns:
        ``(turn_adv[B,K], raw_rewards[B,K], stats)``.
    """
    b, k_max = turn_mask.shape
    k = torch.arange(k_max, device=turn_mask.device)[None, :].expand(b, k_max)
    is_out = turn_mask & (k == turn_mask.sum(1, keepdim=True) - 1)
    r = torch.where(is_out, cfg.w_outcome * outcome.float()[:, None].expand(b, k_max), cfg.w_ig * ig.float())
    r = torch.where(turn_mask, r, torch.full_like(r, float("nan")))
    g = group_index[:, None].expand(b, k_max)
    key = g * 2 + is_out.long() if cfg.norm_mode == "separate" else g
    if cfg.norm_mode not in ("joint", "separate"):
        raise ValueError(f"norm_mode must be 'joint' or 'separate', got {cfg.norm_mode!r}.")
    rhat, st = group_norm_masked(r, key, turn_mask, unbiased=cfg.unbiased, var_eps=cfg.var_eps,
                                 div_eps=cfg.div_eps, singleton="zero")
    return reverse_discounted_cumsum(rhat, turn_mask, cfg.gamma).float(), r, st


@register_credit("igpo", IGPOConfig, signals=("gold_probe",))
def igpo(batch: GroupBatch, cfg: IGPOConfig) -> CreditOutput:
    """IGPO: information-gain turn rewards + outcome, group-normalised, discounted to turn advantages (§4.1).

    Diagnostics: standard keys plus ``ig_missing`` (IG-bearing turns whose probe is missing), ``ig_mean``.
    """
    probe, prompt_probe = _probe(batch, cfg.probe_signal, "igpo")
    ig = information_gain(prompt_probe, probe, batch.turn_mask, cfg.ig_type)
    adv, r, st = igpo_turn_advantages(ig, _outcome(batch, cfg.format_fail_reward), batch.group_index,
                                      batch.turn_mask, cfg)
    n_bearing = int((batch.turn_mask.sum(1) - 1).clamp(min=0).sum())
    fin = torch.isfinite(ig)
    n_fin = int(fin.sum())
    extra = {"ig_missing": float(n_bearing - n_fin),
             "ig_mean": float(torch.where(fin, ig.double(), 0.0).sum()) / n_fin if n_fin else 0.0}
    return finish(batch, adv, r, stats={"turn": st}, extra=extra)


def a2tgpo_turn_advantages(ig: Tensor, outcome: Tensor, group_index: Tensor, turn_mask: Tensor, cfg: A2TGPOConfig):
    """A²TGPO turn advantages and clip scales (spec §4.2, steps 2–6).

    IG-bearing turns (finite ``ig``) are re-indexed by ordinal ``j = 0..n_i−1``;
    ``Ĩ = group_norm(IG, key=(g, j))``, ``Â^out = group_norm(R, key=g)`` (population std, var_eps 1e-8, singleton→0),
    ``D_{i,j} = Σ_{j'≥j} γ^{j'−j} Ĩ_{i,j'} / sqrt(n_i − j)``, ``A = α·D + Â^out``, ``c = 1 + β·tanh(Ĩ/2)``.
    The last turn gets ``Â^out`` and ``c = 1``; any other turn without its own IG copies the next turn's values.

    Args:
        ig: ``[B, K]`` (NaN = not IG-bearing).
        outcome: ``[B]``.
        group_index: ``[B]``.
        turn_mask: ``[B, K]``.
        cfg: `A2TGPOConfig`.

    Returns:
        ``(turn_adv[B,K], turn_clip[B,K], stats_dict)``; values on invalid turns are 0 / 1.
    """
    b, k_max = turn_mask.shape
    dev = turn_mask.device
    ar = torch.arange(k_max, device=dev)[None, :].expand(b, k_max)
    bearing = turn_mask & torch.isfinite(ig)
    ordk = bearing.long().cumsum(1) - 1
    n = bearing.sum(1)  # [B]
    # compact IG by ordinal: ic[b, j] = IG of the j-th IG-bearing turn; turn_of[b, j] = its turn index
    slot = torch.where(bearing, ordk, torch.full_like(ordk, k_max))
    ic = torch.zeros((b, k_max + 1), dtype=torch.float64, device=dev)
    ic.scatter_(1, slot, torch.where(bearing, ig.double(), torch.zeros_like(ig, dtype=torch.float64)))
    ic = ic[:, :k_max]
    cmask = ar < n[:, None]
    key = composite_key(group_index[:, None].expand(b, k_max), ar, k_max)
    itil, st_turn = group_norm_masked(ic, key, cmask, unbiased=cfg.unbiased, var_eps=cfg.var_eps,
                                      div_eps=cfg.div_eps, singleton="zero")
    a_out, st_out = group_norm_with_stats(outcome.double(), group_index, unbiased=cfg.unbiased,
                                          var_eps=cfg.var_eps, div_eps=cfg.div_eps, singleton="zero")
    s = reverse_discounted_cumsum(itil, cmask, cfg.gamma)
    remaining = (n[:, None] - ar).clamp(min=1).double()
    d = torch.where(cmask, s / remaining.sqrt(), torch.zeros_like(s))
    a_ig = cfg.alpha * d + a_out[:, None]
    c_ig = 1.0 + cfg.beta * torch.tanh(itil / 2.0)
    # scatter back to turn positions
    a_turn = torch.zeros((b, k_max + 1), dtype=torch.float64, device=dev)
    c_turn = torch.ones((b, k_max + 1), dtype=torch.float64, device=dev)
    pos = torch.where(bearing, ordk, torch.zeros_like(ordk))
    a_val = torch.gather(a_ig, 1, pos)
    c_val = torch.gather(c_ig, 1, pos)
    tgt = torch.where(bearing, ar, torch.full_like(ar, k_max))
    a_turn.scatter_(1, tgt, torch.where(bearing, a_val, torch.zeros_like(a_val)))
    c_turn.scatter_(1, tgt, torch.where(bearing, c_val, torch.ones_like(c_val)))
    a_turn, c_turn = a_turn[:, :k_max], c_turn[:, :k_max]
    last = turn_mask & (ar == turn_mask.sum(1, keepdim=True) - 1)
    a_turn = torch.where(last, a_out[:, None].expand(b, k_max), a_turn)
    c_turn = torch.where(last, torch.ones_like(c_turn), c_turn)
    # non-IG, non-last valid turns inherit the next turn's values (right to left)
    fill = turn_mask & ~bearing & ~last
    for k in range(k_max - 2, -1, -1) if bool(fill.any()) else ():
        f = fill[:, k]
        a_turn[:, k] = torch.where(f, a_turn[:, k + 1], a_turn[:, k])
        c_turn[:, k] = torch.where(f, c_turn[:, k + 1], c_turn[:, k])
    a_turn = torch.where(turn_mask, a_turn, torch.zeros_like(a_turn))
    c_turn = torch.where(turn_mask, c_turn, torch.ones_like(c_turn))
    return a_turn.float(), c_turn.float(), {"turn_group": st_turn, "group": st_out}


@register_credit("a2tgpo", A2TGPOConfig, signals=("gold_probe",))
def a2tgpo(batch: GroupBatch, cfg: A2TGPOConfig) -> CreditOutput:
    """A²TGPO: turn-group-normalised IG, variance-rescaled accumulation, adaptive turn clip (spec §4.2).

    ``ratio_level = "turn"``; ``clip_scale`` multiplies ε_low / ε_high per token (1 on the answer turn).
    Diagnostics: standard keys plus ``clip_scale_mean``, ``ig_turns_per_traj``.
    """
    probe, prompt_probe = _probe(batch, cfg.probe_signal, "a2tgpo")
    if cfg.ig_baseline not in ("prompt", "after_first_turn"):
        raise ValueError(f"ig_baseline must be 'prompt' or 'after_first_turn', got {cfg.ig_baseline!r}.")
    ig = information_gain(prompt_probe, probe, batch.turn_mask, cfg.ig_type)
    if cfg.ig_baseline == "after_first_turn":
        ig = ig.clone()
        ig[:, 0] = float("nan")
    out = _outcome(batch, cfg.format_fail_reward)
    a_turn, c_turn, stats = a2tgpo_turn_advantages(ig, out, batch.group_index, batch.turn_mask, cfg)
    k = torch.arange(batch.max_turns, device=batch.turn_mask.device)[None, :]
    last = batch.turn_mask & (k == batch.turn_mask.sum(1, keepdim=True) - 1)
    raw = torch.where(last, out[:, None].expand_as(ig), ig)
    n_turns = int(batch.turn_mask.sum())
    extra = {
        "clip_scale_mean": float(torch.where(batch.turn_mask, c_turn.double(), 0.0).sum()) / n_turns if n_turns else 1.0,
        "ig_turns_per_traj": float(torch.isfinite(ig).sum(1).double().mean()),
    }
    return finish(batch, a_turn, raw, ratio_level="turn", turn_clip=c_turn if cfg.dynamic_turn_clip else None,
                  stats=stats, extra=extra)
