"""Helpers shared by the search tests: small corpora, free ports, real fault-injecting HTTP servers."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultServer(ThreadingHTTPServer):
    """A real HTTP server on loopback that misbehaves on purpose.

    Modes: ``"500"`` (HTTP 500), ``"garbage"`` (200 with non-JSON body), ``"wrong_shape"`` (200, JSON
    without a ``result`` list), ``"slow"`` (sleeps ``delay_s`` then answers well), ``"400"`` (HTTP 400),
    ``"ok"`` (a well-formed Search-R1 answer with one fake document per query).
    ``fail_first``: when > 0, only the first ``fail_first`` requests misbehave, then it answers ``"ok"``.
    """

    daemon_threads = True

    def __init__(self, mode: str, *, delay_s: float = 0.0, fail_first: int = 0):
        self.mode = mode
        self.delay_s = delay_s
        self.fail_first = fail_first
        self.hits = 0
        self.times: list[float] = []
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _FaultHandler)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/retrieve"

    def __enter__(self) -> FaultServer:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultServer

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server._lock:
            self.server.hits += 1
            self.server.times.append(time.monotonic())
            n = self.server.hits
        mode = self.server.mode
        if self.server.fail_first and n > self.server.fail_first:
            mode = "ok"
        if mode == "slow":
            time.sleep(self.server.delay_s)
            mode = "ok"
        if mode == "500":
            self._send(500, b'{"error": "boom"}')
        elif mode == "400":
            self._send(400, b'{"error": "bad request"}')
        elif mode == "garbage":
            self._send(200, b"<html>this is not json")
        elif mode == "wrong_shape":
            self._send(200, b'{"results": []}')
        else:
            result = [
                [{"document": {"id": f"x{i}", "contents": f'"T{i}"\nabout {q}'}, "score": 1.0}]
                for i, q in enumerate(req["queries"])
            ]
            self._send(200, json.dumps({"result": result}).encode())


def start_server_process(
    corpus: Path, cache_dir: Path, *, topk: int = 3, via_cli: bool = False
) -> tuple[subprocess.Popen, str]:
    """The retriever server in a child process on a free loopback port: ``(process, /retrieve url)``.

    ``via_cli=True`` starts it as ``turngym serve-retriever`` (``python -m turngym.cli``).
    """
    from turngym.tools.search.server import spawn

    return spawn(corpus, port=0, topk=topk, cache_dir=cache_dir, startup_timeout_s=90, via_cli=via_cli)
