"""``failtrace collect | pairs | status | export``: the failure pipeline over a results store.

Every command that writes is resumable: rerunning it skips what is already committed. Bad input raises
:class:`~failtrace.errors.FailtraceError` (one line on stderr, exit code 2).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import typer

from failtrace.cli import options as opts
from failtrace.cli.checks import check_output_dir, check_store_path
from failtrace.errors import FailtraceError, one_line
from failtrace.store.store import DEFAULT_STORE

_MAX_PROBLEMS_SHOWN = 20


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = shutil.get_terminal_size((200, 24)).columns if stream.isatty() else 200
    return Console(file=stream, width=max(width, 100), soft_wrap=False)


@contextlib.contextmanager
def _store_errors(store: Path) -> Iterator[None]:
    """A DuckDB error while using an open store (a damaged page, a full disk) as one line naming the store."""
    try:
        yield
    except Exception as exc:
        import duckdb

        if not isinstance(exc, duckdb.Error):
            raise
        first = one_line(str(exc).split("\n")[0])[:300]
        raise FailtraceError(f"results store {store} could not be used ({type(exc).__name__}: {first}); it may be "
                             f"damaged, on a full disk, or not a failtrace store. Use another --store, or restore "
                             f"it from a copy") from None


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _warn_problems(problems: list[str]) -> None:
    """The data loader's per-record problems as warnings (at most :data:`_MAX_PROBLEMS_SHOWN`)."""
    from rich.markup import escape

    err = _console(stderr=True)
    for problem in problems[:_MAX_PROBLEMS_SHOWN]:  # escaped: a problem can quote the data file's own text
        err.print(f"[yellow]warning:[/] {escape(problem)}", markup=True, highlight=False)
    if len(problems) > _MAX_PROBLEMS_SHOWN:
        err.print(f"[yellow]warning:[/] ... and {len(problems) - _MAX_PROBLEMS_SHOWN} more problems", markup=True)


def collect_command(
    benchmark: str = typer.Option(..., "--benchmark", "-b", help="Benchmark: ifeval, math, humaneval, traces or demo."),
    data: str = typer.Option(..., "--data", "-d", help="Local JSON/JSONL/Parquet file, or a hub dataset id."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                              help="Hub id, local model folder, .gguf file, or the bundled default."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", callback=opts.count(1),
                                        help="Only the first N items of the data."),
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store (DuckDB file)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", callback=opts.count(1),
                                                 help="Generation budget (default: the benchmark's)."),
    thinking: bool = typer.Option(False, "--thinking", help="Turn the chat template's thinking mode on."),
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
    from failtrace.failures.collect import resolve_benchmark
    from failtrace.models.checks import check_device
    from failtrace.models.loading import check_dtype

    check_dtype(dtype)
    check_device(device)
    check_store_path(store, create=True)
    opts.check_scale(workers, ray_address, batch_size)
    bench = resolve_benchmark(benchmark)
    report = bench.load(data, limit)
    _warn_problems(report.problems)
    if not report.items:
        raise FailtraceError(f"no {benchmark} items could be loaded from {data}"
                             f"{' (' + str(len(report.problems)) + ' problems above)' if report.problems else ''}")
    if workers is not None:
        summary = _collect_on_ray(bench, report.items, store, model, dtype, device, workers, ray_address,
                                  max_new_tokens, thinking, seed, data, progress)
    else:
        summary = _collect_here(bench, report.items, store, model, dtype, device, max_new_tokens, thinking,
                                batch_size, seed, data, progress)
    typer.echo(
        f"run {summary.run_id}: {summary.items} items, {summary.skipped} already done, {summary.generated} generated "
        f"now ({summary.passed} passed, {summary.failed} failed, {summary.unverifiable} unverifiable) in "
        f"{summary.seconds:.1f} s" + (f" on {workers} Ray workers" if workers else "") + f" -> {store}"
    )


def _collect_on_ray(bench: Any, items: list[Any], store: Path, model: str, dtype: str, device: str, workers: int,
                    ray_address: str | None, max_new_tokens: int | None, thinking: bool, seed: int, data: str,
                    progress: bool) -> Any:
    from failtrace.scale import ModelSpec, collect_on_ray
    from failtrace.store.store import open_store

    made = False  # set once this command's own open created the store (never for one another process made)
    created = not store.exists()
    try:
        with _store_errors(store), open_store(store) as st:
            made = created
            return collect_on_ray(st, bench, items, ModelSpec(model, dtype, device), workers,
                                  max_new_tokens=max_new_tokens, thinking=thinking, seed=seed, data=data,
                                  address=ray_address, progress=progress)
    except FailtraceError:
        if made:  # e.g. the workers could not load the model: leave no empty store behind (as without Ray)
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
    helper_model: Optional[str] = typer.Option(None, "--sibling", "--helper-model",
                                               help="Stronger sibling model (same tokenizer required), asked for its "
                                                    "top-k where the model's own alternatives do not recover. "
                                                    "--helper-model is the old name."),
    min_delta: float = typer.Option(1.0, "--min-delta", callback=opts.finite(0.0),
                                    help="Clean needs logit(target) - logit(contrast) > this (>= 0)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", callback=opts.count(1),
                                        help="Process at most N failures in this call."),
    max_positions: int = typer.Option(64, "--max-positions", callback=opts.count(1),
                                      help="Completion positions walked at most per failure (bounds the cost)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only runs of this benchmark."),
    run: Optional[list[str]] = typer.Option(None, "--run", help="Only this collection run id (repeatable)."),
    item: Optional[list[str]] = typer.Option(None, "--item", help="Only this failed item id (repeatable), e.g. "
                                                                   "--item HumanEval/10."),
    rollout_batch_size: Optional[int] = typer.Option(None, "--rollout-batch-size", callback=opts.count(1),
                                                     help="Rollouts decoded together (default: all k)."),
    try_unbounded: bool = typer.Option(False, "--try-unbounded/--skip-unbounded",
                                       help="Also search failures that hit the length limit (costly; their status "
                                            "stays unbounded, so never clean). Default: skipped."),
    rollout_tokens: Optional[int] = typer.Option(None, "--rollout-tokens", callback=opts.count(1),
                                                 help="Rollout budget in completion tokens (default: the collection's "
                                                      "--max-new-tokens). Larger: failures that hit the limit are "
                                                      "continued and, if they then stop and still fail, searched."),
    position_batch: int = typer.Option(4, "--position-batch", callback=opts.count(1),
                                       help="Most positions whose rollouts are decoded as one batch (speed only)."),
    early_stop: bool = typer.Option(True, "--early-stop/--no-early-stop",
                                    help="End a rollout once the benchmark says its prefix already fails "
                                         "(speed only)."),
    draft_tokens: int = typer.Option(8, "--draft-tokens", callback=opts.count(0),
                                     help="Most draft tokens, looked up in a rollout's own text, verified per forward "
                                          "pass (0: off). Speed only: the tokens are greedy decoding's."),
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

    settings = PairSettings(top_k=top_k, min_delta=min_delta, max_positions=max_positions,
                            try_unbounded=try_unbounded, rollout_batch_size=rollout_batch_size,
                            rollout_tokens=rollout_tokens, position_batch=position_batch, early_stop=early_stop,
                            order=order, draft_tokens=draft_tokens)
    settings.validate()
    check_device(device)
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
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary.statuses.items())) or "nothing new"
    typer.echo(f"{summary.failures} failures, {summary.skipped} already paired, {summary.processed} paired now "
               f"({counts}; {summary.rollouts} rollouts, {getattr(summary, 'tokens_decoded', 0)} tokens decoded) "
               f"in {summary.seconds:.1f} s" + (f" on {workers} Ray workers" if workers else "") + f" -> {store}")


def status_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store."),
) -> None:
    """Counts per benchmark and model: items, passes, failures, pair statuses, length-limit outcomes, clean rates
    (over all failures and over decidable ones), average tokens."""
    from failtrace.store.store import open_store

    check_store_path(store, create=False)
    with _store_errors(store), open_store(store, read_only=True) as st:
        rows = st.status_rows()
        snapshot = st.is_snapshot
    con = _console()
    if not rows:
        con.print(f"{store}: no collection runs yet")
        return
    runs = list({r.run_id: r for r in rows}.values())  # a collection run with two pair runs has two status rows
    number = {r.run_id: n for n, r in enumerate(runs, 1)}
    con.print(_runs_table(runs, f"failtrace status: {store}" + (" (snapshot: a run is writing it)" if snapshot
                                                                  else "")))
    paired = [r for r in rows if r.pair_run_id is not None]
    labels = [_pair_label(number[r.run_id], r, paired) for r in paired]
    if paired:
        con.print(_pairs_table(list(zip(labels, paired))))
        for label, r in zip(labels, paired):
            con.print(f"pair settings #{label}: {_pair_settings(r)}", highlight=False)


def _pair_label(n: int, row: Any, paired: list[Any]) -> str:
    """``n`` for a collection run's only pair run; ``na``, ``nb``, ... when it has several (other settings)."""
    mine = [r.pair_run_id for r in paired if r.run_id == row.run_id]
    return str(n) if len(mine) == 1 else f"{n}{chr(ord('a') + mine.index(row.pair_run_id) % 26)}"


def _runs_table(runs: list[Any], title: str) -> Any:
    """One row per collection run, numbered (the pair table below refers to the numbers)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", pad_edge=False)
    cells = [[str(n), r.benchmark, r.model, str(r.items), str(r.generated), str(r.passed), str(r.failed),
              str(r.unverifiable), _fmt(r.avg_prompt_tokens), _fmt(r.avg_completion_tokens)]
             for n, r in enumerate(runs, 1)]
    _columns(table, ["#", "benchmark", "model", "items", "generated", "passed", "failed", "unverif.",
                     "avg\nprompt\ntokens", "avg\ncompl.\ntokens"], text=("benchmark", "model"))
    for row in cells:
        table.add_row(*row)
    return table


def _pairs_table(paired: list[tuple[str, Any]]) -> Any:
    """Each pair run, labelled by its collection run's number in the table above: one status per failure, the
    length-limit outcomes, both clean rates (the settings are printed below it). Not one table with the runs:
    together they would not fit a 100-column terminal without cutting numbers."""
    from rich.table import Table

    from failtrace.store.schema import PAIR_STATUSES

    short = {"clean": "clean", "no_target": "no\ntgt", "no_contrast": "no\nctr", "weak_preference": "weak",
             "unbounded": "unbnd", "unverifiable": "unver"}
    table = Table(title="pair search (one status per failure)", title_justify="left", caption_justify="left",
                  pad_edge=False)
    cells = [[label, f"{sum(r.pairs.values())}/{r.failed}", *_pair_cells(r)] for label, r in paired]
    _columns(table, ["#", "paired/\nfailed", *(short[s] for s in PAIR_STATUSES), "limit\nhit", "cont.\npass",
                     "cont.\nfail", "clean\nrate", "clean\nrate\ndecid."])
    for row in cells:
        table.add_row(*row)
    table.caption = ("paired/failed: failures with a pair status so far (fewer while a run is partial, e.g. "
                     "--limit or --item); unbnd: hit the token limit and never decided (not counted as "
                     "decidable); limit hit: paired failures whose completion hit the limit; cont. pass / cont. fail: "
                     "of those, continued to the rollout budget (--rollout-tokens), passed (an artefact of the "
                     "budget, still unbnd) / stopped and still failed (a real failure, searched); clean rate = clean "
                     "/ failed; clean rate decid. = clean / (failed - unbnd), over the decidable failures")
    return table


def _columns(table: Any, names: list[str], text: tuple[str, ...] = ()) -> None:
    """Numbers right-aligned and never wrapped (headers are split on lines to keep them narrow); ``text`` columns
    left-aligned and folded, not cut, when the terminal is narrow: rich narrows those first."""
    for name in names:
        if name in text:
            table.add_column(name, justify="left", overflow="fold")
        else:
            table.add_column(name, justify="right", no_wrap=True)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pair_cells(r: Any) -> list[str]:
    """Pair status counts, the length-limit counts and both clean rates of a status row ('-' without pairs)."""
    from failtrace.store.schema import PAIR_STATUSES

    if r.pair_run_id is None:
        return ["-"] * (len(PAIR_STATUSES) + 5)
    counts = [str(r.pairs.get(s, 0)) for s in PAIR_STATUSES]
    limit = ["-" if v is None else str(v) for v in (r.limit_hit, r.continued_pass, r.continued_fail)]
    return [*counts, *limit, _pct(r.clean_rate), _pct(r.decidable_clean_rate)]


def _pair_settings(r: Any) -> str:
    if r.pair_run_id is None:
        return "(no pairs run)"
    ps = r.pair_settings
    settings = f"k={ps.get('top_k')} Δ>{ps.get('min_delta')} pos≤{ps.get('max_positions')}"
    if ps.get("rollout_tokens") and ps.get("rollout_tokens") != ps.get("max_new_tokens"):
        settings += f" rollout≤{ps['rollout_tokens']}"
    if ps.get("helper_model"):
        settings += f" sibling={ps['helper_model']}"
    return settings


def export_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store."),
    fmt: str = typer.Option(..., "--format", "-f", callback=opts.one_of(("parquet", "jsonl"), lower=True),
                            help="parquet or jsonl."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for one file per table."),
) -> None:
    """Write every table of the store to Parquet or JSONL files (one per table)."""
    from failtrace.store.store import open_store

    check_store_path(store, create=False)
    check_output_dir(out, "--out")
    with _store_errors(store), open_store(store, read_only=True) as st:
        files = st.export(out, fmt)
    typer.echo(f"wrote {len(files)} files to {out}: " + ", ".join(f.name for f in files))


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to the ``failtrace`` app."""
    app.command("collect")(collect_command)
    app.command("pairs")(pairs_command)
    app.command("status")(status_command)
    app.command("export")(export_command)
