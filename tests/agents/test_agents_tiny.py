"""The tiny default policy: byte-level BPE tokenizer, chat template, sizes, cache, presets."""

from __future__ import annotations

import json

import pytest
import torch

from turngym.agents.tiny import (
    TINY_CHAT_TEMPLATE,
    TINY_SIZES,
    build_tiny_model,
    build_tiny_policy,
    build_tokenizer,
    load_policy_model,
    tiny_cache_path,
)
from turngym.errors import ConfigError, RegistryError

TEXTS = ["Find the founder of Zentrix.", "<search>founder of Zentrix</search>", "<answer>Mira Tal</answer>"] * 10
TOOLS = [{"type": "function", "function": {"name": "search", "description": "Search.", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]


def test_tokenizer_round_trips_any_text_exactly():
    tok = build_tokenizer(TEXTS, vocab_size=400)
    for text in ["Find the founder of Zentrix.", "  two  spaces\n\ttab", "ünïcödé ✓ 数学 🙂", "<|end|> literal", ""]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text


def test_special_tokens_are_single_ids():
    tok = build_tokenizer(TEXTS, vocab_size=400)
    for s in ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>", "<|pad|>"]:
        assert len(tok.encode(s, add_special_tokens=False)) == 1
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>" and tok.padding_side == "left"


def test_chat_template_renders_tools_tool_calls_and_tool_messages():
    tok = build_tokenizer(TEXTS, vocab_size=400)
    msgs = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "x"}}}]},
        {"role": "tool", "name": "search", "content": "doc 1"},
    ]
    text = tok.apply_chat_template(msgs, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|system|>SYS\n\n# Tools\n" + json.dumps(TOOLS[0]))
    assert '<|assistant|><tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call><|end|>\n' in text
    assert "<|tool|>doc 1<|end|>\n" in text
    assert text.endswith("<|assistant|>")
    # string arguments (OpenAI style) are rendered verbatim, not double-encoded
    msgs[2]["tool_calls"][0]["function"]["arguments"] = '{"query": "x"}'
    assert '"arguments": {"query": "x"}}' in tok.apply_chat_template(msgs, tools=TOOLS, tokenize=False)


def test_chat_template_is_prefix_preserving():
    tok = build_tokenizer(TEXTS, vocab_size=400)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A1"}, {"role": "tool", "content": "T1"},
            {"role": "assistant", "content": "A2"}, {"role": "user", "content": "U2"}]
    for k in range(2, len(msgs)):
        short = tok.apply_chat_template(msgs[:k], tools=TOOLS, tokenize=False)
        longer = tok.apply_chat_template(msgs[: k + 1], tools=TOOLS, tokenize=False)
        assert longer.startswith(short)


@pytest.mark.parametrize("size,lo,hi", [("1m", 0.8e6, 3e6), ("3m", 2.5e6, 6e6)])
def test_model_sizes(size, lo, hi):
    tok = build_tokenizer(TEXTS * 50, vocab_size=2048, min_frequency=1)
    model = build_tiny_model(tok, size=size)
    n = sum(p.numel() for p in model.parameters())
    assert lo <= n <= hi, n
    assert model.config.vocab_size == len(tok)


def test_unknown_size_and_missing_source_raise():
    with pytest.raises(RegistryError, match="Did you mean '1m'"):
        TINY_SIZES["1M"]
    with pytest.raises(ConfigError, match="env_id"):
        load_policy_model("tiny")
    with pytest.raises(ConfigError, match="neither a preset"):
        load_policy_model("./no/such/model/dir")


def test_init_is_seeded_and_does_not_touch_global_rng():
    tok = build_tokenizer(TEXTS, vocab_size=400)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_model(tok, seed=0)
    after = torch.rand(1)
    b = build_tiny_model(tok, seed=0)
    c = build_tiny_model(tok, seed=1)
    assert torch.equal(before, after)
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_load_policy_model_caches_by_env_and_size(tmp_path):
    m1, t1 = load_policy_model("tiny", texts=TEXTS, cache_dir=tmp_path)
    dirs = list(tmp_path.iterdir())
    assert len(dirs) == 1 and dirs[0].name.startswith("texts-1m-")
    assert (dirs[0] / "config.json").exists() and (dirs[0] / "tokenizer.json").exists()
    m2, t2 = load_policy_model("tiny", texts=TEXTS, cache_dir=tmp_path)  # from the cache
    assert t2.chat_template == TINY_CHAT_TEMPLATE and t2.get_vocab() == t1.get_vocab()
    for (n1, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(p1, p2), n1
    assert tiny_cache_path("search/HopQA-v0", "1m", tmp_path) != tiny_cache_path("search/HopQA-v0", "3m", tmp_path)
    # a local directory loads like a preset
    m3, t3 = load_policy_model(str(dirs[0]))
    assert t3.get_vocab() == t1.get_vocab() and not m3.training


def test_env_tiny_policy_covers_env_text(tiny):
    model, tok = tiny
    # the env's vocabulary compresses well: the tool call of the expert is a handful of tokens
    ids = tok.encode("<search>founder of Novex</search>", add_special_tokens=False)
    assert len(ids) < 15
    assert 0.8e6 <= sum(p.numel() for p in model.parameters()) <= 3e6


def test_build_tiny_policy_generates():
    model, tok = build_tiny_policy(TEXTS, vocab_size=400)
    x = torch.tensor([tok.encode("Find the", add_special_tokens=False)])
    with torch.no_grad():
        out = model(input_ids=x).logits
    assert out.shape == (1, x.shape[1], len(tok)) and torch.isfinite(out).all()


@pytest.mark.slow
def test_smollm2_preset_loads_offline(smollm2):
    model, tok = smollm2
    assert 100e6 < sum(p.numel() for p in model.parameters()) < 200e6
    assert "<|im_start|>" in tok.chat_template
    x = torch.tensor([tok.encode("The capital of France is", add_special_tokens=False)])
    with torch.no_grad():
        nxt = model(input_ids=x).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "Paris"
