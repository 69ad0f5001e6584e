"""PettingZoo's own checkers over every registered multi-agent env, in both APIs, plus negative controls."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
from pettingzoo import AECEnv, ParallelEnv
from pettingzoo.test import api_test, parallel_api_test, parallel_seed_test, seed_test

import turngym
from turngym.envs.multi import MULTI_ENV_IDS, Action, ChatObs, TextAECEnv, to_api
from turngym.envs.registration import list_envs
from turngym.errors import ConfigError, EnvError


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # "Observation is not a NumPy array" etc.: text envs by design
        yield


def test_multi_ids_registered():
    assert set(MULTI_ENV_IDS) <= set(list_envs())
    assert all(i.startswith("multi/") for i in MULTI_ENV_IDS)


@pytest.mark.parametrize("env_id", MULTI_ENV_IDS)
def test_multi_api_test_aec(env_id):
    env = turngym.make(env_id, api="aec")
    assert isinstance(env, AECEnv)
    api_test(env, num_cycles=100)
    env.close()


@pytest.mark.parametrize("env_id", MULTI_ENV_IDS)
def test_multi_parallel_api_test(env_id):
    env = turngym.make(env_id, api="parallel")
    assert isinstance(env, ParallelEnv)
    parallel_api_test(env, num_cycles=100)
    env.close()


@pytest.mark.parametrize("env_id", MULTI_ENV_IDS)
def test_multi_seed_test(env_id):
    seed_test(lambda: turngym.make(env_id, api="aec"), num_cycles=30)
    parallel_seed_test(lambda: turngym.make(env_id, api="parallel"), num_cycles=30)


@pytest.mark.parametrize("env_id", ["multi/SearchTeam-v0", "multi/Negotiate-v0"])
def test_multi_api_test_hermes_parser(env_id):
    api_test(turngym.make(env_id, parser="hermes"), num_cycles=50)


@pytest.mark.parametrize("env_id", MULTI_ENV_IDS)
def test_multi_observations_are_message_lists_in_space(env_id):
    env = turngym.make(env_id, api="aec")
    env.reset(seed=1)
    for agent in env.possible_agents:
        obs = env.observe(agent)
        assert isinstance(obs, list) and isinstance(obs, ChatObs)
        assert obs and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in obs)
        assert env.observation_space(agent).contains(obs)
        json.dumps(obs)
        # spaces sample members of themselves (api_test may sample them)
        assert env.observation_space(agent).contains(env.observation_space(agent).sample())
        assert env.action_space(agent).contains(env.action_space(agent).sample())


@pytest.mark.parametrize("env_id", MULTI_ENV_IDS)
def test_multi_same_seed_same_first_observation_different_seeds_differ(env_id):
    env = turngym.make(env_id, api="aec")
    firsts = []
    for seed in (0, 0, 1, 2, 3):
        env.reset(seed=seed)
        firsts.append({a: env.observe(a) for a in env.possible_agents})
    assert firsts[0] == firsts[1]
    assert any(f != firsts[0] for f in firsts[2:])


def test_multi_unknown_api_is_a_config_error():
    with pytest.raises(ConfigError, match="aec"):
        turngym.make("multi/Negotiate-v0", api="paralel")
    with pytest.raises(ConfigError):
        to_api(object(), "graph")


class _GlobalRandomEnv(TextAECEnv):
    """Negative control: draws from the global `random` module instead of the env's RNG."""

    possible_agents = ["player_0", "player_1"]
    metadata = {"name": "global_random_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def _start(self, rng, options):
        for a in self.possible_agents:
            self.send(a, f"number {random.random()}")
        return {}

    def _turn(self, agent: str, action: Action) -> None:
        self.reject(agent, "no moves in this game")


def test_multi_seed_test_catches_a_global_rng_env():
    with pytest.raises(AssertionError):
        seed_test(_GlobalRandomEnv, num_cycles=5)


class _ListObsEnv(_GlobalRandomEnv):
    """Negative control: returns plain lists, which PettingZoo's api_test cannot compare with the space dtype."""

    def _start(self, rng, options):
        for a in self.possible_agents:
            self.send(a, "hello")
        return {}

    def observe(self, agent):
        return list(super().observe(agent))


def test_multi_api_test_needs_chatobs():
    with pytest.raises(AttributeError, match="dtype"):
        api_test(_ListObsEnv(), num_cycles=5)


def test_multi_step_misuse_raises():
    env = turngym.make("multi/Negotiate-v0")
    with pytest.raises(EnvError, match="before reset"):
        env.step("<answer>accept</answer>")
    env.reset(seed=0)
    with pytest.raises(EnvError, match="str"):
        env.step(123)
    par = turngym.make("multi/SealedBid-v0")
    par.reset(seed=0)
    with pytest.raises(EnvError, match="not live"):
        par.step({"bidder_7": "<answer>1</answer>"})


def test_multi_render_and_close_are_idempotent():
    env = turngym.make("multi/SearchTeam-v0", render_mode="ansi")
    env.reset(seed=0)
    assert "searcher_0" in env.render()
    env.close()
    env.close()
    with pytest.raises(EnvError, match="close"):
        env.reset(seed=0)


def test_multi_reset_without_seed_continues_the_rng():
    env = turngym.make("multi/SealedBid-v0")
    env.reset(seed=5)
    a = env.values
    env.reset()
    b = env.values
    env.reset(seed=5)
    assert env.values == a and b != a
    assert isinstance(env.np_random, np.random.Generator)


@pytest.mark.parametrize("env_id", MULTI_ENV_IDS)
def test_multi_info_keys_every_step_and_at_the_end(env_id):
    from turngym.envs.multi import END_INFO_KEYS, STEP_INFO_KEYS
    from turngym.envs.multi.episodes import play_aec

    env = turngym.make(env_id, api="aec")
    rng = np.random.default_rng(0)
    trajs = play_aec(env, lambda a, o: env.unwrapped.expert_action(a, rng, 0.3), seed=0, env_id=env_id)
    for a, t in trajs.items():
        assert t.turns, a
        for turn in t.turns:
            assert set(STEP_INFO_KEYS) - {"tool_calls", "tool_results"} <= set(turn.info)
        assert set(END_INFO_KEYS) - {"task"} <= set(t.turns[-1].info) | set(env.unwrapped.last_infos[a])
        assert set(END_INFO_KEYS) <= set(env.unwrapped.last_infos[a])
        assert 0.0 <= t.outcome <= 1.0
        assert sum(turn.reward for turn in t.turns) == pytest.approx(t.outcome)


def test_multi_reset_options():
    with pytest.raises(ConfigError, match="bogus"):
        turngym.make("multi/Negotiate-v0").reset(seed=0, options={"bogus": 1})
    with pytest.raises(ConfigError, match="bogus"):
        turngym.make("multi/SealedBid-v0").reset(seed=0, options={"bogus": 1})
    env = turngym.make("multi/SearchTeam-v0")
    env.reset(seed=0, options={"hops": 3})
    assert env.task["hops"] == 3
