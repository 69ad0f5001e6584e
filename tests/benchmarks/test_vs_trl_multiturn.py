"""``benchmarks/vs_trl_multiturn.py``: TRL's view of the tiny chat template and the search tool (fast), and a run
of the script's quick mode with both arms taking more than one turn per episode (slow)."""

from __future__ import annotations

import json
import os

import pytest
from script_loader import load_script

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def hermes_env():
    from turngym.envs import make

    env = make("search/HopQA-v0", parser="hermes", hops=2)
    yield env
    env.close()


def test_trl_parses_the_tiny_templates_tool_calls(tmp_path, hermes_env):
    pytest.importorskip("trl")
    from trl.chat_template_utils import parse_response, supports_tool_calling

    from turngym.agents.tiny import load_policy_model

    mt = load_script("vs_trl_multiturn")
    msgs, _ = hermes_env.reset(seed=5)
    call = {"name": "search", "arguments": {"query": "founder of Zentrix"}}
    texts = [json.dumps(s) for s in hermes_env.tool_schemas] + [m["content"] for m in msgs] + [json.dumps(call)] * 4
    _, tok = load_policy_model("tiny", texts=texts, cache_dir=tmp_path)
    tok.response_template = mt.TINY_RESPONSE_TEMPLATE
    assert supports_tool_calling(tok)
    prefix = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    said = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]}
    full = tok.apply_chat_template(msgs + [said], tokenize=True, return_dict=False)
    assert full[: len(prefix)] == prefix
    action = full[len(prefix):]
    action = action[: action.index(tok.eos_token_id) + 1]  # what the sampler emits: the turn up to <|end|>
    parsed = parse_response(tok, action, prefix=prefix)
    assert parsed["tool_calls"] == [{"type": "function", "function": call}]
    # the replayed text is what the model wrote, and the env runs it as the same call
    text = mt.assistant_text(parsed)
    assert tok.decode(action, skip_special_tokens=True) == text
    new, *_ = hermes_env.step(text)
    assert [m["role"] for m in new] == ["tool"] and "Zentrix" in new[0]["content"]
    # an answer is content, not a call
    ans = tok("<answer>Mira Tal</answer>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    parsed = parse_response(tok, ans, prefix=prefix)
    assert not parsed.get("tool_calls") and parsed["content"] == "<answer>Mira Tal</answer>"


def test_trl_search_tool_shows_the_envs_schema_and_returns_its_text(hermes_env):
    from transformers.utils import get_json_schema

    mt = load_script("vs_trl_multiturn")
    search = mt.trl_search_tool(hermes_env)
    assert [get_json_schema(search)] == hermes_env.tool_schemas
    hermes_env.reset(seed=2)
    query = hermes_env.task.gold_calls[0]["arguments"]["query"]
    new, *_ = hermes_env.step(f'<tool_call>{{"name": "search", "arguments": {{"query": "{query}"}}}}</tool_call>')
    assert search(query) == new[0]["content"]


@pytest.mark.slow
def test_vs_trl_multiturn_quick(tmp_path, capsys):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    mt = load_script("vs_trl_multiturn")
    out = tmp_path / "mt.json"
    res = mt.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)])
    text = capsys.readouterr().out
    assert "turngym / TRL time per multi-turn step" in text and "load average" in text
    assert "| TRL | whole step |" in text and "| turngym | whole step |" in text
    c = res["config"]
    assert c["same_prompt_ids"] is True and c["same_tasks_per_step"] is True
    assert len(res["per_step"]["trl"]) == len(res["per_step"]["turngym"]) == 3
    assert res["turns_per_episode"]["turngym"] > 1 and res["turns_per_episode"]["trl"] > 1
    assert all(1 <= k <= c["max_turns"] for step in res["per_step"]["trl_turns"] for k in step)
    for arm in ("turngym", "trl"):
        assert 0 < res["sampled_tokens_per_episode"][arm] <= c["max_turns"] * c["max_new_tokens"]
        assert res[f"{arm}_s"]["step"] > 0
    assert res["trl_tool_calls_per_episode"] > 0
    assert json.loads(out.read_text())["config"]["env"] == "search/HopQA-v0"
