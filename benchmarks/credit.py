"""Credit-assignment speed: vectorised methods vs their slow loop references, on CPU.

Default workload (issue 5): B = 4096 trajectories x K = 8 turns x 256 response tokens (each turn 24 policy tokens +
8 observation tokens), groups of G = 16, every signal present. The vectorised time is the median of ``--repeats``
runs of ``assign_credit`` (config build, credit math, token broadcast, output checks, diagnostics). The loop reference
(``tests/credit/credit_reference.py``: plain Python over lists, including the token broadcast) is timed (median of
``--repeats``) on the first ``--ref-rows`` rows (whole groups) and extrapolated linearly to B — every reference is O(B·K + B·L).

Usage::

    .venv/bin/python benchmarks/credit.py                 # full size, prints a markdown table
    .venv/bin/python benchmarks/credit.py --batch 256 --ref-rows 64   # quick
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "credit"))

import credit_reference as ref

from turngym.credit import GroupBatch, assign_credit
from turngym.credit.base import PROMPT_SIGNALS_KEY
from turngym.credit.gigpo import GiGPOConfig, _anchor_text
from turngym.types import Trajectory, Turn


def make_trajs(b: int, k: int, tokens: int, g: int, seed: int = 0) -> list[Trajectory]:
    rng = random.Random(seed)
    per_turn = tokens // k
    na, no = per_turn * 3 // 4, per_turn - per_turn * 3 // 4
    trajs = []
    for i in range(b):
        turns = []
        for t in range(k):
            sig = {"probe_score": -rng.random() * 3, "match_r": rng.choice([0.0, 0.25, 0.5, 1.0]),
                   "siop_support": rng.random() * 0.9 + 0.01, "judge_think": float(rng.choice([-1, 0, 1])),
                   "judge_action": float(rng.choice([-1, 0, 1])), "slate_step": float(rng.randint(0, 3))}
            turns.append(Turn(action_ids=[rng.randrange(1, 30000) for _ in range(na)], logprobs=[-0.5] * na,
                              obs_ids=[5] * no, reward=float(rng.random() < 0.2), signals=sig,
                              info={"anchor_obs": f"s{t}-{rng.randint(0, 3)}"}))
        trajs.append(Trajectory(group_id=f"q{i // g}", prompt_ids=[1] * 16, turns=turns,
                                outcome=float(rng.random() < 0.5), final_answer="a",
                                meta={PROMPT_SIGNALS_KEY: {"probe_score": -3.0, "siop_support": 0.01,
                                                           "siop_q": rng.random()}}))
    return trajs


def _anchors(batch):
    cfg = GiGPOConfig()
    return [[_anchor_text(t, k, cfg) for k in range(len(t.turns))] for t in batch.trajectories]


# each reference returns the per-turn tables that the method broadcasts to tokens (A²TGPO: advantages + clip scale)
REFS = {
    "grpo": lambda b: ref.ref_grpo(b),
    "dr_grpo": lambda b: ref.ref_grpo(b, norm_adv_by_std=False),
    "rloo": ref.ref_rloo,
    "reinforce_pp": ref.ref_reinforce_pp,
    "igpo": lambda b: ref.ref_igpo(b),
    "a2tgpo": lambda b: ref.ref_a2tgpo(b),
    "matchtir": ref.ref_matchtir,
    "siop": ref.ref_siop,
    "slate": ref.ref_slate,
    "gigpo": lambda b: ref.ref_gigpo(b, _anchors(b)),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--ref-rows", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=",".join(REFS))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    t0 = time.perf_counter()
    trajs = make_trajs(a.batch, a.turns, a.tokens, a.group)
    t1 = time.perf_counter()
    batch = GroupBatch.from_trajectories(trajs)
    t2 = time.perf_counter()
    sub = GroupBatch.from_trajectories(trajs[: a.ref_rows])
    print(f"workload: B={a.batch} K={a.turns} L={batch.length} G={a.group}, torch threads={a.threads}; "
          f"trajectory generation {t1 - t0:.2f} s, GroupBatch.from_trajectories {t2 - t1:.2f} s")
    scale = a.batch / a.ref_rows
    rows = []
    for m in a.methods.split(","):
        assign_credit(m, batch)  # warm-up (allocator, lazy caches of the batch)
        times = []
        for _ in range(a.repeats):
            s = time.perf_counter()
            assign_credit(m, batch)
            times.append(time.perf_counter() - s)
        vec = statistics.median(times)
        ref_times = []
        for _ in range(a.repeats):
            s = time.perf_counter()
            tables = REFS[m](sub)
            for table in (tables if isinstance(tables, tuple) else (tables,)):
                ref.ref_broadcast(sub, table)
            ref_times.append(time.perf_counter() - s)
        loop_sub = statistics.median(ref_times)
        loop = loop_sub * scale
        rows.append((m, vec, loop_sub, loop, loop / vec))
    print()
    print(f"| method | vectorised (s, B={a.batch}) | loop ref on {a.ref_rows} rows (s) | loop ref extrapolated "
          f"to B (s) | speed-up |")
    print("|---|---|---|---|---|")
    for m, vec, ls, lf, sp in rows:
        print(f"| {m} | {vec:.3f} | {ls:.3f} | {lf:.1f} | {sp:.0f}x |")


if __name__ == "__main__":
    main()
