"""The order in which the pair search rolls out completion positions (speed only: the pair found never changes).

``in-order`` takes positions 0, 1, 2, ...; ``margin`` takes first the positions where the model's top-1 logit
leads its top-2 logit by the least (``m_p = z_(1) − z_(2)``, smallest first); ``entropy`` those where its
next-token distribution is widest (``H_p = −Σ_v π_v log π_v`` with ``π = softmax(z)``, largest first). Ties go
to the earlier position. Both come from the logits the shared prefix pass already computed: no extra forward.

Whatever the order, the search reports the *smallest* recovering position (and there the first recovering
alternative in rank order): once a position q recovers, only positions < q are still rolled out. So every order
must roll out all live positions < q, and in-order rolls out exactly those and q (plus what a block batches past
q): no order needs fewer rollouts than in-order. Another order pays off only where that waste is cheap and the
hint is right, e.g. a judge's hint at q, after which the positions < q are batched in full blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ORDERS = ("in-order", "margin", "entropy")


def position_scores(logits: Any, order: str) -> list[float]:
    """Per row of ``logits`` (positions × vocab), the sort key of ``order`` (smaller goes first)."""
    import torch

    z = logits.double()
    if order == "margin":
        top = torch.topk(z, min(2, z.shape[-1]), dim=-1).values
        return (top[:, 0] - top[:, -1]).tolist()
    if order == "entropy":
        logp = torch.log_softmax(z, dim=-1)
        return (torch.exp(logp) * logp).sum(-1).tolist()  # = −H: the widest distribution first
    raise ValueError(f"order {order!r} has no scores; valid: {', '.join(ORDERS)}")


def rank_positions(positions: Sequence[int], logits: Any, order: str, first: int | None = None) -> list[int]:
    """``positions`` (completion offsets; ``logits[p]`` is the next-token row at offset p) in roll-out order.

    ``first`` (a judge's hint) goes before everything when it is one of ``positions``.
    """
    if order == "in-order":
        ranked = list(positions)
    else:
        scores = position_scores(logits[list(positions)], order) if positions else []
        ranked = [p for _, p in sorted(zip(scores, positions, strict=True))]
    if first is not None and first in ranked:
        ranked.remove(first)
        ranked.insert(0, first)
    return ranked
