"""The explorer's review API (``failtrace serve --review``): accept or reject a pair, override a case's category,
pick another contrast, and read the review log. Every write goes through :func:`_writing` (the write lock, and a
refusal when the store's file was replaced) and is logged as a row of the ``reviews`` table.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from failtrace.cases.record import CATEGORIES
from failtrace.errors import FailtraceError
from failtrace.serve.api import _TEXT, CASE_ID, Cursor, Text, _no_case, _state
from failtrace.store.cases import newest_case_id
from failtrace.store.records import TEXT_MOST, pick_run_id

router = APIRouter()


class ReviewIn(BaseModel):
    """A reviewer's decision on one pair (accept it as a real failure point, or reject it)."""

    pair_run_id: Text = Field(min_length=1, max_length=_TEXT)
    item_id: Text = Field(min_length=1, max_length=_TEXT)
    decision: Literal["accept", "reject"]
    comment: Text = Field(default="", max_length=TEXT_MOST)


class OverrideIn(BaseModel):
    """A reviewer's category for a case, with the reason (stored in the ``overrides`` table)."""

    category: Literal[CATEGORIES]  # type: ignore[valid-type]
    comment: Text = Field(min_length=1, max_length=TEXT_MOST)


READ_ONLY = "read-only explorer: start it with `failtrace serve --review` to record reviews"


@contextlib.contextmanager
def _writing(request: Request) -> Iterator[Any]:
    """The store, for a write, under its write lock. A read-only explorer never gets here (app.py's guard refuses
    the write routes with a 403, before their body is read). Refused (409) when the store's path no longer names the
    file the explorer opened (deleted, or another file renamed over it: the write would be lost with the old file;
    a file copied over it in place keeps its identity and is not detected)."""
    st = _state(request)
    with st.write_lock:
        if not st.same_file():
            raise HTTPException(409, f"the store {st.path.name} was deleted or replaced after the explorer opened it, "
                                     "so nothing was recorded: restart `failtrace serve --review` on it")
        yield st


def _review_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def _insert_review(st: Any, pair_run_id: str, item_id: str, case_id: str | None, decision: str,
                   category: str | None, comment: str, contrast: tuple[int, str] | None = None) -> dict[str, Any]:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    if st.has_reviews:  # strictly after every earlier review (under the write lock): the newest accept or reject is
        # the decision in force (store/reviews.py), so the order must follow insertion even if the clock stepped back
        last = st.store.con.execute("SELECT max(created_at) FROM reviews").fetchone()[0]
        if last is not None and now <= last:
            now = last + timedelta(microseconds=1)
    rid = _review_id(pair_run_id, item_id, decision, comment, now.isoformat())
    row = {"review_id": rid, "pair_run_id": pair_run_id, "item_id": item_id, "case_id": case_id,
           "decision": decision, "category": category, "comment": comment, "created_at": now,
           "contrast_id": contrast[0] if contrast else None, "contrast_text": contrast[1] if contrast else None}
    if not st.has_reviews:  # the first review of this store creates its table
        st.ensure_reviews()
    st.store.con.execute(f"INSERT INTO reviews ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         list(row.values()))
    return row | {"created_at": str(now)}


@router.post("/api/reviews", status_code=201, summary="Accept or reject a pair (needs --review)")
def add_review(body: ReviewIn, request: Request) -> dict[str, Any]:
    with _writing(request) as st:
        ids = [r[0] for r in st.store.con.execute("SELECT run_id FROM runs WHERE stage = 'pairs' ORDER BY run_id")
               .fetchall()]
        try:  # a unique prefix, as /api/item and the command line take run ids; the review stores the whole id
            run_id = pick_run_id(ids, body.pair_run_id, "pair run", st.path.name)
        except FailtraceError as exc:
            raise HTTPException(404, str(exc)) from None
        pair = st.store.con.execute("SELECT status, contrast_id FROM pairs WHERE pair_run_id = ? AND item_id = ?",
                                    [run_id, body.item_id]).fetchone()
        if pair is None:
            raise HTTPException(404, "no such pair")
        if pair[1] is None:  # no_target, unbounded, ...: the search found no target/contrast pair to decide on
            raise HTTPException(409, f"the pair search found no pair for {body.item_id} (status {pair[0]}): there is "
                                     "no target and contrast to accept or reject")
        case_id = newest_case_id(st.store, run_id, body.item_id) if st.has_cases else None
        row = _insert_review(st, run_id, body.item_id, case_id, body.decision, None, body.comment.strip())
        st.refresh_rows()  # the table marks a rejected pair
        return row


@router.post("/api/cases/{case_id}/override", status_code=201,
             summary="Override a case's category with a reason (needs --review)")
def add_override(case_id: CASE_ID, body: OverrideIn, request: Request) -> dict[str, Any]:
    from failtrace.store.cases import SupersededCaseError
    from failtrace.store.overrides import UnchangedCategoryError, set_override
    from failtrace.store.reviews import has_review_table

    comment = body.comment.strip()
    if not comment:
        raise HTTPException(422, "an override needs a comment saying why")
    with _writing(request) as st:
        row = st.store.con.execute("SELECT pair_run_id, item_id FROM cases WHERE case_id = ?", [case_id]).fetchone()
        if row is None:
            raise _no_case(st.store.con, case_id, st.has_cases)
        logged: list[dict[str, Any]] = []  # the review-log row, committed with the override (both or neither; the
        try:  # log's table too, made in the same transaction on a store's first review)
            saved = set_override(st.store, case_id, body.category, comment, also=lambda: logged.append(
                _insert_review(st, row[0], row[1], case_id, "category", body.category, comment)))
        except (SupersededCaseError, UnchangedCategoryError) as exc:  # an older analysis's case page (say which
            raise HTTPException(409, str(exc)) from None  # case the views show), or the category already in force
        finally:  # a rolled-back first review took its table with it
            st.has_reviews = has_review_table(st.store.con)
        review = logged[0]
        st.refresh_rows()  # the table shows the effective category
    return {"override": {k: str(v) if k == "created_at" else v for k, v in saved.items()}, "review": review}


class ContrastIn(BaseModel):
    """A reviewer's pick of another contrast for a case, from its stored top-k alternatives, with the reason."""

    contrast_id: int = Field(ge=0, le=10_000_000, strict=True)  # a JSON integer: not "504", 504.0 or true
    comment: Text = Field(default="", max_length=TEXT_MOST)


@router.post("/api/cases/{case_id}/contrast", status_code=201,
             summary="Pick another contrast from the case's stored alternatives (needs --review)")
def pick_contrast(case_id: CASE_ID, body: ContrastIn, request: Request) -> dict[str, Any]:
    from failtrace.store.alternatives import read
    from failtrace.store.cases import SupersededCaseError, require_current

    with _writing(request) as st:
        row = st.store.con.execute("SELECT pair_run_id, item_id, target_id, contrast_id FROM cases WHERE case_id = ?",
                                   [case_id]).fetchone()
        if row is None:
            raise _no_case(st.store.con, case_id, st.has_cases)
        try:
            require_current(st.store, case_id, "contrast pick")
        except SupersededCaseError as exc:  # a case page of an older analysis: say which case the views show
            raise HTTPException(409, str(exc)) from None
        alts = read(st.store.con, case_id)
        if alts is None:
            raise HTTPException(409, "no alternatives stored for this case: run `failtrace analyse` on the store "
                                     "again (it records them for cases analysed before)")
        if body.contrast_id == row[2]:
            raise HTTPException(422, f"contrast_id {body.contrast_id} is the case's target; pick another of its "
                                     f"stored alternatives")
        if body.contrast_id not in alts["token_ids"]:
            raise HTTPException(422, f"contrast_id {body.contrast_id} is not among the case's stored alternatives "
                                     f"({', '.join(map(str, alts['token_ids']))})")
        if body.contrast_id == row[3]:
            raise HTTPException(422, "contrast_id is already the case's contrast; pick another alternative")
        text = alts["tokens"][alts["token_ids"].index(body.contrast_id)]
        return _insert_review(st, row[0], row[1], case_id, "contrast", None, body.comment.strip(),
                              (body.contrast_id, text))


@router.get("/api/reviews/version", summary="How many reviews there are and the newest's time (a page drawn "
                                           "before another tab's write asks this to know it is out of date)")
def reviews_version(request: Request, cur: Cursor) -> dict[str, Any]:
    if not _state(request).has_reviews:
        return {"count": 0, "newest": None}
    n, newest = cur.execute("SELECT count(*), CAST(max(created_at) AS VARCHAR) FROM reviews").fetchone()
    return {"count": int(n), "newest": newest}


@router.get("/api/reviews", summary="Every stored review (the export of the review table)")
def reviews(request: Request, cur: Cursor) -> dict[str, Any]:
    if not _state(request).has_reviews:
        return {"reviews": []}
    res = cur.execute("SELECT * REPLACE (CAST(created_at AS VARCHAR) AS created_at) FROM reviews "
                      "ORDER BY created_at, review_id")
    keys = [d[0] for d in res.description]
    return {"reviews": [dict(zip(keys, r)) for r in res.fetchall()]}
