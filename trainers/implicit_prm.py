"""OPRL's implicit PRM (wave-2 spec §2.1, §2.3): a second language model π_φ trained online with a trajectory DPO loss.

The learned component ``implicit_prm`` (`turngym.trainers.learned`), declared by the ``oprl`` credit method. It holds
π_φ (a full, trainable copy of the policy taken after the warm start: φ ← θ), its own AdamW and its options
(`ImplicitPRMConfig`, set with ``signals.<field>=value``). Each training step, in the trainer's order:

1. ``before_credit``: (``rescore_old``, default on) ``batch.old_logprobs`` ← the policy's own teacher-forced log-probs
   at the rollout temperature, then ``batch.token_features["prm_logprobs"]`` ← π_φ's, through the same chunked forward
   (`turngym.trainers.forward.batch_logprobs`). With φ = θ at init, the first step's step rewards are then exactly 0
   (spec §2.5); without rescoring, the sampler's log-probs (KV-cached generation, another engine) differ from a
   teacher-forced forward by float noise, which would show up as spurious step rewards. The rescored log-probs are
   also the policy loss's "old" log-probs (as verl recomputes them); with async rollouts (``max_staleness > 0``)
   the learner is not the behaviour policy: set ``signals.rescore_old=false`` there.
2. credit (``oprl``) reads both.
3. ``after_credit`` (``update="after"``, the release's Algorithm 1): one AdamW step of the DPO loss on this batch::

       s_i   = β Σ_{t policy} (ℓ^φ_{i,t} − ℓ^old_{i,t})            (traj_score="sum", paper)
             = β (1/T_i) Σ_k q_{i,k}                               (traj_score="mean", release; T_i = turns)
       L_PRM = −(1/|P|) Σ_{(i,j)∈P} log σ(s_i − s_j)

   over every (positive, negative) pair of a prompt group (``R_i > positive_threshold`` is positive). No pair: no
   update (``prm_pairs = 0``). The gradient is exact and memory-bounded: ``g = ∂L/∂s`` is computed on the scores
   (a ``[B]`` vector), then each chunk of rows back-propagates ``Σ_i g_i ∂s_i/∂φ`` (the log-probs of one chunk at a
   time, never the whole batch's graph). ``update="before"`` updates first and scores with the new φ.

Metrics (``learned/implicit_prm/<key>``): ``prm_loss`` (DPO loss before the step), ``prm_pairs``, ``prm_margin``
(mean s_pos − s_neg over pairs, before the step), ``prm_acc`` (fraction of pairs with s_pos > s_neg), ``prm_s`` (mean
score over the batch), ``prm_grad_norm`` (before clipping), ``prm_logratio_absmax`` (max |ℓ^φ − ℓ^old| on policy
tokens), ``prm_rescore_diff`` (max |rescored − sampler| old log-prob, rescore_old only), and the wall seconds
``prm_rescore_s``, ``prm_score_s``, ``prm_update_s``.

Cost: memory ≈ one more copy of the policy plus its AdamW state; compute ≈ one forward of the policy (rescoring),
one forward of π_φ (scoring) and one forward + backward of π_φ over the rows in pairs (DPO) per step.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from turngym.credit.base import GroupBatch
from turngym.errors import ConfigError, CreditError
from turngym.trainers.forward import batch_logprobs, chunk_logprobs, iter_chunks
from turngym.trainers.learned import LearnedContext, register_learned

__all__ = ["ImplicitPRM", "ImplicitPRMConfig", "dpo_loss", "dpo_pairs", "trajectory_scores"]


@dataclass(frozen=True)
class ImplicitPRMConfig:
    """OPRL's implicit PRM (spec §2.3); set with ``signals.<field>=value``."""

    beta: float = 0.05
    """β of the DPO scores; unset, it follows the credit method's ``credit.beta`` (the release uses one β)."""
    lr: float = 1e-6
    """AdamW learning rate of π_φ, constant (paper App. C)."""
    grad_clip: float = 10.0
    """Max gradient norm of a PRM update (release script)."""
    traj_score: Literal["sum", "mean"] = "sum"
    """Trajectory score: β × the summed log-ratio (paper) or its mean over the trajectory's turns (release)."""
    positive_threshold: float = 0.0
    """A trajectory with outcome R > threshold is a positive, otherwise a negative (SOTOPIA: 6.0 of 10)."""
    update: Literal["after", "before"] = "after"
    """Score with φ_{s−1} then update (release, Algorithm 1), or update first and score with φ_s."""
    init: Literal["policy"] = "policy"
    """φ ← θ after the warm start (the only initialisation)."""
    rescore_old: bool = True
    """Recompute ``batch.old_logprobs`` with the policy's own teacher-forced forward before scoring, so that φ = θ
    gives step rewards of exactly 0 (spec §2.5); false keeps the sampler's log-probs (needed with async rollouts)."""
    weight_decay: float = 0.0
    """AdamW weight decay of π_φ [R: not stated by the paper]."""

    def __post_init__(self):
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"ImplicitPRMConfig.beta={self.beta} must be finite and > 0 (signals.beta=0.05).")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ConfigError(f"ImplicitPRMConfig.lr={self.lr} must be >= 0 (paper: signals.lr=1e-6).")
        if not self.grad_clip > 0:
            raise ConfigError(f"ImplicitPRMConfig.grad_clip={self.grad_clip} must be > 0 (release: 10.0).")
        for name, ok in (("traj_score", ("sum", "mean")), ("update", ("after", "before")), ("init", ("policy",))):
            if getattr(self, name) not in ok:
                raise ConfigError(f"ImplicitPRMConfig.{name}={getattr(self, name)!r}; choose one of {list(ok)} "
                                  f"(signals.{name}={ok[0]}).")


# ----------------------------------------------------------------------------------------------- the DPO math
def trajectory_scores(logratio: Tensor, turn_mask: Tensor, beta: float, traj_score: str = "sum") -> Tensor:
    """``s[B]`` from per-turn (``[B, K]``, e.g. OPRL's ``q``) or per-token (``[B, L]``, 0 off the policy tokens)
    log-ratios: ``β Σ`` (``"sum"``) or ``β Σ / T_i`` with ``T_i`` = the row's turns (``"mean"``, 0 turns → 1)."""
    if logratio.dim() != 2 or turn_mask.dim() != 2 or logratio.shape[0] != turn_mask.shape[0]:
        raise ValueError(f"trajectory_scores expects logratio[B, K or L] and turn_mask[B, K]; got "
                         f"{tuple(logratio.shape)}, {tuple(turn_mask.shape)}.")
    s = beta * logratio.sum(1)
    if traj_score == "mean":
        s = s / turn_mask.sum(1).clamp(min=1).to(s.dtype)
    elif traj_score != "sum":
        raise ValueError(f"traj_score must be 'sum' or 'mean', got {traj_score!r}.")
    return s


def dpo_pairs(outcome: Tensor, group_index: Tensor, positive_threshold: float = 0.0) -> tuple[Tensor, Tensor]:
    """Every (positive, negative) pair of rows inside a prompt group: ``(pos[P], neg[P])`` row indices.

    Positive: ``outcome > positive_threshold``; negative otherwise (a NaN outcome is a negative)."""
    if outcome.dim() != 1 or group_index.shape != outcome.shape:
        raise ValueError(f"dpo_pairs expects outcome[B] and group_index[B]; got {tuple(outcome.shape)}, "
                         f"{tuple(group_index.shape)}.")
    pos = outcome > positive_threshold  # NaN -> False
    same = group_index[:, None] == group_index[None, :]  # [B, B]
    pi, ni = torch.nonzero(same & pos[:, None] & ~pos[None, :], as_tuple=True)
    return pi, ni


def dpo_loss(scores: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """``−mean_{(i,j)} log σ(s_i − s_j)`` over the pairs (0 without pairs)."""
    if pos.numel() == 0:
        return scores.sum() * 0.0
    return -torch.nn.functional.logsigmoid(scores[pos] - scores[neg]).mean()


# ----------------------------------------------------------------------------------------------- the component
def build_prm(policy: torch.nn.Module) -> torch.nn.Module:
    """A full copy of ``policy`` with every weight trainable, in eval mode. A LoRA policy's copy keeps its adapters
    (merging them would change the log-probs by float rounding, and φ = θ must give q = 0 exactly); its base weights
    are trained too."""
    prm = copy.deepcopy(policy)
    for p in prm.parameters():
        p.requires_grad_(True)
    return prm.eval()


class ImplicitPRM:
    """OPRL's implicit PRM π_φ with its AdamW (see the module docstring)."""

    name = "implicit_prm"

    def __init__(self, policy: torch.nn.Module, cfg: ImplicitPRMConfig = ImplicitPRMConfig(), *,
                 temperature: float = 1.0, chunk_size: int = 8, key: str = "prm_logprobs"):
        if policy is None:
            raise ConfigError("the implicit PRM (credit=oprl) is initialised from the policy, but the trainer gave "
                              "no model (LearnedContext.model is None).")
        self.cfg = cfg
        self.policy = policy
        self.model = build_prm(policy)
        self.optimizer = torch.optim.AdamW(list(self.model.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.temperature = float(temperature)
        self.chunk_size = max(1, int(chunk_size))
        self.key = key
        self.updates = 0

    # ------------------------------------------------------------------------------------------ hooks
    def before_credit(self, batch: GroupBatch, step: int) -> dict[str, float]:
        """Rescore ``batch.old_logprobs`` (``rescore_old``), then write π_φ's log-probs into
        ``batch.token_features[key]`` (after the DPO step with ``update="before"``)."""
        m: dict[str, float] = {}
        if self.cfg.rescore_old:
            t0 = time.perf_counter()
            old = self.logprobs(self.policy, batch)
            if batch.old_logprobs is not None:
                m["prm_rescore_diff"] = float((old - batch.old_logprobs).abs().max()) if old.numel() else 0.0
            batch.old_logprobs = old
            m["prm_rescore_s"] = time.perf_counter() - t0
        if self.cfg.update == "before":
            t0 = time.perf_counter()
            lp = self.logprobs(self.model, batch)
            m["prm_score_s"] = time.perf_counter() - t0
            m |= self.dpo_step(batch, lp)
        t0 = time.perf_counter()
        lp = self.logprobs(self.model, batch)
        batch.token_features[self.key] = lp
        m["prm_score_s"] = m.get("prm_score_s", 0.0) + time.perf_counter() - t0
        if batch.old_logprobs is not None and lp.numel():
            m["prm_logratio_absmax"] = float((lp - batch.old_logprobs).abs().max())
        return m

    def after_credit(self, batch: GroupBatch, out: Any, step: int) -> dict[str, float]:
        """The DPO step on the step's batch (``update="after"``; nothing with ``"before"``)."""
        if self.cfg.update != "after":
            return {}
        return self.dpo_step(batch, batch.token_features[self.key])

    # ------------------------------------------------------------------------------------------ pieces
    def logprobs(self, model: torch.nn.Module, batch: GroupBatch) -> Tensor:
        """``[B, L]`` teacher-forced log-probs of ``softmax(logits / T)`` on policy tokens, 0 elsewhere."""
        lp = batch_logprobs(model, batch, chunk_size=self.chunk_size, temperature=self.temperature)
        return torch.where(batch.action_mask, lp, torch.zeros_like(lp))

    def scores(self, batch: GroupBatch, prm_logprobs: Tensor) -> Tensor:
        """``s[B]`` (float64) of every row from π_φ's and the behaviour log-probs."""
        if batch.old_logprobs is None:
            raise CreditError("the implicit PRM (ImplicitPRM) DPO update needs batch.old_logprobs; the batch has none.")
        d = torch.where(batch.action_mask, prm_logprobs.double() - batch.old_logprobs.double(),
                        torch.zeros_like(prm_logprobs, dtype=torch.float64))
        return trajectory_scores(d, batch.turn_mask, self.cfg.beta, self.cfg.traj_score)

    def dpo_step(self, batch: GroupBatch, prm_logprobs: Tensor) -> dict[str, float]:
        """One AdamW step of the trajectory DPO loss; skipped (parameters untouched) without a pair."""
        t0 = time.perf_counter()
        s = self.scores(batch, prm_logprobs)  # [B]
        pos, neg = dpo_pairs(batch.outcome, batch.group_index, self.cfg.positive_threshold)
        m = {"prm_pairs": float(pos.numel()), "prm_s": float(s.mean()) if s.numel() else 0.0}
        if pos.numel() == 0:
            return m | {"prm_loss": 0.0, "prm_margin": 0.0, "prm_acc": 0.0, "prm_grad_norm": 0.0,
                        "prm_update_s": time.perf_counter() - t0}
        s_leaf = s.detach().clone().requires_grad_(True)
        loss = dpo_loss(s_leaf, pos, neg)
        (g,) = torch.autograd.grad(loss, s_leaf)  # [B] ∂L/∂s_i
        margin = s[pos] - s[neg]
        # ∂s_i/∂φ = β/n_i Σ_t ∂ℓ^φ_{i,t}/∂φ (n_i = 1 or T_i): back-propagate Σ_i g_i s_i one chunk at a time
        norm = batch.turn_mask.sum(1).clamp(min=1).double() if self.cfg.traj_score == "mean" else torch.ones_like(g)
        coef = g * self.cfg.beta / norm  # [B]
        rows = torch.nonzero(g != 0, as_tuple=True)[0]
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer.zero_grad(set_to_none=True)
        for chunk in iter_chunks(batch, rows, self.chunk_size):
            mask = batch.action_mask[chunk.rows, : chunk.length]  # [b, l]
            lp, _, _ = chunk_logprobs(self.model, chunk, temperature=self.temperature, mask=mask)
            surrogate = (coef[chunk.rows].to(lp.dtype) * (lp * mask).sum(1)).sum()
            surrogate.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        return m | {"prm_loss": float(loss.detach()), "prm_margin": float(margin.mean()),
                    "prm_acc": float((margin > 0).double().mean()), "prm_grad_norm": float(grad_norm),
                    "prm_update_s": time.perf_counter() - t0}

    # ------------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """π_φ's weights, its AdamW state and the update count (``torch.load(weights_only=True)``-loadable)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "updates": self.updates, "config": dataclasses.asdict(self.cfg)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output (weights and optimizer state)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state.get("updates", 0))


@register_learned("implicit_prm", ImplicitPRMConfig)
def implicit_prm(ctx: LearnedContext) -> ImplicitPRM:
    """Build the PRM from the trainer's context: π_φ ← a copy of ``ctx.model``; β follows ``credit.beta`` unless
    ``signals.beta`` is set; the log-prob key follows ``credit.prm_logprob_key``."""
    from turngym.credit.oprl import OPRLConfig

    cfg = ctx.options_for(ImplicitPRMConfig)
    if ctx.async_rollouts and cfg.rescore_old:
        raise ConfigError("credit=oprl with async rollouts (max_staleness > 0) and signals.rescore_old=true: "
                          "re-scoring the old log-probs would replace the behaviour policy's with the learner's, "
                          "and the ratio would be wrong. Fix: signals.rescore_old=false, or max_staleness=0.")
    if "beta" not in ctx.options:
        cfg = dataclasses.replace(cfg, beta=float(ctx.credit_options.get("beta", OPRLConfig.beta)))
    key = str(ctx.credit_options.get("prm_logprob_key", OPRLConfig.prm_logprob_key))
    return ImplicitPRM(ctx.model, cfg, temperature=ctx.temperature, chunk_size=ctx.chunk_size, key=key)
