"""The "attention" and "random" baselines against plain transformers / numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from failtrace.attribution.attention import attention_relevance, random_relevance


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_attention_matches_an_eager_model(tiny, family):
    model = tiny(family)  # loaded with sdpa: the baseline must switch to eager and back
    before = model.config._attn_implementation
    ids = torch.randint(3, 97, (11,), generator=torch.Generator().manual_seed(4)).tolist()
    with torch.no_grad():
        logits_before = model(input_ids=torch.tensor([ids])).logits
    got = attention_relevance(model, ids)
    assert model.config._attn_implementation == before
    with torch.no_grad():
        assert torch.equal(model(input_ids=torch.tensor([ids])).logits, logits_before)
    # independent: a separate copy of the same weights built with eager attention from the start
    import transformers as tf

    cfg = model.config.__class__.from_dict(model.config.to_dict())
    cfg._attn_implementation = "eager"
    eager = tf.AutoModelForCausalLM.from_config(cfg)
    eager.load_state_dict(model.state_dict())
    eager.eval()
    with torch.no_grad():
        att = eager(input_ids=torch.tensor([ids]), output_attentions=True).attentions[-1][0]
    want = np.array([float(sum(att[h, -1, i] for h in range(att.shape[0])) / att.shape[0]) for i in range(len(ids))])
    assert got.shape == (len(ids),)
    assert got == pytest.approx(want, abs=1e-6)
    assert got.sum() == pytest.approx(1.0, abs=1e-5)


def test_attention_keeps_no_other_layer_s_weights(tiny, monkeypatch):
    """The baseline reads one row of the last layer: asking transformers for ``output_attentions`` kept every layer's
    T×T weights (25 GB for SmolLM2 at 4,800 tokens, an OOM kill on a 23 GB machine). The model is called without
    it, and the hook sees each layer's weights only while that layer runs."""
    model = tiny("llama")
    calls: list[dict] = []
    real = model.forward

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    got = attention_relevance(model, list(range(3, 20)))
    assert len(calls) == 1 and not calls[0].get("output_attentions")
    assert got.shape == (17,) and got.sum() == pytest.approx(1.0, abs=1e-5)


def test_random_relevance_is_seeded_and_positive():
    a, b, c = random_relevance(50, 7), random_relevance(50, 7), random_relevance(50, 8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(a, 1.0 - np.random.default_rng(7).random(50))
    assert (a > 0).all() and (a <= 1).all()
