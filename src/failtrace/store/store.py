"""The results store: one DuckDB file holding runs, items, generations, verdicts and pairs.

Crash safety. Every record that finishes a unit of work (one item's generation + verdict, one failure's pair) is
written in its own transaction and keyed by a primary key. DuckDB makes a committed transaction durable
(write-ahead log) before ``COMMIT`` returns, and replays the log when the file is opened again. So a process killed
at any moment, even by SIGKILL, loses only units whose transaction had not committed (for ``collect --batch-size B``,
at most the B items of the batch in flight), and a rerun skips everything already committed and can never write a
record twice. ``tests/test_store_crash.py`` kills real runs and compares the store item by item with an
uninterrupted run.

Concurrency and bad files. DuckDB lets one process write a file at a time. Commands that only read (``status``,
``export``) open the file read-only; when a running ``collect``/``pairs`` holds it they read a snapshot copy taken at
a commit boundary. Files that are not stores, damaged or truncated files, and files held by another writer give a
:class:`~failtrace.errors.FailtraceError`, at open or at the first query that meets the damage, and are never
written to. Both are described in :mod:`failtrace.store.connection` and :mod:`failtrace.store.snapshot`. Summaries
and export: :mod:`failtrace.store.export`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from failtrace.errors import FailtraceError, is_disk_full
from failtrace.store import connection, snapshot
from failtrace.store.connection import CopyLock, GuardedConnection, is_lock_error, transaction
from failtrace.store.records import (
    DEFAULT_STORE,
    GenerationRecord,
    RunRecord,
    StatusRow,
    content_hash,
    parse_json_columns,
)
from failtrace.store.items_table import ItemsTable
from failtrace.store.pairs_table import PairsTable
from failtrace.store.runs_table import RunsTable
from failtrace.store.migrate import migrate
from failtrace.store.schema import DDL, SCHEMA_VERSION, TABLES, check_schema, stored_version
from failtrace.tempdirs import owned_tempdir

__all__ = ["DEFAULT_STORE", "GenerationRecord", "ResultsStore", "RunRecord", "StatusRow", "content_hash",
           "open_store"]


DEMO_STORE = Path("out") / "runs.duckdb"  # where `make demo` (failtrace demo --out out) leaves its store


def demo_store_hint(path: Path) -> str:
    """A missing --store's error points at the demo's store when there is one here (the README's tour writes
    ``--store runs.duckdb``; `make demo` wrote ``out/runs.duckdb``)."""
    if DEMO_STORE.is_file() and Path(path).resolve() != DEMO_STORE.resolve():
        return f" (`failtrace demo` wrote {DEMO_STORE} here: --store {DEMO_STORE})"
    return ""


class StoreClosedError(FailtraceError, AttributeError):
    """A query on a closed store. Also an AttributeError, so ``hasattr``/``getattr(con, x, default)`` answer as
    for any object without the attribute."""


class ClosedConnection:
    """A closed store's connection: any use is one clear error, not an AttributeError on None deep in a query."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __getattr__(self, name: str) -> Any:
        raise StoreClosedError(f"results store {self._path} is closed; open it again with open_store")


class ResultsStore(RunsTable, ItemsTable, PairsTable):
    """A failtrace results store (a DuckDB file). Use as a context manager; see the module docstring."""

    def __init__(self, path: str | Path, read_only: bool = False, create: bool = True) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.may_create = create  # False: an existing empty DuckDB file is refused as empty, never filled
        self.con: Any = None
        self._snapshot_dir: Path | None = None
        self.snapshot_holder: tuple[str, str] | None = None  # (pid, what) of the writer a snapshot was taken beside
        self._lock: CopyLock | None = None
        self._migrate_from: int | None = None  # an older layout, brought up to date by the first write
        existed = self._check_path(create)
        try:
            if read_only:
                self.con = self._open_reader()
            else:
                if existed:
                    self._probe()
                self.con = self._open_writer()
            self._check_schema()
        except BaseException as exc:
            self.close()
            if not existed and not read_only and is_disk_full(exc):
                self._forget_new_file()
                raise FailtraceError(f"cannot create results store {self.path}: the disk is full (No space left "
                                     f"on device); nothing was kept. Free some space or give another --store") from None
            raise

    def _forget_new_file(self) -> None:
        """Remove the file this open began to create when the disk filled before its tables were written: DuckDB
        leaves a header that every later open would call damaged (a store that existed before is never touched)."""
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                if path.is_file() and path.stat().st_size <= 1 << 20:
                    path.unlink()
            except OSError:
                pass

    # ---- opening -------------------------------------------------------------------------------------------------

    def _check_path(self, create: bool) -> bool:
        """Refuse paths that cannot be a store; make the parent folder of a new one. Returns whether it exists."""
        try:
            str(self.path.absolute()).encode("utf-8")
        except UnicodeEncodeError:  # a byte that is not UTF-8 in the name: DuckDB cannot open such a path
            raise FailtraceError(f"--store {str(self.path)!r}: its path is not UTF-8 text, which DuckDB cannot "
                                 f"open; rename the file or a folder above it") from None
        if self.path.is_dir():
            raise FailtraceError(f"--store {self.path} is a folder; give a file path such as {DEFAULT_STORE}")
        connection.check_not_companion(self.path)
        connection.check_not_dangling(self.path)
        if self.path.exists():
            if not self.path.is_file():
                raise FailtraceError(f"--store {self.path} is not a regular file; give a DuckDB file path such as "
                                     f"{DEFAULT_STORE}")
            if connection.duckdb_header(self.path) is False:  # by its header: DuckDB judges some names (*.json)
                raise FailtraceError(f"cannot open results store {self.path}: it is not a DuckDB file (no DuckDB "
                                     f"header), or it is truncated; the file was left unchanged. Give a store "
                                     f"written by failtrace")
            return True
        if self.read_only or not create:
            raise FailtraceError(f"no results store at {self.path}; run `failtrace collect --store {self.path}` "
                                 f"first, or pass the right --store{demo_store_hint(self.path)}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FailtraceError(f"cannot create the folder of --store {self.path}: {exc.strerror or exc}; give a "
                                 f"path in a writable folder") from None
        return False

    def _in_use(self, exc: BaseException) -> FailtraceError:
        return connection.in_use_error(self.path, exc)

    def _open_reader(self) -> GuardedConnection:
        """Read-only connection, or a snapshot copy when a writer holds the file."""
        import duckdb

        try:
            con = connection.connect(self.path, read_only=True, lock=None)
        except duckdb.Error as exc:
            if not is_lock_error(exc):
                raise
            self.snapshot_holder = connection.lock_holder(exc)
            self._snapshot_dir = owned_tempdir(None, "failtrace-store-")  # a killed reader's is swept (tempdirs)
            return snapshot.snapshot(self.path, self._snapshot_dir)
        guarded = GuardedConnection(con, self.path, None)
        snapshot.count_tables(guarded)
        return guarded

    def _probe(self) -> None:
        """Check an existing file read-only before writing it: a file that is not a store is never written to."""
        import duckdb

        try:
            con = connection.connect(self.path, read_only=True, lock=None)
        except duckdb.Error as exc:
            raise self._in_use(exc) from None
        self.con = GuardedConnection(con, self.path, None)
        try:
            self._check_schema(probe=True)
            snapshot.count_tables(self.con)
        finally:
            self.con.close()
            self.con = None

    def _open_writer(self) -> GuardedConnection:
        import duckdb

        self._lock = CopyLock(self.path, shared=False)
        if self._lock.fd is None and connection.fcntl is not None:
            raise FailtraceError(f"cannot create {connection.lock_path(self.path)} beside the store; give a --store "
                                 f"in a writable folder")
        connection.check_log_folder(self.path)
        try:
            con = connection.connect(self.path, read_only=False, lock=self._lock)
        except duckdb.Error as exc:
            raise self._in_use(exc) from None
        return GuardedConnection(con, self.path, self._lock)

    def _check_schema(self, probe: bool = False) -> None:
        """Refuse files that are not failtrace stores or are newer; create the tables in a new (empty) file; note
        an older layout, which the first write migrates (:meth:`_transaction`)."""
        if check_schema(self.con, self.path, read_only=self.read_only or not self.may_create) and not probe:
            self._create()
        elif not self.read_only and not probe:
            version = stored_version(self.con, self.path)
            self._migrate_from = version if version < SCHEMA_VERSION else None

    def _create(self) -> None:
        with self._transaction():
            for stmt in DDL:
                self.con.execute(stmt)
            if self.con.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0:
                from failtrace import __version__ as ft_version

                self.con.execute("INSERT INTO schema_version VALUES (?, ?)",
                                 [SCHEMA_VERSION, f"failtrace {ft_version}"])

    def close(self) -> None:
        """Close the connection (DuckDB checkpoints the log into the file, under the copy lock); a later query says
        the store is closed (:class:`ClosedConnection`)."""
        con = self.con
        self.con = ClosedConnection(self.path)
        try:
            if con is not None and not isinstance(con, ClosedConnection):
                con.close()
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None
            if self._snapshot_dir is not None:
                shutil.rmtree(self._snapshot_dir, ignore_errors=True)
                self._snapshot_dir = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_snapshot(self) -> bool:
        """True when this read-only store is a copy taken because another process holds the file."""
        return self._snapshot_dir is not None

    @property
    def snapshot_note(self) -> str:
        """Why this store is a copy, e.g. "snapshot: the explorer in review mode, process 12, holds it"; "" if not."""
        if not self.is_snapshot:
            return ""
        if self.snapshot_holder is None:
            return "snapshot: another process is writing it"
        pid, what = self.snapshot_holder
        if what == "failtrace serve":
            return f"snapshot: the explorer in review mode, process {pid}, holds it"
        return f"snapshot: {what}, process {pid}, is writing it"

    @property
    def schema_version(self) -> int:
        """The store's schema version (the highest applied migration)."""
        return stored_version(self.con, self.path)

    # ---- helpers -------------------------------------------------------------------------------------------------

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, list(params))
        names = [d[0] for d in cur.description]
        return [parse_json_columns(dict(zip(names, row, strict=True)), self.path) for row in cur.fetchall()]

    def _transaction(self) -> AbstractContextManager[Any]:
        """``with store._transaction():`` one atomic write (held under the copy lock until it commits). The first
        one on a store of an older schema version migrates it first (its own transaction), so a command that stops
        on bad input before writing leaves an old store byte for byte as it was, not silently upgraded."""
        if self.read_only:
            raise FailtraceError(f"results store {self.path} was opened read-only")
        if self._migrate_from is not None:
            migrate(self.con, self._migrate_from)
            self._migrate_from = None
        return transaction(self.con)

    # ---- summaries and export (failtrace.store.export) -----------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Number of rows per table."""
        return {t: int(self.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}

    def status_rows(self) -> list[StatusRow]:
        """Per collection run (and per pair-finding run over it): the paper's Table 1 columns."""
        from failtrace.store.export import status_rows

        return status_rows(self)

    def export(self, out_dir: str | Path, fmt: str) -> list[Path]:
        """Write every table to ``out_dir`` as ``<table>.parquet`` or ``<table>.jsonl``; returns the files."""
        from failtrace.store.export import export

        return export(self, out_dir, fmt)

    def _iter_rows(self, sql: str, batch: int = 1000) -> Iterator[dict[str, Any]]:
        cur = self.con.cursor()
        try:
            cur.execute(sql)
            names = [d[0] for d in cur.description]
            while True:
                chunk = cur.fetchmany(batch)
                if not chunk:
                    break
                for row in chunk:
                    yield parse_json_columns(dict(zip(names, row, strict=True)), self.path)
        finally:
            cur.close()


def open_store(path: str | Path = DEFAULT_STORE, read_only: bool = False, create: bool = True) -> ResultsStore:
    """Open (or create, unless ``read_only`` or ``create=False``) the results store at ``path``."""
    return ResultsStore(path, read_only=read_only, create=create)
