"""The options of a graph build, checked before any model work: edge algorithm, LRP method, layers, thresholds.

``edges`` (the edge algorithm) and ``method`` (the LRP rule, as in :func:`failtrace.attribute`) are separate names:

* ``naive``: one backward per target token (the reference);
* ``packed``: B targets per backward as a batched vector-Jacobian product over one forward (:mod:`.edges_packed`);
* ``closed-form``: the per-head decomposition of :mod:`.closed_form`; layers it does not cover fall back to
  ``packed`` and a note says so;
* ``auto`` (default): ``closed-form`` where covered, else ``packed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from failtrace.errors import FailtraceError
from failtrace.graph.prune import PruneSpec, check_node_threshold
from failtrace.lrp.methods import lrp_method

EDGE_ALGORITHMS: tuple[str, ...] = ("auto", "naive", "packed", "closed-form")
KEEP_ALL_EDGES_UP_TO = 512  # inputs up to this many tokens keep every edge (any re-pruning is exact)


def parse_layers(spec: str | Sequence[int] | tuple[int, int] | None, num_layers: int) -> tuple[int, int]:
    """Layer range (first, last), inclusive, from ``None`` (all), ``"A-B"``, ``"A"``, ``"A,B,C"`` (contiguous) or ints.

    Edges are computed into every layer of the range (from the stage below it), so the range must be contiguous.
    Negative numbers count from the end (``-1`` is the last layer).
    """
    valid = f"valid layers are 0..{num_layers - 1} (or negative, counting from the end)"
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return 0, num_layers - 1
    values: list[int]
    if isinstance(spec, str):
        text = spec.replace(" ", "")
        try:
            if "-" in text[1:] and "," not in text:
                cut = text.index("-", 1)
                lo, hi = int(text[:cut]), int(text[cut + 1:])
                values = [lo, hi]
                span = True
            else:
                values = [int(v) for v in text.split(",") if v]
                span = False
        except ValueError:
            raise FailtraceError(f"--layers {spec!r} is not a layer range like '10-29', a layer '5' or a list "
                                 f"'3,4,5'; {valid}") from None
    else:
        values = [int(v) for v in spec]
        span = isinstance(spec, tuple) and len(values) == 2
    if not values:
        raise FailtraceError(f"--layers {spec!r} names no layer; {valid}")
    resolved = []
    for v in values:
        r = v + num_layers if v < 0 else v
        if not 0 <= r < num_layers:
            raise FailtraceError(f"layer {v} is out of range: the model has {num_layers} layers; {valid}")
        resolved.append(r)
    if span:
        lo, hi = resolved
        if lo > hi:
            raise FailtraceError(f"--layers {spec!r}: the first layer {lo} is above the last {hi}")
        return lo, hi
    ordered = sorted(set(resolved))
    if ordered != list(range(ordered[0], ordered[-1] + 1)):
        raise FailtraceError(f"--layers {spec!r} is not contiguous; edges link consecutive layers, so give a range "
                             f"such as {ordered[0]}-{ordered[-1]}")
    return ordered[0], ordered[-1]


@dataclass(frozen=True)
class GraphSettings:
    """Validated build options (see :func:`failtrace.graph.build.graph_from_ids` for their meaning)."""

    edges: str
    method: str
    first: int
    last: int
    mid_nodes: bool
    node_threshold: float
    prune: PruneSpec
    retain: float
    edge_budget: int | None
    budget_bytes: int
    batch_size: int | None
    special: np.ndarray


def check_edges(edges: str) -> str:
    """``edges`` if it names an edge algorithm, else a :class:`FailtraceError` listing them."""
    if edges not in EDGE_ALGORITHMS:
        raise FailtraceError(f"unknown edge algorithm {edges!r}; valid: {', '.join(EDGE_ALGORITHMS)}")
    return edges


def graph_settings(
    n: int, num_layers: int, *, edges: str, method: str, layers: str | Sequence[int] | tuple[int, int] | None,
    mid_nodes: bool, node_threshold: float, prune: str | PruneSpec | None, retain_node_threshold: float | None,
    edge_budget: int | str | None, memory_budget_mb: float, batch_size: int | None, special_mask: list[bool] | None,
) -> GraphSettings:
    """Check every option and resolve the defaults (``edge_budget="auto"``: all edges up to 512 tokens, else
    max(262144, 64·n) per transition)."""
    check_edges(edges)
    lrp_method(method)
    node_threshold = check_node_threshold(node_threshold)
    spec = PruneSpec.parse(prune)
    retain = node_threshold if retain_node_threshold is None else check_node_threshold(retain_node_threshold)
    if retain > node_threshold:
        raise FailtraceError(f"retain_node_threshold {retain:g} must not exceed the node threshold {node_threshold:g}")
    if not memory_budget_mb > 0:
        raise FailtraceError(f"memory budget must be positive, got {memory_budget_mb} MB")
    if n == 0:
        raise FailtraceError("the input is empty; give at least one token")
    first, last = parse_layers(layers, num_layers)
    if edge_budget == "auto":
        budget: int | None = None if n <= KEEP_ALL_EDGES_UP_TO else max(262_144, 64 * n)
    else:
        budget = None if edge_budget is None else int(edge_budget)
        if budget is not None and budget < 1:
            raise FailtraceError(f"edge budget must be at least 1 edge per transition, got {budget}")
    special = np.asarray(special_mask if special_mask is not None else [False] * n, dtype=bool)
    if special.shape[0] != n:
        raise FailtraceError(f"special_mask has {special.shape[0]} entries for {n} tokens")
    return GraphSettings(edges, method, first, last, mid_nodes, node_threshold, spec, retain, budget,
                         int(memory_budget_mb * 2**20), batch_size, special)
