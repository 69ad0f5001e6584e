"""Prefix-shared probe scoring gives the log-probs of scoring each context + continuation on its own."""

import numpy as np
import pytest
import torch

from turngym.agents.tiny import build_tiny_policy
from turngym.trainers.losses import token_logprobs
from turngym.trainers.probe import prefix_families, probe_scorer


@pytest.fixture(scope="module")
def model_and_pad():
    texts = [f"the country of city{i} is land{i % 7}. <answer> land{i % 7} </answer>" for i in range(200)]
    model, tok = build_tiny_policy(texts, vocab_size=300, seed=3)
    return model.eval(), tok.pad_token_id


def direct(model, ctx, cont):
    ids = torch.tensor([list(ctx) + list(cont)])
    logits = model(input_ids=ids, use_cache=False).logits[0].float()
    n = len(ctx)
    return token_logprobs(logits[n - 1: n - 1 + len(cont)], torch.tensor(cont)).tolist()


def test_families_group_prefixes_and_keep_strangers_apart():
    a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    ctx = [a[:4], a, [9, 9, 9], a[:9], [1, 2, 3, 5], a[:4]]
    fams = dict(prefix_families(ctx))
    assert fams[1] == [1, 3, 0, 5]  # longest first, then each prefix of it (a duplicate joins too)
    assert fams[2] == [2] and fams[4] == [4]
    assert sorted(i for m in fams.values() for i in m) == list(range(len(ctx)))


def test_scores_equal_separate_forwards(model_and_pad, nested_probes):
    model, pad = model_and_pad
    contexts, conts = nested_probes(np.random.default_rng(0), model.config.vocab_size, 5, (30, 60))
    contexts.append([8, 9, 10])  # an empty continuation scores nothing
    conts.append([])
    got = probe_scorer(model, pad, batch_size=2)(contexts, conts)
    assert [len(g) for g in got] == [len(c) for c in conts]
    for ctx, cont, g in zip(contexts, conts, got):
        if cont:
            np.testing.assert_allclose(g, direct(model, ctx, cont), atol=1e-4)
    assert len({round(g[0], 4) for g in got[:3]}) > 1  # different prefixes give different scores
