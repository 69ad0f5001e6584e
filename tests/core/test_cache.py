"""One cache root for every artifact kind (tiny models, BM25 indexes, TextWorld games)."""

from __future__ import annotations

from pathlib import Path

from turngym.cache import cache_dir, cache_root


def test_cache_root_order(monkeypatch, tmp_path):
    monkeypatch.delenv("TURNGYM_CACHE", raising=False)
    monkeypatch.delenv("TURNGYM_CACHE_DIR", raising=False)
    assert cache_root() == Path.home() / ".cache" / "turngym"
    monkeypatch.setenv("TURNGYM_CACHE_DIR", str(tmp_path / "old"))
    assert cache_root() == tmp_path / "old"  # the BM25 index's old variable is still read
    monkeypatch.setenv("TURNGYM_CACHE", str(tmp_path / "new"))
    assert cache_root() == tmp_path / "new"  # and TURNGYM_CACHE wins


def test_every_kind_under_one_root(monkeypatch, tmp_path):
    from turngym.agents.tiny import default_cache_dir as models_dir
    from turngym.envs.builtin.textworld_games import default_cache_dir as games_dir
    from turngym.tools.search.index import default_cache_dir as bm25_dir

    monkeypatch.setenv("TURNGYM_CACHE", str(tmp_path))
    assert (models_dir(), bm25_dir(), games_dir()) == (tmp_path / "models", tmp_path / "bm25", tmp_path / "textworld")
    assert cache_dir("bm25") == bm25_dir()
