"""Temporary folders that a killed failtrace does not leave behind for ever.

Each stage of work that is written aside and then moved into place or dropped (a sandbox run, a checkpoint, an
export, a model conversion, a pip install, a store's snapshot copy, a finetune run's trainer state) goes to a folder
named ``<kind><pid>-<place>-<random><suffix>``: ``place`` is a digest of this machine and its PID namespace, so a
process id is only ever read where it means that process. ``finally``
removes the folder, but nothing runs after SIGKILL (an OOM kill, a killed Ray worker, ``kill -9``); the next folder
of the same kind made in the same parent by a process of the same place removes every such folder whose process is
gone. Folders of another place (another container or machine sharing the folder), of a live process, and every
name not exactly of this form (a user's ``.export-2024``) are left alone; a reused process id can only keep an
orphan longer. Written here because ``tempfile`` names folders at random and keeps no owner. An export's or a
report's staging folder may hold earlier files a SIGKILL cut off halfway through their moves (``failtrace.swap``):
with ``keep_cut`` the sweep keeps such a folder and says where.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from failtrace import swap


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


def sweep_orphans(parent: str | Path, kind: str, suffix: str = "", keep_cut: bool = False) -> list[str]:
    """Remove the ``kind`` folders of this place in ``parent`` whose process is gone; returns their names. With
    ``keep_cut`` (an export's, a report's staging) one whose swap a SIGKILL cut is kept instead (``swap.kept_if_cut``),
    and a kept folder no line has named yet is named; only for folders failtrace alone writes into, never a
    sandbox's (its program could write the marker)."""
    pattern, gone = _pattern(kind, suffix), []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return gone
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        with contextlib.suppress(OSError):  # one folder that cannot be read or removed does not stop the rest
            if keep_cut and entry.name.startswith(f"{kind}kept-") and os.path.isfile(Path(entry.path, swap.MARKER)):
                swap.announce_kept(Path(entry.path))  # kept by a run killed before it could say where
            if m and entry.is_dir(follow_symlinks=False) and not _alive(int(m.group(1))):
                if keep_cut and not swap.kept_if_cut(Path(entry.path), kind):
                    continue  # kept: renamed, or left for a later sweep where the rename failed
                remove_tree(entry.path)
                gone.append(entry.name)
    return gone


def owned_tempdir(parent: str | Path | None, kind: str, suffix: str = "", keep_cut: bool = False) -> Path:
    """A new folder ``<kind><pid>-<place>-<random><suffix>`` in ``parent`` (None: the system's temp folder), made
    after the orphans of ``kind`` there are removed (``keep_cut``: see :func:`sweep_orphans`). Private (0700), as
    ``tempfile.mkdtemp`` makes it; the caller removes it."""
    where = Path(tempfile.gettempdir() if parent is None else parent)
    sweep_orphans(where, kind, suffix, keep_cut)
    return Path(tempfile.mkdtemp(prefix=f"{kind}{os.getpid()}-{place()}-", suffix=suffix, dir=where))


@contextlib.contextmanager
def staging(out: Path, kind: str, suffix: str = ".part") -> Iterator[Path]:
    """A staging folder in ``out`` for files :func:`failtrace.swap.swap_in` moves into place (an export, a report):
    made after dead runs' ones are swept (a cut one kept, ``keep_cut``) and removed at the end, unless it holds the
    marker (earlier files that could not go back, which the error names, or a marker that could not be removed: the
    next run's sweep decides) or where whether it does cannot be told."""
    stage = owned_tempdir(out, kind, suffix, keep_cut=True)
    try:
        yield stage
    finally:
        try:
            marked = (stage / swap.MARKER).exists()
        except OSError:  # cannot tell (a folder made unreadable): left, the next run's sweep decides; no error
            marked = True
        if not marked:
            shutil.rmtree(stage, ignore_errors=True)
