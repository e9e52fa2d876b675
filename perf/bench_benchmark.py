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

KS = (1, 2, 3, 5, 10)


def _table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """Print a plain fixed-width table (plain text so it pastes into Markdown as is)."""
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


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


class _Capped(Exception):
    """The old search ran past its time cap."""


class CheckEvery:
    """Mixin for a PairFinder whose every check calls the checker (no verdict-key memo)."""

    def _check(self, benchmark: Any, item: Any, text: str, search: Any) -> str:
        from failtrace.failures.collect import safe_check

        t = time.perf_counter()
        status = safe_check(benchmark, item, text).status
        search.seconds_check += time.perf_counter() - t
        search.checks += 1
        return status


class _Old(CheckEvery):
    """Mixin for the old baseline: every check calls the checker (the verdict-key memo did not exist then), and its
    caches are transformers' plain dynamic cache (``torch.cat`` per token, as then)."""

    cap_s: float | None = None  # stop the search after this many seconds (its time is then a lower bound)

    def find(self, *args: Any, **kwargs: Any) -> Any:
        import failtrace.failures.kvcache as kvcache
        import failtrace.failures.search as search

        saved, decode = kvcache.growing_layer, search.rollouts_at
        kvcache.growing_layer = lambda: None  # type: ignore[assignment]
        deadline = None if self.cap_s is None else time.perf_counter() + self.cap_s

        def capped(*a: Any, **kw: Any) -> Any:
            """rollouts_at with a row callback that never stops a row but ends the search at the deadline."""
            def stop(i: int, toks: list[int]) -> bool:
                if time.perf_counter() > deadline:
                    raise _Capped
                return False
            a = list(a)
            a[7], a[8] = stop, 1  # stop, stop_every (the old search has no prefix rule: stop is None there)
            return decode(*a, **kw)

        if deadline is not None:
            search.rollouts_at = capped  # type: ignore[assignment]
        try:
            return super().find(*args, **kwargs)  # type: ignore[misc]
        finally:
            kvcache.growing_layer, search.rollouts_at = saved, decode  # type: ignore[assignment]


def old_vs_new(st: Any, lm: Any, n: int, top_k: int, max_positions: int, bounded_only: bool | None,
               baseline: str = "old", status: str | None = None, old_cap_s: float | None = None,
               budget_s: float | None = None, only: str | None = None) -> None:
    """The pair search as it was when issue 13 was filed (one position per batch, every rollout to the full budget,
    no halting at the answer, no verdict reuse, transformers' dynamic cache, and failures that hit the token limit
    searched too, no lookup drafts: the same code with those switched off; ``baseline="no-halt"``: the default
    search with only halting at the answer and drafts switched off; ``"no-drafts"``: only the drafts;
    ``"no-completion-drafts"``: only the drafts from the failing completion) against the default search, on the first
    ``n`` failures of every benchmark
    in the store (``bounded_only`` True: the first ``n`` that stopped within the budget, False: the first ``n`` that
    hit it; with ``status``: only failures whose stored pair has that status), alternating which goes first.

    ``old_cap_s``: the old search is stopped after that many seconds on a failure (at defaults it can take hours per
    failure on a CPU); its time there is then a *lower bound* (the cap), and its pair unknown. ``budget_s``: no new
    failure is started after that many seconds (per benchmark); the failures left out are counted."""
    from failtrace.failures.search import PairFinder

    class OldFinder(_Old, PairFinder):
        cap_s = old_cap_s

    base = PairSettings(top_k=top_k, max_positions=max_positions, halt_at_answer=False, try_unbounded=True,
                        draft_tokens=0)
    if baseline == "old":
        base.early_stop, base.position_batch = False, 1
    if baseline == "no-drafts":  # the default search with only the lookup drafts off
        base = PairSettings(top_k=top_k, max_positions=max_positions, draft_tokens=0)
    if baseline == "no-completion-drafts":  # the default search drafting from each rollout's own text only
        base = PairSettings(top_k=top_k, max_positions=max_positions, draft_from_completion=False)
    old = OldFinder(lm, base) if baseline == "old" else PairFinder(lm, base)
    new = PairFinder(lm, PairSettings(top_k=top_k, max_positions=max_positions))
    with_status = {(p["run_id"], p["item_id"]) for p in st.pairs() if p["status"] == status}
    rows = []
    for run in st.runs("collect"):
        if only is not None and run.benchmark != only:
            continue
        bench = get_benchmark(run.benchmark)
        fails = [r for r in st.results(run.run_id, status="fail")
                 if (bounded_only is None or bounded_only == (r["finish_reason"] != "length"))
                 and (status is None or (run.run_id, r["item_id"]) in with_status)][:n]
        items = {r["item_id"]: st.get_item(run.benchmark, r["item_id"]) for r in fails}
        cost: dict[str, list[float]] = {"old": [0.0, 0, 0], "new": [0.0, 0, 0]}
        same = capped = 0
        count: dict[str, Counter] = {"old": Counter(), "new": Counter()}
        started, done = time.perf_counter(), 0
        for i, r in enumerate(fails):
            if budget_s is not None and time.perf_counter() - started > budget_s:
                break
            got: dict[str, Any] = {}
            for which in (("old", "new") if i % 2 == 0 else ("new", "old")):
                finder = old if which == "old" else new
                t = time.perf_counter()
                try:
                    res = finder.find(bench, items[r["item_id"]], r["prompt_ids"], r["token_ids"],
                                      run.settings["max_new_tokens"], r["finish_reason"])
                except _Capped:
                    res = None
                c = cost[which]
                c[0] += time.perf_counter() - t
                if res is None:
                    got[which] = ("capped", None, None)
                    count[which]["capped"] += 1
                    continue
                c[1] += res.rollouts
                c[2] += res.tokens_decoded
                got[which] = (res.status, res.completion_offset, res.contrast_id, round(time.perf_counter() - t, 1))
                count[which][res.status] += 1
            done += 1
            capped += got["old"][0] == "capped"
            # unbounded: the old search also records where a recovery would be, the new one does not search
            same += got["old"][:3] == got["new"][:3] or got["old"][0] == got["new"][0] == "unbounded"
            print(f"  {run.benchmark} {r['item_id']} ({r['finish_reason']}, {len(r['token_ids'])} tokens): "
                  f"old {got['old']} new {got['new']}", flush=True)
        m = max(1, done)
        bound = "≥ " if capped else ""
        for which in ("old", "new"):
            rows.append([run.benchmark, which, done, cost[which][0] / m, cost[which][1] / m, cost[which][2] / m,
                         dict(count[which])])
        rows.append([run.benchmark, "old/new", done, f"{bound}x{cost['old'][0] / max(cost['new'][0], 1e-9):.1f}",
                     "-" if capped else f"x{cost['old'][1] / max(cost['new'][1], 1):.1f}",
                     "-" if capped else f"x{cost['old'][2] / max(cost['new'][2], 1):.1f}",
                     f"same status (and pair) {same}/{done - capped} finished by both"
                     + (f"; old stopped at {old_cap_s:g} s on {capped}" if capped else "")
                     + (f"; {len(fails) - done} failures not started (budget)" if done < len(fails) else "")])
    cap = f"old capped at {old_cap_s:g} s per failure (its time: a lower bound), " if old_cap_s else ""
    _table(f"Pair search, baseline {baseline!r} (old) vs the default search (new): same failures"
           f"{f' (stored pair {status})' if status else ''}, same run; {cap}top-k {top_k}, "
           f"max-positions {max_positions}",
           ["benchmark", "search", "failures", "s/failure", "rollouts/failure", "tokens/failure", "statuses"], rows)


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
    ap.add_argument("--budget-s", type=float, default=None,
                    help="--old-vs-new: start no new failure after this many seconds per benchmark")
    ap.add_argument("--baseline-cases", type=int, default=12, help="cases whose analyse cost is measured")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    collecting = not args.only_print and "collect" in args.stages  # else the store's runs have their own budgets
    print(f"model {lm.name}; " + (f"collect ifeval {args.ifeval_items} items @ {args.ifeval_tokens} tokens, math "
                                  f"{args.math_items} items @ {args.math_tokens} tokens; " if collecting else "")
          + f"pairs top-k {args.top_k}, max-positions {args.max_positions}"
          + f"{', try unbounded' if args.try_unbounded else ''}; torch threads {torch.get_num_threads()}")
    if not args.only_print:
        run_stages(args, lm)
    with open_store(args.store, read_only=True) as st:
        pair_tables(st)
        case_tables(st, lm, args.baseline_cases)
        if args.old_vs_new:
            old_vs_new(st, lm, args.old_vs_new, args.top_k, args.max_positions, args.bounded, args.baseline,
                       args.pair_status, args.old_cap_s, args.budget_s, args.only)


if __name__ == "__main__":
    main()
