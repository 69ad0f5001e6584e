"""A tiny name -> object registry with a decorator and did-you-mean errors.

Variants are registries of plain functions (``CREDIT["a2tgpo"]``, ``LOSS_AGG["token-mean"]``) filled by
a decorator; an unknown key lists the known ones and suggests the closest.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from turngym.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to registered objects.

    Example:
        >>> LOSS_AGG = Registry("loss aggregation")
        >>> @LOSS_AGG.register("token-mean")
        ... def token_mean(x, mask): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj, overwrite=overwrite)
            return obj

        return deco

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> None:
        if name in self._items and not overwrite:
            raise RegistryError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it.")
        self._items[name] = obj

    def remove(self, name: str) -> T | None:
        """Unregister ``name`` (e.g. a test's or a plugin's temporary entry); returns what was there, or None."""
        return self._items.pop(name, None)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(unknown_name_message(self.kind, name, self._items)) from None

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._items.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)


def unknown_name_message(kind: str, name: str, known) -> str:
    """'Unknown <kind> 'x'. Did you mean 'y'? Known: ...' message used across registries."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Known: {', '.join(known) or '(none)'}."
