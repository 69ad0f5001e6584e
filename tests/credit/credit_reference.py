"""Slow loop references of the turn-level credit methods, written directly from spec/credit.md.

Plain Python over lists (no torch ops on the math), one function per method. Each returns per-row lists of turn
advantages (length T_i). Used by the equivalence tests and by benchmarks/credit.py.
"""

from __future__ import annotations

import math
from collections import defaultdict

NAN = float("nan")


def fin(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def rows(batch):
    """Per-row python data pulled out of a GroupBatch."""
    out = []
    tm = batch.turn_mask.tolist()
    for i in range(batch.batch_size):
        t = sum(tm[i])
        out.append({
            "g": int(batch.group_index[i]),
            "T": t,
            "outcome": float(batch.outcome[i]),
            "has_answer": bool(batch.has_answer[i]),
            "sig": {n: v[i, :t].tolist() for n, v in batch.turn_signals.items()},
            "psig": {n: float(v[i]) for n, v in batch.prompt_signals.items()},
            "rew": batch.turn_rewards[i, :t].tolist(),
        })
    return out


def ref_group_norm(items, *, unbiased=True, var_eps=0.0, div_eps=1e-6, singleton="zero", std_floor=None, scale=True):
    """items: list of (key, value or NaN). Returns list of normalised values."""
    groups = defaultdict(list)
    for key, v in items:
        if fin(v):
            groups[key].append(v)
    out = []
    for key, v in items:
        if not fin(v):
            out.append(0.0)
            continue
        xs = groups[key]
        n = len(xs)
        if n == 1:
            if singleton == "zero":
                out.append(0.0)
            else:
                out.append(v / (1.0 + div_eps) if scale else v)
            continue
        if max(xs) == min(xs):
            out.append(0.0)
            continue
        mu = sum(xs) / n
        ss = sum((x - mu) ** 2 for x in xs)
        var = ss / (n - 1) if unbiased else ss / n
        s = math.sqrt(var + var_eps)
        if std_floor is not None and s < std_floor:
            s = 1.0
        out.append((v - mu) / (s + div_eps) if scale else v - mu)
    return out


def ref_cumsum(vals, gamma):
    out = [0.0] * len(vals)
    run = 0.0
    for k in range(len(vals) - 1, -1, -1):
        run = vals[k] + gamma * run
        out[k] = run
    return out


def ref_grpo(batch, norm_adv_by_std=True, singleton="raw"):
    rs = rows(batch)
    a = ref_group_norm([(r["g"], r["outcome"]) for r in rs], singleton=singleton, scale=norm_adv_by_std)
    return [[a[i]] * r["T"] for i, r in enumerate(rs)]


def ref_rloo(batch):
    rs = rows(batch)
    out = []
    for i, r in enumerate(rs):
        if not fin(r["outcome"]):
            out.append([0.0] * r["T"])
            continue
        others = [q["outcome"] for j, q in enumerate(rs) if j != i and q["g"] == r["g"] and fin(q["outcome"])]
        a = r["outcome"] - (sum(others) / len(others) if others else 0.0)
        out.append([a] * r["T"])
    return out


def ref_reinforce_pp(batch):
    rs = rows(batch)
    a = ref_group_norm([(0, r["outcome"]) for r in rs], var_eps=1e-8, div_eps=0.0)
    return [[a[i]] * r["T"] for i, r in enumerate(rs)]


def _ig(r, ig_type, sig="probe_score"):
    probe = r["sig"].get(sig, [NAN] * r["T"])
    prev = r["psig"].get(sig, NAN)
    ig = []
    for k in range(r["T"] - 1):
        cur = probe[k]
        if fin(cur) and fin(prev):
            ig.append(math.exp(cur) - math.exp(prev) if ig_type == "prob_diff" else cur - prev)
        else:
            ig.append(NAN)
        prev = cur
    return ig


def ref_igpo(batch, ig_type="prob_diff", norm_mode="joint", gamma=1.0, format_fail_reward=-2.0):
    rs = rows(batch)
    items, where = [], []
    for i, r in enumerate(rs):
        out = r["outcome"] if (r["has_answer"] or format_fail_reward is None) else format_fail_reward
        rew = _ig(r, ig_type) + ([out] if r["T"] else [])
        for k, v in enumerate(rew):
            is_out = k == r["T"] - 1
            key = (r["g"], is_out) if norm_mode == "separate" else r["g"]
            items.append((key, v))
            where.append((i, k))
    normed = ref_group_norm(items, unbiased=False, var_eps=1e-8)
    per = [[0.0] * r["T"] for r in rs]
    for (i, k), v in zip(where, normed):
        per[i][k] = v
    return [ref_cumsum(p, gamma) for p in per]


def ref_a2tgpo(batch, alpha=0.3, beta=0.3, gamma=1.0, ig_baseline="prompt"):
    rs = rows(batch)
    igs = []
    for r in rs:
        ig = _ig(r, "log_prob_diff")
        if ig_baseline == "after_first_turn" and ig:
            ig[0] = NAN
        igs.append(ig)
    # ordinal lists of IG-bearing turns
    bearing = [[k for k, v in enumerate(ig) if fin(v)] for ig in igs]
    items, where = [], []
    for i, r in enumerate(rs):
        for j, k in enumerate(bearing[i]):
            items.append(((r["g"], j), igs[i][k]))
            where.append((i, j))
    normed = ref_group_norm(items, unbiased=False, var_eps=1e-8)
    itil = [[0.0] * len(b) for b in bearing]
    for (i, j), v in zip(where, normed):
        itil[i][j] = v
    a_out = ref_group_norm([(r["g"], r["outcome"]) for r in rs], unbiased=False, var_eps=1e-8)
    adv, clip = [], []
    for i, r in enumerate(rs):
        n = len(bearing[i])
        s = ref_cumsum(itil[i], gamma)
        a_turn = [None] * r["T"]
        c_turn = [None] * r["T"]
        for j, k in enumerate(bearing[i]):
            a_turn[k] = alpha * s[j] / math.sqrt(n - j) + a_out[i]
            c_turn[k] = 1 + beta * math.tanh(itil[i][j] / 2)
        if r["T"]:
            a_turn[-1], c_turn[-1] = a_out[i], 1.0
        for k in range(r["T"] - 2, -1, -1):
            if a_turn[k] is None:
                a_turn[k], c_turn[k] = a_turn[k + 1], c_turn[k + 1]
        adv.append(a_turn)
        clip.append(c_turn)
    return adv, clip


def ref_matchtir(batch, lam=0.9, turn_singleton="raw"):
    rs = rows(batch)
    rew = [[v if fin(v) else 0.0 for v in r["sig"]["match_r"]] for r in rs]
    a_traj = ref_group_norm([(r["g"], sum(rew[i])) for i, r in enumerate(rs)], singleton="raw")
    items, where = [], []
    gts = [ref_cumsum(x, lam) for x in rew]
    for i, r in enumerate(rs):
        for k, v in enumerate(gts[i]):
            items.append(((r["g"], k), v))
            where.append((i, k))
    normed = ref_group_norm(items, singleton=turn_singleton)
    out = [[0.0] * r["T"] for r in rs]
    for (i, k), v in zip(where, normed):
        out[i][k] = 0.5 * a_traj[i] + 0.5 * v
    return out


def ref_siop_rewards(batch, lam=0.5, eps=1e-8):
    rs = rows(batch)
    allr = []
    for r in rs:
        q = r["psig"].get("siop_q", NAN)
        q = q if fin(q) else 0.0
        sup = [r["psig"].get("siop_support", NAN)] + r["sig"].get("siop_support", [NAN] * r["T"])
        rew = []
        for k in range(r["T"]):
            term = 0.0
            if r["T"] > 1 and fin(sup[k + 1]) and fin(sup[k]):
                term = q * (math.log(sup[k + 1] + eps) - math.log(sup[k] + eps))
            if k == r["T"] - 1:
                term += (1 - lam) * q
            rew.append(term)
        allr.append(rew)
    return allr


def ref_siop(batch, lam=0.5, gamma=1.0):
    rs = rows(batch)
    allr = ref_siop_rewards(batch, lam)
    items, where = [], []
    for i, r in enumerate(rs):
        for k, v in enumerate(allr[i]):
            items.append((r["g"], v))
            where.append((i, k))
    normed = ref_group_norm(items, std_floor=1e-6)
    per = [[0.0] * r["T"] for r in rs]
    for (i, k), v in zip(where, normed):
        per[i][k] = v
    return [ref_cumsum(p, gamma) for p in per]


def ref_slate(batch, budget=4, lam_b=0.1):
    rs = rows(batch)
    items = []
    for r in rs:
        if r["T"] == 0:
            items.append((r["g"], NAN))
            continue
        th = r["sig"]["judge_think"][-1]
        ac = r["sig"]["judge_action"][-1]
        th = max(-1, min(1, round(th))) if fin(th) else 0.0
        ac = max(-1, min(1, round(ac))) if fin(ac) else 0.0
        ia = r["sig"].get("slate_is_answer", [NAN])[-1]
        is_ans = (ia > 0.5) if fin(ia) else r["has_answer"]
        t = r["sig"].get("slate_step", [0.0])[-1]
        items.append((r["g"], th + ac + (lam_b * (budget - t) / budget if is_ans else 0.0)))
    a = ref_group_norm(items)
    return [[a[i]] * r["T"] for i, r in enumerate(rs)]


def ref_gigpo(batch, anchors, gamma=0.95, omega=1.0, mode="mean_std_norm", episode_stats="per_trajectory"):
    """anchors[i][k]: hashable anchor or None."""
    rs = rows(batch)
    scale = mode == "mean_std_norm"
    big = [sum(r["rew"]) for r in rs]
    if episode_stats == "per_trajectory":
        a_e = ref_group_norm([(r["g"], big[i] if r["T"] else NAN) for i, r in enumerate(rs)], singleton="raw",
                             scale=scale)
    else:
        items, owner = [], []
        for i, r in enumerate(rs):
            for _ in range(r["T"]):
                items.append((r["g"], big[i]))
                owner.append(i)
        normed = ref_group_norm(items, singleton="raw", scale=scale)
        a_e = [0.0] * len(rs)
        for i, v in zip(owner, normed):
            a_e[i] = v
    items, where = [], []
    for i, r in enumerate(rs):
        gt = ref_cumsum(r["rew"], gamma)
        for k in range(r["T"]):
            a = anchors[i][k]
            key = (r["g"], a) if a is not None else ("unique", i, k)
            items.append((key, gt[k]))
            where.append((i, k))
    normed = ref_group_norm(items, scale=scale)
    out = [[0.0] * r["T"] for r in rs]
    for (i, k), v in zip(where, normed):
        out[i][k] = a_e[i] + omega * v
    return out


def ref_broadcast(batch, turn_adv):
    """Loop broadcast of per-turn lists to [B][L] lists."""
    tid = batch.turn_id.tolist()
    return [[turn_adv[i][k] if k >= 0 else 0.0 for k in tid[i]] for i in range(batch.batch_size)]
