"""R³L's ``reflect_retry`` sampler (wave-2 spec §3.1, §3.5, §3.8) on the real HopQA env.

Show item: a failed HopQA episode is retried from the diagnosed turn, the shared prefix gets zero loss weight, and the
suffix carries the advantage. The policies are scripted: the env's expert, made to answer wrongly at turn 1 unless the
R³L guidance is in its token context, so every base fails at turn 1 and every retry succeeds.
"""

from __future__ import annotations

import json

import gymnasium
import pytest

from turngym.agents.policy import Sample, ScriptedPolicy
from turngym.agents.reflect_retry import (
    REFLECTION_INSTRUCTIONS,
    parse_reflection,
    reflection_rows,
    rule_reflection,
)
from turngym.agents.render import Renderer, encode_literal
from turngym.agents.rollout import SAMPLERS, RolloutEngine, collect_rollouts
from turngym.credit import GroupBatch, assign_credit
from turngym.errors import EnvError
from turngym.types import Trajectory, Turn

ENV_ID = "search/HopQA-v0"
MARK = "Guidance from a review"
LP = -0.25  # the scripted policies' "log-prob" of every sampled token


class WrongThenGuided(ScriptedPolicy):
    """The noise-free expert, except that without R³L guidance in its context it answers "Nobody" at turn 1.
    Called without ``envs`` (a reflection), it returns ``reflection`` as the completion."""

    def __init__(self, tokenizer, reflection: str = ""):
        super().__init__(tokenizer, noise=0.0)
        self.reflection = reflection
        self.contexts: list[list[int]] = []

    def sample(self, text: str) -> Sample:
        ids = encode_literal(self.tokenizer, text) + [self.eot_id]
        return Sample(ids=ids, logprobs=[LP] * len(ids), text=text, finish_reason="stop")

    def generate(self, contexts, params, *, envs=None):
        if envs is None:
            return [self.sample(self.reflection) for _ in contexts]
        out = []
        for ctx, env in zip(contexts, envs):
            self.contexts.append(list(ctx))
            guided = MARK in self.tokenizer.decode(ctx)
            if not guided and env.unwrapped.turn == 1:
                out.append(self.sample(env.unwrapped.parser.format(answer="Nobody")))
            else:
                out.append(self.sample(env.expert_action(self.rng, noise=0.0)))
        return out


def rows_by_role(trajs):
    return {role: reflection_rows(trajs, role) for role in range(4)}


def report(step: int, outcome: str = "failure") -> str:
    return json.dumps({"trajectory_summary": "searched once, then answered", "root_cause_analysis": "it guessed",
                       "trajectory_outcome": outcome, "improvement_suggestion": "search every hop first",
                       "retry_from_step": step})


def test_sampler_is_registered_with_the_rollout_engine():
    assert "reflect_retry" in SAMPLERS


def test_failed_hopqa_episode_is_retried_from_the_diagnosed_turn(tiny):
    _, tok = tiny
    policy = WrongThenGuided(tok)
    trajs = collect_rollouts(ENV_ID, policy, Renderer(tok), seeds=[0, 1, 2], group_size=2, sampler="reflect_retry",
                             max_turns=5)
    by = rows_by_role(trajs)
    bases, distills, retries = by[0], by[1], by[3]
    assert len(bases) == len(distills) == len(retries) == 3 and not by[2]  # rule reflection: no reflect SFT row
    batch = GroupBatch.from_trajectories(trajs)
    batch.validate()
    out = assign_credit("r3l", batch)
    for b, d, r in zip(bases, distills, retries):
        k = int(b.meta["prompt_signals"]["r3l_pivot"])
        assert k == 1 and b.outcome == 0.0 and d.outcome == 1.0 and r.outcome == 1.0  # diagnosed: the answer turn
        assert b.group_id == d.group_id and r.group_id == f"{b.group_id}:r3l-retry{int(b.meta['r3l']['pair'])}"
        assert b.meta["gold_answer"] not in d.meta["r3l"]["guidance"]
        # the distill row: the base's first k turns, token for token (and their behaviour log-probs)
        assert d.prompt_ids == b.prompt_ids
        for u, v in zip(b.turns[:k], d.turns[:k]):
            assert (u.action_ids, u.obs_ids, u.logprobs) == (v.action_ids, v.obs_ids, v.logprobs)
        assert all(not u.logprobs for u in d.turns[k:])  # sampled under guidance: to be recomputed
        assert MARK not in tok.decode(d.token_ids()) and MARK in tok.decode(r.token_ids())
        # the retry row: the same tokens except the guidance message after turn k-1's observation
        assert MARK in tok.decode(r.turns[k - 1].obs_ids) and MARK not in tok.decode(d.turns[k - 1].obs_ids)
        assert [u.action_ids for u in r.turns] == [u.action_ids for u in d.turns]
        assert all(u.logprobs == [LP] * len(u.action_ids) for u in r.turns)
    # the policy really saw the guidance when it regenerated the suffix
    assert sum(MARK in tok.decode(c) for c in policy.contexts) == sum(len(d.turns) - 1 for d in distills)

    # credit: the shared prefix gets zero loss weight, the suffix carries the advantage
    assert batch.old_logprobs is None  # the distill suffixes have no behaviour log-probs: the trainer recomputes
    for i, t in enumerate(trajs):
        role = int(t.meta["prompt_signals"]["r3l_role"])
        k = int(t.meta["prompt_signals"]["r3l_pivot"])
        prefix = batch.action_mask[i] & (batch.turn_id[i] >= 0) & (batch.turn_id[i] < k)
        suffix = batch.action_mask[i] & (batch.turn_id[i] >= k)
        assert prefix.any() and suffix.any()
        assert bool((out.advantages[i][prefix] == 0).all()) and not bool(out.loss_mask[i][prefix].any())
        assert bool(out.loss_mask[i][suffix].all())
        sign = {0: -1.0, 1: 1.0, 3: 1.0}[role]
        assert bool((out.advantages[i][suffix] * sign > 0).all()), (role, out.advantages[i][suffix])
    assert out.diagnostics["r3l_replay_failures"] == 0 and out.diagnostics["r3l_signals_missing"] == 0


def test_policy_reflection_json_becomes_the_retry_and_an_sft_row(tiny):
    _, tok = tiny
    policy = WrongThenGuided(tok, reflection="Here is my review: " + report(1))
    trajs = collect_rollouts(ENV_ID, policy, Renderer(tok), seeds=[3], group_size=4, sampler="reflect_retry",
                             sampler_kwargs={"reflection": "policy"}, max_turns=5)
    by = rows_by_role(trajs)
    assert [len(by[r]) for r in range(4)] == [2, 2, 2, 2]  # both bases failed, reflected, retried, improved
    ref = by[2][0]
    sample = policy.sample(policy.reflection)
    assert len(ref.turns) == 1 and ref.turns[0].action_ids == sample.ids and ref.turns[0].logprobs == sample.logprobs
    prompt = tok.decode(ref.prompt_ids)
    assert REFLECTION_INSTRUCTIONS.split("\n")[0] in prompt and "Nobody" in prompt  # the base, with its answer
    assert ref.group_id.endswith(":r3l-reflect0") and ref.meta["prompt_signals"]["r3l_pivot"] == 0
    assert by[0][0].meta["prompt_signals"]["r3l_reflection_tokens"] == len(sample.ids)
    out = assign_credit("r3l", GroupBatch.from_trajectories(trajs))
    i = trajs.index(ref)
    assert out.turn_advantages[i, 0] == 1.0  # sft_advantage on every reflection token
    assert out.diagnostics["r3l_sft_rows"] == 4 and out.diagnostics["r3l_reflection_tokens"] == 2 * len(sample.ids)


@pytest.mark.parametrize(("text", "invalid"), [("not json at all", 1.0), (report(7), 1.0), (report(1)[:-3], 1.0),
                                             (report(1, outcome="success"), 0.0)])
def test_invalid_or_success_reflection_gives_no_retry(tiny, text, invalid):
    _, tok = tiny
    trajs = collect_rollouts(ENV_ID, WrongThenGuided(tok, reflection=text), Renderer(tok), seeds=[3], group_size=2,
                             sampler="reflect_retry", sampler_kwargs={"reflection": "policy"}, max_turns=5)
    assert len(trajs) == 1 and trajs[0].meta["prompt_signals"]["r3l_pivot"] == 0
    assert trajs[0].meta["prompt_signals"]["r3l_reflection_invalid"] == invalid
    assert assign_credit("r3l", GroupBatch.from_trajectories(trajs)).diagnostics["r3l_invalid_reflections"] == invalid


def test_pivot_zero_merges_the_guidance_into_the_system_prompt(tiny):
    _, tok = tiny
    trajs = collect_rollouts(ENV_ID, WrongThenGuided(tok, reflection=report(0)), Renderer(tok), seeds=[3],
                             group_size=2, sampler="reflect_retry", sampler_kwargs={"reflection": "policy"},
                             max_turns=5)
    by = rows_by_role(trajs)
    b, d, r = by[0][0], by[1][0], by[3][0]
    assert d.prompt_ids == b.prompt_ids and MARK not in tok.decode(d.token_ids())
    assert r.prompt_ids != b.prompt_ids and MARK in tok.decode(r.prompt_ids)
    assert r.prompt_messages[0]["role"] == "system" and MARK in r.prompt_messages[0]["content"]
    assert MARK not in str(d.prompt_messages) and d.outcome == 1.0
    out = assign_credit("r3l", GroupBatch.from_trajectories(trajs))
    assert out.diagnostics["r3l_masked_tokens"] == 0  # k = 0: nothing masked, a full regeneration


class _ResetStamp(gymnasium.Wrapper):
    """HopQA whose observations carry how many times this env instance was reset: not a function of (seed,
    actions), so a replay never reproduces them."""

    def __init__(self, env):
        super().__init__(env)
        self.resets = 0

    def reset(self, **kw):
        self.resets += 1
        return self.env.reset(**kw)

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        obs = [dict(m) for m in obs]
        obs[-1]["content"] = f"{obs[-1].get('content') or ''} [reset {self.resets}]"
        return obs, r, term, trunc, info

    def __getattr__(self, name):
        return getattr(self.env, name)


def stamped_env():
    from turngym.envs import make

    return _ResetStamp(make(ENV_ID))


def test_replay_mismatch_raises_and_is_counted(tiny):
    _, tok = tiny
    engine = RolloutEngine(ENV_ID, WrongThenGuided(tok), Renderer(tok), env_fn=stamped_env, max_turns=5)
    (ep,) = engine.run([engine.new_episode(3)])
    assert len(ep.traj.turns) == 2 and ep.traj.outcome == 0.0
    with pytest.raises(EnvError, match="not deterministic under replay"):
        engine.clone_prefix(ep, 1)
    ok = engine.clone_prefix(ep, 0)  # nothing to replay: fine
    assert ok.context == ep.traj.prompt_ids and ok.traj.turns == []
    with pytest.raises(ValueError, match="clone_prefix"):
        engine.clone_prefix(ep, 3)
    engine.release(ok)
    engine.close()

    trajs = collect_rollouts(ENV_ID, WrongThenGuided(tok), Renderer(tok), seeds=[3, 4], group_size=2,
                             sampler="reflect_retry", env_fn=stamped_env, max_turns=5)
    assert len(trajs) == 2 and all(t.meta["prompt_signals"]["r3l_role"] == 0 for t in trajs)
    assert all(t.meta["prompt_signals"]["r3l_replay_failed"] == 1.0 and "replay_error" in t.meta["r3l"]
               for t in trajs)
    out = assign_credit("r3l", GroupBatch.from_trajectories(trajs))
    assert out.diagnostics["r3l_replay_failures"] == 2.0


def test_clone_prefix_copies_the_first_k_turns(tiny):
    _, tok = tiny
    engine = RolloutEngine(ENV_ID, ScriptedPolicy(tok, noise=0.0), Renderer(tok), max_turns=5)
    (ep,) = engine.run([engine.new_episode(0)])
    assert len(ep.traj.turns) == 3  # a 2-hop question: two searches and the answer
    c = engine.clone_prefix(ep, 2)
    assert not c.done and c.actions == ep.actions[:2] and len(c.traj.turns) == 2
    n = len(ep.traj.prompt_ids) + sum(len(u.action_ids) + len(u.obs_ids) for u in ep.traj.turns[:2])
    assert c.context == ep.traj.token_ids()[:n] and "rollout" not in c.traj.meta
    assert c.counts["tool_calls"] == 2 and c.action_tokens == sum(len(u.action_ids) for u in ep.traj.turns[:2])
    engine.run([c])  # the expert finishes it exactly as before
    assert c.traj.token_ids() == ep.traj.token_ids() and c.traj.outcome == 1.0
    engine.close()


def test_parse_reflection():
    assert parse_reflection("x " + report(2) + " y", 3)["retry_from_step"] == 2
    assert parse_reflection(report(3), 3) is None  # out of range
    bad = json.loads(report(1))
    bad["retry_from_step"] = True
    assert parse_reflection(json.dumps(bad), 3) is None
    bad = json.loads(report(1))
    bad["trajectory_outcome"] = "meh"
    assert parse_reflection(json.dumps(bad), 3) is None
    del bad["trajectory_outcome"]
    assert parse_reflection(json.dumps(bad), 3) is None
    assert parse_reflection("{not json}", 3) is None
    assert parse_reflection(report(1).replace('"retry_from_step": 1', '"retry_from_step": 1.0'), 3) is not None


def test_rule_reflection_pivots_and_never_leaks_the_gold_answer():
    from turngym.types import ToolCall, ToolResult

    gold = [{"name": "search", "arguments": {"query": "founder of Zentrix"}},
            {"name": "search", "arguments": {"query": "birthplace of Mira Tal"}}]
    ok = Turn(action_ids=[1], tool_calls=[ToolCall("search", {"query": "Founder of  Zentrix"})],
              tool_results=[ToolResult("search", True, "...")], obs_ids=[2])
    wrong = Turn(action_ids=[1], tool_calls=[ToolCall("search", {"query": "weather"})],
                 tool_results=[ToolResult("search", True, "...")], obs_ids=[2])
    answer = Turn(action_ids=[3])

    def traj(turns, gold_answer="Varton", answered=True):
        return Trajectory(turns=turns, outcome=0.0, final_answer="Nobody" if answered else None,
                          meta={"gold_calls": gold, "gold_answer": gold_answer})

    rep = rule_reflection(traj([ok, answer]))
    assert rep["retry_from_step"] == 1 and "birthplace of Mira Tal" in rep["improvement_suggestion"]
    rep = rule_reflection(traj([ok, wrong, answer]))
    assert rep["retry_from_step"] == 1 and "does not help" in rep["root_cause_analysis"]
    assert rule_reflection(traj([Turn(action_ids=[1], obs_ids=[2]), answer]))["retry_from_step"] == 0
    assert rule_reflection(traj([ok, ok], answered=False))["retry_from_step"] == 1  # ran out of turns
    leaky = rule_reflection(traj([ok, answer], gold_answer="Mira Tal"))  # the next gold call names the answer
    assert "Mira Tal" not in json.dumps(leaky) and "search" in leaky["improvement_suggestion"].lower()
    won = Trajectory(turns=[ok, answer], outcome=1.0, final_answer="Varton", meta={"gold_calls": gold})
    assert rule_reflection(won)["trajectory_outcome"] == "success"
