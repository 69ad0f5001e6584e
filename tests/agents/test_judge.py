"""`OpenAIJudge`: the ``judge(prompts) -> completions`` callable of CAPO, CALM and LaRe over the project's own
OpenAI-compatible completions server on loopback (real HTTP, real server), and its errors."""

from __future__ import annotations

import socket

import pytest

from turngym.agents.judge import JudgeError, OpenAIJudge


def test_batches_prompts_in_order_and_discovers_the_model(judge_server):
    url, policy = judge_server(lambda text: f"<{text[::-1]}>")
    judge = OpenAIJudge(url, batch_size=2, temperature=0.7, max_tokens=32)
    prompts = ["one", "two", "three", "four", "five"]
    assert judge(prompts) == [f"<{p[::-1]}>" for p in prompts]
    assert judge.model == "canned-judge"  # from /v1/models
    assert judge.calls == 3  # 2 + 2 + 1 prompts per request
    assert policy.prompts == prompts
    assert judge([]) == []


def test_repeated_prompts_are_independent_requests_of_the_same_text(judge_server):
    replies = iter(["[0]", "[1]", "[]"])
    url, policy = judge_server(lambda text: next(replies))
    assert OpenAIJudge(url, model="canned-judge")(["critique"] * 3) == ["[0]", "[1]", "[]"]
    assert policy.prompts == ["critique"] * 3


def test_chat_template_of_the_judge_model_is_applied(judge_server):
    class ChatTok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return f"<user>{messages[0]['content']}</user><assistant>"

    url, policy = judge_server(lambda text: "ok")
    assert OpenAIJudge(url, tokenizer=ChatTok())(["grade this"]) == ["ok"]
    assert policy.prompts == ["<user>grade this</user><assistant>"]


def test_unreachable_server_and_http_errors_raise_judge_error(judge_server):
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JudgeError, match="unreachable"):
        OpenAIJudge(f"http://127.0.0.1:{port}/v1", model="m", timeout_s=5)(["x"])
    url, _ = judge_server(lambda text: "ok")
    with pytest.raises(JudgeError, match="HTTP 404"):
        OpenAIJudge(url.removesuffix("/v1") + "/nope", model="m")(["x"])

    def boom(text):
        raise ValueError("model crashed")

    url, _ = judge_server(boom)
    with pytest.raises(JudgeError, match="HTTP 400"):
        OpenAIJudge(url, model="m")(["x"])
