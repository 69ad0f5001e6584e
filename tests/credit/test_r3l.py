"""R³L credit (wave-2 spec §3): the worked example §3.7, the pivotal-mask invariant through the real loss, the
reduction to GRPO and the degraded mode without the sampler's signals."""

from __future__ import annotations

import math

import pytest
import torch
from credit_helpers import batch_of, make_traj

from turngym.credit import assign_credit
from turngym.credit.r3l import R3LConfig, r3l_advantages
from turngym.errors import CreditError
from turngym.trainers.losses import policy_loss

PAPER = {}
RELEASE = {"max_reward_advantage": 1.0, "scale_by_std": False}
TOK = 10  # policy tokens per turn in the worked example


def example(with_sft: bool = False):
    """§3.7: bases b1 (R 0, 4 turns), b2 (R 1, 3), b3 (R 0.7, 3); retries d1 (from b1 at k 2, R 1, 5 turns) and
    d3 (from b3 at k 1, R 0.2, 4 turns); with_sft adds d1's reflect row (1 turn) and retry row (pivot 2, 5 turns)."""
    rows = [  # (group, turns, R, role, pivot)
        ("g", 4, 0.0, 0, 2), ("g", 3, 1.0, 0, 0), ("g", 3, 0.7, 0, 1), ("g", 5, 1.0, 1, 2), ("g", 4, 0.2, 1, 1)]
    if with_sft:
        rows += [("g:r3l-reflect0", 1, 1.0, 2, 0), ("g:r3l-retry0", 5, 1.0, 3, 2)]
    trajs = [make_traj(g, n, outcome=r, action_lens=[TOK] * n, seed_token=1 + 100 * i,
                       prompt_signals={"r3l_role": role, "r3l_pivot": piv, "r3l_pair": 0})
             for i, (g, n, r, role, piv) in enumerate(rows)]
    return batch_of(trajs)


def turn_values(out, row: int, n: int) -> list[float]:
    return out.turn_advantages[row, :n].tolist()


@pytest.mark.parametrize("mode", ["paper", "release"])
def test_worked_example_turn_advantages(mode):
    batch = example()
    out = assign_credit("r3l", batch, **(PAPER if mode == "paper" else RELEASE))
    if mode == "paper":
        a = [-1.259677, 3.0, 0.781868, 3.0, -0.825305]
    else:
        a = [-0.58, 1.0, 0.36, 1.0, -0.38]
    expect = [[0, 0, a[0], a[0]], [a[1]] * 3, [0, a[2], a[2]], [0, 0, a[3], a[3], a[3]], [0, a[4], a[4], a[4]]]
    for i, e in enumerate(expect):
        assert turn_values(out, i, len(e)) == pytest.approx(e, abs=1e-4)
    # every policy token carries its turn's value; the masked prefix turns are exactly 0
    for i, e in enumerate(expect):
        toks = out.advantages[i][batch.action_mask[i]].view(len(e), TOK)
        assert toks == pytest.approx(torch.tensor(e)[:, None].expand(len(e), TOK), abs=1e-4)
    assert out.loss_type == "reinforce" and out.loss_scale == pytest.approx(0.5)


def test_worked_example_unamplified_advantages():
    """Before amplification: paper A (GRPO, std_u) and release A (mean baseline) of §3.7."""
    r = torch.tensor([0, 1, 0.7, 1, 0.2])
    g, role = torch.zeros(5, dtype=torch.long), torch.tensor([0, 0, 0, 1, 1])
    one = R3LConfig(alpha=1.0, max_reward_advantage=None, r_max=2.0)  # no amplification, no max-reward case
    a, _, _ = r3l_advantages(r, g, role, one)
    assert a.tolist() == pytest.approx([-1.259677, 0.912180, 0.260623, 0.912180, -0.825305], abs=1e-4)
    a, _, _ = r3l_advantages(r, g, role, R3LConfig(alpha=1.0, r_max=2.0, scale_by_std=False))
    assert a.tolist() == pytest.approx([-0.58, 0.42, 0.12, 0.42, -0.38], abs=1e-4)


def test_worked_example_denominator_is_130_tokens_and_the_real_loss_uses_it():
    batch = example()
    out = assign_credit("r3l", batch)
    assert int(batch.action_mask.sum()) == 190
    assert int(out.loss_mask.sum()) == 130 and out.diagnostics["r3l_masked_tokens"] == 60
    assert not bool((out.loss_mask & ~batch.action_mask).any())
    torch.manual_seed(0)
    logp = (-torch.rand(batch.response_ids.shape)).requires_grad_(True)
    loss, m = policy_loss(logp, logp.detach(), out.advantages, batch.action_mask, batch.turn_id,
                          loss_mask=out.loss_mask, loss_type=out.loss_type, reinforce_scale=out.loss_scale)
    lm = out.loss_mask
    expect = -(out.advantages[lm] * logp.detach()[lm]).sum() * 0.5 / 130
    assert float(loss.detach()) == pytest.approx(float(expect), rel=1e-6)
    assert m["n_tokens"] == 130


def test_worked_example_sft_rows_and_unchanged_explore_statistics():
    base = assign_credit("r3l", example())
    batch = example(with_sft=True)
    out = assign_credit("r3l", batch)
    torch.testing.assert_close(out.turn_advantages[:5], base.turn_advantages, equal_nan=True)
    assert turn_values(out, 5, 1) == [1.0]  # reflect row: every response token
    assert turn_values(out, 6, 5) == [0.0, 0.0, 1.0, 1.0, 1.0]  # retry row: only its 3 suffix turns
    assert int(out.loss_mask[6].sum()) == 3 * TOK and int(out.loss_mask[5].sum()) == TOK
    assert out.diagnostics["r3l_sft_rows"] == 2 and out.diagnostics["r3l_distill_rows"] == 2


def test_logavgexp_baseline():
    """Release OPMD with b = τ·log mean exp(R/τ) = 0.659768 (τ = 1): A = R − b before amplification."""
    batch = example()
    out = assign_credit("r3l", batch, baseline="logavgexp", scale_by_std=False, max_reward_advantage=1.0)
    b = 0.659768
    assert turn_values(out, 0, 4)[2] == pytest.approx(0.0 - b, abs=1e-4)  # b1, masked turns 0-1
    assert turn_values(out, 2, 3)[1] == pytest.approx(3.0 * (0.7 - b), abs=1e-4)  # b3 > b: amplified ×3
    assert turn_values(out, 4, 4)[1] == pytest.approx(0.2 - b, abs=1e-4)
    assert turn_values(out, 1, 3)[0] == pytest.approx(1.0)  # R >= 1: the max-reward advantage


def test_group_mode_and_edge_groups():
    r = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.4, 0.5])
    g = torch.tensor([0, 0, 1, 1, 2, 3])
    role = torch.zeros(6, dtype=torch.long)
    a, amp, st = r3l_advantages(r, g, role, R3LConfig())
    # all-success group: A_max everywhere; all-failure group: 0; singletons: raw R then ×α
    assert a.tolist() == pytest.approx([3.0, 3.0, 0.0, 0.0, 1.2, 1.5])
    assert (st.n_groups, st.n_singleton, st.n_zero_var) == (4, 2, 2)
    assert amp.tolist() == [True, True, False, False, True, True]
    a, _, _ = r3l_advantages(r, g, role, R3LConfig(r_max_mode="group"))
    assert a.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 1.2, 1.5])  # a constant group has no "largest"
    a, _, _ = r3l_advantages(torch.tensor([0.2, 0.6, float("nan")]), torch.zeros(3, dtype=torch.long),
                             torch.zeros(3, dtype=torch.long), R3LConfig(r_max_mode="group"))
    assert a[1] == pytest.approx(3.0) and a[2] < 0  # NaN outcome = reward 0, a failed row


def test_pivotal_mask_off_and_masked_advantage_only():
    batch = example()
    out = assign_credit("r3l", batch, pivotal_mask=False)
    assert turn_values(out, 0, 4) == pytest.approx([-1.259677] * 4, abs=1e-4)
    assert int(out.loss_mask.sum()) == 190
    out = assign_credit("r3l", batch, exclude_masked_from_denominator=False)
    assert out.loss_mask is None and turn_values(out, 0, 4)[:2] == [0.0, 0.0]


def _prefix_tokens(batch, pivot):
    k = torch.arange(batch.max_turns)[None, :] < pivot[:, None]  # [B, K]
    return batch.action_mask & (batch.broadcast_turns(k.float()) > 0.5)  # [B, L]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_prefix_tokens_and_logprobs_do_not_change_loss_or_gradient(agg):
    """Changing the tokens or log-probs of any turn < k_pivot leaves the loss and its gradient unchanged (through
    `turngym.trainers.losses.policy_loss`, with KL and entropy terms on)."""
    torch.manual_seed(1)
    batch = example(with_sft=True)
    pivot = batch.prompt_signals["r3l_pivot"].long()
    pre = _prefix_tokens(batch, pivot)
    assert int(pre.sum()) == 80

    def loss_and_grad(b, logp, ref, ent):
        out = assign_credit("r3l", b)
        lp = logp.clone().requires_grad_(True)
        loss, _ = policy_loss(lp, logp, out.advantages, b.action_mask, b.turn_id, agg=agg, ref_logp=ref,
                              kl_coef=0.1, entropy=ent, entropy_coef=0.01, loss_mask=out.loss_mask,
                              loss_type=out.loss_type, reinforce_scale=out.loss_scale)
        (g,) = torch.autograd.grad(loss, lp)
        return loss.detach(), g

    shape = batch.response_ids.shape
    logp, ref, ent = -torch.rand(shape), -torch.rand(shape), torch.rand(shape)
    loss0, g0 = loss_and_grad(batch, logp, ref, ent)
    assert bool((g0[pre] == 0).all()) and bool((g0[batch.action_mask & ~pre] != 0).any())

    ids = batch.response_ids.clone()
    ids[pre] = 777  # other prefix tokens
    changed = torch.where(pre, torch.full_like(logp, -9.0), logp)
    batch2 = batch_of_ids(batch, ids)
    loss1, g1 = loss_and_grad(batch2, changed, torch.where(pre, torch.full_like(ref, -5.0), ref),
                              torch.where(pre, torch.full_like(ent, 4.0), ent))
    assert torch.equal(loss0, loss1)
    assert torch.equal(g0, g1)


def batch_of_ids(batch, ids):
    import dataclasses

    return dataclasses.replace(batch, response_ids=ids)


def test_reduces_to_grpo_without_retries():
    """pivotal_mask=False, α = 1, A_max = α, std scaling, no retries, outcomes < 1 ⇒ GRPO's advantages."""
    trajs = [make_traj(g, n, outcome=r, prompt_signals={"r3l_role": 0, "r3l_pivot": 0})
             for g, n, r in [("a", 2, 0.0), ("a", 3, 0.5), ("a", 1, 0.9), ("b", 2, 0.2), ("b", 2, 0.2),
                             ("c", 3, 0.1), ("c", 1, 0.7)]]
    batch = batch_of(trajs)
    out = assign_credit("r3l", batch, pivotal_mask=False, alpha=1.0, max_reward_advantage=None, scale_by_std=True)
    ref = assign_credit("grpo", batch)
    torch.testing.assert_close(out.advantages, ref.advantages, atol=1e-6, rtol=0)
    assert torch.equal(out.loss_mask, batch.action_mask)


def test_missing_signals_degrade_to_amplified_grpo():
    trajs = [make_traj("a", 2, outcome=r) for r in (0.0, 0.5, 1.0)] + [make_traj("b", 1, outcome=0.3)]
    batch = batch_of(trajs)
    out = assign_credit("r3l", batch)  # no r3l_role / r3l_pivot: every row a base with pivot 0, no raise
    assert out.diagnostics["r3l_signals_missing"] == 1.0
    ref = assign_credit("grpo", batch).turn_advantages[:, 0]
    got = out.turn_advantages[:, 0]
    assert got[0] == pytest.approx(float(ref[0]), abs=1e-5)  # negative: unchanged
    assert got[1] == pytest.approx(0.0, abs=1e-5)  # the mean
    assert got[2] == pytest.approx(3.0)  # R >= 1: A_max = α
    assert got[3] == pytest.approx(3.0 * 0.3)  # singleton: raw R, amplified
    assert torch.equal(out.loss_mask, batch.action_mask)
    with_sig = batch_of([make_traj("a", 2, outcome=r, prompt_signals={"r3l_role": 0, "r3l_pivot": 0})
                         for r in (0.0, 0.5, 1.0)])
    assert assign_credit("r3l", with_sig).diagnostics["r3l_signals_missing"] == 0.0


def test_bad_signals_raise():
    batch = batch_of([make_traj("a", 2, outcome=0.0, prompt_signals={"r3l_role": 5, "r3l_pivot": 0})])
    with pytest.raises(CreditError, match="r3l_role"):
        assign_credit("r3l", batch)
    batch = batch_of([make_traj("a", 2, outcome=0.0, prompt_signals={"r3l_role": 0, "r3l_pivot": -1})])
    with pytest.raises(CreditError, match="r3l_pivot"):
        assign_credit("r3l", batch)
    with pytest.raises(ValueError, match="tau"):
        R3LConfig(tau=0.0)


def test_two_groups_never_share_statistics_and_rows_permute():
    trajs = [make_traj(g, 2, outcome=r, prompt_signals={"r3l_role": role, "r3l_pivot": piv})
             for g, r, role, piv in [("a", 0.0, 0, 1), ("a", 1.0, 1, 1), ("b", 0.3, 0, 0), ("b", 0.6, 0, 0)]]
    out = assign_credit("r3l", batch_of(trajs)).turn_advantages
    alone = assign_credit("r3l", batch_of(trajs[:2])).turn_advantages
    torch.testing.assert_close(out[:2], alone, equal_nan=True)
    perm = [3, 1, 0, 2]
    out_p = assign_credit("r3l", batch_of([trajs[i] for i in perm])).turn_advantages
    torch.testing.assert_close(out_p, out[perm], equal_nan=True)
    assert all(math.isfinite(v) for v in out[~torch.isnan(out)].tolist())
