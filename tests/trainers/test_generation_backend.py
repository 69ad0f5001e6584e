"""``generation_backend="vllm"`` in the trainers, without vLLM: fails fast when vLLM is missing, rejects the
combinations it does not support, and (with a stand-in engine) starts the sampler from the warm-started weights
and pushes the learner's weights after every update. The real engine: `tests/agents/test_agents_vllm.py`."""

from __future__ import annotations

import copy
import importlib.util
from typing import ClassVar

import pytest
import torch

from turngym.errors import ConfigError, MissingExtraError
from turngym.trainers.config import TrainConfig

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def tiny_cfg(tmp_path, **kw) -> TrainConfig:
    """Tiny sizes. Every update moves the policy whatever the rewards: the entropy term has a gradient on every
    token (the overlong length penalty alone left a group of two equal-length episodes with no advantage, and with
    LoRA's zero-initialised B nothing moved)."""
    base = {"env_id": "search/HopQA-v0", "model": "tiny", "model_size": "1m", "credit": "grpo", "steps": 2,
            "entropy_coef": -0.2,
            "tasks_per_step": 2, "group_size": 2, "minibatch_size": 4, "sft_steps": 2, "sft_episodes": 8,
            "eval_tasks": 2, "max_new_tokens": 16, "max_traj_tokens": 160, "overlong_buffer": 150,
            "torch_threads": 1, "device": "cpu", "cache_dir": str(tmp_path / "models"), "run_dir": str(tmp_path / "run"),
            "checkpoint_every": 0, "save_trajectories": 0, "report": False, "tensorboard": False, "progress": False,
            "generation_backend": "vllm"}
    return TrainConfig(**(base | kw))


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_vllm_backend_without_vllm_fails_before_any_work(tmp_path, algo):
    from turngym.trainers import grpo, ppo

    cfg = tiny_cfg(tmp_path, **({"algo": "ppo", "credit": "gae"} if algo == "ppo" else {}))
    with pytest.raises(MissingExtraError, match=r"pip install 'turngym\[vllm\]'"):
        (ppo if algo == "ppo" else grpo).train(cfg)
    assert not (tmp_path / "models").exists() and not (tmp_path / "run").exists()  # no model, no run directory


@pytest.mark.parametrize("change", [{"rollout_backend": "ray", "rollout_workers": 2}, {"max_staleness": 1},
                                    {"algo": "multi"}, {"vllm_gpu_memory_utilization": 0.0}])
def test_vllm_backend_rejects_unsupported_combinations(tmp_path, change):
    with pytest.raises(ConfigError, match="generation_backend=hf|vllm_gpu_memory_utilization=0.3"):
        tiny_cfg(tmp_path, **change)
    tiny_cfg(tmp_path, generation_backend="hf", **{k: v for k, v in change.items() if k != "vllm_gpu_memory_utilization"})


class FakeVLLM:
    """Stands in for `VLLMPolicy`: an `HFPolicy` over its own copy of the model loaded from the saved directory,
    whose `load_weights` loads strictly (so the pushed names must be the plain HF model's)."""

    instances: ClassVar[list[FakeVLLM]] = []

    def __init__(self, model_path: str, tokenizer, *, seed: int = 0, **engine_kwargs):
        from transformers import AutoModelForCausalLM

        from turngym.agents.policy import HFPolicy

        self.path, self.engine_kwargs, self.loads, self.calls = model_path, engine_kwargs, 0, 0
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, engine_kwargs["dtype"]))
        self.hf = HFPolicy(self.model, tokenizer, seed=seed)
        self.max_positions = self.hf.max_positions
        FakeVLLM.instances.append(self)

    def generate(self, contexts, params, *, envs=None):
        self.calls += 1
        return self.hf.generate(contexts, params)

    def reseed(self, seed: int) -> None:
        self.hf.reseed(seed)

    def load_weights(self, named_tensors) -> None:
        self.model.load_state_dict({k: v.detach().clone() for k, v in named_tensors}, strict=True)
        self.loads += 1


@pytest.mark.slow
@pytest.mark.parametrize("algo,lora", [("grpo", False), ("grpo", True), ("ppo", False)])
def test_vllm_backend_wiring_with_a_stand_in_engine(tmp_path, monkeypatch, algo, lora):
    from turngym.agents import policy
    from turngym.trainers import grpo, ppo
    from turngym.trainers.forward import batch_logprobs

    trainer = ppo if algo == "ppo" else grpo

    if lora:
        pytest.importorskip("peft")
    monkeypatch.setattr(policy, "require_vllm", lambda: None)
    monkeypatch.setattr(policy, "VLLMPolicy", FakeVLLM)
    FakeVLLM.instances = []
    seen: dict = {}
    original = trainer.rollout_batch

    def checked(cfg, s, step, *args, **kwargs):
        trajs, batch, metrics = original(cfg, s, step, *args, **kwargs)
        mask = batch.action_mask.bool()
        seen.setdefault("eval_calls", s.policy.calls)  # the held-out evaluation before step 1 sampled with it
        seen.setdefault("fidelity", []).append(float((batch_logprobs(s.model, batch) - batch.old_logprobs)[mask]
                                                     .abs().max()))
        seen["learner"] = s.model
        if step == 1:  # how far the first update moved the log-probs: a stale engine would be this far off
            seen["moved"] = float((batch_logprobs(seen["step0"], batch) - batch.old_logprobs)[mask].abs().max())
        seen["step0"] = copy.deepcopy(s.model)
        return trajs, batch, metrics

    monkeypatch.setattr(trainer, "rollout_batch", checked)
    cfg = tiny_cfg(tmp_path, lr=3e-3, lora=lora, lora_r=4, lora_alpha=8,
                   **({"algo": "ppo", "credit": "gae"} if algo == "ppo" else {}))
    summary = trainer.train(cfg)

    (engine,) = FakeVLLM.instances
    assert engine.path == str(tmp_path / "run" / "sampler") and (tmp_path / "run" / "sampler" / "config.json").exists()
    assert engine.engine_kwargs == {"dtype": "float32", "enforce_eager": True}  # gpu_memory_utilization: CUDA only
    assert seen["eval_calls"] > 0 and engine.loads == cfg.steps  # one push per update
    # step 0: engine built from the warm-started weights; step 1: from the pushed ones
    assert len(seen["fidelity"]) == 2 and max(seen["fidelity"]) < 1e-4, seen["fidelity"]
    assert summary["steps"] == 2 and seen["moved"] > 1e-3, seen["moved"]
    learner = seen["learner"].merge_and_unload() if lora else seen["learner"]
    for name, p in learner.state_dict().items():  # after the last push the engine holds the final weights
        torch.testing.assert_close(engine.model.state_dict()[name], p, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("change,match", [({"vllm_sleep_level": 3}, "must be 0"),
                                          ({"vllm_sleep_level": 1, "generation_backend": "hf"}, "generation_backend=vllm"),
                                          ({"vllm_sleep_level": 1}, "needs CUDA")])
def test_vllm_sleep_level_rejects_bad_values(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        tiny_cfg(tmp_path, **change)


class RecordingLLM:
    """Records the sleep-mode calls a `VLLMPolicy` makes on its ``vllm.LLM`` (``collective_rpc`` is the push)."""

    def __init__(self, tags: bool = True):
        self.calls: list[tuple] = []
        self.tags = tags

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        if not self.tags and tags is not None:
            raise TypeError("wake_up() got an unexpected keyword argument 'tags'")
        self.calls.append(("wake_up", tuple(tags) if tags else None))

    def collective_rpc(self, method, args=()):
        self.calls.append(("push", method))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


@pytest.mark.parametrize("tags", [True, False])
def test_sleep_mode_sleeps_through_the_update_and_wakes_weights_before_the_push(tmp_path, monkeypatch, tags):
    """The order `update_and_sync` gives a vLLM engine in sleep mode: sleep, update, wake the weights, push, wake
    the KV cache (vLLM without wake-up tags: one full wake-up before the push)."""
    from types import SimpleNamespace

    from turngym.agents.policy import VLLMPolicy
    from turngym.trainers import grpo
    from turngym.trainers.nanguard import NanGuard

    llm = RecordingLLM(tags=tags)
    engine = VLLMPolicy.__new__(VLLMPolicy)  # the engine's own methods over a recording vllm.LLM
    engine.llm, engine.asleep = llm, False
    model = torch.nn.Linear(2, 2)
    s = SimpleNamespace(policy=engine, model=model)
    monkeypatch.setattr(grpo, "update", lambda *a, **k: llm.calls.append(("update",)) or {"train/loss": 0.5})
    cfg = SimpleNamespace(generation_backend="vllm", vllm_sleep_level=2, lora=False)
    out = SimpleNamespace(advantages=torch.zeros(2, 3))
    metrics = grpo.update_and_sync(cfg, s, None, None, out, NanGuard(max_consecutive=3), 0)

    wake = [("wake_up", ("weights",))] if tags else [("wake_up", None)]
    after_push = [("wake_up", ("kv_cache",))] if tags else []
    assert llm.calls == [("sleep", 2), ("update",), *wake, ("push", "turngym_load_weights_file"),
                         ("reset_prefix_cache",), *after_push]
    assert engine.asleep is False and metrics["train/loss"] == 0.5
    llm.calls.clear()
    engine.wake_up()  # awake already: nothing to do
    assert llm.calls == []
