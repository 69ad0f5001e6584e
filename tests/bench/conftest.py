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
