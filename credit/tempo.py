"""TEMPO / Prefix-to-Tree: GRPO advantage plus branch-gated prefix-tree TD corrections (``tempo``), spec
``credit.md`` §9.1.

Pure tensor functions `prefix_tree_values` and `tempo_deltas`; the registered method reads a `GroupBatch` and returns
a `CreditOutput`. Shapes: ``B`` rows, ``L`` response tokens, ``K`` turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, register_credit
from turngym.credit.outcome import GRPOConfig, grpo_advantages
from turngym.credit.token_common import check_shape, last_policy_index, token_output

__all__ = ["TEMPOConfig", "prefix_tree_values", "tempo_deltas"]


def prefix_tree_values(
    tokens: Tensor, lengths: Tensor, group_index: Tensor, weights: Tensor, include: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Prefix-tree (trie) values per group (spec §9.1): ``V(s) = mean of weights over sequences through s``.

    Node ``(b, t)`` is the prefix ``tokens[b, :t+1]`` of row ``b`` inside its group; two rows of a group share the
    node iff their first ``t+1`` tokens are equal. Exact (no hashing) and loop-free: rows are sorted
    lexicographically, so each node is a contiguous block of rows, found with a cumulative AND of neighbour equality.

    Args:
        tokens: ``[B, L]`` token ids (non-negative).
        lengths: ``[B]`` path length of each row (positions ``≥ lengths[b]`` are not part of the path).
        group_index: ``[B]`` group (prompt) id; the root of each group is its prompt.
        weights: ``[B]`` value carried by each sequence (e.g. group-normalised reward).
        include: ``[B]`` bool; excluded rows are not inserted and get 0.

    Returns:
        ``(node_value [B, L], root_value [B])``: ``V`` of the node reached after each token (0 beyond the path) and
        ``V(root)`` of the row's group.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, L]; got shape {tuple(tokens.shape)}.")
    B, L = tokens.shape
    for name, t in (
        ("lengths", lengths),
        ("group_index", group_index),
        ("weights", weights),
        ("include", include),
    ):
        check_shape(name, t, (B,))
    inc = torch.ones(B, dtype=torch.bool, device=tokens.device) if include is None else include.bool()
    w = torch.where(inc, weights.double(), torch.zeros_like(weights, dtype=torch.float64))
    g = group_index.long()
    n_g = int(g.max()) + 1 if B else 0
    root_sum = torch.zeros(n_g, dtype=torch.float64, device=tokens.device).scatter_add_(0, g, w)
    root_cnt = torch.zeros(n_g, dtype=torch.float64, device=tokens.device).scatter_add_(0, g, inc.double())
    root = torch.where(inc, (root_sum / root_cnt.clamp(min=1))[g], torch.zeros_like(w))
    dev = tokens.device
    on = inc[:, None] & (torch.arange(L, device=dev)[None, :] < lengths.long()[:, None])  # [B, L] on the path
    keyed = torch.cat(
        [g[:, None], torch.where(on, tokens.long(), torch.full_like(tokens, -1, dtype=torch.long))], 1
    )
    # Sort rows lexicographically by (group, tokens): every trie node is then a contiguous block of rows.
    _, rank = torch.unique(keyed, dim=0, return_inverse=True)
    order = torch.argsort(rank, stable=True)
    srt, on_s, w_s = keyed[order], on[order], w[order]
    # same_prefix[i, t]: sorted row i shares group and tokens[:t+1] with row i−1 (cumulative AND along t)
    eq = (srt[1:] == srt[:-1]).to(torch.int8)
    same_prefix = torch.cummin(eq, dim=1).values[:, 1:].bool()  # [B−1, L]
    new_node = torch.ones((B, L), dtype=torch.bool, device=dev)
    new_node[1:] = ~same_prefix
    node = torch.cumsum(new_node.long(), dim=0) - 1 + torch.arange(L, device=dev)[None, :] * B  # [B, L] ids
    ids = node[on_s]
    s_ = torch.zeros(B * L, dtype=torch.float64, device=dev).scatter_add_(
        0, ids, w_s[:, None].expand(B, L)[on_s]
    )
    c_ = torch.zeros(B * L, dtype=torch.float64, device=dev).scatter_add_(0, ids, torch.ones_like(s_[ids]))
    val = torch.where(
        on_s, (s_ / c_.clamp(min=1))[node], torch.zeros((B, L), dtype=torch.float64, device=dev)
    )
    out = torch.empty_like(val)
    out[order] = val
    return out, root


def tempo_deltas(
    tokens: Tensor, lengths: Tensor, group_index: Tensor, weights: Tensor, include: Tensor | None = None
) -> Tensor:
    """TEMPO TD corrections ``δ_{i,t} = V(s_t ⊕ a_t) − V(s_t)`` over the prefix tree (spec §9.1), ``[B, L]``.

    ``V(s_0)`` is the group root value. At a non-branching node the child has the same descendants, so ``δ = 0``
    exactly; along a path ``Σ_t δ_t = V(leaf) − V(root)``. 0 beyond ``lengths`` and on excluded rows.
    """
    node, root = prefix_tree_values(tokens, lengths, group_index, weights, include)
    prev = torch.cat([root[:, None], node[:, :-1]], dim=1)
    _B, L = tokens.shape
    on = torch.arange(L, device=tokens.device)[None, :] < lengths.long()[:, None]
    if include is not None:
        on = on & include.bool()[:, None]
    return torch.where(on, node - prev, torch.zeros_like(node))


@dataclass(frozen=True)
class TEMPOConfig:
    """TEMPO / Prefix-to-Tree: GRPO advantage plus branch-gated prefix-tree TD corrections (spec §9.1)."""

    beta_td: float = 1.0
    """Coefficient of the TD correction δ (1 [R])."""
    norm_adv_by_std: bool = True
    """GRPO normalisation of the rewards r̃ (False = Dr.GRPO)."""
    unbiased: bool = True
    """Unbiased (n−1) group std."""
    div_eps: float = 1e-6
    """Added to the group std."""
    singleton: Literal["raw", "zero"] = "raw"
    """Group of one: "raw" (verl) or "zero"."""


@register_credit("tempo", TEMPOConfig)
def tempo(batch: GroupBatch, cfg: TEMPOConfig) -> CreditOutput:
    """TEMPO: ``A_{i,t} = Â_i + β_TD·δ_{i,t}`` on policy tokens (spec §9.1).

    The path of a row runs over the whole response (observation tokens included, so an environment branch is a
    tree branch) up to its last policy token. Rows with a NaN outcome are left out of the tree and get 0.
    Diagnostics: standard ones plus ``tempo_branch_frac`` (policy tokens with δ ≠ 0), ``tempo_abs_delta_mean``.
    """
    r_tilde, stats = grpo_advantages(
        batch.outcome, batch.group_index,
        GRPOConfig(norm_adv_by_std=cfg.norm_adv_by_std, unbiased=cfg.unbiased, div_eps=cfg.div_eps,
                   singleton=cfg.singleton),
    )  # fmt: skip
    include = torch.isfinite(batch.outcome)
    lengths = last_policy_index(batch.action_mask) + 1
    delta = tempo_deltas(batch.response_ids, lengths, batch.group_index, r_tilde, include)
    mask = batch.action_mask
    adv = r_tilde.double()[:, None] + cfg.beta_td * delta
    adv = torch.where(mask & include[:, None], adv, torch.zeros_like(adv))
    dm = delta[mask]
    extra = {
        "tempo_branch_frac": float((dm != 0).double().mean()) if dm.numel() else 0.0,
        "tempo_abs_delta_mean": float(dm.abs().mean()) if dm.numel() else 0.0,
        "group_frac_zero_var": stats.frac_zero_var,
        "group_singletons": float(stats.n_singleton),
    }
    k_last = batch.last_turn_index.clamp(min=0)
    turn_r = torch.zeros_like(batch.turn_rewards).scatter(
        1, k_last[:, None], torch.nan_to_num(batch.outcome.float(), nan=0.0)[:, None]
    )
    return token_output(batch, adv, turn_rewards=turn_r, extra=extra)
