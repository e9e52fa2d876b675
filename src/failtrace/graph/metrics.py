"""Graph metrics: per-transition edge count, relevance mass, concentration (Gini), verticality; top-k paths.

All metrics are computed on a :class:`~failtrace.graph.prune.PrunedGraph`:

* ``edges``: kept edges of the transition; ``mass``: Σ|A| over them; ``signed_mass``: ΣA; ``coverage``: ``mass``
  divided by the transition's total |A| mass over the kept target rows;
* ``gini``: Gini coefficient of the kept |A| (0: all equal, → 1: one edge carries everything);
* ``verticality``: share of the kept |A| mass on edges that stay on the same token (i = j). ``verticality_all`` is
  the same over every stored edge of the transition, independent of pruning;
* ``top_paths``: the k input → final-node paths (one node per stage, along kept edges) with the largest *path score*
  among paths that support the prediction; ``bottom_paths``: the same among paths that oppose it.

Path score. The fraction of an edge e = (i → j) is its share of the target node's incoming |A| mass,
f_e = |A_{j,i}| / Σ_{i'} |A_{j,i'}| (the denominator over *all* sources of row j, stored or not, so pruning never
inflates it). A path's score is the product of its edge fractions, Π_e f_e ∈ [0, 1]: the share of the final node's
incoming |A| mass that reaches this input token when every node splits its mass among its sources in proportion to
|A|. Over all paths of the unpruned graph (every row computed) the scores sum to 1, so 0.2 means "a fifth of the
mass flows along this path". A path's ``sign`` is the sign of what it carries to the objective: A_{j,i} is the part
of R_j that node i receives (Σ_i A_{j,i} = R_j), so the part of R_final that reaches the input along the path is
R_final · Π_e A_e / R_{target(e)}, whose sign is Π_e sign(A_e) · Π_n sign(R_n) over the path's intermediate nodes n
(+1: it supports the target over the contrast, −1: the contrast). A chain of negative edges through negative nodes
is therefore one opposing contribution, not a product of minus signs (as before 5 Dec 2026, when ``sign`` was the
product of the edge signs alone). ``bottleneck`` is the smallest edge fraction; ``flow`` = sign · score · |R_final|
puts the score in the objective's units (|flow| ≤ |Δℓ|). (Earlier versions summed raw
edge relevances along a path, which double-counts the residual stream and gave +124 for a Δℓ of 9.)
"""

from __future__ import annotations

import heapq
from typing import Any, Collection

import numpy as np

from failtrace.graph.prune import PrunedGraph


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0.0 for an empty or all-zero array)."""
    x = np.sort(np.abs(np.asarray(values, dtype=np.float64)))
    n = x.size
    total = float(x.sum())
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * (ranks * x).sum() / (n * total) - (n + 1.0) / n)


def transition_metrics(pruned: PrunedGraph) -> list[dict[str, Any]]:
    """One dict per transition (bottom first); see the module docstring for the fields."""
    graph = pruned.graph
    out = []
    for t, (es, keep) in enumerate(zip(graph.transitions, pruned.edge_keep)):
        src, tgt = graph.stages[es.source_stage], graph.stages[es.target_stage]
        w = es.weight[keep].astype(np.float64)
        mag = np.abs(w)
        mass = float(mag.sum())
        vertical = es.source[keep] == es.target[keep]
        all_mag = np.abs(es.weight.astype(np.float64))
        kind = "mlp" if src.kind == "mid" else ("attention" if tgt.kind == "mid" else "layer")
        out.append({
            "transition": t,
            "source": src.name,
            "target": tgt.name,
            "layer": tgt.layer,
            "kind": kind,
            "method": es.method,
            "edges": int(keep.size),
            "stored_edges": len(es),
            "mass": mass,
            "signed_mass": float(w.sum()),
            "coverage": pruned.coverage[t],
            "gini": gini(mag),
            "verticality": float(mag[vertical].sum() / mass) if mass > 0 else 0.0,
            "verticality_all": float(all_mag[es.source == es.target].sum() / all_mag.sum()) if all_mag.sum() > 0
            else 0.0,
            "seconds": es.seconds,
        })
    return out


def edge_fractions(pruned: PrunedGraph, t: int) -> np.ndarray:
    """f_e = |A_e| / (incoming |A| mass of e's target node) for the kept edges of transition ``t``."""
    es = pruned.graph.transitions[t]
    keep = pruned.edge_keep[t]
    mass = es.row_mass[es.target[keep]]
    mag = np.abs(es.weight[keep].astype(np.float64))
    return np.divide(mag, mass, out=np.zeros_like(mag), where=np.isfinite(mass) & (mass > 0))


def top_paths(pruned: PrunedGraph, k: int = 5, sign: int = 1,
              inputs: Collection[int] | None = None) -> list[dict[str, Any]]:
    """The k bottom-stage → final-node paths of the given ``sign`` with the largest score (module docstring);
    ``inputs`` restricts the input token (e.g. to non-special tokens).

    A layered dynamic programme from the top: each node keeps, per path sign, its k best partial paths to the final
    node; a product of non-negative factors preserves the order, so this is exact.
    """
    graph = pruned.graph
    top, final = graph.final_node
    # (node, path sign) -> best partial paths as (score, bottleneck, next node, its sign, its rank there)
    best: dict[tuple[tuple[int, int], int], list[tuple[Any, ...]]] = {((top, final), 1): [(1.0, 1.0, None, 0, 0)]}
    order = sorted(range(len(graph.transitions)), key=lambda t: -graph.transitions[t].target_stage)
    for t in order:
        es = graph.transitions[t]
        keep = pruned.edge_keep[t]
        frac = edge_fractions(pruned, t)
        cand: dict[tuple[tuple[int, int], int], list[tuple[Any, ...]]] = {}
        for e, f in zip(keep.tolist(), frac.tolist()):
            tgt = (es.target_stage, int(es.target[e]))
            src = (es.source_stage, int(es.source[e]))
            s_e = 1 if es.weight[e] >= 0 else -1
            if tgt != (top, final) and graph.relevance[tgt] < 0:  # an intermediate node passes its own sign on
                s_e = -s_e
            for s_next in (1, -1):
                for rank, (score, neck, _n, _s, _r) in enumerate(best.get((tgt, s_next), [])):
                    cand.setdefault((src, s_e * s_next), []).append((score * f, min(neck, f), tgt, s_next, rank))
        for key, lst in cand.items():
            best[key] = heapq.nlargest(k, lst, key=lambda x: x[0])
    bottom = min(s.source_stage for s in graph.transitions) if graph.transitions else top
    allowed = None if inputs is None else set(int(i) for i in inputs)
    starts = [(entry[0], node, rank) for (node, sg), lst in best.items() if node[0] == bottom and sg == sign
              and (allowed is None or node[1] in allowed) for rank, entry in enumerate(lst)]
    r_final = abs(float(graph.relevance[top, final]))
    paths = []
    for score, node, rank in heapq.nlargest(k, starts, key=lambda x: x[0]):
        seq, cur, sg, r = [node], node, sign, rank
        neck = best[(node, sign)][rank][1]
        while True:
            _sc, _nk, nxt, nsg, nr = best[(cur, sg)][r]
            if nxt is None:
                break
            seq.append(nxt)
            cur, sg, r = nxt, nsg, nr
        paths.append({
            "nodes": [graph.stages[s].node_id(tok) for s, tok in seq],
            "tokens": [graph.tokens[tok] for _s, tok in seq],
            "input_token": seq[0][1],
            "positions": [tok for _s, tok in seq],  # the token position of each node, bottom to top
            "score": score,
            "bottleneck": neck,
            "sign": sign,
            "flow": sign * score * r_final,
            "relevance": sign * score * r_final,  # alias of flow, kept for older callers
        })
    return paths


def graph_metrics(pruned: PrunedGraph, top_k: int = 5) -> dict[str, Any]:
    """Per-transition metrics, top and bottom paths, and totals for a pruned graph."""
    return {
        "nodes": pruned.num_nodes,
        "edges": pruned.num_edges,
        "transitions": transition_metrics(pruned),
        "top_paths": top_paths(pruned, top_k, sign=1),
        "bottom_paths": top_paths(pruned, top_k, sign=-1),
    }
