"""Opening the store's DuckDB file safely: clear errors for bad files, a copy lock, consistent snapshots.

Bad files. DuckDB reports a damaged file sometimes when it opens it (bad header, truncated metadata) and sometimes
only when a query reaches a damaged block (checksum mismatch, short read). Every connection the store uses is a
:class:`GuardedConnection`, which turns those DuckDB errors into a :class:`FailtraceError` naming the file, whenever
they surface. A write that fails is rolled back, so the file is left as it was. An existing file is first opened
read-only and checked (a DuckDB file, a failtrace store, not newer than this failtrace) before it is ever opened for
writing: a file that is not a store is never written to, not even by DuckDB's checkpoint on close.

Snapshots under a running writer: :mod:`failtrace.store.snapshot` (the copy lock is here, it guards every write).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import Any

from failtrace.errors import FailtraceError, errno_named, is_disk_full

try:  # POSIX only; elsewhere snapshots rely on the validate-and-retry loop alone
    import fcntl
except ImportError:  # pragma: no cover - failtrace runs on Linux and macOS
    fcntl = None  # type: ignore[assignment]



def duckdb_header(path: Path) -> bool | None:
    """Whether the regular file ``path`` starts like a DuckDB database (magic bytes ``DUCK`` at offset 8); None when
    that cannot be told without blocking or failing: not a regular file (a pipe, ``/dev/stdout``, a terminal would
    block on the read), or unreadable (permissions: reported as such by the store's own open)."""
    try:
        if not Path(path).is_file():
            return None
        with Path(path).open("rb") as f:
            return f.read(12)[8:12] == b"DUCK"
    except OSError:
        return None


def refuse_over_stores(paths: Iterable[Path], what: str) -> None:
    """Refuse, before anything is written, when one of the files a command writes or removes (``paths``, followed
    through links) is a DuckDB results store: writing over one, under any name, would destroy it."""
    for path in paths:
        if duckdb_header(path):
            via = f" (through the link {path} -> {os.path.realpath(path)})" if Path(path).is_symlink() else ""
            raise FailtraceError(f"{what} would write over {path}, which is a DuckDB results store{via}; failtrace "
                                 f"never writes over a store: move it or choose another --out")


def lock_holder(exc: BaseException) -> tuple[str, str] | None:
    """``(pid, what)`` of the process whose lock DuckDB's conflict ``exc`` names (``what``: ``failtrace <command>``
    when it runs the failtrace CLI, else the program's name), or None when DuckDB names none."""
    holder = re.search(r"held in (.+?) \(PID (\d+)\)", str(exc))
    if holder is None:
        return None
    pid = holder.group(2)
    return pid, failtrace_command(pid) or Path(holder.group(1)).name


def in_use_error(path: Path, exc: BaseException) -> FailtraceError:
    """DuckDB's lock conflict in one sentence: who holds the store (its PID, when DuckDB says), without DuckDB's
    trailing documentation link (which the one-line error cut in the middle)."""
    holder = lock_holder(exc)
    if holder is None:  # not a conflicting process (e.g. a file system without locks): keep DuckDB's words
        said = re.sub(r"\s*See also https?://\S+", "", first_line(exc)).strip()
        return FailtraceError(f"results store {path} could not be locked ({said}); if another process uses it, wait "
                              f"for it to finish, or use another --store")
    pid, command = holder
    if command == "failtrace serve":
        return FailtraceError(f"results store {path} is held by the explorer (`failtrace serve`, process {pid}), "
                              f"which keeps it open while it runs, and DuckDB allows no writer beside a reader in "
                              f"another process; stop the explorer, or serve a copy of the store")
    return FailtraceError(f"results store {path} is in use by process {pid} ({command}) (DuckDB allows one writer "
                          f"at a time, and no reader beside it); wait for it to finish or use another --store")


def failtrace_command(pid: str | int) -> str | None:
    """``failtrace <command>`` when process ``pid`` runs the failtrace CLI (read from /proc), else None."""
    try:
        argv = Path(f"/proc/{int(pid)}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
    except (OSError, ValueError):
        return None
    for i, arg in enumerate(argv[:-1]):
        if Path(arg).name == "failtrace" or (arg == "-m" and argv[i + 1] == "failtrace"):
            rest = [a for a in argv[i + 1 + (arg == "-m"):] if a and not a.startswith("-")]
            return f"failtrace {rest[0]}" if rest else "failtrace"
    return None


def companion_of(path: Path) -> tuple[str, Path] | None:
    """("wal" or "lock", the store) when ``path`` is the write-ahead log or the copy-lock file beside an existing
    results store (``X.wal``, ``X.lock`` with ``X`` a DuckDB file), else None."""
    path = Path(path)
    for kind in ("wal", "lock"):
        if path.name.endswith("." + kind) and len(path.name) > len(kind) + 1:
            store = path.with_name(path.name[: -len(kind) - 1])
            if duckdb_header(store):
                return kind, store
    return None


def check_not_companion(path: Path) -> None:
    """``--store`` naming a store's log or lock file (whether it exists yet or not): name the store itself."""
    found = companion_of(path)
    if found is not None:
        kind, store = found
        raise FailtraceError(f"--store {path} is the {kind} file of the results store {store}, not a store; give the "
                             f"store itself: --store {store}")


def lock_path(path: Path) -> Path:
    """The copy-lock file of the store at ``path``."""
    return path.with_name(path.name + ".lock")


def wal_path(path: Path) -> Path:
    """DuckDB's write-ahead log of the file at ``path``."""
    return path.with_name(path.name + ".wal")


class CopyLock:
    """A re-entrant ``flock`` on ``<store>.lock``: exclusive for the writer, shared for snapshot readers."""

    def __init__(self, path: Path, shared: bool) -> None:
        self.path = lock_path(path)
        self.shared = shared
        self.depth = 0
        self.fd: int | None = None
        if fcntl is None:
            return
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            try:  # a reader in a folder it cannot write: a lock file made by the writer is still usable
                self.fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                self.fd = None  # no lock: the snapshot's validate-and-retry loop still applies

    def acquire(self) -> None:
        if self.depth == 0 and self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
        self.depth += 1

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # also drops the flock
            self.fd = None
        self.depth = 0

    def __enter__(self) -> CopyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_not_dangling(path: Path) -> None:
    """A ``--store`` that is a symbolic link to nothing: say so (DuckDB would report the file as missing or damaged)."""
    if path.is_symlink() and not path.exists():
        raise FailtraceError(f"--store {path} is a symbolic link to {os.readlink(path)}, which does not exist; fix "
                             f"the link or give the store's real path")


def check_log_folder(path: Path) -> None:
    """A writer's DuckDB creates ``<store>.wal`` beside the store at its first commit: refuse a folder that takes no
    new files now, not after the first unit of work (root passes ``os.access`` anywhere, so make and remove one)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".failtrace-probe-", dir=path.parent))
    except OSError as exc:
        raise FailtraceError(f"cannot write results store {path}: its folder {path.parent} does not accept new "
                             f"files ({exc.strerror or exc}), and DuckDB writes its log {wal_path(path).name} there; "
                             f"make the folder writable or give a --store in a writable folder") from None


def is_lock_error(exc: BaseException) -> bool:
    """True for DuckDB's error when another process holds the store's write lock."""
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def is_permission_error(exc: BaseException) -> bool:
    """DuckDB's open error for a file this process may not open in the asked mode (read-only file, folder, mount)."""
    return errno_named(exc) in (errno.EACCES, errno.EPERM, errno.EROFS)


def first_line(exc: BaseException, limit: int = 240) -> str:
    """An error's first line, at most ``limit`` characters: what a one-line message can quote of it."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def translate(path: Path, exc: BaseException, when: str) -> FailtraceError | None:
    """The user-facing error for a DuckDB error on the store at ``path`` (``None``: a bug, let it surface).

    ``when`` is ``"open"`` or ``"query"``: damage found late is reported as damage all the same.
    """
    import duckdb

    if not isinstance(exc, duckdb.Error):
        return None
    text = first_line(exc)
    if is_lock_error(exc):
        return in_use_error(path, exc)
    if is_permission_error(exc):  # e.g. the log cannot be created at a commit: nothing was written
        return FailtraceError(f"cannot write results store {path}: permission denied ({text}); make the store and "
                              f"its folder writable or give another --store; the file was left unchanged")
    if isinstance(exc, duckdb.CatalogException):
        return FailtraceError(f"results store {path} lacks a table failtrace needs ({text}); it is damaged or was "
                              f"not written by failtrace; use another --store")
    if is_disk_full(exc):  # the disk, not the store
        return FailtraceError(f"the disk is full ({text}); results store {path} was not changed by the step that "
                              f"failed (it is not committed); free some space or write to another folder")
    if "cannot encode str as UTF-8" in text:  # a lone surrogate: an argument or a value that is not UTF-8 text
        return FailtraceError(f"a value is not UTF-8 text (a byte such as 0xff in an argument or file name, or an "
                              f"unpaired surrogate) and cannot be stored or looked up in {path}; it was left "
                              f"unchanged ({text})")
    damaged = isinstance(exc, (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException,
                               duckdb.FatalException, duckdb.PermissionException, duckdb.InvalidInputException))
    if damaged or "corrupt" in text.lower() or "checksum" in text.lower():
        what = ("cannot open results store {p}: it is not a DuckDB file, or it is truncated or damaged"
                if when == "open" else
                "results store {p} is damaged or truncated: a query reached a part that cannot be read")
        return FailtraceError(f"{what.format(p=path)} ({text}); the file was left unchanged. Restore it from a copy "
                              f"or give another --store")
    return None


def raise_translated(path: Path, exc: BaseException, when: str) -> None:
    """Raise the user-facing form of ``exc`` if there is one (otherwise return and let the caller re-raise)."""
    err = translate(path, exc, when)
    if err is not None:
        raise err from None


class GuardedConnection:
    """A DuckDB connection whose storage errors become :class:`FailtraceError` and whose writes hold the copy lock.

    ``execute`` returns the guard itself (as DuckDB returns the connection), so ``con.execute(...).fetchone()`` reads
    through the guard too. Anything else is passed to the DuckDB connection unchanged.
    """

    def __init__(self, con: Any, path: Path, lock: CopyLock | None) -> None:
        self._con = con
        self._path = path
        self._lock = lock
        self._in_transaction = False

    def _call(self, fn: Any, *args: Any, locked: bool = False, writes: Path | None = None) -> Any:
        hold = locked and self._lock is not None and not self._in_transaction
        if hold:
            self._lock.acquire()  # type: ignore[union-attr]
        try:
            return fn(*args)
        except Exception as exc:
            code = errno_named(exc) if writes is not None else None
            if code is not None:  # the file written, not the store read
                raise OSError(code, os.strerror(code), str(writes)) from None
            raise_translated(self._path, exc, "query")
            raise
        finally:
            if hold:
                self._lock.release()  # type: ignore[union-attr]

    def execute(self, sql: str, params: Any = None) -> GuardedConnection:
        args = (sql,) if params is None else (sql, params)
        self._call(self._con.execute, *args, locked=True)
        return self

    def copy_to(self, query: str, target: Path, options: str) -> None:
        """``COPY (query) TO target (options)``. A full disk or a refused write of ``target`` is an OSError about
        that file (the caller says where it writes), not DuckDB's error about the store the rows come from."""
        quoted = str(target).replace("'", "''")
        self._call(self._con.execute, f"COPY ({query}) TO '{quoted}' ({options})", locked=True, writes=target)

    def executemany(self, sql: str, params: Any) -> GuardedConnection:
        self._call(self._con.executemany, sql, params, locked=True)
        return self

    def fetchone(self) -> Any:
        return self._call(self._con.fetchone)

    def fetchall(self) -> Any:
        return self._call(self._con.fetchall)

    def fetchmany(self, size: int = 1) -> Any:
        return self._call(self._con.fetchmany, size)

    def begin(self) -> None:
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._call(self._con.begin)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise
        self._in_transaction = True

    def _end(self, fn: Any) -> None:
        try:
            self._call(fn)
        finally:
            if self._in_transaction:
                self._in_transaction = False
                if self._lock is not None:
                    self._lock.release()

    def commit(self) -> None:
        self._end(self._con.commit)

    def rollback(self) -> None:
        self._end(self._con.rollback)

    def cursor(self) -> GuardedConnection:
        return GuardedConnection(self._call(self._con.cursor), self._path, self._lock)

    def close(self) -> None:
        """Close (DuckDB may checkpoint the log into the file: done under the copy lock)."""
        self._call(self._con.close, locked=True)

    @property
    def description(self) -> Any:
        return self._con.description

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def connect(path: Path, read_only: bool, lock: CopyLock | None) -> Any:
    """``duckdb.connect`` with open errors translated; a writer's open (log replay) runs under the copy lock."""
    import duckdb

    if lock is not None:
        lock.acquire()
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        if is_lock_error(exc):
            raise
        if is_permission_error(exc):  # not damage: the file is fine, this user may not open it this way
            mode = "read" if read_only else "write"
            raise FailtraceError(f"cannot open results store {path} for {'reading' if read_only else 'writing'}: "
                                 f"permission denied ({first_line(exc)}); this command needs to {mode} it: "
                                 f"change its permissions or give a copy you can {mode} as --store; the file was "
                                 f"left unchanged") from None
        raise_translated(path, exc, "open")
        raise FailtraceError(f"cannot open results store {path}: {first_line(exc)}") from None
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def transaction(con: Any) -> Iterator[Any]:
    """``with`` block that commits on success and rolls back on any exception."""
    con.begin()
    try:
        yield con
    except BaseException:
        con.rollback()
        raise
    con.commit()
