"""`ToolSet`: run a turn's tool calls concurrently; every failure comes back as data.

>>> ts = ToolSet([calculator], timeout_s=5.0)
>>> [r.text for r in ts.execute([ToolCall("calculator", {"expression": "2*(3+4)"})])]
['14']

Execution model:
- Async tools run as tasks on the event loop; sync tools run each in its own daemon thread (so a
  stuck sync tool never blocks the loop or starves other calls). All calls of one `execute` run
  at the same time; results come back in call order.
- Each call has a timeout (the tool's ``timeout_s``, else the ToolSet's). A timed-out async tool is
  cancelled; a timed-out sync tool's thread cannot be killed from Python and is abandoned (tools
  that run external code should enforce their own deadline, as the sandboxes do).
- `execute` is synchronous and works whether or not the caller is inside a running event loop: it
  submits the work to a private event loop on a helper thread and waits. `aexecute` runs on the
  caller's loop.
- Unknown tool, bad arguments (schema check), an exception, a timeout: ``ToolResult(ok=False,
  error=...)`` with a message saying what went wrong and what the tool expects. Nothing raises.
- Outputs (and error messages) longer than ``max_output_chars`` are cut, marked ``truncated=True``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from turngym.errors import ToolError
from turngym.registry import unknown_name_message
from turngym.tools.base import Tool, describe_parameters, validate_arguments
from turngym.types import ToolCall, ToolResult

__all__ = ["ToolSet"]

_TRUNC_MARK = "\n...[truncated {n} chars]"


def _truncate(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    mark = _TRUNC_MARK.format(n=len(text) - limit)
    keep = max(0, limit - len(mark))
    return (text[:keep] + mark)[:limit] if keep else text[:limit], True


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


_HOST_PATH = re.compile(r"(?<![\w.:/\\])(?:[A-Za-z]:)?(?:[/\\][\w.\-~@+]+){2,}")


def strip_host_paths(text: str) -> str:
    """``text`` with absolute host paths cut to their last part (``/home/u/proj/data.csv`` -> ``.../data.csv``).

    Tool exceptions reach the model as observations; this keeps the host's directory layout (user names, checkout
    and virtualenv locations) out of them. URLs are left alone.
    """
    return _HOST_PATH.sub(lambda m: ".../" + re.split(r"[/\\]", m.group(0))[-1], text)


class _LoopThread:
    """A private asyncio loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="turngym-toolset-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Any) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class ToolSet:
    """A named collection of tools with concurrent, failure-safe execution.

    Args:
        tools: The tools (`Tool` objects, e.g. functions decorated with ``@tool``). Names must be unique.
        timeout_s: Default per-call timeout in seconds (a tool's own ``timeout_s`` wins).
        max_output_chars: Outputs and error messages are cut to this many characters.

    Raises:
        ToolError: When an entry is not a `Tool` or two tools share a name.
    """

    def __init__(self, tools: Iterable[Tool], *, timeout_s: float = 10.0, max_output_chars: int = 4000):
        if not timeout_s > 0:
            raise ToolError(f"ToolSet timeout_s must be > 0, got {timeout_s!r}.")
        if max_output_chars < 1:
            raise ToolError(f"ToolSet max_output_chars must be >= 1, got {max_output_chars!r}.")
        self._tools: dict[str, Tool] = {}
        for t in tools:
            if not isinstance(t, Tool):
                raise ToolError(
                    f"ToolSet takes Tool objects, got {type(t).__name__} {t!r}. "
                    "Decorate the function with @turngym.tools.tool (or use Tool.from_function)."
                )
            if t.name in self._tools:
                raise ToolError(f"Two tools are named {t.name!r}; tool names in a ToolSet must be unique.")
            self._tools[t.name] = t
        self.timeout_s = float(timeout_s)
        self.max_output_chars = int(max_output_chars)
        self._loop_thread: _LoopThread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_mcp(
        cls,
        *,
        command: Sequence[str] | None = None,
        url: str | None = None,
        client: Any = None,
        include: Sequence[str] | None = None,
        timeout_s: float = 10.0,
        max_output_chars: int = 4000,
        **client_kwargs: Any,
    ) -> ToolSet:
        """A ToolSet of an MCP server's tools (`turngym.tools.mcp`; needs ``pip install 'turngym[mcp]'``).

        Give one of ``command`` (a stdio server's argv), ``url`` (a streamable-HTTP endpoint) or ``client`` (a
        shared `turngym.tools.mcp.MCPClient`). With ``command`` / ``url`` the ToolSet owns its client: it connects
        now (to list the tools) and `close` ends the session.

        Args:
            command: The server's command line, e.g. ``[sys.executable, "server.py"]``.
            url: The server's streamable-HTTP URL, e.g. ``"http://127.0.0.1:8765/mcp"``.
            client: A shared `MCPClient` (e.g. `turngym.tools.mcp.shared_client`); not closed by `close`.
            include: Names of the server's tools to take (default: all).
            timeout_s: Default per-call timeout in seconds.
            max_output_chars: Outputs and error messages are cut to this many characters.
            **client_kwargs: `MCPClient` options for a new client (``env``, ``cwd``, ``connect_timeout_s``, ...).

        Raises:
            MCPServerError: The server cannot be started or reached (a `ToolError`; the message names it).
            ConfigError: Not exactly one of ``command``, ``url``, ``client``.
            MissingExtraError: ``mcp`` is not installed.
        """
        from turngym.tools.mcp import mcp_tools

        tools = mcp_tools(command=command, url=url, client=client, include=include, **client_kwargs)
        try:
            return cls(tools, timeout_s=timeout_s, max_output_chars=max_output_chars)
        except BaseException:
            for t in tools:
                closer = getattr(t.fn, "close", None)
                if callable(closer):
                    closer()
            raise

    # ------------------------------------------------------------------ introspection
    @property
    def names(self) -> list[str]:
        """Tool names, in the order given."""
        return list(self._tools)

    @property
    def schemas(self) -> list[dict[str, Any]]:
        """The tools' schemas (``{"type": "function", "function": {...}}``), for chat templates."""
        return [t.schema for t in self._tools.values()]

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, or None."""
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self):
        return iter(self._tools.values())

    def __repr__(self) -> str:
        return f"ToolSet({self.names}, timeout_s={self.timeout_s}, max_output_chars={self.max_output_chars})"

    # ------------------------------------------------------------------ execution
    def execute(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        """Run the calls concurrently and return one `ToolResult` per call, in order. Never raises.

        Safe to call from synchronous code and from inside a running event loop (the work runs on a
        private loop in a helper thread).
        """
        calls = list(calls)
        if not calls:
            return []
        with self._lock:
            if self._loop_thread is None:
                self._loop_thread = _LoopThread()
            lt = self._loop_thread
        return lt.submit(self.aexecute(calls)).result()

    async def aexecute(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        """Async version of `execute`, running on the caller's event loop."""
        calls = list(calls)
        if not calls:
            return []
        return list(await asyncio.gather(*(self._run_one(c) for c in calls)))

    async def _run_one(self, call: Any) -> ToolResult:
        t0 = time.perf_counter()
        try:
            return await self._run_one_inner(call, t0)
        except BaseException as e:  # defensive: a bug here must still not kill the rollout
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            return self._fail(call, t0, f"internal error while running the tool: {type(e).__name__}: {e}")

    def _fail(self, call: Any, t0: float, error: str, meta: dict[str, Any] | None = None) -> ToolResult:
        error, cut = _truncate(error, self.max_output_chars)
        return ToolResult(
            name=str(getattr(call, "name", "")),
            ok=False,
            error=error,
            call_id=str(getattr(call, "id", "")),
            duration_s=time.perf_counter() - t0,
            truncated=cut,
            meta=meta or {},
        )

    async def _run_one_inner(self, call: Any, t0: float) -> ToolResult:
        if not isinstance(call, ToolCall):
            return self._fail(call, t0, f"expected a ToolCall, got {type(call).__name__}")
        t = self._tools.get(call.name)
        if t is None:
            msg = unknown_name_message("tool", call.name, self._tools)
            return self._fail(call, t0, msg)
        problems = validate_arguments(t.parameters, call.arguments)
        if problems:
            return self._fail(
                call,
                t0,
                f"bad arguments for tool {t.name!r}: {'; '.join(problems)}. "
                f"Expected: {describe_parameters(t.parameters)}.",
            )
        timeout = t.timeout_s if t.timeout_s is not None else self.timeout_s
        try:
            if t.is_async:
                value = await asyncio.wait_for(t.fn(**call.arguments), timeout)
            else:
                value = await asyncio.wait_for(_in_thread(t.fn, call.arguments), timeout)
        except asyncio.TimeoutError:
            return self._fail(call, t0, f"tool {t.name!r} timed out after {timeout:g} s", {"timeout": True})
        except (Exception, SystemExit) as e:  # noqa: BLE001
            return self._fail(call, t0, f"tool {t.name!r} failed: {type(e).__name__}: {strip_host_paths(str(e))}")

        if isinstance(value, ToolResult):
            out, cut = _truncate(value.output or "", self.max_output_chars)
            err = value.error
            if err is not None:
                err, ecut = _truncate(err, self.max_output_chars)
                cut = cut or ecut
            return ToolResult(
                name=t.name,
                ok=value.ok,
                output=out,
                error=err if (err is not None or value.ok) else "tool reported a failure",
                call_id=call.id,
                duration_s=time.perf_counter() - t0,
                truncated=cut or value.truncated,
                meta=dict(value.meta),
            )
        out, cut = _truncate(_to_text(value), self.max_output_chars)
        return ToolResult(
            name=t.name,
            ok=True,
            output=out,
            call_id=call.id,
            duration_s=time.perf_counter() - t0,
            truncated=cut,
        )

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the helper loop and close tools that hold resources (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            lt, self._loop_thread = self._loop_thread, None
        if lt is not None:
            lt.stop()
        for t in self._tools.values():
            closer = getattr(t.fn, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # noqa: BLE001, S110
                    pass

    def __enter__(self) -> ToolSet:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        lt = getattr(self, "_loop_thread", None)
        if lt is not None:
            try:
                lt.loop.call_soon_threadsafe(lt.loop.stop)
            except Exception:  # noqa: BLE001, S110
                pass


def _in_thread(fn: Any, kwargs: dict[str, Any]) -> asyncio.Future:
    """Run ``fn(**kwargs)`` on a fresh daemon thread; resolve an asyncio future on the current loop."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def _set(setter: Any, value: Any) -> None:
        if not fut.done():
            setter(value)

    def _target() -> None:
        try:
            value = fn(**kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised on the loop side (SystemExit included)
            exc = e if isinstance(e, Exception) else RuntimeError(f"{type(e).__name__}: {e}")
            _post(fut.set_exception, exc)
            return
        _post(fut.set_result, value)

    def _post(setter: Any, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(_set, setter, value)
        except RuntimeError:  # the loop was closed meanwhile (ToolSet.close during a stuck call)
            pass

    threading.Thread(
        target=_target, name=f"turngym-tool-{getattr(fn, '__name__', 'fn')}", daemon=True
    ).start()
    return fut
