"""The in-place growing KV cache against transformers' dynamic cache (``torch.cat`` per token), same run, same work.

Two measures on the bundled model (not a test):

* one decode step of ``rows`` rollouts after a shared context of ``L`` tokens (the cost of a rollout token late in a
  long rollout), median of ``--steps`` steps after a warm-up;
* whole rollouts as the pair search runs them (:func:`rollouts_at`: ``rows`` rows forced after a real prompt, each
  decoded greedily until EOS or ``--budget`` tokens), checking that both caches give the same tokens.

    .venv/bin/python perf/bench_kvcache.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

import failtrace.failures.kvcache as kvcache
from failtrace.failures.generation import eos_token_ids, forward_logits, prefix_forward, rollouts_at
from failtrace.models.chat import apply_chat_template
from failtrace.models.loading import load_model

PROMPT = ("Write a long story about a lighthouse keeper who finds a message in a bottle. Use at least 600 words, and "
          "do not use any commas.")


def _dynamic() -> Any:
    """Context manager: caches built as transformers' plain dynamic cache (the baseline)."""
    class Plain:
        def __enter__(self) -> None:
            self.saved = kvcache.growing_layer
            kvcache.growing_layer = lambda: None  # type: ignore[assignment]

        def __exit__(self, *exc: Any) -> None:
            kvcache.growing_layer = self.saved  # type: ignore[assignment]
    return Plain()


def step_time(model: Any, kv: Any, length: int, rows: int, steps: int) -> float:
    cache = kvcache.cache_from_prefix(kv, length, rows, length + steps + 2)
    nxt = torch.full((rows, 1), 500)
    times = []
    with torch.no_grad():
        forward_logits(model, keep=1, input_ids=nxt, past_key_values=cache, use_cache=True)
        for _ in range(steps):
            t = time.perf_counter()
            forward_logits(model, keep=1, input_ids=nxt, past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rows", default="10,40")
    ap.add_argument("--lengths", default="150,600,1100")
    ap.add_argument("--budget", type=int, default=384)
    ap.add_argument("--rollout-rows", type=int, default=20)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    print(f"model {lm.name}; torch threads {torch.get_num_threads()}; growing layer "
          f"{'available' if kvcache.growing_layer() else 'NOT available (both columns are the dynamic cache)'}")
    lengths = [int(x) for x in args.lengths.split(",")]
    state = prefix_forward(lm.model, [1000 + (i % 7000) for i in range(max(lengths))], n_logits=1)
    print(f"\n{'context':>8} {'rows':>5} {'dynamic ms/step':>16} {'growing ms/step':>16} {'speed-up':>9}")
    for length in lengths:
        for rows in (int(r) for r in args.rows.split(",")):
            with _dynamic():
                old = step_time(lm.model, state.kv, length, rows, args.steps)
            new = step_time(lm.model, state.kv, length, rows, args.steps)
            print(f"{length:>8} {rows:>5} {old * 1e3:>16.0f} {new * 1e3:>16.0f} {old / new:>8.2f}x", flush=True)

    eos = eos_token_ids(lm.model, lm.tokenizer)
    prompt = apply_chat_template(lm.tokenizer, PROMPT)
    pre = prefix_forward(lm.model, prompt, n_logits=1)
    forced = torch.topk(pre.logits[-1], args.rollout_rows).indices.tolist()
    n = len(prompt)
    runs = {}
    for name in ("dynamic", "growing", "dynamic ", "growing "):  # each twice, alternating
        t = time.perf_counter()
        if name.strip() == "dynamic":
            with _dynamic():
                seqs, _ = rollouts_at(lm.model, pre.kv, [n] * len(forced), forced, [args.budget] * len(forced), eos)
        else:
            seqs, _ = rollouts_at(lm.model, pre.kv, [n] * len(forced), forced, [args.budget] * len(forced), eos)
        runs.setdefault(name.strip(), []).append((time.perf_counter() - t, seqs))
    tokens = sum(len(s) for s in runs["growing"][0][1])
    same = all(r[1] == runs["growing"][0][1] for v in runs.values() for r in v)
    old = min(r[0] for r in runs["dynamic"])
    new = min(r[0] for r in runs["growing"])
    print(f"\nrollouts_at: {len(forced)} rows after a {n}-token prompt, budget {args.budget}: {tokens} tokens; "
          f"dynamic {old:.1f} s, growing {new:.1f} s (best of 2 each): x{old / new:.2f}; same tokens: {same}")


if __name__ == "__main__":
    main()
