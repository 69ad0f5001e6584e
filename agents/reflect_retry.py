"""R³L's ``reflect_retry`` sampler (wave-2 spec §3.1, §3.5): reflect on failed rollouts, retry from the pivot.

Per seed, with ``group_size = N``:

1. ``N/2`` base rollouts (ordinary sampling, ``group_id = f"{env_id}:{seed}"``).
2. Each base that did not succeed gets a *reflection*: a JSON report (``trajectory_summary``,
   ``root_cause_analysis``, ``trajectory_outcome`` in {success, success_but_inefficient, failure},
   ``improvement_suggestion``, ``retry_from_step``), from

   * ``reflection="policy"`` (the paper): the rollout policy itself, token-in/token-out, prompted with
     `REFLECTION_INSTRUCTIONS` and the rendered base trajectory (`render_trajectory`); a completion that is not a
     valid report (`parse_reflection`) gives no retry and is counted;
   * ``reflection="rule"`` (the framework's stand-in, `rule_reflection`): the pivot is the first turn with no valid
     call, a failed call, a call matching no gold call (``meta["gold_calls"]``), or the answer turn; the guidance
     names the next gold call or says to search before answering. It never contains the gold answer string.

3. A valid report whose outcome is not ``success`` and whose ``retry_from_step`` ``k`` is in ``[0, T−1]`` gives one
   retry: `RolloutEngine.clone_prefix` rebuilds the env before turn ``k`` (reset with the seed, replay of the first
   ``k`` actions, determinism checked) and copies the first ``k`` turns; the guidance (`guidance_text`) is inserted
   into the token context as a system message right before turn ``k`` (merged into the system prompt for
   ``k = 0``) but NOT into ``Trajectory.turns``; the suffix is regenerated. A replay that fails (`EnvError`) is
   counted and skipped; a retry that produced no new turn is dropped.

Rows returned (``meta["prompt_signals"]``: ``r3l_role``, ``r3l_pivot``, ``r3l_pair``; ``meta["r3l"]`` for humans):

* role 0 *base*: ``r3l_pivot = k`` when its retry exists (the pair is compared on the same span), else 0. Base rows
  also carry the sampler's counters ``r3l_replay_failed``, ``r3l_reflection_invalid``, ``r3l_reflection_tokens``.
* role 1 *distill*: the base's first ``k`` turns (same tokens, same log-probs) + the regenerated turns, no guidance
  in its context; same ``group_id`` as the base. The regenerated turns' log-probs were recorded under the guided
  context, so they are emptied (``GroupBatch.old_logprobs`` is then None and the trainer recomputes them).
* role 3 *retry* and role 2 *reflect* (only for verified improvements, ``sft_trigger``): the retry row is the
  distill row with the guidance in its context (turn ``k−1``'s observation, or the prompt for ``k = 0``) and its
  own sampled log-probs; the reflect row's prompt is the reflection prompt and its one turn the policy's reflection
  (``reflection="policy"`` only: a rule-written report is no policy sample). Each gets its own singleton
  ``group_id`` (``…:r3l-retry{pair}`` / ``…:r3l-reflect{pair}``).

Cost: ``N/2`` reflection generations per seed (one batched generate call; none for ``"rule"``), and each retry
replays ``k`` env steps and regenerates ``T' − k`` turns.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from typing import Any, Literal

from turngym.agents.policy import Sample, with_max_new_tokens
from turngym.agents.rollout import SAMPLERS, Episode, RolloutEngine
from turngym.errors import ConfigError, EnvError
from turngym.types import Message, Trajectory, Turn, write_jsonl

__all__ = [
    "GUIDANCE_TEMPLATE",
    "OUTCOMES",
    "REFLECTION_INSTRUCTIONS",
    "guidance_text",
    "parse_reflection",
    "reflection_rows",
    "render_trajectory",
    "rule_reflection",
    "sample_reflect_retry",
]

ROLE_BASE, ROLE_DISTILL, ROLE_REFLECT, ROLE_RETRY = 0, 1, 2, 3
OUTCOMES = ("success", "success_but_inefficient", "failure")
REPORT_KEYS = ("trajectory_summary", "root_cause_analysis", "trajectory_outcome", "improvement_suggestion",
               "retry_from_step")

REFLECTION_INSTRUCTIONS = (
    "You review an agent's attempt at a task, step by step, with the feedback the environment gave. Reply with one "
    "JSON object and nothing else, with the keys:\n"
    '"trajectory_summary": what the agent did, in one or two sentences;\n'
    '"root_cause_analysis": why the attempt failed or was inefficient;\n'
    '"trajectory_outcome": one of "success", "success_but_inefficient", "failure";\n'
    '"improvement_suggestion": a reusable principle that would have avoided the mistake;\n'
    '"retry_from_step": the number of the first step that went wrong (an integer between 0 and the last step).'
)

GUIDANCE_TEMPLATE = (
    "Guidance from a review of a previous attempt at this task, which went wrong from this step on. "
    "What went wrong: {root_cause_analysis} Principle: {improvement_suggestion} "
    "Continue the task from here and apply the principle."
)


# ------------------------------------------------------------------------------------------------------ reflections


def render_trajectory(traj: Trajectory, *, obs_chars: int = 300) -> str:
    """The base trajectory as the reflection prompt shows it: the task, each step's action and the first
    ``obs_chars`` characters of the environment's feedback, and the outcome."""
    task = "\n".join(str(m.get("content") or "") for m in traj.prompt_messages if m.get("role") == "user")
    lines = [f"Task: {task}", ""]
    for k, u in enumerate(traj.turns):
        lines.append(f"Step {k} action: {u.action_text}")
        fb = " ".join(str(m.get("content") or "") for m in u.obs_messages)
        if fb:
            lines.append(f"Step {k} feedback: {fb[:obs_chars]}")
    lines.append("")
    lines.append(f"The attempt ended ({traj.stop_reason or 'unknown'}) with reward {traj.outcome:g}"
                 + (f" and the answer {traj.final_answer!r}." if traj.final_answer is not None else ", no answer."))
    return "\n".join(lines)


def reflection_messages(traj: Trajectory, *, obs_chars: int = 300) -> list[Message]:
    """System instructions (`REFLECTION_INSTRUCTIONS`) + the rendered trajectory as the user message."""
    return [{"role": "system", "content": REFLECTION_INSTRUCTIONS},
            {"role": "user", "content": render_trajectory(traj, obs_chars=obs_chars)}]


def parse_reflection(text: str, n_turns: int) -> dict[str, Any] | None:
    """The report in ``text`` (the outermost ``{...}``), or None if it is not a valid one.

    Valid: a JSON object with every key of `REPORT_KEYS`, ``trajectory_outcome`` in `OUTCOMES` and an integer
    ``retry_from_step`` in ``[0, n_turns − 1]`` (spec §3.1, the release's ``validate_reflect_report``).
    """
    i, j = text.find("{"), text.rfind("}")
    if i < 0 or j <= i:
        return None
    try:
        rep = json.loads(text[i:j + 1])
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(rep, dict) or any(k not in rep for k in REPORT_KEYS):
        return None
    step = rep["retry_from_step"]
    if isinstance(step, bool) or not isinstance(step, (int, float)) or step != int(step):
        return None
    if rep["trajectory_outcome"] not in OUTCOMES or not 0 <= int(step) <= n_turns - 1:
        return None
    return {**rep, "retry_from_step": int(step)}


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        return " ".join(v.lower().split())
    if isinstance(v, dict):
        return {str(k): _norm(x) for k, x in v.items()}
    return v


def _call_matches(call: Any, gold: dict[str, Any]) -> bool:
    args = gold.get("arguments", gold.get("parameters", {}))
    return call.name == gold.get("name") and _norm(dict(call.arguments)) == _norm(dict(args or {}))


def _leaks(text: str, gold_answer: Any) -> bool:
    golds = [gold_answer] if isinstance(gold_answer, str) else list(gold_answer or [])
    low = _norm(text)
    return any(str(g).strip() and _norm(str(g)) in low for g in golds)


def rule_reflection(traj: Trajectory, *, success_threshold: float = 1.0) -> dict[str, Any]:
    """The rule stand-in for a policy reflection (built-in envs: gold calls and answer in ``traj.meta``).

    Pivot = the first turn that is the answer turn of an unsuccessful trajectory, has no valid call (no call, a
    parse error) or a failed call, or whose calls match no gold call (name and normalised arguments; skipped when
    the task has no gold calls); if every turn is fine (the budget ran out), the last turn. Guidance: the first gold
    call not issued before the pivot, else "search before answering". The gold answer never appears in the report.
    """
    n = len(traj.turns)
    if traj.outcome >= success_threshold:
        return {"trajectory_summary": f"{n} steps, reward {traj.outcome:g}.", "root_cause_analysis": "",
                "trajectory_outcome": "success", "improvement_suggestion": "", "retry_from_step": 0}
    gold_calls = [g for g in (traj.meta.get("gold_calls") or []) if isinstance(g, dict)]
    answer_turn = n - 1 if traj.final_answer is not None else None
    pivot, cause, issued = max(n - 1, 0), "the attempt ran out of steps before answering.", set()
    for k, u in enumerate(traj.turns):
        if k == answer_turn:
            pivot, cause = k, "the final answer was wrong: the agent answered before the search results supported it."
            break
        if not u.tool_calls or u.info.get("parse_errors"):
            pivot, cause = k, "this step made no valid tool call."
            break
        if any(not r.ok for r in u.tool_results):
            pivot, cause = k, "a tool call of this step failed."
            break
        hits = {i for i, g in enumerate(gold_calls) for c in u.tool_calls if _call_matches(c, g)}
        if gold_calls and not hits:
            pivot, cause = k, "this step's tool call does not help with the task."
            break
        issued |= hits
    nxt = next((g for i, g in enumerate(gold_calls) if i not in issued), None)
    generic = "Search for the fact you are missing before answering, and answer only from the search results."
    if nxt is not None:
        args = nxt.get("arguments", nxt.get("parameters", {}))
        tip = f"The next useful step is the call {nxt.get('name')} with arguments {json.dumps(args, sort_keys=True)}."
    else:
        tip = generic
    report = {"trajectory_summary": f"{n} steps, reward {traj.outcome:g}.", "root_cause_analysis": f"Step {pivot}: "
              f"{cause}", "trajectory_outcome": "failure", "improvement_suggestion": tip, "retry_from_step": pivot}
    if _leaks(json.dumps(report), traj.meta.get("gold_answer")):  # a gold call can name the answer: stay generic
        report["improvement_suggestion"] = generic
    return report


def guidance_text(report: dict[str, Any]) -> str:
    """The self-correction message inserted before the pivot: `GUIDANCE_TEMPLATE` filled from the report."""
    return GUIDANCE_TEMPLATE.format(root_cause_analysis=str(report.get("root_cause_analysis", "")).strip(),
                                    improvement_suggestion=str(report.get("improvement_suggestion", "")).strip())


def _guided_prefix(ep: Episode, base: Trajectory, k: int, guidance: str) -> tuple[list[int], list[Message], list[int],
                                                                                 list[Message]]:
    """``(prompt_ids, prompt_messages, obs_ids of turn k−1, obs_messages of turn k−1)`` with the guidance inserted
    (prompt for ``k = 0``: merged into the system message; else an extra system message after turn k−1's
    observation, before the generation prompt)."""
    msg = {"role": "system", "content": guidance}
    if k == 0:
        msgs = copy.deepcopy(list(base.prompt_messages))
        if msgs and msgs[0].get("role") == "system":
            msgs[0]["content"] = f"{msgs[0].get('content') or ''}\n\n{guidance}"
        else:
            msgs.insert(0, msg)
        return ep.renderer.initial(msgs), msgs, [], []
    u = base.turns[k - 1]
    obs_msgs = copy.deepcopy(list(u.obs_messages)) + [msg]
    closed = u.info.get("finish_reason", "stop") == "stop"
    return list(base.prompt_ids), copy.deepcopy(base.prompt_messages), ep.renderer.observation(obs_msgs,
                                                                                               closed=closed), obs_msgs


def _set_signals(t: Trajectory, **values: float) -> None:
    t.meta.setdefault("prompt_signals", {}).update({k: float(v) for k, v in values.items()})


def _improved(r_distill: float, r_base: float, n_distill: int, n_base: int, trigger: str, thr: float) -> bool:
    if trigger == "strict":
        return r_distill > r_base
    return (r_distill > r_base and r_distill >= thr) or (r_distill >= thr and n_distill < n_base)


# ---------------------------------------------------------------------------------------------------------- sampler


@SAMPLERS.register("reflect_retry")
def sample_reflect_retry(
    engine: RolloutEngine,
    seeds: Sequence[int],
    group_size: int = 8,
    *,
    reflection: Literal["rule", "policy"] = "rule",
    sft_trigger: Literal["strict", "release"] = "strict",
    reflect_on: Literal["failed", "all"] = "failed",
    reflection_max_tokens: int = 4096,
    obs_chars: int = 300,
    success_threshold: float = 1.0,
) -> list[Trajectory]:
    """R³L reflect-then-retry sampling (module docstring); returns the rows seed-major (bases, distills, SFT rows).

    Args:
        engine: The rollout engine (its policy samples bases, reflections and retries).
        seeds: Task seeds.
        group_size: N: ``max(1, N // 2)`` base rollouts per seed, each with at most one retry.
        reflection: "rule" (gold-data stand-in, the framework default: the trainer passes no sampler options) or
            "policy" (the paper: the rollout policy writes the JSON report; it gets no ``envs=``).
        sft_trigger: "strict" (paper: R_distill > R_base) or "release" (improvement to success, or a shorter
            success).
        reflect_on: "failed" (bases whose env success flag is False) or "all" (every base, as the paper).
        reflection_max_tokens: Generation budget of one reflection (also capped by the context budget).
        obs_chars: Characters of each observation shown in the reflection prompt.
        success_threshold: Reward counted as success by the rule stand-in and the "release" trigger.
    """
    if reflection not in ("rule", "policy"):
        raise ConfigError(f"reflect_retry: reflection must be 'rule' or 'policy', got {reflection!r}.")
    if sft_trigger not in ("strict", "release"):
        raise ConfigError(f"reflect_retry: sft_trigger must be 'strict' or 'release', got {sft_trigger!r}.")
    if reflect_on not in ("failed", "all"):
        raise ConfigError(f"reflect_retry: reflect_on must be 'failed' or 'all', got {reflect_on!r}.")
    if group_size < 1:
        raise ConfigError(f"group_size must be >= 1, got {group_size}.")
    n_base = max(1, int(group_size) // 2)

    # --- 1. base rollouts
    factories = [(lambda s=s: engine.new_episode(s)) for s in seeds for _ in range(n_base)]
    with engine.progress_bar(len(factories), "base rollouts"):
        bases = engine.run(pending=factories)
    for p, ep in enumerate(bases):
        ep.traj.meta["r3l"] = {"role": "base", "pair": p, "reflection_source": reflection}
        _set_signals(ep.traj, r3l_role=ROLE_BASE, r3l_pivot=0, r3l_pair=p, r3l_replay_failed=0,
                     r3l_reflection_invalid=0, r3l_reflection_tokens=0)

    # --- 2. reflections
    todo = [p for p, ep in enumerate(bases) if ep.traj.turns and (
        reflect_on == "all" or not ep.traj.meta.get("rollout", {}).get("success", False))]
    reports: dict[int, dict[str, Any]] = {}
    samples: dict[int, tuple[list[int], list[Message], Sample]] = {}
    if reflection == "rule":
        for p in todo:
            reports[p] = rule_reflection(bases[p].traj, success_threshold=success_threshold)
    elif todo:
        samples = _policy_reflections(engine, [bases[p] for p in todo], todo, reflection_max_tokens, obs_chars)
        for p in todo:
            t = bases[p].traj
            if p not in samples:
                _set_signals(t, r3l_reflection_invalid=1)
                continue
            _set_signals(t, r3l_reflection_tokens=len(samples[p][2].ids))
            rep = parse_reflection(samples[p][2].text, len(t.turns))
            if rep is None:
                _set_signals(t, r3l_reflection_invalid=1)
            else:
                reports[p] = rep

    # --- 3. retries from the pivot, guidance in the context only
    retries: list[Episode] = []
    for p, rep in sorted(reports.items()):
        base = bases[p].traj
        base.meta["r3l"]["report"] = rep
        if rep["trajectory_outcome"] == "success":
            continue
        k = int(rep["retry_from_step"])
        try:
            ep = engine.clone_prefix(bases[p], k)
        except EnvError as e:
            base.meta["r3l"]["replay_error"] = str(e)[:500]
            _set_signals(base, r3l_replay_failed=1)
            continue
        guidance = guidance_text(rep)
        g_prompt, g_prompt_msgs, g_obs, g_obs_msgs = _guided_prefix(ep, base, k, guidance)
        ep.context = list(g_prompt)  # [P']: the base prompt, or the guided one for k = 0
        if k > 0:  # turns < k−1 as recorded, turn k−1's action, then its observation with the guidance message
            ep.context += [i for u in ep.traj.turns[:k - 1] for i in (*u.action_ids, *u.obs_ids)]
            ep.context += list(ep.traj.turns[k - 1].action_ids) + list(g_obs)
        ep.tag["r3l"] = {"pair": p, "pivot": k, "guidance": guidance, "prompt_ids": g_prompt,
                         "prompt_messages": g_prompt_msgs, "obs_ids": g_obs, "obs_messages": g_obs_msgs}
        retries.append(ep)
    if retries:
        with engine.progress_bar(len(retries), "retries"):
            engine.run(retries)

    # --- 4. rows
    distill: dict[int, Trajectory] = {}
    aux: dict[int, list[Trajectory]] = {}
    for ep in retries:
        info = ep.tag["r3l"]
        p, k = info["pair"], info["pivot"]
        base = bases[p].traj
        if len(ep.traj.turns) <= k:  # the budget ended the retry before it generated a turn: nothing to credit
            base.meta["r3l"]["retry_dropped"] = "no regenerated turn"
            continue
        d = ep.traj
        guided = copy.deepcopy(d)  # the retry row keeps the log-probs it was sampled with
        for u in d.turns[k:]:
            u.logprobs = []  # sampled under the guided context: not behaviour log-probs of this row
        d.meta["r3l"] = {"role": "distill", "pair": p, "pivot": k, "guidance": info["guidance"],
                         "reflection_source": reflection}
        d.meta.pop("prompt_signals", None)
        _set_signals(d, r3l_role=ROLE_DISTILL, r3l_pivot=k, r3l_pair=p)
        _set_signals(base, r3l_pivot=k)
        base.meta["r3l"]["pivot"] = k
        distill[p] = d
        if not _improved(d.outcome, base.outcome, len(d.turns), len(base.turns), sft_trigger, success_threshold):
            continue
        rows = []
        if p in samples:  # the policy's own reflection as an SFT row (exact ids and log-probs)
            ctx, msgs, s = samples[p]
            rows.append(Trajectory(
                group_id=f"{base.group_id}:r3l-reflect{p}", agent_id=base.agent_id, prompt_ids=list(ctx),
                prompt_messages=msgs, turns=[Turn(action_ids=list(s.ids), logprobs=list(s.logprobs or []),
                                                  action_text=s.text, info={"finish_reason": s.finish_reason})],
                outcome=d.outcome, stop_reason="reflection", env_id=base.env_id, seed=base.seed,
                meta={"r3l": {"role": "reflect", "pair": p, "pivot": 0, "report": base.meta["r3l"].get("report")}},
            ))
            _set_signals(rows[-1], r3l_role=ROLE_REFLECT, r3l_pivot=0, r3l_pair=p)
        guided.group_id = f"{base.group_id}:r3l-retry{p}"
        guided.prompt_ids, guided.prompt_messages = list(info["prompt_ids"]), info["prompt_messages"]
        if k > 0:
            guided.turns[k - 1].obs_ids = list(info["obs_ids"])
            guided.turns[k - 1].obs_messages = info["obs_messages"]
        guided.meta["r3l"] = {"role": "retry", "pair": p, "pivot": k, "guidance": info["guidance"],
                              "reflection_source": reflection}
        guided.meta.pop("prompt_signals", None)
        _set_signals(guided, r3l_role=ROLE_RETRY, r3l_pivot=k, r3l_pair=p)
        rows.append(guided)
        aux[p] = rows

    out: list[Trajectory] = []
    extra: list[Trajectory] = []
    for i in range(len(seeds)):
        pairs = range(i * n_base, (i + 1) * n_base)
        out += [bases[p].traj for p in pairs]
        out += [distill[p] for p in pairs if p in distill]
        extra += [r for p in pairs for r in aux.get(p, [])]
    if engine.out is not None and extra:
        write_jsonl(engine.out, extra, append=True)
    return out + extra


def _policy_reflections(engine: RolloutEngine, eps: list[Episode], pairs: list[int], max_tokens: int,
                        obs_chars: int) -> dict[int, tuple[list[int], list[Message], Sample]]:
    """One batched generate call of the rollout policy over the reflection prompts (no ``envs=``); a prompt that
    leaves no room in the context budget gets no reflection (absent from the result)."""
    renderer = engine.renderer.for_tools(None)
    ctxs, budgets, keep = [], [], []
    for p, ep in zip(pairs, eps):
        for chars in (obs_chars, 80, 0):  # shorten the feedback until the prompt fits
            msgs = reflection_messages(ep.traj, obs_chars=chars)
            ctx = renderer.initial(msgs)
            room = max_tokens if engine.max_context_tokens is None else min(
                max_tokens, engine.max_context_tokens - len(ctx))
            if room > 0:
                ctxs.append(ctx)
                budgets.append(room)
                keep.append((p, msgs))
                break
    if not ctxs:
        return {}
    t0 = time.perf_counter()
    samples = engine.policy.generate(ctxs, with_max_new_tokens(engine.params, max(budgets)))
    engine.stats.generate_s += time.perf_counter() - t0
    engine.stats.rounds += 1
    if len(samples) != len(ctxs):
        raise RuntimeError(f"policy.generate returned {len(samples)} samples for {len(ctxs)} reflection prompts.")
    out = {}
    for (p, msgs), ctx, s, b in zip(keep, ctxs, samples, budgets):
        s = engine._cap(s, b)
        engine.stats.sampled_tokens += len(s.ids)
        out[p] = (ctx, msgs, s)
    return out


def reflection_rows(trajs: Sequence[Trajectory], role: int) -> list[Trajectory]:
    """The rows of ``trajs`` whose ``r3l_role`` prompt signal is ``role`` (tests and analysis)."""
    return [t for t in trajs if (t.meta.get("prompt_signals") or {}).get("r3l_role") == role]
