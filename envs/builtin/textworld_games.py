"""TextWorld games for `turngym.envs.builtin.textworld`: generation into a cache, and one running game.

`compiled_game` builds a challenge game (``tw-coin_collector``, ``tw-treasure_hunter``) from a seed with
TextWorld's Python API and compiles it with the Inform 7 compiler bundled in the ``textworld`` wheel, once:
the ``.z8`` and its ``.json`` go to ``<cache>/textworld-<version>/<challenge>-level<N>/seed<S>.z8`` (cache root
``$TURNGYM_CACHE/textworld``, default ``~/.cache/turngym/textworld``). `TextWorldGame` plays a compiled game with
``textworld.start``; TextWorld tracks the game state and recomputes the winning command sequence
(``policy_commands``) after every command.

Nothing here imports ``textworld`` at module import; `import_textworld` raises `MissingExtraError` with the install
command when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from turngym.cache import cache_dir
from turngym.errors import EnvError, MissingExtraError

CHALLENGES = {"tw-coin_collector": (1, 300), "tw-treasure_hunter": (1, 30)}
"""Supported TextWorld challenges and their level ranges."""

MAX_COMMAND_CHARS = 120
"""Longest game command sent to the interpreter."""

# Interpreter meta commands: they would restart or end the game, stop TextWorld's state tracking, change how
# rooms are described, or write files in the working directory (save, script). Words starting with "tw-" are
# TextWorld's own debug commands. A command holding any of them, anywhere, is refused.
# fmt: off
META_VERBS = frozenset({
    "quit", "q", "restart", "restore", "save", "undo", "oops", "script", "unscript", "transcript", "noscript",
    "brief", "superbrief", "verbose", "normal", "long", "short", "notify", "version", "verify",
})
# fmt: on

_GENERATION_TRIES = 8


def import_textworld() -> Any:
    """The ``textworld`` package (with its generator and challenges loaded).

    Raises:
        MissingExtraError: ``textworld`` is not installed (``pip install 'turngym[textworld]'``).
    """
    try:
        import textworld
        import textworld.challenges
        import textworld.generator
    except ImportError:
        raise MissingExtraError("textworld", "textworld") from None
    # jericho warns on every load of a TextWorld game (it has no score/move table for them; TextWorld tracks state)
    warnings.filterwarnings("ignore", message=r"Game '.*' is not fully supported", module="jericho")
    return textworld


def default_cache_dir() -> Path:
    """``$TURNGYM_CACHE/textworld`` or ``~/.cache/turngym/textworld`` (`turngym.cache.cache_root`)."""
    return cache_dir("textworld")


def game_seed_of(pool_seed: int, index: int) -> int:
    """The generator seed of game ``index`` of the pool ``pool_seed`` (`numpy.random.SeedSequence`, stable)."""
    return int(np.random.SeedSequence([int(pool_seed), int(index)]).generate_state(1)[0] % (2**31 - 1))


def compiled_game(challenge: str, level: int, seed: int, cache_dir: str | Path | None = None) -> Path:
    """The compiled game file (``.z8``, its ``.json`` beside it) of one challenge game, generated on first use.

    Generation runs TextWorld's challenge maker in-process and the bundled Inform 7 compiler as a subprocess
    (twice: TextWorld checks the walkthrough on a first build), about 2 s per coin-collector game on an idle core.
    An exclusive lock file per game makes concurrent processes wait for one generation, and files are written
    under temporary names and renamed into place (the ``.z8`` last), so a crash leaves no half-written game.
    When TextWorld cannot build a quest from ``seed`` (treasure hunter, sometimes), the seeds
    ``game_seed_of(seed, 1..7)`` are tried in turn, so the result still depends only on the arguments.

    Args:
        challenge: A key of `CHALLENGES`.
        level: The challenge's difficulty level.
        seed: Generator seed.
        cache_dir: Cache root (default `default_cache_dir()`).

    Raises:
        EnvError: No quest could be built from ``seed`` and its derived seeds.
    """
    tw = import_textworld()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / f"textworld-{tw.__version__}" / f"{challenge}-level{level}"
    path = folder / f"seed{seed}.z8"
    if path.is_file() and path.with_suffix(".json").is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder / f"seed{seed}.lock"):
        if path.is_file() and path.with_suffix(".json").is_file():
            return path  # another process generated it while this one waited
        make_game = tw.challenges.CHALLENGES[challenge][1]
        tmp = folder / f"seed{seed}.tmp{os.getpid()}.z8"
        for attempt in range(_GENERATION_TRIES):
            options = tw.GameOptions()
            options.seeds = seed if attempt == 0 else game_seed_of(seed, attempt)
            options.path, options.force_recompile = str(tmp), True
            try:
                game = make_game(settings={"level": level}, options=options)
                break
            except tw.generator.QuestGenerationError:
                continue
        else:
            raise EnvError(
                f"TextWorld could not build a {challenge} level {level} game from seed {seed} "
                f"({_GENERATION_TRIES} tries); use another game_seed."
            )
        tw.generator.compile_game(game, options)
        os.replace(tmp.with_suffix(".json"), path.with_suffix(".json"))
        os.replace(tmp, path)
        tmp.with_suffix(".ni").unlink(missing_ok=True)  # the Inform 7 source
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl  # POSIX only, as TextWorld itself

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clean_text(text: str) -> str:
    """Game text without the interpreter's prompt / status lines and the end-of-game menu, blank runs collapsed."""
    text = text.split("Would you like to RESTART", 1)[0]
    text = re.sub(r"(?m)^[ \t]*>.*$", "", text)  # "> -= Cellar =-0/2"
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\s*\n\s*\n\s*", "\n\n", text).strip()


class TextWorldGame:
    """One compiled game running in TextWorld's interpreter, with its latest state.

    The interpreter runs in a host process (`turngym.envs.builtin.textworld_host`): when it crashes or hangs, the
    call raises `HostError` (an `EnvError`) instead of taking the caller's process with it.

    Args:
        path: A ``.z8`` file from `compiled_game`.
    """

    def __init__(self, path: Path):
        import_textworld()  # MissingExtraError in the caller's process, with the install command
        self.path = Path(path)
        self.state: dict[str, Any] = {}
        self._handle: int | None = None
        self._generation = 0
        self._open()

    def _open(self) -> None:
        from turngym.envs.builtin.textworld_host import HOST

        self._handle = HOST.request("open", str(self.path))
        self._generation = HOST.generation

    def _request(self, op: str, *args: Any) -> Any:
        from turngym.envs.builtin.textworld_host import HOST, HostError

        if self._handle is None or self._generation != HOST.generation:
            raise HostError(f"this game was lost when TextWorld's interpreter stopped; reset it ({self.path.name})")
        return HOST.request(op, self._handle, *args)

    def reset(self) -> None:
        """Restart the game from its initial state (in a new host, if the one that held it stopped)."""
        from turngym.envs.builtin.textworld_host import HOST

        if self._handle is None or self._generation != HOST.generation:
            self._open()
        self.state = self._request("reset")

    def play(self, command: str) -> tuple[bool, str]:
        """Send one command (lower-cased, whitespace collapsed): ``(True, the game's reply)``, or ``(False, why it
        was not sent)`` for an empty, over-long or meta command, a control or other non-printable character, a
        backslash, several commands chained with ``.`` or ``then``, or when the game is over."""
        cmd = " ".join(command.lower().split())
        if not cmd:
            return False, "empty command; write one, e.g. <command> look </command>"
        if len(cmd) > MAX_COMMAND_CHARS:
            return (
                False,
                f"command too long ({len(cmd)} characters, limit {MAX_COMMAND_CHARS}); send one short command",
            )
        bad = next((ch for ch in cmd if not ch.isprintable()), None)
        if bad is not None:  # control characters crash or hang the interpreter (NUL, U+000E-U+0015, ...)
            return False, f"command has a character the game cannot read (U+{ord(bad):04X}); write plain text"
        if "\\" in cmd:  # the interpreter's escape and meta-command prefix: "\\n..." loops forever on stdout
            return False, "command has a backslash, which the game cannot read; write plain text"
        if "." in cmd.rstrip(". ") or re.search(r"\bthen\b", cmd):
            # the game's parser runs "go east. take coin" or "go east then take coin" as several actions in one
            # turn, which TextWorld's state tracking does not follow (wrong walkthrough, markup in the state)
            return False, "one command per turn: no '.' or 'then' between commands; send the first one alone"
        # any word, not only the first: "quit," and "me, script" reach the interpreter's meta verbs too
        meta = next((w for w in re.findall(r"[\w-]+", cmd) if w in META_VERBS or w.startswith("tw-")), None)
        if meta is not None:
            return (
                False,
                f"{meta!r} is an interpreter command, not allowed here; send a game command such as 'look'",
            )
        if self.over:
            return False, "the game is over"
        self.state = self._request("step", cmd)
        return True, self.state["feedback"]

    @property
    def won(self) -> bool:
        return bool(self.state["won"])

    @property
    def over(self) -> bool:
        return bool(self.state["won"] or self.state["lost"])

    @property
    def remaining(self) -> list[str]:
        """The shortest command sequence that wins from here (TextWorld's ``policy_commands``)."""
        return list(self.state["policy_commands"] or [])

    @property
    def admissible(self) -> list[str]:
        """The valid commands here, sorted."""
        return list(self.state["admissible_commands"] or [])

    def intro(self) -> str:
        """The objective and the first room's description."""
        return (
            clean_text(str(self.state["objective"] or ""))
            + "\n\n"
            + clean_text(str(self.state["description"] or ""))
        )

    def anchor(self) -> str:
        """The state without history (a GiGPO anchor): room name and inventory, e.g.
        ``"room: Cellar | You are carrying nothing."``."""
        m = re.search(r"-= (.+?) =-", self.state["description"] or "")
        return f"room: {m.group(1) if m else '?'} | {' '.join(str(self.state['inventory'] or '').split())}"

    def close(self) -> None:
        """Close the game in the host (idempotent; a game the host lost is simply forgotten)."""
        from turngym.envs.builtin.textworld_host import HOST, HostError

        handle, self._handle = self._handle, None
        if handle is not None and self._generation == HOST.generation:
            with contextlib.suppress(HostError):
                HOST.request("close", handle)
