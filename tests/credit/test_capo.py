"""CAPO (wave-2 spec §4): the worked example, voting, parsing, the rule stand-in, invariants and reductions."""

from __future__ import annotations

import math
import random

import pytest
import torch
from credit_helpers import batch_of, make_traj
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turngym.credit import GroupBatch, assign_credit, credit_needs
from turngym.credit import signals as sig
from turngym.credit.capo import CAPOConfig, token_pool_norm
from turngym.credit.capo_signals import (
    CAPOCritiqueOptions,
    GenPRMCritiqueProvider,
    RuleCritiqueProvider,
    critique_prompt,
    parse_critique,
    vote_counts,
    vote_flags,
)
from turngym.credit.groups import group_norm
from turngym.errors import ConfigError, CreditError, SignalError
from turngym.types import ToolCall, ToolResult, Trajectory, Turn

torch.set_num_threads(1)
ATOL = 1e-4
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- the worked example (spec §4.7)

#: τ1 correct, lengths [3, 2], votes [0, 2]; τ2 wrong, [2, 2, 1], [3, 0, 1]; τ3 correct, [4], [0]; m = 3.
EXAMPLE = [(1.0, [3, 2], [0, 2]), (0.0, [2, 2, 1], [3, 0, 1]), (1.0, [4], [0])]
TABLE = {  # vote: (turn rewards, token-pool μ, σ, advantages)
    "intersection": ([[2, 2], [-1, 0, 0], [2]], 1.142857, 1.231456,
                     [[0.696040, 0.696040], [-1.740099, -0.928053, -0.928053], [0.696040]]),
    "majority": ([[2, 1], [-1, 0, 0], [2]], 1.0, 1.176697,
                 [[0.849836, 0.0], [-1.699672, -0.849836, -0.849836], [0.849836]]),
    "union": ([[2, 1], [-1, 0, -1], [2]], 0.928571, 1.268814,
              [[0.844432, 0.056295], [-1.519978, -0.731841, -1.519978], [0.844432]]),
    "average": ([[2, 1.333333], [-1, 0, -0.333333], [2]], 1.023810, 1.208689,
                [[0.807644, 0.256082], [-1.674383, -0.847041, -1.122822], [0.807644]]),
}


def example_trajs(vote: str, group: str = "g", m: int = 3) -> list[Trajectory]:
    out = []
    for i, (outcome, lens, votes) in enumerate(EXAMPLE):
        flags = vote_flags(votes, m, vote)
        out.append(make_traj(group, len(lens), outcome=outcome, action_lens=lens, seed_token=1 + 20 * i,
                             signals={"capo_err": flags, "capo_votes": votes},
                             prompt_signals={"capo_valid_critiques": float(m), "capo_critiques": float(m)}))
    return out


def rows(t: torch.Tensor, batch: GroupBatch) -> list[list[float]]:
    return [t[b, : int(batch.num_turns[b])].tolist() for b in range(batch.batch_size)]


def loop_token_pool(rewards: list[list[float]], lens: list[list[int]]) -> tuple[float, float]:
    """Slow reference: μ and std_u over the expanded list of token rewards."""
    toks = [r for rr, ll in zip(rewards, lens) for r, n in zip(rr, ll) for _ in range(n)]
    mu = sum(toks) / len(toks)
    return mu, math.sqrt(sum((x - mu) ** 2 for x in toks) / (len(toks) - 1))


@pytest.mark.parametrize("vote", list(TABLE))
def test_worked_example_token_pool(vote):
    want_r, mu, sd, want_a = TABLE[vote]
    batch = batch_of(example_trajs(vote))
    out = assign_credit("capo", batch)
    for got, want in zip(rows(out.turn_rewards, batch), want_r):
        assert got == pytest.approx(want, abs=ATOL)
    for got, want in zip(rows(out.turn_advantages, batch), want_a):
        assert got == pytest.approx(want, abs=ATOL)
    assert loop_token_pool(want_r, [lens for _, lens, _ in EXAMPLE]) == pytest.approx((mu, sd), abs=ATOL)
    # every policy token carries its turn's advantage, observation / padding tokens carry 0
    tok = out.advantages
    assert torch.equal(tok, batch.broadcast_turns(torch.nan_to_num(out.turn_advantages)))
    assert bool((tok[~batch.action_mask] == 0).all())
    assert out.ratio_level == "token" and out.loss_type == "clip"
    d = out.diagnostics
    assert d["invalid_critique_rate"] == 0.0 and d["correct_rate"] == pytest.approx(2 / 3)
    flags = [f for _, lens, votes in EXAMPLE for f in vote_flags(votes, 3, vote)]
    assert d["flagged_turn_rate"] == pytest.approx(sum(flags) / len(flags))


def test_worked_example_turn_pool_and_sequence():
    batch = batch_of(example_trajs("majority"))
    out = assign_credit("capo", batch, norm="turn_pool")
    want = [[1.100963, 0.275241], [-1.376204, -0.550481, -0.550481], [1.100963]]
    for got, w in zip(rows(out.turn_advantages, batch), want):
        assert got == pytest.approx(w, abs=ATOL)
    out = assign_credit("capo", batch, norm="sequence")
    seq = [0.218218, -1.091089, 0.872871]  # GRPO on the rewards [1, -1, 2]
    for got, w, (_, lens, _) in zip(rows(out.turn_advantages, batch), seq, EXAMPLE):
        assert got == pytest.approx([w] * len(lens), abs=ATOL)


def test_token_pool_norm_matches_the_loop_reference_on_random_batches():
    rng = random.Random(3)
    for _ in range(20):
        trajs = []
        for g in range(rng.randint(1, 3)):
            for _ in range(rng.randint(2, 4)):
                n = rng.randint(1, 4)
                trajs.append(make_traj(f"g{g}", n, outcome=float(rng.random() < 0.5),
                                       action_lens=[rng.randint(1, 4) for _ in range(n)],
                                       signals={"capo_err": [float(rng.random() < 0.4) for _ in range(n)]}))
        batch = batch_of(trajs)
        out = assign_credit("capo", batch)
        for b, t in enumerate(trajs):
            grp = [(u, len(v.action_ids)) for tt in trajs if tt.group_id == t.group_id
                   for u, v in zip(rows(out.turn_rewards, batch)[trajs.index(tt)], tt.turns)]
            toks = [r for r, n in grp for _ in range(n)]
            mu = sum(toks) / len(toks)
            sd = math.sqrt(sum((x - mu) ** 2 for x in toks) / (len(toks) - 1))
            r = rows(out.turn_rewards, batch)[b]
            want = [0.0 if sd == 0 else (x - mu) / (sd + 1e-6) for x in r]
            assert rows(out.turn_advantages, batch)[b] == pytest.approx(want, abs=1e-5)


def test_groups_never_share_statistics_and_row_permutation_permutes():
    base_batch = batch_of(example_trajs("union"))
    base = assign_credit("capo", base_batch)
    other = [make_traj("h", 2, outcome=o, signals={"capo_err": [f, 0.0]}) for o, f in ((1.0, 1.0), (0.0, 0.0))]
    both = batch_of(example_trajs("union") + other)
    out = assign_credit("capo", both)
    assert torch.allclose(out.turn_advantages[:3].nan_to_num(), base.turn_advantages.nan_to_num()[:, :3], atol=1e-6)
    perm = [2, 0, 1]
    trajs = example_trajs("union")
    pb = batch_of([trajs[i] for i in perm])
    po = assign_credit("capo", pb)
    for new, old in enumerate(perm):
        assert rows(po.turn_advantages, pb)[new] == pytest.approx(rows(base.turn_advantages, base_batch)[old],
                                                                  abs=1e-6)


# ---------------------------------------------------------------- edge cases


def test_zero_variance_singleton_and_missing_flags():
    same = [make_traj("g", 2, outcome=1.0, action_lens=[2, 3], signals={"capo_err": [0.0, 0.0]}) for _ in range(3)]
    for norm in ("token_pool", "turn_pool", "sequence"):
        out = assign_credit("capo", batch_of(same), norm=norm)
        assert bool((out.advantages == 0).all()), norm  # exact zeros
    lone = [make_traj("g", 2, outcome=1.0, signals={"capo_err": [1.0, 0.0]})]
    for norm in ("token_pool", "turn_pool", "sequence"):
        assert bool((assign_credit("capo", batch_of(lone), norm=norm).advantages == 0).all()), norm
    raw = assign_credit("capo", batch_of(lone), singleton="raw")
    assert rows(raw.turn_advantages, batch_of(lone))[0] == pytest.approx([1 / (1 + 1e-6), 2 / (1 + 1e-6)])
    # a turn without a flag (NaN: not judged) counts as unflagged, and is reported
    a = [make_traj("g", 2, outcome=1.0, signals={"capo_err": [None, 1.0]}),
         make_traj("g", 2, outcome=0.0, signals={"capo_err": [0.0, 0.0]})]
    b = [make_traj("g", 2, outcome=1.0, signals={"capo_err": [0.0, 1.0]}),
         make_traj("g", 2, outcome=0.0, signals={"capo_err": [0.0, 0.0]})]
    oa, ob = assign_credit("capo", batch_of(a)), assign_credit("capo", batch_of(b))
    assert torch.equal(oa.advantages, ob.advantages) and oa.diagnostics["err_missing"] == 1.0
    # no answer / NaN outcome: r_v = 0, flagged turns still penalised
    c = [make_traj("g", 1, outcome=float("nan"), answered=False, signals={"capo_err": [1.0]}),
         make_traj("g", 1, outcome=0.0, signals={"capo_err": [0.0]})]
    assert rows(assign_credit("capo", batch_of(c)).turn_rewards, batch_of(c)) == [[-1.0], [0.0]]


def test_correctness_modes():
    t = [make_traj("g", 1, outcome=0.5, signals={"capo_err": [0.0]}),
         make_traj("g", 1, outcome=1.0, signals={"capo_err": [0.0]})]
    b = batch_of(t)
    assert rows(assign_credit("capo", b).turn_rewards, b) == [[0.0], [2.0]]
    assert rows(assign_credit("capo", b, correctness="outcome").turn_rewards, b) == [[1.0], [2.0]]
    assert rows(assign_credit("capo", b, correct_threshold=0.5).turn_rewards, b) == [[2.0], [2.0]]


def test_missing_signal_names_the_provider_and_bad_config_raises():
    b = batch_of([make_traj("g", 2, outcome=1.0), make_traj("g", 2, outcome=0.0)])
    with pytest.raises(CreditError, match=r"capo_err.*capo_critique"):
        assign_credit("capo", b)
    with pytest.raises(ConfigError, match="w_process < w_whole"):
        CAPOConfig(w_whole=2.0, w_process=2.0)
    with pytest.raises(ConfigError, match="token_pool"):
        CAPOConfig(norm="tokens")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown option"):
        assign_credit("capo", b, n_critiques=4)  # a provider option, not a credit option


# ---------------------------------------------------------------- invariants (hypothesis)

def test_vote_rules_on_every_count():
    v = [0, 1, 2, 3, 4]
    assert vote_flags(v, 4, "intersection") == [0, 0, 0, 0, 1]
    assert vote_flags(v, 4, "majority") == [0, 0, 1, 1, 1]  # v >= m_eff / 2: a tie flags
    assert vote_flags(v, 4, "union") == [0, 1, 1, 1, 1]
    assert vote_flags(v, 4, "average") == [0, 0.25, 0.5, 0.75, 1]
    assert vote_flags([0, 1, 2], 2, "majority") == [0, 1, 1]
    with pytest.raises(ConfigError, match="intersection, majority, union, average"):
        vote_flags(v, 4, "greedy")  # type: ignore[arg-type]


votes_and_m = st.integers(1, 8).flatmap(lambda m: st.tuples(st.just(m), st.lists(st.integers(0, m), max_size=12)))


@SETTINGS
@given(votes_and_m)
def test_voting_subsets(vm):
    m, votes = vm
    flagged = {v: {k for k, e in enumerate(vote_flags(votes, m, v)) if e > 0} for v in TABLE}
    assert flagged["intersection"] <= flagged["majority"] <= flagged["union"]
    assert flagged["average"] == flagged["union"]
    assert all(0.0 <= e <= 1.0 for e in vote_flags(votes, m, "average"))
    for v in TABLE:
        assert vote_flags(votes, 0, v) == [0.0] * len(votes)  # no valid critique: no flag


@SETTINGS
@given(st.lists(st.lists(st.integers(-2, 9), max_size=6), max_size=6), st.integers(1, 8))
def test_vote_counts_count_each_critique_once_per_step(crits, n):
    v = vote_counts([set(c) for c in crits], n)
    assert v == [sum(1 for c in crits if k in c) for k in range(n)]


@SETTINGS
@given(st.lists(st.tuples(st.booleans(), st.lists(st.tuples(st.booleans(), st.integers(1, 4)), min_size=1,
                                                   max_size=4)), min_size=2, max_size=6),
       st.floats(0.5, 4.0), st.floats(0.0, 0.99), st.sampled_from(["token_pool", "turn_pool"]))
def test_ordering_invariant(rollouts, w_whole, frac, norm):
    """Correct + clean turns get the highest advantage, wrong + flagged the lowest, and correct + flagged beats
    wrong + clean whenever w_process < w_whole."""
    w_process = frac * w_whole
    trajs = [make_traj("g", len(turns), outcome=float(ok), action_lens=[n for _, n in turns],
                       signals={"capo_err": [float(f) for f, _ in turns]}) for ok, turns in rollouts]
    batch = batch_of(trajs)
    out = assign_credit("capo", batch, w_whole=w_whole, w_process=w_process, norm=norm)
    cls: dict[tuple[bool, bool], list[float]] = {}
    for (ok, turns), adv in zip(rollouts, rows(out.turn_advantages, batch)):
        for (f, _), a in zip(turns, adv):
            cls.setdefault((ok, f), []).append(a)
    vals = [a for v in cls.values() for a in v]
    if max(vals) == min(vals):
        return  # zero variance: all 0
    if (True, False) in cls:
        assert min(cls[(True, False)]) >= max(vals) - 1e-9
    if (False, True) in cls:
        assert max(cls[(False, True)]) <= min(vals) + 1e-9
    if (True, True) in cls and (False, False) in cls:
        assert min(cls[(True, True)]) > max(cls[(False, False)])


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0.0, 1.0), st.integers(1, 3)), min_size=1, max_size=10))
def test_no_flags_sequence_is_grpo_on_twice_rv(spec):
    """Reduction (spec §10): no flagged step and norm="sequence" = GRPO on 2·r_v."""
    trajs = [make_traj(f"g{g}", n, outcome=o, signals={"capo_err": [0.0] * n}) for g, o, n in spec]
    batch = batch_of(trajs)
    out = assign_credit("capo", batch, norm="sequence", correctness="outcome")
    rv = batch.outcome.double().clamp(0, 1)
    want = group_norm(2 * rv, batch.group_index, unbiased=True, div_eps=1e-6, singleton="zero")
    assert torch.allclose(out.advantages.double(), batch.broadcast_turns(want[:, None].expand_as(
        batch.turn_mask).double()), atol=1e-6)
    two = GroupBatch.from_trajectories([make_traj(t.group_id, len(t.turns), outcome=2 * min(max(t.outcome, 0), 1))
                                        for t in trajs])
    grpo = assign_credit("grpo", two, singleton="zero")
    assert torch.allclose(out.advantages, grpo.advantages, atol=1e-6)


def test_token_pool_norm_shape_check():
    with pytest.raises(ValueError, match=r"r\[B,K\]"):
        token_pool_norm(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------- parsing (canned completions)


@pytest.mark.parametrize("text,n,want", [
    ("[1, 3]", 4, {1, 3}),
    ("Step 0 is fine. Step 2 searched the wrong entity.\nIncorrect steps: [2]", 3, {2}),
    ("First guess [0, 1]; after checking again the answer is [1, 2]", 3, {1, 2}),  # the last list wins
    ("Steps [the search] were fine. Final: [0]", 2, {0}),
    ("All steps are correct: []", 3, set()),
    ("[0, 7, -1, 2, 2]", 3, {0, 2}),  # out of range ignored, duplicates once
    ('[1, 2] then ["a", "b"]', 3, {1, 2}),  # the last list *of integers*
    ("I think the second step is wrong.", 3, None),  # no list: invalid critique
    ("[1.0, 2]", 3, None),
    ("[true]", 3, None),
    ("[1, 2", 3, None),
])
def test_parse_critique(text, n, want):
    got = parse_critique(text, n)
    assert (got is None) if want is None else (got == frozenset(want))


@SETTINGS
@given(st.lists(st.integers(-3, 12), max_size=8), st.integers(1, 10), st.text(alphabet="abc .:\n", max_size=20))
def test_parse_critique_property(idx, n, prose):
    assert parse_critique(f"{prose} {idx} {prose}", n) == frozenset(i for i in idx if 0 <= i < n)


# ---------------------------------------------------------------- providers


def agent_traj(answer: str | None, steps: list[tuple[str, list[ToolCall], list[ToolResult], dict]], *,
               group: str = "q1", gold="Paris", outcome: float = 0.0) -> Trajectory:
    turns = []
    for k, (text, calls, results, info) in enumerate(steps):
        obs = [{"role": "tool", "content": "\n".join(r.text for r in results)}] if results else []
        turns.append(Turn(action_ids=[10 + k, 11 + k], logprobs=[-0.1, -0.1], action_text=text, obs_ids=[30 + k],
                          obs_messages=obs, tool_calls=calls, tool_results=results, info=info))
    return Trajectory(group_id=group, prompt_ids=[1, 2], turns=turns, outcome=outcome, final_answer=answer,
                      meta={"question": "What is the capital of France?", "gold_answer": gold,
                            "gold_calls": [{"name": "search", "arguments": {"query": "France capital"}}]})


def search(q: str, ok: bool = True) -> tuple[list[ToolCall], list[ToolResult]]:
    return ([ToolCall("search", {"query": q})],
            [ToolResult("search", ok=ok, output=f"doc about {q}" if ok else "", error=None if ok else "timeout")])


def built_batch() -> list[Trajectory]:
    good = agent_traj("Paris", [("<call>search France capital</call>", *search("France capital"), {}),
                                ("<answer>Paris</answer>", [], [], {})], outcome=1.0)
    failed = agent_traj("Paris", [("<call>search x</call>", *search("x", ok=False), {}),
                                  ("<answer>paris.</answer>", [], [], {})], outcome=1.0)
    wrong_tool = agent_traj("Lyon", [("<call>lookup France</call>", [ToolCall("lookup", {"q": "France"})],
                                      [ToolResult("lookup", ok=True, output="...")], {}),
                                     ("<answer>Lyon</answer>", [], [], {})])
    no_call = agent_traj(None, [("I should think more.", [], [], {}),
                                ("<call>search(</call>", [], [], {"parse_errors": ["bad json"]}),
                                ("<call>search France</call>", *search("France"), {})])
    return [good, failed, wrong_tool, no_call]


def test_rule_stand_in_on_a_built_batch():
    legacy = RuleCritiqueProvider(flag_unanswered=False)(built_batch())
    assert [[u.signals["capo_err"] for u in t.turns] for t in legacy][3] == [1.0, 1.0, 0.0]  # clean last search
    trajs = RuleCritiqueProvider()(built_batch())
    flags = [[u.signals["capo_err"] for u in t.turns] for t in trajs]
    # the unanswered rollout's last turn (a clean search) is flagged: it ended without answering
    assert flags == [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0, 1.0]]
    assert all(t.meta["prompt_signals"]["capo_llm"] == 0.0 and t.meta["capo"]["judge"] == "rule" for t in trajs)
    assert trajs[2].meta["capo"]["critiques"] == [[0, 1]]
    batch = batch_of(trajs)
    out = assign_credit("capo", batch)
    adv = rows(out.turn_advantages, batch)
    assert adv[0][0] == max(max(r) for r in adv)  # correct and clean: the highest advantage
    assert adv[1][0] < adv[1][1]  # the failed search is penalised inside a correct rollout
    assert adv[1][0] > max(adv[3])  # correct + flagged beats wrong + clean
    assert out.diagnostics["llm_judged"] == 0.0 and out.diagnostics["invalid_critique_rate"] == 0.0
    # without gold calls only parse / failure is checked; without a gold answer the answer is not judged
    t = agent_traj("Lyon", [("<call>lookup France</call>", [ToolCall("lookup", {"q": "France"})],
                             [ToolResult("lookup", ok=True, output="...")], {}), ("<answer>Lyon</answer>", [], [], {})],
                   gold=None)
    del t.meta["gold_calls"]
    assert RuleCritiqueProvider().incorrect_steps(t) == []


def test_prompt_holds_numbered_steps_observations_and_gold():
    t = built_batch()[1]
    p = critique_prompt(t, obs_chars=4)
    assert "What is the capital of France?" in p and "Reference answer: Paris" in p
    assert "<step 0>\n<call>search x</call>\n[observation] Erro" in p and "<step 1>\n<answer>paris.</answer>" in p
    assert "Error: timeout" not in p  # cut to obs_chars
    assert "Reference answer" not in critique_prompt(t, with_gold=False)
    assert "[observation]" not in critique_prompt(t, obs_chars=0)
    t.meta["gold_answer"] = ["Paris", "Paris, France"]
    assert "Reference answer: Paris / Paris, France" in critique_prompt(t)


class CannedJudge:
    """``judge(prompts)``: replies per prompt from a list, in call order (the k-th copy of a prompt gets reply k)."""

    def __init__(self, replies: dict[str, list[str]]):
        self.replies, self.seen, self.count = replies, [], {}

    def __call__(self, prompts):
        self.seen.extend(prompts)
        out = []
        for p in prompts:
            key = next(k for k in self.replies if k in p)
            i = self.count.get(p, 0)
            self.count[p] = i + 1
            out.append(self.replies[key][i % len(self.replies[key])])
        return out


def test_genprm_provider_votes_flags_and_counts():
    replies = {"search x": ["[0]", "Step 0 failed: [0, 1]", "no list here", "[0, 9]"],  # 3 valid, votes [3, 1]
               "search France capital": ["[]", "[0]", "Steps [0, 1] look odd. Final: [0, 1]", "[0]"],  # votes [3, 1]
               "lookup": ["[1]"], "think more": ["nothing"]}  # the last one: 0 valid critiques
    for vote, want_good, want_failed in [("intersection", [0.0, 0.0], [1.0, 0.0]),
                                         ("majority", [1.0, 0.0], [1.0, 0.0]),
                                         ("union", [1.0, 1.0], [1.0, 1.0]),
                                         ("average", [0.75, 0.25], [1.0, 1 / 3])]:
        judge = CannedJudge(replies)
        prov = GenPRMCritiqueProvider(judge, n_critiques=4, vote=vote)
        trajs = prov(built_batch())
        assert len(judge.seen) == 16 and judge.seen[0] == judge.seen[3] != judge.seen[4]  # rollout-major copies
        good, failed = trajs[0], trajs[1]
        assert [u.signals["capo_votes"] for u in good.turns] == [3.0, 1.0]
        assert [u.signals["capo_votes"] for u in failed.turns] == [3.0, 1.0]
        assert [u.signals["capo_err"] for u in good.turns] == pytest.approx(want_good), vote
        assert [u.signals["capo_err"] for u in failed.turns] == pytest.approx(want_failed), vote
        assert good.meta["prompt_signals"]["capo_valid_critiques"] == 4.0
        assert failed.meta["prompt_signals"]["capo_valid_critiques"] == 3.0
        assert failed.meta["capo"] == {"judge": "genprm", "critiques": [[0], [0, 1], None, [0]]}
        assert [u.signals["capo_err"] for u in trajs[3].turns] == [0.0, 0.0, 0.0]  # m_eff = 0: no flag
        assert trajs[3].meta["prompt_signals"]["capo_valid_critiques"] == 0.0
        assert prov.invalid == 1 + 4 and prov.requested == 16 and prov.errors == 0
    batch = batch_of(trajs)
    d = assign_credit("capo", batch).diagnostics
    assert d["invalid_critique_rate"] == pytest.approx(5 / 16) and d["no_valid_critique_rate"] == 0.25
    assert d["llm_judged"] == 1.0


def test_genprm_judge_failures():
    def down(prompts):
        raise ConnectionError("judge down")

    with pytest.raises(SignalError, match="judge down"):
        GenPRMCritiqueProvider(down)(built_batch())
    with pytest.raises(SignalError, match="3 completions for 8"):
        GenPRMCritiqueProvider(lambda p: ["[]"] * 3, n_critiques=2)(built_batch())
    prov = GenPRMCritiqueProvider(down, n_critiques=2, on_error="zero")
    trajs = prov(built_batch())
    assert prov.errors == 8 and all(u.signals["capo_err"] == 0.0 for t in trajs for u in t.turns)
    assert all(t.meta["prompt_signals"]["capo_valid_critiques"] == 0.0 for t in trajs)
    assert assign_credit("capo", batch_of(trajs)).diagnostics["invalid_critique_rate"] == 1.0
    with pytest.raises(ConfigError, match="vote"):
        GenPRMCritiqueProvider(down, vote="best")  # type: ignore[arg-type]


def test_factory_picks_the_judge_or_the_rule_stand_in_and_checks_options():
    assert credit_needs("capo").signals == ("capo_critique",)
    (p,) = sig.build_providers("capo", sig.SignalContext(method="capo"))
    assert isinstance(p, RuleCritiqueProvider) and p.name == "capo_critique"
    judge = CannedJudge({"": ["[]"]})
    ctx = sig.SignalContext(method="capo", judge=judge, options={"err_signal": "my_err"},
                            signal_options={"n_critiques": 2, "vote": "union", "obs_chars": 10, "lr": 1.0})
    (p,) = sig.build_providers("capo", ctx)
    assert isinstance(p, GenPRMCritiqueProvider) and p.name == "capo_critique"
    assert (p.judge, p.n_critiques, p.vote, p.obs_chars, p.err_signal) == (judge, 2, "union", 10, "my_err")
    assert sig.SIGNAL_PROVIDERS["capo_critique"].config_cls is CAPOCritiqueOptions
    with pytest.raises(ConfigError, match="n_critiques"):
        sig.build_providers("capo", sig.SignalContext(method="capo", judge=judge, signal_options={"n_critiques": 0}))
    from turngym.trainers.config import check_signal_options

    assert check_signal_options("capo", {"n_critiques": "8", "vote": "majority"}) == {"n_critiques": 8,
                                                                                        "vote": "majority"}
    with pytest.raises(ConfigError, match="n_critiques"):
        check_signal_options("capo", {"n_critique": 2})
