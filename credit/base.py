"""The credit-assignment contract: `GroupBatch` in, `CreditOutput` out, methods in the `CREDIT` registry.

Contract for anyone adding a method (e.g. the token-level methods in ``credit/gae.py``, ``tempo.py``, ``pure.py``,
``delta.py``):

* A method is a pure function ``fn(batch: GroupBatch, cfg: MyConfig) -> CreditOutput`` where ``MyConfig`` is a
  frozen dataclass whose defaults are the spec's framework defaults (spec §10). Register it with
  ``@register_credit("name", MyConfig)``; `assign_credit` then builds the config from keyword overrides
  (unknown key -> `ConfigError`), runs the method under ``torch.no_grad()`` and checks the output.
* Declare what the trainer must compute for it: ``@register_credit("name", MyConfig, signals=("gold_probe",),
  token_features=("hidden",))`` names signal providers and token-feature builders of `turngym.credit.signals`
  (`SIGNAL_PROVIDERS`, `TOKEN_FEATURES`); the trainer builds exactly those, in order (`credit_needs`).
* Read only tensors from the batch (plus ``batch.trajectories`` for host-side metadata such as strings).
  Shapes: ``B`` rows, ``L`` response tokens, ``K`` turns (= max turns in the batch), ``P`` prompt tokens.
  The *response axis* starts right after the prompt: ``response_ids[b]`` is the concatenation over turns of
  ``action_ids`` then ``obs_ids``; the trainer packs ``prompt_ids`` (left-padded) + ``response_ids``.
  ``attention_mask`` is on the response axis ``[B, L]`` (spec §2.1 shows ``[B, P+L]``: that is
  ``full_attention_mask()``, with ``input_ids()`` the matching packed ids).
* ``turn_id[b, l]`` is the turn index ``k`` on policy (sampled) tokens of turn ``k`` and −1 on observation and
  padding tokens; never infer turn boundaries from reward values. ``turn_last[b, k]`` is the last policy token of
  turn ``k`` (−1 if the turn has none). ``turn_mask[b, k]`` is True for the ``T_b`` turns of row ``b``.
* Signals written by providers live in ``turn_signals[name]`` (``[B, K]``, NaN where missing) and
  ``prompt_signals[name]`` (``[B]``, e.g. the prompt-only probe score).
* Return advantages ``[B, L]`` that are 0 off ``action_mask``, finite everywhere; ``turn_advantages`` ``[B, K]``
  NaN on invalid turns; ``ratio_level`` in {"token", "turn", "sequence"}; optional ``clip_scale`` ``[B, L]``
  (1 where not used) and ``returns`` ``[B, L]`` (critic targets, GAE only). Put statistics in ``diagnostics``
  (use `standard_diagnostics`).
* Helpers: `turngym.credit.groups` (``group_norm``, ``group_norm_masked``, ``reverse_discounted_cumsum``,
  ``broadcast``, ``turn_rewards_to_token_rewards``); ``batch.broadcast_turns(v)`` (cached index, fastest);
  `finish` builds the `CreditOutput` of a method that assigns one value per turn.
* Batch tensors are treated as immutable once built (cached indices); build a new batch or use
  ``dataclasses.replace`` to change them.
"""

from __future__ import annotations

import array
import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from turngym.credit.groups import GroupNormStats, turn_rewards_to_token_rewards
from turngym.errors import ConfigError, CreditError
from turngym.registry import Registry
from turngym.types import Trajectory

__all__ = [
    "CREDIT",
    "PROMPT_SIGNALS_KEY",
    "REFINERS",
    "CreditNeeds",
    "CreditOutput",
    "GroupBatch",
    "LossType",
    "RatioLevel",
    "assign_credit",
    "credit_needs",
    "make_config",
    "refine",
    "register_credit",
    "register_refiner",
    "standard_diagnostics",
    "turn_rewards_to_token_rewards",
]

RatioLevel = Literal["token", "turn", "sequence"]
LossType = Literal["clip", "reinforce"]
ANCHOR_KEY = "anchor_obs"
"""``Turn.info[ANCHOR_KEY]``: the environment state shown before the action (GiGPO anchor), without history."""
PROMPT_SIGNALS_KEY = "prompt_signals"
"""``Trajectory.meta[PROMPT_SIGNALS_KEY]`` holds prompt-level signals (e.g. the prompt-only probe score)."""


_NUMBER_TYPES = (int, float, bool)


def _long_tensor(xs: list[int]) -> Tensor:
    """1-D int64 tensor from a long Python list (through ``array``: several times faster than torch.tensor)."""
    return torch.frombuffer(array.array("q", xs), dtype=torch.int64).clone() if xs else torch.zeros(0, dtype=torch.long)


def _float_tensor(xs: list[float]) -> Tensor:
    return torch.frombuffer(array.array("d", xs), dtype=torch.float64).float() if xs else torch.zeros(0)


def _is_number(v: Any) -> bool:
    return type(v) in _NUMBER_TYPES or (isinstance(v, (int, float)) and not isinstance(v, complex))


@dataclass
class GroupBatch:
    """Tensor view of all trajectories of one training step (spec §2.1).

    Attributes:
        response_ids: ``[B, L]`` long; each turn's ``action_ids`` then ``obs_ids``, right-padded with ``pad_id``.
        attention_mask: ``[B, L]`` bool; True on every real response token (policy AND observation tokens).
        action_mask: ``[B, L]`` bool; True only on policy tokens (loss mask). Separate from ``attention_mask``.
        turn_id: ``[B, L]`` long; turn index on policy tokens, −1 on observations and padding.
        turn_mask: ``[B, K]`` bool; True for the turns that exist.
        turn_last: ``[B, K]`` long; last policy-token index of each turn, −1 if invalid / no policy token.
        group_index: ``[B]`` long; dense 0..N−1 re-indexing of ``Trajectory.group_id`` (first-seen order).
        old_logprobs: ``[B, L]`` float32 behaviour log-probs on policy tokens (0 elsewhere); None when some turn
            has no recorded log-probs (the trainer must then recompute them).
        ref_logprobs: ``[B, L]`` or None (filled by the trainer).
        values: ``[B, L]`` critic values or None (filled by the trainer, PPO only).
        outcome: ``[B]`` float32; NaN where unavailable.
        has_answer: ``[B]`` bool; the trajectory produced a final answer (text SIOP clusters, SLATE's answer
            turn).
        ended: ``[B]`` bool or None; the env ended the episode (``stop_reason == "terminated"``): an answer, or a
            game won or lost by a move. False for episodes cut by the turn or token budget or an env error. See
            `scored`.
        turn_signals: name -> ``[B, K]`` float32, NaN where missing (numeric ``Turn.signals`` only).
        prompt_signals: name -> ``[B]`` float32 from ``Trajectory.meta["prompt_signals"]``, NaN where missing.
        token_features: name -> ``[B, L, ...]`` per-token tensors filled by the trainer or a provider (e.g. DelTA's
            ``"hidden"`` ``[B, L, H]``: the last hidden state at each response position).
        turn_rewards: ``[B, K]`` float32 environment step rewards (``Turn.reward``), 0 on invalid turns.
        anchor_ids: ``[B, K]`` long; dense id of ``(group, Turn.info["anchor_obs"])`` (the environment state shown
            before the action, GiGPO), −1 where a turn has no anchor or is invalid. None if built by hand.
        prompt_ids: ``[B, P]`` long, LEFT-padded with ``pad_id``.
        prompt_mask: ``[B, P]`` bool; True on real prompt tokens.
        trajectories: The source trajectories, same order as rows.
        pad_id: Padding id used.
    """

    response_ids: Tensor
    attention_mask: Tensor
    action_mask: Tensor
    turn_id: Tensor
    turn_mask: Tensor
    turn_last: Tensor
    group_index: Tensor
    outcome: Tensor
    turn_rewards: Tensor
    prompt_ids: Tensor
    prompt_mask: Tensor
    has_answer: Tensor
    ended: Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    values: Tensor | None = None
    anchor_ids: Tensor | None = None
    turn_signals: dict[str, Tensor] = field(default_factory=dict)
    prompt_signals: dict[str, Tensor] = field(default_factory=dict)
    token_features: dict[str, Tensor] = field(default_factory=dict)
    trajectories: list[Trajectory] = field(default_factory=list)
    pad_id: int = 0
    _gather_idx: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _turn_len: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _off_mask: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------- cached views
    # (tensors of a GroupBatch are treated as immutable once built; `dataclasses.replace` resets the caches)
    def broadcast_turns(self, v: Tensor, fill: float = 0.0) -> Tensor:
        """``[B, K] -> [B, L]``: every policy token gets its turn's value, other tokens ``fill`` (one gather)."""
        if v.shape != self.turn_mask.shape:
            raise ValueError(f"broadcast_turns expects v{tuple(self.turn_mask.shape)}, got {tuple(v.shape)}.")
        b, k = self.turn_mask.shape
        if self._gather_idx is None:  # flat index into the [B, K+1] table (column K = fill); index_select is fast
            idx = torch.where(self.turn_id >= 0, self.turn_id, torch.full_like(self.turn_id, k))
            self._gather_idx = (torch.arange(b, device=idx.device)[:, None] * (k + 1) + idx).reshape(-1)
        ext = torch.cat([v, torch.full_like(v[:, :1], fill)], dim=1)
        return ext.reshape(-1).index_select(0, self._gather_idx).view(self.turn_id.shape)

    @property
    def off_policy_mask(self) -> Tensor:
        """``~action_mask`` (cached)."""
        if self._off_mask is None:
            self._off_mask = ~self.action_mask
        return self._off_mask

    @property
    def turn_lengths(self) -> Tensor:
        """``[B, K]`` number of policy tokens of each turn (cached)."""
        if self._turn_len is None:
            b, k = self.turn_mask.shape
            idx = torch.where(self.turn_id >= 0, self.turn_id, torch.full_like(self.turn_id, k))
            cnt = torch.zeros(b, k + 1, dtype=torch.int64, device=idx.device).scatter_add_(1, idx, torch.ones_like(idx))
            self._turn_len = cnt[:, :k]
        return self._turn_len

    # ------------------------------------------------------------------ sizes
    @property
    def batch_size(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.response_ids.shape[1])

    @property
    def max_turns(self) -> int:
        return int(self.turn_mask.shape[1])

    @property
    def num_groups(self) -> int:
        return int(self.group_index.max()) + 1 if self.group_index.numel() else 0

    @property
    def num_turns(self) -> Tensor:
        """``[B]`` number of turns per row."""
        return self.turn_mask.sum(1)

    @property
    def scored(self) -> Tensor:
        """``[B]`` bool: the episode ended with an outcome to credit, ``has_answer | ended`` (``has_answer`` when
        built by hand without ``ended``). What IGPO's ``format_fail_reward`` (False: "no answer", -2), PURE's
        verifiable reward and LaRe's decoder target test: a game won by a move has no answer text but an
        outcome, and counting it as unanswered removes the outcome signal from every episode of a game env."""
        return self.has_answer if self.ended is None else self.has_answer | self.ended

    @property
    def last_turn_index(self) -> Tensor:
        """``[B]`` index of each row's last turn (−1 for rows without turns)."""
        return self.num_turns - 1

    # ------------------------------------------------------------ packing
    def input_ids(self) -> Tensor:
        """``[B, P+L]`` prompt (left-padded) followed by the response."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    def full_attention_mask(self) -> Tensor:
        """``[B, P+L]`` attention over prompt + response (observations are attended to)."""
        return torch.cat([self.prompt_mask, self.attention_mask], dim=1)

    def signal(self, name: str, *, needed_by: str = "") -> Tensor:
        """``turn_signals[name]``, or a `CreditError` that names the provider to run."""
        if name not in self.turn_signals:
            who = f" (needed by {needed_by})" if needed_by else ""
            raise CreditError(
                f"turn signal {name!r}{who} is missing from the batch; present: "
                f"{sorted(self.turn_signals) or '(none)'}. Run the matching provider from "
                "turngym.credit.signals before building the GroupBatch."
            )
        return self.turn_signals[name]

    def prompt_signal(self, name: str, *, needed_by: str = "") -> Tensor:
        """``prompt_signals[name]``, or a `CreditError` that names the provider to run."""
        if name not in self.prompt_signals:
            who = f" (needed by {needed_by})" if needed_by else ""
            raise CreditError(
                f"prompt-level signal {name!r}{who} is missing; present: {sorted(self.prompt_signals) or '(none)'}. "
                f"Providers write it into Trajectory.meta[{PROMPT_SIGNALS_KEY!r}]."
            )
        return self.prompt_signals[name]

    def to(self, device: torch.device | str) -> GroupBatch:
        """A copy with every tensor moved to ``device``."""
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.to(device)
            elif isinstance(v, dict):
                v = {k: t.to(device) for k, t in v.items()}
            kw[f.name] = v
        return GroupBatch(**kw)

    def validate(self) -> None:
        """Check the invariants of spec §2.1; raises `CreditError` naming the first violation."""
        b, length = self.response_ids.shape
        k = self.turn_mask.shape[1]
        for name, t, shape in [
            ("attention_mask", self.attention_mask, (b, length)),
            ("action_mask", self.action_mask, (b, length)),
            ("turn_id", self.turn_id, (b, length)),
            ("turn_last", self.turn_last, (b, k)),
            ("group_index", self.group_index, (b,)),
            ("outcome", self.outcome, (b,)),
            ("turn_rewards", self.turn_rewards, (b, k)),
            ("has_answer", self.has_answer, (b,)),
            *([("ended", self.ended, (b,))] if self.ended is not None else []),
            *([("anchor_ids", self.anchor_ids, (b, k))] if self.anchor_ids is not None else []),
        ]:
            if tuple(t.shape) != shape:
                raise CreditError(f"GroupBatch.{name} has shape {tuple(t.shape)}, expected {shape}.")
        for name, t in [("old_logprobs", self.old_logprobs), ("ref_logprobs", self.ref_logprobs),
                        ("values", self.values)]:
            if t is not None and tuple(t.shape) != (b, length):
                raise CreditError(f"GroupBatch.{name} has shape {tuple(t.shape)}, expected {(b, length)}.")
        for name, t in self.turn_signals.items():
            if tuple(t.shape) != (b, k):
                raise CreditError(f"turn_signals[{name!r}] has shape {tuple(t.shape)}, expected {(b, k)}.")
        if bool(((self.turn_id >= 0) != self.action_mask).any()):
            raise CreditError("every policy token must belong to exactly one turn (turn_id >= 0 iff action_mask).")
        if bool((self.action_mask & ~self.attention_mask).any()):
            raise CreditError("a policy token is outside the attention mask.")
        tid = torch.where(self.turn_id >= 0, self.turn_id, torch.full_like(self.turn_id, -1))
        run_max = torch.cummax(tid, dim=1).values
        if bool(((self.turn_id >= 0) & (self.turn_id < run_max)).any()):
            raise CreditError("turns are not ordered along the response axis.")
        if bool(((self.turn_id >= 0) & ~torch.gather(self.turn_mask, 1, self.turn_id.clamp(min=0))).any()):
            raise CreditError("a policy token points to an invalid turn.")
        from turngym.credit.groups import turn_last_index

        if not torch.equal(turn_last_index(self.turn_id, k), self.turn_last):
            raise CreditError("turn_last must be the index of each turn's last policy token (−1 if none).")

    # ------------------------------------------------------------ building
    @classmethod
    def from_trajectories(cls, trajs: Sequence[Trajectory], pad_id: int = 0) -> GroupBatch:
        """Build the tensor view of a list of trajectories.

        Args:
            trajs: Trajectories; rows keep this order. ``group_id`` defines the normalisation groups.
            pad_id: Padding token id for ``prompt_ids`` (left) and ``response_ids`` (right).

        Returns:
            A `GroupBatch` on CPU.
        """
        trajs = list(trajs)
        if not trajs:
            raise CreditError("GroupBatch.from_trajectories got an empty list of trajectories.")
        k_max = max(1, max(len(t.turns) for t in trajs))
        p_max = max(1, max(len(t.prompt_ids) for t in trajs))
        nan = float("nan")
        b = len(trajs)

        # Python work is per turn, never per token: token ids / log-probs are gathered with list.extend, masks
        # and turn ids are expanded from per-segment labels with repeat_interleave.
        ids_flat: list[int] = []
        lp_flat: list[float] = []
        seg_len: list[int] = []  # alternating action / observation segments, row-major
        seg_tid: list[int] = []
        row_len: list[int] = []
        tmask_l, tlast_l, trew_l, pids_l, pmask_l, tlen_l, anc_l = [], [], [], [], [], [], []
        anchors: dict[tuple[int, Any], int] = {}
        outcome_l, ans_l, end_l, gidx_l = [], [], [], []
        sig_rows: dict[str, list[list[float]]] = {}
        psig_rows: dict[str, list[float]] = {}
        groups: dict[str, int] = {}
        have_lp = True

        for i, t in enumerate(trajs):
            gidx_l.append(groups.setdefault(str(t.group_id), len(groups)))
            pad = p_max - len(t.prompt_ids)
            pids_l.append([pad_id] * pad + list(t.prompt_ids))
            pmask_l.append([False] * pad + [True] * len(t.prompt_ids))
            outcome_l.append(float(t.outcome) if t.outcome is not None and _is_number(t.outcome) else nan)
            ans_l.append(t.final_answer is not None)
            end_l.append(t.stop_reason == "terminated")
            for n, v in (t.meta.get(PROMPT_SIGNALS_KEY) or {}).items():
                if _is_number(v):
                    psig_rows.setdefault(n, [nan] * b)[i] = float(v)
            pos = 0
            last = [-1] * k_max
            rew = [0.0] * k_max
            tlen = [0] * k_max
            anc = [-1] * k_max
            g_i = gidx_l[-1]
            for k, u in enumerate(t.turns):
                a = u.info.get(ANCHOR_KEY) if u.info else None
                if a is not None:
                    try:
                        anc[k] = anchors.setdefault((g_i, a), len(anchors))
                    except TypeError:  # unhashable state: key by its JSON rendering
                        anc[k] = anchors.setdefault((g_i, json.dumps(a, sort_keys=True, default=repr)), len(anchors))
                rew[k] = float(u.reward) if u.reward is not None else 0.0
                for n, v in u.signals.items():
                    if _is_number(v):
                        rows = sig_rows.get(n)
                        if rows is None:
                            rows = sig_rows[n] = [[nan] * k_max for _ in range(b)]
                        rows[i][k] = float(v)
                na, no = len(u.action_ids), len(u.obs_ids)
                ids_flat.extend(u.action_ids)
                ids_flat.extend(u.obs_ids)
                if len(u.logprobs) == na:
                    lp_flat.extend(u.logprobs)
                else:
                    have_lp = False
                    lp_flat.extend([0.0] * na)
                lp_flat.extend([0.0] * no)
                seg_len.extend((na, no))
                seg_tid.extend((k, -1))
                if na:
                    last[k] = pos + na - 1
                tlen[k] = na
                pos += na + no
            row_len.append(pos)
            tmask_l.append([True] * len(t.turns) + [False] * (k_max - len(t.turns)))
            tlast_l.append(last)
            trew_l.append(rew)
            tlen_l.append(tlen)
            anc_l.append(anc)

        length = max(1, max(row_len))
        n_tok = len(ids_flat)
        lens_t = torch.tensor(seg_len, dtype=torch.long)
        tid_flat = torch.repeat_interleave(torch.tensor(seg_tid, dtype=torch.long), lens_t)
        row_t = torch.tensor(row_len, dtype=torch.long)
        row_of_tok = torch.repeat_interleave(torch.arange(b), row_t)
        row_start = torch.cumsum(row_t, 0) - row_t
        pos_in_row = torch.arange(n_tok) - row_start[row_of_tok]
        flat_idx = row_of_tok * length + pos_in_row

        def scatter(values: Tensor, fill, dtype) -> Tensor:
            out = torch.full((b * length,), fill, dtype=dtype)
            out[flat_idx] = values.to(dtype)
            return out.view(b, length)

        resp = scatter(_long_tensor(ids_flat), pad_id, torch.long)
        tid = scatter(tid_flat, -1, torch.long)
        act = tid >= 0
        attn = scatter(torch.ones(n_tok, dtype=torch.bool), False, torch.bool)
        lp = scatter(_float_tensor(lp_flat), 0.0, torch.float32)
        tmask = torch.tensor(tmask_l, dtype=torch.bool)
        tlast = torch.tensor(tlast_l, dtype=torch.long)
        trew = torch.tensor(trew_l, dtype=torch.float32)
        pids = torch.tensor(pids_l, dtype=torch.long)
        pmask = torch.tensor(pmask_l, dtype=torch.bool)
        outcome = torch.tensor(outcome_l, dtype=torch.float32)
        has_answer = torch.tensor(ans_l, dtype=torch.bool)
        gidx = torch.tensor(gidx_l, dtype=torch.long)
        tsig = {n: torch.tensor(sig_rows[n], dtype=torch.float32) for n in sorted(sig_rows)}
        psig = {n: torch.tensor(psig_rows[n], dtype=torch.float32) for n in sorted(psig_rows)}

        batch = cls(
            response_ids=resp, attention_mask=attn, action_mask=act, turn_id=tid, turn_mask=tmask,
            turn_last=tlast, group_index=gidx, outcome=outcome, turn_rewards=trew, prompt_ids=pids,
            prompt_mask=pmask, has_answer=has_answer, ended=torch.tensor(end_l, dtype=torch.bool),
            old_logprobs=lp if have_lp else None,
            turn_signals=tsig, prompt_signals=psig, trajectories=trajs, pad_id=pad_id,
            anchor_ids=torch.tensor(anc_l, dtype=torch.long),
        )
        batch._turn_len = torch.tensor(tlen_l, dtype=torch.long)
        return batch


@dataclass
class CreditOutput:
    """What a credit method returns (spec §2.3).

    Attributes:
        advantages: ``[B, L]`` float32, 0 wherever ``action_mask`` is False.
        turn_advantages: ``[B, K]`` per-turn advantages, NaN on invalid turns (diagnostics and tests).
        turn_rewards: ``[B, K]`` raw per-turn rewards before normalisation (NaN on invalid turns).
        ratio_level: Importance-ratio granularity the loss must use: "token", "turn" or "sequence".
        returns: ``[B, L]`` critic targets (GAE only) or None.
        clip_scale: ``[B, L]`` multiplier of ε_low and ε_high per token (A²TGPO) or None (= 1).
        loss_mask: ``[B, L]`` bool, the tokens the policy loss trains (a subset of ``action_mask``), or None
            (= ``action_mask``). Tokens outside it leave the loss *and* its token-mean denominators (R³L's pivotal
            credit masks the shared prefix of a retry pair).
        loss_type: ``"clip"`` (the trainer's clipped importance-ratio surrogate) or ``"reinforce"`` (no ratio, no
            clipping: ``ℓ = −A·log π·loss_scale``; R³L).
        loss_scale: Multiplier of the ``"reinforce"`` loss (R³L's OPMD factor ``1/(1+τ)``).
        diagnostics: Scalar statistics (see `standard_diagnostics` and each method's docstring).
    """

    advantages: Tensor
    turn_advantages: Tensor
    turn_rewards: Tensor
    ratio_level: RatioLevel = "token"
    returns: Tensor | None = None
    clip_scale: Tensor | None = None
    loss_mask: Tensor | None = None
    loss_type: LossType = "clip"
    loss_scale: float = 1.0
    diagnostics: dict[str, float] = field(default_factory=dict)
    _by_construction: bool = field(default=False, init=False, repr=False, compare=False)
    """Set by `finish`: token tensors are gathers of finite turn tables with a 0 (1 for clip) fill on non-policy
    tokens, so `check_output` verifies the O(B·K) tables instead of re-reading the O(B·L) tensors."""


CreditFn = Callable[[GroupBatch, Any], CreditOutput]
CREDIT: Registry[CreditFn] = Registry("credit method")
"""name -> ``fn(batch, cfg) -> CreditOutput``; each function carries its config class as ``fn.config_cls`` and its
declared needs as ``fn.signals`` / ``fn.token_features`` (see `register_credit`)."""


@dataclass(frozen=True)
class CreditNeeds:
    """What a credit method declares it reads besides the trajectories (`register_credit`).

    Attributes:
        signals: Names of signal providers (``turngym.credit.signals.SIGNAL_PROVIDERS``) that fill the method's
            ``Turn.signals`` / prompt signals, run in this order before the batch is built.
        token_features: Names of token-feature builders (``turngym.credit.signals.TOKEN_FEATURES``) whose tensors go
            into ``GroupBatch.token_features`` (e.g. DelTA's ``"hidden"``).
        learned: Names of trainer-owned learned signal components (``turngym.trainers.learned.LEARNED_SIGNALS``:
            OPRL's implicit PRM, LaRe's reward decoder): stateful models trained across steps beside the policy,
            checkpointed with the run, that write token features or turn signals into the batch before credit.
    """

    signals: tuple[str, ...] = ()
    token_features: tuple[str, ...] = ()
    learned: tuple[str, ...] = ()


def _names(name: str, what: str, names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"register_credit({name!r}): {what} must be a tuple of names, e.g. ('gold_probe',); "
                        f"got {names!r}.")
    return tuple(names)


def register_credit(name: str, config_cls: type, *, signals: Sequence[str] = (), token_features: Sequence[str] = (),
                    learned: Sequence[str] = (), overwrite: bool = False) -> Callable[[CreditFn], CreditFn]:
    """Decorator: register ``fn(batch, cfg)`` under ``name`` with its frozen config dataclass and its declared needs.

    Args:
        name: Key in `CREDIT` (the trainer's ``credit=`` value).
        config_cls: Frozen dataclass of the method's options (defaults = spec defaults).
        signals: Signal providers the method needs, by name in ``turngym.credit.signals.SIGNAL_PROVIDERS``, in the
            order they must run (e.g. ``("siop_cluster", "siop_support")``). The trainer builds exactly these.
        token_features: Token-feature builders the method needs (``turngym.credit.signals.TOKEN_FEATURES``), e.g.
            ``("hidden",)``.
        learned: Learned signal components the method needs (``turngym.trainers.learned.LEARNED_SIGNALS``), e.g.
            ``("implicit_prm",)``; they run after the batch is packed, before credit, and train after it.
        overwrite: Replace an existing registration of ``name``.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"register_credit({name!r}): config_cls must be a dataclass, got {config_cls!r}.")
    needs = CreditNeeds(_names(name, "signals", signals), _names(name, "token_features", token_features),
                        _names(name, "learned", learned))

    def deco(fn: CreditFn) -> CreditFn:
        fn.config_cls = config_cls  # type: ignore[attr-defined]
        fn.signals = needs.signals  # type: ignore[attr-defined]
        fn.token_features = needs.token_features  # type: ignore[attr-defined]
        fn.learned = needs.learned  # type: ignore[attr-defined]
        CREDIT.add(name, fn, overwrite=overwrite)
        return fn

    return deco


def credit_needs(name: str) -> CreditNeeds:
    """The signals and token features credit method ``name`` declared (empty for a function added to `CREDIT`
    without `register_credit`). Raises `RegistryError` for an unknown method."""
    fn = CREDIT[name]
    return CreditNeeds(tuple(getattr(fn, "signals", ())), tuple(getattr(fn, "token_features", ())),
                       tuple(getattr(fn, "learned", ())))


RefineFn = Callable[[CreditOutput, GroupBatch, Any], CreditOutput]
REFINERS: Registry[RefineFn] = Registry("credit refiner")
"""Post-processors ``fn(out, batch, cfg) -> CreditOutput`` of an upstream `CreditOutput` (e.g. DelTA's ``"delta"``),
each with its config class as ``fn.config_cls``."""


def register_refiner(name: str, config_cls: type, *, overwrite: bool = False) -> Callable[[RefineFn], RefineFn]:
    """Decorator: register a refiner ``fn(out, batch, cfg)`` under ``name`` with its config dataclass."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"register_refiner({name!r}): config_cls must be a dataclass, got {config_cls!r}.")

    def deco(fn: RefineFn) -> RefineFn:
        fn.config_cls = config_cls  # type: ignore[attr-defined]
        REFINERS.add(name, fn, overwrite=overwrite)
        return fn

    return deco


def refine(name: str, out: CreditOutput, batch: GroupBatch, **overrides: Any) -> CreditOutput:
    """Apply refiner ``name`` (e.g. ``"delta"``) to an upstream `CreditOutput`, config built from ``overrides``."""
    fn = REFINERS[name]
    cls = fn.config_cls  # type: ignore[attr-defined]
    known = {f for f in cls.__dataclass_fields__}
    bad = [k for k in overrides if k not in known]
    if bad:
        raise ConfigError(
            f"unknown option(s) {bad} for refiner {name!r}; known options: {', '.join(sorted(known))}."
        )
    with torch.no_grad():
        return fn(out, batch, cls(**overrides))


def make_config(name: str, **overrides: Any) -> Any:
    """Build the config dataclass of credit method ``name`` from keyword overrides.

    Raises:
        RegistryError: unknown method name.
        ConfigError: an override names no field of the config (the message lists the known ones).
    """
    fn = CREDIT[name]
    cls = fn.config_cls  # type: ignore[attr-defined]
    known = [f.name for f in dataclasses.fields(cls)]
    for key in overrides:
        if key not in known:
            raise ConfigError(
                f"unknown option {key!r} for credit method {name!r}; known options: {', '.join(known) or '(none)'}."
            )
    return cls(**overrides)


def assign_credit(name: str, batch: GroupBatch, **overrides: Any) -> CreditOutput:
    """Run credit method ``name`` on ``batch`` with its config built from ``overrides``.

    Runs under ``torch.no_grad()``, then checks the output: shapes, finiteness, and zero advantage off the
    action mask (a violation is a framework bug and raises `CreditError`).
    """
    cfg = make_config(name, **overrides)
    with torch.no_grad():
        out = CREDIT[name](batch, cfg)
    check_output(batch, out, name)
    return out


def check_output(batch: GroupBatch, out: CreditOutput, name: str = "?") -> None:
    """Raise `CreditError` if ``out`` breaks the §2.3 contract for ``batch``."""
    b, length = batch.response_ids.shape
    if tuple(out.advantages.shape) != (b, length):
        raise CreditError(f"credit method {name!r} returned advantages {tuple(out.advantages.shape)}, "
                          f"expected {(b, length)}.")
    if out.ratio_level not in ("token", "turn", "sequence"):
        raise CreditError(f"credit method {name!r} returned ratio_level={out.ratio_level!r}.")
    if out.loss_type not in ("clip", "reinforce"):
        raise CreditError(f"credit method {name!r} returned loss_type={out.loss_type!r}.")
    if out.loss_mask is not None:
        lm = out.loss_mask
        if tuple(lm.shape) != (b, length) or lm.dtype != torch.bool:
            raise CreditError(f"credit method {name!r} returned a loss_mask of shape {tuple(lm.shape)} and dtype "
                              f"{lm.dtype}; expected bool {(b, length)}.")
        if bool((lm & batch.off_policy_mask).any()):
            raise CreditError(f"credit method {name!r} returned a loss_mask with non-policy tokens.")
    if out._by_construction:
        return
    # a finite sum implies finite entries (one pass instead of isfinite + all)
    if not math.isfinite(float(out.advantages.sum(dtype=torch.float64))):
        raise CreditError(f"credit method {name!r} produced non-finite advantages.")
    if bool(out.advantages.ne(0).logical_and_(batch.off_policy_mask).any()):
        raise CreditError(f"credit method {name!r} put advantage on non-policy tokens.")
    for nm in ("clip_scale", "returns"):
        t = getattr(out, nm)
        if t is not None and (tuple(t.shape) != (b, length) or not math.isfinite(float(t.sum(dtype=torch.float64)))):
            raise CreditError(f"credit method {name!r} returned a bad {nm}: shape {tuple(t.shape)}.")


def standard_diagnostics(
    batch: GroupBatch,
    advantages: Tensor,
    stats: Mapping[str, GroupNormStats] | None = None,
    *,
    turn_values: Tensor | None = None,
) -> dict[str, float]:
    """Diagnostics every module reports (spec §2.3).

    Keys: ``adv_mean``, ``adv_std``, ``adv_absmax`` (over action tokens), ``turns_per_traj``, and per entry of
    ``stats``: ``{name}_frac_zero_var``, ``{name}_singletons``, ``{name}_groups``. When every token of a turn
    carries its turn's value, pass ``turn_values`` ``[B, K]``: the token statistics are then computed from the turn
    values weighted by their policy-token counts (O(B·K) instead of O(B·L)).
    """
    if turn_values is not None:
        w = batch.turn_lengths.double()
        v = torch.where(w > 0, turn_values.double(), torch.zeros_like(w))
    else:
        w = batch.action_mask.double()
        v = torch.where(batch.action_mask, advantages.double(), torch.zeros_like(w))
    n = float(w.sum())
    mean = float((w * v).sum()) / n if n else 0.0
    var = float((w * (v - mean) ** 2).sum()) / (n - 1) if n > 1 else 0.0
    d: dict[str, float] = {
        "adv_mean": mean,
        "adv_std": math.sqrt(max(var, 0.0)),
        "adv_absmax": float(v.abs().max()) if v.numel() else 0.0,
        "turns_per_traj": float(batch.turn_mask.sum(1).double().mean()),
    }
    for nm, s in (stats or {}).items():
        d[f"{nm}_frac_zero_var"] = s.frac_zero_var
        d[f"{nm}_singletons"] = float(s.n_singleton)
        d[f"{nm}_groups"] = float(s.n_groups)
    return {k: (v if math.isfinite(v) else 0.0) for k, v in d.items()}


def finish(
    batch: GroupBatch,
    turn_adv: Tensor,
    turn_rewards: Tensor,
    *,
    ratio_level: RatioLevel = "token",
    turn_clip: Tensor | None = None,
    stats: Mapping[str, GroupNormStats] | None = None,
    extra: Mapping[str, float] | None = None,
) -> CreditOutput:
    """Common tail of turn-level methods: broadcast turn values to tokens and fill diagnostics.

    ``turn_adv`` / ``turn_rewards`` ``[B, K]`` get NaN on invalid turns; ``turn_clip`` (if given) is broadcast to a
    ``clip_scale`` that is 1 off the policy tokens.
    """
    m = batch.turn_mask
    ta = torch.where(m, turn_adv.float(), torch.zeros_like(turn_adv, dtype=torch.float32))
    adv = batch.broadcast_turns(ta)
    clip = None
    if turn_clip is not None:
        tc = torch.where(m, turn_clip.float(), torch.ones_like(turn_clip, dtype=torch.float32))
        clip = batch.broadcast_turns(tc, fill=1.0)
    if not bool(torch.isfinite(ta).all()) or (turn_clip is not None and not bool(torch.isfinite(tc).all())):
        raise CreditError("a turn-level credit method produced non-finite turn values (framework bug).")
    nan = torch.full_like(ta, float("nan"))
    diag = standard_diagnostics(batch, adv, stats, turn_values=ta)
    diag.update(extra or {})
    out = CreditOutput(
        advantages=adv,
        turn_advantages=torch.where(m, ta, nan),
        turn_rewards=torch.where(m, turn_rewards.float(), nan),
        ratio_level=ratio_level,
        clip_scale=clip,
        diagnostics=diag,
    )
    out._by_construction = True
    return out
