"""RunLog: run directory, metrics JSONL, resume bookkeeping, TensorBoard, progress, metric docs, viewer."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from turngym.config import ConfigError, load_yaml
from turngym.trainers.config import TrainConfig
from turngym.trainers.runlog import (
    METRICS,
    RunLog,
    check_metric_keys,
    describe_metric,
    progress_stats,
    read_metrics,
    render_metrics_doc,
    view_run,
)
from turngym.types import Trajectory, Turn


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    return TrainConfig(run_dir=str(tmp_path / "run"), tensorboard=False, progress=False, steps=10, **kw)


def _train_line(step: int) -> dict[str, float]:
    return {"rollout/success": step / 10, "rollout/reward": step / 20, "train/kl": 0.001 * step,
            "train/loss": 1.0 / (step + 1)}


def _steps(run: Path, kind: str = "train") -> list[int]:
    return [d["step"] for d in read_metrics(run, kind)]


def test_writes_config_and_metrics(tmp_path):
    cfg = _cfg(tmp_path)
    with RunLog(None, cfg) as log:
        log.log(0, {"sft/step": 1, "sft/loss": 2.5}, kind="sft")
        log.log(0, {"eval/success": 0.1, "eval/tasks": 200}, kind="eval")
        line = log.log(1, _train_line(1) | {"train/grad_norm": float("nan")})
    run = tmp_path / "run"
    assert load_yaml(run / "config.yaml")["run_dir"] == str(run)
    assert TrainConfig(**load_yaml(run / "config.yaml")) == cfg  # the dump is the resolved config
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["sft", "eval", "train"]
    assert lines[2]["train/grad_norm"] is None and line["train/grad_norm"] is None  # NaN -> null, strict JSON
    assert lines[2]["rollout/success"] == pytest.approx(0.1) and lines[2]["step"] == 1
    for x in lines:
        assert set(x) >= {"step", "kind", "time", "elapsed_s"}


def test_default_run_dir_is_created_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with RunLog(None, TrainConfig(tensorboard=False, progress=False, credit="grpo")) as log:
        assert log.run_dir.parent == Path("runs") and log.run_dir.name.endswith("-grpo-grpo")
        assert log.cfg.run_dir == str(log.run_dir)


def test_undocumented_metric_key_is_an_error(tmp_path):
    with RunLog(None, _cfg(tmp_path)) as log:
        with pytest.raises(KeyError, match=r"undocumented metric key.*'train/made_up'"):
            log.log(1, {"train/made_up": 1.0})
        with pytest.raises(KeyError, match="reserved"):
            log.log(1, {"step": 3})
        log.log(1, {"credit/ig_mean": 0.3, "rollout/stop/max_turns": 0.5})  # documented families


def test_refuses_to_overwrite_an_existing_run(tmp_path):
    cfg = _cfg(tmp_path)
    RunLog(None, cfg).close()
    before = (tmp_path / "run" / "metrics.jsonl").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        RunLog(None, cfg)
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_mtime_ns == before


def _simulate_killed_run(tmp_path: Path, ckpt_step: int, last_step: int) -> tuple[TrainConfig, dict]:
    """Log SFT + eval at step 0, train steps 1..last_step, 'checkpoint' at ckpt_step, end with a torn line."""
    cfg = _cfg(tmp_path)
    log = RunLog(None, cfg)
    log.log(0, {"sft/step": 1, "sft/loss": 3.0}, kind="sft")
    log.log(0, {"eval/success": 0.2}, kind="eval")
    state = {}
    for step in range(1, last_step + 1):
        log.log(step, _train_line(step))
        log.log_trajectories(step, [Trajectory(group_id=f"g{step}", outcome=1.0, turns=[Turn(action_text="hi")])])
        if step == ckpt_step:
            state = log.state_dict()
    log.sync()
    with open(log.metrics_path, "a") as fh:
        fh.write(f'{{"step": {last_step + 1}, "kind": "train", "rollout/succ')  # killed mid-write
    return cfg, state


@pytest.mark.parametrize("use_offsets", [False, True])
def test_resume_truncates_to_the_checkpoint_without_duplicates(tmp_path, use_offsets):
    cfg, state = _simulate_killed_run(tmp_path, ckpt_step=4, last_step=7)
    run = tmp_path / "run"
    resumed = cfg.replace(resume=True, steps=9)
    with RunLog(run, resumed, resume_step=4, resume_state=state if use_offsets else None) as log:
        assert _steps(run) == [1, 2, 3, 4]
        for step in range(5, 10):
            log.log(step, _train_line(step))
            log.log_trajectories(step, [{"group_id": f"g{step}"}])
    assert _steps(run) == list(range(1, 10))  # nothing duplicated, nothing lost
    assert _steps(run, "sft") == [0] and _steps(run, "eval") == [0]
    traj_steps = [json.loads(x)["step"] for x in (run / "trajectories.jsonl").read_text().splitlines()]
    assert traj_steps == list(range(1, 10))
    assert load_yaml(run / "config.yaml")["steps"] == 9


def test_resume_without_any_checkpoint_starts_over(tmp_path):
    cfg, _ = _simulate_killed_run(tmp_path, ckpt_step=-1, last_step=3)
    with RunLog(tmp_path / "run", cfg.replace(resume=True), resume_step=None):
        pass
    assert read_metrics(tmp_path / "run") == []


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(run_dir=str(tmp_path / "run"), tensorboard=True, progress=False)
    with RunLog(None, cfg) as log:
        for step in (1, 2, 3):
            log.log(step, _train_line(step))
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    events = acc.Scalars("rollout/success")
    assert [e.step for e in events] == [1, 2, 3]
    assert [round(e.value, 4) for e in events] == [0.1, 0.2, 0.3]


def test_progress_text_and_plain_lines_when_not_a_terminal(tmp_path):
    assert progress_stats({"rollout/success": 0.5, "rollout/reward": 0.25, "train/kl": 0.0012,
                           "perf/tokens_per_s": 2500.0}) == "success 0.50  reward 0.250  KL 0.0012  tok/s 2.5k"
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with RunLog(None, _cfg(tmp_path), progress=True, console=console) as log:
        log.log(3, _train_line(3) | {"perf/tokens_per_s": 900.0})
        log.log(3, {"eval/success": 0.75, "eval/tasks": 200}, kind="eval")
    out = buf.getvalue()
    assert "3/10" in out and "success 0.30" in out and "tok/s 900" in out
    assert "eval @ step 3" in out and "success 0.750" in out


def test_live_progress_bar_on_a_terminal(tmp_path):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160)
    with RunLog(None, _cfg(tmp_path, credit="a2tgpo"), progress=True, console=console) as log:
        log.log(0, {"sft/step": 5, "sft/loss": 1.5}, kind="sft")
        log.log(2, _train_line(2))
    out = buf.getvalue()
    assert "SFT warm start" in out and "RL grpo/a2tgpo" in out and "success 0.20" in out


def test_metrics_doc_covers_every_key_and_patterns():
    doc = render_metrics_doc()
    for key, text in METRICS.items():
        assert text.strip() and f"`{key}`" in doc
    assert describe_metric("credit/adv_mean") == METRICS["credit/adv_mean"]
    assert describe_metric("credit/turn_frac_zero_var") == METRICS["credit/*_frac_zero_var"]
    assert describe_metric("credit/ig_mean") == METRICS["credit/*"]
    assert describe_metric("nope/x") is None
    with pytest.raises(KeyError, match="nope/x"):
        check_metric_keys(["rollout/success", "nope/x"])


def test_credit_diagnostics_are_documented():
    """The standard diagnostics of the credit library, prefixed credit/, are documented keys."""
    credit = pytest.importorskip("turngym.credit.base")
    import torch

    from turngym.credit import GroupBatch

    trajs = [Trajectory(group_id=f"g{i // 2}", prompt_ids=[1, 2], outcome=float(i % 2),
                        turns=[Turn(action_ids=[3, 4], logprobs=[-1.0, -1.0], obs_ids=[5])]) for i in range(4)]
    out = credit.assign_credit("grpo", GroupBatch.from_trajectories(trajs))
    check_metric_keys(f"credit/{k}" for k in out.diagnostics)
    assert isinstance(out.advantages, torch.Tensor)


def test_view_run_prints_curve_and_trajectories(tmp_path):
    _simulate_killed_run(tmp_path, ckpt_step=2, last_step=3)
    buf = io.StringIO()
    rc = view_run(tmp_path / "run", n=1, console=Console(file=buf, width=150))
    out = buf.getvalue()
    assert rc == 0 and "eval @ step 0" in out and "step 3" in out and "g3" in out and "hi" in out
    assert view_run(tmp_path, console=Console(file=io.StringIO())) == 2
