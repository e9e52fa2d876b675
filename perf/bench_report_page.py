"""The report page with many long cases in headless Chromium: load time and the case filter, with the page's
``content-visibility`` rule (cases off screen are not laid out) against the same page without it.

Both pages are the same ``index.html`` built once from N hand-made cases (``tests/report_cases.make_case``, their
context stretched to T tokens with query words, six methods each, no graphs); the baseline is that file with the one
CSS declaration removed, so both load the same bytes but one. Each page is loaded ``--rounds`` times, alternating.

    .venv/bin/python perf/bench_report_page.py --cases 150 --tokens 1000 --rounds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the report tests' hand-made cases
from report_cases import METHODS, make_case, status_row  # noqa: E402

from failtrace.report import build_report  # noqa: E402

RULE = ";content-visibility:auto;contain-intrinsic-size:auto 1700px"


def cases(n: int, tokens: int) -> list:
    """``n`` cases whose context is ``tokens`` long: query words inserted at the end of the query segment."""
    out, rng = [], np.random.default_rng(0)
    cats, pats = ["M-IA", "NC-IA+M-AG", "NC-IA+AG"], ["URT", "OIT", "URT+OIT", "none"]
    for i in range(n):
        c = make_case(i, "ifeval", cats[i % 3], pats[i % 4], dict(zip(METHODS, (1 + i % 5, 2, 3, None, 4, None))))
        extra = max(0, tokens - len(c.tokens))
        _qs, qe = c.segments["query"][0]
        toks = c.tokens[:qe] + [f" word{j % 97}" for j in range(extra)] + c.tokens[qe:]
        segs = {k: [[a + extra if a >= qe else a, b + extra if b >= qe else b] for a, b in v]
                for k, v in c.segments.items()}
        methods = {m: dataclasses.replace(r, input_relevance=[float(x) for x in rng.normal(0, 1, len(toks))])
                   for m, r in c.methods.items()}
        out.append(dataclasses.replace(c, tokens=toks, special_mask=c.special_mask[:qe] + [False] * extra
                                       + c.special_mask[qe:], token_ids=list(range(100, 100 + len(toks))),
                                       segments=segs, prompt_length=c.prompt_length + extra, position=len(toks),
                                       methods=methods))
    return out


def load(page: object, url: str) -> tuple[float, float]:
    """Seconds to DOMContentLoaded, and milliseconds for clearing the case filter after it hid every case."""
    t = time.perf_counter()
    page.goto(url, wait_until="domcontentloaded", timeout=600_000)
    seconds = time.perf_counter() - t
    clear = page.evaluate("""() => { const box = document.getElementById('case-filter');
        box.value = 'zzzz'; box.dispatchEvent(new Event('input')); document.body.offsetHeight;
        const t = performance.now(); box.value = ''; box.dispatchEvent(new Event('input'));
        document.body.offsetHeight; return performance.now() - t; }""")
    return seconds, clear


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=150)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        index = build_report(cases(args.cases, args.tokens), [status_row("ifeval", "c1", "p1", args.cases + 10,
                                                                         {"clean": args.cases})], Path(tmp) / "new")
        built = time.perf_counter() - t
        html = Path(index).read_text(encoding="utf-8")
        if RULE not in html:
            raise SystemExit("the page has no content-visibility rule to compare against")
        base = Path(tmp) / "base" / "index.html"
        shutil.copytree(Path(index).parent, base.parent)
        base.write_text(html.replace(RULE, ""), encoding="utf-8")
        print(f"{args.cases} cases of {args.tokens} tokens: built in {built:.1f} s, index.html "
              f"{Path(index).stat().st_size / 1e6:.1f} MB")
        times: dict[str, list[tuple[float, float]]] = {"without the rule (baseline)": [], "with the rule": []}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            for _ in range(args.rounds):
                for name, path in (("without the rule (baseline)", base), ("with the rule", Path(index))):
                    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
                    times[name].append(load(ctx.new_page(), path.resolve().as_uri()))
                    ctx.close()
            browser.close()
    rows = {k: (statistics.median(s for s, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    print(f"{'page':<30} {'load (s)':>9} {'clear filter (ms)':>18}")
    for name, (s, c) in rows.items():
        print(f"{name:<30} {s:>9.1f} {c:>18.0f}")
    (bs, bc), (ns, nc) = rows.values()
    print(f"ratio baseline/new: load x{bs / ns:.1f}, clearing the filter x{bc / max(nc, 1e-3):.0f} "
          f"(median of {args.rounds} loads each, alternating)")


if __name__ == "__main__":
    main()
