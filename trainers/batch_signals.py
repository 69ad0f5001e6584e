"""What goes into a step's batch besides the trajectories: the signal providers a credit method declares
(`signal_providers`, built from `signal_context`: the probe scorer, the env's answer template, the LLM judge), the
token features it declares (`token_features`; DelTA's ``"hidden"`` is registered here), and DAPO's overlong shaping of
the outcome."""

from __future__ import annotations

from typing import Any

import torch

from turngym.credit.signals import SignalContext, register_token_feature
from turngym.trainers.config import TrainConfig
from turngym.trainers.policy_setup import Setup

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
