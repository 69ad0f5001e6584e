"""The OpenAI-compatible gateway: an agent's own model calls, served by the policy, become `Trajectory`s.

An agent written against the OpenAI API (the ``openai`` client, or a framework on top of it) points its
``base_url`` at an episode of the gateway; the gateway answers ``/v1/chat/completions`` with the policy being
trained and records, per episode, the exact prompt ids, sampled ids and log-probs. When the agent reports the
episode's reward, its turns are a `Trajectory` like those of the env-API rollout engine, so every credit method
and trainer applies.

Routes (``http://127.0.0.1:PORT``):

* ``POST /episodes`` ``{"group_id"?, "meta"?, "id"?}`` -> ``{"id", "base_url"}``: open an episode.
* ``POST /episodes/<id>/v1/chat/completions``: a chat completion recorded into episode ``<id>`` (the agent's
  ``base_url`` is ``.../episodes/<id>/v1``). The header ``X-Turngym-Episode: <id>`` on ``/v1/chat/completions``
  does the same. Without either, the request is served and not recorded. The ``user`` field is not used.
* ``POST /episodes/<id>/end`` ``{"reward": float, "final_answer"?, "success"?, "info"?, "anchors"?}``: end the
  episode; later requests to it get HTTP 409. ``anchors`` (one JSON value per turn) become GiGPO's anchor states
  (``Turn.info["anchor_obs"]``).
* ``GET /episodes/<id>``: its state, turn and segment counts; ``GET /episodes/<id>/trajectories``: the recorded
  `Trajectory`s of an ended episode as JSON (``Trajectory.from_dict`` reads them); ``GET /v1/models``;
  ``GET /health``.

The Python API does the same: `Gateway.new_episode`, `Gateway.episode_url`, `Gateway.end_episode`,
`Gateway.trajectories`.

Requests: ``messages`` (system/developer, user, assistant with ``tool_calls``, tool), ``tools`` (rendered by the
chat template, `Renderer.for_tools`; not shown when the parser teaches its own syntax, as the env-API renderer
does), ``temperature``, ``top_p``, ``top_k``, ``max_tokens`` / ``max_completion_tokens``, ``stop``, ``seed``,
``logprobs``; ``n`` must be 1 and ``stream`` false. ``return_token_ids: true`` (``extra_body``) adds a ``turngym``
object with the prompt and sampled token ids and log-probs. Tool calls in the sampled text are parsed with the
gateway's parser (``hermes`` by default; the trainer uses the env's) and returned as ``tool_calls`` (ids
``call_<turn>_<i>``; content without the call markup; ``finish_reason "tool_calls"``); a ``<think>...</think>``
block is returned as ``reasoning_content``. A stop string stays in the content (its tokens were sampled).

Recording (`turngym.agents.gateway_record`): the first request of an episode is rendered whole; every later
request must re-send the recorded conversation (each assistant message as returned: with or without its
reasoning, or as the raw sampled text), and only the messages after the last response are rendered, alone, and
appended after the sampled ids. Past turns are never re-tokenized. A changed history (edited, truncated,
inserted, re-ordered messages, other tools) splits the episode (``on_mismatch="split"``: a new segment whose
prompt is the whole new conversation) or is refused (``"reject"``: HTTP 409).

Bad input is an HTTP error with OpenAI's error body, and nothing is recorded: malformed JSON (400
``invalid_json``), a bad body or parameters (400), unknown episode (404 ``episode_not_found``), an ended episode
(409 ``episode_closed``), a prompt longer than the model's context (400 ``context_length_exceeded``), an episode
over its token budget (400 ``episode_token_budget_exhausted``), a body over ``max_body_bytes`` (413), a sampler
failure (500) or timeout (504). The server stays up.

Concurrency: requests from many episodes are batched by one worker (`Batcher`): it waits ``batch_window_s`` (10
ms) for more, then makes one ``policy.generate`` call per set of sampling parameters. The weights are the
policy's own (an `HFPolicy` samples from the model being trained, so updates are live for the next request).

Run it::

    turngym serve-policy --model tiny --env search/HopQA-v0 --port 8012
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from turngym.agents.gateway_record import EpisodeStore, GatewayEpisode, GatewayError, match_history
from turngym.agents.gateway_server import Batcher, Gateway, GatewayStats

__all__ = ["Batcher", "EpisodeStore", "Gateway", "GatewayEpisode", "GatewayError", "GatewayStats", "main",
           "match_history", "serve_policy"]


def serve_policy(model: str = "tiny", *, env_id: str | None = "search/HopQA-v0", env_kwargs: dict | None = None,
                 host: str = "127.0.0.1", port: int = 8012, parser: str | None = None, device: str = "cpu",
                 **gateway_kwargs) -> Gateway:
    """Load a policy (a preset, a local directory or a HF id) and return a started `Gateway` serving it.

    Args:
        model: ``"tiny"`` (built from `env_id`'s text), ``"smollm2-135m"``, a directory or a hub id.
        env_id: The env whose text trains the tiny tokenizer, and whose parser reads tool calls (unless `parser`).
        env_kwargs: The env's constructor arguments (as ``turngym train``'s ``env_kwargs``).
        host, port: Bind address and port.
        parser: Tool-call parser name (default: the env's, else ``"hermes"``).
        device: Torch device.
        **gateway_kwargs: Passed to `Gateway`.
    """
    from turngym.agents.policy import HFPolicy
    from turngym.agents.render import Renderer
    from turngym.agents.tiny import load_policy_model

    kw = {"env_kwargs": env_kwargs} if model == "tiny" else {}
    mdl, tok = load_policy_model(model, env_id=env_id, device=device, **kw)
    if parser is None and env_id is not None:
        from turngym.envs import make

        env = make(env_id, **(env_kwargs or {}))
        parser = env.parser.name
        env.close()
    gw = Gateway(HFPolicy(mdl, tok), Renderer(tok), parser=parser or "hermes", model_name=model, host=host, port=port,
                 **gateway_kwargs)
    return gw.start()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``turngym serve-policy``); returns the exit code."""
    ap = argparse.ArgumentParser(prog="turngym serve-policy", description=(
        "Serve a policy as an OpenAI-compatible chat endpoint on loopback, recording episodes "
        "(POST /episodes, then base_url=http://HOST:PORT/episodes/<id>/v1; see turngym.agents.gateway)."))
    ap.add_argument("--model", default="tiny", help="preset (tiny, smollm2-135m), local directory or HF id")
    ap.add_argument("--env", default="search/HopQA-v0", help="env for the tiny tokenizer and the tool-call parser")
    ap.add_argument("env_args", nargs="*", default=[], metavar="key=value", help="the env's constructor arguments")
    ap.add_argument("--parser", default=None, help="tool-call parser (hermes, tags); default: the env's")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8012)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-window-ms", type=float, default=10.0, help="wait for more requests before sampling")
    ap.add_argument("--max-batch", type=int, default=64, help="most requests per generate call")
    ap.add_argument("--max-tokens", type=int, default=256, help="max_tokens of requests that give none")
    args = ap.parse_args(argv)
    from turngym.config import parse_kwarg_items
    from turngym.envs.registration import check_env_kwargs
    from turngym.errors import TurngymError

    try:
        env_kwargs = parse_kwarg_items(args.env_args)
        if args.env is not None:
            check_env_kwargs(args.env, env_kwargs, key=None)
        gw = serve_policy(args.model, env_id=args.env, env_kwargs=env_kwargs, host=args.host, port=args.port, parser=args.parser,
                          device=args.device, batch_window_s=args.batch_window_ms / 1000.0,
                          max_batch_size=args.max_batch, default_max_tokens=args.max_tokens)
    except (TurngymError, OSError) as e:
        print(f"turngym serve-policy: {e}", file=sys.stderr)
        return 2
    print(f"serving {args.model} at {gw.url}/v1 (episodes: POST {gw.url}/episodes); Ctrl-C stops", flush=True)
    try:
        gw._thread.join() if gw._thread is not None else None
    except KeyboardInterrupt:
        pass
    finally:
        gw.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
