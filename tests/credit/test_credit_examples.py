"""The worked examples of spec/credit.md for the outcome and turn-level methods (atol 1e-4; GRPO 1e-5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from credit_helpers import batch_of, make_traj

from turngym.credit import assign_credit
from turngym.credit.matchtir import hard_assignment, similarity_matrix, sinkhorn_plan, soft_assignment
from turngym.credit.siop import reliability_target
from turngym.credit.slate import slate_selection_probs

L = math.log


def _valid(t: torch.Tensor) -> list[list[float]]:
    return [[v for v in row if not math.isnan(v)] for row in t.tolist()]


def _close(got, want, atol=1e-4):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=atol)


# ---------------------------------------------------------------- §3.1 GRPO
def test_grpo_example():
    b = batch_of([make_traj("g", 1, outcome=r) for r in (1, 0, 0, 1)])
    out = assign_credit("grpo", b)
    np.testing.assert_allclose(out.turn_advantages[:, 0], [0.866025, -0.866025, -0.866025, 0.866025], atol=1e-5)
    # broadcast to every policy token, 0 elsewhere
    assert torch.equal(out.advantages[~b.action_mask], torch.zeros(int((~b.action_mask).sum())))
    dr = assign_credit("dr_grpo", b)
    np.testing.assert_allclose(dr.turn_advantages[:, 0], [0.5, -0.5, -0.5, 0.5], atol=1e-5)
    same = assign_credit("grpo", batch_of([make_traj("g", 2, outcome=1.0) for _ in range(4)]))
    assert torch.equal(same.advantages, torch.zeros_like(same.advantages))


def test_rloo_and_reinforce_pp_hand_values():
    b = batch_of([make_traj("g", 1, outcome=r) for r in (1, 0, 0, 1)])
    # RLOO: 1 − mean(0, 0, 1) = 2/3
    np.testing.assert_allclose(assign_credit("rloo", b).turn_advantages[:, 0], [2 / 3, -2 / 3, -2 / 3, 2 / 3], atol=1e-6)
    # REINFORCE++: whiten over the batch (one group here): same as GRPO up to eps
    np.testing.assert_allclose(assign_credit("reinforce_pp", b).turn_advantages[:, 0],
                               [0.866025, -0.866025, -0.866025, 0.866025], atol=1e-4)


# ---------------------------------------------------------------- §4.1 IGPO
def _igpo_batch():
    t1 = make_traj("g", 3, outcome=1.0, signals={"probe_score": [L(0.3), L(0.6)]}, prompt_signals={"probe_score": L(0.1)})
    t2 = make_traj("g", 2, outcome=0.0, signals={"probe_score": [L(0.05)]}, prompt_signals={"probe_score": L(0.1)})
    return batch_of([t1, t2])


def test_igpo_rewards_and_log_prob_ig():
    b = _igpo_batch()
    out = assign_credit("igpo", b)
    _close(_valid(out.turn_rewards), [[0.20, 0.30, 1.0], [-0.05, 0.0]])
    lp = assign_credit("igpo", b, ig_type="log_prob_diff")
    _close([r[:-1] for r in _valid(lp.turn_rewards)], [[1.098612, 0.693147], [-0.693147]])


def test_igpo_joint():
    out = assign_credit("igpo", _igpo_batch(), norm_mode="joint")
    _close(_valid(out.turn_advantages), [[1.669492, 1.907991, 1.881491], [-1.669492, -0.768496]])


def test_igpo_separate():
    out = assign_credit("igpo", _igpo_batch(), norm_mode="separate")
    _close(_valid(out.turn_advantages), [[2.358721, 2.019040, 1.0], [-2.358721, -1.0]])


# ---------------------------------------------------------------- §4.2 A²TGPO
def _a2_batch():
    # log_prob_diff with prompt probe 0: probe_k = cumulative sum of IG
    a = make_traj("g", 3, outcome=1.0, signals={"probe_score": [0.4, 0.5]}, prompt_signals={"probe_score": 0.0})
    b = make_traj("g", 2, outcome=0.0, signals={"probe_score": [-0.2]}, prompt_signals={"probe_score": 0.0})
    c = make_traj("g", 3, outcome=1.0, signals={"probe_score": [0.1, 0.4]}, prompt_signals={"probe_score": 0.0})
    return batch_of([a, b, c])


def test_a2tgpo_example():
    b = _a2_batch()
    out = assign_credit("a2tgpo", b)
    assert out.ratio_level == "turn"
    _close(_valid(out.turn_advantages),
           [[0.754783, 0.407107, 0.707107], [-1.781637, -1.414214], [0.919239, 1.007107, 0.707107]])
    clip = [[float(out.clip_scale[i, int(b.turn_last[i, k])]) for k in range(int(b.turn_mask[i].sum()))]
            for i in range(3)]
    _close(clip, [[1.163739, 0.861365, 1.0], [0.836261, 1.0], [1.0, 1.138635, 1.0]])


def test_a2tgpo_loss_check_numbers():
    # ρ of a turn with log-ratios [0.01, -0.002, 0.004] and the clip ranges of the spec's loss check
    rho = math.exp(np.mean([0.01, -0.002, 0.004]))
    assert rho == pytest.approx(1.004008, abs=1e-6)
    lo, hi = 1 - 3e-3 * 1.163739, 1 + 4e-3 * 1.163739
    assert (lo, hi) == pytest.approx((0.996509, 1.004655), abs=1e-6)
    assert 1 + 4e-3 * 0.861365 == pytest.approx(1.003445, abs=1e-6)


def test_a2tgpo_parity_baseline_first_turn_inherits():
    b = _a2_batch()
    out = assign_credit("a2tgpo", b, ig_baseline="after_first_turn")
    ta = _valid(out.turn_advantages)
    for row in ta:
        if len(row) == 3:
            assert row[0] == pytest.approx(row[1])  # turn 0 has no IG: covered by turn 1's segment


# ---------------------------------------------------------------- §5 MatchTIR
GOLD = [{"name": "search", "parameters": {"query": "paris", "k": 3}}, {"name": "weather", "parameters": {"city": "paris"}}]
PRED = [{"name": "search", "arguments": {"query": "paris", "k": 5}}, {"name": "weather", "arguments": {"city": "paris"}},
        {"name": "weather", "arguments": {"city": "london"}}]


def test_matchtir_similarity_hard_soft():
    s = similarity_matrix(PRED, GOLD)
    np.testing.assert_allclose(s, [[0.75, 0], [0, 1.0], [0, 0.666667]], atol=1e-5)
    hard = hard_assignment(s)
    np.testing.assert_allclose(hard, [0.75, 1.0, 0.0])
    turn_hard = [hard[0], (hard[1] + hard[2]) / 2, 1.0]
    np.testing.assert_allclose(turn_hard, [0.75, 0.5, 1.0])
    t = sinkhorn_plan(s, 0.1)
    np.testing.assert_allclose(t, [[0.333333, 0.0], [0.010198, 0.323135], [0.156469, 0.176865]], atol=1e-5)
    soft = soft_assignment(s, 0.1)
    np.testing.assert_allclose(soft, [0.25, 0.323135, 0.117910], atol=1e-5)
    np.testing.assert_allclose([soft[0], (soft[1] + soft[2]) / 2], [0.25, 0.220522], atol=1e-5)


def test_matchtir_greedy_vs_hungarian():
    s = np.array([[0.9, 0.8], [0.85, 0.0]])
    np.testing.assert_allclose(hard_assignment(s, "greedy"), [0.9, 0.0])
    np.testing.assert_allclose(hard_assignment(s, "hungarian"), [0.8, 0.85])
    np.testing.assert_allclose(soft_assignment(s, 0.1), [0.401149, 0.415235], atol=1e-5)


def test_matchtir_dual_level():
    b = batch_of([make_traj("g", 3, signals={"match_r": [0.75, 0.5, 1.0]}),
                  make_traj("g", 2, signals={"match_r": [0.5, 0.0]}),
                  make_traj("g", 3, signals={"match_r": [0.25, 0.0, 0.0]})])
    out = assign_credit("matchtir", b)
    _close(_valid(out.turn_advantages),
           [[1.145892, 1.150889, 0.927092], [-0.449955, -0.518090], [-0.695937, -0.632798, -0.697676]])
    # components
    traj_only = assign_credit("matchtir", b, traj_weight=1.0, turn_weight=0.0)
    np.testing.assert_allclose(traj_only.turn_advantages[:, 0], [1.147078, -0.458831, -0.688247], atol=1e-4)
    turn_only = assign_credit("matchtir", b, traj_weight=0.0, turn_weight=1.0)
    _close(_valid(turn_only.turn_advantages),
           [[1.144707, 1.154700, 0.707106], [-0.441080, -0.577350], [-0.703627, -0.577350, -0.707106]])


# ---------------------------------------------------------------- §6 SIOP
Q1, Q2 = 0.801094, 0.198906


def _siop_batch():
    return batch_of([
        make_traj("g", 2, signals={"siop_support": [0.06, 0.50]}, prompt_signals={"siop_support": 0.05, "siop_q": Q1}),
        make_traj("g", 3, signals={"siop_support": [0.20, 0.30, 0.45]},
                  prompt_signals={"siop_support": 0.05, "siop_q": Q1}),
        make_traj("g", 2, signals={"siop_support": [0.02, 0.30]}, prompt_signals={"siop_support": 0.02, "siop_q": Q2}),
        make_traj("g", 2, answered=False, prompt_signals={"siop_q": 0.0}),
    ])


def test_siop_target():
    q = reliability_target([2 / 3, 1 / 3], [0.9, 0.2], 1.0)
    np.testing.assert_allclose(q, [Q1, Q2], atol=1e-6)
    assert reliability_target([2 / 3, 1 / 3], [0.9, 0.2], 0.0) == pytest.approx([2 / 3, 1 / 3])


def test_siop_example():
    out = assign_credit("siop", _siop_batch())
    _close(_valid(out.turn_rewards), [[0.146057, 2.099078], [1.110552, 0.324816, 0.725363], [0.0, 0.638100], [0, 0]])
    _close(_valid(out.turn_advantages), [[1.615837, 2.211412], [0.689033, -0.101618, 0.237035],
                                         [-0.693879, 0.111616], [-1.610991, -0.805495]])


def test_siop_gold_limit():
    b = batch_of([make_traj("g", 2, signals={"siop_support": [0.06, 0.50]},
                            prompt_signals={"siop_support": 0.05, "siop_q": 1.0})])
    out = assign_credit("siop", b)
    _close(_valid(out.turn_rewards), [[0.182322, 2.620264]])


# ---------------------------------------------------------------- §7 SLATE
def test_slate_example():
    rows = []
    for th, ac, ans in [(1, 1, 0), (0, 1, 0), (1, -1, 0), (1, 1, 1), (0, -1, 1)]:
        rows.append(make_traj("p:1", 1, answered=bool(ans),
                              signals={"judge_think": [th], "judge_action": [ac], "slate_step": [1],
                                       "slate_is_answer": [ans]}))
    out = assign_credit("slate", batch_of(rows))
    assert out.ratio_level == "sequence"
    np.testing.assert_allclose(out.turn_rewards[:, 0], [2, 1, 0, 2.075, -0.925], atol=1e-6)
    adv = out.turn_advantages[:, 0]
    np.testing.assert_allclose(adv, [0.902892, 0.131189, -0.640513, 0.960770, -1.354338], atol=1e-4)
    np.testing.assert_allclose(slate_selection_probs(adv, 0.7), [0.389363, 0.129293, 0.042933, 0.422925, 0.015485],
                               atol=1e-4)
    assert slate_selection_probs(adv, 0.0).tolist() == [0, 0, 0, 1, 0]


# ---------------------------------------------------------------- §8 GiGPO
def _gigpo_batch():
    t1 = make_traj("g", 3, rewards=[0, 0, 10], infos=[{"anchor_obs": "s0"}, {"anchor_obs": "s1"}, {"anchor_obs": "s2"}])
    t2 = make_traj("g", 2, rewards=[0, 0], infos=[{"anchor_obs": "s0"}, {"anchor_obs": "s1'"}])
    return batch_of([t1, t2])


def test_gigpo_example():
    b = _gigpo_batch()
    e = assign_credit("gigpo", b, omega=0.0)
    np.testing.assert_allclose(e.turn_advantages[:, 0], [0.707107, -0.707107], atol=1e-4)
    rows = assign_credit("gigpo", b, omega=0.0, episode_stats="per_step_row")
    _close(_valid(rows.turn_advantages), [[0.730297] * 3, [-1.095445] * 2])
    rows_mn = assign_credit("gigpo", b, omega=0.0, episode_stats="per_step_row", mode="mean_norm")
    _close(_valid(rows_mn.turn_advantages), [[4.0] * 3, [-6.0] * 2])
    total = assign_credit("gigpo", b, episode_stats="per_step_row")
    _close(_valid(total.turn_advantages), [[1.437403, 0.730297, 0.730297], [-1.802552, -1.095445]])
    # step part alone: s0 group ±0.707107 (mean_norm ±4.5125), singletons 0
    step = [[a - e0 for a in row] for row, e0 in zip(_valid(total.turn_advantages), [0.730297, -1.095445])]
    _close(step, [[0.707107, 0, 0], [-0.707107, 0]])
    mn = assign_credit("gigpo", b, mode="mean_norm", episode_stats="per_step_row")
    _close([[a - e0 for a in row] for row, e0 in zip(_valid(mn.turn_advantages), [4.0, -6.0])],
           [[4.5125, 0, 0], [-4.5125, 0]])
