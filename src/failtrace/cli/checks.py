"""Pre-flight checks of output paths, run before any expensive work (loading a model, generating).

A path that cannot be written should fail in a second with its name in the message, not after a ten-minute run.
The checks leave nothing behind: a missing folder is not created here (the writer creates it later); whether the
nearest existing folder accepts new entries is tested by creating and removing an empty temporary folder in it,
because ``os.access`` says yes to root even where writing fails (``/proc``, read-only mounts).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from failtrace.errors import FailtraceError


def _nearest_existing(path: Path, option: str, given: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` for a relative path whose parts are all missing).

    A missing one that is a symbolic link (to nothing, or a loop) is refused: the writer's ``mkdir`` would fail on it
    with "File exists" after the whole run (``--out dangling/x.jsonl``)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        if path.is_symlink():
            shown = str(given) if path == given.absolute() else f"{given}: {path}"
            target = _dangling_target(path, option, shown)
            raise _to_nothing(option, shown, target)
        path = path.parent
    return path


def _check_dotdot(path: Path, option: str) -> None:
    """Refuse a ``..`` after a folder that does not exist: the operating system cannot go up out of it, so the early
    checks (walking up to the nearest existing folder) passed ``nofile/../../proc/a.json``, the command ran, made
    ``nofile/`` to write into, and failed only at the end."""
    here = Path(path.anchor) if path.is_absolute() else Path()
    for part in path.parts[1:] if path.is_absolute() else path.parts:
        if part == ".." and not (here.exists() if str(here) else True):
            raise FailtraceError(f"{option} {path}: '..' after {here}, which does not exist; give the path without "
                                 "it")
        here = here / part


def _probe(folder: Path, option: str, target: Path) -> None:
    """Fail unless a new entry can be created in ``folder``."""
    if not folder.is_dir():
        raise FailtraceError(f"cannot write {option} {target}: {folder} is a file, not a folder; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".failtrace-probe-", dir=folder))
    except OSError as exc:
        raise FailtraceError(f"cannot write {option} {target}: cannot create anything in {folder} "
                             f"({exc.strerror or exc}); choose a writable location") from None


# Files kept beside a store ``X``, and why nothing else may take their path: DuckDB replays ``X.wal`` when ``X``
# opens, and failtrace's readers and writer lock ``X.lock``.
STORE_COMPANIONS = {".wal": "DuckDB replays it when the store opens, so anything else there leaves the store "
                            "unopenable",
                    ".lock": "the store's readers and writer lock it, so anything else there breaks that lock"}


def check_not_store_companion(path: Path, option: str) -> None:
    """Refuse an output at ``<store>.wal`` or ``<store>.lock`` of an existing results store (whatever the store)."""
    from failtrace.store.connection import companion_of

    path = Path(path).expanduser()
    found = companion_of(path)
    if found is not None:
        kind, store = found
        raise FailtraceError(f"{option} {path} is the {kind} file of the results store {store} "
                             f"({STORE_COMPANIONS['.' + kind]}); give another path")


def _dangling_target(path: Path, option: str, shown: str | None = None) -> Path | None:
    """Where ``path`` points when it is a symbolic link to nothing (None otherwise); a loop is refused here, named as
    ``shown`` (the path given, or the given path and which of its folders is the link)."""
    if not path.is_symlink() or path.exists():
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _loop(option, shown or path) from None
    return path.parent / os.readlink(path)  # a relative link is read from the link's folder


def _loop(option: str, shown: object) -> FailtraceError:
    return FailtraceError(f"{option} {shown} is a symbolic link that leads back to itself (a loop); fix the link or "
                          f"give another {option}")


def _to_nothing(option: str, shown: object, target: Path | None) -> FailtraceError:
    return FailtraceError(f"{option} {shown} is a symbolic link to {target}, which does not exist; create that "
                          f"folder, fix the link, or give another {option}")


def check_output_file(path: Path | None, option: str, example: str = "out.json") -> None:
    """``path`` can be written as a file: it is not a folder, not an existing results store (writing over one would
    destroy it; no option writing a file produces a store), and it or its nearest existing folder is writable."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.is_dir():
        raise FailtraceError(f"{option} {path} is a folder; give a file path such as {path / example}")
    target = _dangling_target(path, option)  # written through: fine into a folder that exists, never one made there
    if target is not None:
        try:
            target = path.resolve()  # the end of a chain of links (l1 -> l2 -> missing/x), not only the first
        except (RuntimeError, OSError):  # a loop further along the chain
            raise _loop(option, path) from None
    if target is not None and not target.parent.is_dir():
        raise FailtraceError(f"{option} {path} is a symbolic link to {target}, whose folder {target.parent} does not "
                             f"exist; create that folder, fix the link, or give another {option}")
    from failtrace.store.connection import duckdb_header

    if duckdb_header(path):
        raise FailtraceError(f"{option} {path} is a DuckDB results store; failtrace never writes over one: give "
                             f"another path such as {path.parent / example}")
    check_not_store_companion(path, option)
    _check_dotdot(path, option)
    if path.exists():
        if not path.is_file():  # a pipe, /dev/stdout, a terminal: opening one here could block; the write will tell
            return
        try:
            with path.open("ab"):  # opening for append changes neither content nor modification time
                pass
        except OSError as exc:
            raise FailtraceError(f"cannot write {option} {path}: {exc.strerror or exc}; choose a writable "
                                 f"location") from None
        return
    _probe(_nearest_existing(path.parent, option, path), option, path)


def check_outputs(*specs: tuple[Path | None, str, str], pictures_by_suffix: bool = False) -> None:
    """Several output files of one command, each ``(path, option, example)`` (``None`` paths skipped): each checked
    as by :func:`check_output_file`, no two naming the same file (the second write would silently replace the
    first), and with ``pictures_by_suffix`` (a writer that takes the format from the name) a picture's name ending
    as its example's (``.png``, ``.svg``)."""
    seen: dict[Path, str] = {}
    for path, option, example in specs:
        if path is None:
            continue
        check_output_file(path, option, example)
        suffix = Path(example).suffix.lower()
        if pictures_by_suffix and suffix in (".png", ".svg") and Path(path).suffix.lower() != suffix:
            raise FailtraceError(f"{option} {path}: expected a file name ending in {suffix}")
        key = Path(path).expanduser().resolve()
        if key in seen:
            raise FailtraceError(f"{seen[key]} and {option} name the same file {path}; give each its own path")
        seen[key] = option


def check_output_dir(path: Path | None, option: str) -> None:
    """``path`` can be used as an output folder: it is a writable folder, or one that can be created."""
    if path is None:
        return
    path = Path(path).expanduser()
    target = _dangling_target(path, option)
    if target is not None:  # mkdir would say "File exists" about a path that does not
        raise _to_nothing(option, path, target)
    if path.exists() and not path.is_dir():
        raise FailtraceError(f"{option} {path} is a file, not a folder; give a folder path (it is created if "
                             f"missing)")
    check_not_store_companion(path, option)
    _check_dotdot(path, option)
    _probe(_nearest_existing(path, option, path), option, path)


def check_store_path(path: Path, *, create: bool) -> None:
    """``--store``: a folder is never a store; a store that does not exist yet must be creatable (when ``create``).

    Whether an existing file is a valid store is decided by opening it (:mod:`failtrace.store.store`).
    """
    from failtrace.store.connection import check_not_companion, check_not_dangling

    path = Path(path).expanduser()
    check_not_companion(path)  # also for a new store: the user meant the store beside it
    if path.is_dir():
        if create:
            raise FailtraceError(f"--store {path} is a folder; give a file path such as {path / 'failtrace.duckdb'}")
        # a store to read: name the stores that are there rather than a file that may not exist
        stores = sorted(p.name for p in path.glob("*.duckdb") if p.is_file())
        if not stores:
            raise FailtraceError(f"--store {path} is a folder and holds no .duckdb store; give a store file (failtrace "
                                 "collect --store FILE makes one)")
        shown = ", ".join(str(path / n) for n in stores[:3]) + (f" ({len(stores) - 3} more)" if len(stores) > 3 else "")
        raise FailtraceError(f"--store {path} is a folder; give the store file in it: {shown}")
    check_not_dangling(path)
    if create and not path.exists():
        check_output_file(path, "--store", "failtrace.duckdb")


def check_not_the_store(path: Path, store: Path, option: str) -> None:
    """An output file must not be the store itself (or its log or lock file): writing it would destroy the store."""
    try:
        out = Path(path).expanduser().resolve()
    except (RuntimeError, OSError):  # a link loop (RuntimeError before Python 3.13): check_output_file names it
        return
    store = Path(store).expanduser().resolve()
    same = out.exists() and store.exists() and os.path.samefile(out, store)  # a hard link too
    if same or out in (store, *(store.with_name(store.name + suffix) for suffix in STORE_COMPANIONS)):
        raise FailtraceError(f"{option} {path} is the results store's own file; give another path such as "
                             f"{store.parent / 'prefs.jsonl'}")
