"""``failtrace status``: what a results store holds, run by run: collection, pair search, analysed cases.

Three tables, numbered by collection run: the runs (items, passes, failures, tokens), each pair run's statuses and
clean rates, and each pair run's newest analysis (categories, patterns, Δℓ, AttnLRP k*), so one command says how far
a study has got. Each run's id is printed under its table (what ``--run`` and ``--pair-run`` take), each pair run with
every setting that gives it its id. Read-only: a store being written is read from a consistent snapshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from failtrace.cli.checks import check_store_path
from failtrace.cli.console import console as _console
from failtrace.cli.console import count_of
from failtrace.cli.console import fmt as _fmt
from failtrace.cli.console import store_errors as _store_errors
from failtrace.store.store import DEFAULT_STORE


def status_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store."),
) -> None:
    """Counts per benchmark and model: items, passes, failures, pair statuses, length-limit outcomes, clean rates
    (over all failures and over decidable ones), average tokens; and the analysed cases' categories and patterns."""
    from failtrace.store.cases import case_summaries
    from failtrace.store.comparisons import comparison_counts
    from failtrace.store.store import open_store

    check_store_path(store, create=False)
    with _store_errors(store), open_store(store, read_only=True) as st:
        rows = st.status_rows()
        cases = case_summaries(st)
        compared = comparison_counts(st)
        snapshot = f" ({st.snapshot_note})" if st.is_snapshot else ""
    con = _console()
    if not rows:
        con.print(f"{store}: no collection runs yet")
        return
    runs = list({r.run_id: r for r in rows}.values())  # a collection run with two pair runs has two status rows
    number = {r.run_id: n for n, r in enumerate(runs, 1)}
    con.print(_runs_table(runs, f"failtrace status: {store}{snapshot}"))
    for n, r in enumerate(runs, 1):  # the ids --run and --pair-run take (a unique prefix is enough)
        con.print(f"collection run #{n}: {r.run_id}  {r.collection_settings}".rstrip(), highlight=False)
        if r.not_generated:
            con.print(f"collection run #{n}: {count_of(r.not_generated, 'item')} not generated, the prompt filling "
                      "the model's context window (unverifiable)", highlight=False)
    paired = [r for r in rows if r.pair_run_id is not None]
    labels = [_pair_label(number[r.run_id], r, paired) for r in paired]
    if paired:
        con.print(_pairs_table(list(zip(labels, paired))))
        for label, r in zip(labels, paired):
            con.print(f"pair run #{label}: {r.pair_run_id}  {r.pair_settings_text}", highlight=False)
    analysed = [(label, cases[r.pair_run_id]) for label, r in zip(labels, paired) if r.pair_run_id in cases]
    if analysed:
        con.print(_cases_table(analysed))
        for label, s in analysed:
            if s.get("rejected"):
                con.print(f"pair run #{label}: {count_of(s['rejected'], 'case')} whose pair a reviewer rejected "
                          "(failtrace serve --review) left out of these columns, as the report leaves them out; "
                          "failtrace show still lists them", highlight=False)
        for label, r in zip(labels, paired):  # a newest analysis short of the clean pairs hides any older, whole one
            mine = cases.get(r.pair_run_id, {})
            have, clean = mine.get("cases", 0) + mine.get("rejected", 0), r.pairs.get("clean", 0)
            if 0 < have < clean:
                con.print(f"pair run #{label}: its newest analysis has {have} of {clean} clean pairs (stopped early, "
                          "run with --limit, or some could not be analysed); the tables, show and the report use it "
                          "alone: failtrace analyse with its settings adds what it can (it names pairs it cannot); "
                          "analyse with an older analysis's settings makes that one current again", highlight=False)
    else:
        con.print("no analysed cases yet (failtrace analyse explains the clean pairs)", highlight=False)
    if compared["cases"]:
        parts = [count_of(compared[k], noun) for k, noun in (("models", "model"), ("checkpoints", "checkpoint"))
                 if compared[k]]
        own = ", the cases' own model included" if compared["models"] else ""
        con.print(f"compared: {count_of(compared['cases'], 'case')} on {' and '.join(parts)} (by content "
                  f"fingerprint{own}); failtrace show --case ID lists a case's, the report and failtrace serve "
                  "(#/across) draw them", highlight=False)


def _pair_label(n: int, row: Any, paired: list[Any]) -> str:
    """``n`` for a collection run's only pair run; ``na``, ``nb``, ... when it has several (other settings)."""
    mine = [r.pair_run_id for r in paired if r.run_id == row.run_id]
    return str(n) if len(mine) == 1 else f"{n}{chr(ord('a') + mine.index(row.pair_run_id) % 26)}"


def _runs_table(runs: list[Any], title: str) -> Any:
    """One row per collection run, numbered (the pair table below refers to the numbers)."""
    cells = [[str(n), r.benchmark, r.model, str(r.items), str(r.generated), str(r.passed), str(r.failed),
              str(r.unverifiable), _fmt(r.avg_prompt_tokens), _fmt(r.avg_completion_tokens)]
             for n, r in enumerate(runs, 1)]
    return _table(title, ["#", "benchmark", "model", "items", "generated", "passed", "failed", "unverif.",
                          "avg\nprompt\ntokens", "avg\ncompl.\ntokens"], cells, text=("benchmark", "model"))


def _table(title: str, headers: list[str], cells: list[list[str]], caption: str | None = None,
           text: tuple[str, ...] = ()) -> Any:
    """A status table: left-aligned title and caption, the columns of :func:`_columns`, one row per cell list."""
    from rich.table import Table

    # pad_edge=False: the pair table's 13 columns fit 100 terminal columns only without the outer padding
    table = Table(title=title, title_justify="left", caption_justify="left", pad_edge=False, caption=caption)
    _columns(table, headers, text=text)
    for row in cells:
        table.add_row(*row)
    return table


def _pairs_table(paired: list[tuple[str, Any]]) -> Any:
    """Each pair run, labelled by its collection run's number in the table above: one status per failure, the
    length-limit outcomes, both clean rates (the settings are printed below it). Not one table with the runs:
    together they would not fit a 100-column terminal without cutting numbers."""
    from failtrace.store.schema import PAIR_STATUS_TEXT, PAIR_STATUSES

    short = {"clean": "clean", "no_target": "no\ntgt", "no_contrast": "no\nctr", "weak_preference": "weak",
             "unbounded": "unbnd", "unverifiable": "unver"}
    cells = [[label, f"{r.paired}/{r.failed}", *_pair_cells(r)] for label, r in paired]
    headers = ["#", "paired/\nfailed", *(short[s] for s in PAIR_STATUSES), "limit\nhit", "cont.\npass", "cont.\nfail",
               "clean\nrate", "clean\nrate\ndecid."]
    caption = ("paired/failed: failures with a pair status so far (fewer while a run is partial, e.g. "
               "--limit or --item); " + "; ".join(f"{short[s].replace(chr(10), ' ')}: {PAIR_STATUS_TEXT[s][1]}"
                                                 for s in PAIR_STATUSES if s != "clean") + "; "
               "limit hit: paired failures whose completion hit the limit; cont. pass / cont. fail: "
               "of those, continued to the rollout budget (--rollout-tokens), passed (an artefact of the "
               "budget, still unbnd) / stopped and still failed (a real failure, searched); the rest were not "
               "continued, were cut again at the rollout budget, or their own text fixed the verdict (searched); "
               "clean rate = clean / failed; clean rate decid. = clean / (failed - unbnd), over the decidable "
               "failures (≥: a lower bound while failures are not paired yet). Each pair "
               "run's line below gives its settings: k= top-k alternatives tried (--top-k), Δ> the Δℓ a pair "
               "must exceed (--min-delta), pos≤ answer positions walked (--max-positions).")
    return _table("pair search (one status per failure)", headers, cells, caption)


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
    partial = "≥" if r.not_paired else ""  # the failures not paired yet may still be clean
    rates = [_pct(x) if x is None else partial + _pct(x) for x in (r.clean_rate, r.decidable_clean_rate)]
    return [*counts, *limit, *rates]


def _cases_table(analysed: list[tuple[str, dict[str, Any]]]) -> Any:
    """Each pair run's newest analysis (labelled like the pair table): case count, categories (a person's override
    wins, as in the report), patterns, mean Δℓ, and AttnLRP's k* (how many flip within K, their median)."""
    from failtrace.cases.record import CATEGORIES, CATEGORY_TEXT, PATTERN_TEXT, PATTERNS

    cells, unlabelled = [], []
    for label, s in analysed:
        n_cat, n_pat = s["categories"].get(None, 0), s["patterns"].get(None, 0)
        if n_cat or n_pat:  # no column for them (the table must fit 100 columns): named under it instead
            unlabelled.append(f"#{label}: {n_cat} without a category, {n_pat} without a pattern")
        cats = [str(s["categories"].get(c, 0)) for c in CATEGORIES]
        pats = [str(s["patterns"].get(p, 0)) for p in PATTERNS]
        mean = "-" if s["mean_delta"] is None else f"{s['mean_delta']:+.2f}"
        cells.append([label, str(s["cases"]), *cats, *pats, mean, f"{s['flipped']}/{s['cases']}", _fmt(s["median_k"])])
    headers = ["#", "cases", *(c.replace("+", "+\n") for c in CATEGORIES),
               *(p.replace("+", "+\n") for p in PATTERNS), "mean\nΔℓ", "k*\nfound", "median\nk*"]
    caption = ("; ".join(f"{name} ({long}): {meaning}" for name, (long, meaning) in CATEGORY_TEXT.items())
               + ". " + "; ".join(f"{name} ({PATTERN_TEXT[name][0]}): {PATTERN_TEXT[name][1]}"
                                  for name in ("URT", "OIT"))
               + ". k* found: cases whose AttnLRP k* (fewest "
               "top tokens masked to flip it) is within K; median k* over those. failtrace show lists the "
               "cases and prints one; failtrace report draws each"
               + ("; not counted in the columns: " + "; ".join(unlabelled) if unlabelled else "") + ".")
    return _table("analysed cases (newest analysis of each pair run)", headers, cells, caption)


def register(app: typer.Typer) -> None:
    """Add ``status`` to the ``failtrace`` app."""
    app.command("status")(status_command)
