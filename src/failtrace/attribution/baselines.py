"""Baselines to compare AttnLRP with: integrated gradients (gradient × input is ``method="gradxinput"``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from failtrace.attribution.engine import base_and_head, final_logits
from failtrace.errors import FailtraceError

if TYPE_CHECKING:
    from failtrace.attribution.methods import MethodResult


MAX_IG_STEPS = 10_000  # one forward + backward each; published IG uses 20-300 steps


def integrated_gradients(
    model: nn.Module,
    ids: list[int],
    objective: Callable[[torch.Tensor], torch.Tensor],
    steps: int = 32,
    batch: int = 8,
) -> tuple[np.ndarray, float, torch.Tensor]:
    """Integrated gradients on the input embeddings from a zero baseline (Riemann midpoint rule, ``steps`` points).

    Returns per-token relevance, the objective at the real input, and its logits. Alphas are run ``batch`` at a time.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_IG_STEPS:
        raise FailtraceError(f"--ig-steps must be a whole number from 1 to {MAX_IG_STEPS}, got {steps!r}")
    device = next(model.parameters()).device
    base, head = base_and_head(model)
    emb = model.get_input_embeddings()(torch.tensor([ids], device=device)).detach()[0]
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    total = torch.zeros_like(emb, dtype=torch.float32)
    with torch.enable_grad():
        for start in range(0, steps, batch):
            a = alphas[start:start + batch].to(device, emb.dtype)
            x = (a[:, None, None] * emb[None]).requires_grad_(True)
            last = base(inputs_embeds=x, use_cache=False).last_hidden_state[:, -1]
            vals = objective(final_logits(model, head, last))
            (grad,) = torch.autograd.grad(vals.sum(), x)
            total += grad.float().sum(0)
        with torch.no_grad():
            last = base(inputs_embeds=emb[None], use_cache=False).last_hidden_state[0, -1]
            logits = final_logits(model, head, last)
            value = float(objective(logits))
    relevance = (emb.float() * total / steps).sum(-1)
    return relevance.double().cpu().numpy(), value, logits.float()


def ig_method(model: nn.Module, ids: list[int], objective: Callable[[torch.Tensor], torch.Tensor], *,
              ig_steps: int = 32, **_: object) -> MethodResult:
    """Integrated gradients as a registered attribution method (input relevance only)."""
    from failtrace.attribution.methods import MethodResult

    inp, value, logits = integrated_gradients(model, ids, objective, steps=ig_steps)
    return MethodResult(inp[None, :], value, logits, {
        "ig_steps": ig_steps, "hidden_relevance": "input only (integrated gradients explains the embeddings)"})
