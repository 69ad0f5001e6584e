"""A tiny OpenAI-compatible completions server backed by a `Policy` (reference server for tests and demos).

Serves ``GET /v1/models`` and ``POST /v1/completions`` on a loopback address with the standard library's
threaded HTTP server. Prompts may be text, one list of token ids, or a list of either; the response follows
the OpenAI completions schema plus vLLM's extensions: ``logprobs.tokens`` as ``"token_id:<id>"`` when
``return_tokens_as_token_ids`` is set, ``token_ids`` per choice when ``return_token_ids`` is set, and
``logprobs.token_logprobs`` with the policy's log-probs (for `HFPolicy` those of the tempered distribution
``softmax(logits / temperature)``, raw when greedy; `turngym.agents.policy`).

Run it::

    python -m turngym.agents.openai_server --model tiny --env search/HopQA-v0 --port 8011

Not for production: one request at a time is generated (a lock around the policy), no auth, no streaming.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from turngym.agents.policy import SamplingParams


def send_json(handler: BaseHTTPRequestHandler, code: int, obj: Any) -> None:
    """Answer an HTTP request with ``obj`` as JSON (status ``code``, with its length: keep-alive safe)."""
    data = json.dumps(obj).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class CompletionServer:
    """Serve `policy` (with `tokenizer`) at ``http://host:port/v1``.

    Args:
        policy: A policy with ``generate(contexts, params)``.
        tokenizer: Its tokenizer (text prompts, token strings).
        model_name: Name listed by ``/v1/models``.
        host: Bind address (loopback by default).
        port: Port (0 picks a free one; see `url`).
    """

    def __init__(self, policy: Any, tokenizer: Any, *, model_name: str = "turngym-policy", host: str = "127.0.0.1",
                 port: int = 0):
        self.policy = policy
        self.tokenizer = tokenizer
        self.model_name = model_name
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                return

            def _send(self, code: int, obj: Any) -> None:
                send_json(self, code, obj)

            def do_GET(self) -> None:
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]})
                elif self.path.rstrip("/") in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                if self.path.rstrip("/") not in ("/v1/completions", "/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    n = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(n) or b"{}")
                    self._send(200, server.complete(body))
                except (ValueError, KeyError, TypeError) as e:
                    self._send(400, {"error": {"message": f"{type(e).__name__}: {e}", "type": "invalid_request"}})

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> CompletionServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> CompletionServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _prompts(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            return [list(self.tokenizer.encode(prompt, add_special_tokens=False))]
        if isinstance(prompt, list) and prompt and all(isinstance(x, int) for x in prompt):
            return [list(prompt)]
        if isinstance(prompt, list) and prompt:
            return [p for x in prompt for p in self._prompts(x)]
        raise ValueError("prompt must be a string, a list of token ids, or a non-empty list of those")

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Handle one ``/v1/completions`` request body; returns the response object."""
        prompts = self._prompts(body["prompt"])
        if int(body.get("n", 1)) != 1:
            raise ValueError("only n=1 is supported")
        stop = body.get("stop") or ()
        params = SamplingParams(
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            top_k=max(0, int(body.get("top_k", 0) or 0)),
            max_new_tokens=int(body.get("max_tokens", 16)),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            seed=body.get("seed"),
        )
        with self._lock:
            samples = self.policy.generate(prompts, params)
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        choices = []
        for i, s in enumerate(samples):
            choice: dict[str, Any] = {
                "index": i,
                "text": self.tokenizer.decode(s.ids),
                "finish_reason": "length" if s.finish_reason == "length" else "stop",
            }
            if body.get("logprobs") is not None:
                choice["logprobs"] = {
                    "tokens": [f"token_id:{t}" if as_ids else self.tokenizer.decode([t]) for t in s.ids],
                    "token_logprobs": s.logprobs,
                    "top_logprobs": None,
                    "text_offset": None,
                }
            if body.get("return_token_ids"):
                choice["token_ids"] = list(s.ids)
            choices.append(choice)
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:12]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": sum(len(p) for p in prompts),
                "completion_tokens": sum(len(s.ids) for s in samples),
            },
        }


def main(argv: list[str] | None = None) -> None:
    """``python -m turngym.agents.openai_server --model tiny --env ENV --port N``."""
    from turngym.agents.policy import HFPolicy
    from turngym.agents.tiny import load_policy_model
    from turngym.config import parse_kwarg_items

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--env", default="search/HopQA-v0")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("env_args", nargs="*", default=[], metavar="key=value", help="the env's constructor arguments")
    a = ap.parse_args(argv)
    kw = {"env_kwargs": parse_kwarg_items(a.env_args)} if a.model == "tiny" else {}
    model, tok = load_policy_model(a.model, env_id=a.env, **kw)
    srv = CompletionServer(HFPolicy(model, tok), tok, model_name=a.model, host=a.host, port=a.port)
    print(f"serving {a.model} at {srv.url}/v1", flush=True)
    srv.httpd.serve_forever()


if __name__ == "__main__":
    main()
