"""Across models/checkpoints, top-k alternatives and contrast reviews in the explorer's API, on a real toy store
(collect → pairs → analyse → compare against a second model, plus two re-scored "checkpoints"; tests/serve_store.py):

- /api/cases/{id}/compare holds one entry per stored comparison row, the values of the rows, and heatmaps equal to
  the package's normalisation of each row's relevance (same tokenizer: identity alignment);
- /api/compare equals the report's Fig. 4–7 data of the same rows, and Fig. 4 equals a SQL join of the table;
- a case's alternatives equal a plain transformers forward pass (top-10 logits, Δℓ = ℓ(target) − ℓ(a), ranks);
  ``analyse`` records them for cases analysed before they were kept;
- picking another contrast needs --review, must name a stored alternative, writes one ``reviews`` row with the
  contrast id, and ``failtrace export`` writes reviews.jsonl and case_alternatives.jsonl.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve_store import compared_toy_store, sha256  # noqa: E402

from fastapi.testclient import TestClient  # noqa: E402

from failtrace.attribution.normalize import normalize  # noqa: E402
from failtrace.report.compare_data import figure_data  # noqa: E402
from failtrace.serve.app import create_app  # noqa: E402
from failtrace.store import open_store  # noqa: E402
from failtrace.store.cases import load_cases  # noqa: E402
from failtrace.store.comparisons import load_comparisons  # noqa: E402


@pytest.fixture(scope="module")
def cmp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    info = compared_toy_store(tmp_path_factory.mktemp("serve-compare"))
    with open_store(info["store"], read_only=True) as st:
        info["cases"] = load_cases(st)
        info["rows"] = load_comparisons(st)
    info["sha"] = sha256(info["store"])
    return info


@pytest.fixture(scope="module")
def client(cmp: dict[str, Any]):
    with TestClient(create_app(cmp["store"]), base_url="http://127.0.0.1") as c:
        yield c


def test_case_compare_lists_every_row_with_its_values(client: TestClient, cmp: dict[str, Any]) -> None:
    assert client.get("/api/meta").json()["has_comparisons"] is True
    from failtrace_testkit.toy import toy_tokenizer

    toy = toy_tokenizer()
    n_models = 2 + len(cmp["checkpoints"])
    for case in cmp["cases"]:
        data = client.get(f"/api/cases/{case.case_id}/compare").json()
        rows = {r["model"]: r for r in cmp["rows"] if r["case_id"] == case.case_id}
        assert len(data["models"]) == len(rows) == n_models
        assert data["models"][0]["reference"] and data["models"][0]["model"] == cmp["names"][0]
        assert [m["step"] for m in data["models"][2:]] == [0, 50]
        for m in data["models"]:
            r = rows[m["model"]]
            assert (m["mapped"], m["delta_logit"], m["flip_k"], m["step"], m["split"]) == \
                   (r["mapped"], r["delta_logit"], r["flip_k"], r["step"], r["split"])
            assert m["corrected"] == (None if r["delta_logit"] is None else r["delta_logit"] < 0)
            # k* as `show` prints it: a model corrected already has nothing to flip ("—", the explorer said "none")
            want = (str(r["flip_k"]) if r["flip_k"] is not None else "—" if r["delta_logit"] is None
                    or r["delta_logit"] < 0 else "none")
            assert m["k_label"] == want
            if not r["mapped"]:
                assert m["aligned"] is None
                continue
            # the stored token texts are that model's own per-token decodes (here all share the toy tokenizer, so
            # the alignment is the identity and the heatmap is the row's own normalised relevance)
            assert r["tokens"] == [toy.decode([t]) for t in r["token_ids"]]
            assert len(r["special_mask"]) == len(r["tokens"])
            want = normalize(r["input_relevance"], r["special_mask"]).tolist()
            assert m["aligned"]["values"] == pytest.approx(want, abs=1e-12)
    assert client.get("/api/cases/nosuchcase/compare").status_code == 404
    assert client.get("/api/cases/bad..id/compare").status_code == 422


def test_figures_equal_the_report_data_and_sql(client: TestClient, cmp: dict[str, Any]) -> None:
    data = client.get("/api/compare").json()
    want = figure_data(cmp["rows"])
    for key in want:
        assert data[key] == json.loads(json.dumps(want[key])), key  # floats survive JSON exactly
    with open_store(cmp["store"], read_only=True) as st:
        sql = st.con.execute(
            "SELECT o.case_id, o.model, r.delta_logit, o.delta_logit FROM comparisons o JOIN comparisons r "
            "ON r.case_id = o.case_id AND r.reference WHERE NOT o.reference AND o.step IS NULL AND o.mapped "
            "ORDER BY 1, 2").fetchall()
    got = sorted((p["case_id"], p["model"], p["dl_reference"], p["dl_model"]) for p in data["scatter"])
    assert got == [tuple(r) for r in sql] and len(got) >= 1
    assert {p["split"] for p in data["checkpoints"]} == {"trained", "held-out"}
    with open_store(cmp["store"], read_only=True) as st:  # Fig. 6's points against the stored checkpoint rows
        ckpt = st.con.execute("SELECT case_id, step, split, delta_logit FROM comparisons WHERE step IS NOT NULL "
                              "AND mapped AND delta_logit IS NOT NULL").fetchall()
    assert {(p["case_id"], p["step"], p["split"], p["delta_logit"]) for p in data["checkpoints"]} == \
        {tuple(r) for r in ckpt} and ckpt


def test_alternatives_equal_a_plain_forward(client: TestClient, cmp: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(cmp["model_dir"]), dtype=torch.float32).eval()
    assert cmp["cases"]  # every check below is per case
    for case in cmp["cases"]:
        alts = client.get(f"/api/cases/{case.case_id}").json()["alternatives"]
        with torch.no_grad():
            row = model(input_ids=torch.tensor([case.token_ids])).logits[0, -1].double()
        top = torch.topk(row, 10).indices.tolist()
        assert [a["token_id"] for a in alts[:10]] == top
        ids = [a["token_id"] for a in alts]
        assert case.target_id in ids and case.contrast_id in ids
        for a in alts:
            assert a["logit"] == pytest.approx(float(row[a["token_id"]]), abs=1e-4)
            assert a["delta_logit"] == pytest.approx(float(row[case.target_id] - row[a["token_id"]]), abs=1e-4)
            assert a["rank"] == int((row > row[a["token_id"]]).sum())
            assert a["is_target"] == (a["token_id"] == case.target_id)
        contrast = next(a for a in alts if a["is_contrast"])
        assert contrast["delta_logit"] == pytest.approx(case.delta_logit, abs=1e-6)


def test_analyse_records_missing_alternatives(cmp: dict[str, Any], tmp_path: Path) -> None:
    from failtrace.cases.analyse import analyse
    from failtrace_testkit.toy import one_thread

    store = tmp_path / "old.duckdb"
    shutil.copy(cmp["store"], store)
    with open_store(store) as st:
        before = st.con.execute("SELECT * FROM case_alternatives ORDER BY case_id").fetchall()
        st.con.execute("DELETE FROM case_alternatives")  # as a store analysed before alternatives were kept
        with one_thread():
            summary = analyse(st, models={cmp["lm"].name: cmp["lm"]}, progress=False)
        after = st.con.execute("SELECT * FROM case_alternatives ORDER BY case_id").fetchall()
    assert summary.analysed == 0 and summary.alternatives_added == len(cmp["cases"]) == len(before)
    assert len(after) == len(before)  # zip below would silently drop rows that were not written back
    for a, b in zip(before, after):
        assert a[:3] == pytest.approx(b[:3]) and list(a[3]) == list(b[3])
        assert np.allclose(a[5], b[5], atol=1e-6)


def test_pick_contrast_needs_review_and_writes_one_row(cmp: dict[str, Any], tmp_path: Path) -> None:
    from failtrace.cli import main

    case = cmp["cases"][0]
    with TestClient(create_app(cmp["store"]), base_url="http://127.0.0.1") as ro:
        alts = ro.get(f"/api/cases/{case.case_id}").json()["alternatives"]
        other = next(a for a in alts if not a["is_target"] and not a["is_contrast"])
        assert ro.post(f"/api/cases/{case.case_id}/contrast", json={"contrast_id": other["token_id"]}).status_code \
            == 403
    assert sha256(cmp["store"]) == cmp["sha"]
    store = tmp_path / "review.duckdb"
    shutil.copy(cmp["store"], store)
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as rw:
        url = f"/api/cases/{case.case_id}/contrast"
        own = rw.post(url, json={"contrast_id": case.target_id})  # the target itself
        assert own.status_code == 422 and "is the case's target" in own.json()["detail"]
        absent = rw.post(url, json={"contrast_id": 99999})  # not a stored alternative: said so, not "the target"
        assert absent.status_code == 422 and absent.json()["detail"].startswith(
            "contrast_id 99999 is not among the case's stored alternatives (")
        assert rw.post(url, json={"contrast_id": "x"}).status_code == 422
        for loose in (str(other["token_id"]), float(other["token_id"]), True):  # a JSON integer, nothing coerced
            assert rw.post(url, json={"contrast_id": loose}).status_code == 422, loose
        same = rw.post(url, json={"contrast_id": case.contrast_id})  # the case's own contrast: no review to write
        assert same.status_code == 422 and "already the case's contrast" in same.json()["detail"]
        assert rw.post(url, json={"contrast_id": other["token_id"], "comment": "a\x00b"}).status_code == 422
        assert rw.post("/api/cases/nosuchcase/contrast", json={"contrast_id": 1}).status_code == 404
        r = rw.post(url, json={"contrast_id": other["token_id"], "comment": "reads better"})
        assert r.status_code == 201
        shown = rw.get(f"/api/cases/{case.case_id}").json()["reviews"]
        listed = rw.get("/api/reviews").json()["reviews"]
    assert [x["decision"] for x in shown] == ["contrast"] and shown[0]["contrast_id"] == other["token_id"]
    assert len(listed) == 1 and listed[0]["contrast_text"] == other["text"] and listed[0]["case_id"] == case.case_id
    with open_store(store, read_only=True) as st:
        rows = st.con.execute("SELECT decision, contrast_id, contrast_text, comment, case_id FROM reviews").fetchall()
    assert rows == [("contrast", other["token_id"], other["text"], "reads better", case.case_id)]
    out = tmp_path / "export"
    assert main(["export", "--store", str(store), "--out", str(out), "--format", "jsonl"]) == 0
    recs = [json.loads(x) for x in (out / "reviews.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and {k: recs[0][k] for k in ("decision", "contrast_id", "contrast_text", "item_id")} == \
        {"decision": "contrast", "contrast_id": other["token_id"], "contrast_text": other["text"],
         "item_id": case.item_id}
    assert set(recs[0]) == {"review_id", "pair_run_id", "item_id", "case_id", "decision", "category", "comment",
                            "created_at", "contrast_id", "contrast_text"}
    alts_lines = [json.loads(x) for x in (out / "case_alternatives.jsonl").read_text().splitlines()]
    assert len(alts_lines) == len(cmp["cases"]) and isinstance(alts_lines[0]["tokens"], list)
    assert main(["export", "--store", str(store), "--out", str(tmp_path / "pq"), "--format", "parquet"]) == 0
    assert (tmp_path / "pq" / "reviews.parquet").stat().st_size > 0


# The comparisons table as the first failtrace with it wrote it: no token texts, keyed by (case, fingerprint) alone.
_FIRST_DDL = """CREATE TABLE comparisons (case_id VARCHAR NOT NULL, model_fingerprint VARCHAR NOT NULL,
    model VARCHAR NOT NULL, item_id VARCHAR NOT NULL, benchmark VARCHAR NOT NULL, reference BOOLEAN NOT NULL,
    mapped BOOLEAN NOT NULL, token_ids INTEGER[], prompt_length INTEGER, position INTEGER, target_text VARCHAR,
    contrast_text VARCHAR, target_id INTEGER, contrast_id INTEGER, delta_logit DOUBLE, input_relevance DOUBLE[],
    segment_relevance VARCHAR, flip_curve DOUBLE[], flip_k INTEGER, step INTEGER, split VARCHAR, notes VARCHAR,
    seconds DOUBLE, created_at TIMESTAMP, PRIMARY KEY (case_id, model_fingerprint))"""


def as_first_table(store: Path) -> int:
    """Rewrite the store's comparisons table in the first format (same rows); returns how many rows it has."""
    with open_store(store) as st:
        cols = [r[0] for r in st.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'comparisons' "
            "AND column_name NOT IN ('tokens', 'special_mask', 'checkpoint', 'training_run', 'flip_tops', "
            "'flip_top_texts') "
            "ORDER BY ordinal_position").fetchall()]
        st.con.execute(f"CREATE TABLE first_rows AS SELECT {', '.join(cols)} FROM comparisons")
        st.con.execute("DROP TABLE comparisons")
        st.con.execute(_FIRST_DDL)
        st.con.execute(f"INSERT INTO comparisons ({', '.join(cols)}) SELECT * FROM first_rows")
        st.con.execute("DROP TABLE first_rows")
        return st.con.execute("SELECT count(*) FROM comparisons").fetchone()[0]


def test_comparisons_written_before_token_texts_were_kept(cmp: dict[str, Any], tmp_path: Path) -> None:
    """A comparisons table of an older failtrace (no tokens/special_mask columns, keyed without the row's kind): the
    explorer shows each model's numbers without a heatmap, load_comparisons reads it, and the next write adds the
    columns and the key back, keeping every row."""
    from failtrace.store.comparisons import write_comparison

    store = tmp_path / "old.duckdb"
    shutil.copy(cmp["store"], store)
    n_rows = as_first_table(store)
    case = cmp["cases"][0]
    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        data = c.get(f"/api/cases/{case.case_id}/compare").json()
    assert len(data["models"]) == 4 and all(m["aligned"] is None for m in data["models"])
    assert [m["delta_logit"] for m in data["models"]][:1] == [case.delta_logit]
    with open_store(store, read_only=True) as st:  # export too: every documented key, null before it was kept
        files = st.export(tmp_path / "exp", "jsonl")
    lines = [json.loads(x) for x in next(f for f in files if f.name == "comparisons.jsonl").read_text().splitlines()]
    assert lines and all(ln["flip_tops"] is None and ln["flip_top_texts"] is None and ln["training_run"] is None
                         for ln in lines)
    with open_store(store) as st:
        rows = load_comparisons(st)
        assert all(r["tokens"] is None and r["flip_tops"] is None for r in rows)
        new = dict(rows[0], model_fingerprint="new", tokens=["a"], special_mask=[False])
        assert write_comparison(st, new)
        everything = load_comparisons(st)
        back = [r for r in everything if r["model_fingerprint"] == "new"]
        old_key = st.con.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'comparisons' "
                                 "AND constraint_type = 'PRIMARY KEY'").fetchone()[0]
        # the same weights as a checkpoint (a step): a row of its own kind, not a duplicate
        assert write_comparison(st, dict(new, step=0, split="trained"))
        assert not write_comparison(st, dict(new, step=5))  # that kind is stored for this case and fingerprint
        # the statement of the writer before the kind existed (its columns only) still inserts
        st.con.execute("INSERT INTO comparisons (case_id, model_fingerprint, model, item_id, benchmark, reference, "
                       "mapped) VALUES ('c', 'f', 'm', 'i', 'b', false, true)")
        with pytest.raises(Exception, match="(?i)duplicate|constraint"):  # and the key holds for it too
            st.con.execute("INSERT INTO comparisons (case_id, model_fingerprint, model, item_id, benchmark, "
                           "reference, mapped) VALUES ('c', 'f', 'm2', 'i', 'b', false, true)")
    assert back[0]["tokens"] == ["a"] and list(back[0]["special_mask"]) == [False]
    assert len(everything) == n_rows + 1 and old_key == 0
    assert {r["case_id"] for r in everything} >= {r["case_id"] for r in rows}
