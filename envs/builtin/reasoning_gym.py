"""``tool/ReasoningGym-v0``: reasoning-gym's procedural datasets as tasks, scored by the dataset's own scorer.

reasoning-gym (the ``reasoning-gym`` extra) generates reasoning tasks procedurally: ``basic_arithmetic``,
``chain_sum``, ``leg_counting``, ``spell_backward``, ``syllogism`` and about a hundred more. This env is a
task source over them: ``make("tool/ReasoningGym-v0", dataset="chain_sum", dataset_config={"max_terms": 3})``
builds the dataset with ``reasoning_gym.create_dataset(dataset, seed=seed, size=size, **dataset_config)``;
``reset(seed=s)`` picks one of its entries with the env's RNG, the entry's ``question`` is the user message,
and the final answer (``<answer> ... </answer>``) is scored by the dataset's ``score_answer(answer, entry)``:
that score, in [0, 1], is the outcome and the reward (``reward="success"``: 1.0 or 0.0 by ``success``);
``success`` means a score of at least ``success_threshold`` (1.0).

Tools are optional: ``tools=()`` asks for the answer at once (one turn); ``("calculator",)`` (the default) or
``("python",)`` add turngym's calculator or sandboxed python tool, so the agent can compute before it answers.
When a tool is on and the entry carries a plain arithmetic expression (``metadata["expression"]``, as in
``basic_arithmetic`` and ``chain_sum``) whose value the calculator reproduces exactly, the gold plan is one
call with that expression, then the answer; otherwise the gold plan is the answer alone.

Held-out tasks: reset seeds from ``eval_seed`` (1,000,000, the trainers' ``eval_seed``) on draw from a
separate pool: ``eval_size`` entries of the dataset generated with seed ``seed + size`` (reasoning-gym derives
entry ``i`` from ``seed + i``, so the two pools use disjoint generator seeds), minus every entry whose
question also appears in the training pool(s) and every repeat of an earlier held-out question. Seeds below
``eval_seed`` draw from the ``size`` training entries; ``options={"split": "eval"}`` picks the held-out pool
whatever the seed.

Curriculum (``curriculum={...}``): the dataset's reasoning-gym curriculum (``create_curriculum(dataset)``)
sets the difficulty fields of its config by level. The level at curriculum step ``t`` is ``min(start + t //
every, max_level)``; ``t`` is what the caller last gave: the ``curriculum_step`` constructor argument,
`set_curriculum_step`, or ``reset(options={"curriculum_step": t})``. Held-out tasks use ``eval_level``
(default ``max_level``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from turngym.envs.core import Env, Score, Task, token_f1
from turngym.errors import ConfigError, EnvError, MissingExtraError
from turngym.registry import unknown_name_message
from turngym.types import Message, ToolCall

TOOLS = ("calculator", "python")
"""Tool names the env can attach."""

CURRICULUM_KEYS = ("start", "every", "max_level", "eval_level", "mode", "k")
"""Keys of the ``curriculum`` dict (see `ReasoningGymEnv`)."""

_ARITHMETIC = re.compile(r"[0-9\s+\-*/().]+")

_HINTS = {
    (
        "calculator",
        "hermes",
    ): "You can use the calculator tool to evaluate an arithmetic expression, e.g. (12 + 30) * 2.",
    ("calculator", "tags"): (
        "You can evaluate an arithmetic expression with <calculator> (12 + 30) * 2 </calculator>; "
        "the result comes back."
    ),
    (
        "python",
        "hermes",
    ): "You can run Python code with the python tool; print the value you need and its output comes back.",
    ("python", "tags"): (
        "You can run Python code with <python> code </python>; print the value you need and its output "
        "comes back."
    ),
}


def _instructions(tools: tuple[str, ...], parser: str) -> str:
    if not tools:
        return "Solve the task. Reply at once with the final answer inside <answer>...</answer>."
    answer = "<answer> ... </answer>" if parser == "tags" else "<answer>...</answer>"
    hints = " ".join(_HINTS[(t, parser)] for t in tools)
    return f"Solve the task. {hints} Put the final answer inside {answer}."


def import_reasoning_gym() -> Any:
    """The ``reasoning_gym`` package (its datasets registered).

    Raises:
        MissingExtraError: ``reasoning-gym`` is not installed (``pip install 'turngym[reasoning-gym]'``).
    """
    try:
        import reasoning_gym
        import reasoning_gym.factory
    except ImportError:
        raise MissingExtraError("reasoning-gym", "reasoning-gym") from None
    return reasoning_gym


# ---------------------------------------------------------------------- process-wide caches
# Envs are made anew for every rollout batch; datasets, the training questions and the held-out pool are built
# once per process and shared read-only (entries are generated from the dataset's seed and index, so sharing
# is safe).
_CACHE: OrderedDict[str, Any] = OrderedDict()
_CACHE_SIZE = 64
_LOCK = threading.Lock()


def _cached(key: str, build: Callable[[], Any]) -> Any:
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    value = build()
    with _LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=repr)


def _json_safe(x: Any) -> Any:
    """A JSON-able copy of entry metadata (tuples become lists, unknown objects their repr)."""
    return json.loads(json.dumps(x, default=repr))


@dataclasses.dataclass(frozen=True)
class CurriculumSchedule:
    """Difficulty by step: ``level(t) = min(start + t // every, max_level)`` (``start`` if ``every`` is None).

    Attributes:
        start: Level at step 0.
        every: Curriculum steps per level (None: the level stays at ``start``).
        max_level: Highest level the schedule reaches.
        eval_level: Level of the held-out tasks.
        mode: How a level turns into a range of a range attribute (reasoning-gym's ``RangeAttributeMode``):
            ``"inclusive"`` (levels 0..L), ``"upper_bound"`` (level L only) or ``"last_k"`` (the last ``k``
            levels).
        k: Window of ``"last_k"``.
    """

    start: int
    every: int | None
    max_level: int
    eval_level: int
    mode: str
    k: int | None

    def level_at(self, step: int) -> int:
        """The training level at curriculum step ``step`` (>= 0)."""
        if self.every is None:
            return self.start
        return min(self.start + int(step) // self.every, self.max_level)

    @property
    def train_levels(self) -> tuple[int, ...]:
        """Every level training can draw from."""
        return tuple(range(self.start, (self.max_level if self.every is not None else self.start) + 1))


class ReasoningGymEnv(Env):
    """A reasoning-gym dataset as a turngym env: the entry's question, optional tools, the dataset's scorer.

    Args:
        dataset: reasoning-gym dataset name (``reasoning_gym.factory.DATASETS``), e.g. ``"basic_arithmetic"``.
        dataset_config: Fields of the dataset's config dataclass (``{"min_terms": 2, "max_terms": 3}``); not
            ``seed`` / ``size`` (the env's own arguments), nor the fields a curriculum sets.
        tools: Tool names, a subset of ``("calculator", "python")``; ``()`` is the single-turn form (answer at
            once). With ``"python"`` the code runs in a sandbox (`turngym.tools.sandbox.make_sandbox`).
        size: Training entries (indices ``0..size-1`` of the dataset generated with ``seed``).
        seed: Seed of the dataset generator (not the reset seed).
        eval_size: Held-out entries generated (with seed ``seed + size``) before removing those whose question
            is also a training question.
        eval_seed: Reset seeds from this one on draw held-out tasks (seed ``eval_seed + i`` gets held-out
            entry ``i`` modulo the pool size); keep it equal to the trainer's ``eval_seed``.
        curriculum: None (the config as given), or a dict with the keys of `CurriculumSchedule` (all
            optional): ``start`` (0), ``every`` (None: fixed level), ``max_level`` (the curriculum's highest),
            ``eval_level`` (``max_level``), ``mode`` (``"inclusive"``), ``k``.
        curriculum_step: The curriculum step ``t`` the level is computed from (see `set_curriculum_step`).
        success_threshold: Score at or above which an answer counts as solved.
        reward: What the outcome (and reward) is: ``"score"``, the dataset's score as is (partial credit
            included: reasoning-gym's base scorer gives ``len(gold) / len(answer)`` to an answer that contains
            the gold string), or ``"success"``, 1.0 when the score reaches ``success_threshold`` and 0.0
            otherwise.
        parser: Tool-call format: ``"tags"`` (default: ``<calculator> 2 + 3 </calculator>``, no schemas in the
            prompt) or ``"hermes"`` (JSON tool calls, the tool schemas in the prompt).
        sandbox: The python tool's sandbox: a backend name for ``make_sandbox`` (the env makes it and closes
            it), or a `Sandbox` (the caller closes it).
        code_timeout_s: Wall-clock limit of one python run inside the sandbox.
        tool_timeout_s: Per-call timeout of the tools (ToolSet level).
        **kwargs: Passed to `Env` (``max_turns``, ``max_action_chars``, ``max_answer_chars``,
            ``render_mode``).

    Raises:
        MissingExtraError: reasoning-gym is not installed.
        ConfigError: An unknown dataset, tool or config field, a config the dataset rejects, a bad curriculum.
    """

    parser_name = "tags"
    default_expert_noise = 0.3

    def __init__(
        self,
        *,
        dataset: str = "basic_arithmetic",
        dataset_config: dict[str, Any] | None = None,
        tools: Sequence[str] = ("calculator",),
        size: int = 1000,
        seed: int = 0,
        eval_size: int = 200,
        eval_seed: int = 1_000_000,
        curriculum: dict[str, Any] | None = None,
        curriculum_step: int = 0,
        success_threshold: float = 1.0,
        reward: str = "score",
        parser: str = "tags",
        sandbox: Any = "auto",
        code_timeout_s: float = 5.0,
        tool_timeout_s: float = 20.0,
        **kwargs: Any,
    ):
        if isinstance(tools, str) or not isinstance(tools, (list, tuple)):
            raise ConfigError(
                f"tools must be a list of tool names (e.g. ['calculator'] or []), got {tools!r}."
            )
        for t in tools:
            if t not in TOOLS:
                raise ConfigError(
                    unknown_name_message("tool", str(t), TOOLS) + " Fix: tools=[] or a subset of them."
                )
        self.tool_names = tuple(dict.fromkeys(tools))
        for name, v, lo in (
            ("size", size, 1),
            ("eval_size", eval_size, 1),
            ("seed", seed, 0),
            ("eval_seed", eval_seed, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ConfigError(f"{name} must be an int >= {lo}, got {v!r}.")
        if not 0.0 < float(success_threshold) <= 1.0:
            raise ConfigError(f"success_threshold must be in (0, 1], got {success_threshold!r}.")
        if reward not in ("score", "success"):
            raise ConfigError(f"reward must be 'score' or 'success', got {reward!r}.")
        self.reward = reward
        if parser not in ("hermes", "tags"):
            raise ConfigError(f"parser must be 'hermes' or 'tags', got {parser!r}.")
        self.rg = import_reasoning_gym()  # MissingExtraError, with the install command, before anything else
        from reasoning_gym.factory import DATASETS

        if dataset not in DATASETS:
            raise ConfigError(
                unknown_name_message("reasoning-gym dataset", str(dataset), DATASETS)
                + " Fix: dataset=<one of them>."
            )
        self.dataset = dataset
        self.size, self.seed, self.eval_size, self.eval_seed = (
            int(size),
            int(seed),
            int(eval_size),
            int(eval_seed),
        )
        self.success_threshold = float(success_threshold)
        self.dataset_config = self._check_config(dict(dataset_config or {}))
        self.schedule = self._check_curriculum(curriculum)
        self.curriculum_step = 0
        self.set_curriculum_step(curriculum_step)
        self._reset_seed: int | None = None
        for level in self._levels_to_validate():
            self._train_dataset(level)  # the dataset's own validation, as a ConfigError, before any episode
        self.sandbox, self._owns_sandbox = None, False
        tool_objs: list[Any] = []
        if "calculator" in self.tool_names:
            from turngym.tools.calculator import calculator

            tool_objs.append(calculator)
        if "python" in self.tool_names:
            from turngym.tools.python import make_python_tool
            from turngym.tools.sandbox import make_sandbox

            self._owns_sandbox = isinstance(sandbox, str)
            self.sandbox = make_sandbox(sandbox) if self._owns_sandbox else sandbox
            tool_objs.append(make_python_tool(self.sandbox, timeout_s=code_timeout_s))
        toolset = None
        if tool_objs:
            from turngym.tools.toolset import ToolSet

            toolset = ToolSet(tool_objs, timeout_s=tool_timeout_s)
        self.instructions = _instructions(self.tool_names, parser)
        super().__init__(tools=toolset, parser=parser, **kwargs)

    def close(self) -> None:
        """Close the tools and the python sandbox the env made, if any (idempotent)."""
        was_closed = self._closed
        super().close()
        if not was_closed and self._owns_sandbox and self.sandbox is not None:
            self.sandbox.close()

    # ------------------------------------------------------------------ curriculum
    def set_curriculum_step(self, step: int) -> None:
        """Set the curriculum step ``t``: training tasks drawn from now on are at ``schedule.level_at(t)``.

        A training loop calls it with its step number before rolling out
        (``env.unwrapped.set_curriculum_step`` on a wrapped env); ``reset(options={"curriculum_step": t})``
        does the same for one reset.
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ConfigError(f"curriculum_step must be an int >= 0, got {step!r}.")
        self.curriculum_step = int(step)

    @property
    def curriculum_level(self) -> int | None:
        """The level training tasks are drawn at now (None without a curriculum)."""
        return None if self.schedule is None else self.schedule.level_at(self.curriculum_step)

    def level_config(self, level: int | None) -> dict[str, Any]:
        """The dataset config (without seed and size) of a curriculum level: ``dataset_config`` plus the
        fields the dataset's reasoning-gym curriculum sets at ``level`` (for None: ``dataset_config``)."""
        cfg = dict(self.dataset_config)
        if level is None:
            return cfg
        assert self.schedule is not None
        from reasoning_gym.coaching.attributes import RangeAttributeDefinition
        from reasoning_gym.coaching.base_curriculum import DefaultCurriculumContext, RangeAttributeMode
        from reasoning_gym.factory import create_curriculum

        cur = create_curriculum(self.dataset)
        cur.set_global_level(int(level))
        context = DefaultCurriculumContext(mode=RangeAttributeMode(self.schedule.mode), k=self.schedule.k)
        made = cur.generate_configuration(defaults={}, context=context)
        for attr in cur.attributes.values():
            names = (
                (attr.lower_field_name, attr.upper_field_name)
                if isinstance(attr, RangeAttributeDefinition)
                else (attr.field_name,)
            )
            for n in names:
                cfg[n] = getattr(made, n)
        return cfg

    # ------------------------------------------------------------------ datasets and pools
    def _create(self, level: int | None, seed: int, size: int) -> Any:
        cfg = self.level_config(level)

        def build() -> Any:
            try:
                return self.rg.create_dataset(self.dataset, seed=seed, size=size, **cfg)
            except (AssertionError, TypeError, ValueError) as e:
                raise ConfigError(
                    f"reasoning-gym rejected the config of dataset {self.dataset!r} "
                    f"{_describe(cfg, level)}: {type(e).__name__}: {e}. Fix: change dataset_config (fields: "
                    f"{', '.join(self._config_fields())})."
                ) from None

        return _cached(_key("dataset", self.dataset, cfg, seed, size), build)

    def _train_dataset(self, level: int | None) -> Any:
        return self._create(level, self.seed, self.size)

    def _eval_dataset(self, level: int | None) -> Any:
        return self._create(level, self.seed + self.size, self.eval_size)

    def _train_questions(self, level: int | None) -> frozenset[str]:
        ds = self._train_dataset(level)
        return _cached(
            _key("questions", self.dataset, self.level_config(level), self.seed, self.size),
            lambda: frozenset(str(ds[i]["question"]) for i in range(self.size)),
        )

    def eval_indices(self, level: int | None = None) -> list[int]:
        """Indices of the held-out pool at ``level`` (default: the eval level): the held-out entries whose
        question is no training question of any level training draws from (nor of ``level`` itself), each
        question once."""
        level = self._eval_level() if level is None else level
        train_levels = sorted(set(self._train_levels()) | ({level} if level is not None else set()), key=str)
        ds = self._eval_dataset(level)

        def build() -> list[int]:
            seen = set().union(*(self._train_questions(lv) for lv in train_levels))
            keep = []
            for i in range(self.eval_size):
                q = str(ds[i]["question"])
                if q not in seen:  # no training question, and each held-out question once
                    seen.add(q)
                    keep.append(i)
            if not keep:
                raise ConfigError(
                    f"all {self.eval_size} held-out entries of {self.dataset!r} "
                    f"{_describe(self.level_config(level), level)} are also training questions: the config "
                    "has too few distinct tasks for a held-out split. "
                    f"Fix: widen dataset_config, or lower size (now {self.size})."
                )
            return keep

        return _cached(
            _key(
                "eval",
                self.dataset,
                self.level_config(level),
                self.seed,
                self.size,
                self.eval_size,
                train_levels,
            ),
            build,
        )

    def _train_levels(self) -> tuple[int | None, ...]:
        return (None,) if self.schedule is None else self.schedule.train_levels

    def _eval_level(self) -> int | None:
        return None if self.schedule is None else self.schedule.eval_level

    def _levels_to_validate(self) -> tuple[int | None, ...]:
        if self.schedule is None:
            return (None,)
        return tuple(sorted(set(self.schedule.train_levels) | {self.schedule.eval_level}))

    # ------------------------------------------------------------------ task
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start an episode; seeds from ``eval_seed`` on draw held-out tasks (see the module docstring).

        Options: ``split`` (``"train"`` / ``"eval"``), ``index`` (the entry of that split's pool), ``level``
        (a curriculum level), ``curriculum_step`` (the step the level is computed from, this reset only).
        """
        self._reset_seed = seed
        return super().reset(seed=seed, options=options)

    def _sample_task(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Task:
        opts = dict(options or {})
        known = ("split", "index", "level", "curriculum_step")
        unknown = sorted(set(opts) - set(known))
        if unknown:
            raise ConfigError(f"ReasoningGym reset options: unknown keys {unknown}; known: {list(known)}.")
        seed = self._reset_seed
        split = opts.get("split") or ("eval" if seed is not None and seed >= self.eval_seed else "train")
        if split not in ("train", "eval"):
            raise ConfigError(f"reset option split must be 'train' or 'eval', got {split!r}.")
        level = self._level_for(split, opts)
        if split == "train":
            ds, pool = self._train_dataset(level), None
            index = int(opts["index"]) if "index" in opts else int(rng.integers(0, self.size))
            if not 0 <= index < self.size:
                raise ConfigError(
                    f"reset option index={index} is outside the training pool 0..{self.size - 1}."
                )
        else:
            ds, pool = self._eval_dataset(level), self.eval_indices(level)
            if "index" in opts:
                pos = int(opts["index"])
                if not 0 <= pos < len(pool):
                    raise ConfigError(
                        f"reset option index={pos} is outside the held-out pool 0..{len(pool) - 1}."
                    )
            elif seed is not None and seed >= self.eval_seed:
                pos = (seed - self.eval_seed) % len(pool)
            else:
                pos = int(rng.integers(0, len(pool)))
            index = pool[pos]
        entry = ds[index]
        answer = entry.get("answer")
        gold = "" if answer is None else str(answer)
        calls = self._gold_calls(entry, gold)
        n = len(calls)
        meta = {
            "id": f"reasoning_gym/{self.dataset}/{split}/{'-' if level is None else level}/{index}",
            "dataset": self.dataset,
            "split": split,
            "index": index,
            "level": level,
            "has_gold_answer": answer is not None,
            "source_metadata": _json_safe(entry.get("metadata", {})),
            "decisive_turns": list(range(n + 1)),
            "gold_turn_values": [i / max(n, 1) for i in range(n + 1)],
        }
        return Task(
            prompt=str(entry["question"]),
            gold_answer=gold,
            gold_calls=calls,
            meta=meta,
            private={"entry": entry, "dataset": ds},
        )

    def _level_for(self, split: str, opts: dict[str, Any]) -> int | None:
        if self.schedule is None:
            if "level" in opts or "curriculum_step" in opts:
                raise ConfigError(
                    "reset options level / curriculum_step need a curriculum; "
                    "make the env with curriculum={...}."
                )
            return None
        if "level" in opts:
            level = int(opts["level"])
            top = self._top_level()
            if not 0 <= level <= top:
                raise ConfigError(f"reset option level={level} is outside 0..{top} for {self.dataset!r}.")
            return level
        if split == "eval":
            return self.schedule.eval_level
        step = opts.get("curriculum_step", self.curriculum_step)
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ConfigError(f"reset option curriculum_step must be an int >= 0, got {step!r}.")
        return self.schedule.level_at(int(step))

    def _gold_calls(self, entry: dict[str, Any], gold: str) -> list[dict[str, Any]]:
        """One call that computes the answer, when a tool is on and the entry has an arithmetic expression the
        calculator reproduces exactly; else none."""
        if not self.tool_names or not gold:
            return []
        expr = (entry.get("metadata") or {}).get("expression")
        if not isinstance(expr, str) or not expr.strip() or not _ARITHMETIC.fullmatch(expr):
            return []
        from turngym.tools.calculator import CalculatorError, evaluate, format_number

        # as written first; reasoning-gym divides with floor division, so "//" when "/" does not give the
        # answer
        for candidate in (expr.strip(), re.sub(r"(?<!/)/(?!/)", "//", expr.strip())):
            try:
                if format_number(evaluate(candidate)) == gold:
                    break
            except CalculatorError:
                continue
        else:
            return []
        if "calculator" in self.tool_names:
            return [{"name": "calculator", "arguments": {"expression": candidate}}]
        return [{"name": "python", "arguments": {"code": f"print({candidate})"}}]

    def _score(self, answer: str, task: Task) -> Score:
        ds, entry = task.private["dataset"], task.private["entry"]
        try:
            raw = ds.score_answer(answer.strip(), entry)
        except Exception as e:  # a scorer that raises must raise: never a silent 0.0 (the dataset's bug)
            raise EnvError(
                f"reasoning-gym dataset {self.dataset!r}: score_answer raised {type(e).__name__}: {e} on the "
                f"answer {answer[:80]!r} (task {task.meta['id']}). This is a bug of the dataset's scorer; "
                "report it upstream "
                "or train on another dataset."
            ) from e
        try:
            score = float(raw)
        except (TypeError, ValueError):
            score = math.nan
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise EnvError(
                f"reasoning-gym dataset {self.dataset!r}: score_answer returned {raw!r} for the answer "
                f"{answer[:80]!r}; "
                "expected a float in [0, 1]."
            )
        info = {"score": score, "f1": token_f1(answer, task.gold_answer) if task.gold_answer else 0.0}
        success = score >= self.success_threshold
        outcome = score if self.reward == "score" else float(success)
        return Score(outcome=outcome, success=success, info=info)

    def _progress(self, history: list[Message]) -> int:
        assert self.task is not None
        gold = self.task.gold_answer
        if not self.task.gold_calls:
            return 0
        for m in history:
            if m.get("role") == "tool" and gold in str(m.get("content", "")).strip().splitlines():
                return 1
        return 0

    def _plan_lengths(self) -> dict[int, float]:
        n = len(self.task.gold_calls) if self.task is not None else 0
        return {n + 1: 1.0}

    # ------------------------------------------------------------------ expert
    def _expert_next(self) -> ToolCall | str:
        assert self.task is not None
        if not self.task.meta["has_gold_answer"]:
            raise EnvError(
                f"reasoning-gym dataset {self.dataset!r} gives no reference answer (entry['answer'] is None; "
                "its scorer checks answers another way), so the env has no scripted expert for it. Fix: "
                "pick a dataset with reference answers, or train without the expert warm start (sft_steps=0, "
                "pretrain_steps=0)."
            )
        if self.task.gold_calls and self._progress(self._history) < 1:
            g = self.task.gold_calls[0]
            return ToolCall(name=g["name"], arguments=dict(g["arguments"]))
        return self.task.gold_answer

    def _expert_wrong_call(self, rng: np.random.Generator) -> ToolCall | None:
        assert self.task is not None
        if not self.task.gold_calls:
            return None
        g = self.task.gold_calls[0]
        key = "expression" if g["name"] == "calculator" else "code"
        text = g["arguments"][key]
        m = re.search(r"\d+", text)
        if m is None:
            return None
        wrong = f"{text[: m.start()]}{int(m.group(0)) + int(rng.integers(1, 10))}{text[m.end() :]}"
        return ToolCall(name=g["name"], arguments={key: wrong})

    def _expert_wrong_answer(self, rng: np.random.Generator) -> str:
        assert self.task is not None
        gold = self.task.gold_answer
        swaps = {"yes": "No", "no": "Yes", "true": "False", "false": "True"}
        if gold.strip().lower() in swaps:
            return swaps[gold.strip().lower()]
        if re.fullmatch(r"-?\d+", gold.strip()):
            delta = int(rng.integers(1, 10))
            return str(int(gold) + (delta if rng.random() < 0.5 else -delta))
        if len(gold) > 1 and gold[::-1] != gold:
            return gold[::-1]
        return gold + "x"

    # ------------------------------------------------------------------ checks
    def _config_fields(self) -> list[str]:
        from reasoning_gym.factory import DATASETS

        return [
            f.name for f in dataclasses.fields(DATASETS[self.dataset][1]) if f.name not in ("seed", "size")
        ]

    def _check_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        for own in ("seed", "size"):
            if own in cfg:
                raise ConfigError(
                    f"dataset_config sets {own!r}; it is the env's own argument. "
                    f"Fix: pass {own}= to the env instead."
                )
        fields = self._config_fields()
        for k in cfg:
            if k not in fields:
                raise ConfigError(
                    unknown_name_message(f"field of {self.dataset!r}'s config", str(k), fields)
                    + " Fix: remove it from dataset_config."
                )
        return cfg

    def _top_level(self) -> int:
        from reasoning_gym.factory import create_curriculum

        cur = create_curriculum(self.dataset)
        return max((len(a.levels) for a in cur.attributes.values()), default=1) - 1

    def _check_curriculum(self, curriculum: dict[str, Any] | None) -> CurriculumSchedule | None:
        if curriculum is None:
            return None
        if not isinstance(curriculum, dict):
            raise ConfigError(
                f"curriculum must be None or a dict with keys {list(CURRICULUM_KEYS)}, got {curriculum!r}."
            )
        for k in curriculum:
            if k not in CURRICULUM_KEYS:
                raise ConfigError(unknown_name_message("curriculum key", str(k), CURRICULUM_KEYS))
        from reasoning_gym.factory import CURRICULA, create_curriculum

        if self.dataset not in CURRICULA:
            raise ConfigError(
                f"reasoning-gym has no curriculum for dataset {self.dataset!r}. Fix: curriculum=None, "
                "or one of "
                f"the {len(CURRICULA)} datasets with one (e.g. {', '.join(sorted(CURRICULA)[:6])}, ...)."
            )
        from reasoning_gym.coaching.attributes import RangeAttributeDefinition

        cur = create_curriculum(self.dataset)
        controlled = set()
        for a in cur.attributes.values():
            if isinstance(a, RangeAttributeDefinition):
                controlled |= {a.lower_field_name, a.upper_field_name}
            else:
                controlled.add(a.field_name)
        clash = sorted(controlled & set(self.dataset_config))
        if clash:
            raise ConfigError(
                f"dataset_config sets {clash}, which the {self.dataset!r} curriculum sets by level. "
                "Fix: remove them from dataset_config, or drop the curriculum."
            )
        top = self._top_level()

        def level(name: str, default: int) -> int:
            v = curriculum.get(name, default)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= top:
                raise ConfigError(
                    f"curriculum {name} must be an int in 0..{top} for {self.dataset!r}, got {v!r}."
                )
            return int(v)

        start = level("start", 0)
        max_level = level("max_level", top)
        if max_level < start:
            raise ConfigError(f"curriculum max_level={max_level} is below start={start}.")
        every = curriculum.get("every")
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1
        ):
            raise ConfigError(
                f"curriculum every must be None or an int >= 1 (steps per level), got {every!r}."
            )
        mode = curriculum.get("mode", "inclusive")
        if mode not in ("inclusive", "upper_bound", "last_k"):
            raise ConfigError(
                f"curriculum mode must be 'inclusive', 'upper_bound' or 'last_k', got {mode!r}."
            )
        k = curriculum.get("k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise ConfigError(f"curriculum k must be None or an int >= 1, got {k!r}.")
        return CurriculumSchedule(
            start=start,
            every=None if every is None else int(every),
            max_level=max_level,
            eval_level=level("eval_level", max_level),
            mode=mode,
            k=None if k is None else int(k),
        )


def _describe(cfg: dict[str, Any], level: int | None) -> str:
    where = "" if level is None else f"at curriculum level {level} "
    return f"{where}with config {cfg}"
