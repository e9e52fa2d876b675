"""Integrated gradients checked by its completeness property, not by shape.

Completeness: with baseline x' (zero embeddings here) and the path x(α) = α·x, the exact integral gives
``Σ_i R_i = f(x) − f(x')``. The implementation approximates the integral by the midpoint rule with ``steps`` points,
whose error for a smooth f falls like 1/steps² (error ≈ (f'(1) − f'(0)) / (24·steps²) along the path). So the test
measures |Σ R − (f(x) − f(x'))|, with f(x) and f(x') recomputed by a plain transformers forward pass (``input_ids``,
and ``inputs_embeds`` of zeros), and asserts that the gap is small and shrinks with the step count at about that rate.

The path must be smooth for that: the tiny models get RMSNorm eps = 0.01 (and embeddings 10x larger). With the
usual eps (1e-6) and a zero baseline the path is nearly discontinuous at α → 0: while the residual's RMS is below
sqrt(eps) each RMSNorm is linear with gain |w|/sqrt(eps), so f jumps from f(0) = 0 to its O(1) values within a tiny
α. Measured on the tiny float64 Llama (eps 1e-6, Δf = −0.082): gaps 0.28, 0.25, 0.13, 0.028 at 16, 64, 256, 1024
steps. On the bundled SmolLM2 (eps 1e-5, "The capital of France is", Δf = 2.48): f(1e-6·x) = −7.1 already, and the
gap is 35.9 at 32 steps and 178 at 128: its IG attributions do not add up to f(x) − f(0) at any practical step count.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from failtrace.attribution.baselines import integrated_gradients
from failtrace.attribution.objective import objective_value

from conftest import make_tiny

IDS = [5, 17, 42, 8, 63, 29, 71, 3, 50, 12]
TARGET, CONTRAST = 11, 40


def _f(model: Any, **inputs: torch.Tensor) -> float:
    """The objective (logit difference at the last position) from a plain transformers forward pass."""
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits[0, -1]
    return float(logits[TARGET] - logits[CONTRAST])


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma3", "gemma2"])
def test_ig_completeness_and_its_error_shrinks_with_steps(family: str) -> None:
    model = make_tiny(family, dtype=torch.float64, seed=1)
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert norms
    for norm in norms:  # a smooth path (see the module docstring)
        for attr in ("variance_epsilon", "eps"):
            if hasattr(norm, attr):
                setattr(norm, attr, 1e-2)
    with torch.no_grad():  # embeddings of RMS ~0.2 instead of 0.02: a logit difference well away from 0
        model.get_input_embeddings().weight.mul_(10.0)
    ids = torch.tensor([IDS])
    emb = model.get_input_embeddings()(ids)
    f_x = _f(model, input_ids=ids)
    f_base = _f(model, inputs_embeds=torch.zeros_like(emb))
    delta = f_x - f_base
    assert abs(delta) > 1e-3  # the identity below is not trivially 0 = 0 (measured: 0.0059 to 1.65)

    def fn(logits: torch.Tensor) -> torch.Tensor:
        return objective_value(logits, "logit_diff", TARGET, CONTRAST)

    gaps = {}
    for steps in (4, 16, 64, 256):
        rel, value, _ = integrated_gradients(model, IDS, fn, steps=steps, batch=64)
        assert value == pytest.approx(f_x, abs=1e-9)  # the returned objective is f(x)
        assert rel.shape == (len(IDS),) and np.isfinite(rel).all()
        gaps[steps] = abs(float(rel.sum()) - delta)
    # Measured relative gaps |Σ R − Δf| / |Δf| at 4, 16, 64, 256 steps: llama 1.2e-3, 7.3e-5, 3.8e-6, 3.5e-7;
    # qwen2 2.2e-3 .. 3.2e-7; qwen3 4.1e-3 .. 1.0e-6; gemma3 0.67, 0.18, 2.2e-4, 1.2e-5. Below ~1e-7 the float32
    # alphas of the implementation set a floor.
    rel = {s: g / abs(delta) for s, g in gaps.items()}
    assert rel[256] < 1e-4, rel  # completeness within the step error
    assert rel[4] > rel[16] > rel[64] > rel[256], rel  # the error shrinks as steps grow
    assert rel[16] / rel[64] > 8, rel  # at about the midpoint rule's 1/steps² (16x per 4x steps)


def test_long_inputs_run_fewer_points_per_pass_and_give_the_same_relevance() -> None:
    """The IG batch is sized by the activations one point keeps (tokens × layers × (10·hidden + 3·intermediate)):
    eight points of a 4,800-token SmolLM2 input (46 GB) were killed by the OOM killer on a 23 GB machine. Regrouping
    points never changes the result beyond float summation order."""
    from failtrace.attribution.baselines import IG_BATCH, ig_batch_size

    smollm2 = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    per_token = 30 * (10 * 576 + 3 * 1536) * 4  # bytes per token of one point in float32 (1.24 MB; measured 1.15)
    assert ig_batch_size(smollm2, 100) == IG_BATCH  # short: the full batch
    assert ig_batch_size(smollm2, 4800) == 1  # 6 GB a point: one at a time
    assert ig_batch_size(smollm2, 400, budget=3 * 400 * per_token) == 3
    assert ig_batch_size(smollm2, 400, dtype=torch.bfloat16, budget=3 * 400 * per_token) == 6  # half the bytes
    model = make_tiny("llama", dtype=torch.float64, seed=1)

    def fn(logits: torch.Tensor) -> torch.Tensor:
        return objective_value(logits, "logit_diff", TARGET, CONTRAST)

    one, v1, _ = integrated_gradients(model, IDS, fn, steps=8, batch=1)
    eight, v8, _ = integrated_gradients(model, IDS, fn, steps=8, batch=8)
    assert v1 == v8 and np.allclose(one, eight, rtol=1e-10, atol=1e-12)


def test_ig_without_a_batch_uses_the_sized_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every caller (the ``ig`` method, analyse's baselines) gets the batch :func:`ig_batch_size` gives for the
    input's length and dtype, unless it names one: analyse called it with the old fixed 8 and ran out of memory."""
    import failtrace.attribution.baselines as B
    from failtrace.cases.build import method_relevance
    from failtrace.cases.settings import CaseSettings

    model = make_tiny("llama", dtype=torch.float64, seed=1)
    asked = []
    monkeypatch.setattr(B, "ig_batch_size", lambda cfg, n, dtype, checkpointed: asked.append((n, dtype)) or 3)
    fn = lambda lg: objective_value(lg, "logit_diff", TARGET, CONTRAST)  # noqa: E731
    B.ig_method(model, IDS, fn, ig_steps=6)
    method_relevance(SimpleNamespace(model=model), "ig", IDS, fn, CaseSettings(ig_steps=6), None, "k")
    assert asked == [(len(IDS), torch.float64)] * 2
    sized, _, _ = B.integrated_gradients(model, IDS, fn, steps=6)  # 3 points a pass, as asked
    whole, _, _ = B.integrated_gradients(model, IDS, fn, steps=6, batch=6)
    assert np.allclose(sized, whole, rtol=1e-10, atol=1e-12)


def test_long_inputs_are_checkpointed_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above CHECKPOINT_ABOVE tokens each layer is recomputed in the backward pass (as AttnLRP), which keeps only the
    layers' inputs; the gradients, and so the relevance, are those of the plain pass."""
    import failtrace.attribution.baselines as B
    import failtrace.attribution.engine as E

    model = make_tiny("llama", dtype=torch.float64, seed=1)
    ids = [int(i) for i in torch.randint(3, 90, (B.CHECKPOINT_ABOVE + 40,), generator=torch.Generator().manual_seed(2))]

    def fn(logits: torch.Tensor) -> torch.Tensor:
        return objective_value(logits, "logit_diff", TARGET, CONTRAST)

    seen: list[bool] = []
    real = E.checkpointed_layers
    monkeypatch.setattr(B, "checkpointed_layers", lambda layers, on: seen.append(on) or real(layers, on))
    ckpt, v1, _ = B.integrated_gradients(model, ids, fn, steps=4, batch=2)
    monkeypatch.setattr(B, "CHECKPOINT_ABOVE", 10**9)
    plain, v2, _ = B.integrated_gradients(model, ids, fn, steps=4, batch=2)
    assert seen == [True, False]
    assert v1 == v2 and np.allclose(ckpt, plain, rtol=1e-9, atol=1e-12)
    smollm2 = type("C", (), {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30})()
    assert B.ig_batch_size(smollm2, 4800, checkpointed=True) == 4  # 0.5 GB a point instead of 6


def test_ig_reports_the_value_its_sum_tends_to_and_the_views_say_how_close_it_came(toy_lm: Any) -> None:
    """A run's Σ R was shown against Δℓ alone, but IG's sum tends to f(x) − f(0), and on RMSNorm models it can be
    far from it at any practical step count. The baseline value is now measured (one forward of zero embeddings,
    checked here against plain transformers on a model with biases, where f(0) ≠ 0), and the header says what
    share of f(x) − f(0) the sum reached."""
    from failtrace.attribution.baselines import ig_method
    from failtrace.attribution.core import attribute
    from failtrace.views.common import sum_note, sum_rows

    model = make_tiny("qwen2", dtype=torch.float64, seed=1)  # q/k/v biases: the zero input is not a zero output

    def fn(logits: torch.Tensor) -> torch.Tensor:
        return objective_value(logits, "logit_diff", TARGET, CONTRAST)

    emb = model.get_input_embeddings()(torch.tensor([IDS]))
    f0 = _f(model, inputs_embeds=torch.zeros_like(emb))
    assert abs(f0) > 1e-4
    res = ig_method(model, IDS, fn, ig_steps=8)
    assert res.extra["baseline_value"] == pytest.approx(f0, abs=1e-9)
    assert "baseline_value" not in ig_method(model, IDS, fn, ig_steps=8, with_value=False).extra  # an analysis's

    attr = attribute(toy_lm, "What is two plus two?", TARGET, CONTRAST, method="ig", ig_steps=8, chat=True)
    goal = attr.delta_logit - attr.extra["baseline_value"]
    share = f"{100 * attr.relevance_sum / goal:.0f}%"
    rows = dict(sum_rows(attr))
    assert rows["IG completeness"] == f"Σ input R is {share} of Δℓ − Δℓ(zero embeddings) = {goal:.4f} at 8 steps"
    assert f"({goal:.4g} here)" in sum_note(attr) and f"({share} of it)" in sum_note(attr)
