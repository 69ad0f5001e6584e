"""@tool schemas, argument validation and ToolSet execution (concurrency, timeouts, truncation, errors)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from turngym.errors import ToolError
from turngym.tools import Tool, ToolCall, ToolResult, ToolSet, tool, validate_arguments


@tool
def add(a: int, b: int = 1) -> int:
    """Add two integers.

    Args:
        a: First term.
        b: Second term.
    """
    return a + b


@tool(name="echo_async", timeout_s=2.0)
async def echo(text: str, times: int = 1) -> str:
    """Echo text back.

    Args:
        text: What to echo.
        times: How many copies.
    """
    await asyncio.sleep(0.01)
    return text * times


@tool
def sleepy(seconds: float) -> str:
    """Sleep, then say done.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "done"


@tool
async def asleep(seconds: float) -> str:
    """Sleep asynchronously.

    Args:
        seconds: How long to sleep.
    """
    await asyncio.sleep(seconds)
    return "done"


@tool
def boom(msg: str) -> str:
    """Raise an error.

    Args:
        msg: The message.
    """
    raise RuntimeError(msg)


@tool
def exits() -> str:
    """Call sys.exit inside a tool."""
    raise SystemExit(3)


@tool
def big(n: int) -> str:
    """Return n characters.

    Args:
        n: How many.
    """
    return "x" * n


@tool
def structured(tags: list[str], opts: dict | None = None) -> dict:
    """Return a dict.

    Args:
        tags: Some tags.
        opts: Options.
    """
    return {"tags": tags, "n": len(tags)}


@tool
def self_reported(fail: bool) -> ToolResult:
    """A tool that builds its own ToolResult.

    Args:
        fail: Whether to report failure.
    """
    if fail:
        return ToolResult(name="ignored", ok=False, error="it failed", meta={"code": 7})
    return ToolResult(name="ignored", ok=True, output="fine", meta={"code": 0})


def test_schema_from_signature_and_docstring():
    s = add.schema
    assert s["type"] == "function"
    assert s["function"]["name"] == "add"
    assert s["function"]["description"] == "Add two integers."
    params = s["function"]["parameters"]
    assert params["properties"]["a"] == {"type": "integer", "description": "First term."}
    assert params["required"] == ["a"]
    assert echo.name == "echo_async" and echo.is_async and echo.timeout_s == 2.0
    assert add(2, 3) == 5  # still callable


def test_tool_without_docstring_or_hints_is_a_clear_error():
    def nodoc(x: int) -> int:
        return x

    with pytest.raises(ToolError, match="docstring"):
        tool(nodoc)

    def nohint(x):
        """Doc.

        Args:
            x: thing.
        """

    with pytest.raises(ToolError, match="type hint"):
        tool(nohint)


def test_toolset_rejects_plain_functions_and_duplicates():
    with pytest.raises(ToolError, match="@turngym.tools.tool"):
        ToolSet([lambda x: x])
    with pytest.raises(ToolError, match="unique"):
        ToolSet([add, add])


@pytest.mark.parametrize(
    "args, fragment",
    [
        ({}, "missing required argument 'a'"),
        ({"a": 1, "c": 2}, "unexpected argument 'c'"),
        ({"a": "1"}, "argument 'a' should be integer, got string"),
        ({"a": True}, "argument 'a' should be integer, got boolean"),
        ({"a": 1.5}, "argument 'a' should be integer, got number"),
        ([1, 2], "arguments must be a JSON object"),
    ],
)
def test_validate_arguments_problems(args, fragment):
    problems = validate_arguments(add.parameters, args)
    assert any(fragment in p for p in problems), problems


def test_validate_nested_and_nullable():
    assert validate_arguments(structured.parameters, {"tags": ["a", "b"]}) == []
    assert validate_arguments(structured.parameters, {"tags": ["a"], "opts": None}) == []
    probs = validate_arguments(structured.parameters, {"tags": ["a", 3]})
    assert probs and "argument 'tags'[1] should be string" in probs[0]


def test_execute_results_in_order_with_errors_as_data():
    ts = ToolSet([add, echo, boom, structured, self_reported], timeout_s=5)
    calls = [
        ToolCall("add", {"a": 2, "b": 5}, id="c0"),
        ToolCall("echo_async", {"text": "ab", "times": 2}, id="c1"),
        ToolCall("bomb", {"msg": "x"}, id="c2"),
        ToolCall("boom", {"msg": "kaput"}, id="c3"),
        ToolCall("add", {"b": 2}, id="c4"),
        ToolCall("structured", {"tags": ["x", "y"]}, id="c5"),
        ToolCall("self_reported", {"fail": True}, id="c6"),
        ToolCall("self_reported", {"fail": False}, id="c7"),
    ]
    res = ts.execute(calls)
    assert [r.call_id for r in res] == [c.id for c in calls]
    assert res[0].ok and res[0].output == "7" and res[0].name == "add"
    assert res[1].ok and res[1].output == "abab"
    assert not res[2].ok and "Unknown tool 'bomb'" in res[2].error and "boom" in res[2].error
    assert not res[3].ok and "RuntimeError: kaput" in res[3].error
    assert (
        not res[4].ok
        and "missing required argument 'a'" in res[4].error
        and "a (integer, required)" in res[4].error
    )
    assert res[5].ok and res[5].output == '{"tags": ["x", "y"], "n": 2}'
    assert (
        not res[6].ok
        and res[6].error == "it failed"
        and res[6].meta == {"code": 7}
        and res[6].name == "self_reported"
    )
    assert res[7].ok and res[7].output == "fine"
    assert all(r.duration_s >= 0 for r in res)
    assert res[3].text.startswith("Error: ")
    ts.close()


def test_system_exit_in_tool_is_data():
    with ToolSet([exits]) as ts:
        (r,) = ts.execute([ToolCall("exits", {})])
    assert not r.ok and "SystemExit" in r.error


def test_calls_run_concurrently():
    ts = ToolSet([sleepy, asleep], timeout_s=5)
    calls = [ToolCall("sleepy", {"seconds": 0.4}) for _ in range(5)] + [
        ToolCall("asleep", {"seconds": 0.4}) for _ in range(5)
    ]
    t0 = time.perf_counter()
    res = ts.execute(calls)
    dt = time.perf_counter() - t0
    assert all(r.ok and r.output == "done" for r in res)
    assert dt < 1.5, f"10 x 0.4 s calls took {dt:.2f} s: not concurrent"
    ts.close()


def test_timeouts_sync_and_async_and_per_tool_override():
    ts = ToolSet([sleepy, asleep, echo], timeout_s=0.3)
    t0 = time.perf_counter()
    r1, r2, r3 = ts.execute(
        [
            ToolCall("sleepy", {"seconds": 3}),
            ToolCall("asleep", {"seconds": 3}),
            ToolCall("echo_async", {"text": "x"}),
        ]
    )
    dt = time.perf_counter() - t0
    assert dt < 1.5
    assert not r1.ok and "timed out after 0.3 s" in r1.error and r1.meta.get("timeout")
    assert not r2.ok and "timed out" in r2.error
    assert r3.ok and r3.output == "x"
    # the set keeps working after a timeout
    assert ts.execute([ToolCall("asleep", {"seconds": 0.01})])[0].ok
    ts.close()
    # the tool's own timeout wins over the ToolSet's
    slow = Tool.from_function(sleepy.fn, name="slow", timeout_s=0.2)
    with ToolSet([slow], timeout_s=30) as ts2:
        t0 = time.perf_counter()
        (r,) = ts2.execute([ToolCall("slow", {"seconds": 2})])
        assert not r.ok and time.perf_counter() - t0 < 1.0


def test_truncation_marks_results():
    with ToolSet([big, boom], max_output_chars=100) as ts:
        short, long_, err = ts.execute(
            [ToolCall("big", {"n": 100}), ToolCall("big", {"n": 5000}), ToolCall("boom", {"msg": "m" * 1000})]
        )
    assert short.ok and not short.truncated and len(short.output) == 100
    assert long_.ok and long_.truncated and len(long_.output) <= 100 and "truncated" in long_.output
    assert not err.ok and err.truncated and len(err.error) <= 100


def test_execute_inside_running_event_loop():
    ts = ToolSet([add, echo])

    async def main():
        # sync API from inside a running loop (e.g. a Jupyter cell or an async rollout server)
        sync_res = ts.execute([ToolCall("add", {"a": 1}), ToolCall("echo_async", {"text": "hi"})])
        async_res = await ts.aexecute([ToolCall("add", {"a": 41})])
        return sync_res, async_res

    sync_res, async_res = asyncio.run(main())
    assert [r.output for r in sync_res] == ["2", "hi"]
    assert async_res[0].output == "42"
    ts.close()
    ts.close()  # idempotent


def test_execute_from_many_threads():
    ts = ToolSet([add])
    out: list[str] = []

    def worker(i: int) -> None:
        out.append(ts.execute([ToolCall("add", {"a": i, "b": 0})])[0].output)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out, key=int) == [str(i) for i in range(8)]
    ts.close()


def test_names_schemas_get():
    ts = ToolSet([add, echo])
    assert ts.names == ["add", "echo_async"]
    assert [s["function"]["name"] for s in ts.schemas] == ["add", "echo_async"]
    assert ts.get("add") is add and ts.get("nope") is None
    assert ts.execute([]) == []


def test_non_toolcall_input_is_data():
    ts = ToolSet([add])
    (r,) = ts.execute([{"name": "add"}])  # type: ignore[list-item]
    assert not r.ok and "expected a ToolCall" in r.error
