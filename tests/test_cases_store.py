"""Case storage: schema migration 1 -> 2, one transaction per case, idempotent writes, overrides, exports."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from failtrace.cases.record import Case, MaskingSpec, CaseMethod
from failtrace.errors import FailtraceError
from failtrace.store import SCHEMA_VERSION, open_store
from failtrace.store.cases import (
    done_case_ids,
    export_cases_jsonl,
    load_case_graph,
    load_cases,
    write_case,
)
from failtrace.store.overrides import set_override
from failtrace.store.schema import CASE_TABLES, DDL
from failtrace.store.store import RunRecord


def _case(cid: str, n: int = 7, analysis: str = "a1", pair_run: str = "p1", seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    methods = {m: CaseMethod(method=m, input_relevance=rng.normal(size=n).tolist(),
                               hidden_layer_sums=rng.normal(size=3).tolist() if m == "attnlrp" else [],
                               segment_relevance={"query": 1.5, "answer": -0.25}, flip_curve=[2.0, 1.0, -0.5],
                               flip_k=2 if m == "attnlrp" else None, seconds=0.1,
                               flip_tops=[40, 40, 7] if m == "attnlrp" else [],
                               flip_top_texts=["x", "x", "A"] if m == "attnlrp" else [])
               for m in ("attnlrp", "random")}
    graph = {"settings": {"prune": "cumulative:0.85"}, "stages": ["emb", "L0", "L1"], "objective_value": 2.0,
             "nodes": [[0, 1, 0.5], [2, n - 1, 2.0]], "edges": [[0, 1, 1, n - 1, 0.25], [1, n - 1, 2, n - 1, 1.75]]}
    return Case(case_id=cid, pair_run_id=pair_run, run_id="r1", item_id=f"i-{cid}", benchmark="toy", model="m",
                model_fingerprint="f" * 32, token_ids=list(range(3, 3 + n)), tokens=[f"t{i}" for i in range(n)],
                special_mask=[True] + [False] * (n - 1), prompt_length=4, position=n, target_id=40, target_text="x",
                contrast_id=41, contrast_text="y", delta_logit=2.0, segments={"special": [[0, 1]], "query": [[1, 4]],
                                                                              "answer": [[4, n]]},
                relevant_segments=["query"], methods=methods, masking=MaskingSpec(max_k=2), category="M-IA",
                category_evidence={"k_star": 2, "ablation": {"flipped": False, "delta": [np.float64(1.5)]}},
                pattern="OIT", pattern_evidence={"share": 0.5}, graph_summary={"bands": [1.0]},
                settings={"methods": ["attnlrp", "random"]}, analysis_id=analysis, notes=["a note"],
                seconds={"graph": 0.5}, graph=graph)


def _v1_store(path: Path) -> None:
    """A store exactly as schema version 1 wrote it (its tables are the first statements of DDL, unchanged)."""
    con = duckdb.connect(str(path))
    for stmt in DDL[:7]:
        con.execute(stmt)
    con.execute("INSERT INTO schema_version VALUES (1, 'failtrace 0.1')")
    con.execute("INSERT INTO items VALUES ('toy', 'i0', '\"p\"', '{}', '{}', 'h')")
    con.close()


def test_version_1_store_is_migrated_by_adding_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    _v1_store(path)
    with open_store(path, read_only=True) as st:  # reading does not migrate, and finds no cases
        assert st.schema_version == 1 and load_cases(st) == [] and done_case_ids(st) == set()
        files = st.export(tmp_path / "old-export", "jsonl")
        assert "cases.jsonl" not in {f.name for f in files}
    before = path.read_bytes()
    with open_store(path) as st:  # opened for writing: still version 1 until the first write
        assert st.schema_version == 1 and done_case_ids(st) == set()
    assert path.read_bytes() == before  # a command that stops before writing leaves it byte for byte
    with open_store(path) as st:
        assert write_case(st, _case("c1"))  # the first write migrates, then writes
        assert st.schema_version == SCHEMA_VERSION == 4
        tables = {r[0] for r in st.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert set(CASE_TABLES) <= tables
        assert st.get_item("toy", "i0").prompt == "p"  # old rows untouched
    with open_store(path, read_only=True) as st:
        assert [c.case_id for c in load_cases(st)] == ["c1"]


def test_version_3_store_reads_then_migrates_to_the_top_tokens_after_masking(tmp_path: Path) -> None:
    """A store as version 3 wrote it (case_methods without flip_tops, flip_top_texts): read in its old layout, its
    cases have no top tokens (not recorded) and the explorer's case page still loads; opened for writing it gains the
    columns (NULL for the old rows, every old value kept) and a new case stores its top tokens."""
    from failtrace.serve.casedata import case_detail

    path = tmp_path / "v3.duckdb"
    with open_store(path) as st:
        assert write_case(st, _case("old"))
        st.con.execute("ALTER TABLE case_methods DROP COLUMN flip_top_texts")
        st.con.execute("ALTER TABLE case_methods DROP COLUMN flip_tops")
        st.con.execute("UPDATE schema_version SET version = 3")
    before = duckdb.connect(str(path), read_only=True)
    old_rows = before.execute("SELECT * FROM case_methods ORDER BY method").fetchall()
    before.close()
    with open_store(path, read_only=True) as st:
        (case,) = load_cases(st)
        assert st.schema_version == 3 and case.methods["attnlrp"].flip_tops == []
        assert case.methods["attnlrp"].flip_curve == [2.0, 1.0, -0.5]
        page = case_detail(st.con, "old", False)
        assert page is not None and page["methods"]["attnlrp"]["mask_tops"] == []
        assert "top next token" not in page["methods"]["attnlrp"]["mask_caption"]
    before = path.read_bytes()
    with open_store(path) as st:
        assert st.schema_version == 3  # not before the first write: reads see the old layout
        assert done_case_ids(st) == {"old"} and load_cases(st)[0].methods["attnlrp"].flip_tops == []
    assert path.read_bytes() == before
    with open_store(path) as st:
        assert write_case(st, _case("new"))
        assert st.schema_version == SCHEMA_VERSION == 4
        rows = st.con.execute("SELECT * FROM case_methods WHERE case_id = 'old' ORDER BY method").fetchall()
        assert [r[:-2] for r in rows] == old_rows and all(r[-2:] == (None, None) for r in rows)
    with open_store(path, read_only=True) as st:
        by_id = {c.case_id: c for c in load_cases(st, latest=False)}
        assert by_id["new"].methods["attnlrp"].flip_top_texts == ["x", "x", "A"]
        assert by_id["old"].methods["attnlrp"].flip_top_texts == []
        page = case_detail(st.con, "new", False)
    tops = page["methods"]["attnlrp"]["mask_tops"]
    assert [(t["text"], t["role"]) for t in tops] == [("x", "target"), ("x", "target"), ("A", "other")]
    # k* = 2: the caption names what the model would write with the first two masked, a third token
    assert page["methods"]["attnlrp"]["mask_caption"].endswith("the model's top next token is then ‹A›, a third "
                                                                "token, not the contrast")


def test_roundtrip_idempotent_and_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    case = _case("c1")
    with open_store(path) as st:
        assert write_case(st, case) is True
        assert write_case(st, _case("c1", seed=5)) is False  # same id: never written twice
        broken = _case("c2")
        broken.graph = {"settings": {}, "stages": [], "nodes": []}  # no "edges": fails after the first inserts
        with pytest.raises(KeyError):
            write_case(st, broken)
        assert done_case_ids(st) == {"c1"}
        counts = {t: st.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in CASE_TABLES}
        assert counts == {"cases": 1, "case_methods": 2, "case_graphs": 1, "overrides": 0}
    with open_store(path, read_only=True) as st:
        (back,) = load_cases(st)
        graph = load_case_graph(st, "c1")
    expected = case.to_dict()
    expected["category_evidence"]["ablation"]["delta"] = [1.5]
    got = back.to_dict()
    assert got.pop("graph") is None and expected.pop("graph") == graph
    got.pop("override")
    expected.pop("override")
    assert got == expected


def test_latest_analysis_per_pair_run_never_mixes(tmp_path: Path) -> None:
    with open_store(tmp_path / "s.duckdb") as st:
        for rid in ("a-old", "a-new"):
            st.ensure_run(RunRecord(run_id=rid, stage="analyse", benchmark="toy", model="m", parent_run_id="p1"))
        write_case(st, _case("c-old-1", analysis="a-old"))
        write_case(st, _case("c-old-2", analysis="a-old"))
        write_case(st, _case("c-new-1", analysis="a-new"))
        write_case(st, _case("c-other", analysis="a-old", pair_run="p2"))
        assert {c.case_id for c in load_cases(st)} == {"c-new-1", "c-other"}
        assert len(load_cases(st, latest=False)) == 4
        assert {c.case_id for c in load_cases(st, analysis_id="a-old")} == {"c-old-1", "c-old-2", "c-other"}
        assert load_cases(st, model_fingerprint="nope") == [] and load_cases(st, benchmark="other") == []
        # Narrowed reads (failtrace show) keep the newest-analysis rule and equal the same cases of the full read.
        whole = {c.case_id: c.to_dict() for c in load_cases(st, latest=False)}
        assert [c.case_id for c in load_cases(st, case_ids={"c-old-1", "c-other"})] == ["c-other"]
        (one,) = load_cases(st, case_ids=["c-old-1"], latest=False)
        assert one.to_dict() == whole["c-old-1"] and set(one.methods) == {"attnlrp", "random"}
        assert [c.case_id for c in load_cases(st, item_id="i-c-new-1")] == ["c-new-1"]
        assert load_cases(st, item_id="i-c-old-2") == [] and load_cases(st, case_ids=[]) == []


def test_overrides_are_stored_newest_wins_and_checked(tmp_path: Path) -> None:
    with open_store(tmp_path / "s.duckdb") as st:
        write_case(st, _case("abc123"))
        write_case(st, _case("abd999"))
        with pytest.raises(FailtraceError, match="unknown category"):
            set_override(st, "abc123", "WRONG", "x")
        with pytest.raises(FailtraceError, match="reason"):
            set_override(st, "abc123", "NC-IA+AG", "  ")
        with pytest.raises(FailtraceError, match="no case"):
            set_override(st, "zzz", "NC-IA+AG", "why")
        with pytest.raises(FailtraceError, match=r"matches two cases \(abc123, abd999\); give more"):
            set_override(st, "ab", "NC-IA+AG", "why")  # exactly two: both named, no "..."
        assert set_override(st, "abc", "NC-IA+AG", "first look")["case_id"] == "abc123"
        set_override(st, "abc123", "NC-IA+M-AG", "second look")
        with pytest.raises(FailtraceError, match=r"case abc123's category is already NC-IA\+M-AG \(by an override\): "
                           r"give another category to override it \(to change only its reason, clear the override "
                           r"first\)$"):  # the command line refuses it as the explorer does, and says the way on
            set_override(st, "abc123", "NC-IA+M-AG", "third look")
        with pytest.raises(FailtraceError, match=r"case abd999's category is already M-IA: give another"):
            set_override(st, "abd999", "M-IA", "same")
        cases = {c.case_id: c for c in load_cases(st)}
    assert cases["abc123"].category == "M-IA" and cases["abc123"].effective_category == "NC-IA+M-AG"
    assert cases["abc123"].override["reason"] == "second look"
    assert cases["abd999"].override is None and cases["abd999"].effective_category == "M-IA"


def test_an_override_back_to_the_computed_category_clears_it(tmp_path: Path) -> None:
    """Back to the computed category was stored as one more override: the case stayed marked as set by hand (✎, *),
    "M-IA (override of M-IA)". It now removes the overrides, as ``override --clear`` does."""
    with open_store(tmp_path / "s.duckdb") as st:
        write_case(st, _case("abc123"))  # computed M-IA
        set_override(st, "abc123", "NC-IA+AG", "first look")
        set_override(st, "abc123", "NC-IA+M-AG", "second look")
        row = set_override(st, "abc123", "M-IA", "the ablation agrees with the computed one after all")
        assert row["cleared"] is True and row["category"] == "M-IA"
        assert st.con.execute("SELECT count(*) FROM overrides").fetchone()[0] == 0
        (case,) = load_cases(st)
        assert case.override is None and case.effective_category == "M-IA"
        with pytest.raises(FailtraceError, match=r"already M-IA: give another"):  # no override left to clear
            set_override(st, "abc123", "M-IA", "again")
        assert set_override(st, "abc123", "NC-IA+AG", "third look")["cleared"] is False
        assert st.con.execute("SELECT count(*) FROM overrides").fetchone()[0] == 1
        # a store written before clears existed: its newest override may equal the computed category (a second
        # override stored back to it); the explorer's "clear override" was refused there as "already M-IA"
        st.con.execute("INSERT INTO overrides VALUES ('abc123', 'M-IA', 'back, the old way', now())")
        assert set_override(st, "abc123", "M-IA", "clear it")["cleared"] is True
        assert st.con.execute("SELECT count(*) FROM overrides").fetchone()[0] == 0


def test_exports_write_cases_jsonl_and_case_tables(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "s.duckdb"
    with open_store(path) as st:
        write_case(st, _case("c1"))
    with open_store(path, read_only=True) as st:
        js = {f.name for f in st.export(tmp_path / "js", "jsonl")}
        pq_files = {f.name for f in st.export(tmp_path / "pq", "parquet")}
    assert "cases.jsonl" in js and "case_methods.jsonl" not in js and "overrides.jsonl" in js
    assert {f"{t}.parquet" for t in CASE_TABLES} <= pq_files
    rows = pq.read_table(tmp_path / "pq" / "case_methods.parquet").to_pylist()
    assert {r["method"] for r in rows} == {"attnlrp", "random"}
    assert [r["input_relevance"] for r in rows if r["method"] == "attnlrp"][0] == \
        _case("c1").methods["attnlrp"].input_relevance
    (line,) = (tmp_path / "js" / "cases.jsonl").read_text().splitlines()
    rec = json.loads(line)
    assert rec["position"] == len(rec["token_ids"]) == 7 and rec["flip_k"] == {"attnlrp": 2, "random": None}
    assert rec["masking"] == {"rule": "zero-embedding", "token_id": None, "max_k": 2, "skip_template": True}
    again = tmp_path / "again.jsonl"
    with open_store(path, read_only=True) as st:
        export_cases_jsonl(st, again)
    assert again.read_text() == (tmp_path / "js" / "cases.jsonl").read_text()


def test_an_export_that_fails_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    """A damaged cases row stops the JSONL export midway (after the other tables): an earlier export in the folder
    keeps every byte, no staged or .part file stays, and a folder the export created is gone again."""
    from failtrace.errors import FailtraceError

    path = tmp_path / "s.duckdb"
    with open_store(path) as st:
        write_case(st, _case("c1"))
        write_case(st, _case("c2", seed=1))
    with open_store(path, read_only=True) as st:
        st.export(tmp_path / "old", "jsonl")
    before = {f.name: f.read_bytes() for f in (tmp_path / "old").iterdir()}
    assert "cases.jsonl" in before and len(before) >= 5
    with open_store(path) as st:
        st.con.execute("UPDATE cases SET pattern_evidence = '{oops' WHERE case_id = 'c2'")
        st.con.execute("INSERT INTO overrides VALUES ('c1', 'NC-IA+AG', 'newer', now())")  # a changed table too
    for out in (tmp_path / "old", tmp_path / "new" / "deeper"):
        with open_store(path, read_only=True) as st, pytest.raises(FailtraceError, match="pattern_evidence"):
            st.export(out, "jsonl")
    assert {f.name: f.read_bytes() for f in (tmp_path / "old").iterdir()} == before
    assert not (tmp_path / "new").exists()
    with open_store(path, read_only=True) as st, pytest.raises(FailtraceError, match="pattern_evidence"):
        export_cases_jsonl(st, tmp_path / "alone.jsonl")
    assert not list(tmp_path.glob("alone.jsonl*"))  # no cases.jsonl.part of the lone writer either


def test_an_export_whose_moves_fail_midway_puts_every_file_back(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap into place is all or nothing too: a rename failing after others succeeded undoes them, and a folder
    where a file goes is refused before anything is written."""
    from failtrace.errors import FailtraceError

    path = tmp_path / "s.duckdb"
    with open_store(path) as st:
        write_case(st, _case("c1"))
    with open_store(path, read_only=True) as st:
        st.export(tmp_path / "old", "jsonl")
    with open_store(path) as st:
        st.con.execute("INSERT INTO overrides VALUES ('c1', 'NC-IA+AG', 'newer', now())")
        write_case(st, _case("c2", seed=1))
    before = {f.name: f.read_bytes() for f in (tmp_path / "old").iterdir()}
    real = Path.replace
    moved: list[str] = []

    def flaky(self: Path, target: Any) -> Path:
        if ".export-" in str(self) and Path(target).parent == tmp_path / "old" and len(moved) < 3:
            moved.append(Path(target).name)
            if len(moved) == 3:  # the third file moved into place: a full disk, say
                raise OSError(28, "No space left on device")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", flaky)
    with open_store(path, read_only=True) as st, pytest.raises(FailtraceError, match="No space left"):
        st.export(tmp_path / "old", "jsonl")
    assert len(moved) == 3 and {f.name: f.read_bytes() for f in (tmp_path / "old").iterdir()} == before
    monkeypatch.setattr(Path, "replace", real)
    (tmp_path / "old" / "overrides.jsonl").unlink()
    (tmp_path / "old" / "overrides.jsonl").mkdir()
    with open_store(path, read_only=True) as st, pytest.raises(FailtraceError, match="is a folder, not a file"):
        st.export(tmp_path / "old", "jsonl")
    after = {f.name: f.read_bytes() for f in (tmp_path / "old").iterdir() if f.is_file()}
    assert after == {k: v for k, v in before.items() if k != "overrides.jsonl"}
    with open_store(path, read_only=True) as st:  # once the folder is gone, the export goes through
        (tmp_path / "old" / "overrides.jsonl").rmdir()
        st.export(tmp_path / "old", "jsonl")
    assert (tmp_path / "old" / "cases.jsonl").read_text().count("\n") == 2


def test_an_export_that_cannot_put_files_back_keeps_them_and_says_where(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """If even undoing fails, the earlier files are not deleted with the staging folder: the error names where."""
    from failtrace.errors import FailtraceError

    path = tmp_path / "s.duckdb"
    with open_store(path) as st:
        write_case(st, _case("c1"))
    with open_store(path, read_only=True) as st:
        st.export(tmp_path / "old", "jsonl")
    before = {f.name: f.read_bytes() for f in (tmp_path / "old").iterdir()}
    real = Path.replace
    calls = {"into": 0}

    def broken(self: Path, target: Any) -> Path:
        if Path(target).parent == tmp_path / "old" and ".export-" in str(self):
            calls["into"] += 1
            if calls["into"] >= 2:  # the second move into place fails, and so does every move back
                raise OSError(5, "Input/output error")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", broken)
    with open_store(path, read_only=True) as st, pytest.raises(FailtraceError, match="could not be put back") as err:
        st.export(tmp_path / "old", "jsonl")
    monkeypatch.setattr(Path, "replace", real)
    kept = Path(str(err.value).rsplit("are in ", 1)[1])
    assert kept.parent.parent == tmp_path / "old" and kept.is_dir()
    assert kept.parent.name.startswith(".export-kept-")  # it kept the staging name, which the next export swept
    assert not (kept.parent / "swapping").exists()  # named by the error: no later run names it again
    back = {f.name: f.read_bytes() for f in (tmp_path / "old").iterdir() if f.is_file()}
    back.update({f.name: f.read_bytes() for f in kept.iterdir()})
    assert {k: back[k] for k in before} == before  # every earlier file is somewhere, byte for byte



def test_an_export_killed_while_moving_keeps_the_earlier_files_and_says_where(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL in the middle of the moves left the folder half old and half new, and the next export's sweep
    deleted the earlier files the dead one held aside: a next export that failed too (a full disk) left no copy of
    them anywhere. Now the next export keeps that folder under a name no export removes and says where."""
    import os
    import subprocess
    import sys

    path, out = tmp_path / "s.duckdb", tmp_path / "exp"
    with open_store(path) as st:
        write_case(st, _case("c1"))
    with open_store(path, read_only=True) as st:
        st.export(out, "jsonl")
    first = {f.name: f.read_bytes() for f in out.iterdir()}
    with open_store(path) as st:
        write_case(st, _case("c2", seed=1))
    child = f"""
import os, signal
from pathlib import Path
from failtrace.store import open_store
real, calls = Path.replace, [0]
def replace(self, target):
    if ".export-" in str(self) and Path(target).parent == Path({str(out)!r}):
        calls[0] += 1
        if calls[0] == 3:  # the third file into place, after every earlier one went aside
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, target)
Path.replace = replace
with open_store({str(path)!r}, read_only=True) as st:
    st.export({str(out)!r}, "jsonl")
"""
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": src})
    assert proc.returncode == -9, proc.stderr
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} != first  # a mix, or files missing

    import failtrace.store.export as export

    def full_disk(*_: object) -> list[Path]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write_all", full_disk)
    with open_store(path, read_only=True) as st, pytest.raises(FailtraceError, match="No space left"):
        st.export(out, "jsonl")
    kept = [p for p in out.iterdir() if p.name.startswith(".export-kept-")]
    err = capsys.readouterr().err
    assert len(kept) == 1 and f"the earlier files it had moved aside are in {kept[0] / 'old'}" in err
    here = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    held = {f.name: f.read_bytes() for f in (kept[0] / "old").iterdir()}
    assert held and all(here.get(name) == data or held.get(name) == data for name, data in first.items())


@pytest.mark.parametrize(("duckdb_says", "line_says"), [("No space left on device", "No space left on device"),
                                                        ("Disk quota exceeded", "Disk quota exceeded"),
                                                        ("Permission denied", "Permission denied"),
                                                        ("Read-only file system", "Read-only file system")])
def test_a_parquet_export_that_cannot_write_its_file_says_so_about_the_export(tmp_path: Path, duckdb_says: str,
                                                                              line_says: str) -> None:
    """DuckDB writes Parquet itself (COPY ... TO), so a full disk there was DuckDB's error, translated as one about
    the results store ("results store S was not changed ... not committed") with DuckDB's JSON cut midway. It is
    now the export's own line, as the JSONL export says it."""
    import duckdb

    path, out = tmp_path / "s.duckdb", tmp_path / "exp"
    with open_store(path) as st:
        write_case(st, _case("c1"))

    class Failing:  # DuckDB's connection, whose COPY cannot write its file
        def __init__(self, con: Any) -> None:
            self.con = con

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("COPY"):
                raise duckdb.IOException(f'Could not write file "{out}/cases.parquet.part": {duckdb_says}')
            return self.con.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.con, name)

    with open_store(path, read_only=True) as st, pytest.raises(FailtraceError) as err:
        st.con._con = Failing(st.con._con)
        st.export(out, "parquet")
    assert str(err.value) == f"cannot write the export into {out}: {line_says}" and not out.exists()


def _one_export(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A store with one case, exported as JSONL: (store, export folder, the export's files)."""
    path, out = tmp_path / "s.duckdb", tmp_path / "exp"
    with open_store(path) as st:
        write_case(st, _case("c1"))
    with open_store(path, read_only=True) as st:
        st.export(out, "jsonl")
    return path, out, {f.name: f.read_bytes() for f in out.iterdir()}


def _second_move_in_fails(out: Path, at_first: Any = None) -> Any:
    """A ``Path.replace`` under which the second staged file into ``out`` fails, and so does every move back into
    ``out`` (``at_first`` runs at the first move in)."""
    real, calls = Path.replace, {"into": 0}

    def broken(self: Path, target: Any) -> Path:
        if Path(target).parent == out and ".export-" in str(self):
            calls["into"] += 1
            if calls["into"] == 1 and at_first is not None:
                at_first()
            if calls["into"] >= 2:
                raise OSError(5, "Input/output error")
        return real(self, target)

    return broken


def _every_earlier_file_somewhere(out: Path, old: Path, before: dict[str, bytes]) -> None:
    back = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    back.update({f.name: f.read_bytes() for f in old.iterdir()})
    assert {k: back.get(k) for k in before} == before  # byte for byte, in place or held aside


def test_a_ctrl_c_during_a_swap_whose_undo_fails_keeps_the_earlier_files(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A move fails, a move back fails too, and a Ctrl-C came meanwhile: the held Ctrl-C, raised when the moves
    ended, replaced the error that said where the earlier files were kept, and the export's clean-up then deleted
    the staging folder holding them. Now the folder is renamed out of every clean-up's reach before the Ctrl-C acts,
    and the next export names it."""
    import os
    import signal

    path, out, before = _one_export(tmp_path)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(Path, "replace", _second_move_in_fails(out, lambda: os.kill(os.getpid(), signal.SIGINT)))
    try:
        with open_store(path, read_only=True) as st, pytest.raises(KeyboardInterrupt):
            st.export(out, "jsonl")
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGINT, previous)
    kept = [p for p in out.iterdir() if p.name.startswith(".export-kept-")]
    assert len(kept) == 1 and (kept[0] / "swapping").exists()  # kept; no line has named it yet
    _every_earlier_file_somewhere(out, kept[0] / "old", before)
    capsys.readouterr()
    with open_store(path, read_only=True) as st:
        st.export(out, "jsonl")
    assert f"the earlier files it had moved aside are in {kept[0] / 'old'}" in capsys.readouterr().err
    assert not (kept[0] / "swapping").exists()


def test_an_export_whose_undo_and_keep_both_fail_deletes_no_earlier_file(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A move failed, its undo failed, and renaming the staging folder aside failed too: the error named the
    staging folder's old/ and then the export's clean-up deleted it, earlier files and all. Now a folder that could
    not be renamed keeps its marker, so nothing removes it, and the error says the next run moves it aside."""
    import failtrace.swap as swap

    path, out, before = _one_export(tmp_path)

    def no_rename(stage: Path, kind: str) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", _second_move_in_fails(out))
    monkeypatch.setattr(swap, "keep", no_rename)
    said = "next export into this folder from this machine"
    with open_store(path, read_only=True) as st, pytest.raises(FailtraceError, match=said):
        st.export(out, "jsonl")
    monkeypatch.undo()
    stages = [p for p in out.iterdir() if p.name.startswith(".export-") and p.is_dir()]
    assert len(stages) == 1 and (stages[0] / "swapping").exists()
    _every_earlier_file_somewhere(out, stages[0] / "old", before)


def test_a_failed_export_removes_only_what_it_made_of_a_folder_it_created(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Two exports racing into one new folder: the one that fails must not delete the files the other put there
    (it removes only the empty folders it made), and alone it still leaves no folder behind."""
    import failtrace.store.export as export

    path = tmp_path / "s.duckdb"
    with open_store(path) as st:
        write_case(st, _case("c1"))
    real = export._write_all

    def other_export_lands_then_fail(store: object, stage: Path, fmt: str) -> list[Path]:
        real(store, stage, fmt)  # type: ignore[arg-type]
        (stage.parent / "cases.jsonl").write_text("the other export's\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write_all", other_export_lands_then_fail)
    out = tmp_path / "new" / "deeper"
    with open_store(path, read_only=True) as st, pytest.raises(FailtraceError, match="No space left"):
        st.export(out, "jsonl")
    assert (out / "cases.jsonl").read_text() == "the other export's\n"
    assert [f.name for f in out.iterdir()] == ["cases.jsonl"]  # its own staging folder is gone
