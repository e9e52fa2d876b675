"""A self-contained interactive HTML view of an attribution graph (no network access, no CDN).

The page embeds its data and a small script. Layout as in :mod:`.graph_png` (one column per token position with a
kept node, one row per stage), stretched to the width of the page. Hovering a node highlights every path through it
(its ancestors down to the inputs and its descendants up to the final node); clicking pins that highlight; a slider
re-prunes by cumulative edge mass p (exactly, from the edges embedded at the largest p offered); a checkbox greys or
restores special tokens. ``standalone=False`` gives a ``<div>`` fragment, scoped by its own id, for a larger report.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from failtrace.attribution.record import visible
from failtrace.graph.prune import PrunedGraph, PruneSpec, normalised_relevance, select_edges
from failtrace.views.graph_static import BLUE, GREY, RED, case_prefix, objective_name


def _edge_rows(pruned: PrunedGraph, p_top: float, max_edges: int) -> tuple[list[tuple[Any, ...]], float]:
    """Edges selected at cumulative mass ``p_top``, each with the mass fraction before it; capped at ``max_edges``."""
    g = pruned.graph
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
    return rows, p_top


def graph_data(pruned: PrunedGraph, max_edges: int = 20000, p_max: float = 0.99) -> dict[str, Any]:
    """The data the HTML view embeds: nodes and the edges selected at the largest slider level."""
    g = pruned.graph
    p_default = pruned.spec.value if pruned.spec.mode == "cumulative" else 0.85
    rows, p_top = _edge_rows(pruned, max(p_default, p_max), max_edges)
    norm = normalised_relevance(g)
    used = np.zeros(pruned.nodes.shape, dtype=bool)
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
        "p": float(min(p_default, p_top)),
        "pmax": float(p_top),
        "nodeThreshold": pruned.node_threshold,
        "title": {
            "case": case_prefix(meta),
            "model": str(meta.get("model") or meta.get("architecture") or ""),
            "target": (meta.get("target") or {}).get("text"),
            "contrast": (meta.get("contrast") or {}).get("text"),
            "value": g.objective_value, "value_name": objective_name(meta),
            "method": f"{meta.get('lrp_method', '')} / edges {meta.get('edge_method', '')}",
        },
    }


_CSS = """
.ftg{font-family:system-ui,-apple-system,Segoe UI,sans-serif;color:#222;display:block}
.ftg .ftg-bar{display:flex;gap:18px;align-items:center;flex-wrap:wrap;margin-bottom:6px;font-size:14px}
.ftg .ftg-wrap{overflow:auto;border:1px solid #ddd;max-height:85vh;width:100%;box-sizing:border-box}
.ftg svg{display:block}
.ftg svg text{font-size:11px;fill:#333}
.ftg .n{stroke:#222;stroke-width:.5;cursor:pointer}
.ftg .dim{opacity:.08}
.ftg .hl{stroke:#000;stroke-width:1.5}
.ftg .ftg-tip{position:fixed;pointer-events:none;background:#fffbe6;border:1px solid #bbb;padding:4px 6px;
font-size:12px;display:none;white-space:pre;z-index:10}
"""

_BODY = """<div class="ftg" id="__ROOT__"><style>__CSS__</style>
<div class="ftg-bar"><b>__TITLE__</b>
<label>edge mass p <input class="ftg-p" type="range" min="0.05" step="0.01"> <span class="ftg-pv"></span></label>
<label><input class="ftg-grey" type="checkbox" checked> grey special tokens</label>
<span class="ftg-count"></span></div>
<div class="ftg-wrap"><svg class="ftg-svg" xmlns="http://www.w3.org/2000/svg"></svg></div><div class="ftg-tip"></div>
<script type="application/json" class="ftg-data">__DATA__</script>
<script>__JS__</script></div>"""

# Layout: the columns share the width of the page (MIN_DX..MAX_DX px each, centred; scrolling beyond), the rows share
# about three quarters of the window height (between 14 and 40 px each); redrawn when the window is resized.
_JS = """
(function(){
const root=document.getElementById('__ROOT__'); if(!root)return;
const $=s=>root.querySelector(s);
const D=JSON.parse($('.ftg-data').textContent);
const NS='http://www.w3.org/2000/svg', svg=$('.ftg-svg'), tip=$('.ftg-tip'), wrap=$('.ftg-wrap');
const slider=$('.ftg-p'); slider.max=D.pmax; slider.value=D.p;
const LEFT=64, RIGHT=24, TOP=18, BOTTOM=110, MIN_DX=28, MAX_DX=260;
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
function el(name,attrs,text){const e=document.createElementNS(NS,name);
  for(const k in attrs)e.setAttribute(k,attrs[k]);
  if(text!==undefined)e.textContent=text; svg.appendChild(e); return e;}
function draw(){
  while(svg.firstChild)svg.removeChild(svg.firstChild);
  const cols=[...new Set([...keptN].map(k=>+k.split(':')[1]))].sort((a,b)=>a-b);
  const avail=Math.max(420,wrap.clientWidth);
  const dx=Math.min(MAX_DX,Math.max(MIN_DX,(avail-LEFT-RIGHT)/Math.max(1,cols.length)));
  const x0=LEFT+Math.max(0,(avail-LEFT-RIGHT-dx*cols.length)/2);  // few columns: centred, not crowded left
  const X={}; cols.forEach((c,i)=>X[c]=x0+dx*(i+0.5));
  const S=D.stages.length, dy=Math.min(40,Math.max(14,(window.innerHeight*0.75-TOP-BOTTOM)/Math.max(1,S-1)));
  const H=TOP+BOTTOM+dy*Math.max(1,S-1), W=Math.max(avail,LEFT+RIGHT+dx*cols.length);
  svg.setAttribute('width',W); svg.setAttribute('height',H);
  const Y=s=>H-BOTTOM-s*dy;
  const step=Math.max(1,Math.ceil(12/dy));
  D.stages.forEach((name,s)=>{if(s%step===0||s===S-1)el('text',{x:4,y:Y(s)+4},name);});
  cols.forEach(c=>{const label=D.tokens[c].length>18?D.tokens[c].slice(0,17)+'\\u2026':D.tokens[c];
    const t=el('text',{transform:'translate('+(X[c]-3)+','+(H-BOTTOM+14)+') rotate(60)'},label+' ['+c+']');
    if(D.special[c])t.style.fill='#999';});
  const wmax=Math.max(1e-30,...keptE.map(e=>Math.abs(e[3])));
  const grey=$('.ftg-grey').checked;
  keptE.slice().sort((a,b)=>Math.abs(a[3])-Math.abs(b[3])).forEach(e=>{
    const [src,tgt]=D.transitions[e[0]]; const a=Math.sqrt(Math.abs(e[3])/wmax);
    const l=el('line',{x1:X[e[1]],y1:Y(src),x2:X[e[2]],y2:Y(tgt),stroke:e[3]>0?'__RED__':'__BLUE__',
      'stroke-width':0.4+3*a,'stroke-opacity':0.15+0.8*a});
    l.dataset.a=key(src,e[1]); l.dataset.b=key(tgt,e[2]); l.classList.add('e');});
  [...keptN].forEach(k=>{const n=node[k]; if(!n)return;
    const c=el('circle',{cx:X[n.t],cy:Y(n.s),r:2.5+6*Math.min(1,n.z),
      fill:grey&&D.special[n.t]?'__GREY__':(n.r>0?'__RED__':'__BLUE__')});
    c.classList.add('n'); c.dataset.k=k;
    c.addEventListener('mouseenter',ev=>{showTip(ev,n); if(!pinned)highlight(k);});
    c.addEventListener('mouseleave',()=>{tip.style.display='none'; if(!pinned)highlight(null);});
    c.addEventListener('click',ev=>{ev.stopPropagation(); pinned=(pinned===k)?null:k; highlight(pinned);});});
  $('.ftg-count').textContent=keptN.size+' nodes, '+keptE.length+' edges';
  $('.ftg-pv').textContent=(+slider.value).toFixed(2);
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
$('.ftg-grey').addEventListener('change',draw);
let resizing=null; window.addEventListener('resize',()=>{clearTimeout(resizing);resizing=setTimeout(draw,100);});
prune(+slider.value); draw();
})();
"""


def graph_html(pruned: PrunedGraph, max_edges: int = 20000, standalone: bool = True) -> str:
    """The interactive view (module docstring): a full page, or a ``<div>`` fragment with ``standalone=False``."""
    data = graph_data(pruned, max_edges=max_edges)
    t = data["title"]
    title = (f"{t['case']}{t['model']}: {t['target']!r} vs {t['contrast']!r} ({t['value_name']} {t['value']:.3g}; "
             f"{t['method']}; node threshold {data['nodeThreshold']:g})")
    root = f"ftg-{uuid.uuid4().hex[:12]}"
    colours = {"RED": RED, "BLUE": BLUE, "GREY": GREY, "ROOT": root}
    js = re.sub(r"__(RED|BLUE|GREY|ROOT)__", lambda m: colours[m.group(1)], _JS)
    # one pass, so that text from the data (token strings in the title) is never itself substituted
    parts = {"ROOT": root, "CSS": _CSS, "JS": js, "TITLE": html.escape(title),
             "DATA": json.dumps(data).replace("</", "<\\/")}
    body = re.sub(r"__(ROOT|CSS|JS|TITLE|DATA)__", lambda m: parts[m.group(1)], _BODY)
    if not standalone:
        return body
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>body{{margin:12px}}</style></head><body>{body}</body></html>\n")


def save_graph_html(pruned: PrunedGraph, path: str | Path, max_edges: int = 20000) -> Path:
    """Write :func:`graph_html` (a full page) to ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(graph_html(pruned, max_edges=max_edges), encoding="utf-8")
    return path
