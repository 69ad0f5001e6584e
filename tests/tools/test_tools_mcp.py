"""The MCP adapter (`turngym.tools.mcp`, `ToolSet.from_mcp`) against real MCP servers over stdio and loopback HTTP.

Servers: ``mcp_test_server.py`` (beside this file: slow / raising / structured / crashing tools) and
``examples/mcp_search_server.py`` (HopQA's search over MCP), each a real subprocess speaking MCP.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from turngym.errors import ConfigError, MissingExtraError, ToolError
from turngym.tools import ToolSet, tool
from turngym.types import ToolCall

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TEST_SERVER = str(HERE / "mcp_test_server.py")
SEARCH_SERVER = str(ROOT / "examples" / "mcp_search_server.py")

needs_mcp = pytest.mark.skipif(importlib.util.find_spec("mcp") is None, reason="needs turngym[mcp]")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_processes(script: str) -> list:
    """This test process's live child processes running ``script``."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if script in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_http_server(argv: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start an HTTP MCP server subprocess and wait until its port accepts connections."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop(); not a pipe, which a chatty server fills
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=log,
                            env={**os.environ, **(env or {})})
    proc.log = log  # type: ignore[attr-defined]

    def up() -> bool:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"server exited: {log.read().decode(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_until(up, 30.0, f"the MCP server on port {port}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    proc.log.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def client():
    """One MCPClient to the test server over stdio, shared by the tests that do not break it."""
    pytest.importorskip("mcp")
    from turngym.tools.mcp import MCPClient

    c = MCPClient(command=[sys.executable, TEST_SERVER])
    yield c
    c.close()


# ---------------------------------------------------------------------- no server needed


def test_missing_mcp_package_says_which_extra(monkeypatch):
    from turngym.tools.mcp import MCPClient

    monkeypatch.setitem(sys.modules, "mcp", None)  # `import mcp` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"turngym\[mcp\]"):
        MCPClient(command=[sys.executable, TEST_SERVER])
    with pytest.raises(MissingExtraError, match=r"turngym\[mcp\]"):
        ToolSet.from_mcp(url="http://127.0.0.1:1/mcp")


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"command": ["x"], "url": "http://127.0.0.1:1/mcp"}, {"command": []}, {"command": "python server.py"},
     {"url": "127.0.0.1:8000"}, {"url": "http://127.0.0.1:1/mcp", "cwd": "/tmp"}],
)
def test_bad_client_options_are_config_errors(kwargs):
    from turngym.tools.mcp import MCPClient

    with pytest.raises(ConfigError):
        MCPClient(**kwargs)


# ---------------------------------------------------------------------- stdio: schemas and results


@needs_mcp
def test_mcp_schemas_read_like_tool_schemas(client):
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: First term.
            b: Second term.
        """
        return a + b

    ts = ToolSet.from_mcp(client=client)
    assert ts.names[:3] == ["echo", "add", "slow"]
    # byte-identical JSON: the chat template renders an MCP tool exactly like the @tool function
    assert json.dumps(ts.get("add").schema) == json.dumps(add.schema)
    echo = ts.get("echo").schema["function"]
    assert echo["description"] == "Return the text unchanged."
    assert echo["parameters"] == {
        "type": "object",
        "properties": {"text": {"type": "string", "description": "The text to send back."}},
        "required": ["text"],
    }


@needs_mcp
def test_stdio_results_and_failures_become_tool_results(client):
    ts = ToolSet.from_mcp(client=client, timeout_s=20.0, max_output_chars=300)
    calls = [
        ToolCall("echo", {"text": "hello"}, id="c0"),
        ToolCall("add", {"a": 2, "b": 3}, id="c1"),
        ToolCall("stats", {"xs": [1, 2, 6]}, id="c2"),
        ToolCall("structured_only", {}, id="c3"),
        ToolCall("picture", {}, id="c4"),
        ToolCall("fail", {"reason": "no fuel"}, id="c5"),
        ToolCall("liar", {}, id="c6"),
        ToolCall("big", {"n": 5000}, id="c7"),
        ToolCall("echo", {"text": 3}, id="c8"),  # schema mismatch: caught before anything is sent
        ToolCall("add", {"a": 1}, id="c9"),
        ToolCall("nosuch", {}, id="c10"),
        ToolCall("stats", {"xs": []}, id="c11"),
    ]
    r = {x.call_id: x for x in ts.execute(calls)}
    assert (r["c0"].ok, r["c0"].output, r["c0"].name) == (True, "hello", "echo")
    assert (r["c1"].ok, r["c1"].output) == (True, "5")
    assert r["c2"].ok and r["c2"].meta["structured"] == {"n": 3, "mean": 3.0}
    assert json.loads(r["c2"].output) == {"n": 3, "mean": 3.0}  # the server's text block: the JSON of it
    assert (r["c3"].ok, r["c3"].output) == (True, '{"answer":42,"unit":"m"}')  # structured only -> compact JSON
    assert r["c4"].ok and r["c4"].output.splitlines() == ["[image: image/png, 12 base64 characters]", "a tiny png"]
    assert not r["c5"].ok and "cannot do it: no fuel" in r["c5"].error and r["c5"].meta["reason"] == "tool_error"
    assert r["c5"].text.startswith("Error: ")
    assert not r["c6"].ok and r["c6"].meta["reason"] == "bad_result" and "liar" in r["c6"].error
    assert r["c7"].ok and r["c7"].truncated and len(r["c7"].output) == 300 and "truncated" in r["c7"].output
    assert not r["c8"].ok and "bad arguments" in r["c8"].error and "text (string, required)" in r["c8"].error
    assert not r["c9"].ok and "missing required argument 'b'" in r["c9"].error
    assert not r["c10"].ok and "nosuch" in r["c10"].error
    assert not r["c11"].ok and "xs is empty" in r["c11"].error
    assert client.connects == 1  # none of these broke the session


@needs_mcp
def test_stdio_timeout_cancels_the_call_and_calls_run_concurrently(client):
    ts = ToolSet.from_mcp(client=client, timeout_s=20.0)
    ts_short = ToolSet.from_mcp(client=client, timeout_s=0.5)
    t0 = time.perf_counter()
    slow, quick = ts_short.execute([ToolCall("slow", {"seconds": 30}), ToolCall("slow", {"seconds": 0.1})])
    assert not slow.ok and slow.meta.get("timeout") and "timed out after 0.5 s" in slow.error
    assert quick.ok and quick.output == "slept 0.1 s"
    assert time.perf_counter() - t0 < 5.0
    t0 = time.perf_counter()
    res = ts.execute([ToolCall("slow", {"seconds": 0.6}) for _ in range(4)])
    assert all(x.ok for x in res)
    assert time.perf_counter() - t0 < 2.0  # one after the other would take 2.4 s
    assert ts.execute([ToolCall("echo", {"text": "still here"})])[0].output == "still here"
    assert client.connects == 1


# ---------------------------------------------------------------------- stdio: crashes, restarts, construction


@needs_mcp
def test_stdio_server_crash_mid_call_then_reconnect():
    from turngym.tools.mcp import MCPClient

    client = MCPClient(command=[sys.executable, TEST_SERVER])
    try:
        ts = ToolSet.from_mcp(client=client, timeout_s=30.0)
        pid1 = int(ts.execute([ToolCall("pid", {})])[0].output)
        # the server dies while two calls are in flight: both come back as errors, nothing raises or hangs
        crash, slow = ts.execute([ToolCall("crash", {}), ToolCall("slow", {"seconds": 20})])
        for x in (crash, slow):
            assert not x.ok and x.meta["reason"] == "connection_lost" and "next call reconnects" in x.error
            assert x.duration_s < 10
        # the next call starts a new server process
        pid2 = int(ts.execute([ToolCall("pid", {})])[0].output)
        assert pid2 != pid1 and client.connects == 2
        wait_until(lambda: not any(p.pid == pid1 for p in server_processes(TEST_SERVER)), 10, "the old server")
    finally:
        client.close()
    wait_until(lambda: not {pid1, pid2} & {p.pid for p in server_processes(TEST_SERVER)}, 10,
               "close() to stop the server")


@needs_mcp
def test_server_that_cannot_start_is_a_clear_error():
    from turngym.tools.mcp import MCPServerError

    t0 = time.perf_counter()
    with pytest.raises(MCPServerError, match="no-such-mcp-server-cmd") as e:
        ToolSet.from_mcp(command=["no-such-mcp-server-cmd", "--stdio"])
    assert "not found" in str(e.value)
    crash = "import sys; sys.stderr.write('config file mcp.toml is missing\\n'); sys.exit(3)"
    with pytest.raises(MCPServerError) as e:
        ToolSet.from_mcp(command=[sys.executable, "-c", crash], connect_timeout_s=20)
    assert "config file mcp.toml is missing" in str(e.value)  # the server's stderr is in the message
    url = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(ToolError, match=url.replace(".", r"\.")):
        ToolSet.from_mcp(url=url, connect_timeout_s=10)
    assert time.perf_counter() - t0 < 30


FASTMCP_SERVER = """
from fastmcp import FastMCP

app = FastMCP("standalone")


@app.tool
def add(a: int, b: int) -> int:
    \"\"\"Add two integers.\"\"\"
    return a + b


@app.tool
def fail(reason: str) -> str:
    \"\"\"Always fail.\"\"\"
    raise ValueError(reason)


app.run(show_banner=False)
"""


@needs_mcp
def test_server_written_with_the_standalone_fastmcp_package(tmp_path):
    pytest.importorskip("fastmcp")
    script = tmp_path / "fastmcp_server.py"
    script.write_text(FASTMCP_SERVER, encoding="utf-8")
    with ToolSet.from_mcp(command=[sys.executable, str(script)], timeout_s=20.0) as ts:
        assert ts.names == ["add", "fail"]
        assert ts.get("add").parameters["required"] == ["a", "b"]
        add, fail = ts.execute([ToolCall("add", {"a": 20, "b": 22}), ToolCall("fail", {"reason": "on purpose"})])
        assert (add.ok, add.output) == (True, "42")
        assert not fail.ok and "on purpose" in fail.error and fail.meta["reason"] == "tool_error"


# ---------------------------------------------------------------------- HTTP


@needs_mcp
def test_http_calls_concurrency_limit_kill_restart_and_schema_change():
    from turngym.tools.mcp import MCPClient

    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    proc = start_http_server([TEST_SERVER, "http", str(port)], port)
    client = MCPClient(url=url, max_concurrent_calls=2)
    try:
        ts = ToolSet.from_mcp(client=client, timeout_s=20.0)
        r = ts.execute([ToolCall("echo", {"text": "over http"}), ToolCall("stats", {"xs": [2, 4]}),
                        ToolCall("fail", {"reason": "http"})])
        assert [x.ok for x in r] == [True, True, False]
        assert r[0].output == "over http" and r[1].meta["structured"] == {"n": 2, "mean": 3.0}
        assert "cannot do it: http" in r[2].error
        t0 = time.perf_counter()
        assert all(x.ok for x in ts.execute([ToolCall("slow", {"seconds": 0.4}) for _ in range(4)]))
        assert time.perf_counter() - t0 >= 0.75  # two at a time: two rounds of 0.4 s

        stop(proc)  # the server dies between calls
        t0 = time.perf_counter()
        lost = ts.execute([ToolCall("echo", {"text": "anyone?"})])[0]
        assert not lost.ok and lost.meta["reason"] in ("connection_lost", "connect_failed")
        down = ts.execute([ToolCall("echo", {"text": "anyone?"})])[0]
        assert not down.ok and down.meta["reason"] == "connect_failed" and url in down.error
        assert time.perf_counter() - t0 < 15  # errors come back, nothing waits for the tool timeout

        # it comes back, with another schema for `echo`: calls of `echo` fail, the other tools work again
        proc = start_http_server([TEST_SERVER, "http", str(port)], port, {"TURNGYM_MCP_TEST_VARIANT": "changed"})
        add, echo = ts.execute([ToolCall("add", {"a": 2, "b": 2}), ToolCall("echo", {"text": "hi"})])
        assert add.ok and add.output == "4" and client.connects == 2
        assert not echo.ok and echo.meta["reason"] == "schema_mismatch" and "changed" in echo.error
    finally:
        client.close()
        stop(proc)


# ---------------------------------------------------------------------- HopQA with its search tool from MCP


def _expert_episode(env, seed: int, noise: float, hops: int | None = None):
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed, options={"hops": hops} if hops else None)
    trace = [obs]
    while True:
        obs, reward, terminated, truncated, info = env.step(env.expert_action(rng, noise))
        trace.append((obs, reward, terminated, truncated, info.get("tool_errors"), info.get("success")))
        if terminated or truncated:
            return trace, info


@needs_mcp
def test_hopqa_with_mcp_search_over_stdio_matches_builtin_and_restarts():
    from turngym.envs import check_env
    from turngym.envs.builtin.hopqa import HopQAEnv

    env = HopQAEnv(tools=ToolSet.from_mcp(command=[sys.executable, SEARCH_SERVER], timeout_s=30.0))
    ref = HopQAEnv()
    try:
        assert json.dumps(env.tool_schemas) == json.dumps(ref.tool_schemas)
        for seed in range(6):  # the scripted expert with mistakes: same observations, rewards and outcomes
            got, ref_trace = _expert_episode(env, seed, 0.3)[0], _expert_episode(ref, seed, 0.3)[0]
            assert got == ref_trace
        hit = env.toolset.execute([ToolCall("search", {"query": "founder of Zentrix"})])[0]
        assert len(hit.meta["structured"]["doc_ids"]) == 3

        # the server is killed between two steps of an episode: the next call starts a new one, the episode goes on
        (server,) = server_processes(SEARCH_SERVER)
        client = env.toolset.get("search").fn.mcp_client
        rng = np.random.default_rng(7)
        env.reset(seed=7, options={"hops": 2})
        env.step(env.expert_action(rng))
        server.kill()  # (not reaped here: the client's transport owns the process)
        wait_until(lambda: not client.connected, 10, "the client to see the server's end")
        obs, _, terminated, _, info = env.step(env.expert_action(rng))
        assert info["tool_errors"] == 0 and obs[0]["content"].startswith("[1] "), obs
        obs, reward, terminated, _, info = env.step(env.expert_action(rng))
        assert terminated and info["success"] and reward == 1.0
        assert client.connects == 2 and [p.pid for p in server_processes(SEARCH_SERVER)] != [server.pid]

        assert check_env(env)["expert"] == "ok"  # the contract holds; check_env closes the env at the end
    finally:
        env.close()
        ref.close()
    wait_until(lambda: not server_processes(SEARCH_SERVER), 10, "env.close() to stop the server")


@needs_mcp
def test_hopqa_with_mcp_search_over_http_killed_mid_episode():
    from turngym.envs.builtin.hopqa import HopQAEnv

    port = free_port()
    argv = [SEARCH_SERVER, "--transport", "http", "--port", str(port)]
    proc = start_http_server(argv, port)
    env = HopQAEnv(tools=ToolSet.from_mcp(url=f"http://127.0.0.1:{port}/mcp", timeout_s=20.0))
    try:
        rng = np.random.default_rng(3)
        env.reset(seed=3, options={"hops": 2})
        obs, *_ = env.step(env.expert_action(rng))
        assert obs[0]["role"] == "tool" and obs[0]["content"].startswith("[1]")
        stop(proc)
        for _ in range(2):  # the dead server: error observations, the episode goes on
            obs, reward, terminated, _, info = env.step("<search> founder of Zentrix </search>")
            assert obs[0]["role"] == "tool" and obs[0]["content"].startswith("Error: the MCP server")
            assert info["tool_errors"] == 1 and not terminated and reward == 0.0
        proc = start_http_server(argv, port)
        trace, info = _expert_episode(env, 4, 0.0)  # the next episode reconnects and is solved
        assert info["success"] and all(step[4] == 0 for step in trace[1:])
    finally:
        env.close()
        stop(proc)


@needs_mcp
def test_example_env_shares_one_server_among_envs(monkeypatch):
    """`examples/mcp_hopqa_env.py`: every env of the process uses one shared client, so one server process."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    from mcp_hopqa_env import MCPHopQAEnv

    envs = [MCPHopQAEnv(topk=1) for _ in range(3)]
    client = envs[0].toolset.get("search").fn.mcp_client
    try:
        assert all(e.toolset.get("search").fn.mcp_client is client for e in envs)
        assert envs[0].max_turns == 6 and envs[0].toolset.names == ["search"]
        infos = [_expert_episode(e, seed, 0.0)[1] for seed, e in enumerate(envs)]
        assert all(i["success"] for i in infos) and client.connects == 1
        assert len(server_processes("mcp_search_server.py")) == 1
        for e in envs:
            e.close()  # a shared client outlives the envs
        assert client.connected
    finally:
        client.close()
    wait_until(lambda: not server_processes("mcp_search_server.py"), 10, "the shared server to stop")


# ---------------------------------------------------------------------- the README snippet

def _readme_snippet() -> str:
    """The MCP block of README.md ("Plug in tools, envs and agents from other stacks")."""
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Plug in tools, envs and agents from other stacks", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


README_SNIPPET = _readme_snippet()


@needs_mcp
def test_readme_snippet_runs(capsys, monkeypatch):
    assert len(README_SNIPPET.strip().splitlines()) <= 12
    monkeypatch.chdir(ROOT)
    exec(compile(README_SNIPPET, "README_SNIPPET", "exec"), {"__name__": "readme"})  # noqa: S102 - our own snippet
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("?") and out[1].startswith("[1] ") and out[2].startswith("[2] ") and len(out) == 3
    wait_until(lambda: not server_processes("mcp_search_server.py"), 10, "the server to stop")
