from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

import turngym.envs as E
from turngym.envs.builtin.hopqa import HopQAEnv
from turngym.envs.builtin.world import RELATIONS, generate_world, question_text
from turngym.errors import ConfigError


def run_expert(env, seed, noise, rng, options=None):
    env.reset(seed=seed, options=options)
    values = []
    while True:
        _, _, term, trunc, info = env.step(env.expert_action(rng, noise))
        values.append(info.get("value"))
        if term or trunc:
            return info, values


def test_world_is_deterministic_small_and_functional():
    w1, w2, w3 = generate_world(0), generate_world(0), generate_world(1)
    assert w1.docs == w2.docs and w1.facts == w2.facts
    assert w1.docs != w3.docs
    assert len(w1.docs) == 120 + 20
    assert max(len(d["contents"]) for d in w1.docs) < 300  # short documents
    vocab = {t for d in w1.docs for t in re.findall(r"\w+", d["contents"].lower())}
    assert len(vocab) < 400  # a modest vocabulary for a tiny tokenizer / model
    for (rel, src), dst in w1.facts.items():
        assert w1.entities[src] == RELATIONS[rel].src and w1.entities[dst] == RELATIONS[rel].dst
    assert len(generate_world(0, corpus_size=300, distractors=5).docs) == 305
    with pytest.raises(ConfigError, match="corpus_size"):
        generate_world(0, corpus_size=5000)


def test_chains_follow_facts_without_revisits():
    w = generate_world(3)
    rng = np.random.default_rng(0)
    for h in (1, 2, 3, 4):
        for _ in range(20):
            chain = w.sample_chain(rng, h)
            assert len(chain) == h
            for a, b in itertools.pairwise(chain):
                assert a.dst == b.src
            assert all(w.facts[(hp.relation, hp.src)] == hp.dst for hp in chain)
            assert len({chain[0].src, *[hp.dst for hp in chain]}) == h + 1
            assert question_text(chain).startswith("What is the ")


def test_task_metadata(hopqa):
    obs, info = hopqa.reset(seed=11, options={"hops": 3})
    t = info["task"]
    assert t["hops"] == 3 and len(t["gold_calls"]) == 3 and len(t["chain"]) == 3
    assert t["gold_answer"] == t["chain"][-1]["dst"]
    assert t["gold_calls"][0] == {
        "name": "search",
        "arguments": {"query": f"{t['chain'][0]['relation']} of {t['chain'][0]['src']}"},
    }
    assert t["decisive_turns"] == [0, 1, 2, 3] and t["gold_turn_values"] == [0, 1 / 3, 2 / 3, 1]
    assert obs[1]["content"] == t["question"] and t["chain"][0]["src"] in t["question"]
    assert "<search>" in obs[0]["content"]  # the tags are described in the system prompt
    assert info["value"] == 0.0 and info["anchor"] == "progress=0/3"


def test_gold_queries_retrieve_the_gold_doc_first(hopqa):
    for seed in range(200):
        _, info = hopqa.reset(seed=seed, options={"hops": 4 if seed % 2 else 2})
        for call, doc_id in zip(info["task"]["gold_calls"], info["task"]["gold_docs"]):
            hits = hopqa.retriever.search([call["arguments"]["query"]], 3)[0]
            assert hits[0].id == doc_id, (seed, call, [h.id for h in hits])


def test_expert_noise0_solves_200_tasks(hopqa):
    rng = np.random.default_rng(0)
    for seed in range(200):
        info, values = run_expert(hopqa, seed, 0.0, rng)
        assert info["success"], (seed, info["final_answer"], info["task"]["gold_answer"])
        assert values[:-1] == info["task"]["gold_turn_values"][1:] and values[-1] == 1.0


def test_expert_noise0_solves_4_hop_tasks():
    env = E.make("search/HopQA-v0", hops=(3, 4), corpus_size=300)
    rng = np.random.default_rng(1)
    assert all(run_expert(env, s, 0.0, rng)[0]["success"] for s in range(200))


def test_expert_default_noise_matches_expected_rate(hopqa):
    rng = np.random.default_rng(2)
    noise = hopqa.default_expert_noise
    wins = [run_expert(hopqa, s, noise, rng)[0]["success"] for s in range(300)]
    expected = hopqa.expected_expert_success(noise)
    assert 0.55 < expected < 0.85
    assert abs(np.mean(wins) - expected) < 0.08, (np.mean(wins), expected)


def test_turn_value_is_in_order_fraction_of_hops(hopqa):
    _, info = hopqa.reset(seed=5, options={"hops": 2})
    chain = info["task"]["chain"]
    first = f"The {chain[0]['relation']} of {chain[0]['src']} is {chain[0]['dst']}."
    second = f"The {chain[1]['relation']} of {chain[1]['src']} is {chain[1]['dst']}."
    tool = lambda text: {"role": "tool", "name": "search", "content": text}
    assert hopqa.turn_value([tool(second)]) == 0.0  # hop 2 without hop 1 does not count
    assert hopqa.turn_value([tool(first)]) == 0.5
    assert hopqa.turn_value([tool(first), tool(second)]) == 1.0
    assert hopqa.turn_value([{"role": "user", "content": first + second}]) == 0.0  # only tool outputs count
    # wrong query: no progress, value_delta 0, anchor unchanged
    _, _, _, _, step = hopqa.step("<search>qqq zzz</search>")
    assert step["value"] == 0.0 and step["value_delta"] == 0.0 and step["anchor"] == "progress=0/2"
    _, _, _, _, step = hopqa.step(f"<search>{info['task']['gold_calls'][0]['arguments']['query']}</search>")
    assert step["value"] == 0.5 and step["value_delta"] == 0.5 and step["anchor"] == "progress=1/2"


def test_bad_queries_are_error_observations(hopqa):
    hopqa.reset(seed=0)
    obs, _, term, _, info = hopqa.step("<search>   </search>")
    assert not term and "empty" in obs[0]["content"] and info["parse_errors"]
    obs, _, term, _, info = hopqa.step("<search>" + "q" * 2000 + "</search>")
    assert not term and info["tool_errors"] == 1 and "too long" in obs[0]["content"]
    obs, _, term, _, info = hopqa.step("<calculator>1+1</calculator>")
    assert not term and "unknown tool or tag <calculator>" in obs[0]["content"]


class _RecordingRetriever:
    """Wraps a real BM25 index and records queries (used beside the default-index tests)."""

    def __init__(self, inner):
        self.inner, self.queries = inner, []

    def search(self, queries, topk):
        self.queries.extend(queries)
        return self.inner.search(queries, topk)


class _DeadRetriever:
    def search(self, queries, topk):
        raise ConnectionError("retriever at http://127.0.0.1:9 is down")


def test_injected_retriever_is_used():
    from turngym.tools.search.index import BM25Index

    base = HopQAEnv()
    rec = _RecordingRetriever(BM25Index.build(base.corpus, cache=False))
    env = HopQAEnv(retriever=rec)
    _, info = env.reset(seed=0)
    q = info["task"]["gold_calls"][0]["arguments"]["query"]
    _, _, _, _, step = env.step(f"<search>{q}</search>")
    assert rec.queries == [q] and step["value"] > 0
    with pytest.raises(ConfigError, match="either"):
        HopQAEnv(retriever=rec, retriever_url="http://127.0.0.1:1")


def test_dead_retriever_gives_error_observation_not_exception():
    env = E.make("search/HopQA-v0", retriever=_DeadRetriever())
    env.reset(seed=0)
    obs, _, term, _trunc, info = env.step("<search>founder of Zentrix</search>")
    assert not term and info["tool_errors"] == 1 and "down" in obs[0]["content"]
    _, _, term, _, info = env.step(f"<answer>{env.task.gold_answer}</answer>")
    assert term and info["success"] and info["episode_counts"]["tool_errors"] == 1


def test_hermes_parser_variant():
    env = E.make("search/HopQA-v0", parser="hermes")
    env.reset(seed=1)
    a = env.expert_action(np.random.default_rng(0), 0.0)
    assert a.startswith("<tool_call>")
    _, _, _, _, step = env.step(a)
    assert step["tool_results"][0].ok and step["value"] > 0


def test_knob_validation():
    with pytest.raises(ConfigError, match="hops"):
        HopQAEnv(hops=5)
    with pytest.raises(ConfigError, match="hops"):
        HopQAEnv(hops=())
    env = HopQAEnv(hops=1)
    with pytest.raises(ConfigError, match="unknown keys"):
        env.reset(seed=0, options={"hopz": 2})
    assert all(env.reset(seed=s)[1]["task"]["hops"] == 1 for s in range(5))


def test_worlds_draw_other_facts_and_the_search_follows_the_episodes_world():
    one, many = HopQAEnv(topk=1), HopQAEnv(topk=1, worlds=8)
    # worlds=1 (the default) draws exactly as before
    assert [one.reset(seed=s)[1]["task"]["id"] for s in range(30)] == \
        [HopQAEnv(topk=1, worlds=1).reset(seed=s)[1]["task"]["id"] for s in range(30)]
    rng = np.random.default_rng(0)
    seen_worlds, answers = set(), {}
    for s in range(120):
        info, _ = run_expert(many, s, 0.0, rng)  # the gold queries find the gold documents of this episode's world
        assert info["success"], s
        task = info["task"]
        world = int(task["id"].split("/")[1][1:])
        assert 0 <= world < 8 and many.world.seed == world
        seen_worlds.add(world)
        answers.setdefault(task["question"], set()).add(task["gold_answer"])
    assert len(seen_worlds) == 8
    # the same question has other answers in other worlds: remembering a fact does not answer it
    assert any(len(a) > 1 for a in answers.values())
    assert [many.reset(seed=s)[1]["task"]["id"] for s in range(10)] == \
        [HopQAEnv(topk=1, worlds=8).reset(seed=s)[1]["task"]["id"] for s in range(10)]  # a function of the seed
    with pytest.raises(ConfigError, match="worlds"):
        HopQAEnv(worlds=0)
    with pytest.raises(ConfigError, match="built-in search"):
        HopQAEnv(worlds=4, retriever_url="http://127.0.0.1:1/retrieve")
