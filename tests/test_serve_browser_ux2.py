"""The explorer's second round of fixes a person met (a probe of the demo store), in Debian's Chromium over the toy
store of tests/test_serve_browser.py (its fixtures and helpers, shared): the item page reads as text, not JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from test_serve_browser import (_api, _graph_case, _open, _open_review, _painted, page,  # noqa: E402,F401
                                server)  # (the module's fixtures and helpers, shared)


def _shown(tok: str) -> str:  # FT.shown: whitespace and control characters made visible, ∅ for an empty token
    from failtrace.views.common import shown

    return shown(tok)


def _item_hash(server: dict[str, Any], item_id: str) -> str:
    return f"#/item?run_id={server['run_id']}&item_id={item_id}"


def test_item_page_reads_as_text_not_json(page: Any, server: dict[str, Any]) -> None:
    """The item page dumped JSON: a chat prompt with escaped \\n, the checker's reasons as an array, the pairs as a
    JSON dump (a passing item showed `[]`). Now: the messages with their roles, whitespace kept; reasons as a list;
    each pair as a key/value table linking its case; words where there is no pair."""
    passed = next(i for i, (_, status) in server["items"].items() if status == "pass")
    _open(page, server, _item_hash(server, passed), "item")
    assert page.inner_text("#no-pair") == "no pair (the item passed)"
    assert "[]" not in page.inner_text("main") and page.locator("table.pair").count() == 0

    case = server["cases"][0]  # a failure with a case: its pair links to it, its reasons are list items
    _open(page, server, _item_hash(server, case.item_id), "item")
    it = _api(server, f"/api/item?run_id={server['run_id']}&item_id={case.item_id}")
    assert page.locator("#reasons li").all_text_contents() == it["reasons"] and it["reasons"]
    pair = page.locator(f"table.pair[data-pair-run='{case.pair_run_id}']")
    assert pair.locator("a.to-case").get_attribute("href") == f"#/case/{case.case_id}"
    rows = dict(pair.locator("tr").evaluate_all("trs => trs.map(t => [t.cells[0].textContent, "
                                                "t.cells[1].textContent])"))
    p = it["pairs"][0]
    assert rows["position"] == str(p["position"]) and rows["reason"] == p["reason"]
    # the pair run reads as the facet names it, its collection's budget included; the length is the answer's
    meta = _api(server, "/api/meta")["pair_runs"][case.pair_run_id]
    assert rows["pair run"] == f"{case.pair_run_id} · {meta['settings']} · {meta['collection']}" and meta["collection"]
    kv = dict(page.locator("main .kv > div").evaluate_all("ds => ds.map(d => [d.children[0].textContent, "
                                                           "d.children[1].textContent])"))
    assert kv["answer tokens"] == str(it["n_tokens"]) and "tokens" not in kv
    assert rows["target → contrast"] == f"‹{_shown(p['target_text'])}› → ‹{_shown(p['contrast_text'])}›"
    assert rows["status"].startswith(_api(server, "/api/meta")["pair_status_text"][p["status"]][0])
    page.click(f"table.pair[data-pair-run='{case.pair_run_id}'] a.to-case")
    _painted(page, "case", case.case_id)

    messages = [{"role": "system", "content": "Be brief.\n\n    keep   these spaces"},
                {"role": "user", "content": "line one\nline two\t(tab)"}]

    def chat(route: Any) -> None:  # a chat prompt, a failure no pair run has searched yet
        body = route.fetch().json()
        body.update(prompt=messages, pairs=[], status="fail", reasons=["first reason", "second reason"])
        route.fulfill(json=body)

    page.route("**/api/item?*", chat)
    try:
        _open(page, server, _item_hash(server, passed), "item")
    finally:
        page.unroute("**/api/item?*")
    msgs = page.locator("#prompt .msg")
    assert msgs.evaluate_all("ms => ms.map(m => m.dataset.role)") == ["system", "user"]
    assert msgs.locator("pre").evaluate_all("ps => ps.map(p => p.textContent)") == [m["content"] for m in messages]
    assert page.locator("#prompt .msg .role").first.inner_text().startswith("system")
    text = page.inner_text("main")
    assert "\\n" not in text and '"role"' not in text and "[" not in page.inner_text("#reasons")
    assert page.locator("#reasons li").all_text_contents() == ["first reason", "second reason"]
    assert page.inner_text("#no-pair").startswith("not searched yet")


# WCAG 2 contrast of an element's text against its own background colour (both as the browser computed them)
_CONTRAST_JS = """e => {
  const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = c => {
    const v = c.map(x => { x /= 255; return x <= 0.04045 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
  const s = getComputedStyle(e);
  const bg = s.backgroundColor === 'rgba(0, 0, 0, 0)' ? 'rgb(255, 255, 255)' : s.backgroundColor;
  const a = lum(rgb(e instanceof SVGElement ? s.fill : s.color)), b = lum(rgb(bg));
  return [e.textContent, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
}"""


def _contrasts(page: Any, selector: str) -> list[tuple[str, float]]:
    return [tuple(x) for x in page.locator(selector).evaluate_all(f"es => es.map({_CONTRAST_JS})")]


def test_labels_reach_wcag_aa_contrast(page: Any, server: dict[str, Any]) -> None:
    """White on the NC-IA+M-AG amber was 2.15:1, on the pattern 'none' grey 2.54:1; the 11 px segment labels
    3.1-3.7:1 and the graph's grey special-token labels 2.54:1. Every one now reads at 4.5:1 or more."""
    colours = _api(server, "/api/meta")["colors"]
    cats, pats = list(colours["categories"]), list(colours["patterns"])

    def every_colour(route: Any) -> None:  # each category and pattern of /api/meta on some row
        body = route.fetch().json()
        for i, r in enumerate(body["rows"]):
            r.update(category=cats[i % len(cats)], pattern=pats[i % len(pats)])
        route.fulfill(json=body)

    page.route("**/api/table?*", every_colour)
    try:
        _open(page, server, "#/cases", "cases")
    finally:
        page.unroute("**/api/table?*")
    badges = _contrasts(page, "table.cases .badge")
    assert {t for t, _ in badges} == set(cats) | set(pats)
    assert [b for b in badges if b[1] < 4.5] == [], badges
    case = max(server["cases"], key=lambda c: len(set(c.segment_labels())))
    _open(page, server, f"#/case/{case.case_id}", "case")
    segs = _contrasts(page, "details.seg > summary")
    assert segs and [s for s in segs if s[1] < 4.5] == [], segs
    badges = _contrasts(page, ".badge")  # the case's category and pattern
    assert len(badges) >= 2 and [b for b in badges if b[1] < 4.5] == [], badges

    def segment_colours(route: Any) -> None:  # every segment colour of /api/meta, one per token
        body = route.fetch().json()
        names = list(colours["segments"])
        body["labels"] = [names[i % len(names)] for i in range(len(body["labels"]))]
        route.fulfill(json=body)

    page.route(f"**/api/cases/{case.case_id}", segment_colours)
    try:
        _open(page, server, "#/cases", "cases")  # (the same hash again would not draw the case again)
        _open(page, server, f"#/case/{case.case_id}", "case")
    finally:
        page.unroute(f"**/api/cases/{case.case_id}")
    segs = _contrasts(page, "details.seg > summary")
    assert len({t.split(" ")[0] for t, _ in segs}) == min(len(colours["segments"]), len(case.tokens))
    assert [s for s in segs if s[1] < 4.5] == [], segs
    graph = max(server["cases"], key=lambda c: sum(c.special_mask))
    _open(page, server, f"#/graph/{graph.case_id}", "graph")
    special = page.locator("#graph > text").evaluate_all("ts => ts.filter(t => t.style.fill).map(t => t.textContent)")
    labels = _contrasts(page, "#graph > text")
    assert special and [t for t in labels if t[1] < 4.5] == [], labels


_NAME_JS = """e => {
  const by = e.getAttribute('aria-labelledby');
  const named = e.getAttribute('aria-label') || (by && by.split(' ').map(i => document.getElementById(i))
    .filter(Boolean).map(x => x.textContent).join(' ')) || [...(e.labels || [])].map(l => l.textContent).join(' ')
    || (e.tagName === 'BUTTON' ? e.textContent : '');
  return [e.tagName.toLowerCase() + (e.id ? '#' + e.id : ''), (named || '').trim()];
}"""


def test_every_control_has_an_accessible_name(page: Any, server: dict[str, Any]) -> None:
    """The Δℓ/k* bounds, the search boxes, the review's comment fields and category had only a placeholder or
    nothing; the "use as contrast" buttons all had the same name. Every control on the table, case (review mode) and
    graph pages is named now, and each use-as-contrast button names its token."""
    case = next(c for c in server["cases"] if _api(server, f"/api/cases/{c.case_id}")["alternatives"])
    views = ((server["base"] + "#/cases", "cases"), (server["review_base"] + f"#/case/{case.case_id}", "case"),
             (server["base"] + f"#/graph/{_graph_case(server).case_id}", "graph"))
    for url, ready in views:
        page.goto(url)
        page.wait_for_selector(f"body[data-ready={ready}]", timeout=20000)
        names = page.locator("main input, main select, main textarea, main button").evaluate_all(
            f"es => es.map({_NAME_JS})")
        assert len(names) >= 3 and [n for n in names if not n[1]] == [], (ready, [n for n in names if not n[1]])
    _open_review(page, server, case)
    picks = page.locator("#alternatives button.pick").evaluate_all("bs => bs.map(b => b.getAttribute('aria-label'))")
    page_names = [f"use ‹{_shown(a['text'])}› as contrast" for a in _api(server, f"/api/cases/{case.case_id}")
                  ["alternatives"] if not a["is_target"] and not a["is_contrast"]]
    assert len(picks) > 1 and len(set(picks)) == len(picks)
    assert [p.split(" (id ")[0] + (" as contrast" if " (id " in p else "") for p in picks] == page_names


def test_focus_stays_on_the_control_after_a_redraw(page: Any, server: dict[str, Any]) -> None:
    """After a sort or a facet change the table was drawn anew and focus fell to <body>: a keyboard user started
    again from the top of the page. Focus now returns to the sort header, facet box or input that was used."""
    _open(page, server, "#/cases", "cases")
    page.focus("th[data-col=delta_logit]")
    page.keyboard.press("Enter")
    _painted(page, "cases", "sort=delta_logit")
    assert page.evaluate("document.activeElement.dataset.col") == "delta_logit"
    page.keyboard.press("Enter")  # again, without moving: descending
    _painted(page, "cases", "desc=1")
    assert page.evaluate("document.activeElement.dataset.col") == "delta_logit"
    box = page.locator("input[data-facet=verdict][value=fail]")
    box.focus()
    page.keyboard.press("Space")
    _painted(page, "cases", "verdict=fail")
    assert page.evaluate("[document.activeElement.dataset.facet, document.activeElement.value, "
                         "document.activeElement.checked]") == ["verdict", "fail", True]
    page.locator("#search").focus()
    page.keyboard.type("q0")
    page.keyboard.press("Enter")
    _painted(page, "cases", "q=q0")
    assert page.evaluate("document.activeElement.id") == "search"
    page.locator("#k_min").focus()
    page.keyboard.type("0")
    page.keyboard.press("Tab")  # the bound is applied as focus moves on: focus is where Tab took it
    _painted(page, "cases", "k_min=0")
    assert page.evaluate("document.activeElement.id") == "k_max"


def test_a_page_past_the_end_links_the_last_page_and_prev_goes_there(page: Any, server: dict[str, Any]) -> None:
    """#/cases?offset=1000 with fewer rows said only "none on this page", and prev went to offset 950: another empty
    page. Now it says how many rows there are, links the last page, and prev goes to the last page with rows."""
    n = server["n_rows"]

    def small_pages(route: Any) -> None:  # 3 rows a page, so the toy store has several pages
        url = route.request.url.replace("limit=50", "limit=3")
        route.fulfill(response=route.fetch(url=url))

    page.route("**/api/table?*", small_pages)
    try:
        _open(page, server, "#/cases?verdict=fail&offset=1000", "cases")
        fails = int(page.inner_text("#total").split()[0])
        last = (fails - 1) // 3 * 3
        assert fails > 3 and page.inner_text("#span") == f"no rows on this page; {fails} rows in all"
        assert page.get_attribute("#last", "href") == f"#/cases?verdict=fail&offset={last}"
        page.click("#prev")
        _painted(page, "cases", f"offset={last}")
        assert page.evaluate("location.hash") == f"#/cases?verdict=fail&offset={last}"
        assert page.inner_text("#span") == f"{last + 1}–{fails}" and page.locator("tr.row").count() == fails - last
        _open(page, server, "#/cases?offset=1000", "cases")
        assert page.locator("#first").count() == 1  # several pages: the first is offered too
        page.click("#last")
        _painted(page, "cases", f"offset={(n - 1) // 3 * 3}")
        assert page.locator("tr.row").count() == n - (n - 1) // 3 * 3
    finally:
        page.unroute("**/api/table?*")


def test_graph_search_finds_tokens_as_their_labels_print_them(page: Any, server: dict[str, Any]) -> None:
    """The labels print a space as · and a newline as ↵, but the search compared only the raw token: on the demo
    store "·water", typed as the label reads, found 0 nodes while "water" found 30."""
    case = _graph_case(server)
    words = [" water", "water\n", "x"]

    def worded(route: Any) -> None:  # the demo store's kind of tokens: a leading space, a trailing newline
        body = route.fetch().json()
        body["tokens"] = [words[i % 3] for i in range(len(body["tokens"]))]
        route.fulfill(json=body)

    page.route(f"**/api/cases/{case.case_id}/graph", worded)
    try:
        _open(page, server, f"#/graph/{case.case_id}", "graph")
        drawn = page.locator("circle.n").evaluate_all("cs => cs.map(c => +c.dataset.k.split(':')[1])")
        for query, kinds in (("·water", {0}), ("water↵", {1}), ("water", {0, 1}), ("WATER", {0, 1}), (" water", {0}),
                             ("·", {0})):
            page.fill("#gsearch", query)
            found = page.locator("circle.n.match").evaluate_all("cs => cs.map(c => +c.dataset.k.split(':')[1])")
            want = [p for p in drawn if p % 3 in kinds]
            assert want and sorted(found) == sorted(want), query
    finally:
        page.unroute(f"**/api/cases/{case.case_id}/graph")


def test_heatmap_tokens_reach_wcag_aa_contrast(page: Any, server: dict[str, Any]) -> None:
    """Token text turned white at |R| > 0.62, where white read at 2.6-2.8:1 (`·cat` on the demo store: 3.05:1).
    Every shade of the case strip now reads at 4.5:1 or more, with the thresholds of /api/meta."""
    case = max(server["cases"], key=lambda c: len(c.tokens))

    def every_shade(route: Any) -> None:  # the strip's tokens spread over the whole scale, -1 to 1
        body = route.fetch().json()
        for m in body["methods"].values():
            n = len(m["norm"])
            m["norm"] = [round(-1 + 2 * i / max(n - 1, 1), 3) for i in range(n)]
        route.fulfill(json=body)

    page.route(f"**/api/cases/{case.case_id}", every_shade)
    try:
        _open(page, server, f"#/case/{case.case_id}", "case")
    finally:
        page.unroute(f"**/api/cases/{case.case_id}")
    shades = _contrasts(page, "#strip .tok:not(.sp)")
    assert len(shades) > 20 and [s for s in shades if s[1] < 4.5] == [], sorted(shades, key=lambda s: s[1])[:3]


def _held(page: Any, pattern: str) -> list[Any]:
    """Requests matching ``pattern`` are held (not answered) until the test lets them go: a slow server."""
    held: list[Any] = []
    page.route(pattern, lambda route: held.append(route))
    return held


def _until_asked(page: Any, held: list[Any]) -> None:
    for _ in range(200):
        if held:
            return
        page.wait_for_timeout(50)
    raise AssertionError("the view never asked the server")


def _answered_late(page: Any, pattern: str, asked: str, moved: str, ready: str) -> None:
    """Open ``asked`` with its request held, move to ``moved`` (painted), then let the held request be answered."""
    held = _held(page, pattern)
    try:
        page.evaluate(f"location.hash = '{asked}'")
        _until_asked(page, held)
        page.evaluate(f"location.hash = '{moved}'")
        _painted(page, ready, moved)
        held[0].fulfill(response=held[0].fetch())
        page.wait_for_timeout(700)
    finally:
        page.unroute(pattern)


def test_a_slow_answer_does_not_paint_over_the_view_the_user_moved_to(page: Any, server: dict[str, Any]) -> None:
    """A case answered after the user had moved on was painted over the newer view (the URL said #/api, the page showed
    the case), and a short id's 404 that came late rewrote the URL of the view moved to. A read answered after the
    view changed is now dropped."""
    case = server["cases"][0]
    _open(page, server, "#/cases", "cases")
    _answered_late(page, f"**/api/cases/{case.case_id}", f"#/case/{case.case_id}", "#/api", "api")
    assert page.locator("#strip").count() == 0 and page.locator("main#view").inner_text().strip()
    assert page.evaluate("[location.hash, document.body.dataset.ready]") == ["#/api", "api"]
    short = case.case_id[:8]  # a short id is followed to the whole one through a 404: held, then answered late
    _answered_late(page, f"**/api/cases/{short}", f"#/case/{short}", "#/cases", "cases")
    assert page.evaluate("location.hash") == "#/cases" and page.locator("table#cases").count() == 1
    assert page.locator("#strip").count() == 0


def test_a_hand_edited_link_reads_as_what_is_drawn(page: Any, server: dict[str, Any]) -> None:
    """`?p=0` opened the graph at p = 1.00 (every edge) while -1 and 0.005 gave 0.01; `?method=bogus` drew attnlrp
    and kept `method=bogus` in the URL. Now p = 0 is 0.01, and the URL names the method drawn."""
    case = _graph_case(server)
    _open(page, server, f"#/graph/{case.case_id}?p=0", "graph")
    assert page.inner_text("#mass-value") == "0.01" and "p=0.01" in page.evaluate("location.hash")
    _open(page, server, f"#/case/{case.case_id}?method=bogus", "case")
    assert page.evaluate("location.hash") == f"#/case/{case.case_id}?method=attnlrp"
    assert page.get_attribute("button[data-method=attnlrp]", "aria-pressed") == "true"


def test_stage_names_stay_in_view_when_a_wide_graph_scrolls(page: Any, server: dict[str, Any]) -> None:
    """On a graph wider than its box (the demo's py-first-word: 1560 px in 1214), a sideways scroll took the L0…L29
    row names out of view. They sit on a band that follows the scroll, also after the graph is drawn again."""
    case = _graph_case(server)
    page.set_viewport_size({"width": 420, "height": 900})  # the toy graph is wider than a narrow page's box
    try:
        _open(page, server, f"#/graph/{case.case_id}", "graph")
        wide = page.evaluate("(() => { const w = document.querySelector('.gwrap'); "
                             "return w.scrollWidth - w.clientWidth; })()")
        assert wide > 50
        left = "(() => { const w = document.querySelector('.gwrap').getBoundingClientRect().left; " \
               "return [...document.querySelectorAll('#graph g.stages text')].map(t => " \
               "t.getBoundingClientRect().left - w); })()"
        before = page.evaluate(left)
        assert before and all(0 <= x < 40 for x in before), before
        page.evaluate("document.querySelector('.gwrap').scrollLeft = 10000")
        page.wait_for_timeout(100)
        assert all(0 <= x < 40 for x in page.evaluate(left)), page.evaluate(left)
        page.fill("#mass", "0.5")  # drawn again while scrolled: the names stay at the left edge
        page.wait_for_function("document.querySelector('#mass-value').textContent === '0.50'")
        assert page.evaluate("document.querySelector('.gwrap').scrollLeft") > 0
        assert all(0 <= x < 40 for x in page.evaluate(left)), page.evaluate(left)
    finally:
        page.set_viewport_size({"width": 1360, "height": 900})


def test_an_old_case_link_says_which_case_is_current(page: Any, server: dict[str, Any]) -> None:
    """An old link opened a case of an earlier analysis as if it were current (show refuses the same id and names
    the current case). The page now says so and links the current case; a current case has no such note."""
    first, other = server["cases"][0], server["cases"][1]
    _open(page, server, f"#/case/{other.case_id}", "case")
    assert page.locator("#stale").count() == 0

    def stale(route: Any) -> None:
        body = route.fetch().json()
        body["current"] = {"is_current": False, "analysis_id": "newer", "case_id": other.case_id}
        route.fulfill(json=body)

    page.route(f"**/api/cases/{first.case_id}", stale)
    try:
        _open(page, server, f"#/case/{first.case_id}", "case")
        note = page.inner_text("#stale")
        assert note.startswith("This case is from an older analysis of its pair run.")
        assert page.locator("#stale a").get_attribute("href") == f"#/case/{other.case_id}"
        page.click("#stale a")
        _painted(page, "case", other.case_id)
    finally:
        page.unroute(f"**/api/cases/{first.case_id}")
