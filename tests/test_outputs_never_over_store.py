"""Folder outputs (``report --out``, ``export --out``) never write over, or remove, a results store lying at one of
the names they write, under any name or through a link; and they never mix two stores' files in one folder.

Found by a third sweep: ``report`` wrote CSV text into a store linked as ``tables/cases.csv`` (and HTML over a store
named ``index.html``), ``export`` renamed its ``cases.jsonl`` over a store of that name; an export into a folder
that held another store's export left that store's ``comparisons.jsonl`` beside the new files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from refusals import one_error_line as _error
from serve_store import analysed_toy_store, sha256

from failtrace.cli import main

pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    info = analysed_toy_store(tmp_path_factory.mktemp("over"), n_items=4)
    info["sha"] = sha256(info["store"])
    return info


@pytest.mark.parametrize("where, link", [
    ("index.html", False), ("tables/cases.csv", False), ("tables/cases.csv", True), ("figures/categories.png", True),
    ("figures/graphs/old-case.png", False),  # the report removes stale graph pictures: never a store
    ("figures/graphs/x.png", "dir"),  # through a linked graphs folder (its pictures are removed through the link)
])
def test_report_refuses_a_store_at_its_own_names(toy: dict[str, Any], tmp_path: Path, where: str, link: Any,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    victim = tmp_path / "victim.duckdb"
    shutil.copyfile(toy["store"], victim)
    out = tmp_path / "rep"
    (out / where).parent.mkdir(parents=True)
    if link == "dir":  # the graphs folder itself is a link to a folder that holds the store
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        shutil.move(victim, elsewhere / "x.png")
        victim = elsewhere / "x.png"
        (out / where).parent.rmdir()
        os.symlink(elsewhere, (out / where).parent)
    elif link:
        os.symlink(victim, out / where)
    else:
        shutil.move(victim, out / where)
        victim = out / where
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    line = _error(main(["report", "-s", str(toy["store"]), "-o", str(out), "--no-graphs"]), capsys)
    assert "would write over" in line and "DuckDB results store" in line and where.split("/")[-1] in line, line
    assert ("through the link" in line) == (link is True)
    assert sha256(victim) == toy["sha"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("fmt, name", [("jsonl", "cases.jsonl"), ("parquet", "pairs.parquet"),
                                       ("jsonl", "comparisons.jsonl")])
def test_export_refuses_a_store_at_its_own_names(toy: dict[str, Any], tmp_path: Path, fmt: str, name: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ex"
    out.mkdir()
    shutil.copyfile(toy["store"], out / name)  # a store that happens to carry an export's name (this toy store has
    line = _error(main(["export", "-s", str(toy["store"]), "-f", fmt, "-o", str(out)]), capsys)  # no comparisons)
    assert f"{out / name}" in line and "DuckDB results store" in line
    assert sha256(out / name) == toy["sha"] and [p.name for p in out.iterdir()] == [name]


def test_export_into_a_used_folder_keeps_only_this_stores_tables(toy: dict[str, Any], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A file of an earlier export (a table this store lacks: comparisons) is removed; other files stay."""
    out = tmp_path / "ex"
    out.mkdir()
    (out / "comparisons.jsonl").write_text(json.dumps({"case_id": "from-another-store"}) + "\n")
    (out / "comparisons.parquet").write_text("another format: not this export's file")
    (out / "notes.txt").write_text("mine")
    assert main(["export", "-s", str(toy["store"]), "-f", "jsonl", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert "comparisons.jsonl" not in names and {"comparisons.parquet", "notes.txt", "cases.jsonl"} <= names
    assert f"wrote {len(names) - 2} files" in printed


def test_report_names_the_benchmarks_there(toy: dict[str, Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    line = _error(main(["report", "-s", str(toy["store"]), "-o", str(tmp_path / "r"), "-b", "nosuch"]), capsys)
    assert line == f"error: no runs for benchmark 'nosuch' in {toy['store']}; benchmarks there: toy"
    assert not (tmp_path / "r").exists()


def test_empty_title_gives_no_empty_heading(toy: dict[str, Any], tmp_path: Path) -> None:
    assert main(["report", "-s", str(toy["store"]), "-o", str(tmp_path / "r"), "--no-graphs", "--title", ""]) == 0
    html = (tmp_path / "r" / "index.html").read_text()
    assert "<h1></h1>" not in html and "<title></title>" not in html and "<title>failtrace report · " in html


def test_report_leaves_a_store_it_never_writes_alone(toy: dict[str, Any], tmp_path: Path) -> None:
    """Only the report's own names are refused: a store kept under figures/ by another name is no obstacle."""
    out = tmp_path / "rep"
    (out / "figures").mkdir(parents=True)
    shutil.copyfile(toy["store"], out / "figures" / "keep.duckdb")
    assert main(["report", "-s", str(toy["store"]), "-o", str(out), "--no-graphs"]) == 0
    assert sha256(out / "figures" / "keep.duckdb") == toy["sha"] and (out / "index.html").is_file()


def test_export_jsonl_never_removes_a_case_methods_file(toy: dict[str, Any], tmp_path: Path) -> None:
    """JSONL exports write case_methods inside cases.jsonl, so a case_methods.jsonl there is not theirs."""
    out = tmp_path / "ex"
    out.mkdir()
    (out / "case_methods.jsonl").write_text("mine\n")
    assert main(["export", "-s", str(toy["store"]), "-f", "jsonl", "-o", str(out)]) == 0
    assert (out / "case_methods.jsonl").read_text() == "mine\n" and not list(out.glob("*.part"))
