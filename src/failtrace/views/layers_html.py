"""The per-layer relevance map of the HTML heatmap: an embedded PNG inside inline SVG, with a hover read-out.

Rows are ``hidden_relevance`` (embedding output at the bottom, last decoder layer at the top). Relevance concentrates
on the explained position in deep layers, so each row is scaled by its own largest |R| among non-special tokens;
hovering gives the raw value. Inputs wider than 1000 positions are binned (each bin shows its largest-|R| value).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Any

import numpy as np

from failtrace.attribution.record import Attribution
from failtrace.views.common import (
    ANSWER,
    MAX_LAYER_COLUMNS,
    bin_columns,
    hidden,
    layer_names,
    rgb_array,
    row_scaled,
    special_of,
)

# Hover read-out: maps the mouse position over the image to (layer, column) and highlights the token in the strip.
LAYER_JS = """
(function(){
 var root=document.getElementById(%s); if(!root) return;
 var img=root.querySelector('.ft-lmap'), out=root.querySelector('.ft-readout'),
     src=root.querySelector('.ft-ldata'); if(!img||!out||!src) return;
 var d=JSON.parse(src.textContent), last=null;
 function tok(p){return root.querySelector('.ft-t[data-p="'+p+'"]');}
 function clear(){if(last){last.classList.remove('ft-hl');last=null;}}
 img.addEventListener('mousemove',function(e){
  var r=img.getBoundingClientRect();
  var c=Math.min(d.cols-1,Math.max(0,Math.floor((e.clientX-r.left)/r.width*d.cols)));
  var w=Math.min(d.rows-1,Math.max(0,d.rows-1-Math.floor((e.clientY-r.top)/r.height*d.rows)));
  var p=d.pos[w][c], t=tok(p), s=t?t.textContent:'';
  var span=d.bin>1?(' (bin '+(c*d.bin)+'\\u2013'+Math.min(d.n-1,c*d.bin+d.bin-1)+', largest |R|)'):'';
  out.textContent=d.names[w]+' \\u00b7 pos '+p+' \\u2039'+s+'\\u203a'+span+' \\u00b7 R = '+d.v[w][c]
   +' \\u00b7 layer sum = '+d.sums[w];
  clear(); if(t){t.classList.add('ft-hl'); last=t;}
 });
 img.addEventListener('mouseleave',function(){clear(); out.textContent=d.hint;});
})();
"""

_LEFT, _TOP, _BOTTOM, _RIGHT, _IMAGE_WIDTH = 42, 6, 30, 8, 1120
_HINT = "hover the map for layer, position and raw relevance"


def json_for_script(obj: Any) -> str:
    """JSON that is safe inside a <script> element (no '<', '>' or '&' that could end or confuse it)."""
    return json.dumps(obj, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (h, w, 3) uint8 array as PNG with Pillow."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _axis_labels(attr: Attribution, rows: int, ih: float) -> list[str]:
    """SVG elements around the image: layer names, position ticks, the answer-prefix line, the explained position."""
    n = len(attr.tokens)
    cell_h = ih / rows
    names = layer_names(rows)
    step = max(1, math.ceil(rows / 14))
    out = []
    for r in range(rows):
        if r % step == 0 or r == rows - 1:
            y = _TOP + (rows - 1 - r + 0.5) * cell_h
            out.append(f'<text x="{_LEFT - 5}" y="{y:.1f}" text-anchor="end" dominant-baseline="middle">'
                       f"{names[r]}</text>")
    for t in sorted({0, n - 1, *[int(round(x)) for x in np.linspace(0, n - 1, 9)]}):
        x = _LEFT + (t + 0.5) / n * _IMAGE_WIDTH
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP + ih}" y2="{_TOP + ih + 4}" stroke="#6b7280"/>')
        out.append(f'<text x="{x:.1f}" y="{_TOP + ih + 15}" text-anchor="middle">{t}</text>')
    out.append(f'<text x="{_LEFT + _IMAGE_WIDTH / 2:.1f}" y="{_TOP + ih + 27}" text-anchor="middle">'
               "token position</text>")
    if 0 < attr.prompt_length < n:
        x = _LEFT + attr.prompt_length / n * _IMAGE_WIDTH
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_TOP + ih}" stroke="{ANSWER}" '
                   'stroke-width="2" stroke-dasharray="4 3"/>')
    if 0 <= attr.position < n:
        x = _LEFT + (attr.position + 0.5) / n * _IMAGE_WIDTH
        out.append(f'<path d="M{x - 5:.1f},{_TOP + ih + 1} l5,-6 l5,6 z" fill="#111"/>')
    return out


def layers_html(attr: Attribution) -> str:
    """The per-layer map section ('' when the record has no per-layer relevance)."""
    h = hidden(attr)
    if h is None:
        return ""
    rows = h.shape[0]
    vals, pos, grey, k = bin_columns(h, special_of(attr), MAX_LAYER_COLUMNS)
    cols = vals.shape[1]
    rgb = rgb_array(row_scaled(vals, grey)[::-1], grey)  # top row = last layer
    row_px = max(4, min(16, 320 // rows))
    rgb = np.repeat(np.repeat(rgb, row_px, axis=0), max(1, 900 // cols), axis=1)
    png = base64.b64encode(png_bytes(rgb)).decode("ascii")
    ih = max(rows * row_px, 120)
    width, height = _LEFT + _IMAGE_WIDTH + _RIGHT, _TOP + ih + _BOTTOM
    data = {
        "rows": rows, "cols": cols, "bin": k, "n": len(attr.tokens), "names": layer_names(rows),
        "v": [[float(f"{x:.4g}") for x in row] for row in vals], "pos": pos.tolist(),
        "sums": [float(f"{x:.4g}") for x in h.sum(axis=1)], "hint": _HINT,
    }
    binned = f"; columns are bins of {k} tokens, each showing its largest-|R| value" if k > 1 else ""
    return (
        "<h4>Relevance by layer</h4>"
        f'<div class="ft-note">Rows: embedding output (bottom) to the last decoder layer (top). Each row is scaled to '
        f"its own largest |R| among non-special tokens (relevance concentrates on the explained position in deep "
        f"layers){binned}. Dashed violet line: start of the answer prefix; triangle: explained position.</div>"
        f'<svg class="ft-lsvg" viewBox="0 0 {width} {height}" role="img" aria-label="relevance by layer and token">'
        f'<image class="ft-lmap" x="{_LEFT}" y="{_TOP}" width="{_IMAGE_WIDTH}" height="{ih}" '
        f'preserveAspectRatio="none" style="image-rendering:pixelated" href="data:image/png;base64,{png}"/>'
        f'<rect x="{_LEFT}" y="{_TOP}" width="{_IMAGE_WIDTH}" height="{ih}" fill="none" stroke="#d1d5db"/>'
        + "".join(_axis_labels(attr, rows, ih))
        + "</svg>"
        f'<div class="ft-readout">{html.escape(_HINT)}</div>'
        f'<script type="application/json" class="ft-ldata">{json_for_script(data)}</script>'
    )
