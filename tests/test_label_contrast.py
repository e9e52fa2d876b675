"""Label text reads on its colour (WCAG AA, 4.5:1) in the report as in the explorer: the report's badges drew white
on amber at 2.15:1 after the explorer was fixed in its own JavaScript. The ratio is checked against published WCAG
values and recomputed here from the formula, not with the module under test."""

from __future__ import annotations

import re

import pytest

from failtrace.report.casepage import SEGMENT_COLORS, SEGMENT_LABEL_COLORS, badge
from failtrace.report.figures import CATEGORY_COLORS, PATTERN_COLORS
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
