"""One case as the explorer's case and graph pages need it, read with plain SQL on a per-request cursor.

Relevance is normalised with the package's one helper (:func:`failtrace.attribution.normalize.normalize`: divide by
the largest |R| among non-special tokens), evidence is rendered by the report's evidence renderer, and colours come
from the report, so the explorer and the static report always agree.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from failtrace.analysis.ablation_view import ablation_view
from failtrace.analysis.masking import masking_order
from failtrace.attribution.normalize import normalize
from failtrace.cases.record import MaskingSpec, CaseMethod
from failtrace.cases.alternatives import rows as alt_rows
from failtrace.errors import FailtraceError
from failtrace.store.alternatives import read as read_alternatives
from failtrace.store.cases import CURRENT_ANALYSES_SQL, answer_of
from failtrace.store.records import loads
from failtrace.store.reviews import DECISIONS
from failtrace.views.evidence_html import dl as evidence_html
from failtrace.views.answers import answer_parts, box_note
from failtrace.views.common import (CLIP, MASK_AFTER, MASK_BEFORE, SUM_NOTE, flip_points, k_star_label, masked_caption,
                                   top_role)
from failtrace.views.graph_static import stage_shares
from failtrace.views.verdicts import category_sentence, pattern_sentence


def finite(x: Any) -> Any:
    """JSON-safe numbers: NaN/inf (a method not computed) become null; lists and dicts recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    if isinstance(x, np.generic):
        return finite(x.item())
    return x


def _json(value: Any, where: str) -> Any:
    """A stored JSON column's value; damaged text is one line naming ``where`` (table, column and row)."""
    return loads(value, where) if isinstance(value, str) else value


def _one(con: Any, sql: str, params: list[Any]) -> dict[str, Any] | None:
    cur = con.execute(sql, params)
    row = cur.fetchone()
    return None if row is None else dict(zip([d[0] for d in cur.description], row))


def _answer(con: Any, c: dict[str, Any], tokens: list[str]) -> dict[str, Any]:
    """The case's answers (``store.cases.answer_of``) with the note on a contrast outside the checked code, as the
    report and ``failtrace show`` have them (``views.answers.contrast_check``)."""
    from failtrace.store.items_table import read_item
    from failtrace.views.answers import contrast_check

    answer = answer_of(con, c["run_id"], c["pair_run_id"], c["item_id"])
    item = read_item(con, c["benchmark"], c["item_id"]) if answer.get("recovered") else None
    if item is not None:
        answer["outside"] = contrast_check(c["benchmark"], item, answer, "".join(tokens[c["prompt_length"]:]),
                                           c["contrast_text"])
    return answer


def _labels(n: int, segments: dict[str, list[list[int]]]) -> list[str]:
    labels = [""] * n
    for name, spans in segments.items():
        for start, end in spans:
            for i in range(max(0, start), min(n, end)):
                labels[i] = name
    return labels


def _methods(con: Any, case_id: str, special: list[bool], labels: list[str], masking: Any,
             target_id: int, contrast_id: int) -> dict[str, Any]:
    """Per method: relevance raw and normalised, sums, flip curve and k*, ``mask_order``: the positions masked
    for the flip curve, in order (the case's own rule, so row k of the page is the k-th token the curve removed), and
    ``mask_tops``: the model's top next token after masking the first k (k = 0..K; empty where not recorded: a case
    analysed before schema version 4, whose table lacks the columns when the store is read in its old layout)."""
    out: dict[str, Any] = {}
    n = len(labels)
    spec = MaskingSpec.from_dict(masking) if masking else MaskingSpec()
    cur = con.execute("SELECT * FROM case_methods WHERE case_id = ? ORDER BY method", [case_id])
    names = [d[0] for d in cur.description]
    for values in cur.fetchall():
        row = dict(zip(names, values, strict=True))
        row["segment_relevance"] = _json(row["segment_relevance"],
                                         f"case_methods.segment_relevance of case {case_id} ({row['method']})")
        try:  # flip_tops empty in a table read in its old layout (before version 4)
            r = CaseMethod.from_dict(row)
        except (TypeError, ValueError, AttributeError) as exc:
            raise FailtraceError(f"case_methods row {row['method']!r} of case {case_id} holds a value of the wrong "
                                 f"shape ({type(exc).__name__}); the store is damaged") from None
        drawable = len(r.input_relevance) == n
        order = masking_order(r.input_relevance, special, labels, spec) if drawable else []
        tops = list(zip(r.flip_tops, r.flip_top_texts)) if r.tops_recorded else []
        out[r.method] = {"raw": r.input_relevance, "norm": normalize(r.input_relevance, special).tolist() if drawable
                         else [], "drawable": drawable, "hidden_layer_sums": r.hidden_layer_sums,
                         "segment_relevance": r.segment_relevance, "flip_curve": r.flip_curve, "flip_k": r.flip_k,
                         "k_label": k_star_label(r), "mask_order": order,
                         "mask_tops": [{"text": t, "role": top_role(i, target_id, contrast_id)} for i, t in tops],
                         # the caption under the masking-order rows: the one wording of the report and failtrace show
                         "mask_caption": masked_caption(r.flip_k, flip_points(r, len(order), contrast_id), "shaded")}
    return out


def _current(con: Any, c: dict[str, Any]) -> dict[str, Any]:
    """Whether the case is of its pair run's current analysis (the one status, show and the report use); if not,
    that analysis's case of the same item (None: it has none), so an old link says where the current one is."""
    found = con.execute(f"SELECT analysis_id FROM ({CURRENT_ANALYSES_SQL}) WHERE pair_run_id = ?",  # this pair run
                        [c["pair_run_id"]]).fetchone()                                        # only, per request
    now = found[0] if found else None
    if now == c["analysis_id"]:
        return {"is_current": True, "analysis_id": now, "case_id": c["case_id"]}
    row = con.execute("SELECT case_id FROM cases WHERE pair_run_id = ? AND item_id = ? AND analysis_id = ?",
                      [c["pair_run_id"], c["item_id"], now]).fetchone()
    return {"is_current": False, "analysis_id": now, "case_id": row[0] if row else None}


def case_detail(con: Any, case_id: str, reviews_table: bool) -> dict[str, Any] | None:
    """Everything the case page shows, or None when no such case is stored."""
    c = _one(con, "SELECT * EXCLUDE (token_ids) FROM cases WHERE case_id = ?", [case_id])
    if c is None:
        return None

    def col(name: str) -> Any:
        return _json(c[name], f"cases.{name} of case {case_id}")

    tokens = col("tokens")
    special = [bool(x) for x in c["special_mask"]]
    segments = col("segments") or {}
    labels = _labels(len(tokens), segments)
    masking = col("masking")
    ev = {k: col(k) or {} for k in ("category_evidence", "pattern_evidence", "graph_summary")}
    pair = _one(con, "SELECT status, reason, contrast_source, contrast_rank, contrast_model_rank, target_logit, "
                     "contrast_logit, delta_logit, completion_offset FROM pairs WHERE pair_run_id = ? AND item_id = ?",
                [c["pair_run_id"], c["item_id"]])
    verdict = _one(con, "SELECT status, reasons FROM verdicts WHERE run_id = ? AND item_id = ?",
                   [c["run_id"], c["item_id"]])
    if verdict:
        verdict["reasons"] = _json(verdict["reasons"], f"verdicts.reasons of item {c['item_id']}")
    override = _one(con, "SELECT category, reason, CAST(created_at AS VARCHAR) AS created_at FROM overrides "
                         "WHERE case_id = ? ORDER BY created_at DESC LIMIT 1", [case_id])
    reviews = review_rows(con, c["pair_run_id"], c["item_id"]) if reviews_table else []
    has_graph = con.execute("SELECT count(*) FROM case_graphs WHERE case_id = ?", [case_id]).fetchone()[0] > 0
    return finite({"current": _current(con, c),
        "case_id": case_id, "item_id": c["item_id"], "benchmark": c["benchmark"], "model": c["model"],
        "run_id": c["run_id"], "pair_run_id": c["pair_run_id"], "analysis_id": c["analysis_id"],
        "tokens": tokens, "special": special, "prompt_length": c["prompt_length"], "position": c["position"],
        "segments": segments, "labels": labels,
        "relevant_segments": col("relevant_segments") or [],
        "target": {"id": c["target_id"], "text": c["target_text"]},
        "contrast": {"id": c["contrast_id"], "text": c["contrast_text"]}, "delta_logit": c["delta_logit"],
        "methods": _methods(con, case_id, special, labels, masking, c["target_id"], c["contrast_id"]),
        "masking": masking,
        # the masking-order context and clipping, and the Σ input R note, as the report and failtrace show have them
        "mask_view": {"before": MASK_BEFORE, "after": MASK_AFTER, "clip": CLIP}, "sum_note": SUM_NOTE,
        "category": c["category"], "pattern": c["pattern"], "override": override,
        "effective_category": override["category"] if override else c["category"],
        "evidence": ev, "evidence_html": {k: evidence_html(v) if v else "" for k, v in ev.items()},
        # the computed category and the pattern in words, as failtrace show and the report say them
        "why": {"category": category_sentence(c["category"], ev["category_evidence"]),
                "pattern": pattern_sentence(c["pattern"], ev["pattern_evidence"], tokens)},
        "notes": col("notes") or [], "settings": col("settings") or {}, "pair": pair, "verdict": verdict,
        "reviews": reviews, "has_graph": has_graph,
        # the log keeps every decision on the pair; the newest accept or reject is the one in force
        "decision": next((r for r in reviews if r["decision"] in DECISIONS), None),
        # what the model wrote, the checker's reason, the answer with the contrast forced, each with its notes
        # (where the text stopped: views.answers.answer_parts; how long it is), drawn outside the text's scroll box
        "answers": [[label, text, box_note(text, note)] for label, text, note in answer_parts(_answer(con, c, tokens))],
        "alternatives": alt_rows(read_alternatives(con, case_id), c["target_id"], c["contrast_id"]),
    })


def review_rows(con: Any, pair_run_id: str, item_id: str) -> list[dict[str, Any]]:
    """The reviews of one pair, newest first."""
    cur = con.execute("SELECT * EXCLUDE (pair_run_id, item_id) REPLACE (CAST(created_at AS VARCHAR) AS created_at) "
                      "FROM reviews WHERE pair_run_id = ? AND item_id = ? ORDER BY created_at DESC, review_id DESC",
                      [pair_run_id, item_id])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _mass_before(src_s: np.ndarray, tgt_s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per edge: the share of its transition's total |weight| held by the strictly stronger edges before it.

    A slider at p keeps the edges with ``mass_before < p``: the smallest set of strongest edges per transition whose
    mass reaches p (the cumulative pruning rule of failtrace.graph.prune, applied to the stored, already pruned
    edges; ties are ordered by position so the result is deterministic).
    """
    out = np.zeros(len(w))
    a = np.abs(w)
    for s, t in {(int(x), int(y)) for x, y in zip(src_s, tgt_s)}:
        idx = np.nonzero((src_s == s) & (tgt_s == t))[0]
        order = idx[np.argsort(-a[idx], kind="stable")]
        total = a[order].sum() or 1.0
        out[order] = (np.cumsum(a[order]) - a[order]) / total
    return out


def graph_detail(con: Any, case_id: str) -> dict[str, Any] | None:
    """The stored pruned graph with per-edge cumulative mass, or None when the case has no stored graph."""
    g = _one(con, "SELECT g.*, c.item_id, c.tokens, c.special_mask, c.position, c.category, c.category_evidence "
                  "FROM case_graphs g JOIN cases c ON c.case_id = g.case_id WHERE g.case_id = ?", [case_id])
    if g is None:
        return None
    src_s, tgt_s = np.asarray(g["edge_source_stage"], int), np.asarray(g["edge_target_stage"], int)
    w = np.asarray(g["edge_weight"], float)
    mass = _mass_before(src_s, tgt_s, w)
    rel = np.asarray(g["node_relevance"], float)

    def col(name: str, table: str = "case_graphs") -> Any:
        return _json(g[name], f"{table}.{name} of case {case_id}")

    stages = col("stages")
    special = [bool(x) for x in g["special_mask"]]
    tokens = col("tokens", "cases")
    kept = [(int(s), int(t), float(r)) for s, t, r in zip(g["node_stage"], g["node_token"], rel)]
    # |R| over its stage's largest non-special |R| (as the report's picture of the same record sizes its nodes)
    nodes = [[s, t, r, z] for (s, t, r), z in zip(kept, stage_shares(kept, special))]
    edges = [[int(a), int(b), int(c), int(d), float(x), float(m)] for a, b, c, d, x, m in zip(
        g["edge_source_stage"], g["edge_source_token"], g["edge_target_stage"], g["edge_target_token"], w, mass)]
    record = {"stages": stages, "nodes": [n[:3] for n in nodes], "edges": [e[:5] for e in edges]}
    return finite({"case_id": case_id, "item_id": g["item_id"], "stages": stages, "tokens": tokens,
                   "special": special, "nodes": nodes,
                   "edges": edges, "final": [len(stages) - 1, int(g["position"]) - 1],
                   "objective_value": g["objective_value"], "settings": col("settings"),
                   "ablation": _ablation(record, g["category"], col("category_evidence", "cases") or {}, len(tokens))})


def _ablation(record: dict[str, Any], category: str | None, evidence: dict[str, Any],
              n_tokens: int) -> dict[str, Any] | None:
    """The Fig. 3 view of an NC-IA case (failtrace.analysis.ablation_view) for the graph page's "show ablation"
    toggle: the ablated nodes in order, Δℓ before and after, the share of the kept mass through them; None for
    other cases. The page recomputes the downstream edges itself after re-pruning with the slider."""
    ev = evidence.get("ablation")
    if not (category or "").startswith("NC-IA") or not isinstance(ev, dict) or not ev.get("nodes"):
        return None
    try:
        v = ablation_view(record, ev, n_tokens=n_tokens)
    except FailtraceError:  # evidence that does not fit the graph: no toggle rather than a failed page
        return None
    return {"category": category, "k": v.k, "flipped": v.flipped, "delta_before": v.delta_before,
            "delta_after": v.delta_after, "through_share": v.through_share, "downstream_edges": len(v.downstream_edges),
            "nodes": [{"layer": a.layer, "position": a.position, "stage": a.stage, "in_graph": a.in_graph,
                       "delta_after": a.delta_after} for a in v.ablated]}


def item_detail(con: Any, run_id: str, item_id: str, case_of: dict[str, str | None]) -> dict[str, Any] | None:
    """One item of a collection run: prompt, completion, verdict and its pairs (for rows without a case); each pair
    names its case in the newest analysis of its pair run (``case_of``: pair run -> case id, read from the table's
    own rows, so the page and the table never disagree; null when it has none)."""
    row = _one(con, "SELECT v.item_id, v.status, v.reasons, r.benchmark, r.model, g.completion, g.finish_reason, "
                    "g.n_tokens, i.prompt FROM verdicts v JOIN runs r ON r.run_id = v.run_id "
                    "LEFT JOIN generations g ON g.run_id = v.run_id AND g.item_id = v.item_id "
                    "LEFT JOIN items i ON i.benchmark = r.benchmark AND i.item_id = v.item_id "
                    "WHERE v.run_id = ? AND v.item_id = ?", [run_id, item_id])
    if row is None:
        return None
    from failtrace.store.reviews import decision_in_force

    cur = con.execute("SELECT pair_run_id, status, reason, position, target_text, contrast_text, delta_logit, "
                      "contrast_id IS NOT NULL AS reviewable FROM pairs WHERE run_id = ? AND item_id = ? "
                      "ORDER BY pair_run_id", [run_id, item_id])
    names = [d[0] for d in cur.description]
    # reviewable: the search found a target and contrast to accept or reject (a weak preference too, which has no
    # case); decision: the newest accept or reject in force on it, as `failtrace show` and the case page name it
    pairs = [{**dict(zip(names, r)), "case_id": case_of.get(r[0]), "decision": decision_in_force(con, r[0], item_id)}
             for r in cur.fetchall()]
    row["reasons"] = _json(row["reasons"], f"verdicts.reasons of item {item_id} in run {run_id}")
    row["prompt"] = _json(row["prompt"], f"items.prompt of item {item_id}")
    return finite({"run_id": run_id, **row, "pairs": pairs})
