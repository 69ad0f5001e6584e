"""Batched rollout vs one-env-at-a-time generation on HopQA with the tiny model; new vs legacy decode loop.

Batched: `collect_rollouts` steps all ``n_envs x group`` episodes together (one generate call per round).
Sequential: the same engine with one episode at a time (``max_concurrent=1``), i.e. batch size 1, on the first
``--sequential-n`` trajectories (the rate is per trajectory, so a subset is enough and keeps it short).
Both use the same seeds, sampling settings and model; the random-init tiny model rarely stops early, so every
turn costs about ``--max-new-tokens`` tokens in both modes.

``--legacy`` also runs the decode loop from before issue 24 (``HFPolicy(legacy_decode=True)``: the whole KV cache
gathered on every finished row, ``torch.multinomial`` over the full vocabulary) in the same process, so the
two are compared side by side under the same machine load. With ``--repeats N`` every mode runs N times in
ABBA order (legacy, new, new, legacy, ...) and the rates are totals over the repeats. The load average is
read before and after each run.

    python benchmarks/rollout.py                        # 64 envs x G=4, markdown table on stdout
    python benchmarks/rollout.py --legacy --repeats 2   # new vs legacy side by side (the README table)
    python benchmarks/rollout.py --profile              # cProfile shares of the batched path (new and legacy)
    python benchmarks/rollout.py --eot-bias 3 --sweep-compaction 0,0.1,0.25,0.5,1 --repeats 2   # compaction threshold
    python benchmarks/rollout.py --decode step --repeats 2   # turngym's decode step vs the model's forward
    python benchmarks/rollout.py --n-envs 8 --group 2 --sequential-n 4   # quick

Reports trajectories/s, sampled tokens/s, the speed-ups, and the share of wall time spent stepping envs
(parsing + tool calls) and rendering observations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

# cProfile rows reported by --profile: label -> substrings of pstats function keys
PROFILE_ROWS = {
    "scaled_dot_product_attention": ("scaled_dot_product_attention",),
    "KV compaction (batch_select_indices / move_rows)": ("batch_select_indices", "move_rows", "keep_rows"),
    "sampling (multinomial / sample_tokens)": ("sample_tokens", "_sample_legacy"),
    "linear layers": ("torch._C._nn.linear",),
    "KV buffer allocation (new_zeros)": ("new_zeros",),
    "torch.cat (prefix-cache entries, masks, RoPE)": ("torch.cat",),
}


def _policy(model, tok, legacy: bool, max_batch_size: int, compact_dead_share: float | None, decode: str = "eager"):
    from turngym.agents import HFPolicy

    kw = {} if compact_dead_share is None else {"compact_dead_share": compact_dead_share}
    return HFPolicy(model, tok, seed=0, max_batch_size=max_batch_size, legacy_decode=legacy, decode=decode, **kw)


def _eot_biased(model, tok, bias: float):
    """A copy of `model` with `bias` added to the end-of-turn logit (an untied, biased ``lm_head``): sampled
    actions then end after a spread of lengths, as a trained policy's do, instead of running to the cap."""
    import copy

    import torch

    eot = tok.convert_tokens_to_ids("<|end|>")
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.config.tie_word_embeddings = False
        w = model.lm_head.weight.detach().clone()
        m.lm_head = torch.nn.Linear(w.shape[1], w.shape[0], bias=True).to(w.device)
        m.lm_head.weight.copy_(w)
        m.lm_head.bias.zero_()
        m.lm_head.bias[eot] = bias
    return m.eval()


def _profile_shares(prof) -> dict[str, float]:
    import pstats

    st = pstats.Stats(prof)
    total = st.total_tt
    out: dict[str, float] = {}
    for label, keys in PROFILE_ROWS.items():
        tt = 0.0
        for (file, _line, name), (_cc, _nc, tottime, cumtime, _callers) in st.stats.items():
            full = f"{file}:{name}"
            if any(k in full for k in keys):
                # own time for builtins, cumulative for our Python functions (their callees are tensor ops)
                tt += cumtime if name in ("sample_tokens", "_sample_legacy", "move_rows", "keep_rows") else tottime
        out[label] = tt / total
    out["total_s"] = total
    return out


def run(n_envs: int, group: int, sequential_n: int, max_new_tokens: int, max_turns: int | None, threads: int,
        size: str, max_batch_size: int, device: str | None, cache_dir: str | None, legacy: bool = False,
        repeats: int = 1, profile: bool = False, compact_dead_share: float | None = None, eot_bias: float = 0.0,
        sweep: list[float] | None = None, decode: str | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    from turngym.agents import Renderer, SamplingParams, collect_rollouts, load_policy_model

    env_id = "search/HopQA-v0"
    model, tok = load_policy_model("tiny", env_id=env_id, size=size, cache_dir=cache_dir, device=device)
    if eot_bias:
        model = _eot_biased(model, tok, eot_bias)
    params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
    seeds = list(range(n_envs))

    def go(seeds_, g, max_concurrent, legacy_, prof=None, share=compact_dead_share, decode_="eager"):
        pol = _policy(model, tok, legacy_, max_batch_size, share, decode_)
        load0 = os.getloadavg()[0]
        if prof is not None:
            prof.enable()
        trajs, st = collect_rollouts(env_id, pol, Renderer(tok), seeds_, g, params=params, max_turns=max_turns,
                                     max_concurrent=max_concurrent, return_stats=True)
        if prof is not None:
            prof.disable()
        return trajs, st, (load0, os.getloadavg()[0])

    for lg in ([True, False] if (legacy or profile) else [False]):
        go(seeds[:2], 1, None, lg)  # warm-up (imports, env world, first forward)
    if decode:
        go(seeds[:2], 2, None, False, decode_=decode)  # warm-up, and the compilation of decode="compiled"
    out: dict = {"config": {"env": env_id, "n_envs": n_envs, "group": group, "max_new_tokens": max_new_tokens,
                            "max_turns": max_turns, "threads": threads, "size": size, "max_batch_size": max_batch_size,
                            "device": device or "cpu", "params": sum(p.numel() for p in model.parameters()),
                            "cpu": platform.processor() or platform.machine(), "repeats": repeats,
                            "compact_dead_share": _policy(model, tok, False, 1, compact_dead_share).compact_dead_share,
                            "cpus": os.cpu_count(), "eot_bias": eot_bias, "decode": decode}}
    if sweep:
        rows: dict[float, dict] = {}
        for rep in range(repeats):
            for share in (sweep if rep % 2 == 0 else sweep[::-1]):
                trajs, st, loads = go(seeds, group, None, False, share=share)
                a = rows.setdefault(share, {"sampled_tokens": 0, "wall_s": 0.0, "trajectories": 0, "loads": []})
                a["sampled_tokens"] += st.sampled_tokens
                a["wall_s"] += st.wall_s
                a["trajectories"] += len(trajs)
                a["loads"].extend(loads)
        out["sweep"] = {str(k): {**v, "tok_per_s": v["sampled_tokens"] / v["wall_s"]} for k, v in rows.items()}
        return out
    if profile:
        import cProfile

        for name, lg in (("legacy", True), ("new", False)):
            prof = cProfile.Profile()
            _, st, loads = go(seeds, group, None, lg, prof)
            out[f"profile_{name}"] = {**_profile_shares(prof), "wall_s": st.wall_s, "load": loads,
                                      "sampled_tokens": st.sampled_tokens}
        return out

    n_seq_seeds = max(1, sequential_n // group)
    modes = [("batched", None, seeds), ("sequential", 1, seeds[:n_seq_seeds])]
    paths = [("legacy", True), ("new", False)] if legacy else [("new", False)]
    if decode:
        paths.append((decode, False))
    acc: dict[str, dict] = {}
    for mode, max_conc, seeds_ in modes:
        for rep in range(repeats):
            order = paths if rep % 2 == 0 else paths[::-1]  # ABBA: load drift hits both paths alike
            for pname, lg in order:
                trajs, st, loads = go(seeds_, group, max_conc, lg, decode_=pname if pname == decode else "eager")
                a = acc.setdefault(f"{mode}_{pname}", {"trajectories": 0, "turns": 0, "sampled_tokens": 0, "wall_s": 0.0,
                                                      "generate_s": 0.0, "env_s": 0.0, "render_s": 0.0, "setup_s": 0.0,
                                                      "rounds": 0, "loads": []})
                a["trajectories"] += len(trajs)
                a["turns"] += sum(t.num_turns for t in trajs)
                for k in ("sampled_tokens", "wall_s", "generate_s", "env_s", "render_s", "setup_s", "rounds"):
                    a[k] += getattr(st, k)
                a["loads"].extend(loads)
    for name, a in acc.items():
        w = a["wall_s"]
        out[name] = {
            "trajectories": a["trajectories"], "turns": a["turns"], "sampled_tokens": a["sampled_tokens"], "wall_s": w,
            "traj_per_s": a["trajectories"] / w, "tok_per_s": a["sampled_tokens"] / w,
            "generate_share": a["generate_s"] / w, "env_share": a["env_s"] / w, "render_share": a["render_s"] / w,
            "setup_share": a["setup_s"] / w, "rounds": a["rounds"],
            "load_min": min(a["loads"]), "load_max": max(a["loads"]),
        }
    for pname, _ in paths:
        out[f"speedup_{pname}"] = out[f"batched_{pname}"]["traj_per_s"] / out[f"sequential_{pname}"]["traj_per_s"]
    if decode:
        out["decode_vs_new_batched_tok_per_s"] = out[f"batched_{decode}"]["tok_per_s"] / out["batched_new"]["tok_per_s"]
        out["decode_vs_new_sequential_tok_per_s"] = (out[f"sequential_{decode}"]["tok_per_s"]
                                                     / out["sequential_new"]["tok_per_s"])
    if legacy:
        out["new_vs_legacy_batched_tok_per_s"] = out["batched_new"]["tok_per_s"] / out["batched_legacy"]["tok_per_s"]
        out["new_vs_legacy_sequential_tok_per_s"] = (out["sequential_new"]["tok_per_s"]
                                                     / out["sequential_legacy"]["tok_per_s"])
    return out


def markdown(r: dict) -> str:
    c = r["config"]
    head = (f"HopQA, tiny model ({c['params'] / 1e6:.2f}M params, {c['size']}), {c['n_envs']} envs x G={c['group']}, "
            f"max_new_tokens={c['max_new_tokens']}, {c['threads']} torch thread(s), device {c['device']}, "
            f"{c['cpus']} CPUs, compact_dead_share={c['compact_dead_share']}, repeats={c['repeats']}")
    if "sweep" in r:
        lines = [head + f", end-of-turn logit bias {c['eot_bias']}", "",
                 "| compact_dead_share | trajectories | sampled tokens | wall s | tok/s | load (1 min) |",
                 "| ---: | ---: | ---: | ---: | ---: | --- |"]
        for k, v in r["sweep"].items():
            lines.append(f"| {k} | {v['trajectories']} | {v['sampled_tokens']} | {v['wall_s']:.1f} | "
                         f"{v['tok_per_s']:.0f} | {min(v['loads']):.1f}-{max(v['loads']):.1f} |")
        return "\n".join(lines)
    if "profile_new" in r:
        lines = [head, "", "| cProfile share of the batched rollout | legacy | new |", "| --- | ---: | ---: |"]
        pl, pn = r.get("profile_legacy", {}), r["profile_new"]
        for label in [*PROFILE_ROWS, "total_s"]:
            fmt = (lambda v: f"{v:.1f} s") if label == "total_s" else (lambda v: f"{v:.1%}")
            lines.append(f"| {label} | {fmt(pl[label]) if pl else '-'} | {fmt(pn[label])} |")
        for name, p in (("legacy", pl), ("new", pn)):
            if p:
                lines.append(f"\n{name}: {p['sampled_tokens']} tokens in {p['wall_s']:.1f} s under cProfile, "
                             f"load {p['load'][0]:.1f} -> {p['load'][1]:.1f}")
        return "\n".join(lines)
    lines = [head, "",
             ("| path | mode | trajectories | sampled tokens | wall s | traj/s | tok/s | generate | env+tools | render "
              "| load (1 min) |"),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name in [f"{m}_{p}" for m in ("batched", "sequential") for p in ("new", "legacy", "step", "compiled")]:
        if name not in r:
            continue
        m = r[name]
        mode, path = name.split("_")
        lines.append(
            f"| {path} | {mode} | {m['trajectories']} | {m['sampled_tokens']} | {m['wall_s']:.1f} | "
            f"{m['traj_per_s']:.2f} | {m['tok_per_s']:.0f} | {m['generate_share']:.1%} | {m['env_share']:.2%} | "
            f"{m['render_share']:.2%} | {m['load_min']:.1f}-{m['load_max']:.1f} |"
        )
    lines.append("")
    lines.append(f"Speed-up (trajectories/s, batched / one at a time), new path: **{r['speedup_new']:.1f}x**")
    if "speedup_legacy" in r:
        lines.append(f"Speed-up (trajectories/s, batched / one at a time), legacy path: {r['speedup_legacy']:.1f}x")
        lines.append(f"Batched sampled tokens/s, new / legacy: **{r['new_vs_legacy_batched_tok_per_s']:.2f}x**; "
                     f"one at a time: {r['new_vs_legacy_sequential_tok_per_s']:.2f}x")
    if "decode_vs_new_batched_tok_per_s" in r:
        lines.append(f"Sampled tokens/s, decode={c['decode']} / eager (both with the new loop): batched "
                     f"**{r['decode_vs_new_batched_tok_per_s']:.2f}x**, one at a time "
                     f"{r['decode_vs_new_sequential_tok_per_s']:.2f}x")
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
    ap.add_argument("--legacy", action="store_true", help="also run the pre-issue-24 decode loop, side by side")
    ap.add_argument("--repeats", type=int, default=1, help="runs per mode (ABBA order with --legacy)")
    ap.add_argument("--profile", action="store_true", help="cProfile shares of the batched path, legacy and new")
    ap.add_argument("--compact-dead-share", type=float, default=None, help="HFPolicy.compact_dead_share")
    ap.add_argument("--eot-bias", type=float, default=0.0,
                    help="add this to the end-of-turn logit (actions of varied lengths, like a trained policy's)")
    ap.add_argument("--sweep-compaction", default=None,
                    help="comma-separated compact_dead_share values: batched new path only, one row each")
    ap.add_argument("--decode", choices=["step", "compiled"], default=None,
                    help="also run HFPolicy(decode=...) with the new loop, side by side with the eager decode step")
    ap.add_argument("--json", default=None, help="also write the raw numbers to this file")
    a = ap.parse_args(argv)
    t0 = time.time()
    r = run(a.n_envs, a.group, a.sequential_n, a.max_new_tokens, a.max_turns, a.threads, a.size, a.max_batch_size,
            a.device, a.cache_dir, legacy=a.legacy, repeats=a.repeats, profile=a.profile,
            compact_dead_share=a.compact_dead_share, eot_bias=a.eot_bias,
            sweep=[float(x) for x in a.sweep_compaction.split(",")] if a.sweep_compaction else None, decode=a.decode)
    print(markdown(r))
    print(f"\n(total {time.time() - t0:.0f}s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
