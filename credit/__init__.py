"""Credit assignment: pure tensor functions that turn outcomes and per-turn signals into advantages.

Methods live in the `CREDIT` registry (``turngym.credit.base``); import this package to fill it::

    from turngym.credit import GroupBatch, assign_credit
    batch = GroupBatch.from_trajectories(trajs)
    out = assign_credit("a2tgpo", batch, alpha=0.3)

Signal providers that need a model or a service (gold-answer probe, SIOP support, tool matching, judges)
are in `turngym.credit.signals`; they receive callables and import no model code.
"""

from __future__ import annotations

import importlib
import importlib.util

from turngym.credit.base import (
    CREDIT,
    CreditOutput,
    GroupBatch,
    assign_credit,
    make_config,
    register_credit,
    turn_rewards_to_token_rewards,
)
from turngym.credit.groups import broadcast, group_norm, reverse_discounted_cumsum

_METHOD_MODULES = ["outcome", "igpo", "matchtir", "siop", "slate", "gigpo", "token", "team"]
for _m in _METHOD_MODULES:
    if importlib.util.find_spec(f"turngym.credit.{_m}") is not None:
        importlib.import_module(f"turngym.credit.{_m}")

__all__ = [
    "CREDIT",
    "CreditOutput",
    "GroupBatch",
    "assign_credit",
    "broadcast",
    "group_norm",
    "make_config",
    "register_credit",
    "reverse_discounted_cumsum",
    "turn_rewards_to_token_rewards",
]
