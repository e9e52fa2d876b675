"""The masking flip search against a plain-transformers recomputation (one unbatched forward per k, no failtrace)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from failtrace.analysis.masking import flip_search, never_masked, top_positions
from failtrace_testkit.reference_masking import masked_objective
from failtrace.cases.record import MaskingSpec
from failtrace.errors import FailtraceError


def test_top_positions_by_hand():
    r = [9.0, 0.5, 2.0, -3.0, 2.0, 0.0, 1.0]
    special = [True, False, False, False, False, False, False]
    # 9.0 is special, -3.0 and 0.0 are not positive; the tie 2.0/2.0 goes to the lower position
    assert top_positions(r, special, 10) == [2, 4, 6, 1]
    assert top_positions(r, special, 2) == [2, 4]
    assert top_positions(r, special, 0) == []


def _reference_curve(model, ids, relevance, special, target, contrast, spec):
    """Plain transformers: top-k by numpy's lexsort, one forward per k, full logits."""
    r = np.asarray(relevance)
    order = [int(i) for i in np.lexsort((np.arange(len(r)), -r)) if r[i] > 0 and not special[i]][:spec.max_k]
    curve, all_logits = [], []
    with torch.no_grad():
        for k in range(len(order) + 1):
            if spec.rule == "zero-embedding":
                emb = model.get_input_embeddings()(torch.tensor([ids])).clone()
                emb[0, order[:k]] = 0.0
                logits = model(inputs_embeds=emb).logits[0, -1].double()
            else:
                masked = list(ids)
                for p in order[:k]:
                    masked[p] = spec.token_id
                logits = model(input_ids=torch.tensor([masked])).logits[0, -1].double()
            all_logits.append(logits)
            curve.append(float(logits[target] - logits[contrast]))
    return curve, torch.stack(all_logits)


def _last_logits(model, ids: list[int]) -> torch.Tensor:
    """The plain model's next-token logits after ``ids`` (no masking)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


def _flipping_contrast(logits: torch.Tensor, target: int) -> int:
    """A contrast that is below the target unmasked but overtakes it at some k (so k* exists)."""
    gain = (logits[1:] - logits[1:, target:target + 1]).max(0).values
    gain[target] = -np.inf
    gain[logits[0] >= logits[0, target]] = -np.inf
    return int(gain.argmax())


@pytest.mark.parametrize("rule", ["zero-embedding", "replace"])
def test_flip_search_matches_plain_transformers_on_a_tiny_model(tiny, rule):
    model = tiny("llama")
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (14,), generator=gen).tolist()
    rel = np.random.default_rng(2).normal(size=14)
    special = [True] + [False] * 13
    spec = MaskingSpec(rule=rule, token_id=5 if rule == "replace" else None, max_k=8)
    target = int(_last_logits(model, ids).argmax())
    _c, logits = _reference_curve(model, ids, rel, special, target, 0, spec)
    contrast = _flipping_contrast(logits, target)
    want, want_logits = _reference_curve(model, ids, rel, special, target, contrast, spec)
    curve, k_star, tops = flip_search(model, ids, rel, special, target, contrast, spec, batch=3)
    assert len(curve) == 1 + min(8, int(((rel > 0) & ~np.array(special)).sum()))
    assert curve == pytest.approx(want, abs=1e-4)
    want_k = next((k for k in range(1, len(want)) if want[k] < 0), None)
    assert want_k is not None and k_star == want_k
    _assert_tops(tops, want_logits)
    assert len(set(tops)) > 1  # masking changes the top token somewhere on the curve: a constant would not pass


def _assert_tops(tops: list[int], want_logits: torch.Tensor) -> None:
    """The top token after each k is the reference's argmax wherever its lead over the runner-up is clear of float
    noise (a near tie may go either way between batched and unbatched forwards); the clear ones must not be few."""
    assert len(tops) == want_logits.shape[0]
    best = want_logits.topk(2, dim=-1)
    clear = [k for k in range(len(tops)) if float(best.values[k, 0] - best.values[k, 1]) > 1e-3]
    assert len(clear) >= len(tops) - 1
    assert [tops[k] for k in clear] == [int(best.indices[k, 0]) for k in clear]


def test_no_flip_gives_none(tiny):
    model = tiny("qwen2")
    ids = list(range(10, 22))
    logits = _last_logits(model, ids)
    target, contrast = int(logits.argmax()), int(logits.argmin())  # the least likely token will not overtake
    curve, k_star, _ = flip_search(model, ids, np.ones(12), [False] * 12, target, contrast, MaskingSpec(max_k=3))
    want, _ = _reference_curve(model, ids, np.ones(12), [False] * 12, target, contrast, MaskingSpec(max_k=3))
    assert curve == pytest.approx(want, abs=1e-4)
    assert all(v >= 0 for v in want) and k_star is None


def test_a_contrast_already_preferred_has_no_k_star(tiny):
    """Δℓ < 0 before any masking (a corrected row of compare): nothing to flip, so k* is None, neither 0 nor the
    first k whose masking kept it below 0 (that used to be reported, usually 1, and counted in the median k*)."""
    model = tiny("llama")
    ids = list(range(20, 33))
    logits = _last_logits(model, ids)
    target, contrast = int(logits.argmin()), int(logits.argmax())  # the contrast is ahead from the start
    rel = np.linspace(1.0, 2.0, 13)
    curve, k_star, _ = flip_search(model, ids, rel, [False] * 13, target, contrast, MaskingSpec(max_k=4))
    want, _ = _reference_curve(model, ids, rel, [False] * 13, target, contrast, MaskingSpec(max_k=4))
    assert curve == pytest.approx(want, abs=1e-4) and want[0] < 0
    assert any(v < 0 for v in want[1:]) and k_star is None
    from failtrace.analysis.masking import first_flip

    assert first_flip([2.0, 0.5, -0.1, -3.0]) == 2 and first_flip([0.0, -1.0]) == 1  # Δℓ = 0 is not corrected
    assert first_flip([-0.5, -1.0]) is None and first_flip([1.0, 0.2]) is None and first_flip([]) is None


def test_masked_objective_zeroes_every_chosen_position(tiny):
    """The test kit's masking reference (the oracle other masking tests use), checked itself: each mask set against
    one plain forward on inputs_embeds with those rows zeroed (sets batched 3 at a time)."""
    model = tiny("qwen2")
    ids = torch.randint(3, 97, (12,), generator=torch.Generator().manual_seed(4)).tolist()
    masks = [[], [2, 5], [1, 3, 7, 9], [0], [11], list(range(12))]
    t, c = 7, 11
    got = masked_objective(model, ids, masks, lambda lg: lg[:, t] - lg[:, c], batch=3)
    want = []
    with torch.no_grad():
        for m in masks:
            emb = model.get_input_embeddings()(torch.tensor([ids])).clone()
            emb[0, m] = 0.0
            lg = model(inputs_embeds=emb).logits[0, -1]
            want.append(float(lg[t] - lg[c]))
    assert got == pytest.approx(want, abs=1e-4)
    assert len({round(v, 4) for v in want}) == len(want)  # every mask set changes the objective: none is a no-op


def test_flip_search_on_the_bundled_model(bundled):
    import failtrace

    attr = failtrace.attribute(bundled, "What is the capital of France? Answer in one word.", chat=True,
                               target=" Paris", contrast=" Lyon")
    ids, special = attr.token_ids, attr.special_mask
    target, contrast = attr.target.id, attr.contrast.id
    for spec in (MaskingSpec(max_k=6),):  # the replace rule is checked on the tiny model
        want, want_logits = _reference_curve(bundled.model, ids, attr.input_relevance, special, target, contrast,
                                             spec)
        curve, k_star, tops = flip_search(bundled.model, ids, attr.input_relevance, special, target, contrast, spec)
        assert curve == pytest.approx(want, abs=2e-3)
        _assert_tops(tops, want_logits)
        assert curve[0] == pytest.approx(attr.delta_logit, abs=2e-3)
        assert k_star == next((k for k in range(1, len(want)) if want[k] < 0), None)


def test_bad_specs(tiny):
    model = tiny("llama")
    with pytest.raises(FailtraceError, match="unknown masking rule"):
        flip_search(model, [5, 6, 7], [1, 1, 1], [False] * 3, 1, 2, MaskingSpec(rule="blur"))
    with pytest.raises(FailtraceError, match="needs a token_id"):
        flip_search(model, [5, 6, 7], [1, 1, 1], [False] * 3, 1, 2, MaskingSpec(rule="replace"))
    with pytest.raises(FailtraceError, match="relevance has 2 values for 3 tokens"):
        flip_search(model, [5, 6, 7], [1, 1], [False] * 3, 1, 2, MaskingSpec())


def test_never_masked_adds_the_template_text_to_the_special_ids():
    special = [True, False, False, False, False, True, False]
    labels = ["special", "special", "system", "query", "instruction", "special", "special"]
    assert never_masked(special, labels, MaskingSpec()) == [True, True, False, False, False, True, True]
    assert never_masked(special, labels, MaskingSpec(skip_template=False)) == special
    assert never_masked(special, None, MaskingSpec(skip_template=False)) == special
    with pytest.raises(FailtraceError, match="one segment label per token"):
        never_masked(special, labels[:-1], MaskingSpec())
    # a spec stored before the option existed masked template text: it reads back as such
    assert MaskingSpec.from_dict({"rule": "zero-embedding", "token_id": None, "max_k": 4}).skip_template is False
    assert MaskingSpec.from_dict(MaskingSpec(max_k=4).to_dict()) == MaskingSpec(max_k=4)


def test_the_bundled_chat_template_header_is_never_masked(bundled):
    """SmolLM2's chat template puts ``<|im_start|>assistant\\n`` right before the prediction: those tokens are labelled
    ``special`` and never masked, the user's question is."""
    import failtrace
    from failtrace.analysis.segments import segment_labels
    from failtrace.benchmarks.base import Item

    question = "What is the capital of France? Answer in one word."
    attr = failtrace.attribute(bundled, question, chat=True, target=" Paris", contrast=" Lyon")
    labels = segment_labels(bundled.tokenizer, attr.token_ids, attr.special_mask, len(attr.token_ids),
                            Item(id="q", benchmark="demo", prompt=question))
    fixed = never_masked(attr.special_mask, labels, MaskingSpec())
    assert "".join(attr.tokens[-3:]) == "assistant\n" and fixed[-3:] == [True, True, True]
    assert not attr.special_mask[-1]  # the newline is an ordinary token: only the template rule keeps it
    words = [i for i, t in enumerate(attr.tokens) if t.strip() in {"capital", "France"}]
    assert len(words) == 2 and not any(fixed[i] for i in words)
    top = top_positions(attr.input_relevance, fixed, 10)
    assert top and not any(fixed[i] for i in top)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3", "olmo3"])
@pytest.mark.parametrize("rule", ["zero-embedding", "replace"])
def test_a_reused_unmasked_prefix_gives_the_plain_curve(tiny, family, rule):
    """Masks that start late: the prefix before the first masked position runs once and its KV cache is reused
    (reuse_above lowered so a 40-token input takes that path; sliding-window families included); the curve equals
    plain transformers' full forward per k, and the path that runs every token."""
    from failtrace.analysis.masking import masked_delta

    model = tiny(family)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 97, (40,), generator=gen).tolist()
    rel = np.zeros(40)
    rel[[31, 25, 38, 22, 29]] = [5.0, 4.0, 3.0, 2.0, 1.0]  # every top position after 20
    special = [True] + [False] * 39
    spec = MaskingSpec(rule=rule, token_id=5 if rule == "replace" else None, max_k=5)
    target = int(_last_logits(model, ids).argmax())
    want, _ = _reference_curve(model, ids, rel, special, target, 7, spec)
    order = top_positions(rel, special, 5)
    masks = [order[:k] for k in range(len(order) + 1)]
    reused = masked_delta(model, ids, masks, target, 7, spec, batch=4, reuse_above=16)
    full = masked_delta(model, ids, masks, target, 7, spec, batch=4, reuse_above=10**9)
    assert reused == pytest.approx(want, abs=1e-4) and full == pytest.approx(want, abs=1e-4)
    assert len(set(round(v, 3) for v in want)) > 1  # the masks change the value: the check is not vacuous
