"""Objectives: the scalar whose relevance is explained, computed from the logits at one position.

``logit_diff`` (default) is the paper's Δℓ = ℓ(target) − ℓ(contrast). The others are what users of attribution tools
expect when no contrast is given: the target logit alone, the target minus the mean of the k largest other logits,
and the target minus the mean over the vocabulary. Each is registered by name in :data:`OBJECTIVES`; a new one is one
decorated function ``(logits [..., vocab], target id, contrast id or None, k) -> [...]`` (differentiable).
"""

from __future__ import annotations

from typing import Callable

import torch

from failtrace.errors import FailtraceError

Tensor = torch.Tensor
ObjectiveFn = Callable[[Tensor, int, "int | None", int], Tensor]
OBJECTIVES: dict[str, ObjectiveFn] = {}
SYMBOLS: dict[str, str] = {}  # how the views name each objective's value (the row label, "37% of Δℓ")


def register_objective(name: str, symbol: str | None = None) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Decorator: make ``fn`` available as ``objective=name`` (and ``--objective name``), its value shown as
    ``symbol`` (default: the name)."""

    def add(fn: ObjectiveFn) -> ObjectiveFn:
        OBJECTIVES[name] = fn
        SYMBOLS[name] = symbol or name
        return fn

    return add


def objective_symbol(objective: str) -> str:
    """The objective's value as the views name it: Δℓ for the paper's logit difference."""
    return SYMBOLS.get(objective, objective)


@register_objective("logit_diff", "Δℓ")
def logit_diff(logits: Tensor, target: int, contrast: int | None, k: int = 10) -> Tensor:
    """Δℓ = ℓ(target) − ℓ(contrast)."""
    if contrast is None:
        raise FailtraceError("objective 'logit_diff' needs a contrast token (--contrast)")
    return logits[..., target] - logits[..., contrast]


@register_objective("max_logit", "ℓ(target)")
def max_logit(logits: Tensor, target: int, contrast: int | None, k: int = 10) -> Tensor:
    """ℓ(target)."""
    return logits[..., target]


@register_objective("topk_mean", "ℓ(target) − top-k mean")
def topk_mean(logits: Tensor, target: int, contrast: int | None, k: int = 10) -> Tensor:
    """ℓ(target) − mean of the k largest other logits."""
    others = logits.clone()
    others[..., target] = float("-inf")
    top = torch.topk(others, k=min(k, logits.shape[-1] - 1), dim=-1).values
    return logits[..., target] - top.mean(dim=-1)


@register_objective("vocab_mean", "ℓ(target) − vocabulary mean")
def vocab_mean(logits: Tensor, target: int, contrast: int | None, k: int = 10) -> Tensor:
    """ℓ(target) − mean over the vocabulary."""
    return logits[..., target] - logits.mean(dim=-1)


def check_objective(objective: str) -> str:
    """``objective`` if it is registered, else a :class:`FailtraceError` listing the valid names."""
    if objective not in OBJECTIVES:
        raise FailtraceError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    return objective


def objective_value(logits: Tensor, objective: str, target: int, contrast: int | None, k: int = 10) -> Tensor:
    """The objective for each row of ``logits`` (shape [..., vocab]); differentiable."""
    return OBJECTIVES[check_objective(objective)](logits, target, contrast, k)
