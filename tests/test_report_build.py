"""The report builder: its CSV tables against an independent recomputation from hand-made cases, every case on the
page with all its tokens, no network reference, the stored graph pictured, and the ``failtrace report`` command."""

from __future__ import annotations

import csv
import html
import os
import re
import statistics
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_cases import METHODS, make_case, sample  # noqa: E402

from failtrace.report.build import build_report  # noqa: E402
from failtrace.report.casepage import plain_token  # noqa: E402
from failtrace.views.common import clipped_text, shown  # noqa: E402


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _num(s: str) -> float | None:
    return None if s == "" else float(s)


class _Cases(HTMLParser):
    """Collects, per case article, the positions of its heatmap tokens (spans with class ``tok`` and ``data-p``)."""

    def __init__(self) -> None:
        super().__init__()
        self.current: str | None = None
        self.depth = 0
        self.tokens: dict[str, list[int]] = {}
        self.imgs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "article" and "case" in (a.get("class") or "").split():
            self.current = (a.get("id") or "")[len("case-"):]
            self.tokens[self.current] = []
        if tag == "span" and self.current and "tok" in (a.get("class") or "").split() and a.get("data-p"):
            self.tokens[self.current].append(int(a["data-p"]))
        if tag == "img":
            self.imgs.append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "article":
            self.current = None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list, list, dict]:
    cases, rows, pairs = sample()
    overrides = {cases[1].case_id: {"category": "NC-IA+AG", "reason": "flip masks the answer <i>itself</i>"}}
    out = tmp_path_factory.mktemp("report")
    index = build_report(cases, rows, out, pairs, overrides=overrides)
    return index, cases, rows, pairs, overrides


def test_table1_matches_status_rows_and_cases(built):
    index, cases, rows, _pairs, _o = built
    got = _csv(index.parent / "tables" / "table1.csv")
    assert len(got) == len(rows)
    for g, r in zip(got, rows):
        assert g["benchmark"] == r.benchmark and int(g["failures"]) == r.failed
        mine = [c for c in cases if r.pair_run_id and c.pair_run_id == r.pair_run_id]
        assert int(g["cases"]) == len(mine)
        if r.pair_run_id is None:  # no pair run: no clean count, no rate
            assert g["clean_pairs"] == "" and g["clean_rate"] == "" and g["avg_tokens_per_case"] == ""
            continue
        assert int(g["clean_pairs"]) == r.pairs["clean"]
        assert float(g["clean_rate"]) == pytest.approx(r.pairs["clean"] / r.failed)
        decidable = r.failed - r.pairs.get("unbounded", 0)  # status's "clean rate decid.": unbounded left out
        assert (float(g["clean_rate_decidable"]) == pytest.approx(r.pairs["clean"] / decidable) if decidable
                else g["clean_rate_decidable"] == "")
        # a pair run that has not paired every failure gives a lower bound, as `failtrace status` prints it (≥)
        assert g["clean_rate_is_lower_bound"] == str(sum(r.pairs.values()) < r.failed)
        assert float(g["avg_tokens_per_case"]) == pytest.approx(np.mean([len(c.token_ids) for c in mine]))
    html = index.read_text(encoding="utf-8")
    table1 = html.split('id="table1"', 1)[1].split("</table>", 1)[0]
    bounds = [r for r in rows if r.pair_run_id and sum(r.pairs.values()) < r.failed]
    decided = [r for r in bounds if r.failed - r.pairs.get("unbounded", 0) > 0]
    assert bounds and table1.count(">≥") == len(bounds) + len(decided)  # both rates are lower bounds there
    for r in bounds:
        assert f">≥{100 * r.pairs['clean'] / r.failed:.1f}%</td>" in table1
    assert any(r.pairs.get("unbounded") for r in rows)  # the two rates differ somewhere: a swap would fail
    for r in decided:
        assert f">≥{100 * r.pairs['clean'] / (r.failed - r.pairs.get('unbounded', 0)):.1f}%</td>" in table1
    status = _csv(index.parent / "tables" / "pair_status.csv")
    assert [s["benchmark"] for s in status] == ["ifeval", "math"]
    assert int(status[0]["no_target"]) == 6 and int(status[0]["not_paired"]) == 20 - 18
    assert int(status[1]["unverifiable"]) == 1 and int(status[1]["not_paired"]) == 12 - 11


def test_two_pair_runs_over_one_collection_run_count_its_failures_once(tmp_path):
    """A second pair run (here differing only in --try-unbounded) over the same failures adds no failures: the lead
    counts each collection run once and gives clean pairs per pair run; both tables say which settings each had."""
    from report_cases import status_row

    cases, rows, pairs = sample()
    again = status_row("ifeval", "collect-1", "pairs-1u", 20, {"clean": 7, "no_target": 6, "unbounded": 0})
    rows[0].pair_settings = {"top_k": 10, "min_delta": 1.0, "max_positions": 8}
    again.pair_settings = {**rows[0].pair_settings, "try_unbounded": True}
    index = build_report(cases, [rows[0], again, *rows[1:]], tmp_path / "r", pairs)
    text = html.unescape(index.read_text(encoding="utf-8"))
    lead = re.search(r'id="b-ifeval"><h2>ifeval</h2><p class="lead">([^<]*)</p>', text).group(1)
    assert lead.startswith("20 failures, clean pairs: 5 by pair run pairs-1 (k=10 Δ>1.0 pos≤8); "
                           "7 by pair run pairs-1u (k=10 Δ>1.0 pos≤8 try-unbounded), 5 cases analysed")
    math = re.search(r'id="b-math"><h2>math</h2><p class="lead">([^<]*)</p>', text).group(1)
    assert math.startswith("21 failures, 3 clean pairs, 3 cases analysed")  # two collection runs: 12 + 9
    t1 = {r["pair_run_id"]: r["pair_settings"] for r in _csv(index.parent / "tables" / "table1.csv")}
    assert t1["pairs-1u"].endswith(" try-unbounded") and not t1["pairs-1"].endswith(" try-unbounded")
    assert t1[""] == ""  # the collection run without pairs
    st = {r["pair_run_id"]: r["pair_settings"] for r in _csv(index.parent / "tables" / "pair_status.csv")}
    assert st["pairs-1u"] == t1["pairs-1u"] and "try-unbounded" in text


def test_categories_and_patterns_count_overrides(built):
    index, cases, _rows, _pairs, overrides = built
    want: dict[tuple[str, str], int] = {}
    for c in cases:
        cat = overrides[c.case_id]["category"] if c.case_id in overrides else (c.category or "unlabelled")
        want[(c.benchmark, cat)] = want.get((c.benchmark, cat), 0) + 1
    got = {(r["benchmark"], r["label"]): int(r["cases"]) for r in _csv(index.parent / "tables" / "categories.csv")}
    assert {k: n for k, n in got.items() if n} == want
    from failtrace.cases.record import CATEGORIES, PATTERNS

    # every category and pattern has its row, at 0 where no case has it (a missing one read as not looked for)
    for bench in {c.benchmark for c in cases}:
        assert all((bench, k) in got for k in CATEGORIES)
        pat_rows = {r["label"] for r in _csv(index.parent / "tables" / "patterns.csv") if r["benchmark"] == bench}
        assert set(PATTERNS) <= pat_rows
    assert 0 in got.values()  # the sample leaves some category empty: the zero row is there, not left out
    assert got[("ifeval", "NC-IA+AG")] == 2 and got[("ifeval", "M-IA")] == 2  # the override moved one case
    pats = {(r["benchmark"], r["label"]): float(r["share"]) for r in _csv(index.parent / "tables" / "patterns.csv")}
    assert pats[("ifeval", "URT")] == pytest.approx(2 / 5) and pats[("math", "unlabelled")] == pytest.approx(1 / 3)


def test_kstar_and_flip_rate_match_recomputation(built):
    index, cases, _rows, _pairs, _o = built
    kstar = _csv(index.parent / "tables" / "kstar.csv")
    flips = _csv(index.parent / "tables" / "flip_rate.csv")
    seen = mixed = 0
    for bench in ("ifeval", "math"):
        for m in METHODS:
            ks = [c.methods[m].flip_k for c in cases if c.benchmark == bench and m in c.methods]
            if not ks:
                continue
            hit = [k for k in ks if k is not None]
            row = next(r for r in kstar if r["benchmark"] == bench and r["method"] == m)
            assert int(row["cases"]) == len(ks) and int(row["flipped"]) == len(hit)
            assert _num(row["mean_k_star"]) == (pytest.approx(sum(hit) / len(hit)) if hit else None)
            assert _num(row["median_k_star"]) == (pytest.approx(statistics.median(hit)) if hit else None)
            for k in range(1, 11):
                f = next(r for r in flips if r["benchmark"] == bench and r["method"] == m and int(r["k"]) == k)
                assert float(f["flip_rate"]) == pytest.approx(sum(1 for x in hit if x <= k) / len(ks))
            # of the flipped cases with top tokens recorded, those whose top at k* is the contrast (by hand)
            recorded = [c for c in cases if c.benchmark == bench and m in c.methods
                        and c.methods[m].flip_k is not None and c.methods[m].flip_tops]
            on_top = sum(c.methods[m].flip_tops[c.methods[m].flip_k] == c.contrast_id for c in recorded)
            assert int(row["top_recorded"]) == len(recorded)
            assert _num(row["contrast_on_top"]) == (on_top if recorded else None)
            mixed += bool(recorded) and 0 < on_top < len(recorded)
            seen += 1
    assert seen == 12 and mixed >= 1  # some row counts both kinds: a constant answer would not pass
    lrp = next(r for r in kstar if r["benchmark"] == "ifeval" and r["method"] == "attnlrp")
    assert float(lrp["mean_k_star"]) == pytest.approx((1 + 2 + 3 + 1) / 4)
    # the lead sentence says it for AttnLRP, of the cases where it was recorded: 3 of the 4 flipped (one case was
    # "analysed before it was recorded"), 1 of them with the contrast on top
    assert (int(lrp["flipped"]), int(lrp["top_recorded"]), int(lrp["contrast_on_top"])) == (4, 3, 1)
    assert ("flips the prediction in 4 of 5 cases, with 1.8 tokens masked on average where it does (median 1.5; the "
            "paper is quoted as needing about 2 tokens, docs/ANALYSES.md). "
            "Of those 4, 3 have the model's top next token at k* recorded (the others were analysed before it was): "
            "it is the contrast in 1 of them." in html.unescape(index.read_text(encoding="utf-8")))
    # where another method flips more cases than AttnLRP the lead says so (it spoke of AttnLRP alone), and the
    # faithfulness legend counts the flips beside the mean k*
    text = html.unescape(index.read_text(encoding="utf-8"))
    for bench in ("ifeval", "math"):
        rows = [r for r in kstar if r["benchmark"] == bench]
        own = int(next(r for r in rows if r["method"] == "attnlrp")["flipped"])
        best = max(rows, key=lambda r: int(r["flipped"]))
        lead = re.search(rf'id="b-{bench}"><h2>{bench}</h2><p class="lead">([^<]*)</p>', text).group(1)
        said = f" {best['method']} flips more of them: {best['flipped']} of {best['cases']} within K = {best['K']}."
        assert (said in lead) == (int(best["flipped"]) > own), (bench, lead)


@pytest.mark.parametrize("on_top, recorded, flipped, said", [
    (None, 0, 2, ""),
    (0, 1, 1, " At k* the model's top next token is a third token, not the contrast."),
    (1, 1, 1, " At k* the model's top next token is the contrast."),
    (2, 2, 2, " At k* the model's top next token is the contrast in 2 of those 2."),
    (1, 3, 3, " At k* the model's top next token is the contrast in 1 of those 3; in the others, a third token."),
    (0, 1, 2, " Of those 2, 1 has the model's top next token at k* recorded (the others were analysed before it "
              "was): it is a third token, not the contrast."),
    (2, 3, 5, " Of those 5, 3 have the model's top next token at k* recorded (the others were analysed before it "
              "was): it is the contrast in 2 of them."),
])
def test_the_top_token_sentence_claims_only_the_recorded_cases(on_top, recorded, flipped, said) -> None:
    from failtrace.report.pages import _top_sentence

    assert _top_sentence(on_top, recorded, flipped) == said


def test_segment_relevance_matches_recomputation(built):
    index, cases, _rows, _pairs, overrides = built
    rows = _csv(index.parent / "tables" / "segments.csv")
    got = {(r["benchmark"], r["category"], r["segment"]): (int(r["cases"]), float(r["mean_normalised_relevance"]))
           for r in rows}
    size: dict[tuple[str, str], int] = {}
    for c in cases:  # the category's case count, whatever segments its cases have
        cat = overrides[c.case_id]["category"] if c.case_id in overrides else (c.category or "unlabelled")
        size[(c.benchmark, cat)] = size.get((c.benchmark, cat), 0) + 1
    assert all(int(r["category_cases"]) == size[(r["benchmark"], r["category"])] for r in rows)
    want: dict[tuple[str, str, str], list[float]] = {}
    for c in cases:
        r = np.array(c.methods["attnlrp"].input_relevance)
        sp = np.array(c.special_mask)
        scale = np.abs(r[~sp]).max()  # normalisation over non-special tokens only
        cat = overrides[c.case_id]["category"] if c.case_id in overrides else (c.category or "unlabelled")
        for seg, spans in c.segments.items():
            idx = [i for a, b in spans for i in range(a, b) if not sp[i]]
            if idx:
                want.setdefault((c.benchmark, cat, seg), []).append(float(r[idx].sum() / scale))
    assert set(got) == set(want)
    for key, vals in want.items():
        assert got[key][0] == len(vals) and got[key][1] == pytest.approx(np.mean(vals))
    assert not any(seg == "special" for _b, _c, seg in got)  # all-special segments are left out


def test_every_case_on_the_page_with_all_its_tokens(built):
    index, cases, _rows, pairs, overrides = built
    text = index.read_text(encoding="utf-8")
    p = _Cases()
    p.feed(text)
    assert set(p.tokens) == {c.case_id for c in cases}
    for c in cases:
        assert p.tokens[c.case_id] == list(range(len(c.tokens))), c.case_id
    rows = _csv(index.parent / "tables" / "cases.csv")
    assert [r["case_id"] for r in rows] == [c.case_id for c in cases]
    assert rows[1]["category"] == "NC-IA+AG" and rows[1]["category_auto"] == "M-IA"
    assert rows[0]["k_star_ig"] == "" and rows[1]["k_star_random"] == "9"
    # the override's reason is shown, escaped; pair reasons too
    assert "flip masks the answer &lt;i&gt;itself&lt;/i&gt;" in text
    assert "reason 1 &lt;b&gt;not bold&lt;/b&gt;" in text
    assert len(_csv(index.parent / "tables" / "non_clean_pairs.csv")) == 2


class _Masked(HTMLParser):
    """Per (case article, method): the ``data-p`` of each row of its "top tokens in masking order" table, the
    marked rows, the cells of each row, the caption under the table, and whether the method's block starts
    hidden."""

    def __init__(self) -> None:
        super().__init__()
        self.case: str | None = None
        self.key: tuple[str, str] | None = None
        self.rows: dict[tuple[str, str], list[int]] = {}
        self.marked: dict[tuple[str, str], int] = {}
        self.cells: dict[tuple[str, str], list[str]] = {}
        self.hidden: dict[tuple[str, str], bool] = {}
        self.captions: dict[tuple[str, str], str] = {}
        self._td: list[str] | None = None
        self._p: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "article" and "case" in classes:
            self.case = (a.get("id") or "")[len("case-"):]
        if tag == "div" and "masked-for" in classes and self.case:
            self.key = (self.case, a.get("data-method") or "")
            self.rows[self.key], self.marked[self.key], self.cells[self.key] = [], 0, []
            self.hidden[self.key] = "hidden" in a
        if self.key and tag == "tr" and a.get("data-p") is not None:
            self.rows[self.key].append(int(a["data-p"]))
            self.marked[self.key] += "flipset" in classes
        if self.key and tag == "td":
            self._td = []
        if self.key and tag == "p":
            self._p = []

    def handle_data(self, data: str) -> None:
        if self._td is not None:
            self._td.append(data)
        if self._p is not None:
            self._p.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._td is not None and self.key:
            self.cells[self.key].append("".join(self._td))
            self._td = None
        if tag == "p" and self.key:  # the caption closes a method's block
            self.captions[self.key] = "".join(self._p or [])
            self.key, self._p = None, None
        if tag == "article":
            self.case = None


def test_each_case_lists_its_top_tokens_in_masking_order(built):
    """Every drawable method's masking order, read by hand: positive relevance, never a special id nor
    (skip_template) the template's own text, largest first, ties by position, at most K; the first k* rows marked;
    row k's last cells are the stored Δℓ after masking k and the top next token then, under the caption the views
    share; only the first method's block is shown without script."""
    index, cases, *_ = built
    p = _Masked()
    p.feed(index.read_text(encoding="utf-8"))
    checked = with_top = 0
    for c in cases:
        drawable = [m for m in METHODS if m in c.methods and len(c.methods[m].input_relevance) == len(c.tokens)]
        assert [m for (cid, m) in p.rows if cid == c.case_id] == drawable
        for i, method in enumerate(drawable):
            r = c.methods[method]
            labels = c.segment_labels()
            ok = [not sp and r.input_relevance[j] > 0 and not (c.masking.skip_template and labels[j] == "special")
                  for j, sp in enumerate(c.special_mask)]
            expected = sorted((j for j in range(len(c.tokens)) if ok[j]),
                              key=lambda j: (-r.input_relevance[j], j))[:c.masking.max_k]
            key = (c.case_id, method)
            assert p.rows[key] == expected, key
            assert p.marked[key] == (r.flip_k or 0) and p.hidden[key] == (i > 0)
            deltas, tops = p.cells[key][5::7], p.cells[key][6::7]
            assert [float(x) for x in deltas] == pytest.approx(
                [r.flip_curve[k] for k in range(1, len(expected) + 1)], abs=1e-3)
            want = [clipped_text(shown(t)) for t in r.flip_top_texts[1:len(expected) + 1]] or ["—"] * len(expected)
            assert tops == want, key
            caption = p.captions[key]
            if r.flip_k is not None and r.flip_top_texts and expected:
                third = r.flip_tops[r.flip_k] != c.contrast_id
                assert caption.endswith(f"(k* = {r.flip_k}, marked); the model's top next token is then "
                                        f"‹{shown(r.flip_top_texts[r.flip_k])}›, "
                                        f"{'a third token, not the contrast' if third else 'the contrast'}."), caption
                with_top += 1
            else:
                assert "top next token" not in caption
            checked += bool(expected)
    assert checked >= 3 and with_top >= 2


def test_page_is_self_contained(built):
    index, *_ = built
    text = index.read_text(encoding="utf-8")
    # no remote resource of any kind: no attribute or CSS url() pointing at http(s) or a protocol-relative address,
    # no stylesheet link, import, frame, or script source; a URL inside the prompt is only text
    assert not re.search(r"""(?:src|href|srcset|poster|action|data)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", text, re.I)
    assert not re.search(r"<link\b|@import|<iframe\b|<script[^>]*\bsrc=", text, re.I)
    assert "·https://en.wikipedia.org/wiki/Sea)." in re.sub(r"<[^>]+>", "", text)  # shown as a token, not a link
    p = _Cases()
    p.feed(text)
    assert p.imgs and all(s.startswith("data:image/png;base64,") for s in p.imgs)
    figs = sorted(f.name for f in (index.parent / "figures").glob("*.png"))
    assert figs == ["categories.png", "faithfulness_00-ifeval.png", "faithfulness_01-math.png",
                    "segments_00-ifeval.png", "segments_01-math.png"]


def test_stored_graph_is_drawn_and_budget_falls_back_to_files(tmp_path):
    from failtrace.graph.build import graph_from_ids
    from failtrace_testkit.tiny import tiny_model

    case = make_case(0, "ifeval", "M-IA", "URT", {"attnlrp": 1})
    n = len(case.token_ids)
    model = tiny_model("llama", layers=2)
    ids = [3 + (7 * i) % 120 for i in range(n)]
    g = graph_from_ids(model, ids, lambda logits: logits[5] - logits[7],
                       tokens=case.tokens, special_mask=case.special_mask)
    pruned = g.pruned
    record = {"stages": [s.name for s in g.stages], "nodes": [[s, t, float(g.relevance[s, t])]
                                                               for s, t in pruned.node_list()],
              "edges": [list(e) for e in pruned.edges()], "settings": {}, "objective_value": g.objective_value}
    case.graph = record  # what load_cases(..., with_graph=True) attaches
    other = make_case(1, "ifeval", "M-IA", "URT", {"attnlrp": 2})
    index = build_report([case, other], [], tmp_path, graphs={other.case_id: pruned}, inline_budget_mb=0)
    pngs = sorted(p.name for p in (tmp_path / "figures" / "graphs").glob("*.png"))
    assert pngs == sorted([f"{case.case_id}.png", f"{other.case_id}.png"])
    text = index.read_text(encoding="utf-8")
    for c in (case, other):  # over the inline budget: referenced beside the page, relative
        assert f'src="figures/graphs/{c.case_id}.png"' in text
    index = build_report([case], [], tmp_path)  # a rebuild drops pictures of cases no longer in the report
    assert [p.name for p in (tmp_path / "figures" / "graphs").glob("*.png")] == [f"{case.case_id}.png"]
    assert "data:image/png;base64," in index.read_text(encoding="utf-8")


def test_dollar_signs_in_tokens_and_names_are_drawn_literally(tmp_path, monkeypatch):
    """Token text and item ids are user data: a ``$x^$`` pair in a figure's title used to reach matplotlib's
    mathtext and crash the whole report with a ParseSyntaxException."""
    from failtrace.report.graphfig import graph_record_figure

    case = make_case(0, "ifeval", "M-IA", "URT", {"attnlrp": 1})
    case.item_id, case.target_text, case.contrast_text = "ifeval/$x^$", "$x^", "$\\frac"
    n = len(case.tokens)
    case.tokens = ["$x^$" if i % 2 else tok for i, tok in enumerate(case.tokens)]
    case.graph = {"stages": ["emb", "L0", "out"], "nodes": [[0, 1, 1.0], [2, n - 1, 0.5]],
                  "edges": [[0, 1, 2, n - 1, 0.3]], "settings": {}, "objective_value": case.delta_logit}
    index = build_report([case], [], tmp_path, inline_budget_mb=0)
    png = tmp_path / "figures" / "graphs" / f"{case.case_id}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f'src="figures/graphs/{case.case_id}.png"' in index.read_text(encoding="utf-8")

    # the text is drawn as written, not as mathtext: the figure keeps every literal dollar
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    import failtrace.report.figures as F

    seen: list[str] = []
    real = F._save

    def spy(fig: Figure, path: Path) -> Path:
        out = real(fig, path)
        seen.extend(t.get_text() for t in fig.findobj(Text) if "$" in t.get_text() and not t.get_parse_math())
        return out

    monkeypatch.setattr(F, "_save", spy)  # graphfig imports _save at call time
    graph_record_figure(case.graph, case.tokens, case.special_mask, tmp_path / "g.png", title="cost $5 or $6")
    assert any("cost $5 or $6" in t for t in seen) and any("$x^$" in t for t in seen)
    assert any(t.endswith("cost $5 or $6  ·  2 nodes, 1 edge") for t in seen)  # one edge, not "1 edges"


def test_out_is_a_file(tmp_path):
    from failtrace.errors import FailtraceError

    f = tmp_path / "x"
    f.write_text("keep")
    with pytest.raises(FailtraceError, match="is a file"):
        build_report([], [], f)
    assert f.read_text() == "keep"


def test_cli_report_on_a_store(tmp_path):
    from failtrace.benchmarks.base import Item
    from failtrace.cli import main
    from failtrace.store.store import RunRecord, open_store

    store = tmp_path / "runs.duckdb"
    with open_store(store) as st:
        st.ensure_run(RunRecord(run_id="collect-x", stage="collect", benchmark="math", model="m"))
        st.add_items("collect-x", "math", [Item(id="a", benchmark="math", prompt="1+1?", reference={"answer": "2"})])
    out = tmp_path / "rep"
    assert main(["report", "--store", str(store), "--out", str(out)]) == 0
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "No cases in this store yet" in text
    from failtrace.report.tables import CASE_COLUMNS

    with (out / "tables" / "cases.csv").open(encoding="utf-8") as fh:  # no case: still a table with its header
        assert next(csv.reader(fh)) == list(CASE_COLUMNS) and fh.read() == ""
    t1 = _csv(out / "tables" / "table1.csv")
    assert [(r["benchmark"], r["items"], r["failures"]) for r in t1] == [("math", "1", "0")]
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r2"), "--benchmark", "ifeval"]) == 2
    assert not (tmp_path / "r2").exists()


def test_cli_report_errors(tmp_path, capsys):
    from failtrace.cli import main

    assert main(["report", "--store", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none.duckdb").exists() and not (tmp_path / "r").exists()


def test_not_computed_relevance_and_short_arrays_do_not_break_the_page(tmp_path):
    import json

    a = make_case(0, "math", "M-IA", "URT", {"attnlrp": 1, "ig": 2})
    a.methods["attnlrp"].input_relevance[5] = float("nan")  # not computed
    a.methods["ig"].input_relevance = a.methods["ig"].input_relevance[:-3]  # wrong length: cannot colour the strip
    text = build_report([a], [], tmp_path).read_text(encoding="utf-8")

    def strict(c: str) -> float:
        raise AssertionError(f"non-JSON constant {c} in the embedded data")

    blobs = re.findall(r'<script type="application/json" class="case-data">(.*?)</script>', text, re.S)
    assert len(blobs) == 1
    data = json.loads(blobs[0], parse_constant=strict)
    assert list(data["norm"]) == ["attnlrp"] and data["norm"]["attnlrp"][5] is None
    assert 'data-method="ig"' not in text  # no button for a method that cannot be drawn
    p = _Cases()
    p.feed(text)
    assert p.tokens[a.case_id] == list(range(len(a.tokens)))


def test_evidence_is_rendered_readably():
    from failtrace.views.evidence_html import MAX_ROWS, dl

    ev = {"k_star": 4, "flipped": True, "score": 0.123456789,
          "path": {"nodes": ["emb/1", "L0/2", "L1/37"], "tokens": [" a", "\n"]},
          "top": [{"position": i, "relevance": 1.0 / (i + 1)} for i in range(MAX_ROWS + 3)], "note": "<b>x</b>"}
    out = dl(ev)
    assert ">score</dt><dd>0.1235</dd>" in out and "<dd>true</dd>" in out
    # a known field shows its meaning on hover; an unknown one is a plain name
    assert '<dt title="path score: the share of the final node' in out and "<dt>note</dt>" in out
    assert "emb/1 → L0/2 → L1/37" in out and "‹·a›, ‹↵›" in out
    assert out.count("<tr>") == 1 + MAX_ROWS + 1 and "… 3 more" in out  # header, MAX_ROWS rows, the "more" row
    assert "&lt;b&gt;x&lt;/b&gt;" in out and "<b>x</b>" not in out
    assert "none stored" in dl({})
    # a path's tokens repeat once per layer: runs fold, order and the single ones stay
    folded = dl({"tokens": [" cat"] * 17 + ["\n"] * 13 + [" cat"]})
    assert "<dd>‹·cat› ×17, ‹↵› ×13, ‹·cat›</dd>" in folded
    path = dl({"nodes": ["emb/26"] + [f"L{i}/26" for i in range(16)] + [f"L{i}/42" for i in range(16, 30)] + ["L29/7"]})
    assert "<dd>emb–L15/26 → L16–L29/42 → L29/7</dd>" in path
    assert "<dd>10–19</dd>" in dl({"layers": list(range(10, 20))}) and "<dd>3, 5, 6</dd>" in dl({"layers": [3, 5, 6]})
    empty = dl({"ablated_nodes": [], "other": []})  # an empty list says what "none" means where it could mislead
    assert ">ablated_nodes</dt><dd><span class=\"dim\">none: no ablation of the top nodes within the budget " \
           "flipped the prediction</span></dd>" in empty
    assert "<dt>other</dt><dd><span class=\"dim\">none</span></dd>" in empty
    # a count left empty because nothing flipped reads "none", as the case's header says (it read "—", "not computed")
    unflipped = dl({"k_star": None, "ablation_k": None, "other": None})
    assert "<dd>none (no flip within max-k)</dd>" in unflipped and "<dd>none (no flip within the budget)</dd>" in \
        unflipped and "<dt>other</dt><dd>—</dd>" in unflipped
    # "relevance" is normalised in top_supporters and a hidden state's own in an ablation's nodes: each column says
    # which (the same token read 0.2387 in the masking table and 0.6666 here, unlabelled)
    two = dl({"top_supporters": [{"position": 26, "relevance": 0.6666}],
              "ablation": {"nodes": [{"layer": 17, "position": 52, "relevance": 3.59}]},
              "other": [{"relevance": 1.0}]})
    assert '<th title="the token&#x27;s relevance divided by the largest |R|' in two and ">R / max|R|</th>" in two
    assert '">R (hidden state)</th>' in two and "<th>relevance</th>" in two  # an unknown table keeps its name
    flipping = dl({"ablated_nodes": [{"layer": 17, "position": 52, "relevance": 3.59}]})  # categories.py's key
    assert '">R (hidden state)</th>' in flipping


def test_an_empty_benchmark_says_which_stage_comes_next(tmp_path):
    """No cases can mean three things; the hint names the stage that would change it (analyse explains only clean
    pairs, so after a pair run with none it would do nothing)."""
    from report_cases import status_row

    def hint(rows: list) -> str:
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        text = html.unescape(build_report([], rows, out).read_text(encoding="utf-8"))
        return re.search(r'id="b-math">.*?<p class="empty">(.*?)</p>', text, re.S).group(1)

    assert "no pair search has run; run failtrace pairs" in re.sub(r"</?code>", "", hint(
        [status_row("math", "c", None, 4, {})]))
    none_clean = hint([status_row("math", "c", "p", 4, {"clean": 0, "no_target": 4})])
    assert "found no clean pair" in none_clean and "--sibling" in none_clean and "analyse" not in none_clean
    assert "unbounded" not in none_clean  # --try-unbounded never adds a clean pair: not suggested
    cut = hint([status_row("math", "c", "p", 4, {"clean": 0, "no_target": 1, "unbounded": 3})])
    assert "3 are unbounded (cut at the token budget or the model's context window, never decided)" in cut
    assert "--rollout-tokens N" in cut
    assert "run <code>failtrace analyse</code>" in hint([status_row("math", "c", "p", 4, {"clean": 2})])
    assert hint([status_row("math", "c", "p", 0, {})]).startswith("No cases: the model failed no item")
    assert hint([status_row("math", "c", None, 0, {})]).startswith("No cases: the model failed no item")


def test_one_of_a_kind_is_singular(tmp_path):
    """``1 failure, 1 clean pair, 1 case analysed`` (it read ``1 cases``), in the lead and the page's subtitle."""
    from report_cases import status_row

    case = make_case(0, "ifeval", "M-IA", "URT", {"attnlrp": 1})
    row = status_row("ifeval", "collect-1", "pairs-1", 1, {"clean": 1})
    text = html.unescape(build_report([case], [row], tmp_path / "r").read_text(encoding="utf-8"))
    lead = re.search(r'id="b-ifeval"><h2>ifeval</h2><p class="lead">([^<]*)</p>', text).group(1)
    assert lead.startswith("1 failure, 1 clean pair, 1 case analysed.") and "of 1 case, " in lead
    assert re.search(r"· ifeval · 1 case · generated", text)
    from failtrace.report.tables import CASE_COLUMNS

    with (tmp_path / "r" / "tables" / "cases.csv").open(encoding="utf-8") as fh:  # the same columns as with none
        assert next(csv.reader(fh)) == [*CASE_COLUMNS, "k_star_attnlrp"]


def test_a_segment_has_one_colour_in_every_case():
    """"query" is drawn in the same colour whatever the order of a case's segments (it used to follow that order, so
    one name changed colour from case to case), in the legend and in each token's underline; names differ in colour."""
    import copy

    from failtrace.report.casepage import case_section

    case = next(c for c in sample()[0] if len(c.segments) > 2)
    flipped = copy.deepcopy(case)
    flipped.segments = dict(reversed(list(case.segments.items())))

    def colours(c) -> dict[str, set[str]]:
        html_ = case_section(c)
        seen: dict[str, set[str]] = {}
        for colour, name in re.findall(r'class="sw" style="background:(#[0-9a-f]{6})"></span>([a-z_]+)', html_):
            seen.setdefault(name, set()).add(colour)
        labels = c.segment_labels()
        for p, colour in re.findall(r'data-p="(\d+)"[^>]*border-bottom-color:(#[0-9a-f]{6})', html_):
            seen.setdefault(labels[int(p)], set()).add(colour)
        return seen

    a, b = colours(case), colours(flipped)
    assert a == b and len(a) > 2 and all(len(v) == 1 for v in a.values())
    assert len({next(iter(v)) for v in a.values()}) == len(a)


def test_cases_table_tells_no_flip_from_not_computed(built):
    """A k* cell is the number, "none" when the method's masking curve ran without flipping within K, and "—" when
    the method has no curve for that case (the two used to read alike, as "—")."""
    index, cases, *_ = built
    text = index.read_text(encoding="utf-8")
    methods = [m for m in METHODS if any(m in c.methods for c in cases)]
    seen = {"none": 0, "—": 0}
    for c in cases:
        row = re.search(rf'<tr data-bench="[^"]+"><td><a href="#case-{c.case_id}">.*?</tr>', text).group(0)
        cells = re.findall(r'<td class="n">([^<]*)</td>', row)[2:]  # after Δℓ and context tokens
        r = {m: c.methods.get(m) for m in methods}
        want = [str(r[m].flip_k) if r[m] is not None and r[m].flip_k is not None
                else "none" if r[m] is not None and r[m].flip_curve else "—" for m in methods]
        assert cells == want, c.case_id
        for w in want:
            seen[w] = seen.get(w, 0) + 1
    assert seen["none"] and seen["—"]


def test_k_star_label_is_one_rule_for_every_view():
    """k* reads the same in show, the report and the explorer: a curve that ran is "none" without a flip, even a
    one-point curve (nothing maskable: flip_search returns [Δℓ]); a method or curve that is missing is "—"."""
    from failtrace.cases.record import CaseMethod
    from failtrace.views.common import k_star_label

    def r(curve: list[float], k: int | None) -> CaseMethod:
        return CaseMethod(method="attnlrp", input_relevance=[0.0], flip_curve=curve, flip_k=k)

    assert [k_star_label(x) for x in (r([2.0, -1.0], 1), r([2.0, 1.5], None), r([2.0], None), r([], None), None)] \
        == ["1", "none", "none", "—", "—"]


def test_every_part_of_the_category_bars_carries_its_count(tmp_path, monkeypatch):
    """Before: a category with under 6 % of the cases (7 of 353) was a sliver with no count, readable only from the
    legend colour and the tables. Now each part's count is drawn, inside it or, for a sliver, just beside the bar,
    neighbouring slivers on opposite sides."""
    from matplotlib.text import Text

    import failtrace.report.figures as F

    cats = [("M-IA", 7), ("NC-IA+M-AG", 3), ("NC-IA+AG", 343)]
    rows = [{"benchmark": "ifeval", "label": lab, "cases": n, "share": n / 353} for lab, n in cats]
    pats = [{"benchmark": "ifeval", "label": "URT", "cases": 353, "share": 1.0}]
    seen: dict[str, list[Text]] = {}

    def spy(fig, path):
        left = fig.axes[0]
        seen["cat"] = [t for t in left.texts]
        return path

    monkeypatch.setattr(F, "_save", spy)
    F.categories_figure(rows, pats, tmp_path / "c.png")
    by_text = {t.get_text(): t for t in seen["cat"]}
    assert set(by_text) == {"7", "3", "343"}
    (_, y7), (_, y3), (_, y343) = (by_text[k].get_position() for k in ("7", "3", "343"))
    assert y343 == 0  # wide enough: inside the bar
    assert {y7, y3} == {-0.31, 0.31}  # slivers: outside, one above and one below, so they cannot overlap
    x7, x3 = by_text["7"].get_position()[0], by_text["3"].get_position()[0]
    assert x7 == pytest.approx(3.5 / 353) and x3 == pytest.approx((7 + 1.5) / 353)  # over their own part


def test_drawing_the_graph_pictures_shows_progress(tmp_path, capsys):
    """The graph pictures are most of a large report's time (353 cases: 70 of 97 s), which passed without a word.
    Now a bar counts them (off a terminal, a line per picture), and only when asked."""
    case = make_case(0, "ifeval", "M-IA", "URT", {"attnlrp": 1})
    other = make_case(1, "ifeval", "M-IA", "URT", {"attnlrp": 2})
    n = len(case.tokens)
    for c in (case, other):
        c.graph = {"stages": ["emb", "L0", "out"], "nodes": [[0, 1, 1.0], [2, n - 1, 0.5]],
                   "edges": [[0, 1, 2, n - 1, 0.3]], "settings": {}, "objective_value": c.delta_logit}
    plain = make_case(2, "ifeval", "M-IA", "URT", {"attnlrp": 1})  # no graph: not counted
    build_report([case, other, plain], [], tmp_path / "quiet")
    assert "graph pictures" not in capsys.readouterr().err
    build_report([case, other, plain], [], tmp_path / "loud", progress=True)
    err = capsys.readouterr().err
    assert [ln.split(",")[0] for ln in err.splitlines()] == ["report: graph pictures: 1/2",
                                                             "report: graph pictures: 2/2"], err


def test_counts_of_many_neighbouring_slivers_do_not_overlap(tmp_path, monkeypatch):
    """Slivers alternate above and below the bar, so the counts of the first and third of three neighbouring slivers
    (two digits each) overlapped on the same side. Drawn and measured: no two counts' boxes overlap, and each count
    starts over or after its own part."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    import failtrace.report.figures as F

    cats = [("M-IA", 11), ("NC-IA+M-AG", 12), ("NC-IA+AG", 13), ("other-a", 14), ("other-b", 15), ("other-c", 900)]
    total = sum(n for _, n in cats)
    rows = [{"benchmark": "ifeval", "label": lab, "cases": n, "share": n / total} for lab, n in cats]
    pats = [{"benchmark": "ifeval", "label": "URT", "cases": total, "share": 1.0}]
    seen = {}

    def spy(fig, path):
        seen["fig"] = fig
        return path

    monkeypatch.setattr(F, "_save", spy)
    F.categories_figure(rows, pats, tmp_path / "c.png")
    fig = seen["fig"]
    renderer = FigureCanvasAgg(fig).get_renderer()
    texts = [t for t in fig.axes[0].texts if t.get_text() != "900"]
    assert sorted(t.get_text() for t in texts) == ["11", "12", "13", "14", "15"]
    boxes = [t.get_window_extent(renderer) for t in texts]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
    left = 0.0
    for (lab, n) in cats[:-1]:  # each count sits over its part or after it, never before it
        x = next(t for t in texts if t.get_text() == str(n)).get_position()[0]
        assert x >= left + n / total / 2 - 1e-9
        left += n / total


def test_report_tokens_show_control_characters_as_the_other_views_do() -> None:
    """A token of a control character had no glyph in the report (an empty-looking cell); it now prints as
    failtrace show and the explorer print it, and markup in a token stays text."""
    from failtrace.report.casepage import shown_token
    from failtrace.views.common import shown

    from failtrace.views.evidence_html import scalar

    for tok in ("\x05", " \x1b[31m<b>x</b>\x07", "a\x7f\x85", "\t\r\n"):
        text = html.unescape(re.sub(r"<span class=\"ws\">(.*?)</span>", r"\1", shown_token(tok)))
        assert "<span" not in text and text == shown(tok) == plain_token(tok)
        assert html.unescape(scalar(tok, "token")) == f"‹{shown(tok)}›"  # the evidence tables' token lists too


def test_report_clips_tokens_as_shown_like_the_other_views() -> None:
    """A token is cut to its first CLIP characters *as shown* (a C1 code prints as four, \\x85), as failtrace show
    and the explorer cut it; the report used to cut the raw token first, and so printed more than they do."""
    from failtrace.report.casepage import shown_clipped
    from failtrace.views.common import CLIP

    for tok in ("\x85" * 30, "a b\x9b" * 20, "\ud800" + "x" * 60, "short \x85", " " * 50):
        for keep_end in (False, True):
            text = html.unescape(re.sub(r"<span class=\"ws\">(.*?)</span>", r"\1", shown_clipped(tok, keep_end)))
            assert text == clipped_text(shown(tok), keep_end=keep_end), (tok, keep_end)
            assert len(text) <= CLIP
    assert shown_clipped(" x") == '<span class="ws">·</span>x'  # whitespace stays faint after the cut
    for toks in (["a", "", "\x85" * 12], ["\x9b"] * 15, []):  # a context: its tokens in a row, an empty one as ∅
        text = html.unescape(re.sub(r"<span class=\"ws\">(.*?)</span>", r"\1", shown_clipped(toks, True)))
        assert text == clipped_text("".join(map(shown, toks)), keep_end=True), toks


def test_a_segment_bar_over_fewer_cases_says_its_own_n(tmp_path, monkeypatch):
    """The legend's n is the category's case count, yet a segment's bar averages only the cases that have the segment
    (a real M-IA 'answer' bar came from 1 of 3 cases): such a bar now carries its own n; a full bar carries none."""
    import failtrace.report.figures as F

    rows = [{"benchmark": "ifeval", "method": "attnlrp", "category": "M-IA", "segment": s, "cases": n,
             "category_cases": 4, "mean_normalised_relevance": v}
            for s, n, v in (("query", 3, 0.2), ("answer", 1, 0.5), ("instruction", 2, -0.3))]
    seen = {}
    monkeypatch.setattr(F, "_save", lambda fig, path: seen.setdefault("fig", fig) and path)
    F.segments_figure(rows, "ifeval", tmp_path / "s.png")
    ax = seen["fig"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["M-IA (n=4)"]  # the category, not a bar's
    labels = sorted((t.get_text(), round(t.get_position()[1], 3)) for t in ax.texts)
    assert labels == [("n=1", 0.5), ("n=2", -0.3), ("n=3", 0.2)]


def test_the_lead_names_a_method_that_flips_more_than_attnlrp() -> None:
    """The lead spoke of AttnLRP alone: "1 of 5 cases" beside a CP-LRP that flipped 3 of 5 went unsaid."""
    from failtrace.report.pages import benchmark_section

    def row(method: str, flipped: int) -> dict[str, Any]:
        return {"benchmark": "b", "method": method, "cases": 5, "flipped": flipped, "K": 10,
                "mean_k_star": 1.0 if flipped else None, "median_k_star": 1.0 if flipped else None,
                "contrast_on_top": None, "top_recorded": 0}

    def lead(rows: list[dict[str, Any]]) -> str:
        page = benchmark_section("b", [], {"table1": [], "kstar": rows, "pair_status": []}, {})
        return html.unescape(re.search(r'<p class="lead">([^<]*)</p>', page).group(1))

    assert lead([row("attnlrp", 1), row("cp-lrp", 3), row("ig", 2)]).endswith(
        "flips the prediction in 1 of 5 cases, with 1.0 tokens masked on average where it does (median 1.0; the "
        "paper is quoted as needing about 2 tokens, docs/ANALYSES.md). "
        "cp-lrp flips more of them: 3 of 5 within K = 10.")
    assert "flips more" not in lead([row("attnlrp", 3), row("cp-lrp", 3)])  # a tie is not more


def test_an_interrupted_report_leaves_the_earlier_one_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drawn in place, a Ctrl-C left an index of the earlier report over the new one's CSVs, with graph pictures
    deleted and not yet redrawn. Now the report is drawn in a staging folder and moved in whole; the earlier
    report's own files that the new one does not draw go, anything else in the folder stays, and a temporary index
    a killed report of an older version left behind is removed."""
    import hashlib

    from failtrace.report import build as build_mod

    def files(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    cases, rows, pairs = sample()
    out = tmp_path / "r"
    build_report(cases, rows, out, pairs, title="first")
    before = files(out)
    assert "index.html" in before and any(k.startswith("tables/") for k in before)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod, "_graph_images", interrupted)  # after the tables are written, before the index
    with pytest.raises(KeyboardInterrupt):
        build_report(cases[:1], rows, out, pairs, title="second")
    monkeypatch.undo()
    assert files(out) == before  # the earlier report, byte for byte; no staging folder left
    assert not list(out.glob(".report-*")) and "first" in (out / "index.html").read_text()

    (out / "figures" / "graphs").mkdir(exist_ok=True)  # a picture of a case the next report does not have
    (out / "figures" / "graphs" / "gone-case.png").write_bytes(b"an earlier report's picture")
    (out / "notes.txt").write_text("mine")
    (out / "figures" / "mine.txt").write_text("mine too")
    (out / "figures" / "my_plot.png").write_bytes(b"a figure of my own")  # named like the report's, not drawn by it
    (out / "tables" / "my_results.csv").write_text("mine,too\n")
    (out / "figures" / "fig4_scatter.png").write_bytes(b"an earlier report's across-models figure")
    (out / ".index-abc123.html").write_text("a killed older report's temporary index")
    build_report(cases[:1], rows, out, pairs, title="second")
    after = files(out)
    assert "second" in (out / "index.html").read_text() and "figures/graphs/gone-case.png" not in after
    assert (out / "notes.txt").read_text() == "mine" and (out / "figures" / "mine.txt").read_text() == "mine too"
    assert (out / "figures" / "my_plot.png").read_bytes() == b"a figure of my own"  # a user's files stay
    assert (out / "tables" / "my_results.csv").read_text() == "mine,too\n"
    assert not (out / "figures" / "fig4_scatter.png").exists()  # a report without comparisons draws none
    assert not list(out.glob(".index-*")) and not list(out.glob(".report-*"))


def test_the_non_clean_list_says_statuses_in_words(tmp_path: Path) -> None:
    """The list of non-clean pairs said no_target / weak_preference while the table above it said "no target"."""
    from failtrace.store.schema import PAIR_STATUS_TEXT

    cases, rows, pairs = sample()
    index = build_report(cases, rows, tmp_path / "r", pairs)
    text = index.read_text(encoding="utf-8")
    listed = text[text.index("Non-clean pairs"):]
    listed = listed[:listed.index("</details>")]
    statuses = {p["status"] for p in pairs if p.get("status") != "clean"}
    assert statuses
    for status in statuses:
        assert f"<td>{html.escape(PAIR_STATUS_TEXT[status][0])}</td>" in listed, status
        if "_" in status:
            assert f">{status}<" not in listed
    assert "(Δℓ < 0)" not in text  # a bare '<' in the page's HTML


def test_a_case_leads_with_the_sentence_and_folds_its_evidence(tmp_path: Path) -> None:
    """The category and pattern evidence (keys such as urt_decidable, theta_share) read as the explanation itself;
    the sentence now leads and the fields are folded under it."""
    cases, rows, pairs = sample()
    text = build_report(cases, rows, tmp_path / "r", pairs).read_text(encoding="utf-8")
    for kind in ("Category", "Pattern"):
        heads = [m.group(0) for m in re.finditer(rf'<div class="ev"><h4>{kind} .*?<details><summary>the evidence, '
                                                 r"field by field</summary>", text, re.S)]
        assert len(heads) == len(cases), kind  # every case folds it
        assert all("<dt" not in h for h in heads), kind  # no field before the fold
        # the sentence, where the evidence gives one (the sample's category evidence does), above the fold
        assert kind == "Pattern" or sum('<p class="why">' in h for h in heads) >= 1, kind


def test_a_report_folder_linked_to_another_file_system_is_written(tmp_path: Path) -> None:
    """figures/ linked into another file system (tmpfs): a rename cannot cross it (EXDEV), and the report failed
    even the first time; files are copied across instead."""
    import shutil
    import tempfile

    assert Path("/dev/shm").is_dir()  # the tmpfs every Linux machine this project supports has
    cases, rows, pairs = sample()
    out = tmp_path / "r"
    out.mkdir()
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        (out / "figures").symlink_to(elsewhere, target_is_directory=True)
        assert os.stat(elsewhere).st_dev != os.stat(tmp_path).st_dev
        for title in ("first", "second"):
            index = build_report(cases, rows, out, pairs, title=title)
            assert title in index.read_text() and any(elsewhere.glob("*.png"))
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_the_lead_says_when_the_newest_analysis_covers_fewer_clean_pairs() -> None:
    """A partial analysis (Ctrl-C, --limit) hid a whole older one from the report with nothing said; status said so,
    the report only counted the cases."""
    from failtrace.report.pages import benchmark_section

    def lead(cases: int) -> str:
        t1 = [{"run_id": "c1", "pair_run_id": "p123456789012", "failures": 9, "clean_pairs": 5, "cases": cases,
               "pair_settings": "k=10", "benchmark": "b"}]
        page = benchmark_section("b", [], {"table1": t1, "kstar": [], "pair_status": []}, {})
        return html.unescape(re.search(r'<p class="lead">([^<]*)</p>', page).group(1))

    assert ("The newest analysis of pair run p123456789 covers 1 of its 5 clean pairs (it stopped early, ran with "
            "--limit, or some could not be analysed; failtrace status says which") in lead(1)
    assert "The newest analysis" not in lead(5) and "The newest analysis" not in lead(0)


def test_a_stored_graph_is_drawn_as_its_live_graph_is(tmp_path, monkeypatch):
    """The report draws a stored graph record and a live graph with one convention: node size by |R| over its
    stage's largest non-special |R|, the same colours, the same edges. The record's picture sized nodes by the
    largest |R| of the whole graph, so the same case had other node sizes in the report than in ``failtrace graph``
    (and the explorer, which divides per stage)."""
    import torch
    from matplotlib.collections import LineCollection, PathCollection

    import failtrace.report.figures as F
    from report_cases import tiny_graph

    from failtrace.cases.build import graph_record
    from failtrace.graph.prune import normalised_relevance
    from failtrace.report.graphfig import graph_record_figure
    from failtrace.views.graph_static import graph_figure

    case = make_case(2, "ifeval", "M-IA", "URT", {"attnlrp": 1})
    g = tiny_graph(case)[-1]
    pruned, record = g.pruned, graph_record(g, g.pruned)
    # the picture of the record can match only where each stage's largest non-special |R| was kept: it is here
    norm = np.nan_to_num(normalised_relevance(g), nan=0.0)
    assert all(norm[s, t] == pytest.approx(1.0) for s in {s for s, _t in pruned.node_list()}
               for t in [max((t for s2, t in pruned.node_list() if s2 == s and not case.special_mask[t]),
                             key=lambda t: abs(g.relevance[s, t]), default=None)] if t is not None)

    def drawn(fig):  # every node (x, stage) -> (area, colour), every edge segment -> (width, colour)
        nodes, edges = {}, {}
        for coll in fig.axes[0].collections:
            if isinstance(coll, PathCollection):
                for (x, y), a, c in zip(coll.get_offsets(), coll.get_sizes(), coll.get_facecolors()):
                    nodes[int(x), int(y)] = (round(float(a), 6), tuple(np.round(c, 6)))
            elif isinstance(coll, LineCollection):
                for seg, w, c in zip(coll.get_segments(), coll.get_linewidths(), coll.get_colors()):
                    edges[tuple(map(tuple, np.round(seg, 6)))] = (round(float(w), 6), tuple(np.round(c, 6)))
        return nodes, edges

    seen = []
    real = F._save
    monkeypatch.setattr(F, "_save", lambda fig, path: (seen.append(fig), real(fig, path))[1])
    graph_record_figure(record, case.tokens, case.special_mask, tmp_path / "g.png")
    live = drawn(graph_figure(pruned))
    stored = drawn(seen[0])
    assert len(live[0]) == pruned.num_nodes > 3 and live[0] == stored[0]
    assert live[1] and live[1] == stored[1]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_a_report_whose_moves_fail_midway_puts_every_file_back_or_keeps_them_and_says_where(tmp_path: Path,
                                                                                            monkeypatch) -> None:
    """The staged report moves into place file by file. A move that fails midway (a full disk) puts every earlier
    file back, so the earlier report stays whole; where a file cannot go back either, the earlier files are kept
    under ``.report-kept-*`` (which no later report sweeps away) and the error says where."""
    import errno

    import failtrace.report.publish as publish
    from failtrace.errors import FailtraceError

    cases, rows, pairs = sample()
    out = tmp_path / "r"
    build_report(cases, rows, out, pairs, title="the first report")
    before = _files(out)
    real = publish.move_file
    calls = {"n": 0}

    def full_disk(src: Path, dst: Path) -> None:  # the 4th move into the report folder fails
        if out in dst.parents and publish.STAGE_KIND not in str(dst):
            calls["n"] += 1
            if calls["n"] == 4:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(publish, "move_file", full_disk)
    with pytest.raises(FailtraceError, match="cannot write the report into .*: No space left on device$"):
        build_report(cases[:1], rows, out, pairs, title="the second report")
    assert calls["n"] >= 4 and _files(out) == before  # nothing of the second report, nothing of the first lost

    undone = {"n": 0}

    def and_no_way_back(src: Path, dst: Path) -> None:  # as above, and the first move back fails too
        if publish.STAGE_KIND in str(src) and "/old/" in str(src) and out in dst.parents:
            undone["n"] += 1
            if undone["n"] == 1:
                raise OSError(errno.EIO, "Input/output error")
        full_disk(src, dst)

    calls["n"] = 0
    monkeypatch.setattr(publish, "move_file", and_no_way_back)
    with pytest.raises(FailtraceError, match=r"1 earlier file\(s\) could not be put back: they are in ") as err:
        build_report(cases[:1], rows, out, pairs, title="the third report")
    kept = [p for p in out.iterdir() if p.name.startswith(".report-kept-")]
    assert len(kept) == 1 and str(kept[0] / "old") in str(err.value)
    lost = _files(kept[0] / "old")
    assert len(lost) == 1 and all(before[name] == data for name, data in lost.items())
    assert {k: v for k, v in _files(out).items() if not k.startswith(".report-kept-")} == \
        {k: v for k, v in before.items() if k not in lost}


def test_a_report_killed_while_moving_keeps_the_earlier_files_and_says_where(tmp_path: Path, monkeypatch,
                                                                           capsys) -> None:
    """SIGKILL in the middle of the moves left an index of one report over pictures of another, and the next
    report's sweep deleted the earlier files the dead one held aside. Now the next report keeps them under
    ``.report-kept-*`` (which no report removes) and says where (failtrace.swap)."""
    import subprocess

    import failtrace.report.build as build

    cases, rows, pairs = sample()
    out, second = tmp_path / "r", tmp_path / "second"
    build_report(cases, rows, out, pairs, title="the first report")
    build_report(cases[:1], rows, second, pairs, title="the second report")
    first = _files(out)
    child = f"""
import os, shutil, signal
from pathlib import Path
import failtrace.report.publish as publish
real, into = publish.move_file, [0]
def move(src, dst):
    if ".report-" not in str(dst):
        into[0] += 1
        if into[0] == 2:  # the second new file, every earlier one aside
            os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
publish.move_file = move
publish.published(Path({str(out)!r}), lambda stage: shutil.copytree({str(second)!r}, stage, dirs_exist_ok=True))
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert proc.returncode == -9, proc.stderr
    assert {k: v for k, v in _files(out).items() if not k.startswith(".report-")} != first

    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, "_draw", full_disk)
    with pytest.raises(OSError, match="No space left"):
        build_report(cases, rows, out, pairs, title="the third report")
    kept = [p for p in out.iterdir() if p.name.startswith(".report-kept-")]
    err = capsys.readouterr().err
    assert len(kept) == 1 and f"the earlier files it had moved aside are in {kept[0] / 'old'}" in err
    here, held = _files(out), _files(kept[0] / "old")
    assert held and all(here.get(name) == data or held.get(name) == data for name, data in first.items())


def test_a_report_refuses_a_folder_where_a_file_goes_and_a_failed_copy_leaves_no_part(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """A folder named like a file of the report (``index.html/``) took the new file inside it, one level down, and
    the report said it was written; it is refused now, before anything moves. A copy across file systems that fails
    midway (a full disk under a linked ``figures/``) left its truncated part in the earlier report."""
    import errno
    import shutil

    import failtrace.report.publish as publish
    from failtrace.errors import FailtraceError

    cases, rows, pairs = sample()
    out = tmp_path / "r"
    (out / "index.html").mkdir(parents=True)
    with pytest.raises(FailtraceError, match=r"index.html is a folder, not a file; move it away"):
        build_report(cases, rows, out, pairs)
    assert [p.name for p in out.iterdir()] == ["index.html"] and not any((out / "index.html").iterdir())

    src, dst = tmp_path / "a.png", tmp_path / "elsewhere" / "a.png"
    src.write_bytes(b"x" * 1000)

    def other_fs(s: str, d: str) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def full_disk(s: str, d: str, follow_symlinks: bool = True) -> None:  # a copy that stops half way
        Path(d).write_bytes(Path(s).read_bytes()[:300])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "rename", other_fs)
    monkeypatch.setattr(shutil, "copy2", full_disk)
    with pytest.raises(OSError):
        publish.move_file(src, dst)
    monkeypatch.undo()
    assert not any(dst.parent.iterdir())  # neither the file nor a part of it under another name
    assert not dst.exists() and src.read_bytes() == b"x" * 1000


def test_a_case_whose_fix_the_page_warns_of_is_marked_in_its_table(tmp_path: Path) -> None:
    """A case whose fix looks degenerate, or whose contrast lies outside the code the checker ran, was warned of on
    its own page only: in the benchmark's table (and cases.csv) it read like any other case, and two of the demo's
    four NC-IA+AG cases are such. Its row now carries the page's warning (⚠, the reason on hover; a CSV column)."""
    from report_cases import status_row

    from failtrace.views.answers import answer_parts

    loop, fine, outside = (make_case(i, "ifeval", "NC-IA+AG", "OIT", {"attnlrp": None}) for i in range(3))
    answers = {loop.case_id: {"completion": "a", "reasons": ["no"], "recovered": "say it\n" * 12},
               fine.case_id: {"completion": "a", "reasons": ["no"], "recovered": "a fine answer"},
               outside.case_id: {"completion": "a", "reasons": ["no"], "recovered": "x = 1",
                                 "outside": "the contrast opens the line before the code block"}}
    row = status_row("ifeval", "collect-1", "pairs-1", 3, {"clean": 3})
    index = build_report([loop, fine, outside], [row], tmp_path / "r", answers=answers)
    with (tmp_path / "r" / "tables" / "cases.csv").open(encoding="utf-8") as fh:
        caveat = {r["case_id"]: r["caveat"] for r in csv.DictReader(fh)}
    page = [label for label, _t, _n in answer_parts(answers[loop.case_id])]
    assert "the fix looks degenerate" in page  # what the case page itself says
    assert caveat[loop.case_id].startswith("the fix looks degenerate: ") and caveat[fine.case_id] == ""
    assert caveat[outside.case_id] == ("the contrast is not in the checked code: the contrast opens the line before "
                                       "the code block")
    text = index.read_text(encoding="utf-8")
    marks = re.findall(r'href="#case-([^"]+)">[^<]*</a> <span class="warn" title="([^"]*)">⚠</span>', text)
    assert {cid for cid, _ in marks} == {loop.case_id, outside.case_id}
    assert html.unescape(dict(marks)[outside.case_id]) == caveat[outside.case_id]
