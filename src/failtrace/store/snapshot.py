"""A consistent copy of a store that a running writer holds.

Snapshots under a running writer. DuckDB lets one process hold the file; a reader that finds it held copies the file
and its write-ahead log aside and opens the copy. Copying two files while the writer may commit or checkpoint between
(or during) the two copies can give a pair that does not belong together. So every failtrace writer holds an
exclusive ``flock`` on ``<store>.lock`` (a small file beside the store) whenever DuckDB may change the files: while
it opens the store (log replay), during each transaction up to its commit (a commit may checkpoint), for statements
run outside a transaction, and while it closes. A reader copies both files under a shared lock on the same file, so
the copy is the state at a commit boundary. The copy is then opened and every table is counted; a copy that fails
that (a writer that does not take the lock, e.g. an older failtrace, or a file system without ``flock``) is discarded
and the copy is retried, a few times with back-off, before giving up with a clear error. That check is a second line
only: without the lock a torn copy can also open and fail later, at a query (seen in the test). The writer waits
while a reader copies: the cost of a file copy, once per snapshot.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from failtrace.errors import FailtraceError
from failtrace.store.connection import CopyLock, GuardedConnection, first_line, wal_path

SNAPSHOT_ATTEMPTS = 6


def count_tables(con: Any) -> dict[str, int]:
    """Row count of every table: touches each table's storage, so most damage shows here rather than later."""
    names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                       "WHERE table_schema = 'main'").fetchall()]
    return {t: int(con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in names}


def snapshot(path: Path, folder: Path) -> Any:
    """Copy the store (and its log) into ``folder`` at a commit boundary and open the copy; see the module docstring.

    Returns a :class:`GuardedConnection` on the copy (opened writable so DuckDB can replay the copied log into it).
    """
    import duckdb

    copy = folder / path.name
    reader_lock = CopyLock(path, shared=True)
    last: BaseException | None = None
    try:
        for attempt in range(SNAPSHOT_ATTEMPTS):
            for stale in (copy, wal_path(copy)):
                stale.unlink(missing_ok=True)
            try:
                with reader_lock:
                    shutil.copyfile(path, copy)
                    if wal_path(path).exists():
                        shutil.copyfile(wal_path(path), wal_path(copy))
            except FileNotFoundError as exc:  # the log vanished between the check and the copy: no lock held
                last = exc
                continue
            except OSError as exc:
                raise FailtraceError(f"cannot read results store {path} to take a snapshot: {exc}") from None
            con = None
            try:
                con = duckdb.connect(str(copy), read_only=False)
                count_tables(con)
                return GuardedConnection(con, path, None)
            except duckdb.Error as exc:
                last = exc
                if con is not None:
                    con.close()
                time.sleep(0.02 * 2 ** attempt)
    finally:
        reader_lock.close()
    raise FailtraceError(
        f"results store {path} is being written by another process and no consistent snapshot of it could be read "
        f"in {SNAPSHOT_ATTEMPTS} tries ({first_line(last) if last else 'unknown reason'}); try again, or when the "
        f"writer has finished"
    )
