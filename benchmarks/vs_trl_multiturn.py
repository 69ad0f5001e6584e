"""turngym vs TRL's GRPOTrainer on a multi-turn tool task: wall and CPU time per GRPO step, side by side, one run.

The task is ``search/HopQA-v0`` (multi-hop questions answered with a ``search`` tool over the env's BM25 corpus;
``--hops 2,3`` needs 3-4 turns: one search per hop, then the answer), with the hermes tool-call format
(``parser="hermes"``: ``<tool_call>{"name": "search", "arguments": {"query": ...}}</tool_call>``). Both arms use:

* the same model: the tiny Llama that turngym builds for this env (tokenizer trained on the env's hermes-format
  text, ``--size``), warm-started by turngym's SFT on the env's scripted expert (``--sft-steps``; a random model
  never emits a tool call, so neither arm would get past turn 1), saved to a directory (cached by settings) and
  loaded from it by both arms (same weights, float32, CPU, offline); the prompt ids are checked to be identical;
* the same tasks: step i of both arms trains on the same ``--tasks`` questions (turngym's own task seeds of step i,
  given to TRL as its dataset rows in order, ``shuffle_dataset=False``), ``--group`` episodes each;
* the same episode limits: at most ``--max-turns`` assistant turns (TRL: ``max_tool_calling_iterations =
  max_turns - 1``), at most ``--max-new-tokens`` sampled per turn (TRL: ``generation_kwargs={"max_new_tokens":
  ...}``, since its ``max_completion_length`` is the budget of the whole multi-turn completion), at most
  ``--max-traj-tokens`` per episode (prompt + turns + tool results; TRL: ``max_completion_length = max_traj_tokens
  - longest prompt``);
* the same tool: TRL's ``tools=[search]`` function runs the env's own `ToolSet` (same BM25 index, same result
  text), and its docstring is the env's tool schema, so TRL renders the same system prompt;
* the same reward: the env scores each episode (TRL's reward function replays the episode's assistant messages
  through a fresh env of the row's seed);
* the same GRPO step as the one-turn benchmark (`vs_trl.py`): temperature 1, group-normalised advantages,
  token-mean clipped surrogate (eps 0.2 / 0.28), no KL, one AdamW step over the whole batch, grad-norm clip 1.0,
  lr 1e-4, one torch thread, metrics logged every step, no gradient checkpointing.

TRL runs its documented multi-turn path: ``GRPOTrainer(tools=[search])`` (TRL parses each completion with the
tokenizer's ``response_template``, runs the calls, appends the tool messages' tokens to the prompt + completion ids,
and calls ``generate`` again on the whole conversation for the episodes that called a tool; the loop ends for an
episode at a turn without a parsed tool call). One adaptation is needed: TRL knows the response format of a list of
popular chat templates and the tiny template is not one of them, so the script sets ``tokenizer.response_template``
(`TINY_RESPONSE_TEMPLATE`, the parser transformers uses for the tiny template's rendering of tool calls) before TRL
sees the tokenizer. turngym runs the body of `turngym.trainers.grpo.train`'s step (`overhead.GRPOStepper`): its
rollout engine keeps each episode's KV cache across turns and batches all episodes' turns in one generate per round.

One difference of semantics remains and is reported: a turn with neither a tool call nor an answer ends a TRL
episode, while turngym's env answers it with an error message and the episode goes on (to ``--max-turns``). The
table gives the turns per episode and the tokens sampled per step of each arm.

The arms are interleaved step by step (a `TrainerCallback` runs one turngym step after each TRL step, TRL's clock
paused meanwhile). Per step: wall and CPU time of this process; medians after ``--warmup`` steps.

    pip install 'turngym[trl]'   # trl, accelerate, datasets
    python benchmarks/vs_trl_multiturn.py                       # 4 questions x G=8, 2-3 hops, 4 turns, 10 steps
    python benchmarks/vs_trl_multiturn.py --quick               # the test's settings (~40 s of CPU)

Prints a markdown table with the machine, date and load average; ``--json`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

for _k, _v in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
               ("TRL_EXPERIMENTAL_SILENCE", "1")):
    os.environ.setdefault(_k, _v)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import GRPOStepper, emit, machine_info, median
from vs_trl import Interleave, make_trl_callback, record_trl_profile, require_trl

ENV_ID = "search/HopQA-v0"

#: transformers ``response_template`` for the tiny chat template's assistant messages (``<|assistant|>`` text and
#: ``<tool_call>{json}</tool_call>`` calls, ended by ``<|end|>``): what TRL's `parse_response` reads to find tool calls.
TINY_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|assistant|>",
    "fields": {
        "tool_calls": {"open": "<tool_call>", "close_pattern": r"</tool_call>\s*", "repeats": True, "content": "json",
                       "transform": {"type": "function", "function": "{content}"}},
        "content": {"close_pattern": r"<\|end\|>\s*", "content": "text"},
    },
}

#: ``--quick``: the settings of the test (small batch, 1-hop questions, a short SFT that still teaches the call format)
QUICK = {"tasks": 2, "group": 2, "hops": "1", "max_turns": 3, "max_new_tokens": 32, "steps": 2, "warmup": 1,
         "sft_steps": 150, "sft_episodes": 32, "sft_batch": 1, "sft_lr": 5e-3, "text_seeds": 16}


def env_kwargs(args) -> dict[str, Any]:
    return {"parser": "hermes", "hops": [int(h) for h in str(args.hops).split(",")]}


# ----------------------------------------------------------------------------------------------- the model


def warm_model(args) -> Path:
    """The tiny model for the hermes env, SFT-warm-started on the scripted expert, in a directory cached by settings."""
    from turngym.agents.tiny import env_texts, load_policy_model
    from turngym.cache import cache_dir
    from turngym.trainers import policy_setup
    from turngym.trainers.config import TrainConfig

    ek = env_kwargs(args)
    key = {"size": args.size, "env": ek, "sft": [args.sft_steps, args.sft_lr, args.sft_episodes, args.sft_batch],
           "text_seeds": args.text_seeds, "max_turns": args.max_turns, "max_new_tokens": args.max_new_tokens, "v": 1}
    root = Path(args.cache_dir) if args.cache_dir else cache_dir("models")
    path = root / ("vs-trl-multiturn-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10])
    if (path / "config.json").exists():
        return path
    model, tok = load_policy_model("tiny", env_id=ENV_ID, size=args.size, cache_dir=root, n_seeds=args.text_seeds,
                                   texts=lambda: env_texts(ENV_ID, n_seeds=args.text_seeds, env_kwargs=ek))
    raw = Path(tempfile.mkdtemp(prefix="turngym-vs-trl-raw-"))
    model.save_pretrained(raw)
    tok.save_pretrained(raw)
    cfg = TrainConfig(
        env_id=ENV_ID, env_kwargs=ek, model=str(raw), device="cpu", dtype="float32", torch_threads=args.threads,
        seed=0, max_turns=args.max_turns, max_new_tokens=args.max_new_tokens, max_traj_tokens=args.max_traj_tokens,
        sft_steps=args.sft_steps, sft_lr=args.sft_lr, sft_episodes=args.sft_episodes, sft_batch_size=args.sft_batch,
        expert_noise=0.0, eval_tasks=0, progress=False, report=False,
    )
    s = policy_setup.setup(cfg)
    policy_setup.warm_start(cfg, s, lambda metrics: None)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    s.model.save_pretrained(tmp)
    s.tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    shutil.rmtree(raw, ignore_errors=True)
    return path


def prefill_tokens(trajs: list) -> dict[str, float]:
    """Context tokens fed to the model before each turn's sampling, per episode (mean over ``trajs``).

    ``reprefill``: the whole conversation so far at every turn (what a sampler without a cache across turns, such as
    TRL's generate loop, prefills); ``incremental``: the prompt once plus each turn's new observation tokens (what
    turngym's prefix-cached sampler prefills).
    """
    re_, inc = 0, 0
    for t in trajs:
        ctx = len(t.prompt_ids)
        inc += ctx
        for k, u in enumerate(t.turns):
            re_ += ctx
            if k + 1 < len(t.turns):
                ctx += len(u.action_ids) + len(u.obs_ids)
                inc += len(u.obs_ids)
    n = max(len(trajs), 1)
    return {"prefill_reprefill": re_ / n, "prefill_incremental": inc / n}


# ----------------------------------------------------------------------------------------------- TRL arm


def trl_search_tool(env):
    """TRL's ``search`` tool: the env's own `ToolSet` call; its docstring is the env's schema (same rendered prompt)."""
    from turngym.types import ToolCall

    (schema,) = [s["function"] for s in env.tool_schemas if s["function"]["name"] == "search"]
    params = schema["parameters"]["properties"]
    if list(params) != ["query"]:
        raise RuntimeError(f"HopQA's search tool takes {list(params)}; this benchmark expects ['query'].")

    def search(query: str):  # no return annotation: transformers would add "return" to the rendered schema
        return env.toolset.execute([ToolCall(name="search", arguments={"query": query})])[0].text

    search.__doc__ = f"{schema['description']}\n\nArgs:\n    query: {params['query']['description']}\n"
    return search


def assistant_text(msg: dict[str, Any]) -> str:
    """An assistant message as the text the tiny template renders (content, then each ``<tool_call>``)."""
    calls = "".join("<tool_call>" + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})
                    + "</tool_call>" for c in msg.get("tool_calls") or [])
    return (msg.get("content") or "") + calls


def trl_reward(make_env, stats: list[dict[str, Any]]):
    """A TRL reward function: replays each episode's assistant messages through a fresh env of the row's seed.

    Appends per call (one per TRL step) the turns of each episode and the rows' seeds to ``stats``.
    """

    def hopqa_reward(prompts, completions, seed, **_: Any) -> list[float]:
        out, turns = [], []
        env = make_env()
        try:
            for msgs, sd in zip(completions, seed):
                env.reset(seed=int(sd))
                said = [m for m in msgs if m.get("role") == "assistant"]
                total = 0.0
                for m in said:
                    _, r, term, trunc, _ = env.step(assistant_text(m))
                    total += float(r)
                    if term or trunc:
                        break
                out.append(total)
                turns.append(len(said))
        finally:
            env.close()
        stats.append({"turns": turns, "seeds": [int(s) for s in seed], "reward": out})
        return out

    return hopqa_reward


class StepMarks(Interleave):
    """`Interleave` that also marks, at each TRL step's end, how many spans each TRL profile list holds.

    A multi-turn TRL step calls ``generate`` once per turn, so a step's time in a span is the sum of its entries.
    """

    def __init__(self, tg_step, threads: int, profile: dict[str, list[float]]):
        super().__init__(tg_step, threads)
        self.profile = profile
        self.marks: list[dict[str, int]] = []

    def step_end(self) -> None:
        self.marks.append({k: len(v) for k, v in self.profile.items()})
        super().step_end()

    def per_step(self) -> dict[str, list[float]]:
        """Each span's total seconds in each TRL step."""
        out: dict[str, list[float]] = {}
        for name, spans in self.profile.items():
            prev = 0
            for mark in self.marks:
                cur = mark.get(name, 0)
                out.setdefault(name, []).append(sum(spans[prev:cur]))
                prev = cur
        return out


# ----------------------------------------------------------------------------------------------- driver


def run(args) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    require_trl()
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from turngym.envs import make
    from turngym.trainers import policy_setup
    from turngym.trainers.config import TrainConfig
    from turngym.trainers.sampling import task_seeds

    if args.max_turns < 2:
        raise SystemExit(f"--max-turns {args.max_turns}: a multi-turn benchmark needs at least 2.")
    info = machine_info(args.threads)
    model_dir = str(warm_model(args))
    tmp = tempfile.mkdtemp(prefix="turngym-vs-trl-mt-")
    n_steps = args.warmup + args.steps
    batch = args.tasks * args.group
    lr = 1e-4
    ek = env_kwargs(args)

    # --- turngym
    cfg = TrainConfig(
        env_id=ENV_ID, env_kwargs=ek, model=model_dir, device="cpu", dtype="float32", torch_threads=args.threads,
        seed=0, credit="grpo", group_size=args.group, tasks_per_step=args.tasks, minibatch_size=batch, grad_accum=1,
        ppo_epochs=1, lr=lr, max_grad_norm=1.0, eps_low=0.2, eps_high=0.28, dual_clip_c=None, loss_agg="token-mean",
        kl_coef=0.0, entropy_coef=0.0, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
        max_traj_tokens=args.max_traj_tokens, max_turns=args.max_turns, sft_steps=0, eval_tasks=0, steps=n_steps,
        run_dir=os.path.join(tmp, "turngym-run"), progress=False, report=False, tensorboard=args.tensorboard,
    )
    s = policy_setup.setup(cfg)
    stepper = GRPOStepper(cfg, s, cfg.run_dir)
    tg_stats: list[dict[str, float]] = []

    def tg_step() -> dict[str, float]:
        res = stepper.step()
        tg_stats.append({"action_tokens": res.metrics["rollout/action_tokens"], "turns": res.metrics["rollout/turns"],
                         "success": res.metrics["rollout/success"], "traj_tokens": res.metrics["rollout/traj_tokens"],
                         **prefill_tokens(res.trajs)})
        return res.times

    # --- TRL: the same questions, step by step (turngym's task seeds of each step, in order, no shuffling)
    env = make(ENV_ID, **ek)
    rows = []
    for step in range(n_steps):
        for seed in task_seeds(cfg, step):
            msgs, _ = env.reset(seed=seed)
            rows.append({"prompt": msgs, "seed": seed})
    trl_tok = AutoTokenizer.from_pretrained(model_dir)
    trl_tok.response_template = TINY_RESPONSE_TEMPLATE
    search = trl_search_tool(env)
    prompt_ids = [trl_tok.apply_chat_template(r["prompt"], tools=[search], add_generation_prompt=True, tokenize=True,
                                              return_dict=False) for r in rows]
    same_prompt = all(p == s.renderer.initial(r["prompt"]) for p, r in zip(prompt_ids, rows))
    max_prompt = max(len(p) for p in prompt_ids)
    if max_prompt + args.max_new_tokens > args.max_traj_tokens:
        raise SystemExit(f"--max-traj-tokens {args.max_traj_tokens} leaves no room after a {max_prompt}-token prompt.")
    trl_model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targs = GRPOConfig(
        output_dir=os.path.join(tmp, "trl-run"), use_cpu=True, bf16=False, fp16=False, seed=0,
        per_device_train_batch_size=batch, num_generations=args.group, gradient_accumulation_steps=1,
        max_completion_length=args.max_traj_tokens - max_prompt, max_tool_calling_iterations=args.max_turns - 1,
        generation_kwargs={"max_new_tokens": args.max_new_tokens}, shuffle_dataset=False,
        max_steps=n_steps, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, epsilon=0.2, epsilon_high=0.28, beta=0.0, loss_type="dapo", scale_rewards="group",
        temperature=1.0, top_p=1.0, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, log_completions=False, gradient_checkpointing=False,
    )
    profile: dict[str, list[float]] = {}
    record_trl_profile(profile)
    inter = StepMarks(tg_step, args.threads, profile)
    trl_stats: list[dict[str, Any]] = []
    trainer = GRPOTrainer(model=trl_model, reward_funcs=trl_reward(lambda: make(ENV_ID, **ek), trl_stats),
                          args=targs, train_dataset=Dataset.from_list(rows), processing_class=trl_tok,
                          tools=[search], callbacks=[make_trl_callback(inter)])
    torch.set_num_threads(args.threads)
    trainer.train()
    stepper.close()
    env.close()
    shutil.rmtree(tmp, ignore_errors=True)

    w = args.warmup
    trl_m = {k: median([r[k] for r in inter.trl[w:]]) for k in ("step", "step_cpu")}
    tg_m = {k: median([r[k] for r in inter.tg[w:]]) for k in inter.tg[0]}
    ratio = [t["step"] / r["step"] for t, r in zip(inter.tg[w:], inter.trl[w:])]
    ratio_cpu = [t["step_cpu"] / r["step_cpu"] for t, r in zip(inter.tg[w:], inter.trl[w:])]
    trl_logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    trl_prof = {k: median(v[w:]) for k, v in inter.per_step().items()}
    trl_calls = {k: median([float(n) for n in v[w:]]) for k, v in _span_counts(inter).items()}
    same_tasks = all(sorted(set(st["seeds"])) == sorted(task_seeds(cfg, i)) for i, st in enumerate(trl_stats))
    info["load_avg_end"] = round(os.getloadavg()[0], 2)

    def per_step_mean(xs: list[float]) -> float:
        return statistics.mean(xs[w:] or xs)

    trl_turns = [statistics.mean(st["turns"]) for st in trl_stats]
    return {
        "machine": info,
        "config": {"env": ENV_ID, "env_kwargs": ek, "size": args.size,
                   "params": sum(p.numel() for p in s.model.parameters()), "tasks": args.tasks, "group": args.group,
                   "max_turns": args.max_turns, "max_new_tokens": args.max_new_tokens,
                   "max_traj_tokens": args.max_traj_tokens, "trl_max_completion_length": args.max_traj_tokens - max_prompt,
                   "sft_steps": args.sft_steps, "steps": args.steps, "warmup": args.warmup,
                   "trl": __import__("trl").__version__, "same_prompt_ids": bool(same_prompt),
                   "same_tasks_per_step": bool(same_tasks), "model_dir": model_dir},
        "turngym_s": tg_m, "trl_s": trl_m, "trl_profile_s": trl_prof, "trl_profile_calls": trl_calls,
        "ratio_median": median(ratio), "ratio_cpu_median": median(ratio_cpu),
        "ratio_per_step": [round(x, 3) for x in ratio], "ratio_cpu_per_step": [round(x, 3) for x in ratio_cpu],
        # per episode, means over the measured steps
        "turns_per_episode": {"turngym": per_step_mean([t["turns"] for t in tg_stats]),
                              "trl": per_step_mean(trl_turns)},
        "sampled_tokens_per_episode": {"turngym": per_step_mean([t["action_tokens"] for t in tg_stats]),
                                       "trl": per_step_mean([h["completions/mean_length"] for h in trl_logs])},
        "success": {"turngym": per_step_mean([t["success"] for t in tg_stats]),
                    "trl": per_step_mean([statistics.mean(x > 0 for x in st["reward"]) for st in trl_stats])},
        "prefill_tokens_per_episode": {
            "turngym_incremental": per_step_mean([t["prefill_incremental"] for t in tg_stats]),
            "same_episodes_reprefilled": per_step_mean([t["prefill_reprefill"] for t in tg_stats])},
        "trl_tool_calls_per_episode": per_step_mean([h.get("tools/call_frequency", float("nan")) for h in trl_logs]),
        "episodes_per_step": batch,
        "load_avg_per_step": [round(x, 2) for x in inter.load],
        "per_step": {"turngym": inter.tg, "trl": inter.trl, "turngym_rollout": tg_stats,
                     "trl_turns": [st["turns"] for st in trl_stats]},
    }


def _span_counts(inter: StepMarks) -> dict[str, list[int]]:
    """How many times each TRL span ran in each step (``transformers.generate``: once per turn round)."""
    out: dict[str, list[int]] = {}
    prev: dict[str, int] = {}
    for mark in inter.marks:
        for k, n in mark.items():
            out.setdefault(k, []).append(n - prev.get(k, 0))
        prev = mark
    return out


def markdown(res: dict[str, Any]) -> str:
    m, c, tg, tr, pr = res["machine"], res["config"], res["turngym_s"], res["trl_s"], res["trl_profile_s"]
    turns, toks, succ = res["turns_per_episode"], res["sampled_tokens_per_episode"], res["success"]
    n, pf = res["episodes_per_step"], res["prefill_tokens_per_episode"]
    gen = pr.get("transformers.generate", float("nan"))
    calls = res["trl_profile_calls"].get("transformers.generate", float("nan"))
    prep = pr.get("_prepare_inputs", float("nan"))
    loss = pr.get("compute_loss", float("nan"))
    machine = (f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} thread(s) "
               f"in both arms; load average {m['load_avg_start']} at start, {m['load_avg_end']} at end "
               f"(per step: {res['load_avg_per_step']}).")
    setup = (f"Task {c['env']} ({c['env_kwargs']}), tiny Llama {c['size']} ({c['params'] / 1e6:.2f}M params, "
             f"SFT {c['sft_steps']} steps on the expert), {c['tasks']} questions x G={c['group']} per step (same "
             f"questions in both arms: {c['same_tasks_per_step']}), <= {c['max_turns']} turns, <= "
             f"{c['max_new_tokens']} new tokens per turn, <= {c['max_traj_tokens']} tokens per episode; TRL "
             f"{c['trl']} `tools=[search]`; prompt ids identical in both arms: {c['same_prompt_ids']}. Medians over "
             f"{c['steps']} interleaved steps after {c['warmup']} warm-up.")
    verdict = (f"**turngym / TRL time per multi-turn step: {res['ratio_median']:.2f}x wall, "
               f"{res['ratio_cpu_median']:.2f}x CPU** (medians of per-step ratios; target <= 0.5x). Per step wall: "
               f"{res['ratio_per_step']}.")
    lines = [
        f"### turngym vs TRL GRPOTrainer, multi-turn GRPO step on HopQA ({m['date_utc']})",
        "",
        machine,
        setup,
        "",
        "| arm | turns / episode | sampled tokens / episode | sampled tokens / step | success |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| TRL | {turns['trl']:.2f} | {toks['trl']:.1f} | {toks['trl'] * n:.0f} | {succ['trl']:.2f} |",
        (f"| turngym | {turns['turngym']:.2f} | {toks['turngym']:.1f} | {toks['turngym'] * n:.0f} | "
        f"{succ['turngym']:.2f} |"),
        "",
        "| arm | part | wall s (median) | CPU s (median) |",
        "| --- | --- | ---: | ---: |",
        f"| TRL | whole step | {tr['step']:.3f} | {tr['step_cpu']:.3f} |",
        f"| TRL | - generate (transformers, {calls:.0f} calls: one per turn round) | {gen:.3f} | |",
        f"| TRL | - generate + tools + rewards + advantages (_prepare_inputs) | {prep:.3f} | |",
        f"| TRL | - loss forward (compute_loss) | {loss:.3f} | |",
        f"| TRL | - backward + optimizer + logging (rest) | {tr['step'] - prep - loss:.3f} | |",
        f"| turngym | whole step | {tg['step']:.3f} | {tg['step_cpu']:.3f} |",
        f"| turngym | - rollout (all turns) | {tg['rollout']:.3f} | {tg['rollout_cpu']:.3f} |",
        f"| turngym | -- inside policy.generate | {tg['rollout.generate_s']:.3f} | |",
        (f"| turngym | -- env reset/step + tools + render | "
         f"{tg['rollout.env_s'] + tg['rollout.render_s'] + tg['rollout.setup_s']:.3f} | |"),
        f"| turngym | - pack + old log-probs + credit | {tg['pack'] + tg['old_logprobs'] + tg['credit']:.3f} | |",
        f"| turngym | - update (fwd/bwd/opt) | {tg['update']:.3f} | {tg['update_cpu']:.3f} |",
        f"| turngym | - metrics + run log | {tg['log']:.3f} | |",
        "",
        (f"Context tokens prefilled per turngym episode: {pf['turngym_incremental']:.0f} (prompt once + new "
         f"observations; the KV cache is kept across turns); the same episodes re-prefilled at every turn, as TRL's "
         f"loop does: {pf['same_episodes_reprefilled']:.0f}."),
        "",
        verdict,
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"the test's small settings: {QUICK}")
    p.add_argument("--tasks", type=int, default=4, help="questions per step")
    p.add_argument("--group", type=int, default=8, help="episodes per question (G)")
    p.add_argument("--hops", default="2,3", help="hops per question (comma-separated choices, 1..4)")
    p.add_argument("--max-turns", type=int, default=4, help="assistant turns per episode (TRL: 1 + tool iterations)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="sampled tokens per turn")
    p.add_argument("--max-traj-tokens", type=int, default=2048, help="tokens per episode (prompt, turns, tools)")
    p.add_argument("--size", default="1m", help="tiny model size: 1m, 3m, 10m")
    p.add_argument("--sft-steps", type=int, default=400, help="SFT warm start on the expert (cached)")
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--sft-episodes", type=int, default=256)
    p.add_argument("--sft-batch", type=int, default=8)
    p.add_argument("--text-seeds", type=int, default=64, help="env episodes whose text trains the tokenizer")
    p.add_argument("--steps", type=int, default=10, help="measured steps per arm")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per arm (not measured)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="turngym writes TensorBoard events (as by default); TRL runs with report_to='none'")
    p.add_argument("--cache-dir", default=None, help="where the warm-started model is cached")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        args.tensorboard = False
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    return emit(run(args), markdown, args.json)


if __name__ == "__main__":
    main()
