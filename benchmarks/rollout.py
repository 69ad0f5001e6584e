"""Batched rollout vs one-env-at-a-time generation on HopQA with the tiny model.

Batched: `collect_rollouts` steps all ``n_envs x group`` episodes together (one generate call per round).
Sequential: the same engine with one episode at a time (``max_concurrent=1``), i.e. batch size 1, on the first
``--sequential-n`` trajectories (the rate is per trajectory, so a subset is enough and keeps it short).
Both use the same seeds, sampling settings and model; the random-init tiny model rarely stops early, so every
turn costs about ``--max-new-tokens`` tokens in both modes.

    python benchmarks/rollout.py                        # 64 envs x G=4, markdown table on stdout
    python benchmarks/rollout.py --n-envs 8 --group 2 --sequential-n 4   # quick

Reports trajectories/s, sampled tokens/s, the speed-up, and the share of wall time spent stepping envs
(parsing + tool calls) and rendering observations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def run(n_envs: int, group: int, sequential_n: int, max_new_tokens: int, max_turns: int | None, threads: int,
        size: str, max_batch_size: int, device: str | None, cache_dir: str | None) -> dict:
    import torch

    torch.set_num_threads(threads)
    from turngym.agents import HFPolicy, Renderer, SamplingParams, collect_rollouts, load_policy_model

    env_id = "search/HopQA-v0"
    model, tok = load_policy_model("tiny", env_id=env_id, size=size, cache_dir=cache_dir, device=device)
    params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
    seeds = list(range(n_envs))

    def go(seeds_, g, max_concurrent):
        pol = HFPolicy(model, tok, seed=0, max_batch_size=max_batch_size)
        trajs, st = collect_rollouts(env_id, pol, Renderer(tok), seeds_, g, params=params, max_turns=max_turns,
                                     max_concurrent=max_concurrent, return_stats=True)
        return trajs, st

    go(seeds[:2], 1, None)  # warm-up (imports, env world, first forward)
    rows = {}
    trajs, st = go(seeds, group, None)
    rows["batched"] = (trajs, st)
    n_seq_seeds = max(1, sequential_n // group)
    trajs_s, st_s = go(seeds[:n_seq_seeds], group, 1)
    rows["sequential"] = (trajs_s, st_s)
    out = {"config": {"env": env_id, "n_envs": n_envs, "group": group, "max_new_tokens": max_new_tokens,
                      "max_turns": max_turns, "threads": threads, "size": size, "max_batch_size": max_batch_size,
                      "device": device or "cpu", "params": sum(p.numel() for p in model.parameters()),
                      "cpu": platform.processor() or platform.machine(), "load_avg": os.getloadavg()[0]}}
    for name, (tr, s) in rows.items():
        out[name] = {
            "trajectories": len(tr),
            "turns": sum(t.num_turns for t in tr),
            "sampled_tokens": s.sampled_tokens,
            "wall_s": s.wall_s,
            "traj_per_s": len(tr) / s.wall_s,
            "tok_per_s": s.sampled_tokens / s.wall_s,
            "generate_share": s.generate_s / s.wall_s,
            "env_share": s.env_s / s.wall_s,
            "render_share": s.render_s / s.wall_s,
            "setup_share": s.setup_s / s.wall_s,
            "rounds": s.rounds,
        }
    out["speedup_traj_per_s"] = out["batched"]["traj_per_s"] / out["sequential"]["traj_per_s"]
    return out


def markdown(r: dict) -> str:
    c = r["config"]
    lines = [
        (f"HopQA, tiny model ({c['params'] / 1e6:.2f}M params, {c['size']}), {c['n_envs']} envs x G={c['group']}, "
         f"max_new_tokens={c['max_new_tokens']}, {c['threads']} torch thread(s), device {c['device']}, "
         f"load avg {c['load_avg']:.1f}"),
        "",
        "| mode | trajectories | sampled tokens | wall s | traj/s | tok/s | generate | env+tools | render |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("batched", "sequential"):
        m = r[name]
        lines.append(
            f"| {name} | {m['trajectories']} | {m['sampled_tokens']} | {m['wall_s']:.1f} | {m['traj_per_s']:.2f} | "
            f"{m['tok_per_s']:.0f} | {m['generate_share']:.1%} | {m['env_share']:.2%} | {m['render_share']:.2%} |"
        )
    lines.append("")
    lines.append(f"Speed-up (trajectories/s, batched / sequential): **{r['speedup_traj_per_s']:.1f}x**")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-envs", type=int, default=64)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--sequential-n", type=int, default=16, help="trajectories for the one-at-a-time baseline")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-turns", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", default="1m")
    ap.add_argument("--max-batch-size", type=int, default=128)
    ap.add_argument("--device", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--json", default=None, help="also write the raw numbers to this file")
    a = ap.parse_args(argv)
    t0 = time.time()
    r = run(a.n_envs, a.group, a.sequential_n, a.max_new_tokens, a.max_turns, a.threads, a.size, a.max_batch_size,
            a.device, a.cache_dir)
    print(markdown(r))
    print(f"\n(total {time.time() - t0:.0f}s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
