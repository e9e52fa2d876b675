"""The report's numbers: pure functions from cases and status rows to table rows (lists of dicts), and CSV output.

Every figure and HTML table of the report is drawn from these rows, and the same rows are written to
``tables/*.csv``, so what a reader sees is what they can load. Definitions (docs/REPORT.md has the long form):

- *clean rate* = clean pairs / failed items of a collection run (``StatusRow.clean_rate``).
- *avg tokens per case* = mean context length ``len(case.token_ids)`` over the cases analysed for that pair run.
- *effective category* = a stored override's category when there is one, else the automatic ``case.category``.
- *normalised segment relevance* of a case = Σ over the segment's non-special tokens of R_i / s, with
  s = max |R_j| over non-special tokens j (the one normalisation of the package); special tokens are left out of the
  sums because they soak up relevance as attention sinks; tokens whose R was not computed (NaN) add nothing.
- *flip rate at k* = share of cases whose k* (smallest number of masked top tokens that makes Δℓ < 0) is ≤ k;
  *mean/median k** are over the cases that flipped within K (their count is given beside them).
- *contrast on top at k** = of the flipped cases whose top next token after masking was recorded, those where that
  token is the contrast (the others would write a third token).
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from failtrace.cases.record import CATEGORIES, PATTERNS, Case
from failtrace.cases.settings import in_method_order
from failtrace.attribution.normalize import normalize
from failtrace.store.schema import PAIR_STATUSES
from failtrace.store.store import StatusRow

NON_CLEAN: tuple[str, ...] = tuple(s for s in PAIR_STATUSES if s != "clean")
UNLABELLED = "unlabelled"  # a case without a category / pattern yet

Overrides = Mapping[str, Mapping[str, Any]]  # case_id -> {"category": ..., "reason": ..., ...}


def _mean(xs: Sequence[float]) -> float | None:
    return float(statistics.fmean(xs)) if xs else None


def benchmarks_of(cases: Iterable[Case], status_rows: Iterable[StatusRow] = ()) -> list[str]:
    """Benchmarks in first-seen order (status rows first, then cases)."""
    seen: dict[str, None] = {}
    for r in status_rows:
        seen.setdefault(r.benchmark, None)
    for c in cases:
        seen.setdefault(c.benchmark, None)
    return list(seen)


def methods_of(cases: Iterable[Case]) -> list[str]:
    """Attribution methods present in any case, in the registry's order (then any others)."""
    return in_method_order(m for c in cases for m in c.methods)


def effective_category(case: Case, overrides: Overrides | None = None) -> str:
    """The category shown and counted: a stored override wins over the automatic label."""
    o = (overrides or {}).get(case.case_id)
    if o and o.get("category"):
        return str(o["category"])
    return case.category or UNLABELLED


def table1_rows(status_rows: Sequence[StatusRow], cases: Sequence[Case]) -> list[dict[str, Any]]:
    """The paper's Table 1 per collection run / pair run: failures, clean pairs, clean rate, avg tokens per case."""
    by_pair: dict[str | None, list[Case]] = defaultdict(list)
    for c in cases:
        by_pair[c.pair_run_id].append(c)
    out = []
    covered = set()
    for r in status_rows:
        mine = by_pair.get(r.pair_run_id, []) if r.pair_run_id else []
        covered.add(r.pair_run_id)
        out.append({
            "benchmark": r.benchmark, "model": r.model, "run_id": r.run_id, "pair_run_id": r.pair_run_id,
            "collection_settings": r.collection_settings,
            "pair_settings": r.pair_settings_text if r.pair_run_id else None, "items": r.items,
            "generated": r.generated, "passed": r.passed, "failures": r.failed,
            "unverifiable": r.unverifiable,
            "clean_pairs": r.pairs.get("clean", 0) if r.pair_run_id else None,
            "clean_rate": r.clean_rate if r.pair_run_id else None,
            # over the decidable failures (failed minus unbounded), as `failtrace status` prints it beside
            "clean_rate_decidable": r.decidable_clean_rate if r.pair_run_id else None,
            # failures not paired yet may still be clean: the rate is then a lower bound (status prints ≥)
            "clean_rate_is_lower_bound": r.not_paired > 0 if r.pair_run_id else None,
            "cases": len(mine),
            "avg_tokens_per_case": _mean([len(c.token_ids) for c in mine]),
            "avg_prompt_tokens": r.avg_prompt_tokens, "avg_completion_tokens": r.avg_completion_tokens,
        })
    for pair_run_id, mine in by_pair.items():  # cases whose runs the status rows do not list
        if pair_run_id in covered:
            continue
        out.append({
            "benchmark": mine[0].benchmark, "model": mine[0].model, "run_id": mine[0].run_id,
            "pair_run_id": pair_run_id, "collection_settings": None, "pair_settings": None, "items": None,
            "generated": None, "passed": None, "failures": None,
            "unverifiable": None, "clean_pairs": None, "clean_rate": None, "clean_rate_decidable": None,
            "clean_rate_is_lower_bound": None,
            "cases": len(mine),
            "avg_tokens_per_case": _mean([len(c.token_ids) for c in mine]),
            "avg_prompt_tokens": None, "avg_completion_tokens": None,
        })
    return out


def pair_status_rows(status_rows: Sequence[StatusRow]) -> list[dict[str, Any]]:
    """Why failures did not become clean pairs: counts per non-clean status, and failures not paired yet."""
    out = []
    for r in status_rows:
        if r.pair_run_id is None:
            continue
        row: dict[str, Any] = {"benchmark": r.benchmark, "model": r.model, "pair_run_id": r.pair_run_id,
                               "collection_settings": r.collection_settings,
                               "pair_settings": r.pair_settings_text, "failures": r.failed,
                               "clean": r.pairs.get("clean", 0)}
        for s in NON_CLEAN:
            row[s] = r.pairs.get(s, 0)
        row["not_paired"] = r.not_paired
        out.append(row)
    return out


def _label_rows(cases: Sequence[Case], label: Any, order: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for bench in benchmarks_of(cases):
        mine = [c for c in cases if c.benchmark == bench]
        counts = Counter(label(c) for c in mine)
        # every label of ``order``, at 0 where no case has it (a category missing from the figure and the CSV read as
        # not looked for), then any other label the cases have
        names = list(order) + sorted(n for n in counts if n not in order)
        for name in names:
            out.append({"benchmark": bench, "label": name, "cases": counts[name],
                        "share": counts[name] / len(mine)})
    return out


def category_rows(cases: Sequence[Case], overrides: Overrides | None = None) -> list[dict[str, Any]]:
    """Per benchmark: number and share of cases per (effective) outcome category."""
    return _label_rows(cases, lambda c: effective_category(c, overrides), CATEGORIES)


def pattern_rows(cases: Sequence[Case]) -> list[dict[str, Any]]:
    """Per benchmark: number and share of cases per failure pattern."""
    return _label_rows(cases, lambda c: c.pattern or UNLABELLED, PATTERNS)


def case_segment_relevance(case: Case, method: str = "attnlrp") -> dict[str, float]:
    """Normalised segment relevance of one case (module docstring); {} when the case lacks ``method``."""
    res = case.methods.get(method)
    if res is None or not res.input_relevance:
        return {}
    norm = normalize(res.input_relevance, case.special_mask)
    special = list(case.special_mask) + [False] * max(0, len(norm) - len(case.special_mask))
    out: dict[str, float] = {}
    for name, spans in case.segments.items():
        idx = [i for a, b in spans for i in range(a, b) if i < len(norm) and not special[i]]
        if idx:  # tokens whose relevance was not computed (NaN) add nothing
            out[name] = float(np.nansum(norm[idx]))
    return out


def segment_rows(cases: Sequence[Case], overrides: Overrides | None = None,
                 method: str = "attnlrp") -> list[dict[str, Any]]:
    """Per benchmark, category and segment: mean normalised segment relevance over the cases that have it
    (``cases``), beside the category's case count (``category_cases``: a segment may be missing from some)."""
    out = []
    for bench in benchmarks_of(cases):
        groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        seg_order: dict[str, None] = {}
        sizes: dict[str, int] = defaultdict(int)
        for c in cases:
            if c.benchmark != bench:
                continue
            sizes[effective_category(c, overrides)] += 1
            for seg, v in case_segment_relevance(c, method).items():
                seg_order.setdefault(seg, None)
                groups[effective_category(c, overrides)][seg].append(v)
        cats = [k for k in CATEGORIES if k in groups] + sorted(k for k in groups if k not in CATEGORIES)
        for cat in cats:
            for seg in seg_order:
                vals = groups[cat].get(seg, [])
                if vals:
                    out.append({"benchmark": bench, "method": method, "category": cat, "segment": seg,
                                "cases": len(vals), "category_cases": sizes[cat],
                                "mean_normalised_relevance": _mean(vals)})
    return out


def max_k(cases: Sequence[Case]) -> int:
    """The largest masking budget K among the cases (0 when there are none)."""
    return max((c.masking.max_k for c in cases), default=0)


def flip_rate_rows(cases: Sequence[Case]) -> list[dict[str, Any]]:
    """Per benchmark, method and k = 1..K: share of the method's cases with k* ≤ k."""
    out = []
    for bench in benchmarks_of(cases):
        mine = [c for c in cases if c.benchmark == bench]
        for m in methods_of(mine):
            ks = [c.methods[m].flip_k for c in mine if m in c.methods]
            for k in range(1, max_k(mine) + 1):
                flipped = sum(1 for x in ks if x is not None and x <= k)
                out.append({"benchmark": bench, "method": m, "k": k, "cases": len(ks), "flipped": flipped,
                            "flip_rate": flipped / len(ks) if ks else None})
    return out


def kstar_rows(cases: Sequence[Case]) -> list[dict[str, Any]]:
    """Per benchmark and method: cases, how many flip within K, the flip rate at K, mean and median k*, and of the
    flipped cases whose top token after masking was recorded (``top_recorded``), those where it is the contrast at
    k* (``contrast_on_top``; None when none was recorded): Δℓ < 0 alone does not say the model would write it."""
    out = []
    for bench in benchmarks_of(cases):
        mine = [c for c in cases if c.benchmark == bench]
        for m in methods_of(mine):
            ks = [c.methods[m].flip_k for c in mine if m in c.methods]
            hit = [x for x in ks if x is not None]
            tops = [top_at_k_star(c, m) for c in mine if m in c.methods and c.methods[m].flip_k is not None]
            known = [t for t in tops if t is not None]
            out.append({"benchmark": bench, "method": m, "cases": len(ks), "flipped": len(hit),
                        "flip_rate_at_K": len(hit) / len(ks) if ks else None, "K": max_k(mine),
                        "mean_k_star": _mean(hit), "median_k_star": float(statistics.median(hit)) if hit else None,
                        "top_recorded": len(known), "contrast_on_top": sum(known) if known else None})
    return out


def top_at_k_star(case: Case, method: str) -> bool | None:
    """Whether the model's top next token with the first k* masked is the contrast (None: no k*, or not recorded)."""
    r = case.methods[method]
    if r.flip_k is None or not r.tops_recorded or r.flip_k >= len(r.flip_tops):
        return None
    return r.flip_tops[r.flip_k] == case.contrast_id


# the columns of case_rows before k* per method (its CSV keeps them with no case: a file without a header is no table)
CASE_COLUMNS = ("case_id", "benchmark", "item_id", "model", "model_fingerprint", "tokens", "position", "target",
                "contrast", "delta_logit", "category_auto", "category", "override_reason", "pattern", "review",
                "caveat")


def case_rows(cases: Sequence[Case], overrides: Overrides | None = None) -> list[dict[str, Any]]:
    """One line per case: identity, pair, Δℓ, labels (automatic and effective) and k* per method."""
    methods = methods_of(cases)
    out = []
    for c in cases:
        o = (overrides or {}).get(c.case_id) or {}
        row: dict[str, Any] = {
            "case_id": c.case_id, "benchmark": c.benchmark, "item_id": c.item_id, "model": c.model,
            "model_fingerprint": c.model_fingerprint, "tokens": len(c.token_ids), "position": c.position,
            "target": c.target_text, "contrast": c.contrast_text, "delta_logit": c.delta_logit,
            "category_auto": c.category, "category": effective_category(c, overrides),
            "override_reason": o.get("reason"), "pattern": c.pattern,
            "review": c.review["decision"] if c.review else None,  # the decision in force on its pair
            "caveat": None,  # the case page's warnings on its fix (report.build fills it in from the answers)
        }
        for m in methods:
            row[f"k_star_{m}"] = c.methods[m].flip_k if m in c.methods else None
        out.append(row)
    return out


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as CSV (None as an empty cell, floats with full precision)."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(k) is None else r.get(k) for k in cols])
    return path
