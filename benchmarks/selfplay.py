"""Self-play that measures something: the learner's win rate against a fixed scripted opponent and against its own
start (the frozen warm-started learner), over training, over seeds, with 95% intervals.

    python benchmarks/selfplay.py --presets multi-kuhnpoker,multi-sealedbid --seeds 3 --jobs 2 --out OUT
    python benchmarks/selfplay.py --quick --out OUT      # tiny runs (what the test suite runs)

Each (preset, seed) run is ``turngym train PRESET seed=S run_dir=OUT/PRESET/seedS`` with the preset unchanged
(``--set key=value`` overrides every run). A run whose metrics already hold its final evaluation is reused, so the
grid can be run in parts. Every self-play evaluation (`turngym.trainers.multi.evaluate`) plays the learner in each
seat against the scripted policy (``eval/success``) and against the start (``multi/eval/vs_start/success``;
at step 0 the learner *is* the start, so that column's step-0 value is the game's self-play baseline).

The table gives, per evaluated step and opponent, the win rate's mean over seeds with a 95% hierarchical-bootstrap
interval (each replicate resamples the seeds, then each drawn seed's games: a win rate over n games is resampled
as Binomial(n, rate) / n, the same as resampling its 0/1 outcomes), the gain over step 0 (the mean of the per-seed
differences, with the same resampling of seeds and of both evaluations' games), the per-seed values and the mean
payoff (the learner's outcome). Prints a markdown table
with the machine, date and load; ``--json`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from turngym.bench.workers import worker_pool

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Overrides of ``--quick``: a few CPU seconds per run.
QUICK = {"steps": 2, "tasks_per_step": 2, "group_size": 4, "minibatch_size": 8, "sft_steps": 30, "sft_episodes": 16,
         "eval_tasks": 4, "eval_every": 1, "checkpoint_every": 0}
COLUMNS = {"vs scripted": "eval/success", "vs start": "multi/eval/vs_start/success"}


def run_dir(out: Path, preset: str, seed: int) -> Path:
    return out / preset / f"seed{seed}"


def eval_lines(run: Path) -> list[dict[str, Any]]:
    """The ``kind == "eval"`` lines of a run's metrics.jsonl (empty when it has none)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [d for d in lines if d.get("kind") == "eval"]


def finished(run: Path, steps: int, overrides: list[str]) -> bool:
    """The run holds its final evaluation and was trained with these overrides (``bench_args.json``)."""
    try:
        same = json.loads((run / "bench_args.json").read_text(encoding="utf-8")) == overrides
    except (OSError, ValueError):
        return False
    return same and any(d["step"] == steps for d in eval_lines(run))


def train_one(preset: str, seed: int, out: str, overrides: list[str]) -> str:
    """One run (a fresh run directory; picklable for worker processes); returns its directory."""
    import shutil

    import torch

    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.multi import train

    torch.set_num_threads(1)
    run = run_dir(Path(out), preset, seed)
    shutil.rmtree(run, ignore_errors=True)
    cfg = resolve_train_config(preset, [*overrides, f"seed={seed}", f"run_dir={run}", "progress=false",
                                        "report=false", "tensorboard=false"])
    if cfg.multi_mode != "self_play":
        raise SystemExit(f"{preset} is not a self-play preset (multi_mode={cfg.multi_mode!r}).")
    t0 = time.perf_counter()
    train(cfg)
    (run / "bench_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    (run / "bench_args.json").write_text(json.dumps(overrides), encoding="utf-8")
    return str(run)


def seed_game_bootstrap(rates: list[float], games: int, *, n_boot: int = 4000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Interval of the mean win rate over seeds: resample the seeds, then each drawn seed's ``games`` games."""
    r = np.asarray(rates, dtype=np.float64)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(r), size=(n_boot, len(r)))
    reps = rng.binomial(games, r[rows]).mean(axis=1) / games
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [a, 1.0 - a])
    return float(lo), float(hi)


def paired_gain(rates: list[float], first: list[float], games: int, *, n_boot: int = 4000, seed: int = 0,
                level: float = 0.95) -> tuple[float, float]:
    """Interval of the mean per-seed gain ``rates - first`` (the same seeds): resample the seeds, then each
    endpoint's games independently (the two evaluations play the same deals, so this is conservative)."""
    r, f = np.asarray(rates, dtype=np.float64), np.asarray(first, dtype=np.float64)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(r), size=(n_boot, len(r)))
    reps = (rng.binomial(games, r[rows]) - rng.binomial(games, f[rows])).mean(axis=1) / games
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [a, 1.0 - a])
    return float(lo), float(hi)


def summarise(runs: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per evaluated step (those every seed has): for each column, the mean, its interval and per-seed values."""
    steps = sorted(set.intersection(*({d["step"] for d in lines} for lines in runs.values())))
    rows = []
    first: dict[str, list[float]] = {}
    for step in steps:
        at = {s: next(d for d in lines if d["step"] == step) for s, lines in runs.items()}
        row: dict[str, Any] = {"step": step}
        for name, key in COLUMNS.items():
            vals = [at[s].get(key) for s in sorted(at)]
            if any(v is None for v in vals):
                continue
            games = int(at[min(at)].get("multi/eval/vs_start/games") or 2 * at[min(at)]["eval/tasks"])
            lo, hi = seed_game_bootstrap(vals, games)
            row[name] = {"mean": float(np.mean(vals)), "lo": lo, "hi": hi, "per_seed": vals, "games": games}
            first.setdefault(name, vals)
            glo, ghi = paired_gain(vals, first[name], games)
            row[name] |= {"gain": float(np.mean(vals) - np.mean(first[name])), "gain_lo": glo, "gain_hi": ghi}
            payoff = [at[s].get(key.replace("success", "reward")) for s in sorted(at)]
            if all(isinstance(v, (int, float)) for v in payoff):
                row[name] |= {"payoff": float(np.mean(payoff)), "payoff_per_seed": payoff}
        rows.append(row)
    return rows


def markdown(preset: str, rows: list[dict[str, Any]], seeds: int) -> str:
    head = " | ".join(f"{c}: win rate [95% CI] | {c}: gain over step 0 [95% CI] | {c}: per seed | {c}: payoff"
                      for c in COLUMNS)
    out = [f"#### {preset} ({seeds} seeds)", "", f"| step | {head} |", "| ---: |" + " ---: | ---: | --- | ---: |" * len(COLUMNS)]
    for row in rows:
        cells = []
        for c in COLUMNS:
            v = row.get(c)
            cells += (["", "", "", ""] if v is None else
                      [f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]",
                       f"{v['gain']:+.3f} [{v['gain_lo']:+.3f}, {v['gain_hi']:+.3f}]",
                       ", ".join(f"{x:.3f}" for x in v["per_seed"]),
                       f"{v['payoff']:.3f}" if "payoff" in v else ""])
        out.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="multi-kuhnpoker,multi-sealedbid", help="comma-separated self-play presets")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes, one torch thread each)")
    ap.add_argument("--out", default="bench_out/selfplay")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    ap.add_argument("--quick", action="store_true", help="tiny runs (seconds each)")
    ap.add_argument("--json", help="write the raw table here")
    args = ap.parse_args(argv)

    from turngym.trainers.config import resolve_train_config

    overrides = [f"{k}={v}" for k, v in QUICK.items()] if args.quick else []
    overrides += args.set
    out = Path(args.out)
    presets = [p for p in args.presets.split(",") if p]
    todo, steps = [], {}
    for preset in presets:
        steps[preset] = resolve_train_config(preset, overrides).steps
        todo += [(preset, s) for s in range(args.seeds) if not finished(run_dir(out, preset, s), steps[preset], overrides)]
    print(f"{len(todo)} run(s) to train, {len(presets) * args.seeds - len(todo)} reused", file=sys.stderr)
    if args.jobs > 1 and len(todo) > 1:
        with worker_pool(args.jobs) as pool:
            list(pool.map(train_one, *zip(*todo), [str(out)] * len(todo), [overrides] * len(todo)))
    else:
        for preset, s in todo:
            train_one(preset, s, str(out), overrides)

    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}\n")
    table = {}
    for preset in presets:
        runs = {s: eval_lines(run_dir(out, preset, s)) for s in range(args.seeds)}
        table[preset] = summarise(runs)
        print(markdown(preset, table[preset], args.seeds) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
