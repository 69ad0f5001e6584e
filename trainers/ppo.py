"""PPO for multi-turn agents: a critic, GAE (or BAD) over policy tokens only, clipped surrogate + value loss.

Algorithm (one step):

1. **Rollout**: ``tasks_per_step`` task seeds, ``group_size`` trajectories each, sampled by the current policy
   through the rollout engine (token-in/token-out: the trainer sees exactly the sampled ids and log-probs).
2. **Signals**: the providers the credit method needs (none for ``gae``; per-turn rewards named in
   ``credit_overrides.turn_reward_signals`` come from `batch_signals.signal_providers`).
3. **Values**: the critic scores every response token of the batch with the behaviour-time weights
   (``V_old [B, L]``, `turngym.trainers.critic`): ``critic="head"`` is a linear head on the policy's final hidden
   state, ``critic="separate"`` a copy of the policy's network with its own head. Only policy tokens are read.
4. **Credit**: ``gae`` (spec §3.2) or ``ppo-bad`` (spec §9.5, POAD/BAD: no discount inside a turn, ``gamma`` once
   per turn crossing) from ``credit/gae.py``: token rewards (outcome on the last policy token, optional per-turn
   rewards, optional ``-kl_coef * k`` per token when ``kl_in_reward``), TD errors over policy tokens only
   (observation tokens are skipped, not zero-reward steps), advantages whitened over the batch's policy tokens,
   returns ``A + V_old`` as critic targets.
5. **Update**: ``ppo_epochs`` passes of minibatch updates (`turngym.trainers.update`): clipped surrogate with
   dual clip, plus ``value_coef`` x the clipped value loss ``½ max((V - Ret)², (clip(V, V_old ± value_clip) -
   Ret)²)`` on policy tokens. One AdamW steps the policy (``lr``) and the critic (``critic_lr``) together.
6. **Log, evaluate, checkpoint**: as GRPO (metrics JSONL/TensorBoard, held-out evaluation, atomic checkpoints
   that hold the policy and the critic, ``--resume``).

Before step 1 of a fresh run: the same SFT warm start and held-out evaluation as GRPO; the critic is built after
the warm start (the separate critic starts from the warm-started policy).

Departures from PPO (Schulman et al., 2017) and its RLHF form (Ouyang et al. / verl):

* A step is one *token* of a policy turn, and observation tokens are skipped by the GAE recursion, so ``gamma``
  and ``gae_lambda`` apply once per policy token (verl's multi-turn GAE); defaults ``gamma = gae_lambda = 1``
  (verl) instead of the paper's 0.99 / 0.95.
* Rewards are sparse: the outcome sits on the last policy token; there is no learned reward model.
* KL to a frozen reference is optional (``kl_coef``), as a loss term or, with ``kl_in_reward``, as a per-token
  reward penalty (InstructGPT style); off by default. The reference is the policy after the warm start, stored
  once per run in ``run_dir/reference/`` (`loop.kl_reference`), so a resumed run keeps it.
* Clip-higher (``eps_high``) and dual clip are available; the ``ppo`` / ``ppo-bad`` presets set
  ``eps_high = eps_low = 0.2``.
* The value head shares the policy's trunk by default, with its own learning rate; its gradient reaches the trunk
  through ``value_coef`` (the paper's shared-parameter variant). ``critic="separate"`` is verl's separate critic.
* With ``generation_backend="hf"`` the sampler is the policy itself in process, so there is no weight sync; with
  ``"vllm"`` the engine is built after the warm start and gets the weights after every update, as in GRPO.
* Data parallel (torchrun, several processes) is refused before any work: the critic's gradients are not
  synchronised (`turngym.trainers.dp`); on one process ``learner_parallel`` changes nothing for PPO.
* Async rollouts (``max_staleness > 0``): as in GRPO, batches come from a background producer up to
  ``max_staleness`` versions behind; the ratio uses the behaviour log-probs, but the values ``V_old`` are the
  learner's current critic at admission time, not the behaviour-time critic.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from turngym.credit import CREDIT, assign_credit
from turngym.errors import ConfigError
from turngym.trainers import learned, loop, policy_setup
from turngym.trainers.async_rollout import AsyncRollout
from turngym.trainers.config import VALUE_CREDITS, TrainConfig
from turngym.trainers.critic import Critic, build_critic
from turngym.trainers.grpo import rollout_batch, step_perf, update_and_sync, zero_var_groups
from turngym.trainers.nanguard import NanGuard


class PPO(loop.Algorithm):
    """PPO's part of the shared loop (`turngym.trainers.loop`): a critic built after the warm start, saved and
    restored with the policy, one AdamW over both, and a step that scores ``V_old`` before the credit."""

    def __init__(self) -> None:
        self.critic: Critic | None = None
        self.credit_cfg: dict[str, Any] = {}

    def check(self, cfg: TrainConfig) -> None:
        if cfg.credit not in VALUE_CREDITS and cfg.credit_overrides.get("advantage") != "gae":
            raise ConfigError(
                f"algo=ppo trains a critic for a value-based credit method ({', '.join(sorted(VALUE_CREDITS))}); "
                f"got credit={cfg.credit!r}. Fix: credit=gae (or ppo-bad), a reward-shaping method with "
                f"credit.advantage=gae (calm, lare), or algo=grpo for {cfg.credit!r}."
            )

    def build(self, cfg: TrainConfig, s: policy_setup.Setup) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        self.critic = build_critic(cfg.critic, s.model)  # after the warm start: a separate critic copies it
        self.credit_cfg = credit_options(cfg)
        modules = torch.nn.ModuleDict({"policy": s.model, "critic": self.critic})  # what a checkpoint holds
        return modules, make_optimizer(cfg, s.model, self.critic)

    def step(self, cfg: TrainConfig, s: policy_setup.Setup, optimizer: torch.optim.Optimizer, step: int, providers: list,
             guard: NanGuard, ref_model, producer: AsyncRollout | None, *,
             dist: Any = None) -> tuple[list, dict[str, float]]:
        if dist is not None and dist.info.distributed:  # refused before any work (`dp.check_launch`)
            raise ConfigError("algo=ppo under several processes: its critic is not synchronised. Fix: algo=grpo.")
        t_step = time.perf_counter()

        # --- 1. rollout, 2. signals, 3. batch with behaviour (and reference) log-probs
        trajs, batch, metrics = rollout_batch(cfg, s, step, providers, ref_model, producer)

        # --- 4. values of the critic before this update (V_old), credit (GAE / BAD over policy tokens)
        t0 = time.perf_counter()
        batch.values = self.critic.batch_values(s.model, batch)  # [B, L], 0 off policy tokens
        metrics |= learned.before_credit(s.learned, batch, step)  # e.g. LaRe's decoded rewards
        out = assign_credit(cfg.credit, batch, **self.credit_cfg)
        metrics |= learned.after_credit(s.learned, batch, out, step)
        metrics["perf/credit_s"] = time.perf_counter() - t0
        metrics |= {f"credit/{k}": v for k, v in out.diagnostics.items()}
        metrics["rollout/zero_var_groups"] = zero_var_groups(batch)

        # --- 5. update: clipped surrogate + value loss (skipped when advantages are not finite), weight sync
        metrics |= update_and_sync(cfg, s, optimizer, batch, out, guard, step, producer, critic=self.critic)
        metrics |= step_perf(trajs, batch, metrics, optimizer, t_step, guard, step)
        return trajs, metrics

    def finish(self, cfg: TrainConfig, s: policy_setup.Setup, run_dir, before: dict[str, float],
               after: dict[str, float]) -> dict[str, Any]:
        return {"algo": "ppo", "critic": cfg.critic}


def train(cfg: TrainConfig, *, console: Any = None) -> dict[str, Any]:
    """Run PPO end to end; returns a summary (success before/after, run directory)."""
    return loop.train(cfg, PPO(), console=console)


def make_optimizer(cfg: TrainConfig, policy: torch.nn.Module, critic: Critic) -> torch.optim.Optimizer:
    """One AdamW with two parameter groups: the policy's trainable weights (``lr``) and the critic's
    (``critic_lr``, default ``lr``). For ``critic="head"`` the critic group is the head alone."""
    own = {id(p) for p in policy.parameters()}
    critic_params = [p for p in critic.parameters() if p.requires_grad and id(p) not in own]
    return torch.optim.AdamW(
        [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.lr},
         {"params": critic_params, "lr": cfg.critic_lr if cfg.critic_lr is not None else cfg.lr}],
        lr=cfg.lr, weight_decay=cfg.weight_decay,
    )


def credit_options(cfg: TrainConfig) -> dict[str, Any]:
    """Credit-config overrides from the trainer's fields (``gamma``, ``gae_lambda``, KL-in-reward), then
    ``credit_overrides`` on top (an explicit ``credit_overrides.gamma`` wins)."""
    opts: dict[str, Any] = {"gamma": cfg.gamma, "lam": cfg.gae_lambda}
    if cfg.kl_in_reward:
        opts |= {"kl_coef": cfg.kl_coef, "kl_type": cfg.kl_type.rstrip("+")}
    if cfg.credit not in VALUE_CREDITS:  # a reward-shaping method with advantage=gae: only the options it has
        fields = {f.name for f in dataclasses.fields(CREDIT[cfg.credit].config_cls)}
        opts = {k: v for k, v in opts.items() if k in fields}
    return opts | dict(cfg.credit_overrides)
