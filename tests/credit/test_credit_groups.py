"""Group statistics and turn helpers (spec §1.1, §1.2) against loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from credit_reference import ref_cumsum, ref_group_norm
from hypothesis import given, settings
from hypothesis import strategies as st

from turngym.credit.groups import (
    broadcast,
    group_norm,
    group_norm_with_stats,
    reverse_discounted_cumsum,
    turn_last_index,
    turn_rewards_to_token_rewards,
)

vals = st.sampled_from([0.0, 0.1, 0.5, 1.0, -2.0, float("nan"), 1e6])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), vals), min_size=1, max_size=30), st.booleans(), st.booleans(),
       st.sampled_from(["zero", "raw"]), st.sampled_from([0.0, 1e-8]), st.sampled_from([None, 1e-6]))
def test_group_norm_matches_loop(items, unbiased, scale, singleton, var_eps, std_floor):
    key = torch.tensor([k for k, _ in items])
    x = torch.tensor([v for _, v in items], dtype=torch.float64)
    got = group_norm(x, key, unbiased=unbiased, scale=scale, singleton=singleton, var_eps=var_eps, std_floor=std_floor)
    want = ref_group_norm(items, unbiased=unbiased, scale=scale, singleton=singleton, var_eps=var_eps,
                          std_floor=std_floor)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_group_norm_knobs_and_exact_zero():
    x = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 5.0])
    key = torch.tensor([0, 0, 0, 1, 1, 2])
    out, st_ = group_norm_with_stats(x, key, singleton="raw")
    assert out[:3].tolist() == [0.0, 0.0, 0.0]  # 0.1 * 3 / 3 != 0.1 in floating point: still exactly 0
    assert out[3:5].tolist() == pytest.approx([0.707106, -0.707106], abs=1e-5)
    assert out[5] == pytest.approx(5.0 / (1 + 1e-6))
    assert (st_.n_groups, st_.n_singleton, st_.n_zero_var) == (3, 1, 1)
    assert group_norm(x, key, singleton="zero")[5] == 0.0
    pop = group_norm(x[3:5], key[3:5], unbiased=False, var_eps=1e-8)
    assert pop.tolist() == pytest.approx([1.0, -1.0], abs=1e-5)
    nan = group_norm(torch.tensor([1.0, float("nan"), 0.0]), torch.zeros(3, dtype=torch.long))
    assert nan[1] == 0.0 and nan[0] == pytest.approx(0.707106, abs=1e-5)
    valid = group_norm(torch.tensor([1.0, 9.0, 0.0]), torch.zeros(3, dtype=torch.long),
                       valid=torch.tensor([True, False, True]))
    assert valid[1] == 0.0 and valid[0] == pytest.approx(0.707106, abs=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        group_norm(torch.zeros(3), torch.zeros(2, dtype=torch.long))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.booleans(), st.floats(-5, 5)), min_size=1, max_size=6), min_size=1,
                max_size=5), st.sampled_from([1.0, 0.9, 0.0]))
def test_reverse_discounted_cumsum_matches_loop(rows_, gamma):
    k = max(len(r) for r in rows_)
    v = torch.zeros(len(rows_), k, dtype=torch.float64)
    m = torch.zeros(len(rows_), k, dtype=torch.bool)
    for i, r in enumerate(rows_):
        for j, (ok, x) in enumerate(r):
            v[i, j], m[i, j] = x, ok
    got = reverse_discounted_cumsum(v, m, gamma)
    for i, r in enumerate(rows_):
        idx = [j for j, (ok, _) in enumerate(r) if ok]
        want = ref_cumsum([r[j][1] for j in idx], gamma)  # invalid turns carry through without a discount step
        for j in range(k):
            if j in idx:
                assert got[i, j].item() == pytest.approx(want[idx.index(j)], abs=1e-9)
            else:
                assert got[i, j].item() == 0.0


def test_broadcast_and_turn_indices():
    turn_id = torch.tensor([[0, 0, -1, 1, -1], [-1, 0, 0, 0, -1]])
    v = torch.tensor([[1.5, -2.0], [3.0, float("nan")]])
    out = broadcast(v, turn_id)
    assert out.tolist() == [[1.5, 1.5, 0.0, -2.0, 0.0], [0.0, 3.0, 3.0, 3.0, 0.0]]
    last = turn_last_index(turn_id, 2)
    assert last.tolist() == [[1, 3], [3, -1]]
    tr = turn_rewards_to_token_rewards(torch.tensor([[1.0, 2.0], [3.0, 9.0]]), last, 5)
    assert tr.tolist() == [[0, 1.0, 0, 2.0, 0], [0, 0, 0, 3.0, 0]]
    with pytest.raises(ValueError, match="turn_id reaches"):
        broadcast(torch.zeros(2, 1), turn_id)
    assert not math.isnan(float(out.sum()))


def test_reverse_discounted_cumsum_long_rows_use_the_loop_path():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 70, generator=g, dtype=torch.float64)
    m = torch.rand(3, 70, generator=g) > 0.3
    got = reverse_discounted_cumsum(v, m, 0.9)
    for i in range(3):
        idx = [j for j in range(70) if m[i, j]]
        want = ref_cumsum([float(v[i, j]) for j in idx], 0.9)
        np.testing.assert_allclose(got[i, idx].numpy(), want, atol=1e-9)


def test_process_grpo_pools_every_turn_of_a_group_then_accumulates():
    """Wave-2 spec §1.2 with the CALM example of §5.7 (once per episode): pool mean 0.185714, std_u 0.405909."""
    from turngym.credit.groups import process_grpo

    r = torch.tensor([[0.0, 0.1, 0.0, 1.1], [0.1, 0.0, 0.0, 9.0], [5.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    adv, st = process_grpo(r, m, torch.tensor([0, 0, 1]))
    want = [[1.126218, 1.583744, 1.794910, 2.252436], [-1.126218, -0.915052, -0.457526, 0.0]]
    assert torch.allclose(adv[:2], torch.tensor(want, dtype=torch.float64), atol=1e-4)
    assert torch.equal(adv[2], torch.zeros(4, dtype=torch.float64))  # a lone turn in its group: singleton -> 0
    assert (st.n_groups, st.n_singleton) == (2, 1)
    half, _ = process_grpo(r, m, torch.tensor([0, 0, 1]), gamma=0.5)
    assert half[0, 2].item() == pytest.approx(-0.457526 + 0.5 * 2.252436, abs=1e-4)
