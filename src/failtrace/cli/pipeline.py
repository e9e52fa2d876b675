"""``failtrace collect | pairs``: the failure pipeline over a results store (``status`` and ``export``: their own
modules).

Every command that writes is resumable: rerunning it skips what is already committed. Bad input raises
:class:`~failtrace.errors.FailtraceError` (one line on stderr, exit code 2).
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Any, Optional

import typer

from failtrace.cli import options as opts
from failtrace.cli.checks import check_store_path
from failtrace.cli.console import console as _console
from failtrace.cli.console import store_errors as _store_errors
from failtrace.errors import FailtraceError
from failtrace.store.store import DEFAULT_STORE

_MAX_PROBLEMS_SHOWN = 20


def _warn_problems(problems: list[str]) -> None:
    """The data loader's per-record problems as warnings (at most :data:`_MAX_PROBLEMS_SHOWN`)."""
    from rich.markup import escape

    err = _console(stderr=True)
    for problem in problems[:_MAX_PROBLEMS_SHOWN]:  # escaped: a problem can quote the data file's own text
        # one line each, however long (as error lines are): wrapped, a warning read as several
        err.print(f"[yellow]warning:[/] {escape(problem)}", markup=True, highlight=False, soft_wrap=True)
    if len(problems) > _MAX_PROBLEMS_SHOWN:
        err.print(f"[yellow]warning:[/] ... and {len(problems) - _MAX_PROBLEMS_SHOWN} more problems", markup=True)


def collect_command(
    benchmark: str = typer.Option(..., "--benchmark", "-b", help="Benchmark: ifeval, math, humaneval, traces or demo."),
    data: str = typer.Option(..., "--data", "-d",
                             help="Local JSON/JSONL/Parquet file, or a hub dataset id; for traces also a raw "
                                  "tau-bench trajectory list (.json) or a SWE-agent .traj file; for demo: builtin."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help=opts.MODEL_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", callback=opts.count(1),
                                        help="Only the first N items of the data."),
    item: Optional[list[str]] = typer.Option(None, "--item", callback=opts.stripped,
                                             help="Only the item of this id (repeatable), e.g. --item HumanEval/10."),
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store (DuckDB file)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", callback=opts.count(1),
                                                 help="Generation budget (default: the benchmark's)."),
    thinking: bool = typer.Option(False, "--thinking", help="Turn the chat template's thinking mode on."),
    ifeval_mode: Optional[str] = typer.Option(
        None, "--ifeval-mode", callback=opts.one_of(("strict", "loose")),
        help="IFEval's verdict: strict (default) or loose (the text without its first or last line, or its "
             "markdown asterisks, may also pass). A loose run is a run of its own; pairs re-checks it loosely."),
    batch_size: int = typer.Option(1, "--batch-size", callback=opts.count(1),
                                   help="Prompts decoded together (left padding). 1 is exact-reproducible."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    seed: int = typer.Option(0, "--seed", callback=opts.count(0, 2**31 - 1),  # the store keeps it as INTEGER
                             help="Seed recorded with the run (decoding is greedy)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    workers: Optional[int] = opts.WORKERS,
    ray_address: Optional[str] = opts.RAY_ADDRESS,
) -> None:
    """Generate greedily on benchmark items, check each answer, store generations and verdicts (resumable)."""
    from failtrace.benchmarks.base import caveats
    from failtrace.failures.collect import resolve_benchmark
    from failtrace.models.checks import check_device
    from failtrace.models.loading import check_dtype

    check_dtype(dtype)
    check_device(device, here=ray_address is None)  # a joined cluster's nodes may have devices this one lacks
    check_store_path(store, create=True)
    opts.check_scale(workers, ray_address, batch_size)
    opts.check_limit_items(limit, item)
    if ifeval_mode is not None and benchmark.strip().lower() != "ifeval":
        raise FailtraceError(f"--ifeval-mode is for --benchmark ifeval, not {benchmark}")
    bench = resolve_benchmark(benchmark, options={"mode": ifeval_mode} if ifeval_mode else None)
    report = bench.load(data, None if item else limit)
    if not item or not report.items:
        _warn_problems(report.problems)
    if not report.items:
        raise FailtraceError(f"no {benchmark} items could be loaded from {data}"
                             f"{' (' + str(len(report.problems)) + ' problems above)' if report.problems else ''}")
    if item:
        try:
            report.items = _chosen_items(report.items, item, data)[:limit]
        except FailtraceError:
            _warn_problems(report.problems)  # a skipped record may be the one asked for: why it is not there
            raise
        if report.problems:  # every chosen item loaded: the skipped records are others
            _console(stderr=True).print(f"note: {len(report.problems)} other record(s) of {data} were skipped "
                                        "(collect without --item lists why)", markup=False, highlight=False,
                                        soft_wrap=True)
    _warn_problems(caveats(bench, report.items))
    if workers is not None:
        summary = _collect_on_ray(bench, report.items, store, model, dtype, device, workers, ray_address,
                                  max_new_tokens, thinking, seed, data, progress)
    else:
        summary = _collect_here(bench, report.items, store, model, dtype, device, max_new_tokens, thinking,
                                batch_size, seed, data, progress)
    typer.echo(
        f"run {summary.run_id}: {summary.items} items, {summary.skipped} already done, "
        f"{summary.generated - summary.not_generated} generated now"
        + (f" and {summary.not_generated} not generated, the prompt filling the model's context window"
           if summary.not_generated else "")
        + f" ({summary.passed} passed, {summary.failed} failed, {summary.unverifiable} unverifiable) in "
        f"{summary.seconds:.1f} s" + opts.on_workers(workers) + f" -> {store}"
    )
    if summary.first_batch_size is not None and summary.generated:
        typer.echo(f"note: run {summary.run_id} began with --batch-size {summary.first_batch_size}; the "
                   f"{summary.generated} items generated now were decoded {batch_size if workers is None else 1} at "
                   f"a time (padded batches of other sizes can differ in a logit's last bits, which can change a "
                   f"greedy token); --batch-size {summary.first_batch_size} continues it as it began", err=True)
    if summary.more_data:
        typer.echo(f"note: run {summary.run_id} was first collected from {summary.more_data}; the items of {data} "
                   "are added to it (the same model and settings make the same run, whatever the data file)",
                   err=True)
    failed = _note_run_limits(store, summary.run_id, summary.not_generated)
    if failed:  # the run's, not only this call's: a rerun of a finished collect points on too
        typer.echo(f"next: failtrace pairs --store {shlex.quote(str(store))} (pins each failure to a token pair)",
                   err=True)


def _chosen_items(items: list[Any], wanted: list[str], data: str) -> list[Any]:
    """The items named by --item, in the data's order; an id the data lacks is an error naming a few it has. An id is
    matched without its surrounding spaces, as --item is read (a data file's ``" padded "`` is ``--item padded``)."""
    by_id = {it.id.strip(): it for it in items}
    missing = [w for w in dict.fromkeys(wanted) if w not in by_id]
    if missing:
        some = ", ".join(repr(it.id) for it in items[:3])
        raise FailtraceError(f"no item {missing[0]!r} in {data}" + (f" (and {len(missing) - 1} more ids)"
                                                                    if len(missing) > 1 else "")
                             + f"; its ids are like {some}")
    chosen = set(wanted)
    return [it for it in items if it.id.strip() in chosen]


def _note_run_limits(store: Path, run_id: str, said: int = 0) -> int:
    """Say when items met a limit: a prompt that fills the context window (not generated), passes or failures that
    stopped at the token budget. A cut pass was judged on a cut answer. The pair search cannot tell whether a cut
    failure would have failed had it finished, so it stays ``unbounded`` (never a clean pair) unless its text already
    fixes the verdict or a larger rollout budget settles it; a small --max-new-tokens can leave most of a run
    undecidable, and nothing else would say so before ``pairs``. ``said``: the not-generated items this call's
    summary line named (the note then speaks only of earlier calls'). Returns the run's failures."""
    from failtrace.store.records import FINISH_CONTEXT, FINISH_WINDOW
    from failtrace.store.store import open_store

    with _store_errors(store), open_store(store, read_only=True) as st:
        row = next((r for r in st.status_rows() if r.run_id == run_id), None)
        budget = getattr(st.get_run(run_id), "settings", {}).get("max_new_tokens")
        passed_at_limit = st.con.execute(
            "SELECT count(*) FROM generations g JOIN verdicts v USING (run_id, item_id) WHERE g.run_id = ? AND "
            "v.status = 'pass' AND g.finish_reason = 'length'", [run_id]).fetchone()[0]
        too_long, cut = st.con.execute("SELECT count(*) FILTER (finish_reason = ?), count(*) FILTER (finish_reason "
                                       "= ?) FROM generations WHERE run_id = ?",
                                       [FINISH_CONTEXT, FINISH_WINDOW, run_id]).fetchone()
    if too_long > said:  # ``said``: this call's, already in its summary line
        typer.echo(f"note: {too_long} item(s) of the run have a prompt that fills the model's context window: stored "
                   "as unverifiable, not generated (a model with a longer context can answer them)", err=True)
    if cut:
        typer.echo(f"note: {cut} answer(s) of the run stopped where prompt and answer fill the model's context "
                   "window, before the budget: each was judged as cut there, and no budget can continue it (the pair "
                   "search leaves such a failure `unbounded` unless its text already fixes the verdict; a model with a "
                   "longer context can finish it)", err=True)
    if row is not None and passed_at_limit:
        typer.echo(f"note: {passed_at_limit} of the run's {row.passed} passes stopped at the {budget}-token budget: "
                   "the checker judged a cut answer, which its rest could still have broken; a larger "
                   "--max-new-tokens decides them", err=True)
    if row is not None and row.failed_at_limit:
        typer.echo(f"note: {row.failed_at_limit} of the run's {row.failed} failures stopped at the {budget}-token "
                   "budget; the pair search leaves each `unbounded` (never a clean pair) unless its text already "
                   f"fixes the verdict or `failtrace pairs --rollout-tokens N` (N > {budget}) continues it to a stop "
                   "that still fails; a larger --max-new-tokens decides more of them (docs/PAIRS.md)", err=True)
    return 0 if row is None else int(row.failed)


def _collect_on_ray(bench: Any, items: list[Any], store: Path, model: str, dtype: str, device: str, workers: int,
                    ray_address: str | None, max_new_tokens: int | None, thinking: bool, seed: int, data: str,
                    progress: bool) -> Any:
    from failtrace.scale import WorkerModel, collect_on_ray
    from failtrace.store.store import open_store

    made = False  # set once this command's own open created the store (never for one another process made)
    created = not store.exists()
    try:
        with _store_errors(store), open_store(store) as st:
            made = created
            return collect_on_ray(st, bench, items, WorkerModel(model, dtype, device), workers,
                                  max_new_tokens=max_new_tokens, thinking=thinking, seed=seed, data=data,
                                  address=ray_address, progress=progress)
    except (FailtraceError, KeyboardInterrupt):
        if made:  # the workers could not load the model, or Ctrl-C while Ray started: no empty store (as without Ray)
            _remove_if_empty(store)
        raise


def _remove_if_empty(store: Path) -> None:
    """Delete a store this command created (the caller knows) if it holds no run: nothing of value is lost. A store
    holding a run is kept, whatever failed after it was recorded."""
    from failtrace.store.store import open_store

    try:
        with open_store(store, read_only=True) as st:
            if st.runs():
                return
    except FailtraceError:
        return
    for path in (store, store.with_name(store.name + ".wal"), store.with_name(store.name + ".lock")):
        path.unlink(missing_ok=True)


def _collect_here(bench: Any, items: list[Any], store: Path, model: str, dtype: str, device: str,
                  max_new_tokens: int | None, thinking: bool, batch_size: int, seed: int, data: str,
                  progress: bool) -> Any:
    from failtrace.failures.collect import collect
    from failtrace.models.loading import load_model
    from failtrace.store.store import open_store

    made = False  # set once this command's own open created the store (never for one another process made)
    try:
        with _store_errors(store), contextlib.ExitStack() as stack:
            # An existing store is opened (and so checked) before the slow model load; a new one is created only
            # once the model has loaded, so a failed load leaves no empty store behind.
            st = stack.enter_context(open_store(store)) if store.exists() else None
            loaded = load_model(model, dtype=dtype, device=device, progress=progress)
            if st is None:
                created = not store.exists()
                st = stack.enter_context(open_store(store))
                made = created
            return collect(st, bench, items, loaded, max_new_tokens=max_new_tokens, thinking=thinking,
                           batch_size=batch_size, seed=seed, data=data, progress=progress)
    except FailtraceError:
        if made:  # refused before any item (e.g. a budget beyond the model's context): no empty store behind
            _remove_if_empty(store)
        raise


def pairs_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store written by collect."),
    top_k: int = typer.Option(10, "--top-k", "-k", callback=opts.count(1),
                              help="Alternatives tried per position (the model's own top-k)."),
    helper_model: Optional[str] = typer.Option(None, "--sibling",
                                               help="Stronger sibling model (same tokenizer required), asked for its "
                                                    "top-k where the model's own alternatives do not recover."),
    old_helper: Optional[str] = typer.Option(None, "--helper-model", hidden=True, help="The old name of --sibling."),
    min_delta: float = typer.Option(1.0, "--min-delta", callback=opts.finite(0.0),
                                    help="Clean needs logit(target) - logit(contrast) > this (>= 0)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", callback=opts.count(1),
                                        help="Process at most N failures in this call."),
    max_positions: int = typer.Option(64, "--max-positions", callback=opts.count(1),
                                      help="Completion positions walked at most per failure (bounds the cost)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only runs of this benchmark."),
    run: Optional[list[str]] = typer.Option(
        None, "--run", help="Only this collection run: its id or a unique prefix, as `failtrace status` prints it "
                             "(repeatable)."),
    item: Optional[list[str]] = typer.Option(None, "--item", callback=opts.stripped,
                                             help="Only this failed item id (repeatable), e.g. --item HumanEval/10."),
    rollout_batch_size: Optional[int] = typer.Option(None, "--rollout-batch-size", callback=opts.count(1),
                                                     help="Rollouts decoded together (default: all k)."),
    try_unbounded: bool = typer.Option(False, "--try-unbounded/--skip-unbounded",
                                       help="Also search failures that hit the length limit (costly; their status "
                                            "stays unbounded, so never clean). Default: skipped, unless their own "
                                            "text already fixes the verdict (then searched)."),
    rollout_tokens: Optional[int] = typer.Option(None, "--rollout-tokens", callback=opts.count(1),
                                                 help="Rollout budget in completion tokens (default, and the least "
                                                      "allowed: the collection's --max-new-tokens). Larger: failures "
                                                      "that hit the limit are continued and, if they then stop and "
                                                      "still fail, searched."),
    position_batch: int = typer.Option(4, "--position-batch", callback=opts.count(1),
                                       help="Most positions whose rollouts are decoded as one batch (speed only)."),
    early_stop: bool = typer.Option(True, "--early-stop/--no-early-stop",
                                    help="End a rollout once the benchmark says its prefix already fails, or "
                                         "that nothing after it is read (e.g. a closed HumanEval code block); "
                                         "speed only."),
    draft_tokens: int = typer.Option(8, "--draft-tokens", callback=opts.count(0),
                                     help="Most draft tokens, looked up in a rollout's own text or in the failing "
                                          "completion, verified per forward pass (0: off). Speed only: the tokens "
                                          "are greedy decoding's."),
    order: str = typer.Option("in-order", "--order", callback=opts.one_of(("in-order", "margin", "entropy")),
                              help="Order in which positions are rolled out: in-order, margin (smallest top-1 minus "
                                   "top-2 logit first) or entropy (largest first). Speed only: the pair found is "
                                   "always the first recovering position; in-order needs the fewest rollouts."),
    judge: Optional[str] = typer.Option(None, "--judge",
                                        help="A model (name or path, may be the explained one) asked where the "
                                             "response first breaks the instruction; that position is rolled out "
                                             "first. Speed only; off by default."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    workers: Optional[int] = opts.WORKERS,
    ray_address: Optional[str] = opts.RAY_ADDRESS,
) -> None:
    """Turn each failure into a clean target/contrast case, or say why not (resumable)."""
    from failtrace.failures.pairs import PairSettings, find_pairs
    from failtrace.models.checks import check_device
    from failtrace.store.store import open_store

    opts.check_limit_items(limit, item)

    settings = PairSettings(top_k=top_k, min_delta=min_delta, max_positions=max_positions,
                            try_unbounded=try_unbounded, rollout_batch_size=rollout_batch_size,
                            rollout_tokens=rollout_tokens, position_batch=position_batch, early_stop=early_stop,
                            order=order, draft_tokens=draft_tokens)
    settings.validate()
    if old_helper is not None and helper_model not in (None, old_helper):
        raise FailtraceError("--sibling and --helper-model (its old name) name different models; give one")
    helper_model = helper_model or old_helper
    check_device(device, here=ray_address is None)  # as collect
    check_store_path(store, create=False)
    opts.check_scale(workers, ray_address)
    if judge is not None and workers is not None:
        raise FailtraceError("--judge is not supported with --workers yet (the judge runs in-process); drop one")
    with _store_errors(store), open_store(store, create=False) as st:
        if workers is not None:
            from failtrace.scale import pairs_on_ray

            summary = pairs_on_ray(st, settings, workers, helper=helper_model, run_ids=run or None,
                                   benchmark=benchmark, limit=limit, items=item or None, device=device,
                                   address=ray_address,
                                   progress=progress)
        else:
            summary = find_pairs(st, settings, helper=helper_model, judge=judge, run_ids=run or None,
                                 benchmark=benchmark, limit=limit, items=item or None, device=device,
                                 progress=progress)
        unfinished = _unfinished_collections(st, run or None, benchmark)
        marks = ", ".join("?" * len(summary.pair_run_ids))
        clean_before = st.con.execute(f"SELECT count(*) FROM pairs WHERE status = 'clean' AND pair_run_id IN "
                                      f"({marks})", summary.pair_run_ids).fetchone()[0] if marks else 0
        clean_before -= summary.statuses.get("clean", 0)  # found by earlier calls of these pair runs (resumed)
    counts = pair_counts(summary.statuses) or "nothing new"
    typer.echo(f"{summary.failures} failures, {summary.skipped} already paired, {summary.processed} paired now "
               f"({counts}; {summary.rollouts} rollouts, {getattr(summary, 'tokens_decoded', 0)} tokens decoded) "
               f"in {summary.seconds:.1f} s" + opts.on_workers(workers if summary.processed else None)
               + f" -> {store}")  # all paired before: no worker was started
    q = shlex.quote(str(store))
    for run_id, generated, items in unfinished:
        typer.echo(f"note: collection run {run_id[:8]} has {generated} of {items} items generated (it was stopped); "
                   "`failtrace collect` with its options finishes it, then `failtrace pairs` pairs the rest",
                   err=True)
    if summary.statuses.get("clean") or clean_before:
        from failtrace.views.common import count_of

        earlier = f"; {count_of(clean_before, 'clean pair')} found by earlier calls" if clean_before else ""
        typer.echo(f"next: failtrace analyse --store {q} (explains the clean pairs{earlier})", err=True)
    elif summary.processed and summary.statuses.get("unbounded") == summary.processed:
        more = (f"a --rollout-tokens above {rollout_tokens}" if rollout_tokens
                else "`failtrace pairs --rollout-tokens N`")
        typer.echo("next: no clean pair this time: every failure paired now is unbounded (cut at the token budget "
                   f"or the model's context window, so it was not searched); where the budget cut it, {more} "
                   "continues it further, or a collection with a larger --max-new-tokens decides it (failtrace status "
                   "counts them; each pair's reason says which cut it)", err=True)
    elif summary.processed:
        cut = summary.cut_open  # failures with rollouts the budget cut with the verdict open: more tokens first
        longer = (f"; {cut} of them had rollouts cut at the rollout budget with the verdict open, which a larger "
                  f"--rollout-tokens may decide" if cut else "")
        typer.echo("next: no clean pair this time; a larger --top-k or --max-positions, or --sibling MODEL, may find "
                   f"some{longer} (failtrace status shows why each failure stopped)", err=True)


def _unfinished_collections(st: Any, run_ids: list[str] | None, benchmark: str | None) -> list[tuple[str, int, int]]:
    """(run id, generated, items) of each selected collection run with items not generated yet (a stopped collect)."""
    from failtrace.failures.pairs import collection_runs

    ids = [r.run_id for r in collection_runs(st, run_ids, benchmark)]
    rows = st.con.execute(
        "SELECT ri.run_id, count(g.item_id), count(*) FROM run_items ri LEFT JOIN generations g USING (run_id, "
        "item_id) GROUP BY ri.run_id HAVING count(g.item_id) < count(*)").fetchall()
    return [(r, int(g), int(n)) for r, g, n in rows if r in ids]


def pair_counts(statuses: dict[str, int]) -> str:
    """``1 clean, 2 no target``: the counts of a pair run's statuses in the store's order, each named as failtrace
    status, the report and the explorer name it (store.schema.PAIR_STATUS_TEXT)."""
    from failtrace.store.schema import PAIR_STATUS_TEXT, PAIR_STATUSES

    return ", ".join(f"{statuses[s]} {PAIR_STATUS_TEXT[s][0]}" for s in PAIR_STATUSES if statuses.get(s))


def register(app: typer.Typer) -> None:
    """Add collect and pairs to the ``failtrace`` app."""
    app.command("collect")(collect_command)
    app.command("pairs")(pairs_command)
