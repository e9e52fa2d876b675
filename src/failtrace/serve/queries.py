"""SQL behind the explorer's cases table: one row per (collection run, item) verdict, with its pair (per pair run)
and its newest case, filtered, faceted, sorted and paged inside DuckDB (``LIMIT/OFFSET``), so a store with 100k
items never loads into Python.

The join (verdicts × runs × generations × pairs × newest cases × overrides × attnlrp k*) is computed once, when the
server starts and after each review write, into an in-memory DuckDB table of its scalar columns only (about 100 bytes
a row: 10 MB for 100k items; handed over as Arrow, never as Python objects). Each table request then runs its page,
total and facet queries on that table instead of repeating the seven-way join nine times (perf/bench_serve.py).

Every value from a request reaches DuckDB as a bound parameter; column names only ever come from the fixed maps
below (:data:`SORT_COLUMNS`, :data:`FACETS`), never from the request text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from failtrace.store.cases import CURRENT_ANALYSES_SQL
from failtrace.store.natural import natural_key
from failtrace.store.reviews import IN_FORCE_SQL, has_review_table
from failtrace.store.schema import NOT_SEARCHED

# The newest analysis run per pair run (the rule of failtrace.store.cases.load_cases, latest=True), then its cases
# with the newest override and the attnlrp k*.
_CASES_CTE = f"""
latest AS ({CURRENT_ANALYSES_SQL}),
ov AS (SELECT case_id, arg_max(category, created_at) AS category FROM overrides GROUP BY case_id),
cs AS (
    SELECT c.case_id, c.pair_run_id, c.item_id, c.category, c.pattern, c.delta_logit AS case_delta,
           ov.category AS override, m.flip_k AS k_star, coalesce(len(m.flip_curve) > 0, false) AS k_computed,
           len(m.flip_curve) - 1 AS k_tried
    FROM cases c JOIN latest l ON l.pair_run_id = c.pair_run_id AND l.analysis_id = c.analysis_id
    LEFT JOIN ov ON ov.case_id = c.case_id
    LEFT JOIN case_methods m ON m.case_id = c.case_id AND m.method = 'attnlrp'),
"""

_NO_CASES_CTE = """
cs AS (SELECT NULL::VARCHAR AS case_id, NULL::VARCHAR AS pair_run_id, NULL::VARCHAR AS item_id,
       NULL::VARCHAR AS category, NULL::VARCHAR AS pattern, NULL::DOUBLE AS case_delta, NULL::VARCHAR AS override,
       NULL::INTEGER AS k_star, false AS k_computed, NULL::INTEGER AS k_tried WHERE false),
"""

# the decision in force on each pair (store/reviews.py's rule); none without a reviews table
_REVIEWS_CTE = f"""
rv AS (SELECT pair_run_id, item_id, decision AS review FROM ({IN_FORCE_SQL})),
"""
_NO_REVIEWS_CTE = """
rv AS (SELECT NULL::VARCHAR AS pair_run_id, NULL::VARCHAR AS item_id, NULL::VARCHAR AS review WHERE false),
"""

_ROWS_CTE = f"""
rows AS (
    SELECT v.run_id, v.item_id, r.benchmark, r.model, v.status AS verdict,
           p.pair_run_id, coalesce(p.status, CASE WHEN v.status = 'fail' THEN '{NOT_SEARCHED}' END) AS pair_status,
           p.target_text, p.contrast_text, coalesce(cs.case_delta, p.delta_logit) AS delta_logit,
           cs.case_id, coalesce(cs.override, cs.category) AS category, cs.override IS NOT NULL AS overridden,
           cs.pattern, cs.k_star, coalesce(cs.k_computed, false) AS k_computed, cs.k_tried, g.n_tokens, rv.review
    FROM verdicts v
    JOIN runs r ON r.run_id = v.run_id
    LEFT JOIN generations g ON g.run_id = v.run_id AND g.item_id = v.item_id
    LEFT JOIN pairs p ON p.run_id = v.run_id AND p.item_id = v.item_id
    LEFT JOIN cs ON cs.pair_run_id = p.pair_run_id AND cs.item_id = p.item_id
    LEFT JOIN rv ON rv.pair_run_id = p.pair_run_id AND rv.item_id = p.item_id)
"""

COLUMNS = ("run_id", "item_id", "benchmark", "model", "verdict", "pair_run_id", "pair_status", "target_text",
           "contrast_text", "delta_logit", "case_id", "category", "overridden", "pattern", "k_star", "k_computed",
           "k_tried", "n_tokens", "review")
SORT_COLUMNS = frozenset(COLUMNS) - {"overridden", "k_computed"}
# facet name (query parameter) -> column of ``rows``
# pair_run: a collection run searched by several pair runs has one row per failure and pair run; this facet picks one
FACETS = {"benchmark": "benchmark", "model": "model", "verdict": "verdict", "pair_run": "pair_run_id",
          "pair_status": "pair_status", "category": "category", "pattern": "pattern"}
NONE_VALUE = "(none)"  # how a facet shows, and a filter selects, rows whose value is NULL


@dataclass
class TableQuery:
    """A validated request for the cases table (the API checks types and ranges; see api.py)."""

    facets: dict[str, list[str]] = field(default_factory=dict)  # facet -> accepted values (any of)
    dl_min: float | None = None
    dl_max: float | None = None
    k_min: int | None = None
    k_max: int | None = None
    has_case: bool | None = None
    search: str | None = None  # substring of the item id (case-insensitive)
    sort: str = "item_id"
    desc: bool = False
    limit: int = 50
    offset: int = 0


def base_sql(has_cases: bool, has_reviews: bool = False) -> str:
    """``WITH ... rows AS (...)``: the joined table every query below selects from."""
    return ("WITH " + (_CASES_CTE if has_cases else _NO_CASES_CTE) + (_REVIEWS_CTE if has_reviews else _NO_REVIEWS_CTE)
            + _ROWS_CTE)


def _where(q: TableQuery, skip_facet: str | None = None) -> tuple[str, list[Any]]:
    """The WHERE clause of ``q`` (without the filter of ``skip_facet``, for that facet's own counts)."""
    parts: list[str] = []
    params: list[Any] = []
    for name, values in q.facets.items():
        if name == skip_facet or not values:
            continue
        col = FACETS[name]
        alts = []
        real = [v for v in values if v != NONE_VALUE]
        if real:
            alts.append(f"{col} IN ({', '.join('?' * len(real))})")
            params.extend(real)
        if NONE_VALUE in values:
            alts.append(f"{col} IS NULL")
        parts.append("(" + " OR ".join(alts) + ")")
    # k* "none" (no flip within the K masked, k_tried = K) means k* > K: it meets a minimum up to K + 1
    for expr, value in (("delta_logit >= ?", q.dl_min), ("delta_logit <= ?", q.dl_max),
                        ("(k_star >= ? OR (k_computed AND k_star IS NULL AND k_tried + 1 >= ?))", q.k_min),
                        ("k_star <= ?", q.k_max)):
        if value is not None:
            parts.append(expr)
            params.extend([value] * expr.count("?"))
    if q.has_case is not None:
        parts.append("case_id IS NOT NULL" if q.has_case else "case_id IS NULL")
    if q.search:
        parts.append("contains(lower(item_id), ?)")
        params.append(q.search.lower())
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


class RowIndex:
    """The joined cases table in an in-memory DuckDB database (module docstring); one cursor per request."""

    def __init__(self) -> None:
        import duckdb

        self.mem = duckdb.connect(":memory:")
        # the item column sorts in natural order (HumanEval/2 before HumanEval/10), by the report's own key
        self.mem.create_function("natural_key", natural_key, ["VARCHAR"], "VARCHAR")

    def refresh(self, store_con: Any, has_cases: bool) -> int:
        """Recompute the join from the store (read through ``store_con``); returns the number of rows."""
        sql = base_sql(has_cases, has_review_table(store_con))
        arrow = store_con.sql(sql + f" SELECT {', '.join(COLUMNS)} FROM rows").to_arrow_table()
        cur = self.mem.cursor()
        try:
            cur.register("joined", arrow)
            cur.execute("CREATE OR REPLACE TABLE rows AS SELECT *, natural_key(item_id) AS item_key FROM joined")
            cur.unregister("joined")
        finally:
            cur.close()
        return arrow.num_rows

    def cursor(self) -> Any:
        return self.mem.cursor()

    def close(self) -> None:
        self.mem.close()


def table(con: Any, q: TableQuery) -> dict[str, Any]:
    """One page of rows, the total that match, and the count per value of every facet (``con``: a RowIndex cursor).

    Facet counts follow the usual rule of faceted search: each facet is counted under all the *other* filters, so
    its values show what choosing them would give; a chosen value stays listed at count 0, so it can be unchosen.
    All the queries read one snapshot: a review's rebuild of ``rows`` between them cannot make page, total and
    counts disagree.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        return _table(con, q)
    finally:
        con.execute("ROLLBACK")  # read only: nothing to keep


def _table(con: Any, q: TableQuery) -> dict[str, Any]:
    where, params = _where(q)
    order = q.sort if q.sort in SORT_COLUMNS else "item_id"
    direction = "DESC" if q.desc else "ASC"
    by = "item_key" if order == "item_id" else order  # natural order of item ids
    key = f"{by} {direction} NULLS LAST"
    if order == "k_star":  # "none" (a curve without a flip within K) is past every k: after them ascending, before
        # them descending; "—" (no case, no curve) is no value, last either way, like the NULLs of other columns
        key = f"(k_star IS NULL AND NOT k_computed), k_star {direction} NULLS {'FIRST' if q.desc else 'LAST'}"
    page = con.execute(f"SELECT {', '.join(COLUMNS)} FROM rows{where} "
                       f"ORDER BY {key}, run_id, item_key, pair_run_id "
                       f"LIMIT ? OFFSET ?", [*params, q.limit, q.offset])
    names = [d[0] for d in page.description]
    rows = [dict(zip(names, r)) for r in page.fetchall()]
    total = con.execute(f"SELECT count(*) FROM rows{where}", params).fetchone()[0]
    facets: dict[str, list[dict[str, Any]]] = {}
    for name, col in FACETS.items():
        fw, fp = _where(q, skip_facet=name)
        counts = con.execute(f"SELECT {col}, count(*) FROM rows{fw} GROUP BY {col} "
                             f"ORDER BY count(*) DESC, {col} NULLS LAST", fp).fetchall()
        facets[name] = [{"value": NONE_VALUE if v is None else v, "count": int(n)} for v, n in counts]
        listed = {f["value"] for f in facets[name]}
        facets[name] += [{"value": v, "count": 0} for v in dict.fromkeys(q.facets.get(name) or []) if v not in listed]
    ranges = con.execute(f"SELECT min(delta_logit), max(delta_logit), min(k_star), max(k_star) FROM rows"
                         ).fetchone()
    return {"total": int(total), "limit": q.limit, "offset": q.offset, "sort": order, "desc": q.desc,
            "rows": rows, "facets": facets,
            "ranges": {"delta_logit": [ranges[0], ranges[1]], "k_star": [ranges[2], ranges[3]]}}
