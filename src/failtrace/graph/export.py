"""JSON exports of a pruned attribution graph: failtrace's own schema and a circuit-tracer-style variant.

**failtrace schema** (``"schema": "failtrace.graph/1"``)::

    {
      "schema": "failtrace.graph/1",
      "metadata": {
        "model": str, "architecture": str, "prompt": str | list, "answer_prefix": str | null,
        "tokens": [str, ...],              # decoded tokens, position = index
        "special_mask": [bool, ...],
        "target": {"id": int, "text": str}, "contrast": {"id": int, "text": str} | null,
        "objective": str, "objective_value": float,   # Δℓ for logit_diff
        "lrp_method": str, "edge_method": str, "methods_used": {layer: method},
        "layers": [first, last], "mid_nodes": bool,
        "node_threshold": float, "prune": "cumulative:P" | "global:TAU",
        "final_node": str,                 # id of the final node (last stage, last position)
        "notes": [str, ...]                # fallbacks, incomplete re-pruning
      },
      "stages": [{"id": "emb" | "L3.mid" | "L3", "layer": int, "kind": "embed" | "mid" | "resid"}, ...],
      "nodes": [{
        "id": "L3/7",                      # <stage>/<token position>
        "stage": "L3", "layer": 3,         # layer -1 = embeddings
        "kind": "resid",                   # embed | mid (after attention, before MLP) | resid (layer output)
        "token_index": 7, "token": str, "special": bool,
        "relevance": float,                # R = Σ_k h·g from the full AttnLRP pass
        "normalized": float                # |R| / the stage's largest |R| among non-special tokens
                                           # (so a special token, e.g. an attention sink, can exceed 1)
      }, ...],
      "links": [{"source": "L2/5", "target": "L3/7", "weight": float}, ...],   # A[target, source]
      "metrics": {... see failtrace.graph.metrics ...}
    }

**circuit-tracer-style variant**: the ``metadata`` / ``qParams`` / ``nodes`` / ``links`` layout of the graph files
read by circuit-tracer's front end. Hidden-state nodes become ``feature_type: "residual"`` (``"embedding"`` for
layer −1, ``"mid residual"`` for mid-nodes) with ``layer`` as a string ("E" for the embeddings), ``ctx_idx`` the
token position and ``feature`` the stage index; one ``logit`` node stands for the objective and receives a link
from the final node with weight R_final.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from failtrace.graph.metrics import graph_metrics
from failtrace.graph.prune import PrunedGraph, normalised_relevance
from failtrace.graph.record import EXPORT_SCHEMA

SCHEMA = EXPORT_SCHEMA  # "failtrace.graph/1", named in record so that load can tell the two files apart


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def _metadata(pruned: PrunedGraph) -> dict[str, Any]:
    g = pruned.graph
    m = g.metadata
    top, final = g.final_node
    keys = ("model", "architecture", "prompt", "answer_prefix", "chat", "target", "contrast", "objective",
            "lrp_method", "edge_method", "methods_used", "layers", "mid_nodes", "layer_structure", "case")
    meta: dict[str, Any] = {k: m.get(k) for k in keys}
    meta.update({
        "tokens": g.tokens,
        "token_ids": g.token_ids,
        "special_mask": g.special_mask,
        "objective_value": g.objective_value,
        "node_threshold": pruned.node_threshold,
        "prune": str(pruned.spec),
        "final_node": g.stages[top].node_id(final),
        "notes": list(m.get("notes", [])) + list(pruned.notes),
        "n_tokens": g.n_tokens,
        "seconds": m.get("seconds"),
    })
    return meta


def to_json(pruned: PrunedGraph, top_k: int = 5) -> dict[str, Any]:
    """The pruned graph in the failtrace schema (module docstring)."""
    g = pruned.graph
    norm = normalised_relevance(g)
    nodes = []
    for s, tok in pruned.node_list():
        st = g.stages[s]
        nodes.append({
            "id": st.node_id(tok), "stage": st.name, "layer": st.layer, "kind": st.kind, "token_index": tok,
            "token": g.tokens[tok], "special": bool(g.special_mask[tok]),
            "relevance": _num(g.relevance[s, tok]), "normalized": _num(norm[s, tok]),
        })
    links = [{"source": g.stages[ss].node_id(si), "target": g.stages[ts].node_id(ti), "weight": float(w)}
             for ss, si, ts, ti, w in pruned.edges()]
    return {
        "schema": SCHEMA,
        "metadata": _metadata(pruned),
        "stages": [{"id": s.name, "layer": s.layer, "kind": s.kind} for s in g.stages],
        "nodes": nodes,
        "links": links,
        "metrics": graph_metrics(pruned, top_k=top_k),
    }


def to_circuit_tracer(pruned: PrunedGraph) -> dict[str, Any]:
    """The pruned graph as circuit-tracer-style ``metadata``/``qParams``/``nodes``/``links``."""
    g = pruned.graph
    norm = normalised_relevance(g)
    n = g.n_tokens
    top, final = g.final_node
    kinds = {"embed": "embedding", "mid": "mid residual", "resid": "residual"}
    nodes = []
    for s, tok in pruned.node_list():
        st = g.stages[s]
        nid = st.node_id(tok)
        nodes.append({
            "node_id": nid, "jsNodeId": nid, "feature": s,
            "layer": "E" if st.kind == "embed" else str(st.layer),
            "ctx_idx": tok, "reverse_ctx_idx": n - 1 - tok, "run_idx": 0,
            "feature_type": kinds[st.kind], "token_prob": 0.0, "is_target_logit": False,
            "clerp": f"{st.name} {g.tokens[tok]!r}", "influence": _num(norm[s, tok]),
            "activation": _num(g.relevance[s, tok]),
        })
    target = (g.metadata.get("target") or {}).get("text", "objective")
    last_layer = g.stages[top].layer
    logit_id = f"logit/{final}"
    nodes.append({
        "node_id": logit_id, "jsNodeId": logit_id, "feature": len(g.stages), "layer": str(last_layer + 1),
        "ctx_idx": final, "reverse_ctx_idx": n - 1 - final, "run_idx": 0, "feature_type": "logit",
        "token_prob": 1.0, "is_target_logit": True, "clerp": f"objective {g.metadata.get('objective', '')} "
                                                              f"({target!r})",
        "influence": 1.0, "activation": g.objective_value,
    })
    links = [{"source": g.stages[ss].node_id(si), "target": g.stages[ts].node_id(ti), "weight": float(w)}
             for ss, si, ts, ti, w in pruned.edges()]
    links.append({"source": g.stages[top].node_id(final), "target": logit_id,
                  "weight": float(g.relevance[top, final])})
    meta = _metadata(pruned)
    return {
        "metadata": {
            "slug": str(g.metadata.get("slug") or "failtrace-graph"),
            "scan": str(g.metadata.get("model") or g.metadata.get("architecture") or ""),
            "prompt_tokens": g.tokens,
            "prompt": g.metadata.get("prompt") if isinstance(g.metadata.get("prompt"), str) else "".join(g.tokens),
            "node_threshold": pruned.node_threshold,
            "schema_version": 1,
            "info": {"generator": "failtrace", **{k: meta[k] for k in ("objective", "objective_value",
                                                                         "lrp_method", "prune", "notes")}},
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": logit_id, "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def save_json(pruned: PrunedGraph, path: str | Path, variant: str = "failtrace") -> Path:
    """Write ``variant`` ``failtrace`` (default) or ``circuit-tracer`` to ``path``."""
    if variant not in ("failtrace", "circuit-tracer"):
        raise ValueError(f"unknown JSON variant {variant!r}; use 'failtrace' or 'circuit-tracer'")
    data = to_json(pruned) if variant == "failtrace" else to_circuit_tracer(pruned)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, default=_default), encoding="utf-8")
    return path


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
