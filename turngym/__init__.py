"""turngym: reinforcement learning for multi-turn LLM agents.

Gymnasium-style tool-use environments produce multi-turn trajectories; credit-assignment modules
turn sparse outcomes into per-turn and per-token advantages; PPO/GRPO trainers consume them.

The common entry points are re-exported lazily so that ``import turngym`` stays cheap::

    import turngym
    env = turngym.make("search/HopQA-v0")
    obs, info = env.reset(seed=0)
    summary = turngym.train("default", env=MyEnv, steps=20)   # docs/custom_env.md
"""

from __future__ import annotations

from typing import Any

from turngym.types import Message, ToolCall, ToolResult, Trajectory, Turn, read_jsonl, write_jsonl

__version__ = "0.1.0"

_LAZY = {
    "make": ("turngym.envs.registration", "make"),
    "register": ("turngym.envs.registration", "register"),
    "list_envs": ("turngym.envs.registration", "list_envs"),
    "check_env": ("turngym.envs.checker", "check_env"),
    "Env": ("turngym.envs.core", "Env"),
    "tool": ("turngym.tools.base", "tool"),
    "ToolSet": ("turngym.tools.toolset", "ToolSet"),
    "train": ("turngym.api", "train"),
}

__all__ = [
    # the core types and every lazy name of _LAZY (tests/core/test_package_api.py checks)
    "Env", "Message", "ToolCall", "ToolResult", "ToolSet", "Trajectory", "Turn",
    "check_env", "list_envs", "make", "read_jsonl", "register", "tool", "train", "write_jsonl",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'turngym' has no attribute {name!r}")
