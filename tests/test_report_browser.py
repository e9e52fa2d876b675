"""The report as a person sees it: rendered by headless Chromium (Debian's ``chromium``, installed by
scripts/setup.sh --tests, driven by Playwright through its executable path). The main elements must be visible, every
figure must decode, each case must show all its tokens, the method buttons must recolour the heatmap, and the page must
make no network request at all (every request is routed; only the file itself may load).

Chromium missing is a failure, not a skip: the setup script installs it. ``FAILTRACE_CHROMIUM`` points at another
binary.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_cases import sample  # noqa: E402

from failtrace.attribution.normalize import normalize  # noqa: E402
from failtrace.report.build import build_report  # noqa: E402


def _chromium() -> str:
    path = os.environ.get("FAILTRACE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium binary: run scripts/setup.sh --tests (apt-get install -y chromium) or set "
                    "FAILTRACE_CHROMIUM")
    return path


@pytest.fixture(scope="module")
def page_and_cases(tmp_path_factory: pytest.TempPathFactory):
    from playwright.sync_api import sync_playwright

    cases, rows, pairs = sample()
    out = tmp_path_factory.mktemp("report")
    index = build_report(cases, rows, out, pairs)
    requests: list[str] = []
    blocked: list[str] = []

    def route(r):  # every request passes here: only the page's own file may load
        url = r.request.url
        requests.append(url)
        if url.startswith("file://") or url.startswith("data:"):
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"], headless=True)
        try:
            ctx = browser.new_context(viewport={"width": 1360, "height": 900})
            ctx.route("**/*", route)
            page = ctx.new_page()
            page.on("request", lambda req: requests.append(req.url))
            page.goto(index.as_uri(), wait_until="load")
            yield page, cases, requests, blocked, index
        finally:
            browser.close()


def test_no_network_request(page_and_cases):
    page, _cases, requests, blocked, index = page_and_cases
    page.mouse.wheel(0, 20000)  # scroll everything (lazy images) into view, then back
    page.wait_for_timeout(300)
    page.evaluate("window.scrollTo(0, 0)")
    assert blocked == []
    assert index.as_uri() in requests
    assert all(u.startswith("file://") or u.startswith("data:") for u in requests), requests


def test_summary_table_nav_and_figures_visible(page_and_cases):
    page, *_ = page_and_cases
    assert page.locator("#table1").is_visible()
    assert page.locator("#table1 tbody tr").count() == 3
    # Table 1 fits the page, and a model name is one line (it broke at its hyphens into three)
    fits = page.evaluate("() => { const t = document.querySelector('#table1'); "
                         "return t.scrollWidth <= t.parentElement.clientWidth; }")
    lines = page.evaluate("() => [...document.querySelectorAll('#table1 td.nw')].map(td => { "
                          "const r = document.createRange(); r.selectNodeContents(td); "
                          "return new Set([...r.getClientRects()].map(b => Math.round(b.top))).size; })")
    assert fits and lines and set(lines) == {1}, (fits, lines)
    assert page.locator("nav.bar").is_visible()
    page.locator("#cases").scroll_into_view_if_needed()
    box = page.locator("nav.bar").bounding_box()
    assert box is not None and abs(box["y"]) < 1  # sticky: still at the top after scrolling
    imgs = page.locator("main img")
    assert imgs.count() == 5
    for i in range(imgs.count()):
        img = imgs.nth(i)
        img.scroll_into_view_if_needed()
        assert img.is_visible()
        assert img.evaluate("e => e.complete && e.naturalWidth") > 100


def test_figures_side_by_side_print_at_one_scale(page_and_cases):
    """The segment figure grows with the number of segments; squeezed into half the row it printed its text at about
    half the faithfulness figure's size. Each pair of figures must be shown at the same scale (displayed width over
    the PNG's own width, both drawn at one dpi), within 5 %."""
    page, *_ = page_and_cases
    rows = page.locator("section.block .grid2")
    pairs = [rows.nth(i).locator("img") for i in range(rows.count()) if rows.nth(i).locator("img").count() == 2]
    assert pairs  # the sample's benchmark sections (segment relevance beside faithfulness)
    for imgs in pairs:
        scales = []
        for j in range(2):
            imgs.nth(j).scroll_into_view_if_needed()
            scales.append(imgs.nth(j).evaluate("e => e.getBoundingClientRect().width / e.naturalWidth"))
        assert abs(scales[0] / scales[1] - 1) < 0.05, scales


def test_each_case_shows_all_tokens(page_and_cases):
    page, cases, *_ = page_and_cases
    for c in cases:
        art = page.locator(f"#case-{c.case_id}")
        art.scroll_into_view_if_needed()
        assert art.is_visible()
        toks = art.locator(".strip .tok")
        assert toks.count() == len(c.tokens)
        assert toks.nth(len(c.tokens) - 1).is_visible()
        # a context that fits its box has nothing above it to announce
        if art.locator(".strip").evaluate("s => s.scrollHeight <= s.clientHeight"):
            assert art.locator("button.above").count() == 0
    # whitespace is drawn visibly: a token that is a newline shows ↵
    art = page.locator(f"#case-{cases[0].case_id}")
    nl = [i for i, t in enumerate(cases[0].tokens) if t == "\n"][0]
    tok = art.locator(f'.tok[data-p="{nl}"]')
    # a case far off screen is not rendered (content-visibility: auto), so it has no innerText until it is in view
    # and the next frame has been drawn
    tok.scroll_into_view_if_needed()
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    assert tok.inner_text() == "↵"


def _rgb(v: float) -> str:
    a = min(1.0, abs(v))
    end = (220, 38, 38) if v > 0 else (37, 99, 235)
    return "rgb({}, {}, {})".format(*(math.floor(255 + (e - 255) * a + 0.5) for e in end))  # as Math.round


def test_method_buttons_recolour_the_heatmap(page_and_cases):
    page, cases, *_ = page_and_cases
    c = cases[0]
    art = page.locator(f"#case-{c.case_id}")
    art.scroll_into_view_if_needed()
    p = int(np.flatnonzero(~np.array(c.special_mask))[3])
    tok = art.locator(f'.tok[data-p="{p}"]')
    for m in ("gradxinput", "attnlrp"):
        art.locator(f'.methods button[data-method="{m}"]').click()
        want = round(float(normalize(c.methods[m].input_relevance, c.special_mask)[p]), 3)
        assert tok.evaluate("e => getComputedStyle(e).backgroundColor") == _rgb(want)
        assert art.locator(f'.methods button[data-method="{m}"]').get_attribute("aria-pressed") == "true"
        # the masking-order table follows the button: only the chosen method's block is visible
        visible = [d.get_attribute("data-method") for d in art.locator(".masked-for").all() if d.is_visible()]
        assert visible == [m]


def test_a_method_switch_keeps_token_text_readable(page_and_cases):
    """The page drew readable ink, but a method switch (report.js) went back to white from |R| 0.62 on, where it read
    at 2.6:1. Every shade over the scale now keeps 4.5:1 or more after a switch."""
    page, cases, *_ = page_and_cases
    c = cases[0]
    art = page.locator(f"#case-{c.case_id}")
    art.scroll_into_view_if_needed()
    # spread the chosen method's values over the whole scale, as a switch would read them (put back below)
    kept = art.locator("script.case-data").text_content()
    art.locator("script.case-data").evaluate("""s => { const d = JSON.parse(s.textContent);
        const n = d.norm.gradxinput.length; d.norm.gradxinput = d.norm.gradxinput.map((_, i) => -1 + 2 * i / (n - 1));
        s.textContent = JSON.stringify(d); }""")
    art.locator('.methods button[data-method="gradxinput"]').click()
    ratios = art.locator(".strip .tok:not(.sp)").evaluate_all("""ts => ts.map(t => {
        const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
        const lum = c => { const v = c.map(x => { x /= 255; return x <= 0.04045 ? x / 12.92
                                                   : ((x + 0.055) / 1.055) ** 2.4; });
                           return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
        const s = getComputedStyle(t), a = lum(rgb(s.color)), b = lum(rgb(s.backgroundColor));
        return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); })""")
    art.locator("script.case-data").evaluate("(s, t) => { s.textContent = t; }", kept)
    art.locator('.methods button[data-method="attnlrp"]').click()
    assert len(ratios) > 10 and min(ratios) >= 4.5, sorted(ratios)[:3]


def test_case_filter(page_and_cases):
    page, cases, *_ = page_and_cases
    page.locator("#case-bench").select_option("math")
    shown = [c for c in cases if page.locator(f"#case-{c.case_id}").is_visible()]
    assert {c.benchmark for c in shown} == {"math"} and len(shown) == 3
    page.locator("#case-bench").select_option("")
    page.locator("#case-filter").fill("ifeval/3")
    assert [c.item_id for c in cases if page.locator(f"#case-{c.case_id}").is_visible()] == ["ifeval/3"]
    # a token typed with its leading space finds the case whose target or contrast it is (shown as ·token): it
    # found none
    spaced = next(c for c in cases if c.target_text.startswith(" ") and c.target_text.strip())
    page.locator("#case-filter").fill(spaced.target_text)
    seen = [c for c in cases if page.locator(f"#case-{c.case_id}").is_visible()]
    assert spaced in seen, [c.item_id for c in seen]
    page.locator("#case-filter").fill("")


def test_long_context_opens_at_the_prediction_and_rows_find_their_token(page_and_cases, tmp_path: Path) -> None:
    """A context taller than its box opens scrolled to the prediction (its last token), not at the system prompt; a
    masking-order row brings its token into view and marks it; the tooltip names R and the normalised value."""
    from report_cases import make_case, status_row

    case = make_case(0, "ifeval", "M-IA", "OIT", {"attnlrp": 2})
    case.tokens = [t if sp else t + "\n\n" for t, sp in zip(case.tokens, case.special_mask)]  # two lines a token
    gap = next(i for i, sp in enumerate(case.special_mask) if not sp)
    case.methods["attnlrp"].input_relevance[gap] = float("nan")  # not computed there: embedded as null
    rows = [status_row("ifeval", "collect-1", "pairs-1", 1, {"clean": 1})]
    index = build_report([case], rows, tmp_path / "r", [])
    page = page_and_cases[0].context.browser.new_page(viewport={"width": 1360, "height": 900})
    if True:
        try:
            page.goto(index.as_uri(), wait_until="load")
            strip = page.locator(f"#case-{case.case_id} .strip")

            def in_box(pos: int) -> bool:  # the token lies inside the strip's visible area
                return strip.evaluate(f"""s => {{ const t = s.querySelector('.tok[data-p="{pos}"]');
                    const a = s.getBoundingClientRect(), b = t.getBoundingClientRect();
                    return b.top >= a.top && b.bottom <= a.bottom; }}""")

            assert strip.evaluate("s => s.scrollHeight > 2 * s.clientHeight && s.scrollTop > 0")
            n = len(case.tokens)
            assert in_box(n - 1) and not in_box(1)
            # opened there, a line above the box says how many tokens are out of sight above; it leads to the start
            hint = page.locator(f"#case-{case.case_id} button.above")
            above = strip.evaluate("""s => [...s.querySelectorAll('.tok')].filter(t =>
                t.getBoundingClientRect().bottom <= s.getBoundingClientRect().top).length""")
            assert above > 0 and hint.is_visible()
            assert hint.inner_text() == f"\u2191 {above} earlier tokens above: show the start"
            hint.click()
            page.wait_for_function(f"() => document.querySelector('#case-{case.case_id} button.above')"
                                   ".classList.contains('gone')")
            assert in_box(1) and strip.evaluate("s => s.scrollTop") == 0
            assert hint.evaluate("b => getComputedStyle(b).visibility") == "hidden"
            strip.evaluate("s => { s.scrollTop = s.scrollHeight; }")  # back down: the line comes back
            page.wait_for_function(f"() => !document.querySelector('#case-{case.case_id} button.above')"
                                   ".classList.contains('gone')")
            early = min(page.locator(f"#case-{case.case_id} table.masked tr[data-p]").evaluate_all(
                "trs => trs.map(tr => +tr.dataset.p)"))
            assert not in_box(early)
            page.locator(f"#case-{case.case_id} table.masked tr[data-p='{early}']").first.click()
            assert in_box(early) and page.locator(f".tok.hl[data-p='{early}']").count() == 1
            raw = case.methods["attnlrp"].input_relevance[early]
            title = page.locator(f"#case-{case.case_id} .tok[data-p='{early}']").get_attribute("title")
            assert f"attnlrp: R = {raw:.4g}, normalised = " in title
            # after a method switch (report.js writes the titles) a missing value says so, never "R = 0"
            page.locator(f"#case-{case.case_id} .methods button[data-method='attnlrp']").click()
            tok = page.locator(f"#case-{case.case_id} .tok[data-p='{gap}']").get_attribute("title")
            assert tok.endswith("attnlrp: R not computed")
            title = page.locator(f"#case-{case.case_id} .tok[data-p='{early}']").get_attribute("title")
            shown = float(title.split("attnlrp: R = ", 1)[1].split(",", 1)[0])
            assert shown == pytest.approx(raw, rel=1e-3)  # four significant digits
        finally:
            page.close()


def test_a_link_to_a_filtered_out_case_clears_the_filter_and_small_figures_zoom(page_and_cases):
    page, cases, *_ = page_and_cases
    page.locator("#case-filter").fill("no case has this text")
    target = cases[-1]
    assert not page.locator(f"#case-{target.case_id}").is_visible()
    page.locator(f'a[href="#case-{target.case_id}"]').first.click()
    assert page.locator(f"#case-{target.case_id}").is_visible() and page.locator("#case-filter").input_value() == ""
    # a figure drawn narrower than its pixels opens at full size on a click (and closes on a second)
    page.set_viewport_size({"width": 700, "height": 900})
    try:
        img = page.locator("figure img").first
        img.scroll_into_view_if_needed()
        page.wait_for_function("document.querySelector('figure img').naturalWidth > 0")
        page.evaluate("window.dispatchEvent(new Event('resize'))")
        natural, shown = img.evaluate("i => [i.naturalWidth, i.clientWidth]")
        assert natural > shown
        img.click()
        assert img.evaluate("i => i.clientWidth") == natural
        img.click()
        assert img.evaluate("i => i.clientWidth") == shown
    finally:
        page.set_viewport_size({"width": 1360, "height": 900})


def test_a_phone_width_hides_nothing(page_and_cases):
    """At 390 px a case's k* table, its ablated-node table and its graph summary were cut off by the case card (which
    clips what overflows it) with no way to scroll to them, and the filter box made the whole page 426 px wide. Now
    every element ends inside the window or sits in a box that scrolls sideways."""
    page, *_ = page_and_cases
    page.set_viewport_size({"width": 390, "height": 800})
    try:
        page.add_style_tag(content="article{content-visibility:visible !important}")  # lay out every case
        assert page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]") == [390, 390]
        out = page.evaluate("""(() => { const bad = [];
          for (const e of document.querySelectorAll('main *')) {
            const r = e.getBoundingClientRect();
            if (!r.width || r.right <= window.innerWidth + 0.5) continue;
            let p = e.parentElement, scrolls = false;
            for (; p; p = p.parentElement) { const o = getComputedStyle(p).overflowX;
              if (o === 'auto' || o === 'scroll') { scrolls = true; break; } }
            if (!scrolls) bad.push(e.tagName + '.' + e.className + ' ' + Math.round(r.right)); }
          return bad; })()""")
        assert out == [], out[:10]
    finally:
        page.set_viewport_size({"width": 1360, "height": 900})
