"""OpenEnv over loopback: `OpenEnvEnv` plays real openenv-core servers (uvicorn on 127.0.0.1) through OpenEnv's client.

* the built-in game (`openenv_games.GuessNumberEnvironment`, written with openenv-core) served in-process: expert
  episodes, seeds reaching the server's reset, parse errors that never reach the server, answers as final actions;
* a server killed (SIGKILL) mid-episode, a server that errors, a server slower than the timeout;
* the environment openenv-core itself ships: the echo environment its ``openenv init`` template generates;
* one GRPO step of the tiny policy through the adapter (slow).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import turngym.envs as E
from turngym.envs.checker import check_env
from turngym.errors import ConfigError, EnvError, MissingExtraError

ID = "openenv/OpenEnv-v0"
needs_openenv = pytest.mark.skipif(importlib.util.find_spec("openenv") is None, reason="needs turngym[openenv]")


@pytest.fixture(scope="module")
def guess():
    pytest.importorskip("openenv.core")
    env = E.make(ID)
    yield env
    env.close()


def secret_of(seed: int, low: int = 1, high: int = 32) -> int:
    """The game's rule for the secret of a seed (random.Random(seed).randint), computed here independently."""
    return random.Random(seed).randint(low, high)


def play_expert(env, seed: int):
    _, info0 = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    steps = []
    while True:
        action = env.expert_action(rng, 0.0)
        obs, reward, term, trunc, info = env.step(action)
        steps.append((action, obs, reward, term, trunc, info))
        if term or trunc:
            return info0, steps


# ------------------------------------------------------------------------------------------------ extras
def test_importing_turngym_does_not_import_openenv():
    code = (
        "import sys, turngym.envs as E; assert 'openenv/OpenEnv-v0' in E.list_envs(); "
        "assert not any(m == 'openenv' or m.startswith('openenv.') for m in sys.modules), 'openenv imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "openenv", None)  # `import openenv...` now raises ImportError
    monkeypatch.setitem(sys.modules, "openenv.core", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'turngym\[openenv\]'"):
        E.make(ID)


# ------------------------------------------------------------------------------------------------ the game
@needs_openenv
def test_expert_wins_and_the_seed_reaches_the_server(guess):
    for seed in range(4):
        info0, steps = play_expert(guess, seed)
        secret = secret_of(seed)
        task = info0["task"]
        assert task["gold_answer"] == str(secret) and task["server_seed"] == seed
        assert len(steps) == len(task["gold_calls"]) + 1  # binary search: the gold calls, then the winning guess
        for (action, obs, *_), gold in zip(steps, task["gold_calls"]):
            n = gold["arguments"]["number"]
            assert action == f"<guess> {n} </guess>"
            (msg,) = obs
            assert msg["role"] == "tool" and msg["name"] == "guess"
            assert f"{n} is too {'low' if n < secret else 'high'}." in msg["content"]  # the server's reply
        *_, (action, obs, reward, term, trunc, info) = steps
        assert action == f"<guess> {secret} </guess>" and f"{secret} is right!" in obs[0]["content"]
        assert (term, trunc, reward, info["success"], info["outcome"]) == (True, False, 1.0, True, 1.0)
        values = [s[5]["value"] for s in steps]
        n = len(steps)
        assert values == pytest.approx([(i + 1) / n for i in range(n)])  # every binary-search guess is decisive


@needs_openenv
def test_reset_is_seed_deterministic_and_options_reach_the_server(guess):
    a_obs, a_info = guess.reset(seed=11)
    b_obs, b_info = guess.reset(seed=11)
    assert a_obs == b_obs and a_info["task"] == b_info["task"]
    golds = {guess.reset(seed=s)[1]["task"]["gold_answer"] for s in range(8)}
    assert golds == {str(secret_of(s)) for s in range(8)} and len(golds) > 1
    _, info = guess.reset(seed=0, options={"secret": 7})
    assert info["task"]["gold_answer"] == "7"
    with pytest.raises(ConfigError, match="not 'seed'"):
        guess.reset(options={"seed": 1})
    # seedless resets draw the server seed from the env's RNG: deterministic after a seeded one
    guess.reset(seed=3)
    first = [guess.reset()[1]["task"]["server_seed"] for _ in range(3)]
    guess.reset(seed=3)
    assert [guess.reset()[1]["task"]["server_seed"] for _ in range(3)] == first


@needs_openenv
def test_parse_errors_are_observations_and_never_reach_the_server(guess):
    guess.reset(seed=2)
    bad = [
        "I think the number is small.",  # no action at all
        "<guess> twelve </guess>",  # not an integer
        '<guess> {"numbr": 3} </guess>',  # wrong field
        '<guess> {"number": [} </guess>',  # broken JSON
        "<guess> 3",  # unclosed tag
        '<tool_call>{"name": "guess", "arguments": {"number": 3}}</tool_call>',  # another format
    ]
    for action in bad:
        obs, reward, term, trunc, info = guess.step(action)
        assert not term and not trunc and reward == 0.0, action
        assert obs and all(m["content"].startswith("Error") for m in obs), (action, obs)
        assert info["parse_errors"] or info["tool_errors"] or action == bad[0], action
        assert "server_reward" not in info, action  # no server call
    assert guess.step("<guess> 16 </guess>")[0][0]["content"].endswith("guesses_left: 5")  # the first guess counted
    counts = guess.step("<guess> 20 </guess>")[4]["episode_counts"]
    assert counts["tool_calls"] == 4 and counts["tool_errors"] == 2  # two invalid actions, two guesses


@needs_openenv
def test_an_answer_is_a_final_action(guess):
    guess.reset(seed=5)
    obs, reward, term, _, info = guess.step(f"<answer> {secret_of(5)} </answer>")
    assert (obs, reward, term, info["success"], info["outcome"]) == ([], 1.0, True, True, 1.0)
    guess.reset(seed=5)
    wrong = secret_of(5) % 32 + 1
    _, reward, term, _, info = guess.step(f'<answer> {{"number": {wrong}}} </answer>')
    assert term and not info["success"] and info["outcome"] == 0.0 and reward == 0.0
    assert f"{wrong} is too" in info["final_observation"]  # the server played it
    guess.reset(seed=5)
    _, _, term, _, info = guess.step("<answer> I don't know </answer>")
    assert term and not info["success"] and "invalid action" in info["answer_error"]


@needs_openenv
def test_expert_mistakes_are_off_plan_guesses_malformed_actions_or_early_answers(guess):
    _, info = guess.reset(seed=3)
    ideal = guess.expert_action(np.random.default_rng(0), 0.0)
    kinds = set()
    for i in range(60):  # expert_action reads the state; it does not step
        action = guess.expert_action(np.random.default_rng(i), 1.0)
        parsed = guess.parser.parse(action)
        if parsed.answer is not None:
            kinds.add("answer")
            assert parsed.answer.isdigit() and parsed.answer != info["task"]["gold_answer"]
        elif parsed.calls:
            kinds.add("call")
            assert action != ideal and 1 <= parsed.calls[0].arguments["number"] <= 32  # a legal, off-plan guess
        else:
            kinds.add("malformed")
    assert kinds == {"answer", "call", "malformed"}


@needs_openenv
def test_the_server_ending_the_game_ends_the_episode():
    from turngym.envs.builtin.openenv import OpenEnvEnv

    env = OpenEnvEnv(factory_kwargs={"max_guesses": 2, "high": 64}, max_turns=16)
    try:
        _, info = env.reset(seed=1)
        secret = secret_of(1, high=64)
        wrong = [n for n in (10, 20, 30) if n != secret][:2]
        obs, _, term, trunc, info = env.step(f"<guess> {wrong[0]} </guess>")
        assert not term and "guesses_left: 1" in obs[0]["content"]
        obs, reward, term, trunc, info = env.step(f"<guess> {wrong[1]} </guess>")
        assert term and not trunc and reward == 0.0
        assert f"the number was {secret}" in obs[0]["content"]
        assert (info["success"], info["outcome"], info["value"]) == (False, 0.0, 0.0)
    finally:
        env.close()


@needs_openenv
def test_hermes_parser_passes_check_env():
    env = E.make(ID, parser="hermes")
    try:
        report = check_env(env)
        assert all(v == "ok" for v in report.values()), report
        env.reset(seed=0)
        obs, *_ = env.step('<tool_call>{"name": "guess", "arguments": {"number": 16}}</tool_call>')
        assert obs[0]["name"] == "guess" and "16 is too" in obs[0]["content"]
        assert "<tool_call>" in env.expert_action(np.random.default_rng(0))
    finally:
        env.close()


@needs_openenv
def test_envs_share_one_loopback_server_and_the_last_close_stops_it():
    from turngym.envs.builtin.openenv import OpenEnvEnv

    kw = {"factory_kwargs": {"high": 16}}
    a, b = OpenEnvEnv(**kw), OpenEnvEnv(**kw)
    server = a._server
    assert a.base_url == b.base_url and server is b._server and server.alive
    a.reset(seed=0)
    b.reset(seed=1)
    assert "16 is" in a.step("<guess> 16 </guess>")[0][0]["content"]  # two sessions on one server
    a.close()
    assert server.alive and "8 is" in b.step("<guess> 8 </guess>")[0][0]["content"]
    b.close()
    assert not server.alive and not server.thread.is_alive()
    c = OpenEnvEnv(**kw)  # a fresh server on a new port
    try:
        assert c._server is not server and c.reset(seed=0)[1]["task"]["gold_answer"] == str(secret_of(0, high=16))
    finally:
        c.close()


def test_constructor_errors_are_clear():
    pytest.importorskip("openenv.core")
    from turngym.envs.builtin.openenv import OpenEnvEnv

    with pytest.raises(ConfigError, match="parser"):
        OpenEnvEnv(parser="json")
    with pytest.raises(ConfigError, match="action_cls"):
        OpenEnvEnv(env=object)
    t0 = time.monotonic()
    with pytest.raises(EnvError, match=r"127\.0\.0\.1:1/schema"):
        OpenEnvEnv(base_url="http://127.0.0.1:1", connect_timeout_s=2)
    assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------------------------------------ failing servers
def _serve_forked(sock: socket.socket) -> None:  # runs in the forked child
    import uvicorn

    from turngym.envs.builtin.openenv_games import create_guess_app

    uvicorn.Server(uvicorn.Config(create_guess_app(), log_level="error")).run(sockets=[sock])


@needs_openenv
@pytest.mark.skipif(sys.platform != "linux", reason="forks a server process")
def test_server_killed_mid_episode_truncates_cleanly():
    from turngym.envs.builtin.openenv import OpenEnvEnv

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proc = multiprocessing.get_context("fork").Process(target=_serve_forked, args=(sock,), daemon=True)
    proc.start()
    sock.close()
    env = None
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for the server: the schema is read at construction
            try:
                env = OpenEnvEnv(base_url=url, connect_timeout_s=2, message_timeout_s=5, max_turns=16)
                break
            except EnvError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert env.tool_name == "guess" and env.action_cls is None  # the action schema came from the server
        _, info = env.reset(seed=4)
        assert info["task"]["gold_answer"] == str(secret_of(4))
        first = 8 if secret_of(4) != 8 else 9
        obs, _, term, trunc, _ = env.step(f"<guess> {first} </guess>")
        assert f"{first} is too" in obs[0]["content"] and not (term or trunc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(5)
        t0 = time.monotonic()
        obs, reward, term, trunc, info = env.step("<guess> 8 </guess>")
        assert time.monotonic() - t0 < 5
        assert (term, trunc, reward) == (False, True, 0.0)
        assert info["truncated_by"] == "server_error" and "unreachable" in info["server_error"]
        assert obs[0]["content"].startswith("Error:") and info["tool_errors"] == 1
        assert info["success"] is False and info["outcome"] == 0.0
        with pytest.raises(EnvError, match=url.replace(".", r"\.")):
            env.reset(seed=5)  # nothing to reconnect to: a clear error naming the server
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        if env is not None:
            env.close()


def _flaky_classes():
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import Action, Observation, State

    class FlakyAction(Action):
        word: str

    class FlakyObservation(Observation):
        echo: str = ""

    class FlakyEnvironment(Environment):
        """Echoes words; 'boom' raises inside step, 'sleep' takes 3 s, 'stop' ends the episode with reward 1."""

        SUPPORTS_CONCURRENT_SESSIONS = True

        def __init__(self):
            super().__init__()
            self._state = State()

        def reset(self, seed=None, episode_id=None, **kwargs):
            self._state = State(step_count=0)
            return FlakyObservation(echo="ready")

        def step(self, action, timeout_s=None, **kwargs):
            if action.word == "boom":
                raise RuntimeError("the flaky env exploded")
            if action.word == "sleep":
                time.sleep(3)
            self._state.step_count += 1
            return FlakyObservation(echo=action.word, done=action.word == "stop", reward=float(action.word == "stop"))

        @property
        def state(self):
            return self._state

    return FlakyEnvironment, FlakyAction, FlakyObservation


@needs_openenv
def test_server_errors_are_observations_and_a_slow_server_truncates():
    from turngym.envs.builtin.openenv import OpenEnvEnv

    env_cls, act, obs_cls = _flaky_classes()
    env = OpenEnvEnv(env=env_cls, action_cls=act, observation_cls=obs_cls, message_timeout_s=0.5, max_turns=8)
    try:
        obs, info = env.reset(seed=0)
        assert obs[1]["content"] == "ready" and info["task"]["gold_calls"] == []  # no gold_actions in its state
        obs, _, term, trunc, info = env.step("<flaky> boom </flaky>")
        assert not (term or trunc) and "exploded" in obs[0]["content"] and "EXECUTION_ERROR" in obs[0]["content"]
        obs, *_ = env.step("<flaky> hello </flaky>")
        assert obs[0]["content"] == "hello"  # the session survived the server's error
        t0 = time.monotonic()
        obs, _, term, trunc, info = env.step("<flaky> sleep </flaky>")
        assert time.monotonic() - t0 < 2.5
        assert (term, trunc, info["truncated_by"]) == (False, True, "server_error")
        assert "no reply" in info["server_error"]
        env.reset(seed=1)  # a new session
        obs, reward, term, trunc, info = env.step("<flaky> stop </flaky>")
        assert (obs[0]["content"], reward, term, info["success"]) == ("stop", 1.0, True, True)
        env.reset(seed=2)
        with pytest.raises(NotImplementedError, match="gold_actions"):
            env.expert_action(np.random.default_rng(0))
    finally:
        env.close()


# ------------------------------------------------------------------------------------------------ openenv's own env
@pytest.fixture(scope="module")
def echo_template(tmp_path_factory):
    """The echo environment of openenv-core's ``openenv init`` template, generated by its own command."""
    pytest.importorskip("openenv.core")
    from openenv.cli.commands.init import init

    out = tmp_path_factory.mktemp("openenv_init")
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = ""  # `init` then skips its `uv lock` step (which needs the network)
    try:
        init("echo_probe", output_dir=str(out))
    finally:
        os.environ["PATH"] = path
    sys.path.insert(0, str(out))
    try:
        import echo_probe.server.app as app_mod
        from echo_probe import models
        from echo_probe.server.echo_probe_environment import EchoProbeEnvironment

        yield app_mod.app, EchoProbeEnvironment, models.EchoProbeAction, models.EchoProbeObservation
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == "echo_probe" or m.startswith("echo_probe.")]:
            del sys.modules[name]


@needs_openenv
def test_openenvs_own_echo_env_served_from_its_app(echo_template):
    from turngym.envs.builtin.openenv import OpenEnvEnv, _LoopbackServer

    app, *_ = echo_template
    server = _LoopbackServer(app)  # the template's own FastAPI app (one session at a time)
    env = None
    try:
        env = OpenEnvEnv(base_url=server.url, max_turns=2)
        assert env.tool_name == "echo_probe"
        obs, _ = env.reset(seed=0)
        assert obs[1]["content"] == "echoed_message: Echo Probe environment ready!\nmessage_length: 0"
        obs, reward, term, trunc, info = env.step("<echo_probe> hello </echo_probe>")
        assert obs[0]["content"] == "echoed_message: hello\nmessage_length: 5"
        assert reward == pytest.approx(0.5) and not (term or trunc)  # the echo env's reward: 0.1 per character
        _, reward, term, trunc, info = env.step("<echo_probe> hi </echo_probe>")
        assert trunc and info["truncated_by"] == "max_turns"
        assert info["outcome"] == pytest.approx(0.7) and info["success"] is False  # sum of rewards, clipped
    finally:
        if env is not None:
            env.close()
        server.stop()


@needs_openenv
def test_plain_text_actions_with_parse_action(echo_template):
    from turngym.envs.builtin.openenv import OpenEnvEnv

    _, env_cls, act, obs_cls = echo_template

    def parse_action(text: str) -> dict:
        if not text.strip():
            raise ValueError("say something")
        return {"message": text.strip()}

    env = OpenEnvEnv(
        env=env_cls, action_cls=act, observation_cls=obs_cls, parse_action=parse_action,
        format_action=lambda fields: fields["message"], max_turns=3,
    )
    try:
        obs, _ = env.reset()
        assert "each message you send is one action" in obs[0]["content"]
        obs, reward, *_ = env.step("  the whole text is the message ")
        assert obs[0]["content"].startswith("echoed_message: the whole text is the message\n")
        assert reward == pytest.approx(0.1 * len("the whole text is the message"))  # the echo env's reward
        obs, reward, term, trunc, info = env.step("   ")
        assert obs[0]["role"] == "user" and "say something" in obs[0]["content"] and reward == 0.0
        assert info["parse_errors"] and not (term or trunc)
    finally:
        env.close()


# ------------------------------------------------------------------------------------------------ docs example
@needs_openenv
def test_docs_example():
    import turngym

    env = turngym.make("openenv/OpenEnv-v0")  # serves the OpenEnv guessing game on 127.0.0.1
    obs, info = env.reset(seed=0)
    print(obs[1]["content"])  # the server's first observation, as text
    obs, _, terminated, truncated, info = env.step("<guess> 16 </guess>")
    print(obs[0]["content"])  # message: 16 is too low. ...
    rng = np.random.default_rng(0)
    while not (terminated or truncated):  # the scripted expert (binary search) finishes the game
        obs, _, terminated, truncated, info = env.step(env.expert_action(rng))
    print(info["success"], info["outcome"])  # True 1.0
    env.close()  # closes the session (and the server, when no other env uses it)
    assert info["success"] is True and info["outcome"] == 1.0


# ------------------------------------------------------------------------------------------------ training
@needs_openenv
@pytest.mark.slow
def test_one_grpo_step_through_the_adapter(tmp_path):
    import torch

    from turngym.trainers.checkpoint import checkpoint_dirs, load_checkpoint
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.grpo import train
    from turngym.trainers.runlog import read_metrics

    run = tmp_path / "run"
    cfg = resolve_train_config(None, [
        f"env_id={ID}", "model=tiny", "model_size=1m", "device=cpu", "credit=grpo", "steps=1", "tasks_per_step=2",
        "group_size=2", "minibatch_size=4", "pretrain_steps=0", "sft_steps=2", "sft_episodes=8", "eval_tasks=2",
        "max_new_tokens=16", "max_traj_tokens=320", "checkpoint_every=0", "save_trajectories=4", "tensorboard=false", "progress=false",
        "report=false", "torch_threads=1", "seed=0", "lr=1e-3", f"cache_dir={tmp_path / 'cache'}", f"run_dir={run}",
    ])
    summary = train(cfg)
    assert summary["steps"] == 1
    (line,) = read_metrics(run, kind="train")
    assert np.isfinite(line["train/loss"])
    dirs = checkpoint_dirs(run)
    first, last = load_checkpoint(dirs[0]), load_checkpoint(dirs[-1])
    assert any(not torch.equal(first.model_state[k], last.model_state[k]) for k in first.model_state)
    trajs = (run / "trajectories.jsonl").read_text()
    assert "guesses_left" in trajs  # observations came from the OpenEnv server
