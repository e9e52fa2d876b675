"""The pair search as issue 13 found it ("old") against the default search ("new"), same failures, same run (not a
test; used by ``perf/bench_benchmark.py --old-vs-new``).

Each failure is searched by both, alternating which goes first. With ``workers`` > 1 the failures are shared out to
that many processes (one torch thread each unless told otherwise), every one running old and new on the failures it
takes, so both searches still see the same machine; the totals are summed over all failures, as with one process.
Old searches can take hours per failure on a CPU at the defaults: ``old_cap_s`` stops one after that many seconds,
its time is then a *lower bound* and its pair unknown ("capped"). ``deadline_s`` stops the whole comparison, in
every process: a search running then is capped (a new one too: that failure then has no ratio), later ones are
"not started". On a GPU (``--device cuda``) the processes share the one device.
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
    """A search ran past its time cap or the run's deadline."""


class CheckEvery:
    """Mixin for a PairFinder whose every check calls the checker (no verdict-key memo)."""

    def _check(self, benchmark: Any, item: Any, text: str, search: Any) -> str:
        from failtrace.failures.collect import safe_check

        t = time.perf_counter()
        status = safe_check(benchmark, item, text).status
        search.res.seconds_check += time.perf_counter() - t
        search.res.checks += 1
        return status


class _Stoppable:
    """Mixin for a PairFinder that stops (raises :class:`_Capped`) after ``cap_s`` seconds or at the wall-clock time
    ``until`` (``time.time()``, shared by every worker process), whichever comes first. The clock is read by a row
    callback that never ends a row itself, so a search that finishes in time finds what it finds without it."""

    cap_s: float | None = None  # this search's own cap (its time is then a lower bound)
    until: float | None = None  # the run's deadline
    old_cache = False  # the old baseline: transformers' plain dynamic cache (``torch.cat`` per token, as then)
    rows_stepped = 0  # row-steps seen by the clock so far: tokens decoded where every step decodes one token a row


    def find(self, *args: Any, **kwargs: Any) -> Any:
        import failtrace.failures.kvcache as kvcache
        import failtrace.failures.search as search

        ends = [t for t in (None if self.cap_s is None else time.time() + self.cap_s, self.until) if t is not None]
        deadline = min(ends) if ends else None
        self.rows_stepped = 0
        saved, decode = kvcache.growing_layer, search.rollouts_at
        if self.old_cache:
            kvcache.growing_layer = lambda: None  # type: ignore[assignment]

        def capped(*a: Any, **kw: Any) -> Any:
            """rollouts_at with the search's own stop rule (if any) plus the clock."""
            a = list(a)
            rule = a[7]

            def stop(i: int, toks: list[int]) -> bool:
                self.rows_stepped += 1
                if time.time() > deadline:  # type: ignore[operator]
                    raise _Capped
                return rule is not None and bool(rule(i, toks))
            a[7] = stop
            if rule is None:
                a[8] = 1  # no prefix rule: read the clock every token
            return decode(*a, **kw)

        if deadline is not None:
            search.rollouts_at = capped  # type: ignore[assignment]
        try:
            return super().find(*args, **kwargs)  # type: ignore[misc]
        finally:
            kvcache.growing_layer, search.rollouts_at = saved, decode  # type: ignore[assignment]


class OldFinder(CheckEvery, _Stoppable, PairFinder):
    """The old search (settings from :func:`finders`): every check calls the checker (the verdict-key memo did not
    exist then), transformers' dynamic cache."""

    old_cache = True


class NewFinder(_Stoppable, PairFinder):
    """A default search that stops at the run's deadline (its result is then unknown)."""


def finders(lm: Any, baseline: str, top_k: int, max_positions: int, old_cap_s: float | None,
            until: float | None = None) -> tuple[Any, Any]:
    """(old, new): ``baseline="old"``: one position per batch, every rollout to the full budget, no halting at the
    answer, no verdict reuse, transformers' dynamic cache, unbounded failures searched too, no lookup drafts (the same
    code with those switched off); ``"no-halt"``: the default search with only halting at the answer and drafts off;
    ``"no-drafts"``: only the drafts off; ``"no-completion-drafts"``: only the drafts from the failing completion.
    Both stop at ``until`` (wall clock), the old one also after ``old_cap_s`` seconds."""
    def make(cls: type, settings: PairSettings, cap: float | None = None) -> Any:
        finder = cls(lm, settings)
        finder.cap_s, finder.until = cap, until
        return finder

    new = make(NewFinder, PairSettings(top_k=top_k, max_positions=max_positions))
    if baseline == "no-drafts":
        return make(NewFinder, PairSettings(top_k=top_k, max_positions=max_positions, draft_tokens=0)), new
    if baseline == "no-completion-drafts":
        return make(NewFinder, PairSettings(top_k=top_k, max_positions=max_positions,
                                            draft_from_completion=False)), new
    base = PairSettings(top_k=top_k, max_positions=max_positions, halt_at_answer=False, try_unbounded=True,
                        draft_tokens=0)
    if baseline != "old":  # "no-halt"
        return make(NewFinder, base), new
    base.early_stop, base.position_batch = False, 1
    return make(OldFinder, base, old_cap_s), new


def search_both(pair: tuple[Any, Any], i: int, benchmark: str, item: Item, row: dict[str, Any],
                max_new_tokens: int) -> dict[str, Any]:
    """Old and new on one failure (old first on even ``i``): per search (status, offset, contrast, s), ``capped``
    (stopped by its cap or the deadline) or ``not started`` (the deadline had passed), and its seconds, rollouts and
    tokens decoded."""
    bench = get_benchmark(benchmark)
    got: dict[str, Any] = {}
    cost: dict[str, list[float]] = {}
    for which in (("old", "new") if i % 2 == 0 else ("new", "old")):
        finder = pair[0] if which == "old" else pair[1]
        if finder.until is not None and time.time() > finder.until:
            got[which], cost[which] = ("not started", None, None), [0.0, 0, 0]
            continue
        t = time.perf_counter()
        try:
            res = finder.find(bench, item, row["prompt_ids"], row["token_ids"], max_new_tokens, row["finish_reason"])
        except _Capped:
            res = None
        s = time.perf_counter() - t
        if res is None:
            # tokens decoded before the cap: exact for the old search (no drafts, the clock read every token)
            got[which] = ("capped", None, None, round(s, 1))
            cost[which] = [s, 0, finder.rows_stepped if finder.old_cache else 0]
        else:
            got[which] = (res.status, res.completion_offset, res.contrast_id, round(s, 1))
            cost[which] = [s, res.rollouts, res.tokens_decoded]
    return {"i": i, "item_id": row["item_id"], "finish_reason": row["finish_reason"],
            "tokens": len(row["token_ids"]), "got": got, "cost": cost}


_WORKER: dict[str, Any] = {}


def _init(model: str, threads: int, baseline: str, top_k: int, max_positions: int, cap: float | None,
          device: str = "cpu", until: float | None = None) -> None:
    """A worker process: its own model (on ``device``) and searches, ``threads`` torch threads."""
    from failtrace.models.loading import load_model

    torch.set_num_threads(threads)
    _WORKER["pair"] = finders(load_model(model, device=device, progress=False), baseline, top_k, max_positions, cap,
                              until)


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
               deadline_s: float | None = None, only: str | None = None, workers: int = 1, every: int = 1) -> None:
    """Old (see :func:`finders`) against the default search on the first ``n`` failures of every benchmark in the
    store (``bounded_only`` True: the first ``n`` that stopped within the budget, False: the first ``n`` that hit it;
    with ``status``: only failures whose stored pair has it; ``every`` k: of those, every k-th, a sample spread over
    the whole run); print one line per failure and the table.
    ``deadline_s``: the whole comparison stops that many seconds after it starts: searches running then are
    ``capped``, later ones ``not started``; the ratio is taken over the failures the new search finished."""
    until = None if deadline_s is None else time.time() + deadline_s
    pair = finders(lm, baseline, top_k, max_positions, old_cap_s, until) if workers == 1 else None
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
        outs: list[dict[str, Any]] = []
        started = time.perf_counter()

        def tally(out: dict[str, Any]) -> None:
            outs.append(out)
            got, c = out["got"], out["cost"]
            print(f"  {run.benchmark} {out['item_id']} ({out['finish_reason']}, {out['tokens']} tokens): "
                  f"old {got['old']} {c['old'][1]} rollouts {c['old'][2]} tokens; "
                  f"new {got['new']} {c['new'][1]} rollouts {c['new'][2]} tokens", flush=True)

        if workers == 1:
            for job in jobs:
                tally(search_both(pair, job[0], job[1], Item.from_dict(job[2]), job[3], job[4]))
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, _init, (lm.name, threads, baseline, top_k, max_positions, old_cap_s,
                                           lm.device, until)) as pool:
                for out in pool.imap_unordered(_task, jobs, chunksize=1):
                    tally(out)
        rows += summary_rows(run.benchmark, outs, len(fails), old_cap_s, time.perf_counter() - started)
    cap = f"old capped at {old_cap_s:g} s per failure (its time: a lower bound), " if old_cap_s else ""
    cap += f"everything stopped {deadline_s:g} s after the start, " if deadline_s else ""
    sample = f"one failure in {every} (positions 1, {every + 1}, {2 * every + 1}, ...), " if every > 1 else ""
    procs = f"{workers} processes x {threads} torch thread(s), " if workers > 1 else f"torch threads {threads}, "
    device = torch.cuda.get_device_name(0) if str(lm.device).startswith("cuda") else str(lm.device)
    table(f"Pair search, baseline {baseline!r} (old) vs the default search (new): same failures"
          f"{f' (stored pair {status})' if status else ''}, same run; {sample}{cap}{procs}{device}, top-k {top_k}, "
          f"max-positions {max_positions}",
          ["benchmark", "search", "failures", "s/failure", "rollouts/failure", "tokens/failure", "statuses"], rows)


def summary_rows(benchmark: str, outs: list[dict[str, Any]], asked: int, old_cap_s: float | None,
                 wall: float) -> list[list[Any]]:
    """The table's three rows for one benchmark. Means and the ratio are over the failures the new search finished
    (a capped or unstarted new search has no result to compare); a capped old search makes the ratio a lower
    bound, and its rollouts and tokens unknown."""
    # the ratio is over failures both searches started and the new one finished (an old search never started
    # would count as 0 s)
    done = [o for o in outs if o["got"]["new"][0] not in ("capped", "not started")
            and o["got"]["old"][0] != "not started"]
    cost = {w: [sum(o["cost"][w][j] for o in done) for j in range(3)] for w in ("old", "new")}
    count = {w: Counter(o["got"][w][0] for o in outs) for w in ("old", "new")}
    capped = sum(o["got"]["old"][0] in ("capped", "not started") for o in done)
    finished = [o for o in done if o["got"]["old"][0] not in ("capped", "not started")]
    # unbounded: the old search also records where a recovery would be, the new one does not search
    same = sum(o["got"]["old"][:3] == o["got"]["new"][:3] or o["got"]["old"][0] == o["got"]["new"][0] == "unbounded"
               for o in finished)
    m = max(1, len(done))
    rows: list[list[Any]] = [[benchmark, w, len(done), cost[w][0] / m, "-" if w == "old" and capped else
                              cost[w][1] / m, "-" if w == "old" and capped else cost[w][2] / m, dict(count[w])]
                             for w in ("old", "new")]
    bound = "≥ " if capped else ""
    # decoding speed, each search's own: a capped old search's tokens so far over its seconds (one token per row-step)
    olds = [o["cost"]["old"] for o in outs  # a capped search's tokens are known only for the old baseline's cache
            if o["got"]["old"][0] != "not started" and (o["got"]["old"][0] != "capped" or o["cost"]["old"][2])]
    news = [o["cost"]["new"] for o in done if o["cost"]["new"][2]]
    rate = {w: sum(c[2] for c in cs) / max(sum(c[0] for c in cs), 1e-9) for w, cs in (("old", olds), ("new", news))}
    rows.append([benchmark, "tokens/s", f"{len(olds)}/{len(news)}", f"{rate['old']:.0f} / {rate['new']:.0f}",
                 "-", "-", f"new/old x{rate['new'] / max(rate['old'], 1e-9):.1f}: decoded tokens per second while "
                 "searching (old: every search run whose tokens are known / new: every finished search that decoded)"])
    rows.append([benchmark, "old/new", len(done), f"{bound}x{cost['old'][0] / max(cost['new'][0], 1e-9):.1f}",
                 "-" if capped else f"x{cost['old'][1] / max(cost['new'][1], 1):.1f}",
                 "-" if capped else f"x{cost['old'][2] / max(cost['new'][2], 1):.1f}",
                 f"same status (and pair) {same}/{len(finished)} finished by both"
                 + (f"; old stopped early on {capped}" + (f" (cap {old_cap_s:g} s)" if old_cap_s else "")
                    if capped else "")
                 + (f"; {len(outs) - len(done)} not finished by the new search (deadline)" if len(done) < len(outs)
                    else "")
                 + (f"; {asked - len(outs)} failures not run" if len(outs) < asked else "")
                 + f"; {wall:.0f} s wall"])
    return rows
