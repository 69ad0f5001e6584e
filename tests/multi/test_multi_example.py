"""examples/two_agent_env.py: the README's two-agent env runs, passes PettingZoo's checks, and is short."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
from pettingzoo.test import api_test, seed_test

from turngym.envs.multi.episodes import play_aec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two_agent_env.py"


def _load():
    spec = importlib.util.spec_from_file_location("two_agent_env_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_script_runs():
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "speaker_0: reward 1.0, success True" in out.stdout
    assert "Passed API test" in out.stdout


def test_example_env_passes_pettingzoo_checks_and_plays():
    mod = _load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        api_test(mod.SpeakerListener(), num_cycles=50)
        seed_test(mod.SpeakerListener, num_cycles=20)
    env = mod.SpeakerListener()
    rng = np.random.default_rng(0)
    wins = [
        play_aec(env, lambda a, o: env.expert_action(a, rng), seed=s)["listener_0"].outcome for s in range(8)
    ]
    assert wins == [1.0] * 8
    # a listener that ignores its partner is right only by chance
    lost = [
        play_aec(
            env,
            {
                "speaker_0": lambda a, o: "<answer>zzz</answer>",
                "listener_0": lambda a, o: "<answer>red</answer>",
            },
            seed=s,
        )["listener_0"].outcome
        for s in range(8)
    ]
    assert sum(lost) < 8


def test_example_env_is_about_thirty_lines():
    src = EXAMPLE.read_text().splitlines()
    start = next(i for i, line in enumerate(src) if line.startswith("class SpeakerListener"))
    end = next(i for i, line in enumerate(src) if line.startswith("turngym.register("))
    assert end - start <= 35
