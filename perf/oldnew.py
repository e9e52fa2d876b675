"""The pair search as issue 13 found it ("old") against the default search ("new"), same failures, same run (not a
test; used by ``perf/bench_benchmark.py --old-vs-new``).

Each failure is searched by both, alternating which goes first. With ``workers`` > 1 the failures are shared out to
that many processes (one torch thread each unless told otherwise), every one running old and new on the failures it
takes, so both searches still see the same machine; the totals are summed over all failures, as with one process.
Old searches can take hours per failure on a CPU at the defaults: ``old_cap_s`` stops one after that many seconds,
its time is then a *lower bound* and its pair unknown ("capped").
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from typing import Any

import torch

from failtrace.benchmarks.base import Item
from failtrace.benchmarks.registry import get_benchmark
from failtrace.failures.pair_types import PairSettings
from failtrace.failures.search import PairFinder

from tablefmt import table


class _Capped(Exception):
    """The old search ran past its time cap."""


class CheckEvery:
    """Mixin for a PairFinder whose every check calls the checker (no verdict-key memo)."""

    def _check(self, benchmark: Any, item: Any, text: str, search: Any) -> str:
        from failtrace.failures.collect import safe_check

        t = time.perf_counter()
        status = safe_check(benchmark, item, text).status
        search.seconds_check += time.perf_counter() - t
        search.checks += 1
        return status


class _Old(CheckEvery):
    """Mixin for the old baseline: every check calls the checker (the verdict-key memo did not exist then), and its
    caches are transformers' plain dynamic cache (``torch.cat`` per token, as then)."""

    cap_s: float | None = None  # stop the search after this many seconds (its time is then a lower bound)

    def find(self, *args: Any, **kwargs: Any) -> Any:
        import failtrace.failures.kvcache as kvcache
        import failtrace.failures.search as search

        saved, decode = kvcache.growing_layer, search.rollouts_at
        kvcache.growing_layer = lambda: None  # type: ignore[assignment]
        deadline = None if self.cap_s is None else time.perf_counter() + self.cap_s

        def capped(*a: Any, **kw: Any) -> Any:
            """rollouts_at with a row callback that never stops a row but ends the search at the deadline."""
            def stop(i: int, toks: list[int]) -> bool:
                if time.perf_counter() > deadline:
                    raise _Capped
                return False
            a = list(a)
            a[7], a[8] = stop, 1  # stop, stop_every (the old search has no prefix rule: stop is None there)
            return decode(*a, **kw)

        if deadline is not None:
            search.rollouts_at = capped  # type: ignore[assignment]
        try:
            return super().find(*args, **kwargs)  # type: ignore[misc]
        finally:
            kvcache.growing_layer, search.rollouts_at = saved, decode  # type: ignore[assignment]


class OldFinder(_Old, PairFinder):
    """The old search (settings from :func:`finders`)."""


def finders(lm: Any, baseline: str, top_k: int, max_positions: int, old_cap_s: float | None) -> tuple[Any, Any]:
    """(old, new): ``baseline="old"``: one position per batch, every rollout to the full budget, no halting at the
    answer, no verdict reuse, transformers' dynamic cache, unbounded failures searched too, no lookup drafts (the same
    code with those switched off); ``"no-halt"``: the default search with only halting at the answer and drafts off;
    ``"no-drafts"``: only the drafts off; ``"no-completion-drafts"``: only the drafts from the failing completion."""
    new = PairFinder(lm, PairSettings(top_k=top_k, max_positions=max_positions))
    if baseline == "no-drafts":
        return PairFinder(lm, PairSettings(top_k=top_k, max_positions=max_positions, draft_tokens=0)), new
    if baseline == "no-completion-drafts":
        return PairFinder(lm, PairSettings(top_k=top_k, max_positions=max_positions,
                                           draft_from_completion=False)), new
    base = PairSettings(top_k=top_k, max_positions=max_positions, halt_at_answer=False, try_unbounded=True,
                        draft_tokens=0)
    if baseline != "old":  # "no-halt"
        return PairFinder(lm, base), new
    base.early_stop, base.position_batch = False, 1
    old = OldFinder(lm, base)
    old.cap_s = old_cap_s
    return old, new


def search_both(pair: tuple[Any, Any], i: int, benchmark: str, item: Item, row: dict[str, Any],
                max_new_tokens: int) -> dict[str, Any]:
    """Old and new on one failure (old first on even ``i``): per search (status, offset, contrast, s) or capped, and
    its seconds, rollouts and tokens decoded."""
    bench = get_benchmark(benchmark)
    got: dict[str, Any] = {}
    cost: dict[str, list[float]] = {}
    for which in (("old", "new") if i % 2 == 0 else ("new", "old")):
        finder = pair[0] if which == "old" else pair[1]
        t = time.perf_counter()
        try:
            res = finder.find(bench, item, row["prompt_ids"], row["token_ids"], max_new_tokens, row["finish_reason"])
        except _Capped:
            res = None
        s = time.perf_counter() - t
        if res is None:
            got[which], cost[which] = ("capped", None, None), [s, 0, 0]
        else:
            got[which] = (res.status, res.completion_offset, res.contrast_id, round(s, 1))
            cost[which] = [s, res.rollouts, res.tokens_decoded]
    return {"i": i, "item_id": row["item_id"], "finish_reason": row["finish_reason"],
            "tokens": len(row["token_ids"]), "got": got, "cost": cost}


_WORKER: dict[str, Any] = {}


def _init(model: str, threads: int, baseline: str, top_k: int, max_positions: int, cap: float | None) -> None:
    """A worker process: its own model and searches, ``threads`` torch threads."""
    from failtrace.models.loading import load_model

    torch.set_num_threads(threads)
    _WORKER["pair"] = finders(load_model(model, progress=False), baseline, top_k, max_positions, cap)


def _task(job: tuple[int, str, dict[str, Any], dict[str, Any], int]) -> dict[str, Any]:
    i, benchmark, item, row, max_new = job
    return search_both(_WORKER["pair"], i, benchmark, Item.from_dict(item), row, max_new)


def _failures(st: Any, run: Any, n: int, bounded_only: bool | None, status: str | None,
              every: int = 1) -> list[dict[str, Any]]:
    """The first ``n`` failures of a run (item order of the store) among every ``every``-th one (a systematic
    sample: the 1st, the 1+every-th, ...), filtered as :func:`old_vs_new` says."""
    with_status = {(p["run_id"], p["item_id"]) for p in st.pairs() if p["status"] == status}
    return [r for r in st.results(run.run_id, status="fail")
            if (bounded_only is None or bounded_only == (r["finish_reason"] != "length"))
            and (status is None or (run.run_id, r["item_id"]) in with_status)][::every][:n]


def old_vs_new(st: Any, lm: Any, n: int, top_k: int, max_positions: int, bounded_only: bool | None,
               baseline: str = "old", status: str | None = None, old_cap_s: float | None = None,
               budget_s: float | None = None, only: str | None = None, workers: int = 1, every: int = 1) -> None:
    """Old (see :func:`finders`) against the default search on the first ``n`` failures of every benchmark in the
    store (``bounded_only`` True: the first ``n`` that stopped within the budget, False: the first ``n`` that hit it;
    with ``status``: only failures whose stored pair has it; ``every`` k: of those, every k-th, a sample spread over
    the whole run); print one line per failure and the table.
    ``budget_s``: no new failure is started after that many seconds (per benchmark; one process only)."""
    if workers > 1 and budget_s is not None:
        raise SystemExit("--budget-s works with one process only (--workers 1)")
    pair = finders(lm, baseline, top_k, max_positions, old_cap_s) if workers == 1 else None
    threads = torch.get_num_threads() if workers == 1 else 1
    rows = []
    for run in st.runs("collect"):
        if only is not None and run.benchmark != only:
            continue
        fails = _failures(st, run, n, bounded_only, status, every)
        max_new = run.settings["max_new_tokens"]
        jobs = [(i, run.benchmark, st.get_item(run.benchmark, r["item_id"]).to_dict(),
                 {k: r[k] for k in ("item_id", "prompt_ids", "token_ids", "finish_reason")}, max_new)
                for i, r in enumerate(fails)]
        cost = {"old": [0.0, 0, 0], "new": [0.0, 0, 0]}
        count: dict[str, Counter] = {"old": Counter(), "new": Counter()}
        same = capped = done = 0
        started = time.perf_counter()

        def tally(out: dict[str, Any]) -> None:
            nonlocal same, capped, done
            got = out["got"]
            for which in ("old", "new"):
                cost[which] = [a + b for a, b in zip(cost[which], out["cost"][which])]
                count[which][got[which][0]] += 1
            done += 1
            capped += got["old"][0] == "capped"
            # unbounded: the old search also records where a recovery would be, the new one does not search
            same += got["old"][:3] == got["new"][:3] or got["old"][0] == got["new"][0] == "unbounded"
            print(f"  {run.benchmark} {out['item_id']} ({out['finish_reason']}, {out['tokens']} tokens): "
                  f"old {got['old']} new {got['new']}", flush=True)

        if workers == 1:
            for job in jobs:
                if budget_s is not None and time.perf_counter() - started > budget_s:
                    break
                tally(search_both(pair, job[0], job[1], Item.from_dict(job[2]), job[3], job[4]))
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, _init, (lm.name, threads, baseline, top_k, max_positions, old_cap_s)) as pool:
                for out in pool.imap_unordered(_task, jobs, chunksize=1):
                    tally(out)
        wall = time.perf_counter() - started
        m = max(1, done)
        bound = "≥ " if capped else ""
        for which in ("old", "new"):
            rows.append([run.benchmark, which, done, cost[which][0] / m, cost[which][1] / m, cost[which][2] / m,
                         dict(count[which])])
        rows.append([run.benchmark, "old/new", done, f"{bound}x{cost['old'][0] / max(cost['new'][0], 1e-9):.1f}",
                     "-" if capped else f"x{cost['old'][1] / max(cost['new'][1], 1):.1f}",
                     "-" if capped else f"x{cost['old'][2] / max(cost['new'][2], 1):.1f}",
                     f"same status (and pair) {same}/{done - capped} finished by both"
                     + (f"; old stopped at {old_cap_s:g} s on {capped}" if capped else "")
                     + (f"; {len(fails) - done} failures not started (budget)" if done < len(fails) else "")
                     + f"; {wall:.0f} s wall"])
    cap = f"old capped at {old_cap_s:g} s per failure (its time: a lower bound), " if old_cap_s else ""
    sample = f"one failure in {every} (positions 1, {every + 1}, {2 * every + 1}, ...), " if every > 1 else ""
    procs = f"{workers} processes x {threads} torch thread(s), " if workers > 1 else f"torch threads {threads}, "
    table(f"Pair search, baseline {baseline!r} (old) vs the default search (new): same failures"
          f"{f' (stored pair {status})' if status else ''}, same run; {sample}{cap}{procs}top-k {top_k}, "
          f"max-positions {max_positions}",
          ["benchmark", "search", "failures", "s/failure", "rollouts/failure", "tokens/failure", "statuses"], rows)
