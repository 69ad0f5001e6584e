"""Fixtures for the env tests."""

from __future__ import annotations

import pytest
from envs_helpers import EchoEnv


@pytest.fixture
def echo_env():
    env = EchoEnv()
    yield env
    env.close()


@pytest.fixture(scope="module")
def hopqa():
    import turngym.envs as E

    env = E.make("search/HopQA-v0")
    yield env
    env.close()
