"""What reviewers decided (the ``reviews`` table the explorer writes under ``failtrace serve --review``).

The table is a log: every accept, reject, category override and contrast pick is a row, none is ever changed. The
decision *in force* on a pair is its newest accept or reject; overrides and contrast picks are not decisions on the
pair. Training data leaves out the pairs whose decision in force is reject (``cases.preferences``).
"""

from __future__ import annotations

from typing import Any

DECISIONS = ("accept", "reject")  # the review rows that decide on a pair; the newest one is in force


def rejected_pairs(con: Any) -> set[tuple[str, str]]:
    """(pair run, item) of every pair whose decision in force is reject; empty while no review was written."""
    if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'reviews'").fetchone()[0]:
        return set()
    rows = con.execute(
        "SELECT pair_run_id, item_id FROM (SELECT pair_run_id, item_id, decision, row_number() OVER (PARTITION BY "
        "pair_run_id, item_id ORDER BY created_at DESC, review_id DESC) AS newest FROM reviews "
        "WHERE decision IN (?, ?)) WHERE newest = 1 AND decision = 'reject'", list(DECISIONS)).fetchall()
    return {(str(p), str(i)) for p, i in rows}
