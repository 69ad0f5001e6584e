"""The compiled decode step (`turngym.agents.decode_step`, issue 23): the same tokens and log-probs as the model's
own forward, in batches that compact and over multi-turn rollouts with the prefix cache; grouped-query attention;
the fallback for models it does not support."""

from __future__ import annotations

import random

import pytest
import torch

from turngym.agents.decode_step import DecodeStep, supports
from turngym.agents.policy import HFPolicy, SamplingParams, score_sequence
from turngym.agents.render import Renderer
from turngym.agents.rollout import collect_rollouts
from turngym.errors import ConfigError

ENV_ID = "search/HopQA-v0"
# a stop string the random-init model completes at scattered steps, so rows of a batch finish at different
# times and the decode loop compacts (the model alone almost never emits its end-of-turn token)
PARAMS = SamplingParams(temperature=1.0, max_new_tokens=24, stop=("e",))


def _contexts(n: int, seed: int = 0) -> list[list[int]]:
    rnd = random.Random(seed)
    return [[rnd.randrange(5, 500) for _ in range(rnd.randrange(5, 60))] for _ in range(n)]


def _same(a, b, tol=1e-4):
    assert [s.ids for s in a] == [s.ids for s in b]
    assert [s.finish_reason for s in a] == [s.finish_reason for s in b]
    worst = max(abs(x - y) for s, t in zip(a, b) for x, y in zip(s.logprobs, t.logprobs))
    assert worst <= tol, worst


def test_compiled_decode_gives_the_eager_tokens_and_logprobs(tiny):
    model, tok = tiny
    ctx = _contexts(12)
    eager = HFPolicy(model, tok, seed=3, decode="eager", max_batch_size=8).generate(ctx, PARAMS)
    pol = HFPolicy(model, tok, seed=3, decode="compiled", max_batch_size=8)  # 8 + 4: two batches
    assert pol._step is not None and pol._step.compile
    compiled = pol.generate(ctx, PARAMS)
    _same(eager, compiled)
    assert len({len(s.ids) for s in compiled}) > 3  # rows finished at different steps: the batch compacted
    assert pol.decode_compile_seconds >= 0.0
    # the recorded log-probs are what teacher forcing through the model gives
    for c, s in zip(ctx[:4], compiled[:4]):
        full = score_sequence(model, c + s.ids)
        assert max(abs(x - y) for x, y in zip(full[len(c):], s.logprobs)) <= 1e-4


def test_compiled_decode_over_multi_turn_rollouts_with_the_prefix_cache(tiny):
    """Later turns prefill only their new observation after the cached keys/values of the earlier turns."""
    model, tok = tiny
    params = SamplingParams(temperature=1.0, max_new_tokens=16)
    runs = []
    for decode in ("eager", "compiled"):
        pol = HFPolicy(model, tok, seed=0, decode=decode)
        runs.append(collect_rollouts(ENV_ID, pol, Renderer(tok), seeds=[0, 1], group_size=2, params=params,
                                     max_turns=3))
        assert pol.prefix_cache.hits > 0
    for a, b in zip(*runs):
        assert [t.action_ids for t in a.turns] == [t.action_ids for t in b.turns]
        worst = max(abs(x - y) for ta, tb in zip(a.turns, b.turns) for x, y in zip(ta.logprobs, tb.logprobs))
        assert worst <= 1e-4


def _small_llama(tok, kv_heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("fused", [True, False], ids=["cpu-kernel", "reductions"])
def test_grouped_query_attention_and_both_attention_paths(tiny, fused):
    """Two query heads per key/value head (SmolLM2's layout), an untied output layer; the reductions path is
    the one a GPU compiles. Run uncompiled: the function is the same one `torch.compile` traces."""
    _, tok = tiny
    model = _small_llama(tok, kv_heads=2)
    assert supports(model) is None
    ctx = _contexts(6, seed=1)
    eager = HFPolicy(model, tok, seed=1, decode="eager").generate(ctx, PARAMS)
    pol = HFPolicy(model, tok, seed=1, decode="step")
    assert not pol._step.compile
    pol._step = DecodeStep(model, compile=False, fused_attention=fused)
    _same(eager, pol.generate(ctx, PARAMS))


def test_unsupported_models_fall_back_to_the_eager_forward(tiny):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = tiny
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=256)).eval()
    assert "not 'llama'" in supports(gpt2)
    pol = HFPolicy(gpt2, tok, seed=0, decode="auto")
    assert pol._step is None and pol.decode_compile_seconds == 0.0
    out = pol.generate(_contexts(3), SamplingParams(max_new_tokens=4))
    assert all(len(s.ids) >= 1 for s in out)
    for decode in ("compiled", "step"):
        with pytest.raises(ConfigError, match=f"decode='{decode}' cannot run this model: model type 'gpt2'"):
            HFPolicy(gpt2, tok, decode=decode)
    # a Llama whose output layer has a bias is not supported either
    biased = _small_llama(tok, kv_heads=4)
    biased.lm_head = torch.nn.Linear(64, len(tok), bias=True)
    assert supports(biased) == "the output layer has a bias"
    assert HFPolicy(biased, tok, decode="auto")._step is None
    with pytest.raises(ConfigError, match="decode must be"):
        HFPolicy(biased, tok, decode="fast")


def test_training_with_the_compiled_decode_step_logs_its_compile_time(tmp_path):
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.grpo import train
    from turngym.trainers.runlog import read_metrics

    run = tmp_path / "run"
    cfg = resolve_train_config(None, [
        "env_id=search/HopQA-v0", "model=tiny", "device=cpu", "decode=compiled", "steps=2", "tasks_per_step=2",
        "group_size=2", "minibatch_size=4", "sft_steps=0", "eval_tasks=0", "max_turns=2", "max_new_tokens=12",
        "max_traj_tokens=160", "checkpoint_every=0", "save_trajectories=0", "tensorboard=false", "progress=false",
        "report=false", "torch_threads=1", f"cache_dir={tmp_path / 'cache'}", f"run_dir={run}",
    ])
    assert train(cfg)["steps"] == 2
    first, second = read_metrics(run, kind="train")
    assert first["perf/decode_compile_s"] >= 0.0
    assert second["perf/decode_compile_s"] == first["perf/decode_compile_s"]  # compiled once, in the first step
    with pytest.raises(ConfigError, match="decode"):
        resolve_train_config(None, ["decode=fast"])
