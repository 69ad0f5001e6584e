"""Play one multi-agent episode with text policies and record each agent's turns as its own `Trajectory`.

This is the text-level reference of what a multi-agent rollout reads from the envs (the token-level rollout
engine follows the same bookkeeping and adds token ids / log-probs):

- AEC: the agent to act is ``env.agent_selection``. Its observation ``env.last()[0]`` holds the messages it
  received since its last action; they close its previous turn (``Turn.obs_messages``), or form its prompt
  before its first action. The reward from ``env.last()`` is what the agent collected since its last action:
  it is credited to that previous turn, and the info from ``env.last()`` is that turn's step info (tool calls
  and results, parse errors; ``env.infos[agent]`` right after ``env.step`` holds the same in turngym's own AEC
  envs, but not in a ``parallel_to_aec`` view, where infos arrive when the round closes). An agent whose
  ``last()`` says terminated/truncated gets ``step(None)``; its final info carries the outcome.
- Parallel: each ``step(actions)`` returns, per agent, the messages, reward and info that close the turn it
  just took.

Each trajectory has ``agent_id`` = the agent (its role), ``group_id = f"{env_id}:{seed}"`` (group by
``(group_id, agent_id)`` for per-role baselines), ``outcome`` = the agent's own outcome (the team outcome in
cooperative envs), ``meta`` = the task metadata.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from pettingzoo import AECEnv, ParallelEnv

from turngym.errors import EnvError
from turngym.types import Message, Trajectory, Turn

TextPolicy = Callable[[str, list[Message]], str]
"""``policy(agent, new_messages) -> action text``."""

__all__ = ["TextPolicy", "play_aec", "play_parallel"]

_TURN_INFO_SKIP = ("tool_calls", "tool_results", "task")


def _turn_info(info: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in info.items() if k not in _TURN_INFO_SKIP}


def _new_traj(env: Any, agent: str, env_id: str, seed: int | None) -> Trajectory:
    return Trajectory(group_id=f"{env_id}:{seed}", agent_id=agent, env_id=env_id, seed=seed)


def _finish(traj: Trajectory, info: dict[str, Any], terminated: bool) -> None:
    traj.outcome = float(info.get("outcome", 0.0))
    traj.final_answer = info.get("final_answer")
    traj.stop_reason = "terminated" if terminated else "truncated"
    traj.meta = copy.deepcopy(info.get("task") or {})
    traj.meta["stop_reason"] = info.get("stop_reason")
    traj.meta["success"] = bool(info.get("success", False))


def play_aec(
    env: AECEnv,
    policies: dict[str, TextPolicy] | TextPolicy,
    *,
    seed: int | None = None,
    env_id: str = "",
    options: dict[str, Any] | None = None,
    max_steps: int = 10_000,
) -> dict[str, Trajectory]:
    """Play one AEC episode; return one `Trajectory` per agent (text only: no token ids).

    Args:
        env: A PettingZoo AEC env with chat-message observations and text actions.
        policies: One policy per agent, or one policy for all.
        seed: Reset seed.
        env_id: Registered id, for ``group_id`` / ``env_id``.
        options: Reset options.
        max_steps: Safety cap on ``step`` calls.

    Returns:
        ``{agent: Trajectory}`` for every possible agent (an agent that never acted has no turns).
    """
    env.reset(seed=seed, options=options)
    agents = list(env.possible_agents)
    trajs = {a: _new_traj(env, a, env_id, seed) for a in agents}
    pending_prompt: dict[str, list[Message]] = {a: [] for a in agents}
    for n, agent in enumerate(env.agent_iter()):
        if n >= max_steps:
            raise EnvError(f"play_aec: episode did not end within max_steps={max_steps} steps.")
        obs, reward, terminated, truncated, info = env.last()
        traj = trajs[agent]
        if traj.turns:
            last = traj.turns[-1]
            last.obs_messages.extend(copy.deepcopy(list(obs)))
            last.reward += float(reward)
            last.tool_calls = list(info.get("tool_calls", []))
            last.tool_results = list(info.get("tool_results", []))
            last.info = _turn_info(info)
        else:
            pending_prompt[agent].extend(copy.deepcopy(list(obs)))
            if reward:
                traj.meta["reward_before_first_turn"] = traj.meta.get(
                    "reward_before_first_turn", 0.0
                ) + float(reward)
        if terminated or truncated:
            if not traj.turns:
                traj.prompt_messages = pending_prompt[agent]
            _finish(traj, info, terminated)
            env.step(None)
            continue
        if not traj.turns:
            traj.prompt_messages = pending_prompt[agent]
        policy = policies[agent] if isinstance(policies, dict) else policies
        text = policy(agent, list(obs))
        env.step(text)
        traj.turns.append(Turn(action_text=text))
    return trajs


def play_parallel(
    env: ParallelEnv,
    policies: dict[str, TextPolicy] | TextPolicy,
    *,
    seed: int | None = None,
    env_id: str = "",
    options: dict[str, Any] | None = None,
    max_rounds: int = 10_000,
) -> dict[str, Trajectory]:
    """Play one Parallel episode; return one `Trajectory` per agent (text only: no token ids).

    Args:
        env: A PettingZoo Parallel env with chat-message observations and text actions.
        policies: One policy per agent, or one policy for all.
        seed: Reset seed.
        env_id: Registered id, for ``group_id`` / ``env_id``.
        options: Reset options.
        max_rounds: Safety cap on ``step`` calls.
    """
    obs, _ = env.reset(seed=seed, options=options)
    trajs = {a: _new_traj(env, a, env_id, seed) for a in env.possible_agents}
    for a, o in obs.items():
        trajs[a].prompt_messages = copy.deepcopy(list(o))
    for _ in range(max_rounds):
        if not env.agents:
            return trajs
        actions = {}
        for a in env.agents:
            policy = policies[a] if isinstance(policies, dict) else policies
            actions[a] = policy(a, list(obs.get(a, [])))
        obs, rewards, terms, truncs, infos = env.step(actions)
        for a, text in actions.items():
            info = infos.get(a, {})
            trajs[a].turns.append(
                Turn(
                    action_text=text,
                    obs_messages=copy.deepcopy(list(obs.get(a, []))),
                    tool_calls=list(info.get("tool_calls", [])),
                    tool_results=list(info.get("tool_results", [])),
                    reward=float(rewards.get(a, 0.0)),
                    info=_turn_info(info),
                )
            )
            if terms.get(a) or truncs.get(a):
                _finish(trajs[a], info, bool(terms.get(a)))
    if env.agents:
        raise EnvError(f"play_parallel: episode did not end within max_rounds={max_rounds} rounds.")
    return trajs
