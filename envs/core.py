"""The `Env` base class: a Gymnasium env whose observations are chat messages and whose actions are text.

One episode::

    obs, info = env.reset(seed=0)            # obs: [system message, user message]; info["task"]: gold data
    while True:
        new_obs, reward, terminated, truncated, info = env.step(action_text)
        if terminated or truncated:
            break

Each ``step`` cuts the action to ``max_action_chars`` (the rest is ignored; ``parse_errors`` says so) and parses
that prefix with the env's tool-call parser. An answer (``<answer>...</answer>``) ends the
episode (``terminated=True``) and is scored against the task's gold answer; tool calls are run through the
env's `ToolSet` (at most ``max_calls_per_action`` of them; the others are not run and get a
``parse_errors`` entry) and their results come back as ``role="tool"`` messages; an action with neither gets a
``role="user"`` message explaining what was expected. Bad actions (malformed calls, unknown tools, junk
characters, over-long answers) are data: an error observation, a counted ``info`` field, and the episode goes on.

A new env subclasses `Env` and fills in four hooks: `_sample_task` (draw a task with ``self.np_random``),
`_prompt` (the first observation's messages), `_score` (outcome of a final answer) and, for its scripted
expert, `_expert_next`. The turn limit ``max_turns`` is enforced here, whoever sets it (the constructor,
``register(..., max_turns=...)`` / ``make(..., max_turns=...)`` through `turngym.envs.wrappers.MaxTurns`, or a
config): the step that reaches it without an answer returns ``truncated=True`` with the end-of-episode keys and
``info["truncated_by"] = "max_turns"``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import gymnasium
import numpy as np

from turngym.envs.spaces import ChatSpace, TextSpace
from turngym.errors import ConfigError, EnvError
from turngym.types import Message, ToolCall, ToolResult

INFO_KEYS_EVERY_STEP = ("tool_calls", "tool_results", "parse_errors", "tool_errors")
"""Keys present in the ``info`` of every ``step``."""

INFO_KEYS_AT_END = ("final_answer", "success", "outcome", "task")

T = TypeVar("T")

SPLITS = ("auto", "train", "test", "all")
"""Task splits of the built-in envs with a finite task set (HopQA's questions, TextWorld's games)."""
TEST_SEED_START = 1_000_000
"""With ``split="auto"``, seeds from here draw held-out tasks: where turngym's evaluation starts (``eval_seed``,
``turngym eval --seed-start``); training draws its seeds below it."""


def is_test_task(task_id: str, test_fraction: float) -> bool:
    """Whether a task belongs to the held-out split: a stable hash of its id (the same in every process)."""
    return int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16) / 2**32 < test_fraction


def draw_in_split(draw: Callable[[], T], task_id: Callable[[T], str], split: str, test_fraction: float,
                  tries: int = 1000) -> T:
    """``draw()`` again until its task is of ``split`` (resolved: ``"train"``, ``"test"`` or ``"all"``), judged by
    `is_test_task` of ``task_id(task)``: a held-out split of a finite task set that needs no list of the tasks.

    Raises:
        ConfigError: No task of the split in ``tries`` draws.
    """
    for _ in range(tries):
        task = draw()
        if split == "all" or is_test_task(task_id(task), test_fraction) == (split == "test"):
            return task
    raise ConfigError(f"no task of the {split!r} split in {tries} draws (test_fraction={test_fraction}); raise "
                      "test_fraction or widen the task set.")


def check_test_fraction(test_fraction: float) -> float:
    if not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    return float(test_fraction)


def resolve_split(split: str, seed: int | None) -> str:
    """``split`` checked, with ``"auto"`` resolved by ``seed``: ``"test"`` from `TEST_SEED_START`, else ``"train"``.

    Raises:
        ConfigError: Not one of `SPLITS`.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    if split == "auto":
        return "test" if seed is not None and seed >= TEST_SEED_START else "train"
    return split
"""Keys added to ``info`` on the step that ends the episode (answer or turn limit)."""


@dataclass
class Task:
    """One task instance.

    Attributes:
        prompt: The user-facing task text.
        gold_answer: The reference answer.
        gold_calls: The ideal tool-call trace, as ``{"name", "arguments"}`` dicts, in order.
        meta: Extra JSON-able task data (hops, decisive turns, ...); merged into ``info["task"]``.
        private: Env-internal data that is not exposed (e.g. intermediate entities); not JSON-checked.
    """

    prompt: str
    gold_answer: str
    gold_calls: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    private: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """The JSON-able task dict published as ``info["task"]`` (a fresh deep copy each call)."""
        d = {
            "prompt": self.prompt,
            "gold_answer": self.gold_answer,
            "gold_calls": self.gold_calls,
            "decisive_turns": list(range(len(self.gold_calls) + 1)),
        }
        d.update(self.meta)
        return copy.deepcopy(d)


@dataclass
class Score:
    """The result of scoring a final answer.

    Attributes:
        outcome: Scalar in [0, 1], the episode outcome credit methods start from (and the final reward).
        success: Whether the answer counts as solved.
        info: Extra metrics for ``info`` (e.g. ``{"f1": 0.5}``).
    """

    outcome: float
    success: bool
    info: dict[str, Any] = field(default_factory=dict)


class Env(gymnasium.Env):
    """Base class of turngym's language environments (a `gymnasium.Env`).

    Observations are ``list[Message]`` (`ChatSpace`); actions are ``str`` (`TextSpace`, any Unicode up to
    ``max_action_chars``). Subclasses set the tools and parser in ``__init__`` (by calling
    ``super().__init__(tools=..., parser=...)``) and implement the hooks `_sample_task`, `_prompt`, `_score`
    and `_expert_next`.

    Attributes:
        toolset: The `turngym.tools.toolset.ToolSet` the env runs calls through (None for tool-free envs).
        parser: The tool-call parser (``.parse(text)`` / ``.format(calls, answer)``).
        tool_schemas: JSON schemas of the tools, for the chat template.
        max_turns: The turn limit this env enforces (None: none), from the constructor or `MaxTurns`.
        default_expert_noise: Noise of `expert_action` used for demos / SFT data.
        task: The current `Task` (None before the first reset).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}
    parser_name: str = "hermes"
    default_expert_noise: float = 0.2
    instructions: str = "Solve the task. Put your final answer inside <answer>...</answer>."

    def __init__(
        self,
        *,
        tools: Any = None,
        parser: str | Any | None = None,
        max_action_chars: int = 16384,
        max_answer_chars: int = 512,
        max_calls_per_action: int = 8,
        max_turns: int | None = None,
        render_mode: str | None = None,
    ):
        """Create the env.

        Args:
            tools: A `ToolSet`, a list of `Tool`s / typed functions (wrapped into a `ToolSet`), or None.
            parser: Parser name (``"hermes"``, ``"tags"``) or a parser object; defaults to ``parser_name``.
            max_action_chars: Longest action accepted; a longer action is cut to this many characters
                before parsing (the rest is ignored, and ``parse_errors`` says it was cut).
            max_answer_chars: Longest final answer accepted; longer ones get an error observation.
            max_calls_per_action: Most tool calls run per action (they run concurrently); the calls
                after the first ``max_calls_per_action`` are not run, and ``parse_errors`` plus the
                observation say ``too many tool calls: N given, at most M run``.
            max_turns: Turn limit (None: no limit). The step that reaches it without an answer returns
                ``truncated=True`` with ``info["truncated_by"] = "max_turns"``; `MaxTurns` sets the same attribute.
            render_mode: None or ``"ansi"``.
        """
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise EnvError(
                f"render_mode={render_mode!r} is not supported by {type(self).__name__}; "
                f"use one of {self.metadata['render_modes']} or None."
            )
        self.render_mode = render_mode
        self.max_action_chars = int(max_action_chars)
        self.max_answer_chars = int(max_answer_chars)
        if int(max_calls_per_action) < 1:
            raise EnvError(f"max_calls_per_action must be >= 1, got {max_calls_per_action!r}.")
        self.max_calls_per_action = int(max_calls_per_action)
        if max_turns is not None and (isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1):
            raise EnvError(f"max_turns must be a positive int or None, got {max_turns!r}.")
        self.max_turns = max_turns
        self.toolset = _as_toolset(tools)
        self.parser = _as_parser(parser if parser is not None else self.parser_name, self.tool_schemas)
        self.action_space = TextSpace(self.max_action_chars)
        self.observation_space = ChatSpace(max_messages=64, max_content_length=1 << 20)
        self.task: Task | None = None
        self._history: list[Message] = []
        self._turn = 0
        self._done = False
        self._closed = False
        self._counts = {"tool_calls": 0, "tool_errors": 0, "parse_errors": 0}
        self._last_value = 0.0

    # ------------------------------------------------------------------ hooks for subclasses
    def _sample_task(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Task:
        """Draw a task using ``rng`` (``self.np_random``). Must be deterministic given the RNG state."""
        raise NotImplementedError

    def _prompt(self, task: Task) -> list[Message]:
        """The first observation: a system message with instructions, then the user task."""
        return [
            {"role": "system", "content": self.instructions},
            {"role": "user", "content": task.prompt},
        ]

    def _score(self, answer: str, task: Task) -> Score:
        """Score a final answer (default: normalised exact match, token F1 in info)."""
        em = exact_match(answer, task.gold_answer)
        return Score(outcome=float(em), success=bool(em), info={"f1": token_f1(answer, task.gold_answer)})

    def _expert_next(self) -> ToolCall | str:
        """The ideal next move in the current state: a `ToolCall`, or the final answer string."""
        raise NotImplementedError(f"{type(self).__name__} has no scripted expert.")

    def _expert_wrong_call(self, rng: np.random.Generator) -> ToolCall | None:
        """A plausible but unhelpful call (a 'wrong query'); None if the env has none."""
        return None

    def _expert_wrong_answer(self, rng: np.random.Generator) -> str:
        """A plausible wrong final answer (an 'early answer' mistake)."""
        return "I don't know"

    def _progress(self, history: list[Message]) -> int | None:
        """How many steps of the gold plan the observations in ``history`` have completed (None: unknown).

        Drives the ground-truth turn value (`turn_value`) and the GiGPO anchor state in ``info``.
        """
        return None

    def _on_step(self, info: dict[str, Any], terminated: bool) -> None:
        """Called at the end of each step with its info; adds ``value``, ``value_delta``, ``anchor``."""
        self._add_progress_info(info)

    def _add_progress_info(self, info: dict[str, Any]) -> None:
        assert self.task is not None
        done = self._progress(self._history)
        if done is None:
            return
        total = max(1, len(self.task.gold_calls))
        value = min(done, total) / total
        info["progress"] = done
        info["value"] = value
        info["value_delta"] = value - self._last_value
        # GiGPO anchors: the state this action was taken in (before the step) and the state it led to
        info["anchor_obs"] = getattr(self, "_last_anchor", f"progress=0/{total}")
        info["anchor"] = f"progress={done}/{total}"
        self._last_anchor = info["anchor"]
        self._last_value = value

    def turn_value(self, history: list[Message] | None = None) -> float:
        """Ground-truth value of a state: the fraction of the gold plan that the observations have completed.

        For HopQA this is the fraction of hops resolved (the hop's fact has been retrieved, in order); for
        Calc the fraction of gold calculator steps whose results have been seen. Credit-accuracy benchmarks
        compare per-turn credit with the differences of this value.

        Args:
            history: Messages of an episode of the current task (default: the current episode so far).

        Returns:
            A value in [0, 1] (0.0 for envs without a progress model).
        """
        if self.task is None:
            raise EnvError("turn_value() needs a task; call reset() first.")
        done = self._progress(self._history if history is None else history)
        if done is None:
            return 0.0
        total = max(1, len(self.task.gold_calls))
        return min(done, total) / total

    # ------------------------------------------------------------------ gymnasium API
    @property
    def tool_schemas(self) -> list[dict[str, Any]]:
        """JSON schemas of the env's tools (empty without tools)."""
        return list(self.toolset.schemas) if self.toolset is not None else []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start an episode.

        Args:
            seed: Seeds the env's RNG (``self.np_random``); the same seed gives the same task.
            options: Env-specific options (e.g. ``{"hops": 3}`` for HopQA).

        Returns:
            ``(messages, info)``: the full first observation, and ``info["task"]`` with the task metadata.
        """
        if self._closed:
            raise EnvError(
                f"{type(self).__name__}.reset() called after close(); create a new env with make()."
            )
        super().reset(seed=seed)
        self.reset_seed = seed  # the seed of this episode (None: unseeded); `resolve_split` reads it
        task = self._sample_task(self.np_random, options)
        if not isinstance(task, Task):
            raise EnvError(
                f"{type(self).__name__}._sample_task must return a turngym.envs.Task, got {type(task).__name__} "
                f"{_short(repr(task), 80)}. Fix: return Task(prompt=..., gold_answer=...)."
            )
        self.task = task
        self._turn = 0
        self._done = False
        self._counts = {"tool_calls": 0, "tool_errors": 0, "parse_errors": 0}
        messages = self._prompt(self.task)
        self._history = copy.deepcopy(messages)
        info: dict[str, Any] = {"task": self.task.metadata(), "turn": 0}
        if self.max_turns is not None:
            info["max_turns"] = self.max_turns
        self._last_value = 0.0
        self._add_progress_info(info)
        info.pop("value_delta", None)
        info.pop("anchor_obs", None)  # reset has no action; its anchor is the first step's anchor_obs
        return copy.deepcopy(messages), info

    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        """Apply one assistant action.

        Args:
            action: The assistant's raw text. ``bytes`` are decoded as UTF-8 with replacement and counted
                as a parse error; any other type is a framework bug and raises `EnvError`.

        Returns:
            ``(new_messages, reward, terminated, truncated, info)``; ``new_messages`` holds only the new
            observation messages. The reward is the outcome on the answering step, 0 otherwise.

        Raises:
            EnvError: ``step`` before ``reset``, after the episode ended, or with a non-text action.
        """
        if self.task is None:
            raise EnvError(
                f"{type(self).__name__}.step() was called before reset(); call env.reset(seed=...) first."
            )
        if self._done:
            raise EnvError(
                f"{type(self).__name__}.step() was called after the episode ended (terminated or truncated at "
                "max_turns); call env.reset() to start a new episode."
            )
        text, errors = self._sanitize(action)
        parsed = self.parser.parse(text)
        errors.extend(parsed.errors)
        if not parsed.calls and parsed.answer is None and not parsed.errors:
            errors.extend(self._unknown_tags(text))
        self._turn += 1
        self._history.append({"role": "assistant", "content": text})
        info: dict[str, Any] = {
            "tool_calls": [],
            "tool_results": [],
            "parse_errors": errors,
            "tool_errors": 0,
            "turn": self._turn,
        }
        reward = 0.0
        terminated = False
        new_messages: list[Message]
        if parsed.answer is not None and len(parsed.answer) > self.max_answer_chars:
            errors.append(f"answer too long: {len(parsed.answer)} characters (limit {self.max_answer_chars})")
            new_messages = [
                {
                    "role": "user",
                    "content": (
                        f"Error: your answer has {len(parsed.answer)} characters; the limit is "
                        f"{self.max_answer_chars}. Give a short final answer inside <answer>...</answer>."
                    ),
                }
            ]
        elif parsed.answer is not None:
            terminated = True
            score = self._score(parsed.answer, self.task)
            if not isinstance(score, Score):
                raise EnvError(
                    f"{type(self).__name__}._score must return a turngym.envs.Score, got {type(score).__name__} "
                    f"{_short(repr(score), 80)}. Fix: return Score(outcome=<float in [0, 1]>, success=<bool>)."
                )
            reward = float(score.outcome)
            info.update(score.info)
            info.update(self._end_info(parsed.answer, score))
            new_messages = []
        elif parsed.calls:
            calls = list(parsed.calls)
            if len(calls) > self.max_calls_per_action:
                errors.append(
                    f"too many tool calls: {len(calls)} given, at most {self.max_calls_per_action} run "
                    f"(the first {self.max_calls_per_action}); make at most {self.max_calls_per_action} "
                    "calls per action"
                )
                calls = calls[: self.max_calls_per_action]
            results = self._run_tools(calls)
            info["tool_calls"] = calls
            info["tool_results"] = results
            info["tool_errors"] = sum(1 for r in results if not r.ok)
            new_messages = [{"role": "tool", "name": r.name, "content": r.text} for r in results]
            if errors:
                new_messages.append({"role": "user", "content": self._error_text(errors, some_calls=True)})
        else:
            new_messages = [{"role": "user", "content": self._error_text(errors, some_calls=False)}]
        self._counts["tool_calls"] += len(info["tool_calls"])
        self._counts["tool_errors"] += info["tool_errors"]
        self._counts["parse_errors"] += len(errors)
        info["episode_counts"] = dict(self._counts)
        truncated = not terminated and self.max_turns is not None and self._turn >= self.max_turns
        if truncated:
            for k, v in self.end_info(None).items():
                info.setdefault(k, v)
            info["truncated_by"] = "max_turns"
        self._done = terminated or truncated
        self._history.extend(copy.deepcopy(new_messages))
        self._on_step(info, terminated)
        return new_messages, reward, terminated, truncated, info

    def render(self) -> str | None:
        """``"ansi"``: the episode so far as text."""
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"[{m['role']}] {m['content']}" for m in self._history)

    def close(self) -> None:
        """Release the tools (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.toolset is not None:
            self.toolset.close()

    # ------------------------------------------------------------------ episode helpers
    @property
    def history(self) -> list[Message]:
        """All messages of the current episode (a copy): first observation, actions, observations."""
        return copy.deepcopy(self._history)

    @property
    def turn(self) -> int:
        """Number of steps taken in the current episode."""
        return self._turn

    def end_info(self, final_answer: str | None = None) -> dict[str, Any]:
        """The end-of-episode info for an episode cut without an answer (used by `MaxTurns`)."""
        if self.task is None:
            raise EnvError("end_info() needs a task; call reset() first.")
        score = Score(outcome=0.0, success=False, info={})
        return self._end_info(final_answer, score)

    def _end_info(self, answer: str | None, score: Score) -> dict[str, Any]:
        assert self.task is not None
        return {
            "final_answer": answer,
            "success": bool(score.success),
            "outcome": float(score.outcome),
            "task": self.task.metadata(),
        }

    def _sanitize(self, action: Any) -> tuple[str, list[str]]:
        """The action as valid text of at most ``max_action_chars`` characters, and what was wrong with it.

        A longer action is cut before anything else looks at it (the cleaning below and the parser then
        cost O(max_action_chars) whatever the model sent); NULs are removed from the kept part only.
        """
        errors: list[str] = []
        if isinstance(action, (bytes, bytearray)):
            action = bytes(action).decode("utf-8", errors="replace")
            errors.append("action was bytes, not text; decoded as UTF-8 with replacement characters")
        if not isinstance(action, str):
            raise EnvError(
                f"{type(self).__name__}.step() expects the action as a str (the assistant's text), "
                f"got {type(action).__name__}. Decode model output to text before stepping."
            )
        if len(action) > self.max_action_chars:
            errors.append(
                f"action too long: {len(action)} characters (limit {self.max_action_chars}); only the first "
                f"{self.max_action_chars} were read, the rest was ignored; keep actions short"
            )
            action = action[: self.max_action_chars]
        clean = action.encode("utf-8", errors="replace").decode("utf-8")
        if clean != action:
            bad = sum(1 for a, b in zip(action, clean) if a != b)
            errors.append(f"action contained {bad} invalid character(s) (lone surrogates); replaced with '?'")
        if "\x00" in clean:
            clean = clean.replace("\x00", "")
            errors.append("action contained NUL characters; removed")
        return clean, errors

    def _run_tools(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        if self.toolset is None:
            return [
                ToolResult(
                    name=c.name,
                    ok=False,
                    error=f"unknown tool {c.name!r}: this environment has no tools; answer with <answer>...</answer>",
                    call_id=c.id,
                )
                for c in calls
            ]
        return list(self.toolset.execute(list(calls)))

    def _unknown_tags(self, text: str) -> list[str]:
        """Name XML-like tags that are neither a tool nor ``answer`` (e.g. ``<calculator>`` in a search env)."""
        import re

        known = set(self.toolset.names if self.toolset is not None else []) | {"answer", "think"}
        tags = sorted({t for t in re.findall(r"<([A-Za-z_][\w-]{0,40})>", text) if t not in known})
        if not tags:
            return []
        avail = ", ".join(sorted(known - {"think"}))
        return [f"unknown tool or tag {', '.join('<' + t + '>' for t in tags)}; available: {avail}"]

    def _error_text(self, errors: list[str], *, some_calls: bool) -> str:
        names = ", ".join(self.toolset.names) if self.toolset is not None else "(none)"
        head = (
            "Error: " + "; ".join(_short(e).rstrip(".") for e in errors) + "."
            if errors
            else ("Error: no tool call and no answer found.")
        )
        if some_calls:
            return head
        return f"{head} Call a tool ({names}) or give the final answer inside <answer>...</answer>."

    # ------------------------------------------------------------------ scripted expert
    def expert_action(self, rng: np.random.Generator, noise: float = 0.0) -> str:
        """The scripted expert's next action text for the current state.

        With probability ``noise`` the action is a mistake, drawn uniformly from: a wrong query (a plausible
        but unhelpful call; costs a turn), a malformed call (costs a turn), an early wrong answer (fails the
        episode). At ``noise=0`` the expert solves every task.

        Args:
            rng: The caller's generator (the env's own RNG is not consumed).
            noise: Probability of a mistake per action, in [0, 1].

        Returns:
            The action text, formatted with the env's parser.
        """
        if self.task is None or self._done:
            raise EnvError("expert_action() needs a running episode; call reset() first.")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}.")
        ideal = self._expert_next()
        if noise > 0 and rng.random() < noise:
            kind = ("wrong_call", "malformed", "early_answer")[int(rng.integers(0, 3))]
            if kind == "wrong_call":
                wrong = self._expert_wrong_call(rng)
                if wrong is not None:
                    return self.parser.format(calls=[wrong])
                kind = "malformed"
            if kind == "malformed":
                return self._malformed(ideal)
            return self.parser.format(answer=self._expert_wrong_answer(rng))
        if isinstance(ideal, ToolCall):
            return self.parser.format(calls=[ideal])
        return self.parser.format(answer=str(ideal))

    def _malformed(self, ideal: ToolCall | str) -> str:
        """An action that looks like a call but parses to no call and no answer."""
        base = self.parser.format(calls=[ideal]) if isinstance(ideal, ToolCall) else ""
        candidates = []
        if base:
            candidates.append(base[: max(1, len(base) - 3)])  # cut closing tag
            candidates.append(base.replace("{", "{{", 1).replace(":", "", 1))
        candidates.append("Let me think about which tool to use next.")
        for c in candidates:
            p = self.parser.parse(c)
            if not p.calls and p.answer is None:
                return c
        return candidates[-1]

    def expected_expert_success(self, noise: float, plan_lengths: dict[int, float] | None = None) -> float:
        """Success probability of `expert_action` at ``noise`` under the turn limit (exact, by dynamic programming).

        Each action is right with prob ``1-noise``; a mistake is a wrong call or a malformed call (each
        ``noise/3``, costs a turn) or an early answer (``noise/3``, fails). An ideal plan of ``n`` actions
        succeeds if its ``n`` right actions come before any early answer and within ``max_turns``.

        Args:
            noise: Mistake probability per action.
            plan_lengths: ``{n_actions: probability}`` over tasks; defaults to `_plan_lengths`.
        """
        lengths = plan_lengths if plan_lengths is not None else self._plan_lengths()
        limit = self.max_turns if self.max_turns is not None else 10_000
        p_ok, p_cost = 1 - noise, 2 * noise / 3  # the remaining noise / 3 is the early (wrong) answer
        total = 0.0
        for n, w in lengths.items():
            # P(exactly n right actions, interleaved with j costly mistakes, n + j <= limit, no early answer)
            s = 0.0
            for j in range(max(0, limit - n) + 1):
                s += _comb(n - 1 + j, j) * (p_ok**n) * (p_cost**j)
            total += w * s
        return float(total)

    def _plan_lengths(self) -> dict[int, float]:
        """Distribution of the number of actions of the ideal plan (override per env)."""
        return {2: 1.0}


# ---------------------------------------------------------------------- answer scoring helpers
def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD style)."""
    import re
    import string

    s = s.lower()
    s = "".join(" " if ch in string.punctuation else ch for ch in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str | Sequence[str]) -> bool:
    """Normalised exact match against one gold string or any of several."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    p = normalize_answer(prediction)
    return any(p == normalize_answer(g) for g in golds)


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """Token-level F1 of the normalised strings (max over several golds)."""
    from collections import Counter

    golds = [gold] if isinstance(gold, str) else list(gold)
    best = 0.0
    p_toks = normalize_answer(prediction).split()
    for g in golds:
        g_toks = normalize_answer(g).split()
        common = Counter(p_toks) & Counter(g_toks)
        same = sum(common.values())
        if same == 0:
            continue
        prec, rec = same / len(p_toks), same / len(g_toks)
        best = max(best, 2 * prec * rec / (prec + rec))
    return best


def _comb(n: int, k: int) -> int:
    from math import comb

    return comb(n, k)


def _short(s: str, n: int = 300) -> str:
    return s if len(s) <= n else s[:n] + "..."


def _as_toolset(tools: Any) -> Any:
    if tools is None:
        return None
    from turngym.tools.toolset import ToolSet

    if isinstance(tools, ToolSet):
        return tools
    if isinstance(tools, (list, tuple)):
        return ToolSet(list(tools))
    raise EnvError(f"tools must be a ToolSet, a list of tools, or None; got {type(tools).__name__}.")


def _as_parser(parser: Any, schemas: list[dict[str, Any]]) -> Any:
    if isinstance(parser, str):
        from turngym.tools.parsers import get_parser

        return get_parser(parser, schemas)
    if hasattr(parser, "parse") and hasattr(parser, "format"):
        return parser
    raise EnvError(
        f"parser must be a parser name or an object with parse/format; got {type(parser).__name__}."
    )
