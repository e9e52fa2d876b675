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
     ["the relevant segment (instruction) sums to −0.105 (normalised), below −θ = −0.1: it pushes against",
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
     ["sums to −0.058 (normalised), not below −θ = −0.1: it does not push against the target (URT), in sum only: "
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


def _reported_copy(toy: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A copy of the toy store, its report's page, and `show` printing on a wide console (the three views' inputs)."""
    from failtrace.cli import main
    from failtrace.cli import show as show_cli
    from failtrace.cli.console import console

    store = tmp_path / "runs.duckdb"
    shutil.copy(toy["store"], store)
    monkeypatch.setattr(show_cli, "_console", lambda stderr=False: console(stderr, width=600))
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    capsys.readouterr()
    return store, page


def test_show_the_report_and_the_explorer_say_the_same(toy: dict[str, Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from failtrace.cli import main
    from failtrace.serve.app import create_app

    store, page = _reported_copy(toy, tmp_path, capsys, monkeypatch)
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


def test_a_contrast_outside_the_checked_code_is_said() -> None:
    """A real demo pair (py-count-a): the contrast ‹(› after ```python opened the fence as ```python(, the model then
    wrote other code, and that passed; nothing said the token itself was not in the code the checker ran. The
    checked part is the benchmark's own extract_code (a HumanEval item, here through the demo's delegation)."""
    from types import SimpleNamespace

    from failtrace.benchmarks.base import checked_span
    from failtrace.benchmarks.demo import DemoBenchmark, demo_items
    from failtrace.benchmarks.humaneval import extract_code
    from failtrace.views.answers import answer_parts, outside_checked, with_contrast_checks

    item = next(i for i in demo_items() if i.id == "py-count-a")
    bench = DemoBenchmark()
    forced = '```python(\ndef count_a(s):\n    return s.count("a")\n```'
    assert bench.check(item, forced).passed  # the real checker passes it
    span = checked_span(bench, item, forced)
    assert span is not None and forced[span[0]:span[1]] == extract_code(forced, "count_a") != forced
    assert checked_span(bench, item, 'def count_a(s):\n    return s.count("a")\n') is None  # no fence: all read
    ifeval = next(i for i in demo_items() if i.reference.get("kind") == "ifeval")
    assert checked_span(bench, ifeval, "anything") is None  # IFEval reads the whole answer
    said = outside_checked(span, forced, "```python", "(")
    assert said == ("‹(› comes before the code the checker ran (character 9; the code is characters 11–51): what "
                    "passes is the code the model wrote after it, not the token itself")
    assert outside_checked(span, forced, "```python(\ndef count_a(s):\n    return s.", "count") is None  # in the code
    assert outside_checked(span, forced, "```python(\n", "def") is None  # the code's first token
    assert outside_checked(span, forced, "```py", "thon(\nde") is None  # partly in it: nothing claimed
    assert outside_checked(span, forced, "```python", "[") is None  # the text does not start so: nothing claimed
    assert outside_checked(None, forced, "```python", "(") is None
    # a fence mark opens or closes the block: it decides what the checker reads, so it is the fix (nothing said)
    prose = "Here it is.\n```python\ndef count_a(s):\n    return 1\n```"
    fenced = checked_span(bench, item, prose)
    assert fenced is not None and outside_checked(fenced, prose, "Here it is.\n", "```") is None
    # the views' rows: after the forced answer; a stored item that cannot be read says nothing
    case = SimpleNamespace(case_id="c1", benchmark="demo", item_id=item.id, tokens=["<p>", "```", "python"],
                           prompt_length=1, contrast_text="(")
    answers = {"c1": {"recovered": forced}}
    got = with_contrast_checks(lambda b, i: item, [case], answers)
    assert answer_parts(got["c1"])[-1] == ("the contrast is not in the checked code", said, "")
    from failtrace.errors import FailtraceError

    def missing(b: str, i: str) -> Any:
        raise FailtraceError("gone")

    assert with_contrast_checks(missing, [case], answers)["c1"] == answers["c1"]
    case.benchmark = "no-such-benchmark"  # a benchmark this process cannot build: no note, no error
    assert answer_parts(with_contrast_checks(lambda b, i: item, [case], answers)["c1"]) == [
        ("with the contrast forced", forced, "  [passes the checker]")]


def test_show_the_report_and_the_explorer_say_a_contrast_is_outside_the_checked_code(
        toy: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The three views read the checked part from the benchmark the same way. The toy benchmark reads its whole
    answer; here it is taken to read only the answer's last character, so every toy case's contrast is outside."""
    from fastapi.testclient import TestClient

    from failtrace.cli import main
    from failtrace.serve.app import create_app
    from failtrace.views import answers as answers_view

    class LastCharacter:
        def checked_span(self, item: Any, completion: str) -> tuple[int, int]:
            return len(completion) - 1, len(completion)

    monkeypatch.setitem(answers_view._BENCHMARKS, "toy", LastCharacter())
    store, page = _reported_copy(toy, tmp_path, capsys, monkeypatch)
    checked = 0
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        for case in toy["cases"]:
            rows = client.get(f"/api/cases/{case.case_id}").json()["answers"]
            forced = next((r[1] for r in rows if r[0] == "with the contrast forced"), None)
            prefix = "".join(case.tokens[case.prompt_length:])
            if (forced is None or not forced.startswith(prefix + case.contrast_text)
                    or len(prefix + case.contrast_text) >= len(forced)):  # the contrast reaches the last character
                continue
            said = answers_view.outside_checked((len(forced) - 1, len(forced)), forced, prefix, case.contrast_text)
            assert said and rows[-1][:2] == ["the contrast is not in the checked code", said]
            assert main(["show", "--store", str(store), "--case", case.case_id]) == 0
            assert f"the contrast is not in the checked code: {said}" in capsys.readouterr().out
            assert html.escape(said) in page
            checked += 1
    assert checked >= 2
