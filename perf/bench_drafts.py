"""What lookup drafts save on the pair search's real rollouts (not a test): the same rollouts decoded three ways.

For the first N failures of a benchmark in a results store that stopped within their budget, the rollouts the
search makes at the first P completion positions (the model's top-k alternatives at each, decoded in blocks of
``--position-batch`` positions as the search does, every rollout to EOS or the budget: no checker, no halting, so
every mode does exactly the same work) are decoded

* ``plain``: one token per forward pass (``--draft-tokens 0``);
* ``own``: lookup drafts from each rollout's own text (prompt, prefix, rollout so far);
* ``own+completion``: also from the failing completion after the rollout's position (the default search);
* ``session-7 rule``: the same drafts with session 7's draft-length rule instead of the cost model (a pass fed at
  most 48 token rows, drafts whenever half the rows had one, the length doubled while rows took most of it, drafting
  paused after a pass that gained nothing), re-implemented here as a baseline.

It prints seconds, forward passes and tokens per mode, the ratio to ``plain`` (the baseline, measured in the same
run, modes alternating which goes first), and whether every mode decoded the same tokens.

    .venv/bin/python perf/bench_drafts.py --store def.duckdb --benchmark math --failures 3 --positions 8
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

import failtrace.failures.decode as decode
from failtrace.failures.generation import eos_token_ids, prefix_forward, rollouts_at
from failtrace.models.loading import load_model
from failtrace.store import open_store

MODES = ("plain", "own", "own+completion", "session-7 rule")


class _Session7Rule(decode._Drafting):
    """Session 7's draft length (module docstring), behind the cost model's interface: ``learn`` gathers what the
    rows accepted in a drafting pass, the next ``length`` adapts to it as that rule did."""

    def __init__(self, max_draft: int, rows: int, cost: Any) -> None:
        super().__init__(max_draft, rows, cost)
        self.current, self.pause, self.backoff, self.last, self.accepted = min(2, max_draft), 0, 2, 0, []

    def learn(self, row: int, guess: Any, new: Any) -> None:
        if self.last:
            self.accepted.append(len(new) - 1)

    def length(self, rows: Any, guesses: Any, room: int) -> int:
        if self.last and self.accepted:
            mean = sum(self.accepted) / len(self.accepted)
            if mean == 0:
                self.current, self.pause, self.backoff = 1, self.backoff, min(2 * self.backoff, 32)
            else:
                self.backoff = 2
                self.current = (min(2 * self.last, self.max_draft) if mean >= 0.5 * self.last
                                else max(1, min(self.last, round(2 * mean))))
        self.accepted = []
        d = min(self.current, 48 // len(rows) - 1, room)
        if d > 0 and self.pause > 0:
            self.pause, d = self.pause - 1, 0
        elif d > 0 and 2 * sum(1 for g in guesses if g) < len(rows):
            d = 0
        self.last = d
        return d


class _Passes:
    """Counts the decoding loop's forward passes while installed."""

    def __init__(self) -> None:
        self.passes = 0
        self.real = decode.forward_logits

    def __enter__(self) -> _Passes:
        def counted(model: Any, keep: int | None = None, **kwargs: Any) -> Any:
            self.passes += 1
            return self.real(model, keep, **kwargs)
        decode.forward_logits = counted  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        decode.forward_logits = self.real  # type: ignore[assignment]


def rollouts(lm: Any, prompt: list[int], comp: list[int], budget: int, k: int, positions: int, block: int,
             mode: str, draft_tokens: int) -> tuple[list[list[int]], float, int]:
    """The search's rollouts at the first ``positions`` offsets, decoded in ``mode``: (tokens, seconds, passes)."""
    eos = eos_token_ids(lm.model, lm.tokenizer)
    walk = min(positions, len(comp))
    state = prefix_forward(lm.model, prompt + comp[:walk - 1], n_logits=walk)
    top = torch.topk(state.logits, k + 1, dim=-1).indices.tolist()
    out: list[list[int]] = []
    rule = decode._Drafting
    decode._Drafting = _Session7Rule if mode == "session-7 rule" else rule  # type: ignore[misc]
    t = time.perf_counter()
    with _Passes() as count:
        for first in range(0, walk, block):
            rows = [(p, c) for p in range(first, min(first + block, walk)) for c in [c for c in top[p]
                                                                                   if c != comp[p]][:k]]
            seqs, _ = rollouts_at(lm.model, state.kv, [len(prompt) + p for p, _ in rows], [c for _, c in rows],
                                  [budget - p for p, _ in rows], eos,
                                  contexts=[prompt + comp[:p] for p, _ in rows],
                                  max_draft=0 if mode == "plain" else draft_tokens,
                                  references=None if mode in ("plain", "own") else [comp[p + 1:] for p, _ in rows])
            out.extend(seqs)
    decode._Drafting = rule  # type: ignore[misc]
    return out, time.perf_counter() - t, count.passes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--benchmark", default="math")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--failures", type=int, default=3)
    ap.add_argument("--skip", type=int, default=0, help="skip the first S bounded failures")
    ap.add_argument("--positions", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--position-batch", type=int, default=4)
    ap.add_argument("--draft-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    with open_store(args.store, read_only=True) as st:
        runs = [r for r in st.runs("collect") if r.benchmark == args.benchmark and r.model == lm.name]
        if not runs:
            raise SystemExit(f"error: no {args.benchmark} collection of {lm.name} in {args.store}")
        run = runs[0]
        fails = [r for r in st.results(run.run_id, status="fail") if r["finish_reason"] != "length"]
    fails = fails[args.skip:args.skip + args.failures]
    budget = int(run.settings["max_new_tokens"])
    print(f"model {lm.name}; {args.benchmark} collection at {budget} tokens; {len(fails)} bounded failures; first "
          f"{args.positions} positions x top-{args.top_k}, blocks of {args.position_batch} positions; "
          f"draft tokens {args.draft_tokens}; torch threads {args.threads}", flush=True)
    total = {m: [0.0, 0, 0] for m in MODES}
    same_all = True
    for i, r in enumerate(fails):
        order = MODES[i % len(MODES):] + MODES[:i % len(MODES)]  # alternate which mode goes first
        got: dict[str, Any] = {}
        for mode in order:
            seqs, secs, passes = rollouts(lm, list(r["prompt_ids"]), list(r["token_ids"]), budget, args.top_k,
                                          args.positions, args.position_batch, mode, args.draft_tokens)
            got[mode] = (seqs, secs, passes)
            tokens = sum(len(q) for q in seqs)
            for j, v in enumerate((secs, passes, tokens)):
                total[mode][j] += v
        same = all(got[m][0] == got["plain"][0] for m in MODES)
        same_all &= same
        print(f"  {r['item_id']} ({len(r['token_ids'])} tokens): "
              + ", ".join(f"{m} {got[m][1]:.1f} s / {got[m][2]} passes" for m in MODES)
              + f"; {sum(len(q) for q in got['plain'][0])} tokens; same tokens: {same}", flush=True)
    print(f"\n{'mode':<16}{'seconds':>10}{'passes':>9}{'tokens':>9}{'tokens/pass':>13}{'x plain (time)':>16}")
    for m in MODES:
        s, p, n = total[m]
        print(f"{m:<16}{s:>10.1f}{p:>9}{n:>9}{n / max(p, 1):>13.2f}{total['plain'][0] / max(s, 1e-9):>15.2f}x")
    print(f"same tokens in every mode on every failure: {same_all}")


if __name__ == "__main__":
    main()
