"""KV-cache helpers for `HFPolicy`: a preallocated cache layer and a cross-turn prefix cache.

Multi-turn rollouts re-send each episode's whole context every round; re-running the forward pass over it
(prefill) costs more than generating the turn. `PrefixCache` keeps, per sampled row, the keys/values of
``context + sampled ids[:-1]`` from the last generate call; the next call looks up the longest cached prefix
of each new context and only runs the model on the suffix (the new observation). Entries are dropped when
the model's parameters change (tracked through each parameter's in-place version counter and storage
pointer), so an optimizer step or a weight load never reuses stale keys/values.

`BufferLayer` replaces transformers' concatenating `DynamicLayer` with a preallocated buffer (writes in
place; returns views of the filled positions only), which halves the per-token decode cost on CPU for long
contexts. Finished rows are removed by `BufferLayer.move_rows` + `BufferLayer.keep_rows` (live rows from the
tail are copied into the dead slots, then the batch is narrowed: the copy is proportional to the rows moved, not
to the whole cache), and `BufferLayer.set_start` hides the leading columns that are padding for every live row.

Both depend on transformers' cache-layer API (``transformers.cache_utils.DynamicLayer``, transformers >= 4.56);
`cache_support` says whether the installed version and the model's layer types allow them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def cache_support(model: Any) -> bool:
    """True when the model uses plain (non-sliding) dynamic cache layers of the transformers 5 API."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:
        return False
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - any failure means: use the model's own cache
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _buffer_layer_class():
    import torch
    from transformers.cache_utils import DynamicLayer

    class BufferLayer(DynamicLayer):
        """A dynamic cache layer backed by a preallocated ``[B, H, capacity, D]`` buffer (grows by doubling).

        Columns ``[0, n)`` are filled; attention sees ``[start, n)`` (``start`` > 0 once every live row has
        padding there), so `get_seq_length` is ``n - start`` and the caller passes the 2-D attention mask
        sliced the same way.
        """

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = int(capacity)
            self.n = 0
            self.start = 0

        def _views(self) -> None:
            self.keys, self.values = self.kbuf[:, :, self.start: self.n], self.vbuf[:, :, self.start: self.n]

        def lazy_initialization(self, key_states, value_states) -> None:
            self.device = key_states.device
            B, H, _, D = key_states.shape
            self.kbuf = key_states.new_zeros(B, H, self.capacity, D)
            self.vbuf = value_states.new_zeros(B, H, self.capacity, value_states.shape[-1])
            self.start = 0
            self._views()
            self.is_initialized = True

        def _grow(self, need: int) -> None:
            cap = max(2 * self.kbuf.shape[2], need)
            nk = self.kbuf.new_zeros(*self.kbuf.shape[:2], cap, self.kbuf.shape[3])
            nv = self.vbuf.new_zeros(*self.vbuf.shape[:2], cap, self.vbuf.shape[3])
            nk[:, :, : self.n] = self.kbuf[:, :, : self.n]
            nv[:, :, : self.n] = self.vbuf[:, :, : self.n]
            self.kbuf, self.vbuf = nk, nv

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            s = key_states.shape[-2]
            if self.n + s > self.kbuf.shape[2]:
                self._grow(self.n + s)
            self.kbuf[:, :, self.n: self.n + s] = key_states
            self.vbuf[:, :, self.n: self.n + s] = value_states
            self.n += s
            self._views()
            return self.keys, self.values

        def preload(self, kbuf, vbuf, n: int) -> None:
            """Start from given buffers whose first `n` positions are filled."""
            self.device = kbuf.device
            self.kbuf, self.vbuf, self.n, self.start = kbuf, vbuf, int(n), 0
            self._views()
            self.is_initialized = True

        def get_seq_length(self) -> int:
            return self.n - self.start

        def set_start(self, start: int) -> None:
            """Attend from column `start` on (the columns before it are padding for every live row)."""
            self.start = int(start)
            self._views()

        def move_rows(self, src, dst) -> None:
            """Copy the attended columns of batch rows `src` into rows `dst` (index tensors, same length)."""
            if self.is_initialized:
                self.kbuf[dst, :, self.start: self.n] = self.kbuf[src, :, self.start: self.n]
                self.vbuf[dst, :, self.start: self.n] = self.vbuf[src, :, self.start: self.n]

        def keep_rows(self, n_rows: int) -> None:
            """Narrow the batch to its first `n_rows` rows (a view: nothing is copied)."""
            if self.is_initialized:
                self.kbuf, self.vbuf = self.kbuf[:n_rows], self.vbuf[:n_rows]
                self._views()

        def batch_select_indices(self, indices) -> None:
            """Gather rows `indices` (copies every row's whole buffer; the legacy decode path)."""
            if self.is_initialized:
                self.kbuf, self.vbuf = self.kbuf[indices], self.vbuf[indices]
                self._views()

    del torch
    return BufferLayer


_BUFFER_LAYER = None


def new_cache(model: Any, capacity: int):
    """A `DynamicCache` whose layers are preallocated `BufferLayer`s of `capacity` positions."""
    global _BUFFER_LAYER
    from transformers.cache_utils import DynamicCache

    if _BUFFER_LAYER is None:
        _BUFFER_LAYER = _buffer_layer_class()
    cache = DynamicCache(config=model.config)
    cache.layers = [_BUFFER_LAYER(capacity) for _ in cache.layers]
    return cache


@dataclass
class Entry:
    """Keys/values of one token sequence: per layer ``(k [H, n, D], v [H, n, D])``.

    The tensors are copies, or views into the buffers of the batch that generated the sequence (`HFPolicy`
    copies them out before it reuses the row's slot); `nbytes` counts the viewed elements."""

    ids: list[int]
    kv: list[tuple[Any, Any]]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


class PrefixCache:
    """Keys/values of the sequences sampled in the last generate call, looked up by token prefix.

    Args:
        max_bytes: Memory budget; rows beyond it are not cached (they are prefilled in full next time).
        min_tokens: Shortest prefix worth reusing.
    """

    def __init__(self, max_bytes: int = 2 << 30, min_tokens: int = 16):
        self.max_bytes = int(max_bytes)
        self.min_tokens = int(min_tokens)
        self.entries: list[Entry] = []
        self._fingerprint: Any = None
        self.hits = 0
        self.reused_tokens = 0

    def clear(self) -> None:
        self.entries = []

    def check_model(self, model: Any) -> None:
        """Drop every entry if the model's parameters changed since they were stored."""
        fp = tuple((p.data_ptr(), p._version) for p in model.parameters())
        if fp != self._fingerprint:
            self.entries = []
            self._fingerprint = fp

    def lookup(self, ctx: list[int]) -> Entry | None:
        """The longest entry whose ids are a prefix of `ctx` (and shorter than it), or None."""
        best: Entry | None = None
        n_ctx = len(ctx)
        for e in self.entries:
            n = len(e.ids)
            if n < self.min_tokens or n >= n_ctx or (best is not None and n <= len(best.ids)):
                continue
            if ctx[n - 1] == e.ids[-1] and ctx[0] == e.ids[0] and ctx[:n] == e.ids:
                best = e
        return best

    def replace(self, entries: list[Entry]) -> None:
        """Keep `entries` (up to the memory budget) as the new cache content.

        Entries that are views into batch buffers are copied out when those buffers (padding and unused
        capacity included) would hold more memory than the budget, so the budget bounds what stays allocated.
        """
        kept, used = [], 0
        for e in entries:
            b = e.nbytes
            if used + b > self.max_bytes:
                continue
            kept.append(e)
            used += b
        storages = {}
        for e in kept:
            for k, v in e.kv:
                for t in (k, v):
                    st = t.untyped_storage()
                    storages[st.data_ptr()] = st.nbytes()
        if sum(storages.values()) > self.max_bytes:
            for e in kept:
                e.kv = [(k.clone(), v.clone()) for k, v in e.kv]
        self.entries = kept
