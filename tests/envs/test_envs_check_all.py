"""`check_env` over every registered id: a new env is checked as soon as it is registered."""

from __future__ import annotations

import pytest

import turngym.envs as E
from turngym.envs.checker import CHECKS, EnvCheckError, check_env

#: Smaller settings for ids whose default makes the check slow (TextWorld compiles each game, ~3 s a game).
KWARGS = {"text/": {"games": 3}}


@pytest.mark.parametrize("env_id", E.list_envs())
def test_check_env_registered(env_id):
    from turngym.errors import MissingExtraError

    kwargs = next((kw for prefix, kw in KWARGS.items() if env_id.startswith(prefix)), {})
    try:
        env = E.make(env_id, **kwargs)
    except MissingExtraError as err:  # an env of an extra that is not installed here (CI installs them all)
        pytest.skip(str(err))
    try:
        report = check_env(env)
    finally:
        env.close()
    assert all(v == "ok" or v.startswith("skipped") for v in report.values())
    if env_id.startswith("multi/"):
        assert next(iter(report)) in ("pettingzoo_aec_api_test", "pettingzoo_parallel_api_test")
        assert "gymnasium" not in report
    else:
        assert report["gymnasium"] == "ok" and report["expert"] == "ok"
        assert set(CHECKS) <= set(report)


def test_check_env_reports_broken_envs():
    from envs_helpers import EchoEnv

    class GlobalRNGEnv(EchoEnv):
        def _sample_task(self, rng, options):
            import numpy as np

            np.random.rand()  # touches the global RNG: a bug
            return super()._sample_task(rng, options)

    with pytest.raises(EnvCheckError, match=r"\[seeding\].*global RNG"):
        check_env(GlobalRNGEnv())

    class IgnoresSeedEnv(EchoEnv):
        calls = 0

        def _sample_task(self, rng, options):
            from turngym.envs.core import Task

            IgnoresSeedEnv.calls += 1  # a task that depends on hidden state, not on the seed
            return Task(prompt=f"Reply with the word w{self.calls}.", gold_answer=f"w{self.calls}")

    with pytest.raises(EnvCheckError, match=r"\[seeding\].*different observations"):
        check_env(IgnoresSeedEnv())

    class EndsOnAnythingEnv(EchoEnv):
        def step(self, action):
            obs, r, _term, trunc, info = super().step(action)
            return obs, r, True, trunc, info

    with pytest.raises(EnvCheckError, match=r"\[step_types\].*terminated"):
        check_env(EndsOnAnythingEnv())

    class NoResetGuardEnv(EchoEnv):
        def step(self, action):
            if self.task is None:
                return [], 0.0, False, False, {}
            return super().step(action)

    with pytest.raises(EnvCheckError, match=r"\[step_before_reset\]"):
        check_env(NoResetGuardEnv())


def test_check_env_on_a_custom_env_skips_what_does_not_apply():
    from envs_helpers import EchoEnv

    report = check_env(EchoEnv())
    assert report["tool_call_round_trip"].startswith("skipped: the env has no tools")
    assert report["expert"] == "ok" and report["gymnasium"] == "ok"
