"""LaRe credit (wave-2 spec §6): proxy rewards, uniform residual, process_grpo / GAE advantages, NaN rules.

Worked example §6.7: decoder ``f(z) = 0.5 z₁ − 0.25 z₂ + 0.1``; τ1 (R = 1) ``z = [[1, 0], [0.5, 1], [1, 1]]``,
τ2 (R = 0) ``z = [[0, 1], [0.2, 0.4]]`` → r̂ τ1 ``[0.6, 0.1, 0.35]``, τ2 ``[−0.15, 0.1]``.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.credit.credit_helpers import batch_of, make_traj
from turngym.credit import assign_credit, credit_needs
from turngym.credit.groups import process_grpo
from turngym.credit.lare import LaReConfig, lare_proxy_rewards, uniform_residual
from turngym.errors import ConfigError, CreditError

ATOL = 1e-4
R_HAT = ([0.6, 0.1, 0.35], [-0.15, 0.1])


def example_batch(rewards=R_HAT, outcomes=(1.0, 0.0), **kw):
    trajs = [make_traj("g", len(r), outcome=o, signals={"lare_reward": list(r)}, **kw)
             for r, o in zip(rewards, outcomes)]
    return batch_of(trajs)


def turn_list(t: torch.Tensor, batch) -> list[list[float]]:
    return [t[i, : int(batch.num_turns[i])].tolist() for i in range(batch.batch_size)]


def test_declares_its_provider_and_decoder():
    needs = credit_needs("lare")
    assert needs.signals == ("lare_latent",) and needs.learned == ("lare_decoder",)


def test_worked_example_residual_and_process_grpo():
    b = example_batch()
    r, diag = lare_proxy_rewards(b, LaReConfig())
    got = turn_list(r, b)
    assert got[0] == pytest.approx([0.583333, 0.083333, 0.333333], abs=ATOL)
    assert got[1] == pytest.approx([-0.125, 0.125], abs=ATOL)
    assert diag["lare_fallback"] == 0.0
    assert diag["lare_residual_absmean"] == pytest.approx((0.05 / 3 + 0.05 / 2) / 2, abs=1e-6)
    out = assign_credit("lare", b)
    adv = turn_list(out.turn_advantages, b)
    assert adv[0] == pytest.approx([1.486626, 0.061943, 0.495542], abs=ATOL)
    assert adv[1] == pytest.approx([-1.486626, -0.278742], abs=ATOL)
    # every policy token of a turn carries its turn's advantage, nothing off the policy tokens
    assert torch.equal(out.advantages, b.broadcast_turns(torch.nan_to_num(out.turn_advantages)))
    assert turn_list(out.turn_rewards, b)[0] == pytest.approx([0.583333, 0.083333, 0.333333], abs=ATOL)


def test_worked_example_normalised_turn_rewards():
    """The intermediate r̂ of §6.7: pool mean 0.2, std_u 0.269065."""
    b = example_batch()
    r, _ = lare_proxy_rewards(b, LaReConfig())
    pool = r[b.turn_mask]
    assert float(pool.mean()) == pytest.approx(0.2, abs=ATOL)
    assert float(pool.std()) == pytest.approx(0.269065, abs=ATOL)
    norm = (r - 0.2) / (0.269065 + 1e-6)
    assert turn_list(norm, b)[0] == pytest.approx([1.424683, -0.433599, 0.495542], abs=ATOL)
    assert turn_list(norm, b)[1] == pytest.approx([-1.207883, -0.278742], abs=ATOL)


def test_residual_none_keeps_the_decoded_rewards():
    b = example_batch()
    r, _ = lare_proxy_rewards(b, LaReConfig(residual="none"))
    assert turn_list(r, b)[0] == pytest.approx(list(R_HAT[0]), abs=1e-6)
    ref, _ = process_grpo(r, b.turn_mask, b.group_index)
    out = assign_credit("lare", b, residual="none")
    assert torch.allclose(torch.nan_to_num(out.turn_advantages), ref.float(), atol=1e-6)


def test_residual_sums_to_the_outcome_for_every_row():
    g = torch.Generator().manual_seed(0)
    lens, outs = [1, 2, 5, 3, 4, 1], [1.0, 0.0, 0.3, 0.7, 1.0, 0.0]
    rewards = [torch.randn(n, generator=g).tolist() for n in lens]
    b = example_batch(rewards, outs)
    r, _ = lare_proxy_rewards(b, LaReConfig())
    assert torch.allclose(r.sum(1), torch.tensor(outs, dtype=torch.float64), atol=1e-6)
    assert bool((r[~b.turn_mask] == 0).all())


def test_single_turn_residual_is_the_outcome():
    b = example_batch(([5.0], [-3.0], [0.2]), (1.0, 0.0, 0.5))
    r, _ = lare_proxy_rewards(b, LaReConfig())
    assert r[:, 0].tolist() == pytest.approx([1.0, 0.0, 0.5], abs=1e-12)
    # standalone helper, loop reference
    x, tgt = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 0.0]]), torch.tensor([0.0, 1.0])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    ref = [[1.0 - 1.5, 2.0 - 1.5, 0.0], [1.0, 0.0, 0.0]]
    assert torch.allclose(uniform_residual(x, tgt, mask), torch.tensor(ref))


def test_fallback_puts_the_outcome_on_the_last_turn():
    trajs = [make_traj("g", 3, outcome=1.0), make_traj("g", 2, outcome=0.0), make_traj("g", 1, outcome=0.5)]
    b = batch_of(trajs)
    out = assign_credit("lare", b)
    assert out.diagnostics["lare_fallback"] == 1.0
    r = torch.zeros(3, 3, dtype=torch.float64)
    r[0, 2], r[2, 0] = 1.0, 0.5
    ref, _ = process_grpo(r, b.turn_mask, b.group_index)
    assert torch.allclose(torch.nan_to_num(out.turn_advantages), ref.float(), atol=1e-6)
    assert turn_list(out.turn_rewards, b) == [[0.0, 0.0, 1.0], [0.0, 0.0], [0.5]]


def test_missing_signal_without_fallback_raises_naming_the_provider():
    b = batch_of([make_traj("g", 2, outcome=1.0), make_traj("g", 2, outcome=0.0)])
    with pytest.raises(CreditError, match="lare_reward.*lare_latent.*lare_decoder"):
        assign_credit("lare", b, fallback_to_outcome=False)


@pytest.mark.parametrize("residual", ["none", "uniform"])
def test_reduction_outcome_on_the_last_turn_is_process_grpo_of_the_outcome(residual):
    """§10: lare_reward = outcome on the last turn (0 before) == process_grpo of the outcome == the fallback."""
    lens, outs, groups = [3, 1, 2, 4, 2, 2], [1.0, 0.0, 0.5, 1.0, 0.0, 0.25], ["a", "a", "a", "b", "b", "b"]
    trajs = [make_traj(g, n, outcome=o, signals={"lare_reward": [0.0] * (n - 1) + [o]})
             for g, n, o in zip(groups, lens, outs)]
    b = batch_of(trajs)
    out = assign_credit("lare", b, residual=residual)
    r = torch.zeros(6, 4, dtype=torch.float64)
    for i, (n, o) in enumerate(zip(lens, outs)):
        r[i, n - 1] = o
    ref, _ = process_grpo(r, b.turn_mask, b.group_index)
    assert torch.allclose(torch.nan_to_num(out.turn_advantages), ref.float(), atol=1e-6)
    fb = assign_credit("lare", batch_of([make_traj(g, n, outcome=o) for g, n, o in zip(groups, lens, outs)]),
                       residual=residual)
    assert torch.allclose(fb.advantages, out.advantages, atol=1e-6)


def test_nan_rewards_count_as_zero_and_never_reach_the_advantages():
    nan = math.nan
    b = example_batch(([0.6, nan, 0.35], [math.inf, 0.1]))
    out = assign_credit("lare", b)
    assert out.diagnostics["lare_nonfinite_rewards"] == 2.0
    assert bool(torch.isfinite(out.advantages).all())
    r, _ = lare_proxy_rewards(b, LaReConfig(residual="none"))
    assert turn_list(r, b)[0] == pytest.approx([0.6, 0.0, 0.35]) and turn_list(r, b)[1] == pytest.approx([0.0, 0.1])


def test_no_answer_and_nan_outcome_rows_get_zero_rewards():
    trajs = [
        make_traj("g", 2, outcome=1.0, signals={"lare_reward": [0.3, 0.4]}),
        make_traj("g", 3, outcome=0.0, answered=False, signals={"lare_reward": [0.9, 0.9, 0.9]}),
        make_traj("g", 2, outcome=math.nan, signals={"lare_reward": [0.5, -0.5]}),
    ]
    b = batch_of(trajs)
    r, diag = lare_proxy_rewards(b, LaReConfig())
    assert diag["lare_no_target_rows"] == 2.0
    assert turn_list(r, b)[1:] == [[0.0, 0.0, 0.0], [0.0, 0.0]]
    assert turn_list(r, b)[0] == pytest.approx([0.45, 0.55])
    out = assign_credit("lare", b)
    assert bool(torch.isfinite(out.advantages).all())


def test_singleton_and_zero_variance_pools_give_exact_zeros():
    b = batch_of([make_traj("solo", 1, outcome=1.0, signals={"lare_reward": [0.2]}),
                  make_traj("tie", 2, outcome=1.0, signals={"lare_reward": [0.5, 0.5]}),
                  make_traj("tie", 1, outcome=0.5, signals={"lare_reward": [0.5]})])
    out = assign_credit("lare", b)
    assert bool((out.advantages == 0).all())


def test_groups_never_share_statistics():
    a = [make_traj("a", 2, outcome=1.0, signals={"lare_reward": [0.1, 0.2]}),
         make_traj("a", 3, outcome=0.0, signals={"lare_reward": [0.3, -0.1, 0.0]})]
    other = [make_traj("b", 2, outcome=0.7, signals={"lare_reward": [5.0, 1.0]})]
    alone = assign_credit("lare", batch_of(a))
    both = assign_credit("lare", batch_of(a + other))
    assert torch.allclose(both.turn_advantages[:2, :3].nan_to_num(), alone.turn_advantages.nan_to_num(), atol=1e-6)


def test_gae_needs_values_and_says_how():
    with pytest.raises(CreditError, match="algo=ppo credit.advantage=gae"):
        assign_credit("lare", example_batch(), advantage="gae")


def test_gae_runs_on_the_proxy_rewards_without_the_outcome():
    from turngym.credit.gae import GAEConfig, gae

    b = example_batch()
    g = torch.Generator().manual_seed(1)
    b.values = torch.where(b.action_mask, torch.randn(b.response_ids.shape, generator=g), 0.0)
    out = assign_credit("lare", b, advantage="gae", gamma=0.99, lam=0.95)
    assert out.returns is not None and bool(torch.isfinite(out.advantages).all())
    # the same as the gae module with r̃ as the only reward (outcome not added again)
    r, _ = lare_proxy_rewards(b, LaReConfig())
    rt = turn_list(r, b)
    b2 = batch_of([make_traj("g", 3, outcome=123.0, signals={"x": rt[0]}),
                   make_traj("g", 2, outcome=-7.0, signals={"x": rt[1]})])
    b2.values = b.values
    ref = gae(b2, GAEConfig(gamma=0.99, lam=0.95, use_outcome=False, turn_reward_signals=("x",)))
    assert torch.allclose(out.advantages, ref.advantages, atol=1e-5)
    assert torch.allclose(out.returns, ref.returns, atol=1e-5)
    assert turn_list(out.turn_rewards, b)[1] == pytest.approx([-0.125, 0.125], abs=1e-6)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="advantage"):
        LaReConfig(advantage="ppo")
    with pytest.raises(ConfigError, match="unknown option"):
        assign_credit("lare", example_batch(), residuals="none")


def test_provider_diagnostics_are_reported():
    trajs = [make_traj("g", 2, outcome=1.0, signals={"lare_reward": [0.3, 0.4], "lare_z0": [1, 0],
                                                      "lare_z1": [0, 0], "lare_exec_error": [0, 1]},
                       prompt_signals={"lare_llm": 0.0}),
             make_traj("g", 1, outcome=0.0, signals={"lare_reward": [0.1], "lare_z0": [1], "lare_z1": [1],
                                                     "lare_exec_error": [1]}, prompt_signals={"lare_llm": 0.0})]
    d = assign_credit("lare", batch_of(trajs)).diagnostics
    assert (d["lare_exec_errors"], d["lare_llm_code"], d["lare_factors"]) == (2.0, 0.0, 2.0)
