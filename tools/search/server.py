"""An HTTP retriever server speaking the Search-R1 ``/retrieve`` API.

Request and response, exactly as Search-R1's ``retrieval_server.py``::

    POST /retrieve  {"queries": ["q1", ...], "topk": 3, "return_scores": true}
    -> {"result": [[{"document": {"id": ..., "contents": ...}, "score": 12.3}, ...], ...]}

With ``"return_scores": false`` (the default, as in Search-R1) each inner list holds the documents
themselves: ``{"result": [[{"id": ..., "contents": ...}, ...], ...]}``. ``topk`` may be omitted (or
null / 0), in which case the server's ``--topk`` is used. ``GET /health`` answers
``{"status": "ok", "num_docs": N}``. Malformed requests get HTTP 400 with ``{"error": "..."}``.

The server is the standard library's `ThreadingHTTPServer` with HTTP/1.1 keep-alive (clients keep
pooled connections open) over any `SearchBackend`, usually a `BM25Index`. Run it with
``turngym serve-retriever --corpus FILE --port N`` or ``python -m turngym.tools.search.server``.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from turngym.tools.search.index import BM25Index, SearchBackend

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_QUERIES = 10_000
MAX_TOPK = 1_000


class BadRequest(ValueError):
    """A request the server cannot answer (turned into HTTP 400)."""


def parse_request(body: bytes, default_topk: int) -> tuple[list[str], int, bool]:
    """Validate a ``/retrieve`` body; returns ``(queries, topk, return_scores)``.

    Raises:
        BadRequest: With a message saying what was expected.
    """
    try:
        req = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f'body is not UTF-8 JSON ({e}); send {{"queries": [...], "topk": k}}.') from None
    if not isinstance(req, dict):
        raise BadRequest(f"body must be a JSON object, got {type(req).__name__}.")
    queries = req.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise BadRequest("'queries' must be a list of strings.")
    if len(queries) > MAX_QUERIES:
        raise BadRequest(f"{len(queries)} queries in one request; send at most {MAX_QUERIES}.")
    topk = req.get("topk")
    if topk is None or topk == 0:
        topk = default_topk
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        raise BadRequest(f"'topk' must be an int in [1, {MAX_TOPK}] (or omitted), got {topk!r}.")
    return_scores = req.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise BadRequest(f"'return_scores' must be true or false, got {return_scores!r}.")
    return queries, topk, return_scores


def format_response(results: list[list[Any]], return_scores: bool) -> dict[str, Any]:
    """Search-R1 response body from a batch of `Hit` lists."""
    if return_scores:
        return {"result": [[{"document": h.document(), "score": h.score} for h in hits] for hits in results]}
    return {"result": [[h.document() for h in hits] for hits in results]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for pooled clients
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # buffered: status, headers and body leave in one send (flushed after each request)
    server: RetrieverServer

    def setup(self) -> None:
        super().setup()
        self.server._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server._track(self.connection, add=False)

    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
            self._send_json(200, {"status": "ok", "num_docs": self.server.num_docs})
        else:
            self._send_json(404, {"error": f"unknown path {self.path!r}; use POST /retrieve or GET /health."})

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "a Content-Length header is required."})
            return
        n = int(length)
        if n > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": f"body of {n} bytes; the limit is {MAX_BODY_BYTES}."},
            )
            return
        body = self.rfile.read(n)
        if self.path.split("?", 1)[0].rstrip("/") != "/retrieve":
            self._send_json(404, {"error": f"unknown path {self.path!r}; use POST /retrieve."})
            return
        try:
            queries, topk, return_scores = parse_request(body, self.server.default_topk)
        except BadRequest as e:
            self._send_json(400, {"error": str(e)})
            return
        try:
            results = self.server.backend.search(queries, topk)
        except Exception as e:  # noqa: BLE001 - a backend failure is the server's fault: 500, keep serving
            self.log_error("retrieval failed: %r", e)
            self._send_json(500, {"error": f"retrieval failed: {type(e).__name__}: {e}"})
            return
        self._send_json(200, format_response(results, return_scores))

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def log_error(self, format: str, *args: Any) -> None:
        super().log_message(format, *args)  # errors are always logged to stderr


class RetrieverServer(ThreadingHTTPServer):
    """A Search-R1-compatible retriever server over a `SearchBackend`.

    Example:
        >>> with RetrieverServer(BM25Index.build(docs), port=0) as srv:  # doctest: +SKIP
        ...     RetrieverClient(srv.url).search(["who founded x"], topk=3)

    Args:
        backend: What answers the queries (usually a `BM25Index`).
        host: Interface to bind (keep it on loopback unless you mean to expose it).
        port: TCP port; 0 picks a free one (read it back from `port` / `url`).
        default_topk: ``topk`` used when a request omits it.
        verbose: Log every request to stderr.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        backend: SearchBackend,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        default_topk: int = 3,
        verbose: bool = False,
    ):
        if not 1 <= default_topk <= MAX_TOPK:
            raise ValueError(f"default_topk must be in [1, {MAX_TOPK}], got {default_topk}.")
        self.backend = backend
        self.default_topk = default_topk
        self.verbose = verbose
        self.num_docs = int(getattr(backend, "num_docs", -1))
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def close_connections(self) -> None:
        """Shut down open keep-alive connections (their handler threads then exit)."""
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000`` (the endpoint is ``url + "/retrieve"``)."""
        host = self.server_address[0]
        return f"http://{host}:{self.port}"

    def start(self) -> RetrieverServer:
        """Serve from a daemon thread (for tests and notebooks); `stop` ends it."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="turngym-retriever",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close open connections and the listening socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.close_connections()
        self.server_close()

    def __enter__(self) -> RetrieverServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    corpus: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    topk: int = 3,
    cache_dir: str | Path | None = None,
    cache: bool = True,
    verbose: bool = False,
) -> None:
    """Index ``corpus`` (cached) and serve it until SIGINT / SIGTERM.

    Prints one line ``turngym retriever: N docs, listening on http://HOST:PORT/retrieve`` to stdout
    once it accepts connections (with ``port=0`` that line gives the port picked).
    """
    index = BM25Index.build(corpus, cache_dir=cache_dir, cache=cache)
    server = RetrieverServer(index, host, port, default_topk=topk, verbose=verbose)

    def _stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    print(f"turngym retriever: {index.num_docs} docs, listening on {server.url}/retrieve", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def spawn(
    corpus: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    topk: int = 3,
    cache_dir: str | Path | None = None,
    startup_timeout_s: float = 120.0,
    via_cli: bool = False,
) -> tuple[subprocess.Popen, str]:
    """Start the server in a child process and wait until it listens.

    Args:
        corpus: Search-R1 JSONL corpus.
        host: Interface to bind.
        port: TCP port; 0 (default) picks a free one.
        topk: Default ``topk``.
        cache_dir: Index cache directory.
        startup_timeout_s: How long to wait for indexing and the listening line.
        via_cli: Start it as ``turngym serve-retriever`` (``python -m turngym.cli``) instead of
            ``python -m turngym.tools.search.server``; same server, one more layer of argument parsing.

    Returns:
        ``(process, url)``: the `subprocess.Popen` (stop it with ``process.terminate()``) and its
        ``/retrieve`` endpoint URL.

    Raises:
        RuntimeError: If the server exits or does not listen in time (the message has its stderr).
    """
    entry = ["turngym.cli", "serve-retriever"] if via_cli else ["turngym.tools.search.server"]
    cmd = [sys.executable, "-m", *entry, "--corpus", str(corpus), "--host", host, "--port", str(port)]
    cmd += ["--topk", str(topk)]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    errlog = tempfile.TemporaryFile()  # noqa: SIM115 - never a pipe: a chatty server must not block on a full pipe
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=errlog, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=0.2):
                line = proc.stdout.readline()
                break
    if b"listening on " not in line:
        proc.kill()
        proc.wait(timeout=10)
        errlog.seek(0)
        err = errlog.read().decode(errors="replace")
        raise RuntimeError(
            f"retriever server did not start (exit code {proc.returncode}): stdout={line!r}, "
            f"stderr={err[-2000:]}"
        )
    errlog.close()  # the child keeps its own handle
    proc.stdout.close()  # nothing more is printed; do not let the pipe fill up
    return proc, line.decode().strip().split("listening on ", 1)[1]


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="turngym serve-retriever",
        description="Serve a BM25 index of a Search-R1 JSONL corpus over the Search-R1 /retrieve HTTP API.",
    )
    p.add_argument("--corpus", required=True, help='JSONL corpus, one {"id", "contents"} object per line.')
    p.add_argument("--host", default="127.0.0.1", help="Interface to bind (default: loopback).")
    p.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (default 8000).")
    p.add_argument("--topk", type=int, default=3, help="Hits per query when a request omits topk.")
    p.add_argument("--cache-dir", default=None, help="Index cache directory (default ~/.cache/turngym/bm25).")
    p.add_argument("--no-cache", action="store_true", help="Build the index in memory only.")
    p.add_argument("--verbose", action="store_true", help="Log every request.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``turngym serve-retriever``); returns the exit code."""
    args = build_arg_parser().parse_args(argv)
    from turngym.errors import ConfigError

    try:
        serve(
            args.corpus,
            args.host,
            args.port,
            topk=args.topk,
            cache_dir=args.cache_dir,
            cache=not args.no_cache,
            verbose=args.verbose,
        )
    except (ConfigError, OSError) as e:
        print(f"turngym serve-retriever: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
