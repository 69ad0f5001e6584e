"""LaRe's latent-reward function: written by an LLM (or our rule stand-in), run in the sandbox (wave-2 spec §6.1a-b).

Two pieces, both behind the signal provider ``"lare_latent"`` of credit method ``lare``
(`turngym.credit.signals.SIGNAL_PROVIDERS`, options ``signals.<field>`` of `LaReCodeGenConfig`):

* `LatentRewardCodeGen` (once per run): asks the LLM judge (``ctx.judge``, `turngym.agents.judge.OpenAIJudge` from
  ``judge_url=``) for ``n_candidates`` versions of ``evaluation_func(observation, action)`` (temperature 1.0; reply as
  JSON with Understand / Analyze / Functions), asks it to merge them into one (temperature 0.3, when there are
  several), then runs the result on a probe batch (two copies of an example observation and action) in the sandbox:
  every returned factor must have shape ``(2, 1)``. An exception, a wrong shape or a non-finite value is sent back
  for a repair (temperature 0.3), at most ``max_repair_rounds`` rounds; nothing passing raises `SignalError`.
  ``direct=True`` asks for one factor, the reward itself (the release's direct-generation baseline).
* `LatentRewardProvider` (every step): runs the accepted function on every turn of the batch in **one** sandbox call
  and writes ``Turn.signals["lare_z0" … "lare_z{D−1}"]`` (``"lare_reward"`` in direct mode), ``lare_exec_error``
  (1 on a turn whose evaluation raised, timed out or gave a non-finite value: its factors are 0) and the prompt signal
  ``lare_llm`` (1 LLM code, 0 rule stand-in). More than ``max_exec_error_rate`` of the batch's turns failing raises
  `SignalError`.

Inputs of the function, per turn [R]: the state is ``Turn.info["state"]`` when the env exposes a structured state
(a dict), else the text of the observation shown before the turn (the task message for the first turn, then the
env's reply to the previous action); the action is the turn's action text.

**Sandbox.** Model-written code runs only in `turngym.tools.sandbox`: bwrap where it works (read-only root, private
tmpfs, no network, own PID namespace, rlimits, per-call uid and memory cgroup as root), else the subprocess backend
with its rlimits and a network namespace of its own per call (refused where none can be made); a wall-clock limit per call (``exec_timeout_s``) and a per-turn alarm (``turn_timeout_s``) inside
it, so a function that loops forever is killed. The harness uses the system ``python3`` and the standard library.

**Without a judge** (no ``judge_url``) the provider uses `RULE_CODE`, a fixed latent-reward function of ours for the
built-in tool envs, run through the same sandbox path. Its factors: the turn made a tool call that parsed, a call's
name matches a gold call name, the turn answered, a parse error, a tool error. Its observation is a dict the
provider builds from the turn (the state above plus the gold call names of the task and what the env parsed from the
action), since the rules need gold data the LLM code never sees.

**Resume.** The accepted code is saved as ``run_dir/signals/lare_code.py`` and the dialogue, factor count and source
as ``lare_code.json``; a provider whose run directory holds them reuses them (no LLM call), which is how the code
survives ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turngym.credit.base import PROMPT_SIGNALS_KEY
from turngym.credit.signals import SignalContext, judge_completions, register_signal_provider
from turngym.errors import ConfigError, SignalError
from turngym.types import Trajectory, Turn

__all__ = [
    "CODE_FILE",
    "RULE_CODE",
    "RULE_FACTORS",
    "GeneratedCode",
    "LaReCodeGenConfig",
    "LatentRewardCodeGen",
    "LatentRewardProvider",
    "TaskSpec",
    "extract_code",
    "make_lare_sandbox",
    "run_latent_code",
    "task_spec",
    "turn_inputs",
]

Judge = Callable[[Sequence[str]], Sequence[str]]
CODE_FILE = "signals/lare_code.py"
"""Where the accepted code is kept, relative to the run directory (the dialogue goes next to it as ``.json``)."""


@dataclass(frozen=True)
class LaReCodeGenConfig:
    """Generation and execution of LaRe's latent-reward code (spec §6.3); set with ``signals.<field>=value``."""

    n_candidates: int = 5
    """Candidate functions sampled from the LLM (release llm_n); 1 disables the merge step."""
    temperature: float = 1.0
    """Sampling temperature of the candidates (set on the judge when it has a temperature attribute)."""
    merge_temperature: float = 0.3
    """Temperature of the merge and repair requests."""
    max_repair_rounds: int = 5
    """Error-driven repair rounds after the first probe failure; none passing raises SignalError."""
    direct: bool = False
    """Ask for one reward instead of latent factors and use it as lare_reward without the decoder (baseline)."""
    max_exec_error_rate: float = 0.05
    """Largest fraction of a batch's turns whose evaluation may fail (their factors become 0); more raises."""
    max_tokens: int = 2048
    """Completion budget of one code-writing request (set on the judge when it has a max_tokens attribute)."""
    exec_timeout_s: float = 60.0
    """Wall-clock limit of one sandbox call (the probe, or all turns of a batch)."""
    turn_timeout_s: float = 1.0
    """Limit of one evaluation_func call inside the sandbox; a turn over it counts as an exec error."""

    def __post_init__(self) -> None:
        if self.n_candidates < 1 or self.max_repair_rounds < 0 or self.max_tokens < 1:
            raise ConfigError(f"signals.n_candidates={self.n_candidates} must be >= 1, signals.max_repair_rounds="
                              f"{self.max_repair_rounds} >= 0 and signals.max_tokens={self.max_tokens} >= 1.")
        if not 0.0 <= self.max_exec_error_rate <= 1.0:
            raise ConfigError(f"signals.max_exec_error_rate={self.max_exec_error_rate} must be in [0, 1].")
        if self.temperature < 0 or self.merge_temperature < 0:
            raise ConfigError(f"signals.temperature={self.temperature} and signals.merge_temperature="
                              f"{self.merge_temperature} must be >= 0.")
        if not (self.exec_timeout_s > 0 and self.turn_timeout_s > 0):
            raise ConfigError(f"signals.exec_timeout_s={self.exec_timeout_s} and signals.turn_timeout_s="
                              f"{self.turn_timeout_s} must be > 0.")


# ============================================================================================= sandbox execution

_HARNESS = r'''
import contextlib, io, json, math, signal, sys
_IN = json.loads(__PAYLOAD__)
_MARK = __MARKER__


def _emit(obj):
    sys.__stdout__.write("\n" + _MARK + json.dumps(obj) + "\n")
    sys.__stdout__.flush()


class _TurnTimeout(Exception):
    pass


_PHASE = ["loading the code", _IN["load_timeout_s"]]


def _on_alarm(signum, frame):
    raise _TurnTimeout("%s did not finish within %g s" % tuple(_PHASE))


def _err(e):
    return "%s: %s" % (type(e).__name__, str(e)[:400])


def _shape(x):
    dims = []
    while isinstance(x, (list, tuple)):
        dims.append(len(x))
        if not x:
            break
        x = x[0]
    return tuple(dims)


def _factors(res, n):
    if hasattr(res, "tolist"):
        res = res.tolist()
    if not isinstance(res, (list, tuple)) or not res:
        raise ValueError("evaluation_func must return a non-empty list of factors, each of shape (batch, 1); got %s"
                         % type(res).__name__)
    out = []
    for d, f in enumerate(res):
        if hasattr(f, "tolist"):
            f = f.tolist()
        if _shape(f) != (n, 1):
            raise ValueError("factor %d has shape %s, expected (%d, 1): a list of %d one-element lists"
                             % (d, _shape(f), n, n))
        vals = [float(r[0]) for r in f]
        if not all(math.isfinite(v) for v in vals):
            raise ValueError("factor %d has a non-finite value: %r" % (d, vals))
        out.append(vals)
    return out


def _call(fn, states, actions, limit):
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(states, actions)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


signal.signal(signal.SIGALRM, _on_alarm)
_ns = {"__name__": "lare_latent_code"}
try:
    signal.setitimer(signal.ITIMER_REAL, _IN["load_timeout_s"])
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(_IN["code"], "lare_code.py", "exec"), _ns)
    signal.setitimer(signal.ITIMER_REAL, 0)
    _fn = _ns.get("evaluation_func")
    if not callable(_fn):
        raise NameError("the code defines no function evaluation_func(observation, action)")
except BaseException as e:
    signal.setitimer(signal.ITIMER_REAL, 0)
    _emit({"load_error": _err(e)})
    sys.exit(0)

_S, _A, _T = _IN["states"], _IN["actions"], _IN["turn_timeout_s"]
_PHASE[:] = ["evaluation_func", _T]
if _IN["mode"] == "probe":
    try:
        _f = _factors(_call(_fn, list(_S), list(_A), _T), len(_S))
        _emit({"n_factors": len(_f)})
    except BaseException as e:
        _emit({"error": _err(e)})
else:
    _z = []
    for _s, _a in zip(_S, _A):
        try:
            _f = _factors(_call(_fn, [_s], [_a], _T), 1)
            if len(_f) != _IN["n_factors"]:
                raise ValueError("returned %d factors, the accepted function returned %d" % (len(_f), _IN["n_factors"]))
            _z.append([c[0] for c in _f])
        except BaseException as e:
            _z.append(_err(e))
    _emit({"z": _z})
'''


def make_lare_sandbox() -> Any:
    """The strongest sandbox that works here: bwrap (no network, read-only root, private tmpfs, own PID namespace),
    else the subprocess backend with its rlimits, a network namespace of its own per call (it refuses to start
    where it cannot make one) and, as root, a per-call uid and memory cgroup."""
    from turngym.tools.sandbox import bwrap_available, make_sandbox

    limits = {"memory_mb": 512, "max_procs": 16, "max_file_mb": 1, "max_output_bytes": 32_000_000}
    if bwrap_available():
        return make_sandbox("bwrap", **limits)
    return make_sandbox("subprocess", allow_rlimit_memory=True, network=False, **limits)


def run_latent_code(sandbox: Any, code: str, states: Sequence[Any], actions: Sequence[str], *, mode: str = "eval",
                    n_factors: int = 0, timeout_s: float = 60.0, turn_timeout_s: float = 1.0) -> dict[str, Any]:
    """Run ``evaluation_func`` of ``code`` in ``sandbox`` (one call) and return what happened.

    Args:
        sandbox: A `turngym.tools.sandbox.Sandbox`.
        code: Python source defining ``evaluation_func(observation, action)``.
        states / actions: One entry per turn (JSON-able).
        mode: ``"probe"`` (one call on the whole batch; result ``{"n_factors": D}`` or ``{"error": msg}``) or
            ``"eval"`` (one call per turn; result ``{"z": [[z_0 … z_{D−1}] or error message, …]}``).
        n_factors: ``D`` of the accepted function (``"eval"``).
        timeout_s: Wall-clock limit of the whole sandbox call.
        turn_timeout_s: Limit of one ``evaluation_func`` call.

    Returns:
        The harness's result, ``{"load_error": msg}`` when the code does not load, or ``{"call_error": msg}`` when the
        sandbox call itself failed (killed, timed out, crashed); always with ``duration_s``.
    """
    marker = f"@@lare-{uuid.uuid4().hex}@@"
    payload = {"code": code, "states": list(states), "actions": [str(a) for a in actions], "mode": mode,
               "n_factors": int(n_factors), "turn_timeout_s": float(turn_timeout_s),
               "load_timeout_s": max(2.0, float(turn_timeout_s))}
    src = _HARNESS.replace("__PAYLOAD__", repr(json.dumps(payload))).replace("__MARKER__", repr(marker))
    res = sandbox.run(src, timeout_s=timeout_s)
    found = None
    for line in res.stdout.splitlines():
        if line.startswith(marker):
            found = line[len(marker):]
    if found is None or not res.ok:
        msg = res.error_message(timeout_s) or "the sandbox call printed no result"
        return {"call_error": msg, "timed_out": res.timed_out, "duration_s": res.duration_s}
    try:
        out = json.loads(found)
    except ValueError:
        return {"call_error": f"unreadable harness output {found[:200]!r}", "duration_s": res.duration_s}
    out["duration_s"] = res.duration_s
    return out


# ============================================================================================= per-turn inputs


def _messages_text(messages: Sequence[dict[str, Any]]) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("content"))


def _obs_after(turn: Turn) -> str:
    text = _messages_text(turn.obs_messages)
    if not text and turn.tool_results:
        text = "\n".join(r.text for r in turn.tool_results)
    return text


def turn_inputs(traj: Trajectory, *, rule: bool = False) -> list[tuple[Any, str]]:
    """``(state, action)`` of every turn: the state is ``Turn.info["state"]`` when it is a dict, else the observation
    text shown before the turn (the non-system prompt messages for the first turn, then the env's reply to the
    previous action); the action is the turn's action text. With ``rule=True`` the state is the dict the rule
    stand-in reads: ``{"observation", "gold_call_names", "tool_calls", "parse_errors", "tool_errors", "answered"}``."""
    prev = _messages_text([m for m in traj.prompt_messages if m.get("role") != "system"])
    gold = [str(c.get("name", "")) for c in (traj.meta.get("gold_calls") or []) if isinstance(c, dict)]
    out: list[tuple[Any, str]] = []
    for k, u in enumerate(traj.turns):
        st = u.info.get("state")
        state: Any = st if isinstance(st, dict) else prev
        if rule:
            state = {
                "observation": state,
                "gold_call_names": gold,
                "tool_calls": [c.name for c in u.tool_calls],
                "parse_errors": len(u.info.get("parse_errors") or []),
                "tool_errors": int(u.info.get("tool_errors") or sum(1 for r in u.tool_results if not r.ok)),
                "answered": k == len(traj.turns) - 1 and traj.final_answer is not None,
            }
        out.append((state, u.action_text))
        prev = _obs_after(u)
    return out


# ============================================================================================= the rule stand-in

RULE_FACTORS = ("made_call", "gold_call_name", "answered", "parse_error", "tool_error")
"""Names of the rule stand-in's factors, in order (``lare_z0`` … ``lare_z4``)."""

RULE_CODE = '''"""turngym's rule stand-in for LaRe's LLM-written latent-reward function (built-in tool envs).

Each observation is a dict the provider builds from the turn: "observation" (the state), "gold_call_names" (tool
names of the task's gold calls), "tool_calls" (names the env parsed from this action), "parse_errors" and
"tool_errors" (counts the env reported for this action), "answered" (the action gave the final answer).
Factors: made a tool call that parsed, called a gold tool, answered, parse error, tool error.
"""


def evaluation_func(observation, action):
    made_call, gold_call, answered, parse_error, tool_error = [], [], [], [], []
    for obs, act in zip(observation, action):
        calls = list(obs.get("tool_calls") or [])
        gold = set(obs.get("gold_call_names") or [])
        parse_errors = int(obs.get("parse_errors") or 0)
        made_call.append([1.0 if calls and parse_errors == 0 else 0.0])
        gold_call.append([1.0 if any(c in gold for c in calls) else 0.0])
        answered.append([1.0 if obs.get("answered") else 0.0])
        parse_error.append([1.0 if parse_errors > 0 else 0.0])
        tool_error.append([1.0 if int(obs.get("tool_errors") or 0) > 0 else 0.0])
    return [made_call, gold_call, answered, parse_error, tool_error]
'''


# ============================================================================================= code generation

_CONTRACT = (
    "`evaluation_func(observation, action)` receives two lists of the same length (a batch); it returns a Python "
    "list of factors, each factor a list of `len(observation)` one-element lists `[[v_0], [v_1], ...]` (shape "
    "(batch, 1)) of finite numbers. Use only the Python standard library (no numpy, no files, no network); it must "
    "be fast and must not raise on unusual input."
)
_REPLY = ('Reply with JSON only: {"Understand": "...", "Analyze": "...", "Functions": "<the complete Python code '
          'defining evaluation_func>"}')

CODE_PROMPT = """## Write a latent-reward function
You write a Python function that scores one step of an AI agent along several interpretable dimensions (latent reward
factors); a small learned decoder later combines the factors into the reward of the step, so that the rewards of an
episode add up to its final score.

### Task
{task}

### Inputs
- observation[i]: {state_format}
- action[i]: {action_format}

Example observation:
{example_state}

Example action:
{example_action}

### What to do
1. Understand the task and what a good step looks like.
2. Analyze which positive and negative behaviours are visible in an (observation, action) pair.
3. {goal}
{contract}

{reply}"""

_GOAL_FACTORS = ("Write `evaluation_func(observation, action)` returning several factors, one per behaviour you "
                 "identified (for example 0/1 indicators or bounded scores).")
_GOAL_DIRECT = ("Write `evaluation_func(observation, action)` returning exactly ONE factor: the reward of the step "
                "(higher is better).")

MERGE_PROMPT = """## Merge candidate functions
{prompt}

### Candidates
Here are {n} candidate versions of `evaluation_func` for this task:
{candidates}

Merge them into ONE `evaluation_func` that covers all of their factors (drop duplicates) and adds any important
factor they all miss. {contract}

{reply}"""

REPAIR_PROMPT = """## Repair the function
{prompt}

### Your previous code
```python
{code}
```

### Error
Running it on the example batch (two copies of the example observation and action) failed:
{error}

Fix the code. {contract}

{reply}"""


def extract_code(text: str) -> str | None:
    """The Python code of an LLM reply: the ``Functions`` field of its JSON object, else a fenced code block, else the
    text itself when it defines ``evaluation_func``; None when there is none."""
    text = str(text or "")
    a, b = text.find("{"), text.rfind("}")
    if 0 <= a < b:
        try:
            obj = json.loads(text[a:b + 1], strict=False)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            for key, v in obj.items():
                if str(key).lower() in ("functions", "function", "code"):
                    code = "\n".join(map(str, v)) if isinstance(v, list) else str(v)
                    if code.strip():
                        return _strip_fence(code)
    blocks = text.split("```")
    for block in blocks[1::2]:
        code = _strip_fence("```" + block + "```")
        if "evaluation_func" in code:
            return code
    if "def evaluation_func" in text:
        return text.strip()
    return None


def _strip_fence(code: str) -> str:
    s = code.strip()
    if s.startswith("```"):
        s = s[3:]
        first, _, rest = s.partition("\n")
        s = rest if first.strip().isidentifier() or not first.strip() else s
        if s.rstrip().endswith("```"):
            s = s.rstrip()[:-3]
    return s.strip() + "\n"


@dataclass(frozen=True)
class TaskSpec:
    """What the code writer is told about the env: a task description, the formats and one example turn."""

    task: str
    state_format: str
    action_format: str
    example_state: Any
    example_action: str


_TEXT_STATE = ("a str: the text shown to the agent right before its step (the task message before the first step; "
               "afterwards the environment's reply to the previous action: tool results or error messages)")
_ACTION = ("a str: the agent's whole reply for the step (reasoning, tool calls in the environment's format, or the "
           "final answer inside <answer>...</answer>)")


def _clip(x: Any, n: int) -> str:
    s = x if isinstance(x, str) else json.dumps(x, indent=1, default=str)
    return s if len(s) <= n else s[:n] + f"\n... ({len(s) - n} more characters)"


def task_spec(trajs: Sequence[Trajectory]) -> TaskSpec:
    """A `TaskSpec` from a batch: the env id and instructions (system prompt) of the first trajectory, its task
    message, and its first turn as the probe example (`turn_inputs`)."""
    t = next((x for x in trajs if x.turns), None)
    if t is None:
        raise SignalError("lare_latent: the batch has no turn to take an example (observation, action) from.")
    system = _messages_text([m for m in t.prompt_messages if m.get("role") == "system"])
    state, action = turn_inputs(t)[0]
    task = f"Environment {t.env_id or '(unnamed)'}."
    if system:
        task += f" The agent's instructions (system prompt):\n{_clip(system, 3000)}"
    fmt = _TEXT_STATE
    if isinstance(state, dict):
        fmt = f"a dict, the environment's structured state before the step, with keys {sorted(state)}"
    return TaskSpec(task=task, state_format=fmt, action_format=_ACTION, example_state=state, example_action=action)


@dataclass
class GeneratedCode:
    """An accepted latent-reward function and how it was obtained."""

    code: str
    n_factors: int
    source: str
    """``"llm"`` or ``"rule"``."""
    direct: bool = False
    repair_rounds: int = 0
    dialogue: list[dict[str, Any]] = field(default_factory=list)
    """Every request: ``{"kind", "temperature", "prompt", "completion"}``."""
    sandbox: str = ""


@contextlib.contextmanager
def _judge_settings(judge: Any, **settings: Any) -> Iterator[None]:
    """Set ``temperature`` / ``max_tokens`` on a judge that has them (`OpenAIJudge`), restored afterwards."""
    saved = {}
    for k, v in settings.items():
        if hasattr(judge, k):
            saved[k] = getattr(judge, k)
            setattr(judge, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(judge, k, v)


class LatentRewardCodeGen:
    """The generate → merge → probe → repair loop of LaRe (spec §6.1a).

    Args:
        judge: ``judge(prompts) -> completions``.
        cfg: `LaReCodeGenConfig`.
        sandbox: Where the probe runs (default `make_lare_sandbox`).
    """

    def __init__(self, judge: Judge, cfg: LaReCodeGenConfig | None = None, *, sandbox: Any = None):
        self.judge, self.cfg = judge, cfg or LaReCodeGenConfig()
        self.sandbox = sandbox if sandbox is not None else make_lare_sandbox()
        self.dialogue: list[dict[str, Any]] = []

    def _ask(self, prompts: list[str], temperature: float, kind: str) -> list[str]:
        try:
            with _judge_settings(self.judge, temperature=temperature, max_tokens=self.cfg.max_tokens):
                outs = judge_completions(self.judge, prompts)
        except Exception as e:
            raise SignalError(f"lare_latent: the judge callable failed on the {kind} request: {e!r}") from e
        for p, o in zip(prompts, outs):
            self.dialogue.append({"kind": kind, "temperature": temperature, "prompt": p, "completion": o})
        return outs

    def check(self, code: str | None, spec: TaskSpec) -> tuple[int, str | None]:
        """Run ``code`` on the probe batch: ``(D, None)`` when it passes, else ``(0, error message)``."""
        if not code:
            return 0, "no Python code defining evaluation_func was found in the reply"
        res = run_latent_code(self.sandbox, code, [spec.example_state] * 2, [spec.example_action] * 2, mode="probe",
                              timeout_s=self.cfg.exec_timeout_s, turn_timeout_s=self.cfg.turn_timeout_s)
        err = res.get("load_error") or res.get("call_error") or res.get("error")
        if err:
            return 0, str(err)
        d = int(res.get("n_factors", 0))
        if self.cfg.direct and d != 1:
            return 0, f"direct mode: evaluation_func must return exactly one factor (the reward); it returned {d}"
        return d, None

    def generate(self, spec: TaskSpec) -> GeneratedCode:
        """Candidates, merge, probe and repair; raises `SignalError` when no function passes the probe."""
        cfg = self.cfg
        prompt = CODE_PROMPT.format(task=spec.task, state_format=spec.state_format, action_format=spec.action_format,
                                    example_state=_clip(spec.example_state, 2000),
                                    example_action=_clip(spec.example_action, 2000),
                                    goal=_GOAL_DIRECT if cfg.direct else _GOAL_FACTORS, contract=_CONTRACT,
                                    reply=_REPLY)
        cands = [extract_code(o) for o in self._ask([prompt] * cfg.n_candidates, cfg.temperature, "candidate")]
        if cfg.n_candidates > 1:
            shown = "\n\n".join(f"Candidate {i + 1}:\n```python\n{c or '(no code in this reply)'}```"
                                for i, c in enumerate(cands))
            merge = MERGE_PROMPT.format(prompt=prompt, n=len(cands), candidates=shown, contract=_CONTRACT,
                                        reply=_REPLY)
            code = extract_code(self._ask([merge], cfg.merge_temperature, "merge")[0])
        else:
            code = cands[0]
        errors: list[str] = []
        for rnd in range(cfg.max_repair_rounds + 1):
            d, err = self.check(code, spec)
            if err is None:
                return GeneratedCode(code=code, n_factors=d, source="llm", direct=cfg.direct, repair_rounds=rnd,
                                     dialogue=list(self.dialogue), sandbox=getattr(self.sandbox, "kind", ""))
            errors.append(err)
            if rnd == cfg.max_repair_rounds:
                break
            fix = REPAIR_PROMPT.format(prompt=prompt, code=code or "(no code)", error=err, contract=_CONTRACT,
                                       reply=_REPLY)
            code = extract_code(self._ask([fix], cfg.merge_temperature, "repair")[0])
        raise SignalError(f"lare_latent: no latent-reward function passed the probe after {cfg.max_repair_rounds} "
                          f"repair round(s); last error: {errors[-1][:500]}")


# ============================================================================================= the provider


class LatentRewardProvider:
    """Signal provider ``"lare_latent"``: the latent factors of every turn (spec §6.1b); see the module docstring.

    Args:
        cfg: `LaReCodeGenConfig`.
        judge: The LLM that writes the code, or None for the rule stand-in (`RULE_CODE`).
        run_dir: Where the accepted code is saved and looked for (`CODE_FILE`); None keeps it in memory.
        sandbox: Sandbox to run the code in (default `make_lare_sandbox`, created on first use).

    Attributes:
        source: ``"llm"`` or ``"rule"``: which function runs.
        exec_errors: Turns whose evaluation failed, over the run.
        last_exec_s: Duration of the last batch's sandbox call.
    """

    name = "lare_latent"

    def __init__(self, cfg: LaReCodeGenConfig | None = None, *, judge: Judge | None = None, run_dir: Any = None,
                 sandbox: Any = None):
        self.cfg = cfg or LaReCodeGenConfig()
        self.judge, self.run_dir, self._sandbox = judge, run_dir, sandbox
        self.source = "llm" if judge is not None else "rule"
        if self.source == "rule" and self.cfg.direct:
            raise ConfigError("signals.direct=true asks the LLM for a reward function, but no judge is configured. "
                              "Fix: judge_url=http://HOST:PORT/v1, or signals.direct=false (rule stand-in).")
        self.generated: GeneratedCode | None = None
        self.exec_errors = 0
        self.calls = 0
        self.last_exec_s = 0.0

    @property
    def sandbox(self) -> Any:
        if self._sandbox is None:
            self._sandbox = make_lare_sandbox()
        return self._sandbox

    # ------------------------------------------------------------------ the code
    def _paths(self) -> tuple[Path, Path] | None:
        if self.run_dir is None:
            return None
        py = Path(self.run_dir) / CODE_FILE
        return py, py.with_suffix(".json")

    def _load(self) -> GeneratedCode | None:
        paths = self._paths()
        if paths is None or not (paths[0].is_file() and paths[1].is_file()):
            return None
        meta = json.loads(paths[1].read_text(encoding="utf-8"))
        if meta.get("source") != self.source or bool(meta.get("direct")) != self.cfg.direct:
            raise ConfigError(
                f"{paths[0]} holds {meta.get('source')} latent-reward code (direct={meta.get('direct')}), but this run "
                f"uses the {self.source} one (direct={self.cfg.direct}). Fix: resume with the same judge_url and "
                f"signals.direct, or delete {paths[0]} and {paths[1].name} to generate the code again."
            )
        return GeneratedCode(code=paths[0].read_text(encoding="utf-8"), n_factors=int(meta["n_factors"]),
                             source=meta["source"], direct=bool(meta.get("direct")),
                             repair_rounds=int(meta.get("repair_rounds", 0)), dialogue=list(meta.get("dialogue", [])),
                             sandbox=str(meta.get("sandbox", "")))

    def _save(self, gen: GeneratedCode) -> None:
        paths = self._paths()
        if paths is None:
            return
        py, js = paths
        py.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in asdict(gen).items() if k != "code"}
        meta["factor_names"] = list(RULE_FACTORS) if gen.source == "rule" else []
        for path, text in ((js, json.dumps(meta, indent=1)), (py, gen.code)):  # the .py last: it marks completion
            fd, tmp = tempfile.mkstemp(dir=py.parent, prefix=".lare-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)

    def ensure_code(self, trajs: Sequence[Trajectory]) -> GeneratedCode:
        """The accepted function: from memory, the run directory, the rule stand-in, or generated by the LLM now."""
        if self.generated is None:
            gen = self._load()
            if gen is None:
                if self.source == "rule":
                    spec = task_spec(trajs)
                    state, action = turn_inputs(next(t for t in trajs if t.turns), rule=True)[0]
                    spec = TaskSpec(spec.task, spec.state_format, spec.action_format, state, action)
                    d, err = LatentRewardCodeGen(_no_judge, self.cfg, sandbox=self.sandbox).check(RULE_CODE, spec)
                    if err is not None:
                        raise SignalError(f"lare_latent: the rule stand-in failed in the sandbox: {err}")
                    gen = GeneratedCode(code=RULE_CODE, n_factors=d, source="rule", sandbox=self.sandbox.kind)
                else:
                    gen = LatentRewardCodeGen(self.judge, self.cfg, sandbox=self.sandbox).generate(task_spec(trajs))
                self._save(gen)
            self.generated = gen
        return self.generated

    # ------------------------------------------------------------------ per step
    def __call__(self, trajs: list[Trajectory]) -> list[Trajectory]:
        where = [(t, k) for t in trajs for k in range(len(t.turns))]
        if not where:
            return trajs
        gen = self.ensure_code(trajs)
        inputs = [x for t in trajs for x in turn_inputs(t, rule=gen.source == "rule")]
        res = run_latent_code(self.sandbox, gen.code, [s for s, _ in inputs], [a for _, a in inputs], mode="eval",
                              n_factors=gen.n_factors, timeout_s=self.cfg.exec_timeout_s,
                              turn_timeout_s=self.cfg.turn_timeout_s)
        self.calls += 1
        self.last_exec_s = float(res.get("duration_s", 0.0))
        z = res.get("z")
        if not isinstance(z, list) or len(z) != len(where):
            why = res.get("load_error") or res.get("call_error") or f"malformed result {str(res)[:200]}"
            z = [str(why)] * len(where)
        errors = [v for v in z if not isinstance(v, list)]
        self.exec_errors += len(errors)
        if len(errors) > self.cfg.max_exec_error_rate * len(where):
            raise SignalError(
                f"lare_latent: the latent-reward function failed on {len(errors)} of {len(where)} turns (more than "
                f"max_exec_error_rate={self.cfg.max_exec_error_rate}); first error: {str(errors[0])[:500]}"
            )
        names = ["lare_reward"] if gen.direct else [f"lare_z{d}" for d in range(gen.n_factors)]
        for (t, k), vals in zip(where, z):
            ok = isinstance(vals, list) and len(vals) == len(names) and all(math.isfinite(float(v)) for v in vals)
            sig = t.turns[k].signals
            for n, v in zip(names, vals if ok else [0.0] * len(names)):
                sig[n] = float(v)
            sig["lare_exec_error"] = 0.0 if ok else 1.0
        for t in trajs:
            t.meta.setdefault(PROMPT_SIGNALS_KEY, {})["lare_llm"] = 1.0 if gen.source == "llm" else 0.0
        return trajs


def _no_judge(prompts: Sequence[str]) -> list[str]:
    raise SignalError("the rule stand-in asks no LLM")


@register_signal_provider("lare_latent")
def make_lare_latent(ctx: SignalContext) -> LatentRewardProvider:
    """``"lare_latent"`` provider of credit method ``lare``: LLM-written code with ``ctx.judge``, else the rule
    stand-in; options from ``signals.<field>`` (`LaReCodeGenConfig`); the code kept in ``ctx.run_dir``."""
    return LatentRewardProvider(ctx.options_for(LaReCodeGenConfig), judge=ctx.judge, run_dir=ctx.run_dir)


make_lare_latent.config_cls = LaReCodeGenConfig  # type: ignore[attr-defined]
