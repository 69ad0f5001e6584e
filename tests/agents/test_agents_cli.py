"""`turngym rollout` / `turngym eval` implementations (turngym.evaluate)."""

from __future__ import annotations

import json

import pytest

from turngym.errors import ConfigError
from turngym.evaluate import eval_main, rollout_main
from turngym.types import read_jsonl

ENV_ID = "search/HopQA-v0"


@pytest.fixture(scope="module")
def tiny_dir(tiny, tiny_cache):
    dirs = [d for d in tiny_cache.iterdir() if (d / "config.json").exists()]
    assert len(dirs) == 1
    return str(dirs[0])


def test_rollout_main_writes_jsonl(tiny_dir, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    rc = rollout_main([ENV_ID, "--policy", "scripted", "--model", tiny_dir, "--n", "2", "--group", "3",
                       "--out", str(out), "--no-progress", "--noise", "0"])
    assert rc == 0
    trajs = list(read_jsonl(out))
    assert len(trajs) == 6 and {t.group_id for t in trajs} == {f"{ENV_ID}:0", f"{ENV_ID}:1"}
    assert all(t.outcome == 1.0 for t in trajs)  # the noiseless expert solves every task
    assert "wrote 6 trajectories" in capsys.readouterr().out


def test_eval_main_reports_metrics(tiny_dir, capsys):
    rc = eval_main([ENV_ID, "--policy", "hf", "--model", tiny_dir, "--n", "2", "--max-new-tokens", "8",
                    "--max-turns", "2", "--json", "--no-progress"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["n"] == 2 and m["success_rate"] == 0.0 and m["mean_turns"] <= 2
    assert set(m) >= {"tool_errors_per_traj", "stop_reasons", "mean_outcome"}


def test_kwargs_form_and_errors(tiny_dir, tmp_path):
    out = tmp_path / "k.jsonl"
    assert rollout_main(env=ENV_ID, policy="scripted", model=tiny_dir, n=1, out=str(out), no_progress=True) == 0
    assert len(list(read_jsonl(out))) == 1
    with pytest.raises(ConfigError, match="--out"):
        rollout_main([ENV_ID, "--model", tiny_dir])
    with pytest.raises(ConfigError, match="--url"):
        eval_main([ENV_ID, "--policy", "openai", "--model", tiny_dir, "--no-progress"])
