"""``tool/Calc-v0``: multi-step arithmetic word problems solved with calculator calls.

A problem is a start quantity followed by ``steps`` operations ("Lena has 14 apples. She buys 6 more.
Then she gives 5 away. ... How many apples does Lena have now?"). The gold call trace is one calculator call
per operation on the running value (``{"name": "calculator", "arguments": {"expression": "14 + 6"}}``),
with the exact arguments, which bipartite-matching credit (MatchTIR) compares calls against. Every
intermediate value is a whole number. The answer is checked by value.

Per-step info carries the ground-truth ``value`` (the fraction of gold intermediate results the agent has
seen in calculator outputs, counting the furthest one reached), ``value_delta`` and a GiGPO ``anchor``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from turngym.envs.core import Env, Score, Task, token_f1
from turngym.errors import ConfigError
from turngym.types import Message, ToolCall

NAMES = ["Mira", "Tomas", "Lena", "Oskar", "Ines", "Pavel", "Nadia", "Elio", "Vera", "Ivo", "Rosa", "Aron"]
ITEMS = ["apples", "coins", "books", "pens", "stamps", "shells", "cards", "marbles"]

INSTRUCTIONS = (
    "Solve the arithmetic word problem. Use the calculator tool for every computation, one operation per "
    "call. When you have the result, reply with <answer>number</answer>."
)


def _fmt(x: int) -> str:
    return str(int(x))


class CalcEnv(Env):
    """Arithmetic word problems with a calculator tool.

    Args:
        steps: Operations per problem: an int or a sequence drawn uniformly (1..6).
        max_operand: Largest operand of an operation (>= 3).
        parser: Tool-call format, ``"hermes"`` (default) or ``"tags"``.
        **kwargs: Passed to `Env`.
    """

    parser_name = "hermes"
    default_expert_noise = 0.3
    instructions = INSTRUCTIONS

    def __init__(
        self,
        *,
        steps: int | Sequence[int] = (2, 3),
        max_operand: int = 12,
        parser: str = "hermes",
        **kwargs: Any,
    ):
        vals = (steps,) if isinstance(steps, (int, np.integer)) else tuple(steps)
        if not vals or any(not isinstance(s, (int, np.integer)) or not 1 <= s <= 6 for s in vals):
            raise ConfigError(f"steps must be an int in 1..6 or a sequence of them, got {steps!r}.")
        if max_operand < 3:
            raise ConfigError(f"max_operand must be >= 3, got {max_operand}.")
        self.steps = tuple(int(s) for s in vals)
        self.max_operand = int(max_operand)
        from turngym.tools.calculator import calculator

        super().__init__(tools=[calculator], parser=parser, **kwargs)

    # ------------------------------------------------------------------ task
    def _sample_task(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Task:
        opts = dict(options or {})
        n_steps = (
            int(opts.pop("steps")) if "steps" in opts else self.steps[int(rng.integers(0, len(self.steps)))]
        )
        if opts:
            raise ConfigError(f"Calc reset options: unknown keys {sorted(opts)}; known: ['steps'].")
        name = NAMES[int(rng.integers(0, len(NAMES)))]
        item = ITEMS[int(rng.integers(0, len(ITEMS)))]
        cur = int(rng.integers(2, 4 * self.max_operand))
        sentences = [f"{name} has {cur} {item}."]
        calls: list[dict[str, Any]] = []
        results: list[int] = []
        for _ in range(n_steps):
            op = ("+", "-", "*", "/")[int(rng.integers(0, 4))]
            if op == "-" and cur < 3:
                op = "+"
            if op == "/":
                divisors = [d for d in range(2, self.max_operand + 1) if cur % d == 0]
                if not divisors:
                    op = "*"
            if op == "+":
                n = int(rng.integers(1, self.max_operand + 1))
                sentences.append(f"Then {name} gets {n} more.")
                new = cur + n
            elif op == "-":
                n = int(rng.integers(1, min(cur - 1, self.max_operand) + 1))
                sentences.append(f"Then {name} gives {n} away.")
                new = cur - n
            elif op == "*":
                n = int(rng.integers(2, min(5, self.max_operand) + 1))
                sentences.append(f"Then the number of {item} becomes {n} times as large.")
                new = cur * n
            else:
                n = divisors[int(rng.integers(0, len(divisors)))]
                sentences.append(f"Then {name} splits them into {n} equal groups and keeps one group.")
                new = cur // n
            calls.append({"name": "calculator", "arguments": {"expression": f"{cur} {op} {n}"}})
            results.append(new)
            cur = new
        sentences.append(f"How many {item} does {name} have now?")
        prompt = " ".join(sentences)
        meta = {
            "id": f"calc/{prompt}",
            "steps": n_steps,
            "gold_results": [_fmt(r) for r in results],
            "decisive_turns": list(range(n_steps + 1)),
            "gold_turn_values": [i / n_steps for i in range(n_steps + 1)],
        }
        return Task(
            prompt=prompt, gold_answer=_fmt(cur), gold_calls=calls, meta=meta, private={"results": results}
        )

    def _score(self, answer: str, task: Task) -> Score:
        m = re.search(r"-?\d+(?:\.\d+)?", answer.replace(",", ""))
        ok = m is not None and abs(float(m.group(0)) - float(task.gold_answer)) < 1e-6
        return Score(outcome=float(ok), success=ok, info={"f1": token_f1(answer, task.gold_answer)})

    def _progress(self, history: list[Message]) -> int:
        assert self.task is not None
        seen = {m.get("content", "").strip() for m in history if m.get("role") == "tool"}
        done = 0
        for i, r in enumerate(self.task.private["results"]):
            if _fmt(r) in seen:
                done = i + 1
        return done

    def _plan_lengths(self) -> dict[int, float]:
        return {s + 1: 1.0 / len(self.steps) for s in self.steps}

    # ------------------------------------------------------------------ expert
    def _expert_next(self) -> ToolCall | str:
        assert self.task is not None
        k = self._progress(self._history)
        if k < len(self.task.gold_calls):
            g = self.task.gold_calls[k]
            return ToolCall(name=g["name"], arguments=dict(g["arguments"]))
        return self.task.gold_answer

    def _expert_wrong_call(self, rng: np.random.Generator) -> ToolCall:
        assert self.task is not None
        k = min(self._progress(self._history), len(self.task.gold_calls) - 1)
        a, op, b = self.task.gold_calls[k]["arguments"]["expression"].split()
        results = {_fmt(r) for r in self.task.private["results"]}
        for delta in (1, 2, 3, 5, 7):
            wrong_b = int(b) + int(delta if rng.random() < 0.5 else -delta)
            if wrong_b <= 0 or (op == "/" and int(a) % wrong_b != 0):
                continue
            expr = f"{a} {op} {wrong_b}"
            from turngym.tools.calculator import evaluate

            if _fmt(evaluate(expr)) not in results:
                return ToolCall(name="calculator", arguments={"expression": expr})
        return ToolCall(name="calculator", arguments={"expression": f"{a} + {int(b) * 100 + 1}"})

    def _expert_wrong_answer(self, rng: np.random.Generator) -> str:
        assert self.task is not None
        gold = int(self.task.gold_answer)
        delta = int(rng.integers(1, 10))
        return _fmt(gold + delta if rng.random() < 0.5 else gold - delta)
