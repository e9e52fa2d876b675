"""The decoding references of the tests, with no failtrace decoding involved: transformers' own greedy ``generate``
and a from-scratch loop (a full forward pass per new token, no cache)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def hf_greedy(model: Any, ids: list[int], budget: int, eos: frozenset[int], pad: int) -> list[int]:
    """The new tokens of ``model.generate`` (greedy, batch 1, no padding) after ``ids``, up to and with an EOS."""
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=budget, do_sample=False, eos_token_id=sorted(eos), pad_token_id=pad,
                             top_p=None, top_k=None, temperature=None)
    return ref[0, len(ids):].tolist()


def naive_greedy(model: Any, ids: Sequence[int], budget: int, eos: frozenset[int],
                 forced: int | None = None) -> list[int]:
    """Reference decoding without any cache: a full forward pass over the whole sequence for every new token.

    With ``forced``, that token is the first output (as in a rollout) and greedy decoding continues after it.
    """
    device = next(model.parameters()).device
    seq = list(ids)
    out: list[int] = []
    with torch.no_grad():
        while len(out) < budget:
            if forced is not None and not out:
                t = int(forced)
            else:
                logits = model(input_ids=torch.tensor([seq], dtype=torch.long, device=device), use_cache=False).logits
                t = int(logits[0, -1].argmax(-1))
            out.append(t)
            seq.append(t)
            if t in eos:
                break
    return out
