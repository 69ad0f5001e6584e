from __future__ import annotations

import numpy as np
import pytest

import turngym.envs as E
from turngym.errors import ConfigError
from turngym.tools.calculator import evaluate


@pytest.fixture(scope="module")
def calc():
    env = E.make("tool/Calc-v0")
    yield env
    env.close()


def run_expert(env, seed, noise, rng):
    env.reset(seed=seed)
    while True:
        _, _, term, trunc, info = env.step(env.expert_action(rng, noise))
        if term or trunc:
            return info


def test_gold_trace_is_consistent(calc):
    for seed in range(50):
        _, info = calc.reset(seed=seed)
        t = info["task"]
        results = t["gold_results"]
        assert len(t["gold_calls"]) == t["steps"] == len(results)
        prev = None
        for call, res in zip(t["gold_calls"], results):
            expr = call["arguments"]["expression"]
            assert call["name"] == "calculator"
            if prev is not None:
                assert expr.split()[0] == prev  # each step works on the previous result
            assert float(evaluate(expr)) == float(res) and float(res) == int(float(res)) and int(res) >= 0
            prev = res
        assert t["gold_answer"] == results[-1]
        for n in t["gold_calls"]:
            assert n["arguments"]["expression"].split()[-1] in t["prompt"]


def test_expert_noise0_solves_200(calc):
    rng = np.random.default_rng(0)
    assert all(run_expert(calc, s, 0.0, rng)["success"] for s in range(200))


def test_expert_default_noise_near_expected(calc):
    rng = np.random.default_rng(1)
    noise = calc.default_expert_noise
    rate = np.mean([run_expert(calc, s, noise, rng)["success"] for s in range(300)])
    assert abs(rate - calc.expected_expert_success(noise)) < 0.08


def test_value_counts_furthest_result_seen(calc):
    _, info = calc.reset(seed=3, options={"steps": 3})
    calls = info["task"]["gold_calls"]
    a0 = calls[0]["arguments"]["expression"]
    _, _, _, _, step = calc.step(
        f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{a0}"}}}}</tool_call>'
    )
    assert step["value"] == pytest.approx(1 / 3) and step["tool_results"][0].ok
    _, _, _, _, step = calc.step(
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}</tool_call>'
    )
    assert step["tool_errors"] == 1 and step["value_delta"] == 0.0


def test_answer_checked_by_value(calc):
    _, info = calc.reset(seed=4)
    gold = info["task"]["gold_answer"]
    _, r, term, _, _ = calc.step(f"<answer>{gold} {info['task']['prompt'].split()[-3]}</answer>")
    assert term and r == 1.0
    calc.reset(seed=4)
    _, r, term, _, _ = calc.step(f"<answer>{int(gold) + 1}</answer>")
    assert term and r == 0.0


def test_calc_knobs():
    with pytest.raises(ConfigError, match="steps"):
        E.make("tool/Calc-v0", steps=9)
    env = E.make("tool/Calc-v0", steps=5, parser="tags")
    _, info = env.reset(seed=0)
    assert info["task"]["steps"] == 5
    a = env.expert_action(np.random.default_rng(0))
    assert a.startswith("<calculator>")
    assert env.step(a)[4]["value"] == pytest.approx(0.2)
