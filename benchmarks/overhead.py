"""Framework overhead of one multi-turn GRPO step on HopQA against the raw model compute for the same tokens.

Two arms, interleaved in one process (same model weights, one torch thread each, medians over ``--repeats``):

* **turngym**: one full GRPO training step exactly as `turngym.trainers.grpo.train` runs it (`grpo.train_step`,
  then the run log): rollout through the engine (envs, BM25 search tool, parsing, rendering, HF sampler),
  signal providers, `GroupBatch` packing, credit (``--credit``, default ``grpo``), the clipped-PG update
  (`turngym.trainers.update.update`), metrics and the run log (metrics JSONL, sampled trajectories, TensorBoard
  when installed).
* **floor**: the model compute alone for the *same tokens*, read off that step's trajectories: for every
  rollout round, a batched generate()-style pass over the same contexts (one left-padded prefill with a
  plain transformers `DynamicCache`, then one decode forward per sampled token, softmax sampling and the
  sampled token's log-prob), followed by forward/backward + AdamW step over the same trained sequences in the
  same minibatches (token-mean policy-gradient loss on the action tokens). No env, no tools, no
  rendering, no credit, no packing, no logging.

``overhead = turngym_step / floor - 1`` (target <= 30%). The turngym sampler reuses each episode's keys and
values across turns (prefix cache) while the floor re-prefills each round's full context, as generate()
does; the table also gives turngym's own accounting (time inside the model-calling code vs. the rest).

    python benchmarks/overhead.py                                  # HopQA, 4 tasks x G=8, 3 repeats
    python benchmarks/overhead.py --tasks 2 --group 2 --repeats 1 --max-new-tokens 16 --json out.json  # quick

Prints a markdown table with the machine, date and load average; ``--json`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import inspect
import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Self

# ----------------------------------------------------------------------------------------------- machine


def machine_info(threads: int) -> dict[str, Any]:
    """Machine, date and load average for the report header."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_start": round(os.getloadavg()[0], 2),
    }


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


class Clock:
    """Context manager measuring wall seconds and this process's CPU seconds (all threads).

    On a shared machine the wall time includes waiting for a core; the CPU time does not, so it is the steadier
    of the two (with one torch thread it is close to the wall time on an idle machine).
    """

    def __enter__(self) -> Self:
        self.wall = self.cpu = 0.0
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


# ----------------------------------------------------------------------------------------------- turngym arm


@dataclass
class StepResult:
    """One turngym GRPO step: its trajectories and where the wall time went (seconds)."""

    trajs: list
    metrics: dict[str, float]
    times: dict[str, float] = field(default_factory=dict)


#: ``StepResult.times`` key <- the ``perf/*`` metric of `grpo.train_step` it is read from
STEP_TIMES = {"rollout": "rollout_s", "rollout_cpu": "rollout_cpu_s", "rollout.generate_s": "rollout_generate_s",
              "rollout.env_s": "rollout_env_s", "rollout.render_s": "rollout_render_s",
              "rollout.setup_s": "rollout_setup_s", "signals": "signals_s", "pack": "pack_s",
              "old_logprobs": "logprobs_s", "credit": "credit_s", "update": "update_s", "update_cpu": "update_cpu_s"}


class GRPOStepper:
    """`turngym.trainers.grpo.train`'s step loop, one call per step: `grpo.train_step` then the run log.

    Built as in ``grpo.train`` (optimizer, NaN guard, providers, run log); no KL reference model, no async producer,
    no mid-run evaluation or checkpoint. The timing breakdown comes from the step's ``perf/*`` metrics.
    """

    def __init__(self, cfg, setup, run_dir: str):
        import torch

        from turngym.trainers import batch_signals
        from turngym.trainers.nanguard import NanGuard
        from turngym.trainers.runlog import RunLog

        self.cfg, self.s = cfg, setup
        self.optimizer = torch.optim.AdamW([p for p in setup.model.parameters() if p.requires_grad], lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.guard = NanGuard(max_consecutive=cfg.max_nonfinite_steps)
        self.run = RunLog(run_dir, cfg, progress=False)
        self.providers = batch_signals.signal_providers(cfg, setup)
        self.step_index = 0

    def step(self) -> StepResult:
        from turngym.trainers import grpo

        step = self.step_index
        t_step, c_step = time.perf_counter(), time.process_time()
        trajs, _, metrics = grpo.train_step(self.cfg, self.s, self.optimizer, step, self.providers, self.guard)
        t0 = time.perf_counter()
        self.run.log(step + 1, metrics)
        self.run.log_trajectories(step + 1, trajs)
        times = {k: metrics[f"perf/{v}"] for k, v in STEP_TIMES.items()}
        times["log"] = time.perf_counter() - t0
        times["step"] = time.perf_counter() - t_step
        times["step_cpu"] = time.process_time() - c_step
        self.step_index += 1
        return StepResult(trajs, metrics, times)

    def close(self) -> None:
        self.run.close()


# ----------------------------------------------------------------------------------------------- floor arm


def rounds_of(trajs: list) -> list[tuple[list[list[int]], int]]:
    """Per rollout round k: the contexts the sampler saw (episodes with a turn k) and the round's longest action.

    With the ``group`` sampler every episode starts in round 0 and takes one turn per round, so turn k of each
    trajectory was sampled in round k from ``prompt + (action, observation) of turns < k``.
    """
    out = []
    depth = max((len(t.turns) for t in trajs), default=0)
    for k in range(depth):
        contexts, n_new = [], 0
        for t in trajs:
            if len(t.turns) <= k:
                continue
            ctx = list(t.prompt_ids)
            for u in t.turns[:k]:
                ctx += list(u.action_ids) + list(u.obs_ids)
            contexts.append(ctx)
            n_new = max(n_new, len(t.turns[k].action_ids))
        if contexts and n_new:
            out.append((contexts, n_new))
    return out


def floor_generate(model, rounds: list[tuple[list[list[int]], int]], pad_id: int, seed: int = 0) -> Clock:
    """Wall and CPU seconds to sample ``n_new`` tokens for every context of every round (batched, plain KV cache)."""
    import torch
    from transformers.cache_utils import DynamicCache

    gen = torch.Generator().manual_seed(seed)
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    model.eval()
    with torch.inference_mode(), Clock() as clk:
        for contexts, n_new in rounds:
            B, S = len(contexts), max(len(c) for c in contexts)
            ids = torch.full((B, S), pad_id, dtype=torch.long)
            attn = torch.zeros((B, S), dtype=torch.long)
            for b, c in enumerate(contexts):  # left padding
                ids[b, S - len(c):] = torch.tensor(c)
                attn[b, S - len(c):] = 1
            pos = (attn.cumsum(1) - 1).clamp(min=0)
            cache = DynamicCache(config=model.config)
            out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1,
                        **{kw: cache})
            logits = out.logits[:, -1].float()  # [B, V]
            pos = pos[:, -1:]
            for i in range(n_new):
                logp = torch.log_softmax(logits, -1)
                tok = torch.multinomial(logp.exp(), 1, generator=gen)  # [B, 1]
                logp.gather(-1, tok)
                if i == n_new - 1:
                    break
                attn = torch.cat([attn, attn.new_ones(B, 1)], 1)
                pos = pos + 1
                out = model(input_ids=tok, attention_mask=attn, position_ids=pos, use_cache=True, **{kw: cache})
                logits = out.logits[:, -1].float()
    return clk


def floor_train(model, optimizer, trajs: list, minibatch_size: int, pad_id: int, seed: int = 0) -> Clock:
    """Wall and CPU seconds of forward/backward + optimizer step over the trajectories' sequences, same minibatch split."""
    import torch

    seqs = [(t.token_ids(), t.action_mask()) for t in trajs]
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(seed)).tolist()
    model.train()
    with Clock() as clk:
        _train_minibatches(model, optimizer, seqs, order, minibatch_size, pad_id)
    model.eval()
    return clk


def _train_minibatches(model, optimizer, seqs, order, minibatch_size: int, pad_id: int) -> None:
    import torch

    for start in range(0, len(order), minibatch_size):
        rows = [seqs[i] for i in order[start:start + minibatch_size]]
        T = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), T), dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.float32)
        for b, (x, m) in enumerate(rows):  # right padding
            ids[b, : len(x)] = torch.tensor(x)
            attn[b, : len(x)] = 1
            mask[b, : len(m)] = torch.tensor(m, dtype=torch.float32)
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()  # [b, T-1, V]
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [b, T-1]
        m = mask[:, 1:]
        loss = -(logp * m).sum() / m.sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


# ----------------------------------------------------------------------------------------------- driver


def make_config(args, run_dir: str):
    from turngym.trainers.config import TrainConfig

    return TrainConfig(
        env_id=args.env, model="tiny", model_size=args.size, device="cpu", dtype="float32",
        torch_threads=args.threads, seed=0, credit=args.credit, group_size=args.group, tasks_per_step=args.tasks,
        minibatch_size=args.minibatch or args.tasks * args.group, max_new_tokens=args.max_new_tokens,
        max_traj_tokens=args.max_traj_tokens, max_turns=args.max_turns, sft_steps=args.sft_steps,
        sft_episodes=max(16, args.sft_steps), steps=10_000, eval_tasks=0, run_dir=run_dir, progress=False,
        report=False, cache_dir=args.cache_dir,
    )


def run(args) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    from turngym.trainers import policy_setup

    info = machine_info(args.threads)
    tmp = tempfile.mkdtemp(prefix="turngym-overhead-")
    cfg = make_config(args, os.path.join(tmp, "run"))
    s = policy_setup.setup(cfg)
    torch.set_num_threads(args.threads)
    if cfg.sft_steps:
        t0 = time.perf_counter()
        sft = policy_setup.warm_start(cfg, s, lambda *_: None)
        info["sft"] = {"steps": cfg.sft_steps, "loss": sft.get("sft/loss"), "s": round(time.perf_counter() - t0, 1)}
    stepper = GRPOStepper(cfg, s, cfg.run_dir)
    floor_model = copy.deepcopy(s.model)
    floor_opt = torch.optim.AdamW(floor_model.parameters(), lr=cfg.lr)

    rows: list[dict[str, Any]] = []
    for rep in range(args.warmup + args.repeats):
        load = os.getloadavg()[0]
        res = stepper.step()
        rounds = rounds_of(res.trajs)
        # the floor runs right after, on the very same tokens (it needs the step's trajectories)
        gen = floor_generate(floor_model, rounds, s.pad_id, seed=rep)
        train = floor_train(floor_model, floor_opt, res.trajs, cfg.minibatch_size, s.pad_id, seed=cfg.seed)
        floor = {"generate": gen.wall, "train": train.wall, "total": gen.wall + train.wall,
                 "generate_cpu": gen.cpu, "train_cpu": train.cpu, "total_cpu": gen.cpu + train.cpu}
        row = {
            "rep": rep, "warmup": rep < args.warmup, "load_avg": round(load, 2),
            "turngym": res.times, "floor": floor,
            "trajectories": len(res.trajs), "rounds": len(rounds),
            "sampled_tokens": sum(len(u.action_ids) for t in res.trajs for u in t.turns),
            "floor_sampled_tokens": sum(len(c) * n for c, n in rounds),  # rows x longest action, per round
            "trained_tokens": sum(len(t.token_ids()) for t in res.trajs),
            "turns": statistics.mean(len(t.turns) for t in res.trajs),
            "tool_calls": sum(len(u.tool_calls) for t in res.trajs for u in t.turns),
            "success": res.metrics.get("rollout/success"),
        }
        rows.append(row)
        if args.verbose:
            print(f"rep {rep}: turngym {res.times['step']:.2f}s (cpu {res.times['step_cpu']:.2f}s) floor "
                  f"{floor['total']:.2f}s (cpu {floor['total_cpu']:.2f}s) load {load:.2f}", flush=True)
    stepper.close()
    measured = [r for r in rows if not r["warmup"]]
    tg = {k: median([r["turngym"][k] for r in measured]) for k in measured[0]["turngym"]}
    fl = {k: median([r["floor"][k] for r in measured]) for k in measured[0]["floor"]}
    ratios = [r["turngym"]["step"] / r["floor"]["total"] for r in measured]
    ratios_cpu = [r["turngym"]["step_cpu"] / r["floor"]["total_cpu"] for r in measured]
    info["load_avg_end"] = round(os.getloadavg()[0], 2)
    return {
        "machine": info,
        "config": {"env": cfg.env_id, "credit": cfg.credit, "tasks": cfg.tasks_per_step, "group": cfg.group_size,
                   "max_new_tokens": cfg.max_new_tokens, "max_turns": cfg.max_turns, "size": cfg.model_size,
                   "params": sum(p.numel() for p in s.model.parameters()), "minibatch": cfg.minibatch_size,
                   "sft_steps": cfg.sft_steps, "repeats": args.repeats, "warmup": args.warmup},
        "turngym_s": tg, "floor_s": fl,
        "overhead_median": median(ratios) - 1.0,
        "overhead_per_rep": [round(x - 1.0, 3) for x in ratios],
        "overhead_cpu_median": median(ratios_cpu) - 1.0,
        "overhead_cpu_per_rep": [round(x - 1.0, 3) for x in ratios_cpu],
        "rows": rows,
    }


def markdown(res: dict[str, Any]) -> str:
    m, c, tg, fl = res["machine"], res["config"], res["turngym_s"], res["floor_s"]
    last = res["rows"][-1]
    model_in_tg = tg["rollout.generate_s"] + tg["update"]
    lines = [
        f"### Framework overhead: one GRPO step on {c['env']} ({m['date_utc']})",
        "",
        (f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} thread(s); "
        f"load average {m['load_avg_start']} at start, {m['load_avg_end']} at end (shared machine). "
        f"Model: tiny Llama {c['size']} ({c['params'] / 1e6:.2f}M params), {c['tasks']} tasks x G={c['group']}, "
        f"max_new_tokens={c['max_new_tokens']}, credit={c['credit']}, minibatch={c['minibatch']}, "
        f"SFT warm start {c['sft_steps']} steps. Medians over {c['repeats']} steps after {c['warmup']} warm-up."),
        "",
        (f"Per step: {last['trajectories']} trajectories, {last['rounds']} rounds, mean {last['turns']:.2f} turns, "
        f"{last['tool_calls']} tool calls, {last['sampled_tokens']} sampled tokens, {last['trained_tokens']} "
        "trained tokens (last step)."),
        "",
        "| arm | part | wall s (median) | CPU s (median) |",
        "| --- | --- | ---: | ---: |",
        f"| turngym | whole step | {tg['step']:.2f} | {tg['step_cpu']:.2f} |",
        f"| turngym | rollout (all) | {tg['rollout']:.2f} | {tg['rollout_cpu']:.2f} |",
        f"| turngym | - inside policy.generate | {tg['rollout.generate_s']:.2f} | |",
        f"| turngym | - env step + tools | {tg['rollout.env_s']:.3f} | |",
        f"| turngym | - render observations | {tg['rollout.render_s']:.3f} | |",
        f"| turngym | - env reset + prompt render | {tg['rollout.setup_s']:.3f} | |",
        f"| turngym | signals | {tg['signals']:.3f} | |",
        f"| turngym | pack (GroupBatch) | {tg['pack']:.3f} | |",
        f"| turngym | old (and reference) log-probs | {tg['old_logprobs']:.3f} | |",
        f"| turngym | credit + viewer annotations | {tg['credit']:.3f} | |",
        f"| turngym | update (fwd/bwd/opt) | {tg['update']:.2f} | {tg['update_cpu']:.2f} |",
        f"| turngym | metrics + run log | {tg['log']:.3f} | |",
        f"| floor | batched generate, same tokens | {fl['generate']:.2f} | {fl['generate_cpu']:.2f} |",
        f"| floor | fwd/bwd/opt, same tokens | {fl['train']:.2f} | {fl['train_cpu']:.2f} |",
        f"| floor | total | {fl['total']:.2f} | {fl['total_cpu']:.2f} |",
        "",
        (f"**Overhead vs floor: {100 * res['overhead_median']:+.1f}% wall, {100 * res['overhead_cpu_median']:+.1f}% "
        f"CPU** (medians of per-step ratios; wall {res['overhead_per_rep']}, CPU {res['overhead_cpu_per_rep']}; "
        f"target <= +30%). Inside turngym, model-calling code (policy.generate + update) took {model_in_tg:.2f} s "
        f"of the {tg['step']:.2f} s step; everything else {tg['step'] - model_in_tg:.2f} s "
        f"({100 * (tg['step'] - model_in_tg) / max(model_in_tg, 1e-9):.1f}% on top)."),
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--env", default="search/HopQA-v0")
    p.add_argument("--credit", default="grpo")
    p.add_argument("--tasks", type=int, default=4, help="tasks per step")
    p.add_argument("--group", type=int, default=8, help="group size G")
    p.add_argument("--minibatch", type=int, default=0, help="trajectories per optimizer step (0: the whole batch)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-traj-tokens", type=int, default=768)
    p.add_argument("--max-turns", type=int, default=None)
    p.add_argument("--size", default="1m")
    p.add_argument("--sft-steps", type=int, default=0,
                   help="SFT warm start so the policy makes real tool calls (0: random-init policy)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def emit(res: dict[str, Any], markdown, json_path: str | None) -> dict[str, Any]:
    """Print ``markdown(res)``; write the raw numbers to ``json_path`` when given. Returns ``res``."""
    print(markdown(res))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1, default=float)
    return res


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    return emit(run(args), markdown, args.json)


if __name__ == "__main__":
    main()
