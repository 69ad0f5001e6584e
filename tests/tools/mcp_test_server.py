"""A real MCP server for the MCP adapter tests, written with the SDK's server (``MCPServer``, FastMCP in mcp 1.x).

    python mcp_test_server.py                  # stdio
    python mcp_test_server.py http PORT        # streamable HTTP at http://127.0.0.1:PORT/mcp

Tools: ``echo`` (text), ``add`` (typed arguments), ``slow`` (sleeps), ``fail`` (raises), ``stats`` (structured
content with an output schema), ``structured_only`` (structured content, no text), ``picture`` (an image block and
a caption), ``liar`` (declares an output schema, returns content that breaks it), ``big`` (long output), ``pid``
(the server's process id), ``crash`` (the process exits mid-call). With ``TURNGYM_MCP_TEST_VARIANT=changed`` in its
environment, ``echo`` takes ``message`` instead of ``text`` (a server whose schema changed).
"""

# (no `from __future__ import annotations`: the SDK reads the tools' annotations)
import asyncio
import os
import sys
from typing import Annotated, TypedDict

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent
from pydantic import Field

server = MCPServer("turngym-mcp-test", log_level="CRITICAL")


class Stats(TypedDict):
    n: int
    mean: float


if os.environ.get("TURNGYM_MCP_TEST_VARIANT") == "changed":

    @server.tool()
    def echo(message: str) -> str:
        """Return the message."""
        return message

else:

    @server.tool()
    def echo(text: Annotated[str, Field(description="The text to send back.")]) -> str:
        """Return the text unchanged."""
        return text


@server.tool()
def add(a: Annotated[int, Field(description="First term.")], b: Annotated[int, Field(description="Second term.")]) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then say how long."""
    await asyncio.sleep(seconds)
    return f"slept {seconds:g} s"


@server.tool()
def fail(reason: str) -> str:
    """Always fail with the given reason."""
    raise ToolError(f"cannot do it: {reason}")


@server.tool()
def stats(xs: list[float]) -> Stats:
    """Count and mean of numbers."""
    if not xs:
        raise ToolError("xs is empty")
    return {"n": len(xs), "mean": sum(xs) / len(xs)}


@server.tool()
def structured_only() -> CallToolResult:
    """Structured content without a text block."""
    return CallToolResult(content=[], structured_content={"answer": 42, "unit": "m"})


@server.tool()
def picture() -> CallToolResult:
    """An image and its caption."""
    return CallToolResult(
        content=[ImageContent(type="image", data="iVBORw0KGgo=", mime_type="image/png"),
                 TextContent(type="text", text="a tiny png")]
    )


@server.tool()
def liar() -> CallToolResult:
    """Declares an output schema (below) and returns structured content that breaks it."""
    return CallToolResult(content=[TextContent(type="text", text="n is not a number")], structured_content={"n": "x"})


# A server bug on purpose: the schema published for `liar` is not the one its result follows.
server._tool_manager.get_tool("liar").fn_metadata.output_schema = {
    "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
}


@server.tool()
def big(n: int) -> str:
    """A string of n characters."""
    return "x" * n


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
def crash() -> str:
    """Exit the server process in the middle of the call."""
    os._exit(3)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
