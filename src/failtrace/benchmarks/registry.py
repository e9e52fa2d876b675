"""Benchmarks by name, for the CLI and the pipeline: ``get_benchmark("ifeval")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from failtrace.benchmarks.base import Benchmark
from failtrace.errors import FailtraceError


def _ifeval(**options: Any) -> Benchmark:
    from failtrace.benchmarks.ifeval import IFEvalBenchmark

    return IFEvalBenchmark(**options)


def _math(**options: Any) -> Benchmark:
    from failtrace.benchmarks.mathbench import MathBenchmark

    return MathBenchmark(**options)


def _humaneval(**options: Any) -> Benchmark:
    from failtrace.benchmarks.humaneval import HumanEvalBenchmark

    return HumanEvalBenchmark(**options)


def _traces(**options: Any) -> Benchmark:
    from failtrace.benchmarks.traces import TracesBenchmark

    return TracesBenchmark(**options)


def _demo(**options: Any) -> Benchmark:
    from failtrace.benchmarks.demo import DemoBenchmark

    return DemoBenchmark(**options)


# Lazy factories: importing the registry does not import the checkers' dependencies.
_FACTORIES: dict[str, Callable[..., Benchmark]] = {"ifeval": _ifeval, "math": _math, "humaneval": _humaneval,
                                                    "traces": _traces, "demo": _demo}
BENCHMARK_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def get_benchmark(name: str, **options: Any) -> Benchmark:
    """The benchmark called ``name`` (case-insensitive). Options go to its constructor, e.g.
    ``get_benchmark("ifeval", mode="loose")`` or ``get_benchmark("humaneval", plus="HumanEvalPlus.jsonl.gz")``."""
    key = name.strip().lower()
    if key not in _FACTORIES:
        raise FailtraceError(f"unknown benchmark {name!r}; valid names: {', '.join(BENCHMARK_NAMES)}")
    try:
        return _FACTORIES[key](**options)
    except TypeError as exc:
        raise FailtraceError(f"bad options for benchmark {key!r}: {exc}") from exc
