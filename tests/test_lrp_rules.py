"""Each AttnLRP rule, installed on real transformers modules, equals the explicit LRP formula written out here.

The explicit formulas follow Achtibat et al. (2024): ε-rule for linear maps and for each factor of a bilinear
product (with the uniform split), identity rule for norms and elementwise activations, and the AttnLRP softmax rule.
They are computed in float64 with relevance divisions, independently of the modified-gradient implementation.
"""

from __future__ import annotations

import pytest
import torch

from failtrace.lrp import lrp_rules
from failtrace.lrp.patch import lrp_attention
from failtrace.lrp.rules import identity_activation, scale_grad, uniform_product

pytestmark = pytest.mark.tf4
torch.manual_seed(0)
EPS = 1e-30


def _lrp_grad_input(fn, *inputs, seed):
    """x ⊙ g for each input under the (already installed) modified backward, seeded with ``seed``."""
    xs = [x.clone().requires_grad_(True) for x in inputs]
    out = fn(*xs)
    out.backward(seed)
    return out.detach(), [x.detach() * x.grad for x in xs]


def _eps_div(a, b):
    return a / torch.where(b.abs() < EPS, torch.full_like(b, EPS), b)


def test_scale_grad_and_uniform_product_are_exact_in_forward():
    x = torch.randn(50, dtype=torch.float32)
    assert torch.equal(scale_grad(x, 0.25), x)
    a, b = torch.randn(50), torch.randn(50)
    assert torch.equal(uniform_product(a, b), a * b)
    y = torch.nn.functional.silu(a)
    assert torch.equal(identity_activation(a, y, at_zero=0.5), y)


def test_uniform_product_rule_halves_relevance():
    a, b, g = (torch.randn(3, 7, dtype=torch.float64) for _ in range(3))
    out, (ra, rb) = _lrp_grad_input(uniform_product, a, b, seed=g)
    r_out = out * g
    assert torch.allclose(ra, 0.5 * r_out) and torch.allclose(rb, 0.5 * r_out)


def test_identity_rule_on_activation_passes_relevance_elementwise():
    x = torch.randn(4, 9, dtype=torch.float64)
    x[0, 0] = 0.0  # the x = 0 guard
    g = torch.randn_like(x)
    out, (rx,) = _lrp_grad_input(lambda t: identity_activation(t, torch.nn.functional.gelu(t), 0.5), x, seed=g)
    assert torch.allclose(rx, out * g)


def test_norms_identity_rule_on_installed_modules(tiny):
    """RMSNorm (Llama), (1+w) RMSNorm (Gemma-3): R_in = R_out elementwise (normaliser frozen)."""
    for family in ("llama", "gemma3", "olmo2"):
        model = tiny(family, dtype=torch.float64)
        with lrp_rules(model) as report:
            assert report.norms, family
            names = list(report.norms)
            mods = dict(model.named_modules())
            for name in names[:3]:
                norm = mods[name]
                x = torch.randn(2, 5, norm.weight.shape[0], dtype=torch.float64) * 2
                g = torch.randn_like(x)
                out, (rx,) = _lrp_grad_input(norm, x, seed=g)
                assert torch.allclose(rx, out * g, atol=1e-10), (family, name)
        assert {"rms1p"} <= set(report.norms.values()) if family == "gemma3" else True


def test_gated_mlp_equals_explicit_epsilon_and_uniform_rules(tiny):
    model = tiny("llama", dtype=torch.float64)
    mlp = model.model.layers[0].mlp
    x = torch.randn(3, 32, dtype=torch.float64)
    g = torch.randn(3, 32, dtype=torch.float64)
    with lrp_rules(model):
        out, (rx,) = _lrp_grad_input(mlp, x, seed=g)
    # explicit propagation
    Wg, Wu, Wd = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
    z_g, z_u = x @ Wg.T, x @ Wu.T
    a = torch.nn.functional.silu(z_g)
    p = a * z_u
    y = p @ Wd.T
    r_y = y * g
    # ε-rule through down_proj: R_p_i = Σ_j p_i Wd_ji R_y_j / y_j
    r_p = p * (_eps_div(r_y, y) @ Wd)
    r_a, r_u = 0.5 * r_p, 0.5 * r_p  # uniform rule on the product
    r_zg = r_a  # identity rule on the activation
    r_x = x * (_eps_div(r_zg, z_g) @ Wg) + x * (_eps_div(r_u, z_u) @ Wu)
    assert torch.allclose(out, y)
    assert torch.allclose(rx, r_x, atol=1e-9)


class _Attn(torch.nn.Module):
    is_causal = True

    def __init__(self, rule: str) -> None:
        super().__init__()
        self._failtrace_rule = rule
        self.num_key_value_groups = 1


def _explicit_attnlrp(q, k, v, g, scaling):
    """AttnLRP by hand for one batch, heads [H, n, d]: ε+uniform on AV and QKᵀ, softmax rule in between."""
    n = q.shape[-2]
    s = scaling * q @ k.transpose(-1, -2)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    s_masked = s.masked_fill(~causal, float("-inf"))
    a = torch.softmax(s_masked, -1)
    o = a @ v
    r_o = o * g
    # ε-rule on each term A_ji V_id of O_jd, split uniformly between A and V
    share = _eps_div(r_o, o)  # [H, n, d]
    r_a = 0.5 * a * (share @ v.transpose(-1, -2))  # Σ_d A_ji V_id R_O_jd / O_jd
    r_v = 0.5 * v * (a.transpose(-1, -2) @ share)
    # softmax rule: R_S = S ⊙ (R_A − A Σ R_A)  (masked entries have A = 0 and carry no relevance)
    r_s = torch.where(causal, s, torch.zeros_like(s)) * (r_a - a * r_a.sum(-1, keepdim=True))
    share_s = _eps_div(r_s, torch.where(causal, s, torch.ones_like(s)))
    r_q = 0.5 * q * (scaling * share_s @ k)
    r_k = 0.5 * k * (scaling * share_s.transpose(-1, -2) @ q)
    return o, r_q, r_k, r_v


def test_attention_equals_explicit_attnlrp():
    H, n, d = 2, 6, 4
    q, k, v = (torch.randn(1, H, n, d, dtype=torch.float64) for _ in range(3))
    g = torch.randn(1, n, H, d, dtype=torch.float64)  # HF attention returns [b, n, H, d]
    scaling = d ** -0.5

    def run(q_, k_, v_):
        out, _ = lrp_attention(_Attn("attnlrp"), q_, k_, v_, None, scaling=scaling)
        return out

    out, (rq, rk, rv) = _lrp_grad_input(run, q, k, v, seed=g)
    o, eq, ek, ev = _explicit_attnlrp(q[0], k[0], v[0], g[0].transpose(0, 1), scaling)
    assert torch.allclose(out[0].transpose(0, 1), o, atol=1e-12)
    for ours, ref in ((rq, eq), (rk, ek), (rv, ev)):
        assert torch.allclose(ours[0], ref, atol=1e-9)


def test_cp_lrp_attention_sends_relevance_through_values_only():
    H, n, d = 2, 5, 3
    q, k, v = (torch.randn(1, H, n, d, dtype=torch.float64) for _ in range(3))
    g = torch.randn(1, n, H, d, dtype=torch.float64)

    def run(q_, k_, v_):
        return lrp_attention(_Attn("cp-lrp"), q_, k_, v_, None, scaling=0.5)[0]

    xs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = run(*xs)
    out.backward(g)
    assert xs[0].grad is None and xs[1].grad is None
    # with A constant the value relevance is conserved: Σ R_v = Σ R_out
    assert torch.allclose((xs[2] * xs[2].grad).sum(), (out * g).sum())


def test_softcap_attention_matches_transformers_eager_forward(tiny):
    """The Gemma-2 soft-capped eager path reproduces the model's own logits when patched."""
    model = tiny("gemma2")
    ids = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        ref = model(ids).logits
        with lrp_rules(model):
            ours = model(ids).logits
    assert torch.allclose(ref, ours, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_half_precision_norms_get_their_own_formula_when_a_few_weights_are_large(tiny, family, dtype):
    """Real Gemma-3 norm weights reach |w| = 300 in a few dimensions. A tolerance scaled by the largest output then
    hid w versus 1 + w in every other dimension, and half the (1+w) norms of Gemma-3-270M in bf16 were frozen as
    plain RMSNorms (last-layer relevance 11.7 for Δℓ 7.75). Each norm must get the formula that fits it best."""
    model = tiny(family, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p[:2] = 300.0  # a few large dimensions, the rest as drawn
    model = model.to(dtype)
    with lrp_rules(model) as report:
        kinds = set(report.norms.values())
    assert kinds == ({"rms1p"} if family == "gemma3" else {"rms"}), (family, dtype, report.norms)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_norm_with_a_bias_no_formula_has_is_refused_in_every_precision(dtype):
    """An RMSNorm plus a bias matches none of failtrace's formulas: refused in float32, but in half precision with
    a few large weights the tolerance (scaled by the largest output) let it pass as (1+w), its bias's relevance
    silently dropped."""
    from failtrace.lrp.patch import _classify_norm

    class BiasedRMSNorm(torch.nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(d, generator=torch.Generator().manual_seed(3)) * 0.3)
            self.variance_epsilon = 1e-6
            with torch.no_grad():
                self.weight[:2] = 300.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return (y * (1.0 + self.weight.float()) + 1.0).to(x.dtype)

    assert _classify_norm(BiasedRMSNorm(64).to(dtype)) is None
