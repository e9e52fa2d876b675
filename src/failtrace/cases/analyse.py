"""The ``analyse`` stage over a results store: every clean pair -> one stored case (resumable, keyed by content).

An *analysis run* (a ``runs`` row with ``stage='analyse'``, its parent the pair run) is identified by the pair run,
the model's content fingerprint and the :class:`CaseSettings`; each case id hashes the same plus the item. So a rerun
with the same settings finds every committed case and does nothing, while other methods, other masking or another
model file at the same path make new ids and never overwrite or mix with the old ones. Each case is committed in
one transaction: a run killed at any moment loses only the case in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from failtrace.cases.build import build_case
from failtrace.cases.record import Case, case_id
from failtrace.cases.settings import CaseSettings
from failtrace.errors import FailtraceError
from failtrace.store.records import run_id_of
from failtrace.store.store import ResultsStore, RunRecord


@dataclass
class AnalyseSummary:
    """What one ``analyse`` call did."""

    analysis_ids: list[str] = field(default_factory=list)
    clean_pairs: int = 0  # clean pairs considered
    skipped: int = 0  # already analysed with these settings and this model
    analysed: int = 0  # cases committed by this call
    alternatives_added: int = 0  # cases analysed before alternatives were recorded, given theirs now
    errors: list[str] = field(default_factory=list)  # pairs that could not be analysed (message per pair)
    categories: dict[str, int] = field(default_factory=dict)
    patterns: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analysis_run_record(pair_run: RunRecord, loaded: Any, fingerprint: str, settings: CaseSettings) -> RunRecord:
    """The ``runs`` row of an analysis; its id hashes the pair run, the model content and the settings."""
    from failtrace.failures.collect import library_versions

    key = {"stage": "analyse", "parent": pair_run.run_id, "model_fingerprint": fingerprint,
           "settings": settings.identity()}
    run_id = run_id_of(key)
    return RunRecord(run_id=run_id, stage="analyse", parent_run_id=pair_run.run_id, benchmark=pair_run.benchmark,
                     model=pair_run.model, model_source=loaded.source, revision=loaded.revision, dtype=loaded.dtype,
                     device=loaded.device, seed=settings.seed, versions=library_versions(),
                     settings={**settings.identity(), "model_fingerprint": fingerprint,
                               "model_info": loaded.describe() if hasattr(loaded, "describe") else {}},
                     data=pair_run.data)


def _select_pair_runs(store: ResultsStore, pair_run_ids: Sequence[str] | None,
                      benchmark: str | None) -> list[RunRecord]:
    return store.select_runs("pairs", pair_run_ids, benchmark, "pair run", f"failtrace pairs --store {store.path}")


def _loader(models: Mapping[str, Any] | None, device: str) -> Callable[[RunRecord], Any]:
    from failtrace.models.loading import load_model

    cache: dict[tuple[str, str | None, str | None], Any] = {}

    def load(run: RunRecord) -> Any:
        if models and run.model in models:
            return models[run.model]
        key = (run.model, run.dtype, run.revision)
        if key not in cache:
            cache[key] = load_model(run.model, dtype=run.dtype or "float32", device=device, revision=run.revision,
                                    progress=False)
        return cache[key]

    return load


@dataclass
class AnalysisJob:
    """One pair run's share of an ``analyse`` call: its analysis run, the model and the clean pairs still to do.

    ``model`` is the loaded model (serial path) or its description (Ray: the workers hold the weights).
    ``backfill`` are pairs whose case is stored but was analysed before top-k alternatives were recorded.
    """

    pair_run: RunRecord
    analysis_run: RunRecord
    collect_run: RunRecord
    model: Any
    fingerprint: str
    todo: list[dict[str, Any]]
    generations: dict[str, dict[str, Any]]
    case_ids: dict[str, str] = field(default_factory=dict)  # item id -> case id
    backfill: list[dict[str, Any]] = field(default_factory=list)


def analysis_jobs(store: ResultsStore, settings: CaseSettings, model_of: Callable[[RunRecord], tuple[Any, str]],
                  summary: AnalyseSummary, *, pair_run_ids: Sequence[str] | None = None,
                  benchmark: str | None = None, limit: int | None = None) -> Iterator[AnalysisJob]:
    """What an ``analyse`` call has to do, pair run by pair run (records each analysis run, counts in ``summary``).

    ``model_of(collect_run)`` gives the model that explains the run's pairs and its content fingerprint. The serial
    and the Ray paths both plan with this, so they make the same analysis runs, case ids and ``--limit`` cuts.
    """
    from failtrace.store.alternatives import done as done_alternatives
    from failtrace.store.cases import current_analyses, done_case_ids
    from failtrace.store.records import now

    remaining = limit
    done = done_case_ids(store)
    current = current_analyses(store)
    have_alts = done_alternatives(store)
    for prun in _select_pair_runs(store, pair_run_ids, benchmark):
        clean = [p for p in store.pairs(prun.run_id) if p["status"] == "clean"]
        summary.clean_pairs += len(clean)
        if not clean or (remaining is not None and remaining <= 0):
            continue
        collect_run = store.get_run(prun.parent_run_id or "")
        if collect_run is None:
            raise FailtraceError(f"pair run {prun.run_id} names collection run {prun.parent_run_id!r}, which is "
                                 f"not in {store.path}")
        model, fingerprint = model_of(collect_run)
        settings.check_mask_token(model)
        arun = analysis_run_record(prun, model, fingerprint, settings)
        store.ensure_run(arun)
        summary.analysis_ids.append(arun.run_id)
        ident = settings.identity()
        ids = {p["item_id"]: case_id(prun.run_id, p["item_id"], fingerprint, ident) for p in clean}
        todo = [p for p in clean if ids[p["item_id"]] not in done]
        if not todo and current.get(prun.run_id) not in (None, arun.run_id):
            # an older analysis run again, with nothing left to do: it becomes the one status, show, the report and
            # the explorer use (with work to do, its first new case does that: see store.cases.ANALYSES_SQL)
            store.set_run_setting(arun.run_id, "current_since", now().isoformat(sep=" "))
        summary.skipped += len(clean) - len(todo)
        backfill = [p for p in clean if ids[p["item_id"]] in done and ids[p["item_id"]] not in have_alts]
        if remaining is not None:
            todo = todo[:remaining]
            remaining -= len(todo)
        if todo or backfill:
            generations = {g["item_id"]: g for g in store.results(collect_run.run_id)}
            yield AnalysisJob(prun, arun, collect_run, model, fingerprint, todo, generations, ids, backfill)


def commit_case(store: ResultsStore, case: Case, summary: AnalyseSummary,
                on_case: Callable[[Case], None] | None) -> None:
    """Write one case (insert-once by case id, one transaction) and count it: the single write of both paths."""
    from failtrace.store.cases import write_case

    if write_case(store, case):
        summary.analysed += 1
        cat, pat = str(case.category), str(case.pattern)
        summary.categories[cat] = summary.categories.get(cat, 0) + 1
        summary.patterns[pat] = summary.patterns.get(pat, 0) + 1
    if on_case is not None:
        on_case(case)


def _build_and_write(store: ResultsStore, job: AnalysisJob, settings: CaseSettings, summary: AnalyseSummary,
                     progress: bool, on_case: Callable[[Case], None] | None) -> None:
    """Build each pair's case and commit it on its own (one transaction per case), with a progress bar."""
    from failtrace.progress import progress_bar

    prun = job.pair_run
    bar = progress_bar(progress, f"analyse {prun.benchmark} ({prun.model})", len(job.todo))
    try:
        for pair in job.todo:
            try:
                item = store.get_item(prun.benchmark, pair["item_id"])
                case = build_case(job.model, pair, item, job.generations[pair["item_id"]], settings,
                                  fingerprint=job.fingerprint, analysis_id=job.analysis_run.run_id)
            except FailtraceError as exc:
                summary.errors.append(f"{pair['item_id']}: {exc}")
                bar.advance()
                continue
            commit_case(store, case, summary, on_case)
            bar.advance()
    finally:
        bar.close()


def _backfill_alternatives(store: ResultsStore, loaded: Any, pairs: list[dict[str, Any]], ids: dict[str, str],
                           generations: dict[str, dict[str, Any]]) -> int:
    """Record the top-k alternatives of stored cases that lack them (one forward pass each; nothing else changes)."""
    from failtrace.cases.alternatives import alternatives, next_logits
    from failtrace.cases.build import context_of
    from failtrace.store.alternatives import insert

    added = 0
    for pair in pairs:
        context = context_of(pair, generations[pair["item_id"]])
        logits = next_logits(loaded.model, context)
        rec = alternatives(loaded.tokenizer, logits, int(pair["target_id"]), int(pair["contrast_id"]))
        with store._transaction():
            added += insert(store.con, ids[pair["item_id"]], rec)
    return added


def analyse(
    store: ResultsStore,
    settings: CaseSettings | None = None,
    *,
    models: Mapping[str, Any] | None = None,
    pair_run_ids: Sequence[str] | None = None,
    benchmark: str | None = None,
    limit: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    on_case: Callable[[Case], None] | None = None,
) -> AnalyseSummary:
    """Build and commit a case for every clean pair not yet analysed with these settings and this model.

    ``models`` maps a run's model name to an already loaded model (otherwise it is loaded like ``pairs`` does).
    ``limit`` caps the cases built by this call. Pairs that cannot be analysed are listed in ``errors``.
    """
    from failtrace.models.fingerprint import model_fingerprint

    settings = (settings or CaseSettings()).validate()
    if limit is not None and limit < 1:
        raise FailtraceError(f"--limit must be at least 1, got {limit}")
    t0 = time.perf_counter()
    summary = AnalyseSummary()
    load = _loader(models, device)

    def model_of(run: RunRecord) -> tuple[Any, str]:
        loaded = load(run)
        return loaded, model_fingerprint(loaded)

    for job in analysis_jobs(store, settings, model_of, summary, pair_run_ids=pair_run_ids, benchmark=benchmark,
                             limit=limit):
        summary.alternatives_added += _backfill_alternatives(store, job.model, job.backfill, job.case_ids,
                                                             job.generations)
        if job.todo:
            _build_and_write(store, job, settings, summary, progress, on_case)
    summary.seconds = time.perf_counter() - t0
    return summary
