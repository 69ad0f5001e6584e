"""multi/SealedBid-v0: simultaneous bids through the Parallel API, hand-checked auctions, AEC view."""

from __future__ import annotations

import numpy as np
import pytest

import turngym
from turngym.envs.multi.episodes import play_aec, play_parallel
from turngym.envs.multi.sealedbid import parse_bid

ENV_ID = "multi/SealedBid-v0"
B0, B1 = "bidder_0", "bidder_1"


def test_sealedbid_parse_bid():
    assert parse_bid("37", 50) == (37, None)
    assert parse_bid(" 0 ", 50) == (0, None)
    assert parse_bid("51", 50)[0] is None
    assert parse_bid("-1", 50)[0] is None
    assert parse_bid("twelve", 50)[0] is None
    assert parse_bid(None, 50)[0] is None


def test_sealedbid_hand_checked_rounds():
    env = turngym.make(ENV_ID, rounds=2)
    obs, _infos = env.reset(seed=11)
    v = env.values
    assert f"your value for the item is {v[B0][0]}" in obs[B0][-1]["content"]
    b0, b1 = v[B0][0] // 2, min(v[B1][0], v[B0][0] // 2 + 1)
    assert b0 != b1, "pick a seed without a tie in round 1"
    obs, rew, term, trunc, info = env.step({B0: f"<answer>{b0}</answer>", B1: f"<answer>{b1}</answer>"})
    winner = B0 if b0 > b1 else B1
    assert rew[winner] == pytest.approx((v[winner][0] - max(b0, b1)) / sum(v[winner]))
    assert rew[B1 if winner == B0 else B0] == 0.0
    assert not any(term.values()) and env.agents == [B0, B1]
    assert f"Round 1 bids: bidder_0 {b0}, bidder_1 {b1}" in obs[B1][0]["content"]
    # round 2: bidder_1 sends junk (no bid), bidder_0 bids 0 and wins for free
    obs, rew2, term, trunc, info = env.step({B0: "<answer>0</answer>", B1: "I bid a lot"})
    assert all(term.values()) and not any(trunc.values()) and env.agents == []
    assert rew2[B0] == pytest.approx(v[B0][1] / sum(v[B0]))
    assert info[B1]["invalid"] and "no bid found" in obs[B1][0]["content"]
    for a in (B0, B1):
        assert info[a]["outcome"] == pytest.approx(rew[a] + rew2[a])
        assert 0.0 <= info[a]["outcome"] <= 1.0
    e = info[B0]["earnings"]
    assert info[B0]["success"] == (e[B0] > e[B1]) and info[B1]["success"] == (e[B1] > e[B0])


def test_sealedbid_ties_broken_by_the_env_rng():
    winners = []
    for seed in range(12):
        env = turngym.make(ENV_ID, rounds=1)
        env.reset(seed=seed)
        env.step({B0: "<answer>0</answer>", B1: "<answer>0</answer>"})
        winners.append(env.winners[0])
        env2 = turngym.make(ENV_ID, rounds=1)
        env2.reset(seed=seed)
        env2.step({B0: "<answer>0</answer>", B1: "<answer>0</answer>"})
        assert env2.winners[0] == winners[-1]
    assert set(winners) == {B0, B1}


def test_sealedbid_overbid_is_no_bid():
    env = turngym.make(ENV_ID, rounds=1)
    env.reset(seed=0)
    over = env.values[B0][0] + 1
    obs, _rew, *_, _info = env.step({B0: f"<answer>{over}</answer>", B1: "<answer>0</answer>"})
    assert env.winners[0] == B1 and env.bids[0][B0] is None
    assert "outside 0.." in obs[B0][0]["content"]


def test_sealedbid_missing_action_is_no_bid():
    env = turngym.make(ENV_ID, rounds=1)
    env.reset(seed=0)
    _obs, _rew, _term, _trunc, info = env.step({B1: "<answer>1</answer>"})
    assert env.bids[0][B0] is None and "no action was given this round" in info[B0]["parse_errors"]


def test_sealedbid_scripted_bidders_and_trajectories():
    env = turngym.make(ENV_ID, rounds=3)
    rng = np.random.default_rng(0)
    for seed in range(5):
        trajs = play_parallel(env, lambda a, o: env.expert_action(a, rng), seed=seed, env_id=ENV_ID)
        for a, t in trajs.items():
            assert len(t.turns) == 3 and t.stop_reason == "terminated"
            assert sum(x.reward for x in t.turns) == pytest.approx(t.outcome)
            bids = [int(x.action_text.removeprefix("<answer>").removesuffix("</answer>")) for x in t.turns]
            assert bids == [v // 2 for v in env.values[a]]


def test_sealedbid_aec_view_matches_parallel():
    par = turngym.make(ENV_ID, rounds=3)
    aec = turngym.make(ENV_ID, api="aec", rounds=3)
    pol = lambda a, o: "<answer>10</answer>"
    tp = play_parallel(par, pol, seed=9)
    ta = play_aec(aec, pol, seed=9)
    for a in (B0, B1):
        assert tp[a].outcome == pytest.approx(ta[a].outcome)
        assert [t.action_text for t in tp[a].turns] == [t.action_text for t in ta[a].turns]
        assert tp[a].prompt_messages == ta[a].prompt_messages


def test_sealedbid_more_bidders():
    env = turngym.make(ENV_ID, num_bidders=3, rounds=2)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"bidder_0", "bidder_1", "bidder_2"}
    from pettingzoo.test import parallel_api_test

    parallel_api_test(turngym.make(ENV_ID, num_bidders=3), num_cycles=10)
