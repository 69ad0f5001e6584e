"""Peak resident memory (RSS) per phase of one RL step: rollout, signals (probe), log-probs (behaviour and
reference), update, evaluation.

Each phase's peak is the kernel's high-water mark ``VmHWM``, reset before the phase (``/proc/self/clear_refs``), so
the figures are exact peaks of the whole process, not samples. Two parts:

* ``--sweep``: the forward/backward pieces alone on a synthetic batch, for the tiny model and SmolLM2-135M, over
  response lengths (peak RSS of behaviour log-probs, the probe, and one update chunk).
* default: ``turngym train PRESET`` for a few steps with the phases metered (the config's own memory estimate is
  printed beside the measured peak).

    python benchmarks/memory.py smollm2-135m steps=2 sft_steps=10 eval_tasks=16 eval_every=0
    python benchmarks/memory.py --sweep
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


class PhaseMeter:
    """Wraps functions so each call records ``(phase, start RSS, peak RSS, seconds)``."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def wrap(self, module, name: str, phase: str) -> None:
        fn = getattr(module, name)

        @functools.wraps(fn)
        def metered(*a, **kw):
            import gc

            gc.collect()
            start = rss_mb()
            reset_peak()
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.rows.append({"phase": phase, "start_mb": round(start), "peak_mb": round(hwm_mb()),
                                  "s": round(time.perf_counter() - t0, 2)})
                print(f"[memory] {phase:10s} start {start:7.0f} MB  peak {hwm_mb():7.0f} MB  "
                      f"{time.perf_counter() - t0:7.1f} s", flush=True)

        setattr(module, name, metered)


def run_preset(argv: list[str]) -> list[dict]:
    from turngym.credit import signals
    from turngym.trainers import grpo, policy_setup, sampling
    from turngym.trainers.config import resolve_train_config

    preset, overrides = argv[0], argv[1:]
    cfg = resolve_train_config(preset, ["tensorboard=false", "progress=false", "report=false", *overrides])
    with contextlib.suppress(ImportError):
        from turngym.trainers.memory import estimate_memory

        est = estimate_memory(cfg)
        print(f"[memory] estimate: {json.dumps({k: round(v) for k, v in est.items()})} MB", flush=True)
    meter = PhaseMeter()
    meter.wrap(grpo, "sample", "rollout")
    meter.wrap(grpo, "run_providers", "signals")
    meter.wrap(grpo, "batch_logprobs", "logprobs")
    meter.wrap(grpo, "update", "update")
    meter.wrap(sampling, "evaluate", "eval")
    meter.wrap(policy_setup, "warm_start", "sft")
    _ = signals
    t0 = time.perf_counter()
    grpo.train(cfg)
    print(f"[memory] total {time.perf_counter() - t0:.0f} s, process peak {_ru_maxrss_mb():.0f} MB", flush=True)
    return meter.rows


def _ru_maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sweep(models: list[str], lengths: list[int], threads: int) -> list[dict]:
    """Peak RSS of behaviour log-probs, probe scoring and one update chunk on synthetic rows of each length."""
    import torch

    from turngym.agents.tiny import load_policy_model
    from turngym.trainers.forward import batch_logprobs, chunk_logprobs, iter_chunks
    from turngym.trainers.probe import probe_scorer

    torch.set_num_threads(threads)
    rows = []
    for name in models:
        model, _ = load_policy_model(name, env_id="search/HopQA-v0", device="cpu", dtype=torch.float32)
        model.eval()
        for n in lengths:
            rec = _sweep_one(name, model, n, batch_logprobs, chunk_logprobs, iter_chunks, probe_scorer)
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    return rows


def _sweep_one(name, model, n, batch_logprobs, chunk_logprobs, iter_chunks, probe_scorer) -> dict:
    import gc

    import torch

    vocab = model.config.vocab_size
    B, P, L = 8, 64, n
    batch = _synthetic_batch(B, P, L, vocab, torch.Generator().manual_seed(0))
    contexts = [batch.response_ids[b, : L * (k + 1) // 4].tolist() for b in range(B) for k in range(4)]
    base = rss_mb()
    rec = {"model": name, "vocab": vocab, "rows": B, "tokens": P + L, "base_mb": round(base)}
    phases = {
        "logprobs": lambda: batch_logprobs(model, batch),
        "probe": lambda: probe_scorer(model, 0)(contexts, [[5, 6, 7, 8]] * len(contexts)),
        "update": lambda: _update_chunk(model, batch, iter_chunks, chunk_logprobs),
    }
    for phase, fn in phases.items():
        gc.collect()
        reset_peak()
        t0 = time.perf_counter()
        fn()
        rec[f"{phase}_peak_mb"] = round(hwm_mb() - base)
        rec[f"{phase}_s"] = round(time.perf_counter() - t0, 2)
    return rec


def _synthetic_batch(B, P, L, vocab, g):
    import torch

    from turngym.types import Trajectory, Turn

    trajs = []
    for b in range(B):
        prompt = torch.randint(3, vocab, (P,), generator=g).tolist()
        action = torch.randint(3, vocab, (L,), generator=g).tolist()
        t = Trajectory(prompt_ids=prompt, turns=[Turn(action_ids=action, logprobs=[0.0] * L)],
                       group_id=f"g{b // 4}", outcome=float(b % 2))
        trajs.append(t)
    from turngym.credit.base import GroupBatch as GB

    return GB.from_trajectories(trajs, pad_id=0)


def _update_chunk(model, batch, iter_chunks, chunk_logprobs):
    import torch

    model.train()
    rows = torch.arange(batch.batch_size)
    for chunk in iter_chunks(batch, rows, batch.batch_size):
        logp, ent, _ = chunk_logprobs(model, chunk, with_entropy=True, entropy_grad=True)
        (logp.mean() + 0.01 * ent.mean()).backward()
    model.zero_grad(set_to_none=True)
    model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--models", default="tiny,smollm2-135m")
    p.add_argument("--lengths", default="256,1024")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args, rest = p.parse_known_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.sweep:
        rows = sweep(args.models.split(","), [int(x) for x in args.lengths.split(",")], args.threads)
    else:
        if not rest:
            p.error("give a preset and overrides, or --sweep")
        rows = run_preset(rest)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
