"""`turngym rollout` and `turngym eval`: sample trajectories to JSONL, or report success rate, turns, errors.

    turngym rollout ENV [key=value ...] [--policy hf|scripted|openai|vllm] [--model tiny|smollm2-135m|PATH]
                        --n N --group G --out FILE [--sampler group|truncated_step|tree] [--temperature T] [--max-new-tokens K] ...
    turngym eval ENV [key=value ...] [same options] [--json]

``ENV`` is a registered id, ``package.module:Class`` or ``path/to/file.py:Class`` (``--import MODULE`` runs a
module's ``register`` calls first); ``key=value`` (or ``env_kwargs.key=value``) after it are the env's constructor
arguments. ``--model`` names the model (and tokenizer) for ``hf`` and ``vllm``, and the
tokenizer for ``scripted`` and ``openai`` (``--url`` is the server). ``--model RUN_DIR`` (a ``turngym train`` run
directory) or ``--model RUN_DIR/checkpoints/step-N`` loads the trained weights of that run (its newest valid
checkpoint, or that one), and ENV, its imports and ``env_kwargs`` default to the run's (for ``eval``, with the
run's ``eval_env_kwargs`` over them). ``eval`` uses held-out seeds starting at ``--seed-start`` (default 1,000,000)
so that it never evaluates on the training seeds ``0..``; envs with a finite task set (HopQA, TextWorld) draw
held-out tasks from there.
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
    p.add_argument("env", nargs="?", default=None,
                   help="registered env id, package.module:Class or path/to/file.py:Class (default with --model "
                   "RUN_DIR: the run's env)")
    p.add_argument("env_args", nargs="*", default=[], metavar="key=value",
                   help="env constructor arguments (also written env_kwargs.key=value); with --model RUN_DIR they "
                   "update the run's env_kwargs")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE (or path/to/file.py) first, so its register() calls run; repeatable")
    p.add_argument("--policy", default="hf", help="hf | scripted | openai | vllm (default hf)")
    p.add_argument("--model", default="tiny",
                   help="tiny | smollm2-135m | a save_pretrained dir | a cached HF id | a turngym run dir or checkpoint")
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
    p.add_argument("--max-context-tokens", type=int, default=None,
                   help="cap on prompt + actions + observations per trajectory (default: the model's context)")
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

    if getattr(a, "run_cfg", None) is not None:
        return _load_run_model(a)
    kw = {"size": a.size, "env_kwargs": getattr(a, "env_kwargs", None)} if a.model == "tiny" else {}
    return load_policy_model(a.model, env_id=a.env, cache_dir=a.cache_dir, device=a.device, **kw)


def _load_tokenizer(a: argparse.Namespace):
    """The tokenizer alone (``scripted`` / ``openai`` need no weights): a run's, a preset's, or from the path."""
    from turngym.agents.tiny import MODEL_PRESETS

    if getattr(a, "run_cfg", None) is not None or a.model in MODEL_PRESETS:
        return _load_model(a)[1]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def _run_of(model: str) -> tuple[Any, Any] | None:
    """``(run config, checkpoint folder or None)`` when ``model`` is a turngym run directory or checkpoint."""
    from pathlib import Path

    path = Path(model).expanduser()
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        run_dir, ckpt = path, None
    elif (path / "manifest.json").is_file() and (path / "model.pt").is_file():
        run_dir, ckpt = path.parent.parent, path
    else:
        return None
    from turngym.config import build_config
    from turngym.trainers.config import TrainConfig, load_preset

    cfg_file = ckpt / "config.yaml" if ckpt is not None and (ckpt / "config.yaml").is_file() else run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise ConfigError(f"--model {model}: a checkpoint without its run's config.yaml; pass the run directory.")
    return build_config(TrainConfig, load_preset(str(cfg_file))), ckpt


def _load_run_model(a: argparse.Namespace):
    """The trained model of ``--model RUN_DIR`` (or of one checkpoint folder), as the trainer built it."""
    from pathlib import Path

    from turngym.agents.tiny import load_policy_model
    from turngym.trainers.checkpoint import load_checkpoint, load_latest

    cfg = a.run_cfg
    run_dir = Path(a.model) if a.run_ckpt is None else Path(a.run_ckpt).parent.parent
    saved = run_dir / "tokenizer"  # written by the trainer since runs built the tiny tokenizer with env_kwargs
    kw = {"size": cfg.model_size, "env_kwargs": cfg.env_kwargs if saved.is_dir() else None} if cfg.model == "tiny" else {}
    model, tok = load_policy_model(cfg.model, env_id=cfg.env_id, cache_dir=cfg.cache_dir, **kw)
    if saved.is_dir():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(saved)
        tok.padding_side = "left"
    if cfg.lora:
        from turngym.trainers.policy_setup import apply_lora

        model = apply_lora(model, cfg)
    ckpt = load_checkpoint(a.run_ckpt) if a.run_ckpt is not None else load_latest(a.model)
    if ckpt is None:
        raise ConfigError(f"--model {a.model}: the run has no valid checkpoint yet (checkpoints/ is empty).")
    ckpt.restore(model, rng=False)
    model = model.to(a.device or "cpu")
    model.eval()
    return model, tok


def load_trained(run_or_checkpoint: str, *, device: str | None = None):
    """``(model, tokenizer)`` of a ``turngym train`` run (its newest valid checkpoint) or of one checkpoint folder.

    The model is built as the trainer built it (same preset, tokenizer and LoRA setting) and the checkpoint's
    weights are loaded into it; with LoRA it is a peft model (``model.merge_and_unload()`` gives a plain one to
    ``save_pretrained`` for serving). Imports the run's ``env_imports`` first.
    """
    from turngym.envs.registration import import_modules

    run = _run_of(run_or_checkpoint)
    if run is None:
        raise ConfigError(f"{run_or_checkpoint!r} is neither a turngym run directory (config.yaml + checkpoints/) "
                          "nor a checkpoint folder (manifest.json + model.pt).")
    import_modules(run[0].env_imports)
    a = argparse.Namespace(model=run_or_checkpoint, run_cfg=run[0], run_ckpt=run[1], device=device)
    return _load_run_model(a)


def prepare_args(a: argparse.Namespace) -> argparse.Namespace:
    """Check the arguments up front (ConfigError, exit 2, before anything loads) and resolve ``--model RUN_DIR``."""
    import math

    from turngym.envs.registration import import_modules, spec
    from turngym.errors import RegistryError
    from turngym.trainers.config import eval_config

    for name, lo in (("n", 1), ("group", 1), ("max_new_tokens", 1), ("max_turns", 1), ("max_traj_tokens", 1),
                     ("max_context_tokens", 2), ("seed_start", 0), ("seed", 0)):
        v = getattr(a, name, None)
        if v is not None and v < lo:
            raise ConfigError(f"--{name.replace('_', '-')} {v}: must be >= {lo}.")
    if not (math.isfinite(a.temperature) and a.temperature >= 0):
        raise ConfigError(f"--temperature {a.temperature}: must be a finite number >= 0.")
    if not (math.isfinite(a.top_p) and 0 < a.top_p <= 1):
        raise ConfigError(f"--top-p {a.top_p}: must be in (0, 1].")
    if a.policy not in POLICY_BUILDERS:
        from turngym.registry import unknown_name_message

        raise ConfigError(unknown_name_message("policy backend", a.policy, POLICY_BUILDERS.names()))
    a.run_cfg = a.run_ckpt = None
    given = _env_args(a)
    a.env_kwargs = {}
    try:
        run = _run_of(a.model)
        if run is not None:
            a.run_cfg, a.run_ckpt = run
            import_modules(a.run_cfg.env_imports)
            if a.env is None or a.env == a.run_cfg.env_id:  # `eval` as the run evaluated (eval_env_kwargs)
                run_env = eval_config(a.run_cfg) if getattr(a, "eval_mode", False) else a.run_cfg
                a.env, a.env_kwargs = run_env.env_id, dict(run_env.env_kwargs)
        elif a.policy in ("hf", "vllm") or a.model != "tiny":
            from turngym.agents.tiny import check_model_name

            check_model_name(a.model)
        import_modules(a.imports)
        if a.env is None:
            raise ConfigError("no env: give ENV (a registered id, package.module:Class or path/to/file.py:Class), or "
                              "--model RUN_DIR to use that run's env.")
        spec(a.env)
        from turngym.envs.registration import check_env_kwargs

        a.env_kwargs.update(given)
        check_env_kwargs(a.env, a.env_kwargs, key=None)
        if a.policy == "scripted":
            from turngym.api import has_scripted_expert

            if has_scripted_expert(a.env) is False:
                raise ConfigError(f"--policy scripted: {a.env} has no scripted expert (_expert_next); write one "
                                  "(docs/custom_env.md) or evaluate a model (--policy hf --model ...).")
    except RegistryError as err:
        raise ConfigError(str(err)) from None
    return a


def _env_args(a: argparse.Namespace) -> dict[str, Any]:
    """The env's constructor arguments given as ``key=value`` (or ``env_kwargs.key=value``) after ENV, over a
    Python caller's ``env_kwargs=`` dict. A lone ``key=value`` in ENV's place (``--model RUN_DIR`` names the env)
    is one of them."""
    from turngym.config import parse_kwarg_items

    items = list(getattr(a, "env_args", None) or [])
    if a.env is not None and "=" in a.env and ":" not in a.env:
        items.insert(0, a.env)
        a.env = None
    return {**(getattr(a, "env_kwargs", None) or {}), **parse_kwarg_items(items)}


@POLICY_BUILDERS.register("hf")
def _hf(a: argparse.Namespace):
    from turngym.agents.policy import HFPolicy

    model, tok = _load_model(a)
    return HFPolicy(model, tok, seed=a.seed), tok


@POLICY_BUILDERS.register("scripted")
def _scripted(a: argparse.Namespace):
    from turngym.agents.policy import ScriptedPolicy

    tok = _load_tokenizer(a)  # the expert needs no model weights
    return ScriptedPolicy(tok, noise=a.noise, seed=a.seed), tok


@POLICY_BUILDERS.register("openai")
def _openai(a: argparse.Namespace):
    from turngym.agents.policy import OpenAIPolicy

    if not a.url:
        raise ConfigError("--policy openai needs --url (the server root, e.g. http://127.0.0.1:8000).")
    tok = _load_tokenizer(a)
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
            ns = build_parser(prog, eval_mode).parse_intermixed_args([env])
        else:
            ns = build_parser(prog, eval_mode).parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    for k, v in kwargs.items():
        setattr(ns, k, v)
    ns.eval_mode = eval_mode
    return prepare_args(ns)


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
            return_stats=True, max_context_tokens=a.max_context_tokens, env_kwargs=a.env_kwargs,
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
