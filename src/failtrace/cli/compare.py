"""``failtrace compare``: re-score one model's clean cases on other models (Δℓ, segment relevance, k* per model),
or the base model's cases on ``failtrace finetune`` checkpoints (``--checkpoints``; rows carry step and split).

Rows go to the store's ``comparisons`` table (one per case, model fingerprint and kind, model or checkpoint; a rerun
skips stored rows); ``failtrace export --format jsonl`` writes them as comparisons.jsonl. The printed table: per
model, how many cases map (target and contrast one token there), the mean Δℓ, and how many the model gets right
(Δℓ < 0: it prefers the contrast, i.e. the failure is corrected on that model).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from failtrace.cli import options as opts
from failtrace.cli.console import count_of
from failtrace.errors import FailtraceError
from failtrace.store.store import DEFAULT_STORE

if TYPE_CHECKING:
    from failtrace.training.compare import CheckpointSummary
    from failtrace.store.store import ResultsStore


def comparison_table(rows: list[dict], models: list[str], fingerprints: dict[str, str],
                     case_ids: list[str]) -> list[list[str]]:
    """Per model (in --models order; its rows found by content fingerprint among this call's cases, whatever name
    they were stored under): cases, mapped, mean Δℓ over mapped, corrected (Δℓ < 0), how many of the corrected
    write the contrast there (its top next token; "of N recorded" when only N of them recorded it, "-" when none
    did), median k*."""
    import statistics

    wanted, out = set(case_ids), []
    for i, name in enumerate(models):
        mine = [r for r in rows if r["step"] is None and r["case_id"] in wanted and bool(r["reference"]) == (i == 0)
                and r["model_fingerprint"] == fingerprints.get(name)]
        mapped = [r for r in mine if r["mapped"] and r["delta_logit"] is not None]
        deltas = [float(r["delta_logit"]) for r in mapped]
        ks = [r["flip_k"] for r in mapped if r["flip_k"] is not None]
        out.append([name, str(len(mine)), str(len(mapped)),
                    f"{statistics.fmean(deltas):+.3f}" if deltas else "-",
                    str(sum(d < 0 for d in deltas)), writes_cell(mapped), f"{statistics.median(ks):g}" if ks else "-"])
    return out


def writes_cell(rows: list[dict]) -> str:
    """How many of the corrected rows (Δℓ < 0) write the contrast (their top next token); "of N recorded" when only
    N of them recorded it (rows stored before schema 4), "-" when none did."""
    from failtrace.report.compare_data import corrected_writes
    from failtrace.views.common import writes

    points = [{"corrected": float(r["delta_logit"]) < 0, "writes": (writes(r) or (None, None))[1]}
              for r in rows if r["delta_logit"] is not None]
    corrected = sum(p["corrected"] for p in points)
    recorded, contrast = corrected_writes(points)
    if corrected and not recorded:
        return "-"
    return str(contrast) + (f" of {recorded} recorded" if recorded < corrected else "")


def checkpoint_table(rows: list[dict], folders: list[str], summary: CheckpointSummary) -> list[list[str]]:
    """Per checkpoint (in the order of ``folders``; its rows found by content fingerprint among this call's cases):
    step, then per split of *its own* run (the folder's metadata: a step-0 row stored for another run is the same
    model but may sit in another split there) the cases, mean Δℓ, corrected (Δℓ < 0) and how many of those write the
    contrast (:func:`writes_cell`)."""
    import statistics

    from failtrace.training.checkpoints import case_splits

    wanted, out = set(summary.case_ids), []
    for folder in folders:
        meta = summary.metas[folder]
        splits = case_splits(meta, summary.pairs)
        mine = [r for r in rows if r["step"] is not None and r["case_id"] in wanted and r["delta_logit"] is not None
                and r["model_fingerprint"] == summary.fingerprints.get(folder)]
        cells = [folder, str(meta["step"])]
        for split in ("trained", "held-out"):
            part = [r for r in mine if splits.get(r["case_id"]) == split]
            deltas = [float(r["delta_logit"]) for r in part]
            cells += [str(len(deltas)), f"{statistics.fmean(deltas):+.3f}" if deltas else "-",
                      str(sum(d < 0 for d in deltas)), writes_cell(part)]
        out.append(cells)
    return out


def _reused(skipped: int) -> str:
    """How many rows were stored already (a rerun recomputes nothing it has: rows are keyed by case and weights)."""
    return f"; {count_of(skipped, 'row')} stored before, not recomputed" if skipped else ""


def _print_checkpoints(st: ResultsStore, folders: list[str], summary: CheckpointSummary) -> None:
    """A plain-text table (never truncated: checkpoint paths are long), one line per checkpoint, by finetune run
    (in the order given) and then by step."""
    from failtrace.store.comparisons import load_comparisons

    from failtrace.training.checkpoints import training_run_id

    runs_seen = list(dict.fromkeys(training_run_id(summary.metas[f]) for f in folders))
    # by run, then by step: a shell glob gives step-0 step-1 step-10 step-2
    folders = sorted(folders, key=lambda f: (runs_seen.index(training_run_id(summary.metas[f])),
                                             int(summary.metas[f]["step"])))
    rows = checkpoint_table(load_comparisons(st), folders, summary)
    head = ["checkpoint", "step", "trained", "mean Δℓ", "corrected", "writes", "held-out", "mean Δℓ", "corrected",
            "writes"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    typer.echo(f"{count_of(summary.cases, 'case')} on {count_of(len(folders), 'checkpoint')} "
               f"({summary.seconds:.1f} s{_reused(summary.skipped)}); corrected = Δℓ < 0; writes = of those, "
               "how many have the contrast as the checkpoint's top next token")
    from failtrace.training.checkpoints import case_splits

    by_run: dict[str, list[str]] = {}  # each finetune run's folders: a case's split is its own run's
    for f in folders:
        by_run.setdefault(training_run_id(summary.metas[f]), []).append(f)
    for run_folders in by_run.values():  # stored with split null and a note; the columns count the run's two sets
        splits = case_splits(summary.metas[run_folders[0]], summary.pairs)
        unseen = [c for c in summary.case_ids if c not in splits]
        if unseen:
            verb = "is" if len(unseen) == 1 else "are"
            whose = "" if len(by_run) == 1 else f" of {run_folders[0]}" + (" and the others of its run"
                                                                             if len(run_folders) > 1 else "")
            typer.echo(f"note: {count_of(len(unseen), 'case')} of the {summary.cases} {verb} in neither split of the "
                       f"run{whose} (not trained on nor held out, nor is their pair: e.g. left out in review, or "
                       "searched after the run; or analysed again after a run that did not record its pairs yet); "
                       "stored without a split and not counted in its rows' columns")
    runs = set(by_run)
    if len(runs) > 1:  # e.g. an --out folder rewritten by a shorter run keeps the longer run's later steps
        methods = sorted({str(summary.metas[f].get("method")) for f in folders})
        typer.echo(f"note: these checkpoints come from {len(runs)} different finetune runs (settings or case splits "
                   f"differ; method {', '.join(methods)}): each row's split is its own run's")
    for r in [head, *rows]:
        typer.echo("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def compare_command(
    ctx: typer.Context,
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store with analysed cases."),
    models: Optional[list[str]] = typer.Option(None, "--models", "-m",
                                               help="First the model whose cases are compared, then the others "
                                                    "(repeat or space-separate): registry names, folders, .gguf "
                                                    "files."),
    checkpoints: Optional[list[str]] = typer.Option(None, "--checkpoints",
                                                    help="Checkpoint folders written by `failtrace finetune` (e.g. "
                                                         "ckpts/step-0 ckpts/step-50): the base model's cases on "
                                                         "each, with step and trained/held-out split."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only cases of this benchmark."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="At most N cases."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Re-score the first model's clean cases on the other models (same strings, re-tokenised), or the base model's
    cases on finetune checkpoints (--checkpoints), and store it."""
    from rich.table import Table

    from failtrace.cases.compare import compare
    from failtrace.cli.console import console
    from failtrace.store.cases import require_cases
    from failtrace.store.comparisons import load_comparisons
    from failtrace.store.store import open_store

    # click options take one value each: in `--models A B C` (as the help says), B and C arrive as extra arguments,
    # taken from the context so the usage line shows no positional MODEL that works only after an option
    more = list(ctx.args)
    if limit is not None and limit < 1:
        raise FailtraceError(f"--limit must be at least 1, got {limit}")
    if models and checkpoints:
        raise FailtraceError("give either --models (cross-model) or --checkpoints (finetune checkpoints), not both")
    if not models and not checkpoints:
        named = f"; {' '.join(more)} came without an option before them" if more else ""
        raise FailtraceError(f"say what to compare: --models A B ... (cross-model) or --checkpoints C D ... "
                             f"(finetune checkpoints){named}")
    if checkpoints:  # click options take one value: `--checkpoints A B` leaves B as an argument
        from failtrace.training.compare import compare_checkpoints

        folders = [*checkpoints, *(more or [])]
        with open_store(store, create=False) as st:
            if benchmark is not None:  # (without one, the checkpoints' own checks and messages come first)
                require_cases(st, benchmark)
            summary = compare_checkpoints(st, folders, benchmark=benchmark, limit=limit, device=device,
                                          progress=progress)
            _print_checkpoints(st, folders, summary)
        return
    models = [*(models or []), *(more or [])]
    with open_store(store, create=False) as st:
        require_cases(st, benchmark)
        summary = compare(st, models, benchmark=benchmark, limit=limit, device=device, progress=progress)
        rows = load_comparisons(st)
    table = Table(title=f"{count_of(summary.cases, 'case')} of {models[0]} compared ({summary.seconds:.1f} s"
                        f"{_reused(summary.skipped)})")
    for col in ("model", "rows", "mapped", "mean Δℓ", "corrected (Δℓ<0)", "writes the contrast", "median k*"):
        table.add_column(col)
    for r in comparison_table(rows, list(models), summary.fingerprints, summary.case_ids):
        table.add_row(*r)
    console().print(table)


def export_dpo_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store with analysed cases."),
    out: Path = typer.Option(Path("prefs.jsonl"), "--out", "-o", help="Output JSONL file ('-': standard output)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only cases of this benchmark."),
    tail_weight: float = typer.Option(0.0, "--tail-weight",
                                      help="Weight of response tokens after the decision token (0..1).",
                                      callback=opts.finite(0.0, 1.0)),
) -> None:
    """Token-level preference data (prompt, chosen, rejected + attribution weights) from the clean cases."""
    from failtrace.cases.preferences import export_dpo
    from failtrace.cli.checks import check_not_the_store, check_output_file, check_store_path
    from failtrace.store.cases import require_cases
    from failtrace.store.store import open_store

    check_store_path(store, create=False)  # a link to nothing or a loop: named, before any path is resolved
    if str(out) == "-":  # the usual name for standard output (it wrote a file named '-')
        out = Path("/dev/stdout")
    check_not_the_store(out, store, "--out")
    check_output_file(out, "--out", "prefs.jsonl")  # before reading the store: one line, not a crash log
    with open_store(store, read_only=True) as st:
        require_cases(st, benchmark)
        done = export_dpo(st, out, benchmark=benchmark, tail_weight=tail_weight)
    left = (f" ({count_of(done.rejected, 'case')} left out: a reviewer rejected the pair)" if done.rejected else "")
    # written to a pipe or terminal (--out /dev/stdout): the data stream gets the records only
    typer.echo(f"wrote {count_of(done.records, 'preference pair')} to {done.path}{left}",
               err=str(done.path) == "/dev/stdout" or not Path(done.path).resolve().is_file())


def register(app: typer.Typer) -> None:
    """Add ``compare`` and ``export-dpo`` to the ``failtrace`` app."""
    app.command("compare", context_settings={"allow_extra_args": True})(compare_command)
    app.command("export-dpo")(export_dpo_command)
