"""Bounded-staleness async rollouts: the scheduling contract and the trainers' ``max_staleness`` switch.

Whether async training learns as well as sync is a study, not a unit test: benchmarks/README.md ("Async rollouts vs
sync") compares held-out success from one warm start over 20 steps, with its command."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import torch

from turngym.trainers.async_rollout import AsyncRollout, GroupBuffer
from turngym.trainers.checkpoint import checkpoint_dirs, load_checkpoint
from turngym.trainers.config import TrainConfig, resolve_train_config
from turngym.trainers.runlog import read_metrics
from turngym.types import Trajectory, Turn


def _trajs(step: int, groups: int = 2, size: int = 2) -> list[Trajectory]:
    return [Trajectory(group_id=f"s{step}g{g}", agent_id="agent", prompt_ids=[1], turns=[Turn([2], [-0.5])],
                       outcome=float(i % 2), seed=g) for g in range(groups) for i in range(size)]


class _Recorder:
    """produce/load callbacks that record which behaviour version sampled each step."""

    def __init__(self, delay_s: float = 0.0):
        self.loaded: list[int] = []
        self.sampled_with: dict[int, int] = {}
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def produce(self, step):
        time.sleep(self.delay_s)
        with self.lock:
            self.sampled_with[step] = self.loaded[-1] if self.loaded else 0
        return _trajs(step)

    def load(self, sd):
        with self.lock:
            self.loaded.append(sd["v"].item())


@pytest.mark.parametrize("k", [0, 1, 2])
def test_staleness_is_bounded_and_recorded(k):
    import torch

    rec = _Recorder()
    steps = 6
    prod = AsyncRollout(rec.produce, rec.load, groups_per_step=2, max_staleness=k, stop_step=steps)
    seen = []
    for step in range(steps):
        trajs, m = prod.get(step, timeout_s=30)
        assert {t.group_id for t in trajs} == {f"s{step}g0", f"s{step}g1"}  # FIFO: this step's groups
        st = [t.meta["staleness"] for t in trajs]
        assert all(0 <= s <= k for s in st), (k, step, st)
        assert all(t.meta["policy_version"] == step - t.meta["staleness"] for t in trajs)
        assert m["async/staleness_max"] == max(st)
        seen.append(st[0])
        time.sleep(0.05)  # "training": lets the producer run ahead as far as the bound allows
        prod.push({"v": torch.tensor(step + 1)})
    prod.close()
    if k == 0:
        assert seen == [0] * steps  # synchronous: every batch sampled by the current weights
    else:  # the producer ran ahead: after warm-up every batch is exactly k versions old
        assert seen[k:] == [k] * (steps - k) and max(seen) == k
    for step, v in rec.sampled_with.items():
        assert step - k <= v <= step


def test_oldest_groups_first_and_none_dropped():
    buf = GroupBuffer()
    buf.put(_trajs(5, groups=1), version=5)  # a fresh, short group finished first
    buf.put(_trajs(3, groups=2), version=3)  # long episodes sampled at version 3 finish later
    first = buf.take(2, learner_version=6)
    assert [t.group_id for t in first] == ["s3g0", "s3g0", "s3g1", "s3g1"]
    assert {t.meta["staleness"] for t in first} == {3}
    rest = buf.take(5, learner_version=7)
    assert [t.group_id for t in rest] == ["s5g0", "s5g0"] and rest[0].meta["staleness"] == 2
    assert len(buf) == 0


def test_producer_errors_reach_the_learner():
    def boom(step):
        raise ValueError("env exploded")

    prod = AsyncRollout(boom, lambda sd: None, groups_per_step=1, max_staleness=1, stop_step=3)
    with pytest.raises(RuntimeError, match="env exploded"):
        prod.get(0, timeout_s=30)
    prod.close()


class _FakePool:
    """The `RayRolloutPool` surface `AsyncRollout.ray` uses, without Ray."""

    def __init__(self):
        self.params, self.synced, self.closed = [], [], False

    def collect(self, seeds, group_size, params):
        self.params.append(params)
        return [Trajectory(group_id=f"s{s}", prompt_ids=[1], turns=[Turn([2], [-0.5])], seed=s)
                for s in seeds for _ in range(group_size)]

    def sync_weights(self, sd):
        self.synced.append(sorted(sd))

    def close(self):
        self.closed = True


def test_ray_producer_seeds_each_step_and_owns_its_pool():
    from turngym.trainers.grpo import step_seed

    cfg = TrainConfig(tasks_per_step=2, group_size=2, minibatch_size=4, steps=3, temperature=0.7, max_new_tokens=9)
    pool, model = _FakePool(), torch.nn.Linear(2, 2)
    model.config = None  # what `policy_weights` ships alongside the state dict
    prod = AsyncRollout.ray(cfg, pool, max_staleness=1, close_pool=True)
    for step in range(cfg.steps):
        trajs, m = prod.get(step, timeout_s=30)
        assert len(trajs) == 4 and m["async/staleness_max"] <= 1 and m["perf/rollout_s"] >= 0
        prod.push(model)
    prod.close()
    assert [p.seed for p in pool.params] == [step_seed(cfg, step, 0) for step in range(cfg.steps)]
    assert {(p.temperature, p.max_new_tokens) for p in pool.params} == {(0.7, 9)}
    assert pool.synced and pool.synced[0] == ["bias", "weight"] and pool.closed


def test_from_config_picks_the_backend_and_staleness(monkeypatch):
    from turngym.agents import ray_rollout

    pool = _FakePool()
    monkeypatch.setattr(ray_rollout.RayRolloutPool, "from_config", classmethod(lambda cls, cfg, setup: pool))
    cfg = TrainConfig(tasks_per_step=2, group_size=2, minibatch_size=4, steps=2, max_staleness=2,
                      rollout_backend="ray", rollout_workers=2)
    prod = AsyncRollout.from_config(cfg, setup=None, start_step=1)
    assert prod.max_staleness == 2 and prod.learner_version == 1
    trajs, _ = prod.get(1, timeout_s=30)  # a resumed run starts at its checkpoint's step
    assert len(trajs) == 4
    prod.close()
    assert pool.closed  # the producer started this pool, so it stops it


# --------------------------------------------------------------------------- the trainers' switch

TINY = [
    "env_id=search/HopQA-v0", "model=tiny", "model_size=1m", "device=cpu", "tasks_per_step=2", "group_size=2",
    "minibatch_size=4", "ppo_epochs=1", "sft_steps=0", "eval_tasks=2", "max_turns=2", "max_new_tokens=16",
    "max_traj_tokens=256", "save_trajectories=0", "tensorboard=false", "progress=false", "report=false",
    "torch_threads=1", "seed=0", "lr=1e-3",
    # a random-init policy gets all-equal outcomes (zero advantages): the entropy bonus moves the weights anyway
    "entropy_coef=0.05",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tiny-cache"))


def _train(algo: str, run_dir: Path, cache_dir: str, *extra: str) -> dict:
    credit = "gae" if algo == "ppo" else "grpo"
    cfg = resolve_train_config(None, [*TINY, f"algo={algo}", f"credit={credit}", f"cache_dir={cache_dir}",
                                      f"run_dir={run_dir}", *extra])
    if algo == "ppo":
        from turngym.trainers.ppo import train
    else:
        from turngym.trainers.grpo import train
    return train(cfg)


def _policy(state: dict) -> dict:
    return {k.removeprefix("policy."): v for k, v in state.items() if not k.startswith("critic.")}


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_trainer_takes_batches_from_the_async_producer(algo, tmp_path, cache_dir):
    """3 steps with max_staleness=1: staleness logged and bounded, behaviour log-probs kept, weights moved."""
    run = tmp_path / "run"
    summary = _train(algo, run, cache_dir, "steps=3", "max_staleness=1", "checkpoint_every=0")
    assert summary["steps"] == 3
    lines = read_metrics(run, kind="train")
    assert [d["step"] for d in lines] == [1, 2, 3]
    for d in lines:
        assert 0 <= d["async/staleness_mean"] <= d["async/staleness_max"] <= 1
        assert d["async/wait_s"] >= 0 and d["perf/sync_s"] > 0 and d["perf/rollout_s"] > 0
        assert math.isfinite(d["train/loss"]) and d["train/optimizer_steps"] >= 1
        # the ratio's denominator is the behaviour policy: a stale batch shows the weights' drift since sampling;
        # recomputing old_logprobs with the current weights would make approx_kl ~0 here too
        if d["async/staleness_max"] == 0:
            assert d["train/approx_kl"] < 1e-6, d
        else:
            assert d["train/approx_kl"] > 1e-6, d
    assert lines[0]["async/staleness_max"] == 0  # the first batch is sampled with the starting weights
    assert any(d["async/staleness_max"] == 1 for d in lines[1:])  # the producer ran one step ahead
    first, last = (load_checkpoint(d) for d in checkpoint_dirs(run))
    assert (first.step, last.step) == (0, 3)
    before, after = _policy(first.model_state), _policy(last.model_state)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resumed_async_run_restarts_the_producer_at_the_checkpoint(tmp_path, cache_dir):
    run = tmp_path / "run"
    _train("grpo", run, cache_dir, "steps=1", "max_staleness=1", "checkpoint_every=1")
    from turngym.trainers.grpo import train

    train(resolve_train_config(None, ["steps=2"], resume_dir=str(run)))
    lines = read_metrics(run, kind="train")
    assert [d["step"] for d in lines] == [1, 2]
    assert lines[1]["async/staleness_max"] == 0  # a fresh producer samples with the restored weights


def test_sync_run_logs_no_async_metrics(tmp_path, cache_dir):
    _train("grpo", tmp_path / "run", cache_dir, "steps=1")
    (d,) = read_metrics(tmp_path / "run", kind="train")
    assert not any(k.startswith("async/") for k in d) and d["perf/sync_s"] < 0.01
    assert d["train/approx_kl"] < 1e-6  # on-policy: behaviour = current weights
