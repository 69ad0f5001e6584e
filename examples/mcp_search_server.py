"""An MCP server with HopQA's ``search`` tool: BM25 over the documents of a generated HopQA world.

The tool has the name, schema and output of the built-in one (`turngym.envs.builtin.hopqa`), so ``search/HopQA-v0``
works unchanged with its search coming from this server (`examples/mcp_hopqa_env.py`). Written with the MCP SDK's
server (``mcp.server.mcpserver.MCPServer``, FastMCP in mcp 1.x); needs ``pip install 'turngym[mcp]'``.

Run it over stdio (a client starts it as a subprocess) or streamable HTTP:

    python examples/mcp_search_server.py                                   # stdio
    python examples/mcp_search_server.py --transport http --port 8765      # http://127.0.0.1:8765/mcp

and use it from turngym:

    ToolSet.from_mcp(command=[sys.executable, "examples/mcp_search_server.py", "--topk", "1"])
    ToolSet.from_mcp(url="http://127.0.0.1:8765/mcp")

``--world-seed``, ``--corpus-size``, ``--distractors`` and ``--topk`` must match the env's (HopQA's defaults: 0,
120, 20, 3). Each result carries the documents as text (what the model reads) and their ids and BM25 scores as
structured content (``ToolResult.meta["structured"]``).
"""

# (no `from __future__ import annotations`: the SDK reads the tool's annotations, which name local imports)
import argparse
from typing import Annotated, Any

SERVER_NAME = "turngym-hopqa-search"
QUERY_DESCRIPTION = 'What to look up, e.g. "founder of Zentrix".'


def build_server(
    world_seed: int = 0, corpus_size: int = 120, distractors: int = 20, topk: int = 3, log_level: str = "WARNING"
) -> Any:
    """The MCP server (an ``MCPServer``) serving ``search`` over the world ``(world_seed, corpus_size, distractors)``.

    Args:
        world_seed: Seed of the generated HopQA world.
        corpus_size: Number of entity documents.
        distractors: Number of distractor documents.
        topk: Documents returned per search.
        log_level: The server's log level (its logs go to stderr).
    """
    from mcp.server.mcpserver import MCPServer
    from mcp.types import CallToolResult, TextContent
    from pydantic import Field

    from turngym.envs.builtin.hopqa import SEARCH_TOOL_DESCRIPTION, format_hits
    from turngym.envs.builtin.world import generate_world
    from turngym.tools.search import BM25Index
    from turngym.tools.search.tool import MAX_QUERY_CHARS

    if topk < 1:
        raise SystemExit(f"--topk must be >= 1, got {topk}")
    world = generate_world(world_seed, corpus_size=corpus_size, distractors=distractors)
    index = BM25Index.build(world.docs, cache=False)
    server = MCPServer(SERVER_NAME, log_level=log_level)

    def error(text: str) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)

    @server.tool(description=SEARCH_TOOL_DESCRIPTION)
    def search(query: Annotated[str, Field(description=QUERY_DESCRIPTION)]) -> CallToolResult:
        if not query.strip():
            return error("empty query: write what to look up, e.g. <search>capital of France</search>.")
        if len(query) > MAX_QUERY_CHARS:
            return error(f"query too long ({len(query)} characters); keep it under {MAX_QUERY_CHARS}.")
        hits = index.search([query], topk)[0]
        return CallToolResult(
            content=[TextContent(type="text", text=format_hits(hits))],
            structured_content={"doc_ids": [h.id for h in hits], "scores": [h.score for h in hits]},
        )

    return server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="MCP server with HopQA's search tool.")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP: address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8765, help="HTTP: port (the endpoint is /mcp)")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--corpus-size", type=int, default=120)
    p.add_argument("--distractors", type=int, default=20)
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    a = p.parse_args(argv)
    server = build_server(a.world_seed, a.corpus_size, a.distractors, a.topk, a.log_level)
    if a.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=a.host, port=a.port)


if __name__ == "__main__":
    main()
