"""Suite-wide settings.

Hypothesis runs derandomized (a fixed example sequence per test) when ``CI`` is set, so a CI run is
reproducible; locally it explores new examples each run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def sigkill_training():
    """``kill(args, run, after_step, train_lines, *, cwd, env)``: start ``python -m turngym.cli *args``, wait until
    ``train_lines(run)`` holds a train line of step ``>= after_step``, then SIGKILL the process at a random moment
    within the next second (inside the next step or its checkpoint). Fails the test if training exits first or
    does not get there within ``timeout`` seconds."""

    def kill(args: list[str], run: Path, after_step: int, train_lines, *, cwd: Path, env: dict,
             timeout: float = 900.0) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "turngym.cli", *args], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + timeout
            while time.time() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"training exited (rc {proc.returncode}) before step {after_step}:\n"
                                f"{proc.stdout.read()}")
                if (Path(run) / "metrics.jsonl").exists() and any(d["step"] >= after_step for d in train_lines(run)):
                    break
                time.sleep(0.05)
            else:
                pytest.fail("training did not reach the kill step in time")
            time.sleep(random.Random().uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    return kill
