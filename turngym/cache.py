"""Where turngym keeps what it builds once and reuses (tiny models, BM25 indexes, compiled games).

One root for every cache: ``$TURNGYM_CACHE`` if set, else ``~/.cache/turngym``; each kind of artifact has its own
folder under it (``models/``, ``bm25/``, ``textworld/``). ``$TURNGYM_CACHE_DIR`` (the BM25 index's old variable) is
still read when ``$TURNGYM_CACHE`` is not set.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$TURNGYM_CACHE``, else ``$TURNGYM_CACHE_DIR``, else ``~/.cache/turngym``."""
    root = os.environ.get("TURNGYM_CACHE") or os.environ.get("TURNGYM_CACHE_DIR")
    return Path(root) if root else Path(os.path.expanduser("~")) / ".cache" / "turngym"


def cache_dir(kind: str) -> Path:
    """The folder of one kind of artifact, e.g. ``cache_dir("bm25")`` (not created here)."""
    return cache_root() / kind
