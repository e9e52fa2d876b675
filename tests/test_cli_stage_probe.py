"""Regressions from a probe of the pipeline stages (collect, pairs, analyse) as a hostile user, 6 Dec 2026: a limit
that dropped named items, a benchmark the store never ran read as "run collect first", a rollout budget past the
context window, passes judged on cut answers without a word, and a Ctrl-C that promised a store that was never made.
Each refusal: exit code 2, one ``error:`` line, the store's bytes unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from refusals import copy_store as _copy
from refusals import one_error_line as _one_error_line
from refusals import refusal_store
from serve_store import sha256

from failtrace.cli import main

pytestmark = pytest.mark.usefixtures("cli_env")  # crash logs into the test folder, one thread (conftest)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return refusal_store(tmp_path_factory.mktemp("stage-probe"))


def _collect_cut(toy: dict[str, Any], tmp_path: Path, benchmark: str, records: list[dict[str, Any]], budget: int,
                 capsys: pytest.CaptureFixture[str]) -> tuple[Path, str, list[dict[str, Any]]]:
    """collect ``records`` with the toy model at ``budget`` tokens: (store, stderr, the run's stored rows)."""
    from failtrace.store import open_store

    data = tmp_path / f"{benchmark}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    store = tmp_path / f"{benchmark}-{budget}.duckdb"
    assert main(["collect", "-b", benchmark, "-d", str(data), "-m", str(toy["model_dir"]), "--no-progress",
                 "--max-new-tokens", str(budget), "-s", str(store)]) == 0
    err = capsys.readouterr().err
    with open_store(store, read_only=True) as st:
        return store, err, st.results(st.runs("collect")[0].run_id)


def _cut(rows: list[dict[str, Any]], status: str) -> tuple[int, int]:
    """(rows of ``status`` cut at the budget, rows of ``status``)."""
    return (sum(r["status"] == status and r["finish_reason"] == "length" for r in rows),
            sum(r["status"] == status for r in rows))


def test_collect_says_when_passes_stopped_at_the_budget(toy: dict[str, Any], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A 3-token answer has no comma, so IFEval's no-comma check passes what was cut: collect says how many passes
    the checker judged cut (counted from the store), which it did not before."""
    records = [{"key": i, "prompt": f"Describe item {i}. Do not use any commas.",
                "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]} for i in range(3)]
    _, err, rows = _collect_cut(toy, tmp_path, "ifeval", records, 3, capsys)
    cut, passed = _cut(rows, "pass")
    assert cut > 0
    assert f"note: {cut} of the run's {passed} passes stopped at the 3-token budget" in err


def test_collect_says_when_failures_stopped_at_the_budget(toy: dict[str, Any], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """At a tiny budget the toy model's MATH answers are cut before any \\boxed{}: they fail at the limit, and the
    pair search could only call them unbounded. collect says how many, counted here from the store itself; pairs
    then points at more tokens, not at a larger top-k."""
    from failtrace.store import open_store

    records = [{"problem": f"What is {i}+1?", "answer": str(i + 1)} for i in range(3)]
    store, err, rows = _collect_cut(toy, tmp_path, "math", records, 3, capsys)
    cut, failed = _cut(rows, "fail")
    assert cut > 0
    assert f"note: {cut} of the run's {failed} failures stopped at the 3-token budget" in err
    assert "--rollout-tokens" in err
    assert main(["pairs", "-s", str(store), "--top-k", "2", "--max-positions", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    with open_store(store, read_only=True) as st:
        statuses = [p["status"] for p in st.pairs()]
    assert statuses and set(statuses) == {"unbounded"}  # every failure was cut: more top-k cannot help, more tokens can
    assert "every failure paired now is unbounded (cut at the token budget or the model's context window" in err
    assert "--top-k" not in err and "`failtrace pairs --rollout-tokens N` continues it further" in err
    assert main(["pairs", "-s", str(store), "--top-k", "2", "--max-positions", "2", "--rollout-tokens", "4",
                 "--no-progress"]) == 0  # continued one token: still cut, so the hint asks for more than that
    err = capsys.readouterr().err
    assert "every failure paired now is unbounded" in err and "a --rollout-tokens above 4 continues it further" in err
    _, err, rows = _collect_cut(toy, tmp_path, "math", records, 64, capsys)
    assert ("stopped at the 64-token budget" in err) == (_cut(rows, "fail")[0] > 0)  # (still shown, with its count)


@pytest.mark.parametrize("command", ["pairs", "analyse"])
@pytest.mark.parametrize("name", ["nosuch", "math"])
def test_a_benchmark_the_store_never_ran_is_named_as_such(toy: dict[str, Any], tmp_path: Path, command: str,
                                                         name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Was "no collection runs for nosuch ...; run `failtrace collect` first" (or `pairs` first, which would fail the
    same way): a typo or a benchmark never collected now names the benchmarks the store has."""
    store = _copy(toy, tmp_path)
    line = _one_error_line(main([command, "--store", str(store), "--benchmark", name, "--no-progress"]), capsys)
    assert line == f"error: no runs for benchmark {name!r} in {store}; benchmarks there: toy"
    assert sha256(store) == toy["sha"]


@pytest.mark.parametrize("command", [["collect", "-b", "toy", "-d", "{tmp}/none.jsonl"], ["pairs"]])
def test_limit_below_the_named_items_is_refused(toy: dict[str, Any], tmp_path: Path, command: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`--item A --item B --limit 1` silently did one of the two."""
    store = _copy(toy, tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command]
    line = _one_error_line(main([*argv, "--store", str(store), "--item", "q000", "--item", "q001", "--limit", "1",
                                 "--no-progress"]), capsys)
    assert line == "error: --limit 1 would drop some of the 2 --item ids; give fewer --item ids or leave --limit out"
    assert sha256(store) == toy["sha"]


def test_rollout_budget_beyond_the_context_window_is_refused(toy: dict[str, Any], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """collect refused --max-new-tokens beyond the window, but pairs took --rollout-tokens 100000 and ran on."""
    from failtrace.benchmarks.registry import register_benchmark
    from failtrace.models.limits import context_length
    from failtrace.models.loading import load_model
    from failtrace_testkit.toy import ToyBenchmark

    register_benchmark(ToyBenchmark(mode="prefix", max_new_tokens=16))  # the store's benchmark, as the CLI finds it
    window = context_length(load_model(str(toy["model_dir"]), progress=False).model)
    assert window is not None
    store = _copy(toy, tmp_path)
    line = _one_error_line(main(["pairs", "--store", str(store), "--rollout-tokens", str(window + 1),
                                 "--no-progress"]), capsys)
    assert line.startswith(f"error: --rollout-tokens {window + 1} is more than ") and \
        line.endswith(f"context window ({window} tokens); give {window} or less (the prompt shares the window)")
    assert sha256(store) == toy["sha"]


def test_ctrl_c_before_a_new_store_exists_promises_nothing(toy: dict[str, Any], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while collect still loads the model, before its new store exists: "everything committed to the store
    so far is kept" was said of a store that was never created."""
    import failtrace.models.loading as loading

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "load_model", interrupted)
    data = tmp_path / "items.jsonl"
    data.write_text('{"problem": "What is 1+1?", "answer": "2"}\n')
    store = tmp_path / "new.duckdb"
    line = _one_error_line(main(["collect", "-b", "math", "-d", str(data), "-m", str(toy["model_dir"]), "--store",
                                 str(store), "--no-progress"]), capsys, expected_code=130)
    assert line == f"error: interrupted before anything was stored ({store} was not created); rerun the command"
    assert not store.exists()
    line = _one_error_line(main(["collect", "-b", "demo", "-d", "builtin", "-m", str(toy["model_dir"]), "--store",
                                 str(store), "--no-progress"]), capsys, expected_code=130)
    assert line.startswith("error: interrupted before anything was stored")  # "demo" names the benchmark here
    # with --workers the store was opened before Ray started: Ctrl-C then left an empty store and said it kept it
    import failtrace.scale as scale

    monkeypatch.setattr(scale, "collect_on_ray", interrupted)
    line = _one_error_line(main(["collect", "-b", "math", "-d", str(data), "-m", str(toy["model_dir"]), "--store",
                                 str(store), "--workers", "1", "--no-progress"]), capsys, expected_code=130)
    assert line == f"error: interrupted before anything was stored ({store} was not created); rerun the command"
    assert not store.exists() and not store.with_name("new.duckdb.lock").exists()


def test_a_resumed_pair_run_points_at_its_earlier_clean_pairs(toy: dict[str, Any], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A pairs call stopped after it had found its clean pairs: the rerun paired the rest, found none, and said
    "no clean pair this time; a larger --top-k ... may find some", as if the run had none."""
    from failtrace.benchmarks.registry import register_benchmark
    from failtrace.store import open_store
    from failtrace_testkit.toy import ToyBenchmark

    register_benchmark(ToyBenchmark(mode="prefix", max_new_tokens=16))  # the store's benchmark, as the CLI finds it
    store = _copy(toy, tmp_path)
    with open_store(store) as st:
        statuses = dict(st.con.execute("SELECT status, count(*) FROM pairs GROUP BY status").fetchall())
        st.con.execute("DELETE FROM pairs WHERE item_id = (SELECT min(item_id) FROM pairs WHERE status <> 'clean')")
    assert statuses.get("clean") and len(statuses) > 1, statuses  # the toy store has clean pairs and others
    assert main(["pairs", "--store", str(store), "--top-k", "3", "--min-delta", "0", "--max-positions", "8",
                 "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "1 paired now" in out and "0 clean" not in out, out  # the same pair run, resumed
    n = statuses["clean"]
    assert f"next: failtrace analyse --store {store} (explains the clean pairs; {n} clean pair{'s' * (n > 1)} found " \
           "by earlier calls)" in err and "no clean pair this time" not in err, err


@pytest.mark.parametrize(("edit", "where"), [
    ("UPDATE cases SET masking = '[1, 2]' WHERE case_id = '{c}'", "case {c}"),
    ("UPDATE case_methods SET segment_relevance = '[1]' WHERE case_id = '{c}' AND method = 'attnlrp'",
     "case_methods row 'attnlrp' of case {c}"),
    ("UPDATE case_methods SET input_relevance = input_relevance[1:3] WHERE case_id = '{c}'", "case {c}"),
    ("UPDATE cases SET category = 'BOGUS' WHERE case_id = '{c}'", "case {c}"),
])
@pytest.mark.parametrize("command", [["show", "--case", "{c}"], ["report", "-o", "{d}/rep"]])
def test_a_value_of_the_wrong_shape_is_a_damaged_store(toy: dict[str, Any], tmp_path: Path, edit: str, where: str,
                                                       command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """JSON that parses but is not what failtrace wrote (edited by hand): show and report crashed (exit 70) with a
    TypeError, AttributeError or ValueError; an unknown category was shown as one. Now one line names the row."""
    from failtrace.store import open_store

    store = _copy(toy, tmp_path)
    with open_store(store) as st:
        case = st.con.execute("SELECT min(case_id) FROM case_graphs").fetchone()[0]  # a case with every table
        st.con.execute(edit.replace("{c}", case))
    before = sha256(store)
    argv = [a.replace("{c}", case).replace("{d}", str(tmp_path)) for a in command]
    line = _one_error_line(main([*argv, "--store", str(store)]), capsys)
    assert line.startswith(f"error: results store {store} holds a value of the wrong shape in "
                           f"{where.replace('{c}', case)} ("), line
    assert "it is damaged or was edited by hand" in line and sha256(store) == before


def test_a_cut_graph_is_a_damaged_store_for_the_report(toy: dict[str, Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """show reads no graph; the report draws it: a node list cut by hand was a ValueError from zip (exit 70)."""
    test_a_value_of_the_wrong_shape_is_a_damaged_store(
        toy, tmp_path, "UPDATE case_graphs SET node_token = node_token[1:2] WHERE case_id = '{c}'", "case {c}",
        ["report", "-o", "{d}/rep"], capsys)
