"""MatchTIR: bipartite matching of predicted and gold tool calls, dual-level advantage (spec §5).

Host-side pieces (per trajectory, small matrices): `call_similarity`, `similarity_matrix`,
`hard_assignment` (Hungarian via ``scipy.optimize.linear_sum_assignment`` or the release's greedy matcher),
`sinkhorn_plan` / `soft_assignment` (entropic OT, log domain, float64) and `answer_f1`. They are used by
`turngym.credit.signals.ToolMatchProvider`, which writes the per-turn reward ``match_r``.
The credit method ``"matchtir"`` is the pure tensor part: the dual-level advantage.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.groups import (
    composite_key,
    group_norm_masked,
    group_norm_with_stats,
    reverse_discounted_cumsum,
)

__all__ = [
    "MatchTIRConfig",
    "answer_f1",
    "call_similarity",
    "hard_assignment",
    "matchtir_turn_advantages",
    "similarity_matrix",
    "sinkhorn_plan",
    "soft_assignment",
]


def _multiset_jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    ca, cb = Counter(a), Counter(b)
    if ca == cb:
        return 1.0
    inter = sum((ca & cb).values())
    return inter / (len(a) + len(b) - inter)


def call_similarity(pred_name: str, pred_args: Mapping[str, Any] | None, gold_name: str,
                    gold_params: Mapping[str, Any] | None) -> float:
    """MatchTIR per-call similarity ``S(p, g) ∈ [0, 1]``.

    ``0`` if the lower-cased names differ, else ``(1 + J(keys(g), keys(p)) + #exact value matches) / (2 + |g|)``
    with ``J`` the multiset Jaccard of the parameter names. Unparsable arguments (None / not a dict) count as ``{}``.
    Values match when Python's ``==`` says so, as in MatchTIR's ``tool.py``: ``5.0`` matches ``5`` and ``True``
    matches ``1``; ``3`` does not match ``"3"``.
    """
    if str(pred_name).lower() != str(gold_name).lower():
        return 0.0
    p = dict(pred_args) if isinstance(pred_args, Mapping) else {}
    g = dict(gold_params) if isinstance(gold_params, Mapping) else {}
    j = _multiset_jaccard(list(g.keys()), list(p.keys()))
    hits = sum(1 for k, v in g.items() if k in p and p[k] == v)
    return (1.0 + j + hits) / (2.0 + len(g))


def _gold_name_params(g: Any) -> tuple[str, Any]:
    if isinstance(g, Mapping):
        params = g.get("arguments", g.get("parameters", {}))
        return str(g.get("name", "")), params
    return str(getattr(g, "name", "")), getattr(g, "arguments", {})


def similarity_matrix(pred_calls: Sequence[Any], gold_calls: Sequence[Any]) -> np.ndarray:
    """``S[P, G]`` for predicted calls (`ToolCall` or ``{"name", "arguments"}``) vs gold calls
    (``{"name", "arguments" | "parameters"}``)."""
    s = np.zeros((len(pred_calls), len(gold_calls)), dtype=np.float64)
    for i, p in enumerate(pred_calls):
        pn, pa = _gold_name_params(p)
        for j, g in enumerate(gold_calls):
            gn, gp = _gold_name_params(g)
            s[i, j] = call_similarity(pn, pa, gn, gp)
    return s


def hard_assignment(s: np.ndarray, method: Literal["hungarian", "greedy"] = "hungarian",
                    unmatched_penalty: float = 0.0) -> np.ndarray:
    """One-to-one matching; returns the call rewards ``[P]``: ``S[i, σ(i)]`` if matched with ``S > 0``, else penalty.

    ``"hungarian"`` maximises Σ S (Kuhn–Munkres, ``scipy.optimize.linear_sum_assignment``); ``"greedy"`` is the
    release's matcher (all pairs by descending score, take a pair if both ends are free and the score > 0).
    """
    s = np.asarray(s, dtype=np.float64)
    p = s.shape[0]
    r = np.full(p, float(unmatched_penalty), dtype=np.float64)
    if p == 0 or s.shape[1] == 0:
        return r
    if method == "hungarian":
        rows, cols = linear_sum_assignment(s, maximize=True)
        for i, j in zip(rows, cols):
            if s[i, j] > 0:
                r[i] = s[i, j]
    elif method == "greedy":
        order = sorted(((s[i, j], i, j) for i in range(p) for j in range(s.shape[1])), key=lambda t: -t[0])
        used_p, used_g = set(), set()
        for v, i, j in order:
            if v <= 0:
                break
            if i not in used_p and j not in used_g:
                used_p.add(i)
                used_g.add(j)
                r[i] = v
    else:
        raise ValueError(f"assignment method must be 'hungarian' or 'greedy', got {method!r}.")
    return r


def sinkhorn_plan(s: np.ndarray, eps: float = 0.1, max_iter: int = 20000, tol: float = 1e-9) -> np.ndarray:
    """Entropic OT plan with uniform marginals ``1/P`` (rows) and ``1/G`` (columns), cost ``−S`` (log domain).

    Returns ``T[P, G]`` with rows summing to ``1/P`` and columns to ``1/G`` (up to ``tol``). Near-permutation
    similarities converge slowly at small ``eps`` (thousands of iterations), hence the generous ``max_iter``; the
    loop stops as soon as the column marginals are within ``tol``.
    """
    s = np.asarray(s, dtype=np.float64)
    p, g = s.shape
    if p == 0 or g == 0:
        return np.zeros((p, g))
    logk = s / eps
    log_mu, log_nu = np.full(p, -np.log(p)), np.full(g, -np.log(g))
    f, h = np.zeros(p), np.zeros(g)

    def lse(a: np.ndarray, axis: int) -> np.ndarray:
        m = a.max(axis=axis, keepdims=True)
        return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)

    for it in range(max_iter):
        h = log_nu - lse(logk + f[:, None], axis=0)
        f = log_mu - lse(logk + h[None, :], axis=1)
        if it % 10 == 0 or it == max_iter - 1:
            t = np.exp(f[:, None] + logk + h[None, :])
            if np.abs(t.sum(0) - np.exp(log_nu)).max() < tol:
                break
    return np.exp(f[:, None] + logk + h[None, :])


def soft_assignment(s: np.ndarray, eps: float = 0.1) -> np.ndarray:
    """OT call rewards ``r(p_i) = Σ_j T_ij S_ij`` (each ≤ 1/P); zeros when there is no gold call."""
    s = np.asarray(s, dtype=np.float64)
    if s.shape[0] == 0 or s.shape[1] == 0:
        return np.zeros(s.shape[0])
    return (sinkhorn_plan(s, eps) * s).sum(1)


def _answer_tokens(s: str) -> list[str]:
    s = str(s).lower()
    s = re.sub(f"[{re.escape(string.punctuation)}]", " ", s)
    return s.split()


def answer_f1(pred: str | None, gold: str | Sequence[str] | None) -> float:
    """Token-set F1 of ``pred`` vs ``gold`` (lower-cased, punctuation → spaces); max over gold alternatives."""
    if pred is None or gold is None:
        return 0.0
    golds = [gold] if isinstance(gold, str) else list(gold)
    best = 0.0
    p = set(_answer_tokens(pred))
    for g in golds:
        q = set(_answer_tokens(g))
        inter = len(p & q)
        if inter == 0:
            continue
        prec, rec = inter / len(p), inter / len(q)
        best = max(best, 2 * prec * rec / (prec + rec))
    return best


@dataclass(frozen=True)
class MatchTIRConfig:
    """MatchTIR dual-level advantage (spec §5); defaults = run.sh."""

    lam: float = 0.9
    """Discount of the turn-level return G_t = r_t + λ G_{t+1}."""
    traj_weight: float = 0.5
    """Weight of the trajectory-level advantage."""
    turn_weight: float = 0.5
    """Weight of the turn-level advantage."""
    turn_singleton: Literal["raw", "zero"] = "raw"
    """A (group, turn) pair with one rollout: "raw" return (parity) or 0."""
    reward_signal: str = "match_r"
    """Per-turn reward signal written by ToolMatchProvider (answer turn: F1)."""
    div_eps: float = 1e-6
    """In the denominator."""


def matchtir_turn_advantages(r_turn: Tensor, turn_mask: Tensor, group_index: Tensor, cfg: MatchTIRConfig):
    """``A = w_traj·A^traj_i + w_turn·A^turn_{i,t}`` (spec §5).

    ``A^traj = group_norm(Σ_t r, key=g, std_u, singleton raw)``; ``G = reverse_discounted_cumsum(r, λ)``;
    ``A^turn = group_norm(G, key=(g, t), std_u, singleton=cfg.turn_singleton)``. Missing rewards count as 0.

    Returns:
        ``(turn_adv[B, K], stats)``.
    """
    b, k_max = turn_mask.shape
    r = torch.where(turn_mask & torch.isfinite(r_turn), r_turn.double(), torch.zeros_like(r_turn, dtype=torch.float64))
    big_r = r.sum(1)
    a_traj, st_traj = group_norm_with_stats(big_r, group_index, unbiased=True, div_eps=cfg.div_eps, singleton="raw")
    gt = reverse_discounted_cumsum(r, turn_mask, cfg.lam)
    ar = torch.arange(k_max, device=r.device)[None, :].expand(b, k_max)
    key = composite_key(group_index[:, None].expand(b, k_max), ar, k_max)
    a_turn, st_turn = group_norm_masked(gt, key, turn_mask, unbiased=True, div_eps=cfg.div_eps,
                                        singleton=cfg.turn_singleton)
    adv = cfg.traj_weight * a_traj[:, None] + cfg.turn_weight * a_turn
    return adv.float(), {"group": st_traj, "turn_group": st_turn}


@register_credit("matchtir", MatchTIRConfig, signals=("tool_match",))
def matchtir(batch: GroupBatch, cfg: MatchTIRConfig) -> CreditOutput:
    """MatchTIR dual-level advantage from the per-turn ``match_r`` rewards. Token ratio.

    Diagnostics: standard keys plus ``reward_missing`` (valid turns without a ``match_r``).
    """
    r = batch.signal(cfg.reward_signal, needed_by="matchtir")
    adv, stats = matchtir_turn_advantages(r, batch.turn_mask, batch.group_index, cfg)
    missing = float((batch.turn_mask & ~torch.isfinite(r)).sum())
    return finish(batch, adv, r, stats=stats, extra={"reward_missing": missing})
