"""Signal providers: contexts, values, error behaviour; one path runs a real (tiny, random) causal LM scorer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from turngym.credit import GroupBatch, assign_credit
from turngym.credit.signals import (
    GoldProbeProvider,
    LLMJudgeProvider,
    OutcomeClusterProvider,
    PRMProvider,
    RuleStepJudgeProvider,
    SupportProvider,
    ToolMatchProvider,
    gold_token_span,
    parse_judge_score,
)
from turngym.credit.siop import JudgeEquivalence, NormalizedStringEquivalence
from turngym.errors import SignalError
from turngym.types import ToolCall, ToolResult, Trajectory, Turn

VOCAB = 64


def char_tokenize(text: str):
    """A real (character-level) tokenizer with offsets."""
    return [ord(c) % VOCAB for c in text], [(i, i + 1) for i in range(len(text))]


class RecordingScorer:
    """Deterministic scorer: log-prob of continuation token j = −0.1·(j+1) − 0.01·len(context)."""

    def __init__(self):
        self.calls = []

    def __call__(self, contexts, continuations):
        self.calls.append((list(map(list, contexts)), list(map(list, continuations))))
        return [[-0.1 * (j + 1) - 0.01 * len(c) for j in range(len(y))] for c, y in zip(contexts, continuations)]


def _traj(group="g", answer="paris", n_turns=3, prompt=(1, 2, 3)):
    turns = [Turn(action_ids=[10 + k, 20 + k], logprobs=[-0.1, -0.1], obs_ids=[30 + k] if k < n_turns - 1 else [],
                  obs_messages=[{"role": "tool", "content": f"obs {k} about {answer}"}] if k < n_turns - 1 else [])
             for k in range(n_turns)]
    return Trajectory(group_id=group, prompt_ids=list(prompt), turns=turns, outcome=1.0, final_answer=answer,
                      meta={"gold_answer": ["Paris", "paris"], "question": "capital of France?"})


def test_gold_token_span():
    offs = [(0, 2), (2, 5), (5, 8), (8, 9)]
    assert gold_token_span(offs, 3, 6) == (1, 3)
    assert gold_token_span(offs, 9, 9) == (4, 4)


def test_gold_probe_contexts_and_values():
    sc = RecordingScorer()
    t = _traj()
    prov = GoldProbeProvider(sc, char_tokenize, prefix="<a>", suffix="</a>", generation_prefix=[7])
    prov([t])
    ctx, cont = sc.calls[0]
    assert ctx == [[1, 2, 3, 7], [1, 2, 3, 10, 20, 30], [1, 2, 3, 10, 20, 30, 11, 21, 31]]
    ids, _ = char_tokenize("<a>Paris</a>")
    assert cont[0] == ids[:8]  # up to the end of the gold span (first alternative)
    want = [np.mean([-0.1 * (j + 1) - 0.01 * len(c) for j in range(3, 8)]) for c in ctx]
    assert t.meta["prompt_signals"]["probe_score"] == pytest.approx(want[0])
    assert [t.turns[k].signals["probe_score"] for k in range(2)] == pytest.approx(want[1:])
    assert "probe_score" not in t.turns[2].signals  # the probe after the final turn is never run


def test_gold_probe_scores_each_turn_on_the_gold_its_step_left():
    """A plan that shrinks as the game goes (TextWorld's ``info["gold_answer"]``): ``C_k`` is scored on turn k's
    remaining plan, ``C_{-1}`` on the trajectory's; a turn with nothing left to score keeps no score."""
    sc = RecordingScorer()
    t = _traj(n_turns=4)
    t.meta["gold_answer"] = "east; coin; north"
    for u, left in zip(t.turns, ["coin; north", "coin; north", "", ""]):
        u.info["gold_answer"] = left
    GoldProbeProvider(sc, char_tokenize, prefix="<a>", suffix="</a>")([t])
    ctx, cont = sc.calls[0]
    assert len(ctx) == 3  # the prompt, turn 0, turn 1 (turn 2 left an empty plan; turn 3 is the last)
    assert cont[0] == char_tokenize("<a>east; coin; north")[0]
    assert cont[1] == cont[2] == char_tokenize("<a>coin; north")[0]
    span = range(3, 3 + len("coin; north"))
    assert t.turns[1].signals["probe_score"] == pytest.approx(np.mean([-0.1 * (j + 1) - 0.01 * len(ctx[2])
                                                                       for j in span]))
    assert "probe_score" not in t.turns[2].signals and "probe_score" not in t.turns[3].signals
    sc = RecordingScorer()  # turn_gold=False: the task's gold after every turn (the spec's probe)
    GoldProbeProvider(sc, char_tokenize, prefix="<a>", suffix="</a>", turn_gold=False)([t])
    assert sc.calls[0][1] == [char_tokenize("<a>east; coin; north")[0]] * 4


def test_gold_probe_failures_raise():
    def boom(c, y):
        raise ConnectionError("scorer down")

    with pytest.raises(SignalError, match="scorer down"):
        GoldProbeProvider(boom, char_tokenize)([_traj()])
    with pytest.raises(SignalError, match="one log-prob per continuation token"):
        GoldProbeProvider(lambda c, y: [[0.0] for _ in c], char_tokenize)([_traj()])
    t = _traj()
    t.meta.pop("gold_answer")
    GoldProbeProvider(RecordingScorer(), char_tokenize)([t])  # no gold: the signal is simply missing
    assert "probe_score" not in t.turns[0].signals


def test_gold_probe_with_a_real_tiny_lm_feeds_igpo():
    torch.manual_seed(0)

    class TinyLM(torch.nn.Module):  # a real (random) causal LM: embedding -> GRU -> vocabulary logits
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB, 16)
            self.rnn = torch.nn.GRU(16, 16, batch_first=True)
            self.head = torch.nn.Linear(16, VOCAB)

        def forward(self, ids):
            return type("Out", (), {"logits": self.head(self.rnn(self.emb(ids))[0])})

    model = TinyLM().eval()

    @torch.no_grad()
    def scorer(contexts, continuations):
        out = []
        for c, y in zip(contexts, continuations):
            ids = torch.tensor([list(c) + list(y)])
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            pos = torch.arange(len(c) - 1, len(c) + len(y) - 1)
            out.append(logp[pos, torch.tensor(y)].tolist())
        return out

    trajs = [_traj(answer="paris"), _traj(answer="lyon", n_turns=2)]
    GoldProbeProvider(scorer, char_tokenize, prefix="<a>", suffix="</a>")(trajs)
    # direct check of one probe
    pseudo, _ = char_tokenize("<a>Paris</a>")
    ctx = trajs[0].prompt_ids + trajs[0].turns[0].action_ids + trajs[0].turns[0].obs_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + pseudo[:8]])).logits[0], -1)
    direct = float(np.mean([logp[len(ctx) + j - 1, pseudo[j]].item() for j in range(3, 8)]))
    assert trajs[0].turns[0].signals["probe_score"] == pytest.approx(direct, abs=1e-5)
    b = GroupBatch.from_trajectories(trajs)
    for m in ("igpo", "a2tgpo"):
        out = assign_credit(m, b)
        assert torch.isfinite(out.advantages).all()
        assert out.turn_rewards[0, 0] != 0  # a real IG


def test_outcome_cluster_string_and_judge():
    trajs = [_traj(answer=a) for a in ("Paris", "paris.", "Lyon")] + [_traj(answer=None)]
    OutcomeClusterProvider(NormalizedStringEquivalence(), eta=1.0)(trajs)
    assert [t.meta["siop_cluster"] for t in trajs] == [0, 0, 1, -1]
    assert [t.meta["prompt_signals"]["siop_q"] for t in trajs] == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0.0])
    assert trajs[0].meta["siop_refs"] == ["Paris", "paris."]

    def nli(pairs):  # entailment iff both sides mention paris; else contradiction
        return [(0.9, 0.05, 0.05) if ("paris" in a.lower()) == ("paris" in b.lower()) else (0.05, 0.05, 0.9)
                for a, b in pairs]

    def entail(pairs):  # evidence: 0.9 for the paris cluster, 0.2 for the other (spec §6 example)
        return [0.9 if "paris" in h.lower() else 0.2 for _, h in pairs]

    trajs = [_traj(answer=a) for a in ("Paris", "paris, France", "Lyon")] + [_traj(answer=None)]
    OutcomeClusterProvider(JudgeEquivalence(nli), eta=1.0, entail_prob=entail)(trajs)
    assert [t.meta["siop_cluster"] for t in trajs] == [0, 0, 1, -1]
    assert [t.meta["prompt_signals"]["siop_q"] for t in trajs] == pytest.approx([0.801094, 0.801094, 0.198906, 0],
                                                                                 abs=1e-6)
    with pytest.raises(SignalError, match="entail_prob failed"):
        OutcomeClusterProvider(JudgeEquivalence(nli), entail_prob=lambda p: 1 / 0)(trajs)
    with pytest.raises(SignalError, match="equivalence judge failed"):
        OutcomeClusterProvider(lambda q, a, b: 1 / 0)(trajs)


def test_judge_equivalence_modes():
    neutral = JudgeEquivalence(lambda pairs: [(0.1, 0.8, 0.1)] * len(pairs), mode="loose")
    assert neutral("q", "a", "b") is False  # both neutral
    half = JudgeEquivalence(lambda pairs: [(0.8, 0.1, 0.1), (0.1, 0.8, 0.1)], mode="loose")
    assert half("q", "a", "b") is True
    assert JudgeEquivalence(lambda pairs: [(0.8, 0.1, 0.1), (0.1, 0.8, 0.1)])("q", "a", "b") is False


def test_support_provider_contexts_and_siop_end_to_end():
    trajs = [_traj(answer="paris", n_turns=2), _traj(answer="paris", n_turns=3), _traj(answer="lyon", n_turns=2)]
    OutcomeClusterProvider(NormalizedStringEquivalence())(trajs)
    sc = RecordingScorer()
    SupportProvider(sc, char_tokenize, prefix="<a>", suffix="</a>")(trajs)
    ctx, _ = sc.calls[0]
    assert ctx[:3] == [[1, 2, 3], [1, 2, 3, 10, 20], [1, 2, 3, 10, 20, 30, 11, 21]]  # τ_k ends at action k
    want0 = math.exp(np.mean([-0.1 * (j + 1) - 0.03 for j in range(3, 8)]))
    assert trajs[0].meta["prompt_signals"]["siop_support"] == pytest.approx(want0)
    b = GroupBatch.from_trajectories(trajs)
    out = assign_credit("siop", b)
    assert torch.isfinite(out.advantages).all() and out.advantages.abs().sum() > 0
    with pytest.raises(SignalError, match="OutcomeClusterProvider first"):
        SupportProvider(sc, char_tokenize)([_traj()])


def _matchtir_traj():
    calls = [[ToolCall("search", {"query": "paris", "k": 5})],
             [ToolCall("weather", {"city": "paris"}), ToolCall("weather", {"city": "london"})], []]
    turns = [Turn(action_ids=[1, 2], obs_ids=[3] if k < 2 else [], tool_calls=c) for k, c in enumerate(calls)]
    gold = [{"name": "search", "arguments": {"query": "paris", "k": 3}}, {"name": "weather", "arguments": {"city": "paris"}}]
    return Trajectory(group_id="g", prompt_ids=[9], turns=turns, final_answer="Paris",
                      meta={"gold_calls": gold, "gold_answer": "paris"})


def test_tool_match_provider():
    for mode, want in [("hungarian", [0.75, 0.5, 1.0]), ("greedy", [0.75, 0.5, 1.0]), ("soft", [0.25, 0.220522, 1.0])]:
        t = _matchtir_traj()
        ToolMatchProvider(mode)([t])
        assert [u.signals["match_r"] for u in t.turns] == pytest.approx(want, abs=1e-5)
    t = _matchtir_traj()
    t.meta.pop("gold_calls")
    with pytest.raises(SignalError, match="gold_calls"):
        ToolMatchProvider()([t])
    t = _matchtir_traj()
    t.meta["gold_calls"] = []
    ToolMatchProvider(unmatched_penalty=-0.5)([t])
    assert [u.signals["match_r"] for u in t.turns][:2] == [-0.5, -0.5]


def test_rule_judge_and_slate():
    good = Trajectory(group_id="p:1", prompt_ids=[1], final_answer="Paris", meta={"gold_answer": "paris", "slate_step": 1},
                      turns=[Turn(action_ids=[5])])
    bad = Trajectory(group_id="p:1", prompt_ids=[1], final_answer="Lyon", meta={"gold_answer": "paris", "slate_step": 1},
                     turns=[Turn(action_ids=[5])])
    failed = Trajectory(group_id="p:1", prompt_ids=[1], meta={"gold_calls": [{"name": "search", "arguments": {"query": "x"}}]},
                        turns=[Turn(action_ids=[5], tool_calls=[ToolCall("search", {"query": "x"})],
                                    tool_results=[ToolResult("search", ok=False, error="timeout")])])
    hit = Trajectory(group_id="p:1", prompt_ids=[1], meta={"gold_calls": [{"name": "search", "arguments": {"query": "x"}}]},
                     turns=[Turn(action_ids=[5], tool_calls=[ToolCall("search", {"query": "x"})],
                                 tool_results=[ToolResult("search", ok=True, output="...")])])
    trajs = RuleStepJudgeProvider()([good, bad, failed, hit])
    assert [t.turns[0].signals["judge_action"] for t in trajs] == [1.0, -1.0, -1.0, 1.0]
    out = assign_credit("slate", GroupBatch.from_trajectories(trajs))
    assert out.ratio_level == "sequence" and torch.isfinite(out.advantages).all()
    assert out.turn_advantages[0, 0] > out.turn_advantages[1, 0]


def test_llm_judge_and_score_parser():
    assert parse_judge_score("blah <score>-1</score>") == -1.0
    assert parse_judge_score("Score: 1") == 1.0
    assert parse_judge_score("I give it 7 points") == 1.0  # clamped
    assert parse_judge_score("no number") == 0.0
    seen = []

    def judge(prompts):
        seen.extend(prompts)
        return ["<score>1</score>" if "reasoning" in p else "<score>-1</score>" for p in prompts]

    t = _traj(n_turns=2)
    LLMJudgeProvider(judge)([t])
    assert len(seen) == 4 and "capital of France?" in seen[0]
    assert "[observation] obs 0" in seen[2]  # later steps see the path so far
    assert [u.signals["judge_think"] for u in t.turns] == [1.0, 1.0]
    assert [u.signals["judge_action"] for u in t.turns] == [-1.0, -1.0]
    with pytest.raises(SignalError, match="judge callable failed"):
        LLMJudgeProvider(lambda p: 1 / 0)([_traj()])
    prov = LLMJudgeProvider(lambda p: 1 / 0, on_error="zero")
    t = prov([_traj(n_turns=1)])[0]
    assert t.turns[0].signals["judge_action"] == 0.0 and prov.errors == 2


def test_prm_provider():
    t = _traj(n_turns=2)
    PRMProvider(lambda items: [(0.0, math.log(3.0)) if len(c) > 3 else 0.25 for c, _ in items])([t])
    assert [u.signals["prm"] for u in t.turns] == pytest.approx([0.25, 0.5])
    with pytest.raises(SignalError, match="PRM callable failed"):
        PRMProvider(lambda items: 1 / 0)([_traj()])
    with pytest.raises(SignalError, match="2 logits"):
        PRMProvider(lambda items: [(1.0, 2.0, 3.0)] * len(items))([_traj()])
