"""Environments: the `Env` base, spaces, `register` / `make`, wrappers, `check_env` and the built-in envs."""

from __future__ import annotations

from turngym.envs.core import Env, Score, Task, exact_match, normalize_answer, token_f1
from turngym.envs.registration import EnvSpec, list_envs, make, register, registry, spec
from turngym.envs.spaces import ChatSpace, TextSpace
from turngym.envs.wrappers import EnvWrapper, MaxTurns, RewardShaping, ToolUse


def check_env(env, **kwargs):
    from turngym.envs.checker import check_env as _check_env

    return _check_env(env, **kwargs)


__all__ = [
    "ChatSpace",
    "Env",
    "EnvSpec",
    "EnvWrapper",
    "MaxTurns",
    "RewardShaping",
    "Score",
    "Task",
    "TextSpace",
    "ToolUse",
    "check_env",
    "exact_match",
    "list_envs",
    "make",
    "normalize_answer",
    "register",
    "registry",
    "spec",
    "token_f1",
]
