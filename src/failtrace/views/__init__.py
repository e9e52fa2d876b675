"""Views of failtrace records: token heatmaps (HTML, PNG/SVG, terminal) and attribution-graph pictures and pages.

Every view takes a record (an :class:`~failtrace.attribution.record.Attribution` or a pruned
:class:`~failtrace.graph.record.AttributionGraph`) and renders it; records never import views. Names are exported
lazily so that ``import failtrace.views`` pulls in neither matplotlib nor rich until something is drawn.

=====================  ==========================================  ============================
name                   what                                        module
=====================  ==========================================  ============================
heatmap_html           HTML token heatmap (page or fragment)       :mod:`.tokens_html`
heatmap_figure         two-panel matplotlib figure                 :mod:`.figure`
save_heatmap_png/svg   that figure as PNG / SVG                    :mod:`.figure`
render_terminal        rich terminal view                          :mod:`.terminal`
graph_html             interactive graph page (or fragment)        :mod:`.graph_interactive`
save_graph_html        that page to a file                         :mod:`.graph_interactive`
save_graph_png         layered graph picture (.png/.svg/.pdf)      :mod:`.graph_static`
spans_worth_showing    the positions of a long input to draw       :mod:`.common`
=====================  ==========================================  ============================
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "heatmap_html": "failtrace.views.tokens_html",
    "heatmap_figure": "failtrace.views.figure",
    "save_heatmap_png": "failtrace.views.figure",
    "save_heatmap_svg": "failtrace.views.figure",
    "render_terminal": "failtrace.views.terminal",
    "spans_worth_showing": "failtrace.views.common",
    "graph_html": "failtrace.views.graph_interactive",
    "save_graph_html": "failtrace.views.graph_interactive",
    "save_graph_png": "failtrace.views.graph_static",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'failtrace.views' has no attribute {name!r}")
