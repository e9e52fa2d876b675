"""The explorer's across-models/checkpoints views, alternatives and contrast review in Debian's Chromium (Playwright),
over the compared toy store of tests/serve_store.py: the case page shows one side-by-side column per compared
model/checkpoint; a Fig. 4 point links to its case; the checkpoints tab draws one line per (case, split) and one
median per split; picking another contrast writes one review row (and a read-only explorer offers no such button and
leaves the store's hash unchanged); the written review is exported as reviews.jsonl. No request leaves 127.0.0.1.

FAILTRACE_SCREENSHOTS=DIR keeps explorer-{toy-compare,toy-across,across-checkpoints,toy-alternatives}.png (the toy
store; the docs' explorer-compare/across/alternatives.png show a real store and are not overwritten).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_store import compared_toy_store, sha256  # noqa: E402
from test_serve_browser import _chromium, _shot, _start  # noqa: E402

from failtrace.report.compare_data import figure_data  # noqa: E402
from failtrace.store import open_store  # noqa: E402
from failtrace.store.cases import load_cases  # noqa: E402
from failtrace.store.comparisons import load_comparisons  # noqa: E402
from failtrace.views.common import shown  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    info = compared_toy_store(tmp_path_factory.mktemp("browser-compare"))
    with open_store(info["store"], read_only=True) as st:
        info["cases"] = load_cases(st)
        info["rows"] = load_comparisons(st)
    info["sha"] = sha256(info["store"])
    info["review_store"] = info["store"].parent / "review.duckdb"
    shutil.copy(info["store"], info["review_store"])
    servers = [_start(info["store"], review=False), _start(info["review_store"], review=True)]
    info["base"], info["review_base"] = servers[0][2], servers[1][2]
    from playwright.sync_api import sync_playwright

    info["requests"], info["errors"] = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"], headless=True)
        ctx = browser.new_context(viewport={"width": 1360, "height": 900}, bypass_csp=True)
        info["page"] = ctx.new_page()
        info["page"].on("request", lambda r: info["requests"].append(r.url))
        info["page"].on("pageerror", lambda e: info["errors"].append(str(e)))
        try:
            yield info
        finally:
            browser.close()
            for srv, thread, _ in servers:
                srv.should_exit = True
                thread.join(10)


def _open(env: dict[str, Any], base: str, hash_: str, ready: str) -> Any:
    page = env["page"]
    page.goto(base + hash_)
    page.wait_for_selector(f"body[data-ready={ready}]", timeout=20000)
    return page


def test_side_by_side_has_one_column_per_compared_model(env: dict[str, Any]) -> None:
    case = next(c for c in env["cases"] if any(not r["reference"] and r["mapped"] and r["case_id"] == c.case_id
                                               and r["step"] is None for r in env["rows"]))
    rows = [r for r in env["rows"] if r["case_id"] == case.case_id]
    page = _open(env, env["base"], f"#/case/{case.case_id}", "case")
    page.wait_for_selector("#cmpgrid")
    cols = page.locator(".cmpcol")
    assert cols.count() == len(rows) == 4
    assert sorted(cols.nth(i).get_attribute("data-model") for i in range(cols.count())) == \
        sorted(r["model"] for r in rows)
    wrote = 0
    for i in range(cols.count()):
        row = next(r for r in rows if r["model"] == cols.nth(i).get_attribute("data-model"))
        tokens = cols.nth(i).locator(".tok").count()
        assert tokens == (len(case.tokens) if row["mapped"] else 0)  # every case token, aligned, or no heatmap
        # what that model writes there: its stored top token at k = 0, and whether it is the target or contrast
        head = cols.nth(i).locator(".cmphead").inner_text()
        if row["mapped"] and row.get("flip_tops"):
            top = row["flip_tops"][0]
            role = "the target" if top == row["target_id"] else "the contrast" if top == row["contrast_id"] \
                else "neither"
            assert f"writes {shown(row['flip_top_texts'][0])} ({role})" in " ".join(head.split()), head
            wrote += 1
        else:
            assert "writes" not in head
    assert wrote >= 2
    assert page.locator("#alternatives tr[data-token]").count() >= 10
    # the note counts the top tokens, not the contrast listed below them (it said "11 highest" for a top 10 + 1)
    table = page.locator("#alternatives tr[data-token]")
    ranks = [int(table.nth(i).locator("td").first.inner_text()) for i in range(table.count())]
    contrast = [int(table.nth(i).locator("td").first.inner_text()) for i in range(table.count())
                if table.nth(i).locator(".pill.ctr").count()]
    top = [r for r in ranks if not contrast or r != contrast[0] or r <= len(ranks) - 1]
    assert sorted(top) == list(range(len(top)))  # ranks 0..n-1: the target (0) and the next highest
    note = page.locator("#alternatives p.note").inner_text()
    assert f"the {len(top)} highest-logit tokens" in note
    assert ("the contrast below them" in note) == (len(top) < len(ranks))
    meta = page.locator("body").inner_text()
    lines = [ln for ln in meta.splitlines() if "helper" in ln or "contrast from" in ln]
    found = re.fullmatch(r"contrast from\s*the model's own top-k, rank (\d+) \(1: its best token after the wrong one\)",
                         lines[0]) if len(lines) == 1 else None
    assert found and [int(found.group(1))] == contrast, (lines, contrast)  # the search's rank = the table's rank
    assert page.locator("button.pick").count() == 0  # read-only: nothing to pick
    page.locator("#compare").scroll_into_view_if_needed()
    _shot(page, "toy-compare")


def test_fig4_point_links_to_its_case(env: dict[str, Any]) -> None:
    data = figure_data(env["rows"])
    page = _open(env, env["base"], "#/across", "across")
    points = page.locator('figure[data-fig="4"] a.pt')
    assert points.count() == len(data["scatter"]) >= 1
    assert page.locator('figure[data-fig="5"]').count() == 1
    _shot(page, "toy-across")
    href = points.first.get_attribute("href")
    case_id = href.split("/")[-1]
    assert case_id in {p["case_id"] for p in data["scatter"]}
    points.first.locator("circle").click()
    page.wait_for_selector("body[data-ready=case]", timeout=20000)
    assert page.evaluate("location.hash") == f"#/case/{case_id}"
    # the side-by-side section is fetched after the case has painted: wait for it, not for data-ready
    page.wait_for_selector("#cmpgrid", timeout=20000)
    models = {r["model"] for r in env["rows"] if r["case_id"] == case_id}
    cols = page.locator("#cmpgrid .cmpcol")
    assert {cols.nth(i).get_attribute("data-model") for i in range(cols.count())} == models


def test_checkpoints_tab_draws_cases_and_medians(env: dict[str, Any]) -> None:
    data = figure_data(env["rows"])
    page = _open(env, env["base"], "#/across?tab=checkpoints", "across")
    lines = {(p["case_id"], p["split"]) for p in data["checkpoints"]}
    assert page.locator('figure[data-fig="6"] a.cline').count() == len(lines)
    medians = page.locator('figure[data-fig="6"] polyline.median')
    assert sorted(medians.nth(i).get_attribute("data-split") for i in range(medians.count())) == \
        sorted({p["split"] for p in data["checkpoints"]})
    assert page.locator('figure[data-fig="7"]').count() == len({(r["series"], r["split"])
                                                                 for r in data["checkpoint_segments"]})
    _shot(page, "across-checkpoints")
    assert sha256(env["store"]) == env["sha"]  # browsing changed nothing


def test_pick_another_contrast_writes_a_review_and_exports(env: dict[str, Any], tmp_path: Path) -> None:
    from failtrace.cli import main

    case = env["cases"][0]
    page = _open(env, env["review_base"], f"#/case/{case.case_id}", "case")
    buttons = page.locator("button.pick")
    assert buttons.count() >= 8  # every alternative but the target and the contrast
    token = int(buttons.nth(1).get_attribute("data-token"))
    page.fill("#alt-comment", "the second alternative reads better")
    page.locator("#alt-comment").scroll_into_view_if_needed()
    _shot(page, "toy-alternatives")
    buttons.nth(1).click()
    page.wait_for_selector("body[data-ready=case]", timeout=20000)
    page.wait_for_function("document.querySelector('#review') && "
                           "document.querySelector('#review').innerText.includes('contrast')", timeout=20000)
    reviews = page.request.get(env["review_base"] + "api/reviews").json()["reviews"]
    assert len(reviews) == 1 and reviews[0]["decision"] == "contrast" and reviews[0]["contrast_id"] == token
    assert reviews[0]["comment"] == "the second alternative reads better"
    assert sha256(env["store"]) == env["sha"]  # the read-only store never changed
    # the review server still holds its store: export a copy of the file it has written (DuckDB checkpoints on
    # each commit's WAL; copy both)
    copy = tmp_path / "copy.duckdb"
    shutil.copy(env["review_store"], copy)
    wal = Path(str(env["review_store"]) + ".wal")
    if wal.exists():
        shutil.copy(wal, Path(str(copy) + ".wal"))
    assert main(["export", "--store", str(copy), "--out", str(tmp_path / "out"), "--format", "jsonl"]) == 0
    recs = [json.loads(x) for x in (tmp_path / "out" / "reviews.jsonl").read_text().splitlines()]
    assert [(r["decision"], r["contrast_id"], r["case_id"]) for r in recs] == [("contrast", token, case.case_id)]


def test_no_request_left_loopback(env: dict[str, Any]) -> None:
    assert env["requests"] and all(u.startswith("http://127.0.0.1:") for u in env["requests"])
    assert env["errors"] == []
