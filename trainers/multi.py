"""Multi-agent RL on PettingZoo text envs (turn-based AEC or simultaneous-move Parallel): shared, separate or
self-play policies, GRPO-style updates.

Algorithm (one step; `Multi.step` is steps 1-4, the loop every trainer shares, `turngym.trainers.loop`, step 5):

1. **Rollout**: ``tasks_per_step`` task seeds, ``group_size`` episodes each, every agent acting with its role's
   policy (`turngym.agents.multi_rollout`: one batched generate call per policy per round, token-in/token-out; in
   a Parallel env every live agent acts each round on its own observation).
   Each agent's turns form its own trajectory; ``group_id = f"{env_id}:{seed}:{agent}"``, so every baseline
   compares the same role on the same task.
2. **Counterfactuals** (``credit=team-difference`` only): each episode is replayed with one role scripted
   (`counterfactual_outcomes`) and ``G(z_{-i}, c_i)`` goes into the trajectory's prompt signals.
3. **Signals and credit, per learner**: the learner's own trajectories (the roles it plays and trains; agents
   that never acted are dropped) form its `GroupBatch`; the signal providers the credit method needs run with its
   own model; ``CREDIT[cfg.credit]`` gives the advantages (turn-level methods apply per role, because groups are).
4. **Update, per learner**: `turngym.trainers.update.update` (clipped PG) on that batch with the learner's
   optimizer. Each learner's loss only covers its own sampled tokens: the other roles' trajectories are not in
   its batch, and their actions are in its context only as the observation messages the env delivered (mask 0).
5. **Log, evaluate, checkpoint**: team success per episode, per-role outcome / turns / tokens, per-learner loss and
   credit diagnostics (``multi/*``); held-out evaluation before and after (and every ``eval_every`` steps); atomic
   checkpoints every ``checkpoint_every`` steps and at the end, from which ``--resume`` continues.

Modes (``multi_mode``):

* ``shared``: one model and optimizer acts for every role; the env's role-specific system prompts are the role
  prompts. All roles' trajectories are one batch (groups still per role).
* ``separate``: one model, optimizer and sampler per role (each role trains only on its own trajectories).
* ``self_play``: one learner plays one seat (alternating seats step by step) against an opponent drawn from a pool
  of frozen past snapshots of itself (a snapshot is added every ``selfplay_every`` steps, at most
  ``selfplay_pool`` kept); only the learner's seat is trained. Evaluation plays the learner in each seat against
  the scripted policy of the other seat (``eval/success``: the learner's win rate) and against a frozen copy of
  the warm-started learner, the run's start (``multi/eval/vs_start/*``: 0.5 at step 0 in a symmetric game; above
  0.5 later, self-play has learned something against its own past). Each win rate comes with a 95% Wilson
  interval over the games (``..._lo95``, ``..._hi95``).

Before RL the learners are warm-started from episodes of the scripted role policies
(``env.expert_action(agent, rng, expert_noise)``), played through the same engine and renderer as RL (`warm_start`):
optional language modelling on every token of every role's episodes (``pretrain_steps``, one model whose weights
every learner starts from), then SFT of each learner on its own roles' action tokens (`turngym.trainers.sft`).

A checkpoint (`turngym.trainers.checkpoint`, one atomic folder) holds every learner's model and optimizer, the
self-play pool's snapshots, the RNG states (global ones and the opponent-draw generator) and the run log's byte
offsets; task seeds and sampler seeds are pure functions of (seed, step), so a resumed run continues the step count
with the same data and no duplicated or lost metrics lines. The final weights of each learner are also saved with
``save_pretrained`` under ``run_dir/final/<learner>``.

Departures and limits: no KL reference; DAPO dynamic sampling is not applied; with ``lora=true`` only the adapters
are checkpointed, except in self-play, where the frozen snapshots make the checkpoint hold full weights. Refused
before any work (`check_supported`): ``kl_coef > 0``, data parallel, Ray rollouts, OPRL and LaRe.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from turngym.credit import GroupBatch, assign_credit, credit_needs
from turngym.credit.signals import run_providers
from turngym.errors import ConfigError
from turngym.trainers import batch_signals, loop, policy_setup, sampling
from turngym.trainers.checkpoint import Checkpoint
from turngym.trainers.config import TrainConfig, eval_config
from turngym.trainers.update import update
from turngym.types import Trajectory

#: Credit methods that need counterfactual replays of the episodes (their prompt signal ``cf_outcome``).
COUNTERFACTUAL_CREDITS = frozenset({"team-difference"})
GOLD_CREDITS = frozenset({"igpo", "a2tgpo"})
"""Credit methods that score turns by the policy's log-prob of the task's gold answer (`GoldProbeProvider`)."""


@dataclass
class Learner:
    """One trained policy: its model, optimizer, sampler and the roles it acts for and trains on."""

    name: str
    roles: list[str]
    model: Any
    optimizer: Any
    policy: Any
    setup: policy_setup.Setup


class Multi(loop.Algorithm):
    """The multi-agent trainer's part of the shared loop (`turngym.trainers.loop`). It holds the learners, the
    self-play pool and the opponent-draw generator (built by `setup` and `build`), and replaces the one-policy
    defaults: the learners' warm start, checkpoints of every learner and the pool, team evaluation, the final
    weights of each learner. `step` is steps 1-4 of the module docstring."""

    def __init__(self) -> None:
        self.tok, self.renderer, self.roles, self.learners = None, None, [], []
        self.pool = torch.nn.ModuleList()  # self-play: frozen snapshots of the learner, its opponents
        self.start = torch.nn.ModuleList()  # self-play: the warm-started learner, frozen (evaluation's opponent)
        self.rng: np.random.Generator | None = None  # self-play opponent draws (`setup`)

    def check(self, cfg: TrainConfig) -> None:
        check_supported(cfg)
        check_credit_fits_env(cfg)

    def setup(self, cfg: TrainConfig, dist: Any) -> policy_setup.Setup:
        """The shared tokenizer and renderer, the env's agents and the learners; the loop's `Setup` is the first
        learner's. ``dist`` is always None (refused by `check_supported` and `turngym.trainers.dp`)."""
        self.tok, self.renderer, device, self.roles, base = build_tokenizer(cfg)
        self.learners = build_learners(cfg, self.tok, self.renderer, device, self.roles, base)
        self.rng = np.random.default_rng([cfg.seed, 5])
        return self.learners[0].setup

    def warm_start(self, cfg: TrainConfig, s: policy_setup.Setup, log) -> dict[str, float]:
        if cfg.multi_init or (cfg.sft_steps <= 0 and cfg.pretrain_steps <= 0):
            return {}  # multi_init: `build` loads the weights instead
        return warm_start(cfg, self.learners, self.renderer, self.roles, self.tok, log)

    def build(self, cfg: TrainConfig, s: policy_setup.Setup) -> tuple[torch.nn.Module, Optimizers]:
        """Every learner, the self-play pool (self-play starts it with a snapshot of the warm-started learner)
        and the start snapshot as one module, their optimizers as one (`bundle`); the pool grows and shrinks
        inside it."""
        if cfg.multi_mode == "self_play":
            self.pool.append(loop.frozen_copy(self.learners[0].model))
            self.start.append(loop.frozen_copy(self.learners[0].model))
        modules, optimizers = bundle(self.learners, self.pool, self.start)
        if cfg.multi_init and not cfg.resume:
            load_init(cfg.multi_init, modules, [ln.name for ln in self.learners], self.pool, self.start)
        return modules, optimizers

    def restore(self, cfg: TrainConfig, ckpt: Checkpoint, modules: torch.nn.Module, optimizer: Any) -> None:
        """Check the checkpoint's learners are this run's, rebuild the pool's snapshots (``pool_size`` of
        them), then load every weight, optimizer and RNG state, the opponent-draw generator's included."""
        saved = ckpt.extra.get("learners", [])
        if saved != [ln.name for ln in self.learners]:
            raise ConfigError(f"checkpoint {ckpt.path} holds learners {saved}, but this run builds "
                              f"{[ln.name for ln in self.learners]}; resume with the run's own config.yaml.")
        del self.pool[:]
        self.pool.extend(loop.frozen_copy(self.learners[0].model) for _ in range(ckpt.extra.get("pool_size", 0)))
        if not any(k.startswith("start.") for k in ckpt.model_state or {}):
            del self.start[:]  # a checkpoint saved before the start snapshot existed: no vs-start evaluation
        ckpt.restore(modules, optimizer)
        self.rng.bit_generator.state = ckpt.extra["opponent_rng"]

    def state(self, cfg: TrainConfig, modules: torch.nn.Module, optimizer: Any) -> loop.State:
        """Every learner (model + optimizer) and the pool; with LoRA the adapters only, unless the pool's frozen
        snapshots need full weights. ``extra``: the learners' names, the pool's size, the opponent-draw RNG."""
        return loop.State(modules, optimizer, trainable_only=cfg.lora and len(self.pool) + len(self.start) == 0,
                          extra={"learners": [ln.name for ln in self.learners], "pool_size": len(self.pool),
                                 "opponent_rng": self.rng.bit_generator.state})

    def providers(self, cfg: TrainConfig, s: policy_setup.Setup, run_dir) -> list:
        return []  # none for the whole step: each learner's come from its own model (`learner_step`)

    def evaluate(self, cfg: TrainConfig, s: policy_setup.Setup) -> tuple[dict[str, float], list[Trajectory]]:
        return evaluate(cfg, self.learners, self.renderer, self.roles, self.tok,
                        start=self.start[0] if len(self.start) else None)

    def step(self, cfg: TrainConfig, s: policy_setup.Setup, optimizer: Any, step: int, providers: list,
             guard: Any, ref_model: Any, producer: Any, *, dist: Any = None) -> tuple[list, dict[str, float]]:
        """Steps 1-4 and the self-play pool; each learner steps its own optimizer (``optimizer``, ``providers``,
        ``guard``, ``ref_model`` and ``producer`` are the one-policy loop's and unused here)."""
        t_step = time.perf_counter()

        # --- 1. rollout (who plays which seat)
        t0 = time.perf_counter()
        actors, trained_roles = seat_actors(cfg, self.learners, self.renderer, self.roles, self.pool, step,
                                            self.rng)
        trajs, _ = rollout(cfg, actors, sampling.task_seeds(cfg, step), cfg.group_size,
                           sample_seed=step_seed(cfg, step))
        rollout_s = time.perf_counter() - t0
        metrics = rollout_metrics(trajs)

        # --- 2. counterfactual replays for difference rewards
        t0 = time.perf_counter()
        if cfg.credit in COUNTERFACTUAL_CREDITS:
            from turngym.agents.multi_rollout import attach_counterfactuals

            noise = float(cfg.credit_overrides.get("baseline_noise", 0.0))
            attach_counterfactuals(cfg.env_id, trajs, sorted(trained_roles), noise=noise, seed=cfg.seed + step,
                                   env_kwargs=cfg.env_kwargs)
        metrics["perf/signals_s"] = time.perf_counter() - t0

        # --- 3 + 4. signals, credit and update per learner, on its own trajectories only
        t0 = time.perf_counter()
        per: list[dict[str, float]] = []
        for ln in self.learners:
            mine = [t for t in trajs if t.agent_id in ln.roles and t.agent_id in trained_roles and t.turns]
            if not mine:
                continue
            m = learner_step(cfg, ln, mine)
            per.append(m)
            metrics |= {f"multi/{ln.name}/{k}": v for k, v in m.items()}
        for k in sorted({k for m in per for k in m if k.startswith("train/")}):
            vals = [m[k] for m in per if k in m and math.isfinite(m[k])]
            metrics[k] = float(np.mean(vals)) if vals else math.nan
        update_s = time.perf_counter() - t0

        # --- self-play pool
        if cfg.multi_mode == "self_play":
            if (step + 1) % cfg.selfplay_every == 0:
                self.pool.append(loop.frozen_copy(self.learners[0].model))
                del self.pool[: max(0, len(self.pool) - cfg.selfplay_pool)]
            metrics["multi/pool_size"] = float(len(self.pool))

        n_sampled = float(sum(len(u.action_ids) for t in trajs for u in t.turns))
        metrics |= {
            "train/lr": cfg.lr, "perf/rollout_s": rollout_s, "perf/update_s": update_s, "perf/sync_s": 0.0,
            "perf/step_s": time.perf_counter() - t_step, "perf/tokens_per_s": n_sampled / max(rollout_s, 1e-9),
            "perf/trajectories_per_s": len(trajs) / max(time.perf_counter() - t_step, 1e-9),
        }
        return trajs, metrics

    def finish(self, cfg: TrainConfig, s: policy_setup.Setup, run_dir, before: dict[str, float],
               after: dict[str, float]) -> dict[str, Any]:
        """Each learner's final weights and the tokenizer (``save_pretrained``) in ``run_dir/final/<learner>``;
        the summary's held-out reward before / after and the mode."""
        for ln in self.learners:
            out = Path(run_dir) / "final" / ln.name
            ln.model.save_pretrained(out)
            self.tok.save_pretrained(out)
        return {"reward_before": before.get("eval/reward"), "reward_after": after.get("eval/reward"),
                "multi_mode": cfg.multi_mode}

    def headline(self, cfg: TrainConfig, summary: dict[str, Any]) -> str:
        before, after = ("n/a" if summary[k] is None else f"{summary[k]:.3f}"
                         for k in ("success_before", "success_after"))
        return f"held-out team success: {before} -> {after} ({cfg.eval_tasks} tasks, {cfg.multi_mode})"


def train(cfg: TrainConfig, *, console: Any = None) -> dict[str, Any]:
    """Run multi-agent RL end to end; returns a summary (team success before/after, run directory)."""
    return loop.train(cfg, Multi(), console=console)


# ----------------------------------------------------------------------------------------------- checkpoints


class Optimizers:
    """Several optimizers saved and restored as one (``state_dict()`` -> ``{learner: state}``), for
    `save_checkpoint` / `Checkpoint.restore`."""

    def __init__(self, optimizers: dict[str, Any]):
        self.optimizers = optimizers

    def state_dict(self) -> dict[str, Any]:
        return {k: opt.state_dict() for k, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self.optimizers) - set(state))
        if missing:
            raise ConfigError(f"the checkpoint holds no optimizer state for learner(s) {missing}; it was saved by "
                              f"a run with learners {sorted(state)} (another multi_mode?).")
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state[k])


def bundle(learners: list[Learner], pool: torch.nn.ModuleList, start: torch.nn.ModuleList | None = None
           ) -> tuple[torch.nn.Module, Optimizers]:
    """Every learner's model, the self-play pool and the start snapshot as one module (``learners.<i>``,
    ``pool.<j>``, ``start.0``; ``pool`` itself, so its later snapshots are in it), and their optimizers as one."""
    models = torch.nn.ModuleDict({"learners": torch.nn.ModuleList([ln.model for ln in learners]), "pool": pool,
                                  "start": start if start is not None else torch.nn.ModuleList()})
    return models, Optimizers({ln.name: ln.optimizer for ln in learners})


# ----------------------------------------------------------------------------------------------- building


def load_init(path: str, modules: torch.nn.Module, names: list[str], pool: torch.nn.ModuleList,
              start: torch.nn.ModuleList) -> None:
    """``multi_init``: load the weights of the checkpoint at ``path`` (a ``step-*`` folder, or a run directory:
    its latest checkpoint) into `bundle`'s ``modules``; the pool gets the checkpoint's snapshots. A checkpoint
    without a start snapshot (not self-play, or saved before it existed) leaves self-play's start as a copy of
    the loaded learner. Neither optimizers nor RNGs are loaded: the run starts fresh from these weights."""
    from turngym.trainers.checkpoint import CKPT_SUBDIR, CheckpointError, load_checkpoint, load_latest

    where = Path(path)
    try:
        ckpt = load_latest(where) if (where / CKPT_SUBDIR).is_dir() else load_checkpoint(where)
    except CheckpointError as err:
        raise ConfigError(f"multi_init={path!r}: {err}") from err
    if ckpt is None:
        raise ConfigError(f"multi_init={path!r}: the run directory holds no checkpoint that verifies.")
    if ckpt.extra.get("learners") != names:
        raise ConfigError(f"multi_init={path!r} holds learners {ckpt.extra.get('learners')}, but this run builds "
                          f"{names} (another multi_mode or env?). Fix: a checkpoint of a run with this "
                          "multi_mode and env.")
    has_start = any(k.startswith("start.") for k in ckpt.model_state or {})
    self_play = len(start) > 0  # `build` made the start snapshot
    del pool[:]
    if self_play:  # the pool as saved; the start loaded, or copied from the loaded learner below
        pool.extend(loop.frozen_copy(modules["learners"][0]) for _ in range(ckpt.extra.get("pool_size", 0)))
        if not has_start:
            del start[:]
    try:
        ckpt.restore(modules, rng=False)
    except (RuntimeError, CheckpointError) as err:  # shapes or keys of another model
        raise ConfigError(f"multi_init={path!r} does not fit this run's model: {err}") from err
    if self_play and not has_start:
        start.append(loop.frozen_copy(modules["learners"][0]))


def check_supported(cfg: TrainConfig) -> None:
    """Raise `ConfigError` before any work for what the shared loop runs for one policy and this trainer has
    no use for: a KL reference, a data-parallel learner, Ray rollout workers, learned signal components (OPRL's
    PRM, LaRe's decoder). `TrainConfig` itself refuses vLLM sampling and async rollouts with algo=multi."""
    clashes = {  # name: (is set, why, fix)
        "kl_coef": (cfg.kl_coef > 0, "its learners keep no KL reference", "kl_coef=0"),
        "learner_parallel": (cfg.learner_parallel in ("ddp", "fsdp2"), "its learners train in one process",
                             "learner_parallel=auto"),
        "rollout_backend": (cfg.rollout_backend != "local", "its policies sample in this process",
                            "rollout_backend=local"),
    }
    for name, (is_set, why, fix) in clashes.items():
        if is_set:
            raise ConfigError(f"{name}={getattr(cfg, name)!r} with algo=multi: {why}. Fix: {fix}, or algo=grpo.")
    learned = credit_needs(cfg.credit).learned
    if learned:
        raise ConfigError(f"credit={cfg.credit} trains learned components ({', '.join(learned)}) beside one "
                          "policy, but algo=multi has a learner per role. Fix: credit=grpo or "
                          "credit=team-difference, or algo=grpo.")


def check_credit_fits_env(cfg: TrainConfig) -> None:
    """Raise `ConfigError` before any work when ``cfg.credit`` needs a gold answer the env's tasks do not have
    (`GOLD_CREDITS` on Negotiate or SealedBid, whose outcome comes from the game, not from a reference answer)."""
    from turngym.agents.multi_rollout import make_multi_env

    if cfg.credit not in GOLD_CREDITS:
        return
    env = make_multi_env(cfg.env_id, cfg.env_kwargs)
    try:
        env.reset(seed=cfg.seed)
        task = getattr(getattr(env, "unwrapped", env), "task", None)
    finally:
        env.close()
    if not isinstance(task, dict) or task.get("gold_answer") is None:
        raise ConfigError(
            f"credit={cfg.credit!r} scores each turn by the policy's log-prob of the task's gold answer, but "
            f"{cfg.env_id} tasks have no 'gold_answer'. Fix: credit=grpo (per-role outcome groups) or "
            "credit=team-difference, or an env with a gold answer (multi/SearchTeam-v0)."
        )


def build_tokenizer(cfg: TrainConfig):
    """The shared tokenizer, base renderer, device, the env's agents and the initial model.

    The tiny tokenizer is trained on every role's text from the scripted policies (`multi_env_texts`).
    """
    from turngym.agents.multi_rollout import make_multi_env, multi_env_texts
    from turngym.agents.render import Renderer
    from turngym.agents.tiny import load_policy_model

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    env = make_multi_env(cfg.env_id, cfg.env_kwargs)
    roles = list(env.possible_agents)
    env.close()
    device = policy_setup.resolve_device(cfg.device)
    kw: dict[str, Any] = {"env_id": cfg.env_id, "cache_dir": cfg.cache_dir, "device": str(device),
                          "dtype": policy_setup.resolve_dtype(cfg.dtype, device)}
    if cfg.model == "tiny":
        kw |= {"size": cfg.model_size, "texts": multi_env_texts(cfg.env_id, env_kwargs=cfg.env_kwargs)}
    model, tok = load_policy_model(cfg.model, **kw)
    return tok, Renderer(tok), device, roles, model


def build_learners(cfg: TrainConfig, tok, renderer, device, roles: list[str], base_model) -> list[Learner]:
    """One learner (``shared``, ``self_play``) or one per role (``separate``), each with its own copy of
    ``base_model`` (the same initial weights)."""
    from turngym.agents.policy import HFPolicy

    groups = [[r] for r in roles] if cfg.multi_mode == "separate" else [list(roles)]
    names = roles if cfg.multi_mode == "separate" else ["learner" if cfg.multi_mode == "self_play" else "shared"]
    out = []
    for i, (name, rs) in enumerate(zip(names, groups)):
        model = copy.deepcopy(base_model)
        if cfg.lora:
            model = policy_setup.apply_lora(model, cfg)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        policy = HFPolicy(model, tok, seed=cfg.seed + i)
        out.append(Learner(name, rs, model, opt, policy, policy_setup.Setup(model, tok, renderer, policy, device, int(pad))))
    return out


def seat_actors(cfg: TrainConfig, learners: list[Learner], renderer, roles: list[str], pool, step: int,
                rng: np.random.Generator) -> tuple[dict[str, Any], set[str]]:
    """``{agent: Actor}`` for this step and the roles whose trajectories are trained."""
    from turngym.agents.multi_rollout import Actor
    from turngym.agents.policy import HFPolicy

    if cfg.multi_mode != "self_play":
        return {r: Actor(ln.policy, renderer) for ln in learners for r in ln.roles}, set(roles)
    seat = roles[step % len(roles)]
    opp = pool[int(rng.integers(len(pool)))]
    opp_policy = HFPolicy(opp, learners[0].setup.tokenizer, seed=cfg.seed + 1000 + step, prefix_cache=False)
    actors = {r: Actor(learners[0].policy if r == seat else opp_policy, renderer) for r in roles}
    return actors, {seat}


# ----------------------------------------------------------------------------------------------- steps


def step_seed(cfg: TrainConfig, step: int) -> int:
    """Sampler seed of a step: a pure function of (seed, step)."""
    return int(np.random.default_rng([cfg.seed, step, 0, 11]).integers(2**31))


def rollout(cfg: TrainConfig, actors: dict[str, Any], seeds, group_size: int, *, temperature: float | None = None,
            sample_seed: int | None = None) -> tuple[list[Trajectory], Any]:
    """``group_size`` episodes per seed with ``actors``; returns (per-agent trajectories, stats)."""
    from turngym.agents.multi_rollout import collect_multi_rollouts

    if sample_seed is not None:  # once per call: every policy restarts its stream (reproducible steps)
        for i, p in enumerate({id(a.policy): a.policy for a in actors.values()}.values()):
            if hasattr(p, "reseed"):
                p.reseed(sample_seed + i)
    return collect_multi_rollouts(
        cfg.env_id, actors, seeds, group_size,
        params=sampling.sampling_params(cfg, temperature=temperature),
        max_traj_tokens=cfg.max_traj_tokens, env_kwargs=cfg.env_kwargs, return_stats=True,
    )


def learner_step(cfg: TrainConfig, ln: Learner, trajs: list[Trajectory]) -> dict[str, float]:
    """Signals, credit and one PG update of one learner on its own trajectories; returns its metrics."""
    from turngym.trainers.forward import batch_logprobs

    run_providers(trajs, batch_signals.signal_providers(cfg, ln.setup))
    batch = GroupBatch.from_trajectories(trajs, pad_id=ln.setup.pad_id).to(ln.setup.device)
    if batch.old_logprobs is None:  # the sampler's are already at cfg.temperature (turngym.agents.policy)
        batch.old_logprobs = batch_logprobs(ln.model, batch, temperature=cfg.temperature)
    overrides = {k: v for k, v in cfg.credit_overrides.items()}
    out = assign_credit(cfg.credit, batch, **overrides)
    m = {f"credit/{k}": v for k, v in out.diagnostics.items()}
    m["trajectories"] = float(len(trajs))
    if not bool(torch.isfinite(out.advantages).all()):
        return m | {"train/skipped": 1.0}
    m |= update(cfg, ln.model, ln.optimizer, batch, out)
    return m


def rollout_metrics(trajs: list[Trajectory], prefix: str = "rollout") -> dict[str, float]:
    """`sampling.rollout_metrics` over all agents' trajectories, with ``{prefix}/success`` = team success per
    episode, plus per-role metrics under ``multi/``."""
    from turngym.agents.multi_rollout import team_metrics

    m = sampling.rollout_metrics(trajs, prefix=prefix)
    team = team_metrics(trajs, prefix="multi" if prefix == "rollout" else "multi/eval")
    m[f"{prefix}/success"] = team["multi/success" if prefix == "rollout" else "multi/eval/success"]
    team.pop("multi/success", None)
    team.pop("multi/eval/success", None)
    key = "multi/team_success" if prefix == "rollout" else "multi/eval/team_success"
    return m | team | {key: m[f"{prefix}/success"]}


def evaluate(cfg: TrainConfig, learners: list[Learner], renderer, roles: list[str], tok, *, start: Any = None
             ) -> tuple[dict[str, float], list[Trajectory]]:
    """Held-out evaluation on ``eval_tasks`` fixed seeds, one episode each (``eval_temperature``).

    Cooperative modes: the learners play every role; ``eval/success`` is team success. ``self_play``: the learner
    plays each seat in turn against the other seat's scripted policy (``expert_noise``); ``eval/success`` and
    ``eval/reward`` are the learner's own success and outcome. With ``start`` (the frozen warm-started learner)
    it also plays each seat against ``start``: ``multi/eval/vs_start/success`` and ``.../reward``. Self-play win
    rates come with a 95% Wilson interval over the games (``eval/success_lo95``, ``eval/success_hi95``, and the
    same under ``multi/eval/vs_start/``). Trajectories carry ``meta["opponent"]`` (``"scripted"`` or ``"start"``).
    """
    from turngym.agents.multi_rollout import Actor, team_metrics
    from turngym.agents.policy import HFPolicy, ScriptedPolicy

    t0 = time.perf_counter()
    seeds = [cfg.eval_seed + i for i in range(cfg.eval_tasks)]
    if not seeds:
        return {}, []
    for ln in learners:
        ln.model.eval()
    if cfg.multi_mode != "self_play":
        actors = {r: Actor(ln.policy, renderer) for ln in learners for r in ln.roles}
        trajs, _ = rollout(eval_config(cfg), actors, seeds, 1, temperature=cfg.eval_temperature, sample_seed=cfg.seed)
        m = rollout_metrics(trajs, prefix="eval")
    else:
        opponents = {"scripted": lambda: ScriptedPolicy(tok, noise=cfg.expert_noise, seed=cfg.seed)}
        if start is not None:
            opponents["start"] = lambda: HFPolicy(start, learners[0].setup.tokenizer, seed=cfg.seed,
                                                  prefix_cache=False)
        trajs, m = [], {}
        for name, make in opponents.items():
            mine = []
            for seat in roles:
                actors = {r: Actor(learners[0].policy if r == seat else make(), renderer) for r in roles}
                got, _ = rollout(eval_config(cfg), actors, seeds, 1, temperature=cfg.eval_temperature, sample_seed=cfg.seed)
                for t in got:
                    t.meta["opponent"] = name
                trajs += got
                mine += [t for t in got if t.agent_id == seat]
            wins = sum(bool(t.meta.get("success")) for t in mine)
            lo, hi = wilson_interval(wins, len(mine))
            if name == "scripted":
                m |= sampling.rollout_metrics(mine, prefix="eval")
                m |= {"eval/success": wins / max(len(mine), 1), "eval/success_lo95": lo, "eval/success_hi95": hi}
                m |= {k: v for k, v in team_metrics(mine, prefix="multi/eval").items() if k != "multi/eval/success"}
            else:
                key = f"multi/eval/vs_{name}"
                m |= {f"{key}/success": wins / max(len(mine), 1), f"{key}/success_lo95": lo,
                      f"{key}/success_hi95": hi, f"{key}/games": float(len(mine)),
                      f"{key}/reward": float(np.mean([t.outcome for t in mine])) if mine else math.nan}
    m["eval/tasks"] = float(len(seeds))
    m["eval/s"] = time.perf_counter() - t0
    return m, trajs


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate (scipy's); ``(nan, nan)`` when ``n == 0``."""
    if n <= 0:
        return math.nan, math.nan
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def warm_start(cfg: TrainConfig, learners: list[Learner], renderer, roles: list[str], tok, log) -> dict[str, float]:
    """Warm start from ``sft_episodes`` episodes of the scripted role policies.

    1. ``pretrain_steps`` of language modelling (`sft_train(tokens="all")`) on every token of every role's
       trajectories, with the first learner's model; its weights then become every learner's starting point (the
       learners already share their initial weights, `build_learners`). One model reads all roles' text: the
       searcher's documents and notes teach the answerer's copying too, and it costs one pretraining, not one
       per learner (SearchTeam, 600 steps: 0.59 team success before SFT, against 0.27 with each learner
       pretrained on its own role only, in 0.7x the time).
    2. ``sft_steps`` of SFT on the action tokens of each learner's own roles.

    ``log(metrics)`` gets ``{"pretrain/step", "pretrain/loss"}`` and then, learner after learner,
    ``{"sft/step", "sft/loss"}`` every few steps.
    """
    from turngym.agents.multi_rollout import Actor, collect_multi_rollouts, team_metrics
    from turngym.agents.policy import SamplingParams, ScriptedPolicy
    from turngym.trainers.sft import sft_train

    rng = np.random.default_rng([cfg.seed, 7])
    seeds = [int(x) for x in rng.integers(0, cfg.eval_seed, size=cfg.sft_episodes)]
    expert = ScriptedPolicy(tok, noise=cfg.expert_noise, seed=cfg.seed)
    demos = collect_multi_rollouts(cfg.env_id, {r: Actor(expert, renderer) for r in roles}, seeds, 1,
                                   params=SamplingParams(max_new_tokens=cfg.max_new_tokens),
                                   max_traj_tokens=cfg.max_traj_tokens, env_kwargs=cfg.env_kwargs)
    out = {"sft/episodes": float(len(seeds)), "sft/expert_success": team_metrics(demos)["team/success"]}
    if cfg.pretrain_steps > 0:
        every_pre = max(1, cfg.pretrain_steps // 10)
        first = learners[0].model
        pre = sft_train(first, [t for t in demos if t.turns], steps=cfg.pretrain_steps, lr=cfg.pretrain_lr,
                        batch_size=cfg.sft_batch_size, pad_id=learners[0].setup.pad_id, seed=cfg.seed + 1,
                        tokens="all", on_step=lambda st, loss: (st + 1) % every_pre == 0
                        and log({"pretrain/step": st + 1, "pretrain/loss": loss}))
        for ln in learners[1:]:
            ln.model.load_state_dict(first.state_dict())
        out["sft/pretrain_loss"] = pre[-1]
    every = max(1, cfg.sft_steps // 20)
    losses = []
    for ln in learners:
        if cfg.sft_steps <= 0:
            break
        mine = [t for t in demos if t.agent_id in ln.roles and t.turns]
        ls = sft_train(ln.model, mine, steps=cfg.sft_steps, lr=cfg.sft_lr, batch_size=cfg.sft_batch_size,
                       pad_id=ln.setup.pad_id, seed=cfg.seed,
                       on_step=lambda st, loss: ((st + 1) % every == 0 or st + 1 == cfg.sft_steps)
                       and log({"sft/step": st + 1, "sft/loss": loss}))
        losses.append(ls[-1])
    out["sft/loss"] = float(np.mean(losses)) if losses else math.nan
    return out
