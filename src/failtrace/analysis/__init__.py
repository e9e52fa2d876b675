"""Analyses of a case (pure functions, no store access; definitions in docs/ANALYSES.md): segments and their
relevance, the masking flip search, outcome categories with node ablation, failure patterns, graph summaries and the
Fig. 3 view of an ablated graph."""

from failtrace.analysis.ablation_view import AblationView, ablation_view
from failtrace.analysis.categories import CATEGORIES, categorize, node_ablation
from failtrace.analysis.graph_summary import graph_summary
from failtrace.analysis.masking import (
    Flip,
    flip_search,
    masked_delta,
    masked_scores,
    masking_order,
    never_masked,
    top_positions,
)
from failtrace.analysis.patterns import PATTERNS, failure_pattern
from failtrace.analysis.segments import (
    RELEVANT_SEGMENTS,
    normalize,
    relevant_segments,
    segment_labels,
    segment_relevance,
    spans_from_labels,
)

__all__ = ["CATEGORIES", "PATTERNS", "RELEVANT_SEGMENTS", "AblationView", "Flip", "ablation_view", "categorize",
           "failure_pattern", "flip_search", "graph_summary", "masked_delta", "masked_scores",
           "masking_order",
           "never_masked",
           "node_ablation",
           "normalize", "relevant_segments", "segment_labels", "segment_relevance", "spans_from_labels",
           "top_positions"]
