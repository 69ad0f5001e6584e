"""GroupBatch construction, the CREDIT registry and assign_credit's config and output checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from credit_helpers import make_traj

from turngym.credit import CREDIT, CreditOutput, GroupBatch, assign_credit, make_config, register_credit
from turngym.credit.base import check_output
from turngym.errors import ConfigError, CreditError, RegistryError
from turngym.types import Trajectory, Turn


def _two():
    t1 = Trajectory(group_id="q1", prompt_ids=[1, 2, 3], outcome=1.0, final_answer="a", meta={
        "prompt_signals": {"probe_score": -1.5, "text": "ignored"}}, turns=[
        Turn(action_ids=[10, 11], logprobs=[-0.1, -0.2], obs_ids=[50, 51, 52], reward=0.5,
             signals={"probe_score": -1.0, "note": "x"}),
        Turn(action_ids=[12], logprobs=[-0.3], reward=1.0),
    ])
    t2 = Trajectory(group_id="q2", prompt_ids=[4], outcome=None, turns=[
        Turn(action_ids=[20], logprobs=[-0.4], obs_ids=[60]),
    ])
    return [t1, t2]


def test_from_trajectories_layout():
    b = GroupBatch.from_trajectories(_two(), pad_id=0)
    b.validate()
    assert b.response_ids.tolist() == [[10, 11, 50, 51, 52, 12], [20, 60, 0, 0, 0, 0]]
    assert b.action_mask.tolist() == [[1, 1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]
    assert b.turn_id.tolist() == [[0, 0, -1, -1, -1, 1], [0, -1, -1, -1, -1, -1]]
    assert b.turn_mask.tolist() == [[True, True], [True, False]]
    assert b.turn_last.tolist() == [[1, 5], [0, -1]]
    assert b.group_index.tolist() == [0, 1]
    assert b.prompt_ids.tolist() == [[1, 2, 3], [0, 0, 4]]  # left-padded
    assert b.prompt_mask.tolist() == [[True] * 3, [False, False, True]]
    assert b.old_logprobs[0].tolist() == pytest.approx([-0.1, -0.2, 0, 0, 0, -0.3])
    assert b.outcome[0] == 1.0 and math.isnan(float(b.outcome[1]))
    assert b.has_answer.tolist() == [True, False]
    assert b.turn_rewards.tolist() == [[0.5, 1.0], [0.0, 0.0]]
    assert set(b.turn_signals) == {"probe_score"}  # non-numeric signals stay on the trajectory
    assert b.turn_signals["probe_score"][0, 0] == -1.0 and math.isnan(float(b.turn_signals["probe_score"][0, 1]))
    assert b.prompt_signals["probe_score"].tolist()[0] == -1.5 and math.isnan(b.prompt_signals["probe_score"][1])
    # packed view = the trajectory's own token_ids() after removing left padding
    packed = b.input_ids()[0][b.full_attention_mask()[0]].tolist()
    assert packed == _two()[0].token_ids()
    assert b.to("cpu").response_ids.equal(b.response_ids)


def test_missing_logprobs_gives_none_and_validate_catches_corruption():
    t = make_traj("g", 2)
    t.turns[0].logprobs = []
    b = GroupBatch.from_trajectories([t])
    assert b.old_logprobs is None
    bad = GroupBatch.from_trajectories([make_traj("g", 2)])
    bad.turn_id[0, 0] = -1
    with pytest.raises(CreditError, match="exactly one turn"):
        bad.validate()
    with pytest.raises(CreditError, match="empty"):
        GroupBatch.from_trajectories([])


def test_assign_credit_config_errors_and_registry():
    b = GroupBatch.from_trajectories(_two())
    with pytest.raises(ConfigError, match=r"unknown option 'alpah'.*alpha"):
        assign_credit("a2tgpo", b, alpah=0.3)
    with pytest.raises(RegistryError, match="Did you mean 'a2tgpo'"):
        assign_credit("a2tgpo2", b)
    cfg = make_config("a2tgpo", alpha=0.5)
    assert cfg.alpha == 0.5 and cfg.beta == 0.3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha = 1.0  # type: ignore[misc]
    with pytest.raises(CreditError, match="match_r"):
        assign_credit("matchtir", b)


def test_spec_defaults():
    assert make_config("igpo").ig_type == "prob_diff" and make_config("igpo").norm_mode == "joint"
    a = make_config("a2tgpo")
    assert (a.alpha, a.beta, a.gamma, a.ig_type) == (0.3, 0.3, 1.0, "log_prob_diff")
    m = make_config("matchtir")
    assert (m.lam, m.traj_weight, m.turn_weight) == (0.9, 0.5, 0.5)
    s = make_config("siop")
    assert (s.lam, s.eps, s.gamma) == (0.5, 1e-8, 1.0)
    sl = make_config("slate")
    assert (sl.budget, sl.lam_b, sl.eta) == (4, 0.1, 0.7)
    g = make_config("gigpo")
    assert (g.gamma, g.omega, g.mode) == (0.95, 1.0, "mean_std_norm")


def test_register_and_output_check():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        leak: bool = False

    @register_credit("_test_leaky", Cfg)
    def leaky(batch, cfg):
        adv = torch.ones(batch.response_ids.shape) if cfg.leak else torch.zeros(batch.response_ids.shape)
        return CreditOutput(adv, batch.turn_rewards, batch.turn_rewards)

    try:
        b = GroupBatch.from_trajectories(_two())
        assign_credit("_test_leaky", b)
        with pytest.raises(CreditError, match="non-policy"):
            assign_credit("_test_leaky", b, leak=True)
        bad = CreditOutput(torch.full(b.response_ids.shape, float("nan")), b.turn_rewards, b.turn_rewards)
        with pytest.raises(CreditError, match="non-finite"):
            check_output(b, bad)
    finally:
        CREDIT.remove("_test_leaky")
