"""The data behind the report's Fig. 4–7 (and the explorer's "Across" view), from rows of the ``comparisons`` table
(:func:`failtrace.store.comparisons.load_comparisons`). Pure functions of those rows: no matplotlib, no store.

Definitions (docs/REPORT.md, "Across models / checkpoints"):

* **Model rows** have ``step IS NULL`` (``failtrace compare --models``); the case's own model is the row with
  ``reference = true``. **Checkpoint rows** have a ``step`` (``compare --checkpoints``).
* **Corrected** in another model or checkpoint: its Δℓ = ℓ(target) − ℓ(contrast) < 0, i.e. that model now prefers
  the contrast (the token that fixes the answer) at the same text position.
* **Segment share** of one row: s_g = R_g / Σ_h |R_h|, the signed share of the absolute segment relevance held by
  segment g (R_g = summed AttnLRP input relevance of the segment), g and h over the prompt's own segments: every one
  but ``special``. It is scale free, so models whose relevance magnitudes differ (another size, another tokenizer)
  can be averaged and compared; Σ_g |s_g| = 1. ``special`` (the chat template's text and the special ids) is left
  out because it is not the same input in two models: another template, and attention-sink ids whose relevance is
  large and differs by model; counted in, it moved every other segment's share for a reason outside the prompt.
* **Series** of a checkpoint: the finetune run it belongs to (the row's ``training_run``,
  :func:`failtrace.training.checkpoints.training_run_id`), named by its folder with a trailing ``step-N`` /
  ``checkpoint-N`` component removed (``ckpts/dpo/step-50`` → ``ckpts/dpo``); two runs saved into one folder are
  two series (the name then ends in ``(run <id>)``), one run compared under two paths is one. Rows stored before
  the run was recorded are grouped by their folder alone.
* **Split**: ``trained`` / ``held-out`` as stored (``all`` when a checkpoint row has none).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from failtrace.views.common import writes

Row = Mapping[str, Any]
_STEP_DIR = re.compile(r"^(step|checkpoint|ckpt)[-_]?\d+$", re.IGNORECASE)


def is_checkpoint(row: Row) -> bool:
    """True for a checkpoint row (it has a training step), False for a cross-model row."""
    return row.get("step") is not None


def usable(row: Row) -> bool:
    """A row with a Δℓ: mapped (target and contrast are one token each in that model) and scored."""
    return bool(row.get("mapped")) and row.get("delta_logit") is not None


def series_of(model: str) -> str:
    """The checkpoint series: the folder without a trailing step-N component (module docstring)."""
    m = re.match(r"^(.*?)[\\/]+([^\\/]+)[\\/]*$", str(model))
    if m and m.group(1) and _STEP_DIR.match(m.group(2)):
        return m.group(1)
    return str(model)


def series_key(row: Row) -> str:
    """What tells one finetune run's checkpoint rows from another's: the recorded run, else the folder."""
    return str(row.get("training_run") or "folder:" + series_of(row["model"]))


def series_parts(rows: Sequence[Row]) -> dict[str, tuple[str, str]]:
    """Series key -> (its folder: the most used path of the run's rows, then the shortest; what tells it from
    another series in that folder: ``(run <id>)``, ``(run not recorded)`` for older, unrecorded rows, or "")."""
    paths: dict[str, dict[str, int]] = {}
    for r in rows:
        if is_checkpoint(r):
            folder = series_of(r["model"])
            seen = paths.setdefault(series_key(r), {})
            seen[folder] = seen.get(folder, 0) + 1
    folders = {k: min(seen, key=lambda f: (-seen[f], len(f), f)) for k, seen in paths.items()}
    shared = {n for n, uses in Counter(folders.values()).items() if uses > 1}
    return {k: (f, "" if f not in shared else "(run not recorded)" if k.startswith("folder:") else f"(run {k[:8]})")
            for k, f in folders.items()}


def series_names(rows: Sequence[Row]) -> dict[str, str]:
    """Series key -> its name: its folder, with what tells it apart when two series share it (:func:`series_parts`)."""
    return {k: f"{folder} {tag}" if tag else folder for k, (folder, tag) in series_parts(rows).items()}


def with_series(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The rows, each checkpoint row with its series' name as ``series`` (rows that have one already: as given)."""
    if all("series" in r for r in rows if is_checkpoint(r)):
        return list(rows)  # type: ignore[arg-type]
    names = series_names(rows)
    return [{**r, "series": names[series_key(r)]} if is_checkpoint(r) else dict(r) for r in rows]


def split_of(row: Row) -> str:
    """The row's case split (``trained``/``held-out``), ``all`` when the comparison has none."""
    return str(row.get("split") or "all")


def segment_share(seg: Mapping[str, float] | None) -> dict[str, float]:
    """s_g = R_g / Σ_h |R_h| over every segment but ``special`` (module docstring); {} when there is no relevance."""
    seg = {str(k): float(v) for k, v in (seg or {}).items() if k != "special"}
    total = sum(abs(v) for v in seg.values())
    return {k: v / total for k, v in seg.items()} if total > 0 else {}


def scatter_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Fig. 4: one point per (case, other model): Δℓ in the case's model (x) and in the other model (y)."""
    refs = {r["case_id"]: r for r in rows if r.get("reference") and not is_checkpoint(r) and usable(r)}
    out = []
    for r in rows:
        ref = refs.get(r["case_id"])
        if ref is None or r.get("reference") or is_checkpoint(r) or not usable(r):
            continue
        out.append({"case_id": r["case_id"], "item_id": r["item_id"], "benchmark": r["benchmark"],
                    "reference_model": ref["model"], "model": r["model"], "dl_reference": float(ref["delta_logit"]),
                    "dl_model": float(r["delta_logit"]), "corrected": float(r["delta_logit"]) < 0,
                    "writes": _writes(r), "reference_fingerprint": ref.get("model_fingerprint"),
                    "model_fingerprint": r.get("model_fingerprint")})
    return out


def unmapped_counts(rows: Sequence[Row]) -> dict[str, int]:
    """Per other model: cases not mapped there (target or contrast not one token, or a context past its window;
    left out of Fig. 4/5)."""
    out: dict[str, int] = {}
    for r in rows:
        if not r.get("reference") and not is_checkpoint(r):
            out.setdefault(r["model"], 0)
            out[r["model"]] += 0 if r.get("mapped") else 1
    return out


def _mean_shares(rows: Sequence[Row]) -> dict[str, tuple[float, int]]:
    """segment -> (mean share over the rows that have relevance, number of those rows)."""
    acc: dict[str, list[float]] = {}
    for r in rows:
        share = segment_share(r.get("segment_relevance"))
        for k, v in share.items():
            acc.setdefault(k, []).append(v)
    return {k: (sum(v) / len(v), len(v)) for k, v in acc.items()}


def segment_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Fig. 5: per other model, group (corrected there or not), model shown (the case's model or the other) and
    segment: the mean segment share over the group's cases."""
    # keyed by fingerprint, not name: one path may hold two models' weights over time (two rows, one name)
    by_key = {(r["case_id"], r.get("model_fingerprint")): r for r in rows if not is_checkpoint(r)}
    points = scatter_rows(rows)
    out = []
    for model in dict.fromkeys(p["model"] for p in points):
        for group in ("corrected", "uncorrected"):
            mine = [p for p in points if p["model"] == model and p["corrected"] == (group == "corrected")]
            for role in ("reference", "model"):
                shown = [by_key[(p["case_id"], p[f"{role}_fingerprint"])] for p in mine]
                name = mine[0]["reference_model"] if role == "reference" and mine else model
                for seg, (mean, n) in _mean_shares(shown).items():
                    out.append({"model": model, "group": group, "role": role, "shown_model": name, "segment": seg,
                                "cases": n, "mean_share": mean})
    return out


def shared_step0(rows: Sequence[Row]) -> list[Row]:
    """Checkpoint rows with step 0 given to every series that lacks it.

    Every ``finetune`` run's ``step-0`` is the untrained base model, so ``compare --checkpoints`` stores its rows
    once (rows are keyed by content fingerprint) under the first run that had it. A series (one finetune run) with
    rows for a case but no step-0 row for it borrows the stored step-0 row of that case, given the series' name and
    its own split for the case, so each run's line starts at the base model. Every row gets its ``series``.
    """
    rows = with_series(rows)
    ckpt = [r for r in rows if is_checkpoint(r)]
    base = {r["case_id"]: r for r in ckpt if int(r["step"]) == 0}
    have = {(r["series"], r["case_id"]) for r in ckpt if int(r["step"]) == 0}
    split = {(r["series"], r["case_id"]): r.get("split") for r in ckpt}
    extra = []
    for (series, cid), sp in sorted(split.items()):
        if (series, cid) not in have and cid in base:
            extra.append({**base[cid], "series": series, "split": sp})
    return [*rows, *extra]


def _writes(row: Row) -> str | None:
    """What that model writes at the failure point: target, contrast or other (None: not recorded)."""
    found = writes(row)
    return None if found is None else found[1]


def corrected_writes(points: Sequence[Row]) -> tuple[int, int]:
    """Of the corrected points (Δℓ < 0) whose top next token was recorded: (how many, how many write the contrast)."""
    known = [p["writes"] for p in points if p["corrected"] and p.get("writes") is not None]
    return len(known), known.count("contrast")


def checkpoint_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Fig. 6 (lines): one point per (case, checkpoint) with its Δℓ, series, step and split."""
    out = []
    for r in shared_step0(rows):
        if is_checkpoint(r) and usable(r):
            out.append({"case_id": r["case_id"], "item_id": r["item_id"], "benchmark": r["benchmark"],
                        "series": r["series"], "model": r["model"], "step": int(r["step"]),
                        "split": split_of(r), "delta_logit": float(r["delta_logit"]),
                        "corrected": float(r["delta_logit"]) < 0, "writes": _writes(r)})
    return sorted(out, key=lambda p: (p["series"], p["split"], p["case_id"], p["step"]))


def checkpoint_summary(rows: Sequence[Row], points: Sequence[Row] | None = None) -> list[dict[str, Any]]:
    """Fig. 6 (bold lines): per series, split and step: cases, median Δℓ, how many are corrected (Δℓ < 0), and of
    the corrected ones whose top next token was recorded (``writes_recorded``) how many write the contrast;
    ``points``: :func:`checkpoint_rows` of ``rows`` when the caller has them."""
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for p in checkpoint_rows(rows) if points is None else points:
        groups.setdefault((p["series"], p["split"], p["step"]), []).append(p)
    out = []
    for (s, sp, st), ps in sorted(groups.items()):
        v = [p["delta_logit"] for p in ps]
        recorded, contrast = corrected_writes(ps)
        out.append({"series": s, "split": sp, "step": st, "cases": len(v), "median_delta_logit": statistics.median(v),
                    "corrected": sum(x < 0 for x in v), "corrected_share": sum(x < 0 for x in v) / len(v),
                    "writes_recorded": recorded, "writes_contrast": contrast})
    return out


def checkpoint_segment_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Fig. 7: per series, split, step and segment: the mean segment share over that checkpoint's cases."""
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for r in shared_step0(rows):
        if is_checkpoint(r) and usable(r):
            groups.setdefault((r["series"], split_of(r), int(r["step"])), []).append(r)
    out = []
    for (s, sp, st), mine in sorted(groups.items()):
        for seg, (mean, n) in _mean_shares(mine).items():
            out.append({"series": s, "split": sp, "step": st, "segment": seg, "cases": n, "mean_share": mean})
    return out


def figure_data(rows: Sequence[Row]) -> dict[str, list[dict[str, Any]]]:
    """Every table of Fig. 4–7 by name (the report's CSV names; the explorer's /api/compare payload)."""
    rows = with_series(rows)  # the series are named once, over every row
    points = checkpoint_rows(rows)
    return {"scatter": scatter_rows(rows), "segments": segment_rows(rows), "checkpoints": points,
            "checkpoint_summary": checkpoint_summary(rows, points),
            "checkpoint_segments": checkpoint_segment_rows(rows)}
