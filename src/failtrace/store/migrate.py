"""Bringing a store of an older schema version up to :data:`~failtrace.store.schema.SCHEMA_VERSION`: called by a
command's first write (``ResultsStore._transaction``), never when a store is only opened, so a command that stops
before writing leaves an older store byte for byte."""

from __future__ import annotations

from failtrace.store.schema import CASE_METHOD_COLUMNS_V4, DDL, PAIR_COLUMNS_V3, SCHEMA_VERSION

# How a version-2 row's reason text held what version 3 stores in columns (written by failtrace before version 3).
_BACKFILL: tuple[tuple[str, str], ...] = (
    ("tokens_decoded", r"(\d+) tokens decoded, \d+ stopped early"),
    ("rollouts_stopped", r"(\d+) stopped early, \d+ positions decided"),
    ("positions_decided", r"(\d+) positions decided by the prefix\]"),
    ("continued_tokens", r"limit and passes when continued to (\d+) tokens"),
    ("continued_tokens", r"limit but stops at (\d+) tokens within the rollout budget"),
)
_BACKFILL_CONTINUED: tuple[tuple[str, str], ...] = (
    ("pass", r"limit and passes when continued to \d+ tokens"),
    ("fail", r"limit but stops at \d+ tokens within the rollout budget \d+ and still fails"),
)


def migrate(con: object, from_version: int) -> None:
    """Bring a store of an older schema version to :data:`SCHEMA_VERSION` in one transaction.

    1 -> 2 only adds the case tables (``CREATE TABLE IF NOT EXISTS``); 2 -> 3 adds the :data:`PAIR_COLUMNS_V3` to
    ``pairs`` and fills them from each row's reason text where it has them (else they stay NULL: unknown); 3 -> 4
    adds the :data:`CASE_METHOD_COLUMNS_V4` to ``case_methods`` (NULL: not recorded). No existing row is removed or
    loses a value.
    """
    if from_version not in (1, 2, 3):
        from failtrace.errors import FailtraceError

        raise FailtraceError(f"store schema version {from_version} is unknown; no migration to {SCHEMA_VERSION}")
    from failtrace import __version__ as ft_version

    run = con.execute  # type: ignore[attr-defined]
    con.begin()  # type: ignore[attr-defined]
    try:
        for stmt in DDL:
            run(stmt)
        for name, kind in PAIR_COLUMNS_V3:
            run(f"ALTER TABLE pairs ADD COLUMN IF NOT EXISTS {name} {kind}")
        for name, kind in CASE_METHOD_COLUMNS_V4:
            run(f"ALTER TABLE case_methods ADD COLUMN IF NOT EXISTS {name} {kind}")
        for name, pattern in _BACKFILL:
            run(f"UPDATE pairs SET {name} = CAST(regexp_extract(reason, ?, 1) AS INTEGER) "
                f"WHERE {name} IS NULL AND regexp_matches(reason, ?)", [pattern, pattern])
        for value, pattern in _BACKFILL_CONTINUED:
            run("UPDATE pairs SET continued = ? WHERE continued IS NULL AND regexp_matches(reason, ?)",
                [value, pattern])
        run("UPDATE schema_version SET version = ?, written_by = ?",
            [SCHEMA_VERSION, f"failtrace {ft_version} (migrated from {from_version})"])
        con.commit()  # type: ignore[attr-defined]
    except BaseException:
        con.rollback()  # type: ignore[attr-defined]
        raise
