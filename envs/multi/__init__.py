"""Multi-agent text environments (PettingZoo AEC and Parallel APIs), registered under ``multi/``.

>>> import turngym
>>> env = turngym.make("multi/Negotiate-v0")                    # a pettingzoo.AECEnv
>>> par = turngym.make("multi/Negotiate-v0", api="parallel")    # the same game through the Parallel API
>>> bids = turngym.make("multi/SealedBid-v0")                   # a pettingzoo.ParallelEnv

Registered ids:

| id | API | agents | kind |
| --- | --- | --- | --- |
| ``multi/SearchTeam-v0`` | AEC | ``searcher_0`` (search tool), ``answerer_0`` (no tools) | cooperative, team reward |
| ``multi/Negotiate-v0`` | AEC | ``player_0``, ``player_1`` | competitive, private values |
| ``multi/SealedBid-v0`` | Parallel | ``bidder_0``, ``bidder_1`` | competitive, simultaneous bids |
| ``multi/TextArena-v0`` | AEC | ``player_0``, ``player_1`` (``game=`` any offline TextArena game) | competitive |

Every id takes ``api="aec"`` or ``api="parallel"``; the other view comes from PettingZoo's converters
(``parallel_to_aec`` for simultaneous games, ``turn_based_aec_to_parallel`` for turn-based ones). See
``docs/multi_agent.md`` for what a rollout reads from these envs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pettingzoo import AECEnv, ParallelEnv
from pettingzoo.utils.conversions import parallel_to_aec, turn_based_aec_to_parallel

from turngym.envs.multi.core import (
    END_INFO_KEYS,
    STEP_INFO_KEYS,
    Action,
    ChatObs,
    TextAECEnv,
    TextParallelEnv,
)
from turngym.envs.registration import register, registry
from turngym.errors import ConfigError
from turngym.registry import unknown_name_message

__all__ = [
    "END_INFO_KEYS",
    "MULTI_ENV_IDS",
    "STEP_INFO_KEYS",
    "Action",
    "ChatObs",
    "TextAECEnv",
    "TextParallelEnv",
    "to_api",
]


def _as_aec(env: Any) -> AECEnv:
    return env if isinstance(env, AECEnv) else parallel_to_aec(env)


def _as_parallel(env: Any) -> ParallelEnv:
    return env if isinstance(env, ParallelEnv) else turn_based_aec_to_parallel(env)


_APIS: dict[str, Callable[[Any], Any]] = {"aec": _as_aec, "parallel": _as_parallel}


def to_api(env: Any, api: str) -> Any:
    """View a PettingZoo env through the ``"aec"`` or ``"parallel"`` API (PettingZoo's converters).

    Raises:
        ConfigError: for another ``api`` name.
    """
    if api not in _APIS:
        raise ConfigError(
            unknown_name_message("multi-agent API", api, _APIS) + " Pass api='aec' or api='parallel'."
        )
    return _APIS[api](env)


MULTI_ENV_IDS = ("multi/SearchTeam-v0", "multi/Negotiate-v0", "multi/SealedBid-v0", "multi/TextArena-v0")
"""The multi-agent ids turngym registers."""

for _id, _entry in zip(
    MULTI_ENV_IDS,
    (
        "turngym.envs.multi.searchteam:make_env",
        "turngym.envs.multi.negotiate:make_env",
        "turngym.envs.multi.sealedbid:make_env",
        "turngym.envs.multi.textarena:make_env",  # imports textarena only when made (turngym[textarena])
    ),
):
    if _id not in registry:
        register(_id, _entry)
