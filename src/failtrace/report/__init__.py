"""The HTML report of a failure study (built on :mod:`failtrace.views` and the stored cases).

``build_report`` is imported lazily so that ``import failtrace.report`` does not pull in matplotlib.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "build_report": "failtrace.report.build",
    "build_report_from_store": "failtrace.report.build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'failtrace.report' has no attribute {name!r}")
