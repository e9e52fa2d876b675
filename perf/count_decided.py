"""How many failures cut at the token budget does their own text decide (not a test)? For each stored failure
cut at the token budget or the context window and that the checker still fails, the benchmark's prefix rules
(``failures.prefix_rules.fixed_by_text``, the rule the pair search applies) say whether any continuation could
change its verdict: such a failure is searched, the rest stay ``unbounded``. Prints the counts and each decided
failure's reason.

    .venv/bin/python perf/count_decided.py --store runs.duckdb
"""

from __future__ import annotations

import argparse

from failtrace.benchmarks.registry import get_benchmark
from failtrace.failures.prefix_rules import fixed_by_text
from failtrace.models.loading import load_model
from failtrace.store import open_store
from failtrace.store.records import FINISH_CUT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    args = ap.parse_args()
    with open_store(args.store, read_only=True) as st:
        run = st.runs("collect")[0]
        fails = st.results(run.run_id, status="fail")
        cut = [r for r in fails if r["finish_reason"] in FINISH_CUT]
        items = {r["item_id"]: st.get_item(run.benchmark, r["item_id"]) for r in cut}
    lm = load_model(run.model, progress=False)
    bench = get_benchmark(run.benchmark, **run.settings.get("checker", {}))
    still = {r["item_id"]: bench.check(items[r["item_id"]], r["completion"]).status for r in cut}  # as the search does
    decided = [(r["item_id"], fixed_by_text(bench, items[r["item_id"]], lm.tokenizer, r["token_ids"])) for r in cut
               if still[r["item_id"]] == "fail"]
    other = len(cut) - len(decided)
    print(f"{run.benchmark}, {run.model}, budget {run.settings.get('max_new_tokens')}: {len(fails)} failures, "
          f"{len(cut)} cut at the budget, {sum(1 for _, d in decided if d)} of them decided by their own text "
          f"(searched), {sum(1 for _, d in decided if not d)} unbounded"
          + (f", {other} no longer failing under the checker (unverifiable)" if other else ""))
    for item_id, why in decided:
        if why:
            print(f"  {item_id}: {why[:160]}")


if __name__ == "__main__":
    main()
