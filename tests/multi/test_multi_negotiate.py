"""multi/Negotiate-v0: move parsing, the verifiable outcome, turn rules, scripted negotiators."""

from __future__ import annotations

import numpy as np
import pytest

import turngym
from turngym.envs.multi.episodes import play_aec
from turngym.envs.multi.negotiate import ITEMS, all_splits, parse_move

ENV_ID = "multi/Negotiate-v0"
P0, P1 = "player_0", "player_1"


@pytest.fixture()
def env():
    e = turngym.make(ENV_ID)
    yield e
    e.close()


def _worth(share, values):
    return sum(share[k] * values[k] for k in ITEMS)


def test_negotiate_parse_move():
    counts = {"book": 2, "hat": 1, "ball": 3}
    assert parse_move(" Accept ", counts) == ("accept", None, None)
    assert parse_move("propose book=1 hat=0 ball=3", counts) == (
        "propose",
        {"book": 1, "hat": 0, "ball": 3},
        None,
    )
    assert parse_move("propose books: 2", counts)[1] == {"book": 2, "hat": 0, "ball": 0}
    assert parse_move("propose book=3", counts)[0] == "invalid"  # more than the pool
    assert parse_move("propose book=-1", counts)[0] == "invalid"
    assert parse_move("propose cars=1", counts)[0] == "invalid"
    assert parse_move("propose everything", counts)[0] == "invalid"
    assert parse_move("gimme", counts)[0] == "invalid"
    assert len(all_splits(counts)) == 3 * 2 * 4


def test_negotiate_pool_and_private_values(env):
    for seed in range(20):
        env.reset(seed=seed)
        u = env.unwrapped
        assert 5 <= sum(u.counts.values()) <= 7
        for a in (P0, P1):
            assert _worth(u.counts, u.values[a]) == 10
            assert str(u.values[a]) not in str(env.observe(u.possible_agents[1 - u.possible_agents.index(a)]))
        assert u.values[P0] != u.values[P1]


def test_negotiate_accept_pays_each_player_its_own_values(env):
    env.reset(seed=3)
    u = env.unwrapped
    take = {k: u.counts[k] // 2 for k in ITEMS}
    env.step("<answer>propose " + " ".join(f"{k}={take[k]}" for k in ITEMS) + "</answer>")
    assert env.agent_selection == P1
    assert "player_0 proposes" in env.observe(P1)[-1]["content"]
    env.step("<answer>accept</answer>")
    rest = {k: u.counts[k] - take[k] for k in ITEMS}
    expected = {P0: _worth(take, u.values[P0]) / 10, P1: _worth(rest, u.values[P1]) / 10}
    assert env.terminations == {P0: True, P1: True}
    for a in (P0, P1):
        assert env.rewards[a] == pytest.approx(expected[a])
        assert env.infos[a]["outcome"] == pytest.approx(expected[a]) and env.infos[a]["deal"]
        assert env.infos[a]["shares"][a] == (take if a == P0 else rest)
        assert env.infos[a]["success"] == (expected[a] >= 0.5)


def test_negotiate_accept_without_offer_is_rejected(env):
    env.reset(seed=0)
    env.step("<answer>accept</answer>")
    obs, _reward, term, _trunc, info = env.last()
    assert env.agent_selection == P0 and not term
    assert info["invalid"] and "no proposal" in obs[-1]["content"]


@pytest.mark.parametrize(
    "bad", ["propose book=1", "<answer>propose book=99</answer>", "<answer>hello</answer>", "\ud800"]
)
def test_negotiate_bad_moves_become_observations(env, bad):
    env.reset(seed=1)
    env.step(bad)
    obs, _reward, term, trunc, info = env.last()
    assert env.agent_selection == P0 and not term and not trunc
    assert obs[-1]["role"] == "user" and obs[-1]["content"].startswith("Error:")
    assert info["invalid"] and info["episode_counts"]["invalid"] == 1


def test_negotiate_last_proposal_must_be_accepted():
    env = turngym.make(ENV_ID, max_rounds=2)
    env.reset(seed=0)
    env.step("<answer>propose book=0 hat=0 ball=1</answer>")
    env.step("<answer>propose book=0 hat=0 ball=1</answer>")
    assert "last proposal" in env.observe(P0)[-1]["content"]
    env.step("<answer>propose book=0 hat=0 ball=0</answer>")
    assert all(env.terminations.values())
    assert all(env.infos[a]["outcome"] == 0.0 and not env.infos[a]["deal"] for a in (P0, P1))
    assert env.infos[P0]["stop_reason"] == "no_deal"


def test_negotiate_scripted_negotiators_reach_deals():
    env = turngym.make(ENV_ID)
    deals, pareto, totals = [], [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        trajs = play_aec(env, lambda a, o, rng=rng: env.expert_action(a, rng, 0.0), seed=seed, env_id=ENV_ID)
        info = env.last_infos
        deals.append(info[P0]["deal"])
        pareto.append(info[P0]["pareto_optimal"])
        if info[P0]["deal"]:
            shares, values = info[P0]["shares"], info[P0]["values"]
            for a in (P0, P1):  # verifiable: the outcome is recomputed from the shares and private values
                assert trajs[a].outcome == pytest.approx(_worth(shares[a], values[a]) / 10)
            totals.append(trajs[P0].outcome + trajs[P1].outcome)
    assert np.mean(deals) >= 0.9
    assert np.mean(totals) > 1.0  # both sides gain from trading items they value differently
    assert 0 < np.mean(pareto) <= 1


def test_negotiate_greedy_player_gets_no_deal_against_a_stubborn_one():
    env = turngym.make(ENV_ID)
    env.reset(seed=2)
    u = env.unwrapped
    everything = "<answer>propose " + " ".join(f"{k}={u.counts[k]}" for k in ITEMS) + "</answer>"
    trajs = play_aec(env, lambda a, o: everything, seed=2)
    assert trajs[P0].outcome == trajs[P1].outcome == 0.0
    assert trajs[P0].meta["stop_reason"] == "no_deal"
