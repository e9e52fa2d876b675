"""``failtrace report``: the HTML report of a results store (Table 1, categories, patterns, segment relevance,
faithfulness, one section per case) as ``OUT/index.html`` with ``OUT/figures/*.png`` and ``OUT/tables/*.csv``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from failtrace.errors import FailtraceError
from failtrace.store.store import DEFAULT_STORE


def _load_cases(st: Any, benchmark: str | None, graphs: bool) -> list[Any]:
    """The store's cases (newest analysis per pair run), with graphs and overrides, via the cases stage."""
    try:
        from failtrace.store.cases import load_cases
    except ImportError:  # pragma: no cover - only before the cases stage is merged: Table 1 and statuses only
        return []
    return load_cases(st, benchmark=benchmark, with_graph=graphs)


def report_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for index.html, figures/ and tables/."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only this benchmark."),
    graphs: bool = typer.Option(True, "--graphs/--no-graphs", help="Draw each case's pruned graph."),
    title: str = typer.Option("failtrace report", "--title", help="Page title."),
) -> None:
    """Write a self-contained HTML report of the analysed failures (opens offline, no network)."""
    from failtrace.report.build import build_report
    from failtrace.store.store import open_store

    if out.exists() and not out.is_dir():
        raise FailtraceError(f"--out {out} is a file; give a folder for the report")
    with open_store(store, read_only=True) as st:
        rows = st.status_rows()
        pairs = st.pairs()
        cases = _load_cases(st, benchmark, graphs)
    if benchmark is not None:
        rows = [r for r in rows if r.benchmark == benchmark]
        pairs = [p for p in pairs if p.get("benchmark") == benchmark]
        if not rows and not cases:
            raise FailtraceError(f"no runs for benchmark {benchmark!r} in {store}")
    index = build_report(cases, rows, out, pairs, title=title)
    typer.echo(f"report: {len(cases)} cases, {len(rows)} runs -> {index}")


def register(app: typer.Typer) -> None:
    """Add ``report`` to the ``failtrace`` app."""
    app.command("report")(report_command)
