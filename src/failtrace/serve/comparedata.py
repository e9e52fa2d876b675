"""The explorer's "across models / checkpoints" data, read with plain SQL on a per-request cursor.

* :func:`case_compare`: one case on every compared model or checkpoint, each model's AttnLRP relevance drawn on the
  case's own tokens (:func:`failtrace.serve.align.project`, aligned by character spans of the decoded tokens).
* :func:`figures`: the data of Fig. 4–7, by the report's own functions (:mod:`failtrace.report.compare_data`), so the
  explorer's plots and the report's figures always agree.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from failtrace.attribution.normalize import normalize
from failtrace.report import compare_data as D
from failtrace.serve.align import project
from failtrace.serve.casedata import finite
from failtrace.store.comparisons import FLIP_K, checkpoint_rows_sql, training_run_column, writes_columns
from failtrace.store.records import loads
from failtrace.views.common import k_star_label, writes

_LIGHT = ("case_id, model, model_fingerprint, item_id, benchmark, reference, mapped, delta_logit, "
          f"segment_relevance, {FLIP_K} AS flip_k, step, split")


def _rows(cur: Any, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    res = cur.execute(sql, params)
    names = [d[0] for d in res.description]
    return [dict(zip(names, r)) for r in res.fetchall()]


def _order(r: dict[str, Any]) -> tuple[Any, ...]:
    """The case's model first, then other models by name, then checkpoints by series and step."""
    ckpt = r["step"] is not None
    return (not r["reference"], ckpt, r["series"] if ckpt else r["model"], r["step"] or 0, str(r["split"] or ""))


def _aligned(case_tokens: list[str], row: dict[str, Any], same: bool) -> dict[str, Any] | None:
    """Normalised relevance of ``row`` on the case's tokens (identity when it *is* the case's tokenisation)."""
    rel, tokens = row.get("input_relevance"), row.get("tokens")
    if not rel or tokens is None or len(rel) != len(tokens):
        return None
    special = row.get("special_mask") or [False] * len(rel)
    norm = normalize([float(x) for x in rel], [bool(x) for x in special]).tolist()
    if same:
        return {"values": finite(norm), "spans": [[i, i] for i in range(len(norm))], "unaligned": 0.0,
                "matched_chars": 1.0, "identical": True}
    out = project(case_tokens, tokens, norm)
    return {k: out[k] for k in ("values", "spans", "unaligned", "matched_chars")} | {"identical": False}


def series_names_of(cur: Any) -> dict[str, str]:
    """Series key -> name over every checkpoint row, as the figures name the runs."""
    return D.series_names(_rows(cur, checkpoint_rows_sql(cur), []))


def case_compare(cur: Any, case_id: str, names: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Every comparison row of one case with its aligned heatmap, or None when the case has none; ``names``:
    :func:`series_names_of` (the explorer computes it once), else read here."""
    rows = _rows(cur, f"SELECT * EXCLUDE (created_at) REPLACE ({FLIP_K} AS flip_k) FROM comparisons "
                      f"WHERE case_id = ?", [case_id])
    if not rows:
        return None
    case = _rows(cur, "SELECT tokens, token_ids, special_mask, prompt_length FROM cases WHERE case_id = ?",
                 [case_id])
    if not case:
        return None
    tokens = loads(case[0]["tokens"], "cases.tokens")
    ids = list(case[0]["token_ids"])
    names = series_names_of(cur) if names is None else names
    for r in rows:
        r["series"] = names[D.series_key(r)] if r["step"] is not None else None
    out = []
    for r in sorted(rows, key=_order):
        r["tokens"] = loads(r["tokens"], "comparisons.tokens") if r.get("tokens") else None
        r["segment_relevance"] = loads(r["segment_relevance"] or "{}", "comparisons.segment_relevance")
        same = r["tokens"] == tokens and list(r["token_ids"] or []) == ids
        entry = {k: r[k] for k in ("model", "model_fingerprint", "reference", "mapped", "delta_logit", "flip_k",
                                   "step", "split", "target_id", "contrast_id", "prompt_length", "position")}
        top = writes(r) if r["mapped"] else None  # what that model writes at the failure point (None: not recorded)
        entry["writes"] = None if top is None else {"text": top[0], "role": top[1]}
        # k* as every view prints it (views.common.k_star_label: "—" for a model that is corrected already)
        curve = [] if r["delta_logit"] is None else [r["delta_logit"]]  # the curve starts at Δℓ
        entry |= {"k_label": k_star_label(SimpleNamespace(flip_k=r["flip_k"], flip_curve=curve)),
                  "corrected": None if r["delta_logit"] is None else r["delta_logit"] < 0,
                  "series": r["series"], "training_run": r.get("training_run"),
                  "notes": loads(r["notes"] or "[]", "comparisons.notes"), "n_tokens": len(r["token_ids"] or []),
                  "segment_relevance": r["segment_relevance"],
                  "segment_share": D.segment_share(r["segment_relevance"]),
                  "other_tokens": None if same else r["tokens"]}
        entry["aligned"] = _aligned(tokens, r, same)
        aligned = entry.pop("aligned")  # already JSON-safe (align.project: None for non-finite values)
        out.append(finite(entry) | {"aligned": aligned})
    return {"case_id": case_id, "models": out}


def figures(cur: Any) -> dict[str, Any]:
    """Fig. 4–7 data over the whole comparisons table (only the light columns are read)."""
    rows = _rows(cur, f"SELECT {_LIGHT}, {training_run_column(cur)}, {writes_columns(cur)} FROM comparisons "
                      "ORDER BY benchmark, item_id, case_id, reference DESC, model", [])
    for r in rows:
        r["segment_relevance"] = loads(r["segment_relevance"] or "{}", "comparisons.segment_relevance")
    data = D.figure_data(rows)
    return finite(data | {"unmapped": D.unmapped_counts(rows), "rows": len(rows)})
