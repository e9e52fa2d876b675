"""Graph metrics: per-transition edge count, relevance mass, concentration (Gini), verticality; top-k paths.

All metrics are computed on a :class:`~failtrace.graph.prune.PrunedGraph`:

* ``edges``: kept edges of the transition; ``mass``: Σ|A| over them; ``signed_mass``: ΣA; ``coverage``: ``mass``
  divided by the transition's total |A| mass over the kept target rows;
* ``gini``: Gini coefficient of the kept |A| (0: all equal, → 1: one edge carries everything);
* ``verticality``: share of the kept |A| mass on edges that stay on the same token (i = j). ``verticality_all`` is
  the same over every stored edge of the transition, independent of pruning;
* ``top_paths``: the k input → final-node paths (one node per stage, along kept edges) with the largest summed edge
  relevance; ``bottom_paths``: the k with the most negative sum.
"""

from __future__ import annotations

import heapq
from typing import Any

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


def top_paths(pruned: PrunedGraph, k: int = 5, sign: int = 1) -> list[dict[str, Any]]:
    """The k paths from the bottom stage to the final node with the largest (``sign=-1``: most negative) edge sums.

    A layered dynamic programme from the top: each node keeps its k best partial paths to the final node.
    """
    graph = pruned.graph
    top, final = graph.final_node
    # best[(stage, token)] = list of (score, next node or None) sorted best first; scores carry ``sign``
    best: dict[tuple[int, int], list[tuple[float, tuple[int, int] | None, int]]] = {(top, final): [(0.0, None, 0)]}
    order = sorted(range(len(graph.transitions)), key=lambda t: -graph.transitions[t].target_stage)
    for t in order:
        es = graph.transitions[t]
        keep = pruned.edge_keep[t]
        cand: dict[tuple[int, int], list[tuple[float, tuple[int, int] | None, int]]] = {}
        for e in keep.tolist():
            tgt = (es.target_stage, int(es.target[e]))
            if tgt not in best:
                continue
            src = (es.source_stage, int(es.source[e]))
            w = sign * float(es.weight[e])
            lst = cand.setdefault(src, [])
            for rank, (score, _nxt, _r) in enumerate(best[tgt]):
                lst.append((score + w, tgt, rank))
        for node, lst in cand.items():
            best[node] = heapq.nlargest(k, lst, key=lambda x: x[0])
    bottom = min(s.source_stage for s in graph.transitions) if graph.transitions else top
    starts = [(score, node, rank) for node, lst in best.items() if node[0] == bottom
              for rank, (score, _n, _r) in enumerate(lst)]
    paths = []
    for score, node, rank in heapq.nlargest(k, starts, key=lambda x: x[0]):
        seq = [node]
        cur, r = node, rank
        while True:
            _s, nxt, nr = best[cur][r]
            if nxt is None:
                break
            seq.append(nxt)
            cur, r = nxt, nr
        paths.append({
            "nodes": [graph.stages[s].node_id(tok) for s, tok in seq],
            "tokens": [graph.tokens[tok] for _s, tok in seq],
            "input_token": seq[0][1],
            "relevance": sign * score,
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
