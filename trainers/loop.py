"""The one training loop. GRPO, PPO and the multi-agent trainer plug in as an `Algorithm` (`grpo.GRPO`, `ppo.PPO`,
`multi.Multi`): its methods are the only places they differ, and its defaults are the one-policy trainers'.

`train` reads top to bottom:

1. **Checks before any work**: the credit method exists, the algorithm accepts the config (`Algorithm.check`), and
   with ``--resume`` every checkpoint file is verified (``ResumeError`` before anything is written).
2. **Setup** (`Algorithm.setup`): model, tokenizer and env (multi-agent: a learner per role, or one), NaN guard,
   run log.
3. **Resume or warm start**: a fresh run warm-starts (`Algorithm.warm_start`: SFT on the scripted expert); then
   the algorithm builds what a checkpoint holds and its optimizer (`Algorithm.build`: the policy alone for GRPO,
   policy + critic for PPO, every learner and the self-play pool for multi-agent); a resumed run restores them
   (`Algorithm.restore`), a fresh one evaluates the held-out tasks (`Algorithm.evaluate`) and writes checkpoint 0
   (`Algorithm.state`). The credit method's learned signal components (`turngym.trainers.learned`: OPRL's PRM,
   LaRe's decoder) are built here too and travel in every checkpoint. The vLLM sampler starts from the weights
   either way; the KL reference is the policy as it entered RL (`kl_reference`); then the signal providers
   (`Algorithm.providers`).
4. **Steps**: `Algorithm.step` (rollout, signals, credit, update) returns the step's trajectories and metrics;
   the loop logs them, evaluates every ``eval_every`` steps and checkpoints every ``checkpoint_every`` steps.
   With ``max_staleness > 0`` a background producer samples ahead (`AsyncRollout`).
5. **End**: final evaluation and checkpoint, what the algorithm leaves (`Algorithm.finish`: the multi-agent
   learners' final weights), the summary, the report, one console line (`Algorithm.headline`).

GRPO takes every default but `build` and `step`; PPO's critic lives in those two. `multi.Multi` overrides the rest
and refuses in `check` what this loop would run for one policy (a KL reference, data parallel, Ray rollout workers,
learned components; the config refuses vLLM sampling and async rollouts for it).

Data parallel (``torchrun --nproc_per_node N -m turngym train``, `turngym.trainers.dp`): the marked ``dist`` calls
join the process group, build the model on rank 0 first, wrap the policy after the warm start or the restore, and
keep rank 0 the only writer (run log, evaluations, checkpoints, KL reference, report); every rank runs every
step on its share of the task groups. ``dist`` is None on the plain single-process path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from turngym.credit import CREDIT
from turngym.trainers import batch_signals, dp, learned, policy_setup, sampling
from turngym.trainers.async_rollout import AsyncRollout
from turngym.trainers.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng,
    load_reference,
    resume_checkpoint,
    save_checkpoint,
    save_reference,
)
from turngym.trainers.config import TrainConfig
from turngym.trainers.nanguard import NanGuard
from turngym.trainers.report import write_report
from turngym.trainers.runlog import RunLog


@dataclass
class State:
    """What a checkpoint holds of an algorithm (`Algorithm.state`), besides the loop's own bookkeeping (NaN guard,
    held-out results before RL, run log offsets, learned components)."""

    model: torch.nn.Module
    """Every trained module as one ``state_dict`` (``model.pt``)."""
    optimizer: Any
    """Anything with ``state_dict`` / ``load_state_dict`` (``optimizer.pt``)."""
    trainable_only: bool = False
    """Save only the tensors with ``requires_grad`` (LoRA adapters)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More JSON-able state for ``state.json``'s ``extra``."""


class Algorithm:
    """What an algorithm adds to the shared loop. Every method but `build` and `step` has a default: the one-policy
    trainers' (GRPO, PPO)."""

    def check(self, cfg: TrainConfig) -> None:
        """Raise `ConfigError` for a config this algorithm cannot train, before any work."""

    def setup(self, cfg: TrainConfig, dist: dp.DataParallel | None) -> policy_setup.Setup:
        """Model, tokenizer, renderer and sampler (`policy_setup.setup`; under ``dist`` rank 0 builds first)."""
        return policy_setup.setup(cfg) if dist is None else dist.setup(cfg)

    def warm_start(self, cfg: TrainConfig, s: policy_setup.Setup, log) -> dict[str, float]:
        """A fresh run's warm start before RL (`policy_setup.warm_start` when ``sft_steps > 0``); its summary
        metrics, ``{}`` when there was none. ``log(metrics)`` gets its progress."""
        return policy_setup.warm_start(cfg, s, log) if cfg.sft_steps > 0 else {}

    def build(self, cfg: TrainConfig, s: policy_setup.Setup) -> tuple[torch.nn.Module, Any]:
        """After the warm start: the module a checkpoint holds and restores, and the optimizer over it."""
        raise NotImplementedError

    def restore(self, cfg: TrainConfig, ckpt: Checkpoint, modules: torch.nn.Module, optimizer: Any) -> None:
        """Load a resumed checkpoint into `build`'s ``modules`` and ``optimizer`` (and the global RNGs)."""
        ckpt.restore(modules, optimizer)

    def state(self, cfg: TrainConfig, modules: torch.nn.Module, optimizer: Any) -> State:
        """What a checkpoint holds now: `build`'s ``modules`` and ``optimizer`` (with LoRA, the adapters only)."""
        return State(modules, optimizer, trainable_only=cfg.lora)

    def providers(self, cfg: TrainConfig, s: policy_setup.Setup, run_dir) -> list:
        """The signal providers the credit method declares (`batch_signals.signal_providers`), handed to `step`."""
        return batch_signals.signal_providers(cfg, s, run_dir=run_dir)

    def evaluate(self, cfg: TrainConfig, s: policy_setup.Setup) -> tuple[dict[str, float], list]:
        """Held-out evaluation (`sampling.evaluate`): its ``eval/*`` metrics and trajectories."""
        return sampling.evaluate(cfg, s)

    def step(self, cfg: TrainConfig, s: policy_setup.Setup, optimizer: Any, step: int, providers: list,
             guard: NanGuard, ref_model: Any, producer: AsyncRollout | None, *,
             dist: dp.DataParallel | None = None) -> tuple[list, dict[str, float]]:
        """One step (rollout, signals, credit, update): the step's trajectories and the metrics of ``step + 1``
        (under ``dist``: this rank's trajectories, the metrics of the whole step)."""
        raise NotImplementedError

    def finish(self, cfg: TrainConfig, s: policy_setup.Setup, run_dir, before: dict[str, float],
               after: dict[str, float]) -> dict[str, Any]:
        """After the final checkpoint: write what the run leaves besides its checkpoints; the keys it adds to the
        summary."""
        return {}

    def headline(self, cfg: TrainConfig, summary: dict[str, Any]) -> str:
        """The result in the run's last console line (the run directory follows)."""
        return (f"held-out success: {summary['success_before']:.3f} -> {summary['success_after']:.3f} "
                f"({cfg.eval_tasks} tasks)")


def train(cfg: TrainConfig, algo: Algorithm, *, console: Any = None) -> dict[str, Any]:
    """Run ``algo`` end to end; returns a summary (success before/after, run directory)."""
    CREDIT[cfg.credit]  # unknown method -> RegistryError before any work
    algo.check(cfg)
    dist, cfg = dp.DataParallel.start(cfg)  # DIST: torchrun's process group (None: one process, the plain path)
    main = dist is None or dist.is_main  # the rank that writes
    # --resume: every file it reads is verified first; ResumeError (exit 2) before anything is written
    ckpt = resume_checkpoint(cfg.run_dir, reference=cfg.kl_coef > 0) if cfg.resume and cfg.run_dir else None
    if dist is not None:  # DIST: every rank continues from the same step; rank 0 builds the model first
        dist.check_resume(ckpt.step if ckpt else None)
    s = algo.setup(cfg, dist)
    guard = NanGuard(max_consecutive=cfg.max_nonfinite_steps)

    # --- resume (checked above) or warm start; the algorithm's modules are built from the warm policy
    run = RunLog(cfg.run_dir, cfg, resume_step=ckpt.step if ckpt else None,
                 resume_state=ckpt.extra.get("runlog") if ckpt else None, console=console, write=main)
    if main:  # the tokenizer the run was trained with, read back by `turngym eval --model RUN_DIR`
        s.tokenizer.save_pretrained(run.run_dir / "tokenizer")
    if ckpt is None:
        sft = algo.warm_start(cfg, s, lambda m: run.log(0, m, kind="sft"))
        if sft:
            run.log(0, sft, kind="sft")
    modules, optimizer = algo.build(cfg, s)
    s.learned = learned.build_learned(cfg.credit, learned_context(cfg, s, run.run_dir))  # OPRL's PRM, LaRe's decoder
    if ckpt is not None:
        algo.restore(cfg, ckpt, modules, optimizer)
        learned.load_learned_state(s.learned, ckpt.components, where=str(ckpt.path))
        guard.load_state_dict(ckpt.extra.get("nanguard", {}))
    if dist is not None:  # DIST: rank 0's warm-started / restored weights to every rank, the policy wrapped
        dist.attach(cfg, s, optimizer, message=run.message)
    if ckpt is not None:
        start, before = ckpt.step, ckpt.extra.get("eval_before", {})
        run.message(f"resumed from {ckpt.path} at step {start}")
        policy_setup.start_sampler(cfg, s, run.run_dir, message=run.message)  # vLLM: engine from the resumed weights
    else:
        start = 0
        policy_setup.start_sampler(cfg, s, run.run_dir, message=run.message)  # vLLM: engine from the warm weights
        before, trajs = algo.evaluate(cfg, s) if main else ({}, [])  # DIST: rank 0 evaluates
        run.log(0, before, kind="eval")
        run.log_trajectories(0, trajs, kind="eval")
        checkpoint(cfg, run, algo.state(cfg, modules, optimizer), 0, guard, before, s.learned, dist=dist)
    ref_model = kl_reference(cfg, run, s.model, resumed=ckpt is not None)  # the policy only, stored once per run
    providers = algo.providers(cfg, s, run.run_dir)

    # async rollouts (max_staleness > 0): a background producer samples ahead with a behaviour copy
    producer = AsyncRollout.from_config(cfg, s, start_step=start) if cfg.max_staleness > 0 else None
    try:
        for step in range(start, cfg.steps):
            # --- rollout, signals, credit, update: one algorithm step
            trajs, metrics = algo.step(cfg, s, optimizer, step, providers, guard, ref_model, producer,
                                       **({"dist": dist} if dist is not None else {}))

            # --- log, evaluate, checkpoint
            run.log(step + 1, metrics)
            run.log_trajectories(step + 1, trajs)
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps and main:
                run.log(step + 1, algo.evaluate(cfg, s)[0], kind="eval")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                checkpoint(cfg, run, algo.state(cfg, modules, optimizer), step + 1, guard, before, s.learned,
                           dist=dist)
    finally:
        if producer is not None:
            producer.close()

    # --- final evaluation, checkpoint, what the algorithm leaves, report
    after, trajs = algo.evaluate(cfg, s) if main else ({}, [])  # DIST: rank 0 evaluates
    run.log(cfg.steps, after, kind="eval")
    run.log_trajectories(cfg.steps, trajs, kind="eval")
    checkpoint(cfg, run, algo.state(cfg, modules, optimizer), cfg.steps, guard, before, s.learned, dist=dist)
    summary = {"run_dir": str(run.run_dir), "success_before": before.get("eval/success"),
               "success_after": after.get("eval/success"), "steps": cfg.steps, "credit": cfg.credit}
    summary |= algo.finish(cfg, s, run.run_dir, before, after)
    if cfg.report and main:
        summary["report"] = str(write_report(run.run_dir, cfg, summary))
    if main:
        run.message(f"{algo.headline(cfg, summary)}; run directory {run.run_dir}")
    run.close()
    if dist is not None:  # DIST: every rank meets, then leaves the process group
        dist.finish()
    if cfg.rollout_backend == "ray":
        from turngym.agents.ray_rollout import close_pools

        close_pools()
    return summary


def frozen_copy(model):
    """A frozen copy of the policy for the KL reference."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def kl_reference(cfg: TrainConfig, run: RunLog, model, *, resumed: bool):
    """The frozen KL reference, or None when ``kl_coef == 0``: the policy as the run entered RL (after the warm
    start), stored once per run in ``run_dir/reference/`` and read back on resume, so a resumed run is regularised
    towards the same weights as an uninterrupted one, never towards the weights it resumed from.

    A fresh run (``resumed=False``) stores ``model``'s weights; a resumed run loads the stored ones into a frozen copy
    of ``model``, or, when there are none (a run begun with ``kl_coef=0`` or by an older turngym), stores its resumed
    weights for itself and later resumes and says so. With LoRA only the adapters are stored, as in checkpoints: the
    copy keeps the frozen base weights.
    """
    if cfg.kl_coef <= 0:
        return None
    state = load_reference(run.run_dir) if resumed else None
    if state is None:
        if resumed:
            run.message(f"no stored KL reference in {run.run_dir}: the resumed weights become the reference "
                        "(stored now, for later resumes)")
        if run.writes:  # rank 0 of a data-parallel run
            save_reference(run.run_dir, model, trainable_only=cfg.lora)
    ref = frozen_copy(model)
    if state is not None:
        _, unexpected = ref.load_state_dict(state, strict=not cfg.lora)
        if unexpected:
            raise CheckpointError(f"the stored KL reference in {run.run_dir} has tensors the model lacks: "
                                  f"{sorted(unexpected)[:5]}; was it saved with another model or LoRA setting?")
    return ref


def checkpoint(cfg: TrainConfig, run: RunLog, state: State, step: int, guard: NanGuard, before: dict,
               components: list | None = None, *, dist: dp.DataParallel | None = None) -> None:
    """Atomic checkpoint of the algorithm's ``state`` with everything `--resume` needs (the NaN guard's counters,
    the run log's byte offsets and the learned signal components included). Data parallel (``dist``): called on
    every rank; the full state (FSDP2's sharded optimizer state gathered first) is written by rank 0 alone."""
    if dist is not None:
        dist.gather_optimizer(state.optimizer)
        if not run.writes:
            dist.release_optimizer(state.optimizer)
            return
    run.sync()
    save_checkpoint(
        run.run_dir, step, model=state.model, optimizer=state.optimizer, data_state={"next_step": step}, config=cfg,
        keep=cfg.keep_checkpoints, trainable_only=state.trainable_only, rng=capture_rng(),
        extra={"nanguard": guard.state_dict(), "eval_before": before, "runlog": run.state_dict(), **state.extra},
        components=learned.learned_state(components or []),
    )
    if dist is not None:
        dist.release_optimizer(state.optimizer)


def learned_context(cfg: TrainConfig, s: policy_setup.Setup, run_dir) -> learned.LearnedContext:
    """What a learned signal component gets from the trainer (`turngym.trainers.learned.LearnedContext`)."""
    return learned.LearnedContext(
        method=cfg.credit, options=dict(cfg.signal_overrides), credit_options=dict(cfg.credit_overrides),
        model=s.model, tokenizer=s.tokenizer, device=s.device, temperature=cfg.temperature,
        chunk_size=cfg.update_chunk_rows or 8, run_dir=run_dir, seed=cfg.seed, async_rollouts=cfg.max_staleness > 0)
