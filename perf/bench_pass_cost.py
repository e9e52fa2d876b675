"""The cost of one decoding pass by batch shape (not a test): the calibration behind the draft-length cost model.

A drafting pass feeds ``rows x width`` token rows; :mod:`failtrace.failures.decode` prices it with
:data:`~failtrace.failures.decode.CPU_COST` (a fixed cost, a switch cost for any pass wider than one token, a cost
per draft token). This script times real passes of the model over a KV cache of each length
(the best of three, each on a fresh copy of the cache, with an attention mask as the rollouts pass one) and prints,
per shape, the milliseconds, the ratio to a plain pass of the same rows (width 1, the baseline, measured in the same
run) and the ratio the cost model predicts.

    .venv/bin/python perf/bench_pass_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from failtrace.failures.decode import CPU_COST, forward_logits
from failtrace.models.loading import load_model


def pass_ms(model: torch.nn.Module, cache: object, rows: int, length: int, width: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` milliseconds of one masked forward pass of ``rows x width`` new tokens over ``cache``."""
    best = float("inf")
    for _ in range(repeats):
        kv = copy.deepcopy(cache)
        mask = torch.ones(rows, length, dtype=torch.long)
        ids = torch.randint(100, 5000, (rows, width))
        t = time.perf_counter()
        with torch.no_grad():
            forward_logits(model, keep=width, input_ids=ids, past_key_values=kv, use_cache=True,
                           position_ids=mask.sum(-1, keepdim=True) + torch.arange(width),
                           attention_mask=torch.cat([mask, mask.new_ones(rows, width)], dim=-1))
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lengths", default="200,700")
    ap.add_argument("--rows", default="4,10,20,40")
    ap.add_argument("--widths", default="1,3,9")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    c = CPU_COST
    print(f"model {lm.name}; torch threads {args.threads}; cost model (row units): {c.fixed:g} + rows plain, "
          f"{c.fixed:g} + rows x ({1 + c.switch:g} + {c.per_draft:g} x drafts) drafting")
    print(f"{'cache':>6}{'rows':>6}{'width':>7}{'ms':>9}{'x plain':>10}{'model':>8}")
    for length in (int(x) for x in args.lengths.split(",")):
        for rows in (int(x) for x in args.rows.split(",")):
            with torch.no_grad():
                cache = lm.model(input_ids=torch.randint(100, 5000, (rows, length)), use_cache=True).past_key_values
            plain = pass_ms(lm.model, cache, rows, length, 1)
            for width in (int(x) for x in args.widths.split(",")):
                ms = plain if width == 1 else pass_ms(lm.model, cache, rows, length, width)
                print(f"{length:>6}{rows:>6}{width:>7}{ms:>9.0f}{ms / plain:>9.2f}x"
                      f"{c.of(rows, width - 1) / c.of(rows, 0):>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
