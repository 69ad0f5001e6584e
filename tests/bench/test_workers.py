"""`turngym.bench.workers.worker_pool`: no worker outlives a grid that fails, is sent SIGTERM, or is killed.

Each case runs a small grid in its own Python process: two workers that write their pid and sleep for ten minutes.
The test waits until both are running, stops the grid the case's way, and checks that the workers are gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from turngym.bench.workers import worker_pool

    def sleeper(folder, i):
        (Path(folder) / f"{os.getpid()}.pid").write_text(str(i))
        time.sleep(600)
        return i

    if __name__ == "__main__":
        folder, how = sys.argv[1], sys.argv[2]
        with worker_pool(2) as pool:
            futs = [pool.submit(sleeper, folder, i) for i in range(4)]
            if how == "fail":
                while len(list(Path(folder).glob("*.pid"))) < 2:
                    time.sleep(0.05)
                raise RuntimeError("the grid failed")
            print([f.result() for f in futs])
    """
)


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_for(pred, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def _start(tmp_path: Path, how: str) -> tuple[subprocess.Popen, list[int]]:
    script = tmp_path / "grid.py"
    script.write_text(SCRIPT)
    folder = tmp_path / "pids"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(folder), how], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # Spawned workers import turngym; on a loaded 2-core machine that can take many seconds.
    _wait_for(lambda: len(list(folder.glob("*.pid"))) >= 2 or proc.poll() is not None, 180)
    if len(list(folder.glob("*.pid"))) < 2 or (how != "fail" and proc.poll() is not None):
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the grid did not start its two workers: rc={proc.returncode}\n{out}\n{err}")
    return proc, [int(p.stem) for p in folder.glob("*.pid")]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("how", ["fail", "sigterm", "sigkill"])
def test_no_worker_outlives_the_grid(tmp_path: Path, how: str):
    proc, pids = _start(tmp_path, how)
    try:
        if how != "fail":  # (a failing grid kills its workers as soon as both have started)
            assert all(_alive(p) for p in pids)
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        elif how == "sigkill":
            proc.kill()
        rc = proc.wait(timeout=120)
        err = proc.stderr.read()
        if how == "fail":
            assert rc != 0 and "the grid failed" in err
        elif how == "sigterm":
            assert rc != 0 and "KeyboardInterrupt" in err, err
        assert _wait_for(lambda: not any(_alive(p) for p in pids), 60), f"workers still running after {how}"
    finally:
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
