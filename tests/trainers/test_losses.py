"""Tests of turngym.trainers.losses: worked examples of spec §3.1/§3.3/§4.2, gradient checks, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from turngym.errors import RegistryError
from turngym.trainers.losses import (
    KL_ESTIMATORS,
    LOSS_AGG,
    METRICS,
    agg_loss,
    entropy_from_logits,
    kl_penalty,
    kl_penalty_rewards,
    overlong_penalty,
    policy_loss,
    token_logprobs,
    value_loss,
)

torch.set_num_threads(1)


def _one(ratio: float, adv: float, **kw) -> float:
    logp = torch.tensor([[math.log(ratio)]])
    old = torch.zeros(1, 1)
    loss, _ = policy_loss(logp, old, torch.tensor([[adv]]), torch.ones(1, 1, dtype=torch.bool), **kw)
    return float(loss)


# ------------------------------------------------------------------------------------------- spec §3.1 worked examples


def test_surrogate_worked_examples():
    assert _one(1.3, 1.0, dual_clip_c=3.0) == pytest.approx(-1.2, abs=1e-5)
    assert _one(1.3, 1.0, eps_high=0.28, dual_clip_c=3.0) == pytest.approx(-1.28, abs=1e-5)
    assert _one(0.7, -1.0, dual_clip_c=3.0) == pytest.approx(0.8, abs=1e-5)
    assert _one(5.0, -1.0, dual_clip_c=3.0) == pytest.approx(3.0, abs=1e-5)
    assert _one(5.0, -1.0) == pytest.approx(5.0, abs=1e-5)  # dual clip off: unbounded
    assert _one(0.5, 1.0, dual_clip_c=3.0) == pytest.approx(-0.5, abs=1e-5)


def test_aggregation_worked_example():
    vals = torch.tensor([[1.0, 2.0, 99.0, float("nan")], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert float(agg_loss(vals, mask, "token-mean")) == pytest.approx(1.166667, abs=1e-5)
    assert float(agg_loss(vals, mask, "seq-mean-token-mean")) == pytest.approx(1.25, abs=1e-5)
    assert float(agg_loss(vals, mask, "seq-mean-token-sum")) == pytest.approx(3.5, abs=1e-5)
    assert float(agg_loss(vals, mask, "seq-mean-token-sum-norm", norm_len=4)) == pytest.approx(
        0.875, abs=1e-5
    )
    assert set(LOSS_AGG.names()) >= {
        "token-mean",
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
    }


def test_aggregation_rows_without_tokens_excluded_and_empty_is_zero():
    vals = torch.tensor([[1.0, 2.0], [5.0, 5.0]])
    mask = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    assert float(agg_loss(vals, mask, "seq-mean-token-mean")) == pytest.approx(1.5)
    assert float(agg_loss(vals, mask, "seq-mean-token-sum")) == pytest.approx(3.0)
    empty = torch.zeros(2, 2, dtype=torch.bool)
    for name in LOSS_AGG.names():
        out = agg_loss(vals, empty, name, norm_len=4)
        assert float(out) == 0.0


def test_aggregation_global_counts_sum_to_global_mean():
    torch.manual_seed(0)
    vals = torch.randn(6, 5)
    mask = torch.rand(6, 5) > 0.3
    mask[:, 0] = True
    full = agg_loss(vals, mask, "token-mean")
    parts = sum(
        agg_loss(vals[i : i + 2], mask[i : i + 2], "token-mean", global_tokens=int(mask.sum()))
        for i in range(0, 6, 2)
    )
    assert float(parts) == pytest.approx(float(full), abs=1e-6)
    full_s = agg_loss(vals, mask, "seq-mean-token-mean")
    parts_s = sum(
        agg_loss(vals[i : i + 3], mask[i : i + 3], "seq-mean-token-mean", global_seqs=6)
        for i in range(0, 6, 3)
    )
    assert float(parts_s) == pytest.approx(float(full_s), abs=1e-6)


def test_aggregation_errors():
    v = torch.zeros(2, 3)
    with pytest.raises(RegistryError, match="token-mean"):
        agg_loss(v, v > 0, "token-men")
    with pytest.raises(ValueError, match="agg_norm_len"):
        agg_loss(v, v > 0, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        agg_loss(v, torch.zeros(2, 4) > 0)


def test_kl_estimators_worked_example():
    logp = torch.tensor([[-1.0]])
    ref = torch.tensor([[-1.2]])
    assert float(kl_penalty(logp, ref, "k1")) == pytest.approx(0.2, abs=1e-6)
    assert float(kl_penalty(logp, ref, "k2")) == pytest.approx(0.02, abs=1e-6)
    assert float(kl_penalty(logp, ref, "k3")) == pytest.approx(0.018731, abs=1e-6)
    assert float(kl_penalty(logp, ref, "low_var_kl")) == pytest.approx(0.018731, abs=1e-6)
    # k3 clamp
    assert float(kl_penalty(torch.tensor([[-30.0]]), torch.tensor([[0.0]]), "k3")) == pytest.approx(10.0)


@pytest.mark.parametrize("name,value_of", [("k1+", "k1"), ("k3+", "k3")])
def test_kl_straight_through_value_and_k2_gradient(name, value_of):
    logp = torch.tensor([[-1.0, -0.3]], requires_grad=True)
    ref = torch.tensor([[-1.2, -0.9]])
    k = KL_ESTIMATORS[name](logp, ref)
    assert torch.allclose(k, kl_penalty(logp, ref, value_of))
    k.sum().backward()
    assert torch.allclose(logp.grad, logp.detach() - ref)  # d/dlogp ½Δ² = Δ


def test_kl_penalty_rewards_only_on_policy_tokens():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    logp = torch.tensor([[-1.0, -5.0, -1.0]])
    ref = torch.tensor([[-1.2, 0.0, -0.8]])
    mask = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    new_r, kl = kl_penalty_rewards(r, logp, ref, mask, kl_coef=0.5, kl_type="k1")
    assert torch.allclose(kl, torch.tensor([[0.2, 0.0, -0.2]]), atol=1e-6)
    assert torch.allclose(new_r, torch.tensor([[-0.1, 0.0, 1.1]]), atol=1e-6)


# --------------------------------------------------------------------------------------------------- policy_loss


def _rand_batch(seed=0, B=3, L=7, K=3):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, L, generator=g) * 2
    old = logp + 0.3 * torch.randn(B, L, generator=g)
    adv = torch.randn(B, L, generator=g)
    mask = torch.rand(B, L, generator=g) > 0.3
    mask[:, 0] = True
    turn = torch.sort(torch.randint(0, K, (B, L), generator=g), dim=1).values
    turn = torch.where(mask, turn, -1)
    return logp, old, adv, mask, turn


@pytest.mark.parametrize("level", ["token", "turn", "sequence"])
@pytest.mark.parametrize(
    "agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
def test_reinforce_gradient_when_old_equals_new(level, agg):
    logp, _, adv, mask, turn = _rand_batch()
    lp = logp.clone().requires_grad_(True)
    loss, m = policy_loss(
        lp, logp.clone(), adv, mask, turn, ratio_level=level, agg=agg, agg_norm_len=9, dual_clip_c=3.0
    )
    loss.backward()
    # REINFORCE: agg(−A·logp) has gradient −A·∂agg/∂ℓ
    lp2 = logp.clone().requires_grad_(True)
    agg_loss(-adv * lp2, mask, agg, norm_len=9).backward()
    assert torch.allclose(lp.grad, lp2.grad, atol=1e-6)
    assert torch.all(lp.grad[~mask] == 0)
    assert m["ratio_mean"] == pytest.approx(1.0) and m["clipfrac"] == 0.0


def test_turn_ratio_straight_through_clip_decision_per_segment():
    # spec §4.2 loss check: log-ratios [0.01, -0.002, 0.004] -> rho = 1.004008 for every token of the turn
    lr = torch.tensor([[0.01, -0.002, 0.004, 0.0]])
    old = torch.full((1, 4), -1.0)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    turn = torch.tensor([[0, 0, 0, -1]])
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    for c, expect_grad_zero, expect_loss in [(1.163739, False, -1.004008), (0.861365, True, -1.003445)]:
        logp = (old + lr).requires_grad_(True)
        loss, m = policy_loss(
            logp,
            old,
            adv,
            mask,
            turn,
            eps_low=3e-3,
            eps_high=4e-3,
            clip_scale=torch.full((1, 4), c),
            ratio_level="turn",
        )
        assert float(loss.detach()) == pytest.approx(expect_loss, abs=1e-5)
        assert m["ratio_mean"] == pytest.approx(1.004008, abs=1e-6)
        loss.backward()
        if expect_grad_zero:
            assert torch.all(logp.grad == 0) and m["clipfrac"] == 1.0
        else:
            # unclipped: each token gets −A·ρ_seg/N
            assert torch.allclose(logp.grad[0, :3], torch.full((3,), -1.004008 / 3), atol=1e-6)
    # token-level ratios clip tokens 0 and 2 (e^0.01, e^0.004 > 1.003445) but not token 1 (e^-0.002)
    logp = (old + lr).requires_grad_(True)
    _, m = policy_loss(
        logp,
        old,
        adv,
        mask,
        turn,
        eps_low=3e-3,
        eps_high=4e-3,
        clip_scale=torch.full((1, 4), 0.861365),
        ratio_level="token",
    )
    assert m["clipfrac"] == pytest.approx(2 / 3)


def test_turn_ratio_matches_loop_reference():
    logp, old, adv, mask, turn = _rand_batch(seed=3, B=4, L=9)
    lp = logp.clone().requires_grad_(True)
    loss, _ = policy_loss(lp, old, adv, mask, turn, ratio_level="turn", eps_low=0.1, eps_high=0.1)
    loss.backward()
    # slow reference: per (row, turn) segment, explicit ratio, per-token loss value and gradient
    tot, grad = 0.0, torch.zeros_like(logp)
    n = int(mask.sum())
    for b in range(4):
        for k in set(turn[b][mask[b]].tolist()):
            idx = [t for t in range(9) if mask[b, t] and turn[b, t] == k]
            rho = math.exp(sum(float(logp[b, t] - old[b, t]) for t in idx) / len(idx))
            for t in idx:
                a = float(adv[b, t])
                l1, l2 = -a * rho, -a * min(max(rho, 0.9), 1.1)
                tot += max(l1, l2)
                grad[b, t] = (-a * rho if l1 >= l2 else 0.0) / n
    assert float(loss.detach()) == pytest.approx(tot / n, abs=1e-5)
    assert torch.allclose(lp.grad, grad, atol=1e-6)


def test_sequence_ratio_is_row_mean():
    logp = torch.tensor([[0.2, 0.0, 9.0], [0.1, 0.1, 0.1]])
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.ones(2, 3)
    _, m = policy_loss(logp, old, adv, mask, ratio_level="sequence", eps_high=1.0)
    assert m["ratio_max"] == pytest.approx(math.exp(0.1), abs=1e-6)
    assert m["ratio_min"] == pytest.approx(math.exp(0.1), abs=1e-6)


def test_policy_loss_ignores_garbage_off_mask_and_kl_entropy_terms():
    logp = torch.tensor([[-1.0, float("nan"), -0.5]], requires_grad=True)
    old = torch.tensor([[-1.0, float("inf"), -0.5]])
    adv = torch.tensor([[1.0, float("nan"), -1.0]])
    mask = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    ref = torch.tensor([[-1.2, 0.0, -0.5]])
    ent = torch.tensor([[2.0, 100.0, 1.0]])
    loss, m = policy_loss(
        logp, old, adv, mask, ref_logp=ref, kl_coef=0.1, kl_type="k3", entropy=ent, entropy_coef=0.01
    )
    # pg: (−1 + 1)/2 = 0; kl: (0.018731 + 0)/2; entropy (2 + 1)/2
    assert float(loss.detach()) == pytest.approx(0.1 * 0.018731 / 2 - 0.01 * 1.5, abs=1e-6)
    assert m["kl"] == pytest.approx(0.018731 / 2, abs=1e-6) and m["entropy"] == pytest.approx(1.5)
    loss.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 1] == 0
    assert set(m) <= set(METRICS)


def test_policy_loss_shape_and_argument_errors():
    logp, old, adv, mask, turn = _rand_batch()
    with pytest.raises(ValueError, match=r"adv has shape \(3, 6\)"):
        policy_loss(logp, old, adv[:, :6], mask)
    with pytest.raises(ValueError, match="turn_id"):
        policy_loss(logp, old, adv, mask, None, ratio_level="turn")
    with pytest.raises(ValueError, match="ratio_level"):
        policy_loss(logp, old, adv, mask, ratio_level="segment")
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, old, adv, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="dual_clip_c"):
        policy_loss(logp, old, adv, mask, dual_clip_c=0.5)
    bad_turn = turn.clone()
    bad_turn[0, 0] = -1
    with pytest.raises(ValueError, match="turn_id < 0"):
        policy_loss(logp, old, adv, mask, bad_turn, ratio_level="turn")


def test_clip_metrics_count_sides():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0, 5.0]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    _, m = policy_loss(logp, torch.zeros(1, 4), adv, torch.ones(1, 4, dtype=torch.bool), dual_clip_c=3.0)
    assert m["clipfrac_high"] == pytest.approx(0.25) and m["clipfrac_low"] == pytest.approx(0.25)
    assert m["dual_clipfrac"] == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------------- value loss


def test_value_loss_clipped_numbers_and_gradient():
    v = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 1.9]])
    ret = torch.tensor([[0.0, 5.0, 1.0]])
    mask = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    loss, _m = value_loss(v, old, ret, mask, clip_eps=0.5)
    # tok0: max((1-0)^2, (0.5-0)^2) = 1 ; tok2: max((2-1)^2, (2.0-1)^2)=1 -> 0.5 * mean = 0.5
    assert float(loss.detach()) == pytest.approx(0.5)
    loss.backward()
    assert v.grad[0, 1] == 0 and v.grad[0, 0] == pytest.approx(0.5)
    loss2, m2 = value_loss(torch.tensor([[0.0, 0.0, 1.0]]), old, ret, mask, clip_eps=0.5)
    # tok0 unclipped err 0; tok2 V=1.0 vs clip [1.4,2.4] -> 1.4: max(0, 0.16) = 0.16 -> 0.5*0.08
    assert float(loss2) == pytest.approx(0.04, abs=1e-6) and m2["vf_clipfrac"] == pytest.approx(0.5)
    loss3, _ = value_loss(torch.tensor([[0.0, 0.0, 1.0]]), old, ret, mask, clip_eps=None)
    assert float(loss3) == 0.0


def test_value_loss_decreases_under_sgd():
    torch.manual_seed(0)
    ret = torch.randn(4, 6)
    mask = torch.rand(4, 6) > 0.2
    v = torch.zeros(4, 6)
    lr = 0.5 * float(
        mask.sum()
    )  # token-mean scales gradients by 1/n (plain SGD; torch.optim imports are slow)
    losses = []
    for _ in range(20):
        v.requires_grad_(True)
        loss, _ = value_loss(v, v.detach().clone(), ret, mask, clip_eps=0.5)
        (grad,) = torch.autograd.grad(loss, v)
        v = (v - lr * grad).detach()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.05 * losses[0]


# ------------------------------------------------------------------------------------------------- DAPO overlong


def test_overlong_penalty():
    lengths = torch.tensor([10, 16, 18, 20, 25])
    out = overlong_penalty(lengths, max_len=20, buffer_len=4, penalty_factor=1.0)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(lengths, max_len=20, buffer_len=0)


# ------------------------------------------------------------------------------------------- log-probs and entropy


def test_token_logprobs_matches_log_softmax_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    ids = torch.randint(0, 11, (2, 5))
    out = token_logprobs(logits, ids, chunk_rows=3)
    ref = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    assert torch.allclose(out, ref, atol=1e-6)
    (g1,) = torch.autograd.grad(out.sum(), logits)
    (g2,) = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-6)
    out_t = token_logprobs(logits.detach().bfloat16(), ids, temperature=0.7)
    ref_t = (
        torch.log_softmax(logits.detach().bfloat16().float() / 0.7, -1).gather(-1, ids[..., None]).squeeze(-1)
    )
    assert out_t.dtype == torch.float32 and torch.allclose(out_t, ref_t, atol=1e-5)
    with pytest.raises(ValueError, match="ids"):
        token_logprobs(logits, ids[:, :4])


@pytest.mark.parametrize("coef", [0.1, -0.1])
def test_entropy_term_sign_raises_or_lowers_the_entropy(coef):
    """With zero advantages only the entropy term moves the logits: a positive coefficient spreads the
    distribution (bonus), a negative one sharpens it (entropy minimisation)."""
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5, requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    before = float(entropy_from_logits(logits.detach()).sum())
    logp = torch.log_softmax(logits, -1)[..., 0]
    loss, _ = policy_loss(logp, logp.detach(), torch.zeros(1, 3), mask,
                          entropy=entropy_from_logits(logits), entropy_coef=coef)
    loss.backward()
    with torch.no_grad():
        after = float(entropy_from_logits(logits - 0.5 * logits.grad).sum())
    assert (after > before) if coef > 0 else (after < before)


def test_entropy_from_logits_masked():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    ent = entropy_from_logits(logits, mask, chunk_rows=2)
    p = torch.softmax(logits, -1)
    ref = -(p * torch.log(p)).sum(-1)
    assert torch.allclose(ent[mask], ref[mask], atol=1e-5)
    assert torch.all(ent[~mask] == 0)
    ent.sum().backward()
    assert torch.all(logits.grad[~mask] == 0) and logits.grad[mask].abs().sum() > 0
    uniform = entropy_from_logits(torch.zeros(1, 1, 8))
    assert float(uniform) == pytest.approx(math.log(8), abs=1e-6)


@pytest.mark.parametrize("level", ["token", "turn", "sequence"])
def test_policy_loss_empty_mask_is_zero_and_finite(level):
    logp = torch.randn(2, 3, requires_grad=True)
    none = torch.zeros(2, 3, dtype=torch.bool)
    loss, m = policy_loss(
        logp, torch.zeros(2, 3), torch.ones(2, 3), none, torch.full((2, 3), -1), ratio_level=level
    )
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(logp.grad == 0)
    assert all(math.isfinite(v) for v in m.values()) and m["n_tokens"] == 0 and m["ratio_min"] == 1.0
