"""Views of an attribution graph: a static layered picture (PNG/SVG) and a self-contained interactive HTML page.

Layout in both: one column per token position that has a kept node (positions without any are left out, so long
inputs stay readable), one row per stage (embeddings at the bottom, the final layer at the top). Nodes are sized by
normalised |R| and coloured red (positive relevance) or blue (negative); edges likewise by sign, with width and
opacity by |A|. Special tokens (BOS, chat markers) are drawn grey.

The HTML page embeds its data and a small script: no network access, no CDN. Hovering a node highlights every path
through it (its ancestors down to the inputs and its descendants up to the final node); clicking pins that
highlight; a slider re-prunes by cumulative edge mass p (exactly, from the edges embedded at the largest p offered);
a checkbox greys or restores special tokens.
"""

from __future__ import annotations

import html
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from failtrace.attribution.record import visible
from failtrace.graph.prune import PrunedGraph, PruneSpec, normalised_relevance, select_edges

RED, BLUE, GREY = "#c0392b", "#2e6fba", "#9a9a9a"


def _columns(pruned: PrunedGraph) -> list[int]:
    cols = np.nonzero(pruned.nodes.any(axis=0))[0].tolist()
    return cols or [pruned.graph.n_tokens - 1]


def save_static(pruned: PrunedGraph, path: str | Path, max_edges: int = 400, title: str | None = None) -> Path:
    """Layered picture of the pruned graph (format from the suffix: .png, .svg or .pdf); the strongest edges only."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("png", "svg", "pdf"):
        raise ValueError(f"{path}: the picture format comes from the suffix; use .png, .svg or .pdf")
    g = pruned.graph
    cols = _columns(pruned)
    x_of = {tok: i for i, tok in enumerate(cols)}
    norm = np.nan_to_num(normalised_relevance(g), nan=0.0)
    width = min(40.0, max(6.0, 0.38 * len(cols) + 2.5))
    height = min(30.0, max(4.0, 0.22 * len(g.stages) + 2.0))
    fig, ax = plt.subplots(figsize=(width, height))
    edges = sorted(pruned.edges(), key=lambda e: -abs(e[4]))[:max_edges]
    if edges:
        wmax = max(abs(e[4]) for e in edges) or 1.0
        segs, colors, widths = [], [], []
        for ss, si, ts, ti, w in reversed(edges):  # strongest drawn last (on top)
            segs.append([(x_of[si], ss), (x_of[ti], ts)])
            a = (abs(w) / wmax) ** 0.5  # square root: weak edges stay visible next to the residual stream
            rgb = matplotlib.colors.to_rgb(RED if w > 0 else BLUE)
            colors.append((*rgb, 0.12 + 0.8 * a))
            widths.append(0.3 + 2.7 * a)
        ax.add_collection(LineCollection(segs, colors=colors, linewidths=widths, zorder=1))
    special = np.asarray(g.special_mask, dtype=bool)
    nodes = pruned.node_list()
    if nodes:
        xs = [x_of[t] for _s, t in nodes]
        ys = [s for s, _t in nodes]
        rel = [g.relevance[s, t] for s, t in nodes]
        sizes = [12 + 110 * min(1.0, float(norm[s, t])) for s, t in nodes]
        face = [GREY if special[t] else (RED if r > 0 else BLUE) for (_s, t), r in zip(nodes, rel)]
        ax.scatter(xs, ys, s=sizes, c=face, edgecolors="black", linewidths=0.4, zorder=2)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([f"{visible(g.tokens[t])} [{t}]" for t in cols], rotation=90, fontsize=7)
    step = max(1, len(g.stages) // 40)
    ax.set_yticks(range(0, len(g.stages), step))
    ax.set_yticklabels([g.stages[i].name for i in range(0, len(g.stages), step)], fontsize=7)
    ax.set_xlim(-0.7, len(cols) - 0.3)
    ax.set_ylim(-0.7, len(g.stages) - 0.3)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    meta = g.metadata
    tgt = (meta.get("target") or {}).get("text")
    con = (meta.get("contrast") or {}).get("text")
    default_title = (f"{meta.get('model') or meta.get('architecture', '')}: {tgt!r} vs {con!r}, "
                     f"value {g.objective_value:.3g}; {pruned.num_nodes} nodes, {pruned.num_edges} edges "
                     f"(node ≥ {pruned.node_threshold:g}, {pruned.spec}; strongest {len(edges)} edges drawn)")
    ax.set_title(textwrap.fill(title or default_title, width=int(width * 16)), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=suffix, dpi=150)
    plt.close(fig)
    return path


def html_data(pruned: PrunedGraph, max_edges: int = 20000, p_max: float = 0.99) -> dict[str, Any]:
    """The data the HTML view embeds: nodes and the edges selected at the largest slider level."""
    g = pruned.graph
    p_default = pruned.spec.value if pruned.spec.mode == "cumulative" else 0.85
    p_top = max(p_default, p_max)
    sel = select_edges(g, pruned.node_threshold, PruneSpec("cumulative", p_top))
    rows = []
    for t, (es, chosen, before) in enumerate(zip(g.transitions, sel.chosen, sel.mass_before)):
        total = sel.totals[t] or 1.0
        for e, b in zip(chosen.tolist(), before.tolist()):
            rows.append((b / total, t, int(es.source[e]), int(es.target[e]), float(es.weight[e])))
    if len(rows) > max_edges:  # keep the slider exact below the level where the cap bites
        rows.sort(key=lambda r: r[0])
        p_top = min(p_top, rows[max_edges][0])
        rows = [r for r in rows if r[0] < p_top]
    p_default = min(p_default, p_top)
    norm = normalised_relevance(g)
    used = np.zeros_like(sel.keep_nodes)
    used[g.final_node] = True
    for _f, t, si, ti, _w in rows:
        es = g.transitions[t]
        used[es.source_stage, si] = True
        used[es.target_stage, ti] = True
    nodes = [[int(s), int(tok), float(g.relevance[s, tok]), float(np.nan_to_num(norm[s, tok]))]
             for s, tok in zip(*np.nonzero(used))]
    meta = g.metadata
    return {
        "tokens": [visible(t) for t in g.tokens],
        "special": [bool(x) for x in g.special_mask],
        "stages": [s.name for s in g.stages],
        "transitions": [[es.source_stage, es.target_stage] for es in g.transitions],
        "nodes": nodes,
        "edges": [[t, si, ti, round(w, 8), round(f, 8)] for f, t, si, ti, w in rows],
        "final": [int(g.final_node[0]), int(g.final_node[1])],
        "p": float(p_default),
        "pmax": float(p_top),
        "nodeThreshold": pruned.node_threshold,
        "title": {
            "model": str(meta.get("model") or meta.get("architecture") or ""),
            "target": (meta.get("target") or {}).get("text"),
            "contrast": (meta.get("contrast") or {}).get("text"),
            "value": g.objective_value,
            "method": f"{meta.get('lrp_method', '')} / {meta.get('edge_method', '')}",
        },
    }


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:12px;color:#222}
#bar{display:flex;gap:18px;align-items:center;flex-wrap:wrap;margin-bottom:6px;font-size:14px}
#wrap{overflow:auto;border:1px solid #ddd;max-height:82vh}
svg text{font-size:10px;fill:#333}
.n{stroke:#222;stroke-width:.5;cursor:pointer}
.dim{opacity:.08}
.hl{stroke:#000;stroke-width:1.5}
#tip{position:fixed;pointer-events:none;background:#fffbe6;border:1px solid #bbb;padding:4px 6px;font-size:12px;
display:none;white-space:pre}
</style></head><body>
<div id="bar"><b>__TITLE__</b>
<label>edge mass p <input id="p" type="range" min="0.05" step="0.01"> <span id="pv"></span></label>
<label><input id="grey" type="checkbox" checked> grey special tokens</label>
<span id="count"></span></div>
<div id="wrap"><svg id="g" xmlns="http://www.w3.org/2000/svg"></svg></div><div id="tip"></div>
<script id="graph-data" type="application/json">__DATA__</script>
<script>
(function(){
const D=JSON.parse(document.getElementById('graph-data').textContent);
const NS='http://www.w3.org/2000/svg', svg=document.getElementById('g'), tip=document.getElementById('tip');
const slider=document.getElementById('p'); slider.max=D.pmax; slider.value=D.p;
const key=(s,t)=>s+':'+t, node={};
D.nodes.forEach(n=>{node[key(n[0],n[1])]={s:n[0],t:n[1],r:n[2],z:n[3]};});
let keptE=[], keptN=new Set(), pinned=null;
function prune(p){
  // an edge survives when the mass of the stronger edges of its transition is below p (exact re-pruning)
  const cand=D.edges.filter(e=>e[4]<p);
  const byT={}; cand.forEach(e=>{(byT[e[0]]=byT[e[0]]||[]).push(e);});
  const reach=new Set([key(D.final[0],D.final[1])]); const out=[];
  const order=D.transitions.map((t,i)=>i).sort((a,b)=>D.transitions[b][1]-D.transitions[a][1]);
  order.forEach(i=>{const [src,tgt]=D.transitions[i];(byT[i]||[]).forEach(e=>{
    if(reach.has(key(tgt,e[2]))){out.push(e);reach.add(key(src,e[1]));}});});
  keptE=out; keptN=reach;
}
function draw(){
  while(svg.firstChild)svg.removeChild(svg.firstChild);
  const cols=[...new Set([...keptN].map(k=>+k.split(':')[1]))].sort((a,b)=>a-b);
  const X={}; cols.forEach((c,i)=>X[c]=70+i*34);
  const S=D.stages.length, H=Math.max(300,S*22+120), W=Math.max(400,cols.length*34+100);
  svg.setAttribute('width',W); svg.setAttribute('height',H);
  const Y=s=>H-90-s*22;
  D.stages.forEach((name,s)=>{const t=document.createElementNS(NS,'text');t.setAttribute('x',4);
    t.setAttribute('y',Y(s)+3);t.textContent=name;svg.appendChild(t);});
  cols.forEach(c=>{const t=document.createElementNS(NS,'text');t.setAttribute('transform',
    'translate('+(X[c]+3)+','+(H-84)+') rotate(60)');t.textContent=D.tokens[c]+' ['+c+']';
    if(D.special[c])t.style.fill='#999';svg.appendChild(t);});
  const wmax=Math.max(1e-30,...keptE.map(e=>Math.abs(e[3])));
  const grey=document.getElementById('grey').checked;
  keptE.slice().sort((a,b)=>Math.abs(a[3])-Math.abs(b[3])).forEach(e=>{
    const [src,tgt]=D.transitions[e[0]]; const l=document.createElementNS(NS,'line');
    l.setAttribute('x1',X[e[1]]);l.setAttribute('y1',Y(src));l.setAttribute('x2',X[e[2]]);l.setAttribute('y2',Y(tgt));
    const a=Math.sqrt(Math.abs(e[3])/wmax); l.setAttribute('stroke',e[3]>0?'__RED__':'__BLUE__');
    l.setAttribute('stroke-width',0.4+3*a); l.setAttribute('stroke-opacity',0.15+0.8*a);
    l.dataset.a=key(src,e[1]); l.dataset.b=key(tgt,e[2]); l.classList.add('e'); svg.appendChild(l);});
  [...keptN].forEach(k=>{const n=node[k]; if(!n)return; const c=document.createElementNS(NS,'circle');
    c.setAttribute('cx',X[n.t]);c.setAttribute('cy',Y(n.s));c.setAttribute('r',2.5+6*Math.min(1,n.z));
    c.setAttribute('fill',grey&&D.special[n.t]?'__GREY__':(n.r>0?'__RED__':'__BLUE__'));
    c.classList.add('n'); c.dataset.k=k;
    c.addEventListener('mouseenter',ev=>{showTip(ev,n); if(!pinned)highlight(k);});
    c.addEventListener('mouseleave',()=>{tip.style.display='none'; if(!pinned)highlight(null);});
    c.addEventListener('click',ev=>{ev.stopPropagation(); pinned=(pinned===k)?null:k; highlight(pinned);});
    svg.appendChild(c);});
  document.getElementById('count').textContent=keptN.size+' nodes, '+keptE.length+' edges';
  document.getElementById('pv').textContent=(+slider.value).toFixed(2);
  if(pinned&&keptN.has(pinned))highlight(pinned); else pinned=null;
}
function showTip(ev,n){tip.style.display='block';tip.style.left=(ev.clientX+12)+'px';tip.style.top=(ev.clientY+12)+'px';
  tip.textContent=D.stages[n.s]+'/'+n.t+'  '+JSON.stringify(D.tokens[n.t])+'\\nR = '+n.r.toPrecision(4)+
  '\\nnormalised |R| = '+n.z.toFixed(3)+(D.special[n.t]?'\\n(special token)':'');}
function highlight(k){
  const edges=svg.querySelectorAll('line.e'), nodes=svg.querySelectorAll('circle.n');
  if(k===null){edges.forEach(e=>e.classList.remove('dim'));
    nodes.forEach(n=>{n.classList.remove('dim','hl');});return;}
  const up={},down={}; edges.forEach(e=>{(up[e.dataset.a]=up[e.dataset.a]||[]).push(e.dataset.b);
    (down[e.dataset.b]=down[e.dataset.b]||[]).push(e.dataset.a);});
  const anc=closure(down,k), des=closure(up,k);  // incoming paths (to the inputs), outgoing (to the final node)
  edges.forEach(e=>{const a=e.dataset.a,b=e.dataset.b;
    const keep=(anc.has(a)&&anc.has(b))||(des.has(a)&&des.has(b)); e.classList.toggle('dim',!keep);});
  nodes.forEach(n=>{const x=n.dataset.k;
    n.classList.toggle('dim',!(anc.has(x)||des.has(x))); n.classList.toggle('hl',x===k);});
}
function closure(adj,k){const seen=new Set([k]),stack=[k];
  while(stack.length){(adj[stack.pop()]||[]).forEach(y=>{if(!seen.has(y)){seen.add(y);stack.push(y);}});}
  return seen;}
svg.addEventListener('click',()=>{pinned=null;highlight(null);});
slider.addEventListener('input',()=>{prune(+slider.value);draw();});
document.getElementById('grey').addEventListener('change',draw);
prune(+slider.value); draw();
})();
</script></body></html>
"""


def render_html(pruned: PrunedGraph, max_edges: int = 20000) -> str:
    """A self-contained interactive HTML page for the graph (module docstring)."""
    data = html_data(pruned, max_edges=max_edges)
    t = data["title"]
    title = (f"{t['model']}: {t['target']!r} vs {t['contrast']!r} (value {t['value']:.3g}; {t['method']}; "
             f"node threshold {data['nodeThreshold']:g})")
    blob = json.dumps(data).replace("</", "<\\/")
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", blob)
    return page.replace("__RED__", RED).replace("__BLUE__", BLUE).replace("__GREY__", GREY)


def save_html(pruned: PrunedGraph, path: str | Path, max_edges: int = 20000) -> Path:
    """Write :func:`render_html` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(pruned, max_edges=max_edges), encoding="utf-8")
    return path
