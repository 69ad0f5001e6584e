"""Shared fixtures for the multi-agent training tests: a tiny tokenizer for SearchTeam and two tiny models; tiny
`algo=multi` run settings on SealedBid and a reader of a run's train lines."""

from __future__ import annotations

import json
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


@pytest.fixture
def tiny_overrides():
    """``f(run_dir, **kw) -> ["key=value", ...]``: a 2-step CPU run of the ``multi-sealedbid`` preset (2 auction
    rounds, tiny batches, a checkpoint every step), ``kw`` overriding any setting."""

    def make(run_dir, **kw) -> list[str]:
        base = {"steps": 2, "tasks_per_step": 2, "group_size": 4, "minibatch_size": 8, "max_new_tokens": 12,
                "max_traj_tokens": 64, "sft_steps": 30, "sft_episodes": 16, "sft_batch_size": 8, "eval_tasks": 2,
                "eval_every": 0, "lr": 1e-3, "env_kwargs.rounds": 2, "checkpoint_every": 1, "keep_checkpoints": 8,
                "torch_threads": 1, "tensorboard": "false", "progress": "false", "report": "false",
                "save_trajectories": 1, "run_dir": str(run_dir)}
        base.update(kw)
        return [f"{k}={v}" for k, v in base.items()]

    return make


@pytest.fixture
def train_lines():
    """``f(run_dir) -> [line, ...]``: the ``kind == "train"`` lines of the run's metrics.jsonl."""

    def read(run_dir) -> list[dict]:
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        return [d for d in lines if d["kind"] == "train"]

    return read
