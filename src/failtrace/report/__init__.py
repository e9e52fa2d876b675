"""Views of failtrace records: token heatmaps (HTML, PNG/SVG, terminal), graph views and the HTML report.

Submodules are imported lazily so that ``import failtrace.report`` does not pull in matplotlib or rich until a view is
actually drawn.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "render_html": "failtrace.report.heatmap",
    "render_terminal": "failtrace.report.heatmap",
    "save_png": "failtrace.report.heatmap",
    "save_svg": "failtrace.report.heatmap",
    "heatmap_figure": "failtrace.report.heatmap",
    "build_report": "failtrace.report.build",
    "build_report_from_store": "failtrace.report.build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'failtrace.report' has no attribute {name!r}")
