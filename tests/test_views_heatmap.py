"""Tests of the attribution views: HTML heatmap, PNG/SVG figure and terminal rendering."""

from __future__ import annotations

import base64
import json
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from failtrace.attribution.record import Attribution, TokenRef, visible
from failtrace.views import heatmap_html as render_html
from failtrace.views import spans_worth_showing, render_terminal
from failtrace.views import save_heatmap_png as save_png
from failtrace.views import save_heatmap_svg as save_svg

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_record(
    tokens: list[str] | None = None,
    relevance: dict[int, float] | None = None,
    special: set[int] | None = None,
    num_layers: int = 4,
    prompt_length: int | None = None,
    contrast: TokenRef | None = TokenRef(30, " Lyon"),
    seed: int = 0,
    noise: float = 0.0,
) -> Attribution:
    """A hand-built record: ``relevance`` sets chosen positions, everything else is (optionally noisy) zero."""
    if tokens is None:
        tokens = ["<s>", "The", " capital", " of", " France", " is", "\n", " the", " city", " of"]
    n = len(tokens)
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0, noise, n) if noise else np.zeros(n)
    for p, v in (relevance or {}).items():
        r[p] = v
    special = {0} if special is None else special
    hidden = np.stack([r * (1 - l / (num_layers + 1)) for l in range(num_layers + 1)])
    hidden[-1, -1] += 3.0
    return Attribution(
        model="test/tiny-model",
        tokens=tokens,
        token_ids=list(range(n)),
        special_mask=[i in special for i in range(n)],
        target=TokenRef(20, " Paris"),
        contrast=contrast,
        objective="logit_diff",
        method="attnlrp",
        delta_logit=3.0,
        input_relevance=r,
        hidden_relevance=hidden,
        prompt_length=n - 2 if prompt_length is None else prompt_length,
        position=n - 1,
    )


class _Spans(HTMLParser):
    """Collect the token spans (elements with data-p) of a rendered heatmap: attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: dict[int, dict[str, str]] = {}
        self._open: int | None = None
        self.scripts: list[dict[str, str | None]] = []
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if "data-p" in a:
            self._open = int(a["data-p"])
            self.spans[self._open] = dict(a, text="")
        if tag == "script":
            self.scripts.append(dict(attrs))
        for key in ("src", "href"):
            if key in a:
                self.links.append((tag, a[key]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.spans[self._open]["text"] += data


def parse(html_text: str) -> _Spans:
    p = _Spans()
    p.feed(html_text)
    return p


def background(style: str) -> tuple[int, int, int]:
    m = re.search(r"background:\s*rgb\((\d+),\s*(\d+),\s*(\d+)\)", style)
    assert m, f"no rgb background in style {style!r}"
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


# ---------------------------------------------------------------------------------------------------------------- HTML


def test_html_has_no_external_resources() -> None:
    page = render_html(make_record(relevance={2: 0.5, 4: -0.3}))
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", page), "the page must not reference anything on the network"
    assert "@import" not in page
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page)
    parsed = parse(page)
    for tag, target in parsed.links:
        assert target.startswith(("data:", "#")), f"<{tag}> points outside the page: {target[:60]}"
    for attrs in parsed.scripts:
        assert "src" not in attrs, "scripts must be inline"


def test_html_escapes_tokens() -> None:
    tokens = ["<s>", "<script>alert(1)</script>", ' "q" & <b>', "x'y", " end"]
    page = render_html(make_record(tokens=tokens, relevance={1: 0.7, 2: -0.4}))
    assert "<script>alert(1)" not in page
    assert "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    spans = parse(page).spans
    # every token is one span whose decoded text is the token with visible whitespace, in order
    assert sorted(spans) == list(range(len(tokens)))
    for i, tok in enumerate(tokens):
        assert spans[i]["text"] == visible(tok)
        assert visible(tok) in spans[i]["title"]


def test_html_colours_follow_sign_and_special_tokens_are_grey() -> None:
    rec = make_record(relevance={0: 5.0, 2: 0.8, 4: -0.8, 5: 0.0}, special={0})
    spans = parse(render_html(rec)).spans
    r, g, b = background(spans[2]["style"])
    assert r > b + 60 and r > g + 60, f"positive relevance should be red-ish, got {(r, g, b)}"
    r, g, b = background(spans[4]["style"])
    assert b > r + 60 and b > g + 30, f"negative relevance should be blue-ish, got {(r, g, b)}"
    assert background(spans[5]["style"]) == (255, 255, 255)
    # the special token has by far the largest relevance, yet is drawn neutral grey
    r, g, b = background(spans[0]["style"])
    assert r == g == b and r < 240
    assert "sp" in spans[0]["class"].split()
    # intensity grows with |relevance|: scale is max |R| over non-special tokens = 0.8
    weak = parse(render_html(make_record(relevance={2: 0.8, 3: 0.2}))).spans
    assert background(weak[3]["style"])[1] > background(weak[2]["style"])[1]


def test_html_hover_shows_position_token_and_raw_value() -> None:
    rec = make_record(relevance={3: 0.0123456, 4: -0.5})
    spans = parse(render_html(rec)).spans
    title = spans[3]["title"]
    assert "pos 3" in title
    assert "‹·of›" in title
    assert "+0.0123456" in title
    assert f"{0.0123456 / 0.5:+.3f}" in title  # normalised value


def test_html_marks_answer_prefix_explained_position_and_header() -> None:
    rec = make_record(relevance={2: 0.5}, prompt_length=7)
    page = render_html(rec)
    spans = parse(page).spans
    for i in range(len(rec.tokens)):
        assert ("ans" in spans[i]["class"].split()) == (i >= 7)
    assert "pos" in spans[rec.position]["class"].split()
    assert page.count("answer ▸") == 1
    # header shows both sums, target and contrast with visible whitespace
    assert "‹·Paris›" in page and "‹·Lyon›" in page
    assert f"{rec.relevance_sum:.4f}" in page and f"{rec.delta_logit:.4f}" in page
    assert "test/tiny-model" in page and "attnlrp" in page and "logit_diff" in page
    # the top-token table links to the token in the strip
    anchor = re.search(r'<a href="#([^"]+)">2</a>', page)
    assert anchor and f'id="{anchor.group(1)}"' in page


def test_html_layer_map_is_an_embedded_png_with_hover_data() -> None:
    rec = make_record(relevance={2: 0.5, 4: -0.5}, num_layers=6)
    page = render_html(rec)
    m = re.search(r'href="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m, "per-layer map missing"
    png = base64.b64decode(m.group(1))
    assert png[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", png[16:24])
    assert width >= len(rec.tokens) and height >= 7
    data = json.loads(re.search(r'<script type="application/json" class="ft-ldata">(.*?)</script>', page).group(1))
    assert data["rows"] == 7 and data["cols"] == len(rec.tokens)
    assert data["v"][0][2] == pytest.approx(0.5)
    assert data["names"][0] == "emb" and data["names"][-1] == "L5"


def test_html_fragment() -> None:
    rec = make_record(relevance={2: 0.5})
    frag = render_html(rec, standalone=False)
    assert frag.startswith('<div class="ft-attr"') and frag.endswith("</div>")
    assert "<html" not in frag and "<!DOCTYPE" not in frag
    assert "·capital" in frag


def test_html_without_contrast_and_without_hidden_relevance() -> None:
    rec = make_record(relevance={2: 0.5}, contrast=None)
    rec.hidden_relevance = np.zeros((0,))
    page = render_html(rec)
    assert "ft-lmap" not in page
    assert "‹·Paris›" in page
    assert len(parse(page).spans) == len(rec.tokens)


# ----------------------------------------------------------------------------------------------------------- PNG / SVG


def _read_png(path: Path) -> np.ndarray:
    from matplotlib import image

    return image.imread(str(path))


def test_png_is_written_valid_and_shows_both_colours(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    figures_before = plt.get_fignums()
    rec = make_record(relevance={2: 0.9, 4: -0.9}, noise=0.05)
    out = save_png(rec, tmp_path / "sub" / "heat.png")
    assert out == tmp_path / "sub" / "heat.png" and out.exists()
    assert out.read_bytes()[:8] == PNG_MAGIC
    img = _read_png(out)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 800
    rgb = img[..., :3]
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    blue = (rgb[..., 2] > 0.8) & (rgb[..., 0] < 0.3) & (rgb[..., 1] < 0.3)
    assert red.sum() > 100 and blue.sum() > 100, "strong positive and negative tokens should appear red and blue"
    assert plt.get_fignums() == figures_before, "rendering must not create pyplot figures"


def test_png_survives_mathtext_and_odd_tokens(tmp_path: Path) -> None:
    tokens = ["<s>", "$a^{$", "$\\nocommand{$", "\\frac", "_x_", "€", "日本", "", "\t", "\n\n", " end"]
    rec = make_record(tokens=tokens, relevance={1: 0.5, 6: -0.5})
    out = save_png(rec, tmp_path / "odd.png")
    assert _read_png(out).shape[0] > 100
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text in the SVG, so it can be read back
        svg = save_svg(rec, tmp_path / "odd.svg").read_text()
    assert "<svg" in svg[:2000]
    # shown literally: '$…$' is not typeset as mathtext (parse_math off), '\\frac' is not a command
    for token in ("$a^{$", "$\\nocommand{$", "\\frac", "_x_", "日本", "€"):
        assert token in svg, token


# ------------------------------------------------------------------------------------------------------------ terminal


def _terminal_text(rec: Attribution, **kw: object) -> str:
    from rich.console import Console

    console = Console(record=True, width=120, color_system="truecolor")
    render_terminal(rec, console=console, **kw)  # type: ignore[arg-type]
    return console.export_text()


def test_terminal_shows_target_contrast_and_top_tokens() -> None:
    rec = make_record(relevance={2: 0.9, 4: -0.6, 3: 0.1})
    text = _terminal_text(rec)
    assert "‹·Paris›" in text and "‹·Lyon›" in text
    assert "·capital" in text and "·France" in text
    assert f"{rec.relevance_sum:.4f}" in text and "3.0000" in text
    top_pos_line = next(line for line in text.splitlines() if "·capital" in line and "+0.9000" in line)
    assert "·France" in top_pos_line and "-0.6000" in top_pos_line  # the two top-k tables sit side by side


def test_terminal_colours_tokens() -> None:
    from rich.console import Console

    rec = make_record(relevance={2: 0.9, 4: -0.9})
    console = Console(record=True, width=120, color_system="truecolor", force_terminal=True)
    render_terminal(rec, console=console)
    ansi = console.export_text(styles=True)
    assert "48;2;220;38;38" in ansi  # full-intensity red background
    assert "48;2;37;99;235" in ansi  # full-intensity blue background


def test_terminal_does_not_interpret_markup_in_tokens() -> None:
    tokens = ["<s>", "[bold]", "[/]", " [red]x", " y"]
    text = _terminal_text(make_record(tokens=tokens, relevance={1: 0.5, 3: -0.5}))
    assert "[bold]" in text and "·[red]x" in text


# ------------------------------------------------------------------------------------------------------- long inputs


def test_relevant_segments_respects_budget_and_keeps_what_matters() -> None:
    n = 5000
    tokens = ["<s>"] + [" w"] * (n - 1)
    rec = make_record(tokens=tokens, relevance={0: 9.0, 1200: 1.0, 3000: -0.8}, noise=0.01)
    segs = spans_worth_showing(rec, 200)
    covered = [p for a, b in segs for p in range(a, b)]
    assert len(covered) <= 200 and len(set(covered)) == len(covered)
    assert covered == sorted(covered)
    assert {1200, 3000, n - 1} <= set(covered)
    assert 0 not in covered  # a special token never attracts a window
    assert spans_worth_showing(make_record(), 400) == [(0, 10)]
    with pytest.raises(ValueError, match="max_tokens"):
        spans_worth_showing(rec, 0)


@pytest.mark.slow
def test_twelve_thousand_tokens_render_with_a_bounded_view(tmp_path: Path) -> None:
    n = 12_000
    tokens = ["<s>"] + [f" t{i % 97}" if i % 50 else "\n" for i in range(1, n)]
    rec = make_record(tokens=tokens, relevance={5000: 1.0, 7000: -0.9}, noise=0.02, num_layers=24)
    page = render_html(rec)
    spans = parse(page).spans
    assert len(spans) == n
    data = json.loads(re.search(r'class="ft-ldata">(.*?)</script>', page).group(1))
    assert data["cols"] <= 1000 and data["bin"] > 1
    out = save_png(rec, tmp_path / "long.png", max_tokens=400)
    assert out.read_bytes()[:8] == PNG_MAGIC
    text = _terminal_text(rec)
    assert "showing 600 of 12000 positions" in text
    assert "·t53" in text  # the token at position 5000 (most relevant) is in the strip
    assert len(text.splitlines()) < 200


def test_the_sums_are_described_for_the_method_that_made_them():
    """Every method used to be told "AttnLRP does not conserve" and "the last layer holds Δℓ": false for CP-LRP
    (which conserves), gradient × input (no last layer holding Δℓ) and attention (weights, not a share of Δℓ)."""
    from dataclasses import replace

    from failtrace.views.common import sum_note, sum_rows
    from rich.console import Console

    from failtrace.views.terminal import render_terminal

    lrp = make_record(relevance={2: 1.0, 5: 0.5})  # input sum 1.5 of Δℓ 3.0
    top = np.zeros_like(lrp.hidden_relevance[-1])
    top[-1] = 3.0  # the last layer holds Δℓ at the explained position, as an LRP pass starts
    lrp = replace(lrp, hidden_relevance=np.vstack([lrp.hidden_relevance[:-1], top]))
    assert sum_rows(lrp) == [("Σ input R", "1.5000 (50% of Δℓ)"), ("Σ last-layer R", "3.0000")]
    assert sum_note(lrp) == ("AttnLRP does not conserve relevance here: the input keeps 50% of Δℓ and the last "
                             "layer holds all of it.")
    cp = replace(make_record(relevance={2: 2.0, 5: 1.0}), method="cp-lrp")
    assert sum_note(cp).startswith("CP-LRP conserves relevance here: the input keeps 100% of Δℓ")
    gxi = replace(make_record(relevance={2: 1.0}), method="gradxinput")
    assert [k for k, _v in sum_rows(gxi)] == ["Σ input R"] and "need not add up to Δℓ" in sum_note(gxi)
    att = replace(make_record(relevance={2: 0.7, 5: 0.3}), method="attention")
    assert sum_rows(att) == [("Σ input R", "1.0000 (attention weights, not in units of Δℓ)")]
    assert "not a share of Δℓ" in sum_note(att) and "conserve" not in sum_note(att)
    for rec in (lrp, cp, gxi, att):  # the terminal view prints the same rows, and never the AttnLRP-only claim
        console = Console(record=True, width=120)
        render_terminal(rec, console=console)
        text = console.export_text()
        assert "AttnLRP does not conserve" not in text
        assert all(v in text for _k, v in sum_rows(rec))
        assert ("Σ last-layer R" in text) == (rec.method in ("attnlrp", "cp-lrp"))
    html = render_html(att)
    assert "last layer holds" not in html and "attention weights, not in units of Δℓ" in html
    from failtrace.views.figure import heatmap_figure

    # a method with input relevance only has no layer map (it drew a one-row "emb" panel); an LRP record has one
    one_row = replace(att, hidden_relevance=np.asarray(att.input_relevance)[None, :])
    assert len(heatmap_figure(one_row).axes) == 1 and len(heatmap_figure(lrp).axes) == 3


def test_terminal_without_colour_says_so_and_an_empty_side_reads_none() -> None:
    """Piped (no colour) the legend says the strip has none; a side with no token reads "(none)", not an empty
    table; normalised values print with three decimals, never an exponent."""
    from rich.console import Console

    rec = make_record(relevance={2: 0.9, 3: 0.004})  # nothing supports the contrast
    console = Console(record=True, width=120, color_system=None)
    render_terminal(rec, console=console)
    text = console.export_text()
    assert "no colours here" in text and "(none)" in text
    assert "0.004" in text and "e-03" not in text
    coloured = Console(record=True, width=120, color_system="truecolor", force_terminal=True)
    render_terminal(rec, console=coloured)
    assert "no colours here" not in coloured.export_text()


def _wcag(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """WCAG 2 contrast of two sRGB colours (0-255), written out here as the reference."""
    def lum(c: tuple[float, ...]) -> float:
        v = [x / 255 / 12.92 if x / 255 <= 0.04045 else ((x / 255 + 0.055) / 1.055) ** 2.4 for x in c]
        return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]
    la, lb = lum(a), lum(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def test_token_text_reads_on_every_shade_of_the_scale() -> None:
    """White text started at |R| > 0.62, where it read at 2.6-2.8:1 (`·cat` on the demo store: 3.05:1); every shade
    of red and blue now carries the ink that reads better, at 4.5:1 or more, in the HTML and in the terminal."""
    from rich.console import Console

    values = np.round(np.linspace(-1, 1, 201), 3)
    rec = make_record(tokens=["<s>"] + [f"t{i}" for i in range(201)], relevance={i + 1: v for i, v in
                                                                                   enumerate(values)}, special={0})
    spans = parse(render_html(rec)).spans
    def ink(style: str) -> tuple[int, ...]:  # "#rgb" or "#rrggbb"
        h = re.search(r"(?<!-)color:#(\w+)", style).group(1)
        h = "".join(c * 2 for c in h) if len(h) == 3 else h
        return tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))

    worst = min((_wcag(background(spans[p]["style"]), ink(spans[p]["style"])), p) for p in range(1, 202))
    assert worst[0] >= 4.5, (worst, spans[worst[1]]["style"])
    console = Console(record=True, width=200, color_system="truecolor", force_terminal=True)
    render_terminal(rec, console=console)
    ansi = console.export_text(styles=True)
    pairs = re.findall(r"38;2;(\d+);(\d+);(\d+);48;2;(\d+);(\d+);(\d+)m", ansi)
    assert len(pairs) > 50
    assert min(_wcag(tuple(map(int, p[:3])), tuple(map(int, p[3:]))) for p in pairs) >= 4.5


def test_a_lone_surrogate_is_shown_as_its_escape() -> None:
    """A checker's reason may quote a candidate's lone surrogate; printed raw it made the terminal view raise
    (UTF-8 cannot encode it). It is shown as the escape's text, as control characters are shown as symbols."""
    from failtrace.attribution.record import visible
    from failtrace.views.common import prose_line

    assert visible("a\ud800b") == "a\\ud800b" and prose_line("x \udfff\x1b") == "x \\udfff\u241b"
    prose_line("x \udfff").encode("utf-8")
