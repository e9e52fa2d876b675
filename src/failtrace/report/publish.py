"""A report is drawn into a staging folder beside its destination and moved into place when it is whole.

Drawn in place, an interrupted ``failtrace report`` left a folder half old and half new: an index of the earlier
report over CSVs of the new one, a few of the graph pictures deleted and not yet redrawn. Now a report is drawn in
``OUT/.report-<pid>-<place>-<random>.part`` (a killed run's is removed by the next one, or kept and named where a
SIGKILL cut its moves: ``tempdirs.owned_tempdir``, ``failtrace.swap``) and its files are moved into place one by
one. What they replace goes to the staging folder's ``old/`` first: the files of the same names, every graph
picture (``figures/graphs/*.png``, the report's own folder: one of a case the new report lacks must not stay) and
the across-models figures and tables a report draws only when comparisons exist. Any other file in OUT (a figure or
a table of your own beside the report) is left alone. If a move fails, every file goes back; one that cannot is
kept in ``OUT/.report-kept-*`` (which no later report removes; where even that rename fails, in its marked
``.report-*.part`` folder until the next report renames it), and the error says where.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from failtrace.errors import FailtraceError
from failtrace.swap import NotPutBack, failure, move_file, swap_in
from failtrace.tempdirs import staging

STAGE_KIND, STAGE_SUFFIX = ".report-", ".part"
OWN_PATTERNS = ("tables/*.csv", "figures/*.png", "figures/graphs/*.png")


def own_files(out: Path) -> list[Path]:
    """Every file a report in ``out`` could write over (index.html, ``tables/*.csv``, ``figures/*.png``,
    ``figures/graphs/*.png``): the refusal to write over a results store checks them all."""
    files = [out / "index.html"]
    for pattern in OWN_PATTERNS:
        files += sorted(out.glob(pattern))
    return files


def replaced(out: Path, drawn: list[Path]) -> list[Path]:
    """The files in ``out`` a new report takes the place of: those of the names it draws (``drawn``, relative
    paths), every graph picture, and the across-models outputs it draws only with comparisons."""
    from failtrace.report.compare_figs import CSV_NAMES, FIGURE_NAMES

    names = set(drawn) | {Path("figures") / f"{n}.png" for n in FIGURE_NAMES}
    names |= {Path("tables") / f"{n}.csv" for n in CSV_NAMES.values()}
    found = {out / n for n in names} | set(out.glob("figures/graphs/*.png"))
    return sorted(f for f in found if f.is_file() or f.is_symlink())


def sweep_index_temps(out: Path) -> None:
    """Remove ``.index-*.html``: the temporary index a report before this one wrote in place and, killed, left."""
    for stale in out.glob(".index-*.html"):
        stale.unlink(missing_ok=True)


def published(out: Path, draw: Callable[[Path], Path]) -> Path:
    """``draw(stage)`` writes a whole report into a staging folder in ``out``; its files then replace the earlier
    report's. Returns ``out/index.html``."""
    sweep_index_temps(out)
    with staging(out, STAGE_KIND, STAGE_SUFFIX) as stage:
        draw(stage)
        _swap_in(stage, out)
    return out / "index.html"


def _swap_in(stage: Path, out: Path) -> None:
    """Move the staged report into ``out``, what it replaces into ``stage/old`` first; on a failed move, put every
    file back (what cannot go back is kept, and the error says where: ``swap.NotPutBack``)."""
    drawn = sorted((f.relative_to(stage) for f in own_files(stage) if f.is_file()),
                   key=lambda rel: rel.name == "index.html")  # the index last: it links the rest
    try:
        swap_in(replaced(out, drawn), [(stage / rel, out / rel) for rel in drawn], stage, out, STAGE_KIND, move_file)
    except NotPutBack as exc:
        raise failure(exc, "report", out) from None
    except OSError as exc:
        raise FailtraceError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
