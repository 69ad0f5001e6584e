"""Bounded-staleness (one-step-off-policy and beyond) rollouts: step n+1 is sampled while step n trains.

A background thread (`AsyncRollout`) produces the rollouts of the next steps with a *behaviour* copy of the
policy (a local `HFPolicy` over a private model copy, or a `RayRolloutPool`), while the learner trains the
live model. After each update the learner calls `AsyncRollout.push(model)`; the producer loads the newest
pushed weights before it starts each new batch. Versions: the learner is at version ``v`` after ``v``
updates; a batch sampled with the weights of version ``b`` and trained at version ``v`` has staleness
``v - b``. The producer never starts the batch of step ``s`` before the learner has pushed version
``s - max_staleness``, so every sample's staleness is at most ``max_staleness``
(``max_staleness=0`` is the synchronous on-policy loop, through the same code path).

Importance correction: each `Turn.logprobs` holds the BEHAVIOUR policy's log-probs (the sampler's, version
``b``), and `GroupBatch.from_trajectories` turns them into ``old_logprobs``; the clipped surrogate of
`turngym.trainers.losses.policy_loss` therefore uses the ratio ``π_θ / π_b`` with the behaviour policy as the
"old" policy (decoupled / off-policy PPO as in AReaL and verl's one-step-off-policy mode). Trainers must not
recompute ``old_logprobs`` with the current weights in async mode: that would drop the correction. Any
``temperature`` works: both producers sample with ``sampling.sampling_params(cfg)``, and the sampler records the
log-probs of ``softmax(logits / temperature)``, the tempered policy the learner trains (`turngym.agents.policy`).

Per sample, ``Trajectory.meta["policy_version"]`` is the behaviour version and ``Trajectory.meta["staleness"]``
the learner version minus it at admission time.

Admission is oldest-first: finished groups wait in a buffer ordered by (behaviour version, arrival), and each
training step admits the oldest ``groups_per_step`` of them. A group whose long multi-turn episodes finished
late is therefore never overtaken by fresher, shorter groups (no starvation), and no group is dropped for
being stale: the staleness bound is enforced where sampling starts, not by discarding finished work.

In `turngym train`, ``max_staleness=N`` (N > 0) makes the GRPO and PPO trainers take each step's batch from
`AsyncRollout.from_config` instead of sampling it themselves; ``max_staleness=0`` (the default) keeps their plain
synchronous loop and builds no producer.

Departures from a fully synchronous loop: signal providers that score with the policy (IG probes) and PPO's
critic run with the learner's current weights at admission time, not with the behaviour weights. A resumed run
restarts the producer from the checkpoint's weights, so its first batch is fresh (staleness 0) where the
uninterrupted run's was up to ``max_staleness`` old.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from turngym.errors import ConfigError
from turngym.types import Trajectory


@dataclass(order=True)
class _Group:
    version: int
    arrival: int
    trajs: list[Trajectory] = field(compare=False)


class GroupBuffer:
    """Finished groups, admitted oldest first (lowest behaviour version, then arrival order)."""

    def __init__(self) -> None:
        self._heap: list[_Group] = []
        self._arrival = itertools.count()

    def put(self, trajs: Sequence[Trajectory], version: int) -> None:
        """Add trajectories (grouped by ``group_id``, order kept) sampled with policy ``version``."""
        groups: dict[str, list[Trajectory]] = {}
        for t in trajs:
            t.meta["policy_version"] = int(version)
            groups.setdefault(t.group_id, []).append(t)
        for g in groups.values():
            heapq.heappush(self._heap, _Group(int(version), next(self._arrival), g))

    def __len__(self) -> int:
        return len(self._heap)

    def take(self, n_groups: int, learner_version: int) -> list[Trajectory]:
        """Pop the ``n_groups`` oldest groups; stamps ``meta["staleness"]`` on each trajectory."""
        out: list[Trajectory] = []
        for _ in range(min(n_groups, len(self._heap))):
            g = heapq.heappop(self._heap)
            for t in g.trajs:
                t.meta["staleness"] = int(learner_version) - g.version
            out.extend(g.trajs)
        return out


class AsyncRollout:
    """A background producer of rollout batches with bounded staleness.

    Args:
        produce: ``produce(step) -> list[Trajectory]``: the rollouts of training step ``step``, sampled with the
            behaviour weights currently loaded (called in the producer thread only).
        load_weights: ``load_weights(state_dict)``: load pushed weights into the behaviour sampler (called in the
            producer thread, between batches).
        groups_per_step: Groups admitted per training step.
        max_staleness: Largest allowed ``learner_version - behaviour_version`` (0 = synchronous).
        start_step: First step to produce (a resumed run starts later); the learner is at version ``start_step``.
        stop_step: Produce steps ``start_step .. stop_step - 1``.
        snapshot: ``snapshot(model) -> state_dict`` used by `push` when given a model (default ``model.state_dict()``).
        on_close: Called by `close` after the producer thread stopped (e.g. to stop a Ray pool the producer owns).

    Example (inside a trainer loop)::

        producer = AsyncRollout.local(cfg, s, max_staleness=1)
        for step in range(cfg.steps):
            trajs, m = producer.get(step)      # waits only if the producer is behind
            ... credit, update ...
            producer.push(s.model)             # new behaviour weights for the next batches
        producer.close()
    """

    def __init__(self, produce: Callable[[int], list[Trajectory]], load_weights: Callable[[dict[str, Any]], None], *,
                 groups_per_step: int, max_staleness: int = 1, start_step: int = 0, stop_step: int | None = None,
                 snapshot: Callable[[Any], dict[str, Any]] | None = None, on_close: Callable[[], None] | None = None):
        if max_staleness < 0:
            raise ConfigError(f"max_staleness must be >= 0 (0 = synchronous), got {max_staleness}.")
        self.produce = produce
        self.load_weights = load_weights
        self.groups_per_step = int(groups_per_step)
        self.max_staleness = int(max_staleness)
        self.learner_version = int(start_step)
        self.behaviour_version = int(start_step)
        self._next_step = int(start_step)
        self._stop = stop_step
        self.snapshot = snapshot or (lambda model: model.state_dict())
        self._on_close = on_close
        self._pending: tuple[int, dict[str, Any]] | None = None
        self._buffer = GroupBuffer()
        self._produced: dict[int, tuple[int, float]] = {}  # step -> (groups put, seconds spent producing them)
        self._cv = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self.produce_s = 0.0
        self._thread = threading.Thread(target=self._run, name="turngym-async-rollout", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_config(cls, cfg: Any, setup: Any, *, start_step: int = 0) -> AsyncRollout:
        """The trainers' producer: ``cfg.max_staleness``, and `local` or `ray` after ``cfg.rollout_backend``.

        With ``rollout_backend="ray"`` it starts its own `RayRolloutPool` (``cfg.rollout_workers`` actors; the
        trainer's evaluations keep theirs) and stops it in `close`.
        """
        if cfg.rollout_backend != "ray":
            return cls.local(cfg, setup, max_staleness=cfg.max_staleness, start_step=start_step)
        from turngym.agents.ray_rollout import RayRolloutPool

        pool = RayRolloutPool.from_config(cfg, setup)
        return cls.ray(cfg, pool, max_staleness=cfg.max_staleness, start_step=start_step, close_pool=True)

    @classmethod
    def local(cls, cfg: Any, setup: Any, *, max_staleness: int = 1, start_step: int = 0,
              sample: Callable[[Any, Any, int], list[Trajectory]] | None = None) -> AsyncRollout:
        """A producer sampling with a private copy of ``setup.model`` through ``trainers.sampling.rollout``.

        Args:
            cfg: The `TrainConfig` (``tasks_per_step``, ``group_size``, ``steps``, sampling settings).
            setup: The trainer's `Setup`; its model is copied once (the copy is the behaviour policy).
            max_staleness: See the class docstring.
            start_step: First step (resume).
            sample: ``sample(cfg, behaviour_setup, step) -> trajectories`` (default: ``sampling.rollout`` on the
                step's task seeds with ``group_size`` and the step's sampler seed, as `grpo.sample` does).
        """
        from turngym.agents.policy import HFPolicy
        from turngym.trainers import sampling

        model = copy.deepcopy(setup.model).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        behaviour = replace(setup, model=model, policy=HFPolicy(model, setup.tokenizer, seed=int(cfg.seed) + 1,
                                                                decode=cfg.decode))

        def default_sample(cfg_, s_, step):
            from turngym.trainers.grpo import step_seed

            seed = step_seed(cfg_, step, 0)
            trajs, _ = sampling.rollout(cfg_, s_, sampling.task_seeds(cfg_, step), cfg_.group_size, sample_seed=seed,
                                        step=step)
            return trajs

        fn = sample or default_sample

        def load(sd: dict[str, Any]) -> None:
            import torch

            with torch.no_grad():
                model.load_state_dict(sd)

        return cls(lambda step: fn(cfg, behaviour, step), load, groups_per_step=cfg.tasks_per_step,
                   max_staleness=max_staleness, start_step=start_step, stop_step=cfg.steps)

    @classmethod
    def ray(cls, cfg: Any, pool: Any, *, max_staleness: int = 1, start_step: int = 0,
            close_pool: bool = False) -> AsyncRollout:
        """A producer over a `turngym.agents.ray_rollout.RayRolloutPool` (weights pushed with ``sync_weights``).

        Pushed models are shipped as `ray_rollout.policy_weights` (LoRA adapters merged: the workers run the plain
        model). ``close_pool``: stop the pool in `close` (the producer owns it).
        """
        from turngym.agents.ray_rollout import policy_weights
        from turngym.trainers import sampling
        from turngym.trainers.grpo import step_seed

        def produce(step: int) -> list[Trajectory]:
            params = replace(sampling.sampling_params(cfg), seed=step_seed(cfg, step, 0))
            return pool.collect(sampling.task_seeds(cfg, step), cfg.group_size, params)

        return cls(produce, pool.sync_weights, groups_per_step=cfg.tasks_per_step, max_staleness=max_staleness,
                   start_step=start_step, stop_step=cfg.steps, snapshot=lambda model: policy_weights(model)[1],
                   on_close=pool.close if close_pool else None)

    # ------------------------------------------------------------------ producer thread

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    step = self._next_step
                    # bounded staleness: step s may start once version s - max_staleness has been pushed
                    self._cv.wait_for(lambda s=step: self._closed or (self._stop is not None and s >= self._stop)
                                      or self._latest_version() >= s - self.max_staleness)
                    if self._closed or (self._stop is not None and step >= self._stop):
                        return
                    pending, self._pending = self._pending, None
                if pending is not None:
                    self.load_weights(pending[1])
                    self.behaviour_version = pending[0]
                t0 = time.perf_counter()
                trajs = self.produce(step)
                seconds = time.perf_counter() - t0
                self.produce_s += seconds
                with self._cv:
                    self._buffer.put(trajs, self.behaviour_version)
                    self._produced[step] = (len({t.group_id for t in trajs}), seconds)
                    self._next_step = step + 1
                    self._cv.notify_all()
        except BaseException as e:  # noqa: BLE001 - re-raised in the learner thread by get()
            with self._cv:
                self._error = e
                self._cv.notify_all()

    def _latest_version(self) -> int:
        return self._pending[0] if self._pending is not None else self.behaviour_version

    # ------------------------------------------------------------------ learner side

    def get(self, step: int, timeout_s: float | None = None) -> tuple[list[Trajectory], dict[str, float]]:
        """The trajectories to train step ``step`` on (oldest groups first) and their metrics: ``async/*``, and
        ``perf/rollout_s`` (the seconds the producer spent sampling this step's batch, overlapped with training).

        Blocks until the producer has finished the batch of ``step``. Raises the producer's exception if it
        failed, and `TimeoutError` after ``timeout_s``.
        """
        t0 = time.perf_counter()
        with self._cv:
            ok = self._cv.wait_for(lambda: self._error is not None or step in self._produced, timeout=timeout_s)
            if self._error is not None:
                raise RuntimeError(f"async rollout producer failed at step {self._next_step}: {self._error!r}") \
                    from self._error
            if not ok:
                raise TimeoutError(f"async rollout: no batch for step {step} after {timeout_s} s.")
            n, seconds = self._produced.pop(step)
            trajs = self._buffer.take(n, self.learner_version)
        st = [t.meta["staleness"] for t in trajs] or [0]
        return trajs, {
            "async/staleness_mean": sum(st) / len(st),
            "async/staleness_max": float(max(st)),
            "async/wait_s": time.perf_counter() - t0,
            "async/buffered_groups": float(len(self._buffer)),
            "perf/rollout_s": seconds,
        }

    def push(self, model_or_state_dict: Any) -> int:
        """Publish the learner's new weights (after an update); returns the new learner version.

        The state dict is copied to CPU now, so the learner may keep training the live model.
        """
        sd = self.snapshot(model_or_state_dict) if hasattr(model_or_state_dict, "state_dict") else model_or_state_dict
        sd = {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}
        with self._cv:
            self.learner_version += 1
            self._pending = (self.learner_version, sd)
            self._cv.notify_all()
        return self.learner_version

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop the producer (waits for the batch in flight, at most ``timeout_s``), then run ``on_close``."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=timeout_s)
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
