"""The explorer's JSON API (documented by FastAPI at /docs) and the fixed routes of the front end: the reads here,
the review writes in :mod:`failtrace.serve.review_api`.

Every parameter is typed and bounded, so bad input is a 422 with FastAPI's description of what is wrong; ids that
are well formed but not stored are a 404; writes without ``--review`` are a 403.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import AfterValidator, StringConstraints

from failtrace.cases.record import CATEGORIES, CATEGORY_TEXT, PATTERN_TEXT, PATTERNS
from failtrace.errors import FailtraceError
from failtrace.serve import casedata
from failtrace.serve.queries import FACETS, NONE_VALUE, NOT_SEARCHED, SORT_COLUMNS, TableQuery, table
from failtrace.store.schema import PAIR_STATUSES, VERDICT_STATUSES
from failtrace.store.records import (describe_collection_settings, describe_pair_settings, loads, pick_run_id,
                                     text_problem)

router = APIRouter()

CASE_ID = Annotated[str, Path(pattern=r"^[0-9A-Za-z_-]{1,64}$", description="a stored case id")]

def _text(value: str) -> str:
    """Text fields hold text (:func:`~failtrace.store.records.text_problem`, as the CLI's --reason): a 422 here."""
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(_text)]
_VALUE = Annotated[list[Text] | None, Query(max_length=50)]  # a facet filter: up to 50 accepted values
_TEXT = 200  # longest facet value / search text accepted
# a query parameter's text, its length checked as a string's: Query(max_length=...) over the annotated Text said
# "Value should have at most 200 items after validation"
_QUERY_TEXT = Annotated[str, StringConstraints(max_length=_TEXT), AfterValidator(_text)]
_QUERY_ID = Annotated[str, StringConstraints(min_length=1, max_length=_TEXT), AfterValidator(_text)]
SortColumn = Literal[tuple(sorted(SORT_COLUMNS))]  # type: ignore[valid-type]


def _state(request: Request) -> Any:
    return request.app.state.ft


def _cursor(request: Request) -> Any:
    yield from _state(request).cursor()


def _rows_cursor(request: Request) -> Any:
    yield from _state(request).rows_cursor()


Cursor = Annotated[Any, Depends(_cursor)]
RowsCursor = Annotated[Any, Depends(_rows_cursor)]


# facets whose values come from a fixed list: another value is a malformed link (422), not an empty table
_FIXED_VALUES = {"verdict": VERDICT_STATUSES, "pair_status": (*PAIR_STATUSES, NOT_SEARCHED),
                 "category": CATEGORIES, "pattern": PATTERNS}


def _facet_values(values: list[str] | None, name: str = "") -> list[str]:
    """A facet's values; a 422 names the parameter as FastAPI's own do (``loc``), so the page can say which
    filter it refused and draw the table without it."""
    values = values or []
    known = _FIXED_VALUES.get(name)
    bad = [v for v in values if known is not None and v not in known and v != NONE_VALUE]
    said = (f"a filter value is longer than {_TEXT} characters" if any(len(v) > _TEXT for v in values)
            else f"unknown {name} {bad[0]!r}; valid: {', '.join([*known, NONE_VALUE])}" if bad else None)
    if said:
        raise HTTPException(422, [{"type": "value_error", "loc": ["query", name], "msg": said}])
    return values


@router.get("/", include_in_schema=False)  # HEAD too, on every GET route (guards.HeadAsGet)
def index(request: Request) -> Response:
    body, media = request.app.state.static["index.html"]
    return Response(body, media_type=media)


@router.get("/docs", include_in_schema=False)
def docs() -> Response:
    """The API reference is a view of the explorer (drawn from /openapi.json, no CDN)."""
    return RedirectResponse("/#/api")


@router.get("/static/{name}", include_in_schema=False)
def static(name: str, request: Request) -> Response:
    """One of the package's own front-end files, by name from a fixed map; anything else is 404."""
    found = request.app.state.static.get(name)
    if found is None:
        raise HTTPException(404, "no such file")
    return Response(found[0], media_type=found[1], headers={"Cache-Control": "no-cache"})


@router.get("/api/meta", summary="What the store holds and how to draw it")
def meta(request: Request, cur: Cursor) -> dict[str, Any]:
    from failtrace.views.palette import OTHER_SEGMENT_COLOR, SEGMENT_COLORS, SEGMENT_LABEL_COLORS
    from failtrace.views.contrast import ink_on
    from failtrace.views.palette import CATEGORY_COLORS, METHOD_COLORS, PATTERN_COLORS
    from failtrace.store.cases import stored_methods
    from failtrace.store.schema import PAIR_STATUS_TEXT
    from failtrace.views.common import BLUE, RED, SPECIAL_BG, WHITE_TEXT_ABOVE

    st = _state(request)
    methods = stored_methods(cur) if st.has_cases else []  # in the registry's order, as every view lists them
    collections = {run_id: describe_collection_settings(dtype, loads(text, f"runs.settings of run {run_id}", st.path)
                                                        if text else {})
                   for run_id, dtype, text in cur.execute("SELECT run_id, dtype, settings FROM runs WHERE "
                                                          "stage = 'collect'").fetchall()}
    pair_runs = {run_id: {"collection_run": parent, "collection": collections.get(parent, ""),
                          "settings": describe_pair_settings(
                              loads(text, f"runs.settings of run {run_id}", st.path) if text else {})}
                 for run_id, parent, text in cur.execute("SELECT run_id, parent_run_id, settings FROM runs WHERE "
                                                         "stage = 'pairs' ORDER BY created_at, run_id").fetchall()}
    n_cases = cur.execute("SELECT count(*) FROM cases").fetchone()[0] if st.has_cases else 0
    return {"store": st.path.name, "review": st.review, "has_cases": st.has_cases, "n_cases": n_cases,
            "snapshot": st.store.snapshot_note or None,
            "pair_runs": pair_runs,
            "has_comparisons": st.has_comparisons,
            "schema_version": st.store.schema_version, "methods": methods, "categories": list(CATEGORIES),
            "patterns": list(PATTERNS), "facets": list(FACETS), "sort_columns": sorted(SORT_COLUMNS),
            "pair_status_text": {value: list(text) for value, text in PAIR_STATUS_TEXT.items()},
            "category_text": {value: list(text) for value, text in CATEGORY_TEXT.items()},
            "pattern_text": {value: list(text) for value, text in PATTERN_TEXT.items()},
            "colors": {"red": list(RED), "blue": list(BLUE), "special": list(SPECIAL_BG),
                       "white_text_above": {"red": WHITE_TEXT_ABOVE[1], "blue": WHITE_TEXT_ABOVE[-1]},
                       "segments": dict(SEGMENT_COLORS), "segment_labels": SEGMENT_LABEL_COLORS,
                       "other_segment": OTHER_SEGMENT_COLOR, "categories": CATEGORY_COLORS, "patterns": PATTERN_COLORS,
                       "methods": METHOD_COLORS,
                       "ink": {c: ink_on(c) for c in {*CATEGORY_COLORS.values(), *PATTERN_COLORS.values(), "#6b7280"}}}}


@router.get("/api/table", summary="The cases table: one page of rows, the total, counts per facet")
def cases_table(
    request: Request, cur: RowsCursor,
    benchmark: _VALUE = None, model: _VALUE = None, verdict: _VALUE = None, pair_run: _VALUE = None,
    pair_status: _VALUE = None, category: _VALUE = None, pattern: _VALUE = None,
    dl_min: Annotated[float | None, Query(ge=-1e9, le=1e9, allow_inf_nan=False, description="Δℓ at least")] = None,
    dl_max: Annotated[float | None, Query(ge=-1e9, le=1e9, allow_inf_nan=False, description="Δℓ at most")] = None,
    k_min: Annotated[int | None, Query(ge=0, le=100_000, description="attnlrp k* at least")] = None,
    k_max: Annotated[int | None, Query(ge=0, le=100_000, description="attnlrp k* at most")] = None,
    has_case: bool | None = None,
    q: Annotated[_QUERY_TEXT | None, Query(description="text in the item id")] = None,
    sort: SortColumn = "item_id", desc: bool = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0,
) -> dict[str, Any]:
    given = {"benchmark": benchmark, "model": model, "verdict": verdict, "pair_run": pair_run,
             "pair_status": pair_status, "category": category, "pattern": pattern}
    tq = TableQuery(facets={k: _facet_values(v, k) for k, v in given.items() if v}, dl_min=dl_min, dl_max=dl_max,
                    k_min=k_min, k_max=k_max, has_case=has_case, search=q or None, sort=sort, desc=desc,
                    limit=limit, offset=offset)
    return casedata.finite(table(cur, tq))


WHOLE_ID_HEADER = "X-Failtrace-Case"  # on a 404 for a unique short id: the whole id (the explorer follows it)


def _no_case(cur: Any, case_id: str, has_cases: bool, said: str = "") -> HTTPException:
    """A 404 that names the case a short id stands for (the API takes whole ids, the command line prefixes), and
    carries it in the :data:`WHOLE_ID_HEADER` header when only one case starts so."""
    from failtrace.store.cases import case_ids_starting

    ids = case_ids_starting(cur, case_id, 2) if has_cases else []
    if ids and ids != [case_id]:  # (the case itself: it is there, without what was asked for)
        hint = f"did you mean {ids[0]}?" if len(ids) == 1 else f"several start so ({ids[0]}, ...)"
        return HTTPException(404, f"no case has the id {case_id!r}: the API takes whole case ids; {hint}",
                             headers={WHOLE_ID_HEADER: ids[0]} if len(ids) == 1 else None)
    return HTTPException(404, said or f"no case has the id {case_id!r} in this store")


@router.get("/api/cases/{case_id}", summary="One case: tokens, relevance per method, flip curves, labels")
def case(case_id: CASE_ID, request: Request, cur: Cursor) -> dict[str, Any]:
    st = _state(request)
    found = casedata.case_detail(cur, case_id, st.has_reviews) if st.has_cases else None
    if found is None:
        raise _no_case(cur, case_id, st.has_cases)
    return found


@router.get("/api/cases/{case_id}/graph", summary="A case's stored pruned attribution graph")
def case_graph(case_id: CASE_ID, request: Request, cur: Cursor) -> dict[str, Any]:
    has_cases = _state(request).has_cases
    found = casedata.graph_detail(cur, case_id) if has_cases else None
    if found is None:
        raise _no_case(cur, case_id, has_cases, f"no case has the id {case_id!r} in this store, or no graph is stored "
                                                "for it")
    return found


@router.get("/api/cases/{case_id}/compare",
            summary="One case on every compared model/checkpoint, heatmaps aligned to the case's tokens")
def case_compare(case_id: CASE_ID, request: Request, cur: Cursor) -> dict[str, Any]:
    from failtrace.serve.comparedata import case_compare as compare_rows

    st = _state(request)
    found = compare_rows(cur, case_id, _compared(st, cur, "series_names")) if st.has_comparisons else None
    if found is None:
        raise HTTPException(404, "no comparisons stored for this case (run `failtrace compare`)")
    return found


@router.get("/api/compare", summary="The data of Fig. 4-7 (across models and checkpoints)")
def compare_figures(request: Request, cur: Cursor) -> dict[str, Any]:
    st = _state(request)
    if not st.has_comparisons:
        raise HTTPException(404, "no comparisons in this store (run `failtrace compare`)")
    return _compared(st, cur, "figures")


def _compared(st: Any, cur: Any, what: str) -> Any:
    """``figures`` (Fig. 4-7 data) or ``series_names`` (the checkpoint series' names): the explorer never writes
    comparisons, so each is computed once, on first use."""
    from failtrace.serve.comparedata import figures, series_names_of

    with st.figures_lock:
        if what not in st.compared:
            st.compared[what] = (figures if what == "figures" else series_names_of)(cur)
    return st.compared[what]


@router.get("/api/item", summary="One item of a collection run (prompt, completion, verdict, pair)")
def item(request: Request, cur: Cursor, rows: RowsCursor, run_id: Annotated[_QUERY_ID, Query()],
         item_id: Annotated[_QUERY_ID, Query()]) -> dict[str, Any]:
    ids = [r[0] for r in cur.execute("SELECT run_id FROM runs WHERE stage = 'collect' ORDER BY run_id").fetchall()]
    try:  # a unique prefix, as `failtrace status` and the report print ids, is enough (as on the command line)
        run_id = pick_run_id(ids, run_id, "collection run", _state(request).path.name)
    except FailtraceError as exc:
        raise HTTPException(404, str(exc)) from None
    case_of = dict(rows.execute("SELECT pair_run_id, case_id FROM rows WHERE run_id = ? AND item_id = ? AND "
                                "pair_run_id IS NOT NULL", [run_id, item_id]).fetchall())
    found = casedata.item_detail(cur, run_id, item_id, case_of)
    if found is None:
        raise HTTPException(404, "no such item in that run")
    return found
