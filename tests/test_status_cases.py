"""`failtrace status`'s analysed-cases table against the cases read independently (load_cases, each case's own
category, override, pattern, Δℓ and AttnLRP flip curve), before and after a person's override; a store with pairs but
no analysis says so."""

from __future__ import annotations

import html
import shutil
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_store import analysed_toy_store  # noqa: E402

from failtrace.cases.record import CATEGORIES, PATTERNS  # noqa: E402
from failtrace.cli import main  # noqa: E402
from failtrace.store import open_store  # noqa: E402
from failtrace.store.cases import load_cases  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return analysed_toy_store(tmp_path_factory.mktemp("status"))


def _status(path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    from rich.console import Console

    from failtrace.cli import status as status_cli

    monkeypatch.setattr(status_cli, "_console", lambda stderr=False: Console(width=100))
    assert main(["status", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 100
    return out


def _expected(path: Path) -> list[str]:
    """The table's row for the (only) pair run, computed from the cases themselves."""
    with open_store(path, read_only=True) as st:
        cases = load_cases(st)
    cats = Counter(c.effective_category for c in cases)
    pats = Counter(c.pattern for c in cases)
    ks = [c.methods["attnlrp"].flip_k for c in cases]
    found = [k for k in ks if k is not None]
    mean = sum(c.delta_logit for c in cases) / len(cases)
    return ["1", str(len(cases)), *(str(cats[c]) for c in CATEGORIES), *(str(pats[p]) for p in PATTERNS),
            f"{mean:+.2f}", f"{len(found)}/{len(cases)}", f"{statistics.median(found):.1f}" if found else "-"]


def _cases_row(out: str) -> list[str]:
    rows = [[c.strip() for c in x.split("│") if c.strip()] for x in out.splitlines() if x.startswith("│1 ")]
    assert len(rows) == 3  # runs, pairs, cases
    return rows[2]


def test_cases_table_matches_the_cases(toy: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "runs.duckdb"
    shutil.copy(toy["store"], path)
    out = _status(path, capsys, monkeypatch)
    assert "analysed cases" in out and _cases_row(out) == _expected(path)
    with open_store(path, read_only=True) as st:
        case = load_cases(st)[0]
    other = next(c for c in CATEGORIES if c != case.category)
    assert main(["override", "--store", str(path), "--case", case.case_id, "--category", other,
                 "--reason", "checked by hand"]) == 0
    capsys.readouterr()
    row = _cases_row(_status(path, capsys, monkeypatch))
    assert row == _expected(path)
    with open_store(path, read_only=True) as st:
        computed = Counter(c.category for c in load_cases(st))
    assert row[2:5] != [str(computed[c]) for c in CATEGORIES]  # the override is counted, not the computed category


def test_pairs_without_analysis_say_so(toy: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "runs.duckdb"
    shutil.copy(toy["store"], path)
    with open_store(path) as st:
        for table in ("case_methods", "case_graphs", "overrides", "cases"):
            st.con.execute(f"DELETE FROM {table}")
    out = _status(path, capsys, monkeypatch)
    assert "no analysed cases yet" in out and "analysed cases (" not in out


def test_cases_without_a_category_are_named_not_dropped(toy: dict[str, Any], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "runs.duckdb"
    shutil.copy(toy["store"], path)
    with open_store(path) as st:
        cid = st.con.execute("SELECT min(case_id) FROM cases").fetchone()[0]
        st.con.execute("UPDATE cases SET category = NULL WHERE case_id = ?", [cid])
    out = _status(path, capsys, monkeypatch)
    row = _cases_row(out)
    assert sum(map(int, row[2:2 + len(CATEGORIES)])) == int(row[1]) - 1
    assert "#1: 1 without a category, 0 without a pattern" in " ".join(out.split())


def test_the_older_rule_keeps_the_older_ids() -> None:
    """--mask-template analyses hash the settings as before the option existed, so a store analysed then is not
    analysed again; the default rule is a different analysis."""
    from dataclasses import asdict

    from failtrace.cases.settings import CaseSettings

    old = CaseSettings(skip_template=False).identity()
    assert "skip_template" not in old
    assert old == {k: (list(v) if k == "methods" else v) for k, v in asdict(CaseSettings()).items()
                   if k != "skip_template"}
    assert CaseSettings().identity()["skip_template"] is True


def test_a_partial_newest_analysis_is_named(toy: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A newer analysis with other settings that covers only some clean pairs (--limit, or stopped) is what every
    view shows; status says it is short of the clean pairs, and says nothing while the analysis is whole."""
    path = tmp_path / "runs.duckdb"
    shutil.copy(toy["store"], path)
    assert "newest analysis has" not in _status(path, capsys, monkeypatch)
    with open_store(path, read_only=True) as st:
        clean = st.con.execute("SELECT count(*) FROM pairs WHERE status = 'clean'").fetchone()[0]
    assert clean > 1
    assert main(["analyse", "--store", str(path), "--methods", "attnlrp", "--max-k", "3", "--limit", "1",
                 "--no-progress"]) == 0
    capsys.readouterr()
    raw = _status(path, capsys, monkeypatch)
    assert _cases_row(raw)[1] == "1"  # the table counts the newest analysis alone
    out = " ".join(raw.split())
    assert f"pair run #1: its newest analysis has 1 of {clean} clean pairs" in out


def test_every_view_words_the_pair_statuses_alike(toy: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """failtrace status's legend, the report's "why the other failures are not clean" and the explorer's /api/meta
    define each pair status in the one wording of store.schema.PAIR_STATUS_TEXT (they were written three times and
    had drifted: "Δℓ ≤ the minimum" / "Δℓ ≤ --min-delta", "not searched" / "not paired yet")."""
    import re

    from fastapi.testclient import TestClient

    from failtrace.serve.app import create_app
    from failtrace.store.schema import NOT_SEARCHED, PAIR_STATUS_TEXT, PAIR_STATUSES

    assert set(PAIR_STATUS_TEXT) == {*PAIR_STATUSES, NOT_SEARCHED}
    path = tmp_path / "runs.duckdb"
    shutil.copy(toy["store"], path)
    legend = " ".join(_status(path, capsys, monkeypatch).split())
    assert main(["report", "--store", str(path), "--out", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    page = (tmp_path / "rep" / "index.html").read_text()
    why = re.search(r"Why the other failures are not clean</h3><p class=\"lead\">(.*?)</p>", page).group(1)
    with TestClient(create_app(path), base_url="http://127.0.0.1") as client:
        meta = client.get("/api/meta").json()["pair_status_text"]
    assert meta == {k: list(v) for k, v in PAIR_STATUS_TEXT.items()}
    for status in (s for s in PAIR_STATUSES if s != "clean"):
        label, meaning = PAIR_STATUS_TEXT[status]
        assert meaning in legend, status
        assert f"<i>{label}</i> — {html.escape(meaning)}" in why, status
        assert f"<th class=\"n\">{label}</th>" in page or f">{label}<" in page, status
    assert f"<i>not paired yet</i> — {PAIR_STATUS_TEXT[NOT_SEARCHED][1]}" in why


def test_every_view_names_the_categories_and_patterns_alike(toy: dict[str, Any], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """status's caption, the report's figure caption and its badges' hover, and the explorer's /api/meta spell out
    each category and pattern (the paper's names: M-IA = Manifested by Input Attribution, ...) and say what failtrace
    measures, in the one wording of cases.record.CATEGORY_TEXT / PATTERN_TEXT."""
    from fastapi.testclient import TestClient

    from failtrace.cases.record import CATEGORY_TEXT, PATTERN_TEXT, PATTERNS
    from failtrace.serve.app import create_app

    assert set(CATEGORY_TEXT) == set(CATEGORIES) and set(PATTERN_TEXT) == set(PATTERNS)
    assert CATEGORY_TEXT["M-IA"][0] == "Manifested by Input Attribution"
    assert PATTERN_TEXT["OIT"][0] == "Overweight Irrelevant Tokens"
    path = tmp_path / "runs.duckdb"
    shutil.copy(toy["store"], path)
    legend = " ".join(_status(path, capsys, monkeypatch).split())
    assert main(["report", "--store", str(path), "--out", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    page = " ".join((tmp_path / "rep" / "index.html").read_text().split())
    with TestClient(create_app(path), base_url="http://127.0.0.1") as client:
        meta = client.get("/api/meta").json()
    assert meta["category_text"] == {k: list(v) for k, v in CATEGORY_TEXT.items()}
    assert meta["pattern_text"] == {k: list(v) for k, v in PATTERN_TEXT.items()}
    with open_store(path, read_only=True) as st:
        shown = {c.effective_category for c in load_cases(st)}
    for name, (long, meaning) in [*CATEGORY_TEXT.items(), ("URT", PATTERN_TEXT["URT"]), ("OIT", PATTERN_TEXT["OIT"])]:
        assert f"{name} ({long}): {meaning}" in legend, name
        assert html.escape(f"{name} ({long}): {meaning}") in page, name
    for name in shown:  # every badge drawn for a case carries its meaning on hover
        long, meaning = CATEGORY_TEXT[name]
        assert f'<span class="badge" title="{html.escape(long + ": " + meaning)}"' in page, name


def test_an_override_can_be_cleared(toy: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """override --clear removes a case's override: status counts its computed category again and show drops the *
    mark (setting the computed category back by hand still counted as an override). Clearing a case without one, or
    --clear with --category/--reason, is one error line and leaves the store as it was."""
    path = tmp_path / "runs.duckdb"
    shutil.copy(toy["store"], path)
    with open_store(path, read_only=True) as st:
        case = load_cases(st)[0]
    plain = _cases_row(_status(path, capsys, monkeypatch))
    other = next(c for c in CATEGORIES if c != case.category)
    assert main(["override", "--store", str(path), "--case", case.case_id[:10], "--category", other,
                 "--reason", "by hand"]) == 0
    capsys.readouterr()
    assert _cases_row(_status(path, capsys, monkeypatch)) != plain
    assert main(["override", "--store", str(path), "--case", case.case_id[:10], "--clear"]) == 0
    out = capsys.readouterr().out
    assert f"override {other} (by hand) removed; its computed category {case.category} counts again" in out
    assert _cases_row(_status(path, capsys, monkeypatch)) == plain == _expected(path)
    with open_store(path, read_only=True) as st:
        again = {c.case_id: c for c in load_cases(st)}[case.case_id]
    assert again.override is None and again.effective_category == case.category
    before = path.read_bytes()
    for argv, words in ((["--clear"], "has no override to clear"),
                        (["--clear", "--category", other], "--clear removes the override"),
                        (["--category", other], "give --category and --reason")):
        assert main(["override", "--store", str(path), "--case", case.case_id, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert path.read_bytes() == before


def test_status_says_what_was_compared(tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """compare's rows were visible only in the report and the explorer; status now counts them, read independently
    from the comparisons table (distinct cases; distinct fingerprints without and with a training step)."""
    from serve_store import compared_toy_store

    info = compared_toy_store(tmp_path_factory.mktemp("status-compared"), n_items=4)
    with open_store(info["store"], read_only=True) as st:
        cases, models, ckpts = st.con.execute(
            "SELECT count(DISTINCT case_id), count(DISTINCT CASE WHEN step IS NULL THEN model_fingerprint END), "
            "count(DISTINCT CASE WHEN step IS NOT NULL THEN model_fingerprint END) FROM comparisons").fetchone()
    assert cases >= 2 and models == 2 and ckpts == 2
    said = " ".join(_status(info["store"], capsys, monkeypatch).split())
    noun = "case" if cases == 1 else "cases"
    assert f"compared: {cases} {noun} on {models} models and {ckpts} checkpoints" in said
    capsys.readouterr()
    # a compare stopped after a case's own-model row: that case was not compared on anything yet
    stopped = info["store"].parent / "stopped.duckdb"
    shutil.copy(info["store"], stopped)
    with open_store(stopped) as st:
        cid = st.con.execute("SELECT min(case_id) FROM comparisons").fetchone()[0]
        st.con.execute("DELETE FROM comparisons WHERE case_id = ? AND NOT (reference AND step IS NULL)", [cid])
    said = " ".join(_status(stopped, capsys, monkeypatch).split())
    assert f"compared: {cases - 1} {'case' if cases == 2 else 'cases'} on" in said, said


def test_status_without_comparisons_says_nothing_of_them(toy: dict[str, Any], capsys, monkeypatch) -> None:
    """No comparisons (checked in the store): status prints its cases table and no word of comparisons."""
    with open_store(toy["store"], read_only=True) as st:
        tables = {row[0] for row in st.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert "comparisons" not in tables or st.con.execute("SELECT count(*) FROM comparisons").fetchone()[0] == 0
    said = _status(toy["store"], capsys, monkeypatch)
    assert "pair run #1:" in said and "no analysed cases yet" not in said  # the report reached the cases
    assert "compared:" not in said and "#/across" not in said


def test_a_stored_reason_never_reaches_the_terminal_raw(toy: dict[str, Any], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An override written before the text rules (or by hand in SQL) may hold an escape sequence: show and override
    --clear print it with its control characters as symbols (␛), never as bytes the terminal acts on."""
    path = tmp_path / "runs.duckdb"
    shutil.copy(toy["store"], path)
    with open_store(path, read_only=True) as st:
        case = load_cases(st)[0]
    other = next(c for c in CATEGORIES if c != case.category)
    with open_store(path) as st:
        st.con.execute("INSERT INTO overrides VALUES (?, ?, ?, now())", [case.case_id, other, "evil\x1b[2J\x07red"])
    assert main(["show", "--store", str(path), "--case", case.case_id]) == 0
    shown = capsys.readouterr().out
    assert "set by hand: evil␛[2J␇red; computed" in " ".join(shown.split()) and "\x1b[2J" not in shown
    assert main(["override", "--store", str(path), "--case", case.case_id, "--clear"]) == 0
    out = capsys.readouterr().out
    assert f"override {other} (evil␛[2J␇red) removed" in out and "\x1b" not in out and "\x07" not in out


def test_a_rejected_pair_is_shown_but_counted_nowhere(toy: dict[str, Any], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A pair a reviewer rejected in the explorer was left out of export-dpo and finetune, but status, the report's
    tables and figures and its case list counted it like any other, with no mark. Now status and every report table
    but the case list leave it out (and say so), and the case list and its page mark it."""
    import csv

    from fastapi.testclient import TestClient

    from failtrace.serve.app import create_app

    path = tmp_path / "runs.duckdb"
    shutil.copy(toy["store"], path)
    with open_store(path, read_only=True) as st:
        cases = load_cases(st)
    gone = cases[0]
    with TestClient(create_app(path, review=True), base_url="http://127.0.0.1") as c:
        assert c.post("/api/reviews", json={"pair_run_id": gone.pair_run_id, "item_id": gone.item_id,
                                            "decision": "reject", "comment": "artefact contrast"}).status_code == 201
        kept = cases[1]
        assert c.post("/api/reviews", json={"pair_run_id": kept.pair_run_id, "item_id": kept.item_id,
                                            "decision": "accept", "comment": "fine"}).status_code == 201
    with open_store(path, read_only=True) as st:
        again = {c.case_id: c for c in load_cases(st)}
    assert again[gone.case_id].rejected and again[gone.case_id].review["comment"] == "artefact contrast"
    assert not again[kept.case_id].rejected and again[kept.case_id].review["decision"] == "accept"
    counted = [c for c in cases if c.case_id != gone.case_id]
    out = _status(path, capsys, monkeypatch)
    row = _cases_row(out)
    cats = Counter(c.effective_category for c in counted)
    assert row[1] == str(len(counted)) and row[2:5] == [str(cats[c]) for c in CATEGORIES]
    assert f"{sum(c.delta_logit for c in counted) / len(counted):+.2f}" in row
    assert "pair run #1: 1 case whose pair a reviewer rejected (failtrace serve --review) left out of these " \
        "columns" in " ".join(out.split())
    assert "newest analysis has" not in out  # the rejected case was analysed: the analysis is whole
    assert main(["report", "--store", str(path), "--out", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    tables = tmp_path / "rep" / "tables"
    with (tables / "categories.csv").open(encoding="utf-8") as fh:
        assert sum(int(r["cases"]) for r in csv.DictReader(fh)) == len(counted)
    with (tables / "kstar.csv").open(encoding="utf-8") as fh:
        assert {int(r["cases"]) for r in csv.DictReader(fh)} == {len(counted)}
    with (tables / "cases.csv").open(encoding="utf-8") as fh:
        review = {r["case_id"]: r["review"] for r in csv.DictReader(fh)}
    assert len(review) == len(cases) and review[gone.case_id] == "reject" and review[kept.case_id] == "accept"
    with (tables / "table1.csv").open(encoding="utf-8") as fh:  # what the pipeline made: it was analysed
        assert [int(r["cases"]) for r in csv.DictReader(fh)] == [len(cases)]
    page = html.unescape((tmp_path / "rep" / "index.html").read_text(encoding="utf-8"))
    assert "covers" not in page.split('id="cases"')[0]  # no "newest analysis covers 4 of its 5 clean pairs"
    assert "A reviewer rejected the pair of 1 of them (failtrace serve --review): listed and drawn below, marked, " \
        "and counted in no table or figure of this report." in page
    article = page[page.index(f'id="case-{gone.case_id}"'):]
    article = article[:article.index("</article>")]
    assert ">rejected</span>" in article and "pair rejected (" in article and "artefact contrast" in article
    assert main(["show", "--store", str(path)]) == 0  # the list marks it too
    listed = {ln.split("│")[1].strip(): ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("│")}
    assert " ✗" in listed[gone.case_id[:12]] and "✗" not in listed[kept.case_id[:12]]
