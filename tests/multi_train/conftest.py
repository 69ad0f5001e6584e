"""Shared fixtures for the multi-agent training tests: a tiny tokenizer for SearchTeam and two tiny models."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENV_ID = "multi/SearchTeam-v0"


@pytest.fixture(scope="session")
def team_tiny(tmp_path_factory):
    """``(tokenizer, searcher_model, answerer_model)``: tokenizer trained on 8 seeds of both roles' text, two
    random-init 1m decoders with different seeds (separate policies)."""
    import torch

    torch.set_num_threads(1)
    from turngym.agents.multi_rollout import multi_env_texts
    from turngym.agents.tiny import build_tiny_model, build_tokenizer

    tok = build_tokenizer(multi_env_texts(ENV_ID, n_seeds=8), vocab_size=1024)
    return tok, build_tiny_model(tok, "1m", max_positions=2048, seed=1).eval(), \
        build_tiny_model(tok, "1m", max_positions=2048, seed=2).eval()
