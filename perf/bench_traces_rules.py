"""What the agent-trace prefix rules save in the pair search (not a test).

On real tau-bench actions (``--data``, e.g. ../shared/benchmarks/agent_traces/tau-bench/gpt-4o-airline.json) with
the bundled model: every failure is searched twice at the default pair settings, once with the traces benchmark as
it is (its prefix rules: benchmarks/traces.py) and once with the same checker without them (the baseline: the
benchmark before the rules), alternating which goes first per failure, in the same run. Prints seconds, rollouts
and tokens decoded per failure, the statuses, the ratio, and whether both searches found the same pair.

    .venv/bin/python perf/bench_traces_rules.py --data FILE [--items 20] [--tokens 128]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from failtrace.benchmarks.base import Item, Verdict
from failtrace.benchmarks.traces import TracesBenchmark
from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate, pad_token_id
from failtrace.failures.pairs import PairFinder, PairSettings
from failtrace.models.chat import apply_chat_template
from failtrace.models.loading import load_model


class WithoutRules:
    """The traces checker without its prefix rules: the same ``check``, no ``prefix_decides_fail``/``prefix_final``."""

    def __init__(self, bench: TracesBenchmark) -> None:
        self.bench, self.name, self.max_new_tokens = bench, bench.name, bench.max_new_tokens

    def load(self, source: str, limit: int | None = None) -> Any:
        return self.bench.load(source, limit)

    def check(self, item: Item, completion: str) -> Verdict:
        return self.bench.check(item, completion)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a tau-bench trajectory file or traces JSONL")
    ap.add_argument("--items", type=int, default=20, help="the first N actions")
    ap.add_argument("--tokens", type=int, default=128, help="generation and rollout budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-positions", type=int, default=None, help="default: the pair search's own")
    ap.add_argument("--top-k", type=int, default=None, help="default: the pair search's own")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m-instruct", progress=False)
    bench = TracesBenchmark()
    eos = eos_token_ids(lm.model, lm.tokenizer)
    pad = pad_token_id(lm.tokenizer, eos)
    items = bench.load(args.data, args.items).items
    failures = []
    t0 = time.perf_counter()
    for it in items:
        prompt = apply_chat_template(lm.tokenizer, it.prompt)
        gen = greedy_generate(lm.model, [prompt], args.tokens, eos, pad)[0]
        if bench.check(it, decode_completion(lm.tokenizer, gen.token_ids, eos)).status == "fail":
            failures.append((it, prompt, gen))
    given = {k: v for k, v in (("max_positions", args.max_positions), ("top_k", args.top_k)) if v is not None}
    settings = PairSettings(**given)
    print(f"model {lm.name}, {len(items)} actions of {args.data}, {args.tokens} tokens: {len(failures)} failures "
          f"(generated in {time.perf_counter() - t0:.0f} s); pair settings top-k {settings.top_k}, max positions "
          f"{settings.max_positions} (others the defaults), {args.threads} threads", flush=True)
    finder = PairFinder(lm, settings)
    benches = {"without rules": WithoutRules(bench), "with rules": bench}
    cost = {k: [0.0, 0, 0] for k in benches}
    statuses: dict[str, dict[str, int]] = {k: {} for k in benches}
    same = 0
    for i, (it, prompt, gen) in enumerate(failures):
        got, line = {}, {}
        for which in (list(benches) if i % 2 == 0 else list(benches)[::-1]):
            t = time.perf_counter()
            res = finder.find(benches[which], it, prompt, gen.token_ids, args.tokens, gen.finish_reason)
            c, sec = cost[which], time.perf_counter() - t
            c[0] += sec
            c[1] += res.rollouts
            c[2] += res.tokens_decoded
            line[which] = f"{sec:.0f} s, {res.rollouts} rollouts, {res.tokens_decoded} tokens"
            statuses[which][res.status] = statuses[which].get(res.status, 0) + 1
            got[which] = (res.status, res.completion_offset, res.target_id, res.contrast_id)
        same += got["with rules"] == got["without rules"]
        print(f"  {it.id} ({next(iter(it.reference['expected']))} expected, {len(prompt)} prompt tokens): without "
              f"rules {got['without rules'][0]} ({line['without rules']}); with rules {got['with rules'][0]} "
              f"({line['with rules']})", flush=True)
    nf = max(1, len(failures))
    print(f"{'search':<16}{'s/failure':>10}{'rollouts':>10}{'tokens':>9}  statuses")
    for which, (sec, roll, tok) in cost.items():
        print(f"{which:<16}{sec / nf:>10.1f}{roll / nf:>10.1f}{tok / nf:>9.0f}  {statuses[which]}")
    if failures:
        old, new = cost["without rules"], cost["with rules"]
        tokens = f"x{old[2] / new[2]:.2f}" if new[2] else "n/a: none decoded"
        print(f"speed-up x{old[0] / new[0]:.2f} (time), {tokens} (tokens decoded); same pair "
              f"and status for {same}/{len(failures)} failures")


if __name__ == "__main__":
    main()
