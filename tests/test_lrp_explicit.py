"""Whole-model AttnLRP against the rules written out by hand (failtrace_testkit/explicit_lrp.py).

test_lrp_rules.py checks each rule on its own module; here the whole forward + backward of
:func:`relevance_pass` (every rule, residual, rotary embedding, grouped-query head and the head's difference
objective, composed) is checked against an explicit float64 propagation that uses no autograd: the relevance of the
embeddings and of every layer's output stream, per token. Float64 tiny models agree to ~1e-7 to 1e-6 of the largest
|R| (transformers computes RMSNorm and the rotary tables in float32, where the rules divide by those outputs); a wrong
rule (CP-LRP's constant attention, for one) is off by 0.3 or more.
"""

from __future__ import annotations

import pytest
import torch

from failtrace.attribution.engine import relevance_pass
from failtrace_testkit.explicit_lrp import explicit_attnlrp
from failtrace_testkit.tiny import tiny_model

pytestmark = pytest.mark.tf4
TOL = 3e-6  # of the largest |R| of a compared row; measured 5.2e-8 (qwen2) to 3.6e-7 (olmo3) on these inputs, up to
# 1.4e-6 on others (Gemma-3's norms multiply by (1 + w) in float32 too), on transformers 5 and 4.57


def _ids(n: int) -> list[int]:
    return torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(3)).tolist()


def _worst(rel: torch.Tensor, ref: list[torch.Tensor]) -> float:
    return max(float((rel[i] - r).abs().max() / r.abs().max()) for i, r in enumerate(ref))


# qwen2: q/k/v biases (their shares absorbed by the ε-rule); qwen3: q/k norms per head; olmo2/olmo3: post-block
# norms; gemma3: norms before and after each block, scaled embeddings, local/global θ. 12 tokens under the tiny
# configs' 6-token sliding window (every layer of mistral, the local layers of olmo3 and gemma3).
# gemma2: attention and final logit soft-capping (identity rule on tanh)
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "olmo2", "olmo3", "gemma3", "gemma2"])
def test_whole_model_attnlrp_equals_the_explicit_rules(arch: str) -> None:
    # θ other than every family's default (and a local θ of its own on gemma3), so a reference reading the wrong θ fails
    model = tiny_model(arch, dtype=torch.float64, layers=3, rope=(5e4, 2e3))
    ids = _ids(12)
    ref = explicit_attnlrp(model, ids, 5, 7)
    res = relevance_pass(model, ids, lambda logits: logits[5] - logits[7])
    # the models' own forwards agree to float64 rounding, Gemma-2's to 2e-7 (measured 1.8e-7 relative)
    assert res.value == pytest.approx(ref.delta, rel=1e-6 if arch == "gemma2" else 1e-12, abs=1e-12)
    rel = res.relevance()
    assert rel.shape == (4, len(ids))
    assert _worst(rel, [ref.input, *ref.layers]) < TOL
    # the implementation's last layer carries Δℓ; neither conserves at the input (the softmax rule absorbs)
    assert float(rel[-1].sum()) == pytest.approx(res.value, rel=1e-6)  # measured 2.6e-8 (float32 norms)
    assert abs(float(ref.input.sum()) - ref.delta) > 1e-3


SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},  # Gemma-3 4B and larger: its global layers
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},  # Llama-3.1/3.2
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},  # Qwen2.5/3 long context
}


# θ = 500 over an original context of 64 puts the llama3 and yarn blends mid-spectrum (some frequencies kept, some
# divided, some between); gemma3 scales its global layers only, mistral every (sliding) layer
@pytest.mark.parametrize(("arch", "kind"), [("llama", "llama3"), ("qwen3", "llama3"), ("qwen2", "yarn"),
                                            ("gemma3", "linear"), ("mistral", "linear")])
def test_scaled_rotary_embeddings_equal_the_explicit_rules(arch: str, kind: str) -> None:
    model = tiny_model(arch, dtype=torch.float64, layers=3, rope=(500.0, 2e3), rope_scaling=SCALINGS[kind])
    unscaled = tiny_model(arch, dtype=torch.float64, layers=3, rope=(500.0, 2e3))
    ids = _ids(12)
    ref = explicit_attnlrp(model, ids, 5, 7)
    res = relevance_pass(model, ids, lambda logits: logits[5] - logits[7])
    plain = relevance_pass(unscaled, ids, lambda logits: logits[5] - logits[7])
    assert abs(plain.value - res.value) > 0.05  # the scaling is in effect (measured 0.21 to 1.35)
    assert res.value == pytest.approx(ref.delta, rel=1e-12, abs=1e-12)  # the reference's tables are the model's
    assert _worst(res.relevance(), [ref.input, *ref.layers]) < TOL  # measured 6.3e-8 to 3.1e-7


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_dynamic_ntk_rotary_equals_its_definition_whatever_the_model_ran_before(arch: str) -> None:
    """Dynamic NTK over a trained context of 8 at 12 tokens: θ' = θ·(s·12/8 − (s − 1))^(d/(d−2)). transformers
    keeps the frequencies of the longest sequence it has seen; after failtrace's reset (models/rotary.py, installed
    by load_model) a forward pass run after a longer one still equals the definition, and without it, it does not."""
    from failtrace.models.rotary import forget_rotary_history

    scaling = {"rope_type": "dynamic", "factor": 4.0}
    ids, longer = _ids(12), _ids(24)
    fn = lambda logits: logits[5] - logits[7]  # noqa: E731
    model = tiny_model(arch, dtype=torch.float64, layers=3, rope=(500.0, 2e3), rope_scaling=scaling, max_positions=8)
    within = tiny_model(arch, dtype=torch.float64, layers=3, rope=(500.0, 2e3), rope_scaling=scaling)
    plain = tiny_model(arch, dtype=torch.float64, layers=3, rope=(500.0, 2e3))
    assert relevance_pass(within, ids, fn).value == pytest.approx(relevance_pass(plain, ids, fn).value, abs=1e-12)
    ref = explicit_attnlrp(model, ids, 5, 7)
    assert abs(ref.delta - relevance_pass(plain, ids, fn).value) > 0.05  # past L the scaling is in effect
    # a first pass runs lrp_rules' one-time 4-token probe (which happens to reset transformers' memory)
    assert relevance_pass(model, ids, fn).value == pytest.approx(ref.delta, rel=1e-12, abs=1e-12)
    with torch.no_grad():
        model(input_ids=torch.tensor([longer]))  # transformers now remembers 24 positions
    assert abs(relevance_pass(model, ids, fn).value - ref.delta) > 1e-2  # ... and rotates 12 tokens by θ'(24)
    assert forget_rotary_history(model) == 1
    with torch.no_grad():
        model(input_ids=torch.tensor([longer]))
    res = relevance_pass(model, ids, fn)
    assert res.value == pytest.approx(ref.delta, rel=1e-12, abs=1e-12)
    assert _worst(res.relevance(), [ref.input, *ref.layers]) < TOL


def test_the_comparison_tells_a_wrong_attention_rule_apart() -> None:
    model = tiny_model("llama", dtype=torch.float64, layers=3)
    ids = _ids(12)
    ref = explicit_attnlrp(model, ids, 5, 7)
    wrong = relevance_pass(model, ids, lambda logits: logits[5] - logits[7], method="cp-lrp").relevance()
    assert _worst(wrong, [ref.input, *ref.layers]) > 1e-2
