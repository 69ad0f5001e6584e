"""The trainers on a CUDA device: GRPO and PPO steps in bf16, LoRA, the packed probe scorer and packed log-probs.

Every test here needs a CUDA GPU and is skipped without one (CI is CPU only). Each is small: the 1m tiny policy,
a few trajectories, one or two RL steps, no warm start unless the check needs a policy that is not uniform.

A random-init tiny policy almost never succeeds, so every outcome would be 0 and every outcome-based advantage
exactly 0 (nothing to learn). The RL runs therefore switch on DAPO's overlong shaping with a buffer spanning almost
the whole budget, as ``tests/trainers/test_methods_train.py`` does: a trajectory's reward then depends on its
length, a group's rollouts get different rewards, and the advantages are not all 0, so the weights must move.

The trainer's ``policy_setup.setup`` is wrapped (`spy_setup`) to keep the `Setup` it builds and a copy of the initial
weights, so a test can check the dtype and device of the very model that was trained and how its weights moved.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

#: Where the trained models live, and the dtype ``dtype="auto"`` must pick there ("auto is bfloat16 on GPU").
DEVICE = "cuda"
AUTO_DTYPE = torch.bfloat16

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is False); run on a GPU machine"),
]

ENV = "search/HopQA-v0"

#: Shared key=value overrides: the tiny policy, no warm start, 8 trajectories per step, overlong shaping.
TINY_RL = [
    f"env_id={ENV}", "model=tiny", "model_size=1m", f"device={DEVICE}", "dtype=auto",
    "tasks_per_step=2", "group_size=4", "minibatch_size=8", "grad_accum=1", "ppo_epochs=1",
    "pretrain_steps=0", "sft_steps=0", "eval_tasks=2", "eval_every=0", "eval_temperature=1.0",
    "max_turns=3", "max_new_tokens=40", "max_traj_tokens=512", "overlong_buffer=500",
    "checkpoint_every=0", "keep_checkpoints=2", "save_trajectories=0", "tensorboard=false", "progress=false",
    "report=false", "seed=1", "lr=1e-3", "dynamic_sampling=false",
]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> str:
    """One tiny-model cache for the module: the tokenizer and the random-init model are built once."""
    return str(tmp_path_factory.mktemp("tiny-cache"))


@pytest.fixture
def spy_setup(monkeypatch):
    """Wrap ``policy_setup.setup``: the returned dict gets ``setup`` (the trainer's `Setup`) and ``init`` (a CPU copy
    of every named parameter as built, i.e. before any training), plus ``critic`` when PPO builds one."""
    from turngym.trainers import policy_setup, ppo

    box: dict = {}
    real_setup, real_critic = policy_setup.setup, ppo.build_critic

    def setup(cfg):
        s = real_setup(cfg)
        box["setup"] = s
        box["init"] = {n: p.detach().to("cpu", copy=True) for n, p in s.model.named_parameters()}
        return s

    def build_critic(kind, policy):
        box["critic"] = real_critic(kind, policy)
        return box["critic"]

    monkeypatch.setattr(policy_setup, "setup", setup)
    monkeypatch.setattr(ppo, "build_critic", build_critic)
    return box


def moved(init: dict[str, torch.Tensor], model) -> dict[str, bool]:
    """Parameter name -> whether it differs from its initial value."""
    now = dict(model.named_parameters())
    assert now.keys() == init.keys()
    return {n: not torch.equal(init[n], now[n].detach().cpu()) for n in init}


def check_trained_model(box: dict) -> None:
    """The trained model is on the device in the auto dtype, all weights finite, and some of them moved."""
    model = box["setup"].model
    params = dict(model.named_parameters())
    wrong = {n: (str(p.dtype), p.device.type) for n, p in params.items()
             if p.dtype != AUTO_DTYPE or p.device.type != DEVICE}
    assert not wrong, f"parameters not {AUTO_DTYPE} on {DEVICE}: {sorted(wrong.items())[:5]}"
    assert box["setup"].device.type == DEVICE
    assert all(bool(torch.isfinite(p).all()) for p in params.values())
    changed = [n for n, c in moved(box["init"], model).items() if c]
    assert changed, "no parameter changed in the RL steps"


# --------------------------------------------------------------------------- a. GRPO


def test_grpo_two_steps_bf16(tmp_path, model_cache, spy_setup, check_train_lines):
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.grpo import train

    run_dir = tmp_path / "run"
    cfg = resolve_train_config("default", [*TINY_RL, "algo=grpo", "credit=a2tgpo", "steps=2",
                                           f"cache_dir={model_cache}", f"run_dir={run_dir}"])
    assert (cfg.device, cfg.dtype, cfg.sft_steps, cfg.pretrain_steps) == (DEVICE, "auto", 0, 0)
    summary = train(cfg)
    assert summary["steps"] == 2
    check_train_lines(run_dir, 2, "grpo")
    check_trained_model(spy_setup)


# --------------------------------------------------------------------------- b. PPO


def test_ppo_two_steps_bf16(tmp_path, model_cache, spy_setup, check_train_lines):
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.ppo import train

    run_dir = tmp_path / "run"
    cfg = resolve_train_config("ppo", [*TINY_RL, "steps=2", "critic_lr=2e-3", "value_clip=10.0",
                                       f"cache_dir={model_cache}", f"run_dir={run_dir}"])
    assert (cfg.algo, cfg.credit, cfg.critic) == ("ppo", "gae", "head")
    summary = train(cfg)
    assert summary["steps"] == 2
    lines = check_train_lines(run_dir, 2, "ppo")
    assert all(math.isfinite(d.get("train/value_loss", math.nan)) for d in lines)
    check_trained_model(spy_setup)
    head = spy_setup["critic"].value_head
    assert head.weight.device.type == DEVICE
    assert head.weight.dtype == torch.float32  # the value head runs in fp32 on a bf16 trunk
    assert bool(head.weight.abs().gt(0).any()), "the value head (zero-initialised) did not move"


# --------------------------------------------------------------------------- c. packed probe scorer


def _direct(model, ctx, cont) -> list[float]:
    """Log-probs of ``cont`` after ``ctx`` by one plain forward of ``ctx + cont`` (no packing, no mask)."""
    from turngym.trainers.losses import token_logprobs

    device = next(model.parameters()).device
    ids = torch.tensor([list(ctx) + list(cont)], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
    n = len(ctx)
    return token_logprobs(logits[n - 1: n - 1 + len(cont)], torch.tensor(cont, device=device)).tolist()


def test_probe_scorer_cuda_fp32_matches_cpu(nested_probes):
    from turngym.agents.tiny import build_tiny_policy
    from turngym.trainers.probe import probe_scorer

    texts = [f"the country of city{i} is land{i % 7}. <answer> land{i % 7} </answer>" for i in range(200)]
    cpu_model, tok = build_tiny_policy(texts, vocab_size=300, seed=3)
    cpu_model = cpu_model.float().eval()
    with torch.no_grad():  # sharper than a random init, so the log-probs spread over several nats
        cpu_model.get_input_embeddings().weight.mul_(8.0)
    gpu_model = copy.deepcopy(cpu_model).to(DEVICE)
    assert next(gpu_model.parameters()).dtype == torch.float32

    contexts, conts = nested_probes(np.random.default_rng(0), cpu_model.config.vocab_size, 6, (30, 80))

    pad = tok.pad_token_id
    on_gpu = probe_scorer(gpu_model, pad, batch_size=4)(contexts, conts)
    on_cpu = probe_scorer(cpu_model, pad, batch_size=4)(contexts, conts)
    assert [len(g) for g in on_gpu] == [len(c) for c in conts]
    flat_gpu, flat_cpu = np.concatenate(on_gpu), np.concatenate(on_cpu)
    assert np.isfinite(flat_gpu).all()
    assert flat_cpu.std() > 0.5, f"log-probs barely vary (std {flat_cpu.std():.3f}): the comparison is vacuous"
    np.testing.assert_allclose(flat_gpu, flat_cpu, atol=1e-4, rtol=0)
    for ctx, cont, g in zip(contexts, conts, on_gpu):  # and each equals an unpacked forward on the GPU
        np.testing.assert_allclose(g, _direct(gpu_model, ctx, cont), atol=1e-4, rtol=0)
    assert len({round(g[0], 3) for g in on_gpu[:3]}) > 1  # different prefixes give different scores


# --------------------------------------------------------------------------- d. LoRA


def test_lora_grpo_step_moves_only_adapters(tmp_path, model_cache, spy_setup, check_train_lines):
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.grpo import train

    run_dir = tmp_path / "run"
    cfg = resolve_train_config("default", [*TINY_RL, "algo=grpo", "credit=grpo", "steps=1", "lora=true",
                                           "lora_r=8", "lora_alpha=16", f"cache_dir={model_cache}",
                                           f"run_dir={run_dir}"])
    assert cfg.lora
    summary = train(cfg)
    assert summary["steps"] == 1
    check_train_lines(run_dir, 1, "lora")

    model = spy_setup["setup"].model
    params = dict(model.named_parameters())
    lora = {n for n in params if "lora_" in n}
    assert lora, f"no LoRA parameters in the model: {sorted(params)[:5]}"
    assert {n for n, p in params.items() if p.requires_grad} == lora
    base = [p for n, p in params.items() if n not in lora]
    assert base and all(p.dtype == AUTO_DTYPE and p.device.type == DEVICE for p in base)
    assert all(p.device.type == DEVICE for n, p in params.items() if n in lora)
    changed = moved(spy_setup["init"], model)
    assert not [n for n in params if n not in lora and changed[n]], "a frozen base weight changed"
    assert any(changed[n] for n in lora), "no LoRA adapter changed in one step"
    assert all(bool(torch.isfinite(params[n]).all()) for n in lora)


# --------------------------------------------------------------------------- e. packed log-probs in bf16


def test_batch_logprobs_bf16_cuda_close_to_fp32_cpu(tmp_path, model_cache):
    from turngym.credit import GroupBatch
    from turngym.trainers import policy_setup, sampling
    from turngym.trainers.config import TrainConfig
    from turngym.trainers.forward import batch_logprobs

    cfg = TrainConfig(env_id=ENV, env_kwargs={"topk": 1}, model="tiny", model_size="1m", device=DEVICE,
                      dtype="float32", cache_dir=model_cache, seed=0, pretrain_steps=40, pretrain_lr=3e-3,
                      sft_steps=20, sft_lr=2e-3, sft_episodes=32, sft_batch_size=8, max_turns=3,
                      max_new_tokens=40, max_traj_tokens=512, tasks_per_step=2, group_size=4, minibatch_size=8)
    s = policy_setup.setup(cfg)
    policy_setup.warm_start(cfg, s, lambda _m: None)  # a short warm start: a policy whose log-probs are not uniform
    trajs, _ = sampling.rollout(cfg, s, [3, 4], 4, sample_seed=5)
    batch = GroupBatch.from_trajectories(trajs, pad_id=s.pad_id)
    mask = batch.action_mask
    assert int(mask.sum()) > 20, f"only {int(mask.sum())} policy tokens in the rollout"

    cpu_model = copy.deepcopy(s.model).to("cpu").float().eval()
    bf16_model = copy.deepcopy(s.model).to(torch.bfloat16).eval()
    assert next(bf16_model.parameters()).device.type == DEVICE
    ref = batch_logprobs(cpu_model, batch)  # fp32 CPU, [B, L]
    got = batch_logprobs(bf16_model, batch.to(DEVICE)).cpu()
    fp32_dev = batch_logprobs(s.model, batch.to(DEVICE)).cpu()

    assert torch.isfinite(got[mask]).all()
    assert float(ref[mask].std()) > 0.3, f"log-probs barely vary (std {float(ref[mask].std()):.3f})"
    # the sampler's recorded log-probs (fp32 on the device) are the teacher-forced ones (token in, token out)
    assert batch.old_logprobs is not None
    sampler_gap = float((batch.old_logprobs[mask] - ref[mask]).abs().max())
    assert sampler_gap < 1e-3, f"sampler log-probs vs teacher-forced fp32 CPU: max abs diff {sampler_gap:.2e}"
    fp32_gap = float((fp32_dev[mask] - ref[mask]).abs().max())
    assert fp32_gap < 1e-3, f"fp32 {DEVICE} vs fp32 CPU: max abs diff {fp32_gap:.2e}"
    gap = (got[mask] - ref[mask]).abs()
    assert float(gap.mean()) < 0.05, f"bf16 {DEVICE} vs fp32 CPU: mean abs diff {float(gap.mean()):.4f}"
    assert float(gap.max()) > 0, "bf16 log-probs equal fp32 exactly: the bf16 copy did not run in bf16"
