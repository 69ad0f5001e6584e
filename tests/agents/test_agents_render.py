"""Renderer: incremental token-in/token-out rendering equals the template's full rendering."""

from __future__ import annotations

import pytest

from turngym.agents.render import Renderer
from turngym.agents.tiny import build_tokenizer
from turngym.errors import RenderError

TEXTS = ["Find the founder of Zentrix.", "<search>founder of Zentrix</search>", "<answer>Mira Tal</answer>"] * 10
TOOLS = [{"type": "function", "function": {"name": "search", "description": "Search.", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]
PROMPT = [{"role": "system", "content": "Answer with tools."}, {"role": "user", "content": "Who founded Zentrix?"}]
ACTIONS = ["<search>founder of Zentrix</search>", "<search>x</search> and more", "<answer>Mira Tal</answer>"]
OBS = [
    [{"role": "tool", "name": "search", "content": "[1] Zentrix: The founder of Zentrix is Mira Tal."}],
    [{"role": "tool", "name": "search", "content": "no hits"},
     {"role": "user", "content": "Error: one call per turn."}],
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(TEXTS, vocab_size=400)


def _episode(renderer, tok, actions, obs, closed=True):
    """Incremental ids: prompt, then each action's ids (+ end-of-turn if closed) and the observation."""
    ids = renderer.initial(PROMPT)
    for k, a in enumerate(actions):
        ids = ids + tok.encode(a, add_special_tokens=False) + ([renderer.eot_id] if closed else [])
        if k < len(obs):
            ids = ids + renderer.observation(obs[k], closed=closed)
    return ids


def _full_text(tok, actions, obs, tools=TOOLS):
    msgs = list(PROMPT)
    for k, a in enumerate(actions):
        msgs.append({"role": "assistant", "content": a})
        if k < len(obs):
            msgs.extend(obs[k])
    return tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=len(obs) >= len(actions))


def test_initial_is_the_template_with_tools_and_generation_prompt(tok):
    r = Renderer(tok, TOOLS)
    text = tok.apply_chat_template(PROMPT, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert r.initial(PROMPT) == tok.encode(text, add_special_tokens=False)
    assert tok.decode(r.initial(PROMPT)).endswith("<|assistant|>") and '"name": "search"' in text
    assert not r.inject_tools


def test_incremental_rendering_decodes_to_full_template(tok):
    r = Renderer(tok, TOOLS)
    ids = _episode(r, tok, ACTIONS[:2], OBS)
    assert tok.decode(ids) == _full_text(tok, ACTIONS[:2], OBS)
    ids3 = _episode(r, tok, ACTIONS, OBS)  # ends with the final answer: the template's glue is not sampled
    assert tok.decode(ids3) + r._glue == _full_text(tok, ACTIONS, OBS) and r._glue == "\n"
    # observation ids are tokenized alone: they start with the glue after <|end|> and end with the prompt
    obs_ids = r.observation(OBS[0])
    assert tok.decode(obs_ids) == "\n<|tool|>[1] Zentrix: The founder of Zentrix is Mira Tal.<|end|>\n<|assistant|>"


def test_unclosed_action_gets_end_of_turn_in_the_observation(tok):
    r = Renderer(tok, TOOLS)
    ids = r.observation(OBS[0], closed=False)
    assert ids[0] == r.eot_id and ids[1:] == r.observation(OBS[0], closed=True)
    full = _episode(r, tok, ACTIONS[:1], OBS[:1], closed=False)
    assert tok.decode(full) == _full_text(tok, ACTIONS[:1], OBS[:1])


def test_template_that_rewrites_history_is_rejected(tok):
    bad = tok.__class__.from_pretrained  # noqa: F841  (keep the same class)
    t = build_tokenizer(TEXTS, vocab_size=400)
    # drops every assistant message but the last one (like templates that strip old reasoning)
    t.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    r = Renderer(t)  # the probe conversation passes...
    with pytest.raises(RenderError, match="not prefix-preserving"):
        r.observation(OBS[0])  # ...but the assistant message vanishes once a tool message follows it


def test_template_whose_generation_prompt_is_not_a_prefix_is_rejected():
    t = build_tokenizer(TEXTS, vocab_size=400)
    t.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>GEN{% endif %}"
    )
    with pytest.raises(RenderError, match="generation prompt is not a prefix"):
        Renderer(t)


def test_template_that_numbers_turns_in_the_system_prompt_is_rejected():
    t = build_tokenizer(TEXTS, vocab_size=400)
    t.chat_template = (
        "{{ '<|system|>' + (messages | length | string) + ' messages<|end|>' }}"
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    with pytest.raises(RenderError, match="not prefix-preserving"):  # caught by the construction probe
        Renderer(t)


def test_missing_template_and_empty_messages(tok):
    t = build_tokenizer(TEXTS, vocab_size=400)
    t.chat_template = None
    with pytest.raises(RenderError, match="no chat_template"):
        Renderer(t)
    r = Renderer(tok)
    with pytest.raises(RenderError):
        r.initial([])
    with pytest.raises(RenderError):
        r.observation([])


def test_tools_are_injected_when_the_template_ignores_them():
    t = build_tokenizer(TEXTS, vocab_size=400)
    t.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    r = Renderer(t, TOOLS)
    assert r.inject_tools
    text = t.decode(r.initial(PROMPT))
    assert text.startswith("<|system|>Answer with tools.\n\n# Tools") and '"name": "search"' in text
    assert Renderer(t, TOOLS, tools_in_system="never").inject_tools is False


@pytest.mark.slow
def test_smollm2_real_template(smollm2_tokenizer):
    tok = smollm2_tokenizer
    r = Renderer(tok, TOOLS)
    assert r.eot_text == "<|im_end|>" and r.inject_tools  # SmolLM2's template ignores tools=
    ids = r.initial(PROMPT)
    for k, a in enumerate(ACTIONS[:2]):
        ids = ids + tok.encode(a, add_special_tokens=False) + [r.eot_id]
        ids = ids + r.observation(OBS[k])
    want = r.render_text(PROMPT + [{"role": "assistant", "content": ACTIONS[0]}] + OBS[0]
                         + [{"role": "assistant", "content": ACTIONS[1]}] + OBS[1])
    assert tok.decode(ids) == want
    assert want.endswith("<|im_start|>assistant\n") and "<|im_start|>tool\n[1] Zentrix" in want
    assert tok.decode(r.observation(OBS[0])).startswith("\n<|im_start|>tool\n")


def test_tag_syntax_envs_show_no_json_schemas_and_json_call_envs_do(tok):
    from turngym.agents.render import prompt_tool_schemas
    from turngym.envs import make

    tags_env, json_env = make("search/HopQA-v0"), make("tool/Calc-v0")
    try:
        assert tags_env.tool_schemas and prompt_tool_schemas(tags_env) is None  # the instructions teach <search>
        assert prompt_tool_schemas(json_env) == json_env.tool_schemas
        msgs, _ = tags_env.reset(seed=0)
        text = Renderer(tok, prompt_tool_schemas(tags_env)).render_text(msgs)
        assert "<search>" in text and '"function"' not in text and "<tool_call>" not in text
        text = Renderer(tok, prompt_tool_schemas(json_env)).render_text(json_env.reset(seed=0)[0])
        assert '"name": "calculator"' in text
    finally:
        tags_env.close()
        json_env.close()
