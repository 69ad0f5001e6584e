"""`turngym bench provider-quality`: each credit signal on its own, against the env's ground truth.

Credit accuracy (`turngym.bench.credit_accuracy`) scores whole credit methods; this benchmark scores the signal each
one is built on, on the same kind of batch (one batch of group rollouts per policy, ground truth ``V_k`` / ``ΔV_k``
and "hop resolved" = ``info["value_delta"] > 0`` as defined there), to find out where a method's signal carries the
information and where it is noise.

* **Gold-answer probe** (IGPO, A²TGPO): ``s_k`` = mean log-prob of the gold answer's tokens after turn ``k`` (its
  observation included), ``IG_k = s_k − s_{k−1}`` on every turn but the last. Reported per pseudo-response template:
  the env's answer format (`turngym.trainers.batch_signals.answer_template`, what the trainers use), the same tags without
  the spaces the env writes inside them (what the trainers used before that fix), and IGPO's default ``<think>``
  template. Figures: Spearman ρ(IG_k, ΔV_k) pooled over IG turns, AUC of IG for "the turn resolved a hop" (0.5 =
  no information), ρ(s_k, V_k) (does the probe level track progress), the mean probe probability ``exp(s)`` at the
  prompt, after turns with ``V < 1`` and with ``V = 1`` (calibration: does the model believe the answer once it has
  read it), ρ(IG, ΔV) with sum instead of mean over the gold tokens (length normalisation), and the credit the
  method then gives: IGPO's (paper defaults: probability IG, one joint pool with the outcome; and the release's
  log-prob IG with separate pools) and A²TGPO's within-episode ρ(Ā, ΔV), and A²TGPO's ``lift`` (credit-accuracy
  definitions) on these signals. Where the steps' info carries a per-turn gold (TextWorld's remaining plan, which
  the trainers' probe scores after each turn), a row scores the task's gold at every turn instead (the probe before
  that). A last row, ``oracle: IG = ΔV``, feeds the methods a perfect probe (``s_k = V_k``): what their structure
  makes of a perfect signal. The table also gives the mean |IG| (nats).
* **A²TGPO's turn-group normalisation**: ``Ĩ`` = IG z-scored within (group, IG ordinal ``j``): the share of IG turns
  alone in their pool (``Ĩ = 0``), the share in pools whose raw IGs differ by less than 0.01 nats (std: pools of
  near-identical rollouts, whose Ĩ carries no contrast — about 0, or noise scaled up to unit size), ρ(Ĩ, ΔV) next to
  ρ(IG, ΔV) (z-scoring per pool removes every difference between pools), and the share of rows in groups whose
  outcomes are all equal (there ``Â^out = 0`` and the advantage is the IG term alone).
* **SIOP support** ``p̂_k`` (posterior support of the rollout's answer cluster) and shaping ``r_k = log p̂_k −
  log p̂_{k−1}``: per template (the env's answer format vs IGPO's default), references (the rollout's own answer
  cluster as trained, or the gold answer: the gold limit) and position (after the action, before its observation
  = the paper; the same with the action's end-of-turn token moved after the probe, so the pseudo-response continues
  the open assistant message; after the observation = where ``V_k`` is measured, the gold probe's contexts, no
  support after the last turn). Figures: ρ(log p̂_k, V_k) over all turns and split
  by whether the rollout's cluster answer is correct, AUC of the shaping term for "hop resolved", SIOP's
  within-episode ρ(Ā, ΔV) and pooled ρ(Ā, V) on these signals.
  The shaping AUC is also given over non-answer turns only (without the answer turn, whose action writes the answer).
  A last row, ``oracle: shaping = ΔV`` (``log p̂_k = V_k``, ``q = 1``), is what SIOP's pooled normalisation and
  accumulation make of a perfect potential.
* **MatchTIR** ``match_r`` (per-turn tool-call match) on non-answer turns vs ΔV: ρ, AUC, within-episode ρ, and
  P(hop resolved | exact gold call) / P(exact gold call | hop resolved).
* **GiGPO anchors**: how often states repeat in a batch: per anchor source (the env's progress state, used by
  credit-accuracy; the previous observation's text, used by the study), the step groups, the share of turns in a
  group of ≥ 2, the mean size of those groups, and the share of turns whose step group has differing returns (the
  only turns where GiGPO's step advantage is not 0).

CIs: 95% percentile bootstrap over episodes (``bootstrap`` resamples, fixed seed) for the ρ and AUC figures.

Usage::

    turngym bench provider-quality --sft-dir WARM --threads 1 --policy warm --policy late=RUN/checkpoints/step-50
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from turngym.bench import credit_accuracy as ca
from turngym.types import Trajectory

__all__ = ["ORACLE", "ORACLE_SIOP", "auc", "main", "measure", "measure_gigpo", "probe_templates", "run"]

ORACLE = "oracle: IG = ΔV"
"""The reference row of the probe table: a probe equal to the ground-truth value (what each method does with a
perfect signal)."""

ORACLE_SIOP = "oracle: shaping = ΔV"
"""The reference row of the SIOP table: a potential log p̂_k = V_k with q = 1."""

NOSPACE_TEMPLATE = ("<answer>", "</answer>")
"""The probe template of the trainers before the answer-format fix."""


TASK_GOLD = "answer format, the task's gold at every turn"
"""The probe row that ignores the per-turn gold of the steps' info (the probe before it existed)."""


def probe_templates(run_cfg: Any) -> dict[str, tuple[str, str]]:
    """Pseudo-response templates compared: the env's answer format, the tags without spaces, IGPO's default."""
    from turngym.credit.signals import DEFAULT_PROBE_PREFIX, DEFAULT_PROBE_SUFFIX
    from turngym.trainers.batch_signals import answer_template

    out = {"answer format": answer_template(run_cfg)}
    if NOSPACE_TEMPLATE != out["answer format"]:
        out["no-space tags (old)"] = NOSPACE_TEMPLATE
    out["IGPO <think> default"] = (DEFAULT_PROBE_PREFIX, DEFAULT_PROBE_SUFFIX)
    return out


# ------------------------------------------------------------------------------------------------ statistics


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Mann-Whitney AUC: P(score of a positive > score of a negative), ties 0.5; NaN without both classes."""
    from scipy.stats import rankdata

    ok = np.isfinite(score) & np.isfinite(label)
    s, y = score[ok], label[ok] > 0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _pooled(stat: Callable[[np.ndarray], float], n: int, n_boot: int, seed: int) -> dict[str, Any]:
    """``{"value", "ci"}`` of a statistic of episode indices (all episodes, and bootstrap resamples)."""
    idx = ca.bootstrap_indices(n, n_boot, seed)
    return {"value": stat(np.arange(n)), "ci": ca.bootstrap_ci(stat, idx)}


def _rho(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    return _pooled(lambda r: ca._rank_corr(x[r].ravel(), y[r].ravel()), x.shape[0], n_boot, seed)


def _auc(x: np.ndarray, label: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    return _pooled(lambda r: auc(x[r].ravel(), label[r].ravel()), x.shape[0], n_boot, seed)


def _within(x: Tensor, dv: Tensor, n_boot: int, seed: int) -> dict[str, Any]:
    mean, n, ci = ca._mean_ci(ca.within_episode_spearman(x, dv), n_boot, seed)
    return {"value": mean, "ci": ci, "n": n}


def _credit(name: str, batch, dv: Tensor, decisive: Tensor, **overrides) -> dict[str, Any]:
    """Within-episode ρ(Ā, ΔV), pooled ρ(Ā, V) inputs and lift of one method on ``batch`` with signal overrides."""
    from turngym.credit import assign_credit

    out = assign_credit(name, batch, **overrides)
    adv = out.advantages.float().cpu()
    ta = ca.per_turn_advantages(adv, batch.turn_id, batch.turn_mask)
    share, uniform = ca.decisive_mass_share(adv, batch.turn_id, decisive)
    return {"ta": ta, "lift": share / uniform if uniform and math.isfinite(share) else math.nan}


# ------------------------------------------------------------------------------------------------ measures


def _ig_mask(batch) -> Tensor:
    """``[B, K]``: IG-bearing turns (every valid turn but the last of its row)."""
    k = torch.arange(batch.max_turns)[None, :]
    return batch.turn_mask & (k < batch.turn_mask.sum(1, keepdim=True) - 1)


def _nan_where(x: Tensor, keep: Tensor) -> np.ndarray:
    return torch.where(keep, x.double(), torch.full_like(x, math.nan, dtype=torch.float64)).numpy()


def measure_probe(trajs: list[Trajectory], run_cfg: Any, s: Any, batch, v: Tensor, dv: Tensor, decisive: Tensor,
                  n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Gold-probe figures per template (see the module docstring)."""
    from turngym.credit.base import PROMPT_SIGNALS_KEY
    from turngym.credit.groups import composite_key, group_norm_masked
    from turngym.credit.signals import GoldProbeProvider, hf_tokenize
    from turngym.trainers.probe import probe_scorer

    scorer, tok = probe_scorer(s.model, s.pad_id), hf_tokenize(s.tokenizer)
    igm = _ig_mask(batch)
    hop = (dv > 0).double()
    rows = []
    variants = [(label, template, True) for label, template in probe_templates(run_cfg).items()]
    if any(isinstance(u.info, dict) and "gold_answer" in u.info for t in trajs for u in t.turns[:-1]):
        # an env whose gold changes with the state (TextWorld's remaining plan): the task's gold at every turn too
        variants.append((TASK_GOLD, variants[0][1], False))
    variants.append((ORACLE, None, True))
    for t_i, (label, template, turn_gold) in enumerate(variants):
        sig = f"pq_probe_{t_i}"
        if template is None:  # the oracle: s_k = V_k, s_{-1} = V(s_0), so that IG (log_prob_diff) = ΔV exactly
            pre, suf = "", ""
            for i, t in enumerate(trajs):
                for k, u in enumerate(t.turns[:-1]):
                    u.signals[sig] = float(v[i, k])
                if t.turns:
                    t.meta.setdefault(PROMPT_SIGNALS_KEY, {})[sig] = float(v[i, 0] - dv[i, 0])
            n_gold = torch.ones(len(trajs))
        else:
            pre, suf = template
            prov = GoldProbeProvider(scorer, tok, prefix=pre, suffix=suf, signal=sig, turn_gold=turn_gold)
            prov(trajs)
            n_gold = torch.tensor([float(max(1, prov.pseudo(ca_gold(t))[2] - prov.pseudo(ca_gold(t))[1]))
                                   if ca_gold(t) is not None else math.nan for t in trajs])
        b_sig = ca_turn_signal(trajs, sig, batch.max_turns)  # [B, K] s_k
        p_sig = torch.tensor([float(t.meta.get(PROMPT_SIGNALS_KEY, {}).get(sig, math.nan)) for t in trajs])
        prev = torch.cat([p_sig[:, None], b_sig[:, :-1]], dim=1)
        ig = b_sig - prev  # log_prob_diff
        ig_np, dv_np = _nan_where(ig, igm), _nan_where(dv, igm)
        ig_sum = _nan_where(ig * n_gold[:, None], igm)
        ig_prob = _nan_where(b_sig.exp() - prev.exp(), igm)
        lvl = _nan_where(b_sig, igm)
        v_np = _nan_where(v, igm)
        p_k = np.exp(lvl)
        # A²TGPO's turn-group normalisation of the same IG
        b, k_max = batch.turn_mask.shape
        ar = torch.arange(k_max)[None, :].expand(b, k_max)
        key = composite_key(batch.group_index[:, None].expand(b, k_max), ar, k_max)
        fin = igm & torch.isfinite(ig)
        itil, _ = group_norm_masked(torch.nan_to_num(ig, nan=0.0), key, fin, unbiased=False, var_eps=1e-8,
                                    div_eps=1e-6, singleton="zero")
        pool_n = {}
        for kk in key[fin].tolist():
            pool_n[kk] = pool_n.get(kk, 0) + 1
        single = float(np.mean([pool_n[kk] == 1 for kk in key[fin].tolist()])) if bool(fin.any()) else math.nan
        # pools of (near-)identical rollouts: their IGs differ by less than 0.01 nats (no contrast to z-score)
        pool_v: dict[int, list[float]] = {}
        for kk, x in zip(key[fin].tolist(), ig[fin].tolist()):
            pool_v.setdefault(kk, []).append(x)
        flat = [float(np.std(pool_v[kk]) < 0.01) for kk in key[fin].tolist() if pool_n[kk] >= 2]
        flat_share = float(np.mean(flat)) if flat else math.nan
        const_rows = _constant_outcome_rows(batch)
        b2 = _rebatch(trajs, batch)
        igpo = _credit("igpo", b2, dv, decisive, probe_signal=sig)
        a2t = _credit("a2tgpo", b2, dv, decisive, probe_signal=sig)
        igpo_rel = _credit("igpo", b2, dv, decisive, probe_signal=sig, ig_type="log_prob_diff", norm_mode="separate")
        rows.append({
            "template": label, "prefix": pre, "suffix": suf, "ig_turns": int(np.isfinite(ig_np).sum()),
            "ig_abs_mean": _nanmean(np.abs(ig_np)),
            "rho_ig_dv": _rho(ig_np, dv_np, n_boot, seed), "auc_ig_hop": _auc(ig_np, _nan_where(hop, igm), n_boot,
                                                                             seed),
            "rho_igprob_dv": _rho(ig_prob, dv_np, n_boot, seed), "rho_igsum_dv": _rho(ig_sum, dv_np, n_boot, seed),
            "rho_level_v": _rho(lvl, v_np, n_boot, seed),
            "p_prompt": _nanmean(np.exp(p_sig.double().numpy())) if template else math.nan,
            "p_v_lt1": _nanmean(np.where(v_np < 1.0 - 1e-9, p_k, np.nan)) if template else math.nan,
            "p_v_eq1": _nanmean(np.where(v_np >= 1.0 - 1e-9, p_k, np.nan)) if template else math.nan,
            "n_v_eq1": int(np.sum(np.isfinite(p_k) & (v_np >= 1.0 - 1e-9))),
            "rho_itil_dv": _rho(_nan_where(itil.float(), fin), dv_np, n_boot, seed),
            "a2tgpo_singleton_share": single, "constant_outcome_rows": const_rows, "a2tgpo_flat_share": flat_share,
            "igpo_within": _within(igpo["ta"], dv, n_boot, seed), "a2tgpo_within": _within(a2t["ta"], dv, n_boot,
                                                                                           seed),
            "igpo_rho_dv": _rho(igpo["ta"].double().numpy(), dv.double().numpy(), n_boot, seed),
            "a2tgpo_rho_dv": _rho(a2t["ta"].double().numpy(), dv.double().numpy(), n_boot, seed),
            "a2tgpo_lift": a2t["lift"], "igpo_lift": igpo["lift"],
            "igpo_release_within": _within(igpo_rel["ta"], dv, n_boot, seed),
        })
    return rows


def _rebatch(trajs: list[Trajectory], batch):
    """The batch again from ``trajs`` (new signals), with ``batch``'s behaviour log-probs and values."""
    from turngym.credit import GroupBatch

    b2 = GroupBatch.from_trajectories(trajs, pad_id=batch.pad_id)
    b2.old_logprobs, b2.values = batch.old_logprobs, batch.values
    return b2


def ca_gold(t: Trajectory) -> str | None:
    g = t.meta.get("gold_answer")
    if isinstance(g, (list, tuple)):
        return str(g[0]) if g else None
    return None if g is None else str(g)


def ca_turn_signal(trajs: list[Trajectory], name: str, k_max: int) -> Tensor:
    """``[B, K]`` float64 of ``Turn.signals[name]`` (NaN where absent)."""
    out = torch.full((len(trajs), k_max), math.nan, dtype=torch.float64)
    for i, t in enumerate(trajs):
        for k, u in enumerate(t.turns):
            if name in u.signals and u.signals[name] is not None:
                out[i, k] = float(u.signals[name])
    return out


def _constant_outcome_rows(batch) -> float:
    """Share of rows whose group's outcomes are all equal (the outcome baseline gives them 0)."""
    g = batch.group_index.numpy()
    o = torch.nan_to_num(batch.outcome.double(), nan=0.0).numpy()
    const = {gi: bool(np.ptp(o[g == gi]) == 0) for gi in np.unique(g)}
    return float(np.mean([const[gi] for gi in g]))


def measure_siop(trajs: list[Trajectory], run_cfg: Any, s: Any, batch, v: Tensor, dv: Tensor, decisive: Tensor,
                 n_boot: int, seed: int) -> list[dict[str, Any]]:
    """SIOP support figures per (template, references, position) (see the module docstring)."""
    from turngym.credit.base import PROMPT_SIGNALS_KEY
    from turngym.credit.signals import GoldProbeProvider, OutcomeClusterProvider, SupportProvider, hf_tokenize
    from turngym.trainers.probe import probe_scorer

    scorer, tok = probe_scorer(s.model, s.pad_id), hf_tokenize(s.tokenizer)
    if not any("siop_refs" in t.meta for t in trajs):
        OutcomeClusterProvider()(trajs)
    own_refs = [list(t.meta.get("siop_refs") or []) for t in trajs]
    own_q = [t.meta.get(PROMPT_SIGNALS_KEY, {}).get("siop_q", 0.0) for t in trajs]
    # the cluster answer of a rollout (its first reference) is correct?
    cl_ok = torch.tensor([bool(r) and _correct_text(r[0], t) for r, t in zip(own_refs, trajs)])
    has_ref = torch.tensor([bool(r) for r in own_refs])
    templates = probe_templates(run_cfg)
    variants = []
    for label in templates:
        if label == "no-space tags (old)":
            continue
        for refs in ("own cluster", "gold"):
            for pos in ("before obs", "before obs, turn left open", "after obs"):
                variants.append((label, refs, pos))
    variants.append((ORACLE_SIOP, "gold", "oracle"))
    valid = batch.turn_mask
    hop = (dv > 0).double()
    answer = _answer_turns(trajs, batch)
    rows = []
    for n_v, (label, refs, pos) in enumerate(variants):
        pre, suf = templates.get(label, ("", ""))
        sig = f"pq_sup_{n_v}"
        for t, r in zip(trajs, own_refs):
            gold = ca_gold(t)
            t.meta["pq_refs"] = ([gold] if gold is not None else []) if refs == "gold" else r
            t.meta["pq_ref0"] = t.meta["pq_refs"][0] if t.meta["pq_refs"] else None
        if pos == "oracle":  # log p̂_k = V_k, log p̂_{-1} = V(s_0), q = 1: shaping = ΔV exactly
            pre, suf = "", ""
            sup = torch.where(valid, v.double(), torch.full_like(v, math.nan, dtype=torch.float64)).exp()
            for i, t in enumerate(trajs):
                if t.turns:
                    t.meta.setdefault(PROMPT_SIGNALS_KEY, {})[sig] = math.exp(float(v[i, 0] - dv[i, 0]))
        elif pos == "before obs":
            saved = [t.meta.get("siop_refs") for t in trajs]
            for t in trajs:
                t.meta["siop_refs"] = t.meta["pq_refs"]
            SupportProvider(scorer, tok, prefix=pre, suffix=suf, signal=sig)(trajs)
            for t, r in zip(trajs, saved):
                t.meta["siop_refs"] = r
            sup = ca_turn_signal(trajs, sig, batch.max_turns)
        elif pos == "before obs, turn left open":  # the action's end-of-turn token moved into its observation
            eos = s.tokenizer.eos_token_id
            copies = []
            for t in trajs:
                c = copy.copy(t)
                c.meta = {**t.meta, "siop_refs": t.meta["pq_refs"]}  # prompt_signals: the same dict
                c.turns = []
                for u in t.turns:
                    uc = copy.copy(u)
                    uc.signals = {}
                    if eos is not None and uc.action_ids and uc.action_ids[-1] == eos:
                        uc.action_ids, uc.obs_ids = list(u.action_ids[:-1]), [eos, *u.obs_ids]
                    c.turns.append(uc)
                copies.append(c)
            SupportProvider(scorer, tok, prefix=pre, suffix=suf, signal=sig)(copies)
            sup = ca_turn_signal(copies, sig, batch.max_turns)
        else:  # the gold probe's contexts (after each turn's observation), scoring the first reference
            GoldProbeProvider(scorer, tok, prefix=pre, suffix=suf, gold_key="pq_ref0", signal=sig)(trajs)
            sup = ca_turn_signal(trajs, sig, batch.max_turns).exp()
            for t in trajs:  # the probe after the final turn is never run: that turn has no support
                ps = t.meta.get(PROMPT_SIGNALS_KEY, {})
                if sig in ps:
                    ps[sig] = math.exp(ps[sig])
        for i, t in enumerate(trajs):  # signals for the SIOP credit run
            for k, u in enumerate(t.turns):
                if math.isfinite(float(sup[i, k])):
                    u.signals[sig] = float(sup[i, k])
            t.meta.setdefault(PROMPT_SIGNALS_KEY, {})[f"{sig}_q"] = 1.0 if refs == "gold" else own_q[i]
        logp = torch.log(sup + 1e-8)
        p_prompt = torch.tensor([float(t.meta.get(PROMPT_SIGNALS_KEY, {}).get(sig, math.nan)) for t in trajs],
                                dtype=torch.float64)
        prev = torch.cat([torch.log(p_prompt + 1e-8)[:, None], logp[:, :-1]], dim=1)
        shaping = logp - prev
        # after obs: the support of turn k is known for k < T - 1 only
        known = valid & torch.isfinite(logp)
        lv = _nan_where(logp, known)
        v_np = _nan_where(v, known)
        ok_rows = (cl_ok if refs != "gold" else torch.ones_like(cl_ok))[:, None] & known
        bad_rows = (~cl_ok & has_ref)[:, None] & known if refs != "gold" else torch.zeros_like(known)
        cred = _credit("siop", _rebatch(trajs, batch), dv, decisive, support_signal=sig, q_signal=f"{sig}_q")
        rows.append({
            "template": label, "refs": refs, "position": pos, "turns": int(known.sum()),
            "rho_logp_v": _rho(lv, v_np, n_boot, seed),
            "rho_logp_v_correct": _rho(_nan_where(logp, ok_rows), _nan_where(v, ok_rows), n_boot, seed),
            "rho_logp_v_wrong": _rho(_nan_where(logp, bad_rows), _nan_where(v, bad_rows), n_boot, seed),
            "n_correct_rows": int((cl_ok & has_ref).sum()) if refs != "gold" else len(trajs),
            "n_wrong_rows": int((~cl_ok & has_ref).sum()) if refs != "gold" else 0,
            "auc_shaping_hop": _auc(_nan_where(shaping, known), _nan_where(hop, known), n_boot, seed),
            "auc_shaping_hop_search": _auc(_nan_where(shaping, known & ~answer), _nan_where(hop, known & ~answer),
                                           n_boot, seed),
            "rho_shaping_dv": _rho(_nan_where(shaping, known), _nan_where(dv, known), n_boot, seed),
            "siop_within": _within(cred["ta"], dv, n_boot, seed),
            "siop_rho_v": _rho(cred["ta"].double().numpy(), v.double().numpy(), n_boot, seed),
        })
    for t in trajs:
        for key in ("pq_refs", "pq_ref0"):
            t.meta.pop(key, None)
    return rows


def _correct_text(answer: str, t: Trajectory) -> bool:
    from turngym.credit.siop import normalize_answer

    gold = ca_gold(t)
    return gold is not None and normalize_answer(str(answer)) == normalize_answer(gold)


def _answer_turns(trajs: list[Trajectory], batch) -> Tensor:
    """``[B, K]`` bool: the answer turn of each answered trajectory."""
    ans = torch.zeros_like(batch.turn_mask)
    for i, t in enumerate(trajs):
        if t.final_answer is not None and t.turns:
            ans[i, len(t.turns) - 1] = True
    return ans


def measure_matchtir(trajs: list[Trajectory], batch, dv: Tensor, n_boot: int, seed: int) -> dict[str, Any]:
    """MatchTIR's per-turn match reward on non-answer turns vs ΔV."""
    m = ca_turn_signal(trajs, "match_r", batch.max_turns)
    ans = _answer_turns(trajs, batch)
    keep = batch.turn_mask & ~ans & torch.isfinite(m)
    m_np, dv_np = _nan_where(m.float(), keep), _nan_where(dv, keep)
    hop = np.where(np.isfinite(dv_np), (dv_np > 0).astype(float), np.nan)
    exact = np.isfinite(m_np) & (m_np >= 1.0 - 1e-9)
    resolved = np.isfinite(dv_np) & (dv_np > 0)
    return {"turns": int(keep.sum()), "rho_match_dv": _rho(m_np, dv_np, n_boot, seed),
            "auc_match_hop": _auc(m_np, hop, n_boot, seed),
            "within": _within(torch.from_numpy(m_np), torch.from_numpy(dv_np), n_boot, seed),
            "p_hop_given_exact": float(resolved[exact].mean()) if exact.any() else math.nan,
            "p_exact_given_hop": float(exact[resolved].mean()) if resolved.any() else math.nan,
            "n_exact": int(exact.sum()), "n_hop": int(resolved.sum())}


def measure_gigpo(batch) -> list[dict[str, Any]]:
    """How often GiGPO's anchor states repeat within a prompt group, per anchor source."""
    from turngym.credit.gigpo import GiGPOConfig, anchor_keys
    from turngym.credit.groups import reverse_discounted_cumsum

    ret = reverse_discounted_cumsum(batch.turn_rewards.double(), batch.turn_mask, 0.95)
    rows = []
    for source in ("info", "observation"):
        keys = anchor_keys(batch, GiGPOConfig(anchor_source=source))
        on = batch.turn_mask & (keys >= 0)
        k = keys[on].tolist()
        r = ret[on].tolist()
        sizes: dict[int, int] = {}
        vals: dict[int, list[float]] = {}
        for kk, rr in zip(k, r):
            sizes[kk] = sizes.get(kk, 0) + 1
            vals.setdefault(kk, []).append(rr)
        n = len(k)
        multi = [kk for kk in k if sizes[kk] >= 2]
        differ = [kk for kk in k if sizes[kk] >= 2 and max(vals[kk]) - min(vals[kk]) > 1e-9]
        big = [sz for sz in sizes.values() if sz >= 2]
        rows.append({"anchor": "env progress state (credit-accuracy)" if source == "info"
                     else "previous observation text (study)", "turns": n, "step_groups": len(sizes),
                     "share_in_group_ge2": len(multi) / n if n else math.nan,
                     "mean_size_ge2": float(np.mean(big)) if big else math.nan,
                     "share_informative": len(differ) / n if n else math.nan})
    return rows


def measure(trajs: list[Trajectory], run_cfg: Any, s: Any, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every signal's figures on one batch of group rollouts (signals of the trainers' providers already filled)."""
    batch = ca._prepare_batch(trajs, s.model, s.pad_id, [])
    v, dv, decisive = ca.turn_ground_truth(trajs, batch.max_turns)
    return {"probe": measure_probe(trajs, run_cfg, s, batch, v, dv, decisive, n_boot, seed),
            "siop": measure_siop(trajs, run_cfg, s, batch, v, dv, decisive, n_boot, seed),
            "matchtir": measure_matchtir(trajs, batch, dv, n_boot, seed),
            "gigpo": measure_gigpo(batch),
            "batch": {"trajectories": len(trajs), "turns": int(batch.turn_mask.sum()),
                      "success": float(np.mean([bool((t.meta.get("rollout") or {}).get("success")) for t in trajs])),
                      "answered": float(np.mean([t.final_answer is not None for t in trajs])),
                      "empty_answers": float(np.mean([t.final_answer is not None and not t.final_answer.strip()
                                                      for t in trajs])),
                      "hop_turns": int((dv > 0).sum())}}


# ------------------------------------------------------------------------------------------------ run, report


def run(cfg: ca.CreditAccuracyConfig, log=print) -> dict[str, Any]:
    """Every policy of ``cfg``: one group batch each (``cfg.tasks`` x ``cfg.group_size``), measured; writes
    ``provider_quality.md`` and ``provider_quality.json`` into ``cfg.out_dir``."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    policies = []
    for name, source in cfg.policies:
        log(f"provider-quality: policy {name} ({source})")
        loaded = ca.load_policy(cfg, source, log=log)
        trajs, s, info = ca.rollout_batch(cfg, log=log, loaded=loaded)
        s.model.eval()
        m = measure(trajs, loaded[0], s, n_boot=cfg.bootstrap, seed=cfg.seed)
        policies.append({"name": name, "source": source, **m,
                         "info": {k: v for k, v in info.items() if k not in ("sft",)}})
    summary = {"config": dataclasses.asdict(cfg), "policies": policies, "machine": ca.machine(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": time.perf_counter() - t0}
    paths = {"table": out_dir / "provider_quality.md", "json": out_dir / "provider_quality.json"}
    paths["table"].write_text(markdown(summary), encoding="utf-8")
    summary["paths"] = {k: str(p) for k, p in paths.items()}
    paths["json"].write_text(json.dumps(ca.jsonable(summary), indent=1, default=str, allow_nan=False),
                             encoding="utf-8")
    return summary


def _v(d: dict[str, Any] | None, fmt: str = ".3f") -> str:
    """``value [lo, hi]`` of a ``{"value", "ci"}`` figure."""
    if not d:
        return "n/a"
    return ca._ci({"x": d.get("value"), "ci": {"x": d.get("ci")}}, "x", fmt)


def markdown(summary: dict[str, Any]) -> str:
    """The markdown report: per policy, one table per signal."""
    c = summary["config"]
    lines = [(f"Signals of the credit methods vs the ground truth of {c['env_id']}; 95% bootstrap CIs over episodes "
             f"({c['bootstrap']} resamples)."), ""]
    for p in summary["policies"]:
        b = p["batch"]
        lines += [f"#### Policy `{p['name']}` ({p['source']})", "",
                  (f"{b['trajectories']} trajectories ({c['tasks']} tasks x G={c['group_size']}), {b['turns']} turns, "
                  f"{b['hop_turns']} hop-resolving; success {b['success']:.2f}, answered {b['answered']:.2f} (empty answers "
                   f"{b.get('empty_answers', math.nan):.2f})."), "",
                  "Gold-answer probe (IGPO / A²TGPO), IG = s_k − s_{k−1} on every turn but the last:", "",
                  ("| template | IG turns | mean abs IG (nats) | ρ(IG, ΔV) | AUC(IG, hop) | ρ(IG sum, ΔV) | ρ(IG prob, ΔV) | ρ(s_k, V_k) "
                  "| p̄ prompt / V<1 / V=1 | IGPO within-ep ρ(Ā, ΔV) | IGPO (log-prob IG, separate pools) within-ep "
                  "ρ(Ā, ΔV) | A²TGPO within-ep ρ(Ā, ΔV) | A²TGPO lift |"),
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in p["probe"]:
            lines.append(
                f"| {r['template']} | {r['ig_turns']} | {ca._f(r.get('ig_abs_mean'), '.2g')} | {_v(r['rho_ig_dv'])} | {_v(r['auc_ig_hop'])} | "
                f"{_v(r['rho_igsum_dv'])} | {_v(r['rho_igprob_dv'])} | {_v(r['rho_level_v'])} | "
                f"{ca._f(r['p_prompt'])} / {ca._f(r['p_v_lt1'])} / {ca._f(r['p_v_eq1'])} (n={r['n_v_eq1']}) | "
                f"{_v(r['igpo_within'])} | {_v(r['igpo_release_within'])} | {_v(r['a2tgpo_within'])} | "
                f"{ca._f(r['a2tgpo_lift'], '.2f')} |")
        lines += ["", "A²TGPO's turn-group normalisation (same IG):", "",
                  ("| template | ρ(IG, ΔV) | ρ(Ĩ, ΔV) | IG turns alone in their (group, j) pool | IG turns in a pool "
                   "whose IGs differ by < 0.01 (std) | rows in groups with equal outcomes (Â^out = 0) |"),
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in p["probe"]:
            lines.append(f"| {r['template']} | {_v(r['rho_ig_dv'])} | {_v(r['rho_itil_dv'])} | "
                         f"{ca._f(r['a2tgpo_singleton_share'], '.2f')} | {ca._f(r.get('a2tgpo_flat_share'), '.2f')} | "
                         f"{ca._f(r['constant_outcome_rows'], '.2f')} |")
        lines += ["", ("SIOP support p̂_k of the rollout's answer cluster (or of the gold answer), shaping = "
                  "log p̂_k − log p̂_{k−1}:"), "",
                  ("| template | refs | position | turns | ρ(log p̂, V) | ρ(log p̂, V) correct cluster | ρ(log p̂, V) "
                  "wrong cluster | AUC(shaping, hop) | AUC(shaping, hop), non-answer turns | SIOP within-ep "
                  "ρ(Ā, ΔV) | SIOP ρ(Ā, V) pooled |"),
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in p["siop"]:
            lines.append(
                f"| {r['template']} | {r['refs']} | {r['position']} | {r['turns']} | {_v(r['rho_logp_v'])} | "
                f"{_v(r['rho_logp_v_correct'])} (rows {r['n_correct_rows']}) | {_v(r['rho_logp_v_wrong'])} "
                f"(rows {r['n_wrong_rows']}) | {_v(r['auc_shaping_hop'])} | {_v(r['auc_shaping_hop_search'])} | "
                f"{_v(r['siop_within'])} | "
                f"{_v(r['siop_rho_v'])} |")
        mt = p["matchtir"]
        lines += ["", "MatchTIR match reward on non-answer turns:", "",
                  ("| turns | ρ(match_r, ΔV) | AUC(match_r, hop) | within-ep ρ(match_r, ΔV) | P(hop \\| exact call) "
                  "| P(exact call \\| hop) |"), "| ---: | ---: | ---: | ---: | ---: | ---: |",
                  (f"| {mt['turns']} | {_v(mt['rho_match_dv'])} | {_v(mt['auc_match_hop'])} | "
                  f"{_v(mt['within'])} (n={mt['within']['n']}) | {ca._f(mt['p_hop_given_exact'])} "
                  f"(n={mt['n_exact']}) | {ca._f(mt['p_exact_given_hop'])} (n={mt['n_hop']}) |"),
                  "", "GiGPO anchor groups (states repeated within a task's group):", "",
                  ("| anchor | turns | step groups | turns in a group of ≥ 2 | mean size of those | turns with a "
                  "non-zero step advantage |"), "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in p["gigpo"]:
            lines.append(f"| {r['anchor']} | {r['turns']} | {r['step_groups']} | "
                         f"{ca._f(r['share_in_group_ge2'], '.2f')} | {ca._f(r['mean_size_ge2'], '.1f')} | "
                         f"{ca._f(r['share_informative'], '.2f')} |")
        lines.append("")
    lines += [f"Machine: {summary['machine']}. Date: {summary['date']}. Wall time {summary['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = ca.build_parser()
    p.prog = "turngym bench provider-quality"
    p.description = __doc__.split("\n\n")[0]
    p.set_defaults(out="bench_out/provider-quality")
    return p


def main(argv: list[str] | None = None) -> int:
    """``turngym bench provider-quality [...]`` (the options of credit-accuracy; tree and method options unused)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    cfg = ca.config_from_args(args)
    summary = run(cfg, log=lambda m: print(m, file=sys.stderr))
    print(Path(summary["paths"]["table"]).read_text(encoding="utf-8"))
    print(f"wrote {summary['paths']['table']}, {summary['paths']['json']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
