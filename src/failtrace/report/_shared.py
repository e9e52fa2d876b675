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

try:  # the views package -- preferred. Imported from the submodules: ``failtrace.views.graph_html`` is both a lazy
    # export and a submodule name, so ``from failtrace.views import graph_html`` can yield the module.
    from failtrace.views.graph_html import graph_html as _graph_html  # type: ignore[import-not-found]
    from failtrace.views.graph_png import save_graph_png as _save_graph_png  # type: ignore[import-not-found]
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
    """Relevance divided by the largest finite |R| among non-special tokens (among all finite ones if every token is
    special; 1 if that maximum is 0). Special tokens are attention sinks and would otherwise set the scale for
    everything; non-finite entries (not computed) are ignored by the scale and stay NaN."""
    if _normalize is not None:
        return np.asarray(_normalize(relevance, special_mask), dtype=np.float64)
    r = np.asarray(relevance, dtype=np.float64)
    sp = np.zeros(len(r), dtype=bool)
    given = np.asarray(special_mask, dtype=bool)[: len(r)]
    sp[: len(given)] = given
    finite = np.isfinite(r)
    pick = finite & ~sp if (finite & ~sp).any() else finite
    scale = float(np.abs(r[pick]).max()) if pick.any() else 0.0
    return r / (scale if scale > 0 else 1.0)
