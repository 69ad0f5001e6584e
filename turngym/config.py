"""Helpers for flat, frozen dataclass configs (STYLE.md item 8).

Every entry point has one flat frozen dataclass; each field carries a one-line docstring right under it.
YAML files are only dumps of such a dataclass (possibly partial), and the command line overrides fields
with ``key=value``. This module turns text and YAML into typed field values and fails early with a
:class:`~turngym.errors.ConfigError` that names the key, the value received and what was expected.

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``,
``tuple[X, ...]`` / ``tuple[X, Y]``, ``list[X]`` and ``dict[str, Any]``. A dict field also takes dotted
overrides: ``env_kwargs.hops=2`` sets one entry and keeps the others.

Every numeric field is checked by one validator, :func:`check_number` (through :func:`check_fields`): NaN and
±inf are rejected for every float, and ints can be given a range. YAML (config files and the YAML values of
overrides) is read by one strict loader, :func:`load_yaml_text`: UTF-8 only, no NUL bytes, no duplicate keys,
no anchors or aliases (so an alias bomb is never expanded), at most :data:`MAX_YAML_DEPTH` levels of nesting.

Example:
    >>> cfg = build_config(TrainConfig, load_yaml("turngym/configs/grpo.yaml"), ["lr=3e-4", "lora=true"])
    >>> print(dump_yaml(cfg))
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import functools
import inspect
import math
import numbers
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
    "accepted_kwargs",
    "build_config",
    "check_fields",
    "check_kwargs",
    "check_number",
    "config_help",
    "config_markdown",
    "dump_yaml",
    "field_docs",
    "field_types",
    "from_dict",
    "load_yaml",
    "load_yaml_text",
    "merge",
    "parse_overrides",
    "parse_value",
    "to_dict",
    "undot",
    "write_yaml_atomic",
]

_DICTS = (dict, Mapping)  # origins of the mapping field types (``dict[str, Any]``, ``Mapping[str, Any]``)
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
    return dict(_field_types(cls))


@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.init)


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
    if origin in (tuple, list, *_DICTS):
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
                items = _strict_load(s)
            except yaml.YAMLError:
                raise _BadValue from None
            if not isinstance(items, list):
                raise _BadValue
            return _check_value(items, tp)
        parts = [p.strip() for p in s.split(",")] if s else []
        return _check_value(parts, tp)
    if origin in _DICTS or tp is dict:
        try:
            value = _strict_load(s) if s else {}
        except yaml.YAMLError:
            raise _BadValue from None
        return _check_value(value if value is not None else {}, tp)
    if tp is Any:
        try:
            return _strict_load(s)
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
    if origin in _DICTS or tp is dict:
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
            f"Bad value for {key!r}: got {_short(value)}, expected {_expected(tp)}. "
            f"Fix: pass e.g. {key}={_example(tp)}."
        ) from None
    except _YamlRejected as err:
        raise ConfigError(f"Refused YAML in the value of {key!r}{_where(err.mark)}: {err.problem}.") from None


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
    if origin in _DICTS or inner is dict:
        return "'{key: value}'"
    return "none" if optional else "..."


# --------------------------------------------------------------------------- field checks


def check_number(key: str, value: Any, lo: float | None = None, hi: float | None = None, *, note: str = "") -> str:
    """The one check every numeric config value goes through: finite, and within ``[lo, hi]`` when given.

    Args:
        key: The field name, used in the message.
        value: An int or float (bools and None are left alone).
        lo: Smallest allowed value, or None.
        hi: Largest allowed value, or None.
        note: Replaces ``in [lo, hi]`` in the message (e.g. ``"0 (off), 1 or 2"``).

    Returns:
        ``""`` when the value is fine, else a one-line message that states the value and the fix.
    """
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return ""
    if not math.isfinite(value):
        return (f"{key}={value} is not a finite number: NaN and ±inf are rejected for every numeric key. "
                f"Fix: {key}=<a finite number>.")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = note or f"in [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        fix = lo if lo is not None and value < lo else hi
        return f"{key}={_short(value)} is out of range: it must be {span}. Fix: {key}={fix}."
    return ""


def _fits(value: Any, tp: Any) -> bool:
    """Whether an already-built field value has type ``tp`` (ints pass for floats; bools never pass for numbers)."""
    optional, inner = _is_optional(tp)
    if value is None:
        return optional or tp is Any
    tp = inner
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        args = typing.get_args(tp)
        if not args:
            return True
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if origin in _DICTS or tp is dict:
        args = typing.get_args(tp)
        key_tp, val_tp = args if len(args) == 2 else (Any, Any)
        return isinstance(value, Mapping) and all(_fits(k, key_tp) and _fits(v, val_tp) for k, v in value.items())
    if origin is Union or origin is types.UnionType:
        return any(_fits(value, a) for a in typing.get_args(tp))
    return isinstance(tp, type) and isinstance(value, tp)


def check_fields(cfg: Any, ranges: Mapping[str, tuple[Any, ...]] | None = None) -> str:
    """Type-check every field of a config dataclass instance and run :func:`check_number` on its numbers.

    Call it first in ``__post_init__``: the cross-field checks after it then see typed, finite values.

    Args:
        cfg: A config dataclass instance.
        ranges: ``{field: (lo, hi)}`` or ``{field: (lo, hi, note)}`` for numeric fields (see :func:`check_number`).

    Returns:
        ``""`` when every field is fine, else the message of the first bad one.
    """
    ranges = ranges or {}
    for name, tp in field_types(type(cfg)).items():
        value = getattr(cfg, name)
        if not _fits(value, tp):
            return (f"{name}={_short(value)} is a {type(value).__name__}, expected {_expected(tp)}. "
                    f"Fix: {name}={_example(tp)}.")
        lo, hi, *note = ranges.get(name, (None, None))
        msg = check_number(name, value, lo, hi, note=note[0] if note else "")
        if msg:
            return msg
    return ""


def accepted_kwargs(factory: Any) -> list[str] | None:
    """Keyword arguments ``factory(**kwargs)`` accepts, or None when it takes any (a ``**kwargs`` not forwarded).

    For a class, ``**kwargs`` of an ``__init__`` are taken to be forwarded to the next ``__init__`` in the MRO
    (cooperative ``super().__init__(**kwargs)``), whose names are added; a function's ``**kwargs`` accepts any.
    """
    if isinstance(factory, type):
        names: list[str] = []
        for klass in factory.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            try:
                params = inspect.signature(init).parameters.values()
            except (TypeError, ValueError):
                return None
            names += [p.name for p in params
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self" and p.name not in names]
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                return names
        return names
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def parse_kwarg_items(items: Sequence[str], *, prefix: str = "env_kwargs.") -> dict[str, Any]:
    """``["name=value", ...]`` (each name optionally written ``prefix + name``) as a dict; values as YAML scalars.

    Raises:
        ConfigError: An item without ``=`` or with a name that is not an identifier.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.removeprefix(prefix) if prefix else key
        if not sep or not key.isidentifier():
            raise ConfigError(f"Bad argument {_short(item)}: expected key=value (a constructor argument).")
        out[key] = parse_value(key, value, Any, text=True)
    return out


def required_kwargs(factory: Any) -> list[str]:
    """Parameters ``factory`` cannot be called without (no default; read from its signature, nothing is called)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def check_kwargs(factory: Any, kwargs: Mapping[str, Any], *, what: str, key: str | None = None,
                 defaults: Mapping[str, Any] | None = None) -> None:
    """Raise when ``kwargs`` holds a name ``factory`` does not accept, or lacks one it requires (read from its
    signature; nothing is called).

    Args:
        factory: A class or function.
        kwargs: The keyword arguments it would get.
        what: What ``factory`` builds, for the message (e.g. ``"env 'search/HopQA-v0' (HopQAEnv)"``).
        key: The dict config key that holds ``kwargs`` (e.g. ``"env_kwargs"``); None for ``name=value`` arguments.
        defaults: Keyword arguments the caller adds to ``kwargs`` (an env's registered ones): they count as given.

    Raises:
        ConfigError: An unknown name, with close matches and the accepted names; or a required one missing.
    """
    known = accepted_kwargs(factory)
    for name in kwargs if known is not None else ():
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            given = f"{key}.{name}" if key else f"{name}=..."
            raise ConfigError(
                f"Unknown keyword argument {_short(name)} for {what} (from {given}).{hint} "
                f"It accepts: {', '.join(known) or '(none)'}. Fix: drop {given}, or use one of them."
            )
    missing = [n for n in required_kwargs(factory) if n not in kwargs and n not in (defaults or {})]
    if missing:
        how = " ".join(f"{key}.{n}=VALUE" if key else f"{n}=VALUE" for n in missing)
        raise ConfigError(f"{what} needs the constructor argument(s) {', '.join(map(repr, missing))}, which were not "
                          f"given. Fix: add {how}.")


# --------------------------------------------------------------------------- overrides and dicts


#: Names other frameworks (TRL, HF Trainer) use for a config key; an unknown key found here suggests the key.
KEY_ALIASES = {
    "learning_rate": "lr", "max_steps": "steps", "num_steps": "steps", "num_generations": "group_size",
    "beta": "kl_coef", "kl_beta": "kl_coef", "max_completion_length": "max_new_tokens", "env": "env_id",
    "env_name": "env_id", "model_name": "model", "model_name_or_path": "model", "output_dir": "run_dir",
}


def _unknown_key(cls: type, key: str) -> ConfigError:
    names = list(field_types(cls))
    alias = KEY_ALIASES.get(key)
    close = [alias] if alias in names else difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(
        f"Unknown config key {_short(key)} for {cls.__name__}.{hint} "
        f"Run `turngym train --help-config` to list the {len(names)} keys."
    )


def parse_overrides(cls: type, items: Sequence[str]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` command-line overrides into typed field values of dataclass ``cls``.

    A dotted key ``field.sub=value`` sets one entry of a ``dict`` field (the value is parsed as YAML);
    the result then holds a partial dict for that field, which :func:`merge` combines with the base. A class may
    name short prefixes for its dict fields in a ``DICT_ALIASES`` class attribute (`TrainConfig` maps ``credit``
    to ``credit_overrides``, so ``credit.alpha=0.5`` sets ``credit_overrides.alpha``).

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
                f"Bad override {_short(item)}: expected key=value (e.g. lr=1e-4). "
                "Run `turngym train --help-config` to list the keys."
            )
        key, _, text = item.partition("=")
        key = _unsection_key(cls, key.strip())  # sampling.temperature -> temperature
        field, _, sub = key.partition(".")
        if sub:
            field = _dict_aliases(cls).get(field, field)
        if field not in types_:
            raise _unknown_key(cls, key)
        tp = types_[field]
        if sub:
            _, inner = _is_optional(tp)
            if not (typing.get_origin(inner) in _DICTS or inner is dict):
                raise ConfigError(
                    f"Bad override {_short(item)}: {field!r} is {type_name(tp)}, not a dict, so it has no "
                    f"entry {sub!r}. Fix: {field}={_example(tp)}."
                )
            try:
                value = _strict_load(text) if text.strip() else ""
            except yaml.YAMLError:
                value = text
            except _YamlRejected as err:
                raise ConfigError(f"Refused YAML in the value of {key!r}{_where(err.mark)}: {err.problem}.") from None
            current = out.get(field)
            entry = dict(current) if isinstance(current, dict) else {}
            parts = sub.split(".")
            if len(parts) >= MAX_YAML_DEPTH:
                raise ConfigError(f"Bad override {_short(item)}: the key is nested {len(parts)} levels deep, more "
                                  f"than {MAX_YAML_DEPTH}. Fix: set the entry as a YAML value ({field}.a={{b: 1}}).")
            _set_dotted(entry, parts, value)
            out[field] = _DictPatch(entry)
        else:
            out[field] = parse_value(field, text, tp, text=True)
    return out


def config_sections(cls: type) -> Mapping[str, tuple[str, tuple[str, ...]]]:
    """``{section: (title, fields)}`` a config class declares in a ``SECTIONS`` class attribute (``{}`` if none)."""
    return getattr(cls, "SECTIONS", None) or {}


def _is_dict_field(cls: type, name: str) -> bool:
    tp = field_types(cls).get(name)
    if tp is None:
        return False
    _, inner = _is_optional(tp)
    return typing.get_origin(inner) in _DICTS or inner is dict


def section_field(cls: type, section: str, sub: str) -> str:
    """The field that ``section.sub`` names: ``sub`` itself when it is a field of the section, else
    ``f"{section}_{sub}"`` (``sft.steps`` -> ``sft_steps``), else the section's namesake field for ``name``
    (``model.name`` -> ``model``). Raises `ConfigError` with close matches otherwise."""
    title, fields = config_sections(cls)[section]
    for cand in (sub, f"{section}_{sub}"):
        if cand in fields:
            return cand
    if sub == "name" and section in fields:
        return section
    short = sorted({f.removeprefix(f"{section}_") for f in fields})
    close = list(dict.fromkeys(c.removeprefix(f"{section}_") for c in
                               difflib.get_close_matches(sub, short + list(fields), n=3, cutoff=0.6)))
    hint = f" Did you mean {', '.join(f'{section}.{c}' for c in close)}?" if close else ""
    raise ConfigError(f"Unknown key {section}.{sub}: section {section!r} ({title}) has no field {sub!r}.{hint} "
                      f"Its fields: {', '.join(fields)}.")


def _section_head(cls: type, head: str) -> bool:
    """``head.x`` keys go to section ``head``: a declared section that is neither a dict field nor a dict alias."""
    return head in config_sections(cls) and not _is_dict_field(cls, head) and head not in _dict_aliases(cls)


def _unsection_key(cls: type, key: str) -> str:
    """``section.sub[.rest]`` -> ``field[.rest]`` (the flat key); other keys unchanged."""
    head, _, sub = key.partition(".")
    if not sub or not _section_head(cls, head):
        return key
    first, _, rest = sub.partition(".")
    field = section_field(cls, head, first)
    return f"{field}.{rest}" if rest else field


def _dict_aliases(cls: type) -> Mapping[str, str]:
    """``{prefix: dict field}`` of ``cls``: ``prefix.name`` keys set entries of that field (see `parse_overrides`)."""
    return getattr(cls, "DICT_ALIASES", None) or {}


def undot(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict with its dotted keys folded in: ``{"env_kwargs.hops": 2}`` -> ``{"env_kwargs": {"hops": 2}}``.

    YAML files may use the command line's dotted keys for the entries of a dict field (and the prefixes of the
    class's ``DICT_ALIASES``, e.g. ``credit.alpha: 0.5`` for ``credit_overrides``). Dotted keys are applied after
    the plain ones, so ``credit.alpha`` wins over ``credit_overrides: {alpha: ...}`` in the same file. Keys that
    are not dotted, or whose prefix is no dict field, are left for `from_dict` to judge.
    """
    if not isinstance(d, Mapping):
        return d
    d = _unsection_mapping(cls, d)
    if not any(isinstance(k, str) and "." in k for k in d):
        return dict(d)
    types_ = field_types(cls)
    aliases = _dict_aliases(cls)
    out: dict[str, Any] = {}
    dotted: list[tuple[str, list[str], Any]] = []
    for key, value in d.items():
        head, _, sub = key.partition(".") if isinstance(key, str) else (key, "", "")
        field = aliases.get(head, head) if sub else head
        _, inner = _is_optional(types_.get(field, None))
        if sub and field in types_ and (typing.get_origin(inner) in _DICTS or inner is dict):
            dotted.append((field, sub.split("."), value))
        else:
            out[key] = value
    for field, parts, value in dotted:
        current = out.get(field)
        entry = copy.deepcopy(dict(current)) if isinstance(current, Mapping) else {}
        _set_dotted(entry, parts, value)
        out[field] = entry
    return out


def _unsection_mapping(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict with its sections flattened: ``{"sampling": {"temperature": 0.7}}`` and
    ``{"sampling.temperature": 0.7}`` -> ``{"temperature": 0.7}``. A section key whose value is not a mapping is
    left alone when a field has the same name (``model: tiny``). Two spellings of one field in one dict are refused."""
    if not config_sections(cls):
        return dict(d)
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def put(key: str, value: Any, written: str) -> None:
        if key in out:
            raise ConfigError(f"Config key {written!r} sets {key!r}, which {origin[key]!r} already sets; keep one.")
        out[key] = value
        origin[key] = written

    for key, value in d.items():
        if isinstance(key, str) and _section_head(cls, key) and isinstance(value, Mapping):
            for sub, v in value.items():
                put(_unsection_key(cls, f"{key}.{sub}"), v, f"{key}.{sub}")
        elif isinstance(key, str) and "." in key:
            put(_unsection_key(cls, key), value, key)
        else:
            put(key, value, key)
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
    for key, value in undot(cls, d).items():
        if key not in types_:
            err = _unknown_key(cls, str(key))
            raise ConfigError(f"{err}{where}") from None
        try:
            kwargs[key] = parse_value(key, dict(value) if isinstance(value, _DictPatch) else value, types_[key])
        except ConfigError as err:
            raise ConfigError(f"{err}{where}") from None
    try:
        cfg = cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{err}{where}") from None
    msg = check_fields(cfg)  # configs whose __post_init__ does not call it still get typed, finite numbers
    if msg:
        raise ConfigError(f"{msg}{where}")
    return cfg


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


#: Deepest nesting a config YAML may have (a mapping in a list in a mapping is 3 levels); checked while the
#: document is composed, so no recursion limit is ever reached.
MAX_YAML_DEPTH = 32
#: Largest config file read (a full config dump is a few KB).
MAX_YAML_BYTES = 1 << 20


class _YamlRejected(Exception):
    """Internal: YAML that parses but is refused (alias, anchor, duplicate key, too deep); args: problem, mark."""

    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = mark


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors, aliases, merge keys, duplicate keys and deep nesting.

    The checks run on parser events while the document is composed, before any value is constructed: an
    alias bomb stops at its first anchor and a 20k-deep document at level :data:`MAX_YAML_DEPTH`.
    """

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _YamlRejected(f"alias *{event.anchor} is not allowed (config files use no anchors or aliases; "
                                "write the value out)", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _YamlRejected(f"anchor &{event.anchor} is not allowed (config files use no anchors or aliases; "
                                "write the value out)", event.start_mark)
        if self._depth >= MAX_YAML_DEPTH:
            raise _YamlRejected(f"nesting deeper than {MAX_YAML_DEPTH} levels (a config value is a few levels "
                                "deep at most)", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)
        first: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _YamlRejected("merge key << is not allowed (write the keys out)", key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = first.get(key)
            except TypeError:  # unhashable key: let SafeLoader report it
                continue
            if seen is not None:
                raise _YamlRejected(
                    f"duplicate key {key!r} (first at line {seen.line + 1}); YAML would silently keep the last "
                    "value, so remove one of them", key_node.start_mark)
            first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _strict_load(text: str) -> Any:
    """Parse one YAML document with :class:`_StrictLoader`; raises ``yaml.YAMLError`` or :class:`_YamlRejected`."""
    if "\x00" in text:
        raise _YamlRejected(f"NUL byte at character {text.index(chr(0))} (binary data, not YAML text)")
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a huge value still gives a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 15]}... ({len(text)} chars)"


def _where(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def load_yaml_text(text: str, source: str = "<text>") -> Any:
    """Parse YAML text with the strict config loader (no anchors, aliases, duplicate keys or deep nesting).

    Args:
        text: The YAML document.
        source: Where it came from (a path, "override lr=..."), used in the error message.

    Returns:
        The parsed value (``None`` for an empty document).

    Raises:
        ConfigError: Malformed or refused YAML; the one-line message names the source, line and column.
    """
    try:
        return _strict_load(text)
    except _YamlRejected as err:
        raise ConfigError(f"Refused YAML in {source}{_where(err.mark)}: {err.problem}.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"Malformed YAML in {source}{_where(mark)}: {problem}. Fix the file (it must be a mapping of "
            "`key: value` lines)."
        ) from None


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with the strict loader; an empty file gives ``{}``.

    The file must be UTF-8 text (no NUL bytes, at most :data:`MAX_YAML_BYTES`); see :func:`load_yaml_text`
    for what the YAML itself may hold.

    Raises:
        ConfigError: The file is missing, unreadable, binary, not UTF-8, too large, not valid YAML (the message
            gives line and column), refused by the strict loader, or its top level is not a mapping.
    """
    p = Path(path)
    name = repr(str(p))
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"Config file {name} does not exist.") from None
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"Cannot read config file {name}: {reason}.") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"Config file {name} is larger than {MAX_YAML_BYTES} bytes; a config is a few KB of "
                          "`key: value` lines.")
    if b"\x00" in raw:
        raise ConfigError(f"Config file {name} is binary (NUL byte at offset {raw.index(0)}), not YAML text. "
                          "Fix: pass a UTF-8 YAML file of `key: value` lines.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"Config file {name} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                          f"{err.start}). Fix: save it as UTF-8.") from None
    data = load_yaml_text(text, name)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {name} must hold a mapping of `key: value` lines, got a {type(data).__name__}."
        )
    return data


class _NoAliasDumper(yaml.SafeDumper):
    """Writes shared objects out in full: the strict loader refuses anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(cfg: Any, *, comments: bool = True) -> str:
    """YAML text of a config dataclass: one ``key: value`` line per field, its docstring as a comment above."""
    docs = field_docs(type(cfg)) if comments else {}
    lines = [f"# {type(cfg).__name__}"] if comments else []
    for key, value in to_dict(cfg).items():
        if docs.get(key):
            lines.append(f"# {docs[key]}")
        text = yaml.dump({key: value}, Dumper=_NoAliasDumper, default_flow_style=True, sort_keys=False,
                         width=10**6).strip()
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
    """Section headings by the field that starts each: from the class's ``SECTIONS`` (``key -> (title, fields)``;
    the heading names the key: ``Sampling (sampling.*)``), else from ``# --- heading`` comment lines."""
    declared = config_sections(cls)
    if declared:
        return {fields[0]: f"{title} ({key}.*)" for key, (title, fields) in declared.items() if fields}
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


def config_help(cls: type, *, prefix: str = "", header: str | None = None) -> str:
    """Plain-text listing of every field: ``name  type = default`` and its docstring (for ``--help-config``).

    Args:
        cls: The config dataclass.
        prefix: Written before each field name (``"credit."`` lists ``credit.alpha: float = ...``).
        header: The first line; the default names the class and the ``key=value`` form.
    """
    docs = field_docs(cls)
    types_ = field_types(cls)
    sections = _sections(cls)
    lines: list[str] = [header or f"{cls.__name__} keys (override with {prefix}key=value):"]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in sections:
            lines.append(f"\n[{sections[f.name]}]")
        lines.append(f"  {prefix}{f.name}: {type_name(types_[f.name])} = {_default_repr(f)}")
        if docs.get(f.name):
            lines.append(f"      {docs[f.name]}")
    return "\n".join(lines) + "\n"


def config_markdown(cls: type, *, title: str | None = None, intro: str = "", level: int = 1) -> str:
    """Markdown reference of a config dataclass: one table row per field (name, type, default, docstring).

    ``level`` is the heading level of the title (sections get ``level + 1``); a class without fields gets a
    "(no options)" line instead of a table.
    """
    docs = field_docs(cls)
    types_ = field_types(cls)
    sections = _sections(cls)
    out = [f"{'#' * level} {title or cls.__name__}", ""]
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
                out += [f"{'#' * (level + 1)} {sections[f.name]}", ""]
            out += header
            started = True
        doc = docs.get(f.name, "").replace("|", "\\|")
        typ = type_name(types_[f.name]).replace("|", "\\|")
        default = _default_repr(f).replace("|", "\\|")
        out.append(f"| `{f.name}` | `{typ}` | `{default}` | {doc} |")
    if not started:
        out.append("(no options)")
    return "\n".join(out) + "\n"
