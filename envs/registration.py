"""`register` / `make` for turngym envs: versioned ids, lazy entry points, did-you-mean errors.

Ids look like Gymnasium's: ``"namespace/Name-vN"`` (e.g. ``"search/HopQA-v0"``). Wherever an id is taken
(`make`, `spec`, every command, ``env_id=`` of a config), an env that is not registered can also be named by
its class: ``"package.module:Class"`` or ``"path/to/file.py:Class"`` (`resolve_env_id` makes the path absolute,
so a saved config finds it again). `import_modules` imports modules that call `register` (``--import``).
An entry point is either a
``"module:Class"`` string, imported only when the env is made, or a callable returning an env. ``make``
merges the registered kwargs with the caller's, builds the env and wraps it in `MaxTurns` when a turn
limit is set (``make(id, max_turns=None)`` disables it).

Example:
    >>> import turngym
    >>> env = turngym.make("search/HopQA-v0", hops=2)
    >>> obs, info = env.reset(seed=0)
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turngym.errors import RegistryError

ENV_ID_RE = re.compile(r"^(?:(?P<namespace>[\w.-]+)/)?(?P<name>[\w.-]+?)-v(?P<version>\d+)$")

_UNSET: Any = object()


@dataclass
class EnvSpec:
    """A registered env.

    Attributes:
        id: ``"namespace/Name-vN"``.
        entry_point: ``"module:Class"`` or a callable returning an env.
        max_turns: Default turn limit (None: no `MaxTurns` wrapper).
        kwargs: Default constructor kwargs.
    """

    id: str
    entry_point: str | Callable[..., Any]
    max_turns: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def namespace(self) -> str | None:
        return parse_env_id(self.id)[0]

    @property
    def name(self) -> str:
        return parse_env_id(self.id)[1]

    @property
    def version(self) -> int:
        return parse_env_id(self.id)[2]

    def load(self) -> Callable[..., Any]:
        """Resolve the entry point to a callable (imports the module for ``"module:Class"``)."""
        if callable(self.entry_point):
            return self.entry_point
        mod_name, sep, attr = self.entry_point.partition(":")
        if not sep or not mod_name or not attr:
            raise RegistryError(
                f"env {self.id!r}: entry point {self.entry_point!r} is not of the form 'package.module:Class'."
            )
        module = importlib.import_module(mod_name)
        try:
            return getattr(module, attr)
        except AttributeError:
            raise RegistryError(
                f"env {self.id!r}: module {mod_name!r} has no attribute {attr!r} (entry point "
                f"{self.entry_point!r}); fix the registration."
            ) from None

    def make(self, **kwargs: Any) -> Any:
        """Build the env with the registered kwargs updated by ``kwargs``; see `make`."""
        from turngym.envs.wrappers import MaxTurns

        given = dict(kwargs)
        max_turns = kwargs.pop("max_turns", _UNSET)
        max_turns = self.max_turns if max_turns is _UNSET else max_turns
        if max_turns is not None and (not isinstance(max_turns, int) or max_turns < 1):
            raise RegistryError(
                f"make({self.id!r}): max_turns must be a positive int or None, got {max_turns!r}."
            )
        all_kwargs = {**copy.deepcopy(self.kwargs), **kwargs}
        env = self.load()(**all_kwargs)
        env.unwrapped.turngym_spec = self
        env.unwrapped.turngym_kwargs = given  # what `make` was given, so that a checker can build another like it
        if max_turns is not None:
            env = MaxTurns(env, max_turns)
        return env


_REGISTRY: dict[str, EnvSpec] = {}
registry = _REGISTRY
"""The env registry: id -> `EnvSpec`."""


def parse_env_id(env_id: str) -> tuple[str | None, str, int]:
    """Split ``"ns/Name-vN"`` into ``(ns, Name, N)``.

    Raises:
        RegistryError: when the id has no ``-vN`` version suffix or contains odd characters.
    """
    m = ENV_ID_RE.match(env_id) if isinstance(env_id, str) else None
    if m is None:
        raise RegistryError(
            f"Malformed env id {env_id!r}: expected 'namespace/Name-vN' (e.g. 'search/HopQA-v0', with a version "
            "suffix -v0, -v1, ...), or an unregistered env as 'package.module:Class' or 'path/to/file.py:Class'."
        )
    return m.group("namespace"), m.group("name"), int(m.group("version"))


def register(
    id: str,
    entry_point: str | Callable[..., Any],
    *,
    max_turns: int | None = None,
    kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> EnvSpec:
    """Register an env under a versioned id.

    Args:
        id: ``"namespace/Name-vN"``.
        entry_point: ``"package.module:Class"`` (imported lazily by `make`) or a callable returning an env.
        max_turns: Default turn limit applied by `make` through `MaxTurns` (None: no limit).
        kwargs: Default constructor kwargs.
        overwrite: Replace an existing registration instead of raising.

    Returns:
        The new `EnvSpec`.

    Raises:
        RegistryError: malformed id, or the id is already registered and ``overwrite`` is False.
    """
    parse_env_id(id)
    if not (callable(entry_point) or (isinstance(entry_point, str) and ":" in entry_point)):
        raise RegistryError(
            f"register({id!r}): entry_point must be 'package.module:Class' or a callable, got {entry_point!r}."
        )
    if id in _REGISTRY and not overwrite:
        raise RegistryError(f"env {id!r} is already registered; pass overwrite=True to replace it.")
    spec = EnvSpec(id=id, entry_point=entry_point, max_turns=max_turns, kwargs=dict(kwargs or {}))
    _REGISTRY[id] = spec
    return spec


def spec(env_id: str) -> EnvSpec:
    """The `EnvSpec` of a registered id (or of a ``module:Class`` / ``file.py:Class`` target), with a
    did-you-mean error for unknown ids."""
    _load_plugins()
    if env_id in _REGISTRY:
        return _REGISTRY[env_id]
    if isinstance(env_id, str) and ":" in env_id:
        return _target_spec(env_id)
    ns, name, version = parse_env_id(env_id)
    known = sorted(_REGISTRY)
    same_name = [k for k in known if parse_env_id(k)[:2] == (ns, name)]
    if same_name:
        raise RegistryError(
            f"Env {env_id!r} has no version v{version}. Registered versions: {', '.join(same_name)}."
        )
    close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.5)
    if not close:  # try matching on the bare name (e.g. 'HopQA-v0' without its namespace)
        by_name = {parse_env_id(k)[1].lower(): k for k in known}
        close = [by_name[n] for n in difflib.get_close_matches(name.lower(), list(by_name), n=3, cutoff=0.6)]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise RegistryError(f"Unknown env id {env_id!r}.{hint} Registered: {', '.join(known) or '(none)'}.")


def make(env_id: str, **kwargs: Any) -> Any:
    """Build a registered env.

    Args:
        env_id: A registered id such as ``"search/HopQA-v0"``, or ``"package.module:Class"`` /
            ``"path/to/file.py:Class"`` for an env class that is not registered (no registered defaults).
        **kwargs: Constructor kwargs overriding the registered ones; ``max_turns`` overrides the turn limit
            (None removes the `MaxTurns` wrapper).

    Returns:
        The env, wrapped in `MaxTurns` when a turn limit applies.

    Raises:
        RegistryError: unknown or malformed id (with suggestions).
    """
    return spec(env_id).make(**kwargs)


def check_env_kwargs(env_id: str, env_kwargs: dict[str, Any], *, key: str | None = "env_kwargs") -> None:
    """Check ``env_kwargs`` against the signature of the env's registered entry point; builds no env.

    The entry point's module is imported (a class or factory is looked up, nothing is called). ``max_turns`` is
    always accepted (`make` takes it); an entry point that takes ``**kwargs`` it does not forward accepts any.

    Args:
        env_id: A registered id, ``module:Class`` or ``path/to/file.py:Class``.
        env_kwargs: The constructor arguments given (the registered ones are added to them).
        key: How the messages name an entry: ``"env_kwargs"`` gives ``env_kwargs.name``, None ``name=...``.

    Raises:
        ConfigError: An entry the constructor does not take, with close matches and the accepted names; or an
            argument it requires that neither ``env_kwargs`` nor the registration gives.
    """
    from turngym.config import check_kwargs

    env_spec = spec(env_id)
    try:
        factory = env_spec.load()
    except ImportError:  # an optional dependency of the env is missing: `make` reports it when the run starts
        return
    what = f"env {env_id!r} ({getattr(factory, '__qualname__', factory)})"
    check_kwargs(factory, {k: v for k, v in env_kwargs.items() if k != "max_turns"}, what=what, key=key,
                 defaults=env_spec.kwargs)


_TARGETS: dict[str, EnvSpec] = {}


def is_env_target(env_id: str) -> bool:
    """Whether ``env_id`` names a class (``module:Class`` or ``path/to/file.py:Class``), not a registered id."""
    return isinstance(env_id, str) and ":" in env_id


def resolve_env_id(env_id: str) -> str:
    """``env_id`` with the file of a ``path/to/file.py:Class`` target made absolute (other ids unchanged)."""
    if not is_env_target(env_id):
        return env_id
    module_name, _, attr = env_id.rpartition(":")
    if module_name.endswith(".py"):
        return f"{Path(module_name).expanduser().resolve()}:{attr}"
    return env_id


def import_modules(modules: Any) -> None:
    """Import each module (a dotted name, or a ``.py`` file path) so that its `register` calls run.

    Raises:
        RegistryError: A module that cannot be imported (one line, with the reason).
    """
    for name in modules or ():
        _import_module(str(name), what=f"--import {name}")


def _import_module(name: str, *, what: str) -> Any:
    import sys

    if name.endswith(".py"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise RegistryError(f"{what}: no file {name!r}. Give a registered env id, module:Class or path/to/file.py:Class.")
        mod_name = "turngym_user_" + re.sub(r"\W", "_", str(path.with_suffix("")))
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        spec_ = importlib.util.spec_from_file_location(mod_name, path)
        if spec_ is None or spec_.loader is None:
            raise RegistryError(f"{what}: {name!r} cannot be imported as a Python file.")
        module = importlib.util.module_from_spec(spec_)
        sys.modules[mod_name] = module
        try:
            spec_.loader.exec_module(module)
        except Exception as err:
            del sys.modules[mod_name]
            raise RegistryError(f"{what}: importing {name} raised {type(err).__name__}: {err}") from err
        return module
    if "" not in sys.path:
        sys.path.insert(0, "")  # module:Class finds modules in the current directory, as `python -m` does
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise RegistryError(
            f"Cannot import module {name!r} for {what} ({err}). Make it importable (current directory or installed), "
            "or give path/to/file.py:Class."
        ) from None


def _target_spec(target: str) -> EnvSpec:
    """An unregistered `EnvSpec` for ``module:Class`` / ``path/to/file.py:Class`` (cached per target)."""
    key = resolve_env_id(target)
    if key in _TARGETS:
        return _TARGETS[key]
    module_name, _, attr = key.rpartition(":")
    if not module_name or not attr:
        raise RegistryError(
            f"Malformed env {target!r}: expected a registered id 'namespace/Name-vN', 'package.module:Class' "
            "or 'path/to/file.py:Class'."
        )
    module = _import_module(module_name, what=f"env {target!r}")
    cls = getattr(module, attr, None)
    if cls is None or not callable(cls):
        names = [n for n in dir(module) if isinstance(getattr(module, n, None), type) and not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RegistryError(f"env {target!r}: {module_name} has no class {attr!r}.{hint}")
    _TARGETS[key] = EnvSpec(id=key, entry_point=cls)
    return _TARGETS[key]


def list_envs() -> list[str]:
    """All registered ids, sorted."""
    _load_plugins()
    return sorted(_REGISTRY)


_PLUGINS_LOADED = False


def _load_plugins() -> None:
    """Import the modules that register turngym's own envs (built-ins, multi-agent) once."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    importlib.import_module("turngym.envs.builtin")
    try:
        importlib.import_module("turngym.envs.multi")
    except ModuleNotFoundError as e:  # the multi-agent package is optional while it is being built
        if e.name not in ("turngym.envs.multi",):
            raise
