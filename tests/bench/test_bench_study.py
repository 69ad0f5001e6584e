"""`turngym bench study`: run configs from presets, curve / threshold aggregation on hand-made logs, and a tiny
end-to-end study from a shared SFT checkpoint that writes its table and PNG."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, replace

import pytest
from bench_helpers import TINY_SFT

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
    assert "credit-accuracy, provider-quality, study (packaged)" in capsys.readouterr().out


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


# ------------------------------------------------------------------ the powered mode: recipe, resume, statistics


def test_powered_mode_runs_every_method_with_the_main_jobs_recipe(tmp_path):
    from turngym.bench.study import POWERED_METHODS
    from turngym.trainers.config import load_preset

    cfg = StudyConfig(out_dir=str(tmp_path), **MODES["powered"])
    default = load_preset("default")
    runs = {m: run_config(cfg, "search/HopQA-v0", m, 0, tmp_path / "sft") for m in POWERED_METHODS}
    for m, r in runs.items():
        assert r.credit == m and r.model == str(tmp_path / "sft") and r.sft_steps == 0
        # only the credit differs: clip range, entropy penalty, lr schedule and sizes are the main job's
        for key in ("entropy_coef", "lr_decay", "lr_min_ratio", "tasks_per_step", "minibatch_size",
                    "eval_temperature"):
            assert getattr(r, key) == default[key], (m, key)
        assert (r.eps_low, r.eps_high, r.steps, r.group_size) == (runs["grpo"].eps_low, runs["grpo"].eps_high, 50, 8)
    assert cfg.seeds_for == {"grpo": 5, "a2tgpo": 5} and cfg.final_eval


def test_textworld_runs_get_their_env_settings_and_hopqa_keeps_its_own(tmp_path):
    from turngym.bench.study import base_config
    from turngym.trainers.config import TrainConfig

    cfg = StudyConfig(out_dir=str(tmp_path), **MODES["powered"])
    tw = run_config(cfg, "text/TextWorld-v0", "grpo", 0, tmp_path / "sft")
    assert tw.env_kwargs == {"list_commands": True} and tw.max_traj_tokens == 1280 and tw.max_turns == 6
    warm = base_config(cfg, "text/TextWorld-v0")  # the warm start plays the env's own turn budget
    assert warm.max_traj_tokens == 1280 and warm.max_turns is None
    hop = run_config(cfg, "search/HopQA-v0", "grpo", 0, tmp_path / "sft")
    assert hop.env_kwargs == {"topk": 1, "worlds": 64} and hop.max_traj_tokens == TrainConfig().max_traj_tokens
    assert hop.max_turns is None
    # an explicit override of the study's extra settings still wins over the per-env budget
    extra = StudyConfig(out_dir=str(tmp_path), **(MODES["powered"] | {"extra": {"max_traj_tokens": 999}}))
    assert run_config(extra, "text/TextWorld-v0", "grpo", 0, tmp_path / "sft").max_traj_tokens == 999


def test_zero_control_gives_zero_advantages():
    import torch

    from turngym.credit import GroupBatch, assign_credit
    from turngym.types import Trajectory, Turn

    trajs = [Trajectory(prompt_ids=[1, 2], turns=[Turn(action_ids=[3, 4], logprobs=[-1.0, -1.0], obs_ids=[5])],
                        outcome=float(i % 2), group_id="g") for i in range(4)]
    out = assign_credit("zero", GroupBatch.from_trajectories(trajs))
    assert torch.equal(out.advantages, torch.zeros_like(out.advantages))
    assert out.advantages.shape[0] == 4


def test_bootstrap_table_known_answers():
    from turngym.bench.study_stats import bootstrap_table

    t = 200
    ref = [[1] * 60 + [0] * 140] * 3  # 0.30 on every seed
    better = [[1] * 100 + [0] * 100] * 3  # 0.50, a superset of ref's successes on the same tasks
    same = [[1] * 60 + [0] * 140] * 3
    tab = bootstrap_table({"grpo": ref, "b": better, "s": same}, "grpo", n_boot=500)
    assert tab["grpo"]["mean"] == pytest.approx(0.30) and tab["grpo"]["lo"] < 0.30 < tab["grpo"]["hi"]
    assert tab["b"]["diff"] == pytest.approx(0.20) and 0.0 < tab["b"]["diff_lo"] < 0.20 < tab["b"]["diff_hi"]
    assert tab["b"]["p_le_0"] == 0.0
    # identical outcomes on identical tasks: the paired difference is exactly 0 in every replicate
    assert tab["s"]["diff_lo"] == tab["s"]["diff_hi"] == 0.0 and tab["s"]["p_le_0"] == 1.0
    # seed spread widens the interval
    spread = bootstrap_table({"x": [[1] * 20 + [0] * 180, [1] * 100 + [0] * 100, [1] * 180 + [0] * 20]},
                             n_boot=500)["x"]
    flat = bootstrap_table({"x": [[1] * 100 + [0] * 100] * 3}, n_boot=500)["x"]
    assert spread["hi"] - spread["lo"] > 2 * (flat["hi"] - flat["lo"])
    with pytest.raises(ValueError, match="same tasks"):
        bootstrap_table({"a": [[1] * t], "b": [[1] * (t - 1)]})


def test_steps_to_reach_and_mean_curve():
    from turngym.bench.study_stats import mean_curve, steps_to_reach

    c = mean_curve([[[0, 0, 0.1], [5, 10, 0.2], [10, 20, 0.4]], [[0, 0, 0.1], [5, 9, 0.3], [10, 19, 0.2]]])
    assert c == [(0, pytest.approx(0.1)), (5, pytest.approx(0.25)), (10, pytest.approx(0.3))]
    assert steps_to_reach(c, 0.25) == 5 and steps_to_reach(c, 0.3) == 10 and steps_to_reach(c, 0.5) is None
    assert steps_to_reach(c, 0.05) == 5  # step 0 never counts


def test_final_table_pairs_methods_and_reports_speed():
    from turngym.bench.study import final_markdown, final_table

    cfg = StudyConfig(methods=("grpo", "a"), envs=("e",), seeds=2)
    def res(m, seed, t1, curve):
        return {"env": "e", "method": m, "seed": seed, "status": "ok", "curve": curve,
                "final_eval": {"t1": t1, "greedy": t1}}
    results = [res("grpo", s, [1, 0, 0, 0], [[0, 0, 0.0], [5, 1, 0.1], [10, 2, 0.25]]) for s in (0, 1)]
    results += [res("a", s, [1, 1, 0, 0], [[0, 0, 0.0], [5, 1, 0.3], [10, 2, 0.5]]) for s in (0, 1)]
    rows = {r["method"]: r for r in final_table(cfg, results)}
    assert rows["grpo"]["t1"]["mean"] == 0.25 and rows["a"]["t1"]["diff"] == pytest.approx(0.25)
    assert rows["grpo"]["steps_to_ref_final"] == 10 and rows["a"]["steps_to_ref_final"] == 5
    assert rows["a"]["steps_ratio"] == pytest.approx(0.5)
    md = "\n".join(final_markdown(list(rows.values()), "e"))
    assert "| a | 2 | 0.500" in md and "5 (0.50x)" in md


def test_finished_runs_are_not_rerun(tmp_path, tiny_setup):
    from turngym.bench.study import run_one

    sft_dir = tiny_setup[1].model  # the saved tiny SFT start
    cfg = StudyConfig(methods=("grpo",), envs=("search/HopQA-v0",), seeds=1, steps=1, tasks_per_step=2, group_size=2,
                      eval_every=1, eval_tasks=4, out_dir=str(tmp_path / "study"), sft_root=str(sft_dir),
                      final_eval=True, **TINY_SFT)
    spec = {"env": "search/HopQA-v0", "method": "grpo", "seed": 0, "final_eval": True,
            "config": run_config(cfg, "search/HopQA-v0", "grpo", 0, sft_dir)}
    first = run_one(spec)
    assert first["status"] == "ok", first.get("traceback")
    assert set(first["final_eval"]) == {"t1", "greedy"} and len(first["final_eval"]["greedy"]) == 4
    again = run_one(spec)
    assert again["reused"] and again["final_eval"] == first["final_eval"]
    # the study folder moved (copied elsewhere): its finished runs are still found there
    shutil.copytree(tmp_path / "study", tmp_path / "moved")
    moved = dict(spec, config=run_config(replace(cfg, out_dir=str(tmp_path / "moved")), "search/HopQA-v0", "grpo", 0,
                                         sft_dir))
    found = run_one(moved)
    assert found.get("reused") and found["final_eval"] == first["final_eval"]
    assert found["run_dir"] == moved["config"].run_dir
    changed = dict(spec, config=spec["config"].replace(lr=1e-4))  # another setting: trained again
    assert not run_one(changed).get("reused")


def test_a_warm_start_inside_the_study_folder_moves_with_it():
    from turngym.bench.study import portable_key

    def key(out, model, lr=1e-5):
        return {"run_dir": f"{out}/runs/text_TextWorld-v0/grpo/seed3", "model": model, "lr": lr}

    here, there = key("/a/study", "/a/study/sft/text_TextWorld-v0"), key("/b/s2", "/b/s2/sft/text_TextWorld-v0")
    assert portable_key(here) == portable_key(there) == {"model": "sft/text_TextWorld-v0", "lr": 1e-5}
    # a warm start outside the folder is another checkpoint when its path differs; any other setting still counts
    assert portable_key(key("/a/study", "/ckpt/one")) != portable_key(key("/b/s2", "/ckpt/two"))
    assert portable_key(key("/a/study", "/ckpt/one")) == portable_key(key("/b/s2", "/ckpt/one"))
    assert portable_key(here) != portable_key(key("/b/s2", "/b/s2/sft/text_TextWorld-v0", lr=2e-5))


def test_set_overrides_reach_the_warm_start_and_every_run(tmp_path):
    from turngym.bench.study import base_config, build_parser, config_from_args

    args = build_parser().parse_args(["--mode", "powered", "--envs", "text/TextWorld-Long-v0", "--out", str(tmp_path),
                                      "--set", "model=/ckpt/short", "--set", "env_kwargs.max_turns=24",
                                      "--set", "max_traj_tokens=2048", "--pretrain-steps", "0"])
    cfg = config_from_args(args)
    warm = base_config(cfg, "text/TextWorld-Long-v0")
    # the warm start fine-tunes the given model; a dotted entry keeps the env's other settings
    assert warm.model == "/ckpt/short" and warm.pretrain_steps == 0
    assert warm.env_kwargs == {"list_commands": True, "max_turns": 24} and warm.max_traj_tokens == 2048
    run = run_config(cfg, "text/TextWorld-Long-v0", "gigpo", 1, tmp_path / "sft")
    assert run.model == str(tmp_path / "sft") and run.sft_steps == 0  # a run starts from the warm start
    assert run.env_kwargs == warm.env_kwargs and run.max_traj_tokens == 2048


def test_bad_set_override_is_rejected_before_any_work(tmp_path, capsys):
    rc = cli.main(["bench", "study", "--quick", "--set", "max_traj_tokns=1", "--out", str(tmp_path / "s")])
    assert rc != 0 and "max_traj_tokens" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_sft_only_builds_a_warm_start_on_another_checkpoint_and_stops(tmp_path, tiny_setup, capsys):
    base = tiny_setup[1].model  # a saved warm start, as a short game's would be for its long preset
    out = tmp_path / "s"
    rc = cli.main(["bench", "study", "--quick", "--sft-only", "--out", str(out), "--set", f"model={base}",
                   "--pretrain-steps", "0", "--sft-steps", "2", "--sft-episodes", "4", "--max-new-tokens", "24"])
    assert rc == 0
    printed = capsys.readouterr().out
    warm = out / "sft" / "search_HopQA-v0"
    assert f"search/HopQA-v0: warm start {warm} (trained in" in printed
    key = json.loads((warm / "sft.json").read_text())["key"]
    assert key["model"] == base and key["pretrain_steps"] == 0 and key["sft_steps"] == 2
    assert not (out / "runs").exists() and not (out / "study.md").exists()
    assert cli.main(["bench", "study", "--quick", "--sft-only", "--out", str(out), "--set", f"model={base}",
                     "--pretrain-steps", "0", "--sft-steps", "2", "--sft-episodes", "4",
                     "--max-new-tokens", "24"]) == 0
    assert "(reused;" in capsys.readouterr().out


def test_first_seed_starts_the_grid_later_and_the_report_says_so(tmp_path):
    from turngym.bench.study import build_parser, config_from_args, markdown, run_specs

    args = build_parser().parse_args(["--mode", "powered", "--envs", "text/TextWorld-Long-v0", "--out", str(tmp_path),
                                      "--methods", "grpo,gigpo", "--seeds", "2", "--seeds-for", "gigpo=1",
                                      "--first-seed", "5", "--set", "entropy_coef=0", "--set", "checkpoint_every=5"])
    cfg = config_from_args(args)
    specs = run_specs(cfg, {"text/TextWorld-Long-v0": tmp_path / "sft"})
    assert [(s["method"], s["seed"]) for s in specs] == [("grpo", 5), ("gigpo", 5), ("grpo", 6)]
    assert [s["config"].seed for s in specs] == [5, 5, 6]
    assert specs[2]["config"].run_dir.endswith("grpo/seed6") and specs[2]["config"].entropy_coef == 0
    assert specs[2]["config"].checkpoint_every == 5  # --set may override a setting the study itself fixes
    assert [s["keep_checkpoints"] for s in specs] == [True, True, False]  # the first seed's, as seed 0's before

    def header(c):
        return markdown({"config": asdict(c), "table": [], "machine": "m", "date": "d", "seconds": 1}).splitlines()[0]

    assert "RL seeds from 5" in header(cfg) and "entropy_coef=0.0" in header(cfg)
    default = config_from_args(build_parser().parse_args(["--mode", "powered", "--out", str(tmp_path)]))
    assert default.first_seed == 0 and "seeds from" not in header(default) and "over the recipe" not in header(default)
