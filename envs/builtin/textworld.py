"""``text/TextWorld-v0`` family: long-horizon text games generated with TextWorld (the ``textworld`` extra).

A task is one game that TextWorld's challenge generator builds from a seed (``tw-coin_collector`` by default, or
``tw-treasure_hunter``): a chain of rooms, an object to fetch at the far end, an objective that tells the way,
and a walkthrough. The agent sends one game command per turn, ``<command> go north </command>``, and reads the
game's reply (a ``role="tool"`` message named ``command``, followed by the valid commands when
``list_commands=True``). Winning the game ends the episode with outcome 1.0, losing it with 0.0; the turn budget
(``max_turns``) truncates it (outcome 0.0).

Games are generated on first use into ``$TURNGYM_CACHE/textworld`` (see
`turngym.envs.builtin.textworld_games.compiled_game`); each env draws its tasks from a pool of ``games`` games
derived from ``game_seed``, and ``reset(seed=s)`` picks one with the env's RNG (``options={"game": i}`` picks one).
Held-out evaluation plays other games: with ``split="auto"`` (the default) seeds from 1,000,000 (where turngym
evaluates) draw from a second pool of ``test_games`` games that training never sees (``split="train"`` /
``"test"`` / ``"all"`` choose a pool for every seed; the reset option ``{"split": ...}`` for one episode).

Gold data for credit (``info["task"]``): ``walkthrough`` (the winning commands from the start), ``gold_calls``
(the walkthrough without its last, winning command, so that running every gold call leaves the episode open, as
`check_env` expects of calls), ``gold_answer`` (the whole walkthrough as a plan, see below), ``decisive_turns``
(every expert turn: each shortens the remaining walkthrough) and ``gold_turn_values``. Every step's info carries
the ground-truth ``value`` = 1 - remaining walkthrough steps / initial walkthrough length (TextWorld recomputes
the remaining steps from the game state after each command; clamped to [0, 1]; 0 once the game is lost),
``value_delta``, ``gold_answer`` (the plan from the new state: what the gold-answer probe of IGPO / A²TGPO scores
after this turn, `turngym.credit.signals.GoldProbeProvider`), and GiGPO anchors: ``anchor_obs`` is the game state the action was taken in (room and inventory),
``anchor`` the state it led to. `TextWorldEnv.turn_value` replays any history of the current task.

``<answer> go east; take coin </answer>`` submits the rest of a plan at once: its commands (split on ``;``,
``,`` or new lines; at most as many as turns are left) run in order and the episode ends, won or not. The
instructions do not mention it; it is what an answer means in a game without answers (`check_env` gives one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from turngym.envs.builtin.textworld_games import (
    CHALLENGES,
    TextWorldGame,
    clean_text,
    compiled_game,
    default_cache_dir,
    game_seed_of,
    import_textworld,
)
from turngym.envs.core import Env, Score, Task, _short, resolve_split
from turngym.errors import ConfigError, EnvError
from turngym.types import Message, ToolCall, ToolResult

TEST_POOL_OFFSET = 1_000_000
"""Held-out game ``i`` is generated from ``game_seed_of(game_seed, TEST_POOL_OFFSET + i)``: never a training game."""

TAGS_INSTRUCTIONS = (
    "You are playing a text adventure game. Do what the task asks. Each turn, send exactly one game command "
    "inside <command> ... </command>, for example <command> go north </command> or <command> take coin </command>; "
    "the game replies with what happens. The game ends when the task is done."
)
HERMES_INSTRUCTIONS = (
    "You are playing a text adventure game. Do what the task asks. Each turn, send exactly one game command with "
    "the command tool (for example 'go north' or 'take coin'); the game replies with what happens. The game ends "
    "when the task is done."
)


class TextWorldEnv(Env):
    """A TextWorld challenge game per task, played one command per turn.

    Args:
        challenge: ``"tw-coin_collector"`` (levels 1-300: ``(level - 1) % 100 + 1`` rooms on the way, the
            walkthrough length; from level 101 on, as many distractor rooms again beside the way, dead ends) or
            ``"tw-treasure_hunter"`` (levels 1-30: doors, keys, containers, and a wrong object that loses).
        level: Difficulty level of the challenge.
        games: Size of the pool of games tasks are drawn from (each is generated once, about 2 s).
        game_seed: Seed of the pool (game ``i`` is generated from ``game_seed_of(game_seed, i)``).
        split: The pool ``reset`` draws from: ``"train"`` (the ``games`` games), ``"test"`` (``test_games`` held-out
            games, generated from ``game_seed_of(game_seed, 1_000_000 + i)``), ``"all"`` (both), or ``"auto"``
            (the default: held-out for seeds >= 1,000,000, where turngym evaluates; training below).
        test_games: Size of the held-out pool.
        list_commands: Append the valid (admissible) commands to the prompt and to every observation.
        max_obs_chars: Longest game reply kept; a longer one is cut and ends with ``" ..."``.
        cache_dir: Where compiled games are kept (default ``$TURNGYM_CACHE/textworld``).
        parser: Action format: ``"tags"`` (``<command> go north </command>``, default) or ``"hermes"``.
        **kwargs: Passed to `Env` (``max_turns``, ``max_action_chars``, ``render_mode``, ...);
            ``max_calls_per_action`` defaults to 1 (one command per turn), ``max_answer_chars`` to 2048.
    """

    parser_name = "tags"
    default_expert_noise = 0.2

    def __init__(
        self,
        *,
        challenge: str = "tw-coin_collector",
        level: int = 5,
        games: int = 32,
        game_seed: int = 0,
        split: str = "auto",
        test_games: int = 32,
        list_commands: bool = True,
        max_obs_chars: int = 800,
        cache_dir: str | Path | None = None,
        parser: str = "tags",
        **kwargs: Any,
    ):
        if challenge not in CHALLENGES:
            raise ConfigError(f"challenge must be one of {sorted(CHALLENGES)}, got {challenge!r}.")
        lo, hi = CHALLENGES[challenge]
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not lo <= level <= hi:
            raise ConfigError(f"{challenge} level must be an int in {lo}..{hi}, got {level!r}.")
        if challenge == "tw-coin_collector" and ((level - 1) // 100 + 1) * ((level - 1) % 100 + 1) > 100:
            raise ConfigError(
                f"tw-coin_collector level {level} has over 100 rooms; TextWorld 1.7 builds at most 100."
            )
        if int(games) < 1 or int(test_games) < 1 or int(max_obs_chars) < 40:
            raise ConfigError(f"games and test_games must be >= 1 and max_obs_chars >= 40, got {games}, {test_games} "
                              f"and {max_obs_chars}.")
        resolve_split(split, None)  # a bad name fails here, not at the first reset
        import_textworld()  # MissingExtraError, with the install command, before anything else
        self.challenge, self.level = challenge, int(level)
        self.games, self.game_seed = int(games), int(game_seed)
        self.split, self.test_games = split, int(test_games)
        self.list_commands, self.max_obs_chars = bool(list_commands), int(max_obs_chars)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.instructions = TAGS_INSTRUCTIONS if parser == "tags" else HERMES_INSTRUCTIONS
        self._game: TextWorldGame | None = None
        self._n_steps = 1
        self._last_anchor = ""
        from turngym.tools.base import Tool

        kwargs.setdefault("max_calls_per_action", 1)
        kwargs.setdefault("max_answer_chars", 2048)
        super().__init__(tools=[Tool.from_function(self.command)], parser=parser, **kwargs)

    def command(self, command: str) -> str:
        """Send one command to the text game, e.g. 'go north' or 'take coin'; returns the game's reply.

        Args:
            command: The game command (one line).
        """
        return self._play(ToolCall(name="command", arguments={"command": command})).text

    def close(self) -> None:
        """Stop the game interpreter and close the tools (idempotent)."""
        if self._game is not None:
            self._game.close()
            self._game = None
        super().close()

    # ------------------------------------------------------------------ task
    def _sample_task(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Task:
        opts = dict(options or {})
        split = resolve_split(opts.pop("split", self.split), self.reset_seed)
        pool = {"train": self.games, "test": self.test_games, "all": self.games + self.test_games}[split]
        index = int(opts.pop("game")) if "game" in opts else int(rng.integers(0, pool))
        if opts:
            raise ConfigError(f"TextWorld reset options: unknown keys {sorted(opts)}; known: ['game', 'split'].")
        if not 0 <= index < pool:
            raise ConfigError(f"reset option game={index} is outside the {split} pool 0..{pool - 1}.")
        if split == "all" and index >= self.games:  # "all": the held-out pool follows the training pool
            split, index = "test", index - self.games
        test = split == "test"
        seed = game_seed_of(self.game_seed, TEST_POOL_OFFSET + index if test else index)
        path = compiled_game(self.challenge, self.level, seed, self.cache_dir)
        if self._game is None or self._game.path != path:
            if self._game is not None:
                self._game.close()
            self._game = TextWorldGame(path)
        self._game.reset()
        walkthrough = self._game.remaining
        n = len(walkthrough)
        self._n_steps, self._last_anchor = max(1, n), self._game.anchor()
        meta = {
            "id": f"textworld/{self.challenge}/level{self.level}/seed{seed}",
            "challenge": self.challenge,
            "level": self.level,
            "game": index,
            "split": "test" if test else "train",
            "game_seed": seed,
            "walkthrough": walkthrough,
            "decisive_turns": list(range(n)),
            "gold_turn_values": [i / n for i in range(n + 1)],
        }
        return Task(
            prompt=self._game.intro() + self._commands_text(),
            gold_answer="; ".join(walkthrough),
            gold_calls=[{"name": "command", "arguments": {"command": c}} for c in walkthrough[:-1]],
            meta=meta,
            private={"path": path},
        )

    # ------------------------------------------------------------------ playing
    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        """`Env.step`; a command that wins or loses the game ends the episode (``terminated=True``)."""
        obs, reward, terminated, truncated, info = super().step(action)
        assert self._game is not None
        if self._game.over and not terminated:
            won = self._game.won
            info.pop("truncated_by", None)
            info.update(self._end_info(None, Score(outcome=float(won), success=won)))
            self._done = True
            return obs, float(won), True, False, info
        return obs, reward, terminated, truncated, info

    def _run_tools(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        # commands run here, in order, on the caller's thread: one game, never stepped concurrently
        return [self._play(c) for c in calls]

    def _play(self, call: ToolCall) -> ToolResult:
        """Run one command call; the reply is cleaned, cut to ``max_obs_chars`` and followed by the valid commands."""
        if call.name != "command":
            return ToolResult(
                name=call.name,
                ok=False,
                call_id=call.id,
                error=f"unknown tool {call.name!r}; send a game command, e.g. <command> look </command>",
            )
        assert self._game is not None
        cmd = str(call.arguments.get("command", ""))
        admissible = " ".join(cmd.lower().split()) in self._game.admissible
        ok, text = self._game.play(cmd)
        if not ok:
            return ToolResult(name="command", ok=False, error=text, call_id=call.id)
        text = clean_text(text)
        if len(text) > self.max_obs_chars:
            text = text[: self.max_obs_chars - 4].rstrip() + " ..."
        text = (text or "(no reply)") + self._commands_text()
        return ToolResult(
            name="command", ok=True, output=text, call_id=call.id, meta={"admissible": admissible}
        )

    def _score(self, answer: str, task: Task) -> Score:
        """Play the answer as a plan for the rest of the game; the outcome is whether the game is won."""
        assert self._game is not None
        budget = self.max_turns - self._turn + 1 if self.max_turns is not None else 100
        ran = _run_plan(self._game, answer, budget)
        return Score(outcome=float(self._game.won), success=self._game.won, info={"plan_commands": ran})

    def _error_text(self, errors: list[str], *, some_calls: bool) -> str:
        head = (
            "Error: " + "; ".join(_short(e).rstrip(".") for e in errors) + "."
            if errors
            else "Error: no command found."
        )
        if some_calls:
            return head
        example = self.parser.format(calls=[ToolCall(name="command", arguments={"command": "look"})])
        return f"{head} Send one game command per turn, for example {example}"

    def _commands_text(self) -> str:
        assert self._game is not None
        if not self.list_commands or self._game.over:
            return ""
        return "\n\nValid commands: " + ", ".join(self._game.admissible)

    # ------------------------------------------------------------------ value and anchors
    def _value_of(self, game: TextWorldGame) -> tuple[int, float]:
        if game.over and not game.won:
            return 0, 0.0
        done = min(self._n_steps, max(0, self._n_steps - len(game.remaining)))
        return done, done / self._n_steps

    def _add_progress_info(self, info: dict[str, Any]) -> None:
        assert self._game is not None
        done, value = self._value_of(self._game)
        info["progress"] = done
        info["remaining_steps"] = len(self._game.remaining)
        info["gold_answer"] = "; ".join(self._game.remaining)  # the plan from here: the gold probe's answer now
        info["value"] = value
        info["value_delta"] = round(value - self._last_value, 12)
        info["anchor_obs"] = self._last_anchor  # the state this action was taken in
        info["anchor"] = self._last_anchor = self._game.anchor()
        self._last_value = value

    def _progress(self, history: list[Message]) -> int:
        return round(self.turn_value(history) * self._n_steps)

    def turn_value(self, history: list[Message] | None = None) -> float:
        """Ground-truth value of a state: 1 - remaining walkthrough steps / initial walkthrough length, in [0, 1].

        Args:
            history: Messages of an episode of the current task (default: the current episode); another history
                is replayed on a fresh copy of the game (its assistant actions, as `step` would run them).
        """
        if self.task is None or self._game is None:
            raise EnvError("turn_value() needs a task; call reset() first.")
        if history is None or history is self._history:
            return self._value_of(self._game)[1]
        game = TextWorldGame(self.task.private["path"])
        try:
            game.reset()
            actions = [str(m.get("content") or "") for m in history if m.get("role") == "assistant"]
            for turn, text in enumerate(actions, 1):
                parsed = self.parser.parse(text[: self.max_action_chars])
                if parsed.answer is not None and len(parsed.answer) <= self.max_answer_chars:
                    _run_plan(game, parsed.answer, self.max_turns - turn + 1 if self.max_turns else 100)
                elif parsed.answer is None:
                    for c in parsed.calls[: self.max_calls_per_action]:
                        if c.name == "command":
                            game.play(str(c.arguments.get("command", "")))
                if game.over:
                    break
            return self._value_of(game)[1]
        finally:
            game.close()

    # ------------------------------------------------------------------ expert
    def expert_action(self, rng: np.random.Generator, noise: float = 0.0) -> str:
        """The walkthrough's next command; with probability ``noise`` a random other valid command instead.

        Args:
            rng: The caller's generator (the env's own RNG is not consumed).
            noise: Probability of a random valid command (a detour, a wasted turn or, in treasure hunter, a losing
                move), in [0, 1].
        """
        if self.task is None or self._done:
            raise EnvError("expert_action() needs a running episode; call reset() first.")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}.")
        call = self._expert_next()
        if noise > 0 and rng.random() < noise:
            call = self._expert_wrong_call(rng) or call
        return self.parser.format(calls=[call])

    def _expert_next(self) -> ToolCall:
        assert self._game is not None
        remaining = self._game.remaining
        return ToolCall(name="command", arguments={"command": remaining[0] if remaining else "look"})

    def _expert_wrong_call(self, rng: np.random.Generator) -> ToolCall | None:
        assert self._game is not None
        ideal = self._expert_next().arguments["command"]
        others = [c for c in self._game.admissible if c != ideal]
        if not others:
            return None
        return ToolCall(name="command", arguments={"command": others[int(rng.integers(0, len(others)))]})

    def expected_expert_success(self, noise: float, plan_lengths: dict[int, float] | None = None) -> float:
        """Not available: what a random valid command costs depends on the map (a detour, a wasted turn, a loss).

        Raises:
            NotImplementedError: always; estimate the rate by playing `expert_action` over seeds.
        """
        raise NotImplementedError(
            "TextWorldEnv has no closed-form expert success; estimate it by playing expert_action over seeds."
        )


def _run_plan(game: TextWorldGame, answer: str, budget: int) -> int:
    """Play the commands of ``answer`` (split on ``;``, ``,`` or new lines), at most ``budget`` of them, until the
    game ends; returns how many were sent."""
    plan = [c.strip() for c in re.split(r"[;,\n]", answer) if c.strip()][: max(0, budget)]
    ran = 0
    for cmd in plan:
        if game.over:
            break
        game.play(cmd)
        ran += 1
    return ran
