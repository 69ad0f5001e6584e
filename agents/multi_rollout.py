"""Token-level multi-agent rollouts: PettingZoo text envs stepped with one policy per role, one `Trajectory` per agent.

The single-agent engine (`turngym.agents.rollout`) does this for one agent; this module does the same
bookkeeping for every agent of a PettingZoo env, AEC (turn-based: ``multi/SearchTeam-v0``, ``multi/Negotiate-v0``)
or Parallel (simultaneous moves: ``multi/SealedBid-v0``), following ``docs/multi_agent.md`` ("What a rollout
reads"). Each env is stepped through the API ``make`` returns (``env_kwargs={"api": "aec"}`` gives a Parallel game's
``parallel_to_aec`` view, which the engine plays one agent at a time with the same result):

* Each role has an `Actor`: a policy (`HFPolicy`, `ScriptedPolicy`, ...) and a `Renderer` for its tokenizer. The
  renderer gets the agent's own tool schemas (``env.tool_schemas(agent)``) unless the agent's parser teaches its
  call syntax in the instructions (`prompt_agent_schemas`, the tags parser). Several roles may share one policy
  (one shared model with the env's role prompts) or have their own.
* Each *round* takes, in every running episode, the agents to act: the one whose turn it is
  (``env.agent_selection``) in an AEC env, every live agent (``env.agents``) in a Parallel env. It groups those
  contexts by policy and makes ONE batched ``generate`` call per policy, then steps the envs concurrently (a Parallel
  env gets one ``step({agent: text})`` with the round's actions).
* Per agent: its prompt is everything it was told before its first action (rendered once with
  `Renderer.initial`); its sampled ids are appended exactly as sampled; the messages it receives before its next
  action (``env.last()`` observation: tool results, the other agents' messages, errors) are rendered alone with
  `Renderer.observation` and appended. Other agents' actions never enter its context except as those messages.
  The final observation (e.g. "Deal: ...") goes to the last turn's ``obs_messages`` only (no ids, mask 0).
* The reward and info ``env.last()`` returns for an agent close its previous `Turn` (reward, tool calls/results,
  parse errors), as in `turngym.envs.multi.episodes.play_aec` (the text-level reference); in a Parallel env each
  agent's entries of what ``step`` returns close the turn it just took (`turngym.envs.multi.episodes.play_parallel`).
  Env methods (``expert_action``, ``tool_schemas``, ``task``, ``last_infos``) are read from ``env.unwrapped``, so
  PettingZoo's wrappers and converters are transparent.

Trajectory fields: ``agent_id`` = the agent; ``group_id = f"{env_id}:{seed}:{agent}"`` (so per-role baselines compare
the same role on the same task); ``outcome`` = the agent's own outcome (the team outcome in cooperative envs);
``meta`` = the task metadata plus ``success``, ``stop_reason`` (the env's), ``episode`` (an id shared by the agents
of one episode) and ``rollout`` (counts, as in the single-agent engine). ``stop_reason`` is ``terminated`` /
``truncated`` (the env's ``max_cycles``) / ``max_tokens`` (a context ran out of positions or an agent ran out of
``max_traj_tokens``: the episode ends for everyone with outcome 0) / ``env_error``.

`counterfactual_outcomes` replays an episode with one role replaced by its scripted policy (difference rewards,
`turngym.credit.team`), in either API.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pettingzoo import AECEnv, ParallelEnv

from turngym.agents.policy import Sample, SamplingParams, decode_action, with_max_new_tokens
from turngym.agents.render import Renderer
from turngym.agents.rollout import RolloutStats, _safe_step, jsonable
from turngym.errors import ConfigError, EnvError
from turngym.types import Message, Trajectory, Turn

__all__ = [
    "CF_SIGNAL",
    "Actor",
    "MultiEpisode",
    "MultiRolloutEngine",
    "attach_counterfactuals",
    "collect_multi_rollouts",
    "counterfactual_outcomes",
    "episodes_of",
    "make_multi_env",
    "multi_env_texts",
    "team_metrics",
]

CF_SIGNAL = "cf_outcome"
"""Prompt-level signal (``Trajectory.meta["prompt_signals"]``) holding the counterfactual team outcome."""

NO_NEW_MESSAGES = "(no new messages)"
"""User message rendered when an agent must act again but received nothing since its last action."""

_DROP = ("tool_calls", "tool_results", "task")


@dataclass
class Actor:
    """What acts for one role: a policy and a renderer for its tokenizer.

    Attributes:
        policy: ``generate(contexts, params, *, envs=None) -> list[Sample]`` (`turngym.agents.policy`); policies
            with ``needs_envs = True`` (`ScriptedPolicy`) get per-agent env views whose ``expert_action(rng, noise)``
            is the role's scripted policy.
        renderer: A `Renderer` for the policy's tokenizer; each agent's tool schemas are added (`Renderer.for_tools`).
    """

    policy: Any
    renderer: Renderer


def _base(env: Any) -> Any:
    """The text env under PettingZoo's wrappers / converters (it holds ``expert_action``, ``task``, ...)."""
    return getattr(env, "unwrapped", env)


def prompt_agent_schemas(env: Any, agent: str) -> list[dict] | None:
    """The tool schemas ``agent``'s chat template should show: its ``tool_schemas(agent)`` unless its parser
    teaches its own call syntax (``parser.schemas_in_prompt`` false, e.g. the tags parser), as
    `turngym.agents.render.prompt_tool_schemas` does for a single-agent env; ``None`` when there are none."""
    parser = (getattr(env, "parsers", None) or {}).get(agent)
    if parser is not None and not getattr(parser, "schemas_in_prompt", True):
        return None
    schemas = env.tool_schemas(agent) if callable(getattr(env, "tool_schemas", None)) else []
    return list(schemas) or None


class _AgentView:
    """One agent's view of a multi-agent env with the single-agent scripted-expert interface `ScriptedPolicy` calls."""

    def __init__(self, env: Any, agent: str):
        self.env, self.agent = _base(env), agent
        self.default_expert_noise = float(getattr(env, "default_expert_noise", 0.0))

    def expert_action(self, rng: np.random.Generator, noise: float = 0.0) -> str:
        return self.env.expert_action(self.agent, rng, noise)


@dataclass(eq=False)
class MultiEpisode:
    """One running episode with its per-agent trajectories and token contexts (engine-internal).

    ``acting`` are the agents that act in the next round: ``[env.agent_selection]`` (AEC) or the live agents
    (Parallel); empty once the episode is over.
    """

    env: Any
    seed: int | None
    episode_id: str
    trajs: dict[str, Trajectory]
    renderers: dict[str, Renderer]
    contexts: dict[str, list[int]] = field(default_factory=dict)
    pending: dict[str, list[Message]] = field(default_factory=dict)
    closed: dict[str, bool] = field(default_factory=dict)
    action_tokens: dict[str, int] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    parallel: bool = False
    acting: list[str] = field(default_factory=list)
    done: bool = False


class MultiRolloutEngine:
    """Steps many episodes of one multi-agent env id (AEC or Parallel) in batched rounds (see module docstring).

    Args:
        env_id: Registered multi-agent env id (`make_multi_env`).
        actors: ``{agent: Actor}`` for every agent of the env (several agents may share one policy).
        params: Sampling settings (``max_new_tokens`` caps each action).
        max_traj_tokens: Cap on one agent's sampled tokens in an episode (None: no cap).
        max_context_tokens: Cap on one agent's packed sequence (default: the smallest ``max_positions`` of the
            policies).
        env_kwargs: Keyword arguments for ``make``.
        env_fn: Zero-argument env factory used instead of ``make(env_id, **env_kwargs)``.
        tool_workers: Threads stepping envs concurrently.
    """

    def __init__(self, env_id: str, actors: dict[str, Actor], *, params: SamplingParams | None = None,
                 max_traj_tokens: int | None = None, max_context_tokens: int | None = None,
                 env_kwargs: dict[str, Any] | None = None, env_fn: Callable[[], Any] | None = None,
                 tool_workers: int = 8):
        self.env_id = env_id
        self.actors = dict(actors)
        self.params = params or SamplingParams()
        self.max_traj_tokens = max_traj_tokens
        caps = [getattr(a.policy, "max_positions", None) for a in self.actors.values()]
        caps = [c for c in caps if c]
        self.max_context_tokens = max_context_tokens or (min(caps) if caps else None)
        self.env_kwargs = dict(env_kwargs or {})
        self.env_fn = env_fn
        self.tool_workers = int(tool_workers)
        self.stats = RolloutStats()
        self._pool: list[Any] = []
        self._renderers: dict[tuple[int, str], Renderer] = {}
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ envs

    def _make_env(self) -> Any:
        if self._pool:
            return self._pool.pop()
        env = self.env_fn() if self.env_fn is not None else make_multi_env(self.env_id, self.env_kwargs)
        missing = sorted(set(env.possible_agents) - set(self.actors))
        if missing:
            raise ConfigError(
                f"{self.env_id}: no actor for agent(s) {missing}; pass actors for every agent of "
                f"{list(env.possible_agents)}."
            )
        return env

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

    def _renderer(self, env: Any, agent: str) -> Renderer:
        base = self.actors[agent].renderer
        key = (id(base), agent)
        if key not in self._renderers:
            self._renderers[key] = base if base.tool_schemas is not None else base.for_tools(
                prompt_agent_schemas(_base(env), agent))
        return self._renderers[key]

    # ------------------------------------------------------------------ episodes

    def new_episode(self, seed: int | None, episode_id: str) -> MultiEpisode:
        """Make (or reuse) an env, reset it with ``seed`` and advance it to the first decision."""
        t0 = time.perf_counter()
        env = self._make_env()
        parallel = isinstance(env, ParallelEnv)
        first = env.reset(seed=seed)
        agents = list(env.possible_agents)
        trajs = {a: Trajectory(group_id=f"{self.env_id}:{seed}:{a}", agent_id=a, env_id=self.env_id, seed=seed)
                 for a in agents}
        ep = MultiEpisode(
            env=env, seed=seed, episode_id=episode_id, trajs=trajs,
            renderers={a: self._renderer(env, a) for a in agents},
            pending={a: [] for a in agents}, closed={a: True for a in agents},
            action_tokens={a: 0 for a in agents},
            counts={a: {"tool_calls": 0, "tool_errors": 0, "parse_errors": 0, "inexact_ids": 0} for a in agents},
            parallel=parallel,
        )
        self.stats.setup_s += time.perf_counter() - t0
        if parallel:
            for a, obs in first[0].items():
                ep.pending[a].extend(copy.deepcopy(list(obs)))
            self._next_round(ep)
        else:
            self._advance(ep)
        return ep

    def _advance(self, ep: MultiEpisode) -> None:
        """AEC: process ``env.last()`` until an agent must act (``ep.acting``) or the episode is over."""
        env = ep.env
        ep.acting = []
        for _ in range(10_000):
            if not env.agents:
                self._end(ep, None)
                return
            agent = env.agent_selection
            obs, reward, terminated, truncated, info = env.last()
            traj = ep.trajs[agent]
            obs = copy.deepcopy(list(obs))
            if traj.turns:
                self._close_turn(ep, agent, obs, reward, info)
            else:
                ep.pending[agent].extend(obs)
                if reward:
                    traj.meta["reward_before_first_turn"] = traj.meta.get("reward_before_first_turn", 0.0) + reward
            if terminated or truncated:
                self._finish_agent(ep, agent, info, "terminated" if terminated else "truncated")
                env.step(None)
                continue
            if self._ready(ep, agent, obs):
                ep.acting = [agent]
            return
        raise EnvError(f"{self.env_id}: the episode (seed {ep.seed}) did not reach a decision in 10000 steps.")

    def _after_round(self, ep: MultiEpisode, result: tuple) -> None:
        """Parallel: each agent's entries of ``step``'s ``(obs, rewards, terminations, truncations, infos)`` close the
        turn it just took; then the next round starts."""
        obs, rewards, terms, truncs, infos = result
        for agent in ep.acting:
            info = infos.get(agent, {})
            self._close_turn(ep, agent, copy.deepcopy(list(obs.get(agent, []))), float(rewards.get(agent, 0.0)), info)
            if terms.get(agent) or truncs.get(agent):
                self._finish_agent(ep, agent, info, "terminated" if terms.get(agent) else "truncated")
        for agent, o in obs.items():  # an agent that joined without acting yet: messages before its first action
            if agent not in ep.acting and not ep.trajs[agent].turns:
                ep.pending[agent].extend(copy.deepcopy(list(o)))
        self._next_round(ep)

    def _next_round(self, ep: MultiEpisode) -> None:
        """Parallel: every live agent acts next (``ep.acting``), or the episode is over."""
        ep.acting = []
        live = [a for a in ep.env.agents if a not in ep.finished]
        if not live:
            self._end(ep, None)
            return
        for agent in live:
            turns = ep.trajs[agent].turns
            if not self._ready(ep, agent, list(turns[-1].obs_messages) if turns else []):
                return
        ep.acting = live

    def _ready(self, ep: MultiEpisode, agent: str, obs: list[Message]) -> bool:
        """Append what ``agent`` received since its last action to its context (its rendered prompt before its
        first action); False when that (or the next action) would not fit: the episode then ends ``max_tokens``."""
        traj, r = ep.trajs[agent], ep.renderers[agent]
        if not traj.turns:
            traj.prompt_messages = ep.pending[agent]
            traj.prompt_ids = list(r.initial(traj.prompt_messages))
            ep.contexts[agent] = list(traj.prompt_ids)
        else:
            if not obs:
                obs = [{"role": "user", "content": NO_NEW_MESSAGES}]
                traj.turns[-1].obs_messages.extend(obs)
                traj.turns[-1].info["no_new_messages"] = True
            ids = r.observation(obs, closed=ep.closed[agent])
            if self.max_context_tokens is not None and len(ep.contexts[agent]) + len(ids) >= self.max_context_tokens:
                self._end(ep, "max_tokens")
                return False
            traj.turns[-1].obs_ids = list(ids)
            ep.contexts[agent].extend(ids)
        if self._budget(ep, agent) <= 0:
            self._end(ep, "max_tokens")
            return False
        return True

    def _close_turn(self, ep: MultiEpisode, agent: str, obs: list[Message], reward: float, info: dict) -> None:
        turn = ep.trajs[agent].turns[-1]
        turn.obs_messages.extend(obs)
        turn.reward += float(reward)
        if "tool_calls" in info or "tool_results" in info:
            turn.tool_calls = list(info.get("tool_calls") or [])
            turn.tool_results = list(info.get("tool_results") or [])
        turn.info.update(jsonable(info, drop=_DROP))
        c = ep.counts[agent]
        c["tool_calls"] += len(turn.tool_calls)
        c["tool_errors"] += sum(1 for res in turn.tool_results if not res.ok)
        c["parse_errors"] += len(info.get("parse_errors") or [])

    def _finish_agent(self, ep: MultiEpisode, agent: str, info: dict, reason: str) -> None:
        traj = ep.trajs[agent]
        if not traj.turns and not traj.prompt_ids and ep.pending[agent]:
            traj.prompt_messages = ep.pending[agent]
        traj.outcome = float(info.get("outcome", 0.0) or 0.0)
        traj.final_answer = info.get("final_answer")
        traj.stop_reason = reason
        self._meta(ep, agent, info)
        ep.finished.add(agent)

    def _meta(self, ep: MultiEpisode, agent: str, info: dict) -> None:
        traj = ep.trajs[agent]
        task = info.get("task") or getattr(_base(ep.env), "task", None) or {}
        meta = copy.deepcopy(task) if isinstance(task, dict) else {}
        meta.update({k: v for k, v in traj.meta.items() if k not in meta})
        meta["stop_reason"] = info.get("stop_reason", traj.stop_reason)
        meta["success"] = bool(info.get("success", False))
        meta["episode"] = ep.episode_id
        roll: dict[str, Any] = dict(ep.counts[agent])
        roll["success"] = meta["success"]
        meta["rollout"] = roll
        traj.meta = meta

    def _end(self, ep: MultiEpisode, reason: str | None) -> None:
        """Close the episode; agents not finished by the env get ``reason`` (outcome 0)."""
        for agent, traj in ep.trajs.items():
            if agent in ep.finished:
                continue
            if reason is None:  # the env removed the agent without a final last(): use its last info
                info = dict(getattr(_base(ep.env), "last_infos", {}).get(agent, {}))
                traj.outcome = float(info.get("outcome", 0.0) or 0.0)
                traj.final_answer = info.get("final_answer")
                traj.stop_reason = "terminated"
            else:
                info = {"stop_reason": reason, "success": False, "task": getattr(_base(ep.env), "task", None)}
                traj.outcome, traj.stop_reason = 0.0, reason
            self._meta(ep, agent, info)
            ep.finished.add(agent)
        ep.done = True
        ep.acting = []
        if ep.env is not None:
            self._pool.append(ep.env)
            ep.env = None

    def _budget(self, ep: MultiEpisode, agent: str) -> int:
        n = self.params.max_new_tokens
        if self.max_traj_tokens is not None:
            n = min(n, self.max_traj_tokens - ep.action_tokens[agent])
        if self.max_context_tokens is not None:
            n = min(n, self.max_context_tokens - len(ep.contexts[agent]))
        return n

    # ------------------------------------------------------------------ one round

    def step_round(self, episodes: Sequence[MultiEpisode]) -> None:
        """One batched generate call per policy for the agents to act in ``episodes``, then step the envs."""
        ready = [e for e in episodes if not e.done and e.acting]
        if not ready:
            return
        by_policy: dict[int, list[tuple[MultiEpisode, str]]] = {}
        for e in ready:
            for a in e.acting:
                by_policy.setdefault(id(self.actors[a].policy), []).append((e, a))
        samples: dict[tuple[int, str], Sample] = {}
        t0 = time.perf_counter()
        for jobs in by_policy.values():
            policy = self.actors[jobs[0][1]].policy
            budgets = [self._budget(e, a) for e, a in jobs]
            params = with_max_new_tokens(self.params, max(budgets))
            kwargs = {"envs": [_AgentView(e.env, a) for e, a in jobs]} if getattr(policy, "needs_envs", False) else {}
            out = policy.generate([e.contexts[a] for e, a in jobs], params, **kwargs)
            if len(out) != len(jobs):
                raise RuntimeError(f"policy.generate returned {len(out)} samples for {len(jobs)} contexts.")
            for (e, a), s, b in zip(jobs, out, budgets):
                samples[(id(e), a)] = self._cap(e, a, s, b)
        self.stats.generate_s += time.perf_counter() - t0
        self.stats.rounds += 1
        t0 = time.perf_counter()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.tool_workers)
        mine = [{a: samples[(id(e), a)] for a in e.acting} for e in ready]
        actions = [{a: s.text for a, s in m.items()} if e.parallel else next(iter(m.values())).text
                   for e, m in zip(ready, mine)]
        results = list(self._executor.map(_safe_step, [e.env for e in ready], actions))
        self.stats.env_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for e, m, res in zip(ready, mine, results):
            self._record(e, m, res)
        self.stats.render_s += time.perf_counter() - t0

    def _cap(self, ep: MultiEpisode, agent: str, s: Sample, budget: int) -> Sample:
        if len(s.ids) <= budget:
            return s
        r = ep.renderers[agent]
        ids = s.ids[:budget]
        lps = s.logprobs[:budget] if s.logprobs is not None else None
        return Sample(ids=ids, logprobs=lps, text=decode_action(r.tokenizer, ids, r.stop_token_ids),
                      finish_reason="length", exact_ids=s.exact_ids, meta=dict(s.meta))

    def _record(self, ep: MultiEpisode, samples: dict[str, Sample], result: tuple) -> None:
        """Append each acting agent's sampled turn, then read the env's answer (``result`` of `_safe_step`)."""
        for agent, s in samples.items():
            turn = Turn(action_ids=list(s.ids), logprobs=list(s.logprobs) if s.logprobs is not None else [],
                        action_text=s.text)
            turn.info["finish_reason"] = s.finish_reason
            ep.trajs[agent].turns.append(turn)
            ep.contexts[agent].extend(s.ids)
            ep.action_tokens[agent] += len(s.ids)
            ep.closed[agent] = s.finish_reason == "stop"
            self.stats.sampled_tokens += len(s.ids)
            if not s.exact_ids:
                ep.counts[agent]["inexact_ids"] += 1
        if result[0] == "error":
            for t in ep.trajs.values():
                t.meta["env_error"] = result[1]
            self._end(ep, "env_error")
            return
        if ep.parallel:
            self._after_round(ep, result[1])
        else:
            self._advance(ep)

    # ------------------------------------------------------------------ driving

    def run(self, factories: Iterable[Callable[[], MultiEpisode]]) -> list[MultiEpisode]:
        """Start every episode and advance them all to completion in batched rounds; returns them in start order."""
        eps = [f() for f in factories]
        while True:
            running = [e for e in eps if not e.done]
            if not running:
                break
            self.step_round(running)
        self.stats.trajectories += sum(len(e.trajs) for e in eps)
        return eps


def make_multi_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> Any:
    """``make(env_id, **env_kwargs)``, checked to be a PettingZoo AEC or Parallel env the engine can step.

    Raises:
        ConfigError: for a single-agent env, or the Parallel view of a turn-based game (``api="parallel"`` on an
            AEC env: every agent would be asked to act each round, but only the active one's action counts).
    """
    from turngym.envs import make

    env = make(env_id, **dict(env_kwargs or {}))
    if isinstance(env, ParallelEnv) and isinstance(_base(env), AECEnv):
        env.close()
        raise ConfigError(
            f"{env_id} is a turn-based (AEC) game seen through the Parallel API; multi-agent rollouts step it one "
            "agent at a time. Fix: drop env_kwargs.api (or pass api='aec')."
        )
    if not isinstance(env, (AECEnv, ParallelEnv)):
        raise ConfigError(
            f"{env_id} is not a PettingZoo multi-agent env (got {type(env).__name__}); algo=multi and the multi-agent "
            "rollout engine need a multi/... id (AEC or Parallel API). Use algo=grpo for single-agent envs."
        )
    return env


def collect_multi_rollouts(
    env_id: str,
    actors: dict[str, Actor],
    seeds: Sequence[int],
    group_size: int = 1,
    *,
    params: SamplingParams | None = None,
    max_traj_tokens: int | None = None,
    max_context_tokens: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    env_fn: Callable[[], Any] | None = None,
    tool_workers: int = 8,
    return_stats: bool = False,
) -> list[Trajectory] | tuple[list[Trajectory], RolloutStats]:
    """Roll out ``group_size`` episodes per seed; return every agent's trajectory.

    Args:
        env_id: Registered multi-agent env id (AEC or Parallel).
        actors: ``{agent: Actor}`` for every agent.
        seeds: Reset seeds, one task each.
        group_size: Episodes per seed (G). Each role's trajectories on a seed form one group
            (``group_id = f"{env_id}:{seed}:{agent}"``).
        params, max_traj_tokens, max_context_tokens, env_kwargs, env_fn, tool_workers: See `MultiRolloutEngine`.
        return_stats: Also return the engine's `RolloutStats`.

    Returns:
        Trajectories ordered seed-major, then episode, then agent (``env.possible_agents`` order); the agents of
        one episode share ``meta["episode"] = f"{seed}:{g}"``.
    """
    if group_size < 1:
        raise ConfigError(f"group_size must be >= 1, got {group_size}.")
    engine = MultiRolloutEngine(env_id, actors, params=params, max_traj_tokens=max_traj_tokens,
                                max_context_tokens=max_context_tokens, env_kwargs=env_kwargs, env_fn=env_fn,
                                tool_workers=tool_workers)
    t0 = time.perf_counter()
    try:
        eps = engine.run([(lambda s=s, g=g: engine.new_episode(s, f"{s}:{g}"))
                          for s in seeds for g in range(group_size)])
    finally:
        engine.close()
        for a in {id(a.policy): a.policy for a in actors.values()}.values():
            clear = getattr(a, "clear_cache", None)
            if clear is not None:
                clear()
    engine.stats.wall_s = time.perf_counter() - t0
    trajs = [t for e in eps for t in e.trajs.values()]
    return (trajs, engine.stats) if return_stats else trajs


def episodes_of(trajs: Sequence[Trajectory]) -> list[dict[str, Trajectory]]:
    """Group per-agent trajectories back into episodes (``meta["episode"]``), in first-seen order."""
    out: dict[str, dict[str, Trajectory]] = {}
    for t in trajs:
        key = str(t.meta.get("episode", t.group_id))
        out.setdefault(key, {})[t.agent_id] = t
    return list(out.values())


def team_metrics(trajs: Sequence[Trajectory], prefix: str = "team") -> dict[str, float]:
    """Episode-level success (any agent's ``meta["success"]``) and per-role mean outcome / success / turns.

    Keys: ``{prefix}/success``, ``{prefix}/episodes``, ``{prefix}/{agent}/reward``, ``{prefix}/{agent}/success``,
    ``{prefix}/{agent}/turns``, ``{prefix}/{agent}/action_tokens``.
    """
    eps = episodes_of(trajs)
    n = max(len(eps), 1)
    out = {f"{prefix}/success": sum(any(t.meta.get("success") for t in e.values()) for e in eps) / n,
           f"{prefix}/episodes": float(len(eps))}
    roles = sorted({t.agent_id for t in trajs})
    for a in roles:
        ts = [t for t in trajs if t.agent_id == a]
        m = max(len(ts), 1)
        out[f"{prefix}/{a}/reward"] = sum(t.outcome for t in ts) / m
        out[f"{prefix}/{a}/success"] = sum(bool(t.meta.get("success")) for t in ts) / m
        out[f"{prefix}/{a}/turns"] = sum(t.num_turns for t in ts) / m
        out[f"{prefix}/{a}/action_tokens"] = sum(len(u.action_ids) for t in ts for u in t.turns) / m
    return out


# --------------------------------------------------------------------------------------- counterfactuals


def _recorded_obs(traj: Trajectory, k: int) -> list[Message]:
    """What ``traj``'s agent had received right before its action ``k``."""
    if k == 0:
        return list(traj.prompt_messages)
    return [m for m in traj.turns[k - 1].obs_messages if m.get("content") != NO_NEW_MESSAGES]


def counterfactual_outcomes(
    env_id: str,
    episodes: Sequence[dict[str, Trajectory]],
    role: str,
    *,
    noise: float = 0.0,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    env_fn: Callable[[], Any] | None = None,
    max_steps: int = 1000,
) -> list[float]:
    """Replay each episode with ``role`` played by its scripted policy; return ``role``'s outcome per episode.

    The env is reset with the episode's seed (the same task). ``role`` acts with
    ``env.expert_action(role, rng, noise)``. Every other agent replays its recorded actions (text) as long as
    what it receives equals what it received in the recording; from its first divergent observation on (or when
    its recorded actions run out) it follows its scripted policy too. So when ``role`` acts after the others
    (SearchTeam's answerer) the others are held exactly fixed: ``G(z_-i, c_i)`` of difference rewards; when the
    others react to ``role`` they react as the scripted team would. Parallel envs are replayed round by round
    (simultaneous moves: everyone's action is chosen before the round is stepped).

    Args:
        env_id: Registered multi-agent env id (AEC or Parallel).
        episodes: ``{agent: Trajectory}`` per episode (`episodes_of`); each needs ``seed``.
        role: The agent replaced by its scripted (default) policy.
        noise: Mistake probability of the scripted policies (0: the default action is the expert's).
        seed: Seed of the scripted policies' generator (one stream per episode: ``[seed, i]``).
        env_kwargs: Keyword arguments for ``make``; env_fn: factory used instead.
        max_steps: Safety cap on ``step`` calls per episode.

    Returns:
        ``role``'s outcome in each counterfactual episode (same order as ``episodes``).
    """
    env = env_fn() if env_fn is not None else make_multi_env(env_id, env_kwargs)
    play = _replay_parallel if isinstance(env, ParallelEnv) else _replay_aec
    outs: list[float] = []
    try:
        for i, ep in enumerate(episodes):
            if role not in ep:
                raise EnvError(f"counterfactual_outcomes: episode {i} has no trajectory of {role!r}.")
            replay = _Replay(_base(env), ep, role, np.random.default_rng([seed, i]), noise)
            result = play(env, replay, ep[role].seed, max_steps, f"counterfactual_outcomes: episode {i}")
            if result is None:  # the env removed the role without a final observation: its last info
                result = float(getattr(_base(env), "last_infos", {}).get(role, {}).get("outcome", 0.0) or 0.0)
            outs.append(result)
    finally:
        env.close()
    return outs


class _Replay:
    """Actions of one counterfactual episode: ``role`` scripted, the others on record until they see a change."""

    def __init__(self, env: Any, ep: dict[str, Trajectory], role: str, rng: np.random.Generator, noise: float):
        self.env, self.ep, self.role, self.rng, self.noise = env, ep, role, rng, noise
        self.k = {a: 0 for a in env.possible_agents}
        self.on_record = {a: a != role for a in env.possible_agents}
        self.seen: dict[str, list[Message]] = {a: [] for a in env.possible_agents}

    def act(self, agent: str) -> str:
        """``agent``'s next action text, given everything it received since its last one (``seen``)."""
        rec, k = self.ep.get(agent), self.k[agent]
        if self.on_record[agent] and rec is not None and k < len(rec.turns) and \
                self.seen[agent] == _recorded_obs(rec, k):
            text = rec.turns[k].action_text
        else:
            self.on_record[agent] = False
            text = self.env.expert_action(agent, self.rng, self.noise)
        self.seen[agent] = []
        self.k[agent] += 1
        return text


def _replay_aec(env: Any, replay: _Replay, seed: int | None, max_steps: int, what: str) -> float | None:
    role = replay.role
    env.reset(seed=seed)
    result = None
    for n, agent in enumerate(env.agent_iter()):
        if n >= max_steps:
            raise EnvError(f"{what} did not end within {max_steps} steps.")
        obs, _r, term, trunc, info = env.last()
        replay.seen[agent].extend(obs)
        if term or trunc:
            if agent == role:
                result = float(info.get("outcome", 0.0) or 0.0)
            env.step(None)
            continue
        env.step(replay.act(agent))
    return result


def _replay_parallel(env: Any, replay: _Replay, seed: int | None, max_steps: int, what: str) -> float | None:
    role = replay.role
    obs, _ = env.reset(seed=seed)
    result = None
    for _ in range(max_steps):
        if not env.agents:
            return result
        for agent, o in obs.items():
            replay.seen[agent].extend(o)
        obs, _r, terms, truncs, infos = env.step({a: replay.act(a) for a in env.agents})
        if terms.get(role) or truncs.get(role):
            result = float(infos.get(role, {}).get("outcome", 0.0) or 0.0)
    if env.agents:
        raise EnvError(f"{what} did not end within {max_steps} rounds.")
    return result


def attach_counterfactuals(env_id: str, trajs: Sequence[Trajectory], roles: Sequence[str] | None = None, *,
                           noise: float = 0.0, seed: int = 0, env_kwargs: dict[str, Any] | None = None,
                           env_fn: Callable[[], Any] | None = None) -> None:
    """Write each trajectory's counterfactual outcome into ``meta["prompt_signals"]["cf_outcome"]``.

    For a trajectory of agent ``i``: ``role=i``'s `counterfactual_outcomes` of its episode (``roles`` limits which
    agents get one; default: every agent present).
    """
    eps = episodes_of(trajs)
    for role in roles or sorted({t.agent_id for t in trajs}):
        sub = [e for e in eps if role in e]
        if not sub:
            continue
        vals = counterfactual_outcomes(env_id, sub, role, noise=noise, seed=seed, env_kwargs=env_kwargs,
                                       env_fn=env_fn)
        for e, v in zip(sub, vals):
            e[role].meta.setdefault("prompt_signals", {})[CF_SIGNAL] = float(v)


# --------------------------------------------------------------------------------------- tokenizer text


def multi_env_texts(env_id: str, n_seeds: int = 64, expert_noise: float = 0.3,
                    env_kwargs: dict[str, Any] | None = None) -> list[str]:
    """Texts for training a tiny tokenizer on a multi-agent env: every agent's messages, actions and the tool schemas
    its prompt shows (`prompt_agent_schemas`).

    Plays the scripted policies of every role on seeds ``0..n_seeds-1`` (`play_aec` / `play_parallel`).
    """
    import json

    from turngym.envs.multi.episodes import play_aec, play_parallel

    env = make_multi_env(env_id, env_kwargs)
    base = _base(env)
    play = play_parallel if isinstance(env, ParallelEnv) else play_aec
    rng = np.random.default_rng(0)
    texts: list[str] = []
    try:
        for a in env.possible_agents:
            texts.extend(json.dumps(s) for s in prompt_agent_schemas(base, a) or [])
        for seed in range(n_seeds):
            trajs = play(env, lambda agent, _obs: base.expert_action(agent, rng, expert_noise), seed=seed,
                         env_id=env_id)
            for t in trajs.values():
                texts.extend(str(m.get("content") or "") for m in t.prompt_messages)
                for u in t.turns:
                    texts.append(u.action_text)
                    texts.extend(str(m.get("content") or "") for m in u.obs_messages)
    finally:
        env.close()
    return texts
