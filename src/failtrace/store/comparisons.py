"""Cross-model comparisons in the results store: one row per (case, model fingerprint, kind), and comparisons.jsonl.

The kind keeps ``compare --models`` rows (no step) and ``compare --checkpoints`` rows (a step) apart: the same
weights may be both a model of the cross-model comparison and a checkpoint (every run's step 0 is the base model),
and neither must stand in for the other.

The ``comparisons`` table is created on first write (``CREATE TABLE IF NOT EXISTS``; it only adds a table, so the
store's schema version is unchanged and older failtrace versions still open the store). A row is written once per
key and never rewritten, so an interrupted ``compare`` resumes where it stopped. A table of an older failtrace, whose
primary key is (case, fingerprint) alone, is rebuilt under the new key in one transaction on the next write; an
older failtrace still reads and writes the rebuilt table (its writer skips a (case, fingerprint) it finds stored).
"""

from __future__ import annotations

import json
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failtrace.store.records import loads

if TYPE_CHECKING:  # annotations only: store.store imports this module lazily for export (no import circle)
    from failtrace.store.store import ResultsStore

DDL = """CREATE TABLE IF NOT EXISTS comparisons (
    case_id VARCHAR NOT NULL,
    model_fingerprint VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    item_id VARCHAR NOT NULL,
    benchmark VARCHAR NOT NULL,
    reference BOOLEAN NOT NULL,
    mapped BOOLEAN NOT NULL,
    token_ids INTEGER[],
    prompt_length INTEGER,
    position INTEGER,
    target_text VARCHAR,
    contrast_text VARCHAR,
    target_id INTEGER,
    contrast_id INTEGER,
    delta_logit DOUBLE,
    input_relevance DOUBLE[],
    segment_relevance VARCHAR,
    flip_curve DOUBLE[],
    flip_k INTEGER,
    step INTEGER,
    split VARCHAR,
    notes VARCHAR,
    seconds DOUBLE,
    created_at TIMESTAMP,
    tokens VARCHAR,
    special_mask BOOLEAN[],
    training_run VARCHAR,
    flip_tops INTEGER[],
    flip_top_texts VARCHAR[]
)"""
# The key: one row per case, model fingerprint and kind (a checkpoint row has a step). An index on an expression, not
# a stored kind column: a failtrace from before the kind writes its columns only, and still can.
KEY = ("CREATE UNIQUE INDEX IF NOT EXISTS comparisons_key "
       "ON comparisons (case_id, model_fingerprint, (step IS NOT NULL))")
# Columns added after the table's first release: a store written by an older failtrace gets them on its next write
# (rows written before read NULL: the explorer then shows that model's numbers without its heatmap).
ADDED = ("ALTER TABLE comparisons ADD COLUMN IF NOT EXISTS tokens VARCHAR",
         "ALTER TABLE comparisons ADD COLUMN IF NOT EXISTS special_mask BOOLEAN[]",
         # the finetune run a checkpoint row's folder held (training.checkpoints.training_run_id): two runs saved into
         # one --out, or one run typed by two paths, are told apart by it, not by the folder's path
         "ALTER TABLE comparisons ADD COLUMN IF NOT EXISTS training_run VARCHAR",
         # the model's top next token after masking the top k (k = 0: unmasked, what that model would write)
         "ALTER TABLE comparisons ADD COLUMN IF NOT EXISTS flip_tops INTEGER[]",
         "ALTER TABLE comparisons ADD COLUMN IF NOT EXISTS flip_top_texts VARCHAR[]")

COLUMNS = ("case_id", "model_fingerprint", "model", "item_id", "benchmark", "reference", "mapped", "token_ids",
           "prompt_length", "position", "target_text", "contrast_text", "target_id", "contrast_id", "delta_logit",
           "input_relevance", "segment_relevance", "flip_curve", "flip_k", "step", "split", "notes", "seconds",
           "tokens", "special_mask", "training_run", "flip_tops", "flip_top_texts")


def _present(store: ResultsStore) -> bool:
    tables = {r[0] for r in store.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    return "comparisons" in tables


_READY: weakref.WeakSet[Any] = weakref.WeakSet()  # open stores whose table is created, migrated and keyed


def _prepare(store: ResultsStore) -> None:
    """Create, migrate and key the table once per open store (not once per written row)."""
    if store in _READY:
        return
    if _present(store):
        _keyed_by_kind(store)
    with store._transaction():  # all columns or none: a reader selects the new ones as a pair
        store.con.execute(DDL)
        for stmt in ADDED:
            store.con.execute(stmt)
        store.con.execute(KEY)
    _READY.add(store)


def _keyed_by_kind(store: ResultsStore) -> None:
    """Rebuild a table whose primary key is (case, fingerprint) alone without that key, then key it by kind too (one
    transaction: an interruption leaves the old table as it was)."""
    old_key = store.con.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'comparisons' "
                                "AND constraint_type = 'PRIMARY KEY'").fetchone()[0]
    if not old_key:
        return
    for stmt in ADDED:  # a table older still gets the columns added since, then the rebuild copies them
        store.con.execute(stmt)
    with store._transaction():
        store.con.execute(DDL.replace("IF NOT EXISTS comparisons", "comparisons_rekeyed"))
        names = ", ".join((*COLUMNS, "created_at"))
        store.con.execute(f"INSERT INTO comparisons_rekeyed ({names}) SELECT {names} FROM comparisons")
        store.con.execute("DROP TABLE comparisons")
        store.con.execute("ALTER TABLE comparisons_rekeyed RENAME TO comparisons")
        store.con.execute(KEY)


def _kind(row: dict[str, Any]) -> bool:
    """True for a ``compare --checkpoints`` row (it has a training step)."""
    return row.get("step") is not None


def write_comparison(store: ResultsStore, row: dict[str, Any]) -> bool:
    """Insert one comparison row (keys as in ``COLUMNS``); False when its (case, fingerprint, kind) is stored."""
    _prepare(store)
    key = [row["case_id"], row["model_fingerprint"], _kind(row)]
    if store.con.execute("SELECT 1 FROM comparisons WHERE case_id = ? AND model_fingerprint = ? "
                         "AND (step IS NOT NULL) = ?", key).fetchone():
        return False
    values = [json.dumps(row.get(c) or {}, sort_keys=True) if c == "segment_relevance"
              else json.dumps(row.get(c) or []) if c == "notes"
              else None if c == "tokens" and row.get(c) is None
              else json.dumps(row[c], ensure_ascii=False) if c == "tokens" else row.get(c) for c in COLUMNS]
    cols = ", ".join((*COLUMNS, "created_at"))
    marks = ", ".join("?" * (len(COLUMNS) + 1))
    store.con.execute(f"INSERT INTO comparisons ({cols}) VALUES ({marks})",
                      [*values, datetime.now(timezone.utc).replace(tzinfo=None)])
    return True


def fill_training_run(store: ResultsStore, fingerprint: str, run: str) -> None:
    """Record the finetune run on checkpoint rows of these weights stored before runs were recorded, so that a
    rerun of ``compare --checkpoints`` joins them to the run's newer rows (one series, not two)."""
    if not _present(store):
        return
    _prepare(store)
    with store._transaction():
        store.con.execute("UPDATE comparisons SET training_run = ? WHERE model_fingerprint = ? AND step IS NOT NULL "
                          "AND training_run IS NULL", [run, fingerprint])


def checkpoint_runs(store: ResultsStore) -> list[dict[str, Any]]:
    """``{model, step, training_run}`` of every checkpoint row (``training_run`` None where the store predates it):
    what names the series (report.compare_data.series_names) wherever a view lists checkpoint rows."""
    if not _present(store):
        return []
    return store._rows(checkpoint_rows_sql(store.con))


def checkpoint_rows_sql(con: Any) -> str:
    """The query of :func:`checkpoint_runs` on a connection or cursor (the explorer's reads it on its own)."""
    return f"SELECT model, step, {training_run_column(con)} FROM comparisons WHERE step IS NOT NULL"


def training_run_column(con: Any) -> str:
    """``training_run`` in a SELECT list, or ``NULL AS training_run`` where the table predates it (read-only readers
    never migrate it)."""
    has = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'comparisons' "
                      "AND column_name = 'training_run'").fetchone()[0]
    return "training_run" if has else "NULL AS training_run"


def writes_columns(con: Any) -> str:
    """The first top token after masking (k = 0: what that model writes), its text and the pair's ids in a SELECT
    list, as one-element lists (``views.common.writes`` reads them); NULLs where the table predates them."""
    has = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'comparisons' "
                      "AND column_name IN ('flip_tops', 'flip_top_texts')").fetchone()[0] == 2
    tops = "flip_tops[1:1] AS flip_tops, flip_top_texts[1:1] AS flip_top_texts" if has else \
        "NULL AS flip_tops, NULL AS flip_top_texts"
    return f"target_id, contrast_id, {tops}"


def done_comparisons(store: ResultsStore, checkpoint: bool) -> set[tuple[str, str]]:
    """(case_id, model_fingerprint) keys already stored as model rows, or as checkpoint rows (``checkpoint``)."""
    if not _present(store):
        return set()
    rows = store.con.execute("SELECT case_id, model_fingerprint, step IS NOT NULL FROM comparisons").fetchall()
    return {(a, b) for a, b, kind in rows if kind == checkpoint}


# k* as read: a row whose unmasked Δℓ is already < 0 (flip_curve[1], DuckDB lists count from 1) is corrected, with
# no failure to flip (analysis.masking.first_flip); rows written before 5 Dec 2026 stored k* = 1 there.
FLIP_K = "CASE WHEN flip_curve[1] < 0 THEN NULL ELSE flip_k END"


def comparison_counts(store: ResultsStore) -> dict[str, int]:
    """How much the comparisons table holds: ``cases`` (with a row on another model or a checkpoint: a stopped
    compare may have stored a case's own-model row alone), ``models`` (compare --models rows, the reference model's
    own included) and ``checkpoints`` (compare --checkpoints rows), each counted by content fingerprint; all 0 when
    nothing was compared."""
    if not _present(store):
        return {"cases": 0, "models": 0, "checkpoints": 0}
    cases, models, checkpoints = store.con.execute(
        "SELECT count(DISTINCT case_id) FILTER (WHERE NOT reference OR step IS NOT NULL), "
        "count(DISTINCT model_fingerprint) FILTER (WHERE step IS NULL), "
        "count(DISTINCT model_fingerprint) FILTER (WHERE step IS NOT NULL) FROM comparisons").fetchone()
    return {"cases": int(cases), "models": int(models), "checkpoints": int(checkpoints)}


def load_comparisons(store: ResultsStore, case_ids: set[str] | None = None) -> list[dict[str, Any]]:
    """Stored rows (JSON columns parsed, k* as :data:`FLIP_K` reads it), ordered by case, reference model first,
    then model name."""
    if not _present(store):
        return []
    rows = store._rows(f"SELECT * REPLACE ({FLIP_K} AS flip_k) FROM comparisons ORDER BY benchmark, item_id, "
                       f"case_id, reference DESC, model, step NULLS FIRST")
    for r in rows:
        where = f"comparisons row of case {r['case_id']} on {r['model']}"
        r["segment_relevance"] = loads(r["segment_relevance"] or "{}", where, store.path)
        r["notes"] = loads(r["notes"] or "[]", where, store.path)
        r["tokens"] = loads(r["tokens"], where, store.path) if r.get("tokens") else None  # None: written before
        for column in ("special_mask", "training_run", "flip_tops", "flip_top_texts"):  # None: a table from before
            r.setdefault(column, None)
        r.pop("created_at", None)
    return [r for r in rows if case_ids is None or r["case_id"] in case_ids]


def export_comparisons_jsonl(store: ResultsStore, path: str | Path) -> Path:
    """comparisons.jsonl: one line per (case, model), the fields of issue 10's Acceptance first; atomic write."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    first = ("item_id", "model", "model_fingerprint", "token_ids", "position", "target_id", "contrast_id", "mapped",
             "delta_logit", "segment_relevance", "flip_k", "step", "split")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for r in load_comparisons(store):
                rec = {k: r[k] for k in first} | {k: v for k, v in r.items() if k not in first}
                fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)  # a damaged row, a full disk, Ctrl-C: no half file left behind
        raise
    tmp.replace(path)
    return path
