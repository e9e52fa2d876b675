"""Text that reads on a coloured label (WCAG 2 contrast), worked out once beside the palettes that the report and the
explorer share, so both draw their labels the same way. Written out because it is a dozen lines of the WCAG formula;
no well-kept library is needed for it."""

from __future__ import annotations

from functools import lru_cache

WHITE = "#ffffff"
BLACK = "#000000"
DARK = "#111827"  # the near-black of the pages' text
AA = 4.5  # WCAG AA for normal text


def _rgb(colour: str) -> tuple[int, int, int]:
    h = colour.lstrip("#")
    h = "".join(c * 2 for c in h) if len(h) == 3 else h
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def luminance(colour: str) -> float:
    """Relative luminance of a ``#rgb``/``#rrggbb`` colour (WCAG 2)."""
    lin = [(x / 255) / 12.92 if x / 255 <= 0.04045 else ((x / 255 + 0.055) / 1.055) ** 2.4 for x in _rgb(colour)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    """The WCAG contrast ratio of two colours (1 to 21)."""
    la, lb = luminance(a), luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


@lru_cache(maxsize=None)
def ink_on(background: str) -> str:
    """White or near-black, whichever reads better on ``background`` (a badge's text)."""
    return WHITE if contrast(background, WHITE) >= contrast(background, DARK) else DARK


@lru_cache(maxsize=None)
def white_or_black(background: str) -> str:
    """White or pure black, whichever reads better on ``background`` (a heatmap token's text). Black, not the pages'
    near-black: where the two inks read equally on a saturated red or blue they reach 4.59:1, not 4.2:1."""
    return WHITE if contrast(background, WHITE) >= contrast(background, BLACK) else BLACK


@lru_cache(maxsize=None)
def darkened_for_white(colour: str, ratio: float = AA) -> str:
    """``colour`` darkened towards black, hue kept, until white text on it reaches ``ratio`` (a segment's label)."""
    r, g, b = _rgb(colour)
    for step in range(51):
        f = 1 - step * 0.02
        out = "#%02x%02x%02x" % (round(r * f), round(g * f), round(b * f))
        if contrast(out, WHITE) >= ratio:
            return out
    return "#000000"
