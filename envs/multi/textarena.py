"""``multi/TextArena-v0``: a two-player TextArena game as a PettingZoo AEC env (needs ``turngym[textarena]``).

>>> env = turngym.make("multi/TextArena-v0", game="TicTacToe-v0")     # any offline two-player TextArena game

The game is TextArena's own (``textarena.make(game + "-raw")``, no TextArena wrappers); this module only moves its
messages and moves between TextArena and the `TextAECEnv` conventions:

- **Agents**: ``player_0`` and ``player_1`` are TextArena's players 0 and 1. Whose turn it is comes from the game
  (``state.current_player_id``); a game that lets player 1 open (Kuhn Poker) starts with ``player_1``.
- **Observations**: every TextArena message a player receives becomes a chat message: the game's prompt is the
  ``system`` message (after one line naming the agent and the game seed), game messages (boards, events, the game's invalid-move
  messages) are ``user`` messages, the other player's moves are ``user`` messages with ``name="player_<i>"``. A
  player's own moves, echoed back by TextArena, are left out (they are in its history as ``assistant`` messages).
  Consecutive messages from the same sender are joined into one. At the end each player gets one message with the
  game's reason and its TextArena reward. ``boards="last"`` keeps only the newest board message (TextArena's
  ``GAME_BOARD`` messages) of each observation, as TextArena's own ``-train`` wrappers do (a board game then shows
  one board per turn instead of one per move); the default ``"all"`` keeps every message.
- **Actions**: the agent's text goes to the game unchanged, or only the content of ``<answer>...</answer>`` when the
  text has one (the tags parser). The game alone decides whether a move is valid and what an invalid move costs:
  in most games (those using TextArena's two-player state as is) a first invalid move gets the game's error message
  and the same player moves again, and a second invalid move in a row loses the game; a few games allow more
  warnings or never end on one (``docs/ecosystem.md`` lists each claimed game's rule). Every invalid move the game declares
  sets ``info["invalid"]`` and counts in ``episode_counts["invalid"]``. Tool calls (no tools here) come back as
  failed tool results; the move text is still played.
- **Outcome**: TextArena's reward r in [-1, 1] (win 1, draw 0, loss -1) becomes the outcome ``(r + 1) / 2`` (win 1,
  draw 0.5, loss 0), paid on the last step; ``success`` is a win (r > 0). End info: ``textarena_reward``,
  ``reason``, ``winner`` (an agent or None), ``lost_by_invalid_move``. Reaching ``max_cycles`` actions of one agent
  truncates the game as a draw (0.5 each, no success); a game that raises on a move ends the episode truncated
  (``stop_reason="game_error"``, ``info["game_error"]``): the mover's outcome is 0, the other player's 0.5.
- **Determinism**: TextArena games draw from Python's global `random` (and reseed it in ``reset``). Each reset draws
  the game's seed from ``env.np_random`` and builds a fresh game object (some games keep state, such as a shuffled
  deck, across their own resets), and every call into the game runs with the global `random` state swapped
  for the env's own (under one module lock), then swapped back: the same seed gives the same episode, and the
  caller's global `random` state is left as it was.
- **Scripted policy** (`expert_action`, the fixed opponent of the multi-agent trainer's evaluation): TicTacToe has a
  real heuristic (win, block, centre, a corner, any free cell). The games of `LEGAL_MOVE_GAMES` list the legal moves
  in their observations; their scripted policy picks one of them at random. Noise (``noise``): a move without
  brackets (invalid in every game here) or, in TicTacToe, a random free cell. The other games have none: their
  ``expert_action`` raises `EnvError`, so the multi trainer's warm start and its evaluation against a fixed opponent
  do not run on them (RL from scratch still does).

Which games run: `OFFLINE_GAMES` are the ids tested here (PettingZoo's ``api_test`` and ``seed_test`` in
``tests/multi/test_textarena.py``). Other registered two-player ids (variants such as ``ConnectFour-v0-large``) run
with a warning that they are untested. `UNAVAILABLE_GAMES` names the game families that cannot run here (a word
list nltk downloads, an online LLM judge, data missing from the wheel, a bug of textarena 0.7.4) and why; they raise `ConfigError` before
anything is downloaded, and so do games that do not take two players or do not import on this Python.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from turngym.envs.multi.core import Action, TextAECEnv
from turngym.errors import ConfigError, EnvError, MissingExtraError

__all__ = [
    "LEGAL_MOVE_GAMES",
    "OFFLINE_GAMES",
    "UNAVAILABLE_GAMES",
    "TextArenaEnv",
    "family_of",
    "import_textarena",
    "make_env",
    "tictactoe_move",
]

OFFLINE_GAMES: tuple[str, ...] = (
    "Alquerque-v0",
    "Battleship-v0",
    "Breakthrough-v0",
    "Briscola-v0",
    "Chopsticks-v0",
    "ColonelBlotto-v0",
    "ConnectFour-v0",
    "Crusade-v0",
    "GameOfPureStrategy-v0",
    "GermanWhist-v0",
    "Golf-v0",
    "HighSociety-v0",
    "IndianPoker-v0",
    "IteratedMatchingPennies-v0",
    "IteratedPrisonersDilemma-v0",
    "IteratedRockPaperScissors-v0",
    "IteratedTwoThirdsAverage-v0",
    "IteratedUltimatumGame-v0",
    "KuhnPoker-v0",
    "LiarsDice-v0",
    "LinesOfAction-v0",
    "MarketEntryGame-v0",
    "MemoryGame-v0",
    "NewRecruit-v0",
    "Nim-v0",
    "Othello-v0",
    "PigDice-v0",
    "Poker-v0",
    "PublicGoodsGame-v0",
    "QuantumTicTacToe-v0",
    "SantoriniBaseFixed-v0",
    "SimpleBlindAuction-v0",
    "SimpleNegotiation-v0",
    "SimpleTak-v0",
    "Snake-v0",
    "Surround-v0",
    "Tak-v0",
    "TicTacToe-v0",
    "TruthAndDeception-v0",
    "TwoDollar-v0",
    "UltimateTicTacToe-v0",
    "WildTicTacToe-v0",
)
"""Two-player TextArena 0.7.4 games tested offline through this adapter (``api_test`` + ``seed_test``)."""

_NLTK = "loads nltk's 'words' corpus, which nltk downloads from the internet on first use"
_LLM = "uses an online LLM through OpenRouter (OPENROUTER_API_KEY) as its judge or game master"
_DATA = "its data files are missing from the textarena 0.7.4 wheel"
_BROKEN = "is broken in textarena 0.7.4"
UNAVAILABLE_GAMES: dict[str, str] = {
    **{f: _NLTK for f in ("Codenames", "DontSayIt", "Hangman", "LetterAuction", "SpellingBee", "WordChains",
                          "WordLadder", "WordSearch", "Wordle")},
    **{f: _LLM for f in ("Debate", "GuessWho", "ScenarioPlanning", "TwentyQuestions")},
    **{f: _DATA for f in ("ScorableGames", "UsedCar", "UsedCarNegotiation")},
    "SpiteAndMalice": f"{_BROKEN}: its reset fails after the first game (AttributeError: no attribute 'logs')",
    "Stratego": f"{_BROKEN}: its reset loops forever for some seeds (the board placement never ends)",
}
"""Game families (the id before ``-v``) that cannot run offline here, with the reason; `make_env` refuses them.

Not listed, refused when made: games that do not take two players (single-player puzzles, Taboo, Codenames, Settlers
of Catan, Secret Mafia, ...) and games whose module does not import on this Python (Checkers, Chess, ReverseTicTacToe,
IteratedStagHunt: textarena 0.7.4 writes them with Python 3.12 f-string syntax).
"""

LEGAL_MOVE_GAMES: tuple[str, ...] = (
    "Crusade",
    "KuhnPoker",
    "Othello",
    "PigDice",
    "SimpleTak",
    "Snake",
    "Surround",
    "WildTicTacToe",
)
"""Game families whose observations list the legal moves; their scripted policy plays a random listed move."""

_LEGAL_LINE = re.compile(r"(?:available|valid|legal)\s+(?:moves|actions)[^:\n]{0,20}:([^\n]*)", re.IGNORECASE)
_BRACKETED = re.compile(r"\[[^\[\]\n]{1,40}\]")
_SUFFIXES = ("-raw", "-train")
_RANDOM_LOCK = threading.RLock()  # the global `random` state is swapped per call into a game: one swap at a time
_LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))


def import_textarena() -> Any:
    """The ``textarena`` package.

    Raises:
        MissingExtraError: ``textarena`` is not installed (``pip install 'turngym[textarena]'``).
    """
    with _RANDOM_LOCK:  # importing textarena draws from the global `random` (once); keep the caller's state
        saved = random.getstate()
        try:
            import textarena
        except ImportError:
            raise MissingExtraError("textarena", "textarena") from None
        finally:
            random.setstate(saved)
    return textarena


def family_of(game: str) -> str:
    """The game family of a TextArena id: ``"TicTacToe"`` for ``"TicTacToe-v0"`` (the id before ``-v<digit>``)."""
    m = re.match(r"(.+?)-v\d", game)
    return m.group(1) if m else game


def tictactoe_move(board: list[str], mark: str, rng: np.random.Generator) -> int:
    """The scripted TicTacToe move: win, else block, else the centre, else a corner, else any free cell.

    Args:
        board: The 9 cells, row by row: ``"X"``, ``"O"`` or ``""``.
        mark: The mover's mark (``"X"`` or ``"O"``).
        rng: Breaks ties among corners and free cells.

    Returns:
        The cell index 0-8 (raises `ValueError` on a full board).
    """
    free = [i for i, c in enumerate(board) if c == ""]
    if not free:
        raise ValueError("tictactoe_move: the board is full.")
    other = "X" if mark == "O" else "O"
    for who in (mark, other):  # complete own line, else block the other's
        for line in _LINES:
            cells = [board[i] for i in line]
            if cells.count(who) == 2 and cells.count("") == 1:
                return line[cells.index("")]
    if 4 in free:
        return 4
    corners = [i for i in (0, 2, 6, 8) if i in free]
    pool = corners or free
    return int(pool[int(rng.integers(len(pool)))])


class TextArenaEnv(TextAECEnv):
    """A two-player TextArena game as a turngym AEC env (see the module docstring for the conventions).

    Args:
        game: A TextArena game id (``"TicTacToe-v0"``); see `OFFLINE_GAMES`.
        boards: ``"all"`` (every message) or ``"last"`` (only the newest board message of each observation).
        max_cycles: Largest number of actions per player, invalid ones included; reaching it ends the game as a draw.
        **kwargs: Passed to `TextAECEnv` (``parser``, ``max_action_chars``, ``render_mode``).

    Raises:
        MissingExtraError: textarena is not installed.
        ConfigError: an unknown id, a game of `UNAVAILABLE_GAMES`, a game that does not take two players or does not
            import here.
    """

    possible_agents = ["player_0", "player_1"]
    metadata = {"name": "textarena_v0", "render_modes": ["ansi"], "is_parallelizable": False}
    parser_name = "tags"
    default_expert_noise = 0.1

    def __init__(self, *, game: str = "TicTacToe-v0", boards: str = "all", max_cycles: int = 50, **kwargs: Any):
        if boards not in ("all", "last"):
            raise ConfigError(f"boards must be 'all' or 'last', got {boards!r}.")
        self.boards = boards
        ta = import_textarena()
        from textarena.envs.registration import ENV_REGISTRY

        from turngym.registry import unknown_name_message

        if not isinstance(game, str) or not game:
            raise ConfigError(f"game must be a TextArena id such as 'TicTacToe-v0', got {game!r}.")
        if game.endswith(_SUFFIXES):
            raise ConfigError(
                f"game={game!r}: pass the plain id ({game.rsplit('-', 1)[0]!r}); the adapter always plays the raw "
                "game and turns its messages into chat messages itself."
            )
        if game not in ENV_REGISTRY:
            known = [g for g in ENV_REGISTRY if not g.endswith(_SUFFIXES)]
            raise ConfigError(unknown_name_message("TextArena game", game, known)
                              + f" Tested offline: {', '.join(OFFLINE_GAMES)}.")
        fam = family_of(game)
        if fam in UNAVAILABLE_GAMES:
            raise ConfigError(
                f"TextArena game {game!r} cannot run here: it {UNAVAILABLE_GAMES[fam]}. "
                f"Pick one of the games tested offline: {', '.join(OFFLINE_GAMES)}."
            )
        self.game = game
        self.family = fam
        self._ta = ta
        self._py_state: Any = random.Random(0).getstate()
        try:
            with self._game_random():
                self._game = ta.make(game + "-raw")
                self._game.reset(num_players=2, seed=0)  # probe: refuses games that do not take two players
        except (ImportError, SyntaxError) as e:
            raise ConfigError(
                f"TextArena game {game!r} does not import here ({type(e).__name__}: {e}); textarena 0.7.4 writes some "
                f"games with Python 3.12 syntax. Pick one of: {', '.join(OFFLINE_GAMES)}."
            ) from None
        except AssertionError as e:
            raise ConfigError(
                f"TextArena game {game!r} does not take two players ({e}); multi/TextArena-v0 plays two-player games: "
                f"{', '.join(OFFLINE_GAMES)}."
            ) from None
        if game not in OFFLINE_GAMES:
            warnings.warn(
                f"TextArena game {game!r} is not among the games tested with this adapter (OFFLINE_GAMES); it may "
                "need a download or fail on some moves.",
                UserWarning,
                stacklevel=2,
            )
        self.metadata = dict(type(self).metadata, name=f"textarena_{game}")
        super().__init__(max_cycles=max_cycles, **kwargs)

    # ------------------------------------------------------------------ the game's RNG
    @contextlib.contextmanager
    def _game_random(self) -> Iterator[None]:
        """Run a call into the game with the global `random` state replaced by this env's own, then restore it."""
        with _RANDOM_LOCK:
            saved = random.getstate()
            random.setstate(self._py_state)
            try:
                yield
            finally:
                self._py_state = random.getstate()
                random.setstate(saved)

    def _on_invalid(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        self._invalid_pids.append(int(self._game.state.current_player_id))
        return original(*args, **kwargs)

    # ------------------------------------------------------------------ episode
    def _start(self, rng: np.random.Generator, options: dict[str, Any] | None) -> dict[str, Any]:
        # PettingZoo's api_test resets with options={'options': 1}: that key is accepted and ignored
        if options and set(options) - {"options"}:
            raise ConfigError(f"TextArena reset options: unknown keys {sorted(options)}; it takes none.")
        seed = self._game_seed = int(rng.integers(2**31 - 1))
        self._py_state = random.Random(seed).getstate()
        try:
            with self._game_random():  # a fresh game object: some games keep state across resets (a shuffled deck)
                self._game = self._ta.make(self.game + "-raw")
                self._game.reset(num_players=2, seed=seed)
        except Exception as e:  # a broken game, not a bad move: say which game and seed
            raise EnvError(f"TextArena game {self.game} failed in reset (game seed {seed}): {type(e).__name__}: {e}") from e
        state = self._game.state
        original = state.set_invalid_move  # record every invalid move the game declares (who, when)
        state.set_invalid_move = lambda *a, **k: self._on_invalid(original, *a, **k)
        self._invalid_pids: list[int] = []
        self._header_sent: set[int] = set()
        self._inbox: dict[int, list[Any]] = {0: [], 1: []}
        self.agent_selection = self._agent(state.current_player_id)
        self._deliver()
        return {"id": f"textarena/{self.game}/{seed}", "game": self.game, "game_seed": seed, "decisive_turns": []}

    def _agent(self, pid: int) -> str:
        return f"player_{int(pid)}"

    def _deliver(self, final: bool = False) -> None:
        """Move the game's new messages into each player's chat observation.

        With ``boards="last"`` a board message waits until its player is to act (or the game ends) and only the
        newest waiting board is delivered; every other message goes out at once.
        """
        import textarena as ta

        state = self._game.state
        board = ta.ObservationType.GAME_BOARD
        for pid in range(2):
            self._inbox[pid].extend(state.observations.get(pid, []))
            state.observations[pid] = []
            raw, self._inbox[pid] = self._inbox[pid], []
            if self.boards == "last":
                boards = [m for m in raw if m[2] == board][-1:]
                raw = [m for m in raw if m[2] != board]
                if final or self._agent(pid) == self.agent_selection:
                    raw += boards
                else:
                    self._inbox[pid] = boards
            self._send_game_messages(pid, raw)

    def _send_game_messages(self, pid: int, raw: list[tuple[int, str, Any]]) -> None:
        import textarena as ta

        agent = self._agent(pid)
        batch: list[tuple[str, str | None, str]] = []
        for from_id, text, kind in raw:
            if from_id == pid and kind == ta.ObservationType.PLAYER_ACTION:
                continue  # the player's own move: already its assistant message
            if kind == ta.ObservationType.PROMPT:
                role, name = "system", None
                if pid not in self._header_sent:
                    self._header_sent.add(pid)
                    text = (f"You are {agent} (Player {pid}) in the TextArena game {self.game} (game seed "
                            f"{self._game_seed}), against {self._agent(1 - pid)}. Your reply is your move.\n\n{text}")
            elif from_id == ta.GAME_ID or from_id not in (0, 1):
                role, name = "user", None
            else:
                role, name = "user", self._agent(from_id)
            if batch and batch[-1][:2] == (role, name):
                batch[-1] = (role, name, batch[-1][2] + "\n\n" + str(text))
            else:
                batch.append((role, name, str(text)))
        for role, name, text in batch:
            self.send(agent, text, role=role, name=name)

    def _turn(self, agent: str, action: Action) -> None:
        if action.calls:
            self.run_tools(agent, action.calls)  # no tools here: each call comes back as a failed result
        move = action.answer if action.answer is not None else action.text
        pid = int(agent.rsplit("_", 1)[1])
        state = self._game.state
        if int(state.current_player_id) != pid:  # pragma: no cover - agent_selection always follows the game
            raise EnvError(f"TextArena game {self.game}: {agent} acted but it is Player {state.current_player_id}'s turn.")
        self._invalid_pids = []
        try:
            with self._game_random():
                done, _ = self._game.step(move)
        except Exception as e:  # noqa: BLE001 - a game that breaks on a move ends the episode, as data
            self._deliver(final=True)
            err = f"{type(e).__name__}: {e}"
            self._step_infos[agent]["game_error"] = err
            for a in self.agents:
                self.send(a, f"The game stopped: it failed on {agent}'s move ({err[:200]}).")
            self.end({a: (0.0 if a == agent else 0.5) for a in self.agents}, success=False, truncated=True,
                     stop_reason="game_error", extra={a: {"game_error": err} for a in self.agents})
            return
        if pid in self._invalid_pids:
            self._step_infos[agent]["invalid"] = True
            self._counts[agent]["invalid"] += 1
        if not done:
            self.agent_selection = self._agent(state.current_player_id)
        self._deliver(final=bool(done))
        if done:
            self._finish()
            return
        if self._turns[agent] >= self.max_cycles:  # the action budget ends the game as a draw
            for a in self.agents:
                self.send(a, f"The game was stopped after {self.max_cycles} actions of {agent}: a draw.")
            self.end({a: 0.5 for a in self.agents}, success=False, truncated=True, stop_reason="max_cycles",
                     extra={a: {"textarena_reward": None, "reason": "max_cycles", "winner": None,
                                "lost_by_invalid_move": False} for a in self.agents})

    def _finish(self) -> None:
        with self._game_random():
            rewards, game_info = self._game.close()
        rewards = {int(k): float(v) for k, v in (rewards or {}).items()}
        r = {a: rewards.get(i, 0.0) for i, a in enumerate(self.possible_agents)}
        reason = next((str(game_info[i]["reason"]) for i in (0, 1) if "reason" in (game_info or {}).get(i, {})), "")
        winners = [a for a in self.possible_agents if r[a] > 0 and r[a] > min(r.values())]
        winner = winners[0] if len(winners) == 1 else None
        for a in self.agents:
            self.send(a, f"Game over. {reason} Your TextArena reward: {r[a]:g}.".replace("  ", " "))
        self.end(
            {a: min(max((r[a] + 1.0) / 2.0, 0.0), 1.0) for a in self.agents},
            success={a: r[a] > 0 for a in self.agents},
            final_answer=f"winner: {winner}" if winner else "no winner",
            stop_reason="game_over",
            extra={
                a: {
                    "textarena_reward": r[a],
                    "reason": reason,
                    "winner": winner,
                    "lost_by_invalid_move": bool((game_info or {}).get(i, {}).get("invalid_move", False)),
                }
                for i, a in enumerate(self.possible_agents)
            },
        )

    # ------------------------------------------------------------------ scripted policy
    def _expert(self, agent: str, rng: np.random.Generator, noise: float) -> str:
        """TicTacToe: `tictactoe_move`; `LEGAL_MOVE_GAMES`: a random listed legal move; others: `EnvError`.

        Noise: a move without brackets (the game's invalid format) or, for TicTacToe, a random free cell.
        """
        if self.family not in ("TicTacToe", *LEGAL_MOVE_GAMES):
            raise EnvError(
                f"TextArena game {self.game} has no scripted policy (its observations do not list the legal moves); "
                f"the multi trainer cannot warm-start from demonstrations or evaluate against a fixed opponent on it "
                f"(set sft_steps=0 pretrain_steps=0, and read the self-play rollout metrics). Games with one: "
                f"TicTacToe-v0, {', '.join(LEGAL_MOVE_GAMES)}."
            )
        if noise > 0 and rng.random() < noise:
            if rng.random() < 0.5 or self.family != "TicTacToe":
                return "I am not sure which move to make."
            board = self._board()
            free = [i for i, c in enumerate(board) if c == ""]
            return f"[{free[int(rng.integers(len(free)))]}]"
        if self.family == "TicTacToe":
            pid = int(agent.rsplit("_", 1)[1])
            return f"[{tictactoe_move(self._board(), 'X' if pid == 1 else 'O', rng)}]"
        moves = self._listed_moves(agent)
        if not moves:
            raise EnvError(f"TextArena game {self.game}: no list of legal moves in {agent}'s observations yet.")
        return moves[int(rng.integers(len(moves)))]

    def _board(self) -> list[str]:
        return [c for row in self._game.state.game_state["board"] for c in row]

    def _listed_moves(self, agent: str) -> list[str]:
        """The bracketed moves on the last legal-move line ``agent`` received (its pending messages first)."""
        for msgs in (self._pending[agent], self._history[agent]):
            for m in reversed(msgs):
                if m["role"] == "assistant":
                    continue
                lines = _LEGAL_LINE.findall(m["content"])
                for line in reversed(lines):
                    moves = list(dict.fromkeys(_BRACKETED.findall(line)))
                    if moves:
                        return moves
        return []


def make_env(game: str = "TicTacToe-v0", api: str = "aec", **kwargs: Any) -> Any:
    """Registry entry point: the AEC env (``api="aec"``) or its parallel view (``api="parallel"``).

    Args:
        game: The TextArena game id (see `OFFLINE_GAMES`).
        api: ``"aec"`` (native) or ``"parallel"`` (PettingZoo's ``turn_based_aec_to_parallel`` view).
        **kwargs: Passed to `TextArenaEnv`.
    """
    from turngym.envs.multi import to_api

    return to_api(TextArenaEnv(game=game, **kwargs), api)
