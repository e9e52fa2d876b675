"""Pre-flight checks of output paths, run before any expensive work (loading a model, generating).

A path that cannot be written should fail in a second with its name in the message, not after a ten-minute run.
The checks leave nothing behind: a missing folder is not created here (the writer creates it later); whether the
nearest existing folder accepts new entries is tested by creating and removing an empty temporary folder in it,
because ``os.access`` says yes to root even where writing fails (``/proc``, read-only mounts).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from failtrace.errors import FailtraceError


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` for a relative path whose parts are all missing)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path, option: str, target: Path) -> None:
    """Fail unless a new entry can be created in ``folder``."""
    if not folder.is_dir():
        raise FailtraceError(f"cannot write {option} {target}: {folder} is a file, not a folder; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".failtrace-probe-", dir=folder))
    except OSError as exc:
        raise FailtraceError(f"cannot write {option} {target}: cannot create anything in {folder} "
                             f"({exc.strerror or exc}); choose a writable location") from None


def check_output_file(path: Path | None, option: str, example: str = "out.json") -> None:
    """``path`` can be written as a file: it is not a folder, and it or its nearest existing folder is writable."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.is_dir():
        raise FailtraceError(f"{option} {path} is a folder; give a file path such as {path / example}")
    if path.exists():
        try:
            with path.open("ab"):  # opening for append changes neither content nor modification time
                pass
        except OSError as exc:
            raise FailtraceError(f"cannot write {option} {path}: {exc.strerror or exc}; choose a writable "
                                 f"location") from None
        return
    _probe(_nearest_existing(path.parent), option, path)


def check_output_dir(path: Path | None, option: str) -> None:
    """``path`` can be used as an output folder: it is a writable folder, or one that can be created."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise FailtraceError(f"{option} {path} is a file, not a folder; give a folder path (it is created if "
                             f"missing)")
    _probe(_nearest_existing(path), option, path)


def check_store_path(path: Path, *, create: bool) -> None:
    """``--store``: a folder is never a store; a store that does not exist yet must be creatable (when ``create``).

    Whether an existing file is a valid store is decided by opening it (:mod:`failtrace.store.store`).
    """
    from failtrace.store.connection import check_not_dangling

    path = Path(path).expanduser()
    if path.is_dir():
        raise FailtraceError(f"--store {path} is a folder; give a file path such as {path / 'failtrace.duckdb'}")
    check_not_dangling(path)
    if create and not path.exists():
        check_output_file(path, "--store", "failtrace.duckdb")


def check_not_the_store(path: Path, store: Path, option: str) -> None:
    """An output file must not be the store itself (or its log or lock file): writing it would destroy the store."""
    out = Path(path).expanduser().resolve()
    store = Path(store).expanduser().resolve()
    same = out.exists() and store.exists() and os.path.samefile(out, store)  # a hard link too
    if same or out in (store, store.with_name(store.name + ".wal"), store.with_name(store.name + ".lock")):
        raise FailtraceError(f"{option} {path} is the results store's own file; give another path such as "
                             f"{store.parent / 'prefs.jsonl'}")
