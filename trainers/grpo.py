"""GRPO for multi-turn agents, with any registered credit method.

Algorithm (one step):

1. **Rollout**: ``tasks_per_step`` task seeds, ``group_size`` trajectories each (same seed = same task), sampled
   by the current policy through the rollout engine (token-in/token-out: the trainer sees exactly the ids and
   log-probs the sampler produced).
2. **Signals**: the providers the credit method needs (gold-answer probe for IGPO/A²TGPO, tool-call matching for
   MatchTIR, answer clusters and support for SIOP, step judges for SLATE), run with the behaviour policy.
3. **Credit**: ``CREDIT[cfg.credit]`` maps the `GroupBatch` to token advantages, an optional per-token clip scale
   and the ratio level the method expects.
4. **Update**: ``ppo_epochs`` passes of minibatch clipped-surrogate updates (`turngym.trainers.update`), optional
   KL to a frozen reference (the policy after the warm start, stored once per run in ``run_dir/reference/``, so a
   resumed run keeps the same reference), entropy bonus.
5. **Log, evaluate, checkpoint**: metrics JSONL/TensorBoard, held-out evaluation every ``eval_every`` steps,
   atomic checkpoints every ``checkpoint_every`` steps; ``--resume`` continues from the last good one.

`train_step` is steps 1-4 (one call per step, public for benchmarks and custom loops); `train` runs it inside the
loop every algorithm shares (`turngym.trainers.loop`: the warm start, step 5 and the final evaluation).

Before step 1 of a fresh run: an SFT warm start on the env's noisy scripted expert (``sft_steps``) and a
held-out evaluation; after the last step: a final evaluation and a report (markdown + PNG).

Departures from the GRPO paper (DeepSeekMath): the loss aggregation defaults to ``token-mean`` (DAPO) rather
than ``seq-mean-token-mean``; KL is off by default (``kl_coef=0``, as in DAPO / Dr.GRPO); clip-higher is on
(``eps_high=0.28``); the advantage comes from the chosen credit method, of which outcome-only GRPO (``grpo``)
is one. With ``generation_backend="hf"`` the sampler is the policy itself in process, so no weight sync is
needed; with ``"vllm"`` a vLLM engine samples (`policy_setup.start_sampler`: built after the warm start from the
warm-started weights, saved to ``run_dir/sampler/``) and the learner pushes its weights into it after every
update (`policy_setup.sync_sampler`, timed as ``perf/sync_s``); evaluation samples with it too.

Async rollouts (``max_staleness = N > 0``, `turngym.trainers.async_rollout`): step 1 takes its batch from a
background producer that samples with a behaviour copy of the policy (or a Ray pool) up to N steps ahead, and
the learner pushes its weights to it after every update. The ratio's "old" policy is then the behaviour policy
that sampled the batch (its recorded log-probs, never recomputed), as in decoupled / one-step-off-policy PPO;
signals are scored with the learner's current weights. Each step logs its staleness (``async/*``).

Data parallel (``torchrun --nproc_per_node N -m turngym train``, ``dist`` a `turngym.trainers.dp.DataParallel`):
each rank rolls out its share of the step's groups (whole groups, one sampler seed per group), computes their
signals and credit, and joins the synchronised update (global token normalisation); the metrics are merged over
ranks. Departure: a credit method's batch-wide statistics (e.g. whitening over the batch) span the rank's groups.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from turngym.credit import GroupBatch, assign_credit
from turngym.credit.signals import run_providers
from turngym.trainers import batch_signals, learned, loop, policy_setup, sampling
from turngym.trainers.async_rollout import AsyncRollout
from turngym.trainers.config import TrainConfig
from turngym.trainers.forward import batch_logprobs
from turngym.trainers.nanguard import NanGuard
from turngym.trainers.update import update
from turngym.viewer import annotate

if TYPE_CHECKING:
    from turngym.trainers.dp import DataParallel


class GRPO(loop.Algorithm):
    """GRPO's part of the shared loop (`turngym.trainers.loop`): the policy alone, one AdamW, `train_step`; every
    other hook is the loop's default."""

    def build(self, cfg: TrainConfig, s: policy_setup.Setup) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        optimizer = torch.optim.AdamW([p for p in s.model.parameters() if p.requires_grad], lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        return s.model, optimizer

    def step(self, cfg: TrainConfig, s: policy_setup.Setup, optimizer: torch.optim.Optimizer, step: int, providers: list,
             guard: NanGuard, ref_model, producer: AsyncRollout | None, *,
             dist: DataParallel | None = None) -> tuple[list, dict[str, float]]:
        trajs, _, metrics = train_step(cfg, s, optimizer, step, providers, guard, ref_model=ref_model,
                                       producer=producer, dist=dist)
        return trajs, metrics


def train(cfg: TrainConfig, *, console: Any = None) -> dict[str, Any]:
    """Run GRPO end to end; returns a summary (success before/after, run directory)."""
    return loop.train(cfg, GRPO(), console=console)


def train_step(cfg: TrainConfig, s: policy_setup.Setup, optimizer: torch.optim.Optimizer, step: int, providers: list,
               guard: NanGuard, *, ref_model=None, producer: AsyncRollout | None = None,
               dist: DataParallel | None = None) -> tuple[list, GroupBatch, dict[str, float]]:
    """One GRPO step, 1-4 of the algorithm in the module docstring (rollout, signals, credit, update); the caller
    logs, evaluates and checkpoints.

    Args:
        cfg: The run's config.
        s: The trainer's `Setup`; ``s.model`` is updated in place.
        optimizer: The optimizer over ``s.model``'s trainable parameters.
        step: Steps completed before this one; picks the task seeds and the sampler seed.
        providers: Signal providers (`batch_signals.signal_providers`).
        guard: The run's `NanGuard`: non-finite advantages or loss skip the update and are counted there.
        ref_model: The frozen KL reference (`loop.kl_reference`); None when ``kl_coef == 0``.
        producer: The async rollout producer (``max_staleness > 0``): the batch comes from it, and the updated
            weights go back to it. With ``generation_backend="vllm"`` they go to ``s.policy`` (`policy_setup.sync_sampler`).
        dist: Data parallel (`turngym.trainers.dp`): this rank's groups, the synchronised update, merged metrics.

    Returns:
        ``(trajectories, batch, metrics)``: the step's trajectories (annotated for `turngym view`), its
        `GroupBatch`, and the metrics line of step ``step + 1`` (``rollout/*``, ``credit/*``, ``train/*``,
        ``nonfinite/*``, ``perf/*``, ...).
    """
    t_step = time.perf_counter()

    # --- 1. rollout, 2. signals, 3. batch with behaviour (and reference) log-probs
    if dist is None:
        trajs, batch, metrics = rollout_batch(cfg, s, step, providers, ref_model, producer)
    else:  # DIST: this rank's groups
        trajs, batch, metrics = rollout_batch(cfg, s, step, providers, ref_model, producer, dist=dist)

    # --- 4. credit
    t0 = time.perf_counter()
    batch.token_features |= batch_signals.token_features(cfg, s, batch)  # DelTA's hidden states
    metrics |= learned.before_credit(s.learned, batch, step)  # OPRL's PRM log-probs, LaRe's decoded rewards
    out = assign_credit(cfg.credit, batch, **cfg.credit_overrides)
    metrics |= learned.after_credit(s.learned, batch, out, step)  # their own training step
    annotate(trajs, batch, out, s.tokenizer, cfg.credit, limit=cfg.save_trajectories)  # for `turngym view`
    metrics["perf/credit_s"] = time.perf_counter() - t0
    metrics |= {f"credit/{k}": v for k, v in out.diagnostics.items()}
    metrics["rollout/zero_var_groups"] = zero_var_groups(batch)

    # --- 5. update (skipped when advantages are not finite), new weights to the producer and the sampler
    metrics |= update_and_sync(cfg, s, optimizer, batch, out, guard, step, producer, dist=dist)
    metrics |= step_perf(trajs, batch, metrics, optimizer, t_step, guard, step)
    return trajs, batch, metrics if dist is None else dist.merge_metrics(metrics, trajs)  # DIST: the whole step


def update_and_sync(cfg: TrainConfig, s: policy_setup.Setup, optimizer: torch.optim.Optimizer, batch: GroupBatch, out,
                    guard: NanGuard, step: int, producer: AsyncRollout | None = None, *,
                    critic=None, dist: DataParallel | None = None) -> dict[str, float]:
    """Step 5 of both trainers: the update (`turngym.trainers.update.update`, with the PPO ``critic`` when given)
    unless the advantages or the loss are not finite (``guard`` counts it), then the new weights to the async
    ``producer`` (every step, skipped or not: versions count steps) and to the sampler (`policy_setup.sync_sampler`, a
    no-op for hf; a vLLM engine in sleep mode sleeps through the update, `policy_setup.sleep_sampler`). Returns the
    ``train/*`` metrics and ``perf/update_s``, ``perf/update_cpu_s``, ``perf/sync_s``. Under ``dist`` the update is
    the data-parallel one (`DataParallel.update`), skipped on every rank when any rank's advantages are not finite."""
    t0, c0 = time.perf_counter(), time.process_time()
    metrics: dict[str, float] = {}
    policy_setup.sleep_sampler(cfg, s)  # vllm_sleep_level > 0: the engine's GPU memory to the update
    advantages = out.advantages if dist is None else dist.finite(out.advantages)  # DIST: every rank decides alike
    if guard.check(step + 1, advantages=advantages):
        if critic is not None:
            critic.train()
        if dist is None:
            metrics = update(cfg, s.model, optimizer, batch, out, critic=critic)
        else:  # DIST: the synchronised update of this rank's rows
            metrics = dist.update(cfg, s, batch, out)
            dist.sync_lr(optimizer)
        if critic is not None:
            critic.eval()
        if guard.check(step + 1, loss=metrics["train/loss"]):
            guard.step_ok()
    metrics["perf/update_s"], metrics["perf/update_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    if producer is not None:
        producer.push(s.model)
    policy_setup.sync_sampler(cfg, s)
    metrics["perf/sync_s"] = time.perf_counter() - t0
    return metrics


def step_perf(trajs: list, batch: GroupBatch, metrics: dict[str, float], optimizer: torch.optim.Optimizer,
              t_step: float, guard: NanGuard, step: int) -> dict[str, float]:
    """The end-of-step metrics of both trainers: the guard's counters, the learning rate(s) and throughput."""
    step_s = time.perf_counter() - t_step
    out = guard.metrics(step + 1) | {
        "train/lr": optimizer.param_groups[0]["lr"],
        "perf/step_s": step_s,
        "perf/tokens_per_s": float(batch.action_mask.sum()) / max(metrics["perf/rollout_s"], 1e-9),
        "perf/train_tokens_per_s": float(batch.full_attention_mask().sum()) / max(metrics["perf/update_s"], 1e-9),
        "perf/trajectories_per_s": len(trajs) / max(step_s, 1e-9),
    }
    if len(optimizer.param_groups) > 1:  # PPO's separate critic
        out["train/critic_lr"] = optimizer.param_groups[1]["lr"]
    return out


def rollout_batch(cfg: TrainConfig, s: policy_setup.Setup, step: int, providers: list, ref_model=None,
                  producer: AsyncRollout | None = None, *,
                  dist: DataParallel | None = None) -> tuple[list, GroupBatch, dict[str, float]]:
    """Steps 1-3 of both trainers: the step's trajectories (sampled now, or taken from the async ``producer``),
    their signals, and the `GroupBatch` with overlong shaping, behaviour log-probs (recomputed only when a
    synchronous sampler gave none) and reference log-probs. Under ``dist``: this rank's groups (`DataParallel.sample`)."""
    t0, c0 = time.perf_counter(), time.process_time()
    if producer is None:
        trajs, extra = sample(cfg, s, step) if dist is None else dist.sample(cfg, s, step)  # DIST: this rank's groups
        extra |= {"perf/rollout_s": time.perf_counter() - t0, "perf/rollout_cpu_s": time.process_time() - c0}
        if cfg.decode != "eager":
            extra["perf/decode_compile_s"] = float(getattr(s.policy, "decode_compile_seconds", 0.0))
    else:  # sampled in the background, at most max_staleness versions old; async/* metrics
        trajs, extra = producer.get(step)
    metrics = sampling.rollout_metrics(trajs) | extra

    t0 = time.perf_counter()
    run_providers(trajs, providers)  # current weights, before the update (the behaviour policy unless async)
    metrics["perf/signals_s"] = time.perf_counter() - t0
    for p in providers:  # a provider's own counters (judge prompts, unparseable replies, ...), if it keeps any
        if callable(getattr(p, "metrics", None)):
            metrics |= {f"signals/{p.name}/{k.rsplit('/', 1)[-1]}": float(v) for k, v in p.metrics().items()}

    t0 = time.perf_counter()
    batch = GroupBatch.from_trajectories(trajs, pad_id=s.pad_id).to(s.device)
    metrics |= batch_signals.overlong_shaping(cfg, batch)
    metrics["perf/pack_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # samplers record log softmax(logits / temperature), the policy trained: rescored only when a sampler gave none
    if batch.old_logprobs is None:
        if producer is not None:  # the current weights are not the behaviour policy: the ratio would be wrong
            raise RuntimeError("async rollouts (max_staleness > 0) need the sampler's log-probs, but some turns "
                               "have none. Fix: a sampler that records log-probs, or max_staleness=0.")
        batch.old_logprobs = batch_logprobs(s.model, batch, temperature=cfg.temperature)
    if ref_model is not None:
        batch.ref_logprobs = batch_logprobs(ref_model, batch, temperature=cfg.temperature)
    metrics["perf/logprobs_s"] = time.perf_counter() - t0
    return trajs, batch, metrics


def sample(cfg: TrainConfig, s: policy_setup.Setup, step: int) -> tuple[list, dict[str, float]]:
    """The step's trajectories; with DAPO dynamic sampling, groups whose outcomes are all equal are dropped and
    fresh tasks are sampled (at most ``dynamic_sampling_max_rounds`` rounds) until ``tasks_per_step`` groups."""
    seeds = sampling.task_seeds(cfg, step)
    trajs, stats = sampling.rollout(cfg, s, seeds, cfg.group_size, sample_seed=step_seed(cfg, step, 0), step=step)
    all_stats = [stats]
    if not cfg.dynamic_sampling:
        return trajs, rollout_parts(all_stats)
    kept, dropped, rounds = keep_informative(trajs), 0, 1
    dropped += len(seeds) - len({t.group_id for t in kept})
    while len({t.group_id for t in kept}) < cfg.tasks_per_step and rounds < cfg.dynamic_sampling_max_rounds:
        more_seeds = [int(x) for x in np.random.default_rng([cfg.seed, step, rounds]).integers(
            0, cfg.eval_seed, size=cfg.tasks_per_step)]
        more, stats = sampling.rollout(cfg, s, more_seeds, cfg.group_size, sample_seed=step_seed(cfg, step, rounds),
                                        step=step)
        all_stats.append(stats)
        fresh = keep_informative(more)
        dropped += len(more_seeds) - len({t.group_id for t in fresh})
        kept += fresh
        rounds += 1
    groups = list(dict.fromkeys(t.group_id for t in kept))[: cfg.tasks_per_step]
    kept = [t for t in kept if t.group_id in set(groups)] or trajs  # nothing informative: train on all
    return kept, rollout_parts(all_stats) | {"dapo/dropped_groups": float(dropped), "dapo/rounds": float(rounds)}


def rollout_parts(stats: list) -> dict[str, float]:
    """Where the rollout engine's wall time went (``RolloutStats`` of each sampling round, summed):
    ``perf/rollout_{generate,env,render,setup}_s``, plus the counters an agent rollout adds (``stats.extra``,
    `turngym.trainers.agent_rollout`)."""
    out = {f"perf/rollout_{part}_s": float(sum(getattr(st, f"{part}_s") for st in stats))
           for part in ("generate", "env", "render", "setup")}
    for st in stats:
        for k, v in getattr(st, "extra", {}).items():
            out[k] = max(out.get(k, 0.0), float(v)) if k.endswith("max_batch") else out.get(k, 0.0) + float(v)
    return out


def step_seed(cfg: TrainConfig, step: int, round_: int) -> int:
    """Sampler seed of a step's sampling round: a pure function of (seed, step, round)."""
    return int(np.random.default_rng([cfg.seed, step, round_, 11]).integers(2**31))


def keep_informative(trajs: list) -> list:
    """Trajectories of the groups whose outcomes are not all equal."""
    by_group: dict[str, list[float]] = {}
    for t in trajs:
        by_group.setdefault(t.group_id, []).append(t.outcome)
    return [t for t in trajs if np.ptp(by_group[t.group_id]) > 0]


def zero_var_groups(batch: GroupBatch) -> float:
    """Fraction of groups whose outcomes are all equal."""
    g, o = batch.group_index, batch.outcome.nan_to_num(0.0)
    n = int(g.max()) + 1 if g.numel() else 0
    if n == 0:
        return 0.0
    lo = torch.full((n,), float("inf")).scatter_reduce(0, g.cpu(), o.cpu(), "amin")
    hi = torch.full((n,), float("-inf")).scatter_reduce(0, g.cpu(), o.cpu(), "amax")
    return float((hi - lo <= 0).float().mean())
