"""The ``subprocess`` backend: a plain child process with rlimits. Always available; weakest isolation.

What it does for each run:
- a scrubbed environment (only ``PATH``, ``HOME``, ``TMPDIR``, ``LANG``, ``PYTHON*`` encoding vars);
- ``python3 -I`` (isolated mode: no user site, no ``PYTHON*`` variables);
- rlimits: CPU time, address space, processes (NPROC), file size, no core dumps;
- when the host runs as root (see `turngym.tools.sandbox.cgroup`): a uid of its own for the call (from
  ``[limits.uid, limits.uid + uid_slots)``), a memory cgroup of its own (counts /dev/shm, memfd and
  tmpfs pages too; every process in it is killed after the call), and a private mount + IPC namespace
  with fresh size-capped tmpfs over ``/tmp``, ``/var/tmp``, ``/dev/shm`` and every world-writable tmpfs,
  the working directory a fresh directory in it. Root never follows a path the snippet can write.
- its own session / process group, killed on timeout or output overflow (plus a sweep by a per-run
  environment marker, the only sweep when the host is not root).

Where no writable memory cgroup exists (host not root) it refuses to start unless
``allow_rlimit_memory=True``. With ``network=False`` every call gets a network namespace of its own (as
root; otherwise through a user namespace, and the backend refuses to start where none can be made). What it
does NOT do: network isolation by default (loopback services and host unix sockets outside the private tmpfs
are reachable; with ``network=False``, host unix sockets on the filesystem still are), a private view of the rest of the filesystem
(world-readable host files are readable), or protection when the host is not root (the snippet runs as
the same user as the host). Use ``bwrap`` or ``docker`` for untrusted code.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from turngym.errors import SandboxError
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
from turngym.tools.sandbox.cgroup import MemoryCgroup, UidLease, refuse_without_cgroup

__all__ = ["SubprocessSandbox", "find_python", "kill_marked", "kill_uid"]

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
    """Child process with rlimits, temp dir, scrubbed env and (as root) a per-call uid, cgroup and private tmpfs.

    Args:
        limits: Base `SandboxLimits`.
        python: Interpreter to run the snippet with (default: the system ``python3``).
        uid_slots: As root, each call runs as its own uid from ``[limits.uid, limits.uid + uid_slots)``
            (at most this many calls at once on the machine; more wait for a free uid).
        allow_rlimit_memory: Where no writable memory cgroup exists (host not root), accept RLIMIT_AS as
            the only memory bound instead of refusing (it does not bound /dev/shm, memfd or tmpfs pages).
        network: False runs every call in a network namespace of its own (no interface but a loopback that
            is down: no host, loopback or abstract-socket service is reachable). As root that is part of the
            call's private namespaces; otherwise it needs unprivileged user namespaces, checked here.
        **overrides: `SandboxLimits` fields.

    Raises:
        SandboxError: When ``memory_mb`` cannot be enforced by a cgroup here and ``allow_rlimit_memory``
            is not set (also ``TURNGYM_SANDBOX_ALLOW_RLIMIT_MEMORY=1``); when ``network=False`` cannot be
            given here (not root and no user namespaces).
    """

    kind = "subprocess"

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        python: str | None = None,
        uid_slots: int = 64,
        allow_rlimit_memory: bool = False,
        network: bool = True,
        **overrides: Any,
    ):
        super().__init__(limits, **overrides)
        if not (isinstance(uid_slots, int) and uid_slots >= 1):
            raise SandboxError(f"uid_slots must be a positive integer, got {uid_slots!r}.")
        if not isinstance(network, bool):
            raise SandboxError(f"network must be True or False, got {network!r}.")
        self.uid_slots = uid_slots
        self.network = network
        self._root = os.geteuid() == 0
        self._drop = self._root and self.limits.uid is not None
        self._use_cgroup = refuse_without_cgroup(self.kind, allow_rlimit_memory)
        self.python = python or find_python(self.limits.uid)
        if not network and not self._root:
            _check_user_netns()

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

    def _launch_config(
        self, timeout_s: float, uid: int | None = None, cgroup: MemoryCgroup | None = None
    ) -> dict[str, Any]:
        return {
            "uid": uid,
            "gid": uid,
            "rlimits": rlimit_config(self.limits, timeout_s),
            "nproc_extra": self.limits.max_procs,
            "cgroup_procs": cgroup.procs_file if cgroup else None,
            "netns": not self.network,
            "nonce": uuid.uuid4().hex,
        }

    @contextlib.contextmanager
    def _call_resources(self, marker: str) -> Iterator[tuple[int | None, MemoryCgroup | None]]:
        """A uid of its own and a memory cgroup for one call; afterwards nothing of the call is left running."""
        lease = UidLease(self.limits.uid, self.uid_slots) if self._drop else None  # type: ignore[arg-type]
        cg = None
        try:
            if self._use_cgroup:
                cg = MemoryCgroup(self.limits.memory_mb * 1024 * 1024)
            yield (lease.uid if lease else None), cg
        finally:
            if cg is not None:
                cg.close()
            kill_marked(marker)
            if lease is not None:
                if cg is None:
                    kill_uid(lease.uid)
                lease.release()

    def run(self, code: str, *, timeout_s: float = 5.0) -> SandboxResult:
        if self._closed:
            raise SandboxError("This sandbox is closed; create a new one with make_sandbox(...).")
        timeout_s = self._check_timeout(timeout_s)
        marker = uuid.uuid4().hex
        # As root, the snippet is staged in a root-only directory the sandbox never sees; the launcher copies
        # it into a private tmpfs before any sandbox process exists. Otherwise (not root) the host and the
        # snippet are the same user and a plain temp dir is used.
        stage = tempfile.mkdtemp(prefix="turngym-sbx-")
        try:
            _write_new(stage, "main.py", code)
            with self._call_resources(marker) as (uid, cg):
                cfg = self._launch_config(timeout_s, uid, cg)
                if self._root:
                    workdir, cwd = f"/tmp/turngym-sbx-{marker[:16]}", "/"
                    cfg["private"] = {
                        "size": self.limits.tmpfs_mb * 1024 * 1024,
                        "workdir": workdir,
                        "script_src": os.path.join(stage, "main.py"),
                        "script_dst": "main.py",
                    }
                else:
                    workdir = cwd = stage
                argv = [
                    sys.executable, "-I", "-S", "-c", LAUNCHER_SOURCE, json.dumps(cfg), "--",
                    self.python, "-I", os.path.join(workdir, "main.py"),
                ]  # fmt: skip
                env = self._env(workdir, marker)
                return self._run_argv(argv, cwd, env, marker, timeout_s, cg, cfg["nonce"])
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _run_argv(
        self,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        marker: str,
        timeout_s: float,
        cgroup: MemoryCgroup | None = None,
        nonce: str = "-",
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
            if cgroup is not None:
                cgroup.kill(timeout_s=1.0)
            kill_marked(marker)

        out, err, reason, dt = communicate_capped(proc, timeout_s, self.limits.max_output_bytes, _kill)
        _kill()  # nothing outlives the run
        stderr = clean_output(err)
        code = proc.returncode
        if code == 125 and f"sandbox launcher [{nonce}]" in stderr:
            raise SandboxError(f"The {self.kind} sandbox could not set up the call: {stderr.strip()[-500:]}")
        killed = classify_exit(code, stderr, reason)
        if cgroup is not None and killed in (None, "signal SIGKILL") and cgroup.oom_killed():
            killed = "memory"
        return SandboxResult(
            stdout=clean_output(out),
            stderr=stderr,
            exit_code=code,
            timed_out=reason == "timeout",
            killed_reason=killed,
            duration_s=dt,
        )


def _check_user_netns() -> None:
    """Refuse ``network=False`` where an unprivileged process cannot get a network namespace of its own."""
    cfg = json.dumps({"netns": True, "nonce": "check"})
    argv = [sys.executable, "-I", "-S", "-c", LAUNCHER_SOURCE, cfg, "--", sys.executable, "-I", "-S", "-c", "0"]
    res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    if res.returncode != 0:
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
        raise SandboxError(
            "The subprocess sandbox cannot cut the network here: it runs as a normal user and cannot create a "
            f"user + network namespace ({why}). Install bubblewrap (make_sandbox('bwrap')), use docker, run "
            "as root, or enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)."
        )


def _write_new(directory: str, name: str, text: str) -> None:
    """Create ``directory/name`` (must not exist; never follows a symlink) and write ``text`` to it."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd
        )
    finally:
        os.close(dfd)
    with open(fd, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)


def kill_uid(uid: int) -> int:
    """SIGKILL every process running as ``uid`` when that uid has no account (a uid reserved for sandboxes)."""
    try:
        pwd.getpwuid(uid)
        return 0  # a real account (e.g. nobody) may run host daemons: never sweep it
    except KeyError:
        pass
    killed = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    os.kill(int(pid), signal.SIGKILL)
                    killed += 1
            except OSError:
                pass
    return killed
