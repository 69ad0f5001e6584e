"""Sandboxes for running untrusted Python: one interface, three backends.

>>> from turngym.tools.sandbox import make_sandbox
>>> with make_sandbox("auto") as sb:          # bwrap where it works, else subprocess
...     sb.run("print(6 * 7)", timeout_s=2).stdout
'42\\n'

Backends (registry `SANDBOXES`): ``"subprocess"`` (rlimits, temp dir, scrubbed env; no network
isolation), ``"bwrap"`` (bubblewrap: read-only root, private /tmp, no network, own PID namespace),
``"docker"`` (docker SDK: network none, read-only, memory/pids/CPU limits, unprivileged user, one
long-lived container per sandbox). See docs/sandboxes.md for the hostile-code results.
"""

from __future__ import annotations

from turngym.tools.sandbox import bwrap as _bwrap  # noqa: F401  (registers "bwrap")
from turngym.tools.sandbox import docker_backend as _docker  # noqa: F401  (registers "docker"; imports docker lazily)
from turngym.tools.sandbox import subprocess_backend as _subprocess  # noqa: F401  (registers "subprocess")
from turngym.tools.sandbox.base import SANDBOXES, Sandbox, SandboxLimits, SandboxResult, make_sandbox
from turngym.tools.sandbox.bwrap import BwrapSandbox, bwrap_available, bwrap_unavailable_reason
from turngym.tools.sandbox.docker_backend import DockerSandbox, docker_unavailable_reason
from turngym.tools.sandbox.subprocess_backend import SubprocessSandbox

__all__ = [
    "SANDBOXES",
    "BwrapSandbox",
    "DockerSandbox",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "SubprocessSandbox",
    "bwrap_available",
    "bwrap_unavailable_reason",
    "docker_unavailable_reason",
    "make_sandbox",
]
