"""The report page: header, sticky navigation, summary (Table 1, pair statuses, Fig. 1), one section per benchmark
(categories and patterns, segment relevance, faithfulness, its cases) and one article per case.

Everything is inlined (CSS and script from ``report/assets``, figures as data URIs) so ``index.html`` alone is the
whole report and the page never touches the network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from failtrace.cases.record import CATEGORY_TEXT, PATTERN_TEXT
from failtrace.report.casepage import REJECTED_MARK, badge, esc, fmt, plain_token
from failtrace.report.figures import FAITHFULNESS_WIDTH, segments_width
from failtrace.views.palette import CATEGORY_COLORS, PATTERN_COLORS
from failtrace.report.tables import NON_CLEAN
from failtrace.store.schema import NOT_SEARCHED, PAIR_STATUS_TEXT
from failtrace.views.common import count_of, k_star_label

Col = tuple[str, str, str]  # (key, header, kind: text | name (one line) | int | float | pct | code)

TABLE1_COLS: list[Col] = [
    ("benchmark", "benchmark", "text"), ("model", "model", "name"), ("run", "pair run", "code"),
    ("collection_settings", "collection", "text"), ("pair_settings", "pair settings", "text"),
    ("items", "items", "int"), ("passed", "passed", "int"), ("unverifiable", "unverifiable", "int"),
    ("failures", "failures", "int"), ("clean_pairs", "clean pairs", "int"), ("clean_rate", "clean rate", "pct≥"),
    ("clean_rate_decidable", "clean rate, decidable", "pct≥"), ("cases", "cases analysed", "int"),
    ("avg_tokens_per_case", "avg tokens / case", "float1"),
]  # the verdicts together, then what the failures gave
STATUS_COLS: list[Col] = ([("benchmark", "benchmark", "text"), ("pair_run_id", "pair run", "code"),
                           ("collection_settings", "collection", "text"),
                           ("pair_settings", "pair settings", "text"), ("failures", "failures", "int"),
                           ("clean", "clean", "int")] + [(s, PAIR_STATUS_TEXT[s][0], "int") for s in NON_CLEAN]
                          + [("not_paired", PAIR_STATUS_TEXT[NOT_SEARCHED][0], "int")])
KSTAR_COLS: list[Col] = [
    ("method", "method", "text"), ("cases", "cases", "int"), ("flipped", "flipped ≤ K", "int"),
    ("flip_rate_at_K", "flip rate at K", "pct"), ("mean_k_star", "mean k*", "float1"),
    ("median_k_star", "median k*", "float1"), ("K", "K", "int"),
    ("contrast_on_top", "contrast on top at k*", "int"), ("top_recorded", "of flipped, top recorded", "int"),
]


def asset(name: str) -> str:
    return resources.files("failtrace.report").joinpath("assets", name).read_text(encoding="utf-8")


def _numeric(kind: str) -> bool:
    """A right-aligned column (its header too)."""
    return kind in ("int", "pct", "pct≥") or kind.startswith("float")


def _cell(v: Any, kind: str) -> str:
    if v is None or v == "":
        return '<td class="n dim">—</td>' if _numeric(kind) else '<td class="dim">—</td>'
    if kind == "int":
        return f'<td class="n">{int(v):,}</td>'
    if kind == "pct":
        return f'<td class="n">{100 * float(v):.1f}%</td>'
    if kind == "pct≥":  # (rate, is a lower bound): as `failtrace status` prints it
        rate, bound = v
        if not bound:
            return f'<td class="n">{100 * rate:.1f}%</td>'
        why = "a lower bound: failures not paired yet may still be clean"
        return f'<td class="n" title="{why}">≥{100 * rate:.1f}%</td>'
    if kind == "name":  # a model name breaks at its hyphens into three lines otherwise
        return f'<td class="nw">{esc(v)}</td>'
    if kind == "code":
        return f'<td><code title="{esc(v)}">{esc(str(v)[:10])}</code></td>'
    if kind.startswith("float"):
        return f'<td class="n">{float(v):.{int(kind[5:] or 3)}f}</td>'
    return f"<td>{esc(v)}</td>"


def html_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[Col], cls: str = "t", tid: str = "") -> str:
    """A table with numbers right-aligned in tabular figures; None shows as a dash."""
    head = "".join(f'<th class="{"n" if _numeric(k) else ""}">{esc(h)}</th>' for _key, h, k in cols)
    body = "".join("<tr>" + "".join(_cell(r.get(key), kind) for key, _h, kind in cols) + "</tr>" for r in rows)
    idattr = f' id="{tid}"' if tid else ""
    return f'<div class="scroll"><table class="{cls}"{idattr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody>' \
           "</table></div>"


def slug(name: str) -> str:
    return "b-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "x")


def figure(src: str | None, alt: str, caption: str) -> str:
    """An HTML figure with its caption; empty when there is no image."""
    if not src:
        return ""
    return f'<figure><img src="{src}" alt="{esc(alt)}"><figcaption>{caption}</figcaption></figure>'


def summary_section(t: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    """Table 1, the pair-status breakdown and the categories/patterns figure over all benchmarks."""
    status = (html_table(t["pair_status"], STATUS_COLS) if t["pair_status"]
              else '<p class="empty">no pair-finding runs in this store</p>')
    table1 = [{**r, "run": r["pair_run_id"] or "not paired",  # both ids: tables/table1.csv
               **{k: None if r[k] is None else (r[k], r["clean_rate_is_lower_bound"])
                  for k in ("clean_rate", "clean_rate_decidable")}}
              for r in t["table1"]]
    return (
        '<section class="block" id="summary"><h2>Summary</h2>'
        '<p class="lead">One row per collection run and pair-finding run (the paper\'s Table 1). <b>Collection</b>: '
        "the collection run's token budget, and its dtype, thinking mode and checker options when not the defaults "
        "(e.g. IFEval's mode=loose). <b>Failures</b>: items the benchmark's own checker failed. <b>Clean pairs</b>: "
        "failures pinned to a target/contrast token pair whose forced correction passes the checker. <b>Clean "
        "rate</b> = clean pairs / failures (≥: a lower bound, while some failures are not paired yet); "
        "<b>decidable</b>: over the failures not left <i>unbounded</i> (cut at the token budget, never verifiable). "
        "<b>Avg tokens / case</b>: mean context length (prompt + answer before the wrong token) of the analysed "
        "cases.</p>"
        f"{html_table(table1, TABLE1_COLS, tid='table1')}"
        '<h3>Why the other failures are not clean</h3><p class="lead">Status of each failure\'s pair search: '
        + "; ".join(f"<i>{esc(label)}</i> — {esc(meaning)}" for label, meaning in
                    (PAIR_STATUS_TEXT[s] for s in (*NON_CLEAN, NOT_SEARCHED))) + ".</p>"
        f"{status}"
        + figure(figs.get("categories"), "categories and patterns per benchmark",
                 "Share of cases per outcome category and per failure pattern; numbers in the bars are case "
                 "counts. Categories: "
                 + esc("; ".join(f"{n} ({long}): {meaning}" for n, (long, meaning) in CATEGORY_TEXT.items()))
                 + ". Patterns: "
                 + esc("; ".join(f"{n} ({PATTERN_TEXT[n][0]}): {PATTERN_TEXT[n][1]}" for n in ("URT", "OIT")))
                 + ".")
        + "</section>"
    )


def _bench_cases_table(t: Mapping[str, Any], bench: str, cases: Sequence[Any] = ()) -> str:
    rows = [r for r in t["cases"] if r["benchmark"] == bench]
    by_id = {c.case_id: c for c in cases}
    methods = [k[len("k_star_"):] for k in (rows[0] if rows else {}) if k.startswith("k_star_")]
    head = "".join(f'<th class="n">k* {esc(m)}</th>' for m in methods)
    body = []
    for r in rows:
        ks = "".join(f'<td class="n">{k_star_label(by_id[r["case_id"]].methods.get(m))}</td>' for m in methods)
        body.append(
            f'<tr data-bench="{esc(bench)}"><td><a href="#case-{esc(r["case_id"])}">{esc(r["item_id"])}</a>'
            + (f' <span class="warn" title="{esc(r["caveat"])}">⚠</span>' if r.get("caveat") else "") + "</td>"
            f'<td><span class="pill tgt">{esc(plain_token(r["target"]))}</span> vs '
            f'<span class="pill ctr">{esc(plain_token(r["contrast"]))}</span></td>'
            f'<td class="n">{fmt(r["delta_logit"], 2)}</td><td class="n">{r["tokens"]}</td>'
            f'<td>{badge(r["category"], CATEGORY_COLORS)}{" ✎" if r["override_reason"] else ""}'
            f'{REJECTED_MARK if r.get("review") == "reject" else ""}</td>'
            f'<td>{badge(r["pattern"], PATTERN_COLORS)}</td>{ks}</tr>')
    return ('<div class="scroll"><table class="t"><thead><tr><th>item</th><th>target vs contrast</th>'
            '<th class="n">Δℓ</th><th class="n" title="prompt + the answer up to the wrong token">context tokens</th>'
            f'<th>category</th><th>pattern</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>'
            '<p class="note">k*: none = masking up to K tokens does not flip it; — = not computed for that method. '
            "⚠: the case page warns of its fix (it looks degenerate, or the contrast lies outside the code the checker "
            "ran): the case may explain an artefact of the checker rather than the failure; hover for why.</p>")


def _columns(bench: str, t: Mapping[str, Any]) -> str:
    """The two figure columns in the ratio of the figures' widths: a wide segment figure (many segments) squeezed
    into half the row printed its text at about half the size of the faithfulness figure's."""
    n = len({r["segment"] for r in t.get("segments", []) if r["benchmark"] == bench})
    ratio = segments_width(n) / FAITHFULNESS_WIDTH
    return f"--first:{ratio:.2f}fr"  # report.css: the first column's share (narrow screens still stack them)


def _failures_and_clean(t1: Sequence[Mapping[str, Any]]) -> str:
    """``5 failures, 1 clean pair``: each collection run's failures counted once, however many pair runs searched
    them; when one run has several pair runs, their clean pairs are listed per pair run (adding them up would count
    a failure pinned by two runs twice)."""
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for r in t1:
        runs.setdefault(r["run_id"], []).append(r)
    fails = sum(rows[0]["failures"] or 0 for rows in runs.values())
    paired = [r for r in t1 if r["pair_run_id"]]
    if len(paired) == len({r["run_id"] for r in paired}):  # at most one pair run per collection run
        clean = sum(r["clean_pairs"] or 0 for r in paired)
        return f"{count_of(fails, 'failure')}, {count_of(clean, 'clean pair')}"
    each = "; ".join(f"{'?' if r['clean_pairs'] is None else format(r['clean_pairs'], ',')} by pair run "
                     f"{str(r['pair_run_id'])[:10]} ({r['pair_settings'] or 'not in this store'})" for r in paired)
    return f"{count_of(fails, 'failure')}, clean pairs: {each}"


def _no_cases_hint(t1: Sequence[Mapping[str, Any]], status: Sequence[Mapping[str, Any]]) -> str:
    """What to run next when a benchmark has no cases: analyse explains clean pairs only, so with none it would
    explain nothing (the hint points at the pair search, or at the budget when failures were cut by it)."""
    runs = {r["run_id"]: r["failures"] for r in t1 if r["failures"] is not None}
    if runs and not sum(runs.values()):
        return "No cases: the model failed no item of this benchmark, so there is nothing to explain."
    if not any(r["pair_run_id"] for r in t1):
        return "No cases yet: no pair search has run; run <code>failtrace pairs</code>, then <code>failtrace " \
               "analyse</code> on this store."
    if not any(r["clean_pairs"] for r in t1):
        cut = max((r["unbounded"] for r in status), default=0)
        budget = (f" {cut} {'is' if cut == 1 else 'are'} unbounded (cut at the token budget or the model's "
                  "context window, never decided): where the budget cut them, <code>failtrace pairs --rollout-tokens "
                  "N</code> (N above the collection's budget) or collecting with a larger "
                  "<code>--max-new-tokens</code> can decide them; a cut at the window, only a model with a longer "
                  "context.") if cut else ""
        return ("No cases: the pair search found no clean pair to explain (see <i>Why the other failures are not "
                "clean</i>)." + budget + " More contrasts may come from a larger <code>--top-k</code> or "
                "<code>--max-positions</code>, or <code>--sibling MODEL</code>.")
    return "No cases yet: run <code>failtrace analyse</code> on this store."


def _top_sentence(on_top: int | None, recorded: int, flipped: int) -> str:
    """What the flipped cases' top next token at k* is: the contrast, or a third token; said of the cases where it
    was recorded, named as such when those are fewer than the flipped ones ("" when none was recorded)."""
    if on_top is None or not recorded:
        return ""
    if recorded == 1:
        what = "the contrast" if on_top else "a third token, not the contrast"
    else:
        what = f"the contrast in {on_top} of " + ("them" if recorded < flipped else f"those {recorded}") + \
            ("" if on_top == recorded or recorded < flipped else "; in the others, a third token")
    if recorded < flipped:
        return (f" Of those {flipped}, {recorded} {'has' if recorded == 1 else 'have'} the model's top next token at "
                f"k* recorded (the others were analysed before it was): it is {what}.")
    return f" At k* the model's top next token is {what}."


def benchmark_section(bench: str, cases: Sequence[Any], t: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    """Per benchmark: headline numbers, segment relevance, faithfulness (figure + k* table) and the case list."""
    mine = [c for c in cases if c.benchmark == bench]
    t1 = [r for r in t["table1"] if r["benchmark"] == bench]
    ks = [r for r in t["kstar"] if r["benchmark"] == bench]
    lrp = next((r for r in ks if r["method"] == "attnlrp"), None)
    lead = f"{_failures_and_clean(t1)}, {count_of(len(mine), 'case')} analysed."
    if gone := sum(bool(getattr(c, "rejected", False)) for c in mine):
        lead += (f" A reviewer rejected the pair of {gone} of them (failtrace serve --review): listed and drawn below, "
                 "marked, and counted in no table or figure of this report.")
    for r in t1:  # a newest analysis short of its pair run's clean pairs hides any older, whole one: said here too
        if r.get("pair_run_id") and r.get("cases") and r.get("clean_pairs") and r["cases"] < r["clean_pairs"]:
            lead += (f" The newest analysis of pair run {str(r['pair_run_id'])[:10]} covers {r['cases']} of its "
                     f"{r['clean_pairs']} clean pairs (it stopped early, ran with --limit, or some could not be "
                     "analysed; failtrace status says which, and how an older analysis becomes current again).")
    if lrp and lrp["mean_k_star"] is not None:
        lead += (f" With AttnLRP, masking flips the prediction in {lrp['flipped']} of {count_of(lrp['cases'], 'case')}"
                 f", with {lrp['mean_k_star']:.1f} tokens masked on average where it does (median "
                 f"{lrp['median_k_star']:.1f}; the paper is quoted as needing about 2 tokens, docs/ANALYSES.md).")
        lead += _top_sentence(lrp["contrast_on_top"], lrp["top_recorded"], lrp["flipped"])
    best = max(ks, key=lambda r: r["flipped"], default=None)
    if lrp and best is not None and best["flipped"] > lrp["flipped"]:  # the lead spoke of AttnLRP alone
        lead += (f" {best['method']} flips more of them: {best['flipped']} of {best['cases']} within K = "
                 f"{best['K']}.")
    if not mine:
        return (f'<section class="block" id="{slug(bench)}"><h2>{esc(bench)}</h2><p class="lead">{esc(lead)}</p>'
                f'<p class="empty">{_no_cases_hint(t1, [r for r in t["pair_status"] if r["benchmark"] == bench])}'
                '</p></section>')
    return (
        f'<section class="block" id="{slug(bench)}"><h2>{esc(bench)}</h2><p class="lead">{esc(lead)}</p>'
        f'<div class="grid2" style="{_columns(bench, t)}"><div>'
        + figure(figs.get(f"segments:{bench}"), f"segment relevance for {bench}",
                 "Mean normalised segment relevance (Σ over the segment's tokens of R / max|R|, special token "
                 "ids left out) per outcome category. Positive: the segment pushes towards the wrong target; "
                 "negative: towards the contrast. <i>special</i> is the chat template's own text (role headers "
                 "such as <code>user↵</code>); <i>answer</i> the model's output before the wrong token; "
                 "<i>earlier_user</i> a user turn before the item's own (e.g. a worked example).")
        + "</div><div>"
        + figure(figs.get(f"faithfulness:{bench}"), f"faithfulness for {bench}",
                 "Share of cases whose prediction flips (Δℓ &lt; 0) after masking the top-k positively attributed "
                 "tokens (never special tokens, nor the chat template's own text unless analysed with "
                 "--mask-template), per attribution method. Random order is the floor.")
        + "</div></div><h3>k* per method</h3>"
        '<p class="lead">k* = smallest k that flips the prediction; mean and median over the cases that flipped '
        "within K. <i>Contrast on top at k*</i>: of the flipped cases whose top next token after masking was "
        "recorded, those where the model would then write the contrast rather than a third token.</p>"
        f"{html_table(ks, KSTAR_COLS)}<h3>Cases of {esc(bench)}, one row each</h3>"
        f"{_bench_cases_table(t, bench, mine)}</section>"
    )


def page(title: str, subtitle: str, benches: Sequence[str], body: str,
         extra_nav: Sequence[tuple[str, str]] = ()) -> str:
    """The whole HTML document with the sticky navigation bar (``extra_nav``: (anchor, label) after the benchmarks)."""
    nav = ['<a href="#summary">Summary</a><span class="sep">|</span>']
    nav += [f'<a href="#{slug(b)}">{esc(b)}</a>' for b in benches]
    nav += [f'<a href="#{esc(a)}">{esc(label)}</a>' for a, label in extra_nav]
    nav.append('<span class="sep">|</span><a href="#cases">Cases</a>')
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    heading = f"<h1>{esc(title)}</h1>" if title.strip() else ""  # --title "": no heading; the tab names the models
    tab = title.strip() or f"failtrace report · {subtitle}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(tab)}</title><style>{asset('report.css')}</style></head><body>"
        f'<header class="top">{heading}<div class="sub">{esc(subtitle)} · generated {stamp}</div></header>'
        f'<nav class="bar">{"".join(nav)}</nav><main>{body}</main>'
        '<footer>failtrace report · self-contained: no network requests · tables in tables/*.csv, figures in '
        f"figures/*.png</footer><script>{asset('strip.js')}{asset('report.js')}</script></body></html>"
    )
