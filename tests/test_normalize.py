"""The one special-token-aware normalisation, checked against an explicit loop, and its users agree with it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from failtrace.attribution.normalize import normalize, relevance_scale


def _reference_scale(row: list[float], special: list[bool]) -> float:
    """The definition, written out: max |R| over finite non-special entries (all finite ones if all special)."""
    vals = [abs(x) for x, s in zip(row, special) if math.isfinite(x) and not s]
    if not any(not s for s in special):
        vals = [abs(x) for x in row if math.isfinite(x)]
    m = max(vals, default=0.0)
    return m if m > 0 else 1.0


CASES = [
    ([5.0, -0.5, 0.25, 0.0], [True, False, False, False]),       # a sink larger than everything else
    ([0.1, -0.4, float("nan"), 0.2], [False, False, False, True]),  # NaN is not computed: ignored, kept
    ([3.0, -2.0], [True, True]),                                  # every token special: all count
    ([0.0, 0.0, 7.0], [False, False, True]),                       # nothing non-special to scale by: scale 1
    ([-0.3, 0.3, -0.1], [False, False, False]),
]


@pytest.mark.parametrize(("row", "special"), CASES)
def test_scale_and_normalize_match_the_definition(row: list[float], special: list[bool]) -> None:
    ref = _reference_scale(row, special)
    assert relevance_scale(row, special) == pytest.approx(ref)
    out = normalize(row, special)
    for x, y in zip(row, out, strict=True):
        assert (math.isnan(x) and math.isnan(y)) or y == pytest.approx(x / ref)


def test_rows_are_normalised_independently() -> None:
    rows = np.array([[1.0, -4.0, 2.0], [9.0, 0.5, -0.25], [np.nan, np.nan, 0.0]])
    special = [True, False, False]
    got = normalize(rows, special)
    for r, g in zip(rows, got, strict=True):
        np.testing.assert_allclose(g, r / _reference_scale(list(r), special), equal_nan=True)
    np.testing.assert_allclose(relevance_scale(rows, special), [4.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="special_mask"):
        normalize(rows, [True])


def test_record_views_and_graph_use_the_same_numbers() -> None:
    from failtrace.attribution.record import Attribution, TokenRef
    from failtrace.views.common import row_scaled

    r = np.array([6.0, 0.5, -1.5, 0.75])
    special = [True, False, False, False]
    attr = Attribution(model="m", tokens=list("abcd"), token_ids=[0, 1, 2, 3], special_mask=special,
                       target=TokenRef(1, "b"), contrast=None, objective="max_logit", method="attnlrp",
                       delta_logit=1.0, input_relevance=r, hidden_relevance=r[None], prompt_length=4, position=3)
    assert attr.scale == 1.5
    np.testing.assert_allclose(attr.normalized, r / 1.5)
    np.testing.assert_allclose(row_scaled(r[None], np.array(special)), [[1.0, 1 / 3, -1.0, 0.5]])
