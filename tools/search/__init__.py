"""Search backend: a local BM25 index, a Search-R1 ``/retrieve`` server and client, and the ``search`` tool.

>>> from turngym.tools.search import BM25Index, make_search_tool
>>> index = BM25Index.build("corpus.jsonl")            # doctest: +SKIP  (cached on disk)
>>> index.search(["capital of france"], topk=3)         # doctest: +SKIP  -> [[Hit(id, contents, score), ...]]
>>> search = make_search_tool(index, topk=3)            # doctest: +SKIP  a Tool named "search"

A remote Search-R1 retriever (ours: ``turngym serve-retriever --corpus FILE --port 8000``, or any
existing one) is used the same way through ``RetrieverClient("http://127.0.0.1:8000/retrieve")``.
"""

from __future__ import annotations

from turngym.tools.search.client import RetrieverClient, RetrieverError
from turngym.tools.search.corpus import Document, read_corpus, synthetic_corpus, write_corpus
from turngym.tools.search.index import BM25Index, BM25Params, Hit, SearchBackend
from turngym.tools.search.tool import format_hits_searchr1, make_search_tool

__all__ = [
    "BM25Index",
    "BM25Params",
    "Document",
    "Hit",
    "RetrieverClient",
    "RetrieverError",
    "SearchBackend",
    "format_hits_searchr1",
    "make_search_tool",
    "read_corpus",
    "synthetic_corpus",
    "write_corpus",
]
