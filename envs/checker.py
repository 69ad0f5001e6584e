"""`check_env`: a public checker for turngym envs, made of small named checks.

Run it on your own env before training (``turngym.envs.check_env(env)``); the test suite runs it over every
registered id. Each check is a function ``check_<name>(env)`` that raises `EnvCheckError` with a message
saying what was expected, what came and how to fix it. `check_env` runs them all, then Gymnasium's own
``gymnasium.utils.env_checker.check_env`` on the unwrapped env, and returns a report
``{check name: "ok" | "skipped: <reason>"}``; it raises `EnvCheckError` listing every failed check.

What Gymnasium's checker can and cannot tell about a text env: it checks the spaces are `Space`s, reset
seeding and ``options``, the return types of ``reset``/``step``, step determinism and that returned data is
not reused, all of which apply. Its actions come from ``action_space.sample()``, i.e. random text, which
for a language env only exercises the "no call, no answer" path; the tool-call, answer, error and expert
paths are covered by turngym's own checks below. Its render check is skipped (text envs render "ansi"
only on request) and its close check needs a Gymnasium ``spec`` (turngym envs are made by turngym's
registry), so closing is checked here instead.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from turngym.errors import EnvError, TurngymError
from turngym.types import ToolCall


class EnvCheckError(TurngymError, AssertionError):
    """An env failed one or more checks of `check_env`."""


class SkipCheck(Exception):
    """Raised inside a check that does not apply to the env (with the reason)."""


def _fail(msg: str) -> None:
    raise EnvCheckError(msg)


def _unwrapped(env: Any) -> Any:
    return getattr(env, "unwrapped", env)


def _json_ok(x: Any, where: str) -> None:
    try:
        json.dumps(x)
    except (TypeError, ValueError) as e:
        _fail(f"{where} must be JSON-serialisable (it is stored in trajectories); json.dumps failed: {e}")


# ---------------------------------------------------------------------------- individual checks
def check_spaces(env: Any) -> None:
    """The spaces are Gymnasium spaces; the action space admits arbitrary Unicode text."""
    from gymnasium.spaces import Space

    for name in ("observation_space", "action_space"):
        if not isinstance(getattr(env, name, None), Space):
            _fail(
                f"env.{name} must be a gymnasium.spaces.Space (e.g. turngym.envs.ChatSpace / TextSpace), "
                f"got {type(getattr(env, name, None)).__name__}."
            )
    for sample in ("", "<answer>Lomira</answer>", "héllo wörld 中文 🙂 <tool_call>{}</tool_call>"):
        if sample not in env.action_space:
            _fail(
                f"action_space {env.action_space!r} rejects the text {sample!r}; text envs must accept any "
                "Unicode string up to a length bound (use turngym.envs.TextSpace)."
            )


def check_step_before_reset(env: Any) -> None:
    """``step`` before ``reset`` raises `EnvError` with a clear message."""
    fresh = _fresh(env)
    if fresh is None:
        raise SkipCheck("the env was already reset and has no registry spec to make a fresh copy")
    try:
        fresh.step("hello")
    except EnvError as e:
        if "reset" not in str(e):
            _fail(f"step() before reset() raised EnvError but its message does not mention reset(): {e}")
    except Exception as e:  # noqa: BLE001 - we report the wrong type
        _fail(f"step() before reset() must raise turngym.errors.EnvError, it raised {type(e).__name__}: {e}")
    else:
        _fail(
            "step() before reset() did not raise; raise turngym.errors.EnvError telling the user to reset()."
        )
    finally:
        if fresh is not env:
            fresh.close()


def check_reset_types(env: Any) -> None:
    """``reset`` returns ``(list[Message], dict)`` inside the observation space, with JSON task metadata."""
    out = env.reset(seed=0)
    if not (isinstance(out, tuple) and len(out) == 2):
        _fail(f"reset() must return (observation, info), got {type(out).__name__}.")
    obs, info = out
    _check_obs(env, obs, "reset()")
    if not obs:
        _fail("reset() returned no messages; the first observation needs at least the user task.")
    if not isinstance(info, dict):
        _fail(f"reset() info must be a dict, got {type(info).__name__}.")
    task = info.get("task")
    if not isinstance(task, dict):
        _fail(
            "reset() info['task'] must be a dict of task metadata (gold_answer, gold_calls, ...), "
            f"got {type(task).__name__}."
        )
    _json_ok(task, "info['task']")
    for key in ("gold_answer", "gold_calls", "decisive_turns"):
        if key not in task:
            _fail(f"info['task'] lacks {key!r}; credit methods need it (see docs/envs.md).")
    for i, c in enumerate(task["gold_calls"]):
        if not (
            isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("arguments"), dict)
        ):
            _fail(f"info['task']['gold_calls'][{i}] must be {{'name': str, 'arguments': dict}}, got {c!r}.")


def check_seeding(env: Any) -> None:
    """The same seed gives the same first observation and task; the env owns its RNG."""
    a_obs, a_info = env.reset(seed=123)
    b_obs, b_info = env.reset(seed=123)
    if a_obs != b_obs or a_info.get("task") != b_info.get("task"):
        _fail(
            "reset(seed=123) twice gave different observations/tasks; draw tasks only from self.np_random "
            "(seeded by super().reset(seed=seed)), never from global RNGs."
        )
    before = np.random.get_state()
    env.reset(seed=7)
    after = np.random.get_state()
    if not (np.array_equal(before[1], after[1]) and before[2:] == after[2:]):
        _fail("reset() touched numpy's global RNG; use self.np_random instead.")
    prompts = {json.dumps(env.reset(seed=s)[0], sort_keys=True) for s in range(8)}
    if len(prompts) == 1:
        warnings.warn(
            f"{type(_unwrapped(env)).__name__}: 8 seeds gave the same first observation.", stacklevel=2
        )


def check_step_types(env: Any) -> None:
    """A step with no call and no answer returns the 5-tuple, an error message, and the episode goes on."""
    env.reset(seed=1)
    out = env.step("I am not sure what to do.")
    if not (isinstance(out, tuple) and len(out) == 5):
        _fail(f"step() must return (obs, reward, terminated, truncated, info), got {type(out).__name__}.")
    obs, reward, terminated, truncated, info = out
    _check_obs(env, obs, "step()")
    if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not np.isfinite(reward):
        _fail(f"step() reward must be a finite float, got {reward!r}.")
    if not isinstance(terminated, bool) or not isinstance(truncated, bool):
        _fail(
            f"terminated/truncated must be bools, got {type(terminated).__name__}/{type(truncated).__name__}."
        )
    if terminated:
        _fail(
            "an action with no tool call and no answer terminated the episode; it should get an error "
            "observation and continue."
        )
    _check_step_info(info)
    if not any(m.get("role") == "user" for m in obs):
        _fail(
            "an action with no call and no answer must get a role='user' error message telling the agent "
            f"what is expected; got {obs!r}."
        )


def check_tool_call_round_trip(env: Any) -> None:
    """Each gold call survives ``parser.format`` -> ``parser.parse`` and runs through the env's tools."""
    u = _unwrapped(env)
    if not getattr(u, "toolset", None):
        raise SkipCheck("the env has no tools")
    _, info = env.reset(seed=2)
    gold = info["task"]["gold_calls"]
    if not gold:
        raise SkipCheck("the task has no gold calls")
    parser = env.parser
    for g in gold:
        call = ToolCall(name=g["name"], arguments=dict(g["arguments"]))
        text = parser.format(calls=[call])
        parsed = parser.parse(text)
        if (
            len(parsed.calls) != 1
            or parsed.calls[0].name != call.name
            or parsed.calls[0].arguments != call.arguments
        ):
            _fail(
                f"parser round trip failed: format({call}) -> {text!r} -> parse -> {parsed.calls} "
                f"(errors: {parsed.errors})."
            )
        if g["name"] not in env.toolset.names:
            _fail(f"gold call names tool {g['name']!r}, which the env's toolset {env.toolset.names} lacks.")
        obs, _, terminated, truncated, sinfo = env.step(text)
        _check_step_info(sinfo)
        if terminated:
            _fail(f"a tool call terminated the episode: {text!r}.")
        tool_msgs = [m for m in obs if m.get("role") == "tool"]
        if len(tool_msgs) != 1 or tool_msgs[0].get("name") != call.name:
            _fail(f"a tool call must produce one role='tool' message named {call.name!r}; got {obs!r}.")
        res = sinfo["tool_results"]
        if len(res) != 1 or not res[0].ok:
            _fail(f"the gold call {text!r} failed: {res}.")
        if truncated:
            break


def check_answer_ends_episode(env: Any) -> None:
    """Answering the gold answer terminates with success, outcome in [0, 1] and the end-of-episode info."""
    from turngym.envs.core import INFO_KEYS_AT_END

    _, info = env.reset(seed=3)
    gold = info["task"]["gold_answer"]
    obs, _reward, terminated, _truncated, sinfo = env.step(env.parser.format(answer=str(gold)))
    _check_obs(env, obs, "step()")
    if not terminated:
        _fail(
            f"answering {gold!r} with {env.parser.format(answer=str(gold))!r} did not terminate the episode."
        )
    missing = [k for k in INFO_KEYS_AT_END if k not in sinfo]
    if missing:
        _fail(f"the final step's info lacks {missing}; it must hold {list(INFO_KEYS_AT_END)}.")
    if not (0.0 <= sinfo["outcome"] <= 1.0) or sinfo["success"] is not True:
        _fail(
            f"the gold answer scored outcome={sinfo['outcome']!r}, success={sinfo['success']!r}; "
            "expected success=True and outcome in [0, 1]."
        )
    try:
        env.step("<answer>again</answer>")
    except EnvError:
        pass
    else:
        _fail("step() after the episode terminated did not raise EnvError.")


def check_bad_actions(env: Any) -> None:
    """Junk actions (lone surrogates, NULs, malformed calls, unknown tools, a 100 KB answer) are data."""
    env.reset(seed=4)
    junk = [
        "\ud800\udfff broken \x00 text",
        '<tool_call>{"name": "search", "arguments": {</tool_call>',
        '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>',
        "<search></search>",
        "<answer>" + "x" * 100_000 + "</answer>",
        "\u200b\u202e\ufeff",
    ]
    for a in junk:
        obs, _reward, terminated, truncated, info = env.step(a)
        _check_obs(env, obs, f"step({a[:30]!r}...)")
        _check_step_info(info)
        if terminated:
            _fail(f"the junk action {a[:60]!r} terminated the episode; it must be an error observation.")
        if not obs:
            _fail(f"the junk action {a[:60]!r} produced no observation; the agent needs an error message.")
        if truncated:
            env.reset(seed=4)


def check_expert(env: Any) -> None:
    """The scripted expert at noise 0 solves a task within the turn limit."""
    u = _unwrapped(env)
    if getattr(type(u), "_expert_next", None) in (None, _base_expert_next()):
        raise SkipCheck("the env has no scripted expert")
    rng = np.random.default_rng(0)
    env.reset(seed=5)
    limit = getattr(env, "max_turns", None) or 20
    for _ in range(limit):
        _, _, terminated, truncated, info = env.step(env.expert_action(rng, 0.0))
        if terminated or truncated:
            if not info.get("success"):
                _fail(
                    f"the noise-0 expert failed its task: final answer {info.get('final_answer')!r}, "
                    f"gold {info['task']['gold_answer']!r}."
                )
            return
    _fail(f"the noise-0 expert did not finish within {limit} turns.")


def check_close_idempotent(env: Any) -> None:
    """``close()`` twice is fine."""
    fresh = _fresh(env)
    target = fresh if fresh is not None else env
    target.reset(seed=0)
    target.close()
    target.close()


def check_max_turns(env: Any) -> None:
    """An episode without an answer truncates exactly at ``max_turns`` (``truncated=True``, ``truncated_by``).

    An env without a limit is checked with ``max_turns=2`` set on it for the duration of the check.
    """
    u = _unwrapped(env)
    limit = getattr(env, "max_turns", None)
    patched = limit is None
    if patched:
        limit = 2
        u.max_turns = 2
    try:
        env.reset(seed=6)
        for turn in range(1, limit + 2):
            _, _, terminated, truncated, info = env.step("I am still thinking.")
            if terminated:
                _fail(f"an action with no call and no answer terminated the episode at turn {turn}.")
            if truncated:
                if turn != limit:
                    _fail(f"the episode truncated at turn {turn}, but max_turns={limit}.")
                if info.get("truncated_by") != "max_turns" or "success" not in info:
                    _fail(
                        "the step truncated at max_turns lacks info['truncated_by'] = 'max_turns' and the "
                        "end-of-episode keys; let turngym.envs.Env.step enforce max_turns (call super().step)."
                    )
                return
        _fail(
            f"the episode ran {limit + 1} turns with max_turns={limit} and was not truncated; the env ignores "
            "max_turns. Fix: pass max_turns to super().__init__(..., max_turns=max_turns) and let "
            "turngym.envs.Env.step count the turns (do not override step without calling super().step)."
        )
    finally:
        if patched:
            u.max_turns = None


CHECKS: dict[str, Callable[[Any], None]] = {
    "spaces": check_spaces,
    "step_before_reset": check_step_before_reset,
    "reset_types": check_reset_types,
    "seeding": check_seeding,
    "step_types": check_step_types,
    "tool_call_round_trip": check_tool_call_round_trip,
    "answer_ends_episode": check_answer_ends_episode,
    "bad_actions": check_bad_actions,
    "expert": check_expert,
    "max_turns": check_max_turns,
}
"""The named checks, in the order `check_env` runs them (then ``gymnasium``, then ``close_idempotent``)."""


def run_gymnasium_checker(env: Any) -> None:
    """Gymnasium's ``check_env`` on the unwrapped env (render check skipped; see the module docstring)."""
    from gymnasium.utils.env_checker import check_env as gym_check_env

    base = _unwrapped(env)
    # Gymnasium's step-determinism check refuses an env that truncates after one step. A one-turn env does that by
    # design (turngym's own max_turns check covers it), so Gymnasium checks it with the limit lifted.
    one_turn = getattr(base, "max_turns", None) == 1
    if one_turn:
        base.max_turns = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gym_check_env(base, skip_render_check=True, skip_close_check=True)
    finally:
        if one_turn:
            base.max_turns = 1


def check_env(env: Any, *, skip: tuple[str, ...] = (), gymnasium: bool = True) -> dict[str, str]:
    """Check an env against turngym's env contract (and Gymnasium's where it applies).

    A multi-agent env (a PettingZoo ``AECEnv`` / ``ParallelEnv``) is checked with PettingZoo's own
    ``api_test`` / ``parallel_api_test`` instead.

    The env is reset and stepped many times; at the end a fresh copy (made from its registry spec), or
    the env itself when it has none, is closed twice.

    Args:
        env: The env (wrapped or not).
        skip: Names of checks to skip (see `CHECKS`, plus ``"gymnasium"`` and ``"close_idempotent"``).
        gymnasium: Also run ``gymnasium.utils.env_checker.check_env``.

    Returns:
        ``{check name: "ok" | "skipped: <reason>"}``.

    Raises:
        EnvCheckError: listing every failed check with its message.
    """
    report: dict[str, str] = {}
    failures: list[tuple[str, str]] = []
    steps: list[tuple[str, Callable[[Any], None]]] = list(CHECKS.items())
    pz = _pettingzoo_kind(env)
    if pz is not None:  # multi-agent env: PettingZoo's own API tests are the contract
        steps = [(f"pettingzoo_{pz}_api_test", run_pettingzoo_checker)]
    elif gymnasium:
        steps.append(("gymnasium", run_gymnasium_checker))
    steps.append(("close_idempotent", check_close_idempotent))
    for name, fn in steps:
        if name in skip:
            report[name] = "skipped: asked"
            continue
        try:
            fn(env)
            report[name] = "ok"
        except SkipCheck as e:
            report[name] = f"skipped: {e}"
        except Exception as e:  # noqa: BLE001 - every failure is reported with its check name
            text = f"{type(e).__name__}: {e}"
            same = next((i for i, (_, t) in enumerate(failures) if t == text), None)
            if same is None:
                failures.append((f"[{name}]", text))
            else:  # one broken hook fails many checks the same way: list the message once
                failures[same] = (failures[same][0][:-1] + f", {name}]", text)
            report[name] = "FAILED"
    if failures:
        raise EnvCheckError(
            f"{type(_unwrapped(env)).__name__} failed {sum(1 for s in report.values() if s == 'FAILED')} check(s):\n"
            + "\n".join(f"{names} {text}" for names, text in failures)
        )
    return report


def run_pettingzoo_checker(env: Any, num_cycles: int = 20) -> None:
    """PettingZoo's ``api_test`` (AEC) or ``parallel_api_test`` (Parallel) for multi-agent envs."""
    from pettingzoo.test import api_test, parallel_api_test

    if _pettingzoo_kind(env) == "aec":
        api_test(env, num_cycles=num_cycles)
    else:
        parallel_api_test(env, num_cycles=num_cycles)


def _pettingzoo_kind(env: Any) -> str | None:
    try:
        from pettingzoo import AECEnv, ParallelEnv
    except ImportError:  # pragma: no cover - pettingzoo is a core dependency
        return None
    if isinstance(env, AECEnv):
        return "aec"
    if isinstance(env, ParallelEnv):
        return "parallel"
    return None


# ---------------------------------------------------------------------------- helpers
def _check_obs(env: Any, obs: Any, where: str) -> None:
    space = env.observation_space
    why = space.why_not(obs) if hasattr(space, "why_not") else (None if obs in space else "not in the space")
    if why is not None:
        _fail(f"{where} returned an observation outside observation_space: {why}.")
    for m in obs:
        if m.get("role") == "tool" and not isinstance(m.get("name"), str):
            _fail(f"{where}: tool messages need a 'name' (the tool that answered); got {m!r}.")


def _check_step_info(info: Any) -> None:
    from turngym.envs.core import INFO_KEYS_EVERY_STEP

    if not isinstance(info, dict):
        _fail(f"step() info must be a dict, got {type(info).__name__}.")
    missing = [k for k in INFO_KEYS_EVERY_STEP if k not in info]
    if missing:
        _fail(f"step() info lacks {missing}; every step must report {list(INFO_KEYS_EVERY_STEP)}.")
    if not isinstance(info["parse_errors"], list) or not isinstance(info["tool_errors"], int):
        _fail("info['parse_errors'] must be a list[str] and info['tool_errors'] an int.")


def _fresh(env: Any) -> Any | None:
    u = _unwrapped(env)
    if getattr(u, "task", None) is None and not getattr(u, "_checker_touched", False):
        u._checker_touched = True
        return env
    spec = getattr(u, "turngym_spec", None)
    return spec.make(**copy.deepcopy(getattr(u, "turngym_kwargs", {}))) if spec is not None else None


def _base_expert_next() -> Any:
    from turngym.envs.core import Env

    return Env._expert_next
