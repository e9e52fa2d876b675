"""A case's answers as every view prints them: what the model wrote, why the checker failed it, and what forcing the
contrast gave instead, each with a note (where a text stopped), and whether that fix looks degenerate; and the HTML
views' note on an answer longer than its scroll box."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from failtrace.store.records import FINISH_LENGTH, FINISH_WINDOW
from failtrace.views.common import clipped_text, prose_line

BOX_LINES = 6  # lines of text the report's and the explorer's answer boxes show before they scroll (9.5em)
LOOP_REPEATS = 8  # a span of text repeated back to back this many times is a loop
LINE_SHARE, MIN_LINES = 2 / 3, 8  # one line this share of at least this many non-empty lines is a loop
# a span of 2..40 characters repeated back to back (lazy: the shortest period); one without a letter (a markdown rule
# "-----", digits "000…", a list "0, 0, 0", closing braces) is not a loop
_LOOP = re.compile(r"(.{2,40}?)\1{%d,}" % (LOOP_REPEATS - 1), re.S)


def degenerate(text: str) -> str | None:
    """Why a passing answer looks degenerate, or None: one line makes up ``LINE_SHARE`` of ``MIN_LINES`` or more
    non-empty lines (a divider between paragraphs, a ``$$`` around formulas stay near half), or a span of 2–40
    characters with a letter repeats back to back ``LOOP_REPEATS`` times or more. A checker passes such text when the
    rule it checks holds (a separator line, no comma); the pair is still a pair, but a reader should know the fix
    is a loop, not an answer. A heuristic on the text alone: it says what it saw, never more."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= MIN_LINES:
        line, n = Counter(lines).most_common(1)[0]
        if n >= LINE_SHARE * len(lines):
            return f"one line, ‹{clipped_text(prose_line(line), most=20)}›, is {n} of its {len(lines)} lines"
    for loop in _LOOP.finditer(text):
        span = loop.group(1)
        if any(ch.isalpha() for ch in span):
            times = len(loop.group(0)) // len(span)
            return f"‹{clipped_text(prose_line(span), most=20)}› repeats {times} times in a row"
    return None


def outside_checked(span: tuple[int, int] | None, recovered: str, prefix: str, contrast: str) -> str | None:
    """Why the contrast is not what made the forced answer pass, or None: the checker reads only ``span`` of the
    forced answer (a code block) and the contrast, at ``len(prefix)``, lies wholly outside it (in the line that opens
    the block, or in prose before it). The pair is still the first token that recovers; but what passes is what the
    model wrote after it, and a reader should not look for the fix in the token itself. None when the checker reads
    the whole text, when the contrast holds a fence mark (it opens or closes the block: the token is the fix), or
    when the forced answer does not start with the answer so far and the contrast (its tokens' text joined otherwise:
    nothing is claimed)."""
    if span is None or not contrast or not recovered.startswith(prefix + contrast):
        return None
    if "`" in contrast:  # a fence mark (```): it opens or closes the block, so it decides what the checker reads
        return None
    at, end = len(prefix), len(prefix) + len(contrast)
    if end > span[0] and at < span[1]:  # in the checked text, or partly
        return None
    where = "before" if end <= span[0] else "after"
    return (f"‹{clipped_text(prose_line(contrast), most=20)}› comes {where} the code the checker ran (character "
            f"{at:,}; the code is characters {span[0]:,}–{span[1]:,}): what passes is the code the model wrote "
            f"{'after it' if where == 'before' else 'before it'}, not the token itself")


_BENCHMARKS: dict[str, Any] = {}


def contrast_check(benchmark: str, item: Any, answer: dict[str, Any] | None, prefix: str,
                   contrast: str) -> str | None:
    """:func:`outside_checked` for a case: the benchmark says which part of the forced answer its checker reads
    (``benchmarks.base.checked_span``); a benchmark this process cannot build, or an item it cannot read, says
    nothing."""
    from failtrace.benchmarks.base import checked_span
    from failtrace.benchmarks.registry import get_benchmark
    from failtrace.errors import FailtraceError

    recovered = (answer or {}).get("recovered")
    if item is None or not recovered:
        return None
    try:
        if benchmark not in _BENCHMARKS:  # built once per process (the demo's builds three checkers)
            _BENCHMARKS[benchmark] = get_benchmark(benchmark)
        span = checked_span(_BENCHMARKS[benchmark], item, recovered)
    except (FailtraceError, KeyError, TypeError, ValueError):
        return None
    return outside_checked(span, recovered, prefix, contrast)


def with_contrast_checks(get_item: Any, cases: Any, answers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``answers`` (case id -> :func:`store.cases.answer_of`) with each case's ``outside`` note
    (:func:`contrast_check`); ``get_item(benchmark, item_id)`` reads the stored item (a missing one: no note)."""
    from failtrace.errors import FailtraceError

    out = dict(answers)
    for c in cases:
        answer = answers.get(c.case_id)
        if not answer or not answer.get("recovered"):
            continue
        try:
            item = get_item(c.benchmark, c.item_id)
        except FailtraceError:
            continue
        note = contrast_check(c.benchmark, item, answer, "".join(c.tokens[c.prompt_length:]), c.contrast_text)
        out[c.case_id] = answer | {"outside": note}
    return out


BOX_CHARS = 120  # characters a box's line holds at the report's width (about; narrower windows wrap sooner)


def box_note(text: str, note: str) -> str:
    """The note under an answer in the HTML views, whose boxes scroll: :func:`answer_parts`' note, then, where the
    text is longer than a box shows, its line count (or, for long lines that wrap, its length), so a reader knows
    the part that makes a forced answer pass may be further down (``show`` prints the whole text on one line)."""
    lines = text.rstrip("\n").split("\n")
    wrapped = sum(max(1, -(-len(line) // BOX_CHARS)) for line in lines)
    more = (f"{len(lines)} lines: scroll the box for the rest" if len(lines) > BOX_LINES else
            f"{len(text):,} characters: scroll the box for the rest" if wrapped > BOX_LINES else "")
    return " · ".join(x for x in (note.strip(), more) if x)


def caveats(answer: dict[str, Any] | None) -> str | None:
    """The warnings :func:`answer_parts` prints under a case's fix, in one line for a table cell (None: none): the
    fix looks degenerate, or the contrast lies outside the code the checker ran. A case with one may explain an
    artefact of the checker rather than the failure."""
    rows = [f"{label}: {text}" for label, text, _ in answer_parts(answer)
            if label in ("the fix looks degenerate", "the contrast is not in the checked code")]
    return "; ".join(rows) or None


def answer_parts(answer: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """A case's context from the stages before it, as (label, text, note) rows every view prints the same way: what
    the model wrote, why the checker failed it, and what forcing the contrast gave instead (which passed the checker)
    (``store.cases.case_answers``), then, where the forced answer looks degenerate (:func:`degenerate`), why, and
    where the contrast lies outside the code the checker ran (``answer["outside"]``: :func:`contrast_check`); ``note``
    says where a text stopped, and stays when a view cuts the text. A value an old store lacks is left out."""
    if not answer:
        return []
    rows = []
    if answer.get("completion") is not None:
        cut = {FINISH_LENGTH: " [stopped at the token budget]",
               FINISH_WINDOW: " [stopped at the model's context window]"}.get(answer.get("finish_reason") or "", "")
        rows.append(("the model wrote", answer["completion"], cut))
    if answer.get("reasons"):
        rows.append(("the checker said", "; ".join(str(r) for r in answer["reasons"]), ""))
    if answer.get("recovered") is not None:
        rows.append(("with the contrast forced", answer["recovered"],
                     "  [passes the checker as cut at the rollout budget: it did not stop]"
                     if answer.get("recovered_cut") else "  [passes the checker]"))
        loop = degenerate(answer["recovered"])
        if loop:  # a row of its own: the note above stays short enough for one terminal line
            rows.append(("the fix looks degenerate", loop, ""))
        if answer.get("outside"):  # set by the caller, which knows the item (contrast_check)
            rows.append(("the contrast is not in the checked code", answer["outside"], ""))
    return rows
