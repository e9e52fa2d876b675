"""The explorer's second round of fixes a person met (a probe of the demo store), in Debian's Chromium over the toy
store of tests/test_serve_browser.py (its fixtures and helpers, shared): the item page reads as text, not JSON."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from test_serve_browser import _open, _painted, page, server  # noqa: E402,F401  (the module's fixtures, shared)


def _api(server: dict[str, Any], path: str) -> Any:
    with urllib.request.urlopen(server["base"] + path.lstrip("/"), timeout=10) as r:
        return json.loads(r.read())


def _shown(tok: str) -> str:  # FT.shown: whitespace made visible, ∅ for an empty token
    return "".join({" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}.get(c, c) for c in tok) or "∅"


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
