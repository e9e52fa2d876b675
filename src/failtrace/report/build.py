"""Build the HTML report of a store's cases: ``index.html`` (self-contained), ``figures/*.png``, ``tables/*.csv``.

Data flows one way: cases and status rows -> :mod:`~failtrace.report.tables` rows -> CSV files and matplotlib
figures (:mod:`~failtrace.report.figures`) -> HTML (:mod:`~failtrace.report.pages`, :mod:`~failtrace.report.casepage`).
Summary figures are inlined into the page as data URIs; the per-case graph pictures too while their total stays under
``inline_budget_mb`` (beyond it they are referenced as relative files beside the page, ``figures/graphs/*.png``).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from failtrace.cases.record import Case
from failtrace.errors import FailtraceError
from failtrace.progress import progress_bar
from failtrace.report import figures as F
from failtrace.report import tables as T
from failtrace.analysis.ablation_view import AblationView, ablation_view
from failtrace.views.graph_static import save_graph_png
from failtrace.report.ablationfig import ablation_figure
from failtrace.report.casepage import case_section, esc, plain_token
from failtrace.report.graphfig import graph_record_figure, is_graph_record
from failtrace.report.pages import benchmark_section, html_table, page, summary_section
from failtrace.store.connection import refuse_over_stores
from failtrace.store.store import StatusRow
from failtrace.views.answers import caveats
from failtrace.views.common import count_of

GraphSource = Mapping[str, Any] | Callable[[str], Any]  # case_id -> PrunedGraph (or None)

_PAIR_COLS = [("benchmark", "benchmark", "text"), ("item_id", "item", "text"), ("status", "status", "text"),
              ("reason", "reason", "text")]


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def compute_tables(cases: Sequence[Case], status_rows: Sequence[StatusRow],
                   overrides: T.Overrides | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every table of the report, by name (the CSV file names without ``.csv``). A case whose pair a reviewer
    rejected is listed in ``cases`` (its ``review`` column says so) and counted in no analysis table (``table1``
    counts what the pipeline made, so it counts it as analysed)."""
    counted = [c for c in cases if not c.rejected]
    return {
        "table1": T.table1_rows(status_rows, cases),
        "pair_status": T.pair_status_rows(status_rows),
        "categories": T.category_rows(counted, overrides),
        "patterns": T.pattern_rows(counted),
        "segments": T.segment_rows(counted, overrides),
        "flip_rate": T.flip_rate_rows(counted),
        "kstar": T.kstar_rows(counted),
        "cases": T.case_rows(cases, overrides),
    }


def _write_tables(tables: Mapping[str, list[dict[str, Any]]], out: Path,
                  pairs_rows: Sequence[Mapping[str, Any]] | None) -> None:
    columns = {
        "table1": ["benchmark", "model", "run_id", "pair_run_id", "collection_settings", "pair_settings", "items",
                   "generated", "passed",
                   "failures", "unverifiable", "clean_pairs", "clean_rate", "clean_rate_decidable",
                   "clean_rate_is_lower_bound", "cases",
                   "avg_tokens_per_case",
                   "avg_prompt_tokens", "avg_completion_tokens"],
        "pair_status": ["benchmark", "model", "pair_run_id", "collection_settings", "pair_settings", "failures",
                        "clean", *T.NON_CLEAN,
                        "not_paired"],
        "categories": ["benchmark", "label", "cases", "share"],
        "patterns": ["benchmark", "label", "cases", "share"],
        "segments": ["benchmark", "method", "category", "segment", "cases", "category_cases",
                     "mean_normalised_relevance"],
        "flip_rate": ["benchmark", "method", "k", "cases", "flipped", "flip_rate"],
        "kstar": ["benchmark", "method", "cases", "flipped", "flip_rate_at_K", "K", "mean_k_star", "median_k_star",
                  "top_recorded", "contrast_on_top"],
        "cases": None if tables.get("cases") else list(T.CASE_COLUMNS),  # else from its rows (k* per method)
    }
    for name, rows in tables.items():
        T.write_csv(rows, out / "tables" / f"{name}.csv", columns.get(name))  # cases: columns from its rows
    if pairs_rows is not None:
        T.write_csv(_non_clean(pairs_rows), out / "tables" / "non_clean_pairs.csv",
                    ["benchmark", "pair_run_id", "item_id", "status", "reason"])


def _non_clean(pairs_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The pairs that are not clean, each status in words as the table above and `failtrace status` say it."""
    from failtrace.store.schema import PAIR_STATUS_TEXT

    return [{k: r.get(k) for k in ("benchmark", "pair_run_id", "item_id", "reason")}
            | {"status": PAIR_STATUS_TEXT.get(r.get("status"), (r.get("status"),))[0]}
            for r in pairs_rows if r.get("status") != "clean"]


def _figures(tables: Mapping[str, list[dict[str, Any]]], benches: Sequence[str], fig_dir: Path) -> dict[str, str]:
    """Draw the summary figures; returns name -> data URI."""
    out: dict[str, str] = {}
    if tables["categories"]:
        out["categories"] = _data_uri(F.categories_figure(tables["categories"], tables["patterns"],
                                                          fig_dir / "categories.png"))
    for i, b in enumerate(benches):
        name = f"{i:02d}-{''.join(ch if ch.isalnum() else '-' for ch in b)}"
        if any(r["benchmark"] == b for r in tables["segments"]):
            out[f"segments:{b}"] = _data_uri(F.segments_figure(tables["segments"], b,
                                                               fig_dir / f"segments_{name}.png"))
        if any(r["benchmark"] == b for r in tables["flip_rate"]):
            out[f"faithfulness:{b}"] = _data_uri(F.faithfulness_figure(tables["flip_rate"], tables["kstar"], b,
                                                                       fig_dir / f"faithfulness_{name}.png"))
    return out


def _draw_graph(case: Case, graph: Any, path: Path) -> Path:
    title = f"{case.item_id}: ‹{plain_token(case.target_text)}› vs ‹{plain_token(case.contrast_text)}›, " \
            f"Δℓ = {case.delta_logit:.2f}"
    if is_graph_record(graph):  # the stored form (failtrace.store.cases)
        return graph_record_figure(graph, case.tokens, case.special_mask, path, title=title)
    return save_graph_png(graph, path, title=title)  # a live PrunedGraph: the graph views draw it


def _ablation_view(case: Case, graph: Any) -> AblationView | None:
    """The Fig. 3 view of an NC-IA case (its computed category: the ablation is the evidence for it), else None
    (also when the stored evidence does not fit the graph: the page then shows the plain graph only)."""
    ablation = (case.category_evidence or {}).get("ablation")
    if not (case.category or "").startswith("NC-IA") or not isinstance(ablation, Mapping) or not ablation.get("nodes"):
        return None
    try:
        return ablation_view(graph, ablation, n_tokens=len(case.tokens))
    except FailtraceError:
        return None


def _graph_images(cases: Sequence[Case], graphs: GraphSource | None, out: Path, budget_bytes: int,
                  progress: bool = False) -> tuple[dict[str, str], dict[str, tuple[str, AblationView]]]:
    """Draw each case's pruned graph to figures/graphs/<case_id>.png, and for NC-IA cases its Fig. 3 ablation view
    to figures/graphs/<case_id>-ablation.png; returns case_id -> data URI or relative path, and case_id -> (that,
    the view).

    ``graphs`` (case id -> graph) wins; otherwise a case's own ``graph`` attribute (set by ``load_cases(...,
    with_graph=True)``) is used."""
    gdir = out / "figures" / "graphs"
    if gdir.is_dir():
        for old in gdir.glob("*.png"):  # this folder is the report's own: drop pictures of cases no longer shown
            old.unlink()
    get = (graphs if callable(graphs) else graphs.get) if graphs is not None else (lambda _cid: None)
    srcs: dict[str, str] = {}
    ablations: dict[str, tuple[str, AblationView]] = {}
    used = 0

    def place(path: Path) -> str:
        nonlocal used
        size = path.stat().st_size
        if used + size <= budget_bytes:
            used += size
            return _data_uri(path)
        return path.relative_to(out).as_posix()

    drawn = []
    for c in cases:
        graph = get(c.case_id)
        graph = graph if graph is not None else getattr(c, "graph", None)
        if graph is not None:
            drawn.append((c, graph))
    bar = progress_bar(progress, "report: graph pictures", len(drawn))  # most of a large report's time
    try:
        for c, graph in drawn:
            srcs[c.case_id] = place(_draw_graph(c, graph, gdir / f"{c.case_id}.png"))
            view = _ablation_view(c, graph)
            if view is not None:
                curve = [float(x) for x in c.category_evidence["ablation"].get("curve") or []]
                title = f"{c.item_id}: ‹{plain_token(c.target_text)}› vs ‹{plain_token(c.contrast_text)}›"
                path = ablation_figure(view, curve, c.tokens, c.special_mask, gdir / f"{c.case_id}-ablation.png",
                                       title=title)
                ablations[c.case_id] = (place(path), view)
            bar.advance()
    finally:
        bar.close()
    return srcs, ablations


def _cases_section(cases: Sequence[Case], benches: Sequence[str], overrides: T.Overrides | None,
                   graph_srcs: Mapping[str, str], ablations: Mapping[str, tuple[str, AblationView]],
                   answers: Mapping[str, dict[str, Any]]) -> str:
    opts = "".join(f'<option value="{esc(b)}">{esc(b)}</option>' for b in benches)
    arts = "".join(case_section(c, overrides, graph_srcs.get(c.case_id), ablations.get(c.case_id),
                                answers.get(c.case_id)) for c in cases)
    return ('<section class="block" id="cases"><h2>Cases</h2><p class="lead">One clean pair each: the context the '
            "model saw (prompt, then its own answer up to the wrong token), coloured by input relevance for Δℓ = "
            "ℓ(target) − ℓ(contrast). Red tokens push towards the wrong target, blue towards the contrast.</p>"
            '<div class="filter"><input id="case-filter" type="search" placeholder="filter: item, category, '
            f'pattern, token…"><select id="case-bench"><option value="">all benchmarks</option>{opts}</select>'
            f'<span id="case-count" class="note">{len(cases)} shown</span></div>'
            + (arts or '<p class="empty">No cases in this store yet.</p>') + "</section>")


def build_report(cases: Sequence[Case], status_rows: Sequence[StatusRow], out_dir: str | Path,
                 pairs_rows: Sequence[Mapping[str, Any]] | None = None, *, overrides: T.Overrides | None = None,
                 graphs: GraphSource | None = None, title: str = "failtrace report",
                 inline_budget_mb: float = 8.0, comparisons: Sequence[Mapping[str, Any]] = (),
                 answers: Mapping[str, dict[str, Any]] | None = None, progress: bool = False) -> Path:
    """Write the report into ``out_dir`` and return the path of ``index.html``.

    ``pairs_rows`` (``store.pairs()``) adds the list of non-clean pairs with their reasons; ``overrides`` maps a
    case id to ``{"category", "reason"}`` (a stored override, shown and counted instead of the automatic label);
    (default: each case's own ``override``); ``graphs`` maps a case id to its pruned graph, a stored graph record or
    a PrunedGraph (a dict or a function; default: each case's own ``graph``; none: no picture); ``comparisons``
    (rows of the ``comparisons`` table) add the sections "Across models" / "Across checkpoints" (Fig. 4–7);
    ``answers`` (``store.cases.case_answers``) shows each case's answer, the checker's reason and the fix;
    ``progress`` shows a bar while the graph pictures are drawn (about 0.2 s each).
    """
    from failtrace.report.publish import own_files, published

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FailtraceError(f"--out {out} is a file; give a folder for the report")
    refuse_over_stores(own_files(out), "the report")
    out.mkdir(parents=True, exist_ok=True)
    cases = list(cases)

    def draw(stage: Path) -> Path:  # the whole report, into the staging folder (report/publish.py)
        return _draw(stage, cases, status_rows, pairs_rows, overrides, graphs, title, inline_budget_mb, comparisons,
                     answers, progress)

    return published(out, draw)


def _draw(out: Path, cases: list[Case], status_rows: Sequence[StatusRow],
          pairs_rows: Sequence[Mapping[str, Any]] | None, overrides: T.Overrides | None, graphs: GraphSource | None,
          title: str, inline_budget_mb: float, comparisons: Sequence[Mapping[str, Any]],
          answers: Mapping[str, dict[str, Any]] | None, progress: bool) -> Path:
    """:func:`build_report`'s drawing, into ``out`` (a staging folder)."""
    from failtrace.report.compare_figs import across_sections

    if overrides is None:  # load_cases attaches each case's newest override
        overrides = {c.case_id: c.override for c in cases if getattr(c, "override", None)}
    benches = T.benchmarks_of(cases, status_rows)
    tables = compute_tables(cases, status_rows, overrides)
    for row in tables["cases"]:  # what the case page warns of, in its row too (and tables/cases.csv)
        row["caveat"] = caveats((answers or {}).get(row["case_id"]))
    _write_tables(tables, out, pairs_rows)
    figs = _figures(tables, benches, out / "figures")
    graph_srcs, ablations = _graph_images(cases, graphs, out, int(inline_budget_mb * 2**20), progress)
    body = summary_section(tables, figs)
    if pairs_rows is not None:
        nc = _non_clean(pairs_rows)
        body = body.replace("</section>", f"<details><summary>Non-clean pairs ({len(nc)}) and their reasons"
                            f"</summary>{html_table(nc, _PAIR_COLS)}</details></section>", 1)
    body += "".join(benchmark_section(b, cases, tables, figs) for b in benches)
    across, extra_nav = across_sections(comparisons, out)
    body += across
    body += _cases_section(cases, benches, overrides, graph_srcs, ablations, answers or {})
    models = sorted({c.model for c in cases} | {r.model for r in status_rows})
    subtitle = (f"{', '.join(models) or 'no model'} · {', '.join(benches) or 'no benchmark'} · "
                f"{count_of(len(cases), 'case')}")
    index = out / "index.html"  # in the private staging folder: moved into place whole, with the rest
    index.write_text(page(title, subtitle, benches, body, extra_nav), encoding="utf-8")
    os.chmod(index, 0o644)
    return index


def build_report_from_store(st: Any, out_dir: str | Path, *, benchmark: str | None = None, graphs: bool = True,
                            title: str = "failtrace report", progress: bool = False) -> tuple[Path, int]:
    """The report of an open results store (what ``failtrace report`` and ``failtrace demo`` write): its newest cases
    (with their graphs and overrides), status rows and pairs, optionally one benchmark. Returns (index.html, cases)."""
    from failtrace.store.cases import case_answers, load_cases
    from failtrace.store.comparisons import load_comparisons

    if benchmark is not None:
        st.require_benchmark(benchmark)
    rows = st.status_rows()
    pairs = st.pairs()
    cases = load_cases(st, benchmark=benchmark, with_graph=graphs)
    gone = {c.case_id for c in cases if c.rejected}  # a pair a reviewer rejected: in no figure, Fig. 4-7 included
    comparisons = [r for r in load_comparisons(st) if (benchmark is None or r["benchmark"] == benchmark)
                   and r["case_id"] not in gone]
    if benchmark is not None:
        rows = [r for r in rows if r.benchmark == benchmark]
        pairs = [p for p in pairs if p.get("benchmark") == benchmark]
    from failtrace.views.answers import with_contrast_checks  # a contrast outside the checked code is said

    answers = with_contrast_checks(st.get_item, cases, case_answers(st, cases))
    return build_report(cases, rows, out_dir, pairs, title=title, comparisons=comparisons,
                        answers=answers, progress=progress), len(cases)
