"""Summaries of a results store (``failtrace status``) and its export to Parquet or JSONL (``failtrace export``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failtrace.errors import FailtraceError
from failtrace.store.records import FINISH_CONTEXT, KEYS, StatusRow, describe_collection_settings, loads
from failtrace.store.schema import PAIR_STATUSES, TABLES
from failtrace.swap import NotPutBack, failure, swap_in
from failtrace.tempdirs import staging

STAGE_KIND = ".export-"  # OUT/.export-<pid>-<place>-<random>.part: the staging folder (tempdirs)

if TYPE_CHECKING:
    from failtrace.store.store import ResultsStore


def status_rows(store: ResultsStore) -> list[StatusRow]:
    """Per collection run (and per pair-finding run over it): items, generated, verdicts, pair statuses, tokens."""
    out: list[StatusRow] = []
    con = store.con
    pair_runs_all = store.runs("pairs")
    has_continued = bool(con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'pairs' "
                                     "AND column_name = 'continued'").fetchone()[0])
    for run in store.runs("collect"):
        items = con.execute("SELECT count(*) FROM run_items WHERE run_id = ?", [run.run_id]).fetchone()[0]
        agg = con.execute(
            "SELECT count(*) FILTER (g.finish_reason <> ?), count(*) FILTER (v.status = 'pass'), "
            "count(*) FILTER (v.status = 'fail'), count(*) FILTER (v.status = 'unverifiable'), avg(g.prompt_tokens), "
            "avg(g.n_tokens) FILTER (g.finish_reason <> ?), count(*) FILTER (v.status = 'fail' AND "
            "g.finish_reason = 'length'), count(*) FILTER (g.finish_reason = ?) "
            "FROM generations g JOIN verdicts v USING (run_id, item_id) WHERE g.run_id = ?",
            [FINISH_CONTEXT, FINISH_CONTEXT, FINISH_CONTEXT, run.run_id]).fetchone()
        generated, passed, failed, unverif, avg_p, avg_c, at_limit, over_window = agg
        pair_runs = [r for r in pair_runs_all if r.parent_run_id == run.run_id]
        base = dict(benchmark=run.benchmark, model=run.model, run_id=run.run_id, items=int(items),
                    generated=int(generated), passed=int(passed), failed=int(failed), unverifiable=int(unverif),
                    avg_prompt_tokens=None if avg_p is None else float(avg_p),
                    avg_completion_tokens=None if avg_c is None else float(avg_c), failed_at_limit=int(at_limit),
                    not_generated=int(over_window),
                    collection_settings=describe_collection_settings(run.dtype, run.settings))
        if not pair_runs:
            out.append(StatusRow(pair_run_id=None, pair_settings={}, pairs={}, **base))
        for pr in pair_runs:
            counts = dict(con.execute("SELECT status, count(*) FROM pairs WHERE pair_run_id = ? GROUP BY status",
                                      [pr.run_id]).fetchall())
            pairs = {s: int(counts.get(s, 0)) for s in PAIR_STATUSES}
            out.append(StatusRow(pair_run_id=pr.run_id, pair_settings=pr.settings, pairs=pairs,
                                 **_limit_counts(con, pr.run_id, has_continued), **base))
    return out


def _limit_counts(con: Any, pair_run_id: str, has_continued: bool) -> dict[str, int | None]:
    """How many paired failures hit the length limit, and how many of those passed / still failed when continued
    to the rollout budget (None for a store read in its version-2 layout, which has no ``continued`` column)."""
    hit = con.execute("SELECT count(*) FILTER (hit_length_limit) FROM pairs WHERE pair_run_id = ?",
                      [pair_run_id]).fetchone()[0]
    if not has_continued:
        return {"limit_hit": int(hit), "continued_pass": None, "continued_fail": None}
    passed, failed = con.execute("SELECT count(*) FILTER (continued = 'pass'), count(*) FILTER (continued = 'fail') "
                                 "FROM pairs WHERE pair_run_id = ?", [pair_run_id]).fetchone()
    return {"limit_hit": int(hit), "continued_pass": int(passed), "continued_fail": int(failed)}


def _out_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FailtraceError(f"--out {out} exists and is not a folder; give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FailtraceError(f"cannot create --out folder {out}: {exc.strerror or exc}; give a writable folder") \
            from None
    return out


# Tables created on first use, outside the versioned schema: (table, export order). ``reviews`` is written by
# ``failtrace serve --review`` (docs/EXPLORER.md), ``case_alternatives`` by ``failtrace analyse``.
_ADDED_TABLES = (("reviews", "created_at, review_id"), ("case_alternatives", "case_id"))


def _write_table(store: ResultsStore, query: str, path: Path, fmt: str, fix: Any = None) -> Path:
    """The rows of ``query`` as Parquet or JSONL at ``path``, written under a temporary name and renamed (so an
    interrupted export never leaves a half file under the final name). ``fix`` may adjust each JSONL row."""
    tmp = path.with_name(path.name + ".part")
    try:
        if fmt == "parquet":
            store.con.copy_to(query, tmp, "FORMAT PARQUET")
        else:
            with tmp.open("w", encoding="utf-8") as fh:
                for row in store._iter_rows(query):
                    fh.write(json.dumps(fix(row) if fix else row, ensure_ascii=False, default=str) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)  # a damaged row, a full disk, Ctrl-C: no half file left behind
        raise
    tmp.replace(path)
    return path


def _tokens_parsed(row: dict[str, Any]) -> dict[str, Any]:
    if isinstance(row.get("tokens"), str):
        row["tokens"] = loads(row["tokens"], f"case_alternatives.tokens of case {row.get('case_id')}")
    return row


def _export_added(store: ResultsStore, table: str, order: str, out: Path, fmt: str) -> Path:
    """One such table as ``<table>.parquet`` or ``<table>.jsonl`` (JSON text columns parsed in JSONL)."""
    path = out / file_name(table, fmt)
    fix = _tokens_parsed if table == "case_alternatives" else None
    return _write_table(store, f"SELECT * FROM {table} ORDER BY {order}", path, fmt, fix)


def file_name(table: str, fmt: str) -> str:
    """The export file of ``table`` in ``fmt`` (``<table>.parquet`` or ``<table>.jsonl``)."""
    return f"{table}.{'parquet' if fmt == 'parquet' else 'jsonl'}"


def export_names(fmt: str) -> list[str]:
    """Every file name an export in ``fmt`` may write (whatever the store holds): its own names in its folder."""
    tables = (*TABLES, "schema_version", *(t for t, _ in _ADDED_TABLES), "comparisons")
    return [file_name(t, fmt) for t in tables if not (fmt == "jsonl" and t == "case_methods")]  # JSONL: cases.jsonl


def export(store: ResultsStore, out_dir: str | Path, fmt: str) -> list[Path]:
    """Write every table to ``out_dir`` as ``<table>.parquet`` or ``<table>.jsonl``; returns the files.

    Parquet keeps JSON-valued columns as JSON text; JSONL parses them into nested objects. All files are written
    into a hidden staging folder inside ``out_dir`` and moved into place only once every one is whole (a move that
    fails puts every file back), so an export that fails (a damaged row, a full disk, Ctrl-C) leaves the folder as
    it was, and the folders it created are removed again if empty (another export's files there are left). A
    folder where an export file goes is refused before any writing. A file of an earlier export in the same format
    whose table this store lacks is removed afterwards (so the folder never mixes two stores); none of these names
    may be a results store (refused before anything is written).
    """
    from failtrace.store.connection import refuse_over_stores

    fmt = fmt.lower()
    if fmt not in ("parquet", "jsonl"):
        raise FailtraceError(f"unknown export format {fmt!r}; use parquet or jsonl")
    names = export_names(fmt)
    refuse_over_stores([Path(out_dir) / n for n in names] + [Path(out_dir) / f"{n}.part" for n in names], "export")
    created: Path | None = None  # the outermost folder this export creates (removed again if it fails)
    if not Path(out_dir).exists():
        created = Path(out_dir)
        while not created.parent.exists():
            created = created.parent
    out = _out_folder(out_dir)
    for name in names:  # a folder where a file goes could only fail midway through the moves: refused first
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise FailtraceError(f"cannot write the export into {out}: {out / name} is a folder, not a file; "
                                 f"move it away or export into another folder")
    try:
        with staging(out, STAGE_KIND) as stage:  # a killed export's is removed, or kept where its moves were cut
            return _swap_in(_write_all(store, stage, fmt), out, names, stage)
    except BaseException as exc:
        if created is not None:
            _remove_empty(out, created)
        if isinstance(exc, OSError):
            raise FailtraceError(f"cannot write the export into {out}: {exc.strerror or exc}") from None
        raise


def _remove_empty(out: Path, created: Path) -> None:
    """Remove ``out`` and its parents up to ``created`` while they are empty: a second export racing into the same
    new folder may have put its files there, and they stay (``rmdir`` refuses a folder that is not empty)."""
    folder = out
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == created or folder.parent == folder:
            return
        folder = folder.parent


def _swap_in(staged: list[Path], out: Path, names: list[str], stage: Path) -> list[Path]:
    """Move the staged files into ``out``, the files they replace (and an earlier export's tables this store lacks)
    into ``stage/old`` first; if any move fails, every file is put back as it was. Renames within one folder tree
    of one file system, so no file is ever half written."""
    old = stage / "old"
    old.mkdir()
    written = {f.name for f in staged}
    aside = [out / n for n in [n for n in names if n not in written] + [f.name for f in staged]
             if (out / n).is_file() or (out / n).is_symlink()]
    try:
        swap_in(aside, [(f, out / f.name) for f in staged], stage, out, STAGE_KIND, lambda src, dst: src.replace(dst))
    except NotPutBack as exc:  # the earlier files kept under a name no later export sweeps away
        raise failure(exc, "export", out) from None
    return [out / f.name for f in staged]


def _write_all(store: ResultsStore, out: Path, fmt: str) -> list[Path]:
    """Every table of ``store`` written into ``out`` (the staging folder of :func:`export`)."""
    files = []
    present = {r[0] for r in store.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    for table in (*TABLES, "schema_version"):
        if table not in present or (fmt == "jsonl" and table in ("cases", "case_methods")):
            continue  # an old read-only store; JSONL writes the cases as one cases.jsonl below
        order = ", ".join(KEYS.get(table, ("version",)))
        path = out / file_name(table, fmt)
        files.append(_write_table(store, f"SELECT * FROM {table} ORDER BY {order}", path, fmt))
    if fmt == "jsonl" and "cases" in present:
        from failtrace.store.cases import export_cases_jsonl

        files.append(export_cases_jsonl(store, out / "cases.jsonl"))
    for table, order in _ADDED_TABLES:
        if table in present:
            files.append(_export_added(store, table, order, out, fmt))
    if "comparisons" in present:  # created by `failtrace compare` on first write
        from failtrace.store.comparisons import FLIP_K, export_comparisons_jsonl

        if fmt == "jsonl":
            files.append(export_comparisons_jsonl(store, out / "comparisons.jsonl"))
        else:
            order = "case_id, model_fingerprint, step NULLS FIRST"
            files.append(_write_table(store, f"SELECT * REPLACE ({FLIP_K} AS flip_k) FROM comparisons "
                                             f"ORDER BY {order}", out / "comparisons.parquet", fmt))
    return files
