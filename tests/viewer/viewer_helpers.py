"""Real data for the viewer tests: a scripted HopQA rollout with the tiny tokenizer, MatchTIR credit, a run dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENV_ID = "search/HopQA-v0"
METHOD = "matchtir"


def tiny_tokenizer():
    """The tiny default's byte-level BPE tokenizer + chat template, trained on 8 seeds of HopQA text (~1 s)."""
    from turngym.agents.tiny import build_tokenizer, env_texts

    return build_tokenizer(env_texts(ENV_ID, n_seeds=8))


def credited_rollouts(tok, seeds, noise: float, seed: int):
    """Scripted-expert groups on HopQA, MatchTIR signals and credit, annotated for the viewer.

    Returns:
        (trajectories, batch, credit output)
    """
    from turngym.agents.policy import ScriptedPolicy
    from turngym.agents.render import Renderer
    from turngym.agents.rollout import collect_rollouts
    from turngym.credit import GroupBatch, assign_credit
    from turngym.credit.signals import ToolMatchProvider, run_providers
    from turngym.viewer import annotate

    trajs = collect_rollouts(ENV_ID, ScriptedPolicy(tok, noise=noise, seed=seed), Renderer(tok), seeds=seeds,
                             group_size=3)
    run_providers(trajs, [ToolMatchProvider()])
    batch = GroupBatch.from_trajectories(trajs, pad_id=tok.pad_token_id)
    out = assign_credit(METHOD, batch)
    annotate(trajs, batch, out, tok, METHOD)
    return trajs, batch, out


def write_run(run_dir: Path, tok) -> Path:
    """A run directory written by the real `RunLog`: two credited train steps and two evaluations."""
    from turngym.trainers.config import TrainConfig
    from turngym.trainers.runlog import RunLog
    from turngym.trainers.sampling import rollout_metrics

    cfg = TrainConfig(env_id=ENV_ID, credit=METHOD, progress=False, tensorboard=False, save_trajectories=6,
                      run_dir=str(run_dir))
    with RunLog(run_dir, cfg, progress=False) as run:
        run.log(0, {"eval/success": 0.25, "eval/reward": 0.3}, kind="eval")
        for step, (seeds, noise) in enumerate((([0, 1], 0.6), ([2, 3], 0.3)), start=1):
            trajs, _, out = credited_rollouts(tok, seeds, noise, seed=step)
            metrics = rollout_metrics(trajs) | {f"credit/{k}": v for k, v in out.diagnostics.items()}
            metrics["train/loss"] = 0.5 / step
            run.log(step, metrics)
            run.log_trajectories(step, trajs)
        run.log(2, {"eval/success": 0.5, "eval/reward": 0.55}, kind="eval")
    return run_dir


def read_run_trajectories(run_dir: Path) -> list[dict]:
    """The trajectory dicts of trajectories.jsonl, file order (the page keeps this order)."""
    lines = (run_dir / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x)["trajectory"] for x in lines if x.strip()]
