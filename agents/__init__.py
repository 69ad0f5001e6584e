"""Agents: policies (hf, vllm, openai-http, scripted), token-in/token-out chat rendering, the rollout engine.

Typical use::

    from turngym.agents import load_policy_model, Renderer, HFPolicy, SamplingParams, collect_rollouts

    model, tok = load_policy_model("tiny", env_id="search/HopQA-v0")
    trajs = collect_rollouts("search/HopQA-v0", HFPolicy(model, tok), Renderer(tok), seeds=range(8),
                             group_size=4, params=SamplingParams(max_new_tokens=64))
"""

from __future__ import annotations

from turngym.agents.policy import (
    POLICIES,
    HFPolicy,
    OpenAIPolicy,
    Policy,
    Sample,
    SamplingParams,
    ScriptedPolicy,
    VLLMPolicy,
    score_sequence,
)
from turngym.agents.render import Renderer
from turngym.agents.rollout import SAMPLERS, RolloutEngine, RolloutStats, collect_rollouts
from turngym.agents.tiny import (
    MODEL_PRESETS,
    TINY_SIZES,
    build_tiny_policy,
    build_tokenizer,
    load_policy_model,
)

__all__ = [
    "MODEL_PRESETS",
    "POLICIES",
    "SAMPLERS",
    "TINY_SIZES",
    "HFPolicy",
    "OpenAIPolicy",
    "Policy",
    "Renderer",
    "RolloutEngine",
    "RolloutStats",
    "Sample",
    "SamplingParams",
    "ScriptedPolicy",
    "VLLMPolicy",
    "build_tiny_policy",
    "build_tokenizer",
    "collect_rollouts",
    "load_policy_model",
    "score_sequence",
]
