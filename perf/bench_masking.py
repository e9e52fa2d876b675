"""The masking curve with the unmasked prefix run once (``masked_delta``'s default) against every token run for every
mask (``reuse_above`` out of reach), on a stored case, same masks, same threads, same run (not a test); the same for
the case's node ablation (``ablated_delta``, its stored node order) as the row ``ablation``.

For each method: the masks are the flip curve's (the case's own masking order, k = 0..K); the baseline and the
prefix-reusing path alternate which goes first; the table prints seconds, the ratio, the largest difference between
the two curves, and whether k* is the same.

    .venv/bin/python perf/bench_masking.py --store tr.duckdb --case 3a86 --methods attnlrp,gradxinput --max-k 4
"""

from __future__ import annotations

import argparse
import time

import torch

from failtrace.analysis.categories import ablated_delta
from failtrace.analysis.masking import first_flip, masked_delta, masking_order
from failtrace.models.loading import load_model
from failtrace.store import open_store
from failtrace.store.cases import find_case_id, load_cases

from tablefmt import table  # perf/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--case", required=True, help="case id or a unique prefix")
    ap.add_argument("--methods", default="attnlrp,gradxinput")
    ap.add_argument("--max-k", type=int, default=None, help="masks k = 0..K (default: the case's K)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with open_store(args.store, read_only=True) as st:
        cid = find_case_id(st, args.case)
        case = next(c for c in load_cases(st, latest=False) if c.case_id == cid)
    lm = load_model(case.model, progress=False)
    spec = case.masking
    if args.max_k:
        spec = type(spec)(rule=spec.rule, token_id=spec.token_id, max_k=args.max_k, skip_template=spec.skip_template)
    n = len(case.token_ids)
    rows = []
    for i, method in enumerate(args.methods.split(",")):
        order = masking_order(case.methods[method].input_relevance, case.special_mask, case.segment_labels(), spec)
        masks = [order[:k] for k in range(len(order) + 1)]
        secs, curves = {}, {}
        for which in (("full", "reuse") if i % 2 == 0 else ("reuse", "full")):
            t = time.perf_counter()
            curves[which] = masked_delta(lm.model, case.token_ids, masks, case.target_id, case.contrast_id, spec,
                                         reuse_above=10**9 if which == "full" else 256)
            secs[which] = time.perf_counter() - t
        diff = max(abs(a - b) for a, b in zip(curves["full"], curves["reuse"]))
        same = first_flip(curves["full"]) == first_flip(curves["reuse"])
        rows.append([method, n, min(order), len(masks), secs["full"], secs["reuse"],
                     f"x{secs['full'] / secs['reuse']:.2f}", f"{diff:.2e}", same])
    nodes = [(int(d["layer"]), int(d["position"])) for d in case.category_evidence.get("ablation", {}).get("nodes", [])]
    if nodes:
        sets = [nodes[:k] for k in range(len(nodes) + 1)]
        secs, curves = {}, {}
        for which in ("full", "reuse"):
            t = time.perf_counter()
            curves[which] = ablated_delta(lm.model, case.token_ids, sets, case.target_id, case.contrast_id,
                                          reuse_above=10**9 if which == "full" else 256)
            secs[which] = time.perf_counter() - t
        diff = max(abs(a - b) for a, b in zip(curves["full"], curves["reuse"]))
        rows.append(["ablation", n, min(p for _, p in nodes), len(sets), secs["full"], secs["reuse"],
                     f"x{secs['full'] / secs['reuse']:.2f}", f"{diff:.2e}",
                     first_flip(curves["full"]) == first_flip(curves["reuse"])])
    table(f"masking curve of case {cid[:12]} ({n} tokens, {case.model}), torch threads {torch.get_num_threads()}: "
          f"every token per mask (full) vs the unmasked prefix once (reuse)",
          ["method", "tokens", "first masked", "masks", "full s", "reuse s", "full/reuse", "max |Δ curve|",
           "same k*"], rows)


if __name__ == "__main__":
    main()
