"""Explorer API latency on a large synthetic store (not a test): N items (default 100 000) with verdicts, pairs and a
case for every clean pair, written with set-based SQL into a real failtrace store; then uvicorn on a loopback port
and a bounded sequential request loop (``--requests`` per endpoint, one client, 127.0.0.1 only) that reports
p50/p90/p99 per endpoint. Baseline in the same run: ``/api/meta`` (no table work), so the ratios say what the joins,
facets and paging cost on top of a request round trip.

    .venv/bin/python perf/bench_serve.py [--items 100000] [--requests 100] [--tokens 64] [--browser /usr/bin/chromium]

With ``--browser`` it also times the first render of the table, of a 16k-token case page (and of its side-by-side
section across models) and of the Fig. 4–5 view in headless Chromium. The store also holds comparison rows
(:func:`add_comparisons`), so the across-models endpoints are timed too (the two heavy ones with at most 20 calls).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from failtrace.store import open_store


# the long case's i-th word: one of 3000, Zipf-like (a few very common, most rare), fixed by i
WORD = "(pow((hash({i}) % 1000003) / 1000003.0, 3) * 3000)::INTEGER::VARCHAR"


# case_methods' columns these synthetic rows fill (later ones, e.g. schema 4's flip_tops, stay NULL: "not recorded")
METHOD_COLS = "(case_id, method, input_relevance, hidden_layer_sums, segment_relevance, flip_curve, flip_k, seconds)"


def build(path: Path, items: int, tokens: int) -> str:
    """A store with ``items`` items; 2 in 3 fail, of those 1 in 2 clean with a case (64-token context)."""
    with open_store(path) as st:
        c = st.con
        c.execute("INSERT INTO runs (run_id, stage, benchmark, model, created_at) VALUES "
                  "('r1','collect','synth','m',now()), ('p1','pairs','synth','m',now()), "
                  "('a1','analyse','synth','m',now())")
        c.execute(f"""INSERT INTO verdicts SELECT 'r1', 'i' || lpad(i::VARCHAR, 7, '0'),
                      CASE WHEN i % 3 = 0 THEN 'pass' ELSE 'fail' END, '[]', '{{}}', 0.0 FROM range({items}) t(i)""")
        c.execute(f"""INSERT INTO generations SELECT 'r1', 'i' || lpad(i::VARCHAR, 7, '0'), 'synth', [1,2,3], 3,
                      'answer', [4,5,6], 3 + i % 50, 'eos', 0.0, now() FROM range({items}) t(i)""")
        c.execute(f"""INSERT INTO pairs (pair_run_id, run_id, item_id, benchmark, status, target_text, contrast_text,
                      delta_logit, rollouts, checks, positions_walked, unverifiable_rollouts, hit_length_limit)
                      SELECT 'p1', 'r1', 'i' || lpad(i::VARCHAR, 7, '0'), 'synth',
                      CASE WHEN i % 2 = 1 THEN 'clean' ELSE 'no_contrast' END, 'a', 'b', (i % 997) / 100.0,
                      1, 1, 1, 0, false FROM range({items}) t(i) WHERE i % 3 <> 0""")
        toks = json.dumps([f"t{j}" for j in range(tokens)])
        c.execute(f"""INSERT INTO cases SELECT lpad(i::VARCHAR, 24, '0'), 'a1', 'p1', 'r1',
                      'i' || lpad(i::VARCHAR, 7, '0'), 'synth', 'm', 'f', range(3, {tokens + 3}), '{toks}',
                      [true] || list_transform(range({tokens - 1}), lambda x: false), {tokens - 4}, {tokens}, 7, 'a', 8,
                      'b', (i % 997) / 100.0, '{{"query": [[0, {tokens}]]}}', '["query"]',
                      '{{"rule": "zero-embedding", "token_id": null, "max_k": 10}}',
                      CASE WHEN i % 5 = 0 THEN 'NC-IA+AG' ELSE 'M-IA' END, '{{}}',
                      CASE WHEN i % 7 = 0 THEN 'URT' ELSE 'none' END, '{{}}', '{{}}', '{{}}', '[]', '{{}}', now()
                      FROM range({items}) t(i) WHERE i % 3 <> 0 AND i % 2 = 1""")
        c.execute(f"""INSERT INTO case_methods {METHOD_COLS} SELECT case_id, 'attnlrp',
                      list_transform(range({tokens}), lambda x: (x % 13 - 6) / 6.0), [], '{{}}', [1.0, 0.5, -0.1],
                      2 + (hash(case_id) % 8)::INTEGER, 0.0 FROM cases""")
        # one long case (an agent-trace-sized context) for the case page's first render
        n = 16_000
        c.execute(f"""INSERT INTO cases SELECT 'long' || lpad('', 20, '0'), 'a1', 'p1', 'r1', 'i0000000', 'synth', 'm',
                      'f', range({n}), (SELECT json_group_array(' w' || {WORD.format(i='i')}) FROM range({n}) t(i)),
                      [true] || list_transform(range({n - 1}), lambda x: false), {n - 100}, {n}, 7, 'a', 8, 'b', 1.0,
                      '{{"system": [[0, 2000]], "query": [[2000, {n - 100}]], "answer": [[{n - 100}, {n}]]}}',
                      '["query"]', '{{"rule": "zero-embedding", "token_id": null, "max_k": 10}}', 'M-IA', '{{}}',
                      'none', '{{}}', '{{}}', '{{}}', '[]', '{{}}', now()""")
        c.execute(f"""INSERT INTO case_methods {METHOD_COLS}
                      SELECT 'long' || lpad('', 20, '0'), 'attnlrp',
                      list_transform(range({n}), lambda x: sin(x / 50.0)), [], '{{}}', [1.0, -0.5], 1, 0.0""")
        add_comparisons(c, n)
        return c.execute("SELECT min(case_id) FROM cases").fetchone()[0]


def add_comparisons(c: object, n: int) -> None:
    """Comparison rows as ``failtrace compare`` writes them: every case on its own model and on one other model (same
    tokens), and 3 checkpoint steps × 2 splits for every 10th case; the 16k-token case also on a model with another
    tokenisation of its text (two words a token, behind its own template token), so its side-by-side view aligns
    16 000 tokens by characters."""
    from failtrace.store.comparisons import ADDED, DDL

    c.execute(DDL)  # type: ignore[attr-defined]
    for stmt in ADDED:
        c.execute(stmt)  # type: ignore[attr-defined]
    cols = ("case_id, model_fingerprint, model, item_id, benchmark, reference, mapped, token_ids, prompt_length, "
            "position, target_text, contrast_text, target_id, contrast_id, delta_logit, input_relevance, "
            "segment_relevance, flip_curve, flip_k, step, split, notes, seconds, created_at, tokens, special_mask")
    same = ("SELECT c.case_id, {fp}, {model}, c.item_id, c.benchmark, {ref}, true, c.token_ids, c.prompt_length, "
            "c.position, c.target_text, c.contrast_text, c.target_id, c.contrast_id, {dl}, m.input_relevance, "
            "json_object('query', list_sum(m.input_relevance) * 0.7, 'system', list_sum(m.input_relevance) * 0.3), "
            "m.flip_curve, m.flip_k, {step}, {split}, '[]', 0.0, now(), c.tokens, c.special_mask "
            "FROM cases c JOIN case_methods m ON m.case_id = c.case_id AND m.method = 'attnlrp' {where}")
    c.execute(f"INSERT INTO comparisons ({cols}) " + same.format(  # type: ignore[attr-defined]
        fp="'f'", model="'m'", ref="true", dl="c.delta_logit", step="NULL", split="NULL", where=""))
    c.execute(f"INSERT INTO comparisons ({cols}) " + same.format(  # type: ignore[attr-defined]
        fp="'g'", model="'big'", ref="false", dl="c.delta_logit - 3 + (hash(c.case_id) % 5)::DOUBLE", step="NULL",
        split="NULL", where="WHERE c.case_id NOT LIKE 'long%'"))
    for step in (0, 50, 100):
        c.execute(f"INSERT INTO comparisons ({cols}) " + same.format(  # type: ignore[attr-defined]
            fp=f"'ck{step}'", model=f"'ckpts/step-{step}'", ref="false",
            dl=f"c.delta_logit - {step} / 40.0 + (hash(c.case_id) % 3)::DOUBLE", step=str(step),
            split="CASE WHEN hash(c.case_id) % 2 = 0 THEN 'trained' ELSE 'held-out' END",
            where="WHERE hash(c.case_id) % 10 = 0 AND c.case_id NOT LIKE 'long%'"))
    half = n // 2
    c.execute(f"""INSERT INTO comparisons ({cols}) SELECT 'long' || lpad('', 20, '0'), 'g', 'big', 'i0000000', 'synth',
                  false, true, range({half + 1}), 1, {half + 1}, 'a', 'b', 7, 8, -0.5,
                  [0.0] || list_transform(range({half}), lambda x: cos(x / 25.0)), '{{"query": 1.0}}', [1.0, -0.5], 1,
                  NULL, NULL, '[]', 0.0, now(),
                  (SELECT json_group_array(t) FROM (SELECT '<|other|>' AS t, -1 AS i UNION ALL
                   SELECT ' w' || {WORD.format(i='2 * i')} || ' w' || {WORD.format(i='2 * i + 1')}, i
                   FROM range({half}) r(i) ORDER BY i)),
                  [true] || list_transform(range({half}), lambda x: false)""")  # type: ignore[attr-defined]


def timed(url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (loopback URL built above)
            r.read()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--browser", default="", help="path of a chromium binary: also time the first render")
    args = ap.parse_args()
    import uvicorn

    from failtrace.serve.app import create_app

    folder = Path(tempfile.mkdtemp(prefix="ft-serve-bench-"))
    t0 = time.perf_counter()
    case_id = build(folder / "big.duckdb", args.items, args.tokens)
    with open_store(folder / "big.duckdb", read_only=True) as st:
        n_cases, n_cmp = (st.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("cases", "comparisons"))
    print(f"store: {args.items} items, {n_cases} cases, {n_cmp} comparison rows, built in "
          f"{time.perf_counter() - t0:.1f} s")
    srv = uvicorn.Server(uvicorn.Config(create_app(folder / "big.duckdb"), host="127.0.0.1", port=0,
                                        log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    endpoints = {
        "meta (baseline)": "/api/meta",
        "table page 1": "/api/table",
        "table filtered+sorted": "/api/table?pair_status=clean&category=M-IA&dl_min=1&sort=delta_logit&desc=true",
        "table deep page": f"/api/table?offset={max(0, args.items - 100)}&sort=n_tokens",
        "case page": f"/api/cases/{case_id}",
        "case across models": f"/api/cases/{case_id}/compare",
        "16k case across models": "/api/cases/long" + "0" * 20 + "/compare",
        "Fig. 4-7 data": "/api/compare",
    }
    base_p50 = None
    print(f"{'endpoint':24} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p50/baseline':>13}")
    for name, path in endpoints.items():
        timed(base + path, 3)  # warm-up
        heavy = name in ("16k case across models", "Fig. 4-7 data")  # seconds each at 100k items: fewer calls
        ms = sorted(timed(base + path, min(args.requests, 20) if heavy else args.requests))
        q = statistics.quantiles(ms, n=100)
        base_p50 = base_p50 or q[49]
        print(f"{name:24} {q[49]:8.1f} {q[89]:8.1f} {q[98]:8.1f} {q[49] / base_p50:13.1f}")
    with urllib.request.urlopen(base + "/api/cases/long" + "0" * 20 + "/compare", timeout=120) as r:  # noqa: S310
        other = [m for m in json.loads(r.read())["models"] if not m["reference"]][0]["aligned"]
    print(f"16k case vs its 8k-token retokenisation: {100 * other['matched_chars']:.1f} % of the text aligned, "
          f"unaligned relevance {other['unaligned']:.3f}")
    if args.browser:
        paint(base, args.browser)
    srv.should_exit = True
    th.join(10)


def paint(base: str, chromium: str) -> None:
    """Time from navigation to the rendered view (body[data-ready]) in headless Chromium, median of 3."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        views = (("table", "/#/cases", "cases"), ("16k-token case", "/#/case/long" + "0" * 20, "case"),
                 ("across models (Fig. 4-5)", "/#/across?tab=models", "across"))
        for name, url, ready in views:
            times = []
            for _ in range(3):
                page.goto("about:blank")
                t0 = time.perf_counter()
                page.goto(base + url)
                page.wait_for_selector(f"body[data-ready={ready}]", timeout=120_000)
                times.append(time.perf_counter() - t0)
            n = {"case": "#strip .tok", "cases": "tr.row", "across": "a.pt"}[ready]
            count = page.locator(n).count()
            extra = ""
            if ready == "case":  # the side-by-side section loads after the page is drawn
                t1 = time.perf_counter()
                page.wait_for_selector("#cmpgrid", timeout=120_000)
                extra = f"; its across-models section {1000 * (time.perf_counter() - t1):.0f} ms more, " \
                        f"{page.locator('#cmpgrid .tok').count()} tokens in {page.locator('.cmpcol').count()} columns"
            print(f"first render {name}: {statistics.median(times) * 1000:.0f} ms (median of 3; {count} {n}{extra})")
        browser.close()


if __name__ == "__main__":
    main()
