"""CALM's signals: subgoal decomposition and subgoal-achievement judging (wave-2 spec §5.1).

Two providers write the same turn signals, registered together as ``"calm_subgoals"`` in `SIGNAL_PROVIDERS`:

* ``calm_hits`` ``[turn]``: number of subgoals judged achieved at that turn;
* ``calm_new`` ``[turn]``: number achieved at that turn for the first time in the episode.

Both are written on every turn (0 when nothing is achieved: never NaN), plus the prompt signals ``calm_n_subgoals``
(number of subgoals of the task) and ``calm_llm`` (1 = LLM judge, 0 = rule stand-in), and host-side
``Trajectory.meta["calm"] = {"subgoals": [...], "achieved": {name: [turns]}}`` for inspection.

`SubgoalJudgeProvider` asks an LLM judge (a ``judge(prompts) -> completions`` callable, no model import):

1. **Decomposition**, once per task (key: ``meta["task_id"]``, else ``env_id:seed``, else ``group_id``): analyst role
   + task description + "list the key subgoals" → a list of subgoal names. Cached in memory and, with a
   ``cache_path`` (the trainer uses ``run_dir/signals/calm_subgoals.json``), on disk, written atomically, and read
   back by a new provider on the same path (so it survives ``--resume``). ``preset_subgoals`` skips it. A failed
   decomposition (no parseable subgoal) gives no subgoal for that task this step (a ≡ 0) and is not cached.
2. **Judging**: ``mode="trajectory"`` (default, one call per trajectory; the reply maps each achieved subgoal to the
   turn index or list of indices where it was achieved) or ``mode="transition"`` (the paper's protocol, one call
   per turn with observation before, action and observation after; the reply maps each subgoal to true / false).
   Transition verdicts are memoised by a hash of (subgoals, observation before, action, observation after).

Replies are read leniently (`parse_trajectory_answer`, `parse_transition_answer`): JSON or Python literals anywhere
in the text, dicts of bools / indices / lists of indices, lists of names or of ``[name, turn]`` pairs; subgoals may
be named or given by their number in the prompt. Unknown subgoal names and out-of-range turn indices are ignored
(counted); an unparseable reply gives 0 for that turn / trajectory and is counted in ``provider.unparseable``. A
judge that raises or returns the wrong number of completions raises `SignalError` (``on_error="raise"``, default) or
gives neutral signals counted in ``provider.errors`` (``on_error="zero"``).

`RuleSubgoalProvider` is the stand-in without an LLM: the subgoals are the task's gold tool calls
(``meta["gold_calls"]``); a turn achieves one when it issues an exactly matching call (MatchTIR similarity 1). The
final answer is not a subgoal (it is the outcome), so the calls of the answer turn are not read.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from turngym.credit.base import PROMPT_SIGNALS_KEY
from turngym.credit.matchtir import similarity_matrix
from turngym.credit.signals import SIGNAL_PROVIDERS, OutcomeClusterProvider, SignalContext, judge_completions
from turngym.errors import ConfigError, SignalError
from turngym.types import Trajectory, Turn

__all__ = [
    "CACHE_FILE",
    "DECOMPOSE_TEMPLATE",
    "HITS",
    "NEW",
    "TRAJECTORY_TEMPLATE",
    "TRANSITION_TEMPLATE",
    "CALMSignalOptions",
    "ParseResult",
    "RuleSubgoalProvider",
    "SubgoalJudgeProvider",
    "achievements_to_signals",
    "parse_subgoal_list",
    "parse_trajectory_answer",
    "parse_transition_answer",
    "task_key",
]

HITS = "calm_hits"
NEW = "calm_new"
CACHE_FILE = Path("signals") / "calm_subgoals.json"
"""Where the trainer keeps the subgoal cache, relative to the run directory."""

Judge = Callable[[Sequence[str]], Sequence[str]]

DECOMPOSE_TEMPLATE = (
    "You are an analyst who plans how an agent can solve a task. Break the task below into its key subgoals: "
    "small, checkable milestones the agent must reach on the way (for example, a piece of information it must "
    "find or a tool call it must make). Do not list the final answer itself.\n"
    "Task:\n{task}\n\n"
    "Reply with a JSON list of at most {max_subgoals} short subgoal names, e.g. [\"find X\", \"look up Y\"]."
)
TRAJECTORY_TEMPLATE = (
    "You judge the progress of an agent. Task:\n{task}\n\nSubgoals:\n{subgoals}\n\n"
    "The agent's turns, numbered from 0 (its action, then what it observed):\n{turns}\n\n"
    "For each subgoal the agent achieved, give the turn number at which it was achieved (or a list of turn "
    "numbers). Leave out subgoals that were not achieved. Reply with one JSON object mapping subgoal names to "
    "turn numbers, e.g. {{\"find X\": 1}}, or {{}} if none was achieved."
)
TRANSITION_TEMPLATE = (
    "You judge one step of an agent. Task:\n{task}\n\nSubgoals:\n{subgoals}\n\n"
    "Observation before the step:\n{before}\n\nAction:\n{action}\n\nObservation after the step:\n{after}\n\n"
    "Did this step complete any of the subgoals? Reply with one JSON object mapping every subgoal name to true "
    "or false, e.g. {{\"find X\": true, \"look up Y\": false}}."
)


@dataclass(frozen=True)
class CALMSignalOptions:
    """Options of the ``calm_subgoals`` provider (set with ``signals.<field>=value``); the rule stand-in reads none."""

    mode: Literal["trajectory", "transition"] = "trajectory"
    """One judge call per trajectory (repo's window prompt, cheaper) or per turn (the paper's protocol)."""
    obs_chars: int = 600
    """Characters of each observation shown to the judge."""
    action_chars: int = 1200
    """Characters of each action shown to the judge (the end is kept: tool calls come last)."""
    on_error: Literal["raise", "zero"] = "raise"
    """Judge failure: raise SignalError, or give neutral signals and count the error."""
    preset_subgoals: tuple[str, ...] = ()
    """Fixed subgoal names for every task (skips the decomposition call); empty = ask the judge."""
    max_subgoals: int = 8
    """Subgoals kept from a decomposition."""

    def __post_init__(self) -> None:
        if self.mode not in ("trajectory", "transition"):
            raise ConfigError(f"calm_subgoals: mode must be 'trajectory' or 'transition', got {self.mode!r}. "
                              "Fix: signals.mode=trajectory.")
        if self.on_error not in ("raise", "zero"):
            raise ConfigError(f"calm_subgoals: on_error must be 'raise' or 'zero', got {self.on_error!r}. "
                              "Fix: signals.on_error=raise.")
        if self.obs_chars < 0 or self.action_chars < 0 or self.max_subgoals < 1:
            raise ConfigError(f"calm_subgoals: obs_chars={self.obs_chars} and action_chars={self.action_chars} must "
                              f"be >= 0 and max_subgoals={self.max_subgoals} >= 1. Fix: signals.max_subgoals=8.")


# ============================================================================================ parsing


def _norm(name: Any) -> str:
    s = re.sub(r"[^\w\s]", " ", str(name).lower())
    return " ".join(s.split())


def _json_values(text: str) -> list[Any]:
    """Every JSON (or Python-literal) object / array found in ``text``, in order of its opening bracket."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while True:
        starts = [j for j in (text.find("{", i), text.find("[", i)) if j >= 0]
        if not starts:
            return out
        j = min(starts)
        try:
            v, end = dec.raw_decode(text, j)
        except ValueError:
            v, end = _literal_at(text, j)
        if end > j:
            out.append(v)
            i = end
        else:
            i = j + 1


def _literal_at(text: str, j: int) -> tuple[Any, int]:
    """A Python literal (``{'a': True}``) starting at ``text[j]``, by bracket matching; ``(None, j)`` if none."""
    pairs = {"{": "}", "[": "]"}
    stack, quote = [], ""
    for n in range(j, len(text)):
        c = text[n]
        if quote:
            if c == quote and text[n - 1] != "\\":
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in pairs:
            stack.append(pairs[c])
        elif c in "}]":
            if not stack or stack.pop() != c:
                return None, j
            if not stack:
                try:
                    return ast.literal_eval(text[j:n + 1]), n + 1
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    return None, j
    return None, j


def parse_subgoal_list(text: str, max_subgoals: int = 8) -> list[str]:
    """Subgoal names from a decomposition reply: the first JSON list of strings (or a dict's string values / keys),
    else bulleted or numbered lines. Deduplicated (case / punctuation-insensitive), at most ``max_subgoals``.
    ``[]`` when nothing usable is found."""
    names: list[str] = []
    for v in _json_values(text):
        if isinstance(v, dict):
            v = next((x for x in v.values() if isinstance(x, list)), list(v))
        if isinstance(v, list):
            names = [str(x.get("name", x.get("subgoal", ""))) if isinstance(x, dict) else str(x) for x in v
                     if isinstance(x, (str, dict))]
            names = [n for n in names if n.strip()]
            if names:
                break
    if not names:
        for line in text.splitlines():
            m = re.match(r"\s*(?:[-*•]|\d+[.)])\s+(.+)", line)
            if m:
                names.append(m.group(1).strip())
    out, seen = [], set()
    for n in names:
        key = _norm(n)
        if key and key not in seen:
            seen.add(key)
            out.append(" ".join(n.split()))
    return out[:max_subgoals]


class _Lookup:
    """Subgoal name (or its 1-based number in the prompt) -> index; unknown names -> None."""

    def __init__(self, subgoals: Sequence[str]):
        self.n = len(subgoals)
        self.by_name = {_norm(s): i for i, s in enumerate(subgoals)}

    def __call__(self, key: Any) -> int | None:
        if isinstance(key, bool):
            return None
        if isinstance(key, (int, float)) and float(key).is_integer():
            return int(key) - 1 if 1 <= key <= self.n else None
        k = _norm(key)
        if k in self.by_name:
            return self.by_name[k]
        m = re.fullmatch(r"(?:subgoal )?(\d+)", k)
        if m and 1 <= int(m.group(1)) <= self.n:
            return int(m.group(1)) - 1
        return None


def _truthy(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and _norm(v) in ("true", "yes", "achieved", "completed", "done", "false", "no",
                                              "not achieved", "none"):
        return _norm(v) in ("true", "yes", "achieved", "completed", "done")
    return None


def _as_index(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)) and math.isfinite(v) and float(v).is_integer():
        return int(v)
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(?:turn\s*)?(-?\d+)\s*", v, flags=re.IGNORECASE)
        return int(m.group(1)) if m else None
    return None


@dataclass
class ParseResult:
    """What a reply says: ``achieved`` = {subgoal index: sorted turn indices} (trajectory) or the set of subgoal
    indices (transition, as ``{i: [0]}``); counts of what was dropped; ``ok`` False when nothing could be read."""

    achieved: dict[int, list[int]]
    ok: bool = True
    unknown: int = 0
    out_of_range: int = 0


def parse_trajectory_answer(text: str, subgoals: Sequence[str], n_turns: int) -> ParseResult:
    """Read a trajectory-mode reply: ``{subgoal: turn | [turns] | null}``, ``[[subgoal, turn], ...]`` or
    ``[{"subgoal": ..., "turn": ...}, ...]``. Turns outside ``0..n_turns-1`` are dropped (``out_of_range``), unknown
    subgoals too (``unknown``); ``true`` without a turn cannot be placed and is dropped. A reply with no JSON object
    / list is ``ok=False``."""
    look = _Lookup(subgoals)
    res = ParseResult({})
    items: list[tuple[Any, Any]] | None = None
    for v in _json_values(text):
        if isinstance(v, dict):
            items = list(v.items())
        elif isinstance(v, list) and all(isinstance(x, (list, tuple, dict)) for x in v):
            items = []
            for x in v:
                if isinstance(x, dict):
                    items.append((x.get("subgoal", x.get("name")), x.get("turn", x.get("turns", x.get("index")))))
                elif len(x) >= 2:
                    items.append((x[0], list(x[1:]) if len(x) > 2 else x[1]))
        if items is not None:
            break
    if items is None:
        return ParseResult({}, ok=False)
    for key, val in items:
        i = look(key)
        if i is None:
            res.unknown += 1
            continue
        vals = val if isinstance(val, (list, tuple)) else [val]
        for x in vals:
            k = _as_index(x)
            if k is None:
                continue  # null / false / true-without-turn: nothing to place
            if 0 <= k < n_turns:
                res.achieved.setdefault(i, [])
                if k not in res.achieved[i]:
                    res.achieved[i].append(k)
            else:
                res.out_of_range += 1
    for i in res.achieved:
        res.achieved[i].sort()
    return res


def parse_transition_answer(text: str, subgoals: Sequence[str]) -> ParseResult:
    """Read a transition-mode reply: ``{subgoal: true/false}`` (also "yes"/"no", 1/0) or a list of the achieved
    subgoals (names or their numbers). Unknown subgoals are dropped (``unknown``). A reply with no JSON object / list
    is ``ok=False``. Achieved subgoals come back as ``{i: [0]}``."""
    look = _Lookup(subgoals)
    res = ParseResult({})
    for v in _json_values(text):
        if isinstance(v, dict):
            for key, val in v.items():
                i = look(key)
                if i is None:
                    res.unknown += 1
                elif _truthy(val):
                    res.achieved[i] = [0]
            return res
        if isinstance(v, list):
            for key in v:
                i = look(key)
                if i is None:
                    res.unknown += 1
                else:
                    res.achieved[i] = [0]
            return res
    return ParseResult({}, ok=False)


def achievements_to_signals(turns: Sequence[Turn], per_turn: Sequence[set[int]]) -> dict[int, list[int]]:
    """Write ``calm_hits`` / ``calm_new`` on each turn from the subgoal indices achieved at that turn; returns
    ``{subgoal: [turns]}``."""
    seen: set[int] = set()
    where: dict[int, list[int]] = {}
    for k, (u, hit) in enumerate(zip(turns, per_turn)):
        u.signals[HITS] = float(len(hit))
        u.signals[NEW] = float(len(hit - seen))
        seen |= hit
        for i in sorted(hit):
            where.setdefault(i, []).append(k)
    return where


def _write_meta(t: Trajectory, subgoals: Sequence[str], where: Mapping[int, list[int]], llm: bool) -> None:
    t.meta["calm"] = {"subgoals": list(subgoals), "achieved": {subgoals[i]: ks for i, ks in where.items()}}
    ps = t.meta.setdefault(PROMPT_SIGNALS_KEY, {})
    ps["calm_n_subgoals"] = float(len(subgoals))
    ps["calm_llm"] = 1.0 if llm else 0.0


# ============================================================================================ text views


def task_key(t: Trajectory) -> str:
    """The decomposition cache key of a trajectory's task: ``meta["task_id"]``, else ``env_id:seed``, else the
    group id."""
    if t.meta.get("task_id") is not None:
        return str(t.meta["task_id"])
    if t.env_id and t.seed is not None:
        return f"{t.env_id}:{t.seed}"
    return str(t.group_id)


def task_text(t: Trajectory) -> str:
    """The task description: ``meta["prompt"]``, else the question / last user message of the prompt."""
    if t.meta.get("prompt"):
        return str(t.meta["prompt"])
    return OutcomeClusterProvider.question(t)


def _obs_text(u: Turn, limit: int) -> str:
    txt = "\n".join(str(m.get("content", "")) for m in u.obs_messages)
    if not txt and u.tool_results:
        txt = "\n".join(r.text for r in u.tool_results)
    return txt[:limit]


def _action_text(u: Turn, limit: int) -> str:
    return u.action_text[-limit:] if limit else ""


def _numbered(subgoals: Sequence[str]) -> str:
    return "\n".join(f"{i + 1}. {s}" for i, s in enumerate(subgoals))


# ============================================================================================ providers


class SubgoalJudgeProvider:
    """CALM's LLM provider: per-task subgoal decomposition (cached) and subgoal-achievement judging (spec §5.1).

    Args:
        judge: ``judge(prompts) -> completions`` (e.g. `turngym.agents.judge.OpenAIJudge`).
        mode: ``"trajectory"`` (one call per trajectory, default) or ``"transition"`` (one call per turn).
        preset_subgoals: Subgoal names used for every task instead of asking the judge.
        obs_chars: Characters of each observation in the judging prompts.
        action_chars: Characters of each action (its end).
        on_error: ``"raise"`` (`SignalError`) or ``"zero"`` (neutral signals, counted in ``errors``).
        max_subgoals: Subgoals kept from a decomposition.
        cache_path: JSON file of the decomposition cache (read now if it exists, rewritten atomically after each
            new decomposition); None keeps it in memory only.

    Attributes:
        cache: ``{task key: {"task": text, "subgoals": [...]}}``.
        calls: Judge prompts sent (decomposition + judging); ``decompositions``: decomposition prompts sent.
        unparseable / unknown / out_of_range / failed_decompositions / errors: What was dropped or failed.
    """

    name = "calm_subgoals"
    llm = True

    def __init__(self, judge: Judge, *, mode: Literal["trajectory", "transition"] = "trajectory",
                 preset_subgoals: Sequence[str] | None = None, obs_chars: int = 600, action_chars: int = 1200,
                 on_error: Literal["raise", "zero"] = "raise", max_subgoals: int = 8,
                 cache_path: str | os.PathLike | None = None):
        CALMSignalOptions(mode=mode, obs_chars=obs_chars, action_chars=action_chars, on_error=on_error,
                          max_subgoals=max_subgoals)  # same checks as the trainer options
        self.judge, self.mode, self.on_error = judge, mode, on_error
        self.preset = [str(s) for s in preset_subgoals] if preset_subgoals else None
        self.obs_chars, self.action_chars, self.max_subgoals = obs_chars, action_chars, max_subgoals
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.cache: dict[str, dict[str, Any]] = self._load()
        self._verdicts: dict[str, ParseResult] = {}
        self.calls = self.decompositions = 0
        self.unparseable = self.unknown = self.out_of_range = self.failed_decompositions = self.errors = 0

    # ----------------------------------------------------------------------------- cache
    def _load(self) -> dict[str, dict[str, Any]]:
        if self.cache_path is None or not self.cache_path.exists():
            return {}
        try:
            data = json.loads(self.cache_path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not all(isinstance(v, dict) and isinstance(v.get("subgoals"), list)
                                                     for v in data.values()):
                raise ValueError("expected {task key: {'task': ..., 'subgoals': [...]}}")
        except (OSError, ValueError) as e:
            raise SignalError(f"SubgoalJudgeProvider: cannot read the subgoal cache {self.cache_path}: {e}. "
                              "Fix: delete the file (the subgoals are asked again).") from e
        return data

    def _save(self) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(f"{self.cache_path.name}.{os.getpid()}.tmp")  # one writer per process
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.cache, f, ensure_ascii=False, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.cache_path)

    # ----------------------------------------------------------------------------- judge
    def _ask(self, prompts: list[str], what: str) -> list[str] | None:
        """Completions of ``prompts``, or None after a counted failure with ``on_error="zero"``."""
        if not prompts:
            return []
        self.calls += len(prompts)
        try:
            outs = judge_completions(self.judge, prompts)
        except Exception as e:
            if self.on_error == "raise":
                raise SignalError(f"SubgoalJudgeProvider: the judge failed on {len(prompts)} {what} prompt(s): "
                                  f"{e!r}") from e
            self.errors += len(prompts)
            return None
        return outs

    def subgoals_for(self, trajs: Sequence[Trajectory]) -> list[list[str]]:
        """The subgoals of each trajectory's task: preset, cached, or decomposed now (one judge call for all new
        tasks)."""
        if self.preset is not None:
            return [list(self.preset) for _ in trajs]
        keys = [task_key(t) for t in trajs]
        texts = [task_text(t) for t in trajs]
        todo: dict[str, str] = {}
        for k, txt in zip(keys, texts):
            hit = self.cache.get(k)
            if (hit is None or hit.get("task") != txt) and k not in todo:
                todo[k] = txt
        if todo:
            prompts = [DECOMPOSE_TEMPLATE.format(task=txt, max_subgoals=self.max_subgoals) for txt in todo.values()]
            self.decompositions += len(prompts)
            outs = self._ask(prompts, "decomposition")
            fresh = 0
            for (k, txt), out in zip(todo.items(), outs if outs is not None else [""] * len(todo)):
                names = parse_subgoal_list(out, self.max_subgoals) if outs is not None else []
                if names:
                    self.cache[k] = {"task": txt, "subgoals": names}
                    fresh += 1
                else:  # no subgoal this time (a ≡ 0 for the task); asked again when the task comes back
                    self.failed_decompositions += 1
            if fresh:
                self._save()
        return [list(self.cache[k]["subgoals"]) if k in self.cache and self.cache[k].get("task") == txt else []
                for k, txt in zip(keys, texts)]

    # ----------------------------------------------------------------------------- judging
    def _trajectory_prompt(self, t: Trajectory, subgoals: Sequence[str]) -> str:
        turns = []
        for k, u in enumerate(t.turns):
            obs = _obs_text(u, self.obs_chars)
            turns.append(f"Turn {k}:\n[action] {_action_text(u, self.action_chars)}"
                         + (f"\n[observation] {obs}" if obs else ""))
        return TRAJECTORY_TEMPLATE.format(task=task_text(t), subgoals=_numbered(subgoals), turns="\n\n".join(turns))

    def _transition_prompts(self, t: Trajectory, subgoals: Sequence[str]) -> list[str]:
        out, before = [], task_text(t)[: self.obs_chars]
        for u in t.turns:
            after = _obs_text(u, self.obs_chars)
            out.append(TRANSITION_TEMPLATE.format(task=task_text(t), subgoals=_numbered(subgoals), before=before,
                                                  action=_action_text(u, self.action_chars),
                                                  after=after or "(none)"))
            before = after or before
        return out

    def _count(self, r: ParseResult) -> None:
        self.unparseable += 0 if r.ok else 1
        self.unknown += r.unknown
        self.out_of_range += r.out_of_range

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        subgoals = self.subgoals_for(trajs)
        per_turn: list[list[set[int]]] = [[set() for _ in t.turns] for t in trajs]
        if self.mode == "trajectory":
            idx = [i for i, t in enumerate(trajs) if subgoals[i] and t.turns]
            outs = self._ask([self._trajectory_prompt(trajs[i], subgoals[i]) for i in idx], "judging")
            if outs is not None:
                for i, out in zip(idx, outs):
                    r = parse_trajectory_answer(out, subgoals[i], len(trajs[i].turns))
                    self._count(r)
                    for g, ks in r.achieved.items():
                        for k in ks:
                            per_turn[i][k].add(g)
        else:
            todo: dict[str, tuple[str, list[tuple[int, int]]]] = {}  # hash -> (prompt, turns asking it)
            for i, t in enumerate(trajs):
                if not subgoals[i]:
                    continue
                for k, p in enumerate(self._transition_prompts(t, subgoals[i])):
                    h = hashlib.sha1(p.encode("utf-8")).hexdigest()
                    if h in self._verdicts:
                        per_turn[i][k] |= set(self._verdicts[h].achieved)
                    else:
                        todo.setdefault(h, (p, []))[1].append((i, k))
            outs = self._ask([p for p, _ in todo.values()], "judging")
            if outs is not None:
                for (h, (_, where)), out in zip(todo.items(), outs):
                    r = parse_transition_answer(out, subgoals[where[0][0]])
                    self._count(r)
                    if r.ok:
                        self._verdicts[h] = r
                    for i, k in where:
                        per_turn[i][k] |= set(r.achieved)
        for t, sg, hits in zip(trajs, subgoals, per_turn):
            _write_meta(t, sg, achievements_to_signals(t.turns, hits), llm=True)
        return trajs

    def metrics(self) -> dict[str, float]:
        """Counters since construction (judge prompts, drops, failures)."""
        return {"calm/judge_prompts": float(self.calls), "calm/decompositions": float(self.decompositions),
                "calm/unparseable": float(self.unparseable), "calm/unknown_subgoals": float(self.unknown),
                "calm/out_of_range": float(self.out_of_range),
                "calm/failed_decompositions": float(self.failed_decompositions),
                "calm/judge_errors": float(self.errors), "calm/cached_tasks": float(len(self.cache))}


class RuleSubgoalProvider:
    """CALM's rule stand-in (no LLM): subgoals = the task's distinct gold tool calls (``meta["gold_calls"]``); a turn
    achieves one when one of its calls matches it exactly (`turngym.credit.matchtir.similarity_matrix` = 1). The
    answer turn (the last turn of a trajectory with a final answer) is not read: the answer is the outcome."""

    name = "calm_subgoals"
    llm = False

    def __init__(self, gold_calls_key: str = "gold_calls"):
        self.gold_calls_key = gold_calls_key

    @staticmethod
    def _label(c: Mapping[str, Any]) -> str:
        args = c.get("arguments", c.get("parameters", {}))
        return f"{c.get('name', '')}({json.dumps(args, sort_keys=True, ensure_ascii=False, default=str)})"

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        for i, t in enumerate(trajs):
            if self.gold_calls_key not in t.meta:
                raise SignalError(f"RuleSubgoalProvider: trajectory {i} has no meta[{self.gold_calls_key!r}] (the "
                                  "subgoals of the rule stand-in). Fix: an env that publishes its gold tool calls, "
                                  "or judge_url=<OpenAI-compatible server> for the LLM subgoal judge.")
            gold, labels = [], []
            for c in t.meta[self.gold_calls_key] or []:
                lab = self._label(c)
                if lab not in labels:
                    labels.append(lab)
                    gold.append(c)
            answer_turn = len(t.turns) - 1 if t.final_answer is not None else None
            per_turn: list[set[int]] = []
            for k, u in enumerate(t.turns):
                if k == answer_turn or not u.tool_calls or not gold:
                    per_turn.append(set())
                    continue
                s = similarity_matrix(u.tool_calls, gold)  # [calls, gold]
                per_turn.append({j for j in range(len(gold)) if float(s[:, j].max()) >= 1.0})
            _write_meta(t, labels, achievements_to_signals(t.turns, per_turn), llm=False)
        return trajs


def _calm_subgoals(ctx: SignalContext):
    """``SIGNAL_PROVIDERS["calm_subgoals"]``: `SubgoalJudgeProvider` over ``ctx.judge`` (cache in
    ``ctx.run_dir/signals/calm_subgoals.json``), or `RuleSubgoalProvider` when there is no judge."""
    opts = ctx.options_for(CALMSignalOptions)
    if ctx.judge is None:
        return RuleSubgoalProvider()
    cache = Path(ctx.run_dir) / CACHE_FILE if ctx.run_dir is not None else None
    return SubgoalJudgeProvider(ctx.judge, mode=opts.mode, preset_subgoals=opts.preset_subgoals or None,
                                obs_chars=opts.obs_chars, action_chars=opts.action_chars, on_error=opts.on_error,
                                max_subgoals=opts.max_subgoals, cache_path=cache)


_calm_subgoals.config_cls = CALMSignalOptions  # type: ignore[attr-defined]
SIGNAL_PROVIDERS.add("calm_subgoals", _calm_subgoals)
