"""The pipeline commands end to end on the toy model: collect, pairs, status, export, and their errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from failtrace.cli import main
from failtrace.failures.collect import register_benchmark
from failtrace_testkit.toy import ToyBenchmark, one_thread, save_toy_model

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with one_thread():
        return save_toy_model(tmp_path_factory.mktemp("toy") / "model", seed=0)


@pytest.fixture(scope="module", autouse=True)
def _toy_benchmark() -> None:
    register_benchmark(ToyBenchmark(name="toy-cli", mode="contains", max_new_tokens=16))


def _data(tmp_path: Path) -> Path:
    lines = [json.dumps({"id": f"a{i}", "prompt": f"Say {chr(97 + i)} please", "needle": "-"}) for i in range(5)]
    lines.insert(2, "{this is not json")
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_collect_pairs_status_export(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.duckdb"
    data = _data(tmp_path)
    args = ["collect", "--benchmark", "toy-cli", "--data", str(data), "--model", str(model_dir), "--store",
            str(store), "--max-new-tokens", "12", "--no-progress"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "5 items, 0 already done, 5 generated now" in out
    assert "items.jsonl:3" in err  # the malformed line, named by its line number; the others were processed
    assert f"next: failtrace pairs --store {store}" in err  # the next stage, on stderr (stdout stays the summary)
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "5 already done, 0 generated now (0 passed, 0 failed" in out
    assert f"next: failtrace pairs --store {store}" in err  # the run's failures, though none was made by this call

    assert main(["pairs", "--store", str(store), "--top-k", "3", "--max-positions", "3", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "paired now" in out and "rollouts" in out
    clean = "clean" in out.split("paired now", 1)[1].split(";", 1)[0]
    assert (f"next: failtrace analyse --store {store}" in err) == clean and ("no clean pair this time" in err) != clean

    assert main(["status", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "toy-cli" in out and "clean" in out and "pair run #1: " in out and " k=3 Δ>" in out
    run, pairs = [[c.strip() for c in x.split("│") if c.strip()] for x in out.splitlines() if x.startswith("│1 ")]
    assert run[1] == "toy-cli" and run[3:5] == ["5", "5"]  # items, generated
    assert int(run[5]) + int(run[6]) + int(run[7]) == 5  # passed + failed + unverifiable
    assert pairs[1] == f"{run[6]}/{run[6]}" and sum(int(c) for c in pairs[2:8]) == int(run[6])  # one per failure

    for fmt in ("parquet", "jsonl"):
        assert main(["export", "--store", str(store), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
        assert (tmp_path / fmt / f"generations.{fmt}").exists() and (tmp_path / fmt / f"pairs.{fmt}").exists()
    gens = [json.loads(g) for g in (tmp_path / "jsonl" / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 5 and all(g["token_ids"] for g in gens)
    # the exports are the store's rows: token ids and texts as stored, the Parquet file the same rows as the JSONL
    import duckdb

    con = duckdb.connect(str(store), read_only=True)
    try:
        stored = {r[0]: (list(r[1]), r[2]) for r in con.execute(
            "SELECT item_id, token_ids, completion FROM generations").fetchall()}
        parquet = {r[0]: list(r[1]) for r in con.execute(
            f"SELECT item_id, token_ids FROM read_parquet('{tmp_path / 'parquet' / 'generations.parquet'}')"
        ).fetchall()}
    finally:
        con.close()
    assert {g["item_id"]: (g["token_ids"], g["completion"]) for g in gens} == stored
    assert parquet == {k: v[0] for k, v in stored.items()}


def test_bad_input_is_a_one_line_error(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    store = tmp_path / "s.duckdb"
    cases = [
        (["status", "--store", str(tmp_path / "missing.duckdb")], "no results store"),
        (["pairs", "--store", str(tmp_path / "missing.duckdb")], "no results store"),
        (["collect", "--benchmark", "toy-cli", "--data", str(empty), "--model", str(model_dir), "--store",
          str(store)], "no toy-cli items"),
        (["collect", "--benchmark", "toy-cli", "--data", str(empty), "--limit", "0"], "--limit"),
        (["collect", "--benchmark", "toy-cli", "--data", str(tmp_path / "nope.jsonl")], "not found"),
        (["export", "--store", str(store), "--format", "csv", "--out", str(tmp_path / "x")], "parquet or jsonl"),
        (["pairs", "--store", str(store), "--top-k", "0"], "--top-k"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, (args, err)
    assert not store.exists()  # nothing was created by failed commands


def test_unknown_benchmark_and_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-c", "from failtrace.cli import _entry; _entry()"]
    res = subprocess.run([*cmd, "collect", "--benchmark", "no-such-benchmark", "--data", "x.jsonl"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 2 and res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1
    assert "no-such-benchmark" in res.stderr
    res = subprocess.run([*cmd, "export", "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "--format" in res.stdout


def test_pairs_says_when_a_collection_was_stopped(tmp_path: Path, model_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A collect stopped after its first item left a run that pairs treated as complete ("0 failures ... nothing
    new"); pairs now says how many items it has generated and how to finish it."""
    from failtrace.benchmarks.registry import get_benchmark
    from failtrace.failures.collect import collect
    from failtrace.models.loading import load_model
    from failtrace.store import open_store

    bench = get_benchmark("toy-cli")
    items = bench.load(str(_data(tmp_path))).items
    store = tmp_path / "s.duckdb"

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    with open_store(store) as st, pytest.raises(KeyboardInterrupt):
        collect(st, bench, items, load_model(str(model_dir), progress=False), max_new_tokens=4, progress=False,
                on_item=stop)
    with open_store(store, read_only=True) as st:
        run_id = st.runs("collect")[0].run_id
        assert len(st.results(run_id)) == 1
    assert main(["pairs", "--store", str(store), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"note: collection run {run_id[:8]} has 1 of {len(items)} items generated (it was stopped)" in err
    assert main(["collect", "--benchmark", "toy-cli", "--data", str(_data(tmp_path)), "--model", str(model_dir),
                 "--store", str(store), "--max-new-tokens", "4", "--no-progress"]) == 0
    assert main(["pairs", "--store", str(store), "--top-k", "2", "--max-positions", "2", "--no-progress"]) == 0
    assert "items generated" not in capsys.readouterr().err  # finished: no note


def test_a_run_resumed_with_another_batch_size_says_so(tmp_path: Path, model_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """--batch-size is not in the run's id (it should not change what greedy decoding writes), but padded batches of
    another size can differ in a logit's last bits: a resumed run records and names the change."""
    from failtrace.store import open_store

    store, data = tmp_path / "s.duckdb", _data(tmp_path)
    base = ["collect", "--benchmark", "toy-cli", "--data", str(data), "--model", str(model_dir), "--store",
            str(store), "--max-new-tokens", "4", "--no-progress"]
    assert main([*base, "--limit", "2"]) == 0
    capsys.readouterr()
    assert main([*base, "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    assert "3 generated now" in out
    assert "began with --batch-size 1; the 3 items generated now were decoded 2 at a time" in err
    with open_store(store, read_only=True) as st:
        [run] = st.runs("collect")
        assert run.settings["batch_size"] == 1 and run.settings["resumed_with"] == [{"batch_size": 2, "items": 3}]
    assert main([*base, "--batch-size", "2"]) == 0  # nothing left: nothing to say
    assert "began with --batch-size" not in capsys.readouterr().err


def test_collect_says_which_prompts_fill_the_context_window(tmp_path: Path, model_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A prompt that fills the window is stored as unverifiable without generating; the summary says so (it counted
    the item as generated), and a later call's note says so for the run."""
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"id": "short", "prompt": "Say a", "needle": "-"}) + "\n"
                    + json.dumps({"id": "long", "prompt": "a" * 5000, "needle": "-"}) + "\n")  # toy window: 4,096
    args = ["collect", "--benchmark", "toy-cli", "--data", str(data), "--model", str(model_dir), "--store",
            str(tmp_path / "s.duckdb"), "--max-new-tokens", "4", "--no-progress"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "0 already done, 1 generated now and 1 not generated, the prompt filling the model's context window (" in out
    assert "1 unverifiable" in out and "context window" not in err  # said once
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "2 already done, 0 generated now (" in out
    assert "note: 1 item(s) of the run have a prompt that fills the model's context window: stored as unverifiable, " \
           "not generated" in err
    assert main(["status", "--store", str(tmp_path / "s.duckdb")]) == 0
    out = capsys.readouterr().out
    row = [cell.strip() for cell in next(line for line in out.splitlines() if "toy-cli" in line).split("│")]
    assert row[4:6] == ["2", "1"] and row[-2] == "4.0", out  # 2 items, 1 generated (of 4 tokens): not the other
    said = "collection run #1: 1 item not generated, the prompt filling the model's context window (unverifiable)"
    assert said in out
