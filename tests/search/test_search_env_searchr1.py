"""search/SearchR1-v0 on a small dataset and corpus generated here, with the local index and via HTTP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from turngym.envs.builtin.searchr1 import SearchR1Env, demo_data, load_dataset
from turngym.envs.checker import check_env
from turngym.envs.registration import make
from turngym.errors import ConfigError
from turngym.tools.search import BM25Index
from turngym.tools.search.server import RetrieverServer

ROWS = [
    {
        "id": "q1",
        "question": "Which river flows through Quorvel?",
        "golden_answers": ["Ysla", "the Ysla river"],
    },
    {"id": "q2", "question": "Who painted the Morning Lantern?", "golden_answers": ["Edda Varn"]},
    {"id": "q3", "question": "What is the capital of Brastovia?", "answers": "Kell"},
]
DOCS = [
    {"id": "1", "contents": '"Quorvel"\nQuorvel is a town. The river Ysla flows through Quorvel.'},
    {"id": "2", "contents": '"Morning Lantern"\nThe Morning Lantern is a painting by Edda Varn.'},
    {"id": "3", "contents": '"Brastovia"\nBrastovia is a country whose capital is Kell.'},
    {"id": "4", "contents": '"Kell"\nKell is a city by the sea.'},
]


@pytest.fixture()
def files(tmp_path):
    data, corpus = tmp_path / "data.jsonl", tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return data, corpus, tmp_path / "cache"


def _episode(env, actions):
    obs, info = env.reset(seed=0, options={"index": 0})
    out = []
    for a in actions:
        o, r, term, trunc, info = env.step(a)
        out.append((o, r, term, trunc, info))
        if term or trunc:
            break
    return obs, info, out


def test_local_corpus_episode_and_reward(files):
    data, corpus, cache = files
    env = make("search/SearchR1-v0", dataset=data, corpus=corpus, cache_dir=cache)
    obs, info = env.reset(seed=0, options={"index": 0})
    assert [m["role"] for m in obs] == ["system", "user"] and "<search>" in obs[0]["content"]
    assert obs[1]["content"] == ROWS[0]["question"]
    task = info["task"]
    assert task["gold_answer"] == "Ysla" and task["golden_answers"] == ["Ysla", "the Ysla river"]
    assert task["gold_calls"] == [{"name": "search", "arguments": {"query": ROWS[0]["question"]}}]
    o, r, term, _, info = env.step("<search>river Quorvel</search>")
    assert not term and r == 0.0 and o[0]["role"] == "tool" and o[0]["name"] == "search"
    assert o[0]["content"].startswith('Doc 1(Title: "Quorvel")')
    assert info["tool_results"][0].meta["doc_ids"][0] == "1" and info["value"] == 1.0
    o, r, term, _, info = env.step("<answer>The Ysla River</answer>")  # any golden answer, normalised
    assert term and r == 1.0 and info["success"] and info["final_answer"] == "The Ysla River"
    env.reset(seed=0, options={"index": 0})
    *_, info = env.step("<answer>Kell</answer>")
    assert info["outcome"] == 0.0 and not info["success"]
    env.close()
    # the index was cached on disk and is reused
    assert BM25Index.build(corpus, cache_dir=cache).loaded_from_cache


def test_check_env_and_expert(files):
    data, corpus, cache = files
    env = make("search/SearchR1-v0", dataset=data, corpus=corpus, cache_dir=cache)
    assert set(check_env(env).values()) == {"ok"}
    rng = np.random.default_rng(0)
    wins = 0
    for seed in range(30):
        env.reset(seed=seed)
        while True:
            *_, term, trunc, info = env.step(env.expert_action(rng, 0.0))
            if term or trunc:
                break
        wins += info["success"]
    assert wins == 30
    env.close()


def test_default_demo_expert_rates():
    env = make("search/SearchR1-v0")
    rng = np.random.default_rng(1)
    for noise, lo, hi in ((0.0, 1.0, 1.0), (0.3, 0.6, 0.9)):
        wins = 0
        for seed in range(200):
            env.reset(seed=seed)
            while True:
                *_, term, trunc, info = env.step(env.expert_action(rng, noise))
                if term or trunc:
                    break
            wins += info["success"]
        expected = env.unwrapped.expected_expert_success(noise)
        assert lo <= wins / 200 <= hi and abs(wins / 200 - expected) < 0.08, (noise, wins, expected)
    env.close()


def test_demo_questions_are_answerable_from_top_hit():
    rows, docs = demo_data(num_countries=20, seed=3)
    idx = BM25Index.build(docs, cache=False)
    hits = idx.search([r["question"] for r in rows], topk=1)
    assert all(r["golden_answers"][0] in h[0].contents for r, h in zip(rows, hits))


def test_remote_retriever_and_hermes(files):
    data, corpus, cache = files
    with RetrieverServer(BM25Index.build(corpus, cache_dir=cache), port=0) as srv:
        env = SearchR1Env(dataset=data, retriever_url=srv.url, parser="hermes")
        env.reset(seed=0, options={"index": 1})
        o, *_ = env.step(
            '<tool_call>{"name": "search", "arguments": {"query": "Morning Lantern painter"}}</tool_call>'
        )
        assert "Edda Varn" in o[0]["content"]
        *_, term, _, info = env.step("<answer>Edda Varn</answer>")
        assert term and info["success"]
        env.close()


def test_bad_actions_are_observations(files):
    data, corpus, cache = files
    env = make("search/SearchR1-v0", dataset=data, corpus=corpus, cache_dir=cache)
    env.reset(seed=3)
    o, _, term, _, info = env.step("<search>   </search>")
    assert not term and info["parse_errors"] and o[-1]["role"] == "user"
    o, _, term, _, info = env.step("<search>zzzz qqqq</search>")
    assert o[0]["content"] == "No documents found." and info["tool_errors"] == 0
    o, _, term, _, info = env.step(b"\xff\xfe<search>Kell</search>")
    assert not term and info["parse_errors"] and o[0]["role"] == "tool"
    env.close()


def test_config_errors(files, tmp_path):
    data, corpus, cache = files
    with pytest.raises(ConfigError, match="needs documents"):
        SearchR1Env(dataset=data)
    with pytest.raises(ConfigError, match="one document source"):
        SearchR1Env(dataset=data, corpus=corpus, retriever_url="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="does not exist"):
        SearchR1Env(dataset=tmp_path / "nope.jsonl", corpus=corpus)
    with pytest.raises(ConfigError, match="row #1 needs 'golden_answers'"):
        load_dataset([{"question": "a?", "golden_answers": ["x"]}, {"question": "b?", "golden_answers": []}])
    with pytest.raises(ConfigError, match="row #0 needs a non-empty string 'question'"):
        load_dataset([{"golden_answers": ["x"]}])
    env = SearchR1Env(dataset=data, corpus=corpus, cache_dir=cache)
    with pytest.raises(ConfigError, match="out of range"):
        env.reset(options={"index": 3})
    with pytest.raises(ConfigError, match="unknown keys"):
        env.reset(options={"hops": 2})
    env.close()
    assert load_dataset(data)[2]["golden_answers"] == ["Kell"]
