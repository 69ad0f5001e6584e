"""turngym vs TRL's GRPOTrainer: wall time per GRPO step on the same single-turn task, side by side, one run.

The task is a one-turn env defined here, ``bench/Arith-v0`` ("What is 37 - 12?", reward 1 for
``<answer>25</answer>``, scored by the env in both arms). Both arms use:

* the same model: the tiny random-init Llama that turngym builds for this env (``--size``), saved to a local
  directory and loaded from it twice (same weights, float32, CPU, offline), with the same tokenizer and chat
  template (the prompt token ids are checked to be identical);
* the same GRPO step: ``--tasks`` prompts x ``--group`` completions of at most ``--max-new-tokens`` tokens,
  temperature 1, group-normalised advantages (mean and std), token-mean clipped surrogate (eps 0.2 / 0.28),
  no KL and no reference model, one AdamW optimizer step over the whole batch, grad-norm clip 1.0, lr 1e-4,
  one torch thread, metrics logged every step, no gradient checkpointing (TRL's default turns it on:
  ``--trl-gradient-checkpointing`` measures that).

turngym runs the body of `turngym.trainers.grpo.train`'s step (`overhead.GRPOStepper`: rollout engine + env +
credit registry + `update` + run log); TRL runs ``GRPOTrainer.train()`` with ``GRPOConfig(use_cpu=True,
bf16=False, ...)``. The arms are interleaved step by step (a `TrainerCallback` runs one turngym step after each
TRL step and the TRL clock is paused meanwhile), so machine load hits both alike. Per step: wall and CPU time
(CPU time of this process: steadier than wall time on a shared machine); medians after ``--warmup`` steps.

    pip install 'turngym[trl]'   # trl, accelerate, datasets
    python benchmarks/vs_trl.py                                   # 4 prompts x G=8, 64 tokens, 10 steps
    python benchmarks/vs_trl.py --steps 2 --warmup 1 --tasks 2 --group 2 --max-new-tokens 8     # quick

Prints a markdown table with the machine, date and load average; ``--json`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

for _k, _v in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_k, _v)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import GRPOStepper, emit, machine_info, median

from turngym.envs.core import Env, Task

ENV_ID = "bench/Arith-v0"


class ArithEnv(Env):
    """One-turn arithmetic: answer ``a + b`` or ``a - b`` inside ``<answer>...</answer>``; reward 1 if right."""

    default_expert_noise = 0.0
    instructions = "Answer the arithmetic question. Reply with <answer>number</answer> and nothing else."

    def __init__(self, **kwargs: Any):
        super().__init__(tools=None, **kwargs)

    def _sample_task(self, rng, options) -> Task:
        a, b = int(rng.integers(0, 100)), int(rng.integers(0, 100))
        op = "+" if rng.random() < 0.5 else "-"
        return Task(prompt=f"What is {a} {op} {b}?", gold_answer=str(a + b if op == "+" else a - b))

    def _expert_next(self) -> str:
        assert self.task is not None
        return self.task.gold_answer


def register_env() -> None:
    """Register ``bench/Arith-v0`` (one turn) once."""
    from turngym.envs import list_envs, register

    if ENV_ID not in list_envs():
        register(ENV_ID, ArithEnv, max_turns=1)


def require_trl() -> None:
    try:
        import accelerate  # noqa: F401
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError as e:
        from turngym.errors import MissingExtraError

        raise MissingExtraError(e.name or "trl", "trl") from None


# ----------------------------------------------------------------------------------------------- TRL arm


def trl_reward(env):
    """A TRL reward function that scores each completion with the env itself (reset to the row's seed, one step)."""

    def arith_reward(prompts, completions, seed, **_: Any) -> list[float]:
        out = []
        for c, sd in zip(completions, seed):
            text = c[-1]["content"] if isinstance(c, list) else c
            env.reset(seed=int(sd))
            _, r, *_ = env.step(text)
            out.append(float(r))
        return out

    return arith_reward


class Interleave:
    """TRL callback body: times each TRL step (pausing its clock) and runs one turngym step after it."""

    def __init__(self, tg_step, threads: int):
        self.tg_step, self.threads = tg_step, threads
        self.trl: list[dict[str, float]] = []
        self.tg: list[dict[str, float]] = []
        self.load: list[float] = []
        self._w = self._c = 0.0

    def begin(self) -> None:
        self._w, self._c = time.perf_counter(), time.process_time()

    def step_end(self) -> None:
        import torch

        self.trl.append({"step": time.perf_counter() - self._w, "step_cpu": time.process_time() - self._c,
                         "threads": torch.get_num_threads()})
        self.load.append(os.getloadavg()[0])
        torch.set_num_threads(self.threads)
        self.tg.append(self.tg_step())
        self.begin()


def make_trl_callback(inter: Interleave):
    from transformers import TrainerCallback

    class _CB(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            inter.begin()

        def on_step_end(self, args, state, control, **kw):
            inter.step_end()

    return _CB()


def record_trl_profile(store: dict[str, list[float]]) -> None:
    """Collect TRL's own profiling spans (generate, rewards, loss) into ``store`` (they normally go to W&B)."""
    from trl.extras import profiling

    orig = profiling.ProfilingContext._log_metrics

    def log_metrics(self, duration: float) -> None:
        store.setdefault(self.name.split(".", 1)[-1], []).append(duration)  # "GRPOTrainer.compute_loss"
        orig(self, duration)

    profiling.ProfilingContext._log_metrics = log_metrics


# ----------------------------------------------------------------------------------------------- driver


def run(args) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    require_trl()
    register_env()
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from turngym.agents.tiny import load_policy_model
    from turngym.envs import make
    from turngym.trainers import policy_setup
    from turngym.trainers.config import TrainConfig

    info = machine_info(args.threads)
    tmp = tempfile.mkdtemp(prefix="turngym-vs-trl-")
    model_dir = os.path.join(tmp, "model")
    model, tok = load_policy_model("tiny", env_id=ENV_ID, size=args.size, cache_dir=args.cache_dir)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    n_steps = args.warmup + args.steps
    batch = args.tasks * args.group
    lr = 1e-4

    # --- turngym
    cfg = TrainConfig(
        env_id=ENV_ID, model=model_dir, device="cpu", dtype="float32", torch_threads=args.threads, seed=0,
        credit="grpo", group_size=args.group, tasks_per_step=args.tasks, minibatch_size=batch, grad_accum=1,
        ppo_epochs=1, lr=lr, max_grad_norm=1.0, eps_low=0.2, eps_high=0.28, dual_clip_c=None, loss_agg="token-mean",
        kl_coef=0.0, entropy_coef=0.0, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
        max_traj_tokens=max(args.max_new_tokens, 64), max_turns=1, sft_steps=0, eval_tasks=0, steps=n_steps,
        run_dir=os.path.join(tmp, "turngym-run"), progress=False, report=False, tensorboard=args.tensorboard,
    )
    s = policy_setup.setup(cfg)
    stepper = GRPOStepper(cfg, s, cfg.run_dir)
    tg_lengths: list[float] = []

    def tg_step() -> dict[str, float]:
        res = stepper.step()
        tg_lengths.append(res.metrics["rollout/action_tokens"])
        return res.times

    # --- TRL
    env = make(ENV_ID)
    rows = []
    for seed in range(n_steps * args.tasks * 2):
        msgs, _ = env.reset(seed=seed)
        rows.append({"prompt": msgs, "seed": seed})
    trl_tok = AutoTokenizer.from_pretrained(model_dir)
    same_prompt = (trl_tok.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=False) == s.renderer.initial(rows[0]["prompt"]))
    trl_model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targs = GRPOConfig(
        output_dir=os.path.join(tmp, "trl-run"), use_cpu=True, bf16=False, fp16=False, seed=0,
        per_device_train_batch_size=batch, num_generations=args.group, gradient_accumulation_steps=1,
        max_completion_length=args.max_new_tokens, max_steps=n_steps, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, epsilon=0.2,
        epsilon_high=0.28, beta=0.0, loss_type="dapo", scale_rewards="group", temperature=1.0, top_p=1.0,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        log_completions=False, gradient_checkpointing=args.trl_gradient_checkpointing,
    )
    inter = Interleave(tg_step, args.threads)
    profile: dict[str, list[float]] = {}
    record_trl_profile(profile)
    trainer = GRPOTrainer(model=trl_model, reward_funcs=trl_reward(make(ENV_ID)), args=targs,
                          train_dataset=Dataset.from_list(rows), processing_class=trl_tok,
                          callbacks=[make_trl_callback(inter)])
    torch.set_num_threads(args.threads)
    trainer.train()
    stepper.close()

    w = args.warmup
    trl_m = {k: median([r[k] for r in inter.trl[w:]]) for k in ("step", "step_cpu")}
    tg_m = {k: median([r[k] for r in inter.tg[w:]]) for k in inter.tg[0]}
    ratio = [t["step"] / r["step"] for t, r in zip(inter.tg[w:], inter.trl[w:])]
    ratio_cpu = [t["step_cpu"] / r["step_cpu"] for t, r in zip(inter.tg[w:], inter.trl[w:])]
    trl_len = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    n_trl = len(inter.trl)
    trl_prof = {k: median(v[w:]) if len(v) >= n_trl else median(v) for k, v in profile.items()}
    info["load_avg_end"] = round(os.getloadavg()[0], 2)
    return {
        "machine": info,
        "config": {"env": ENV_ID, "size": args.size, "params": sum(p.numel() for p in s.model.parameters()),
                   "tasks": args.tasks, "group": args.group, "max_new_tokens": args.max_new_tokens,
                   "steps": args.steps, "warmup": args.warmup, "trl": __import__("trl").__version__,
                   "same_prompt_ids": bool(same_prompt),
                   "trl_gradient_checkpointing": args.trl_gradient_checkpointing},
        "turngym_s": tg_m, "trl_s": trl_m, "trl_profile_s": trl_prof,
        "ratio_median": median(ratio), "ratio_cpu_median": median(ratio_cpu),
        "ratio_per_step": [round(x, 3) for x in ratio], "ratio_cpu_per_step": [round(x, 3) for x in ratio_cpu],
        "mean_completion_tokens": {"turngym": statistics.mean(tg_lengths[w:] or tg_lengths),
                                   "trl": statistics.mean(trl_len[w:] or trl_len) if trl_len else None},
        "load_avg_per_step": [round(x, 2) for x in inter.load],
        "trl_threads": inter.trl[-1]["threads"],
        "per_step": {"turngym": inter.tg, "trl": inter.trl},
    }


def markdown(res: dict[str, Any]) -> str:
    m, c, tg, tr, pr = res["machine"], res["config"], res["turngym_s"], res["trl_s"], res["trl_profile_s"]
    lens = res["mean_completion_tokens"]
    trl_len = f"{lens['trl']:.1f}" if lens["trl"] is not None else "?"
    gen = pr.get("transformers.generate", float("nan"))
    prep = pr.get("_prepare_inputs", float("nan"))
    loss = pr.get("compute_loss", float("nan"))
    machine = (f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} thread(s) "
               f"in both arms; load average {m['load_avg_start']} at start, {m['load_avg_end']} at end "
               f"(per step: {res['load_avg_per_step']}).")
    setup = (f"Task {c['env']} (one turn), tiny Llama {c['size']} ({c['params'] / 1e6:.2f}M params), "
             f"{c['tasks']} prompts x G={c['group']}, max {c['max_new_tokens']} new tokens (mean sampled: turngym "
             f"{lens['turngym']:.1f}, TRL {trl_len}), TRL {c['trl']}; prompt ids identical in both arms: "
             f"{c['same_prompt_ids']}; TRL gradient checkpointing: {c['trl_gradient_checkpointing']}. Medians over {c['steps']} interleaved steps after {c['warmup']} warm-up.")
    verdict = (f"**turngym / TRL time per step: {res['ratio_median']:.2f}x wall, {res['ratio_cpu_median']:.2f}x CPU** "
               f"(medians of per-step ratios; target <= 0.6x). Per step wall: {res['ratio_per_step']}.")
    lines = [
        f"### turngym vs TRL GRPOTrainer, single-turn GRPO step ({m['date_utc']})",
        "",
        machine,
        setup,
        "",
        "| arm | part | wall s (median) | CPU s (median) |",
        "| --- | --- | ---: | ---: |",
        f"| TRL | whole step | {tr['step']:.3f} | {tr['step_cpu']:.3f} |",
        f"| TRL | - generate (transformers) | {gen:.3f} | |",
        f"| TRL | - generate + rewards + advantages (_prepare_inputs) | {prep:.3f} | |",
        f"| TRL | - loss forward (compute_loss) | {loss:.3f} | |",
        f"| TRL | - backward + optimizer + logging (rest) | {tr['step'] - prep - loss:.3f} | |",
        f"| turngym | whole step | {tg['step']:.3f} | {tg['step_cpu']:.3f} |",
        f"| turngym | - rollout | {tg['rollout']:.3f} | {tg['rollout_cpu']:.3f} |",
        f"| turngym | -- inside policy.generate | {tg['rollout.generate_s']:.3f} | |",
        (f"| turngym | -- env reset/step + render | "
        f"{tg['rollout.env_s'] + tg['rollout.render_s'] + tg['rollout.setup_s']:.3f} | |"),
        f"| turngym | - pack + credit | {tg['pack'] + tg['credit']:.3f} | |",
        f"| turngym | - update (fwd/bwd/opt) | {tg['update']:.3f} | {tg['update_cpu']:.3f} |",
        f"| turngym | - metrics + run log | {tg['log']:.3f} | |",
        "",
        verdict,
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", type=int, default=4, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--size", default="1m", help="tiny model size: 1m, 3m, 10m")
    p.add_argument("--steps", type=int, default=10, help="measured steps per arm")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per arm (not measured)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="turngym writes TensorBoard events (as by default); TRL runs with report_to='none'")
    p.add_argument("--trl-gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="TRL's own default is on (recompute activations in backward); off by default here so both "
                        "arms do the same compute (turngym does not checkpoint)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    return emit(run(args), markdown, args.json)


if __name__ == "__main__":
    main()
