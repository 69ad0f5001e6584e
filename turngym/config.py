"""Helpers for flat, frozen dataclass configs (STYLE.md item 8).

Every entry point has one flat frozen dataclass; each field carries a one-line docstring right under it.
YAML files are only dumps of such a dataclass (possibly partial), and the command line overrides fields
with ``key=value``. This module turns text and YAML into typed field values and fails early with a
:class:`~turngym.errors.ConfigError` that names the key, the value received and what was expected.

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``,
``tuple[X, ...]`` / ``tuple[X, Y]``, ``list[X]`` and ``dict[str, Any]``. A dict field also takes dotted
overrides: ``env_kwargs.num_hops=3`` sets one entry and keeps the others.

Example:
    >>> cfg = build_config(TrainConfig, load_yaml("turngym/configs/grpo.yaml"), ["lr=3e-4", "lora=true"])
    >>> print(dump_yaml(cfg))
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import os
import tempfile
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from turngym.errors import ConfigError

C = TypeVar("C")

__all__ = [
    "ConfigError",
    "build_config",
    "config_help",
    "config_markdown",
    "dump_yaml",
    "field_docs",
    "field_types",
    "from_dict",
    "load_yaml",
    "merge",
    "parse_overrides",
    "parse_value",
    "to_dict",
    "write_yaml_atomic",
]

_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}
_NONE = {"none", "null", "~", ""}


# --------------------------------------------------------------------------- introspection


def _check_dataclass(cls: type) -> None:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of the init fields of dataclass ``cls`` (postponed annotations evaluated)."""
    _check_dataclass(cls)
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstring written under each field of a dataclass, read from its source with ``ast``.

    Base classes are read first, so a subclass can re-document a field. Fields without a docstring map to
    ``""``.

    Args:
        cls: A dataclass type whose source is available.

    Returns:
        ``{field name: docstring}`` for every init field, in declaration order.
    """
    _check_dataclass(cls)
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        tree = ast.parse(source)
        node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
        if node is None:
            continue
        body = node.body
        for i, stmt in enumerate(body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            nxt = body[i + 1] if i + 1 < len(body) else None
            if (
                isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls) if f.init}


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            inner = args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
            return True, inner
    return False, tp


def type_name(tp: Any) -> str:
    """Human-readable name of a field type: ``int``, ``'grpo' | 'ppo'``, ``float | None``, ``tuple[int, ...]``."""
    optional, inner = _is_optional(tp)
    if optional:
        return f"{type_name(inner)} | None"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list, dict):
        args = typing.get_args(tp)
        inner_names = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner_names}]" if args else origin.__name__
    if tp is Any:
        return "Any"
    return getattr(tp, "__name__", str(tp))


# --------------------------------------------------------------------------- value coercion


class _BadValue(Exception):
    """Internal: a value does not fit a type; the message says what was expected."""


def _expected(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    if typing.get_origin(inner) is Literal:
        choices = ", ".join(repr(a) for a in typing.get_args(inner))
        return f"one of {choices}" + (" or none" if optional else "")
    return type_name(tp)


def _from_text(text: str, tp: Any) -> Any:
    """Parse command-line text into a value of type ``tp``."""
    optional, inner = _is_optional(tp)
    if optional and text.strip().lower() in _NONE:
        return None
    tp = inner
    origin = typing.get_origin(tp)
    s = text.strip()
    if tp is bool:
        low = s.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise _BadValue
    if tp is int:
        try:
            return int(s.replace("_", ""))
        except ValueError:
            try:  # accept "1e3" when it is an exact integer
                f = float(s)
            except ValueError:
                raise _BadValue from None
            if math.isfinite(f) and f == int(f):
                return int(f)
            raise _BadValue from None
    if tp is float:
        try:
            return float(s)
        except ValueError:
            raise _BadValue from None
    if tp is str:
        return text
    if origin is Literal:
        for choice in typing.get_args(tp):
            if s == str(choice):
                return choice
        raise _BadValue
    if origin in (tuple, list):
        if s.startswith("["):
            try:
                items = yaml.safe_load(s)
            except yaml.YAMLError:
                raise _BadValue from None
            if not isinstance(items, list):
                raise _BadValue
            return _check_value(items, tp)
        parts = [p.strip() for p in s.split(",")] if s else []
        return _check_value(parts, tp)
    if origin is dict or tp is dict:
        try:
            value = yaml.safe_load(s) if s else {}
        except yaml.YAMLError:
            raise _BadValue from None
        return _check_value(value if value is not None else {}, tp)
    if tp is Any:
        try:
            return yaml.safe_load(s)
        except yaml.YAMLError:
            return text
    if origin is Union or origin is types.UnionType:
        for arg in typing.get_args(tp):
            try:
                return _from_text(text, arg)
            except _BadValue:
                continue
    raise _BadValue


def _check_value(value: Any, tp: Any) -> Any:
    """Validate (and lightly coerce) an already-typed value, e.g. one read from YAML."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise _BadValue
    tp = inner
    origin = typing.get_origin(tp)
    if isinstance(value, str) and tp is not str and origin is not Literal and tp is not Any:
        return _from_text(value, tp)  # "1e-4" in YAML is a string; parse it like CLI text
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _BadValue
    if tp is int:
        if isinstance(value, bool):
            raise _BadValue
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _BadValue
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _BadValue
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _BadValue
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and str(value) in typing.get_args(tp):
            return str(value)
        raise _BadValue
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _BadValue
        args = typing.get_args(tp)
        if origin is list or (len(args) == 2 and args[1] is Ellipsis) or not args:
            item_tp = args[0] if args else Any
            items = [_check_value(v, item_tp) for v in value]
        else:
            if len(value) != len(args):
                raise _BadValue
            items = [_check_value(v, a) for v, a in zip(value, args)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _BadValue
        args = typing.get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _check_value(v, val_tp) for k, v in value.items()}
    if origin is Union or origin is types.UnionType:
        for arg in typing.get_args(tp):
            try:
                return _check_value(value, arg)
            except _BadValue:
                continue
        raise _BadValue
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _BadValue


def parse_value(key: str, value: Any, tp: Any, *, text: bool = False) -> Any:
    """Coerce ``value`` (command-line text or a YAML value) to field type ``tp``.

    Args:
        key: The field name, used in the error message.
        value: A typed value from YAML / Python, or command-line text when ``text`` is true.
        tp: The resolved field type.
        text: ``value`` is command-line text (``none`` means None for optional fields).

    Returns:
        The coerced value (tuples for tuple fields, dicts for dict fields).

    Raises:
        ConfigError: The value does not fit; the message names the key, the value and the expected type.
    """
    try:
        return _from_text(value, tp) if text and isinstance(value, str) else _check_value(value, tp)
    except _BadValue:
        raise ConfigError(
            f"Bad value for {key!r}: got {value!r}, expected {_expected(tp)}. "
            f"Fix: pass e.g. {key}={_example(tp)}."
        ) from None


def _example(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    origin = typing.get_origin(inner)
    if origin is Literal:
        return str(typing.get_args(inner)[0])
    examples = {bool: "true", int: "4", float: "0.001", str: "text"}
    if inner in examples:
        return examples[inner]
    if origin in (tuple, list):
        return "a,b"
    if origin is dict or inner is dict:
        return "'{key: value}'"
    return "none" if optional else "..."


# --------------------------------------------------------------------------- overrides and dicts


def _unknown_key(cls: type, key: str) -> ConfigError:
    names = list(field_types(cls))
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(
        f"Unknown config key {key!r} for {cls.__name__}.{hint} "
        f"Run `turngym train --help-config` to list the {len(names)} keys."
    )


def parse_overrides(cls: type, items: Sequence[str]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` command-line overrides into typed field values of dataclass ``cls``.

    A dotted key ``field.sub=value`` sets one entry of a ``dict`` field (the value is parsed as YAML);
    the result then holds a partial dict for that field, which :func:`merge` combines with the base.

    Args:
        cls: The config dataclass.
        items: Override strings, each ``key=value``.

    Returns:
        ``{field: value}`` with values coerced to the field types, in the order given (later wins).

    Raises:
        ConfigError: Not of the form ``key=value``, an unknown key (with close matches), or a bad value.
    """
    types_ = field_types(cls)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"Bad override {item!r}: expected key=value (e.g. lr=1e-4). "
                "Run `turngym train --help-config` to list the keys."
            )
        key, _, text = item.partition("=")
        key = key.strip()
        field, _, sub = key.partition(".")
        if field not in types_:
            raise _unknown_key(cls, key)
        tp = types_[field]
        if sub:
            _, inner = _is_optional(tp)
            if not (typing.get_origin(inner) is dict or inner is dict):
                raise ConfigError(
                    f"Bad override {item!r}: {field!r} is {type_name(tp)}, not a dict, so it has no "
                    f"entry {sub!r}. Fix: {field}={_example(tp)}."
                )
            try:
                value = yaml.safe_load(text) if text.strip() else ""
            except yaml.YAMLError:
                value = text
            current = out.get(field)
            entry = dict(current) if isinstance(current, dict) else {}
            _set_dotted(entry, sub.split("."), value)
            out[field] = _DictPatch(entry)
        else:
            out[field] = parse_value(field, text, tp, text=True)
    return out


def _set_dotted(d: dict[str, Any], parts: list[str], value: Any) -> None:
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            d[p] = nxt
        d = nxt
    d[parts[-1]] = value


class _DictPatch(dict):
    """A partial dict from dotted overrides: merged into the base value instead of replacing it."""


def _deep_merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def merge(base: Mapping[str, Any], *updates: Mapping[str, Any]) -> dict[str, Any]:
    """Apply updates to a config dict, later wins; partial dicts from dotted overrides are merged in."""
    out = dict(base)
    for upd in updates:
        for k, v in upd.items():
            if isinstance(v, _DictPatch):
                cur = out.get(k)
                out[k] = _deep_merge(cur if isinstance(cur, Mapping) else {}, v)
            else:
                out[k] = v
    return out


def from_dict(cls: type[C], d: Mapping[str, Any], *, source: str = "") -> C:
    """Build config dataclass ``cls`` from a (possibly partial) dict; missing keys take their defaults.

    Args:
        cls: The config dataclass.
        d: ``{field: value}``; values may be typed (YAML) or text.
        source: Where ``d`` came from (a file path), added to error messages.

    Returns:
        An instance of ``cls`` (its ``__post_init__`` cross-field checks have run).

    Raises:
        ConfigError: Unknown key, bad value, or a failed cross-field check.
    """
    where = f" (in {source})" if source else ""
    if not isinstance(d, Mapping):
        raise ConfigError(f"Expected a mapping of config keys{where}, got {type(d).__name__}: {d!r}.")
    types_ = field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key not in types_:
            err = _unknown_key(cls, str(key))
            raise ConfigError(f"{err}{where}") from None
        try:
            kwargs[key] = parse_value(key, dict(value) if isinstance(value, _DictPatch) else value, types_[key])
        except ConfigError as err:
            raise ConfigError(f"{err}{where}") from None
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{err}{where}") from None


def build_config(cls: type[C], base: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> C:
    """Defaults <- ``base`` dict (a preset) <- ``key=value`` overrides, validated into ``cls``."""
    return from_dict(cls, merge(base or {}, parse_overrides(cls, overrides)))


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain ``{field: value}`` dict of a config dataclass (tuples become lists), ready for YAML/JSON."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {cfg!r}")

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}


# --------------------------------------------------------------------------- YAML


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; an empty file gives ``{}``.

    Raises:
        ConfigError: The file is missing, is not valid YAML (the message gives line and column) or its
            top level is not a mapping.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file {str(p)!r} does not exist.") from None
    except OSError as err:
        raise ConfigError(f"Cannot read config file {str(p)!r}: {err}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"Malformed YAML in {str(p)!r}{where}: {problem}. Fix the file (it must be a mapping of "
            "`key: value` lines)."
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {str(p)!r} must hold a mapping of `key: value` lines, got a {type(data).__name__}."
        )
    return data


def dump_yaml(cfg: Any, *, comments: bool = True) -> str:
    """YAML text of a config dataclass: one ``key: value`` line per field, its docstring as a comment above."""
    docs = field_docs(type(cfg)) if comments else {}
    lines = [f"# {type(cfg).__name__}"] if comments else []
    for key, value in to_dict(cfg).items():
        if docs.get(key):
            lines.append(f"# {docs[key]}")
        text = yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False, width=10**6).strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        lines.append(text)
    return "\n".join(lines) + "\n"


def write_yaml_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never a half-written file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- help and docs


def _default_repr(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _sections(cls: type) -> dict[str, str]:
    """Section headings: a ``# --- heading`` comment line before a field starts a section."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    pending = ""
    for line in source.splitlines():
        s = line.strip()
        if s.startswith("# ---"):
            pending = s.lstrip("#- ").strip()
            continue
        if pending and ":" in s and not s.startswith(("#", '"', "'")):
            name = s.split(":", 1)[0].strip()
            if name.isidentifier():
                out[name] = pending
                pending = ""
    return out


def config_help(cls: type) -> str:
    """Plain-text listing of every field: ``name  type = default`` and its docstring (for ``--help-config``)."""
    docs = field_docs(cls)
    types_ = field_types(cls)
    sections = _sections(cls)
    lines: list[str] = [f"{cls.__name__} keys (override with key=value):"]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in sections:
            lines.append(f"\n[{sections[f.name]}]")
        lines.append(f"  {f.name}: {type_name(types_[f.name])} = {_default_repr(f)}")
        if docs.get(f.name):
            lines.append(f"      {docs[f.name]}")
    return "\n".join(lines) + "\n"


def config_markdown(cls: type, *, title: str | None = None, intro: str = "") -> str:
    """Markdown reference of a config dataclass: one table row per field (name, type, default, docstring)."""
    docs = field_docs(cls)
    types_ = field_types(cls)
    sections = _sections(cls)
    out = [f"# {title or cls.__name__}", ""]
    if intro:
        out += [intro.strip(), ""]
    header = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    started = False
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in sections or not started:
            if started:
                out.append("")
            if f.name in sections:
                out += [f"## {sections[f.name]}", ""]
            out += header
            started = True
        doc = docs.get(f.name, "").replace("|", "\\|")
        typ = type_name(types_[f.name]).replace("|", "\\|")
        default = _default_repr(f).replace("|", "\\|")
        out.append(f"| `{f.name}` | `{typ}` | `{default}` | {doc} |")
    return "\n".join(out) + "\n"
