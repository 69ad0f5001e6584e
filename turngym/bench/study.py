"""`turngym bench study`: learning efficiency of the credit methods from one shared SFT start.

For each env, the tiny policy is warm-started ONCE by SFT on the env's noisy scripted expert and saved with
``save_pretrained`` (`turngym.bench.sft`); every (method, seed) run loads that checkpoint (``model=<dir>,
sft_steps=0``) and trains with `turngym.trainers.grpo.train` or, for critic methods, `turngym.trainers.ppo.train`.
All runs share the rollout budget (``steps`` x ``tasks_per_step`` x ``group_size`` sampled trajectories), the
learning rate, minibatch size and the held-out evaluation (``eval_tasks`` fixed seeds, greedy, every
``eval_every`` steps). From each method's preset (``turngym/configs/<preset>.yaml``) only the keys that define the
algorithm are taken (`PRESET_KEYS`: trainer, credit, sampler, ratio level, clip range, critic, γ/λ); the KL
penalty is off for every method (no reference model), so the comparison isolates the credit assignment.

Reported per (env, method): held-out success vs env steps (mean over seeds with a ±1 std band), the env steps
to reach the success threshold (default: the SFT start's held-out success + 0.10), and the final success.
"Env steps" counts ``env.step`` calls of the training rollouts (turns), so methods that spend their budget
differently (SLATE samples k candidates at each step of one path) are compared on what they consumed.

Two recipes. ``recipe="study"`` (modes quick/medium/full): the study's own small budget, greedy evaluation, and
each method's algorithm keys from its preset. ``recipe="main"`` (mode ``powered``): the main job's recipe for every
method (the default preset: warm start of 2000 LM + 100 SFT steps on 1024 expert episodes, entropy penalty,
cosine learning-rate decay, 16 tasks x G=8, 50 steps, evaluation sampled at T=1), where a method changes only
``credit`` (plus ``algo``/critic keys for PPO methods and SLATE's sampler): the clip range is the same for all.
The ``zero`` control (every advantage 0) shows what the recipe's entropy penalty does alone. After training, every
run is evaluated once more on the same held-out tasks at T=1 and greedily, keeping each task's outcome, so the
report gives hierarchical-bootstrap 95% CIs over seeds and tasks and paired differences against GRPO
(`turngym.bench.study_stats`). A run whose ``result.json`` matches its config is not rerun: the grid is
resumable and can be run in parts (``--methods``, ``--seeds-for``), and a moved study folder keeps its runs.
Stopping a grid (Ctrl-C, or SIGTERM to the study) stops its worker processes too (`turngym.bench.workers`);
the runs in progress are lost, the finished ones kept.

Departures worth knowing: GiGPO runs with ``anchor_source="observation"`` (anchor = the text of the previous
observation), because the trainers' rollouts do not record the env's pre-step anchor in ``Turn.info["anchor_obs"]``
(with the default ``anchor_source="info"`` every step group would be a singleton and GiGPO would equal GRPO).

Usage::

    turngym bench study --quick                   # 1 env, 1 seed, 2 steps: minutes
    turngym bench study --mode medium --jobs 2
    turngym bench study --mode full --jobs 2      # 8 methods x 2 envs x 3 seeds (about an hour on 2 idle cores)
    turngym bench study --mode powered --jobs 2   # the main job's recipe, 8 methods x 3-5 seeds (hours)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MODES", "STUDY_METHODS", "StudyConfig", "main", "run", "run_config", "summarize_run"]

#: The methods of the study, in table order.
STUDY_METHODS = ("grpo", "a2tgpo", "matchtir", "siop", "slate", "gigpo", "ppo-bad", "tempo")

#: The methods of the powered study (the issue's list; ``zero`` is the sharpening-only control).
POWERED_METHODS = ("grpo", "zero", "a2tgpo", "igpo", "matchtir", "gigpo", "siop", "tempo")

#: method -> the preset it takes its algorithm keys from.
METHOD_PRESET = {"grpo": "grpo", "a2tgpo": "a2tgpo", "matchtir": "matchtir", "siop": "siop", "slate": "slate",
                 "gigpo": "gigpo", "ppo-bad": "ppo-bad", "tempo": "tempo", "ppo": "ppo", "igpo": "igpo", "zero": "zero"}

#: Preset keys that define an algorithm (everything else — sizes, KL, lr — is the study's, shared by all).
PRESET_KEYS = ("algo", "credit", "sampler", "sampler_options", "signal_overrides", "ratio_level", "eps_low", "eps_high",
               "dual_clip_c", "critic", "gamma", "gae_lambda", "value_coef", "value_clip")

#: Keys a method keeps from its preset under the main job's recipe (no clip range, KL or sizes: the recipe's).
MAIN_RECIPE_KEYS = ("algo", "credit", "sampler", "sampler_options", "signal_overrides", "critic", "gamma", "gae_lambda",
                    "value_coef", "value_clip")

#: Extra per-method overrides of the study (see the module docstring).
STUDY_OVERRIDES: dict[str, dict[str, Any]] = {"gigpo": {"credit_overrides": {"anchor_source": "observation"}}}

#: Env keyword arguments of the study's runs (the main job's HopQA setting: one document per search, 64 worlds; TextWorld:
#: the valid commands listed after every reply, which the tiny policy copies its command from).
ENV_KWARGS: dict[str, dict[str, Any]] = {"search/HopQA-v0": {"topk": 1, "worlds": 64},
                                         "text/TextWorld-v0": {"list_commands": True},
                                         "text/TextWorld-Long-v0": {"list_commands": True}}

#: Per-env TrainConfig overrides of the study's runs and warm start (none for HopQA). A TextWorld episode is
#: ~60 tokens a turn after a ~200-token prompt, so the default trajectory budget (768) would cut 12- and
#: 36-turn episodes short.
ENV_TRAIN: dict[str, dict[str, Any]] = {"text/TextWorld-v0": {"max_traj_tokens": 1280},
                                        "text/TextWorld-Long-v0": {"max_traj_tokens": 3072}}

#: Per-env TrainConfig overrides of the RL runs only (the warm start keeps the env's own settings, so its checkpoint
#: is shared). TextWorld-v0: the warm start wins 0.87 of held-out games at T=1 with the env's 12-turn budget, which
#: leaves RL almost nothing to show; with 6 turns (walkthrough 5 + one spare) it wins 0.46 (5 turns: 0.23, 7: 0.61,
#: 8: 0.71; 100 tasks each, measured before any method was compared).
ENV_RUN: dict[str, dict[str, Any]] = {"text/TextWorld-v0": {"max_turns": 6}}

#: Grid sizes. ``quick`` is what the test suite runs (minutes); ``full`` is sized for ~1 hour on 2 idle cores.
MODES: dict[str, dict[str, Any]] = {
    "quick": {"envs": ("search/HopQA-v0",), "seeds": 1, "steps": 2, "tasks_per_step": 2, "group_size": 4,
              "eval_every": 1, "eval_tasks": 8, "pretrain_steps": 0, "sft_steps": 30, "sft_episodes": 48,
              "max_new_tokens": 40},
    "medium": {"envs": ("search/HopQA-v0",), "seeds": 2, "steps": 4, "tasks_per_step": 4, "group_size": 4,
               "eval_every": 2, "eval_tasks": 16, "pretrain_steps": 100, "sft_steps": 120, "sft_episodes": 192,
               "max_new_tokens": 48},
    "full": {"envs": ("search/HopQA-v0", "tool/Calc-v0"), "seeds": 3, "steps": 8, "tasks_per_step": 4,
             "group_size": 4, "eval_every": 2, "eval_tasks": 32, "sft_steps": 300, "sft_episodes": 512,
             "max_new_tokens": 48},
    # the main job's recipe (turngym/configs/default.yaml) for every method: sizes below are the preset's
    "powered": {"envs": ("search/HopQA-v0",), "methods": POWERED_METHODS, "seeds": 3,
                "seeds_for": {"grpo": 5, "a2tgpo": 5}, "recipe": "main", "steps": 50, "tasks_per_step": 16,
                "group_size": 8, "eval_every": 5, "eval_tasks": 200, "pretrain_steps": 2000, "sft_steps": 100,
                "sft_episodes": 1024, "max_new_tokens": None, "final_eval": True},
}


@dataclass(frozen=True)
class StudyConfig:
    """Settings of `turngym bench study` (defaults = the ``full`` grid)."""

    methods: tuple[str, ...] = STUDY_METHODS
    """Credit methods to train."""
    envs: tuple[str, ...] = ("search/HopQA-v0", "tool/Calc-v0")
    """Env ids."""
    seeds: int = 3
    """Seeds per (env, method): RL seeds first_seed..first_seed+seeds-1 (task order, sampling); the SFT start is
    shared."""
    first_seed: int = 0
    """The first RL seed, e.g. to run a follow-up on seeds 5-9 of a grid whose seeds 0-4 are elsewhere."""
    seeds_for: dict[str, int] = field(default_factory=dict)
    """Per-method seed counts that replace ``seeds`` (e.g. ``{"grpo": 5}``)."""
    recipe: str = "study"
    """"study": the study's budget, greedy eval, preset algorithm keys; "main": the main job's recipe (module doc)."""
    final_eval: bool = False
    """After training, evaluate at T=1 and greedily on the held-out tasks, keeping each task's outcome."""
    steps: int = 8
    """RL steps per run."""
    tasks_per_step: int = 4
    """Tasks per RL step."""
    group_size: int = 4
    """Rollouts per task."""
    lr: float = 2e-4
    """Policy learning rate (all methods)."""
    eval_every: int = 2
    """Held-out evaluation every N steps (plus before and after)."""
    eval_tasks: int = 32
    """Held-out tasks per evaluation (greedy)."""
    pretrain_steps: int = 400
    """Language-model pretraining steps before SFT (once per env; the main job's warm start)."""
    sft_steps: int = 300
    """SFT warm-start steps (once per env)."""
    sft_episodes: int = 512
    """Expert episodes for SFT."""
    max_new_tokens: int | None = 48
    """Token budget per turn (none: the recipe's)."""
    model_size: str = "1m"
    """Tiny model size."""
    threshold: float | None = None
    """Held-out success that counts as reached; none = SFT success + threshold_margin."""
    threshold_margin: float = 0.10
    """Margin over the SFT start's success when ``threshold`` is none."""
    jobs: int = 1
    """Runs in parallel (processes, one torch thread each)."""
    torch_threads: int = 1
    """Torch CPU threads per run."""
    out_dir: str = "bench_out/study"
    """Output directory (runs/, sft/, study.md, study_<env>.png, study.json)."""
    sft_root: str | None = None
    """Directory of the SFT checkpoints, one per env (reused when their settings match); none = ``out_dir/sft``."""
    keep_checkpoints: bool = False
    """Keep each run's checkpoints (off: deleted after the run; metrics stay)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further TrainConfig overrides for the warm start and every run (``--set``). ``model`` sets the warm start's
    base model (a run always starts from the warm start), e.g. a saved checkpoint of another env's warm start
    fine-tuned by SFT alone with ``pretrain_steps=0``."""
    sft_only: bool = False
    """Build (or reuse) the per-env warm starts, then stop without training any run."""


# ----------------------------------------------------------------------------------------------- configs


def slug(env_id: str) -> str:
    return env_id.replace("/", "_")


def seeds_of(cfg: StudyConfig, method: str) -> int:
    return int(cfg.seeds_for.get(method, cfg.seeds))


def env_settings(cfg: StudyConfig, env_id: str) -> dict[str, Any]:
    """The env's study settings (`ENV_KWARGS`, `ENV_TRAIN`), then ``cfg.extra`` (later wins; a dotted
    ``env_kwargs.key`` override from ``--set`` sets one entry and keeps the env's others)."""
    from turngym.config import merge

    return merge({"env_kwargs": dict(ENV_KWARGS.get(env_id, {}))}, ENV_TRAIN.get(env_id, {}), cfg.extra)


def base_config(cfg: StudyConfig, env_id: str):
    """The TrainConfig shared by the SFT warm start and every run on ``env_id``."""
    from turngym.config import from_dict
    from turngym.trainers.config import TrainConfig, load_preset

    if cfg.recipe == "main":
        preset = {k: v for k, v in load_preset("default").items() if k not in ("env_id", "env_kwargs")}
        sizes = {"max_new_tokens": cfg.max_new_tokens} if cfg.max_new_tokens else {}
        study = from_dict(TrainConfig, preset, source="default").replace(
            env_id=env_id, model_size=cfg.model_size, seed=0,
            pretrain_steps=cfg.pretrain_steps, sft_steps=cfg.sft_steps, sft_episodes=cfg.sft_episodes,
            tasks_per_step=cfg.tasks_per_step, group_size=cfg.group_size, lr=cfg.lr, eval_every=cfg.eval_every,
            eval_tasks=cfg.eval_tasks, kl_coef=0.0, torch_threads=cfg.torch_threads, tensorboard=False,
            progress=False, report=False, checkpoint_every=10, keep_checkpoints=6, save_trajectories=1,
            steps=cfg.steps, **sizes)
    elif cfg.recipe == "study":
        batch = cfg.tasks_per_step * cfg.group_size
        study = TrainConfig(
            env_id=env_id, model_size=cfg.model_size, seed=0,
            pretrain_steps=cfg.pretrain_steps, sft_steps=cfg.sft_steps, sft_episodes=cfg.sft_episodes,
            max_new_tokens=cfg.max_new_tokens, tasks_per_step=cfg.tasks_per_step, group_size=cfg.group_size,
            minibatch_size=math.gcd(batch, 16), lr=cfg.lr, eval_every=cfg.eval_every, eval_tasks=cfg.eval_tasks,
            kl_coef=0.0, torch_threads=cfg.torch_threads, tensorboard=False, progress=False, report=False,
            checkpoint_every=max(1, cfg.steps), keep_checkpoints=1, save_trajectories=1, steps=cfg.steps)
    else:
        raise ValueError(f"recipe must be 'study' or 'main', got {cfg.recipe!r}")
    return study.replace(**env_settings(cfg, env_id))  # the env's settings and --set's may override the study's


def method_overrides(method: str, recipe: str = "study") -> dict[str, Any]:
    """Algorithm keys of ``method`` from its preset, plus the study's own overrides."""
    from turngym.trainers.config import load_preset

    preset = load_preset(METHOD_PRESET.get(method, method))
    keys = MAIN_RECIPE_KEYS if recipe == "main" else PRESET_KEYS
    out = {k: v for k, v in preset.items() if k in keys}
    out["credit"] = method
    out.update(STUDY_OVERRIDES.get(method, {}))
    return out


def run_config(cfg: StudyConfig, env_id: str, method: str, seed: int, sft_dir: str | Path):
    """The TrainConfig of one run: shared base + the method's algorithm keys, starting from ``sft_dir``."""
    run_dir = Path(cfg.out_dir) / "runs" / slug(env_id) / method / f"seed{seed}"
    return base_config(cfg, env_id).replace(model=str(sft_dir), sft_steps=0, seed=seed, run_dir=str(run_dir),
                                            **ENV_RUN.get(env_id, {}), **method_overrides(method, cfg.recipe))


# ----------------------------------------------------------------------------------------------- runs


def _train(tcfg) -> dict[str, Any]:
    import importlib
    import shutil

    import torch

    from turngym.trainers import TRAINERS  # algo -> "module:function" (grpo.train, ppo.train)

    torch.set_num_threads(tcfg.torch_threads or 1)
    if tcfg.run_dir and Path(tcfg.run_dir).exists():
        shutil.rmtree(tcfg.run_dir)  # a study run always starts fresh
    module, _, attr = TRAINERS[tcfg.algo].partition(":")
    return getattr(importlib.import_module(module), attr)(tcfg)


def run_key(tcfg) -> dict[str, Any]:
    """What identifies a finished run: its whole TrainConfig (a change in any setting reruns it)."""
    return json.loads(json.dumps(dataclasses.asdict(tcfg), sort_keys=True, default=str))


def portable_key(key: dict[str, Any]) -> dict[str, Any]:
    """``key`` without where the study lives, so a moved or copied study folder keeps its finished runs.

    The run directory is dropped, and a warm start inside the study folder (``<out>/sft/...``) is named relative to
    it. A warm start elsewhere keeps its path: a different checkpoint is a different run.
    """
    key = dict(key)
    run_dir = key.pop("run_dir", None)
    if run_dir and key.get("model"):
        study = Path(run_dir).parents[3]  # <out>/runs/<env>/<method>/seed<N>
        with contextlib.suppress(ValueError):
            key["model"] = Path(key["model"]).relative_to(study).as_posix()
    return key


def finished_result(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The saved ``result.json`` of a finished run whose config and final-eval setting match ``spec``, else None."""
    tcfg = spec["config"]
    try:
        res = json.loads((Path(tcfg.run_dir) / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    saved = res.get("key")
    ok = res.get("status") == "ok" and isinstance(saved, dict) and portable_key(saved) == portable_key(run_key(tcfg))
    if not ok or (spec.get("final_eval") and not res.get("final_eval")):
        return None
    return res | {"run_dir": tcfg.run_dir}  # where it is now, if the folder moved


def final_evaluation(tcfg) -> dict[str, list[int]]:
    """Per-task held-out outcomes of the trained run at T=1 (the trainer's sampler seed) and greedy."""
    from turngym.evaluate import load_trained
    from turngym.trainers import policy_setup, sampling

    s = policy_setup.setup(tcfg)
    model, _ = load_trained(tcfg.run_dir)
    s.model.load_state_dict(model.state_dict())
    out = {}
    for name, temp in (("t1", 1.0), ("greedy", 0.0)):
        _, trajs = sampling.evaluate(tcfg.replace(eval_temperature=temp), s)
        out[name] = [int(sampling.succeeded(t)) for t in trajs]
    return out


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (env, method, seed) run; never raises (a failure becomes ``status``). Picklable for workers.

    A finished run (its ``result.json`` matches the config) is returned as saved, without training again.
    """
    import shutil

    done = finished_result(spec)
    if done is not None:
        return done | {"reused": True}
    t0, c0 = time.perf_counter(), time.process_time()
    tcfg = spec["config"]
    res: dict[str, Any] = {k: spec[k] for k in ("env", "method", "seed")} | {"run_dir": tcfg.run_dir}
    try:
        _train(tcfg)
        if spec.get("final_eval"):
            res["final_eval"] = final_evaluation(tcfg)
        res["status"] = "ok"
    except Exception as err:  # noqa: BLE001 -- a failed run is a result of the study, not a crash of it
        res["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        res["traceback"] = traceback.format_exc(limit=6)
    res["seconds"] = time.perf_counter() - t0
    res["cpu_s"] = time.process_time() - c0  # CPU seconds of this run (wall time depends on the machine's load)
    if res["status"] == "ok":
        res |= summarize_run(tcfg.run_dir)
        if not spec.get("keep_checkpoints"):
            shutil.rmtree(Path(tcfg.run_dir) / "checkpoints", ignore_errors=True)
        res["key"] = run_key(tcfg)
        tmp = Path(tcfg.run_dir) / "result.json.tmp"
        tmp.write_text(json.dumps(res, default=str), encoding="utf-8")
        tmp.replace(Path(tcfg.run_dir) / "result.json")
    return res


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """Held-out success curve of a run vs cumulative training env steps.

    Returns ``{"curve": [[step, env_steps, success], ...], "env_steps": total, "trajectories": total}``.
    """
    from turngym.trainers.runlog import read_metrics

    train = sorted(read_metrics(run_dir, kind="train"), key=lambda d: d["step"])
    evals = sorted(read_metrics(run_dir, kind="eval"), key=lambda d: d["step"])
    cum, steps_at = 0.0, {0: 0.0}
    n_traj = 0.0
    for d in train:
        n = float(d.get("rollout/trajectories", 0.0))
        cum += float(d.get("rollout/turns", 0.0)) * n
        n_traj += n
        steps_at[int(d["step"])] = cum
    curve = []
    for d in evals:
        s = int(d["step"])
        if "eval/success" in d:
            curve.append([s, steps_at.get(s, cum), float(d["eval/success"])])
    return {"curve": curve, "env_steps": cum, "trajectories": n_traj}


def run_specs(cfg: StudyConfig, warm_starts: dict[str, Path]) -> list[dict[str, Any]]:
    """One spec per (env, method, seed) run, each starting from its env's warm start in ``warm_starts``.

    Seed-major order: every method's first seed comes first, so a grid stopped part-way compares all methods.
    """
    specs = []
    for env_id, path in warm_starts.items():
        for i in range(max(seeds_of(cfg, m) for m in cfg.methods)):
            seed = cfg.first_seed + i
            for method in cfg.methods:
                if i < seeds_of(cfg, method):
                    keep = cfg.keep_checkpoints or (cfg.recipe == "main" and i == 0)  # mid/late-RL policies
                    specs.append({"env": env_id, "method": method, "seed": seed, "keep_checkpoints": keep,
                                  "final_eval": cfg.final_eval, "config": run_config(cfg, env_id, method, seed, path)})
    return specs


def run(cfg: StudyConfig, log=print) -> dict[str, Any]:
    """The whole study; writes ``study.md``, ``study_<env>.png`` per env and ``study.json`` into ``cfg.out_dir``."""
    import torch

    from turngym.bench.credit_accuracy import jsonable, machine
    from turngym.bench.sft import sft_checkpoint
    from turngym.bench.workers import worker_pool
    from turngym.credit import CREDIT

    for m in cfg.methods:
        CREDIT[m]  # unknown name -> RegistryError before any work
    torch.set_num_threads(cfg.torch_threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    root = Path(cfg.sft_root) if cfg.sft_root else out / "sft"
    sft_jobs = [(base_config(cfg, env_id), root / slug(env_id)) for env_id in cfg.envs]
    log(f"SFT warm starts (trained once per env, reused when their settings match): {[str(p) for _, p in sft_jobs]}")
    if cfg.jobs > 1 and len(sft_jobs) > 1:
        with worker_pool(min(cfg.jobs, len(sft_jobs))) as pool:
            sft_done = list(pool.map(sft_checkpoint, *zip(*sft_jobs)))
    else:
        sft_done = [sft_checkpoint(t, p, log=log) for t, p in sft_jobs]
    sft: dict[str, Any] = {}
    for env_id, (path, info) in zip(cfg.envs, sft_done):
        sft[env_id] = {"dir": str(path), "seconds": info.get("seconds"), "cpu_s": info.get("cpu_s"),
                       "reused": info.get("reused"), "metrics": info.get("metrics", {})}
    if cfg.sft_only:
        return {"config": dataclasses.asdict(cfg), "sft": sft, "runs": [], "paths": {}}
    specs = run_specs(cfg, {env_id: path for env_id, (path, _) in zip(cfg.envs, sft_done)})
    log(f"study: {len(specs)} runs ({len(cfg.envs)} envs x {len(cfg.methods)} methods x {cfg.seeds} seeds"
        f"{', ' + str(cfg.seeds_for) if cfg.seeds_for else ''}), {cfg.jobs} job(s)")
    results = []
    if cfg.jobs <= 1:
        for i, spec in enumerate(specs):
            results.append(run_one(spec))
            _log_result(log, i + 1, len(specs), results[-1])
    else:
        from concurrent.futures import as_completed

        with worker_pool(cfg.jobs) as pool:
            futs = [pool.submit(run_one, spec) for spec in specs]
            for i, f in enumerate(as_completed(futs)):
                results.append(f.result())
                _log_result(log, i + 1, len(specs), results[-1])
    order = {(s["env"], s["method"], s["seed"]): i for i, s in enumerate(specs)}
    results.sort(key=lambda r: order[(r["env"], r["method"], r["seed"])])
    summary = {"config": dataclasses.asdict(cfg), "sft": sft, "runs": results, "machine": machine(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": time.perf_counter() - t_start}
    summary["table"] = aggregate(cfg, results)
    summary["final"] = final_table(cfg, results)
    paths = {"table": out / "study.md", "json": out / "study.json"}
    for env_id in cfg.envs:
        paths[f"chart:{env_id}"] = out / f"study_{slug(env_id)}.png"
        plot_env(summary, env_id, paths[f"chart:{env_id}"])
    paths["table"].write_text(markdown(summary), encoding="utf-8")
    summary["paths"] = {k: str(p) for k, p in paths.items()}
    paths["json"].write_text(json.dumps(jsonable(summary), indent=1, default=str, allow_nan=False), encoding="utf-8")
    return summary


def _log_result(log, i: int, n: int, r: dict[str, Any]) -> None:
    final = r["curve"][-1][2] if r.get("curve") else math.nan
    log(f"[{i}/{n}] {r['env']} {r['method']} seed {r['seed']}: {r['status']} in {r['seconds']:.0f}s, "
        f"final success {final:.3f}{' (saved result, not rerun)' if r.get('reused') else ''}")


# ----------------------------------------------------------------------------------------------- aggregation


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def aggregate(cfg: StudyConfig, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (env, method): start / final success, env steps to threshold, steps consumed, wall time."""
    rows = []
    for env_id in cfg.envs:
        env_runs = [r for r in results if r["env"] == env_id and r["status"] == "ok" and r.get("curve")]
        starts = [r["curve"][0][2] for r in env_runs if r["curve"][0][0] == 0]
        start = _mean_std(starts)[0]
        thr = cfg.threshold if cfg.threshold is not None else (
            min(1.0, start + cfg.threshold_margin) if math.isfinite(start) else math.nan)
        for method in cfg.methods:
            runs = [r for r in results if r["env"] == env_id and r["method"] == method]
            ok = [r for r in runs if r["status"] == "ok" and r.get("curve")]
            reached = []
            for r in ok:
                hit = next((es for s, es, succ in r["curve"] if s > 0 and succ >= thr), None)
                if hit is not None:
                    reached.append(hit)
            fm, fs = _mean_std([r["curve"][-1][2] for r in ok])
            reached.sort()
            rows.append({
                "env": env_id, "method": method, "runs": len(runs), "ok": len(ok), "start": start, "threshold": thr,
                "final_mean": fm, "final_std": fs, "reached": len(reached),
                "steps_to_threshold": reached[len(reached) // 2] if reached else None,
                "env_steps": _mean_std([r["env_steps"] for r in ok])[0],
                "seconds": _mean_std([r["seconds"] for r in runs])[0],
                "cpu_s": _mean_std([r.get("cpu_s", math.nan) for r in runs])[0],
                "failures": sorted({r["status"] for r in runs if r["status"] != "ok"}),
            })
    return rows


def final_table(cfg: StudyConfig, results: list[dict[str, Any]], reference: str = "grpo") -> list[dict[str, Any]]:
    """Per (env, method): final success at T=1 and greedy with bootstrap CIs, paired differences against
    ``reference``, and the steps its mean curve needs to reach the reference's final success
    (`turngym.bench.study_stats`). Empty without final evaluations."""
    from turngym.bench.study_stats import bootstrap_table, mean_curve, steps_to_reach

    rows: list[dict[str, Any]] = []
    for env_id in cfg.envs:
        ok = [r for r in results if r["env"] == env_id and r["status"] == "ok" and r.get("final_eval")]
        if not ok:
            continue
        stats = {mode: bootstrap_table({m: [r["final_eval"][mode] for r in ok if r["method"] == m]
                                        for m in cfg.methods}, reference)
                 for mode in ("t1", "greedy")}
        curves = {m: mean_curve([r["curve"] for r in ok if r["method"] == m and r.get("curve")]) for m in cfg.methods}
        ref_final = stats["t1"].get(reference, {}).get("mean", math.nan)
        ref_steps = steps_to_reach(curves.get(reference, []), ref_final)
        for m in cfg.methods:
            if m not in stats["t1"]:
                continue
            st = steps_to_reach(curves[m], ref_final)
            rows.append({"env": env_id, "method": m, "t1": stats["t1"][m], "greedy": stats["greedy"].get(m, {}),
                         "steps_to_ref_final": st, "ref_steps": ref_steps,
                         "steps_ratio": st / ref_steps if st is not None and ref_steps else None})
    return rows


def _ci(d: dict[str, Any], key: str = "mean", lo: str = "lo", hi: str = "hi", sign: bool = False) -> str:
    if key not in d:
        return "n/a"
    fmt = "+.3f" if sign else ".3f"
    return f"{d[key]:{fmt}} [{d[lo]:{fmt}}, {d[hi]:{fmt}}]"


def final_markdown(rows: list[dict[str, Any]], env_id: str, reference: str = "grpo") -> list[str]:
    rows = [r for r in rows if r["env"] == env_id]
    if not rows:
        return []
    out = [(f"Final held-out success (per-task outcomes of every run; mean [95% CI], hierarchical bootstrap over seeds "
            f"and tasks; Δ = paired difference against {reference}):"), "",
           "| method | seeds | T=1 | Δ T=1 vs " + reference + " | greedy | Δ greedy | steps to " + reference
           + "'s final T=1 (x " + reference + ") |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        t1, gr = r["t1"], r["greedy"]
        st = "not reached" if r["steps_to_ref_final"] is None else (
            f"{r['steps_to_ref_final']}" + (f" ({r['steps_ratio']:.2f}x)" if r["steps_ratio"] is not None else ""))
        out.append(f"| {r['method']} | {t1['n']} | {_ci(t1)} | {_ci(t1, 'diff', 'diff_lo', 'diff_hi', True)} | "
                   f"{_ci(gr)} | {_ci(gr, 'diff', 'diff_lo', 'diff_hi', True)} | {st} |")
    return out + [""]


def _f(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def markdown(summary: dict[str, Any]) -> str:
    """The study's markdown report (one table per env)."""
    c = summary["config"]
    recipe = ("the main job's recipe (default preset: entropy penalty, cosine lr; eval sampled at T=1)"
              if c.get("recipe") == "main" else "eval greedy")
    out = [(f"Study: {len(c['methods'])} methods x {c['seeds']} seed(s){' ' + str(c['seeds_for']) if c.get('seeds_for') else ''}; "
           f"{c['steps']} RL steps of {c['tasks_per_step']} tasks x G={c['group_size']}; eval on {c['eval_tasks']} "
           f"held-out tasks every {c['eval_every']} steps; {recipe}; lr {c['lr']}; tiny {c['model_size']} policy, "
           f"LM pretraining {c['pretrain_steps']} + SFT {c['sft_steps']} steps on {c['sft_episodes']} expert episodes "
           "(shared start per env)"
           + (f"; RL seeds from {c['first_seed']}" if c.get("first_seed") else "")
           + ("; settings over the recipe: " + ", ".join(f"{k}={v}" for k, v in sorted(c["extra"].items()))
              if c.get("extra") else "") + "."), ""]
    for env_id in c["envs"]:
        rows = [r for r in summary["table"] if r["env"] == env_id]
        thr = rows[0]["threshold"] if rows else math.nan
        out += [f"### {env_id}", "",
                (f"SFT start: held-out success {_f(rows[0]['start'] if rows else math.nan)}; threshold "
                f"{_f(thr, '.2f')}."), "",
                ("| method | final success (mean ± std) | env steps to threshold (median) | reached | "
                "env steps used | s / run (CPU s) | notes |"),
                "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in rows:
            note = "; ".join(r["failures"])[:160]
            out.append(f"| {r['method']} | {_f(r['final_mean'])} ± {_f(r['final_std'])} | "
                       f"{_f(r['steps_to_threshold'], '.0f') if r['reached'] else 'not reached'} | "
                       f"{r['reached']}/{r['ok']} | {_f(r['env_steps'], '.0f')} | {_f(r['seconds'], '.0f')} ({_f(r['cpu_s'], '.0f')}) | {note} |")
        out.append("")
        out += final_markdown(summary.get("final", []), env_id)
    out.append(f"Machine: {summary['machine']}. Date: {summary['date']}. Wall time {summary['seconds']:.0f} s.")
    return "\n".join(out) + "\n"


def plot_env(summary: dict[str, Any], env_id: str, path: Path) -> None:
    """Held-out success vs training env steps per method: mean over seeds with a ±1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    methods = summary["config"]["methods"]
    cmap = plt.get_cmap("tab10")
    for i, method in enumerate(methods):
        runs = [r for r in summary["runs"] if r["env"] == env_id and r["method"] == method
                and r["status"] == "ok" and r.get("curve")]
        if not runs:
            continue
        n = min(len(r["curve"]) for r in runs)
        xs = [sum(r["curve"][j][1] for r in runs) / len(runs) for j in range(n)]
        stats = [_mean_std([r["curve"][j][2] for r in runs]) for j in range(n)]
        ys = [m for m, _ in stats]
        sd = [s for _, s in stats]
        ax.plot(xs, ys, marker="o", ms=3, color=cmap(i % 10), label=f"{method} ({len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)],
                            color=cmap(i % 10), alpha=0.15)
    thr = next((r["threshold"] for r in summary["table"] if r["env"] == env_id), math.nan)
    if isinstance(thr, float) and math.isfinite(thr):
        ax.axhline(thr, color="black", ls=":", lw=1, label=f"threshold {thr:.2f}")
    c = summary["config"]
    ax.set_xlabel("training env steps (turns sampled)")
    ax.set_ylabel("held-out success (" + ("T=1" if c.get("recipe") == "main" else "greedy") + ")")
    ax.set_title(f"{env_id}: mean ± std over seeds, {c['steps']} steps x {c['tasks_per_step']} tasks x "
                 f"G={c['group_size']}", fontsize=10)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turngym bench study", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=sorted(MODES), default="full", help="grid size (default full)")
    p.add_argument("--quick", action="store_true", help="same as --mode quick")
    p.add_argument("--out", default=StudyConfig.out_dir, help="output directory")
    p.add_argument("--methods", default="", help=f"comma-separated (default: {','.join(STUDY_METHODS)})")
    p.add_argument("--envs", default="", help="comma-separated env ids (default: the mode's)")
    p.add_argument("--seeds", type=int)
    p.add_argument("--first-seed", type=int, help="first RL seed (default 0): seeds FIRST..FIRST+SEEDS-1")
    p.add_argument("--seeds-for", default="", help="per-method seed counts, e.g. grpo=5,a2tgpo=5")
    p.add_argument("--steps", type=int)
    p.add_argument("--tasks-per-step", type=int)
    p.add_argument("--group-size", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--eval-tasks", type=int)
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--sft-steps", type=int)
    p.add_argument("--sft-episodes", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--threshold", type=float, help="absolute success threshold (default: SFT success + 0.10)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    p.add_argument("--sft-root", help="directory of the per-env SFT checkpoints to reuse / create (default OUT/sft)")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field of the warm start and every run, e.g. env_kwargs.max_turns=24; "
                        "model=DIR builds the warm start on DIR (with --pretrain-steps 0: SFT only)")
    p.add_argument("--sft-only", action="store_true", help="build (or reuse) the warm starts and stop")
    return p


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    kw: dict[str, Any] = dict(MODES["quick" if args.quick else args.mode])
    for name in ("seeds", "first_seed", "steps", "tasks_per_step", "group_size", "eval_every", "eval_tasks", "pretrain_steps",
                 "sft_steps", "sft_episodes", "max_new_tokens", "lr", "threshold"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.seeds_for:
        try:
            kw["seeds_for"] = {m.strip(): int(n) for m, n in (x.split("=") for x in args.seeds_for.split(",") if x)}
        except ValueError:
            raise SystemExit(f"--seeds-for {args.seeds_for!r}: expected method=N[,method=N...]") from None
    if args.methods:
        kw["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.envs:
        kw["envs"] = tuple(e.strip() for e in args.envs.split(",") if e.strip())
    if args.set:
        from turngym.config import parse_overrides
        from turngym.trainers.config import TrainConfig

        kw["extra"] = parse_overrides(TrainConfig, args.set)
    return StudyConfig(out_dir=args.out, jobs=args.jobs, keep_checkpoints=args.keep_checkpoints,
                       sft_root=args.sft_root, sft_only=args.sft_only, **kw)


def main(argv: list[str] | None = None) -> int:
    """``turngym bench study [--quick | --mode M] [...]``; prints the markdown report."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    summary = run(config_from_args(args), log=lambda m: print(m, file=sys.stderr, flush=True))
    if not summary["paths"]:  # --sft-only
        for env_id, w in summary["sft"].items():
            how = "reused" if w["reused"] else f"trained in {w['seconds']:.0f}s"
            print(f"{env_id}: warm start {w['dir']} ({how}; SFT loss {w['metrics'].get('sft/loss', math.nan):.3f})")
        return 0
    print(Path(summary["paths"]["table"]).read_text(encoding="utf-8"))
    print("wrote " + ", ".join(summary["paths"].values()))
    return 0 if any(r["status"] == "ok" for r in summary["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
