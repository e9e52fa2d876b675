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
# a span of 2..40 characters repeated back to back (lazy: the shortest period); one holding no letter or digit, a
# markdown rule such as "-----" or "*****", is not a loop
_LOOP = re.compile(r"(.{2,40}?)\1{%d,}" % (LOOP_REPEATS - 1), re.S)


def degenerate(text: str) -> str | None:
    """Why a passing answer looks degenerate, or None: one line makes up half of six or more non-empty lines, or a
    span of 2–40 characters repeats back to back ``LOOP_REPEATS`` times or more. A checker passes such text when the
    rule it checks holds (a separator line, no comma); the pair is still a pair, but a reader should know the fix
    is a loop, not an answer. A heuristic on the text alone: it says what it saw, never more."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= 6:
        line, n = Counter(lines).most_common(1)[0]
        if 2 * n >= len(lines):
            return f"one line, ‹{clipped_text(prose_line(line), most=20)}›, is {n} of its {len(lines)} lines"
    for loop in _LOOP.finditer(text):
        span = loop.group(1)
        if any(ch.isalnum() for ch in span):
            times = len(loop.group(0)) // len(span)
            return f"‹{clipped_text(prose_line(span), most=20)}› repeats {times} times in a row"
    return None


def box_note(text: str, note: str) -> str:
    """The note under an answer in the HTML views, whose boxes scroll: :func:`answer_parts`' note, then the text's
    line count where it is more than a box shows, so a reader knows the part that makes a forced answer pass may be
    further down (``show`` prints the whole text on one line)."""
    n = text.count("\n") + 1
    return " · ".join(x for x in (note.strip(), f"{n} lines: scroll the box for the rest" if n > BOX_LINES else "")
                      if x)


def answer_parts(answer: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """A case's context from the stages before it, as (label, text, note) rows every view prints the same way: what
    the model wrote, why the checker failed it, and what forcing the contrast gave instead (which passed the checker)
    (``store.cases.case_answers``), then, where the forced answer looks degenerate (:func:`degenerate`), why; ``note``
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
    return rows
