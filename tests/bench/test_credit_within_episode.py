"""`turngym bench credit-accuracy`'s within-episode and bifurcation measures on hand-made batches with known answers
(outcome-only credit scores 0 / the share of one suffix turn; credit equal to ΔV scores 1), the bootstrap, and the
policy / CLI plumbing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bench_helpers import TINY_SFT
from scipy.stats import spearmanr

from turngym.bench.credit_accuracy import (
    CreditAccuracyConfig,
    bifurcation_pairs,
    bootstrap_ci,
    bootstrap_indices,
    build_parser,
    config_from_args,
    first_divergence,
    fork_shares,
    fork_sign_agreement,
    parse_policies,
    suffix_uniform_share,
    within_episode_spearman,
)
from turngym.errors import ConfigError
from turngym.types import Trajectory, Turn

nan = math.nan

# three episodes: ΔV per turn (NaN = no such turn); the last one has a constant ΔV (not used)
DV = torch.tensor([[0.5, 0.5, 0.0, nan], [0.0, 0.0, 0.0, -1.0], [0.0, 0.0, nan, nan], [1.0, 0.0, nan, nan]])


def test_outcome_only_credit_scores_exactly_zero():
    ta = torch.tensor([[1.3, 1.3, 1.3, nan], [-0.7, -0.7, -0.7, -0.7], [0.2, 0.2, nan, nan], [5.0, 5.0, nan, nan]])
    rho = within_episode_spearman(ta, DV)
    assert rho[0] == 0.0 and rho[1] == 0.0 and rho[3] == 0.0
    assert math.isnan(rho[2])  # ΔV constant: skipped
    assert np.nanmean(rho) == 0.0 and int(np.isfinite(rho).sum()) == 3


def test_credit_equal_to_delta_v_scores_one_and_reversed_minus_one():
    rho = within_episode_spearman(DV.clone(), DV)
    assert rho[[0, 1, 3]].tolist() == [pytest.approx(1.0)] * 3 and math.isnan(rho[2])
    rho = within_episode_spearman(-3.0 * DV + 0.2, DV)
    assert rho[[0, 1, 3]].tolist() == [pytest.approx(-1.0)] * 3
    # any increasing map of ΔV is a perfect ranking
    assert within_episode_spearman(torch.exp(5 * DV), DV)[[0, 1, 3]].tolist() == [pytest.approx(1.0)] * 3


def test_within_episode_matches_scipy_loop_reference():
    g = torch.Generator().manual_seed(1)
    dv = torch.randint(0, 3, (20, 5), generator=g).float() / 2
    ta = torch.randn(20, 5, generator=g)
    lens = torch.randint(1, 6, (20,), generator=g)
    for i, n in enumerate(lens.tolist()):
        dv[i, n:] = nan
        ta[i, n:] = nan
    got = within_episode_spearman(ta, dv)
    for i, n in enumerate(lens.tolist()):
        a, d = ta[i, :n].double().numpy(), dv[i, :n].double().numpy()
        if n < 2 or d.min() == d.max():
            assert math.isnan(got[i])
        else:
            assert got[i] == pytest.approx(spearmanr(a, d).statistic)


def test_within_episode_shape_check():
    with pytest.raises(ValueError, match="ta\\[B,K\\]"):
        within_episode_spearman(torch.zeros(2, 3), torch.zeros(2, 4))


def _turn(act, obs=(3,)):
    return Turn(action_ids=list(act), obs_ids=list(obs), info={"value": 0.0, "value_delta": 0.0})


def _leaf(path, acts, group="g"):
    return Trajectory(group_id=group, prompt_ids=[1, 2], turns=[_turn(a) for a in acts],
                      meta={"tree": {"path": list(path), "branching": [2, 2, 2]}})


def test_first_divergence():
    a = _leaf([0], [[5], [6], [7]])
    assert first_divergence(a, _leaf([1], [[5], [6], [8]])) == 2
    assert first_divergence(a, _leaf([1], [[9], [6]])) == 0
    assert first_divergence(a, _leaf([1], [[5], [6], [7]])) is None  # identical
    assert first_divergence(a, _leaf([1], [[5], [6]])) == 2  # one stopped earlier
    other = _leaf([1], [[5], [6], [8]])
    other.prompt_ids = [9]
    assert first_divergence(a, other) is None


def _tree():
    # branching (2, 2): roots 0 and 1 are independent; each forks before turn 1
    leaves = [
        _leaf([0, 0], [[5], [6], [7]]),
        _leaf([0, 1], [[5], [8]]),          # diverges from [0, 0] at turn 1
        _leaf([1, 0], [[9], [6], [7]]),
        _leaf([1, 1], [[9], [6], [7]]),     # identical to [1, 0]: no pair
        _leaf([0, 0], [[4], [4]], group="h"),
        _leaf([1], [[3]], group="h"),       # ended before the fork level
    ]
    return leaves


def test_bifurcation_pairs_one_per_fork_event():
    pairs = bifurcation_pairs(_tree())
    # g: roots (first-born leaves [0,0] and [1,0]) diverge at turn 0; [0,0]/[0,1] at turn 1; [1,0]/[1,1] identical.
    # [0,1] vs [1,0] is not a representative pair (path index after the split level is not 0). h: roots at turn 0.
    assert sorted(pairs) == [(0, 1, 1), (0, 2, 0), (4, 5, 0)]
    plain = [Trajectory(group_id="g", prompt_ids=[1], turns=[_turn([5])]) for _ in range(2)]
    assert bifurcation_pairs(plain) == []  # group rollouts (no tree path) form no pair


def test_fork_share_known_answers():
    # pair (0, 1) diverges at j = 1; rows: a has 3 turns, b has 3 turns
    pairs = [(0, 1, 1)]
    # all the difference on the diverging turn -> 1
    ta = torch.tensor([[0.3, 2.0, -0.5], [0.3, -1.0, -0.5]])
    assert fork_shares(ta, pairs)[0] == pytest.approx(1.0)
    # outcome-only (a constant per episode): the share of one turn among the 2 suffix turns
    ta = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    assert fork_shares(ta, pairs)[0] == pytest.approx(0.5)
    # nothing on the diverging turn -> 0; identical credit -> undefined
    assert fork_shares(torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]), pairs)[0] == 0.0
    assert math.isnan(fork_shares(torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), pairs)[0])
    # unequal lengths: b ends after turn 1; its missing turn 2 counts as 0 -> |2 - 0| + |1 - 0|
    ta = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, nan, nan]])
    assert fork_shares(ta, [(0, 1, 1)])[0] == pytest.approx(2.0 / (2.0 + 1.0 + 1.0))


def test_fork_share_outcome_only_equals_uniform_reference_on_equal_lengths():
    trajs = [_leaf([0, 0], [[5], [6], [7], [1]]), _leaf([0, 1], [[5], [8], [7], [1]])]
    pairs = bifurcation_pairs(trajs)
    assert pairs == [(0, 1, 1)]
    ta = torch.tensor([[0.8] * 4, [-0.3] * 4])
    assert fork_shares(ta, pairs)[0] == pytest.approx(suffix_uniform_share(trajs, pairs)[0]) == pytest.approx(1 / 3)


def test_fork_sign_agreement():
    pairs = [(0, 1, 1), (2, 3, 0), (4, 5, 0)]
    dv = torch.tensor([[0.0, 0.5], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.5, 0.0], [0.5, 0.0]])
    ta = torch.tensor([[0.0, 0.2], [0.0, -0.1], [-1.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    got = fork_sign_agreement(ta, dv, pairs)
    assert got[0] == 1.0 and got[1] == 0.0 and math.isnan(got[2])  # no ground-truth difference: not counted
    tie = fork_sign_agreement(torch.tensor([[0.0, 0.7], [0.0, 0.7]]), dv[:2], [(0, 1, 1)])
    assert tie[0] == 0.5


def test_bootstrap_is_seeded_and_brackets_the_mean():
    x = np.random.default_rng(0).normal(0.3, 1.0, size=200)
    idx = bootstrap_indices(len(x), 500, seed=0)
    assert (idx == bootstrap_indices(len(x), 500, seed=0)).all()
    lo, hi = bootstrap_ci(lambda r: float(x[r].mean()), idx)
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / math.sqrt(200), rel=0.25)
    assert bootstrap_ci(lambda r: nan, idx) == [pytest.approx(nan, nan_ok=True)] * 2
    assert bootstrap_indices(5, 0, 0).shape == (0, 5)


def test_policy_specs_and_cli():
    assert parse_policies(["warm", "mid=/r/step-10", "/r/checkpoints/step-00000050", "a=x,b=y"]) == (
        ("warm", "warm"), ("mid", "/r/step-10"), ("step-00000050", "/r/checkpoints/step-00000050"),
        ("a", "x"), ("b", "y"))
    args = build_parser().parse_args(["--policy", "warm", "--policies", "late=/tmp/x", "--env", "text/TextWorld-v0",
                                      "--env-kwargs", "{}", "--tree-branching", "2,3", "--bootstrap", "50"])
    cfg = config_from_args(args)
    assert cfg.policies == (("warm", "warm"), ("late", "/tmp/x"))
    assert cfg.env_id == "text/TextWorld-v0" and cfg.resolved_env_kwargs == {}
    assert cfg.tree_branching == (2, 3) and cfg.bootstrap == 50
    assert CreditAccuracyConfig().resolved_env_kwargs == {"topk": 1}
    assert CreditAccuracyConfig(env_id="tool/Calc-v0").resolved_env_kwargs == {}
    with pytest.raises(ConfigError, match="distinct"):
        CreditAccuracyConfig(policies=(("a", "warm"), ("a", "x")))


def test_load_policy_from_a_save_pretrained_dir(sft_dir, tiny_setup):

    from turngym.bench.credit_accuracy import load_policy

    path = sft_dir / "search_HopQA-v0"  # the session's SFT start (saved by tiny_setup)
    cfg = CreditAccuracyConfig(sft_dir=str(path), **TINY_SFT)
    run_cfg, s, info = load_policy(cfg, str(path))
    assert info == {"source": str(path), "kind": "save_pretrained"} and run_cfg.model == str(path)
    # the weights on disk, read directly (the session's tiny_setup model may have been trained in place by now)
    from safetensors.torch import load_file

    saved = {}
    for f in sorted(path.glob("*.safetensors")):
        saved.update(load_file(str(f)))
    assert saved, f"no safetensors in {path}"
    got = s.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in saved.items())
    with pytest.raises(ConfigError, match="neither 'warm' nor a directory"):
        load_policy(cfg, str(path / "missing"))


def test_progress_anchors_keep_the_env_s_own():
    from turngym.bench.credit_accuracy import add_progress_anchors

    own = Trajectory(group_id="g", turns=[Turn(action_ids=[1], info={"anchor_obs": "room A", "anchor": "room B"}),
                                          Turn(action_ids=[1], info={"anchor_obs": "room B", "anchor": "room C"})])
    add_progress_anchors([own])
    assert [u.info["anchor_obs"] for u in own.turns] == ["room A", "room B"]


def test_chart_accepts_a_point_estimate_outside_its_interval(tmp_path):
    from turngym.bench.credit_accuracy import plot

    row = {"method": "grpo", "status": "ok", "fork_status": "ok", "decisive_share": 0.5, "rho_delta": 0.4,
           "within_rho": 0.0, "fork_share": 0.3,
           "ci": {"decisive_share": [0.55, 0.7], "rho_delta": [0.1, 0.3], "within_rho": [0.0, 0.0],
                  "fork_share": [math.nan, math.nan]}}
    summary = {"config": {"env_id": "search/HopQA-v0"},
               "policies": [{"name": "warm", "rows": [row], "batch": {"decisive_token_share": 0.6},
                             "tree": {"gt_share": 0.44}}]}
    plot(summary, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
