"""Objectives: the scalar whose relevance is explained, computed from the logits at one position.

``logit_diff`` (default) is the paper's Δℓ = ℓ(target) − ℓ(contrast). The others are what users of attribution tools
expect when no contrast is given: the target logit alone, the target minus the mean of the k largest other logits,
and the target minus the mean over the vocabulary.
"""

from __future__ import annotations

import torch

from failtrace.errors import FailtraceError

OBJECTIVES: tuple[str, ...] = ("logit_diff", "max_logit", "topk_mean", "vocab_mean")


def objective_value(logits: torch.Tensor, objective: str, target: int, contrast: int | None, k: int = 10) -> torch.Tensor:
    """The objective for each row of ``logits`` (shape [..., vocab]); differentiable."""
    if objective == "logit_diff":
        if contrast is None:
            raise FailtraceError("objective 'logit_diff' needs a contrast token (--contrast)")
        return logits[..., target] - logits[..., contrast]
    if objective == "max_logit":
        return logits[..., target]
    if objective == "topk_mean":
        others = logits.clone()
        others[..., target] = float("-inf")
        top = torch.topk(others, k=min(k, logits.shape[-1] - 1), dim=-1).values
        return logits[..., target] - top.mean(dim=-1)
    if objective == "vocab_mean":
        return logits[..., target] - logits.mean(dim=-1)
    raise FailtraceError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
