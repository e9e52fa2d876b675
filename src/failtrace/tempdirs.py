"""Temporary folders that a killed failtrace does not leave behind for ever.

Each stage of work that is written aside and then moved into place (a sandbox run, a checkpoint, an export, a model
conversion, a pip install) goes to a folder named after the process making it: ``<kind><pid>-<random><suffix>``.
``finally`` removes it, but nothing runs after SIGKILL (an OOM kill, a killed Ray worker, ``kill -9``); the next
folder of the same kind made beside it removes every one whose process is gone. A live process's folders, and names
of another form, are left alone. Written here because ``tempfile`` names folders at random and keeps no owner.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


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


def sweep_orphans(parent: str | Path, kind: str) -> list[str]:
    """Remove the ``kind`` folders in ``parent`` whose process is gone; returns their names."""
    gone = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            owner = entry.name[len(kind):].split("-", 1)[0]
            if entry.name.startswith(kind) and owner.isdigit() and entry.is_dir(follow_symlinks=False) \
                    and not _alive(int(owner)):
                remove_tree(entry.path)
                gone.append(entry.name)
    return gone


def owned_tempdir(parent: str | Path | None, kind: str, suffix: str = "") -> Path:
    """A new folder ``<kind><pid>-<random><suffix>`` in ``parent`` (None: the system's temp folder), made after the
    orphans of ``kind`` there are removed. Private (0700), as ``tempfile.mkdtemp`` makes it; the caller removes it."""
    where = Path(tempfile.gettempdir() if parent is None else parent)
    sweep_orphans(where, kind)
    return Path(tempfile.mkdtemp(prefix=f"{kind}{os.getpid()}-", suffix=suffix, dir=where))
