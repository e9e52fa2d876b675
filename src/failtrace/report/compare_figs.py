"""The report's Fig. 4–7 (matplotlib, Agg) and their sections "Across models" / "Across checkpoints", drawn from
:mod:`failtrace.report.compare_data` (definitions there). Each figure is a PNG in ``figures/`` with its CSV in
``tables/``; the sections appear only when the store holds comparisons of that kind.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from failtrace.report import compare_data as D
from failtrace.report.figures import _FALLBACK, _save, _style, _tight
from failtrace.report.tables import write_csv
from failtrace.views.common import count_of

SPLIT_COLORS = {"trained": "#dc2626", "held-out": "#2563eb", "all": "#374151"}
GROUP_COLORS = {"corrected": "#16a34a", "uncorrected": "#dc2626"}
CSV_COLUMNS = {
    "scatter": ["case_id", "item_id", "benchmark", "reference_model", "model", "dl_reference", "dl_model",
                "corrected", "writes"],
    "segments": ["model", "group", "role", "shown_model", "segment", "cases", "mean_share"],
    "checkpoints": ["case_id", "item_id", "benchmark", "series", "model", "step", "split", "delta_logit",
                    "corrected", "writes"],
    "checkpoint_summary": ["series", "split", "step", "cases", "median_delta_logit", "corrected", "corrected_share",
                           "writes_recorded", "writes_contrast"],
    "checkpoint_segments": ["series", "split", "step", "segment", "cases", "mean_share"],
}
FIGURE_NAMES = ("fig4_scatter", "fig5_segments", "fig6_checkpoints", "fig7_segments")  # figures/<name>.png
CSV_NAMES = {"scatter": "fig4_scatter", "segments": "fig5_segments", "checkpoints": "fig6_checkpoints",
             "checkpoint_summary": "fig6_summary", "checkpoint_segments": "fig7_segments"}


def _figure(w: float, h: float, n: int, cols: int | None = None) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels of w × h inches, ``cols`` a row (default: all in one row)."""
    from matplotlib.figure import Figure

    cols = max(1, min(n, cols or n))
    rows = -(-n // cols)
    fig = Figure(figsize=(w * cols, h * rows))
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _splits(values: Any) -> list[str]:
    """Splits in a fixed order: trained, held-out, then any other."""
    order = list(SPLIT_COLORS)
    return sorted(dict.fromkeys(values), key=lambda s: (order.index(s) if s in order else 99, s))


def scatter_figure(points: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Fig. 4: Δℓ(case's model) vs Δℓ(other model), one panel per other model; y = x dashed; y < 0 (corrected,
    green) and y > 0 (uncorrected, red) shaded."""
    models = list(dict.fromkeys(p["model"] for p in points))
    fig, axes = _figure(4.4, 4.2, len(models))
    for ax, model in zip(axes, models):
        mine = [p for p in points if p["model"] == model]
        xs, ys = [p["dl_reference"] for p in mine], [p["dl_model"] for p in mine]
        lo, hi = min([0.0, *xs, *ys]), max([0.0, *xs, *ys])
        pad = 0.08 * (hi - lo or 1.0)
        lo, hi = lo - pad, hi + pad
        ax.axhspan(lo, 0, color=GROUP_COLORS["corrected"], alpha=0.08, lw=0)
        ax.axhspan(0, hi, color=GROUP_COLORS["uncorrected"], alpha=0.06, lw=0)
        ax.plot([lo, hi], [lo, hi], "--", color="#6b7280", lw=1, label="y = x")
        ax.axhline(0, color="#111", lw=0.8)
        for grp in ("corrected", "uncorrected"):
            sel = [p for p in mine if p["corrected"] == (grp == "corrected")]
            ax.scatter([p["dl_reference"] for p in sel], [p["dl_model"] for p in sel], s=26,
                       color=GROUP_COLORS[grp], edgecolor="white", lw=0.5, zorder=3, label=f"{grp} ({len(sel)})")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"Δℓ in {mine[0]['reference_model']}", fontsize=9)
        ax.set_ylabel(f"Δℓ in {model}", fontsize=9)
        ax.text(0.02, 0.02, "corrected (Δℓ < 0)", transform=ax.transAxes, fontsize=8, color="#15803d")
        ax.text(0.02, 0.95, "uncorrected", transform=ax.transAxes, fontsize=8, color="#b91c1c")
        ax.set_title(f"{model}: {count_of(len(mine), 'case')}", fontsize=10, loc="left", weight="bold")
        ax.legend(fontsize=7.5, frameon=False, loc="lower right")
        _style(ax, grid="both")
    _tight(fig)
    return _save(fig, path)


def segments_figure(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Fig. 5: mean segment share per segment, bars per (model shown × corrected/uncorrected), one panel per other
    model. Hatched bars: the case's own model; plain: the other model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = max(4.8, 0.75 * len({r["segment"] for r in rows}) + 2.5)
    fig, axes = _figure(width, 4.2, len(models), cols=1 if width > 7 else 2)  # many segments: panels stacked
    for ax, model in zip(axes, models):
        mine = [r for r in rows if r["model"] == model]
        segs = list(dict.fromkeys(r["segment"] for r in mine))
        combos = [(role, grp) for role in ("reference", "model") for grp in ("corrected", "uncorrected")]
        width = 0.8 / len(combos)
        for ci, (role, grp) in enumerate(combos):
            hit = {r["segment"]: r for r in mine if r["role"] == role and r["group"] == grp}
            if not hit:
                continue
            xs = [si - 0.4 + width * (ci + 0.5) for si, s in enumerate(segs) if s in hit]
            ys = [hit[s]["mean_share"] for s in segs if s in hit]
            name = next(iter(hit.values()))["shown_model"]
            n = max(r["cases"] for r in hit.values())
            ax.bar(xs, ys, width=width * 0.92, color=GROUP_COLORS[grp], alpha=0.55 if role == "reference" else 0.95,
                   hatch="//" if role == "reference" else None, edgecolor="white",
                   label=f"{name}, {grp} (n={n})")
        ax.axhline(0, color="#111", lw=0.8)
        ax.set_xticks(range(len(segs)), segs, fontsize=8.5)
        ax.set_ylabel("mean R_seg / Σ|R_seg|", fontsize=9)
        ax.set_title(f"segment share, split by {model}", fontsize=10, loc="left", weight="bold")
        ax.legend(fontsize=7.5, frameon=False, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        _style(ax)
    _tight(fig)
    return _save(fig, path)


def checkpoints_figure(points: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]],
                       path: Path) -> Path:
    """Fig. 6: Δℓ per checkpoint step, one thin line per case coloured by split, the median per split bold; one
    panel per checkpoint series."""
    series = list(dict.fromkeys(p["series"] for p in points))
    fig, axes = _figure(5.2, 3.9, len(series))
    for ax, s in zip(axes, series):
        mine = [p for p in points if p["series"] == s]
        for i, split in enumerate(_splits(p["split"] for p in mine)):
            color = SPLIT_COLORS.get(split, _FALLBACK[i % len(_FALLBACK)])
            for cid in dict.fromkeys(p["case_id"] for p in mine if p["split"] == split):
                line = sorted((p["step"], p["delta_logit"]) for p in mine
                              if p["case_id"] == cid and p["split"] == split)
                ax.plot([a for a, _ in line], [b for _, b in line], color=color, lw=0.7, alpha=0.35)
            med = sorted((r["step"], r["median_delta_logit"], r["cases"]) for r in summary
                         if r["series"] == s and r["split"] == split)
            n = max(c for _, _, c in med)
            ax.plot([a for a, _, _ in med], [b for _, b, _ in med], color=color, lw=2.6, marker="o", ms=4,
                    label=f"{split}: median (n={n})")
        _step_axes(ax, "Δℓ = ℓ(target) − ℓ(contrast)", f"{s}: Δℓ per checkpoint")
    _tight(fig)
    return _save(fig, path)


def _step_axes(ax: Any, ylabel: str, title: str) -> None:
    """The shared frame of the per-checkpoint panels (Fig. 6 and 7): zero line, step axis, labels, legend."""
    from matplotlib.ticker import MaxNLocator

    ax.axhline(0, color="#111", lw=0.8)
    ax.set_xlabel("training step", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers: no 0.25, 0.5 ticks
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=10, loc="left", weight="bold")
    ax.legend(fontsize=7.5, frameon=False)
    _style(ax, grid="both")


def checkpoint_segments_figure(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Fig. 7: mean segment share against the step, one line per segment; one panel per (series, split)."""
    splits = _splits(r["split"] for r in rows)
    panels = [(s, sp) for s in dict.fromkeys(r["series"] for r in rows) for sp in splits
              if any(r["series"] == s and r["split"] == sp for r in rows)]
    segs = list(dict.fromkeys(r["segment"] for r in rows))
    fig, axes = _figure(5.0, 3.5, len(panels), cols=len(splits))
    for ax, (s, split) in zip(axes, panels):
        for i, seg in enumerate(segs):
            line = sorted((r["step"], r["mean_share"]) for r in rows
                          if r["series"] == s and r["split"] == split and r["segment"] == seg)
            if line:
                ax.plot([a for a, _ in line], [b for _, b in line], marker="o", ms=3.5, lw=1.6,
                        color=_FALLBACK[i % len(_FALLBACK)], label=seg)
        _step_axes(ax, "mean R_seg / Σ|R_seg|", f"{s} · {split}")
    _tight(fig)
    return _save(fig, path)


def _uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fig(src: str, alt: str, caption: str) -> str:
    return f'<figure><img src="{src}" alt="{alt}"><figcaption>{caption}</figcaption></figure>'


def _writes_note(contrast: int, recorded: int) -> str:
    """Of the corrected cases whose top next token was recorded, how many write the contrast there (Δℓ < 0 says
    only that the contrast is above the target; an uncorrected case never writes it); "" when none was recorded."""
    return f", {contrast} of the {recorded} corrected with their top token recorded write the contrast" \
        if recorded else ""


def _models_section(data: Mapping[str, list[dict[str, Any]]], unmapped: Mapping[str, int], figs: Path) -> str:
    from failtrace.report.casepage import esc

    pts = data["scatter"]
    per = []
    for m in dict.fromkeys(p["model"] for p in pts):
        mine = [p for p in pts if p["model"] == m]
        fixed = sum(p["corrected"] for p in mine)
        recorded, contrast = D.corrected_writes(mine)
        per.append(f"<b>{esc(m)}</b>: {fixed} of {count_of(len(mine), 'case')} corrected (Δℓ &lt; 0)"
                   + _writes_note(contrast, recorded)
                   + (f", {unmapped.get(m, 0)} not mapped" if unmapped.get(m) else ""))
    html = ('<section class="block" id="across-models"><h2>Across models</h2><p class="lead">Each clean case of the '
            "analysed model re-scored on other models from the same text (<code>failtrace compare --models</code>). "
            + "; ".join(per) + ".</p>")
    html += _fig(_uri(scatter_figure(pts, figs / "fig4_scatter.png")), "Δℓ across models",
                 "Fig. 4 — Δℓ in the analysed model (x) against Δℓ in the other model (y). Below 0 (green) the other "
                 "model prefers the contrast: the failure is corrected there; dashed: y = x. Data: "
                 "tables/fig4_scatter.csv.")
    if data["segments"]:
        html += _fig(_uri(segments_figure(data["segments"], figs / "fig5_segments.png")), "segment share per model",
                     "Fig. 5 — mean segment share R_seg / Σ|R_seg| (AttnLRP; the chat template's text and special "
                     "ids left out) in the analysed model (hatched) and the other model (plain), for the cases the "
                     "other model corrects (green) and does not (red). Data: tables/fig5_segments.csv.")
    return html + "</section>"


def _checkpoints_section(data: Mapping[str, list[dict[str, Any]]], figs: Path) -> str:
    from failtrace.report.casepage import esc

    last = {}
    for r in data["checkpoint_summary"]:
        last[(r["series"], r["split"])] = r  # sorted by step: the last one wins
    lead = "; ".join(f"<b>{esc(s)}</b> {esc(sp)}: {r['corrected']} of {r['cases']} corrected at step {r['step']} "
                     f"(median Δℓ {r['median_delta_logit']:.2f})"
                     + _writes_note(r.get("writes_contrast", 0), r.get("writes_recorded", 0))
                     for (s, sp), r in last.items())
    html = ('<section class="block" id="across-checkpoints"><h2>Across checkpoints</h2><p class="lead">The clean '
            "cases re-scored on post-training checkpoints (<code>failtrace compare --checkpoints</code>). "
            f"{lead}.</p>")
    html += _fig(_uri(checkpoints_figure(data["checkpoints"], data["checkpoint_summary"],
                                         figs / "fig6_checkpoints.png")), "Δℓ per checkpoint",
                 "Fig. 6 — Δℓ per checkpoint step: thin lines are cases, bold the median per split (trained: cases "
                 "the post-training saw; held-out: cases it did not). Below 0 the failure is corrected. Data: "
                 "tables/fig6_checkpoints.csv, tables/fig6_summary.csv.")
    if data["checkpoint_segments"]:
        html += _fig(_uri(checkpoint_segments_figure(data["checkpoint_segments"], figs / "fig7_segments.png")),
                     "segment share per checkpoint",
                     "Fig. 7 — mean segment share R_seg / Σ|R_seg| (AttnLRP; the chat template's text and special "
                     "ids left out) per checkpoint step, per split. Data: "
                     "tables/fig7_segments.csv.")
    return html + "</section>"


def across_sections(rows: Sequence[Mapping[str, Any]], out: Path) -> tuple[str, list[tuple[str, str]]]:
    """Write Fig. 4–7 (PNG + CSV) for the comparison ``rows`` into ``out``; returns (HTML sections, nav links).
    Nothing is written for a kind of comparison the rows do not hold."""
    data = D.figure_data(rows)
    html, nav = "", []
    for name, table in data.items():
        path = out / "tables" / f"{CSV_NAMES[name]}.csv"
        if table:
            write_csv(table, path, CSV_COLUMNS[name])
        elif path.exists():
            path.unlink()  # the report's own folder: no stale table of a previous build
    for stale in FIGURE_NAMES:
        old = out / "figures" / f"{stale}.png"
        if old.exists():
            old.unlink()
    if data["scatter"]:
        html += _models_section(data, D.unmapped_counts(rows), out / "figures")
        nav.append(("across-models", "Across models"))
    if data["checkpoints"]:
        html += _checkpoints_section(data, out / "figures")
        nav.append(("across-checkpoints", "Across checkpoints"))
    return html, nav
