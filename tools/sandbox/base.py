"""The `Sandbox` interface, its result type, resource limits and the backend registry.

A sandbox runs a Python snippet in isolation and reports what happened::

    with make_sandbox("auto", memory_mb=256) as sb:
        r = sb.run("print(2 + 2)", timeout_s=2.0)
        r.stdout, r.exit_code, r.timed_out   # '4\\n', 0, False

Nothing the snippet does raises in the host: a timeout, a crash, a memory bomb or a flood of output
comes back as a `SandboxResult` (``timed_out``, ``killed_reason``, ``exit_code``). `SandboxError` is
only raised when a backend cannot be used at all (missing binary, no engine, no image), with a
message that says how to fix it.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from turngym.errors import SandboxError
from turngym.registry import Registry

__all__ = [
    "SANDBOXES",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "clean_output",
    "make_sandbox",
]

SANDBOXES: Registry[type] = Registry("sandbox backend")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits shared by all backends.

    Attributes:
        memory_mb: Address-space (rlimit) / container memory limit in MiB.
        max_procs: Most processes/threads the snippet may have (rlimit NPROC above the current count;
            docker ``pids_limit``).
        max_file_mb: Largest file the snippet may write (rlimit FSIZE).
        cpu_s: CPU-time limit in seconds; None means ``ceil(timeout_s) + 1`` for each run.
        max_output_bytes: stdout + stderr beyond this are cut and the snippet is killed.
        tmpfs_mb: Size of the private writable ``/tmp`` (bwrap, docker).
        cpus: CPU share (docker ``nano_cpus``).
        uid: Unprivileged user the snippet runs as when the host process is root (subprocess, bwrap,
            docker); ``None`` keeps the current user.
    """

    memory_mb: int = 512
    max_procs: int = 64
    max_file_mb: int = 16
    cpu_s: float | None = None
    max_output_bytes: int = 1_000_000
    tmpfs_mb: int = 64
    cpus: float = 1.0
    uid: int | None = 65534

    def __post_init__(self) -> None:
        for f in ("memory_mb", "max_procs", "max_file_mb", "max_output_bytes", "tmpfs_mb"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise SandboxError(f"SandboxLimits.{f} must be a positive integer, got {v!r}.")
        if self.cpu_s is not None and not self.cpu_s > 0:
            raise SandboxError(f"SandboxLimits.cpu_s must be > 0 or None, got {self.cpu_s!r}.")
        if not self.cpus > 0:
            raise SandboxError(f"SandboxLimits.cpus must be > 0, got {self.cpus!r}.")

    @classmethod
    def from_kwargs(cls, base: SandboxLimits | None = None, **kw: Any) -> SandboxLimits:
        known = {f.name for f in fields(cls)}
        bad = sorted(set(kw) - known)
        if bad:
            raise SandboxError(f"Unknown sandbox limit(s) {bad}; known limits: {sorted(known)}.")
        return replace(base or cls(), **kw)

    def cpu_seconds(self, timeout_s: float) -> int:
        return int(self.cpu_s if self.cpu_s is not None else int(timeout_s + 0.999) + 1)


@dataclass(frozen=True)
class SandboxResult:
    """What happened when a snippet ran.

    Attributes:
        stdout: Captured standard output (UTF-8, invalid bytes and control characters replaced).
        stderr: Captured standard error (same cleaning).
        exit_code: The process exit status; negative ``-N`` when killed by signal N; None if unknown.
        timed_out: The wall-clock timeout was reached and the snippet was killed.
        killed_reason: Why the sandbox stopped the snippet: ``"timeout"``, ``"cpu_time"``,
            ``"memory"``, ``"output_limit"``, ``"file_size"``, ``"signal <NAME>"``, or None.
        duration_s: Wall time of the run.
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    killed_reason: str | None
    duration_s: float

    @property
    def ok(self) -> bool:
        """Exited normally with status 0."""
        return self.exit_code == 0 and not self.timed_out and self.killed_reason is None

    def error_message(self, timeout_s: float | None = None, tail_chars: int = 1500) -> str | None:
        """A short explanation for the model when the run failed, else None."""
        if self.ok:
            return None
        tail = self.stderr[-tail_chars:].strip()
        reason = {
            "timeout": f"timed out after {timeout_s:g} s and was killed"
            if timeout_s
            else "timed out and was killed",
            "cpu_time": "exceeded its CPU-time limit and was killed",
            "memory": "ran out of memory (memory limit reached)",
            "output_limit": "printed too much output and was killed",
            "file_size": "wrote a file larger than the file-size limit",
        }.get(self.killed_reason or "", None)
        if reason is None and self.killed_reason:
            reason = f"was killed ({self.killed_reason})"
        if reason is None:
            reason = f"exited with status {self.exit_code}"
        return f"the code {reason}" + (f":\n{tail}" if tail else ".")


_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_output(data: bytes) -> str:
    """Decode bytes as UTF-8 (invalid bytes -> U+FFFD) and replace control characters but \\t \\n \\r."""
    return _CTRL.sub("\ufffd", data.decode("utf-8", errors="replace"))


class Sandbox(ABC):
    """Runs untrusted Python code with resource limits. Use as a context manager or call `close`.

    Args:
        limits: Base limits (default `SandboxLimits()`).
        **overrides: Individual limit fields (``memory_mb=256``, ``max_procs=32``, ...).
    """

    kind: str = "base"

    def __init__(self, limits: SandboxLimits | None = None, **overrides: Any):
        self.limits = SandboxLimits.from_kwargs(limits, **overrides)
        self._closed = False

    @abstractmethod
    def run(self, code: str, *, timeout_s: float = 5.0) -> SandboxResult:
        """Run ``code`` with ``python3`` in the sandbox and wait at most about ``timeout_s`` seconds.

        Args:
            code: Python source.
            timeout_s: Wall-clock limit; the snippet is killed when it is reached.

        Returns:
            A `SandboxResult`; nothing the snippet does raises here.
        """

    def close(self) -> None:
        """Release the backend's resources (idempotent)."""
        self._closed = True

    def __enter__(self) -> Sandbox:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.limits})"

    @staticmethod
    def _check_timeout(timeout_s: float) -> float:
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise SandboxError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}.")
        return float(timeout_s)


def make_sandbox(kind: str = "auto", **kwargs: Any) -> Sandbox:
    """Create a sandbox backend by name.

    Args:
        kind: ``"auto"`` (bwrap when it works here, else subprocess), ``"subprocess"``, ``"bwrap"`` or
            ``"docker"`` (see ``SANDBOXES.names()``).
        **kwargs: `SandboxLimits` fields (``memory_mb``, ``max_procs``, ...) and backend options
            (``image=`` for docker).

    Raises:
        SandboxError: When the backend cannot run here (the message says how to fix it).
        RegistryError: Unknown ``kind``.
    """
    if kind == "auto":
        from turngym.tools.sandbox.bwrap import bwrap_available

        kind = "bwrap" if bwrap_available() else "subprocess"
    return SANDBOXES[kind](**kwargs)


# --------------------------------------------------------------------------- process helpers


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a process started with ``start_new_session=True``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except (ProcessLookupError, OSError):
        pass


def communicate_capped(
    proc: subprocess.Popen,
    timeout_s: float,
    max_bytes: int,
    on_kill: Callable[[], None],
    linger_s: float = 0.2,
) -> tuple[bytes, bytes, str | None, float]:
    """Read a process's stdout/stderr until EOF, with a wall-clock deadline and an output cap.

    Args:
        proc: Started with ``stdout=PIPE, stderr=PIPE``.
        timeout_s: Wall-clock limit from now.
        max_bytes: Total bytes kept from both streams; more kills the process.
        on_kill: Kills the process and everything it started.
        linger_s: After the main process exits, how long to wait for the pipes to close (children
            still holding them are then killed).

    Returns:
        ``(stdout, stderr, killed_reason, duration_s)`` with ``killed_reason`` in (None, "timeout",
        "output_limit").
    """
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}  # type: ignore[union-attr]
    total = 0
    reason: str | None = None
    exited_at: float | None = None
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    try:
        while sel.get_map():
            now = time.monotonic()
            if reason is None and now >= deadline:
                reason = "timeout"
                on_kill()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > linger_s:
                on_kill()  # grandchildren keep the pipes open: the run is over
                if now - exited_at > linger_s + 2.0:
                    break
            wait = 0.05 if reason or exited_at else max(0.0, min(0.1, deadline - now))
            for key, _ in sel.select(timeout=wait):
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(fd)
                    continue
                room = max_bytes - total
                if room > 0:
                    bufs[fd].extend(chunk[:room])
                total += len(chunk)
                if total > max_bytes and reason is None:
                    reason = "output_limit"
                    on_kill()
            if reason is not None and time.monotonic() - deadline > 3.0:
                break  # killed but pipes never closed: give up reading
    finally:
        sel.close()
    if reason is None:
        # the pipes closed (or were closed by the snippet) but the process may still run: keep the deadline
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            reason = "timeout"
            on_kill()
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        on_kill()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
    out = bytes(bufs[proc.stdout.fileno()])  # type: ignore[union-attr]
    err = bytes(bufs[proc.stderr.fileno()])  # type: ignore[union-attr]
    return out, err, reason, time.monotonic() - t0


def classify_exit(exit_code: int | None, stderr: str, reason: str | None) -> str | None:
    """Map a raw exit status + stderr to a `SandboxResult.killed_reason`."""
    if reason is not None:
        return reason
    if exit_code is None:
        return None
    sig = -exit_code if exit_code < 0 else (exit_code - 128 if exit_code > 128 else 0)
    if sig == signal.SIGXCPU:
        return "cpu_time"
    if sig == signal.SIGXFSZ or "File too large" in stderr[-500:]:
        return "file_size"
    if "MemoryError" in stderr[-2000:] or "Cannot allocate memory" in stderr[-500:]:
        return "memory"
    if exit_code < 0 or exit_code > 128 and sig in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT):
        try:
            return f"signal {signal.Signals(sig).name}"
        except ValueError:
            return f"signal {sig}"
    return None
