"""``failtrace show``: the analysed cases in the terminal, as a list or one at a time (read-only).

One case reads like its section of the report, without the heatmap: target vs contrast, Δℓ, category and pattern,
k* and the masking curve per method, the top tokens of one method in masking order (each in a little context, the k*
that flip the prediction marked), that method's relevance by segment and, when ``failtrace compare`` re-scored the
case, its Δℓ on the other models and checkpoints. On a long agent trace the masking-order
table is where "what made it fail" is read; the heatmap (``failtrace report``, ``failtrace serve``) shows the rest.
Cases are those of each pair run's newest analysis, as in ``status``, the report and the explorer.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer

from failtrace.cli.checks import check_store_path
from failtrace.cli.console import console as _console
from failtrace.cli.console import store_errors as _store_errors
from failtrace.cli.options import stripped
from failtrace.errors import FailtraceError
from failtrace.store.store import DEFAULT_STORE


def show_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store."),
    case: str = typer.Option(None, "--case", help="Case id (or a unique prefix): show this case."),
    item: str = typer.Option(None, "--item", callback=stripped, help="Item id: show its case (one per pair run)."),
    method: str = typer.Option("attnlrp", "--method", help="Method whose k* the list shows and whose top tokens a "
                                                           "case lists."),
    benchmark: str = typer.Option(None, "--benchmark", "-b", help="Only this benchmark's cases."),
) -> None:
    """List the analysed cases, or show one (--case or --item): target vs contrast, Δℓ, category and pattern, k* per
    method, the top tokens in masking order with their context, relevance by segment."""
    from failtrace.store.cases import find_case_id, has_case_tables, load_cases, newest_case_id, stored_methods
    from failtrace.store.store import open_store

    from failtrace.cases.settings import case_methods  # the registry's methods

    if case is not None and item is not None:
        raise FailtraceError("give --case or --item, not both")
    method = method.strip().lower()
    check_store_path(store, create=False)
    with _store_errors(store), open_store(store, read_only=True) as st:
        if method not in case_methods():  # a method the store holds counts too: registered where it was analysed
            stored = stored_methods(st.con) if has_case_tables(st) else []
            if method not in stored:
                valid = list(case_methods()) + [m for m in stored if m not in case_methods()]
                raise FailtraceError(f"unknown --method {method!r}; valid: {', '.join(valid)}")
        if case is not None:
            cid = find_case_id(st, case)
            chosen = load_cases(st, benchmark=benchmark, case_ids={cid})
            if not chosen:
                row = st.con.execute("SELECT pair_run_id, item_id, benchmark FROM cases WHERE case_id = ?",
                                     [cid]).fetchone()
                if benchmark is not None and row[2] != benchmark:
                    raise FailtraceError(f"case {cid} is a {row[2]} case, not {benchmark}")
                newer = newest_case_id(st, row[0], row[1])
                if newer is None:
                    raise FailtraceError(f"case {cid} is not from the current analysis of pair run {row[0][:10]}, "
                                         f"which has no case of item {row[1]} (analysed with --limit or "
                                         f"stopped early?): failtrace analyse with that analysis's settings adds it")
                raise FailtraceError(f"case {cid} is not from the current analysis; status, the report and the "
                                     f"explorer show case {newer} for item {row[1]}: failtrace show --case {newer} (or "
                                     f"failtrace analyse with its analysis's settings makes that one current again)")
        if case is None and item is None:
            cases = load_cases(st, benchmark=benchmark)
            if not cases and benchmark is not None:
                st.require_benchmark(benchmark)  # an unknown name is an error, not an empty list
        why = None  # where an --item without a case stopped
        if item is not None:
            chosen = load_cases(st, benchmark=benchmark, item_id=item)
            why = None if chosen else _why_no_case(st, item, benchmark)
        across, answers, review = {}, {}, None
        if case is not None or item is not None:
            from failtrace.store.cases import case_answers
            from failtrace.store.comparisons import load_comparisons
            from failtrace.store.reviews import decision_in_force

            if chosen:  # the explorer's accept/reject in force on the pair
                review = decision_in_force(st.con, chosen[0].pair_run_id, chosen[0].item_id)

            for r in load_comparisons(st, {c.case_id for c in chosen}):
                across.setdefault(r["case_id"], []).append(r)
            if across:  # a checkpoint's series is named over every stored checkpoint row, as the report names it
                from failtrace.report.compare_data import series_key, series_parts
                from failtrace.store.comparisons import checkpoint_runs

                parts = series_parts(checkpoint_runs(st))
                for r in (r for rows in across.values() for r in rows if r.get("step") is not None):
                    r["series"] = _run_label(parts.get(series_key(r)), r["model"])
            from failtrace.views.answers import with_contrast_checks

            # what the model wrote, the checker's reason, the fix (and a contrast outside the checked code)
            answers = with_contrast_checks(st.get_item, chosen[:1], case_answers(st, chosen[:1]))
    con = _console()
    if case is None and item is None:
        if not cases:
            con.print(f"{store}: no analysed cases" + (f" of {benchmark}" if benchmark else "")
                      + " (failtrace analyse explains the clean pairs)", highlight=False)
            return
        con.print(_list_table(cases, store, method, con.width))
        return
    if item is not None:
        if not chosen:
            raise FailtraceError(f"no analysed case of item {item!r} in {store}" + (f" ({benchmark})" if benchmark
                                 else "") + f": {why}")
        if len(chosen) > 1:
            raise FailtraceError(f"item {item!r} has {len(chosen)} cases (" + ", ".join(
                f"{c.case_id[:12]} in {c.benchmark}, pair run {c.pair_run_id[:10]}" for c in chosen)
                + "); pick one with --case")
    _print_case(con, chosen[0], method, answers.get(chosen[0].case_id), review)
    if across.get(chosen[0].case_id):
        con.print(_across_table(across[chosen[0].case_id]))
    con.print("The heatmap of every token: failtrace report, failtrace serve (the case page), or this (failtrace "
              "graph takes the same --store and --case):",
              highlight=False)
    con.print(f"  failtrace attribute --store {shlex.quote(str(store))} --case {chosen[0].case_id[:12]} --html "
              "case.html",
              highlight=False)


def _has_cases(st: Any) -> bool:
    from failtrace.store.cases import has_case_tables

    return has_case_tables(st)


def _why_no_case(st: Any, item: str, benchmark: str | None) -> str:
    """Where ``item`` stopped on its way to a case: not collected, passed, not paired, not clean, or not analysed
    (the newest pair run of its newest collection run speaks for it)."""
    runs = st.con.execute("SELECT v.status, r.benchmark FROM verdicts v JOIN runs r USING (run_id) "
                          "WHERE v.item_id = ? ORDER BY r.created_at DESC", [item]).fetchall()
    verdicts = [status for status, bench in runs if benchmark is None or bench == benchmark]
    if not verdicts:
        elsewhere = sorted({bench for _, bench in runs})
        return (f"it was collected in {', '.join(elsewhere)}, not {benchmark}" if elsewhere
                else "no such item was collected (failtrace show lists the cases)")
    if "fail" not in verdicts:
        return f"the model's answer was judged {', '.join(sorted(set(verdicts)))}: nothing to explain"
    pairs = [(status, reason, run) for status, reason, bench, run in st.con.execute(
        "SELECT p.status, p.reason, r.benchmark, p.pair_run_id FROM pairs p JOIN runs r ON r.run_id = p.pair_run_id "
        "WHERE p.item_id = ? ORDER BY r.created_at DESC", [item]).fetchall() if benchmark is None or bench == benchmark]
    if not pairs:
        return "it failed, but no pair search has run on it yet (failtrace pairs)"
    status, reason, pair_run = pairs[0]
    if status == "clean":  # a case of this pair (its pair run), from an analysis that is not the current one
        older = st.con.execute("SELECT case_id FROM cases WHERE item_id = ? AND pair_run_id = ? "
                               "ORDER BY created_at DESC LIMIT 1", [item, pair_run]).fetchone() \
            if _has_cases(st) else None
        return ("its pair is clean, but the newest analysis has no case of it (not analysed yet, analysed with "
                "--limit, or its analysis failed: failtrace analyse says which)"
                + (f"; an older analysis has one, case {older[0][:12]} (show --case takes it once failtrace analyse "
                   "with that analysis's settings makes it current again)" if older else ""))
    from failtrace.views.common import clipped_text, prose_line  # a reason can quote a checker's or a worker's text

    said = clipped_text(prose_line(" ".join(str(reason or "").split())), most=500)  # cut with '…', if at all
    return f"it failed, and its pair search found no clean pair: {status} ({said})"


def _list_table(cases: list[Any], store: Path, method: str, width: int = 100) -> Any:
    from rich.table import Table
    from rich.text import Text

    from failtrace.views.common import k_star_label, shown

    benches = sorted({c.benchmark for c in cases})
    one = len(benches) == 1 and width < 120  # one benchmark on a narrow terminal: named in the title, no column
    t = Table(title=f"analysed cases: {store}" + (f" ({benches[0]})" if one else ""), title_justify="left",
              caption_justify="left",
              caption="failtrace show --case ID (a unique prefix) shows one; * = category set by hand (override); "
                      "✗ = a reviewer rejected the pair (status and the report leave it out); "
                      f"k*: {method}'s, none = no flip within K, — = {method} not computed")
    k_col = "k*"
    # Columns whose text must never be cut (ids, numbers, labels) keep their width; item, benchmark and the pair
    # give way on a narrow terminal (rich shrinks the columns without a minimum).
    keep = {"case": 12, "Δℓ": 7, "category": 12, "pattern": 7, k_col: 4}
    names = [n for n in ("case", "benchmark", "item", "target → contrast", "Δℓ", "category", "pattern", k_col)
             if not (one and n == "benchmark")]
    # rich does not shrink a no-wrap column below its text, so the free width (less borders and padding, 3
    # characters a column) is shared out here between the item and the pair, in proportion to what each needs
    free = max(20, width - sum(keep.values()) - 3 * len(names) - 1 - (0 if one else 9))
    pairs = [f"‹{shown(c.target_text)}› → ‹{shown(c.contrast_text)}›" for c in cases]
    need_item, need_pair = max([4, *(len(c.item_id) for c in cases)]), max([17, *map(len, pairs)])
    item_w = need_item if need_item + need_pair <= free else max(8, free * need_item // (need_item + need_pair))
    most = {"benchmark": 9, "item": item_w, "target → contrast": max(8, free - item_w)}
    for name in names:
        t.add_column(name, justify="right" if name in ("Δℓ", k_col) else "left", no_wrap=True,
                     min_width=keep.get(name), max_width=most.get(name), overflow="ellipsis")
    for c, pair in zip(cases, pairs):
        t.add_row(c.case_id[:12], *([] if one else [c.benchmark]), c.item_id, Text(pair), f"{c.delta_logit:.3f}",
                  (c.effective_category or "—") + ("*" if c.override else "") + (" ✗" if c.rejected else ""),
                  c.pattern or "—",
                  k_star_label(c.methods.get(method)))
    return t


def _print_case(con: Any, c: Any, method: str, answer: dict[str, Any] | None = None,
                review: dict[str, Any] | None = None) -> None:
    from rich.text import Text

    from failtrace.views.answers import answer_parts
    from failtrace.views.common import clipped_text, prose_line, shown
    from failtrace.views.verdicts import verdict_rows

    if method not in c.methods:
        raise FailtraceError(f"case {c.case_id[:12]} has no {method!r} relevance; it has: {', '.join(c.methods)}")
    if len(c.methods[method].input_relevance) != len(c.tokens):
        raise FailtraceError(f"{method}'s relevance of case {c.case_id[:12]} has no value per token; pick another "
                             f"--method ({', '.join(c.methods)})")
    n = len(c.tokens)
    head = Text()
    head.append(f"case {c.case_id} · {c.benchmark} · item {c.item_id} · {c.model}\n")
    head.append("Why ")
    head.append(f"‹{shown(c.target_text)}›", style="bold red")
    head.append(" rather than ")
    head.append(f"‹{shown(c.contrast_text)}›", style="bold blue")
    head.append(f"?  Δℓ = {c.delta_logit:.4f} · {n} tokens ({c.prompt_length} prompt) · "
                f"predicts token {c.position} from tokens 0–{c.position - 1}\n")
    head.append(f"category {c.effective_category or '—'}"
                + (f" (set by hand: {prose_line(str(c.override.get('reason')))}; computed: {c.category})"
                   if c.override else "")
                + f" · pattern {c.pattern or '—'} · relevant segments: {', '.join(c.relevant_segments) or '—'}")
    if review is not None:  # the explorer's accept/reject in force on the pair
        head.append(f"\nreview: the pair was {review['decision']}ed ({review['created_at']} UTC"
                    + (f": {prose_line(str(review['comment']))}" if review["comment"] else "") + ")"
                    + ("; export-dpo, finetune, status and the report leave it out" if review["decision"] == "reject"
                       else ""))
    for label, text, note in answer_parts(answer):  # one line each (↵ for newlines), cut to fit a wide terminal's
        head.append(f"\n{label}: ", style="bold")  # line; the note (where the text stopped) is never cut away
        head.append(clipped_text(prose_line(text), most=max(40, con.width - len(label) - 2 - len(note))) + note)
    for label, text in verdict_rows(c):  # why the computed category and the pattern hold, in words
        head.append(f"\n{label}: ", style="bold")
        head.append(text)
    con.print(head)
    con.print(_methods_table(c))
    con.print(_masked_table(c, method, con.width))
    con.print(_segments_table(c, method))


def _methods_table(c: Any) -> Any:
    from rich.table import Table

    from failtrace.views.common import SUM_NOTE

    t = Table(title="k* per method", title_justify="left", caption_justify="left",
              caption="k*: the fewest top tokens whose masking flips the prediction (none: not within K). "
                      f"{SUM_NOTE} (Δℓ = {c.delta_logit:.4g}).")
    for name in ("method", "k*", "Σ input R", "Δℓ after masking the top k = 0, 1, 2, …"):
        t.add_column(name, justify="right" if name in ("k*", "Σ input R") else "left")
    from failtrace.report.tables import methods_of

    for name in methods_of([c]):
        r = c.methods[name]
        curve = " ".join(f"{v:+.2f}" for v in r.flip_curve) if r.flip_curve else "not computed"
        t.add_row(name, "none" if r.flip_k is None else str(r.flip_k), f"{float(sum(r.input_relevance)):.4g}", curve)
    return t


TOP_CLIP, TOP_CLIP_NARROW = 12, 8  # characters of the "top after k" token: on a wide console, below 130 columns


def _masked_table(c: Any, method: str, width: int = 160) -> Any:
    from rich.table import Table
    from rich.text import Text

    from failtrace.views.common import clipped_text, masked_caption, masked_rows, shown

    rows = masked_rows(c, method)
    t = Table(title=f"top tokens of {method}, in masking order ({c.masking.rule})", title_justify="left",
              caption=masked_caption(c.methods[method].flip_k, rows, "marked ◀"), caption_justify="left")
    # the numbers and labels keep their width; the context gives way on a narrow terminal (cut with …)
    keep = {"k": 2, "position": 8, "segment": 11, "R": 7, "Δℓ after k": 10, "": 1}
    top_most = TOP_CLIP if width >= 130 else TOP_CLIP_NARROW  # on a narrow console its header wraps in two lines
    for name in ("k", "token", "in context", "position", "segment", "R", "Δℓ after k", "top after k", ""):
        t.add_column(name, justify="right" if name in ("k", "position", "R", "Δℓ after k") else "left",
                     no_wrap=name in ("token", "in context"), min_width=keep.get(name),
                     max_width=12 if name == "token" else top_most if name == "top after k" else None)
    room = max(12, width - 88)  # what the other columns leave to the context (its token always shown whole-ish)
    for row in rows:
        token = clipped_text(shown(row["token"]))
        inner = clipped_text(token, most=max(6, room // 3))
        before = clipped_text("".join(shown(x) for x in row["before"]), keep_end=True, most=min(40, room // 3))
        ctx = Text(before, style="dim")
        ctx.append(f"‹{inner}›", style="bold")
        ctx.append(clipped_text("".join(shown(x) for x in row["after"]),
                                most=max(4, min(40, room - len(before) - len(inner) - 2))), style="dim")
        dl = "—" if row["delta_after"] is None else f"{row['delta_after']:.3f}"
        top = "—" if row["top_after"] is None else clipped_text(shown(row["top_after"]), most=top_most)
        t.add_row(str(row["k"]), Text(token), ctx, str(row["position"]), Text(row["segment"] or "—"),
                  f"{row['relevance']:.4g}", dl, Text(top), "◀" if row["flips"] else "")
    return t


def _segments_table(c: Any, method: str) -> Any:
    from rich.table import Table

    r = c.methods[method]
    labels = c.segment_labels()
    t = Table(title=f"{method} relevance by segment", title_justify="left")
    for name in ("segment", "tokens", "Σ R"):
        t.add_column(name, justify="left" if name == "segment" else "right")
    for seg, value in sorted(r.segment_relevance.items(), key=lambda kv: -abs(kv[1])):
        # the stored sums keep the special ids in `special` (the report's table leaves them out): said so here
        said = " (relevant)" if seg in c.relevant_segments else \
            " (chat template and special ids)" if seg == "special" else ""
        t.add_row(seg + said, str(labels.count(seg)), f"{value:.4g}")  # as the report's case section words them
    return t


def _run_label(parts: tuple[str, str] | None, model: str) -> str:
    """What a checkpoint row's series adds to its own folder: nothing when they agree, ``(run <id>)`` when two
    finetune runs share the folder, else the series' whole name (the run was compared under another path too)."""
    from failtrace.report.compare_data import series_of

    if parts is None:
        return ""
    folder, tag = parts
    return tag if folder == series_of(model) else f"{folder} {tag}".rstrip()


def _across_table(rows: list[dict[str, Any]]) -> Any:
    """The case re-scored on other models and checkpoints (``failtrace compare``): corrected = Δℓ < 0 there."""
    from types import SimpleNamespace

    from rich.table import Table
    from rich.text import Text

    from failtrace.views.common import clipped_text, k_star_label, prose_line, shown, writes

    noted = [f"{r['model']}{'' if r.get('step') is None else ' step ' + str(r['step'])}: "
             + "; ".join(prose_line(str(n)) for n in r["notes"]) for r in rows if r.get("notes")]
    t = Table(title="across models and checkpoints (failtrace compare)", title_justify="left", caption_justify="left",
              caption="corrected: that model prefers the contrast (Δℓ < 0); writes: its top next token there, the "
                      "target, the contrast or neither (— not recorded); k*: none = no flip within K, — = "
                      "corrected already or not computed; the report's Fig. 4-7 and the explorer draw them"
                      + "".join(f"\nnote, {line}" for line in noted))  # why a row is not mapped, among others
    series = any(r.get("series") for r in rows)  # a checkpoint's finetune run, where its folder does not say it
    for name in ("model", "step", "split", "Δℓ", "corrected", "writes", "k*", *(["run"] if series else [])):
        t.add_column(name, justify="right" if name in ("step", "Δℓ", "k*") else "left")
    for r in rows:
        dl = r.get("delta_logit")
        mapped = bool(r.get("mapped")) and dl is not None
        top = writes(r) if mapped else None
        t.add_row(str(r["model"]) + (" (the case's model)" if r.get("reference") else ""),
                  "—" if r.get("step") is None else str(r["step"]), r.get("split") or "—",
                  f"{dl:.3f}" if mapped else "—", ("yes" if dl < 0 else "no") if mapped else "not mapped",
                  Text("—" if top is None else f"‹{clipped_text(shown(top[0]), most=12)}› "
                       f"{'neither' if top[1] == 'other' else top[1]}"),
                  k_star_label(SimpleNamespace(flip_curve=r.get("flip_curve") or [], flip_k=r.get("flip_k"))),
                  *([r.get("series") or "—"] if series else []))
    return t


def register(app: typer.Typer) -> None:
    """Add ``show`` to the ``failtrace`` app."""
    app.command("show")(show_command)
