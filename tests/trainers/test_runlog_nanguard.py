"""NanGuard: non-finite steps are skipped and counted; three in a row stop the run with a message."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from turngym.trainers.nanguard import NanGuard, NonFiniteError, nonfinite_names


def test_detects_nan_and_inf_in_tensors_numbers_and_containers():
    assert nonfinite_names(a=torch.ones(3), b=1.0, c={"x": [1.0, 2.0]}, d=np.zeros(2), e=torch.arange(3)) == []
    got = nonfinite_names(a=torch.tensor([1.0, float("nan")]), b=math.inf, c={"x": [1.0, -math.inf]},
                          d=np.array([np.nan]), ok=torch.zeros(0))
    assert got == ["a", "b", "c", "d"]


def test_skips_counts_and_resets_the_streak():
    g = NanGuard(max_consecutive=3)
    assert g.check(1, loss=torch.tensor(0.5))
    assert not g.check(2, loss=torch.tensor(float("nan")))
    assert not g.check(3, advantages=torch.tensor([1.0, float("inf")]))
    assert g.metrics(3) == {"nonfinite/skipped": 1.0, "nonfinite/total": 2.0, "nonfinite/consecutive": 2.0}
    assert g.check(4, loss=torch.tensor(1.0))  # a good step ends the streak
    assert g.metrics(4) == {"nonfinite/skipped": 0.0, "nonfinite/total": 2.0, "nonfinite/consecutive": 0.0}
    assert not g.check(5, loss=float("nan"))
    assert not g.check(6, loss=float("nan"))
    assert g.consecutive == 2 and g.total == 4


def test_third_consecutive_bad_step_stops_with_a_message():
    g = NanGuard(max_consecutive=3)
    g.check(10, loss=float("nan"))
    g.check(11, advantages=torch.tensor([float("nan")]))
    with pytest.raises(NonFiniteError) as ei:
        g.check(12, loss=float("inf"), advantages=torch.zeros(2))
    msg = str(ei.value)
    assert "3 consecutive" in msg and "step 10: loss" in msg and "step 11: advantages" in msg
    assert "lower lr" in msg and "--resume" in msg


def test_same_step_checked_twice_counts_once():
    g = NanGuard(max_consecutive=2)
    assert not g.check(1, advantages=float("nan"))
    assert not g.check(1, loss=float("nan"))  # the loss of the same step: not a second bad step
    assert g.check(1, grad_norm=1.0) is True and g.consecutive == 1  # nor does a later finite value reset it
    assert g.total == 1 and g.history[-1] == (1, ["advantages", "loss"])
    with pytest.raises(NonFiniteError):
        g.check(2, loss=float("nan"))


def test_state_round_trip():
    g = NanGuard()
    g.check(1, loss=float("nan"))
    g2 = NanGuard()
    g2.load_state_dict(g.state_dict())
    assert (g2.total, g2.consecutive, g2.history) == (1, 1, [(1, ["loss"])])
    with pytest.raises(ValueError):
        NanGuard(max_consecutive=0)


def test_guarded_update_leaves_parameters_untouched_on_a_bad_step():
    """The pattern a trainer uses: a NaN loss skips backward/step, so parameters stay finite and unchanged."""
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = NanGuard()
    before = [p.clone() for p in model.parameters()]
    x = torch.tensor([[1.0, float("nan"), 0.0]])
    loss = model(x).sum()
    if g.check(1, loss=loss):
        loss.backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    loss = model(torch.ones(1, 3)).sum()
    if g.check(2, loss=loss):
        loss.backward()
        opt.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
