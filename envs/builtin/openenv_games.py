"""A small environment written with openenv-core, served by `turngym.envs.builtin.openenv.OpenEnvEnv` by default.

`GuessNumberEnvironment` is an OpenEnv ``Environment`` (typed ``Action`` / ``Observation`` / ``State`` pydantic
models, ``reset`` / ``step`` / ``state``), the way any OpenEnv environment is written; nothing in it knows about
turngym. The game: the server picks a whole number in ``low..high`` from the reset seed; each `GuessAction` gets
the answer "too low" / "too high" / "right", and the observation carries the range that is still possible and the
guesses left. The episode ends (``done``) on the right guess (reward 1.0) or when the guesses run out (reward 0.0).

Its state (OpenEnv's ``state`` message, simulation mode) also holds ``gold_actions``: the ideal plan from the
current state, as action dicts (binary search over the possible range, ending with the winning guess), and
``legal_actions``: the guesses still worth making (every number of the possible range). `OpenEnvEnv` reads those
fields, when an environment has them, for the task's gold data, the ground-truth turn value and its scripted expert
(whose mistakes are legal but off-plan guesses); the agent never sees the state.

Serve it yourself (any OpenEnv client can play it)::

    from openenv.core.env_server import create_fastapi_app
    app = create_fastapi_app(GuessNumberEnvironment, GuessAction, GuessObservation, max_concurrent_envs=8)
    # uvicorn.run(app, host="127.0.0.1", port=8000)   or:  python -m turngym.envs.builtin.openenv_games --port 8000

Importing this module needs ``openenv-core`` (``pip install 'turngym[openenv]'``); without it the import raises
`turngym.errors.MissingExtraError`.
"""

from __future__ import annotations

import random
from typing import Any

from turngym.errors import MissingExtraError

try:
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import Action, Observation, State
    from pydantic import Field
except ImportError:  # pragma: no cover - exercised by test_missing_extra_names_the_install_command
    raise MissingExtraError("openenv-core", "openenv") from None

__all__ = ["GuessAction", "GuessNumberEnvironment", "GuessObservation", "GuessState", "binary_search_plan"]


class GuessAction(Action):
    """One guess."""

    number: int = Field(..., description="your guess, a whole number")


class GuessObservation(Observation):
    """What the player sees after a reset or a guess."""

    message: str = Field(default="", description="the game's reply")
    low: int = Field(default=0, description="smallest number still possible")
    high: int = Field(default=0, description="largest number still possible")
    guesses_left: int = Field(default=0, description="guesses left")


class GuessState(State):
    """The server-side state (OpenEnv's ``state``): the secret, the ideal plan from here and the sensible guesses."""

    secret: int | None = None
    low: int = 0
    high: int = 0
    guesses_left: int = 0
    gold_actions: list[dict[str, Any]] = Field(default_factory=list)
    legal_actions: list[dict[str, Any]] = Field(default_factory=list)


def binary_search_plan(low: int, high: int, secret: int) -> list[int]:
    """The guesses of binary search over ``low..high`` (midpoint rounded down) until it hits ``secret``."""
    plan = []
    while low <= high:
        mid = (low + high) // 2
        plan.append(mid)
        if mid == secret:
            return plan
        low, high = (mid + 1, high) if mid < secret else (low, mid - 1)
    return plan


class GuessNumberEnvironment(Environment[GuessAction, GuessObservation, GuessState]):
    """Guess the server's number in ``low..high`` within ``max_guesses`` guesses.

    Args:
        low: Smallest possible number.
        high: Largest possible number.
        max_guesses: Guesses allowed per episode (binary search needs at most ``bit_length(high - low + 1)``).
    """

    SUPPORTS_CONCURRENT_SESSIONS = True  # each session gets its own instance; no shared state
    # every session's steps run on one server worker thread (a step takes microseconds; a rollout engine opens
    # hundreds of sessions, and openenv would otherwise start a thread for each)
    REQUIRES_SINGLE_THREAD_EXECUTOR = True

    def __init__(self, low: int = 1, high: int = 32, max_guesses: int = 6):
        super().__init__()
        if not (isinstance(low, int) and isinstance(high, int) and low < high):
            raise ValueError(f"need integers low < high, got low={low!r}, high={high!r}")
        if not (isinstance(max_guesses, int) and max_guesses >= 1):
            raise ValueError(f"max_guesses must be an int >= 1, got {max_guesses!r}")
        self.low, self.high, self.max_guesses = low, high, max_guesses
        self._state = GuessState(low=low, high=high, guesses_left=max_guesses)
        self._over = False

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, secret: int | None = None, **kwargs: Any
    ) -> GuessObservation:
        """Start a game; the secret comes from ``seed`` (or is given as ``secret``)."""
        if secret is None:
            secret = random.Random(seed).randint(self.low, self.high)
        elif not self.low <= int(secret) <= self.high:
            raise ValueError(f"secret={secret} is outside {self.low}..{self.high}")
        self._state = GuessState(
            episode_id=episode_id,
            step_count=0,
            secret=int(secret),
            low=self.low,
            high=self.high,
            guesses_left=self.max_guesses,
        )
        self._over = False
        self._update_plan()
        return self._observation(
            f"Guess my number from {self.low} to {self.high} in at most {self.max_guesses} guesses."
        )

    def step(self, action: GuessAction, timeout_s: float | None = None, **kwargs: Any) -> GuessObservation:
        """Score one guess: too low, too high, or right (reward 1.0, done); out of guesses ends the game."""
        s = self._state
        if s.secret is None:
            raise RuntimeError("step() before reset(): reset the game first")
        if self._over:
            return self._observation("The game is over; reset to play again.", done=True, reward=0.0)
        s.step_count += 1
        s.guesses_left -= 1
        n = action.number
        if n == s.secret:
            self._over = True
            s.low = s.high = n
            s.gold_actions, s.legal_actions = [], []
            return self._observation(f"{n} is right!", done=True, reward=1.0)
        if n < s.secret:
            s.low = max(s.low, n + 1)
            text = f"{n} is too low."
        else:
            s.high = min(s.high, n - 1)
            text = f"{n} is too high."
        self._update_plan()
        if s.guesses_left == 0:
            self._over = True
            s.gold_actions, s.legal_actions = [], []
            return self._observation(
                f"{text} No guesses left; the number was {s.secret}.", done=True, reward=0.0
            )
        return self._observation(text)

    @property
    def state(self) -> GuessState:
        """The current state, with the secret and ``gold_actions`` (the ideal plan from here)."""
        return self._state

    def _update_plan(self) -> None:
        s = self._state
        assert s.secret is not None
        s.gold_actions = [{"number": g} for g in binary_search_plan(s.low, s.high, s.secret)]
        s.legal_actions = [{"number": n} for n in range(s.low, s.high + 1)]

    def _observation(self, message: str, *, done: bool = False, reward: float = 0.0) -> GuessObservation:
        s = self._state
        return GuessObservation(
            message=message, low=s.low, high=s.high, guesses_left=s.guesses_left, done=done, reward=reward
        )


def create_guess_app(max_concurrent_envs: int = 64, **env_kwargs: Any) -> Any:
    """The FastAPI app (OpenEnv's ``create_fastapi_app``) serving `GuessNumberEnvironment` with ``env_kwargs``."""
    import functools

    from openenv.core.env_server import create_fastapi_app

    factory = (
        functools.partial(GuessNumberEnvironment, **env_kwargs) if env_kwargs else GuessNumberEnvironment
    )
    return create_fastapi_app(factory, GuessAction, GuessObservation, max_concurrent_envs=max_concurrent_envs)


def main(argv: list[str] | None = None) -> None:
    """``python -m turngym.envs.builtin.openenv_games --port 8000``: serve the game with uvicorn on 127.0.0.1."""
    import argparse

    import uvicorn

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--low", type=int, default=1)
    p.add_argument("--high", type=int, default=32)
    p.add_argument("--max-guesses", type=int, default=6)
    a = p.parse_args(argv)
    app = create_guess_app(low=a.low, high=a.high, max_guesses=a.max_guesses)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
