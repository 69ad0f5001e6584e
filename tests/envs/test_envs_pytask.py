from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

import turngym.envs as E
from turngym.envs.builtin.pytask import TEMPLATES, PyTaskEnv
from turngym.errors import ConfigError
from turngym.tools.sandbox import make_sandbox
from turngym.tools.sandbox.base import Sandbox, SandboxResult


class InProcessSandbox(Sandbox):
    """Runs the env's own reference / wrong code in-process, for the fast noise-rate test only.

    The same path runs for real (bwrap / subprocess sandbox) in the other tests of this file.
    """

    kind = "inprocess-test"

    def run(self, code: str, *, timeout_s: float = 5.0) -> SandboxResult:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, "<task>", "exec"), {})  # noqa: S102 - the env's own reference code
            return SandboxResult(out.getvalue(), "", 0, False, None, 0.0)
        except Exception as e:  # noqa: BLE001
            return SandboxResult(out.getvalue(), repr(e), 1, False, None, 0.0)


def run_expert(env, seed, noise, rng):
    env.reset(seed=seed)
    while True:
        _, _, term, trunc, info = env.step(env.expert_action(rng, noise))
        if term or trunc:
            return info


@pytest.fixture(scope="module")
def pytask():
    env = E.make("code/PyTask-v0")
    yield env
    env.close()


def test_reference_code_of_200_tasks_prints_the_gold_answer_in_the_real_sandbox(pytask):
    # One sandbox run checks the 200 gold programs (each exec'd with its own stdout capture).
    tasks = [pytask.reset(seed=s)[1]["task"] for s in range(200)]
    programs = json.dumps([t["gold_calls"][0]["arguments"]["code"] for t in tasks])
    runner = (
        "import contextlib, io, json\n"
        f"progs = json.loads({programs!r})\n"
        "outs = []\n"
        "for p in progs:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        exec(p, {})\n"
        "    outs.append(buf.getvalue().strip())\n"
        "print(json.dumps(outs))\n"
    )
    res = pytask.sandbox.run(runner, timeout_s=60)
    assert res.ok, res.stderr
    outs = json.loads(res.stdout)
    assert outs == [t["gold_answer"] for t in tasks]
    assert len({t["template"] for t in tasks}) == len(TEMPLATES)


def test_expert_noise0_episodes_in_real_sandbox(pytask):
    rng = np.random.default_rng(0)
    for seed in range(8):
        info = run_expert(pytask, seed, 0.0, rng)
        assert info["success"], (seed, info["final_answer"], info["task"]["gold_answer"])
        assert info["episode_counts"]["tool_calls"] == 1


@pytest.mark.slow
def test_expert_noise0_solves_200_in_real_sandbox(pytask):
    rng = np.random.default_rng(0)
    assert all(run_expert(pytask, s, 0.0, rng)["success"] for s in range(200))


@pytest.mark.slow
def test_expert_default_noise_near_expected_in_real_sandbox(pytask):
    rng = np.random.default_rng(1)
    noise = pytask.default_expert_noise
    rate = np.mean([run_expert(pytask, s, noise, rng)["success"] for s in range(200)])
    assert abs(rate - pytask.expected_expert_success(noise)) < 0.1


def test_expert_rates_with_in_process_sandbox():
    env = E.make("code/PyTask-v0", sandbox=InProcessSandbox())
    rng = np.random.default_rng(2)
    assert all(run_expert(env, s, 0.0, rng)["success"] for s in range(200))
    noise = env.default_expert_noise
    rate = np.mean([run_expert(env, s, noise, rng)["success"] for s in range(400)])
    assert abs(rate - env.expected_expert_success(noise)) < 0.07


def test_wrong_code_never_prints_the_gold_answer():
    env = PyTaskEnv(sandbox=InProcessSandbox())
    for s in range(200):
        env.reset(seed=s)
        wrong = env.sandbox.run(env.task.private["wrong_code"]).stdout.strip()
        assert wrong != env.task.gold_answer, (s, env.task.prompt)


def test_failing_code_and_scoring(pytask):
    pytask.reset(seed=0, options={"template": "reverse"})
    obs, _, term, _, info = pytask.step("<python>raise ValueError('boom')</python>")
    assert not term and info["tool_errors"] == 1 and "boom" in obs[0]["content"]
    quick = E.make("code/PyTask-v0", code_timeout_s=0.5)
    quick.reset(seed=0)
    obs, _, term, _, info = quick.step("<python>while True: pass</python>")
    assert not term and info["tool_errors"] == 1 and "time" in obs[0]["content"].lower()
    quick.close()
    _, r, term, _, _ = pytask.step(f"<answer>'{pytask.task.gold_answer}'</answer>")  # quotes are fine
    assert term and r == 1.0
    with pytest.raises(ConfigError, match="templates"):
        PyTaskEnv(templates=("nope",), sandbox=InProcessSandbox())


def test_real_sandbox_kind_is_isolating_when_available():
    sb = make_sandbox("auto")
    try:
        assert sb.kind in ("bwrap", "subprocess", "docker")
    finally:
        sb.close()
