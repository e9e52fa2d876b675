"""failtrace: explain why a language model got a benchmark item wrong.

The public API is re-exported here lazily so that ``import failtrace`` stays fast (torch and transformers load on
first use)::

    import failtrace
    model = failtrace.load_model("smollm2-135m-instruct")
    attr = failtrace.attribute(model, "The capital of France is", target=" Paris", contrast=" Lyon")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "failtrace.models",
    "LoadedModel": "failtrace.models",
    "DEFAULT_MODEL": "failtrace.models",
    "attribute": "failtrace.attribution",
    "Attribution": "failtrace.attribution",
    "lrp_rules": "failtrace.lrp",
    "FailtraceError": "failtrace.errors",
    "build_graph": "failtrace.graph",
    "AttributionGraph": "failtrace.graph",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'failtrace' has no attribute {name!r}")
