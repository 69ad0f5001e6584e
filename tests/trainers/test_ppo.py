"""PPO trainer and critics: value loss on a fixed batch, value packing, CLI dispatch, end to end with resume.

The fixed batch is real data: noisy scripted-expert episodes on HopQA (mixed successes, so the returns are not
all equal) rendered by the tiny model's renderer, scored by the tiny policy.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from turngym.credit import GroupBatch, assign_credit
from turngym.errors import ConfigError
from turngym.trainers.checkpoint import checkpoint_dirs, load_checkpoint
from turngym.trainers.config import TrainConfig, resolve_train_config
from turngym.trainers.critic import CRITICS, HeadCritic, build_critic
from turngym.trainers.forward import batch_logprobs
from turngym.trainers.losses import value_loss
from turngym.trainers.runlog import read_metrics

ENV = "search/HopQA-v0"


@pytest.fixture(scope="module")
def tiny(tiny_hopqa):
    """(model, tokenizer, renderer, cache_dir) of the 1m tiny policy, built once per module."""
    return tiny_hopqa


@pytest.fixture(scope="module")
def fixed_batch(tiny) -> GroupBatch:
    """8 noisy expert episodes (2 tasks x 4) with behaviour log-probs from the tiny policy."""
    from turngym.trainers.sft import collect_demonstrations

    model, tok, renderer, _ = tiny
    seeds = [s for s in (11, 12) for _ in range(4)]
    trajs = collect_demonstrations(ENV, tok, renderer, seeds, noise=0.5, seed=5, max_new_tokens=48,
                                   max_traj_tokens=384)
    for i, t in enumerate(trajs):  # groups of 4 by task (collect_demonstrations uses group_size=1)
        t.group_id = f"{ENV}:{seeds[i]}"
    batch = GroupBatch.from_trajectories(trajs, pad_id=tok.pad_token_id or 0)
    batch.old_logprobs = batch_logprobs(model, batch)
    outcomes = batch.outcome.tolist()
    assert min(outcomes) < max(outcomes), f"need mixed outcomes for a non-trivial value target, got {outcomes}"
    return batch


def tiny_cfg(**kw) -> TrainConfig:
    base = {"algo": "ppo", "credit": "gae", "group_size": 4, "tasks_per_step": 2, "minibatch_size": 8,
            "ppo_epochs": 1, "lr": 1e-5, "critic_lr": 2e-3, "seed": 0, "eps_low": 0.2, "eps_high": 0.2,
            "value_coef": 1.0, "value_clip": 10.0}
    return TrainConfig(**(base | kw))


def unclipped_value_mse(critic, model, batch, returns) -> float:
    values = critic.batch_values(model, batch)
    loss, _ = value_loss(values, values, returns, batch.action_mask, clip_eps=None)
    return float(loss)


@pytest.mark.parametrize("kind", ["head", pytest.param("separate", marks=pytest.mark.slow)])
def test_value_loss_decreases_on_fixed_batch(kind, tiny, fixed_batch):
    import copy

    from turngym.trainers.ppo import make_optimizer
    from turngym.trainers.update import update

    model = copy.deepcopy(tiny[0])
    torch.manual_seed(0)
    cfg = tiny_cfg(critic=kind)
    critic = build_critic(kind, model)
    optimizer = make_optimizer(cfg, model, critic)
    batch = fixed_batch
    batch.values = critic.batch_values(model, batch)  # V_old, fixed for every epoch
    out = assign_credit("gae", batch, gamma=cfg.gamma, lam=cfg.gae_lambda)
    assert out.returns is not None and bool(out.returns[batch.action_mask].abs().gt(0).any())

    start = unclipped_value_mse(critic, model, batch, out.returns)
    logged = []
    for _ in range(8):  # same batch, same targets
        critic.train()
        m = update(cfg, model, optimizer, batch, out, critic=critic)
        logged.append(m["train/value_loss"])
    end = unclipped_value_mse(critic, model, batch, out.returns)

    assert all(math.isfinite(v) for v in logged)
    assert start > 0
    assert end < 0.8 * start, f"{kind}: value MSE {start:.4f} -> {end:.4f} on a fixed batch"
    assert logged[-1] < logged[0], f"{kind}: logged value loss {logged[0]:.4f} -> {logged[-1]:.4f}"


@pytest.mark.parametrize("kind", ["head", "separate"])
def test_batch_values_policy_tokens_only_and_chunk_invariant(kind, tiny, fixed_batch):
    model = tiny[0]
    critic = build_critic(kind, model)
    torch.nn.init.normal_(critic.value_head.weight, std=0.5)  # non-zero values to compare
    v1 = critic.batch_values(model, fixed_batch, chunk_size=1)  # [B, L], no padding inside a chunk
    v16 = critic.batch_values(model, fixed_batch, chunk_size=16)  # padded, length-sorted chunks
    mask = fixed_batch.action_mask
    assert v1.shape == mask.shape
    assert torch.all(v1[~mask] == 0) and torch.all(v16[~mask] == 0)
    assert bool(v1[mask].abs().gt(0).all())
    torch.testing.assert_close(v1, v16, atol=1e-4, rtol=1e-4)


def test_head_critic_trains_only_its_head_and_reads_policy_hidden(tiny):
    model = tiny[0]
    critic = build_critic("head", model)
    assert isinstance(critic, HeadCritic) and critic.uses_policy_hidden
    assert [n for n, _ in critic.named_parameters()] == ["value_head.weight", "value_head.bias"]
    with pytest.raises(ValueError, match="hidden states"):
        critic(None, None)
    assert set(CRITICS.names()) == {"head", "separate"}


def test_separate_critic_shares_no_parameter_with_policy(tiny):
    from turngym.trainers.ppo import make_optimizer

    model = tiny[0]
    critic = build_critic("separate", model)
    policy_ids = {id(p) for p in model.parameters()}
    assert not policy_ids & {id(p) for p in critic.parameters()}
    opt = make_optimizer(tiny_cfg(critic="separate", lr=1e-4, critic_lr=5e-4), model, critic)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 5e-4]
    assert sum(p.numel() for p in opt.param_groups[1]["params"]) == sum(p.numel() for p in critic.parameters())


def test_cli_dispatches_ppo_and_rejects_critic_free_credit():
    from turngym.cli import TRAINERS
    from turngym.trainers import ppo

    module, fn = TRAINERS["ppo"].split(":")
    assert module == "turngym.trainers.ppo" and getattr(ppo, fn) is ppo.train
    with pytest.raises(ConfigError, match="credit=gae"):
        ppo.train(TrainConfig(algo="ppo", credit="grpo"))  # fails before building anything
    assert ppo.credit_options(TrainConfig(algo="ppo", credit="gae", gamma=0.9, gae_lambda=0.8,
                                          credit_overrides={"lam": 0.5})) == {"gamma": 0.9, "lam": 0.5}
    kl = ppo.credit_options(TrainConfig(algo="ppo", credit="gae", kl_coef=0.1, kl_in_reward=True, kl_type="k3+"))
    assert kl["kl_coef"] == 0.1 and kl["kl_type"] == "k3"


@pytest.mark.slow
def test_ppo_separate_critic_end_to_end_and_resume(tmp_path: Path, tiny):
    """Warm start, 1 PPO step with a separate critic and KL in the reward, then resume to step 2."""
    from turngym.trainers.ppo import train

    run_dir = tmp_path / "run"
    args = [
        f"env_id={ENV}", "algo=ppo", "credit=ppo-bad", "critic=separate", "critic_lr=1e-3", "kl_coef=0.01",
        "kl_in_reward=true", "steps=1", "tasks_per_step=2", "group_size=2", "minibatch_size=4", "sft_steps=2",
        "sft_episodes=4", "sft_batch_size=2", "eval_tasks=2", "max_turns=2", "max_new_tokens=16",
        "max_traj_tokens=512", "overlong_buffer=500", "checkpoint_every=1", "keep_checkpoints=3",
        "save_trajectories=0", "tensorboard=false", "progress=false", "report=false", "torch_threads=1",
        f"cache_dir={tiny[3]}", f"run_dir={run_dir}",
    ]
    summary = train(resolve_train_config("ppo-bad", args))
    assert summary["steps"] == 1 and summary["critic"] == "separate"
    assert [d["step"] for d in read_metrics(run_dir, kind="sft")][-1] == 0
    first = load_checkpoint(checkpoint_dirs(run_dir)[-1])
    assert first.step == 1
    assert any(k.startswith("critic.trunk.") for k in first.model_state)
    assert any(k.startswith("policy.") for k in first.model_state)

    summary = train(resolve_train_config(None, ["steps=2"], resume_dir=str(run_dir)))
    lines = read_metrics(run_dir, kind="train")
    assert [d["step"] for d in lines] == [1, 2]
    for d in lines:
        assert math.isfinite(d["train/loss"]) and math.isfinite(d["train/value_loss"])
        assert d["train/critic_lr"] == 1e-3
    last = load_checkpoint(checkpoint_dirs(run_dir)[-1])
    assert last.step == 2
    moved = [k for k in last.model_state if k.startswith("critic.") and
             not torch.equal(last.model_state[k], first.model_state[k])]
    assert moved, "the resumed step did not update the restored critic"
