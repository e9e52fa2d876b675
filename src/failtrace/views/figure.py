"""The two-panel matplotlib figure of one attribution (token heatmap above, relevance by layer below), as PNG/SVG.

Built on a bare :class:`matplotlib.figure.Figure` (no pyplot state). Tokens are laid out as boxes of monospace cells
that wrap at 150 cells; inputs longer than ``max_tokens`` show only the segments chosen by
:func:`~failtrace.views.common.spans_worth_showing`, with each gap labelled. The per-layer panel always covers the whole
sequence (binned beyond 1000 positions) and shades the positions shown above.
"""

from __future__ import annotations

import logging
import math
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from failtrace.attribution.record import Attribution
from failtrace.views.contrast import white_or_black
from failtrace.views.common import (
    ANSWER,
    MAX_LAYER_COLUMNS,
    bin_columns,
    clipped,
    hidden,
    layer_names,
    literal_text,
    quoted,
    spans_worth_showing,
    row_scaled,
    segments_note,
    shown,
    special_of,
    sum_rows,
    value_row,
    with_gaps,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CHARS_PER_LINE = 150
MONO_ADVANCE = 0.602  # DejaVu Sans Mono advance width in em
MAX_TICK_TOKENS = 80  # up to this many tokens, the per-layer panel labels every column with its token
TICK_CHARS = 14
FIG_WIDTH, LEFT_IN, RIGHT_IN = 14.0, 0.55, 0.25
FALLBACK_FONTS = (
    "Noto Sans Mono CJK SC", "Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans", "WenQuanYi Zen Hei",
    "Droid Sans Fallback", "AR PL UMing CN", "Noto Sans", "Noto Color Emoji", "Symbola",
)


def families(primary: str) -> list[str]:
    """``primary`` plus any installed fallback fonts with wider script coverage (CJK, emoji), in that order."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [primary] + [name for name in FALLBACK_FONTS if name in installed]


def cell_width(s: str) -> int:
    """Display width of a string in monospace cells (East-Asian wide characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in s) or 1


def layout(texts: Sequence[str], breaks: Sequence[int], width: float) -> tuple[list[tuple[float, int, float]], int]:
    """Place boxes of text left to right, wrapping at ``width`` cells and after tokens with newlines.

    Returns (x, line, box width) for each text and the number of lines.
    """
    x, line = 0.0, 0
    out: list[tuple[float, int, float]] = []
    for s, br in zip(texts, breaks):
        w = min(float(cell_width(s)) + 0.5, width)
        if x > 0 and x + w > width:
            x, line = 0.0, line + 1
        out.append((x, line, w))
        x += w + 0.25
        if br:
            x, line = 0.0, line + br
    return out, (out[-1][1] + 1 if out else 1)


@dataclass
class _Boxes:
    """The token panel's items: text, line breaks after it, and kind ("tok" with its position, "gap" or "next")."""

    texts: list[str]
    breaks: list[int]
    kinds: list[tuple[str, int]]

    def add(self, text: str, brk: int, kind: str, pos: int = -1) -> None:
        """Append one token's text, its line-break flag and its kind (and position) to the layout."""
        self.texts.append(text)
        self.breaks.append(brk)
        self.kinds.append((kind, pos))


def _boxes(attr: Attribution, segments: list[tuple[int, int]]) -> _Boxes:
    out = _Boxes([], [], [])
    for gap, a, b in with_gaps(segments, len(attr.tokens)):
        if gap:
            if out.breaks:  # each shown segment starts a new line, headed by the size of the gap before it
                out.breaks[-1] = max(out.breaks[-1], 1)
            out.add(f"[… {gap} tokens …]", 0, "gap")
        for i in range(a, b):
            out.add(shown(attr.tokens[i]), min(attr.tokens[i].count("\n"), 2), "tok", i)
            if i == attr.position:
                vs = f" vs {quoted(attr.contrast)}" if attr.contrast else ""
                out.add(f"⟶ {quoted(attr.target)}{vs}", 0, "next")
    return out


def _title_lines(attr: Attribution, note: str) -> list[str]:
    contrast = f" rather than {quoted(attr.contrast)}" if attr.contrast is not None else ""
    lines = [
        f"{attr.model}: why {quoted(attr.target)}{contrast}?",
        f"{attr.objective} · {attr.method} · "
        + " · ".join(f"{k} = {v}" for k, v in (value_row(attr), *sum_rows(attr))),
    ]
    return lines + [note] if note else lines


def _token_panel(fig: Figure, attr: Attribution, boxes: _Boxes, rect: tuple[float, ...], font_pt: float) -> None:
    """Coloured boxes with the token text, the explained position outlined, generated tokens underlined."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.patches import Rectangle

    places, n_lines = layout(boxes.texts, boxes.breaks, CHARS_PER_LINE)
    ax = fig.add_axes(rect)
    ax.set_xlim(0, CHARS_PER_LINE)
    ax.set_ylim(max(1, n_lines), 0)
    ax.set_axis_off()
    cmap, special, values = colormaps["bwr"], special_of(attr), clipped(attr)
    mono, sans = families("DejaVu Sans Mono"), families("DejaVu Sans")
    rects, faces, edges, widths, underlines = [], [], [], [], []
    for (kind, p), s, (x, line, w) in zip(boxes.kinds, boxes.texts, places):
        y = line + 0.5
        if kind != "tok":
            ax.text(x + 0.25, y, s, fontsize=font_pt * 0.95, family=sans, color="#222" if kind == "next" else "#666",
                    weight="bold" if kind == "next" else "normal", style="italic" if kind == "gap" else "normal",
                    va="center", ha="left", parse_math=False, clip_on=False)
            continue
        if special[p]:
            face, color, style = "#cdcdcd", "#4b5563", "italic"
        else:
            face = cmap((values[p] + 1.0) / 2.0)
            color, style = white_or_black(to_hex(face)), "normal"  # bwr is not mix's scale
        rects.append(Rectangle((x, line + 0.1), w, 0.8))
        faces.append(face)
        edges.append("black" if p == attr.position else "none")
        widths.append(1.6 if p == attr.position else 0.0)
        if p >= attr.prompt_length:
            underlines.append([(x, line + 0.95), (x + w, line + 0.95)])
        ax.text(x + 0.25, y, s, fontsize=font_pt, family=mono, color=color, style=style,
                va="center", ha="left", parse_math=False, clip_on=False)
    if rects:
        ax.add_collection(PatchCollection(rects, facecolors=faces, edgecolors=edges, linewidths=widths))
    if underlines:
        ax.add_collection(LineCollection(underlines, colors=ANSWER, linewidths=2.2))


def _layer_panel(fig: Figure, attr: Attribution, h: np.ndarray, rects: tuple[Any, Any],
                 segments: list[tuple[int, int]], shaded: bool) -> None:
    """The per-layer map: each row scaled to its own largest non-special |R|, with a colour bar."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    n, rows = len(attr.tokens), h.shape[0]
    lax, cax = fig.add_axes(rects[0]), fig.add_axes(rects[1])
    vals, _, grey, k = bin_columns(h, special_of(attr), MAX_LAYER_COLUMNS)
    scaled = np.ma.masked_array(row_scaled(vals, grey), mask=np.broadcast_to(grey, vals.shape))
    im = lax.imshow(scaled, cmap=colormaps["bwr"].with_extremes(bad="#dedede"), norm=Normalize(-1.0, 1.0),
                    origin="lower", aspect="auto", interpolation="nearest",
                    extent=(-0.5, vals.shape[1] * k - 0.5, -0.5, rows - 0.5))
    lax.set_xlim(-0.5, n - 0.5)
    names = layer_names(rows)
    yt = sorted({*range(0, rows, max(1, math.ceil(rows / 12))), rows - 1})
    lax.set_yticks(yt, [names[r] for r in yt], fontsize=8)
    if n <= MAX_TICK_TOKENS:
        lax.set_xticks(range(n), [shown(t)[:TICK_CHARS] for t in attr.tokens], rotation=90, fontsize=7,
                       family=families("DejaVu Sans Mono"))
        for lbl in lax.get_xticklabels():
            lbl.set_parse_math(False)
    else:
        lax.tick_params(axis="x", labelsize=8)
        lax.set_xlabel("token position", fontsize=9)
    if 0 < attr.prompt_length < n:
        lax.axvline(attr.prompt_length - 0.5, color=ANSWER, lw=1.5, ls="--")
    for a, b in segments if shaded else []:
        lax.axvspan(a - 0.5, b - 0.5, color="#f59e0b", alpha=0.25, lw=0)
    binned = f" (columns: bins of {k} tokens, largest |R|)" if k > 1 else ""
    lax.set_title(f"relevance by layer, each row scaled to its own max |R| over non-special tokens{binned}",
                  fontsize=9, loc="left", parse_math=False)
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("R / max|R| of layer", fontsize=8)
    cb.ax.tick_params(labelsize=7)


def heatmap_figure(attr: Attribution, max_tokens: int = 400) -> Figure:
    """Build the two-panel figure (module docstring) without touching pyplot state."""
    from matplotlib.figure import Figure

    n = len(attr.tokens)
    segments = spans_worth_showing(attr, max_tokens) if n else []
    note = segments_note(segments, n)
    boxes = _boxes(attr, segments)
    _, n_lines = layout(boxes.texts, boxes.breaks, CHARS_PER_LINE)
    # geometry in inches: the font size makes CHARS_PER_LINE monospace cells fill the text width
    text_w = FIG_WIDTH - LEFT_IN - RIGHT_IN
    font_pt = text_w * 72.0 / CHARS_PER_LINE / MONO_ADVANCE
    text_h = max(1, n_lines) * font_pt * 1.75 / 72.0
    h = hidden(attr)
    if h is not None and h.shape[0] < 2:  # input relevance only (attention, IG, random): the strip above is all
        h = None
    layer_h = 0.0 if h is None else min(4.0, max(1.8, 0.12 * h.shape[0]))
    title_h, gap = (1.0 if note else 0.8), (0.55 if h is not None else 0.0)
    if h is None:
        bottom = 0.2
    elif n <= MAX_TICK_TOKENS:
        bottom = 0.2 + 0.085 * max(cell_width(shown(t)[:TICK_CHARS]) for t in attr.tokens)
    else:
        bottom = 0.6
    fig_h = title_h + text_h + gap + layer_h + bottom
    fig = Figure(figsize=(FIG_WIDTH, fig_h), dpi=100, facecolor="white")
    lines = _title_lines(attr, note)
    fig.text(0.5, 1 - 0.12 / fig_h, lines[0], ha="center", va="top", fontsize=13, weight="bold", parse_math=False)
    fig.text(0.5, 1 - 0.42 / fig_h, "\n".join(lines[1:]), ha="center", va="top", fontsize=9.5, color="#333",
             parse_math=False, linespacing=1.5)
    _token_panel(fig, attr, boxes, (LEFT_IN / FIG_WIDTH, (bottom + layer_h + gap) / fig_h, text_w / FIG_WIDTH,
                                    text_h / fig_h), font_pt)
    if h is not None:
        main = (LEFT_IN / FIG_WIDTH, bottom / fig_h, (text_w - 0.9) / FIG_WIDTH, layer_h / fig_h)
        bar = ((FIG_WIDTH - RIGHT_IN - 0.7) / FIG_WIDTH, bottom / fig_h, 0.14 / FIG_WIDTH, layer_h / fig_h)
        _layer_panel(fig, attr, h, (main, bar), segments, shaded=bool(note))
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
            fig = literal_text(heatmap_figure(attr, max_tokens=max_tokens))
            FigureCanvasAgg(fig)
            fig.savefig(path, format=fmt, dpi=dpi, facecolor="white")
    finally:
        font_log.setLevel(level)
    return path


def save_heatmap_png(attr: Attribution, path: str | Path, max_tokens: int = 400, dpi: int = 120) -> Path:
    """Write the two-panel heatmap as a PNG and return its path."""
    return _save(attr, path, max_tokens, "png", dpi)


def save_heatmap_svg(attr: Attribution, path: str | Path, max_tokens: int = 400) -> Path:
    """Write the two-panel heatmap as an SVG (vector; fonts as paths) and return its path."""
    return _save(attr, path, max_tokens, "svg", 72)
