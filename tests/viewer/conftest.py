"""Shared fixtures of the viewer tests: the tiny tokenizer and one real run directory per session."""

from __future__ import annotations

import pytest
from viewer_helpers import tiny_tokenizer, write_run


@pytest.fixture(scope="session")
def tok():
    import torch

    torch.set_num_threads(1)
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, tok):
    """A run directory written by RunLog from scripted HopQA rollouts credited by MatchTIR and annotated."""
    return write_run(tmp_path_factory.mktemp("viewer") / "run", tok)
