"""Multi-agent RL on PettingZoo text envs (turn-based AEC or simultaneous-move Parallel): shared, separate or
self-play policies, GRPO-style updates.

Algorithm (one step):

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
  the scripted policy of the other seat.

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
are checkpointed, except in self-play, where the frozen snapshots make the checkpoint hold full weights.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from turngym.credit import CREDIT, GroupBatch, assign_credit
from turngym.credit.signals import run_providers
from turngym.errors import ConfigError
from turngym.trainers import batch_signals, policy_setup, sampling
from turngym.trainers.checkpoint import Checkpoint, capture_rng, resume_checkpoint, save_checkpoint
from turngym.trainers.config import TrainConfig
from turngym.trainers.loop import frozen_copy
from turngym.trainers.report import write_report
from turngym.trainers.runlog import RunLog
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
    history: list[dict[str, float]] = field(default_factory=list)


def train(cfg: TrainConfig, *, console: Any = None) -> dict[str, Any]:
    """Run multi-agent RL end to end; returns a summary (team success before/after, run directory)."""
    CREDIT[cfg.credit]  # unknown method -> RegistryError before any work
    check_credit_fits_env(cfg)
    # --resume: every file it reads is verified first; ResumeError (exit 2) before anything is written
    ckpt = resume_checkpoint(cfg.run_dir) if cfg.resume and cfg.run_dir else None
    tok, renderer, device, roles, base = build_tokenizer(cfg)
    learners = build_learners(cfg, tok, renderer, device, roles, base)
    del base
    rng = np.random.default_rng([cfg.seed, 5])  # self-play opponent draws

    # --- resume (checked above), or warm start and initial evaluation
    run = RunLog(cfg.run_dir, cfg, resume_step=ckpt.step if ckpt else None,
                 resume_state=ckpt.extra.get("runlog") if ckpt else None, console=console)
    if ckpt is not None:
        pool = restore(ckpt, learners, rng)
        start, before = ckpt.step, ckpt.extra.get("eval_before", {})
        run.message(f"resumed from {ckpt.path} at step {start}")
    else:
        start = 0
        if cfg.sft_steps > 0 or cfg.pretrain_steps > 0:
            sft = warm_start(cfg, learners, renderer, roles, tok, lambda m: run.log(0, m, kind="sft"))
            run.log(0, sft, kind="sft")
        pool = [frozen_copy(learners[0].model)] if cfg.multi_mode == "self_play" else []
        before, trajs = evaluate(cfg, learners, renderer, roles, tok)
        run.log(0, before, kind="eval")
        run.log_trajectories(0, trajs, kind="eval")
        checkpoint(cfg, run, learners, pool, rng, 0, before)

    for step in range(start, cfg.steps):
        t_step = time.perf_counter()

        # --- 1. rollout (who plays which seat)
        t0 = time.perf_counter()
        actors, trained_roles = seat_actors(cfg, learners, renderer, roles, pool, step, rng)
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
        for ln in learners:
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
                pool.append(frozen_copy(learners[0].model))
                del pool[: max(0, len(pool) - cfg.selfplay_pool)]
            metrics["multi/pool_size"] = float(len(pool))

        # --- 5. log, evaluate
        n_sampled = float(sum(len(u.action_ids) for t in trajs for u in t.turns))
        metrics |= {
            "train/lr": cfg.lr, "perf/rollout_s": rollout_s, "perf/update_s": update_s, "perf/sync_s": 0.0,
            "perf/step_s": time.perf_counter() - t_step, "perf/tokens_per_s": n_sampled / max(rollout_s, 1e-9),
            "perf/trajectories_per_s": len(trajs) / max(time.perf_counter() - t_step, 1e-9),
        }
        run.log(step + 1, metrics)
        run.log_trajectories(step + 1, trajs)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            run.log(step + 1, evaluate(cfg, learners, renderer, roles, tok)[0], kind="eval")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            checkpoint(cfg, run, learners, pool, rng, step + 1, before)

    # --- final evaluation, checkpoint, weights and report
    after, trajs = evaluate(cfg, learners, renderer, roles, tok)
    run.log(cfg.steps, after, kind="eval")
    run.log_trajectories(cfg.steps, trajs, kind="eval")
    checkpoint(cfg, run, learners, pool, rng, cfg.steps, before)
    for ln in learners:
        out = run.run_dir / "final" / ln.name
        ln.model.save_pretrained(out)
        tok.save_pretrained(out)
    summary = {"run_dir": str(run.run_dir), "success_before": before.get("eval/success"),
               "success_after": after.get("eval/success"), "reward_before": before.get("eval/reward"),
               "reward_after": after.get("eval/reward"), "steps": cfg.steps, "credit": cfg.credit,
               "multi_mode": cfg.multi_mode}
    if cfg.report:
        summary["report"] = str(write_report(run.run_dir, cfg, summary))
    run.message(
        f"held-out team success: {_fmt(summary['success_before'])} -> {_fmt(summary['success_after'])} "
        f"({cfg.eval_tasks} tasks, {cfg.multi_mode}); run directory {run.run_dir}"
    )
    run.close()
    return summary


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


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


def bundle(learners: list[Learner], pool: list[Any]) -> tuple[torch.nn.Module, Optimizers]:
    """Every learner's model and the self-play pool as one module (``learners.<i>``, ``pool.<j>``), and their
    optimizers as one."""
    models = torch.nn.ModuleDict({"learners": torch.nn.ModuleList([ln.model for ln in learners]),
                                  "pool": torch.nn.ModuleList(pool)})
    return models, Optimizers({ln.name: ln.optimizer for ln in learners})


def checkpoint(cfg: TrainConfig, run: RunLog, learners: list[Learner], pool: list[Any], rng: np.random.Generator,
               step: int, before: dict) -> None:
    """Atomic checkpoint of every learner (model + optimizer), the self-play pool, the RNGs and the run log."""
    run.sync()
    models, opts = bundle(learners, pool)
    save_checkpoint(
        run.run_dir, step, model=models, optimizer=opts, data_state={"next_step": step}, config=cfg,
        keep=cfg.keep_checkpoints, trainable_only=cfg.lora and not pool, rng=capture_rng(),
        extra={"eval_before": before, "runlog": run.state_dict(), "learners": [ln.name for ln in learners],
               "pool_size": len(pool), "opponent_rng": rng.bit_generator.state},
    )


def restore(ckpt: Checkpoint, learners: list[Learner], rng: np.random.Generator) -> list[Any]:
    """Load a `checkpoint` into ``learners`` and ``rng``; returns the self-play pool it held."""
    saved = ckpt.extra.get("learners", [])
    if saved != [ln.name for ln in learners]:
        raise ConfigError(f"checkpoint {ckpt.path} holds learners {saved}, but this run builds "
                          f"{[ln.name for ln in learners]}; resume with the run's own config.yaml.")
    pool = [frozen_copy(learners[0].model) for _ in range(int(ckpt.extra.get("pool_size", 0)))]
    ckpt.restore(*bundle(learners, pool))
    rng.bit_generator.state = ckpt.extra["opponent_rng"]
    return pool


# ----------------------------------------------------------------------------------------------- building


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




def seat_actors(cfg: TrainConfig, learners: list[Learner], renderer, roles: list[str], pool: list[Any], step: int,
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


def evaluate(cfg: TrainConfig, learners: list[Learner], renderer, roles: list[str], tok
             ) -> tuple[dict[str, float], list[Trajectory]]:
    """Held-out evaluation on ``eval_tasks`` fixed seeds, one episode each (``eval_temperature``).

    Cooperative modes: the learners play every role; ``eval/success`` is team success. ``self_play``: the learner
    plays each seat in turn against the other seat's scripted policy (``expert_noise``); ``eval/success`` and
    ``eval/reward`` are the learner's own success and outcome.
    """
    from turngym.agents.multi_rollout import Actor
    from turngym.agents.policy import ScriptedPolicy

    t0 = time.perf_counter()
    seeds = [cfg.eval_seed + i for i in range(cfg.eval_tasks)]
    if not seeds:
        return {}, []
    for ln in learners:
        ln.model.eval()
    if cfg.multi_mode != "self_play":
        actors = {r: Actor(ln.policy, renderer) for ln in learners for r in ln.roles}
        trajs, _ = rollout(cfg, actors, seeds, 1, temperature=cfg.eval_temperature, sample_seed=cfg.seed)
        m = rollout_metrics(trajs, prefix="eval")
    else:
        trajs, mine = [], []
        for seat in roles:
            expert = ScriptedPolicy(tok, noise=cfg.expert_noise, seed=cfg.seed)
            actors = {r: Actor(learners[0].policy if r == seat else expert, renderer) for r in roles}
            got, _ = rollout(cfg, actors, seeds, 1, temperature=cfg.eval_temperature, sample_seed=cfg.seed)
            trajs += got
            mine += [t for t in got if t.agent_id == seat]
        m = sampling.rollout_metrics(mine, prefix="eval")
        m["eval/success"] = sum(bool(t.meta.get("success")) for t in mine) / max(len(mine), 1)
        from turngym.agents.multi_rollout import team_metrics

        m |= {k: v for k, v in team_metrics(mine, prefix="multi/eval").items() if k != "multi/eval/success"}
    m["eval/tasks"] = float(len(seeds))
    m["eval/s"] = time.perf_counter() - t0
    return m, trajs


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
