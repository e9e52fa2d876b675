"""Label text reads on its colour (WCAG AA, 4.5:1) in the report as in the explorer: the report's badges drew white
on amber at 2.15:1 after the explorer was fixed in its own JavaScript. The ratio is checked against published WCAG
values and recomputed here from the formula, not with the module under test."""

from __future__ import annotations

import re

import pytest

from failtrace.report.casepage import badge
from failtrace.views.palette import SEGMENT_COLORS, SEGMENT_LABEL_COLORS
from failtrace.views.palette import CATEGORY_COLORS, PATTERN_COLORS
from failtrace.views.contrast import contrast


def _ratio(a: str, b: str) -> float:
    def lum(c: str) -> float:
        r, g, b_ = (int(c.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4))
        f = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in (r, g, b_)]
        return 0.2126 * f[0] + 0.7152 * f[1] + 0.0722 * f[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_the_ratio_is_wcag_s() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)  # the usual "just below AA" grey
    assert contrast("#2563eb", "#ffffff") == pytest.approx(_ratio("#2563eb", "#ffffff"), rel=1e-3)


@pytest.mark.parametrize("palette", ["categories", "patterns"])
def test_report_badges_reach_aa(palette: str) -> None:
    colours = CATEGORY_COLORS if palette == "categories" else PATTERN_COLORS
    for label in [*colours, None, "not-a-label"]:
        html = badge(label, colours)
        bg, ink = re.search(r"background:(#[0-9a-f]{6});color:(#[0-9a-f]{6})", html).groups()
        assert _ratio(bg, ink) >= 4.5, (label, bg, ink, _ratio(bg, ink))


def test_segment_labels_reach_aa_with_white_text() -> None:
    assert set(SEGMENT_COLORS) < set(SEGMENT_LABEL_COLORS)
    for name, colour in SEGMENT_LABEL_COLORS.items():
        assert _ratio(colour, "#ffffff") >= 4.5, (name, colour)


def _lab(c: str) -> tuple[float, float, float]:
    """CIELAB (D65) of an sRGB hex colour, from the published formulas."""
    def lin(x: float) -> float:
        return x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4
    r, g, b = (lin(int(c.lstrip("#")[i:i + 2], 16) / 255) for i in (0, 2, 4))
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116
    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def test_segment_underlines_are_told_apart() -> None:
    """A real IFEval case's answer (fuchsia) and instruction (violet) underlines read as one colour (ΔE*76 = 32);
    HumanEval's instruction and examples (violet, indigo: 14) and system prompt and docstring (two oranges: 18) were
    closer still. Every two segment colours now lie at least 20 apart, and the answer, in every case beside the
    relevant segment, at least 40 from each other segment."""
    import itertools
    import math

    assert _lab("#ffffff") == pytest.approx((100.0, 0.0, 0.0), abs=0.05)  # the reference white
    assert math.dist(_lab("#000000"), _lab("#ffffff")) == pytest.approx(100.0, abs=0.05)
    close = [(a, b, round(math.dist(_lab(SEGMENT_COLORS[a]), _lab(SEGMENT_COLORS[b])), 1))
             for a, b in itertools.combinations(SEGMENT_COLORS, 2)
             if math.dist(_lab(SEGMENT_COLORS[a]), _lab(SEGMENT_COLORS[b])) < 20]
    assert not close, close
    answer = _lab(SEGMENT_COLORS["answer"])
    near = {n: round(math.dist(answer, _lab(c)), 1) for n, c in SEGMENT_COLORS.items() if n != "answer"}
    assert min(near.values()) >= 40, near


def test_category_colours_are_not_the_relevance_colours() -> None:
    """Red and blue mean "supports the target" and "supports the contrast" in every heatmap; the categories drew M-IA
    blue and NC-IA+AG red, so a blue M-IA bar in the segment figure read as pushing towards the contrast. Every
    category colour now lies at least 40 (ΔE*76) from both, and the categories at least 30 from each other."""
    import itertools
    import math

    from failtrace.views.common import BLUE, RED

    ends = [_lab("#%02x%02x%02x" % rgb) for rgb in (RED, BLUE)]
    labels = {k: _lab(c) for k, c in CATEGORY_COLORS.items() if k != "unlabelled"}
    near = {k: round(min(math.dist(lab, e) for e in ends), 1) for k, lab in labels.items()}
    assert min(near.values()) >= 40, near
    apart = {(a, b): round(math.dist(labels[a], labels[b]), 1) for a, b in itertools.combinations(labels, 2)}
    assert min(apart.values()) >= 30, apart
