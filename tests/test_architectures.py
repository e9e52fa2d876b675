"""The rules install on every supported decoder family without changing its outputs, and conserve at the top."""

from __future__ import annotations

import math

import pytest
import torch

from failtrace.attribution import objective_value, relevance_pass
from failtrace.errors import UnsupportedModelError
from failtrace.lrp import lrp_rules

from conftest import FAMILIES, make_tiny

pytestmark = pytest.mark.tf4

IDS = [3, 17, 5, 42, 8, 61, 2, 33, 12, 90, 7, 1]


def _objective(target: int = 5, contrast: int = 11):
    return lambda logits: objective_value(logits, "logit_diff", target, contrast)


@pytest.mark.parametrize("family", FAMILIES + ["gemma2"])
def test_patched_logits_equal_unpatched(family):
    model = make_tiny(family)
    ids = torch.tensor([IDS])
    with torch.no_grad():
        ref = model(ids).logits
        with lrp_rules(model, "attnlrp") as report:
            ours = model(ids).logits
        after = model(ids).logits
    assert len(report.attention) == model.config.num_hidden_layers
    assert len(report.mlps) == model.config.num_hidden_layers
    assert torch.allclose(ref, ours, atol=1e-5, rtol=1e-4), (ref - ours).abs().max()
    assert torch.equal(ref, after)  # unpatching restores the model exactly


@pytest.mark.parametrize("family", FAMILIES + ["gemma2"])
@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
def test_relevance_finite_and_top_layer_conserves(family, method):
    model = make_tiny(family)
    res = relevance_pass(model, IDS, _objective(), method=method)
    rel = res.relevance()
    assert rel.shape == (model.config.num_hidden_layers + 1, len(IDS))
    assert torch.isfinite(rel).all()
    # the last decoder layer's output feeds the (frozen) final norm and the linear unembedding: exactly Δℓ
    assert math.isclose(float(rel[-1].sum()), res.value, rel_tol=1e-4, abs_tol=1e-5)
    # input relevance is reported and is not identically zero
    assert float(rel[0].abs().sum()) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_relevance_is_finite(family):
    model = make_tiny(family, dtype=torch.bfloat16)
    res = relevance_pass(model, IDS, _objective(), method="attnlrp")
    rel = res.relevance()
    assert torch.isfinite(rel).all()
    assert abs(float(rel[-1].sum()) - res.value) <= 0.05 * (1 + abs(res.value))


def test_cp_lrp_conserves_input_relevance_without_biases():
    """CP-LRP conserves layer by layer up to biases; Llama has none, so every layer sums to Δℓ."""
    model = make_tiny("llama")
    res = relevance_pass(model, IDS, _objective(), method="cp-lrp")
    sums = res.relevance().sum(-1)
    assert torch.allclose(sums, torch.full_like(sums, res.value), rtol=1e-4, atol=1e-5)


def test_attnlrp_differs_from_plain_gradient_times_input():
    model = make_tiny("llama")
    a = relevance_pass(model, IDS, _objective(), method="attnlrp").relevance()[0]
    g = relevance_pass(model, IDS, _objective(), method="gradxinput").relevance()[0]
    assert not torch.allclose(a, g, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_gradient_times_input_is_plain_autograd(family):
    """``gradxinput`` is gradient × input with no rule, checked against transformers' own forward and autograd. On
    Gemma-2 (final logit soft-capping) the cap's identity rule leaked into it: up to 3x off near the cap."""
    model = make_tiny(family, dtype=torch.float64, seed=1)
    g = relevance_pass(model, IDS, _objective(), method="gradxinput").relevance()[0]
    emb = model.get_input_embeddings()(torch.tensor([IDS])).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb, use_cache=False).logits[0, -1]
    fn = _objective()
    (grad,) = torch.autograd.grad(fn(logits), emb)
    plain = (grad[0] * emb[0]).sum(-1)
    assert torch.allclose(g.to(plain.dtype), plain, rtol=1e-6, atol=1e-9), (g, plain)


def test_checkpointing_gives_the_same_relevance():
    model = make_tiny("qwen3")
    a = relevance_pass(model, IDS, _objective(), use_checkpoint=False).relevance()
    b = relevance_pass(model, IDS, _objective(), use_checkpoint=True).relevance()
    assert torch.allclose(a, b, atol=1e-6)


def test_patching_is_scoped_to_one_model():
    m1, m2 = make_tiny("llama", seed=1), make_tiny("llama", seed=1)
    ids = torch.tensor([IDS])

    def input_grad(model):
        emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        out = model(inputs_embeds=emb).logits[0, -1]
        (out[5] - out[11]).backward()
        return emb.grad

    plain = input_grad(m2)
    with lrp_rules(m1):
        other = input_grad(m2)
        patched = input_grad(m1)
    assert torch.equal(plain, other)
    assert not torch.allclose(plain, patched)


def test_unsupported_architecture_is_refused_and_left_intact():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    model = tf.GPT2LMHeadModel(cfg).eval()
    ids = torch.tensor([IDS])
    with torch.no_grad():
        ref = model(ids).logits
    with pytest.raises(UnsupportedModelError, match="not supported|no gated MLP|no q/k/v"):
        with lrp_rules(model):
            pass
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
