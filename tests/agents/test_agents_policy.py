"""HFPolicy sampling: batched left-padded generation, tempered log-probs, stops; ScriptedPolicy; OpenAI backend."""

from __future__ import annotations

import pytest
import torch

from turngym.agents.policy import HFPolicy, OpenAIPolicy, SamplingParams, ScriptedPolicy, score_sequence
from turngym.agents.render import Renderer
from turngym.errors import ConfigError

PROMPT = [{"role": "system", "content": "Answer the question by searching."},
          {"role": "user", "content": "What is the founder of Novex?"}]


def _contexts(tok, n=4):
    r = Renderer(tok)
    base = r.initial(PROMPT)
    # different lengths -> left padding inside one batch
    return [base + tok.encode(" " + "x" * i, add_special_tokens=False) for i in range(n)]


def test_logprobs_equal_teacher_forced_scores_under_left_padding(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok, seed=1)
    ctxs = _contexts(tok)
    assert len({len(c) for c in ctxs}) > 1
    samples = pol.generate(ctxs, SamplingParams(max_new_tokens=24, temperature=1.3, top_p=0.9))
    for c, s in zip(ctxs, samples):
        assert 1 <= len(s.ids) <= 24 and len(s.logprobs) == len(s.ids)
        ref = score_sequence(model, c + s.ids, temperature=1.3)[len(c):]  # log softmax(z / T), top-p ignored
        assert max(abs(a - b) for a, b in zip(ref, s.logprobs)) < 1e-4
        assert all(lp <= 0 for lp in s.logprobs)


def test_greedy_is_deterministic_and_batch_independent(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok)
    ctxs = _contexts(tok, 3)
    p = SamplingParams(temperature=0.0, max_new_tokens=12)
    batch = pol.generate(ctxs, p)
    single = [pol.generate([c], p)[0] for c in ctxs]
    assert [s.ids for s in batch] == [s.ids for s in single]
    # top_p -> 0 keeps only the argmax token: same as greedy
    assert [s.ids for s in pol.generate(ctxs, SamplingParams(top_p=1e-9, max_new_tokens=12))] == [s.ids for s in batch]


def test_seeded_sampling_reproduces(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok)
    ctxs = _contexts(tok, 2)
    a = pol.generate(ctxs, SamplingParams(max_new_tokens=10, seed=7))
    b = pol.generate(ctxs, SamplingParams(max_new_tokens=10, seed=7))
    c = pol.generate(ctxs, SamplingParams(max_new_tokens=10, seed=8))
    assert [s.ids for s in a] == [s.ids for s in b] != [s.ids for s in c]


def test_stops_on_end_of_turn_token(tiny):
    model, tok = tiny
    eot = tok.convert_tokens_to_ids("<|end|>")
    pol = HFPolicy(model, tok)
    # make the end-of-turn token overwhelmingly likely by biasing the output layer (a copy of the model)
    import copy

    m2 = copy.deepcopy(model)
    with torch.no_grad():
        m2.lm_head.weight.data = m2.lm_head.weight.data.clone()
        m2.config.tie_word_embeddings = False
        bias = torch.zeros(m2.lm_head.weight.shape[0])
        bias[eot] = 1.0
        m2.lm_head = torch.nn.Linear(m2.lm_head.in_features, m2.lm_head.out_features, bias=True)
        m2.lm_head.weight.data = model.lm_head.weight.data.clone()
        m2.lm_head.bias.data = bias * 50
    s = HFPolicy(m2, tok).generate(_contexts(tok, 1), SamplingParams(max_new_tokens=20))[0]
    assert s.ids == [eot] and s.finish_reason == "stop" and s.text == ""
    assert pol.stop_token_ids == [eot]


def test_stop_strings_and_length(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok)
    ctx = _contexts(tok, 1)
    g = pol.generate(ctx, SamplingParams(temperature=0.0, max_new_tokens=30))[0]
    if g.finish_reason == "length":
        assert len(g.ids) == 30
    text = tok.decode(g.ids[:8])
    stop = text[-3:] if text.strip() else None
    if stop:
        s = pol.generate(ctx, SamplingParams(temperature=0.0, max_new_tokens=30, stop=(stop,)))[0]
        assert s.finish_reason == "stop_string" and stop in s.text
        assert s.ids == g.ids[: len(s.ids)] and len(s.ids) <= 8


def test_bad_params_and_contexts(tiny):
    model, tok = tiny
    with pytest.raises(ConfigError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ConfigError, match="top_p"):
        SamplingParams(top_p=0)
    assert SamplingParams(stop="</s>").stop == ("</s>",)
    pol = HFPolicy(model, tok)
    with pytest.raises(ValueError, match="empty"):
        pol.generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="max_position_embeddings"):
        pol.generate([[5] * model.config.max_position_embeddings], SamplingParams())


def test_scripted_policy_needs_envs(tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="needs envs"):
        ScriptedPolicy(tok).generate([[1]], SamplingParams())


def test_openai_backend_against_loopback_server(tiny):
    from turngym.agents.openai_server import CompletionServer

    model, tok = tiny
    ctxs = _contexts(tok, 3)
    with CompletionServer(HFPolicy(model, tok, seed=3), tok, model_name="tiny-hopqa") as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        pol = OpenAIPolicy(srv.url, tok)
        assert pol.model == "tiny-hopqa"
        samples = pol.generate(ctxs, SamplingParams(max_new_tokens=16, temperature=1.0))
        assert len(samples) == 3
        for c, s in zip(ctxs, samples):
            assert s.exact_ids and len(s.logprobs) == len(s.ids) > 0
            ref = score_sequence(model, c + s.ids)[len(c):]
            assert max(abs(a - b) for a, b in zip(ref, s.logprobs)) < 1e-4
        # one request per prompt gives the same format
        pol2 = OpenAIPolicy(srv.url + "/v1", tok, batch_prompts=False)
        s2 = pol2.generate(ctxs[:2], SamplingParams(max_new_tokens=4, temperature=0.0))
        greedy = HFPolicy(model, tok).generate(ctxs[:2], SamplingParams(max_new_tokens=4, temperature=0.0))
        assert [s.ids for s in s2] == [g.ids for g in greedy]
        # server errors surface with the HTTP status
        with pytest.raises(RuntimeError, match="HTTP 400"):
            pol._post({"model": "x", "prompt": []})
        pol.close()
        pol2.close()


def test_prefix_cache_reuses_turns_and_matches_full_prefill(tiny):
    model, tok = tiny
    cached, plain = HFPolicy(model, tok), HFPolicy(model, tok, prefix_cache=False)
    assert cached.prefix_cache is not None and plain.prefix_cache is None
    r = Renderer(tok)
    obs = [{"role": "tool", "name": "search", "content": "[1] Novex: The founder of Novex is Mira Orlo."}]
    ctx_c = ctx_p = _contexts(tok, 3)
    p = SamplingParams(temperature=0.0, max_new_tokens=10)
    for _turn in range(3):
        sc, sp = cached.generate(ctx_c, p), plain.generate(ctx_p, p)
        assert [s.ids for s in sc] == [s.ids for s in sp]
        for a, b in zip(sc, sp):
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
        ctx_c = [c + s.ids + r.observation(obs, closed=s.finish_reason == "stop") for c, s in zip(ctx_c, sc)]
        ctx_p = [c + s.ids + r.observation(obs, closed=s.finish_reason == "stop") for c, s in zip(ctx_p, sp)]
    assert cached.prefix_cache.hits == 6 and cached.prefix_cache.reused_tokens > 3 * len(ctx_c[0]) // 2
    # a weight change invalidates the cache: no stale keys/values are reused
    import copy

    m2 = copy.deepcopy(model)
    pol = HFPolicy(m2, tok)
    s1 = pol.generate(ctx_c, p)
    assert len(pol.prefix_cache.entries) == 3
    with torch.no_grad():
        m2.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    nxt = [c + s.ids + r.observation(obs) for c, s in zip(ctx_c, s1)]
    s2 = pol.generate(nxt, SamplingParams(max_new_tokens=6))
    assert pol.prefix_cache.hits == 0
    for c, s in zip(nxt, s2):
        ref = score_sequence(m2, c + s.ids)[len(c):]
        assert max(abs(a - b) for a, b in zip(ref, s.logprobs)) < 1e-4
