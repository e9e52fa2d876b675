"""Outcome categories (paper Fig. 1): does input attribution explain the failure, or only the graph, or neither?

* **M-IA** (Manifested by Input Attribution): masking the top k* ≤ ``k_ia`` positively attributed input tokens
  (AttnLRP) puts the contrast above the target.
* **NC-IA + M-AG** (No Clue from Input Attribution, Manifested by the Attribution Graph): otherwise, ablating the top
  graph nodes flips it (below).
* **NC-IA + AG** (No Clue from Input Attribution nor the Attribution Graph): neither flips it within the budgets.

(The expansions are the paper's, ``failtrace.cases.record.CATEGORY_TEXT``; the paper assigns them by reading.)

Node ablation. A node is the residual-stream hidden state at (decoder layer l, position i), i.e. the output of
decoder layer l at token i, with AttnLRP relevance ``hidden_relevance[l + 1, i]`` (row 0 is the embeddings, which
the input masking already covers). Candidates: positively relevant nodes, never the last position (zeroing the
predicting position's state removes the prediction itself rather than a reason for it) and never special tokens
(attention sinks: zeroing one breaks every position at once). They are ranked by relevance, largest first (ties:
lower layer, then lower position). Ablating the first k nodes sets all k hidden states to zero at once (a forward
hook on each decoder layer that zeroes those rows of its output, so later layers see the zeroed state and build on
it); Δℓ is recorded for k = 0..budget and the first k with Δℓ < 0 is the flip (none when Δℓ < 0 already
at k = 0: :func:`failtrace.analysis.masking.first_flip`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from failtrace.analysis.masking import (PREFIX_REUSE_ABOVE, first_flip, last_logits, suffix_arguments,
                                        unmasked_prefix)
from failtrace.cases.record import CATEGORIES  # the one list of category names (re-exported here)
from failtrace.errors import FailtraceError
from failtrace.lrp.patch import decoder_layers

DEFAULT_BUDGET = 10
RULE = ("zero the residual stream (decoder layer output) at (layer, position); cumulative, largest relevance first; "
        "never the last position nor one the analysis marks unmaskable")


def ablation_candidates(hidden_relevance: np.ndarray, budget: int,
                        special_mask: Sequence[bool] | None = None) -> list[tuple[int, int, float]]:
    """The nodes to ablate, in order: (decoder layer, position, relevance); see the module docstring."""
    h = np.asarray(hidden_relevance, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] < 2:
        raise FailtraceError(f"hidden relevance must be [layers + 1, tokens], got shape {h.shape}")
    n = h.shape[1]
    special = np.zeros(n, dtype=bool) if special_mask is None else np.asarray(special_mask, dtype=bool)
    cand = [(l - 1, i, float(h[l, i])) for l in range(1, h.shape[0]) for i in range(n - 1)
            if not special[i] and np.isfinite(h[l, i]) and h[l, i] > 0]
    cand.sort(key=lambda c: (-c[2], c[0], c[1]))
    return cand[:max(0, int(budget))]


@torch.no_grad()
def ablated_delta(model: nn.Module, token_ids: Sequence[int], node_sets: Sequence[Sequence[tuple[int, int]]],
                  target_id: int, contrast_id: int, batch: int = 8,
                  reuse_above: int = PREFIX_REUSE_ABOVE) -> list[float]:
    """Δℓ at the last position with each set of (layer, position) hidden states zeroed (one batch row per set).
    Positions before the first ablated one run once when there are at least ``reuse_above`` of them (as masking,
    :func:`failtrace.analysis.masking.unmasked_prefix`)."""
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    n = len(token_ids)
    start, prefix = unmasked_prefix(model, token_ids, [pos for nodes in node_sets for _, pos in nodes], reuse_above)
    ids = torch.tensor([list(token_ids[start:])], device=device)
    layer_index = {id(layer): i for i, layer in enumerate(layers)}
    out: list[float] = []
    for begin in range(0, len(node_sets), batch):
        chunk = node_sets[begin:begin + batch]
        keep = torch.ones(len(layers), len(chunk), ids.shape[1], 1, device=device)
        for row, nodes in enumerate(chunk):
            for layer, pos in nodes:
                keep[layer, row, pos - start] = 0

        def hook(module: nn.Module, _inp: Any, output: Any) -> Any:
            m = keep[layer_index[id(module)]]
            if isinstance(output, (tuple, list)):
                return (output[0] * m.to(output[0].dtype), *output[1:])
            return output * m.to(output.dtype)

        handles = [layer.register_forward_hook(hook) for layer in layers]
        try:
            logits = last_logits(model, input_ids=ids.repeat(len(chunk), 1),
                                  **suffix_arguments(prefix, start, len(chunk), n))
        finally:
            for h in handles:
                h.remove()
        lg = logits.double()
        out.extend(float(v) for v in (lg[:, target_id] - lg[:, contrast_id]))
    return out


def node_ablation(model: nn.Module, token_ids: Sequence[int], hidden_relevance: np.ndarray, target_id: int,
                  contrast_id: int, budget: int = DEFAULT_BUDGET, special_mask: Sequence[bool] | None = None,
                  batch: int = 8) -> dict[str, Any]:
    """Ablate the top graph nodes cumulatively (module docstring): the nodes in order, Δℓ after each, the flip.
    ``special_mask``: positions never ablated; analyses pass :func:`failtrace.analysis.masking.never_masked`."""
    if hidden_relevance is None:
        raise FailtraceError("node ablation needs the AttnLRP hidden relevance [layers + 1, tokens]")
    h = np.asarray(hidden_relevance, dtype=np.float64)
    if h.shape[-1] != len(token_ids):
        raise FailtraceError(f"hidden relevance has {h.shape[-1]} tokens, the context {len(token_ids)}")
    if h.shape[0] != len(decoder_layers(model)) + 1:
        raise FailtraceError(f"hidden relevance has {h.shape[0]} rows; the model needs {len(decoder_layers(model)) + 1}"
                             " (embeddings + one per decoder layer)")
    nodes = ablation_candidates(h, budget, special_mask)
    sets = [[(l, i) for l, i, _r in nodes[:k]] for k in range(len(nodes) + 1)]
    curve = ablated_delta(model, token_ids, sets, target_id, contrast_id, batch=batch)
    k = first_flip(curve)
    return {"rule": RULE, "budget": int(budget),
            "nodes": [{"layer": l, "position": i, "relevance": r} for l, i, r in nodes],
            "curve": curve, "flipped": k is not None, "k": k}


def categorize(flip_k_ia: int | None, ablation: dict[str, Any] | None, k_ia: int = 5) -> tuple[str, dict[str, Any]]:
    """M-IA if k* ≤ k_ia; else NC-IA+M-AG if the node ablation flipped; else NC-IA+AG. Returns (label, evidence)."""
    evidence: dict[str, Any] = {"k_star": flip_k_ia, "k_ia": int(k_ia)}
    if flip_k_ia is not None and flip_k_ia <= k_ia:
        return "M-IA", evidence
    abl = ablation or {}
    k = abl.get("k")
    evidence["ablation_k"] = k
    evidence["ablated_nodes"] = list(abl.get("nodes", []))[:k] if k else []
    evidence["ablation_budget"] = abl.get("budget")
    return ("NC-IA+M-AG" if abl.get("flipped") else "NC-IA+AG"), evidence
