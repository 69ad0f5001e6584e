"""`algo=multi` checkpoints and `--resume`: every learner (model + optimizer), the self-play pool, the RNGs and the
run log come back, the step count continues, and each train step is logged exactly once.

Mirrors `tests/trainers/test_resume_e2e.py` (the single-agent trainer) in process: run 2 steps, resume the same run
directory to 4 steps, and compare with an uninterrupted 4-step run.
"""

from __future__ import annotations

import pytest
import torch

COMPARED = ("rollout/reward", "rollout/action_tokens", "multi/bidder_0/reward", "multi/bidder_1/reward")


@pytest.mark.parametrize("mode", ["self_play", "separate"])
def test_run_two_steps_then_resume_to_four_matches_an_uninterrupted_run(tmp_path, mode, tiny_overrides,
                                                                       train_lines):
    from turngym.trainers.checkpoint import load_latest
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.multi import train

    cache = tmp_path / "cache"
    extra = {"multi_mode": mode, "selfplay_every": 1, "selfplay_pool": 2, "lr": 3e-4, "cache_dir": cache}
    run, ref = tmp_path / "run", tmp_path / "ref"

    train(resolve_train_config("multi-sealedbid", tiny_overrides(run, **extra)))
    assert [d["step"] for d in train_lines(run)] == [1, 2]
    first = load_latest(run)
    assert first.step == 2 and first.extra["learners"] == (["learner"] if mode == "self_play" else
                                                           ["bidder_0", "bidder_1"])
    if mode == "self_play":
        assert first.extra["pool_size"] == 2  # a snapshot per step, at most selfplay_pool kept
        assert any(k.startswith("pool.1.") for k in first.model_state)

    cfg = resolve_train_config(None, ["steps=4"], resume_dir=str(run))
    assert cfg.resume and cfg.run_dir == str(run) and cfg.multi_mode == mode
    train(cfg)
    lines = train_lines(run)
    assert [d["step"] for d in lines] == [1, 2, 3, 4]  # nothing duplicated, nothing lost
    text = (run / "metrics.jsonl").read_text()
    assert text.count('"sft/episodes"') == 1  # no second warm start (its summary line is written once)
    assert load_latest(run).step == 4

    # the same RNG states, pool and data order: the resumed steps reproduce an uninterrupted run
    train(resolve_train_config("multi-sealedbid", tiny_overrides(ref, **extra, steps=4)))
    want = train_lines(ref)
    # the resumed steps trained (non-zero advantages), so a lost optimizer state or RNG would show
    assert any(v > 0 for d in lines[2:] for k, v in d.items() if k.endswith("credit/adv_std") and v is not None)
    for key in COMPARED:
        assert [d.get(key) for d in lines] == pytest.approx([d.get(key) for d in want], rel=1e-6, abs=1e-9), key
    got_w, want_w = load_latest(run).model_state, load_latest(ref).model_state
    assert got_w.keys() == want_w.keys()
    assert all(torch.allclose(got_w[k], want_w[k], atol=1e-6) for k in got_w)


def test_resume_without_a_checkpoint_starts_over(tmp_path, tiny_overrides, train_lines):
    """A run directory whose checkpoints were all lost: `--resume` starts the run again from step 0."""
    import shutil

    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.multi import train

    run = tmp_path / "run"
    train(resolve_train_config("multi-sealedbid", tiny_overrides(run, steps=1, sft_steps=0,
                                                                  cache_dir=tmp_path / "cache")))
    shutil.rmtree(run / "checkpoints")
    train(resolve_train_config(None, [], resume_dir=str(run)))
    assert [d["step"] for d in train_lines(run)] == [1]


@pytest.mark.slow
def test_sigkill_then_resume_continues_without_duplicate_or_lost_lines(tmp_path, tiny_overrides, train_lines,
                                                                     sigkill_training):
    """`turngym train multi-sealedbid` SIGKILLed at a random moment after a train step, then `--resume`d."""
    import os
    import random
    import subprocess
    import sys

    from turngym.trainers.checkpoint import load_latest

    steps = 4
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    kill_after = random.Random().randint(1, steps - 2)
    sigkill_training(["train", "multi-sealedbid", *tiny_overrides(run, steps=steps, keep_checkpoints=2, lr=3e-4,
                                                                  cache_dir=tmp_path / "cache")],
                     run, kill_after, train_lines, cwd=tmp_path, env=env)
    ckpt = load_latest(run)
    assert ckpt is not None and ckpt.step >= kill_after - 1
    r = subprocess.run([sys.executable, "-m", "turngym.cli", "train", "--resume", str(run)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [d["step"] for d in train_lines(run)] == list(range(1, steps + 1)), f"killed after {ckpt.step}"
    assert load_latest(run).step == steps
