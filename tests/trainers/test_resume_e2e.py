"""End to end: SIGKILL a real `turngym train` at a random step, resume it, and check the bookkeeping.

After the resume: the latest checkpoint loads; the step count continues from it; every train step
1..N appears exactly once in metrics.jsonl (nothing duplicated, nothing lost); and, because the RNG
states and the data order are restored, the resumed steps reproduce an uninterrupted run's rollouts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("turngym.trainers.grpo") is None,
        reason="turngym.trainers.grpo (the lead's GRPO trainer) does not exist yet",
    ),
]

STEPS = 5
TINY = [
    f"steps={STEPS}", "pretrain_steps=4", "group_size=2", "tasks_per_step=2", "minibatch_size=4", "grad_accum=1",
    "sft_steps=2", "sft_episodes=8", "sft_batch_size=4", "eval_tasks=4", "eval_every=0",
    "max_new_tokens=32", "max_traj_tokens=384", "checkpoint_every=1", "keep_checkpoints=2",
    "tensorboard=false", "progress=false", "report=false", "torch_threads=1", "save_trajectories=1", "seed=3",
]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _train_lines(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for raw in path.read_text().splitlines():
        try:
            d = json.loads(raw)
        except ValueError:
            continue
        if d.get("kind") == "train":
            out.append(d)
    return out


def _run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "turngym.cli", *args], check=False, cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_sigkill_then_resume_continues_without_duplicate_or_lost_lines(tmp_path, sigkill_training):
    from turngym.trainers.checkpoint import load_latest

    run = tmp_path / "run"
    kill_after = random.Random().randint(1, STEPS - 2)  # kill once this train step has been logged
    sigkill_training(["train", *TINY, f"run_dir={run}"], run, kill_after, _train_lines, cwd=tmp_path, env=_env())

    ckpt = load_latest(run)
    assert ckpt is not None, "no checkpoint survived the kill"
    killed_at = ckpt.step
    assert killed_at >= kill_after - 1

    r = _run(["train", "--resume", str(run)], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr

    lines = _train_lines(run)
    steps = [d["step"] for d in lines]
    assert steps == list(range(1, STEPS + 1)), f"killed after checkpoint {killed_at}; train steps logged: {steps}"
    final = load_latest(run)
    assert final is not None and final.step == STEPS

    # same RNG + data order: the resumed steps reproduce an uninterrupted run
    ref = tmp_path / "ref"
    r = _run(["train", *TINY, f"run_dir={ref}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    ref_lines = _train_lines(ref)
    for key in ("rollout/reward", "rollout/turns", "rollout/action_tokens"):
        got = [d.get(key) for d in lines]
        want = [d.get(key) for d in ref_lines]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), (key, killed_at, got, want)
