"""The KV cache of greedy decoding and rollouts: transformers' dynamic cache, with layers that grow in place.

transformers' ``DynamicLayer`` appends each new token with ``torch.cat``, which copies the layer's whole cache on
every decoded token: for a batch of rows with long contexts (40 rollouts of a 1024-token budget) that copy, not the
model's matmuls, was most of the step time (measured: docs/PERF.md). :class:`GrowingLayer` keeps keys and values in
a buffer with spare room, writes each new token in place and hands attention a view of the filled part, so a token
costs O(1) copies (a buffer is reallocated only when full, by half again its size, up to ``max_len``). Same values
in the same order as the dynamic layer, so decoding is token-identical (tested against cache-free decoding). Written
here because transformers' static cache attends over its whole preallocated length from the first token, and no
library offers an appending cache without the per-token copy.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any


def _growing_layer_class() -> type | None:
    """:class:`GrowingLayer` for this transformers version, or None where its cache has no layers (then the plain
    dynamic cache is used)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers without cache layers
        return None

    class GrowingLayer(DynamicLayer):  # type: ignore[misc, valid-type]
        """A full-attention cache layer whose ``keys``/``values`` are views of a buffer filled in place."""

        def __init__(self, max_len: int | None = None) -> None:
            super().__init__()
            self.max_len = max_len
            self._kbuf: Any = None
            self._vbuf: Any = None
            self._n = 0

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            n, q = self._n, int(key_states.shape[-2])
            if not self.is_initialized:
                self.device, self.dtype, self.is_initialized = key_states.device, key_states.dtype, True
            if self._kbuf is None or n + q > self._kbuf.shape[-2] or self._kbuf.shape[0] != key_states.shape[0]:
                room = max(n + q + 64, (3 * (n + q)) // 2)
                self._grow(key_states, value_states, room if self.max_len is None else max(n + q, min(room,
                                                                                                     self.max_len)))
            self._kbuf[:, :, n:n + q] = key_states
            self._vbuf[:, :, n:n + q] = value_states
            self._n = n + q
            self.keys, self.values = self._kbuf[:, :, :self._n], self._vbuf[:, :, :self._n]
            return self.keys, self.values

        def _grow(self, key_states: Any, value_states: Any, capacity: int) -> None:
            k, v = key_states, value_states
            kbuf = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[-1])
            vbuf = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[-1])
            if self._n:
                kbuf[:, :, :self._n] = self.keys
                vbuf[:, :, :self._n] = self.values
            self._kbuf, self._vbuf = kbuf, vbuf

        def batch_select_indices(self, indices: Any) -> None:
            if self._n:
                self._kbuf, self._vbuf = self._kbuf[indices], self._vbuf[indices]
                self.keys, self.values = self._kbuf[:, :, :self._n], self._vbuf[:, :, :self._n]

    return GrowingLayer


@functools.lru_cache(maxsize=1)
def growing_layer() -> type | None:
    """The in-place growing cache layer class for the installed transformers (None where its cache has no
    layers), built once."""
    return _growing_layer_class()


def new_cache(max_len: int | None = None) -> Any:
    """An empty KV cache (full length on every layer) whose layers grow in place; ``max_len`` bounds a layer's
    buffer when the final length is known (a rollout's prefix plus its budget)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    layer = growing_layer()
    if layer is not None and hasattr(cache, "layer_class_to_replicate") and not cache.layers:
        cache.layer_class_to_replicate = functools.partial(layer, max_len=max_len)
    return cache


def cache_tensors(cache: Any) -> list[tuple[Any, Any]]:
    """Per-layer (keys, values) tensors of a dynamic cache, shape (batch, kv_heads, length, head_dim)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # older transformers


def cache_from_prefix(kv: Sequence[tuple[Any, Any]], length: int, batch: int, max_len: int | None = None) -> Any:
    """A new cache holding the first ``length`` positions of ``kv`` (batch 1), repeated for ``batch`` rows."""
    cache = new_cache(max_len)
    for layer, (k, v) in enumerate(kv):
        cache.update(k[:, :, :length].expand(batch, -1, -1, -1), v[:, :, :length].expand(batch, -1, -1, -1), layer)
    return cache


def select_rows(cache: Any, rows: Any) -> None:
    """Keep only ``rows`` (a LongTensor of batch indices) in every layer of ``cache``."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
        return
    for layer in cache.layers:  # pragma: no cover - fallback for caches without the method
        layer.keys = layer.keys[rows]
        layer.values = layer.values[rows]


def gather_positions(cache: Any, index: Any) -> None:
    """Replace every layer's positions by ``index`` (batch, length): row b keeps its positions ``index[b]``, in that
    order. Attention reads keys as a set (their rotary positions are baked in), so moving a row's positions changes
    nothing as long as its attention mask moves with them; used to squeeze out rejected draft positions."""
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        idx = index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
        k, v = k.gather(2, idx), v.gather(2, idx)
        if hasattr(layer, "_n"):
            layer._n, layer._kbuf, layer._vbuf = 0, None, None
            layer.update(k, v)
        else:
            layer.keys, layer.values = k, v
