"""`turngym bench credit-accuracy`: where does each credit method put the credit?

One batch of HopQA rollouts from the tiny SFT policy (``tasks`` task seeds x ``group_size`` samples each) goes
through EVERY method of `turngym.credit.CREDIT`, and each method's advantages are compared with the env's
ground truth (its world model: the fraction of the gold plan completed).

Definitions (per sampled trajectory, turns ``k = 0..T-1``):

* **Ground-truth turn value** ``V_k = V(s_{k+1})``: the env's ``info["value"]`` after turn ``k`` (fraction of the
  hops resolved, in order), except on the **answer turn**, where the episode ends and ``V_k`` is the outcome
  (``V(terminal) = outcome``). Trajectories that stop without answering (turn or token limit) keep the env values.
* **Ground-truth turn credit** ``ΔV_k = V_k − V(s_k)``: what turn ``k`` changed (the env's ``info["value_delta"]``;
  on the answer turn ``outcome − V(s_k)``). It sums to the outcome along an answered trajectory.
* **Decisive turn**: a turn whose observation resolved a new hop (``info["value_delta"] > 0``), or the answer turn
  (the turn whose action gave the final answer; a wrong answer decides the outcome too). This is the sampled
  trajectory's version of the task's ``meta["decisive_turns"]`` (the gold turns that resolve a hop, plus the answer).
* **Per-turn advantage** ``Ā_k``: the mean token advantage over the policy tokens of turn ``k`` (for turn-level
  methods exactly the turn's advantage; for token-level methods — GAE, PPO-BAD, TEMPO, DelTA — their mean).

Reported per method:

* ``decisive mass share`` = Σ|A_t| over policy tokens of decisive turns / Σ|A_t| over all policy tokens; the
  ``uniform`` reference is the fraction of policy tokens that sit in decisive turns (the share of any method that
  spreads |A| evenly over tokens), and ``lift`` = share / uniform.
* ``ρ(Ā, ΔV)`` and ``ρ(Ā, V)``: Spearman rank correlations (scipy) between ``Ā_k`` and ``ΔV_k`` / ``V_k``, pooled over
  every turn of the batch (NaN when either side is constant).

Signals come from the providers of `turngym.trainers.common.signal_providers` (gold-answer probe, tool matching,
answer clusters + support, rule step judge) run once with the behaviour policy. Methods that need critic values
(``gae``, ``ppo-bad``) get a Monte-Carlo **group turn-depth value**: every policy token of turn ``k`` of a row gets
the mean outcome of the rows of its group that reach turn ``k`` (no critic is trained). DelTA gets the policy's
last hidden states from one forward pass. GiGPO's anchor state before turn ``k`` is the env's progress anchor
(``info["anchor"]`` of turn ``k−1``; ``progress=0/h`` for turn 0), written to ``Turn.info["anchor_obs"]``. Methods
whose signals cannot be produced for this env are reported as n/a with the reason.

Usage::

    turngym bench credit-accuracy --quick --out bench_out/credit-accuracy
    turngym bench credit-accuracy --tasks 16 --group-size 8 --sft-steps 300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from turngym.errors import ConfigError, CreditError, SignalError
from turngym.types import Trajectory

__all__ = [
    "CreditAccuracyConfig",
    "MethodResult",
    "decisive_mass_share",
    "fill_signals",
    "main",
    "mc_turn_values",
    "per_turn_advantages",
    "rollout_batch",
    "run",
    "score_batch",
    "spearman",
    "turn_ground_truth",
]

#: Config overrides per method: the presets' PPO settings (turngym/configs/ppo*.yaml) for the GAE family.
METHOD_OVERRIDES: dict[str, dict[str, Any]] = {"gae": {"lam": 1.0}, "ppo-bad": {"lam": 0.95}}

#: Why a method cannot run on HopQA rollouts (shown instead of the raw error when the method fails).
NA_REASONS: dict[str, str] = {
    "pure": "needs per-turn process-reward-model scores (PRMProvider); no PRM ships for HopQA",
    "team-difference": "multi-agent team credit: needs counterfactual team outcomes (cf_outcome) from a "
    "multi-agent env",
}

#: Notes shown next to a method's numbers.
NOTES: dict[str, str] = {
    "gae": "critic values: MC group turn-depth value",
    "ppo-bad": "critic values: MC group turn-depth value; λ 0.95",
    "slate": "full-episode groups: judged turn = last turn, broadcast over the row",
    "gigpo": "anchors: env progress state before the turn",
    "delta": "DelTA over GRPO; hidden states from one forward pass",
    "tempo": "token-level; group rollouts (not a tree)",
}


@dataclass(frozen=True)
class CreditAccuracyConfig:
    """Settings of `turngym bench credit-accuracy`."""

    env_id: str = "search/HopQA-v0"
    """Env with a ground-truth progress model (``info["value"]``)."""
    tasks: int = 16
    """Task seeds in the batch."""
    group_size: int = 8
    """Rollouts per task (G)."""
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"topk": 1})
    """Env keyword arguments (the main job's: one document per search)."""
    pretrain_steps: int = 400
    """Language-model pretraining steps of the tiny policy before SFT (the main job's warm start)."""
    sft_steps: int = 100
    """SFT warm-start steps of the tiny policy."""
    sft_episodes: int = 1024
    """Expert episodes for pretraining and SFT."""
    model_size: str = "1m"
    """Tiny model size."""
    max_new_tokens: int = 64
    """Token budget per turn."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    seed: int = 0
    """Seed of the SFT run, the task seeds and the sampler."""
    methods: tuple[str, ...] = ()
    """Credit methods to compare; empty = every method in CREDIT."""
    out_dir: str = "bench_out/credit-accuracy"
    """Where the table, chart and JSON go."""
    sft_dir: str | None = None
    """SFT checkpoint directory (reused when its settings match); none = ``out_dir/sft``."""
    torch_threads: int = 1
    """CPU threads for torch."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further TrainConfig overrides (e.g. ``{"max_traj_tokens": 512}``)."""

    def train_config(self):
        from turngym.trainers.config import TrainConfig

        return TrainConfig(env_id=self.env_id, env_kwargs=dict(self.env_kwargs), model_size=self.model_size,
                           seed=self.seed, pretrain_steps=self.pretrain_steps, sft_steps=self.sft_steps,
                           sft_episodes=self.sft_episodes, max_new_tokens=self.max_new_tokens,
                           temperature=self.temperature, torch_threads=self.torch_threads, tensorboard=False,
                           progress=False, report=False, **self.extra)


QUICK = {"tasks": 4, "group_size": 4, "pretrain_steps": 0, "sft_steps": 30, "sft_episodes": 48, "max_new_tokens": 40}
"""Sizes of ``--quick`` (about a minute on an idle core)."""


@dataclass
class MethodResult:
    """One row of the table."""

    method: str
    status: str  # "ok" or "n/a"
    decisive_share: float = math.nan
    lift: float = math.nan
    rho_delta: float = math.nan
    rho_value: float = math.nan
    ratio_level: str = ""
    seconds: float = 0.0
    note: str = ""


# ----------------------------------------------------------------------------------------------- ground truth


def turn_ground_truth(trajs: list[Trajectory], k_max: int) -> tuple[Tensor, Tensor, Tensor]:
    """Ground-truth ``(V [B, K], ΔV [B, K], decisive [B, K])`` from the env's per-step info (module docstring).

    ``V``/``ΔV`` are NaN on invalid turns; ``decisive`` is False there.

    Raises:
        ConfigError: a turn has no ``info["value"]`` (the env has no progress model).
    """
    b = len(trajs)
    v = torch.full((b, k_max), math.nan)
    dv = torch.full((b, k_max), math.nan)
    dec = torch.zeros((b, k_max), dtype=torch.bool)
    for i, t in enumerate(trajs):
        n = len(t.turns)
        for k, u in enumerate(t.turns):
            if "value" not in u.info:
                raise ConfigError(
                    f"turn {k} of trajectory {i} ({t.env_id}) has no info['value']: credit accuracy needs an env "
                    "with a ground-truth progress model (e.g. search/HopQA-v0, tool/Calc-v0)."
                )
            after = float(u.info["value"])
            step_delta = float(u.info.get("value_delta", 0.0) or 0.0)
            before = after - step_delta
            answer = k == n - 1 and t.final_answer is not None
            if answer:
                after = float(t.outcome)
            v[i, k] = after
            dv[i, k] = after - before
            dec[i, k] = step_delta > 0 or answer
    return v, dv, dec


def add_progress_anchors(trajs: list[Trajectory], key: str = "anchor_obs") -> None:
    """Write GiGPO's anchor (the env state BEFORE each turn) into ``Turn.info[key]``.

    The env records ``info["anchor"]`` = the progress state AFTER a step; the state before turn ``k`` is the anchor
    of turn ``k−1``, and ``progress=0/h`` before turn 0 (``h`` = number of gold calls).
    """
    for t in trajs:
        h = max(1, len(t.meta.get("gold_calls") or []))
        prev = f"progress=0/{h}"
        for u in t.turns:
            u.info[key] = prev
            prev = u.info.get("anchor", prev)


# ------------------------------------------------------------------------------------------------ metrics


def per_turn_advantages(adv: Tensor, turn_id: Tensor, turn_mask: Tensor) -> Tensor:
    """``Ā [B, K]``: mean of ``adv [B, L]`` over each turn's policy tokens; NaN on invalid / empty turns."""
    b, k_max = turn_mask.shape
    on = turn_id >= 0
    idx = torch.where(on, turn_id, torch.full_like(turn_id, k_max))
    s = torch.zeros(b, k_max + 1, dtype=torch.float64).scatter_add_(1, idx, torch.where(on, adv.double(), 0.0))
    c = torch.zeros(b, k_max + 1, dtype=torch.float64).scatter_add_(1, idx, on.double())
    mean = s[:, :k_max] / c[:, :k_max].clamp(min=1)
    return torch.where(turn_mask & (c[:, :k_max] > 0), mean, torch.full_like(mean, math.nan)).float()


def decisive_mass_share(adv: Tensor, turn_id: Tensor, decisive: Tensor) -> tuple[float, float]:
    """``(share, uniform)``: Σ|A| on decisive-turn tokens / Σ|A| on policy tokens, and the token share of decisive
    turns. ``adv``, ``turn_id``: ``[B, L]``; ``decisive``: ``[B, K]``. ``share`` is NaN when every |A| is 0."""
    on = turn_id >= 0
    dec_tok = on & torch.gather(decisive, 1, turn_id.clamp(min=0))  # [B, L]
    mass = torch.where(on, adv.double().abs(), 0.0)
    total = float(mass.sum())
    n = int(on.sum())
    uniform = float(dec_tok.sum()) / n if n else math.nan
    share = float(mass[dec_tok].sum()) / total if total > 0 else math.nan
    return share, uniform


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation (scipy) over the entries where both are finite; NaN if < 3 or constant."""
    from scipy.stats import spearmanr

    ok = torch.isfinite(x) & torch.isfinite(y)
    xs, ys = x[ok].double().numpy(), y[ok].double().numpy()
    if xs.size < 3 or xs.min() == xs.max() or ys.min() == ys.max():
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(xs, ys).statistic
    return float(rho)


def mc_turn_values(batch) -> Tensor:
    """Monte-Carlo group turn-depth value ``[B, L]``: each policy token of turn ``k`` gets the mean outcome of the
    rows of its group that have a turn ``k``; 0 off the policy tokens (never read there)."""
    b, k_max = batch.turn_mask.shape
    r = torch.nan_to_num(batch.outcome.double(), nan=0.0)[:, None].expand(b, k_max)
    key = (batch.group_index[:, None] * k_max + torch.arange(k_max)[None, :]).reshape(-1)
    m = batch.turn_mask.reshape(-1).double()
    n_key = int(key.max()) + 1
    s = torch.zeros(n_key, dtype=torch.float64).scatter_add_(0, key, r.reshape(-1) * m)
    c = torch.zeros(n_key, dtype=torch.float64).scatter_add_(0, key, m)
    v = (s / c.clamp(min=1))[key].view(b, k_max)
    return batch.broadcast_turns(torch.where(batch.turn_mask, v, 0.0).float())


@torch.no_grad()
def hidden_states(model, batch, chunk_size: int = 16) -> Tensor:
    """``[B, L, H]`` last hidden state at each response position (DelTA's token features)."""
    from turngym.trainers.forward import chunk_logprobs, iter_chunks

    out: Tensor | None = None
    for chunk in iter_chunks(batch, torch.arange(batch.batch_size), chunk_size):
        _, _, h = chunk_logprobs(model, chunk, with_hidden=True)
        if out is None:
            out = torch.zeros(batch.batch_size, batch.length, h.shape[-1])
        out[chunk.rows, : chunk.length] = h.float().cpu()
    assert out is not None
    return out


# ------------------------------------------------------------------------------------------------ pipeline


def rollout_batch(cfg: CreditAccuracyConfig, log=print) -> tuple[list[Trajectory], Any, dict[str, Any]]:
    """SFT checkpoint (trained once), then one batch of group rollouts with all signals filled.

    Returns ``(trajectories, setup, info)``.
    """
    import numpy as np

    from turngym.bench.sft import sft_checkpoint
    from turngym.trainers import common

    tcfg = cfg.train_config()
    sft_dir = Path(cfg.sft_dir) if cfg.sft_dir else Path(cfg.out_dir) / "sft"
    path, sft_info = sft_checkpoint(tcfg, sft_dir, log=log)
    run_cfg = tcfg.replace(model=str(path), sft_steps=0)
    s = common.setup(run_cfg)
    s.model.eval()
    seeds = [int(x) for x in np.random.default_rng([cfg.seed, 1]).integers(0, tcfg.eval_seed, size=cfg.tasks)]
    t0 = time.perf_counter()
    trajs, _ = common.rollout(run_cfg, s, seeds, cfg.group_size, sample_seed=cfg.seed)
    rollout_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    providers = fill_signals(trajs, run_cfg, s)
    info = {"sft": sft_info, "sft_dir": str(path), "seeds": seeds, "rollout_s": rollout_s,
            "signals_s": time.perf_counter() - t0, "providers": providers,
            "success": float(np.mean([common.succeeded(t) for t in trajs]))}
    return trajs, s, info


def fill_signals(trajs: list[Trajectory], run_cfg: Any, s: Any) -> list[str]:
    """Run every provider the trainers use (probe, tool match, SIOP clusters + support, rule judge) with the
    behaviour policy ``s.model``, and write GiGPO's progress anchors. Returns the provider names."""
    from turngym.credit.signals import run_providers
    from turngym.trainers import common

    providers, seen = [], set()
    for m in ("a2tgpo", "matchtir", "siop", "slate"):
        for p in common.signal_providers(run_cfg.replace(credit=m), s):
            if p.name not in seen:
                providers.append(p)
                seen.add(p.name)
    run_providers(trajs, providers)
    add_progress_anchors(trajs)
    return [p.name for p in providers]


def score_batch(trajs: list[Trajectory], model: Any, pad_id: int, methods: list[str]) -> tuple[list[MethodResult],
                                                                                                dict[str, Any]]:
    """Every method on one batch of trajectories (signals already filled), scored against the ground truth.

    Returns ``(rows, batch_stats)``.
    """
    from turngym.credit import GroupBatch
    from turngym.trainers.forward import batch_logprobs

    device = next(model.parameters()).device
    batch = GroupBatch.from_trajectories(trajs, pad_id=pad_id)
    if batch.old_logprobs is None:  # e.g. scripted rollouts: score the sampled tokens with the policy
        batch.old_logprobs = batch_logprobs(model, batch.to(device)).cpu()
    batch.values = mc_turn_values(batch)
    if "delta" in methods:
        batch.token_features["hidden"] = hidden_states(model, batch.to(device))
    v, dv, decisive = turn_ground_truth(trajs, batch.max_turns)
    rows = evaluate_methods(batch, methods, decisive, v, dv)
    _, uniform = decisive_mass_share(torch.ones_like(batch.turn_id, dtype=torch.float32), batch.turn_id, decisive)
    stats = {"trajectories": len(trajs), "turns": int(batch.turn_mask.sum()), "decisive_turns": int(decisive.sum()),
             "decisive_token_share": uniform,
             "answered": sum(t.final_answer is not None for t in trajs) / max(len(trajs), 1)}
    return rows, stats


def evaluate_methods(batch, methods: list[str], decisive: Tensor, v: Tensor, dv: Tensor) -> list[MethodResult]:
    """Run each method on ``batch`` and score it; failures to produce a method's inputs become n/a rows."""
    from turngym.credit import assign_credit

    rows = []
    for name in methods:
        t0 = time.perf_counter()
        try:
            out = assign_credit(name, batch, **METHOD_OVERRIDES.get(name, {}))
        except (CreditError, SignalError) as err:
            reason = NA_REASONS.get(name) or str(err).split(". ")[0]
            if name == "siop" and not bool(batch.has_answer.any()):
                reason = "no trajectory of the batch answered, so SIOP has no answer clusters to score support for"
            rows.append(MethodResult(name, "n/a", note=reason, seconds=time.perf_counter() - t0))
            continue
        adv = out.advantages.float().cpu()
        ta = per_turn_advantages(adv, batch.turn_id, batch.turn_mask)
        share, uniform = decisive_mass_share(adv, batch.turn_id, decisive)
        rows.append(MethodResult(
            name, "ok", decisive_share=share, lift=share / uniform if uniform and uniform > 0 else math.nan,
            rho_delta=spearman(ta, dv), rho_value=spearman(ta, v), ratio_level=out.ratio_level,
            seconds=time.perf_counter() - t0,
            note=NOTES.get(name, "") if math.isfinite(share) else "every advantage is 0 on this batch",
        ))
    return rows


def run(cfg: CreditAccuracyConfig, log=print) -> dict[str, Any]:
    """The whole benchmark; writes ``credit_accuracy.md``, ``credit_accuracy.png`` and ``credit_accuracy.json``."""
    from turngym.credit import CREDIT

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    methods = list(cfg.methods) or list(CREDIT.names())
    for m in methods:
        CREDIT[m]  # unknown name -> RegistryError with did-you-mean, before any work
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    trajs, s, info = rollout_batch(cfg, log=log)
    rows, stats = score_batch(trajs, s.model, s.pad_id, methods)
    summary = {
        "config": dataclasses.asdict(cfg), "rows": [dataclasses.asdict(r) for r in rows],
        "batch": stats | {"tasks": cfg.tasks, "group_size": cfg.group_size, "success": info["success"]},
        "info": {k: v_ for k, v_ in info.items() if k != "sft"} | {"sft_metrics": info["sft"].get("metrics", {})},
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": time.perf_counter() - t_start,
    }
    paths = {"table": out_dir / "credit_accuracy.md", "chart": out_dir / "credit_accuracy.png",
             "json": out_dir / "credit_accuracy.json"}
    paths["table"].write_text(markdown_table(summary), encoding="utf-8")
    plot(summary, paths["chart"])
    summary["paths"] = {k: str(p) for k, p in paths.items()}
    paths["json"].write_text(json.dumps(jsonable(summary), indent=1, default=_json_default, allow_nan=False),
                             encoding="utf-8")
    return summary


def _json_default(o: Any) -> Any:
    return str(o)


def jsonable(o: Any) -> Any:
    """``o`` with non-finite floats replaced by None (strict JSON: no NaN literals)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    return o


def machine() -> str:
    """One line describing the machine (CPU model, cores, torch threads)."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"


def _f(x: float, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def markdown_table(summary: dict[str, Any]) -> str:
    """The markdown report of one credit-accuracy run."""
    b, c = summary["batch"], summary["config"]
    lines = [
        "| method | decisive mass share | lift vs uniform | ρ(Ā, ΔV) | ρ(Ā, V) | ratio | notes |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in summary["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | n/a | n/a | n/a | n/a | | {r['note']} |")
            continue
        lines.append(f"| {r['method']} | {_f(r['decisive_share'])} | {_f(r['lift'], '.2f')} | {_f(r['rho_delta'])} "
                     f"| {_f(r['rho_value'])} | {r['ratio_level']} | {r['note']} |")
    head = (
        f"Batch: {b['trajectories']} trajectories ({b['tasks']} {c['env_id']} tasks x G={b['group_size']}), "
        f"{b['turns']} turns, {b['decisive_turns']} decisive; uniform share (policy tokens in decisive turns) "
        f"= {_f(b['decisive_token_share'])}; batch success {_f(b['success'], '.2f')}, answered "
        f"{_f(b['answered'], '.2f')}. Tiny {c['model_size']} policy after {c.get('pretrain_steps', 0)} LM pretraining "
        f"and {c['sft_steps']} SFT steps on {c['sft_episodes']} expert episodes (seed {c['seed']})."
    )
    return "\n".join([head, "", *lines, "", (f"Machine: {summary['machine']}. Date: {summary['date']}. "
                      f"Wall time {summary['seconds']:.0f} s."), ""])


def plot(summary: dict[str, Any], path: Path) -> None:
    """Bar chart: decisive mass share (with the uniform reference) and ρ(Ā, ΔV) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    names = [r["method"] for r in rows]
    share = [r["decisive_share"] if r["status"] == "ok" else math.nan for r in rows]
    rho = [r["rho_delta"] if r["status"] == "ok" else math.nan for r in rows]
    x = list(range(len(rows)))
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.5 * len(rows) + 2.5), 7.5))
    for ax, vals, title in ((axes[0], share, "share of |advantage| on decisive turns"),
                            (axes[1], rho, "Spearman ρ(turn advantage, ground-truth ΔV)")):
        clean = [0.0 if not (isinstance(v, float) and math.isfinite(v)) else v for v in vals]
        bars = ax.bar(x, clean, color=["#4c72b0" if n not in ("grpo", "dr_grpo", "rloo", "reinforce_pp")
                                       else "#999999" for n in names])
        for xi, v, bar in zip(x, vals, bars):
            if not (isinstance(v, float) and math.isfinite(v)):
                ax.text(xi, 0.01, "n/a", ha="center", va="bottom", fontsize=8, rotation=90)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.axhline(0, color="black", lw=0.5)
    uni = summary["batch"]["decisive_token_share"]
    if isinstance(uni, float) and math.isfinite(uni):
        axes[0].axhline(uni, color="#c44e52", ls="--", lw=1, label=f"uniform ({uni:.2f})")
        axes[0].legend(fontsize=8)
    axes[0].set_ylim(0, 1)
    axes[1].set_ylim(-1, 1)
    b = summary["batch"]
    fig.suptitle(f"Credit accuracy on {summary['config']['env_id']}: {b['trajectories']} trajectories, "
                 f"{b['decisive_turns']}/{b['turns']} decisive turns (grey: outcome-only)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    d = CreditAccuracyConfig()
    p = argparse.ArgumentParser(prog="turngym bench credit-accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"tiny sizes ({QUICK}); explicit flags still win")
    p.add_argument("--out", default=d.out_dir, help="output directory")
    p.add_argument("--env", default=d.env_id, help="env id with a progress model")
    p.add_argument("--tasks", type=int, help=f"task seeds (default {d.tasks})")
    p.add_argument("--group-size", type=int, help=f"rollouts per task (default {d.group_size})")
    p.add_argument("--pretrain-steps", type=int, help=f"LM pretraining steps (default {d.pretrain_steps})")
    p.add_argument("--sft-steps", type=int, help=f"SFT steps (default {d.sft_steps})")
    p.add_argument("--sft-episodes", type=int, help=f"SFT expert episodes (default {d.sft_episodes})")
    p.add_argument("--sft-dir", help="SFT checkpoint directory to reuse / create (default OUT/sft)")
    p.add_argument("--max-new-tokens", type=int, help=f"tokens per turn (default {d.max_new_tokens})")
    p.add_argument("--model-size", default=d.model_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--methods", default="", help="comma-separated methods (default: all of CREDIT)")
    p.add_argument("--threads", type=int, default=d.torch_threads, help="torch CPU threads")
    return p


def config_from_args(args: argparse.Namespace) -> CreditAccuracyConfig:
    kw: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name, attr in (("tasks", "tasks"), ("group_size", "group_size"), ("pretrain_steps", "pretrain_steps"),
                       ("sft_steps", "sft_steps"),
                       ("sft_episodes", "sft_episodes"), ("max_new_tokens", "max_new_tokens")):
        if getattr(args, attr) is not None:
            kw[name] = getattr(args, attr)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return CreditAccuracyConfig(env_id=args.env, out_dir=args.out, sft_dir=args.sft_dir, model_size=args.model_size,
                                seed=args.seed, methods=methods, torch_threads=args.threads, **kw)


def main(argv: list[str] | None = None) -> int:
    """``turngym bench credit-accuracy [--quick] [...]``; prints the markdown table."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    cfg = config_from_args(args)
    summary = run(cfg, log=lambda m: print(m, file=sys.stderr))
    print(Path(summary["paths"]["table"]).read_text(encoding="utf-8"))
    print(f"wrote {summary['paths']['table']}, {summary['paths']['chart']}, {summary['paths']['json']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
