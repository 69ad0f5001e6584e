"""CAPO's step critiques: a generative PRM lists the wrong steps of each rollout, votes combine several critiques
(wave-2 spec §4.1).

Two providers, both registered as the signal provider ``"capo_critique"`` that the credit method ``"capo"`` declares
(the factory picks one, `capo_critique_factory`):

* `GenPRMCritiqueProvider`: an LLM judge (``judge(prompts) -> completions``, e.g. `turngym.agents.judge.OpenAIJudge`
  over the trainer's ``judge_url``) reads each rollout once, as numbered steps (step = policy turn), ``n_critiques``
  times; each completion is parsed by `parse_critique` (the last JSON list of integers), and the valid critiques are
  combined by `vote_counts` / `vote_flags`.
* `RuleCritiqueProvider`: the rule-based stand-in for the built-in envs (no judge configured): a tool turn is wrong
  if it has no parsable call, a failed call, or a call whose name matches no gold call; the answer turn is wrong if
  the answer mismatches the gold answer.

Signals written (every provider):

* ``Turn.signals["capo_err"]``: the error flag ``e_{i,k}`` (1 / 0; soft ``v/m_eff`` with ``vote="average"``);
* ``Turn.signals["capo_votes"]``: ``v_{i,k}``, the number of valid critiques that flag the turn;
* ``prompt_signals["capo_valid_critiques"]``: ``m_eff``, the valid critiques of the rollout (0 ⇒ no flag);
* ``prompt_signals["capo_critiques"]``: the critiques asked for (``n_critiques``; 1 for the rule stand-in);
* ``prompt_signals["capo_llm"]``: 1 if an LLM judged the rollout, 0 for the rule stand-in (which one ran);
* ``Trajectory.meta["capo"]``: ``{"judge": "genprm" | "rule", "critiques": [sorted flagged steps | None, ...]}``
  (None = unparseable critique), for `turngym view`.

A judge that raises or returns the wrong number of completions raises `SignalError` (``on_error="raise"``, default);
``on_error="zero"`` gives the rollouts of that call no flag and no valid critique, counted in ``provider.errors``.
An unparseable critique is not an error: it is dropped and counted in ``provider.invalid``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from turngym.credit.base import PROMPT_SIGNALS_KEY
from turngym.credit.signals import SIGNAL_PROVIDERS, SignalContext, judge_completions
from turngym.credit.siop import normalize_answer
from turngym.errors import ConfigError, SignalError
from turngym.types import Trajectory, Turn

__all__ = [
    "CAPO_CRITIQUE_TEMPLATE",
    "CAPOCritiqueOptions",
    "GenPRMCritiqueProvider",
    "RuleCritiqueProvider",
    "Vote",
    "capo_critique_factory",
    "critique_prompt",
    "parse_critique",
    "vote_counts",
    "vote_flags",
]

Vote = Literal["intersection", "majority", "union", "average"]
VOTES = ("intersection", "majority", "union", "average")

CAPO_CRITIQUE_TEMPLATE = (
    "You check the steps of an AI agent that solved a task with tools. Each step is one action of the agent, "
    "followed by what it observed.\n\n"
    "Task: {question}\n{gold}\n"
    "The agent's {n_steps} steps:\n{steps}\n\n"
    "Judge each step only by its own correctness: is the action itself right (a well-formed tool call that is a "
    "sensible move towards the answer, or a correct final answer)? Do not mark a step wrong only because an earlier "
    "step was wrong.\n"
    "Reply with a JSON list of the indices of the incorrect steps, for example [1, 3], or [] if every step is correct."
)
"""The GenPRM prompt (spec §4.1 [R]): ``{question}``, ``{gold}`` (a "Reference answer: ..." line or empty),
``{n_steps}`` and ``{steps}`` (``<step 0>`` ... ``<step T-1>`` blocks)."""

_LIST_RE = re.compile(r"\[[^\[\]]*\]")


# ================================================================================ parsing and voting


def parse_critique(text: str, n_steps: int) -> frozenset[int] | None:
    """The step indices a critique flags: the *last* JSON list of integers in ``text``.

    Indices outside ``0..n_steps-1`` are ignored, duplicates count once. Returns None when the text holds no JSON list
    of integers (an invalid critique); ``[]`` is a valid critique that flags nothing.
    """
    for m in reversed(list(_LIST_RE.finditer(str(text)))):
        try:
            v = json.loads(m.group(0))
        except ValueError:
            continue
        if isinstance(v, list) and all(type(x) is int for x in v):
            return frozenset(x for x in v if 0 <= x < n_steps)
    return None


def vote_counts(critiques: Sequence[Collection[int]], n_steps: int) -> list[int]:
    """``v_k = Σ_j 1[k ∈ S_j]``: how many of the (valid) critiques ``S_j`` flag step ``k``, for ``k < n_steps``."""
    v = [0] * n_steps
    for s in critiques:
        for k in set(s):
            if 0 <= k < n_steps:
                v[k] += 1
    return v


def vote_flags(votes: Sequence[int], m_eff: int, vote: Vote) -> list[float]:
    """Error flags ``e_k`` from the votes ``v_k`` of ``m_eff`` valid critiques (spec §4.1).

    ``"intersection"``: ``v = m_eff``; ``"majority"``: ``v ≥ m_eff/2``; ``"union"``: ``v ≥ 1``; ``"average"`` (soft,
    [R]): ``v / m_eff``. ``m_eff = 0`` ⇒ every flag 0.
    """
    if vote not in VOTES:
        raise ConfigError(f"vote={vote!r} is not a CAPO voting rule; use one of {', '.join(VOTES)}.")
    if m_eff <= 0:
        return [0.0] * len(votes)
    if vote == "average":
        return [v / m_eff for v in votes]
    if vote == "intersection":
        return [1.0 if v >= m_eff else 0.0 for v in votes]
    if vote == "majority":
        return [1.0 if 2 * v >= m_eff else 0.0 for v in votes]
    return [1.0 if v >= 1 else 0.0 for v in votes]


# ================================================================================ prompt


def _question(t: Trajectory) -> str:
    for key in ("question", "prompt"):
        if isinstance(t.meta.get(key), str) and t.meta[key].strip():
            return t.meta[key]
    users = [m for m in t.prompt_messages if m.get("role") == "user"]
    return str(users[-1].get("content", "")) if users else ""


def _golds(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(g) for g in v if g is not None]
    return [str(v)]


def _observation(u: Turn) -> str:
    txt = "\n".join(str(m.get("content", "")) for m in u.obs_messages)
    if not txt and u.tool_results:
        txt = "\n".join(r.text for r in u.tool_results)
    return txt


def critique_prompt(t: Trajectory, *, with_gold: bool = True, obs_chars: int = 300,
                    template: str = CAPO_CRITIQUE_TEMPLATE, gold_answer_key: str = "gold_answer") -> str:
    """The GenPRM prompt for one rollout: question, gold answer (``with_gold`` and present in ``meta``), and the turns
    as ``<step k>`` blocks (the action text, then the first ``obs_chars`` characters of the observation that
    followed)."""
    blocks = []
    for k, u in enumerate(t.turns):
        obs = _observation(u)[:obs_chars] if obs_chars > 0 else ""
        body = u.action_text.strip() or "(empty action)"
        blocks.append(f"<step {k}>\n{body}" + (f"\n[observation] {obs}" if obs else ""))
    golds = _golds(t.meta.get(gold_answer_key)) if with_gold else []
    gold = f"Reference answer: {' / '.join(golds)}\n" if golds else ""
    return template.format(question=_question(t), gold=gold, n_steps=len(t.turns), steps="\n".join(blocks))


def _check(n_critiques: int, vote: str, obs_chars: int, on_error: str) -> None:
    if n_critiques < 1:
        raise ConfigError(f"n_critiques={n_critiques} must be >= 1 (the paper uses 4). Fix: signals.n_critiques=4.")
    if vote not in VOTES:
        raise ConfigError(f"vote={vote!r} is not a CAPO voting rule. Fix: signals.vote=one of {', '.join(VOTES)}.")
    if obs_chars < 0:
        raise ConfigError(f"obs_chars={obs_chars} must be >= 0 (0 hides the observations). Fix: signals.obs_chars=300.")
    if on_error not in ("raise", "zero"):
        raise ConfigError(f"on_error={on_error!r} must be 'raise' or 'zero'. Fix: signals.on_error=raise.")


def _write(t: Trajectory, flags: Sequence[float], votes: Sequence[float], *, m_eff: int, m: int, llm: bool,
           critiques: list, err_signal: str, votes_signal: str) -> None:
    for u, e, v in zip(t.turns, flags, votes):
        u.signals[err_signal] = float(e)
        u.signals[votes_signal] = float(v)
    ps = t.meta.setdefault(PROMPT_SIGNALS_KEY, {})
    ps["capo_valid_critiques"] = float(m_eff)
    ps["capo_critiques"] = float(m)
    ps["capo_llm"] = 1.0 if llm else 0.0
    t.meta["capo"] = {"judge": "genprm" if llm else "rule", "critiques": critiques}


# ================================================================================ providers


class GenPRMCritiqueProvider:
    """CAPO's generative-PRM critiques with voting (spec §4.1).

    One prompt per rollout (`critique_prompt`), sent ``n_critiques`` times in one judge call (the judge samples at a
    temperature > 0, so the critiques can disagree); each completion is parsed with `parse_critique`, the valid ones
    vote (`vote_counts`, `vote_flags`).

    Args:
        judge: ``judge(prompts) -> completions`` (an OpenAI-compatible client, `turngym.agents.judge.OpenAIJudge`).
        n_critiques: ``m``, critiques per rollout (paper: 4).
        vote: "intersection" (default; best for 1-1.5B policies in the paper), "majority", "union" or "average".
        with_gold: Show the gold answer (``meta[gold_answer_key]``) to the judge (paper: yes).
        obs_chars: Characters of each observation shown after its action.
        on_error: "raise" (`SignalError`, default) or "zero" (no flags for the call's rollouts, counted in
            ``errors``).
        template: The prompt template (`CAPO_CRITIQUE_TEMPLATE`).
        gold_answer_key: ``Trajectory.meta`` key of the gold answer (str or list of alternatives).
        err_signal: Turn signal of the flags (`CAPOConfig.err_signal`).
        votes_signal: Turn signal of the votes.

    Attributes:
        errors: Critiques lost to judge failures (``on_error="zero"``).
        invalid: Critiques without a JSON list of integers.
        requested: Critiques asked for so far.
    """

    name = "capo_critique"
    kind = "genprm"

    def __init__(self, judge: Callable[[Sequence[str]], Sequence[str]], *, n_critiques: int = 4, vote: Vote =
                 "intersection", with_gold: bool = True, obs_chars: int = 300,
                 on_error: Literal["raise", "zero"] = "raise", template: str = CAPO_CRITIQUE_TEMPLATE,
                 gold_answer_key: str = "gold_answer", err_signal: str = "capo_err", votes_signal: str = "capo_votes"):
        _check(n_critiques, vote, obs_chars, on_error)
        self.judge, self.n_critiques, self.vote, self.with_gold = judge, int(n_critiques), vote, with_gold
        self.obs_chars, self.on_error, self.template, self.gold_answer_key = int(obs_chars), on_error, template, \
            gold_answer_key
        self.err_signal, self.votes_signal = err_signal, votes_signal
        self.errors = self.invalid = self.requested = 0

    def prompt(self, t: Trajectory) -> str:
        """The critique prompt of rollout ``t``."""
        return critique_prompt(t, with_gold=self.with_gold, obs_chars=self.obs_chars, template=self.template,
                               gold_answer_key=self.gold_answer_key)

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        m = self.n_critiques
        rows = [i for i, t in enumerate(trajs) if t.turns]
        prompts = [p for i in rows for p in [self.prompt(trajs[i])] * m]  # [rows * m], rollout-major
        outs: list[str] | None = None
        if prompts:
            self.requested += len(prompts)
            try:
                outs = judge_completions(self.judge, prompts)
            except Exception as e:
                if self.on_error == "raise":
                    raise SignalError(f"GenPRMCritiqueProvider (CAPO): the judge failed on {len(prompts)} critique "
                                      f"prompts ({len(rows)} rollouts x {m}): {e!r}. Check judge_url, or set "
                                      "signals.on_error=zero to train on zero penalties instead.") from e
                self.errors += len(prompts)
                outs = None
        for j, i in enumerate(rows):
            t = trajs[i]
            n = len(t.turns)
            crit = [parse_critique(x, n) for x in outs[j * m:(j + 1) * m]] if outs is not None else []
            valid = [c for c in crit if c is not None]
            self.invalid += len(crit) - len(valid)
            votes = vote_counts(valid, n)
            _write(t, vote_flags(votes, len(valid), self.vote), votes, m_eff=len(valid), m=m, llm=True,
                   critiques=[sorted(c) if c is not None else None for c in crit], err_signal=self.err_signal,
                   votes_signal=self.votes_signal)
        return trajs


class RuleCritiqueProvider:
    """CAPO's rule-based stand-in for the GenPRM on the built-in envs (spec §4.1): one deterministic critique.

    A non-answer turn is wrong if it has no parsable tool call (no call, or ``info["parse_errors"]``), a failed call,
    or a call whose name matches no gold call (``meta[gold_calls_key]``; not checked when the key is absent). The
    answer turn (the last turn of a rollout with a final answer) is wrong if the answer matches no gold alternative
    after `normalize_answer` (not judged without a gold answer). With ``flag_unanswered`` (default) the last turn of
    a rollout that ended *without* an answer is wrong too: failing to answer is the episode's wrong final step.
    Without that rule, a multi-turn policy escapes every penalty by never answering (its tool turns are clean and a
    wrong answer is flagged), and it does: in the powered study CAPO with ``flag_unanswered=false`` stopped answering
    within 5 steps (benchmarks/README.md). Writes the same signals as `GenPRMCritiqueProvider` with
    ``m = m_eff = 1`` (so every vote rule gives the same flags) and ``capo_llm = 0``.
    """

    name = "capo_critique"
    kind = "rule"

    def __init__(self, *, gold_answer_key: str = "gold_answer", gold_calls_key: str = "gold_calls",
                 err_signal: str = "capo_err", votes_signal: str = "capo_votes", flag_unanswered: bool = True):
        self.gold_answer_key, self.gold_calls_key = gold_answer_key, gold_calls_key
        self.err_signal, self.votes_signal = err_signal, votes_signal
        self.flag_unanswered = flag_unanswered

    def incorrect_steps(self, t: Trajectory) -> list[int]:
        """Indices of the turns of ``t`` the rules flag."""
        golds = [normalize_answer(g) for g in _golds(t.meta.get(self.gold_answer_key))]
        calls = t.meta.get(self.gold_calls_key)
        gold_names = None if calls is None else {
            str(g.get("name", "") if isinstance(g, Mapping) else getattr(g, "name", "")).lower() for g in calls}
        out = []
        for k, u in enumerate(t.turns):
            if k == len(t.turns) - 1 and t.final_answer is not None:
                wrong = bool(golds) and normalize_answer(t.final_answer) not in golds
            else:
                wrong = (not u.tool_calls or bool(u.info.get("parse_errors"))
                         or any(not r.ok for r in u.tool_results)
                         or (gold_names is not None and any(c.name.lower() not in gold_names for c in u.tool_calls)))
            if wrong or (self.flag_unanswered and t.final_answer is None and k == len(t.turns) - 1):
                out.append(k)
        return out

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        for t in trajs:
            bad = set(self.incorrect_steps(t))
            flags = [1.0 if k in bad else 0.0 for k in range(len(t.turns))]
            _write(t, flags, flags, m_eff=1, m=1, llm=False, critiques=[sorted(bad)], err_signal=self.err_signal,
                   votes_signal=self.votes_signal)
        return trajs


# ================================================================================ registration


@dataclass(frozen=True)
class CAPOCritiqueOptions:
    """Options of the ``capo_critique`` provider (``signals.<field>=value``); used with a judge (``judge_url``)."""

    n_critiques: int = 4
    """Critiques per rollout (m); the paper uses 4 (2 -> 4 -> 8 keeps helping)."""
    vote: Vote = "intersection"
    """Flag rule: intersection (all valid critiques agree; best for small policies), majority, union or average."""
    with_gold: bool = True
    """Show the gold answer to the judge (paper: yes; a no-gold ablation was close)."""
    obs_chars: int = 300
    """Characters of each observation shown to the judge after its action."""
    on_error: Literal["raise", "zero"] = "raise"
    """Judge failure: raise SignalError (default) or train on zero penalties, counted."""
    flag_unanswered: bool = True
    """Rule stand-in (no judge): flag the last turn of a rollout that ended without an answer (false: only wrong
    steps and wrong answers are flagged, and a policy can escape every penalty by never answering)."""

    def __post_init__(self):
        _check(self.n_critiques, self.vote, self.obs_chars, self.on_error)


def capo_critique_factory(ctx: SignalContext) -> GenPRMCritiqueProvider | RuleCritiqueProvider:
    """The ``capo_critique`` provider: `GenPRMCritiqueProvider` over ``ctx.judge`` when the trainer has a judge
    (``judge_url``), else the rule stand-in `RuleCritiqueProvider`. Writes the flags into the credit option
    ``err_signal`` (default ``capo_err``)."""
    err = str(ctx.options.get("err_signal", "capo_err"))
    opts = ctx.options_for(CAPOCritiqueOptions)
    if ctx.judge is None:
        return RuleCritiqueProvider(err_signal=err, flag_unanswered=opts.flag_unanswered)
    judge_opts = {k: v for k, v in dataclasses.asdict(opts).items() if k != "flag_unanswered"}
    return GenPRMCritiqueProvider(ctx.judge, err_signal=err, **judge_opts)


capo_critique_factory.config_cls = CAPOCritiqueOptions  # type: ignore[attr-defined]
if "capo_critique" not in SIGNAL_PROVIDERS:
    SIGNAL_PROVIDERS.add("capo_critique", capo_critique_factory)
