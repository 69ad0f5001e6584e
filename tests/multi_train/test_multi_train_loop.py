"""`algo=multi` on the shared loop (`turngym.trainers.loop`, plugged in as `multi.Multi`): what the loop runs for one
policy and the multi-agent trainer has no use for is refused before any work (under torchrun too), and a run's end
(final weights, summary, checkpoint extras, console line) is the multi-agent trainer's."""

from __future__ import annotations

import io
import json
import re

import pytest

from turngym.errors import ConfigError
from turngym.trainers.config import TrainConfig, resolve_train_config


def test_torchrun_refuses_multi_in_one_line_and_one_process_is_untouched():
    from turngym.trainers.dp import check_launch, launch_problem

    cfg = TrainConfig(algo="multi", tasks_per_step=4, group_size=2, minibatch_size=8)
    msg = launch_problem(cfg, 2)
    assert msg.startswith("algo=multi under 2 processes") and "Fix:" in msg and "\n" not in msg, msg
    assert launch_problem(cfg, 1) == ""
    with pytest.raises(ConfigError, match="algo=multi"):
        check_launch(cfg, 2)


@pytest.mark.parametrize(("setting", "says"), [
    ("kl_coef=0.1", "kl_coef=0.1 with algo=multi"),
    ("learner_parallel=ddp", "learner_parallel='ddp' with algo=multi"),
    ("rollout_backend=ray", "rollout_backend='ray' with algo=multi"),
    ("credit=oprl", "credit=oprl trains learned components"),
])
def test_what_the_loop_runs_for_one_policy_is_refused_before_any_work(tmp_path, setting, says):
    from turngym.trainers.multi import train

    run, cache = tmp_path / "run", tmp_path / "cache"
    cfg = resolve_train_config("multi-sealedbid", [setting, f"run_dir={run}", f"cache_dir={cache}"])
    with pytest.raises(ConfigError, match=re.escape(says)) as err:
        train(cfg)
    assert "Fix:" in str(err.value)
    assert not run.exists() and not cache.exists()


def test_a_run_ends_with_each_learners_weights_the_multi_summary_and_the_team_line(tmp_path, tiny_overrides):
    from rich.console import Console

    from turngym.trainers.checkpoint import load_latest
    from turngym.trainers.multi import train

    run = tmp_path / "run"
    out = io.StringIO()
    cfg = resolve_train_config("multi-sealedbid", tiny_overrides(
        run, steps=0, sft_steps=0, eval_tasks=1, multi_mode="separate", progress="true", cache_dir=tmp_path / "cache"))
    summary = train(cfg, console=Console(file=out, width=300))

    assert summary["multi_mode"] == "separate" and summary["steps"] == 0
    assert {"success_before", "success_after", "reward_before", "reward_after"} <= set(summary)
    assert all((run / "final" / name / "config.json").is_file() for name in ("bidder_0", "bidder_1"))
    ckpt = load_latest(run)
    assert ckpt.step == 0 and ckpt.extra["learners"] == ["bidder_0", "bidder_1"] and ckpt.extra["pool_size"] == 0
    assert ckpt.extra["opponent_rng"]["bit_generator"] == "PCG64"
    assert any(k.startswith("learners.1.") for k in ckpt.model_state)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [d for d in lines if d["kind"] == "eval"]
    assert len(evals) == 2 and all("multi/eval/team_success" in d for d in evals)  # before and after
    before, after = summary["success_before"], summary["success_after"]
    assert f"held-out team success: {before:.3f} -> {after:.3f} (1 tasks, separate); run directory {run}" \
        in out.getvalue()
