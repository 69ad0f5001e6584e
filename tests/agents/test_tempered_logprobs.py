"""One temperature path: the sampler records ``log softmax(z / T)`` of the sampled tokens, the trainer's tempered
teacher-forced log-probs (`turngym.agents.policy` module docstring), on every `HFPolicy` decode path; top-k/top-p
do not change the recorded value; greedy records the raw model's; `VLLMPolicy` keeps the engine's log-probs only
where they are that convention."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from turngym.agents.policy import (
    HFPolicy,
    SamplingParams,
    VLLMPolicy,
    sample_tokens,
    score_sequence,
    tempered_logprobs,
)
from turngym.agents.render import Renderer
from turngym.agents.rollout import collect_rollouts
from turngym.credit import GroupBatch
from turngym.trainers.forward import batch_logprobs

ENV_ID = "search/HopQA-v0"
TOL = 1e-4


def _batch(model, tok, T: float, **policy_kw):
    """A small multi-turn batch sampled at temperature T, packed as the trainer packs it."""
    pol = HFPolicy(model, tok, seed=3, **policy_kw)
    trajs = collect_rollouts(ENV_ID, pol, Renderer(tok), seeds=[0, 1], group_size=2,
                             params=SamplingParams(temperature=T, max_new_tokens=16), max_turns=2)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return trajs, GroupBatch.from_trajectories(trajs, pad_id=pad)


@pytest.mark.parametrize("legacy", [False, True], ids=["kv-batched", "legacy-decode"])
@pytest.mark.parametrize("T", [0.7, 1.0])
def test_recorded_logprobs_equal_the_trainers_tempered_scores(tiny, T, legacy):
    model, tok = tiny
    trajs, batch = _batch(model, tok, T, legacy_decode=legacy)
    assert batch.old_logprobs is not None and any(len(t.turns) == 2 for t in trajs)  # multi-turn, prefix cache
    m = batch.action_mask.bool()
    tempered = batch_logprobs(model, batch, temperature=T)  # [B, L] the trainer's teacher forcing
    worst = float((batch.old_logprobs[m] - tempered[m]).abs().max())
    assert worst < TOL, worst
    if T != 1.0:  # not the raw model's any more
        raw = batch_logprobs(model, batch)
        assert float((batch.old_logprobs[m] - raw[m]).abs().max()) > 1e-2


def test_truncation_does_not_change_the_recorded_value_and_greedy_is_raw(tiny):
    model, tok = tiny
    r = Renderer(tok)
    ctxs = [r.initial([{"role": "user", "content": "Who founded Novex" + "?" * i}]) for i in range(3)]
    for legacy in (False, True):
        pol = HFPolicy(model, tok, seed=1, legacy_decode=legacy)
        for params in (SamplingParams(temperature=0.7, top_k=5, max_new_tokens=12),
                       SamplingParams(temperature=1.3, top_p=0.8, max_new_tokens=12),
                       SamplingParams(temperature=0.0, max_new_tokens=12)):
            for c, s in zip(ctxs, pol.generate(ctxs, params)):
                ref = score_sequence(model, c + s.ids, temperature=params.temperature)[len(c):]
                assert max(abs(a - b) for a, b in zip(ref, s.logprobs)) < TOL, (legacy, params)
    # greedy's convention is the raw model's: score_sequence at temperature 0 and 1 agree
    ids = ctxs[0] + [5, 6, 7]
    assert score_sequence(model, ids, temperature=0.0) == score_sequence(model, ids)


def test_sample_tokens_reuses_the_tempered_logprobs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 3
    u = torch.rand(64, generator=g, dtype=torch.float64)
    for p in (SamplingParams(temperature=0.7), SamplingParams(temperature=1.0), SamplingParams(temperature=1.5,
                                                                                              top_p=0.9)):
        lp = tempered_logprobs(logits, p)
        assert torch.allclose(lp, torch.log_softmax(logits / p.temperature, -1), atol=1e-6)
        assert torch.equal(sample_tokens(logits, p, u, logp=lp), sample_tokens(logits, p, u))
    assert torch.equal(tempered_logprobs(logits, SamplingParams(temperature=0.0)), torch.log_softmax(logits, -1))


# --------------------------------------------------------------------------- vLLM (a fake engine: no vllm needed)


@pytest.mark.parametrize(("mode", "params", "kept"), [
    ("processed_logprobs", SamplingParams(temperature=0.7), True),
    ("processed_logprobs", SamplingParams(temperature=1.0, top_p=0.9), False),  # renormalised over the nucleus
    ("processed_logprobs", SamplingParams(temperature=0.7, top_k=20), False),
    ("processed_logprobs", SamplingParams(temperature=0.0, top_k=20), True),  # greedy path: raw
    ("raw_logprobs", SamplingParams(temperature=1.0, top_p=0.9), True),
    ("raw_logprobs", SamplingParams(temperature=0.7), False),
    (None, SamplingParams(temperature=1.0), True),  # a vLLM without logprobs_mode
    (None, SamplingParams(temperature=0.7), False),
    ("raw_logits", SamplingParams(temperature=1.0), False),
])
def test_vllm_keeps_engine_logprobs_only_in_the_tempered_convention(monkeypatch, tiny, mode, params, kept):
    _, tok = tiny
    built: dict = {}

    class FakeLLM:
        def __init__(self, model, **kw):
            if mode is None and "logprobs_mode" in kw:
                raise TypeError("unexpected keyword argument 'logprobs_mode'")
            built.update(kw)

        def generate(self, prompts, sps, use_tqdm=False):
            assert {sp["logprobs"] for sp in sps} == {0 if kept else None}  # not asked for when dropped
            out = []
            for _ in prompts:
                c = types.SimpleNamespace(token_ids=[5, 6], finish_reason="length",
                                          logprobs=[{5: types.SimpleNamespace(logprob=-0.5)},
                                                    {6: types.SimpleNamespace(logprob=-1.5)}] if kept else None)
                out.append(types.SimpleNamespace(outputs=[c]))
            return out

    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    vllm.SamplingParams = lambda **kw: kw
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setattr("turngym.agents.policy.require_vllm", lambda: None)
    kw = {} if mode in (None, "processed_logprobs") else {"logprobs_mode": mode}
    pol = VLLMPolicy("unused", tok, **kw)
    assert pol.logprobs_mode == mode
    if mode is not None:
        assert built["logprobs_mode"] == mode  # processed_logprobs unless overridden
    assert pol.has_tempered_logprobs(params) is kept
    s = pol.generate([[1, 2], [3]], params)
    assert [x.logprobs for x in s] == ([[-0.5, -1.5]] * 2 if kept else [None, None])
