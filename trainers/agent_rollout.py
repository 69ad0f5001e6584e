"""Training rollouts from the user's own agent through the gateway (``rollout=agent:module:function``).

Instead of stepping the env, each training step runs the agent: an ``async def run(client, task)`` written
against the OpenAI API. Per step, for every task seed, ``group_size`` copies run concurrently, each with an
``openai.AsyncOpenAI`` client whose ``base_url`` is one gateway episode (`turngym.agents.gateway.Gateway`), served
by the policy being trained (``s.policy``: the HF model itself, so every update is live for the next requests).
What ``run`` returns is the episode's reward; the gateway's recorded episodes are the step's trajectories
(``group_id = f"{env_id}:{seed}"``, the env's task data in ``meta``), so every credit method applies.

``task`` is an `AgentTask`: the env's first observation (``messages``), its tools as OpenAI schemas (``tools``),
the question and gold answer, and two helpers for agents that do not bring their own tools and scorer:
``call_tool(name, arguments) -> str`` (the env's tool, with its timeouts; errors come back as text) and
``score(answer) -> float`` (the env's scorer).

``run`` may return a number (the reward) or a dict ``{"reward": ..., "final_answer"?: ..., "success"?: ...,
"anchors"?: [one JSON value per turn]}`` (anchors: GiGPO's anchor states, ``Turn.info["anchor_obs"]``).
A ``run`` that raises (or returns something else, or runs past ``AGENT_TIMEOUT_S``) loses that episode only:
it is counted (``agent/failures``), its traceback is logged (logger ``turngym.gateway``) and it yields no
trajectory; an episode the gateway stopped for its token budget (``max_traj_tokens`` sampled tokens) ends with
reward 0 and ``stop_reason="max_tokens"``, as in the env-API engine. If every episode of a step fails, the step
raises `AgentRolloutError` with the first traceback.

The gateway samples with the run's ``temperature`` / ``top_p`` whatever the agent asks (the recorded log-probs
must be those of the policy the trainer optimises); the agent's ``max_tokens`` is capped by ``max_new_tokens``.
Held-out evaluation stays on the env API (`turngym.trainers.sampling.evaluate`), so runs with and without an agent
are measured the same way.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turngym.agents.rollout import RolloutStats
from turngym.errors import ConfigError, MissingExtraError, TurngymError
from turngym.types import ToolCall, Trajectory

if TYPE_CHECKING:
    from turngym.trainers.config import TrainConfig
    from turngym.trainers.policy_setup import Setup

log = logging.getLogger("turngym.gateway")

BATCH_WINDOW_S = 0.5
"""The gateway's longest batching wait in training. It rarely runs out: the batcher stops waiting as soon as every
running agent has a request queued (``batch_open_episodes``), so one generate call serves the whole round, as in the
env-API engine (and the policy's prefix cache keeps every episode's keys/values between turns)."""

AGENT_TIMEOUT_S = 600.0
"""Longest wall time of one agent episode; a ``run`` still going after it is cancelled and counted as failed."""


class AgentRolloutError(TurngymError, RuntimeError):
    """Every agent episode of a step failed (the message holds the first traceback)."""


@dataclass
class AgentTask:
    """What the agent's ``run(client, task)`` gets for one episode.

    Attributes:
        id: The gateway episode id.
        seed: The env reset seed (the task).
        group_id: ``f"{env_id}:{seed}"``, shared by the ``group_size`` copies.
        env_id: The env the task comes from.
        messages: The env's first observation (system prompt and the user task), as chat messages.
        tools: The env's tools as OpenAI tool schemas (``{"type": "function", "function": {...}}``).
        question: The task text.
        gold_answer: The reference answer (for agents that score themselves).
        meta: The env's task metadata (``info["task"]``).
        max_turns: The env's turn limit (None: none); an agent that wants the env-API episode length stops there.
    """

    id: str
    seed: int
    group_id: str
    env_id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    question: str
    gold_answer: str
    meta: dict[str, Any] = field(default_factory=dict)
    max_turns: int | None = None
    _env: Any = field(default=None, repr=False)

    def call_tool(self, name: str, arguments: dict[str, Any] | str | None = None) -> str:
        """Run the env's tool ``name`` (its timeout, truncation and error handling); returns the text the env would
        show the model (an error is ``"Error: ..."``, never an exception)."""
        import json

        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                return f"Error: arguments of {name!r} are not a JSON object: {arguments[:200]!r}"
        if not isinstance(arguments, dict):
            arguments = {}
        if self._env is None or self._env.toolset is None:
            return f"Error: unknown tool {name!r}: this task has no tools"
        return self._env.toolset.execute([ToolCall(name=str(name), arguments=arguments, id="call")])[0].text

    def score(self, answer: str) -> float:
        """The env's outcome of a final answer (e.g. exact match, in [0, 1])."""
        env = self._env.unwrapped  # the hook lives on the env itself, not on its wrappers
        return float(env._score(str(answer), env.task).outcome)


def parse_rollout_spec(spec: str) -> tuple[str, str]:
    """``"agent:module:function"`` or ``"agent:path/to/file.py:function"`` -> ``(module or path, function)``.

    Raises:
        ConfigError: Another form.
    """
    kind, _, target = str(spec).partition(":")
    module, _, func = target.rpartition(":")
    if kind != "agent" or not module or not func.isidentifier():
        raise ConfigError(
            f"rollout={spec!r} is not an agent rollout. Fix: rollout=agent:package.module:function or "
            "rollout=agent:path/to/file.py:function, naming an `async def run(client, task) -> float`."
        )
    return module, func


def load_agent(spec: str) -> Callable[..., Any]:
    """Import the agent function named by ``rollout=agent:...`` (see `parse_rollout_spec`).

    Raises:
        ConfigError: The module or file cannot be imported, or has no such callable.
    """
    module, func = parse_rollout_spec(spec)
    try:
        if module.endswith(".py"):
            path = Path(module).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"rollout={spec!r}: no file {str(path)!r}.")
            name = f"turngym_agent_{abs(hash(str(path)))}"
            mod = sys.modules.get(name)
            if mod is None:
                loader_spec = importlib.util.spec_from_file_location(name, path)
                assert loader_spec is not None and loader_spec.loader is not None
                mod = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = mod
                loader_spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
    except ConfigError:
        raise
    except Exception as e:  # the user's module failed to import: say which and why
        raise ConfigError(f"rollout={spec!r}: importing {module!r} failed: {type(e).__name__}: {e}") from e
    fn = getattr(mod, func, None)
    if not callable(fn):
        raise ConfigError(f"rollout={spec!r}: {module!r} has no callable {func!r}. Fix: define "
                          f"`async def {func}(client, task) -> float` there.")
    return fn


def _openai():
    try:
        import openai
    except ImportError:
        raise MissingExtraError("openai", "gateway") from None
    return openai


async def _run_one(agent: Callable[..., Any], client: Any, task: AgentTask) -> Any:
    if inspect.iscoroutinefunction(agent):
        return await asyncio.wait_for(agent(client, task), AGENT_TIMEOUT_S)
    return await asyncio.wait_for(asyncio.to_thread(agent, client, task), AGENT_TIMEOUT_S)


async def _run_all(agent: Callable[..., Any], gw: Any, tasks: list[AgentTask],
                   finish: Callable[[AgentTask, Any], None]) -> None:
    """Run every task's agent concurrently; ``finish(task, result or exception)`` ends each episode as soon as its
    agent returns (so the gateway's batcher stops waiting for it)."""
    openai = _openai()

    async def one(task: AgentTask) -> None:
        try:
            async with openai.AsyncOpenAI(base_url=gw.episode_url(task.id), api_key="turngym", max_retries=0,
                                          timeout=AGENT_TIMEOUT_S) as client:
                result: Any = await _run_one(agent, client, task)
        except Exception as e:  # noqa: BLE001 - the agent's failure is handled (counted, logged) by `finish`
            result = e
        finish(task, result)

    await asyncio.gather(*(one(t) for t in tasks))


def _reward(result: Any) -> tuple[float, str | None, bool | None, list | None]:
    if isinstance(result, dict) and "reward" in result:
        return float(result["reward"]), result.get("final_answer"), result.get("success"), result.get("anchors")
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return float(result), None, None, None
    raise TypeError(f"the agent returned {type(result).__name__} {str(result)[:80]!r}; return the reward (a number) "
                    'or {"reward": ..., "final_answer": ..., "success": ..., "anchors": ...}')


@dataclass
class AgentRolloutStats(RolloutStats):
    """`RolloutStats` plus the gateway's counters (``extra``: summed into the step's metrics)."""

    extra: dict[str, float] = field(default_factory=dict)


def rollout(cfg: TrainConfig, s: Setup, seeds: Sequence[int], group_size: int, *, temperature: float | None = None,
            sample_seed: int | None = None) -> tuple[list[Trajectory], AgentRolloutStats]:
    """Run ``group_size`` copies of the agent per seed through a gateway over ``s.policy`` (module docstring).

    Returns:
        ``(trajectories, stats)``: the recorded episodes seed-major (failed episodes left out); ``stats.extra``
        holds ``agent/episodes``, ``agent/failures``, ``agent/budget_stops``, ``agent/splits``,
        ``gateway/generate_calls``, ``gateway/max_batch``, ``gateway/errors``.
    """
    from turngym.agents.gateway import Gateway
    from turngym.envs import make
    from turngym.trainers.sampling import sampling_params

    agent = load_agent(cfg.rollout or "")
    t0 = time.perf_counter()
    if sample_seed is not None and hasattr(s.policy, "reseed"):
        s.policy.reseed(sample_seed)
    params = sampling_params(cfg, temperature=temperature)
    envs: dict[int, Any] = {}
    tasks: list[AgentTask] = []
    stats = AgentRolloutStats()
    gw = None
    try:
        for seed in seeds:
            if seed not in envs:
                env = make(cfg.env_id, **cfg.env_kwargs)
                envs[seed] = (env, env.reset(seed=int(seed)))
            env, (messages, info) = envs[seed]
            task_meta = info.get("task", {}) if isinstance(info.get("task"), dict) else {}
            if gw is None:  # the env's tool-call format; the run's sampling settings and token budget
                gw = Gateway(s.policy, s.renderer, parser=env.parser, params_override=params,
                             max_episode_tokens=cfg.max_traj_tokens, default_max_tokens=cfg.max_new_tokens,
                             batch_window_s=BATCH_WINDOW_S, max_batch_size=1 << 16, batch_open_episodes=True)
            for _ in range(group_size):
                gid = f"{cfg.env_id}:{seed}"
                eid = gw.new_episode(group_id=gid, env_id=cfg.env_id, seed=int(seed), meta=task_meta)
                tasks.append(AgentTask(
                    id=eid, seed=int(seed), group_id=gid, env_id=cfg.env_id, messages=[dict(m) for m in messages],
                    tools=list(env.tool_schemas), question=str(task_meta.get("prompt", "")),
                    gold_answer=str(task_meta.get("gold_answer", "")), meta=dict(task_meta),
                    max_turns=getattr(env, "max_turns", None), _env=env))
        if gw is None:
            raise ConfigError("agent rollout: no task seeds were given for this step.")
        stats.setup_s = time.perf_counter() - t0
        gw.start()
        counts = {"failures": 0, "budget": 0}
        first_error: list[str] = []

        def finish(task: AgentTask, res: Any) -> None:
            ep = gw.episode(task.id)
            try:
                if isinstance(res, BaseException):
                    if ep.budget_exhausted:  # out of tokens: the env-API engine's "max_tokens" ending
                        gw.episodes.end(task.id, 0.0, stop_reason="max_tokens")
                        counts["budget"] += 1
                        return
                    raise res
                reward, answer, success, anchors = _reward(res)
                gw.end_episode(task.id, reward, final_answer=answer, success=success, anchors=anchors)
            except Exception as e:  # noqa: BLE001 - a failing agent loses its episode only
                counts["failures"] += 1
                tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
                first_error.append(tb)
                log.warning("agent episode %s (task seed %s) failed and is dropped:\n%s", task.id, task.seed, tb)
                if gw.episode(task.id).state == "open":
                    gw.discard_episode(task.id)

        asyncio.run(_run_all(agent, gw, tasks, finish))
        failures, budget = counts["failures"], counts["budget"]
        trajs = gw.trajectories([t.id for t in tasks], pop=True)
    finally:
        if gw is not None:
            gw.stop()
        for env, _ in envs.values():
            env.close()
        clear = getattr(s.policy, "clear_cache", None)
        if clear is not None:
            clear()
    if not trajs:
        raise AgentRolloutError(f"all {len(tasks)} agent episodes of this step failed or recorded no turn "
                                f"(rollout={cfg.rollout!r}); the first error:\n"
                                f"{first_error[0] if first_error else '(no turn recorded)'}")
    stats.generate_s = gw.stats.generate_s
    stats.env_s = max(0.0, time.perf_counter() - t0 - stats.setup_s - gw.stats.generate_s)
    stats.rounds = gw.stats.generate_calls
    stats.sampled_tokens = gw.stats.sampled_tokens
    stats.trajectories = len(trajs)
    stats.wall_s = time.perf_counter() - t0
    stats.extra = {"agent/episodes": float(len(tasks)), "agent/failures": float(failures),
                   "agent/budget_stops": float(budget), "agent/splits": float(gw.stats.splits),
                   "gateway/generate_calls": float(gw.stats.generate_calls),
                   "gateway/max_batch": float(gw.stats.max_batch), "gateway/errors": float(gw.stats.errors)}
    return trajs, stats
