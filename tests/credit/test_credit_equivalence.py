"""Vectorised credit methods vs the slow loop references, on random ragged batches (hypothesis).

Batches mix ragged turn counts, singleton groups, zero-variance groups (values from a small discrete set) and
missing signals/outcomes. Every output must also be finite.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from credit_helpers import random_trajs
from credit_reference import (
    ref_a2tgpo,
    ref_broadcast,
    ref_gigpo,
    ref_grpo,
    ref_igpo,
    ref_matchtir,
    ref_reinforce_pp,
    ref_rloo,
    ref_siop,
    ref_slate,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turngym.credit import GroupBatch, assign_credit
from turngym.credit.gigpo import GiGPOConfig, _anchor_text
from turngym.errors import CreditError

torch.set_num_threads(1)

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
batch_params = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "n_groups": st.integers(1, 4),
    "max_group": st.integers(1, 5),
    "max_turns": st.integers(1, 5),
    "p_missing": st.sampled_from([0.0, 0.2, 0.5]),
})


def _batch(p) -> GroupBatch:
    rng = random.Random(p["seed"])
    b = GroupBatch.from_trajectories(random_trajs(rng, n_groups=p["n_groups"], max_group=p["max_group"],
                                                  max_turns=p["max_turns"], p_missing=p["p_missing"]))
    b.validate()
    return b


def _probe_absent(b) -> bool:
    """True when the probe provider output is absent although some row has an IG-bearing turn: must raise."""
    absent = "probe_score" not in b.turn_signals or "probe_score" not in b.prompt_signals
    return absent and bool((b.num_turns > 1).any())


def _check(batch, out, want_turn, atol=1e-4):
    assert torch.isfinite(out.advantages).all()
    got = out.turn_advantages.tolist()
    for i, row in enumerate(want_turn):
        np.testing.assert_allclose(got[i][: len(row)], row, atol=atol, rtol=1e-5)
        assert all(math.isnan(v) for v in got[i][len(row):])
    np.testing.assert_allclose(out.advantages.numpy(), np.array(ref_broadcast(batch, want_turn)), atol=atol, rtol=1e-5)


@SETTINGS
@given(batch_params, st.booleans())
def test_outcome_methods_match_reference(p, std):
    b = _batch(p)
    _check(b, assign_credit("grpo", b, norm_adv_by_std=std), ref_grpo(b, norm_adv_by_std=std))
    _check(b, assign_credit("grpo", b, singleton="zero"), ref_grpo(b, singleton="zero"))
    _check(b, assign_credit("rloo", b), ref_rloo(b))
    _check(b, assign_credit("reinforce_pp", b), ref_reinforce_pp(b), atol=1e-3)


@SETTINGS
@given(batch_params, st.sampled_from(["prob_diff", "log_prob_diff"]), st.sampled_from(["joint", "separate"]),
       st.sampled_from([1.0, 0.9]))
def test_igpo_matches_reference(p, ig_type, mode, gamma):
    b = _batch(p)
    if _probe_absent(b):
        with pytest.raises(CreditError, match="probe_score"):
            assign_credit("igpo", b)
        return
    out = assign_credit("igpo", b, ig_type=ig_type, norm_mode=mode, gamma=gamma)
    _check(b, out, ref_igpo(b, ig_type, mode, gamma))


@SETTINGS
@given(batch_params, st.sampled_from(["prompt", "after_first_turn"]), st.sampled_from([1.0, 0.8]))
def test_a2tgpo_matches_reference(p, baseline, gamma):
    b = _batch(p)
    if _probe_absent(b):
        with pytest.raises(CreditError, match="probe_score"):
            assign_credit("a2tgpo", b)
        return
    out = assign_credit("a2tgpo", b, ig_baseline=baseline, gamma=gamma)
    adv, clip = ref_a2tgpo(b, gamma=gamma, ig_baseline=baseline)
    _check(b, out, adv)
    _check_clip = ref_broadcast(b, clip)
    want = np.where(b.action_mask.numpy(), np.array([[c if c else 0 for c in r] for r in _check_clip], dtype=float), 1.0)
    np.testing.assert_allclose(out.clip_scale.numpy(), want, atol=1e-5)


@SETTINGS
@given(batch_params, st.sampled_from(["raw", "zero"]))
def test_matchtir_matches_reference(p, singleton):
    b = _batch(p)
    if "match_r" not in b.turn_signals:
        return
    _check(b, assign_credit("matchtir", b, turn_singleton=singleton), ref_matchtir(b, turn_singleton=singleton))


@SETTINGS
@given(batch_params)
def test_siop_matches_reference(p):
    b = _batch(p)
    if "siop_support" not in b.turn_signals or "siop_support" not in b.prompt_signals:
        return
    _check(b, assign_credit("siop", b), ref_siop(b))


@SETTINGS
@given(batch_params)
def test_slate_matches_reference(p):
    b = _batch(p)
    if "judge_think" not in b.turn_signals or "judge_action" not in b.turn_signals:
        return
    _check(b, assign_credit("slate", b), ref_slate(b))


@SETTINGS
@given(batch_params, st.sampled_from(["mean_std_norm", "mean_norm"]), st.sampled_from(["per_trajectory", "per_step_row"]))
def test_gigpo_matches_reference(p, mode, stats):
    b = _batch(p)
    cfg = GiGPOConfig()
    anchors = [[_anchor_text(t, k, cfg) for k in range(len(t.turns))] for t in b.trajectories]
    out = assign_credit("gigpo", b, mode=mode, episode_stats=stats)
    _check(b, out, ref_gigpo(b, anchors, mode=mode, episode_stats=stats), atol=1e-3)
