"""The category and the pattern in words (views/verdicts.py): each sentence states the numbers of its evidence and
the rule that decided, for every category and pattern, and show, the report and the explorer print the same one."""

from __future__ import annotations

import html
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_store import analysed_toy_store  # noqa: E402

from failtrace.views.verdicts import category_sentence, pattern_sentence  # noqa: E402

TOKENS = ["<s>", "Say", "·water", "·quotes", "·Water"]


@pytest.mark.parametrize(("category", "evidence", "says"), [
    ("M-IA", {"k_star": 1, "k_ia": 5},
     "masking the top 1 AttnLRP input token puts the contrast above the target (k* = 1 ≤ K_IA = 5): the heatmap "
     "shows why"),
    ("M-IA", {"k_star": 4, "k_ia": 5}, "masking the top 4 AttnLRP input tokens puts the contrast above the target "
                                       "(k* = 4 ≤ K_IA = 5): the heatmap shows why"),
    ("NC-IA+M-AG", {"k_star": 7, "k_ia": 5, "ablation_k": 2, "ablation_budget": 10},
     "masking needs the top 7 AttnLRP input tokens to flip the prediction, more than K_IA = 5; zeroing the top 2 "
     "hidden states of the graph does flip it: the graph shows why"),
    ("NC-IA+M-AG", {"k_star": None, "k_ia": 5, "ablation": {"k": 1, "budget": 10}},
     "masking the top AttnLRP input tokens does not flip the prediction within the masking search; zeroing the top "
     "1 hidden state of the graph does flip it: the graph shows why"),
    ("NC-IA+AG", {"k_star": None, "k_ia": 3, "ablation_budget": 8},
     "masking the top AttnLRP input tokens does not flip the prediction within the masking search; zeroing up to 8 "
     "top hidden states of the graph does not flip it either: neither view explains it on its own"),
    ("NC-IA+AG", {"k_star": 9, "k_ia": 5},  # no ablation recorded: no count is made up
     "masking needs the top 9 AttnLRP input tokens to flip the prediction, more than K_IA = 5; zeroing the top "
     "hidden states of the graph does not flip it either: neither view explains it on its own"),
])
def test_category_sentences(category: str, evidence: dict[str, Any], says: str) -> None:
    assert category_sentence(category, evidence) == says


def test_nothing_to_say_without_evidence() -> None:
    assert category_sentence(None, {}) == "" and category_sentence("M-IA", {}) == ""
    assert pattern_sentence(None, {}, TOKENS) == "" and pattern_sentence("OIT", {}, TOKENS) == ""


def _pattern_ev(relevant_sum: float | None, oit: list[int], decidable: bool = True,
                segments: tuple[str, ...] = ("instruction",)) -> dict[str, Any]:
    top = [{"position": 2, "relevance": 1.0, "relevant": False, "segment": "query", "share": 0.69},
           {"position": 3, "relevance": 0.1, "relevant": True, "segment": "instruction", "share": 0.07}]
    return {"theta": 0.1, "theta_share": 0.05, "m": 3, "relevant_sum": relevant_sum, "urt_decidable": decidable,
            "relevant_segments": list(segments), "top_supporters": top, "oit_tokens": oit}


@pytest.mark.parametrize(("pattern", "evidence", "says", "not_says"), [
    ("OIT", _pattern_ev(-0.105, [2]),
     ["the relevant segment (instruction) sums to -0.105 (normalised), below −θ = −0.1: it pushes against",
      "outside it, '·water' [2] (query, 69%) is among the 3 strongest supporters", "(OIT)"], ["(URT)"]),
    ("URT", _pattern_ev(0.2, [], segments=("docstring", "examples")),
     ["the relevant segments (docstring, examples) sum to +0.200 (normalised), not below −θ = −0.1: they do not push",
      "(URT)", "no token outside them is among the 3 strongest supporters with at least 5%"], ["(OIT)"]),
    ("URT+OIT", _pattern_ev(0.0, [2]),
     ["the relevant segment (instruction) sums to +0.000 (normalised), not below −θ = −0.1: it does not push against "
      "the target (URT); outside it, '·water' [2] (query, 69%) is among the 3 strongest supporters"], ["sums to -"]),
    ("OIT", {**_pattern_ev(-0.5, [4]), "top_supporters": [{"position": 4, "relevance": 1.0, "relevant": False,
                                                          "segment": "answer", "share": 0.4}]},
     ["'·Water' [4] (the model's answer so far, 40%) is among"], ["(answer,"]),
    ("none", _pattern_ev(-0.5, []), ["below −θ", "no token outside it"], ["(URT)", "(OIT)"]),
    # a relevant token is the target's strongest supporter (the model copies the instruction's own example): URT
    # holds on the sum alone, and the sentence says what the sum hides
    ("URT", {**_pattern_ev(-0.058, []), "top_supporters": [{"position": 3, "relevance": 1.0, "relevant": True,
                                                            "segment": "instruction", "share": 0.41}]},
     ["sums to -0.058 (normalised), not below −θ = −0.1: it does not push against the target (URT), in sum only: "
      "the target's strongest supporter, '·quotes' [3] (41% of the positive relevance), is itself in it"], []),
    ("URT", _pattern_ev(0.2, []), ["(URT)"], ["in sum only"]),  # the strongest supporter outside: nothing hidden
    # the relevant tokens all push towards the target (sum 1.6 above the supporter's 1.0): nothing offsets it
    ("URT", {**_pattern_ev(1.6, []), "top_supporters": [{"position": 3, "relevance": 1.0, "relevant": True,
                                                         "segment": "instruction", "share": 0.51}]},
     ["it does not push against the target (URT); the target's strongest supporter, '·quotes' [3] (51% of the "
      "positive relevance), is itself in it"], ["in sum only", "offset"]),
    ("OIT", {**_pattern_ev(None, [2], decidable=False), "relevant_tokens": 0},
     ["URT is undecided for the relevant segment (instruction) (no content token there)", "(OIT)"], ["sums to"]),
    ("OIT", {**_pattern_ev(None, [2], decidable=False), "relevant_tokens": 4, "relevant_not_finite": 1},
     ["(a token there has no finite relevance)"], ["sums to", "no content token"]),
    ("OIT", {key: v for key, v in _pattern_ev(float("nan"), [2]).items() if key != "urt_decidable"},
     ["URT is undecided", "(its sum is unknown)"], ["nan", "pushes"]),  # older evidence with a NaN sum
])
def test_pattern_sentences(pattern: str, evidence: dict[str, Any], says: list[str], not_says: list[str]) -> None:
    text = pattern_sentence(pattern, evidence, TOKENS)
    for part in says:
        assert part in text, (part, text)
    for part in not_says:
        assert part not in text, (part, text)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from failtrace.store import open_store
    from failtrace.store.cases import load_cases

    info = analysed_toy_store(tmp_path_factory.mktemp("verdicts"), n_items=4)
    with open_store(info["store"], read_only=True) as st:
        info["cases"] = load_cases(st)
    assert info["cases"]
    return info


def test_show_the_report_and_the_explorer_say_the_same(toy: dict[str, Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from failtrace.cli import main
    from failtrace.cli import show as show_cli
    from failtrace.cli.console import console
    from failtrace.serve.app import create_app

    store = tmp_path / "runs.duckdb"
    shutil.copy(toy["store"], store)
    monkeypatch.setattr(show_cli, "_console", lambda stderr=False: console(stderr, width=400))
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    capsys.readouterr()
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        for case in toy["cases"]:
            cat = category_sentence(case.category, case.category_evidence)
            pat = pattern_sentence(case.pattern, case.pattern_evidence, case.tokens)
            assert cat and pat, case.case_id
            assert main(["show", "--store", str(store), "--case", case.case_id]) == 0
            out = capsys.readouterr().out
            assert f"why {case.category}: {cat}" in out and f"why {case.pattern}: {pat}" in out
            for text in (cat, pat):
                assert f'<p class="why">{html.escape(text[:1].upper() + text[1:])}.</p>' in page
            assert client.get(f"/api/cases/{case.case_id}").json()["why"] == {"category": cat, "pattern": pat}


@pytest.mark.parametrize(("finish", "said"), [
    ("length", "ok. [stopped at the token budget]"), ("window", "ok. [stopped at the model's context window]"),
    ("eos", "ok."), (None, "ok.")])
def test_the_answer_row_says_where_a_cut_answer_stopped(finish: str | None, said: str) -> None:
    """An answer cut by the context window was said to stop at the token budget, which a larger budget would lift."""
    from failtrace.views.answers import answer_parts

    label, text, note = answer_parts({"completion": "ok.", "finish_reason": finish})[0]
    assert (label, text + note) == ("the model wrote", said)



@pytest.mark.parametrize(("text", "says"), [
    # a real forced IFEval answer that passed "separate two limericks with ******"
    ("1\n2\n3\n4\n5\n6\n******\n" + "****\n" * 20, "one line, ‹****›, is 20 of its 27 lines"),
    ("the answer is " + "ha" * 20, "‹ha› repeats 20 times in a row"),
    ("I think " * 8 + "so", "‹I think › repeats 8 times in a row"),
    ("Once upon a time a kid rode a bike.\nThe end.", None),  # prose
    ("```python\ndef f(x):\n    return x + 1\n```", None),  # code
    ("* This is point 1\n* This is point 2\n* This is point 3\n* a\n* b\n* c", None),  # a list of distinct items
    ("Title\n" + "-" * 30 + "\nBody.", None),  # a markdown rule is no loop
    ("p1\n***\np2\n***\np3\n***\np4\n***\np5", None),  # separators between paragraphs: 4 of 9 lines
    ("I think " * 7 + "so", None),  # seven times: below the loop's eight
    # ordinary answers a reviewer found flagged by the first rule (half the lines; a digit or a letter in the span)
    ("First we compute:\n$$\na = 2\n$$\nThen:\n$$\nb = 3\n$$\nSo:\n$$\n\\boxed{5}\n$$", None),
    ("Para one here.\n******\nPara two here.\n******\nPara three.\n******", None),
    ("a\n---\nb\n---\nc\n---", None),
    ("\\boxed{1000000000000000000}", None),
    ("[0, 0, 0, 0, 0, 0, 0, 0, 0]", None),
    ("x = 0b11111111111111111", None),
    ("- item\n- other\n- item\n- more\n- item\n- last", None),
    ("def f():\n    if a:\n        if b:\n            return {\n}\n}\n}\n}", None),
])
def test_a_degenerate_forced_answer_is_said_to_look_so(text: str, says: str | None) -> None:
    """A checker passes a loop when the rule it checks holds; a reader of the pair should know its fix is one."""
    from failtrace.views.answers import answer_parts, degenerate

    assert degenerate(text) == says
    rows = answer_parts({"recovered": text})
    assert rows[0] == ("with the contrast forced", text, "  [passes the checker]")
    assert rows[1:] == ([("the fix looks degenerate", says, "")] if says else [])


def test_the_scroll_note_counts_what_the_box_hides() -> None:
    """Six lines and a final newline fit the box (it said '7 lines'); long lines that wrap past it are said too, by
    their length (three 500-character paragraphs had no note)."""
    from failtrace.views.answers import box_note

    assert box_note("a\n" * 6, "") == ""
    assert box_note("a\n" * 7, " [n] ") == "[n] · 7 lines: scroll the box for the rest"
    assert box_note("x" * 500, "  [passes]") == "[passes]"  # about five wrapped lines: it fits
    assert box_note("\n".join(["y" * 500] * 3), "") == "1,502 characters: scroll the box for the rest"
