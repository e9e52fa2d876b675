"""A person's category for a case, kept beside the computed one (the newest override wins; ``--clear`` removes them,
as does an override back to the computed category).

The command line (``failtrace override``) and the explorer's review form write through these functions, so the same
rules hold for both: a known category, a plain-text reason, a case of the current analysis, and a category that
differs from the one in force.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from failtrace.cases.record import CATEGORIES
from failtrace.errors import FailtraceError
from failtrace.store.cases import find_case_id, require_current
from failtrace.store.records import TEXT_MOST, text_problem
from failtrace.store.records import now as _now

if TYPE_CHECKING:
    from failtrace.store.store import ResultsStore


class UnchangedCategoryError(FailtraceError):
    """An override to the category the case already has: it would be marked as overridden and change nothing."""


def set_override(store: ResultsStore, case_id: str, category: str, reason: str,
                 also: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Record a person's category for a case (kept with the computed one; the newest override wins). Back to the
    computed category, over an override, is a clear: the case is no longer marked overridden (``cleared`` is then
    True in the returned row), rather than overridden to what it already computes. ``also`` runs inside the same
    transaction (the explorer's review-log row: both are committed, or neither)."""
    if category not in CATEGORIES:
        raise FailtraceError(f"unknown category {category!r}; valid: {', '.join(CATEGORIES)}")
    if not reason or not reason.strip():
        raise FailtraceError("an override needs a --reason saying why the computed category is wrong")
    problem = text_problem(reason) or (f"is {len(reason):,} characters long; at most {TEXT_MOST:,} are kept"
                                       if len(reason) > TEXT_MOST else None)
    if problem:  # the explorer's form holds its comment to the same rules
        raise FailtraceError(f"--reason {problem}")
    cid = find_case_id(store, case_id)
    require_current(store, cid, "override")
    computed, newest = store.con.execute(
        "SELECT category, (SELECT o.category FROM overrides o WHERE o.case_id = c.case_id ORDER BY o.created_at DESC "
        "LIMIT 1) FROM cases c WHERE case_id = ?", [cid]).fetchone()
    # back to the computed category over an override: a clear, before the unchanged check (a store written before
    # clears existed can hold a newest override equal to the computed category; "already M-IA" refused the clear)
    clears = newest is not None and category == computed
    if not clears and category == (newest or computed):  # it would be marked overridden and change nothing
        change = " (to change only its reason, clear the override first)" if newest else ""
        raise UnchangedCategoryError(f"case {cid}'s category is already {category}"
                                     f"{' (by an override)' if newest else ''}: give another category to override "
                                     f"it{change}")
    # strictly after the case's newest override, even if the clock stepped back: the newest one is the one in force
    last = store.con.execute("SELECT max(created_at) FROM overrides WHERE case_id = ?", [cid]).fetchone()[0]
    now = _now()
    row = {"category": category, "reason": reason.strip(),
           "created_at": now if last is None or now > last else last + timedelta(microseconds=1), "cleared": clears}
    with store._transaction():
        if row["cleared"]:  # the computed category counts again, as `override --clear` makes it
            store.con.execute("DELETE FROM overrides WHERE case_id = ?", [cid])
        else:
            store.con.execute("INSERT INTO overrides VALUES (?, ?, ?, ?)", [cid, category, row["reason"],
                                                                            row["created_at"]])
        if also is not None:
            also()
    return {"case_id": cid, **row}


def clear_override(store: ResultsStore, case_id: str) -> tuple[str, dict[str, Any]]:
    """Remove a case's overrides, so its computed category counts again; returns (case id, the override that was
    in force). A case without one is an error, not a silent no-op."""
    cid = find_case_id(store, case_id)
    row = store.con.execute("SELECT category, reason FROM overrides WHERE case_id = ? ORDER BY created_at DESC "
                            "LIMIT 1", [cid]).fetchone()
    if row is None:
        raise FailtraceError(f"case {cid} has no override to clear")
    with store._transaction():
        store.con.execute("DELETE FROM overrides WHERE case_id = ?", [cid])
    return cid, {"category": row[0], "reason": row[1]}
