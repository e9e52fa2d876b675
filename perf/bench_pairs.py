"""Throughput of failure collection and of pair-finding on the bundled model (not a test).

Measures, in one run and on the same failures:

* collection throughput (items per minute, generated tokens per second): the baseline is plain transformers
  ``generate`` (greedy, one item at a time, same prompts and budget, no checker, no store), against failtrace's batch-1
  and left-padded batched collection (generate + check + commit); a warm-up runs first and the three paths run twice
  in alternating order, each reporting its faster run, so none is favoured by warm caches;
* pair-finding with the shared prefix cache + batched rollouts (failtrace's :class:`PairFinder`) versus recomputing
  every rollout from scratch (its own forward pass over prompt + prefix, then its own cached greedy decoding, one
  rollout at a time), with the speed-up ratio and whether both searches found the same pairs.

The items are short questions written for this script, with a toy checker (pass iff the completion contains an
expected word): the point is the cost of the search, not the benchmark.

With ``--ifeval FILE`` (IFEval JSONL, e.g. ../shared/benchmarks/ifeval/input_data.jsonl), also on real IFEval
items with the official checker: today's search (one position at a time, every rollout to the full budget: the
algorithm before early stopping and multi-position batches, run by the same code with those switched off) against
the new default search, alternating which goes first per failure, on the same failures in the same run: seconds,
rollouts and tokens decoded per failure, statuses, and whether both found the same pair; then, for the failures
that hit the length limit, how many a larger rollout budget (``--larger-budget``) resolves.

    .venv/bin/python perf/bench_pairs.py [--max-new-tokens 48] [--top-k 5] [--max-positions 4]
    .venv/bin/python perf/bench_pairs.py --only-ifeval --ifeval FILE --ifeval-items 8 --ifeval-tokens 64 \
        [--orders in-order,margin,entropy]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from failtrace.benchmarks.base import Item, Verdict
from failtrace.failures.collect import collect, safe_check
from failtrace.failures.generation import (
    decode_completion,
    eos_token_ids,
    greedy_generate,
    pad_token_id,
    prefix_forward,
)
from failtrace.benchmarks.ifeval import IFEvalBenchmark
from failtrace.failures.pairs import PairFinder, PairSettings
from failtrace.models.loading import load_model
from failtrace.store import open_store

QUESTIONS: list[tuple[str, str]] = [
    ("What is the capital of Australia? Answer in one word.", "Canberra"),
    ("Name a fruit that is yellow. One word only.", "lemon"),
    ("Give me a synonym for 'happy'. One word only.", "joyful"),
    ("What is 7 times 8? Answer with the number only.", "56"),
    ("Write the word hello in capital letters.", "HELLO"),
    ("Count from 1 to 5, separated by commas.", "1, 2, 3, 4, 5"),
    ("Name an animal that lives in the ocean.", "dolphin"),
    ("What colour do you get by mixing blue and yellow? One word.", "green"),
    ("Which is the largest planet of the solar system?", "Jupiter"),
    ("Say one word that rhymes with 'cat'.", "hat"),
]


@dataclass
class ContainsWord:
    """Toy checker: pass iff the expected word occurs in the completion (case-insensitive)."""

    name: str = "bench-words"
    max_new_tokens: int = 48

    def load(self, source: str, limit: int | None = None) -> Any:  # pragma: no cover - items are built in code
        raise NotImplementedError

    def check(self, item: Item, completion: str) -> Verdict:
        word = item.reference["word"]
        ok = word.lower() in completion.lower()
        return Verdict("pass" if ok else "fail", [] if ok else [f"{word!r} missing"])


def from_scratch(lm: Any, bench: ContainsWord, item: Item, prompt: list[int], comp: list[int], budget: int,
                 settings: PairSettings, finish_reason: str) -> tuple[int | None, int | None, int]:
    """The same search as PairFinder, recomputing everything per rollout; returns (offset, contrast, rollouts).
    Like PairFinder, a failure that hit the token budget is not searched unless ``settings.try_unbounded``."""
    if finish_reason == "length" and not settings.try_unbounded:
        return None, None, 0
    eos = eos_token_ids(lm.model, lm.tokenizer)
    pad = pad_token_id(lm.tokenizer, eos)
    n_rollouts = 0
    for p in range(min(len(comp), settings.max_positions)):
        row = prefix_forward(lm.model, prompt + comp[:p], n_logits=1, keep_cache=False).logits[0]
        alts = [t for t in torch.topk(row, settings.top_k + 1).indices.tolist() if t != comp[p]][:settings.top_k]
        for alt in alts:
            n_rollouts += 1
            rest = [] if alt in eos or budget - p <= 1 else \
                greedy_generate(lm.model, [prompt + comp[:p] + [alt]], budget - p - 1, eos, pad)[0].token_ids
            text = decode_completion(lm.tokenizer, comp[:p] + [alt] + rest, eos)
            if safe_check(bench, item, text).passed:
                return p, alt, n_rollouts
    return None, None, n_rollouts


def plain_generate(lm: Any, items: list[Item], max_new_tokens: int) -> dict[str, list[int]]:
    """Baseline: transformers' own ``generate`` (greedy, KV cache), one item at a time, same prompts and budget."""
    from failtrace.models.chat import apply_chat_template

    out: dict[str, list[int]] = {}
    for it in items:
        ids = apply_chat_template(lm.tokenizer, it.prompt)
        x = torch.tensor([ids])
        with torch.no_grad():
            y = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=lm.tokenizer.pad_token_id or 0)
        out[it.id] = _strip_eos(y[0, len(ids):].tolist(), lm)
    return out


def _strip_eos(ids: list[int], lm: Any) -> list[int]:
    """Token ids up to (not including) the first EOS: the two generators differ only in whether they keep it."""
    eos = eos_token_ids(lm.model, lm.tokenizer)
    for i, t in enumerate(ids):
        if t in eos:
            return list(ids[:i])
    return list(ids)


def ifeval_pairs(lm: Any, path: str, n_items: int, budget: int, top_k: int, max_positions: int,
                 larger: int, orders: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Old vs new search on real IFEval failures (same failures, same run), then the larger rollout budget."""
    from failtrace.models.chat import apply_chat_template

    bench = IFEvalBenchmark()
    eos = eos_token_ids(lm.model, lm.tokenizer)
    pad = pad_token_id(lm.tokenizer, eos)
    items = bench.load(path, n_items).items
    failures = []
    for it in items:
        prompt = apply_chat_template(lm.tokenizer, it.prompt)
        gen = greedy_generate(lm.model, [prompt], budget, eos, pad)[0]
        if bench.check(it, decode_completion(lm.tokenizer, gen.token_ids, eos)).status == "fail":
            failures.append((it, prompt, gen))
    old = PairFinder(lm, PairSettings(top_k=top_k, max_positions=max_positions, early_stop=False,
                                      position_batch=1, halt_at_answer=False, draft_tokens=0))
    new = PairFinder(lm, PairSettings(top_k=top_k, max_positions=max_positions))
    cost = {"old": [0.0, 0, 0], "new": [0.0, 0, 0]}
    parts = {"old": [0.0, 0.0, 0.0], "new": [0.0, 0.0, 0.0]}  # prefix pass, rollouts, checker
    statuses: dict[str, dict[str, int]] = {"old": {}, "new": {}}
    same = 0
    for i, (it, prompt, gen) in enumerate(failures):
        got = {}
        for which in (("old", "new") if i % 2 == 0 else ("new", "old")):
            finder = old if which == "old" else new
            t = time.perf_counter()
            res = finder.find(bench, it, prompt, gen.token_ids, budget, gen.finish_reason)
            c = cost[which]
            c[0] += time.perf_counter() - t
            c[1] += res.rollouts
            c[2] += res.tokens_decoded
            for j, v in enumerate((res.seconds_prefix, res.seconds_rollouts, res.seconds_check)):
                parts[which][j] += v
            statuses[which][res.status] = statuses[which].get(res.status, 0) + 1
            got[which] = (res.status, res.completion_offset, res.contrast_id)
        same += got["old"] == got["new"]
    rows: list[tuple[str, str, str]] = []
    nf = max(1, len(failures))
    for which, label in (("old", "today's search (1 position per batch, full rollouts)"),
                         ("new", "new search (position blocks + early stopping)")):
        sec, roll, tok = cost[which]
        pre, rol, chk = (100 * v / max(sec, 1e-9) for v in parts[which])
        rows.append((f"ifeval pairs, {label}", f"{sec / nf:.1f} s/failure",
                     f"{roll / nf:.1f} rollouts, {tok / nf:.0f} tokens decoded per failure; time: prefix pass "
                     f"{pre:.0f}%, rollouts {rol:.0f}%, checker {chk:.0f}%; {statuses[which]}"))
    if failures:
        rows.append(("ifeval pairs, speed-up (same failures, same run)", f"x{cost['old'][0] / cost['new'][0]:.2f}",
                     f"tokens x{cost['old'][2] / max(1, cost['new'][2]):.2f}; same pair and status for "
                     f"{same}/{len(failures)} failures ({len(items)} items, {len(failures)} failures)"))
    unbounded = [(it, prompt, gen) for it, prompt, gen in failures if gen.finish_reason == "length"]
    ends = {"stops and still fails": 0, "stops and passes": 0, "still at the limit": 0, "unverifiable": 0}
    for it, prompt, gen in unbounded:
        more = greedy_generate(lm.model, [prompt + gen.token_ids], larger - budget, eos, pad)[0]
        ids = gen.token_ids + more.token_ids
        if more.finish_reason == "length":
            ends["still at the limit"] += 1
            continue
        verdict = bench.check(it, decode_completion(lm.tokenizer, ids, eos)).status
        ends[{"fail": "stops and still fails", "pass": "stops and passes"}.get(verdict, "unverifiable")] += 1
    rows.append((f"ifeval unbounded failures at {budget} tokens, continued to {larger}", f"{len(unbounded)} failures",
                 "; ".join(f"{v} {k}" for k, v in ends.items())))
    return rows + order_rows(lm, bench, failures, budget, top_k, max_positions, orders or [])


def order_rows(lm: Any, bench: Any, failures: list[Any], budget: int, top_k: int, max_positions: int,
               orders: list[str]) -> list[tuple[str, str, str]]:
    """The new search under each ``--orders`` position order on the same failures: cost, and the same pair?"""
    if len(orders) < 2:
        return []
    runs: dict[str, list[Any]] = {}
    secs: dict[str, float] = {}
    for o in orders:
        finder = PairFinder(lm, PairSettings(top_k=top_k, max_positions=max_positions, order=o))
        t = time.perf_counter()
        runs[o] = [finder.find(bench, it, prompt, gen.token_ids, budget, gen.finish_reason)
                   for it, prompt, gen in failures]
        secs[o] = time.perf_counter() - t
    nf, base = max(1, len(failures)), runs[orders[0]]
    rows = []
    for o, res in runs.items():
        same = sum((a.status, a.completion_offset, a.contrast_id) == (b.status, b.completion_offset, b.contrast_id)
                   for a, b in zip(res, base, strict=True))
        rows.append((f"ifeval pairs, order {o}", f"{secs[o] / nf:.1f} s/failure",
                     f"{sum(r.rollouts for r in res) / nf:.1f} rollouts, "
                     f"{sum(r.positions_rolled for r in res) / nf:.1f}"
                     f" positions rolled out, {sum(r.tokens_decoded for r in res) / nf:.0f} tokens per failure; same "
                     f"pair as {orders[0]} {same}/{len(res)}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--max-positions", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4, help="batch size of the batched collection")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--ifeval", default=None, help="IFEval JSONL file: also compare old and new search on it")
    ap.add_argument("--ifeval-items", type=int, default=8)
    ap.add_argument("--ifeval-tokens", type=int, default=64, help="generation budget of the IFEval items")
    ap.add_argument("--larger-budget", type=int, default=256, help="rollout budget tried on unbounded failures")
    ap.add_argument("--only-ifeval", action="store_true", help="skip the toy-question part")
    ap.add_argument("--orders", default="", help="comma-separated position orders to compare on the IFEval failures "
                                                 "(e.g. in-order,margin,entropy; the first is the baseline)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model(args.model)
    if args.only_ifeval:
        if not args.ifeval:
            ap.error("--only-ifeval needs --ifeval FILE")
        print(f"model {lm.name}, ifeval {args.ifeval_items} items, max_new_tokens {args.ifeval_tokens}, top-k "
              f"{args.top_k}, max-positions {args.max_positions}, torch threads {torch.get_num_threads()}")
        _print(ifeval_pairs(lm, args.ifeval, args.ifeval_items, args.ifeval_tokens, args.top_k, args.max_positions,
                            args.larger_budget, [o for o in args.orders.split(",") if o]))
        return
    bench = ContainsWord(max_new_tokens=args.max_new_tokens)
    items = [Item(id=f"w{i:02d}", benchmark=bench.name, prompt=q, reference={"word": w})
             for i, (q, w) in enumerate(QUESTIONS)]
    settings = PairSettings(top_k=args.top_k, max_positions=args.max_positions, min_delta=1.0)
    print(f"model {lm.name}, {len(items)} items, max_new_tokens {args.max_new_tokens}, top-k {args.top_k}, "
          f"max-positions {args.max_positions}, torch threads {torch.get_num_threads()}")

    rows: list[tuple[str, str, str]] = []
    # Warm-up (one short generation) so no measured path pays for first-call costs, then the three collection
    # paths run twice in alternating order (A B C C B A) and each reports the faster of its two runs.
    plain_generate(lm, items[:1], 4)
    times: dict[str, list[float]] = {"b1": [], "bn": [], "hf": []}
    res1: dict[str, Any] = {}
    resn: dict[str, Any] = {}
    hf_ids: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep, order in enumerate((("b1", "bn", "hf"), ("hf", "bn", "b1"))):
            for which in order:
                if which == "hf":
                    t = time.perf_counter()
                    hf_ids = plain_generate(lm, items, args.max_new_tokens)
                    times["hf"].append(time.perf_counter() - t)
                    continue
                batch = 1 if which == "b1" else args.batch_size
                with open_store(Path(tmp) / f"{which}{rep}.duckdb") as st:
                    s = collect(st, bench, items, lm, progress=False, batch_size=batch)
                    times[which].append(s.seconds)
                    got = {r["item_id"]: r for r in st.results(s.run_id)}
                (res1 if which == "b1" else resn).update(got)
    tokens = sum(r["n_tokens"] for r in res1.values())
    per_min = {k: 60 * len(items) / min(v) for k, v in times.items()}
    same_n = sum(res1[i]["token_ids"] == resn[i]["token_ids"] for i in res1)
    same_hf = sum(_strip_eos(res1[i]["token_ids"], lm) == hf_ids[i] for i in res1)
    n_pass = sum(r["status"] == "pass" for r in res1.values())
    rows.append(("collect, plain transformers generate, 1 item at a time (baseline, no checker, no store)",
                 f"{per_min['hf']:.1f} items/min", f"{tokens / min(times['hf']):.1f} tok/s"))
    rows.append(("collect, failtrace batch 1 (generate + check + store)", f"{per_min['b1']:.1f} items/min",
                 f"x{per_min['b1'] / per_min['hf']:.2f} vs baseline; identical tokens {same_hf}/{len(res1)}; "
                 f"{n_pass} pass, {len(res1) - n_pass} fail"))
    rows.append((f"collect, failtrace batch {args.batch_size} (left padding)", f"{per_min['bn']:.1f} items/min",
                 f"x{per_min['bn'] / per_min['hf']:.2f} vs baseline; identical to batch 1 {same_n}/{len(res1)}"))

    failures = [r for r in res1.values() if r["status"] == "fail"]
    finder = PairFinder(lm, settings)
    fast_s = slow_s = 0.0
    fast_n = slow_n = 0
    agree = 0
    statuses: dict[str, int] = {}
    for r in failures:
        item = next(it for it in items if it.id == r["item_id"])
        t = time.perf_counter()
        res = finder.find(bench, item, r["prompt_ids"], r["token_ids"], args.max_new_tokens, r["finish_reason"])
        fast_s += time.perf_counter() - t
        fast_n += res.rollouts
        statuses[res.status] = statuses.get(res.status, 0) + 1
        t = time.perf_counter()
        offset, contrast, n = from_scratch(lm, bench, item, r["prompt_ids"], r["token_ids"], args.max_new_tokens,
                                           settings, r["finish_reason"])
        slow_s += time.perf_counter() - t
        slow_n += n
        agree += int((offset, contrast) == (res.completion_offset, res.contrast_id))
    if failures:
        rows.append(("pairs, prefix cache + batched rollouts", f"{60 * len(failures) / fast_s:.2f} failures/min",
                     f"{fast_n} rollouts in {fast_s:.1f} s ({fast_n / fast_s:.2f} rollouts/s); statuses {statuses}"))
        rows.append(("pairs, every rollout from scratch", f"{60 * len(failures) / slow_s:.2f} failures/min",
                     f"{slow_n} rollouts in {slow_s:.1f} s ({slow_n / slow_s:.2f} rollouts/s)"))
        rows.append(("speed-up (same failures, same run)", f"x{slow_s / fast_s:.2f}",
                     f"same pair found for {agree}/{len(failures)} failures"))
    if args.ifeval:
        rows += ifeval_pairs(lm, args.ifeval, args.ifeval_items, args.ifeval_tokens, args.top_k, args.max_positions,
                             args.larger_budget, [o for o in args.orders.split(",") if o])
    _print(rows)


def _print(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(a) for a, _, _ in rows)
    w2 = max(len(b) for _, b, _ in rows)
    print(f"{'measure':<{width}}  {'throughput':>{w2}}  notes")
    print("-" * (width + w2 + 60))
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>{w2}}  {c}")


if __name__ == "__main__":
    main()
