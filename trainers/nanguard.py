"""Skip training steps whose loss or advantages are NaN/inf; stop after too many in a row.

A single non-finite step (an overflow, a degenerate group) is skipped: no optimizer update, counted in
the metrics (``nonfinite/skipped``, ``nonfinite/consecutive``, ``nonfinite/total``) and reported with
the names of the offending values. ``max_consecutive`` such steps in a row mean the run has diverged:
:class:`NonFiniteError` stops it with a message that says what was non-finite and what to try.

Usage in a trainer::

    guard = NanGuard(max_consecutive=cfg.max_nonfinite_steps)
    ...
    if not guard.check(step, advantages=credit.advantages, loss=loss):
        optimizer.zero_grad(set_to_none=True)
        continue                      # skipped, counted; raises on the third in a row
    loss.backward(); ...
    guard.step_ok()                   # or let the next check() reset the streak
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from turngym.errors import TurngymError

__all__ = ["NanGuard", "NonFiniteError", "nonfinite_names"]


class NonFiniteError(TurngymError, FloatingPointError):
    """Too many consecutive training steps had NaN/inf values; the run was stopped."""


def _finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        if value.numel() == 0:
            return True
        if not (value.is_floating_point() or value.is_complex()):
            return True
        return bool(torch.isfinite(value.detach()).all().item())
    if isinstance(value, (float, int)):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    try:
        import numpy as np

        if isinstance(value, np.ndarray | np.generic):
            return bool(np.isfinite(value).all()) if value.dtype.kind in "fc" else True
    except ImportError:  # pragma: no cover
        pass
    if value is None:
        return True
    raise TypeError(f"NanGuard cannot check a value of type {type(value).__name__}")


def nonfinite_names(**values: Any) -> list[str]:
    """Names of the given values (tensors, numbers, nested dicts/lists) that hold a NaN or inf."""
    return [name for name, v in values.items() if not _finite(v)]


@dataclass
class NanGuard:
    """Counts non-finite steps and stops the run after ``max_consecutive`` of them in a row.

    Attributes:
        max_consecutive: Consecutive bad steps that stop the run (>= 1).
        total: Bad steps over the whole run.
        consecutive: Current streak of bad steps.
        history: ``(step, names)`` of the most recent bad steps (for the report and the error message).
    """

    max_consecutive: int = 3
    total: int = 0
    consecutive: int = 0
    history: list[tuple[int, list[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_consecutive < 1:
            raise ValueError(f"max_consecutive={self.max_consecutive} must be >= 1")

    def check(self, step: int, **values: Any) -> bool:
        """True when every value is finite; else record a skipped step and return False.

        A finite check ends the current streak. Calling it again for the same step after a bad result
        (e.g. loss after advantages) does not count the step twice.

        Raises:
            NonFiniteError: This bad step makes ``max_consecutive`` in a row.
        """
        bad = nonfinite_names(**values)
        if not bad:
            if not (self.history and self.history[-1][0] == step):
                self.consecutive = 0
            return True
        if self.history and self.history[-1][0] == step:  # same step seen bad already
            self.history[-1][1].extend(n for n in bad if n not in self.history[-1][1])
            return False
        self.total += 1
        self.consecutive += 1
        self.history.append((step, bad))
        del self.history[:-20]
        if self.consecutive >= self.max_consecutive:
            recent = self.history[-self.consecutive :]
            detail = "; ".join(f"step {s}: {', '.join(names)}" for s, names in recent)
            raise NonFiniteError(
                f"{self.consecutive} consecutive training steps had NaN/inf values ({detail}); the run was stopped "
                f"({self.total} non-finite steps in total). The policy has probably diverged. Try a lower lr, "
                "max_grad_norm=1.0, dtype=float32, or check the reward function; resume from the last checkpoint "
                "with `turngym train --resume RUN_DIR lr=...`."
            )
        return False

    def step_ok(self) -> None:
        """Mark the current step as good (ends the streak)."""
        self.consecutive = 0

    def metrics(self, step: int | None = None) -> dict[str, float]:
        """``nonfinite/*`` metrics for the run log; ``nonfinite/skipped`` is 1 when ``step`` was skipped."""
        out = {} if step is None else {"nonfinite/skipped": float(bool(self.history) and self.history[-1][0] == step)}
        return out | {
            "nonfinite/total": float(self.total),
            "nonfinite/consecutive": float(self.consecutive),
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able counters for checkpoints."""
        return {"total": self.total, "consecutive": self.consecutive, "history": [[s, n] for s, n in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore counters saved by :meth:`state_dict`."""
        self.total = int(state.get("total", 0))
        self.consecutive = int(state.get("consecutive", 0))
        self.history = [(int(s), list(n)) for s, n in state.get("history", [])]
