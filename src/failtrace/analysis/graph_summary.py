"""Graph summary of one case: where Δℓ sits across layer bands and segments, and the strongest paths.

* **Flow per band and segment.** The decoder layers are cut into ``bands`` contiguous groups of (near) equal size
  (``numpy.array_split``). For band b and segment g, ``flow[b][g]`` = the mean, over the band's residual stages
  (decoder layer outputs), of Σ_{i labelled g} R[stage, i]: how much of the relevance at that depth sits on the
  tokens of segment g. The embedding stage is reported as band ``input``. ``share`` divides by the final node's
  relevance R_final (≈ Δℓ), so a share of 0.4 means "40% of Δℓ is carried at those tokens in that band". These use
  every node's relevance from the full AttnLRP pass (independent of pruning).
* **Kept nodes** per band and segment: how many nodes of the pruned graph lie there.
* **Strongest paths**: the best supporting and the best opposing input → prediction path of the pruned graph, with
  the path score of :mod:`failtrace.graph.metrics` (product of edge fractions) and the input token's segment; the
  ``*_content_path`` variants only start at content tokens (not special ids, not template text), because attention
  sinks such as BOS usually carry the strongest paths.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from failtrace.errors import FailtraceError
from failtrace.graph.metrics import top_paths
from failtrace.graph.prune import PrunedGraph


def layer_bands(layers: Sequence[int], bands: int) -> list[list[int]]:
    """``layers`` (sorted) cut into at most ``bands`` contiguous, near-equal, non-empty groups."""
    if bands < 1:
        raise FailtraceError(f"bands must be at least 1, got {bands}")
    parts = np.array_split(np.asarray(sorted(layers), dtype=int), min(bands, max(1, len(layers))))
    return [p.tolist() for p in parts if p.size]


def _path(p: dict[str, Any] | None, labels: Sequence[str]) -> dict[str, Any] | None:
    if p is None:
        return None
    out = dict(p)
    out.pop("relevance", None)
    out["segment"] = labels[p["input_token"]]
    return out


def graph_summary(pruned: PrunedGraph, labels: Sequence[str], bands: int = 3) -> dict[str, Any]:
    """Flow per layer band and segment, kept nodes, and the strongest paths (module docstring)."""
    graph = pruned.graph
    if len(labels) != graph.n_tokens:
        raise FailtraceError(f"{len(labels)} segment labels for a graph over {graph.n_tokens} tokens")
    lab = np.asarray(labels)
    names = list(dict.fromkeys(labels))
    top, final = graph.final_node
    r_final = float(graph.relevance[top, final])
    resid = {st.layer: s for s, st in enumerate(graph.stages) if st.kind == "resid"}
    groups: list[tuple[str, list[int], list[int]]] = []  # (name, layers, stage indices)
    emb = [s for s, st in enumerate(graph.stages) if st.kind == "embed"]
    if emb:
        groups.append(("input", [], emb))
    for layers in layer_bands(list(resid), bands):
        name = f"L{layers[0]}" if len(layers) == 1 else f"L{layers[0]}-L{layers[-1]}"
        stages = [s for s, st in enumerate(graph.stages) if st.layer in layers]
        groups.append((name, layers, stages))
    out_bands = []
    for name, layers, stages in groups:
        rows = [s for s in stages if graph.stages[s].kind != "mid"]
        flow = {g: float(np.mean([np.nansum(graph.relevance[s][lab == g]) for s in rows])) for g in names}
        kept = {g: int(pruned.nodes[np.ix_(stages, np.nonzero(lab == g)[0])].sum()) for g in names}
        out_bands.append({
            "band": name, "layers": layers, "flow": flow, "total": float(sum(flow.values())),
            "share": {g: (v / r_final if r_final else 0.0) for g, v in flow.items()}, "kept_nodes": kept,
        })
    sup = top_paths(pruned, 1, sign=1)
    opp = top_paths(pruned, 1, sign=-1)
    content = [i for i, g in enumerate(labels) if g != "special" and not graph.special_mask[i]]
    sup_c = top_paths(pruned, 1, sign=1, inputs=content)
    opp_c = top_paths(pruned, 1, sign=-1, inputs=content)
    return {
        "final_relevance": r_final, "objective": float(graph.objective_value), "segments": names,
        "bands": out_bands, "nodes": pruned.num_nodes, "edges": pruned.num_edges,
        "strongest_path": _path(sup[0] if sup else None, labels),
        "strongest_opposing_path": _path(opp[0] if opp else None, labels),
        "strongest_content_path": _path(sup_c[0] if sup_c else None, labels),
        "strongest_opposing_content_path": _path(opp_c[0] if opp_c else None, labels),
        "path_score": "product of edge fractions |A_e| / incoming |A| mass of the edge's target (graph.metrics)",
    }
