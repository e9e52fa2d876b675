"""What reviewers decided (the ``reviews`` table the explorer writes under ``failtrace serve --review``).

The table is a log: every accept, reject, category override and contrast pick is a row, none is ever changed. The
decision *in force* on a pair is its newest accept or reject; overrides and contrast picks are not decisions on the
pair. Training data leaves out the pairs whose decision in force is reject (``cases.preferences``).
"""

from __future__ import annotations

from typing import Any

DECISIONS = ("accept", "reject")  # the review rows that decide on a pair; the newest one is in force


def _has_reviews(con: Any) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'reviews'")
                .fetchone()[0])


def decision_in_force(con: Any, pair_run_id: str, item_id: str) -> dict[str, Any] | None:
    """The newest accept or reject of one pair (``decision``, ``comment``, ``created_at`` as UTC text), or None."""
    if not _has_reviews(con):
        return None
    row = con.execute("SELECT decision, comment, strftime(created_at, '%Y-%m-%d %H:%M:%S') FROM reviews "
                      "WHERE pair_run_id = ? AND item_id = ? AND decision IN (?, ?) "
                      "ORDER BY created_at DESC, review_id DESC LIMIT 1", [pair_run_id, item_id, *DECISIONS]).fetchone()
    return None if row is None else {"decision": row[0], "comment": row[1], "created_at": row[2]}


def decisions_in_force(con: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(pair run, item) -> the decision in force on that pair (as :func:`decision_in_force` gives it), for every
    reviewed pair in one query; empty while no review was written."""
    if not _has_reviews(con):
        return {}
    rows = con.execute(
        "SELECT pair_run_id, item_id, decision, comment, strftime(created_at, '%Y-%m-%d %H:%M:%S') FROM ("
        "SELECT *, row_number() OVER (PARTITION BY pair_run_id, item_id ORDER BY created_at DESC, review_id DESC) "
        "AS newest FROM reviews WHERE decision IN (?, ?)) WHERE newest = 1", list(DECISIONS)).fetchall()
    return {(str(p), str(i)): {"decision": d, "comment": c, "created_at": t} for p, i, d, c, t in rows}


def rejected_pairs(con: Any) -> set[tuple[str, str]]:
    """(pair run, item) of every pair whose decision in force is reject; empty while no review was written."""
    return {pair for pair, d in decisions_in_force(con).items() if d["decision"] == "reject"}
