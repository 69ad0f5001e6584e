"""KL estimators between the current (or behaviour) policy and a reference policy: the project's one implementation.

Used as a loss term (`turngym.trainers.losses.policy_loss`, which re-exports `KL_ESTIMATORS` and `kl_penalty`) and as
a reward penalty (`kl_penalty_rewards`; the GAE / BAD credit methods' ``kl_coef``). Spec ``credit.md`` §3.1.

With ``Δ = logp − ref_logp`` per token: ``k1 = Δ``, ``k2 = ½Δ²``, ``k3 = exp(−Δ) + Δ − 1`` clamped to
[−10, 10] (verl's ``low_var_kl``); the ``+`` variants give the k1 / k3 value with the k2 gradient (straight-through).
Token tensors are ``[B, L]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from turngym.registry import Registry

__all__ = ["KL_ESTIMATORS", "kl_penalty", "kl_penalty_rewards"]

#: KL estimators (spec §3.1), ``fn(logp[B, L], ref_logp[B, L]) -> [B, L]`` with ``Δ = logp - ref_logp``.
KL_ESTIMATORS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("KL estimator")

_K3_CLAMP = 10.0


def check_same_shape(ref_name: str, ref: Tensor, **others: Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and tuple(t.shape) != tuple(ref.shape):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {ref_name} has shape {tuple(ref.shape)}; "
                f"all token tensors must be [B, L] and aligned."
            )


def _k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return logp - ref_logp


def _k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return 0.5 * (logp - ref_logp).square()


def _k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    d = logp - ref_logp
    return torch.clamp(torch.exp(-d) + d - 1.0, min=-_K3_CLAMP, max=_K3_CLAMP)


def _straight_through(value_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def fn(logp: Tensor, ref_logp: Tensor) -> Tensor:
        k2 = _k2(logp, ref_logp)
        return k2 - k2.detach() + value_fn(logp, ref_logp).detach()

    return fn


for _name, _fn in {
    "k1": _k1,
    "kl": _k1,
    "k2": _k2,
    "mse": _k2,
    "k3": _k3,
    "low_var_kl": _k3,
    "k1+": _straight_through(_k1),
    "k3+": _straight_through(_k3),
    "low_var_kl+": _straight_through(_k3),
}.items():
    KL_ESTIMATORS.add(_name, _fn)


def kl_penalty(logp: Tensor, ref_logp: Tensor, kl_type: str = "k3") -> Tensor:
    """Per-token KL estimate between the current and the reference policy.

    With ``Δ = logp − ref_logp``: ``k1 = Δ``, ``k2 = ½Δ²``, ``k3 = exp(−Δ) + Δ − 1`` clamped to [−10, 10] (verl's
    ``low_var_kl``). The ``+`` variants (``k1+``, ``k3+``) return the k1/k3 value with the k2 gradient
    (straight-through: ``k2 − sg(k2) + sg(k)``).

    Args:
        logp: Current log-probs ``[B, L]``.
        ref_logp: Reference-policy log-probs ``[B, L]``.
        kl_type: A ``KL_ESTIMATORS`` name.

    Returns:
        ``[B, L]`` per-token estimates (unmasked).
    """
    check_same_shape("logp", logp, ref_logp=ref_logp)
    return KL_ESTIMATORS[kl_type](logp, ref_logp)


@torch.no_grad()
def kl_penalty_rewards(
    token_rewards: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    action_mask: Tensor,
    *,
    kl_coef: float,
    kl_type: str = "k1",
) -> tuple[Tensor, Tensor]:
    """KL as a reward penalty (PPO style, ``use_kl_in_reward``): ``r_t ← r_t − β·k_t`` on every policy token.

    Args:
        token_rewards: ``[B, L]`` token rewards.
        logp: Behaviour/current log-probs ``[B, L]`` (usually the rollout's old log-probs).
        ref_logp: Reference log-probs ``[B, L]``.
        action_mask: Policy-token mask ``[B, L]``.
        kl_coef: β ≥ 0.
        kl_type: A ``KL_ESTIMATORS`` name (``k1`` in verl).

    Returns:
        ``(rewards [B, L], kl [B, L])``; both are 0 off the policy tokens' KL (rewards keep their other entries).
    """
    if token_rewards.dim() != 2:
        raise ValueError(f"token_rewards must be [B, L] (2-D); got shape {tuple(token_rewards.shape)}.")
    check_same_shape("token_rewards", token_rewards, logp=logp, ref_logp=ref_logp, action_mask=action_mask)
    mask = action_mask if action_mask.dtype == torch.bool else action_mask != 0
    kl = torch.where(mask, kl_penalty(logp.float(), ref_logp.float(), kl_type), 0.0)
    return token_rewards - kl_coef * kl, kl
