"""Batch-packed multi-target backpropagation: B target rows per backward pass over one forward pass.

Batch element b of the backward is seeded with g_t at its own target token j_b only. Instead of running the
forward B times (a batch of B copies of the input), the B seeds go through *one* retained forward graph as a
batched vector-Jacobian product, ``torch.autograd.grad(..., is_grads_batched=True)``, which vmaps the backward
pass. The AttnLRP rules are detach identities and scalings, and transformers' SDPA attention backward has batching
rules, so the vmapped backward is exact (tests compare every row with the naive single-target pass). If the
vmapped backward raises, or warns that it ran an operator without a batching rule as a slow per-sample loop, the
transition switches to the replicated batch: the forward runs on B stacked copies and an ordinary backward gives B
rows.

B is chosen from a memory budget (see :func:`batch_size_for`): ⌈n/B⌉ backward passes per transition.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

Tensor = torch.Tensor


def per_target_bytes(n: int, config: Any, dtype: torch.dtype = torch.float32) -> int:
    """Rough memory of one batch element of a decoder layer's backward (activations and their gradients)."""
    d = int(getattr(config, "hidden_size", 1024) or 1024)
    ff = int(getattr(config, "intermediate_size", 4 * d) or 4 * d)
    heads = int(getattr(config, "num_attention_heads", 8) or 8)
    size = torch.finfo(dtype).bits // 8
    return size * n * (10 * d + 4 * ff + 2 * heads * min(n, 4096))


def batch_size_for(n: int, config: Any, budget_bytes: int, dtype: torch.dtype = torch.float32) -> int:
    """Targets per backward pass that fit ``budget_bytes`` (at least 1, at most n)."""
    return max(1, min(n, budget_bytes // max(per_target_bytes(n, config, dtype), 1)))


class PackedEdges:
    """Edge rows of one transition, B targets per (vmapped) backward pass."""

    name = "packed"

    def __init__(self, fn: Callable[[Tensor], Tensor], h_s: Tensor, g_t: Tensor, batch_size: int) -> None:
        self.fn = fn
        self.h_s = h_s.detach()
        self.g_t = g_t.detach()
        self.batch_size = max(1, int(batch_size))
        self.mode = "batched-vjp"
        self.vmap_fallbacks: list[str] = []
        self.x = self.h_s[None].clone().requires_grad_(True)
        with torch.enable_grad():
            self.y = fn(self.x)
        if self.y.shape != self.x.shape:
            raise ValueError(f"transition output shape {tuple(self.y.shape)} != input shape {tuple(self.x.shape)}")

    def _seeds(self, rows: list[int], like: Tensor) -> Tensor:
        seeds = torch.zeros((len(rows),) + tuple(like.shape[1:]), dtype=like.dtype, device=like.device)
        idx = torch.arange(len(rows), device=like.device)
        cols = torch.as_tensor(rows, device=like.device)
        seeds[idx, cols] = self.g_t[cols].to(like.dtype)
        return seeds

    def _batched(self, rows: list[int]) -> Tensor:
        seeds = self._seeds(rows, self.y[0:1].expand(len(rows), *self.y.shape[1:]))[:, None]  # [B, 1, n, d]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (grads,) = torch.autograd.grad(self.y, self.x, seeds, retain_graph=True, is_grads_batched=True)
        slow = [str(w.message) for w in caught if "batching rule" in str(w.message)]
        if slow:
            # vmap ran some op as a per-sample loop: still exact, but the replicated batch is faster from here on
            self.vmap_fallbacks.extend(slow[:3])
            self.mode = "replicated-batch"
        return grads[:, 0]

    def _replicated(self, rows: list[int]) -> Tensor:
        xb = self.h_s[None].expand(len(rows), *self.h_s.shape).clone().requires_grad_(True)
        with torch.enable_grad():
            yb = self.fn(xb)
            (grads,) = torch.autograd.grad(yb, xb, self._seeds(rows, yb))
        return grads

    def rows(self, rows: Tensor) -> Tensor:
        """A[rows, :] as float32, ⌈len(rows)/B⌉ backward passes."""
        out = torch.empty(len(rows), self.h_s.shape[0], dtype=torch.float32, device=self.h_s.device)
        all_rows = rows.tolist()
        for start in range(0, len(all_rows), self.batch_size):
            chunk = all_rows[start:start + self.batch_size]
            if self.mode == "batched-vjp":
                try:
                    grads = self._batched(chunk)
                except RuntimeError:
                    self.mode = "replicated-batch"
            if self.mode == "replicated-batch":
                grads = self._replicated(chunk)
            out[start:start + len(chunk)] = (self.h_s.double()[None] * grads.double()).sum(-1).float()
        return out

    def rows_per_chunk(self, budget_bytes: int) -> int:
        """Rows handed over per call: a few packed batches."""
        return 4 * self.batch_size

    def close(self) -> None:
        """Drop the retained forward graph."""
        self.y = None  # type: ignore[assignment]
