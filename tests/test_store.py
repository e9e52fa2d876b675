"""The results store: schema, idempotent writes, version and content checks, locking, export."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from failtrace.benchmarks.base import Item, Verdict
from failtrace.errors import FailtraceError
from failtrace.store import PAIR_STATUSES, SCHEMA_VERSION, TABLES, GenerationRecord, RunRecord, open_store

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(run_id: str = "r1", stage: str = "collect", parent: str | None = None) -> RunRecord:
    return RunRecord(run_id=run_id, stage=stage, benchmark="toy", model="m", parent_run_id=parent, dtype="float32",
                     versions={"torch": "x"}, settings={"max_new_tokens": 8})


def _items(n: int = 3) -> list[Item]:
    return [Item(id=f"i{i}", benchmark="toy", prompt=f"p{i}", reference={"needle": "x"}, meta={"n": i})
            for i in range(n)]


def _gen(tokens: list[int], reason: str = "eos") -> GenerationRecord:
    return GenerationRecord(prompt_ids=[1, 2, 3], token_ids=tokens, completion="abc", finish_reason=reason,
                            seconds=0.1)


def test_a_reason_with_a_lone_surrogate_is_stored_and_read_back(tmp_path: Path) -> None:
    """A HumanEval candidate raising ``ValueError(chr(0xd800))`` gave a fail whose reason quotes that message: the
    commit raised "a value is not UTF-8 text" and the collect run stopped at the item (and again on every rerun, as
    greedy decoding wrote the same answer). Now the verdict is stored with the character written out as its escape
    (no terminal, page or JSON export could carry it); a pair's reason too."""
    reason = "ValueError: the candidate raised ValueError: \ud800\x1b[2J"
    with open_store(tmp_path / "s.duckdb") as st:
        st.ensure_run(_run())
        st.add_items("r1", "toy", _items())
        it = _items()[0]
        assert st.write_result("r1", it, _gen([5]), Verdict("fail", [reason], {"said": "\udfff"})) is True
        [row] = st.results("r1")
        assert row["reasons"] == [reason.replace("\ud800", "\\ud800")] and row["details"] == {"said": "\\udfff"}
        json.dumps(row["reasons"], ensure_ascii=False).encode("utf-8")  # what an export or the explorer writes
        st.ensure_run(RunRecord(run_id="p1", stage="pairs", benchmark="toy", model="m"))
        assert st.write_pair("p1", "r1", it.id, "toy", {"status": "unverifiable", "reason": reason, "rollouts": 1,
                                                          "checks": 1, "positions_walked": 1,
                                                          "unverifiable_rollouts": 1,
                                                          "hit_length_limit": False}) is True
        [pair] = st.pairs("p1")
        assert pair["reason"] == reason.replace("\ud800", "\\ud800")  # shown as its escape
        pair["reason"].encode("utf-8")


def test_new_store_has_schema_and_every_table(tmp_path: Path) -> None:
    with open_store(tmp_path / "s.duckdb") as st:
        assert st.schema_version == SCHEMA_VERSION
        assert st.counts() == {t: 0 for t in TABLES}


def test_writes_are_idempotent_and_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    with open_store(path) as st:
        assert st.ensure_run(_run()) is True
        assert st.ensure_run(_run()) is False
        st.add_items("r1", "toy", _items())
        st.add_items("r1", "toy", _items())  # again: nothing duplicated
        it = _items()[0]
        assert st.write_result("r1", it, _gen([5, 6, 2]), Verdict("fail", ["no x"], {"k": 1})) is True
        assert st.write_result("r1", it, _gen([9]), Verdict("pass")) is False  # the first record stays
        assert st.done_item_ids("r1") == {"i0"}
    with open_store(path, read_only=True) as st:
        assert st.counts()["runs"] == 1 and st.counts()["items"] == 3 and st.counts()["run_items"] == 3
        rows = st.results("r1")
        assert len(rows) == 1
        row = rows[0]
        assert row["token_ids"] == [5, 6, 2] and row["status"] == "fail" and row["reasons"] == ["no x"]
        assert row["details"] == {"k": 1} and row["n_tokens"] == 3 and row["prompt_tokens"] == 3
        assert st.get_item("toy", "i2").meta == {"n": 2}
        assert st.get_run("r1").settings == {"max_new_tokens": 8}
        assert st.run_item_ids("r1") == ["i0", "i1", "i2"]


def test_changed_item_content_is_refused(tmp_path: Path) -> None:
    with open_store(tmp_path / "s.duckdb") as st:
        st.ensure_run(_run())
        st.add_items("r1", "toy", _items())
        changed = _items()
        changed[1].prompt = "something else"
        with pytest.raises(FailtraceError, match="different content") as info:
            st.add_items("r1", "toy", changed)
        assert "trace file" not in str(info.value)  # the traces-only cause is named for traces alone
        assert str(info.value).endswith("reads it differently. Use a new --store for the new data.")
        for it in (traces := _items()):
            it.benchmark = "traces"
        st.add_items("r1", "traces", traces)
        traces[0].prompt = "changed"
        with pytest.raises(FailtraceError, match=r"reads it differently \(a trace file's reply steps"):
            st.add_items("r1", "traces", traces)
        with pytest.raises(FailtraceError, match="more than once"):
            st.add_items("r1", "toy", [_items()[0], _items()[0]])


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    with open_store(path) as st:
        st.con.execute("UPDATE schema_version SET version = ?", [SCHEMA_VERSION + 1])
    for read_only in (False, True):
        with pytest.raises(FailtraceError, match="newer failtrace"):
            open_store(path, read_only=read_only)


@pytest.mark.parametrize(("ddl", "value", "match"), [
    ("version DOUBLE, written_by VARCHAR", "'inf'", "not a whole number"),
    ("version DOUBLE, written_by VARCHAR", "'nan'", "not a whole number"),
    ("version DOUBLE, written_by VARCHAR", "1.5", "not a whole number"),
    ("version VARCHAR, written_by VARCHAR", "'abc'", "not a whole number"),
    ("v INTEGER, written_by VARCHAR", "1", "no version column"),
    ("version INTEGER, written_by VARCHAR", None, "empty schema_version"),
])
def test_a_damaged_schema_version_is_refused_without_writing(tmp_path: Path, ddl: str, value: str | None,
                                                             match: str) -> None:
    path = tmp_path / "s.duckdb"
    with open_store(path):
        pass
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("DROP TABLE schema_version")
    con.execute(f"CREATE TABLE schema_version ({ddl})")
    if value is not None:
        con.execute(f"INSERT INTO schema_version VALUES ({value}, 'someone')")
    con.close()
    before = _sha(path)
    for read_only in (False, True):
        with pytest.raises(FailtraceError, match=match):
            open_store(path, read_only=read_only)
    assert _sha(path) == before


def test_missing_foreign_and_corrupt_stores_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FailtraceError, match="no results store"):
        open_store(tmp_path / "missing.duckdb", read_only=True)
    bad = tmp_path / "bad.duckdb"
    bad.write_text("not a database")
    with pytest.raises(FailtraceError, match="cannot open results store"):
        open_store(bad)
    import duckdb

    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE foo (x INTEGER)")
    con.close()
    with pytest.raises(FailtraceError, match="not a failtrace results store"):
        open_store(other)
    for i, ddl in enumerate(("CREATE SEQUENCE s", "CREATE MACRO m(a) AS a + 1", "CREATE TYPE t AS ENUM ('x')")):
        mine = tmp_path / f"mine{i}.duckdb"  # no tables, but not empty: someone's objects, never filled with ours
        con = duckdb.connect(str(mine))
        con.execute(ddl)
        con.close()
        with pytest.raises(FailtraceError, match="holds sequences, macros or types"):
            open_store(mine)
        con = duckdb.connect(str(mine), read_only=True)
        assert con.execute("SELECT count(*) FROM information_schema.tables").fetchone()[0] == 0
        con.close()
    with pytest.raises(FailtraceError, match="is a folder"):
        open_store(tmp_path)


def test_a_writer_that_may_not_create_leaves_an_empty_duckdb_file_empty(tmp_path: Path) -> None:
    """``create=False`` (override, compare, analyse, pairs, serve --review) on another program's empty DuckDB file
    filled it with failtrace's tables and then failed on the missing cases; it is refused as empty, unchanged. A
    writer that may create (collect) still fills it."""
    import duckdb

    blank = tmp_path / "blank.duckdb"
    duckdb.connect(str(blank)).close()
    before = blank.read_bytes()
    with pytest.raises(FailtraceError, match=r"results store .*blank.duckdb is empty; run `failtrace collect` first"):
        open_store(blank, create=False)
    assert blank.read_bytes() == before
    with open_store(blank) as st:
        assert st.con.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1


@pytest.mark.parametrize("read_only", [False, True])
def test_a_closed_store_says_so(tmp_path: Path, read_only: bool) -> None:
    """Before: reading a store after ``with open_store(...)`` ended (or after ``close()``) was an AttributeError on
    None from deep inside a query. Closing twice stays harmless."""
    from failtrace.store.cases import load_cases

    path = tmp_path / "s.duckdb"
    open_store(path).close()
    st = open_store(path, read_only=read_only)
    st.close()
    st.close()
    for call in (lambda: load_cases(st), lambda: st.runs("collect"), lambda: st.done_item_ids("x")):
        with pytest.raises(FailtraceError, match=f"results store {path} is closed; open it again"):
            call()
    assert not hasattr(st.con, "execute") and getattr(st.con, "_repr_html_", None) is None  # probes still answer


def test_pairs_status_rows_and_clean_rate(tmp_path: Path) -> None:
    with open_store(tmp_path / "s.duckdb") as st:
        st.ensure_run(_run())
        st.add_items("r1", "toy", _items(4))
        verdicts = ["pass", "fail", "fail", "unverifiable"]
        for it, v in zip(_items(4), verdicts, strict=True):
            st.write_result("r1", it, _gen([1] * (int(it.id[1]) + 1)), Verdict(v))  # type: ignore[arg-type]
        st.ensure_run(_run("p1", "pairs", "r1"))
        assert st.write_pair("p1", "r1", "i1", "toy", {"status": "clean", "rollouts": 3, "checks": 2,
                                                       "positions_walked": 1, "unverifiable_rollouts": 0,
                                                       "hit_length_limit": False, "delta_logit": 2.5})
        assert not st.write_pair("p1", "r1", "i1", "toy", {"status": "no_target", "rollouts": 0, "checks": 0,
                                                           "positions_walked": 0, "unverifiable_rollouts": 0,
                                                           "hit_length_limit": False})
        with pytest.raises(ValueError, match="pair status"):
            st.write_pair("p1", "r1", "i2", "toy", {"status": "bogus"})
        rows = st.status_rows()
        assert len(rows) == 1
        r = rows[0]
        assert (r.items, r.generated, r.passed, r.failed, r.unverifiable) == (4, 4, 1, 2, 1)
        assert r.pairs == {s: (1 if s == "clean" else 0) for s in PAIR_STATUSES}
        assert r.clean_rate == pytest.approx(0.5)
        assert r.avg_prompt_tokens == pytest.approx(3.0)
        assert r.avg_completion_tokens == pytest.approx((1 + 2 + 3 + 4) / 4)
        assert st.pairs("p1")[0]["delta_logit"] == pytest.approx(2.5)


def test_runs_are_chosen_by_id_or_unique_prefix(tmp_path: Path) -> None:
    """``--run``/``--pair-run`` take an id or a unique prefix of one (the report prints ids cut to 10 characters);
    an ambiguous prefix and an unknown id are one line that names the ids there are."""
    with open_store(tmp_path / "s.duckdb") as st:
        for run_id, bench in (("abc1230000000001", "a"), ("abd4560000000002", "a"), ("ffe0000000000003", "b")):
            st.ensure_run(RunRecord(run_id=run_id, stage="pairs", benchmark=bench, model="m", parent_run_id=None))

        def pick(ids: list[str], bench: str | None = None) -> list[str]:
            return [r.run_id for r in st.select_runs("pairs", ids, bench, "pair run", "x")]

        assert pick(["abc1230000000001"]) == ["abc1230000000001"]
        assert pick(["abc1230000"]) == ["abc1230000000001"]  # the report's 10 characters
        assert pick(["abd", "ffe"]) == ["abd4560000000002", "ffe0000000000003"]
        assert pick(["abd", "abd456"]) == ["abd4560000000002"]  # the same run twice is one run
        assert pick(["abc", "ffe"], "b") == ["ffe0000000000003"]  # then the benchmark filter
    with open_store(tmp_path / "s.duckdb", read_only=True) as st:
        with pytest.raises(FailtraceError, match=r"pair run id prefix 'ab' matches several in .* \(abc1230000000001, "
                                                 r"abd4560000000002\); give more characters"):
            st.select_runs("pairs", ["ab"], None, "pair run", "x")
        with pytest.raises(FailtraceError, match=r"no pair run 'zz' in .*; its pair runs: abc1230000000001, "
                           r"abd4560000000002, ffe0000000000003 \(`failtrace status` lists them\)"):
            st.select_runs("pairs", ["zz"], None, "pair run", "x")
        with pytest.raises(FailtraceError, match=r"no collection run 'abc' in .*; it has no collection runs"):
            st.select_runs("collect", ["abc"], None, "collection run", "x")
        with pytest.raises(FailtraceError, match="no pair run ''"):  # an empty id is not a prefix of everything
            st.select_runs("pairs", [""], None, "pair run", "x")


def test_export_parquet_and_jsonl(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "s.duckdb"
    with open_store(path) as st:
        st.ensure_run(_run())
        st.add_items("r1", "toy", _items(2))
        st.write_result("r1", _items()[0], _gen([7, 8, 2]), Verdict("fail", ["because"]))
    with open_store(path, read_only=True) as st:
        files = st.export(tmp_path / "pq", "parquet")
        assert {f.name for f in files} == {f"{t}.parquet" for t in (*TABLES, "schema_version")}
        st.export(tmp_path / "js", "jsonl")
        with pytest.raises(FailtraceError, match="unknown export format"):
            st.export(tmp_path / "x", "csv")
    table = pq.read_table(tmp_path / "pq" / "generations.parquet").to_pylist()
    assert table[0]["token_ids"] == [7, 8, 2] and table[0]["item_id"] == "i0"
    lines = (tmp_path / "js" / "verdicts.jsonl").read_text().splitlines()
    assert [json.loads(x)["reasons"] for x in lines] == [["because"]]
    items = [json.loads(x) for x in (tmp_path / "js" / "items.jsonl").read_text().splitlines()]
    assert [i["item_id"] for i in items] == ["i0", "i1"] and items[0]["reference"] == {"needle": "x"}


_HOLDER = """
import sys, time
sys.path.insert(0, {src!r})
from failtrace.store import open_store
st = open_store({path!r})
print("holding", flush=True)
time.sleep(60)
"""


def test_locked_store_writer_error_and_reader_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    with open_store(path) as st:
        st.ensure_run(_run())
        st.add_items("r1", "toy", _items(2))
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER.format(src=SRC, path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        with pytest.raises(FailtraceError, match=rf"in use by process {proc.pid} \(python[\d.]*\) \(DuckDB allows one "
                                                  r"writer at a time, and no reader beside it\); wait for it to "
                                                  r"finish or use another --store$"):
            open_store(path)  # the holder named by its PID; DuckDB's link, cut in half before, left out
        with open_store(path, read_only=True) as st:  # a snapshot of the committed state
            assert st.is_snapshot
            assert st.counts()["items"] == 2
    finally:
        proc.kill()
        proc.wait(timeout=30)
    time.sleep(0.1)
    with open_store(path) as st:  # the lock is gone with the process
        assert not st.is_snapshot and st.counts()["runs"] == 1


# ---- bad files: a clear FailtraceError at open or at the first query, and the file left byte for byte ----------


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def full_store(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a store with 800 results: big enough that a truncation cuts data blocks, not only metadata."""
    path = tmp_path_factory.mktemp("full") / "s.duckdb"
    with open_store(path) as st:
        st.ensure_run(_run())
        with st._transaction():  # set-based inserts: executemany of 800 rows is slow
            st.con.execute("INSERT INTO items SELECT 'toy', printf('i%04d', i), '\"' || repeat('p', 200) || i || '\"', "
                           "'{\"n\": ' || i || '}', '{}', md5(i::VARCHAR) FROM range(800) t(i)")
            st.con.execute("INSERT INTO run_items SELECT 'r1', printf('i%04d', i), i FROM range(800) t(i)")
            st.con.execute("INSERT INTO generations SELECT 'r1', printf('i%04d', i), 'toy', "
                           "list_resize([1], 50, 1), 50, repeat('completion ' || i || ' ', 30), range(i, i + 100), "
                           "100, 'eos', 0.1, NULL "
                           "FROM range(800) t(i)")
            st.con.execute("INSERT INTO verdicts SELECT 'r1', printf('i%04d', i), 'fail', '[]', '{}', 0.0 "
                           "FROM range(800) t(i)")
    return path.read_bytes()


def _every_read(st, out: Path) -> None:  # type: ignore[no-untyped-def]
    st.counts()
    st.status_rows()
    st.results("r1")
    st.pairs()
    st.get_item("toy", "i0799")
    st.export(out, "jsonl")  # reads every row of every table


def _bad_files(full: bytes) -> dict[str, bytes]:
    import os
    import random

    rng = random.Random(7)
    flipped = bytearray(full)
    for pos in rng.sample(range(len(full) // 8, len(full)), 2000):  # scattered damage: checksums catch it
        flipped[pos] ^= 0xFF
    header = bytearray(full)
    header[4096:12288] = rng.randbytes(8192)  # DuckDB's two database headers
    return {"empty": b"", "random": os.urandom(50_000), "text": b"id,name\n1,a\n" * 100,
            "sqlite": b"SQLite format 3\x00" + bytes(4080), "trunc-1pct": full[: len(full) // 100],
            "trunc-half": full[: len(full) // 2], "trunc-90pct": full[: len(full) * 9 // 10],
            "flipped": bytes(flipped), "headers": bytes(header)}


@pytest.mark.parametrize("read_only", [True, False])
def test_bad_files_give_clear_errors_and_stay_unchanged(tmp_path: Path, full_store: bytes, read_only: bool) -> None:
    stages = {}
    for name, content in _bad_files(full_store).items():
        path = tmp_path / f"{name}.duckdb"
        path.write_bytes(content)
        before = _sha(path)
        stage = "open"
        with pytest.raises(FailtraceError) as err:
            with open_store(path, read_only=read_only) as st:
                stage = "query"
                _every_read(st, tmp_path / "out")
                if not read_only:
                    stage = "write"
                    st.write_result("r1", _items(1)[0], _gen([1]), Verdict("pass"))
        stages[name] = stage
        msg = str(err.value)
        assert str(path) in msg and "\n" not in msg, (name, msg)
        assert ("not a DuckDB file" in msg or "damaged" in msg), (name, msg)
        assert _sha(path) == before, f"{name}: the file was modified"
        assert not (tmp_path / f"{name}.duckdb.wal").exists()
    # damage surfaces both when opening and later, at the first query that meets it: both are covered
    assert stages["random"] == stages["empty"] == stages["headers"] == "open"
    assert stages["trunc-half"] == "query" and stages["flipped"] in ("query", "write")


def test_the_intact_store_reads_fine(tmp_path: Path, full_store: bytes) -> None:
    path = tmp_path / "ok.duckdb"
    path.write_bytes(full_store)
    with open_store(path, read_only=True) as st:  # the control for the test above: same reads, no error
        _every_read(st, tmp_path / "out")
        assert len(st.results("r1")) == 800


def test_foreign_and_newer_duckdb_files_are_never_written(tmp_path: Path) -> None:
    import duckdb

    foreign = tmp_path / "other.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE foo AS SELECT range AS x FROM range(1000)")
    con.close()
    newer = tmp_path / "newer.duckdb"
    with open_store(newer) as st:
        st.con.execute("UPDATE schema_version SET version = ?", [SCHEMA_VERSION + 1])
    for path, match in ((foreign, "not a failtrace results store"), (newer, "newer failtrace")):
        before = _sha(path)
        for read_only in (False, True):
            with pytest.raises(FailtraceError, match=match):
                open_store(path, read_only=read_only)
        assert _sha(path) == before and not path.with_name(path.name + ".wal").exists()


def test_a_disk_full_while_creating_leaves_no_file_and_never_removes_a_store(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB's header written, then no space for the tables: the new file goes (every later open would call it
    damaged); the same failure on an existing store leaves it alone."""
    from failtrace.store.store import ResultsStore

    def full(self: ResultsStore, probe: bool = False) -> None:
        raise FailtraceError('cannot open results store: (IO Error: Could not write file: No space left on device)')

    existing = tmp_path / "old.duckdb"
    with open_store(existing):
        pass
    before = _sha(existing)
    monkeypatch.setattr(ResultsStore, "_check_schema", full)
    new = tmp_path / "new.duckdb"
    with pytest.raises(FailtraceError, match="the disk is full .*nothing was kept"):
        open_store(new)
    assert not new.exists() and not new.with_name("new.duckdb.wal").exists()
    with pytest.raises(FailtraceError, match="No space left on device"):
        open_store(existing)
    assert _sha(existing) == before


def test_storage_errors_name_their_cause(tmp_path: Path) -> None:
    """DuckDB's errors for a full disk (an export's COPY, a commit) and for text that is not UTF-8 (a Latin-1 byte
    in an argument) are not a damaged store, and the message says which it is."""
    import duckdb

    from failtrace.store.connection import translate

    path = tmp_path / "s.duckdb"
    full = translate(path, duckdb.IOException('Could not write file "x/pairs.parquet.part": No space left on '
                                              'device'), "query")
    assert full is not None and str(full).startswith("the disk is full") and "damaged" not in str(full)
    latin = translate(path, duckdb.InvalidInputException("Python Conversion Failure: cannot encode str as UTF-8, "
                                                         "surrogate '\\udcff'"), "query")
    assert latin is not None and "not UTF-8 text" in str(latin) and "damaged" not in str(latin)
    broken = translate(path, duckdb.IOException("Could not read enough bytes from file"), "query")
    assert broken is not None and "damaged or truncated" in str(broken)
    with open_store(path) as st:  # as a user meets it: an id with a Latin-1 byte, looked up in a real store
        with pytest.raises(FailtraceError, match="not UTF-8 text"):
            st.con.execute("SELECT count(*) FROM cases WHERE case_id = ?", ["\udcff"]).fetchone()


def test_paths_that_cannot_be_stores(tmp_path: Path) -> None:
    with pytest.raises(FailtraceError, match="cannot create the folder"):
        open_store("/proc/nope/runs.duckdb")
    with pytest.raises(FailtraceError, match="not a regular file"):
        open_store("/dev/null")
    with pytest.raises(FailtraceError, match="no results store"):
        open_store(tmp_path / "absent.duckdb", create=False)


# ---- snapshots under a running writer -------------------------------------------------------------------------

_WRITER = """
import sys, time
sys.path.insert(0, {src!r})
from failtrace.benchmarks.base import Item, Verdict
from failtrace.store import GenerationRecord, RunRecord, open_store
with open_store({path!r}) as st:
    st.ensure_run(RunRecord(run_id="r1", stage="collect", benchmark="toy", model="m"))
    st.con.execute("SET checkpoint_threshold = '4KB'")  # nearly every commit checkpoints the log into the file
    t0, i = time.time(), 0
    while time.time() - t0 < 60:
        it = Item(id=f"i{{i:06d}}", benchmark="toy", prompt="p")
        gen = GenerationRecord([i % 7] * 40, [i] * (i % 50 + 1), f"c{{i}}" * 20, "eos")
        st.write_result("r1", it, gen, Verdict("fail", [f"r{{i}}"]))
        if i % 3 == 0:
            st.con.execute("CHECKPOINT")  # and explicit checkpoints between commits
        i += 1
        if i == 5:
            print("ready", flush=True)
"""


def test_snapshots_under_a_committing_writer_are_consistent(tmp_path: Path) -> None:
    """A real writer commits (and checkpoints) continuously; every snapshot opens and holds a prefix of its items.

    Measured with the reader copying without the copy lock (one attempt): this test failed 3 runs of 3, with copies
    that did not open ("Failure while replaying WAL file", the log vanishing mid-copy) and one that opened but whose
    data blocks were torn ("Corrupted DICT_FSST dictionary indices" at the first query). With the lock: 0 of 5.
    """
    path = tmp_path / "w.duckdb"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(src=SRC, path=str(path))], stdout=subprocess.PIPE,
                            text=True)
    sizes = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for _ in range(40):
            with open_store(path, read_only=True) as st:
                assert st.is_snapshot
                gens = st.con.execute("SELECT item_id, token_ids, completion FROM generations "
                                      "ORDER BY item_id").fetchall()
                verdicts = st.con.execute("SELECT item_id, reasons FROM verdicts ORDER BY item_id").fetchall()
            n = len(gens)
            assert [g[0] for g in gens] == [v[0] for v in verdicts] == [f"i{i:06d}" for i in range(n)]
            assert all(g[1] == [i] * (i % 50 + 1) and g[2] == f"c{i}" * 20 for i, g in enumerate(gens))
            assert all(json.loads(v[1]) == [f"r{i}"] for i, v in enumerate(verdicts))
            assert not sizes or n >= sizes[-1]
            sizes.append(n)
        assert proc.poll() is None, "the writer stopped early"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert len(set(sizes)) >= 10, f"the writer hardly committed while readers copied: {sizes}"
