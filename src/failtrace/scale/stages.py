"""``collect``, ``pairs`` and ``analyse`` on a pool of Ray workers, with this process as the single writer of the store.

The driver does what the serial stage does before and after the per-item work (run record, items, what is already
done, one transaction per committed result, keyed by (run, item) and written with the store's insert-once writes),
and the workers do the per-item work (:mod:`failtrace.scale.work`). A record does not depend on which worker made
it nor on the order results arrive, so the store holds the serial run's rows (timings aside). Killing the driver
loses only uncommitted work: a rerun finds the same run id and does the items that have no row yet.

An item whose worker died ``max_attempts`` times is committed as errored with the reason: for collect an
``unverifiable`` verdict (empty completion, finish reason ``error``), for pairs the ``unverifiable`` pair status, for
analyse a line in the summary's errors and in the analysis run's ``settings["worker_errors"]`` (no case is stored,
so a rerun tries it again, as the serial stage does with a pair it could not analyse).

The three stages share one cluster/pool lifetime (:func:`_cluster`) and one per-item driver loop (:func:`_drive`);
each stage only says how to make its tasks and how to commit a result or a given-up item.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from failtrace.benchmarks.base import Benchmark, Item, Verdict
from failtrace.cases.analyse import AnalyseSummary, AnalysisJob, analysis_jobs, commit_case
from failtrace.cases.record import Case
from failtrace.cases.settings import CaseSettings
from failtrace.errors import FailtraceError
from failtrace.failures.collect import CollectSummary, open_run, resolve_benchmark, run_budget
from failtrace.failures.pair_types import check_rollout_window
from failtrace.failures.pairs import (
    PairResult,
    PairSettings,
    PairsSummary,
    checked_settings,
    collection_runs,
    all_paired,
    open_pair_run,
    pair_run_record,
    run_failures,
)
from failtrace.progress import progress_bar
from failtrace.scale.pool import (Task, WorkerPool, check_reachable, cpus_per_worker, ensure_ray, require_ray,
                                 shutdown_ray)
from failtrace.scale.work import WorkerModel
from failtrace.store.records import FINISH_CUT
from failtrace.store.store import GenerationRecord, ResultsStore, RunRecord

FINISH_ERROR = "error"  # finish reason of a collect item whose workers kept dying: nothing was generated


def _provenance(pool: WorkerPool, address: str | None) -> dict[str, Any]:
    ray = require_ray()
    return {"backend": "ray", "ray": ray.__version__, "address": address or "local", "workers": len(pool.actors),
            "max_attempts": pool.max_attempts, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "worker_info": pool.provenance}


def _died(task: Task) -> str:
    return (f"the Ray worker died on this item {len(task.errors)} time(s), so it was given up "
            f"(last: {task.errors[-1]})")


@contextlib.contextmanager
def _cluster(workers: int, address: str | None, pool: WorkerPool | None,
             max_attempts: int) -> Iterator[Callable[[WorkerModel], WorkerPool]]:
    """Yield ``pool_for(spec)``: the given ``pool``, or one started per model spec; stop what was started here.

    Without ``pool`` a local Ray cluster is started at the first ``pool_for`` (unless this process is connected or
    ``address`` is given), so a call with nothing to do starts none; a bad ``address`` is refused at once all the
    same. The workers of a cluster started here share its cores evenly (:func:`cpus_per_worker`).
    """
    if pool is None and address:
        check_reachable(address)
    started: list[bool] = []  # [whether this call started the cluster], once it is joined or started
    pools: dict[WorkerModel, WorkerPool] = {}

    def pool_for(spec: WorkerModel) -> WorkerPool:
        if pool is not None:
            return pool
        if not started:
            started.append(ensure_ray(workers, address))
        if spec not in pools:
            pools[spec] = WorkerPool(spec, workers, max_attempts=max_attempts,
                                     cpus_per_worker=cpus_per_worker(workers, started[0]))
        return pools[spec]

    try:
        yield pool_for
    finally:
        for p in pools.values():
            p.close()
        if started and started[0]:
            shutdown_ray()


def _drive(pool: WorkerPool, tasks: list[Task], label: str, on_result: Callable[[Task, Any], None],
           on_error: Callable[[Task], None], max_attempts: int, progress: bool) -> None:
    """The per-item driver loop of every stage: run ``tasks``, commit each result (or given-up item) as it arrives."""
    workers = len(pool.actors)
    bar = progress_bar(progress, f"{label} ({workers} Ray worker{'' if workers == 1 else 's'})", len(tasks))

    def ok(task: Task, value: Any) -> None:
        on_result(task, value)
        bar.advance()

    def given_up(task: Task) -> None:
        on_error(task)
        bar.advance()

    try:
        pool.run(tasks, ok, given_up, max_attempts)
    finally:
        bar.close()


def collect_on_ray(store: ResultsStore, benchmark: Benchmark, items: Sequence[Item], spec: WorkerModel, workers: int,
                   *, max_new_tokens: int | None = None, thinking: bool = False, seed: int = 0,
                   data: str | None = None, address: str | None = None, max_attempts: int = 3,
                   progress: bool = True, pool: WorkerPool | None = None,
                   on_item: Callable[[Item, GenerationRecord, Verdict], None] | None = None) -> CollectSummary:
    """:func:`failtrace.failures.collect.collect` (with ``batch_size=1``) over ``workers`` Ray actors.

    ``pool`` reuses running workers (tests); otherwise a pool is started (and a local Ray cluster unless connected
    or ``address`` is given) and stopped at the end.
    """
    budget = run_budget(benchmark, max_new_tokens)  # before any cluster starts
    t0 = time.perf_counter()
    with _cluster(workers, address, pool, max_attempts) as pool_for:
        run_pool = pool_for(spec)
        described = run_pool.model
        run, todo, summary = open_run(store, benchmark, items, described, described.context, described.thinking_mode,
                                      budget, max_new_tokens is not None, thinking=thinking, seed=seed, data=data,
                                      batch_size=1, prepare=lambda todo: run_pool.check_prompts(todo, thinking))
        if todo:
            store.append_run_setting(run.run_id, "scale", _provenance(run_pool, address))
        by_id = {it.id: it for it in todo}
        bench_ref = require_ray().put(benchmark)

        def commit(item: Item, gen: GenerationRecord, verdict: Verdict, seconds: float) -> None:
            if store.write_result(run.run_id, item, gen, verdict, seconds):
                summary.count(verdict.status, gen.finish_reason)
            if on_item is not None:
                on_item(item, gen, verdict)

        def on_result(task: Task, rec: dict[str, Any]) -> None:
            commit(by_id[task.key], GenerationRecord.from_dict(rec["generation"]),
                   Verdict.from_dict(rec["verdict"]), float(rec["check_seconds"]))

        def on_error(task: Task) -> None:
            gen = GenerationRecord(prompt_ids=[], token_ids=[], completion="", finish_reason=FINISH_ERROR)
            commit(by_id[task.key], gen, Verdict("unverifiable", [_died(task)], {"worker_errors": task.errors}), 0.0)

        tasks = [Task(it.id, "collect", (bench_ref, it, budget, thinking)) for it in todo]
        _drive(run_pool, tasks, f"collect {benchmark.name}", on_result, on_error, max_attempts, progress)
    summary.seconds = time.perf_counter() - t0
    return summary


def pairs_on_ray(store: ResultsStore, settings: PairSettings | None, workers: int, *, helper: str | None = None,
                 benchmarks: Mapping[str, Benchmark] | None = None, run_ids: Sequence[str] | None = None,
                 benchmark: str | None = None, limit: int | None = None, items: Collection[str] | None = None,
                 device: str = "cpu", address: str | None = None, max_attempts: int = 3, progress: bool = True,
                 pool: WorkerPool | None = None,
                 on_pair: Callable[[str, PairResult], None] | None = None) -> PairsSummary:
    """:func:`failtrace.failures.pairs.find_pairs` over ``workers`` Ray actors (one pool per run's model)."""
    settings = checked_settings(settings, limit)
    t0 = time.perf_counter()
    runs = collection_runs(store, run_ids, benchmark, settings)
    failures_of = run_failures(store, runs, items)
    summary = PairsSummary()
    remaining = limit
    with _cluster(workers, address, pool, max_attempts) as pool_for:
        for run in runs:
            if remaining is not None and remaining <= 0:
                break
            failures = failures_of[run.run_id]
            if not failures:
                continue
            bench = resolve_benchmark(run.benchmark, benchmarks, run.settings.get("checker"))  # first: an unknown
            # benchmark records no pair run
            if helper is None and all_paired(store, run, failures, settings, summary):
                continue  # no pool for it (none started at all when every run is done)
            run_pool = pool_for(WorkerModel(run.model, run.dtype or "float32", device, run.revision, helper))
            todo = _pairs_of_run(store, run, failures, run_pool, settings, summary, remaining, address)
            budget = int(run.settings.get("max_new_tokens") or bench.max_new_tokens)
            _pair_rows(store, run, todo, run_pool, settings, bench, budget, summary, progress, on_pair, max_attempts)
            if remaining is not None:
                remaining -= len(todo)
    summary.seconds = time.perf_counter() - t0
    return summary


def _pairs_of_run(store: ResultsStore, run: Any, failures: list[dict[str, Any]], pool: WorkerPool,
                  settings: PairSettings, summary: PairsSummary, remaining: int | None,
                  address: str | None) -> list[dict[str, Any]]:
    """Record the pair run (as the serial stage does) and return the failures it still has to do."""
    check_rollout_window(settings, pool.model.name, pool.model.context)  # before the run is recorded, as serially
    prun = pair_run_record(run, pool.model, settings, pool.helper)
    todo = open_pair_run(store, prun, failures, summary, remaining)
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

    def commit(item_id: str, result: PairResult) -> None:
        row = rows[item_id]
        if store.write_pair(row["pair_run_id"], run.run_id, item_id, run.benchmark, result.to_dict()):
            summary.add(result)  # as pairs here counts it, the closing hint's cut rollouts included
        if on_pair is not None:
            on_pair(item_id, result)

    def on_error(task: Task) -> None:
        row = rows[task.key]
        commit(task.key, PairResult(status="unverifiable", reason=_died(task), prompt_tokens=len(row["prompt_ids"]),
                                    completion_tokens=len(row["token_ids"]),
                                    hit_length_limit=row["finish_reason"] in FINISH_CUT))

    tasks = []
    for row in todo:
        item = store.get_item(run.benchmark, row["item_id"])
        slim = {"prompt_ids": row["prompt_ids"], "token_ids": row["token_ids"], "finish_reason": row["finish_reason"]}
        tasks.append(Task(item.id, "pair", (bench_ref, settings, item, slim, budget)))
    _drive(pool, tasks, f"pairs {run.benchmark} ({run.model})", lambda task, rec: commit(task.key,
           PairResult.from_dict(rec)), on_error, max_attempts, progress)


def analyse_on_ray(store: ResultsStore, settings: CaseSettings | None, workers: int, *,
                   pair_run_ids: Sequence[str] | None = None, benchmark: str | None = None, limit: int | None = None,
                   device: str = "cpu", address: str | None = None, max_attempts: int = 3, progress: bool = True,
                   pool: WorkerPool | None = None,
                   on_case: Callable[[Case], None] | None = None) -> AnalyseSummary:
    """:func:`failtrace.cases.analyse.analyse` over ``workers`` Ray actors (one pool per collection run's model).

    The plan (analysis runs, case ids, ``--limit``) is the serial stage's own (:func:`analysis_jobs`), with the
    model's content fingerprint taken from the workers, so the driver never loads weights.
    """
    settings = (settings or CaseSettings()).validate()
    from failtrace.attribution.methods import BUILT_IN_METHODS

    if own := [m for m in settings.methods if m not in BUILT_IN_METHODS]:
        raise FailtraceError(f"{', '.join(own)} {'is' if len(own) == 1 else 'are'} registered in this process only: "
                             f"the --workers processes start fresh and know the built-in methods "
                             f"({', '.join(BUILT_IN_METHODS)}); analyse without --workers")
    if limit is not None and limit < 1:
        raise FailtraceError(f"--limit must be at least 1, got {limit}")
    t0 = time.perf_counter()
    summary = AnalyseSummary()
    with _cluster(workers, address, pool, max_attempts) as pool_for:

        def spec_of(run: RunRecord) -> WorkerModel:
            return WorkerModel(run.model, run.dtype or "float32", device, run.revision)

        def model_of(run: RunRecord) -> tuple[Any, str]:
            run_pool = pool_for(spec_of(run))
            return run_pool.model, run_pool.fingerprint()

        for job in analysis_jobs(store, settings, model_of, summary, pair_run_ids=pair_run_ids, benchmark=benchmark,
                                 limit=limit):
            _analyse_job(store, job, pool_for(spec_of(job.collect_run)), settings, summary, address, max_attempts,
                         progress, on_case)
    summary.seconds = time.perf_counter() - t0
    return summary


def _analyse_job(store: ResultsStore, job: AnalysisJob, pool: WorkerPool, settings: CaseSettings,
                 summary: AnalyseSummary, address: str | None, max_attempts: int, progress: bool,
                 on_case: Callable[[Case], None] | None) -> None:
    """Send the job's pairs to the pool; commit each case as it arrives (the serial stage's write)."""
    prun, arun = job.pair_run, job.analysis_run
    store.append_run_setting(arun.run_id, "scale", _provenance(pool, address))
    tasks = []
    for pair in job.todo:
        try:
            item = store.get_item(prun.benchmark, pair["item_id"])
        except FailtraceError as exc:
            summary.errors.append(f"{pair['item_id']}: {exc}")
            continue
        gen = job.generations[pair["item_id"]]
        slim = {"prompt_ids": gen["prompt_ids"], "token_ids": gen["token_ids"]}
        tasks.append(Task(pair["item_id"], "analyse", (settings, pair, item, slim, job.fingerprint, arun.run_id)))

    def on_result(task: Task, rec: dict[str, Any]) -> None:
        if "error" in rec:
            summary.errors.append(rec["error"])
        else:
            commit_case(store, Case.from_dict(rec["case"]), summary, on_case)

    def on_error(task: Task) -> None:
        summary.errors.append(f"{task.key}: {_died(task)}")
        store.append_run_setting(arun.run_id, "worker_errors", {"item_id": task.key, "errors": task.errors})

    _drive(pool, tasks, f"analyse {prun.benchmark} ({prun.model})", on_result, on_error, max_attempts, progress)
