"""Env step overhead per turn (excluding the policy), printed as markdown tables.

Usage::

    python benchmarks/env_step.py                       # HopQA (local BM25) and Calc sections
    python benchmarks/env_step.py --sections hopqa --episodes 500
    python benchmarks/env_step.py --sections retriever  # runs benchmarks/retriever.py's measurement

Each section is a function registered with ``@section(name)`` that returns a markdown table; add a new
measurement by writing one more such function. Actions are precomputed by the scripted expert (noise 0.3,
so wrong queries and malformed calls are part of the mix) before the clock starts: the numbers are what
the env itself costs per turn (parsing, tool execution through the ToolSet, the search backend, value /
anchor bookkeeping, copying messages). Target for HopQA with the local index: under 2 ms per turn.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {}


def section(
    name: str,
) -> Callable[[Callable[[argparse.Namespace], str]], Callable[[argparse.Namespace], str]]:
    """Register a benchmark section (a function ``args -> markdown``)."""

    def deco(fn: Callable[[argparse.Namespace], str]) -> Callable[[argparse.Namespace], str]:
        SECTIONS[name] = fn
        return fn

    return deco


def _stats_ms(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
    return 1e3 * statistics.fmean(xs), 1e3 * statistics.median(xs), 1e3 * p95


def _record_actions(env, episodes: int, noise: float, seed0: int = 0) -> list[tuple[int, list[str]]]:
    """Expert action scripts per seed, replayed later without the expert on the clock."""
    import numpy as np

    rng = np.random.default_rng(seed0)
    scripts = []
    for s in range(episodes):
        env.reset(seed=seed0 + s)
        acts = []
        while True:
            a = env.expert_action(rng, noise)
            acts.append(a)
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                break
        scripts.append((seed0 + s, acts))
    return scripts


def _time_env(env, scripts) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"reset": [], "step": [], "step_tool": [], "step_answer_or_error": []}
    for seed, acts in scripts:
        t0 = time.perf_counter()
        env.reset(seed=seed)
        out["reset"].append(time.perf_counter() - t0)
        for a in acts:
            t0 = time.perf_counter()
            _, _, _, _, info = env.step(a)
            dt = time.perf_counter() - t0
            out["step"].append(dt)
            out["step_tool" if info["tool_calls"] else "step_answer_or_error"].append(dt)
    return out


def _components(env, scripts) -> dict[str, list[float]]:
    """Parse, ToolSet.execute and bare backend time for the tool turns of the scripts."""
    out: dict[str, list[float]] = {"parse": [], "toolset.execute": [], "backend": []}
    backend = getattr(env.unwrapped, "retriever", None)
    for _, acts in scripts:
        for a in acts:
            t0 = time.perf_counter()
            parsed = env.parser.parse(a)
            out["parse"].append(time.perf_counter() - t0)
            if parsed.calls and parsed.answer is None:
                t0 = time.perf_counter()
                env.toolset.execute(parsed.calls)
                out["toolset.execute"].append(time.perf_counter() - t0)
                if backend is not None:
                    t0 = time.perf_counter()
                    backend.search([c.arguments.get("query", "") for c in parsed.calls], env.unwrapped.topk)
                    out["backend"].append(time.perf_counter() - t0)
    return out


def _table(title: str, rows: dict[str, list[float]], note: str) -> str:
    lines = [
        f"### {title}",
        "",
        note,
        "",
        "| measure | n | mean ms | p50 ms | p95 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k, xs in rows.items():
        if xs:
            m, p50, p95 = _stats_ms(xs)
            lines.append(f"| {k} | {len(xs)} | {m:.3f} | {p50:.3f} | {p95:.3f} |")
    return "\n".join(lines)


@section("hopqa")
def hopqa_section(args: argparse.Namespace) -> str:
    import turngym.envs as E

    env = E.make("search/HopQA-v0", corpus_size=args.corpus_size)
    scripts = _record_actions(env, args.episodes, noise=0.3)
    _time_env(env, scripts[: max(1, args.episodes // 10)])  # warm-up
    rows = _time_env(env, scripts)
    rows.update(_components(env, scripts))
    env.close()
    ok = statistics.fmean(rows["step"]) * 1e3 < 2.0
    note = (
        f"`search/HopQA-v0`, local BM25 index over {args.corpus_size} entity docs + 20 distractors, top-3, "
        f"{args.episodes} episodes, expert noise 0.3. Target < 2 ms per turn: "
        f"**{'met' if ok else 'NOT met'}**."
    )
    return _table("HopQA env step overhead (no policy)", rows, note)


@section("calc")
def calc_section(args: argparse.Namespace) -> str:
    import turngym.envs as E

    env = E.make("tool/Calc-v0")
    scripts = _record_actions(env, args.episodes, noise=0.3)
    _time_env(env, scripts[: max(1, args.episodes // 10)])
    rows = _time_env(env, scripts)
    rows.update({k: v for k, v in _components(env, scripts).items() if k != "backend"})
    env.close()
    return _table(
        "Calc env step overhead (no policy)",
        rows,
        f"`tool/Calc-v0` (hermes parser, calculator tool), {args.episodes} episodes, expert noise 0.3.",
    )


@section("textworld")
def textworld_section(args: argparse.Namespace) -> str:
    """The long TextWorld preset through its env (interpreter in a host process) beside the same commands sent
    to TextWorld in this process (the bare interpreter step, what the env cost before the host)."""
    import textworld

    import turngym.envs as E
    from turngym.envs.builtin.textworld_host import STATE_KEYS

    episodes = min(args.episodes, 40)
    env = E.make("text/TextWorld-Long-v0", games=8)
    scripts = _record_actions(env, episodes, noise=0.3)
    _time_env(env, scripts[:2])  # warm-up (games generated, host started)
    rows = _time_env(env, scripts)
    infos = textworld.EnvInfos(**{k: True for k in STATE_KEYS if k != "feedback"})
    bare: list[float] = []
    for seed, acts in scripts:
        env.reset(seed=seed)
        game = textworld.start(str(env.unwrapped.task.private["path"]), request_infos=infos)
        game.reset()
        for a in acts:
            parsed = env.parser.parse(a)
            for c in parsed.calls[:1]:
                t0 = time.perf_counter()
                game.step(" ".join(str(c.arguments.get("command", "")).lower().split()))
                bare.append(time.perf_counter() - t0)
        game.close()
    env.close()
    rows["bare TextWorld step, in process"] = bare
    note = (
        f"`text/TextWorld-Long-v0` (8 games, up to 36 turns), {episodes} episodes, expert noise 0.3. The env runs "
        "TextWorld's interpreter in a host process (one pipe round trip per command); the last row sends the same "
        "commands to TextWorld in this process, measured in the same run."
    )
    return _table("TextWorld env step (no policy)", rows, note)


@section("retriever")
def retriever_section(args: argparse.Namespace) -> str:
    path = Path(__file__).with_name("retriever.py")
    if not path.exists():
        return "### Retriever throughput\n\n(benchmarks/retriever.py not present)"
    spec = importlib.util.spec_from_file_location("_tg_retriever_bench", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    rows = mod.retriever_benchmark(num_docs=args.retriever_docs)
    return "### Retriever throughput\n\n" + mod.markdown_table(rows, args.retriever_docs, 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--sections",
        nargs="+",
        default=["hopqa", "calc"],
        choices=sorted(SECTIONS),
        help="which sections to run (default: hopqa calc)",
    )
    p.add_argument("--episodes", type=int, default=300, help="episodes per env section")
    p.add_argument("--corpus-size", type=int, default=120, help="HopQA entity documents")
    p.add_argument("--retriever-docs", type=int, default=100_000, help="corpus size of the retriever section")
    args = p.parse_args(argv)
    for name in args.sections:
        print(SECTIONS[name](args))
        print()
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
