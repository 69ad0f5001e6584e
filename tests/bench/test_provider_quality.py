"""`turngym bench provider-quality`: the AUC against a loop reference, GiGPO's anchor-group counts on a hand batch,
and a tiny end-to-end run (every table, the oracle probe row at its known values)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from bench_helpers import TINY_SFT

from turngym.bench.credit_accuracy import CreditAccuracyConfig
from turngym.bench.provider_quality import ORACLE, ORACLE_SIOP, auc, measure_gigpo, run
from turngym.credit import GroupBatch
from turngym.types import Trajectory, Turn


def test_auc_matches_pairwise_loop():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=40), 1)  # ties on purpose
    y = (rng.random(40) < 0.4).astype(float)
    s[3] = np.nan
    ok = np.isfinite(s)
    pos, neg = s[ok & (y > 0)], s[ok & (y == 0)]
    ref = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert auc(s, y) == pytest.approx(ref)
    assert math.isnan(auc(np.ones(4), np.zeros(4)))
    assert auc(np.array([1.0, 2.0]), np.array([0.0, 1.0])) == 1.0


def _turn(anchor, reward=0.0):
    return Turn(action_ids=[7], obs_ids=[3], reward=reward, info={"anchor_obs": anchor},
                obs_messages=[{"role": "tool", "content": anchor}])


def test_gigpo_anchor_groups_on_a_hand_batch():
    # one task, three rollouts: states s0 (all three), s1 (two of them, returns differ), s2 (alone)
    trajs = [
        Trajectory(group_id="g", prompt_ids=[1], prompt_messages=[{"role": "user", "content": "q"}],
                   turns=[_turn("s0"), _turn("s1", 1.0)], outcome=1.0),
        Trajectory(group_id="g", prompt_ids=[1], prompt_messages=[{"role": "user", "content": "q"}],
                   turns=[_turn("s0"), _turn("s1", 0.0)], outcome=0.0),
        Trajectory(group_id="g", prompt_ids=[1], prompt_messages=[{"role": "user", "content": "q"}],
                   turns=[_turn("s0"), _turn("s2", 0.0)], outcome=0.0),
    ]
    info = measure_gigpo(GroupBatch.from_trajectories(trajs))[0]
    assert info["turns"] == 6 and info["step_groups"] == 3
    assert info["share_in_group_ge2"] == pytest.approx(5 / 6) and info["mean_size_ge2"] == pytest.approx(2.5)
    # s0: returns 0.95, 0, 0 differ; s1: 1 vs 0 differ; s2 alone -> 5 of 6 turns get a step advantage
    assert info["share_informative"] == pytest.approx(5 / 6)


def test_quick_run_writes_every_table(tmp_path, sft_dir):
    cfg = CreditAccuracyConfig(tasks=2, group_size=4, out_dir=str(tmp_path / "pq"),
                               sft_dir=str(sft_dir / "search_HopQA-v0"), bootstrap=50, **TINY_SFT)
    summary = run(cfg, log=lambda m: None)
    table = (tmp_path / "pq" / "provider_quality.md").read_text()
    data = json.loads((tmp_path / "pq" / "provider_quality.json").read_text())
    for head in ("Gold-answer probe", "turn-group normalisation", "SIOP support", "MatchTIR", "GiGPO anchor"):
        assert head in table
    p = summary["policies"][0]
    labels = [r["template"] for r in p["probe"]]
    assert labels[0] == "answer format" and labels[-1] == ORACLE and "IGPO <think> default" in labels
    oracle = p["probe"][-1]
    if oracle["ig_turns"] >= 3 and math.isfinite(oracle["rho_ig_dv"]["value"]):
        assert oracle["rho_ig_dv"]["value"] == pytest.approx(1.0)
    assert len(p["siop"]) == 2 * 2 * 3 + 1 and {r["position"] for r in p["siop"]} == {
        "before obs", "before obs, turn left open", "after obs", "oracle"}
    assert p["siop"][-1]["template"] == ORACLE_SIOP
    assert [r["anchor"].split(" ")[0] for r in p["gigpo"]] == ["env", "previous"]
    assert data["policies"][0]["batch"]["trajectories"] == 8
