"""GAE over policy tokens with observation skipping (``gae``) and POAD / BAD (``ppo-bad``), spec ``credit.md``
§3.2 and §9.5.

The math is in pure vectorised tensor functions (`gae_advantages`, `whiten`); the registered methods read a
`GroupBatch` (with critic ``values``) and return a `CreditOutput` with critic ``returns``. The optional KL reward
penalty uses `turngym.credit.kl`.

Shapes: ``B`` rows, ``L`` response tokens, ``K`` turns. Token tensors are ``[B, L]`` on the response axis (policy turns
and observations interleaved); ``action_mask`` marks policy tokens; ``turn_id`` is the turn index on policy tokens
(−1 elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, register_credit
from turngym.credit.groups import turn_rewards_to_token_rewards
from turngym.credit.kl import KL_ESTIMATORS, kl_penalty_rewards
from turngym.credit.token_common import check_shape, last_policy_index, token_output, turn_sum
from turngym.errors import ConfigError, CreditError

__all__ = ["BADConfig", "GAEConfig", "gae_advantages", "whiten"]


def _affine_suffix_scan(a: Tensor, c: Tensor) -> Tensor:
    """Solve ``x_t = a_t + c_t·x_{t+1}`` (``x_L = 0``) along the last axis of ``[B, L]`` tensors.

    Log-depth Hillis-Steele scan: at step ``s`` each affine map is composed with the one ``s`` positions later.
    """
    x, c = a.clone(), c.clone()
    L = x.shape[1]
    s = 1
    while s < L:
        x[:, :-s] += c[:, :-s] * x[:, s:]
        if 2 * s < L:
            c[:, :-s] = c[:, :-s] * c[:, s:]
        s *= 2
    return x


def _gae_columns(
    r: Tensor, v: Tensor, mask: Tensor, turn_id: Tensor | None, boot: Tensor, gamma, lam, gw, lw
):
    """Column-by-column GAE recursion on transposed (contiguous) copies; one fused step per token position."""
    rT, vT, mT = r.t().contiguous(), v.t().contiguous(), mask.t().contiguous()  # [L, B]
    tT = turn_id.t().contiguous() if turn_id is not None else None
    L, B = rT.shape
    out = torch.zeros_like(rT)
    v_next, gae = boot.clone(), torch.zeros_like(boot)
    next_turn = torch.full((B,), -2, dtype=torch.long, device=r.device)  # −2: no later policy token
    for t in range(L - 1, -1, -1):
        m = mT[t]
        if tT is not None:
            sf = (next_turn == tT[t]).to(rT.dtype)
            g = gamma + (gw - gamma) * sf
            gl = g * (lam + (lw - lam) * sf)
            next_turn = torch.where(m, tT[t], next_turn)
        else:
            g, gl = gamma, gamma * lam
        gae = torch.where(m, rT[t] + g * v_next - vT[t] + gl * gae, gae)
        v_next = torch.where(m, vT[t], v_next)
        out[t] = gae
    return out.t()


def gae_advantages(
    rewards: Tensor,
    values: Tensor,
    action_mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    turn_id: Tensor | None = None,
    gamma_within: float | None = None,
    lam_within: float | None = None,
    bootstrap_value: Tensor | None = None,
    scan: Literal["auto", "loop", "parallel"] = "auto",
) -> tuple[Tensor, Tensor]:
    """GAE over policy tokens with observation skipping (spec §3.2), optionally with the BAD discounts (§9.5).

    Equivalent to iterating ``t = L−1 … 0`` with ``V_next``/``gae`` initialised to the bootstrap value / 0::

        δ_t   = r_t + γ_t·V_next − V_t
        gae_t = δ_t + γ_t·λ_t·gae
        if action_mask[t]:  V_next ← V_t ; gae ← gae_t        (observations and padding carry both through)
        A_t = gae ; Ret_t = A_t + V_t

    ``γ_t = γ, λ_t = λ`` everywhere (plain PPO), unless ``gamma_within`` / ``lam_within`` are given: then a policy
    token whose successor policy token is in the **same turn** (``turn_id``) uses ``γ_t = gamma_within`` and
    ``λ_t = lam_within`` (POAD/BAD: ``gamma_within = 1`` — no discount inside an action; ``lam_within = 1`` applies
    λ once per action, ``lam_within = λ`` once per token), while the last token of a turn uses ``γ, λ``.
    Vectorised over rows; see ``scan`` for the two ways the recursion over positions is run.

    Args:
        rewards: Token rewards ``[B, L]`` (only policy positions are read).
        values: Critic values ``[B, L]`` (only policy positions are read).
        action_mask: Policy-token mask ``[B, L]``.
        gamma: Discount (applied across turns for BAD).
        lam: GAE λ.
        turn_id: ``[B, L]`` turn index of policy tokens; needed with ``gamma_within`` / ``lam_within``.
        gamma_within: Discount between two tokens of the same turn (None = ``gamma``).
        lam_within: λ between two tokens of the same turn (None = ``lam``).
        bootstrap_value: ``[B]`` value of the state after the last token (0 = terminal, verl); for rows truncated
            by a budget pass an estimate.
        scan: How the recurrence is solved: ``"parallel"`` (next-policy-token gather + log-depth affine scan, few
            kernel launches: best on GPU), ``"loop"`` (one vectorised step per token position on a transposed
            copy: best on CPU) or ``"auto"`` (parallel on CUDA, loop otherwise). Both give the same numbers.

    Returns:
        ``(advantages [B, L], returns [B, L])``, both 0 off the policy tokens.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, L]; got shape {tuple(rewards.shape)}.")
    B, L = rewards.shape
    check_shape("values", values, (B, L))
    check_shape("action_mask", action_mask, (B, L))
    check_shape("turn_id", turn_id, (B, L))
    check_shape("bootstrap_value", bootstrap_value, (B,))
    within = gamma_within is not None or lam_within is not None
    if within and turn_id is None:
        raise ValueError("gamma_within / lam_within need turn_id [B, L] to know where turns end.")
    gw = gamma if gamma_within is None else gamma_within
    lw = lam if lam_within is None else lam_within
    mask = action_mask.bool()
    dt = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    dev = rewards.device
    r = torch.where(mask, rewards.to(dt), 0.0)
    v = torch.where(mask, values.to(dt), 0.0)
    boot = torch.zeros(B, dtype=dt, device=dev) if bootstrap_value is None else bootstrap_value.to(dt)
    if scan not in ("auto", "loop", "parallel"):
        raise ValueError(f"scan must be 'auto', 'loop' or 'parallel'; got {scan!r}.")
    if scan == "loop" or (scan == "auto" and not rewards.is_cuda):
        adv = _gae_columns(r, v, mask, turn_id if within else None, boot, gamma, lam, gw, lw)
    else:
        # next policy position after t (L if none): reverse running min of the policy positions
        pos = torch.arange(L, device=dev).expand(B, L)
        pol = torch.where(mask, pos, torch.full_like(pos, L))
        after = torch.cat([pol[:, 1:], torch.full_like(pol[:, :1], L)], dim=1)
        nxt = torch.flip(torch.cummin(torch.flip(after, [1]), dim=1).values, [1])  # [B, L]
        has_next = nxt < L
        v_next = torch.where(has_next, torch.gather(v, 1, nxt.clamp(max=L - 1)), boot[:, None])
        if within:
            same = has_next & (torch.gather(turn_id, 1, nxt.clamp(max=L - 1)) == turn_id)
            sf = same.to(dt)
            g = gamma + (gw - gamma) * sf  # gamma_within inside a turn, gamma when crossing into the next one
            c = torch.where(mask, g * (lam + (lw - lam) * sf), 1.0)
        else:
            g = gamma
            c = torch.where(mask, torch.full_like(r, gamma * lam), torch.ones_like(r))
        # A_t = δ_t + c_t·A_{next policy token}: an affine recurrence; observation/padding positions are identity
        # maps (δ = 0, c = 1), so the recursion carries through them.
        adv = _affine_suffix_scan(torch.where(mask, r + g * v_next - v, 0.0), c)
    adv = torch.where(mask, adv, 0.0)
    ret = torch.where(mask, adv + v, 0.0)
    return adv, ret


def whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten ``x`` over the masked entries: ``(x − mean)/sqrt(var_u + eps)`` (verl ``masked_whiten``).

    Unlike verl, one or zero masked entries do not raise: the result is ``x − mean`` (0) there. Off-mask entries are
    returned as 0.

    Args:
        x: ``[...]`` values.
        mask: Same shape, bool.
        shift_mean: If False, add the mean back after scaling (verl option).
        eps: Added to the unbiased variance.
    """
    check_shape("mask", mask, tuple(x.shape))
    m = mask.bool()
    xd = x.double()
    n = int(m.sum())
    if n == 0:
        return torch.zeros_like(x)
    mean = xd[m].mean()
    var = xd[m].var(unbiased=True) if n > 1 else torch.zeros((), dtype=torch.float64)
    out = (xd - mean) * torch.rsqrt(var + eps)
    if n <= 1:
        out = xd - mean
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros_like(out)).to(x.dtype)


@dataclass(frozen=True)
class GAEConfig:
    """PPO with GAE over policy tokens (spec §3.2; verl defaults)."""

    gamma: float = 1.0
    """Discount per policy token (verl 1.0)."""
    lam: float = 1.0
    """GAE λ (verl 1.0)."""
    whiten_advantages: bool = True
    """Whiten advantages over all policy tokens of the batch (returns are not re-centred)."""
    use_outcome: bool = True
    """Place ``outcome`` (NaN → 0) on the last policy token of each row."""
    use_env_rewards: bool = False
    """Add the env step rewards (``Turn.reward``) on each turn's last token (off: most envs repeat the outcome)."""
    turn_reward_signals: tuple[str, ...] = ()
    """Names of ``turn_signals`` (IG, MatchTIR, PRM, judge ...) added on each turn's last token (NaN → 0)."""
    kl_coef: float = 0.0
    """β of the KL reward penalty ``r_t −= β·k(old, ref)`` on every policy token (needs ref_logprobs)."""
    kl_type: str = "k1"
    """KL estimator of the reward penalty, a `turngym.credit.kl.KL_ESTIMATORS` name (k1, k2, k3, ...)."""
    bootstrap_truncated: bool = False
    """Bootstrap truncated rows with the value of their last policy token instead of 0 (False = verl parity)."""
    truncated_reasons: tuple[str, ...] = ("max_tokens", "truncated", "max_turns")
    """``Trajectory.stop_reason`` values that count as truncated for ``bootstrap_truncated``."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ConfigError(f"gamma and lam must be in [0, 1]; got gamma={self.gamma}, lam={self.lam}.")
        if self.kl_coef < 0:
            raise ConfigError(f"kl_coef must be >= 0; got {self.kl_coef}.")


@dataclass(frozen=True)
class BADConfig(GAEConfig):
    """POAD / BAD: GAE with no discount inside an action and γ applied once when crossing into the next turn."""

    gamma_token: float = 1.0
    """Discount between two tokens of the same turn (BAD: 1)."""
    lam_per: Literal["token", "turn"] = "token"
    """Apply λ at every policy token ("token") or only when crossing turns ("turn"); unverified in the paper."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lam_per not in ("token", "turn"):
            raise ConfigError(f"lam_per must be 'token' or 'turn'; got {self.lam_per!r}.")


def _token_rewards(batch: GroupBatch, cfg: GAEConfig, method: str) -> tuple[Tensor, Tensor]:
    """Token rewards ``[B, L]`` and per-turn rewards ``[B, K]`` from the batch, per ``cfg``."""
    B, L = batch.response_ids.shape
    K = batch.max_turns
    mask = batch.action_mask
    turn_r = torch.zeros((B, K), dtype=torch.float32, device=batch.response_ids.device)
    if cfg.use_env_rewards:
        turn_r = turn_r + torch.nan_to_num(batch.turn_rewards.float(), nan=0.0)
    for name in cfg.turn_reward_signals:
        turn_r = turn_r + torch.nan_to_num(batch.signal(name, needed_by=method).float(), nan=0.0)
    turn_r = torch.where(batch.turn_mask, turn_r, torch.zeros_like(turn_r))
    tok = turn_rewards_to_token_rewards(turn_r, batch.turn_last, L)
    last = last_policy_index(mask)
    if cfg.use_outcome:
        out = torch.nan_to_num(batch.outcome.float(), nan=0.0)
        has = last >= 0
        tok = tok.scatter_add(
            1, last.clamp(min=0)[:, None], torch.where(has, out, torch.zeros_like(out))[:, None]
        )
        k_last = batch.last_turn_index.clamp(min=0)
        turn_r = turn_r.scatter_add(1, k_last[:, None], torch.where(has, out, torch.zeros_like(out))[:, None])
    if cfg.kl_coef > 0:
        if batch.old_logprobs is None or batch.ref_logprobs is None:
            raise CreditError(
                f"{method}: kl_coef={cfg.kl_coef} needs batch.old_logprobs and batch.ref_logprobs; fill them or "
                "set kl_coef=0 (and use the KL loss term instead)."
            )
        if cfg.kl_type not in KL_ESTIMATORS:
            raise CreditError(f"{method}: kl_type must be one of {KL_ESTIMATORS.names()}; got {cfg.kl_type!r}.")
        tok, kl = kl_penalty_rewards(tok, batch.old_logprobs, batch.ref_logprobs, mask, kl_coef=cfg.kl_coef,
                                     kl_type=cfg.kl_type)
        turn_r = turn_r - cfg.kl_coef * turn_sum(kl, batch.turn_id, K)
    return tok, turn_r


def _gae_method(batch: GroupBatch, cfg: GAEConfig, method: str, **gae_kw: Any) -> CreditOutput:
    if batch.values is None:
        raise CreditError(
            f"{method} needs critic values: set GroupBatch.values [B, L] before assigning credit."
        )
    tok, turn_r = _token_rewards(batch, cfg, method)
    mask = batch.action_mask
    boot = None
    n_boot = 0
    if cfg.bootstrap_truncated:
        reasons = set(cfg.truncated_reasons)
        trunc = torch.tensor(
            [t.stop_reason in reasons for t in batch.trajectories] or [False] * batch.batch_size,
            device=mask.device,
        )
        if trunc.numel() != batch.batch_size:
            raise CreditError(f"{method}: bootstrap_truncated needs batch.trajectories (one per row).")
        last = last_policy_index(mask)
        v_last = torch.gather(batch.values.float(), 1, last.clamp(min=0)[:, None]).squeeze(1)
        boot = torch.where(trunc & (last >= 0), v_last, torch.zeros_like(v_last))
        n_boot = int((trunc & (last >= 0)).sum())
    adv, ret = gae_advantages(tok, batch.values, mask, bootstrap_value=boot, **gae_kw)
    raw_mean = float(adv[mask].mean()) if bool(mask.any()) else 0.0
    if cfg.whiten_advantages:
        adv = whiten(adv, mask)
    extra = {
        "gae_raw_adv_mean": raw_mean,
        "gae_returns_mean": float(ret[mask].mean()) if bool(mask.any()) else 0.0,
        "gae_bootstrapped_rows": float(n_boot),
    }
    return token_output(batch, adv, turn_rewards=turn_r, returns=ret, extra=extra)


@register_credit("gae", GAEConfig)
def gae(batch: GroupBatch, cfg: GAEConfig) -> CreditOutput:
    """PPO-GAE over policy tokens, observations skipped, whitened (spec §3.2). Needs ``batch.values``.

    Diagnostics: the standard ones plus ``gae_raw_adv_mean``, ``gae_returns_mean``, ``gae_bootstrapped_rows``.
    ``turn_advantages`` holds the advantage at each turn's first policy token.
    """
    return _gae_method(batch, cfg, "gae", gamma=cfg.gamma, lam=cfg.lam)


@register_credit("ppo-bad", BADConfig)
def ppo_bad(batch: GroupBatch, cfg: BADConfig) -> CreditOutput:
    """POAD / BAD: GAE with ``gamma_token`` inside a turn and ``gamma`` across turns (spec §9.5)."""
    return _gae_method(
        batch,
        cfg,
        "ppo-bad",
        gamma=cfg.gamma,
        lam=cfg.lam,
        turn_id=batch.turn_id,
        gamma_within=cfg.gamma_token,
        lam_within=cfg.lam if cfg.lam_per == "token" else 1.0,
    )
