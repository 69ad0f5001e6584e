"""Credit assignment: pure tensor functions that turn outcomes and per-turn signals into advantages.

Methods live in the `CREDIT` registry (``turngym.credit.base``); import this package to fill it::

    from turngym.credit import GroupBatch, assign_credit
    batch = GroupBatch.from_trajectories(trajs)
    out = assign_credit("a2tgpo", batch, alpha=0.3)

Signal providers that need a model or a service (gold-answer probe, SIOP support, tool matching, judges)
are in `turngym.credit.signals`; they receive callables and import no model code. A method declares the providers
and token features it needs (``register_credit(..., signals=..., token_features=...)``, `credit_needs`); the
trainer builds exactly those (`turngym.credit.signals.build_providers`). KL estimators: `turngym.credit.kl`.
"""

from __future__ import annotations

import importlib
import importlib.util

from turngym.credit.base import (
    CREDIT,
    REFINERS,
    CreditNeeds,
    CreditOutput,
    GroupBatch,
    assign_credit,
    credit_needs,
    make_config,
    refine,
    register_credit,
    register_refiner,
    turn_rewards_to_token_rewards,
)
from turngym.credit.groups import broadcast, group_norm, reverse_discounted_cumsum

_METHOD_MODULES = ["outcome", "igpo", "matchtir", "siop", "slate", "gigpo", "gae", "tempo", "pure", "delta", "team",
                   "oprl", "r3l", "capo", "calm", "lare"]
for _m in _METHOD_MODULES:
    if importlib.util.find_spec(f"turngym.credit.{_m}") is not None:
        importlib.import_module(f"turngym.credit.{_m}")

__all__ = [
    "CREDIT",
    "REFINERS",
    "CreditNeeds",
    "CreditOutput",
    "GroupBatch",
    "assign_credit",
    "broadcast",
    "credit_needs",
    "group_norm",
    "make_config",
    "refine",
    "register_credit",
    "register_refiner",
    "reverse_discounted_cumsum",
    "turn_rewards_to_token_rewards",
]
