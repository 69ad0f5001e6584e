"""HFPolicy's decode loop (issue 24): compaction does not change outputs, attention over the filled (and
left-trimmed) part of the cache equals attention over the whole preallocated buffer, the inverse-CDF sampler
draws from the processed distribution, and the legacy loop stays selectable."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from turngym.agents.policy import (
    HFPolicy,
    SamplingParams,
    _cache_kwarg,
    _compact,
    sample_tokens,
    score_sequence,
    tempered_logprobs,
)
from turngym.agents.render import Renderer
from turngym.agents.rollout import collect_rollouts

ENV_ID = "search/HopQA-v0"


@pytest.fixture(scope="module")
def stopping(tiny):
    """The tiny model with +3 on the end-of-turn logit: sampled actions end anywhere from 1 to 48 tokens, so
    rows of a batch finish at different steps (the random-init model alone almost never stops)."""
    model, tok = tiny
    eot = tok.convert_tokens_to_ids("<|end|>")
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.config.tie_word_embeddings = False
        w = model.lm_head.weight.detach().clone()
        m.lm_head = torch.nn.Linear(w.shape[1], w.shape[0], bias=True)
        m.lm_head.weight.copy_(w)
        m.lm_head.bias.zero_()
        m.lm_head.bias[eot] = 3.0
    return m, tok


def _rollouts(model, tok, temperature=1.0, **policy_kw):
    pol = HFPolicy(model, tok, seed=5, max_batch_size=32, **policy_kw)
    return collect_rollouts(ENV_ID, pol, Renderer(tok), seeds=list(range(6)), group_size=3,
                            params=SamplingParams(temperature=temperature, max_new_tokens=40), max_turns=5)


def _turns(trajs):
    return [(t.action_ids, t.logprobs) for x in trajs for t in x.turns]


def test_outputs_identical_with_and_without_compaction(stopping):
    model, tok = stopping
    runs = {share: _rollouts(model, tok, compact_dead_share=share) for share in (0.0, 0.25, 1.0)}
    ref = _turns(runs[1.0])  # 1.0: finished rows stay in the batch until it ends (no compaction)
    lens = [len(a) for a, _ in ref]
    assert min(lens) < 10 and max(lens) == 40 and len(set(lens)) > 10  # rows really finish at different steps
    for share in (0.0, 0.25):
        got = _turns(runs[share])
        assert [a for a, _ in got] == [a for a, _ in ref]
        assert max(abs(x - y) for (_, la), (_, lb) in zip(got, ref) for x, y in zip(la, lb)) < 1e-5
    # the prefix cache (views into compacted buffers) stays exact over turns: re-scoring gives the sampler's log-probs
    worst = 0.0
    for t in runs[0.0]:
        scores = score_sequence(model, t.token_ids())
        rescored = [s for s, m in zip(scores, t.action_mask()) if m]
        worst = max(worst, max(abs(a - b) for a, b in zip(rescored, [lp for u in t.turns for lp in u.logprobs])))
    assert worst < 1e-4, worst


def test_greedy_new_and_legacy_decode_agree(stopping, tiny):
    for model, tok in (stopping, tiny):
        new, old = _rollouts(model, tok, 0.0), _rollouts(model, tok, 0.0, legacy_decode=True)
        a, b = _turns(new), _turns(old)
        assert [x for x, _ in a] == [x for x, _ in b]
        assert max(abs(x - y) for (_, la), (_, lb) in zip(a, b) for x, y in zip(la, lb)) < 1e-5


def test_seeded_sampling_is_batch_independent(stopping):
    """A row's tokens depend on its context and the seed's per-row stream, not on the other rows of its batch."""
    model, tok = stopping
    r = Renderer(tok)
    ctx = [r.initial([{"role": "user", "content": "Who founded Novex" + "?" * i}]) for i in range(5)]
    p = SamplingParams(max_new_tokens=30, seed=11)
    pol = HFPolicy(model, tok)
    batch = pol.generate(ctx, p)
    again = HFPolicy(model, tok, compact_dead_share=0.0).generate(ctx, p)
    assert [s.ids for s in batch] == [s.ids for s in again]
    assert len({len(s.ids) for s in batch}) > 1


def _full_buffer_logprobs(model, input_ids, attn, pos, follow, capacity):
    """Reference: transformers' StaticCache, whose attention spans the whole preallocated buffer (masked)."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=capacity)
    out = []
    with torch.inference_mode():
        o = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, **{_cache_kwarg(model): cache}, use_cache=True)
        logits, nxt = o.logits[:, -1].float(), pos[:, -1:] + 1
        for t in range(follow.shape[1]):
            out.append(torch.log_softmax(logits, -1).gather(-1, follow[:, t: t + 1]))
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1)
            o = model(input_ids=follow[:, t: t + 1], attention_mask=attn, position_ids=nxt, **{_cache_kwarg(model): cache},
                      use_cache=True)
            logits, nxt = o.logits[:, -1].float(), nxt + 1
    return torch.cat(out, dim=1)  # [B, steps]


def test_filled_length_attention_matches_full_buffer(tiny):
    """Decode over the filled columns only, with the longest rows compacted away after 3 steps and attention
    trimmed to the longest live row, gives the log-probs of attention over the whole (masked) buffer."""
    from turngym.agents.kv import new_cache

    model, tok = tiny
    g = torch.Generator().manual_seed(0)
    lens = [40, 31, 25, 18, 9]
    B, S, steps, cap = len(lens), max(lens), 8, max(lens) + 8 + 24  # 24 spare columns never filled
    input_ids = torch.full((B, S), tok.pad_token_id, dtype=torch.long)
    attn = torch.zeros((B, S), dtype=torch.long)
    pos = torch.zeros((B, S), dtype=torch.long)
    for b, n in enumerate(lens):
        input_ids[b, S - n:] = torch.randint(7, len(tok), (n,), generator=g)
        attn[b, S - n:] = 1
        pos[b, S - n:] = torch.arange(n)
    follow = torch.randint(7, len(tok), (B, steps), generator=g)
    ref = _full_buffer_logprobs(model, input_ids, attn, pos, follow, cap)

    cache = new_cache(model, cap)
    got = torch.full((B, steps), float("nan"))
    rows, first, start = list(range(B)), [S - n for n in lens], 0
    with torch.inference_mode():
        o = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, **{_cache_kwarg(model): cache}, use_cache=True)
        logits, nxt = o.logits[:, -1].float(), pos[:, -1:] + 1
        for t in range(steps):
            lp = torch.log_softmax(logits, -1)
            for i, b in enumerate(rows):
                got[b, t] = lp[i, follow[b, t]]
            tok_in = follow[rows, t].clone()  # the token just scored is fed next
            if t == 2:  # rows 0 and 1 (the two longest) finish: compact, trim the leading padding columns
                rows = [-1, -1] + rows[2:]
                rows, tok_in, attn, nxt, start = _compact(cache, rows, tok_in, attn, nxt, first, True)
                assert start == first[2] > 0 and cache.layers[0].kbuf.shape[0] == 3
            if t + 1 == steps:
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1)
            assert cache.layers[0].keys.shape[2] == cache.layers[0].n - start < cap  # never the whole buffer
            o = model(input_ids=tok_in[:, None], attention_mask=attn[:, start:], position_ids=nxt,
                      **{_cache_kwarg(model): cache}, use_cache=True)
            logits, nxt = o.logits[:, -1].float(), nxt + 1
    assert sorted(rows) == [2, 3, 4]
    live = got[2:]  # rows still decoding at the end; rows 0-1 up to their finish
    assert (live - ref[2:]).abs().max() < 1e-5
    assert (got[:2, :3] - ref[:2, :3]).abs().max() < 1e-5


# ----------------------------------------------------------------------------------------------- sampler


def _target(logits: np.ndarray, T: float, top_k: int, top_p: float) -> np.ndarray:
    """Loop reference of the processed distribution (temperature, then top-k, then top-p over the sorted probs)."""
    z = logits.astype(np.float64) / T
    order = sorted(range(len(z)), key=lambda i: -z[i])
    keep = set(order[:top_k]) if top_k else set(order)
    m = max(z[i] for i in keep)
    p = np.array([np.exp(z[i] - m) if i in keep else 0.0 for i in range(len(z))])
    p /= p.sum()
    if top_p < 1.0:
        acc, kept = 0.0, set()
        for i in order:
            if p[i] == 0:
                break
            if acc < top_p:
                kept.add(i)
            acc += p[i]
        p = np.array([p[i] if i in kept else 0.0 for i in range(len(p))])
        p /= p.sum()
    return p


@pytest.mark.parametrize("T,top_k,top_p", [(1.0, 0, 1.0), (0.7, 10, 1.0), (1.3, 0, 0.8), (1.0, 12, 0.9)])
def test_sampler_draws_the_processed_distribution(T, top_k, top_p):
    from scipy.stats import chisquare

    g = torch.Generator().manual_seed(1)
    V, N = 40, 200_000
    logits = torch.randn(V, generator=g) * 2.0  # one fixed logit vector
    p = _target(logits.numpy(), T, top_k, top_p)
    params = SamplingParams(temperature=T, top_k=top_k, top_p=top_p)
    u = torch.rand(N, generator=g, dtype=torch.float64)
    logp = tempered_logprobs(logits, params).expand(N, V)  # what HFPolicy passes: log softmax(logits / T)
    tok = sample_tokens(logits.expand(N, V), params, u, logp=logp)
    counts = np.bincount(tok.numpy(), minlength=V)
    assert counts[p == 0].sum() == 0  # what top-k / top-p drop is never drawn
    expected = p * N
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    assert chisquare(obs, exp).pvalue > 1e-3
    # a wrong distribution (the untempered one) is rejected by the same test
    if T != 1.0:
        q = _target(logits.numpy(), 1.0, top_k, top_p) * N
        both = big & (q >= 5)
        assert chisquare(counts[both], q[both] * counts[both].sum() / q[both].sum()).pvalue < 1e-6


def test_sampler_edges():
    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, -1.0, 9.0]])
    assert sample_tokens(logits, SamplingParams(temperature=0.0)).tolist() == [1, 2]
    assert sample_tokens(logits, SamplingParams(top_k=1), torch.tensor([0.99, 0.0])).tolist() == [1, 2]
    assert sample_tokens(logits, SamplingParams(top_p=1e-9), torch.tensor([1 - 2**-53, 0.5], dtype=torch.float64)).tolist() == [1, 2]
    # u at the top of [0, 1) never lands past the last kept token, u = 0 never on a zero-probability token
    masked = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]])
    assert sample_tokens(masked, SamplingParams(), torch.tensor([1 - 2**-53], dtype=torch.float64)).tolist() == [2]
    assert sample_tokens(masked, SamplingParams(), torch.tensor([0.0])).tolist() == [0]
    with pytest.raises(ValueError, match="needs u"):
        sample_tokens(logits, SamplingParams())
    with pytest.raises(ValueError, match=r"rows \[1\] have no finite"):
        sample_tokens(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), SamplingParams(), torch.tensor([0.5, 0.5]))


def test_prefix_cache_copies_views_out_of_buffers_over_budget():
    """Entries that view a batch buffer keep it alive; over the memory budget they are copied out instead."""
    from turngym.agents.kv import Entry, PrefixCache

    buf = torch.zeros(4, 2, 100, 8)  # [B, H, capacity, D]: 25,600 bytes
    entries = [Entry(ids=list(range(10)), kv=[(buf[b, :, :10], buf[b, :, :10])]) for b in range(4)]
    roomy = PrefixCache(max_bytes=1 << 20)
    roomy.replace(list(entries))
    assert all(e.kv[0][0].untyped_storage().data_ptr() == buf.untyped_storage().data_ptr() for e in roomy.entries)
    tight = PrefixCache(max_bytes=4 * 2 * 640 + 1)  # fits the four entries, not the buffer they view
    tight.replace(list(entries))
    assert len(tight.entries) == 4
    assert all(e.kv[0][0].untyped_storage().nbytes() == 640 for e in tight.entries)
    assert torch.equal(tight.entries[0].kv[0][0], buf[0, :, :10])


def test_compact_dead_share_is_checked(tiny):
    from turngym.errors import ConfigError

    model, tok = tiny
    with pytest.raises(ConfigError, match="compact_dead_share"):
        HFPolicy(model, tok, compact_dead_share=1.5)
