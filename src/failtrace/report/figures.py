"""The report's figures (matplotlib, Agg, no pyplot state), each drawn from the rows of :mod:`failtrace.report.tables`.

- ``categories.png``: per benchmark, the share of cases per outcome category and per failure pattern (paper Fig. 1).
- ``segments_<benchmark>.png``: mean normalised segment relevance, one bar group per segment, one bar per category.
- ``faithfulness_<benchmark>.png``: flip rate against k, one line per attribution method; legend gives mean k*.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from failtrace.report.tables import CATEGORIES, PATTERNS
from failtrace.views.common import literal_text
from failtrace.views.palette import CATEGORY_COLORS, METHOD_COLORS, PATTERN_COLORS

# method -> (colour, line style): the palette's colour (the explorer's flip curves use it too); random dashed
METHOD_STYLE = {m: (c, "--" if m == "random" else "-") for m, c in METHOD_COLORS.items()}
# twelve distinct hues (a figure with more segments than colours drew two segments alike; the explorer's
# across.js PALETTE is the same list)
_FALLBACK = ("#0891b2", "#a16207", "#be185d", "#4d7c0f", "#1e40af", "#78716c", "#7c3aed", "#ea580c", "#dc2626",
             "#16a34a", "#111827", "#0ea5e9")


def _color(name: str, table: Mapping[str, str], i: int) -> str:
    return table.get(name, _FALLBACK[i % len(_FALLBACK)])


def _style(ax: Any, grid: str = "y") -> None:
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    ax.tick_params(labelsize=9)
    ax.grid(axis=grid, color="#e5e7eb", lw=0.8)
    ax.set_axisbelow(True)


def _tight(fig: Any) -> None:
    """tight_layout without its warning when long tick labels leave no room (bbox_inches='tight' still fits them)."""
    literal_text(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    literal_text(fig)
    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    font_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # tokens and labels may hold glyphs no installed font has
            warnings.filterwarnings("ignore", message=r".*[Gg]lyph.*")
            fig.savefig(path, format="png", dpi=110, facecolor="white", bbox_inches="tight")
    finally:
        font_log.setLevel(level)
    return path


def _stacked(ax: Any, rows: Sequence[Mapping[str, Any]], benches: list[str], order: Sequence[str],
             colors: Mapping[str, str], title: str) -> None:
    """Horizontal 100 % bars, one per benchmark, split by label; each part is annotated with its count: inside a
    part wide enough for it, else in the gap above or below the bar (alternating, and moved right past the last
    count on its side, so neighbouring slivers' counts do not overlap)."""
    from matplotlib.colors import to_rgb

    labels = list(order) + sorted({r["label"] for r in rows} - set(order))
    fig = ax.get_figure()
    axis_in = fig.get_size_inches()[0] * ax.get_position().width  # before the tight layout widens it: an upper bound
    for bi, bench in enumerate(benches):
        left, outside, ends = 0.0, 0, {True: -1.0, False: -1.0}  # right end of the last count above / below
        for li, lab in enumerate(labels):
            hit = [r for r in rows if r["benchmark"] == bench and r["label"] == lab]
            if not hit:
                continue
            share, n = hit[0]["share"], hit[0]["cases"]
            named = lab if bi == 0 or lab not in ax.get_legend_handles_labels()[1] else None
            if not n:  # no case: in the legend, as "label (0)", with nothing drawn
                ax.barh(bi, 0, left=left, color=_color(lab, colors, li), height=0.6,
                        label=f"{named} (0)" if named and all(not r["cases"] for r in rows if r["label"] == lab)
                        else named)
                continue
            ax.barh(bi, share, left=left, color=_color(lab, colors, li), edgecolor="white", height=0.6, label=named)
            if share >= 0.06:
                r, g, b = to_rgb(_color(lab, colors, li))
                ink = "#111827" if 0.299 * r + 0.587 * g + 0.114 * b > 0.7 else "white"  # readable on light bars
                ax.text(left + share / 2, bi, str(n), ha="center", va="center", fontsize=9, color=ink, weight="bold")
            else:  # a sliver: its count in the 0.2 gap beside the bar (the y axis runs downwards)
                above = outside % 2 == 0
                half = (len(str(n)) * 7.5 * 0.62 / 72 + 0.04) / axis_in / 2  # half its width in axis units (7.5 pt
                # digits are about 0.62 em wide), with a little room
                x = max(left + share / 2, ends[above] + half)
                ends[above] = x + half
                ax.text(x, bi - 0.31 if above else bi + 0.31, str(n), ha="center",
                        va="bottom" if above else "top", fontsize=7.5, color="#111827")
                outside += 1
            left += share
    ax.set_yticks(range(len(benches)), benches)
    ax.set_xlim(0, 1)
    ax.set_ylim(len(benches) - 0.5, -0.5)
    ax.xaxis.set_major_formatter(lambda x, _p: f"{x:.0%}")
    ax.set_title(title, fontsize=11, loc="left", weight="bold")
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles, names, ncol=max(1, min(5, len(names))), fontsize=8, frameon=False, loc="upper center",
              bbox_to_anchor=(0.5, -0.12))
    _style(ax, grid="x")


def categories_figure(cat_rows: Sequence[Mapping[str, Any]], pat_rows: Sequence[Mapping[str, Any]],
                      path: Path) -> Path:
    """Fig. 1-like: per benchmark, shares of outcome categories (left) and failure patterns (right)."""
    from matplotlib.figure import Figure

    benches = list(dict.fromkeys([r["benchmark"] for r in cat_rows] + [r["benchmark"] for r in pat_rows]))
    fig = Figure(figsize=(11, 1.6 + 0.55 * max(1, len(benches))))
    ax1, ax2 = fig.subplots(1, 2)
    _stacked(ax1, cat_rows, benches, CATEGORIES, CATEGORY_COLORS, "Outcome category (share of cases)")
    _stacked(ax2, pat_rows, benches, PATTERNS, PATTERN_COLORS, "Failure pattern (share of cases)")
    _tight(fig)
    return _save(fig, path)


FAITHFULNESS_WIDTH = 6.8  # inches


def segments_width(n_segments: int) -> float:
    """Inches of the segment figure: wider with more segments, never narrower than the faithfulness figure beside it
    (the report sizes the two columns in this ratio, so both print their text at one scale)."""
    return max(FAITHFULNESS_WIDTH, 1.1 * n_segments + 2.0)


def segments_figure(rows: Sequence[Mapping[str, Any]], benchmark: str, path: Path) -> Path:
    """Grouped bars: mean normalised relevance per segment (x), one bar per category, for one benchmark."""
    from matplotlib.figure import Figure

    mine = [r for r in rows if r["benchmark"] == benchmark]
    segs = list(dict.fromkeys(r["segment"] for r in mine))
    cats = list(dict.fromkeys(r["category"] for r in mine))
    fig = Figure(figsize=(segments_width(len(segs)), 3.8))
    ax = fig.subplots()
    width = 0.8 / max(1, len(cats))
    for ci, cat in enumerate(cats):
        xs, ys, ns = [], [], []
        for si, seg in enumerate(segs):
            hit = [r for r in mine if r["category"] == cat and r["segment"] == seg]
            if hit:
                xs.append(si - 0.4 + width * (ci + 0.5))
                ys.append(hit[0]["mean_normalised_relevance"])
                ns.append(hit[0]["cases"])
        # the category's case count (rows before it was written: the most cases any of its bars averages)
        n = max((int(r.get("category_cases") or 0) for r in mine if r["category"] == cat), default=0) or max(ns or [0])
        ax.bar(xs, ys, width=width * 0.92, color=_color(cat, CATEGORY_COLORS, ci), label=f"{cat} (n={n})")
        for x, y, k in zip(xs, ys, ns):  # a mean over fewer cases than the legend's n (the segment is missing from
            if k < n:                    # some: e.g. no answer before the target) says its own n
                ax.text(x, y, f"n={k}", ha="center", va="bottom" if y >= 0 else "top", fontsize=7, color="#374151")
    ax.axhline(0, color="#111", lw=0.8)
    ax.set_xticks(range(len(segs)), segs)
    ax.set_ylabel("mean Σ R / max|R|\n(max over tokens, special ids left out)", fontsize=9)
    method = mine[0]["method"] if mine else ""
    ax.set_title(f"{benchmark}: segment relevance by category ({method})", fontsize=10.5, loc="left",
                 weight="bold")
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    _tight(fig)
    return _save(fig, path)


def faithfulness_figure(flip_rows: Sequence[Mapping[str, Any]], kstar: Sequence[Mapping[str, Any]],
                        benchmark: str, path: Path) -> Path:
    """Flip rate against the number k of masked top tokens, one line per method, for one benchmark."""
    from matplotlib.figure import Figure

    mine = [r for r in flip_rows if r["benchmark"] == benchmark]
    methods = list(dict.fromkeys(r["method"] for r in mine))
    fig = Figure(figsize=(FAITHFULNESS_WIDTH, 3.8 + 0.22 * ((len(methods) + 1) // 2)))
    ax = fig.subplots()
    for i, m in enumerate(methods):
        pts = sorted((r["k"], r["flip_rate"]) for r in mine if r["method"] == m and r["flip_rate"] is not None)
        ks = [r for r in kstar if r["benchmark"] == benchmark and r["method"] == m]
        mk = ks[0]["mean_k_star"] if ks else None
        flipped = f"flips {ks[0]['flipped']}/{ks[0]['cases']}" if ks else ""  # how many, beside how few tokens: a
        # mean k* over one flipped case read as the best method against one that flips three of five
        label = f"{m}: {flipped}, mean k* {mk:.1f}" if mk is not None else f"{m}: {flipped or 'no flip'}"
        color, ls = METHOD_STYLE.get(m, (_FALLBACK[i % len(_FALLBACK)], "-"))
        # AttnLRP: a broad band under thin lines, so a method with the same curve shows inside it, not hidden
        wide = m == "attnlrp"
        ax.plot([0] + [k for k, _ in pts], [0.0] + [v for _, v in pts], ls, color=color, marker="o",
                ms=7 if wide else 3.5, lw=5.0 if wide else 1.4, alpha=0.55 if wide else 1.0, zorder=2 if wide else 3,
                label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("k = top positively attributed tokens masked", fontsize=9)
    ax.set_ylabel("flip rate (Δℓ < 0)", fontsize=9)
    ax.yaxis.set_major_formatter(lambda x, _p: f"{x:.0%}")
    ax.set_title(f"{benchmark}: faithfulness by masking", fontsize=10.5, loc="left", weight="bold")
    # below the plot, two columns: beside it the legend took a third of the width and was unreadable once the
    # figure was shrunk into its column of the report
    ax.legend(fontsize=9.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    _style(ax)
    _tight(fig)
    return _save(fig, path)
