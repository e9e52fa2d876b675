"""``failtrace collect | pairs | status | export``: the failure pipeline over a results store.

Every command that writes is resumable: rerunning it skips what is already committed. Bad input raises
:class:`~failtrace.errors.FailtraceError` (one line on stderr, exit code 2).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from failtrace.errors import FailtraceError
from failtrace.store.store import DEFAULT_STORE

_MAX_PROBLEMS_SHOWN = 20


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = shutil.get_terminal_size((200, 24)).columns if stream.isatty() else 200
    return Console(file=stream, width=max(width, 100), soft_wrap=False)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def collect_command(
    benchmark: str = typer.Option(..., "--benchmark", "-b", help="Benchmark: ifeval, math, humaneval or traces."),
    data: str = typer.Option(..., "--data", "-d", help="Local JSON/JSONL/Parquet file, or a hub dataset id."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                              help="Hub id, local model folder, .gguf file, or the bundled default."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Only the first N items of the data."),
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store (DuckDB file)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                 help="Generation budget (default: the benchmark's)."),
    thinking: bool = typer.Option(False, "--thinking", help="Turn the chat template's thinking mode on."),
    batch_size: int = typer.Option(1, "--batch-size",
                                   help="Prompts decoded together (left padding). 1 is exact-reproducible."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed recorded with the run (decoding is greedy)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Generate greedily on benchmark items, check each answer, store generations and verdicts (resumable)."""
    from failtrace.failures.collect import collect, resolve_benchmark
    from failtrace.models.loading import load_model
    from failtrace.store.store import open_store

    if limit is not None and limit < 1:
        raise FailtraceError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise FailtraceError(f"--batch-size must be at least 1, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise FailtraceError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    bench = resolve_benchmark(benchmark)
    report = bench.load(data, limit)
    err = _console(stderr=True)
    for problem in report.problems[:_MAX_PROBLEMS_SHOWN]:
        err.print(f"[yellow]warning:[/] {problem}", markup=True, highlight=False)
    if len(report.problems) > _MAX_PROBLEMS_SHOWN:
        err.print(f"[yellow]warning:[/] ... and {len(report.problems) - _MAX_PROBLEMS_SHOWN} more problems",
                  markup=True)
    if not report.items:
        raise FailtraceError(f"no {benchmark} items could be loaded from {data}"
                             f"{' (' + str(len(report.problems)) + ' problems above)' if report.problems else ''}")
    with open_store(store) as st:
        loaded = load_model(model, dtype=dtype, device=device, progress=progress)
        summary = collect(st, bench, report.items, loaded, max_new_tokens=max_new_tokens, thinking=thinking,
                          batch_size=batch_size, seed=seed, data=data, progress=progress)
    typer.echo(
        f"run {summary.run_id}: {summary.items} items, {summary.skipped} already done, {summary.generated} generated "
        f"now ({summary.passed} passed, {summary.failed} failed, {summary.unverifiable} unverifiable) in "
        f"{summary.seconds:.1f} s -> {store}"
    )


def pairs_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store written by collect."),
    top_k: int = typer.Option(10, "--top-k", "-k", help="Alternatives tried per position (the model's own top-k)."),
    helper_model: Optional[str] = typer.Option(None, "--sibling", "--helper-model",
                                               help="Stronger sibling model (same tokenizer required), asked for its "
                                                    "top-k where the model's own alternatives do not recover. "
                                                    "--helper-model is the old name."),
    min_delta: float = typer.Option(1.0, "--min-delta", help="Clean needs logit(target) - logit(contrast) > this."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Process at most N failures in this call."),
    max_positions: int = typer.Option(64, "--max-positions",
                                      help="Completion positions walked at most per failure (bounds the cost)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only runs of this benchmark."),
    run: Optional[list[str]] = typer.Option(None, "--run", help="Only this collection run id (repeatable)."),
    rollout_batch_size: Optional[int] = typer.Option(None, "--rollout-batch-size",
                                                     help="Rollouts decoded together (default: all k)."),
    try_unbounded: bool = typer.Option(True, "--try-unbounded/--skip-unbounded",
                                       help="Search failures that hit the length limit too (status stays unbounded)."),
    rollout_tokens: Optional[int] = typer.Option(None, "--rollout-tokens",
                                                 help="Rollout budget in completion tokens (default: the collection's "
                                                      "--max-new-tokens). Larger: failures that hit the limit are "
                                                      "continued and, if they then stop and still fail, searched."),
    position_batch: int = typer.Option(4, "--position-batch",
                                       help="Most positions whose rollouts are decoded as one batch (speed only)."),
    early_stop: bool = typer.Option(True, "--early-stop/--no-early-stop",
                                    help="End a rollout once the benchmark says its prefix already fails "
                                         "(speed only)."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Turn each failure into a clean target/contrast case, or say why not (resumable)."""
    from failtrace.failures.pairs import PairSettings, find_pairs
    from failtrace.store.store import open_store

    settings = PairSettings(top_k=top_k, min_delta=min_delta, max_positions=max_positions,
                            try_unbounded=try_unbounded, rollout_batch_size=rollout_batch_size,
                            rollout_tokens=rollout_tokens, position_batch=position_batch, early_stop=early_stop)
    settings.validate()
    with open_store(store, create=False) as st:
        summary = find_pairs(st, settings, helper=helper_model, run_ids=run or None, benchmark=benchmark,
                             limit=limit, device=device, progress=progress)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary.statuses.items())) or "nothing new"
    typer.echo(f"{summary.failures} failures, {summary.skipped} already paired, {summary.processed} paired now "
               f"({counts}; {summary.rollouts} rollouts, {summary.tokens_decoded} tokens decoded) in "
               f"{summary.seconds:.1f} s -> {store}")


def status_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store."),
) -> None:
    """Counts per benchmark and model: items, passes, failures, pair statuses, clean rate, average tokens."""
    from rich.table import Table

    from failtrace.store.schema import PAIR_STATUSES
    from failtrace.store.store import open_store

    with open_store(store, read_only=True) as st:
        rows = st.status_rows()
        snapshot = st.is_snapshot
    con = _console()
    if not rows:
        con.print(f"{store}: no collection runs yet")
        return
    short = {"clean": "clean", "no_target": "no tgt", "no_contrast": "no ctr", "weak_preference": "weak",
             "unbounded": "unbnd", "unverifiable": "unver"}
    table = Table(title=f"failtrace status: {store}" + (" (snapshot: a run is writing it)" if snapshot else ""))
    for name in ("benchmark", "model", "items", "generated", "passed", "failed", "unverif."):
        table.add_column(name, justify="left" if name in ("benchmark", "model") else "right")
    for s in PAIR_STATUSES:
        table.add_column(f"pairs\n{short[s]}", justify="right")
    for name in ("clean\nrate", "avg prompt\ntokens", "avg compl.\ntokens", "pair settings"):
        table.add_column(name, justify="right" if "settings" not in name else "left")
    for r in rows:
        if r.pair_run_id is None:
            pair_cells = ["-"] * len(PAIR_STATUSES)
            settings = "(no pairs run)"
            rate = "-"
        else:
            pair_cells = [str(r.pairs.get(s, 0)) for s in PAIR_STATUSES]
            ps = r.pair_settings
            settings = f"k={ps.get('top_k')} Δ>{ps.get('min_delta')} pos≤{ps.get('max_positions')}"
            if ps.get("helper_model"):
                settings += f" helper={ps['helper_model']}"
            rate = "-" if r.clean_rate is None else f"{100 * r.clean_rate:.1f}%"
        table.add_row(r.benchmark, r.model, str(r.items), str(r.generated), str(r.passed), str(r.failed),
                      str(r.unverifiable), *pair_cells, rate, _fmt(r.avg_prompt_tokens),
                      _fmt(r.avg_completion_tokens), settings)
    con.print(table)


def export_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store."),
    fmt: str = typer.Option(..., "--format", "-f", help="parquet or jsonl."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for one file per table."),
) -> None:
    """Write every table of the store to Parquet or JSONL files (one per table)."""
    from failtrace.store.store import open_store

    if fmt.lower() not in ("parquet", "jsonl"):
        raise FailtraceError(f"unknown --format {fmt!r}; use parquet or jsonl")
    with open_store(store, read_only=True) as st:
        files = st.export(out, fmt)
    typer.echo(f"wrote {len(files)} files to {out}: " + ", ".join(f.name for f in files))


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to the ``failtrace`` app."""
    app.command("collect")(collect_command)
    app.command("pairs")(pairs_command)
    app.command("status")(status_command)
    app.command("export")(export_command)
