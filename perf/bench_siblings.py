"""A real scaling pair on HumanEval+ or IFEval: Qwen2.5-Coder-0.5B's failures, pairs with and without the 1.5B
sibling's top-k, and the 0.5B cases re-scored on the 1.5B model (not a test; issues 10 and 13).

Runs the CLI stages into one store (each resumable and keyed, so a rerun only does what is missing):

1. ``collect`` HumanEval+ items with the small model (greedy, the sandboxed checker);
2. ``pairs`` without a sibling, then ``pairs --sibling LARGE`` (another pair run: the sibling is in its key);
3. ``analyse`` the clean pairs of both runs (``--methods``, default AttnLRP and random);
4. ``compare --models SMALL LARGE [ALSO ...]``: each case's context, target and contrast re-scored and attributed
   on LARGE (and on ``--also`` models, e.g. the bundled SmolLM2 with its own tokenizer: a case whose target or
   contrast is not one token there is shown unmapped).

Then prints the clean rate with and without the sibling (and where each contrast came from), the pair cost per
failure, and per case Δℓ on the small and the large model (corrected = Δℓ < 0 on the large one: it prefers the
contrast), plus the share of AttnLRP relevance per segment on each model.

    .venv/bin/python perf/bench_siblings.py --store he.duckdb \
        --data ../shared/benchmarks/humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz --items 12 --max-new-tokens 192
    .venv/bin/python perf/bench_siblings.py --store if.duckdb --benchmark ifeval --data ifeval_subset.jsonl \
        --items 19 --max-new-tokens 256 --skip-unbounded --also smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_benchmark import _table  # noqa: E402  (same folder: one table printer for the perf scripts)

from failtrace.store import open_store  # noqa: E402
from failtrace.store.comparisons import load_comparisons  # noqa: E402


def _cli(*args: str) -> None:
    """One failtrace command, timed; a failure stops the benchmark with its message."""
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "failtrace.cli", *args, "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    print(f"[{' '.join(args[:1])}{' (sibling)' if '--sibling' in args else ''}] rc {done.returncode}, "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{done.stderr[-2000:]}")


def run(args: argparse.Namespace) -> None:
    s = ["--store", args.store]
    _cli("collect", "-b", args.benchmark, "-d", args.data, "-n", str(args.items), "--model", args.small,
         "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size), *s)
    pair = ["--top-k", str(args.top_k), "--max-positions", str(args.max_positions), *s]
    if args.skip_unbounded:
        pair.append("--skip-unbounded")
    _cli("pairs", *pair)
    _cli("pairs", *pair, "--sibling", args.large)
    _cli("analyse", "--methods", args.methods, *s)
    _cli("compare", "--models", args.small, args.large, *args.also, *s)


def report(store: str, benchmark: str) -> None:
    with open_store(store, read_only=True) as st:
        runs = {r.run_id: r for r in st.runs("pairs")}
        pairs = st.pairs()
        comps = load_comparisons(st)
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in pairs:
        by_run[p["pair_run_id"]].append(p)
    rows = []
    for rid, ps in by_run.items():
        helper = (runs[rid].settings or {}).get("helper_model")
        st_counts = Counter(p["status"] for p in ps)
        unb = st_counts.get("unbounded", 0)
        src = Counter(p["contrast_source"] for p in ps if p["status"] == "clean")
        rows.append([helper or "-", len(ps), st_counts.get("clean", 0), st_counts.get("clean", 0) / len(ps),
                     st_counts.get("clean", 0) / max(1, len(ps) - unb), dict(st_counts), dict(src),
                     statistics.mean(p["seconds"] or 0 for p in ps), statistics.mean(p["rollouts"] for p in ps)])
    _table(f"{benchmark} pairs of the small model, without and with the sibling's top-k",
           ["sibling", "failures", "clean", "clean rate", "clean / decidable", "statuses", "contrast from",
            "s/failure", "rollouts/failure"], rows)
    by_case: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    seen: set[tuple[str, int | None, int | None, str]] = set()
    for c in comps:  # both pair runs may give the same pair: one line per (item, pair, model)
        key = (c["item_id"], c["target_id"], c["contrast_id"], c["model"])
        if c["reference"] and key in seen:
            continue
        seen.add(key)
        by_case[c["case_id"]][c["model"]] = c
    by_case = defaultdict(dict, {k: v for k, v in by_case.items() if any(r["reference"] for r in v.values())})
    models = sorted({c["model"] for c in comps}, key=lambda m: (not any(c["reference"] and c["model"] == m
                                                                         for c in comps), m))
    crow, seg = [], defaultdict(lambda: defaultdict(list))
    for cid, per in by_case.items():
        ref = next(r for r in per.values() if r["reference"])
        other = [per.get(m) for m in models if m != ref["model"]]
        line = [ref["item_id"], f"{ref['target_text']!r}->{ref['contrast_text']!r}", ref["delta_logit"]]
        for o in other:
            line += [o["delta_logit"] if o and o["mapped"] else None,
                     None if not o or not o["mapped"] else o["delta_logit"] < 0]
        crow.append(line)
        for m, r in per.items():
            seg_rel = r["segment_relevance"] or {}
            rel = seg_rel.get("attnlrp") if isinstance(seg_rel.get("attnlrp"), dict) else seg_rel
            total = sum(abs(v) for v in (rel or {}).values()) or 1.0
            for name, v in (rel or {}).items():
                seg[m][name].append(v / total)
    others = [m for m in models if m != (models[0] if models else None)]
    _table("The small model's cases re-scored on the larger sibling (corrected: Δℓ < 0 there)",
           ["item", "target->contrast", f"Δℓ {models[0] if models else ''}",
            *[h for m in others for h in (f"Δℓ {m}", "corrected")]], crow)
    _table("Mean share of |AttnLRP relevance| per segment, per model",
           ["model", "segment", "cases", "mean signed share"],
           [[m, name, len(v), statistics.mean(v)] for m, d in seg.items() for name, v in sorted(d.items())])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--benchmark", default="humaneval", help="humaneval (default) or ifeval")
    ap.add_argument("--data", required=False)
    ap.add_argument("--items", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--small", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--large", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--max-positions", type=int, default=8)
    ap.add_argument("--skip-unbounded", action="store_true")
    ap.add_argument("--methods", default="attnlrp,random")
    ap.add_argument("--also", nargs="*", default=[], help="more models for compare (other tokenizers allowed)")
    ap.add_argument("--only-print", action="store_true")
    args = ap.parse_args()
    if not args.only_print:
        if not args.data:
            ap.error("--data is needed unless --only-print")
        run(args)
    report(args.store, args.benchmark)


if __name__ == "__main__":
    main()
