"""Pruning an attribution graph: node threshold, edge selection, and the subgraph connected to the final node.

Runs on the stored edges only (never recomputes an edge), so re-pruning with other settings is cheap.

1. **Nodes.** Each stage's |R| is divided by the largest |R| among that stage's non-special tokens (special tokens
   such as BOS soak up relevance and may exceed 1). Nodes below ``node_threshold`` are dropped together with their
   edges; the final node (last stage, last position) is always kept.
2. **Edges**, per transition, among the rows of kept target nodes:
   ``cumulative:p`` keeps the strongest edges until a fraction p of the transition's total |A| mass (summed over the
   kept target rows and all sources) is covered; ``global:τ`` keeps |A| > τ·|R_final|, with R_final the relevance of
   the final node (so τ is scale-free and one number serves every layer). Edges from dropped source nodes go.
3. **Connectivity.** Only nodes and edges on a directed path to the final node stay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

from failtrace.attribution.normalize import normalize
from failtrace.errors import FailtraceError

if TYPE_CHECKING:
    from failtrace.graph.record import AttributionGraph


@dataclass(frozen=True)
class PruneSpec:
    """Edge pruning: ``mode`` is ``cumulative`` (value p in (0, 1]) or ``global`` (value τ ≥ 0)."""

    mode: str
    value: float

    def __str__(self) -> str:
        return f"{self.mode}:{self.value:g}"

    @classmethod
    def parse(cls, spec: str | PruneSpec | None) -> PruneSpec:
        """``cumulative:0.85`` (default), ``global:0.01``; a bare number means cumulative."""
        if spec is None:
            return cls("cumulative", 0.85)
        if isinstance(spec, PruneSpec):
            out = spec
        else:
            text = str(spec).strip().lower()
            mode, _, value = text.partition(":")
            if not value:
                mode, value = "cumulative", mode
            if mode in ("cum", "mass", "p"):
                mode = "cumulative"
            if mode in ("tau", "threshold"):
                mode = "global"
            forms = "use cumulative:P (0 < P <= 1) or global:TAU (TAU >= 0)"
            if mode not in ("cumulative", "global"):
                raise FailtraceError(f"--prune {spec!r}: unknown mode {mode!r}; {forms}")
            try:
                num = float(value)
            except ValueError:
                raise FailtraceError(f"--prune {spec!r}: {value!r} is not a number; {forms}") from None
            out = cls(mode, num)
        given = f"{out.mode}:{out.value:g}" if isinstance(spec, PruneSpec) else str(spec)
        if out.mode == "cumulative" and not (0.0 < out.value <= 1.0 and math.isfinite(out.value)):
            raise FailtraceError(f"--prune {given!r}: the cumulative mass P must be in (0, 1], got {out.value:g}")
        if out.mode == "global" and not (out.value >= 0.0 and math.isfinite(out.value)):
            raise FailtraceError(f"--prune {given!r}: the global edge threshold TAU must be a finite number >= 0, "
                                 f"got {out.value:g}")
        return out


def check_node_threshold(value: float) -> float:
    """A node threshold must lie in [0, 1] (it compares normalised |R|)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise FailtraceError(f"--node-threshold must be in [0, 1] (it compares normalised |R|), got {value!r}")
    return float(value)


@dataclass
class PrunedGraph:
    """The pruned view of an :class:`AttributionGraph`: which nodes and which stored edges are kept."""

    graph: AttributionGraph
    node_threshold: float
    spec: PruneSpec
    nodes: np.ndarray  # bool [S, n]
    edge_keep: list[np.ndarray]  # per transition: indices into that EdgeSet
    coverage: list[float]  # per transition: kept |A| mass / total mass of the kept target rows
    notes: list[str] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return int(self.nodes.sum())

    @property
    def num_edges(self) -> int:
        return int(sum(len(k) for k in self.edge_keep))

    def node_list(self) -> list[tuple[int, int]]:
        """Kept nodes as (stage index, token position), bottom stage first."""
        s, t = np.nonzero(self.nodes)
        return list(zip(s.tolist(), t.tolist()))

    def edges(self) -> Iterator[tuple[int, int, int, int, float]]:
        """Kept edges as (source stage, source token, target stage, target token, weight)."""
        for es, keep in zip(self.graph.transitions, self.edge_keep):
            for k in keep.tolist():
                yield es.source_stage, int(es.source[k]), es.target_stage, int(es.target[k]), float(es.weight[k])


def normalised_relevance(graph: AttributionGraph) -> np.ndarray:
    """|R| per stage divided by the stage's largest |R| among non-special tokens ([S, n]; NaN where unknown)."""
    return np.abs(normalize(graph.relevance, graph.special_mask))


@dataclass
class EdgeSelection:
    """Edges chosen per transition before the connectivity step.

    ``chosen[t]`` indexes ``graph.transitions[t]``; ``mass_before[t]`` is, for each chosen edge, the |A| mass of
    the stronger edges in kept target rows (before the source-node filter): under cumulative pruning at any
    p' <= p an edge survives exactly when ``mass_before < p' * totals[t]``.
    """

    keep_nodes: np.ndarray  # bool [S, n] after the node threshold
    chosen: list[np.ndarray]
    mass_before: list[np.ndarray]
    totals: list[float]
    notes: list[str]


def select_edges(graph: AttributionGraph, node_threshold: float = 0.01,
                 spec: str | PruneSpec | None = None) -> EdgeSelection:
    """Steps 1 and 2 of the pruning (node threshold, edge selection); stored edges only."""
    node_threshold = check_node_threshold(node_threshold)
    spec = PruneSpec.parse(spec)
    retained = float(graph.metadata.get("retain_node_threshold", 0.0) or 0.0)
    if node_threshold < retained - 1e-12:
        raise FailtraceError(
            f"node threshold {node_threshold:g} is below the {retained:g} this graph's edges were computed for; "
            f"rebuild the graph with retain_node_threshold <= {node_threshold:g}"
        )
    norm = normalised_relevance(graph)
    top, final_pos = graph.final_node
    keep_nodes = np.nan_to_num(norm, nan=-1.0) >= node_threshold
    keep_nodes[top, final_pos] = True
    r_final = abs(float(graph.relevance[top, final_pos]))
    scale = r_final if r_final > 0 else 1.0
    notes: list[str] = []
    chosen_all: list[np.ndarray] = []
    before_all: list[np.ndarray] = []
    totals: list[float] = []
    for es in graph.transitions:
        tgt_ok = keep_nodes[es.target_stage]
        idx = np.nonzero(tgt_ok[es.target])[0]
        total = float(np.nansum(es.row_mass[tgt_ok & es.computed]))
        mag = np.abs(es.weight[idx].astype(np.float64))
        cum = np.cumsum(mag)
        before = cum - mag
        name = f"{graph.stages[es.source_stage].name}->{graph.stages[es.target_stage].name}"
        if spec.mode == "cumulative":
            if total <= 0 or idx.size == 0:
                k = 0
            else:
                k = int(np.searchsorted(cum, spec.value * total * (1 - 1e-9), side="left")) + 1
                if k > idx.size:
                    k = idx.size
                    if es.floor > 0:
                        notes.append(f"{name}: stored edges cover {cum[-1] / total:.1%} of the mass, less than "
                                     f"p={spec.value:g}; kept every stored edge (raise the edge budget)")
            pick = np.arange(k)
        else:
            thr = spec.value * scale
            pick = np.nonzero(mag > thr)[0]
            if es.floor > thr:
                notes.append(f"{name}: edges weaker than {es.floor:.3g} were not stored; tau={spec.value:g} "
                             "needs them (raise the edge budget)")
        chosen = idx[pick]
        src_ok = keep_nodes[es.source_stage][es.source[chosen]]
        chosen_all.append(chosen[src_ok])
        before_all.append(before[pick][src_ok])
        totals.append(total)
    return EdgeSelection(keep_nodes=keep_nodes, chosen=chosen_all, mass_before=before_all, totals=totals, notes=notes)


def connect(graph: AttributionGraph, chosen: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Step 3: nodes and edges (among ``chosen``) with a directed path to the final node."""
    top, final_pos = graph.final_node
    reach = np.zeros((len(graph.stages), graph.n_tokens), dtype=bool)
    reach[top, final_pos] = True
    kept: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(graph.transitions)
    for t in sorted(range(len(graph.transitions)), key=lambda t: -graph.transitions[t].target_stage):
        es = graph.transitions[t]
        edges = chosen[t][reach[es.target_stage][es.target[chosen[t]]]]
        reach[es.source_stage][es.source[edges]] = True
        kept[t] = edges
    return reach, kept


def prune(graph: AttributionGraph, node_threshold: float = 0.01, spec: str | PruneSpec | None = None) -> PrunedGraph:
    """Prune ``graph`` (see the module docstring); stored edges only, nothing is recomputed."""
    spec = PruneSpec.parse(spec)
    sel = select_edges(graph, node_threshold, spec)
    reach, kept = connect(graph, sel.chosen)
    coverage = [float(np.abs(es.weight[k].astype(np.float64)).sum() / tot) if tot > 0 else 0.0
                for es, k, tot in zip(graph.transitions, kept, sel.totals)]
    return PrunedGraph(graph=graph, node_threshold=float(node_threshold), spec=spec, nodes=reach, edge_keep=kept,
                       coverage=coverage, notes=sel.notes)
