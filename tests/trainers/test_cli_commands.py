"""The `turngym` CLI: config errors exit 2 and write nothing; envs / check / delegation; train dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from turngym import cli

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-m", "turngym.cli", *args], check=False, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _assert_nothing_written(cwd: Path) -> None:
    assert sorted(p.name for p in cwd.iterdir()) == [], "a failed config must not create any file"


# --------------------------------------------------------------------------- subprocess: the real entry point


@pytest.mark.parametrize(
    "args,needles",
    [
        (["train", "grpoo"], ["Unknown preset 'grpoo'", "Did you mean 'grpo'"]),
        (["train", "grpo", "lrr=1e-4", "run_dir=out"], ["Unknown config key 'lrr'", "Did you mean 'lr'"]),
        (["train", "lr=fast", "run_dir=out"], ["'lr'", "'fast'", "expected float"]),
        (["train", "group_size=1", "run_dir=out"], ["group_size=1", "algo='grpo'"]),
        (["train", "tasks_per_step=3", "group_size=4", "minibatch_size=8", "run_dir=out"],
         ["3 * 4 = 12", "minibatch_size=8"]),
    ],
)
def test_train_config_errors_exit_2_and_write_nothing(tmp_path, args, needles):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    for needle in needles:
        assert needle in r.stderr
    assert "Traceback" not in r.stderr
    _assert_nothing_written(tmp_path)


def test_malformed_yaml_exits_2_with_line(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    bad = tmp_path / "bad.yaml"
    bad.write_text("credit: grpo\nlr: [1e-4\nsteps: 3\n")
    r = run_cli("train", str(bad), "run_dir=out", cwd=work)
    assert r.returncode == 2 and "Malformed YAML" in r.stderr and "line 3" in r.stderr, r.stderr
    _assert_nothing_written(work)


def test_envs_lists_registered_ids(tmp_path):
    r = run_cli("envs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "search/HopQA-v0" in r.stdout and "hopqa" in r.stdout.lower()


@pytest.mark.slow
def test_check_registered_id(tmp_path):
    r = run_cli("check", "search/HopQA-v0", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: search/HopQA-v0" in r.stdout and "reset_types" in r.stdout


# --------------------------------------------------------------------------- in process (fast)


def test_check_module_class_reports_failures(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_envs_for_check.py").write_text(textwrap.dedent(
        """
        from turngym.envs.registration import spec

        HopQA = spec("search/HopQA-v0").load()

        class NoTaskInfo(HopQA):
            def reset(self, *, seed=None, options=None):
                obs, info = super().reset(seed=seed, options=options)
                info.pop("task", None)
                return obs, info
        """
    ))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["check", "my_envs_for_check:NoTaskInfo"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: my_envs_for_check:NoTaskInfo" in out and "info['task']" in out
    assert cli.main(["check", "my_envs_for_check.py:HopQA", "--json"]) == 0
    assert '"reset_types": "ok"' in capsys.readouterr().out


def test_check_bad_target_is_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["check", "search/HopQA-v9"]) == 2
    assert "search/HopQA-v0" in capsys.readouterr().err
    assert cli.main(["check", "no_such_module_xyz:Env"]) == 2
    assert "Cannot import module 'no_such_module_xyz'" in capsys.readouterr().err


def test_help_config_lists_every_key(capsys):
    from turngym.config import field_types
    from turngym.trainers.config import TrainConfig

    assert cli.main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    for name in field_types(TrainConfig):
        assert f"\n  {name}: " in out


def test_print_config_resolves_preset_and_overrides(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--print-config", "matchtir", "lr=3e-5", "env_kwargs.hops=2"]) == 0
    out = capsys.readouterr().out
    assert "credit: matchtir" in out and "lr: 3.0e-05" in out and "env_kwargs: {hops: 2}" in out
    _assert_nothing_written(tmp_path)


def _trainers(**targets: str) -> dict[str, str]:
    """`cli.TRAINERS` with some algos pointed at other ``"module:function"`` targets."""
    return {algo: targets.get(algo, cli.TRAINERS[algo]) for algo in cli.TRAINERS}


def test_train_dispatches_the_resolved_config_to_the_trainer(tmp_path, monkeypatch):
    (tmp_path / "fake_trainer_mod.py").write_text("CALLS = []\ndef train(cfg):\n    CALLS.append(cfg)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "TRAINERS", _trainers(ppo="fake_trainer_mod:train"))
    assert cli.main(["train", "ppo-bad", "steps=3", "--model", "tiny"]) == 0
    import fake_trainer_mod

    (cfg,) = fake_trainer_mod.CALLS
    assert cfg.algo == "ppo" and cfg.credit == "ppo-bad" and cfg.steps == 3


def test_model_flag_uses_the_model_preset(capsys):
    assert cli.main(["train", "--print-config", "--model", "smollm2-135m"]) == 0
    out = capsys.readouterr().out
    assert "model: smollm2-135m" in out and "lora: true" in out
    assert cli.main(["train", "--print-config", "grpo", "--model", "/models/x"]) == 0
    out = capsys.readouterr().out
    assert "model: /models/x" in out and "credit: grpo" in out and "lora: false" in out


def test_missing_trainer_is_a_clear_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "TRAINERS", _trainers(grpo="turngym.trainers.not_written_yet:train"))
    assert cli.main(["train", "steps=1"]) == 1
    err = capsys.readouterr().err
    assert "grpo trainer is not available" in err and "not_written_yet" in err
    _assert_nothing_written(tmp_path)


def test_new_run_into_an_existing_run_dir_is_refused_before_work(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(cli, "TRAINERS", _trainers(grpo="no_trainer_should_be_imported:train"))
    assert cli.main(["train", f"run_dir={run}"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]


def test_resume_of_a_non_run_is_usage_error(tmp_path, capsys):
    assert cli.main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_delegating_commands_fail_clearly_when_module_is_missing(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "turngym.evaluate", None)  # as if not written yet
    assert cli.main(["eval", "--tasks", "5"]) == 1
    err = capsys.readouterr().err
    assert "`turngym eval` is not available" in err and "turngym.evaluate" in err


def test_serve_retriever_delegates_its_arguments(monkeypatch):
    import types

    seen = {}
    fake = types.ModuleType("fake_server")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "turngym.tools.search.server", fake)
    assert cli.main(["serve-retriever", "--corpus", "c.jsonl", "--port", "8123"]) == 0
    assert seen["argv"] == ["--corpus", "c.jsonl", "--port", "8123"]


def test_bench_unknown_name(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(["bench", "no_such_bench"]) == 2
    assert "Unknown benchmark 'no_such_bench'" in capsys.readouterr().err


def test_presets_command_lists_descriptions(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "A²TGPO" in out and "smollm2-135m" in out


def test_docs_check(tmp_path, capsys):
    assert cli.main(["docs", "--check", "--out", str(REPO / "docs")]) == 0
    assert cli.main(["docs", "--check", "--out", str(tmp_path)]) == 1
    assert cli.main(["docs", "--out", str(tmp_path)]) == 0
    assert cli.main(["docs", "--check", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
