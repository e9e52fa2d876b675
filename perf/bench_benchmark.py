"""The whole flow on real benchmark items with the bundled model: the paper's Table 1, categories, patterns and the
masking-flip table per attribution method (not a test; issue 9's acceptance run).

Runs ``collect`` -> ``pairs`` -> ``analyse`` on the first N items of real IFEval and MATH-500 files into one results
store (every stage is resumable and keyed, so a rerun of this script only does what is missing), then prints:

* Table 1 per benchmark: items, failures, clean pairs, clean rate (of all failures and of the *decidable* ones, i.e.
  failures that did not hit the token budget), average tokens per case;
* the status of every non-clean failure (why it gave no clean pair);
* the pair search's cost per failure (seconds, rollouts, tokens decoded; read from the stored pair rows);
* outcome categories (paper Fig. 1) and failure patterns;
* the masking-flip table: for every method the share of cases flipped by masking its top-k tokens, k = 1, 2, 3, 5,
  10, and the mean/median k* (the paper: about 2 tokens);
* mean normalised segment relevance (AttnLRP) by category;
* ``analyse`` cost per case as *passes-equivalent*: the case's build seconds over one AttnLRP pass on the same
  context measured in this run (the baseline does the same forward + backward under the same threads).

    .venv/bin/python perf/bench_benchmark.py --store runs.duckdb \
        --ifeval ../shared/benchmarks/ifeval/input_data.jsonl --ifeval-items 50 --ifeval-tokens 256 \
        --math ../shared/benchmarks/math500/test.jsonl --math-items 30 --math-tokens 384

With ``--old-vs-new N`` it also runs the pair search as issue 13 found it against today's on the same stored
failures, same run (``perf/oldnew.py``; ``--old-cap-s`` stops a slow old search, ``--deadline-s`` the whole
comparison, ``--every K`` samples one failure in K, ``--workers W`` shares them out to W one-thread processes,
``--device cuda`` puts every model on the GPU), e.g. session 10's run:

    .venv/bin/python perf/bench_benchmark.py --store ifeval.duckdb --stages none --old-vs-new 14 --every 3 \
        --old-cap-s 600 --only ifeval --workers 2 --baseline-cases 0 --threads 1
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import Counter, defaultdict
from typing import Any

import torch

from failtrace.benchmarks.registry import get_benchmark, load_benchmark
from failtrace.cases.analyse import analyse
from failtrace.cases.settings import CaseSettings
from failtrace.failures.collect import collect
from failtrace.failures.pairs import find_pairs
from failtrace.failures.pair_types import PairSettings
from failtrace.models.loading import load_model
from failtrace.report import tables as T
from failtrace.store import open_store
from failtrace.store.cases import load_cases

from oldnew import old_vs_new  # perf/ is on sys.path when run as a script
from tablefmt import table as _table

KS = (1, 2, 3, 5, 10)


def _stage(name: str, fn: Any) -> Any:
    t = time.perf_counter()
    out = fn()
    print(f"[{name}] {time.perf_counter() - t:.1f} s this call", flush=True)
    return out


def run_stages(args: argparse.Namespace, lm: Any) -> None:
    """collect (per benchmark), pairs, analyse: each resumes where an earlier call stopped."""
    jobs = [("ifeval", args.ifeval, args.ifeval_items, args.ifeval_tokens),
            ("math", args.math, args.math_items, args.math_tokens)]
    with open_store(args.store) as st:
        for name, path, n, tokens in jobs:
            if not path or "collect" not in args.stages:
                continue
            bench = get_benchmark(name)
            items = load_benchmark(name, path, limit=n).items
            _stage(f"collect {name}", lambda: collect(st, bench, items, lm, max_new_tokens=tokens,
                                                      batch_size=args.batch_size, data=path, progress=False))
        settings = PairSettings(top_k=args.top_k, max_positions=args.max_positions,
                                try_unbounded=args.try_unbounded)
        if "pairs" in args.stages:
            _stage("pairs", lambda: find_pairs(st, settings, models={lm.name: lm}, progress=True))
        if "analyse" in args.stages:
            _stage("analyse", lambda: analyse(st, CaseSettings(), models={lm.name: lm}, progress=True))


def _decoded(pair: dict[str, Any]) -> int:
    """Tokens the search decoded: the schema-3 column, else the count older stores wrote into the reason."""
    if pair.get("tokens_decoded") is not None:
        return int(pair["tokens_decoded"])
    m = re.search(r"(\d+) tokens decoded", pair.get("reason") or "")
    return int(m.group(1)) if m else 0


def pair_tables(st: Any) -> None:
    rows = st.status_rows()
    pairs = st.pairs()
    by_bench: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in pairs:
        by_bench[p["benchmark"]].append(p)
    cases = load_cases(st)
    t1 = []
    for r in rows:
        if r.pair_run_id is None or not sum(r.pairs.values()):  # no pair run, or one interrupted before its first
            continue
        mine = [c for c in cases if c.pair_run_id == r.pair_run_id]
        paired = sum(r.pairs.values())  # less than failures when the pairs stage was stopped early
        unb = r.pairs.get("unbounded", 0)
        clean = r.pairs.get("clean", 0)
        t1.append([r.benchmark, r.items, r.failed, paired, clean, clean / paired,
                   clean / (paired - unb) if paired > unb else None, unb, len(mine),
                   statistics.mean(len(c.token_ids) for c in mine) if mine else None])
    _table("Table 1 (paper): failures -> clean pairs -> cases (rates over the failures searched)",
           ["benchmark", "items", "failures", "searched", "clean", "clean rate", "clean / decidable", "unbounded",
            "cases", "avg tokens/case"], t1)
    statuses = sorted({p["status"] for p in pairs})
    _table("Pair status of every failure", ["benchmark", *statuses],
           [[b, *(sum(p["status"] == s for p in ps) for s in statuses)] for b, ps in sorted(by_bench.items())])
    cost = []
    for b, ps in sorted(by_bench.items()):
        n = len(ps)
        cost.append([b, n, sum(p["seconds"] or 0 for p in ps) / n, sum(p["rollouts"] for p in ps) / n,
                     sum(_decoded(p) for p in ps) / n, statistics.median(p["seconds"] or 0 for p in ps)])
    _table("Pair search cost per failure", ["benchmark", "failures", "mean s", "rollouts", "tokens decoded",
                                            "median s"], cost)


def case_tables(st: Any, lm: Any, baseline_cases: int) -> None:
    cases = load_cases(st)
    if not cases:
        print("\nno cases")
        return
    for title, rows in (("Outcome categories (Fig. 1)", T.category_rows(cases)),
                        ("Failure patterns (Fig. 1)", T.pattern_rows(cases))):
        _table(title, ["benchmark", "label", "cases", "share"],
               [[r["benchmark"], r["label"], r["cases"], r["share"]] for r in rows])
    flips = {(r["benchmark"], r["method"], r["k"]): r["flip_rate"] for r in T.flip_rate_rows(cases)}
    krows = []
    for r in T.kstar_rows(cases):
        krows.append([r["benchmark"], r["method"], r["cases"],
                      *(flips.get((r["benchmark"], r["method"], k)) for k in KS),
                      r["mean_k_star"], r["median_k_star"]])
    _table(f"Masking flips the prediction: share of cases with k* <= k (K = {T.max_k(cases)})",
           ["benchmark", "method", "cases", *(f"k<={k}" for k in KS), "mean k*", "median k*"], krows)
    segs = T.segment_rows(cases)
    _table("Mean normalised segment relevance (AttnLRP) by category",
           ["benchmark", "category", "segment", "cases", "mean"],
           [[r["benchmark"], r["category"], r["segment"], r["cases"], r["mean_normalised_relevance"]]
            for r in segs if r["method"] == "attnlrp"])
    analyse_cost(cases, lm, baseline_cases)


def analyse_cost(cases: list[Any], lm: Any, n: int) -> None:
    """Case build seconds (stored per case) over one AttnLRP pass on the same context, timed now."""
    from failtrace.attribution.engine import relevance_pass
    from failtrace.cases.build import logit_diff_fn

    ratios, where = [], Counter()
    if n < 1:
        return
    for c in cases[:n]:
        fn = logit_diff_fn(c.target_id, c.contrast_id)
        relevance_pass(lm.model, c.token_ids, fn, method="attnlrp")  # warm-up
        t = time.perf_counter()
        relevance_pass(lm.model, c.token_ids, fn, method="attnlrp")
        one = time.perf_counter() - t
        total = sum(c.seconds.values())
        ratios.append(total / one)
        for k, v in c.seconds.items():
            where[k.split(":")[0] if ":" not in k else f"{k.split(':')[0]} (all methods)"] += v / one
    m = len(ratios)
    _table(f"analyse cost per case in AttnLRP passes ({m} cases)", ["part", "passes-equivalent"],
           [[k, v / m] for k, v in where.most_common()] + [["total (mean)", statistics.mean(ratios)],
                                                           ["total (max)", max(ratios)]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--ifeval", default=None)
    ap.add_argument("--ifeval-items", type=int, default=50)
    ap.add_argument("--ifeval-tokens", type=int, default=256)
    ap.add_argument("--math", default=None)
    ap.add_argument("--math-items", type=int, default=30)
    ap.add_argument("--math-tokens", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=PairSettings.top_k)
    ap.add_argument("--max-positions", type=int, default=PairSettings.max_positions)
    ap.add_argument("--skip-unbounded", action="store_true",
                    help="do not search failures that hit the budget (the default now; kept for older commands)")
    ap.add_argument("--try-unbounded", action="store_true", help="search failures that hit the budget too")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--bounded-only", dest="bounded", action="store_const", const=True, default=None,
                       help="--old-vs-new only on failures that stopped within the budget")
    which.add_argument("--unbounded-only", dest="bounded", action="store_const", const=False,
                       help="--old-vs-new only on failures that hit the budget")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="torch device of the model (and of every --workers process)")
    ap.add_argument("--stages", default="collect,pairs,analyse",
                    help="stages to run (e.g. analyse alone after a pairs stage stopped early)")
    ap.add_argument("--only-print", action="store_true", help="print the tables of the store, run nothing")
    ap.add_argument("--old-vs-new", type=int, default=0, help="also time the old search on N failures per bench")
    ap.add_argument("--baseline", choices=("old", "no-halt", "no-drafts", "no-completion-drafts"), default="old",
                    help="--old-vs-new baseline: the search before the cost cuts, or the default search with only "
                         "halting at the answer, or only the lookup drafts, off")
    ap.add_argument("--pair-status", default=None, help="--old-vs-new only on failures whose stored pair has it")
    ap.add_argument("--old-cap-s", type=float, default=None,
                    help="--old-vs-new: stop the old search after this many seconds per failure (a lower bound)")
    ap.add_argument("--only", default=None, help="--old-vs-new only on this benchmark's runs")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="--old-vs-new: stop every search this many seconds after the comparison starts (searches "
                         "running then are 'capped', later ones 'not started'; works with --workers)")
    ap.add_argument("--every", type=int, default=1,
                    help="--old-vs-new: every k-th failure of each run (a sample spread over the run), then N")
    ap.add_argument("--workers", type=int, default=1,
                    help="--old-vs-new: share the failures out to this many processes (one torch thread each)")
    ap.add_argument("--baseline-cases", type=int, default=12, help="cases whose analyse cost is measured")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device)
    collecting = not args.only_print and "collect" in args.stages  # else the store's runs have their own budgets
    jobs = [f"{name} {n} items @ {tokens} tokens" for name, path, n, tokens in
            (("ifeval", args.ifeval, args.ifeval_items, args.ifeval_tokens),
             ("math", args.math, args.math_items, args.math_tokens)) if path]
    print(f"model {lm.name}; " + (f"collect {', '.join(jobs)}; " if collecting and jobs else "")
          + f"pairs top-k {args.top_k}, max-positions {args.max_positions}"
          + f"{', try unbounded' if args.try_unbounded else ''}; torch threads {torch.get_num_threads()}; device "
          + (torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device))
    if not args.only_print:
        run_stages(args, lm)
    with open_store(args.store, read_only=True) as st:
        pair_tables(st)
        case_tables(st, lm, args.baseline_cases)
        if args.old_vs_new:
            old_vs_new(st, lm, args.old_vs_new, args.top_k, args.max_positions, args.bounded, args.baseline,
                       args.pair_status, args.old_cap_s, args.deadline_s, args.only, args.workers, args.every)


if __name__ == "__main__":
    main()
