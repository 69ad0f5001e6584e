"""Spec §13 invariants for the outcome and turn-level credit methods."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from credit_helpers import batch_of, make_traj, random_trajs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from turngym.credit import GroupBatch, assign_credit
from turngym.credit.matchtir import hard_assignment, sinkhorn_plan
from turngym.errors import CreditError

torch.set_num_threads(1)

TURN_METHODS = ["grpo", "dr_grpo", "rloo", "reinforce_pp", "igpo", "a2tgpo", "matchtir", "siop", "slate", "gigpo"]
GROUP_LOCAL = [m for m in TURN_METHODS if m != "reinforce_pp"]  # REINFORCE++ whitens over the batch by design


def _rich_trajs(seed: int, **kw):
    """Random trajectories where every signal is present (so every method runs)."""
    return random_trajs(random.Random(seed), p_missing=0.0, **kw)


def _by_traj(batch: GroupBatch, out) -> dict[int, list[float]]:
    res = {}
    for i, t in enumerate(batch.trajectories):
        n = len(t.turns)
        res[id(t)] = out.turn_advantages[i, :n].tolist()
    return res


@pytest.mark.parametrize("method", TURN_METHODS)
def test_zero_off_policy_tokens_and_finite(method):
    for seed in range(3):
        b = GroupBatch.from_trajectories(random_trajs(random.Random(seed), p_missing=0.3))
        if method in ("matchtir", "siop", "slate") and not {"match_r", "siop_support", "judge_think"} <= set(b.turn_signals):
            continue
        try:
            out = assign_credit(method, b)
        except CreditError as e:  # only the documented missing-provider error is allowed
            assert "missing" in str(e)
            continue
        assert torch.isfinite(out.advantages).all()
        assert torch.equal(out.advantages[~b.action_mask], torch.zeros(int((~b.action_mask).sum())))
        if out.clip_scale is not None:
            assert torch.isfinite(out.clip_scale).all()
        assert all(math.isfinite(v) for v in out.diagnostics.values())


@pytest.mark.parametrize("method", TURN_METHODS)
def test_permuting_rows_permutes_outputs(method):
    trajs = _rich_trajs(7, n_groups=3, max_group=4, max_turns=4)
    b1 = GroupBatch.from_trajectories(trajs)
    perm = list(trajs)
    random.Random(1).shuffle(perm)
    b2 = GroupBatch.from_trajectories(perm)
    o1, o2 = _by_traj(b1, assign_credit(method, b1)), _by_traj(b2, assign_credit(method, b2))
    for k in o1:
        np.testing.assert_allclose(o1[k], o2[k], atol=1e-6)


@pytest.mark.parametrize("method", GROUP_LOCAL)
def test_groups_never_share_statistics(method):
    a = _rich_trajs(11, n_groups=1, max_group=4, max_turns=4)
    b = [copy.deepcopy(t) for t in _rich_trajs(12, n_groups=1, max_group=4, max_turns=4)]
    for t in b:
        t.group_id = "other"
        for u in t.turns:  # shift every value so that shared statistics would show
            u.reward += 5.0
            u.signals = {k: (v + 3.0 if k not in ("slate_step", "siop_support") else v) for k, v in u.signals.items()}
        t.outcome = t.outcome + 7.0 if t.outcome == t.outcome else t.outcome
    ba, bb, ball = (GroupBatch.from_trajectories(x) for x in (a, b, a + b))
    alone = {**_by_traj(ba, assign_credit(method, ba)), **_by_traj(bb, assign_credit(method, bb))}
    joint = _by_traj(ball, assign_credit(method, ball))
    for k in joint:
        np.testing.assert_allclose(joint[k], alone[k], atol=1e-5)


def _identical_group(method: str) -> GroupBatch:
    sig = {"probe_score": [-1.0, -0.5, 0.0], "match_r": [0.5, 0.25, 1.0], "siop_support": [0.1, 0.2, 0.3],
           "judge_think": [1, 1, 1], "judge_action": [0, 0, 0], "slate_step": [0, 1, 2]}
    infos = [{"anchor_obs": f"s{k}"} for k in range(3)]
    if method == "igpo":  # the IG pool spans turns: equal IG on every tool turn (0.5 each, exact in binary)
        sig["probe_score"] = [-1.5, -1.0, 0.0]
    if method == "siop":  # a SIOP pool spans turns: zero variance needs equal rewards on every turn
        sig["siop_support"] = [0.1, 0.1, 0.1]
        ps = {"probe_score": -2.0, "siop_support": 0.1, "siop_q": 0.0}
    else:
        ps = {"probe_score": -2.0, "siop_support": 0.05, "siop_q": 0.5}
    return batch_of([make_traj("g", 3, outcome=1.0, signals=sig, prompt_signals=ps, rewards=[0, 1, 2], infos=infos)
                     for _ in range(4)])


@pytest.mark.parametrize("method", TURN_METHODS)
def test_zero_variance_groups_give_exact_zeros(method):
    b = _identical_group(method)
    kw = {"norm_mode": "separate", "ig_type": "log_prob_diff"} if method == "igpo" else {}
    out = assign_credit(method, b, **kw)
    assert torch.equal(out.advantages, torch.zeros_like(out.advantages)), method


def test_igpo_joint_zero_variance_exact_zero():
    # log IG = 1 on every tool turn and outcome = 1: the joint pool is constant
    b = batch_of([make_traj("g", 3, outcome=1.0, signals={"probe_score": [1.0, 2.0]},
                            prompt_signals={"probe_score": 0.0}) for _ in range(3)])
    out = assign_credit("igpo", b, ig_type="log_prob_diff")
    assert torch.equal(out.advantages, torch.zeros_like(out.advantages))


def test_zero_signal_turn_keeps_its_own_segment():
    # IG exactly 0 on turn 1 of the first rollout: it is still an IG-bearing turn with its own advantage / clip
    t1 = make_traj("g", 3, outcome=1.0, signals={"probe_score": [0.3, 0.3]}, prompt_signals={"probe_score": 0.0})
    t2 = make_traj("g", 3, outcome=0.0, signals={"probe_score": [0.1, 0.5]}, prompt_signals={"probe_score": 0.0})
    b = batch_of([t1, t2])
    out = assign_credit("a2tgpo", b)
    assert out.diagnostics["ig_turns_per_traj"] == 2.0
    ta = out.turn_advantages
    assert ta[0, 0] != ta[0, 1] and out.clip_scale[0, b.turn_last[0, 1]] != out.clip_scale[0, b.turn_last[0, 0]]
    for i in range(2):  # every token of turn k carries turn k's value
        for k in range(3):
            toks = out.advantages[i][b.turn_id[i] == k]
            assert torch.all(toks == ta[i, k])
    ig = assign_credit("igpo", b, ig_type="log_prob_diff")
    assert ig.turn_rewards[0, 1] == 0.0 and ig.turn_advantages[0, 1] != ig.turn_advantages[0, 2]


def test_singleton_policies():
    one = batch_of([make_traj("solo", 2, outcome=0.7, signals={"match_r": [0.4, 0.7]})])
    assert assign_credit("grpo", one).turn_advantages[0, 0] == pytest.approx(0.7, abs=1e-5)  # verl: raw
    assert assign_credit("grpo", one, singleton="zero").turn_advantages[0, 0] == 0.0
    m_raw = assign_credit("matchtir", one)  # traj raw (R = 1.1) + turn raw returns (0.4 + 0.9·0.7, 0.7)
    np.testing.assert_allclose(m_raw.turn_advantages[0], [0.5 * 1.1 + 0.5 * 1.03, 0.5 * 1.1 + 0.5 * 0.7], atol=1e-5)
    m_zero = assign_credit("matchtir", one, turn_singleton="zero")
    np.testing.assert_allclose(m_zero.turn_advantages[0], [0.55, 0.55], atol=1e-5)
    # IGPO / SIOP / SLATE / GiGPO step: singleton -> 0
    ig = batch_of([make_traj("solo", 2, outcome=1.0, signals={"probe_score": [0.0]}, prompt_signals={"probe_score": -1.0})])
    # separate pools hold one value each -> 0; the joint pool holds two values (IG, outcome) -> not a singleton
    assert torch.equal(assign_credit("igpo", ig, norm_mode="separate").advantages, torch.zeros(ig.action_mask.shape))
    assert not torch.equal(assign_credit("igpo", ig).advantages, torch.zeros(ig.action_mask.shape))
    sl = batch_of([make_traj("p:0", 1, signals={"judge_think": [1], "judge_action": [1], "slate_step": [0]})])
    assert torch.equal(assign_credit("slate", sl).advantages, torch.zeros(sl.action_mask.shape))
    si = batch_of([make_traj("solo", 1, prompt_signals={"siop_q": 1.0, "siop_support": 0.1},
                             signals={"siop_support": [0.2]})])
    assert torch.equal(assign_credit("siop", si).advantages, torch.zeros(si.action_mask.shape))
    gi = batch_of([make_traj("solo", 2, rewards=[0, 3], infos=[{"anchor_obs": "a"}, {"anchor_obs": "b"}])])
    out = assign_credit("gigpo", gi)  # episode raw R = 3, step singletons 0
    np.testing.assert_allclose(out.turn_advantages[0], [3.0, 3.0], atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_a2tgpo_clip_scale_range(seed):
    trajs = random_trajs(random.Random(seed), p_missing=0.2, values=(0.0, 0.1, 0.7, 1.0, 3.0))
    b = GroupBatch.from_trajectories(trajs)
    if "probe_score" not in b.turn_signals or "probe_score" not in b.prompt_signals:
        return
    beta = 0.3
    out = assign_credit("a2tgpo", b, beta=beta)
    c = out.clip_scale[b.action_mask]
    assert bool(((c > 1 - beta) & (c < 1 + beta)).all())
    last = b.turn_last[torch.arange(b.batch_size), b.last_turn_index.clamp(min=0)]
    assert torch.all(out.clip_scale[torch.arange(b.batch_size), last] == 1.0)


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=st.floats(0, 1)))
def test_matchtir_hungarian_beats_greedy_and_ot_marginals(s):
    hung, greedy = hard_assignment(s, "hungarian"), hard_assignment(s, "greedy")
    assert hung.sum() >= greedy.sum() - 1e-12
    t = sinkhorn_plan(s, 0.1)
    p, g = s.shape
    np.testing.assert_allclose(t.sum(1), np.full(p, 1 / p), atol=1e-6)
    np.testing.assert_allclose(t.sum(0), np.full(g, 1 / g), atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(1e-4, 1.0), min_size=3, max_size=6), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_siop_telescoping(supports, q, lam):
    n = len(supports) - 1
    t = make_traj("g", n, signals={"siop_support": supports[1:]},
                  prompt_signals={"siop_support": supports[0], "siop_q": q})
    out = assign_credit("siop", batch_of([t]), lam=lam)
    r = out.turn_rewards[0, :n].double()
    shaping = float(r.sum()) - (1 - lam) * q
    want = q * math.log((supports[-1] + 1e-8) / (supports[0] + 1e-8))
    assert shaping == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("method", ["a2tgpo", "slate", "igpo"])
def test_segment_ratio_gradient_is_reinforce(method):
    losses = pytest.importorskip("turngym.trainers.losses")
    trajs = _rich_trajs(3, n_groups=2, max_group=3, max_turns=3)
    b = GroupBatch.from_trajectories(trajs)
    out = assign_credit(method, b)
    logp = (torch.randn(b.response_ids.shape) * 0.1 - 1.0).requires_grad_(True)
    loss, _ = losses.policy_loss(logp, logp.detach(), out.advantages, b.action_mask, b.turn_id,
                                 clip_scale=out.clip_scale, ratio_level=out.ratio_level, agg="token-mean")
    loss.backward()
    want = -out.advantages * b.action_mask / b.action_mask.sum()
    torch.testing.assert_close(logp.grad, want, atol=1e-6, rtol=1e-5)


def test_extreme_values_stay_finite():
    rng = random.Random(5)
    trajs = random_trajs(rng, p_missing=0.1, values=(0.0, 1e-12, 1e6, -1e6, 3.0))
    b = GroupBatch.from_trajectories(trajs)
    for m in TURN_METHODS:
        try:
            out = assign_credit(m, b)
        except CreditError as e:
            assert "missing" in str(e)
            continue
        assert torch.isfinite(out.advantages).all(), m


def test_gigpo_anchor_paths_agree():
    import dataclasses

    trajs = _rich_trajs(21, n_groups=3, max_group=4, max_turns=4)
    trajs[0].turns[0].info["anchor_obs"] = {"room": 1, "items": ["key"]}  # unhashable state
    trajs[1].turns[0].info["anchor_obs"] = {"items": ["key"], "room": 1}
    b = GroupBatch.from_trajectories(trajs)
    assert b.anchor_ids is not None
    fast = assign_credit("gigpo", b)
    slow = assign_credit("gigpo", dataclasses.replace(b, anchor_ids=None))  # host-side hashing path
    torch.testing.assert_close(fast.advantages, slow.advantages)
    sim = assign_credit("gigpo", b, similarity_threshold=1.0)  # first-fit similarity, ratio 1 = exact
    torch.testing.assert_close(sim.advantages, fast.advantages)


def test_sinkhorn_marginals_on_a_slow_converging_near_permutation():
    """A case hypothesis found: at eps 0.1 it needs a few thousand iterations to reach 1e-6 marginals."""
    s = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]])
    t = sinkhorn_plan(s, 0.1)
    np.testing.assert_allclose(t.sum(0), np.full(3, 1 / 3), atol=1e-6)
    np.testing.assert_allclose(t.sum(1), np.full(3, 1 / 3), atol=1e-6)
