"""DelTA: discriminative token coefficients that reweight an upstream credit method's advantages (``delta``), spec
``credit.md`` §9.3.

`delta_coefficients` is the pure tensor function; `delta_refine` is a *refiner* (registered in
`turngym.credit.base.REFINERS`: it reweights the advantages of any upstream `CreditOutput`), and the ``delta`` method
runs a base method by name and refines it. DelTA reads the policy's last hidden states from
``GroupBatch.token_features["hidden"]`` (declared token feature ``"hidden"``; the trainer computes it).
Shapes: ``B`` rows, ``L`` response tokens, ``H`` hidden size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from turngym.credit.base import (
    CREDIT,
    CreditOutput,
    GroupBatch,
    make_config,
    register_credit,
    register_refiner,
)
from turngym.credit.token_common import check_shape
from turngym.errors import ConfigError, CreditError
from turngym.registry import unknown_name_message

__all__ = ["DeltaConfig", "delta_coefficients", "delta_refine"]


def delta_coefficients(
    hidden: Tensor,
    token_prob: Tensor,
    adv: Tensor,
    action_mask: Tensor,
    *,
    lambda_min: float = 0.8,
    lambda_max: float = 1.2,
    lambda_w: float = 1.0,
    gamma_time: float = 1.0,
    n_refine: int = 1,
    variance_scaled: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """DelTA discriminative token coefficients (spec §9.3), self-normalised to mean 1 over valid tokens.

    With ``v = (1 − p)·h`` (last-layer token-gradient proxy), side ``+`` = tokens with ``A > 0``, ``−`` = ``A < 0``
    (each token's own advantage, the agentic form), weights ``|A|``:

    1. centroids ``μ^± = Σ |A| v / Σ |A|`` per side; distances ``d^±(v) = Σ_h (v_h − μ^±_h)²/D_h`` (``D = 1``, or
       ``σ⁺² + σ⁻² + 1e−6`` with ``variance_scaled``);
    2. margins ``m = λ_w d⁻ − d⁺`` on ``+``, ``λ_w d⁺ − d⁻`` on ``−``; ``γ^± = γ_time·sqrt(max(var_p(m_side), 1e−8))``;
    3. ``n_refine`` times: ``ω = σ(m/γ)·|A|``, ``μ^± ← Σ ω v / Σ ω``, margins recomputed with the new centroids
       (``γ`` is that of the margins used to build ``ω``);
    4. ``c = λ_min + (λ_max − λ_min)·σ(m/γ)``; tokens with ``A = 0`` get ``λ_min``; ``c̃ = c·N/Σc``.

    If either side is empty the coefficients are all 1 (DelTA skipped). Statistics are in float64.

    Args:
        hidden: ``[B, L, H]`` last hidden states (input of ``lm_head``) at the sampled tokens.
        token_prob: ``[B, L]`` probability of the sampled token under the old policy.
        adv: ``[B, L]`` token advantages (upstream credit).
        action_mask: ``[B, L]``.
        lambda_min: Lowest coefficient.
        lambda_max: Highest coefficient.
        lambda_w: Weight of the opposite-side distance in the margin.
        gamma_time: Temperature multiplier.
        n_refine: Refinement passes K.
        variance_scaled: Diagonal variance scaling ``D`` (the reference overwrites it with ones).

    Returns:
        ``(coef [B, L], diagnostics)``; ``coef`` is 1 off the mask. Diagnostics: ``delta_skipped``,
        ``delta_gamma_pos``, ``delta_gamma_neg``, ``delta_coef_min``, ``delta_coef_max``, ``delta_disc_acc``
        (fraction of side tokens with a positive discriminator score ``sign(A)(W·v + b)``).
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, L, H]; got shape {tuple(hidden.shape)}.")
    B, L, H = hidden.shape
    check_shape("token_prob", token_prob, (B, L))
    check_shape("adv", adv, (B, L))
    check_shape("action_mask", action_mask, (B, L))
    if not lambda_min <= lambda_max:
        raise ValueError(f"need lambda_min <= lambda_max; got {lambda_min}, {lambda_max}.")
    mask = action_mask.bool() & torch.isfinite(adv)
    ones = torch.ones((B, L), dtype=torch.float32, device=hidden.device)
    a = torch.where(mask, adv.double(), torch.zeros_like(adv, dtype=torch.float64)).reshape(-1)  # [N]
    is_pos, is_neg = a > 0, a < 0
    if not bool(is_pos.any()) or not bool(is_neg.any()):
        return ones, {"delta_skipped": 1.0}
    # v = q·h with q = 1 − p is never materialised: every statistic is a mat-vec with h (N = B·L rows).
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    h = hidden.reshape(B * L, H).to(dt)  # [N, H]
    side = is_pos | is_neg
    q = torch.where(side, 1.0 - token_prob.double().reshape(-1), torch.zeros_like(a))  # [N]
    aa = a.abs()
    sgn = torch.where(is_pos, 1.0, -1.0).to(torch.float64)

    def centroid(wts: Tensor) -> Tensor:  # Σ w v / Σ w over one side (wts is 0 elsewhere)
        return ((wts * q).to(dt) @ h).double() / wts.sum().clamp(min=1e-300)

    mu_p = centroid(torch.where(is_pos, aa, 0.0))
    mu_n = centroid(torch.where(is_neg, aa, 0.0))
    if variance_scaled:
        h2 = h * h

        def side_var(wts: Tensor, mu: Tensor) -> Tensor:
            return ((wts * q * q).to(dt) @ h2).double() / wts.sum() - mu * mu

        D = (
            side_var(torch.where(is_pos, aa, 0.0), mu_p) + side_var(torch.where(is_neg, aa, 0.0), mu_n)
        ).clamp(min=0.0) + 1e-6
    else:
        D = torch.ones(H, dtype=torch.float64, device=h.device)
    vsq = None
    if lambda_w != 1.0:  # Σ_h v_h²/D_h only matters when it does not cancel between d⁺ and d⁻
        vsq = q * q * ((h * h) @ (1.0 / D).to(dt)).double()

    def proj(mu_p: Tensor, mu_n: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        vp = q * (h @ (mu_p / D).to(dt)).double()  # v·μ⁺/D
        vn = q * (h @ (mu_n / D).to(dt)).double()
        return vp, vn, (mu_p * mu_p / D).sum(), (mu_n * mu_n / D).sum()

    def margins(mu_p: Tensor, mu_n: Tensor) -> Tensor:
        vp, vn, mp2, mn2 = proj(mu_p, mu_n)
        # d± = Σv²/D − 2 v·μ±/D + Σμ±²/D
        m_pos = 2 * vp - 2 * lambda_w * vn + lambda_w * mn2 - mp2
        m_neg = 2 * vn - 2 * lambda_w * vp + lambda_w * mp2 - mn2
        m = torch.where(is_pos, m_pos, m_neg)
        if vsq is not None:
            m = m + (lambda_w - 1.0) * vsq
        return torch.where(side, m, torch.zeros_like(m))

    def gammas(m: Tensor) -> Tensor:
        gp = gamma_time * torch.sqrt(torch.clamp(m[is_pos].var(unbiased=False), min=1e-8))
        gn = gamma_time * torch.sqrt(torch.clamp(m[is_neg].var(unbiased=False), min=1e-8))
        return torch.where(is_pos, gp, gn)

    m = margins(mu_p, mu_n)
    gam = gammas(m)
    for k in range(int(n_refine)):
        w = torch.sigmoid(m / gam) * aa
        mu_p = centroid(torch.where(is_pos, w, 0.0))
        mu_n = centroid(torch.where(is_neg, w, 0.0))
        m = margins(mu_p, mu_n)
        if k < int(n_refine) - 1:
            gam = gammas(m)
    flat_mask = mask.reshape(-1)
    c = torch.where(side, lambda_min + (lambda_max - lambda_min) * torch.sigmoid(m / gam), float(lambda_min))
    n_valid = flat_mask.double().sum()
    c_sum = torch.where(flat_mask, c, torch.zeros_like(c)).sum()
    c_tilde = torch.where(flat_mask, c * n_valid / c_sum, torch.ones_like(c)).reshape(B, L)
    # linear discriminator W = (μ⁺ − μ⁻)/D, b = −½ Σ(μ⁺² − μ⁻²)/D; score = sign(A)(W·v + b)
    vp, vn, mp2, mn2 = proj(mu_p, mu_n)
    score = sgn * (vp - vn - 0.5 * (mp2 - mn2))
    diag = {
        "delta_skipped": 0.0,
        "delta_gamma_pos": float(gam[is_pos][0]),
        "delta_gamma_neg": float(gam[is_neg][0]),
        "delta_coef_min": float(c_tilde[mask].min()),
        "delta_coef_max": float(c_tilde[mask].max()),
        "delta_disc_acc": float((score[side] > 0).double().mean()),
    }
    return c_tilde.float(), diag


@dataclass(frozen=True)
class DeltaConfig:
    """DelTA refinement on top of a base credit method (spec §9.3; run_DelTA.sh defaults)."""

    base: str = "grpo"
    """Name of the upstream credit method in ``CREDIT`` whose advantages are reweighted."""
    base_options: Mapping[str, Any] = field(default_factory=dict)
    """Config overrides of the base method."""
    hidden_key: str = "hidden"
    """``GroupBatch.token_features`` key of the ``[B, L, H]`` hidden states."""
    lambda_min: float = 0.8
    """Lowest token coefficient."""
    lambda_max: float = 1.2
    """Highest token coefficient."""
    lambda_w: float = 1.0
    """Weight of the opposite-side distance in the margin."""
    gamma_time: float = 1.0
    """Temperature multiplier γ_time."""
    n_refine: int = 1
    """Centroid refinement passes K."""
    variance_scaled: bool = False
    """Diagonal variance scaling D (the reference code sets D = 1)."""

    def __post_init__(self) -> None:
        if self.base == "delta":
            raise ConfigError(
                "DeltaConfig.base cannot be 'delta'; name the upstream method, e.g. base='grpo'."
            )
        if self.base not in CREDIT:
            raise ConfigError(
                "DeltaConfig.base: " + unknown_name_message("credit method", self.base, CREDIT.names())
            )
        if not self.lambda_min <= self.lambda_max:
            raise ConfigError(f"need lambda_min <= lambda_max; got {self.lambda_min}, {self.lambda_max}.")
        if self.n_refine < 0:
            raise ConfigError(f"n_refine must be >= 0; got {self.n_refine}.")


@register_refiner("delta", DeltaConfig)
def delta_refine(
    out: CreditOutput, batch: GroupBatch, cfg: DeltaConfig, hidden: Tensor | None = None
) -> CreditOutput:
    """Reweight ``out.advantages`` by DelTA coefficients: ``A ← c̃·A`` (a post-processor, spec §2.3).

    Args:
        out: Upstream credit output (any method whose advantage sign is defined per token).
        batch: The batch; needs ``old_logprobs`` and, unless ``hidden`` is given,
            ``token_features[cfg.hidden_key]`` ``[B, L, H]``.
        cfg: DelTA knobs (``base`` / ``base_options`` are ignored here).
        hidden: Optional ``[B, L, H]`` hidden states overriding the batch's.

    Returns:
        A new `CreditOutput`: same fields, reweighted advantages, ``delta_*`` diagnostics added.
    """
    if hidden is None:
        feats = getattr(batch, "token_features", None) or {}
        if cfg.hidden_key not in feats:
            raise CreditError(
                f"DelTA needs the last hidden states in GroupBatch.token_features[{cfg.hidden_key!r}] ([B, L, H]); "
                f"present: {sorted(feats) or '(none)'}. Run the policy forward with a hook on lm_head's input."
            )
        hidden = feats[cfg.hidden_key]
    if batch.old_logprobs is None:
        raise CreditError(
            "DelTA needs batch.old_logprobs (the sampled-token probability under the old policy)."
        )
    coef, diag = delta_coefficients(
        hidden, torch.exp(batch.old_logprobs.float()), out.advantages, batch.action_mask,
        lambda_min=cfg.lambda_min, lambda_max=cfg.lambda_max, lambda_w=cfg.lambda_w, gamma_time=cfg.gamma_time,
        n_refine=cfg.n_refine, variance_scaled=cfg.variance_scaled,
    )  # fmt: skip
    adv = torch.where(
        batch.action_mask, out.advantages * coef.to(out.advantages.dtype), torch.zeros_like(out.advantages)
    )
    d = dict(out.diagnostics)
    d.update(diag)
    return replace(out, advantages=adv, diagnostics=d)


@register_credit("delta", DeltaConfig, token_features=("hidden",))
def delta(batch: GroupBatch, cfg: DeltaConfig) -> CreditOutput:
    """DelTA on top of ``cfg.base`` (default GRPO): run the base method, then `delta_refine` (spec §9.3)."""
    base_out = CREDIT[cfg.base](batch, make_config(cfg.base, **dict(cfg.base_options)))
    return delta_refine(base_out, batch, cfg)
