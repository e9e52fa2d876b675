"""Screenshot explorer views of a real store with Debian's chromium (through Playwright), e.g. for docs/explorer-*.png.

    python scripts/explorer_screenshot.py STORE docs/explorer-table.png "#/cases" --ready cases
    python scripts/explorer_screenshot.py STORE docs/explorer-case.png '#/case/CASE_ID' --ready case
    python scripts/explorer_screenshot.py STORE docs/explorer-compare.png '#/case/CASE_ID' --ready case \
        --element '#compare'

It starts ``failtrace serve`` on a free loopback port (read-only), waits until the view says it is painted
(``body[data-ready=READY]``), takes a full-page PNG and stops the server. Requests that leave 127.0.0.1 are blocked;
the PNG is reduced to a 256-colour palette to stay small. The browser tests save the toy store's views instead.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("hash", help="the view's URL fragment, e.g. '#/' or '#/case/ID'")
    ap.add_argument("--ready", default="cases", help="the view's data-ready name (cases, case, graph, compare, …)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--element", default=None, help="only this element, once it is there (e.g. '#compare', which "
                                                     "the case page fetches after it is ready)")
    args = ap.parse_args()
    from PIL import Image
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("error: no chromium binary (scripts/setup.sh --tests installs Debian's chromium)")
    port = _free_port()
    base = f"http://127.0.0.1:{port}/"
    failtrace = Path(sys.executable).with_name("failtrace")
    server = subprocess.Popen([str(failtrace), "serve", "--store", str(args.store), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # the app imports torch: a cold start on a loaded machine takes a while
        while True:
            if server.poll() is not None:
                raise SystemExit(f"error: failtrace serve stopped: {server.stderr.read().strip()}")
            try:
                urllib.request.urlopen(base + "api/meta", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"error: failtrace serve did not answer at {base} within 120 s") from None
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            ctx = browser.new_context(viewport={"width": args.width, "height": args.height})
            ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else r.abort())
            page = ctx.new_page()
            page.goto(base + args.hash)
            try:
                page.wait_for_selector(f"body[data-ready={args.ready}]", timeout=30000)
            except PlaywrightTimeout:
                now = page.evaluate("document.body.dataset.ready || ''")
                raise SystemExit(f"error: the view {args.hash} never became ready as {args.ready!r} in 30 s (it is "
                                 f"{now or 'not ready'!r}); give the --ready name of that view") from None
            page.mouse.move(1, 1)
            args.png.parent.mkdir(parents=True, exist_ok=True)
            if args.element:
                try:  # shown, and past its own fetch (a section reads "loading…" until its data has come)
                    page.wait_for_function("sel => { const e = document.querySelector(sel); return e && "
                                           "e.offsetParent !== null && !/loading/.test(e.textContent); }",
                                           arg=args.element, timeout=30000)
                except PlaywrightTimeout:
                    raise SystemExit(f"error: nothing shown on {args.hash} matches {args.element!r} (or it was "
                                     f"still loading) after 30 s") from None
                page.locator(args.element).first.screenshot(path=str(args.png))
            else:
                page.screenshot(path=str(args.png), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    Image.open(args.png).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(args.png, optimize=True)
    print(f"{args.png}: {args.png.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
