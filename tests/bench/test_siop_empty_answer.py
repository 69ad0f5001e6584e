"""SIOP's answer clusters ignore empty answers (`turngym.credit.signals.OutcomeClusterProvider`).

Regression found by `turngym bench provider-quality`: a policy that collapsed into answering ``<answer></answer>``
(the study's A²TGPO run at step 50 does so in most episodes) formed an "empty" majority cluster. That cluster got the
consensus target ``q`` (the terminal reward ``(1 − λ)·q``) while its support could never be scored (an empty
reference has no tokens), so SIOP paid the degenerate answer a reward with no potential behind it."""

from __future__ import annotations

import pytest

from turngym.credit.base import PROMPT_SIGNALS_KEY
from turngym.credit.signals import OutcomeClusterProvider
from turngym.types import Trajectory, Turn


def _traj(answer):
    return Trajectory(group_id="g", prompt_ids=[1], turns=[Turn(action_ids=[5])], final_answer=answer,
                      meta={"question": "Where?"})


def test_empty_answers_are_no_answer():
    trajs = [_traj(""), _traj("  "), _traj("."), _traj("Paris"), _traj(None), _traj("the Paris")]
    OutcomeClusterProvider()(trajs)
    q = [t.meta[PROMPT_SIGNALS_KEY]["siop_q"] for t in trajs]
    assert q == pytest.approx([0.0, 0.0, 0.0, 1.0, 0.0, 1.0])  # one cluster: "Paris" = "the Paris"
    assert [t.meta["siop_cluster"] for t in trajs] == [-1, -1, -1, 0, -1, 0]
    assert [t.meta["siop_refs"] for t in trajs[:3]] == [[], [], []]
    assert trajs[3].meta["siop_refs"] == ["Paris", "the Paris"]


def test_all_empty_answers_give_no_clusters():
    trajs = [_traj(""), _traj("")]
    OutcomeClusterProvider()(trajs)
    assert [t.meta[PROMPT_SIGNALS_KEY]["siop_q"] for t in trajs] == [0.0, 0.0]
