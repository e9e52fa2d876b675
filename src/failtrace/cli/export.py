"""``failtrace export``: every table of a results store as Parquet or JSONL files, read-only (a store being written is
read from a consistent snapshot); what it replaces or leaves in the folder is said."""

from __future__ import annotations

from pathlib import Path

import typer

from failtrace.cli import options as opts
from failtrace.cli.checks import check_output_dir, check_store_path
from failtrace.cli.console import store_errors as _store_errors
from failtrace.store.store import DEFAULT_STORE


def export_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store."),
    fmt: str = typer.Option(..., "--format", "-f", callback=opts.one_of(("parquet", "jsonl"), lower=True),
                            help="parquet or jsonl."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the files (one per table; JSONL joins cases and "
                                                     "their methods in cases.jsonl)."),
) -> None:
    """Write every table of the store to Parquet or JSONL files (one per table; JSONL writes cases with their
    methods as cases.jsonl)."""
    from failtrace.store.export import export_names
    from failtrace.store.store import open_store

    check_store_path(store, create=False)
    check_output_dir(out, "--out")
    there = {n for n in export_names(fmt) if (out / n).is_file()}  # what this export replaces or removes: said
    with _store_errors(store), open_store(store, read_only=True) as st:
        files = st.export(out, fmt)
    typer.echo(f"wrote {len(files)} files to {out}: " + ", ".join(f.name for f in files))
    written = {f.name for f in files}
    if there & written:
        typer.echo(f"replaced the files of the same names that were there: {', '.join(sorted(there & written))}")
    if there - written:
        typer.echo(f"removed {', '.join(sorted(there - written))} (tables this store does not hold, so the folder "
                   "does not mix two stores)")
    from failtrace.views.common import count_of

    other = "jsonl" if fmt == "parquet" else "parquet"
    left = sorted(n for n in export_names(other) if (out / n).is_file())
    if left:  # kept: they may be this store's, in the other format; said, since they may be another store's
        shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
        typer.echo(f"note: {out} also holds {count_of(len(left), other + ' file')} of an earlier "
                   f"export ({shown}), left as they were: they may be of another store", err=True)


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``failtrace`` app."""
    app.command("export")(export_command)
