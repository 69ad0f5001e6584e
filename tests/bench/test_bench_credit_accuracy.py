"""`turngym bench credit-accuracy`: metric functions against hand values / loop references, and a tiny end-to-end
run that produces the table, chart and JSON with a row for every registered credit method."""

from __future__ import annotations

import json
import math

import pytest
import torch
from bench_helpers import TINY_SFT
from scipy.stats import spearmanr

from turngym.bench.credit_accuracy import (
    CreditAccuracyConfig,
    add_progress_anchors,
    decisive_mass_share,
    fill_signals,
    mc_turn_values,
    per_turn_advantages,
    run,
    score_batch,
    spearman,
    turn_ground_truth,
)
from turngym.credit import CREDIT, GroupBatch
from turngym.errors import ConfigError
from turngym.types import Trajectory, Turn


def _turn(n_act, value, delta, n_obs=2, anchor=None):
    info = {"value": value, "value_delta": delta}
    if anchor is not None:
        info["anchor"] = anchor
    return Turn(action_ids=[7] * n_act, logprobs=[-0.5] * n_act, obs_ids=[3] * n_obs, info=info)


def _trajs():
    # group g0: a 2-hop success (search hop1, search hop2, answer) and a failure (bad search, wrong answer)
    t1 = Trajectory(group_id="g0", prompt_ids=[1, 2], turns=[_turn(2, 0.5, 0.5, anchor="progress=1/2"),
                                                              _turn(3, 1.0, 0.5, anchor="progress=2/2"),
                                                              _turn(1, 1.0, 0.0, n_obs=0)],
                    outcome=1.0, final_answer="x", meta={"gold_calls": [{}, {}]})
    t2 = Trajectory(group_id="g0", prompt_ids=[1, 2], turns=[_turn(4, 0.0, 0.0, anchor="progress=0/2"),
                                                              _turn(2, 0.0, 0.0, n_obs=0)],
                    outcome=0.0, final_answer="y", meta={"gold_calls": [{}, {}]})
    # group g1: one truncated trajectory (no answer) that resolved a hop
    t3 = Trajectory(group_id="g1", prompt_ids=[1], turns=[_turn(2, 0.0, 0.0), _turn(2, 0.5, 0.5)], outcome=0.0,
                    final_answer=None, meta={"gold_calls": [{}, {}]})
    return [t1, t2, t3]


def test_ground_truth_values_deltas_and_decisive_turns():
    v, dv, dec = turn_ground_truth(_trajs(), 3)
    nan = math.nan
    torch.testing.assert_close(v, torch.tensor([[0.5, 1.0, 1.0], [0.0, 0.0, nan], [0.0, 0.5, nan]]), equal_nan=True)
    # answer turns: V = outcome, ΔV = outcome − V(before); t2's wrong answer from V=0 gives 0
    torch.testing.assert_close(dv, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, nan], [0.0, 0.5, nan]]),
                               equal_nan=True)
    assert dec.tolist() == [[True, True, True], [False, True, False], [False, True, False]]


def test_ground_truth_needs_a_progress_model():
    t = Trajectory(group_id="g", turns=[Turn(action_ids=[1], info={})], outcome=0.0)
    with pytest.raises(ConfigError, match="progress model"):
        turn_ground_truth([t], 1)


def test_per_turn_advantages_match_loop_reference():
    g = torch.Generator().manual_seed(0)
    turn_id = torch.tensor([[0, 0, -1, 1, 1, 1, -1, 2], [0, -1, 1, 1, -1, -1, -1, -1]])
    turn_mask = torch.tensor([[True, True, True], [True, True, False]])
    adv = torch.randn(2, 8, generator=g)
    got = per_turn_advantages(adv, turn_id, turn_mask)
    for b in range(2):
        for k in range(3):
            toks = [adv[b, t].item() for t in range(8) if turn_id[b, t] == k]
            if turn_mask[b, k] and toks:
                assert got[b, k].item() == pytest.approx(sum(toks) / len(toks), abs=1e-6)
            else:
                assert math.isnan(got[b, k].item())


def test_decisive_mass_share_hand_example():
    turn_id = torch.tensor([[0, 0, -1, 1], [0, 1, 1, -1]])
    decisive = torch.tensor([[False, True], [True, False]])
    adv = torch.tensor([[1.0, -1.0, 9.0, 2.0], [-3.0, 0.5, 0.5, 7.0]])  # 9 and 7 sit on observations: ignored
    share, uniform = decisive_mass_share(adv, turn_id, decisive)
    assert share == pytest.approx((2.0 + 3.0) / (1 + 1 + 2 + 3 + 0.5 + 0.5))
    assert uniform == pytest.approx(2 / 6)
    share0, _ = decisive_mass_share(torch.zeros(2, 4), turn_id, decisive)
    assert math.isnan(share0)


def test_spearman_matches_scipy_and_skips_nan_and_constants():
    x = torch.tensor([0.1, 0.4, math.nan, -0.2, 0.9, 0.3])
    y = torch.tensor([1.0, 2.0, 5.0, 0.0, 2.0, math.nan])
    ref = spearmanr([0.1, 0.4, -0.2, 0.9], [1.0, 2.0, 0.0, 2.0]).statistic
    assert spearman(x, y) == pytest.approx(ref)
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))
    assert math.isnan(spearman(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])))


def test_mc_turn_values_are_group_turn_depth_means():
    batch = GroupBatch.from_trajectories(_trajs())
    values = mc_turn_values(batch)
    # group g0: turn 0 and 1 reached by both rows (mean 0.5), turn 2 only by the success (1.0); g1: outcome 0
    want_turn = {(0, 0): 0.5, (0, 1): 0.5, (0, 2): 1.0, (1, 0): 0.5, (1, 1): 0.5, (2, 0): 0.0, (2, 1): 0.0}
    for b in range(3):
        for t in range(batch.length):
            k = int(batch.turn_id[b, t])
            assert values[b, t].item() == pytest.approx(want_turn[(b, k)] if k >= 0 else 0.0)


def test_progress_anchors_are_the_state_before_each_turn():
    trajs = _trajs()
    add_progress_anchors(trajs)
    assert [u.info["anchor_obs"] for u in trajs[0].turns] == ["progress=0/2", "progress=1/2", "progress=2/2"]
    assert [u.info["anchor_obs"] for u in trajs[1].turns] == ["progress=0/2", "progress=0/2"]


def test_quick_run_writes_table_chart_and_a_row_per_method(tmp_path, sft_dir):
    cfg = CreditAccuracyConfig(tasks=2, group_size=3, out_dir=str(tmp_path / "ca"), sft_dir=str(sft_dir / "search_HopQA-v0"),
                               **TINY_SFT)
    summary = run(cfg, log=lambda m: None)
    table = (tmp_path / "ca" / "credit_accuracy.md").read_text()
    png = (tmp_path / "ca" / "credit_accuracy.png").read_bytes()
    data = json.loads((tmp_path / "ca" / "credit_accuracy.json").read_text())
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == set(CREDIT.names()) == {r["method"] for r in data["rows"]}
    for name, r in rows.items():
        assert f"| {name} |" in table
        if r["status"] == "ok":
            assert math.isnan(r["decisive_share"]) or 0.0 <= r["decisive_share"] <= 1.0
            for rho in (r["rho_delta"], r["rho_value"]):
                assert math.isnan(rho) or -1.0 <= rho <= 1.0
        else:
            assert r["status"] == "n/a" and r["note"]
    # PURE (needs a PRM) and the multi-agent team credit are n/a; SIOP only if no rollout answered
    na = {n for n, r in rows.items() if r["status"] != "ok"}
    assert {"pure", "team-difference"} <= na <= {"pure", "team-difference", "siop"}
    assert summary["batch"]["trajectories"] == 6 and 0.0 <= summary["batch"]["decisive_token_share"] <= 1.0


def test_expert_rollouts_ground_truth_and_outcome_only_share(tiny_setup):
    from turngym.agents.policy import SamplingParams, ScriptedPolicy
    from turngym.agents.rollout import collect_rollouts

    s, run_cfg = tiny_setup
    params = SamplingParams(max_new_tokens=64)
    # noise-free expert on the real env: the sampled decisive turns are exactly the task's gold decisive turns and
    # the ground-truth values follow the gold turn values (answer turn: the outcome)
    clean = collect_rollouts("search/HopQA-v0", ScriptedPolicy(s.tokenizer, noise=0.0, seed=0), s.renderer,
                             [11, 12, 13, 14], 1, params=params)
    v, dv, dec = turn_ground_truth(clean, max(len(t.turns) for t in clean))
    for i, t in enumerate(clean):
        n = len(t.turns)
        assert t.outcome == 1.0 and t.final_answer is not None
        assert [k for k in range(n) if dec[i, k]] == t.meta["decisive_turns"]
        assert v[i, :n].tolist() == pytest.approx(t.meta["gold_turn_values"][1:] + [1.0])
        assert float(dv[i, :n].sum()) == pytest.approx(1.0)
    # noisy expert groups: every single-agent method with producible signals runs on the same batch, and
    # outcome-only GRPO's share is the |A_i|-weighted fraction of decisive policy tokens (A_i constant per row)
    noisy = collect_rollouts("search/HopQA-v0", ScriptedPolicy(s.tokenizer, noise=0.5, seed=3), s.renderer,
                             [21, 22, 23, 24], 4, params=params)
    fill_signals(noisy, run_cfg, s)
    rows, stats = score_batch(noisy, s.model, s.pad_id, list(CREDIT.names()))
    rows = {r.method: r for r in rows}
    assert {m for m, r in rows.items() if r.status != "ok"} == {"pure", "team-difference"}
    _, _, dec = turn_ground_truth(noisy, max(len(t.turns) for t in noisy))
    num = den = 0.0
    for g in {t.group_id for t in noisy}:
        idx = [i for i, t in enumerate(noisy) if t.group_id == g]
        r = torch.tensor([noisy[i].outcome for i in idx])
        a = (r - r.mean()) / (r.std() + 1e-6) if len(idx) > 1 else r
        for i, ai in zip(idx, a.tolist()):
            toks = [len(u.action_ids) for u in noisy[i].turns]
            num += abs(ai) * sum(n for k, n in enumerate(toks) if dec[i, k])
            den += abs(ai) * sum(toks)
    assert den > 0, "the noisy expert should give groups with different outcomes"
    assert rows["grpo"].decisive_share == pytest.approx(num / den, abs=1e-5)
    assert stats["decisive_turns"] == int(dec.sum()) and stats["trajectories"] == 16


def test_set_passes_any_train_config_field_to_the_rollouts_and_wins():
    from turngym.bench import credit_accuracy as ca
    from turngym.errors import ConfigError

    args = ca.build_parser().parse_args(["--env", "text/TextWorld-v0", "--set", "max_traj_tokens=1280",
                                         "--set", "max_new_tokens=48"])
    cfg = ca.config_from_args(args).train_config()
    assert (cfg.env_id, cfg.max_traj_tokens, cfg.max_new_tokens) == ("text/TextWorld-v0", 1280, 48)
    with pytest.raises(ConfigError, match="Unknown config key 'nope'"):
        ca.config_from_args(ca.build_parser().parse_args(["--set", "nope=1"]))


def test_report_header_describes_the_warm_start_only_when_it_was_measured():
    from turngym.bench.credit_accuracy import report_header

    c = {"model_size": "1m", "env_id": "text/TextWorld-Long-v0", "pretrain_steps": 400, "sft_steps": 100,
         "sft_episodes": 1024, "seed": 0, "bootstrap": 1000}
    # a policy named "warm" but loaded from a directory was described as the benchmark's default warm start
    loaded = report_header(c, [{"name": "warm", "source": "/ckpt/long_warm"}])
    assert "LM pretraining" not in loaded and "loaded from its directory" in loaded
    built = report_header(c, [{"name": "warm", "source": "warm"}, {"name": "mid", "source": "/ckpt/mid"}])
    assert "400 LM pretraining and 100 SFT steps on 1024 expert episodes" in built
