"""Cases in the results store: write one case (all its tables) per transaction, read them back, overrides, export.

Layout (schema version 2, see docs/CASES.md): ``cases`` holds the scalar fields and JSON text for the small nested
ones; ``case_methods`` one row per (case, method) with the per-token input relevance as ``DOUBLE[]``;
``case_graphs`` the pruned graph as parallel arrays; ``overrides`` the labels people set. A case and all its rows
are committed together or not at all, and a case id that is already stored is never written again, so an
interrupted ``analyse`` loses at most the case in flight and duplicates nothing.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failtrace.cases.record import CATEGORIES, Case, MaskingSpec, CaseMethod
from failtrace.errors import FailtraceError
from failtrace.store.natural import natural_key
from failtrace.store.records import RECOVERY_CUT, loads
from failtrace.store.records import now as _now
from failtrace.store.reviews import decisions_in_force, rejected_pairs
from failtrace.store.shapes import check_shapes, shaped

if TYPE_CHECKING:  # type only: the store's export imports this module
    from failtrace.store.store import ResultsStore

_CASE_JSON = ("tokens", "segments", "relevant_segments", "masking", "category_evidence", "pattern_evidence",
              "graph_summary", "settings", "notes", "seconds")
_CASE_COLUMNS = ("case_id", "analysis_id", "pair_run_id", "run_id", "item_id", "benchmark", "model",
                 "model_fingerprint", "token_ids", "tokens", "special_mask", "prompt_length", "position", "target_id",
                 "target_text", "contrast_id", "contrast_text", "delta_logit", "segments", "relevant_segments",
                 "masking", "category", "category_evidence", "pattern", "pattern_evidence", "graph_summary",
                 "settings", "notes", "seconds", "created_at")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, default=_json_default)


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays inside evidence dicts become plain numbers/lists."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def _parsed(value: Any, store: ResultsStore | None = None, where: str = "a JSON column") -> Any:
    """A JSON text column's value (other values as they are; :func:`failtrace.store.records.loads`)."""
    return loads(value, where, store.path if store is not None else None) if isinstance(value, str) else value


def stored_methods(con: Any) -> list[str]:
    """The attribution methods a store's cases hold, in the registry's order (then any others by name): what
    ``show --method`` accepts and what the explorer lists, whether or not this process registered them."""
    from failtrace.cases.settings import in_method_order

    return in_method_order(r[0] for r in con.execute("SELECT DISTINCT method FROM case_methods").fetchall())


def has_case_tables(store: ResultsStore) -> bool:
    """False for a version-1 store opened read-only (nothing analysed yet)."""
    tables = {r[0] for r in store.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    return "cases" in tables


def require_cases(store: ResultsStore, benchmark: str | None = None) -> None:
    """Refuse a store with no cases (of ``benchmark``, naming the benchmarks that have some). Cheap, so commands call
    it before loading a model: a typo or a store not analysed yet costs no model load and no misleading message."""
    have = sorted(r[0] for r in store.con.execute("SELECT DISTINCT benchmark FROM cases").fetchall()) \
        if has_case_tables(store) else []
    if not have:
        raise FailtraceError(f"no cases in {store.path}; run `failtrace analyse` on it first")
    if benchmark is not None and benchmark not in have:
        raise FailtraceError(f"no cases of benchmark {benchmark!r} in {store.path}; benchmarks with cases: "
                             f"{', '.join(have)}")


def _case_row(case: Case) -> list[Any]:
    d = case.to_dict()
    d["masking"] = case.masking.to_dict()
    d["created_at"] = _now()
    row = []
    for col in _CASE_COLUMNS:
        value = d.get(col)
        row.append(_dumps(value) if col in _CASE_JSON else value)
    return row


def _graph_row(case_id: str, g: dict[str, Any]) -> list[Any]:
    nodes, edges = g["nodes"], g["edges"]
    return [case_id, _dumps(g["settings"]), _dumps(g["stages"]), g.get("objective_value"),
            [int(n[0]) for n in nodes], [int(n[1]) for n in nodes], [float(n[2]) for n in nodes],
            [int(e[0]) for e in edges], [int(e[1]) for e in edges], [int(e[2]) for e in edges],
            [int(e[3]) for e in edges], [float(e[4]) for e in edges]]


def write_case(store: ResultsStore, case: Case) -> bool:
    """Commit ``case`` with its method rows and graph in ONE transaction. False if its id is already stored."""
    with store._transaction():
        if store.con.execute("SELECT count(*) FROM cases WHERE case_id = ?", [case.case_id]).fetchone()[0]:
            return False
        store.con.execute(f"INSERT INTO cases VALUES ({', '.join('?' * len(_CASE_COLUMNS))})", _case_row(case))
        rows = [[case.case_id, m.method, [float(x) for x in m.input_relevance], [float(x) for x in m.hidden_layer_sums],
                 _dumps(m.segment_relevance), [float(x) for x in m.flip_curve], m.flip_k, float(m.seconds),
                 [int(x) for x in m.flip_tops], [str(x) for x in m.flip_top_texts]] for m in case.methods.values()]
        if rows:
            store.con.executemany("INSERT INTO case_methods VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if case.graph is not None:
            store.con.execute("INSERT INTO case_graphs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              _graph_row(case.case_id, case.graph))
        if case.alternatives is not None:
            from failtrace.store.alternatives import insert

            insert(store.con, case.case_id, case.alternatives)
    return True


def done_case_ids(store: ResultsStore, analysis_id: str | None = None) -> set[str]:
    """Ids of the cases already committed (of one analysis run, if given): a rerun skips them."""
    if not has_case_tables(store):
        return set()
    if analysis_id is None:
        return {r[0] for r in store.con.execute("SELECT case_id FROM cases").fetchall()}
    return {r[0] for r in store.con.execute("SELECT case_id FROM cases WHERE analysis_id = ?",
                                            [analysis_id]).fetchall()}


# (pair_run_id, analysis_id): per pair run, the analysis every view uses (status, show, the report and the explorer
# all read it here): the one `analyse` last worked on, by the newest of its run's record, its newest case and the call
# that found nothing left to do (settings.current_since), so resuming or re-running an older analysis's settings
# brings it back; ties go to the larger id. Cases are grouped before the join: the settings JSON is read once per
# analysis, and a malformed one counts as absent.
CURRENT_ANALYSES_SQL = """
    SELECT pair_run_id, arg_max(analysis_id, (coalesce(t, TIMESTAMP '0001-01-01'), analysis_id)) AS analysis_id
    FROM (SELECT a.pair_run_id, a.analysis_id,
                 greatest(a.tc, r.created_at, try_cast(CASE WHEN json_valid(r.settings)
                          THEN json_extract_string(r.settings, '$.current_since') END AS TIMESTAMP)) AS t
          FROM (SELECT pair_run_id, analysis_id, max(created_at) AS tc FROM cases
                GROUP BY pair_run_id, analysis_id) a
          LEFT JOIN runs r ON r.run_id = a.analysis_id)
    GROUP BY pair_run_id"""


def _latest_analyses(store: ResultsStore) -> set[tuple[str, str]]:
    """Per pair run, the newest analysis run that has cases (so one report never mixes two settings); none in a
    version-1 store not migrated yet (no case tables)."""
    if not has_case_tables(store):
        return set()
    return {(pair_run, analysis) for pair_run, analysis in store.con.execute(CURRENT_ANALYSES_SQL).fetchall()}


def current_analyses(store: ResultsStore) -> dict[str, str]:
    """Pair run id -> the analysis run that status, show, the report and the explorer use (the newest with cases)."""
    return dict(_latest_analyses(store))


def load_cases(store: ResultsStore, benchmark: str | None = None, model_fingerprint: str | None = None,
               analysis_id: str | None = None, latest: bool = True, with_graph: bool = False,
               case_ids: Collection[str] | None = None, item_id: str | None = None) -> list[Case]:
    """Stored cases, ordered by benchmark, pair run and item (natural order: ``HumanEval/2`` before ``/10``), with
    their methods and newest override.

    ``latest`` (default): only the newest analysis run of each pair run, so cases built with other settings or
    another model file are never mixed; ``latest=False`` returns every stored case. ``with_graph`` also loads each
    case's pruned graph (:func:`load_case_graph`). ``case_ids`` and ``item_id`` narrow the read in SQL; the relevance
    arrays are read for the returned cases only, so showing one case of a large store reads only its arrays.
    """
    if not has_case_tables(store):
        return []
    where, params = [], []
    for col, value in (("benchmark", benchmark), ("model_fingerprint", model_fingerprint),
                       ("analysis_id", analysis_id), ("item_id", item_id)):
        if value is not None:
            where.append(f"{col} = ?")
            params.append(value)
    if case_ids is not None:
        where.append("list_contains(?, case_id)")
        params.append(sorted(case_ids))
    sql = "SELECT * FROM cases" + (" WHERE " + " AND ".join(where) if where else "")
    rows = store._rows(sql, params)
    rows.sort(key=lambda r: (r["benchmark"], r["pair_run_id"], natural_key(r["item_id"]), r["case_id"]))
    if latest and analysis_id is None:
        keep = _latest_analyses(store)
        rows = [r for r in rows if (r["pair_run_id"], r["analysis_id"]) in keep]
    methods: dict[str, dict[str, CaseMethod]] = {}  # read for the kept cases only (their arrays are the bulk)
    for m in store._rows("SELECT * FROM case_methods WHERE list_contains(?, case_id)", [[r["case_id"] for r in rows]]):
        where = f"case_methods row {m['method']!r} of case {m['case_id']}"
        with shaped(store, where):
            m["segment_relevance"] = _parsed(m["segment_relevance"] or "{}", store, f"{where}, segment_relevance")
            methods.setdefault(m["case_id"], {})[m["method"]] = CaseMethod.from_dict(m)
    overrides = current_overrides(store)
    decisions = decisions_in_force(store.con)
    out = []
    for r in rows:
        with shaped(store, f"case {r['case_id']}"):
            for col in _CASE_JSON:
                r[col] = _parsed(r.get(col), store, f"cases.{col} of case {r['case_id']}")
            r["masking"] = MaskingSpec.from_dict(r["masking"]).to_dict()
            r["methods"] = {}
            case = Case.from_dict(r)
            case.methods = methods.get(case.case_id, {})
            case.override = overrides.get(case.case_id)
            case.review = decisions.get((case.pair_run_id, case.item_id))
            check_shapes(case)
            if with_graph:
                case.graph = load_case_graph(store, case.case_id)
        out.append(case)
    return out



def load_case_graph(store: ResultsStore, case_id: str) -> dict[str, Any] | None:
    """The pruned graph of a case: ``{settings, stages, objective_value, nodes: [[stage, token, R]], edges:
    [[source stage, source token, target stage, target token, weight]]}`` or None."""
    rows = store._rows("SELECT * FROM case_graphs WHERE case_id = ?", [case_id])
    if not rows:
        return None
    r = rows[0]
    nodes = [list(n) for n in zip(r["node_stage"], r["node_token"], r["node_relevance"], strict=True)]
    edges = [list(e) for e in zip(r["edge_source_stage"], r["edge_source_token"], r["edge_target_stage"],
                                  r["edge_target_token"], r["edge_weight"], strict=True)]
    return {"settings": _parsed(r["settings"]), "stages": _parsed(r["stages"]),
            "objective_value": r["objective_value"], "nodes": nodes, "edges": edges}


def case_ids_starting(con: Any, prefix: str, most: int) -> list[str]:
    """Up to ``most`` stored case ids starting with ``prefix`` (lower-cased: ids are lower-case hex), in order."""
    return [r[0] for r in con.execute("SELECT case_id FROM cases WHERE starts_with(case_id, ?) ORDER BY case_id "
                                      "LIMIT ?", [prefix.lower(), most]).fetchall()]


def find_case_id(store: ResultsStore, prefix: str) -> str:
    """The one stored case id starting with ``prefix`` (ids are long; a unique prefix is enough)."""
    typed = (prefix or "").strip()
    prefix = typed.lower()  # ids are lower-case hex digests; a pasted upper-case one still finds its case
    if not prefix:
        raise FailtraceError("--case is empty; give a case id (or a unique prefix of one)")
    shown = repr(typed if len(typed) <= 70 else typed[:64] + "…")
    if not has_case_tables(store) or not store.con.execute("SELECT count(*) FROM cases").fetchone()[0]:
        raise FailtraceError(f"no case {shown}: {store.path} has no analysed cases (failtrace analyse explains the "
                             "clean pairs)")
    ids = case_ids_starting(store.con, prefix, 3)
    if not ids:
        raise FailtraceError(f"no case {shown} in {store.path}; `failtrace show --store {store.path}` lists the "
                             f"case ids")
    if len(ids) > 1:
        raise FailtraceError(f"case id prefix {shown} matches {'several' if len(ids) > 2 else 'two'} cases "
                             f"({', '.join(ids[:2])}{', ...' if len(ids) > 2 else ''}); give more characters")
    return ids[0]


class SupersededCaseError(FailtraceError):
    """A case of an older analysis than the one every view shows (an override of it would never be seen)."""


def require_current(store: ResultsStore, case_id: str, what: str) -> tuple[str, str]:
    """``(pair run, item)`` of a case of the current analysis; a case of another analysis is refused: status, the
    report and the explorer show only the current one, so a person's ``what`` (an override, a contrast pick) on it
    would never be seen."""
    pair_run_id, item_id = store.con.execute("SELECT pair_run_id, item_id FROM cases WHERE case_id = ?",
                                             [case_id]).fetchone()
    newest = newest_case_id(store, pair_run_id, item_id)
    if newest != case_id:
        instead = (f"use its case {newest} instead" if newest else
                   f"that analysis has no case for item {item_id!r}")
        raise SupersededCaseError(f"case {case_id} is not from the current analysis of pair run {pair_run_id}; "
                                  f"status, the report and the explorer show only the current one, so the {what} "
                                  f"would never be seen: {instead}")
    return pair_run_id, item_id


def newest_case_id(store: ResultsStore, pair_run_id: str, item_id: str) -> str | None:
    """The case of ``item_id`` in its pair run's newest analysis: the one :func:`load_cases`, the report and the
    explorer's table show (an older analysis of the same pair keeps its own case id)."""
    analysis = dict(_latest_analyses(store)).get(pair_run_id)
    if analysis is None:
        return None
    row = store.con.execute("SELECT case_id FROM cases WHERE pair_run_id = ? AND item_id = ? AND analysis_id = ?",
                            [pair_run_id, item_id, analysis]).fetchone()
    return row[0] if row else None


def case_summaries(store: ResultsStore) -> dict[str, dict[str, Any]]:
    """Per pair run, its newest analysis (the cases :func:`load_cases` returns) in a few numbers, read without the
    relevance arrays: ``cases``, ``categories`` and ``patterns`` (name -> count; a person's override wins, as in the
    report), ``mean_delta`` (Δℓ; None without a counted case), ``flipped`` (AttnLRP k* found within K) and
    ``median_k`` (over those). A case whose pair a reviewer rejected is counted in ``rejected`` only, as the report
    counts it."""
    if not has_case_tables(store):
        return {}
    keep = _latest_analyses(store)
    overrides = current_overrides(store)
    rejected = rejected_pairs(store.con)
    rows = store.con.execute(
        "SELECT c.pair_run_id, c.analysis_id, c.case_id, c.item_id, c.category, c.pattern, c.delta_logit, m.flip_k "
        "FROM cases c "
        "LEFT JOIN case_methods m ON m.case_id = c.case_id AND m.method = 'attnlrp'").fetchall()
    out: dict[str, dict[str, Any]] = {}
    for pair_run, analysis, cid, item, category, pattern, delta, k in rows:
        if (pair_run, analysis) not in keep:
            continue
        s = out.setdefault(pair_run, {"cases": 0, "rejected": 0, "categories": {}, "patterns": {}, "deltas": [],
                                      "ks": []})
        if (pair_run, item) in rejected:
            s["rejected"] += 1
            continue
        s["cases"] += 1
        category = overrides[cid]["category"] if cid in overrides else category
        s["categories"][category] = s["categories"].get(category, 0) + 1
        s["patterns"][pattern] = s["patterns"].get(pattern, 0) + 1
        s["deltas"].append(float(delta))
        if k is not None:
            s["ks"].append(int(k))
    for s in out.values():
        deltas, ks = s.pop("deltas"), s.pop("ks")
        s["mean_delta"] = statistics.fmean(deltas) if deltas else None
        s["flipped"] = len(ks)
        s["median_k"] = statistics.median(ks) if ks else None
    return out


def current_overrides(store: ResultsStore) -> dict[str, dict[str, Any]]:
    """case id -> its newest override {category, reason, created_at (ISO text)}."""
    out: dict[str, dict[str, Any]] = {}
    for cid, cat, reason, at in store.con.execute(
            "SELECT case_id, category, reason, created_at FROM overrides ORDER BY created_at").fetchall():
        out[cid] = {"category": cat, "reason": reason, "created_at": str(at)}
    return out


def case_export_record(case: Case) -> dict[str, Any]:
    """One cases.jsonl line: the fields documented in docs/CASES.md (issue 9's list and a few more)."""
    methods = case.methods
    return {
        "case_id": case.case_id, "item_id": case.item_id, "benchmark": case.benchmark, "model": case.model,
        "model_fingerprint": case.model_fingerprint, "pair_run_id": case.pair_run_id, "run_id": case.run_id,
        "analysis_id": case.analysis_id, "token_ids": case.token_ids, "tokens": case.tokens,
        "special_mask": case.special_mask, "prompt_length": case.prompt_length, "position": case.position,
        "target_id": case.target_id, "target_text": case.target_text, "contrast_id": case.contrast_id,
        "contrast_text": case.contrast_text, "delta_logit": case.delta_logit, "segments": case.segments,
        "relevant_segments": case.relevant_segments,
        "segment_relevance": {m: r.segment_relevance for m, r in methods.items()},
        "input_relevance": {m: r.input_relevance for m, r in methods.items()},
        "flip_k": {m: r.flip_k for m, r in methods.items()},
        "flip_curve": {m: r.flip_curve for m, r in methods.items()},
        "flip_tops": {m: r.flip_tops for m, r in methods.items()},
        "flip_top_texts": {m: r.flip_top_texts for m, r in methods.items()},
        "masking": case.masking.to_dict(), "category": case.category, "category_evidence": case.category_evidence,
        "override": case.override, "pattern": case.pattern, "pattern_evidence": case.pattern_evidence,
        "graph_summary": case.graph_summary, "notes": case.notes, "settings": case.settings,
    }


def export_cases_jsonl(store: ResultsStore, path: str | Path) -> Path:
    """Write every stored case (all analyses) as one JSON object per line; atomically (``.part`` then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for case in load_cases(store, latest=False):
                fh.write(json.dumps(case_export_record(case), ensure_ascii=False, default=_json_default) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)  # a damaged row, a full disk, Ctrl-C: no half file left behind
        raise
    tmp.replace(path)
    return path


def answer_of(con: Any, run_id: str, pair_run_id: str, item_id: str) -> dict[str, Any]:
    """What a case is about, from the stages before it: the model's failing answer (``completion``, and
    ``finish_reason``), the checker's ``reasons``, and the answer the pair search got by forcing the contrast
    (``recovered``, which passed the checker; ``recovered_cut``: judged as cut at the rollout budget, where it had not
    stopped, as its pair's reason says). Any of them may be None in an old store."""
    row = con.execute(
        "SELECT g.completion, g.finish_reason, v.reasons, p.recovered_completion, "
        "p.reason LIKE '%' || ? || '%' FROM (SELECT 1) "
        "LEFT JOIN generations g ON g.run_id = ? AND g.item_id = ? "
        "LEFT JOIN verdicts v ON v.run_id = ? AND v.item_id = ? "
        "LEFT JOIN pairs p ON p.pair_run_id = ? AND p.item_id = ?",
        [RECOVERY_CUT, run_id, item_id, run_id, item_id, pair_run_id, item_id]).fetchone()
    reasons = _parsed(row[2], None, f"verdicts.reasons of item {item_id}") if row[2] else []
    return {"completion": row[0], "finish_reason": row[1], "reasons": list(reasons or []), "recovered": row[3],
            "recovered_cut": bool(row[4])}


def case_answers(store: ResultsStore, cases: Sequence[Case]) -> dict[str, dict[str, Any]]:
    """:func:`answer_of` for each case, keyed by case id."""
    return {c.case_id: answer_of(store.con, c.run_id, c.pair_run_id, c.item_id) for c in cases}
