"""The trainer builds the signal providers and token features a credit method declares, and nothing else.

* `batch_signals.signal_providers` builds, for every registered method, the providers the old if/elif built (same types,
  same order), the probes scoring the answer in the env's format (`batch_signals.answer_template`).
* A credit method and a signal provider registered from this file only (no trainer edit) train one GRPO step with the
  tiny model: the provider runs on the step's trajectories and its signal reaches the credit function.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from turngym.credit import CREDIT, GroupBatch, credit_needs, register_credit
from turngym.credit import signals as sig
from turngym.credit.base import finish
from turngym.trainers import batch_signals, policy_setup
from turngym.trainers.config import VALUE_CREDITS, TrainConfig, resolve_train_config

BEFORE = {  # what the trainer's if/elif built before the declarations (pure's second one was trainers.common.rule_prm)
    "igpo": [sig.GoldProbeProvider],
    "a2tgpo": [sig.GoldProbeProvider],
    "matchtir": [sig.ToolMatchProvider],
    "siop": [sig.OutcomeClusterProvider, sig.SupportProvider],
    "slate": [sig.RuleStepJudgeProvider],
    "pure": [sig.RuleStepJudgeProvider, sig.RulePRMProvider],
}


class _Tokenizer:  # hf_tokenize only wraps it; nothing here tokenizes
    pass


def fake_setup(model=None) -> policy_setup.Setup:
    model = model if model is not None else torch.nn.Linear(2, 2)
    return policy_setup.Setup(model=model, tokenizer=_Tokenizer(), renderer=None, policy=None,
                        device=torch.device("cpu"), pad_id=0)


@pytest.mark.parametrize("method", CREDIT.names())
def test_trainer_builds_the_declared_providers_as_before(method: str):
    cfg = TrainConfig(env_id="search/HopQA-v0", credit=method, algo="ppo" if method in VALUE_CREDITS else "grpo")
    providers = batch_signals.signal_providers(cfg, fake_setup())
    if method in BEFORE or not credit_needs(method).signals:  # the first wave's methods: the same types as before
        assert [type(p) for p in providers] == BEFORE.get(method, [])
    assert [p.name for p in providers] == list(credit_needs(method).signals)
    for p in providers:
        if isinstance(p, (sig.GoldProbeProvider, sig.SupportProvider)):
            assert (p.pseudo.prefix, p.pseudo.suffix) == batch_signals.answer_template(cfg) == ("<answer> ", " </answer>")


def test_token_features_run_only_the_declared_builders(scratch):
    cfg = TrainConfig(env_id="search/HopQA-v0", credit="grpo")
    assert batch_signals.token_features(cfg, fake_setup(), batch=None) == {}  # nothing declared: no forward pass
    seen = []

    @sig.register_token_feature("test_ones")
    def ones(ctx, batch):
        seen.append((ctx.method, ctx.options, ctx.chunk_size))
        return {"ones": torch.ones(2, 3)}

    scratch.append((sig.TOKEN_FEATURES, "test_ones"))

    @register_credit("test-feature", TiedConfig, token_features=("test_ones",))
    def method(batch, cfg):
        raise AssertionError("not called")

    scratch.append((CREDIT, "test-feature"))
    cfg = TrainConfig(env_id="search/HopQA-v0", credit="test-feature", credit_overrides={"value": 2.0})
    feats = batch_signals.token_features(cfg, fake_setup(), batch=None, chunk_size=4)
    assert list(feats) == ["ones"] and seen == [("test-feature", {"value": 2.0}, 4)]


# --------------------------------------------------------------------------------- a method declared from a test


@dataclass(frozen=True)
class TiedConfig:
    value: float = 0.5
    """The constant the test provider writes (read by the provider from the credit options, by the method here)."""


class ConstantProvider:
    """Writes ``value`` into every turn's ``signals["test_const"]`` and counts the trajectories it saw."""

    name = "test_const"

    def __init__(self, value: float):
        self.value, self.seen = value, 0

    def __call__(self, trajs):
        for t in trajs:
            for u in t.turns:
                u.signals["test_const"] = self.value
        self.seen += len(trajs)
        return trajs


@pytest.mark.slow
def test_a_method_and_provider_registered_in_a_test_train_one_grpo_step(tmp_path, scratch):
    built: list[ConstantProvider] = []
    credited: list[torch.Tensor] = []

    @sig.register_signal_provider("test_const")
    def make_constant(ctx: sig.SignalContext) -> ConstantProvider:
        built.append(ConstantProvider(float(ctx.options.get("value", 0.5))))
        return built[-1]

    scratch.append((sig.SIGNAL_PROVIDERS, "test_const"))

    @register_credit("test-const", TiedConfig, signals=("test_const",))
    def const_credit(batch: GroupBatch, cfg: TiedConfig):
        v = batch.signal("test_const", needed_by="test-const")  # [B, K]
        credited.append(v[batch.turn_mask])
        return finish(batch, torch.where(batch.turn_mask, v, torch.zeros_like(v)), batch.turn_rewards)

    scratch.append((CREDIT, "test-const"))

    from turngym.trainers.checkpoint import checkpoint_dirs, load_checkpoint
    from turngym.trainers.grpo import train
    from turngym.trainers.runlog import read_metrics

    run = tmp_path / "run"
    cfg = resolve_train_config(None, [
        "env_id=search/HopQA-v0", "model=tiny", "model_size=1m", "device=cpu", "credit=test-const",
        "credit_overrides.value=0.25", "steps=1", "tasks_per_step=2", "group_size=2", "minibatch_size=4",
        "grad_accum=1", "sft_steps=0", "eval_tasks=1", "eval_every=0", "max_turns=2", "max_new_tokens=16",
        "max_traj_tokens=160", "checkpoint_every=0", "save_trajectories=0", "tensorboard=false", "progress=false",
        "report=false", "torch_threads=1", "seed=0", "lr=1e-3", "dynamic_sampling=false",
        f"cache_dir={tmp_path / 'cache'}", f"run_dir={run}",
    ])
    summary = train(cfg)

    assert summary["steps"] == 1 and summary["credit"] == "test-const"
    assert len(built) == 1 and built[0].seen == 4  # built once from the declaration, ran on the 4 trajectories
    assert len(credited) == 1 and credited[0].numel() > 0
    assert torch.all(credited[0] == 0.25)  # the provider's signal reached the credit function
    (line,) = read_metrics(run, kind="train")
    assert line["credit/adv_absmax"] == pytest.approx(0.25)
    dirs = checkpoint_dirs(run)
    first, last = load_checkpoint(dirs[0]), load_checkpoint(dirs[-1])
    assert any(not torch.equal(first.model_state[k], last.model_state[k]) for k in first.model_state)
