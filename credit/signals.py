"""Signal providers: fill ``Turn.signals`` / ``Trajectory.meta["prompt_signals"]`` before credit assignment.

Providers that need a model or a service receive it as a callable and import no model code (spec §2.2):

* ``ContinuationScorer``: ``scorer(contexts, continuations) -> per-token log-probs`` of each continuation given its
  context, teacher-forced (e.g. one batched no-grad forward of π_θold). Used by `GoldProbeProvider` (IGPO/A²TGPO)
  and `SupportProvider` (SIOP).
* ``Tokenize``: ``tokenize(text) -> (ids, char_offsets)``; `hf_tokenize` wraps a HF fast tokenizer.
* NLI / judge / PRM callables for `OutcomeClusterProvider`, `LLMJudgeProvider`, `PRMProvider`.

A callable that raises, or returns something of the wrong shape, makes the provider raise `SignalError`: never
silent zeros. Data that is simply absent (no gold answer for a task) leaves the signal missing (NaN in the batch).
Every provider is ``provider(trajs) -> trajs`` (filled in place) and has a ``name``.

Credit methods declare the providers they need by name (``register_credit(..., signals=("gold_probe",))``):
`SIGNAL_PROVIDERS` maps each name to a factory ``factory(ctx: SignalContext) -> SignalProvider`` and
`build_providers` instantiates a method's declared providers, in order, from one `SignalContext` (what the trainer
can hand over: the probe scorer, the tokenizer, the env's answer template, the model, the credit options). Likewise
`TOKEN_FEATURES` maps a declared token feature (DelTA's ``"hidden"``) to a builder
``builder(ctx, batch) -> {key: [B, L, ...] tensor}``; builders that run the model are registered by the trainer
(``turngym.trainers.batch_signals`` registers ``"hidden"``), and `build_token_features` looks them up. Register your own
with `register_signal_provider` / `register_token_feature`; an unknown name raises `ConfigError` listing the known.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from torch import Tensor

from turngym.credit.base import PROMPT_SIGNALS_KEY, GroupBatch, credit_needs
from turngym.credit.matchtir import answer_f1, hard_assignment, similarity_matrix, soft_assignment
from turngym.credit.siop import (
    Equivalence,
    NormalizedStringEquivalence,
    cluster_answers,
    normalize_answer,
    reliability_target,
)
from turngym.errors import ConfigError, SignalError
from turngym.registry import Registry, unknown_name_message
from turngym.types import Trajectory

__all__ = [
    "DEFAULT_PROBE_PREFIX",
    "DEFAULT_PROBE_SUFFIX",
    "SIGNAL_PROVIDERS",
    "TOKEN_FEATURES",
    "ContinuationScorer",
    "GoldProbeProvider",
    "LLMJudgeProvider",
    "OutcomeClusterProvider",
    "PRMProvider",
    "RulePRMProvider",
    "RuleStepJudgeProvider",
    "SignalContext",
    "SignalProvider",
    "SupportProvider",
    "Tokenize",
    "ToolMatchProvider",
    "build_providers",
    "build_token_features",
    "gold_token_span",
    "hf_tokenize",
    "judge_completions",
    "parse_judge_score",
    "register_signal_provider",
    "register_token_feature",
    "run_providers",
]

ContinuationScorer = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], Sequence[Sequence[float]]]
Tokenize = Callable[[str], tuple[Sequence[int], Sequence[tuple[int, int]]]]

DEFAULT_PROBE_PREFIX = "\nNow there's enough information to answer\n</think>\n<answer>\n"
DEFAULT_PROBE_SUFFIX = "\n</answer>"


class SignalProvider(Protocol):
    name: str

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]: ...


def run_providers(trajs: list[Trajectory], providers: Sequence[SignalProvider]) -> list[Trajectory]:
    """Apply providers in order (e.g. clustering before support scoring)."""
    for p in providers:
        trajs = p(trajs)
    return trajs


def hf_tokenize(tokenizer: Any) -> Tokenize:
    """Wrap a HF *fast* tokenizer as a `Tokenize` callable (duck-typed; no transformers import). The text (probe
    prefix, gold answer, suffix) is tokenized literally: special-token strings in it never become special tokens."""

    def tok(text: str):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    return tok


def gold_token_span(offsets: Sequence[tuple[int, int]], start_char: int, end_char: int) -> tuple[int, int]:
    """Token range ``[a, b)`` covering the characters ``[start_char, end_char)``: from the first token whose char end
    exceeds ``start_char`` to the last token that overlaps the span. Empty (a == b) if none."""
    a = next((i for i, (_, e) in enumerate(offsets) if e > start_char), len(offsets))
    b = a
    for i in range(a, len(offsets)):
        s, _ = offsets[i]
        if s < end_char:
            b = i + 1
        else:
            break
    return a, b


def _prompt_signals(t: Trajectory) -> dict[str, Any]:
    return t.meta.setdefault(PROMPT_SIGNALS_KEY, {})


def _call_scorer(scorer: ContinuationScorer, ctx: list[list[int]], cont: list[list[int]], batch_size: int,
                 who: str) -> list[list[float]]:
    out: list[list[float]] = []
    for s in range(0, len(ctx), batch_size):
        c, y = ctx[s:s + batch_size], cont[s:s + batch_size]
        try:
            res = list(scorer(c, y))
        except Exception as e:
            raise SignalError(f"{who}: the scorer callable failed on a batch of {len(c)} probes: {e!r}") from e
        if len(res) != len(c):
            raise SignalError(f"{who}: the scorer returned {len(res)} results for {len(c)} probes.")
        for r, yy in zip(res, y):
            r = [float(v) for v in r]
            if len(r) != len(yy):
                raise SignalError(f"{who}: the scorer returned {len(r)} log-probs for a continuation of "
                                  f"{len(yy)} tokens; it must return one log-prob per continuation token.")
            out.append(r)
    return out


class _PseudoResponse:
    """Token ids of ``prefix + answer + suffix`` and the answer's token span (cached per answer)."""

    def __init__(self, tokenize: Tokenize, prefix: str, suffix: str):
        self.tokenize, self.prefix, self.suffix = tokenize, prefix, suffix
        self.cache: dict[str, tuple[list[int], int, int]] = {}

    def __call__(self, answer: str) -> tuple[list[int], int, int]:
        if answer not in self.cache:
            text = self.prefix + answer + self.suffix
            try:
                ids, offs = self.tokenize(text)
            except Exception as e:
                raise SignalError(f"tokenize failed on the probe pseudo-response: {e!r}") from e
            a, b = gold_token_span(list(offs), len(self.prefix), len(self.prefix) + len(answer))
            self.cache[answer] = (list(ids)[:b], a, b)
        return self.cache[answer]


def _first_gold(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return str(v[0]) if v else None
    return str(v)


class GoldProbeProvider:
    """IGPO / A²TGPO gold-answer probe (spec §4.1).

    Writes ``probe_score`` = mean log-prob of the gold answer tokens given ``C_{−1}`` (prompt + ``generation_prefix``,
    into ``meta["prompt_signals"]``) and given ``C_k`` = prompt + turns ``0..k`` with their observations, for
    ``k < T − 1`` (into ``Turn.signals``). All probes of the call go through the scorer in batches.

    A gold answer that changes with the env's state (a game's plan: what is left to do after each move) comes in
    each step's ``Turn.info[gold_key]``; ``C_k`` is then scored on turn ``k``'s (the gold from the state that turn
    left), ``C_{−1}`` on the trajectory's. Envs whose step info has no such key are scored on the trajectory's gold
    at every ``k`` (the spec's probe). The remaining plan is what a probe can learn about from a move: scoring the
    whole plan from the start, every move leaves the probe as it was (IG about 1e-5 nats on TextWorld).

    Args:
        scorer: `ContinuationScorer` of the behaviour policy π_θold.
        tokenize: `Tokenize` of the policy's tokenizer.
        prefix / suffix: Pseudo-response template around the gold answer.
        generation_prefix: Ids appended to the prompt for ``C_{−1}`` (e.g. the ids of ``"<think>"``).
        gold_key: ``Trajectory.meta`` key of the gold answer (a list uses its first alternative).
        signal: Signal name.
        batch_size: Probes per scorer call.
        turn_gold: Score ``C_k`` on turn ``k``'s ``info[gold_key]`` when it has one (False: the trajectory's gold
            at every ``k``, as the spec's probe).
    """

    name = "gold_probe"

    def __init__(self, scorer: ContinuationScorer, tokenize: Tokenize, *, prefix: str = DEFAULT_PROBE_PREFIX,
                 suffix: str = DEFAULT_PROBE_SUFFIX, generation_prefix: Sequence[int] = (),
                 gold_key: str = "gold_answer", signal: str = "probe_score", batch_size: int = 64,
                 turn_gold: bool = True):
        self.scorer, self.signal, self.gold_key, self.batch_size = scorer, signal, gold_key, batch_size
        self.turn_gold = turn_gold
        self.generation_prefix = list(generation_prefix)
        self.pseudo = _PseudoResponse(tokenize, prefix, suffix)

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        ctx, cont, spans, where = [], [], [], []
        for i, t in enumerate(trajs):
            gold = _first_gold(t.meta.get(self.gold_key))
            if gold is None:
                continue
            ids, a, b = self.pseudo(gold)
            if b <= a:
                continue  # empty gold token range: the IG stays missing
            ctx.append(list(t.prompt_ids) + self.generation_prefix)
            cont.append(ids)
            spans.append((a, b))
            where.append((i, -1))
            run = list(t.prompt_ids)
            for k, u in enumerate(t.turns[:-1]):
                run = run + list(u.action_ids) + list(u.obs_ids)
                now = _first_gold(u.info.get(self.gold_key)) if self.turn_gold and isinstance(u.info, dict) else None
                ids_k, a_k, b_k = (ids, a, b) if now is None else self.pseudo(now)
                if b_k <= a_k:
                    continue  # nothing left to score (a finished plan): this turn's score stays missing
                ctx.append(run)
                cont.append(ids_k)
                spans.append((a_k, b_k))
                where.append((i, k))
        scores = _call_scorer(self.scorer, ctx, cont, self.batch_size, "GoldProbeProvider")
        for (i, k), lp, (a, b) in zip(where, scores, spans):
            s = sum(lp[a:b]) / (b - a)
            if k < 0:
                _prompt_signals(trajs[i])[self.signal] = s
            else:
                trajs[i].turns[k].signals[self.signal] = s
        return trajs


class OutcomeClusterProvider:
    """SIOP steps 1–4: cluster the answers of each prompt group and set the target mass ``q`` (spec §6).

    Writes ``meta["prompt_signals"]["siop_q"]``, ``meta["siop_cluster"]`` (−1 without answer) and ``meta["siop_refs"]``
    (up to ``max_refs`` distinct answer strings of the cluster, member order). An answer that is empty after
    `normalize_answer` counts as no answer (q = 0, no references): it names no outcome, and its support cannot be
    scored, so a cluster of empty answers would get the consensus reward with no potential.

    Args:
        equivalence: `Equivalence` callable: ``JudgeEquivalence(nli)`` for NLI / LLM judging; default
            ``NormalizedStringEquivalence()`` (no model).
        eta: Reliability weight η (0 disables the reliability-aware target).
        entail_prob: ``entail_prob([(premise, hypothesis), ...]) -> [P(entailment), ...]`` for the evidence term;
            None disables it (q = empirical mass).
        max_refs: M, references per cluster for the support scorer.
        use_gold: Gold-answer limit: ``Ref = {y*}`` and ``q = 1`` for every rollout.
        gold_key: Meta key of the gold answer (gold limit only).
        premise_chars: Observation characters passed as premise.
    """

    name = "siop_cluster"

    def __init__(self, equivalence: Equivalence | None = None, *, eta: float = 1.0,
                 entail_prob: Callable[[Sequence[tuple[str, str]]], Sequence[float]] | None = None,
                 max_refs: int = 3, use_gold: bool = False, gold_key: str = "gold_answer", premise_chars: int = 2000):
        self.equivalence = equivalence if equivalence is not None else NormalizedStringEquivalence()
        self.eta, self.entail_prob = eta, entail_prob
        self.max_refs, self.use_gold, self.gold_key, self.premise_chars = max_refs, use_gold, gold_key, premise_chars

    @staticmethod
    def question(t: Trajectory) -> str:
        if "question" in t.meta:
            return str(t.meta["question"])
        users = [m for m in t.prompt_messages if m.get("role") == "user"]
        return str(users[-1].get("content", "")) if users else ""

    def _observations(self, t: Trajectory) -> list[str]:
        obs = []
        for u in t.turns:
            txt = "\n".join(str(m.get("content", "")) for m in u.obs_messages)
            if not txt and u.tool_results:
                txt = "\n".join(r.text for r in u.tool_results)
            if txt:
                obs.append(txt[: self.premise_chars])
        return obs

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(trajs):
            groups[str(t.group_id)].append(i)
        for idx in groups.values():
            if self.use_gold:
                for i in idx:
                    gold = _first_gold(trajs[i].meta.get(self.gold_key))
                    if gold is None:
                        raise SignalError(f"OutcomeClusterProvider(use_gold=True): trajectory {i} has no "
                                          f"meta[{self.gold_key!r}].")
                    trajs[i].meta["siop_refs"] = [gold]
                    trajs[i].meta["siop_cluster"] = 0
                    _prompt_signals(trajs[i])["siop_q"] = 1.0
                continue
            q_text = self.question(trajs[idx[0]])
            # an answer that is empty after normalisation ("<answer></answer>", "."): no outcome mode, like no answer
            answers = [a if a is not None and normalize_answer(a) else None
                       for a in (trajs[i].final_answer for i in idx)]
            try:
                cid = cluster_answers(q_text, answers, self.equivalence)
            except SignalError:
                raise
            except Exception as e:
                raise SignalError(f"OutcomeClusterProvider: the equivalence judge failed: {e!r}") from e
            n_valid = sum(1 for c in cid if c >= 0)
            n_clusters = max(cid) + 1 if n_valid else 0
            members = [[idx[j] for j, c in enumerate(cid) if c == k] for k in range(n_clusters)]
            refs = []
            for mem in members:
                seen: list[str] = []
                for i in mem:
                    a = trajs[i].final_answer
                    if a not in seen:
                        seen.append(a)
                refs.append(seen[: self.max_refs])
            mass = [len(m) / n_valid for m in members]
            rel = [0.0] * n_clusters
            if self.eta > 0 and n_clusters >= 2 and self.entail_prob is not None:
                pairs, owner = [], []
                for k, mem in enumerate(members):
                    for i in mem:
                        for o in self._observations(trajs[i]):
                            pairs.append((o, f"{q_text} {refs[k][0]}"))
                            owner.append((k, i))
                if pairs:
                    try:
                        probs = [float(p) for p in self.entail_prob(pairs)]
                    except Exception as e:
                        raise SignalError(f"OutcomeClusterProvider: entail_prob failed: {e!r}") from e
                    if len(probs) != len(pairs):
                        raise SignalError(f"OutcomeClusterProvider: entail_prob returned {len(probs)} values "
                                          f"for {len(pairs)} pairs.")
                    per_i: dict[tuple[int, int], list[float]] = defaultdict(list)
                    for (k, i), p in zip(owner, probs):
                        per_i[(k, i)].append(p)
                    for k in range(n_clusters):
                        ev = [sum(v) / len(v) for (kk, _), v in per_i.items() if kk == k]
                        rel[k] = sum(ev) / len(ev) if ev else 0.0
            q = reliability_target(mass, rel, self.eta if self.entail_prob is not None else 0.0)
            for j, i in enumerate(idx):
                c = cid[j]
                trajs[i].meta["siop_cluster"] = c
                trajs[i].meta["siop_refs"] = refs[c] if c >= 0 else []
                _prompt_signals(trajs[i])["siop_q"] = q[c] if c >= 0 else 0.0
        return trajs


class SupportProvider:
    """SIOP step 5: posterior support ``p̂_{i,k} = Σ_{y∈Ref} α·exp(s(y|τ_{i,k}))`` (spec §6).

    ``τ_{i,−1}`` = prompt, ``τ_{i,k}`` = prompt + response up to the end of policy turn ``k`` (before its observation).
    Reads ``meta["siop_refs"]`` (from `OutcomeClusterProvider`); writes ``siop_support`` per turn and at the prompt.
    Non-finite reference scores are skipped; all non-finite leaves the support missing.
    """

    name = "siop_support"

    def __init__(self, scorer: ContinuationScorer, tokenize: Tokenize, *, prefix: str = DEFAULT_PROBE_PREFIX,
                 suffix: str = DEFAULT_PROBE_SUFFIX, signal: str = "siop_support", batch_size: int = 64):
        self.scorer, self.signal, self.batch_size = scorer, signal, batch_size
        self.pseudo = _PseudoResponse(tokenize, prefix, suffix)

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        ctx, cont, spans, where = [], [], [], []
        for i, t in enumerate(trajs):
            if "siop_refs" not in t.meta:
                raise SignalError(f"SupportProvider: trajectory {i} has no meta['siop_refs']; run "
                                  "OutcomeClusterProvider first.")
            refs = [r for r in t.meta["siop_refs"] if r is not None]
            if not refs:
                continue
            contexts = [list(t.prompt_ids)]
            run = list(t.prompt_ids)
            for u in t.turns:
                contexts.append(run + list(u.action_ids))
                run = run + list(u.action_ids) + list(u.obs_ids)
            for k, c in enumerate(contexts):
                for r in refs:
                    ids, a, b = self.pseudo(str(r))
                    if b <= a:
                        continue
                    ctx.append(c)
                    cont.append(ids)
                    spans.append((a, b))
                    where.append((i, k - 1, len(refs)))
        scores = _call_scorer(self.scorer, ctx, cont, self.batch_size, "SupportProvider")
        acc: dict[tuple[int, int], float] = defaultdict(float)
        seen: set[tuple[int, int]] = set()
        for (i, k, n_ref), lp, (a, b) in zip(where, scores, spans):
            s = sum(lp[a:b]) / (b - a)
            if math.isfinite(s):
                acc[(i, k)] += math.exp(s) / n_ref
                seen.add((i, k))
        for (i, k) in seen:
            if k < 0:
                _prompt_signals(trajs[i])[self.signal] = acc[(i, k)]
            else:
                trajs[i].turns[k].signals[self.signal] = acc[(i, k)]
        return trajs


class ToolMatchProvider:
    """MatchTIR per-turn rewards ``match_r`` (spec §5).

    Non-answer turns: mean call reward of the turn's calls (0 without a call); the answer turn (the last turn of a
    trajectory with a final answer; its calls are ignored): token-set F1 vs ``meta[gold_answer_key]``. Calls of the
    whole trajectory are matched against ``meta["gold_calls"]`` (list of ``{"name", "arguments" | "parameters"}``).

    Args:
        assignment: "hungarian" (default), "greedy" (release parity) or "soft" (entropic OT).
        unmatched_penalty: Reward of an unmatched call (hard assignment).
        ot_eps: Sinkhorn regularisation.
    """

    name = "tool_match"

    def __init__(self, assignment: Literal["hungarian", "greedy", "soft"] = "hungarian", *,
                 unmatched_penalty: float = 0.0, ot_eps: float = 0.1, gold_calls_key: str = "gold_calls",
                 gold_answer_key: str = "gold_answer", signal: str = "match_r"):
        if assignment not in ("hungarian", "greedy", "soft"):
            raise ValueError(f"assignment must be 'hungarian', 'greedy' or 'soft', got {assignment!r}.")
        self.assignment, self.unmatched_penalty, self.ot_eps = assignment, unmatched_penalty, ot_eps
        self.gold_calls_key, self.gold_answer_key, self.signal = gold_calls_key, gold_answer_key, signal

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        for i, t in enumerate(trajs):
            if self.gold_calls_key not in t.meta:
                raise SignalError(f"ToolMatchProvider: trajectory {i} has no meta[{self.gold_calls_key!r}]; the env "
                                  "must put its gold tool calls in the task metadata.")
            gold = list(t.meta[self.gold_calls_key] or [])
            n = len(t.turns)
            answer_turn = n - 1 if t.final_answer is not None and n else None
            calls, owner = [], []
            for k, u in enumerate(t.turns):
                if k == answer_turn:
                    continue
                for c in u.tool_calls:
                    calls.append(c)
                    owner.append(k)
            s = similarity_matrix(calls, gold)
            if self.assignment == "soft":
                r = soft_assignment(s, self.ot_eps)
            else:
                r = hard_assignment(s, self.assignment, self.unmatched_penalty)
            per_turn: dict[int, list[float]] = defaultdict(list)
            for k, v in zip(owner, r):
                per_turn[k].append(float(v))
            for k, u in enumerate(t.turns):
                if k == answer_turn:
                    u.signals[self.signal] = answer_f1(t.final_answer, t.meta.get(self.gold_answer_key))
                else:
                    v = per_turn.get(k, [])
                    u.signals[self.signal] = sum(v) / len(v) if v else 0.0
        return trajs


def judge_completions(judge: Callable[[Sequence[str]], Sequence[str]], prompts: Sequence[str]) -> list[str]:
    """``judge(prompts)`` as strings, one per prompt; raises ``ValueError`` when the judge returns another count (the
    judge's own exceptions pass through). Providers turn either into `SignalError` or a counted neutral signal."""
    outs = [str(o) for o in judge(prompts)]
    if len(outs) != len(prompts):
        raise ValueError(f"judge returned {len(outs)} completions for {len(prompts)} prompts")
    return outs


def parse_judge_score(text: str) -> float:
    """Ternary judge score from text: ``<score>x</score>``, then ``score: x``, then the first number; else 0.
    Clamped to {−1, 0, 1}."""
    m = re.search(r"<score>\s*([+-]?\d+(?:\.\d+)?)\s*</score>", text)
    if m is None:
        m = re.search(r"score\s*[:=]\s*([+-]?\d+(?:\.\d+)?)", text, flags=re.IGNORECASE)
    if m is None:
        m = re.search(r"([+-]?\d+(?:\.\d+)?)", text)
    if m is None:
        return 0.0
    v = float(m.group(1))
    return float(max(-1, min(1, round(v))))


def _is_answer_turn(t: Trajectory, k: int) -> bool:
    return k == len(t.turns) - 1 and t.final_answer is not None


class RuleStepJudgeProvider:
    """Rule-based step judge from gold data (built-in envs; SLATE signals without an LLM).

    Per turn: ``judge_action`` = +1 / −1 for a correct / wrong final answer (normalised match against any gold
    alternative); for a tool step −1 if it has no valid call or a failed call, +1 if one of its calls exactly matches
    a gold call (``meta["gold_calls"]``), else 0. ``judge_think`` = 0 (rules cannot judge reasoning).
    Also writes ``slate_is_answer`` and ``slate_step`` (``meta["slate_step"]`` if present, else the turn index).
    """

    name = "rule_judge"

    def __init__(self, gold_answer_key: str = "gold_answer", gold_calls_key: str = "gold_calls"):
        self.gold_answer_key, self.gold_calls_key = gold_answer_key, gold_calls_key

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        for t in trajs:
            gold = t.meta.get(self.gold_answer_key)
            golds = [] if gold is None else ([gold] if isinstance(gold, str) else list(gold))
            gold_calls = list(t.meta.get(self.gold_calls_key) or [])
            for k, u in enumerate(t.turns):
                ans = _is_answer_turn(t, k)
                if ans:
                    ok = any(normalize_answer(t.final_answer) == normalize_answer(str(g)) for g in golds)
                    act = 1.0 if ok else -1.0
                elif not u.tool_calls or any(not r.ok for r in u.tool_results) or u.info.get("parse_errors"):
                    act = -1.0
                else:
                    s = similarity_matrix(u.tool_calls, gold_calls)
                    act = 1.0 if s.size and float(s.max()) >= 1.0 else 0.0
                u.signals["judge_think"] = 0.0
                u.signals["judge_action"] = act
                u.signals["slate_is_answer"] = 1.0 if ans else 0.0
                u.signals["slate_step"] = float(t.meta.get("slate_step", k))
        return trajs


DEFAULT_JUDGE_TEMPLATE = (
    "You grade one step of a search agent. Question: {question}\nPath so far:\n{path}\n"
    "Step to grade ({aspect}):\n{step}\n{gold}"
    "Reply with <score>1</score> (good), <score>0</score> (neutral) or <score>-1</score> (bad)."
)


class LLMJudgeProvider:
    """LLM step judge hook (SLATE's decomposed rewards, spec §7) through a callable.

    Two judge prompts per turn, ``judge_think`` (reasoning) and ``judge_action`` (query quality or answer
    correctness vs gold); the judge context is the question plus the path so far (actions and the first 300
    characters of each observation). Scores are parsed with `parse_judge_score`.

    Args:
        judge: ``judge(prompts) -> completions`` (e.g. an OpenAI-compatible client at temperature 0).
        template: Format string with ``question, path, aspect, step, gold``.
        on_error: "raise" (`SignalError`, default) or "zero" (reference behaviour: score 0, counted in
            ``self.errors``).
    """

    name = "llm_judge"

    def __init__(self, judge: Callable[[Sequence[str]], Sequence[str]], *, template: str = DEFAULT_JUDGE_TEMPLATE,
                 on_error: Literal["raise", "zero"] = "raise", gold_answer_key: str = "gold_answer",
                 obs_chars: int = 300):
        self.judge, self.template, self.on_error = judge, template, on_error
        self.gold_answer_key, self.obs_chars = gold_answer_key, obs_chars
        self.errors = 0

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        prompts, where = [], []
        for i, t in enumerate(trajs):
            q = OutcomeClusterProvider.question(t)
            path: list[str] = []
            for k, u in enumerate(t.turns):
                ans = _is_answer_turn(t, k)
                gold = f"Gold answer: {t.meta.get(self.gold_answer_key)}\n" if ans else ""
                for aspect, name in (("reasoning", "judge_think"), ("answer" if ans else "query", "judge_action")):
                    prompts.append(self.template.format(question=q, path="\n".join(path) or "(start)", aspect=aspect,
                                                        step=u.action_text, gold=gold if name == "judge_action" else ""))
                    where.append((i, k, name))
                obs = "\n".join(str(m.get("content", "")) for m in u.obs_messages)[: self.obs_chars]
                path.append(u.action_text + (f"\n[observation] {obs}" if obs else ""))
                u.signals["slate_is_answer"] = 1.0 if ans else 0.0
                u.signals["slate_step"] = float(t.meta.get("slate_step", k))
        if not prompts:
            return trajs
        try:
            outs = judge_completions(self.judge, prompts)
        except Exception as e:
            if self.on_error == "raise":
                raise SignalError(f"LLMJudgeProvider: the judge callable failed: {e!r}") from e
            self.errors += len(prompts)
            outs = ["<score>0</score>"] * len(prompts)
        for (i, k, name), text in zip(where, outs):
            trajs[i].turns[k].signals[name] = parse_judge_score(str(text))
        return trajs


class PRMProvider:
    """Process-reward-model hook: ``prm`` per turn = P(+) − P(−) ∈ [−1, 1] (PURE, spec §9.2).

    Args:
        prm: ``prm([(context_ids, step_ids), ...]) -> [(logit_neg, logit_pos) | pr_value, ...]``; a 2-vector is read
            as class logits, a scalar as ``PR`` directly.
        batch_size: Steps per call.
    """

    name = "prm"

    def __init__(self, prm: Callable[[Sequence[tuple[list[int], list[int]]]], Sequence[Any]], *,
                 signal: str = "prm", batch_size: int = 64):
        self.prm, self.signal, self.batch_size = prm, signal, batch_size

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        items, where = [], []
        for i, t in enumerate(trajs):
            run = list(t.prompt_ids)
            for k, u in enumerate(t.turns):
                items.append((list(run), list(u.action_ids)))
                where.append((i, k))
                run = run + list(u.action_ids) + list(u.obs_ids)
        for s in range(0, len(items), self.batch_size):
            chunk = items[s:s + self.batch_size]
            try:
                res = list(self.prm(chunk))
            except Exception as e:
                raise SignalError(f"PRMProvider: the PRM callable failed: {e!r}") from e
            if len(res) != len(chunk):
                raise SignalError(f"PRMProvider: the PRM returned {len(res)} results for {len(chunk)} steps.")
            for (i, k), v in zip(where[s:s + self.batch_size], res):
                if isinstance(v, (int, float)):
                    pr = float(v)
                else:
                    v = [float(x) for x in v]
                    if len(v) != 2:
                        raise SignalError(f"PRMProvider: expected 2 logits (neg, pos) per step, got {v!r}.")
                    m = max(v)
                    e0, e1 = math.exp(v[0] - m), math.exp(v[1] - m)
                    pr = (e1 - e0) / (e0 + e1)
                if not math.isfinite(pr):
                    raise SignalError(f"PRMProvider: non-finite PRM value {pr!r}.")
                trajs[i].turns[k].signals[self.signal] = pr
        return trajs


class RulePRMProvider:
    """PURE's ``prm`` turn signal from the rule judge's ``judge_action`` (PR in {−1, 0, +1}), no PRM model.

    Run it after `RuleStepJudgeProvider`; a turn without ``judge_action`` gets NaN (missing).
    """

    name = "rule_prm"

    def __init__(self, source: str = "judge_action", signal: str = "prm"):
        self.source, self.signal = source, signal

    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        for t in trajs:
            for u in t.turns:
                u.signals[self.signal] = u.signals.get(self.source, math.nan)
        return trajs


# ================================================================================ declared providers and features


@dataclass(frozen=True)
class SignalContext:
    """What a trainer hands to the factories of `SIGNAL_PROVIDERS` and the builders of `TOKEN_FEATURES`.

    Built once per call of the trainer's ``signal_providers`` / ``token_features``; a factory reads the fields it
    needs and raises `ConfigError` naming a missing one.

    Attributes:
        method: The credit method being trained (a `CREDIT` key).
        options: The credit method's overrides (the trainer's ``credit_overrides``).
        scorer: `ContinuationScorer` of the behaviour policy π_θold (probe providers), or None.
        tokenize: `Tokenize` of the policy's tokenizer, or None.
        answer_prefix: Text before a final answer in the env's own action format (probe pseudo-response).
        answer_suffix: Text after it.
        model: The policy model, for builders that run it (e.g. the ``"hidden"`` token feature), or None.
        chunk_size: Rows per no-grad forward pass of a builder that runs the model.
        judge: ``judge(prompts) -> completions``: an LLM judge / generator (the trainer builds one over an
            OpenAI-compatible server from ``judge_url``, `turngym.agents.judge.OpenAIJudge`), or None: providers
            that can use an LLM (CAPO, CALM, LaRe) then use their rule-based stand-ins and say so.
        signal_options: Options of the providers and learned components (the trainer's ``signals.<option>=value``
            settings); each reads its own fields with `options_for`.
        run_dir: The run directory, where providers keep what must survive a resume (CALM's subgoal cache, LaRe's
            generated code), or None (in memory only).
    """

    method: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    scorer: ContinuationScorer | None = None
    tokenize: Tokenize | None = None
    answer_prefix: str = DEFAULT_PROBE_PREFIX
    answer_suffix: str = DEFAULT_PROBE_SUFFIX
    model: Any = None
    chunk_size: int = 16
    judge: Callable[[Sequence[str]], Sequence[str]] | None = None
    signal_options: Mapping[str, Any] = field(default_factory=dict)
    run_dir: Any = None

    def options_for(self, config_cls: type) -> Any:
        """``config_cls`` (a dataclass) built from the entries of ``signal_options`` that name its fields."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(config_cls)}
        return config_cls(**{k: v for k, v in self.signal_options.items() if k in names})

    def require(self, who: str, *fields: str) -> None:
        """Raise `ConfigError` if one of ``fields`` is None (``who`` names the provider or builder)."""
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ConfigError(f"{who} (needed by credit method {self.method!r}) needs SignalContext."
                              f"{', SignalContext.'.join(missing)}; the trainer must provide it.")


SignalProviderFactory = Callable[[SignalContext], SignalProvider]
SIGNAL_PROVIDERS: Registry[SignalProviderFactory] = Registry("signal provider")
"""name -> ``factory(ctx: SignalContext) -> SignalProvider``; names are what credit methods declare in
``register_credit(..., signals=...)``."""

TokenFeatureBuilder = Callable[[SignalContext, GroupBatch], Mapping[str, Tensor]]
TOKEN_FEATURES: Registry[TokenFeatureBuilder] = Registry("token feature")
"""name -> ``builder(ctx: SignalContext, batch: GroupBatch) -> {key: [B, L, ...] tensor}`` for
``GroupBatch.token_features``; names are what credit methods declare in ``register_credit(..., token_features=...)``."""


def register_signal_provider(name: str, *, overwrite: bool = False):
    """Decorator: register ``factory(ctx: SignalContext) -> SignalProvider`` under ``name`` in `SIGNAL_PROVIDERS`."""
    return SIGNAL_PROVIDERS.register(name, overwrite=overwrite)


def register_token_feature(name: str, *, overwrite: bool = False):
    """Decorator: register ``builder(ctx, batch) -> {key: tensor}`` under ``name`` in `TOKEN_FEATURES`."""
    return TOKEN_FEATURES.register(name, overwrite=overwrite)


def _lookup(registry: Registry, name: str, method: str, what: str, hint: str = ""):
    if name not in registry:
        raise ConfigError(f"credit method {method!r} declares {what} {name!r}, which is not registered: "
                          + unknown_name_message(registry.kind, name, registry.names()) + hint)
    return registry[name]


def build_providers(method: str, ctx: SignalContext) -> list[SignalProvider]:
    """The signal providers credit method ``method`` declares, built from ``ctx``, in the declared order.

    Raises:
        RegistryError: unknown credit method.
        ConfigError: a declared name is not in `SIGNAL_PROVIDERS` (the message lists the registered ones), or a
            factory lacks a field of ``ctx``.
    """
    names = credit_needs(method).signals
    hint = (" Providers that run the trainer's tools (LaRe's 'lare_latent', sandboxed) are registered by "
            "turngym.trainers.learned.import_builtin(), which the trainer calls.")
    factories = [_lookup(SIGNAL_PROVIDERS, n, method, "signal provider", hint) for n in names]  # all checked first
    return [f(ctx) for f in factories]


def build_token_features(method: str, ctx: SignalContext, batch: GroupBatch) -> dict[str, Tensor]:
    """The token features credit method ``method`` declares, computed on ``batch`` (``{}`` when it declares none).

    Raises:
        ConfigError: a declared name is not in `TOKEN_FEATURES` (the message lists the registered ones).
    """
    names = credit_needs(method).token_features
    hint = " Builders that run the model (e.g. 'hidden') are registered by importing turngym.trainers.batch_signals."
    builders = [_lookup(TOKEN_FEATURES, n, method, "token feature", hint) for n in names]
    out: dict[str, Tensor] = {}
    for b in builders:
        out.update(b(ctx, batch))
    return out


def _probe_factory(name: str, cls: type) -> Callable[[SignalContext], Any]:
    """Factory of a provider that scores the answer under the policy (needs the scorer and the tokenizer)."""

    def make(ctx: SignalContext):
        ctx.require(f"signal provider {name!r}", "scorer", "tokenize")
        return cls(ctx.scorer, ctx.tokenize, prefix=ctx.answer_prefix, suffix=ctx.answer_suffix)

    return make


for _name, _cls in {"gold_probe": GoldProbeProvider, "siop_support": SupportProvider}.items():
    SIGNAL_PROVIDERS.add(_name, _probe_factory(_name, _cls))
for _name, _cls in {"tool_match": ToolMatchProvider, "siop_cluster": OutcomeClusterProvider,
                    "rule_judge": RuleStepJudgeProvider, "rule_prm": RulePRMProvider}.items():
    SIGNAL_PROVIDERS.add(_name, lambda ctx, cls=_cls: cls())  # needs nothing from the trainer
