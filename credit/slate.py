"""SLATE — truncated step-level sampling with decomposed judge rewards (spec §7).

Layout in a `GroupBatch`: every (step, candidate) pair is one row whose response is the candidate's tokens; all k
siblings of one step share ``group_id`` (e.g. ``f"{prompt_uid}:{t}"``). The judged turn of a row is its last turn,
which carries the signals

* ``judge_think`` ∈ {−1, 0, 1}, ``judge_action`` ∈ {−1, 0, 1} (query quality for a search step, answer
  correctness for an answer step) — written by a step-judge provider;
* ``slate_step``: the 0-based step index ``t`` (needed for the early-answer bonus);
* ``slate_is_answer``: 1 for an answer step (falls back to ``Trajectory.final_answer is not None``).

Reward: search step ``r = think + action``; answer step ``r = think + action + λ_b·(B − t)/B``.
Advantage among siblings: ``(r − mean)/(std_u + 1e-6)``; a single candidate gives 0. Every policy token of the row
gets it; the loss uses one sequence-level ratio per row (``ratio_level = "sequence"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.groups import group_norm_with_stats
from turngym.errors import CreditError

__all__ = ["SLATEConfig", "slate_advantages", "slate_selection_probs", "slate_step_rewards"]


@dataclass(frozen=True)
class SLATEConfig:
    """SLATE (spec §7); defaults = configs/slate.yaml."""

    budget: int = 4
    """Step budget B (early-answer bonus λ_b·(B − t)/B)."""
    lam_b: float = 0.1
    """Early-answer bonus coefficient."""
    eta: float = 0.7
    """Selection temperature for advancing the path (used by `slate_selection_probs`)."""
    clamp_scores: bool = True
    """Clamp judge scores to {−1, 0, 1} (the parser fallback can pick up unrelated numbers)."""


def slate_step_rewards(think: Tensor, action: Tensor, is_answer: Tensor, step: Tensor, budget: int, lam_b: float,
                       clamp_scores: bool = True) -> Tensor:
    """``r = think + action (+ λ_b·(B − t)/B on answer steps)``; NaN scores (judge errors) count as 0."""
    th = torch.nan_to_num(think.double(), nan=0.0)
    ac = torch.nan_to_num(action.double(), nan=0.0)
    if clamp_scores:
        th = th.round().clamp(-1, 1)
        ac = ac.round().clamp(-1, 1)
    bonus = lam_b * (budget - step.double()) / budget
    return (th + ac + torch.where(is_answer.bool(), bonus, torch.zeros_like(bonus))).float()


def slate_advantages(r: Tensor, group_index: Tensor):
    """Sibling advantages ``(r − mean_g)/(std_u,g + 1e-6)``; singleton → 0. Returns ``([B], stats)``."""
    return group_norm_with_stats(r.float(), group_index, unbiased=True, div_eps=1e-6, singleton="zero")


def slate_selection_probs(adv: Tensor, eta: float) -> Tensor:
    """Probabilities to advance each sibling: ``softmax(A/η)``; ``η ≤ 0`` gives a one-hot argmax. ``adv``: ``[k]``."""
    if eta <= 0:
        out = torch.zeros_like(adv, dtype=torch.float32)
        out[int(torch.argmax(adv))] = 1.0
        return out
    return torch.softmax(adv.double() / eta, dim=-1).float()


def _row_last(batch: GroupBatch, sig: Tensor) -> Tensor:
    last = batch.last_turn_index.clamp(min=0)
    return torch.gather(sig, 1, last[:, None])[:, 0]


@register_credit("slate", SLATEConfig, signals=("rule_judge",))
def slate(batch: GroupBatch, cfg: SLATEConfig) -> CreditOutput:
    """SLATE sibling advantages over truncated-step candidates; ``ratio_level = "sequence"``.

    Diagnostics: standard keys plus ``reward_mean``, ``judge_missing`` (rows without both judge scores).
    """
    think = _row_last(batch, batch.signal("judge_think", needed_by="slate"))
    action = _row_last(batch, batch.signal("judge_action", needed_by="slate"))
    if "slate_is_answer" in batch.turn_signals:
        ia = _row_last(batch, batch.turn_signals["slate_is_answer"])
        is_answer = torch.where(torch.isfinite(ia), ia > 0.5, batch.has_answer)
    else:
        is_answer = batch.has_answer.clone()
    if "slate_step" in batch.turn_signals:
        step = _row_last(batch, batch.turn_signals["slate_step"])
    else:
        step = torch.full_like(think, float("nan"))
    if cfg.lam_b != 0 and bool((is_answer & ~torch.isfinite(step)).any()):
        raise CreditError("slate: answer rows need the turn signal 'slate_step' (0-based step index t) for the "
                          "early-answer bonus; set it on the candidate's turn, or pass lam_b=0.")
    r = slate_step_rewards(think, action, is_answer, torch.nan_to_num(step, nan=0.0), cfg.budget, cfg.lam_b,
                           cfg.clamp_scores)
    has_turn = batch.turn_mask.any(1)
    r = torch.where(has_turn, r, torch.full_like(r, float("nan")))
    adv, st = slate_advantages(r, batch.group_index)
    k = torch.arange(batch.max_turns, device=batch.turn_mask.device)[None, :]
    last = batch.turn_mask & (k == batch.last_turn_index[:, None])
    tr = torch.where(last, r[:, None].expand_as(batch.turn_rewards), torch.zeros_like(batch.turn_rewards))
    extra = {"reward_mean": float(torch.nan_to_num(r).double().mean()),
             "judge_missing": float((has_turn & ~(torch.isfinite(think) & torch.isfinite(action))).sum())}
    return finish(batch, adv[:, None].expand_as(tr), tr, ratio_level="sequence", stats={"group": st}, extra=extra)
