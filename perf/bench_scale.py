"""Items per minute of collect and pairs: the serial in-process path vs 1 and 2 Ray workers, in one run.

Every mode does the same items into its own store; the serial path runs torch on one thread (each Ray worker gets one
CPU and one thread), so the ratios compare like with like. Worker start-up (Ray, imports, model load) is timed apart
from the work: items/min counts only the stage itself, start-up is printed on its own line.

    PYTHONPATH=src .venv/bin/python perf/bench_scale.py [--items 24] [--bundled-items 6]

Models: a toy Llama (hidden 256, 4 layers, random weights, saved to a folder the workers load) and, if
``--bundled-items`` > 0, the bundled SmolLM2-135M on the first IFEval items of tests/data.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _toy_folder(folder: Path) -> Path:
    from failtrace.testing.toy import toy_model, toy_tokenizer

    toy_model(0, hidden_size=256, layers=4).save_pretrained(folder, safe_serialization=True)
    toy_tokenizer().save_pretrained(folder)
    return folder


def _serial(store: Path, model: str, bench: Any, items: list[Any], budget: int, settings: Any,
            pair_limit: int) -> tuple[Any, Any]:
    import torch

    from failtrace.failures.collect import collect
    from failtrace.failures.pairs import find_pairs
    from failtrace.models.loading import load_model
    from failtrace.store import open_store

    torch.set_num_threads(1)
    lm = load_model(model, progress=False)
    with open_store(store) as st:
        c = collect(st, bench, items, lm, max_new_tokens=budget, progress=False)
        p = find_pairs(st, settings, models={lm.name: lm}, benchmarks={bench.name: bench}, limit=pair_limit,
                       progress=False)
    return c, p


def _on_ray(store: Path, model: str, workers: int, bench: Any, items: list[Any], budget: int, settings: Any,
            pair_limit: int) -> tuple[Any, Any, float]:
    from failtrace.scale import ModelSpec, WorkerPool, collect_on_ray, pairs_on_ray
    from failtrace.store import open_store

    t = time.perf_counter()
    pool = WorkerPool(ModelSpec(model), workers)
    startup = time.perf_counter() - t
    try:
        with open_store(store) as st:
            c = collect_on_ray(st, bench, items, ModelSpec(model), workers, max_new_tokens=budget, pool=pool,
                               progress=False)
            p = pairs_on_ray(st, settings, workers, benchmarks={bench.name: bench}, limit=pair_limit, pool=pool,
                             progress=False)
    finally:
        pool.close()
    return c, p, startup


def _bench_model(label: str, model: str, bench: Any, items: list[Any], budget: int, settings: Any,
                 pair_limit: int, tmp: Path) -> None:
    rates: dict[str, tuple[float, float]] = {}
    c, p = _serial(tmp / f"{label}-serial.duckdb", model, bench, items, budget, settings, pair_limit)
    rates["serial"] = (60 * c.generated / c.seconds, 60 * p.processed / p.seconds)
    print(f"[{label}] serial:    collect {c.generated} items in {c.seconds:.1f} s, pairs {p.processed} in "
          f"{p.seconds:.1f} s", flush=True)
    for n in (1, 2):
        c, p, startup = _on_ray(tmp / f"{label}-ray{n}.duckdb", model, n, bench, items, budget, settings, pair_limit)
        rates[f"ray {n}"] = (60 * c.generated / c.seconds, 60 * p.processed / p.seconds)
        print(f"[{label}] ray {n} worker(s): start-up {startup:.1f} s (not counted), collect {c.generated} items "
              f"in {c.seconds:.1f} s, pairs {p.processed} in {p.seconds:.1f} s", flush=True)
    base = rates["serial"]
    print(f"[{label}] {'mode':<10} {'collect/min':>12} {'x serial':>9} {'pairs/min':>10} {'x serial':>9}")
    for mode, (cr, pr) in rates.items():
        print(f"[{label}] {mode:<10} {cr:>12.1f} {cr / base[0]:>9.2f} {pr:>10.1f} {pr / base[1]:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=24, help="toy items")
    parser.add_argument("--bundled-items", type=int, default=6, help="IFEval items on the bundled model (0: skip)")
    args = parser.parse_args()

    import ray

    from failtrace.benchmarks.registry import resolve_benchmark
    from failtrace.failures.pairs import PairSettings
    from failtrace.scale.pool import NAMESPACE
    from failtrace.testing.toy import ToyBenchmark, toy_items

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
    print(f"ray.init (local cluster, 2 CPUs): {time.perf_counter() - t:.1f} s", flush=True)
    try:
        folder = _toy_folder(tmp / "toy")
        _bench_model("toy", str(folder), ToyBenchmark(mode="contains", max_new_tokens=24),
                     toy_items(args.items), 24, PairSettings(top_k=4, max_positions=4), args.items, tmp)
        if args.bundled_items > 0:
            ifeval = resolve_benchmark("ifeval")
            data = ROOT / "tests" / "data" / "ifeval_prompt_without_instruction_sample.jsonl"
            items = ifeval.load(str(data), args.bundled_items).items
            _bench_model("smollm2", "smollm2-135m-instruct", ifeval, items, 32,
                         PairSettings(top_k=2, max_positions=2), 4, tmp)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
