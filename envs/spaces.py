"""Gymnasium spaces for language environments: free text actions and chat-message observations.

Gymnasium's own `gymnasium.spaces.Text` only admits a fixed character set (alphanumerics by default), so
a model's action such as ``"<search>founder of Zentrix</search>"`` or any non-ASCII answer falls outside
it. `TextSpace` admits any Python ``str`` up to a length bound; `ChatSpace` admits a list of chat
messages (``{"role", "content", ...}`` dicts) whose contents are such strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.spaces import Space

from turngym.types import Message

# Characters used by `TextSpace.sample`: printable ASCII, whitespace, markup characters that matter for
# tool-call parsing, and a few non-ASCII letters / symbols so that samples exercise Unicode handling.
_SAMPLE_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " \n\t.,;:!?'\"()[]{}<>/\\=+-*_#@%&|~^`$"
    "éüßøñçÆΩλπЖж中文字日本語🙂→∑∞"
)

ROLES = ("system", "user", "assistant", "tool")


class TextSpace(Space[str]):
    """Any Unicode string of length ``min_length..max_length`` (counted in code points).

    Unlike `gymnasium.spaces.Text`, no character set is imposed: every ``str`` value (including
    non-ASCII text, markup and control characters) is a member as long as its length is in range.

    Args:
        max_length: Largest admitted length in characters.
        min_length: Smallest admitted length in characters.
        seed: Seed of the space's sampling RNG.

    Example:
        >>> space = TextSpace(max_length=64)
        >>> "<answer>Lomira</answer>" in space
        True
    """

    def __init__(
        self, max_length: int, *, min_length: int = 0, seed: int | np.random.Generator | None = None
    ):
        if not (
            isinstance(max_length, int) and isinstance(min_length, int) and 0 <= min_length <= max_length
        ):
            raise ValueError(
                f"TextSpace needs integers 0 <= min_length <= max_length, got min_length={min_length!r}, "
                f"max_length={max_length!r}."
            )
        self.max_length = max_length
        self.min_length = min_length
        super().__init__(shape=None, dtype=None, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any | None = None, probability: Any | None = None) -> str:
        """A random string over a mixed ASCII / Unicode alphabet, of length up to ``min(max_length, 64)``.

        Args:
            mask: Unsupported; must be None.
            probability: Unsupported; must be None.
        """
        if mask is not None or probability is not None:
            raise NotImplementedError("TextSpace.sample does not support mask/probability; pass None.")
        hi = min(self.max_length, max(self.min_length, 64))
        n = int(self.np_random.integers(self.min_length, hi + 1))
        idx = self.np_random.integers(0, len(_SAMPLE_ALPHABET), size=n)
        return "".join(_SAMPLE_ALPHABET[i] for i in idx)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"TextSpace(min_length={self.min_length}, max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TextSpace)
            and other.max_length == self.max_length
            and other.min_length == self.min_length
        )

    def to_jsonable(self, sample_n: Sequence[str]) -> list[str]:
        return list(sample_n)

    def from_jsonable(self, sample_n: list[str]) -> list[str]:
        return list(sample_n)


class ChatSpace(Space[list]):
    """A list of chat messages: ``[{"role": ..., "content": str, ...}, ...]``.

    A member is a ``list`` of 0..``max_messages`` dicts, each with a ``role`` in ``roles`` and a
    ``content`` string of at most ``max_content_length`` characters. Extra keys (``name``,
    ``tool_call_id``, ``tool_calls``) are allowed.

    Args:
        max_messages: Largest number of messages in one observation.
        max_content_length: Largest ``content`` length in characters.
        roles: Admitted roles.
        seed: Seed of the space's sampling RNG.
    """

    def __init__(
        self,
        max_messages: int = 64,
        max_content_length: int = 65536,
        *,
        roles: Sequence[str] = ROLES,
        seed: int | np.random.Generator | None = None,
    ):
        if max_messages < 1 or max_content_length < 1:
            raise ValueError(
                f"ChatSpace needs max_messages >= 1 and max_content_length >= 1, got {max_messages}, "
                f"{max_content_length}."
            )
        self.max_messages = int(max_messages)
        self.max_content_length = int(max_content_length)
        self.roles = tuple(roles)
        self.content_space = TextSpace(self.max_content_length)
        super().__init__(shape=None, dtype=None, seed=seed)

    def contains(self, x: Any) -> bool:
        return self.why_not(x) is None

    def why_not(self, x: Any) -> str | None:
        """Explain why ``x`` is not a member (None when it is). Used by `check_env` for clear messages."""
        if not isinstance(x, list):
            return f"expected a list of messages, got {type(x).__name__}"
        if len(x) > self.max_messages:
            return f"{len(x)} messages exceed max_messages={self.max_messages}"
        for i, m in enumerate(x):
            if not isinstance(m, dict):
                return f"message {i} is a {type(m).__name__}, expected a dict"
            if m.get("role") not in self.roles:
                return f"message {i} has role {m.get('role')!r}, expected one of {self.roles}"
            c = m.get("content")
            if not isinstance(c, str):
                return f"message {i} content is a {type(c).__name__}, expected str"
            if len(c) > self.max_content_length:
                return (
                    f"message {i} content has {len(c)} chars > max_content_length={self.max_content_length}"
                )
        return None

    def sample(self, mask: Any | None = None, probability: Any | None = None) -> list[Message]:
        """A random list of 1-4 messages with random roles and contents."""
        if mask is not None or probability is not None:
            raise NotImplementedError("ChatSpace.sample does not support mask/probability; pass None.")
        n = int(self.np_random.integers(1, min(4, self.max_messages) + 1))
        self.content_space.np_random  # noqa: B018 - make sure the sub-space RNG exists
        out: list[Message] = []
        for _ in range(n):
            role = self.roles[int(self.np_random.integers(0, len(self.roles)))]
            out.append({"role": role, "content": self.content_space.sample()})
        return out

    def seed(self, seed: int | None = None) -> int | Any:
        s = super().seed(seed)
        self.content_space.seed(int(self.np_random.integers(0, 2**31 - 1)))
        return s

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"ChatSpace(max_messages={self.max_messages}, max_content_length={self.max_content_length})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ChatSpace)
            and other.max_messages == self.max_messages
            and other.max_content_length == self.max_content_length
            and other.roles == self.roles
        )
