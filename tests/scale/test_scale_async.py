"""Bounded-staleness async rollouts: the scheduling contract (fast) and a short tiny-model training run (slow)."""

from __future__ import annotations

import math
import threading
import time

import pytest

from turngym.trainers.async_rollout import AsyncRollout, GroupBuffer
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


@pytest.mark.slow
def test_async_training_matches_sync_within_noise(tmp_path):
    """Same SFT start, 6 GRPO steps sync (max_staleness=0) vs one-step-off-policy (1); held-out success."""
    import copy

    import torch

    from turngym.credit import GroupBatch, assign_credit
    from turngym.trainers import common
    from turngym.trainers.config import TrainConfig
    from turngym.trainers.update import update

    cfg = TrainConfig(env_id="search/HopQA-v0", model="tiny", model_size="1m", credit="grpo", tasks_per_step=4,
                      group_size=4, minibatch_size=16, steps=6, lr=5e-4, sft_steps=120, sft_episodes=96,
                      sft_batch_size=16, eval_tasks=48, max_new_tokens=40, max_traj_tokens=200, torch_threads=1,
                      cache_dir=str(tmp_path / "models"), device="cpu", report=False, tensorboard=False,
                      progress=False)
    s = common.setup(cfg)
    common.warm_start(cfg, s, lambda step, loss: None)
    start = copy.deepcopy(s.model.state_dict())
    before = common.evaluate(cfg, s)[0]["eval/success"]
    results = {}
    for k in (0, 1):
        s.model.load_state_dict(start)
        opt = torch.optim.AdamW(s.model.parameters(), lr=cfg.lr)
        prod = AsyncRollout.local(cfg, s, max_staleness=k)
        stale = []
        try:
            for step in range(cfg.steps):
                trajs, _ = prod.get(step, timeout_s=600)
                stale += [t.meta["staleness"] for t in trajs]
                batch = GroupBatch.from_trajectories(trajs, pad_id=s.pad_id)
                assert batch.old_logprobs is not None  # behaviour log-probs: the importance-ratio denominator
                out = assign_credit(cfg.credit, batch)
                tm = update(cfg, s.model, opt, batch, out)
                assert math.isfinite(tm["train/loss"])
                prod.push(s.model)
        finally:
            prod.close()
        moved = max(float((v - start[n]).abs().max()) for n, v in s.model.state_dict().items())
        results[k] = (common.evaluate(cfg, s)[0]["eval/success"], stale, moved)
    (sync_s, sync_st, sync_moved), (async_s, async_st, async_moved) = results[0], results[1]
    assert set(sync_st) == {0}
    assert set(async_st) <= {0, 1} and 1 in async_st
    assert sync_moved > 1e-4 and async_moved > 1e-4
    n = cfg.eval_tasks
    p = max(min((sync_s + async_s) / 2, 0.9), 0.1)
    noise = 3 * math.sqrt(2 * p * (1 - p) / n)  # 3 sigma of a difference of two binomial rates
    print(f"held-out success: before {before:.3f}, sync {sync_s:.3f}, async {async_s:.3f} (3 sigma {noise:.3f})")
    assert abs(sync_s - async_s) <= noise, (before, sync_s, async_s, noise)
