"""``openenv/OpenEnv-v0``: an OpenEnv environment (``openenv-core``) played as a turngym `Env`, over its WebSocket API.

OpenEnv environments run as servers (a FastAPI app from ``openenv.core.env_server.create_fastapi_app``) and are
played through a client session (``openenv.core.GenericEnvClient``, one WebSocket session per episode stream):
``reset(seed=...)`` and ``step(action)`` return a typed observation with ``reward`` and ``done``; ``state`` returns
the server-side state. `OpenEnvEnv` is such a client, dressed as a turngym env:

* **actions**: the environment's ``Action`` type becomes one tool, named after it (``GuessAction`` -> ``guess``),
  whose parameters are the action's fields. With the default ``"tags"`` parser the model writes
  ``<guess> 17 </guess>`` (a one-field action from the plain text between the tags, converted to the field's type)
  or ``<guess> {"number": 17} </guess>`` (the action's JSON); with ``"hermes"`` a ``<tool_call>`` JSON call.
  ``<answer> 17 </answer>`` sends its content as a final action and ends the episode, won or not (turngym's
  "an answer ends the episode"). ``parse_action=`` replaces all of this with your own function from the whole
  model text to the action (the TRL way: the completion is the action); then there are no tags and no answers.
* **observations**: the server's observation (its fields minus ``reward`` / ``done`` / ``metadata``) rendered as
  text, ``"field: value"`` per line (a one-field observation is just its value), or by ``observation_to_text=``;
  it comes back as the ``role="tool"`` message of the action. The first observation (after ``reset``) is the task.
* **reward and done**: each step's reward is the server's reward for that step (0.0 without a server call);
  ``done`` ends the episode (``terminated=True``) with ``outcome = outcome_fn(rewards)`` (default: the sum of the
  episode's rewards, clipped to [0, 1]) and ``success = outcome >= success_threshold``. The same outcome is given
  when ``max_turns`` truncates the episode.
* **seeds**: ``reset(seed=s)`` resets the server with ``seed=s`` (a seed drawn from the env's RNG when ``s`` is
  None), and ``options`` go to the server's reset as keyword arguments.
* **bad input is data**: text that holds no action, or an action that fails the action schema, gets an error
  observation and no server call; an error the server reports (a rejected action, an exception in its ``step``)
  becomes an error observation and the episode goes on; a dead server, a dropped connection or a reply slower than
  ``message_timeout_s`` ends the episode with ``truncated=True``, ``info["truncated_by"] = "server_error"`` and
  ``info["server_error"]``; the next ``reset`` opens a new session (and restarts a server this env started).
  A server that cannot be reached at ``reset`` raises `EnvError` naming the URL.

With ``base_url=None`` the env serves an OpenEnv environment itself, with uvicorn on 127.0.0.1 (a free port) in a
background thread, shared by all envs of the process that serve the same environment (each env has its own
session); the last one to ``close()`` stops it. The default is `GuessNumberEnvironment`
(`turngym.envs.builtin.openenv_games`), a game written with openenv-core whose state carries ``gold_actions``.

Gold data, turn values and the scripted expert come from the server's state when it has a ``gold_actions`` field
(a list of action dicts: the ideal plan from the current state, whose last action ends the episode):
``gold_calls`` are the plan's actions but the last (they leave the episode open, as `check_env` expects of calls),
``gold_answer`` is the last one, ``info["value"]`` = 1 - remaining plan length / initial plan length (0 once the
episode is lost), and the expert plays the plan's next action (as a call). Its mistakes (``expert_action(rng,
noise)``) are a malformed action, an early final action, or a legal action off the plan; the last two draw from
the state's ``legal_actions`` (action dicts) when it has them (else a wrong call is a malformed action and an early
answer is ``"I don't know"``). Without ``gold_actions`` the gold data is empty and there is no expert.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from turngym.envs.core import Env, Score, Task, _short
from turngym.errors import ConfigError, EnvError, MissingExtraError
from turngym.tools.parsers import ParsedAction, get_parser, loads_lenient
from turngym.types import Message, ToolCall, ToolResult

__all__ = ["ActionTagsParser", "OpenEnvEnv", "import_openenv", "render_observation"]

_MAX_SESSIONS = 4096  # sessions a shared loopback server accepts (a rollout engine opens one per env)
_SERVER_ERROR = "Server error:"  # prefix of the RuntimeError openenv's client raises for an error reply


def import_openenv() -> Any:
    """The ``openenv.core`` package (openenv-core).

    Raises:
        MissingExtraError: ``openenv-core`` is not installed (``pip install 'turngym[openenv]'``).
    """
    try:
        import openenv.core
        import openenv.core.generic_client
    except ImportError:
        raise MissingExtraError("openenv-core", "openenv") from None
    return openenv.core


def render_observation(observation: dict[str, Any]) -> str:
    """Default text of an OpenEnv observation: ``"field: value"`` per line; a one-field observation is its value.

    ``reward``, ``done`` and ``metadata`` are left out (the server does not send them inside the observation);
    strings are shown as they are, other values as JSON.
    """
    fields = {k: v for k, v in observation.items() if k not in ("reward", "done", "metadata")}

    def show(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)

    if len(fields) == 1:
        return show(next(iter(fields.values())))
    return "\n".join(f"{k}: {show(v)}" for k, v in fields.items())


# ---------------------------------------------------------------------------------------------- action parsing
def _types_of(schema: dict[str, Any]) -> set[str]:
    t = schema.get("type")
    types = set(t) if isinstance(t, list) else {t} if isinstance(t, str) else set()
    for alt in schema.get("anyOf", []) or []:
        if isinstance(alt, dict):
            types |= _types_of(alt)
    return types


class ActionTagsParser:
    """``<guess> 17 </guess>`` or ``<guess> {"number": 17} </guess>`` for the action, ``<answer> ... </answer>``.

    The text between an action's tags is the action's JSON object when it starts with ``{``; otherwise it is the
    value of the action's one required field, converted to the field's JSON type (``"17"`` -> 17 for an integer
    field; left as text when it does not parse, so that the schema check reports it). The answer stays text (the
    env turns it into an action the same way). Never raises in `parse`.

    Args:
        tool_name: The action's tag.
        parameters: The action's JSON schema (``properties``, ``required``).
    """

    name = "openenv-tags"
    schemas_in_prompt = False  # the instructions teach the tag

    def __init__(self, tool_name: str, parameters: dict[str, Any]):
        self.tool_name = tool_name
        self.parameters = parameters
        props = parameters.get("properties", {}) or {}
        required = list(parameters.get("required", []) or [])
        self.field = required[0] if len(required) == 1 else (next(iter(props)) if len(props) == 1 else None)
        self._field_types = _types_of(props.get(self.field, {})) if self.field else set()
        value_schema = {"type": "object", "properties": {"value": {"type": "string"}}, "required": ["value"]}
        self._tags = get_parser(
            "tags", [{"type": "function", "function": {"name": tool_name, "parameters": value_schema}}]
        )

    def body_to_fields(self, body: str) -> tuple[dict[str, Any] | None, str | None]:
        """The action fields written in ``body`` (a tag's or an answer's content), or an error message."""
        text = body.strip()
        if text.startswith("{"):
            try:
                value, _ = loads_lenient(text)
            except ValueError as e:
                return None, f"invalid JSON in <{self.tool_name}>: {e}"
            if not isinstance(value, dict):
                return None, f"<{self.tool_name}> JSON must be an object of the action's fields"
            return value, None
        if self.field is None:
            names = ", ".join(self.parameters.get("properties", {}) or {}) or "(none)"
            return None, (
                f"the action has several fields ({names}); write them as a JSON object, "
                f'<{self.tool_name}> {{"field": value, ...}} </{self.tool_name}>'
            )
        return {self.field: self._convert(text)}, None

    def _convert(self, text: str) -> Any:
        if not self._field_types or "string" in self._field_types:
            return text
        try:
            return json.loads(text)
        except ValueError:
            return text

    def fields_to_body(self, fields: dict[str, Any]) -> str:
        """The tag content that `body_to_fields` reads back as ``fields``."""
        if self.field is not None and set(fields) == {self.field}:
            v = fields[self.field]
            if (
                isinstance(v, str)
                and v.strip() == v
                and v
                and not v.startswith("{")
                and "string" in self._field_types
            ):
                return v
            if (
                isinstance(v, (int, float, bool))
                and not isinstance(v, str)
                and "string" not in self._field_types
            ):
                return json.dumps(v)
        return json.dumps(fields, ensure_ascii=False).replace("</", "<\\/")

    def parse(self, text: str) -> ParsedAction:
        """Extract the action calls (fields parsed from the tag content), the answer text and errors."""
        parsed = self._tags.parse(text)
        calls: list[ToolCall] = []
        for c in parsed.calls:
            fields, err = self.body_to_fields(str(c.arguments.get("value", "")))
            if err is not None:
                parsed.errors.append(err)
            else:
                calls.append(
                    ToolCall(name=c.name, arguments=fields or {}, id=f"call_{len(calls)}", raw=c.raw)
                )
        return ParsedAction(calls=calls, answer=parsed.answer, errors=parsed.errors)

    def format(
        self, calls: list[ToolCall] | None = None, answer: str | None = None, thought: str = ""
    ) -> str:
        """Render action calls and/or an answer as tags that `parse` reads back."""
        value_calls = [
            ToolCall(name=c.name, arguments={"value": self.fields_to_body(c.arguments)}, id=c.id)
            for c in calls or []
        ]
        return self._tags.format(calls=value_calls, answer=answer, thought=thought)


class _FunctionParser:
    """``parse_action(text) -> fields``: the whole text is one action; no tags, no answers."""

    name = "openenv-function"
    schemas_in_prompt = False

    def __init__(
        self,
        tool_name: str,
        parse_action: Callable[[str], Any],
        format_action: Callable[[dict[str, Any]], str] | None,
    ):
        self.tool_name, self.parse_action, self.format_action = tool_name, parse_action, format_action

    def parse(self, text: str) -> ParsedAction:
        try:
            fields = self.parse_action(text)
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            return ParsedAction(errors=[f"no valid action in the text: {_short(str(e), 300)}"])
        if hasattr(fields, "model_dump"):
            fields = fields.model_dump(exclude={"metadata"})
        if not isinstance(fields, dict):
            raise EnvError(
                f"parse_action must return a dict of action fields or an Action, got {type(fields).__name__}; "
                "raise ValueError for text without a valid action."
            )
        return ParsedAction(calls=[ToolCall(name=self.tool_name, arguments=fields, id="call_0", raw=text)])

    def format(
        self, calls: list[ToolCall] | None = None, answer: str | None = None, thought: str = ""
    ) -> str:
        if answer is not None:
            raise ValueError("with parse_action there are no answers: every text is an action")
        if self.format_action is None:
            raise ValueError(
                "give format_action= (fields -> text) to write actions as text (the scripted expert)"
            )
        return "\n".join(
            [thought.strip()] * bool(thought.strip()) + [self.format_action(c.arguments) for c in calls or []]
        )


# ---------------------------------------------------------------------------------------------- loopback servers
class _LoopbackServer:
    """An OpenEnv FastAPI app served by uvicorn on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, app: Any, *, start_timeout_s: float = 20.0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(
            _quiet_disconnects(app), log_level="warning", access_log=False, timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self.sock]},
            name=f"openenv-server-{self.port}",
            daemon=True,
        )
        self.thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise EnvError(
                    f"the OpenEnv server on 127.0.0.1:{self.port} did not start within {start_timeout_s} s."
                )
            time.sleep(0.005)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.server.should_exit

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


def _quiet_disconnects(app: Any) -> Any:
    """The app, minus the traceback openenv's WebSocket handler logs when a client closes first."""
    from starlette.websockets import WebSocketDisconnect

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except WebSocketDisconnect:
            if scope.get("type") != "websocket":
                raise

    return wrapped


_SERVERS: dict[Any, list[Any]] = {}  # key -> [server, number of envs using it]
_SERVERS_LOCK = threading.Lock()


def _acquire_server(key: Any, make_app: Callable[[], Any]) -> _LoopbackServer:
    with _SERVERS_LOCK:
        entry = _SERVERS.get(key)
        if entry is not None and entry[0].alive:
            entry[1] += 1
            return entry[0]
        # a dead one is replaced; the envs still holding it get the new one when they reconnect (_connect)
        server = _LoopbackServer(make_app())
        _SERVERS[key] = [server, 1]
        return server


def _release_server(key: Any, server: _LoopbackServer) -> None:
    with _SERVERS_LOCK:
        entry = _SERVERS.get(key)
        if entry is None or entry[0] is not server:
            server.stop()  # replaced after it died: this env held the old one
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _SERVERS[key]
            server.stop()


class _SessionLoop:
    """One asyncio loop, in a daemon thread, for the WebSocket sessions of every `OpenEnvEnv` of the process.

    openenv's ``SyncEnvClient`` gives each client a thread of its own; a rollout engine holds hundreds of envs, so
    here the async ``GenericEnvClient``s share this loop and each call waits for its coroutine.
    """

    _lock = threading.Lock()
    _loop: Any = None

    @classmethod
    def loop(cls) -> Any:
        import asyncio

        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="openenv-sessions", daemon=True).start()
                cls._loop = loop
            return cls._loop

    @classmethod
    def run(cls, coro: Any, timeout_s: float) -> Any:
        """Run ``coro`` on the loop and wait for it; raises `TimeoutError` after ``timeout_s``."""
        import asyncio
        import concurrent.futures

        fut = asyncio.run_coroutine_threadsafe(coro, cls.loop())
        try:
            return fut.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"no result within {timeout_s:g} s") from None

    @classmethod
    def close_client(cls, client: Any, wait_s: float) -> None:
        """Close a client's session (best effort); wait at most ``wait_s`` (0: do not wait, e.g. a hung server)."""
        import asyncio

        async def close() -> None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken session is best effort
                pass

        fut = asyncio.run_coroutine_threadsafe(close(), cls.loop())
        if wait_s > 0:
            try:
                fut.result(timeout=wait_s)
            except Exception:  # noqa: BLE001, S110 - a close that hangs is left to the loop
                pass


# ---------------------------------------------------------------------------------------------- the env
def _tool_name_of(title: str) -> str:
    base = re.sub(r"Action$", "", title or "") or "act"
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()
    name = re.sub(r"[^a-z0-9_]", "_", name).strip("_") or "act"
    return "act" if name == "answer" else name


class OpenEnvEnv(Env):
    """An OpenEnv environment served on loopback (default) or reached at ``base_url``, played through its client.

    Args:
        base_url: URL of a running OpenEnv server (``http://host:port`` or ``ws://...``). None: serve ``env`` here.
        env: The OpenEnv ``Environment`` class (or factory) to serve when ``base_url`` is None; default
            `GuessNumberEnvironment` with its action and observation types.
        action_cls: The env's ``Action`` subclass. Needed with ``env``; with ``base_url`` it is optional (without it
            the action schema comes from the server's ``/schema``, and the server validates the actions).
        observation_cls: The env's ``Observation`` subclass (needed with ``env``).
        factory_kwargs: Keyword arguments of ``env`` (e.g. ``{"high": 64}`` for the default game).
        tool_name: Name of the action's tool / tag (default: from the action type, ``GuessAction`` -> ``guess``).
        instructions: The system message (default: how to write an action, from the action's schema).
        observation_to_text: Renders an observation dict (its fields) as text; default `render_observation`.
        parse_action: Whole model text -> the action (a dict of fields or an ``Action``); raise ``ValueError`` when
            the text holds none. Replaces the parser: no tags, no answers; the episode ends when the server says so.
        format_action: Action fields -> text, the inverse of ``parse_action`` (for the scripted expert).
        outcome_fn: Episode outcome from the list of its step rewards; default: their sum clipped to [0, 1].
        success_threshold: The episode counts as a success when its outcome is at least this.
        parser: ``"tags"`` (`ActionTagsParser`, default) or ``"hermes"`` (``<tool_call>`` JSON with the schema).
        connect_timeout_s: Timeout to open a session.
        message_timeout_s: Longest wait for a reply; a slower server ends the episode (``truncated_by="server_error"``).
        max_obs_chars: Longest observation text kept (cut with ``" ..."``).
        **kwargs: Passed to `Env` (``max_turns``, ...); ``max_calls_per_action`` defaults to 1.
    """

    parser_name = "tags"
    default_expert_noise = 0.2

    def __init__(
        self,
        *,
        base_url: str | None = None,
        env: Callable[..., Any] | None = None,
        action_cls: type | None = None,
        observation_cls: type | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        tool_name: str | None = None,
        instructions: str | None = None,
        observation_to_text: Callable[[dict[str, Any]], str] | None = None,
        parse_action: Callable[[str], Any] | None = None,
        format_action: Callable[[dict[str, Any]], str] | None = None,
        outcome_fn: Callable[[list[float]], float] | None = None,
        success_threshold: float = 1.0,
        parser: str = "tags",
        connect_timeout_s: float = 5.0,
        message_timeout_s: float = 10.0,
        max_obs_chars: int = 2000,
        **kwargs: Any,
    ):
        import_openenv()  # MissingExtraError, with the install command, before anything else
        if parser not in ("tags", "hermes"):
            raise ConfigError(f"parser must be 'tags' or 'hermes', got {parser!r}.")
        if base_url is not None and env is not None:
            raise ConfigError("give base_url (a running server) or env (served here), not both.")
        if min(connect_timeout_s, message_timeout_s) <= 0 or int(max_obs_chars) < 40:
            raise ConfigError(
                f"timeouts must be > 0 and max_obs_chars >= 40, got {connect_timeout_s}, {message_timeout_s}, "
                f"{max_obs_chars}."
            )
        if base_url is None:
            if env is None:
                from turngym.envs.builtin import openenv_games as games

                if action_cls is not None or observation_cls is not None:
                    raise ConfigError(
                        "action_cls / observation_cls go with env=; the default game has its own."
                    )
                env, action_cls, observation_cls = (
                    games.GuessNumberEnvironment,
                    games.GuessAction,
                    games.GuessObservation,
                )
            elif action_cls is None or observation_cls is None:
                raise ConfigError(
                    "env= needs action_cls= and observation_cls= (the env's Action / Observation types)."
                )
        elif factory_kwargs:
            raise ConfigError(
                "factory_kwargs configure env= (served here); a running server at base_url has its own."
            )
        self.action_cls = action_cls
        self.connect_timeout_s, self.message_timeout_s = float(connect_timeout_s), float(message_timeout_s)
        self.max_obs_chars = int(max_obs_chars)
        self.outcome_fn = outcome_fn or (lambda rewards: float(min(1.0, max(0.0, sum(rewards)))))
        self.success_threshold = float(success_threshold)
        self.observation_to_text = observation_to_text or render_observation

        self._server: _LoopbackServer | None = None
        self._server_key: Any = None
        self._make_app: Callable[[], Any] | None = None
        if base_url is None:
            self._start_server(env, action_cls, observation_cls, dict(factory_kwargs or {}))
            assert self._server is not None
            base_url = self._server.url
        try:  # a server started above is stopped again if anything below fails
            self.base_url = base_url.rstrip("/")
            schema = action_cls.model_json_schema() if action_cls is not None else self._fetch_action_schema()
            self.action_parameters = _tool_parameters(schema)
            self.tool_name = tool_name or _tool_name_of(str(schema.get("title", "")))
            usable = re.fullmatch(r"[A-Za-z_][\w-]{0,40}", self.tool_name) and self.tool_name not in (
                "answer",
                "think",
            )
            if not usable:
                raise ConfigError(
                    f"tool_name {self.tool_name!r} is not a usable tag name; pass tool_name='...'."
                )

            from turngym.tools.base import Tool

            tool = Tool(
                name=self.tool_name,
                description=str(
                    schema.get("description") or f"Send one {self.tool_name} action to the environment."
                ),
                parameters=self.action_parameters,
                fn=self._tool_fn,
            )
            if parse_action is not None:
                the_parser: Any = _FunctionParser(self.tool_name, parse_action, format_action)
            elif parser == "tags":
                the_parser = ActionTagsParser(self.tool_name, self.action_parameters)
            else:
                the_parser = parser
            self.instructions = instructions or self._default_instructions(the_parser)
            kwargs.setdefault("max_calls_per_action", 1)
            super().__init__(tools=[tool], parser=the_parser, **kwargs)
        except Exception:
            self._stop_server()
            raise
        self._client: Any = None
        # why the session broke (a dead server, a timeout); None while it works
        self._broken: str | None = None
        self._rewards: list[float] = []
        self._server_done = False
        self._step_reward = 0.0
        self._step_server: dict[str, Any] = {}
        self._state: dict[str, Any] = {}
        self._gold_n = 0
        self._obs_text = ""
        self._seed_arg: int | None = None

    # ------------------------------------------------------------------ server and session
    def _start_server(
        self, env: Any, action_cls: Any, observation_cls: Any, factory_kwargs: dict[str, Any]
    ) -> None:
        from openenv.core.env_server import create_fastapi_app

        factory = functools.partial(env, **factory_kwargs) if factory_kwargs else env
        env_cls = env if isinstance(env, type) else None
        concurrent = bool(getattr(env_cls, "SUPPORTS_CONCURRENT_SESSIONS", False))

        def make_app() -> Any:
            return create_fastapi_app(
                factory, action_cls, observation_cls, max_concurrent_envs=_MAX_SESSIONS if concurrent else 1
            )

        # envs of one process that serve the same environment share one server (a session each); an environment
        # that does not support concurrent sessions gets a server per env
        key = (
            (env, action_cls, observation_cls, json.dumps(factory_kwargs, sort_keys=True, default=repr))
            if concurrent
            else object()
        )
        self._server_key, self._make_app = key, make_app
        self._server = _acquire_server(key, make_app)

    def _stop_server(self) -> None:
        if self._server is not None:
            _release_server(self._server_key, self._server)
            self._server = None

    def _fetch_action_schema(self) -> dict[str, Any]:
        import httpx

        url = re.sub(r"^ws", "http", self.base_url.rstrip("/")) + "/schema"
        try:
            resp = httpx.get(url, timeout=self.connect_timeout_s)
            resp.raise_for_status()
            schema = resp.json()["action"]
        except Exception as e:
            raise EnvError(
                f"could not read the action schema from {url} ({type(e).__name__}: {e}); start the OpenEnv server, "
                "check base_url, or pass action_cls= (the env's Action type)."
            ) from e
        if not isinstance(schema, dict):
            raise EnvError(
                f"{url} returned an action schema that is not a JSON object: {_short(repr(schema), 200)}"
            )
        return schema

    def _connect(self) -> None:
        """A working session: reuse it, or open a new one (restarting a server this env started if it died)."""
        if self._client is not None and self._broken is None:
            return
        if self._client is not None:
            _SessionLoop.close_client(self._client, wait_s=0)
            self._client = None
        if self._server is not None and not self._server.alive and self._make_app is not None:
            _release_server(self._server_key, self._server)
            self._server = _acquire_server(self._server_key, self._make_app)
            self.base_url = self._server.url
        from openenv.core.generic_client import GenericEnvClient

        client = GenericEnvClient(
            base_url=self.base_url,
            connect_timeout_s=self.connect_timeout_s,
            message_timeout_s=self.message_timeout_s,
            mode="simulation",
        )
        try:
            _SessionLoop.run(client.connect(), self.connect_timeout_s + 5)
        except Exception as e:
            _SessionLoop.close_client(client, wait_s=0)
            raise EnvError(
                f"cannot open a session with the OpenEnv server at {self.base_url} ({type(e).__name__}: {e}); "
                "start the server or fix base_url."
            ) from e
        self._client, self._broken = client, None

    def _call(self, what: str, *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
        """``client.<what>(...)`` -> ``(result, None)``, or ``(None, error)``; a transport failure breaks the session."""
        if self._broken is not None:
            return None, self._broken
        try:
            coro = getattr(self._client, what)(*args, **kwargs)
            return _SessionLoop.run(coro, self.message_timeout_s + 5), None
        except RuntimeError as e:
            if str(e).startswith(_SERVER_ERROR):  # the server answered with an error; the session is fine
                return (
                    None,
                    f"the environment rejected the {what}: {_short(str(e)[len(_SERVER_ERROR) :].strip(), 500)}",
                )
            self._broken = (
                f"the OpenEnv session failed during {what} ({type(e).__name__}: {_short(str(e), 300)})"
            )
        except TimeoutError:
            self._broken = f"the OpenEnv server sent no reply to {what} within {self.message_timeout_s:g} s"
        except Exception as e:  # noqa: BLE001 - a dead server or dropped connection is data, not a crash
            self._broken = (
                f"the OpenEnv server is unreachable during {what} ({type(e).__name__}: {_short(str(e), 300)})"
            )
        return None, self._broken

    def close(self) -> None:
        """Close the session and stop a server this env started (when no other env uses it); idempotent."""
        if self._closed:
            return
        if getattr(self, "_client", None) is not None:
            # a hung server could hold the close handshake for seconds: then do not wait for it
            _SessionLoop.close_client(self._client, wait_s=2.0 if self._broken is None else 0)
            self._client = None
        self._stop_server()
        super().close()

    # ------------------------------------------------------------------ task
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start an episode: reset the server with ``seed`` (see `Env.reset`); ``options`` go to its reset."""
        self._seed_arg = seed
        return super().reset(seed=seed, options=options)

    def _sample_task(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Task:
        server_seed = int(self._seed_arg) if self._seed_arg is not None else int(rng.integers(0, 2**31 - 1))
        options = dict(options or {})
        if "seed" in options or not all(isinstance(k, str) for k in options):
            raise ConfigError(
                f"reset options are keyword arguments of the server's reset (not 'seed'); got {options!r}."
            )
        try:
            json.dumps(options)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"reset options must be JSON-serialisable (they are sent to the server): {e}"
            ) from e
        self._rewards, self._server_done, self._step_server = [], False, {}
        result, err = None, "no session"
        for _attempt in range(2):  # a session broken in the last episode gets one fresh try
            self._connect()
            result, err = self._call("reset", seed=server_seed, **options)
            if result is not None or self._broken is None:
                break
        if result is None:
            raise EnvError(f"reset of the OpenEnv env at {self.base_url} failed: {err}")
        self._obs_text = self._render(result.observation)
        state = self._fetch_state()
        gold = [a for a in (state.get("gold_actions") or []) if isinstance(a, dict)]
        self._gold_n = len(gold)
        meta: dict[str, Any] = {
            "id": f"openenv/{self.tool_name}/seed{server_seed}",
            "server_seed": server_seed,
        }
        if gold:
            meta["decisive_turns"] = list(range(len(gold)))
            meta["gold_turn_values"] = [i / len(gold) for i in range(len(gold) + 1)]
        return Task(
            prompt=self._obs_text,
            gold_answer=self._answer_text(gold[-1]) if gold else "",
            gold_calls=[{"name": self.tool_name, "arguments": dict(a)} for a in gold[:-1]],
            meta=meta,
        )

    def _fetch_state(self) -> dict[str, Any]:
        state, _err = self._call("state")
        self._state = dict(state) if isinstance(state, dict) else {}
        return self._state

    def _render(self, observation: Any) -> str:
        obs = observation if isinstance(observation, dict) else {"observation": observation}
        text = str(self.observation_to_text(obs))
        if len(text) > self.max_obs_chars:
            text = text[: self.max_obs_chars - 4].rstrip() + " ..."
        return text or "(empty observation)"

    def _answer_text(self, fields: dict[str, Any]) -> str:
        if isinstance(self.parser, ActionTagsParser):
            return self.parser.fields_to_body(fields)
        return json.dumps(fields, ensure_ascii=False)

    # ------------------------------------------------------------------ acting
    def _validate(self, fields: Any) -> str | None:
        """Why ``fields`` is not a valid action (checked here, before any server call), or None."""
        from turngym.tools.base import validate_arguments

        problems = validate_arguments(self.action_parameters, fields)
        if not problems and self.action_cls is not None:
            try:
                self.action_cls.model_validate(fields)
            except ValueError as e:
                errors = getattr(e, "errors", None)
                problems = (
                    [f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg')}" for d in errors()]
                    if errors
                    else [str(e)]
                )
        return "; ".join(problems) if problems else None

    def _act(self, fields: Any, call_id: str = "") -> ToolResult:
        """Send one action; the result is the rendered observation, or an error (invalid action, server error)."""
        problem = self._validate(fields)
        if problem is not None:
            return ToolResult(
                name=self.tool_name, ok=False, error=f"invalid action: {problem}", call_id=call_id
            )
        if self._server_done:
            return ToolResult(name=self.tool_name, ok=False, error="the episode is over", call_id=call_id)
        t0 = time.perf_counter()
        result, err = self._call("step", dict(fields))
        if result is None:
            return ToolResult(
                name=self.tool_name, ok=False, error=err, call_id=call_id, duration_s=time.perf_counter() - t0
            )
        reward = float(result.reward) if isinstance(result.reward, (int, float)) else 0.0
        self._rewards.append(reward)
        self._step_reward += reward
        self._server_done = bool(result.done)
        self._step_server = {"server_reward": result.reward, "server_done": bool(result.done)}
        self._obs_text = self._render(result.observation)
        return ToolResult(
            name=self.tool_name,
            ok=True,
            output=self._obs_text,
            call_id=call_id,
            duration_s=time.perf_counter() - t0,
            meta={"reward": reward, "done": bool(result.done)},
        )

    def _tool_fn(self, **fields: Any) -> ToolResult:
        if self.task is None or self._done:
            return ToolResult(name=self.tool_name, ok=False, error="no running episode; reset the env first")
        return self._act(fields)

    def _run_tools(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        # actions go to the one session in order, on the caller's thread
        out = []
        for c in calls:
            if c.name != self.tool_name:
                out.append(
                    ToolResult(
                        name=c.name,
                        ok=False,
                        call_id=c.id,
                        error=f"unknown tool {c.name!r}; the environment's action is {self.tool_name!r}",
                    )
                )
            else:
                out.append(self._act(c.arguments, c.id))
        return out

    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        """`Env.step`; the server's ``done`` ends the episode, a broken session truncates it (see the module doc)."""
        self._step_reward, self._step_server = 0.0, {}
        obs, _reward, terminated, truncated, info = super().step(action)
        info.update(self._step_server)
        reward = float(self._step_reward)
        if terminated:
            return obs, reward, True, False, info
        if self._server_done:
            info.pop("truncated_by", None)
            info.update(self._end_info(None, self._episode_score()))
            self._done = True
            return obs, reward, True, False, info
        if self._broken is not None:
            info.update(self._end_info(None, self._episode_score()))
            info["truncated_by"], info["server_error"] = "server_error", self._broken
            self._done = True
            return obs, reward, False, True, info
        return obs, reward, terminated, truncated, info

    def _score(self, answer: str, task: Task) -> Score:
        """Send the answer as the final action; the outcome comes from the episode's rewards."""
        if isinstance(self.parser, ActionTagsParser):
            fields, err = self.parser.body_to_fields(answer)
        else:
            try:
                fields, err = loads_lenient(answer)[0], None
            except ValueError as e:
                fields, err = None, f"the answer is not the action's JSON object ({e})"
        info: dict[str, Any] = {}
        if err is None:
            res = self._act(fields)
            if not res.ok:
                err = res.error
            else:
                info["final_observation"] = res.output
        if err is not None:
            info["answer_error"] = err
        score = self._episode_score()
        score.info.update(info)
        return score

    def _episode_score(self) -> Score:
        outcome = float(self.outcome_fn(list(self._rewards)))
        if not np.isfinite(outcome):
            raise EnvError(
                f"outcome_fn returned {outcome!r} for rewards {self._rewards}; it must return a finite float."
            )
        return Score(outcome=outcome, success=outcome >= self.success_threshold)

    def end_info(self, final_answer: str | None = None) -> dict[str, Any]:
        """End-of-episode info for an episode cut without an answer: the outcome of the rewards so far."""
        if self.task is None:
            raise EnvError("end_info() needs a task; call reset() first.")
        return self._end_info(final_answer, self._episode_score())

    def _error_text(self, errors: list[str], *, some_calls: bool) -> str:
        head = (
            "Error: " + "; ".join(_short(e).rstrip(".") for e in errors) + "."
            if errors
            else "Error: no action found."
        )
        if some_calls or isinstance(self.parser, _FunctionParser):
            return head
        return f"{head} Send one action per turn: {self._action_example()}"

    def _action_example(self) -> str:
        if isinstance(self.parser, ActionTagsParser):
            field = self.parser.field
            inner = field if field is not None else '{"field": value, ...}'
            return f"<{self.tool_name}> {inner} </{self.tool_name}>"
        return f'<tool_call>{{"name": "{self.tool_name}", "arguments": {{...}}}}</tool_call>'

    def _default_instructions(self, parser: Any) -> str:
        from turngym.tools.base import describe_parameters

        fields = describe_parameters(self.action_parameters)
        if isinstance(parser, _FunctionParser):
            return f"Interact with the environment: each message you send is one action ({fields})."
        if isinstance(parser, ActionTagsParser):
            how = (
                f"<{self.tool_name}> VALUE </{self.tool_name}>, VALUE being the {fields}"
                if parser.field is not None
                else f'<{self.tool_name}> {{"field": value, ...}} </{self.tool_name}> with the fields {fields}'
            )
        else:
            how = f"a call of the {self.tool_name} tool ({fields})"
        return (
            f"Interact with the environment. Each turn, send one action as {how}; the environment replies with "
            "what happened. To end the episode with a final action, write it inside <answer> ... </answer>."
        )

    # ------------------------------------------------------------------ values and expert
    def _add_progress_info(self, info: dict[str, Any]) -> None:
        info["anchor_obs"] = getattr(self, "_last_anchor", self._obs_text)
        info["anchor"] = self._last_anchor = self._obs_text
        if not self._gold_n:
            return
        state = self._fetch_state() if self._broken is None else {}
        remaining = len(state.get("gold_actions") or []) if state else self._gold_n
        done = max(0, min(self._gold_n, self._gold_n - remaining))
        lost = (self._server_done or self._done) and not self._episode_score().success
        value = 0.0 if lost else done / self._gold_n
        info["progress"] = 0 if lost else done
        info["value"] = value
        info["value_delta"] = round(value - self._last_value, 12)
        self._last_value = value

    def _progress(self, history: list[Message]) -> int | None:
        return None

    def turn_value(self, history: list[Message] | None = None) -> float:
        """Ground-truth value of the current state: 1 - remaining plan / initial plan (needs ``gold_actions``).

        Args:
            history: Only the current episode (None) can be valued: the state lives on the server.
        """
        if self.task is None:
            raise EnvError("turn_value() needs a task; call reset() first.")
        if history is not None and history != self._history:
            raise EnvError(
                "OpenEnvEnv.turn_value() values only the current episode; the state lives on the server."
            )
        return float(self._last_value)

    def _expert_next(self) -> ToolCall | str:
        plan = self._state.get("gold_actions") if self._broken is None else None
        if not plan:
            raise NotImplementedError(
                f"OpenEnvEnv has a scripted expert only for servers whose state has 'gold_actions' ({self.base_url}'s "
                "state has none now)."
            )
        return ToolCall(name=self.tool_name, arguments=dict(plan[0]))

    def _off_plan_actions(self) -> list[dict[str, Any]]:
        plan = self._state.get("gold_actions") or []
        legal = self._state.get("legal_actions") if self._broken is None else None
        return [a for a in legal or [] if isinstance(a, dict) and (not plan or a != plan[0])]

    def _expert_wrong_call(self, rng: np.random.Generator) -> ToolCall | None:
        """A legal action off the plan (from the state's ``legal_actions``); None without them."""
        others = self._off_plan_actions()
        if not others:
            return None
        return ToolCall(name=self.tool_name, arguments=dict(others[int(rng.integers(0, len(others)))]))

    def _expert_wrong_answer(self, rng: np.random.Generator) -> str:
        """A legal action off the plan, as a final action (``"I don't know"`` without ``legal_actions``)."""
        final = (self._state.get("gold_actions") or [None])[-1]
        others = [a for a in self._off_plan_actions() if a != final]
        if not others:
            return "I don't know"
        return self._answer_text(others[int(rng.integers(0, len(others)))])

    def expected_expert_success(self, noise: float, plan_lengths: dict[int, float] | None = None) -> float:
        """Not available in closed form (the plan lengths live on the server).

        Raises:
            NotImplementedError: always; estimate the rate by playing `expert_action` over seeds.
        """
        raise NotImplementedError(
            "OpenEnvEnv has no closed-form expert success; play expert_action over seeds."
        )


def _tool_parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """The tool parameters of an action JSON schema: its properties but ``metadata`` (OpenEnv's base field)."""
    props = {k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"}
    params: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "required": [r for r in schema.get("required", []) or [] if r in props],
        "additionalProperties": bool(schema.get("additionalProperties", False)),
    }
    if "$defs" in schema:
        params["$defs"] = schema["$defs"]
    return params
