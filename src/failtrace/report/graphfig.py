"""Picture of a case's stored pruned graph (the record ``failtrace.store.cases`` keeps: ``stages`` names, ``nodes``
``[stage, token, R]``, ``edges`` ``[source stage, source token, target stage, target token, A]``).

The graph views draw a live :class:`~failtrace.graph.prune.PrunedGraph`; a stored case only has this record (the
full graph is not kept), so the report draws it here with the same conventions: one column per token position that
has a kept node, one row per stage (embeddings at the bottom), red = positive relevance / flow, blue = negative,
special tokens grey, node size by |R| over the largest non-special |R| of its stage (``stage_shares``: the kept
nodes'), edge width and opacity by sqrt(|A|/max|A|) (the graph views' ``draw_edges``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from failtrace.report.casepage import plain_token
from failtrace.views.graph_static import BLUE, GREY, RED, draw_edges, node_area, stage_shares


def is_graph_record(obj: Any) -> bool:
    """True for a stored pruned graph record (nodes, edges and pruning stages), as the report draws it."""
    return isinstance(obj, Mapping) and "nodes" in obj and "edges" in obj and "stages" in obj


def graph_record_figure(record: Mapping[str, Any], tokens: Sequence[str], special_mask: Sequence[bool], path: Path,
                        title: str = "", max_edges: int = 400) -> Path:
    """Draw ``record`` to ``path`` (PNG): the strongest ``max_edges`` edges and every kept node."""
    from matplotlib.figure import Figure

    from failtrace.report.figures import _save, _tight

    nodes = [(int(s), int(t), float(r)) for s, t, r in record["nodes"]]
    edges = sorted(((int(a), int(b), int(c), int(d), float(w)) for a, b, c, d, w in record["edges"]),
                   key=lambda e: -abs(e[4]))[:max_edges]
    stages = list(record["stages"])
    cols = sorted({t for _s, t, _r in nodes} | {e[1] for e in edges} | {e[3] for e in edges}) or [len(tokens) - 1]
    x_of = {t: i for i, t in enumerate(cols)}
    fig = Figure(figsize=(min(22.0, max(6.0, 0.34 * len(cols) + 2.5)), min(10.0, max(3.6, 0.17 * len(stages) + 2))))
    ax = fig.subplots()
    draw_edges(ax, edges, x_of)
    special = [bool(special_mask[t]) if t < len(special_mask) else False for t in range(len(tokens))]
    if nodes:
        ax.scatter([x_of[t] for _s, t, _r in nodes], [s for s, _t, _r in nodes],
                   s=[node_area(z) for z in stage_shares(nodes, special)],
                   c=[GREY if special[t] else (RED if r > 0 else BLUE) for _s, t, r in nodes],
                   edgecolors="black", linewidths=0.4, zorder=2)
    ax.set_xticks(range(len(cols)), [f"{plain_token(tokens[t])[:14]} [{t}]" if t < len(tokens) else str(t)
                                     for t in cols], rotation=90, fontsize=7, family="DejaVu Sans Mono")
    step = max(1, len(stages) // 16)
    ax.set_yticks(range(0, len(stages), step), [stages[i] for i in range(0, len(stages), step)], fontsize=7)
    ax.set_xlim(-0.7, len(cols) - 0.3)
    ax.set_ylim(-0.7, len(stages) - 0.3)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    n_nodes, n_edges = len(nodes), len(record["edges"])
    shown = f"{n_nodes} node{'s' * (n_nodes != 1)}, {n_edges} edge{'s' * (n_edges != 1)}" + \
        (f" (strongest {len(edges)} drawn)" if len(edges) < len(record["edges"]) else "")
    ax.set_title(f"{title}  ·  {shown}" if title else shown, fontsize=9, loc="left")
    _tight(fig)
    return _save(fig, path)
