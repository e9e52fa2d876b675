"""The results store's tables (DuckDB DDL) and its schema version.

Tables, and the key that makes every write idempotent:

``schema_version``
    one row: the version of this layout. A store written by a newer failtrace is refused with a clear error.
``runs`` (``run_id``)
    one row per collection run (``stage='collect'``) and per pair-finding run (``stage='pairs'``, with
    ``parent_run_id`` pointing at the collection run it read). ``run_id`` is a hash of everything that changes the
    results (model, revision, dtype, benchmark, generation budget, thinking; for pairs also top-k, helper model,
    min-delta, max-positions), so rerunning the same command finds the same run and resumes it.
``run_items`` (``run_id, item_id``)
    which items a collection run was asked to do (its denominator in ``failtrace status``).
``items`` (``benchmark, item_id``)
    the items themselves (prompt, reference, meta as JSON text) with a content hash: the same id with different
    content is refused instead of silently mixing two datasets.
``generations`` (``run_id, item_id``)
    prompt token ids, completion text and token ids exactly as generated (EOS included when the model stopped),
    finish reason (``eos`` or ``length``), token counts, seconds.
``verdicts`` (``run_id, item_id``)
    checker status (``pass``, ``fail``, ``unverifiable``), reasons and details (JSON text). Written in the same
    transaction as its generation: a generation exists if and only if its verdict does.
``pairs`` (``pair_run_id, item_id``)
    one row per failure: its pair status and, when found, the failure point and the target/contrast tokens. Since
    version 3 also the search's cost (tokens decoded, rollouts stopped or ended early, positions decided by a prefix
    rule or rolled out, seconds spent by a judge model), the judge's hinted position, and for a completion that hit
    the length limit what continuing it to the rollout budget gave (``continued``: ``pass`` = an artefact of the
    budget, ``fail`` = a real failure, ``length`` = the larger budget was hit too, ``unverifiable``; NULL = not
    tried) with its length (:data:`PAIR_COLUMNS_V3`).

Since version 2 (see docs/CASES.md; a version-1 store is migrated by adding these tables at its first write):

``cases`` (``case_id``)
    one explained clean pair: context token ids, position (= len(token_ids), the target's index in the full
    sequence), target/contrast, Δℓ, segments, category and pattern with their evidence, graph summary, settings.
``case_methods`` (``case_id, method``)
    per attribution method: input relevance (``DOUBLE[]``), per-stage hidden relevance sums, segment relevance,
    flip curve and k*.
``case_graphs`` (``case_id``)
    the pruned attribution graph (kept nodes and edges as parallel arrays) and the settings it was built with.
``overrides`` (``case_id, created_at``)
    a person's category label with the reason; the newest one per case wins.

Version 3 adds columns to ``pairs`` (an older store is migrated at the first write of a command: columns added,
their values filled in from the old rows' reason text where it holds them, no row lost).

Version 4 adds ``flip_tops`` and ``flip_top_texts`` to ``case_methods`` (:data:`CASE_METHOD_COLUMNS_V4`): the
model's top next token after masking the top k, beside the flip curve. A store of an older version gains them at
the first write of a command (one that stops before writing leaves it as it was); the cases it holds keep them NULL
(not recorded), read as empty.

JSON-valued columns are stored as text (``VARCHAR``) so the store needs no database extension.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

SCHEMA_VERSION = 4

PAIR_STATUSES = ("clean", "no_target", "no_contrast", "weak_preference", "unbounded", "unverifiable")


NOT_SEARCHED = "not searched"  # the explorer's pair_status of a failure without a pair row yet (an API filter value)
# Each pair status as every view names and defines it (failtrace status, the report, the explorer), keyed by the
# stored value (PAIR_STATUSES) and NOT_SEARCHED: (label, what it means).
PAIR_STATUS_TEXT: dict[str, tuple[str, str]] = {
    "clean": ("clean", "forcing the contrast passes the checker and Δℓ > the minimum"),
    "no_target": ("no target", "no alternative in the model's own top-k fixes the answer at any walked position"),
    "no_contrast": ("no contrast", "not even the --sibling model's top-k does"),
    "weak_preference": ("weak preference", "a fixing token exists but Δℓ ≤ the minimum (--min-delta)"),
    "unbounded": ("unbounded", "the completion hit the token limit (or the model's context window) and its text "
                               "does not fix the verdict, so it is not among the decidable failures"),
    "unverifiable": ("unverifiable", "the checker no longer says fail, or could not decide a rollout"),
    NOT_SEARCHED: ("not paired yet", "failures the pair search has not reached"),
}
VERDICT_STATUSES = ("pass", "fail", "unverifiable")

CASE_TABLES = ("cases", "case_methods", "case_graphs", "overrides")
RUN_TABLES = ("runs", "run_items", "items", "generations", "verdicts", "pairs")  # schema version 1
TABLES = (*RUN_TABLES, *CASE_TABLES)

# Column order used by exports (a table's key).
CASE_KEYS = {"cases": ("case_id",), "case_methods": ("case_id", "method"), "case_graphs": ("case_id",),
             "overrides": ("case_id", "created_at")}

# Columns version 3 added to ``pairs`` (after created_at, so a migrated table has the same column order as a new one).
PAIR_COLUMNS_V3: tuple[tuple[str, str], ...] = (
    ("tokens_decoded", "INTEGER"), ("rollouts_stopped", "INTEGER"), ("rollouts_final", "INTEGER"),
    ("positions_decided", "INTEGER"), ("positions_rolled", "INTEGER"), ("judge_position", "INTEGER"),
    ("seconds_judge", "DOUBLE"), ("continued", "VARCHAR"), ("continued_tokens", "INTEGER"))

# Columns version 4 added to ``case_methods`` (after seconds, so a migrated table has a new one's column order).
CASE_METHOD_COLUMNS_V4: tuple[tuple[str, str], ...] = (("flip_tops", "INTEGER[]"), ("flip_top_texts", "VARCHAR[]"))

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER NOT NULL,
        written_by VARCHAR
    )""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY,
        stage VARCHAR NOT NULL,
        parent_run_id VARCHAR,
        benchmark VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        model_source VARCHAR,
        revision VARCHAR,
        dtype VARCHAR,
        device VARCHAR,
        seed INTEGER,
        versions VARCHAR,
        settings VARCHAR,
        data VARCHAR,
        created_at TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS run_items (
        run_id VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        ordinal INTEGER,
        PRIMARY KEY (run_id, item_id)
    )""",
    """CREATE TABLE IF NOT EXISTS items (
        benchmark VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        prompt VARCHAR NOT NULL,
        reference VARCHAR,
        meta VARCHAR,
        content_hash VARCHAR NOT NULL,
        PRIMARY KEY (benchmark, item_id)
    )""",
    """CREATE TABLE IF NOT EXISTS generations (
        run_id VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        benchmark VARCHAR NOT NULL,
        prompt_ids INTEGER[] NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion VARCHAR NOT NULL,
        token_ids INTEGER[] NOT NULL,
        n_tokens INTEGER NOT NULL,
        finish_reason VARCHAR NOT NULL,
        seconds DOUBLE,
        created_at TIMESTAMP,
        PRIMARY KEY (run_id, item_id)
    )""",
    """CREATE TABLE IF NOT EXISTS verdicts (
        run_id VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        reasons VARCHAR,
        details VARCHAR,
        seconds DOUBLE,
        PRIMARY KEY (run_id, item_id)
    )""",
    """CREATE TABLE IF NOT EXISTS pairs (
        pair_run_id VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        benchmark VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        reason VARCHAR,
        position INTEGER,
        completion_offset INTEGER,
        target_id INTEGER,
        target_text VARCHAR,
        contrast_id INTEGER,
        contrast_text VARCHAR,
        contrast_source VARCHAR,
        contrast_rank INTEGER,
        contrast_model_rank INTEGER,
        target_logit DOUBLE,
        contrast_logit DOUBLE,
        delta_logit DOUBLE,
        recovered_completion VARCHAR,
        rollouts INTEGER NOT NULL,
        checks INTEGER NOT NULL,
        positions_walked INTEGER NOT NULL,
        unverifiable_rollouts INTEGER NOT NULL,
        hit_length_limit BOOLEAN NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        seconds DOUBLE,
        seconds_prefix DOUBLE,
        seconds_rollouts DOUBLE,
        seconds_check DOUBLE,
        created_at TIMESTAMP,
        tokens_decoded INTEGER,
        rollouts_stopped INTEGER,
        rollouts_final INTEGER,
        positions_decided INTEGER,
        positions_rolled INTEGER,
        judge_position INTEGER,
        seconds_judge DOUBLE,
        continued VARCHAR,
        continued_tokens INTEGER,
        PRIMARY KEY (pair_run_id, item_id)
    )""",
    """CREATE TABLE IF NOT EXISTS cases (
        case_id VARCHAR PRIMARY KEY,
        analysis_id VARCHAR NOT NULL,
        pair_run_id VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        benchmark VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        model_fingerprint VARCHAR NOT NULL,
        token_ids INTEGER[] NOT NULL,
        tokens VARCHAR NOT NULL,
        special_mask BOOLEAN[] NOT NULL,
        prompt_length INTEGER NOT NULL,
        position INTEGER NOT NULL,
        target_id INTEGER NOT NULL,
        target_text VARCHAR,
        contrast_id INTEGER NOT NULL,
        contrast_text VARCHAR,
        delta_logit DOUBLE NOT NULL,
        segments VARCHAR NOT NULL,
        relevant_segments VARCHAR,
        masking VARCHAR NOT NULL,
        category VARCHAR,
        category_evidence VARCHAR,
        pattern VARCHAR,
        pattern_evidence VARCHAR,
        graph_summary VARCHAR,
        settings VARCHAR NOT NULL,
        notes VARCHAR,
        seconds VARCHAR,
        created_at TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS case_methods (
        case_id VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        input_relevance DOUBLE[] NOT NULL,
        hidden_layer_sums DOUBLE[],
        segment_relevance VARCHAR,
        flip_curve DOUBLE[],
        flip_k INTEGER,
        seconds DOUBLE,
        flip_tops INTEGER[],
        flip_top_texts VARCHAR[],
        PRIMARY KEY (case_id, method)
    )""",
    """CREATE TABLE IF NOT EXISTS case_graphs (
        case_id VARCHAR PRIMARY KEY,
        settings VARCHAR NOT NULL,
        stages VARCHAR NOT NULL,
        objective_value DOUBLE,
        node_stage INTEGER[] NOT NULL,
        node_token INTEGER[] NOT NULL,
        node_relevance DOUBLE[] NOT NULL,
        edge_source_stage INTEGER[] NOT NULL,
        edge_source_token INTEGER[] NOT NULL,
        edge_target_stage INTEGER[] NOT NULL,
        edge_target_token INTEGER[] NOT NULL,
        edge_weight DOUBLE[] NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS overrides (
        case_id VARCHAR NOT NULL,
        category VARCHAR NOT NULL,
        reason VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL
    )""",
)


@functools.lru_cache(maxsize=1)
def expected_columns() -> dict[str, frozenset[str]]:
    """Each table's columns at :data:`SCHEMA_VERSION`, read off :data:`DDL` run in an in-memory DuckDB (so the list
    is never written twice): a store of this version lacking one was damaged."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        for stmt in DDL:
            con.execute(stmt)
        rows = con.execute("SELECT table_name, column_name FROM information_schema.columns").fetchall()
    finally:
        con.close()
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return {t: frozenset(c) for t, c in out.items()}


def stored_version(con: Any, path: Any) -> int:
    """The store's schema version (the highest recorded); a missing, empty or non-integer one is a damaged store."""
    import duckdb

    from failtrace.errors import FailtraceError

    damaged = f"results store {path} has a damaged schema_version table"
    try:
        row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    except duckdb.Error:
        raise FailtraceError(f"{damaged} (no version column); it was not written by failtrace") from None
    value = row[0] if row else None
    if value is None:
        raise FailtraceError(f"results store {path} has an empty schema_version table; it is damaged or was not "
                             f"written by failtrace")
    try:
        version = int(value)
        if version != value:  # 1.5, or text such as '2'
            raise ValueError(value)
    except (TypeError, ValueError, OverflowError):
        raise FailtraceError(f"{damaged} (version {value!r} is not a whole number); it was not written by "
                             f"failtrace") from None
    return version


def _user_objects(con: Any) -> int:
    """Sequences, macros and types that someone created in this file (DuckDB's own are ``internal``)."""
    return int(con.execute("SELECT (SELECT count(*) FROM duckdb_sequences()) + (SELECT count(*) FROM "
                           "duckdb_functions() WHERE NOT internal) + (SELECT count(*) FROM duckdb_types() "
                           "WHERE NOT internal)").fetchone()[0])


def check_schema(con: Any, path: Any, *, read_only: bool) -> bool:
    """Refuse a file that is not a failtrace store, is newer, empty for a reader (``read_only``: also a writer that
    may not create one), or damaged (a lost table, or a lost column at the current version). An older one is left as
    it is (a writer migrates it when it first writes). True: a new, empty file to create."""
    from failtrace.errors import FailtraceError

    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "schema_version" not in tables:
        if tables:
            raise FailtraceError(f"{path} is a DuckDB file but not a failtrace results store (it has tables "
                                 f"{sorted(tables)[:5]} and no schema_version); use another --store")
        if _user_objects(con):  # no tables, but someone's sequences, macros or types: not an empty file to fill
            raise FailtraceError(f"{path} is a DuckDB file but not a failtrace results store (it holds sequences, "
                                 f"macros or types and no failtrace tables); use another --store")
        if read_only:
            raise FailtraceError(f"results store {path} is empty; run `failtrace collect` first")
        return True
    version = stored_version(con, path)
    if version < 1:
        raise FailtraceError(f"results store {path} has schema version {version}, which no failtrace wrote "
                             f"(versions start at 1); it is damaged or was not written by failtrace")
    if version > SCHEMA_VERSION:
        raise FailtraceError(f"results store {path} was written by a newer failtrace (store schema version {version}; "
                             f"this failtrace reads versions up to {SCHEMA_VERSION}); upgrade failtrace to read it")
    # an older layout is read as it is; a writer migrates it at its first write (ResultsStore._transaction)
    required = TABLES if version >= 2 else RUN_TABLES  # version 1 had no case tables (old layouts are read)
    missing = [t for t in required if t not in tables]  # never recreated: an empty table would hide the damage
    lost = lost_columns(con, TABLES) if not missing and version >= SCHEMA_VERSION else []  # read as empty, a lost
    if missing or lost:  # column would make a report call every case unlabelled
        what = f"table(s) {', '.join(missing)}" if missing else f"column(s) {', '.join(lost[:6])}"
        raise FailtraceError(f"results store {path} lacks {what} of its schema version {version}; it is damaged; "
                             f"the file was left unchanged. Restore it from a copy or give another --store")
    return False


def lost_columns(con: Any, tables: Sequence[str]) -> list[str]:
    """``table.column`` for every column of :func:`expected_columns` that ``tables`` lack in the open store ``con``."""
    have: dict[str, set[str]] = {}
    for table, column in con.execute("SELECT table_name, column_name FROM information_schema.columns").fetchall():
        have.setdefault(table, set()).add(column)
    expected = expected_columns()
    return [f"{t}.{c}" for t in tables for c in sorted(expected.get(t, frozenset()) - have.get(t, set()))]
