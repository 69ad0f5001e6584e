"""Built-in environments, registered on import (entry points are lazy: nothing heavy is imported here).

| id | env | tools |
| --- | --- | --- |
| ``search/HopQA-v0`` | `turngym.envs.builtin.hopqa.HopQAEnv` | search (local BM25 over a generated world) |
| ``tool/Calc-v0`` | `turngym.envs.builtin.calc.CalcEnv` | calculator |
| ``code/PyTask-v0`` | `turngym.envs.builtin.pytask.PyTaskEnv` | python (sandboxed) |
| ``search/SearchR1-v0`` | `turngym.envs.builtin.searchr1.SearchR1Env` | search (BM25 or remote retriever) |
| ``text/TextWorld-v0``, ``text/TextWorld-Long-v0`` | `turngym.envs.builtin.textworld.TextWorldEnv` | game commands (needs ``turngym[textworld]``) |
| ``tool/ReasoningGym-v0`` | `turngym.envs.builtin.reasoning_gym.ReasoningGymEnv` | optional calculator / python (needs ``turngym[reasoning-gym]``) |
| ``openenv/OpenEnv-v0`` | `turngym.envs.builtin.openenv.OpenEnvEnv` | the OpenEnv env's actions (needs ``turngym[openenv]``) |
"""

from __future__ import annotations

import importlib.util

from turngym.envs.registration import register, registry

_BUILTINS = [
    ("search/HopQA-v0", "turngym.envs.builtin.hopqa:HopQAEnv", 6),
    ("tool/Calc-v0", "turngym.envs.builtin.calc:CalcEnv", 8),
    ("code/PyTask-v0", "turngym.envs.builtin.pytask:PyTaskEnv", 4),
    ("search/SearchR1-v0", "turngym.envs.builtin.searchr1:SearchR1Env", 6),
    # adapters (each imports its package only when an env is made; without it, make raises MissingExtraError)
    ("tool/ReasoningGym-v0", "turngym.envs.builtin.reasoning_gym:ReasoningGymEnv", 4),
    ("openenv/OpenEnv-v0", "turngym.envs.builtin.openenv:OpenEnvEnv", 16),
]

for _id, _entry, _max_turns in _BUILTINS:
    # Register only envs whose module exists (modules are written by different people in parallel).
    if _id not in registry and importlib.util.find_spec(_entry.split(":")[0]) is not None:
        register(_id, _entry, max_turns=_max_turns)

# TextWorld presets (the module imports textworld only when an env is made; without it, make raises MissingExtraError)
_TEXTWORLD = [
    ("text/TextWorld-v0", 12, {"challenge": "tw-coin_collector", "level": 5}),  # walkthrough 5
    ("text/TextWorld-Long-v0", 36, {"challenge": "tw-coin_collector", "level": 112}),  # walkthrough 12, 24 rooms
]
for _id, _max_turns, _kwargs in _TEXTWORLD:
    if _id not in registry and importlib.util.find_spec("turngym.envs.builtin.textworld") is not None:
        register(_id, "turngym.envs.builtin.textworld:TextWorldEnv", max_turns=_max_turns, kwargs=_kwargs)
