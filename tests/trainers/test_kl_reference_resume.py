"""The KL reference survives ``--resume``: a resumed run regularises towards the reference the run started with
(the policy after the warm start, stored in ``run_dir/reference/``), not towards the weights it resumed from.

Each case trains 2 steps with ``kl_coef > 0`` and a checkpoint every step, resumes to 3 steps, and compares the
reference model every step's batch was scored with (spied on `rollout_batch`) with the step-0 checkpoint's policy
weights; the step-2 weights must differ from those, or the check would prove nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from turngym.trainers.checkpoint import (
    CheckpointError,
    checkpoint_dirs,
    load_checkpoint,
    load_reference,
    save_reference,
    verify_reference,
)
from turngym.trainers.config import resolve_train_config
from turngym.trainers.runlog import read_metrics

pytestmark = pytest.mark.slow

TINY = [
    "env_id=search/HopQA-v0", "model=tiny", "model_size=1m", "device=cpu", "tasks_per_step=2", "group_size=2",
    "minibatch_size=4", "ppo_epochs=1", "pretrain_steps=0", "sft_steps=2", "sft_episodes=4", "sft_batch_size=2",
    "eval_tasks=1", "max_turns=2", "max_new_tokens=16", "max_traj_tokens=256", "save_trajectories=0", "tensorboard=false",
    "progress=false", "report=false", "torch_threads=1", "seed=0", "lr=1e-3",
    # a random-init policy gets all-equal outcomes (zero advantages): the entropy bonus moves the weights anyway
    "entropy_coef=0.05", "kl_coef=0.1", "checkpoint_every=1", "keep_checkpoints=10",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tiny-cache"))


def _policy(state: dict, lora: bool) -> dict:
    """The policy's tensors of a checkpoint (PPO's hold the critic too), trainable ones only with LoRA."""
    out = {k.removeprefix("policy."): v for k, v in state.items() if not k.startswith("critic.")}
    return {k: v for k, v in out.items() if "lora_" in k} if lora else out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("algo", "lora"), [("grpo", False), ("ppo", False), ("grpo", True)])
def test_resumed_run_keeps_the_original_kl_reference(algo, lora, tmp_path: Path, cache_dir, monkeypatch):
    from turngym.trainers import grpo, ppo

    used: dict[int, dict] = {}  # step -> the reference's (policy) weights that scored its batch
    rollout_batch = grpo.rollout_batch

    def spy(cfg, s, step, providers, ref_model=None, producer=None):
        assert ref_model is not None and not any(p.requires_grad for p in ref_model.parameters())
        used[step] = _policy({k: v.detach().clone() for k, v in ref_model.state_dict().items()}, lora)
        return rollout_batch(cfg, s, step, providers, ref_model, producer)

    monkeypatch.setattr(grpo, "rollout_batch", spy)
    monkeypatch.setattr(ppo, "rollout_batch", spy)
    train = ppo.train if algo == "ppo" else grpo.train
    credit = "gae" if algo == "ppo" else "grpo"

    run = tmp_path / "run"
    train(resolve_train_config(None, [*TINY, f"algo={algo}", f"credit={credit}", f"lora={str(lora).lower()}",
                                      f"cache_dir={cache_dir}", f"run_dir={run}", "steps=2"]))
    train(resolve_train_config(None, ["steps=3"], resume_dir=str(run)))

    lines = read_metrics(run, kind="train")
    assert [d["step"] for d in lines] == [1, 2, 3]
    assert all(math.isfinite(d["train/kl"]) for d in lines)
    ckpts = {load_checkpoint(p).step: load_checkpoint(p) for p in checkpoint_dirs(run)}
    w0, w2 = _policy(ckpts[0].model_state, lora), _policy(ckpts[2].model_state, lora)
    assert not _same(w0, w2), "the policy did not move in 2 steps: the check below would prove nothing"

    assert sorted(used) == [0, 1, 2]
    for step, ref in used.items():
        assert _same(ref, w0), f"step {step + 1} used a KL reference other than the weights the run started RL with"
    stored = {k: v for k, v in load_reference(run).items()}
    assert _same(_policy(stored, lora), w0)
    assert verify_reference(run) == "" and (run / "reference" / "manifest.json").is_file()  # checksummed
    if lora:  # only the adapters are stored, as in checkpoints
        assert all("lora_" in k for k in stored)


def test_resume_without_a_stored_reference_stores_the_resumed_weights(tmp_path: Path, cache_dir):
    """A run begun with kl_coef=0 (or by an older turngym) has no stored reference: resuming it with kl_coef > 0
    takes the resumed weights and stores them, so a later resume keeps the same reference."""
    from turngym.trainers import grpo

    run = tmp_path / "run"
    grpo.train(resolve_train_config(None, [*TINY, "kl_coef=0", f"cache_dir={cache_dir}", f"run_dir={run}",
                                           "steps=1"]))
    assert load_reference(run) is None
    grpo.train(resolve_train_config(None, ["steps=2", "kl_coef=0.1"], resume_dir=str(run)))
    stored = load_reference(run)
    w1 = {k: v for k, v in load_checkpoint(checkpoint_dirs(run)[1]).model_state.items()}
    assert load_checkpoint(checkpoint_dirs(run)[1]).step == 1
    assert _same(stored, w1)


def test_stored_reference_is_checksummed(tmp_path: Path):
    """A flipped byte in the stored reference is rejected, never loaded as a changed weight; a reference without
    manifest.json (stored by an older turngym) still loads, unverified."""
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    path = save_reference(tmp_path, model)
    assert verify_reference(tmp_path) == ""
    assert _same(load_reference(tmp_path), model.state_dict())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weight bytes: torch.load alone would load it as a changed weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.pt checksum mismatch"):
        load_reference(tmp_path)
    save_reference(tmp_path, model)
    (tmp_path / "reference" / "manifest.json").unlink()
    assert verify_reference(tmp_path) is None and _same(load_reference(tmp_path), model.state_dict())
