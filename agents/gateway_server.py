"""The gateway's sampler and HTTP server: OpenAI chat completions from the policy, recorded per episode.

`Gateway` serves ``/v1/chat/completions`` and ``/v1/models`` on loopback (the standard library's threaded HTTP
server). Concurrent requests go through one `Batcher`: it waits ``batch_window_s`` for more requests, then makes
one ``policy.generate`` call per set of sampling parameters. The recording (`turngym.agents.gateway_record`) and
the public API are described in `turngym.agents.gateway`.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from turngym.agents.gateway_record import (
    EpisodeStore,
    GatewayEpisode,
    GatewayError,
    Returned,
    Segment,
    match_history,
    normalize_message,
    to_trajectories,
    tool_calls_of,
    tool_results_of,
)
from turngym.agents.openai_server import send_json
from turngym.agents.policy import Sample, SamplingParams, decode_action
from turngym.agents.render import Renderer
from turngym.errors import ConfigError
from turngym.types import Trajectory, Turn

_EPISODE_PATH = re.compile(r"^/episodes/([A-Za-z0-9_-]+)(/.*)?$")


@dataclass
class GatewayStats:
    """What the gateway did: generate calls, batch sizes, time in the sampler, refused requests, splits."""

    generate_calls: int = 0
    requests: int = 0
    max_batch: int = 0
    generate_s: float = 0.0
    sampled_tokens: int = 0
    errors: int = 0
    splits: int = 0

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


class Batcher:
    """Collects concurrent sampling requests into batched ``policy.generate`` calls (one worker thread).

    Requests with the same sampling parameters (``max_new_tokens`` aside) share a call made with the largest
    ``max_new_tokens`` among them; each sample is then cut to its own request's budget, as the rollout engine does.
    With ``target`` (a count, e.g. of the open episodes) the wait ends as soon as that many requests are queued.
    """

    def __init__(self, policy: Any, stop_ids: Sequence[int], tokenizer: Any, *, window_s: float = 0.01,
                 max_batch: int = 64, lock: threading.Lock | None = None, stats: GatewayStats | None = None,
                 target: Callable[[], int] | None = None):
        self.policy = policy
        self.stop_ids = list(stop_ids)
        self.tokenizer = tokenizer
        self.window_s = float(window_s)
        self.max_batch = int(max_batch)
        self.lock = lock or threading.Lock()
        self.stats = stats or GatewayStats()
        self.target = target
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="turngym-gateway-batcher", daemon=True)
        self._thread.start()

    def submit(self, context: list[int], params: SamplingParams) -> Future:
        fut: Future = Future()
        self._q.put((list(context), params, fut))
        return fut

    def close(self) -> None:
        self._stop.set()
        self._q.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            first = self._q.get()
            if first is None:
                break
            batch = [first]
            deadline = time.perf_counter() + self.window_s
            while len(batch) < self.max_batch:
                if self.target is not None and len(batch) >= self.target():
                    break  # every open episode is waiting for this call: no reason to wait longer
                left = deadline - time.perf_counter()
                try:
                    item = self._q.get(timeout=max(left, 0.0)) if left > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._stop.set()
                    break
                batch.append(item)
            groups: dict[SamplingParams, list] = {}
            for item in batch:
                groups.setdefault(replace(item[1], max_new_tokens=1), []).append(item)
            for items in groups.values():
                self._generate(items)

    def _generate(self, items: list) -> None:
        budgets = [it[1].max_new_tokens for it in items]
        params = replace(items[0][1], max_new_tokens=max(budgets))
        t0 = time.perf_counter()
        try:
            with self.lock:
                samples = self.policy.generate([it[0] for it in items], params)
            if len(samples) != len(items):
                raise RuntimeError(f"policy.generate returned {len(samples)} samples for {len(items)} contexts")
        except Exception as e:  # noqa: BLE001 - each waiting request gets the error (HTTP 500), the server stays up
            for it in items:
                it[2].set_exception(e)
            return
        self.stats.generate_calls += 1
        self.stats.generate_s += time.perf_counter() - t0
        self.stats.max_batch = max(self.stats.max_batch, len(items))
        for it, s, b in zip(items, samples, budgets):
            it[2].set_result(self._cap(s, b))

    def _cap(self, s: Sample, budget: int) -> Sample:
        if len(s.ids) <= budget:
            return s
        ids = s.ids[:budget]
        lps = s.logprobs[:budget] if s.logprobs is not None else None
        return Sample(ids=ids, logprobs=lps, text=decode_action(self.tokenizer, ids, self.stop_ids),
                      finish_reason="length", exact_ids=s.exact_ids, meta=dict(s.meta))


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``(reasoning, rest)``: the text before ``</think>`` (without ``<think>``), and what follows it."""
    if "</think>" not in text:
        return None, text
    head, rest = text.split("</think>", 1)
    return head.replace("<think>", "", 1).strip(), rest


class Gateway:
    """An OpenAI-compatible chat endpoint over a policy that records token-faithful episodes.

    Args:
        policy: Anything with ``generate(contexts, params) -> list[Sample]`` (`HFPolicy`, `VLLMPolicy`, ...).
        renderer: A `Renderer` for the policy's tokenizer; requests with ``tools`` use `Renderer.for_tools`.
        parser: Tool-call parser (a name of `turngym.tools.parsers.PARSERS` or a parser object, e.g. an env's
            ``env.parser``): tool calls in the sampled text become ``tool_calls`` when the request lists tools.
        model_name: The id ``/v1/models`` lists (requests may name any model).
        host, port: Bind address (loopback) and port (0 picks a free one; see `url`).
        batch_window_s: How long the batcher waits for more requests before a generate call.
        max_batch_size: Most requests per generate call.
        max_context_tokens: Longest context (prompt + history) served; default the policy's ``max_positions``.
        max_episode_tokens: Most sampled tokens per episode (None: no cap); each request's ``max_tokens`` is cut
            to what is left, and a request with nothing left gets HTTP 400 ``episode_token_budget_exhausted``.
        default_max_tokens: ``max_tokens`` of a request that gives none.
        params_override: Sampling settings that replace the request's temperature, top-p, top-k and seed (the
            trainer sets it, so the recorded log-probs are those of the policy it trains); ``max_new_tokens``
            caps the request's ``max_tokens``.
        on_mismatch: ``"split"`` (a changed history starts a new segment of the episode) or ``"reject"`` (HTTP
            409 ``history_mismatch``, nothing recorded).
        max_body_bytes: Largest request body accepted (HTTP 413 above it).
        request_timeout_s: Longest wait for the sampler per request (HTTP 504 after it).
        generate_lock: Lock held around ``policy.generate`` (share it with code that changes the weights).
        batch_open_episodes: Stop waiting for more requests as soon as every open episode has one queued (the
            trainer sets it: its agents end their episode when they finish, so the open ones are the running ones).
    """

    def __init__(self, policy: Any, renderer: Renderer, *, parser: Any = "hermes", model_name: str = "turngym-policy",
                 host: str = "127.0.0.1", port: int = 0, batch_window_s: float = 0.01, max_batch_size: int = 64,
                 max_context_tokens: int | None = None, max_episode_tokens: int | None = None,
                 default_max_tokens: int = 256, params_override: SamplingParams | None = None,
                 on_mismatch: str = "split", max_body_bytes: int = 8 << 20, request_timeout_s: float = 600.0,
                 generate_lock: threading.Lock | None = None, batch_open_episodes: bool = False):
        if on_mismatch not in ("split", "reject"):
            raise ConfigError(f"Gateway: on_mismatch must be 'split' or 'reject', got {on_mismatch!r}.")
        self.policy = policy
        self.renderer = renderer
        self.tokenizer = renderer.tokenizer
        self.parser_spec = parser
        self.model_name = model_name
        self.max_context_tokens = max_context_tokens or getattr(policy, "max_positions", None)
        self.max_episode_tokens = max_episode_tokens
        self.default_max_tokens = int(default_max_tokens)
        self.params_override = params_override
        self.on_mismatch = on_mismatch
        self.max_body_bytes = int(max_body_bytes)
        self.request_timeout_s = float(request_timeout_s)
        self.stop_ids = list(getattr(policy, "stop_token_ids", None) or renderer.stop_token_ids)
        self.episodes = EpisodeStore()
        self.stats = GatewayStats()
        self._renderers: dict[str, Renderer] = {}
        self._parsers: dict[str, Any] = {}
        self._rlock = threading.Lock()
        self.batcher = Batcher(policy, self.stop_ids, self.tokenizer, window_s=batch_window_s,
                               max_batch=max_batch_size, lock=generate_lock, stats=self.stats,
                               target=self.episodes.open_count if batch_open_episodes else None)
        self.httpd = _Server((host, port), _handler(self))
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``http://host:port`` (an episode's OpenAI base URL is ``episode_url(id)``)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def episode_url(self, episode_id: str) -> str:
        """The OpenAI ``base_url`` of an episode: ``{url}/episodes/{id}/v1``."""
        return f"{self.url}/episodes/{episode_id}/v1"

    def start(self) -> Gateway:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="turngym-gateway", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and the batcher."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread = None
        self.httpd.server_close()
        self.batcher.close()

    def __enter__(self) -> Gateway:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ episodes (Python API)

    def new_episode(self, *, group_id: str = "", env_id: str = "", seed: int | None = None,
                    meta: dict | None = None, episode_id: str | None = None) -> str:
        """Open an episode; returns its id (its base URL is `episode_url`)."""
        return self.episodes.new(group_id=group_id, env_id=env_id, seed=seed, meta=meta, episode_id=episode_id).id

    def end_episode(self, episode_id: str, reward: float, *, final_answer: str | None = None,
                    success: bool | None = None, info: dict | None = None, anchors: list | None = None) -> None:
        """End an episode with the reward the agent reports; later requests to it get HTTP 409. ``anchors`` (one
        JSON value per turn, None to skip one) become ``Turn.info["anchor_obs"]``, GiGPO's anchor states."""
        self.episodes.end(episode_id, reward, final_answer=final_answer, success=success, info=info, anchors=anchors)

    def discard_episode(self, episode_id: str) -> None:
        """Close an episode without a reward (it yields no trajectory)."""
        self.episodes.discard(episode_id)

    def episode(self, episode_id: str) -> GatewayEpisode:
        return self.episodes.get(episode_id, open_only=False)

    def trajectories(self, episode_ids: Sequence[str] | None = None, *, pop: bool = False) -> list[Trajectory]:
        """Trajectories of the ended episodes among `episode_ids` (default all), in that order; ``pop`` forgets
        the episodes afterwards (open or discarded ones too)."""
        out: list[Trajectory] = []
        for eid in list(episode_ids) if episode_ids is not None else self.episodes.ids():
            ep = self.episodes.get(eid, open_only=False)
            if ep.state == "ended":
                out.extend(to_trajectories(ep))
            if pop:
                self.episodes.pop(eid)
        return out

    # ------------------------------------------------------------------ chat completions

    def _renderer_for(self, tools: list[dict] | None) -> Renderer:
        key = json.dumps(tools, sort_keys=True)
        with self._rlock:
            if key not in self._renderers:
                self._renderers[key] = self.renderer.for_tools(tools)
            return self._renderers[key]

    def _parser_for(self, tools: list[dict]) -> Any:
        if not isinstance(self.parser_spec, str):
            return self.parser_spec
        from turngym.tools.parsers import get_parser

        key = json.dumps(tools, sort_keys=True)
        with self._rlock:
            if key not in self._parsers:
                self._parsers[key] = get_parser(self.parser_spec, tools)
            return self._parsers[key]

    def _params(self, body: dict[str, Any]) -> SamplingParams:
        if body.get("stream"):
            raise GatewayError(400, "stream=true is not supported by the turngym gateway", param="stream")
        if int(body.get("n") or 1) != 1:
            raise GatewayError(400, "only n=1 is supported; send one request per sample", param="n")
        try:
            mt = body.get("max_completion_tokens", body.get("max_tokens"))
            stop = body.get("stop") or ()
            p = SamplingParams(
                temperature=float(body["temperature"]) if body.get("temperature") is not None else 1.0,
                top_p=float(body["top_p"]) if body.get("top_p") is not None else 1.0,
                top_k=max(0, int(body.get("top_k") or 0)),
                max_new_tokens=int(mt) if mt is not None else self.default_max_tokens,
                stop=(stop,) if isinstance(stop, str) else tuple(str(s) for s in stop),
                seed=int(body["seed"]) if body.get("seed") is not None else None,
            )
        except (ConfigError, TypeError, ValueError) as e:
            raise GatewayError(400, f"bad sampling parameters: {e}") from None
        if self.params_override is not None:
            o = self.params_override
            p = replace(o, max_new_tokens=min(p.max_new_tokens, o.max_new_tokens), stop=p.stop or o.stop)
        return p

    def _tools(self, body: dict[str, Any]) -> list[dict] | None:
        tools = body.get("tools")
        if tools is None or tools == []:
            return None
        if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("function"), dict)
                                                  and t["function"].get("name") for t in tools):
            raise GatewayError(400, "tools must be a list of {'type': 'function', 'function': {'name': ...}}",
                               param="tools")
        return tools

    def chat(self, body: Any, episode_id: str | None = None) -> dict[str, Any]:
        """One chat completion (the HTTP handler's body); records into `episode_id` when given.

        Raises:
            GatewayError: The request is refused (nothing is recorded).
        """
        if not isinstance(body, dict):
            raise GatewayError(400, f"the request body must be a JSON object, got {type(body).__name__}")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise GatewayError(400, "messages must be a non-empty list", param="messages")
        params = self._params(body)
        tools = self._tools(body)
        parser = self._parser_for(tools) if tools else None
        shown = tools if (parser is None or getattr(parser, "schemas_in_prompt", True)) else None
        renderer = self._renderer_for(shown)
        if episode_id is None:
            call_names: dict[str, str] = {}
            messages = [normalize_message(m, call_names) for m in msgs]
            context = self._render_initial(renderer, messages)
            sample = self._sample(context, params, None)
            ret, raw = self._returned(sample.text, tools, parser, 0)
            return self._response(sample, ret, context, body, None, 0)
        ep = self.episodes.get(episode_id)
        with ep.lock:  # one request of an episode at a time
            if ep.state != "open":
                raise GatewayError(409, f"episode {episode_id!r} has {ep.state}", code="episode_closed")
            seg, new, split = self._continue(ep, msgs, renderer, shown)
            if seg is None:  # a new segment: the whole conversation is its prompt
                context = self._render_initial(renderer, new)
            else:
                last = seg.turns[-1]
                try:
                    obs_ids = renderer.observation(new, closed=last.info.get("finish_reason") == "stop")
                except Exception as e:  # noqa: BLE001 - messages the template cannot render: a bad request
                    raise GatewayError(400, f"cannot render the new messages: {type(e).__name__}: {e}",
                                       param="messages") from None
                context = seg.context + list(obs_ids)
            sample = self._sample(context, params, ep)
            # --- commit (only now: a refused or failed request records nothing)
            turn_index = ep.num_turns
            if seg is None:
                seg = Segment(prompt_ids=list(context), prompt_messages=new, tools=shown, context=list(context),
                              split=split)
                ep.segments.append(seg)
                if split:
                    self.stats.splits += 1
            else:
                seg.turns[-1].obs_ids = list(obs_ids)
                seg.turns[-1].obs_messages = new
                seg.turns[-1].tool_results = tool_results_of(seg.turns[-1], new)
                seg.context = list(context)
            ret, raw = self._returned(sample.text, tools, parser, turn_index)
            turn = Turn(action_ids=list(sample.ids), logprobs=list(sample.logprobs or []), action_text=sample.text,
                        tool_calls=tool_calls_of(ret, raw, turn_index),
                        info={"finish_reason": sample.finish_reason, "parse_errors": ret_errors(parser, tools,
                                                                                              sample.text)})
            seg.turns.append(turn)
            seg.returned.append(ret)
            seg.context.extend(sample.ids)
            ep.sampled_tokens += len(sample.ids)
            return self._response(sample, ret, context, body, ep.id, turn_index)

    def _continue(self, ep: GatewayEpisode, msgs: list, renderer: Renderer, shown: list[dict] | None
                  ) -> tuple[Segment | None, list, str | None]:
        """``(segment, new messages, split reason)``: the open segment and the messages after its last
        response, or ``(None, whole conversation, reason)`` when a new segment starts."""
        seg = ep.segments[-1] if ep.segments else None
        call_names = {k: v for s in ep.segments for r in s.returned for k, v in r.call_names.items()}
        messages = [normalize_message(m, call_names) for m in msgs]
        if seg is None:
            return None, messages, None
        reason = "" if shown == seg.tools else "the request's tools differ from the episode's"
        new = None
        if not reason:
            new, reason = match_history(seg, messages)
        if new is not None:
            return seg, new, None
        if self.on_mismatch == "reject":
            raise GatewayError(409, f"episode {ep.id!r}: {reason}; nothing was recorded (on_mismatch='reject')",
                               code="history_mismatch")
        if messages[-1]["role"] == "assistant":
            raise GatewayError(400, "the conversation ends with an assistant message; prefilling is not supported",
                               param="messages")
        return None, messages, reason

    def _render_initial(self, renderer: Renderer, messages: list) -> list[int]:
        if messages[-1]["role"] == "assistant":
            raise GatewayError(400, "the conversation ends with an assistant message; prefilling is not supported",
                               param="messages")
        try:
            return list(renderer.initial(messages))
        except Exception as e:  # noqa: BLE001 - a template that cannot render these messages is a bad request
            raise GatewayError(400, f"cannot render the messages: {type(e).__name__}: {e}", param="messages") from None

    def _sample(self, context: list[int], params: SamplingParams, ep: GatewayEpisode | None) -> Sample:
        budget = params.max_new_tokens
        if self.max_context_tokens is not None:
            if len(context) >= self.max_context_tokens:
                raise GatewayError(400, f"the prompt has {len(context)} tokens; this model serves at most "
                                        f"{self.max_context_tokens - 1} prompt tokens", code="context_length_exceeded",
                                   param="messages")
            budget = min(budget, self.max_context_tokens - len(context))
        if ep is not None and self.max_episode_tokens is not None:
            left = self.max_episode_tokens - ep.sampled_tokens
            if left <= 0:
                ep.budget_exhausted = True
                raise GatewayError(400, f"episode {ep.id!r} used its {self.max_episode_tokens} sampled tokens",
                                   code="episode_token_budget_exhausted")
            budget = min(budget, left)
        fut = self.batcher.submit(context, replace(params, max_new_tokens=budget))
        try:
            sample = fut.result(timeout=self.request_timeout_s)
        except FutureTimeout:
            raise GatewayError(504, f"the sampler did not answer within {self.request_timeout_s} s",
                               code="timeout") from None
        except Exception as e:  # noqa: BLE001
            raise GatewayError(500, f"sampling failed: {type(e).__name__}: {e}", code="sampler_error") from None
        self.stats.requests += 1
        self.stats.sampled_tokens += len(sample.ids)
        return sample

    def _returned(self, text: str, tools: list[dict] | None, parser: Any, turn_index: int
                  ) -> tuple[Returned, list[str]]:
        reasoning, rest = split_reasoning(text)
        calls: list[tuple[str, Any]] = []
        raw: list[str] = []
        names: dict[str, str] = {}
        content = rest
        if tools and parser is not None:
            known = {t["function"]["name"] for t in tools}
            for c in parser.parse(rest).calls:
                if c.name in known:
                    calls.append((c.name, c.arguments))
                    raw.append(c.raw)
                    names[f"call_{turn_index}_{len(names)}"] = c.name
                    content = content.replace(c.raw, "", 1) if c.raw else content
        content = content.strip() if (calls or reasoning is not None) else content
        return Returned(full=text, content=content or None, reasoning=reasoning, calls=calls, call_names=names), raw

    def _response(self, sample: Sample, ret: Returned, context: list[int], body: dict, episode_id: str | None,
                  turn_index: int) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": ret.content}
        if ret.calls:
            msg["tool_calls"] = [{"id": cid, "type": "function",
                                  "function": {"name": name, "arguments": json.dumps(args)}}
                                 for cid, (name, args) in zip(ret.call_names, ret.calls)]
        if ret.reasoning is not None:
            msg["reasoning_content"] = ret.reasoning
        finish = "tool_calls" if ret.calls else ("length" if sample.finish_reason == "length" else "stop")
        choice: dict[str, Any] = {"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}
        if body.get("logprobs") and sample.logprobs is not None:
            choice["logprobs"] = {"content": [
                {"token": self.tokenizer.decode([t]), "logprob": float(lp), "bytes": None, "top_logprobs": []}
                for t, lp in zip(sample.ids, sample.logprobs)]}
        out: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": str(body.get("model") or self.model_name), "choices": [choice],
            "usage": {"prompt_tokens": len(context), "completion_tokens": len(sample.ids),
                      "total_tokens": len(context) + len(sample.ids)},
        }
        if body.get("return_token_ids"):
            out["turngym"] = {"episode_id": episode_id, "turn": turn_index, "prompt_token_ids": list(context),
                              "token_ids": list(sample.ids), "logprobs": sample.logprobs}
        return out


def ret_errors(parser: Any, tools: list[dict] | None, text: str) -> list[str]:
    """The parser's errors for the sampled text (malformed tool calls), when the request listed tools."""
    if not tools or parser is None:
        return []
    return list(parser.parse(split_reasoning(text)[1]).errors)


# ----------------------------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    """The threaded server with a listen backlog for many agents connecting at once (the default is 5), quiet
    about clients that hang up before their answer."""

    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def _handler(gw: Gateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test and training output quiet
            return

        def _send(self, code: int, obj: Any) -> None:
            send_json(self, code, obj)

        def _route(self) -> tuple[str | None, str]:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            m = _EPISODE_PATH.match(path)
            if m:
                return m.group(1), (m.group(2) or "")
            return self.headers.get("X-Turngym-Episode") or None, path

        def do_GET(self) -> None:
            eid, path = self._route()
            try:
                if path in ("/v1/models", "/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": gw.model_name, "object": "model", "created": 0, "owned_by": "turngym"}]})
                elif path in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                elif eid is not None and path == "":
                    ep = gw.episode(eid)
                    self._send(200, {"id": ep.id, "state": ep.state, "turns": ep.num_turns,
                                     "segments": len(ep.segments), "reward": ep.reward if ep.state == "ended" else None})
                elif eid is not None and path == "/trajectories":
                    self._send(200, {"id": eid, "trajectories": [t.to_dict() for t in to_trajectories(gw.episode(eid))]})
                else:
                    self._send(404, GatewayError(404, f"no route GET {self.path}", code="not_found").body())
            except GatewayError as e:
                self._send(e.status, e.body())

        def do_POST(self) -> None:
            try:
                eid, path = self._route()
                body = self._body()
                if path in ("/v1/chat/completions", "/chat/completions"):
                    self._send(200, gw.chat(body, eid))
                elif eid is None and path == "/episodes":
                    b = body if isinstance(body, dict) else {}
                    new = gw.new_episode(group_id=str(b.get("group_id") or ""), meta=b.get("meta") or {},
                                         episode_id=b.get("id"))
                    self._send(200, {"id": new, "base_url": gw.episode_url(new)})
                elif eid is not None and path == "/end":
                    if not isinstance(body, dict) or "reward" not in body:
                        raise GatewayError(400, 'the body must be {"reward": <number>, ...}', param="reward")
                    gw.end_episode(eid, body["reward"], final_answer=body.get("final_answer"),
                                   success=body.get("success"), info=body.get("info"), anchors=body.get("anchors"))
                    self._send(200, {"id": eid, "state": "ended"})
                else:
                    raise GatewayError(404, f"no route POST {self.path}", code="not_found")
            except GatewayError as e:
                gw.stats.errors += 1
                self._send(e.status, e.body())
            except Exception as e:  # noqa: BLE001 - a framework bug answers 500; the server stays up
                gw.stats.errors += 1
                self._send(500, GatewayError(500, f"{type(e).__name__}: {e}", code="internal_error").body())

        def _body(self) -> Any:
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise GatewayError(400, "bad Content-Length header") from None
            if n > gw.max_body_bytes:
                self.close_connection = True
                raise GatewayError(413, f"request body of {n} bytes exceeds the gateway's limit of "
                                        f"{gw.max_body_bytes} bytes", code="request_too_large")
            raw = self.rfile.read(n) if n else b""
            if not raw:
                return {}
            try:
                return json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise GatewayError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None

    return Handler
