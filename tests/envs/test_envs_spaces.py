from __future__ import annotations

import numpy as np
import pytest
from gymnasium.spaces import Text

from turngym.envs.spaces import ChatSpace, TextSpace


def test_text_space_accepts_any_unicode_within_bound():
    s = TextSpace(max_length=40)
    for x in ["", "<search>founder of Zentrix</search>", "中文 🙂 éü", "\x00\n\t", "\ud800 lone surrogate"]:
        assert x in s
    assert "x" * 41 not in s
    assert b"bytes" not in s and 3 not in s and None not in s


def test_gymnasium_text_space_rejects_what_ours_accepts():
    # the reason TextSpace exists: gymnasium's Text has a fixed charset
    assert "<answer>x</answer>" not in Text(max_length=40)
    assert "<answer>x</answer>" in TextSpace(max_length=40)


def test_text_space_min_length_and_bad_args():
    s = TextSpace(max_length=5, min_length=2)
    assert "a" not in s and "ab" in s
    with pytest.raises(ValueError, match="min_length"):
        TextSpace(max_length=2, min_length=3)


def test_text_space_sample_is_seeded_and_member():
    a, b = TextSpace(100, seed=3), TextSpace(100, seed=3)
    xs = [a.sample() for _ in range(20)]
    assert xs == [b.sample() for _ in range(20)]
    assert all(x in a for x in xs)
    assert any(ord(c) > 127 for x in xs for c in x)  # samples exercise non-ASCII


def test_chat_space_membership_and_reasons():
    s = ChatSpace(max_messages=3, max_content_length=10)
    assert [{"role": "user", "content": "hi"}] in s
    assert [] in s
    assert s.why_not("hi") is not None
    assert "role" in s.why_not([{"role": "robot", "content": "x"}])
    assert "content" in s.why_not([{"role": "user", "content": 3}])
    assert "max_content_length" in s.why_not([{"role": "user", "content": "x" * 11}])
    assert "max_messages" in s.why_not([{"role": "user", "content": ""}] * 4)
    assert [{"role": "tool", "name": "search", "content": "ok"}] in s


def test_chat_space_sample_member_and_seed():
    s = ChatSpace(seed=1)
    s2 = ChatSpace(seed=1)
    for _ in range(10):
        x = s.sample()
        assert x in s and x == s2.sample()
    assert np.isscalar(len(x))
