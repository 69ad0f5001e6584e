"""The data-parallel learner behind ``torchrun --nproc_per_node N -m turngym train``: the glue between the one
training loop (`turngym.trainers.loop`) and the process group (`turngym.trainers.distributed`).

Data flow of one step on N ranks (GRPO):

1. **Rollout**: the step's ``tasks_per_step`` task seeds are the single-process ones (`sampling.task_seeds`);
   rank ``r`` takes groups ``r, r + N, ...`` (`sampling.rank_groups`: whole groups) and rolls out each group on its
   own with the group's own sampler seed, a pure function of (seed, step, group index). A group's trajectories
   therefore do not depend on N: one process with ``learner_parallel=ddp`` (no process group, the same per-group
   rollouts) sees exactly the batches N ranks see together (`tests/scale/test_torchrun_train.py`).
2. **Signals and credit** on the rank that holds the group (group baselines need no communication).
3. **Update**: `turngym.trainers.update.update` with ``dist``: ``minibatch_size`` is the GLOBAL minibatch, losses
   are normalised by the all-reduced token / row counts and DDP or FSDP2 synchronise the gradients, so the step is
   the single-process step on the union of the ranks' rows. The NaN guard decides on every rank's advantages.
4. **Metrics** are gathered from every rank (`DataParallel.merge_metrics`); rank 0 writes the run directory
   (metrics, trajectories of its own groups, evaluations, checkpoints, the KL reference, the report), the other
   ranks write nothing.

Start: every rank reads the same config; rank 0 builds (and caches) the model and tokenizer first, the others then
load them from the cache and check that their tokenizer is rank 0's (`DataParallel.setup`). The SFT warm start runs
identically on every rank (same seed, same demonstrations: no rank idles, nothing to send); `DataParallel.attach`
then reports any difference between ranks and broadcasts rank 0's weights before wrapping, so replicas start equal
whatever the kernels did. Evaluation runs on rank 0 alone (the other ranks wait at the next collective).

Strategies: ``ddp`` wraps the policy itself (`DistributedDataParallel`; rollouts call the wrapped module, which
shares its parameters). ``fsdp2`` shards a copy of the policy (``fully_shard``) and keeps the full policy on every
rank for sampling, evaluation and checkpoints, refreshed from the shards after every update (an all-gather, as a
vLLM sampler would be): it saves the gradient and optimizer-state memory, not the weights'.

Checkpoints hold a full state dict in the single-process format (rank 0 writes it; under FSDP2 the optimizer's
sharded state is gathered first), so a run resumes with the same or another number of processes, or with one.

Not supported under N > 1 (refused before any work by `check_launch`, exit 2): PPO (its critic is not
synchronised), the multi-agent trainer, Ray rollout workers, the vLLM sampler, async rollouts, DAPO dynamic
sampling, agent rollouts through the gateway, and credit methods with learned components (OPRL, LaRe).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from turngym.errors import ConfigError
from turngym.trainers.config import TrainConfig
from turngym.trainers.distributed import (
    DistInfo,
    all_reduce,
    broadcast_weights,
    destroy_distributed,
    full_state_dict,
    init_distributed,
    max_weight_divergence,
    wrap_model,
)

#: auto picks fsdp2 when the learner's training state (fp32 weights, gradients, two AdamW moments: 16 bytes per
#: parameter) would take more than this share of one GPU's memory.
FSDP2_SHARE = 0.4


def world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 for a plain ``python`` run)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launch_problem(cfg: TrainConfig, world: int) -> str:
    """Why ``cfg`` cannot train data parallel over ``world`` processes (``""`` when it can, or ``world == 1``)."""
    if world <= 1:
        return ""
    n = f"{world} processes (torchrun)"
    if cfg.learner_parallel == "none":
        return (f"learner_parallel=none under {n} would train {world} diverging copies. "
                "Fix: learner_parallel=auto (or ddp / fsdp2), or run one process.")
    if cfg.algo != "grpo":
        why = {"ppo": "PPO's critic is not synchronised across processes",
               "multi": "the multi-agent trainer's learners (one per role, or one with its self-play pool) are not "
                        "synchronised across processes"}[cfg.algo]
        return f"algo={cfg.algo} under {n}: {why}. Fix: algo=grpo, or run one process (`turngym train`)."
    if cfg.minibatch_size % world:
        return (f"minibatch_size={cfg.minibatch_size} is not divisible by the {n}: each rank takes "
                f"minibatch_size / {world} rows per minibatch. Fix: minibatch_size="
                f"{max(world, cfg.minibatch_size // world * world)} or another multiple of {world}.")
    if cfg.tasks_per_step < world:
        return (f"tasks_per_step={cfg.tasks_per_step} is smaller than the {n}: every rank rolls out whole task "
                f"groups, so a rank would have none. Fix: tasks_per_step={world} or more, or fewer processes.")
    clashes = {
        "rollout_backend": (cfg.rollout_backend != "local", "local"),
        "generation_backend": (cfg.generation_backend != "hf", "hf"),
        "max_staleness": (cfg.max_staleness > 0, "0"),
        "dynamic_sampling": (cfg.dynamic_sampling, "false"),
        "rollout": (cfg.rollout is not None, "none (the env's own episodes)"),
    }
    bad = [(k, fix) for k, (is_bad, fix) in clashes.items() if is_bad]
    if bad:
        given = ", ".join(f"{k}={getattr(cfg, k)!r}" for k, _ in bad)
        fixes = ", ".join(f"{k}={fix}" for k, fix in bad)
        return (f"{given} under {n}: each rank rolls out its own groups in process with the HF sampler, one batch "
                f"per step. Fix: {fixes}, or run one process.")
    learned = _learned_components(cfg.credit)
    if learned:
        return (f"credit={cfg.credit} trains learned components ({', '.join(learned)}) on each batch; under {n} "
                "each rank's copy would diverge. Fix: another credit method, or run one process.")
    if cfg.device.startswith("cuda:"):
        return (f"device={cfg.device} under {n} would put every rank on one GPU. Fix: device=auto (or cuda): each "
                "rank takes cuda:LOCAL_RANK.")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    wants_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if wants_cuda and torch.cuda.device_count() < local:
        return (f"device={cfg.device} with {local} processes on this node but {torch.cuda.device_count()} CUDA "
                "device(s): one process per GPU. Fix: --nproc_per_node <= the GPU count, or device=cpu (gloo).")
    return ""


def check_launch(cfg: TrainConfig, world: int | None = None) -> None:
    """Raise `ConfigError` (one line, the CLI exits 2 on every rank before any work) when ``cfg`` cannot train data
    parallel over ``world`` processes (default: torchrun's ``WORLD_SIZE``)."""
    msg = launch_problem(cfg, world_size() if world is None else world)
    if msg:
        raise ConfigError(msg)


def _learned_components(credit: str) -> tuple[str, ...]:
    try:
        from turngym.credit import credit_needs

        return tuple(credit_needs(credit).learned)
    except Exception:  # noqa: BLE001 - an unknown method is reported by the registry check, not here
        return ()


def resolve_strategy(cfg: TrainConfig, model: torch.nn.Module, info: DistInfo) -> str:
    """``cfg.learner_parallel``, with "auto" resolved: fsdp2 when the training state of ``model`` (16 bytes per
    trainable parameter) exceeds `FSDP2_SHARE` of this rank's GPU, else ddp."""
    if cfg.learner_parallel != "auto":
        return cfg.learner_parallel
    if info.device.type != "cuda":
        return "ddp"
    state = 16 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    return "fsdp2" if state > FSDP2_SHARE * torch.cuda.get_device_properties(info.device).total_memory else "ddp"


@dataclass
class DataParallel:
    """This rank's part of a data-parallel run (the module docstring gives the data flow).

    Attributes:
        info: Where this process sits (rank, world size, device).
        strategy: ``"ddp"`` or ``"fsdp2"`` once `attach` ran (``cfg.learner_parallel`` before).
        learner: The wrapped policy the update trains (`attach`).
        optimizer: The optimizer over ``learner``'s parameters (under ddp, the trainer's own optimizer).
    """

    info: DistInfo
    strategy: str
    learner: Any = None
    optimizer: Any = None

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    # ------------------------------------------------------------------ start

    @classmethod
    def start(cls, cfg: TrainConfig) -> tuple[DataParallel | None, TrainConfig]:
        """Join torchrun's process group when data parallelism is asked for; returns ``(None, cfg)`` for the plain
        single-process path (one process with ``learner_parallel`` auto or none).

        ``learner_parallel=ddp`` or ``fsdp2`` on ONE process runs this path without a process group: the same
        per-group rollouts as N ranks, hence the same batches (the reference the equality test compares to).
        Every rank leaves with the same ``run_dir`` (rank 0's default one when none was given) and its own device
        (``cuda:LOCAL_RANK`` made current when ``device`` is auto or cuda and CUDA is available; gloo on CPU).
        """
        world = world_size()
        if world == 1 and cfg.learner_parallel in ("auto", "none"):
            return None, cfg
        check_launch(cfg, world)
        # "auto" / "cuda" under torchrun: cuda:LOCAL_RANK becomes this process's current device (plain "cuda" and
        # the trainer's "auto" then mean it), else the CPU with gloo
        info = init_distributed(device="cpu" if cfg.device == "cpu" else "auto")
        if info.distributed and not cfg.run_dir:  # rank 0's default run directory, on every rank
            from turngym.trainers.runlog import default_run_dir

            cfg = cfg.replace(run_dir=broadcast_object(str(default_run_dir(cfg)) if info.is_main else None, info))
        return cls(info=info, strategy=cfg.learner_parallel), cfg

    def setup(self, cfg: TrainConfig):
        """`policy_setup.setup` on rank 0 first (it builds and caches the tiny model, tokenizer and env data), then on
        the other ranks, which load rank 0's from the cache; their tokenizers must then agree.

        Raises:
            ConfigError: A rank's tokenizer differs from rank 0's (a cache_dir not shared between nodes: build it
                once and share it).
        """
        from turngym.trainers import policy_setup

        if self.info.distributed and not self.is_main:
            _barrier()  # wait until rank 0 has built and cached what setup builds
        s = policy_setup.setup(cfg)
        if self.info.distributed and self.is_main:
            _barrier()
        if self.info.distributed:
            import hashlib

            vocab = sorted(s.tokenizer.get_vocab().items())
            mine = int(hashlib.sha256(repr(vocab).encode()).hexdigest()[:12], 16)
            lo, hi = all_reduce([-mine, mine], self.info, op="max")
            if -lo != hi:
                raise ConfigError(f"rank {self.info.rank}: the ranks built different tokenizers (cache_dir "
                                  f"{cfg.cache_dir or 'default'} is not shared between nodes?). Fix: a cache_dir "
                                  "on storage every node reads, filled once by a one-process run.")
        return s

    def check_resume(self, step: int | None) -> None:
        """Every rank must continue from the same checkpoint step (-1: none)."""
        if not self.info.distributed:
            return
        s = -1 if step is None else step
        lo, hi = all_reduce([-s, s], self.info, op="max")
        if -lo != hi:
            from turngym.trainers.checkpoint import CheckpointError

            raise CheckpointError(f"the ranks found different checkpoints to resume from (steps {-int(lo)} and "
                                  f"{int(hi)}): was the run directory changed during the start?")

    # ------------------------------------------------------------------ learner

    def attach(self, cfg: TrainConfig, s, optimizer: torch.optim.Optimizer, message=None) -> None:
        """Wrap the warm-started (or restored) policy for data-parallel updates, after rank 0's weights went to
        every rank. Under fsdp2 the optimizer is rebuilt over the sharded copy with ``optimizer``'s settings and
        state (sharded); under ddp ``optimizer`` itself steps the wrapped policy."""
        if self.info.distributed:
            div = max_weight_divergence(s.model, self.info)
            if div > 0 and message is not None:
                message(f"the ranks' starting weights differ by up to {div:.2e}: rank 0's go to every rank")
            broadcast_weights(s.model)
        self.strategy = resolve_strategy(cfg, s.model, self.info)
        if not self.info.distributed:  # one process: the plain policy and optimizer (nothing to synchronise)
            self.learner, self.optimizer = s.model, optimizer
            return
        if self.strategy == "ddp":
            self.learner, self.optimizer = wrap_model(s.model, "ddp", self.info), optimizer
            return
        # fsdp2: shard a copy; the full policy s.model keeps sampling and is refreshed after every update
        names = {id(p): n for n, p in s.model.named_parameters()}
        learner = wrap_model(copy.deepcopy(s.model), "fsdp2", self.info)
        by_name = dict(learner.named_parameters())
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [by_name[names[id(p)]] for p in g["params"]]}
                  for g in optimizer.param_groups]  # the same groups, settings and order over the shards
        self.learner = learner
        self.optimizer = type(optimizer)(groups)  # every setting travels in its group
        state = optimizer.state_dict()
        if state["state"]:  # a restored optimizer: its full state, sharded like the parameters
            flat = [p for g in self.optimizer.param_groups for p in g["params"]]
            state["state"] = {i: {k: _shard_like(v, flat[i]) for k, v in st.items()} for i, st in state["state"].items()}
            self.optimizer.load_state_dict(state)
            optimizer.state.clear()  # the full copy lives only in checkpoints (gather_optimizer)

    def update(self, cfg: TrainConfig, s, batch, out) -> dict[str, float]:
        """`update` of this rank's rows with ``dist`` (every rank, same number of calls); under fsdp2 the full policy
        ``s.model`` gets the new weights (an all-gather)."""
        from turngym.trainers.update import update

        metrics = update(cfg, self.learner, self.optimizer, batch, out, dist=self.info, pad_id=s.pad_id)
        if self.learner is not s.model:  # fsdp2: the full policy that samples gets the new weights
            with torch.no_grad():
                s.model.load_state_dict(full_state_dict(self.learner))
        return metrics

    def sync_lr(self, optimizer: torch.optim.Optimizer) -> None:
        """Copy the learning rates the update set on the learner's optimizer to the trainer's (fsdp2: two objects)."""
        if self.optimizer is not None and self.optimizer is not optimizer:
            for dst, src in zip(optimizer.param_groups, self.optimizer.param_groups):
                dst["lr"] = src["lr"]

    def gather_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Before a checkpoint, on every rank: under fsdp2 the learner's sharded optimizer state, gathered in full into
        ``optimizer`` (the single-process format, so any number of processes resumes it); a no-op under ddp."""
        if self.optimizer is None or self.optimizer is optimizer:
            return
        self.sync_lr(optimizer)
        sd = self.optimizer.state_dict()
        full = {i: {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in st.items()}
                for i, st in sorted(sd["state"].items())}
        plain = optimizer.state_dict()
        plain["state"] = {i: {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in st.items()}
                          for i, st in full.items()}
        optimizer.load_state_dict(plain)

    def release_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """After a checkpoint: drop the gathered full optimizer state again (fsdp2)."""
        if self.optimizer is not None and self.optimizer is not optimizer:
            optimizer.state.clear()

    # ------------------------------------------------------------------ rollout and metrics

    def sample(self, cfg: TrainConfig, s, step: int) -> tuple[list, dict[str, float]]:
        """This rank's groups of ``step`` (`sampling.rank_groups`), each rolled out alone with its own sampler seed."""
        from turngym.trainers import sampling
        from turngym.trainers.grpo import rollout_parts

        trajs, stats = [], []
        for _, task_seed, sample_seed in sampling.rank_groups(cfg, step, self.info.rank, self.info.world_size):
            t, st = sampling.rollout(cfg, s, [task_seed], cfg.group_size, sample_seed=sample_seed, step=step)
            trajs += t
            stats.append(st)
        return trajs, rollout_parts(stats)

    def finite(self, advantages: torch.Tensor) -> torch.Tensor:
        """``advantages`` when every rank's are finite, else a NaN (every rank's NaN guard then skips the update)."""
        bad = all_reduce([float(not bool(torch.isfinite(advantages).all()))], self.info)[0]
        return advantages if bad == 0 else torch.full((1,), math.nan)

    def merge_metrics(self, metrics: dict[str, float], trajs: list) -> dict[str, float]:
        """One metrics line for the whole step from every rank's (identical on every rank): ``train/*`` and
        ``nonfinite/*`` are already global; ``rollout/*``, ``credit/*`` and the rest are means weighted by each
        rank's trajectories (``rollout/trajectories`` summed, ``rollout/reward_std`` over all outcomes);
        ``perf/*_per_s`` are summed (the job's throughput), other ``perf/*`` take the slowest rank."""
        if not self.info.distributed:
            return metrics
        import torch.distributed as dist

        parts: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(parts, (metrics, [float(t.outcome) for t in trajs]))
        return merge_rank_metrics(parts)

    def barrier(self) -> None:
        if self.info.distributed:
            _barrier()

    def finish(self) -> None:
        """Success path, every rank: meet, then leave the process group."""
        destroy_distributed()


def merge_rank_metrics(parts: list[tuple[dict[str, float], list[float]]]) -> dict[str, float]:
    """Merge ``(metrics, outcomes)`` of every rank (see `DataParallel.merge_metrics`)."""
    import numpy as np

    n = [float(len(o)) for _, o in parts]
    total = sum(n) or 1.0
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for m, _ in parts for k in m):
        vals = [(m[key], w) for (m, _), w in zip(parts, n) if key in m]
        if key.startswith(("train/", "nonfinite/")):
            out[key] = parts[0][0].get(key, vals[0][0])
        elif key == "rollout/trajectories":
            out[key] = float(sum(v for v, _ in vals))
        elif key.startswith("perf/"):
            out[key] = float(sum(v for v, _ in vals) if key.endswith("_per_s") else max(v for v, _ in vals))
        elif key.startswith("rollout/stop/"):  # a reason no trajectory of a rank met is 0 there
            out[key] = float(sum(v * w for v, w in vals) / total)
        else:
            weight = sum(w for _, w in vals)
            out[key] = float(sum(v * w for v, w in vals) / weight) if weight else float(np.mean([v for v, _ in vals]))
    outcomes = [x for _, o in parts for x in o]
    if "rollout/reward_std" in out and outcomes:
        out["rollout/reward_std"] = float(np.std(outcomes))
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (identity on one process)."""
    if not info.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _shard_like(value: Any, param: Any) -> Any:
    """An optimizer state tensor of a full parameter, laid out like the (sharded) ``param``; other values as given."""
    if not torch.is_tensor(value) or value.dim() == 0 or not hasattr(param, "device_mesh"):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
