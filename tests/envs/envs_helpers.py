"""A tiny tool-free env used by the env-API tests (imported as `envs_helpers`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from turngym.envs.core import Env, Task
from turngym.types import ToolCall

WORDS = ["lomira", "varton", "zentrix", "qualex", "nimbus", "orbit"]


class EchoEnv(Env):
    """Say the secret word shown in the task. Tool-free; hermes parser."""

    parser_name = "hermes"

    def _sample_task(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Task:
        w = WORDS[int(rng.integers(0, len(WORDS)))]
        return Task(prompt=f"Reply with the word {w}.", gold_answer=w)

    def _expert_next(self) -> ToolCall | str:
        assert self.task is not None
        return self.task.gold_answer
