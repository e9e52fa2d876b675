"""Masking: how the objective changes when chosen input positions are removed; the flip search (k*).

Zeroing an embedding removes what the token contributes while keeping positions and sequence length, so the masked
run differs from the original only in the chosen positions. This is the perturbation used by the faithfulness check
(masking the top-attributed tokens should move Δℓ more than masking random ones) and by the flip search: k* is the
smallest number of top positively attributed tokens whose masking makes the model prefer the contrast (Δℓ < 0).
Definitions in docs/ANALYSES.md; the rules are :data:`failtrace.cases.record.MASK_RULES`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from failtrace.cases.record import MASK_RULES, MaskingSpec
from failtrace.errors import FailtraceError


def never_masked(special_mask: Sequence[bool], labels: Sequence[str] | None, spec: MaskingSpec) -> list[bool]:
    """Positions no masking or node ablation may pick: special ids, and with ``spec.skip_template`` every position
    labelled ``special`` (the chat template's text outside the messages, e.g. ``<|im_start|>assistant\n`` right
    before the prediction) -- the same tokens the failure patterns leave out of the content tokens."""
    if not spec.skip_template:
        return [bool(s) for s in special_mask]
    if labels is None or len(labels) != len(special_mask):
        raise FailtraceError("skipping template text needs one segment label per token")
    return [bool(s) or lab == "special" for s, lab in zip(special_mask, labels)]


def top_positions(relevance: Sequence[float] | np.ndarray, special_mask: Sequence[bool], k: int) -> list[int]:
    """The (at most) k non-special positions with the largest *positive* relevance, ties broken by lower position."""
    r = np.asarray(relevance, dtype=np.float64)
    if len(special_mask) != r.shape[0]:
        raise FailtraceError(f"special_mask has {len(special_mask)} entries for {r.shape[0]} relevance values")
    cand = [i for i in range(r.shape[0]) if not special_mask[i] and r[i] > 0 and np.isfinite(r[i])]
    cand.sort(key=lambda i: (-r[i], i))
    return cand[:max(0, int(k))]


def masking_order(relevance: Sequence[float] | np.ndarray, special_mask: Sequence[bool], labels: Sequence[str],
                  spec: MaskingSpec) -> list[int]:
    """The positions a case's flip curve masks, in order: :func:`top_positions` outside :func:`never_masked` (the
    report and the explorer list them beside k*)."""
    return top_positions(relevance, never_masked(special_mask, labels, spec), spec.max_k)


def _check_spec(spec: MaskingSpec, vocab: int) -> None:
    if spec.rule not in MASK_RULES:
        raise FailtraceError(f"unknown masking rule {spec.rule!r}; valid: {', '.join(MASK_RULES)}")
    if spec.rule == "replace" and (spec.token_id is None or not 0 <= int(spec.token_id) < vocab):
        raise FailtraceError(f"masking rule 'replace' needs a token_id in 0..{vocab - 1}, got {spec.token_id!r}")
    if int(spec.max_k) < 1:
        raise FailtraceError(f"masking max_k must be at least 1, got {spec.max_k}")


PREFIX_REUSE_ABOVE = 256  # a shared unmasked prefix at least this long is run once and its KV cache reused,
PREFIX_REUSE_SHARE = 0.5  # when it is also at least this share of the input: at a third, the suffix's attention over
#                           the cache cost what the prefix saved (x0.99 on a 4,802-token trace; docs/PERF.md)


@torch.no_grad()
def masked_delta(model: nn.Module, token_ids: Sequence[int], masks: Sequence[Sequence[int]], target_id: int,
                 contrast_id: int, spec: MaskingSpec, batch: int = 8,
                 reuse_above: int = PREFIX_REUSE_ABOVE) -> list[float]:
    """Δℓ = logit(target) − logit(contrast) at the last position with each set of positions masked by ``spec``
    (:func:`masked_scores` without the top tokens)."""
    return masked_scores(model, token_ids, masks, target_id, contrast_id, spec, batch, reuse_above)[0]


@torch.no_grad()
def masked_scores(model: nn.Module, token_ids: Sequence[int], masks: Sequence[Sequence[int]], target_id: int,
                  contrast_id: int, spec: MaskingSpec, batch: int = 8,
                  reuse_above: int = PREFIX_REUSE_ABOVE) -> tuple[list[float], list[int]]:
    """Per set of positions masked by ``spec``: Δℓ = logit(target) − logit(contrast) at the last position, and the
    model's top next token there (the argmax; ties: the lowest id). The top token says what Δℓ < 0 does not: after
    masking, the model may prefer the contrast to the target and still write a third token.

    ``zero-embedding``: the masked rows of the input embeddings (``model.get_input_embeddings()(ids)``) are set to
    zero and the model runs on ``inputs_embeds``; ``replace``: the masked token ids become ``spec.token_id``.
    One forward per mask set, ``batch`` sets per call (all rows have the same length: no padding).

    A causal model's states before the first masked position P (over all sets) are those of the unmasked input, so
    when P is at least ``reuse_above`` tokens and half the input, positions 0..P-1 run once, unmasked, and every set
    runs only P..T-1 on that KV cache: on a long agent trace whose top tokens are recent, most of each forward. The
    values are those of the full forward up to float summation order (tested against it).
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(token_ids)], device=device)
    _check_spec(spec, model.get_input_embeddings().weight.shape[0])
    n = len(token_ids)
    start, prefix = unmasked_prefix(model, token_ids, [int(p) for pos in masks for p in pos], reuse_above)
    emb = model.get_input_embeddings()(ids[:, start:])[0] if spec.rule == "zero-embedding" else None
    deltas: list[float] = []
    tops: list[int] = []
    for begin in range(0, len(masks), batch):
        chunk = masks[begin:begin + batch]
        kwargs = suffix_arguments(prefix, start, len(chunk), n)
        if emb is not None:
            x = emb.unsqueeze(0).repeat(len(chunk), 1, 1)
            for row, pos in enumerate(chunk):
                if len(pos):
                    x[row, [int(p) - start for p in pos]] = 0
            logits = last_logits(model, inputs_embeds=x, **kwargs)
        else:
            x_ids = ids[:, start:].repeat(len(chunk), 1)
            for row, pos in enumerate(chunk):
                if len(pos):
                    x_ids[row, [int(p) - start for p in pos]] = int(spec.token_id)  # type: ignore[arg-type]
            logits = last_logits(model, input_ids=x_ids, **kwargs)
        lg = logits.double()
        deltas.extend(float(v) for v in (lg[:, target_id] - lg[:, contrast_id]))
        tops.extend(int(i) for i in lg.argmax(-1))  # torch's argmax returns the first maximum: the lowest id
    return deltas, tops


def unmasked_prefix(model: nn.Module, token_ids: Sequence[int], changed: Sequence[int],
                    reuse_above: int = PREFIX_REUSE_ABOVE) -> tuple[int, list | None]:
    """(start, KV cache of positions 0..start-1): ``start`` is the first position any intervention changes (at most
    the last position), or 0 (no cache) when that prefix is shorter than ``reuse_above`` tokens or than
    :data:`PREFIX_REUSE_SHARE` of the input. Positions before it are the unmasked input's in a causal model, so they
    run once for every mask or ablation of the call."""
    start = min(list(changed) + [len(token_ids) - 1])
    if start < max(1, reuse_above) or start < PREFIX_REUSE_SHARE * len(token_ids):
        return 0, None
    from failtrace.failures.generation import prefix_forward

    return start, prefix_forward(model, list(token_ids[:start]), n_logits=1).kv


def suffix_arguments(prefix: list | None, start: int, rows: int, n: int) -> dict:
    """Forward arguments for positions start..n-1 of ``rows`` rows: the prefix's KV cache (or no cache at all)."""
    if prefix is None:
        return {"use_cache": False}
    from failtrace.failures.kvcache import cache_from_prefix

    return {"past_key_values": cache_from_prefix(prefix, start, rows, max_len=n), "use_cache": True}


def last_logits(model: nn.Module, **kwargs: object) -> torch.Tensor:
    """The next-token logits after the last position, (rows, vocab)."""
    from failtrace.failures.decode import forward_logits
    from failtrace.models.limits import require_finite

    logits = forward_logits(model, keep=1, **kwargs)[:, -1]
    require_finite(logits)  # a masked input that overflows would flip on NaN
    return logits


class Flip(NamedTuple):
    """A flip search's answer: Δℓ after masking the top k (index k = 0..K), k* (:func:`first_flip`), and the
    model's top next token after masking the top k (same indexing)."""

    curve: list[float]
    k_star: int | None
    tops: list[int]


def flip_search(model: nn.Module, token_ids: Sequence[int], relevance: Sequence[float] | np.ndarray,
                special_mask: Sequence[bool], target_id: int, contrast_id: int,
                spec: MaskingSpec | None = None, batch: int = 8) -> Flip:
    """Mask the top-k positively attributed tokens outside ``special_mask`` for k = 0..K (K = ``spec.max_k``, fewer
    when fewer tokens have positive relevance): the Δℓ curve (index k), k* = :func:`first_flip` (the smallest
    k >= 1 with Δℓ < 0; None if none, or if Δℓ < 0 unmasked) and the top token after each k. ``special_mask`` is
    taken as given: pass :func:`never_masked` (special ids plus, when ``spec.skip_template``, the template text) to
    follow the spec's rule, as every caller in failtrace does."""
    spec = spec or MaskingSpec()
    if len(relevance) != len(token_ids):
        raise FailtraceError(f"relevance has {len(relevance)} values for {len(token_ids)} tokens")
    _check_spec(spec, model.get_input_embeddings().weight.shape[0])
    order = top_positions(relevance, special_mask, spec.max_k)
    curve, tops = masked_scores(model, token_ids, [order[:k] for k in range(len(order) + 1)], target_id,
                                contrast_id, spec, batch=batch)
    return Flip(curve, first_flip(curve), tops)


def first_flip(curve: Sequence[float]) -> int | None:
    """The smallest k >= 1 with Δℓ < 0 on a masking or ablation curve (index 0 = nothing removed); None when there is
    none, and when Δℓ < 0 already at k = 0: that model prefers the contrast unaided (a corrected row of ``compare``),
    so there is no failure to flip and a k* of 1 would only count a token whose removal kept it corrected."""
    if not len(curve) or curve[0] < 0:
        return None
    return next((k for k in range(1, len(curve)) if curve[k] < 0), None)
