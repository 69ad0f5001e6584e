"""CALM's `SubgoalJudgeProvider` against a real judge: the project's OpenAI-compatible completions server on
loopback (`judge_server` fixture) through `turngym.agents.judge.OpenAIJudge`, with canned replies."""

from __future__ import annotations

import json

import pytest

from turngym.agents.judge import OpenAIJudge
from turngym.credit.calm_signals import CACHE_FILE, SubgoalJudgeProvider
from turngym.credit.signals import SignalContext, build_providers
from turngym.errors import SignalError
from turngym.types import ToolCall, Trajectory, Turn

TASK = "What is the founder of the employer of Oskar Orlo?"
SUBGOALS = ["find the employer of Oskar Orlo", "find the founder of Novex"]


def episode(gid: str, queries: list[str], seed: int = 0) -> Trajectory:
    """A HopQA-like episode: one search per query, then an answer turn."""
    turns = [Turn(action_ids=[1], action_text=f"<search> {q} </search>",
                  tool_calls=[ToolCall(name="search", arguments={"query": q})],
                  obs_messages=[{"role": "tool", "content": f"results for {q}"}]) for q in queries]
    turns.append(Turn(action_ids=[2], action_text="<answer> Ada </answer>"))
    return Trajectory(group_id=gid, prompt_ids=[1], turns=turns, env_id="search/HopQA-v0", seed=seed,
                      final_answer="Ada", meta={"prompt": TASK})


def is_decomposition(text: str) -> bool:
    return "key subgoals" in text


def test_trajectory_mode_over_http(judge_server, tmp_path):
    def respond(text: str) -> str:
        if is_decomposition(text):
            return json.dumps(SUBGOALS)
        if "Oskar Orlo </search>" in text and "Novex </search>" in text:  # the full episode
            return '{"find the employer of Oskar Orlo": 0, "find the founder of Novex": [1, 2]}'
        return "The agent searched once; not sure."  # unparseable: zeros, counted

    url, policy = judge_server(respond)
    judge = OpenAIJudge(url, temperature=0.0, max_tokens=64)
    (p,) = build_providers("calm", SignalContext(method="calm", judge=judge, run_dir=tmp_path))
    assert isinstance(p, SubgoalJudgeProvider) and p.mode == "trajectory"
    full = episode("g", ["employer of Oskar Orlo", "founder of Novex", "founder of Novex"])
    short = episode("g", ["employer of Oskar Orlo"])
    p([full, short])

    asked = policy.prompts
    assert sum(is_decomposition(t) for t in asked) == 1 and len(asked) == 3
    decomposition = next(t for t in asked if is_decomposition(t))
    assert TASK in decomposition
    judged = [t for t in asked if not is_decomposition(t)]
    assert all("1. find the employer of Oskar Orlo\n2. find the founder of Novex" in t for t in judged)
    assert any("Turn 1:\n[action] <search> founder of Novex </search>\n[observation] results for founder of Novex"
               in t for t in judged)

    assert [u.signals["calm_hits"] for u in full.turns] == [1, 1, 1, 0]
    assert [u.signals["calm_new"] for u in full.turns] == [1, 1, 0, 0]
    assert [u.signals["calm_new"] for u in short.turns] == [0, 0] and p.unparseable == 1
    cache = json.loads((tmp_path / CACHE_FILE).read_text())
    assert cache == {"search/HopQA-v0:0": {"task": TASK, "subgoals": SUBGOALS}}

    # a resumed run: a new provider on the same run directory asks only for judgements
    (p2,) = build_providers("calm", SignalContext(method="calm", judge=judge, run_dir=tmp_path))
    p2([episode("g", ["employer of Oskar Orlo", "founder of Novex"])])
    assert sum(is_decomposition(t) for t in policy.prompts) == 1 and len(policy.prompts) == 4


def test_transition_mode_over_http(judge_server):
    def respond(text: str) -> str:
        if is_decomposition(text):
            return "Subgoals:\n1. find the employer of Oskar Orlo\n2. find the founder of Novex"
        action = text.split("Action:\n", 1)[1].split("\n", 1)[0]
        return json.dumps({SUBGOALS[0]: "employer" in action, SUBGOALS[1]: "Novex" in action})

    url, policy = judge_server(respond)
    judge = OpenAIJudge(url, temperature=0.0, max_tokens=64)
    ctx = SignalContext(method="calm", judge=judge, signal_options={"mode": "transition", "obs_chars": 40})
    (p,) = build_providers("calm", ctx)
    t = episode("g", ["employer of Oskar Orlo", "founder of Novex", "founder of Novex"])
    p([t])
    judged = [x for x in policy.prompts if not is_decomposition(x)]
    assert len(judged) == 4  # one call per turn
    assert "Observation before the step:\nresults for employer of Oskar Orlo" in judged[1]
    assert "Observation after the step:\nresults for founder of Novex" in judged[1]
    assert [u.signals["calm_hits"] for u in t.turns] == [1, 1, 1, 0]
    assert [u.signals["calm_new"] for u in t.turns] == [1, 1, 0, 0]
    assert t.meta["calm"]["achieved"] == {SUBGOALS[0]: [0], SUBGOALS[1]: [1, 2]}


def test_dead_judge_server_raises_signal_error(judge_server):
    def boom(text):
        raise ValueError("model crashed")

    url, _ = judge_server(boom)
    with pytest.raises(SignalError, match="judge failed"):
        SubgoalJudgeProvider(OpenAIJudge(url, model="m"))([episode("g", ["x"])])
