"""The multi-agent learner keeps its sampler's log-probs as the old policy at any temperature (they are already
``log softmax(logits / temperature)``), and rescores only turns whose sampler gave none."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_multi_train_separate import _cfg, _learners

from turngym.credit import GroupBatch
from turngym.trainers import forward
from turngym.trainers.multi import learner_step, rollout, seat_actors


@pytest.mark.parametrize("strip", [False, True], ids=["sampler-logprobs", "none-from-sampler"])
def test_learner_step_rescores_only_when_the_sampler_gave_none(team_tiny, monkeypatch, strip):
    tok, m1, m2 = team_tiny
    cfg = _cfg(temperature=0.7)
    learners, r = _learners(cfg, tok, (m1, m2))
    actors, _ = seat_actors(cfg, learners, r, ["speaker_0", "listener_0"], [], 0, np.random.default_rng(0))
    trajs, _ = rollout(cfg, actors, [3, 4], cfg.group_size, sample_seed=1)
    ln = learners[1]
    mine = [t for t in trajs if t.agent_id in ln.roles and t.turns]
    if strip:
        for t in mine:
            for turn in t.turns:
                turn.logprobs = []
    batch = GroupBatch.from_trajectories(mine, pad_id=ln.setup.pad_id)
    want = forward.batch_logprobs(ln.model, batch, temperature=0.7)  # [B, L] before the update
    if not strip:  # the sampler recorded exactly these
        m = batch.action_mask
        assert torch.allclose(batch.old_logprobs[m], want[m], atol=1e-4)
    calls: list[float] = []
    real = forward.batch_logprobs

    def counting(model, b, *a, temperature=1.0, **kw):
        calls.append(temperature)
        return real(model, b, *a, temperature=temperature, **kw)

    monkeypatch.setattr(forward, "batch_logprobs", counting)
    assert np.isfinite(learner_step(cfg, ln, mine)["train/loss"])
    assert calls == ([0.7] if strip else [])
