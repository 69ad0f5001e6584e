"""The `turngym` command line.

    turngym train [PRESET | FILE.yaml] [key=value ...] [--resume RUN_DIR] [--help-config] [--print-config]
    torchrun --nproc_per_node N -m turngym train ...   the same run, data parallel (docs/scaling.md)
    turngym presets                      list the training presets
    turngym envs                         list registered env ids
    turngym check ENV_ID | module:Class | file.py:Class   run turngym.envs.check_env on an env
    turngym eval ... / turngym rollout ...   (turngym.evaluate)
    turngym serve-retriever --corpus FILE --port N   (turngym.tools.search.server)
    turngym serve-policy [--model M] [--env ENV] [--port N]   OpenAI-compatible gateway (turngym.agents.gateway)
    turngym view RUN_DIR_OR_JSONL [--out FILE] [--serve --port N]   HTML viewer (--text: terminal summary)
    turngym bench NAME [args ...]        credit-accuracy / study (turngym.bench), or benchmarks/NAME.py
    turngym docs [--check]               regenerate docs/config.md and docs/metrics.md

Every heavy import happens inside the command that needs it, so `turngym --help` and config errors are
instant. Exit codes: 0 success, 1 a run failed (with a one-line reason), 2 bad usage or configuration
(nothing was written).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from turngym.trainers import TRAINERS  # algo -> "module:function", imported when a run starts

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class CommandUnavailable(Exception):
    """A command delegates to a module that is not installed or not written yet."""


def _err(prog: str, msg: str) -> None:
    one_line = " ".join(str(msg).splitlines())  # one line on stderr, whatever the message holds
    print(f"{prog}: error: {one_line}", file=sys.stderr)


def _load(target: str, what: str) -> Callable[..., Any]:
    """Import ``"module:attr"``; a missing module or attribute becomes :class:`CommandUnavailable`."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or module_name
        if missing == module_name or module_name.startswith(missing + "."):
            raise CommandUnavailable(
                f"{what} is not available: module {module_name!r} is not part of this installation yet."
            ) from None
        raise CommandUnavailable(
            f"{what} needs the package {missing!r}, which is not installed "
            f"(imported by {module_name}). Install it, e.g. `pip install {missing.split('.')[0]}`."
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise CommandUnavailable(f"{what} is not available: {module_name} has no function {attr!r}.")
    return fn


def _delegate(target: str, what: str, argv: Sequence[str]) -> int:
    """Call ``target(argv)`` (a ``main``-style function returning an exit code or None)."""
    try:
        fn = _load(target, what)
    except CommandUnavailable as err:
        _err("turngym", str(err))
        return EXIT_FAIL
    rc = fn(list(argv))
    return int(rc or 0)


# --------------------------------------------------------------------------- train


def _split_train_args(items: Sequence[str]) -> tuple[str | None, list[str]]:
    preset: str | None = None
    overrides: list[str] = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif preset is None and not overrides:
            preset = item
        else:
            from turngym.errors import ConfigError

            raise ConfigError(
                f"Unexpected argument {item!r}: give at most one preset first, then key=value overrides "
                "(e.g. `turngym train grpo lr=1e-4`)."
            )
    return preset, overrides


def cmd_train(args: argparse.Namespace) -> int:
    from turngym.config import config_help, dump_yaml
    from turngym.errors import ConfigError
    from turngym.trainers.config import TrainConfig, resolve_train_config

    if args.help_config:  # `--help-config credit=NAME`: that credit method's own options instead
        from turngym.trainers.config import credit_help

        methods = [a.partition("=")[2].strip() for a in args.args if a.partition("=")[0].strip() == "credit"]
        try:
            sys.stdout.write(credit_help(methods[-1]) if methods else config_help(TrainConfig) + (
                "\nEach credit method has its own options, set with credit.<option>=value; "
                "`turngym train --help-config credit=NAME` lists them.\n"))
        except ConfigError as err:
            _err("turngym train", str(err))
            return EXIT_USAGE
        return EXIT_OK
    try:
        preset, overrides = _split_train_args(args.args)
        _import_args(args)
        if args.model is not None:
            from turngym.trainers.config import preset_names

            if preset is None and args.model in preset_names():
                preset = args.model  # `--model smollm2-135m` alone: that model's preset (LoRA etc.)
            else:
                overrides = [f"model={args.model}", *overrides]
        cfg = resolve_train_config(preset, overrides, resume_dir=args.resume)
        from turngym.api import prepare_config

        if args.imports:  # saved in config.yaml, so --resume and `turngym eval RUN_DIR` import them again
            cfg = cfg.replace(env_imports=[*cfg.env_imports, *(m for m in args.imports if m not in cfg.env_imports)])
        notes: list[str] = []
        cfg = prepare_config(cfg, say=notes.append)  # absolute env file paths; no expert: no SFT (noted below)
        from turngym.trainers.dp import check_launch

        check_launch(cfg)  # under torchrun: what data parallelism cannot run, on every rank before any work
        from turngym.trainers.config import check_run_dir
        from turngym.trainers.runlog import check_run_dir_free

        check_run_dir_free(cfg.run_dir, cfg.resume)
        check_run_dir(cfg)  # last: creates and removes the missing directories, so it leaves nothing behind
    except ConfigError as err:
        _err("turngym train", str(err))
        return EXIT_USAGE
    if args.print_config:
        sys.stdout.write(dump_yaml(cfg))
        return EXIT_OK
    try:
        from turngym.agents.tiny import check_model_name

        check_model_name(cfg.model)  # a preset, a save_pretrained dir or a cached hub id, before anything loads
    except ConfigError as err:
        _err("turngym train", str(err))
        return EXIT_USAGE
    for note in notes:
        print(f"turngym train: note: {note}", file=sys.stderr, flush=True)
    try:
        train = _load(TRAINERS[cfg.algo], f"the {cfg.algo} trainer")
    except CommandUnavailable as err:
        _err("turngym train", str(err))
        return EXIT_FAIL
    train(cfg)
    return EXIT_OK


def cmd_presets(args: argparse.Namespace) -> int:
    from turngym.trainers.config import preset_description, preset_names, presets_dir

    print(f"presets in {presets_dir()} (use: turngym train PRESET [key=value ...]):")
    for name in preset_names():
        print(f"  {name:<14} {preset_description(name)}")
    return EXIT_OK


# --------------------------------------------------------------------------- envs


def cmd_envs(args: argparse.Namespace) -> int:
    from turngym.envs.registration import list_envs, spec

    ids = list_envs()
    if not ids:
        print("no envs registered")
        return EXIT_OK
    width = max(len(i) for i in ids)
    for env_id in ids:
        s = spec(env_id)
        entry = s.entry_point if isinstance(s.entry_point, str) else getattr(s.entry_point, "__qualname__", "?")
        turns = f"max_turns={s.max_turns}" if s.max_turns is not None else ""
        print(f"{env_id:<{width}}  {entry}  {turns}".rstrip())
    return EXIT_OK


def _make_env(target: str, kwargs: dict[str, Any]) -> Any:
    """An env from a registered id, or from ``module:Class`` / ``path/to/file.py:Class``."""
    from turngym import envs
    from turngym.envs.registration import check_env_kwargs

    check_env_kwargs(target, kwargs, key=None)
    return envs.make(target, **kwargs)


def _import_args(args: argparse.Namespace) -> None:
    """Run ``--import MODULE`` (repeatable) so the modules' `register` calls happen first."""
    from turngym.envs.registration import import_modules
    from turngym.errors import ConfigError, RegistryError

    try:
        import_modules(getattr(args, "imports", None) or [])
    except RegistryError as err:
        raise ConfigError(str(err)) from None


def cmd_check(args: argparse.Namespace) -> int:
    import json

    from turngym.config import parse_kwarg_items
    from turngym.errors import ConfigError, RegistryError

    try:
        kwargs = parse_kwarg_items(args.kwargs)
        _import_args(args)
        env = _make_env(args.env, kwargs)
    except (ConfigError, RegistryError) as err:
        _err("turngym check", str(err))
        return EXIT_USAGE
    from turngym.envs import check_env
    from turngym.envs.checker import EnvCheckError

    try:
        report = check_env(env)
    except EnvCheckError as err:
        print(f"FAILED: {args.env}\n{err}")
        return EXIT_FAIL
    finally:
        close = getattr(env, "close", None)
        if callable(close):
            close()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name, status in report.items():
            print(f"  {name:<32} {status}")
        print(f"OK: {args.env} passed {sum(1 for s in report.values() if s == 'ok')} checks")
    return EXIT_OK


# --------------------------------------------------------------------------- view, bench, docs


def cmd_view(args: argparse.Namespace) -> int:
    _import_args(args)
    if args.n < 0:
        from turngym.errors import ConfigError

        raise ConfigError(f"-n {args.n}: must be >= 0.")
    missing = [p for p in args.paths if not Path(p).exists()]
    if args.text and missing:
        _err("turngym view", f"{missing[0]} does not exist (give a run directory or a trajectory .jsonl file)")
        return EXIT_USAGE
    if args.text:
        from turngym.trainers.runlog import view_run

        return max(view_run(p, step=args.step, n=args.n) if Path(p).is_dir() else _view_jsonl_text(Path(p), args.n)
                   for p in args.paths)
    from turngym.viewer import make_server, write_page

    opts: dict[str, Any] = {"max_trajectories": args.max_trajectories}
    if args.tokenizer:
        from transformers import AutoTokenizer

        opts["tokenizer"] = AutoTokenizer.from_pretrained(args.tokenizer)
    if args.serve:
        server = make_server(args.paths, port=args.port, **opts)
        print(f"serving the viewer on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return EXIT_OK
    first = Path(args.paths[0])
    out = Path(args.out) if args.out else (first / "view.html" if first.is_dir() else first.with_suffix(".html"))
    print(f"wrote {write_page(args.paths, out, **opts)}")
    return EXIT_OK


def _view_jsonl_text(path: Path, n: int) -> int:
    """``view FILE.jsonl --text``: counts, success and the last ``n`` trajectories of a trajectory JSONL file."""
    import json

    rows = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            d = json.loads(raw)
        except ValueError:
            continue
        t = d.get("trajectory", d) if isinstance(d, dict) else None
        if isinstance(t, dict) and "turns" in t:
            rows.append(t)
    if not rows:
        _err("turngym view", f"{path}: no trajectories (expected JSONL lines written by rollout/eval/train)")
        return EXIT_USAGE
    ok = sum(1 for t in rows if (t.get("meta") or {}).get("success") or t.get("outcome") == 1.0)
    turns = sum(len(t.get("turns") or []) for t in rows) / len(rows)
    print(f"{path}: {len(rows)} trajectories, success {ok / len(rows):.3f}, mean turns {turns:.2f}")
    for t in rows[-n:] if n else []:
        print(f"--- {t.get('group_id', '')}  outcome {t.get('outcome')}  stop {t.get('stop_reason')}")
        for m in t.get("prompt_messages") or []:
            if m.get("role") == "user":
                print(f"user: {m.get('content', '')}")
        for k, turn in enumerate(t.get("turns") or []):
            print(f"turn {k} action: {turn.get('action_text', '')}")
            for obs in turn.get("obs_messages") or []:
                print(f"  {obs.get('role')}: {str(obs.get('content', ''))[:400]}")
        print(f"final answer: {t.get('final_answer')!r}")
    return EXIT_OK


def _find_benchmarks() -> Path | None:
    candidates = [Path.cwd() / "benchmarks", Path(__file__).resolve().parent.parent / "benchmarks"]
    return next((p for p in candidates if p.is_dir()), None)


def cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    from turngym.bench import (
        BENCHMARKS,  # packaged benchmarks (credit-accuracy, study): work from a wheel too
    )

    if args.name in BENCHMARKS:
        return _delegate(BENCHMARKS[args.name], f"`turngym bench {args.name}`", args.rest)
    root = _find_benchmarks()
    if root is None:
        _err("turngym bench", "benchmarks live in the source checkout (benchmarks/*.py); run this from a clone.")
        return EXIT_FAIL
    names = sorted(p.stem for p in root.glob("*.py") if not p.name.startswith("_"))
    if args.name is None:
        print(f"benchmarks: {', '.join(sorted(BENCHMARKS))} (packaged); in {root}: {', '.join(names) or '(none yet)'}")
        return EXIT_OK
    script = root / f"{args.name.removesuffix('.py')}.py"
    if not script.is_file():
        from turngym.registry import unknown_name_message

        _err("turngym bench", unknown_name_message("benchmark", args.name, [*BENCHMARKS, *names]))
        return EXIT_USAGE
    old_argv = sys.argv
    sys.argv = [str(script), *args.rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_FAIL
    finally:
        sys.argv = old_argv
    return EXIT_OK


CONFIG_DOC_INTRO = """\
Every field of `TrainConfig` (`turngym/trainers/config.py`), the one config of `turngym train`.
Set any field on the command line with `key=value` (after an optional preset name), e.g.
`turngym train grpo lr=1e-4 group_size=4`; dict fields also take `name.key=value`
(`env_kwargs.hops=2`). The fields are grouped into the sections below, and a section name is also a prefix:
`sampling.temperature=0.7`, `sft.steps=0` (the section's own prefix may be dropped: `sft_steps`), `model.size=3m`,
or in YAML `sampling: {temperature: 0.7}`; the flat names are the same settings. Signal providers' and learned
components' options (CAPO's critiques, OPRL's PRM, ...) are `signals.<option>=value`, checked against what the
credit method declares. Presets in `turngym/configs/*.yaml` are partial dumps of this dataclass
applied over the defaults below (`turngym presets` lists them); a run directory's `config.yaml` is the
full dump. Unknown keys, bad values and impossible combinations stop with exit code 2 and one line on
stderr before anything is written: [config_errors.md](config_errors.md) lists the cases (every number must
be finite, every int is range-checked, config YAML is strict UTF-8 without duplicate keys, anchors or
aliases). Generated by `turngym docs`; a test checks it is up to date."""

CREDIT_DOC_INTRO = """Each credit method (`credit=NAME`) has its own frozen config dataclass; its fields are set with
`credit.<option>=value` on the command line (`turngym train a2tgpo credit.alpha=0.5`) or `credit.<option>: value`
lines in a YAML file, next to `credit: NAME`. Both fill `credit_overrides`, which a run's `config.yaml` dumps
(`credit_overrides.<option>=value` still works). Options are checked against the method's fields and types before
anything runs: a misspelled option stops with exit code 2 and the close matches, a bad value names the type
expected. `turngym train --help-config credit=NAME` prints the same list as the tables below."""


def render_config_doc() -> str:
    """``docs/config.md``, generated from `TrainConfig` and the presets."""
    from turngym.config import config_markdown
    from turngym.trainers.config import TrainConfig, credit_markdown, preset_description, preset_names

    text = config_markdown(TrainConfig, title="Training configuration", intro=CONFIG_DOC_INTRO)
    rows = ["", "## Presets", "", "| preset | description |", "| --- | --- |"]
    rows += [f"| `{n}` | {preset_description(n)} |" for n in preset_names()]
    rows += ["", "## Credit-method options", "", CREDIT_DOC_INTRO, "", credit_markdown()]
    return text + "\n".join(rows)


def _docs() -> dict[str, Callable[[], str]]:
    from turngym.trainers.runlog import render_metrics_doc

    return {"config.md": render_config_doc, "metrics.md": render_metrics_doc}


def cmd_docs(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    stale = []
    for name, render in _docs().items():
        text = render()
        path = out_dir / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        _err("turngym docs", f"out of date: {', '.join(stale)}; run `turngym docs` to regenerate.")
        return EXIT_FAIL
    return EXIT_OK


# --------------------------------------------------------------------------- parser


_IMPORT_HELP = "import MODULE (or path/to/file.py) first, so its register() calls run; repeatable"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="turngym",
        description="RL for multi-turn LLM agents: `turngym train` runs the embedded default on a CPU.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a policy (GRPO/PPO) from a preset and key=value overrides",
                       description="Train from PRESET (default: 'default') or a YAML file, overridden by key=value. "
                       "`turngym presets` lists the presets; --help-config lists the keys.")
    t.add_argument("args", nargs="*", metavar="PRESET|key=value", help="an optional preset, then overrides")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest good checkpoint")
    t.add_argument("--model", help="model=... ; alone, a model with its own preset uses it (--model smollm2-135m)")
    t.add_argument("--help-config", action="store_true", help="list every config key with its type, default, meaning")
    t.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    t.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help=_IMPORT_HELP)
    t.set_defaults(func=cmd_train)

    sub.add_parser("presets", help="list the training presets").set_defaults(func=cmd_presets)
    sub.add_parser("envs", help="list registered env ids").set_defaults(func=cmd_envs)

    c = sub.add_parser("check", help="run check_env on an env id, module:Class or path/to/file.py:Class")
    c.add_argument("env", metavar="ENV_ID|module:Class|file.py:Class")
    c.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help=_IMPORT_HELP)
    c.add_argument("kwargs", nargs="*", metavar="key=value", help="constructor keyword arguments")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=cmd_check)

    for name, target, text in (
        ("eval", "turngym.evaluate:eval_main", "evaluate a policy on held-out tasks"),
        ("rollout", "turngym.evaluate:rollout_main", "sample trajectories with a policy"),
        ("serve-retriever", "turngym.tools.search.server:main", "serve a BM25 corpus over HTTP (loopback)"),
        ("serve-policy", "turngym.agents.gateway:main", "serve the policy as an OpenAI-compatible chat endpoint"),
    ):
        d = sub.add_parser(name, help=text, add_help=False, prefix_chars="\0")
        d.add_argument("rest", nargs=argparse.REMAINDER)
        d.set_defaults(func=lambda a, _t=target, _n=name: _delegate(_t, f"`turngym {_n}`", a.rest))

    v = sub.add_parser("view", help="write an HTML page of runs' curves, trajectories and token credit",
                       description="Write a self-contained HTML page (no network needed) of run directories or "
                       "trajectory JSONL files: curves, trajectories by task, tokens coloured by advantage.")
    v.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_JSONL")
    v.add_argument("--out", help="HTML file to write (default: RUN_DIR/view.html or FILE.html)")
    v.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 instead (rebuilt per request)")
    v.add_argument("--port", type=int, default=8765, help="port for --serve (0: any free port)")
    v.add_argument("--tokenizer", help="tokenizer directory to decode tokens of trajectories without annotations")
    v.add_argument("--max-trajectories", type=int, default=400, help="per input, keep the last N trajectories")
    v.add_argument("--text", action="store_true", help="print a terminal summary instead (run directories)")
    v.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help=_IMPORT_HELP)
    v.add_argument("--step", type=int, default=None, help="--text: step whose trajectories to show (default: latest)")
    v.add_argument("-n", type=int, default=2, help="--text: how many trajectories")
    v.set_defaults(func=cmd_view)

    b = sub.add_parser("bench", help="run a benchmark script (benchmarks/NAME.py)")
    b.add_argument("name", nargs="?")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)

    dd = sub.add_parser("docs", help="regenerate docs/config.md and docs/metrics.md")
    dd.add_argument("--out", default="docs")
    dd.add_argument("--check", action="store_true", help="only check they are up to date")
    dd.set_defaults(func=cmd_docs)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `turngym` console script; returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from turngym.errors import ConfigError, TurngymError

    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        _err(f"turngym {args.command}", str(err))
        return EXIT_USAGE
    except TurngymError as err:
        if os.environ.get("TURNGYM_DEBUG"):
            traceback.print_exc()
        _err(f"turngym {args.command}", f"{type(err).__name__}: {err}")
        return EXIT_FAIL
    except KeyboardInterrupt:
        _err(f"turngym {args.command}", "interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
