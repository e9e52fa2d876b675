"""A small, real post-training experiment on a store's clean cases (not a test): sft vs dpo vs token-dpo.

On a COPY of the given store (the source is never opened for writing), with the bundled model: ``finetune`` with each
method (same steps, learning rate, β, seed and so the same held-out split), checkpoints at step 0, every
``--save-every`` steps and the end; then ``compare --checkpoints`` on all of them. Prints, per method and checkpoint,
the mean Δℓ on the trained and on the held-out cases, how many of each are corrected (Δℓ < 0: the checkpoint
prefers the contrast token to the target at the failure point) and how many of those it would write (the contrast is
its top next token there), then each case's Δℓ per checkpoint with what the checkpoint writes.

    OMP_NUM_THREADS=1 .venv/bin/python perf/bench_training.py --store /work/bench/demo/runs.duckdb \\
        [--steps 24] [--save-every 12] [--lr 1e-5] [--work /tmp/bench-training]

Δℓ = logit(target) − logit(contrast) on the case's own context: > 0 the model still prefers the wrong token.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from failtrace.models.loading import load_model
from failtrace.store import open_store
from failtrace.store.comparisons import load_comparisons
from failtrace.training.compare import compare_checkpoints
from failtrace.training.finetune import METHODS, FinetuneSettings, finetune
from failtrace.views.common import writes


def _cell(rows: list[dict[str, Any]]) -> str:
    """Mean Δℓ (corrected/cases, written): written = corrected rows whose top next token is the contrast."""
    if not rows:
        return "-"
    fixed = [r for r in rows if r["delta_logit"] < 0]
    wrote = sum(_role(r) == "c" for r in fixed)
    return f"{statistics.fmean(r['delta_logit'] for r in rows):+7.3f} ({len(fixed)}/{len(rows)}, {wrote}w)"


def _role(row: dict[str, Any]) -> str:
    """What the checkpoint writes at the failure point: t(arget), c(ontrast), o(ther), ? (not recorded)."""
    w = writes(row)
    return "?" if w is None else w[1][0]


def _tables(rows: list[dict[str, Any]], runs: dict[str, Any], fps: dict[str, str]) -> list[str]:
    by_fp: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_fp.setdefault(r["model_fingerprint"], []).append(r)
    first = next(iter(runs.values()))
    trained, held = first.trained, first.held_out
    lines = ["mean Δℓ (corrected/cases, Nw: N of the corrected write the contrast) per checkpoint; corrected = Δℓ < 0",
             f"{'method':<10} {'step':>5}  {'trained':>20}  {'held-out':>20}  {'train loss':>10}"]
    for method, res in runs.items():
        losses = {h["step"]: h["loss"] for h in res.losses}
        for folder in res.checkpoints:
            mine = by_fp[fps[str(folder)]]
            step = int(folder.name[5:])
            tr = [r for r in mine if r["case_id"] in trained]
            ho = [r for r in mine if r["case_id"] in held]
            loss = f"{losses[step]:.4f}" if step in losses else "-"
            lines.append(f"{method:<10} {step:>5}  {_cell(tr):>20}  {_cell(ho):>20}  {loss:>10}")
    lines += ["", "Δℓ per case (T = trained, H = held-out) at step 0 and each method's last checkpoint, each with what"
                  " it writes there (t target, c contrast, o another token)"]
    step0 = {r["case_id"]: r for r in by_fp[fps[str(first.checkpoints[0])]]}
    head = f"{'item':<18} {'split':>5} {'target→contrast':<22} {'step 0':>10}" + "".join(
        f" {m:>12}" for m in runs)
    lines.append(head)
    for cid, r0 in sorted(step0.items(), key=lambda kv: (kv[0] not in trained, kv[1]["item_id"])):
        cells = []
        for res in runs.values():
            last = {r["case_id"]: r for r in by_fp[fps[str(res.checkpoints[-1])]]}
            cells.append(f" {last[cid]['delta_logit']:>+10.3f} {_role(last[cid])}")
        pair = f"{r0['target_text']!r}→{r0['contrast_text']!r}"[:22]
        lines.append(f"{r0['item_id']:<18} {'T' if cid in trained else 'H':>5} {pair:<22} "
                     f"{r0['delta_logit']:>+8.3f} {_role(r0)}" + "".join(cells))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="store with analysed cases of the bundled model (copied)")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--save-every", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--held-out", type=float, default=0.3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=0, help="seed of the held-out split and of training")
    ap.add_argument("--tail-weight", type=float, default=0.0, help="token-dpo: weight after the decision token")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-training-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "runs.duckdb"
    shutil.copyfile(args.store, store)
    t0 = time.perf_counter()
    lm = load_model(progress=False)
    runs, seconds = {}, {}
    with open_store(store, read_only=True) as st:
        for method in args.methods.split(","):
            t = time.perf_counter()
            runs[method] = finetune(st, lm, work / method, FinetuneSettings(
                method=method, steps=args.steps, save_every=args.save_every, lr=args.lr, beta=args.beta,
                held_out=args.held_out, seed=args.seed, tail_weight=args.tail_weight))
            seconds[method] = time.perf_counter() - t
    del lm
    folders = [str(p) for res in runs.values() for p in res.checkpoints]
    t = time.perf_counter()
    with open_store(store) as st:
        summary = compare_checkpoints(st, folders, progress=False)
        rows = load_comparisons(st)
    compare_s = time.perf_counter() - t
    first = next(iter(runs.values()))
    print(f"store {args.store} (copied): {summary.cases} cases of the bundled model; trained {len(first.trained)}, "
          f"held out {len(first.held_out)} (share {args.held_out}, seed {args.seed}); steps {args.steps}, "
          f"lr {args.lr:g} "
          f"(constant), beta {args.beta:g}, token-dpo tail weight {args.tail_weight:g}, batch 1, "
          f"{args.threads} thread(s)")
    print("train seconds: " + ", ".join(f"{m} {s:.0f}" for m, s in seconds.items())
          + f"; compare {compare_s:.0f} s ({len(set(summary.fingerprints.values()))} distinct checkpoints); "
          f"total {time.perf_counter() - t0:.0f} s wall")
    print("\n".join(_tables(rows, runs, summary.fingerprints)))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
