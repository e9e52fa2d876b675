"""A static layered picture of a pruned attribution graph (PNG, SVG or PDF, from the file suffix).

One column per token position that has a kept node (positions without any are left out, so long inputs stay
readable), one row per stage (embeddings at the bottom, the final layer at the top). Nodes are sized by normalised
|R| and coloured red (positive relevance) or blue (negative); edges likewise by sign, with width and opacity by
√(|A| / max|A|) so weak edges stay visible next to the residual stream. Special tokens are grey.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from failtrace.attribution.record import visible
from failtrace.graph.prune import PrunedGraph, normalised_relevance
from failtrace.views.common import literal_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

RED, BLUE, GREY = "#c0392b", "#2e6fba", "#9a9a9a"
TITLE_PT = 9.0
PICTURE_FORMATS = ("png", "svg", "pdf")


def columns(pruned: PrunedGraph) -> list[int]:
    """Token positions that hold at least one kept node (the final position if none does)."""
    cols = np.nonzero(pruned.nodes.any(axis=0))[0].tolist()
    return cols or [pruned.graph.n_tokens - 1]


def objective_name(meta: dict) -> str:
    """What the graph's objective value is called in a title: the objective's symbol (Δℓ for the logit difference,
    ℓ(target) for max_logit, ...), as the token views name it."""
    from failtrace.attribution.objective import objective_symbol

    return objective_symbol(meta.get("objective", "logit_diff"))


def case_prefix(meta: dict) -> str:
    """``"case 9cae4d2e3929 (demo py-count-a) · "`` for a graph of a stored case (``failtrace graph --case``), else
    empty: the title then says which case the picture explains."""
    case = meta.get("case")
    if not isinstance(case, dict) or not case.get("case_id"):
        return ""
    return f"case {str(case['case_id'])[:12]} ({case.get('benchmark', '')} {case.get('item_id', '')}) · "


def default_title(pruned: PrunedGraph, drawn: int) -> str:
    """Model, target vs contrast, objective value (Δℓ for the logit difference), the pruning settings, and what the
    colours and sizes mean (the picture has no other legend)."""
    g, meta = pruned.graph, pruned.graph.metadata
    tgt = (meta.get("target") or {}).get("text")
    con = (meta.get("contrast") or {}).get("text")
    return (f"{case_prefix(meta)}{meta.get('model') or meta.get('architecture', '')}: {tgt!r} vs {con!r}, "
            f"{objective_name(meta)} "
            f"{g.objective_value:.3g}; {pruned.num_nodes} nodes, {pruned.num_edges} edges (node ≥ "
            f"{pruned.node_threshold:g}, {pruned.spec}; strongest {drawn} edges drawn). Red: supports the target, "
            "blue: the contrast, grey: a special token id; node size: |R|, edge width: |relevance flow|")


def draw_edges(ax: Axes, edges: list[tuple[int, int, int, int, float]], x_of: dict[int, int]) -> None:
    """Edges ``(source stage, source token, target stage, target token, A)``, strongest on top: red A > 0, blue
    A < 0, width and opacity by sqrt(|A| / max |A|). The live graph and the report's stored graph both draw here."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgb

    if not edges:
        return
    wmax = max(abs(e[4]) for e in edges) or 1.0
    segs, colors, widths = [], [], []
    for ss, si, ts, ti, w in reversed(edges):  # strongest drawn last (on top)
        segs.append([(x_of[si], ss), (x_of[ti], ts)])
        a = (abs(w) / wmax) ** 0.5
        colors.append((*to_rgb(RED if w > 0 else BLUE), 0.12 + 0.8 * a))
        widths.append(0.3 + 2.7 * a)
    ax.add_collection(LineCollection(segs, colors=colors, linewidths=widths, zorder=1))


def node_area(share: float) -> float:
    """A node's marker area (pt²) for its |R| as a share of its stage's largest: 12 + 110·min(1, share)."""
    return 12.0 + 110.0 * min(1.0, float(share))


def stage_shares(nodes: Sequence[tuple[int, int, float]], special: Sequence[bool]) -> list[float]:
    """Each kept node's |R| over the largest |R| of a non-special kept node in its stage (of every kept node there if
    all are special), at most 1: what a stored graph record can say of :func:`normalised_relevance`, which divides by
    the stage's largest non-special |R| over all tokens. The two agree wherever that token was kept, as it is unless
    pruning cut it off from the prediction. A node whose relevance is not finite gets 0 (it was the stage's whole
    scale, or none of it, by its place in the list)."""
    size = [abs(r) if math.isfinite(r) else 0.0 for _s, _t, r in nodes]  # a NaN/inf node: no size, no scale
    by_stage: dict[int, list[tuple[float, bool]]] = {}
    for (s, t, _r), a in zip(nodes, size):
        by_stage.setdefault(s, []).append((a, t < len(special) and bool(special[t])))
    scale = {s: max((a for a, sp in xs if not sp), default=0.0) or max(a for a, _sp in xs)
             for s, xs in by_stage.items()}
    return [min(1.0, a / (scale[s] or 1.0)) for (s, _t, _r), a in zip(nodes, size)]


def _draw_nodes(ax: Axes, pruned: PrunedGraph, x_of: dict[int, int]) -> None:
    g = pruned.graph
    nodes = pruned.node_list()
    if not nodes:
        return
    norm = np.nan_to_num(normalised_relevance(g), nan=0.0)
    special = np.asarray(g.special_mask, dtype=bool)
    face = [GREY if special[t] else (RED if g.relevance[s, t] > 0 else BLUE) for s, t in nodes]
    ax.scatter([x_of[t] for _s, t in nodes], [s for s, _t in nodes], s=[node_area(norm[s, t]) for s, t in nodes],
               c=face, edgecolors="black", linewidths=0.4, zorder=2)


def graph_figure(pruned: PrunedGraph, title: str | None = None, max_edges: int = 400) -> Figure:
    """The layered picture as a matplotlib figure (no pyplot state), its ``max_edges`` strongest edges drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    g = pruned.graph
    cols = columns(pruned)
    x_of = {tok: i for i, tok in enumerate(cols)}
    width = min(40.0, max(6.0, 0.38 * len(cols) + 2.5))
    height = min(30.0, max(4.0, 0.22 * len(g.stages) + 2.0))
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    edges = sorted(pruned.edges(), key=lambda e: -abs(e[4]))[:max_edges]
    draw_edges(ax, edges, x_of)
    _draw_nodes(ax, pruned, x_of)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([f"{visible(g.tokens[t])[:24]} [{t}]" for t in cols], rotation=90, fontsize=7)
    step = max(1, len(g.stages) // 40)
    ax.set_yticks(range(0, len(g.stages), step))
    ax.set_yticklabels([g.stages[i].name for i in range(0, len(g.stages), step)], fontsize=7)
    ax.set_xlim(-0.7, len(cols) - 0.3)
    ax.set_ylim(-0.7, len(g.stages) - 0.3)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    # wrap to the figure width: a 9 pt sans character is at most ~0.6 em wide, i.e. ~13 characters per inch
    chars = max(30, int((width - 0.4) * 72 / (TITLE_PT * 0.6)))
    text = title or default_title(pruned, len(edges))
    ax.set_title(textwrap.fill(text, width=chars), fontsize=TITLE_PT)
    literal_text(fig)  # token labels such as "$$" are text, not mathtext
    fig.tight_layout()
    return fig


def save_graph_png(pruned: PrunedGraph, path: str | Path, title: str | None = None, max_edges: int = 400) -> Path:
    """Draw the pruned graph (:func:`graph_figure`) to ``path``; the format comes from the suffix."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in PICTURE_FORMATS:
        raise ValueError(f"{path}: the picture format comes from the suffix; use .png, .svg or .pdf")
    fig = graph_figure(pruned, title=title, max_edges=max_edges)
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" grows the canvas to everything drawn, so a long token label is never cut off either
    fig.savefig(path, format=suffix, dpi=150, bbox_inches="tight", pad_inches=0.15)
    return path
