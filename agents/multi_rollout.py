"""Token-level multi-agent rollouts: AEC text envs stepped with one policy per role, one `Trajectory` per agent.

The single-agent engine (`turngym.agents.rollout`) does this for one agent; this module does the same
bookkeeping for every agent of a PettingZoo AEC env (``multi/SearchTeam-v0``, ``multi/Negotiate-v0``), following
``docs/multi_agent.md`` ("What a rollout reads"):

* Each role has an `Actor`: a policy (`HFPolicy`, `ScriptedPolicy`, ...) and a `Renderer` for its tokenizer. The
  renderer gets the agent's own tool schemas (``env.tool_schemas(agent)``). Several roles may share one policy
  (one shared model with the env's role prompts) or have their own.
* Each *round* takes, in every running episode, the agent whose turn it is (``env.agent_selection``), groups those
  contexts by policy and makes ONE batched ``generate`` call per policy, then steps the envs concurrently.
* Per agent: its prompt is everything it was told before its first action (rendered once with
  `Renderer.initial`); its sampled ids are appended exactly as sampled; the messages it receives before its next
  action (``env.last()`` observation: tool results, the other agents' messages, errors) are rendered alone with
  `Renderer.observation` and appended. Other agents' actions never enter its context except as those messages.
  The final observation (e.g. "Deal: ...") goes to the last turn's ``obs_messages`` only (no ids, mask 0).
* The reward and info ``env.last()`` returns for an agent close its previous `Turn` (reward, tool calls/results,
  parse errors), as in `turngym.envs.multi.episodes.play_aec` (the text-level reference).

Trajectory fields: ``agent_id`` = the agent; ``group_id = f"{env_id}:{seed}:{agent}"`` (so per-role baselines compare
the same role on the same task); ``outcome`` = the agent's own outcome (the team outcome in cooperative envs);
``meta`` = the task metadata plus ``success``, ``stop_reason`` (the env's), ``episode`` (an id shared by the agents
of one episode) and ``rollout`` (counts, as in the single-agent engine). ``stop_reason`` is ``terminated`` /
``truncated`` (the env's ``max_cycles``) / ``max_tokens`` (a context ran out of positions or an agent ran out of
``max_traj_tokens``: the episode ends for everyone with outcome 0) / ``env_error``.

`counterfactual_outcomes` replays an episode with one role replaced by its scripted policy (difference rewards,
`turngym.credit.team`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


class _AgentView:
    """One agent's view of a multi-agent env with the single-agent scripted-expert interface `ScriptedPolicy` calls."""

    def __init__(self, env: Any, agent: str):
        self.env, self.agent = env, agent
        self.default_expert_noise = float(getattr(env, "default_expert_noise", 0.0))

    def expert_action(self, rng: np.random.Generator, noise: float = 0.0) -> str:
        return self.env.expert_action(self.agent, rng, noise)


@dataclass(eq=False)
class MultiEpisode:
    """One running AEC episode with its per-agent trajectories and token contexts (engine-internal)."""

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
    next_agent: str | None = None
    done: bool = False


class MultiRolloutEngine:
    """Steps many episodes of one AEC env id in batched rounds (see module docstring).

    Args:
        env_id: Registered multi-agent env id (an AEC env, or one whose ``api="aec"`` view is used).
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
        env = self.env_fn() if self.env_fn is not None else _make_aec(self.env_id, self.env_kwargs)
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
            schemas = env.tool_schemas(agent) if callable(getattr(env, "tool_schemas", None)) else []
            self._renderers[key] = base if base.tool_schemas is not None else base.for_tools(schemas or None)
        return self._renderers[key]

    # ------------------------------------------------------------------ episodes

    def new_episode(self, seed: int | None, episode_id: str) -> MultiEpisode:
        """Make (or reuse) an env, reset it with ``seed`` and advance it to the first decision."""
        t0 = time.perf_counter()
        env = self._make_env()
        env.reset(seed=seed)
        agents = list(env.possible_agents)
        trajs = {a: Trajectory(group_id=f"{self.env_id}:{seed}:{a}", agent_id=a, env_id=self.env_id, seed=seed)
                 for a in agents}
        ep = MultiEpisode(
            env=env, seed=seed, episode_id=episode_id, trajs=trajs,
            renderers={a: self._renderer(env, a) for a in agents},
            pending={a: [] for a in agents}, closed={a: True for a in agents},
            action_tokens={a: 0 for a in agents},
            counts={a: {"tool_calls": 0, "tool_errors": 0, "parse_errors": 0, "inexact_ids": 0} for a in agents},
        )
        self.stats.setup_s += time.perf_counter() - t0
        self._advance(ep)
        return ep

    def _advance(self, ep: MultiEpisode) -> None:
        """Process ``env.last()`` until an agent must act (``ep.next_agent``) or the episode is over."""
        env = ep.env
        ep.next_agent = None
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
            r = ep.renderers[agent]
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
                    return
                traj.turns[-1].obs_ids = list(ids)
                ep.contexts[agent].extend(ids)
            if self._budget(ep, agent) <= 0:
                self._end(ep, "max_tokens")
                return
            ep.next_agent = agent
            return
        raise EnvError(f"{self.env_id}: the episode (seed {ep.seed}) did not reach a decision in 10000 steps.")

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
        task = info.get("task") or getattr(ep.env, "task", None) or {}
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
                info = dict(getattr(ep.env, "last_infos", {}).get(agent, {}))
                traj.outcome = float(info.get("outcome", 0.0) or 0.0)
                traj.final_answer = info.get("final_answer")
                traj.stop_reason = "terminated"
            else:
                info = {"stop_reason": reason, "success": False, "task": getattr(ep.env, "task", None)}
                traj.outcome, traj.stop_reason = 0.0, reason
            self._meta(ep, agent, info)
            ep.finished.add(agent)
        ep.done = True
        ep.next_agent = None
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
        ready = [e for e in episodes if not e.done and e.next_agent is not None]
        if not ready:
            return
        by_policy: dict[int, list[MultiEpisode]] = {}
        for e in ready:
            by_policy.setdefault(id(self.actors[e.next_agent].policy), []).append(e)
        samples: dict[int, Sample] = {}
        t0 = time.perf_counter()
        for eps in by_policy.values():
            policy = self.actors[eps[0].next_agent].policy
            budgets = [self._budget(e, e.next_agent) for e in eps]
            params = with_max_new_tokens(self.params, max(budgets))
            kwargs = ({"envs": [_AgentView(e.env, e.next_agent) for e in eps]}
                      if getattr(policy, "needs_envs", False) else {})
            out = policy.generate([e.contexts[e.next_agent] for e in eps], params, **kwargs)
            if len(out) != len(eps):
                raise RuntimeError(f"policy.generate returned {len(out)} samples for {len(eps)} contexts.")
            for e, s, b in zip(eps, out, budgets):
                samples[id(e)] = self._cap(e, s, b)
        self.stats.generate_s += time.perf_counter() - t0
        self.stats.rounds += 1
        t0 = time.perf_counter()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.tool_workers)
        results = list(self._executor.map(_safe_step, [e.env for e in ready], [samples[id(e)].text for e in ready]))
        self.stats.env_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for e, res in zip(ready, results):
            self._record(e, samples[id(e)], res)
        self.stats.render_s += time.perf_counter() - t0

    def _cap(self, ep: MultiEpisode, s: Sample, budget: int) -> Sample:
        if len(s.ids) <= budget:
            return s
        r = ep.renderers[ep.next_agent]
        ids = s.ids[:budget]
        lps = s.logprobs[:budget] if s.logprobs is not None else None
        return Sample(ids=ids, logprobs=lps, text=decode_action(r.tokenizer, ids, r.stop_token_ids),
                      finish_reason="length", exact_ids=s.exact_ids, meta=dict(s.meta))

    def _record(self, ep: MultiEpisode, s: Sample, result: tuple) -> None:
        agent = ep.next_agent
        assert agent is not None
        traj = ep.trajs[agent]
        turn = Turn(action_ids=list(s.ids), logprobs=list(s.logprobs) if s.logprobs is not None else [],
                    action_text=s.text)
        turn.info["finish_reason"] = s.finish_reason
        traj.turns.append(turn)
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


def _make_aec(env_id: str, env_kwargs: dict[str, Any]) -> Any:
    from pettingzoo import AECEnv

    from turngym.envs import make

    env = make(env_id, **env_kwargs)
    if not isinstance(env, AECEnv):
        raise ConfigError(
            f"{env_id} is not a PettingZoo AEC env (got {type(env).__name__}); multi-agent rollouts step turn-based "
            "envs. Pass env_kwargs={'api': 'aec'} for a Parallel env's AEC view."
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
        env_id: Registered multi-agent AEC env id.
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
    others react to ``role`` they react as the scripted team would.

    Args:
        env_id: Registered multi-agent AEC env id.
        episodes: ``{agent: Trajectory}`` per episode (`episodes_of`); each needs ``seed``.
        role: The agent replaced by its scripted (default) policy.
        noise: Mistake probability of the scripted policies (0: the default action is the expert's).
        seed: Seed of the scripted policies' generator (one stream per episode: ``[seed, i]``).
        env_kwargs: Keyword arguments for ``make``; env_fn: factory used instead.
        max_steps: Safety cap on ``step`` calls per episode.

    Returns:
        ``role``'s outcome in each counterfactual episode (same order as ``episodes``).
    """
    env = env_fn() if env_fn is not None else _make_aec(env_id, dict(env_kwargs or {}))
    outs: list[float] = []
    try:
        for i, ep in enumerate(episodes):
            if role not in ep:
                raise EnvError(f"counterfactual_outcomes: episode {i} has no trajectory of {role!r}.")
            seed_i = ep[role].seed
            rng = np.random.default_rng([seed, i])
            env.reset(seed=seed_i)
            k = {a: 0 for a in env.possible_agents}
            on_record = {a: a != role for a in env.possible_agents}
            seen: dict[str, list[Message]] = {a: [] for a in env.possible_agents}
            result = 0.0
            for n, agent in enumerate(env.agent_iter()):
                if n >= max_steps:
                    raise EnvError(f"counterfactual_outcomes: episode {i} did not end within {max_steps} steps.")
                obs, _r, term, trunc, info = env.last()
                seen[agent].extend(obs)
                if term or trunc:
                    if agent == role:
                        result = float(info.get("outcome", 0.0) or 0.0)
                    env.step(None)
                    continue
                rec = ep.get(agent)
                if on_record[agent] and rec is not None and k[agent] < len(rec.turns) and \
                        seen[agent] == _recorded_obs(rec, k[agent]):
                    text = rec.turns[k[agent]].action_text
                else:
                    on_record[agent] = False
                    text = env.expert_action(agent, rng, noise)
                seen[agent] = []
                k[agent] += 1
                env.step(text)
            if role in getattr(env, "last_infos", {}) and result == 0.0:
                result = float(env.last_infos[role].get("outcome", 0.0) or 0.0)
            outs.append(result)
    finally:
        env.close()
    return outs


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
    """Texts for training a tiny tokenizer on a multi-agent env: every agent's messages, actions and tool schemas.

    Plays the scripted policies of every role on seeds ``0..n_seeds-1`` (`play_aec`).
    """
    import json

    from turngym.envs.multi.episodes import play_aec

    env = _make_aec(env_id, dict(env_kwargs or {}))
    rng = np.random.default_rng(0)
    texts: list[str] = []
    try:
        for a in env.possible_agents:
            texts.extend(json.dumps(s) for s in env.tool_schemas(a))
        for seed in range(n_seeds):
            trajs = play_aec(env, lambda agent, _obs: env.expert_action(agent, rng, expert_noise), seed=seed,
                             env_id=env_id)
            for t in trajs.values():
                texts.extend(str(m.get("content") or "") for m in t.prompt_messages)
                for u in t.turns:
                    texts.append(u.action_text)
                    texts.extend(str(m.get("content") or "") for m in u.obs_messages)
    finally:
        env.close()
    return texts
