"""Masking by hand, the reference of the masking tests: the embeddings of the masked positions set to zero, one plain
forward pass per set of positions (no prefix reuse, none of failtrace's masking search)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from failtrace.attribution.engine import base_and_head, final_logits


@torch.no_grad()
def masked_objective(
    model: nn.Module,
    ids: Sequence[int],
    masks: Sequence[Sequence[int]],
    objective: Callable[[torch.Tensor], torch.Tensor],
    batch: int = 8,
) -> list[float]:
    """The objective at the last position for each set of masked positions (one forward per set, batched)."""
    device = next(model.parameters()).device
    base, head = base_and_head(model)
    emb = model.get_input_embeddings()(torch.tensor([list(ids)], device=device))[0]
    values: list[float] = []
    for start in range(0, len(masks), batch):
        chunk = masks[start:start + batch]
        x = emb.unsqueeze(0).repeat(len(chunk), 1, 1)
        for row, positions in enumerate(chunk):
            if len(positions):
                x[row, list(positions)] = 0
        last = base(inputs_embeds=x, use_cache=False).last_hidden_state[:, -1]
        values.extend(float(v) for v in objective(final_logits(model, head, last)))
    return values
