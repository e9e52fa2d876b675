"""A report is drawn into a staging folder beside its destination and moved into place when it is whole.

Drawn in place, an interrupted ``failtrace report`` left a folder half old and half new: an index of the earlier
report over CSVs of the new one, a few of the graph pictures deleted and not yet redrawn. Now a report is drawn in
``OUT/.report-<pid>-<place>-<random>.part`` (a killed run's is removed by the next one, ``tempdirs.owned_tempdir``),
and its files are renamed into place one by one: the earlier report's own files (index.html, tables/*.csv,
figures/*.png, figures/graphs/*.png) go to the staging folder's ``old/`` first, so a picture the new report no longer
draws does not stay behind, and any other file in OUT is left alone. If a move fails, every file goes back.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from failtrace.errors import FailtraceError
from failtrace.tempdirs import owned_tempdir

STAGE_KIND, STAGE_SUFFIX = ".report-", ".part"
OWN_PATTERNS = ("tables/*.csv", "figures/*.png", "figures/graphs/*.png")


def own_files(out: Path) -> list[Path]:
    """The files a report in ``out`` may write over or remove: index.html, ``tables/*.csv``, ``figures/*.png`` and
    ``figures/graphs/*.png`` (glob follows a linked folder as the writes and removals do)."""
    files = [out / "index.html"]
    for pattern in OWN_PATTERNS:
        files += sorted(out.glob(pattern))
    return files


def sweep_index_temps(out: Path) -> None:
    """Remove ``.index-*.html``: the temporary index a report before this one wrote in place and, killed, left."""
    for stale in out.glob(".index-*.html"):
        stale.unlink(missing_ok=True)


def published(out: Path, draw: Callable[[Path], Path]) -> Path:
    """``draw(stage)`` writes a whole report into a staging folder in ``out``; its files then replace the earlier
    report's. Returns ``out/index.html``."""
    sweep_index_temps(out)
    stage: Path | None = owned_tempdir(out, STAGE_KIND, suffix=STAGE_SUFFIX)
    try:
        draw(stage)
        _swap_in(stage, out)
        return out / "index.html"
    except _KeptOld:
        stage = None  # it holds earlier files that could not be put back: kept, and the error says where
        raise
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


class _KeptOld(FailtraceError):
    """A report failed while moving files into place and some earlier files could not be moved back."""


def _swap_in(stage: Path, out: Path) -> None:
    """Move the staged report into ``out``, the earlier one's own files into ``stage/old`` first; on a failed move,
    put every file back (what cannot go back stays in ``stage/old``, and :class:`_KeptOld` says so)."""
    new = [f for f in own_files(stage) if f.is_file()]
    old = stage / "old"
    moved: list[tuple[Path, Path]] = []  # (from, to), undone in reverse
    try:
        for f in own_files(out):
            if f.is_file() or f.is_symlink():
                dst = old / f.relative_to(out)
                dst.parent.mkdir(parents=True, exist_ok=True)
                f.replace(dst)
                moved.append((f, dst))
        for f in sorted(new, key=lambda p: p.name == "index.html"):  # the index last: it links the rest
            dst = out / f.relative_to(stage)
            dst.parent.mkdir(parents=True, exist_ok=True)
            f.replace(dst)
            moved.append((f, dst))
    except BaseException as exc:
        lost = []
        for src, dst in reversed(moved):
            try:
                dst.replace(src)
            except OSError:
                lost.append(str(src))
        if lost:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise _KeptOld(f"cannot write the report into {out}: {why}; {len(lost)} earlier file(s) could not be "
                           f"put back: they are in {old}") from None
        if isinstance(exc, OSError):
            raise FailtraceError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
        raise
