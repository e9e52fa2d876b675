"""The judge hint on real failures: how often it points at the pair's target, and what it saves (not a test).

Reads a store whose collection and pair runs are done (e.g. the one ``perf/bench_benchmark.py`` fills). Two parts:

* **accuracy**: for every bounded failure whose stored pair has a completion offset (clean or weak preference), the
  judge is asked where the response first breaks the instruction, exactly as the search asks it; its hinted offset
  is compared with the stored target (the first recovering position): hit, before, after, or no usable hint;
* **cost**: on the first ``--compare`` of those whose stored pair is clean, the default search with and without the
  hint, alternating which goes first: rollouts, tokens decoded and seconds, and whether both find the same pair
  (they must: the hint only orders positions).

    .venv/bin/python perf/bench_judge.py --store runs.duckdb --judge smollm2-135m-instruct --compare 4 --threads 1
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import torch

from failtrace.benchmarks.registry import get_benchmark
from failtrace.failures.judge import PositionJudge
from failtrace.failures.pair_types import PairSettings
from failtrace.failures.search import PairFinder
from failtrace.models.loading import load_model
from failtrace.store import open_store


def _where(hint: int | None, target: int) -> str:
    if hint is None:
        return "no hint"
    return "hit" if hint == target else ("before" if hint < target else "after")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--judge", default="smollm2-135m-instruct", help="the judge model (any load_model name)")
    ap.add_argument("--only", default="ifeval", help="benchmark whose failures are judged")
    ap.add_argument("--compare", type=int, default=4, help="clean failures searched with and without the hint")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    judge_lm = load_model(args.judge)
    judge = PositionJudge(judge_lm)
    with open_store(args.store, read_only=True) as st:
        runs = {r.run_id: r for r in st.runs("collect") if r.benchmark == args.only}
        pairs = [p for p in st.pairs() if p["run_id"] in runs and p["status"] != "unbounded"
                 and p["completion_offset"] is not None]
        results = {(r, x["item_id"]): x for r in runs for x in st.results(r, status="fail")}
        items = {(p["run_id"], p["item_id"]): st.get_item(args.only, p["item_id"]) for p in pairs}
    finders: dict[str, Any] = {}  # one plain search per explained model: its text decoding and EOS, as the search's
    print(f"judge {judge.name}; {args.only}: {len(pairs)} failures with a stored target; torch threads "
          f"{torch.get_num_threads()}")
    where: Counter[str] = Counter()
    rows = []
    for p in pairs:
        run, r = runs[p["run_id"]], results[(p["run_id"], p["item_id"])]
        if run.model not in finders:
            lm = judge_lm if run.model == judge_lm.name else load_model(run.model)
            finders[run.model] = PairFinder(lm, PairSettings())
        plain = finders[run.model]
        t = time.perf_counter()
        hint = judge.hint(items[(p["run_id"], p["item_id"])], plain._text(r["token_ids"]), r["token_ids"],
                          plain.loaded.tokenizer, plain.eos)
        w = _where(hint.position, p["completion_offset"])
        where[w] += 1
        rows.append((p, r, hint))
        print(f"  {p['item_id']}: {p['status']} target {p['completion_offset']}, hint {hint.position} ({w}; "
              f"{time.perf_counter() - t:.1f} s); judge said {hint.answer.strip()[:50]!r}", flush=True)
    print(f"\nhint vs target over {len(rows)} failures: {dict(where)}")

    clean = [x for x in rows if x[0]["status"] == "clean"][:args.compare]
    cost = {"plain": [0.0, 0, 0], "hint": [0.0, 0, 0]}
    same = 0
    for i, (p, r, hint) in enumerate(clean):
        run = runs[p["run_id"]]
        bench, plain = get_benchmark(run.benchmark), finders[run.model]
        hinted = PairFinder(plain.loaded, PairSettings(), judge=judge)
        got = {}
        for which in (("plain", "hint") if i % 2 == 0 else ("hint", "plain")):
            finder = hinted if which == "hint" else plain
            t = time.perf_counter()
            res = finder.find(bench, items[(p["run_id"], p["item_id"])], r["prompt_ids"], r["token_ids"],
                              run.settings["max_new_tokens"], r["finish_reason"])
            c = cost[which]
            c[0] += time.perf_counter() - t
            c[1] += res.rollouts
            c[2] += res.tokens_decoded
            got[which] = (res.status, res.completion_offset, res.contrast_id)
            print(f"  {p['item_id']} {which}: {got[which]} rollouts {res.rollouts} tokens {res.tokens_decoded} "
                  f"{time.perf_counter() - t:.1f} s (judge {res.seconds_judge:.1f} s, hint {res.judge_position})",
                  flush=True)
        same += got["plain"] == got["hint"]
    if clean:
        n = len(clean)
        print(f"\nclean failures searched with and without the hint: {n}")
        print(f"{'search':<8} {'s/failure':>10} {'rollouts/failure':>17} {'tokens/failure':>15}")
        for which in ("plain", "hint"):
            c = cost[which]
            print(f"{which:<8} {c[0] / n:>10.1f} {c[1] / n:>17.1f} {c[2] / n:>15.0f}")
        print(f"{'ratio':<8} {'x%.2f' % (cost['plain'][0] / max(cost['hint'][0], 1e-9)):>10} "
              f"{'x%.2f' % (cost['plain'][1] / max(cost['hint'][1], 1)):>17} "
              f"{'x%.2f' % (cost['plain'][2] / max(cost['hint'][2], 1)):>15}   same pair {same}/{n}")


if __name__ == "__main__":
    main()
