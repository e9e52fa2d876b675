"""Benchmarks with their real checkers: IFEval, MATH, HumanEval (sandboxed), agent traces.

``get_benchmark(name)`` gives an object with ``load(source, limit)`` and ``check(item, completion)``; see
:mod:`failtrace.benchmarks.base` for the contract and :mod:`failtrace.benchmarks.loaders` for the accepted sources.
"""

from failtrace.benchmarks.base import Benchmark, Item, LoadReport, Verdict
from failtrace.benchmarks.registry import (
    BENCHMARK_NAMES,
    benchmark_names,
    get_benchmark,
    load_benchmark,
    register_benchmark,
    resolve_benchmark,
)

__all__ = ["BENCHMARK_NAMES", "Benchmark", "Item", "LoadReport", "Verdict", "benchmark_names", "get_benchmark",
           "load_benchmark", "register_benchmark", "resolve_benchmark"]
