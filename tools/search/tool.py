"""The ``search`` tool: one query in, the top-k documents out as text, over any `SearchBackend`.

The tool never raises into a rollout: an empty or over-long query, a retriever that is down / slow /
broken (`RetrieverError` after the client's retries) or a failing backend all come back as
``ToolResult(ok=False, error=...)``, which the env shows as an error observation. Successful calls carry
the retrieved ids and scores in ``ToolResult.meta`` (``doc_ids``, ``scores``) for signal providers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from turngym.tools.base import Tool
from turngym.tools.search.client import RetrieverError
from turngym.tools.search.index import Hit, SearchBackend
from turngym.types import ToolResult

MAX_QUERY_CHARS = 1000
DEFAULT_DESCRIPTION = "Search the knowledge corpus and return the best matching documents."


def format_hits_searchr1(hits: Sequence[Hit]) -> str:
    """Search-R1's passage format: ``Doc 1(Title: <first line>) <rest>`` per line."""
    if not hits:
        return "No documents found."
    lines = []
    for i, h in enumerate(hits, 1):
        title, _, text = h.contents.partition("\n")
        lines.append(f"Doc {i}(Title: {title}) {text}")
    return "\n".join(lines)


def make_search_tool(
    backend: SearchBackend,
    topk: int = 3,
    *,
    name: str = "search",
    description: str = DEFAULT_DESCRIPTION,
    formatter: Callable[[Sequence[Hit]], str] = format_hits_searchr1,
    timeout_s: float | None = None,
) -> Tool:
    """Build the search tool over a backend (`BM25Index`, `RetrieverClient`, or anything with ``.search``).

    Args:
        backend: Answers ``backend.search([query], topk)``.
        topk: Documents returned per call.
        name: Tool name the model calls (``"search"``; with the ``"tags"`` parser: ``<search>q</search>``).
        description: Tool description shown in the schema.
        formatter: Renders the hits as the observation text (default: Search-R1's ``Doc i(Title: ...)``).
        timeout_s: Per-call timeout. Default: for a `RetrieverClient`, long enough for all its retries
            (`RetrieverClient.max_duration_s` + 1 s); otherwise the ToolSet's.

    Returns:
        A `Tool` with one argument, ``query: str``.

    Raises:
        TypeError: When ``backend`` has no ``search`` method.
        ValueError: When ``topk`` < 1.
    """
    if not callable(getattr(backend, "search", None)):
        raise TypeError(
            f"make_search_tool needs a backend with .search(queries, topk), got {type(backend).__name__}; "
            "pass a BM25Index or a RetrieverClient."
        )
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}.")
    if timeout_s is None and hasattr(backend, "max_duration_s"):
        timeout_s = float(backend.max_duration_s) + 1.0

    def search(query: str) -> ToolResult:
        """Search the corpus for documents matching a query.

        Args:
            query: What to look up, e.g. "founder of Zentrix".
        """
        if not isinstance(query, str) or not query.strip():
            return ToolResult(
                name=name,
                ok=False,
                meta={"reason": "empty_query"},
                error="empty query: write what to look up, e.g. <search>capital of France</search>.",
            )
        if len(query) > MAX_QUERY_CHARS:
            return ToolResult(
                name=name,
                ok=False,
                meta={"reason": "query_too_long"},
                error=f"query too long ({len(query)} characters); keep it under {MAX_QUERY_CHARS}.",
            )
        try:
            hits = backend.search([query], topk)[0]
        except RetrieverError as e:
            return ToolResult(
                name=name,
                ok=False,
                error=f"search is unavailable: {e}",
                meta={"reason": "retriever_error", "attempts": e.attempts, "url": e.url},
            )
        return ToolResult(
            name=name,
            ok=True,
            output=formatter(hits),
            meta={"doc_ids": [h.id for h in hits], "scores": [h.score for h in hits]},
        )

    search.__name__ = name
    return Tool.from_function(search, name=name, description=description, timeout_s=timeout_s)
