"""The rollout engine: many envs stepped at once, token-in/token-out, recorded as `Trajectory`s.

Each *round* gathers the token contexts of every episode still running, makes ONE batched ``policy.generate``
call, then steps all those envs concurrently (a thread pool: tool calls overlap) and appends to each context
the sampled ids exactly as sampled plus the new observation rendered alone (`Renderer.observation`). What a
trainer packs with `Trajectory.token_ids()` is therefore byte for byte what the sampler saw.

Budgets: ``params.max_new_tokens`` caps each action; ``max_traj_tokens`` caps the sampled tokens of a whole
trajectory; ``max_context_tokens`` caps the packed sequence (prompt + actions + observations); ``max_turns``
caps the turns on top of the env's own limit. A budget that runs out ends the episode with
``stop_reason="max_tokens"`` / ``"max_turns"``. An exception inside ``env.step`` ends that episode with
``stop_reason="env_error"`` and the message in ``meta["rollout"]["env_error"]``; the other episodes go on.

Samplers (registry `SAMPLERS`), selected by name:

* ``group``: G full trajectories per seed (same task), ``group_id = f"{env_id}:{seed}"``.
* ``truncated_step``: SLATE (spec §7): at each step k candidate actions from the same prefix; every
  (step, candidate) pair becomes a one-turn training row (``prompt_ids`` = shared prefix,
  ``group_id = f"{env_id}:{seed}:step{t}"``, ``outcome`` = the candidate's step reward); one candidate, drawn
  with probability ``softmax(A/eta)`` over the siblings' normalised rewards, advances the path.
* ``tree``: branching rollouts with shared prefixes (for prefix-tree credit, e.g. TEMPO): ``branching=(b0,
  b1, ...)`` forks every episode into ``b_d`` children before its turn d; leaves share ``group_id``.
* ``reflect_retry``: R³L (`turngym.agents.reflect_retry`): G/2 base rollouts per seed; failures are reflected on
  and retried from the diagnosed turn (`RolloutEngine.clone_prefix`) with a guidance message in the context.

Forked and candidate episodes get their env state by *replay*: a fresh env is reset with the same seed and
fed the same actions; the replayed observations must equal the recorded ones (else `EnvError`: the env is not
deterministic under replay).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turngym.agents.policy import Sample, SamplingParams, decode_action, with_max_new_tokens
from turngym.agents.render import Renderer, prompt_tool_schemas
from turngym.errors import ConfigError, EnvError
from turngym.registry import Registry
from turngym.types import Trajectory, Turn, write_jsonl

STOP_REASONS = ("terminated", "truncated", "max_turns", "max_tokens", "env_error")


def jsonable(d: dict[str, Any], drop: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON-serialisable entries of `d` (minus `drop`)."""
    out: dict[str, Any] = {}
    skip = set(drop)
    for k, v in d.items():
        if k in skip:
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out


@dataclass(eq=False)
class Episode:
    """One running episode (engine-internal; exposed for samplers and tests)."""

    env: Any
    traj: Trajectory
    renderer: Renderer
    context: list[int]
    actions: list[str] = field(default_factory=list)
    done: bool = False
    action_tokens: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"tool_calls": 0, "tool_errors": 0, "parse_errors": 0,
                                                            "inexact_ids": 0})
    tag: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutStats:
    """Where rollout wall time went (seconds) and how much was done."""

    generate_s: float = 0.0
    env_s: float = 0.0
    render_s: float = 0.0
    setup_s: float = 0.0
    rounds: int = 0
    sampled_tokens: int = 0
    trajectories: int = 0
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class RolloutEngine:
    """Steps many episodes of one env id in batched rounds (see module docstring).

    Args:
        env_id: Registered env id (``turngym.envs.make``); also the prefix of every ``group_id``.
        policy: Anything with ``generate(contexts, params) -> list[Sample]`` (`turngym.agents.policy`).
            Policies with ``needs_envs = True`` (`ScriptedPolicy`) also get ``envs=``.
        renderer: A `Renderer` for the policy's tokenizer; if it has no tool schemas, the env's
            ``tool_schemas`` are used (`Renderer.for_tools`).
        params: Sampling settings (``max_new_tokens`` is the per-turn cap).
        max_turns: Turn cap on top of the env's own limit (None: the env's).
        max_traj_tokens: Cap on sampled (action) tokens per trajectory (None: no cap).
        max_context_tokens: Cap on the packed sequence length (default: the policy's ``max_positions``).
        env_kwargs: Keyword arguments for ``make``.
        env_fn: Zero-argument env factory used instead of ``make(env_id, **env_kwargs)``.
        tool_workers: Threads stepping envs concurrently.
        max_concurrent: Most episodes running at once (None: all); the rest wait in a queue.
        out: JSONL path; finished trajectories are appended as they finish (the file is truncated first).
        progress: Show a progress bar (rich).
    """

    def __init__(
        self,
        env_id: str,
        policy: Any,
        renderer: Renderer,
        *,
        params: SamplingParams | None = None,
        max_turns: int | None = None,
        max_traj_tokens: int | None = None,
        max_context_tokens: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        env_fn: Callable[[], Any] | None = None,
        tool_workers: int = 16,
        max_concurrent: int | None = None,
        out: str | Path | None = None,
        progress: bool = False,
    ):
        self.env_id = env_id
        self.policy = policy
        self.renderer = renderer
        self.params = params or SamplingParams()
        self.max_turns = max_turns
        self.max_traj_tokens = max_traj_tokens
        self.max_context_tokens = max_context_tokens or getattr(policy, "max_positions", None)
        self.env_kwargs = dict(env_kwargs or {})
        self.env_fn = env_fn
        self.tool_workers = int(tool_workers)
        self.max_concurrent = max_concurrent
        self.out = Path(out) if out is not None else None
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text("")
        self.progress = progress
        self.stats = RolloutStats()
        self._pool: list[Any] = []
        self._renderers: dict[str, Renderer] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._bar: Any = None
        self.stop_ids = set(getattr(policy, "stop_token_ids", None) or renderer.stop_token_ids)

    # ------------------------------------------------------------------ env + episode management

    def _make_env(self) -> Any:
        if self._pool:
            return self._pool.pop()
        if self.env_fn is not None:
            return self.env_fn()
        from turngym.envs import make

        return make(self.env_id, **self.env_kwargs)

    def release(self, ep: Episode) -> None:
        """Return an episode's env to the pool (it is reset before reuse)."""
        if ep.env is not None:
            self._pool.append(ep.env)
            ep.env = None

    def close(self) -> None:
        """Close pooled envs and the thread pool."""
        for env in self._pool:
            try:
                env.close()
            except Exception:  # noqa: BLE001, S110 - closing is best effort
                pass
        self._pool.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def __enter__(self) -> RolloutEngine:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _renderer_for(self, env: Any) -> Renderer:
        schemas = prompt_tool_schemas(env) or []
        if self.renderer.tool_schemas is not None or not schemas:
            return self.renderer
        key = json.dumps(schemas, sort_keys=True)
        if key not in self._renderers:
            self._renderers[key] = self.renderer.for_tools(schemas)
        return self._renderers[key]

    def new_episode(self, seed: int | None, group_id: str | None = None, agent_id: str = "agent") -> Episode:
        """Make (or reuse) an env, reset it with `seed` and render the prompt."""
        t0 = time.perf_counter()
        env = self._make_env()
        messages, info = env.reset(seed=seed)
        renderer = self._renderer_for(env)
        prompt_ids = renderer.initial(messages)
        traj = Trajectory(
            group_id=group_id if group_id is not None else f"{self.env_id}:{seed}",
            agent_id=agent_id,
            prompt_ids=list(prompt_ids),
            prompt_messages=copy.deepcopy(list(messages)),
            meta=copy.deepcopy(info.get("task", {})) if isinstance(info.get("task"), dict) else {},
            env_id=self.env_id,
            seed=seed,
        )
        self.stats.setup_s += time.perf_counter() - t0
        return Episode(env=env, traj=traj, renderer=renderer, context=list(prompt_ids))

    def clone(self, ep: Episode) -> Episode:
        """A new episode in the same state as `ep`, by replaying its actions on a fresh env."""
        new = self.new_episode(ep.traj.seed, ep.traj.group_id, ep.traj.agent_id)
        if new.context != ep.traj.prompt_ids:
            raise EnvError(f"{self.env_id}: reset(seed={ep.traj.seed}) gave a different prompt on replay.")
        t0 = time.perf_counter()
        for k, (action, turn) in enumerate(zip(ep.actions, ep.traj.turns)):
            obs, *_ = new.env.step(action)
            if obs != turn.obs_messages:
                raise EnvError(
                    f"{self.env_id} is not deterministic under replay: seed {ep.traj.seed}, turn {k} gave "
                    f"{str(obs)[:200]!r}, recorded {str(turn.obs_messages)[:200]!r}. Tree and truncated_step "
                    "samplers need envs whose state is a function of (seed, actions)."
                )
        self.stats.env_s += time.perf_counter() - t0
        new.traj = copy.deepcopy(ep.traj)
        new.context = list(ep.context)
        new.actions = list(ep.actions)
        new.action_tokens = ep.action_tokens
        new.counts = dict(ep.counts)
        new.tag = copy.deepcopy(ep.tag)
        return new

    def clone_prefix(self, ep: Episode, k: int) -> Episode:
        """A running episode in the state of `ep` before its turn `k` (R³L retries): a fresh env reset with the same
        seed replays ``ep.actions[:k]`` (each replayed observation must equal the recorded one, as in `clone`), and
        the first `k` turns are copied (same tokens, log-probs and signals). `ep` may be finished.

        Raises:
            ValueError: `k` outside ``[0, len(turns)]``, or turn ``k−1`` ended the episode (no observation to
                continue from).
            EnvError: The env is not deterministic under replay (another prompt, observation, or an episode that
                ends during the replay).
        """
        turns = ep.traj.turns
        if not 0 <= k <= len(turns) or (k > 0 and not turns[k - 1].obs_ids):
            raise ValueError(f"clone_prefix: cannot continue {self.env_id} seed {ep.traj.seed} before turn {k}: the "
                             f"episode has {len(turns)} turns and turn {k - 1} must have an observation.")
        new = self.new_episode(ep.traj.seed, ep.traj.group_id, ep.traj.agent_id)
        if new.context != ep.traj.prompt_ids:
            self.release(new)
            raise EnvError(f"{self.env_id}: reset(seed={ep.traj.seed}) gave a different prompt on replay.")
        t0 = time.perf_counter()
        try:
            for j in range(k):
                obs, _r, terminated, truncated, _info = new.env.step(ep.actions[j])
                if obs != turns[j].obs_messages or terminated or truncated:
                    raise EnvError(
                        f"{self.env_id} is not deterministic under replay: seed {ep.traj.seed}, turn {j} gave "
                        f"{str(obs)[:200]!r} (ended: {bool(terminated or truncated)}), recorded "
                        f"{str(turns[j].obs_messages)[:200]!r}. R³L retries need envs whose state is a function of "
                        "(seed, actions)."
                    )
        except Exception:
            self.release(new)
            raise
        finally:
            self.stats.env_s += time.perf_counter() - t0
        prefix = copy.deepcopy(turns[:k])
        new.traj.turns = prefix
        new.traj.meta = {key: v for key, v in copy.deepcopy(ep.traj.meta).items() if key != "rollout"}
        new.context = list(ep.traj.prompt_ids) + [i for u in prefix for i in (*u.action_ids, *u.obs_ids)]
        new.actions = list(ep.actions[:k])
        new.action_tokens = sum(len(u.action_ids) for u in prefix)
        new.counts = {"tool_calls": sum(len(u.tool_calls) for u in prefix),
                      "tool_errors": sum(int(u.info.get("tool_errors") or 0) for u in prefix),
                      "parse_errors": sum(len(u.info.get("parse_errors") or []) for u in prefix),
                      "inexact_ids": 0}
        return new

    # ------------------------------------------------------------------ one round

    def _budget(self, ep: Episode) -> int:
        n = self.params.max_new_tokens
        if self.max_traj_tokens is not None:
            n = min(n, self.max_traj_tokens - ep.action_tokens)
        if self.max_context_tokens is not None:
            n = min(n, self.max_context_tokens - len(ep.context))
        return n

    def step_round(self, episodes: Sequence[Episode]) -> None:
        """One batched generate call for `episodes` (all running), then step their envs concurrently."""
        eps = [e for e in episodes if not e.done]
        ready = []
        for e in eps:
            if self._budget(e) <= 0:
                self._finish(e, "max_tokens")
            else:
                ready.append(e)
        if not ready:
            return
        budgets = [self._budget(e) for e in ready]
        params = with_max_new_tokens(self.params, max(budgets))
        t0 = time.perf_counter()
        kwargs = {"envs": [e.env for e in ready]} if getattr(self.policy, "needs_envs", False) else {}
        samples = self.policy.generate([e.context for e in ready], params, **kwargs)
        self.stats.generate_s += time.perf_counter() - t0
        self.stats.rounds += 1
        if len(samples) != len(ready):
            raise RuntimeError(f"policy.generate returned {len(samples)} samples for {len(ready)} contexts.")
        samples = [self._cap(s, b) for s, b in zip(samples, budgets)]
        t0 = time.perf_counter()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.tool_workers)
        results = list(self._executor.map(_safe_step, [e.env for e in ready], [s.text for s in samples]))
        self.stats.env_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for e, s, r in zip(ready, samples, results):
            self._record(e, s, r)
        self.stats.render_s += time.perf_counter() - t0

    def _cap(self, s: Sample, budget: int) -> Sample:
        if len(s.ids) <= budget:
            return s
        ids = s.ids[:budget]
        lps = s.logprobs[:budget] if s.logprobs is not None else None
        return Sample(ids=ids, logprobs=lps, text=decode_action(self.renderer.tokenizer, ids, self.stop_ids),
                      finish_reason="length", exact_ids=s.exact_ids, meta=dict(s.meta))

    def _record(self, ep: Episode, s: Sample, result: tuple) -> None:
        turn = Turn(action_ids=list(s.ids), logprobs=list(s.logprobs) if s.logprobs is not None else [],
                    action_text=s.text)
        ep.traj.turns.append(turn)
        ep.actions.append(s.text)
        ep.context.extend(s.ids)
        ep.action_tokens += len(s.ids)
        self.stats.sampled_tokens += len(s.ids)
        if not s.exact_ids:
            ep.counts["inexact_ids"] += 1
        turn.info["finish_reason"] = s.finish_reason
        if result[0] == "error":
            ep.tag["env_error"] = result[1]
            self._finish(ep, "env_error")
            return
        new_messages, reward, terminated, truncated, info = result[1]
        turn.obs_messages = copy.deepcopy(list(new_messages))
        turn.tool_calls = list(info.get("tool_calls") or [])
        turn.tool_results = list(info.get("tool_results") or [])
        turn.reward = float(reward)
        turn.info.update(jsonable(info, drop=("tool_calls", "tool_results", "task")))
        ep.counts["tool_calls"] += len(turn.tool_calls)
        ep.counts["tool_errors"] += int(info.get("tool_errors") or 0)
        ep.counts["parse_errors"] += len(info.get("parse_errors") or [])
        if terminated or truncated:
            ep.traj.outcome = float(info.get("outcome", 0.0) or 0.0)
            ep.traj.final_answer = info.get("final_answer")
            ep.tag["success"] = bool(info.get("success", False))
            reason = "terminated" if terminated else (
                "max_turns" if info.get("truncated_by") == "max_turns" else "truncated")
            self._finish(ep, reason)
            return
        if self.max_turns is not None and len(ep.traj.turns) >= self.max_turns:
            self._finish(ep, "max_turns")
            return
        if self.max_traj_tokens is not None and ep.action_tokens >= self.max_traj_tokens:
            self._finish(ep, "max_tokens")
            return
        obs_ids = ep.renderer.observation(new_messages, closed=s.finish_reason == "stop")
        if self.max_context_tokens is not None and len(ep.context) + len(obs_ids) >= self.max_context_tokens:
            self._finish(ep, "max_tokens")
            return
        turn.obs_ids = list(obs_ids)
        ep.context.extend(obs_ids)

    def _finish(self, ep: Episode, reason: str) -> None:
        ep.done = True
        ep.traj.stop_reason = reason
        roll = {k: v for k, v in ep.counts.items()}
        roll["success"] = bool(ep.tag.get("success", False))
        if "env_error" in ep.tag:
            roll["env_error"] = ep.tag["env_error"]
        ep.traj.meta["rollout"] = roll

    # ------------------------------------------------------------------ driving

    def run(self, episodes: Iterable[Episode] | None = None, *, pending: Iterable[Callable[[], Episode]] = (),
            before_round: Callable[[list[Episode]], list[Episode]] | None = None,
            on_done: Callable[[Episode], None] | None = None) -> list[Episode]:
        """Advance episodes to completion in batched rounds.

        Args:
            episodes: Episodes to run now.
            pending: Factories of episodes started when a slot frees up (``max_concurrent``).
            before_round: Called with the running episodes before each round; returns the list to run
                (it may add forks).
            on_done: Called once per finished episode (after its env went back to the pool).

        Returns:
            All episodes, finished, in start order.
        """
        active = list(episodes or [])
        queue = list(pending)
        started = list(active)
        while True:
            while queue and (self.max_concurrent is None or len([e for e in active if not e.done])
                             < self.max_concurrent):
                ep = queue.pop(0)()
                active.append(ep)
                started.append(ep)
            running = [e for e in active if not e.done]
            if before_round is not None and running:
                running = before_round(running)
                for e in running:
                    if not any(e is s for s in started):
                        started.append(e)
                active = [e for e in active if e.done] + running
            if not running:
                if not queue:
                    break
                continue
            self.step_round(running)
            for e in running:
                if e.done:
                    self.release(e)
                    self.stats.trajectories += 1
                    if self.out is not None:
                        write_jsonl(self.out, [e.traj], append=True)
                    if self._bar is not None:
                        self._bar[0].advance(self._bar[1])
                    if on_done is not None:
                        on_done(e)
            active = [e for e in active if not e.done]
        return started

    def progress_bar(self, total: int, label: str = "rollouts"):
        """Context manager showing a rich progress bar over `total` trajectories (no-op if disabled)."""
        import contextlib

        if not self.progress:
            return contextlib.nullcontext()
        from rich.progress import Progress

        engine = self

        class _Ctx:
            def __enter__(self_inner):
                self_inner.p = Progress(transient=False)
                self_inner.p.start()
                engine._bar = (self_inner.p, self_inner.p.add_task(label, total=total))
                return self_inner

            def __exit__(self_inner, *exc):
                self_inner.p.stop()
                engine._bar = None

        return _Ctx()


def _safe_step(env: Any, text: str) -> tuple:
    try:
        return ("ok", env.step(text))
    except Exception as e:  # noqa: BLE001 - a crashing env is data (stop_reason "env_error"), not a crash
        return ("error", f"{type(e).__name__}: {e}")


# ----------------------------------------------------------------------------------------------- samplers

Sampler = Callable[..., list[Trajectory]]
SAMPLERS: Registry[Sampler] = Registry("rollout sampler")


@SAMPLERS.register("group")
def sample_groups(engine: RolloutEngine, seeds: Sequence[int], group_size: int = 1) -> list[Trajectory]:
    """G full trajectories per seed; ``group_id = f"{env_id}:{seed}"``; returned seed-major."""
    if group_size < 1:
        raise ConfigError(f"group_size must be >= 1, got {group_size}.")
    factories = [(lambda s=s: engine.new_episode(s)) for s in seeds for _ in range(group_size)]
    with engine.progress_bar(len(factories)):
        eps = engine.run(pending=factories)
    return [e.traj for e in eps]


def group_normalize(x: Sequence[float], eps: float = 1e-6) -> list[float]:
    """``(x - mean) / (std_u + eps)``; 0 for a single value or zero variance (spec §1.1, SLATE row)."""
    n = len(x)
    if n < 2:
        return [0.0] * n
    m = sum(x) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / (n - 1))
    return [(v - m) / (sd + eps) for v in x]


StepScorer = Callable[[Turn], float]
STEP_SCORERS: Registry[StepScorer] = Registry("step scorer")
STEP_SCORERS.add("reward", lambda t: float(t.reward))
STEP_SCORERS.add("progress", lambda t: float(t.reward) + float(t.info.get("value_delta", 0.0) or 0.0))


@SAMPLERS.register("truncated_step")
def sample_truncated_step(
    engine: RolloutEngine,
    seeds: Sequence[int],
    group_size: int = 5,
    *,
    max_steps: int = 4,
    eta: float = 0.7,
    scorer: str = "reward",
    scorer_fn: StepScorer | None = None,
    seed: int = 0,
) -> list[Trajectory]:
    """SLATE truncated step-level sampling (spec §7): `group_size` (= k) candidates per step from one prefix.

    Returns one single-turn `Trajectory` per (seed, step, candidate): ``prompt_ids`` is the shared prefix at
    that step, ``turns`` the candidate, ``outcome`` its step reward (``scorer_fn`` or ``STEP_SCORERS[scorer]``
    applied to the candidate's `Turn`; a judge provider may overwrite it later), ``group_id =
    f"{env_id}:{seed}:step{t}"`` and ``meta["slate"] = {"step", "candidate", "selected", "advantage",
    "path_prefix_turns"}``. The selected candidate (drawn with probability ``softmax(A/eta)``, argmax when
    ``eta <= 0``) advances the path; the path stops when it answered or after `max_steps` steps.

    Departure from the reference: the budget-exhausted forced answer is not generated (paths simply stop).
    """
    import numpy as np

    k = int(group_size)
    if k < 1:
        raise ConfigError(f"truncated_step needs group_size (k) >= 1, got {k}.")
    score = scorer_fn or STEP_SCORERS[scorer]
    rng = np.random.default_rng(seed)
    paths = [engine.new_episode(s) for s in seeds]
    rows: list[Trajectory] = []
    for t in range(max_steps):
        live = [i for i, p in enumerate(paths) if not p.done]
        if not live:
            break
        cands = [[engine.clone(paths[i]) for _ in range(k)] for i in live]
        engine.step_round([c for cs in cands for c in cs])
        for i, cs in zip(live, cands):
            p = paths[i]
            rewards = [score(c.traj.turns[-1]) for c in cs]
            adv = group_normalize(rewards)
            if eta <= 0:
                j = int(np.argmax(adv))
            else:
                z = np.asarray(adv) / eta
                pr = np.exp(z - z.max())
                j = int(rng.choice(k, p=pr / pr.sum()))
            for c_i, (c, r, a) in enumerate(zip(cs, rewards, adv)):
                turn = copy.deepcopy(c.traj.turns[-1])
                meta = copy.deepcopy({k2: v for k2, v in c.traj.meta.items()})
                meta["slate"] = {"step": t, "candidate": c_i, "selected": c_i == j, "advantage": a,
                                 "path_prefix_turns": len(p.traj.turns)}
                rows.append(Trajectory(
                    group_id=f"{engine.env_id}:{p.traj.seed}:step{t}",
                    agent_id=p.traj.agent_id,
                    prompt_ids=list(p.context),
                    prompt_messages=copy.deepcopy(p.traj.prompt_messages),
                    turns=[turn],
                    outcome=float(r),
                    final_answer=c.traj.final_answer,
                    stop_reason=c.traj.stop_reason or "truncated",
                    meta=meta,
                    env_id=engine.env_id,
                    seed=p.traj.seed,
                ))
            chosen = cs[j]
            for c_i, c in enumerate(cs):
                if c_i != j:
                    engine.release(c)
            engine.release(p)
            paths[i] = chosen
    for p in paths:
        engine.release(p)
    if engine.out is not None:
        write_jsonl(engine.out, rows, append=True)
    return rows


@SAMPLERS.register("tree")
def sample_tree(
    engine: RolloutEngine,
    seeds: Sequence[int],
    group_size: int | None = None,
    *,
    branching: Sequence[int] = (2, 2),
) -> list[Trajectory]:
    """Branching rollouts: every episode forks into ``branching[d]`` children before its turn d.

    Leaves share ``group_id = f"{env_id}:{seed}"``; siblings share their prefix tokens exactly;
    ``meta["tree"] = {"path": [branch index per level], "branching": [...]}``. `group_size`, if given, must
    equal the number of leaves ``prod(branching)``.
    """
    branching = [int(b) for b in branching]
    if not branching or min(branching) < 1:
        raise ConfigError(f"tree sampler needs branching factors >= 1, got {branching}.")
    leaves = math.prod(branching)
    if group_size is not None and group_size not in (1, leaves):
        raise ConfigError(
            f"tree sampler: group_size={group_size} but branching={branching} gives {leaves} leaves; "
            "set group_size to their product or leave it unset."
        )

    def start(s: int) -> list[Episode]:
        eps = [engine.new_episode(s) for _ in range(branching[0])]
        for i, e in enumerate(eps):
            e.tag["tree"] = [i]
        return eps

    def fork(running: list[Episode]) -> list[Episode]:
        out: list[Episode] = []
        for e in running:
            d = len(e.traj.turns)
            out.append(e)
            if 1 <= d < len(branching) and len(e.tag["tree"]) == d:
                e.tag["tree"].append(0)
                for b in range(1, branching[d]):
                    c = engine.clone(e)
                    c.tag["tree"][-1] = b
                    out.append(c)
        return out

    def done(e: Episode) -> None:
        e.traj.meta["tree"] = {"path": list(e.tag["tree"]), "branching": branching}

    roots = [e for s in seeds for e in start(s)]
    with engine.progress_bar(len(seeds) * leaves):
        eps = engine.run(roots, before_round=fork, on_done=done)
    # episodes that ended before the last branching level are leaves too
    order = sorted(range(len(eps)), key=lambda i: (seeds.index(eps[i].traj.seed) if eps[i].traj.seed in seeds
                                                   else 0, eps[i].tag["tree"]))
    return [eps[i].traj for i in order]


def collect_rollouts(
    env_id: str,
    policy: Any,
    renderer: Renderer,
    seeds: Sequence[int],
    group_size: int = 1,
    *,
    sampler: str = "group",
    params: SamplingParams | None = None,
    max_turns: int | None = None,
    max_traj_tokens: int | None = None,
    max_context_tokens: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    env_fn: Callable[[], Any] | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    tool_workers: int = 16,
    max_concurrent: int | None = None,
    sampler_kwargs: dict[str, Any] | None = None,
    return_stats: bool = False,
) -> list[Trajectory] | tuple[list[Trajectory], RolloutStats]:
    """Roll out `policy` on `env_id` for `seeds` with a sampler; the one-call entry point.

    Args:
        env_id: Registered env id.
        policy: A policy (`HFPolicy`, `ScriptedPolicy`, `OpenAIPolicy`, `VLLMPolicy`, ...).
        renderer: A `Renderer` for the policy's tokenizer (tool schemas are taken from the env if it has none).
        seeds: Reset seeds, one task each.
        group_size: Trajectories per seed (``group``), candidates per step (``truncated_step``).
        sampler: ``"group"``, ``"truncated_step"``, ``"tree"`` or ``"reflect_retry"`` (`SAMPLERS`).
        params: Sampling settings.
        max_turns, max_traj_tokens, max_context_tokens, env_kwargs, env_fn, tool_workers, max_concurrent,
            out, progress: See `RolloutEngine`.
        sampler_kwargs: Extra keyword arguments for the sampler (e.g. ``{"branching": (2, 2)}``).
        return_stats: Also return the engine's `RolloutStats`.

    Returns:
        The trajectories (and the stats if `return_stats`).
    """
    fn = SAMPLERS[sampler]
    engine = RolloutEngine(
        env_id, policy, renderer, params=params, max_turns=max_turns, max_traj_tokens=max_traj_tokens,
        max_context_tokens=max_context_tokens, env_kwargs=env_kwargs, env_fn=env_fn, tool_workers=tool_workers,
        max_concurrent=max_concurrent, out=out, progress=progress,
    )
    t0 = time.perf_counter()
    try:
        trajs = fn(engine, list(seeds), group_size, **(sampler_kwargs or {}))
    finally:
        engine.close()
        clear = getattr(policy, "clear_cache", None)
        if clear is not None:  # the KV prefix cache is per rollout: free its memory for training
            clear()
    engine.stats.wall_s = time.perf_counter() - t0
    return (trajs, engine.stats) if return_stats else trajs


def summarize(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """Evaluation metrics of a batch of trajectories.

    Returns:
        ``n``, ``success_rate`` (fraction with ``meta["rollout"]["success"]``), ``mean_outcome``,
        ``mean_turns``, ``tool_calls_per_traj``, ``tool_errors_per_traj``, ``parse_errors_per_traj``,
        ``mean_action_tokens``, ``env_errors`` (count) and ``stop_reasons`` (reason -> count).
    """
    n = len(trajectories)
    if n == 0:
        return {"n": 0}
    roll = [t.meta.get("rollout", {}) for t in trajectories]
    reasons: dict[str, int] = {}
    for t in trajectories:
        reasons[t.stop_reason] = reasons.get(t.stop_reason, 0) + 1
    return {
        "n": n,
        "success_rate": sum(bool(r.get("success")) for r in roll) / n,
        "mean_outcome": sum(t.outcome for t in trajectories) / n,
        "mean_turns": sum(t.num_turns for t in trajectories) / n,
        "tool_calls_per_traj": sum(r.get("tool_calls", 0) for r in roll) / n,
        "tool_errors_per_traj": sum(r.get("tool_errors", 0) for r in roll) / n,
        "parse_errors_per_traj": sum(r.get("parse_errors", 0) for r in roll) / n,
        "mean_action_tokens": sum(len(x.action_ids) for t in trajectories for x in t.turns) / n,
        "env_errors": reasons.get("env_error", 0),
        "stop_reasons": dict(sorted(reasons.items())),
    }


# R³L's sampler lives in its own module; importing it registers SAMPLERS["reflect_retry"] whenever this module is used
from turngym.agents import reflect_retry as _reflect_retry  # noqa: F401
