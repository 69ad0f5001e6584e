"""The ``subprocess`` backend: a plain child process with rlimits. Always available; weakest isolation.

What it does for each run:
- a fresh temporary directory as the working directory (and ``HOME``/``TMPDIR``), removed afterwards;
- a scrubbed environment (only ``PATH``, ``HOME``, ``TMPDIR``, ``LANG``, ``PYTHON*`` encoding vars);
- ``python3 -I`` (isolated mode: no user site, no ``PYTHON*`` variables);
- rlimits: CPU time, address space, processes (NPROC), file size, no core dumps;
- when the host runs as root: the snippet runs as an unprivileged uid (``limits.uid``, default
  65534 "nobody"), so it cannot read root-only files, write outside world-writable places, or signal
  the host process;
- its own session / process group, killed as a whole on timeout or output overflow, and a sweep that
  kills any process that escaped the group (found by a per-run marker in its environment).

What it does NOT do: network isolation (the snippet can open sockets, including to loopback), a
private filesystem view (world-readable host files are readable; world-writable places like
``/dev/shm`` are writable), or protection when the host is not root (the snippet runs as the same
user as the host). Use ``bwrap`` or ``docker`` for untrusted code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from typing import Any

from turngym.tools.sandbox._launcher import LAUNCHER_SOURCE
from turngym.tools.sandbox.base import (
    SANDBOXES,
    Sandbox,
    SandboxLimits,
    SandboxResult,
    classify_exit,
    clean_output,
    communicate_capped,
    kill_group,
)

from turngym.errors import SandboxError

__all__ = ["SubprocessSandbox", "find_python", "kill_marked"]

MARKER_VAR = "TURNGYM_SANDBOX_RUN"


def find_python(uid: int | None) -> str:
    """A ``python3`` the sandbox user can execute (the host's may live under a private home dir)."""
    candidates = [shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin"), sys.executable]
    for c in candidates:
        if not c:
            continue
        if os.geteuid() != 0 or uid is None or _world_executable(c):
            return c
    raise SandboxError(
        "No python3 that an unprivileged user can run was found (looked in /usr/local/bin, /usr/bin, /bin and "
        f"{sys.executable}). Install the system python3 (apt-get install -y python3) or pass python=PATH."
    )


def _world_executable(path: str) -> bool:
    real = os.path.realpath(path)
    if not (os.stat(real).st_mode & 0o001):
        return False
    d = os.path.dirname(real)
    while d and d != "/":
        if not (os.stat(d).st_mode & 0o001):
            return False
        d = os.path.dirname(d)
    return True


def kill_marked(marker: str) -> int:
    """SIGKILL every process whose initial environment holds ``TURNGYM_SANDBOX_RUN=<marker>``."""
    needle = f"{MARKER_VAR}={marker}".encode()
    killed = 0
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def rlimit_config(limits: SandboxLimits, timeout_s: float) -> list[list[Any]]:
    """rlimits set by the launcher (NPROC is set there, relative to the uid's current process count)."""
    mb = 1024 * 1024
    out: list[list[Any]] = [
        ["RLIMIT_CPU", limits.cpu_seconds(timeout_s)],
        ["RLIMIT_AS", limits.memory_mb * mb],
        ["RLIMIT_FSIZE", limits.max_file_mb * mb],
        ["RLIMIT_CORE", 0],
        ["RLIMIT_NOFILE", 256],
    ]
    return out


@SANDBOXES.register("subprocess")
class SubprocessSandbox(Sandbox):
    """Child process with rlimits, temp dir, scrubbed env and (as root) an unprivileged uid.

    Args:
        limits: Base `SandboxLimits`.
        python: Interpreter to run the snippet with (default: the system ``python3``).
        **overrides: `SandboxLimits` fields.
    """

    kind = "subprocess"

    def __init__(self, limits: SandboxLimits | None = None, *, python: str | None = None, **overrides: Any):
        super().__init__(limits, **overrides)
        self._drop = os.geteuid() == 0 and self.limits.uid is not None
        self.python = python or find_python(self.limits.uid)

    def _env(self, home: str, marker: str) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "TMPDIR": home,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MALLOC_ARENA_MAX": "2",  # threads would otherwise reserve 64 MiB arenas against RLIMIT_AS
            MARKER_VAR: marker,
        }

    def _launch_config(self, timeout_s: float) -> dict[str, Any]:
        return {
            "uid": self.limits.uid if self._drop else None,
            "gid": self.limits.uid if self._drop else None,
            "rlimits": rlimit_config(self.limits, timeout_s),
            "nproc_extra": self.limits.max_procs,
        }

    def run(self, code: str, *, timeout_s: float = 5.0) -> SandboxResult:
        if self._closed:
            raise SandboxError("This sandbox is closed; create a new one with make_sandbox(...).")
        timeout_s = self._check_timeout(timeout_s)
        marker = uuid.uuid4().hex
        workdir = tempfile.mkdtemp(prefix="turngym-sbx-")
        try:
            script = os.path.join(workdir, "main.py")
            with open(script, "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(code)
            if self._drop:
                os.chown(workdir, self.limits.uid, self.limits.uid)  # type: ignore[arg-type]
                os.chown(script, self.limits.uid, self.limits.uid)  # type: ignore[arg-type]
            os.chmod(workdir, 0o700)
            argv = [
                sys.executable,
                "-I",
                "-S",
                "-c",
                LAUNCHER_SOURCE,
                json.dumps(self._launch_config(timeout_s)),
                "--",
                self.python,
                "-I",
                script,
            ]
            return self._run_argv(argv, workdir, self._env(workdir, marker), marker, timeout_s)
        finally:
            kill_marked(marker)
            shutil.rmtree(workdir, ignore_errors=True)

    def _run_argv(
        self, argv: list[str], cwd: str, env: dict[str, str], marker: str, timeout_s: float
    ) -> SandboxResult:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            raise SandboxError(f"Cannot start the sandbox process {argv[0]!r}: {e}") from e

        def _kill() -> None:
            kill_group(proc)
            kill_marked(marker)

        out, err, reason, dt = communicate_capped(proc, timeout_s, self.limits.max_output_bytes, _kill)
        _kill()  # nothing outlives the run
        stderr = clean_output(err)
        code = proc.returncode
        return SandboxResult(
            stdout=clean_output(out),
            stderr=stderr,
            exit_code=code,
            timed_out=reason == "timeout",
            killed_reason=classify_exit(code, stderr, reason),
            duration_s=dt,
        )
