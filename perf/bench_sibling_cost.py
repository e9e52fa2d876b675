"""What ``--sibling`` costs on failures of a store: the default search without and with the sibling, same failures,
same run, alternating which goes first (not a test; issue 13).

Where the model's own top-k recovers, the sibling's rows are never decoded (docs/PAIRS.md, "Stronger sibling"), so
rollouts and tokens must be equal there and the time differs only by the sibling's one prefix pass; where it does
not, the sibling's top-k adds up to k rollouts per position.

    .venv/bin/python perf/bench_sibling_cost.py --store he.duckdb --items HumanEval/0,HumanEval/9 --threads 1
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from failtrace.benchmarks.registry import get_benchmark
from failtrace.failures.pair_types import PairSettings
from failtrace.failures.search import PairFinder
from failtrace.models.loading import load_model
from failtrace.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="a store with a collection run (read from a copy)")
    ap.add_argument("--items", required=True, help="comma-separated failed item ids")
    ap.add_argument("--sibling", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ids = args.items.split(",")
    copy = Path(tempfile.mkdtemp()) / "store.duckdb"  # a copy: the store may be open for writing elsewhere
    shutil.copy(args.store, copy)
    with open_store(copy, read_only=True) as st:
        run = st.runs("collect")[0]
        rows = {r["item_id"]: r for r in st.results(run.run_id, status="fail")}
        items = {i: st.get_item(run.benchmark, i) for i in ids}
    lm = load_model(run.model, progress=False)
    finders = {"alone": PairFinder(lm, PairSettings()),
               "sibling": PairFinder(lm, PairSettings(), load_model(args.sibling, progress=False))}
    bench = get_benchmark(run.benchmark)
    tot = {k: [0.0, 0, 0] for k in finders}
    for n, i in enumerate(ids):
        r = rows[i]
        for which in (("alone", "sibling") if n % 2 == 0 else ("sibling", "alone")):
            t = time.perf_counter()
            res = finders[which].find(bench, items[i], r["prompt_ids"], r["token_ids"],
                                      run.settings["max_new_tokens"], r["finish_reason"])
            dt = time.perf_counter() - t
            tot[which][0] += dt
            tot[which][1] += res.rollouts
            tot[which][2] += res.tokens_decoded
            print(f"  {i} {which}: {(res.status, res.completion_offset, res.contrast_id, res.contrast_source)} "
                  f"rollouts {res.rollouts} tokens {res.tokens_decoded} {dt:.1f} s", flush=True)
    for k, (s, ro, to) in tot.items():
        print(f"{k:<8} s/failure {s / len(ids):.1f} rollouts/failure {ro / len(ids):.1f} "
              f"tokens/failure {to / len(ids):.0f}")
    print(f"sibling/alone: time x{tot['sibling'][0] / tot['alone'][0]:.2f}, "
          f"tokens x{tot['sibling'][2] / max(1, tot['alone'][2]):.2f}")


if __name__ == "__main__":
    main()
