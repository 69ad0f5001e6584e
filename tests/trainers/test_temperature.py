"""A tempered policy is trained as itself, through one temperature path: the sampler records the log-probs of
``softmax(logits / temperature)`` (the distribution the rollouts sampled from), the trainer keeps them as the old
policy at any temperature (no rescoring), scores new and reference log-probs at the same temperature, and async
rollouts run at any temperature."""

from __future__ import annotations

import math

import pytest
import torch

from turngym.credit import GroupBatch
from turngym.trainers.config import TrainConfig


def cfg_of(tmp_path, **kw) -> TrainConfig:
    base = {"env_id": "search/HopQA-v0", "model": "tiny", "model_size": "1m", "credit": "grpo", "steps": 1,
            "tasks_per_step": 2, "group_size": 2, "minibatch_size": 4, "sft_steps": 0, "eval_tasks": 2,
            "max_new_tokens": 12, "max_traj_tokens": 96, "torch_threads": 1, "device": "cpu", "kl_coef": 0.1,
            "cache_dir": str(tmp_path / "models"), "run_dir": str(tmp_path / "run"), "progress": False}
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_rollout_batch_keeps_the_samplers_tempered_logprobs(tmp_path, temperature, monkeypatch):
    from turngym.trainers import forward, grpo, policy_setup

    cfg = cfg_of(tmp_path, temperature=temperature)
    s = policy_setup.setup(cfg)
    ref = policy_setup.setup(cfg).model
    calls: list[object] = []

    def counting(model, batch, *a, **kw):
        calls.append(model)
        return forward.batch_logprobs(model, batch, *a, **kw)

    monkeypatch.setattr(grpo, "batch_logprobs", counting)
    trajs, batch, _m = grpo.rollout_batch(cfg, s, 0, [], ref_model=ref)
    assert calls == [ref]  # only the KL reference is scored: the old log-probs are the sampler's, never rescored
    sampler = GroupBatch.from_trajectories(trajs, pad_id=s.pad_id).old_logprobs
    assert torch.equal(batch.old_logprobs.cpu(), sampler)
    mask = batch.action_mask
    raw = forward.batch_logprobs(s.model, batch)
    tempered = forward.batch_logprobs(s.model, batch, temperature=temperature)
    assert torch.allclose(batch.old_logprobs[mask], tempered[mask], atol=1e-4)  # sampler == teacher forcing at T
    assert torch.allclose(batch.ref_logprobs[mask], tempered[mask], atol=1e-5)  # same weights as the policy
    if temperature != 1.0:
        assert (batch.old_logprobs[mask] - raw[mask]).abs().max() > 1e-2
        # and the tempered log-probs are a proper distribution's: log softmax(logits / T) at the sampled ids
        chunk = next(forward.iter_chunks(batch, torch.arange(batch.batch_size), 4))
        logp, _, _ = forward.chunk_logprobs(s.model, chunk, temperature=temperature)
        logits = s.model(input_ids=chunk.input_ids, attention_mask=chunk.attention_mask,
                         position_ids=chunk.position_ids).logits[:, chunk.p - 1: chunk.p - 1 + chunk.length]
        want = torch.log_softmax(logits.float() / temperature, -1).gather(
            -1, chunk.input_ids[:, chunk.p: chunk.p + chunk.length, None])[..., 0]
        m = batch.action_mask[chunk.rows, : chunk.length]
        assert torch.allclose(logp[m], want[m], atol=1e-5)


def test_rollout_batch_rescores_at_the_temperature_when_the_sampler_gave_none(tmp_path, monkeypatch):
    from turngym.trainers import forward, grpo, policy_setup

    cfg = cfg_of(tmp_path, temperature=0.5, kl_coef=0.0)
    s = policy_setup.setup(cfg)
    real_sample = grpo.sample

    def without_logprobs(*a, **kw):
        trajs, extra = real_sample(*a, **kw)
        for t in trajs:
            for turn in t.turns:
                turn.logprobs = []
        return trajs, extra

    monkeypatch.setattr(grpo, "sample", without_logprobs)
    _trajs, batch, _m = grpo.rollout_batch(cfg, s, 0, [])
    mask = batch.action_mask
    want = forward.batch_logprobs(s.model, batch, temperature=0.5)
    assert torch.allclose(batch.old_logprobs[mask], want[mask], atol=1e-6)


def test_async_accepts_any_temperature_and_trains_two_steps(tmp_path):
    """max_staleness=1 at temperature 0.7: the config is accepted, 2 GRPO steps run, and the fresh batch's ratio
    starts at 1 (the behaviour log-probs are the tempered policy's, as the learner scores them)."""
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.grpo import train
    from turngym.trainers.runlog import read_metrics

    run = tmp_path / "run"
    cfg = resolve_train_config(None, [
        "env_id=search/HopQA-v0", "model=tiny", "model_size=1m", "device=cpu", "tasks_per_step=2", "group_size=2",
        "minibatch_size=4", "ppo_epochs=1", "sft_steps=0", "eval_tasks=2", "max_turns=2", "max_new_tokens=16",
        "max_traj_tokens=256", "save_trajectories=0", "tensorboard=false", "progress=false", "report=false",
        "torch_threads=1", "seed=0", "lr=1e-3", "entropy_coef=0.05", "algo=grpo", "credit=grpo",
        f"cache_dir={tmp_path / 'models'}", f"run_dir={run}", "steps=2", "max_staleness=1", "checkpoint_every=0",
        "temperature=0.7"])
    assert cfg.temperature == 0.7 and cfg.max_staleness == 1
    assert train(cfg)["steps"] == 2
    lines = read_metrics(run, kind="train")
    assert [d["step"] for d in lines] == [1, 2]
    for d in lines:
        assert math.isfinite(d["train/loss"]) and d["async/staleness_max"] <= 1
    assert lines[0]["async/staleness_max"] == 0 and lines[0]["train/approx_kl"] < 1e-6, lines[0]
