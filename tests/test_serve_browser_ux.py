"""The explorer's behaviour where a person first met it wrong (a browser probe of the demo store), in Debian's
Chromium over the toy store of tests/test_serve_browser.py (its fixtures and helpers, shared): the graph does not
move when a node is pinned, review writes keep the page where it was and say "saved", a double click records one
row, bad filter input is said beside the filters with the table kept, a new view starts at the top, the case page
fits a phone's width, error text wraps, graph labels are not clipped, a short case id is followed, data-ready-hash
names the final hash, a stopped server is said as such, and an override to the category the case has is refused."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from test_serve_browser import _open, _painted, page, server  # noqa: E402,F401  (the module's fixtures, shared)


def _graph_case(server: dict[str, Any]) -> Any:
    return max(server["cases"], key=lambda c: len(c.graph["edges"]))


def _box(page: Any, selector: str) -> dict[str, float]:
    return page.locator(selector).evaluate("e => { const b = e.getBoundingClientRect(); "
                                           "return {top: b.top, left: b.left, right: b.right, bottom: b.bottom}; }")


def test_pinning_a_node_keeps_the_graph_in_place(page: Any, server: dict[str, Any]) -> None:
    """Pinning wrote a longer status line that wrapped and pushed the graph down (37 px on the demo store), so a
    second click on the same spot pinned another node instead of unpinning the first."""
    case = _graph_case(server)
    for width in (1360, 640):
        page.set_viewport_size({"width": width, "height": 900})
        _open(page, server, f"#/graph/{case.case_id}", "graph")
        top = _box(page, "#graph")["top"]
        node = page.locator("circle.n[data-k^='0:']").first
        key = node.get_attribute("data-k")
        b = node.bounding_box()
        x, y = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2
        page.mouse.click(x, y)
        assert page.locator("circle.n.pin").get_attribute("data-k") == key
        assert "pinned" in page.inner_text("#gsub")
        assert _box(page, "#graph")["top"] == top, width
        page.mouse.click(x, y)  # the same spot again: the same node, so it unpins
        assert page.locator("circle.n.pin").count() == 0, width
    page.set_viewport_size({"width": 1360, "height": 900})
