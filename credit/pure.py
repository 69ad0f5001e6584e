"""PURE: min-form credit of process-reward-model step scores with RLOO baselines (``pure``), spec ``credit.md`` §9.2.

Pure tensor functions `pure_step_rewards` and `pure_advantages`; the registered method reads the ``prm`` turn signal
(declared providers: the rule judge and its PR value, see `turngym.credit.signals`) and returns a `CreditOutput`.
Shapes: ``B`` rows, ``L`` response tokens, ``K`` turns (steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, register_credit
from turngym.credit.groups import turn_rewards_to_token_rewards
from turngym.credit.token_common import check_shape, last_policy_index, token_output, turn_sum
from turngym.errors import ConfigError, CreditError

__all__ = ["PUREConfig", "pure_advantages", "pure_step_rewards"]


def pure_step_rewards(
    pr: Tensor,
    turn_mask: Tensor,
    *,
    temperature: float = 0.1,
    weighted: bool = True,
    strict_min: bool = False,
) -> Tensor:
    """PURE min-form transform of per-step process rewards (spec §9.2), ``[B, K]``.

    Softmin form (code, default): ``w_k = softmax_k(−PR_k/T)`` over the row's valid steps, ``r̃_k = w_k·PR_k`` so
    ``Σ_k r̃_k → min_k PR_k`` as ``T → 0``; ``weighted=False`` uses uniform weights (mean form).
    Strict form [R]: ``r̃_k = m_k − m_{k+1}`` with ``m_k = min_{j ≥ k} PR_j`` (``m`` past the last step = 0), so
    the return-to-go at step k is exactly ``min_{j ≥ k} PR_j``.

    Non-finite ``PR`` (missing PRM score) is excluded from the weights / minima and gets ``r̃ = 0``.

    Args:
        pr: ``[B, K]`` ``PR = P(+) − P(−)`` per step.
        turn_mask: ``[B, K]`` valid steps.
        temperature: Softmin temperature T > 0.
        weighted: Softmin weights (True) or uniform weights.
        strict_min: Use the strict min-form.
    """
    check_shape("turn_mask", turn_mask, tuple(pr.shape))
    if temperature <= 0:
        raise ValueError(f"PURE temperature must be > 0; got {temperature}.")
    ok = turn_mask.bool() & torch.isfinite(pr)
    x = torch.where(ok, pr.double(), torch.zeros_like(pr, dtype=torch.float64))
    if strict_min:
        B, K = x.shape
        out = torch.zeros_like(x)
        run = torch.full((B,), float("inf"), dtype=torch.float64, device=x.device)
        prev = torch.zeros(B, dtype=torch.float64, device=x.device)  # m of the next valid step (0 at the end)
        for k in range(K - 1, -1, -1):
            run = torch.where(ok[:, k], torch.minimum(run, x[:, k]), run)
            out[:, k] = torch.where(ok[:, k], run - prev, torch.zeros_like(run))
            prev = torch.where(ok[:, k], run, prev)
        return out.to(pr.dtype if pr.is_floating_point() else torch.float32)
    if weighted:
        logits = torch.where(ok, -x / temperature, torch.full_like(x, -float("inf")))
        any_ok = ok.any(dim=1, keepdim=True)
        w = torch.softmax(torch.where(any_ok, logits, torch.zeros_like(logits)), dim=1)
    else:
        w = ok.double() / ok.sum(dim=1, keepdim=True).clamp(min=1)
    out = torch.where(ok, w * x, torch.zeros_like(x))
    return out.to(pr.dtype if pr.is_floating_point() else torch.float32)


def pure_advantages(
    step_rewards: Tensor,
    turn_mask: Tensor,
    turn_last: Tensor,
    turn_id: Tensor,
    action_mask: Tensor,
    group_index: Tensor,
    *,
    baseline: Literal["token", "step", "none"] = "token",
    verifiable: Tensor | None = None,
    vr_coef: float = 1.0,
    kl_penalty: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """PURE token returns from transformed step rewards (spec §9.2), RLOO baselines, verifiable reward, KL.

    * ``token`` baseline: each step reward of row i loses ``n_tok(step)·(Σ_{j≠i} R_j)/(Σ_{j≠i} L_j)`` (``R_j`` the
      row's summed step rewards, ``L_j`` its policy tokens, ``j`` over the other rows of the group).
    * ``step`` baseline: each step reward loses ``(1/(n−1))·Σ_{j≠i} R_j/S_j`` (``S_j`` steps of row j).
    * A group of one has no baseline. Verifiable reward: ``v_i − mean_{j≠i} v_j`` (rows with a finite
      ``verifiable``; none other → ``v_i``) times ``vr_coef`` on the row's last policy token.
    * Token rewards ``r_t`` = baselined step reward at step ends + VR − ``kl_penalty``; ``A_t = Σ_{t'≥t} r_{t'}``
      over the response (γ = 1), no normalisation.

    Args:
        step_rewards: ``[B, K]`` transformed step rewards r̃ (``pure_step_rewards``).
        turn_mask: ``[B, K]``.
        turn_last: ``[B, K]`` last policy token of each step (−1 invalid).
        turn_id: ``[B, L]``.
        action_mask: ``[B, L]``.
        group_index: ``[B]``.
        baseline: ``"token"``, ``"step"`` or ``"none"``.
        verifiable: ``[B]`` verifiable value ``v_i`` (PURE: ``solved − 1``), NaN = none; None disables VR.
        vr_coef: VR coefficient.
        kl_penalty: ``[B, L]`` per-token ``β·KL`` to subtract, or None.

    Returns:
        ``(advantages [B, L], baselined step rewards [B, K])``; advantages are 0 off the policy tokens.
    """
    B, K = step_rewards.shape
    L = action_mask.shape[1]
    for name, t, shp in (
        ("turn_mask", turn_mask, (B, K)),
        ("turn_last", turn_last, (B, K)),
        ("turn_id", turn_id, (B, L)),
        ("group_index", group_index, (B,)),
        ("verifiable", verifiable, (B,)),
        ("kl_penalty", kl_penalty, (B, L)),
    ):
        check_shape(name, t, shp)
    if baseline not in ("token", "step", "none"):
        raise ValueError(f"PURE baseline must be 'token', 'step' or 'none'; got {baseline!r}.")
    mask = action_mask.bool()
    tm = turn_mask.bool()
    r = torch.where(
        tm,
        torch.nan_to_num(step_rewards.double(), nan=0.0),
        torch.zeros_like(step_rewards, dtype=torch.float64),
    )
    g = group_index.long()
    n_g = int(g.max()) + 1 if B else 0

    def gsum(x: Tensor) -> Tensor:
        return torch.zeros(n_g, dtype=torch.float64, device=x.device).scatter_add_(0, g, x)[g]

    n = gsum(torch.ones(B, dtype=torch.float64, device=r.device))
    R = r.sum(1)
    n_tok_step = turn_sum(mask.double(), turn_id, K)  # [B, K]
    if baseline == "token":
        Lrow = mask.double().sum(1)
        other_R, other_L = gsum(R) - R, gsum(Lrow) - Lrow
        per_tok = torch.where((n > 1) & (other_L > 0), other_R / other_L.clamp(min=1), torch.zeros_like(R))
        r = r - torch.where(tm, n_tok_step * per_tok[:, None], torch.zeros_like(r))
    elif baseline == "step":
        S = tm.double().sum(1)
        per_step = R / S.clamp(min=1)
        b = torch.where(n > 1, (gsum(per_step) - per_step) / (n - 1).clamp(min=1), torch.zeros_like(R))
        r = r - torch.where(tm, b[:, None].expand_as(r), torch.zeros_like(r))
    tok = turn_rewards_to_token_rewards(r, turn_last, L).double()
    if verifiable is not None:
        has = torch.isfinite(verifiable)
        v = torch.where(has, verifiable.double(), torch.zeros_like(verifiable, dtype=torch.float64))
        cnt = gsum(has.double())
        other_mean = (gsum(v) - v) / (cnt - 1).clamp(min=1)
        vr = torch.where(cnt > 1, v - other_mean, v) * vr_coef
        last = last_policy_index(mask)
        ok = has & (last >= 0)
        tok = tok.scatter_add(
            1, last.clamp(min=0)[:, None], torch.where(ok, vr, torch.zeros_like(vr))[:, None]
        )
    if kl_penalty is not None:
        tok = tok - torch.where(mask, kl_penalty.double(), torch.zeros_like(tok))
    tok = torch.where(mask, tok, torch.zeros_like(tok))
    adv = torch.flip(torch.cumsum(torch.flip(tok, [1]), 1), [1])
    return torch.where(mask, adv, torch.zeros_like(adv)), r


@dataclass(frozen=True)
class PUREConfig:
    """PURE: min-form PRM credit with RLOO baselines (spec §9.2; train_pure.sh defaults)."""

    signal: str = "prm"
    """Turn signal holding the PRM score of each step (turn)."""
    signal_kind: Literal["pr", "prob", "logit_diff"] = "pr"
    """How the signal encodes the score: ``PR = P(+) − P(−)``; ``prob`` = P(+) (PR = 2p − 1); ``logit_diff`` =
    logit(+) − logit(−) (PR = tanh(z/2))."""
    temperature: float = 0.1
    """Softmin temperature T."""
    weighted: bool = True
    """Softmin weights (False = ``disable_weighted_reward``, mean form)."""
    strict_min_form: bool = False
    """Return-to-go = min over remaining steps [R] instead of the code's softmin transform."""
    baseline: Literal["token", "step", "none"] = "token"
    """RLOO baseline over the group's other samples."""
    vr_coef: float = 1.0
    """Coefficient of the verifiable reward (``outcome − 1`` on answered rows, leave-one-out); 0 = PRM only."""
    kl_coef: float = 0.0
    """β of the per-token k1 KL penalty in the reward (PURE parity 0.001; needs ref_logprobs)."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"PURE temperature must be > 0; got {self.temperature}.")
        if self.signal_kind not in ("pr", "prob", "logit_diff"):
            raise ConfigError(f"signal_kind must be 'pr', 'prob' or 'logit_diff'; got {self.signal_kind!r}.")


_PR_FROM = {"pr": lambda s: s, "prob": lambda s: 2.0 * s - 1.0, "logit_diff": lambda s: torch.tanh(s / 2.0)}


# no PRM model on the built-in envs: the rule judge's step score is the PR value (`RulePRMProvider`)
@register_credit("pure", PUREConfig, signals=("rule_judge", "rule_prm"))
def pure(batch: GroupBatch, cfg: PUREConfig) -> CreditOutput:
    """PURE: min-form transform of PRM step scores, RLOO baseline, verifiable reward, γ = 1 returns (spec §9.2).

    Steps are the policy turns; each step's reward sits on its last policy token. ``turn_rewards`` are the PR
    values. Diagnostics: standard ones plus ``pure_min_pr_mean`` and ``pure_R_mean``.
    """
    pr = _PR_FROM[cfg.signal_kind](batch.signal(cfg.signal, needed_by="pure").double())
    rt = pure_step_rewards(
        pr,
        batch.turn_mask,
        temperature=cfg.temperature,
        weighted=cfg.weighted,
        strict_min=cfg.strict_min_form,
    )
    verifiable = None
    if cfg.vr_coef != 0:
        v = batch.outcome.double() - 1.0
        verifiable = torch.where(batch.scored.bool(), v, torch.full_like(v, float("nan")))
    klp = None
    if cfg.kl_coef > 0:
        if batch.old_logprobs is None or batch.ref_logprobs is None:
            raise CreditError(f"pure: kl_coef={cfg.kl_coef} needs batch.old_logprobs and batch.ref_logprobs.")
        klp = cfg.kl_coef * (batch.old_logprobs.double() - batch.ref_logprobs.double())
    adv, _ = pure_advantages(
        rt,
        batch.turn_mask,
        batch.turn_last,
        batch.turn_id,
        batch.action_mask,
        batch.group_index,
        baseline=cfg.baseline,
        verifiable=verifiable,
        vr_coef=cfg.vr_coef,
        kl_penalty=klp,
    )
    ok = batch.turn_mask & torch.isfinite(pr)
    mins = torch.where(ok, pr, torch.full_like(pr, float("inf"))).min(1).values
    extra = {
        "pure_min_pr_mean": float(mins[torch.isfinite(mins)].mean())
        if bool(torch.isfinite(mins).any())
        else 0.0,
        "pure_R_mean": float(rt.sum(1).mean()),
    }
    return token_output(batch, adv, turn_rewards=pr.float(), extra=extra)
