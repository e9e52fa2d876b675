"""The paper's Fig. 3 picture of a case: its pruned attribution graph with the ablated nodes marked and the edges
through which they reached the prediction highlighted, beside the Δℓ curve of the ablation (data:
:func:`failtrace.analysis.ablation_view.ablation_view`).

Layout as the graph picture (:mod:`failtrace.report.graphfig`): one column per token position, one row per stage
(embeddings at the bottom). Ablated nodes are drawn as a black × in a thick black ring, numbered in ablation order
(a dashed ring when the pruned graph dropped the node: it was ablated but is not part of the drawn graph); the
final node has a gold ring. Edges on a path from an ablated node to the prediction keep the package colours (red
supports the target, blue the contrast; width and opacity by sqrt(|A|/max|A|)); every other edge and node is grey
and faint. The right panel plots Δℓ after ablating the first j nodes, j = 0 … budget, with the marked k.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from failtrace.analysis.ablation_view import AblationView
from failtrace.report.casepage import plain_token
from failtrace.views.graph_static import BLUE, RED, node_area, stage_shares

GREY, GOLD = "#b8b8b8", "#d4a017"  # lighter than the graph's grey: a node off the ablation's path, or special


def ablation_title(view: AblationView, prefix: str = "") -> str:
    """``prefix · ablating k nodes: Δℓ +3.10 → −0.42 (flipped)``."""
    verdict = "flipped: contrast above target" if view.flipped else "not flipped"
    text = (f"ablating {view.k} node{'s' if view.k != 1 else ''}: Δℓ {view.delta_before:+.2f} → "
            f"{view.delta_after:+.2f} ({verdict})")
    return f"{prefix} · {text}" if prefix else text


def _columns(view: AblationView) -> list[int]:
    cols = {t for _s, t, _r in view.nodes} | {e[1] for e in view.edges} | {e[3] for e in view.edges}
    cols |= {a.position for a in view.ablated if a.stage is not None} | {view.final[1]}
    return sorted(cols)


def _draw_edges(ax: Any, view: AblationView, x_of: dict[int, int], max_edges: int) -> None:
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgb

    down = set(view.downstream_edges)
    order = sorted(range(len(view.edges)), key=lambda e: -abs(view.edges[e][4]))
    shown = [e for e in order if e not in down][:max(0, max_edges - len(down))]
    if not view.edges:
        return
    wmax = max(abs(e[4]) for e in view.edges) or 1.0
    for group, highlight in ((shown, False), (sorted(down, key=lambda e: abs(view.edges[e][4])), True)):
        segs, colors, widths = [], [], []
        for e in (reversed(group) if not highlight else group):  # strongest last, on top
            ss, si, ts, ti, w = view.edges[e]
            a = (abs(w) / wmax) ** 0.5
            segs.append([(x_of[si], ss), (x_of[ti], ts)])
            if highlight:
                colors.append((*to_rgb(RED if w > 0 else BLUE), 0.35 + 0.65 * a))
                widths.append(0.8 + 3.2 * a)
            else:
                colors.append((*to_rgb(GREY), 0.10 + 0.35 * a))
                widths.append(0.3 + 1.5 * a)
        if segs:
            ax.add_collection(LineCollection(segs, colors=colors, linewidths=widths, zorder=2 if highlight else 1,
                                             gid="downstream-edges" if highlight else "other-edges"))


def _draw_nodes(ax: Any, view: AblationView, x_of: dict[int, int], special: Sequence[bool], ring: float) -> None:
    """Kept nodes (grey unless downstream), the prediction's gold ring, and a numbered ring × per ablated node
    (``ring``: its marker area in pt², sized to the row spacing so stacked rings do not overlap)."""
    down = set(view.downstream_nodes)
    share = dict(zip(((s, t) for s, t, _r in view.nodes), stage_shares(view.nodes, special)))  # as the graph's
    for on in (False, True):
        pts = [(s, t, r) for s, t, r in view.nodes if ((s, t) in down) == on]
        if not pts:
            continue
        face = [GREY if (t < len(special) and special[t]) or not on else (RED if r > 0 else BLUE) for s, t, r in pts]
        ax.scatter([x_of[t] for _s, t, _r in pts], [s for s, _t, _r in pts],
                   s=[node_area(share[s, t]) for s, t, _r in pts], c=face, alpha=1.0 if on else 0.45,
                   edgecolors="black" if on else "#999999", linewidths=0.4, zorder=3)
    fs, ft = view.final
    ax.scatter([x_of[ft]], [fs], s=260, facecolors="none", edgecolors=GOLD, linewidths=2.2, zorder=4)
    for j, a in enumerate(view.ablated, 1):
        if a.stage is None:
            continue
        x, y = x_of[a.position], a.stage
        ax.scatter([x], [y], s=ring, facecolors="none", edgecolors="black", linewidths=1.6, zorder=5,
                   linestyles="solid" if a.in_graph else (0, (2, 2)))
        ax.scatter([x], [y], s=ring * 0.4, marker="x", c="black", linewidths=1.8, zorder=6, gid=f"ablated-{j}")
        ax.annotate(str(j), (x, y), xytext=(-(ring ** 0.5) / 2 - 1, 0), textcoords="offset points", fontsize=7,
                    weight="bold", ha="right", va="center", zorder=7)


def _draw_curve(ax: Any, view: AblationView, curve: Sequence[float]) -> None:
    ks = list(range(len(curve)))
    ax.axhline(0.0, color="#555555", lw=0.8)
    ax.plot(ks, curve, color="#333333", lw=1.4, marker="o", ms=3.5, zorder=2)
    ax.scatter([view.k], [view.delta_after], s=80, c=BLUE if view.delta_after < 0 else RED, zorder=3,
               edgecolors="black", linewidths=0.8)
    ax.text(0.98, 0.98, f"marked: k = {view.k}, Δℓ = {view.delta_after:+.2f}", transform=ax.transAxes, ha="right",
            va="top", fontsize=8, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5})
    ax.set_xlabel("nodes ablated (largest relevance first)", fontsize=8)
    ax.set_ylabel("Δℓ = ℓ(target) − ℓ(contrast)", fontsize=8)
    ax.set_xticks(ks)
    ax.tick_params(labelsize=7)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    ax.set_title("Δℓ after ablation (< 0: flipped)", fontsize=8, loc="left")


def ablation_figure(view: AblationView, curve: Sequence[float], tokens: Sequence[str], special_mask: Sequence[bool],
                    path: Path, title: str = "", max_edges: int = 400) -> Path:
    """Draw the Fig. 3 picture of ``view`` to ``path`` (PNG); ``curve`` = the evidence's Δℓ for j = 0 … budget."""
    from failtrace.report.figures import _save

    return _save(draw_ablation(view, curve, tokens, special_mask, title, max_edges), path)


def draw_ablation(view: AblationView, curve: Sequence[float], tokens: Sequence[str], special_mask: Sequence[bool],
                  title: str = "", max_edges: int = 400) -> Any:
    """The Fig. 3 picture as a matplotlib Figure (no pyplot state). Artists carry ids for checks: ``ablated-<j>``
    (the × of the j-th ablated node), ``downstream-edges`` (the highlighted edges), ``other-edges``."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from failtrace.report.figures import _tight

    cols = _columns(view)
    x_of = {t: i for i, t in enumerate(cols)}
    graph_w = min(22.0, max(6.0, 0.34 * len(cols) + 2.5))
    fig = Figure(figsize=(graph_w + 3.6, min(10.0, max(4.2, 0.17 * len(view.stages) + 2.4))))
    grid = fig.add_gridspec(2, 2, width_ratios=[graph_w, 3.2], height_ratios=[3, 1])
    ax, cax, lax = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1])
    # one row of the graph is about (figure height − ~2.6 in of labels and title) / stages inches; 72 pt per inch
    row_pt = 72 * max(0.5, fig.get_figheight() - 2.6) / max(1, len(view.stages))
    ring = float(min(300.0, max(40.0, (0.95 * row_pt) ** 2)))
    special = [bool(x) for x in special_mask]
    _draw_edges(ax, view, x_of, max_edges)
    _draw_nodes(ax, view, x_of, special, ring)
    marked = {a.position for a in view.ablated}
    ax.set_xticks(range(len(cols)), [f"{plain_token(tokens[t])[:14]} [{t}]" if t < len(tokens) else str(t)
                                     for t in cols], rotation=90, fontsize=7, family="DejaVu Sans Mono")
    for lbl, t in zip(ax.get_xticklabels(), cols):  # "$" in a token: literal_text when the figure is saved
        if t in marked:
            lbl.set_color("black")
            lbl.set_fontweight("bold")
    step = max(1, len(view.stages) // 16)
    ax.set_yticks(range(0, len(view.stages), step), [view.stages[i] for i in range(0, len(view.stages), step)],
                  fontsize=7)
    ax.set_xlim(-0.7, len(cols) - 0.3)
    ax.set_ylim(-0.7, len(view.stages) - 0.3)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    handles = [Line2D([], [], marker="x", color="black", ls="", ms=8, mew=2, label="ablated node (number = order)"),
               Line2D([], [], color=RED, lw=2.5, label="edge on a path ablated → prediction (red +, blue −)"),
               Line2D([], [], color=GREY, lw=1.5, label="other kept edge"),
               Line2D([], [], marker="o", mfc="none", mec=GOLD, mew=2, ls="", ms=10, label="prediction node")]
    pruned_away = sum(1 for a in view.ablated if not a.in_graph)
    detail = (f"{len(view.downstream_edges)} of {len(view.edges)} kept edges lead from them to the prediction; "
              f"{view.through_share:.0%} of the prediction's kept |A| mass passes through them"
              + (f"; {pruned_away} ablated node(s) not in the pruned graph (dashed)" if pruned_away else ""))
    chars = max(40, int((fig.get_figwidth() - 0.4) * 72 / (9 * 0.6)))
    text = "\n".join(textwrap.fill(t, width=chars) for t in (ablation_title(view, title), detail))
    fig.suptitle(text, fontsize=9, x=0.01, ha="left", parse_math=False)
    _draw_curve(cax, view, curve)
    lax.axis("off")
    lax.legend(handles=handles, fontsize=7, loc="center left", frameon=False)
    _tight(fig)
    return fig
