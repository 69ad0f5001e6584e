"""The ``bwrap`` backend: bubblewrap namespaces around the snippet. The default where it works.

Each run is one ``bwrap`` invocation (about 0.1 s, no image)::

    bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --unshare-all --die-with-parent
          --new-session --clearenv --chdir /tmp ... python3 -I /tmp/main.py

- read-only view of the host root; a private, size-capped ``/tmp`` (the only writable place);
- every namespace unshared: no network (only a private loopback), own PID namespace (the snippet
  cannot see or signal host processes; when bwrap dies every process inside dies), own IPC/UTS;
- an empty environment but for a few variables; ``--die-with-parent`` so nothing outlives the host;
- the same rlimits as the subprocess backend (CPU, address space, NPROC, file size, no core);
- when the host is root, bwrap itself is started as the unprivileged ``limits.uid`` (default 65534)
  inside an unprivileged user namespace, so root-only host files stay unreadable.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import uuid
from typing import Any

from turngym.tools.sandbox._launcher import LAUNCHER_SOURCE
from turngym.tools.sandbox.base import SANDBOXES, SandboxLimits, SandboxResult
from turngym.tools.sandbox.subprocess_backend import SubprocessSandbox, kill_marked

from turngym.errors import SandboxError

__all__ = ["BwrapSandbox", "bwrap_available"]

_HOWTO = (
    "Install bubblewrap (Debian/Ubuntu: apt-get install -y bubblewrap; or run .ci/setup-system.sh as root) and "
    "make sure unprivileged user namespaces are allowed (sysctl kernel.unprivileged_userns_clone=1), or use "
    "make_sandbox('subprocess')."
)


@functools.cache
def _probe(bwrap: str | None) -> str | None:
    """None when bwrap can start a sandbox here, else the reason."""
    if not bwrap:
        return "bwrap is not installed"
    try:
        sb = BwrapSandbox(bwrap=bwrap)
        r = sb.run("print('ok')", timeout_s=10)
    except SandboxError as e:
        return str(e)
    if r.stdout.strip() != "ok":
        return f"bwrap could not start a sandbox here (exit {r.exit_code}): {r.stderr.strip()[-300:]}"
    return None


def bwrap_available() -> bool:
    """Whether the bwrap backend works on this machine (probed once per process)."""
    return _probe(shutil.which("bwrap")) is None


def bwrap_unavailable_reason() -> str | None:
    """Why the bwrap backend cannot run here, or None when it can."""
    return _probe(shutil.which("bwrap"))


@SANDBOXES.register("bwrap")
class BwrapSandbox(SubprocessSandbox):
    """Bubblewrap sandbox: read-only root, private /tmp, no network, own PID namespace, rlimits.

    Args:
        limits: Base `SandboxLimits`.
        bwrap: Path to the ``bwrap`` binary (default: found on PATH).
        python: Interpreter inside the sandbox (default: the system ``python3``).
        **overrides: `SandboxLimits` fields.

    Raises:
        SandboxError: When ``bwrap`` is not installed.
    """

    kind = "bwrap"

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        bwrap: str | None = None,
        python: str | None = None,
        **overrides: Any,
    ):
        self.bwrap = bwrap or shutil.which("bwrap")
        if not self.bwrap:
            raise SandboxError(f"The bwrap sandbox needs the 'bwrap' binary, which is not on PATH. {_HOWTO}")
        super().__init__(limits, python=python, **overrides)

    def _bwrap_argv(self, script: str, marker: str) -> list[str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MALLOC_ARENA_MAX": "2",  # threads would otherwise reserve 64 MiB arenas against RLIMIT_AS
        }
        argv = [
            self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--size", str(self.limits.tmpfs_mb * 1024 * 1024), "--tmpfs", "/tmp",
            "--ro-bind", script, "/tmp/main.py",
            "--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--chdir", "/tmp",
        ]  # fmt: skip
        for k, v in env.items():
            argv += ["--setenv", k, v]
        return argv + ["--", self.python, "-I", "/tmp/main.py"]

    def run(self, code: str, *, timeout_s: float = 5.0) -> SandboxResult:
        if self._closed:
            raise SandboxError("This sandbox is closed; create a new one with make_sandbox(...).")
        timeout_s = self._check_timeout(timeout_s)
        marker = uuid.uuid4().hex
        workdir = tempfile.mkdtemp(prefix="turngym-bwrap-")
        try:
            script = os.path.join(workdir, "main.py")
            with open(script, "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(code)
            os.chmod(workdir, 0o711)  # the sandbox user must reach main.py to bind it
            os.chmod(script, 0o644)
            argv = [
                sys.executable,
                "-I",
                "-S",
                "-c",
                LAUNCHER_SOURCE,
                json.dumps(self._launch_config(timeout_s)),
                "--",
                *self._bwrap_argv(script, marker),
            ]
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TURNGYM_SANDBOX_RUN": marker}
            try:
                return self._run_argv(argv, workdir, env, marker, timeout_s)
            except SandboxError as e:
                raise SandboxError(f"{e}. {_HOWTO}") from e
        finally:
            kill_marked(marker)
            shutil.rmtree(workdir, ignore_errors=True)


def _cli() -> None:  # pragma: no cover - manual probe: python -m turngym.tools.sandbox.bwrap
    reason = bwrap_unavailable_reason()
    print("bwrap works" if reason is None else f"bwrap unavailable: {reason}")


if __name__ == "__main__":  # pragma: no cover
    _cli()
