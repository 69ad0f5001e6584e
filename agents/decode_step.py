"""A compiled decode step for Llama-architecture models (the tiny policy, SmolLM2): one token per row.

`HFPolicy` prefills with the model's own forward and decodes one token per row per step. For a small model that
step is bound by per-op overhead: the transformers forward runs ~30 small kernels per layer, builds a mask and
rotary tables, and dispatches each op from Python. `DecodeStep` is the same computation written as one function
of plain tensors, compiled once per process with ``torch.compile`` (inductor: C++ on CPU, Triton on a GPU), so
norms, rotary embedding and the MLP fuse into a few kernels. CUDA graphs (``mode="reduce-overhead"``) are not the
default: the attended length grows by one column every step, and a graph is recorded per shape.

The function is pure: it reads the cached keys/values of the attended columns (views of the `BufferLayer`
buffers, any length: shapes are dynamic, so one compilation serves every batch size above 1 and every context
length) and returns the logits and each layer's new key/value; the caller appends those to the cache. The new
token attends over the cached columns and itself without being written first: on CPU PyTorch's attention kernel
over the cached columns, merged with the new token's own score through the kernel's log-sum-exp; elsewhere two
reductions that inductor fuses. Grouped-query heads attend as query positions of their key/value head (no copy).

Supported (`supports` says why not): a plain ``LlamaForCausalLM`` (no LoRA or other wrapper) with the default
rotary embedding, ``silu``, plain ``Linear`` projections and no bias. Anything else keeps the model's own forward.
Measured in benchmarks/README.md ("Compiled decode step").
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["DecodeStep", "supports"]

log = logging.getLogger(__name__)

_COMPILED: dict[str, Any] = {}  # mode -> compiled step, shared by every DecodeStep of the process
_SEEN: set[tuple] = set()  # (mode, fused, batch of 1, device) already compiled in this process


def supports(model: Any) -> str | None:
    """None when `DecodeStep` can run ``model``; else why not (one line)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return f"model type {getattr(cfg, 'model_type', None)!r} is not 'llama'"
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rotary embedding {rope.get('rope_type')!r} is not the default"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "attention or MLP bias"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} is not silu"
    if type(model).__name__ != "LlamaForCausalLM":  # a wrapper (LoRA, ...) changes what the layers compute
        return f"{type(model).__name__} is not a plain LlamaForCausalLM"
    import torch

    linears = [model.lm_head] + [m for L in model.model.layers
                                 for m in (L.self_attn.q_proj, L.self_attn.k_proj, L.self_attn.v_proj,
                                           L.self_attn.o_proj, L.mlp.gate_proj, L.mlp.up_proj, L.mlp.down_proj)]
    if any(type(m) is not torch.nn.Linear for m in linears):
        return "a projection is not a plain Linear layer"
    if model.lm_head.bias is not None:
        return "the output layer has a bias"
    return None


def _rms(x, w, eps: float):
    import torch

    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x, cos, sin):
    import torch

    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _step(tok, pos, keep, ks, vs, embed, inv_freq, layers, norm_w, lm_w, n_heads: int, n_kv: int, eps: float,
          fused: bool):
    """Logits ``[B, V]`` and each layer's new ``(k, v)`` ``[B, H_kv, D]`` for tokens ``tok`` ``[B]`` at positions
    ``pos`` ``[B]``, attending the cached columns ``ks[l]`` / ``vs[l]`` ``[B, H_kv, C, D]`` where ``keep`` ``[B, C]``
    is True, and the new token itself. ``fused``: attention by the CPU kernel plus a log-sum-exp merge of the new
    token; else by two reductions (any device)."""
    import torch

    h = embed[tok]  # [B, E]
    freqs = pos[:, None].float() * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(h.dtype)[:, None, :], emb.sin().to(h.dtype)[:, None, :]  # [B, 1, D]
    B = h.shape[0]
    new_k, new_v = [], []
    mask = torch.where(keep, 0.0, torch.finfo(h.dtype).min).to(h.dtype)[:, None, None, :]  # [B, 1, 1, C]
    for (w_in, wq, wk, wv, wo, w_post, wg, wu, wd), K, V in zip(layers, ks, vs):
        x = _rms(h, w_in, eps)
        D = wq.shape[0] // n_heads
        scale = D ** -0.5
        q = (x @ wq.t()).view(B, n_heads, D)
        k = (x @ wk.t()).view(B, n_kv, D)
        v = (x @ wv.t()).view(B, n_kv, D)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        new_k.append(k)
        new_v.append(v)
        g = n_heads // n_kv  # the g query heads of a key/value head attend as g query positions
        qg = q.view(B, n_kv, g, D)
        s_new = (qg * k[:, :, None, :]).sum(-1) * scale  # [B, H_kv, g]: the new token's own score
        if fused:  # PyTorch's CPU attention kernel, which also returns the log-sum-exp to merge with
            o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                qg, K, V, 0.0, False, attn_mask=mask, scale=scale)
            tot = torch.logaddexp(lse, s_new)
            o = o * torch.exp(lse - tot)[..., None] + v[:, :, None, :] * torch.exp(s_new - tot)[..., None]
        else:  # two reductions; inductor fuses them (Triton on a GPU)
            s_old = (qg[:, :, :, None, :] * K[:, :, None, :, :]).sum(-1) * scale + mask  # [B, H_kv, g, C]
            p = torch.softmax(torch.cat((s_old, s_new[..., None]), dim=-1).float(), dim=-1).to(h.dtype)
            C = K.shape[2]
            o = (p[..., :C, None] * V[:, :, None, :, :]).sum(-2) + p[..., C:] * v[:, :, None, :]
        h = h + o.reshape(B, n_heads * D) @ wo.t()
        x = _rms(h, w_post, eps)
        h = h + (torch.nn.functional.silu(x @ wg.t()) * (x @ wu.t())) @ wd.t()
    logits = _rms(h, norm_w, eps) @ lm_w.t()
    return logits, new_k, new_v


class DecodeStep:
    """The compiled decode step of one Llama-architecture ``model`` (see the module docstring).

    Args:
        model: A transformers Llama causal LM (`supports`).
        compile: Compile with ``torch.compile`` (False: run the same function eagerly).
        mode: ``torch.compile`` mode (default: inductor's default; see the module docstring on CUDA graphs).
        fused_attention: Attend with PyTorch's CPU attention kernel (default: on CPU) instead of two reductions.

    The compiled function is shared by every `DecodeStep` of the process (weights are its inputs, not constants),
    so only the first step of a process compiles (once for batch size 1, once for larger batches).
    ``compile_seconds`` is the wall time of the compiling calls this instance made.
    """

    def __init__(self, model: Any, *, compile: bool = True, mode: str | None = None,
                 fused_attention: bool | None = None):
        why = supports(model)
        if why is not None:
            raise ValueError(f"DecodeStep: unsupported model ({why}); use the model's own forward.")
        self.model = model
        cfg = model.config
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        self.eps = float(cfg.rms_norm_eps)
        dev = next(model.parameters()).device
        self.mode = mode if mode is not None else "default"
        self.fused = dev.type == "cpu" if fused_attention is None else bool(fused_attention)
        self.compile = bool(compile)
        self.compile_seconds = 0.0

    def _fn(self):
        if not self.compile:
            return _step
        if self.mode not in _COMPILED:
            import torch

            _COMPILED[self.mode] = torch.compile(_step, dynamic=True,
                                                 mode=None if self.mode == "default" else self.mode)
        return _COMPILED[self.mode]

    def weights(self) -> tuple:
        """``(embed, inv_freq, layers, final norm, lm_head)``: the model's own parameter tensors (no copies)."""
        m = self.model.model
        layers = [(L.input_layernorm.weight, L.self_attn.q_proj.weight, L.self_attn.k_proj.weight,
                   L.self_attn.v_proj.weight, L.self_attn.o_proj.weight, L.post_attention_layernorm.weight,
                   L.mlp.gate_proj.weight, L.mlp.up_proj.weight, L.mlp.down_proj.weight) for L in m.layers]
        return m.embed_tokens.weight, m.rotary_emb.inv_freq, layers, m.norm.weight, self.model.lm_head.weight

    def __call__(self, tok, pos, attn, cache):
        """Logits ``[B, V]`` of tokens ``tok`` ``[B]`` at positions ``pos`` ``[B]``; their keys/values are appended
        to ``cache`` (`turngym.agents.kv` buffer layers). ``attn`` ``[B, C]``: which of the C attended cached columns
        (``layer.keys``) are real for each row."""
        import torch

        key = (self.mode, self.fused, tok.shape[0] == 1, str(tok.device))
        first = self.compile and key not in _SEEN
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits, new_k, new_v = self._fn()(
                tok, pos, attn.bool(), [L.keys for L in cache.layers], [L.values for L in cache.layers],
                *self.weights(), self.n_heads, self.n_kv, self.eps, self.fused)
            for L, k, v in zip(cache.layers, new_k, new_v):
                L.update(k[:, :, None, :], v[:, :, None, :])
        if first:
            _SEEN.add(key)
            took = time.perf_counter() - t0
            self.compile_seconds += took
            log.info("turngym: compiled the decode step (mode %s, batch %s) in %.1f s", self.mode,
                     "1" if key[2] else ">1", took)
        return logits
