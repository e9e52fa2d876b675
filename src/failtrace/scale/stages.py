"""``collect`` and ``pairs`` on a pool of Ray workers, with this process as the single writer of the store.

The driver does what the serial stage does before and after the per-item work (run record, items, what is already
done, one transaction per committed result, keyed by (run, item) and written with the store's insert-once writes),
and the workers do the per-item work (:mod:`failtrace.scale.work`). A record does not depend on which worker made
it nor on the order results arrive, so the store holds the serial run's rows (timings aside). Killing the driver
loses only uncommitted work: a rerun finds the same run id and does the items that have no row yet.

An item whose worker died ``max_attempts`` times is committed as errored with the reason: for collect an
``unverifiable`` verdict (empty completion, finish reason ``error``), for pairs the ``unverifiable`` pair status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from failtrace.benchmarks.base import Benchmark, Item, Verdict
from failtrace.errors import FailtraceError
from failtrace.failures.collect import CollectSummary, _progress, collect_run_record, resolve_benchmark
from failtrace.failures.pairs import PairResult, PairSettings, PairsSummary, collection_runs, pair_run_record
from failtrace.scale.pool import Task, WorkerPool, ensure_ray, require_ray
from failtrace.scale.work import ModelSpec
from failtrace.store.store import GenerationRecord, ResultsStore

FINISH_ERROR = "error"  # finish reason of a collect item whose workers kept dying: nothing was generated


def _provenance(pool: WorkerPool, address: str | None) -> dict[str, Any]:
    ray = require_ray()
    return {"backend": "ray", "ray": ray.__version__, "address": address or "local", "workers": len(pool.actors),
            "max_attempts": pool.max_attempts, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "worker_info": pool.provenance}


def _died(task: Task) -> str:
    return (f"the Ray worker died on this item {len(task.errors)} time(s), so it was given up "
            f"(last: {task.errors[-1]})")


def collect_on_ray(store: ResultsStore, benchmark: Benchmark, items: Sequence[Item], spec: ModelSpec, workers: int,
                   *, max_new_tokens: int | None = None, thinking: bool = False, seed: int = 0,
                   data: str | None = None, address: str | None = None, max_attempts: int = 3,
                   progress: bool = True, pool: WorkerPool | None = None,
                   on_item: Callable[[Item, GenerationRecord, Verdict], None] | None = None) -> CollectSummary:
    """:func:`failtrace.failures.collect.collect` (with ``batch_size=1``) over ``workers`` Ray actors.

    ``pool`` reuses running workers (tests); otherwise a pool is started (and a local Ray cluster unless connected
    or ``address`` is given) and stopped at the end.
    """
    budget = int(max_new_tokens if max_new_tokens is not None else benchmark.max_new_tokens)
    if budget < 1:
        raise FailtraceError(f"--max-new-tokens must be at least 1, got {budget}")
    t0 = time.perf_counter()
    started = ensure_ray(workers, address) if pool is None else False
    own = pool is None
    try:
        pool = pool or WorkerPool(spec, workers, max_attempts=max_attempts)
        run = collect_run_record(pool.model, benchmark.name, budget, thinking, seed, data, batch_size=1)
        store.ensure_run(run)
        store.add_items(run.run_id, benchmark.name, list(items))
        done = store.done_item_ids(run.run_id)
        todo = [it for it in items if it.id not in done]
        summary = CollectSummary(run_id=run.run_id, items=len(items), skipped=len(items) - len(todo), generated=0,
                                 passed=0, failed=0, unverifiable=0, seconds=0.0)
        if todo:
            store.append_run_setting(run.run_id, "scale", _provenance(pool, address))
        by_id = {it.id: it for it in todo}
        bench_ref = require_ray().put(benchmark)
        bar = _progress(progress, f"collect {benchmark.name} ({len(pool.actors)} Ray workers)", len(todo))

        def commit(item: Item, gen: GenerationRecord, verdict: Verdict, seconds: float) -> None:
            if store.write_result(run.run_id, item, gen, verdict, seconds):
                summary.count(verdict.status)
            if on_item is not None:
                on_item(item, gen, verdict)
            bar.advance()

        def on_result(task: Task, rec: dict[str, Any]) -> None:
            commit(by_id[task.key], GenerationRecord.from_dict(rec["generation"]),
                   Verdict.from_dict(rec["verdict"]), float(rec["check_seconds"]))

        def on_error(task: Task) -> None:
            gen = GenerationRecord(prompt_ids=[], token_ids=[], completion="", finish_reason=FINISH_ERROR)
            commit(by_id[task.key], gen, Verdict("unverifiable", [_died(task)], {"worker_errors": task.errors}), 0.0)

        try:
            pool.run([Task(it.id, "collect", (bench_ref, it, budget, thinking)) for it in todo], on_result, on_error,
                     max_attempts)
        finally:
            bar.close()
    finally:
        if own and pool is not None:
            pool.close()
        if started:
            require_ray().shutdown()
    summary.seconds = time.perf_counter() - t0
    return summary


def pairs_on_ray(store: ResultsStore, settings: PairSettings | None, workers: int, *, helper: str | None = None,
                 benchmarks: Mapping[str, Benchmark] | None = None, run_ids: Sequence[str] | None = None,
                 benchmark: str | None = None, limit: int | None = None, device: str = "cpu",
                 address: str | None = None, max_attempts: int = 3, progress: bool = True,
                 pool: WorkerPool | None = None,
                 on_pair: Callable[[str, PairResult], None] | None = None) -> PairsSummary:
    """:func:`failtrace.failures.pairs.find_pairs` over ``workers`` Ray actors (one pool per run's model)."""
    settings = settings or PairSettings()
    settings.validate()
    if limit is not None and limit < 1:
        raise FailtraceError(f"--limit must be at least 1, got {limit}")
    t0 = time.perf_counter()
    runs = collection_runs(store, run_ids, benchmark)
    summary = PairsSummary()
    started = ensure_ray(workers, address) if pool is None else False
    pools: dict[ModelSpec, WorkerPool] = {}
    remaining = limit
    try:
        for run in runs:
            if remaining is not None and remaining <= 0:
                break
            failures = store.results(run.run_id, status="fail")
            if not failures:
                continue
            spec = ModelSpec(run.model, run.dtype or "float32", device, run.revision, helper)
            run_pool = pool or pools.get(spec) or pools.setdefault(spec, WorkerPool(spec, workers,
                                                                                    max_attempts=max_attempts))
            todo = _pairs_of_run(store, run, failures, run_pool, settings, summary, remaining, address)
            bench = resolve_benchmark(run.benchmark, benchmarks)
            budget = int(run.settings.get("max_new_tokens") or bench.max_new_tokens)
            _pair_rows(store, run, todo, run_pool, settings, bench, budget, summary, progress, on_pair, max_attempts)
            if remaining is not None:
                remaining -= len(todo)
    finally:
        for p in pools.values():
            p.close()
        if started:
            require_ray().shutdown()
    summary.seconds = time.perf_counter() - t0
    return summary


def _pairs_of_run(store: ResultsStore, run: Any, failures: list[dict[str, Any]], pool: WorkerPool,
                  settings: PairSettings, summary: PairsSummary, remaining: int | None,
                  address: str | None) -> list[dict[str, Any]]:
    """Record the pair run (as the serial stage does) and return the failures it still has to do."""
    prun = pair_run_record(run, pool.model, settings, pool.helper)
    store.ensure_run(prun)
    summary.pair_run_ids.append(prun.run_id)
    done_ids = store.done_pair_ids(prun.run_id)
    todo = [f for f in failures if f["item_id"] not in done_ids]
    summary.failures += len(failures)
    summary.skipped += len(failures) - len(todo)
    todo = todo if remaining is None else todo[:remaining]
    if todo:
        store.append_run_setting(prun.run_id, "scale", _provenance(pool, address))
    for row in todo:
        row["pair_run_id"] = prun.run_id
    return todo


def _pair_rows(store: ResultsStore, run: Any, todo: list[dict[str, Any]], pool: WorkerPool, settings: PairSettings,
               bench: Benchmark, budget: int, summary: PairsSummary, progress: bool,
               on_pair: Callable[[str, PairResult], None] | None, max_attempts: int) -> None:
    """Send every failure of ``todo`` to the pool; commit each pair as it arrives."""
    rows = {r["item_id"]: r for r in todo}
    bench_ref = require_ray().put(bench)
    bar = _progress(progress, f"pairs {run.benchmark} ({run.model}, {len(pool.actors)} Ray workers)", len(todo))

    def commit(item_id: str, result: PairResult) -> None:
        row = rows[item_id]
        if store.write_pair(row["pair_run_id"], run.run_id, item_id, run.benchmark, result.to_dict()):
            summary.processed += 1
            summary.statuses[result.status] = summary.statuses.get(result.status, 0) + 1
            summary.rollouts += result.rollouts
            if hasattr(summary, "tokens_decoded"):  # the pairs stage's newer summary counts decoded tokens
                summary.tokens_decoded += int(getattr(result, "tokens_decoded", 0) or 0)
        if on_pair is not None:
            on_pair(item_id, result)
        bar.advance()

    def on_error(task: Task) -> None:
        row = rows[task.key]
        commit(task.key, PairResult(status="unverifiable", reason=_died(task), prompt_tokens=len(row["prompt_ids"]),
                                    completion_tokens=len(row["token_ids"]),
                                    hit_length_limit=row["finish_reason"] == "length"))

    tasks = []
    for row in todo:
        item = store.get_item(run.benchmark, row["item_id"])
        slim = {"prompt_ids": row["prompt_ids"], "token_ids": row["token_ids"], "finish_reason": row["finish_reason"]}
        tasks.append(Task(item.id, "pair", (bench_ref, settings, item, slim, budget)))
    try:
        pool.run(tasks, lambda task, rec: commit(task.key, PairResult.from_dict(rec)), on_error, max_attempts)
    finally:
        bar.close()
