"""Token-level credit: GAE / POAD-BAD, TEMPO prefix-tree TD, PURE min-form PRM credit, DelTA coefficients.

Spec ``credit.md`` §3.2, §9.1, §9.2, §9.3, §9.5. The math is in pure vectorised tensor functions (``gae_advantages``,
``whiten``, ``prefix_tree_values``, ``tempo_deltas``, ``pure_step_rewards``, ``pure_advantages``,
``delta_coefficients``); the registered credit methods (``gae``, ``ppo-bad``, ``tempo``, ``pure``, ``delta``) read a
`GroupBatch` and return a `CreditOutput`. DelTA is a *refiner*: ``delta_refine`` reweights the advantages of any
upstream `CreditOutput`, and the ``delta`` method runs a base method by name and refines it.

Shapes: ``B`` rows, ``L`` response tokens, ``K`` turns, ``H`` hidden size. Token tensors are ``[B, L]`` on the response
axis (policy turns and observations interleaved); ``action_mask`` marks policy tokens; ``turn_id`` is the turn index
on policy tokens (−1 elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor
from turngym.credit.base import (
    CREDIT,
    CreditOutput,
    GroupBatch,
    make_config,
    register_credit,
    standard_diagnostics,
)
from turngym.credit.groups import turn_rewards_to_token_rewards
from turngym.credit.outcome import GRPOConfig, grpo_advantages

from turngym.errors import ConfigError, CreditError
from turngym.registry import Registry, unknown_name_message

__all__ = [
    "REFINERS",
    "BADConfig",
    "DeltaConfig",
    "GAEConfig",
    "PUREConfig",
    "TEMPOConfig",
    "delta_coefficients",
    "delta_refine",
    "gae_advantages",
    "prefix_tree_values",
    "pure_advantages",
    "pure_step_rewards",
    "refine",
    "tempo_deltas",
    "whiten",
]


# ============================================================================================================ helpers


def _check(name: str, t: Tensor | None, shape: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}.")


def _last_policy_index(action_mask: Tensor) -> Tensor:
    """``[B]`` index of the last policy token of each row (−1 if none)."""
    B, L = action_mask.shape
    if L == 0:
        return torch.full((B,), -1, dtype=torch.long, device=action_mask.device)
    pos = torch.arange(L, device=action_mask.device).expand(B, L)
    return torch.where(action_mask.bool(), pos, torch.full_like(pos, -1)).max(dim=1).values


def _turn_first_index(turn_id: Tensor, k_max: int) -> Tensor:
    """``[B, K]`` index of the first policy token of each turn (−1 if the turn has none)."""
    B, L = turn_id.shape
    on = turn_id >= 0
    pos = torch.arange(L, device=turn_id.device).expand(B, L)
    idx = torch.where(on, turn_id, torch.full_like(turn_id, k_max)).long()
    tmp = torch.full((B, k_max + 1), L, dtype=torch.long, device=turn_id.device)
    tmp.scatter_reduce_(1, idx, torch.where(on, pos, torch.full_like(pos, L)), "amin")
    out = tmp[:, :k_max]
    return torch.where(out >= L, torch.full_like(out, -1), out)


def _gather_turn_first(adv: Tensor, turn_id: Tensor, turn_mask: Tensor) -> Tensor:
    """Token values at the first policy token of each turn, ``[B, K]``; NaN where invalid."""
    first = _turn_first_index(turn_id, turn_mask.shape[1])
    vals = torch.gather(adv, 1, first.clamp(min=0))
    return torch.where(turn_mask & (first >= 0), vals, torch.full_like(vals, float("nan")))


def _turn_sum(x: Tensor, turn_id: Tensor, k_max: int) -> Tensor:
    """Sum of token values per turn, ``[B, K]``."""
    B, _ = x.shape
    on = turn_id >= 0
    idx = torch.where(on, turn_id, torch.full_like(turn_id, k_max)).long()
    out = torch.zeros((B, k_max + 1), dtype=x.dtype, device=x.device)
    out.scatter_add_(1, idx, torch.where(on, x, torch.zeros_like(x)))
    return out[:, :k_max]


def _output(
    batch: GroupBatch,
    adv: Tensor,
    *,
    turn_rewards: Tensor,
    returns: Tensor | None = None,
    extra: Mapping[str, float] | None = None,
) -> CreditOutput:
    mask = batch.action_mask
    adv = torch.where(mask, adv.float(), torch.zeros_like(adv, dtype=torch.float32))
    nan = torch.full_like(turn_rewards, float("nan"), dtype=torch.float32)
    diag = standard_diagnostics(batch, adv)
    diag.update({k: (float(v) if math.isfinite(float(v)) else 0.0) for k, v in (extra or {}).items()})
    return CreditOutput(
        advantages=adv,
        turn_advantages=_gather_turn_first(adv, batch.turn_id, batch.turn_mask),
        turn_rewards=torch.where(batch.turn_mask, turn_rewards.float(), nan),
        ratio_level="token",
        returns=None if returns is None else torch.where(mask, returns.float(), torch.zeros_like(adv)),
        clip_scale=None,
        diagnostics=diag,
    )


# ===================================================================================================== GAE, POAD/BAD


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
    _check("values", values, (B, L))
    _check("action_mask", action_mask, (B, L))
    _check("turn_id", turn_id, (B, L))
    _check("bootstrap_value", bootstrap_value, (B,))
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
    _check("mask", mask, tuple(x.shape))
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
    """KL estimator of the reward penalty (``turngym.trainers.losses.KL_ESTIMATORS`` names k1, k2, k3)."""
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


_KL = {  # minimal estimators for the reward penalty (the trainer's loss uses turngym.trainers.losses)
    "k1": lambda d: d,
    "k2": lambda d: 0.5 * d * d,
    "k3": lambda d: torch.clamp(torch.exp(-d) + d - 1.0, -10.0, 10.0),
}


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
    last = _last_policy_index(mask)
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
        if cfg.kl_type not in _KL:
            raise CreditError(f"{method}: kl_type must be one of {sorted(_KL)}; got {cfg.kl_type!r}.")
        kl = _KL[cfg.kl_type](batch.old_logprobs.float() - batch.ref_logprobs.float())
        kl = torch.where(mask, kl, torch.zeros_like(kl))
        tok = tok - cfg.kl_coef * kl
        turn_r = turn_r - cfg.kl_coef * _turn_sum(kl, batch.turn_id, K)
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
        last = _last_policy_index(mask)
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
    return _output(batch, adv, turn_rewards=turn_r, returns=ret, extra=extra)


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


# ============================================================================================================== TEMPO


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
        _check(name, t, (B,))
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
    lengths = _last_policy_index(batch.action_mask) + 1
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
    return _output(batch, adv, turn_rewards=turn_r, extra=extra)


# =============================================================================================================== PURE


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
    _check("turn_mask", turn_mask, tuple(pr.shape))
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
        _check(name, t, shp)
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
    n_tok_step = _turn_sum(mask.double(), turn_id, K)  # [B, K]
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
        last = _last_policy_index(mask)
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


@register_credit("pure", PUREConfig)
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
        verifiable = torch.where(batch.has_answer.bool(), v, torch.full_like(v, float("nan")))
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
    return _output(batch, adv, turn_rewards=pr.float(), extra=extra)


# ============================================================================================================== DelTA


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
    _check("token_prob", token_prob, (B, L))
    _check("adv", adv, (B, L))
    _check("action_mask", action_mask, (B, L))
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


#: Post-processors ``fn(out, batch, cfg) -> CreditOutput`` with their config class as ``fn.config_cls``.
REFINERS: Registry[Callable[..., CreditOutput]] = Registry("credit refiner")
delta_refine.config_cls = DeltaConfig  # type: ignore[attr-defined]
REFINERS.add("delta", delta_refine)


def refine(name: str, out: CreditOutput, batch: GroupBatch, **overrides: Any) -> CreditOutput:
    """Apply refiner ``name`` (e.g. ``"delta"``) to an upstream `CreditOutput`, config built from ``overrides``."""
    fn = REFINERS[name]
    cls = fn.config_cls  # type: ignore[attr-defined]
    known = {f for f in cls.__dataclass_fields__}
    bad = [k for k in overrides if k not in known]
    if bad:
        raise ConfigError(
            f"unknown option(s) {bad} for refiner {name!r}; known options: {', '.join(sorted(known))}."
        )
    with torch.no_grad():
        return fn(out, batch, cls(**overrides))


@register_credit("delta", DeltaConfig)
def delta(batch: GroupBatch, cfg: DeltaConfig) -> CreditOutput:
    """DelTA on top of ``cfg.base`` (default GRPO): run the base method, then `delta_refine` (spec §9.3)."""
    base_out = CREDIT[cfg.base](batch, make_config(cfg.base, **dict(cfg.base_options)))
    return delta_refine(base_out, batch, cfg)
