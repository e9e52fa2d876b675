"""The results store: an embedded DuckDB file with runs, items, generations, verdicts and pairs (crash-safe)."""

from failtrace.store.records import DEFAULT_STORE, GenerationRecord, RunRecord, StatusRow, content_hash
from failtrace.store.schema import PAIR_STATUSES, SCHEMA_VERSION, TABLES
from failtrace.store.store import ResultsStore, open_store

__all__ = [
    "DEFAULT_STORE",
    "PAIR_STATUSES",
    "SCHEMA_VERSION",
    "TABLES",
    "GenerationRecord",
    "ResultsStore",
    "RunRecord",
    "StatusRow",
    "content_hash",
    "open_store",
]
