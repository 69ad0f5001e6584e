"""Faults: a retriever that is down, slow, answering 500 / garbage / the wrong shape, or killed mid-episode.

The client retries with exponential backoff, then raises RetrieverError; the search tool and the envs
turn that into an error observation. Every server here is a real HTTP server on loopback.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from search_helpers import FaultServer, free_port, start_server_process

from turngym.tools.search import RetrieverClient, RetrieverError, make_search_tool
from turngym.tools.toolset import ToolSet
from turngym.types import ToolCall

BACKOFF = 0.05


def _client(url: str, **kw) -> RetrieverClient:
    kw = {"timeout_s": 1.0, "retries": 2, "backoff": BACKOFF, **kw}
    return RetrieverClient(url, **kw)


def _search_result(client: RetrieverClient):
    with ToolSet([make_search_tool(client, topk=2)]) as ts:
        return ts.execute([ToolCall("search", {"query": "capital of france"}, id="c0")])[0]


def test_connection_refused_retries_with_backoff_then_error_observation():
    url = f"http://127.0.0.1:{free_port()}/retrieve"
    client = _client(url)
    t0 = time.perf_counter()
    with pytest.raises(RetrieverError) as ei:
        client.search(["q"], 2)
    elapsed = time.perf_counter() - t0
    assert ei.value.attempts == 3 and client.stats == {"requests": 3, "retries": 2, "failures": 1}
    assert "cannot reach the server" in str(ei.value) and "ConnectError" in str(ei.value)
    assert elapsed >= BACKOFF * (1 + 2) * 0.9  # slept 0.05 then 0.10
    res = _search_result(client)
    assert not res.ok and res.call_id == "c0"
    assert res.text.startswith("Error: search is unavailable") and res.meta["reason"] == "retriever_error"
    client.close()


def test_backoff_is_exponential():
    with FaultServer("500") as srv:
        client = _client(srv.url, retries=3, backoff=0.1)
        with pytest.raises(RetrieverError, match="HTTP 500"):
            client.search(["q"], 1)
        gaps = np.diff(srv.times)
        assert srv.hits == 4 and len(gaps) == 3
        # sleeps 0.1, 0.2, 0.4 between attempts (plus request time)
        assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39
        assert gaps[2] > gaps[0] * 2


def test_slow_server_times_out():
    with FaultServer("slow", delay_s=1.5) as srv:
        client = _client(srv.url, timeout_s=0.3, retries=1)
        t0 = time.perf_counter()
        res = _search_result(client)
        assert not res.ok and "timed out after 0.3s" in res.error
        assert srv.hits == 2 and time.perf_counter() - t0 < 1.5
        assert make_search_tool(client).timeout_s == pytest.approx(client.max_duration_s + 1.0)


@pytest.mark.parametrize(
    "mode, fragment", [("500", "HTTP 500"), ("garbage", "not JSON"), ("wrong_shape", "'result' list")]
)
def test_bad_answers_are_retried_then_error(mode, fragment):
    with FaultServer(mode) as srv:
        client = _client(srv.url)
        res = _search_result(client)
        assert not res.ok and fragment in res.error and srv.hits == 3


def test_transient_failure_recovers():
    with FaultServer("500", fail_first=2) as srv:
        client = _client(srv.url)
        hits = client.search(["alpha", "beta"], 1)
        assert [h[0].id for h in hits] == ["x0", "x1"] and srv.hits == 3
        assert client.stats["retries"] == 2 and client.stats["failures"] == 0


def test_client_errors_are_not_retried():
    with FaultServer("400") as srv:
        client = _client(srv.url)
        with pytest.raises(RetrieverError, match="not retried") as ei:
            client.search(["q"], 1)
        assert srv.hits == 1 and not ei.value.retryable


def test_tool_input_errors(tmp_path):
    from turngym.tools.search import BM25Index

    idx = BM25Index.build([{"id": "a", "contents": "alpha beta"}], cache=False)
    with ToolSet([make_search_tool(idx)]) as ts:
        empty, long_, missing, ok = ts.execute(
            [
                ToolCall("search", {"query": "  "}),
                ToolCall("search", {"query": "x" * 5000}),
                ToolCall("search", {}),
                ToolCall("search", {"query": "alpha"}),
            ]
        )
    assert not empty.ok and "empty query" in empty.error
    assert not long_.ok and "too long" in long_.error
    assert not missing.ok and "query" in missing.error
    assert ok.ok and ok.meta["doc_ids"] == ["a"] and ok.output.startswith("Doc 1(Title: alpha beta)")


# ---------------------------------------------------------------------------- killing the real server
def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run_until_server_dies(env, proc, seeds, rng):
    """Run expert episodes; kill the server after the first successful search; collect what happens."""
    killed = False
    tool_obs = []
    for seed in seeds:
        env.reset(seed=seed)
        while True:
            action = env.expert_action(rng, 0.0)
            obs, _, terminated, truncated, info = env.step(action)  # must never raise
            for r in info["tool_results"]:
                tool_obs.append((killed, r.ok, obs[0]["content"]))
            if not killed and any(r.ok for r in info["tool_results"]):
                proc.kill()
                proc.wait(timeout=10)
                killed = True
            if terminated or truncated:
                break
    return tool_obs, info


@pytest.mark.slow
def test_kill_server_mid_episode_hopqa(tmp_path):
    """serve-retriever on loopback, HopQA episodes through it, kill it: error observations, no exceptions."""
    pytest.importorskip("turngym.envs.builtin.hopqa")
    import turngym.envs.builtin  # noqa: F401  (registers the built-in envs)
    from turngym.envs.registration import make

    probe = make("search/HopQA-v0", hops=2)
    corpus = tmp_path / "hopqa.jsonl"
    _write_jsonl(corpus, probe.unwrapped.corpus)
    probe.close()
    proc, url = start_server_process(corpus, tmp_path / "cache", via_cli=True)  # `turngym serve-retriever`
    try:
        env = make("search/HopQA-v0", hops=2, retriever_url=url, tool_timeout_s=30.0)
        tool_obs, last_info = _run_until_server_dies(env, proc, seeds=[0], rng=np.random.default_rng(0))
        before = [o for o in tool_obs if not o[0]]
        after = [o for o in tool_obs if o[0]]
        assert before and all(ok for _, ok, _ in before)
        assert after and not any(ok for _, ok, _ in after)
        assert all(text.startswith("Error:") and "retriever at" in text for _, _, text in after)
        assert last_info["success"] is False and last_info["tool_errors"] >= 1
        env.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_kill_server_mid_episode_searchr1(tmp_path):
    from turngym.envs.builtin.searchr1 import demo_data
    from turngym.envs.registration import make

    rows, docs = demo_data(num_countries=10, seed=1)
    _write_jsonl(tmp_path / "corpus.jsonl", docs)
    _write_jsonl(tmp_path / "data.jsonl", rows)
    proc, url = start_server_process(tmp_path / "corpus.jsonl", tmp_path / "cache")
    try:
        env = make(
            "search/SearchR1-v0",
            dataset=tmp_path / "data.jsonl",
            retriever_url=url,
            retriever_retries=2,
            retriever_backoff=0.05,
            retriever_timeout_s=2.0,
            max_turns=3,
        )
        # first episode: served; it answers correctly
        env.reset(seed=0)
        obs, *_ = env.step(env.expert_action(np.random.default_rng(0)))
        assert obs[0]["role"] == "tool" and obs[0]["content"].startswith("Doc 1(Title:")
        *_, term, _, info = env.step(env.expert_action(np.random.default_rng(0)))
        assert term and info["success"]
        tool_obs, last_info = _run_until_server_dies(env, proc, seeds=[1, 2], rng=np.random.default_rng(1))
        after = [o for o in tool_obs if o[0]]
        assert len(after) >= 3 and all(not ok and "search is unavailable" in text for _, ok, text in after)
        assert last_info["truncated_by"] == "max_turns" and last_info["success"] is False
        env.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
