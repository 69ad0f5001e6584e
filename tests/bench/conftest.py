"""Shared fixtures of the benchmark tests: one tiny SFT checkpoint for the whole session (keeps the suite fast)."""

from __future__ import annotations

import pytest
import torch
from bench_helpers import TINY_SFT


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
    from turngym.trainers import policy_setup
    from turngym.trainers.config import TrainConfig

    cfg = TrainConfig(torch_threads=1, tensorboard=False, progress=False, report=False, **TINY_SFT)
    path, _ = sft_checkpoint(cfg, sft_dir / "search_HopQA-v0")
    run_cfg = cfg.replace(model=str(path), sft_steps=0)
    return policy_setup.setup(run_cfg), run_cfg
