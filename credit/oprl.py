"""OPRL / iStar (wave-2 spec §2): implicit-PRM step rewards fused with the outcome advantage.

A second language model π_φ (the implicit PRM, trained online with a trajectory DPO loss by the trainer-owned
component ``implicit_prm``, `turngym.trainers.implicit_prm`) scores every sampled token. Per turn ``k`` of row ``i``
(arXiv 2509.19199, Eq. 1; release ``istar/core_istar.py``)::

    q_{i,k} = Σ_{t ∈ turn(i,k)} (ℓ^φ_{i,t} − ℓ^old_{i,t})          (policy tokens only)
    r_{i,k} = β q_{i,k}                       [÷ (max_batch |r| + 1e-6) with reward_scale="batch_max_abs"]
    A^E_i   = GRPO (R_i − mean_g R)/(std_u,g R + 1e-6)  |  RLOO R_i − mean_{j≠i} R_j          (Eq. 3)
    A^S_{i,k} over the pool P_g of the prompt group:                                           (Eq. 4)
        GRPO: (r_{i,k} − mean P_g)/(std_u P_g + 1e-6);  RLOO: (|P_g| r_{i,k} − Σ P_g)/(|P_g| − 1)
    A_{i,k} = A^E_i + α A^S_{i,k}, broadcast to turn k's policy tokens                          (Eq. 5)

``step_pool="all_steps"`` (paper) pools every valid turn of the group; ``"first_turn"`` (release parity) pools
``{r_{j,0}}`` only and applies those statistics to every turn. Shapes: ``[B, L]`` token tensors, ``[B, K]`` turn
tensors, ``[B]`` per row.

Framework choices [R]: a group with a single trajectory (or a pool with fewer than two steps) is a *singleton*
(``step_singleton``: "zero" → A^S = 0, "raw" → mean 0, std 1, i.e. A^S = r); with ``estimator="grpo"``, a pool whose
members are all equal gives A^S = 0 for every turn of the group (exact zeros; with "first_turn" this also covers the
later turns, which would otherwise be divided by 1e-6). Observation tokens never enter ``q``. Missing PRM log-probs
or behaviour log-probs raise `CreditError` naming the ImplicitPRM component (never zero step rewards).

Diagnostics: ``oprl_step_reward_mean`` / ``oprl_step_reward_absmax`` (r over valid turns, after scaling),
``oprl_logratio_absmax`` (max |q|), ``oprl_step_adv_std`` / ``oprl_episode_adv_std`` (over valid turns / rows),
``oprl_reward_scale`` (the batch_max_abs divisor, 1 without), and the ``episode_*`` / ``step_*`` group counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.groups import GroupNormStats
from turngym.credit.outcome import GRPOConfig, grpo_advantages, rloo_advantages
from turngym.errors import ConfigError, CreditError

__all__ = ["OPRLConfig", "oprl", "oprl_episode_advantages", "oprl_step_advantages", "oprl_step_rewards"]

COMPONENT = "ImplicitPRM (learned component 'implicit_prm', turngym.trainers.implicit_prm)"


@dataclass(frozen=True)
class OPRLConfig:
    """OPRL / iStar credit (spec §2.4). Defaults = the paper; release parity: ``estimator="rloo",
    step_pool="first_turn", reward_scale="batch_max_abs"`` (with ``signals.traj_score=mean`` for the PRM)."""

    beta: float = 0.05
    """Implicit-reward temperature β: r = β · Σ_turn log π_φ/π_old."""
    alpha: float = 1.0
    """Weight α of the step advantage in A = A^E + α A^S."""
    estimator: Literal["grpo", "rloo"] = "grpo"
    """Group baseline of both advantages: "grpo" (paper's worked form) or "rloo" (WebShop/Sokoban release)."""
    episode_scale: bool = True
    """grpo: divide A^E by std_u + 1e-6 (False = the release's mean_norm)."""
    step_scale: bool = True
    """grpo: divide A^S by the pool's std_u + 1e-6."""
    step_pool: Literal["all_steps", "first_turn"] = "all_steps"
    """Step statistics over every turn of the group (paper) or over each trajectory's first turn (release)."""
    reward_scale: Literal["none", "batch_max_abs"] = "none"
    """"batch_max_abs": r ← r / (max_batch |r| + 1e-6) (release istar_norm=batch_norm)."""
    ratio_level: Literal["token", "turn"] = "token"
    """Importance ratio of the policy loss: token (release) or the turn's geometric mean (≈ paper's step ratio)."""
    episode_singleton: Literal["raw", "zero"] = "raw"
    """A lone trajectory's A^E: "raw" (release: mean 0, std 1) or 0."""
    step_singleton: Literal["raw", "zero"] = "zero"
    """A lone trajectory's A^S: 0 (framework choice: no relative signal) or "raw" (mean 0, std 1: A^S = r)."""
    prm_logprob_key: str = "prm_logprobs"
    """``GroupBatch.token_features`` key of the PRM's per-token log-probs ``[B, L]``."""

    def __post_init__(self):
        choices = {"estimator": ("grpo", "rloo"), "step_pool": ("all_steps", "first_turn"),
                   "reward_scale": ("none", "batch_max_abs"), "ratio_level": ("token", "turn"),
                   "episode_singleton": ("raw", "zero"), "step_singleton": ("raw", "zero")}
        for name, ok in choices.items():
            if getattr(self, name) not in ok:
                raise ConfigError(f"OPRLConfig.{name}={getattr(self, name)!r}; choose one of {list(ok)} "
                                  f"(credit.{name}={ok[0]}).")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"OPRLConfig.beta={self.beta} must be finite and > 0 (paper: credit.beta=0.05).")
        if not math.isfinite(self.alpha):
            raise ConfigError(f"OPRLConfig.alpha={self.alpha} must be finite (paper: credit.alpha=1.0).")


def oprl_step_rewards(batch: GroupBatch, prm_logprobs: Tensor, old_logprobs: Tensor, beta: float,
                      reward_scale: str = "none") -> tuple[Tensor, Tensor, float]:
    """``q[B, K]`` summed per-turn log-ratios over policy tokens and ``r = β q`` (optionally batch-max scaled).

    Returns:
        ``(q, r, divisor)`` in float64, 0 on invalid turns; ``divisor`` is the batch_max_abs scale (1.0 without).
    """
    shape = tuple(batch.response_ids.shape)
    for name, t in (("prm_logprobs", prm_logprobs), ("old_logprobs", old_logprobs)):
        if tuple(t.shape) != shape:
            raise CreditError(f"oprl: {name} has shape {tuple(t.shape)}, expected [B, L] = {shape} (written by "
                              f"{COMPONENT}).")
    b, k = batch.turn_mask.shape
    d = prm_logprobs.double() - old_logprobs.double()  # [B, L]
    d = torch.where(batch.action_mask, d, torch.zeros_like(d))  # observations and padding never contribute
    idx = torch.where(batch.turn_id >= 0, batch.turn_id, torch.full_like(batch.turn_id, k)).long()
    q = torch.zeros(b, k + 1, dtype=torch.float64, device=d.device).scatter_add_(1, idx, d)[:, :k]  # [B, K]
    q = torch.where(batch.turn_mask, q, torch.zeros_like(q))
    r = beta * q
    div = 1.0
    if reward_scale == "batch_max_abs" and bool(batch.turn_mask.any()):
        div = float(r[batch.turn_mask].abs().max()) + 1e-6
        r = r / div
    return q, r, div


def oprl_episode_advantages(outcome: Tensor, group_index: Tensor, cfg: OPRLConfig) -> tuple[Tensor, GroupNormStats]:
    """``A^E[B]`` (float32): GRPO (same numbers as credit ``grpo`` with its defaults) or RLOO (as credit ``rloo``)."""
    if cfg.estimator == "grpo":
        return grpo_advantages(outcome, group_index, GRPOConfig(norm_adv_by_std=cfg.episode_scale,
                                                                singleton=cfg.episode_singleton))
    adv = rloo_advantages(outcome, group_index, singleton=cfg.episode_singleton)
    ok = torch.isfinite(outcome)
    cnt = torch.zeros(int(group_index.max()) + 1 if group_index.numel() else 0, dtype=torch.long,
                      device=outcome.device).scatter_add_(0, group_index.long(), ok.long())
    return adv, GroupNormStats(int((cnt > 0).sum()), int((cnt == 1).sum()), 0)


def oprl_step_advantages(r: Tensor, turn_mask: Tensor, group_index: Tensor, cfg: OPRLConfig,
                         ) -> tuple[Tensor, GroupNormStats]:
    """``A^S[B, K]`` (float64, 0 on invalid turns) from step rewards ``r[B, K]`` and the group's step pool.

    Pool ``P_g``: every valid turn of the group (``all_steps``) or each row's turn 0 (``first_turn``). GRPO:
    ``(r − mean P)/(std_u P + 1e-6)`` (no division with ``step_scale=False``); RLOO: ``(n r − ΣP)/(n − 1)`` with
    ``n = |P|``. A group with one trajectory, or fewer than two pool members, follows ``step_singleton``.
    """
    if r.dim() != 2 or turn_mask.shape != r.shape or group_index.shape != r.shape[:1]:
        raise ValueError(f"oprl_step_advantages expects r[B,K], turn_mask[B,K], group_index[B]; got "
                         f"{tuple(r.shape)}, {tuple(turn_mask.shape)}, {tuple(group_index.shape)}.")
    b, k = r.shape
    m = turn_mask.bool()
    if b == 0 or k == 0:
        return torch.zeros_like(r, dtype=torch.float64), GroupNormStats(0, 0, 0)
    rd = torch.where(m, r.double(), torch.zeros_like(r, dtype=torch.float64))
    pool = m.clone()
    if cfg.step_pool == "first_turn":
        pool[:, 1:] = False
    g = group_index.long()
    n_g = int(g.max()) + 1
    gk = g[:, None].expand(b, k).reshape(-1)
    pf, rf = pool.reshape(-1), rd.reshape(-1)
    zeros = lambda: torch.zeros(n_g, dtype=torch.float64, device=r.device)
    cnt = zeros().scatter_add_(0, gk, pf.double())
    tot = zeros().scatter_add_(0, gk, torch.where(pf, rf, torch.zeros_like(rf)))
    inf = torch.full_like(rf, float("inf"))
    gmin = torch.full((n_g,), float("inf"), dtype=torch.float64, device=r.device).scatter_reduce_(
        0, gk, torch.where(pf, rf, inf), "amin")
    gmax = torch.full((n_g,), -float("inf"), dtype=torch.float64, device=r.device).scatter_reduce_(
        0, gk, torch.where(pf, rf, -inf), "amax")
    rows = zeros().scatter_add_(0, g, m.any(1).double())  # trajectories with at least one turn
    zero_var = (cnt >= 2) & (gmin == gmax)
    single = (cnt < 2) | (rows < 2)
    mean = torch.where(zero_var, gmin, tot / cnt.clamp(min=1.0))  # exact mean for all-equal pools
    take = lambda t: t.index_select(0, g)[:, None]  # [B, 1]
    centred = rd - take(mean)
    if cfg.estimator == "rloo":
        n = take(cnt)
        adv = centred * n / (n - 1).clamp(min=1.0)  # (n r − ΣP)/(n − 1)
        raw = rd
    else:
        dev = torch.where(pf, rf - mean.index_select(0, gk), torch.zeros_like(rf))
        var = zeros().scatter_add_(0, gk, dev * dev) / (cnt - 1).clamp(min=1.0)
        std = var.sqrt()
        adv = centred / (take(std) + 1e-6) if cfg.step_scale else centred
        adv = torch.where(take(zero_var), torch.zeros_like(adv), adv)
        raw = rd / (1.0 + 1e-6) if cfg.step_scale else rd
    lone = take(single)
    adv = torch.where(lone, raw if cfg.step_singleton == "raw" else torch.zeros_like(adv), adv)
    adv = torch.where(m, adv, torch.zeros_like(adv))
    stats = GroupNormStats(n_groups=int((cnt > 0).sum()), n_singleton=int((single & (cnt > 0)).sum()),
                           n_zero_var=int((zero_var & ~single).sum()))
    return adv, stats


def _logprobs(batch: GroupBatch, key: str) -> tuple[Tensor, Tensor]:
    if key not in batch.token_features:
        raise CreditError(
            f"oprl needs batch.token_features[{key!r}] (per-token log-probs of the implicit PRM), written by the "
            f"{COMPONENT} before credit; present: {sorted(batch.token_features) or '(none)'}. Train with "
            "`turngym train oprl` (the trainer builds the component), or fill it by hand in tests."
        )
    if batch.old_logprobs is None:
        raise CreditError(
            f"oprl needs batch.old_logprobs (the behaviour log-probs the {COMPONENT} compares its own with); the "
            "batch has none. The trainer fills them before credit (rescore_old=true recomputes them)."
        )
    return batch.token_features[key], batch.old_logprobs


@register_credit("oprl", OPRLConfig, learned=("implicit_prm",))
def oprl(batch: GroupBatch, cfg: OPRLConfig) -> CreditOutput:
    """OPRL / iStar: ``A_{i,k} = A^E_i + α A^S_{i,k}`` from implicit-PRM step rewards (spec §2.2).

    Reads ``batch.token_features[cfg.prm_logprob_key]`` ``[B, L]`` and ``batch.old_logprobs`` ``[B, L]`` (both
    log-probs of ``softmax(logits / T)`` at the rollout temperature). ``turn_rewards`` of the output are the step
    rewards ``r`` (after scaling); the ratio level is ``cfg.ratio_level``.
    """
    lp_phi, lp_old = _logprobs(batch, cfg.prm_logprob_key)
    q, r, div = oprl_step_rewards(batch, lp_phi, lp_old, cfg.beta, cfg.reward_scale)  # [B, K]
    a_e, st_e = oprl_episode_advantages(batch.outcome, batch.group_index, cfg)  # [B]
    a_s, st_s = oprl_step_advantages(r, batch.turn_mask, batch.group_index, cfg)  # [B, K]
    turn_adv = a_e[:, None].double() + cfg.alpha * a_s  # [B, K]
    m = batch.turn_mask
    rv, av = r[m], a_s[m]
    extra = {
        "oprl_step_reward_mean": float(rv.mean()) if rv.numel() else 0.0,
        "oprl_step_reward_absmax": float(rv.abs().max()) if rv.numel() else 0.0,
        "oprl_logratio_absmax": float(q[m].abs().max()) if rv.numel() else 0.0,
        "oprl_step_adv_std": float(av.std()) if av.numel() > 1 else 0.0,
        "oprl_episode_adv_std": float(a_e.double().std()) if a_e.numel() > 1 else 0.0,
        "oprl_reward_scale": div,
    }
    return finish(batch, turn_adv.float(), r, ratio_level=cfg.ratio_level,
                  stats={"episode": st_e, "step": st_s}, extra=extra)
