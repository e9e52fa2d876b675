"""``failtrace analyse | override | demo``: clean pairs -> explained cases; a person's category label; the demo.

``analyse`` is resumable (a rerun with the same settings and model does nothing) and never mixes settings or model
files (cases are keyed by the model's content fingerprint and the settings). Bad input raises
:class:`~failtrace.errors.FailtraceError` (one line on stderr, exit code 2) before any store is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from failtrace.cli import options as opts
from failtrace.errors import FailtraceError
from failtrace.store.store import DEFAULT_STORE


def _settings(methods: Optional[str], max_k: int, ig_steps: int, mask_rule: str, mask_token: Optional[int],
              mask_template: bool = False) -> Any:
    from failtrace.cases.settings import CaseSettings

    return CaseSettings(methods=CaseSettings.parse_methods(methods), max_k=max_k, ig_steps=ig_steps,
                        mask_rule=mask_rule, mask_token_id=mask_token, skip_template=not mask_template).validate()


def _current(st: Any) -> dict[str, tuple[str, int, int]]:
    """Pair run id -> (its current analysis run, that analysis's case count, the pair run's clean pairs)."""
    from failtrace.store.cases import current_analyses, has_case_tables

    if not has_case_tables(st):  # a version-1 store, migrated by this command's first write: nothing analysed yet
        return {}
    counts = dict(st.con.execute("SELECT analysis_id, count(*) FROM cases GROUP BY analysis_id").fetchall())
    clean = dict(st.con.execute("SELECT pair_run_id, count(*) FROM pairs WHERE status = 'clean' GROUP BY pair_run_id")
                 .fetchall())
    return {p: (a, int(counts.get(a, 0)), int(clean.get(p, 0))) for p, a in current_analyses(st).items()}


def _switch_notes(before: dict[str, tuple[str, int, int]], after: dict[str, tuple[str, int, int]]) -> list[str]:
    """One note per pair run whose current analysis (what status, show, the report and the explorer use) changed."""
    from failtrace.views.common import count_of

    notes = []
    for pair_run, (analysis, n, clean) in after.items():
        old = before.get(pair_run)
        if old is None or old[0] == analysis:
            continue
        was = f"{old[0][:8]} ({count_of(old[1], 'case')}, kept in the store"
        notes.append(f"note: pair run {pair_run[:8]}: status, show, the report and the explorer now use analysis "
                     f"{analysis[:8]} ({n} of {clean} clean pairs) instead of {was}; `analyse` again with the "
                     "settings it was made with uses it again)")
    return notes


def _summary_line(summary: Any, store: Path, workers: Optional[int] = None) -> str:
    cats = ", ".join(f"{v} {k}" for k, v in sorted(summary.categories.items())) or "no new cases"
    pats = ", ".join(f"{v} {k}" for k, v in sorted(summary.patterns.items()))
    from failtrace.views.common import count_of

    text = (f"{count_of(summary.clean_pairs, 'clean pair')}, {summary.skipped} already analysed, "
            f"{summary.analysed} analysed now "
            f"({cats}{'; patterns ' + pats if pats else ''}) in {summary.seconds:.1f} s"
            + opts.on_workers(workers) + f" -> {store}")
    if summary.alternatives_added:
        text += f"\ntop-k alternatives recorded for {summary.alternatives_added} case(s) analysed before they were kept"
    if summary.errors:
        text += f"\n{len(summary.errors)} pair(s) could not be analysed: " + "; ".join(summary.errors[:3])
    return text


def analyse_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store with clean pairs."),
    methods: Optional[str] = typer.Option(None, "--methods",
                                          help="Comma-separated attribution methods, any registered one (default, "
                                               "or 'all': attnlrp, cp-lrp, gradxinput, ig, attention, random; "
                                               "attnlrp is required)."),
    max_k: int = typer.Option(10, "--max-k", help="Mask up to K top-attributed tokens when searching k*.",
                              callback=opts.count(1)),
    ig_steps: int = typer.Option(16, "--ig-steps", help="Integrated-gradients steps per case (method ig), at least "
                                 "1; 16 halves the cost of attribute's 32.", callback=opts.count(1)),
    mask_rule: str = typer.Option("zero-embedding", "--mask-rule", help="zero-embedding | replace"),
    mask_token: Optional[int] = typer.Option(None, "--mask-token", help="Token id used by --mask-rule replace."),
    mask_template: bool = typer.Option(False, "--mask-template",
                                       help="Let masking and node ablation pick the chat template's own text (role "
                                            "headers such as 'assistant\\n'), as analyses before 4 Dec 2026 did; "
                                            "by default only the input's content is."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Analyse at most N cases in this call.",
                                         callback=opts.count(1)),
    pair_run: Optional[list[str]] = typer.Option(
        None, "--pair-run", help="Only this pair run: its id or a unique prefix, as `failtrace status` prints it "
                             "(repeatable)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only pair runs of this benchmark."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    workers: Optional[int] = opts.WORKERS,
    ray_address: Optional[str] = opts.RAY_ADDRESS,
) -> None:
    """Explain every clean pair: attributions by several methods, the graph, category and pattern (resumable)."""
    from failtrace.cases.analyse import analyse
    from failtrace.models.checks import check_device
    from failtrace.store.store import open_store

    settings = _settings(methods, max_k, ig_steps, mask_rule, mask_token, mask_template)
    check_device(device, here=ray_address is None)  # a joined cluster's nodes may have devices this one lacks
    opts.check_scale(workers, ray_address)
    with open_store(store, create=False) as st:
        before = _current(st)
        if workers is not None:
            from failtrace.scale import analyse_on_ray

            summary = analyse_on_ray(st, settings, workers, pair_run_ids=pair_run or None, benchmark=benchmark,
                                     limit=limit, device=device, address=ray_address, progress=progress)
        else:
            summary = analyse(st, settings, pair_run_ids=pair_run or None, benchmark=benchmark, limit=limit,
                              device=device, progress=progress)
        # (a stopped call prints its one error line only; status then says which analysis the views use)
        for note in _switch_notes(before, _current(st)):
            typer.echo(note, err=True)
    typer.echo(_summary_line(summary, store, workers))
    if summary.analysed or summary.skipped:
        import shlex

        typer.echo(f"next: failtrace show --store {shlex.quote(str(store))} lists the cases; failtrace report or "
                   "failtrace serve draws them", err=True)


def override_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store."),
    case: str = typer.Option(..., "--case", help="Case id (or a unique prefix)."),
    category: Optional[str] = typer.Option(None, "--category", help="M-IA | NC-IA+M-AG | NC-IA+AG"),
    reason: Optional[str] = typer.Option(None, "--reason",
                                         help="Why the computed category is wrong (stored and shown)."),
    clear: bool = typer.Option(False, "--clear", help="Remove the case's override: its computed category counts "
                                                      "again (no --category or --reason)."),
) -> None:
    """Set a case's category by hand, with a reason; the report shows it next to the computed one (--clear undoes
    it)."""
    from failtrace.cases.record import CATEGORIES
    from failtrace.store.overrides import clear_override, set_override
    from failtrace.store.store import open_store

    if clear:
        if category is not None or reason is not None:
            raise FailtraceError("--clear removes the override: give it without --category and --reason")
        with open_store(store, create=False) as st:
            cid, was = clear_override(st, case)
            computed = st.con.execute("SELECT category FROM cases WHERE case_id = ?", [cid]).fetchone()[0]
        from failtrace.views.common import prose_line  # a reason stored before the text rules may hold any byte

        typer.echo(f"case {cid}: override {was['category']} ({prose_line(str(was['reason']))}) removed; its computed "
                   f"category {computed or '—'} counts again in {store}")
        return
    if category is None or reason is None:
        raise FailtraceError("give --category and --reason (or --clear to remove an override)")
    if category not in CATEGORIES:
        raise FailtraceError(f"unknown --category {category!r}; valid: {', '.join(CATEGORIES)}")
    with open_store(store, create=False) as st:
        row = set_override(st, case, category, reason)
    from failtrace.views.common import prose_line  # a newline in the reason stays on this one line

    if row["cleared"]:  # back to the computed category: the override is removed, as --clear does
        typer.echo(f"case {row['case_id']}: back to its computed category {category}; the override was removed "
                   f"({prose_line(row['reason'])}) in {store}")
        return
    typer.echo(f"case {row['case_id']}: category set to {category} ({prose_line(row['reason'])}) in {store}")


def register(app: typer.Typer) -> None:
    """Add ``analyse``, ``override`` and ``demo`` to the ``failtrace`` app."""
    from failtrace.cli.demo import demo_command

    app.command("analyse")(analyse_command)
    app.command("override")(override_command)
    app.command("demo")(demo_command)
