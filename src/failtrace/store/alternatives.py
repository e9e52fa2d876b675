"""The ``case_alternatives`` table: per case, the model's top-k next tokens at the failure point
(:mod:`failtrace.cases.alternatives`). Created on first write (``CREATE TABLE IF NOT EXISTS``: it only adds a table,
so the schema version is unchanged and an older failtrace still opens the store); one row per case, never rewritten.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from failtrace.store.records import loads

if TYPE_CHECKING:
    from failtrace.store.store import ResultsStore

DDL = """CREATE TABLE IF NOT EXISTS case_alternatives (
    case_id VARCHAR PRIMARY KEY,
    k INTEGER NOT NULL,
    target_logit DOUBLE NOT NULL,
    token_ids INTEGER[] NOT NULL,
    tokens VARCHAR NOT NULL,
    logits DOUBLE[] NOT NULL,
    ranks INTEGER[] NOT NULL
)"""


def present(con: Any) -> bool:
    """True when the store has the ``case_alternatives`` table (stores from before it lack it)."""
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'case_alternatives'"
                            ).fetchone()[0])


def insert(con: Any, case_id: str, rec: dict[str, Any]) -> bool:
    """Write one case's record (inside the caller's transaction); False when that case already has one."""
    con.execute(DDL)
    if con.execute("SELECT count(*) FROM case_alternatives WHERE case_id = ?", [case_id]).fetchone()[0]:
        return False
    con.execute("INSERT INTO case_alternatives VALUES (?, ?, ?, ?, ?, ?, ?)",
                [case_id, int(rec["k"]), float(rec["target_logit"]), [int(t) for t in rec["token_ids"]],
                 json.dumps(rec["tokens"], ensure_ascii=False), [float(x) for x in rec["logits"]],
                 [int(r) for r in rec["ranks"]]])
    return True


def read(con: Any, case_id: str) -> dict[str, Any] | None:
    """One case's record (tokens parsed), or None when none is stored."""
    if not present(con):
        return None
    row = con.execute("SELECT k, target_logit, token_ids, tokens, logits, ranks FROM case_alternatives "
                      "WHERE case_id = ?", [case_id]).fetchone()
    if row is None:
        return None
    tokens = loads(row[3], f"case_alternatives.tokens of case {case_id}")
    return {"k": row[0], "target_logit": row[1], "token_ids": list(row[2]), "tokens": tokens,
            "logits": list(row[4]), "ranks": list(row[5])}


def done(store: ResultsStore) -> set[str]:
    """Case ids that have a record."""
    if not present(store.con):
        return set()
    return {r[0] for r in store.con.execute("SELECT case_id FROM case_alternatives").fetchall()}
