"""Token-level multi-agent rollouts (`turngym.agents.multi_rollout`) on SearchTeam: per-agent trajectories,
token fidelity per policy, the scripted reference, and counterfactual replays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import turngym
from turngym.agents.multi_rollout import (
    Actor,
    attach_counterfactuals,
    collect_multi_rollouts,
    counterfactual_outcomes,
    episodes_of,
    team_metrics,
)
from turngym.agents.policy import HFPolicy, SamplingParams, ScriptedPolicy, score_sequence
from turngym.agents.render import Renderer
from turngym.envs.multi.episodes import play_aec
from turngym.envs.multi.searchteam import ANSWERER, SEARCHER

ENV_ID = "multi/SearchTeam-v0"


def test_scripted_team_through_the_engine_matches_the_text_reference(team_tiny):
    tok, _, _ = team_tiny
    r = Renderer(tok)
    expert = ScriptedPolicy(tok, noise=0.0)
    trajs = collect_multi_rollouts(ENV_ID, {SEARCHER: Actor(expert, r), ANSWERER: Actor(expert, r)}, [3, 4, 5], 2,
                                   params=SamplingParams(max_new_tokens=256))
    assert len(trajs) == 3 * 2 * 2
    assert [t.agent_id for t in trajs[:4]] == [SEARCHER, ANSWERER, SEARCHER, ANSWERER]
    assert {t.group_id for t in trajs} == {f"{ENV_ID}:{s}:{a}" for s in (3, 4, 5) for a in (SEARCHER, ANSWERER)}
    assert team_metrics(trajs)["team/success"] == 1.0  # the noise-free scripted pair solves every task
    env = turngym.make(ENV_ID)
    rng = np.random.default_rng(0)
    ref = play_aec(env, lambda a, _o: env.expert_action(a, rng, 0.0), seed=4, env_id=ENV_ID)
    env.close()
    ep = episodes_of(trajs)[2]  # seed 4, episode 0
    for a in (SEARCHER, ANSWERER):
        assert [u.action_text for u in ep[a].turns] == [u.action_text for u in ref[a].turns]
        assert ep[a].prompt_messages == ref[a].prompt_messages
        assert [u.obs_messages for u in ep[a].turns] == [u.obs_messages for u in ref[a].turns]
        assert [u.reward for u in ep[a].turns] == [u.reward for u in ref[a].turns]
        assert ep[a].outcome == ref[a].outcome == 1.0
    # the answerer's prompt holds the searcher's notes as a message; its trajectory holds only its own action
    assert ep[ANSWERER].prompt_messages[-1]["name"] == SEARCHER
    assert len(ep[ANSWERER].turns) == 1
    assert sum(len(u.tool_calls) for u in ep[SEARCHER].turns) == len(ep[SEARCHER].turns) - 1


def test_separate_policies_token_fidelity(team_tiny):
    """Each agent's log-probs are its own policy's: re-scoring the packed sequence with that agent's model gives
    the sampler's log-probs, and the other model does not."""
    tok, m_s, m_a = team_tiny
    r = Renderer(tok)
    actors = {SEARCHER: Actor(HFPolicy(m_s, tok, seed=1), r), ANSWERER: Actor(HFPolicy(m_a, tok, seed=2), r)}
    trajs = collect_multi_rollouts(ENV_ID, actors, [0, 1], 2, params=SamplingParams(max_new_tokens=24),
                                   env_kwargs={"max_cycles": 3})
    searchers = [t for t in trajs if t.agent_id == SEARCHER]
    assert all(len(t.turns) >= 1 for t in searchers)
    for t in searchers[:2]:
        ids, mask = t.token_ids(), t.action_mask()
        pos = [i for i, m in enumerate(mask) if m]
        sampled = [lp for u in t.turns for lp in u.logprobs]
        own = score_sequence(m_s, ids)  # own[i] = log p(ids[i] | ids[:i])
        got = [own[i] for i in pos]
        assert np.allclose(got, sampled, atol=1e-4)
        theirs = score_sequence(m_a, ids)
        other = [theirs[i] for i in pos]
        assert not np.allclose(other, sampled, atol=1e-2)
        # the mask covers exactly the sampled ids, turn by turn; tool outputs are observation tokens
        assert [ids[i] for i in pos] == [x for u in t.turns for x in u.action_ids]
        assert sum(mask) == sum(len(u.action_ids) for u in t.turns)
    for t in searchers:
        assert t.stop_reason in ("terminated", "truncated", "max_tokens")


def test_answerer_context_holds_the_notes_only_as_observation(team_tiny):
    tok, m_s, _ = team_tiny
    r = Renderer(tok)
    notes = "The maker of Echo Cam is Novly."
    expert = ScriptedPolicy(tok, noise=0.0)

    class NotesThenAnswer:  # a scripted policy writing fixed notes, for a deterministic answerer context
        needs_envs = True

        def generate(self, contexts, params, *, envs=None):
            return expert.generate(contexts, params, envs=envs) if envs[0].agent == ANSWERER else [
                type(s)(ids=tok.encode(f"<answer>{notes}</answer>", add_special_tokens=False) + [s.ids[-1]],
                        logprobs=None, text=f"<answer>{notes}</answer>", finish_reason="stop")
                for s in expert.generate(contexts, params, envs=envs)]

    p = NotesThenAnswer()
    trajs = collect_multi_rollouts(ENV_ID, {SEARCHER: Actor(p, r), ANSWERER: Actor(HFPolicy(m_s, tok), r)}, [7], 1,
                                   params=SamplingParams(max_new_tokens=16), env_kwargs={"max_cycles": 2})
    ans = next(t for t in trajs if t.agent_id == ANSWERER)
    assert ans.turns, "the answerer acts after the notes"
    ids, mask = ans.token_ids(), ans.action_mask()
    note_ids = tok.encode(notes, add_special_tokens=False)
    text = tok.decode(ans.prompt_ids)
    assert notes in text  # the notes are in the answerer's prompt (mask 0 by construction: prompt tokens)
    assert len(mask) == len(ids) and not any(mask[: len(ans.prompt_ids)])  # the notes carry no loss
    assert sum(mask) == sum(len(u.action_ids) for u in ans.turns)
    # no sampled span of the answerer equals the searcher's notes
    sampled = [x for u in ans.turns for x in u.action_ids]
    assert note_ids != sampled[: len(note_ids)]


def _recorded(policies, seed):
    env = turngym.make(ENV_ID)
    try:
        return play_aec(env, lambda a, o: policies[a](env, a, o), seed=seed, env_id=ENV_ID)
    finally:
        env.close()


def test_counterfactual_difference_rewards_blame_the_right_role():
    rng = np.random.default_rng(0)
    expert = lambda env, a, _o: env.expert_action(a, rng, 0.0)
    wrong = lambda env, a, _o: "<answer>Nobody</answer>"
    good = _recorded({SEARCHER: expert, ANSWERER: expert}, 11)
    bad_answer = _recorded({SEARCHER: expert, ANSWERER: wrong}, 11)
    bad_notes = _recorded({SEARCHER: lambda env, a, o: "<answer>no idea</answer>", ANSWERER: expert}, 11)
    assert good[ANSWERER].outcome == 1.0 and bad_answer[ANSWERER].outcome == 0.0 == bad_notes[ANSWERER].outcome
    eps = [good, bad_answer, bad_notes]
    cf_ans = counterfactual_outcomes(ENV_ID, eps, ANSWERER)
    cf_srch = counterfactual_outcomes(ENV_ID, eps, SEARCHER)
    # answerer scripted, searcher replayed: good notes -> 1, bad notes -> 0
    assert cf_ans == [1.0, 1.0, 0.0]
    # searcher scripted: same notes as recorded in the first two -> the answerer replays its recorded answer;
    # in the third the notes differ -> the answerer follows its scripted policy
    assert cf_srch == [1.0, 0.0, 1.0]
    d_ans = [e[ANSWERER].outcome - c for e, c in zip(eps, cf_ans)]
    d_srch = [e[SEARCHER].outcome - c for e, c in zip(eps, cf_srch)]
    assert d_ans == [0.0, -1.0, 0.0]  # the answerer is blamed only for its own wrong answer
    assert d_srch == [0.0, 0.0, -1.0]  # the searcher only for its bad notes
    trajs = [t for e in eps for t in e.values()]
    for i, t in enumerate(trajs):
        t.meta["episode"] = str(i // 2)
    attach_counterfactuals(ENV_ID, trajs)
    assert [t.meta["prompt_signals"]["cf_outcome"] for t in trajs] == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_missing_actor_is_a_config_error(team_tiny):
    from turngym.errors import ConfigError

    tok, m_s, _ = team_tiny
    with pytest.raises(ConfigError, match="answerer_0"):
        collect_multi_rollouts(ENV_ID, {SEARCHER: Actor(HFPolicy(m_s, tok), Renderer(tok))}, [0], 1)
    torch.set_num_threads(1)
