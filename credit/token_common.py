"""Shared pieces of the token-level credit methods (`gae`, `tempo`, `pure`, `delta`): a shape check, per-turn index
helpers over ``turn_id`` and the `CreditOutput` builder of a method that assigns one advantage per token.

Shapes: ``B`` rows, ``L`` response tokens, ``K`` turns. Token tensors are ``[B, L]`` on the response axis (policy turns
and observations interleaved); ``action_mask`` marks policy tokens; ``turn_id`` is the turn index on policy tokens
(−1 elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, standard_diagnostics

__all__ = [
    "check_shape",
    "gather_turn_first",
    "last_policy_index",
    "token_output",
    "turn_first_index",
    "turn_sum",
]


def check_shape(name: str, t: Tensor | None, shape: tuple[int, ...]) -> None:
    """Raise `ValueError` naming ``name`` when ``t`` (if given) does not have ``shape``."""
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}.")


def last_policy_index(action_mask: Tensor) -> Tensor:
    """``[B]`` index of the last policy token of each row (−1 if none)."""
    B, L = action_mask.shape
    if L == 0:
        return torch.full((B,), -1, dtype=torch.long, device=action_mask.device)
    pos = torch.arange(L, device=action_mask.device).expand(B, L)
    return torch.where(action_mask.bool(), pos, torch.full_like(pos, -1)).max(dim=1).values


def turn_first_index(turn_id: Tensor, k_max: int) -> Tensor:
    """``[B, K]`` index of the first policy token of each turn (−1 if the turn has none)."""
    B, L = turn_id.shape
    on = turn_id >= 0
    pos = torch.arange(L, device=turn_id.device).expand(B, L)
    idx = torch.where(on, turn_id, torch.full_like(turn_id, k_max)).long()
    tmp = torch.full((B, k_max + 1), L, dtype=torch.long, device=turn_id.device)
    tmp.scatter_reduce_(1, idx, torch.where(on, pos, torch.full_like(pos, L)), "amin")
    out = tmp[:, :k_max]
    return torch.where(out >= L, torch.full_like(out, -1), out)


def gather_turn_first(adv: Tensor, turn_id: Tensor, turn_mask: Tensor) -> Tensor:
    """Token values at the first policy token of each turn, ``[B, K]``; NaN where invalid."""
    first = turn_first_index(turn_id, turn_mask.shape[1])
    vals = torch.gather(adv, 1, first.clamp(min=0))
    return torch.where(turn_mask & (first >= 0), vals, torch.full_like(vals, float("nan")))


def turn_sum(x: Tensor, turn_id: Tensor, k_max: int) -> Tensor:
    """Sum of token values per turn, ``[B, K]``."""
    B, _ = x.shape
    on = turn_id >= 0
    idx = torch.where(on, turn_id, torch.full_like(turn_id, k_max)).long()
    out = torch.zeros((B, k_max + 1), dtype=x.dtype, device=x.device)
    out.scatter_add_(1, idx, torch.where(on, x, torch.zeros_like(x)))
    return out[:, :k_max]


def token_output(
    batch: GroupBatch,
    adv: Tensor,
    *,
    turn_rewards: Tensor,
    returns: Tensor | None = None,
    extra: Mapping[str, float] | None = None,
) -> CreditOutput:
    """`CreditOutput` of a token-level method: advantages ``adv`` ``[B, L]`` zeroed off the policy tokens,
    ``turn_advantages`` ``[B, K]`` = the advantage at each turn's first policy token, ``turn_rewards`` ``[B, K]`` (NaN
    on invalid turns), optional critic ``returns`` ``[B, L]``, standard diagnostics plus ``extra`` (non-finite -> 0)."""
    mask = batch.action_mask
    adv = torch.where(mask, adv.float(), torch.zeros_like(adv, dtype=torch.float32))
    nan = torch.full_like(turn_rewards, float("nan"), dtype=torch.float32)
    diag = standard_diagnostics(batch, adv)
    diag.update({k: (float(v) if math.isfinite(float(v)) else 0.0) for k, v in (extra or {}).items()})
    return CreditOutput(
        advantages=adv,
        turn_advantages=gather_turn_first(adv, batch.turn_id, batch.turn_mask),
        turn_rewards=torch.where(batch.turn_mask, turn_rewards.float(), nan),
        ratio_level="token",
        returns=None if returns is None else torch.where(mask, returns.float(), torch.zeros_like(adv)),
        clip_scale=None,
        diagnostics=diag,
    )

