"""BM25Index: correctness against bm25s' own retrieval, relevance, caching, input validation."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from turngym.errors import ConfigError
from turngym.tools.search import BM25Index, Hit, read_corpus, synthetic_corpus, write_corpus
from turngym.tools.search.corpus import sample_queries

DOCS = [
    {"id": "paris", "contents": '"Paris"\nParis is the capital and largest city of France.'},
    {"id": "berlin", "contents": '"Berlin"\nBerlin is the capital of Germany, on the river Spree.'},
    {"id": "spree", "contents": '"Spree"\nThe Spree is a river that flows through Saxony and Berlin.'},
    {"id": "louvre", "contents": '"Louvre"\nThe Louvre is a museum in Paris, the most visited in the world.'},
    {"id": "tokyo", "contents": '"Tokyo"\nTokyo is the capital of Japan.'},
]


@pytest.fixture(scope="module")
def corpus500():
    return synthetic_corpus(500, seed=3)


def test_hand_checked_ranking(tmp_path):
    idx = BM25Index.build(DOCS, cache_dir=tmp_path)
    hits = idx.search(["capital of germany", "museum paris", "river spree"], topk=2)
    assert [h.id for h in hits[0]][:1] == ["berlin"]
    assert [h.id for h in hits[1]][:1] == ["louvre"]
    assert {h.id for h in hits[2]} == {"berlin", "spree"}
    for row in hits:
        scores = [h.score for h in row]
        assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    h = hits[0][0]
    assert isinstance(h, Hit) and h.title == "Berlin" and h.text.startswith("Berlin is")
    assert h.document() == {"id": "berlin", "contents": DOCS[1]["contents"]}


def test_scores_match_bm25s_retrieve(corpus500):
    """Our sparse batch path gives the same top-k scores as bm25s' reference retrieve()."""
    idx = BM25Index.build(corpus500, cache=False)
    queries = sample_queries(corpus500, 60, seed=1)
    ours = idx.search(queries, topk=5)
    ref = idx._retriever.retrieve([idx.tokenize(q) for q in queries], k=5, show_progress=False)
    full = 0
    for q, row, ref_scores, ref_docs in zip(queries, ours, ref.scores, ref.documents):
        positive = ref_scores[ref_scores > 0]  # docs sharing no term score 0; we do not return them
        full += len(positive) == 5
        assert len(row) == len(positive)
        np.testing.assert_allclose([h.score for h in row], positive, rtol=1e-5, err_msg=q)
        # same documents up to the order of exactly tied scores
        assert {h.id for h in row if h.score > ref_scores[-1] + 1e-5} <= {corpus500[j].id for j in ref_docs}
    assert full >= 40  # most queries have 5 matching docs, so the comparison is not vacuous


def test_batch_equals_single(corpus500):
    idx = BM25Index.build(corpus500, cache=False)
    queries = sample_queries(corpus500, 20, seed=2)
    batched = idx.search(queries, topk=3)
    assert batched == [idx.search([q], topk=3)[0] for q in queries]


def test_source_document_is_found(corpus500):
    """A query of 5 words from one document retrieves that document first in most cases."""
    idx = BM25Index.build(corpus500, cache=False)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(corpus500), size=50, replace=False)
    queries = []
    for j in picks:
        words = corpus500[j].contents.replace('"', "").split()
        queries.append(" ".join(rng.choice(words, size=5, replace=False)))
    top1 = [row[0].id for row in idx.search(queries, topk=1)]
    acc = np.mean([t == corpus500[j].id for t, j in zip(top1, picks)])
    assert acc >= 0.9, acc


def test_no_match_queries_return_nothing(tmp_path):
    idx = BM25Index.build(DOCS, cache_dir=tmp_path)
    assert idx.search(["", "   ", "the of and is", "zzzqqq xyzzy"], topk=3) == [[], [], [], []]
    assert idx.search([], topk=3) == []
    assert len(idx.search(["capital"], topk=100)[0]) == 3  # only docs sharing a term


def test_bad_arguments(tmp_path):
    idx = BM25Index.build(DOCS, cache_dir=tmp_path)
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="topk"):
            idx.search(["paris"], topk=bad)
    with pytest.raises(TypeError, match="list of strings"):
        idx.search("paris", topk=1)
    with pytest.raises(TypeError, match=r"queries\[1\]"):
        idx.search(["paris", 3], topk=1)


def test_cache_roundtrip(tmp_path, corpus500):
    path = tmp_path / "corpus.jsonl"
    write_corpus(path, corpus500)
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    first = BM25Index.build(path, cache_dir=cache)
    t_build = time.perf_counter() - t0
    assert not first.loaded_from_cache and (first.cache_path / "turngym.json").is_file()
    meta = json.loads((first.cache_path / "turngym.json").read_text())
    assert meta["num_docs"] == 500 and meta["params"]["k1"] == 1.5
    t0 = time.perf_counter()
    second = BM25Index.build(path, cache_dir=cache)
    t_load = time.perf_counter() - t0
    assert second.loaded_from_cache and second.cache_path == first.cache_path
    assert t_load < t_build
    q = sample_queries(corpus500, 10, seed=5)
    assert first.search(q, 4) == second.search(q, 4)
    # the key covers parameters and content
    other = BM25Index.build(path, cache_dir=cache, k1=1.2)
    assert not other.loaded_from_cache and other.cache_path != first.cache_path
    write_corpus(path, corpus500[:-1])
    changed = BM25Index.build(path, cache_dir=cache)
    assert not changed.loaded_from_cache and changed.num_docs == 499
    # same docs as a list and as a file with the same content share nothing but give the same results
    assert BM25Index.build(corpus500[:-1], cache=False).search(q, 4) == changed.search(q, 4)


def test_corrupt_cache_is_rebuilt(tmp_path):
    idx = BM25Index.build(DOCS, cache_dir=tmp_path)
    (idx.cache_path / "vocab.index.json").write_text("{not json")
    again = BM25Index.build(DOCS, cache_dir=tmp_path)
    assert not again.loaded_from_cache
    assert again.search(["tokyo"], 1)[0][0].id == "tokyo"
    assert BM25Index.build(DOCS, cache_dir=tmp_path).loaded_from_cache


def test_cache_disabled_writes_nothing(tmp_path):
    idx = BM25Index.build(DOCS, cache_dir=tmp_path, cache=False)
    assert idx.cache_path is None and list(tmp_path.iterdir()) == []


def test_corpus_validation(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        BM25Index.build(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "contents": "x"}\nnot json\n')
    with pytest.raises(ConfigError, match=":2: not a JSON line"):
        read_corpus(bad)
    with pytest.raises(ConfigError, match="duplicate id 'a'"):
        BM25Index.build([{"id": "a", "contents": "x"}, {"id": "a", "contents": "y"}], cache=False)
    with pytest.raises(ConfigError, match="contents"):
        BM25Index.build([{"id": "a", "text": "x"}], cache=False)
    with pytest.raises(ConfigError, match="bare string"):
        BM25Index.build(["just text"], cache=False)
    with pytest.raises(ConfigError, match="empty"):
        BM25Index.build([], cache=False)
    with pytest.raises(ConfigError, match="method"):
        BM25Index.build(DOCS, cache=False, method="bm25+")


def test_unwritable_cache_dir_warns_and_still_works(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory should be")
    with pytest.warns(RuntimeWarning, match="could not cache"):
        idx = BM25Index.build(DOCS, cache_dir=blocker / "cache")
    assert idx.cache_path is None and idx.search(["tokyo"], 1)[0][0].id == "tokyo"
