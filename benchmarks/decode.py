"""Decode tokens/s of the tiny policy: the model's own forward vs the compiled decode step (issue 23).

    python benchmarks/decode.py                       # batch 1, 8, 64, 128; markdown on stdout
    python benchmarks/decode.py --batches 8 --repeats 1 --new-tokens 16   # quick

For each batch size, the same random contexts (``--min-ctx`` to ``--max-ctx`` tokens, like a prompt plus a few
observations) are sampled at T=1 with three decode paths of `HFPolicy`, in ABBA order per repeat:

- ``eager``: the model's forward (transformers' Llama) for every decode step;
- ``step``: `turngym.agents.decode_step`'s function, not compiled (what rewriting the step alone gives:
  ``decode="step"``);
- ``compiled``: the same function through ``torch.compile`` (inductor C++ on CPU).

Decode rate = tokens after each row's first / (the call's wall time − its prefill forward): prefill, the same in
all paths, is left out. The compile time is the first compiled call's wall time in a
fresh inductor cache (``TORCHINDUCTOR_CACHE_DIR`` in a temporary folder), so it is the cold figure a new machine
pays once per process; ``--warm-cache`` keeps the default cache. All paths give
the same tokens (tests/agents/test_agents_decode_step.py); the script checks it too. "sampling + bookkeeping"
is the share of the compiled path's decode loop outside the step and the prefill (sampling, stop checks,
per-row bookkeeping, the cache append).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _policy(model, tok, path: str):
    from turngym.agents import HFPolicy

    return HFPolicy(model, tok, seed=0, prefix_cache=False, max_batch_size=1024, decode=path)


class _Timed:
    """A policy's decode step with a stopwatch: ``spent`` accumulates the seconds inside it."""

    def __init__(self, inner):
        self.inner, self.spent = inner, 0.0

    def __call__(self, *args):
        t0 = time.perf_counter()
        out = self.inner(*args)
        self.spent += time.perf_counter() - t0
        return out

    @property
    def compile_seconds(self) -> float:
        return self.inner.compile_seconds


class _Stopwatch:
    """The wall seconds of each forward call of ``model`` while the block runs (forward hooks)."""

    def __init__(self, model):
        self.model, self.calls, self._t0 = model, [], 0.0

    def __enter__(self):
        self._hooks = [self.model.register_forward_pre_hook(lambda *_: setattr(self, "_t0", time.perf_counter())),
                       self.model.register_forward_hook(lambda *_: self.calls.append(time.perf_counter() - self._t0))]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()


def run(batches: list[int], new_tokens: int, repeats: int, min_ctx: int, max_ctx: int) -> list[dict]:
    import torch

    from turngym.agents import SamplingParams, load_policy_model

    torch.set_num_threads(1)
    model, tok = load_policy_model("tiny", env_id="search/HopQA-v0")
    rnd = random.Random(0)
    rows = []
    compile_s: dict[str, float] = {}
    for B in batches:
        ctx = [[rnd.randrange(5, len(tok) - 8) for _ in range(rnd.randrange(min_ctx, max_ctx + 1))] for _ in range(B)]
        full = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=1)
        key = "batch 1" if B == 1 else "batch > 1"
        if key not in compile_s:
            pol = _policy(model, tok, "compiled")
            pol.generate(ctx, SamplingParams(temperature=1.0, max_new_tokens=1, seed=1))  # prefill only
            t0 = time.perf_counter()
            pol.generate(ctx, SamplingParams(temperature=1.0, max_new_tokens=2, seed=1))
            compile_s[key] = time.perf_counter() - t0
        acc = {p: {"tok": 0, "s": 0.0, "step_s": 0.0, "rest_s": 0.0} for p in ("eager", "step", "compiled")}
        ids = {}
        for r in range(repeats):
            order = ["eager", "step", "compiled"] if r % 2 == 0 else ["compiled", "step", "eager"]
            for path in order:
                pol = _policy(model, tok, path)
                if path != "eager":
                    pol._step = _Timed(pol._step)
                with _Stopwatch(model) as fwd:  # one generate batch: the first forward is the prefill
                    t0 = time.perf_counter()
                    b = pol.generate(ctx, full)
                    wall = time.perf_counter() - t0
                decode_s = wall - fwd.calls[0]
                step_s = getattr(pol._step, "spent", 0.0)
                acc[path]["tok"] += sum(len(s.ids) for s in b) - B  # the first token of a row comes from prefill
                acc[path]["s"] += decode_s
                acc[path]["step_s"] += step_s
                acc[path]["rest_s"] += decode_s - step_s
                ids.setdefault(path, [s.ids for s in b])
        same = ids["eager"] == ids["step"] == ids["compiled"]
        load = os.getloadavg()[0]
        row = {"batch": B, "same_tokens": same, "load": load}
        for p, v in acc.items():
            row[p] = v["tok"] / max(v["s"], 1e-9)
        c = acc["compiled"]
        row["rest_share"] = c["rest_s"] / max(c["rest_s"] + c["step_s"], 1e-9)
        rows.append(row)
        print(f"batch {B}: eager {row['eager']:.0f}, step {row['step']:.0f}, compiled {row['compiled']:.0f} tok/s, "
              f"same tokens {same}, load {load:.2f}", file=sys.stderr, flush=True)
    return [{"compile_s": compile_s}] + rows


def markdown(out: list[dict], args) -> str:
    head, rows = out[0], out[1:]
    lines = [f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, 1 torch thread; contexts {args.min_ctx}-{args.max_ctx} tokens, "
             f"{args.new_tokens} new tokens at T=1, {args.repeats} repeats (ABBA); compile (cold inductor cache): "
             + ", ".join(f"{k} {v:.1f} s" for k, v in head["compile_s"].items()), "",
             "| batch | eager tok/s | step, not compiled | compiled | compiled / eager | sampling + bookkeeping | same tokens | load (1 min) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['eager']:,.0f} | {r['step']:,.0f} | {r['compiled']:,.0f} | "
                     f"{r['compiled'] / r['eager']:.2f}x | {r['rest_share']:.0%} | {r['same_tokens']} | {r['load']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,8,64,128")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--min-ctx", type=int, default=64)
    ap.add_argument("--max-ctx", type=int, default=192)
    ap.add_argument("--warm-cache", action="store_true", help="keep inductor's default cache (compile time: warm)")
    args = ap.parse_args(argv)
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="turngym-inductor-")
    out = run([int(b) for b in args.batches.split(",")], args.new_tokens, args.repeats, args.min_ctx, args.max_ctx)
    print(markdown(out, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
