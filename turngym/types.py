"""Core data types that flow between environments, agents, credit and trainers.

A `Trajectory` is one episode of one agent: the prompt token ids, then a list of `Turn`s. Each turn
holds the action ids exactly as sampled (with their behaviour log-probs), the observation ids that the
environment appended after it, the parsed tool calls and their results, the step reward and any
per-turn signals filled in by signal providers (information-gain probes, matching scores, ...).

Everything serialises to plain JSON (`to_dict` / `from_dict`, `to_json` / `from_json`) without loss:
ids stay ints, log-probs stay floats (JSON floats round-trip exactly in Python), texts stay texts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

Message = dict[str, Any]
"""A chat message: ``{"role": ..., "content": ...}`` plus optional ``tool_calls`` / ``name``."""


@dataclass(frozen=True)
class ToolCall:
    """One tool call parsed out of an assistant action.

    Attributes:
        name: Tool name as written by the model.
        arguments: Parsed keyword arguments.
        id: Call id (unique within a turn), used to pair the call with its result.
        raw: The exact text span the call was parsed from.
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToolCall:
        return cls(**d)


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call. Failures are data, never exceptions.

    Attributes:
        name: Tool name.
        ok: Whether the call succeeded.
        output: Text shown to the model (possibly truncated).
        error: Error message when ``ok`` is False.
        call_id: Id of the `ToolCall` this answers.
        duration_s: Wall time of the call.
        truncated: Whether ``output`` was cut to the output limit.
        meta: Extra structured data (e.g. retrieved document ids, exit codes).
    """

    name: str
    ok: bool
    output: str = ""
    error: str | None = None
    call_id: str = ""
    duration_s: float = 0.0
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """What the model sees: the output, or the error."""
        return self.output if self.ok else f"Error: {self.error}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToolResult:
        return cls(**d)


@dataclass
class Turn:
    """One agent turn: the sampled action and the observation that followed it.

    Attributes:
        action_ids: Token ids exactly as sampled. [T_k]
        logprobs: Behaviour log-probs of ``action_ids`` under the sampler. [T_k]
        action_text: Decoded action text.
        obs_ids: Token ids appended after the action (tool/user messages + next generation prompt).
        obs_messages: The observation messages those ids render.
        tool_calls: Calls parsed from the action.
        tool_results: Results of those calls.
        reward: Step reward returned by the environment.
        signals: Per-turn signals for credit (e.g. ``"ig"``, ``"match"``, ``"support"``, ``"judge"``).
        info: The env's ``info`` dict for this step (JSON-able parts only).
    """

    action_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    action_text: str = ""
    obs_ids: list[int] = field(default_factory=list)
    obs_messages: list[Message] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)
    reward: float = 0.0
    signals: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.logprobs and len(self.logprobs) != len(self.action_ids):
            raise ValueError(
                f"Turn.logprobs has {len(self.logprobs)} entries but action_ids has {len(self.action_ids)}; "
                "give one behaviour log-prob per sampled token (or none)."
            )

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        d["tool_results"] = [r.to_dict() for r in self.tool_results]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Turn:
        d = dict(d)
        d["tool_calls"] = [ToolCall.from_dict(c) for c in d.get("tool_calls", [])]
        d["tool_results"] = [ToolResult.from_dict(r) for r in d.get("tool_results", [])]
        return cls(**d)


@dataclass
class Trajectory:
    """One episode of one agent.

    Attributes:
        group_id: Trajectories with the same task and seed share a group id (GRPO groups).
        agent_id: Which agent produced it (multi-agent envs); ``"agent"`` otherwise.
        prompt_ids: Token ids of the rendered first observation with the generation prompt.
        prompt_messages: The first observation's messages.
        turns: The turns, in order.
        outcome: Final scalar outcome (e.g. exact match), the reward credit modules start from.
        final_answer: The agent's final answer text, if any.
        stop_reason: Why the episode ended: ``"terminated"``, ``"truncated"``, ``"max_turns"``,
            ``"max_tokens"``, ``"env_error"``.
        meta: Task data for credit and evaluation (gold answer, gold tool calls, decisive turns, ...).
        env_id: Registered id of the env that produced it.
        seed: Reset seed.
    """

    group_id: str = ""
    agent_id: str = "agent"
    prompt_ids: list[int] = field(default_factory=list)
    prompt_messages: list[Message] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    outcome: float = 0.0
    final_answer: str | None = None
    stop_reason: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    env_id: str = ""
    seed: int | None = None

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def total_reward(self) -> float:
        return float(sum(t.reward for t in self.turns))

    def token_ids(self) -> list[int]:
        """The full packed sequence: prompt, then each action followed by its observation."""
        ids = list(self.prompt_ids)
        for t in self.turns:
            ids.extend(t.action_ids)
            ids.extend(t.obs_ids)
        return ids

    def action_mask(self) -> list[int]:
        """1 on sampled action tokens, 0 on prompt and observation tokens (same length as `token_ids`)."""
        mask = [0] * len(self.prompt_ids)
        for t in self.turns:
            mask.extend([1] * len(t.action_ids))
            mask.extend([0] * len(t.obs_ids))
        return mask

    def turn_ids(self) -> list[int]:
        """Turn index of each token: k on turn k's action and observation tokens, -1 on the prompt."""
        tid = [-1] * len(self.prompt_ids)
        for k, t in enumerate(self.turns):
            tid.extend([k] * (len(t.action_ids) + len(t.obs_ids)))
        return tid

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["turns"] = [t.to_dict() for t in self.turns]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        d = dict(d)
        d["turns"] = [Turn.from_dict(t) for t in d.get("turns", [])]
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Trajectory:
        return cls.from_dict(json.loads(line))


def write_jsonl(path: str | Path, trajectories: Iterable[Trajectory], append: bool = False) -> int:
    """Write trajectories as JSON lines; returns how many were written."""
    n = 0
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for traj in trajectories:
            f.write(traj.to_json())
            f.write("\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> Iterator[Trajectory]:
    """Read trajectories written by `write_jsonl`."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Trajectory.from_json(line)
            except (json.JSONDecodeError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a Trajectory JSON line ({e})") from e
