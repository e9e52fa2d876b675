"""The one place the report imports code owned by other stages (views, normalisation, the ablation view), so a move
is a one-line change here."""

from __future__ import annotations

from failtrace.analysis.ablation_view import AblationView, ablation_view
from failtrace.attribution.normalize import normalize

from failtrace.views.graph_static import save_graph_png

__all__ = ["AblationView", "ablation_view", "normalize", "save_graph_png"]
