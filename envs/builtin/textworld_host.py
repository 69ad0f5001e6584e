"""TextWorld's interpreter in a child process, so that a crash or a hang in it ends an episode, not the trainer.

TextWorld plays a game through jericho's Z-machine interpreter, native code loaded into the calling process. Model
written commands have crashed it (SIGSEGV on U+000E-U+0015) and hung it (an endless loop on ``\\n...``, writing
its error to stdout at about 100 MB/s); both took the whole training run with them. Known triggers are refused
before they are sent (`turngym.envs.builtin.textworld_games.TextWorldGame.play`); this module contains the
unknown ones.

One host process per parent process serves every game of that process (an env's current game and the fresh
copies `turn_value` replays on), each by a handle. The parent sends a request over a pipe and waits at most
`REPLY_TIMEOUT_S` for the reply. When the host dies or does not answer in time it is killed and `HostError` (an
`EnvError`: the rollout engine ends that episode with ``stop_reason="env_error"``) is raised; the next request
starts a new host. Games open in the old host are lost: their next command raises `HostError`, their next
``reset`` reopens them. The host is started with ``python -m`` (not `multiprocessing`), so a user's script without
a ``__main__`` guard works, and its stdout and stderr go to ``/dev/null``.

Run as ``python -m turngym.envs.builtin.textworld_host READ_FD WRITE_FD`` by `GameHost` only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from turngym.errors import EnvError

REPLY_TIMEOUT_S = 60.0
"""Longest wait for one reply (a command takes about 20 ms, loading a game well under a second)."""

START_TIMEOUT_S = 300.0
"""Longest wait for a new host to import TextWorld and say it is ready (a few seconds on an idle core)."""

STATE_KEYS = (
    "feedback", "won", "lost", "policy_commands", "admissible_commands", "description", "inventory", "objective",
)  # fmt: skip
"""The parts of TextWorld's game state that travel back after each command."""


class HostError(EnvError):
    """The interpreter's process crashed or hung; it was stopped, and the game it held is lost."""


class GameHost:
    """The parent's end: starts the host on first use and again after it died; one request at a time."""

    def __init__(self, timeout_s: float = REPLY_TIMEOUT_S):
        self.timeout_s = float(timeout_s)
        self.generation = 0  # bumped whenever a host goes: a handle is valid only in the generation that opened it
        self._proc: subprocess.Popen[bytes] | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None
        self._owner = 0  # the pid that started the host; a forked child starts its own
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The host's process id, or None when none is running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def request(self, op: str, *args: Any) -> Any:
        """Send ``(op, *args)`` and return the host's reply.

        Raises:
            HostError: The host died or did not answer within ``timeout_s`` (it is stopped; the next request
                starts a new one).
            EnvError: The operation failed inside the host (e.g. a game file it cannot load).
        """
        with self._lock:
            self._ensure_started()
            assert self._send is not None and self._recv is not None
            try:
                self._send.send((op, *args))
                answered = self._recv.poll(self.timeout_s)
                reply = self._recv.recv() if answered else None
            except (EOFError, OSError):
                answered, reply = True, None
            if reply is None:
                code = self._stop()
                why = f"exited with code {code}" if answered else f"did not answer within {self.timeout_s:g} s"
                what = f" {args[-1]!r}" if op in ("open", "step") else ""
                raise HostError(
                    f"TextWorld's interpreter {why} on {op}{what}; it was stopped and its games are lost."
                )
        status, value = reply
        if status != "ok":
            raise EnvError(f"TextWorld {op} failed: {value}")
        return value

    def close(self) -> None:
        """Stop the host (its games are lost; the next request starts a new one)."""
        with self._lock:
            if self._owner == os.getpid():
                self._stop()

    def _ensure_started(self) -> None:
        if self._proc is not None and self._owner == os.getpid() and self._proc.poll() is None:
            return
        if self._owner == os.getpid():
            self._stop()
        else:  # inherited through fork: the pipes belong to the parent's host; leave them alone
            self._proc = self._send = self._recv = None
            self.generation += 1
        to_host_r, to_host_w = os.pipe()
        from_host_r, from_host_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(to_host_r), str(from_host_w)],
                pass_fds=(to_host_r, from_host_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": _import_path()},
            )  # fmt: skip
        finally:
            os.close(to_host_r)
            os.close(from_host_w)
        self._send = Connection(to_host_w, readable=False)
        self._recv = Connection(from_host_r, writable=False)
        self._owner = os.getpid()
        try:
            ready = self._recv.recv() if self._recv.poll(START_TIMEOUT_S) else None
        except (EOFError, OSError):
            ready = None
        if ready != ("ok", "ready"):
            code = self._stop()
            raise HostError(f"TextWorld's interpreter process did not start (exit code {code}, reply {ready!r}).")

    def _stop(self) -> int | None:
        for conn in (self._send, self._recv):
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
        self._send = self._recv = None
        code = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            code = self._proc.wait()
            self._proc = None
            self.generation += 1
        return code


def _import_path() -> str:
    """``sys.path`` as the parent sees it, so the host imports the same turngym (an editable install, a checkout)."""
    return os.pathsep.join(p for p in sys.path if p)


HOST = GameHost()
"""This process's host (`TextWorldGame` uses it); stopped at exit."""
atexit.register(HOST.close)


# ---------------------------------------------------------------------------------------------- the host's side


def _snapshot(state: Any) -> dict[str, Any]:
    out = {k: state.get(k) for k in STATE_KEYS if k != "feedback"}
    out["feedback"] = str(state.feedback or "")
    for k in ("policy_commands", "admissible_commands"):
        out[k] = list(out[k] or [])
    return out


def serve(recv: Connection, send: Connection) -> None:
    """Answer requests until the parent closes its end: ``("open", path)`` -> handle, ``("reset", h)`` and
    ``("step", h, command)`` -> state dict, ``("close", h)`` -> None."""
    from turngym.envs.builtin.textworld_games import import_textworld

    tw = import_textworld()
    infos = tw.EnvInfos(
        admissible_commands=True, policy_commands=True, won=True, lost=True, description=True,
        inventory=True, objective=True,
    )  # fmt: skip
    games: dict[int, Any] = {}
    next_handle = 0
    send.send(("ok", "ready"))
    while True:
        try:
            op, *args = recv.recv()
        except (EOFError, OSError):
            break
        try:
            if op == "open":
                next_handle += 1
                games[next_handle] = tw.start(str(Path(args[0])), request_infos=infos)
                value: Any = next_handle
            elif op == "reset":
                value = _snapshot(games[args[0]].reset())
            elif op == "step":
                state, _score, _done = games[args[0]].step(args[1])
                value = _snapshot(state)
            elif op == "close":
                game = games.pop(args[0], None)
                value = game.close() if game is not None else None
            else:
                raise ValueError(f"unknown request {op!r}")
            send.send(("ok", value))
        except Exception as err:  # noqa: BLE001 -- reported to the parent, which raises it as an EnvError
            send.send(("error", f"{type(err).__name__}: {err}"))
    for game in games.values():
        with contextlib.suppress(Exception):
            game.close()


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
