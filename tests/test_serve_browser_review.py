"""Review mode as a reviewer met it (an explorer walkthrough with keyboard and two tabs), in Debian's Chromium over
the toy store of tests/test_serve_browser.py (its fixtures and helpers, shared): a pair without a case is reviewed on
its item page, an override is cleared from the page, a write keeps the keyboard's place, a comment keeps its line
breaks, a page drawn before another tab's write shows that write when it comes back into view, and the graph's nodes
are reached and pinned by keyboard."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_serve_browser import (_api, _graph_case, _open, _open_review, page,  # noqa: E402,F401
                                server)  # (the module's fixtures and helpers, shared)


def _post(server: dict[str, Any], path: str, body: dict[str, Any]) -> int:
    """A write as another tab (or a script) sends it, straight to the review-mode server."""
    req = urllib.request.Request(server["review_base"] + path.lstrip("/"), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def _reviews(server: dict[str, Any]) -> list[dict[str, Any]]:
    return _api(server, "api/reviews", "review_base")["reviews"]


def _focused(page: Any) -> str:
    return page.evaluate("document.activeElement ? document.activeElement.id : ''")


def test_a_pair_without_a_case_is_reviewed_on_its_item_page(page: Any, server: dict[str, Any]) -> None:
    """The API took a decision on a pair without a case (a weak preference, or one not analysed yet), but its item
    page had no buttons and did not show the decision. The toy store's pairs all have cases, so the page is shown
    one without (its /api/item answer with the case link taken out); the write and the decision are the server's."""
    case = server["cases"][2]

    def no_case(route: Any) -> None:
        body = route.fetch().json()
        for p in body["pairs"]:
            p["case_id"] = None
        route.fulfill(json=body)

    page.route("**/api/item?*", no_case)
    try:
        page.goto(server["review_base"] + f"#/item?run_id={server['run_id']}&item_id={case.item_id}")
        page.wait_for_selector("body[data-ready=item]", timeout=20000)
        pair = page.locator("table.pair")
        assert pair.locator("tr:has(th:text('review')) td").inner_text() == "none yet"
        page.fill("#rv-comment-0", "the first wrong token, checked by hand")
        page.focus("#rv-accept-0")
        page.keyboard.press("Enter")  # by keyboard: the focus stays on the button used, not on <body>
        page.wait_for_function("document.querySelector('#rv-status-0') && "
                               "document.querySelector('#rv-status-0').textContent.startsWith('saved')")
        assert page.inner_text("#rv-status-0") == "saved: pair accepted"
        assert _focused(page) == "rv-accept-0"
        said = page.locator("table.pair tr:has(th:text('review')) td").inner_text()
        assert said.startswith("pair accepted (the decision in force, ") and said.endswith(
            " UTC: the first wrong token, checked by hand)"), said
        row = _reviews(server)[-1]
        assert (row["pair_run_id"], row["item_id"], row["decision"]) == (case.pair_run_id, case.item_id, "accept")
    finally:
        page.unroute("**/api/item?*")
    # read-only, the decision is shown and no form is offered
    page.goto(server["base"] + f"#/item?run_id={server['run_id']}&item_id={case.item_id}")
    page.wait_for_selector("body[data-ready=item]", timeout=20000)
    assert page.locator("form.rv").count() == 0
    assert page.locator("table.pair tr:has(th:text('review')) td").inner_text() == "none yet"  # the other store


def test_an_override_is_cleared_from_the_page_and_comments_keep_their_lines(page: Any,
                                                                          server: dict[str, Any]) -> None:
    """The explorer could not clear an override (the command line's `override --clear` could), and picking the
    computed category again stored a second override that left the case marked as set by hand."""
    case = server["cases"][3]
    _open_review(page, server, case)
    assert page.locator("#rv-clear").count() == 0  # nothing to clear yet
    labels = page.locator("#rv-category option").all_inner_texts()
    assert f"{case.category} (computed)" in labels and len(labels) == 3
    other = next(k for k in ("M-IA", "NC-IA+M-AG", "NC-IA+AG") if k != case.category)
    page.select_option("#rv-category", other)
    page.fill("#rv-comment", "the graph says otherwise\nsee node L1:4")
    page.click("#rv-override")
    page.wait_for_function("document.querySelector('#rv-status').textContent.startsWith('saved')")
    assert page.inner_text("#rv-status") == f"saved: category {other} set by hand"
    assert _focused(page) == "rv-override"
    newest = page.locator("#review .rv-log").first
    assert newest.inner_text().endswith(f"category → {other}: the graph says otherwise\nsee node L1:4")
    page.click("#rv-clear")  # refused in the page without a comment, as an override is
    assert page.inner_text("#rv-status") == "clearing needs a comment: say why"
    page.fill("#rv-comment", "computed after all")
    page.click("#rv-clear")
    page.wait_for_function("document.querySelector('#rv-status').textContent.startsWith('saved')")
    assert page.inner_text("#rv-status") == (f"saved: the override is removed; the computed category {case.category} "
                                             "counts again")
    assert page.locator("#rv-clear").count() == 0 and page.input_value("#rv-category") == case.category
    got = _api(server, f"api/cases/{case.case_id}", "review_base")
    assert got["override"] is None and got["effective_category"] == case.category
    assert [r["comment"] for r in _reviews(server) if r["case_id"] == case.case_id][-2:] == [
        "the graph says otherwise\nsee node L1:4", "computed after all"]
    assert page.locator("#review .rv-log").first.inner_text().endswith(
        f"category → {case.category} (the computed category: override cleared): computed after all")


def test_another_tabs_write_is_shown_when_the_page_comes_back(page: Any, server: dict[str, Any]) -> None:
    """Two tabs on one case: after one wrote, the other still showed the old decision until reloaded."""
    case = server["cases"][4]
    _open_review(page, server, case)
    page.fill("#rv-comment", "half typed")
    if page.locator("#alt-comment").count():
        page.fill("#alt-comment", "a contrast note")
    assert _post(server, "api/reviews", {"pair_run_id": case.pair_run_id, "item_id": case.item_id,
                                         "decision": "reject", "comment": "from the other tab"}) == 201
    page.evaluate("window.dispatchEvent(new Event('focus'))")  # the tab comes back into view
    page.wait_for_selector("#reviews-changed", timeout=20000)
    assert page.inner_text("#reviews-changed").startswith("updated: reviews were written elsewhere")
    assert page.inner_text("#rv-in-force").startswith("pair rejected")
    assert page.input_value("#rv-comment") == "half typed"  # what was being typed is kept
    assert not page.locator("#alt-comment").count() or page.input_value("#alt-comment") == "a contrast note"
    page.evaluate("document.getElementById('reviews-changed').dataset.seen = '1'")
    page.evaluate("window.dispatchEvent(new Event('focus'))")  # nothing new: no second redraw
    page.wait_for_timeout(1000)
    assert page.locator("#reviews-changed").get_attribute("data-seen") == "1"


def test_graph_nodes_are_reached_and_pinned_by_keyboard(page: Any, server: dict[str, Any], tmp_path: Path) -> None:
    """The graph's nodes were mouse-only; and the URL and export named a node by its stage index (pin=2:5) while
    its line said "L1", with nothing in the export to map one to the other."""
    case = _graph_case(server)
    _open(page, server, f"#/graph/{case.case_id}", "graph")
    page.focus("#gsearch")
    for _ in range(6):  # after the search box, the checkbox and the export button, Tab reaches the first node
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.matches('circle.n')"):
            break
    assert page.evaluate("document.activeElement.matches('circle.n')"), "Tab never reached a graph node"
    key = page.evaluate("document.activeElement.dataset.k")
    stage, pos = key.split(":")
    name = f"{case.graph['stages'][int(stage)]} / pos {pos}"
    label = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert label.startswith(name + "  ‹") and ", R = " in label
    assert page.inner_text("#tip").startswith(name)  # focus shows what hover shows
    page.keyboard.press("Enter")
    page.wait_for_function(f"decodeURIComponent(location.hash).includes('pin={key}')")
    assert page.locator("circle.n.pin").get_attribute("data-k") == key
    assert page.evaluate("document.activeElement.dataset.k") == key  # the redraw gave the focus back to it
    assert page.locator("circle.n.pin").get_attribute("aria-pressed") == "true"
    assert f"pinned {name}:" in page.inner_text("#gsub")
    with page.expect_download() as dl:
        page.click("#export")
    data = json.loads(Path(dl.value.path()).read_text())
    assert data["pinned"] == key and data["pinned_name"] == name
    assert all(n["stage_name"] == case.graph["stages"][n["stage"]] for n in data["nodes"]) and data["nodes"]
    page.focus(f"circle.n[data-k='{key}']")
    page.keyboard.press(" ")  # Space unpins, as a second click does
    page.wait_for_function("!location.hash.includes('pin=')")
    assert page.locator("circle.n.pin").count() == 0


def test_masking_rows_and_heatmap_tokens_by_keyboard(page: Any, server: dict[str, Any]) -> None:
    """The masking table's rows and the heatmap's tokens answered the mouse only: now Tab reaches a row, Enter finds
    its token in the heatmap and gives the heatmap the focus there, and the arrow keys walk the tokens, each said in
    the readout as hover says it."""
    case = next(c for c in server["cases"] if len(c.methods["attnlrp"].flip_curve or []) > 2)
    _open(page, server, f"#/case/{case.case_id}", "case")
    rows = page.locator("table.masked tr.hit-row")
    first = int(rows.first.get_attribute("data-p"))
    rows.first.focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "strip"
    cur = page.locator("#strip .tok.cur")
    assert int(cur.get_attribute("data-p")) == first
    assert page.inner_text("#readout").startswith(f"pos {first} · ")
    page.keyboard.press("ArrowRight")
    nxt = int(page.locator("#strip .tok.cur").get_attribute("data-p"))
    assert nxt == first + 1 and page.locator("#strip .tok.cur").count() == 1
    assert page.inner_text("#readout").startswith(f"pos {nxt} · ")
    page.keyboard.press("Home")
    assert page.locator("#strip .tok.cur").get_attribute("data-p") == "0"
    page.keyboard.press("End")
    assert int(page.locator("#strip .tok.cur").get_attribute("data-p")) == len(case.tokens) - 1
    assert page.locator("#readout").get_attribute("aria-live") == "polite"
    page.focus("#strip")  # a row found by Space, too
    rows.nth(1).focus()
    page.keyboard.press(" ")
    assert int(page.locator("#strip .tok.cur").get_attribute("data-p")) == int(rows.nth(1).get_attribute("data-p"))


def test_case_page_sums_relevance_by_segment_and_says_an_unknown_method(page: Any, server: dict[str, Any]) -> None:
    """The case page had no per-segment Σ R (`failtrace show --case` prints it), and `?method=bogus` silently became
    attnlrp. The table is checked against the stored sums and the labels' counts; the unknown method is said."""
    case = server["cases"][0]
    _open(page, server, f"#/case/{case.case_id}?method=cp-lrp", "case")
    assert page.inner_text("#segments h3") == "cp-lrp relevance by segment"
    sums = case.methods["cp-lrp"].segment_relevance
    labels = case.segment_labels()
    rows = page.locator("#segments tr[data-seg]").evaluate_all(
        "trs => trs.map(t => [t.dataset.seg, +t.cells[1].textContent, t.cells[2].textContent])")
    assert [r[0] for r in rows] == sorted(sums, key=lambda k: (-abs(sums[k]), k))  # largest |Σ R| first
    for seg, n, value in rows:
        assert n == labels.count(seg) and float(value) == pytest.approx(sums[seg], rel=1e-3, abs=1e-3), seg
    assert page.locator("#method-note").count() == 0
    page.goto(server["base"] + f"#/case/{case.case_id}?method=bogus")
    page.wait_for_selector("#method-note", timeout=20000)
    assert page.inner_text("#method-note").startswith("this case has no method ‹bogus› (it has attnlrp, ")
    assert page.inner_text("#method-note").endswith("): showing attnlrp")
    assert page.inner_text("#segments h3") == "attnlrp relevance by segment"


def test_constant_benchmark_and_model_columns_are_said_once(page: Any, server: dict[str, Any]) -> None:
    """At 800 px a one-model store's cases table needed a sideways scroll, two of its columns saying the same thing
    on every row. Those are said once above the table; a second value brings its column back."""
    from failtrace.store import open_store

    with open_store(server["store"], read_only=True) as st:
        ((bench, model),) = st.con.execute("SELECT DISTINCT benchmark, model FROM runs WHERE stage = 'collect'"
                                           ).fetchall()
    page.set_viewport_size({"width": 800, "height": 900})
    try:
        _open(page, server, "#/cases", "cases")
        assert page.inner_text("#uniform") == f"every row: benchmark {bench} · model {model}"
        assert page.locator("th[data-col=benchmark], th[data-col=model], td[data-col=model]").count() == 0
        heads = page.locator("#cases th").evaluate_all("ths => ths.map(t => t.dataset.col)")
        cells = page.locator("tr.row").first.locator("td").evaluate_all("tds => tds.map(t => t.dataset.col)")
        assert heads == cells and "pattern" in heads  # every cell under its own header
        assert page.evaluate("(() => { const s = document.querySelector('#cases').parentNode; "
                             "return s.scrollWidth <= s.clientWidth; })()")  # no sideways scroll at 800 px

        def two_models(route: Any) -> None:  # another model's rows in the store: its column is back
            body = route.fetch().json()
            body["facets"]["model"].append({"value": "other-model", "count": 1})
            route.fulfill(json=body)

        page.route("**/api/table?*", two_models)
        _open(page, server, "#/cases?sort=verdict", "cases")
        page.unroute("**/api/table?*")
        assert page.inner_text("#uniform") == f"every row: benchmark {bench}"
        assert page.locator("th[data-col=model]").count() == 1
        assert page.locator("tr.row").first.locator("td[data-col=model]").count() == 1
    finally:
        page.set_viewport_size({"width": 1360, "height": 900})
