"""Failure patterns on hand-made relevance vectors whose answers are worked out by hand in the comments."""

from __future__ import annotations

import pytest

from failtrace.analysis.patterns import failure_pattern

#          0          1         2        3              4              5        6
LABELS = ["special", "system", "query", "instruction", "instruction", "query", "answer"]
SPECIAL = [True, False, False, False, False, False, False]


def test_urt_and_oit():
    # max |R| over non-special = 4 (pos 2) -> r = [., .25, 1, .125, -.0625, .5, .25]
    # relevant (instruction) sum = .125 - .0625 = .0625 >= -0.1 -> URT
    # positive content mass = .25 + 1 + .125 + .5 + .25 = 2.125; top-3 = pos 2 (1.0), 5 (.5), 1 (.25) / 6 (.25) ->
    # tie at .25 goes to the lower position 1; pos 2 is query (irrelevant) with share 1/2.125 = .47 >= .05 -> OIT
    r = [100.0, 1.0, 4.0, 0.5, -0.25, 2.0, 1.0]
    pattern, ev = failure_pattern(r, SPECIAL, LABELS, ["instruction"])
    assert pattern == "URT+OIT"
    assert ev["relevant_sum"] == pytest.approx(0.0625)
    assert [t["position"] for t in ev["top_supporters"]] == [2, 5, 1]
    assert ev["top_supporters"][0]["share"] == pytest.approx(1 / 2.125)
    assert ev["oit_tokens"] == [2, 5, 1]


def test_relevant_tokens_push_against_the_target():
    # r = [., .1, .2, -1, -.5, .05, .1] (max |R| = 10 at pos 3); relevant sum = -1.5 < -0.1 -> not URT
    # positive mass = .1+.2+.05+.1 = .45; top-3 = 2 (.2, share .444), 1 (.1, .222), 6 (.1, .222): all irrelevant -> OIT
    r = [3.0, 1.0, 2.0, -10.0, -5.0, 0.5, 1.0]
    pattern, ev = failure_pattern(r, SPECIAL, LABELS, ["instruction"])
    assert pattern == "OIT"
    assert ev["relevant_sum"] == pytest.approx(-1.5)
    # with a share threshold above every supporter's share, OIT goes away
    assert failure_pattern(r, SPECIAL, LABELS, ["instruction"], theta_share=0.5)[0] == "none"


def test_only_relevant_supporters():
    # r = [., -.25, -.5, 1, .5, -.25, 0] (max 4 at pos 3); relevant sum = 1.5 >= -0.1 -> URT
    # positive content tokens: 3 and 4, both relevant -> no OIT
    r = [9.0, -1.0, -2.0, 4.0, 2.0, -1.0, 0.0]
    pattern, ev = failure_pattern(r, SPECIAL, LABELS, ["instruction"])
    assert pattern == "URT" and ev["oit_tokens"] == []
    # a stricter theta does not change URT (sum is positive); theta in the other direction does:
    assert failure_pattern(r, SPECIAL, LABELS, ["instruction"], theta=-2.0)[0] == "none"


def test_template_text_is_not_a_supporter():
    # position 1 is template text (label special, not a special id): never counted, even with the largest R
    labels = ["special", "special", "instruction", "query"]
    r = [0.0, 5.0, -4.0, 1.0]  # max |R| over non-special ids = 5 -> r = [0, 1, -.8, .2]
    pattern, ev = failure_pattern(r, [True, False, False, False], labels, ["instruction"], m=1)
    assert [t["position"] for t in ev["top_supporters"]] == [3]
    assert ev["relevant_sum"] == pytest.approx(-0.8) and pattern == "OIT"


def test_urt_is_undecided_without_relevant_tokens():
    # the same vector as test_urt_and_oit, but the segmenter found no "docstring" token: the empty relevant sum (0)
    # would pass URT's test (0 >= -0.1) and says nothing about the model, so URT is not flagged; OIT still is
    r = [100.0, 1.0, 4.0, 0.5, -0.25, 2.0, 1.0]
    pattern, ev = failure_pattern(r, SPECIAL, LABELS, ["docstring"])
    assert pattern == "OIT" and ev["urt_decidable"] is False and ev["relevant_tokens"] == 0
    assert ev["relevant_sum"] is None  # not 0.0: an empty sum is not a measured one (docs/ANALYSES.md)
    # the instruction tokens 3, 4 are now irrelevant supporters candidates: top-3 unchanged (2, 5, 1)
    assert ev["oit_tokens"] == [2, 5, 1]


def test_urt_is_undecided_when_a_relevant_token_has_no_relevance():
    """A NaN (not computed) among the relevant tokens makes their sum unknown: URT is undecided, not silently False
    (NaN >= -θ is False) under an evidence that said it was decided; OIT ranks the finite tokens only."""
    r = [100.0, 1.0, 4.0, float("nan"), -0.25, 2.0, 1.0]
    pattern, ev = failure_pattern(r, SPECIAL, LABELS, ["instruction"])
    assert ev["urt_decidable"] is False and ev["relevant_not_finite"] == 1 and ev["relevant_sum"] is None
    assert pattern == "OIT" and ev["oit_tokens"] == [2, 5, 1]
    finite = [100.0, 1.0, 4.0, 0.5, -0.25, 2.0, 1.0]
    _p, ev = failure_pattern(finite, SPECIAL, LABELS, ["instruction"])
    assert ev["urt_decidable"] is True and ev["relevant_not_finite"] == 0 and ev["relevant_sum"] is not None
