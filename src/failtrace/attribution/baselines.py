"""Baselines to compare AttnLRP with: integrated gradients (gradient × input is ``method="gradxinput"``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from failtrace.attribution.engine import CHECKPOINT_ABOVE, base_and_head, checkpointed_layers, final_logits
from failtrace.lrp.patch import decoder_layers
from failtrace.errors import FailtraceError

if TYPE_CHECKING:
    from failtrace.attribution.methods import MethodResult


IG_STEPS = 32  # interpolation points of a one-prompt attribution (an analysis records its own, 16 by default)
MAX_IG_STEPS = 10_000  # one forward + backward each; published IG uses 20-300 steps
IG_BATCH = 8  # interpolation points per forward + backward on short inputs
IG_MEMORY_BUDGET = 2 * 2**30  # bytes of saved activations one IG batch may hold (long inputs run fewer points)


def ig_batch_size(config: Any, n_tokens: int, dtype: torch.dtype = torch.float32, budget: int = IG_MEMORY_BUDGET,
                  most: int = IG_BATCH, checkpointed: bool = False) -> int:
    """Interpolation points per backward pass: as many as fit ``budget``, 1 to ``most``.

    One point's backward keeps about n_tokens · layers · (10·hidden + 3·intermediate) activations (the inputs of a
    layer's linear maps, norms and activation function); fitted on SmolLM2 at 500–2,000 tokens, where a point costs
    1.15 MB per token in float32. Eight points at 4,800 tokens (46 GB) were killed on a 23 GB machine. Under
    per-layer checkpointing (inputs above CHECKPOINT_ABOVE tokens, as AttnLRP) a point keeps each layer's input
    (layers · hidden) plus one layer's activations while it is recomputed. The batch only regroups the same points,
    so the result is the same up to float summation order.
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    inter = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 1)
    layer = 10 * hidden + 3 * inter
    per_token = layers * hidden + layer if checkpointed else layers * layer
    per_point = max(1, n_tokens * per_token * torch.finfo(dtype).bits // 8)
    return max(1, min(most, budget // per_point))


def check_ig_steps(steps: object) -> None:
    """Refuse a step count IG cannot run (a CLI checks it before the model loads)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_IG_STEPS:
        raise FailtraceError(f"--ig-steps must be a whole number from 1 to {MAX_IG_STEPS}, got {steps!r}")


def integrated_gradients(
    model: nn.Module,
    ids: list[int],
    objective: Callable[[torch.Tensor], torch.Tensor],
    steps: int = IG_STEPS,
    batch: int | None = None,
) -> tuple[np.ndarray, float, torch.Tensor]:
    """Integrated gradients on the input embeddings from a zero baseline (Riemann midpoint rule, ``steps`` points).

    Returns per-token relevance, the objective at the real input, and its logits. Alphas are run ``batch`` at a time
    (default: as many as :func:`ig_batch_size` fits in :data:`IG_MEMORY_BUDGET`).
    """
    check_ig_steps(steps)
    device = next(model.parameters()).device
    base, head = base_and_head(model)
    emb = model.get_input_embeddings()(torch.tensor([ids], device=device)).detach()[0]
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    total = torch.zeros_like(emb, dtype=torch.float64)  # the points' gradients summed in float64: any batching
    long_input = len(ids) > CHECKPOINT_ABOVE  # as AttnLRP: recompute each layer in the backward pass
    if batch is None:
        batch = ig_batch_size(model.config, len(ids), emb.dtype, checkpointed=long_input)
    with torch.enable_grad(), checkpointed_layers(decoder_layers(model), long_input):
        for start in range(0, steps, batch):
            a = alphas[start:start + batch].to(device, emb.dtype)
            x = (a[:, None, None] * emb[None]).requires_grad_(True)
            last = base(inputs_embeds=x, use_cache=False).last_hidden_state[:, -1]
            vals = objective(final_logits(model, head, last))
            (grad,) = torch.autograd.grad(vals.sum(), x)
            total += grad.double().sum(0)
        with torch.no_grad():
            last = base(inputs_embeds=emb[None], use_cache=False).last_hidden_state[0, -1]
            logits = final_logits(model, head, last)
            value = float(objective(logits))
    relevance = (emb.double() * total / steps).sum(-1)
    return relevance.double().cpu().numpy(), value, logits.float()


def baseline_value(model: nn.Module, n_tokens: int, objective: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """The objective at IG's baseline, every input embedding zero: integrated gradients sum to the objective minus
    this as the steps grow, so the views can say how far a run's sum is from it (one forward pass)."""
    base, head = base_and_head(model)
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        zeros = torch.zeros(1, n_tokens, weight.shape[1], dtype=weight.dtype, device=weight.device)
        return float(objective(final_logits(model, head, base(inputs_embeds=zeros, use_cache=False)
                                            .last_hidden_state[0, -1])))


def ig_method(model: nn.Module, ids: list[int], objective: Callable[[torch.Tensor], torch.Tensor], *,
              ig_steps: int = IG_STEPS, with_value: bool = True, **_: object) -> MethodResult:
    """Integrated gradients as a registered attribution method (input relevance only); with ``with_value`` also
    the objective at the baseline (``baseline_value`` in the meta; an analysis does not ask for it)."""
    from failtrace.attribution.methods import MethodResult

    inp, value, logits = integrated_gradients(model, ids, objective, steps=ig_steps)
    meta: dict[str, object] = {"ig_steps": ig_steps,
                               "hidden_relevance": "input only (integrated gradients explains the embeddings)"}
    if with_value:
        meta["baseline_value"] = baseline_value(model, len(ids), objective)
    return MethodResult(inp[None, :], value, logits, meta)
