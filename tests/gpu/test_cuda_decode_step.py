"""The compiled decode step on a CUDA device (issue 23): the same tokens and log-probs as the model's forward.

Skipped without a CUDA GPU (CI is CPU only). On CUDA the step runs its reductions attention path through
inductor's Triton kernels."""

from __future__ import annotations

import random

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is False); run on a GPU machine"),
]


def test_compiled_decode_on_cuda_matches_eager(tmp_path):
    from turngym.agents import HFPolicy, SamplingParams, load_policy_model

    model, tok = load_policy_model("tiny", env_id="search/HopQA-v0", cache_dir=str(tmp_path), device="cuda")
    rnd = random.Random(0)
    ctx = [[rnd.randrange(5, 500) for _ in range(rnd.randrange(5, 60))] for _ in range(16)]
    params = SamplingParams(temperature=1.0, max_new_tokens=24, stop=("e",))
    eager = HFPolicy(model, tok, seed=0, decode="eager").generate(ctx, params)
    pol = HFPolicy(model, tok, seed=0, decode="compiled")
    assert not pol._step.fused
    out = pol.generate(ctx, params)
    assert [s.ids for s in out] == [s.ids for s in eager]
    assert max(abs(x - y) for a, b in zip(out, eager) for x, y in zip(a.logprobs, b.logprobs)) <= 1e-4
