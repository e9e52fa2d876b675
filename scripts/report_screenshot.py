"""Screenshot a failtrace report with Debian's chromium (through Playwright), e.g. for docs/report.png.

    python scripts/report_screenshot.py OUT/report/index.html docs/report.png [--width 1280] [--height 1100]

The page is loaded with every non-file request blocked; the PNG is reduced to a 256-colour palette to stay small.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1100)
    ap.add_argument("--selector", default=None, help="scroll this element to the top first (e.g. '#cases')")
    args = ap.parse_args()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("error: no chromium binary (scripts/setup.sh --tests installs Debian's chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        ctx = browser.new_context(viewport={"width": args.width, "height": args.height})
        ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:")) else r.abort())
        page = ctx.new_page()
        page.goto(args.index.resolve().as_uri(), wait_until="load")
        if args.selector:
            # to the top as the help says (scroll_into_view_if_needed leaves it wherever it first becomes visible)
            if not page.locator(args.selector).count():
                raise SystemExit(f"error: nothing in {args.index} matches the selector {args.selector!r}")
            page.locator(args.selector).first.evaluate("e => e.scrollIntoView({block: 'start'})")
        args.png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.png))
        browser.close()
    Image.open(args.png).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(args.png, optimize=True)
    print(f"{args.png}: {args.png.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
