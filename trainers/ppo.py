"""PPO for multi-turn agents: a critic, GAE (or BAD) over policy tokens only, clipped surrogate + value loss.

Algorithm (one step):

1. **Rollout**: ``tasks_per_step`` task seeds, ``group_size`` trajectories each, sampled by the current policy
   through the rollout engine (token-in/token-out: the trainer sees exactly the sampled ids and log-probs).
2. **Signals**: the providers the credit method needs (none for ``gae``; per-turn rewards named in
   ``credit_overrides.turn_reward_signals`` come from `common.signal_providers`).
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
  once per run in ``run_dir/reference/`` (`grpo.kl_reference`), so a resumed run keeps it.
* Clip-higher (``eps_high``) and dual clip are available; the ``ppo`` / ``ppo-bad`` presets set
  ``eps_high = eps_low = 0.2``.
* The value head shares the policy's trunk by default, with its own learning rate; its gradient reaches the trunk
  through ``value_coef`` (the paper's shared-parameter variant). ``critic="separate"`` is verl's separate critic.
* With ``generation_backend="hf"`` the sampler is the policy itself in process, so there is no weight sync; with
  ``"vllm"`` the engine is built after the warm start and gets the weights after every update, as in GRPO.
* Async rollouts (``max_staleness > 0``): as in GRPO, batches come from a background producer up to
  ``max_staleness`` versions behind; the ratio uses the behaviour log-probs, but the values ``V_old`` are the
  learner's current critic at admission time, not the behaviour-time critic.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from turngym.credit import CREDIT, assign_credit
from turngym.errors import ConfigError
from turngym.trainers import common
from turngym.trainers.async_rollout import AsyncRollout
from turngym.trainers.checkpoint import resume_checkpoint
from turngym.trainers.config import VALUE_CREDITS, TrainConfig
from turngym.trainers.critic import Critic, build_critic
from turngym.trainers.grpo import (
    checkpoint,
    kl_reference,
    rollout_batch,
    step_perf,
    update_and_sync,
    zero_var_groups,
)
from turngym.trainers.nanguard import NanGuard
from turngym.trainers.report import write_report
from turngym.trainers.runlog import RunLog


def train(cfg: TrainConfig, *, console: Any = None) -> dict[str, Any]:
    """Run PPO end to end; returns a summary (success before/after, run directory)."""
    CREDIT[cfg.credit]  # unknown method -> RegistryError before any work
    if cfg.credit not in VALUE_CREDITS:
        raise ConfigError(
            f"algo=ppo trains a critic for a value-based credit method ({', '.join(sorted(VALUE_CREDITS))}); "
            f"got credit={cfg.credit!r}. Fix: credit=gae (or ppo-bad), or algo=grpo for {cfg.credit!r}."
        )
    # --resume: every file it reads is verified first; ResumeError (exit 2) before anything is written
    ckpt = resume_checkpoint(cfg.run_dir, reference=cfg.kl_coef > 0) if cfg.resume and cfg.run_dir else None
    s = common.setup(cfg)
    guard = NanGuard(max_consecutive=cfg.max_nonfinite_steps)

    # --- resume (checked above) or warm start (the critic is built after the warm start, from the warm policy)
    run = RunLog(cfg.run_dir, cfg, resume_step=ckpt.step if ckpt else None,
                 resume_state=ckpt.extra.get("runlog") if ckpt else None, console=console)
    if ckpt is None and cfg.sft_steps > 0:
        sft = common.warm_start(cfg, s, lambda m: run.log(0, m, kind="sft"))
        run.log(0, sft, kind="sft")
    critic = build_critic(cfg.critic, s.model)
    optimizer = make_optimizer(cfg, s.model, critic)
    modules = torch.nn.ModuleDict({"policy": s.model, "critic": critic})  # what a checkpoint holds
    if ckpt is not None:
        ckpt.restore(modules, optimizer)
        guard.load_state_dict(ckpt.extra.get("nanguard", {}))
        start, before = ckpt.step, ckpt.extra.get("eval_before", {})
        run.message(f"resumed from {ckpt.path} at step {start}")
        common.start_sampler(cfg, s, run.run_dir, message=run.message)  # vLLM: engine from the resumed weights
    else:
        start = 0
        common.start_sampler(cfg, s, run.run_dir, message=run.message)  # vLLM: engine from the warm weights
        before, trajs = common.evaluate(cfg, s)
        run.log(0, before, kind="eval")
        run.log_trajectories(0, trajs, kind="eval")
        checkpoint(cfg, run, modules, optimizer, 0, guard, before)
    ref_model = kl_reference(cfg, run, s.model, resumed=ckpt is not None)  # the policy only, stored once per run
    providers = common.signal_providers(cfg, s)
    credit_cfg = credit_options(cfg)

    # async rollouts (max_staleness > 0): a background producer samples ahead with a behaviour copy
    producer = AsyncRollout.from_config(cfg, s, start_step=start) if cfg.max_staleness > 0 else None
    try:
        for step in range(start, cfg.steps):
            t_step = time.perf_counter()

            # --- 1. rollout, 2. signals, 3. batch with behaviour (and reference) log-probs
            trajs, batch, metrics = rollout_batch(cfg, s, step, providers, ref_model, producer)

            # --- 4. values of the critic before this update (V_old), credit (GAE / BAD over policy tokens)
            t0 = time.perf_counter()
            batch.values = critic.batch_values(s.model, batch)  # [B, L], 0 off policy tokens
            out = assign_credit(cfg.credit, batch, **credit_cfg)
            metrics["perf/credit_s"] = time.perf_counter() - t0
            metrics |= {f"credit/{k}": v for k, v in out.diagnostics.items()}
            metrics["rollout/zero_var_groups"] = zero_var_groups(batch)

            # --- 5. update: clipped surrogate + value loss (skipped when advantages are not finite), weight sync
            metrics |= update_and_sync(cfg, s, optimizer, batch, out, guard, step, producer, critic=critic)

            # --- 6. log, evaluate, checkpoint
            metrics |= step_perf(trajs, batch, metrics, optimizer, t_step, guard, step)
            run.log(step + 1, metrics)
            run.log_trajectories(step + 1, trajs)
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                run.log(step + 1, common.evaluate(cfg, s)[0], kind="eval")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                checkpoint(cfg, run, modules, optimizer, step + 1, guard, before)
    finally:
        if producer is not None:
            producer.close()

    # --- final evaluation, checkpoint and report
    after, trajs = common.evaluate(cfg, s)
    run.log(cfg.steps, after, kind="eval")
    run.log_trajectories(cfg.steps, trajs, kind="eval")
    checkpoint(cfg, run, modules, optimizer, cfg.steps, guard, before)
    summary = {"run_dir": str(run.run_dir), "success_before": before.get("eval/success"),
               "success_after": after.get("eval/success"), "steps": cfg.steps, "credit": cfg.credit,
               "algo": "ppo", "critic": cfg.critic}
    if cfg.report:
        summary["report"] = str(write_report(run.run_dir, cfg, summary))
    run.message(
        f"held-out success: {summary['success_before']:.3f} -> {summary['success_after']:.3f} "
        f"({cfg.eval_tasks} tasks); run directory {run.run_dir}"
    )
    run.close()
    return summary


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
    return opts | dict(cfg.credit_overrides)
