"""Comparison baselines that are not gradients: raw attention, and seeded random relevance (the floor).

``attention``: the last decoder layer's attention weights from the last position (the one whose next-token logits
are explained) to every position, averaged over heads: R_i = (1/H) Σ_h softmax(q_h,last · k_h,i / √d)_i. It is not
contrastive (it ignores target and contrast) and non-negative; it sums to 1 over positions. We chose raw last-layer
attention over rollout because it needs no assumption about how the residual stream mixes (rollout's "add the
identity and renormalise" is a heuristic) and it is what "the model looks at" usually means.

The weights come from transformers' own eager attention: the model is switched to ``eager`` for the call and
switched back after (sdpa/flash kernels do not return the weights). Only the last layer's last row is kept, taken
from that layer's attention module by a forward hook: ``output_attentions=True`` kept every layer's T×T weights
(layers × heads × T² floats: 25 GB for SmolLM2 at 4,800 tokens, which the kernel's OOM killer ended), while eager
attention holds one layer's weights at a time.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from failtrace.errors import FailtraceError
from failtrace.lrp.patch import attention_modules, decoder_layers
from failtrace.models.forward import forward_logits


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with eager attention inside the block (its previous implementation is restored after)."""
    before = getattr(model.config, "_attn_implementation", None)
    switch = before != "eager"
    if switch:
        if not hasattr(model, "set_attn_implementation"):
            raise FailtraceError("this transformers release cannot switch attention implementations; "
                                 "load the model with attn_implementation='eager' for the attention baseline")
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch and before is not None:
            model.set_attn_implementation(before)


@torch.no_grad()
def attention_relevance(model: nn.Module, token_ids: Sequence[int]) -> np.ndarray:
    """Mean over heads of the last layer's attention from the last position: one value per token (sums to 1)."""
    if len(token_ids) == 0:
        raise FailtraceError("attention relevance needs at least one token")
    device = next(model.parameters()).device
    ids = torch.tensor([list(token_ids)], device=device)
    modules = attention_modules(decoder_layers(model)[-1])
    if not modules:
        raise FailtraceError(f"{type(model).__name__}: no attention module found in its last layer")
    kept: list[torch.Tensor] = []

    def keep_last_row(_mod: nn.Module, _args: Any, out: Any) -> None:
        weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if weights is not None:
            kept.append(weights[0, :, -1, :].detach().double().clone())  # (heads, T): the one row explained

    handle = modules[0][1].register_forward_hook(keep_last_row)
    try:
        with eager_attention(model):
            forward_logits(model, keep=1, input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    if not kept:
        raise FailtraceError(f"{type(model).__name__} returned no attention weights; the attention baseline needs "
                             "a model whose eager attention reports them")
    return kept[-1].mean(0).cpu().numpy()


def random_relevance(n: int, seed: int) -> np.ndarray:
    """Seeded uniform relevance in (0, 1] for ``n`` tokens: every token positive, so the top-k masking order is a
    random order fixed by ``seed`` (numpy's PCG64 via ``default_rng``)."""
    if n < 0:
        raise FailtraceError(f"random relevance needs n >= 0, got {n}")
    return 1.0 - np.random.default_rng(int(seed)).random(int(n))


def _objective_at(model: nn.Module, ids: Sequence[int], objective: Any) -> tuple[float, torch.Tensor]:
    """The objective and the logits at the real input, from one plain forward: the value every method records."""
    from failtrace.attribution.engine import base_and_head, final_logits

    with torch.no_grad():
        base, head = base_and_head(model)
        device = next(model.parameters()).device
        last = base(input_ids=torch.tensor([list(ids)], device=device), use_cache=False).last_hidden_state[0, -1]
        logits = final_logits(model, head, last)
        return float(objective(logits)), logits.detach()


def attention_method(model: nn.Module, ids: Sequence[int], objective: Any, *, with_value: bool = True,
                     **_: Any) -> Any:
    """The ``attention`` entry of the method registry: attention relevance as the input row, plus the objective at
    the real input (one extra plain forward, so the record's Δℓ is the same as every other method's; skipped with
    ``with_value=False``, as an analysis asks: value NaN, no logits)."""
    from failtrace.attribution.methods import MethodResult

    relevance = attention_relevance(model, ids)
    value, logits = _objective_at(model, ids, objective) if with_value else (float("nan"), torch.empty(0))
    return MethodResult(relevance[None, :], value, logits, {"note": "raw last-layer attention, mean of heads"})


def random_method(model: nn.Module, ids: Sequence[int], objective: Any, *, seed: int = 0, with_value: bool = True,
                  **_: Any) -> Any:
    """The ``random`` entry of the method registry: :func:`random_relevance` under ``seed`` as the input row (an
    analysis passes each case's own seed), plus the objective at the real input (not with ``with_value=False``)."""
    from failtrace.attribution.methods import MethodResult

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FailtraceError(f"the random baseline's seed must be an integer >= 0, got {seed!r}")
    value, logits = _objective_at(model, ids, objective) if with_value else (float("nan"), torch.empty(0))
    return MethodResult(random_relevance(len(ids), seed)[None, :], value, logits, {"seed": int(seed)})
