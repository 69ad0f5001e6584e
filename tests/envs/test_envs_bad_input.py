"""Bad input is data: every junk action gets an error observation, the episode goes on, and info counts it."""

from __future__ import annotations

import pytest

import turngym.envs as E

BUILTINS = ["search/HopQA-v0", "tool/Calc-v0", "code/PyTask-v0"]


@pytest.fixture(scope="module", params=BUILTINS)
def env(request):
    e = E.make(request.param, max_turns=None)
    yield e
    e.close()


def _step(env, action):
    obs, r, term, trunc, info = env.step(action)
    assert not term and not trunc and r == 0.0
    assert obs and all(isinstance(m["content"], str) for m in obs)
    for m in obs:
        m["content"].encode("utf-8")  # always valid UTF-8
    return obs, info


def test_malformed_call(env):
    env.reset(seed=0)
    name = env.toolset.names[0]
    action = (
        f"<{name}>unclosed"
        if env.parser.name == "tags"
        else '<tool_call>{"name": "calculator", "arguments": {"expression": }}</tool_call>'
    )
    obs, info = _step(env, action)
    assert info["parse_errors"] and obs[-1]["content"].startswith("Error:")
    assert info["episode_counts"]["parse_errors"] >= 1


def test_unknown_tool(env):
    env.reset(seed=0)
    if env.parser.name == "tags":
        obs, info = _step(env, "<weather>paris</weather>")
        assert any("<weather>" in e for e in info["parse_errors"])
    else:
        obs, info = _step(env, '<tool_call>{"name": "weather", "arguments": {"city": "paris"}}</tool_call>')
        assert info["tool_errors"] == 1 and "weather" in obs[0]["content"]


def test_empty_argument(env):
    env.reset(seed=0)
    name = env.toolset.names[0]
    arg = {"search": "query", "calculator": "expression", "python": "code"}[name]
    action = (
        f"<{name}>  </{name}>"
        if env.parser.name == "tags"
        else f'<tool_call>{{"name": "{name}", "arguments": {{"{arg}": ""}}}}</tool_call>'
    )
    _, info = _step(env, action)
    assert info["parse_errors"] or info["tool_errors"] == 1


def test_huge_answer(env):
    env.reset(seed=0)
    obs, info = _step(env, "<answer>" + "9" * 100_000 + "</answer>")
    # cut to max_action_chars before parsing: what is left of the (now unclosed) answer is still too long
    assert info["parse_errors"][0].startswith("action too long: 100017 characters")
    assert "answer has" in obs[0]["content"] and "the limit is" in obs[0]["content"]
    assert len(info["parse_errors"]) == 2


def test_non_utf8_and_surrogates(env):
    env.reset(seed=0)
    _, info = _step(env, b"\xc3\x28 \xff junk")
    assert any("bytes" in e for e in info["parse_errors"])
    _, info = _step(env, "\ud83d junk \udfff")
    assert any("surrogate" in e for e in info["parse_errors"])
    _, info = _step(env, "\x00\x01\x02\u202e")
    assert info["parse_errors"]
    # after all that junk the episode still works
    _, r, term, _, info = env.step(env.parser.format(answer=env.task.gold_answer))
    assert term and r == 1.0 and info["success"]
