"""The run-directory protocol end to end, without the real trainer: a minimal training loop that uses
RunLog + checkpoints + NanGuard exactly as a trainer should is SIGKILLed at a random moment, resumed, and
must end with the same metrics lines as an uninterrupted run (same RNG stream, same data order).
"""

from __future__ import annotations

import json
import os
import random
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LOOP = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import torch
    from turngym.trainers.checkpoint import load_latest, save_checkpoint
    from turngym.trainers.config import TrainConfig, resolve_train_config
    from turngym.trainers.nanguard import NanGuard
    from turngym.trainers.runlog import RunLog

    torch.set_num_threads(1)
    if sys.argv[1] == "--resume":
        cfg = resolve_train_config(None, [], resume_dir=sys.argv[2], check_names=False)
    else:
        cfg = resolve_train_config(None, sys.argv[1:], check_names=False)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = NanGuard(cfg.max_nonfinite_steps)
    data = {"next_task": 0}
    ckpt = load_latest(cfg.run_dir) if cfg.resume else None
    log = RunLog(cfg.run_dir, cfg, resume_step=ckpt.step if ckpt else None,
                 resume_state=ckpt.extra.get("runlog") if ckpt else None)
    start = 0
    if ckpt is not None:
        ckpt.restore(model, opt)
        guard.load_state_dict(ckpt.extra["guard"])
        data = dict(ckpt.data_state)
        start = ckpt.step
    else:
        log.log(0, {"eval/success": 0.0}, kind="eval")
    for step in range(start + 1, cfg.steps + 1):
        tasks = list(range(data["next_task"], data["next_task"] + cfg.tasks_per_step))  # data order
        data["next_task"] += cfg.tasks_per_step
        x = torch.randn(8, 4)                                                           # RNG stream
        noise = float(np.random.rand())
        loss = (model(x) - sum(tasks)).pow(2).mean() * (float("nan") if step == 3 else 1.0)
        if guard.check(step, loss=loss):
            opt.zero_grad(); loss.backward(); opt.step()
        log.log(step, {"train/loss": loss.item(), "rollout/reward": noise, "rollout/trajectories": float(tasks[0])}
                | guard.metrics(step))
        time.sleep(0.02)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(cfg.run_dir, step, model=model, optimizer=opt, data_state=data, config=cfg,
                            extra={"runlog": log.state_dict(), "guard": guard.state_dict()}, keep=cfg.keep_checkpoints)
        print(step, flush=True)
    log.close()
    """
)

ARGS = ["steps=20", "checkpoint_every=2", "tasks_per_step=2", "group_size=2", "minibatch_size=4", "tensorboard=false",
        "progress=false", "seed=5"]


def _lines(run: Path) -> list[dict]:
    out = []
    for raw in (run / "metrics.jsonl").read_text().splitlines():
        d = json.loads(raw)  # every line parses: a torn line was cut on resume
        out.append({k: v for k, v in d.items() if k not in ("time", "elapsed_s")})
    return out


def test_killed_loop_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    ref = tmp_path / "ref"  # the uninterrupted reference runs in this process (no extra torch import)
    monkeypatch.setattr(sys, "argv", [str(script), *ARGS, f"run_dir={ref}"])
    runpy.run_path(str(script), run_name="__main__")

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), *ARGS, f"run_dir={run}"], env=env, stdout=subprocess.PIPE,
                            text=True)
    kill_after = random.Random().randint(3, 17)
    for line in proc.stdout:
        if int(line) >= kill_after:
            break
    time.sleep(random.Random().uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    r = subprocess.run([sys.executable, str(script), "--resume", str(run)], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    got, want = _lines(run), _lines(ref)
    assert [(d["kind"], d["step"]) for d in got] == [(d["kind"], d["step"]) for d in want]
    assert got == want, f"killed after step {kill_after}"
    assert [d["nonfinite/skipped"] for d in got if d["kind"] == "train"][:4] == [0, 0, 1, 0]
