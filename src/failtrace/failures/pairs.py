"""The ``pairs`` stage: run the pair search (:mod:`failtrace.failures.search`) on every failure of a results store.

The search itself, its in-order semantics and its cost cuts are described in :mod:`failtrace.failures.search`;
early stopping and final-prefix rules in :mod:`failtrace.failures.prefix_rules`, the position order in
:mod:`failtrace.failures.order`, the optional judge hint in :mod:`failtrace.failures.judge`; docs/PAIRS.md has the
measurements.

Statuses: every failure ends with exactly one, decided in this order:

``unverifiable``
    the stored completion is no longer judged ``fail`` by the checker.
``unbounded``
    the completion hit the ``max_new_tokens`` limit (finish reason ``length``) and was not resolved by a larger
    rollout budget: the failure may be an artefact of the budget. The search still runs (unless switched off) and
    any target/contrast found is recorded for reference (also when some rollouts were unverifiable).
``unverifiable``
    a rollout that could have been the answer (checked before the decision) was ``unverifiable``: the first
    recovering position is then unknown.
``clean``
    a recovering contrast was found and ``Δℓ > min_delta``.
``weak_preference``
    a recovering contrast was found but ``Δℓ ≤ min_delta``: the model barely preferred its token.
``no_contrast``
    a stronger sibling was given and neither the model's nor the sibling's top-k recovers at any walked position.
``no_target``
    no sibling was given and no alternative in the model's own top-k recovers at any walked position.

Cost bound: at most ``W · k`` rollouts (``2·W·k`` with a sibling) plus those of the last block batched past the
answer, each at most ``rollout_tokens - p`` tokens. ``rollouts`` counts sequences decoded; ``checks`` counts
checker calls (rollouts are checked in order and checking stops at the first pass; rollouts stopped early by a
prefix rule need no check).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from failtrace.benchmarks.base import Benchmark, Item
from failtrace.errors import FailtraceError
from failtrace.failures.collect import library_versions, resolve_benchmark
from failtrace.failures.pair_types import PairResult, PairSettings, same_tokenizer, visible
from failtrace.failures.search import PairFinder
from failtrace.progress import progress_bar
from failtrace.store.records import run_id_of
from failtrace.store.schema import PAIR_STATUS_TEXT
from failtrace.store.store import ResultsStore, RunRecord

__all__ = ["PairFinder", "PairResult", "PairSettings", "PairsSummary", "find_pairs", "pair_run_record",
           "same_tokenizer", "visible"]



@dataclass
class PairsSummary:
    """What one ``pairs`` call did."""

    pair_run_ids: list[str] = field(default_factory=list)
    failures: int = 0  # failures considered by this call
    skipped: int = 0  # already paired by an earlier call
    processed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rollouts: int = 0
    tokens_decoded: int = 0
    seconds: float = 0.0
    cut_open: int = 0  # failures paired now without a clean pair that left rollouts cut with the verdict open

    def add(self, result: PairResult) -> None:
        """Count one pair written now (here and on Ray workers alike)."""
        self.processed += 1
        self.statuses[result.status] = self.statuses.get(result.status, 0) + 1
        self.rollouts += result.rollouts
        self.tokens_decoded += result.tokens_decoded
        self.cut_open += result.status != "clean" and result.rollouts_cut_open > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pair_run_id(collect_run: RunRecord, settings: PairSettings, helper_key: dict[str, Any] | None = None) -> str:
    """The pair run's id: the collection run, the search settings and the helper model (none: no model is needed,
    so a driver can see what is already done before it loads anything)."""
    budget = collect_run.settings.get("max_new_tokens")
    return run_id_of({"stage": "pairs", "parent": collect_run.run_id, "helper": helper_key,
                      **settings.identity(budget)})


def all_paired(store: ResultsStore, run: RunRecord, failures: list[dict[str, Any]], settings: PairSettings,
               summary: PairsSummary) -> bool:
    """Whether every failure of ``run`` already has its pair in the pair run these settings make, with no helper
    (then its id needs no model); if so they are counted as skipped, and the run needs no model loaded at all (a
    rerun on a finished store loaded it: 12.7 s with ``--workers``)."""
    run_id = pair_run_id(run, settings)
    done_ids = store.done_pair_ids(run_id)
    if any(f["item_id"] not in done_ids for f in failures):
        return False
    _tally(run_id, done_ids, failures, summary, None)  # every one skipped
    return True


def _tally(run_id: str, done_ids: set[str], failures: list[dict[str, Any]], summary: PairsSummary,
           remaining: int | None) -> list[dict[str, Any]]:
    """Count pair run ``run_id`` into ``summary`` (its id, the failures it covers, those paired before it,
    ``done_ids``: skipped) and return the failures it still has to do, at most ``remaining``."""
    todo = [f for f in failures if f["item_id"] not in done_ids]
    summary.pair_run_ids.append(run_id)
    summary.failures += len(failures)
    summary.skipped += len(failures) - len(todo)
    return todo if remaining is None else todo[:remaining]


def open_pair_run(store: ResultsStore, prun: RunRecord, failures: list[dict[str, Any]], summary: PairsSummary,
                  remaining: int | None) -> list[dict[str, Any]]:
    """Record pair run ``prun`` (or find it stored), count it into ``summary`` and return the failures it still has
    to do, at most ``remaining``; a resumed run notes this call's speed settings (:func:`note_resumed_speed`). The
    serial stage and the Ray stage both open their runs here."""
    new_run = store.ensure_run(prun)
    todo = _tally(prun.run_id, store.done_pair_ids(prun.run_id), failures, summary, remaining)
    if todo and not new_run:
        note_resumed_speed(store, prun, len(todo))
    return todo


def pair_run_record(collect_run: RunRecord, loaded: Any, settings: PairSettings, helper: Any | None,
                    judge_name: str | None = None) -> RunRecord:
    """The record of a pair-finding run over ``collect_run``; its id hashes the run and the search settings (not the
    speed-only ones: batching, early stopping, the order and a judge are recorded but leave the id unchanged)."""
    helper_key = None if helper is None else {"model": helper.name, "source": helper.source,
                                              "revision": helper.revision, "dtype": helper.dtype}
    budget = collect_run.settings.get("max_new_tokens")
    run_id = pair_run_id(collect_run, settings, helper_key)
    settings_d = {**settings.identity(budget), "rollout_batch_size": settings.rollout_batch_size,
                  "rollout_tokens": settings.rollout_tokens or budget, "early_stop": settings.early_stop,
                  "position_batch": settings.position_batch, "order": settings.order,
                  "draft_tokens": settings.draft_tokens,
                  "judge_model": judge_name,
                  "helper_model": None if helper is None else helper.name,
                  "helper_info": None if helper is None else helper.describe(),
                  "model_info": loaded.describe() if hasattr(loaded, "describe") else {},
                  "max_new_tokens": budget}
    return RunRecord(run_id=run_id, stage="pairs", parent_run_id=collect_run.run_id,
                     benchmark=collect_run.benchmark, model=collect_run.model, model_source=loaded.source,
                     revision=loaded.revision, dtype=loaded.dtype, device=loaded.device, seed=collect_run.seed,
                     versions=library_versions(), settings=settings_d, data=collect_run.data)


SPEED_KEYS = ("rollout_batch_size", "early_stop", "position_batch", "order", "draft_tokens", "judge_model")


def note_resumed_speed(store: ResultsStore, prun: RunRecord, todo: int) -> None:
    """A resumed pair run keeps the settings it was created with; a call that goes on with other speed-only
    settings (which never change a pair, so the run id is the same) is recorded in ``settings["resumed_with"]``,
    so the stored settings never claim one batching, order or judge for failures searched with another."""
    first = getattr(store.get_run(prun.run_id), "settings", None) or {}
    now = {k: prun.settings.get(k) for k in SPEED_KEYS}
    differs = [k for k in SPEED_KEYS if first.get(k) != now[k]]
    if differs:
        store.append_run_setting(prun.run_id, "resumed_with", {**now, "failures": todo, "changed": differs})


def checked_settings(settings: PairSettings | None, limit: int | None) -> PairSettings:
    """The pairs stage's settings (defaults when None), validated with ``--limit``, before any model is loaded."""
    settings = settings or PairSettings()
    settings.validate()
    if limit is not None and limit < 1:
        raise FailtraceError(f"--limit must be at least 1, got {limit}")
    return settings


def collection_runs(store: ResultsStore, run_ids: Sequence[str] | None = None, benchmark: str | None = None,
                    settings: PairSettings | None = None) -> list[RunRecord]:
    """The collection runs the pairs stage works on (all, or those named / of one benchmark); none is an error, and
    so is a rollout budget below a run's collection budget: a recovery would be judged on shorter text than the
    failure was (a rollout cut early can pass a rule the failure broke later), so it could not be compared."""
    runs = store.select_runs("collect", run_ids, benchmark, "collection run", "failtrace collect")
    for run in runs:
        made = run.settings.get("max_new_tokens")
        if settings is not None and settings.rollout_tokens is not None and made and settings.rollout_tokens < made:
            raise FailtraceError(f"--rollout-tokens {settings.rollout_tokens} is below the {made} tokens collection "
                                 f"run {run.run_id} generated with; give at least {made} (the default)")
    return runs


def run_failures(store: ResultsStore, runs: Sequence[RunRecord],
                 items: Collection[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The failed rows of each selected collection run (run id -> rows in item order), only those of the named
    items when ``items`` is given (``--item``). Every named item must be a failure of one of the runs: one that is
    not is refused here, before any model is loaded (a typo must neither cost a load nor pass as "nothing to do")."""
    rows = {run.run_id: store.results(run.run_id, status="fail") for run in runs}
    if not items:
        return rows
    failed = list(dict.fromkeys(r["item_id"] for run_rows in rows.values() for r in run_rows))  # store order
    known = {f.strip() for f in failed}  # a stored id is matched without surrounding spaces, as --item is read
    missing = [i for i in items if i.strip() not in known]
    if missing:
        shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        raise FailtraceError(f"--item {missing[0]!r} is not a failed item of the selected collection runs "
                             f"({len(failed)} failed: {shown or 'none'})")
    wanted = {i.strip() for i in items}
    return {run_id: [r for r in run_rows if r["item_id"].strip() in wanted] for run_id, run_rows in rows.items()}


def pair_one(finder: PairFinder, bench: Benchmark, item: Item, row: Mapping[str, Any], budget: int) -> PairResult:
    """The per-item work of the stage: the pair search on one stored failure (``row`` from ``store.results``)."""
    return finder.find(bench, item, row["prompt_ids"], row["token_ids"], budget, row["finish_reason"])


def _run_model(run: RunRecord, models: Mapping[str, Any] | None, cache: dict[tuple[Any, ...], Any],
               device: str) -> Any:
    """The loaded model of a collection run: given by the caller, or loaded once with the run's dtype/revision."""
    from failtrace.models.loading import load_model

    if models and run.model in models:
        return models[run.model]
    key = (run.model, run.dtype, run.revision)
    if key not in cache:
        cache[key] = load_model(run.model, dtype=run.dtype or "float32", device=device, revision=run.revision)
    return cache[key]


def _judge(judge: Any | None, run: RunRecord, loaded: Any, models: Mapping[str, Any] | None,
           cache: dict[tuple[Any, ...], Any], device: str) -> Any | None:
    """A :class:`PositionJudge` for ``--judge`` (a name/path, loaded once; the run's own model is reused)."""
    from failtrace.failures.judge import PositionJudge

    if judge is None or isinstance(judge, PositionJudge):
        return judge
    if not isinstance(judge, str):
        return PositionJudge(judge)
    if judge == run.model:
        return PositionJudge(loaded)
    if models and judge in models:
        return PositionJudge(models[judge])
    key = ("judge", judge, run.dtype)
    if key not in cache:
        from failtrace.models.loading import load_model

        cache[key] = PositionJudge(load_model(judge, dtype=run.dtype or "float32", device=device))
    return cache[key]


def find_pairs(
    store: ResultsStore,
    settings: PairSettings | None = None,
    *,
    helper: Any | None = None,
    judge: Any | None = None,
    models: Mapping[str, Any] | None = None,
    benchmarks: Mapping[str, Benchmark] | None = None,
    run_ids: Sequence[str] | None = None,
    benchmark: str | None = None,
    limit: int | None = None,
    items: Collection[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    on_pair: Callable[[str, PairResult], None] | None = None,
) -> PairsSummary:
    """Run the pair search on every failed item of the store's collection runs that has no pair record yet.

    ``helper`` (``--sibling``) is a model name/path (loaded like ``--model``) or a loaded model; so is ``judge``
    (``--judge``, a model asked which position to roll out first; speed only). ``models`` maps a run's model name
    to an already loaded model (otherwise it is loaded with the run's dtype and revision); ``benchmarks`` maps
    benchmark names to objects (otherwise the registry is asked). ``run_ids``/``benchmark`` select runs, ``items``
    failures of them by item id (``--item``); ``limit`` caps the failures processed by this call. Each pair is
    committed on its own, so the stage resumes after a crash.
    """
    from failtrace.models.loading import load_model

    settings = checked_settings(settings, limit)
    t0 = time.perf_counter()
    runs = collection_runs(store, run_ids, benchmark, settings)
    failures_of = run_failures(store, runs, items)
    summary = PairsSummary()
    loaded_cache: dict[tuple[Any, ...], Any] = {}
    helper_loaded = helper
    if isinstance(helper, str):
        helper_loaded = None  # loaded below with the first run's dtype
    remaining = limit
    for run in runs:
        if remaining is not None and remaining <= 0:
            break
        failures = failures_of[run.run_id]
        if not failures:
            continue
        bench = resolve_benchmark(run.benchmark, benchmarks, run.settings.get("checker"))  # first: an unknown
        # benchmark records no pair run
        if helper is None and all_paired(store, run, failures, settings, summary):
            continue
        loaded = _run_model(run, models, loaded_cache, device)
        if isinstance(helper, str) and helper_loaded is None:
            helper_loaded = load_model(helper, dtype=run.dtype or "float32", device=device)
        judge_obj = _judge(judge, run, loaded, models, loaded_cache, device)
        finder = PairFinder(loaded, settings, helper_loaded, judge_obj)
        prun = pair_run_record(run, loaded, settings, helper_loaded, None if judge_obj is None else judge_obj.name)
        todo = open_pair_run(store, prun, failures, summary, remaining)
        budget = int(run.settings.get("max_new_tokens") or bench.max_new_tokens)
        bar = progress_bar(progress, f"pairs {run.benchmark} ({run.model})", len(todo))
        try:
            for row in todo:
                item = store.get_item(run.benchmark, row["item_id"])
                finder.on_block = lambda res, item_id=item.id: bar.status(  # a failure can take minutes: said
                    f"{item_id}: {res.rollouts} rollouts, {res.tokens_decoded} tokens so far")
                result = pair_one(finder, bench, item, row, budget)
                if store.write_pair(prun.run_id, run.run_id, item.id, run.benchmark, result.to_dict()):
                    summary.add(result)
                if on_pair is not None:
                    on_pair(item.id, result)
                bar.advance(note=f"{item.id}: {PAIR_STATUS_TEXT[result.status][0]}")
                if remaining is not None:
                    remaining -= 1
        finally:
            bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary
