"""``torchrun --nproc_per_node 2 -m turngym train``: the data-parallel learner end to end, on CPU with gloo.

The main job's preset (``default``) with small settings trains 2 steps. The reference is ONE process with
``learner_parallel=ddp``: no process group, the same per-group rollouts (`sampling.rank_groups`), so it sees the
batches the two ranks see together. Two ranks must end each step with the reference's weights and optimizer state
(within 1e-6) and write one run directory (rank 0): FSDP2 for both steps; DDP for step 1, in the run whose rank 1
is then SIGKILLed (one DDP run serves both checks, the suite's time being the budget). The kill ends the job with
torchrun's failure report naming the signal; ``--resume`` with 2 processes (FSDP2 this time) and with 1 process
then finishes step 2 with the reference's weights, each step logged once. Config errors that only exist under N
processes stop every rank before any work with one line.

With a 4-step warm start every reward of these 2 steps is 0, so the preset's entropy term (``entropy_coef=-0.2``) is
what moves the weights; the policy-gradient term under data parallelism is checked with live advantages by
`test_scale_distributed.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from turngym.errors import ConfigError
from turngym.trainers.config import TrainConfig
from turngym.trainers.dp import check_launch, launch_problem, merge_rank_metrics
from turngym.trainers.runlog import RunLog
from turngym.trainers.sampling import rank_groups, task_seeds

SMALL = ["default", "steps=2", "tasks_per_step=4", "group_size=2", "minibatch_size=8", "pretrain_steps=4",
         "sft_steps=4", "sft_episodes=16", "sft_batch_size=8", "eval_tasks=2", "torch_threads=1", "progress=false",
         "report=false", "tensorboard=false", "checkpoint_every=1", "keep_checkpoints=3"]
TOL = 1e-6


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun() -> str:
    path = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert path, "torchrun not found next to the python running the tests"
    return path


def _cmd(nproc: int, *args: str) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "turngym", "train", *args]
    return [_torchrun(), "--standalone", "--nproc_per_node", str(nproc), "-m", "turngym", "train", *args]


def _run(nproc: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(nproc, *args), capture_output=True, text=True, timeout=timeout, env=_env(),
                          check=False)


def _ckpt(run: Path, step: int, name: str = "model.pt"):
    return torch.load(run / "checkpoints" / f"step-{step:08d}" / name, weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _opt_diff(run: Path, ref: Path, step: int) -> float:
    a, b = _ckpt(run, step, "optimizer.pt")["optimizer"], _ckpt(ref, step, "optimizer.pt")["optimizer"]
    assert a["state"].keys() == b["state"].keys() and a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"]
    return max(float((a["state"][i][k] - b["state"][i][k]).abs().max()) for i in a["state"] for k in a["state"][i])


def _lines(run: Path, kind: str = "train") -> list[dict]:
    return [d for d in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if d["kind"] == kind]


# ------------------------------------------------------------------------------------------- fast unit tests


def test_rank_groups_shard_whole_groups_round_robin():
    cfg = TrainConfig(tasks_per_step=5, group_size=2, minibatch_size=10)
    one = rank_groups(cfg, 3)
    assert [t for _, t, _ in one] == task_seeds(cfg, 3)  # the single-process task seeds, in order
    assert len({s for _, _, s in one}) == 5  # a sampler seed per group
    for world in (2, 3):
        shards = [rank_groups(cfg, 3, r, world) for r in range(world)]
        assert sorted(x for sh in shards for x in sh) == one  # every group once, same seeds whatever N
        assert [i for i, _, _ in shards[1]] == list(range(1, 5, world))
    assert rank_groups(cfg, 4) != one  # another step, other tasks


def test_launch_problems_are_one_line_with_a_fix():
    ok = TrainConfig(tasks_per_step=4, group_size=2, minibatch_size=8)
    assert launch_problem(ok, 1) == "" and launch_problem(ok, 2) == "" and launch_problem(ok, 4) == ""
    bad = {
        "minibatch_size=8 is not divisible": (ok, 3),
        "tasks_per_step=4 is smaller": (ok.replace(minibatch_size=8), 8),
        "algo=ppo": (ok.replace(algo="ppo", credit="gae"), 2),
        "algo=multi": (ok.replace(algo="multi"), 2),
        "learner_parallel=none": (ok.replace(learner_parallel="none"), 2),
        "generation_backend='vllm'": (ok.replace(generation_backend="vllm"), 2),
        "dynamic_sampling=True": (ok.replace(dynamic_sampling=True), 2),
        "max_staleness=1": (ok.replace(max_staleness=1), 2),
        "device=cuda:0": (ok.replace(device="cuda:0"), 2),
    }
    for start, (cfg, world) in bad.items():
        msg = launch_problem(cfg, world)
        assert start in msg and "Fix:" in msg and "\n" not in msg, (start, msg)
        assert launch_problem(cfg, 1) == ""  # one process: the plain trainer takes all of these
        with pytest.raises(ConfigError):
            check_launch(cfg, world)


def test_merge_rank_metrics_weights_by_trajectories():
    r0 = ({"train/loss": 0.5, "rollout/success": 1.0, "rollout/trajectories": 6.0, "rollout/stop/answer": 1.0,
           "rollout/reward_std": 0.0, "perf/step_s": 2.0, "perf/tokens_per_s": 10.0, "credit/adv_abs": 0.3},
          [1.0] * 6)
    r1 = ({"train/loss": 0.5, "rollout/success": 0.0, "rollout/trajectories": 2.0, "rollout/stop/max_turns": 1.0,
           "rollout/reward_std": 0.0, "perf/step_s": 3.0, "perf/tokens_per_s": 5.0, "credit/adv_abs": 0.7},
          [0.0] * 2)
    m = merge_rank_metrics([r0, r1])
    assert m["train/loss"] == 0.5 and m["rollout/trajectories"] == 8.0
    assert m["rollout/success"] == pytest.approx(0.75) and m["credit/adv_abs"] == pytest.approx(0.4)
    assert m["rollout/stop/answer"] == pytest.approx(0.75) and m["rollout/stop/max_turns"] == pytest.approx(0.25)
    assert m["rollout/reward_std"] == pytest.approx(float(torch.tensor([1.0] * 6 + [0.0] * 2).std(correction=0)))
    assert m["perf/step_s"] == 3.0 and m["perf/tokens_per_s"] == 15.0


def test_runlog_of_another_rank_writes_nothing(tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), progress=False, tensorboard=False)
    run = RunLog(cfg.run_dir, cfg, write=False)
    line = run.log(1, {"train/loss": 0.25})
    assert line["train/loss"] == 0.25 and run.log_trajectories(1, [{"x": 1}]) == 0 and run.state_dict() == {}
    with pytest.raises(KeyError):
        run.log(1, {"no/such_metric": 1.0})  # keys are still checked
    run.message("silent")
    run.close()
    assert not (tmp_path / "run").exists()


def test_python_dash_m_turngym_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "turngym", "train", "default", "learner_parallel=ddpp"],
                          capture_output=True, text=True, timeout=300, env=_env(), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "learner_parallel" in proc.stderr and "'fsdp2'" in proc.stderr


# ------------------------------------------------------------------------------------------- torchrun, gloo


def test_distributed_config_error_stops_every_rank_before_work(tmp_path):
    run = tmp_path / "run"
    proc = _run(2, *SMALL, "minibatch_size=7", "tasks_per_step=7", f"run_dir={run}", timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("turngym train: error:")]
    assert lines and len(set(lines)) == 1, proc.stderr[-3000:]  # the same one line from each rank that printed
    assert "minibatch_size=7 is not divisible by the 2 processes" in lines[0] and "Fix:" in lines[0]
    assert "exitcode  : 2" in proc.stderr  # torchrun's report: the rank exited 2 (bad configuration)
    assert not run.exists()  # nothing written


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One process, ``learner_parallel=ddp`` (per-group rollouts, no process group): the batches of N ranks."""
    run = tmp_path_factory.mktemp("torchrun") / "ref"
    proc = _run(1, *SMALL, "learner_parallel=ddp", f"run_dir={run}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp2"])  # DDP: test_sigkill_of_a_rank_then_resume_with_two_and_one_process
def test_two_ranks_match_one_process(reference, tmp_path, strategy):
    run = tmp_path / strategy
    proc = _run(2, *SMALL, f"learner_parallel={strategy}", f"run_dir={run}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    start = _ckpt(reference, 0)
    for step in (1, 2):
        assert _max_diff(_ckpt(run, step), _ckpt(reference, step)) < TOL, (strategy, step)
        assert _opt_diff(run, reference, step) < TOL, (strategy, step)
    assert _max_diff(_ckpt(reference, 2), start) > 1e-4  # the steps moved the weights: the comparison can see
    ours, ref = _lines(run), _lines(reference)
    assert [d["step"] for d in ours] == [1, 2]  # rank 0 wrote each step once; the other rank wrote nothing
    for a, b in zip(ours, ref):
        assert a["rollout/trajectories"] == b["rollout/trajectories"] == 8.0  # both ranks' groups counted
        for k in ("train/loss", "train/entropy", "rollout/reward", "rollout/action_tokens"):
            assert a[k] == pytest.approx(b[k], abs=1e-5), k
    assert len(_lines(run, "eval")) == 2 and len(list((run / "checkpoints").glob("step-*"))) == 3


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        for k in map(int, kids):
            out += [k, *_children(k)]
    return out


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    for pid in _children(torchrun_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"-m" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    return None


@pytest.mark.slow
def test_sigkill_of_a_rank_then_resume_with_two_and_one_process(reference, tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(2, *SMALL, "learner_parallel=ddp", f"run_dir={run}"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        latest = run / "checkpoints" / "latest"
        while not (latest.exists() and latest.read_text().strip() == "step-00000001"):
            assert proc.poll() is None, f"training ended before checkpoint 1: {proc.stderr.read()[-3000:]}"
            assert time.time() < deadline, "no checkpoint 1 in time"
            time.sleep(0.05)
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None, "rank 1 not found"
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "rank      : 1" in err and "SIGKILL" in err, err[-3000:]  # torchrun names the rank and the signal
    assert not (run / "checkpoints" / "step-00000002").exists()  # killed inside step 2
    # DDP's step 1 (written before the kill) is the reference's: weights, optimizer state, one metrics line
    assert _max_diff(_ckpt(run, 1), _ckpt(reference, 1)) < TOL and _opt_diff(run, reference, 1) < TOL
    assert _max_diff(_ckpt(run, 1), _ckpt(reference, 0)) > 1e-5  # step 1 moved the weights: the check can see
    (line,) = _lines(run)
    assert line["rollout/trajectories"] == 8.0 and line["train/loss"] == pytest.approx(_lines(reference)[0]["train/loss"],
                                                                                          abs=1e-5)
    other = tmp_path / "killed-one-process"
    shutil.copytree(run, other)

    # the same N (and FSDP2: the full optimizer state sharded on load), and another N: full state dicts resume anywhere
    for nproc, where, extra in ((2, run, ["learner_parallel=fsdp2"]), (1, other, [])):
        res = _run(nproc, "--resume", str(where), *extra)
        assert res.returncode == 0, (nproc, res.stderr[-4000:])
        assert [d["step"] for d in _lines(where)] == [1, 2], nproc  # no step lost, none duplicated
        assert _max_diff(_ckpt(where, 2), _ckpt(reference, 2)) < TOL, nproc
        assert _opt_diff(where, reference, 2) < TOL, nproc
