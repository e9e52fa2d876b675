"""Failure collection (greedy generation + the benchmark's checker) and target/contrast pairs with recovery."""

from failtrace.failures.collect import CollectSummary, collect, register_benchmark, resolve_benchmark, safe_check
from failtrace.failures.pairs import PairFinder, PairResult, PairSettings, PairsSummary, find_pairs

__all__ = [
    "CollectSummary",
    "PairFinder",
    "PairResult",
    "PairSettings",
    "PairsSummary",
    "collect",
    "find_pairs",
    "register_benchmark",
    "resolve_benchmark",
    "safe_check",
]
