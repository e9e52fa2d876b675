"""Items per minute of collect, pairs and analyse: the serial in-process path vs 1 and 2 Ray workers, interleaved.

The machine this runs on may be shared, so the modes are measured in ROUNDS: each round runs every mode once on the
same items (each into a fresh copy of the input store), the order rotated from round to round, so a change in
background load hits every mode alike. Reported per mode: items/min over all rounds, the ratio against the serial
path, and the range of the per-round ratios (how much the load moved things). Worker start-up (Ray, imports, model
load) is timed apart and not counted: pools are started once and reused by every round, after a warm-up round
that is not counted either.

Modes: ``serial 1t`` (torch on one thread: each Ray worker also gets one CPU and one thread, so ratios against it
compare like with like), ``serial Nt`` (torch's default, all N cores: what ``failtrace collect`` without
``--workers`` does), ``ray 1``, ``ray 2`` (this script's cluster runs its workers at niceness 0), and
``ray 2 nice15`` (2 workers reniced to 15: Ray's default, which failtrace's own local cluster keeps; the pair
shows what the workers' niceness changes on the machine at hand).

    PYTHONPATH=src .venv/bin/python perf/bench_scale.py [--rounds 3] [--items 24] [--bundled-items 4]

Models: a toy Llama (hidden 256, 4 layers, random weights) for collect and pairs; the toy store with clean pairs of
tests/cases_toy.py for analyse; the bundled SmolLM2-135M on IFEval items of tests/data for collect (0: skip).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1


def _toy_folder(folder: Path) -> Path:
    from failtrace_testkit.toy import toy_model, toy_tokenizer

    toy_model(0, hidden_size=256, layers=4).save_pretrained(folder, safe_serialization=True)
    toy_tokenizer().save_pretrained(folder)
    return folder


class Pools:
    """The Ray pools of one model: 1 worker, 2 workers, and 2 workers reniced to 15 (started once, timed)."""

    def __init__(self, model: str, label: str) -> None:
        from failtrace.scale import WorkerModel, WorkerPool

        self.spec = WorkerModel(model)
        self.pools: dict[str, Any] = {}
        for mode, n in (("ray 1", 1), ("ray 2", 2), ("ray 2 nice15", 2)):
            t = time.perf_counter()
            self.pools[mode] = WorkerPool(self.spec, n, cpus_per_worker=1)
            print(f"[{label}] start-up {mode}: {time.perf_counter() - t:.1f} s (not counted)", flush=True)
        import ray

        ray.get([a.__ray_call__.remote(lambda self: os.nice(15)) for a in self.pools["ray 2 nice15"].actors])

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


def _rounds(label: str, stage: str, modes: list[str], rounds: int, run: Callable[[str, int], tuple[int, float]],
            ) -> None:
    """Run ``run(mode, round) -> (items, seconds)`` for every mode in every round (rotated); print the table.

    Round 0 is a warm-up, not counted: each mode's first run pays one-time costs (the checker's first use in each
    worker, first-call kernel set-up) that would otherwise fall on whichever mode runs first.
    """
    warm = {m: run(m, -1) for m in modes}
    print(f"[{label}] {stage} warm-up (not counted): " + ", ".join(f"{m} {v[1]:.1f} s" for m, v in warm.items()),
          flush=True)
    done: dict[str, list[tuple[int, float]]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
            done[mode].append(run(mode, r))
        print(f"[{label}] {stage} round {r + 1}: " + ", ".join(f"{m} {done[m][-1][1]:.1f} s" for m in modes)
              + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    base = "serial 1t"
    rate = {m: 60 * sum(n for n, _ in v) / sum(s for _, s in v) for m, v in done.items()}
    print(f"[{label}] {stage}: {'mode':<13} {'items':>5} {'seconds':>8} {'items/min':>10} {'x serial 1t':>12} "
          f"{'per-round x':>14}")
    for m, v in done.items():
        per_round = [(done[base][i][1] / done[base][i][0]) / (s / n) for i, (n, s) in enumerate(v)]
        print(f"[{label}] {stage}: {m:<13} {sum(n for n, _ in v):>5} {sum(s for _, s in v):>8.1f} {rate[m]:>10.1f} "
              f"{rate[m] / rate[base]:>12.2f} {min(per_round):>6.2f}-{max(per_round):<6.2f}", flush=True)


def _serial_threads(mode: str) -> None:
    import torch

    torch.set_num_threads(1 if mode == "serial 1t" else CORES)


def _collect_rounds(label: str, lm: Any, pools: Pools, bench: Any, items: list[Any], budget: int, rounds: int,
                    tmp: Path) -> Path:
    """collect in every mode; returns a store with the collection done (the input of pairs)."""
    from failtrace.failures.collect import collect
    from failtrace.scale import collect_on_ray
    from failtrace.store import open_store

    def run(mode: str, r: int) -> tuple[int, float]:
        path = tmp / f"{label}-collect-{mode.replace(' ', '_')}-{r}.duckdb"
        with open_store(path) as st:
            if mode.startswith("serial"):
                _serial_threads(mode)
                s = collect(st, bench, items, lm, max_new_tokens=budget, progress=False)
            else:
                s = collect_on_ray(st, bench, items, pools.spec, len(pools.pools[mode].actors), max_new_tokens=budget,
                                   pool=pools.pools[mode], progress=False)
        return s.generated, s.seconds

    _rounds(label, "collect", _modes(), rounds, run)
    return tmp / f"{label}-collect-serial_1t--1.duckdb"


def _modes() -> list[str]:
    return ["serial 1t"] + ([f"serial {CORES}t"] if CORES > 1 else []) + ["ray 1", "ray 2", "ray 2 nice15"]


def _copy_rounds(label: str, stage: str, source: Path, rounds: int, tmp: Path,
                 serial: Callable[[Any], tuple[int, float]], on_ray: Callable[[Any, Any], tuple[int, float]],
                 pools: Pools) -> None:
    """A stage that reads a prepared store (pairs, analyse): each run works on a fresh copy of ``source``."""
    from failtrace.store import open_store

    def run(mode: str, r: int) -> tuple[int, float]:
        path = tmp / f"{label}-{stage}-{mode.replace(' ', '_')}-{r}.duckdb"
        shutil.copy(source, path)
        with open_store(path) as st:
            if mode.startswith("serial"):
                _serial_threads(mode)
                return serial(st)
            return on_ray(st, pools.pools[mode])

    _rounds(label, stage, _modes(), rounds, run)


def _toy(args: argparse.Namespace, tmp: Path) -> None:
    from failtrace.failures.pairs import PairSettings, find_pairs
    from failtrace.models.loading import load_model
    from failtrace.scale import pairs_on_ray
    from failtrace_testkit.toy import ToyBenchmark, toy_items

    folder = _toy_folder(tmp / "toy")
    lm = load_model(str(folder), progress=False)
    bench, settings = ToyBenchmark(mode="contains", max_new_tokens=24), PairSettings(top_k=4, max_positions=4)
    pools = Pools(str(folder), "toy")
    try:
        collected = _collect_rounds("toy", lm, pools, bench, toy_items(args.items), 24, args.rounds, tmp)

        def serial(st: Any) -> tuple[int, float]:
            p = find_pairs(st, settings, models={lm.name: lm}, benchmarks={bench.name: bench}, progress=False)
            return p.processed, p.seconds

        def on_ray(st: Any, pool: Any) -> tuple[int, float]:
            p = pairs_on_ray(st, settings, len(pool.actors), benchmarks={bench.name: bench}, pool=pool,
                             progress=False)
            return p.processed, p.seconds

        _copy_rounds("toy", "pairs", collected, args.rounds, tmp, serial, on_ray, pools)
    finally:
        pools.close()


def _cases(args: argparse.Namespace, tmp: Path) -> None:
    """analyse on the toy store with clean pairs that the cases tests use (tests/cases_toy.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from cases_toy import build_toy_store

    from failtrace.cases.analyse import analyse
    from failtrace.scale import analyse_on_ray

    info = build_toy_store(tmp / "cases.duckdb", tmp / "cases-model", n_items=args.case_items)
    lm = info["lm"]
    print(f"[cases] {len(info['clean'])} clean pairs to analyse per run (toy model, all six methods)", flush=True)
    pools = Pools(str(tmp / "cases-model"), "cases")
    try:
        def serial(st: Any) -> tuple[int, float]:
            s = analyse(st, models={lm.name: lm}, progress=False)
            return s.analysed, s.seconds

        def on_ray(st: Any, pool: Any) -> tuple[int, float]:
            s = analyse_on_ray(st, None, len(pool.actors), pool=pool, progress=False)
            return s.analysed, s.seconds

        _copy_rounds("cases", "analyse", tmp / "cases.duckdb", args.rounds, tmp, serial, on_ray, pools)
    finally:
        pools.close()


def _bundled(args: argparse.Namespace, tmp: Path) -> None:
    from failtrace.benchmarks.registry import resolve_benchmark
    from failtrace.models.loading import load_model

    ifeval = resolve_benchmark("ifeval")
    data = ROOT / "tests" / "data" / "ifeval_prompt_without_instruction_sample.jsonl"
    items = ifeval.load(str(data), args.bundled_items).items
    lm = load_model("smollm2-135m-instruct", progress=False)
    pools = Pools("smollm2-135m-instruct", "smollm2")
    try:
        _collect_rounds("smollm2", lm, pools, ifeval, items, args.bundled_tokens, args.rounds, tmp)
    finally:
        pools.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (every mode once per round)")
    parser.add_argument("--items", type=int, default=24, help="toy items (collect, pairs)")
    parser.add_argument("--case-items", type=int, default=12, help="toy items whose clean pairs are analysed")
    parser.add_argument("--bundled-items", type=int, default=4, help="IFEval items on the bundled model (0: skip)")
    parser.add_argument("--bundled-tokens", type=int, default=32, help="max new tokens on the bundled model")
    parser.add_argument("--only", choices=("toy", "cases", "smollm2"), help="run one part only")
    args = parser.parse_args()

    import ray

    from failtrace.scale.pool import NAMESPACE

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    t = time.perf_counter()
    # 5 actors of 1 CPU each live at once (1 + 2 + 2 workers); only one pool works at a time, so the extra logical
    # CPUs never oversubscribe the cores. Workers at niceness 0; the "nice15" pool is reniced to Ray's default.
    ray.init(num_cpus=5, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False,
             _system_config={"worker_niceness": 0})
    print(f"ray.init (local cluster): {time.perf_counter() - t:.1f} s; {CORES} cores; load average "
          f"{os.getloadavg()[0]:.1f} at start", flush=True)
    try:
        for part, fn in (("smollm2", _bundled), ("toy", _toy), ("cases", _cases)):
            if args.only in (None, part) and not (part == "smollm2" and args.bundled_items <= 0):
                fn(args, tmp)
    finally:
        ray.shutdown()
        print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
