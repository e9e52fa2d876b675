"""``failtrace report``: the HTML report of a results store (Table 1, categories, patterns, segment relevance,
faithfulness, one section per case) as ``OUT/index.html`` with ``OUT/figures/*.png`` and ``OUT/tables/*.csv``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from failtrace.cli.checks import check_output_dir, check_store_path
from failtrace.cli.console import count_of
from failtrace.store.store import DEFAULT_STORE


def report_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for index.html, figures/ and tables/."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only this benchmark."),
    graphs: bool = typer.Option(True, "--graphs/--no-graphs", help="Draw each case's pruned graph."),
    title: str = typer.Option("failtrace report", "--title",
                              help='Page title ("": no heading; the tab shows the models instead).'),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Write a self-contained HTML report of the analysed failures (opens offline, no network)."""
    from failtrace.report.build import build_report_from_store
    from failtrace.store.store import open_store

    check_store_path(store, create=False)
    check_output_dir(out, "--out")
    with open_store(store, read_only=True) as st:
        index, n = build_report_from_store(st, out, benchmark=benchmark, graphs=graphs, title=title,
                                           progress=progress)
    typer.echo(f"report: {count_of(n, 'case')} -> {index}")


def register(app: typer.Typer) -> None:
    """Add ``report`` to the ``failtrace`` app."""
    app.command("report")(report_command)
