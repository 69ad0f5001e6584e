"""Text multi-agent environments that are real PettingZoo envs.

Two base classes, one per PettingZoo API, share the same conventions:

- `TextAECEnv` (a `pettingzoo.AECEnv`): agents act one at a time; ``env.agent_selection`` says whose turn it is.
- `TextParallelEnv` (a `pettingzoo.ParallelEnv`): all live agents act at once each round.

Conventions (the same as the single-agent `turngym.envs.core.Env`, per agent):

- Observations are chat messages: a `ChatObs` (a plain ``list`` of ``{"role", "content", ...}`` dicts) in a
  `ChatSpace`. An agent's observation holds only the messages it received since its own last action; the
  first one holds its system prompt (role, rules) and the task. ``env.history(agent)`` returns the whole
  conversation of one agent (its observations and its own actions as ``assistant`` messages).
- Actions are text (`TextSpace`): the agent's raw output. Each agent has its own parser (``"tags"`` or
  ``"hermes"``) and its own tools (a `ToolSet`, or none). Tool results come back to the calling agent as
  ``role="tool"`` messages; messages from other agents come as ``role="user"`` messages with a ``name`` key.
- Bad actions are data: junk, malformed calls, illegal moves and unknown tools become an error message in
  the acting agent's next observation and a counted ``info`` field; the episode goes on. A framework misuse
  (``step`` before ``reset``, a non-text action) raises `turngym.errors.EnvError`.
- Each env owns its RNG: ``reset(seed=s)`` seeds ``env.np_random`` (Gymnasium's `seeding.np_random`); the
  same seed and the same actions give the same observations, rewards and infos (PettingZoo's ``seed_test``).
  Infos are deterministic: tool results carry ``duration_s=0.0``; wall-clock tool time is in
  ``env.tool_time_s``.
- Rewards: each agent's episode return equals its ``outcome`` (a float in [0, 1]), paid on the step that
  ends the episode unless the env pays part of it earlier (per-round rewards).
- Info keys of the acting agent after each of its steps (``env.infos[agent]``): ``tool_calls``,
  ``tool_results``, ``parse_errors``, ``tool_errors``, ``invalid``, ``turn``, ``episode_counts``; at the
  end every agent's info also gets ``final_answer``, ``success``, ``outcome``, ``task``, ``stop_reason``.
- A per-agent action budget ``max_cycles`` (AEC: actions per agent, counting bad ones; parallel: rounds)
  truncates the episode for everyone.

A new env subclasses one base and fills in hooks (see `examples/two_agent_env.py` for a full env in about 30
lines): ``possible_agents``, `_start` (draw the task with ``rng``, `send` each agent its first messages),
`_turn` (AEC) or `_round` (parallel) which read the parsed `Action`, `send` messages, `run_tools`, `reject`
bad moves, pass the turn (set ``self.agent_selection``), `give` rewards and `end` the episode; optionally
`_make_tools` (per-agent tools), `_instructions` and `_expert` (the scripted policy behind `expert_action`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from pettingzoo import AECEnv, ParallelEnv

from turngym.envs.spaces import ChatSpace, TextSpace
from turngym.errors import EnvError
from turngym.types import Message, ToolCall, ToolResult

__all__ = ["END_INFO_KEYS", "STEP_INFO_KEYS", "Action", "ChatObs", "TextAECEnv", "TextParallelEnv"]

STEP_INFO_KEYS = (
    "tool_calls",
    "tool_results",
    "parse_errors",
    "tool_errors",
    "invalid",
    "turn",
    "episode_counts",
)
"""Keys of ``env.infos[agent]`` after each of that agent's steps."""

END_INFO_KEYS = ("final_answer", "success", "outcome", "task", "stop_reason")
"""Keys added to every agent's info when the episode ends."""


class ChatObs(list):
    """An observation: an ordinary ``list`` of chat-message dicts.

    The only addition is the class attribute ``dtype = None``, equal to `ChatSpace.dtype`: PettingZoo's
    ``api_test`` compares the observation's ``dtype`` with its space's. JSON-able and comparable like a list.
    """

    dtype = None

    def __repr__(self) -> str:
        return f"ChatObs({list.__repr__(self)})"


@dataclass
class Action:
    """One agent's parsed action, handed to `TextAECEnv._turn` / `TextParallelEnv._round`.

    Attributes:
        text: The action text after sanitising (what the agent's history records).
        calls: Well-formed tool calls, in order.
        answer: The ``<answer>...</answer>`` content (the agent's move / final answer), or None.
        errors: Sanitising and parsing errors (malformed calls, cut text), shown to the agent by `reject`.
    """

    text: str
    calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None
    errors: list[str] = field(default_factory=list)


def _as_toolset(tools: Any, timeout_s: float) -> Any:
    if tools is None:
        return None
    from turngym.tools.toolset import ToolSet

    if isinstance(tools, ToolSet):
        return tools
    if isinstance(tools, (list, tuple)):
        return ToolSet(list(tools), timeout_s=timeout_s) if tools else None
    raise EnvError(
        f"_make_tools must return a ToolSet, a list of tools, or None; got {type(tools).__name__}."
    )


def _short(s: str, n: int = 300) -> str:
    return s if len(s) <= n else s[:n] + "..."


class _TextAgents:
    """Behaviour shared by `TextAECEnv` and `TextParallelEnv`: spaces, tools, parsers, RNG, message books.

    Not used on its own; the hooks and helpers below are documented for env authors.
    """

    possible_agents: list[str] = []
    metadata: dict[str, Any] = {
        "name": "text_multi_agent",
        "render_modes": ["ansi"],
        "is_parallelizable": False,
    }
    parser_name: str = "tags"
    default_expert_noise: float = 0.1

    def _setup(
        self,
        *,
        parser: str | None,
        max_cycles: int,
        max_action_chars: int,
        max_calls_per_action: int,
        tool_timeout_s: float,
        render_mode: str | None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata.get("render_modes", []):
            raise EnvError(
                f"render_mode={render_mode!r} is not supported by {type(self).__name__}; "
                f"use one of {self.metadata.get('render_modes', [])} or None."
            )
        if not isinstance(max_cycles, int) or max_cycles < 1:
            raise EnvError(f"max_cycles must be a positive int, got {max_cycles!r}.")
        if not self.possible_agents:
            raise EnvError(f"{type(self).__name__} must set possible_agents (e.g. ['player_0', 'player_1']).")
        self.render_mode = render_mode
        self.possible_agents = list(self.possible_agents)
        self.max_cycles = max_cycles
        self.max_action_chars = int(max_action_chars)
        self.max_calls_per_action = int(max_calls_per_action)
        self.parser_name = parser if parser is not None else type(self).parser_name
        self._action_spaces = {a: TextSpace(self.max_action_chars) for a in self.possible_agents}
        self._observation_spaces = {
            a: ChatSpace(max_messages=max(256, 4 * max_calls_per_action), max_content_length=1 << 20)
            for a in self.possible_agents
        }
        self.toolsets = {a: _as_toolset(self._make_tools(a), tool_timeout_s) for a in self.possible_agents}
        from turngym.tools.parsers import get_parser

        self.parsers = {a: get_parser(self.parser_name, self.tool_schemas(a)) for a in self.possible_agents}
        self._np_random: np.random.Generator | None = None
        self.np_random_seed: int | None = None
        self.task: dict[str, Any] | None = None
        self._closed = False
        self._over = True
        self._pending: dict[str, list[Message]] = {}
        self._history: dict[str, list[Message]] = {}
        self._transcript: list[tuple[str, Message]] = []
        self.tool_time_s: dict[str, float] = {}

    # ------------------------------------------------------------------ hooks for subclasses
    def _make_tools(self, agent: str) -> Any:
        """The tools of ``agent``: a `ToolSet`, a list of `Tool`s, or None (default: no tools)."""
        return None

    def _start(self, rng: np.random.Generator, options: dict[str, Any] | None) -> dict[str, Any]:
        """Draw the episode with ``rng``, `send` each agent its first messages; return the task metadata.

        The metadata must be JSON-able; it is published as ``info["task"]``. AEC envs may set
        ``self.agent_selection`` (default: the first of ``possible_agents``).
        """
        raise NotImplementedError

    def _expert(self, agent: str, rng: np.random.Generator, noise: float) -> str:
        """The scripted policy of ``agent``'s role: its next action text (see `expert_action`)."""
        raise NotImplementedError(f"{type(self).__name__} has no scripted policy.")

    # ------------------------------------------------------------------ spaces, tools, RNG
    def observation_space(self, agent: str) -> ChatSpace:
        """The agent's observation space (the same object on every call)."""
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> TextSpace:
        """The agent's action space (the same object on every call)."""
        return self._action_spaces[agent]

    def tool_schemas(self, agent: str) -> list[dict[str, Any]]:
        """JSON schemas of ``agent``'s tools, for its chat template (empty for a tool-free agent)."""
        ts = self.toolsets.get(agent)
        return list(ts.schemas) if ts is not None else []

    @property
    def np_random(self) -> np.random.Generator:
        """The env's own generator (seeded by ``reset(seed=...)``; created unseeded on first use)."""
        if self._np_random is None:
            self._np_random, self.np_random_seed = seeding.np_random()
        return self._np_random

    def _seed(self, seed: int | None) -> None:
        if seed is not None or self._np_random is None:
            self._np_random, self.np_random_seed = seeding.np_random(seed)

    def _begin(self, seed: int | None, options: dict[str, Any] | None) -> None:
        if self._closed:
            raise EnvError(f"{type(self).__name__}.reset() called after close(); create a new env.")
        self._seed(seed)
        self.reset_seed = seed  # the seed of this episode (None: unseeded)
        self.agents = list(self.possible_agents)
        self._pending = {a: [] for a in self.agents}
        self._history = {a: [] for a in self.agents}
        self._transcript = []
        self._turns = {a: 0 for a in self.agents}
        self._returns = {a: 0.0 for a in self.agents}
        self._step_rewards = {a: 0.0 for a in self.agents}
        self._counts = {
            a: {"tool_calls": 0, "tool_errors": 0, "parse_errors": 0, "invalid": 0} for a in self.agents
        }
        self.tool_time_s = {a: 0.0 for a in self.agents}
        self._step_infos: dict[str, dict[str, Any]] = {}
        self._over = False
        self._end_state: dict[str, Any] | None = None
        self.task = None
        task = self._start(self.np_random, options)
        if not isinstance(task, dict):
            raise EnvError(
                f"{type(self).__name__}._start must return the task metadata dict, got {type(task).__name__}."
            )
        self.task = copy.deepcopy(task)

    # ------------------------------------------------------------------ helpers for subclasses
    def send(self, agent: str, content: str, *, role: str = "user", name: str | None = None) -> None:
        """Deliver a message to ``agent``: it appears in its next observation and in its history.

        Args:
            agent: Recipient.
            content: Message text.
            role: ``"system"``, ``"user"`` or ``"tool"``.
            name: Sender name (another agent's id, or the tool name for ``role="tool"``).
        """
        if agent not in self._pending:
            raise EnvError(f"send(): unknown agent {agent!r}; agents are {self.possible_agents}.")
        msg: Message = {"role": role, "content": str(content)}
        if name is not None:
            msg["name"] = name
        self._pending[agent].append(msg)
        self._history[agent].append(copy.deepcopy(msg))
        self._transcript.append((agent, copy.deepcopy(msg)))

    def broadcast(self, content: str, *, name: str | None = None, exclude: tuple[str, ...] = ()) -> None:
        """`send` the same ``user`` message to every live agent except ``exclude``."""
        for a in self.agents:
            if a not in exclude:
                self.send(a, content, name=name)

    def run_tools(self, agent: str, calls: list[ToolCall]) -> list[ToolResult]:
        """Run ``agent``'s calls through its `ToolSet`; results go to ``agent`` as ``tool`` messages.

        Unknown tools (and any call of a tool-free agent) come back as failed results. The results are
        recorded in the step info (``tool_calls``, ``tool_results``, ``tool_errors``).
        """
        calls = list(calls)
        ts = self.toolsets.get(agent)
        if ts is None:
            results = [
                ToolResult(
                    name=c.name,
                    ok=False,
                    error=f"unknown tool {c.name!r}: {agent} has no tools in this environment",
                    call_id=c.id,
                )
                for c in calls
            ]
        else:
            results = list(ts.execute(calls))
        clean = []
        for r in results:
            self.tool_time_s[agent] += float(r.duration_s)
            clean.append(dataclasses.replace(r, duration_s=0.0))
            self.send(agent, r.text, role="tool", name=r.name)
        info = self._step_infos[agent]
        info["tool_calls"].extend(calls)
        info["tool_results"].extend(clean)
        n_err = sum(1 for r in clean if not r.ok)
        info["tool_errors"] += n_err
        self._counts[agent]["tool_calls"] += len(calls)
        self._counts[agent]["tool_errors"] += n_err
        return clean

    def reject(self, agent: str, reason: str, errors: list[str] | None = None) -> None:
        """Mark ``agent``'s action as invalid and tell it why (an error ``user`` message)."""
        errs = [e for e in (errors or []) if e]
        text = "Error: " + "; ".join(_short(e) for e in [*errs, reason] if e)
        self._step_infos[agent]["invalid"] = True
        self._counts[agent]["invalid"] += 1
        self.send(agent, text)

    def give(self, agent: str, reward: float) -> None:
        """Pay ``agent`` a reward on this step (adds to its return)."""
        self._step_rewards[agent] += float(reward)
        self._returns[agent] += float(reward)

    def end(
        self,
        outcomes: Mapping[str, float] | None = None,
        *,
        success: Mapping[str, bool] | bool | None = None,
        final_answer: str | None = None,
        truncated: bool = False,
        stop_reason: str = "terminated",
        extra: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """End the episode for every agent.

        Args:
            outcomes: Each agent's outcome in [0, 1]; it gets ``outcome - return so far`` as reward now, so its
                episode return equals its outcome. None keeps the returns so far as outcomes.
            success: Per-agent success, or one bool for everyone (default: ``outcome >= 0.5``).
            final_answer: The episode's final answer or agreement text (same for everyone).
            truncated: Cut by a limit (``truncations``) instead of ended by the rules (``terminations``).
            stop_reason: Short reason in ``info["stop_reason"]`` (e.g. ``"answered"``, ``"max_cycles"``).
            extra: Per-agent extra info keys.
        """
        if self._over:
            raise EnvError(f"{type(self).__name__}.end() called twice in one episode.")
        outs: dict[str, float] = {}
        for a in self.agents:
            o = float(outcomes[a]) if outcomes is not None and a in outcomes else self._returns[a]
            if not (0.0 <= o <= 1.0 + 1e-9):
                raise EnvError(f"{type(self).__name__}: outcome of {a} is {o}, expected a float in [0, 1].")
            outs[a] = min(o, 1.0)
            delta = outs[a] - self._returns[a]
            if delta != 0.0:
                self.give(a, delta)
        for a in self.agents:
            s = success if isinstance(success, bool) else (success or {}).get(a, outs[a] >= 0.5)
            info = self._step_infos.setdefault(a, self._first_info(a))
            info.update(
                {
                    "final_answer": final_answer,
                    "success": bool(s),
                    "outcome": outs[a],
                    "task": copy.deepcopy(self.task),
                    "stop_reason": stop_reason,
                }
            )
            if extra and a in extra:
                info.update(copy.deepcopy(dict(extra[a])))
        self._over = True
        self._end_state = {"truncated": truncated}

    @property
    def done(self) -> bool:
        """Whether the current episode has ended."""
        return self._over

    @property
    def last_infos(self) -> dict[str, dict[str, Any]]:
        """Each agent's latest step info (with the end keys once the episode is over), kept after the agents
        are removed by their final ``step(None)`` (a copy)."""
        return copy.deepcopy(self._step_infos) if hasattr(self, "_step_infos") else {}

    def history(self, agent: str) -> list[Message]:
        """All messages of ``agent`` this episode (a copy): its observations and its actions (``assistant``)."""
        return copy.deepcopy(self._history[agent])

    def turns(self, agent: str) -> int:
        """Number of actions ``agent`` took this episode."""
        return self._turns[agent]

    def expert_action(self, agent: str, rng: np.random.Generator, noise: float = 0.0) -> str:
        """The scripted policy of ``agent``'s role: its next action text in the current state.

        Args:
            agent: The agent to act (in AEC envs, normally ``env.agent_selection``).
            rng: The caller's generator (the env's RNG is not consumed).
            noise: Probability of a mistake per action, in [0, 1] (malformed text, a wrong move).

        Returns:
            Action text in the agent's parser format.
        """
        if self.task is None or self._over:
            raise EnvError("expert_action() needs a running episode; call reset() first.")
        if agent not in self.agents:
            raise EnvError(f"expert_action(): {agent!r} is not a live agent; live agents: {self.agents}.")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}.")
        return self._expert(agent, rng, float(noise))

    def render(self) -> str | None:
        """``"ansi"``: the episode's transcript as text, one line per delivered message or action."""
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"[{a} <- {m.get('name', m['role'])}] {m['content']}" for a, m in self._transcript)

    def close(self) -> None:
        """Release the agents' tools (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for ts in {id(t): t for t in self.toolsets.values() if t is not None}.values():
            ts.close()

    # ------------------------------------------------------------------ internals
    def _sanitize(self, action: Any) -> tuple[str, list[str]]:
        errors: list[str] = []
        if isinstance(action, (bytes, bytearray)):
            action = bytes(action).decode("utf-8", errors="replace")
            errors.append("action was bytes, not text; decoded as UTF-8 with replacement characters")
        if not isinstance(action, str):
            raise EnvError(
                f"{type(self).__name__}.step() expects each live agent's action as a str (the assistant's "
                f"text), got {type(action).__name__}. Decode model output to text before stepping."
            )
        if len(action) > self.max_action_chars:  # cut first: cleaning and parsing see at most the limit
            errors.append(f"action too long: {len(action)} characters; cut to {self.max_action_chars}")
            action = action[: self.max_action_chars]
        clean = action.encode("utf-8", errors="replace").decode("utf-8")
        if clean != action:
            errors.append("action contained invalid characters (lone surrogates); replaced with '?'")
        if "\x00" in clean:
            clean = clean.replace("\x00", "")
            errors.append("action contained NUL characters; removed")
        return clean, errors

    def _take_action(self, agent: str, action: Any) -> Action:
        """Sanitise and parse ``agent``'s action, record it, and open its step info."""
        text, errors = self._sanitize(action)
        parsed = self.parsers[agent].parse(text)
        errors.extend(parsed.errors)
        calls = list(parsed.calls)
        if len(calls) > self.max_calls_per_action:
            errors.append(
                f"too many tool calls: {len(calls)} given, at most {self.max_calls_per_action} run "
                f"(the first {self.max_calls_per_action})"
            )
            calls = calls[: self.max_calls_per_action]
        self._pending[agent] = []
        msg: Message = {"role": "assistant", "content": text}
        self._history[agent].append(msg)
        self._transcript.append((agent, copy.deepcopy(msg)))
        self._turns[agent] += 1
        self._counts[agent]["parse_errors"] += len(errors)
        self._step_infos[agent] = {
            "tool_calls": [],
            "tool_results": [],
            "parse_errors": list(errors),
            "tool_errors": 0,
            "invalid": False,
            "turn": self._turns[agent],
        }
        return Action(text=text, calls=calls, answer=parsed.answer, errors=errors)

    def _close_step_info(self, agent: str) -> dict[str, Any]:
        info = self._step_infos[agent]
        info["episode_counts"] = dict(self._counts[agent])
        return info

    def _first_info(self, agent: str) -> dict[str, Any]:
        return {"task": copy.deepcopy(self.task), "turn": 0}

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        if not getattr(self, "_closed", True):
            self.close()


class TextAECEnv(_TextAgents, AECEnv):
    """Base of turn-based text multi-agent envs (a `pettingzoo.AECEnv`).

    Subclasses set ``possible_agents`` and ``metadata["name"]`` and implement `_start` and `_turn` (plus
    optionally `_make_tools` and `_expert`). In `_turn`, the acting agent keeps the turn unless the hook sets
    ``self.agent_selection`` to another agent.

    Args:
        parser: Action format of every agent: ``"tags"`` or ``"hermes"`` (default: the class's ``parser_name``).
        max_cycles: Largest number of actions per agent (bad ones count); reaching it truncates the episode.
        max_action_chars: Longest action text; longer ones are cut (and get a parse error).
        max_calls_per_action: Tool calls beyond this many in one action are dropped (with an error).
        tool_timeout_s: Per-call timeout of the agents' tools.
        render_mode: None or ``"ansi"``.
    """

    def __init__(
        self,
        *,
        parser: str | None = None,
        max_cycles: int = 16,
        max_action_chars: int = 4096,
        max_calls_per_action: int = 8,
        tool_timeout_s: float = 10.0,
        render_mode: str | None = None,
    ):
        super().__init__()
        self._setup(
            parser=parser,
            max_cycles=max_cycles,
            max_action_chars=max_action_chars,
            max_calls_per_action=max_calls_per_action,
            tool_timeout_s=tool_timeout_s,
            render_mode=render_mode,
        )
        self.agents = []
        self.rewards, self._cumulative_rewards, self.terminations, self.truncations, self.infos = (
            {},
            {},
            {},
            {},
            {},
        )

    def _turn(self, agent: str, action: Action) -> None:
        """Apply ``agent``'s parsed action: `send`, `run_tools`, `reject`, pass the turn, `give`, `end`."""
        raise NotImplementedError

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        """Start an episode (PettingZoo: returns nothing; read ``env.last()`` / ``env.observe(agent)``).

        Args:
            seed: Seeds ``env.np_random``; the same seed gives the same episode.
            options: Env-specific options.
        """
        self.agent_selection = self.possible_agents[0]
        self._begin(seed, options)
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self.infos = {a: self._first_info(a) for a in self.agents}

    def observe(self, agent: str) -> ChatObs:
        """The messages ``agent`` received since its last action (all of them before its first action)."""
        return ChatObs(copy.deepcopy(self._pending[agent]))

    def step(self, action: str | None) -> None:
        """Apply the selected agent's action (``None`` for an agent that is already done).

        Raises:
            EnvError: before ``reset``, or a non-text action from a live agent.
        """
        if self.task is None:
            raise EnvError(
                f"{type(self).__name__}.step() was called before reset(); call env.reset(seed=...) first."
            )
        if not self.agents:
            raise EnvError(f"{type(self).__name__}.step() after every agent is done; call env.reset() first.")
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        self._cumulative_rewards[agent] = 0.0
        self._step_rewards = {a: 0.0 for a in self.agents}
        act = self._take_action(agent, action)
        self.infos[agent] = self._step_infos[agent]
        self._turn(agent, act)
        if not self._over and self._turns[agent] >= self.max_cycles:
            self.end(truncated=True, stop_reason="max_cycles")
        self._close_step_info(agent)
        for a in self.agents:
            if a in self._step_infos:
                self.infos[a] = self._step_infos[a]
        self.rewards = {a: float(self._step_rewards[a]) for a in self.agents}
        self._accumulate_rewards()
        if self._over:
            key = "truncations" if self._end_state and self._end_state["truncated"] else "terminations"
            for a in self.agents:
                getattr(self, key)[a] = True
            self._deads_step_first()


class TextParallelEnv(_TextAgents, ParallelEnv):
    """Base of simultaneous-move text multi-agent envs (a `pettingzoo.ParallelEnv`).

    Subclasses set ``possible_agents`` and ``metadata["name"]`` and implement `_start` and `_round` (plus
    optionally `_make_tools` and `_expert`). Use ``pettingzoo.utils.conversions.parallel_to_aec`` for the AEC
    view.

    Args:
        parser: Action format of every agent: ``"tags"`` or ``"hermes"``.
        max_cycles: Largest number of rounds; reaching it truncates the episode.
        max_action_chars: Longest action text; longer ones are cut (and get a parse error).
        max_calls_per_action: Tool calls beyond this many in one action are dropped (with an error).
        tool_timeout_s: Per-call timeout of the agents' tools.
        render_mode: None or ``"ansi"``.
    """

    def __init__(
        self,
        *,
        parser: str | None = None,
        max_cycles: int = 16,
        max_action_chars: int = 4096,
        max_calls_per_action: int = 8,
        tool_timeout_s: float = 10.0,
        render_mode: str | None = None,
    ):
        self._setup(
            parser=parser,
            max_cycles=max_cycles,
            max_action_chars=max_action_chars,
            max_calls_per_action=max_calls_per_action,
            tool_timeout_s=tool_timeout_s,
            render_mode=render_mode,
        )
        self.agents = []
        self._round_no = 0

    def _round(self, actions: dict[str, Action]) -> None:
        """Apply one round: every live agent's parsed action at once."""
        raise NotImplementedError

    @property
    def round(self) -> int:
        """Number of rounds played this episode."""
        return self._round_no

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, ChatObs], dict[str, dict[str, Any]]]:
        """Start an episode.

        Returns:
            ``(observations, infos)`` keyed by agent; each observation is that agent's first messages.
        """
        self._round_no = 0
        self._begin(seed, options)
        obs = {a: ChatObs(self._pending[a]) for a in self.agents}
        self._pending = {a: [] for a in self.agents}
        return obs, {a: self._first_info(a) for a in self.agents}

    def step(self, actions: Mapping[str, str]) -> tuple[dict, dict, dict, dict, dict]:
        """Apply one round of actions (one text per live agent).

        A live agent missing from ``actions`` gets an invalid move for the round (an error message).

        Returns:
            ``(observations, rewards, terminations, truncations, infos)`` keyed by the agents live at the
            start of the round; observations hold only the new messages.

        Raises:
            EnvError: before ``reset``, after the episode ended, actions for agents that are not live, or a
                non-text action.
        """
        if self.task is None:
            raise EnvError(
                f"{type(self).__name__}.step() was called before reset(); call env.reset(seed=...) first."
            )
        if self._over or not self.agents:
            raise EnvError(f"{type(self).__name__}.step() after the episode ended; call env.reset() first.")
        extra = sorted(set(actions) - set(self.agents))
        if extra:
            raise EnvError(
                f"step(): actions for agents that are not live: {extra}; live agents: {self.agents}."
            )
        live = list(self.agents)
        self._step_rewards = {a: 0.0 for a in live}
        acts: dict[str, Action] = {}
        for a in live:
            if a in actions and actions[a] is not None:
                acts[a] = self._take_action(a, actions[a])
            else:
                acts[a] = self._take_action(a, "")
                self._step_infos[a]["parse_errors"].append("no action was given this round")
        self._round_no += 1
        self._round(acts)
        if not self._over and self._round_no >= self.max_cycles:
            self.end(truncated=True, stop_reason="max_cycles")
        obs = {a: ChatObs(self._pending[a]) for a in live}
        self._pending = {a: [] for a in live}
        rewards = {a: float(self._step_rewards[a]) for a in live}
        truncated = bool(self._over and self._end_state and self._end_state["truncated"])
        terms = {a: bool(self._over and not truncated) for a in live}
        truncs = {a: truncated for a in live}
        infos = {a: self._close_step_info(a) for a in live}
        if self._over:
            self.agents = []
        return obs, rewards, terms, truncs, infos
