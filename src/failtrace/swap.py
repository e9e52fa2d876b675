"""All-or-nothing moves of staged files into place (an export, a report); a swap cut by SIGKILL keeps what it held.

An export or a report is written into a staging folder inside its ``--out`` (``tempdirs.staging``) and then moved in
file by file: each earlier file it replaces goes to the staging folder's ``old/`` first, then each new file to its
place. A failed move undoes every move in reverse; Ctrl-C and SIGTERM wait. Nothing runs after SIGKILL (an OOM kill,
``kill -9``), so while the files move a marker (``<stage>/swapping``) says so, and no clean-up removes a marked folder
that holds earlier files. The next export or report into the same folder from the same machine and PID namespace
(``tempdirs``: only there is a dead process known dead) removes dead runs' staging folders, but keeps one with the
marker under a name no sweep removes and says where (:func:`kept_if_cut`). The folder may then mix old and new files
until a run completes (and a copy across file systems cut midway leaves its part under a hidden side name,
``.NAME.moving``), but no earlier file is deleted. The files are not moved back by themselves: an outside review
showed that replaying a dead run's moves over a folder that changed since (a later export, a user's edit, a recovery
itself cut) can delete newer or earlier files, and the gain (a whole earlier output until the next run ends) is small.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from failtrace.errors import FailtraceError

MARKER = "swapping"


class NotPutBack(Exception):
    """A :func:`swap_in` failed and some moves could not be undone: ``lost`` are the places of earlier files still
    held aside, ``left`` new files still in the output folder, ``cause`` the failure that started the undoing.
    ``held`` is the folder whose ``old/`` holds the lost files (None when nothing is lost): renamed by :func:`keep`
    before anything else can run (``renamed``; a held Ctrl-C then replaces this error, and the next run names the
    folder), or the staging folder itself where that rename failed (its marker keeps it from every clean-up, and the
    next run's sweep renames it)."""

    def __init__(self, lost: list[Path], left: list[Path], cause: BaseException, held: Path | None,
                 renamed: bool) -> None:
        super().__init__(f"{len(lost)} earlier file(s) could not be put back, {len(left)} new one(s) not taken out")
        self.lost, self.left, self.cause, self.held, self.renamed = lost, left, cause, held, renamed


def failure(exc: NotPutBack, what: str, out: Path) -> FailtraceError:
    """The one-line error of a :class:`NotPutBack`: ``what`` (the export, the report) could not be written into
    ``out``, why, what is out of place and where the earlier files are. A renamed kept folder counts as named from
    here on (:func:`announced`); one still under its staging name keeps its marker for the next run's sweep."""
    why = exc.cause.strerror if isinstance(exc.cause, OSError) and exc.cause.strerror else exc.cause
    parts = []
    if exc.left:
        names = ", ".join(str(p.relative_to(out)) for p in exc.left[:5])
        more = f" and {len(exc.left) - 5} more" if len(exc.left) > 5 else ""
        parts.append(f"{len(exc.left)} new file(s) could not be taken out again ({names}{more})")
    if exc.lost and exc.held is not None:
        parts.append(f"{len(exc.lost)} earlier file(s) could not be put back: they are in {exc.held / 'old'}"
                     + ("" if exc.renamed else f" (the next {what} into this folder from this machine moves them to a "
                                               f"kept folder)"))
        if exc.renamed:
            announced(exc.held)
    return FailtraceError(f"cannot write the {what} into {out}: {why}; " + "; ".join(parts))


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


def move_file(src: Path, dst: Path) -> None:
    """A rename, or where ``dst`` is on another file system (a linked ``figures/``) a copy to a side name renamed
    into ``dst``, then ``src`` deleted: ``dst`` is whole whenever it exists, and a copy that fails midway (a full
    disk) leaves nothing at ``dst`` (the file is still whole at ``src``)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    part = _side_name(dst)
    try:
        shutil.copy2(src, part, follow_symlinks=False)
        os.replace(part, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    try:
        os.unlink(src)
    except BaseException:  # not moved after all: the copy goes, so the move is one to undo or none
        with contextlib.suppress(OSError):
            os.unlink(dst)
        raise


def _side_name(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.moving")


def keep(stage: Path, kind: str) -> Path:
    """Rename a staging folder holding earlier files to ``<kind>kept-<time>-<random>``, a name no sweep removes;
    returns it. Its marker stays until a line has named the folder (:func:`announced`): a run killed before that
    has the next sweep name it."""
    kept = stage.parent / f"{kind}kept-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(6)}"
    if os.path.lexists(kept):  # a rename onto an empty folder would succeed quietly
        raise FileExistsError(errno.EEXIST, "a kept folder of that name exists", str(kept))
    stage.rename(kept)
    return kept


def announced(kept: Path) -> None:
    """A kept folder has been named to the user: its marker goes."""
    with contextlib.suppress(OSError):
        (kept / MARKER).unlink()


def swap_in(aside: list[Path], new: list[tuple[Path, Path]], stage: Path, out: Path, kind: str,
            move: Callable[[Path, Path], None] = move_file) -> None:
    """All or nothing, for outputs staged in ``stage`` (a folder inside ``out``) and then moved into place: each
    file of ``aside`` (under ``out``) goes to the same place under ``stage/old``, then each staged file
    ``(src, dst)`` to ``dst``. On any failure every move is undone in reverse and the failure raised again (also where
    an earlier file went back over a new one that could not be taken out), or :class:`NotPutBack` where earlier files
    are still held aside (the staging folder is renamed out of every clean-up's reach, :func:`keep` with ``kind``, or
    left marked under its own name where that rename fails) or new files are left in ``out``. Ctrl-C and
    SIGTERM are held until the moves are all done or all undone (:func:`signals_held`); after a SIGKILL the marker
    has the next run keep the folder (:func:`kept_if_cut`). Callers never remove a staging folder that holds the
    marker."""
    for _src, dst in new:  # moved onto a folder, a file would land inside it, a level down, and "succeed"
        if dst.is_dir() and not dst.is_symlink():
            raise IsADirectoryError(errno.EISDIR, f"{dst} is a folder, not a file; move it away or write into "
                                                  f"another folder")
    plan = [(f, stage / "old" / f.relative_to(out)) for f in aside] + list(new)
    made = _missing_folders([dst for _src, dst in new], out)
    moved: list[tuple[Path, Path]] = []  # (from, to), undone in reverse
    with signals_held():
        try:  # a marker half written on a full disk is removed, so the staged files are not kept for it
            (stage / MARKER).write_text(f"failtrace is moving staged files into {out}; what they replace is in old/\n")
        except BaseException:
            with contextlib.suppress(OSError):
                (stage / MARKER).unlink()
            raise
        try:
            for src, dst in plan:
                move(src, dst)
                moved.append((src, dst))
        except BaseException as exc:
            if len(moved) < len(plan):  # a move that took effect and still raised (a retried rename) is undone too
                src, dst = plan[len(moved)]
                if not os.path.lexists(src) and os.path.lexists(dst):
                    moved.append((src, dst))
            stuck = []
            for src, dst in reversed(moved):
                try:
                    move(dst, src)
                except OSError:
                    stuck.append((src, dst))
            first_new = len(aside)  # an earlier file put back over a new one that could not be taken out is no loss
            lost = [src for src, dst in plan[:first_new] if os.path.lexists(dst)]  # still held aside, whatever moved
            back = {src for src, _dst in moved[:first_new]} - set(lost)
            left = [dst for src, dst in moved[first_new:] if (src, dst) in stuck and dst not in back]
            if lost or left:
                held, renamed = None, False
                if lost:
                    held = stage
                    with contextlib.suppress(OSError):
                        held, renamed = keep(stage, kind), True
                else:
                    (stage / MARKER).unlink()
                raise NotPutBack(lost, left, exc, held, renamed) from None
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only an empty one
            (stage / MARKER).unlink()
            raise
        (stage / MARKER).unlink()  # done: the folder (old files only) can go


def _missing_folders(places: list[Path], out: Path) -> list[Path]:
    """The folders under ``out`` that moving files to ``places`` will make (``tables/``, ``figures/graphs/``),
    deepest first: an undo removes them again where they are empty."""
    missing = {f for p in places for f in p.parents if out in f.parents and not os.path.lexists(f)}
    return sorted(missing, key=lambda f: len(f.parts), reverse=True)


def _holds_earlier_files(stage: Path) -> bool:
    """Whether ``stage/old`` holds an earlier file (a part of a copy cut midway, ``.NAME.moving``, is none)."""
    return any((f.is_symlink() or not f.is_dir()) and not (f.name.startswith(".") and f.name.endswith(".moving"))
               for f in (stage / "old").rglob("*"))


def kept_if_cut(stage: Path, kind: str) -> bool:
    """For the sweep of a dead run's staging folder: True when it can be removed; False when its swap was cut
    (the marker) while it held earlier files: it is then renamed out of the sweep's reach (:func:`keep`) and named
    on stderr (:func:`announce_kept`), or left where it is when the rename fails (a later sweep tries again)."""
    if not (stage / MARKER).is_file() or not _holds_earlier_files(stage):
        return True  # not cut, or cut before any earlier file was moved aside: nothing to keep
    try:
        announce_kept(keep(stage, kind))
    except OSError:
        pass
    return False


def announce_kept(kept: Path) -> None:
    """One line on stderr naming a kept folder that no line has named yet (its marker), then :func:`announced`."""
    print(f"failtrace: an earlier run into {kept.parent} did not finish moving its files into place, so the "
          f"folder may mix old and new files; the earlier files it had moved aside are in {kept / 'old'}",
          file=sys.stderr)
    announced(kept)
