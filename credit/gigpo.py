"""GiGPO — anchor-state step groups plus episode groups (spec §8).

Episode advantage ``A^E`` = GRPO over the group's episode returns ``R_i = Σ_t r_{i,t}`` (``Turn.reward``). Step
advantage ``A^S`` = normalisation of the discounted step return ``G_{i,t}`` within the steps of the same prompt
group that saw the same anchor observation. ``A = A^E + ω·A^S`` broadcast to each step's policy tokens.

Anchors come from ``Turn.info["anchor_obs"]`` (the environment state shown before the action, without history;
compared by exact equality of the value, unhashable values by their JSON rendering); with ``anchor_source="observation"`` the text of the previous observation messages
(the prompt's last message for turn 0) is used instead. A turn without an anchor is its own singleton (A^S = 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Literal

import torch
from torch import Tensor

from turngym.credit.base import ANCHOR_KEY, CreditOutput, GroupBatch, finish, register_credit
from turngym.credit.groups import group_norm_masked, group_norm_with_stats, reverse_discounted_cumsum

__all__ = ["GiGPOConfig", "anchor_keys", "gigpo_turn_advantages"]


@dataclass(frozen=True)
class GiGPOConfig:
    """GiGPO (spec §8); defaults = the ALFWorld script (γ 0.95, ω 1, mean_std_norm)."""

    gamma: float = 0.95
    """Discount of the step return."""
    omega: float = 1.0
    """Weight of the step advantage."""
    mode: Literal["mean_std_norm", "mean_norm"] = "mean_std_norm"
    """Divide by std_u + 1e-6 (mean_std_norm) or not (mean_norm)."""
    episode_stats: Literal["per_trajectory", "per_step_row"] = "per_trajectory"
    """Episode statistics over trajectories (paper) or over step rows (verl-agent parity)."""
    anchor_source: Literal["info", "observation"] = "info"
    """Where anchors come from: Turn.info[anchor_key] or the previous observation's text."""
    anchor_key: str = "anchor_obs"
    """Key in Turn.info when anchor_source="info"."""
    similarity_threshold: float | None = None
    """If set (e.g. 0.95): greedy first-fit grouping instead of exact equality: a turn joins the first cluster (in
    trajectory, then turn order) whose first member ``rep`` has ``SequenceMatcher(None, anchor, rep).ratio() >=
    threshold``, the argument order of verl-agent's ``are_similar(obs, cluster["rep"])`` (the ratio is not
    symmetric)."""


def _render(v: Any) -> str:
    if isinstance(v, str):
        return v
    try:
        return json.dumps(v, sort_keys=True, ensure_ascii=False)
    except TypeError:
        return repr(v)


def _anchor_text(traj, k: int, cfg: GiGPOConfig) -> str | None:
    if cfg.anchor_source == "info":
        info = traj.turns[k].info or {}
        return _render(info[cfg.anchor_key]) if cfg.anchor_key in info and info[cfg.anchor_key] is not None else None
    msgs = traj.prompt_messages[-1:] if k == 0 else traj.turns[k - 1].obs_messages
    if not msgs:
        return None
    return "\n".join(str(m.get("content", "")) for m in msgs)


def anchor_keys(batch: GroupBatch, cfg: GiGPOConfig = GiGPOConfig()) -> Tensor:
    """``[B, K]`` long: one id per (prompt group, anchor state); a unique id for turns without an anchor; −1 on
    invalid turns. Host side (strings)."""
    k_max = batch.max_turns
    if (batch.anchor_ids is not None and cfg.anchor_source == "info" and cfg.anchor_key == ANCHOR_KEY
            and cfg.similarity_threshold is None):
        # hashed once in GroupBatch.from_trajectories; turns without an anchor get unique ids
        anc = batch.anchor_ids
        lone = batch.turn_mask & (anc < 0)
        base = int(anc.max()) + 1 if anc.numel() else 0
        uniq = base + torch.cumsum(lone.flatten().long(), 0).view_as(anc) - 1
        out = torch.where(lone, uniq, anc)
        return torch.where(batch.turn_mask, out, torch.full_like(out, -1))
    rows: list[list[int]] = []
    ids: dict[tuple[int, str], int] = {}
    firsts: dict[int, list[tuple[str, int]]] = {}
    nxt = 0
    gi = batch.group_index.tolist()
    fast = cfg.anchor_source == "info" and cfg.similarity_threshold is None
    key_name = cfg.anchor_key
    for i, traj in enumerate(batch.trajectories):
        row = [-1] * k_max
        if fast:  # exact anchors from Turn.info: one dict lookup per turn
            g = gi[i]
            sd = ids.setdefault
            try:
                # a turn without an anchor gets a key no other turn can have: (None, row, turn)
                keys = [(g, a) if (a := u.info.get(key_name)) is not None else (None, i, k)
                        for k, u in enumerate(traj.turns)]
                row[: len(keys)] = [sd(key, len(ids)) for key in keys]
            except TypeError:  # unhashable anchors (dict / list): use their JSON rendering
                keys = [(g, _render(a)) if (a := u.info.get(key_name)) is not None else (None, i, k)
                        for k, u in enumerate(traj.turns)]
                row[: len(keys)] = [sd(key, len(ids)) for key in keys]
            rows.append(row)
            continue
        for k in range(len(traj.turns)):
            a = _anchor_text(traj, k, cfg)
            if a is None:
                row[k] = nxt
                nxt += 1
            elif cfg.similarity_threshold is not None:
                clusters = firsts.setdefault(gi[i], [])
                # verl-agent order: SequenceMatcher(None, new, representative); ratio() is not symmetric
                hit = next((cid for rep, cid in clusters
                            if SequenceMatcher(None, a, rep).ratio() >= cfg.similarity_threshold), None)
                if hit is None:
                    hit = nxt
                    nxt += 1
                    clusters.append((a, hit))
                row[k] = hit
            else:
                key = (gi[i], a)
                if key not in ids:
                    ids[key] = nxt
                    nxt += 1
                row[k] = ids[key]
        rows.append(row)
    out = torch.tensor(rows, dtype=torch.long).reshape(len(rows), k_max).to(batch.turn_mask.device)
    return out


def gigpo_turn_advantages(rewards: Tensor, turn_mask: Tensor, group_index: Tensor, anchor: Tensor,
                          cfg: GiGPOConfig):
    """``A_{i,t} = A^E_i + ω·A^S_{i,t}`` (spec §8).

    Args:
        rewards: ``[B, K]`` step rewards.
        turn_mask: ``[B, K]``.
        group_index: ``[B]``.
        anchor: ``[B, K]`` anchor-state keys (already distinct across prompt groups).
        cfg: `GiGPOConfig`.

    Returns:
        ``(turn_adv[B, K], stats)``.
    """
    b, k_max = turn_mask.shape
    scale = cfg.mode == "mean_std_norm"
    if cfg.mode not in ("mean_std_norm", "mean_norm"):
        raise ValueError(f"GiGPO mode must be 'mean_std_norm' or 'mean_norm', got {cfg.mode!r}.")
    r = torch.where(turn_mask & torch.isfinite(rewards), rewards.double(), torch.zeros_like(rewards, dtype=torch.float64))
    big_r = r.sum(1)
    has = turn_mask.any(1)
    if cfg.episode_stats == "per_trajectory":
        a_e, st_e = group_norm_with_stats(big_r, group_index, valid=has, unbiased=True, scale=scale,
                                          singleton="raw")
    elif cfg.episode_stats == "per_step_row":
        rows = big_r[:, None].expand(b, k_max)
        keys = group_index[:, None].expand(b, k_max)
        tmp, st_e = group_norm_masked(rows, keys, turn_mask, unbiased=True, scale=scale, singleton="raw")
        a_e = tmp[:, 0]
    else:
        raise ValueError(f"episode_stats must be 'per_trajectory' or 'per_step_row', got {cfg.episode_stats!r}.")
    gt = reverse_discounted_cumsum(r, turn_mask, cfg.gamma)
    a_s, st_s = group_norm_masked(gt, anchor, turn_mask, unbiased=True, scale=scale, singleton="zero")
    adv = a_e[:, None] + cfg.omega * a_s
    return adv.float(), {"group": st_e, "step_group": st_s}


@register_credit("gigpo", GiGPOConfig)
def gigpo(batch: GroupBatch, cfg: GiGPOConfig) -> CreditOutput:
    """GiGPO episode + anchor-state step advantages. Token ratio.

    Diagnostics: standard keys plus ``step_group_mean_size`` (mean number of steps per anchor group; ≈1 means the
    anchors include history and A^S is always 0).
    """
    anchor = anchor_keys(batch, cfg)
    adv, stats = gigpo_turn_advantages(batch.turn_rewards, batch.turn_mask, batch.group_index, anchor, cfg)
    n_steps = int(batch.turn_mask.sum())
    n_groups = int(torch.unique(anchor[batch.turn_mask]).numel()) if n_steps else 0
    extra = {"step_group_mean_size": n_steps / n_groups if n_groups else 0.0}
    return finish(batch, adv, batch.turn_rewards, stats=stats, extra=extra)
