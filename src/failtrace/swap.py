"""All-or-nothing moves of staged files into place (an export, a report), with a journal that survives SIGKILL.

An export or a report is written into a staging folder inside its ``--out`` (``tempdirs.owned_tempdir``) and then
moved in file by file: each earlier file it replaces goes to the staging folder's ``old/`` first, then each new file
to its place. A failed move undoes every move in reverse. Nothing runs after SIGKILL (an OOM kill, ``kill -9``), so
before the first move :func:`swap_in` writes the plan to ``<stage>/swap.json``; the next export or report into the
same folder finds the dead run's staging folder and, before removing it, undoes what the plan says was moved
(:func:`recover`). So a killed swap leaves the earlier output whole once the next run starts, never half old and half
new for good. Renames are atomic, so each file is at exactly one end of its move; a copy across file systems
(a linked ``figures/``) that was cut midway has both ends, and its copy is dropped. A power cut is not covered (the
renames are not synced). Written here because no library journals a set of renames.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

JOURNAL, PROGRESS = "swap.json", "swap.done"


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
    os.unlink(src)


def _side_name(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.moving")


def keep(stage: Path, kind: str) -> Path:
    """Rename a staging folder holding earlier files that could not go back to ``<kind>kept-<time>-<pid>``, a name
    no later sweep removes; returns it."""
    kept = stage.parent / f"{kind}kept-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    stage.rename(kept)
    for name in (JOURNAL, PROGRESS):  # done with: nothing is to replay them
        with contextlib.suppress(OSError):
            (kept / name).unlink()
    return kept


class _Journal:
    """The plan (``swap.json``: every move, paths relative to the staging folder's parent, written whole or not at
    all) and the progress (``swap.done``: ``+`` after each move, ``!`` when undoing starts, ``-`` after each move
    undone; one byte written straight to the file, no buffer to lose)."""

    def __init__(self, stage: Path, moves: list[tuple[Path, Path]]) -> None:
        base = stage.parent
        plan = {"version": 1, "moves": [[str(a.relative_to(base)), str(b.relative_to(base))] for a, b in moves]}
        part = stage / f"{JOURNAL}.part"
        with open(part, "w", encoding="utf-8") as f:
            json.dump(plan, f)
        self.stage = stage
        self.fd = os.open(stage / PROGRESS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        part.replace(stage / JOURNAL)  # the plan exists only with its (empty) progress beside it

    def mark(self, what: bytes) -> None:
        os.write(self.fd, what)

    def close(self, done: bool) -> None:
        """Close the progress; with ``done`` (all moved, or all put back) remove the plan: nothing to recover."""
        os.close(self.fd)
        if done:
            (self.stage / JOURNAL).unlink()
            (self.stage / PROGRESS).unlink()


def swap_in(aside: list[Path], new: list[tuple[Path, Path]], stage: Path, out: Path,
            move: Callable[[Path, Path], None] = move_file) -> None:
    """All or nothing, for outputs staged in ``stage`` (a folder inside ``out``) and then moved into place: each
    file of ``aside`` (under ``out``) goes to the same place under ``stage/old``, then each staged file
    ``(src, dst)`` to ``dst``. On any failure every move is undone in reverse and the failure raised again, or
    :class:`NotPutBack` where some move cannot be undone (``stage/old`` then still holds those files: the caller
    keeps the folder, :func:`keep`, and says where). Ctrl-C and SIGTERM are held until the moves are all done or all
    undone (:func:`signals_held`); a SIGKILL is undone by the next run's :func:`recover` (the journal)."""
    for _src, dst in new:  # moved onto a folder, a file would land inside it, a level down, and "succeed"
        if dst.is_dir() and not dst.is_symlink():
            raise IsADirectoryError(errno.EISDIR, f"{dst} is a folder, not a file; move it away or write into "
                                                  f"another folder")
    plan = [(f, stage / "old" / f.relative_to(out)) for f in aside] + list(new)
    moved: list[tuple[Path, Path]] = []  # (from, to), undone in reverse
    with signals_held():
        journal = _Journal(stage, plan)
        try:
            for src, dst in plan:
                move(src, dst)
                moved.append((src, dst))
                journal.mark(b"+")
        except BaseException as exc:
            journal.mark(b"!")
            lost = []
            for src, dst in reversed(moved):
                try:
                    move(dst, src)
                    journal.mark(b"-")
                except OSError:
                    lost.append(src)
            journal.close(done=not lost)
            if lost:
                raise NotPutBack(lost, exc) from None
            raise
        journal.close(done=True)  # the folder (old files only) can go


def _inside(base: Path, rel: str) -> Path:
    """``base / rel`` for a journal's relative path; refuses one that leaves ``base``."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"a journal path outside its folder: {rel!r}")
    return base / p


def recover(stage: Path, kind: str) -> bool:
    """Undo the swap a killed process left half done in ``stage`` (its journal), so the earlier output is whole
    again. True when ``stage`` can now be removed (no journal, or every move undone); otherwise it is renamed out
    of the sweep's reach (:func:`keep`), a line on stderr says where, and False.

    The progress says how many moves completed (``+``) and how many of them were undone (``-``). One more move may
    have completed, or been cut, after the last mark: a move completed exactly when its source is gone, and a cut
    one leaves nothing at its destination (renames, and :func:`move_file`'s side name), or both ends whole where
    the delete of the source was cut. Every completed move not yet undone is then undone in reverse; one whose
    destination is gone and source present was undone just before the kill."""
    if not (stage / JOURNAL).is_file():
        return True
    base = stage.parent
    try:
        plan = json.loads((stage / JOURNAL).read_text("utf-8"))["moves"]
        moves = [(_inside(base, a), _inside(base, b)) for a, b in plan]
        progress = (stage / PROGRESS).read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return _kept(stage, kind, "its list of moves could not be read")
    done, undone, lost = progress.count(b"+"), progress.count(b"-"), 0
    if b"!" not in progress and done < len(moves):  # the move after the last mark
        src, dst = moves[done]
        with contextlib.suppress(OSError):
            os.unlink(_side_name(dst))  # a copy across file systems cut before its rename
        if not os.path.lexists(src) and os.path.lexists(dst):
            done += 1
        elif os.path.lexists(src) and os.path.lexists(dst):  # copied whole, the source's delete cut: drop the copy
            lost += _attempt(os.unlink, dst)
    for src, dst in reversed(moves[:done - undone]):
        if os.path.lexists(dst) and not os.path.lexists(src):
            lost += _attempt(move_file, dst, src)
        elif os.path.lexists(dst) or not os.path.lexists(src):  # both ends, or neither: not a state a move leaves
            lost += 1
    return True if not lost else _kept(stage, kind, f"{lost} file(s) could not be put back")


def _attempt(step: Callable[..., None], *args: Path) -> int:
    """1 where ``step`` failed, else 0."""
    try:
        step(*args)
    except OSError:
        return 1
    return 0


def _kept(stage: Path, kind: str, why: str) -> bool:
    kept = keep(stage, kind)
    print(f"failtrace: an earlier run into {stage.parent} was killed while moving files into place and {why}: the "
          f"earlier files are in {kept / 'old'}", file=sys.stderr)
    return False
