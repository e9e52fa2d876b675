"""transformers' own greedy ``generate``: the decoding reference of the tests, with no failtrace decoding involved."""

from __future__ import annotations

from typing import Any

import torch


def hf_greedy(model: Any, ids: list[int], budget: int, eos: frozenset[int], pad: int) -> list[int]:
    """The new tokens of ``model.generate`` (greedy, batch 1, no padding) after ``ids``, up to and with an EOS."""
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=budget, do_sample=False, eos_token_id=sorted(eos), pad_token_id=pad,
                             top_p=None, top_k=None, temperature=None)
    return ref[0, len(ids):].tolist()
