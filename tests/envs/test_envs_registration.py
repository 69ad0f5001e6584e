from __future__ import annotations

import pytest

import turngym.envs as E
from turngym.envs.registration import parse_env_id, register, registry
from turngym.envs.wrappers import MaxTurns
from turngym.errors import RegistryError


def test_builtins_registered():
    ids = E.list_envs()
    for i in ("search/HopQA-v0", "tool/Calc-v0", "code/PyTask-v0"):
        assert i in ids


def test_parse_env_id():
    assert parse_env_id("search/HopQA-v0") == ("search", "HopQA", 0)
    assert parse_env_id("Plain-v12") == (None, "Plain", 12)
    for bad in ("search/HopQA", "HopQA-vX", "a b-v0", ""):
        with pytest.raises(RegistryError, match="namespace/Name-vN"):
            parse_env_id(bad)


def test_did_you_mean_and_versions():
    with pytest.raises(RegistryError, match="Did you mean 'search/HopQA-v0'"):
        E.make("search/HopQa-v0")
    with pytest.raises(RegistryError, match="Did you mean 'search/HopQA-v0'"):
        E.make("HopQA-v0")  # namespace forgotten
    with pytest.raises(RegistryError, match="no version v7.*search/HopQA-v0"):
        E.make("search/HopQA-v7")


def test_lazy_entry_point_and_kwargs_and_max_turns():
    sid = "test/LazyEcho-v0"
    register(sid, "envs_helpers:EchoEnv", max_turns=3, overwrite=True)
    try:
        env = E.make(sid)
        assert isinstance(env, MaxTurns) and env.max_turns == 3
        assert env.unwrapped.turngym_spec.id == sid
        env2 = E.make(sid, max_turns=None)
        assert not isinstance(env2, MaxTurns)
        with pytest.raises(RegistryError, match="positive int"):
            E.make(sid, max_turns=0)
    finally:
        registry.pop(sid, None)


def test_callable_entry_point_and_duplicate():
    from envs_helpers import EchoEnv

    sid = "test/CallableEcho-v1"
    register(sid, lambda **kw: EchoEnv(**kw), kwargs={"max_answer_chars": 7}, overwrite=True)
    try:
        assert E.make(sid).unwrapped.max_answer_chars == 7
        assert E.make(sid, max_answer_chars=9).unwrapped.max_answer_chars == 9
        with pytest.raises(RegistryError, match="already registered"):
            register(sid, lambda **kw: EchoEnv(**kw))
    finally:
        registry.pop(sid, None)


def test_bad_entry_point_messages():
    with pytest.raises(RegistryError, match="module:Class"):
        register("test/Bad-v0", "no_colon_here")
    register("test/Missing-v0", "turngym.envs.core:NoSuchClass", overwrite=True)
    try:
        with pytest.raises(RegistryError, match="no attribute 'NoSuchClass'"):
            E.make("test/Missing-v0")
    finally:
        registry.pop("test/Missing-v0", None)
