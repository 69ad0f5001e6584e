"""Tools for agents: ``@tool`` functions, the `ToolSet` executor, tool-call parsers, built-ins and sandboxes.

>>> from turngym.tools import tool, ToolSet, get_parser
>>> from turngym.tools.calculator import calculator   # the calculator Tool (its module has the same name)

Sandboxes live in `turngym.tools.sandbox` (``make_sandbox("auto")``) and the search tool in
`turngym.tools.search`; both import lazily so ``import turngym.tools`` stays light. Tools of MCP servers:
``ToolSet.from_mcp(command=[...])`` / ``ToolSet.from_mcp(url=...)`` (`turngym.tools.mcp`, needs ``turngym[mcp]``).
"""

from __future__ import annotations

from turngym.tools.base import Tool, describe_parameters, tool, validate_arguments
from turngym.tools.parsers import (
    PARSERS,
    HermesParser,
    ParsedAction,
    Parser,
    TagsParser,
    get_parser,
    loads_lenient,
)
from turngym.tools.toolset import ToolSet
from turngym.types import ToolCall, ToolResult

__all__ = [
    "PARSERS",
    "HermesParser",
    "MCPClient",
    "MCPServerError",
    "ParsedAction",
    "Parser",
    "TagsParser",
    "Tool",
    "ToolCall",
    "ToolResult",
    "ToolSet",
    "describe_parameters",
    "get_parser",
    "loads_lenient",
    "make_python_tool",
    "mcp_tools",
    "shared_client",
    "tool",
    "validate_arguments",
]


_MCP_NAMES = ("MCPClient", "MCPServerError", "mcp_tools", "shared_client")


def __getattr__(name: str):
    # Lazy: importing the python tool pulls in the sandbox package.
    if name == "make_python_tool":
        from turngym.tools.python import make_python_tool

        return make_python_tool
    if name in _MCP_NAMES:  # the module imports the mcp package only when a client connects
        from turngym.tools import mcp

        return getattr(mcp, name)
    raise AttributeError(f"module 'turngym.tools' has no attribute {name!r}")
