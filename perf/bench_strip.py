"""The heatmap's "N earlier tokens above" count (report/assets/strip.js) on a long context (not a test).

In headless Chromium, on a strip of ``--tokens`` tokens drawn with the report's stylesheet, at 25 scroll positions:
the baseline reads every token's box and counts those wholly above the visible top (what the first version did,
once per frame while scrolling); the shipped count is a binary search over the tokens in document order. Prints
the median time of each, their ratio, and whether they agree at every position.

    .venv/bin/python perf/bench_strip.py [--tokens 12000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ASSETS = Path(__file__).resolve().parents[1] / "src" / "failtrace" / "report" / "assets"

MEASURE = """() => {
    const s = document.querySelector('.strip'), toks = s.querySelectorAll('.tok');
    function linear() {  // the baseline: every token's box
        const top = s.getBoundingClientRect().top; let n = 0;
        s.querySelectorAll('.tok').forEach(t => {
            const r = t.getBoundingClientRect(); if (r.height && r.bottom <= top) n++; });
        return n;
    }
    const hint = ftOpenAtPrediction(s);  // the shipped code: its count is what the hint says after a scroll
    function shipped() { hint.recount(); return +hint.textContent.split(' ')[1]; }
    const out = {linear: [], shipped: [], agree: true};
    for (let i = 0; i < 25; i++) {
        s.scrollTop = Math.floor((i + 0.5) / 25 * (s.scrollHeight - s.clientHeight)); s.getBoundingClientRect();
        let t0 = performance.now(); const a = linear(); out.linear.push(performance.now() - t0);
        t0 = performance.now(); const b = shipped(); out.shipped.push(performance.now() - t0);
        if (a !== b) out.agree = false;
    }
    const med = xs => xs.sort((x, y) => x - y)[Math.floor(xs.length / 2)];
    return {linear: med(out.linear), shipped: med(out.shipped), agree: out.agree};
}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=12000)
    args = ap.parse_args()
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    js = (ASSETS / "strip.js").read_text(encoding="utf-8")
    toks = "".join(f'<span class="tok{" pos" if i == args.tokens - 1 else ""}" data-p="{i}">w{i % 97}</span>'
                   for i in range(args.tokens))
    folder = Path(tempfile.mkdtemp(prefix="bench-strip-"))
    try:
        page_file = folder / "strip.html"
        page_file.write_text(f"<html><head><style>{css}</style></head><body><div><div class='strip'>{toks}</div>"
                             f"</div><script>{js}</script></body></html>", encoding="utf-8")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                        args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(page_file.as_uri())
            r = page.evaluate(MEASURE)
            browser.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    shipped = max(r["shipped"], 0.1)  # Chromium rounds performance.now() to 0.1 ms
    print(f"{args.tokens} tokens, median of 25 scroll positions (Chromium's timer: 0.1 ms steps)")
    print(f"  every token's box (baseline)  {r['linear']:7.2f} ms")
    print(f"  binary search (strip.js)      {r['shipped']:7.2f} ms   x{r['linear'] / shipped:.0f} faster (a lower "
          f"bound: the search takes about one timer step)")
    print(f"  same count at every position: {r['agree']}")


if __name__ == "__main__":
    main()
