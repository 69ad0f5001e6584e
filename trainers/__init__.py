"""Trainers: GRPO, PPO and the multi-agent trainer share one loop (`loop`); each plugs in as a `loop.Algorithm`
(`grpo.GRPO`, `ppo.PPO`, `multi.Multi`).

`TRAINERS` maps ``cfg.algo`` to its trainer's ``"module:function"``, imported only when a run starts (so a bad
config fails before torch loads); an unknown algo lists the known ones.
"""

from turngym.registry import Registry

TRAINERS: Registry[str] = Registry("algo")
TRAINERS.add("grpo", "turngym.trainers.grpo:train")
TRAINERS.add("ppo", "turngym.trainers.ppo:train")
TRAINERS.add("multi", "turngym.trainers.multi:train")
