"""What reviewers decided (the ``reviews`` table the explorer writes under ``failtrace serve --review``).

The table is a log: every accept, reject, category override and contrast pick is a row, none is ever changed. The
decision *in force* on a pair is its newest accept or reject; overrides and contrast picks are not decisions on the
pair. Training data leaves out the pairs whose decision in force is reject (``cases.preferences``).
"""

from __future__ import annotations

from typing import Any

DECISIONS = ("accept", "reject")  # the review rows that decide on a pair; the newest one is in force
# The decision in force on every reviewed pair, one row each (its newest accept or reject): the one rule, read here
# and by the explorer's cases table (serve/queries.py).
IN_FORCE_SQL = ("SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY pair_run_id, item_id ORDER BY created_at "
                "DESC, review_id DESC) AS newest FROM reviews WHERE decision IN ('accept', 'reject')) WHERE newest = 1")


REVIEW_COLUMNS = ("review_id", "pair_run_id", "item_id", "case_id", "decision", "category", "comment", "created_at")


def foreign_reviews(con: Any) -> list[str]:
    """The review-log columns a ``reviews`` table lacks (another program's table in a store), [] for failtrace's own
    or none at all."""
    have = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = "
                                      "'reviews'").fetchall()}
    return [c for c in REVIEW_COLUMNS if c not in have] if have else []


def has_review_table(con: Any) -> bool:
    """Whether the store has a ``reviews`` table (a review log is made by the first review)."""
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'reviews'")
                .fetchall()[0][0])


def _has_reviews(con: Any) -> bool:
    """Whether the store holds a review log; another program's ``reviews`` table is named, not read (every query of
    it failed as a damaged store)."""
    from failtrace.errors import FailtraceError

    if not has_review_table(con):
        return False
    if lacks := foreign_reviews(con):
        raise FailtraceError(f"the store's reviews table lacks {', '.join(lacks)}, so it is not failtrace's review "
                             "log (another program's table?); rename that table")
    return True


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
    rows = con.execute("SELECT pair_run_id, item_id, decision, comment, strftime(created_at, '%Y-%m-%d %H:%M:%S') "
                       f"FROM ({IN_FORCE_SQL})").fetchall()
    return {(str(p), str(i)): {"decision": d, "comment": c, "created_at": t} for p, i, d, c, t in rows}


def rejected_pairs(con: Any) -> set[tuple[str, str]]:
    """(pair run, item) of every pair whose decision in force is reject; empty while no review was written."""
    return {pair for pair, d in decisions_in_force(con).items() if d["decision"] == "reject"}
