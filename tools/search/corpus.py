"""Search-R1 corpus files: reading, writing, and a synthetic generator for tests and benchmarks.

A corpus is a JSONL file with one document per line, ``{"id": str, "contents": str}``, the format of
the Search-R1 ``wiki-18.jsonl`` corpus (``contents`` is ``'"Title"\\nbody text'``). In memory a corpus
is a list of `Document`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turngym.errors import ConfigError


@dataclass(frozen=True)
class Document:
    """One corpus document.

    Attributes:
        id: Document id, unique within the corpus.
        contents: Full text; by Search-R1 convention the first line is the title.
    """

    id: str
    contents: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "contents": self.contents}


def _document_from(obj: Any, where: str) -> Document:
    if isinstance(obj, Document):
        return obj
    if isinstance(obj, str):
        raise ConfigError(
            f"{where}: got a bare string; pass documents as {{'id', 'contents'}} dicts "
            "(or Document objects) so every hit has an id."
        )
    if not isinstance(obj, dict) or "contents" not in obj:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(
            f"{where}: expected a {{'id': str, 'contents': str}} document, got {got}. "
            "Search-R1 corpora use the keys 'id' and 'contents'."
        )
    contents = obj["contents"]
    if not isinstance(contents, str):
        raise ConfigError(f"{where}: 'contents' must be a string, got {type(contents).__name__}.")
    doc_id = obj.get("id")
    if doc_id is None:
        raise ConfigError(f"{where}: document has no 'id'; every document needs one.")
    return Document(id=str(doc_id), contents=contents)


def as_documents(docs: Iterable[Any]) -> list[Document]:
    """Validate documents given as dicts (``{"id", "contents"}``) or `Document`s.

    Raises:
        ConfigError: On a malformed document or duplicate ids (the message names the position).
    """
    out: list[Document] = []
    seen: set[str] = set()
    for i, obj in enumerate(docs):
        doc = _document_from(obj, f"document #{i}")
        if doc.id in seen:
            raise ConfigError(f"document #{i}: duplicate id {doc.id!r}; document ids must be unique.")
        seen.add(doc.id)
        out.append(doc)
    return out


def read_corpus(path: str | Path) -> tuple[list[Document], str]:
    """Read a Search-R1 JSONL corpus.

    Args:
        path: JSONL file, one ``{"id", "contents"}`` object per line (blank lines are skipped).

    Returns:
        ``(documents, sha256)`` where ``sha256`` is the hex digest of the file bytes (the cache key).

    Raises:
        ConfigError: If the file is missing, a line is not JSON, or a document is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"corpus file {str(path)!r} does not exist; pass a JSONL file with one "
            '{"id": ..., "contents": ...} object per line.'
        )
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    objs = []
    for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            objs.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{path}:{lineno}: not a JSON line ({e}); each line must be a "
                '{"id": ..., "contents": ...} object.'
            ) from None
    try:
        return as_documents(objs), digest
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def write_corpus(path: str | Path, docs: Iterable[Document | dict[str, Any]]) -> int:
    """Write documents as a Search-R1 JSONL corpus; returns how many were written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in as_documents(docs):
            f.write(json.dumps(doc.to_dict(), ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def documents_digest(docs: Sequence[Document]) -> str:
    """Content hash of an in-memory corpus (order-sensitive)."""
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps([d.id, d.contents], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def synthetic_corpus(
    num_docs: int,
    *,
    seed: int = 0,
    vocab_size: int = 30_000,
    doc_len: tuple[int, int] = (30, 90),
    zipf_a: float = 1.1,
    zipf_offset: float = 100.0,
) -> list[Document]:
    """Generate a corpus of pseudo-word documents with a Zipfian word distribution.

    Words are made of random syllables; the frequency of the word of rank r is proportional to
    ``(r + zipf_offset) ** -zipf_a`` (Zipf-Mandelbrot, like the content words of natural text once
    stopwords are removed), so common words have long posting lists and rare words short ones.
    Titles are two capitalised words.
    Used by tests and by the retriever benchmark; deterministic given ``seed``.

    Args:
        num_docs: Number of documents.
        seed: RNG seed.
        vocab_size: Number of distinct words.
        doc_len: Inclusive range of body lengths in words.
        zipf_a: Zipf exponent (> 1).
        zipf_offset: Zipf-Mandelbrot rank offset (0 = pure Zipf: the top words are in every doc).

    Returns:
        Documents with ids ``"d0"``, ``"d1"``, ...
    """
    rng = np.random.default_rng(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < vocab_size:
        n = int(rng.integers(2, 5))
        w = "".join(_SYLLABLES[j] for j in rng.integers(0, len(_SYLLABLES), size=n))
        if w not in seen:
            seen.add(w)
            words.append(w)
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    p = (ranks + zipf_offset) ** (-zipf_a)
    p /= p.sum()
    lengths = rng.integers(doc_len[0], doc_len[1] + 1, size=num_docs)
    flat = rng.choice(vocab_size, size=int(lengths.sum()) + 2 * num_docs, p=p)
    docs: list[Document] = []
    pos = 0
    for i in range(num_docs):
        t = flat[pos : pos + 2]
        pos += 2
        body = flat[pos : pos + lengths[i]]
        pos += lengths[i]
        title = " ".join(words[j].capitalize() for j in t)
        docs.append(Document(id=f"d{i}", contents=f'"{title}"\n' + " ".join(words[j] for j in body)))
    return docs


def sample_queries(
    docs: Sequence[Document], n: int, *, seed: int = 0, words: tuple[int, int] = (2, 5)
) -> list[str]:
    """Sample ``n`` queries, each a few words drawn from one random document (benchmarks, tests)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        toks = docs[int(rng.integers(len(docs)))].contents.replace('"', "").split()
        k = min(len(toks), int(rng.integers(words[0], words[1] + 1)))
        out.append(" ".join(toks[j] for j in rng.choice(len(toks), size=k, replace=False)))
    return out
