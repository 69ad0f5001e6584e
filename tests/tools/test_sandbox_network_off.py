"""``network=False`` on the subprocess backend: every call in a network namespace of its own, or a refusal.

Where bwrap is missing, LaRe's model-written code runs in this backend, so it must not reach a host service. As
root the namespace is part of the call's private namespaces; as a normal user it needs a user namespace, and the
backend refuses to start where none can be made.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from turngym.errors import SandboxError
from turngym.tools.sandbox import make_sandbox
from turngym.tools.sandbox.cgroup import _find_parent
from turngym.tools.sandbox.hostile import HostContext


def _probe(port: int) -> str:
    return ("import socket\nprint('IF', ','.join(n for _, n in socket.if_nameindex()))\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('CONNECTED', s.recv(100))\n")


def test_network_off_cuts_the_loopback_listener_that_the_default_reaches(sandbox_uid):
    with HostContext(sandbox_uid=sandbox_uid) as ctx:
        with make_sandbox("subprocess", network=False, uid=sandbox_uid, allow_rlimit_memory=True) as sb:
            r = sb.run(_probe(ctx.port), timeout_s=5)
            assert not r.ok and "IF lo\n" in r.stdout and "CONNECTED" not in r.stdout, r
            assert "unreachable" in r.stderr.lower() or "refused" in r.stderr.lower(), r.stderr[-300:]
            assert ctx.connections == 0
            assert sb.run("print(6 * 7)", timeout_s=5).stdout.strip() == "42"  # everything else still works
        with make_sandbox("subprocess", uid=sandbox_uid, allow_rlimit_memory=True) as sb:  # the default: shared
            assert "CONNECTED" in sb.run(_probe(ctx.port), timeout_s=5).stdout
        assert ctx.connections == 1


def test_network_must_be_a_bool():
    with pytest.raises(SandboxError, match="network must be True or False"):
        make_sandbox("subprocess", network="no", allow_rlimit_memory=True)


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="drops root to a normal user, and needs a python3 that user can run")
def test_network_off_as_a_normal_user_isolates_or_refuses(sandbox_uid):
    """In a forked child running as a normal user: either the call has no network, or the backend refuses."""
    ctx = HostContext(sandbox_uid=sandbox_uid)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read)
            sys.executable = "/usr/bin/python3"  # the venv's interpreter may live under root's home
            os.setgroups([])
            os.setgid(sandbox_uid + 63)
            os.setuid(sandbox_uid + 63)
            _find_parent.cache_clear()  # the parent (root) found a writable memory cgroup; this user has none
            try:
                sb = make_sandbox("subprocess", network=False, allow_rlimit_memory=True)
                r = sb.run(_probe(ctx.port), timeout_s=5)
                out = {"ran": True, "ok": r.ok, "stdout": r.stdout, "stderr": r.stderr[-300:]}
            except SandboxError as e:
                out = {"ran": False, "error": str(e)}
            except Exception as e:  # noqa: BLE001 -- reported to the parent, which fails the test with it
                out = {"ran": False, "error": f"{type(e).__name__}: {e}"}
            os.write(write, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)
    try:
        assert out, "the child reported nothing"
        if out["ran"]:
            assert not out["ok"] and "IF lo\n" in out["stdout"] and "CONNECTED" not in out["stdout"], out
        else:
            assert "cannot cut the network" in out["error"] and "bubblewrap" in out["error"], out
        assert ctx.connections == 0
    finally:
        ctx.close()


def test_bwrap_refuses_a_network_it_never_gives():
    from turngym.tools.sandbox.bwrap import bwrap_available

    if not bwrap_available():
        pytest.skip("bwrap is not installed here")
    with pytest.raises(SandboxError, match="always runs without network"):
        make_sandbox("bwrap", network=True, allow_rlimit_memory=True)
    with make_sandbox("bwrap", network=False, allow_rlimit_memory=True) as sb:
        assert sb.run("print(1)", timeout_s=5).stdout.strip() == "1"
