"""An httpx client for Search-R1 ``/retrieve`` servers (ours or any existing Search-R1 retriever).

`RetrieverClient` has the same ``search(queries, topk)`` interface as `BM25Index`. It keeps a pool
of keep-alive connections, splits large batches into requests of ``batch_size`` queries, and retries
each request with exponential backoff when the server cannot be reached, times out, answers 5xx, or
answers something that is not a well-formed Search-R1 response. When the retries are spent it raises
`RetrieverError`, which the search tool turns into an error observation.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from turngym.errors import TurngymError
from turngym.tools.search.index import Hit, _check_queries, _check_topk


class RetrieverError(TurngymError, RuntimeError):
    """The retriever could not answer (down, too slow, 5xx, malformed response) after all retries.

    Attributes:
        url: Endpoint that failed.
        attempts: How many requests were made.
        reasons: One short reason per failed attempt.
        retryable: False when the server rejected the request itself (4xx): retrying cannot help.
    """

    def __init__(self, url: str, attempts: int, reasons: list[str], *, retryable: bool = True):
        self.url = url
        self.attempts = attempts
        self.reasons = reasons
        self.retryable = retryable
        last = reasons[-1] if reasons else "unknown error"
        what = f"after {attempts} attempt{'s' if attempts != 1 else ''}" if retryable else "(not retried)"
        super().__init__(f"retriever at {url} failed {what}: {last}")


class _BadResponse(Exception):
    """A 2xx response that is not a Search-R1 result (retried like a 5xx)."""


def normalize_url(url: str) -> str:
    """``http://h:p`` or ``http://h:p/retrieve`` -> the ``/retrieve`` endpoint."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(
            f"retriever url must start with http:// or https://, got {url!r} "
            "(e.g. 'http://127.0.0.1:8000/retrieve')."
        )
    url = url.rstrip("/")
    return url if url.endswith("/retrieve") else url + "/retrieve"


def _parse_hits(item: Any) -> list[Hit]:
    if not isinstance(item, list):
        raise _BadResponse(f"each result must be a list of documents, got {type(item).__name__}")
    hits = []
    for entry in item:
        if not isinstance(entry, dict):
            raise _BadResponse(f"a result entry must be an object, got {type(entry).__name__}")
        if "document" in entry:  # return_scores=True shape
            doc, score = entry["document"], entry.get("score", 0.0)
        else:  # return_scores=False shape: the document itself
            doc, score = entry, 0.0
        if not isinstance(doc, dict) or not isinstance(doc.get("contents"), str):
            raise _BadResponse("a document must be an object with a string 'contents'")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise _BadResponse(f"a score must be a number, got {score!r}")
        hits.append(Hit(id=str(doc.get("id", "")), contents=doc["contents"], score=float(score)))
    return hits


class RetrieverClient:
    """Client of a Search-R1 ``/retrieve`` endpoint with pooling, batching, timeouts and retries.

    Thread-safe: one client can serve many concurrent tool calls.

    Args:
        url: Server base URL or its ``/retrieve`` endpoint, e.g. ``"http://127.0.0.1:8000"``.
        timeout_s: Per-request timeout (connect, read, write, pool).
        retries: Extra attempts after the first one fails (0 = no retry).
        backoff: Sleep before retry ``i`` (0-based) is ``min(max_backoff, backoff * 2**i)`` seconds.
        max_backoff: Cap of a single sleep.
        batch_size: Queries per HTTP request; larger batches are split.
        max_connections: Size of the connection pool.

    Raises:
        RetrieverError: From `search`, when a request fails after all retries.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff: float = 0.25,
        *,
        max_backoff: float = 4.0,
        batch_size: int = 64,
        max_connections: int = 16,
    ):
        if timeout_s <= 0 or retries < 0 or backoff < 0 or batch_size < 1:
            raise ValueError(
                f"RetrieverClient needs timeout_s > 0, retries >= 0, backoff >= 0, batch_size >= 1; "
                f"got timeout_s={timeout_s}, retries={retries}, backoff={backoff}, "
                f"batch_size={batch_size}."
            )
        self.url = normalize_url(url)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,  # never route loopback traffic through a proxy from the environment
        )
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "failures": 0}

    # ------------------------------------------------------------------ public
    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        """Retrieve ``topk`` documents per query from the server.

        Args:
            queries: Query strings. [N]
            topk: Hits per query.

        Returns:
            ``N`` lists of `Hit`, in the server's order.

        Raises:
            RetrieverError: When a request fails after all retries (or is rejected with 4xx).
        """
        queries = _check_queries(queries)
        topk = _check_topk(topk)
        out: list[list[Hit]] = []
        for start in range(0, len(queries), self.batch_size):
            out.extend(self._request(queries[start : start + self.batch_size], topk))
        return out

    @property
    def max_duration_s(self) -> float:
        """Upper bound of one request with all its retries (timeouts plus backoff sleeps)."""
        sleeps = sum(min(self.max_backoff, self.backoff * 2**i) for i in range(self.retries))
        return (self.retries + 1) * self.timeout_s + sleeps

    def health(self) -> dict[str, Any]:
        """``GET /health`` of a turngym server (raises httpx errors; no retries)."""
        r = self._client.get(self.url[: -len("/retrieve")] + "/health")
        r.raise_for_status()
        return r.json()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RetrieverClient:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RetrieverClient({self.url!r}, timeout_s={self.timeout_s}, retries={self.retries})"

    # ------------------------------------------------------------------ internals
    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _request(self, queries: list[str], topk: int) -> list[list[Hit]]:
        payload = {"queries": queries, "topk": topk, "return_scores": True}
        reasons: list[str] = []
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            self._count("requests")
            try:
                resp = self._client.post(self.url, json=payload)
            except httpx.TimeoutException as e:
                reasons.append(f"timed out after {self.timeout_s}s ({type(e).__name__})")
                continue
            except httpx.TransportError as e:
                reasons.append(f"cannot reach the server ({type(e).__name__}: {e})")
                continue
            except httpx.HTTPError as e:  # e.g. a body that fails content decoding
                reasons.append(f"request failed ({type(e).__name__}: {e})")
                continue
            if resp.status_code >= 500 or resp.status_code in (408, 429):  # server-side / overload
                reasons.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
                continue
            if resp.status_code >= 400:
                self._count("failures")
                raise RetrieverError(
                    self.url,
                    attempt + 1,
                    reasons + [f"HTTP {resp.status_code}: {resp.text[:200]}"],
                    retryable=False,
                )
            try:
                return self._parse(resp, len(queries))
            except _BadResponse as e:
                reasons.append(f"malformed response: {e}")
        self._count("failures")
        raise RetrieverError(self.url, self.retries + 1, reasons)

    @staticmethod
    def _parse(resp: httpx.Response, n: int) -> list[list[Hit]]:
        try:
            body = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _BadResponse(f"not JSON ({e}): {resp.text[:80]!r}") from None
        if not isinstance(body, dict) or not isinstance(body.get("result"), list):
            raise _BadResponse("expected an object with a 'result' list")
        result = body["result"]
        if len(result) != n:
            raise _BadResponse(f"{len(result)} results for {n} queries")
        return [_parse_hits(item) for item in result]
