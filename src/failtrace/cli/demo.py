"""``failtrace demo``: collect -> pairs -> analyse -> report on the bundled model, over the built-in demo items.

The store stays at ``OUT/runs.duckdb`` and the report at ``OUT/report/index.html``, so the demo can be explored,
exported and re-run afterwards (every stage resumes: a second run does no work twice).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from failtrace.cli import options as opts
from failtrace.errors import FailtraceError


def demo_source() -> tuple[Any, list[Any], dict[str, Any]]:
    """(benchmark, items, settings) of the demo: the built-in ``demo`` benchmark and its ``DEMO_SETTINGS``."""
    from failtrace.benchmarks.demo import DEMO_SETTINGS, demo_items
    from failtrace.failures.collect import resolve_benchmark

    return resolve_benchmark("demo"), list(demo_items()), DEMO_SETTINGS.to_dict()


def _report(st: Any, out: Path, progress: bool = False) -> Path:
    """The report of the store (the newest cases with graphs and overrides, status rows, pairs)."""
    from failtrace.report.build import build_report_from_store

    return Path(build_report_from_store(st, out, progress=progress)[0])


def _print_summary(st: Any, run_id: str, report: Path, store_path: Path) -> None:
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    from failtrace.store.cases import load_cases

    rows = [r for r in st.status_rows() if r.run_id == run_id]
    cases = load_cases(st)
    table = Table(title="failtrace demo")
    for col in ("benchmark", "items", "passed", "failed", "clean pairs", "cases", "categories", "patterns"):
        table.add_column(col, justify="left" if col in ("benchmark", "categories", "patterns") else "right")
    clean = 0
    for r in rows:
        mine = [c for c in cases if c.pair_run_id == r.pair_run_id]
        cats = Counter(str(c.effective_category) for c in mine)
        pats = Counter(str(c.pattern) for c in mine)
        clean = max(clean, r.pairs.get("clean", 0))
        table.add_row(r.benchmark, str(r.items), str(r.passed), str(r.failed), str(r.pairs.get("clean", 0)),
                      str(len(mine)), ", ".join(f"{v} {k}" for k, v in sorted(cats.items())) or "-",
                      ", ".join(f"{v} {k}" for k, v in sorted(pats.items())) or "-")
    # a terminal's own width (the category and pattern columns fold); a log or pipe gets 160 columns, no wrapping
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    failed = sum(r.failed for r in rows)
    console.print(f"{failed} failures, {clean} clean -> {len(cases)} cases explained; store {store_path}",
                  highlight=False, markup=False)
    console.print(f"report: {report}", highlight=False, markup=False)
    if cases:  # where to read one explanation without a browser
        import shlex

        console.print(f"one case in the terminal: failtrace show --store {shlex.quote(str(store_path))} "
                      f"--case {cases[0].case_id[:12]}", highlight=False, markup=False)


def demo_command(
    out: Path = typer.Option(Path("out"), "--out", help="Folder for runs.duckdb and report/."),
    model: Optional[str] = opts.MODEL,
    methods: Optional[str] = typer.Option(None, "--methods", help="Attribution methods (default: all)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """End to end on failures: collect the demo items, find clean pairs, explain them, write the report."""
    from failtrace.cases.analyse import analyse
    from failtrace.cases.settings import CaseSettings
    from failtrace.failures.collect import collect
    from failtrace.failures.pairs import PairSettings, find_pairs
    from failtrace.models.loading import load_model
    from failtrace.store.store import open_store

    from failtrace.cli.checks import check_output_dir

    check_output_dir(out, "--out")
    if (out / "runs.duckdb").is_dir():  # checked before the model loads, and named by the option the demo has
        raise FailtraceError(f"--out {out}: {out / 'runs.duckdb'} is a folder, where the demo keeps its store; "
                             "move it away or give another --out")
    bench, items, cfg = demo_source()
    case_settings = CaseSettings(methods=CaseSettings.parse_methods(methods) if methods else
                                 tuple(cfg.get("methods") or CaseSettings().methods),
                                 max_k=int(cfg.get("max_k", 10)), ig_steps=int(cfg.get("ig_steps", 16))).validate()
    pair_settings = PairSettings(top_k=int(cfg.get("top_k", 10)), min_delta=float(cfg.get("min_delta", 1.0)),
                                 max_positions=int(cfg.get("max_positions", 24)))
    pair_settings.validate()
    loaded = load_model(model, progress=progress)  # a bad model fails here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "runs.duckdb"
    with open_store(store_path) as st:
        run = collect(st, bench, items, loaded, max_new_tokens=int(cfg.get("max_new_tokens", bench.max_new_tokens)),
                      data="builtin:demo", progress=progress)
        pairs = find_pairs(st, pair_settings, models={loaded.name: loaded}, benchmarks={bench.name: bench},
                           run_ids=[run.run_id], progress=progress)
        if pairs.pair_run_ids:
            analyse(st, case_settings, models={loaded.name: loaded}, pair_run_ids=pairs.pair_run_ids or None,
                    progress=progress)
        report = _report(st, out / "report", progress)
        _print_summary(st, run.run_id, report, store_path)
