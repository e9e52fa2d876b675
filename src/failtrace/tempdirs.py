"""Temporary folders that a killed failtrace does not leave behind for ever.

Each stage of work that is written aside and then moved into place or dropped (a sandbox run, a checkpoint, an
export, a model conversion, a pip install, a store's snapshot copy, a finetune run's trainer state) goes to a folder
named ``<kind><pid>-<place>-<random><suffix>``: ``place`` is a digest of this machine and its PID namespace, so a
process id is only ever read where it means that process. ``finally``
removes the folder, but nothing runs after SIGKILL (an OOM kill, a killed Ray worker, ``kill -9``); the next folder
of the same kind made in the same parent by a process of the same place removes every such folder whose process is
gone. Folders of another place (another container or machine sharing the folder), of a live process, and every
name not exactly of this form (a user's ``.export-2024``) are left alone; a reused process id can only keep an
orphan longer. Written here because ``tempfile`` names folders at random and keeps no owner. :func:`swap_in` moves
what such a folder staged into place, all or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@functools.lru_cache(maxsize=1)
def place() -> str:
    """8 hex digits naming this machine and PID namespace (machine id, host name, the namespace's inode)."""
    parts = [socket.gethostname()]
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            parts.append(Path(path).read_text().strip())
            break
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:8]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # alive under another user; or no process id at all (then left alone)
        return True
    return True


def remove_tree(path: str | Path) -> None:
    """Delete a folder even where parts of it were made unwritable (a sandboxed program may chmod what it wrote)."""
    def fix(func, p, _exc) -> None:  # type: ignore[no-untyped-def]
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    shutil.rmtree(path, onerror=fix)


def _pattern(kind: str, suffix: str) -> re.Pattern[str]:
    # tempfile.mkdtemp's random part: 8 of [a-z0-9_]
    return re.compile(rf"{re.escape(kind)}([0-9]+)-{place()}-[a-z0-9_]{{8}}{re.escape(suffix)}")


def sweep_orphans(parent: str | Path, kind: str, suffix: str = "") -> list[str]:
    """Remove the ``kind`` folders of this place in ``parent`` whose process is gone; returns their names."""
    pattern, gone = _pattern(kind, suffix), []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            m = pattern.fullmatch(entry.name)
            if m and entry.is_dir(follow_symlinks=False) and not _alive(int(m.group(1))):
                remove_tree(entry.path)
                gone.append(entry.name)
    return gone


def owned_tempdir(parent: str | Path | None, kind: str, suffix: str = "") -> Path:
    """A new folder ``<kind><pid>-<place>-<random><suffix>`` in ``parent`` (None: the system's temp folder), made
    after the orphans of ``kind`` there are removed. Private (0700), as ``tempfile.mkdtemp`` makes it; the caller
    removes it."""
    where = Path(tempfile.gettempdir() if parent is None else parent)
    sweep_orphans(where, kind, suffix)
    return Path(tempfile.mkdtemp(prefix=f"{kind}{os.getpid()}-{place()}-", suffix=suffix, dir=where))


class NotPutBack(Exception):
    """A :func:`swap_in` failed and some moves could not be undone: ``lost`` are the places their files belong,
    ``cause`` the failure that started the undoing."""

    def __init__(self, lost: list[Path], cause: BaseException) -> None:
        super().__init__(f"{len(lost)} file(s) could not be put back")
        self.lost, self.cause = lost, cause


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (in the main thread, where Python runs signal handlers): a few
    renames that must all happen or all be undone are not cut between a rename and its record. A signal that came
    meanwhile is raised again at the end, to the handler that was in place, with everything moved or put back.
    (Blocking the signals in this thread was not enough: another thread of the process, torch's or DuckDB's, takes
    the signal and Python still runs the handler here.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, _frame: came.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # None: set outside Python
        if came:
            signal.raise_signal(came[0])


def swap_in(aside: list[Path], new: list[tuple[Path, Path]], old: Path, out: Path,
            move: Callable[[Path, Path], None]) -> None:
    """All or nothing, for outputs staged in a folder and then moved into place (an export, a report): each file of
    ``aside`` (under ``out``) goes to the same place under ``old``, then each staged file ``(src, dst)`` to ``dst``.
    On any failure every move is undone in reverse and the failure raised again, or :class:`NotPutBack` where some
    move cannot be undone (``old`` then still holds those files: the caller keeps it and says where). Ctrl-C and
    SIGTERM are held until the moves are all done or all undone (:func:`signals_held`): one arriving between a rename
    and its record lost the file, and a second one during the undoing lost more."""
    for _src, dst in new:  # moved onto a folder, a file would land inside it, a level down, and "succeed"
        if dst.is_dir() and not dst.is_symlink():
            raise IsADirectoryError(errno.EISDIR, f"{dst} is a folder, not a file; move it away or write into "
                                                  f"another folder")
    moved: list[tuple[Path, Path]] = []  # (from, to), undone in reverse
    with signals_held():
        try:
            for f in aside:
                dst = old / f.relative_to(out)
                move(f, dst)
                moved.append((f, dst))
            for src, dst in new:
                move(src, dst)
                moved.append((src, dst))
        except BaseException as exc:
            lost = []
            for src, dst in reversed(moved):
                try:
                    move(dst, src)
                except OSError:
                    lost.append(src)
            if lost:
                raise NotPutBack(lost, exc) from None
            raise
