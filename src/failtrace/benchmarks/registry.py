"""The one registry of benchmarks, by name, for the CLI, the pipeline and Python: ``get_benchmark("ifeval")``.

Built-in benchmarks are registered lazily as ``"module:Class"`` (importing the registry does not import the
checkers' dependencies). Adding one is one line, here or from your own code::

    register_benchmark("gsm8k", "mypackage.gsm8k:GSM8KBenchmark")   # a class (or factory), by path or object
    register_benchmark(my_benchmark)                               # a ready object, under my_benchmark.name

Registered names work everywhere a benchmark name is accepted (``failtrace collect --benchmark NAME`` included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

from failtrace.benchmarks.base import Benchmark, LoadReport, checker_options
from failtrace.errors import FailtraceError

Factory = Callable[..., Benchmark]
_REGISTRY: dict[str, Factory | str | Benchmark] = {
    "ifeval": "failtrace.benchmarks.ifeval:IFEvalBenchmark",
    "math": "failtrace.benchmarks.mathbench:MathBenchmark",
    "humaneval": "failtrace.benchmarks.humaneval:HumanEvalBenchmark",
    "traces": "failtrace.benchmarks.traces:TracesBenchmark",
    "demo": "failtrace.benchmarks.demo:DemoBenchmark",
}
BENCHMARK_NAMES: tuple[str, ...] = tuple(_REGISTRY)  # the built-in ones


def register_benchmark(benchmark: Benchmark | Factory | str, factory: Factory | str | None = None) -> None:
    """``register_benchmark(obj)`` (a ready benchmark, under ``obj.name``) or ``register_benchmark(name, factory)``
    (a class/function building one from options, or its ``"module:attribute"`` path, imported on first use)."""
    if factory is not None:
        if not isinstance(benchmark, str):
            raise TypeError("register_benchmark(name, factory): the name must be a string")
        _REGISTRY[benchmark.strip().lower()] = factory
    elif isinstance(benchmark, str) or not hasattr(benchmark, "name"):
        raise TypeError("register_benchmark needs a benchmark object with a .name, or (name, factory)")
    else:
        _REGISTRY[str(benchmark.name).strip().lower()] = benchmark  # type: ignore[union-attr]


def benchmark_names() -> tuple[str, ...]:
    """Every registered name (built-in first)."""
    return tuple(_REGISTRY)


def _is_ready(entry: Any) -> bool:
    """A ready benchmark object (as registered or given), not a class, factory or ``"module:attr"`` path."""
    return hasattr(entry, "check") and not isinstance(entry, (type, str))


def get_benchmark(name: str, /, **options: Any) -> Benchmark:
    """The benchmark called ``name`` (case-insensitive). Options go to its constructor, e.g.
    ``get_benchmark("ifeval", mode="loose")`` or ``get_benchmark("humaneval", plus="HumanEvalPlus.jsonl.gz")``."""
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise FailtraceError(f"unknown benchmark {name!r}; valid names: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[key]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = _REGISTRY[key] = getattr(import_module(module), attr)
    if _is_ready(entry) or not callable(entry):
        if options:
            raise FailtraceError(f"benchmark {key!r} was registered as a ready object; it takes no options")
        return entry  # type: ignore[return-value]
    try:
        return entry(**options)
    except TypeError as exc:
        raise FailtraceError(f"bad options for benchmark {key!r}: {exc}") from exc


def resolve_benchmark(name: str, overrides: Mapping[str, Benchmark] | None = None,
                      options: Mapping[str, Any] | None = None) -> Benchmark:
    """The benchmark called ``name``: from ``overrides`` (objects a caller passes in), else the registry's, built
    with ``options`` (a collection run's recorded ``checker`` options, so a re-check judges as the run did)."""
    options = dict(options or {})
    ready = overrides[name] if overrides and name in overrides else _REGISTRY.get(name.strip().lower())
    if _is_ready(ready):
        given = checker_options(ready)  # an object, given or registered ready-made: it must check as the run did
        if given != options:
            raise FailtraceError(f"the {name} benchmark given checks with options {given or 'none'}, but the run was "
                                 f"collected with {options or 'none'}; pass one built with the run's options")
        return ready  # type: ignore[return-value]
    return get_benchmark(name, **options)


def load_benchmark(name: str, source: str, limit: int | None = None) -> LoadReport:
    """Load ``source`` with the benchmark called ``name`` (see :mod:`failtrace.benchmarks.loaders` for sources)."""
    return get_benchmark(name).load(source, limit=limit)
