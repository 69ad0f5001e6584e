"""Held-out tasks are held out: evaluation seeds (>= 1,000,000) never draw a question training seeds draw.

HopQA's world holds 432 questions with the defaults; before the split, 800 training seeds (the main job's 50 steps x
16 tasks) drew 353 of them and 168 of 200 evaluation tasks were among those.
"""

from __future__ import annotations

import pytest

import turngym.envs as E
from turngym.envs.core import TEST_SEED_START, is_test_task, resolve_split
from turngym.errors import ConfigError

TRAIN, EVAL = range(800), range(TEST_SEED_START, TEST_SEED_START + 200)


def _ids(env, seeds, options=None):
    out = []
    for s in seeds:
        _, info = env.reset(seed=s, options=options)
        out.append((info["task"]["id"], info["task"]["split"]))
    return out


def test_hopqa_evaluation_questions_are_never_training_questions():
    env = E.make("search/HopQA-v0", topk=1)
    train, test = _ids(env, TRAIN), _ids(env, EVAL)
    assert {s for _, s in train} == {"train"} and {s for _, s in test} == {"test"}
    assert not {q for q, _ in train} & {q for q, _ in test}
    assert all(is_test_task(q, env.unwrapped.test_fraction) for q, _ in test)
    assert {env.reset(seed=s)[1]["task"]["hops"] for s in EVAL} == {1, 2}  # both hop counts are held out
    # the old behaviour, kept as split="all", is the leak this guards against
    many = E.make("search/HopQA-v0", topk=1, worlds=4)  # and with several worlds
    train4, test4 = {q for q, _ in _ids(many, TRAIN)}, {q for q, _ in _ids(many, EVAL)}
    assert not train4 & test4 and len({q.split("/")[1] for q in test4}) == 4
    every = E.make("search/HopQA-v0", topk=1, split="all")
    leaked = {q for q, _ in _ids(every, TRAIN)}
    assert sum(q in leaked for q, _ in _ids(every, EVAL)) > 100


def test_hopqa_split_is_stable_and_can_be_chosen():
    env = E.make("search/HopQA-v0")
    assert _ids(env, range(5)) == _ids(E.make("search/HopQA-v0"), range(5))  # a pure function of the seed
    assert {s for _, s in _ids(env, range(20), {"split": "test"})} == {"test"}  # the reset option wins
    assert {s for _, s in _ids(E.make("search/HopQA-v0", split="test"), range(20))} == {"test"}
    assert {s for _, s in _ids(E.make("search/HopQA-v0", split="train"), EVAL[:20])} == {"train"}
    with pytest.raises(ConfigError, match="split must be one of"):
        E.make("search/HopQA-v0", split="heldout")
    with pytest.raises(ConfigError, match="test_fraction"):
        E.make("search/HopQA-v0", test_fraction=1.0)


def test_searchteam_splits_by_its_own_seed():
    env = E.make("multi/SearchTeam-v0")
    train, test = set(), set()
    for seeds, into in ((range(200), train), (EVAL[:60], test)):
        for s in seeds:
            env.reset(seed=s)
            into.add(env.unwrapped.task["id"])
    assert train and test and not train & test


def test_resolve_split():
    assert resolve_split("auto", 5) == "train" and resolve_split("auto", None) == "train"
    assert resolve_split("auto", TEST_SEED_START) == "test" and resolve_split("all", TEST_SEED_START) == "all"
    with pytest.raises(ConfigError):
        resolve_split("dev", 0)


def test_pytask_evaluation_tasks_are_never_training_tasks():
    env = E.make("code/PyTask-v0", sandbox="subprocess")
    try:
        train, test = _ids(env, TRAIN[:400]), _ids(env, EVAL[:100])
        assert {s for _, s in train} == {"train"} and {s for _, s in test} == {"test"}
        assert not {q for q, _ in train} & {q for q, _ in test}
    finally:
        env.close()
