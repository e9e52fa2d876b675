"""The explorer's graph payload carries the Fig. 3 ablation view for NC-IA cases: a real toy store analysed with
k_ia = 0 (so input masking never explains a case and every case is NC-IA), the payload's ablated nodes and Δℓ checked
against the stored evidence, their stage against the stored stage names; no view for other categories."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cases_toy import build_toy_store  # noqa: E402

from fastapi.testclient import TestClient  # noqa: E402

from failtrace.cases.analyse import analyse  # noqa: E402
from failtrace.cases.settings import CaseSettings  # noqa: E402
from failtrace.serve.app import create_app  # noqa: E402
from failtrace.serve.casedata import _ablation  # noqa: E402
from failtrace.store import open_store  # noqa: E402
from failtrace.store.cases import load_cases  # noqa: E402
from failtrace_testkit.toy import one_thread  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("serve-abl")
    with one_thread():
        info = build_toy_store(folder / "runs.duckdb", folder / "model", n_items=6)
        with open_store(info["store"]) as st:
            analyse(st, CaseSettings(methods=("attnlrp",), k_ia=0, ablation_budget=4), progress=False)
    with open_store(info["store"], read_only=True) as st:
        info["cases"] = load_cases(st, with_graph=True)
    assert info["cases"]
    return info


def test_graph_payload_has_the_ablation_of_nc_ia_cases(store: dict[str, Any]) -> None:
    with TestClient(create_app(store["store"]), base_url="http://127.0.0.1") as client:
        for case in store["cases"]:
            assert case.category in ("NC-IA+M-AG", "NC-IA+AG")
            ev = case.category_evidence["ablation"]
            d = client.get(f"/api/cases/{case.case_id}/graph").json()["ablation"]
            k = ev["k"] if ev["flipped"] else len(ev["nodes"])
            assert d["k"] == k and d["category"] == case.category and d["flipped"] == (ev["curve"][k] < 0)
            assert (d["delta_before"], d["delta_after"]) == pytest.approx((ev["curve"][0], ev["curve"][k]))
            assert [(a["layer"], a["position"]) for a in d["nodes"]] == [(n["layer"], n["position"])
                                                                         for n in ev["nodes"][:k]]
            kept = {(s, t) for s, t, _r in case.graph["nodes"]}
            for a in d["nodes"]:
                assert case.graph["stages"][a["stage"]] == f"L{a['layer']}"
                assert a["in_graph"] == ((a["stage"], a["position"]) in kept)
            assert 0.0 <= d["through_share"] <= 1.0


def test_no_ablation_view_for_other_categories(store: dict[str, Any]) -> None:
    case = store["cases"][0]
    ev = case.category_evidence
    assert _ablation(case.graph, "M-IA", ev, len(case.tokens)) is None
    assert _ablation(case.graph, "NC-IA+AG", {}, len(case.tokens)) is None
    assert _ablation(case.graph, case.category, ev, len(case.tokens)) is not None
    bad = {"ablation": {**ev["ablation"], "curve": [1.0]}}  # evidence that does not fit: no view, no error
    assert _ablation(case.graph, case.category, bad, len(case.tokens)) is None


def test_show_ablation_toggle_in_the_browser(store: dict[str, Any]) -> None:
    """Chromium: the toggle rings exactly the ablated nodes the graph kept and highlights exactly the edges that
    networkx finds on a path from them to the prediction (p = 1: the stored graph, not re-pruned)."""
    import networkx as nx
    from playwright.sync_api import sync_playwright
    from test_serve_browser import _chromium, _start

    def marked(c: Any) -> list[tuple[int, int]]:
        ev = c.category_evidence["ablation"]
        k = ev["k"] if ev["flipped"] else len(ev["nodes"])
        stage = {name: s for s, name in enumerate(c.graph["stages"])}
        kept = {(s, t) for s, t, _r in c.graph["nodes"]}
        return [(stage[f"L{n['layer']}"], n["position"]) for n in ev["nodes"][:k]
                if (stage.get(f"L{n['layer']}"), n["position"]) in kept]

    case = max(store["cases"], key=lambda c: len(marked(c)))
    src = marked(case)
    assert src, "the fixture should keep at least one ablated node in a pruned graph"
    G = nx.DiGraph()
    G.add_edges_from(((a, b), (c, d)) for a, b, c, d, _w in case.graph["edges"])
    final = (len(case.graph["stages"]) - 1, len(case.tokens) - 1)
    down = set().union(*(nx.descendants(G, s) | {s} for s in src))
    up = nx.ancestors(G, final) | {final}
    want = sum((a, b) in down and (c, d) in up for a, b, c, d, _w in case.graph["edges"])
    srv, thread, base = _start(store["store"], review=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"], headless=True)
            try:
                page = browser.new_page(viewport={"width": 1360, "height": 900}, accept_downloads=True)
                page.goto(f"{base}#/graph/{case.case_id}?p=1.00")
                page.wait_for_selector("body[data-ready=graph]", timeout=20000)
                n_edges = page.locator("line.e").count()
                assert n_edges == len(case.graph["edges"]) and page.locator("circle.abl").count() == 0
                page.check("#abl")
                page.wait_for_function("location.hash.includes('abl=1')")
                rings = sorted(tuple(map(int, k.split(":"))) for k in
                               page.locator("circle.abl").evaluate_all("els => els.map(e => e.dataset.k)"))
                assert rings == sorted(src)
                assert page.locator("line.e.on").count() == want
                assert page.locator("line.e.dim").count() == n_edges - want
                ev = case.category_evidence["ablation"]
                assert f"Δℓ {ev['curve'][0]:.2f}" in page.inner_text("#gsub")
                with page.expect_download() as dl:  # the drawn graph (it saved the lit paths alone), lit ones named
                    page.click("#export")
                data = json.loads(Path(dl.value.path()).read_text())
                assert len(data["edges"]) == n_edges and data["pinned"] is None
                lit = {tuple(k) for k in data["ablation_paths"]}
                assert sum((a, b) in lit and (c, d) in lit for a, b, c, d, _w in case.graph["edges"]) == want
                if os.environ.get("FAILTRACE_SCREENSHOTS"):
                    page.screenshot(path=str(Path(os.environ["FAILTRACE_SCREENSHOTS"]) / "explorer-ablation.png"),
                                    full_page=True)
            finally:
                browser.close()
    finally:
        srv.should_exit = True
        thread.join(10)
