"""The ``bwrap`` backend: bubblewrap namespaces around the snippet. The default where it works.

Each run is one ``bwrap`` invocation (about 0.1 s, no image)::

    bwrap --ro-bind /usr /usr --ro-bind /etc /etc --symlink usr/bin /bin ... --dev /dev
          --size N --tmpfs /dev/shm --remount-ro /dev --proc /proc --size N --tmpfs /tmp
          --unshare-all --die-with-parent --new-session --clearenv --chdir /tmp ... python3 -I /tmp/main.py

- read-only binds of only ``/usr``, ``/etc``, ``/bin``, ``/sbin``, ``/lib*`` and the interpreter's prefix
  (no ``/run``, ``/var``, ``/home``, host ``/tmp``: no host unix sockets to ``connect()`` to); a private
  ``/tmp`` and ``/dev/shm``, each a tmpfs capped at ``tmpfs_mb``; ``/dev`` itself read-only;
- every namespace unshared: no network (only a private loopback), own PID namespace (the snippet
  cannot see or signal host processes; when bwrap dies every process inside dies), own IPC/UTS;
- an empty environment but for a few variables; ``--die-with-parent`` so nothing outlives the host;
- the same rlimits as the subprocess backend (CPU, address space, NPROC, file size, no core);
- when the host is root: bwrap is started as a uid of its own per call inside an unprivileged user
  namespace, inside a memory cgroup of its own (counts /dev/shm, memfd and nested-namespace tmpfs pages;
  killed as a whole after the call); without a writable memory cgroup it refuses to start unless
  ``allow_rlimit_memory=True`` (see `turngym.tools.sandbox.cgroup`).
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

from turngym.errors import SandboxError
from turngym.tools.sandbox._launcher import LAUNCHER_SOURCE
from turngym.tools.sandbox.base import SANDBOXES, SandboxLimits, SandboxResult
from turngym.tools.sandbox.subprocess_backend import SubprocessSandbox, _write_new

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
        **kwargs: ``uid_slots``, ``allow_rlimit_memory`` (see `SubprocessSandbox`), ``network=False`` (what bwrap
            always does; True is refused) and `SandboxLimits` fields.

    Raises:
        SandboxError: When ``bwrap`` is not installed, or ``memory_mb`` cannot be enforced by a cgroup.
    """

    kind = "bwrap"

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        bwrap: str | None = None,
        python: str | None = None,
        **kwargs: Any,
    ):
        self.bwrap = bwrap or shutil.which("bwrap")
        if not self.bwrap:
            raise SandboxError(f"The bwrap sandbox needs the 'bwrap' binary, which is not on PATH. {_HOWTO}")
        if kwargs.pop("network", False):
            raise SandboxError("The bwrap sandbox always runs without network (--unshare-all); network=True is "
                               "not an option of it. Use the subprocess backend for code that needs the host's network.")
        super().__init__(limits, python=python, **kwargs)
        self.network = False

    def _launch_config(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return super()._launch_config(*args, **kwargs) | {"netns": False}  # bwrap unshares the network itself

    def _binds(self) -> list[str]:
        """Read-only binds of only what the interpreter needs (no /run, /var, /home, /tmp: no host sockets)."""
        out: list[str] = []
        for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(d):
                out += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                out += ["--ro-bind", d, d]
        out += ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
        # the interpreter's own prefix when it lives elsewhere (a venv, /opt/...)
        covered = ("/usr/", "/bin/", "/sbin/", "/lib", "/etc/")
        for exe in {self.python, os.path.realpath(self.python)}:
            prefix = os.path.dirname(os.path.dirname(os.path.abspath(exe)))
            if not prefix.startswith(covered) and prefix not in ("/", "/usr") and os.path.isdir(prefix):
                out += ["--ro-bind", prefix, prefix]
        return out

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
        size = str(self.limits.tmpfs_mb * 1024 * 1024)
        argv = [
            self.bwrap, *self._binds(), "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev", "--proc", "/proc", "--size", size, "--tmpfs", "/tmp",
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
        # a root-owned directory: the sandbox user may read main.py (to bind it) but never write there
        stage = tempfile.mkdtemp(prefix="turngym-bwrap-")
        try:
            os.chmod(stage, 0o711)
            _write_new(stage, "main.py", code)
            script = os.path.join(stage, "main.py")
            with self._call_resources(marker) as (uid, cg):
                cfg = self._launch_config(timeout_s, uid, cg)
                argv = [
                    sys.executable, "-I", "-S", "-c", LAUNCHER_SOURCE, json.dumps(cfg), "--",
                    *self._bwrap_argv(script, marker),
                ]  # fmt: skip
                env = {
                    "PATH": "/usr/local/bin:/usr/bin:/bin",
                    "LANG": "C.UTF-8",
                    "TURNGYM_SANDBOX_RUN": marker,
                }
                try:
                    return self._run_argv(argv, stage, env, marker, timeout_s, cg, cfg["nonce"])
                except SandboxError as e:
                    raise SandboxError(f"{e}. {_HOWTO}") from e
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _cli() -> None:  # pragma: no cover - manual probe: python -m turngym.tools.sandbox.bwrap
    reason = bwrap_unavailable_reason()
    print("bwrap works" if reason is None else f"bwrap unavailable: {reason}")


if __name__ == "__main__":  # pragma: no cover
    _cli()
