"""attribute() on the real bundled SmolLM2-135M-Instruct: conservation, baselines, faithfulness, input handling.

Bounds are set from measured values (float32, CPU, transformers 5 and 4.57; measured values in the comments) with
modest slack, so that a change in the numbers shows up as a failure instead of passing inside a wide band; AttnLRP's
relevance itself is checked token by token against the rules written out by hand (failtrace_testkit/explicit_lrp.py).
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

import failtrace
from failtrace_testkit.reference_masking import masked_objective
from failtrace.attribution import objective_value
from failtrace.errors import FailtraceError, TokenizationError
from failtrace_testkit.explicit_lrp import explicit_attnlrp

pytestmark = [pytest.mark.model, pytest.mark.tf4]

CASES = [
    ("What is the capital of France?", "The capital of France is", " Paris", " Lyon"),
    ("Which planet is known as the Red Planet?", "The Red Planet is", " Mars", " Jupiter"),
    ("Name the largest ocean on Earth.", "The largest ocean on Earth is the", " Pacific", " Atlantic"),
    ("What color is the sky on a clear day?", "On a clear day the sky is", " blue", " green"),
    ("How many legs does a spider have?", "A spider has", " eight", " six"),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William", " Shakespeare", " Blake"),
]


def test_attnlrp_record_on_bundled_model(bundled):
    prompt, prefix, tgt, con = CASES[0]
    attr = failtrace.attribute(bundled, prompt, tgt, con, chat=True, answer_prefix=prefix)
    n = len(attr.tokens)
    assert attr.hidden_relevance.shape == (bundled.num_layers + 1, n)
    assert np.isfinite(attr.hidden_relevance).all()
    assert math.isclose(attr.last_layer_sum, attr.delta_logit, rel_tol=1e-5)  # measured 3.5e-7
    # measured 5.2e-8
    assert attr.delta_logit == pytest.approx(attr.extra["target_logit"] - attr.extra["contrast_logit"], rel=1e-6)
    # Δℓ against a plain forward of the same ids with no LRP rules installed (the model prefers " Paris" strongly)
    with torch.no_grad():
        logits = bundled.model(input_ids=torch.tensor([attr.token_ids]), use_cache=False).logits[0, -1].double()
    plain = float(logits[attr.target.id] - logits[attr.contrast.id])
    assert attr.delta_logit == pytest.approx(plain, rel=1e-5) and plain > 5
    # AttnLRP does not conserve at the input (the softmax rule absorbs part of Δℓ; the sum is reported next to Δℓ).
    # Every token's input relevance and every layer's, against the rules propagated by hand in float64 without
    # autograd (failtrace_testkit/explicit_lrp.py) on the same weights: measured ≤ 1.2e-6 of the largest |R|.
    ref = explicit_attnlrp(bundled.model, attr.token_ids, attr.target.id, attr.contrast.id)
    assert ref.delta == pytest.approx(attr.delta_logit, rel=1e-5)
    rows = [np.asarray(attr.input_relevance), *np.asarray(attr.hidden_relevance)[1:]]
    for mine, theirs in zip(rows, [ref.input, *ref.layers], strict=True):
        assert np.abs(mine - theirs.numpy()).max() < 1e-5 * float(theirs.abs().max())
    assert attr.relevance_sum == pytest.approx(float(ref.input.sum()), rel=1e-5)
    assert abs(attr.relevance_sum - attr.delta_logit) > 1  # measured 3.48 of 9.16: far from conserving
    assert any(attr.special_mask) and not all(attr.special_mask)
    assert attr.tokens[attr.prompt_length:] and "".join(attr.tokens[attr.prompt_length:]).strip() == prefix
    # normalised relevance: max |R| over non-special tokens is exactly 1
    ns = ~np.asarray(attr.special_mask)
    assert np.abs(attr.normalized[ns]).max() == pytest.approx(1.0)
    d = json.loads(json.dumps(attr.to_dict()))
    for key in ("tokens", "input_relevance", "hidden_relevance", "delta_logit", "relevance_sum", "target",
                "contrast", "model"):
        assert key in d
    again = failtrace.Attribution.from_dict(d)
    assert np.allclose(again.hidden_relevance, attr.hidden_relevance)


def test_methods_share_delta_and_differ_in_relevance(bundled):
    prompt, prefix, tgt, con = CASES[1]
    out = {m: failtrace.attribute(bundled, prompt, tgt, con, chat=True, answer_prefix=prefix, method=m, ig_steps=8)
           for m in ("attnlrp", "cp-lrp", "gradxinput", "ig")}
    deltas = {m: a.delta_logit for m, a in out.items()}
    assert max(deltas.values()) - min(deltas.values()) < 1e-5  # measured 0.0 (one forward pass, Δℓ = 4.157)
    # CP-LRP conserves (no biases in Llama): input sum ≈ Δℓ (measured relative gap 1.7e-7)
    assert out["cp-lrp"].relevance_sum == pytest.approx(out["cp-lrp"].delta_logit, rel=1e-5)
    # AttnLRP and gradient × input disagree: measured max |difference| 0.646, correlation 0.42
    lrp, gxi = out["attnlrp"].input_relevance, out["gradxinput"].input_relevance
    assert np.abs(lrp - gxi).max() > 0.3 and np.corrcoef(lrp, gxi)[0, 1] < 0.7
    # integrated gradients explains the embeddings only (its completeness is tested in test_baselines_ig.py)
    assert out["ig"].hidden_relevance.shape == (1, len(out["ig"].tokens))


def test_masking_top_tokens_lowers_delta_more_than_random(bundled):
    """Faithfulness: removing the 3 most positively attributed tokens hurts Δℓ more than removing 3 random ones."""
    rng = random.Random(0)
    top_drops, rand_drops = [], []
    for prompt, prefix, tgt, con in CASES:
        attr = failtrace.attribute(bundled, prompt, tgt, con, chat=True, answer_prefix=prefix)
        cands = [i for i, s in enumerate(attr.special_mask) if not s and i != attr.position]
        order = sorted(cands, key=lambda i: -attr.input_relevance[i])
        top = order[:3]
        randoms = [rng.sample(cands, 3) for _ in range(8)]
        fn = lambda lg: objective_value(lg, "logit_diff", attr.target.id, attr.contrast.id)  # noqa: E731
        vals = masked_objective(bundled.model, attr.token_ids, [[], top, *randoms], fn)
        base = vals[0]
        assert base == pytest.approx(attr.delta_logit, rel=5e-5)  # measured at most 5.9e-6
        top_drops.append(base - vals[1])
        rand_drops.append(base - float(np.mean(vals[2:])))
    # measured drops, top-3 vs random-3: 6.78/2.40, 2.07/0.94, 2.57/0.93, 2.44/0.22, 0.64/0.52, 4.37/1.08;
    # means 3.15 vs 1.02
    assert sum(t > r for t, r in zip(top_drops, rand_drops, strict=True)) >= 5, (top_drops, rand_drops)
    assert np.mean(top_drops) > 2 * np.mean(rand_drops), (top_drops, rand_drops)


def test_token_and_input_errors(bundled):
    with pytest.raises(TokenizationError, match="exactly one token"):
        failtrace.attribute(bundled, "Hello", " Constantinople is", " Paris")
    with pytest.raises(FailtraceError, match="same token"):
        failtrace.attribute(bundled, "Hello", " Paris", " Paris")
    with pytest.raises(FailtraceError, match="empty"):
        failtrace.attribute(bundled, "   ", " Paris", " Lyon")
    with pytest.raises(FailtraceError, match="out of range"):
        failtrace.attribute(bundled, "Hello there", " Paris", " Lyon", position=99)
    with pytest.raises(TokenizationError, match="out of range"):
        failtrace.attribute(bundled, "Hello", 10**9, " Lyon")


def test_ids_prompt_and_position(bundled):
    ids = bundled.tokenizer.encode("The capital of France is Paris and the capital of Italy is")
    full = failtrace.attribute(bundled, ids, " Rome", " Milan")
    cut = failtrace.attribute(bundled, ids, " Paris", " Lyon", position=4)
    assert len(full.tokens) == len(ids) and len(cut.tokens) == 5 and cut.position == 4
    assert full.target.text == " Rome"


def test_default_target_is_greedy_token(bundled):
    attr = failtrace.attribute(bundled, "The capital of France is", objective="max_logit")
    assert attr.extra["target_rank"] == 0
    assert attr.delta_logit == pytest.approx(attr.extra["target_logit"], rel=1e-6)  # measured: equal


def test_quickstart_example_explains_a_real_failure(bundled, tmp_path, monkeypatch, capsys):
    """examples/quickstart.py explains a failure, not a right answer (it used to explain " six" vs " eight", which the
    model gets right: Δℓ −1.29): the model's own first token there is the target, and by a plain transformers forward
    on the same chat prompt that token is greedy and outscores the contrast '"' by more than 1 (a clean pair's Δℓ)."""
    import runpy
    from pathlib import Path

    from failtrace.models.chat import apply_chat_template

    monkeypatch.setattr(failtrace, "load_model", lambda *a, **k: bundled)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "quickstart.py"), run_name="__main__")
    rec = json.loads((tmp_path / "out" / "water.json").read_text())
    prompt = 'Say what water is made of, in one sentence wrapped in double quotes ("like this").'
    ids = apply_chat_template(bundled.tokenizer, prompt)
    assert rec["token_ids"] == ids
    with torch.no_grad():
        logits = bundled.model(torch.tensor([ids])).logits[0, -1].double()
    quote = bundled.tokenizer.encode('"', add_special_tokens=False)
    assert rec["target"]["id"] == int(logits.argmax()) and rec["contrast"]["id"] == quote[0] and len(quote) == 1
    delta = float(logits[rec["target"]["id"]] - logits[quote[0]])
    assert delta > 1 and rec["delta_logit"] == pytest.approx(delta, abs=1e-3)
    assert (tmp_path / "out" / "water.png").read_bytes()[:4] == b"\x89PNG"
    assert f"Δℓ = {delta:.3f}" in capsys.readouterr().out
