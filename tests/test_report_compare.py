"""The report's Fig. 4–7 data against an independent computation from the comparison rows (numpy / SQL over the
stored table, not the module's loops), and the "Across models / checkpoints" sections: present with their PNG and CSV
files only when the store holds that kind of comparison."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from failtrace.report import compare_data as D
from failtrace.report.build import build_report, build_report_from_store
from failtrace.store import open_store
from failtrace.store.comparisons import load_comparisons, write_comparison

SEGS = ("system", "instruction", "answer")


def _row(case: int, model: str, *, ref: bool = False, dl: float | None = 0.0, step: int | None = None,
         split: str | None = None, mapped: bool = True, seg: dict[str, float] | None = None) -> dict[str, Any]:
    return {"case_id": f"c{case:02d}", "model_fingerprint": f"{model}@{step}", "model": model,
            "item_id": f"item-{case}", "benchmark": "toy", "reference": ref, "mapped": mapped,
            "token_ids": [1, 2, 3], "prompt_length": 2, "position": 3, "target_text": "a", "contrast_text": "b",
            "target_id": 5 if mapped else None, "contrast_id": 6 if mapped else None,
            "delta_logit": dl if mapped else None, "input_relevance": None, "segment_relevance": seg or {},
            "flip_curve": None, "flip_k": None, "step": step, "split": split, "notes": [], "seconds": 0.0,
            "flip_tops": None, "flip_top_texts": None}


def _with_top(row: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The row's top next token at k = 0 (5 = its target, 6 = its contrast, 9 = another), or none recorded."""
    top = rng.choice([5, 6, 9, None])
    if top is not None and row["mapped"]:
        row["flip_tops"], row["flip_top_texts"] = [top, 5], [{5: "a", 6: "b", 9: "z"}[top], "a"]
    return row


_ROLE = {5: "target", 6: "contrast", 9: "other"}  # what each top id is, by hand


def _rows(seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    # `special` (template text, attention-sink ids) is large and model-dependent: shares are over SEGS only
    seg = lambda: {s: rng.uniform(-2, 3) for s in SEGS} | {"special": rng.uniform(-5, 40)}  # noqa: E731
    rows = []
    for c in range(12):
        rows.append(_row(c, "small", ref=True, dl=rng.uniform(0.1, 4), seg=seg()))
        rows.append(_with_top(_row(c, "large", dl=rng.uniform(-3, 3), seg=seg(), mapped=c != 5), rng))
        rows.append(_with_top(_row(c, "other", dl=rng.uniform(-3, 3), seg=seg()), rng))
        for series in ("ckpts/dpo", "ckpts/token-dpo"):
            for step in (0, 50, 100):
                rows.append(_with_top(_row(c, f"{series}/step-{step}", dl=rng.uniform(-2, 3) - step / 60, step=step,
                                           split="trained" if c < 8 else "held-out", seg=seg()), rng))
    return rows


def test_scatter_and_segments_against_independent_math() -> None:
    rows = _rows()
    pts = D.scatter_rows(rows)
    # independent: for every non-reference model row that is mapped, pair with the reference row of its case
    ref = {r["case_id"]: r["delta_logit"] for r in rows if r["reference"]}
    expect = sorted((r["case_id"], r["model"], ref[r["case_id"]], r["delta_logit"]) for r in rows
                    if not r["reference"] and r["step"] is None and r["mapped"])
    assert sorted((p["case_id"], p["model"], p["dl_reference"], p["dl_model"]) for p in pts) == expect
    assert len(pts) == 12 * 2 - 1  # one unmapped case of "large" is left out
    assert all(p["corrected"] == (p["dl_model"] < 0) for p in pts)
    # what that model writes: its stored top token at k = 0 named by hand, None where none was recorded
    by = {(r["case_id"], r["model"]): r for r in rows}
    want = [_ROLE[by[(p["case_id"], p["model"])]["flip_tops"][0]] if by[(p["case_id"], p["model"])]["flip_tops"]
            else None for p in pts]
    assert [p["writes"] for p in pts] == want and len(set(want)) == 4  # all three roles and unrecorded occur
    assert D.unmapped_counts(rows) == {"large": 1, "other": 0}

    got = {(r["model"], r["group"], r["role"], r["segment"]): (r["mean_share"], r["cases"])
           for r in D.segment_rows(rows)}
    assert {k[3] for k in got} == set(SEGS)  # no `special` bar
    for model in ("large", "other"):
        for grp in ("corrected", "uncorrected"):
            ids = [r["case_id"] for r in rows if r["model"] == model and r["mapped"]
                   and (r["delta_logit"] < 0) == (grp == "corrected")]
            assert ids, "the random rows cover both groups"
            for role, name in (("reference", "small"), ("model", model)):
                mats = np.array([[r["segment_relevance"][s] for s in SEGS] for r in rows
                                 if r["model"] == name and r["case_id"] in ids])
                shares = mats / np.abs(mats).sum(axis=1, keepdims=True)
                for j, s in enumerate(SEGS):
                    mean, n = got[(model, grp, role, s)]
                    assert n == len(ids) and mean == pytest.approx(shares[:, j].mean(), abs=1e-12)


def test_two_models_under_one_name_keep_their_own_relevance() -> None:
    """The same model path compared twice with other weights gives two rows with one name: each Fig. 5 point
    averages its own row's segment shares (they were looked up by name, so both took the last row's)."""
    rows = _rows()
    again = _row(0, "other", dl=-1.5, seg={"system": 5.0, "instruction": -1.0, "answer": 0.5})
    again["model_fingerprint"] = "other@new-weights"
    first = next(r for r in rows if r["case_id"] == "c00" and r["model"] == "other")
    first["delta_logit"] = -0.5  # both rows of c00 in the "corrected" group of "other"
    rows.append(again)
    got = {(r["group"], r["role"], r["segment"]): (r["mean_share"], r["cases"]) for r in D.segment_rows(rows)
           if r["model"] == "other"}
    ref = {r["case_id"]: r for r in rows if r["reference"]}
    mine = [r for r in rows if r["model"] == "other" and r["delta_logit"] < 0]
    assert first in mine and again in mine
    for role, shown in (("model", mine), ("reference", [ref[r["case_id"]] for r in mine])):
        mats = np.array([[r["segment_relevance"][s] for s in SEGS] for r in shown])
        shares = mats / np.abs(mats).sum(axis=1, keepdims=True)
        for j, s in enumerate(SEGS):
            mean, n = got[("corrected", role, s)]
            assert n == len(mine) and mean == pytest.approx(shares[:, j].mean(), abs=1e-12)


def test_checkpoint_tables_against_independent_math() -> None:
    rows = _rows(1)
    summary = {(r["series"], r["split"], r["step"]): r for r in D.checkpoint_summary(rows)}
    assert len(summary) == 2 * 2 * 3
    checked_tops = 0
    for series in ("ckpts/dpo", "ckpts/token-dpo"):
        for split in ("trained", "held-out"):
            for step in (0, 50, 100):
                v = np.array([r["delta_logit"] for r in rows
                              if r["model"] == f"{series}/step-{step}" and r["split"] == split])
                s = summary[(series, split, step)]
                assert s["cases"] == len(v) == (8 if split == "trained" else 4)
                assert s["median_delta_logit"] == pytest.approx(float(np.median(v)), abs=1e-12)
                assert s["corrected"] == int((v < 0).sum())
                tops = [r["flip_tops"][0] for r in rows if r["model"] == f"{series}/step-{step}"
                        and r["split"] == split and r["flip_tops"] and r["delta_logit"] < 0]  # of the corrected
                assert (s["writes_recorded"], s["writes_contrast"]) == (len(tops), tops.count(6))
                checked_tops += bool(tops) and 0 < tops.count(6) < len(tops)
                mats = np.array([[r["segment_relevance"][g] for g in SEGS] for r in rows
                                 if r["model"] == f"{series}/step-{step}" and r["split"] == split])
                shares = (mats / np.abs(mats).sum(axis=1, keepdims=True)).mean(axis=0)
                seg = {r["segment"]: r["mean_share"] for r in D.checkpoint_segment_rows(rows)
                       if (r["series"], r["split"], r["step"]) == (series, split, step)}
                assert [seg[g] for g in SEGS] == pytest.approx(list(shares), abs=1e-12)
    assert checked_tops >= 3  # groups with both kinds of top token: a constant count would not pass
    lines = D.checkpoint_rows(rows)
    assert len(lines) == 12 * 2 * 3 and {p["series"] for p in lines} == {"ckpts/dpo", "ckpts/token-dpo"}
    assert D.series_of("runs/a/checkpoint-300") == "runs/a"
    assert D.series_of("qwen2.5-coder-0.5b") == "qwen2.5-coder-0.5b"


def test_every_series_starts_at_the_shared_step0() -> None:
    """``compare --checkpoints`` stores the base model (every run's step-0) once; each run's line still starts there."""
    rows = [r for r in _rows(2) if not (r["model"] == "ckpts/token-dpo/step-0")]  # as stored: dpo's folder only
    base = {r["case_id"]: r["delta_logit"] for r in rows if r["model"] == "ckpts/dpo/step-0"}
    lines = D.checkpoint_rows(rows)
    tok0 = {p["case_id"]: p for p in lines if p["series"] == "ckpts/token-dpo" and p["step"] == 0}
    assert set(tok0) == set(base) and len(base) == 12
    for cid, p in tok0.items():
        assert p["delta_logit"] == base[cid]
        assert p["split"] == ("trained" if int(cid[1:]) < 8 else "held-out")
    summary = {(r["series"], r["split"], r["step"]): r["cases"] for r in D.checkpoint_summary(rows)}
    assert summary[("ckpts/token-dpo", "trained", 0)] == 8 and summary[("ckpts/dpo", "trained", 0)] == 8
    assert len([p for p in lines if p["series"] == "ckpts/dpo" and p["step"] == 0]) == 12  # not doubled


def test_a_series_is_a_finetune_run_not_a_path() -> None:
    """Two runs saved into one --out were pooled into one series (4 held-out cases at a step of a run with 2); one run
    compared under two spellings of its folder was split into two. A series is the recorded run; its name is the
    folder, with the run's id when two runs share it."""
    def ck(case: int, model: str, step: int, run: str | None, dl: float) -> dict[str, Any]:
        return {**_row(case, model, step=step, split="held-out", dl=dl), "model_fingerprint": f"{run}@{step}",
                "training_run": run}

    sft = [ck(c, f"ck/s/step-{st}", st, "a" * 16, 1.0 + c + st) for c in (0, 1) for st in (0, 1, 2)]
    dpo = [ck(c, "ck/s/step-1", 1, "b" * 16, -1.0 - c) for c in (0, 1)]  # a second run into ck/s (its step-0: sft's)
    moved = [ck(c, "/abs/ck/p/step-0", 0, "c" * 16, 0.5) for c in (2, 3)] + [  # other cases: one base per case
        ck(c, "ck/p/step-1", 1, "c" * 16, 0.25) for c in (2, 3)] + [ck(2, "ck/p/step-2", 2, "c" * 16, 0.1)]
    old = [ck(c, "ck/s/step-3", 3, None, 9.0) for c in (0, 1)]  # stored before runs were recorded
    summary = {(r["series"], r["step"]): r for r in D.checkpoint_summary([*sft, *dpo, *moved, *old])}
    a, b = "ck/s (run aaaaaaaa)", "ck/s (run bbbbbbbb)"
    assert {s for s, _ in summary} == {a, b, "ck/p", "ck/s (run not recorded)"}
    assert summary[(a, 1)]["cases"] == 2 and summary[(a, 1)]["median_delta_logit"] == 2.5  # 2 + 3, sft's alone
    assert summary[(b, 1)]["cases"] == 2 and summary[(b, 1)]["corrected"] == 2
    assert summary[(b, 0)]["median_delta_logit"] == summary[(a, 0)]["median_delta_logit"] == 1.5  # the shared base
    assert (b, 2) not in summary and summary[(a, 2)]["cases"] == 2
    assert [summary[("ck/p", st)]["cases"] for st in (0, 1, 2)] == [2, 2, 1]  # one run, two paths: one series
    assert D.series_names(sft) == {"a" * 16: "ck/s"}  # alone in its folder: the folder's name


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_sections_only_when_comparisons_exist(tmp_path: Path) -> None:
    rows = _rows(2)
    models_only = [r for r in rows if r["step"] is None]
    index = build_report([], [], tmp_path / "m", comparisons=models_only)
    html = index.read_text(encoding="utf-8")
    assert 'id="across-models"' in html and 'id="across-checkpoints"' not in html
    assert (tmp_path / "m/figures/fig4_scatter.png").stat().st_size > 5000
    assert (tmp_path / "m/figures/fig5_segments.png").exists()
    assert not (tmp_path / "m/figures/fig6_checkpoints.png").exists()
    got = _csv(tmp_path / "m/tables/fig4_scatter.csv")
    assert len(got) == len(D.scatter_rows(rows))
    for r in got:
        src = next(x for x in rows if x["case_id"] == r["case_id"] and x["model"] == r["model"])
        assert float(r["dl_model"]) == src["delta_logit"] and (r["corrected"] == "True") == (src["delta_logit"] < 0)
        assert r["writes"] == (_ROLE[src["flip_tops"][0]] if src["flip_tops"] else "")
    # the lead: per model, of its corrected cases with the top token recorded, how many write the contrast (by hand)
    for m in ("large", "other"):
        pts = [x for x in rows if x["model"] == m and x["mapped"] and x["delta_logit"] < 0 and x["flip_tops"]]
        said = (f", {sum(x['flip_tops'][0] == 6 for x in pts)} of the {len(pts)} corrected with their top token "
                "recorded write the contrast")
        assert pts and said in html, m
    html_all = build_report([], [], tmp_path / "m", comparisons=rows).read_text(encoding="utf-8")
    assert 'href="#across-checkpoints"' in html_all and html_all.count("data:image/png;base64,") == 4
    assert len(_csv(tmp_path / "m/tables/fig6_summary.csv")) == 12
    # rebuilt without comparisons: the sections and their files are gone
    plain = build_report([], [], tmp_path / "m").read_text(encoding="utf-8")
    assert "across-models" not in plain and not (tmp_path / "m/figures/fig4_scatter.png").exists()
    assert not (tmp_path / "m/tables/fig7_segments.csv").exists()


def test_report_from_store_reads_the_comparisons_table(tmp_path: Path) -> None:
    rows = _rows(3)
    with open_store(tmp_path / "s.duckdb") as st:
        for r in rows:
            assert write_comparison(st, r)
    with open_store(tmp_path / "s.duckdb", read_only=True) as st:
        stored = load_comparisons(st)
        index, n = build_report_from_store(st, tmp_path / "r", graphs=False)
        # independent: the Fig. 6 medians straight from SQL
        sql = dict(((s, st_), m) for s, st_, m in st.con.execute(
            "SELECT model, split, median(delta_logit) FROM comparisons WHERE step IS NOT NULL GROUP BY 1, 2"
        ).fetchall())
    assert n == 0 and len(stored) == len(rows)
    html = index.read_text(encoding="utf-8")
    assert "Across models" in html and "Across checkpoints" in html
    fig6 = _csv(tmp_path / "r/tables/fig6_summary.csv")
    assert len(fig6) == len(sql) > 0  # one row per (checkpoint, split), each checked against SQL below
    for r in fig6:
        model = f"{r['series']}/step-{r['step']}"
        assert float(r["median_delta_logit"]) == pytest.approx(sql[(model, r["split"])], abs=1e-9)
    seg = json.loads(json.dumps(stored[0]["segment_relevance"]))
    assert set(seg) == {*SEGS, "special"}  # stored as computed; the figures leave `special` out
    for fig in ("fig5_segments.csv", "fig7_segments.csv"):
        assert {r["segment"] for r in _csv(tmp_path / "r/tables" / fig)} == set(SEGS)


def test_the_step_axis_has_whole_steps_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps 0, 1, 2 were drawn with ticks 0.25, 0.5, ... (Fig. 6 and 7); a training step is a whole number."""
    import failtrace.report.compare_figs as F

    points = [{"series": "ck", "case_id": f"c{i}", "split": "trained", "step": st, "delta_logit": 1.0 - st - i}
              for i in range(2) for st in (0, 1, 2)]
    summary = [{"series": "ck", "split": "trained", "step": st, "median_delta_logit": 0.5 - st, "cases": 2,
                "corrected": 0} for st in (0, 1, 2)]
    ticks: list[float] = []
    real = F._save

    def spy(fig, path):
        fig.canvas.draw()
        ticks.extend(t for ax in fig.axes for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1])
        return real(fig, path)

    monkeypatch.setattr(F, "_save", spy)
    F.checkpoints_figure(points, summary, tmp_path / "f6.png")
    assert ticks and all(float(t).is_integer() for t in ticks) and {0.0, 1.0, 2.0} <= set(ticks)


def test_nine_segments_are_nine_colours_in_the_report_and_the_explorer(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Fig. 7 with more segments than the old six (report) or eight (explorer) colours drew two segments alike
    (instruction and signature, both teal); both now use the same twelve colours."""
    import re
    from importlib import resources

    import failtrace.report.compare_figs as F
    from failtrace.report.figures import _FALLBACK

    segs = [f"seg{i}" for i in range(9)]
    rows = [{"series": "ck", "split": "trained", "step": st, "segment": g, "mean_share": 0.1 * i + st, "cases": 1}
            for i, g in enumerate(segs) for st in (0, 1)]
    colours: list[str] = []
    real = F._save

    def spy(fig, path):
        colours.extend(line.get_color() for ax in fig.axes for line in ax.get_lines() if line.get_label() in segs)
        return real(fig, path)

    monkeypatch.setattr(F, "_save", spy)
    F.checkpoint_segments_figure(rows, tmp_path / "f7.png")
    assert len(colours) == 9 and len(set(colours)) == 9
    js = resources.files("failtrace.serve").joinpath("static", "across.js").read_text(encoding="utf-8")
    palette = re.findall(r'"(#[0-9a-f]{6})"', re.search(r"var PALETTE = \[(.*?)\];", js, re.S).group(1))
    assert palette == list(_FALLBACK) and len(set(palette)) == 12
