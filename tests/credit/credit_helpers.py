"""Builders of small trajectories for the credit tests (not a test module)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from turngym.credit.base import PROMPT_SIGNALS_KEY, GroupBatch
from turngym.types import Trajectory, Turn


def make_traj(
    group: str,
    n_turns: int,
    *,
    outcome: float | None = 0.0,
    answered: bool = True,
    signals: dict[str, Sequence[Any]] | None = None,
    prompt_signals: dict[str, float] | None = None,
    rewards: Sequence[float] | None = None,
    action_lens: Sequence[int] | None = None,
    obs_lens: Sequence[int] | None = None,
    meta: dict | None = None,
    infos: Sequence[dict] | None = None,
    seed_token: int = 1,
) -> Trajectory:
    """A trajectory with ``n_turns`` turns; signals given per turn (None / NaN = missing)."""
    turns = []
    tok = seed_token
    for k in range(n_turns):
        na = action_lens[k] if action_lens else 2
        no = obs_lens[k] if obs_lens else (1 if k < n_turns - 1 else 0)
        sig = {}
        for name, vals in (signals or {}).items():
            if k < len(vals) and vals[k] is not None and not (isinstance(vals[k], float) and math.isnan(vals[k])):
                sig[name] = vals[k]
        ids = [tok + j for j in range(na)]
        tok += na
        turns.append(Turn(action_ids=ids, logprobs=[-0.5] * na, obs_ids=[900 + j for j in range(no)],
                          reward=float(rewards[k]) if rewards else 0.0, signals=sig,
                          info=dict(infos[k]) if infos else {}))
    m = dict(meta or {})
    if prompt_signals:
        m[PROMPT_SIGNALS_KEY] = dict(prompt_signals)
    return Trajectory(group_id=group, prompt_ids=[7, 8, 9], turns=turns, outcome=outcome,
                      final_answer="x" if answered else None, meta=m)


def batch_of(trajs) -> GroupBatch:
    b = GroupBatch.from_trajectories(trajs)
    b.validate()
    return b


def random_trajs(rng, *, n_groups=3, max_group=4, max_turns=4, p_missing=0.15, values=(0.0, 0.25, 0.5, 1.0),
                 anchors=("s0", "s1", "s2", None), fixed_turns: int | None = None, action_len=(1, 3),
                 obs_len=(0, 2)) -> list[Trajectory]:
    """Random ragged trajectories with every signal the turn-level methods read.

    Values are drawn from a small discrete set so that ties, zero-variance groups and singleton groups are
    common; each signal is missing (absent) with probability ``p_missing``.
    """
    trajs = []
    tok = 1

    def val():
        return None if rng.random() < p_missing else float(rng.choice(values))

    for g in range(n_groups):
        for _ in range(rng.randint(1, max_group)):
            t_n = fixed_turns or rng.randint(1, max_turns)
            answered = rng.random() < 0.8
            turns = []
            for k in range(t_n):
                na = rng.randint(*action_len)
                no = rng.randint(*obs_len)
                sig = {}
                for name in ("probe_score", "match_r", "judge_think", "judge_action"):
                    v = val()
                    if v is not None:
                        sig[name] = v - 1.0 if name == "probe_score" else v
                v = val()
                if v is not None:
                    sig["siop_support"] = v + 0.01
                sig["slate_step"] = float(rng.randint(0, 3))
                ids = list(range(tok, tok + na))
                tok += na
                info = {}
                a = rng.choice(anchors)
                if a is not None:
                    info["anchor_obs"] = a
                turns.append(Turn(action_ids=ids, logprobs=[-0.1] * na, obs_ids=[999] * no,
                                  reward=float(rng.choice(values)), signals=sig, info=info))
            psig = {}
            v = val()
            if v is not None:
                psig["probe_score"] = v - 1.0
            v = val()
            if v is not None:
                psig["siop_support"] = v + 0.01
            psig["siop_q"] = float(rng.choice((0.0, 0.2, 0.8, 1.0)))
            outcome = None if rng.random() < p_missing else float(rng.choice(values))
            trajs.append(Trajectory(group_id=f"g{g}", prompt_ids=[5] * rng.randint(1, 3), turns=turns,
                                    outcome=outcome if outcome is not None else float("nan"),
                                    final_answer="a" if answered else None,
                                    meta={PROMPT_SIGNALS_KEY: psig}))
    rng.shuffle(trajs)
    return trajs
