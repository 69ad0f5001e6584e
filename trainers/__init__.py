"""Trainers: GRPO and PPO share one loop (`loop`), the multi-agent trainer has its own (`multi`).

`TRAINERS` maps ``cfg.algo`` to its trainer's ``"module:function"``, imported only when a run starts (so a bad
config fails before torch loads); an unknown algo lists the known ones.
"""

from turngym.registry import Registry

TRAINERS: Registry[str] = Registry("algo")
TRAINERS.add("grpo", "turngym.trainers.grpo:train")
TRAINERS.add("ppo", "turngym.trainers.ppo:train")
TRAINERS.add("multi", "turngym.trainers.multi:train")
