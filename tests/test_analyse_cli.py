"""``failtrace analyse | override | demo`` on the toy model: outputs match the store, bad input gives one
``error:`` line with exit code 2 and leaves the store as it was."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from failtrace.cli import main
from failtrace.store import open_store
from failtrace.store.cases import load_cases
from failtrace_testkit.toy import ToyBenchmark, one_thread, toy_items

from cases_toy import BUDGET, PAIR_SETTINGS, _needles, build_toy_store

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cli")
    with one_thread():
        return build_toy_store(root / "s.duckdb", root / "model", n_items=4)


def _counts(store: Path) -> dict[str, int]:
    with open_store(store, read_only=True) as st:
        return st.counts()


def test_analyse_then_rerun_then_override(toy: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    store = str(toy["store"])
    n = len(toy["clean"])
    assert n >= 1
    args = ["analyse", "--store", store, "--methods", "attnlrp,random", "--max-k", "3", "--no-progress"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert f"{n} clean pair{'s' if n != 1 else ''}, 0 already analysed, {n} analysed now" in out
    assert f"next: failtrace show --store {store} lists the cases" in err
    assert main(args) == 0
    assert f"{n} clean pair{'s' if n != 1 else ''}, {n} already analysed, 0 analysed now" in capsys.readouterr().out
    with open_store(toy["store"], read_only=True) as st:
        cases = load_cases(st)
    assert len(cases) == n and all(set(c.methods) == {"attnlrp", "random"} for c in cases)
    target = cases[0]
    other = "NC-IA+AG" if target.category != "NC-IA+AG" else "M-IA"
    assert main(["override", "--store", store, "--case", target.case_id[:10], "--category", other, "--reason",
                 "the flip needs a token the model never reads"]) == 0
    assert target.case_id in capsys.readouterr().out
    with open_store(toy["store"], read_only=True) as st:
        back = {c.case_id: c for c in load_cases(st)}[target.case_id]
    assert back.effective_category == other and back.category == target.category
    assert back.override["reason"] == "the flip needs a token the model never reads"
    # back to the computed category removes the override (as --clear does), and says so
    assert main(["override", "--store", store, "--case", target.case_id, "--category", target.category,
                 "--reason", "computed after all"]) == 0
    assert (f"case {target.case_id}: back to its computed category {target.category}; the override was removed"
            in capsys.readouterr().out)
    with open_store(toy["store"], read_only=True) as st:
        back = {c.case_id: c for c in load_cases(st)}[target.case_id]
    assert back.override is None and back.effective_category == target.category
    assert main(["override", "--store", store, "--case", target.case_id, "--category", other, "--reason",
                 "the flip needs a token the model never reads"]) == 0  # as it was, for the tests after this one
    capsys.readouterr()


def test_mask_template_keeps_template_text_maskable(toy: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """By default the chat template's text is never masked; --mask-template is the older rule: a separate analysis
    (another case id) whose top-k may pick it. Both orders recomputed by hand from the stored relevance and spans."""
    import shutil

    store = tmp_path / "s.duckdb"
    shutil.copy(toy["store"], store)
    picked = {}
    for extra in ([], ["--mask-template"]):
        assert main(["analyse", "--store", str(store), "--methods", "attnlrp", "--max-k", "10", "--no-progress",
                     *extra]) == 0
        capsys.readouterr()
        with open_store(store, read_only=True) as st:
            cases = load_cases(st)
        skip = not extra
        assert cases and all(c.masking.skip_template is skip for c in cases)
        for c in cases:
            rel = c.methods["attnlrp"].input_relevance
            template = {i for s, e in c.segments.get("special", []) for i in range(s, e)}
            free = [i for i in range(len(rel)) if rel[i] > 0 and not c.special_mask[i]
                    and not (skip and i in template)]
            order = sorted(free, key=lambda i: (-rel[i], i))[:10]
            assert len(c.methods["attnlrp"].flip_curve) == len(order) + 1
            picked.setdefault(c.item_id, {})[skip] = set(order) & template
    assert all(not p[True] for p in picked.values())  # the default never picks template text
    assert any(p[False] for p in picked.values())  # the older rule does, on these cases


def test_rerunning_an_older_analysis_makes_it_current_again(toy: dict[str, Any], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A smaller analysis with other settings replaced a whole one in every view, and running the whole one's settings
    again ("already analysed") did not bring it back. Now each switch is said, and the rerun switches back."""
    import shutil

    from failtrace.serve.queries import base_sql
    from failtrace.store.cases import current_analyses

    store = tmp_path / "s.duckdb"
    shutil.copy(toy["store"], store)
    n = len(toy["clean"])
    whole = ["analyse", "--store", str(store), "--methods", "attnlrp", "--max-k", "3", "--no-progress"]
    part = ["analyse", "--store", str(store), "--methods", "attnlrp,random", "--max-k", "2", "--limit", "1",
            "--no-progress"]

    def current() -> tuple[str, int, int]:
        with open_store(store, read_only=True) as st:
            analysis = current_analyses(st)[toy["pair_run_id"]]
            shown = len(load_cases(st))
            served = st.con.execute(base_sql(True) + " SELECT count(case_id) FROM rows").fetchone()[0]
        return analysis, shown, served

    assert main(whole) == 0
    capsys.readouterr()
    first, shown, served = current()
    assert shown == served == n
    assert main(part) == 0
    err = capsys.readouterr().err
    second, shown, served = current()
    assert second != first and shown == served == 1
    assert (f"now use analysis {second[:8]} (1 of {n} clean pairs) instead of {first[:8]} ({n} cases, kept in the "
            "store;") in err  # n >= 2 here
    # show --item of a clean pair the partial analysis left out names the older analysis's case of it
    with open_store(store, read_only=True) as st:
        shown_items = {c.item_id for c in load_cases(st)}
        older = {c.item_id: c.case_id for c in load_cases(st, analysis_id=first)}
    left = next(i for i in older if i not in shown_items)
    assert main(["show", "--store", str(store), "--item", left]) == 2
    assert (f"; an older analysis has one, case {older[left][:12]} (show --case takes it once failtrace analyse "
            "with that analysis's settings makes it current again)") in capsys.readouterr().err
    assert main(whole) == 0
    out, err = capsys.readouterr()
    assert f"{n} already analysed, 0 analysed now" in out
    assert current() == (first, n, n)
    assert f"now use analysis {first[:8]} ({n} of {n} clean pairs) instead of {second[:8]} (1 case, kept" in err
    assert main(whole) == 0
    assert "now use analysis" not in capsys.readouterr().err  # already the current one: nothing switches

    # resuming an older analysis that has work left: its first new case makes it current again
    assert main([*whole[:-3], "--max-k", "4", "--limit", "1", "--no-progress"]) == 0
    third = current()[0]
    assert third not in (first, second) and current()[1] == 1
    assert main(part[:-3] + ["--no-progress"]) == 0  # the second analysis's settings, now without --limit
    out, err = capsys.readouterr()
    assert f"{n - 1} analysed now" in out and current() == (second, n, n)
    assert f"now use analysis {second[:8]} ({n} of {n} clean pairs) instead of {third[:8]} (1 case" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "bogus"], "unknown method 'bogus'"),
    (["--methods", "ig,random"], "must include attnlrp"),
    (["--max-k", "0"], "Invalid value for '--max-k': got 0; give a whole number of at least 1"),
    (["--max-k", "100000"], "--max-k must be at most 1000 (each k costs a forward pass per method), got 100000"),
    (["--ig-steps", "0"], "Invalid value for '--ig-steps': got 0; give a whole number of at least 1"),
    (["--methods", "attnlrp,ig", "--ig-steps", "99999999999999999999"], "--ig-steps must be at most 10000"),
    (["--mask-rule", "replace"], "needs --mask-token"),
    (["--mask-rule", "blur"], "unknown mask rule"),
    (["--limit", "0"], "'--limit' / '-n': got 0; give a whole number of at least 1"),
    (["--pair-run", "nope"], "no pair run 'nope'"),
])
def test_bad_analyse_input_is_one_line_and_harmless(toy: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                    args: list[str], message: str) -> None:
    before = _counts(toy["store"])
    assert main(["analyse", "--store", str(toy["store"]), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert _counts(toy["store"]) == before


def test_bad_override_and_missing_store(toy: dict[str, Any], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = _counts(toy["store"])
    for args, message in [
        (["--case", "x", "--category", "WHATEVER", "--reason", "r"], "unknown --category"),
        (["--case", "zzzz", "--category", "M-IA", "--reason", "r"], "no case 'zzzz'"),
        (["--case", "x", "--category", "M-IA", "--reason", " "], "needs a --reason"),
        # a reason is printed by show and override: an escape sequence would clear or recolour the reader's terminal
        (["--case", "x", "--category", "M-IA", "--reason", "ok\x1b[2J"], "--reason holds the control character U+001B"),
        (["--case", "x", "--category", "M-IA", "--reason", "ok\x9b2J"], "--reason holds the control character U+009B"),
        (["--case", "x", "--category", "M-IA", "--reason", "y" * 2001], "2,001 characters long; at most 2,000"),
    ]:
        assert main(["override", "--store", str(toy["store"]), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert _counts(toy["store"]) == before
    missing = tmp_path / "none.duckdb"
    assert main(["analyse", "--store", str(missing)]) == 2
    assert "no results store" in capsys.readouterr().err and not missing.exists()
    empty = tmp_path / "empty.duckdb"
    with open_store(empty):
        pass
    assert main(["analyse", "--store", str(empty)]) == 2
    assert "no pair runs" in capsys.readouterr().err and _counts(empty)["runs"] == 0


def test_demo_runs_every_stage_into_out(tmp_path: Path, toy: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import failtrace.cli.demo as demo

    items = toy_items(3)
    _needles(toy["lm"], items)  # items whose failures give clean pairs on the toy model (see cases_toy)
    source = (ToyBenchmark(mode="prefix", max_new_tokens=BUDGET), items,
              {"max_new_tokens": BUDGET, "top_k": PAIR_SETTINGS.top_k, "min_delta": 0.0,
               "max_positions": PAIR_SETTINGS.max_positions})
    monkeypatch.setattr(demo, "demo_source", lambda: source)
    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), "--model", str(toy["model_dir"]), "--methods", "attnlrp,random",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    with open_store(out / "runs.duckdb", read_only=True) as st:
        (row,) = st.status_rows()
        cases = load_cases(st)
    clean = row.pairs["clean"]
    assert clean >= 1 and len(cases) == clean
    assert f"{row.failed} failures, {clean} clean -> {clean} cases explained" in text
    (report_line,) = [line for line in text.splitlines() if line.startswith("report: ")]
    assert report_line == f"report: {out / 'report' / 'index.html'}"  # the report is part of the package
    assert (out / "report" / "index.html").stat().st_size > 1000
    (show_line,) = [line for line in text.splitlines() if line.startswith("one case in the terminal: ")]
    command = shlex.split(show_line.split(": ", 1)[1])  # the printed command works as printed
    assert command[:2] == ["failtrace", "show"] and main(command[1:]) == 0
    assert f"case {cases[0].case_id}" in capsys.readouterr().out
    assert main(["demo", "--out", str(out), "--model", str(toy["model_dir"]), "--methods", "attnlrp,random",
                 "--no-progress"]) == 0  # resumes: nothing is done twice
    with open_store(out / "runs.duckdb", read_only=True) as st:
        assert len(load_cases(st, latest=False)) == clean and st.counts()["generations"] == 3


def test_help_lists_the_options() -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    for cmd, option in (("analyse", "--max-k"), ("override", "--reason"), ("demo", "--out")):
        res = subprocess.run([sys.executable, "-m", "failtrace.cli", cmd, "--help"], capture_output=True, text=True,
                             env=env, timeout=300)
        assert res.returncode == 0 and option in res.stdout
