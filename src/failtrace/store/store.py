"""The results store: one DuckDB file holding runs, items, generations, verdicts and pairs.

Crash safety. Every record that finishes a unit of work (one item's generation + verdict, one failure's pair) is
written in its own transaction and keyed by a primary key, with ``INSERT OR IGNORE``. DuckDB makes a committed
transaction durable (write-ahead log) before ``COMMIT`` returns, and replays the log when the file is opened again.
So a process killed at any moment, even by SIGKILL, loses at most the unit it was working on, and a rerun skips
everything already committed and can never write a record twice.

Concurrency. DuckDB lets one process write a file at a time. Commands that only read (``status``, ``export``) open
the file read-only; when a running ``collect``/``pairs`` holds the lock they read a snapshot copy instead (the
committed state at the moment of the copy).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from failtrace.benchmarks.base import Item, Verdict
from failtrace.errors import FailtraceError
from failtrace.store.schema import CASE_KEYS, DDL, PAIR_STATUSES, SCHEMA_VERSION, TABLES, migrate

DEFAULT_STORE = "failtrace.duckdb"

# Columns holding JSON text: parsed back into objects by the JSONL export and the readers below.
_JSON_COLUMNS = {"versions", "settings", "prompt", "reference", "meta", "reasons", "details"}

_KEYS = {
    "runs": ("run_id",),
    "run_items": ("run_id", "ordinal", "item_id"),
    "items": ("benchmark", "item_id"),
    "generations": ("run_id", "item_id"),
    "verdicts": ("run_id", "item_id"),
    "pairs": ("pair_run_id", "item_id"),
    **CASE_KEYS,
}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str)


def content_hash(item: Item) -> str:
    """Hash of an item's prompt and reference: two items with one id but different content are refused."""
    payload = _dumps({"prompt": item.prompt, "reference": item.reference})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@dataclass
class RunRecord:
    """One collection or pair-finding run: what produced the records that carry its ``run_id``."""

    run_id: str
    stage: str  # "collect" or "pairs"
    benchmark: str
    model: str
    parent_run_id: str | None = None
    model_source: str | None = None
    revision: str | None = None
    dtype: str | None = None
    device: str | None = None
    seed: int | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    data: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class GenerationRecord:
    """One greedy generation: prompt ids, completion ids exactly as generated, decoded text, finish reason."""

    prompt_ids: list[int]
    token_ids: list[int]
    completion: str
    finish_reason: str  # "eos" or "length"
    seconds: float = 0.0

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationRecord:
        return cls(prompt_ids=[int(t) for t in d["prompt_ids"]], token_ids=[int(t) for t in d["token_ids"]],
                   completion=d["completion"], finish_reason=d["finish_reason"], seconds=float(d.get("seconds") or 0))


@dataclass
class StatusRow:
    """One line of ``failtrace status``: a collection run and, if any, one pair-finding run over it."""

    benchmark: str
    model: str
    run_id: str
    pair_run_id: str | None
    pair_settings: dict[str, Any]
    items: int
    generated: int
    passed: int
    failed: int
    unverifiable: int
    pairs: dict[str, int]
    avg_prompt_tokens: float | None
    avg_completion_tokens: float | None

    @property
    def clean_rate(self) -> float | None:
        """Clean cases over failed items (``None`` when nothing failed)."""
        return self.pairs.get("clean", 0) / self.failed if self.failed else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clean_rate"] = self.clean_rate
        return d


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


class ResultsStore:
    """A failtrace results store (a DuckDB file). Use as a context manager; see the module docstring."""

    def __init__(self, path: str | Path, read_only: bool = False, create: bool = True) -> None:
        import duckdb

        self.path = Path(path)
        self.read_only = read_only
        self._snapshot_dir: Path | None = None
        if not self.path.exists():
            if read_only or not create:
                raise FailtraceError(f"no results store at {self.path}; run `failtrace collect --store {self.path}` "
                                     f"first, or pass the right --store")
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.is_dir():
            raise FailtraceError(f"--store {self.path} is a folder; give a file path such as {DEFAULT_STORE}")
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as exc:
            if _is_lock_error(exc) and read_only:
                self.con = self._open_snapshot(exc)
            elif _is_lock_error(exc):
                raise FailtraceError(
                    f"results store {self.path} is in use by another process (DuckDB allows one writer at a time); "
                    f"wait for it to finish or use another --store. ({str(exc).splitlines()[0][:200]})"
                ) from None
            else:
                raise FailtraceError(f"cannot open results store {self.path}: {str(exc).splitlines()[0][:300]}") \
                    from None
        try:
            self._check_schema()
        except BaseException:
            self.close()
            raise

    # ---- opening -------------------------------------------------------------------------------------------------

    def _open_snapshot(self, original: Exception) -> Any:
        """Copy the locked file (and its write-ahead log) aside and open the copy read-only."""
        import duckdb

        self._snapshot_dir = Path(tempfile.mkdtemp(prefix="failtrace-store-"))
        copy = self._snapshot_dir / self.path.name
        try:
            shutil.copy2(self.path, copy)
            wal = self.path.with_name(self.path.name + ".wal")
            if wal.exists():
                shutil.copy2(wal, copy.with_name(copy.name + ".wal"))
            return duckdb.connect(str(copy), read_only=False)
        except (OSError, duckdb.Error):
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)
            self._snapshot_dir = None
            raise FailtraceError(
                f"results store {self.path} is being written by another process and no consistent snapshot could be "
                f"read; try again when it finishes ({str(original).splitlines()[0][:200]})"
            ) from None

    def _check_schema(self) -> None:
        tables = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "schema_version" in tables:
            row = self.con.execute("SELECT max(version) FROM schema_version").fetchone()
            version = int(row[0]) if row and row[0] is not None else None
            if version is None:
                raise FailtraceError(f"results store {self.path} has an empty schema_version table; it is damaged or "
                                     f"was not written by failtrace")
            if version > SCHEMA_VERSION:
                raise FailtraceError(
                    f"results store {self.path} was written by a newer failtrace (store schema version {version}; "
                    f"this failtrace reads versions up to {SCHEMA_VERSION}); upgrade failtrace to read it"
                )
            if not self.read_only and version < SCHEMA_VERSION:
                migrate(self.con, version)  # adds tables only (store/schema.py); read-only opens read the old layout
                tables = {r[0] for r in self.con.execute(
                    "SELECT table_name FROM information_schema.tables").fetchall()}
            missing = [t for t in TABLES if t not in tables]
            if missing and not self.read_only:
                self._create()
            return
        if tables - {"schema_version"}:
            raise FailtraceError(f"{self.path} is a DuckDB file but not a failtrace results store (it has tables "
                                 f"{sorted(tables)[:5]} and no schema_version); use another --store")
        if self.read_only:
            raise FailtraceError(f"results store {self.path} is empty; run `failtrace collect` first")
        self._create()

    def _create(self) -> None:
        self.con.begin()
        try:
            for stmt in DDL:
                self.con.execute(stmt)
            if self.con.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0:
                from failtrace import __version__ as ft_version

                self.con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, f"failtrace {ft_version}"])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def close(self) -> None:
        """Close the connection (DuckDB checkpoints the log into the file)."""
        con = getattr(self, "con", None)
        if con is not None:
            con.close()
            self.con = None
        if self._snapshot_dir is not None:
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)
            self._snapshot_dir = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_snapshot(self) -> bool:
        """True when this read-only store is a copy taken because another process holds the file."""
        return self._snapshot_dir is not None

    @property
    def schema_version(self) -> int:
        return int(self.con.execute("SELECT max(version) FROM schema_version").fetchone()[0])

    # ---- helpers -------------------------------------------------------------------------------------------------

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, list(params))
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            d = dict(zip(names, row, strict=True))
            for k in _JSON_COLUMNS & d.keys():
                if isinstance(d[k], str):
                    d[k] = json.loads(d[k])
            out.append(d)
        return out

    def _transaction(self) -> _Transaction:
        if self.read_only:
            raise FailtraceError(f"results store {self.path} was opened read-only")
        return _Transaction(self.con)

    # ---- runs and items ------------------------------------------------------------------------------------------

    def ensure_run(self, run: RunRecord) -> bool:
        """Record ``run`` unless a run with its id exists. Returns True when it was new."""
        with self._transaction():
            exists = self.con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run.run_id]).fetchone()[0]
            if exists:
                return False
            self.con.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run.run_id, run.stage, run.parent_run_id, run.benchmark, run.model, run.model_source, run.revision,
                 run.dtype, run.device, run.seed, _dumps(run.versions), _dumps(run.settings), run.data, _now()],
            )
        return True

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._rows("SELECT * FROM runs WHERE run_id = ?", [run_id])
        return RunRecord.from_dict(rows[0]) if rows else None

    def runs(self, stage: str | None = None) -> list[RunRecord]:
        """All runs (of one stage), oldest first."""
        if stage is None:
            rows = self._rows("SELECT * FROM runs ORDER BY created_at, run_id")
        else:
            rows = self._rows("SELECT * FROM runs WHERE stage = ? ORDER BY created_at, run_id", [stage])
        return [RunRecord.from_dict(r) for r in rows]

    def add_items(self, run_id: str, benchmark: str, items: list[Item]) -> None:
        """Store ``items`` (once per benchmark and id) and note that run ``run_id`` covers them, in one transaction.

        An id already stored with different content is an error: two datasets would otherwise mix silently.
        """
        seen: set[str] = set()
        for it in items:
            if it.id in seen:
                raise FailtraceError(f"item id {it.id!r} appears more than once in the {benchmark} data; ids must "
                                     f"be unique")
            seen.add(it.id)
        stored = dict(self.con.execute("SELECT item_id, content_hash FROM items WHERE benchmark = ?",
                                       [benchmark]).fetchall())
        clashes = [it.id for it in items if it.id in stored and stored[it.id] != content_hash(it)]
        if clashes:
            raise FailtraceError(
                f"{len(clashes)} {benchmark} item(s) are already in {self.path} with different content (first: "
                f"{clashes[0]!r}); the data changed since they were collected. Use a new --store for the new data."
            )
        ordinal0 = self.con.execute("SELECT coalesce(max(ordinal) + 1, 0) FROM run_items WHERE run_id = ?",
                                    [run_id]).fetchone()[0]
        covered = {r[0] for r in self.con.execute("SELECT item_id FROM run_items WHERE run_id = ?",
                                                  [run_id]).fetchall()}
        new_items = [it for it in items if it.id not in stored]
        new_links = [it for it in items if it.id not in covered]
        with self._transaction():
            if new_items:
                self.con.executemany(
                    "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?)",
                    [[benchmark, it.id, _dumps(it.prompt), _dumps(it.reference), _dumps(it.meta), content_hash(it)]
                     for it in new_items],
                )
            if new_links:
                self.con.executemany("INSERT OR IGNORE INTO run_items VALUES (?, ?, ?)",
                                     [[run_id, it.id, ordinal0 + i] for i, it in enumerate(new_links)])

    def get_item(self, benchmark: str, item_id: str) -> Item:
        rows = self._rows("SELECT * FROM items WHERE benchmark = ? AND item_id = ?", [benchmark, item_id])
        if not rows:
            raise FailtraceError(f"item {item_id!r} of benchmark {benchmark} is not in {self.path}")
        r = rows[0]
        return Item(id=r["item_id"], benchmark=benchmark, prompt=r["prompt"], reference=r["reference"] or {},
                    meta=r["meta"] or {})

    def run_item_ids(self, run_id: str) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT item_id FROM run_items WHERE run_id = ? ORDER BY ordinal",
                                               [run_id]).fetchall()]

    # ---- generations and verdicts --------------------------------------------------------------------------------

    def done_item_ids(self, run_id: str) -> set[str]:
        """Items of ``run_id`` whose generation and verdict are committed (skipped by a rerun)."""
        return {r[0] for r in self.con.execute("SELECT item_id FROM generations WHERE run_id = ?", [run_id]).fetchall()}

    def write_result(self, run_id: str, item: Item, gen: GenerationRecord, verdict: Verdict,
                     verdict_seconds: float = 0.0) -> bool:
        """Commit one item's generation and verdict together. Returns False if they were already stored."""
        with self._transaction():
            if self.con.execute("SELECT count(*) FROM generations WHERE run_id = ? AND item_id = ?",
                                [run_id, item.id]).fetchone()[0]:
                return False
            self.con.execute(
                "INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, item.id, item.benchmark, list(gen.prompt_ids), len(gen.prompt_ids), gen.completion,
                 list(gen.token_ids), gen.n_tokens, gen.finish_reason, gen.seconds, _now()],
            )
            self.con.execute(
                "INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?)",
                [run_id, item.id, verdict.status, _dumps(verdict.reasons), _dumps(verdict.details), verdict_seconds],
            )
        return True

    def results(self, run_id: str, status: str | None = None) -> list[dict[str, Any]]:
        """Generation + verdict rows of a run (optionally only one verdict status), in the run's item order."""
        sql = ("SELECT g.*, v.status, v.reasons, v.details, ri.ordinal FROM generations g "
               "JOIN verdicts v USING (run_id, item_id) "
               "LEFT JOIN run_items ri USING (run_id, item_id) WHERE g.run_id = ?")
        params: list[Any] = [run_id]
        if status is not None:
            sql += " AND v.status = ?"
            params.append(status)
        return self._rows(sql + " ORDER BY ri.ordinal NULLS LAST, g.item_id", params)

    # ---- pairs ---------------------------------------------------------------------------------------------------

    def done_pair_ids(self, pair_run_id: str) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT item_id FROM pairs WHERE pair_run_id = ?",
                                               [pair_run_id]).fetchall()}

    def write_pair(self, pair_run_id: str, run_id: str, item_id: str, benchmark: str, pair: dict[str, Any]) -> bool:
        """Commit one failure's pair record. Returns False if this pair run already has it."""
        cols = ["status", "reason", "position", "completion_offset", "target_id", "target_text", "contrast_id",
                "contrast_text", "contrast_source", "contrast_rank", "contrast_model_rank", "target_logit",
                "contrast_logit", "delta_logit", "recovered_completion", "rollouts", "checks", "positions_walked",
                "unverifiable_rollouts", "hit_length_limit", "prompt_tokens", "completion_tokens", "seconds",
                "seconds_prefix", "seconds_rollouts", "seconds_check"]
        if pair.get("status") not in PAIR_STATUSES:
            raise ValueError(f"pair status must be one of {PAIR_STATUSES}, got {pair.get('status')!r}")
        with self._transaction():
            if self.con.execute("SELECT count(*) FROM pairs WHERE pair_run_id = ? AND item_id = ?",
                                [pair_run_id, item_id]).fetchone()[0]:
                return False
            values = [pair_run_id, run_id, item_id, benchmark] + [pair.get(c) for c in cols] + [_now()]
            self.con.execute(f"INSERT INTO pairs VALUES ({', '.join('?' * len(values))})", values)
        return True

    def pairs(self, pair_run_id: str | None = None) -> list[dict[str, Any]]:
        if pair_run_id is None:
            return self._rows("SELECT * FROM pairs ORDER BY pair_run_id, item_id")
        return self._rows("SELECT * FROM pairs WHERE pair_run_id = ? ORDER BY item_id", [pair_run_id])

    # ---- summaries and export ------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Number of rows per table."""
        return {t: int(self.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}

    def status_rows(self) -> list[StatusRow]:
        """Per collection run (and per pair-finding run over it): the paper's Table 1 columns."""
        out: list[StatusRow] = []
        for run in self.runs("collect"):
            items = self.con.execute("SELECT count(*) FROM run_items WHERE run_id = ?", [run.run_id]).fetchone()[0]
            agg = self.con.execute(
                "SELECT count(*), count(*) FILTER (v.status = 'pass'), count(*) FILTER (v.status = 'fail'), "
                "count(*) FILTER (v.status = 'unverifiable'), avg(g.prompt_tokens), avg(g.n_tokens) "
                "FROM generations g JOIN verdicts v USING (run_id, item_id) WHERE g.run_id = ?",
                [run.run_id]).fetchone()
            generated, passed, failed, unverif, avg_p, avg_c = agg
            pair_runs = [r for r in self.runs("pairs") if r.parent_run_id == run.run_id]
            base = dict(benchmark=run.benchmark, model=run.model, run_id=run.run_id, items=int(items),
                        generated=int(generated), passed=int(passed), failed=int(failed), unverifiable=int(unverif),
                        avg_prompt_tokens=None if avg_p is None else float(avg_p),
                        avg_completion_tokens=None if avg_c is None else float(avg_c))
            if not pair_runs:
                out.append(StatusRow(pair_run_id=None, pair_settings={}, pairs={}, **base))
            for pr in pair_runs:
                counts = dict(self.con.execute("SELECT status, count(*) FROM pairs WHERE pair_run_id = ? "
                                               "GROUP BY status", [pr.run_id]).fetchall())
                pairs = {s: int(counts.get(s, 0)) for s in PAIR_STATUSES}
                out.append(StatusRow(pair_run_id=pr.run_id, pair_settings=pr.settings, pairs=pairs, **base))
        return out

    def export(self, out_dir: str | Path, fmt: str) -> list[Path]:
        """Write every table to ``out_dir`` as ``<table>.parquet`` or ``<table>.jsonl``; returns the files.

        Parquet keeps JSON-valued columns as JSON text; JSONL parses them into nested objects.
        """
        fmt = fmt.lower()
        if fmt not in ("parquet", "jsonl"):
            raise FailtraceError(f"unknown export format {fmt!r}; use parquet or jsonl")
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise FailtraceError(f"--out {out} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        files = []
        present = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        for table in (*TABLES, "schema_version"):
            if table not in present or (fmt == "jsonl" and table in ("cases", "case_methods")):
                continue  # an old read-only store; JSONL writes cases as one cases.jsonl below
            order = ", ".join(_KEYS.get(table, ("version",)))
            query = f"SELECT * FROM {table} ORDER BY {order}"
            if fmt == "parquet":
                path = out / f"{table}.parquet"
                target = str(path).replace("'", "''")
                self.con.execute(f"COPY ({query}) TO '{target}' (FORMAT PARQUET)")
            else:
                path = out / f"{table}.jsonl"
                tmp = path.with_name(path.name + ".part")
                with tmp.open("w", encoding="utf-8") as fh:
                    for row in self._iter_rows(query):
                        fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                tmp.replace(path)
            files.append(path)
        if fmt == "jsonl" and "cases" in present:
            from failtrace.store.cases import export_cases_jsonl

            files.append(export_cases_jsonl(self, out / "cases.jsonl"))
        if fmt == "jsonl" and "comparisons" in present:
            from failtrace.store.comparisons import export_comparisons_jsonl

            files.append(export_comparisons_jsonl(self, out / "comparisons.jsonl"))
        elif "comparisons" in present:
            target = str(out / "comparisons.parquet").replace("'", "''")
            self.con.execute(f"COPY (SELECT * FROM comparisons ORDER BY case_id, model_fingerprint) TO '{target}' "
                             f"(FORMAT PARQUET)")
            files.append(out / "comparisons.parquet")
        return files

    def _iter_rows(self, sql: str, batch: int = 1000) -> Iterator[dict[str, Any]]:
        cur = self.con.cursor()
        try:
            cur.execute(sql)
            names = [d[0] for d in cur.description]
            while True:
                chunk = cur.fetchmany(batch)
                if not chunk:
                    break
                for row in chunk:
                    d = dict(zip(names, row, strict=True))
                    for k in _JSON_COLUMNS & d.keys():
                        if isinstance(d[k], str):
                            d[k] = json.loads(d[k])
                    yield d
        finally:
            cur.close()


class _Transaction:
    """``with`` block that commits on success and rolls back on any exception."""

    def __init__(self, con: Any) -> None:
        self.con = con

    def __enter__(self) -> _Transaction:
        self.con.begin()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.con.commit()
        else:
            self.con.rollback()


def open_store(path: str | Path = DEFAULT_STORE, read_only: bool = False, create: bool = True) -> ResultsStore:
    """Open (or create, unless ``read_only`` or ``create=False``) the results store at ``path``."""
    return ResultsStore(path, read_only=read_only, create=create)
