"""Rollouts on Ray actors: env stepping, tool calls and generation spread over worker processes or machines.

Each `RolloutWorker` actor holds its own copy of the policy (an HF causal LM rebuilt from the driver's config
and weights), its own `HFPolicy` sampler and its own `RolloutEngine`, and runs
`turngym.agents.rollout.collect_rollouts` on its share of the task seeds. The driver (`RayRolloutPool`) splits
the seeds into contiguous chunks (whole groups: all ``group_size`` trajectories of a seed stay on one worker),
gathers the trajectories in seed order and pushes new weights after each update with `sync_weights`
(one ``ray.put`` of the state dict; every worker reads the same object from the object store).

Output contract: the same `Trajectory` list as ``collect_rollouts`` with the same seeds (same order, same
``group_id``s, token ids and behaviour log-probs of the worker's sampler). With one chunk (one worker, or one
seed) and the same ``params.seed``, the trajectories are identical to a local run; with several chunks each
chunk's sampler seed is derived from ``(params.seed, chunk)`` so the draw stays a pure function of the call.

Cluster: ``ray.init()`` is called when no Ray session is running (it joins ``RAY_ADDRESS`` when set, e.g. a
cluster started with ``ray start --head`` / ``ray start --address=HEAD:6379``, else starts a local one).
``num_cpus_per_worker`` / ``num_gpus_per_worker`` are the actors' Ray resource requests.

Install: ``pip install 'turngym[ray]'`` (imported lazily).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from turngym.agents.policy import SamplingParams
from turngym.agents.rollout import RolloutStats
from turngym.envs.registration import import_modules
from turngym.errors import ConfigError, MissingExtraError
from turngym.types import Trajectory


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingExtraError("ray", "ray") from None
    return ray


@dataclass(frozen=True)
class RolloutSpec:
    """What every worker needs besides the model: the env and the rollout budgets (picklable).

    Attributes:
        env_id: Registered env id.
        env_kwargs: Keyword arguments of ``make``.
        sampler: ``SAMPLERS`` name (``group``, ``truncated_step``, ``tree``).
        max_turns: Turn cap on top of the env's own.
        max_traj_tokens: Cap on sampled tokens per trajectory.
        max_context_tokens: Cap on the packed sequence length.
        sampler_kwargs: Extra sampler arguments.
        torch_threads: ``torch.set_num_threads`` inside each worker (match ``num_cpus_per_worker``).
        device: Torch device of the workers' model copies (``"cuda"`` with ``num_gpus_per_worker > 0``).
        env_imports: Modules (dotted names or ``.py`` paths) each worker imports before making envs, so ids
            that ``--import`` registered on the driver are known in the worker processes too.
    """

    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    sampler: str = "group"
    max_turns: int | None = None
    max_traj_tokens: int | None = None
    max_context_tokens: int | None = None
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    torch_threads: int = 1
    device: str = "cpu"
    env_imports: tuple[str, ...] = ()


def policy_weights(model) -> tuple[Any, dict[str, Any]]:
    """``(config, cpu_state_dict)`` of a plain HF causal LM, LoRA adapters merged for peft models."""
    if hasattr(model, "merge_and_unload"):  # peft: ship merged weights, workers run the plain model
        model = copy.deepcopy(model).merge_and_unload()
    sd = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return model.config, sd


def weights_fingerprint(model) -> tuple:
    """Changes whenever a parameter is modified in place (optimizer step, ``load_state_dict``) or replaced."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


class RolloutWorker:
    """One rollout worker (made a Ray actor by `RayRolloutPool`; usable in process for debugging).

    Args:
        spec: The env and budgets.
        config: The policy's HF config (the worker builds ``AutoModelForCausalLM.from_config(config)``).
        state_dict: Its weights.
        renderer: The driver's `Renderer` (holds the tokenizer and chat template).
        seed: Seed of the worker's sampler generator (used when a call gives no ``params.seed``).
    """

    def __init__(self, spec: RolloutSpec, config: Any, state_dict: dict[str, Any], renderer: Any, seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM

        from turngym.agents.policy import HFPolicy

        import_modules(spec.env_imports)  # the driver's --import registrations, in this process too
        torch.set_num_threads(max(1, int(spec.torch_threads)))
        self.spec = spec
        self.renderer = renderer
        model = AutoModelForCausalLM.from_config(config)  # real init: non-persistent buffers (rotary) are built
        dtype = next((v.dtype for v in state_dict.values() if v.is_floating_point()), None)
        model = model.to(device=spec.device, dtype=dtype)
        model.load_state_dict(state_dict, strict=True)
        self.model = model.eval()
        self.policy = HFPolicy(self.model, renderer.tokenizer, seed=seed)
        self.version = 0

    def load_weights(self, state_dict: dict[str, Any], version: int) -> int:
        """Copy new weights into the worker's model (the prefix cache drops itself: the weights changed)."""
        import torch

        with torch.no_grad():
            self.model.load_state_dict(state_dict, strict=True)
        self.version = int(version)
        return self.version

    def collect(self, seeds: Sequence[int], group_size: int, params: SamplingParams, sampler: str | None = None
                ) -> tuple[list[Trajectory], dict[str, float], int]:
        """``collect_rollouts`` on this worker with the spec's sampler (or ``sampler``, e.g. ``"group"`` for
        held-out evaluation); returns (trajectories, stats, policy version used)."""
        from turngym.agents.rollout import collect_rollouts

        s = self.spec
        own = sampler is None or sampler == s.sampler
        trajs, stats = collect_rollouts(
            s.env_id, self.policy, self.renderer, list(seeds), group_size, sampler=s.sampler if own else sampler,
            params=params, max_turns=s.max_turns, max_traj_tokens=s.max_traj_tokens,
            max_context_tokens=s.max_context_tokens, env_kwargs=s.env_kwargs,
            sampler_kwargs=s.sampler_kwargs if own else {}, return_stats=True,
        )
        return trajs, stats.to_dict(), self.version

    def score(self, ids: Sequence[int]) -> list[float]:
        """Teacher-forced log-probs of ``ids`` under the worker's current weights (`score_sequence`)."""
        from turngym.agents.policy import score_sequence

        return score_sequence(self.model, list(ids))

    def pid(self) -> int:
        import os

        return os.getpid()


class RayRolloutPool:
    """A pool of `RolloutWorker` Ray actors with the ``collect_rollouts`` contract.

    Args:
        spec: Env and rollout budgets (`RolloutSpec`).
        model: The driver's policy model (its config and weights are shipped to the workers).
        renderer: The driver's `Renderer`.
        num_workers: Number of actors.
        num_cpus_per_worker: Ray CPU request per actor.
        num_gpus_per_worker: Ray GPU request per actor (set ``spec.device="cuda"`` with it).
        seed: Base seed of the workers' samplers (worker i uses ``seed + i``).
        ray_init_kwargs: Passed to ``ray.init`` when no Ray session is running (e.g. ``{"num_cpus": 4}``).

    Example:
        >>> pool = RayRolloutPool(RolloutSpec("search/HopQA-v0"), model, renderer, num_workers=4)
        >>> trajs = pool.collect(seeds=[1, 2, 3], group_size=8, params=SamplingParams(seed=0))
        >>> pool.sync_weights(model.state_dict())   # after each optimizer step
        >>> pool.close()
    """

    def __init__(self, spec: RolloutSpec, model: Any, renderer: Any, *, num_workers: int = 2,
                 num_cpus_per_worker: float = 1, num_gpus_per_worker: float = 0, seed: int = 0,
                 ray_init_kwargs: dict[str, Any] | None = None):
        if num_workers < 1:
            raise ConfigError(f"RayRolloutPool needs num_workers >= 1, got {num_workers}.")
        ray = _ray()
        if not ray.is_initialized():
            ray.init(**{"include_dashboard": False, "ignore_reinit_error": True, **(ray_init_kwargs or {})})
        self.spec = spec
        self.version = 0
        config, sd = policy_weights(model)
        self._fingerprint = weights_fingerprint(model)
        sd_ref = ray.put(sd)
        actor = ray.remote(num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker)(RolloutWorker)
        self.workers = [actor.remote(spec, config, sd_ref, renderer, seed + i) for i in range(num_workers)]
        ray.get([w.pid.remote() for w in self.workers])  # fail here, not in the first collect, if a worker can't start

    @classmethod
    def from_config(cls, cfg: Any, setup: Any, **kwargs: Any) -> RayRolloutPool:
        """A pool for a `TrainConfig` and the trainer's `Setup`: ``rollout_workers`` actors reserving
        ``rollout_worker_cpus`` Ray CPUs each (and that many torch threads, at least one)."""
        cpus = float(kwargs.pop("num_cpus_per_worker", getattr(cfg, "rollout_worker_cpus", 1.0)))
        spec = RolloutSpec(env_id=cfg.env_id, env_kwargs=dict(cfg.env_kwargs), sampler=cfg.sampler,
                           sampler_kwargs=dict(getattr(cfg, "sampler_options", {}) or {}), max_turns=cfg.max_turns, max_traj_tokens=cfg.max_traj_tokens,
                           torch_threads=max(1, round(cpus)), env_imports=tuple(getattr(cfg, "env_imports", ())))
        return cls(spec, setup.model, setup.renderer, num_workers=int(cfg.rollout_workers),
                   num_cpus_per_worker=cpus, seed=int(cfg.seed), **kwargs)

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    def collect(self, seeds: Sequence[int], group_size: int, params: SamplingParams | None = None, *,
                return_stats: bool = False, sampler: str | None = None
                ) -> list[Trajectory] | tuple[list[Trajectory], RolloutStats]:
        """Roll out ``group_size`` trajectories per seed on the workers; same order as ``collect_rollouts``.

        Args:
            seeds: Task seeds (each seed's group runs on one worker).
            group_size: Trajectories per seed.
            params: Sampling settings (``params.seed``: see the module docstring).
            return_stats: Also return the summed `RolloutStats` (``wall_s`` is the driver's wall time).
            sampler: A ``SAMPLERS`` name for this call instead of the spec's (``"group"``: full episodes).
        """
        ray = _ray()
        params = params or SamplingParams()
        seeds = list(seeds)
        t0 = time.perf_counter()
        n = min(self.num_workers, len(seeds))
        bounds = [round(i * len(seeds) / n) for i in range(n + 1)] if n else [0]
        chunks = [seeds[bounds[i]:bounds[i + 1]] for i in range(n)]
        futures = []
        for i, chunk in enumerate(chunks):
            p = params
            if params.seed is not None and n > 1:
                p = replace(params, seed=int((params.seed * 1_000_003 + 7919 * (i + 1)) % (2**31)))
            futures.append(self.workers[i].collect.remote(chunk, group_size, p, sampler))
        trajs: list[Trajectory] = []
        total = RolloutStats()
        for got, stats, version in ray.get(futures):
            if version != self.version:
                raise RuntimeError(f"rollout worker used policy version {version}, the pool is at {self.version}.")
            trajs.extend(got)
            for k, v in stats.items():
                if k != "wall_s":
                    setattr(total, k, getattr(total, k) + v)
        total.wall_s = time.perf_counter() - t0
        return (trajs, total) if return_stats else trajs

    def sync_weights(self, state_dict: dict[str, Any] | Any) -> int:
        """Push new weights (a state dict, or a model) to every worker; returns the new policy version.

        Tensors are moved to CPU once and put in the object store once; the call returns when every worker has
        loaded them, so the next `collect` samples from the new policy.
        """
        ray = _ray()
        if hasattr(state_dict, "state_dict"):
            _, sd = policy_weights(state_dict)
            self._fingerprint = weights_fingerprint(state_dict)
        else:
            sd = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
        self.version += 1
        ref = ray.put(sd)
        ray.get([w.load_weights.remote(ref, self.version) for w in self.workers])
        return self.version

    def sync_if_changed(self, model: Any) -> bool:
        """`sync_weights(model)` if its parameters changed since the last push; True when it pushed."""
        if weights_fingerprint(model) == self._fingerprint:
            return False
        self.sync_weights(model)
        return True

    def score(self, ids: Sequence[int]) -> list[list[float]]:
        """Every worker's teacher-forced log-probs of ``ids`` (to check that weights reached the workers)."""
        ray = _ray()
        return ray.get([w.score.remote(list(ids)) for w in self.workers])

    def close(self) -> None:
        """Stop the actors (the Ray session itself is left running)."""
        ray = _ray()
        for w in self.workers:
            ray.kill(w)
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_POOLS: dict[int, RayRolloutPool] = {}


def collect(cfg: Any, setup: Any, seeds: Sequence[int], group_size: int, *, temperature: float | None = None,
            sample_seed: int | None = None, sampler: str | None = None) -> tuple[list[Trajectory], RolloutStats]:
    """Drop-in for ``trainers.sampling.rollout`` when ``cfg.rollout_backend == "ray"``.

    Creates one `RayRolloutPool` per trainer `Setup` on first use (``cfg.rollout_workers`` actors), pushes the
    weights whenever ``setup.model`` changed since the last call, and returns ``(trajectories, stats)``.
    """
    pool = _POOLS.get(id(setup))
    if pool is None:
        pool = _POOLS[id(setup)] = RayRolloutPool.from_config(cfg, setup)
    else:
        pool.sync_if_changed(setup.model)
    from turngym.agents.policy import SamplingParams as SP

    params = SP(temperature=cfg.temperature if temperature is None else temperature,
                top_p=cfg.top_p if temperature is None else 1.0, max_new_tokens=cfg.max_new_tokens, seed=sample_seed)
    return pool.collect(seeds, group_size, params, return_stats=True, sampler=sampler)  # type: ignore[return-value]


def close_pools() -> None:
    """Stop every pool `collect` created (call at the end of training)."""
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()
