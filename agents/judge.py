"""An LLM judge / generator over any OpenAI-compatible ``/v1/completions`` server.

The credit methods that ask an LLM (CAPO's step critiques, CALM's subgoals and judgements, LaRe's reward code)
take a ``judge(prompts) -> completions`` callable and import no model code; `OpenAIJudge` is that callable for a
served model (vLLM, the project's own `turngym.agents.openai_server`, any hosted endpoint)::

    judge = OpenAIJudge("http://127.0.0.1:8011/v1", temperature=0.7, max_tokens=256)
    texts = judge(["Which steps are wrong? ...", ...])

``k`` independent samples of one prompt are asked for by repeating the prompt ``k`` times (temperature > 0).
Prompts are sent as text, ``batch_size`` per request; a chat template is applied when a ``tokenizer`` with one is
given (the judge model's own). Transport errors, HTTP errors and a wrong number of choices raise `JudgeError`
(providers turn it into `SignalError`, never a silent neutral signal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from turngym.errors import TurngymError

__all__ = ["JudgeError", "OpenAIJudge"]


class JudgeError(TurngymError, RuntimeError):
    """The judge server could not be reached or answered with something unusable."""


class OpenAIJudge:
    """``judge(prompts) -> completions`` over an OpenAI-compatible completions endpoint.

    Args:
        base_url: The server's ``.../v1`` address.
        model: Model name to request; None asks ``/v1/models`` for the first one.
        temperature: Sampling temperature (> 0 for repeated critiques that can disagree).
        max_tokens: Completion budget.
        batch_size: Prompts per request.
        timeout_s: Per-request timeout.
        api_key: Sent as a bearer token when given.
        tokenizer: Optional tokenizer of the judge model: prompts are wrapped as one user message with its chat
            template.
    """

    def __init__(self, base_url: str, *, model: str | None = None, temperature: float = 0.7, max_tokens: int = 512,
                 batch_size: int = 16, timeout_s: float = 300.0, api_key: str | None = None, tokenizer: Any = None):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.temperature, self.max_tokens, self.batch_size = temperature, max_tokens, max(1, int(batch_size))
        self.tokenizer = tokenizer
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers, trust_env=False)
        self._model = model
        self.calls = 0

    @property
    def model(self) -> str:
        if self._model is None:
            data = self._request("GET", "/models")
            try:
                self._model = str(data["data"][0]["id"])
            except (KeyError, IndexError, TypeError) as e:
                raise JudgeError(f"{self.base_url}/models lists no model: {data!r:.200}") from e
        return self._model

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            r = self._client.request(method, self.base_url + path, json=body)
        except httpx.HTTPError as e:
            raise JudgeError(f"judge server {self.base_url} unreachable: {type(e).__name__}: {e}") from e
        if r.status_code != 200:
            raise JudgeError(f"judge server {self.base_url}{path} answered HTTP {r.status_code}: {r.text[:300]}")
        try:
            return r.json()
        except ValueError as e:
            raise JudgeError(f"judge server {self.base_url}{path} sent no JSON: {r.text[:200]!r}") from e

    def _render(self, prompt: str) -> str:
        tmpl = getattr(self.tokenizer, "chat_template", None)
        if not tmpl:
            return prompt
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        out: list[str] = []
        prompts = [self._render(str(p)) for p in prompts]
        for s in range(0, len(prompts), self.batch_size):
            chunk = prompts[s:s + self.batch_size]
            body = {"model": self.model, "prompt": chunk, "temperature": self.temperature,
                    "max_tokens": self.max_tokens}
            data = self._request("POST", "/completions", body)
            self.calls += 1
            choices = data.get("choices") if isinstance(data, dict) else None
            if not isinstance(choices, list) or len(choices) != len(chunk):
                raise JudgeError(f"judge server returned {len(choices) if isinstance(choices, list) else 'no'} "
                                 f"choices for {len(chunk)} prompts.")
            by_index = sorted(choices, key=lambda c: int(c.get("index", 0)))
            out.extend(str(c.get("text", "")) for c in by_index)
        return out

    def close(self) -> None:
        self._client.close()
