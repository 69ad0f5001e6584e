"""CAPO: token rewards from the verifier minus a penalty on the steps a generative PRM flags (wave-2 spec §4).

The flags ``e_{i,k}`` come from the ``capo_critique`` signal provider (`turngym.credit.capo_signals`: an LLM judge's
voted critiques, or the rule stand-in without a judge) as the turn signal ``capo_err``. The reward of every policy
token of turn ``k`` of rollout ``i`` is [P-secondary]

    R_{i,k} = r_v(i)·W_whole − e_{i,k}·W_process,        W_whole = 2, W_process = 1,

with ``r_v`` the verifier's correctness (``"binary"``: ``1[outcome ≥ correct_threshold]``; ``"outcome"``: the outcome
clamped to [0, 1]; NaN ⇒ 0). The advantage normalisation is [R] (the paper's is not available):

* ``"token_pool"`` (default): ``A = (R − μ_g)/(σ_g + div_eps)`` with μ_g, σ_g the mean and std over every policy token
  of every rollout of prompt group g (turn values weighted by their token counts);
* ``"turn_pool"``: the same with each valid turn one sample (IGPO-joint style, no accumulation);
* ``"sequence"``: GRPO on ``r_v·W_whole − W_process·max_k e_{i,k}`` (``1[any flagged step]`` for binary flags).

No accumulation over later turns (the reward is already a per-token credit). Zero-variance groups give exact 0; a
group with one rollout gives 0 (``singleton="zero"``) or the raw reward (``"raw"``: mean 0, std 1). Loss: PPO-clip
with token ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

import turngym.credit.capo_signals  # noqa: F401  (registers the "capo_critique" signal provider)
from turngym.credit.base import CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.groups import GroupNormStats, dense_ids, group_norm_masked, group_norm_with_stats
from turngym.errors import ConfigError

__all__ = ["CAPOConfig", "capo_rewards", "capo_turn_advantages", "correctness", "token_pool_norm"]


@dataclass(frozen=True)
class CAPOConfig:
    """CAPO (wave-2 spec §4.3). Defaults = the paper's weights; the normalisation is a framework choice [R]."""

    w_whole: float = 2.0
    """Outcome weight W_whole (paper: 2)."""
    w_process: float = 1.0
    """Penalty per flagged step W_process (paper: 1); must stay below w_whole (asymmetric shaping)."""
    norm: Literal["token_pool", "turn_pool", "sequence"] = "token_pool"
    """Pool of the group statistics: every policy token of the group, every turn, or one value per rollout (GRPO)."""
    correctness: Literal["binary", "outcome"] = "binary"
    """r_v = 1[outcome >= correct_threshold] (binary) or the outcome clamped to [0, 1] (F1-scored tasks)."""
    correct_threshold: float = 1.0
    """Outcome at or above which a rollout counts as correct (binary)."""
    unbiased: bool = True
    """Unbiased (n - 1) std (over tokens for token_pool)."""
    div_eps: float = 1e-6
    """Added to the std in the denominator."""
    singleton: Literal["zero", "raw"] = "zero"
    """A group with one rollout: advantage 0, or the raw reward (mean 0, std 1)."""
    err_signal: str = "capo_err"
    """Turn signal of the error flags (written by the capo_critique provider)."""

    def __post_init__(self):
        if not (0.0 <= self.w_process < self.w_whole):
            raise ConfigError(
                f"CAPO needs 0 <= w_process < w_whole (asymmetric shaping: a correct answer with a flagged step must "
                f"beat a wrong clean one); got w_whole={self.w_whole}, w_process={self.w_process}. "
                "Fix: credit.w_whole=2 credit.w_process=1.")
        for name, val, ok in (("norm", self.norm, ("token_pool", "turn_pool", "sequence")),
                              ("correctness", self.correctness, ("binary", "outcome")),
                              ("singleton", self.singleton, ("zero", "raw"))):
            if val not in ok:
                raise ConfigError(f"credit.{name}={val!r} is not valid for capo; use one of {', '.join(ok)}.")
        if not (self.div_eps >= 0 and math.isfinite(self.div_eps)):
            raise ConfigError(f"credit.div_eps={self.div_eps} must be a finite number >= 0 (default 1e-6).")


def correctness(outcome: Tensor, mode: str = "binary", threshold: float = 1.0) -> Tensor:
    """``r_v[B]``: ``1[outcome ≥ threshold]`` (binary) or ``clamp(outcome, 0, 1)`` (outcome); NaN ⇒ 0. float64."""
    o = outcome.double()
    if mode == "binary":
        rv = (o >= threshold).double()
    elif mode == "outcome":
        rv = o.clamp(0.0, 1.0)
    else:
        raise ValueError(f"correctness must be 'binary' or 'outcome', got {mode!r}.")
    return torch.where(torch.isfinite(o), rv, torch.zeros_like(rv))


def capo_rewards(rv: Tensor, err: Tensor, turn_mask: Tensor, w_whole: float, w_process: float) -> Tensor:
    """``R_{i,k} = r_v(i)·W_whole − e_{i,k}·W_process`` ``[B, K]`` (float64, 0 on invalid turns; NaN flags ⇒ 0).

    Args:
        rv: ``[B]`` correctness.
        err: ``[B, K]`` error flags.
        turn_mask: ``[B, K]``.
    """
    if err.dim() != 2 or turn_mask.shape != err.shape or rv.shape != err.shape[:1]:
        raise ValueError(f"capo_rewards expects rv[B], err[B,K], turn_mask[B,K]; got rv{tuple(rv.shape)}, "
                         f"err{tuple(err.shape)}, turn_mask{tuple(turn_mask.shape)}.")
    e = torch.where(turn_mask & torch.isfinite(err), err.double(), torch.zeros_like(err, dtype=torch.float64))
    r = rv.double()[:, None] * w_whole - e * w_process
    return torch.where(turn_mask, r, torch.zeros_like(r))


def _rollout_singletons(group_index: Tensor, has_tokens: Tensor) -> tuple[Tensor, int, int]:
    """``([B] bool: the row is the only rollout with policy tokens in its group, n_groups, n_singleton)``."""
    gid, n = dense_ids(group_index)
    cnt = torch.zeros(n, dtype=torch.long, device=gid.device).scatter_add_(0, gid, has_tokens.long())
    single = cnt.index_select(0, gid) == 1
    return single & has_tokens, int((cnt > 0).sum()), int((cnt == 1).sum())


def token_pool_norm(r: Tensor, w: Tensor, group_index: Tensor, *, unbiased: bool = True, div_eps: float = 1e-6
                    ) -> tuple[Tensor, GroupNormStats]:
    """Normalise turn values by statistics over the *tokens* of each group (spec §4.2 ``norm="token_pool"``).

    ``μ_g = Σ w·r / Σ w``, ``σ_g² = Σ w·(r − μ_g)² / (Σ w − 1)`` (``Σ w`` if not ``unbiased``) over the turns of the
    rows of group ``g``, with ``w`` the turns' policy-token counts; ``out = (r − μ_g)/(σ_g + div_eps)``. Groups whose
    tokens all carry one value give exactly 0; turns with ``w = 0`` get 0.

    Args:
        r: ``[B, K]`` turn values.
        w: ``[B, K]`` token counts (0 on invalid turns).
        group_index: ``[B]``.

    Returns:
        ``([B, K] float64, stats)``; ``stats.n_singleton`` counts groups with a single token-bearing turn.
    """
    if r.dim() != 2 or w.shape != r.shape or group_index.shape != r.shape[:1]:
        raise ValueError(f"token_pool_norm expects r[B,K], w[B,K], group_index[B]; got r{tuple(r.shape)}, "
                         f"w{tuple(w.shape)}, group_index{tuple(group_index.shape)}.")
    b, k = r.shape
    gid, n = dense_ids(group_index)
    key = gid[:, None].expand(b, k).reshape(-1)
    wd = w.double().reshape(-1).clamp(min=0)
    on = wd > 0
    x = torch.where(on, r.double().reshape(-1), torch.zeros_like(wd))
    tw = torch.zeros(n, dtype=torch.float64, device=r.device).scatter_add_(0, key, wd)
    mu = (torch.zeros_like(tw).scatter_add_(0, key, wd * x) / tw.clamp(min=1.0)).index_select(0, key)
    ss = torch.zeros_like(tw).scatter_add_(0, key, wd * (x - mu) ** 2)
    var = ss / ((tw - 1.0) if unbiased else tw).clamp(min=1.0)
    std = var.sqrt().index_select(0, key)
    inf = torch.full_like(x, math.inf)
    gmin = torch.full_like(tw, math.inf).scatter_reduce_(0, key, torch.where(on, x, inf), "amin")
    gmax = torch.full_like(tw, -math.inf).scatter_reduce_(0, key, torch.where(on, x, -inf), "amax")
    n_turns = torch.zeros(n, dtype=torch.long, device=r.device).scatter_add_(0, key, on.long())
    zero_var = (n_turns >= 2) & (gmin == gmax)
    kill = ~on | zero_var.index_select(0, key)
    out = torch.where(kill, torch.zeros_like(x), (x - mu) / (std + div_eps))
    st = GroupNormStats(n_groups=int((n_turns > 0).sum()), n_singleton=int((n_turns == 1).sum()),
                        n_zero_var=int(zero_var.sum()))
    return out.view(b, k), st


def capo_turn_advantages(r: Tensor, rv: Tensor, err: Tensor, turn_mask: Tensor, turn_lengths: Tensor,
                         group_index: Tensor, cfg: CAPOConfig) -> tuple[Tensor, GroupNormStats]:
    """Per-turn CAPO advantages ``[B, K]`` (float64, 0 on invalid turns) from the rewards ``r = capo_rewards(...)``.

    ``cfg.norm`` picks the pool (module docstring). Rollout-level singleton rule for every pool: a group with one
    rollout (one row with policy tokens) gets 0 (``"zero"``) or ``r/(1 + div_eps)`` (``"raw"``).

    Returns:
        ``(turn_adv[B, K], stats)`` with ``stats.n_singleton`` = groups with one rollout.
    """
    b, k = r.shape
    has_tok = (turn_lengths * turn_mask).sum(1) > 0  # [B]
    single, n_groups, n_single = _rollout_singletons(group_index, has_tok)
    if cfg.norm == "token_pool":
        adv, st = token_pool_norm(r, turn_lengths * turn_mask, group_index, unbiased=cfg.unbiased,
                                  div_eps=cfg.div_eps)
        raw = r
    elif cfg.norm == "turn_pool":
        key = group_index[:, None].expand(b, k)
        adv, st = group_norm_masked(r, key, turn_mask, unbiased=cfg.unbiased, div_eps=cfg.div_eps, singleton="zero")
        raw = r
    else:  # sequence: GRPO on r_v·W_whole − W_process·(any flagged step)
        e = torch.where(turn_mask & torch.isfinite(err), err.double(), torch.zeros_like(err, dtype=torch.float64))
        any_flag = e.max(1).values.clamp(min=0) if k else torch.zeros_like(rv, dtype=torch.float64)  # [B]
        seq = rv.double() * cfg.w_whole - cfg.w_process * any_flag
        a, st = group_norm_with_stats(seq, group_index, valid=has_tok, unbiased=cfg.unbiased, div_eps=cfg.div_eps,
                                      singleton="zero")
        adv = a.double()[:, None].expand(b, k)
        raw = seq[:, None].expand(b, k)
    st = GroupNormStats(n_groups=n_groups, n_singleton=n_single, n_zero_var=st.n_zero_var)
    fill = raw / (1.0 + cfg.div_eps) if cfg.singleton == "raw" else torch.zeros_like(raw)
    adv = torch.where(single[:, None], fill, adv.double())
    return torch.where(turn_mask, adv, torch.zeros_like(adv)), st


@register_credit("capo", CAPOConfig, signals=("capo_critique",))
def capo(batch: GroupBatch, cfg: CAPOConfig) -> CreditOutput:
    """CAPO: verifier reward minus a penalty on PRM-flagged turns, normalised over the group (spec §4.2). Token ratio.

    Diagnostics: standard keys plus ``flagged_turn_rate`` (mean flag over valid turns: the flagged fraction for 0/1
    flags), ``flagged_traj_rate`` (rollouts with a flagged turn), ``correct_rate`` (mean ``r_v``), ``err_missing``
    (valid turns without a flag: treated as 0), and, from the provider's prompt signals when present,
    ``invalid_critique_rate`` (1 − valid / requested critiques), ``no_valid_critique_rate`` (rollouts with no valid
    critique, hence no penalty) and ``llm_judged`` (fraction judged by an LLM rather than the rule stand-in).
    """
    err = batch.signal(cfg.err_signal, needed_by="capo (provider 'capo_critique')")
    m = batch.turn_mask
    rv = correctness(batch.outcome, cfg.correctness, cfg.correct_threshold)  # [B]
    r = capo_rewards(rv, err, m, cfg.w_whole, cfg.w_process)  # [B, K]
    adv, st = capo_turn_advantages(r, rv, err, m, batch.turn_lengths, batch.group_index, cfg)

    fin = m & torch.isfinite(err)
    n_turns = int(m.sum())
    e = torch.where(fin, err.double(), torch.zeros_like(err, dtype=torch.float64))
    extra = {
        "flagged_turn_rate": float(e.sum()) / n_turns if n_turns else 0.0,
        "flagged_traj_rate": float((e > 0).any(1).double().mean()) if e.numel() else 0.0,
        "correct_rate": float(rv.mean()) if rv.numel() else 0.0,
        "err_missing": float(n_turns - int(fin.sum())),
    }
    ps = batch.prompt_signals
    if "capo_valid_critiques" in ps and "capo_critiques" in ps:
        valid, asked = ps["capo_valid_critiques"].double(), ps["capo_critiques"].double()
        ok = torch.isfinite(valid) & torch.isfinite(asked) & (asked > 0)
        n_ask = float(asked[ok].sum())
        extra["invalid_critique_rate"] = 1.0 - float(valid[ok].sum()) / n_ask if n_ask else 0.0
        extra["no_valid_critique_rate"] = float((valid[ok] == 0).double().mean()) if bool(ok.any()) else 0.0
    if "capo_llm" in ps:
        llm = ps["capo_llm"]
        ok = torch.isfinite(llm)
        extra["llm_judged"] = float(llm[ok].double().mean()) if bool(ok.any()) else 0.0
    return finish(batch, adv, r, stats={"group": st}, extra=extra)
