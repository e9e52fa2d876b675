"""Natural order of item ids: ``HumanEval/2`` before ``HumanEval/10`` (plain string order puts 10 first).

One key for every place that lists items by id (the report's cases, the explorer's item column), so both agree.
Written by hand: the usual library for this (natsort) would be a dependency for twelve lines.
"""

from __future__ import annotations

import re

_RUNS = re.compile(r"\d+|\D+", re.ASCII)


def natural_key(text: str | None) -> str:
    """A string whose plain order is the natural order of ``text``: each run of digits becomes its length (three
    digits) followed by the digits, so shorter numbers sort first and equal lengths compare digit by digit; other
    characters stay as they are. ``None`` gives ``""`` (first)."""
    if text is None:
        return ""
    return "".join(f"{len(run):03d}{run}" if run[0] in "0123456789" else run
                   for run in _RUNS.findall(text))
