"""Per-agent credit compared: multi-agent credit methods and policy sharing, each from the same warm start, over
seeds, with 95% intervals.

    python benchmarks/multi_credit.py --study searchteam --seeds 3 --jobs 2 --out OUT
    python benchmarks/multi_credit.py --study kuhnpoker --seeds 3 --jobs 2 --out OUT
    python benchmarks/multi_credit.py --quick --out OUT      # tiny runs (what the test suite runs)

A study is a preset and its arms (`STUDIES`), each arm a few ``key=value`` overrides of the preset: its credit
method (``grpo``: per-role groups of the shared outcome; ``team-difference``: difference rewards from counterfactual
replays; a turn-level method applied per role) and its ``multi_mode``. For every (``multi_mode``, seed) the preset's
warm start runs once (``OUT/STUDY/warm/MODE/seedS``: one RL step, no evaluation); every arm of that mode and seed
starts from its step-0 checkpoint (``multi_init``, `turngym.trainers.multi`), so arms differ only in what RL did.
``--set`` overrides every run (the warm start's included; after the arm's own overrides), ``--rl-set`` the RL
runs only. A run whose metrics hold
its final evaluation and whose overrides are unchanged (``bench_args.json``) is reused: the grid can be run in parts.

Cooperative studies report held-out team success (``eval/success``); self-play studies the learner's win rate
against the scripted player (the same key). The table gives, per arm, step 0 and the final evaluation (means over
seeds with a 95% seed-then-episodes bootstrap, `selfplay.seed_game_bootstrap`), the gain over step 0 and the
difference from the study's reference arm (both paired by seed, `selfplay.paired_gain`), the per-seed values and
the minutes per run; ``--figure`` draws each arm's mean over evaluated steps. Prints markdown with the machine,
date and load; ``--json`` writes the raw numbers.
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
from selfplay import eval_lines, paired_gain, seed_game_bootstrap

from turngym.bench.workers import worker_pool

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: study -> (preset, {arm: overrides}); the first arm is the reference the others are compared with.
STUDIES: dict[str, tuple[str, dict[str, list[str]]]] = {
    "searchteam": ("multi-searchteam", {
        "grpo (separate)": [],
        "team-difference (separate)": ["credit=team-difference"],
        "a2tgpo (separate)": ["credit=a2tgpo"],
        "matchtir (separate)": ["credit=matchtir"],
        "grpo (shared)": ["multi_mode=shared"],
        "grpo for 100 steps (separate)": ["steps=100", "eval_every=20"],
    }),
    "kuhnpoker": ("multi-kuhnpoker", {
        "grpo (self-play)": [],
        "team-difference (self-play)": ["credit=team-difference"],
        "gigpo (self-play)": ["credit=gigpo", "credit_overrides.anchor_source=observation"],
    }),
}
#: Overrides of ``--quick``: a few CPU seconds per run.
QUICK = {"steps": 2, "tasks_per_step": 2, "group_size": 4, "minibatch_size": 8, "pretrain_steps": 0, "sft_steps": 20,
         "sft_episodes": 16, "eval_tasks": 4, "eval_every": 1, "checkpoint_every": 0}
RUN = ["progress=false", "report=false", "tensorboard=false"]


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").replace("--", "-")


def warm_dir(out: Path, study: str, mode: str, seed: int) -> Path:
    return out / study / "warm" / mode / f"seed{seed}"


def arm_dir(out: Path, study: str, arm: str, seed: int) -> Path:
    return out / study / slug(arm) / f"seed{seed}"


def same_args(run: Path, args: list[str]) -> bool:
    try:
        return json.loads((run / "bench_args.json").read_text(encoding="utf-8")) == args
    except (OSError, ValueError):
        return False


def warm_finished(run: Path, args: list[str]) -> bool:
    return same_args(run, args) and (run / "checkpoints" / "step-00000000" / "state.json").exists()


def arm_finished(run: Path, args: list[str], steps: int) -> bool:
    return same_args(run, args) and any(d["step"] == steps for d in eval_lines(run))


def train_one(preset: str, run: str, args: list[str]) -> str:
    """One run of ``preset`` with ``args`` in a fresh ``run`` directory (picklable for worker processes)."""
    import shutil

    import torch

    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.multi import train

    torch.set_num_threads(1)
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    train(resolve_train_config(preset, [*args, *RUN, f"run_dir={run}"]))
    Path(run, "bench_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    Path(run, "bench_args.json").write_text(json.dumps(args), encoding="utf-8")
    return run


def plan(study: str, seeds: int, out: Path, common: list[str], rl: list[str], arms: list[str]):
    """``(warm_jobs, arm_jobs, steps)``: the (preset, run, args) of every run of the grid, finished or not, and
    each arm run's RL steps."""
    from turngym.trainers.config import resolve_train_config

    preset, every = STUDIES[study]
    warm, jobs, steps = {}, [], {}
    for arm in arms:
        extra = every[arm]
        cfg = resolve_train_config(preset, [*extra, *common, *rl])
        for s in range(seeds):
            w = warm_dir(out, study, cfg.multi_mode, s)
            warm[str(w)] = (preset, str(w), [*common, f"multi_mode={cfg.multi_mode}", f"seed={s}", "steps=1",
                                             "eval_tasks=0", "checkpoint_every=0"])
            init = w / "checkpoints" / "step-00000000"
            jobs.append((preset, str(arm_dir(out, study, arm, s)),
                         [*extra, *common, *rl, f"seed={s}", f"multi_init={init}"]))
            steps[jobs[-1][1]] = cfg.steps
    return list(warm.values()), jobs, steps


def run_all(jobs: list[tuple], n: int) -> None:
    if n > 1 and len(jobs) > 1:
        with worker_pool(n) as pool:
            list(pool.map(train_one, *zip(*jobs)))
    else:
        for job in jobs:
            train_one(*job)


def summarise(study: str, seeds: int, out: Path, arms: list[str]) -> list[dict[str, Any]]:
    """Per arm: step 0 and final evaluation, gain, difference from the first arm (the reference), curve, minutes
    per run."""
    rows, ref = [], None
    for arm in arms:
        runs = [eval_lines(arm_dir(out, study, arm, s)) for s in range(seeds)]
        if not all(runs):
            rows.append({"arm": arm, "missing": True})
            continue
        steps = sorted(set.intersection(*({d["step"] for d in r} for r in runs)))
        at = {st: [next(d["eval/success"] for d in r if d["step"] == st) for r in runs] for st in steps}
        games = int(runs[0][0].get("multi/eval/vs_start/games") or runs[0][0]["eval/tasks"])
        first, last = at[steps[0]], at[steps[-1]]
        secs = [float((arm_dir(out, study, arm, s) / "bench_seconds.txt").read_text()) for s in range(seeds)]
        row = {"arm": arm, "games": games, "step": steps[-1], "first": first, "last": last,
               "first_ci": seed_game_bootstrap(first, games), "last_ci": seed_game_bootstrap(last, games),
               "gain": float(np.mean(last) - np.mean(first)), "gain_ci": paired_gain(last, first, games),
               "curve": {st: float(np.mean(v)) for st, v in at.items()}, "minutes": float(np.mean(secs)) / 60}
        if ref is None:
            ref = last
        else:
            row |= {"vs_ref": float(np.mean(last) - np.mean(ref)), "vs_ref_ci": paired_gain(last, ref, games)}
        rows.append(row)
    return rows


def markdown(study: str, rows: list[dict[str, Any]], seeds: int) -> str:
    preset, ref = STUDIES[study][0], rows[0]["arm"]
    out = [f"#### {study} ({preset}, {seeds} seeds)", "",
           (f"| arm | step 0 [95% CI] | final [95% CI] | gain over step 0 [95% CI] | vs {ref} [95% CI] | "
            "per seed (final) | min per run |"), "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    ci = "{:.3f} [{:.3f}, {:.3f}]".format
    dci = "{:+.3f} [{:+.3f}, {:+.3f}]".format
    for r in rows:
        if r.get("missing"):
            out.append(f"| {r['arm']} | not run | | | | | |")
            continue
        vs = dci(r["vs_ref"], *r["vs_ref_ci"]) if "vs_ref" in r else "(reference)"
        out.append(f"| {r['arm']} | {ci(np.mean(r['first']), *r['first_ci'])} | {ci(np.mean(r['last']), *r['last_ci'])}"
                   f" | {dci(r['gain'], *r['gain_ci'])} | {vs} | {', '.join(f'{x:.3f}' for x in r['last'])} "
                   f"| {r['minutes']:.1f} |")
    return "\n".join(out)


def figure(study: str, rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in rows:
        if not r.get("missing"):
            ax.plot(list(r["curve"]), list(r["curve"].values()), marker="o", label=r["arm"])
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out success (mean over seeds)")
    ax.set_title(f"{study}: {STUDIES[study][0]}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="searchteam", choices=sorted(STUDIES))
    ap.add_argument("--arms", help="comma-separated arms of the study (default: all; the first is the reference)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes, one torch thread each)")
    ap.add_argument("--out", default="bench_out/multi_credit")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    ap.add_argument("--rl-set", action="append", default=[], metavar="KEY=VALUE", help="override for RL runs only")
    ap.add_argument("--quick", action="store_true", help="tiny runs (seconds each)")
    ap.add_argument("--json", help="write the raw table here")
    ap.add_argument("--figure", help="write the curves (PNG) here")
    args = ap.parse_args(argv)

    common = [f"{k}={v}" for k, v in QUICK.items()] if args.quick else []
    common += args.set
    out = Path(args.out)
    arms = args.arms.split(",") if args.arms else list(STUDIES[args.study][1])
    unknown = [a for a in arms if a not in STUDIES[args.study][1]]
    if unknown:
        ap.error(f"unknown arm(s) {unknown} of study {args.study!r}; its arms: {list(STUDIES[args.study][1])}")
    warm, jobs, steps = plan(args.study, args.seeds, out, common, args.rl_set, arms)
    warm_todo = [j for j in warm if not warm_finished(Path(j[1]), j[2])]
    todo = [j for j in jobs if not arm_finished(Path(j[1]), j[2], steps[j[1]])]
    print(f"{len(warm_todo)} warm start(s) and {len(todo)} run(s) to train, "
          f"{len(warm) - len(warm_todo)} and {len(jobs) - len(todo)} reused", file=sys.stderr)
    run_all(warm_todo, args.jobs)
    run_all(todo, args.jobs)

    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}\n")
    rows = summarise(args.study, args.seeds, out, arms)
    print(markdown(args.study, rows, args.seeds) + "\n")
    if args.figure:
        figure(args.study, rows, args.figure)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
