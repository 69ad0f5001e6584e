"""`turngym rollout` and `turngym eval`: sample trajectories to JSONL, or report success rate, turns, errors.

    turngym rollout ENV [--policy hf|scripted|openai|vllm] [--model tiny|smollm2-135m|PATH] --n N --group G
                        --out FILE [--sampler group|truncated_step|tree] [--temperature T] [--max-new-tokens K] ...
    turngym eval ENV [same options] [--json]

``--model`` names the model (and tokenizer) for ``hf`` and ``vllm``, and the tokenizer for ``scripted`` and
``openai`` (``--url`` is the server). ``eval`` uses held-out seeds starting at ``--seed-start`` (default
1,000,000) so that it never evaluates on the training seeds ``0..``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from turngym.errors import ConfigError
from turngym.registry import Registry

EVAL_SEED_START = 1_000_000


def build_parser(prog: str, eval_mode: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("env", help="registered env id, e.g. search/HopQA-v0")
    p.add_argument("--policy", default="hf", help="hf | scripted | openai | vllm (default hf)")
    p.add_argument("--model", default="tiny", help="tiny | smollm2-135m | a save_pretrained dir | an HF id")
    p.add_argument("--size", default="1m", help="tiny model size: 1m | 3m | 10m")
    p.add_argument("--url", default=None, help="server root for --policy openai, e.g. http://127.0.0.1:8000")
    p.add_argument("--n", type=int, default=64 if eval_mode else 16, help="number of tasks (seeds)")
    p.add_argument("--group", type=int, default=1, help="trajectories per task (G), candidates per step (k)")
    p.add_argument("--sampler", default="group", help="group | truncated_step | tree")
    p.add_argument("--branching", default="2,2", help="tree sampler: branching factors per turn, e.g. 2,2")
    p.add_argument("--seed-start", type=int, default=EVAL_SEED_START if eval_mode else 0, help="first seed")
    p.add_argument("--temperature", type=float, default=0.0 if eval_mode else 1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=96, help="tokens per turn")
    p.add_argument("--max-traj-tokens", type=int, default=None, help="sampled tokens per trajectory")
    p.add_argument("--max-turns", type=int, default=None, help="turn cap on top of the env's")
    p.add_argument("--noise", type=float, default=None, help="scripted expert mistake rate (default: env's)")
    p.add_argument("--device", default=None, help="torch device for hf (default cpu)")
    p.add_argument("--cache-dir", default=None, help="model cache root")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--out", default=None, help="JSONL file for the trajectories" + ("" if eval_mode else " (required)"))
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    if eval_mode:
        p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return p


PolicyBuilder = Any
POLICY_BUILDERS: Registry[PolicyBuilder] = Registry("policy backend")


def _load_model(a: argparse.Namespace):
    from turngym.agents.tiny import load_policy_model

    kw = {"size": a.size} if a.model == "tiny" else {}
    return load_policy_model(a.model, env_id=a.env, cache_dir=a.cache_dir, device=a.device, **kw)


@POLICY_BUILDERS.register("hf")
def _hf(a: argparse.Namespace):
    from turngym.agents.policy import HFPolicy

    model, tok = _load_model(a)
    return HFPolicy(model, tok, seed=a.seed), tok


@POLICY_BUILDERS.register("scripted")
def _scripted(a: argparse.Namespace):
    from turngym.agents.policy import ScriptedPolicy

    _, tok = _load_model(a)
    return ScriptedPolicy(tok, noise=a.noise, seed=a.seed), tok


@POLICY_BUILDERS.register("openai")
def _openai(a: argparse.Namespace):
    from turngym.agents.policy import OpenAIPolicy

    if not a.url:
        raise ConfigError("--policy openai needs --url (the server root, e.g. http://127.0.0.1:8000).")
    _, tok = _load_model(a)
    return OpenAIPolicy(a.url, tok), tok


@POLICY_BUILDERS.register("vllm")
def _vllm(a: argparse.Namespace):
    from turngym.agents.policy import VLLMPolicy

    model, tok = _load_model(a)
    path = getattr(model, "name_or_path", None) or a.model
    return VLLMPolicy(str(path), tok, seed=a.seed), tok


def _namespace(argv: Sequence[str] | argparse.Namespace | None, eval_mode: bool, kwargs: dict[str, Any]):
    prog = "turngym eval" if eval_mode else "turngym rollout"
    if isinstance(argv, argparse.Namespace):
        ns = argv
    else:
        if argv is None and kwargs:
            env = kwargs.pop("env")
            ns = build_parser(prog, eval_mode).parse_args([env])
        else:
            ns = build_parser(prog, eval_mode).parse_args(list(sys.argv[1:] if argv is None else argv))
    for k, v in kwargs.items():
        setattr(ns, k, v)
    return ns


def _run(a: argparse.Namespace):
    from turngym.agents.policy import SamplingParams
    from turngym.agents.render import Renderer
    from turngym.agents.rollout import collect_rollouts

    policy, tok = POLICY_BUILDERS[a.policy](a)
    params = SamplingParams(temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens, seed=a.seed)
    skw: dict[str, Any] = {}
    if a.sampler == "tree":
        skw["branching"] = tuple(int(x) for x in str(a.branching).split(","))
    group = None if a.sampler == "tree" else a.group
    seeds = list(range(a.seed_start, a.seed_start + a.n))
    try:
        return collect_rollouts(
            a.env, policy, Renderer(tok), seeds, group, sampler=a.sampler, params=params, max_turns=a.max_turns,
            max_traj_tokens=a.max_traj_tokens, out=a.out, progress=not a.no_progress, sampler_kwargs=skw,
            return_stats=True,
        )
    finally:
        close = getattr(policy, "close", None)
        if close is not None:
            close()


def rollout_main(argv: Sequence[str] | argparse.Namespace | None = None, **kwargs: Any) -> int:
    """``turngym rollout``: write trajectories to ``--out`` (JSONL). Takes argv, a namespace, or kwargs."""
    a = _namespace(argv, False, kwargs)
    if not a.out:
        raise ConfigError("turngym rollout needs --out FILE.jsonl (where the trajectories go).")
    from turngym.agents.rollout import summarize

    trajs, stats = _run(a)
    m = summarize(trajs)
    print(f"wrote {len(trajs)} trajectories to {a.out} in {stats.wall_s:.1f}s "
          f"(success {m.get('success_rate', 0):.3f}, mean turns {m.get('mean_turns', 0):.2f})")
    return 0


def eval_main(argv: Sequence[str] | argparse.Namespace | None = None, **kwargs: Any) -> int:
    """``turngym eval``: success rate, turns, tool errors, stop reasons on held-out seeds."""
    a = _namespace(argv, True, kwargs)
    from turngym.agents.rollout import summarize

    trajs, stats = _run(a)
    m = summarize(trajs)
    m["wall_s"] = round(stats.wall_s, 3)
    m["env"], m["policy"], m["model"] = a.env, a.policy, a.model
    if getattr(a, "json", False):
        print(json.dumps(m))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"eval {a.env} ({a.policy}:{a.model}, {m['n']} trajectories)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in m.items():
        if k in ("env", "policy", "model"):
            continue
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    Console().print(t)
    return 0
