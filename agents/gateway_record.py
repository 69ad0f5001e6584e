"""Token-faithful recording of the episodes a gateway serves (`turngym.agents.gateway`).

An episode is a conversation between an agent and the policy. Its first request is rendered with the chat
template (`Renderer.initial`); from then on the gateway keeps the episode's token context the way the rollout
engine does: the sampled ids exactly as sampled, then the messages the client added since the last response
(tool results, user messages) rendered alone (`Renderer.observation`). The client re-sends the whole
conversation with every request; `match_history` checks that the re-sent conversation is the recorded one
(each re-sent assistant message against the response the gateway returned for that turn) and returns only
the new messages. The recorded ids are re-used; past text is never re-tokenized, so a template that would
render past turns differently (e.g. one that strips reasoning from earlier assistant messages) changes nothing.

When the re-sent conversation is not the recorded one (an edited, dropped, inserted or re-ordered message),
the episode is *split*: the recorded part is closed as one segment, and a new segment starts from the new
conversation rendered whole as its prompt (prompt tokens are never trained on). Every segment becomes a
`Trajectory` with the episode's reward; ``meta["gateway"]["split"]`` says why a segment was started.
"""

from __future__ import annotations

import copy
import json
import math
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from turngym.types import Message, ToolCall, ToolResult, Trajectory, Turn

EPISODE_STATES = ("open", "ended", "discarded")


class GatewayError(Exception):
    """A request the gateway refuses: becomes an HTTP error (OpenAI's error body), records nothing.

    Attributes:
        status: HTTP status code.
        code: Short machine-readable code (``"episode_not_found"``, ``"context_length_exceeded"``, ...).
    """

    def __init__(self, status: int, message: str, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


# ----------------------------------------------------------------------------------------------- messages


def content_text(content: Any) -> str:
    """A message content as text: a string, None (empty) or a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                raise GatewayError(400, f"unsupported content part {str(p)[:80]!r}: only text parts are served",
                                   param="messages")
        return "".join(parts)
    raise GatewayError(400, f"message content must be a string, null or a list of text parts, got "
                            f"{type(content).__name__}", param="messages")


def call_key(tool_calls: Any) -> list[tuple[str, Any]]:
    """``[(name, arguments dict), ...]`` of OpenAI-format tool calls (arguments given as a JSON string or object)."""
    out: list[tuple[str, Any]] = []
    for c in tool_calls or []:
        if not isinstance(c, dict):
            raise GatewayError(400, f"tool_calls entries must be objects, got {type(c).__name__}", param="messages")
        f = c.get("function") if isinstance(c.get("function"), dict) else c
        args = f.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                pass  # compared as the string itself
        out.append((str(f.get("name", "")), args))
    return out


def normalize_message(m: Any, call_names: dict[str, str] | None = None) -> Message:
    """The parts of a chat message the template renders: role, content text, tool calls (OpenAI format), name and
    tool_call_id. A tool message without ``name`` gets the name of the call its ``tool_call_id`` answers."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise GatewayError(400, f"each message must be an object with a string 'role', got {str(m)[:80]!r}",
                           param="messages")
    role = m["role"]
    if role not in ("system", "developer", "user", "assistant", "tool"):
        raise GatewayError(400, f"unknown message role {role!r}", param="messages")
    out: Message = {"role": "system" if role == "developer" else role, "content": content_text(m.get("content"))}
    if role == "assistant" and m.get("tool_calls"):
        out["tool_calls"] = [
            {"id": str(c.get("id", f"call_{i}")), "type": "function",
             "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
            for i, (c, (name, args)) in enumerate(zip(m["tool_calls"], call_key(m["tool_calls"])))
        ]
    if role == "tool":
        if m.get("tool_call_id") is not None:
            out["tool_call_id"] = str(m["tool_call_id"])
        name = m.get("name") or (call_names or {}).get(out.get("tool_call_id", ""))
        if name:
            out["name"] = str(name)
    elif m.get("name"):
        out["name"] = str(m["name"])
    return out


def _same(a: Message, b: Message) -> bool:
    """Whether two normalized messages render the same (tool-call ids do not matter; arguments compared parsed)."""
    if a.get("role") != b.get("role") or a.get("content", "") != b.get("content", ""):
        return False
    if a.get("name") != b.get("name"):
        return False
    return call_key(a.get("tool_calls")) == call_key(b.get("tool_calls"))


# ----------------------------------------------------------------------------------------------- episodes


@dataclass
class Returned:
    """What the gateway answered for one turn, to recognise the assistant message when the client re-sends it.

    Attributes:
        full: The whole sampled text (without the end-of-turn token).
        content: The ``content`` returned (tool-call markup and reasoning taken out), or None.
        reasoning: The reasoning returned as ``reasoning_content``, or None.
        calls: ``[(name, arguments)]`` of the returned ``tool_calls``.
        call_names: Tool-call id -> tool name (fills ``name`` of the tool messages answering them).
    """

    full: str
    content: str | None
    reasoning: str | None
    calls: list[tuple[str, Any]]
    call_names: dict[str, str]

    def matches(self, m: Message) -> bool:
        """Whether the re-sent assistant message `m` (normalized) is this response, as returned or with its
        reasoning dropped (what Qwen-style clients and templates do), or as the raw sampled text."""
        text = m.get("content", "")
        calls = call_key(m.get("tool_calls"))
        return (calls == self.calls and text == (self.content or "")) or (not calls and text == self.full)


@dataclass(eq=False)
class Segment:
    """A run of turns whose tokens are one contiguous sequence (an episode has several after a split)."""

    prompt_ids: list[int]
    prompt_messages: list[Message]
    tools: list[dict] | None
    context: list[int]
    turns: list[Turn] = field(default_factory=list)
    returned: list[Returned] = field(default_factory=list)
    split: str | None = None


@dataclass(eq=False)
class GatewayEpisode:
    """One agent episode: its segments, its state and its reward (set by `EpisodeStore.end`)."""

    id: str
    group_id: str = ""
    env_id: str = ""
    seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    state: str = "open"
    reward: float = 0.0
    final_answer: str | None = None
    success: bool | None = None
    stop_reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    sampled_tokens: int = 0
    budget_exhausted: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_turns(self) -> int:
        return sum(len(s.turns) for s in self.segments)


def match_history(seg: Segment, messages: list[Message]) -> tuple[list[Message] | None, str]:
    """Match a re-sent conversation against a segment.

    Returns:
        ``(new_messages, "")`` when `messages` is the recorded conversation followed by new (non-empty) messages
        after the last response; ``(None, reason)`` otherwise, the reason naming the first difference.
    """
    p = len(seg.prompt_messages)
    if len(messages) < p or any(not _same(a, b) for a, b in zip(messages[:p], seg.prompt_messages)):
        i = next((j for j, (a, b) in enumerate(zip(messages, seg.prompt_messages)) if not _same(a, b)),
                 min(len(messages), p))
        return None, f"message {i} differs from the episode's first request (edited or truncated history)"
    i = p
    for k, (turn, ret) in enumerate(zip(seg.turns, seg.returned)):
        if i >= len(messages):
            return None, f"the history stops before the assistant message of turn {k} (truncated history)"
        if messages[i].get("role") != "assistant":
            return None, (f"message {i} is a {messages[i].get('role')} message where the assistant response of turn "
                          f"{k} was (truncated history: a response was dropped, or messages were re-ordered)")
        if not ret.matches(messages[i]):
            return None, f"message {i} is not the assistant response of turn {k} as returned (edited history)"
        i += 1
        if k < len(seg.turns) - 1:
            obs = turn.obs_messages
            got = messages[i:i + len(obs)]
            if len(got) != len(obs) or any(not _same(a, b) for a, b in zip(got, obs)):
                return None, f"the messages after turn {k} differ from those sent before (edited history)"
            i += len(obs)
    new = messages[i:]
    if not new:
        return None, "no new message after the last response (a request must end with a user or tool message)"
    return new, ""


class EpisodeStore:
    """The gateway's episodes by id (thread-safe)."""

    def __init__(self) -> None:
        self._eps: dict[str, GatewayEpisode] = {}
        self._lock = threading.Lock()

    def new(self, *, group_id: str = "", env_id: str = "", seed: int | None = None, meta: dict | None = None,
            episode_id: str | None = None) -> GatewayEpisode:
        eid = episode_id or uuid.uuid4().hex[:16]
        if not eid.replace("-", "").replace("_", "").isalnum():
            raise GatewayError(400, f"episode id {eid!r} must be letters, digits, '-' or '_'", param="id")
        ep = GatewayEpisode(id=eid, group_id=group_id or eid, env_id=env_id, seed=seed,
                            meta=copy.deepcopy(meta or {}))
        with self._lock:
            if eid in self._eps:
                raise GatewayError(409, f"episode {eid!r} exists already", code="episode_exists")
            self._eps[eid] = ep
        return ep

    def get(self, eid: str, *, open_only: bool = True) -> GatewayEpisode:
        with self._lock:
            ep = self._eps.get(eid)
        if ep is None:
            raise GatewayError(404, f"unknown episode id {eid!r}: create it first (POST /episodes, or "
                                    "Gateway.new_episode)", code="episode_not_found")
        if open_only and ep.state != "open":
            raise GatewayError(409, f"episode {eid!r} has {ep.state}; start a new episode for new requests",
                               code="episode_closed")
        return ep

    def end(self, eid: str, reward: float, *, final_answer: str | None = None, success: bool | None = None,
            info: dict | None = None, stop_reason: str = "terminated", anchors: list | None = None) -> GatewayEpisode:
        try:
            r = float(reward)
        except (TypeError, ValueError):
            raise GatewayError(400, f"reward must be a number, got {reward!r}", param="reward") from None
        if not math.isfinite(r):
            raise GatewayError(400, f"reward must be finite, got {reward!r}", param="reward")
        ep = self.get(eid)
        if anchors is not None and (not isinstance(anchors, list) or len(anchors) != ep.num_turns):
            raise GatewayError(400, f"anchors must be a list with one entry per turn ({ep.num_turns}), got "
                                    f"{str(anchors)[:80]!r}", param="anchors")
        with ep.lock:
            if ep.state != "open":
                raise GatewayError(409, f"episode {eid!r} has {ep.state} already", code="episode_closed")
            ep.state, ep.reward, ep.final_answer, ep.success = "ended", r, final_answer, success
            ep.stop_reason = stop_reason
            ep.info = dict(info or {})
            turns = [t for seg in ep.segments for t in seg.turns]
            for t, a in zip(turns, anchors or []):
                if a is not None:
                    t.info["anchor_obs"] = a  # GiGPO's anchor state (turngym.credit.gigpo)
        return ep

    def discard(self, eid: str) -> None:
        ep = self.get(eid, open_only=False)
        with ep.lock:
            ep.state = "discarded"

    def pop(self, eid: str) -> GatewayEpisode | None:
        with self._lock:
            return self._eps.pop(eid, None)

    def open_count(self) -> int:
        """How many episodes are open."""
        with self._lock:
            return sum(ep.state == "open" for ep in self._eps.values())

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._eps)


def to_trajectories(ep: GatewayEpisode) -> list[Trajectory]:
    """The `Trajectory` of each segment of an ended episode (none for an episode without turns).

    Each has the episode's reward as ``outcome`` and as the last turn's step reward, the turns' tool calls (as
    returned) and tool results (the tool messages that answered them), ``meta`` = the episode's task meta plus
    ``meta["gateway"]`` (episode id, segment, split reason) and ``meta["rollout"]`` (counts, success).
    """
    if ep.state != "ended":
        raise GatewayError(409, f"episode {ep.id!r} is {ep.state}; only ended episodes become trajectories",
                           code="episode_open")
    out = []
    segs = [s for s in ep.segments if s.turns]
    for n, seg in enumerate(segs):
        turns = copy.deepcopy(seg.turns)
        success = ep.success if ep.success is not None else ep.reward >= 1.0
        if n == len(segs) - 1 and turns:
            turns[-1].reward = ep.reward
            turns[-1].info["success"] = bool(success)
        meta = copy.deepcopy(ep.meta)
        meta["gateway"] = {"episode_id": ep.id, "segment": n, "segments": len(segs), "split": seg.split,
                           "info": copy.deepcopy(ep.info)}
        meta["rollout"] = {"tool_calls": sum(len(t.tool_calls) for t in turns),
                           "tool_errors": sum(not r.ok for t in turns for r in t.tool_results),
                           "parse_errors": sum(len(t.info.get("parse_errors") or []) for t in turns),
                           "inexact_ids": 0, "success": bool(success)}
        out.append(Trajectory(
            group_id=ep.group_id, prompt_ids=list(seg.prompt_ids), prompt_messages=copy.deepcopy(seg.prompt_messages),
            turns=turns, outcome=ep.reward, final_answer=ep.final_answer, stop_reason=ep.stop_reason or "terminated",
            meta=meta, env_id=ep.env_id, seed=ep.seed,
        ))
    return out


def tool_results_of(turn: Turn, new_messages: list[Message]) -> list[ToolResult]:
    """Tool results for `turn` from the tool messages that follow it (paired by ``tool_call_id``, else in order)."""
    by_id = {c.id: c for c in turn.tool_calls}
    out = []
    for m in new_messages:
        if m.get("role") != "tool":
            continue
        call = by_id.get(m.get("tool_call_id", ""))
        text = m.get("content", "")
        ok = not text.startswith("Error")
        out.append(ToolResult(name=m.get("name") or (call.name if call else ""), ok=ok, output=text if ok else "",
                              error=None if ok else text.removeprefix("Error: "), call_id=m.get("tool_call_id", "")))
    return out


def tool_calls_of(ret: Returned, raw: list[str], turn_index: int) -> list[ToolCall]:
    """The `ToolCall`s of a response, with the ids returned to the client."""
    ids = list(ret.call_names)
    return [ToolCall(name=name, arguments=args if isinstance(args, dict) else {}, id=ids[i] if i < len(ids) else
                     f"call_{turn_index}_{i}", raw=raw[i] if i < len(raw) else "")
            for i, (name, args) in enumerate(ret.calls)]
