"""CALM: LLM subgoal decomposition and subgoal-achievement judging as an auxiliary turn reward (wave-2 spec §5).

Pignatelli et al., "Assessing the Zero-Shot Capabilities of LLMs for Action Evaluation in RL" (arXiv 2409.12798):
an LLM splits the task into subgoals and judges which transition completes one; each completion (an option
terminating) adds a bonus to the sparse task reward. The providers are in `turngym.credit.calm_signals`
(``"calm_subgoals"``: the LLM judge, or the gold-tool-call rule stand-in without one); they write
``turn_signals["calm_new"]`` (subgoals achieved at turn k for the first time) and ``["calm_hits"]`` (all achieved at k).

Shaped turn reward (spec §5.2), ``a = calm_new`` (``once_per_episode``) or ``calm_hits`` (repo table shaping)::

    r̃_{i,k} = β·a_{i,k} + 1[k = T_i − 1]·R_i + 1_env·r^env_{i,k}          # [B, K]; NaN signal / outcome -> 0

Advantage: ``"process_grpo"`` (default, critic-free; spec §1.2: group-normalise every valid turn reward of a prompt
group in one pool, then ``A_{i,k} = Σ_{j≥k} γ^{j−k} r̂_{i,j}``) or ``"gae"`` (the repo's usage: PPO with the shaped
reward, through `turngym.credit.gae.gae`; needs critic values, i.e. ``algo=ppo credit.advantage=gae``).

Departures (Δ): the released shaper multiplies β by a min-max-normalised table of annotation counts over
(observation, action); the paper describes a per-subgoal reward; here each subgoal is worth 1 before β.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from turngym.credit import calm_signals  # also registers the "calm_subgoals" provider
from turngym.credit.base import CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.gae import GAEConfig, gae
from turngym.credit.groups import process_grpo
from turngym.errors import ConfigError, CreditError

__all__ = ["CALMConfig", "calm", "calm_aux", "calm_shaped_rewards"]

_WHO = "credit method 'calm' (signal provider 'calm_subgoals': SubgoalJudgeProvider / RuleSubgoalProvider)"
AUX_SIGNAL = "calm_aux"
"""Turn signal holding ``β·a`` handed to GAE (``advantage="gae"``)."""


@dataclass(frozen=True)
class CALMConfig:
    """CALM (wave-2 spec §5.3): defaults = framework defaults (β 0.1 as the repo, once per episode, process_grpo)."""

    beta: float = 0.1
    """Weight β of one achieved subgoal (repo default; its run scripts also use 1.0)."""
    once_per_episode: bool = True
    """Reward a subgoal only the first time it is achieved (calm_new); False = every hit (calm_hits, repo table)."""
    use_outcome: bool = True
    """Add the outcome R on the last turn."""
    use_env_rewards: bool = False
    """Add the env step rewards (Turn.reward; most envs repeat the outcome there)."""
    advantage: Literal["process_grpo", "gae"] = "process_grpo"
    """process_grpo: critic-free group-normalised turn rewards (framework); gae: PPO with the shaped rewards (repo)."""
    gamma: float = 1.0
    """Discount: process_grpo accumulation across turns, or the GAE γ (algo=ppo passes its gamma; repo 0.99)."""
    lam: float = 1.0
    """GAE λ (advantage=gae only; algo=ppo passes its gae_lambda; repo 0.95)."""
    whiten_advantages: bool = True
    """advantage=gae: whiten the GAE advantages over the batch's policy tokens (as credit=gae)."""
    kl_coef: float = 0.0
    """advantage=gae: KL reward penalty coefficient (algo=ppo kl_in_reward passes it); 0 = off."""
    kl_type: str = "k1"
    """advantage=gae: KL estimator of the reward penalty."""
    unbiased: bool = True
    """process_grpo: unbiased (n−1) std of the group pool."""
    div_eps: float = 1e-6
    """process_grpo: added to the std in the denominator."""
    singleton: Literal["zero", "raw"] = "zero"
    """process_grpo: a group pool with one valid turn gives 0 (zero) or its raw reward (raw)."""

    def __post_init__(self) -> None:
        if self.advantage not in ("process_grpo", "gae"):
            raise ConfigError(f"calm: advantage must be 'process_grpo' or 'gae', got {self.advantage!r}. "
                              "Fix: credit.advantage=process_grpo (or gae with algo=ppo).")
        if self.singleton not in ("zero", "raw"):
            raise ConfigError(f"calm: singleton must be 'zero' or 'raw', got {self.singleton!r}.")
        if not math.isfinite(self.beta):
            raise ConfigError(f"calm: beta must be finite, got {self.beta}. Fix: credit.beta=0.1.")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ConfigError(f"calm: gamma and lam must be in [0, 1]; got gamma={self.gamma}, lam={self.lam}.")
        if self.div_eps < 0 or self.kl_coef < 0:
            raise ConfigError(f"calm: div_eps={self.div_eps} and kl_coef={self.kl_coef} must be >= 0.")
        if self.kl_coef > 0 and self.advantage != "gae":
            raise ConfigError(f"calm: kl_coef={self.kl_coef} is a GAE reward penalty; with advantage="
                              f"{self.advantage!r} use the trainer's KL loss instead. Fix: credit.kl_coef=0.")


def calm_aux(batch: GroupBatch, cfg: CALMConfig) -> Tensor:
    """Auxiliary reward ``a`` ``[B, K]``: ``calm_new`` (``once_per_episode``) or ``calm_hits``; NaN -> 0, 0 on invalid
    turns. With ``beta == 0`` a missing signal gives zeros; otherwise it raises `CreditError` naming the provider."""
    name = calm_signals.NEW if cfg.once_per_episode else calm_signals.HITS
    if cfg.beta == 0 and name not in batch.turn_signals:
        return torch.zeros(batch.turn_mask.shape, dtype=torch.float32, device=batch.turn_mask.device)
    a = batch.signal(name, needed_by=_WHO).float()
    return torch.where(batch.turn_mask & torch.isfinite(a), a, torch.zeros_like(a))


def calm_shaped_rewards(aux: Tensor, outcome: Tensor, turn_mask: Tensor, *, beta: float, use_outcome: bool = True,
                        env_rewards: Tensor | None = None) -> Tensor:
    """``r̃_{i,k} = β·a_{i,k} + 1[k = T_i − 1]·R_i (+ r^env_{i,k})`` (spec §5.2).

    Args:
        aux: ``[B, K]`` auxiliary reward (subgoal counts), finite.
        outcome: ``[B]`` outcome (NaN -> 0: no final answer scores 0).
        turn_mask: ``[B, K]`` bool.
        beta: Weight of one subgoal.
        use_outcome: Add the outcome on each row's last valid turn.
        env_rewards: ``[B, K]`` env step rewards to add (NaN -> 0), or None.

    Returns:
        ``[B, K]`` float32, 0 on invalid turns.
    """
    if aux.dim() != 2 or turn_mask.shape != aux.shape or outcome.shape != aux.shape[:1]:
        raise ValueError(f"calm_shaped_rewards expects aux[B,K], outcome[B], turn_mask[B,K]; got "
                         f"{tuple(aux.shape)}, {tuple(outcome.shape)}, {tuple(turn_mask.shape)}.")
    m = turn_mask.bool()
    r = beta * aux.float()
    if env_rewards is not None:
        r = r + torch.nan_to_num(env_rewards.float(), nan=0.0)
    if use_outcome:
        last = (m.long().sum(1) - 1).clamp(min=0)  # [B]
        has = m.any(1)
        rr = torch.where(has, torch.nan_to_num(outcome.float(), nan=0.0), torch.zeros_like(outcome, dtype=r.dtype))
        r = r.scatter_add(1, last[:, None], rr[:, None])
    return torch.where(m, r, torch.zeros_like(r))


@register_credit("calm", CALMConfig, signals=("calm_subgoals",))
def calm(batch: GroupBatch, cfg: CALMConfig) -> CreditOutput:
    """CALM (spec §5): subgoal-shaped turn rewards, advantages by process_grpo (default) or GAE.

    Diagnostics: the standard ones (plus ``calm_*`` group counts for process_grpo, ``gae_*`` for GAE) and
    ``calm_aux_per_traj`` (mean Σ_k a per row), ``calm_aux_turn_frac`` (fraction of valid turns with a > 0),
    ``calm_aux_return_frac`` (share of |β·a| in the total |shaped reward|); from the providers' prompt signals, when
    present: ``calm_no_subgoal_frac`` (rows whose task has no subgoal, e.g. a failed decomposition) and ``calm_llm``
    (1 = the LLM judge ran, 0 = the rule stand-in).
    """
    aux = calm_aux(batch, cfg)  # [B, K]
    m = batch.turn_mask
    n_turns = max(int(m.sum()), 1)
    r = calm_shaped_rewards(aux, batch.outcome, m, beta=cfg.beta, use_outcome=cfg.use_outcome,
                            env_rewards=batch.turn_rewards if cfg.use_env_rewards else None)
    total = float(r.abs().sum())
    extra = {
        "calm_aux_per_traj": float(aux.sum(1).mean()) if aux.numel() else 0.0,
        "calm_aux_turn_frac": float((aux > 0).sum()) / n_turns,
        "calm_aux_return_frac": float((cfg.beta * aux).abs().sum()) / total if total > 0 else 0.0,
    }
    for key, name in (("calm_no_subgoal_frac", "calm_n_subgoals"), ("calm_llm", "calm_llm")):
        v = batch.prompt_signals.get(name)  # written by the providers: a failed decomposition / which one ran
        if v is not None and bool(torch.isfinite(v).any()):
            v = v[torch.isfinite(v)].float()
            extra[key] = float((v == 0).float().mean()) if key == "calm_no_subgoal_frac" else float(v.mean())
    if cfg.advantage == "gae":
        if batch.values is None:
            raise CreditError("credit method 'calm' with advantage='gae' needs critic values (GroupBatch.values), "
                              "which only the PPO trainer computes. Fix: algo=ppo credit.advantage=gae (or "
                              "credit.advantage=process_grpo with algo=grpo).")
        shaped = dataclasses.replace(batch, turn_signals={**batch.turn_signals, AUX_SIGNAL: cfg.beta * aux})
        gcfg = GAEConfig(gamma=cfg.gamma, lam=cfg.lam, whiten_advantages=cfg.whiten_advantages,
                         use_outcome=cfg.use_outcome, use_env_rewards=cfg.use_env_rewards,
                         turn_reward_signals=(AUX_SIGNAL,), kl_coef=cfg.kl_coef, kl_type=cfg.kl_type)
        out = gae(shaped, gcfg)
        out.diagnostics.update(extra)
        return out
    adv, st = process_grpo(r, m, batch.group_index, gamma=cfg.gamma, unbiased=cfg.unbiased, div_eps=cfg.div_eps,
                           singleton=cfg.singleton)
    return finish(batch, adv, r, stats={"calm": st}, extra=extra)
