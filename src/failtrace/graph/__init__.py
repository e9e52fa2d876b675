"""Attribution graphs: exact cross-layer edges (naive, batch-packed, closed form), pruning, metrics, export.

Entry points: :func:`build_graph` (a loaded model and a prompt) and :func:`graph_from_ids` (raw ids and an objective
function), both returning an :class:`AttributionGraph`; ``graph.prune(...)`` re-prunes without recomputing edges.
"""

from failtrace.graph.build import EDGE_ALGORITHMS, build_graph, graph_from_ids, parse_layers
from failtrace.graph.prune import PrunedGraph, PruneSpec, prune
from failtrace.graph.record import AttributionGraph, Stage
from failtrace.graph.edgestore import EdgeSet

__all__ = ["EDGE_ALGORITHMS", "AttributionGraph", "EdgeSet", "PruneSpec", "PrunedGraph", "Stage",
           "build_graph", "graph_from_ids", "parse_layers", "prune"]
