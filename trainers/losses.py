"""Pure loss functions for policy-gradient training of multi-turn agents.

Everything here is a stateless function of tensors (spec ``credit.md`` §3): the clipped PPO/GRPO surrogate with
per-token clip scale, dual clip and token / turn / sequence importance ratios; the loss-aggregation modes of the
``LOSS_AGG`` registry; the KL loss term (estimators ``KL_ESTIMATORS``, ``kl_penalty`` and ``kl_penalty_rewards`` live in
`turngym.credit.kl`, the project's one KL implementation, and are re-exported here); entropy from
logits; the clipped value loss; DAPO's overlong reward shaping; and memory-light per-token log-probs from logits.

Shapes: ``B`` rows (trajectories), ``L`` response tokens, ``V`` vocabulary. All token tensors are ``[B, L]`` and
aligned: position ``l`` of ``logp`` is the log-prob of response token ``l``. ``action_mask`` is True only on tokens the
policy sampled; every other position is ignored (its value may be garbage, even ``inf``/``NaN``).

Every metric key these functions return is documented in ``METRICS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from turngym.credit.kl import KL_ESTIMATORS, check_same_shape, kl_penalty, kl_penalty_rewards
from turngym.registry import Registry

__all__ = [
    "KL_ESTIMATORS",
    "LOSS_AGG",
    "METRICS",
    "agg_loss",
    "entropy_from_logits",
    "kl_penalty",
    "kl_penalty_rewards",
    "overlong_penalty",
    "policy_loss",
    "segment_log_ratio",
    "token_logprobs",
    "value_loss",
]

RatioLevel = Literal["token", "turn", "sequence"]
LossType = Literal["clip", "reinforce"]

#: Every metric key returned by ``policy_loss`` / ``value_loss`` and what it measures (means over policy tokens).
METRICS: dict[str, str] = {
    "loss": "total policy loss: pg_loss + kl_coef*kl_loss - entropy_coef*entropy",
    "pg_loss": "aggregated clipped surrogate (loss_type='clip') or REINFORCE term -A*logp*scale ('reinforce')",
    "clipfrac": "fraction of policy tokens whose clipped branch is active (ratio outside the clip range, against A); "
                "0 for loss_type='reinforce'",
    "clipfrac_low": "fraction of policy tokens clipped at 1-eps_low*c (A<0)",
    "clipfrac_high": "fraction of policy tokens clipped at 1+eps_high*c (A>0)",
    "dual_clipfrac": "fraction of policy tokens where the dual clip -A*c bound is active (A<0)",
    "approx_kl": "k3 estimate of KL(old || new) from token log-ratios: mean(exp(r) - 1 - r), r = logp - old_logp",
    "ratio_mean": "mean importance ratio actually used (segment ratio for turn/sequence level)",
    "ratio_min": "min importance ratio used",
    "ratio_max": "max importance ratio used",
    "adv_mean": "mean advantage over policy tokens",
    "kl": "mean KL estimate (kl_type) to the reference policy over policy tokens (only when ref_logp is given)",
    "kl_loss": "aggregated KL term before multiplying by kl_coef (only when ref_logp is given)",
    "entropy": "aggregated token entropy (only when entropy is given)",
    "n_tokens": "number of trained tokens in this (micro-)batch (policy tokens inside loss_mask)",
    "vf_loss": "clipped value loss (value_loss)",
    "vf_clipfrac": "fraction of policy tokens where the clipped value branch is larger (value_loss)",
    "vpred_mean": "mean predicted value over policy tokens (value_loss)",
    "vf_explained_var": "1 - Var(returns - values)/Var(returns) over policy tokens (value_loss)",
}


# --------------------------------------------------------------------------------------------------------------- checks


def _check_2d(name: str, t: Tensor) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be [B, L] (2-D); got shape {tuple(t.shape)}.")


def _as_bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


# ---------------------------------------------------------------------------------------------------------- aggregation

#: Loss aggregation modes (spec §3.1). Each is ``fn(values[B, L], mask[B, L], *, norm_len, global_tokens,
#: global_seqs) -> scalar``.
LOSS_AGG: Registry[Callable[..., Tensor]] = Registry("loss aggregation")


def _row_has_tokens(mask: Tensor) -> Tensor:
    return mask.any(dim=-1)


@LOSS_AGG.register("token-mean")
def _token_mean(
    values: Tensor, mask: Tensor, *, norm_len=None, global_tokens=None, global_seqs=None
) -> Tensor:
    """Σ m·ℓ / Σ m (DAPO, verl default). ``global_tokens`` replaces the local token count (data parallel)."""
    total = torch.where(mask, values, 0.0).sum()
    denom = mask.sum() if global_tokens is None else torch.as_tensor(global_tokens, dtype=values.dtype)
    return total / torch.clamp(denom.to(values.dtype), min=1.0)


def _seq_denominator(mask: Tensor, global_seqs, dtype) -> Tensor:
    n = _row_has_tokens(mask).sum() if global_seqs is None else torch.as_tensor(global_seqs)
    return torch.clamp(n.to(dtype), min=1.0)


@LOSS_AGG.register("seq-mean-token-mean")
def _seq_mean_token_mean(
    values: Tensor, mask: Tensor, *, norm_len=None, global_tokens=None, global_seqs=None
):
    """(1/B'') Σ_b (Σ_l m ℓ / Σ_l m), B'' = rows with ≥ 1 policy token (original GRPO)."""
    row_sum = torch.where(mask, values, 0.0).sum(-1)
    row_cnt = mask.sum(-1).to(values.dtype)
    row_mean = row_sum / torch.clamp(row_cnt, min=1.0)
    return row_mean.sum() / _seq_denominator(mask, global_seqs, values.dtype)


@LOSS_AGG.register("seq-mean-token-sum")
def _seq_mean_token_sum(values: Tensor, mask: Tensor, *, norm_len=None, global_tokens=None, global_seqs=None):
    """(1/B'') Σ_b Σ_l m ℓ."""
    return torch.where(mask, values, 0.0).sum() / _seq_denominator(mask, global_seqs, values.dtype)


@LOSS_AGG.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(
    values: Tensor, mask: Tensor, *, norm_len=None, global_tokens=None, global_seqs=None
):
    """Σ_b Σ_l m ℓ / (B''·L_norm) with a constant L_norm (Dr.GRPO), never the padded width."""
    if norm_len is None or norm_len <= 0:
        raise ValueError(
            f"agg='seq-mean-token-sum-norm' needs a positive constant agg_norm_len (the generation budget); got "
            f"{norm_len!r}. Pass agg_norm_len=<max response tokens>."
        )
    total = torch.where(mask, values, 0.0).sum()
    return total / (_seq_denominator(mask, global_seqs, values.dtype) * float(norm_len))


def agg_loss(
    values: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    *,
    norm_len: float | None = None,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
) -> Tensor:
    """Aggregate per-token values ``[B, L]`` over the policy tokens ``mask`` with a ``LOSS_AGG`` mode.

    Args:
        values: Per-token values ``[B, L]`` (masked positions are ignored, even if non-finite).
        mask: Policy-token mask ``[B, L]``.
        agg: A ``LOSS_AGG`` name: ``token-mean``, ``seq-mean-token-mean``, ``seq-mean-token-sum``,
            ``seq-mean-token-sum-norm``.
        norm_len: The constant ``L_norm`` of ``seq-mean-token-sum-norm``.
        global_tokens: Data parallel / gradient accumulation: the number of policy tokens of the whole mini-batch
            across ranks and micro-batches. ``token-mean`` then divides by it, so the per-micro-batch losses *sum*
            to the global token mean (scale by world size if your all-reduce averages gradients).
        global_seqs: Same for the ``seq-mean-*`` modes: rows with ≥ 1 policy token in the whole mini-batch.

    Returns:
        A scalar tensor. Rows without policy tokens are excluded from every denominator; an empty mask gives 0.
    """
    _check_2d("values", values)
    check_same_shape("values", values, mask=mask)
    fn = LOSS_AGG[agg]
    return fn(values, _as_bool(mask), norm_len=norm_len, global_tokens=global_tokens, global_seqs=global_seqs)


# ------------------------------------------------------------------------------------------------------ policy surrogate


def segment_log_ratio(
    log_ratio: Tensor,
    action_mask: Tensor,
    turn_id: Tensor | None,
    level: RatioLevel,
) -> Tensor:
    """Mean token log-ratio of each segment, broadcast back to its tokens (no gradient).

    ``level="turn"``: segments are ``(row, turn_id)`` over policy tokens; ``"sequence"``: segments are rows.
    Returns ``[B, L]`` with the segment mean on policy tokens and 0 elsewhere.
    """
    mask = _as_bool(action_mask)
    lr = torch.where(mask, log_ratio.detach(), 0.0)
    if level == "sequence":
        cnt = mask.sum(-1, keepdim=True).clamp(min=1).to(lr.dtype)
        return torch.where(mask, lr.sum(-1, keepdim=True) / cnt, 0.0)
    if level != "turn":
        raise ValueError(f"segment_log_ratio needs level 'turn' or 'sequence'; got {level!r}.")
    if turn_id is None:
        raise ValueError("ratio_level='turn' needs turn_id [B, L] (k on policy tokens of turn k); got None.")
    check_same_shape("log_ratio", log_ratio, turn_id=turn_id)
    if bool((mask & (turn_id < 0)).any()):
        raise ValueError(
            "ratio_level='turn': some policy tokens have turn_id < 0; every policy token must belong to a turn."
        )
    B, _ = lr.shape
    K = int(turn_id[mask].max().item()) + 1 if bool(mask.any()) else 1
    key = torch.arange(B, device=lr.device)[:, None] * K + turn_id.clamp(min=0)  # [B, L]
    key = torch.where(mask, key, 0)
    s = torch.zeros(B * K, dtype=lr.dtype, device=lr.device).scatter_add_(0, key.reshape(-1), lr.reshape(-1))
    c = torch.zeros(B * K, dtype=lr.dtype, device=lr.device).scatter_add_(
        0, key.reshape(-1), mask.reshape(-1).to(lr.dtype)
    )
    mean = s / c.clamp(min=1.0)
    return torch.where(mask, mean[key], 0.0)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    action_mask: Tensor,
    turn_id: Tensor | None = None,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_scale: Tensor | None = None,
    dual_clip_c: float | None = None,
    ratio_level: RatioLevel = "token",
    agg: str = "token-mean",
    agg_norm_len: float | None = None,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_type: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    log_ratio_clamp: float = 20.0,
    segment_log_ratio_max: float = 10.0,
    loss_mask: Tensor | None = None,
    loss_type: LossType = "clip",
    reinforce_scale: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped policy-gradient surrogate (PPO / GRPO / DAPO / A²TGPO / SLATE), spec §2.3, §3.1, §3.3, or the plain
    REINFORCE term (R³L, wave-2 spec §3.2).

    Per policy token, with ratio ρ and clip scale c (1 if ``clip_scale`` is None)::

        ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε_low·c, 1 + ε_high·c))
        if dual_clip_c and A < 0:  ℓ = min(ℓ, −A·dual_clip_c)
        loss = agg(ℓ) + kl_coef·agg(k(logp, ref_logp)) − entropy_coef·agg(entropy)

    Ratio level: ``"token"`` uses ``log ρ_t = clamp(logp_t − old_logp_t, ±log_ratio_clamp)``. ``"turn"`` and
    ``"sequence"`` use the segment ratio ``ρ_seg = exp(mean_{t∈seg}(logp_t − old_logp_t))`` in the straight-through
    form ``log ρ_t = logp_t − sg(logp_t) + sg(min(log ρ_seg, segment_log_ratio_max))``: every token keeps its own
    gradient ``ρ_seg·∇logp_t`` while the clip decision is made per segment (turn = tokens with the same ``turn_id``
    in a row; sequence = all policy tokens of a row). With ``old_logp == logp`` the gradient is REINFORCE's
    ``−A·∇logp`` at every level.

    ``loss_type="reinforce"`` (R³L): ``ℓ = −A·logp·reinforce_scale`` per token, no importance ratio and no clipping
    (``clip_scale``, ``dual_clip_c`` and the ratio level do not enter the loss; the ratio metrics are still
    reported). The KL and entropy terms are the same for both types.

    ``loss_mask`` (R³L's pivotal credit): the trained tokens are ``action_mask ∧ loss_mask``; the other tokens leave
    the loss *and* every denominator (token-mean token count, seq-mean row counts, per-row token counts, the KL and
    entropy terms' masks), exactly as if they were not policy tokens. None = ``action_mask`` (bit-identical to not
    passing it). Under data parallelism, ``global_tokens`` / ``global_seqs`` must count the same masked tokens.

    Args:
        logp: Current-policy log-probs of the sampled tokens ``[B, L]`` (carries the gradient).
        old_logp: Behaviour log-probs ``[B, L]``.
        adv: Token advantages ``[B, L]``.
        action_mask: Policy-token mask ``[B, L]`` (bool or 0/1).
        turn_id: ``[B, L]`` turn index of each policy token (needed for ``ratio_level="turn"``).
        eps_low: Lower clip ε (ratio ≥ 1 − ε_low·c).
        eps_high: Upper clip ε (clip-higher, DAPO uses 0.28).
        clip_scale: Optional per-token multiplier ``c`` of both ε (A²TGPO), ``[B, L]``.
        dual_clip_c: Dual-clip constant ``c > 1`` for negative advantages (verl 3.0, DAPO/DelTA 10); None = off.
        ratio_level: ``"token"``, ``"turn"`` or ``"sequence"``.
        agg: ``LOSS_AGG`` mode for every term.
        agg_norm_len: Constant ``L_norm`` for ``seq-mean-token-sum-norm``.
        global_tokens: Global policy-token count for ``token-mean`` under data parallelism (see ``agg_loss``).
        global_seqs: Global row count for ``seq-mean-*`` under data parallelism.
        ref_logp: Reference log-probs ``[B, L]`` for the KL loss term.
        kl_coef: KL loss coefficient (needs ``ref_logp`` when > 0).
        kl_type: ``KL_ESTIMATORS`` name (``k3`` = verl ``low_var_kl``).
        entropy: Optional per-token entropy ``[B, L]`` (``entropy_from_logits``) for an entropy bonus.
        entropy_coef: Entropy bonus coefficient (negative: entropy minimisation).
        log_ratio_clamp: Token log-ratio clamp (verl: 20).
        segment_log_ratio_max: Upper clamp of the segment log-ratio (spec §3.3: 10).
        loss_mask: Optional ``[B, L]`` mask of the tokens to train, intersected with ``action_mask``.
        loss_type: ``"clip"`` (the surrogate above) or ``"reinforce"`` (``−A·logp·reinforce_scale``).
        reinforce_scale: Factor of the REINFORCE term (R³L's OPMD ``1/(1+τ)``).

    Returns:
        ``(loss, metrics)``: a scalar tensor and a dict of floats (keys in ``METRICS``).

    Raises:
        ValueError: On mismatched shapes, an unknown ratio level or loss type, ``ratio_level="turn"`` without
            ``turn_id``, a positive ``kl_coef`` without ``ref_logp``, or ``dual_clip_c <= 1``.
    """
    _check_2d("logp", logp)
    check_same_shape(
        "logp", logp, old_logp=old_logp, adv=adv, action_mask=action_mask, turn_id=turn_id,
        clip_scale=clip_scale, ref_logp=ref_logp, entropy=entropy, loss_mask=loss_mask,
    )  # fmt: skip
    if loss_type not in ("clip", "reinforce"):
        raise ValueError(f"loss_type must be 'clip' or 'reinforce'; got {loss_type!r}.")
    if ratio_level not in ("token", "turn", "sequence"):
        raise ValueError(f"ratio_level must be 'token', 'turn' or 'sequence'; got {ratio_level!r}.")
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1 (verl uses 3.0) or None to disable; got {dual_clip_c}.")
    if kl_coef > 0 and ref_logp is None:
        raise ValueError(
            f"kl_coef={kl_coef} > 0 needs ref_logp [B, L]; pass the reference log-probs or kl_coef=0."
        )
    if entropy_coef != 0 and entropy is None:
        raise ValueError(
            f"entropy_coef={entropy_coef} needs entropy [B, L]; compute it with entropy_from_logits."
        )

    mask = _as_bool(action_mask)
    if loss_mask is not None:  # R³L: masked policy tokens are no policy tokens for every term below
        mask = mask & _as_bool(loss_mask)
    agg_kw = {"norm_len": agg_norm_len, "global_tokens": global_tokens, "global_seqs": global_seqs}
    # zero every off-mask entry first: garbage there (inf/NaN) must not reach values or gradients
    logp = torch.where(mask, logp, 0.0)
    old_logp = torch.where(mask, old_logp.to(logp.dtype), 0.0)
    adv = torch.where(mask, adv.to(logp.dtype), 0.0)
    raw_log_ratio = logp - old_logp  # [B, L], 0 off the mask
    if ratio_level == "token":
        log_ratio = torch.clamp(raw_log_ratio, min=-log_ratio_clamp, max=log_ratio_clamp)
    else:
        seg = segment_log_ratio(raw_log_ratio, mask, turn_id, ratio_level)  # [B, L], no grad
        seg = torch.clamp(seg, min=-log_ratio_clamp, max=segment_log_ratio_max)
        log_ratio = torch.where(mask, logp - logp.detach() + seg, 0.0)
    ratio = torch.exp(log_ratio)  # [B, L]

    scale = 1.0 if clip_scale is None else torch.where(mask, clip_scale.to(logp.dtype), 1.0)
    lo = 1.0 - eps_low * scale
    hi = 1.0 + eps_high * scale
    if clip_scale is None:
        clipped_ratio = torch.clamp(ratio, min=lo, max=hi)
    else:
        clipped_ratio = torch.minimum(torch.maximum(ratio, lo), hi)
    dual_active = torch.zeros_like(mask)
    if loss_type == "reinforce":  # R³L: no ratio, no clip
        pg_tok = -adv * logp * reinforce_scale
        clipped = torch.zeros_like(mask)
    else:
        loss1 = -adv * ratio
        loss2 = -adv * clipped_ratio
        pg_tok = torch.maximum(loss1, loss2)
        clipped = mask & (loss2 > loss1)
    if dual_clip_c is not None and loss_type == "clip":
        loss3 = -adv * dual_clip_c
        dual_active = mask & (adv < 0) & (loss3 < pg_tok)
        pg_tok = torch.where(adv < 0, torch.minimum(pg_tok, loss3), pg_tok)
    pg_loss = agg_loss(pg_tok, mask, agg, **agg_kw)
    loss = pg_loss

    with torch.no_grad():  # one device sync for all metrics
        nt = mask.sum()
        denom = nt.clamp(min=1).to(torch.float32)

        def mmean(x: Tensor) -> Tensor:
            return torch.where(mask, x.float(), 0.0).sum() / denom

        rd = ratio.detach().float()
        big = torch.finfo(torch.float32).max
        rlr = raw_log_ratio.detach().float().clamp(-20, 20)
        vals = {
            "pg_loss": pg_loss.detach().float(),
            "clipfrac": mmean(clipped),
            "clipfrac_low": mmean(clipped & (adv < 0)),
            "clipfrac_high": mmean(clipped & (adv > 0)),
            "dual_clipfrac": mmean(dual_active),
            "approx_kl": mmean(torch.expm1(rlr) - rlr),
            "ratio_mean": mmean(rd),
            "ratio_min": torch.where(mask, rd, big).amin() if rd.numel() else rd.new_tensor(1.0),
            "ratio_max": torch.where(mask, rd, -big).amax() if rd.numel() else rd.new_tensor(1.0),
            "adv_mean": mmean(adv),
            "n_tokens": nt.float(),
        }
        metrics: dict[str, float] = dict(zip(vals, torch.stack(list(vals.values())).tolist()))
        if metrics["n_tokens"] == 0:
            metrics["ratio_min"] = metrics["ratio_max"] = 1.0

    if ref_logp is not None:
        kl_tok = kl_penalty(logp, torch.where(mask, ref_logp.to(logp.dtype), 0.0), kl_type)
        kl_tok = torch.where(mask, kl_tok, 0.0)
        kl_loss = agg_loss(kl_tok, mask, agg, **agg_kw)
        loss = loss + kl_coef * kl_loss
        metrics["kl"], metrics["kl_loss"] = torch.stack(
            [mmean(kl_tok.detach()), kl_loss.detach().float()]
        ).tolist()
    if entropy is not None:
        ent = agg_loss(torch.where(mask, entropy, 0.0), mask, agg, **agg_kw)
        loss = loss - entropy_coef * ent
        metrics["entropy"] = float(ent.detach().item())
    metrics["loss"] = float(loss.detach().item())
    return loss, metrics


# --------------------------------------------------------------------------------------------------------- value loss


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    action_mask: Tensor,
    *,
    clip_eps: float | None = 0.5,
    agg: str = "token-mean",
    agg_norm_len: float | None = None,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss on policy tokens (spec §3.2, verl)::

        ½·agg(max((V − Ret)², (clip(V, V_old − ε_v, V_old + ε_v) − Ret)²))

    Args:
        values: Current critic values ``[B, L]`` (carries the gradient).
        old_values: Critic values at rollout time ``[B, L]``.
        returns: GAE returns ``[B, L]``.
        action_mask: Policy-token mask ``[B, L]``.
        clip_eps: ε_v (verl 0.5); None = unclipped ``½·agg((V − Ret)²)``.
        agg: ``LOSS_AGG`` mode.
        agg_norm_len: ``L_norm`` for ``seq-mean-token-sum-norm``.
        global_tokens: Global token count (data parallel).
        global_seqs: Global row count (data parallel).

    Returns:
        ``(loss, metrics)`` with ``vf_loss``, ``vf_clipfrac``, ``vpred_mean``, ``vf_explained_var``.
    """
    _check_2d("values", values)
    check_same_shape("values", values, old_values=old_values, returns=returns, action_mask=action_mask)
    mask = _as_bool(action_mask)
    ret = torch.where(mask, returns.to(values.dtype), 0.0)
    v = torch.where(mask, values, 0.0)
    err1 = (v - ret).square()
    if clip_eps is None:
        per_tok = err1
        vclip = torch.zeros_like(mask)
    else:
        old = torch.where(mask, old_values.to(values.dtype), 0.0)
        v_clipped = old + torch.clamp(v - old, -clip_eps, clip_eps)
        err2 = (v_clipped - ret).square()
        per_tok = torch.maximum(err1, err2)
        vclip = mask & (err2 > err1)
    loss = 0.5 * agg_loss(per_tok, mask, agg, norm_len=agg_norm_len, global_tokens=global_tokens,
                          global_seqs=global_seqs)  # fmt: skip
    with torch.no_grad():
        n = max(int(mask.sum().item()), 1)
        r = ret[mask].float()
        resid = (ret - v)[mask].float()
        var_r = float(r.var(unbiased=False).item()) if r.numel() > 1 else 0.0
        ev = 1.0 - float(resid.var(unbiased=False).item()) / var_r if var_r > 0 else 0.0
        metrics = {
            "vf_loss": float(loss.detach().item()),
            "vf_clipfrac": float(vclip.sum().item()) / n,
            "vpred_mean": float(v.detach().sum().item()) / n,
            "vf_explained_var": ev,
        }
    return loss, metrics


# --------------------------------------------------------------------------------------------------------- DAPO shaping


def overlong_penalty(
    lengths: Tensor, *, max_len: int, buffer_len: int, penalty_factor: float = 1.0
) -> Tensor:
    """DAPO soft overlong punishment (spec §3.3) for response lengths ``[B]``.

    ``0`` if ``|y| ≤ L_max − L_buf``; ``((L_max − L_buf) − |y|)/L_buf · factor`` inside the buffer; ``−factor`` beyond
    ``L_max``. Add the result to the outcome reward.

    Args:
        lengths: Response lengths ``[B]`` (policy tokens, or all response tokens, as the recipe counts them).
        max_len: ``L_max``, the generation budget.
        buffer_len: ``L_buf`` (0 < L_buf ≤ L_max).
        penalty_factor: Penalty at and beyond ``L_max``.

    Returns:
        ``[B]`` float penalties in ``[−factor, 0]``.
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be [B]; got shape {tuple(lengths.shape)}.")
    if not 0 < buffer_len <= max_len:
        raise ValueError(f"need 0 < buffer_len <= max_len; got buffer_len={buffer_len}, max_len={max_len}.")
    expected = max_len - buffer_len
    pen = (expected - lengths.float()) / buffer_len * penalty_factor
    return torch.clamp(pen, min=-penalty_factor, max=0.0)


# ------------------------------------------------------------------------------------------ log-probs and entropy


def _row_chunks(n: int, chunk_rows: int):
    step = max(int(chunk_rows), 1)
    for s in range(0, n, step):
        yield s, min(s + step, n)


def token_logprobs(
    logits: Tensor, ids: Tensor, *, temperature: float = 1.0, chunk_rows: int = 1024
) -> Tensor:
    """Log-probs of given token ids under ``logits``, without materializing a full ``log_softmax``.

    ``out[..., t] = logits[..., t, ids[..., t]]/τ − logsumexp(logits[..., t, :]/τ)``, computed in float32 over chunks
    of ``chunk_rows`` positions, so the extra memory is one ``[chunk_rows, V]`` float32 buffer. Differentiable.
    The caller aligns ``logits`` and ``ids`` (for a causal LM: ``logits[:, :-1]`` scores ``input_ids[:, 1:]``).

    Args:
        logits: ``[..., T, V]`` (any float dtype).
        ids: ``[..., T]`` integer ids.
        temperature: Sampling temperature τ the log-probs should match (> 0).
        chunk_rows: Positions per chunk.

    Returns:
        ``[..., T]`` float32 log-probs.
    """
    if tuple(logits.shape[:-1]) != tuple(ids.shape):
        raise ValueError(
            f"logits {tuple(logits.shape)} must be ids.shape + (V,); ids has shape {tuple(ids.shape)}."
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}.")
    V = logits.shape[-1]
    flat_logits = logits.reshape(-1, V)
    flat_ids = ids.reshape(-1, 1).long()
    outs = []
    for s, e in _row_chunks(flat_logits.shape[0], chunk_rows):
        chunk = flat_logits[s:e].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        picked = chunk.gather(-1, flat_ids[s:e]).squeeze(-1)
        outs.append(picked - torch.logsumexp(chunk, dim=-1))
    out = torch.cat(outs) if outs else flat_logits.new_zeros(0, dtype=torch.float32)
    return out.reshape(ids.shape)


def entropy_from_logits(
    logits: Tensor, mask: Tensor | None = None, *, temperature: float = 1.0, chunk_rows: int = 1024
) -> Tensor:
    """Per-position entropy ``H = logsumexp(z) − Σ softmax(z)·z`` of ``logits`` ``[..., T, V]`` (float32, chunked).

    Args:
        logits: ``[..., T, V]``.
        mask: Optional ``[..., T]`` mask; masked-out positions are 0 and cost no compute.
        temperature: Divide logits by τ first.
        chunk_rows: Positions per chunk.

    Returns:
        ``[..., T]`` entropies (differentiable).
    """
    if mask is not None and tuple(mask.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"mask {tuple(mask.shape)} must equal logits.shape[:-1] = {tuple(logits.shape[:-1])}."
        )
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    out = torch.zeros(flat.shape[0], dtype=torch.float32, device=logits.device)
    idx = (
        torch.arange(flat.shape[0], device=logits.device)
        if mask is None
        else _as_bool(mask).reshape(-1).nonzero().squeeze(-1)
    )
    parts = []
    for s, e in _row_chunks(idx.numel(), chunk_rows):
        z = flat[idx[s:e]].float()
        if temperature != 1.0:
            z = z / temperature
        lse = torch.logsumexp(z, dim=-1)
        p = torch.softmax(z, dim=-1)
        parts.append(lse - (p * z).sum(-1))
    if parts:
        out = out.index_put((idx,), torch.cat(parts))
    return out.reshape(logits.shape[:-1])
