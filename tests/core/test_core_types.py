"""Core data types: lossless JSON round trip and the packed-sequence views."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turngym.types import ToolCall, ToolResult, Trajectory, Turn, read_jsonl, write_jsonl

ids = st.lists(st.integers(min_value=0, max_value=200_000), max_size=12)
texts = st.text(max_size=40)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def turns(draw):
    action = draw(ids)
    return Turn(
        action_ids=action,
        logprobs=[draw(floats) for _ in action],
        action_text=draw(texts),
        obs_ids=draw(ids),
        obs_messages=[{"role": "tool", "name": "search", "content": draw(texts)}],
        tool_calls=[ToolCall(name=draw(texts), arguments={"q": draw(texts)}, id="c0", raw=draw(texts))],
        tool_results=[ToolResult(name="search", ok=draw(st.booleans()), output=draw(texts), error=None)],
        reward=draw(floats),
        signals={"ig": draw(floats)},
    )


@st.composite
def trajectories(draw):
    return Trajectory(
        group_id=draw(texts),
        prompt_ids=draw(ids),
        prompt_messages=[{"role": "user", "content": draw(texts)}],
        turns=draw(st.lists(turns(), max_size=4)),
        outcome=draw(floats),
        final_answer=draw(st.one_of(st.none(), texts)),
        stop_reason="terminated",
        meta={"gold_answer": draw(texts), "gold_calls": [{"name": "search", "arguments": {"query": "x"}}]},
        seed=draw(st.one_of(st.none(), st.integers(0, 2**31))),
    )


@settings(max_examples=200, deadline=None)
@given(trajectories())
def test_json_round_trip_is_lossless(traj):
    back = Trajectory.from_json(traj.to_json())
    assert back == traj
    for t_back, t in zip(back.turns, traj.turns):
        assert all(a == b and not math.isnan(a) for a, b in zip(t_back.logprobs, t.logprobs))


def test_jsonl_file_round_trip(tmp_path):
    trajs = [
        Trajectory(group_id=f"g{i}", prompt_ids=[1, 2], turns=[Turn(action_ids=[3], logprobs=[-0.1234567890123])])
        for i in range(3)
    ]
    path = tmp_path / "t.jsonl"
    assert write_jsonl(path, trajs) == 3
    assert list(read_jsonl(path)) == trajs


def test_packed_views_line_up():
    traj = Trajectory(
        prompt_ids=[1, 2, 3],
        turns=[Turn(action_ids=[4, 5], logprobs=[-1.0, -2.0], obs_ids=[6, 7, 8]), Turn(action_ids=[9])],
    )
    assert traj.token_ids() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert traj.action_mask() == [0, 0, 0, 1, 1, 0, 0, 0, 1]
    assert traj.turn_ids() == [-1, -1, -1, 0, 0, 0, 0, 0, 1]


def test_logprob_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="one behaviour log-prob per sampled token"):
        Turn(action_ids=[1, 2], logprobs=[-1.0])


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"group_id": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        list(read_jsonl(path))


def test_registry_did_you_mean():
    from turngym.errors import RegistryError
    from turngym.registry import Registry

    reg = Registry("loss aggregation")
    reg.add("token-mean", 1)
    with pytest.raises(RegistryError, match="Did you mean 'token-mean'"):
        reg["token-mea"]
