"""OPRL / iStar credit (wave-2 spec §2): the worked example of §2.8, the §2.9 / §10 invariants and reductions, and
the vectorised step advantages against a plain-loop reference."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from credit_helpers import batch_of, make_traj, random_trajs

from turngym.credit import assign_credit
from turngym.credit.oprl import OPRLConfig, oprl_episode_advantages, oprl_step_advantages
from turngym.errors import ConfigError, CreditError

RELEASE = {"estimator": "rloo", "step_pool": "first_turn"}


def _valid(t: torch.Tensor) -> list[list[float]]:
    return [[v for v in row if not math.isnan(v)] for row in t.tolist()]


def _close(got, want, atol=1e-4):
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=atol)


def with_logratios(batch, per_turn_tokens: list[list[list[float]]]):
    """Set ``prm_logprobs = old_logprobs + d`` with the given per-token log-ratios of every turn."""
    phi = batch.old_logprobs.clone()
    for i, row in enumerate(per_turn_tokens):
        for k, vals in enumerate(row):
            pos = (batch.turn_id[i] == k).nonzero().flatten()
            assert len(pos) == len(vals)
            phi[i, pos] += torch.tensor(vals)
    batch.token_features["prm_logprobs"] = phi
    return batch


def example_batch():
    """§2.8: τ1 (R 1) q [2, 4] (turn 0's tokens 0.5, 1.0, 0.5); τ2 (R 0) q [1, −2, −6]; τ3 (R 0) q [−1]."""
    t1 = make_traj("g", 2, outcome=1.0, action_lens=[3, 2])
    t2 = make_traj("g", 3, outcome=0.0)
    t3 = make_traj("g", 1, outcome=0.0)
    b = batch_of([t1, t2, t3])
    return with_logratios(b, [[[0.5, 1.0, 0.5], [3.0, 1.0]], [[0.5, 0.5], [-1.0, -1.0], [-3.0, -3.0]], [[-0.5, -0.5]]])


R = [[0.10, 0.20], [0.05, -0.10, -0.30], [-0.05]]


# ------------------------------------------------------------------------------------------ §2.8 worked example
def test_worked_example_default_grpo_all_steps():
    b = example_batch()
    out = assign_credit("oprl", b)
    _close(_valid(out.turn_rewards), R)
    a_e, _ = oprl_episode_advantages(b.outcome, b.group_index, OPRLConfig())
    np.testing.assert_allclose(a_e, [1.154699, -0.577349, -0.577349], atol=1e-4)
    r = torch.nan_to_num(out.turn_rewards, nan=0.0)
    a_s, _ = oprl_step_advantages(r, b.turn_mask, b.group_index, OPRLConfig())
    _close(_valid(torch.where(b.turn_mask, a_s, torch.nan)),
           [[0.666210, 1.237247], [0.380691, -0.475864, -1.617938], [-0.190346]])
    _close(_valid(out.turn_advantages), [[1.820908, 2.391945], [-0.196658, -1.053213, -2.195287], [-0.767695]])
    # every policy token of a turn carries its turn's advantage, other tokens 0
    assert torch.equal(out.advantages, b.broadcast_turns(torch.nan_to_num(out.turn_advantages, nan=0.0)))
    assert torch.equal(out.advantages[~b.action_mask], torch.zeros(int((~b.action_mask).sum())))
    assert out.ratio_level == "token"
    assert out.diagnostics["oprl_step_reward_absmax"] == pytest.approx(0.30)
    assert out.diagnostics["oprl_step_reward_mean"] == pytest.approx(-0.016667, abs=1e-6)


def test_worked_example_rloo_all_steps():
    b = example_batch()
    a_e, _ = oprl_episode_advantages(b.outcome, b.group_index, OPRLConfig(estimator="rloo"))
    np.testing.assert_allclose(a_e, [1.0, -0.5, -0.5], atol=1e-6)
    out = assign_credit("oprl", b, estimator="rloo")
    a_s = [[0.14, 0.26], [0.08, -0.10, -0.34], [-0.04]]
    _close(_valid(out.turn_advantages), [[a + e for a in row] for row, e in zip(a_s, [1.0, -0.5, -0.5])])


def test_worked_example_release_parity():
    b = example_batch()
    out = assign_credit("oprl", b, **RELEASE)
    _close(_valid(out.turn_advantages), [[1.10, 1.25], [-0.475, -0.70, -1.00], [-0.625]])
    b0 = example_batch()  # A^S alone: alpha 0 gives A^E, the difference is A^S
    a_e = assign_credit("oprl", b0, alpha=0.0, **RELEASE).turn_advantages
    _close(_valid(out.turn_advantages - a_e), [[0.10, 0.25], [0.025, -0.20, -0.50], [-0.125]])


def test_worked_example_release_parity_with_batch_max_abs():
    b = example_batch()
    out = assign_credit("oprl", b, reward_scale="batch_max_abs", **RELEASE)
    scaled = [[0.333332, 0.666664], [0.166666, -0.333332, -0.999997], [-0.166666]]
    _close(_valid(out.turn_rewards), scaled, atol=1e-5)
    a_e = assign_credit("oprl", example_batch(), alpha=0.0, **RELEASE).turn_advantages
    k = 1.0 / (0.30 + 1e-6)  # RLOO is linear: A^S scales by the same factor
    _close(_valid(out.turn_advantages - a_e), [[0.10 * k, 0.25 * k], [0.025 * k, -0.20 * k, -0.50 * k], [-0.125 * k]],
           atol=1e-5)
    assert out.diagnostics["oprl_reward_scale"] == pytest.approx(0.30 + 1e-6)


def test_alpha_weights_the_step_advantage():
    b = example_batch()
    a1 = assign_credit("oprl", b).turn_advantages
    a2 = assign_credit("oprl", b, alpha=2.0).turn_advantages
    a0 = assign_credit("oprl", b, alpha=0.0).turn_advantages
    np.testing.assert_allclose(torch.nan_to_num(a2 - a0), 2 * torch.nan_to_num(a1 - a0), atol=1e-5)


# ------------------------------------------------------------------------------------------ invariants
def random_batch(seed: int, noise: float = 1.0):
    rng = random.Random(seed)
    b = batch_of(random_trajs(rng, n_groups=4, max_group=4, max_turns=4, p_missing=0.1))
    gen = torch.Generator().manual_seed(seed)
    old = torch.where(b.action_mask, -torch.rand(b.response_ids.shape, generator=gen), torch.zeros(()))
    b.old_logprobs = old
    d = noise * torch.randn(b.response_ids.shape, generator=gen)
    b.token_features["prm_logprobs"] = old + d  # off the policy tokens too: must be ignored
    return b


@pytest.mark.parametrize("seed", range(6))
def test_telescoping_sum_of_step_rewards(seed):
    b = random_batch(seed)
    out = assign_credit("oprl", b, beta=0.05)
    lhs = torch.nan_to_num(out.turn_rewards.double(), nan=0.0).sum(1)
    d = (b.token_features["prm_logprobs"].double() - b.old_logprobs.double()) * b.action_mask
    np.testing.assert_allclose(lhs, 0.05 * d.sum(1), atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("estimator", "reference"), [("grpo", "grpo"), ("rloo", "rloo")])
@pytest.mark.parametrize("pool", ["all_steps", "first_turn"])
@pytest.mark.parametrize("step_singleton", ["zero", "raw"])
def test_prm_equal_to_old_reduces_to_outcome_baseline_exactly(seed, estimator, reference, pool, step_singleton):
    b = random_batch(seed)
    b.token_features["prm_logprobs"] = b.old_logprobs.clone()
    got = assign_credit("oprl", b, estimator=estimator, step_pool=pool, step_singleton=step_singleton,
                        reward_scale="batch_max_abs")
    want = assign_credit(reference, b)
    assert torch.equal(got.advantages, want.advantages)
    assert torch.equal(torch.nan_to_num(got.turn_advantages), torch.nan_to_num(want.turn_advantages))


@pytest.mark.parametrize("seed", range(4))
def test_observation_and_padding_tokens_never_contribute(seed):
    b = random_batch(seed)
    base = assign_credit("oprl", b)
    off = ~b.action_mask
    assert off.any()
    b.token_features["prm_logprobs"] = b.token_features["prm_logprobs"] + 100.0 * off  # only off the mask
    b.old_logprobs = b.old_logprobs - 7.0 * off
    again = assign_credit("oprl", b)
    assert torch.equal(base.advantages, again.advantages)
    assert torch.equal(torch.nan_to_num(base.turn_rewards), torch.nan_to_num(again.turn_rewards))
    b.token_features["prm_logprobs"] = b.token_features["prm_logprobs"] + 1.0 * b.action_mask  # on the mask: moves
    assert not torch.equal(torch.nan_to_num(base.turn_rewards), torch.nan_to_num(assign_credit("oprl", b).turn_rewards))


def test_row_permutation_inside_a_group_permutes_outputs_and_groups_do_not_mix():
    b = example_batch()
    t4 = make_traj("h", 2, outcome=1.0)
    t5 = make_traj("h", 1, outcome=0.0)
    trajs = list(b.trajectories) + [t4, t5]
    base = batch_of(trajs)
    d = [[[0.5, 1.0, 0.5], [3.0, 1.0]], [[0.5, 0.5], [-1.0, -1.0], [-3.0, -3.0]], [[-0.5, -0.5]],
         [[2.0, 0.0], [1.0, 1.0]], [[-4.0, 0.0]]]
    out = assign_credit("oprl", with_logratios(base, d))
    # the first group's numbers are those of the example alone
    _close(_valid(out.turn_advantages)[:3], [[1.820908, 2.391945], [-0.196658, -1.053213, -2.195287], [-0.767695]])
    perm = [2, 4, 0, 3, 1]
    pb = with_logratios(batch_of([trajs[i] for i in perm]), [d[i] for i in perm])
    pout = assign_credit("oprl", pb)
    np.testing.assert_allclose(torch.nan_to_num(pout.turn_advantages, nan=9.0),
                               torch.nan_to_num(out.turn_advantages, nan=9.0)[perm], atol=1e-6)


def test_all_equal_outcomes_keep_an_informative_step_advantage():
    t = [make_traj("g", 2, outcome=1.0), make_traj("g", 2, outcome=1.0)]
    b = with_logratios(batch_of(t), [[[1.0, 1.0], [0.0, 0.0]], [[-1.0, 0.0], [0.0, 0.0]]])
    out = assign_credit("oprl", b)
    a_e, _ = oprl_episode_advantages(b.outcome, b.group_index, OPRLConfig())
    assert torch.equal(a_e, torch.zeros(2))
    assert float(out.turn_advantages.nan_to_num().abs().max()) > 0.5


def test_zero_variance_step_pool_gives_exact_zeros():
    t = [make_traj("g", 2, outcome=1.0), make_traj("g", 1, outcome=0.0)]
    b = with_logratios(batch_of(t), [[[0.25, 0.25], [0.5, 0.0]], [[0.5, 0.0]]])  # every turn q = 0.5 (exact)
    for kw in ({}, {"estimator": "rloo"}):
        out = assign_credit("oprl", b, **kw)
        a0 = assign_credit("oprl", b, alpha=0.0, **kw)
        assert torch.equal(out.advantages, a0.advantages), kw
    # first_turn + grpo: a constant first-turn pool zeroes the group's step advantage (no division by 1e-6)
    b = with_logratios(batch_of(t), [[[0.25, 0.25], [5.0, 0.0]], [[0.5, 0.0]]])
    out = assign_credit("oprl", b, step_pool="first_turn")
    assert torch.equal(out.advantages, assign_credit("oprl", b, alpha=0.0, step_pool="first_turn").advantages)


def test_singleton_group():
    b = with_logratios(batch_of([make_traj("g", 2, outcome=1.0)]), [[[1.0, 1.0], [-2.0, 0.0]]])
    out = assign_credit("oprl", b)  # A^E raw (mean 0, std 1), A^S = 0
    _close(_valid(out.turn_advantages), [[1 / (1 + 1e-6)] * 2], atol=1e-6)
    raw = assign_credit("oprl", b, step_singleton="raw")  # A^S = r (mean 0, std 1)
    _close(_valid(raw.turn_advantages), [[1 / (1 + 1e-6) + 0.1, 1 / (1 + 1e-6) - 0.1]], atol=1e-5)
    zero = assign_credit("oprl", b, episode_singleton="zero")
    assert torch.equal(zero.advantages, torch.zeros_like(zero.advantages))
    rloo = assign_credit("oprl", b, estimator="rloo", step_singleton="raw")  # RLOO: no baseline, R + r
    _close(_valid(rloo.turn_advantages), [[1.1, 0.9]], atol=1e-6)


def test_turn_without_policy_tokens_is_a_zero_member_of_the_pool():
    t = [make_traj("g", 2, outcome=1.0, action_lens=[2, 0]), make_traj("g", 1, outcome=0.0)]
    b = with_logratios(batch_of(t), [[[1.0, 1.0], []], [[-1.0, 0.0]]])
    out = assign_credit("oprl", b, estimator="rloo", alpha=1.0)
    # pool {0.1, 0.0, −0.05}: the empty turn counts (ΣP = 0.05, |P| = 3)
    assert _valid(out.turn_rewards)[0] == pytest.approx([0.1, 0.0])
    _close(_valid(out.turn_advantages - assign_credit("oprl", b, estimator="rloo", alpha=0.0).turn_advantages),
           [[(3 * 0.1 - 0.05) / 2, (0 - 0.05) / 2], [(3 * -0.05 - 0.05) / 2]], atol=1e-6)


def test_turn_ratio_level_is_passed_to_the_loss():
    assert assign_credit("oprl", example_batch(), ratio_level="turn").ratio_level == "turn"


# ------------------------------------------------------------------------------------------ errors
def test_missing_prm_logprobs_names_the_component():
    b = example_batch()
    del b.token_features["prm_logprobs"]
    with pytest.raises(CreditError, match=r"prm_logprobs.*ImplicitPRM"):
        assign_credit("oprl", b)


def test_missing_old_logprobs_names_the_component():
    b = example_batch()
    b.old_logprobs = None
    with pytest.raises(CreditError, match=r"old_logprobs.*ImplicitPRM"):
        assign_credit("oprl", b)


def test_custom_feature_key_and_wrong_shape():
    b = example_batch()
    b.token_features["mine"] = b.token_features.pop("prm_logprobs")
    assert torch.isfinite(assign_credit("oprl", b, prm_logprob_key="mine").advantages).all()
    b.token_features["mine"] = b.token_features["mine"][:, :-1]
    with pytest.raises(CreditError, match=r"shape"):
        assign_credit("oprl", b, prm_logprob_key="mine")


@pytest.mark.parametrize("bad", [{"estimator": "ppo"}, {"step_pool": "last"}, {"beta": 0.0},
                                 {"reward_scale": "max"}, {"alpha": float("nan")}])
def test_bad_options_raise_config_error(bad):
    with pytest.raises(ConfigError):
        assign_credit("oprl", example_batch(), **bad)


# ------------------------------------------------------------------------------------------ loop reference
def loop_step_advantages(r, turn_mask, group_index, cfg: OPRLConfig):
    """Plain-Python A^S, one group at a time (the reference of `oprl_step_advantages`)."""
    b, k = r.shape
    out = [[0.0] * k for _ in range(b)]
    for g in set(group_index.tolist()):
        rows = [i for i in range(b) if int(group_index[i]) == g]
        steps = [(i, j) for i in rows for j in range(k) if turn_mask[i, j]]
        pool = [float(r[i, j]) for i, j in steps if cfg.step_pool == "all_steps" or j == 0]
        n_traj = sum(1 for i in rows if turn_mask[i].any())
        n = len(pool)
        for i, j in steps:
            x = float(r[i, j])
            if n < 2 or n_traj < 2:
                if cfg.step_singleton == "zero":
                    v = 0.0
                else:
                    v = x / (1 + 1e-6) if cfg.estimator == "grpo" and cfg.step_scale else x
            elif cfg.estimator == "rloo":
                v = (n * x - sum(pool)) / (n - 1) if max(pool) > min(pool) else n / (n - 1) * (x - pool[0])
            else:
                if max(pool) == min(pool):
                    v = 0.0
                else:
                    mu = sum(pool) / n
                    sd = math.sqrt(sum((p - mu) ** 2 for p in pool) / (n - 1))
                    v = (x - mu) / (sd + 1e-6) if cfg.step_scale else x - mu
            out[i][j] = v
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(8))
def test_step_advantages_match_the_loop_reference(seed):
    rng = random.Random(seed)
    b = random_batch(seed, noise=0.5)
    r = torch.where(b.turn_mask, torch.tensor([[rng.choice((-0.1, 0.0, 0.05, 0.2)) for _ in range(b.max_turns)]
                                               for _ in range(b.batch_size)], dtype=torch.float64), 0.0)
    for est in ("grpo", "rloo"):
        for pool in ("all_steps", "first_turn"):
            for single in ("zero", "raw"):
                for scale in (True, False):
                    cfg = OPRLConfig(estimator=est, step_pool=pool, step_singleton=single, step_scale=scale)
                    got, _ = oprl_step_advantages(r, b.turn_mask, b.group_index, cfg)
                    want = loop_step_advantages(r, b.turn_mask, b.group_index, cfg)
                    np.testing.assert_allclose(got, want, atol=1e-9, err_msg=str(cfg))
