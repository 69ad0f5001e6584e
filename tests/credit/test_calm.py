"""CALM (wave-2 spec §5): worked example, reductions, contract, the subgoal providers (parsing, rule stand-in on
scripted HopQA episodes, judge failures) and the persisted subgoal cache."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch
from credit_helpers import batch_of, make_traj

from turngym.credit import assign_credit
from turngym.credit.calm import CALMConfig, calm_shaped_rewards
from turngym.credit.calm_signals import (
    CACHE_FILE,
    CALMSignalOptions,
    RuleSubgoalProvider,
    SubgoalJudgeProvider,
    parse_subgoal_list,
    parse_trajectory_answer,
    parse_transition_answer,
)
from turngym.credit.groups import process_grpo
from turngym.credit.signals import SignalContext, build_providers
from turngym.errors import ConfigError, CreditError, SignalError
from turngym.types import ToolCall, ToolResult, Trajectory, Turn

ATOL = 1e-4


def example(once: bool = True, beta: float = 0.1, **kw):
    """Spec §5.7: subgoals {key, door}; τ1 (R=1) achieves [∅, {key}, {key}, {door}], τ2 (R=0) [{key}, ∅, ∅]."""
    t1 = make_traj("g", 4, outcome=1.0, signals={"calm_new": [0, 1, 0, 1], "calm_hits": [0, 1, 1, 1]})
    t2 = make_traj("g", 3, outcome=0.0, signals={"calm_new": [1, 0, 0], "calm_hits": [1, 0, 0]})
    return assign_credit("calm", batch_of([t1, t2]), beta=beta, once_per_episode=once, **kw)


def rows(t: torch.Tensor) -> list[list[float]]:
    return [[v for v in r if not math.isnan(v)] for r in t.tolist()]


# ------------------------------------------------------------------------------------------ worked example


def test_worked_example_once_per_episode():
    out = example(once=True)
    r = rows(out.turn_rewards)
    assert r[0] == pytest.approx([0, 0.1, 0, 1.1], abs=ATOL) and r[1] == pytest.approx([0.1, 0, 0], abs=ATOL)
    pool = torch.tensor(r[0] + r[1], dtype=torch.float64)
    assert float(pool.mean()) == pytest.approx(0.185714, abs=ATOL)
    assert float(pool.std()) == pytest.approx(0.405909, abs=ATOL)
    a = rows(out.turn_advantages)
    assert a[0] == pytest.approx([1.126218, 1.583744, 1.794910, 2.252436], abs=ATOL)
    assert a[1] == pytest.approx([-1.126218, -0.915052, -0.457526], abs=ATOL)
    # every policy token of a turn carries its turn's advantage; nothing off the action mask
    b = batch_of([make_traj("g", 4), make_traj("g", 3)])
    assert torch.equal(out.advantages, b.broadcast_turns(torch.nan_to_num(out.turn_advantages)))


def test_worked_example_every_hit_repo_shaping():
    out = example(once=False)
    r = rows(out.turn_rewards)
    assert r[0] == pytest.approx([0, 0.1, 0.1, 1.1], abs=ATOL)
    pool = torch.tensor(r[0] + r[1], dtype=torch.float64)
    assert (float(pool.mean()), float(pool.std())) == pytest.approx((0.2, 0.4), abs=ATOL)
    a = rows(out.turn_advantages)
    assert a[0] == pytest.approx([1.249997, 1.749996, 1.999995, 2.249994], abs=ATOL)
    assert a[1] == pytest.approx([-1.249997, -0.999998, -0.499999], abs=ATOL)


# ------------------------------------------------------------------------------------------ reductions, edges


def _random_calm_trajs(rng: random.Random, with_signals: bool = True) -> list[Trajectory]:
    trajs = []
    for g in range(3):
        for _ in range(rng.randint(1, 4)):
            n = rng.randint(1, 4)
            sig = {"calm_new": [float(rng.randint(0, 1)) for _ in range(n)],
                   "calm_hits": [float(rng.randint(0, 2)) for _ in range(n)]} if with_signals else None
            trajs.append(make_traj(f"g{g}", n, outcome=rng.choice([0.0, 0.5, 1.0, float("nan")]),
                                   answered=rng.random() < 0.8, signals=sig,
                                   rewards=[rng.choice([0.0, 1.0]) for _ in range(n)]))
    rng.shuffle(trajs)
    return trajs


@pytest.mark.parametrize("seed", range(5))
def test_beta_zero_is_process_grpo_of_the_outcome(seed: int):
    rng = random.Random(seed)
    trajs = _random_calm_trajs(rng)
    b = batch_of(trajs)
    r = torch.zeros(b.turn_mask.shape)
    last = b.last_turn_index
    for i in range(b.batch_size):
        r[i, last[i]] = 0.0 if math.isnan(float(b.outcome[i])) else float(b.outcome[i])
    ref, _ = process_grpo(r, b.turn_mask, b.group_index)
    out = assign_credit("calm", b, beta=0.0)
    assert torch.allclose(torch.nan_to_num(out.turn_advantages).double(), ref, atol=1e-6)
    # without any CALM signal beta = 0 still works and gives the same numbers
    bare = batch_of([dataclasses.replace(t, turns=[dataclasses.replace(u, signals={}) for u in t.turns])
                     for t in trajs])
    assert "calm_new" not in bare.turn_signals
    assert torch.equal(assign_credit("calm", bare, beta=0.0).advantages, out.advantages)


def test_repeated_achievement_adds_nothing_once_per_episode():
    """Same first achievements, one row re-triggers 'key' twice more (calm_hits differ, calm_new equal)."""
    a = make_traj("g", 4, outcome=1.0, signals={"calm_new": [1, 0, 0, 1], "calm_hits": [1, 0, 0, 1]})
    b = make_traj("g", 4, outcome=1.0, signals={"calm_new": [1, 0, 0, 1], "calm_hits": [1, 1, 1, 1]})
    c = make_traj("g", 3, outcome=0.0, signals={"calm_new": [0, 1, 0], "calm_hits": [0, 1, 0]})
    once_ab = assign_credit("calm", batch_of([a, c])), assign_credit("calm", batch_of([b, c]))
    assert torch.equal(once_ab[0].advantages, once_ab[1].advantages)
    every_ab = (assign_credit("calm", batch_of([a, c]), once_per_episode=False),
                assign_credit("calm", batch_of([b, c]), once_per_episode=False))
    assert not torch.equal(every_ab[0].advantages, every_ab[1].advantages)  # the repo shaping does reward them


def test_missing_signal_names_the_provider_and_nan_counts_as_zero():
    bare = batch_of([make_traj("g", 2, outcome=1.0), make_traj("g", 2, outcome=0.0)])
    with pytest.raises(CreditError, match="calm_new.*calm_subgoals"):
        assign_credit("calm", bare)
    with pytest.raises(CreditError, match="calm_hits.*calm_subgoals"):
        assign_credit("calm", bare, once_per_episode=False)
    nan = batch_of([make_traj("g", 2, outcome=1.0, signals={"calm_new": [float("nan"), 1.0]}),
                    make_traj("g", 2, outcome=0.0, signals={"calm_new": [0.0, 0.0]})])
    zero = batch_of([make_traj("g", 2, outcome=1.0, signals={"calm_new": [0.0, 1.0]}),
                     make_traj("g", 2, outcome=0.0, signals={"calm_new": [0.0, 0.0]})])
    out = assign_credit("calm", nan)
    assert torch.isfinite(out.advantages).all()
    assert torch.equal(out.advantages, assign_credit("calm", zero).advantages)


def test_shaped_rewards_edges():
    m = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    aux = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    r = calm_shaped_rewards(aux, torch.tensor([1.0, float("nan"), 1.0]), m, beta=0.5,
                            env_rewards=torch.tensor([[0.25, 0.0, 9.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    # subgoal on the last turn: β·a and the outcome land together; no answer (NaN): R = 0; row without turns: 0
    assert r.tolist() == [[0.25, 2.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="aux"):
        calm_shaped_rewards(aux[:, :2], torch.zeros(3), m, beta=0.1)


def test_all_zero_group_and_singletons_give_exact_zeros():
    """Zero-variance pool (no success, no subgoal) and a pool of one turn (singleton="zero") give exact 0; a lone
    multi-turn trajectory is a pool of its own turns (process_grpo ranks them)."""
    zero = [make_traj("a", 3, outcome=0.0, signals={"calm_new": [0, 0, 0]}) for _ in range(2)]
    single = [make_traj("b", 1, outcome=1.0, signals={"calm_new": [1]})]
    lone = [make_traj("c", 2, outcome=1.0, signals={"calm_new": [0, 1]})]
    out = assign_credit("calm", batch_of(zero + single + lone))
    assert torch.count_nonzero(out.advantages[:3]) == 0 and torch.count_nonzero(out.advantages[3]) > 0
    raw = assign_credit("calm", batch_of(single), singleton="raw")
    assert torch.count_nonzero(raw.advantages) > 0


def test_contract_permutation_and_group_isolation():
    rng = random.Random(7)
    trajs = _random_calm_trajs(rng)
    base = assign_credit("calm", batch_of(trajs), beta=0.3)
    perm = list(range(len(trajs)))
    rng.shuffle(perm)
    shuffled = assign_credit("calm", batch_of([trajs[p] for p in perm]), beta=0.3)
    ta, tb = torch.nan_to_num(base.turn_advantages, nan=9.0), torch.nan_to_num(shuffled.turn_advantages, nan=9.0)
    k = min(ta.shape[1], tb.shape[1])
    assert torch.allclose(ta[perm][:, :k], tb[:, :k], atol=1e-6)
    # a group's advantages do not change when another group is added
    g0 = [t for t in trajs if t.group_id == "g0"]
    alone = assign_credit("calm", batch_of(g0), beta=0.3).turn_advantages
    rows0 = [i for i, t in enumerate(trajs) if t.group_id == "g0"]
    kk = alone.shape[1]
    assert torch.allclose(torch.nan_to_num(alone), torch.nan_to_num(base.turn_advantages[rows0][:, :kk]), atol=1e-6)


def test_env_rewards_and_outcome_switches():
    t1 = make_traj("g", 2, outcome=1.0, rewards=[0.5, 1.0], signals={"calm_new": [1, 0]})
    t2 = make_traj("g", 2, outcome=0.0, rewards=[0.0, 0.0], signals={"calm_new": [0, 0]})
    out = assign_credit("calm", batch_of([t1, t2]), use_env_rewards=True, use_outcome=False)
    assert [v for r in rows(out.turn_rewards) for v in r] == pytest.approx([0.6, 1.0, 0.0, 0.0])


def test_config_checks():
    with pytest.raises(ConfigError, match="advantage"):
        CALMConfig(advantage="td")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="kl_coef"):
        CALMConfig(kl_coef=0.1)
    with pytest.raises(ConfigError, match="gamma"):
        CALMConfig(gamma=1.5)


# ------------------------------------------------------------------------------------------ advantage = gae


def test_gae_without_values_raises_with_the_fix():
    t = make_traj("g", 2, outcome=1.0, signals={"calm_new": [1, 0]})
    with pytest.raises(CreditError, match="algo=ppo credit.advantage=gae"):
        assign_credit("calm", batch_of([t, t]), advantage="gae")


def test_gae_uses_the_shaped_rewards():
    t1 = make_traj("g", 3, outcome=1.0, signals={"calm_new": [1, 0, 1]})
    t2 = make_traj("g", 2, outcome=0.0, signals={"calm_new": [0, 1]})
    b = batch_of([t1, t2])
    b.values = torch.where(b.action_mask, torch.linspace(-0.5, 0.5, b.length).expand_as(b.action_mask), 0.0)
    out = assign_credit("calm", b, advantage="gae", beta=0.5, gamma=0.99, lam=0.95)
    ref_b = batch_of([t1, t2])
    ref_b.values = b.values
    ref_b.turn_signals["aux"] = 0.5 * ref_b.turn_signals["calm_new"]
    ref = assign_credit("gae", ref_b, gamma=0.99, lam=0.95, turn_reward_signals=("aux",))
    assert torch.allclose(out.advantages, ref.advantages, atol=1e-6) and out.returns is not None
    assert torch.allclose(out.returns, ref.returns, atol=1e-6)
    assert [v for r in rows(out.turn_rewards) for v in r] == pytest.approx([0.5, 0.0, 1.5, 0.0, 0.5])


# ------------------------------------------------------------------------------------------ reply parsing

SUB = ["find the key", "open the door"]


@pytest.mark.parametrize("text, expected", [
    ('{"find the key": 1, "open the door": 3}', {0: [1], 1: [3]}),
    ('Sure! ```json\n{"Find the KEY.": [1, 2], "open the door": null}\n```', {0: [1, 2]}),
    ("[['find the key', 2], ['open the door', '3']]", {0: [2], 1: [3]}),
    ('[{"subgoal": "open the door", "turn": 0}]', {1: [0]}),
    ('{"1": 2, "subgoal 2": "turn 1"}', {0: [2], 1: [1]}),
    ("{'find the key': 1, 'open the door': False}", {0: [1]}),
])
def test_parse_trajectory_answers(text, expected):
    r = parse_trajectory_answer(text, SUB, 4)
    assert r.ok and r.achieved == expected


def test_parse_trajectory_drops_unknown_and_out_of_range():
    r = parse_trajectory_answer('{"find the key": [7, 1, -1], "fly away": 0, "open the door": true}', SUB, 4)
    assert r.ok and r.achieved == {0: [1]} and (r.unknown, r.out_of_range) == (1, 2)
    for garbage in ("I think the agent did well.", "", "{not json", "42"):
        g = parse_trajectory_answer(garbage, SUB, 4)
        assert not g.ok and g.achieved == {}


@pytest.mark.parametrize("text, expected", [
    ('{"find the key": true, "open the door": false}', {0}),
    ('{"find the key": "no", "open the door": "Yes"}', {1}),
    ('["open the door"]', {1}),
    ("[1, 2]", {0, 1}),
    ("{'find the key': 1, 'open the door': 0}", {0}),
    ("{}", set()),
])
def test_parse_transition_answers(text, expected):
    r = parse_transition_answer(text, SUB)
    assert r.ok and set(r.achieved) == expected


def test_parse_transition_garbage_and_unknown():
    assert not parse_transition_answer("yes, the key", SUB).ok
    r = parse_transition_answer('{"dance": true, "find the key": true}', SUB)
    assert r.achieved == {0: [0]} and r.unknown == 1


def test_parse_subgoal_list():
    assert parse_subgoal_list('Here: ["Find the key", "open  the door", "find the key!"]') == ["Find the key",
                                                                                              "open the door"]
    assert parse_subgoal_list('{"subgoals": ["a", "b"]}') == ["a", "b"]
    assert parse_subgoal_list("1. search the employer\n2) search the founder\n- answer") == [
        "search the employer", "search the founder", "answer"]
    assert parse_subgoal_list('["a", "b", "c"]', max_subgoals=2) == ["a", "b"]
    assert parse_subgoal_list("no idea") == [] and parse_subgoal_list("[]") == []


# ------------------------------------------------------------------------------------------ LLM provider (fake judge)


def traj(gid: str, n: int, task: str = "Open the locked door.", seed: int = 0) -> Trajectory:
    turns = [Turn(action_ids=[1], action_text=f"act {k}", obs_messages=[{"role": "tool", "content": f"obs {k}"}])
             for k in range(n)]
    return Trajectory(group_id=gid, prompt_ids=[1], turns=turns, env_id="toy-v0", seed=seed, final_answer="x",
                      meta={"prompt": task})


class FakeJudge:
    """Decomposition prompts get ``subgoals``; judging prompts get ``reply(prompt)``. Records every prompt."""

    def __init__(self, reply, subgoals='["find the key", "open the door"]'):
        self.reply, self.subgoals, self.prompts = reply, subgoals, []

    def __call__(self, prompts):
        self.prompts.extend(prompts)
        return [self.subgoals if "key subgoals" in p else self.reply(p) for p in prompts]

    def n_decompositions(self) -> int:
        return sum("key subgoals" in p for p in self.prompts)


def signals(t: Trajectory, name: str) -> list[float]:
    return [u.signals[name] for u in t.turns]


def test_trajectory_mode_signals_and_counters():
    replies = iter(['{"find the key": [1, 2], "open the door": 3}', "the agent tried hard", '{"open the door": 9}'])
    judge = FakeJudge(lambda p: next(replies))
    p = SubgoalJudgeProvider(judge)
    ts = [traj("g", 4), traj("g", 4), traj("g", 2)]
    p(ts)
    assert judge.n_decompositions() == 1  # one task, asked once for the three trajectories
    assert signals(ts[0], "calm_hits") == [0, 1, 1, 1] and signals(ts[0], "calm_new") == [0, 1, 0, 1]
    assert signals(ts[1], "calm_new") == [0, 0, 0, 0] and signals(ts[2], "calm_hits") == [0, 0]
    assert (p.unparseable, p.out_of_range, p.calls) == (1, 1, 4)
    assert ts[0].meta["calm"]["achieved"] == {"find the key": [1, 2], "open the door": [3]}
    assert ts[0].meta["prompt_signals"] == {"calm_n_subgoals": 2.0, "calm_llm": 1.0}
    judged = [q for q in judge.prompts if "key subgoals" not in q]
    assert "Turn 3:\n[action] act 3\n[observation] obs 3" in judged[0] and "2. open the door" in judged[0]
    # the batch sees finite signals everywhere
    b = batch_of(ts)
    assert torch.isfinite(b.turn_signals["calm_new"][b.turn_mask]).all()


def test_transition_mode_one_call_per_turn_and_memo():
    def reply(p):
        return '{"find the key": true, "open the door": false}' if "act 1" in p.split("Action:")[1] else "{}"

    judge = FakeJudge(reply)
    p = SubgoalJudgeProvider(judge, mode="transition")
    ts = [traj("g", 3), traj("g", 3)]
    p(ts)
    judged = [q for q in judge.prompts if "key subgoals" not in q]
    assert len(judged) == 3  # the second trajectory's identical transitions are memoised
    assert "Observation before the step:\nobs 0" in judged[1] and "Observation after the step:\nobs 1" in judged[1]
    for t in ts:
        assert signals(t, "calm_new") == [0, 1, 0] and signals(t, "calm_hits") == [0, 1, 0]
    garbage = SubgoalJudgeProvider(FakeJudge(lambda p: "maybe?"), mode="transition")
    t = traj("g", 2)
    garbage([t])
    assert garbage.unparseable == 2 and signals(t, "calm_hits") == [0, 0]


def test_preset_subgoals_skip_the_decomposition():
    judge = FakeJudge(lambda p: '{"reach the exit": 0}')
    p = SubgoalJudgeProvider(judge, preset_subgoals=["reach the exit"])
    t = traj("g", 2)
    p([t])
    assert judge.n_decompositions() == 0 and signals(t, "calm_new") == [1, 0]


def test_failed_decomposition_gives_no_subgoal_and_is_asked_again():
    judge = FakeJudge(lambda p: "{}", subgoals="I cannot help with that.")
    p = SubgoalJudgeProvider(judge)
    t = traj("g", 2)
    p([t])
    assert signals(t, "calm_new") == [0, 0] and p.failed_decompositions == 1 and p.cache == {}
    assert judge.n_decompositions() == 1 and len(judge.prompts) == 1  # nothing to judge without subgoals
    p([traj("g", 2)])
    assert judge.n_decompositions() == 2


def test_judge_failures_raise_or_are_counted():
    def broken(prompts):
        raise RuntimeError("server down")

    with pytest.raises(SignalError, match="server down"):
        SubgoalJudgeProvider(broken)([traj("g", 2)])
    with pytest.raises(SignalError, match="1 completions for 2"):
        SubgoalJudgeProvider(lambda ps: ["{}"], preset_subgoals=["a"])([traj("g", 1), traj("g", 1)])
    p = SubgoalJudgeProvider(broken, on_error="zero")
    t = traj("g", 2)
    p([t])
    assert p.errors == 1 and signals(t, "calm_new") == [0, 0]
    with pytest.raises(ConfigError, match="mode"):
        SubgoalJudgeProvider(broken, mode="window")  # type: ignore[arg-type]


def test_subgoal_cache_persists_in_the_run_dir(tmp_path):
    judge = FakeJudge(lambda p: '{"find the key": 0}')
    ctx = SignalContext(method="calm", judge=judge, run_dir=tmp_path)
    (p1,) = build_providers("calm", ctx)
    assert isinstance(p1, SubgoalJudgeProvider)
    p1([traj("a", 2, task="Task A", seed=1), traj("b", 2, task="Task B", seed=2)])
    path = tmp_path / CACHE_FILE
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    assert json.loads(path.read_text())["toy-v0:1"] == {"task": "Task A", "subgoals": ["find the key",
                                                                                      "open the door"]}
    n = judge.n_decompositions()
    assert n == 2
    (p2,) = build_providers("calm", SignalContext(method="calm", judge=judge, run_dir=tmp_path))
    assert p2.cache == p1.cache
    t = traj("a", 2, task="Task A", seed=1)
    p2([t])
    assert judge.n_decompositions() == n and signals(t, "calm_new") == [1, 0]  # no new decomposition
    path.write_text("{broken")
    with pytest.raises(SignalError, match="delete the file"):
        SubgoalJudgeProvider(judge, cache_path=path)


def test_factory_picks_the_rule_stand_in_without_a_judge_and_reads_options():
    (rule,) = build_providers("calm", SignalContext(method="calm"))
    assert isinstance(rule, RuleSubgoalProvider) and rule.name == "calm_subgoals"
    ctx = SignalContext(method="calm", judge=lambda ps: ["{}"] * len(ps),
                        signal_options={"mode": "transition", "obs_chars": 10, "preset_subgoals": ("x",)})
    (llm,) = build_providers("calm", ctx)
    assert (llm.mode, llm.obs_chars, llm.preset, llm.cache_path) == ("transition", 10, ["x"], None)
    with pytest.raises(ConfigError, match="max_subgoals"):
        CALMSignalOptions(max_subgoals=0)


# ------------------------------------------------------------------------------------------ rule stand-in


def test_rule_stand_in_matches_exact_gold_calls_only():
    gold = [{"name": "search", "arguments": {"query": "a"}}, {"name": "search", "arguments": {"query": "b"}}]
    call = lambda q: ToolCall(name="search", arguments={"query": q})
    ok = [ToolResult(name="search", ok=True)]
    turns = [Turn(action_ids=[1], tool_calls=[call("a"), call("b")], tool_results=ok * 2),
             Turn(action_ids=[1], tool_calls=[call("a")], tool_results=ok),
             Turn(action_ids=[1], tool_calls=[call("a b")], tool_results=ok),
             Turn(action_ids=[1], tool_calls=[call("b")])]  # the answer turn: its calls are not read
    t = Trajectory(group_id="g", prompt_ids=[1], turns=turns, final_answer="x", meta={"gold_calls": gold + gold})
    RuleSubgoalProvider()([t])
    assert signals(t, "calm_hits") == [2, 1, 0, 0] and signals(t, "calm_new") == [2, 0, 0, 0]
    assert t.meta["prompt_signals"]["calm_llm"] == 0.0 and len(t.meta["calm"]["subgoals"]) == 2
    with pytest.raises(SignalError, match="gold_calls.*judge_url"):
        RuleSubgoalProvider()([Trajectory(group_id="g", turns=[Turn()])])


def test_rule_stand_in_on_scripted_hopqa(byte_tokenizer):
    """The scripted expert (no noise) issues every gold call once: exactly one calm_new per gold call."""
    from turngym.agents.policy import ScriptedPolicy
    from turngym.agents.render import Renderer
    from turngym.agents.rollout import collect_rollouts

    tok = byte_tokenizer
    trajs = collect_rollouts("search/HopQA-v0", ScriptedPolicy(tok, noise=0.0), Renderer(tok), seeds=[0, 1, 2],
                             group_size=2)
    RuleSubgoalProvider()(trajs)
    for t in trajs:
        gold = t.meta["gold_calls"]
        assert gold and t.outcome == 1.0
        assert sum(signals(t, "calm_new")) == len(gold) == sum(signals(t, "calm_hits"))
        assert all(v in (0.0, 1.0) for v in signals(t, "calm_new"))
    # noisy episodes: never more than one calm_new per gold call, and the credit runs on them
    noisy = collect_rollouts("search/HopQA-v0", ScriptedPolicy(tok, noise=0.6, seed=3), Renderer(tok),
                             seeds=[0, 1, 2], group_size=3)
    RuleSubgoalProvider()(noisy)
    assert all(sum(signals(t, "calm_new")) <= len(t.meta["gold_calls"]) for t in noisy)
    from turngym.credit import GroupBatch

    out = assign_credit("calm", GroupBatch.from_trajectories(noisy, pad_id=0))
    assert torch.isfinite(out.advantages).all()


def test_diagnostics_say_which_provider_ran_and_how_many_tasks_lack_subgoals():
    judge = FakeJudge(lambda p: '{"find the key": 0}')
    ok = [traj("g", 2, task="A", seed=1), traj("g", 2, task="A", seed=1)]
    SubgoalJudgeProvider(judge)(ok)
    failed = [traj("h", 2, task="B", seed=2), traj("h", 2, task="B", seed=2)]
    SubgoalJudgeProvider(FakeJudge(lambda p: "{}", subgoals="none"))(failed)
    out = assign_credit("calm", batch_of(ok + failed))
    assert out.diagnostics["calm_llm"] == 1.0 and out.diagnostics["calm_no_subgoal_frac"] == 0.5
    assert out.diagnostics["calm_aux_per_traj"] == 0.5
