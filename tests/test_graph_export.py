"""JSON exports (failtrace schema and circuit-tracer style), record round trip, static and interactive views."""

from __future__ import annotations

import copy
import html
import json
import re

import numpy as np
import pytest
import torch

from failtrace.graph import AttributionGraph, graph_from_ids
from failtrace.graph.export import SCHEMA, save_json, to_circuit_tracer, to_json
from failtrace.graph.prune import connect
from failtrace_testkit.tiny import tiny_model
from failtrace.views.graph_interactive import graph_data, graph_html
from failtrace.views.graph_static import graph_figure, save_graph_png


@pytest.fixture(scope="module")
def graph() -> AttributionGraph:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    model = tiny_model("qwen3")
    ids = torch.randint(3, 128, (14,), generator=torch.Generator().manual_seed(1)).tolist()
    tokens = [f"t{i}" for i in ids]
    tokens[0] = "<s>"

    def objective(logits: torch.Tensor) -> torch.Tensor:
        return logits[5] - logits[7]

    g = graph_from_ids(model, ids, objective, tokens=tokens, special_mask=[True] + [False] * 13, mid_nodes=True,
                       node_threshold=0.01, prune="cumulative:0.9",
                       metadata={"model": "tiny-qwen3", "target": {"id": 5, "text": "A"},
                                 "contrast": {"id": 7, "text": "B"}, "objective": "logit_diff"})
    torch.set_num_threads(old)
    return g


def test_failtrace_json_schema(graph, tmp_path):
    data = json.loads(save_json(graph.pruned, tmp_path / "g.json").read_text())
    assert data["schema"] == SCHEMA
    meta = data["metadata"]
    for key in ("model", "prompt", "target", "contrast", "objective", "objective_value", "node_threshold", "prune",
                "tokens", "final_node", "lrp_method", "edge_method", "notes"):
        assert key in meta, key
    assert meta["model"] == "tiny-qwen3" and meta["prune"] == "cumulative:0.9" and meta["node_threshold"] == 0.01
    ids = {n["id"] for n in data["nodes"]}
    assert meta["final_node"] == "L1/13" and meta["final_node"] in ids
    for node in data["nodes"]:
        assert set(node) >= {"id", "layer", "kind", "token_index", "token", "relevance", "normalized", "special"}
        assert node["token"] == graph.tokens[node["token_index"]]
        assert node["id"] == f"{node['stage']}/{node['token_index']}"
    assert data["links"], "a pruned graph of this model has edges"
    for link in data["links"]:
        assert link["source"] in ids and link["target"] in ids and isinstance(link["weight"], float)
    assert len(data["links"]) == graph.pruned.num_edges
    assert {s["kind"] for s in data["stages"]} == {"embed", "mid", "resid"}
    assert data["metrics"]["edges"] == len(data["links"])


def test_circuit_tracer_variant(graph):
    data = to_circuit_tracer(graph.pruned)
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert data["metadata"]["prompt_tokens"] == graph.tokens
    node_ids = {n["node_id"] for n in data["nodes"]}
    logit = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert len(logit) == 1 and logit[0]["is_target_logit"] and logit[0]["ctx_idx"] == 13
    assert {n["feature_type"] for n in data["nodes"]} == {"embedding", "mid residual", "residual", "logit"}
    assert all(n["layer"] == "E" for n in data["nodes"] if n["feature_type"] == "embedding")
    for n in data["nodes"]:
        assert n["reverse_ctx_idx"] == graph.n_tokens - 1 - n["ctx_idx"]
    for link in data["links"]:
        assert link["source"] in node_ids and link["target"] in node_ids
    into_logit = [lk for lk in data["links"] if lk["target"] == logit[0]["node_id"]]
    assert into_logit[0]["weight"] == pytest.approx(graph.relevance[-1, -1])
    json.dumps(data)  # serialisable


def test_record_round_trip(graph, tmp_path):
    loaded = AttributionGraph.load(graph.save(tmp_path / "full.json"))
    assert loaded.tokens == graph.tokens and [s.name for s in loaded.stages] == [s.name for s in graph.stages]
    np.testing.assert_allclose(np.nan_to_num(loaded.relevance), np.nan_to_num(graph.relevance))
    assert to_json(loaded.pruned)["links"] == to_json(graph.pruned)["links"]


def test_loading_what_is_not_a_full_record_names_the_file(graph, tmp_path):
    """Before: a pruned export (``graph --json``, the file users have) raised KeyError('relevance'), a missing file
    FileNotFoundError's traceback, and a non-JSON file json's own error; ``dense(99)`` a bare IndexError."""
    from failtrace.errors import FailtraceError

    export = save_json(graph.pruned, tmp_path / "pruned.json")
    with pytest.raises(FailtraceError, match=r"pruned.json is a pruned graph export .*not a full record"):
        AttributionGraph.load(export)
    (tmp_path / "x.json").write_text("not json")
    with pytest.raises(FailtraceError, match=r"x.json is not JSON"):
        AttributionGraph.load(tmp_path / "x.json")
    with pytest.raises(FailtraceError, match=r"nope.json: no such file"):
        AttributionGraph.load(tmp_path / "nope.json")
    cut = graph.to_dict()
    del cut["transitions"]
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    with pytest.raises(FailtraceError, match=r"cut.json is a damaged graph record \(no 'transitions'\)"):
        AttributionGraph.load(tmp_path / "cut.json")
    n = len(graph.transitions)
    with pytest.raises(IndexError, match=f"transition 99 does not exist: this graph has {n} \\(0 to {n - 1}\\)"):
        graph.dense(99)
    assert graph.dense(-1).shape == (graph.n_tokens, graph.n_tokens)  # negative indices stay Python's


def test_static_png_and_svg(graph, tmp_path):
    png = save_graph_png(graph.pruned, tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    svg = save_graph_png(graph.pruned, tmp_path / "g.svg").read_text()
    assert "<svg" in svg and "L1.mid" in svg  # stage labels are drawn
    with pytest.raises(ValueError, match="suffix"):
        save_graph_png(graph.pruned, tmp_path / "g.bmp")


def test_dollar_tokens_are_drawn_literally(graph, tmp_path):
    """Tokens like "$$" (common in maths data) are text: mathtext would raise on them or eat the dollars."""
    g = copy.deepcopy(graph)
    g.tokens[:] = ["$$", "$x^$", "$5 or $6"] * 4 + ["$", "$$"]
    assert g.pruned.graph is g
    svg = save_graph_png(g.pruned, tmp_path / "g.svg", title="why $$ not $x^$").read_text()
    shown = {t for t in svg.split("<!-- ")[1:]}
    labels = {t.split(" -->")[0] for t in shown}
    assert "why $$ not $x^$" in labels
    drawn = [lbl for lbl in labels if lbl.endswith("]") and "[" in lbl]
    assert drawn and all(lbl.split(" [")[0] in {"$$", "$x^$", "$5·or·$6", "$"} for lbl in drawn), drawn
    png = save_graph_png(g.pruned, tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_title_stays_inside_the_figure(graph):
    """A long title is wrapped to the figure width instead of running off its right edge."""
    long_title = "why " + " ".join(f"token{i}" for i in range(60)) + " rather than the contrast, explained"
    fig = graph_figure(graph.pruned, title=long_title)
    renderer = fig.canvas.get_renderer()
    box = fig.axes[0].title.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)
    assert fig.axes[0].title.get_text().count("\n") >= 1


def test_html_is_self_contained(graph):
    page = graph_html(graph.pruned)
    # its title names the logit difference as the picture's does ("value 1.64" before)
    heading = re.search(r"<h1[^>]*>(.*?)</h1>|<title>(.*?)</title>", page, re.S)
    assert heading and f"(Δℓ {graph.objective_value:.3g}; " in html.unescape(heading.group(0))
    assert page.startswith("<!DOCTYPE html>")
    assert "<link" not in page and not re.search(r"<script[^>]*\bsrc=", page)
    assert "https://" not in page
    assert set(re.findall(r"http://[^\s'\"]+", page)) <= {"http://www.w3.org/2000/svg"}  # the SVG namespace only
    blob = re.search(r'<script type="application/json" class="ftg-data">(.*?)</script>', page, re.S).group(1)
    data = json.loads(blob)
    assert data["final"] == [len(graph.stages) - 1, graph.n_tokens - 1]
    assert data["special"][0] is True
    assert 'type="range"' in page and "grey special tokens" in page and "mouseenter" in page


@pytest.mark.parametrize("p", [0.2, 0.5, 0.75, 0.9])
def test_html_slider_rule_reproduces_pruning(graph, p):
    """The page's re-pruning rule (mass before the edge < p·total, then connectivity) equals prune() at p."""
    data = graph_data(graph.pruned)
    assert data["pmax"] >= 0.9
    chosen: list[list[int]] = [[] for _ in graph.transitions]
    lookup = {}
    for t, es in enumerate(graph.transitions):
        for k in range(len(es)):
            lookup[(t, int(es.source[k]), int(es.target[k]))] = k
    for t, si, ti, _w, before in data["edges"]:
        if before < p:
            chosen[t].append(lookup[(t, si, ti)])
    reach, kept = connect(graph, [np.asarray(sorted(c), dtype=np.int64) for c in chosen])
    ref = graph.prune(0.01, f"cumulative:{p}")
    assert np.array_equal(reach, ref.nodes)
    assert [sorted(k.tolist()) for k in kept] == [sorted(k.tolist()) for k in ref.edge_keep]


_FAKE_DOM = r"""
class El{constructor(tag){this.tag=tag;this.attrs={};this.children=[];this.dataset={};this.style={};this.ls={};
  this.textContent='';const c=new Set();this.cls=c;this.classList={add:(...x)=>x.forEach(y=>c.add(y)),
  remove:(...x)=>x.forEach(y=>c.delete(y)),toggle:(x,f)=>{if(f===undefined)f=!c.has(x);f?c.add(x):c.delete(x);},
  contains:x=>c.has(x)};}
  setAttribute(k,v){this.attrs[k]=v;} appendChild(x){this.children.push(x);}
  removeChild(x){this.children=this.children.filter(y=>y!==x);} get firstChild(){return this.children[0];}
  addEventListener(t,f){(this.ls[t]=this.ls[t]||[]).push(f);}
  fire(t){(this.ls[t]||[]).forEach(f=>f({stopPropagation(){},clientX:0,clientY:0}));}
  querySelectorAll(sel){const [tag,c]=sel.split('.');return this.children.filter(x=>x.tag===tag&&x.cls.has(c));}}
const fs=require('fs'); const page=JSON.parse(fs.readFileSync(process.argv[2],'utf8'));
const ids={};
['ftg-svg','ftg-tip','ftg-p','ftg-grey','ftg-count','ftg-pv','ftg-data','ftg-wrap'].forEach(k=>ids[k]=new El(k));
ids['ftg-data'].textContent=page.data; ids['ftg-grey'].checked=true; ids['ftg-wrap'].clientWidth=1200;
const root={querySelector:s=>ids[s.replace(/^[a-z]*[.]/,'')]};
global.window={innerHeight:900,addEventListener(){}};
global.document={getElementById:k=>k===page.root?root:null,createElementNS:(ns,tag)=>new El(tag)};
eval(page.script);
const out={first:ids['ftg-count'].textContent};
ids['ftg-p'].value=String(page.p); ids['ftg-p'].fire('input'); out.second=ids['ftg-count'].textContent;
const svg=ids['ftg-svg']; const circles=svg.children.filter(x=>x.tag==='circle');
const final=circles.find(x=>x.dataset.k===page.final); final.fire('mouseenter');
out.dimmedNodes=circles.filter(x=>x.cls.has('dim')).length;
out.litNodes=circles.filter(x=>!x.cls.has('dim')).length;
out.dimmedEdges=svg.children.filter(x=>x.tag==='line'&&x.cls.has('dim')).length;
out.cx=circles.map(x=>+x.attrs.cx); out.width=+svg.attrs.width;
final.fire('mouseleave'); const low=circles.find(x=>x.dataset.k===page.hover); low.fire('mouseenter');
out.hoverLit=circles.filter(x=>!x.cls.has('dim')).map(x=>x.dataset.k).sort();
low.fire('click'); low.fire('mouseleave'); out.pinnedLit=circles.filter(x=>!x.cls.has('dim')).length;
console.log(JSON.stringify(out));
"""


def test_html_script_runs_in_node(graph, tmp_path):
    """Run the page's own script against a minimal DOM: counts, the slider and the hover highlight."""
    import shutil
    import subprocess

    node = shutil.which("node")
    assert node is not None, "node is missing: scripts/setup.sh --tests installs Debian's nodejs for this test"
    page = graph_html(graph.pruned)
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    blob = re.search(r'<script type="application/json" class="ftg-data">(.*?)</script>', page, re.S).group(1)
    final = f"{len(graph.stages) - 1}:{graph.n_tokens - 1}"
    at_half = graph.prune(0.01, "cumulative:0.5")
    bottom = sorted(tok for s, tok in at_half.node_list() if s == 0)
    hover = f"0:{bottom[0]}"
    root = re.search(r'<div class="ftg" id="([^"]+)"', page).group(1)
    (tmp_path / "page.json").write_text(json.dumps({"script": script, "data": blob, "p": 0.5, "final": final,
                                                    "hover": hover, "root": root}))
    (tmp_path / "dom.js").write_text(_FAKE_DOM)
    proc = subprocess.run([node, str(tmp_path / "dom.js"), str(tmp_path / "page.json")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    at_default = graph.pruned
    assert out["first"] == f"{at_default.num_nodes} nodes, {at_default.num_edges} edges"
    assert out["second"] == f"{at_half.num_nodes} nodes, {at_half.num_edges} edges"
    # the columns use the width of the page (1200 px here), not only its left part
    assert out["width"] == 1200 and min(out["cx"]) >= 64 and max(out["cx"]) <= 1200 - 24
    assert max(out["cx"]) - min(out["cx"]) > 0.6 * 1200
    # hovering the final node lights up all its ancestors: every node kept at p = 0.5 reaches it
    assert out["litNodes"] == at_half.num_nodes and out["dimmedNodes"] == 0 and out["dimmedEdges"] == 0
    # hovering an input node lights up exactly its descendants (independent BFS over the pruned edges)
    lit, frontier = {hover}, [hover]
    edges = [(f"{ss}:{si}", f"{ts}:{ti}") for ss, si, ts, ti, _w in at_half.edges()]
    while frontier:
        x = frontier.pop()
        for a, b in edges:
            if a == x and b not in lit:
                lit.add(b)
                frontier.append(b)
    assert out["hoverLit"] == sorted(lit) and len(lit) < at_half.num_nodes
    assert out["pinnedLit"] == len(lit)  # a click pins the highlight after the mouse leaves


def test_stage_shares_ignore_a_node_whose_relevance_is_not_finite() -> None:
    """A NaN node first in its stage made the stage's scale NaN (every node then drawn at full size); later in the
    list it was skipped by max(). Its place in the list no longer matters: it gets 0 and takes no part in the scale."""
    import itertools

    from failtrace.views.graph_static import stage_shares

    stage = [(1, 0, float("nan")), (1, 1, -4.0), (1, 2, 1.0), (1, 3, float("inf"))]
    for order in itertools.permutations(range(4)):
        nodes = [stage[i] for i in order] + [(0, 0, 3.0)]
        shares = dict(zip([(s, t) for s, t, _r in nodes], stage_shares(nodes, [False] * 4)))
        assert shares == {(1, 0): 0.0, (1, 1): 1.0, (1, 2): 0.25, (1, 3): 0.0, (0, 0): 1.0}, order
