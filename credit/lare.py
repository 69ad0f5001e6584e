"""LaRe: per-turn proxy rewards decoded from LLM-written latent-reward factors, turned into advantages (wave-2 spec §6).

The signal side lives with the trainer: `turngym.trainers.lare_code` runs the latent-reward function (written by an LLM,
or our rule stand-in) in the project's sandbox and writes the factors ``turn_signals["lare_z0" … "lare_z{D−1}"]``;
`turngym.trainers.lare_decoder` (a learned component) decodes them into ``turn_signals["lare_reward"]`` =
``r̂_{i,k} = f_ψ(z_{i,k})`` and trains ``f_ψ`` by return decomposition. This module is the pure credit function:

1. ``r_{i,k}`` = ``lare_reward`` on valid turns. Missing signal (decoder warm-up): ``fallback_to_outcome`` puts the
   outcome ``R_i`` on the last turn and 0 elsewhere (logged as ``lare_fallback``), else `CreditError`.
   Non-finite ``r`` on a valid turn counts as 0 (``lare_nonfinite_rewards``).
2. Rows with no final answer or a NaN outcome have no target: ``R_i = 0`` and ``r_{i,k} = 0`` on every turn (the
   outcome 0 on the last turn), ``lare_no_target_rows``.
3. ``residual="uniform"`` [R]: ``r̃_{i,k} = r_{i,k} + (R_i − Σ_k r_{i,k}) / T_i`` so that ``Σ_k r̃_{i,k} = R_i``;
   ``"none"`` (release) keeps ``r``.
4. ``advantage="process_grpo"`` (default, `turngym.credit.groups.process_grpo`): every valid turn reward of a prompt
   group in one pool, ``group_norm`` (``std_u``, ``div_eps``, ``singleton``), then
   ``A_{i,k} = Σ_{j≥k} γ^{j−k} r̂_{i,j}``. ``advantage="gae"`` (release parity: PPO on the proxy rewards): the ``gae``
   method of `turngym.credit.gae` with ``r̃`` as its only turn reward and ``use_outcome=False``; needs critic values
   (``algo=ppo``).

Shapes: ``B`` rows, ``K`` turns, ``L`` response tokens. Paper: Qu et al., "Latent Reward: LLM-Empowered Credit
Assignment in Episodic Reinforcement Learning" (arXiv 2412.11120); the LLM-agent reading is ours (spec §9).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from turngym.credit.base import CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.gae import GAEConfig, gae
from turngym.credit.groups import process_grpo
from turngym.errors import ConfigError, CreditError

__all__ = ["LaReConfig", "lare_proxy_rewards", "uniform_residual"]

_NEEDED_BY = "lare (signal provider 'lare_latent' + learned component 'lare_decoder')"
_PROXY_SIGNAL = "_lare_proxy"


@dataclass(frozen=True)
class LaReConfig:
    """LaRe credit (spec §6.3): decoded per-turn rewards, uniform residual, process_grpo advantages."""

    reward_signal: str = "lare_reward"
    """Turn signal holding the decoded proxy reward r̂ (written by the ``lare_decoder`` component)."""
    residual: Literal["none", "uniform"] = "uniform"
    """"uniform": add (R − Σ r̂)/T to every turn so the rewards sum to the outcome (framework); "none": release."""
    advantage: Literal["process_grpo", "gae"] = "process_grpo"
    """process_grpo (critic-free, spec §1.2) or gae (release parity: PPO on the proxy rewards; needs algo=ppo)."""
    gamma: float = 1.0
    """Discount across turns (process_grpo) or per policy token (gae; algo=ppo passes its gamma)."""
    lam: float = 1.0
    """GAE λ for advantage="gae" (algo=ppo passes gae_lambda; release 0.95)."""
    unbiased: bool = True
    """Unbiased (n−1) std in the process_grpo pool."""
    div_eps: float = 1e-6
    """Added to the std in the denominator."""
    singleton: Literal["zero", "raw"] = "zero"
    """A pool with one valid turn: "zero" (0) or "raw" (mean 0, std 1)."""
    fallback_to_outcome: bool = True
    """Missing lare_reward (decoder warm-up): use the outcome on the last turn; False raises CreditError."""

    def __post_init__(self) -> None:
        if self.residual not in ("none", "uniform"):
            raise ConfigError(f"lare: residual must be 'none' or 'uniform'; got {self.residual!r}.")
        if self.advantage not in ("process_grpo", "gae"):
            raise ConfigError(f"lare: advantage must be 'process_grpo' or 'gae'; got {self.advantage!r}. "
                              "Fix: credit.advantage=process_grpo (algo=grpo) or credit.advantage=gae (algo=ppo).")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ConfigError(f"lare: gamma and lam must be in [0, 1]; got gamma={self.gamma}, lam={self.lam}.")
        if self.singleton not in ("zero", "raw"):
            raise ConfigError(f"lare: singleton must be 'zero' or 'raw'; got {self.singleton!r}.")


def uniform_residual(r: Tensor, target: Tensor, turn_mask: Tensor) -> Tensor:
    """``r̃_{i,k} = r_{i,k} + (R_i − Σ_k r_{i,k}) / T_i`` on valid turns (0 elsewhere), so ``Σ_k r̃_{i,k} = R_i``.

    Args:
        r: ``[B, K]`` finite per-turn rewards (0 on invalid turns).
        target: ``[B]`` finite returns ``R``.
        turn_mask: ``[B, K]`` bool.

    Returns:
        ``[B, K]`` in ``r``'s dtype; rows without turns stay 0.
    """
    if r.dim() != 2 or turn_mask.shape != r.shape or target.shape != r.shape[:1]:
        raise ValueError(f"uniform_residual expects r[B,K], target[B], turn_mask[B,K]; got {tuple(r.shape)}, "
                         f"{tuple(target.shape)}, {tuple(turn_mask.shape)}.")
    m = turn_mask.bool()
    t = m.sum(1).clamp(min=1).to(r.dtype)
    rz = torch.where(m, r, torch.zeros_like(r))
    fix = (target.to(r.dtype) - rz.sum(1)) / t
    return torch.where(m, rz + fix[:, None], torch.zeros_like(rz))


def lare_proxy_rewards(batch: GroupBatch, cfg: LaReConfig) -> tuple[Tensor, dict[str, float]]:
    """Steps 1–3 of the module docstring: the per-turn proxy rewards ``r̃`` ``[B, K]`` (float64, 0 on invalid turns)
    and their diagnostics (``lare_fallback``, ``lare_no_target_rows``, ``lare_nonfinite_rewards``,
    ``lare_residual_absmean``, ``lare_reward_mean``)."""
    m = batch.turn_mask.bool()
    b, k = m.shape
    outcome = batch.outcome.double()
    no_target = ~batch.scored.bool() | ~torch.isfinite(outcome)
    target = torch.where(no_target, torch.zeros_like(outcome), outcome)  # [B]
    last = batch.last_turn_index.clamp(min=0)
    fallback = cfg.reward_signal not in batch.turn_signals
    n_bad = 0
    if fallback:
        if not cfg.fallback_to_outcome:
            batch.signal(cfg.reward_signal, needed_by=_NEEDED_BY)  # raises CreditError naming the providers
        r = torch.zeros((b, k), dtype=torch.float64, device=m.device)
        r = r.scatter(1, last[:, None], target[:, None])
        r = torch.where(m, r, torch.zeros_like(r))
    else:
        raw = batch.signal(cfg.reward_signal, needed_by=_NEEDED_BY).double()
        bad = m & ~torch.isfinite(raw)
        n_bad = int(bad.sum())
        r = torch.where(m & ~bad, raw, torch.zeros_like(raw))
    r = torch.where(no_target[:, None], torch.zeros_like(r), r)  # no answer / NaN outcome: 0 everywhere
    t = m.sum(1).clamp(min=1).double()
    resid = (target - r.sum(1)) / t
    if cfg.residual == "uniform":
        r = uniform_residual(r, target, m)
    has_turn = m.any(1)
    diag = {
        "lare_fallback": float(fallback),
        "lare_no_target_rows": float(int((no_target & has_turn).sum())),
        "lare_nonfinite_rewards": float(n_bad),
        "lare_residual_absmean": float(resid[has_turn].abs().mean()) if bool(has_turn.any()) else 0.0,
        "lare_reward_mean": float(r[m].mean()) if bool(m.any()) else 0.0,
    }
    return r, diag


def _provider_diagnostics(batch: GroupBatch) -> dict[str, float]:
    """What the ``lare_latent`` provider left in the batch: exec errors (``lare_exec_error`` turn signal) and whether
    the latent code came from an LLM (``lare_llm`` prompt signal: 1 LLM, 0 rule stand-in)."""
    out: dict[str, float] = {}
    err = batch.turn_signals.get("lare_exec_error")
    if err is not None:
        out["lare_exec_errors"] = float(torch.nan_to_num(err.double(), nan=0.0)[batch.turn_mask].sum())
    src = batch.prompt_signals.get("lare_llm")
    if src is not None and bool(torch.isfinite(src).any()):
        out["lare_llm_code"] = float(src[torch.isfinite(src)].double().mean())
    n_z = 0
    while f"lare_z{n_z}" in batch.turn_signals:
        n_z += 1
    out["lare_factors"] = float(n_z)
    return out


@register_credit("lare", LaReConfig, signals=("lare_latent",), learned=("lare_decoder",))
def lare(batch: GroupBatch, cfg: LaReConfig) -> CreditOutput:
    """LaRe credit (spec §6): proxy rewards (decoded latent rewards, uniform residual) → process_grpo or GAE.

    Diagnostics: the standard ones plus ``lare_fallback`` (1 when ``lare_reward`` was missing and the outcome was
    used), ``lare_no_target_rows``, ``lare_nonfinite_rewards``, ``lare_residual_absmean`` (mean |R − Σ r̂|/T before
    the residual), ``lare_reward_mean``, ``lare_exec_errors`` / ``lare_llm_code`` / ``lare_factors`` (from the
    provider's signals).
    """
    r, diag = lare_proxy_rewards(batch, cfg)
    diag |= _provider_diagnostics(batch)
    if cfg.advantage == "gae":
        if batch.values is None:
            raise CreditError("lare with advantage='gae' runs PPO's GAE on the proxy rewards and needs critic values "
                              "(GroupBatch.values), which only the PPO trainer fills. Fix: algo=ppo "
                              "credit.advantage=gae, or credit.advantage=process_grpo with algo=grpo.")
        proxy = torch.where(batch.turn_mask, r.float(), torch.full_like(r, float("nan"), dtype=torch.float32))
        shaped = dataclasses.replace(batch, turn_signals={**batch.turn_signals, _PROXY_SIGNAL: proxy})
        out = gae(shaped, GAEConfig(gamma=cfg.gamma, lam=cfg.lam, use_outcome=False,
                                    turn_reward_signals=(_PROXY_SIGNAL,)))
        out.diagnostics |= diag
        return out
    adv, st = process_grpo(r, batch.turn_mask, batch.group_index, gamma=cfg.gamma, unbiased=cfg.unbiased,
                           div_eps=cfg.div_eps, singleton=cfg.singleton)
    return finish(batch, adv, r, stats={"turn": st}, extra=diag)
