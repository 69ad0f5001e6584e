"""Group statistics and turn helpers shared by every credit method (spec §1.1, §1.2).

All functions are pure, vectorised with ``scatter_add`` / ``gather`` (O(M) in the number of elements, GPU
friendly) and keep the knobs that differ between reference implementations configurable, because they change
numbers:

=========================  ========  =========  ========  ======================
implementation             unbiased  var_eps    div_eps   singleton
=========================  ========  =========  ========  ======================
verl GRPO / MatchTIR       True      0          1e-6      ``"raw"``
IGPO / A²TGPO              False     1e-8       1e-6      ``"zero"``
SIOP (``std_floor=1e-6``)  True      0          1e-6      ``"zero"``
GiGPO step / SLATE         True      0          1e-6      ``"zero"``
=========================  ========  =========  ========  ======================

Zero-variance groups (all members equal, at least two members) give **exactly** 0 in every variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Singleton = Literal["zero", "raw"]

__all__ = [
    "GroupNormStats",
    "broadcast",
    "composite_key",
    "dense_ids",
    "group_norm",
    "group_norm_masked",
    "group_norm_with_stats",
    "process_grpo",
    "reverse_discounted_cumsum",
    "turn_last_index",
    "turn_rewards_to_token_rewards",
]


@dataclass(frozen=True)
class GroupNormStats:
    """Counts reported by `group_norm_with_stats` (for diagnostics).

    Attributes:
        n_groups: Groups with at least one valid member.
        n_singleton: Groups with exactly one valid member.
        n_zero_var: Groups with at least two valid members, all equal.
    """

    n_groups: int
    n_singleton: int
    n_zero_var: int

    @property
    def frac_zero_var(self) -> float:
        multi = self.n_groups - self.n_singleton
        return self.n_zero_var / multi if multi > 0 else 0.0


def dense_ids(key: Tensor) -> tuple[Tensor, int]:
    """Re-index an integer key ``[M]`` to dense ids ``0..n-1``; returns ``(ids[M], n)``."""
    if key.numel() == 0:
        return key.new_zeros(0, dtype=torch.long), 0
    uniq, inv = torch.unique(key.long(), return_inverse=True)
    return inv, int(uniq.numel())


def _scatter_ids(key: Tensor) -> tuple[Tensor, int]:
    """Ids usable as scatter indices: the key itself when it is small and non-negative (no sort), else dense ids.
    Empty slots are harmless (count 0)."""
    k = key.long()
    lo, hi = int(k.min()), int(k.max())
    if lo >= 0 and hi < 4 * k.numel() + 64:
        return k, hi + 1
    return dense_ids(k)


def composite_key(group_index: Tensor, k: Tensor, k_max: int) -> Tensor:
    """``group_index * k_max + k``: one id per (group, turn-ordinal) pair (A²TGPO, MatchTIR)."""
    return group_index.long() * int(k_max) + k.long()


def group_norm_with_stats(
    x: Tensor,
    key: Tensor,
    *,
    valid: Tensor | None = None,
    center: bool = True,
    scale: bool = True,
    unbiased: bool = True,
    var_eps: float = 0.0,
    div_eps: float = 1e-6,
    singleton: Singleton = "zero",
    std_floor: float | None = None,
) -> tuple[Tensor, GroupNormStats]:
    """Normalise ``x`` within the groups given by ``key``; see `group_norm`. Also returns group counts."""
    if x.dim() != 1 or key.shape != x.shape:
        raise ValueError(f"group_norm expects x[M] and key[M] of the same shape; got x{tuple(x.shape)}, "
                         f"key{tuple(key.shape)}. Flatten with a mask first (x[mask], key[mask]).")
    if valid is not None and valid.shape != x.shape:
        raise ValueError(f"group_norm: valid{tuple(valid.shape)} must match x{tuple(x.shape)}.")
    if singleton not in ("zero", "raw"):
        raise ValueError(f"group_norm: singleton must be 'zero' or 'raw', got {singleton!r}.")
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    if x.numel() == 0:
        return x.to(out_dtype).clone(), GroupNormStats(0, 0, 0)
    xd = x.double()
    ok = torch.isfinite(xd)
    if valid is not None:
        ok = ok & valid.bool()
    inv, n_keys = _scatter_ids(key)
    w = ok.double()
    xz = torch.where(ok, xd, torch.zeros_like(xd))
    cnt = torch.zeros(n_keys, dtype=torch.float64, device=x.device).scatter_add_(0, inv, w)
    tot = torch.zeros_like(cnt).scatter_add_(0, inv, xz)
    mean = tot / cnt.clamp(min=1.0)
    take = lambda t: t.index_select(0, inv)
    mu = take(mean)
    dev = torch.where(ok, xd - mu, torch.zeros_like(xd))
    ss = torch.zeros_like(cnt).scatter_add_(0, inv, dev * dev)
    denom = (cnt - 1.0) if unbiased else cnt
    var = ss / denom.clamp(min=1.0)
    std = torch.sqrt(var + var_eps)
    if std_floor is not None:
        std = torch.where(std < std_floor, torch.ones_like(std), std)
    inf = torch.full_like(xd, float("inf"))
    gmin = torch.full_like(cnt, float("inf")).scatter_reduce_(0, inv, torch.where(ok, xd, inf), "amin")
    gmax = torch.full_like(cnt, -float("inf")).scatter_reduce_(0, inv, torch.where(ok, xd, -inf), "amax")
    is_single = cnt == 1
    zero_var = (cnt >= 2) & (gmin == gmax)

    s = take(std)
    single_e = take(is_single)
    if singleton == "raw":  # verl: mean 0, std 1 for a group of one
        mu = torch.where(single_e, torch.zeros_like(mu), mu)
        s = torch.where(single_e, torch.ones_like(s), s)
    out = xd - mu if center else xd
    if scale:
        out = out / (s + div_eps)
    kill = ~ok | take(zero_var)
    if singleton == "zero":
        kill = kill | single_e
    out = torch.where(kill, torch.zeros_like(out), out)
    stats = GroupNormStats(
        n_groups=int((cnt > 0).sum()), n_singleton=int(is_single.sum()), n_zero_var=int(zero_var.sum())
    )
    return out.to(out_dtype), stats


def group_norm_masked(x: Tensor, key: Tensor, mask: Tensor, **kw) -> tuple[Tensor, GroupNormStats]:
    """`group_norm_with_stats` over the ``mask``-ed entries of same-shaped ``x`` / ``key`` (e.g. ``[B, K]``),
    without compacting them; returns the normalised tensor (0 off the mask) in float64, and the stats."""
    if x.shape != key.shape or x.shape != mask.shape:
        raise ValueError(f"group_norm_masked expects x, key and mask of one shape; got {tuple(x.shape)}, "
                         f"{tuple(key.shape)}, {tuple(mask.shape)}.")
    out, st = group_norm_with_stats(x.double().reshape(-1), key.reshape(-1), valid=mask.reshape(-1), **kw)
    return out.view(x.shape), st


def group_norm(
    x: Tensor,
    key: Tensor,
    *,
    valid: Tensor | None = None,
    center: bool = True,
    scale: bool = True,
    unbiased: bool = True,
    var_eps: float = 0.0,
    div_eps: float = 1e-6,
    singleton: Singleton = "zero",
    std_floor: float | None = None,
) -> Tensor:
    """Group-normalise a flat vector with scatter statistics (spec §1.1).

    ``out_m = (x_m − μ_{key_m}) / (s_{key_m} + div_eps)`` with ``s = sqrt(var + var_eps)``; ``var`` is the
    unbiased (n−1) or population (n) variance of the group's valid members.

    Args:
        x: Values ``[M]``. Non-finite entries are treated as missing.
        key: Integer group id of each value ``[M]`` (any integers; re-indexed internally).
        valid: Optional ``[M]`` bool; False entries are excluded from the statistics and get 0.
        center: Subtract the group mean.
        scale: Divide by ``s + div_eps`` (False = Dr.GRPO / ``mean_norm``).
        unbiased: ``std_u`` (True) or ``std_p`` (False).
        var_eps: Added to the variance inside the square root (IGPO: 1e-8).
        div_eps: Added to the std in the denominator.
        singleton: Group of one valid member: ``"zero"`` → 0; ``"raw"`` → mean 0, std 1 (verl parity).
        std_floor: If set, a std below it is replaced by 1 (SIOP: 1e-6).

    Returns:
        ``[M]`` normalised values in ``x``'s dtype (float32 for integer input); exactly 0 for missing
        entries and for groups of ≥ 2 members that are all equal. Never NaN or inf.
    """
    return group_norm_with_stats(
        x, key, valid=valid, center=center, scale=scale, unbiased=unbiased, var_eps=var_eps,
        div_eps=div_eps, singleton=singleton, std_floor=std_floor,
    )[0]


def reverse_discounted_cumsum(v: Tensor, turn_mask: Tensor, gamma: float) -> Tensor:
    """Discounted return over valid turns, right to left (spec §1.2).

    ``out_k = v_k + γ·out_{k'}`` where ``k'`` is the next *valid* turn after ``k``. Invalid turns
    contribute 0, receive 0 and do not consume a discount step (the recursion carries through them, like
    observation tokens in GAE). Non-finite values on valid turns are treated as 0.

    Args:
        v: ``[B, K]`` per-turn values.
        turn_mask: ``[B, K]`` bool.
        gamma: Discount.

    Returns:
        ``[B, K]`` returns, 0 on invalid turns.
    """
    if v.dim() != 2 or turn_mask.shape != v.shape:
        raise ValueError(f"reverse_discounted_cumsum expects v[B,K] and turn_mask[B,K]; got "
                         f"v{tuple(v.shape)}, turn_mask{tuple(turn_mask.shape)}.")
    m = turn_mask.bool()
    vz = torch.where(m & torch.isfinite(v), v, torch.zeros_like(v))
    k = vz.shape[1]
    if 0 < k <= 64:
        # closed form: out_k = Σ_{j ≥ k, valid} γ^(c_j − c_k) v_j with c = cumsum(mask) (invalid turns cost no step)
        upper = torch.ones(k, k, dtype=torch.bool, device=v.device).triu()
        sel = upper & m[:, None, :]  # [B, K(k), K(j)]
        if gamma == 1.0:
            w = sel.to(vz.dtype)
        else:
            c = m.long().cumsum(1)
            d = (c[:, None, :] - c[:, :, None]).clamp(min=0)
            powers = torch.tensor([float(gamma) ** i for i in range(k + 1)], dtype=vz.dtype, device=v.device)
            w = torch.where(sel, powers.index_select(0, d.reshape(-1)).view(d.shape), torch.zeros((), dtype=vz.dtype))
        out = torch.bmm(w, vz[:, :, None])[:, :, 0]
        return torch.where(m, out, torch.zeros_like(out))
    out = torch.zeros_like(vz)
    run = torch.zeros_like(vz[:, 0]) if k else None
    for kk in range(k - 1, -1, -1):
        run = torch.where(m[:, kk], vz[:, kk] + gamma * run, run)
        out[:, kk] = torch.where(m[:, kk], run, torch.zeros_like(run))
    return out


def process_grpo(r: Tensor, turn_mask: Tensor, group_index: Tensor, *, gamma: float = 1.0, unbiased: bool = True,
                 div_eps: float = 1e-6, singleton: Singleton = "zero") -> tuple[Tensor, GroupNormStats]:
    """Per-turn rewards to per-turn advantages by DeepSeekMath's process-supervision rule (wave-2 spec §1.2).

    ``r̂`` = `group_norm` of every valid turn reward of a prompt group in one pool, then
    ``A_{i,k} = Σ_{j≥k} γ^{j−k} r̂_{i,j}`` (`reverse_discounted_cumsum`). Used by CALM and LaRe, which produce rewards,
    not advantages. Non-finite rewards count as missing (0, out of the statistics).

    Args:
        r: ``[B, K]`` per-turn rewards.
        turn_mask: ``[B, K]`` bool.
        group_index: ``[B]`` prompt group of each row.

    Returns:
        ``([B, K] float64 advantages, 0 on invalid turns, group statistics)``.
    """
    key = group_index[:, None].expand_as(r)
    rn, st = group_norm_masked(r, key, turn_mask.bool(), unbiased=unbiased, div_eps=div_eps, singleton=singleton)
    return reverse_discounted_cumsum(rn, turn_mask, gamma), st


def broadcast(v: Tensor, turn_id: Tensor) -> Tensor:
    """Broadcast turn values to tokens: ``out[b,l] = v[b, turn_id[b,l]]`` if ``turn_id ≥ 0`` else 0.

    Args:
        v: ``[B, K]`` per-turn values (NaN on invalid turns is fine: policy tokens never point there).
        turn_id: ``[B, L]`` turn index of each policy token, −1 elsewhere.

    Returns:
        ``[B, L]``.
    """
    if v.dim() != 2 or turn_id.dim() != 2 or v.shape[0] != turn_id.shape[0]:
        raise ValueError(f"broadcast expects v[B,K] and turn_id[B,L]; got v{tuple(v.shape)}, "
                         f"turn_id{tuple(turn_id.shape)}.")
    if turn_id.numel() and int(turn_id.max()) >= v.shape[1]:
        raise ValueError(f"broadcast: turn_id reaches {int(turn_id.max())} but v has only {v.shape[1]} turns.")
    b, k = v.shape
    idx = torch.where(turn_id >= 0, turn_id, torch.full_like(turn_id, k)).long()
    flat = (torch.arange(b, device=v.device)[:, None] * (k + 1) + idx).reshape(-1)
    ext = torch.cat([v, torch.zeros_like(v[:, :1])], dim=1)
    return ext.reshape(-1).index_select(0, flat).view(turn_id.shape)


def turn_last_index(turn_id: Tensor, k_max: int) -> Tensor:
    """Index of the last policy token of each turn, ``[B, K]``; −1 for turns without policy tokens."""
    b, length = turn_id.shape
    out = torch.full((b, k_max), -1, dtype=torch.long, device=turn_id.device)
    pos = torch.arange(length, device=turn_id.device).expand(b, length)
    on = turn_id >= 0
    idx = torch.where(on, turn_id, torch.full_like(turn_id, k_max)).long()
    tmp = torch.full((b, k_max + 1), -1, dtype=torch.long, device=turn_id.device)
    tmp.scatter_reduce_(1, idx, torch.where(on, pos, torch.full_like(pos, -1)), "amax")
    out[:] = tmp[:, :k_max]
    return out


def turn_rewards_to_token_rewards(turn_rewards: Tensor, turn_last: Tensor, length: int | None = None) -> Tensor:
    """Place each turn's reward on its last policy token, for GAE (spec §2.3).

    Args:
        turn_rewards: ``[B, K]``; non-finite entries (missing signals) are placed as 0.
        turn_last: ``[B, K]`` last policy-token index of each turn, −1 for invalid turns (dropped).
        length: ``L`` of the output; default ``max(turn_last) + 1``.

    Returns:
        ``[B, L]`` token rewards, 0 everywhere except at turn ends.
    """
    if turn_rewards.shape != turn_last.shape or turn_rewards.dim() != 2:
        raise ValueError(f"turn_rewards_to_token_rewards expects turn_rewards[B,K] and turn_last[B,K]; got "
                         f"{tuple(turn_rewards.shape)} and {tuple(turn_last.shape)}.")
    if length is None:
        length = int(turn_last.max()) + 1 if turn_last.numel() else 0
    b = turn_rewards.shape[0]
    ok = (turn_last >= 0) & torch.isfinite(turn_rewards)
    if turn_last.numel() and int(turn_last.max()) >= length:
        raise ValueError(f"turn_rewards_to_token_rewards: turn_last reaches {int(turn_last.max())} >= length {length}.")
    out = torch.zeros((b, length + 1), dtype=turn_rewards.dtype, device=turn_rewards.device)
    idx = torch.where(ok, turn_last, torch.full_like(turn_last, length)).long()
    out.scatter_add_(1, idx, torch.where(ok, turn_rewards, torch.zeros_like(turn_rewards)))
    return out[:, :length]
