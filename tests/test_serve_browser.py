"""The explorer as a person uses it: uvicorn on a free loopback port over an analysed toy store, driven by Debian's
Chromium through Playwright. The table shows the right count, a facet narrows it (and the URL reopens the view), a
case page has one heatmap token per context token and the method buttons recolour it, the graph slider changes the
number of drawn edges (as a Python re-implementation of the pruning rule predicts), pinning a node shows the subgraph
to the prediction and exports it, and no request leaves 127.0.0.1.

Chromium missing is a failure, not a skip (scripts/setup.sh --tests installs it; FAILTRACE_CHROMIUM points at another
binary). FAILTRACE_SCREENSHOTS=DIR keeps screenshots of the graph, review and API views
(docs/explorer-{graph,review,api}.png were made so; the table and case views in docs/ come from a real demo store,
scripts/explorer_screenshot.py).
"""

from __future__ import annotations

import json
import re
import math
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_store import analysed_toy_store, sha256  # noqa: E402

from failtrace.store import open_store  # noqa: E402
from failtrace.store.cases import load_cases  # noqa: E402


def _chromium() -> str:
    path = os.environ.get("FAILTRACE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium binary: run scripts/setup.sh --tests (apt-get install -y chromium) or set "
                    "FAILTRACE_CHROMIUM")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(store: Path, review: bool) -> tuple[Any, threading.Thread, str]:
    import uvicorn

    from failtrace.serve.app import create_app

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(store, review=review), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    return srv, thread, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    info = analysed_toy_store(tmp_path_factory.mktemp("serve-browser"))
    with open_store(info["store"], read_only=True) as st:
        info["cases"] = load_cases(st, with_graph=True)
        info["n_rows"] = st.con.execute("SELECT count(*) FROM verdicts").fetchone()[0]
        info["n_clean"] = st.con.execute("SELECT count(*) FROM pairs WHERE status = 'clean'").fetchone()[0]
        info["items"] = {r[0]: (r[1], r[2]) for r in st.con.execute(
            "SELECT g.item_id, g.completion, v.status FROM generations g JOIN verdicts v USING (run_id, item_id)"
        ).fetchall()}
    info["sha"] = sha256(info["store"])
    review_store = info["store"].parent / "review.duckdb"
    shutil.copy(info["store"], review_store)
    srv, thread, info["base"] = _start(info["store"], review=False)
    rsrv, rthread, info["review_base"] = _start(review_store, review=True)
    info["review_store"] = review_store
    yield info
    for s, t in ((srv, thread), (rsrv, rthread)):
        s.should_exit = True
        t.join(10)


@pytest.fixture(scope="module")
def page(server: dict[str, Any]):
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"], headless=True)
        try:
            ctx = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True,
                                      bypass_csp=True)  # the page's CSP forbids eval; the waits below use it
            pg = ctx.new_page()
            pg.on("request", lambda r: requests.append(r.url))
            pg.on("pageerror", lambda e: errors.append(str(e)))
            server["requests"], server["errors"] = requests, errors
            yield pg
        finally:
            browser.close()


def _open(page: Any, server: dict[str, Any], hash_: str, ready: str) -> None:
    page.goto(server["base"] + hash_)
    page.wait_for_selector(f"body[data-ready={ready}]", timeout=20000)


def _shot(page: Any, name: str) -> None:
    folder = os.environ.get("FAILTRACE_SCREENSHOTS")
    if folder:
        page.mouse.move(1, 1)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(Path(folder) / f"explorer-{name}.png"), full_page=True)


def _painted(page: Any, route: str, key: str) -> None:
    """Wait until the view of the new URL state (its hash holds ``key``) is painted: the hash changes at once, the
    view later, and ``data-ready`` alone may still be the previous state's."""
    page.wait_for_function(f"location.hash.includes('{key}') && document.body.dataset.ready === '{route}' "
                           "&& document.body.dataset.readyHash === location.hash")


def test_table_count_filter_and_url_state(page: Any, server: dict[str, Any]) -> None:
    def demo_like(route: Any) -> None:  # the demo store's widest values, in every row
        body = route.fetch().json()
        for r in body["rows"]:
            r.update(item_id="if-colors-comma", model="smollm2-135m-instruct", pair_status="weak_preference",
                     category="NC-IA+AG", pattern="URT+OIT", delta_logit=11.024, n_tokens=128)
        route.fulfill(json=body)

    page.set_viewport_size({"width": 1280, "height": 900})  # every column in view, none behind a horizontal scroll
    page.route("**/api/table?*", demo_like)
    _open(page, server, "#/cases", "cases")
    page.unroute("**/api/table?*")
    box = page.locator("table.cases").evaluate("t => [t.parentElement.scrollWidth, t.parentElement.clientWidth]")
    assert box[0] <= box[1], box  # the answer-tokens column used to sit 64 px past the box's edge
    page.set_viewport_size({"width": 1360, "height": 900})
    _open(page, server, "#/cases?", "cases")
    assert page.inner_text("#total") == f"{server['n_rows']} rows"
    assert page.locator("tr.row").count() == server["n_rows"]
    # k*: the number, "none" (curve computed, no flip within K) or "—" (no case, or no curve) -- never one dash for two
    want = {c.case_id: "none" if c.methods["attnlrp"].flip_k is None and len(c.methods["attnlrp"].flip_curve) > 0
            else "—" if c.methods["attnlrp"].flip_k is None else str(c.methods["attnlrp"].flip_k)
            for c in server["cases"]}
    got = dict(page.locator("tr.row.has-case").evaluate_all(
        "trs => trs.map(tr => [tr.dataset.case, tr.querySelector('td[data-col=k_star]').textContent])"))
    assert got == want
    assert set(page.locator("tr.row:not(.has-case) td[data-col=k_star]").all_inner_texts()) == {"—"}
    # (the table and case screenshots in docs/ are of a real demo store: scripts/explorer_screenshot.py)
    # every toy case flips; a row whose curve ran without a flip (as the API sends it) reads "none", not "—"
    def no_flip(route: Any) -> None:
        body = route.fetch().json()
        body["rows"][0].update(case_id="c0", k_star=None, k_computed=True)
        route.fulfill(json=body)

    page.route("**/api/table?*", no_flip)
    _open(page, server, "#/cases?sort=item_id", "cases")
    assert page.locator("tr.row td[data-col=k_star]").first.inner_text() == "none"
    page.unroute("**/api/table?*")
    # pair statuses read as the report and failtrace status word them (store.schema.PAIR_STATUS_TEXT), with their
    # meaning on hover, in the facet and in the table; the filter value in the URL stays the stored one
    from failtrace.store.schema import NOT_SEARCHED, PAIR_STATUS_TEXT

    def more_statuses(route: Any) -> None:  # the toy store's statuses (clean, unbounded) read as stored
        body = route.fetch().json()
        body["facets"]["pair_status"] += [{"value": "no_target", "count": 1}, {"value": NOT_SEARCHED, "count": 1}]
        body["rows"][0]["pair_status"] = "weak_preference"
        route.fulfill(json=body)

    page.route("**/api/table?*", more_statuses)
    _open(page, server, "#/cases?sort=benchmark", "cases")
    _painted(page, "cases", "sort=benchmark")
    page.unroute("**/api/table?*")
    facet = page.locator(".facet[data-facet=pair_status] label")
    values = facet.locator("input").evaluate_all("cs => cs.map(c => c.value)")
    said = [PAIR_STATUS_TEXT.get(v, (v, "")) for v in values]  # "(none)": a passed item has no pair status
    assert {"no_target", NOT_SEARCHED, "clean"} <= set(values)
    assert [t.split("\n")[0].strip() for t in facet.all_inner_texts()] == [s[0] for s in said]
    assert facet.evaluate_all("ls => ls.map(l => l.title)") == [s[1] for s in said]
    first = page.locator("tr.row td[data-col=pair_status]").first
    assert first.inner_text() == "weak preference" and first.get_attribute("title").startswith(
        PAIR_STATUS_TEXT["weak_preference"][1])
    # a category or pattern keeps its short name, with the paper's name and its meaning on hover, in the facets and
    # on every badge (cases.record.CATEGORY_TEXT / PATTERN_TEXT, as status and the report word them)
    from failtrace.cases.record import CATEGORY_TEXT, PATTERN_TEXT

    for name, text in (("category", CATEGORY_TEXT), ("pattern", PATTERN_TEXT)):
        labels = page.locator(f".facet[data-facet={name}] label")
        pairs = labels.evaluate_all("ls => ls.map(l => [l.querySelector('input').value, l.title])")
        known = [(v, t) for v, t in pairs if v in text]
        assert known, name
        assert all(t == f"{text[v][0]}: {text[v][1]}" for v, t in known), pairs
        assert [t.split("\n")[0].strip() for t in labels.all_inner_texts()] == [v for v, _ in pairs]
    badges = page.locator("tr.row .badge").evaluate_all("bs => bs.map(b => [b.textContent, b.title])")
    assert badges and all(t == ": ".join(CATEGORY_TEXT.get(b) or PATTERN_TEXT[b]) for b, t in badges), badges
    _open(page, server, "#/cases?sort=item_id", "cases")
    _painted(page, "cases", "sort=item_id")
    page.click("input[data-facet=pair_status][value=clean]")
    page.wait_for_function(f"document.querySelector('#total').textContent === '{server['n_clean']} rows'")
    assert page.locator("tr.row").count() == server["n_clean"] < server["n_rows"]
    assert "pair_status=clean" in page.url
    _open(page, server, "#/cases?" + page.url.split("?", 1)[1], "cases")  # a link reopens the filtered view
    assert page.inner_text("#total") == f"{server['n_clean']} rows"
    page.click("th[data-col=delta_logit]")
    _painted(page, "cases", "sort=delta_logit")
    shown = [float(x) for x in page.locator("tr.row td[data-col=delta_logit]").all_inner_texts()]
    assert shown == sorted(shown) and len(shown) == server["n_clean"]


def _rgb(v: float) -> str:
    end = (220, 38, 38) if v > 0 else (37, 99, 235)
    a = min(1.0, abs(v))
    return "rgb(" + ", ".join(str(math.floor(255 + (e - 255) * a + 0.5)) for e in end) + ")"  # JS Math.round


def test_case_page_heatmap_tokens_and_method_switch(page: Any, server: dict[str, Any]) -> None:
    case = max(server["cases"], key=lambda c: len(c.tokens))
    _open(page, server, f"#/case/{case.case_id}", "case")
    # the breadcrumb says where we are (the case); the graph is a link in the page, not a crumb that reads as here
    assert page.inner_text("#nav-crumb").replace("›", " ").split() == ["case", case.item_id]
    assert page.get_attribute("#methods a#to-graph", "href") == f"#/graph/{case.case_id}"
    assert page.locator("#strip .tok").count() == len(case.tokens)
    assert page.locator("#strip .tok.sp").count() == sum(case.special_mask)
    assert page.locator("details.seg").count() >= len(case.segments)
    i = next(j for j, sp in enumerate(case.special_mask) if not sp)
    page.hover(f"#strip .tok[data-p='{i}']")
    assert page.inner_text("#readout").startswith(f"pos {i} ")
    raw = np.asarray(case.methods["cp-lrp"].input_relevance)
    norm = raw / np.abs(raw[~np.asarray(case.special_mask)]).max()  # by hand: largest |R| of non-special tokens
    i = max((j for j, sp in enumerate(case.special_mask) if not sp), key=lambda j: abs(norm[j]) * (abs(norm[j]) < 0.9))
    before = page.get_attribute(f"#strip .tok[data-p='{i}']", "style")
    page.click("#methods button[data-method='cp-lrp']")
    _painted(page, "case", "method=cp-lrp")
    style = page.get_attribute(f"#strip .tok[data-p='{i}']", "style")
    assert _rgb(float(norm[i])) in style and style != before
    assert page.locator("#flip g[data-method]").count() == sum(bool(m.flip_curve) for m in case.methods.values())
    # each box in its segment's one colour, the report's (failtrace.views.palette.SEGMENT_COLORS)
    from failtrace.views.palette import SEGMENT_COLORS

    boxes = page.locator("details.seg").evaluate_all(
        "ds => ds.map(d => [d.dataset.seg, d.style.getPropertyValue('--segc')])")
    assert boxes and all(colour == SEGMENT_COLORS[name] for name, colour in boxes)
    # fold one box of a segment that has several: the URL keeps exactly that box folded when the link is reopened
    names = page.locator("details.seg").evaluate_all("ds => ds.map(d => d.dataset.seg)")
    seg = next(n for n in names if names.count(n) > 1)
    boxes = page.locator(f"details.seg[data-seg='{seg}']")
    start = boxes.nth(1).get_attribute("data-start")
    boxes.nth(1).locator("> summary").click()
    page.wait_for_function(f"location.hash.includes('closed={start}')")
    _open(page, server, "#/case/" + page.url.split("#/case/", 1)[1], "case")
    assert page.locator("details.seg:not([open])").evaluate_all("ds => ds.map(d => d.dataset.start)") == [start]
    page.locator(f"details.seg[data-start='{start}'] > summary").click()  # unfolding it clears the URL
    page.wait_for_function("!location.hash.includes('closed=')")


def test_top_tokens_in_masking_order_find_their_token(page: Any, server: dict[str, Any]) -> None:
    """The table under the heatmap lists the tokens the flip curve masked, in its order (the API's mask_order), with
    the first k* rows shaded; a click on a row opens the token's folded segment and marks that token."""
    case = next(c for c in server["cases"] if c.methods["attnlrp"].flip_k)
    _open(page, server, f"#/case/{case.case_id}", "case")
    order = json.loads(page.evaluate(f"fetch('/api/cases/{case.case_id}').then(r => r.text())"))["methods"][
        "attnlrp"]["mask_order"]
    # the header shows what the model wrote, the checker's reason and the fix, as the API sends them
    answers = json.loads(page.evaluate(f"fetch('/api/cases/{case.case_id}').then(r => r.text())"))["answers"]
    assert page.locator("#answers dt").all_inner_texts() == [a[0] for a in answers] and len(answers) == 3
    assert page.locator("#answers dd .text").all_text_contents() == [a[1] for a in answers]
    # where a text stopped sits below its scroll box, always in view (it was the end of the scrolled text)
    assert page.locator("#answers dd .cut").all_text_contents() == [a[2] for a in answers if a[2]]
    rows = page.locator("#masked tr.hit-row")
    assert rows.count() == len(order) > 0
    assert [int(rows.nth(i).get_attribute("data-p")) for i in range(len(order))] == order
    assert page.locator("#masked tr.flipset").count() == case.methods["attnlrp"].flip_k
    # Each row's context is the one the report and failtrace show print (views.common.masked_rows, same clipping).
    from failtrace.views.common import clipped_text, masked_caption, masked_rows, shown

    want = [clipped_text("".join(map(shown, r["before"])), keep_end=True) + clipped_text(shown(r["token"]))
            + clipped_text("".join(map(shown, r["after"]))) for r in masked_rows(case, "attnlrp")]
    assert page.locator("#masked tr.hit-row td.ctx").evaluate_all("tds => tds.map(td => td.textContent)") == want
    # ... and its caption is their caption (views.common.masked_caption), not a wording of its own
    cap = masked_caption(case.methods["attnlrp"].flip_k, masked_rows(case, "attnlrp"), "shaded")
    assert "shaded); the model's top next token is then ‹" in cap
    assert page.locator("#masked p.note").inner_text().startswith(cap[0].upper() + cap[1:] + ".")
    # the last two cells: Δℓ after masking the first k, and the top next token then (its text, its role on hover)
    r = case.methods["attnlrp"]
    cells = rows.nth(len(order) - 1).locator("td")
    assert float(cells.nth(-2).inner_text()) == pytest.approx(r.flip_curve[len(order)], abs=1e-3)
    tops = page.locator("#masked tr.hit-row td:last-child").evaluate_all("tds => tds.map(td => td.textContent)")
    assert tops == [clipped_text(shown(t)) for t in r.flip_top_texts[1:len(order) + 1]]
    k = r.flip_k
    role = "the contrast" if r.flip_tops[k] == case.contrast_id else "neither the target nor the contrast"
    assert rows.nth(k - 1).locator("td").last.get_attribute("title") == role
    pos = order[0]
    seg = page.locator(f"#strip .tok[data-p='{pos}']").evaluate("t => t.closest('details').dataset.seg")
    page.locator(f"details.seg[data-seg='{seg}'] > summary").first.click()  # fold the token's segment first
    page.wait_for_function("location.hash.includes('closed=')")
    page.wait_for_selector(f"details.seg[data-seg='{seg}']:not([open])")
    page.locator("#masked tr.hit-row").first.click()
    page.wait_for_selector(f"#strip .tok[data-p='{pos}'].hl")
    assert page.locator(f"#strip .tok[data-p='{pos}']").evaluate("t => t.closest('details').open")


def test_flip_curves_skip_missing_points_and_carry_svg_tooltips(page: Any, server: dict[str, Any]) -> None:
    """A curve point that was not computed arrives as null: it is a gap, neither drawn at Δℓ = 0 (as it used to be)
    nor bridged by a line that would look computed; a point left alone between gaps is a dot. Each curve's hover
    text is an SVG <title> on its group, the only kind a browser shows there."""
    case = max(server["cases"], key=lambda c: len(c.tokens))
    method = next(m for m, r in case.methods.items() if len(r.flip_curve) >= 6)
    n = len(case.methods[method].flip_curve)
    holes = (1, 3)  # runs left: [0] (a dot), [2] (a dot), [4..K] (a line)

    def punch(route: Any) -> None:
        body = route.fetch().json()
        for hole in holes:
            body["methods"][method]["flip_curve"][hole] = None
        route.fulfill(json=body)

    page.route(f"**/api/cases/{case.case_id}", punch)
    try:
        _open(page, server, f"#/case/{case.case_id}?method={method}", "case")
        group = f"#flip g[data-method='{method}']"
        dots = [float(x) for x in
                page.eval_on_selector_all(f"{group} > circle", "cs => cs.map(c => c.getAttribute('cx'))")]
        lines = [[float(pt.split(",")[0]) for pt in pts.split()] for pts in
                 page.eval_on_selector_all(f"{group} > polyline", "ps => ps.map(p => p.getAttribute('points'))")]
        assert len(dots) == 2 and len(lines) == 1 and sum(map(len, lines)) + 2 == n - len(holes)
        step = (dots[1] - dots[0]) / 2  # the dots are k = 0 and k = 2
        assert all(xs == sorted(xs) and abs(xs[0] - (dots[1] + 2 * step)) < 1e-6 for xs in lines)  # starts at k = 4
        titles = page.eval_on_selector_all("#flip g > title", "ts => ts.map(t => [t.namespaceURI, "
                                           "t.textContent, t.parentNode.dataset.method])")
        assert len(titles) == page.locator("#flip g[data-method]").count() > 0
        for ns, text, m in titles:
            k = case.methods[m].flip_k
            assert ns == "http://www.w3.org/2000/svg" and text == f"{m}: k* = {'none' if k is None else k}"
        # each line in its method's colour (the report's), named in a legend: the others were all one grey, told
        # apart only by hovering
        from failtrace.views.palette import METHOD_COLORS

        strokes = page.eval_on_selector_all("#flip g[data-method] > polyline", "ps => ps.map(p => "
                                            "[p.parentNode.dataset.method, p.getAttribute('stroke')])")
        assert strokes and all(colour == METHOD_COLORS[m] for m, colour in strokes)
        assert len({colour for _, colour in strokes}) == len({m for m, _ in strokes}) > 1
        legend = page.inner_text("#flip-legend")
        for m in (x for x, _ in strokes):
            k = case.methods[m].flip_k
            assert f"{m} (k* {'none' if k is None else k})" in legend, legend
        last = page.eval_on_selector_all("#flip g[data-method]", "gs => gs[gs.length - 1].dataset.method")
        assert last == method  # the method of the heatmap is drawn on top
    finally:
        page.unroute(f"**/api/cases/{case.case_id}")


def _api(server: dict[str, Any], path: str, base: str = "base") -> Any:
    """GET an API path from the running server (``base`` or ``review_base``) as JSON."""
    import urllib.request

    with urllib.request.urlopen(server[base] + path.lstrip("/"), timeout=10) as r:
        return json.loads(r.read())


def _graph_case(server: dict[str, Any]) -> Any:
    """The toy case whose stored graph has the most edges."""
    return max(server["cases"], key=lambda c: len(c.graph["edges"]))


def _open_review(page: Any, server: dict[str, Any], case: Any) -> None:
    """The case's page on the review-mode server, painted."""
    page.goto(server["review_base"] + f"#/case/{case.case_id}")
    page.wait_for_selector("body[data-ready=case]", timeout=20000)


def _expected_graph(graph: dict[str, Any], p: float) -> tuple[int, int]:
    """Pruning by hand: per transition keep the strongest edges until mass p is reached, then keep only edges whose
    target still reaches the final node (walking down from the top stage)."""
    edges = graph["edges"]
    keep = []
    for t in {(e[0], e[2]) for e in edges}:
        same = sorted([e for e in edges if (e[0], e[2]) == t], key=lambda e: -abs(e[4]))
        total, acc = sum(abs(e[4]) for e in same), 0.0
        for e in same:
            if acc / total < p:
                keep.append(e)
            acc += abs(e[4])
    final = (len(graph["stages"]) - 1, max(n[1] for n in graph["nodes"] if n[0] == len(graph["stages"]) - 1))
    reach, kept = {final}, []
    for e in sorted(keep, key=lambda e: -e[2]):
        if (e[2], e[3]) in reach:
            kept.append(e)
            reach.add((e[0], e[1]))
    return len(reach), len(kept)


def test_graph_slider_pin_and_export(page: Any, server: dict[str, Any], tmp_path: Path) -> None:
    case = _graph_case(server)
    _open(page, server, f"#/graph/{case.case_id}", "graph")  # opens on every stored edge, as the report draws it
    assert page.inner_text("#mass-value") == "1.00"
    assert (page.locator("circle.n").count(), page.locator("line.e").count()) == _expected_graph(case.graph, 1.0)
    assert _expected_graph(case.graph, 1.0) != _expected_graph(case.graph, 0.80)
    for asked, drawn in (("7", "1.00"), ("-1", "0.01"), ("abc", "1.00")):  # a hand-edited p: said, not silently
        _open(page, server, f"#/graph/{case.case_id}?p={asked}", "graph")
        assert page.inner_text("#graph-note") == (f"p={asked} is not an edge-mass share the slider takes (0.01 to 1; "
                                                  f"0 reads as 0.01): drawn at {drawn}")
        assert page.inner_text("#mass-value") == drawn
    _open(page, server, f"#/graph/{case.case_id}?p=0.80", "graph")
    assert page.locator("#graph-note").count() == 0
    assert page.inner_text("#nav-crumb").replace("›", " ").split() == ["case", case.item_id, "graph"]
    n_hi = page.locator("line.e").count()
    assert (page.locator("circle.n").count(), n_hi) == _expected_graph(case.graph, 0.80)
    page.fill("#mass", "0.3")  # a range input: fill sets the value and fires input
    page.wait_for_function("document.querySelector('#mass-value').textContent === '0.30'")
    n_lo = page.locator("line.e").count()
    assert (page.locator("circle.n").count(), n_lo) == _expected_graph(case.graph, 0.30)
    assert 0 < n_lo < n_hi
    assert f"{n_lo} edges drawn" in page.inner_text("#gcount")
    page.fill("#mass", "0.8")
    page.wait_for_function(f"document.querySelectorAll('line.e').length === {n_hi}")
    # search by token text marks exactly the drawn nodes whose token contains it
    drawn = [k.split(":") for k in page.locator("circle.n").evaluate_all("els => els.map(e => e.dataset.k)")]
    text = next(case.tokens[int(t)] for _s, t in drawn if case.tokens[int(t)].strip())
    page.fill("#gsearch", text)
    want = sum(text.lower() in case.tokens[int(t)].lower() for _s, t in drawn)
    page.wait_for_function(f"document.querySelectorAll('circle.n.match').length === {want}")
    page.fill("#gsearch", "")
    # pin an embedding-row node: its subgraph is every kept path from it to the prediction
    node = page.locator("circle.n[data-k^='0:']").first
    key = node.get_attribute("data-k")
    node.click()
    assert "pin=" in page.url and page.locator("circle.n.pin").count() == 1
    on = page.locator("line.e.on").count()
    assert 0 < on < n_hi and page.locator("line.e.dim").count() == n_hi - on
    stage, pos = key.split(":")
    assert f"pinned {case.graph['stages'][int(stage)]} / pos {pos}:" in page.inner_text("#gsub")
    _shot(page, "graph")
    # a tooltip near the window's bottom edge opens above the pointer (below it, it ran off the screen)
    box = page.evaluate("() => { FT.tip({clientX: 20, clientY: innerHeight - 4}, "
                        "'L9 pos 26\\nrelevance 0.41\\nin 3 edges\\nout 5 edges'); "
                        "var r = document.getElementById('tip').getBoundingClientRect(); FT.tip(null, ''); "
                        "return [r.top, r.bottom, r.height, innerHeight]; }")
    assert box[2] > 40 and 0 <= box[0] and box[1] <= box[3], box
    with page.expect_download() as dl:
        page.click("#export")
    data = json.loads(Path(dl.value.path()).read_text())
    assert data["pinned"] == key and len(data["edges"]) == on
    assert {tuple(e["source"]) for e in data["edges"]} | {tuple(e["target"]) for e in data["edges"]} == \
        {(n["stage"], n["token"]) for n in data["nodes"]}


def test_item_page_for_a_row_without_case(page: Any, server: dict[str, Any]) -> None:
    _open(page, server, "#/cases?has_case=false", "cases")
    page.locator("tr.row").first.click()
    page.wait_for_selector("body[data-ready=item]")
    heading = page.inner_text("main h2")
    assert heading.startswith("Item q0")
    item_id = heading.split()[1]
    completion, status = server["items"][item_id]  # read from the store before the server started
    text = page.inner_text("main")
    assert "Completion" in text and status in text and completion.strip()
    assert " ".join(completion.split())[:60] in " ".join(text.split())  # the stored completion is shown


def test_keyboard_errors_crumbs_and_paging_as_a_user_meets_them(page: Any, server: dict[str, Any]) -> None:
    """Rows and sort headers are reached with Tab and opened with Enter; a bad URL parameter reads as "where: what"
    (not pydantic's JSON); a view that fails keeps no other view's breadcrumb; past the last page the pager says so
    and links the last page."""
    _open(page, server, "#/cases", "cases")
    page.focus("th[data-col=delta_logit]")
    page.keyboard.press("Enter")
    _painted(page, "cases", "sort=delta_logit")
    assert page.get_attribute("th[data-col=delta_logit]", "aria-sort") == "ascending"
    first = page.locator("tr.row").first
    target = first.get_attribute("data-case")
    first.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-ready=case]" if target else "body[data-ready=item]")
    assert (target or "item") in page.url
    crumb = page.inner_text("#nav-crumb")
    assert crumb.strip()
    _open(page, server, "#/case/" + "0" * 24, "case")  # no such case
    # said plainly (it was "404: no such case" in red, no way back): the id, and a link to the cases table
    assert page.inner_text("#error") == f"no case has the id {'0' * 24!r} in this store"
    assert page.get_attribute("#error", "class") == "empty" and page.get_attribute("#error-back", "href") == "#/cases"
    assert page.inner_text("#nav-crumb").strip() == ""
    _open(page, server, "#/case/%E0", "case")  # not valid percent-encoding: a message, not a blank page
    assert page.inner_text("#error") == "malformed link: '%E0' is not valid percent-encoding"
    for link, said in (("#/case/", "no case id after #/case/"), ("#/graph/", "no case id after #/graph/"),
                       ("#/case/..", "'..' is not a case id"), ("#/case/a%2Fb", "'a/b' is not a case id"),
                       ("#/item", "an item link needs run_id and item_id"),  # was "422: run_id: String should …"
                       ("#/item?item_id=x", "an item link needs run_id and item_id")):
        _open(page, server, link, link.split("/")[1].split("?")[0])  # a bare "404: Not Found" from an unrouted path
        assert page.inner_text("#error").startswith("malformed link: ") and said in page.inner_text("#error"), link
    _open(page, server, "#/nowhere", "nowhere")
    assert page.inner_text("#error") == "unknown view: nowhere"
    for name in ("constructor", "__proto__", "toString"):  # Object.prototype's members are not views either
        _open(page, server, "#/" + name, name)
        assert page.inner_text("#error") == "unknown view: " + name
    _open(page, server, "#/cases?sort=bogus", "cases")  # said beside the filters; the table is drawn without it
    err = page.inner_text("#filter-error")
    assert err.startswith("422: sort: ") and "[{" not in err and "literal_error" not in err
    assert page.locator("tr.row").count() == server["n_rows"]
    _open(page, server, "#/cases?offset=1000", "cases")
    assert page.inner_text("#span") == f"no rows on this page; {server['n_rows']} rows in all"
    assert "no rows match" not in page.inner_text("main")  # they match; this page is past the last one
    page.click("#last")  # (one page here: the last is the first; test_serve_browser_ux2.py pages by 3)
    page.wait_for_function("document.querySelector('#span') && document.querySelector('#span').textContent === "
                           f"'1–{server['n_rows']}'")


def test_review_mode_records_a_decision(page: Any, server: dict[str, Any]) -> None:
    case = server["cases"][0]
    _open_review(page, server, case)
    # the category picker opens on the case's own category; an override without a comment is refused in the page
    assert page.input_value("#rv-category") == case.effective_category
    page.click("#rv-override")
    assert page.inner_text("#rv-status") == "an override needs a comment: say why"
    page.fill("#rv-comment", "the contrast is also wrong")
    page.click("#rv-reject")
    page.wait_for_function("document.body.dataset.ready === 'case' && document.querySelector('#review') && "
                           "document.querySelector('#review').textContent.includes('reject: the contrast')")
    assert "reject: the contrast is also wrong" in page.inner_text("#review")
    assert re.search(r"\d\d:\d\d:\d\d UTC · reject", page.inner_text("#review"))  # whole seconds, in UTC
    assert re.fullmatch(r"pair rejected \(the decision in force, \S+ \d\d:\d\d:\d\d UTC\); export-dpo, "
                        r"finetune, status and the report leave it out", page.inner_text("#rv-in-force"))
    _shot(page, "review")
    rows = [(x["decision"], x["comment"], x["case_id"])  # as the server holds the file
            for x in _api(server, "api/reviews", "review_base")["reviews"]]
    assert rows == [("reject", "the contrast is also wrong", case.case_id)]
    page.fill("#rv-comment", "on second thought, fine")  # the log keeps both; the newer one is in force
    page.click("#rv-accept")
    page.wait_for_function("document.querySelector('#rv-in-force').textContent.startsWith('pair accepted')")
    notes = page.locator("#review .note").all_inner_texts()
    assert notes[0].endswith("accept: on second thought, fine")
    assert notes[1].endswith("reject: the contrast is also wrong (superseded)")
    for why in ("first override", "second override"):  # an older category override is superseded by the newer
        page.fill("#rv-comment", why)
        page.select_option("#rv-category", next(k for k in ("M-IA", "NC-IA+M-AG", "NC-IA+AG")
                                                if k != page.input_value("#rv-category")))
        page.click("#rv-override")
        page.wait_for_function(f"document.querySelector('#review').textContent.includes('{why}')")
    notes = page.locator("#review .note").all_inner_texts()
    assert notes[0].endswith(": second override") and notes[1].endswith(": first override (superseded)"), notes


def test_api_reference_from_openapi_without_cdn(page: Any, server: dict[str, Any]) -> None:
    import urllib.request

    with urllib.request.urlopen(server["base"] + "openapi.json", timeout=10) as r:
        spec = json.loads(r.read())
    ops = sum(len(v) for v in spec["paths"].values())
    page.goto(server["base"] + "docs")  # FastAPI's own page would pull Swagger UI from a CDN; this one is ours
    page.wait_for_selector("body[data-ready=api]")
    assert page.url.endswith("/#/api")
    assert page.locator("#api tr.api-op").count() == ops >= 8
    assert "GET /api/table" in page.inner_text("#api")
    _shot(page, "api")


def test_no_request_left_loopback_and_store_unchanged(page: Any, server: dict[str, Any]) -> None:
    _open(page, server, "#/cases", "cases")
    assert server["requests"], "no request was recorded"
    outside = [u for u in server["requests"] if not u.startswith((server["base"], server["review_base"], "blob:"))
               and not u.startswith("data:")]
    assert outside == []
    assert server["errors"] == []
    assert sha256(server["store"]) == server["sha"]


def test_two_pair_runs_over_one_collection_run_are_said_above_the_table(page: Any, server: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    """With a second pair run over the toy collection run, the table says that failures have a row per pair run,
    the pair-run facet shows each run's settings, and picking one run removes the note and the doubled rows."""
    from failtrace.store.records import RunRecord

    store = tmp_path / "two.duckdb"
    shutil.copy(server["store"], store)
    with open_store(store) as st:
        first = st.runs("pairs")[0]
        st.ensure_run(RunRecord(run_id="p2-unbounded", stage="pairs", benchmark=first.benchmark, model=first.model,
                                parent_run_id=first.parent_run_id, settings={**first.settings, "try_unbounded": True}))
        fails = [r["item_id"] for r in st.results(first.parent_run_id) if r["status"] == "fail"]
        for item_id in fails:
            st.write_pair("p2-unbounded", first.parent_run_id, item_id, first.benchmark,
                          {"status": "no_target", "rollouts": 1, "checks": 1, "positions_walked": 1,
                           "unverifiable_rollouts": 0, "hit_length_limit": False})
    srv, thread, base = _start(store, review=False)
    try:
        page.goto(base + "#/cases")
        page.wait_for_selector("body[data-ready=cases]", timeout=20000)
        assert "searched by 2 pair runs" in page.inner_text("#doubled")
        assert page.inner_text("#total") == f"{server['n_rows'] + len(fails)} rows"
        labels = page.locator(".facet[data-facet=pair_run] label").all_inner_texts()
        assert any(t.startswith("p2-unbound · ") and "try-unbounded" in t for t in labels), labels
        page.check(".facet[data-facet=pair_run] input[value='p2-unbounded']")
        page.wait_for_function("document.querySelector('#total').textContent === '%d rows'" % len(fails))
        assert page.locator("#doubled").count() == 0
    finally:
        srv.should_exit = True
        thread.join(10)


def test_tokens_print_as_failtrace_show_prints_them(page: Any, server: dict[str, Any]) -> None:
    """The explorer's FT.shown equals views.common.shown on whitespace, control characters (a C0 one had no glyph:
    a token of the toy vocabulary, "\\x05", was an empty-looking cell), DEL, C1 codes and lone surrogates."""
    from failtrace.views.common import shown

    case = server["cases"][0]
    _open(page, server, f"#/case/{case.case_id}", "case")
    texts = ["", " a\tb\r\n", "\x05", "\x1b[31mRED\x07", "x\x7fy", "\x85\x9f", "caf\u00e9 \U0001f600", "a\ud800b",
             "\udc00z", "\x05\udc00"]  # (a surrogate pair is one character in JS but two in Python: not a token)
    got = page.evaluate("ts => ts.map(t => FT.shown(t))", texts)
    assert got == [shown(t) for t in texts]
    assert got[2] == "␅" and got[0] == "∅"
