"""A tempered policy is trained as itself: with ``temperature != 1`` the trainer scores old, new and reference
log-probs of ``softmax(logits / temperature)`` (the distribution the rollouts sampled from), not the raw model's."""

from __future__ import annotations

import pytest
import torch

from turngym.errors import ConfigError
from turngym.trainers.config import TrainConfig


def cfg_of(tmp_path, **kw) -> TrainConfig:
    base = {"env_id": "search/HopQA-v0", "model": "tiny", "model_size": "1m", "credit": "grpo", "steps": 1,
            "tasks_per_step": 2, "group_size": 2, "minibatch_size": 4, "sft_steps": 0, "eval_tasks": 2,
            "max_new_tokens": 12, "max_traj_tokens": 96, "torch_threads": 1, "device": "cpu", "kl_coef": 0.1,
            "cache_dir": str(tmp_path / "models"), "run_dir": str(tmp_path / "run"), "progress": False}
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_rollout_batch_scores_the_tempered_policy(tmp_path, temperature):
    from turngym.trainers import common, grpo
    from turngym.trainers.forward import batch_logprobs, chunk_logprobs, iter_chunks

    cfg = cfg_of(tmp_path, temperature=temperature)
    s = common.setup(cfg)
    ref = common.setup(cfg).model
    _trajs, batch, _m = grpo.rollout_batch(cfg, s, 0, [], ref_model=ref)
    mask = batch.action_mask
    raw = batch_logprobs(s.model, batch)
    tempered = batch_logprobs(s.model, batch, temperature=temperature)
    assert torch.allclose(batch.old_logprobs[mask], tempered[mask], atol=1e-5)
    assert torch.allclose(batch.ref_logprobs[mask], tempered[mask], atol=1e-5)  # same weights as the policy
    if temperature != 1.0:
        assert (batch.old_logprobs[mask] - raw[mask]).abs().max() > 1e-2
        # and the tempered log-probs are a proper distribution's: log softmax(logits / T) at the sampled ids
        chunk = next(iter_chunks(batch, torch.arange(batch.batch_size), 4))
        logp, _, _ = chunk_logprobs(s.model, chunk, temperature=temperature)
        logits = s.model(input_ids=chunk.input_ids, attention_mask=chunk.attention_mask,
                         position_ids=chunk.position_ids).logits[:, chunk.p - 1: chunk.p - 1 + chunk.length]
        want = torch.log_softmax(logits.float() / temperature, -1).gather(
            -1, chunk.input_ids[:, chunk.p: chunk.p + chunk.length, None])[..., 0]
        m = batch.action_mask[chunk.rows, : chunk.length]
        assert torch.allclose(logp[m], want[m], atol=1e-5)
    else:  # at temperature 1 the sampler's own log-probs are kept, and they match teacher forcing
        assert torch.allclose(batch.old_logprobs[mask], raw[mask], atol=1e-4)


def test_async_with_temperature_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"temperature=0.7.*Fix: temperature=1.0, or max_staleness=0"):
        cfg_of(tmp_path, temperature=0.7, max_staleness=1)
    assert not (tmp_path / "run").exists()
