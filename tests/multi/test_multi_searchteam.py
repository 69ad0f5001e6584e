"""multi/SearchTeam-v0: scripted roles solve it, team reward, bad actions become observations, per-agent trajectories."""

from __future__ import annotations

import json

import numpy as np
import pytest

import turngym
from turngym.envs.multi.episodes import play_aec
from turngym.envs.multi.searchteam import ANSWERER, SEARCHER, resolve_question
from turngym.types import Trajectory

ENV_ID = "multi/SearchTeam-v0"


@pytest.fixture(scope="module")
def env():
    e = turngym.make(ENV_ID, hops=(1, 2, 3))
    yield e
    e.close()


def _expert(env, noise=0.0, seed=0, overrides=None):
    rng = np.random.default_rng(seed)
    overrides = overrides or {}

    def policy(agent, obs):
        if agent in overrides:
            return overrides[agent](agent, obs)
        return env.expert_action(agent, rng, noise)

    return policy


def test_searchteam_scripted_roles_solve_it(env):
    for seed in range(12):
        trajs = play_aec(env, _expert(env), seed=seed, env_id=ENV_ID)
        s, a = trajs[SEARCHER], trajs[ANSWERER]
        hops = s.meta["hops"]
        assert s.outcome == a.outcome == 1.0, (seed, s.meta)
        assert s.meta["success"] and a.meta["success"]
        # the searcher searched each hop once, then handed notes; the answerer answered once
        assert len(s.turns) == hops + 1 and len(a.turns) == 1
        assert [c.arguments["query"] for t in s.turns for c in t.tool_calls] == [
            c["arguments"]["query"] for c in s.meta["gold_calls"]
        ]
        assert all(r.ok for t in s.turns for r in t.tool_results)
        assert a.final_answer == s.meta["gold_answer"]
        # team reward: the episode return of each role is the shared outcome, paid once
        assert sum(t.reward for t in s.turns) == 1.0 and sum(t.reward for t in a.turns) == 1.0


def test_searchteam_answerer_sees_only_question_and_notes(env):
    trajs = play_aec(env, _expert(env), seed=3, env_id=ENV_ID)
    a = trajs[ANSWERER]
    roles = [m["role"] for m in a.prompt_messages]
    assert roles == ["system", "user", "user"]
    assert (
        a.prompt_messages[-1]["name"] == SEARCHER
        and "Notes from the searcher" in a.prompt_messages[-1]["content"]
    )
    assert not any(m["role"] == "tool" for m in a.prompt_messages)
    assert env.tool_schemas(ANSWERER) == [] and [
        s["function"]["name"] for s in env.tool_schemas(SEARCHER)
    ] == ["search"]


def test_searchteam_notes_without_the_answer_fail(env):
    quiet = {SEARCHER: lambda agent, obs: "<answer>I could not find anything.</answer>"}
    for seed in range(5):
        trajs = play_aec(env, _expert(env, overrides=quiet), seed=seed, env_id=ENV_ID)
        assert trajs[SEARCHER].outcome == trajs[ANSWERER].outcome == 0.0
        assert trajs[ANSWERER].final_answer == "unknown"
        assert len(trajs[SEARCHER].turns) == 1


def test_searchteam_wrong_answer_scores_zero_for_both(env):
    wrong = {ANSWERER: lambda agent, obs: "<answer>Nowhere Land</answer>"}
    trajs = play_aec(env, _expert(env, overrides=wrong), seed=0, env_id=ENV_ID)
    assert trajs[SEARCHER].outcome == trajs[ANSWERER].outcome == 0.0
    assert trajs[ANSWERER].stop_reason == "terminated"


@pytest.mark.parametrize(
    "action,expect",
    [
        ("", "no search and no notes"),
        ("\x00\udcff junk ~~~ }{", "no search and no notes"),
        ("<search>", "not closed"),
        ("<answer>" + "x" * 500 + "</answer>", "the limit is 400"),
    ],
)
def test_searchteam_bad_searcher_actions_become_observations(env, action, expect):
    env.reset(seed=0)
    env.step(action)
    assert env.agent_selection == SEARCHER  # same agent acts again
    obs, reward, term, trunc, info = env.last()
    assert not term and not trunc and reward == 0
    assert obs[-1]["role"] == "user" and expect in obs[-1]["content"]
    assert info["invalid"] or info["parse_errors"]
    assert env.observation_space(SEARCHER).contains(obs)


def test_searchteam_answerer_tool_call_is_an_error_result(env):
    env.reset(seed=0)
    env.step("<answer>The notes.</answer>")
    assert env.agent_selection == ANSWERER
    env.step("<search>founder of Zentrix</search>")
    obs, *_, info = env.last()
    assert [m["role"] for m in obs] == ["tool", "user"]
    assert "no tools" in obs[0]["content"]
    assert info["tool_errors"] == 1 and info["tool_results"][0].ok is False


def test_searchteam_max_cycles_truncates_for_everyone():
    env = turngym.make(ENV_ID, max_cycles=3)
    trajs = play_aec(env, lambda agent, obs: "hmm", seed=0, env_id=ENV_ID)
    s, a = trajs[SEARCHER], trajs[ANSWERER]
    assert len(s.turns) == 3 and not a.turns
    assert s.stop_reason == a.stop_reason == "truncated"
    assert s.outcome == a.outcome == 0.0 and s.meta["stop_reason"] == "max_cycles"
    assert s.turns[-1].info["episode_counts"]["invalid"] == 3


def test_searchteam_noisy_experts_sometimes_fail_and_sometimes_succeed(env):
    outs = [play_aec(env, _expert(env, noise=0.5, seed=s), seed=s)[ANSWERER].outcome for s in range(30)]
    assert 0.0 < float(np.mean(outs)) < 1.0


def test_searchteam_hermes_parser_solves_it():
    env = turngym.make(ENV_ID, parser="hermes")
    trajs = play_aec(env, _expert(env), seed=4)
    assert "<tool_call>" in trajs[SEARCHER].turns[0].action_text
    assert trajs[ANSWERER].outcome == 1.0


def test_searchteam_trajectories_round_trip_json(env, tmp_path):
    trajs = play_aec(env, _expert(env), seed=7, env_id=ENV_ID)
    for t in trajs.values():
        assert t.group_id == f"{ENV_ID}:7" and t.env_id == ENV_ID
        back = Trajectory.from_json(t.to_json())
        assert back.to_dict() == json.loads(t.to_json())
    # each turn's observation is what that agent received after acting (tool results for the searcher)
    s = trajs[SEARCHER]
    assert all(t.obs_messages and t.obs_messages[0]["role"] == "tool" for t in s.turns[:-1])


def test_searchteam_parallel_view_uses_the_active_agent():
    par = turngym.make(ENV_ID, api="parallel")
    par.reset(seed=0)
    rng = np.random.default_rng(0)
    env = par.unwrapped
    steps = 0
    while par.agents:
        active = env.agent_selection
        acts = {a: (env.expert_action(a, rng) if a == active else "ignored") for a in par.agents}
        _obs, rew, _term, _trunc, info = par.step(acts)
        steps += 1
    assert steps == env.task["hops"] + 2 and rew[ANSWERER] == 1.0
    assert info[ANSWERER]["success"] and info[SEARCHER]["outcome"] == 1.0


def test_resolve_question_follows_the_chain():
    q = "What is the country of the birthplace of the founder of Zentrix?"
    notes = "The founder of Zentrix is Mira Tal. The birthplace of Mira Tal is Varton. The country of Varton is Estavia."
    assert resolve_question(q, notes) == "Estavia"
    assert resolve_question(q, notes.replace("The country of Varton is Estavia.", "")) is None
    assert (
        resolve_question("What is the maker of Nimbus Pad?", "The maker of Nimbus Pad is Zentrix.")
        == "Zentrix"
    )
