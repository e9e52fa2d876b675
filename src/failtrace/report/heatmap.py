"""Token heatmaps of one :class:`~failtrace.attribution.record.Attribution`: HTML, PNG/SVG and terminal views.

All three views share one colour convention: red backgrounds mark tokens whose relevance is positive (they push the
model towards the *target*, the wrong token it chose), blue backgrounds mark negative relevance (they push towards
the *contrast*, the right token). Intensity is the normalised relevance ``attr.normalized`` (relevance divided by the
largest |R| among non-special tokens) clipped to [-1, 1]. Special tokens (BOS, chat-template markers) soak up
relevance as attention sinks, so they are drawn grey whatever their value. Tokens the model generated itself (positions
``>= attr.prompt_length``) are underlined in violet, and the explained position (whose next-token prediction the
objective measures) is outlined.

The per-layer view shows ``hidden_relevance`` (embedding row at the bottom, last decoder layer at the top). Relevance
concentrates on the explained position in deep layers, so each layer row is scaled by its own largest |R| among
non-special tokens; hovering (HTML) or the colour bar (PNG) gives the raw values.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import struct
import unicodedata
import uuid
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from failtrace.attribution.record import Attribution, visible

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

__all__ = ["render_html", "save_png", "save_svg", "heatmap_figure", "render_terminal", "relevant_segments"]

# Endpoint colours of the diverging scale (HTML and terminal): positive -> red, negative -> blue, zero -> white.
_RED = (220, 38, 38)
_BLUE = (37, 99, 235)
_WHITE = (255, 255, 255)
_SPECIAL_BG = (205, 205, 205)
_SPECIAL_MAP = (222, 222, 222)  # special-token columns in the per-layer map
_ANSWER = "#7c3aed"  # violet: answer-prefix marking
_MAX_LAYER_COLUMNS = 1000  # the per-layer map bins wider inputs to this many columns


# ----------------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------------


def _shown(token: str) -> str:
    """A token as displayed: visible whitespace, and '∅' for an empty decoded string so it can still be hovered."""
    v = visible(token)
    return v if v else "∅"


def _quoted(ref: Any) -> str:
    """A :class:`TokenRef` (or None) as ‹visible text›."""
    if ref is None:
        return "—"
    return f"‹{visible(ref.text)}›"


def _mix(value: float) -> tuple[int, int, int]:
    """Background colour for a normalised relevance: white blended towards red (positive) or blue (negative)."""
    a = min(1.0, abs(float(value))) if math.isfinite(value) else 0.0
    end = _RED if value > 0 else _BLUE
    return tuple(int(round(w + (e - w) * a)) for w, e in zip(_WHITE, end))  # type: ignore[return-value]


def _clipped(attr: Attribution) -> np.ndarray:
    """``attr.normalized`` clipped to [-1, 1], with non-finite values set to 0."""
    v = np.nan_to_num(np.asarray(attr.normalized, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(v, -1.0, 1.0)


def _special(attr: Attribution) -> np.ndarray:
    n = len(attr.tokens)
    m = np.zeros(n, dtype=bool)
    sm = np.asarray(attr.special_mask, dtype=bool)[:n]
    m[: len(sm)] = sm
    return m


def _fmt(x: float, digits: int = 4) -> str:
    """A signed number with ``digits`` decimals, switching to scientific notation for tiny or huge magnitudes."""
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) < 10 ** (1 - digits) or abs(x) >= 1e5):
        return f"{x:+.{max(1, digits - 2)}e}"
    return f"{x:+.{digits}f}"


def _share(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole`` ('n/a' when whole is ~0)."""
    if not (math.isfinite(part) and math.isfinite(whole)) or abs(whole) < 1e-12:
        return "n/a"
    return f"{100.0 * part / whole:.0f}%"


def relevant_segments(attr: Attribution, max_tokens: int, context: int = 8) -> list[tuple[int, int]]:
    """Choose at most ``max_tokens`` positions worth showing from a long input, as sorted half-open ranges.

    Always kept: the tokens just before the explained position (a fifth of the budget, at most 64), since they set
    up the prediction. The rest of the budget goes to the non-special tokens with the largest |relevance|, each with
    ``context`` tokens either side, in decreasing order of |relevance|. Returns ``[(0, n)]`` when everything fits.
    """
    n = len(attr.tokens)
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}")
    if n <= max_tokens:
        return [(0, n)] if n else []
    keep = np.zeros(n, dtype=bool)
    anchor = min(max(attr.position, 0), n - 1)
    tail = max(1, min(64, max_tokens // 5))
    keep[max(0, anchor - tail + 1) : anchor + 1] = True
    budget = max_tokens - int(keep.sum())
    mag = np.abs(np.nan_to_num(np.asarray(attr.input_relevance, dtype=np.float64)[:n]))
    special = _special(attr)
    for p in np.argsort(-mag, kind="stable"):
        if budget <= 0:
            break
        if special[p] or mag[p] == 0:
            continue
        lo, hi = max(0, int(p) - context), min(n, int(p) + context + 1)
        new = np.flatnonzero(~keep[lo:hi]) + lo
        if new.size > budget:  # keep the positions nearest to p
            new = new[np.argsort(np.abs(new - p), kind="stable")[:budget]]
        keep[new] = True
        budget -= new.size
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _segments_note(segments: list[tuple[int, int]], n: int) -> str:
    """How a selection of segments relates to the whole input, for titles and notes ('' when nothing is hidden)."""
    shown = sum(b - a for a, b in segments)
    if shown >= n:
        return ""
    return (
        f"showing {shown} of {n} positions in {len(segments)} segment{'s' if len(segments) != 1 else ''}: "
        "the largest-|R| tokens with context, and the tokens just before the prediction"
    )


def _layer_names(num_rows: int) -> list[str]:
    """Row labels of ``hidden_relevance``: the embedding output, then decoder layers 0..L-1."""
    return ["emb"] + [f"L{i}" for i in range(num_rows - 1)]


def _hidden(attr: Attribution) -> np.ndarray | None:
    """``hidden_relevance`` as a finite float (rows, n) array, or None if it is missing or malformed."""
    h = np.asarray(attr.hidden_relevance, dtype=np.float64)
    n = len(attr.tokens)
    if h.ndim != 2 or h.shape[0] == 0 or h.shape[1] != n or n == 0:
        return None
    return np.nan_to_num(h)


def _row_scaled(h: np.ndarray, special: np.ndarray) -> np.ndarray:
    """Each row divided by its largest |R| over non-special columns, clipped to [-1, 1]."""
    ref = np.abs(h[:, ~special]) if (~special).any() else np.abs(h)
    scale = ref.max(axis=1) if ref.size else np.ones(h.shape[0])
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(h / scale[:, None], -1.0, 1.0)


def _bin_columns(h: np.ndarray, special: np.ndarray, max_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Reduce ``h`` (rows, n) to at most ``max_cols`` columns.

    Each bin of ``k`` consecutive positions is represented, row by row, by its value of largest magnitude (sign kept,
    non-special tokens preferred), so isolated spikes survive. Returns ``(values, representative positions,
    all-special mask per column, k)``.
    """
    rows, n = h.shape
    k = max(1, math.ceil(n / max_cols))
    if k == 1:
        pos = np.tile(np.arange(n), (rows, 1))
        return h, pos, special.copy(), 1
    nb = math.ceil(n / k)
    pad = nb * k - n
    hp = np.pad(h, ((0, 0), (0, pad))).reshape(rows, nb, k)
    sp = np.pad(special, (0, pad), constant_values=True).reshape(nb, k)
    score = np.where(sp[None, :, :], -1.0, np.abs(hp))
    arg = score.argmax(axis=2)
    vals = np.take_along_axis(hp, arg[:, :, None], axis=2)[:, :, 0]
    pos = arg + (np.arange(nb) * k)[None, :]
    return vals, np.minimum(pos, n - 1), sp.all(axis=1), k


# ----------------------------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------------------------

_CSS = """
.ft-attr{all:initial;display:block;background:#fff;color:#111;font:14px/1.45 system-ui,-apple-system,"Segoe UI",
 Roboto,"Helvetica Neue",Arial,sans-serif;padding:14px 16px;border:1px solid #e5e7eb;border-radius:8px;
 max-width:1200px;box-sizing:border-box}
.ft-attr *{box-sizing:border-box}
.ft-attr code,.ft-attr .ft-t,.ft-attr .ft-mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,
 "DejaVu Sans Mono",monospace;font-size:13px}
.ft-attr .ft-title{font-size:17px;font-weight:600;margin:0 0 8px}
.ft-attr .ft-pill{display:inline-block;padding:0 6px;border-radius:4px;border:2px solid;white-space:pre;
 font-weight:600}
.ft-attr .ft-pill.tgt{border-color:rgb(220,38,38);background:rgb(254,226,226)}
.ft-attr .ft-pill.ctr{border-color:rgb(37,99,235);background:rgb(219,234,254)}
.ft-attr .ft-meta{display:flex;flex-wrap:wrap;gap:4px 18px;margin:0 0 10px;font-size:13px}
.ft-attr .ft-meta .k{color:#6b7280;margin-right:5px}
.ft-attr .ft-meta .v{font-weight:600}
.ft-attr .ft-note{color:#6b7280;font-size:12px}
.ft-attr .ft-legend{display:flex;flex-wrap:wrap;align-items:center;gap:6px 16px;font-size:12px;color:#374151;
 margin:6px 0 10px;padding:6px 8px;background:#f9fafb;border-radius:6px}
.ft-attr .ft-grad{display:inline-block;width:160px;height:12px;border:1px solid #d1d5db;vertical-align:middle;
 background:linear-gradient(to right,rgb(37,99,235),#fff,rgb(220,38,38))}
.ft-attr .ft-sw{display:inline-block;min-width:22px;height:16px;vertical-align:middle;margin-right:4px;
 border-radius:2px;text-align:center;font-size:11px;line-height:16px}
.ft-attr .ft-tokens{line-height:1.9;padding:8px;border:1px solid #e5e7eb;border-radius:6px;max-height:560px;
 overflow:auto;word-break:break-all}
.ft-attr .ft-t{display:inline-block;white-space:pre;padding:0 1px;margin:1px 1px 1px 0;border-radius:2px;
 line-height:1.35;cursor:default;border-bottom:3px solid transparent}
.ft-attr .ft-t:hover,.ft-attr .ft-t.ft-hl{outline:2px solid #f59e0b;outline-offset:0}
.ft-attr .ft-t.sp{color:#4b5563;font-style:italic}
.ft-attr .ft-t.ans{border-bottom-color:#7c3aed}
.ft-attr .ft-t.pos{box-shadow:0 0 0 2px #111}
.ft-attr .ft-mark{display:inline-block;font-size:11px;color:#fff;background:#7c3aed;border-radius:3px;
 padding:0 4px;margin:0 3px;vertical-align:middle;line-height:16px}
.ft-attr .ft-next{display:inline-block;font-size:12px;margin-left:6px;color:#374151;vertical-align:middle}
.ft-attr h4{font-size:14px;margin:14px 0 4px;font-weight:600}
.ft-attr .ft-tops{display:flex;flex-wrap:wrap;gap:8px 28px}
.ft-attr table.ft-top{border-collapse:collapse;font-size:12px}
.ft-attr table.ft-top th{text-align:left;color:#6b7280;font-weight:500;padding:1px 8px 1px 0;
 border-bottom:1px solid #e5e7eb}
.ft-attr table.ft-top td{padding:1px 8px 1px 0}
.ft-attr table.ft-top a{color:#2563eb;text-decoration:none}
.ft-attr table.ft-top td.num{text-align:right;font-variant-numeric:tabular-nums}
.ft-attr .ft-lsvg{display:block;width:100%;height:auto;max-width:1170px}
.ft-attr .ft-lsvg text{font:10px system-ui,sans-serif;fill:#374151}
.ft-attr .ft-readout{font-size:12px;color:#111;min-height:18px;font-family:ui-monospace,Menlo,Consolas,monospace}
"""

_JS = """
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


def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def _json_for_script(obj: Any) -> str:
    """JSON that is safe inside a <script> element (no '<', '>' or '&' that could end or confuse it)."""
    return json.dumps(obj, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (h, w, 3) uint8 array as a PNG (8-bit truecolour, no filtering)."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _rgb_array(values: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Diverging colours for values in [-1, 1] (rows, cols) -> (rows, cols, 3) uint8; ``grey`` columns grey."""
    a = np.abs(values)[..., None]
    end = np.where(values[..., None] > 0, np.array(_RED, float), np.array(_BLUE, float))
    rgb = 255.0 + (end - 255.0) * a
    rgb[:, grey, :] = _SPECIAL_MAP
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _token_title(i: int, tok: str, raw: float, norm: float, special: bool, answer: bool, explained: bool) -> str:
    lines = [f"pos {i} · ‹{_shown(tok)}›", f"R = {raw:+.6g}", f"normalised = {_fmt(norm, 3)}"]
    if special:
        lines.append("special token (grey; excluded from normalisation)")
    if answer:
        lines.append("answer prefix (generated by the model)")
    if explained:
        lines.append("explained position: its next-token prediction is the objective")
    return "\n".join(lines)


def _html_tokens(attr: Attribution, root_id: str, anchors: set[int]) -> str:
    """One span per token, in order; positions in ``anchors`` get an id so the top-token tables can link to them."""
    n = len(attr.tokens)
    raw = np.asarray(attr.input_relevance, dtype=np.float64)
    norm = np.asarray(attr.normalized, dtype=np.float64)
    shown = _clipped(attr)
    special = _special(attr)
    parts: list[str] = []
    for i, tok in enumerate(attr.tokens):
        if i == attr.prompt_length and 0 < i < n:
            parts.append(
                '<span class="ft-mark" title="tokens from here on were generated by the model">answer ▸</span>'
            )
        classes = ["ft-t"]
        answer = i >= attr.prompt_length
        explained = i == attr.position
        if special[i]:
            classes.append("sp")
            bg = _SPECIAL_BG
            fg = "#4b5563"
        else:
            bg = _mix(shown[i])
            fg = "#fff" if abs(shown[i]) > 0.62 else "#111"
        if answer:
            classes.append("ans")
        if explained:
            classes.append("pos")
        title = _token_title(i, tok, float(raw[i]), float(norm[i]), bool(special[i]), answer, explained)
        anchor = f' id="{root_id}-p{i}"' if i in anchors else ""
        parts.append(
            f'<span class="{" ".join(classes)}" data-p="{i}"{anchor} style="background:rgb{bg};color:{fg}" '
            f'title="{_esc(title)}">{_esc(_shown(tok))}</span>'
        )
        if explained:
            parts.append(
                f'<span class="ft-next">⟶ next: <code class="ft-pill tgt">{_esc(_quoted(attr.target))}</code>'
                + (f' vs <code class="ft-pill ctr">{_esc(_quoted(attr.contrast))}</code>' if attr.contrast else "")
                + "</span>"
            )
        breaks = min(tok.count("\n"), 2)
        parts.append("<br>" * breaks)
    return "".join(parts)


def _top_positions(attr: Attribution, k: int) -> set[int]:
    return {p for sign in (1, -1) for p, _, _ in attr.top_tokens(k, sign=sign)}


def _html_top(attr: Attribution, root_id: str, k: int = 10) -> str:
    """Two small tables of the k most positive and k most negative non-special tokens, linked to the strip."""
    norm = attr.scale

    def table(sign: int, heading: str) -> str:
        rows = attr.top_tokens(k, sign=sign)
        if not rows:
            return f'<table class="ft-top"><tr><th>{_esc(heading)}</th></tr><tr><td>none</td></tr></table>'
        cells = []
        for p, t, r in rows:
            v = max(-1.0, min(1.0, r / norm))
            fg = "#fff" if abs(v) > 0.62 else "#111"
            cells.append(
                f'<tr><td class="num"><a href="#{root_id}-p{p}">{p}</a></td><td><code class="ft-t" '
                f'style="background:rgb{_mix(v)};color:{fg}">{_esc(_shown(t))}</code></td>'
                f'<td class="num">{_esc(_fmt(r, 4))}</td>'
                f'<td class="num">{_esc(_fmt(r / norm, 3))}</td></tr>'
            )
        body = "".join(cells)
        return (
            f'<table class="ft-top"><tr><th colspan="4">{_esc(heading)}</th></tr>'
            f"<tr><th>pos</th><th>token</th><th>R</th><th>norm.</th></tr>{body}</table>"
        )

    contrast = f"contrast {_quoted(attr.contrast)}" if attr.contrast else "not the target"
    return (
        f'<h4>Top tokens</h4><div class="ft-tops">{table(1, f"supports target {_quoted(attr.target)}")}'
        f"{table(-1, f'supports {contrast}')}</div>"
    )


def _html_layers(attr: Attribution) -> str:
    """The per-layer map: an inline SVG wrapping an embedded PNG, axis labels, and hover data for the script."""
    h = _hidden(attr)
    if h is None:
        return ""
    special = _special(attr)
    n = len(attr.tokens)
    rows = h.shape[0]
    vals, pos, grey, k = _bin_columns(h, special, _MAX_LAYER_COLUMNS)
    cols = vals.shape[1]
    scaled = _row_scaled(vals, grey)
    rgb = _rgb_array(scaled[::-1], grey)  # top row = last layer
    col_rep = max(1, 900 // cols)
    row_px = max(4, min(16, 320 // rows))
    rgb = np.repeat(np.repeat(rgb, row_px, axis=0), col_rep, axis=1)
    png = base64.b64encode(_png_bytes(rgb)).decode("ascii")

    left, top, bottom, right = 42, 6, 30, 8
    iw = 1120
    ih = rows * row_px if rows * row_px >= 120 else 120
    cell_h = ih / rows
    width, height = left + iw + right, top + ih + bottom
    names = _layer_names(rows)
    step = max(1, math.ceil(rows / 14))
    labels = []
    for r in range(rows):
        if r % step == 0 or r == rows - 1:
            y = top + (rows - 1 - r + 0.5) * cell_h
            labels.append(
                f'<text x="{left - 5}" y="{y:.1f}" text-anchor="end" dominant-baseline="middle">{names[r]}</text>'
            )
    ticks = sorted({0, n - 1, *[int(round(x)) for x in np.linspace(0, n - 1, 9)]})
    for t in ticks:
        x = left + (t + 0.5) / n * iw
        labels.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ih}" y2="{top + ih + 4}" stroke="#6b7280"/>')
        labels.append(f'<text x="{x:.1f}" y="{top + ih + 15}" text-anchor="middle">{t}</text>')
    labels.append(f'<text x="{left + iw / 2:.1f}" y="{top + ih + 27}" text-anchor="middle">token position</text>')
    if 0 < attr.prompt_length < n:
        x = left + attr.prompt_length / n * iw
        labels.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ih}" stroke="{_ANSWER}" stroke-width="2" '
            'stroke-dasharray="4 3"/>'
        )
    if 0 <= attr.position < n:
        x = left + (attr.position + 0.5) / n * iw
        labels.append(f'<path d="M{x - 5:.1f},{top + ih + 1} l5,-6 l5,6 z" fill="#111"/>')

    data = {
        "rows": rows,
        "cols": cols,
        "bin": k,
        "n": n,
        "names": names,
        "v": [[float(f"{x:.4g}") for x in row] for row in vals],
        "pos": pos.tolist(),
        "sums": [float(f"{x:.4g}") for x in h.sum(axis=1)],
        "hint": "hover the map for layer, position and raw relevance",
    }
    binned = f"; columns are bins of {k} tokens, each showing its largest-|R| value" if k > 1 else ""
    return (
        "<h4>Relevance by layer</h4>"
        f'<div class="ft-note">Rows: embedding output (bottom) to the last decoder layer (top). Each row is scaled to '
        f"its own largest |R| among non-special tokens (relevance concentrates on the explained position in deep "
        f"layers){binned}. Dashed violet line: start of the answer prefix; triangle: explained position.</div>"
        f'<svg class="ft-lsvg" viewBox="0 0 {width} {height}" role="img" aria-label="relevance by layer and token">'
        f'<image class="ft-lmap" x="{left}" y="{top}" width="{iw}" height="{ih}" preserveAspectRatio="none" '
        f'style="image-rendering:pixelated" href="data:image/png;base64,{png}"/>'
        f'<rect x="{left}" y="{top}" width="{iw}" height="{ih}" fill="none" stroke="#d1d5db"/>'
        + "".join(labels)
        + "</svg>"
        f'<div class="ft-readout">{_esc(data["hint"])}</div>'  # type: ignore[arg-type]
        f'<script type="application/json" class="ft-ldata">{_json_for_script(data)}</script>'
    )


def render_html(attr: Attribution, standalone: bool = True) -> str:
    """Render an attribution as a self-contained HTML heatmap.

    The page needs no network: styles are inline, the per-layer map is an embedded PNG inside inline SVG, and the
    only script (hover read-out for the per-layer map) is inline; without it every token still carries a tooltip
    with its position, text, raw and normalised relevance. ``standalone=False`` returns a ``<div>`` fragment (with
    its own scoped ``<style>``) for Jupyter's ``_repr_html_`` or embedding in a larger report.
    """
    n = len(attr.tokens)
    root_id = f"ft-{uuid.uuid4().hex[:12]}"
    delta = float(attr.delta_logit)
    in_sum = attr.relevance_sum if n else 0.0
    h = _hidden(attr)
    last_sum = float(h[-1].sum()) if h is not None else float("nan")
    n_special = int(_special(attr).sum())
    answer_len = max(0, n - attr.prompt_length)

    if attr.contrast is not None:
        question = (
            f'Why <code class="ft-pill tgt">{_esc(_quoted(attr.target))}</code> rather than '
            f'<code class="ft-pill ctr">{_esc(_quoted(attr.contrast))}</code>?'
        )
    else:
        question = f'Why <code class="ft-pill tgt">{_esc(_quoted(attr.target))}</code>?'

    meta = [
        ("model", attr.model),
        ("objective", attr.objective),
        ("method", attr.method),
        ("Δℓ", f"{delta:.4f}"),
        ("Σ input R", f"{in_sum:.4f} ({_share(in_sum, delta)} of Δℓ)"),
        ("Σ last-layer R", f"{last_sum:.4f}" if math.isfinite(last_sum) else "n/a"),
        ("tokens", f"{n} ({attr.prompt_length} prompt + {answer_len} answer, {n_special} special)"),
        ("explained position", str(attr.position)),
        ("scale (max |R|, non-special)", f"{attr.scale:.4g}" if n else "n/a"),
    ]
    meta_html = "".join(f'<div><span class="k">{_esc(k)}</span><span class="v">{_esc(v)}</span></div>' for k, v in meta)
    contrast_label = _quoted(attr.contrast) if attr.contrast is not None else "not the target"
    legend = (
        f'<span>−1 supports {_esc(contrast_label)}</span><span class="ft-grad"></span>'
        f"<span>+1 supports {_esc(_quoted(attr.target))}</span>"
        f'<span><span class="ft-sw" style="background:rgb{_SPECIAL_BG};color:#4b5563">sp</span>'
        "special token (grey, excluded from scaling)</span>"
        f'<span><span class="ft-sw" style="border-bottom:3px solid {_ANSWER}"></span>answer prefix (model-generated)'
        "</span>"
        '<span><span class="ft-sw" style="box-shadow:0 0 0 2px #111"></span>explained position</span>'
        "<span>· space ↵ newline → tab</span>"
    )
    note = (
        "Colour: R divided by the largest |R| among non-special tokens, clipped to [−1, 1]. AttnLRP does not "
        f"conserve relevance: the input keeps {_share(in_sum, delta)} of Δℓ, while the last layer holds Δℓ. "
        "Hover a token for its values."
    )
    layers = _html_layers(attr)
    tokens_html = _html_tokens(attr, root_id, _top_positions(attr, 10)) if n else ""
    body = (
        f'<div class="ft-attr" id="{root_id}"><style>{_CSS}</style>'
        f'<div class="ft-title">{question}</div>'
        f'<div class="ft-meta">{meta_html}</div>'
        f'<div class="ft-legend">{legend}</div>'
        f'<div class="ft-note">{_esc(note)}</div>'
        f'<div class="ft-tokens">{tokens_html if n else "<em>no tokens</em>"}</div>'
        + (_html_top(attr, root_id) if n else "")
        + layers
        + (f"<script>{_JS % json.dumps(root_id)}</script>" if layers else "")
        + "</div>"
    )
    if not standalone:
        return body
    title = f"failtrace · {attr.model} · {_quoted(attr.target)} vs {_quoted(attr.contrast)}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>body{{margin:16px;background:#f3f4f6}}</style></head>"
        f"<body>{body}</body></html>\n"
    )


# ----------------------------------------------------------------------------------------------------------------
# PNG / SVG (matplotlib, no pyplot)
# ----------------------------------------------------------------------------------------------------------------

_CHARS_PER_LINE = 150
_MONO_ADVANCE = 0.602  # DejaVu Sans Mono advance width in em
_MAX_TICK_TOKENS = 80  # up to this many tokens, the per-layer panel labels every column with its token
_TICK_CHARS = 14


_FALLBACK_FONTS = (
    "Noto Sans Mono CJK SC", "Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans", "WenQuanYi Zen Hei",
    "Droid Sans Fallback", "AR PL UMing CN", "Noto Sans", "Noto Color Emoji", "Symbola",
)


def _families(primary: str) -> list[str]:
    """``primary`` plus any installed fallback fonts with wider script coverage (CJK, emoji), in that order."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [primary] + [name for name in _FALLBACK_FONTS if name in installed]


def _cell_width(s: str) -> int:
    """Display width of a string in monospace cells (East-Asian wide characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in s) or 1


def _layout(texts: Sequence[str], breaks: Sequence[int], width: float) -> tuple[list[tuple[float, int, float]], int]:
    """Place boxes of text left to right, wrapping at ``width`` cells and after tokens with newlines.

    Returns (x, line, box width) for each text and the number of lines.
    """
    x, line = 0.0, 0
    out: list[tuple[float, int, float]] = []
    for s, br in zip(texts, breaks):
        w = min(float(_cell_width(s)) + 0.5, width)
        if x > 0 and x + w > width:
            x, line = 0.0, line + 1
        out.append((x, line, w))
        x += w + 0.25
        if br:
            x, line = 0.0, line + br
    return out, (out[-1][1] + 1 if out else 1)


def heatmap_figure(attr: Attribution, max_tokens: int = 400) -> Figure:
    """Build the two-panel matplotlib figure (token heatmap, per-layer map) without touching pyplot state.

    Inputs longer than ``max_tokens`` show only ``max_tokens`` positions in the token panel (see
    :func:`relevant_segments`; the title says so and each gap is labelled); the per-layer panel always covers the
    whole sequence (binned beyond 1000 positions) and shades the positions shown above.
    """
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n = len(attr.tokens)
    segments = relevant_segments(attr, max_tokens) if n else []
    note = _segments_note(segments, n)
    special = _special(attr)
    shown = _clipped(attr) if n else np.zeros(0)
    cmap = colormaps["bwr"]
    norm = Normalize(-1.0, 1.0)
    mono, sans = _families("DejaVu Sans Mono"), _families("DejaVu Sans")

    # ---- token layout (in monospace cells and lines)
    texts: list[str] = []
    breaks: list[int] = []
    kinds: list[tuple[str, int]] = []  # ("tok", position), ("gap", -1) or ("next", -1)
    prev_end = 0
    for a, b in segments + ([(n, n)] if segments and segments[-1][1] < n else []):
        if a > prev_end:
            if breaks:  # each shown segment starts a new line, headed by the size of the gap before it
                breaks[-1] = max(breaks[-1], 1)
            texts.append(f"[… {a - prev_end} tokens …]")
            breaks.append(0)
            kinds.append(("gap", -1))
        for i in range(a, b):
            texts.append(_shown(attr.tokens[i]))
            breaks.append(min(attr.tokens[i].count("\n"), 2))
            kinds.append(("tok", i))
            if i == attr.position:
                nxt = f"⟶ {_quoted(attr.target)}" + (f" vs {_quoted(attr.contrast)}" if attr.contrast else "")
                texts.append(nxt)
                breaks.append(0)
                kinds.append(("next", -1))
        prev_end = b
    places, n_lines = _layout(texts, breaks, _CHARS_PER_LINE)

    # ---- figure geometry in inches
    fig_w = 14.0
    left_in, right_in = 0.55, 0.25
    text_w_in = fig_w - left_in - right_in
    char_pt = text_w_in * 72.0 / _CHARS_PER_LINE
    font_pt = char_pt / _MONO_ADVANCE
    line_in = font_pt * 1.75 / 72.0
    text_h_in = max(1, n_lines) * line_in
    h = _hidden(attr)
    layer_h_in = 0.0 if h is None else min(4.0, max(1.8, 0.12 * h.shape[0]))
    title_in = 1.0 if note else 0.8
    gap_in = 0.55 if h is not None else 0.0
    tick_labels = n <= _MAX_TICK_TOKENS
    if h is None:
        bottom_in = 0.2
    elif tick_labels:
        bottom_in = 0.2 + 0.085 * max(_cell_width(_shown(t)[:_TICK_CHARS]) for t in attr.tokens)
    else:
        bottom_in = 0.6
    fig_h = title_in + text_h_in + gap_in + layer_h_in + bottom_in

    fig = Figure(figsize=(fig_w, fig_h), dpi=100, facecolor="white")
    delta = float(attr.delta_logit)
    in_sum = attr.relevance_sum if n else 0.0
    last_sum = float(h[-1].sum()) if h is not None else float("nan")
    contrast = f" rather than {_quoted(attr.contrast)}" if attr.contrast is not None else ""
    lines = [
        f"{attr.model}: why {_quoted(attr.target)}{contrast}?",
        f"{attr.objective} · {attr.method} · Δℓ = {delta:.3f} · Σ input R = {in_sum:.3f} "
        f"({_share(in_sum, delta)} of Δℓ; AttnLRP does not conserve) · Σ last-layer R = {last_sum:.3f}",
    ]
    if note:
        lines.append(note)
    fig.text(0.5, 1 - 0.12 / fig_h, lines[0], ha="center", va="top", fontsize=13, weight="bold", parse_math=False)
    fig.text(0.5, 1 - 0.42 / fig_h, "\n".join(lines[1:]), ha="center", va="top", fontsize=9.5, color="#333",
             parse_math=False, linespacing=1.5)

    # ---- token panel
    text_bottom = (bottom_in + layer_h_in + gap_in) / fig_h
    ax = fig.add_axes((left_in / fig_w, text_bottom, text_w_in / fig_w, text_h_in / fig_h))
    ax.set_xlim(0, _CHARS_PER_LINE)
    ax.set_ylim(max(1, n_lines), 0)
    ax.set_axis_off()
    rects, faces, edges, widths, underlines = [], [], [], [], []
    for (kind, p), s, (x, line, w) in zip(kinds, texts, places):
        y = line + 0.5
        if kind == "tok":
            if special[p]:
                face, color, style = "#cdcdcd", "#4b5563", "italic"
            else:
                face = cmap(norm(shown[p]))
                color, style = ("white" if abs(shown[p]) > 0.62 else "black"), "normal"
            rects.append(Rectangle((x, line + 0.1), w, 0.8))
            faces.append(face)
            edges.append("black" if p == attr.position else "none")
            widths.append(1.6 if p == attr.position else 0.0)
            if p >= attr.prompt_length:
                underlines.append([(x, line + 0.95), (x + w, line + 0.95)])
            ax.text(x + 0.25, y, s, fontsize=font_pt, family=mono, color=color, style=style,
                    va="center", ha="left", parse_math=False, clip_on=False)
        else:
            ax.text(x + 0.25, y, s, fontsize=font_pt * 0.95, family=sans,
                    color="#222" if kind == "next" else "#666",
                    weight="bold" if kind == "next" else "normal", style="italic" if kind == "gap" else "normal",
                    va="center", ha="left", parse_math=False, clip_on=False)
    if rects:
        ax.add_collection(PatchCollection(rects, facecolors=faces, edgecolors=edges, linewidths=widths))
    if underlines:
        ax.add_collection(LineCollection(underlines, colors=_ANSWER, linewidths=2.2))

    # ---- per-layer panel
    if h is not None:
        lax = fig.add_axes((left_in / fig_w, bottom_in / fig_h, (text_w_in - 0.9) / fig_w, layer_h_in / fig_h))
        cax = fig.add_axes(((fig_w - right_in - 0.7) / fig_w, bottom_in / fig_h, 0.14 / fig_w, layer_h_in / fig_h))
        vals, _, grey, k = _bin_columns(h, special, _MAX_LAYER_COLUMNS)
        scaled = np.ma.masked_array(_row_scaled(vals, grey), mask=np.broadcast_to(grey, vals.shape))
        lcmap = colormaps["bwr"].with_extremes(bad="#dedede")
        rows = h.shape[0]
        im = lax.imshow(scaled, cmap=lcmap, norm=norm, origin="lower", aspect="auto", interpolation="nearest",
                        extent=(-0.5, vals.shape[1] * k - 0.5, -0.5, rows - 0.5))
        lax.set_xlim(-0.5, n - 0.5)
        names = _layer_names(rows)
        step = max(1, math.ceil(rows / 12))
        yt = sorted({*range(0, rows, step), rows - 1})
        lax.set_yticks(yt, [names[r] for r in yt], fontsize=8)
        if tick_labels:
            lax.set_xticks(range(n), [_shown(t)[:_TICK_CHARS] for t in attr.tokens], rotation=90, fontsize=7,
                           family=mono)
            for lbl in lax.get_xticklabels():
                lbl.set_parse_math(False)
        else:
            lax.tick_params(axis="x", labelsize=8)
            lax.set_xlabel("token position", fontsize=9)
        if 0 < attr.prompt_length < n:
            lax.axvline(attr.prompt_length - 0.5, color=_ANSWER, lw=1.5, ls="--")
        if note:
            for a, b in segments:
                lax.axvspan(a - 0.5, b - 0.5, color="#f59e0b", alpha=0.25, lw=0)
        binned = f" (columns: bins of {k} tokens, largest |R|)" if k > 1 else ""
        lax.set_title(f"relevance by layer, each row scaled to its own max |R| over non-special tokens{binned}",
                      fontsize=9, loc="left", parse_math=False)
        cb = fig.colorbar(im, cax=cax)
        cb.set_label("R / max|R| of layer", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return fig


def _save(attr: Attribution, path: str | Path, max_tokens: int, fmt: str, dpi: int) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Tokens may hold characters no installed font covers, and fallback fonts may lack a regular weight: neither is
    # worth a warning per glyph, so both the warnings and matplotlib's font-manager log are quietened while drawing.
    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    font_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*[Gg]lyph.*missing.*")
            warnings.filterwarnings("ignore", message=r".*[Mm]issing.*glyph.*")
            fig = heatmap_figure(attr, max_tokens=max_tokens)
            FigureCanvasAgg(fig)
            fig.savefig(path, format=fmt, dpi=dpi, facecolor="white")
    finally:
        font_log.setLevel(level)
    return path


def save_png(attr: Attribution, path: str | Path, max_tokens: int = 400, dpi: int = 120) -> Path:
    """Write the two-panel heatmap (tokens, relevance by layer) as a PNG and return its path."""
    return _save(attr, path, max_tokens, "png", dpi)


def save_svg(attr: Attribution, path: str | Path, max_tokens: int = 400) -> Path:
    """Write the two-panel heatmap as an SVG (vector; fonts as paths) and return its path."""
    return _save(attr, path, max_tokens, "svg", 72)


# ----------------------------------------------------------------------------------------------------------------
# terminal (rich)
# ----------------------------------------------------------------------------------------------------------------


def render_terminal(attr: Attribution, console: Console | None = None, top_k: int = 10,
                    max_strip_tokens: int = 600) -> None:
    """Print a summary table, a coloured token strip and the top-k positive/negative tokens with rich.

    Token backgrounds use truecolor red/blue scaled by the normalised relevance (rich downgrades on simpler
    terminals); tokens with |normalised| < 0.05 keep the terminal's own background, special tokens are dim. Inputs
    longer than ``max_strip_tokens`` show only that many positions (see :func:`relevant_segments`), with a note.
    """
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    n = len(attr.tokens)
    h = _hidden(attr)
    delta = float(attr.delta_logit)
    in_sum = attr.relevance_sum if n else 0.0
    last_sum = float(h[-1].sum()) if h is not None else float("nan")

    summary = Table(show_header=False, box=None, pad_edge=False, padding=(0, 2))
    summary.add_column(style="bold cyan", no_wrap=True)
    summary.add_column()
    rows = [
        ("model", attr.model),
        ("target", f"{_quoted(attr.target)}  (id {attr.target.id})"),
        ("contrast", f"{_quoted(attr.contrast)}  (id {attr.contrast.id})" if attr.contrast else "—"),
        ("objective / method", f"{attr.objective} / {attr.method}"),
        ("Δℓ", f"{delta:.4f}"),
        ("Σ input R", f"{in_sum:.4f}  ({_share(in_sum, delta)} of Δℓ; AttnLRP does not conserve)"),
        ("Σ last-layer R", f"{last_sum:.4f}" if math.isfinite(last_sum) else "n/a"),
        ("tokens", f"{n}  (prompt {attr.prompt_length}, answer {max(0, n - attr.prompt_length)}, "
                   f"explained position {attr.position})"),
    ]
    for k, v in rows:
        summary.add_row(Text(k), Text(v))

    strip = Text()
    if n:
        segments = relevant_segments(attr, max_strip_tokens)
        shown = _clipped(attr)
        special = _special(attr)
        prev_end = 0
        for a, b in segments + ([(n, n)] if segments[-1][1] < n else []):
            if a > prev_end:
                strip.append(f" [… {a - prev_end} tokens …] ", style="italic dim")
            for i in range(a, b):
                if i == attr.prompt_length and i > 0:
                    strip.append(" answer▸ ", style="bold white on rgb(124,58,237)")
                tok = attr.tokens[i]
                if special[i]:
                    style = "dim italic"
                elif abs(shown[i]) < 0.05:
                    style = ""
                else:
                    r, g, b_ = _mix(shown[i])
                    fg = "white" if abs(shown[i]) > 0.62 else "black"
                    style = f"{fg} on rgb({r},{g},{b_})"
                if i == attr.position:
                    style = (style + " bold underline").strip()
                strip.append(_shown(tok), style=style or None)
                if i == attr.position:
                    strip.append(f" ⟶ {_quoted(attr.target)}", style="bold red")
                    if attr.contrast is not None:
                        strip.append(" vs ", style="bold")
                        strip.append(_quoted(attr.contrast), style="bold blue")
                if "\n" in tok:
                    strip.append("\n" * min(tok.count("\n"), 2))
            prev_end = b
        note = _segments_note(segments, n)
        if note:
            strip.append(f"\n({note})", style="italic dim")
    else:
        strip.append("no tokens", style="italic dim")

    def top_table(sign: int, title: str, color: str) -> Table:
        t = Table(title=title, title_style=f"bold {color}", show_lines=False, header_style="bold")
        t.add_column("pos", justify="right")
        t.add_column("token")
        t.add_column("R", justify="right")
        t.add_column("norm.", justify="right")
        for p, tok, r in attr.top_tokens(top_k, sign=sign):
            t.add_row(Text(str(p)), Text(_shown(tok)), Text(_fmt(r, 4)), Text(_fmt(r / attr.scale, 3)))
        return t

    contrast_title = f"supports {_quoted(attr.contrast)}" if attr.contrast else "against the target"
    tops = Table.grid(padding=(0, 4))
    tops.add_row(top_table(1, f"supports {_quoted(attr.target)}", "red"), top_table(-1, contrast_title, "blue"))

    legend = Text()
    legend.append(" +1 supports target ", style="white on rgb(220,38,38)")
    legend.append(" ")
    legend.append(" −1 supports contrast ", style="white on rgb(37,99,235)")
    legend.append("  special", style="dim italic")
    legend.append("  · space ↵ newline → tab", style="dim")

    console.print(Panel(summary, title="failtrace attribution", title_align="left"))
    console.print(Panel(Group(legend, Text(""), strip), title="input relevance (normalised)", title_align="left"))
    if n:
        console.print(tops)
