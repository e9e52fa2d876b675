"""The explorer's web app: FastAPI over one results store, with the front end served from the package.

Safety, by construction:

- The store is opened once, read-only unless ``review`` is set; each request reads through its own DuckDB cursor
  (a cheap handle on the same database, never a copy of the file). Writes (review mode only) are serialised by a lock.
- No request path reaches the filesystem: the front end's files are read from the package at start-up into a fixed
  map (:data:`STATIC_FILES`), and ``/static/{name}`` only looks names up in it.
- Request bodies over :data:`MAX_BODY` bytes are refused (413) before they are read; the Host header must name the
  address the server was started on (a page on another site cannot reach the API through DNS rebinding); a write
  must be JSON sent by the explorer's own page or a script (no cross-site request forgery). The last two are
  :mod:`failtrace.serve.guards`.
- Any unexpected error answers a one-line JSON 500 and logs one line, with no traceback (the API is written so
  that none occurs; a damaged store's line names the table, column and case).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from failtrace.errors import FailtraceError
from failtrace.serve.guards import LOOPBACK_HOSTS, HeadAsGet, cross_site_write, host_checked

MAX_BODY = 16 * 1024
# name under /static/ -> (package, file in that package, media type). The report's stylesheet is reused as is.
STATIC_FILES: dict[str, tuple[str, str, str]] = {
    "index.html": ("failtrace.serve", "static/index.html", "text/html; charset=utf-8"),
    "explorer.css": ("failtrace.serve", "static/explorer.css", "text/css; charset=utf-8"),
    "common.js": ("failtrace.serve", "static/common.js", "text/javascript; charset=utf-8"),
    "table.js": ("failtrace.serve", "static/table.js", "text/javascript; charset=utf-8"),
    "case.js": ("failtrace.serve", "static/case.js", "text/javascript; charset=utf-8"),
    "review.js": ("failtrace.serve", "static/review.js", "text/javascript; charset=utf-8"),
    "graph.js": ("failtrace.serve", "static/graph.js", "text/javascript; charset=utf-8"),
    "item.js": ("failtrace.serve", "static/item.js", "text/javascript; charset=utf-8"),
    "app.js": ("failtrace.serve", "static/app.js", "text/javascript; charset=utf-8"),
    "apidocs.js": ("failtrace.serve", "static/apidocs.js", "text/javascript; charset=utf-8"),
    "across.js": ("failtrace.serve", "static/across.js", "text/javascript; charset=utf-8"),
    "report.css": ("failtrace.report", "assets/report.css", "text/css; charset=utf-8"),
    "strip.js": ("failtrace.report", "assets/strip.js", "text/javascript; charset=utf-8"),
}
# No inline script, no other origin: the page can only talk to this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

REVIEWS_DDL = """CREATE TABLE IF NOT EXISTS reviews (
    review_id VARCHAR PRIMARY KEY,
    pair_run_id VARCHAR NOT NULL,
    item_id VARCHAR NOT NULL,
    case_id VARCHAR,
    decision VARCHAR NOT NULL,
    category VARCHAR,
    comment VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    contrast_id INTEGER,
    contrast_text VARCHAR
)"""
# added after the table's first release (a 'contrast' review names the contrast the reviewer picked instead)
REVIEWS_ADDED = ("ALTER TABLE reviews ADD COLUMN IF NOT EXISTS contrast_id INTEGER",
                 "ALTER TABLE reviews ADD COLUMN IF NOT EXISTS contrast_text VARCHAR")


def load_static() -> dict[str, tuple[bytes, str]]:
    """The front end's files, read from the installed package (never from a request path)."""
    out = {}
    for name, (package, rel, media) in STATIC_FILES.items():
        out[name] = (resources.files(package).joinpath(rel).read_bytes(), media)
    return out


def require_store(path: Path) -> None:
    """One clear line when there is no store at ``path`` (checked before anything is opened or bound)."""
    from failtrace.store.connection import check_not_companion, check_not_dangling
    from failtrace.store.store import demo_store_hint

    check_not_companion(path)  # a store's .lock or .wal: name the store, as every other command does
    check_not_dangling(path)  # a link to nothing is named as such, as every other command names it
    if not path.exists():
        raise FailtraceError(f"no results store at {path}; give the --store that `failtrace collect` wrote"
                             f"{demo_store_hint(path)}")


class ServeState:
    """The open store and what the API needs to know about it."""

    def __init__(self, path: str | Path, review: bool = False) -> None:
        from failtrace.store.cases import has_case_tables
        from failtrace.store.store import open_store

        self.path = Path(path)  # as typed: it names the store in messages, as every other command names it
        self._absolute = self.path.absolute()  # same_file() must find the file whatever the working folder becomes
        self.review = review
        from failtrace.serve.queries import RowIndex

        self.store = open_store(self.path, read_only=not review, create=False)  # its own checks name a bad path
        self.file_id = file_id(self._absolute)  # a write checks that the path still names this file (see same_file)
        self.write_lock = threading.Lock()
        self.rows = RowIndex()
        try:
            self.has_cases = has_case_tables(self.store)
            tables = {r[0] for r in self.store.con.execute(
                "SELECT table_name FROM information_schema.tables").fetchall()}
            if "reviews" in tables:  # before the table's join reads it
                self._check_reviews()
            self.refresh_rows()  # reads every row the table shows: a damaged store is refused before review writes
            if review and "reviews" in tables:  # an older reviews table gains the contrast columns the reads use
                self.ensure_reviews()
        except BaseException:
            self.close()
            raise
        self.has_reviews = "reviews" in tables
        self.has_comparisons = "comparisons" in tables and self.has_cases
        self.compared: dict[str, Any] = {}  # Fig. 4-7 data and the series' names, computed on first use (api)
        self.figures_lock = threading.Lock()

    def _check_reviews(self) -> None:
        """Refuse a ``reviews`` table that is not failtrace's review log (another program's, in a store): review mode
        altered it at start, and every read and write of it failed (a 500 on every case page)."""
        from failtrace.store.reviews import foreign_reviews

        if lacks := foreign_reviews(self.store.con):
            raise FailtraceError(f"--store {self.path}: its reviews table lacks {', '.join(lacks)}, so it is not "
                                 "failtrace's review log (another program's table?); rename that table, or serve "
                                 "another store")

    def ensure_reviews(self) -> None:
        """The reviews table with every column, created on the first review (so opening a store with --review
        leaves its file as it was until a reviewer writes). Idempotent; the caller holds the write lock or is
        starting up."""
        columns = {r[0] for r in self.store.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'reviews'").fetchall()}
        if not columns:
            self.store.con.execute(REVIEWS_DDL)
        if not columns or not {"contrast_id", "contrast_text"} <= columns:
            for stmt in REVIEWS_ADDED:
                self.store.con.execute(stmt)
        self.has_reviews = True

    def refresh_rows(self) -> None:
        """Rebuild the cases table's join (at start and after each write)."""
        from failtrace.store.connection import raise_translated

        cur = self.store.con.cursor()
        try:
            self.rows.refresh(cur, self.has_cases)
        except Exception as exc:  # the join reads every case row: damage found here is named like anywhere else
            raise_translated(self.path, exc, "query")
            raise
        finally:
            cur.close()

    def rows_cursor(self) -> Iterator[Any]:
        """A per-request cursor on the in-memory cases table (FastAPI dependency)."""
        cur = self.rows.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def cursor(self) -> Iterator[Any]:
        """A per-request cursor (FastAPI dependency), closed when the request ends."""
        cur = self.store.con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def same_file(self) -> bool:
        """Whether the store's path still names the file opened at start. DuckDB keeps writing to the file it opened:
        after the path is deleted or replaced, a review would answer 201 and be lost with the old file."""
        return file_id(self._absolute) == self.file_id

    def close(self) -> None:
        self.rows.close()
        self.store.close()


def file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``, or None when nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _escaped(value: Any) -> Any:
    """``value`` with every string UTF-8 encodable: a JSON body's lone surrogate ("\\ud800"), echoed back in a
    422's ``input``, would otherwise fail the response itself (a 500 and a traceback on the server's terminal)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


ECHO_CHARS = 120  # a 422 echoes at most this much of a rejected value (a 2,100-character comment came back whole)


def _echo(value: Any) -> Any:
    """A rejected value as a 422 echoes it: at most :data:`ECHO_CHARS` characters (its length said), whatever its
    type (a list of 300 query values or a body holding a 15,000-character comment came back whole), and a number
    JSON cannot carry (NaN, Infinity, 1e999) as text, not as a 500 from the response itself."""
    if value is None or isinstance(value, bool) or (isinstance(value, float) and math.isfinite(value)) or (
            isinstance(value, int) and len(str(value)) <= ECHO_CHARS):
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) > ECHO_CHARS:
        return f"{text[:ECHO_CHARS]}… ({len(text):,} characters)"
    return value if isinstance(value, str) or "NaN" not in text and "Infinity" not in text else text


def _short_inputs(errors: Any) -> Any:
    """FastAPI's 422 errors with each echoed ``input`` shortened and made JSON-safe (:func:`_echo`)."""
    out = []
    for err in errors if isinstance(errors, list) else []:
        if isinstance(err, dict) and "input" in err:
            err = {**err, "input": _echo(err["input"])}
        out.append(err)
    return out


def _internal_error(request: Any, exc: Exception) -> Any:
    """A request that failed: one JSON line to the client and one log line on the server's terminal, no traceback.
    A damaged store's FailtraceError says what and where (table, column, case); anything else only its type."""
    from fastapi.responses import JSONResponse

    detail = str(exc) if isinstance(exc, FailtraceError) else f"internal error: {type(exc).__name__}"
    first = (str(exc).splitlines() or [""])[0][:300]
    logging.getLogger("uvicorn.error").error("%s %s failed: %s", request.method, request.url.path,
                                             detail if isinstance(exc, FailtraceError) else f"{detail}: {first}")
    return JSONResponse({"detail": detail}, status_code=500)


def create_app(store: str | Path, review: bool = False, allowed_hosts: list[str] | None = None,
               any_ip: bool = False) -> Any:
    """The FastAPI app over ``store``. ``allowed_hosts``: Host header values accepted (default: loopback names);
    ``any_ip``: also any IP address (:func:`host_checked`)."""
    from fastapi import FastAPI
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from failtrace.serve.api import router
    from failtrace.serve.review_api import READ_ONLY
    from failtrace.serve.review_api import router as review_router

    state = ServeState(store, review=review)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        state.close()

    # FastAPI's /docs and /redoc pages load their scripts from a CDN; the explorer draws the schema itself (#/api)
    from failtrace import __version__

    app = FastAPI(title="failtrace explorer", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Browse a failtrace results store: cases table, case pages, "
                                              "attribution graphs, reviews (writes only with failtrace serve "
                                              "--review).")
    app.state.ft = state
    app.state.static = load_static()
    app.include_router(router)
    app.include_router(review_router)
    app.add_middleware(host_checked, allowed_hosts=allowed_hosts or LOOPBACK_HOSTS, any_ip=any_ip)
    app.add_middleware(HeadAsGet)  # outside the host check: a HEAD is checked as the GET it stands for

    # the write routes: on a read-only explorer refused here, before their body is read or parsed
    writes = [r.path_regex for r in review_router.routes if "POST" in getattr(r, "methods", ())]

    @app.middleware("http")
    async def guard(request: Any, call_next: Any) -> Any:
        if request.method == "POST" and not state.review and any(w.match(request.url.path) for w in writes):
            return JSONResponse({"detail": READ_ONLY}, status_code=403)
        if "transfer-encoding" in request.headers:  # with a Content-Length too, the server read the chunks past it
            return JSONResponse({"detail": "a chunked body (Transfer-Encoding) is refused: send it with a "
                                           "Content-Length"}, status_code=411)
        length = request.headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY):
            return JSONResponse({"detail": f"request body over {MAX_BODY} bytes"}, status_code=413)
        # POST is the only method that writes (PUT, PATCH and DELETE route to no view: the router's 405 says so)
        if request.method == "POST" and length is None:
            return JSONResponse({"detail": "a Content-Length header is required"}, status_code=411)
        if request.method == "POST":
            refused = cross_site_write(request.headers)
            if refused:
                return JSONResponse({"detail": refused[1]}, status_code=refused[0])
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - answered here, Starlette's outer handler would log a traceback
            response = _internal_error(request, exc)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Any, exc: RequestValidationError) -> Any:  # FastAPI's 422, always encodable
        from failtrace.serve.casedata import finite  # any number left that JSON cannot carry: null

        detail = finite(_escaped(_short_inputs(jsonable_encoder(exc.errors()))))
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Any, exc: Exception) -> Any:  # an error outside the guard (never a traceback)
        return _internal_error(request, exc)

    return app
