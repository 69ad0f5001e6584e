"""The hostile-code suite against every sandbox backend (the table prints at the end of the run).

Each snippet must be contained: the attack fails or is cut short, the call returns a clear error within
its timeout (+ margin), the host is unchanged, nothing outlives the call, and the next call works. A few
attacks are documented limitations of the subprocess backend (no network / PID / /tmp isolation); for
those the test still demands the timing, cleanup and next-call guarantees.
"""

from __future__ import annotations

import pytest
from tools_sandbox_helpers import BACKENDS, HOSTILE_OUTCOMES, backend_skip_reason

from turngym.tools.sandbox import make_sandbox
from turngym.tools.sandbox.hostile import HOSTILE_CASES, HostContext, run_case

TIMEOUT_S = 1.5
MARGIN_S = 2.5

pytestmark = pytest.mark.slow  # about 40-60 s per backend on a loaded 2-core machine


@pytest.fixture(scope="module", params=BACKENDS)
def hostile_env(request, sandbox_uid):
    kind = request.param
    reason = backend_skip_reason(kind)
    if reason:
        pytest.skip(f"{kind} backend unavailable here: {reason}")
    sb = make_sandbox(kind, memory_mb=256, max_procs=32, uid=sandbox_uid)
    ctx = HostContext(sandbox_uid=sandbox_uid)
    HOSTILE_OUTCOMES.setdefault(kind, [])
    yield kind, sb, ctx
    ctx.close()
    sb.close()


def test_suite_has_at_least_30_cases():
    assert len(HOSTILE_CASES) >= 30
    assert len({c.name for c in HOSTILE_CASES}) == len(HOSTILE_CASES)


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=[c.name for c in HOSTILE_CASES])
def test_hostile(hostile_env, case):
    kind, sb, ctx = hostile_env
    out = run_case(sb, case, ctx, timeout_s=TIMEOUT_S, margin_s=MARGIN_S)
    HOSTILE_OUTCOMES[kind].append(out)
    if out.known_limitation:
        # documented weakness of this backend: still bounded in time, cleaned up, and the sandbox survives
        for bad in ("took", "outlived", "next call", "raised"):
            assert bad not in out.detail, f"{kind}/{case.name}: {out.detail}"
        if not out.contained:
            pytest.xfail(f"documented limitation of {kind}: {out.known_limitation}")
    assert out.contained, f"{kind}/{case.name} not contained: {out.detail}"


@pytest.mark.parametrize("kind", [p for p in BACKENDS if p.id in ("bwrap", "docker")])
def test_network_isolation_with_loopback_listener(kind, sandbox_uid):
    reason = backend_skip_reason(kind)
    if reason:
        pytest.skip(f"{kind} backend unavailable here: {reason}")
    with make_sandbox(kind, uid=sandbox_uid) as sb, HostContext(sandbox_uid=sandbox_uid) as ctx:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {ctx.port}), timeout=1)\nprint(s.recv(100))"
        r = sb.run(code, timeout_s=5)
        assert not r.ok and ("Connection refused" in r.stderr or "unreachable" in r.stderr.lower()), r
        assert ctx.connections == 0


def test_subprocess_is_documented_as_not_network_isolated(sandbox_uid):
    """The same snippet reaches the host listener from the subprocess backend (why bwrap is the default)."""
    with make_sandbox("subprocess", uid=sandbox_uid) as sb, HostContext(sandbox_uid=sandbox_uid) as ctx:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {ctx.port}), timeout=2)\nprint(s.recv(100))"
        r = sb.run(code, timeout_s=5)
        assert r.ok and "hello from the host" in r.stdout, r
        assert ctx.connections == 1
