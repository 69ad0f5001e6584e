"""SIOP on a batch where no rollout answered: zero advantages (no potential), not an error."""

from __future__ import annotations

import pytest
import torch

from turngym.credit import GroupBatch, assign_credit
from turngym.errors import CreditError
from turngym.types import Trajectory, Turn


def _batch(final_answer):
    trajs = [
        Trajectory(group_id="g", prompt_ids=[1, 2], final_answer=final_answer,
                   turns=[Turn(action_ids=[3, 4], logprobs=[-1.0, -1.0], obs_ids=[5])])
        for _ in range(2)
    ]
    return GroupBatch.from_trajectories(trajs)


def test_siop_without_any_answer_gives_zero_advantages():
    out = assign_credit("siop", _batch(None))
    assert torch.equal(out.advantages, torch.zeros_like(out.advantages))
    assert out.diagnostics["support_missing"] == 2.0


def test_siop_with_answers_but_no_support_still_names_the_provider():
    with pytest.raises(CreditError, match="siop_support"):
        assign_credit("siop", _batch("x"))
