"""Benchmark of attribution-graph edge methods on the bundled SmolLM2-135M (all 30 layers).

Prints one table: time for naive (small n only), packed and closed form at n = 128, 512 and 2048, their ratios,
peak memory, and the largest n for which a full graph (all layers, node threshold 0.01, closed form) completes
within the time limit (10 minutes by default).

Every measurement runs in its own subprocess so that its peak resident memory (``ru_maxrss``, which sees torch's
allocations, unlike tracemalloc) is its own. Inputs are natural text (a paragraph repeated and cut to n tokens), so
that the node threshold prunes rows as it would on real prompts. Packed timings that would take hours are
extrapolated from a sample of target rows on one layer (marked ``est.``: an estimate, not a measured run): the cost
of the packed method is linear in the number of target rows and each layer has the same shape.

    python perf/bench_graph.py                  # the full table (about an hour on 2 cores)
    python perf/bench_graph.py --quick          # n = 128 and 512 only, no search for the largest n
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

TEXT = (
    "The committee met on a cold morning to review the budget for the coming year. Several members argued that "
    "the library should receive more money, because the number of visitors had doubled since the new reading "
    "room opened. Others wanted to repair the old bridge first, since the river had flooded twice in the spring "
    "and the farmers on the far side could not reach the market. After a long discussion, the chair proposed a "
    "compromise: half of the surplus would go to the bridge, and the rest would be shared between the library "
    "and the school. "
)


# ------------------------------------------------------------------------------------------------------------------
# child side: one measurement
# ------------------------------------------------------------------------------------------------------------------

def _input(tokenizer: Any, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(TEXT, add_special_tokens=False)
    return ids[:n]


def _child(args: argparse.Namespace) -> dict[str, Any]:
    import resource

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import failtrace
    from failtrace.graph import graph_from_ids

    lm = failtrace.load_model(progress=False)
    tok = lm.tokenizer
    ids = _input(tok, args.n)
    a = tok.encode(" the", add_special_tokens=False)[0]
    b = tok.encode(" a", add_special_tokens=False)[0]

    def objective(logits: torch.Tensor) -> torch.Tensor:
        return logits[a] - logits[b]

    out: dict[str, Any] = {"n": args.n, "method": args.method, "node_threshold": args.node_threshold,
                           "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if args.sample_rows:
        out.update(_packed_sample(lm.model, ids, objective, args.sample_rows, args.memory_budget))
    else:
        g = graph_from_ids(lm.model, ids, objective, edges=args.method, node_threshold=args.node_threshold,
                           layers=args.layers, memory_budget_mb=args.memory_budget)
        pruned = g.pruned
        out.update({
            "seconds": time.perf_counter() - t0,
            "relevance_pass": g.metadata["seconds"]["relevance_pass"],
            "edge_seconds": g.metadata["seconds"]["edges"],  # every layer: preparation and edge rows
            "rows_computed": int(sum(es.computed.sum() for es in g.transitions)),
            "rows_total": len(g.transitions) * g.n_tokens,
            "stored_edges": int(sum(len(es) for es in g.transitions)),
            "pruned_nodes": pruned.num_nodes, "pruned_edges": pruned.num_edges,
            "methods": sorted(set(g.metadata["methods_used"].values())),
            "layers": len(g.transitions),
        })
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def _packed_sample(model: Any, ids: list[int], objective: Any, rows: int, budget_mb: float) -> dict[str, Any]:
    """Time the packed method on ``rows`` target rows of one middle layer; extrapolate to all rows and layers."""
    import torch

    from failtrace.attribution.engine import relevance_pass
    from failtrace.graph.edges_packed import PackedEdges, batch_size_for
    from failtrace.graph.layers import LayerCallCapture
    from failtrace.lrp.patch import lrp_rules

    n = len(ids)
    t0 = time.perf_counter()
    with lrp_rules(model, "attnlrp"):
        with LayerCallCapture(model) as cap:
            res = relevance_pass(model, ids, objective, patched=True)
        t_pass = time.perf_counter() - t0
        layer = len(cap.layers) // 2
        bs = batch_size_for(n, model.config, int(budget_mb * 2**20))
        t1 = time.perf_counter()
        comp = PackedEdges(lambda x: cap.call(layer, x), res.hidden[layer], res.grads[layer + 1], bs)
        sample = torch.arange(n - min(rows, n), n)  # the last rows: the dense backward costs the same for any row
        for start in range(0, len(sample), bs):
            comp.rows(sample[start:start + bs])
        t_rows = time.perf_counter() - t1
        comp.close()
    per_layer = t_rows * n / len(sample)
    layers = len(cap.layers)
    return {"seconds": t_pass + per_layer * layers, "relevance_pass": t_pass, "edge_seconds": per_layer * layers,
            "extrapolated": True, "sampled_rows": len(sample), "batch_size": bs, "layers": layers,
            "methods": ["packed"]}


# ------------------------------------------------------------------------------------------------------------------
# parent side: the table
# ------------------------------------------------------------------------------------------------------------------

def _run(n: int, method: str, *, node_threshold: float = 0.0, sample_rows: int = 0, timeout: float | None = None,
         threads: int = 0, layers: str | None = None, memory_budget: float = 1024.0) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--n", str(n), "--method", method, "--node-threshold",
           str(node_threshold), "--sample-rows", str(sample_rows), "--threads", str(threads), "--memory-budget",
           str(memory_budget)]
    if layers:
        cmd += ["--layers", layers]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"n": n, "method": method, "timed_out": True, "seconds": time.perf_counter() - t0, "load": load}
    if proc.returncode != 0:
        return {"n": n, "method": method, "error": proc.stderr.strip().splitlines()[-1:] or ["?"], "load": load}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load"] = load
    print(f"  measured n={n} {method}{' (sampled)' if sample_rows else ''}: {result.get('seconds', 0):.1f}s "
          f"peak {result.get('peak_rss_mb', 0):.0f} MB (load {load:.1f})", file=sys.stderr, flush=True)
    return result


def _fmt_time(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if r.get("timed_out"):
        return f">{r['seconds']:.0f}s"
    if "error" in r:
        return "error"
    return ("est. " if r.get("extrapolated") else "") + f"{r['seconds']:.1f}s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--method", default="closed-form")
    ap.add_argument("--node-threshold", type=float, default=0.0)
    ap.add_argument("--sample-rows", type=int, default=0)
    ap.add_argument("--layers", default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--memory-budget", type=float, default=1024.0)
    ap.add_argument("--quick", action="store_true", help="n = 128 and 512 only; skip the largest-n search")
    ap.add_argument("--limit", type=float, default=600.0, help="seconds for the largest-n search (default 600)")
    ap.add_argument("--sizes", default="128,512,2048")
    ap.add_argument("--search", default="4096,8192,16384", help="n values tried for the largest full graph")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return 0

    sizes = [128, 512] if args.quick else [int(s) for s in args.sizes.split(",")]
    print(f"bench_graph: SmolLM2-135M (30 layers), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          f"at start", file=sys.stderr, flush=True)
    rows = []
    for n in sizes:
        naive = _run(n, "naive", threads=args.threads) if n <= 128 else None
        if n <= 128:
            packed = _run(n, "packed", threads=args.threads)
        else:
            packed = _run(n, "packed", sample_rows=32, threads=args.threads)
        closed = _run(n, "closed-form", threads=args.threads)
        pruned = _run(n, "closed-form", node_threshold=0.01, threads=args.threads)
        rows.append((n, naive, packed, closed, pruned))
    largest: list[dict[str, Any]] = []
    if not args.quick:
        for n in [int(s) for s in args.search.split(",")]:
            r = _run(n, "closed-form", node_threshold=0.01, timeout=args.limit, threads=args.threads)
            largest.append(r)
            if r.get("timed_out") or "error" in r:
                break

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
        if not a or not b or "seconds" not in a or "seconds" not in b or a.get("timed_out"):
            return "-"
        ea, eb = a.get("edge_seconds", a["seconds"]), b.get("edge_seconds", b["seconds"])
        return f"{ea / max(eb, 1e-9):.0f}x"

    def per_pass(r: dict[str, Any] | None) -> str:
        if not r or "relevance_pass" not in r or r.get("timed_out"):
            return "-"
        return f"{r['seconds'] / max(r['relevance_pass'], 1e-9):.1f}x"

    print()
    print("All 30 layers, every target row (node threshold 0) unless noted. Times are wall clock for the whole graph")
    print("(relevance pass + edges); ratios compare the edge computation only. 'est.' = an ESTIMATE extrapolated")
    print("from a sample of target rows on one layer, not a measured run. 'graph/pass' = the whole closed-form graph's")
    print("time as a multiple of the one AttnLRP relevance pass it starts from (same length, same run).")
    print()
    header = (f"{'n':>6} | {'naive':>9} | {'packed':>14} | {'closed-form':>11} | {'packed/closed':>13} | "
              f"{'naive/closed':>12} | {'graph/pass':>10} | {'closed, node 0.01':>17} | {'rows kept':>9} | "
              f"{'peak MB (cf, pk)':>16}")
    print(header)
    print("-" * len(header))
    for n, naive, packed, closed, pruned in rows:
        kept = (f"{pruned['rows_computed'] / pruned['rows_total']:.1%}" if pruned and "rows_total" in pruned
                else "-")
        peak = f"{closed.get('peak_rss_mb', 0):.0f}, {packed.get('peak_rss_mb', 0):.0f}" if closed and packed else "-"
        print(f"{n:>6} | {_fmt_time(naive):>9} | {_fmt_time(packed):>14} | {_fmt_time(closed):>11} | "
              f"{ratio(packed, closed):>13} | {ratio(naive, closed):>12} | {per_pass(closed):>10} | "
              f"{_fmt_time(pruned):>17} | {kept:>9} | {peak:>16}")
    print()
    for n, naive, packed, closed, pruned in rows:
        for r in (naive, packed, closed, pruned):
            if r and "seconds" in r and not r.get("timed_out"):
                extra = (f"sampled {r['sampled_rows']} rows of one layer, batch {r['batch_size']}"
                         if r.get("extrapolated") else
                         f"pass {r['relevance_pass']:.1f}s, edges {r['edge_seconds']:.1f}s, "
                         f"{r.get('stored_edges', 0)} stored / {r.get('pruned_edges', 0)} pruned edges")
                print(f"  n={n:<6} {r['method']:<12} node>={r['node_threshold']:<5g} {_fmt_time(r):>8}  {extra}; "
                      f"peak {r.get('peak_rss_mb', 0):.0f} MB; load {r['load']:.1f}")
    if largest:
        print()
        print(f"Largest full graph (all layers, node threshold 0.01, closed form) within {args.limit:.0f}s:")
        best = None
        for r in largest:
            status = ("timed out" if r.get("timed_out") else "error: " + " ".join(r["error"]) if "error" in r
                      else f"{r['seconds']:.0f}s (pass {r['relevance_pass']:.0f}s, edges {r['edge_seconds']:.0f}s), "
                           f"peak {r['peak_rss_mb']:.0f} MB, rows kept "
                           f"{r['rows_computed'] / r['rows_total']:.1%}, {r['pruned_nodes']} nodes / "
                           f"{r['pruned_edges']} edges after pruning")
            print(f"  n={r['n']:<6} {status}")
            if not r.get("timed_out") and "error" not in r:
                best = r["n"]
        print(f"  → largest n completed: {best if best else 'none of ' + args.search}")
    print(f"\nload average at end {os.getloadavg()[0]:.1f} (other processes share these CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
