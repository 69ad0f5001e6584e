"""A local BM25 index over a Search-R1 corpus, built with ``bm25s`` and cached on disk.

``bm25s`` tokenizes the corpus and precomputes the BM25 score of every (term, document) pair (its
"eager" sparse index). Queries are answered in batches: the batch becomes a sparse query-term matrix
``Q [N, V]`` and one sparse product ``Q @ S [N, D]`` with the eager score matrix ``S [V, D]`` gives
every query's score for every document that shares a term with it; top-k is then taken over those
candidates only. This gives the same scores as ``bm25s``' own ``retrieve`` (a test checks it) and
several times its throughput at batch 64.

The index is built once per (corpus content, parameters) and saved under the cache directory; later
builds of the same corpus load it in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from turngym.cache import cache_dir
from turngym.errors import ConfigError
from turngym.tools.search.corpus import Document, as_documents, documents_digest, read_corpus

_FORMAT_VERSION = 1
_STOPWORDS = ("en", "none")
_SMALL_BATCH = 4  # up to this many queries: numpy path per query; above: one sparse product


@dataclass(frozen=True)
class Hit:
    """One retrieved document.

    Attributes:
        id: Document id.
        contents: Document text (first line is the title by Search-R1 convention).
        score: Retrieval score (BM25 for the local index; whatever the server returns otherwise).
    """

    id: str
    contents: str
    score: float

    @property
    def title(self) -> str:
        """First line of ``contents`` without surrounding quotes."""
        return self.contents.split("\n", 1)[0].strip().strip('"')

    @property
    def text(self) -> str:
        """``contents`` after the first line."""
        parts = self.contents.split("\n", 1)
        return parts[1] if len(parts) > 1 else ""

    def document(self) -> dict[str, str]:
        """The Search-R1 document dict ``{"id", "contents"}``."""
        return {"id": self.id, "contents": self.contents}


@runtime_checkable
class SearchBackend(Protocol):
    """Anything that answers batched queries: `BM25Index`, `RetrieverClient`."""

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        """Return up to ``topk`` hits per query, best first."""
        ...


@dataclass(frozen=True)
class BM25Params:
    """BM25 and tokenizer parameters (part of the cache key).

    Attributes:
        k1: Term-frequency saturation.
        b: Length normalisation.
        method: ``bm25s`` scoring variant (``"lucene"``, ``"robertson"``, ``"atire"``).
        stopwords: ``"en"`` (bm25s' English list) or ``"none"``.
        lower: Lower-case text before splitting.
    """

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stopwords: str = "en"
    lower: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("lucene", "robertson", "atire"):
            raise ConfigError(
                f"BM25 method {self.method!r} is not supported; use 'lucene', 'robertson' or "
                "'atire' (these give non-negative scores, which top-k over matching docs needs)."
            )
        if self.stopwords not in _STOPWORDS:
            raise ConfigError(f"stopwords={self.stopwords!r}; use one of {_STOPWORDS}.")
        if self.k1 <= 0 or not 0.0 <= self.b <= 1.0:
            raise ConfigError(f"BM25 needs k1 > 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}.")


def default_cache_dir() -> Path:
    """``$TURNGYM_CACHE/bm25`` or ``~/.cache/turngym/bm25`` (`turngym.cache.cache_root`)."""
    return cache_dir("bm25")


def _import_bm25s():
    try:
        import bm25s
        from bm25s.tokenization import Tokenizer
    except ImportError:  # pragma: no cover - bm25s is a core dependency
        raise ImportError(
            "bm25s is not installed; it is a core dependency of turngym's search backend. "
            "Install it with: pip install 'bm25s>=0.2'"
        ) from None
    return bm25s, Tokenizer


def _check_topk(topk: Any) -> int:
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}.")
    return int(topk)


def _check_queries(queries: Any) -> list[str]:
    if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
        raise TypeError(
            f"queries must be a list of strings, got {type(queries).__name__}; "
            "wrap a single query as [query]."
        )
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise TypeError(f"queries[{i}] must be a string, got {type(q).__name__}.")
    return list(queries)


class BM25Index:
    """A BM25 index over a list of documents.

    Build it with `BM25Index.build`; query it with `search`. Thread-safe for concurrent ``search``
    calls (the index is read-only after build).

    Attributes:
        documents: The indexed documents, position = internal doc index.
        params: The BM25 parameters.
        cache_path: Directory the index was loaded from / saved to (None when caching is off).
        loaded_from_cache: Whether `build` found the index in the cache.
    """

    def __init__(
        self,
        documents: list[Document],
        retriever: Any,
        params: BM25Params,
        *,
        cache_path: Path | None = None,
        loaded_from_cache: bool = False,
    ):
        import scipy.sparse as sp

        self.documents = documents
        self.params = params
        self.cache_path = cache_path
        self.loaded_from_cache = loaded_from_cache
        self._retriever = retriever  # the bm25s.BM25 object (kept for reference checks)
        scores = retriever.scores
        num_docs = int(scores["num_docs"])
        if num_docs != len(documents):
            raise ConfigError(
                f"BM25 index has {num_docs} documents but the corpus has {len(documents)}; "
                "the cache is stale: delete it (see cache_path) and rebuild."
            )
        self._vocab: dict[str, int] = dict(retriever.vocab_dict)
        self._vocab.pop("", None)  # the empty-document token never matches a query
        num_terms = len(scores["indptr"]) - 1
        # bm25s stores S as CSC [D, V] (columns = terms); the same arrays are CSR [V, D].
        self._S = sp.csr_matrix(
            (scores["data"], scores["indices"], scores["indptr"]), shape=(num_terms, num_docs)
        )
        _, Tokenizer = _import_bm25s()
        tok = Tokenizer(
            lower=params.lower, stopwords=None if params.stopwords == "none" else params.stopwords
        )
        self._split = tok.splitter
        self._ids = [d.id for d in documents]

    # ------------------------------------------------------------------ build / cache
    @classmethod
    def build(
        cls,
        corpus: str | Path | Iterable[Document | dict[str, Any]],
        *,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str = "en",
    ) -> BM25Index:
        """Build (or load from cache) the index of a corpus.

        Args:
            corpus: A Search-R1 JSONL file path, or an iterable of ``{"id", "contents"}`` dicts /
                `Document`s.
            cache_dir: Where indexes are cached (default `default_cache_dir`). The entry is keyed by
                the corpus content hash and the parameters.
            cache: Set False to always build in memory and write nothing.
            k1, b, method, stopwords: See `BM25Params`.

        Returns:
            The index.

        Raises:
            ConfigError: On a missing / malformed corpus, an empty corpus, or bad parameters.
        """
        params = BM25Params(k1=k1, b=b, method=method, stopwords=stopwords)
        if isinstance(corpus, (str, Path)):
            docs, digest = read_corpus(corpus)
        else:
            docs = as_documents(corpus)
            digest = documents_digest(docs)
        if not docs:
            raise ConfigError("the corpus is empty; a BM25 index needs at least one document.")
        bm25s, _ = _import_bm25s()
        if not cache:
            return cls(docs, cls._index(docs, params), params)
        key = _cache_key(digest, params, bm25s.__version__)
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = root / key
        if (path / "turngym.json").is_file():
            try:
                retriever = bm25s.BM25.load(str(path), load_corpus=False, show_progress=False)
                return cls(docs, retriever, params, cache_path=path, loaded_from_cache=True)
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                shutil.rmtree(path, ignore_errors=True)  # corrupt entry: rebuild below
        retriever = cls._index(docs, params)
        meta = {
            "format": _FORMAT_VERSION,
            "num_docs": len(docs),
            "corpus_sha256": digest,
            "params": asdict(params),
            "bm25s": bm25s.__version__,
        }
        try:
            _save_atomically(retriever, path, meta)
        except OSError as e:  # read-only or full disk: the index still works, it is just not cached
            warnings.warn(
                f"could not cache the BM25 index under {root} ({e}); pass cache_dir= to a "
                "writable directory to reuse it next time.",
                RuntimeWarning,
                stacklevel=2,
            )
            return cls(docs, retriever, params)
        return cls(docs, retriever, params, cache_path=path, loaded_from_cache=False)

    @staticmethod
    def _index(docs: list[Document], params: BM25Params) -> Any:
        bm25s, Tokenizer = _import_bm25s()
        tok = Tokenizer(
            lower=params.lower, stopwords=None if params.stopwords == "none" else params.stopwords
        )
        ids = tok.tokenize(
            [d.contents for d in docs], update_vocab=True, show_progress=False, return_as="ids"
        )
        retriever = bm25s.BM25(k1=params.k1, b=params.b, method=params.method)
        retriever.index((ids, tok.get_vocab_dict()), show_progress=False)
        return retriever

    # ------------------------------------------------------------------ query
    @property
    def num_docs(self) -> int:
        return len(self.documents)

    def tokenize(self, query: str) -> list[int]:
        """Term ids of a query (unknown words and stopwords dropped; repeats kept, as bm25s does)."""
        text = query.lower() if self.params.lower else query
        vocab = self._vocab
        return [vocab[w] for w in self._split(text) if w in vocab]

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        """Retrieve the best documents for each query.

        Only documents sharing at least one term with the query are returned (all others score 0),
        so a query may get fewer than ``topk`` hits, or none. Ties are broken by corpus order.

        Args:
            queries: Query strings. [N]
            topk: Hits per query (>= 1).

        Returns:
            ``N`` lists of at most ``topk`` `Hit`, best first.

        Raises:
            TypeError / ValueError: On non-string queries or a non-positive ``topk``.
        """
        queries = _check_queries(queries)
        topk = _check_topk(topk)
        counts = [Counter(self.tokenize(q)) for q in queries]  # a repeated term counts twice, as in bm25s
        if len(queries) <= _SMALL_BATCH:
            scored = [self._score_one(c) for c in counts]
        else:
            scored = self._score_batch(counts)
        return [self._top(vals, docs, topk) for vals, docs in scored]

    def _score_one(self, counts: Counter) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the docs sharing a term with one query: numpy only (scipy's per-call overhead
        dominates small queries). Same float32 operations in the same order as `_score_batch`."""
        S = self._S
        if not counts:
            return np.zeros(0, S.dtype), np.zeros(0, np.int64)
        slices = [slice(S.indptr[t], S.indptr[t + 1]) for t in counts]
        if len(slices) == 1:
            (sl,), (n,) = slices, counts.values()
            return S.data[sl] * S.dtype.type(n), S.indices[sl]
        docs = np.concatenate([S.indices[sl] for sl in slices])
        vals = np.concatenate([S.data[sl] * S.dtype.type(n) for sl, n in zip(slices, counts.values())])
        dense = np.zeros(S.shape[1], dtype=S.dtype)  # [D]
        np.add.at(dense, docs, vals)  # sequential float32 sums, in term order
        uniq = np.flatnonzero(dense > 0)  # every posting has a positive score (bool input: 10x faster)
        return dense[uniq], uniq

    def _score_batch(self, counts: list[Counter]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One sparse product ``Q [N, V] @ S [V, D]`` for the whole batch."""
        import scipy.sparse as sp

        n = len(counts)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(c) for c in counts], out=indptr[1:])
        cols = np.fromiter((t for c in counts for t in c), dtype=np.int64, count=int(indptr[-1]))
        vals = np.fromiter(
            (k for c in counts for k in c.values()), dtype=self._S.dtype, count=int(indptr[-1])
        )
        # built from (data, indices, indptr) directly: the COO route costs more than the product itself
        q = sp.csr_matrix((vals, cols, indptr), shape=(n, self._S.shape[0]))  # [N, V]
        r = (q @ self._S).tocsr()  # [N, D], nonzero only where a doc shares a term
        return [
            (r.data[r.indptr[i] : r.indptr[i + 1]], r.indices[r.indptr[i] : r.indptr[i + 1]])
            for i in range(n)
        ]

    def _top(self, vals: np.ndarray, docs: np.ndarray, topk: int) -> list[Hit]:
        m = len(vals)
        if m > topk:
            # keep every candidate tied with the k-th score so corpus order breaks ties
            kth = np.partition(vals, m - topk)[m - topk]
            keep = vals >= kth
            vals, docs = vals[keep], docs[keep]
        order = np.lexsort((docs, -vals))[:topk]
        return [
            Hit(self._ids[j], self.documents[j].contents, float(vals[o])) for o, j in zip(order, docs[order])
        ]

    def __repr__(self) -> str:
        return f"BM25Index(num_docs={self.num_docs}, params={self.params}, cache_path={self.cache_path})"


def _cache_key(digest: str, params: BM25Params, bm25s_version: str) -> str:
    blob = json.dumps(
        {"corpus": digest, "params": asdict(params), "bm25s": bm25s_version, "format": _FORMAT_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _save_atomically(retriever: Any, path: Path, meta: dict[str, Any]) -> None:
    """Save into a temp dir beside ``path``, then rename; a concurrent builder's copy wins ties."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        retriever.save(str(tmp), show_progress=False)
        (tmp / "turngym.json").write_text(json.dumps(meta, indent=1))
        if path.exists() and not (path / "turngym.json").is_file():
            shutil.rmtree(path, ignore_errors=True)  # leftover of a crashed build
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / "turngym.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
