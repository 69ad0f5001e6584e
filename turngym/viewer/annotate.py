"""Per-token annotations for the viewer: token strings, advantages, loss mask and turn advantages.

`annotate` writes ``Trajectory.meta["viewer"]`` (the key `VIEWER_KEY`) from the same tensors the trainer used,
so the page shows exactly the credit the loss saw. The record is plain JSON::

    {"method": "matchtir", "ratio_level": "token",
     "tokens": [str, ...],            # [L_b] decoded string of each response token (actions and observations)
     "advantages": [float, ...],      # [L_b] token advantages, 0 on observation tokens
     "action_mask": [0 | 1, ...],     # [L_b] loss mask (1 = sampled by the policy)
     "turn_advantages": [float | None, ...],  # [K_b] the method's per-turn advantages (None where NaN)
     "turn_rewards": [float | None, ...],     # [K_b] the method's raw per-turn rewards (None where NaN)
     "clip_scale": [float, ...]}      # [L_b] optional, only when the method returns one

``L_b`` is the row's response length: the concatenation over turns of ``action_ids`` then ``obs_ids`` (the
`GroupBatch` response axis without padding); ``K_b`` its number of turns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from turngym.types import Trajectory

__all__ = ["VIEWER_KEY", "annotate", "decode_tokens", "response_length"]

VIEWER_KEY = "viewer"
"""``Trajectory.meta[VIEWER_KEY]`` holds the viewer's per-token record (see the module docstring)."""


def response_length(traj: Trajectory) -> int:
    """Tokens on the response axis of `traj`: every turn's ``action_ids`` then ``obs_ids``."""
    return sum(len(t.action_ids) + len(t.obs_ids) for t in traj.turns)


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The string of each token, so that ``"".join(decode_tokens(tok, ids)) == tok.decode(ids)`` for byte-level
    tokenizers.

    A token that ends in the middle of a multi-byte character decodes to U+FFFD alone; such tokens are held back
    and the completed character is given to the last token of the run (the others get ``""``).

    Args:
        tokenizer: A Hugging Face tokenizer (anything with ``decode(ids, ...)``).
        ids: Token ids. [T]

    Returns:
        One string per id. [T]
    """
    out: list[str] = []
    pending: list[int] = []
    for i in ids:
        pending.append(int(i))
        text = tokenizer.decode(pending, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd") and len(pending) < 4:  # an incomplete UTF-8 sequence: wait for its tail
            continue
        out.extend([""] * (len(pending) - 1))
        out.append(text)
        pending = []
    if pending:
        text = tokenizer.decode(pending, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        out.extend([""] * (len(pending) - 1))
        out.append(text)
    return out


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def annotate(
    trajs: Sequence[Trajectory],
    batch: Any,
    credit_output: Any,
    tokenizer: Any = None,
    method: str = "",
    *,
    limit: int | None = None,
) -> list[Trajectory]:
    """Write ``meta["viewer"]`` on trajectories from the batch and the credit method's output.

    Call it after `assign_credit`, before the trajectories are logged (``RunLog.log_trajectories``)::

        annotate(trajs, batch, out, s.tokenizer, cfg.credit, limit=cfg.save_trajectories)

    Args:
        trajs: The trajectories the batch was built from, in row order (``GroupBatch.from_trajectories(trajs)``).
        batch: The `turngym.credit.GroupBatch` (``response_ids``, ``action_mask``, ``turn_mask`` ``[B, ·]``).
        credit_output: The `turngym.credit.CreditOutput` (``advantages`` ``[B, L]``, ``turn_advantages``
            ``[B, K]``, optional ``turn_rewards``, ``clip_scale``, ``ratio_level``).
        tokenizer: Tokenizer used to decode each response token; None stores no token strings (the page then
            shows the advantages on the turn texts only).
        method: Name of the credit method (shown and filterable on the page).
        limit: Annotate only the first `limit` rows (the trainer logs only a few trajectories per step).

    Returns:
        `trajs`, annotated in place.

    Raises:
        ValueError: The batch, the output and the trajectories do not line up (row count, response lengths).
    """
    trajs = list(trajs)
    adv = credit_output.advantages.detach().float().cpu()  # [B, L]
    mask = batch.action_mask.detach().cpu().bool()  # [B, L]
    ids = batch.response_ids.detach().cpu()  # [B, L]
    tadv = credit_output.turn_advantages.detach().float().cpu()  # [B, K]
    trew = getattr(credit_output, "turn_rewards", None)
    trew = trew.detach().float().cpu() if trew is not None else None  # [B, K]
    clip = getattr(credit_output, "clip_scale", None)
    clip = clip.detach().float().cpu() if clip is not None else None  # [B, L]
    b = ids.shape[0]
    if len(trajs) != b or adv.shape != ids.shape or mask.shape != ids.shape:
        raise ValueError(
            f"annotate: {len(trajs)} trajectories, response_ids {tuple(ids.shape)}, action_mask "
            f"{tuple(mask.shape)}, advantages {tuple(adv.shape)}; expected B trajectories and [B, L] tensors. "
            "Pass the trajectories the GroupBatch was built from, in the same order."
        )
    rows = range(b if limit is None else min(b, max(0, int(limit))))
    ratio_level = str(getattr(credit_output, "ratio_level", "token"))
    for r in rows:
        t = trajs[r]
        n = response_length(t)
        if n > ids.shape[1]:
            raise ValueError(f"annotate: trajectory {r} has {n} response tokens but the batch has L={ids.shape[1]}.")
        expected = [i for u in t.turns for i in (*u.action_ids, *u.obs_ids)]
        if ids[r, :n].tolist() != expected:
            raise ValueError(
                f"annotate: row {r} of the batch does not hold trajectory {r}'s tokens (group {t.group_id!r}); "
                "pass the trajectories in the order GroupBatch.from_trajectories received them."
            )
        k = len(t.turns)
        rec: dict[str, Any] = {
            "method": method,
            "ratio_level": ratio_level,
            "tokens": decode_tokens(tokenizer, expected) if tokenizer is not None else None,
            "advantages": [round(float(x), 6) for x in adv[r, :n].tolist()],
            "action_mask": [int(x) for x in mask[r, :n].tolist()],
            "turn_advantages": [_finite_or_none(x) for x in tadv[r, :k].tolist()],
        }
        if trew is not None:
            rec["turn_rewards"] = [_finite_or_none(x) for x in trew[r, :k].tolist()]
        if clip is not None:
            rec["clip_scale"] = [round(float(x), 6) for x in clip[r, :n].tolist()]
        t.meta[VIEWER_KEY] = rec
    return trajs
