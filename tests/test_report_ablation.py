"""The report's Fig. 3 view: an NC-IA case with a real tiny-model graph and node-ablation evidence gets the ablated
graph picture, its caption and node table match the evidence, the picture marks exactly the ablated nodes and
highlights exactly the edges on an ablated → prediction path (checked with networkx), and an M-IA case gets none."""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path

import networkx as nx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_cases import make_case  # noqa: E402

from failtrace.report.build import build_report  # noqa: E402


class _Articles(HTMLParser):
    """Per case article: its <img> alt texts and the text of its ablation table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.current: str | None = None
        self.alts: dict[str, list[str]] = {}
        self.cells: dict[str, list[str]] = {}
        self.in_ablation = 0
        self.in_td = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "article":
            self.current = (a.get("id") or "")[len("case-"):]
            self.alts[self.current], self.cells[self.current] = [], []
        if self.current and tag == "img":
            self.alts[self.current].append(a.get("alt") or "")
        if self.current and tag == "div" and a.get("class") == "ablation":
            self.in_ablation = 1
        elif self.in_ablation and tag == "div":
            self.in_ablation += 1
        self.in_td = tag == "td" and bool(self.in_ablation)

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self.in_ablation:
            self.in_ablation -= 1
        if tag == "td":
            self.in_td = False
        if tag == "article":
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.in_td and self.current:
            self.cells[self.current].append(data)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from failtrace.analysis.categories import node_ablation
    from report_cases import tiny_graph

    from failtrace.cases.build import graph_record

    nc = make_case(2, "ifeval", "NC-IA+M-AG", "URT", {"attnlrp": None})
    mia = make_case(2, "ifeval", "M-IA", "URT", {"attnlrp": 1}, seed=1)  # same tokens, another id
    model, ids, target, contrast, g = tiny_graph(nc)
    evidence = node_ablation(model, ids, g.relevance, target, contrast, budget=5, special_mask=nc.special_mask)
    for c in (nc, mia):
        c.graph = graph_record(g, g.pruned)
        c.category_evidence = {**c.category_evidence, "ablation": evidence}
    out = tmp_path_factory.mktemp("report")
    index = build_report([nc, mia], [], out)
    return index, nc, mia, evidence


def test_only_the_nc_ia_case_gets_the_ablation_picture(setup):
    index, nc, mia, _ev = setup
    gdir = index.parent / "figures" / "graphs"
    assert (gdir / f"{nc.case_id}-ablation.png").stat().st_size > 10_000
    assert not (gdir / f"{mia.case_id}-ablation.png").exists()
    p = _Articles()
    p.feed(index.read_text(encoding="utf-8"))
    assert [a for a in p.alts[nc.case_id] if a.startswith("ablated attribution graph")]
    assert not [a for a in p.alts[mia.case_id] if a.startswith("ablated")]
    assert any(a.startswith("pruned attribution graph") for a in p.alts[mia.case_id])  # its plain graph stays


def test_caption_and_table_match_the_evidence(setup):
    index, nc, _mia, ev = setup
    k = ev["k"] if ev["flipped"] else len(ev["nodes"])  # the flip, else every node tried
    text = index.read_text(encoding="utf-8")
    art = text[text.index(f'id="case-{nc.case_id}"'):]
    art = art[: art.index("</article>")]
    assert f"Δℓ {ev['curve'][0]:.2f} → {ev['curve'][k]:.2f}" in art
    assert ("puts the contrast above the target" in art) == (ev["curve"][k] < 0)
    p = _Articles()
    p.feed(text)
    cells = p.cells[nc.case_id]
    rows = [cells[i:i + 6] for i in range(0, len(cells), 6)]
    assert [r[1] for r in rows] == [f"L{d['layer']}/{d['position']}" for d in ev["nodes"][:k]]
    assert [float(r[4]) for r in rows] == pytest.approx([round(x, 2) for x in ev["curve"][1:k + 1]], abs=0.006)


def test_picture_marks_the_ablated_nodes_and_their_paths_to_the_prediction(setup):
    from failtrace.analysis.ablation_view import ablation_view
    from failtrace.report.ablationfig import draw_ablation

    _index, nc, _mia, ev = setup
    rec = nc.graph
    view = ablation_view(rec, ev, n_tokens=len(nc.tokens))
    fig = draw_ablation(view, ev["curve"], nc.tokens, nc.special_mask)
    ax = fig.axes[0]
    cols = sorted({t for _s, t, _r in rec["nodes"]} | {e[1] for e in rec["edges"]} | {e[3] for e in rec["edges"]}
                  | {d["position"] for d in ev["nodes"][:view.k]})
    x_of = {t: i for i, t in enumerate(cols)}
    stage = {name: s for s, name in enumerate(rec["stages"])}
    for j, d in enumerate(ev["nodes"][:view.k], 1):  # one × per ablated node, at (its column, stage L<layer>)
        (art,) = [a for a in ax.collections if a.get_gid() == f"ablated-{j}"]
        assert tuple(art.get_offsets()[0]) == (x_of[d["position"]], stage[f"L{d['layer']}"])
    # independent reference: networkx descendants of the ablated nodes that are ancestors of the final node
    G = nx.DiGraph()
    G.add_edges_from(((a, b), (c, d)) for a, b, c, d, _w in rec["edges"])
    final = (len(rec["stages"]) - 1, len(nc.tokens) - 1)
    src = {(stage[f"L{d['layer']}"], d["position"]) for d in ev["nodes"][:view.k]} & set(G.nodes)
    down = set().union(*(nx.descendants(G, s) | {s} for s in src)) if src else set()
    up = nx.ancestors(G, final) | {final}
    want = sorted(((x_of[b], a), (x_of[d], c)) for a, b, c, d, _w in rec["edges"] if (a, b) in down and (c, d) in up)
    hl = [a for a in ax.collections if a.get_gid() == "downstream-edges"]
    got = sorted(tuple(map(tuple, seg.tolist())) for seg in hl[0].get_segments()) if hl else []
    assert got == [tuple(map(tuple, w)) for w in want]
    assert want, "the fixture should give at least one ablated node with a path to the prediction"


def test_evidence_that_does_not_fit_gives_the_plain_graph_only(setup, tmp_path):
    _index, nc, _mia, ev = setup
    import copy

    bad = copy.deepcopy(nc)
    bad.category_evidence["ablation"] = {**ev, "curve": ev["curve"][:1], "flipped": False}  # too short a curve
    index = build_report([bad], [], tmp_path)
    assert not (tmp_path / "figures" / "graphs" / f"{bad.case_id}-ablation.png").exists()
    text = index.read_text(encoding="utf-8")
    assert "pruned attribution graph of case" in text and "ablated attribution graph" not in text


def test_dollar_tokens_in_the_ablation_picture_are_literal(setup, tmp_path):
    """The picture's token ticks and title are user text: ``$x^$`` must be drawn as written (matplotlib's mathtext
    raised on it), through the same literal-text rule as every figure, and the PNG must be written."""
    from matplotlib.text import Text

    from failtrace.analysis.ablation_view import ablation_view
    from failtrace.report.ablationfig import draw_ablation
    from failtrace.report.figures import _save

    _index, nc, _mia, ev = setup
    tokens = ["$x^$" if i % 2 else t for i, t in enumerate(nc.tokens)]
    view = ablation_view(nc.graph, ev, n_tokens=len(tokens))
    fig = draw_ablation(view, ev["curve"], tokens, nc.special_mask, title="cost $5 or $6")
    texts = [t for t in fig.findobj(Text) if "$" in t.get_text()]
    assert any("$x^$" in t.get_text() for t in texts) and any("cost $5 or $6" in t.get_text() for t in texts)
    assert not any(t.get_parse_math() for t in texts)
    assert _save(fig, tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
