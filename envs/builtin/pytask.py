"""``code/PyTask-v0``: small programming / data tasks answered by running Python in a sandbox.

Each task asks for a value ("How many primes are below 60?", "Reverse the string 'lomira'") that is easy to
compute with a few lines of Python and checked by value. The agent runs code with the ``python`` tool
(``<python>print(...)</python>`` with the default tags parser), which executes it in a sandbox
(`turngym.tools.sandbox.make_sandbox`, ``"auto"`` picks bubblewrap / docker / subprocess), reads stdout
and answers. The gold call trace is one python call with reference code; the reference answer is computed
in-process by the env from the same parameters.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from turngym.envs.core import (
    Env,
    Score,
    Task,
    check_test_fraction,
    draw_in_split,
    normalize_answer,
    resolve_split,
    token_f1,
)
from turngym.errors import ConfigError
from turngym.types import Message, ToolCall

WORDS = [
    "lomira",
    "varton",
    "zentrix",
    "nimbus",
    "qualex",
    "orbit",
    "prism",
    "estavia",
    "kestin",
    "halden",
    "solis",
    "ferro",
]

INSTRUCTIONS_TAGS = (
    "Solve the task by running Python code. Write <python> code </python> to run code; print the value you need "
    "and its output comes back. When you have the result, reply with <answer> value </answer>."
)
INSTRUCTIONS_HERMES = (
    "Solve the task by running Python code with the python tool; print the value you need and its output "
    "comes back. When you have the result, reply with <answer>value</answer>."
)


@dataclass(frozen=True)
class _Template:
    name: str
    make: Callable[[np.random.Generator], tuple[str, str, str, str]]
    """rng -> (prompt, reference code, wrong code, answer)"""


def _primes(rng: np.random.Generator) -> tuple[str, str, str, str]:
    n = int(rng.integers(20, 120))
    code = f"print(sum(1 for k in range(2, {n}) if all(k % d for d in range(2, int(k ** 0.5) + 1))))"
    wrong = f"print(sum(1 for k in range(1, {n}) if all(k % d for d in range(2, k))))"
    ans = sum(1 for k in range(2, n) if all(k % d for d in range(2, int(k**0.5) + 1)))
    return f"How many prime numbers are smaller than {n}?", code, wrong, str(ans)


def _squares(rng: np.random.Generator) -> tuple[str, str, str, str]:
    n = int(rng.integers(5, 60))
    return (
        f"What is the sum of the squares of the integers from 1 to {n}?",
        f"print(sum(i * i for i in range({1}, {n} + 1)))",
        f"print(sum(i * i for i in range(1, {n})))",
        str(sum(i * i for i in range(1, n + 1))),
    )


def _fib(rng: np.random.Generator) -> tuple[str, str, str, str]:
    n = int(rng.integers(5, 40))
    a, b = 1, 1
    for _ in range(n - 2):
        a, b = b, a + b
    code = f"a, b = 1, 1\nfor _ in range({n} - 2):\n    a, b = b, a + b\nprint(b)"
    return (
        f"What is the {n}th Fibonacci number, with F(1) = F(2) = 1?",
        code,
        code.replace("print(b)", "print(a)"),
        str(b if n > 2 else 1),
    )


def _reverse(rng: np.random.Generator) -> tuple[str, str, str, str]:
    w = "".join(WORDS[int(i)] for i in rng.choice(len(WORDS), size=2, replace=False))
    return f"Reverse the string '{w}'.", f"print('{w}'[::-1])", f"print('{w}'[::-1][1:])", w[::-1]


def _count_letter(rng: np.random.Generator) -> tuple[str, str, str, str]:
    s = " ".join(WORDS[int(i)] for i in rng.choice(len(WORDS), size=4, replace=False))
    c = "aeiou"[int(rng.integers(0, 5))]
    return (
        f"How many times does the letter '{c}' appear in '{s}'?",
        f"print('{s}'.count('{c}'))",
        f"print('{s}'.count('{c}') + 1)",
        str(s.count(c)),
    )


def _digit_sum(rng: np.random.Generator) -> tuple[str, str, str, str]:
    a, b = int(rng.integers(2, 10)), int(rng.integers(10, 40))
    return (
        f"What is the sum of the digits of {a} to the power {b}?",
        f"print(sum(int(d) for d in str({a} ** {b})))",
        f"print(sum(int(d) for d in str({a} ** {b})) + 1)",
        str(sum(int(d) for d in str(a**b))),
    )


def _max_gap(rng: np.random.Generator) -> tuple[str, str, str, str]:
    xs = [int(x) for x in rng.integers(0, 100, size=int(rng.integers(5, 9)))]
    code = f"xs = {xs}\nprint(max(abs(a - b) for a, b in zip(xs, xs[1:])))"
    wrong = f"xs = {xs}\nprint(max(abs(a - b) for a, b in zip(xs, xs[1:])) + 1)"
    ans = max(abs(a - b) for a, b in itertools.pairwise(xs))
    return (
        f"What is the largest absolute difference between two neighbouring numbers in the list {xs}?",
        code,
        wrong,
        str(ans),
    )


def _median(rng: np.random.Generator) -> tuple[str, str, str, str]:
    xs = [int(x) for x in rng.integers(0, 100, size=2 * int(rng.integers(2, 5)) + 1)]
    code = f"xs = sorted({xs})\nprint(xs[len(xs) // 2])"
    wrong = f"xs = sorted({xs})\nprint(xs[len(xs) // 2] + 1)"
    return f"What is the median of the list {xs}?", code, wrong, str(sorted(xs)[len(xs) // 2])


TEMPLATES: dict[str, _Template] = {
    t.name: t
    for t in (
        _Template("primes", _primes),
        _Template("squares", _squares),
        _Template("fibonacci", _fib),
        _Template("reverse", _reverse),
        _Template("count_letter", _count_letter),
        _Template("digit_sum", _digit_sum),
        _Template("max_gap", _max_gap),
        _Template("median", _median),
    )
}


class PyTaskEnv(Env):
    """Small Python tasks checked by value, solved with a sandboxed python tool.

    Args:
        templates: Task families to draw from (default: all of `TEMPLATES`).
        sandbox: A `turngym.tools.sandbox.Sandbox`, or a backend name for ``make_sandbox``
            (``"auto"``, ``"subprocess"``, ``"bwrap"``, ``"docker"``).
        parser: ``"tags"`` (default) or ``"hermes"``.
        code_timeout_s: Wall-clock limit of one code run inside the sandbox.
        tool_timeout_s: Per-call timeout of the python tool (ToolSet level).
        split: Which tasks ``reset`` draws: ``"auto"`` (default: held-out ones for seeds >= 1,000,000, where
            turngym evaluates, training ones below), ``"train"``, ``"test"``, ``"all"``; a hash of the task's id
            puts ``test_fraction`` of the tasks in the held-out split (the templates' parameter ranges are small:
            without it 78 of 200 evaluation tasks were among 800 training draws).
        test_fraction: The held-out share of the tasks.
        **kwargs: Passed to `Env`.
    """

    parser_name = "tags"
    default_expert_noise = 0.3

    def __init__(
        self,
        *,
        templates: tuple[str, ...] | None = None,
        sandbox: Any = "auto",
        parser: str = "tags",
        code_timeout_s: float = 5.0,
        tool_timeout_s: float = 20.0,
        split: str = "auto",
        test_fraction: float = 0.25,
        **kwargs: Any,
    ):
        resolve_split(split, None)  # a bad name fails here, not at the first reset
        self.split, self.test_fraction = split, check_test_fraction(test_fraction)
        names = tuple(templates) if templates is not None else tuple(TEMPLATES)
        unknown = [n for n in names if n not in TEMPLATES]
        if unknown or not names:
            raise ConfigError(f"Unknown PyTask templates {unknown}; known: {sorted(TEMPLATES)}.")
        self.templates = names
        from turngym.tools.python import make_python_tool
        from turngym.tools.sandbox import make_sandbox
        from turngym.tools.toolset import ToolSet

        self.sandbox = make_sandbox(sandbox) if isinstance(sandbox, str) else sandbox
        self.instructions = INSTRUCTIONS_TAGS if parser == "tags" else INSTRUCTIONS_HERMES
        super().__init__(
            tools=ToolSet(
                [make_python_tool(self.sandbox, timeout_s=code_timeout_s)], timeout_s=tool_timeout_s
            ),
            parser=parser,
            **kwargs,
        )

    def close(self) -> None:
        """Close the tools and the sandbox (idempotent)."""
        was_closed = self._closed
        super().close()
        if not was_closed:
            self.sandbox.close()

    def _sample_task(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Task:
        opts = dict(options or {})
        split = resolve_split(opts.pop("split", self.split), self.reset_seed)
        name = opts.pop("template", None) or self.templates[int(rng.integers(0, len(self.templates)))]
        if opts or name not in TEMPLATES:
            raise ConfigError(
                f"PyTask reset options: unknown keys {sorted(opts)} or template {name!r}; "
                f"known keys: ['template', 'split'], templates: {sorted(TEMPLATES)}."
            )
        prompt, code, wrong, answer = draw_in_split(lambda: TEMPLATES[name].make(rng), lambda t: f"pytask/{name}/{t[0]}",
                                                    split, self.test_fraction)
        meta = {
            "id": f"pytask/{name}/{prompt}",
            "split": split,
            "template": name,
            "decisive_turns": [0, 1],
            "gold_turn_values": [0.0, 1.0],
        }
        return Task(
            prompt=prompt,
            gold_answer=answer,
            gold_calls=[{"name": "python", "arguments": {"code": code}}],
            meta=meta,
            private={"wrong_code": wrong},
        )

    def _score(self, answer: str, task: Task) -> Score:
        gold = task.gold_answer
        if re.fullmatch(r"-?\d+", gold):
            m = re.search(r"-?\d+(?:\.\d+)?", answer.replace(",", ""))
            ok = m is not None and float(m.group(0)) == float(gold)
        else:
            ok = answer.strip().strip("'\"") == gold or normalize_answer(answer) == normalize_answer(gold)
        return Score(outcome=float(ok), success=ok, info={"f1": token_f1(answer, gold)})

    def _progress(self, history: list[Message]) -> int:
        assert self.task is not None
        for m in history:
            if m.get("role") == "tool" and self.task.gold_answer in m.get("content", "").splitlines():
                return 1
        return 0

    def _plan_lengths(self) -> dict[int, float]:
        return {2: 1.0}

    def _expert_next(self) -> ToolCall | str:
        assert self.task is not None
        if self._progress(self._history) < 1:
            return ToolCall(name="python", arguments=dict(self.task.gold_calls[0]["arguments"]))
        return self.task.gold_answer

    def _expert_wrong_call(self, rng: np.random.Generator) -> ToolCall:
        assert self.task is not None
        return ToolCall(name="python", arguments={"code": self.task.private["wrong_code"]})

    def _expert_wrong_answer(self, rng: np.random.Generator) -> str:
        assert self.task is not None
        gold = self.task.gold_answer
        if re.fullmatch(r"-?\d+", gold):
            return str(int(gold) + int(rng.integers(1, 5)))
        return gold[1:] + gold[0] if len(gold) > 1 else gold + "x"
