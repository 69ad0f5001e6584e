"""Sandbox backends: the interface, limits, isolation basics, errors, and the python tool on top."""

from __future__ import annotations

import os
import threading
import time

import pytest
from tools_sandbox_helpers import BACKENDS, backend_skip_reason
from turngym.tools import ToolCall, ToolSet
from turngym.tools.python import make_python_tool
from turngym.tools.sandbox import SANDBOXES, SandboxLimits, make_sandbox
from turngym.tools.sandbox.base import SandboxResult, clean_output

from turngym.errors import RegistryError, SandboxError


@pytest.fixture(scope="module", params=BACKENDS)
def sb(request, sandbox_uid):
    kind = request.param
    reason = backend_skip_reason(kind)
    if reason:
        pytest.skip(f"{kind} backend unavailable here: {reason}")
    s = make_sandbox(kind, memory_mb=256, uid=sandbox_uid)
    yield s
    s.close()


def test_registry_and_auto():
    assert set(SANDBOXES.names()) == {"subprocess", "bwrap", "docker"}
    with pytest.raises(RegistryError, match="Did you mean 'docker'"):
        make_sandbox("dockr")
    with make_sandbox("auto") as s:
        expected = "bwrap" if backend_skip_reason("bwrap") is None else "subprocess"
        assert s.kind == expected
        assert s.run("print('auto')", timeout_s=5).stdout == "auto\n"


def test_bad_limits_are_clear_errors():
    with pytest.raises(SandboxError, match="Unknown sandbox limit"):
        make_sandbox("subprocess", memroy_mb=10)
    with pytest.raises(SandboxError, match="memory_mb must be a positive integer"):
        SandboxLimits(memory_mb=0)
    with make_sandbox("subprocess") as s, pytest.raises(SandboxError, match="timeout_s"):
        s.run("print(1)", timeout_s=0)


def test_run_basics(sb):
    r = sb.run("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\nsys.exit(3)", timeout_s=5)
    assert r.stdout == "hello\n" and r.stderr == "oops\n" and r.exit_code == 3
    assert not r.ok and not r.timed_out and r.killed_reason is None
    assert "exited with status 3" in r.error_message()
    ok = sb.run("print(sum(range(10)))", timeout_s=5)
    assert ok.ok and ok.stdout == "45\n" and ok.error_message() is None and ok.duration_s > 0


def test_syntax_error_is_reported(sb):
    r = sb.run("def f(:\n  pass", timeout_s=5)
    assert r.exit_code == 1 and "SyntaxError" in r.stderr


def test_timeout_kills_and_reports(sb):
    t0 = time.monotonic()
    r = sb.run("import time\nprint('start', flush=True)\ntime.sleep(30)", timeout_s=1.0)
    dt = time.monotonic() - t0
    assert r.timed_out and r.killed_reason == "timeout" and not r.ok
    assert r.stdout == "start\n"  # output before the kill is kept
    assert "timed out after 1 s" in r.error_message(1.0)
    assert dt < 1.0 + 2.5


def test_scrubbed_env_and_private_cwd(sb):
    os.environ["TURNGYM_TEST_PARENT_SECRET"] = "parent-secret-value"
    try:
        r = sb.run(
            "import os\nprint(sorted(os.environ))\nprint(os.getcwd())\nopen('x.txt','w').write('1')\n"
            "print(os.listdir('.'))",
            timeout_s=5,
        )
    finally:
        del os.environ["TURNGYM_TEST_PARENT_SECRET"]
    assert r.ok, r
    assert "TURNGYM_TEST_PARENT_SECRET" not in r.stdout and "parent-secret-value" not in r.stdout
    assert "'x.txt'" in r.stdout
    # a fresh working directory each run (subprocess/bwrap) or a cleaned /tmp file set (docker)
    r2 = sb.run("import os\nprint(os.getcwd())", timeout_s=5)
    if sb.kind == "subprocess":
        assert r2.stdout != r.stdout.splitlines()[-2] + "\n"


def test_memory_limit(sb):
    r = sb.run("x = bytearray(1024 * 2**20)\nprint('allocated')", timeout_s=5)
    assert not r.ok and "allocated" not in r.stdout and r.killed_reason == "memory", r


def test_file_size_limit(sb):
    r = sb.run("open('f.bin', 'wb').write(b'0' * (64 * 2**20))", timeout_s=5)
    assert not r.ok and r.killed_reason == "file_size", r


def test_output_cap(sb_small_output):
    r = sb_small_output.run("while True:\n    print('z' * 1000)", timeout_s=5)
    assert r.killed_reason == "output_limit" and len(r.stdout) <= 20_000 and not r.ok
    assert sb_small_output.run("print('after')", timeout_s=5).stdout == "after\n"


@pytest.fixture(params=BACKENDS)
def sb_small_output(request, sandbox_uid):
    kind = request.param
    reason = backend_skip_reason(kind)
    if reason:
        pytest.skip(f"{kind} backend unavailable here: {reason}")
    with make_sandbox(kind, max_output_bytes=20_000, uid=sandbox_uid) as s:
        yield s


def test_unicode_round_trip(sb):
    r = sb.run("print('héllo ✓ 𝔘 中文')", timeout_s=5)
    assert r.stdout == "héllo ✓ 𝔘 中文\n"


def test_concurrent_runs(sb):
    results: list[SandboxResult] = []

    def go(i: int) -> None:
        results.append(sb.run(f"print({i} * 2)", timeout_s=10))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(r.stdout) for r in results) == [0, 2, 4, 6]


def test_closed_sandbox_raises(sandbox_uid):
    s = make_sandbox("subprocess", uid=sandbox_uid)
    s.close()
    s.close()
    with pytest.raises(SandboxError, match="closed"):
        s.run("print(1)")


def test_clean_output():
    assert clean_output(b"ok\n\t\r") == "ok\n\t\r"
    assert clean_output(b"\x00\x1b[2J\xff") == "\ufffd\ufffd[2J\ufffd"


def test_docker_missing_engine_is_a_clear_error(monkeypatch):
    pytest.importorskip("docker")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxError, match="Cannot reach a Docker engine.*setup-system.sh"):
        make_sandbox("docker")


@pytest.mark.docker
def test_docker_missing_image_is_a_clear_error():
    reason = backend_skip_reason("docker")
    if reason:
        pytest.skip(f"docker backend unavailable here: {reason}")
    with pytest.raises(SandboxError, match="build_sandbox_image.sh"):
        make_sandbox("docker", image="turngym/does-not-exist:nope")


@pytest.mark.docker
def test_docker_container_is_locked_down(sandbox_uid):
    reason = backend_skip_reason("docker")
    if reason:
        pytest.skip(f"docker backend unavailable here: {reason}")
    with make_sandbox("docker", memory_mb=128, max_procs=16, cpus=0.5, uid=sandbox_uid) as s:
        s.run("print(1)", timeout_s=5)
        attrs = s._container.attrs
        hc = attrs["HostConfig"]
        assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True
        assert hc["Memory"] == 128 * 2**20 and hc["PidsLimit"] == 16 and hc["NanoCpus"] == 500_000_000
        assert "/tmp" in hc["Tmpfs"] and hc["CapDrop"] == ["ALL"]
        r = s.run("import os\nprint(os.getuid())\nopen('/etc/x', 'w')", timeout_s=5)
        expected_uid = 65534 if sandbox_uid is None else sandbox_uid
        assert r.stdout == f"{expected_uid}\n" and "Read-only file system" in r.stderr
        cid = s._container.id
    import docker

    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(cid)  # close() removed it


# ----------------------------------------------------------------------------- python tool


def test_python_tool_through_toolset(sb):
    py = make_python_tool(sb, timeout_s=1.5)
    assert py.name == "python" and py.required == ["code"]
    with ToolSet([py], timeout_s=30) as ts:
        ok, err, slow, warn = ts.execute(
            [
                ToolCall("python", {"code": "print(6 * 7)"}, id="a"),
                ToolCall("python", {"code": "print('partial')\n1/0"}, id="b"),
                ToolCall("python", {"code": "while True: pass"}, id="c"),
                ToolCall(
                    "python", {"code": "import sys\nprint('out')\nprint('note', file=sys.stderr)"}, id="d"
                ),
            ]
        )
    assert ok.ok and ok.output == "42\n" and ok.meta["exit_code"] == 0 and ok.meta["sandbox"] == sb.kind
    assert (
        not err.ok
        and "ZeroDivisionError" in err.error
        and "partial" in err.error
        and err.meta["exit_code"] == 1
    )
    assert not slow.ok and "timed out after 1.5 s" in slow.error and slow.meta["timed_out"]
    assert warn.ok and warn.output.startswith("out\n") and "[stderr]\nnote" in warn.output


def test_python_tool_needs_a_sandbox():
    from turngym.errors import ToolError

    with pytest.raises(ToolError, match="needs a Sandbox"):
        make_python_tool("subprocess")  # type: ignore[arg-type]
