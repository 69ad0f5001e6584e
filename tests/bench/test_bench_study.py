"""`turngym bench study`: run configs from presets, curve / threshold aggregation on hand-made logs, and a tiny
end-to-end study from a shared SFT checkpoint that writes its table and PNG."""

from __future__ import annotations

import json
import math

import pytest
from conftest import TINY_SFT

from turngym import cli
from turngym.bench.study import (
    MODES,
    STUDY_METHODS,
    StudyConfig,
    aggregate,
    method_overrides,
    run,
    run_config,
    summarize_run,
)


def test_method_overrides_take_only_algorithm_keys_from_presets():
    assert method_overrides("ppo-bad")["algo"] == "ppo" and method_overrides("ppo-bad")["credit"] == "ppo-bad"
    assert method_overrides("slate")["sampler"] == "truncated_step"
    assert method_overrides("gigpo")["credit_overrides"] == {"anchor_source": "observation"}
    assert method_overrides("a2tgpo")["credit"] == "a2tgpo"
    for m in STUDY_METHODS:
        o = method_overrides(m)
        assert "kl_coef" not in o and "group_size" not in o and "tasks_per_step" not in o


def test_run_config_loads_the_sft_checkpoint_and_shares_the_budget(tmp_path):
    cfg = StudyConfig(out_dir=str(tmp_path), **{k: v for k, v in MODES["quick"].items()})
    runs = [run_config(cfg, "search/HopQA-v0", m, 0, tmp_path / "sft") for m in STUDY_METHODS]
    for r in runs:
        assert r.model == str(tmp_path / "sft") and r.sft_steps == 0 and r.kl_coef == 0.0
        assert (r.steps, r.tasks_per_step, r.group_size, r.lr) == (runs[0].steps, runs[0].tasks_per_step,
                                                                    runs[0].group_size, runs[0].lr)
    assert len({r.run_dir for r in runs}) == len(runs)


def _write_metrics(run_dir, lines):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))


def test_summarize_run_counts_env_steps(tmp_path):
    _write_metrics(tmp_path / "r", [
        {"step": 0, "kind": "eval", "eval/success": 0.25},
        {"step": 1, "kind": "train", "rollout/turns": 3.0, "rollout/trajectories": 8.0},
        {"step": 2, "kind": "train", "rollout/turns": 2.5, "rollout/trajectories": 8.0},
        {"step": 2, "kind": "eval", "eval/success": 0.5},
    ])
    s = summarize_run(tmp_path / "r")
    assert s["curve"] == [[0, 0.0, 0.25], [2, 44.0, 0.5]]
    assert s["env_steps"] == 44.0 and s["trajectories"] == 16.0


def test_aggregate_threshold_and_final_success():
    cfg = StudyConfig(methods=("a", "b"), envs=("e",), seeds=3, threshold_margin=0.2)
    def res(m, seed, curve, status="ok"):
        return {"env": "e", "method": m, "seed": seed, "status": status, "curve": curve,
                "env_steps": curve[-1][1] if curve else 0.0, "seconds": 1.0}
    results = [
        res("a", 0, [[0, 0, 0.2], [1, 10, 0.3], [2, 20, 0.5]]),
        res("a", 1, [[0, 0, 0.2], [1, 12, 0.4], [2, 25, 0.4]]),
        res("a", 2, [[0, 0, 0.2], [1, 11, 0.2], [2, 22, 0.3]]),
        res("b", 0, [[0, 0, 0.2], [1, 10, 0.2], [2, 20, 0.2]]),
        res("b", 1, None, status="failed: RuntimeError: boom"),
    ]
    rows = {r["method"]: r for r in aggregate(cfg, results)}
    assert rows["a"]["threshold"] == pytest.approx(0.4)
    assert rows["a"]["reached"] == 2 and rows["a"]["steps_to_threshold"] == 20  # hits at 12 and 20 -> upper median
    assert rows["a"]["final_mean"] == pytest.approx(0.4) and rows["a"]["final_std"] == pytest.approx(0.1)
    assert rows["b"]["reached"] == 0 and rows["b"]["steps_to_threshold"] is None
    assert rows["b"]["ok"] == 1 and rows["b"]["runs"] == 2 and rows["b"]["failures"] == ["failed: RuntimeError: boom"]


def test_cli_lists_the_packaged_benchmarks(capsys):
    assert cli.main(["bench"]) == 0
    assert "credit-accuracy, study (packaged)" in capsys.readouterr().out


def test_cli_unknown_method_is_rejected_before_any_work(tmp_path, capsys):
    rc = cli.main(["bench", "study", "--quick", "--methods", "a2tgp", "--out", str(tmp_path / "s")])
    assert rc != 0 and "a2tgpo" in capsys.readouterr().err
    assert not (tmp_path / "s" / "sft").exists()


def _tiny_study(tmp_path, sft_dir, methods):
    cfg = StudyConfig(methods=methods, envs=("search/HopQA-v0",), seeds=1, steps=1, tasks_per_step=2, group_size=2,
                      eval_every=1, eval_tasks=4, out_dir=str(tmp_path / "study"), sft_root=str(sft_dir),
                      **TINY_SFT)
    return run(cfg, log=lambda m: None)


def _check_outputs(tmp_path, summary, methods):
    out = tmp_path / "study"
    png = (out / "study_search_HopQA-v0.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    table = (out / "study.md").read_text()
    data = json.loads((out / "study.json").read_text())
    assert [r["method"] for r in data["table"]] == list(methods)
    for m in methods:
        assert f"| {m} |" in table
    failed = {r["method"]: r.get("traceback") for r in summary["runs"] if r["status"] != "ok"}
    assert not failed, failed
    starts = set()
    for r in summary["runs"]:
        (s0, es0, succ0), (s1, es1, _) = r["curve"][0], r["curve"][-1]
        assert (s0, es0, s1) == (0, 0.0, 1) and es1 > 0
        starts.add(succ0)
        assert not (out / "runs" / "search_HopQA-v0" / r["method"] / "seed0" / "checkpoints").exists()
    # every method starts from the SAME saved SFT checkpoint: the greedy step-0 evaluation is identical
    assert len(starts) == 1


def test_quick_study_from_one_sft_checkpoint(tmp_path, sft_dir):
    methods = ("grpo", "a2tgpo", "ppo-bad")
    summary = _tiny_study(tmp_path, sft_dir, methods)
    _check_outputs(tmp_path, summary, methods)


@pytest.mark.slow
def test_quick_study_all_methods(tmp_path, sft_dir):
    summary = _tiny_study(tmp_path, sft_dir, STUDY_METHODS)
    _check_outputs(tmp_path, summary, STUDY_METHODS)
    assert all(math.isfinite(r["final_mean"]) for r in summary["table"])
