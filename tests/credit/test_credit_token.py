"""Tests of the token-level methods (turngym.credit.gae, tempo, pure, delta): spec worked examples (§3.2, §9.1, §9.2,
§9.3, §9.5), slow loop references vs the vectorised functions on random ragged batches (hypothesis), invariants of
spec §13, registry integration."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turngym.credit import CREDIT, REFINERS, GroupBatch, assign_credit, refine
from turngym.credit.delta import delta_coefficients
from turngym.credit.gae import gae_advantages, whiten
from turngym.credit.pure import pure_advantages, pure_step_rewards
from turngym.credit.tempo import prefix_tree_values, tempo_deltas
from turngym.errors import ConfigError, CreditError
from turngym.types import Trajectory, Turn

torch.set_num_threads(1)
HSET = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NaN = float("nan")


# ============================================================================================================ builders


def traj(
    group: str,
    turns: list[tuple[list[int], list[int]]],
    outcome: float = 0.0,
    *,
    signals=None,
    stop_reason: str = "terminated",
    answer: str | None = "x",
) -> Trajectory:
    """turns = [(action_ids, obs_ids), ...]; signals = list of per-turn dicts."""
    tt = []
    for k, (a, o) in enumerate(turns):
        tt.append(
            Turn(
                action_ids=list(a),
                logprobs=[-0.5] * len(a),
                obs_ids=list(o),
                signals=dict(signals[k]) if signals else {},
            )
        )
    return Trajectory(
        group_id=group,
        prompt_ids=[1, 2],
        turns=tt,
        outcome=outcome,
        final_answer=answer,
        stop_reason=stop_reason,
    )


@st.composite
def ragged_trajs(draw, with_prm: bool = False, vocab: int = 3):
    """Random ragged batch: 1-3 groups of 1-4 rows, 1-3 turns, actions 1-3 tokens, observations 0-2 tokens."""
    trajs = []
    for g in range(draw(st.integers(1, 3))):
        for _ in range(draw(st.integers(1, 4))):
            n_turns = draw(st.integers(1, 3))
            turns, sig = [], []
            for k in range(n_turns):
                a = draw(st.lists(st.integers(3, 3 + vocab - 1), min_size=1, max_size=3))
                o = [] if k == n_turns - 1 else draw(st.lists(st.integers(3, 3 + vocab - 1), max_size=2))
                turns.append((a, o))
                if with_prm:
                    sig.append({"prm": draw(st.one_of(st.floats(-1, 1), st.just(NaN)))})
            outcome = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1), st.just(NaN)))
            answer = draw(st.sampled_from(["x", None]))  # a core env ends an episode when, and only when, it answers
            trajs.append(traj(f"g{g}", turns, outcome, signals=sig or None, answer=answer,
                              stop_reason="terminated" if answer is not None else "max_turns"))
    return trajs


# ================================================================================================== GAE: loop reference


def gae_loop(r, v, m, *, gamma, lam, tid=None, gw=None, lw=None, boot=None):
    B, L = len(r), len(r[0])
    A = [[0.0] * L for _ in range(B)]
    R = [[0.0] * L for _ in range(B)]
    for b in range(B):
        v_next, gae, next_turn = (0.0 if boot is None else boot[b]), 0.0, None
        for t in reversed(range(L)):
            if not m[b][t]:
                continue
            same = tid is not None and next_turn is not None and next_turn == tid[b][t]
            g = (gamma if gw is None else gw) if same else gamma
            lm = (lam if lw is None else lw) if same else lam
            delta = r[b][t] + g * v_next - v[b][t]
            gae = delta + g * lm * gae
            v_next, next_turn = v[b][t], (tid[b][t] if tid is not None else None)
            A[b][t], R[b][t] = gae, gae + v[b][t]
    return torch.tensor(A, dtype=torch.float64), torch.tensor(R, dtype=torch.float64)


def test_gae_worked_example_spec_3_2():
    m = torch.tensor([[1, 1, 0, 0, 1]], dtype=torch.bool)
    r = torch.tensor([[0, 0, 0, 0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.6, 9.0, 9.0, 0.8]], dtype=torch.float64)
    adv, ret = gae_advantages(r, v, m, gamma=1.0, lam=1.0)
    assert torch.allclose(adv[m], torch.tensor([0.5, 0.4, 0.2], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(ret[m], torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), atol=1e-6)
    assert torch.all(adv[~m] == 0)
    assert torch.allclose(
        whiten(adv, m)[m], torch.tensor([0.872871, 0.218218, -1.091089], dtype=torch.float64), atol=1e-6
    )
    adv, ret = gae_advantages(r, v, m, gamma=0.9, lam=0.95)
    assert torch.allclose(adv[m], torch.tensor([0.288805, 0.291, 0.2], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(ret[m], torch.tensor([0.788805, 0.891, 1.0], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(
        whiten(adv, m)[m], torch.tensor([0.556081, 0.598360, -1.154440], dtype=torch.float64), atol=1e-6
    )


def test_bad_discounts_once_per_turn_crossing():
    # mask [1,1,0,1,1], turns [0,0,-,1,1], reward 1 at the end, gamma 0.9, lambda 1:
    # return-to-go = 0.9 before the crossing, 1.0 after it (no discount inside an action)
    m = torch.tensor([[1, 1, 0, 1, 1]], dtype=torch.bool)
    tid = torch.tensor([[0, 0, -1, 1, 1]])
    r = torch.tensor([[0, 0, 0, 0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.6, 0.0, 0.7, 0.8]], dtype=torch.float64)
    adv, ret = gae_advantages(r, v, m, gamma=0.9, lam=1.0, turn_id=tid, gamma_within=1.0)
    assert torch.allclose(adv[m], torch.tensor([0.4, 0.3, 0.3, 0.2], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(ret[m], torch.tensor([0.9, 0.9, 1.0, 1.0], dtype=torch.float64), atol=1e-9)
    # plain GAE discounts every policy token instead
    _, ret_plain = gae_advantages(r, v, m, gamma=0.9, lam=1.0)
    assert torch.allclose(ret_plain[m], torch.tensor([0.729, 0.81, 0.9, 1.0], dtype=torch.float64), atol=1e-9)
    # lambda per turn vs per token differ when lambda < 1
    a_tok, _ = gae_advantages(r, v, m, gamma=0.9, lam=0.5, turn_id=tid, gamma_within=1.0, lam_within=0.5)
    a_turn, _ = gae_advantages(r, v, m, gamma=0.9, lam=0.5, turn_id=tid, gamma_within=1.0, lam_within=1.0)
    assert float(a_turn[0, 3]) == pytest.approx(0.1 + 0.2) and float(a_tok[0, 3]) == pytest.approx(
        0.1 + 0.5 * 0.2
    )


@HSET
@given(
    st.integers(0, 10_000),
    st.integers(1, 12),
    st.sampled_from([(1.0, 1.0), (0.9, 0.95), (0.5, 0.0)]),
    st.sampled_from([None, "token", "turn"]),
    st.booleans(),
    st.sampled_from(["loop", "parallel"]),
)
def test_gae_matches_loop_reference(seed, L, gl, bad, boot, scan):
    g = torch.Generator().manual_seed(seed)
    B = 3
    m = torch.rand(B, L, generator=g) > 0.35
    tid = torch.where(m, torch.sort(torch.randint(0, 3, (B, L), generator=g), 1).values, -1)
    r = torch.randn(B, L, generator=g, dtype=torch.float64)
    v = torch.randn(B, L, generator=g, dtype=torch.float64)
    bv = torch.randn(B, generator=g, dtype=torch.float64) if boot else None
    lw = None if bad is None else (gl[1] if bad == "token" else 1.0)
    kw = {"turn_id": tid, "gamma_within": 1.0, "lam_within": lw} if bad else {}
    adv, ret = gae_advantages(r, v, m, gamma=gl[0], lam=gl[1], bootstrap_value=bv, scan=scan, **kw)
    A, R = gae_loop(
        r.tolist(),
        v.tolist(),
        m.tolist(),
        gamma=gl[0],
        lam=gl[1],
        tid=tid.tolist() if bad else None,
        gw=1.0 if bad else None,
        lw=lw,
        boot=None if bv is None else bv.tolist(),
    )
    assert torch.allclose(adv, A, atol=1e-9) and torch.allclose(ret, R, atol=1e-9)
    adv32, _ = gae_advantages(r.float(), v.float(), m, gamma=gl[0], lam=gl[1], scan=scan, **kw)
    assert adv32.dtype == torch.float32 and torch.isfinite(adv32).all()


def test_whiten_edge_cases():
    x = torch.tensor([[3.0, 5.0]])
    assert torch.all(whiten(x, torch.tensor([[True, False]])) == 0)
    assert torch.all(whiten(x, torch.zeros(1, 2, dtype=torch.bool)) == 0)
    w = whiten(x, torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(w, torch.tensor([[-0.707107, 0.707107]]), atol=1e-5)
    const = whiten(torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool))
    assert torch.all(const == 0)


def _example_gae_batch(stop_reason="terminated"):
    t = traj("g", [([5, 6], [7, 8]), ([9], [])], 1.0, stop_reason=stop_reason)
    b = GroupBatch.from_trajectories([t])
    b.values = torch.tensor([[0.5, 0.6, 0.0, 0.0, 0.8]])
    return b


def test_gae_method_worked_example_and_errors():
    b = _example_gae_batch()
    out = assign_credit("gae", b)
    m = b.action_mask
    assert torch.allclose(out.advantages[m], torch.tensor([0.872871, 0.218218, -1.091089]), atol=1e-6)
    assert torch.allclose(out.returns[m], torch.ones(3), atol=1e-6)
    assert out.ratio_level == "token" and out.advantages[~m].abs().sum() == 0
    assert torch.allclose(out.turn_rewards, torch.tensor([[0.0, 1.0]]))
    out2 = assign_credit("gae", b, gamma=0.9, lam=0.95, whiten_advantages=False)
    assert torch.allclose(out2.advantages[m], torch.tensor([0.288805, 0.291, 0.2]), atol=1e-6)
    assert torch.allclose(out2.turn_advantages, torch.tensor([[0.288805, 0.2]]), atol=1e-6)
    b.values = None
    with pytest.raises(CreditError, match="values"):
        assign_credit("gae", b)
    with pytest.raises(ConfigError, match="gamma"):
        assign_credit("gae", _example_gae_batch(), gama=0.9)


def test_gae_bootstrap_truncated_and_kl_reward():
    b = _example_gae_batch(stop_reason="max_tokens")
    b.outcome = torch.tensor([0.0])
    plain = assign_credit("gae", b, whiten_advantages=False)
    boot = assign_credit("gae", b, whiten_advantages=False, bootstrap_truncated=True)
    m = b.action_mask
    # V_next for the last token = its own value 0.8 instead of 0
    assert float(plain.advantages[m][-1]) == pytest.approx(-0.8)
    assert float(boot.advantages[m][-1]) == pytest.approx(0.0)
    assert boot.diagnostics["gae_bootstrapped_rows"] == 1.0
    b.ref_logprobs = torch.full_like(b.old_logprobs, -0.7)  # old = -0.5 -> k1 = 0.2 on each policy token
    kl = assign_credit("gae", b, whiten_advantages=False, kl_coef=0.5)
    assert torch.allclose(kl.advantages[m] - plain.advantages[m], torch.tensor([-0.3, -0.2, -0.1]), atol=1e-6)
    b.ref_logprobs = None
    with pytest.raises(CreditError, match="ref_logprobs"):
        assign_credit("gae", b, kl_coef=0.5)


def test_ppo_bad_method_and_turn_signal_rewards():
    t = traj("g", [([5, 6], [7]), ([8, 9], [])], 1.0, signals=[{"ig": 0.5}, {"ig": NaN}])
    b = GroupBatch.from_trajectories([t])
    b.values = torch.zeros_like(b.old_logprobs)
    out = assign_credit("ppo-bad", b, gamma=0.5, whiten_advantages=False, turn_reward_signals=("ig",))
    m = b.action_mask
    # turn 0 tokens: 0.5 (ig at its end) + 0.5 * 1.0 (outcome, discounted once); turn 1 tokens: 1.0
    assert torch.allclose(out.advantages[m], torch.tensor([1.0, 1.0, 1.0, 1.0]))
    plain = assign_credit("gae", b, gamma=0.5, whiten_advantages=False, turn_reward_signals=("ig",))
    assert torch.allclose(plain.advantages[m], torch.tensor([0.5 * 0.75, 0.5 + 0.5 * 0.5, 0.5, 1.0]))
    assert torch.allclose(out.turn_rewards, torch.tensor([[0.5, 1.0]]))
    with pytest.raises(CreditError, match="missing"):
        assign_credit("gae", b, turn_reward_signals=("nope",))


# ============================================================================================================ TEMPO


def tempo_loop(seqs, groups, weights, include):
    """Spec §9.1 pseudo-code: a dict trie per group."""
    out = []
    roots = {}
    for g in set(groups):
        members = [i for i in range(len(seqs)) if groups[i] == g and include[i]]
        roots[g] = sum(weights[i] for i in members) / len(members) if members else 0.0
    node_sum, node_cnt, paths = {}, {}, {}
    for i, seq in enumerate(seqs):
        if not include[i]:
            continue
        paths[i] = []
        for t in range(len(seq)):
            key = (groups[i], tuple(seq[: t + 1]))
            node_sum[key] = node_sum.get(key, 0.0) + weights[i]
            node_cnt[key] = node_cnt.get(key, 0) + 1
            paths[i].append(key)
    for i, seq in enumerate(seqs):
        if not include[i]:
            out.append([0.0] * len(seq))
            continue
        vals = [node_sum[k] / node_cnt[k] for k in paths[i]]
        prev = [roots[groups[i]]] + vals[:-1]
        out.append([a - b for a, b in zip(vals, prev)])
    return out


def test_tempo_worked_example():
    A, B, C, D, E, F = 3, 4, 5, 6, 7, 8
    seqs = [([A, B, C], 1.0), ([A, B, D], 1.0), ([A, B, D], 0.0), ([A, E, F], 0.0)]
    batch = GroupBatch.from_trajectories([traj("g", [(s, [])], r) for s, r in seqs])
    out = assign_credit("tempo", batch)
    expect = torch.tensor([
        [0.866025, 1.154701, 1.443376],
        [0.866025, 1.154701, 0.577350],
        [-0.866025, -0.577350, -1.154701],
        [-0.866025, -1.732051, -0.866025],
    ])  # fmt: skip
    assert torch.allclose(out.advantages, expect, atol=1e-4)
    assert out.ratio_level == "token"
    d = tempo_deltas(
        batch.response_ids,
        torch.full((4,), 3),
        batch.group_index,
        torch.tensor([0.866025, 0.866025, -0.866025, -0.866025]),
    )
    assert torch.allclose(d[0].float(), torch.tensor([0.0, 0.288675, 0.577350]), atol=1e-5)
    assert torch.allclose(d[3].float(), torch.tensor([0.0, -0.866025, 0.0]), atol=1e-5)


@HSET
@given(ragged_trajs())
def test_tempo_matches_loop_reference_and_invariants(trajs):
    batch = GroupBatch.from_trajectories(trajs)
    w = torch.randn(len(trajs), dtype=torch.float64)
    include = torch.isfinite(batch.outcome)
    lengths = torch.tensor([len(t.token_ids()) - 2 for t in trajs])  # whole response
    d = tempo_deltas(batch.response_ids, lengths, batch.group_index, w, include)
    seqs = [batch.response_ids[i, : lengths[i]].tolist() for i in range(len(trajs))]
    ref = tempo_loop(seqs, batch.group_index.tolist(), w.tolist(), include.tolist())
    for i in range(len(trajs)):
        assert torch.allclose(d[i, : lengths[i]], torch.tensor(ref[i], dtype=torch.float64), atol=1e-9)
        assert torch.all(d[i, lengths[i] :] == 0)
    # telescoping: sum of deltas = V(leaf) - V(root); delta = 0 wherever the node does not branch
    node, root = prefix_tree_values(batch.response_ids, lengths, batch.group_index, w, include)
    for i in range(len(trajs)):
        if include[i] and lengths[i] > 0:
            assert float(d[i].sum()) == pytest.approx(float(node[i, lengths[i] - 1] - root[i]), abs=1e-9)
    # every credit invariant through the registry (assign_credit checks zeros off-mask and finiteness)
    out = assign_credit("tempo", batch)
    assert torch.all(out.advantages[~include] == 0)


def test_tempo_non_branching_and_observation_branch():
    # identical sequences never branch: all delta 0, advantage = GRPO
    b = GroupBatch.from_trajectories(
        [traj("g", [([3, 4], [9]), ([5], [])], 1.0), traj("g", [([3, 4], [9]), ([5], [])], 0.0)]
    )
    out = assign_credit("tempo", b)
    assert torch.allclose(out.advantages[0][b.action_mask[0]], torch.full((3,), 0.707107), atol=1e-5)
    assert out.diagnostics["tempo_branch_frac"] == 0.0
    # branch on an observation token: the jump is not credited to a policy token (obs position masked)
    b = GroupBatch.from_trajectories(
        [traj("g", [([3], [8]), ([5], [])], 1.0), traj("g", [([3], [9]), ([5], [])], 0.0)]
    )
    out = assign_credit("tempo", b, singleton="zero")
    assert torch.allclose(
        out.advantages[b.action_mask], torch.tensor([0.707107, 0.707107, -0.707107, -0.707107]), atol=1e-5
    )
    # two groups never share a tree: the same tokens in another group do not change values
    b2 = GroupBatch.from_trajectories(
        b.trajectories + [traj("h", [([3], [8]), ([5], [])], 0.0), traj("h", [([4], [8]), ([5], [])], 1.0)]
    )
    out2 = assign_credit("tempo", b2)
    assert torch.allclose(out2.advantages[:2], out.advantages)


# ============================================================================================================= PURE


def test_pure_transform_worked_examples():
    pr = torch.tensor([[0.8, -0.6, 0.9]], dtype=torch.float64)
    tm = torch.ones(1, 3, dtype=torch.bool)
    r = pure_step_rewards(pr, tm, temperature=0.1)
    assert float(r.sum()) == pytest.approx(-0.599998, abs=1e-6)
    assert float(r[0, 1]) == pytest.approx(-0.599999, abs=1e-6) and abs(float(r[0, 0])) < 1e-6
    returns = torch.flip(torch.cumsum(torch.flip(r, [1]), 1), [1])
    assert torch.allclose(
        returns, torch.tensor([[-0.599998, -0.599999, 2.8e-7]], dtype=torch.float64), atol=1e-6
    )
    strict = pure_step_rewards(pr, tm, temperature=0.1, strict_min=True)
    s_ret = torch.flip(torch.cumsum(torch.flip(strict, [1]), 1), [1])
    assert torch.allclose(s_ret, torch.tensor([[-0.6, -0.6, 0.9]], dtype=torch.float64), atol=1e-9)
    r2 = pure_step_rewards(torch.tensor([[0.5, -0.5]]), torch.ones(1, 2, dtype=torch.bool), temperature=1.0)
    assert torch.allclose(r2, torch.tensor([[0.134471, -0.365529]]), atol=1e-6)
    mean_form = pure_step_rewards(pr, tm, weighted=False)
    assert torch.allclose(mean_form, pr / 3)


@HSET
@given(st.lists(st.floats(-1, 1), min_size=1, max_size=6))
def test_pure_low_temperature_sum_is_min(values):
    # separate the values by >= 0.05 so the softmin weight concentrates on the min
    pr = torch.tensor([sorted({round(v / 0.05) * 0.05 for v in values})], dtype=torch.float64)
    pr = pr[:, torch.randperm(pr.shape[1])]
    r = pure_step_rewards(pr, torch.ones_like(pr, dtype=torch.bool), temperature=1e-3)
    assert float(r.sum()) == pytest.approx(float(pr.min()), abs=1e-6)


def test_pure_rloo_and_vr_worked_example():
    # response 0: steps of 4 and 6 tokens with PR [0.5, -0.5]; response 1: one step of 20 tokens, PR 0.3
    t0 = traj("g", [([3] * 4, [9]), ([4] * 6, [])], 0.0, signals=[{"prm": 0.5}, {"prm": -0.5}])
    t1 = traj("g", [([5] * 20, [])], 1.0, signals=[{"prm": 0.3}])
    b = GroupBatch.from_trajectories([t0, t1])
    out = assign_credit("pure", b, temperature=1.0, vr_coef=0.0)
    a0 = out.advantages[0][b.action_mask[0]]
    assert torch.allclose(a0[:4], torch.full((4,), -0.381058), atol=1e-5)
    assert torch.allclose(a0[4:], torch.full((6,), -0.455529), atol=1e-5)
    a1 = out.advantages[1][b.action_mask[1]]
    assert torch.allclose(a1, torch.full((20,), 0.3 + 20 * 0.231059 / 10), atol=1e-5)
    vr = assign_credit("pure", b, temperature=1.0)  # solved = [0, 1] -> VR terms [-1, +1] at EOS
    assert torch.allclose(vr.advantages[0][b.action_mask[0]] - a0, torch.full((10,), -1.0), atol=1e-6)
    assert torch.allclose(vr.advantages[1][b.action_mask[1]] - a1, torch.full((20,), 1.0), atol=1e-6)
    step = assign_credit("pure", b, temperature=1.0, vr_coef=0.0, baseline="step")
    # baseline for row 0 = R_1/S_1 = 0.3 per step
    assert torch.allclose(
        step.advantages[0][b.action_mask[0]][-1:], torch.tensor([-0.365529 - 0.3]), atol=1e-5
    )
    with pytest.raises(CreditError, match="prm"):
        assign_credit("pure", GroupBatch.from_trajectories([traj("g", [([3], [])], 1.0)]))


def pure_loop(pr, turns_len, groups, verifiable, *, T, baseline, vr_coef, strict=False):
    """Per-row reference of §9.2 (softmin or strict min form); turns_len[i] = tokens per step."""
    n = len(pr)
    rt, R, Lr = [], [], []
    for i in range(n):
        ok = [k for k in range(len(pr[i])) if math.isfinite(pr[i][k])]
        if strict:  # return-to-go at step k = min over remaining scored steps
            mins = {k: min(pr[i][j] for j in ok if j >= k) for k in ok}
            nxt = {k: ([j for j in ok if j > k] or [None])[0] for k in ok}
            rt.append(
                [
                    mins[k] - (mins[nxt[k]] if nxt[k] is not None else 0.0) if k in ok else 0.0
                    for k in range(len(pr[i]))
                ]
            )
            R.append(sum(rt[i]))
            Lr.append(sum(turns_len[i]))
            continue
        if ok:
            mx = max(-pr[i][k] / T for k in ok)
            z = sum(math.exp(-pr[i][k] / T - mx) for k in ok)
        rt.append(
            [math.exp(-pr[i][k] / T - mx) / z * pr[i][k] if k in ok else 0.0 for k in range(len(pr[i]))]
        )
        R.append(sum(rt[i]))
        Lr.append(sum(turns_len[i]))
    advs = []
    for i in range(n):
        others = [j for j in range(n) if groups[j] == groups[i] and j != i]
        r = list(rt[i])
        if others and baseline == "token" and sum(Lr[j] for j in others) > 0:
            per = sum(R[j] for j in others) / sum(Lr[j] for j in others)
            r = [r[k] - turns_len[i][k] * per for k in range(len(r))]
        if others and baseline == "step":
            per = sum(R[j] / max(len(pr[j]), 1) for j in others) / len(others)
            r = [x - per for x in r]
        toks = []
        for k in range(len(r)):
            toks += [0.0] * (turns_len[i][k] - 1) + [r[k]]
        if verifiable[i] is not None and math.isfinite(verifiable[i]):
            vo = [verifiable[j] for j in others if verifiable[j] is not None and math.isfinite(verifiable[j])]
            toks[-1] += vr_coef * (verifiable[i] - (sum(vo) / len(vo) if vo else 0.0))
        advs.append([sum(toks[t:]) for t in range(len(toks))])
    return advs


@HSET
@given(
    ragged_trajs(with_prm=True),
    st.sampled_from(["token", "step", "none"]),
    st.sampled_from([0.1, 1.0]),
    st.booleans(),
)
def test_pure_matches_loop_reference(trajs, baseline, T, strict):
    b = GroupBatch.from_trajectories(trajs)
    out = assign_credit("pure", b, baseline=baseline, temperature=T, strict_min_form=strict)
    pr = [[t.signals["prm"] for t in tr.turns] for tr in trajs]
    lens = [[len(t.action_ids) for t in tr.turns] for tr in trajs]
    ver = [(tr.outcome - 1.0) if tr.final_answer is not None else None for tr in trajs]
    ref = pure_loop(pr, lens, b.group_index.tolist(), ver, T=T, baseline=baseline, vr_coef=1.0, strict=strict)
    for i in range(len(trajs)):
        got = out.advantages[i][b.action_mask[i]]
        assert torch.allclose(got, torch.tensor(ref[i], dtype=torch.float32), atol=1e-5), (i, got, ref[i])


def test_pure_strict_min_loop_and_missing_scores():
    pr = torch.tensor([[0.2, NaN, -0.3, 0.5], [0.1, 0.0, 0.0, 0.0]], dtype=torch.float64)
    tm = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    s = pure_step_rewards(pr, tm, strict_min=True)
    ret = torch.flip(torch.cumsum(torch.flip(s, [1]), 1), [1])
    assert torch.allclose(ret[0], torch.tensor([-0.3, -0.3, -0.3, 0.5], dtype=torch.float64))
    assert float(s[0, 1]) == 0.0 and float(ret[1, 0]) == pytest.approx(0.1)
    soft = pure_step_rewards(pr, tm)
    assert torch.isfinite(soft).all() and float(soft[0, 1]) == 0.0
    allnan = pure_step_rewards(torch.full((1, 2), NaN), torch.ones(1, 2, dtype=torch.bool))
    assert torch.all(allnan == 0)
    adv, _ = pure_advantages(
        torch.zeros(1, 1),
        torch.ones(1, 1, dtype=torch.bool),
        torch.tensor([[0]]),
        torch.tensor([[0]]),
        torch.ones(1, 1, dtype=torch.bool),
        torch.tensor([0]),
    )
    assert torch.all(adv == 0)


# ============================================================================================================ DelTA


def delta_loop(v, a, lmin=0.8, lmax=1.2, lw=1.0, gt=1.0, K=1, vs=False):
    """Per-token reference of spec §9.3 (lists of floats); D = 1, or σ⁺² + σ⁻² + 1e-6 with ``vs``."""
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))
    H = len(v[0])
    P = [i for i in range(len(v)) if a[i] > 0]
    N = [i for i in range(len(v)) if a[i] < 0]
    if not P or not N:
        return [1.0] * len(v)

    def cent(idx, w):
        return [sum(w[i] * v[i][h] for i in idx) / sum(w[i] for i in idx) for h in range(H)]

    def dist(x, mu):
        return sum((x[h] - mu[h]) ** 2 / D[h] for h in range(H))

    def marg(mp, mn):
        return {
            i: (lw * dist(v[i], mn) - dist(v[i], mp)) if a[i] > 0 else (lw * dist(v[i], mp) - dist(v[i], mn))
            for i in P + N
        }

    def gam(m):
        out = {}
        for idx in (P, N):
            mean = sum(m[i] for i in idx) / len(idx)
            var = sum((m[i] - mean) ** 2 for i in idx) / len(idx)
            for i in idx:
                out[i] = gt * math.sqrt(max(var, 1e-8))
        return out

    w = [abs(x) for x in a]
    mp, mn = cent(P, w), cent(N, w)
    D = [1.0] * H
    if vs:
        var = lambda idx, mu, h: sum(w[i] * (v[i][h] - mu[h]) ** 2 for i in idx) / sum(w[i] for i in idx)
        D = [var(P, mp, h) + var(N, mn, h) + 1e-6 for h in range(H)]
    m = marg(mp, mn)
    g = gam(m)
    for k in range(K):
        om = [sig(m[i] / g[i]) * abs(a[i]) if i in m else 0.0 for i in range(len(v))]
        mp, mn = cent(P, om), cent(N, om)
        m = marg(mp, mn)
        if k < K - 1:
            g = gam(m)
    c = [lmin + (lmax - lmin) * sig(m[i] / g[i]) if i in m else lmin for i in range(len(v))]
    s = sum(c)
    return [x * len(c) / s for x in c]


def test_delta_worked_example():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [0.0, -2.0]]])
    p = torch.zeros(2, 2)  # v = (1 - p) h = h
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    c, d = delta_coefficients(hidden, p, adv, mask)
    assert torch.allclose(c, torch.tensor([[0.921204, 1.078796], [0.921204, 1.078796]]), atol=1e-5)
    assert torch.allclose(c * adv, torch.tensor([[0.921204, 1.078796], [-0.921204, -1.078796]]), atol=1e-5)
    assert d["delta_gamma_pos"] == pytest.approx(4.0) and d["delta_gamma_neg"] == pytest.approx(4.0)
    assert d["delta_skipped"] == 0.0 and d["delta_disc_acc"] > 0
    # with p != 0 the proxy shrinks: p = 0.5 everywhere scales v by 0.5 -> margins scale, coefficients unchanged
    c_half, _ = delta_coefficients(2 * hidden, torch.full((2, 2), 0.5), adv, mask)
    assert torch.allclose(c_half, c, atol=1e-6)


@HSET
@given(st.integers(0, 10_000), st.integers(0, 3), st.sampled_from([1.0, 0.5, 2.0]), st.booleans())
def test_delta_matches_loop_reference(seed, K, lw, vs):
    g = torch.Generator().manual_seed(seed)
    B, L, H = 3, 5, 4
    hidden = torch.randn(B, L, H, generator=g, dtype=torch.float64)
    p = torch.rand(B, L, generator=g, dtype=torch.float64)
    adv = torch.randn(B, L, generator=g, dtype=torch.float64)
    adv[0, 0] = 0.0
    mask = torch.rand(B, L, generator=g) > 0.2
    c, _ = delta_coefficients(hidden, p, adv, mask, n_refine=K, lambda_w=lw, variance_scaled=vs)
    v = ((1 - p)[..., None] * hidden)[mask].tolist()
    ref = delta_loop(v, adv[mask].tolist(), K=K, lw=lw, vs=vs)
    assert torch.allclose(c[mask].double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5)
    assert torch.all(c[~mask] == 1) and float(c[mask].mean()) == pytest.approx(1.0, abs=1e-5)
    assert torch.isfinite(c).all()


def test_delta_skips_without_both_sides_and_bf16_hidden():
    hidden = torch.randn(2, 3, 4)
    mask = torch.ones(2, 3, dtype=torch.bool)
    c, d = delta_coefficients(hidden, torch.rand(2, 3), torch.ones(2, 3), mask)
    assert torch.all(c == 1) and d["delta_skipped"] == 1.0
    c, _ = delta_coefficients(hidden, torch.rand(2, 3), torch.zeros(2, 3), mask)
    assert torch.all(c == 1)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    c16, _ = delta_coefficients(hidden.bfloat16(), torch.zeros(2, 3), adv, mask)
    c32, _ = delta_coefficients(hidden.bfloat16().float(), torch.zeros(2, 3), adv, mask)
    assert torch.allclose(c16, c32, atol=1e-6) and torch.isfinite(c16).all()
    cv, _ = delta_coefficients(hidden, torch.zeros(2, 3), adv, mask, variance_scaled=True)
    assert torch.isfinite(cv).all() and float(cv.mean()) == pytest.approx(1.0, abs=1e-5)


def test_delta_composes_on_a_base_method():
    trajs = [
        traj("g", [([3, 4], [9]), ([5], [])], 1.0),
        traj("g", [([3, 6], [])], 0.0),
        traj("g", [([4], [])], 0.0),
    ]
    b = GroupBatch.from_trajectories(trajs)
    with pytest.raises(CreditError, match="token_features"):
        assign_credit("delta", b)
    b.token_features["hidden"] = torch.randn(3, b.length, 8, generator=torch.Generator().manual_seed(0))
    base = assign_credit("grpo", b)
    out = assign_credit("delta", b, base="grpo")
    coef, _ = delta_coefficients(
        b.token_features["hidden"], torch.exp(b.old_logprobs), base.advantages, b.action_mask
    )
    assert torch.allclose(out.advantages, base.advantages * coef, atol=1e-6)
    assert not torch.allclose(out.advantages, base.advantages)
    assert "delta_gamma_pos" in out.diagnostics and out.ratio_level == base.ratio_level
    # the refiner API gives the same thing on any upstream output, e.g. a turn-level method's
    assert torch.allclose(refine("delta", base, b).advantages, out.advantages)
    assert "delta" in REFINERS and "delta" in CREDIT
    rl = assign_credit("delta", b, base="rloo")
    assert torch.isfinite(rl.advantages).all()
    with pytest.raises(ConfigError):
        refine("delta", base, b, lambda_mn=0.5)
    with pytest.raises(ConfigError, match="grpo"):
        assign_credit("delta", b, base="grpoo")
    with pytest.raises(ConfigError, match="gamma"):
        assign_credit("gae", b, gamma=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        assign_credit("pure", b, temperature=0.0)


# ==================================================================================================== shared invariants


@HSET
@given(ragged_trajs(with_prm=True), st.sampled_from(["gae", "ppo-bad", "tempo", "pure", "delta"]))
def test_every_token_method_finite_zero_off_mask_and_permutation_equivariant(trajs, name):
    b = GroupBatch.from_trajectories(trajs)
    gen = torch.Generator().manual_seed(len(trajs))
    b.values = torch.randn(b.batch_size, b.length, generator=gen)
    b.token_features["hidden"] = torch.randn(b.batch_size, b.length, 4, generator=gen)
    out = assign_credit(name, b)  # checks shapes, finiteness, zeros off the action mask
    assert torch.isfinite(out.advantages).all()
    if name in ("gae", "ppo-bad", "delta"):
        return  # batch-level whitening / batch statistics: not per-group
    perm = torch.randperm(len(trajs), generator=gen)
    b2 = GroupBatch.from_trajectories([trajs[i] for i in perm.tolist()])
    out2 = assign_credit(name, b2)
    assert torch.allclose(out2.advantages, out.advantages[perm], atol=1e-5)
