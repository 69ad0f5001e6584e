"""Learned signal components (`turngym.trainers.learned`): declared by a credit method, built by the loop, run
around the credit each step, saved in every checkpoint (``components.pt``) and restored on ``--resume``.

A component registered from this file only (no trainer edit) counts the steps it trained, writes its count into a
turn signal the credit function reads, and must come back from a checkpoint with the count it had.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from turngym.credit import CREDIT, GroupBatch, credit_needs, register_credit
from turngym.credit.base import finish
from turngym.errors import ConfigError
from turngym.trainers import learned
from turngym.trainers.checkpoint import CheckpointError, checkpoint_dirs, load_checkpoint, save_checkpoint
from turngym.trainers.config import TrainConfig, check_signal_options, resolve_train_config


@dataclass(frozen=True)
class CounterOptions:
    start: int = 0
    """Count before the first step."""
    step_size: float = 1.0
    """Added per training step."""


class Counter:
    """Writes ``count`` into every turn's ``test_count`` signal; trains by adding ``step_size``."""

    name = "test_counter"

    def __init__(self, opts: CounterOptions):
        self.opts = opts
        self.count = torch.tensor(float(opts.start))
        self.calls: list[tuple[str, int]] = []

    def before_credit(self, batch: GroupBatch, step: int) -> dict[str, float]:
        self.calls.append(("before", step))
        batch.turn_signals["test_count"] = torch.where(batch.turn_mask, self.count, torch.nan)
        return {"count": float(self.count)}

    def after_credit(self, batch: GroupBatch, out, step: int) -> dict[str, float]:
        self.calls.append(("after", step))
        self.count = self.count + self.opts.step_size
        return {"trained": 1.0}

    def state_dict(self) -> dict:
        return {"count": self.count.clone(), "history": [c[1] for c in self.calls]}

    def load_state_dict(self, state) -> None:
        self.count = state["count"].clone()


@dataclass(frozen=True)
class ReadConfig:
    pass


@pytest.fixture
def counter_method(scratch):
    built: list[Counter] = []
    seen: list[float] = []

    @learned.register_learned("test_counter", CounterOptions)
    def make(ctx: learned.LearnedContext) -> Counter:
        built.append(Counter(ctx.options_for(CounterOptions)))
        return built[-1]

    scratch.append((learned.LEARNED_SIGNALS, "test_counter"))

    @register_credit("test-counted", ReadConfig, learned=("test_counter",))
    def counted(batch: GroupBatch, cfg: ReadConfig):
        v = batch.signal("test_count", needed_by="test-counted")
        seen.append(float(v[batch.turn_mask][0]))
        # outcome-only advantages (so the policy gets a gradient), the count rides along in the turn rewards
        o = batch.outcome.nan_to_num(0.0)
        adv = (o - o.mean())[:, None].expand_as(v)
        return finish(batch, torch.where(batch.turn_mask, adv, torch.zeros_like(adv)), v.nan_to_num(0.0))

    scratch.append((CREDIT, "test-counted"))
    return built, seen


def test_declaration_build_hooks_and_state(counter_method):
    built, _ = counter_method
    assert credit_needs("test-counted").learned == ("test_counter",)
    comps = learned.build_learned("test-counted", learned.LearnedContext(method="test-counted",
                                                                        options={"start": 3, "step_size": 0.5}))
    assert len(comps) == 1 and comps[0] is built[-1] and float(comps[0].count) == 3.0
    assert learned.build_learned("grpo", learned.LearnedContext()) == []

    from turngym.credit import GroupBatch as GB
    from turngym.types import Trajectory, Turn

    trajs = [Trajectory(prompt_ids=[1, 2], turns=[Turn(action_ids=[3, 4], logprobs=[-1.0, -1.0], obs_ids=[5])],
                        outcome=float(i), group_id="g") for i in range(2)]
    batch = GB.from_trajectories(trajs)
    m = learned.before_credit(comps, batch, step=7)
    assert m == {"learned/test_counter/count": 3.0}
    assert torch.equal(batch.turn_signals["test_count"], torch.full((2, 1), 3.0))
    assert learned.after_credit(comps, batch, None, step=7) == {"learned/test_counter/trained": 1.0}
    assert comps[0].calls == [("before", 7), ("after", 7)] and float(comps[0].count) == 3.5

    state = learned.learned_state(comps)
    fresh = learned.build_learned("test-counted", learned.LearnedContext(method="test-counted"))
    learned.load_learned_state(fresh, state)
    assert float(fresh[0].count) == 3.5
    with pytest.raises(CheckpointError, match="test_counter"):
        learned.load_learned_state(fresh, {}, where="ckpt")


def test_unregistered_component_and_signal_options(counter_method, scratch):
    @register_credit("test-missing-comp", ReadConfig, learned=("no_such_component",))
    def missing(batch, cfg):
        raise AssertionError("not called")

    scratch.append((CREDIT, "test-missing-comp"))
    with pytest.raises(ConfigError, match="no_such_component"):
        learned.build_learned("test-missing-comp", learned.LearnedContext())

    assert check_signal_options("test-counted", {"start": "4", "step_size": "0.25"}) == {"start": 4, "step_size": 0.25}
    with pytest.raises(ConfigError, match="step_size"):  # did-you-mean lists the known options
        check_signal_options("test-counted", {"step_sise": 1})
    with pytest.raises(ConfigError, match="no provider or learned component"):
        check_signal_options("grpo", {"lr": 1e-3})
    cfg = resolve_train_config(None, ["credit=test-counted", "signals.start=2"])
    assert cfg.signal_overrides == {"start": 2} and isinstance(cfg.signal_overrides["start"], int)
    with pytest.raises(ConfigError, match="signals"):
        resolve_train_config(None, ["credit=test-counted", "signals.start=two"])


def test_components_travel_in_checkpoints(tmp_path):
    model = torch.nn.Linear(2, 2)
    state = {"test_counter": {"count": torch.tensor(2.5), "history": [0, 1], "note": "x"}}
    path = save_checkpoint(tmp_path, 3, model=model, components=state)
    assert (path / "components.pt").is_file()
    ck = load_checkpoint(path)
    assert torch.equal(ck.components["test_counter"]["count"], torch.tensor(2.5))
    assert ck.components["test_counter"]["history"] == [0, 1]
    assert load_checkpoint(save_checkpoint(tmp_path, 4, model=model)).components is None
    # a changed components.pt is caught by the manifest like any other file
    (path / "components.pt").write_bytes((path / "components.pt").read_bytes() + b"0")
    with pytest.raises(CheckpointError, match="components.pt"):
        load_checkpoint(path)


TINY = [
    "env_id=search/HopQA-v0", "model=tiny", "model_size=1m", "device=cpu", "credit=test-counted",
    "tasks_per_step=2", "group_size=2", "minibatch_size=4", "grad_accum=1", "sft_steps=0", "eval_tasks=1",
    "eval_every=0", "max_turns=2", "max_new_tokens=16", "max_traj_tokens=160", "checkpoint_every=1",
    "keep_checkpoints=5", "save_trajectories=0", "tensorboard=false", "progress=false", "report=false",
    "torch_threads=1", "seed=0", "lr=1e-3", "dynamic_sampling=false", "signals.step_size=2",
]


@pytest.mark.slow
def test_the_loop_runs_saves_and_restores_a_component(tmp_path, counter_method):
    from turngym.trainers.grpo import train
    from turngym.trainers.runlog import read_metrics

    built, seen = counter_method
    run = tmp_path / "run"
    cache = f"cache_dir={tmp_path / 'cache'}"
    train(resolve_train_config(None, [*TINY, "steps=2", cache, f"run_dir={run}"]))
    assert seen == [0.0, 2.0]  # the credit read the component's signal, written before credit each step
    lines = read_metrics(run, kind="train")
    assert [d["learned/test_counter/count"] for d in lines] == [0.0, 2.0]
    counts = {load_checkpoint(d).step: float(load_checkpoint(d).components["test_counter"]["count"])
              for d in checkpoint_dirs(run)}
    assert counts == {0: 0.0, 1: 2.0, 2: 4.0}

    # resume: the component comes back with the count of the latest checkpoint and goes on from there
    seen.clear()
    train(resolve_train_config(None, [*TINY, "steps=3", cache], resume_dir=str(run)))
    assert seen == [4.0] and float(built[-1].count) == 6.0
    assert isinstance(TrainConfig().signal_overrides, dict)
