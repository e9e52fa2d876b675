"""A benchmark built with verdict-changing options (IFEval's loose mode) is recorded with its collection run, and the
pair search re-checks that run with the same checker, not the registry's default one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from failtrace.benchmarks.base import checker_options
from failtrace.benchmarks.ifeval import IFEvalBenchmark
from failtrace.benchmarks.registry import get_benchmark, register_benchmark, resolve_benchmark
from failtrace.cli import main
from failtrace.errors import FailtraceError
from failtrace.failures.collect import collect, collect_run_record
from failtrace.failures.pairs import PairSettings, find_pairs
from failtrace.store import open_store
from failtrace_testkit.toy import OptionedToy, ToyBenchmark, save_toy_model, toy_items

pytestmark = pytest.mark.usefixtures("single_thread")


def test_ifeval_loose_is_an_option_of_its_own_and_strict_keeps_old_run_ids(toy_lm: Any) -> None:
    assert checker_options(IFEvalBenchmark()) == {} and checker_options(IFEvalBenchmark("strict")) == {}
    assert checker_options(IFEvalBenchmark("loose")) == {"mode": "loose"}
    assert checker_options(ToyBenchmark()) == {}  # a benchmark without the hook has none
    plain = collect_run_record(toy_lm, "ifeval", 16, False)
    assert collect_run_record(toy_lm, "ifeval", 16, False, checker={}).run_id == plain.run_id
    loose = collect_run_record(toy_lm, "ifeval", 16, False, checker={"mode": "loose"})
    assert loose.run_id != plain.run_id and loose.settings["checker"] == {"mode": "loose"}
    assert "checker" not in plain.settings
    assert resolve_benchmark("ifeval", None, {"mode": "loose"}).mode == "loose"  # type: ignore[attr-defined]
    assert resolve_benchmark("ifeval", None, None).mode == "strict"  # type: ignore[attr-defined]


def test_pairs_recheck_a_run_with_the_checker_it_was_collected_with(tmp_path: Path, toy_lm: Any) -> None:
    register_benchmark("toy-optioned", lambda mode="contains": OptionedToy(mode=mode, max_new_tokens=40))
    items = toy_items(3, benchmark="toy-optioned", needle="")  # "" is in every text: only mode=never fails it
    with open_store(tmp_path / "s.duckdb") as store:
        summary = collect(store, get_benchmark("toy-optioned", mode="never"), items, toy_lm, progress=False)
        assert summary.failed == 3
        run = store.get_run(summary.run_id)
        assert run is not None and run.settings["checker"] == {"mode": "never"}
        find_pairs(store, PairSettings(top_k=2, max_positions=2), models={toy_lm.name: toy_lm}, progress=False)
        statuses = sorted(p["status"] for p in store.pairs())
    # Re-checked by the default checker, each stored completion would pass ("no longer fails": unverifiable, decided
    # first); with the run's own checker nothing can pass: no alternative recovers (or the answer hit the budget).
    assert "no_target" in statuses and set(statuses) <= {"no_target", "unbounded"} and len(statuses) == 3


def test_a_given_benchmark_object_must_check_as_the_run_did() -> None:
    with pytest.raises(FailtraceError, match="collected with {'mode': 'loose'}"):
        resolve_benchmark("ifeval", {"ifeval": IFEvalBenchmark()}, {"mode": "loose"})
    given = IFEvalBenchmark("loose")
    assert resolve_benchmark("ifeval", {"ifeval": given}, {"mode": "loose"}) is given
    ready = OptionedToy(name="toy-ready", mode="never")  # registered ready-made: it takes no options, it has them
    register_benchmark(ready)
    assert resolve_benchmark("toy-ready", None, {"mode": "never"}) is ready
    with pytest.raises(FailtraceError, match="checks with options {'mode': 'never'}, but the run was collected with "
                                             "none"):
        resolve_benchmark("toy-ready", None, None)


def _ifeval_data(tmp_path: Path, instruction: str = "punctuation:no_comma") -> Path:
    path = tmp_path / "ifeval.jsonl"
    rows = [{"key": 1, "prompt": "Write one word. Follow the instruction.",
             "instruction_id_list": [instruction], "kwargs": [{}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_collect_ifeval_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = save_toy_model(tmp_path / "model")
    data, store = _ifeval_data(tmp_path), tmp_path / "s.duckdb"
    base = ["collect", "--benchmark", "ifeval", "--data", str(data), "--model", str(model), "--store", str(store),
            "--max-new-tokens", "4", "--no-progress"]
    assert main([*base, "--ifeval-mode", "loose"]) == 0
    assert main(base) == 0  # strict: a second run, not the loose one resumed
    capsys.readouterr()
    with open_store(store, read_only=True) as st:
        runs = {r.run_id: r for r in st.runs("collect")}
        assert len(runs) == 2
        modes = {rid: st.results(rid)[0]["details"]["mode"] for rid in runs}
        loose = [rid for rid, r in runs.items() if r.settings.get("checker") == {"mode": "loose"}]
    assert len(loose) == 1 and modes[loose[0]] == "loose" and sorted(modes.values()) == ["loose", "strict"]
    assert main(["status", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"{loose[0]}  budget=4 mode=loose\n" in out and out.count("mode=loose") == 1
    strict = next(rid for rid in runs if rid != loose[0])
    assert f"{strict}  budget=4\n" in out  # the settings that tell the two runs apart, on each run's line

    before = store.read_bytes()
    assert main(["collect", "--benchmark", "math", "--data", str(data), "--model", str(model), "--store", str(store),
                 "--ifeval-mode", "loose"]) == 2
    assert "--ifeval-mode is for --benchmark ifeval, not math" in capsys.readouterr().err
    assert main([*base, "--ifeval-mode", "lax"]) == 2
    err = capsys.readouterr().err
    assert "strict or loose" in err and "Traceback" not in err
    assert store.read_bytes() == before


def test_thinking_on_a_template_without_a_thinking_mode_is_refused(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--thinking on a model whose template never reads enable_thinking made a second run identical to the first."""
    from types import SimpleNamespace

    from failtrace.models.chat import check_thinking, has_thinking_mode

    model = save_toy_model(tmp_path / "model")
    data, store = _ifeval_data(tmp_path), tmp_path / "s.duckdb"
    assert main(["collect", "--benchmark", "ifeval", "--data", str(data), "--model", str(model), "--store",
                 str(store), "--max-new-tokens", "4", "--no-progress", "--thinking"]) == 2
    err = capsys.readouterr().err
    assert "chat template has no thinking mode (it never reads enable_thinking); leave --thinking out" in err
    assert not store.exists()
    qwen3_like = SimpleNamespace(chat_template="{% if enable_thinking is defined and enable_thinking is false %}")
    assert has_thinking_mode(qwen3_like) and not has_thinking_mode(SimpleNamespace(chat_template="{{ messages }}"))
    check_thinking(True, "qwen3", True)  # a template with the switch: accepted
    check_thinking(False, "plain", False)  # off: never refused


def test_status_names_what_tells_collection_runs_apart() -> None:
    from failtrace.store.records import describe_collection_settings as line

    assert line("float32", {"max_new_tokens": 256, "thinking": False}) == "budget=256"
    assert line("bfloat16", {"max_new_tokens": 64, "thinking": True, "checker": {"mode": "loose"}}) == \
        "budget=64 dtype=bfloat16 thinking mode=loose"
    assert line(None, None) == ""


def test_report_and_explorer_tell_a_loose_run_from_a_strict_one(tmp_path: Path) -> None:
    """status named mode=loose, but the report's tables and the explorer's pair-run facet read the same for both."""
    import csv

    from fastapi.testclient import TestClient

    from failtrace.report.build import build_report_from_store
    from failtrace.serve.app import create_app

    model = save_toy_model(tmp_path / "model")
    data, store = _ifeval_data(tmp_path, "change_case:english_capital"), tmp_path / "s.duckdb"  # the toy fails it
    base = ["collect", "--benchmark", "ifeval", "--data", str(data), "--model", str(model), "--store", str(store),
            "--max-new-tokens", "4", "--no-progress"]
    assert main([*base, "--ifeval-mode", "loose"]) == 0 and main(base) == 0
    assert main(["pairs", "--store", str(store), "--top-k", "2", "--max-positions", "1", "--no-progress"]) == 0
    with open_store(store, read_only=True) as st:
        loose = next(r.run_id for r in st.runs("collect") if r.settings.get("checker"))
        build_report_from_store(st, tmp_path / "report")
    for table in ("table1", "pair_status"):
        with (tmp_path / "report" / "tables" / f"{table}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        got = sorted(r["collection_settings"] for r in rows)
        assert got == ["budget=4", "budget=4 mode=loose"], (table, got)
    assert "budget=4 mode=loose" in (tmp_path / "report" / "index.html").read_text()
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        runs = client.get("/api/meta").json()["pair_runs"]
    assert sorted((r["collection_run"] == loose, r["collection"]) for r in runs.values()) == \
        [(False, "budget=4"), (True, "budget=4 mode=loose")]
