"""The explorer's JSON API against a real analysed toy store: counts, facets, filters, sorting and paging checked
against the store read independently (load_cases, pairs, verdicts), the case payload against explicit math, the
graph's edge-mass shares against a brute-force recomputation; bad input gives 404/422/403/413, never 500; no path
reaches the filesystem; browsing never changes the store file (sha256)."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_store import analysed_toy_store, sha256  # noqa: E402

from failtrace.store import open_store  # noqa: E402
from failtrace.store.cases import load_cases  # noqa: E402

from fastapi.testclient import TestClient  # noqa: E402

from failtrace.serve.app import MAX_BODY, create_app  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    info = analysed_toy_store(tmp_path_factory.mktemp("serve"))
    with open_store(info["store"], read_only=True) as st:
        info["cases"] = load_cases(st, with_graph=True)
        info["pairs"] = st.pairs()
        info["verdicts"] = st.results(info["run_id"])
    assert len(info["cases"]) >= 3 and len(info["verdicts"]) == 8
    info["sha"] = sha256(info["store"])
    return info


@pytest.fixture(scope="module")
def client(toy: dict[str, Any]):
    with TestClient(create_app(toy["store"]), base_url="http://127.0.0.1") as c:
        yield c


def _all_rows(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/api/table", params={**params, "limit": 500})
    assert r.status_code == 200
    return r.json()["rows"]


def test_total_and_facet_counts_match_the_store(client: TestClient, toy: dict[str, Any]) -> None:
    data = client.get("/api/table").json()
    assert data["total"] == len(toy["verdicts"])
    facets = {k: {f["value"]: f["count"] for f in v} for k, v in data["facets"].items()}
    assert facets["verdict"] == dict(Counter(v["status"] for v in toy["verdicts"]))
    pair_status = Counter(p["status"] for p in toy["pairs"])
    pair_status["(none)"] = sum(v["status"] == "pass" for v in toy["verdicts"])  # passed items have no pair
    assert facets["pair_status"] == {k: n for k, n in pair_status.items() if n}
    cats = Counter(c.effective_category for c in toy["cases"])
    cats["(none)"] = len(toy["verdicts"]) - len(toy["cases"])
    assert facets["category"] == dict(cats)
    assert facets["pattern"] == {**Counter(c.pattern for c in toy["cases"]),
                                 "(none)": len(toy["verdicts"]) - len(toy["cases"])}
    assert facets["benchmark"] == {"toy": 8}
    # k_computed: the attnlrp masking curve ran (so a null k* means "no flip within K", not "not computed")
    curves = {c.case_id: len(c.methods["attnlrp"].flip_curve) > 0 for c in toy["cases"]}
    assert {r["case_id"]: r["k_computed"] for r in _all_rows(client) if r["case_id"]} == curves
    assert not any(r["k_computed"] for r in _all_rows(client) if not r["case_id"])


def test_filters_narrow_exactly(client: TestClient, toy: dict[str, Any]) -> None:
    clean = [p for p in toy["pairs"] if p["status"] == "clean"]
    rows = _all_rows(client, pair_status="clean")
    assert {r["item_id"] for r in rows} == {p["item_id"] for p in clean} and len(rows) < 8
    # a facet's own counts ignore its own filter (faceted search), the others follow it
    data = client.get("/api/table", params={"pair_status": "clean"}).json()
    assert {f["value"] for f in data["facets"]["pair_status"]} >= {"clean", "unbounded"}
    assert sum(f["count"] for f in data["facets"]["verdict"]) == len(clean)
    deltas = sorted(c.delta_logit for c in toy["cases"])
    lo, hi = deltas[1], deltas[-2]
    rows = _all_rows(client, dl_min=lo, dl_max=hi, has_case=True)
    assert len(rows) == sum(lo <= c.delta_logit <= hi for c in toy["cases"])
    assert all(lo <= r["delta_logit"] <= hi for r in rows)
    ks = [c.flip_k("attnlrp") for c in toy["cases"]]
    k = sorted(x for x in ks if x is not None)[len([x for x in ks if x is not None]) // 2]
    rows = _all_rows(client, k_min=k)
    assert sorted(r["case_id"] for r in rows) == sorted(c.case_id for c in toy["cases"]
                                                        if c.flip_k("attnlrp") is not None
                                                        and c.flip_k("attnlrp") >= k)
    pat = toy["cases"][0].pattern
    assert len(_all_rows(client, pattern=pat)) == sum(c.pattern == pat for c in toy["cases"])
    no_case = len(toy["verdicts"]) - len(toy["cases"])  # rows without a case have no pattern: "(none)"
    assert no_case > 0
    assert len(_all_rows(client, pattern=[pat, "(none)"])) == sum(c.pattern == pat for c in toy["cases"]) + no_case
    assert [r["item_id"] for r in _all_rows(client, q="Q003")] == ["q003"]  # case-insensitive substring
    assert _all_rows(client, benchmark="nope") == []


def test_k_star_sorts_none_after_every_number_and_before_no_case(toy: dict[str, Any], tmp_path: Path) -> None:
    """k* "none" (the masking curve ran without a flip within K) sorted among "—" (no case) as one NULL; it is
    past every k: after the numbers ascending, before them descending, and "—" last either way."""
    import duckdb

    path = tmp_path / "none.duckdb"
    shutil.copy(toy["store"], path)
    flipped = sorted(toy["cases"], key=lambda c: c.case_id)
    no_flip = [c.case_id for c in flipped[:2]]  # these two now ran their curve without a flip
    con = duckdb.connect(str(path))
    con.execute(f"UPDATE case_methods SET flip_k = NULL WHERE method = 'attnlrp' AND case_id IN ({', '.join('?' * 2)})",
                no_flip)
    con.close()
    with TestClient(create_app(path), base_url="http://127.0.0.1") as c:
        for desc in (False, True):
            rows = _all_rows(c, sort="k_star", desc=desc)
            kind = ["k" if r["k_star"] is not None else "none" if r["k_computed"] else "-" for r in rows]
            n_k, n_dash = kind.count("k"), kind.count("-")
            assert kind.count("none") == 2 and n_k and n_dash, kind
            assert kind == (["k"] * n_k + ["none"] * 2 if not desc else ["none"] * 2 + ["k"] * n_k) + ["-"] * n_dash
            ks = [r["k_star"] for r in rows if r["k_star"] is not None]
            assert ks == sorted(ks, reverse=desc)
            assert {r["case_id"] for r in rows if r["k_computed"] and r["k_star"] is None} == set(no_flip)


def test_sort_and_server_side_paging(client: TestClient, toy: dict[str, Any]) -> None:
    full = _all_rows(client, sort="delta_logit", desc=True)
    values = [r["delta_logit"] for r in full if r["delta_logit"] is not None]
    assert values == sorted(values, reverse=True) and full[-1]["delta_logit"] is None  # NULLs last
    pages, offset = [], 0
    while True:
        data = client.get("/api/table", params={"sort": "delta_logit", "desc": True, "limit": 3,
                                                "offset": offset}).json()
        assert data["total"] == len(full) and len(data["rows"]) <= 3
        if not data["rows"]:
            break
        pages.append(data["rows"])
        offset += 3
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [r["item_id"] for p in pages for r in p] == [r["item_id"] for r in full]


def test_case_payload_matches_the_stored_case(client: TestClient, toy: dict[str, Any]) -> None:
    for case in toy["cases"]:
        d = client.get(f"/api/cases/{case.case_id}").json()
        assert d["tokens"] == case.tokens and d["special"] == case.special_mask
        assert d["labels"] == case.segment_labels() and d["delta_logit"] == pytest.approx(case.delta_logit)
        assert d["effective_category"] == case.effective_category and d["pattern"] == case.pattern
        assert set(d["methods"]) == set(case.methods)
        for name, m in case.methods.items():
            assert d["methods"][name]["k_label"] == (str(m.flip_k) if m.flip_k is not None else
                                                     "none" if m.flip_curve else "—")  # as show and the report
            raw = np.asarray(m.input_relevance)
            plain = ~np.asarray(case.special_mask)
            expected = raw / np.abs(raw[plain]).max()  # normalisation by hand: largest |R| of non-special tokens
            assert np.allclose(d["methods"][name]["norm"], expected)
            assert d["methods"][name]["flip_curve"] == pytest.approx(m.flip_curve)
            assert d["methods"][name]["flip_k"] == m.flip_k
        assert "<script" not in d["evidence_html"]["category_evidence"]
        assert d["evidence_html"]["category_evidence"].startswith("<dl>")


def test_item_pairs_name_their_case(client: TestClient, toy: dict[str, Any]) -> None:
    """The item page links each pair to its case: /api/item's pairs carry the case of the pair run's newest analysis
    (the table's), and null for a pair without one."""
    cases = {(c.pair_run_id, c.item_id): c.case_id for c in toy["cases"]}
    seen = set()
    for v in toy["verdicts"]:
        it = client.get("/api/item", params={"run_id": toy["run_id"], "item_id": v["item_id"]}).json()
        for p in it["pairs"]:
            assert p["case_id"] == cases.get((p["pair_run_id"], v["item_id"])), (v["item_id"], p)
            seen.add(p["case_id"] is None)
    assert seen == {True, False}  # both kinds checked: a pair with a case and one without


def test_item_pairs_say_whether_they_can_be_reviewed_and_their_decision(toy: dict[str, Any], tmp_path: Path) -> None:
    """A pair without a case (a weak preference, or one not analysed yet) could be reviewed through the API, but its
    item page had no buttons and showed no decision. /api/item's pairs now say ``reviewable`` (the search found a
    target and contrast: the pairs table's contrast_id) and the ``decision`` in force, as the case page does; and
    /api/reviews/version counts the writes, so a page drawn before another tab's write can tell it is out of date."""
    store = tmp_path / "item-review.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    with open_store(store) as st:  # the pair stays, its case goes: a pair the page must review itself
        st.con.execute("DELETE FROM cases WHERE case_id = ?", [case.case_id])
        contrast = {(p, i): c is not None for p, i, c in st.con.execute(
            "SELECT pair_run_id, item_id, contrast_id FROM pairs WHERE run_id = ?", [toy["run_id"]]).fetchall()}
    assert set(contrast.values()) == {True, False}  # both kinds are checked
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        assert c.get("/api/reviews/version").json() == {"count": 0, "newest": None}
        params = {"run_id": toy["run_id"], "item_id": case.item_id}
        (pair,) = c.get("/api/item", params=params).json()["pairs"]
        assert pair["case_id"] is None and pair["reviewable"] is True and pair["decision"] is None
        for v in toy["verdicts"]:
            for p in c.get("/api/item", params={**params, "item_id": v["item_id"]}).json()["pairs"]:
                assert p["reviewable"] is contrast[(p["pair_run_id"], v["item_id"])], p
        body = {"pair_run_id": case.pair_run_id, "item_id": case.item_id, "comment": "the real first wrong token"}
        assert c.post("/api/reviews", json={**body, "decision": "reject"}).status_code == 201
        assert c.post("/api/reviews", json={**body, "decision": "accept"}).status_code == 201
        (pair,) = c.get("/api/item", params=params).json()["pairs"]
        assert pair["decision"]["decision"] == "accept" and pair["decision"]["comment"] == "the real first wrong token"
        version = c.get("/api/reviews/version").json()
        assert version["count"] == 2 and version["newest"] == c.get("/api/reviews").json()["reviews"][-1]["created_at"]


def test_graph_edges_and_mass_shares(client: TestClient, toy: dict[str, Any]) -> None:
    case = toy["cases"][0]
    d = client.get(f"/api/cases/{case.case_id}/graph").json()
    assert d["case_id"] == case.case_id and d["item_id"] == case.item_id  # the page's breadcrumb names the item
    assert len(d["edges"]) == len(case.graph["edges"]) and len(d["nodes"]) == len(case.graph["nodes"])
    assert d["final"] == [len(case.graph["stages"]) - 1, case.position - 1]
    edges = d["edges"]
    for i, e in enumerate(edges):  # brute force: |w| of the strictly stronger edges of the same transition / total
        same = [j for j, f in enumerate(edges) if (f[0], f[2]) == (e[0], e[2])]
        total = sum(abs(edges[j][4]) for j in same)
        stronger = sum(abs(edges[j][4]) for j in same if abs(edges[j][4]) > abs(e[4]))
        ties = sum(abs(edges[j][4]) for j in same if abs(edges[j][4]) == abs(e[4]) and j < i)
        assert e[5] == pytest.approx((stronger + ties) / total, abs=1e-9)


def test_unknown_ids_404_malformed_422(client: TestClient, toy: dict[str, Any]) -> None:
    assert client.get("/api/cases/" + "0" * 24).status_code == 404
    assert client.get("/api/cases/" + "0" * 24 + "/graph").status_code == 404
    whole = toy["cases"][0].case_id
    for path in (f"/api/cases/{whole[:8]}", f"/api/cases/{whole[:8]}/graph"):  # the CLI takes prefixes, the API not
        r = client.get(path)
        assert r.status_code == 404 and r.json()["detail"] == (f"no case has the id {whole[:8]!r}: the API takes whole "
                                                               f"case ids; did you mean {whole}?")
        assert r.headers["X-Failtrace-Case"] == whole  # the explorer follows it (the graph's message was garbled)
    assert client.get("/api/cases/" + "0" * 24).json()["detail"] == f"no case has the id {'0' * 24!r} in this store"
    for bad in ("bad!id", "x" * 65, "a%20b", "%00"):
        assert client.get(f"/api/cases/{bad}").status_code == 422, bad
    for params in ({"limit": 0}, {"limit": 501}, {"limit": "abc"}, {"offset": -1}, {"sort": "1;drop table cases"},
                   {"dl_min": "nan"}, {"k_min": -1}, {"q": "x" * 201}, {"pair_status": "x" * 201},
                   {"category": "BOGUS"}, {"verdict": ["fail", "maybe"]}, {"pattern": "urt"}, {"pair_status": "ok"}):
        r = client.get("/api/table", params=params)
        assert r.status_code == 422, params
    for value in ("nan", "inf", "-Infinity"):  # said as what it is ("less than or equal to 1e9" for NaN misled)
        (problem,) = client.get("/api/table", params={"dl_min": value}).json()["detail"]
        assert problem["msg"] == "Input should be a finite number", problem
    bogus = client.get("/api/table", params={"category": "BOGUS"}).json()["detail"]  # named, as FastAPI's own 422s
    assert bogus == [{"type": "value_error", "loc": ["query", "category"],
                      "msg": "unknown category 'BOGUS'; valid: M-IA, NC-IA+M-AG, NC-IA+AG, (none)"}]
    # a text's length is said in characters (it said "Value should have at most 200 items after validation")
    for path, params in (("/api/table", {"q": "x" * 201}), ("/api/item", {"run_id": "x" * 201, "item_id": "i"})):
        detail = client.get(path, params=params).json()["detail"]
        assert [(d["loc"][-1], d["msg"]) for d in detail] == [
            (next(iter(params)), "String should have at most 200 characters")], detail
    assert client.get("/api/table", params={"pair_status": "not searched", "category": "(none)"}).status_code == 200
    assert client.get("/api/item", params={"run_id": toy["run_id"]}).status_code == 422
    assert client.get("/api/item", params={"run_id": toy["run_id"], "item_id": "nope"}).status_code == 404
    it = client.get("/api/item", params={"run_id": toy["run_id"], "item_id": "q007"}).json()
    assert it["status"] == "pass" and it["pairs"] == []
    short = client.get("/api/item", params={"run_id": toy["run_id"][:6], "item_id": "q007"})  # as status prints it
    assert short.status_code == 200 and short.json() == it and it["run_id"] == toy["run_id"]
    gone = client.get("/api/item", params={"run_id": "zz", "item_id": "q007"})
    assert gone.status_code == 404 and "no collection run 'zz'" in gone.json()["detail"]
    assert client.get("/api/nothing").status_code == 404
    # query text is text, as in a write's body: a control character is a 422 naming it
    # (they were taken as filter values and listed as facets at count 0)
    for params in ({"benchmark": "a\x00b"}, {"q": "\x1b[31m"}, {"model": ["ok", "x\x7f"]}):
        r = client.get("/api/table", params=params)
        assert r.status_code == 422 and "control character U+00" in r.text, params
    r = client.get("/api/item", params={"run_id": toy["run_id"], "item_id": "q\x00"})
    assert r.status_code == 422 and "control character U+0000" in r.text
    assert client.get("/api/table", params={"benchmark": "é😀"}).status_code == 200  # not ASCII is still text


def test_no_path_reaches_the_filesystem(client: TestClient) -> None:
    from importlib import resources

    for path in ("/static/../../etc/passwd", "/static/..%2F..%2Fetc%2Fpasswd", "/static/%2e%2e/%2e%2e/etc/passwd",
                 "/static/..\\..\\etc\\passwd", "/static/app.py", "/static/__init__.py", "/static/",
                 "/static/static%2Fapp.js", "/etc/passwd", "/static/%2Fetc%2Fpasswd"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "root:" not in r.text
    r = client.get("/static/app.js")
    assert r.status_code == 200
    assert r.content == resources.files("failtrace.serve").joinpath("static/app.js").read_bytes()
    assert client.get("/").headers["content-security-policy"].startswith("default-src 'self'")


def test_writes_refused_without_review_and_store_unchanged(client: TestClient, toy: dict[str, Any]) -> None:
    case = toy["cases"][0]
    review = {"pair_run_id": case.pair_run_id, "item_id": case.item_id, "decision": "reject", "comment": "no"}
    assert client.post("/api/reviews", json=review).status_code == 403
    r = client.post(f"/api/cases/{case.case_id}/override", json={"category": "NC-IA+AG", "comment": "x"})
    assert r.status_code == 403
    for c in toy["cases"]:  # browse everything
        assert client.get(f"/api/cases/{c.case_id}").status_code == 200
        assert client.get(f"/api/cases/{c.case_id}/graph").status_code == 200
    assert client.get("/api/reviews").json() == {"reviews": []}
    meta = client.get("/api/meta").json()
    assert meta["review"] is False
    # the stored methods in the attribution registry's order (the explorer's method buttons follow it)
    from failtrace.attribution.methods import ATTRIBUTION_METHODS

    stored = {m for c in toy["cases"] for m in c.methods}
    assert len(stored) > 1 and meta["methods"] == [m for m in ATTRIBUTION_METHODS if m in stored]
    # refused before the body is looked at: an empty or non-finite body is the same 403, not a 422 or a 500
    case_url = f"/api/cases/{case.case_id}"
    for where in ("/api/reviews", f"{case_url}/override", f"{case_url}/contrast"):
        for body in (b"{}", b'{"decision": NaN}', b"{", b"not json"):
            r = client.post(where, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 403 and "read-only explorer" in r.json()["detail"], (where, body)
    assert client.post("/api/table", json={}).status_code == 405  # a read route stays a read route
    for method in ("PUT", "PATCH", "DELETE"):  # no route takes them: a 405, not a 411 or 415 about their body
        for where in ("/api/reviews", f"{case_url}/override", "/api/table"):
            r = client.request(method, where)
            assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}, (method, where, r.text)
    assert sha256(toy["store"]) == toy["sha"]
    assert not Path(str(toy["store"]) + ".wal").exists()


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/table", "/api/cases/{case_id}", "/api/cases/{case_id}/graph", "/api/reviews",
            "/api/cases/{case_id}/override", "/api/item", "/api/meta"} <= set(spec["paths"])
    names = {p["name"] for p in spec["paths"]["/api/table"]["get"]["parameters"]}
    assert {"pair_status", "category", "dl_min", "k_max", "sort", "limit", "offset"} <= names
    r = client.get("/docs", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/#/api"
    assert client.get("/redoc").status_code == 404  # no page that would load a CDN script


def test_foreign_host_header_refused(client: TestClient) -> None:
    """Starlette's host check refuses it (DNS rebinding); the refusal was a bare text "Invalid host header", now one
    JSON line as every other error, naming the header and what a proxy must send."""
    for host in ("evil.example", "evil.example:8765", ""):
        r = client.get("/api/meta", headers={"host": host})
        assert r.status_code == 400 and r.headers["content-type"] == "application/json", (host, r.text)
        assert r.json()["detail"].startswith(f"the Host header {host!r} is not a name this explorer answers to "
                                             "(127.0.0.1, localhost, [::1], ::1)"), r.text
        assert r.headers["x-content-type-options"] == "nosniff"  # the security headers still go with it
    assert client.head("/api/meta", headers={"host": "evil.example"}).status_code == 400
    for host in ("127.0.0.1:8765", "localhost"):
        assert client.get("/api/meta", headers={"host": host}).status_code == 200


def test_a_chosen_facet_value_stays_listed_at_zero(client: TestClient) -> None:
    """Two filters that exclude each other: each chosen value is still listed (count 0), so its box can be
    unticked; it used to vanish, leaving a filter the page no longer showed."""
    data = client.get("/api/table", params={"verdict": "pass", "pair_status": "clean"}).json()
    assert data["total"] == 0 and data["rows"] == []
    facets = {k: {f["value"]: f["count"] for f in v} for k, v in data["facets"].items()}
    assert facets["pair_status"]["clean"] == 0 and facets["pair_status"]["(none)"] > 0
    assert facets["verdict"]["pass"] == 0 and facets["verdict"]["fail"] > 0
    assert [f["value"] for f in data["facets"]["verdict"]].count("pass") == 1


def test_page_total_and_counts_read_one_snapshot(toy: dict[str, Any]) -> None:
    """A rebuild of the rows table between the page query and the total (a review written meanwhile) must not make
    them disagree: the table reads one snapshot."""
    from failtrace.serve.queries import RowIndex, TableQuery, table

    index = RowIndex()
    with open_store(toy["store"], read_only=True) as st:
        n = index.refresh(st.con, True)

    class RebuildAfterFirstSelect:
        """A cursor that, right after the page query, replaces ``rows`` with one row from another cursor."""

        def __init__(self, cur: Any) -> None:
            self.cur, self.selects = cur, 0

        def execute(self, sql: str, params: Any = None) -> Any:
            out = self.cur.execute(sql, params) if params is not None else self.cur.execute(sql)
            if sql.startswith("SELECT"):
                self.selects += 1
                if self.selects == 1:
                    other = index.cursor()
                    other.execute("CREATE OR REPLACE TABLE rows AS SELECT * FROM rows LIMIT 1")
                    other.close()
            return out

    got = table(RebuildAfterFirstSelect(index.cursor()), TableQuery(limit=500))
    assert len(got["rows"]) == got["total"] == n > 1
    assert sum(f["count"] for f in got["facets"]["verdict"]) == n
    assert table(index.cursor(), TableQuery(limit=500))["total"] == 1  # the rebuild did land, afterwards
    index.close()


def test_a_failing_request_is_one_line_for_client_and_terminal(toy: dict[str, Any], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A damaged JSON column answers a 500 naming the table, column and case, and logs that one line; the error no
    longer reaches Starlette's outer handler, which re-raised it for uvicorn to print a traceback (and which makes
    this TestClient raise)."""
    import logging

    from failtrace.serve import casedata

    store = tmp_path / "damaged.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    with open_store(store) as st:
        st.con.execute("UPDATE cases SET category_evidence = '{oops' WHERE case_id = ?", [case.case_id])
    with caplog.at_level(logging.ERROR, logger="uvicorn.error"), \
            TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        for url in (f"/api/cases/{case.case_id}", f"/api/cases/{case.case_id}/graph"):
            r = c.get(url)
            assert r.status_code == 500, url
            detail = r.json()["detail"]
            assert f"cases.category_evidence of case {case.case_id}" in detail and "\n" not in detail
            assert r.headers["x-content-type-options"] == "nosniff"  # still passes the security headers
        other = toy["cases"][1].case_id
        assert c.get(f"/api/cases/{other}").status_code == 200  # one damaged row spoils only its own page

        def boom(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("boom\nsecond line")

        monkeypatch.setattr(casedata, "case_detail", boom)
        r = c.get(f"/api/cases/{other}")
        assert r.status_code == 500 and r.json() == {"detail": "internal error: RuntimeError"}
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "uvicorn.error"]
    assert len(lines) == 3 and all(rec.exc_info is None for rec in caplog.records)
    assert lines[0].startswith(f"GET /api/cases/{case.case_id} failed: ") and "category_evidence" in lines[0]
    assert lines[2] == f"GET /api/cases/{other} failed: internal error: RuntimeError: boom"


def test_review_names_the_case_of_the_newest_analysis(toy: dict[str, Any], tmp_path: Path) -> None:
    """A pair analysed twice has two cases; a review belongs to the one the table shows (the newest analysis), not
    to whichever id sorts last."""
    store = tmp_path / "two-analyses.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    old_id = "f" * 24  # sorts after every real case id
    with open_store(store) as st:
        analysis = st.con.execute("SELECT analysis_id FROM cases WHERE case_id = ?", [case.case_id]).fetchone()[0]
        st.con.execute("INSERT INTO runs SELECT * REPLACE ('analysis-older' AS run_id, "
                       "TIMESTAMP '2001-01-01' AS created_at) FROM runs WHERE run_id = ?", [analysis])
        st.con.execute("INSERT INTO cases SELECT * REPLACE (? AS case_id, 'analysis-older' AS analysis_id) "
                       "FROM cases WHERE case_id = ?", [old_id, case.case_id])
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        shown = _all_rows(c, has_case=True)
        row = next(r for r in shown if r["pair_run_id"] == case.pair_run_id and r["item_id"] == case.item_id)
        assert row["case_id"] == case.case_id
        r = c.post("/api/reviews", json={"pair_run_id": case.pair_run_id, "item_id": case.item_id,
                                         "decision": "accept", "comment": "fine"})
        assert r.status_code == 201 and r.json()["case_id"] == case.case_id
        # an override of the older analysis's case would never be shown: refused, naming the case that is shown
        r = c.post(f"/api/cases/{old_id}/override", json={"category": "NC-IA+AG", "comment": "why"})
        assert r.status_code == 409 and f"so the override would never be seen: use its case {case.case_id} " \
            "instead" in r.json()["detail"]
        # so would a contrast pick (it was recorded, 201, against a case no view shows)
        alternative = next(a["token_id"] for a in c.get(f"/api/cases/{case.case_id}").json()["alternatives"]
                           if not (a["is_target"] or a["is_contrast"]))
        r = c.post(f"/api/cases/{old_id}/contrast", json={"contrast_id": alternative, "comment": "better"})
        assert r.status_code == 409 and f"so the contrast pick would never be seen: use its case {case.case_id} " \
            "instead" in r.json()["detail"]
        assert all(rv["case_id"] != old_id for rv in c.get("/api/reviews").json()["reviews"])
        # an old link opened the older case as if it were current: the payload now says which case is current
        assert c.get(f"/api/cases/{old_id}").json()["current"] == {"is_current": False, "analysis_id": analysis,
                                                                   "case_id": case.case_id}
        assert c.get(f"/api/cases/{case.case_id}").json()["current"] == {"is_current": True,
                                                                         "analysis_id": analysis,
                                                                         "case_id": case.case_id}
    from failtrace.cli import main

    before = sha256(store)
    assert main(["override", "--store", str(store), "--case", old_id, "--category", "M-IA", "--reason", "x"]) == 2
    assert sha256(store) == before


def test_the_newest_decision_on_a_pair_is_the_one_in_force(toy: dict[str, Any], tmp_path: Path) -> None:
    """Reviews are a log: accepting a pair and then rejecting it kept both rows, and nothing said which one holds.
    The case says its decision in force (the newest accept or reject; contrast picks and overrides are not decisions
    on the pair), and None before any."""
    store = tmp_path / "decide.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    pair = {"pair_run_id": case.pair_run_id, "item_id": case.item_id}
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        url = f"/api/cases/{case.case_id}"
        assert c.get(url).json()["decision"] is None
        assert c.post("/api/reviews", json={**pair, "decision": "accept", "comment": "looks right"}).status_code == 201
        assert c.get(url).json()["decision"]["decision"] == "accept"
        assert c.post("/api/reviews", json={**pair, "decision": "reject", "comment": "no"}).status_code == 201
        other = next(k for k in ("M-IA", "NC-IA+M-AG", "NC-IA+AG") if k != c.get(url).json()["effective_category"])
        assert c.post(f"{url}/override", json={"category": other, "comment": "why"}).status_code == 201
        body = c.get(url).json()
        assert body["decision"]["decision"] == "reject" and body["decision"]["comment"] == "no"
        assert body["decision"]["review_id"] == next(r["review_id"] for r in body["reviews"]
                                                     if r["decision"] in ("accept", "reject"))
        assert [r["decision"] for r in body["reviews"]][1:] == ["reject", "accept"]  # the log keeps them all
    # a clock stepped back (NTP) between two decisions: the later one is still the one in force
    from failtrace.serve import review_api as api

    class Behind(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return datetime(2001, 1, 1, tzinfo=tz)

    api_datetime = api.datetime
    api.datetime = Behind
    try:
        with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
            assert c.post("/api/reviews", json={**pair, "decision": "accept", "comment": "later"}).status_code == 201
            assert c.get(url).json()["decision"]["comment"] == "later"
    finally:
        api.datetime = api_datetime


def test_review_mode_writes_nothing_until_the_first_review(toy: dict[str, Any], tmp_path: Path) -> None:
    """--review opened the store and created the reviews table at once, so merely browsing changed the file; now
    the table is made by the first review (and reads before it see none). A reviews table of an older version (no
    contrast columns) still gains them when a review-mode explorer opens it."""
    store = tmp_path / "browse.duckdb"
    shutil.copy(toy["store"], store)
    before = store.read_bytes()
    case = toy["cases"][0]
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        assert c.get(f"/api/cases/{case.case_id}").json()["reviews"] == []
        assert c.get("/api/reviews").json()["reviews"] == []
    assert store.read_bytes() == before
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        r = c.post("/api/reviews", json={"pair_run_id": case.pair_run_id, "item_id": case.item_id,
                                         "decision": "accept", "comment": "first"})
        assert r.status_code == 201
        assert [x["comment"] for x in c.get(f"/api/cases/{case.case_id}").json()["reviews"]] == ["first"]
    old = tmp_path / "old.duckdb"
    shutil.copy(toy["store"], old)
    with open_store(old) as st:  # the reviews table as it was before a reviewer could pick another contrast
        st.con.execute("CREATE TABLE reviews (review_id VARCHAR PRIMARY KEY, pair_run_id VARCHAR, item_id VARCHAR, "
                       "case_id VARCHAR, decision VARCHAR, category VARCHAR, comment VARCHAR, created_at TIMESTAMP)")
    with TestClient(create_app(old, review=True), base_url="http://127.0.0.1") as c:
        assert c.get(f"/api/cases/{case.case_id}").status_code == 200
    with open_store(old, read_only=True) as st:
        cols = {r[0] for r in st.con.execute("SELECT column_name FROM information_schema.columns "
                                             "WHERE table_name = 'reviews'").fetchall()}
    assert {"contrast_id", "contrast_text"} <= cols


def _raw_post(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """POST with header bytes exactly as given (the test client re-encodes them; uvicorn passes them through)."""
    import asyncio

    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), *headers],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_review_mode_writes_validated_rows(toy: dict[str, Any], tmp_path: Path) -> None:
    store = tmp_path / "review.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    other = next(c for c in ("M-IA", "NC-IA+M-AG", "NC-IA+AG") if c != case.category)
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        ok = {"pair_run_id": case.pair_run_id, "item_id": case.item_id, "decision": "reject", "comment": "bad pair"}
        r = c.post("/api/reviews", json=ok)
        assert r.status_code == 201 and r.json()["case_id"] == case.case_id
        long = c.post("/api/reviews", json={**ok, "comment": "y" * 2100})  # the 422 does not echo it whole
        (err,) = long.json()["detail"]
        assert long.status_code == 422 and err["input"] == "y" * 120 + "… (2,100 characters)"
        for bad, code in (({**ok, "decision": "maybe"}, 422), ({**ok, "comment": "x" * 2001}, 422),
                          ({**ok, "item_id": "nope"}, 404), ({"decision": "accept"}, 422)):
            assert c.post("/api/reviews", json=bad).status_code == code, bad
        assert c.post("/api/reviews", content=b'{"a": "' + b"x" * MAX_BODY + b'"}',
                      headers={"content-type": "application/json"}).status_code == 413
        for length in (b"abc", b"\xb2"):  # Latin-1 '²' passes str.isdigit, and int() then failed: a 500
            status, body = _raw_post(c.app, "/api/reviews", [(b"content-length", length)])
            assert status == 413 and "request body over" in json.loads(body)["detail"], length
        url = f"/api/cases/{case.case_id}/override"
        assert c.post(url, json={"category": "nonsense", "comment": "x"}).status_code == 422
        # a lone surrogate escape: a 422 that says so (its echo used to fail the response: a 500 and a traceback)
        lone = json.dumps({**ok, "comment": "A"}).replace('"A"', '"\\ud800"').encode()
        lone_reason = json.dumps({"category": other, "comment": "A"}).replace('"A"', '"\\udfff"').encode()
        for where, body in (("/api/reviews", lone), (url, b'{"category": "\\ud800", "comment": "x"}'),
                            (url, lone_reason)):
            r = c.post(where, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422 and "\\ud" in r.text, (where, r.text)
        assert c.post(url, json={"category": other, "comment": "   "}).status_code == 422
        for ctrl in ("\x00", "\x1b[31m", "\x7f"):  # stored, exported and drawn as boxes: refused, named
            r = c.post("/api/reviews", json={**ok, "comment": f"x{ctrl}y"})
            assert r.status_code == 422 and "control character U+00" in r.text, ctrl
        missing = c.post("/api/cases/" + "0" * 24 + "/override", json={"category": other, "comment": "x"})
        assert missing.status_code == 404
        assert c.post(url, json={"category": other, "comment": "ablation says so"}).status_code == 201
        d = c.get(f"/api/cases/{case.case_id}").json()
        assert d["effective_category"] == other and d["override"]["reason"] == "ablation says so"
        assert [r["decision"] for r in d["reviews"]] == ["category", "reject"]
        assert c.get("/api/table", params={"category": other}).json()["total"] >= 1
        assert len(c.get("/api/reviews").json()["reviews"]) == 2
        assert c.post("/api/reviews", json={**ok, "comment": "two\nlines\tand a tab"}).status_code == 201
        assert len(c.get("/api/reviews").json()["reviews"]) == 3
        # a unique prefix of the pair run, as failtrace status prints it and /api/item takes it: stored whole
        short = c.post("/api/reviews", json={**ok, "pair_run_id": case.pair_run_id[:6], "comment": "prefix"})
        assert short.status_code == 201 and short.json()["pair_run_id"] == case.pair_run_id
        wrong = c.post("/api/reviews", json={**ok, "pair_run_id": "zz", "comment": "x"})
        assert wrong.status_code == 404 and "no pair run 'zz'" in wrong.json()["detail"]
    with open_store(store, read_only=True) as st:  # what the rest of failtrace reads back
        stored = {x.case_id: x for x in load_cases(st)}[case.case_id]
        assert stored.effective_category == other and stored.category == case.category
        rows = st.con.execute("SELECT decision, comment FROM reviews ORDER BY created_at").fetchall()
        assert rows == [("reject", "bad pair"), ("category", "ablation says so"),
                        ("reject", "two\nlines\tand a tab"), ("reject", "prefix")]


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from failtrace.cli import main

    assert main(["serve", "--store", str(tmp_path / "missing.duckdb")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no results store") and "Traceback" not in err
    (tmp_path / "s.duckdb").write_text("not a database")
    assert main(["serve", "--store", str(tmp_path / "s.duckdb"), "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err


def test_cli_port_in_use_is_one_line(toy: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from failtrace.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", "--store", str(toy["store"]), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot serve on 127.0.0.1:{port}") and err.count("\n") == 1
        # a missing store is named first, whatever the port; and --review on a busy port writes nothing
        assert main(["serve", "--store", str(toy["store"]) + ".missing", "--port", str(port)]) == 2
        assert capsys.readouterr().err.startswith("error: no results store")
        assert main(["serve", "--store", str(toy["store"]), "--port", str(port), "--review"]) == 2
        assert capsys.readouterr().err.startswith(f"error: cannot serve on 127.0.0.1:{port}")
    assert sha256(toy["store"]) == toy["sha"] and not Path(str(toy["store"]) + ".wal").exists()


def test_all_addresses_print_the_url_to_open(toy: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--host 0.0.0.0 printed http://0.0.0.0:PORT, which is not an address to open; uvicorn.run is replaced here."""
    import uvicorn

    from failtrace.cli import main

    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.update(host=host, port=port))
    assert main(["serve", "--store", str(toy["store"]), "--host", "0.0.0.0", "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert served["host"] == "0.0.0.0" and served["port"] > 0
    assert out == (f"failtrace explorer on http://127.0.0.1:{served['port']} (and this machine's other addresses)  "
                   f"({toy['store']}, read-only)\nfailtrace explorer stopped\n")
    assert err.startswith("warning: binding 0.0.0.0: anyone who can reach this address can read the store")


def test_head_and_version(client: TestClient) -> None:
    from failtrace import __version__

    case_id = next(r["case_id"] for r in _all_rows(client) if r["case_id"])
    for path in ("/", "/static/app.js", "/api/meta", "/api/table?limit=3", f"/api/cases/{case_id}"):
        got, r = client.get(path), client.head(path)
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 100, path
        assert r.headers["content-length"] == str(len(got.content)), path  # the GET's length, not the body's
        assert r.headers["content-type"] == got.headers["content-type"], path
        assert r.headers["content-security-policy"] == got.headers["content-security-policy"], path
    assert client.head("/api/cases/no-such-case").status_code == 404
    assert client.head("/api/reviews", params={"x": 1}).status_code == 200  # GET route; the POST one is not HEAD
    assert client.head("/api/cases/x/override").status_code == 405  # POST only: HEAD stands for a GET
    assert client.head("/api/meta", headers={"host": "evil.example"}).status_code == 400
    assert "head" not in json.dumps(client.get("/openapi.json").json()["paths"]).lower().replace("header", "")
    spec = client.get("/openapi.json").json()["info"]
    assert spec["version"] == __version__ and "`" not in spec["description"]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_cli_serves_and_stops_on_sigint(toy: dict[str, Any], sig: str) -> None:
    """The real command in a subprocess: prints its loopback URL, answers, stops cleanly on Ctrl-C (SIGINT) or a
    scheduler's SIGTERM: exit 0 (a server's normal end) and a line saying it stopped."""
    import os
    import signal
    import subprocess
    import urllib.request

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "failtrace.cli", "serve", "--store", str(toy["store"]),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("failtrace explorer on http://127.0.0.1:") and "read-only" in line
        url = line.split()[3]
        for _ in range(100):
            try:
                with urllib.request.urlopen(url + "/api/meta", timeout=5) as r:
                    assert json.loads(r.read())["review"] is False
                break
            except OSError:
                import time

                time.sleep(0.1)
        else:
            pytest.fail("the server never answered")
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(timeout=20) == 0
        assert proc.stdout.read() == "failtrace explorer stopped\n"
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sha256(toy["store"]) == toy["sha"]


def test_a_second_pair_run_is_a_facet_not_a_silent_double(toy: dict[str, Any], tmp_path: Path) -> None:
    """A second pair run over the same collection run gives each failure a second row; the ``pair_run`` facet counts
    them per pair run, picking one brings back the failures it searched (here all), and /api/meta says each run's
    settings and collection run."""
    from failtrace.store.records import RunRecord

    path = tmp_path / "two.duckdb"
    shutil.copy(toy["store"], path)
    fails = [v["item_id"] for v in toy["verdicts"] if v["status"] == "fail"]
    passes = len(toy["verdicts"]) - len(fails)
    with open_store(path) as st:
        first = st.runs("pairs")[0]
        second = RunRecord(run_id="p2-unbounded", stage="pairs", benchmark=first.benchmark, model=first.model,
                           parent_run_id=toy["run_id"], settings={**first.settings, "try_unbounded": True})
        st.ensure_run(second)
        for item_id in fails:
            st.write_pair(second.run_id, toy["run_id"], item_id, first.benchmark,
                          {"status": "no_target", "rollouts": 1, "checks": 1, "positions_walked": 1,
                           "unverifiable_rollouts": 0, "hit_length_limit": False})
    with TestClient(create_app(path), base_url="http://127.0.0.1") as c:
        meta = c.get("/api/meta").json()
        runs = meta["pair_runs"]
        assert runs[second.run_id]["settings"] == runs[first.run_id]["settings"] + " try-unbounded"
        assert runs[second.run_id]["collection_run"] == runs[first.run_id]["collection_run"] == toy["run_id"]
        data = c.get("/api/table", params={"limit": 500}).json()
        assert data["total"] == passes + 2 * len(fails)
        facets = {f["value"]: f["count"] for f in data["facets"]["pair_run"]}
        assert facets == {first.run_id: len(fails), second.run_id: len(fails), "(none)": passes}
        one = c.get("/api/table", params={"limit": 500, "pair_run": second.run_id}).json()
        assert sorted(r["item_id"] for r in one["rows"]) == sorted(fails)
        assert {r["pair_status"] for r in one["rows"]} == {"no_target"}
        assert all(r["case_id"] is None for r in one["rows"])


def test_mask_order_is_what_the_flip_curve_masked(client: TestClient, toy: dict[str, Any]) -> None:
    """The page's "top tokens in masking order" (``mask_order``): masking those positions in that order with the
    toy model reproduces every stored flip curve, and the order follows the rule read by hand: positive relevance,
    never a special id or the template's own text, largest first, ties by position, no maskable token left out
    that outranks the last one."""
    from failtrace.analysis.masking import masked_delta
    from failtrace.models.loading import load_model

    lm = load_model(str(toy["model_dir"]), progress=False)
    checked = 0
    for case in toy["cases"]:
        d = client.get(f"/api/cases/{case.case_id}").json()
        labels = case.segment_labels()
        maskable = [not sp and lab != "special" for sp, lab in zip(case.special_mask, labels)]
        for name, m in case.methods.items():
            order = d["methods"][name]["mask_order"]
            raw = np.asarray(m.input_relevance)
            assert all(maskable[p] and raw[p] > 0 for p in order)
            keys = [(-raw[p], p) for p in order]
            assert keys == sorted(keys) and len(order) <= case.masking.max_k
            rest = [p for p in range(len(raw)) if maskable[p] and raw[p] > 0 and p not in order]
            assert len(order) == case.masking.max_k or not rest
            assert not order or all((-raw[p], p) > keys[-1] for p in rest)
            if m.flip_curve:
                again = masked_delta(lm.model, case.token_ids, [order[:k] for k in range(len(order) + 1)],
                                     case.target_id, case.contrast_id, case.masking)
                assert again == pytest.approx(m.flip_curve, abs=1e-4)
                checked += 1
    assert checked >= 3


def test_mask_caption_is_the_reports(client: TestClient, toy: dict[str, Any]) -> None:
    """The caption under the explorer's masking-order rows is the one the report and failtrace show print for the
    same rows (views.common.masked_caption), for every case and drawable method: flipped, not flipped, no curve."""
    from failtrace.views.common import masked_caption, masked_rows

    seen, tops_seen = set(), 0
    for case in toy["cases"]:
        d = client.get(f"/api/cases/{case.case_id}").json()
        for name, m in case.methods.items():
            if d["methods"][name]["drawable"]:
                want = masked_caption(m.flip_k, masked_rows(case, name), "shaded")
                assert d["methods"][name]["mask_caption"] == want
                seen.add(want.split(" (")[0].split(" flips")[0][:20])
                # the top token after masking the first k, k = 0..K, with its role in the pair
                roles = {case.target_id: "target", case.contrast_id: "contrast"}
                assert len(m.flip_tops) == len(m.flip_curve)
                assert d["methods"][name]["mask_tops"] == [{"text": t, "role": roles.get(i, "other")}
                                                           for i, t in zip(m.flip_tops, m.flip_top_texts)]
                tops_seen += len(m.flip_tops)
    assert len(seen) >= 2 and tops_seen >= 6  # more than one kind of caption was compared


def test_non_finite_and_huge_values_are_a_short_422(toy: dict[str, Any], tmp_path: Path) -> None:
    """A body holding NaN, Infinity or 1e999 (JSON from Python or JavaScript) was a 500: the 422 echoed the number
    back and the response could not carry it. A 15,000-character comment inside a rejected body, and a list of 300
    query values, were echoed whole (45 KB and 61 KB); every echo is now at most ECHO_CHARS characters."""
    from failtrace.serve.app import ECHO_CHARS

    store = tmp_path / "review.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    url = f"/api/cases/{case.case_id}/override"
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        for where, body in (("/api/reviews", b'{"decision": NaN}'), ("/api/reviews", b'{"pair_run_id": 1e999}'),
                            ("/api/reviews", b'{"comment": -Infinity}'), (url, b'{"category": [1e999]}'),
                            (f"/api/cases/{case.case_id}/contrast", b'{"contrast_id": NaN}')):
            r = c.post(where, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, (where, body, r.text)
            assert all(e["input"] is None or isinstance(e["input"], (str, dict)) for e in r.json()["detail"])
        r = c.post("/api/reviews", json={"comment": "y" * 15000})  # three missing fields, each echoing the body
        assert r.status_code == 422 and len(r.content) < 3 * (ECHO_CHARS + 400)
        assert all(len(json.dumps(e["input"])) <= ECHO_CHARS + 40 for e in r.json()["detail"])
        r = c.post("/api/reviews", content=b'{"pair_run_id": ' + b"9" * 4000 + b"}",
                   headers={"content-type": "application/json"})
        assert r.status_code == 422 and len(r.content) < 3 * (ECHO_CHARS + 400)
        r = c.get("/api/table", params=[("benchmark", "b" * 200)] * 300)
        assert r.status_code == 422 and len(r.content) < 2000
    with open_store(store, read_only=True) as st:  # nothing rejected was written
        assert st.con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'reviews'"
                              ).fetchone()[0] == 0  # nothing recorded: not even the table the first review makes
        assert st.con.execute("SELECT count(*) FROM overrides").fetchone()[0] == 0


def test_an_override_to_the_category_the_case_has_is_refused(toy: dict[str, Any], tmp_path: Path) -> None:
    """An override to the category the case already has was recorded and marked the case overridden (✎) while
    changing nothing: now a 409 that says so, and nothing is written. Back to the computed one is a change."""
    from failtrace.cases.record import CATEGORIES

    store = tmp_path / "review.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    other = next(k for k in CATEGORIES if k != case.category)
    url = f"/api/cases/{case.case_id}/override"
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        r = c.post(url, json={"category": case.category, "comment": "same"})
        assert r.status_code == 409 and r.json()["detail"] == (f"case {case.case_id}'s category is already "
                                                               f"{case.category}: give another category to override it")
        assert c.post(url, json={"category": other, "comment": "ablation says so"}).status_code == 201
        r = c.post(url, json={"category": other, "comment": "again"})
        assert r.status_code == 409 and f"already {other} (by an override)" in r.json()["detail"]
        assert c.post(url, json={"category": case.category, "comment": "back"}).status_code == 201
        assert [x["comment"] for x in c.get("/api/reviews").json()["reviews"]] == ["ablation says so", "back"]
        page = c.get(f"/api/cases/{case.case_id}").json()  # back to computed is a clear, not a second override
        assert page["override"] is None and page["effective_category"] == case.category
    with open_store(store, read_only=True) as st:
        assert st.con.execute("SELECT count(*) FROM overrides").fetchone()[0] == 0


@pytest.mark.parametrize("change", ["replace", "delete"])
def test_a_write_after_the_store_file_changed_is_refused(toy: dict[str, Any], tmp_path: Path, change: str) -> None:
    """DuckDB keeps writing to the file it opened: after the store's path was replaced or deleted, a review answered
    201 and was lost with the old file. Now the write is a 409 that says why, and the new file is left as it was."""
    store = tmp_path / "review.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    ok = {"pair_run_id": case.pair_run_id, "item_id": case.item_id, "decision": "accept", "comment": "fine"}
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        assert c.post("/api/reviews", json=ok).status_code == 201
        if change == "replace":
            fresh = tmp_path / "fresh.duckdb"
            shutil.copy(toy["store"], fresh)
            fresh.replace(store)
            before = sha256(store)
        else:
            store.unlink()
        for where, body in (("/api/reviews", ok),
                            (f"/api/cases/{case.case_id}/override", {"category": "M-IA", "comment": "why"})):
            r = c.post(where, json=body)
            assert r.status_code == 409 and "deleted or replaced" in r.json()["detail"], r.text
        assert c.get("/api/meta").status_code == 200  # reading goes on
    if change == "replace":
        assert sha256(store) == before
    else:
        assert not store.exists()


def test_meta_counts_the_cases_so_an_emptied_store_says_it_has_none(toy: dict[str, Any], tmp_path: Path) -> None:
    """``has_cases`` says the case tables exist (the queries need them); the header's "no analysed cases yet" read
    it, so a store whose case tables are empty never said so. ``n_cases`` counts them."""
    import duckdb

    with TestClient(create_app(toy["store"]), base_url="http://127.0.0.1") as c:
        assert c.get("/api/meta").json()["n_cases"] == len(toy["cases"]) > 0
    empty = tmp_path / "empty.duckdb"
    shutil.copy(toy["store"], empty)
    con = duckdb.connect(str(empty))
    for table in ("case_methods", "case_graphs", "overrides", "cases"):
        con.execute(f"DELETE FROM {table}")
    con.close()
    with TestClient(create_app(empty), base_url="http://127.0.0.1") as c:
        meta = c.get("/api/meta").json()
    assert meta["has_cases"] is True and meta["n_cases"] == 0


def test_a_pair_search_without_a_pair_cannot_be_accepted(toy: dict[str, Any], tmp_path: Path) -> None:
    """POST /api/reviews accepted `accept` for an item whose search found no pair (no_target: no target, no
    contrast) with a 201. Only a pair with a target and a contrast is decided on; the store is left as it was."""
    store = tmp_path / "nopair.duckdb"
    shutil.copy(toy["store"], store)
    empty = next((p for p in toy["pairs"] if p["contrast_id"] is None), None)
    if empty is None:  # the toy's searches all found a pair: make one of them a no_target row, as the search writes
        import duckdb

        empty = toy["pairs"][-1]
        with duckdb.connect(str(store)) as con:
            con.execute("UPDATE pairs SET status = 'no_target', target_id = NULL, target_text = NULL, contrast_id = "
                        "NULL, contrast_text = NULL WHERE pair_run_id = ? AND item_id = ?",
                        [empty["pair_run_id"], empty["item_id"]])
    before = sha256(store)
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        for decision in ("accept", "reject"):
            r = c.post("/api/reviews", json={"pair_run_id": empty["pair_run_id"], "item_id": empty["item_id"],
                                             "decision": decision, "comment": ""})
            assert r.status_code == 409 and "found no pair for" in r.json()["detail"], r.text
        assert c.get("/api/reviews").json()["reviews"] == []
    assert sha256(store) == before


def test_a_write_another_sites_page_could_send_is_refused(toy: dict[str, Any], tmp_path: Path) -> None:
    """A web page the reviewer visits can send a POST to a `serve --review` explorer (cross-site request forgery):
    a ``no-cors`` fetch of a Blob has no Content-Type and needs no preflight, and its Host header is the explorer's
    own. FastAPI before 0.132 (pyproject allows 0.110) parses such an untyped body as JSON; 0.132 and later answer 422,
    so the explorer was safe only by the installed version. Now the explorer itself refuses a write that is not typed
    JSON or that a browser says comes from another origin; the store is unchanged by a refused one."""
    store = tmp_path / "csrf.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    body = json.dumps({"pair_run_id": case.pair_run_id, "item_id": case.item_id, "decision": "reject",
                       "comment": "forged"}).encode()
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1:8765") as c:
        forged = [({}, 415),  # the Blob: no Content-Type at all
                  ({"content-type": "text/plain"}, 415),  # a form or text body, also preflight-free
                  ({"content-type": "application/json", "origin": "https://evil.example"}, 403),
                  ({"content-type": "application/json", "origin": "null"}, 403),
                  ({"content-type": "application/json", "sec-fetch-site": "cross-site"}, 403),
                  ({"content-type": "application/json", "origin": "http://127.0.0.1:9999"}, 403)]
        for headers, code in forged:
            r = c.post("/api/reviews", content=body, headers=headers)
            assert r.status_code == code, (headers, r.text)
            assert "detail" in r.json()
        assert c.get("/api/reviews").json()["reviews"] == []
        own = {"content-type": "application/json", "origin": "http://127.0.0.1:8765", "sec-fetch-site": "same-origin"}
        assert c.post("/api/reviews", content=body, headers=own).status_code == 201  # the explorer's page
        proxied = {"content-type": "application/json", "origin": "https://ft.example.org", "sec-fetch-site":
                   "same-origin"}  # behind a proxy that rewrites Host: the browser still says same-origin
        assert c.post("/api/reviews", content=body, headers=proxied).status_code == 201
        assert c.post("/api/reviews", content=body, headers={"content-type": "application/json"}).status_code == 201
        assert [r["comment"] for r in c.get("/api/reviews").json()["reviews"]] == ["forged"] * 3


def test_k_none_meets_a_minimum_up_to_k_plus_one(toy: dict[str, Any], tmp_path: Path) -> None:
    """k* "none" (no flip within the K tokens masked: k* > K) was left out of every k_min, so a search for hard
    cases (k* at least 6) found none of the cases that need more than 10 tokens. It meets a minimum up to K + 1
    (beyond that, whether k* reaches it is unknown) and never a maximum."""
    store = tmp_path / "s.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    curve = case.methods["attnlrp"].flip_curve
    with open_store(store) as st:  # as a case whose masking never flipped it within its K = len(curve) - 1
        st.con.execute("UPDATE case_methods SET flip_k = NULL WHERE case_id = ? AND method = 'attnlrp'",
                       [case.case_id])
    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        flips = {x.case_id: x.flip_k("attnlrp") for x in toy["cases"] if x.case_id != case.case_id}
        for bound in (1, len(curve), len(curve) + 1):
            got = sorted(r["case_id"] for r in _all_rows(c, k_min=bound))
            want = sorted([i for i, k in flips.items() if k is not None and k >= bound]
                          + ([case.case_id] if bound <= len(curve) else []))
            assert got == want, bound
        assert case.case_id not in {r["case_id"] for r in _all_rows(c, k_max=10**5)}
