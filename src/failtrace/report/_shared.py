"""The one place the report imports code owned by other stages, so a move is a one-line change here.

- Graph pictures: ``graph_html`` / ``save_graph_png`` (the graph views; ``failtrace.views`` once the views package
  lands, ``failtrace.graph.views`` until then).
- Special-token normalisation: ``normalize`` (the package's one helper once merged:
  ``failtrace.attribution.normalize.normalize``, or ``failtrace.analysis.segments.normalize``; until then the same
  definition lives here, see below).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:  # the views package (house helper) -- preferred
    from failtrace.views import graph_html as _graph_html  # type: ignore[attr-defined]
    from failtrace.views import save_graph_png as _save_graph_png  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on which branch is merged
    _graph_html = None
    _save_graph_png = None

try:
    from failtrace.attribution.normalize import normalize as _normalize  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on which branch is merged
    try:
        from failtrace.analysis.segments import normalize as _normalize  # type: ignore[import-not-found]
    except ImportError:
        _normalize = None


def graph_html(pruned: Any, standalone: bool = False) -> str:
    """Interactive HTML view of a pruned attribution graph."""
    if _graph_html is not None:
        return _graph_html(pruned, standalone=standalone)
    from failtrace.graph.views import render_html

    return render_html(pruned)


def save_graph_png(pruned: Any, path: str | Path, title: str | None = None) -> Path:
    """Layered PNG picture of a pruned attribution graph (strongest edges)."""
    if _save_graph_png is not None:
        return _save_graph_png(pruned, path, title=title)
    from failtrace.graph.views import save_static

    return save_static(pruned, path, title=title)


def normalize(relevance: Sequence[float], special_mask: Sequence[bool]) -> np.ndarray:
    """Relevance divided by the largest |R| among non-special tokens (all tokens if every one is special; 1 if that
    maximum is 0). Special tokens are attention sinks and would otherwise set the scale for everything."""
    if _normalize is not None:
        return np.asarray(_normalize(relevance, special_mask), dtype=np.float64)
    r = np.nan_to_num(np.asarray(relevance, dtype=np.float64))
    sp = np.asarray(special_mask, dtype=bool)[: len(r)]
    ref = np.abs(r[~sp]) if (~sp).any() else np.abs(r)
    scale = float(ref.max()) if ref.size else 0.0
    return r / (scale if scale > 0 else 1.0)
