"""HopQA with its search tool served over MCP by `examples/mcp_search_server.py`: train on it like on HopQA.

    turngym check examples/mcp_hopqa_env.py:MCPHopQAEnv
    turngym train env_id=examples/mcp_hopqa_env.py:MCPHopQAEnv env_kwargs.topk=1 steps=20

By default every env of the process shares one MCP client and so one server process (`shared_client`: many
concurrent calls on one session); ``shared=False`` gives each env its own session and server process, closed with
the env. ``url=`` uses a server already running over streamable HTTP instead of starting one (its world options
must match the env's).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from turngym.envs import spec
from turngym.envs.builtin.hopqa import HopQAEnv
from turngym.tools import ToolSet

SERVER = str(Path(__file__).resolve().parent / "mcp_search_server.py")


class MCPHopQAEnv(HopQAEnv):
    """``search/HopQA-v0`` whose ``search`` calls go to an MCP server.

    Args:
        url: A running server's streamable-HTTP URL; default: start ``mcp_search_server.py`` over stdio.
        shared: Share one client (one server process) among the process's envs.
        world_seed: Seed of the generated world (passed to the server too).
        corpus_size: Number of entity documents (passed to the server too).
        distractors: Number of distractor documents (passed to the server too).
        topk: Documents returned per search (passed to the server too).
        tool_timeout_s: Per-call timeout of the search tool (covers a server restart after a crash).
        max_turns: Turn limit; default: the one ``search/HopQA-v0`` is registered with (6).
        **kwargs: Passed to `HopQAEnv` (``hops``, ``parser``, ...).
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        shared: bool = True,
        world_seed: int = 0,
        corpus_size: int = 120,
        distractors: int = 20,
        topk: int = 3,
        tool_timeout_s: float = 30.0,
        max_turns: int | None = spec("search/HopQA-v0").max_turns,
        **kwargs: Any,
    ):
        world = {"world_seed": world_seed, "corpus_size": corpus_size, "distractors": distractors, "topk": topk}
        if url is not None:
            server: dict[str, Any] = {"url": url}
        else:
            args = [f"--{k.replace('_', '-')}={v}" for k, v in world.items()]
            server = {"command": [sys.executable, SERVER, *args]}
        if shared:
            from turngym.tools.mcp import shared_client

            tools = ToolSet.from_mcp(client=shared_client(**server), include=["search"], timeout_s=tool_timeout_s)
        else:
            tools = ToolSet.from_mcp(**server, include=["search"], timeout_s=tool_timeout_s)
        super().__init__(tools=tools, max_turns=max_turns, **world, **kwargs)
