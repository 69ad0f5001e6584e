"""SIOP — Self-Induced Outcome Potential, verifier-free turn credit (spec §6).

Host-side pieces: answer normalisation, pluggable answer equivalence (normalised string, or an NLI / LLM judge
callable), greedy clustering, the reliability-aware target ``q``. They run inside
`turngym.credit.signals.OutcomeClusterProvider` and `SupportProvider`, which write

* ``prompt_signals["siop_q"]`` ``[B]``: the target mass ``q_i`` of the rollout's answer cluster (0 without answer);
* ``prompt_signals["siop_support"]`` ``[B]``: ``p̂_{i,−1}``, posterior support given the prompt only;
* ``turn_signals["siop_support"]`` ``[B, K]``: ``p̂_{i,k}``, support after policy turn ``k`` (before its observation).

The credit method ``"siop"`` is pure tensors: potential-based shaping rewards, one normalisation pool per group,
discounted accumulation. There is no verifier term.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.groups import group_norm_masked, reverse_discounted_cumsum

__all__ = [
    "Equivalence",
    "JudgeEquivalence",
    "NormalizedStringEquivalence",
    "SIOPConfig",
    "cluster_answers",
    "normalize_answer",
    "reliability_target",
    "siop_rewards",
    "siop_turn_advantages",
]


def normalize_answer(s: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    s = str(s).lower()
    s = "".join(ch if ch not in set(string.punctuation) else " " for ch in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


class Equivalence(Protocol):
    """Decides whether two answers to ``question`` are the same outcome."""

    def __call__(self, question: str, a: str, b: str) -> bool: ...


class NormalizedStringEquivalence:
    """Equal after `normalize_answer` (no model needed)."""

    def __call__(self, question: str, a: str, b: str) -> bool:
        return normalize_answer(a) == normalize_answer(b)


NLIFn = Callable[[Sequence[tuple[str, str]]], Sequence[Sequence[float]]]
"""``nli([(premise, hypothesis), ...]) -> [(p_entail, p_neutral, p_contradiction), ...]``."""


class JudgeEquivalence:
    """Equivalence through an NLI model or an LLM judge given as a callable (spec §6 step 2).

    Each answer is contextualised as ``question + " " + answer``. ``strict``: entailment is the argmax in both
    directions; ``loose``: no contradiction argmax in either direction and not both neutral.

    Args:
        nli: ``nli(pairs) -> probabilities (entail, neutral, contradiction)`` per pair. Errors propagate.
        mode: "strict" (default) or "loose".
    """

    def __init__(self, nli: NLIFn, mode: Literal["strict", "loose"] = "strict"):
        if mode not in ("strict", "loose"):
            raise ValueError(f"JudgeEquivalence mode must be 'strict' or 'loose', got {mode!r}.")
        self.nli = nli
        self.mode = mode

    def __call__(self, question: str, a: str, b: str) -> bool:
        ca, cb = f"{question} {a}", f"{question} {b}"
        probs = list(self.nli([(ca, cb), (cb, ca)]))
        if len(probs) != 2 or any(len(p) != 3 for p in probs):
            from turngym.errors import SignalError

            raise SignalError(f"NLI judge must return 3 probabilities per pair for 2 pairs; got {probs!r}.")
        labels = [max(range(3), key=lambda j: p[j]) for p in probs]
        if self.mode == "strict":
            return labels[0] == 0 and labels[1] == 0
        return 2 not in labels and not (labels[0] == 1 and labels[1] == 1)


def cluster_answers(question: str, answers: Sequence[str | None], equivalent: Equivalence) -> list[int]:
    """Greedy clustering: the first unassigned answer opens a cluster and absorbs every later equivalent one.

    Returns:
        Cluster id per answer (0, 1, ... in opening order); −1 for answers that are None.
    """
    ids = [-1] * len(answers)
    nxt = 0
    for i, a in enumerate(answers):
        if a is None or ids[i] >= 0:
            continue
        ids[i] = nxt
        for j in range(i + 1, len(answers)):
            if answers[j] is not None and ids[j] < 0 and equivalent(question, a, answers[j]):
                ids[j] = nxt
        nxt += 1
    return ids


def reliability_target(mass: Sequence[float], reliability: Sequence[float], eta: float) -> list[float]:
    """``q(c) = softmax_c(log(m(c) + 1e-12) + η·r(c))`` when ``η > 0`` and there are ≥ 2 clusters, else ``m(c)``."""
    if eta <= 0 or len(mass) < 2:
        return [float(m) for m in mass]
    z = [math.log(m + 1e-12) + eta * r for m, r in zip(mass, reliability)]
    mx = max(z)
    e = [math.exp(v - mx) for v in z]
    tot = sum(e)
    return [v / tot for v in e]


@dataclass(frozen=True)
class SIOPConfig:
    """SIOP credit (spec §6); defaults = train_siop.sh (λ 0.5, ε 1e-8, γ 1)."""

    lam: float = 0.5
    """Terminal reward is (1 − λ)·q."""
    eps: float = 1e-8
    """Inside the log of the support."""
    gamma: float = 1.0
    """Discount across turns."""
    support_signal: str = "siop_support"
    """Turn- and prompt-level support signal."""
    q_signal: str = "siop_q"
    """Prompt-level target-mass signal."""


def siop_rewards(prompt_support: Tensor, support: Tensor, q: Tensor, turn_mask: Tensor, lam: float,
                 eps: float = 1e-8) -> Tensor:
    """Potential-based shaping rewards (spec §6 step 6).

    ``r_{i,k} = q_i·[log(p̂_{i,k} + ε) − log(p̂_{i,k−1} + ε)]`` for ``k = 0..T_i−1`` (``p̂_{i,−1}`` = prompt
    support), plus ``(1 − λ)·q_i`` on the last turn. A turn whose support or predecessor is undefined (NaN) gets no
    shaping term; rows with ≤ 1 turn get only ``(1 − λ)·q_i``; NaN ``q`` counts as 0.

    Args:
        prompt_support: ``[B]``.
        support: ``[B, K]``.
        q: ``[B]``.
        turn_mask: ``[B, K]``.
        lam: λ.
        eps: ε.

    Returns:
        ``[B, K]`` rewards, 0 on invalid turns.
    """
    if support.dim() != 2 or turn_mask.shape != support.shape or prompt_support.shape != support.shape[:1] \
            or q.shape != support.shape[:1]:
        raise ValueError(f"siop_rewards expects prompt_support[B], support[B,K], q[B], turn_mask[B,K]; got "
                         f"{tuple(prompt_support.shape)}, {tuple(support.shape)}, {tuple(q.shape)}, "
                         f"{tuple(turn_mask.shape)}.")
    b, k_max = support.shape
    qd = torch.nan_to_num(q.double(), nan=0.0)
    cur = support.double()
    prev = torch.cat([prompt_support.double()[:, None], cur[:, :-1]], dim=1)
    shape = torch.log(cur + eps) - torch.log(prev + eps)
    n = turn_mask.sum(1, keepdim=True)
    shape = torch.where(torch.isfinite(shape) & turn_mask & (n > 1), shape, torch.zeros_like(shape))
    r = qd[:, None] * shape
    ar = torch.arange(k_max, device=support.device)[None, :]
    last = turn_mask & (ar == n - 1)
    r = r + torch.where(last, (1.0 - lam) * qd[:, None].expand(b, k_max), torch.zeros_like(r))
    return torch.where(turn_mask, r, torch.zeros_like(r)).float()


def siop_turn_advantages(r: Tensor, turn_mask: Tensor, group_index: Tensor, gamma: float = 1.0):
    """Pool every valid turn reward of a group (zeros included), z-normalise (``std_u``; std < 1e-6 → 1; a pool of
    ≤ 1 value → 0), then ``A_{i,k} = Σ_{j≥k} γ^{j−k} r̂_{i,j}``.

    Returns:
        ``(turn_adv[B, K], stats)``.
    """
    b, k_max = turn_mask.shape
    key = group_index[:, None].expand(b, k_max)
    rhat, st = group_norm_masked(r, key, turn_mask, unbiased=True, div_eps=1e-6, singleton="zero",
                                 std_floor=1e-6)
    return reverse_discounted_cumsum(rhat, turn_mask, gamma).float(), st


@register_credit("siop", SIOPConfig, signals=("siop_cluster", "siop_support"))
def siop(batch: GroupBatch, cfg: SIOPConfig) -> CreditOutput:
    """SIOP: verifier-free potential-based turn credit (spec §6). Token ratio.

    Diagnostics: standard keys plus ``q_mean``, ``support_missing`` (valid turns without a support value).
    """
    if cfg.support_signal not in batch.turn_signals and not bool(batch.has_answer.any()):
        # no rollout answered: no answer clusters, hence no potential; the batch carries no SIOP signal (data)
        zeros = torch.zeros_like(batch.turn_rewards)
        return finish(batch, zeros, zeros, stats={},
                      extra={"q_mean": 0.0, "support_missing": float(batch.turn_mask.sum())})
    support = batch.signal(cfg.support_signal, needed_by="siop")
    prompt_support = batch.prompt_signal(cfg.support_signal, needed_by="siop")
    q = batch.prompt_signal(cfg.q_signal, needed_by="siop")
    r = siop_rewards(prompt_support, support, q, batch.turn_mask, cfg.lam, cfg.eps)
    adv, st = siop_turn_advantages(r, batch.turn_mask, batch.group_index, cfg.gamma)
    extra = {"q_mean": float(torch.nan_to_num(q, nan=0.0).double().mean()),
             "support_missing": float((batch.turn_mask & ~torch.isfinite(support)).sum())}
    return finish(batch, adv, r, stats={"group": st}, extra=extra)
