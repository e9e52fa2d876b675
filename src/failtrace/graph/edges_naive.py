"""Reference edges: one backward pass per target token.

For a transition h_t = F(h_s) (a decoder layer, or one of its sub-blocks, under the AttnLRP rules), the edge from
source token i to target token j is A[j, i] = Σ_k h_s^{(i,k)} ∂⟨h_t^{(j)}, g_t^{(j)}⟩/∂h_s^{(i,k)}: seed the backward
with g_t at row j only, and multiply the gradient that reaches h_s by h_s. One forward pass, n backward passes.
This is the definition itself, used as the reference that the other methods are tested against.
"""

from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor


class NaiveEdges:
    """Edge rows of one transition by single-target backward passes over one retained forward graph."""

    name = "naive"

    def __init__(self, fn: Callable[[Tensor], Tensor], h_s: Tensor, g_t: Tensor) -> None:
        self.h_s = h_s.detach()
        self.g_t = g_t.detach()
        self.x = self.h_s[None].clone().requires_grad_(True)
        with torch.enable_grad():
            self.y = fn(self.x)
        if self.y.shape != self.x.shape:
            raise ValueError(f"transition output shape {tuple(self.y.shape)} != input shape {tuple(self.x.shape)}")

    def rows(self, rows: Tensor) -> Tensor:
        """A[rows, :] as float32, one backward pass per row."""
        out = torch.empty(len(rows), self.h_s.shape[0], dtype=torch.float32, device=self.h_s.device)
        seed = torch.zeros_like(self.y)
        for r, j in enumerate(rows.tolist()):
            seed[0, j] = self.g_t[j].to(seed.dtype)
            (grad,) = torch.autograd.grad(self.y, self.x, seed, retain_graph=True)
            seed[0, j] = 0
            out[r] = (self.h_s.double() * grad[0].double()).sum(-1).float()
        return out

    def rows_per_chunk(self, budget_bytes: int) -> int:
        """Rows handed over per call (the cost is one backward per row regardless)."""
        return 64

    def close(self) -> None:
        """Drop the retained forward graph."""
        self.y = None  # type: ignore[assignment]
