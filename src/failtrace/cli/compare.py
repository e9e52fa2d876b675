"""``failtrace compare``: re-score one model's clean cases on other models (Δℓ, segment relevance, k* per model).

Rows go to the store's ``comparisons`` table (one per case and model fingerprint; a rerun skips stored rows);
``failtrace export --format jsonl`` writes them as comparisons.jsonl. The printed table: per model, how many cases
map (target and contrast one token there), the mean Δℓ, and how many the model gets right (Δℓ < 0: it prefers the
contrast, i.e. the failure is corrected on that model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from failtrace.errors import FailtraceError
from failtrace.store.store import DEFAULT_STORE


def comparison_table(rows: list[dict], models: list[str]) -> list[list[str]]:
    """Per model (in --models order): cases, mapped, mean Δℓ over mapped, corrected (Δℓ < 0), median k*."""
    import statistics

    out = []
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        mapped = [r for r in mine if r["mapped"] and r["delta_logit"] is not None]
        deltas = [float(r["delta_logit"]) for r in mapped]
        ks = [r["flip_k"] for r in mapped if r["flip_k"] is not None]
        out.append([name, str(len(mine)), str(len(mapped)),
                    f"{statistics.fmean(deltas):+.3f}" if deltas else "-",
                    str(sum(d < 0 for d in deltas)), f"{statistics.median(ks):g}" if ks else "-"])
    return out


def compare_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store with analysed cases."),
    models: list[str] = typer.Option(..., "--models", "-m",
                                     help="First the model whose cases are compared, then the others (repeat or "
                                          "space-separate): registry names, folders, .gguf files."),
    more: Optional[list[str]] = typer.Argument(None, hidden=True, help="More models (--models A B C)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only cases of this benchmark."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="At most N cases."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Re-score the first model's clean cases on the other models (same strings, re-tokenised) and store it."""
    from rich.console import Console
    from rich.table import Table

    from failtrace.cases.compare import compare
    from failtrace.store.comparisons import load_comparisons
    from failtrace.store.store import open_store

    if limit is not None and limit < 1:
        raise FailtraceError(f"--limit must be at least 1, got {limit}")
    models = [*models, *(more or [])]  # click options take one value: `--models A B` leaves B as an argument
    with open_store(store, create=False) as st:
        summary = compare(st, models, benchmark=benchmark, limit=limit, device=device, progress=progress)
        rows = load_comparisons(st)
    table = Table(title=f"{summary.cases} cases of {models[0]} compared ({summary.seconds:.1f} s)")
    for col in ("model", "rows", "mapped", "mean Δℓ", "corrected (Δℓ<0)", "median k*"):
        table.add_column(col)
    for r in comparison_table(rows, list(models)):
        table.add_row(*r)
    Console().print(table)


def export_dpo_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store with analysed cases."),
    out: Path = typer.Option(Path("prefs.jsonl"), "--out", "-o", help="Output JSONL file."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only cases of this benchmark."),
    tail_weight: float = typer.Option(0.0, "--tail-weight",
                                      help="Weight of response tokens after the decision token (0..1)."),
) -> None:
    """Token-level preference data (prompt, chosen, rejected + attribution weights) from the clean cases."""
    from failtrace.cases.preferences import export_dpo
    from failtrace.store.store import open_store

    if out.exists() and out.is_dir():
        raise FailtraceError(f"--out {out} is a folder; give a file path such as prefs.jsonl")
    with open_store(store, read_only=True) as st:
        path, n = export_dpo(st, out, benchmark=benchmark, tail_weight=tail_weight)
    typer.echo(f"wrote {n} preference pairs to {path}")


def register(app: typer.Typer) -> None:
    """Add ``compare`` and ``export-dpo`` to the ``failtrace`` app."""
    app.command("compare")(compare_command)
    app.command("export-dpo")(export_dpo_command)
