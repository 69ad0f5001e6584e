"""Tools from MCP servers: connect to a Model Context Protocol server and use its tools as turngym tools.

>>> ts = ToolSet.from_mcp(command=[sys.executable, "examples/mcp_search_server.py"])   # doctest: +SKIP  stdio
>>> ts = ToolSet.from_mcp(url="http://127.0.0.1:8765/mcp")                              # doctest: +SKIP  HTTP
>>> ts.schemas       # doctest: +SKIP  the server's tools, shown to the model like @tool ones
>>> ts.execute([ToolCall("search", {"query": "founder of Zentrix"})])                    # doctest: +SKIP

Transports: a command started as a subprocess and spoken to over stdio, or a streamable-HTTP URL. The client is
the official SDK's (`mcp` on PyPI, ``pip install 'turngym[mcp]'``), imported only when a client connects.

Schemas: each MCP tool's ``inputSchema`` becomes the `Tool`'s ``parameters``, with the titles pydantic adds to
every schema (``"title": "searchArguments"``, ``"title": "Query"``) removed, so an MCP tool reads exactly like the
``@tool`` function with the same signature and docstring; the ToolSet checks call arguments against it before
anything is sent.

Results: the text blocks of a result are the output (joined by newlines); a result with no text block but
structured content shows the structured content as compact JSON; images, audio and binary resources show as a
one-line placeholder. Structured content is also kept in ``ToolResult.meta["structured"]``.

Failures are data: every call returns a `ToolResult` and never raises. ``ok=False`` with ``meta["reason"]``:

- ``"tool_error"``: the tool reported an error (``isError``); the error is the server's message.
- ``"connect_failed"``: the server cannot be (re)started or reached.
- ``"connection_lost"``: the server died or hung up during the call (the next call reconnects).
- ``"schema_mismatch"``: after a reconnect the server no longer offers the tool, or its input schema changed.
- ``"bad_result"``: the server answered with something that is not a valid result (e.g. structured content that
  breaks the tool's declared output schema, malformed content blocks).
- ``"protocol_error"``: the server answered with a JSON-RPC error.
- ``"client_error"``: the SDK client failed in another way (its message says how).
- ``"closed"``: the client was closed.

Timeouts, output truncation and bad arguments are handled by the `ToolSet` as for every tool.

Lifecycle: an `MCPClient` holds at most one MCP session at a time, on a private event loop thread. It connects
when its tools are listed (``ToolSet.from_mcp`` lists them: the schemas go into the prompt) and stays connected;
when the server dies, the calls in flight come back as ``connection_lost`` and the next call starts a new session
(a new server process for stdio). ``ToolSet.from_mcp(command=...)`` / ``(url=...)`` gives each ToolSet (so each env)
its own client, closed with the ToolSet (``env.close()``); ``ToolSet.from_mcp(client=shared_client(...))`` shares
one client (one server process, many concurrent calls) among ToolSets, and `shared_client` closes it at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from turngym.errors import ConfigError, MissingExtraError, ToolError
from turngym.tools.base import Tool
from turngym.tools.toolset import _LoopThread
from turngym.types import ToolResult

__all__ = ["MCPClient", "MCPServerError", "clean_schema", "mcp_tools", "shared_client"]

_CONNECTION_CLOSED = -32000  # JSON-RPC code the MCP SDK uses for a closed connection
_STDERR_TAIL_CHARS = 1500
_MAX_LIST_PAGES = 100


class MCPServerError(ToolError, RuntimeError):
    """An MCP server could not be started or reached, or offers tools turngym cannot use (raised at construction)."""


def import_mcp() -> Any:
    """The ``mcp`` package (the official MCP Python SDK).

    Raises:
        MissingExtraError: ``mcp`` is not installed (``pip install 'turngym[mcp]'``).
    """
    try:
        import mcp
        import mcp.client.stdio
    except ImportError:
        raise MissingExtraError("mcp", "mcp") from None
    return mcp


def clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """An MCP ``inputSchema`` as a turngym tool ``parameters`` schema: a copy without pydantic's automatic titles.

    Drops ``$schema``, the top-level ``title`` and each property's ``title`` when it is the one pydantic derives
    from the property name (``query`` -> ``"Query"``), and puts ``type`` first in the schema and in each property
    (the key order of ``@tool`` schemas, which chat templates render as is); everything else (descriptions,
    constraints, ``additionalProperties``, nested schemas) is kept as the server wrote it.
    """
    out = _type_first({k: v for k, v in schema.items() if k not in ("$schema", "title")})
    props = out.get("properties")
    if isinstance(props, dict):
        cleaned = {}
        for name, prop in props.items():
            if isinstance(prop, dict):
                if prop.get("title") == name.replace("_", " ").title():
                    prop = {k: v for k, v in prop.items() if k != "title"}
                prop = _type_first(prop)
            cleaned[name] = prop
        out["properties"] = cleaned
    return out


def _type_first(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with ``type`` as its first key, as in ``@tool`` schemas (the order templates render keys in)."""
    return {"type": d["type"], **{k: v for k, v in d.items() if k != "type"}} if "type" in d else dict(d)


def _describe_blocks(content: Sequence[Any]) -> list[str]:
    parts: list[str] = []
    for block in content:
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(str(block.text))
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {block.mime_type}, {len(block.data)} base64 characters]")
        elif kind == "resource":
            res = block.resource
            text = getattr(res, "text", None)
            parts.append(str(text) if text is not None else f"[binary resource {res.uri} ({res.mime_type})]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {block.uri}]")
        else:
            parts.append(f"[{kind} content]")
    return parts


def result_to_tool_result(name: str, result: Any) -> ToolResult:
    """Convert an MCP ``CallToolResult`` to a `ToolResult` (see the module docstring for the rules)."""
    content = list(getattr(result, "content", None) or [])
    structured = getattr(result, "structured_content", None)
    texts = _describe_blocks(content)
    has_text = any(getattr(b, "type", None) == "text" for b in content)
    if has_text or structured is None:
        output = "\n".join(texts)
    else:
        output = json.dumps(structured, ensure_ascii=False, separators=(",", ":"))
        if texts:
            output = "\n".join([*texts, output])
    meta: dict[str, Any] = {}
    if structured is not None:
        meta["structured"] = structured
    if getattr(result, "is_error", False):
        meta["reason"] = "tool_error"
        return ToolResult(name=name, ok=False, error=output or f"tool {name!r} reported an error", meta=meta)
    return ToolResult(name=name, ok=True, output=output, meta=meta)


class _Session:
    """One live MCP session: the task that owns the SDK client (entered and exited in that task) and its state."""

    def __init__(self) -> None:
        self.client: Any = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.stop = asyncio.Event()
        self.owner: asyncio.Task | None = None
        self.tools: dict[str, dict[str, Any]] = {}  # name -> cleaned input schema
        self.raw_tools: list[Any] = []
        self.broken = False
        self.errlog: Any = None

    @property
    def alive(self) -> bool:
        if self.broken or self.owner is None or self.owner.done() or self.client is None:
            return False
        return not _transport_closed(self.client)


class MCPClient:
    """A client of one MCP server, usable from synchronous code and from any event loop.

    Exactly one of ``command`` and ``url`` is given.

    Args:
        command: The server's command line (``[sys.executable, "server.py", "--flag"]``), started as a subprocess
            and spoken to over stdio (a new process after each crash).
        url: A streamable-HTTP endpoint (``http://127.0.0.1:8765/mcp``).
        env: Extra environment variables for a stdio server (on top of the SDK's safe default environment:
            HOME, PATH, USER, ...).
        cwd: Working directory of a stdio server.
        connect_timeout_s: Longest wait for a connection (process start, handshake, tool listing).
        max_concurrent_calls: Most calls in flight on the session at once; the others wait their turn.

    Raises:
        ConfigError: Neither or both of ``command`` / ``url``, an empty command, a URL that is not http(s).
        MissingExtraError: ``mcp`` is not installed.
    """

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        url: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        connect_timeout_s: float = 30.0,
        max_concurrent_calls: int = 16,
    ):
        if (command is None) == (url is None):
            raise ConfigError("MCPClient needs exactly one of command=[...] (stdio) or url='http://...' (HTTP).")
        if command is not None:
            if isinstance(command, str) or not command or not all(isinstance(c, str) and c for c in command):
                raise ConfigError(
                    f"MCPClient command must be a non-empty list of strings (argv), got {command!r}; "
                    "e.g. command=[sys.executable, 'server.py']."
                )
            if env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
                raise ConfigError(f"MCPClient env must map str to str, got {dict(env)!r}.")
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            raise ConfigError(f"MCPClient url must start with http:// or https://, got {url!r}.")
        if url is not None and (env is not None or cwd is not None):
            raise ConfigError("MCPClient env= and cwd= apply to a stdio server (command=...), not to url=.")
        if not connect_timeout_s > 0:
            raise ConfigError(f"MCPClient connect_timeout_s must be > 0, got {connect_timeout_s!r}.")
        if int(max_concurrent_calls) < 1:
            raise ConfigError(f"MCPClient max_concurrent_calls must be >= 1, got {max_concurrent_calls!r}.")
        import_mcp()
        self.command = list(command) if command is not None else None
        self.url = url
        self.env = dict(env) if env is not None else None
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.connect_timeout_s = float(connect_timeout_s)
        self.max_concurrent_calls = int(max_concurrent_calls)
        self.connects = 0
        """Sessions opened so far (1 after the first connection; each reconnect adds one)."""
        self._loop_thread: _LoopThread | None = None
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._connecting: asyncio.Task | None = None
        self._calls: asyncio.Semaphore | None = None
        self._listed: dict[str, dict[str, Any]] | None = None  # schemas the tools were built from
        self._closed = False
        self._pid = os.getpid()
        _LIVE.add(self)

    # ------------------------------------------------------------------ description
    @property
    def target(self) -> str:
        """The server, for messages: ``stdio `<command line>` `` or the URL."""
        if self.command is not None:
            return "stdio `" + " ".join(_short_arg(c) for c in self.command) + "`"
        return str(self.url)

    @property
    def connected(self) -> bool:
        """Whether a session is open and usable now."""
        return self._session is not None and self._session.alive

    def __repr__(self) -> str:
        return f"MCPClient({self.target}, connected={self.connected}, connects={self.connects})"

    # ------------------------------------------------------------------ sync API
    def list_tools(self) -> list[Any]:
        """The server's tools (MCP ``Tool`` objects), connecting first if needed.

        Raises:
            MCPServerError: The server cannot be started or reached (the message names it and, for a stdio
                server, shows the end of its stderr).
        """
        try:
            session = self._run(self._ensure_session(), self.connect_timeout_s + 15.0)
        except concurrent.futures.TimeoutError:
            raise MCPServerError(
                f"Cannot connect to the MCP server {self.target}: no answer within {self.connect_timeout_s:g} s."
            ) from None
        return list(session.raw_tools)

    def tools(self, include: Sequence[str] | None = None, *, close_with_tools: bool = False) -> list[Tool]:
        """The server's tools as turngym `Tool` objects whose calls go through this client.

        Args:
            include: Names of the tools to take (in this order); default: all, in the server's order.
            close_with_tools: Give each tool function a ``close`` that closes this client, so that
                `ToolSet.close` (and ``env.close()``) closes it; for a client owned by one ToolSet.

        Raises:
            MCPServerError: The server cannot be reached, a tool in ``include`` is not offered, or a tool's
                input schema is not a JSON-schema object.
        """
        listed = {t.name: t for t in self.list_tools()}
        names = list(include) if include is not None else list(listed)
        missing = [n for n in names if n not in listed]
        if missing:
            raise MCPServerError(
                f"MCP server {self.target} offers no tool named {missing}; it offers {sorted(listed)}."
            )
        out = []
        for name in names:
            t = listed[name]
            schema = clean_schema(dict(t.input_schema or {}))
            if schema.get("type") != "object":
                raise MCPServerError(
                    f"MCP tool {name!r} of {self.target} has an input schema that is not a JSON-schema object "
                    f"({json.dumps(t.input_schema)[:200]}); leave it out with include=[...]."
                )
            if self._listed is None:
                self._listed = {}
            self._listed.setdefault(name, schema)
            fn = self._tool_fn(name)
            if close_with_tools:
                fn.close = self.close  # type: ignore[attr-defined]  # ToolSet.close calls it
            try:
                out.append(Tool(name=name, description=t.description or "", parameters=schema, fn=fn, is_async=True))
            except ToolError as e:
                raise MCPServerError(f"MCP tool {name!r} of {self.target} cannot be used: {e}") from e
        return out

    def call(self, name: str, arguments: dict[str, Any] | None = None, timeout_s: float = 60.0) -> ToolResult:
        """Call a tool synchronously (no ToolSet: no argument check, no truncation). Never raises.

        A call still running after ``timeout_s`` is cancelled and comes back as ``ok=False``.
        """
        try:
            return self._run(self._call(name, dict(arguments or {})), timeout_s)
        except concurrent.futures.TimeoutError:
            return ToolResult(name=name, ok=False, error=f"tool {name!r} timed out after {timeout_s:g} s",
                              meta={"timeout": True})
        except MCPServerError as e:
            return _fail(name, "closed", str(e))

    async def acall(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Call a tool from any event loop (the call runs on the client's loop). Never raises; cancellable."""
        try:
            fut = self._submit(self._call(name, dict(arguments)))
        except MCPServerError as e:
            return _fail(name, "closed", str(e))
        return await asyncio.wrap_future(fut)

    def close(self) -> None:
        """End the session (a stdio server process is stopped) and the client's loop thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            lt, self._loop_thread = self._loop_thread, None
        if lt is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._aclose(), lt.loop).result(timeout=15.0)
        except Exception:  # noqa: BLE001, S110 - closing is best effort; the loop stops below either way
            pass
        lt.stop()

    def __enter__(self) -> MCPClient:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ loop plumbing
    def _submit(self, coro: Any) -> Any:
        with self._lock:
            if self._closed:
                coro.close()
                raise MCPServerError(f"the MCP client of {self.target} is closed")
            if self._pid != os.getpid():  # a forked child: the parent's loop thread and session are not ours
                self._pid = os.getpid()
                self._loop_thread, self._session, self._connecting, self._calls = None, None, None, None
            if self._loop_thread is None:
                self._loop_thread = _LoopThread()
            lt = self._loop_thread
        return lt.submit(coro)

    def _run(self, coro: Any, timeout_s: float) -> Any:
        fut = self._submit(coro)
        try:
            return fut.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    def _tool_fn(self, name: str) -> Any:
        client = self

        async def call_mcp_tool(**arguments: Any) -> ToolResult:
            return await client.acall(name, arguments)

        call_mcp_tool.__name__ = name
        call_mcp_tool.mcp_client = client  # type: ignore[attr-defined]  # e.g. ts.get(name).fn.mcp_client.connects
        return call_mcp_tool

    # ------------------------------------------------------------------ session management (client loop)
    async def _ensure_session(self) -> _Session:
        """The open session, or a new one. A connection attempt runs as its own task: a caller that gives up
        (its call timed out) does not cancel it, and concurrent callers wait for the same attempt."""
        s = self._session
        if s is not None and s.alive:
            return s
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting.add_done_callback(_consume_exception)
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Session:
        if self._session is not None:
            old, self._session = self._session, None
            await self._teardown(old)
        session = _Session()
        session.owner = asyncio.get_running_loop().create_task(self._own(session))
        try:
            await asyncio.wait_for(asyncio.shield(session.ready), self.connect_timeout_s)
        except BaseException as e:
            await self._teardown(session, close_log=False)  # the process has exited: its stderr is complete
            msg = self._connect_message(session, e)
            _close_quietly(session.errlog)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise MCPServerError(msg) from None
        self._session = session
        self.connects += 1
        return session

    async def _own(self, session: _Session) -> None:
        """Enter the SDK client, list the tools, and hold the session open until asked to stop (or it breaks)."""
        from mcp import Client

        try:
            async with Client(self._transport(session), cache=None) as client:
                raw: list[Any] = []
                cursor = None
                for _ in range(_MAX_LIST_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    raw.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                session.raw_tools = raw
                session.tools = {t.name: clean_schema(dict(t.input_schema or {})) for t in raw}
                session.client = client
                if not session.ready.done():
                    session.ready.set_result(None)
                await session.stop.wait()
        except BaseException as e:  # reported through `ready`, or as connection_lost by the calls
            if not session.ready.done():
                session.ready.set_exception(e if isinstance(e, Exception) else RuntimeError(repr(e)))
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            session.client = None
            session.broken = True

    def _transport(self, session: _Session) -> Any:
        if self.url is not None:
            return self.url
        from mcp.client.stdio import StdioServerParameters, stdio_client

        assert self.command is not None
        params = StdioServerParameters(command=self.command[0], args=self.command[1:], env=self.env, cwd=self.cwd)
        session.errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        return stdio_client(params, errlog=session.errlog)

    async def _teardown(self, session: _Session, close_log: bool = True) -> None:
        session.stop.set()
        owner = session.owner
        if owner is not None and not owner.done():
            done, _ = await asyncio.wait({owner}, timeout=10.0)
            if not done:
                owner.cancel()
                await asyncio.wait({owner}, timeout=5.0)
        if close_log:
            _close_quietly(session.errlog)

    async def _aclose(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            await asyncio.wait({self._connecting}, timeout=15.0)
        if self._session is not None:
            session, self._session = self._session, None
            await self._teardown(session)

    def _connect_message(self, session: _Session, e: BaseException) -> str:
        if isinstance(e, (asyncio.TimeoutError, concurrent.futures.TimeoutError)):
            why = f"no answer within {self.connect_timeout_s:g} s"
        else:
            why = _exc_text(e)
        if self.command is not None and not _command_exists(self.command[0]):
            why = f"command {self.command[0]!r} not found ({why})"
        msg = f"Cannot connect to the MCP server {self.target}: {why}."
        tail = _read_tail(session.errlog)
        if tail:
            msg += f" The server's stderr ends with:\n{tail}"
        if self.url is not None:
            msg += " Check that the server runs and serves streamable HTTP at this URL."
        return msg

    # ------------------------------------------------------------------ one call (client loop)
    async def _call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        if self._closed:
            return _fail(name, "closed", f"the MCP client of {self.target} is closed")
        if self._calls is None:
            self._calls = asyncio.Semaphore(self.max_concurrent_calls)
        async with self._calls:
            try:
                session = await self._ensure_session()
            except MCPServerError as e:
                return _fail(name, "connect_failed", f"the MCP server is unavailable: {e}")
            problem = self._schema_problem(session, name)
            if problem:
                return _fail(name, "schema_mismatch", problem)
            client = session.client
            if client is None:
                return _fail(name, "connection_lost", f"the MCP server {self.target} went away")
            task = asyncio.ensure_future(client.call_tool(name, arguments))
            owner = session.owner
            assert owner is not None
            try:
                done, _ = await asyncio.wait({task, owner}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not task.done():
                    task.cancel()
            if task not in done:
                session.broken = True
                why = _exc_text(owner.exception()) if not owner.cancelled() and owner.exception() else "session ended"
                return _fail(name, "connection_lost",
                             f"the MCP server {self.target} went away during the call ({why}); the next call "
                             "reconnects")
            try:
                result = task.result()
            except Exception as e:  # noqa: BLE001 - every failure becomes data
                return self._call_failure(session, name, e)
            try:
                return result_to_tool_result(name, result)
            except Exception as e:  # noqa: BLE001
                return _fail(name, "bad_result", f"malformed result from tool {name!r}: {_exc_text(e)}")

    def _schema_problem(self, session: _Session, name: str) -> str | None:
        if self._listed is None or name not in self._listed:
            return None
        now = session.tools.get(name)
        if now is None:
            return (f"the MCP server {self.target} no longer offers tool {name!r} (it offers "
                    f"{sorted(session.tools)}); the env was built with a different server")
        if now != self._listed[name]:
            return (f"the input schema of tool {name!r} changed on the MCP server {self.target} since the env was "
                    f"built: was {json.dumps(self._listed[name])[:300]}, now {json.dumps(now)[:300]}")
        return None

    def _call_failure(self, session: _Session, name: str, e: Exception) -> ToolResult:
        code = getattr(e, "code", None)
        if code is not None and type(e).__name__ == "MCPError":
            if code == _CONNECTION_CLOSED:
                session.broken = True
                return _fail(name, "connection_lost",
                             f"the MCP server {self.target} closed the connection during the call; the next call "
                             "reconnects")
            return _fail(name, "protocol_error",
                         f"the MCP server {self.target} answered with error {code}: {getattr(e, 'message', e)}")
        if _is_validation_error(e) or _is_output_schema_error(e):
            return _fail(name, "bad_result", f"invalid result from tool {name!r}: {_exc_text(e)}")
        if _is_transport_error(e):
            session.broken = True  # start afresh on the next call
            return _fail(name, "connection_lost",
                         f"the MCP server {self.target} cannot be reached ({_exc_text(e)}); the next call reconnects")
        return _fail(name, "client_error", f"the MCP client failed on tool {name!r}: {_exc_text(e)}")


def mcp_tools(
    *,
    command: Sequence[str] | None = None,
    url: str | None = None,
    client: MCPClient | None = None,
    include: Sequence[str] | None = None,
    **client_kwargs: Any,
) -> list[Tool]:
    """The tools of an MCP server, as turngym `Tool` objects.

    Give ``command`` (stdio) or ``url`` (HTTP): a new `MCPClient` (options in ``client_kwargs``) that the tools
    own: `ToolSet.close` closes it (each tool's ``fn.close``). Or give ``client``: a shared client, left open.

    Raises:
        ConfigError: Not exactly one of ``command``, ``url``, ``client``; client options given with ``client``.
        MCPServerError: The server cannot be reached, or a tool cannot be used.
        MissingExtraError: ``mcp`` is not installed.
    """
    if sum(x is not None for x in (command, url, client)) != 1:
        raise ConfigError("Give exactly one of command=[...] (stdio), url='http://...' or client=MCPClient(...).")
    if client is not None:
        if client_kwargs:
            raise ConfigError(f"{sorted(client_kwargs)} configure a new client; they cannot apply to client=.")
        if not isinstance(client, MCPClient):
            raise ConfigError(f"client must be an MCPClient, got {type(client).__name__}.")
        return client.tools(include)
    owned = MCPClient(command=command, url=url, **client_kwargs)
    try:
        return owned.tools(include, close_with_tools=True)
    except BaseException:
        owned.close()
        raise


# ---------------------------------------------------------------------- shared clients

_SHARED: dict[str, MCPClient] = {}
_SHARED_LOCK = threading.Lock()
_LIVE: weakref.WeakSet[MCPClient] = weakref.WeakSet()


def shared_client(
    *,
    command: Sequence[str] | None = None,
    url: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> MCPClient:
    """One `MCPClient` per server per process, shared by every ToolSet built with ``client=`` it.

    Many envs then use one server process (stdio) or one HTTP session, with up to ``max_concurrent_calls`` calls
    in flight; it is closed at interpreter exit (or by ``.close()``, after which the next `shared_client` call
    makes a new one). Keyword arguments as `MCPClient`; the first call's options win.
    """
    key = json.dumps([list(command) if command is not None else None, url, dict(env or {}),
                      os.fspath(cwd) if cwd is not None else None], sort_keys=True)
    with _SHARED_LOCK:
        c = _SHARED.get(key)
        if c is None or c._closed:
            c = MCPClient(command=command, url=url, env=env, cwd=cwd, **kwargs)
            _SHARED[key] = c
        return c


@atexit.register
def _close_all() -> None:
    for c in list(_LIVE):
        try:
            c.close()
        except Exception:  # noqa: BLE001, S110
            pass


# ---------------------------------------------------------------------- helpers


def _fail(name: str, reason: str, error: str) -> ToolResult:
    return ToolResult(name=name, ok=False, error=error, meta={"reason": reason})


def _exc_text(e: BaseException | None) -> str:
    """A one-line description of an exception, unwrapping exception groups to their first leaf."""
    while e is not None and isinstance(getattr(e, "exceptions", None), tuple) and e.exceptions:
        e = e.exceptions[0]
    if e is None:
        return "unknown error"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _is_validation_error(e: BaseException) -> bool:
    return any(c.__name__ == "ValidationError" for c in type(e).__mro__)


def _is_transport_error(e: BaseException) -> bool:
    """Closed or broken streams, socket and HTTP transport errors."""
    if isinstance(e, OSError) or type(e).__name__ in ("ClosedResourceError", "BrokenResourceError", "EndOfStream"):
        return True
    return any(c.__module__.split(".")[0].rstrip("0123456789") in ("httpx", "httpcore") for c in type(e).__mro__)


def _is_output_schema_error(e: BaseException) -> bool:
    """The SDK's check of structured content against the tool's output schema (a RuntimeError)."""
    msg = str(e)
    return isinstance(e, RuntimeError) and ("structured content" in msg or "output schema" in msg)


def _transport_closed(client: Any) -> bool:
    """Whether the SDK session's connection has ended (its dispatcher saw EOF). Best effort: False if unknown."""
    try:
        dispatcher = getattr(client.session, "_dispatcher", None)
    except Exception:  # noqa: BLE001 - the client left its context
        return True
    return getattr(dispatcher, "_closed", False) is True


def _consume_exception(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def _command_exists(cmd: str) -> bool:
    return shutil.which(cmd) is not None or os.path.exists(cmd)


def _short_arg(a: str) -> str:
    return a if " " not in a else repr(a)


def _close_quietly(f: Any) -> None:
    if f is not None:
        try:
            f.close()
        except OSError:
            pass


def _read_tail(errlog: Any) -> str:
    if errlog is None:
        return ""
    try:
        errlog.flush()
        errlog.seek(0)
        text = errlog.read()
    except (OSError, ValueError):
        return ""
    text = text.strip()
    return text[-_STDERR_TAIL_CHARS:]
