"""The exhaustive in-order pair search, with nothing shared between rollouts: the reference the fast search must equal.

Position by position, it recomputes the next-token logits from scratch, takes the top-k alternatives (then a
sibling's, if given), and decodes each rollout on its own to the full budget (no early stopping, no batching, no
shared cache), checking each in order with the benchmark's checker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from failtrace.benchmarks.base import Benchmark, Item
from failtrace.failures.collect import safe_check
from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate, pad_token_id
from failtrace_testkit.reference_decoding import naive_greedy


@dataclass
class ReferencePair:
    """What the exhaustive search found: None fields when nothing recovered."""

    offset: int | None
    contrast: int | None
    rank: int | None
    source: str | None
    rollouts: int
    tokens: int
    unverifiable: int


def _top(model: Any, ids: list[int], target: int, k: int, vocab: int | None = None) -> list[int]:
    """The top-k next tokens after ``ids`` other than ``target``, from a plain forward pass of the model (not the
    search's shared prefix pass, so a fault there shows as a difference)."""
    import torch

    with torch.no_grad():
        row = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
    ranked = [t for t in torch.topk(row, min(k + 1, row.shape[-1])).indices.tolist() if t != target]
    return [t for t in ranked if vocab is None or t < vocab][:k]


def exhaustive_search(loaded: Any, benchmark: Benchmark, item: Item, prompt: Sequence[int],
                      completion: Sequence[int], budget: int, top_k: int, max_positions: int = 64,
                      helper: Any | None = None, naive: bool = False) -> ReferencePair:
    """The first (position, alternative) in order whose own from-scratch rollout passes the checker.

    ``naive`` decodes every token with a full forward pass and no cache (:func:`naive_greedy`); otherwise each
    rollout is a plain batch-1 cached greedy generation from its own prompt.
    """
    eos = eos_token_ids(loaded.model, loaded.tokenizer)
    pad = pad_token_id(loaded.tokenizer, eos)
    prompt, comp = list(prompt), list(completion)
    vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
    n_roll = n_tok = n_unver = 0
    for p in range(min(len(comp), max_positions)):
        if budget - p < 1:
            break
        ctx = prompt + comp[:p]
        own = _top(loaded.model, ctx, comp[p], top_k)
        order = [(a, "model", r) for r, a in enumerate(own, start=1)]
        if helper is not None:
            theirs = _top(helper.model, ctx, comp[p], top_k, vocab)
            order += [(a, "helper", theirs.index(a) + 1) for a in theirs if a not in own]
        for alt, source, rank in order:
            if naive:
                seq = naive_greedy(loaded.model, ctx, budget - p, eos, forced=alt)
            else:
                rest = [] if alt in eos or budget - p <= 1 else \
                    greedy_generate(loaded.model, [ctx + [alt]], budget - p - 1, eos, pad)[0].token_ids
                seq = [alt] + rest
            n_roll += 1
            n_tok += len(seq)
            verdict = safe_check(benchmark, item, decode_completion(loaded.tokenizer, comp[:p] + seq, eos))
            if verdict.status == "pass":
                return ReferencePair(p, alt, rank, source, n_roll, n_tok, n_unver)
            n_unver += verdict.status == "unverifiable"
    return ReferencePair(None, None, None, None, n_roll, n_tok, n_unver)
