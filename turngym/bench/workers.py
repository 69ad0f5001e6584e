"""Worker processes for the benchmark grids, which do not outlive the grid.

A grid of runs (`turngym bench study --jobs N`) trains in spawned worker processes. A plain
`concurrent.futures.ProcessPoolExecutor` keeps them when its parent stops abnormally: a ``kill`` of the study
leaves its workers training, each for as long as its run lasts (and TextWorld's interpreter hosts with them).
`worker_pool` is that executor with three guarantees:

* when the ``with`` block is left by an exception (including Ctrl-C), every worker is killed before it re-raises;
* SIGTERM to the parent acts as Ctrl-C while the block runs (so ``kill PID`` stops the grid the same way);
* a worker whose parent dies anyway (SIGKILL) exits by itself within about a second.

Finished runs are not lost: each run saves its own result before it returns, and the grids skip saved runs.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

PARENT_POLL_S = 1.0
"""How often a worker checks that its parent is still alive."""


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: a daemon thread ends the worker when its parent is gone (it was re-parented)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and kill every worker of ``pool`` now (their runs are abandoned)."""
    # ProcessPoolExecutor.kill_workers() exists from Python 3.14; before it, the executor's own process table
    # (read before shutdown, which drops it).
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(timeout=10)


@contextlib.contextmanager
def worker_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context `ProcessPoolExecutor` of ``jobs`` workers that are killed if the block fails or is stopped.

    Args:
        jobs: Worker processes.

    Yields:
        The executor (``submit``, ``map``); leaving the block normally waits for the submitted work, as usual.
    """
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                               initializer=_exit_with_parent, initargs=(os.getpid(),))
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        yield pool
    except BaseException:
        stop_workers(pool)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
