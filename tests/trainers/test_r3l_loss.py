"""The loss switches R³L needs (wave-2 spec §1.4, §3.2): ``loss_type="reinforce"`` and ``CreditOutput.loss_mask``,
in `turngym.trainers.losses.policy_loss` and through `turngym.trainers.update.update`."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from turngym.credit.base import CreditOutput, GroupBatch
from turngym.trainers.config import TrainConfig
from turngym.trainers.losses import LOSS_AGG, policy_loss
from turngym.trainers.update import update
from turngym.types import Trajectory, Turn

MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_reinforce_loss_value_and_gradient_by_hand():
    """ℓ = −A·logp·κ, token-mean over 5 tokens, κ = ½; no ratio, no clip, whatever old_logp, clip_scale, dual clip."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.0, 123.0]], requires_grad=True)
    old = torch.tensor([[-5.0, 0.0, -0.5], [-3.0, -1.0, 0.0]])  # ratios far outside any clip range
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]])
    loss, m = policy_loss(logp, old, adv, MASK, loss_type="reinforce", reinforce_scale=0.5, dual_clip_c=3.0,
                          clip_scale=torch.full((2, 3), 0.1))
    # Σ A·logp = (−1 − 2 − 0.5) + (0.6 + 2.0) = −0.9 → loss = 0.9·0.5/5 = 0.09
    assert float(loss.detach()) == pytest.approx(0.09, abs=1e-7)
    (g,) = torch.autograd.grad(loss, logp)
    expect = torch.tensor([[-0.1, -0.1, -0.1], [0.2, 0.2, 0.0]])  # −A·κ/5
    torch.testing.assert_close(g, expect, atol=1e-7, rtol=0)
    assert m["clipfrac"] == 0.0 and m["n_tokens"] == 5
    clip_loss, _ = policy_loss(logp, old, adv, MASK)
    assert float(clip_loss.detach()) != pytest.approx(0.09)  # the clipped surrogate is another loss here


def test_reinforce_with_logp_equal_old_has_the_clip_gradient_up_to_the_scale():
    torch.manual_seed(0)
    logp = -torch.rand(3, 6)
    adv = torch.randn(3, 6)
    mask = torch.rand(3, 6) > 0.3
    lp1, lp2 = logp.clone().requires_grad_(True), logp.clone().requires_grad_(True)
    (g_clip,) = torch.autograd.grad(policy_loss(lp1, logp, adv, mask)[0], lp1)
    (g_rf,) = torch.autograd.grad(policy_loss(lp2, logp, adv, mask, loss_type="reinforce", reinforce_scale=0.5)[0],
                                  lp2)
    torch.testing.assert_close(g_rf, 0.5 * g_clip, atol=1e-7, rtol=0)


@pytest.mark.parametrize("loss_type", ["clip", "reinforce"])
@pytest.mark.parametrize("agg", LOSS_AGG.names())
def test_loss_mask_equals_a_smaller_action_mask_for_every_term(agg, loss_type):
    """Tokens outside loss_mask leave the loss and every denominator (token count, row count, per-row counts, KL and
    entropy terms): the result equals the loss with those tokens removed from the action mask."""
    torch.manual_seed(2)
    b, length = 4, 7
    logp, old, ref = -torch.rand(b, length), -torch.rand(b, length), -torch.rand(b, length)
    adv, ent = torch.randn(b, length), torch.rand(b, length)
    mask = torch.rand(b, length) > 0.2
    lmask = torch.rand(b, length) > 0.4
    lmask[1] = False  # a row with no trained token leaves the seq-mean row count
    turn_id = torch.where(mask, torch.arange(length).div(3, rounding_mode="floor").expand(b, length), -1)
    kw = {"agg": agg, "agg_norm_len": 10.0, "ref_logp": ref, "kl_coef": 0.2, "entropy": ent,
          "entropy_coef": 0.05, "loss_type": loss_type, "reinforce_scale": 0.5, "ratio_level": "turn"}
    lp1, lp2 = logp.clone().requires_grad_(True), logp.clone().requires_grad_(True)
    l1, m1 = policy_loss(lp1, old, adv, mask, turn_id, loss_mask=lmask, **kw)
    l2, m2 = policy_loss(lp2, old, adv, mask & lmask, turn_id, **kw)
    assert torch.equal(l1.detach(), l2.detach())
    assert m1 == m2 and m1["n_tokens"] == int((mask & lmask).sum())
    g1, g2 = torch.autograd.grad(l1, lp1)[0], torch.autograd.grad(l2, lp2)[0]
    assert torch.equal(g1, g2) and bool((g1[mask & ~lmask] == 0).all())


def test_loss_mask_token_mean_denominator_by_hand():
    logp = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], requires_grad=True)
    adv = torch.ones(1, 4)
    mask = torch.ones(1, 4, dtype=torch.bool)
    lmask = torch.tensor([[False, False, True, True]])
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, loss_mask=lmask, loss_type="reinforce")
    assert float(loss.detach()) == pytest.approx(1.0)  # (1 + 1) / 2, not / 4
    full, _ = policy_loss(logp, logp.detach(), adv * lmask, mask, loss_type="reinforce")
    assert float(full.detach()) == pytest.approx(0.5)  # zeroing the advantage only keeps 4 in the denominator


def test_loss_mask_none_is_the_old_loss():
    torch.manual_seed(3)
    logp, old, adv = -torch.rand(2, 5), -torch.rand(2, 5), torch.randn(2, 5)
    mask = torch.rand(2, 5) > 0.3
    a = policy_loss(logp, old, adv, mask, dual_clip_c=3.0)
    b = policy_loss(logp, old, adv, mask, dual_clip_c=3.0, loss_mask=None, loss_type="clip")
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    with pytest.raises(ValueError, match="loss_type"):
        policy_loss(logp, old, adv, mask, loss_type="ppo")


# ----------------------------------------------------------------------------------------- through update()


def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))


def tiny_batch() -> GroupBatch:
    g = torch.Generator().manual_seed(4)

    def ids(n):
        return torch.randint(3, 40, (n,), generator=g).tolist()

    trajs = []
    for i, turns in enumerate([(3, 2, 4), (2, 5), (4, 1, 2)]):
        tt = [Turn(action_ids=ids(n), logprobs=[-1.0] * n, obs_ids=ids(2) if k < len(turns) - 1 else [])
              for k, n in enumerate(turns)]
        trajs.append(Trajectory(group_id=f"g{i % 2}", prompt_ids=ids(3 + i), turns=tt, outcome=float(i % 2)))
    batch = GroupBatch.from_trajectories(trajs, pad_id=0)
    batch.validate()
    return batch


def run_update(out: CreditOutput, batch: GroupBatch, **cfg_kw):
    model = tiny_lm()
    cfg = TrainConfig(tasks_per_step=1, group_size=3, minibatch_size=3, grad_accum=1, ppo_epochs=1, max_grad_norm=0.0, lr=1.0, warmup_steps=0,
                      **cfg_kw)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = copy.deepcopy(model.state_dict())
    metrics = update(cfg, model, opt, batch, out)
    return before, model, metrics


def credit_out(batch: GroupBatch, **kw) -> CreditOutput:
    adv = torch.where(batch.action_mask, torch.linspace(-1, 1, batch.length).expand_as(batch.action_mask), 0.0)
    return CreditOutput(advantages=adv, turn_advantages=torch.zeros(batch.turn_mask.shape),
                        turn_rewards=torch.zeros(batch.turn_mask.shape), **kw)


def test_update_with_loss_mask_none_is_bit_identical_to_the_full_action_mask():
    batch = tiny_batch()
    batch.old_logprobs = torch.where(batch.action_mask, torch.full(batch.action_mask.shape, -3.0), 0.0)
    _, m1, met1 = run_update(credit_out(batch), batch, entropy_coef=0.01)
    _, m2, met2 = run_update(credit_out(batch, loss_mask=batch.action_mask.clone()), batch, entropy_coef=0.01)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert met1 == {k: v for k, v in met2.items()}


def test_update_reinforce_with_loss_mask_takes_the_hand_gradient():
    """One SGD step (lr 1, no grad clipping) of update() moves the weights by −∇ of
    −Σ_{loss mask} A·log π·κ / #loss tokens, the REINFORCE loss of spec §3.2."""
    from turngym.trainers.forward import chunk_logprobs, iter_chunks

    batch = tiny_batch()
    batch.old_logprobs = torch.zeros(batch.action_mask.shape)
    lmask = batch.action_mask & (batch.turn_id >= 1)  # the first turn of every row is a masked prefix
    out = credit_out(batch, loss_mask=lmask, loss_type="reinforce", loss_scale=0.5)
    before, model, met = run_update(out, batch)
    ref = tiny_lm()
    ref.train()
    (chunk,) = list(iter_chunks(batch, torch.arange(batch.batch_size), 8))
    logp, _, _ = chunk_logprobs(ref, chunk)
    r, sl = chunk.rows, slice(0, chunk.length)
    lm, adv = lmask[r, sl], out.advantages[r, sl]
    loss = -(adv[lm] * logp[lm]).sum() * 0.5 / int(lmask.sum())
    grads = torch.autograd.grad(loss, list(ref.parameters()), allow_unused=True)
    moved = 0
    for (name, p0), p1, gr in zip(before.items(), model.state_dict().values(), grads):
        expect = torch.zeros_like(p0) if gr is None else -gr
        torch.testing.assert_close(p1 - p0, expect, atol=1e-6, rtol=1e-4, msg=name)
        moved += int((p1 != p0).any())
    assert moved > 0
    assert met["train/loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert met["train/clip_frac"] == 0.0


def test_update_counts_only_loss_mask_tokens():
    batch = tiny_batch()
    batch.old_logprobs = torch.zeros(batch.action_mask.shape)
    none = dataclasses.replace(credit_out(batch), loss_mask=torch.zeros_like(batch.action_mask))
    before, model, met = run_update(none, batch)
    assert all(torch.equal(a, b) for a, b in zip(before.values(), model.state_dict().values()))
    assert met["train/optimizer_steps"] == 0.0
