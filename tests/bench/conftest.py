"""Shared fixtures of the benchmark tests: one tiny SFT checkpoint for the whole session (keeps the suite fast)."""

from __future__ import annotations

import pytest
import torch

#: SFT settings of the end-to-end tests (tiny: the policy is barely warm-started; enough to exercise every path).
TINY_SFT = {"sft_steps": 3, "sft_episodes": 8, "max_new_tokens": 24}


@pytest.fixture(scope="session")
def sft_dir(tmp_path_factory):
    """Root of the per-env SFT checkpoints (``<root>/search_HopQA-v0``): the first end-to-end test trains and saves
    the tiny SFT start, the others reuse it (same settings)."""
    torch.set_num_threads(1)
    return tmp_path_factory.mktemp("bench_sft")


@pytest.fixture(scope="session")
def tiny_setup(sft_dir):
    """``(setup, run_cfg)`` of the tiny SFT policy loaded from its saved checkpoint (trained on first use)."""
    from turngym.bench.sft import sft_checkpoint
    from turngym.trainers import common
    from turngym.trainers.config import TrainConfig

    cfg = TrainConfig(torch_threads=1, tensorboard=False, progress=False, report=False, **TINY_SFT)
    path, _ = sft_checkpoint(cfg, sft_dir / "search_HopQA-v0")
    run_cfg = cfg.replace(model=str(path), sft_steps=0)
    return common.setup(run_cfg), run_cfg
