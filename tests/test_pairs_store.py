"""Schema 3: a version-2 store opens, migrates without losing a row or a value, gets the pair cost and continuation
columns (filled from old reason texts), and `failtrace status` counts unbounded failures and decidable clean rates."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from failtrace.benchmarks.base import Item, Verdict
from failtrace.cli import main
from failtrace.store import SCHEMA_VERSION, GenerationRecord, RunRecord, open_store
from failtrace.store.schema import DDL, PAIR_COLUMNS_V3

# the pairs table exactly as schema version 2 created it
V2_PAIRS = """CREATE TABLE pairs (
    pair_run_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, item_id VARCHAR NOT NULL, benchmark VARCHAR NOT NULL,
    status VARCHAR NOT NULL, reason VARCHAR, position INTEGER, completion_offset INTEGER, target_id INTEGER,
    target_text VARCHAR, contrast_id INTEGER, contrast_text VARCHAR, contrast_source VARCHAR, contrast_rank INTEGER,
    contrast_model_rank INTEGER, target_logit DOUBLE, contrast_logit DOUBLE, delta_logit DOUBLE,
    recovered_completion VARCHAR, rollouts INTEGER NOT NULL, checks INTEGER NOT NULL, positions_walked INTEGER NOT NULL,
    unverifiable_rollouts INTEGER NOT NULL, hit_length_limit BOOLEAN NOT NULL, prompt_tokens INTEGER,
    completion_tokens INTEGER, seconds DOUBLE, seconds_prefix DOUBLE, seconds_rollouts DOUBLE, seconds_check DOUBLE,
    created_at TIMESTAMP, PRIMARY KEY (pair_run_id, item_id))"""

# (item, status, hit_length_limit, reason) as version-2 failtrace wrote them
OLD_ROWS = [
    ("i0", "clean", False, "recovered at completion offset 0 (sequence position 9): target 'a' -> contrast 'b' "
                           "(model rank 1), Δℓ = 2.000 [12 rollouts, 340 tokens decoded, 3 stopped early, 2 positions "
                           "decided by the prefix]"),
    ("i1", "unbounded", True, "the completion hit the 8-token limit and passes when continued to 15 tokens (rollout "
                              "budget 24): the failure is an artefact of the budget"),
    ("i2", "no_target", True, "no alternative in the model's top-2 recovers in all 8 completion positions; the "
                              "completion hit the 8-token limit but stops at 15 tokens within the rollout budget 24 "
                              "and still fails [16 rollouts, 100 tokens decoded, 0 stopped early, 0 positions decided "
                              "by the prefix]"),
    ("i3", "unbounded", True, "the completion hit the 8-token limit and no alternative recovered in all 8 completion "
                              "positions"),
    ("i4", "no_target", False, "no alternative in the model's top-2 recovers (written before the cost suffix)"),
]


def _v2_store(path: Path) -> None:
    con = duckdb.connect(str(path))
    for stmt in DDL:
        con.execute(V2_PAIRS if "CREATE TABLE IF NOT EXISTS pairs" in stmt else stmt)
    con.execute("INSERT INTO schema_version VALUES (2, 'failtrace 0.2')")
    con.execute("INSERT INTO runs (run_id, stage, parent_run_id, benchmark, model, settings) VALUES "
                "('c1', 'collect', NULL, 'toy', 'm', '{\"max_new_tokens\": 8}'), "
                "('p1', 'pairs', 'c1', 'toy', 'm', '{\"top_k\": 2}')")
    for i, (item, *_rest) in enumerate(OLD_ROWS + [("i5", None, None, None)]):
        con.execute("INSERT INTO run_items VALUES ('c1', ?, ?)", [item, i])
        con.execute("INSERT INTO items VALUES ('toy', ?, '\"p\"', '{}', '{}', 'h')", [item])
        con.execute("INSERT INTO generations VALUES ('c1', ?, 'toy', [1, 2], 2, 'x', [5, 6], 2, 'eos', 0.1, NULL)",
                    [item])
        con.execute("INSERT INTO verdicts VALUES ('c1', ?, ?, '[]', '{}', 0.0)", [item, "pass" if item == "i5"
                                                                               else "fail"])
    for item, status, hit, reason in OLD_ROWS:
        con.execute("INSERT INTO pairs VALUES ('p1', 'c1', ?, 'toy', ?, ?, 9, 0, 1, 'a', 2, 'b', 'model', 1, 1, 3.0, "
                    "1.0, 2.0, 'ok', 12, 4, 1, 0, ?, 9, 8, 1.5, 0.1, 1.2, 0.2, ?)",
                    [item, status, reason, hit, dt.datetime(2026, 1, 1)])
    con.close()


def _pairs(path: Path) -> list[dict[str, object]]:
    con = duckdb.connect(str(path), read_only=True)
    cur = con.execute("SELECT * FROM pairs ORDER BY item_id")
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    con.close()
    return rows


def test_a_version_2_store_migrates_without_losing_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    _v2_store(path)
    before = _pairs(path)
    with open_store(path, read_only=True) as st:  # read in its old layout: limit counts known, continuations not
        (row,) = st.status_rows()
        assert st.schema_version == 2 and row.limit_hit == 3 and row.continued_pass is None
    old_bytes = path.read_bytes()
    with open_store(path) as st:  # a writer reads the old layout until its first write
        (row,) = st.status_rows()
        assert st.schema_version == 2 and row.limit_hit == 3
    assert path.read_bytes() == old_bytes  # a command that stopped before writing changed nothing
    with open_store(path) as st:
        assert st.ensure_run(RunRecord(run_id="c-new", stage="collect", benchmark="toy", model="m"))
        assert st.schema_version == SCHEMA_VERSION == 4  # the first write migrated it
    after = _pairs(path)
    assert len(after) == len(before) == len(OLD_ROWS)
    for old, new in zip(before, after, strict=True):
        assert {k: new[k] for k in old} == old  # every old value kept
    by_item = {r["item_id"]: r for r in after}
    assert (by_item["i0"]["tokens_decoded"], by_item["i0"]["rollouts_stopped"], by_item["i0"]["positions_decided"]) \
        == (340, 3, 2)
    assert (by_item["i1"]["continued"], by_item["i1"]["continued_tokens"]) == ("pass", 15)
    assert (by_item["i2"]["continued"], by_item["i2"]["continued_tokens"], by_item["i2"]["tokens_decoded"]) == \
        ("fail", 15, 100)
    for item in ("i3", "i4"):  # nothing in the reason: unknown, not zero
        assert by_item[item]["continued"] is None and by_item[item]["tokens_decoded"] is None
    assert [c for c in after[0] if c not in before[0]] == [name for name, _ in PAIR_COLUMNS_V3]
    with open_store(path) as st:  # a new row goes into the migrated table with its new columns
        assert st.write_pair("p1", "c1", "i9", "toy", {"status": "clean", "rollouts": 1, "checks": 1,
                                                       "positions_walked": 1, "unverifiable_rollouts": 0,
                                                       "hit_length_limit": False, "tokens_decoded": 7,
                                                       "rollouts_final": 2, "judge_position": 4,
                                                       "seconds_judge": 0.5})
        new = next(r for r in st.pairs("p1") if r["item_id"] == "i9")
        assert (new["tokens_decoded"], new["rollouts_final"], new["judge_position"]) == (7, 2, 4)
        (row,) = [r for r in st.status_rows() if r.run_id == "c1"]  # c-new, the migrating write's run, has none
        assert (row.failed, row.pairs["unbounded"], row.pairs["clean"]) == (5, 2, 2)
        assert (row.limit_hit, row.continued_pass, row.continued_fail) == (3, 1, 1)
        assert row.clean_rate == pytest.approx(2 / 5) and row.decidable_clean_rate == pytest.approx(2 / 3)


def test_status_shows_unbounded_and_the_decidable_clean_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from failtrace.cli import status as status_cli

    path = tmp_path / "s.duckdb"
    with open_store(path) as st:
        st.ensure_run(RunRecord(run_id="c1", stage="collect", benchmark="toy", model="m", parent_run_id=None,
                                settings={"max_new_tokens": 8}))
        items = [Item(id=f"i{i}", benchmark="toy", prompt="p") for i in range(6)]
        st.add_items("c1", "toy", items)
        for it in items:
            st.write_result("c1", it, GenerationRecord([1], [5, 6], "x", "length", 0.1), Verdict("fail"))
        st.ensure_run(RunRecord(run_id="p1", stage="pairs", benchmark="toy", model="m", parent_run_id="c1",
                                settings={"top_k": 2, "min_delta": 1.0, "max_positions": 4}))
        rows = [("clean", None), ("clean", "fail"), ("unbounded", "pass"), ("unbounded", "length"),
                ("unbounded", None), ("no_target", "fail")]
        for it, (status, cont) in zip(items, rows, strict=True):
            st.write_pair("p1", "c1", it.id, "toy", {"status": status, "rollouts": 1, "checks": 1,
                                                     "positions_walked": 1, "unverifiable_rollouts": 0,
                                                     "hit_length_limit": True, "continued": cont})
    monkeypatch.setattr(status_cli, "_console", lambda stderr=False: Console(width=100))  # a 100-column terminal
    assert main(["status", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 100
    runs, pairs = [[c.strip() for c in x.split("│") if c.strip()] for x in out.splitlines() if x.startswith("│1 ")]
    # the run: # benchmark model items generated passed failed unverif
    assert runs[:8] == ["1", "toy", "m", "6", "6", "0", "6", "0"]
    # its pairs: # failed | clean no_tgt no_ctr weak unbnd unver | limit cont.pass cont.fail | rates
    assert pairs[:2] == ["1", "6/6"]
    assert pairs[2:8] == ["2", "1", "0", "0", "3", "0"]
    assert pairs[8:11] == ["6", "1", "2"]
    assert pairs[11:13] == ["33.3%", "66.7%"]  # 2 clean of 6 failures; of the 3 decidable ones
    flat = " ".join(out.split())
    assert "decidable failures" in flat
    assert ("unbnd: the completion hit the token limit (or the model's context window) and its text does not fix "
            "the verdict, so it is not among the decidable failures") in flat
    assert "collection run #1: c1  budget=8\n" in out and "pair run #1: p1  k=2 Δ>1.0 pos≤4\n" in out
    with open_store(path) as st:  # two more pair runs over the same collection run (other settings)
        for run_id, k, statuses in (("p2", 3, ["clean"] * 6), ("p3", 4, ["no_contrast"])):
            st.ensure_run(RunRecord(run_id=run_id, stage="pairs", benchmark="toy", model="m", parent_run_id="c1",
                                    settings={"top_k": k, "min_delta": 1.0, "max_positions": 4, "helper_model": "big"}))
            for it, status in zip(items, statuses):
                st.write_pair(run_id, "c1", it.id, "toy", {"status": status, "rollouts": 1, "checks": 1,
                                                           "positions_walked": 1, "unverifiable_rollouts": 0,
                                                           "hit_length_limit": True, "continued": None})
    assert main(["status", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 100 and "…" not in out  # nothing cut at 100 columns
    lines = [[c.strip() for c in x.split("│") if c.strip()] for x in out.splitlines() if x.startswith("│")]
    assert [x[0] for x in lines] == ["1", "1a", "1b", "1c"]  # the collection run once, its pair runs labelled
    assert lines[1][1:8] == ["6/6", "2", "1", "0", "0", "3", "0"]
    assert lines[2][1:8] == ["6/6", "6", "0", "0", "0", "0", "0"] and lines[2][-2:] == ["100.0%", "100.0%"]
    assert lines[3][1:8] == ["1/6", "0", "0", "1", "0", "0", "0"]  # a partial run says so
    assert lines[3][-2:] == ["≥0.0%", "≥0.0%"] and lines[1][-2:] == ["33.3%", "66.7%"]  # its rates: lower bounds
    assert "pair run #1a: p1  k=2" in out and "pair run #1c: p3  k=4 Δ>1.0 pos≤4 sibling=big" in out
    with open_store(path) as st:  # a pair run that differs from p1 only in --try-unbounded reads differently
        st.ensure_run(RunRecord(run_id="p4", stage="pairs", benchmark="toy", model="m", parent_run_id="c1",
                                settings={"top_k": 2, "min_delta": 1.0, "max_positions": 4, "try_unbounded": True}))
    assert main(["status", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pair run #1a: p1  k=2 Δ>1.0 pos≤4\n" in out and "pair run #1d: p4  k=2 Δ>1.0 pos≤4 try-unbounded\n" in out


def test_the_pair_settings_line_tells_apart_runs_that_differ_in_any_id_setting():
    """Each setting in a pair run's id reads differently (the sibling's dtype and revision too); a setting that
    was not recorded is left out instead of printing ``k=None``."""
    from failtrace.store.records import describe_pair_settings as line

    base = {"top_k": 3, "min_delta": 1.0, "max_positions": 8, "max_new_tokens": 128, "rollout_tokens": 128,
            "model_info": {"dtype": "float32"}}
    assert line(base) == "k=3 Δ>1.0 pos≤8"  # a rollout budget equal to the collection's is not in the id
    variants = [{"rollout_tokens": 256}, {"try_unbounded": True}, {"helper_model": "big"},
                {"helper_model": "big", "helper_info": {"dtype": "bfloat16"}},
                {"helper_model": "big", "helper_info": {"revision": "v2"}}]
    lines = [line({**base, **v}) for v in variants]
    assert lines == ["k=3 Δ>1.0 pos≤8 rollout≤256", "k=3 Δ>1.0 pos≤8 try-unbounded", "k=3 Δ>1.0 pos≤8 sibling=big",
                     "k=3 Δ>1.0 pos≤8 sibling=big (bfloat16)", "k=3 Δ>1.0 pos≤8 sibling=big@v2"]
    assert line({"top_k": 5}) == "k=5" and line({}) == "(settings not recorded)"


def test_item_ids_are_matched_without_surrounding_spaces() -> None:
    """A data file's padded id (`" q1 "`) was collected as it is, and `pairs --item q1` (read without spaces, as
    --case is) named no failure. The stored id is matched by its text too."""
    from types import SimpleNamespace

    from failtrace.errors import FailtraceError
    from failtrace.failures.pairs import run_failures

    rows = [{"item_id": " q1 "}, {"item_id": "q2"}]
    store = SimpleNamespace(results=lambda run_id, status=None: rows)
    got = run_failures(store, [SimpleNamespace(run_id="r")], items=["q1"])
    assert got == {"r": [{"item_id": " q1 "}]}
    with pytest.raises(FailtraceError, match="--item 'q3' is not a failed item"):
        run_failures(store, [SimpleNamespace(run_id="r")], items=["q3"])
