"""AttnLRP through a whole Llama-family decoder, written out as explicit relevance propagation (test reference).

An independent reference for :func:`failtrace.attribution.engine.relevance_pass`: no autograd and no modified
gradients. The forward pass is recomputed here from the weights alone (float64), and relevance is carried back by
the rules themselves (Achtibat et al., 2024), dividing relevance by activations where the rule says so:

* ε-rule for a linear map y = W x (+ b):      R_x = x ⊙ Wᵀ (R_y / y)   (the bias absorbs its share)
* ε-rule for a sum z = a + b (residual):      R_a = a ⊙ R_z / z,  R_b = b ⊙ R_z / z
* identity rule for RMSNorm and SiLU:         R_in = R_out elementwise
* uniform rule for a product p = a · b:       R_a = R_b = ½ (ε-rule share), for the gate, for A·V and for Q·Kᵀ
* softmax rule (AttnLRP):                     R_S = S ⊙ (R_A − A Σ_j R_A)

The objective is Δℓ = ℓ(target) − ℓ(contrast) at the last position, so the head passes R = f ⊙ (W_t − W_c) to the
final hidden state f of the last token. Covers Llama and SmolLM2, Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms)
OLMo-2/3 (norms after each block, q/k norms over the width), Gemma-3 text ((1 + w) norms before and after each
block, √d-scaled embeddings, its own attention scale, local and global rotary θ, a GELU gate) and Gemma-2 (the
same, plus attention and final logit soft-capping c·tanh(x/c) under the identity rule): RMSNorms, rotary embeddings
unscaled or scaled (linear, llama3, yarn, dynamic NTK), grouped-query attention, sliding windows (Mistral, the local
layers of OLMo-3 and Gemma).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

EPS = 1e-30  # only keeps a 0/0 at 0; the rules themselves have no stabiliser


def _div(a: Tensor, b: Tensor) -> Tensor:
    return a / torch.where(b.abs() < EPS, torch.full_like(b, EPS), b)


def _linear(x: Tensor, lin: Any) -> Tensor:
    y = x @ lin.weight.double().T
    return y if lin.bias is None else y + lin.bias.double()


def _eps_linear(x: Tensor, y: Tensor, lin: Any, r_y: Tensor) -> Tensor:
    """ε-rule: R_x = x ⊙ Wᵀ (R_y / y)."""
    return x * (_div(r_y, y) @ lin.weight.double())


def _rms(x: Tensor, norm: Any) -> Tensor:
    """RMSNorm: x / rms(x) · w, or · (1 + w) for Gemma's; the identity when ``norm`` is None."""
    if norm is None:
        return x
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    x32 = x.float()  # transformers normalises in float32 whatever the dtype; so here, to agree to float64 rounding
    normed = x32 * torch.rsqrt((x32 * x32).mean(-1, keepdim=True) + eps)
    if "Gemma" in type(norm).__name__:  # (1 + w), multiplied in float32 too
        return (normed * (1.0 + norm.weight.float())).double()
    return norm.weight.double() * normed.double()


def _norms(layer: Any) -> tuple[Any, Any, Any, Any]:
    """(before attention, after attention, before the MLP, after the MLP): Llama/Qwen have the first and third,
    OLMo-2 the second and fourth, Gemma-3 all four (None where absent)."""
    post = getattr(layer, "post_feedforward_layernorm", None)
    pre_mlp = getattr(layer, "pre_feedforward_layernorm", None) if post is not None else layer.post_attention_layernorm
    return (getattr(layer, "input_layernorm", None), layer.post_attention_layernorm if post is not None else None,
            pre_mlp, post)


def _heads(x_lin: Tensor, norm: Any, heads: int, head_dim: int) -> Tensor:
    """[n, heads·d] → [heads, n, d], through a q/k RMSNorm over each head (Qwen3) or over the whole width (OLMo-2)."""
    n = x_lin.shape[0]
    if norm is None:
        y = x_lin.view(n, heads, head_dim)
    elif norm.weight.shape[0] == head_dim:
        y = _rms(x_lin.view(n, heads, head_dim), norm)
    else:
        y = _rms(x_lin, norm).view(n, heads, head_dim)
    return y.transpose(0, 1)


def _rotate_half(x: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def _rotate_half_t(y: Tensor) -> Tensor:
    """The transpose of rotate_half: rotate_half(x) = [−x₂, x₁], so its transpose maps [y₁, y₂] to [y₂, −y₁]."""
    h = y.shape[-1] // 2
    return torch.cat([y[..., h:], -y[..., :h]], -1)


def _rope_settings(config: Any, layer_type: str) -> dict[str, Any]:
    """The rotary settings of layers of ``layer_type``: θ, the scaling type and its parameters, on either version."""
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get(layer_type, params)  # 5.x Gemma-3: one set per attention type
    if "rope_theta" in params:  # transformers 5
        return dict(params)
    # 4.x: rope_theta and rope_scaling; Gemma-3's sliding layers turn by rope_local_base_freq, unscaled
    local = getattr(config, "rope_local_base_freq", None) if layer_type == "sliding_attention" else None
    if local is not None:
        return {"rope_theta": local, "rope_type": "default"}
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    scaling.setdefault("rope_type", scaling.get("type", "default"))
    return {**scaling, "rope_theta": getattr(config, "rope_theta", None) or 10000.0}


def _scaled_frequencies(inv: Tensor, p: dict[str, Any], theta: float, dim: int) -> tuple[Tensor, float]:
    """Inverse frequencies under the scaling types of long-context models, and the factor on cos and sin.

    * linear (Gemma-3 ≥ 4B): every frequency divided by the factor s (positions interpolated);
    * llama3 (Llama-3.1/3.2): wavelengths 2π/ω longer than L/low_freq_factor divided by s, shorter than
      L/high_freq_factor kept, in between blended by how many turns fit in L (L = the original context);
    * yarn (Peng et al., 2023): frequency index i blended between ω_i/s and ω_i by a ramp over the index range
      whose wavelengths fit between β_fast and β_slow turns in L (bounds rounded outward), and cos, sin scaled by
      0.1 ln s + 1.
    """
    kind, s = p.get("rope_type", "default"), float(p.get("factor") or 1.0)
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / s, 1.0
    L = float(p["original_max_position_embeddings"])
    if kind == "llama3":
        wavelength = 2 * torch.pi / inv
        turns = L / wavelength  # how many times each frequency turns over the original context
        lo, hi = float(p["low_freq_factor"]), float(p["high_freq_factor"])
        blend = ((turns - lo) / (hi - lo)).clamp(0, 1)  # 0: slow (divided by s), 1: fast (kept)
        return (1 - blend) * inv / s + blend * inv, 1.0
    if kind == "yarn":
        def index_of(turns: float) -> float:  # the (fractional) frequency index that turns `turns` times in L
            return dim * math.log(L / (turns * 2 * math.pi)) / (2 * math.log(theta))
        lo = max(math.floor(index_of(float(p.get("beta_fast") or 32))), 0)
        hi = min(math.ceil(index_of(float(p.get("beta_slow") or 1))), dim - 1)
        hi = hi + 1e-3 if hi == lo else hi
        keep = 1 - ((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
        factor = p.get("attention_factor") or (0.1 * math.log(s) + 1.0 if s > 1 else 1.0)
        return inv / s * (1 - keep) + inv * keep, float(factor)
    raise ValueError(f"explicit reference covers default, linear, llama3, yarn and dynamic rotary embeddings, not "
                     f"{kind!r}")


def _rope_tables(config: Any, n: int, head_dim: int, layer_type: str) -> tuple[Tensor, Tensor]:
    p = _rope_settings(config, layer_type)
    theta = float(p["rope_theta"])
    if p.get("rope_type") == "dynamic":  # dynamic NTK: θ' = θ·(s·n/L − (s − 1))^(d/(d−2)) past the trained context L
        s, L = float(p["factor"]), float(config.max_position_embeddings)
        grown = (s * torch.tensor(max(float(n), L)) / L - (s - 1)) ** (head_dim / (head_dim - 2))  # float32 too
        theta = theta * grown  # type: ignore[assignment]  (a float32 scalar tensor from here on)
        p = {**p, "rope_type": "default"}
    # in float32, as transformers computes the tables whatever the model's dtype, so that a float64 model's own
    # forward and this one agree to float64 rounding (float64 tables here would differ from it by ~1e-7)
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    inv, factor = _scaled_frequencies(inv, p, theta, head_dim)
    ang = torch.arange(n, dtype=torch.float32)[:, None] * inv[None]
    ang = torch.cat([ang, ang], -1)  # [n, head_dim]
    return (ang.cos() * factor).double(), (ang.sin() * factor).double()


@dataclass
class ExplicitRelevance:
    """Per-token relevance of the embeddings (``input``) and of each layer's output stream (``layers``), and Δℓ."""

    input: Tensor  # [n]
    layers: list[Tensor]  # [n] per decoder layer output
    delta: float


def _visible(n: int, window: int | None) -> Tensor:
    """[n, n]: may query i see key j? Causal (j ≤ i), and within a sliding window when there is one (i − j < W)."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    return (j <= i) & ((i - j < window) if window else True)


def _window(cfg: Any, layer_type: str) -> int | None:
    """The layer's sliding window: by layer type where the config lists them (Gemma-3), else the config's own."""
    if getattr(cfg, "layer_types", None):
        return cfg.sliding_window if layer_type == "sliding_attention" else None
    return cfg.sliding_window if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) \
        else None


def _capped(x: Tensor, cap: float | None) -> Tensor:
    """Soft-capping c · tanh(x / c) (Gemma-2), or x."""
    return cap * torch.tanh(x / cap) if cap else x


def _attention_back(q: Tensor, k: Tensor, v: Tensor, r_o: Tensor, scaling: float, causal: Tensor,
                    cap: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """AttnLRP on one attention, heads [H, n, d] (k, v already repeated to H heads; ``causal``: the visible pairs;
    ``cap``: logit soft-capping before the softmax, under the identity rule): R_q, R_k, R_v."""
    raw = scaling * q @ k.transpose(-1, -2)
    s = _capped(raw, cap)
    a = torch.softmax(s.masked_fill(~causal, float("-inf")), -1)
    o = a @ v
    share = _div(r_o, o)  # ε-rule on each term A_ji V_id of O_jd, then the uniform split between A and V
    r_a = 0.5 * a * (share @ v.transpose(-1, -2))
    r_v = 0.5 * v * (a.transpose(-1, -2) @ share)
    s0 = torch.where(causal, s, torch.zeros_like(s))
    r_s = s0 * (r_a - a * r_a.sum(-1, keepdim=True))  # softmax rule; masked scores carry nothing
    share_s = _div(r_s, torch.where(causal, raw, torch.ones_like(raw)))  # identity through the cap, then ε on QKᵀ
    r_q = 0.5 * q * (scaling * share_s @ k)
    r_k = 0.5 * k * (scaling * share_s.transpose(-1, -2) @ q)
    return r_q, r_k, r_v


def explicit_attnlrp(model: Any, ids: list[int], target: int, contrast: int) -> ExplicitRelevance:
    """AttnLRP relevance of Δℓ = ℓ(target) − ℓ(contrast) at the last position of ``ids`` (module docstring)."""
    cfg, base = model.config, model.model
    n, H, Hkv = len(ids), cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * len(base.layers)
    scaling = float(getattr(cfg, "query_pre_attn_scalar", None) or hd) ** -0.5  # Gemma-3 scales by its own scalar
    gelu = "gelu" in str(getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", ""))
    attn_cap = getattr(cfg, "attn_logit_softcapping", None)  # Gemma-2
    final_cap = getattr(cfg, "final_logit_softcapping", None)
    with torch.no_grad():
        emb = base.embed_tokens
        h = emb.weight.double()[torch.as_tensor(ids)]
        if hasattr(emb, "embed_scale"):  # Gemma: √d, in the weights' dtype
            h = h * emb.embed_scale.to(emb.weight.dtype).double()
        elif "gemma" in str(getattr(cfg, "model_type", "")):  # transformers 4.x's Gemma-2 scales inside the model
            h = h * torch.tensor(cfg.hidden_size ** 0.5, dtype=emb.weight.dtype).double()
        saved = []
        for layer, kind in zip(base.layers, types):
            at = layer.self_attn
            cos, sin = _rope_tables(cfg, n, hd, kind)
            pre_attn, post_attn, pre_mlp, post_mlp = _norms(layer)
            a_in = _rms(h, pre_attn)
            q_lin, k_lin, v_lin = (_linear(a_in, p) for p in (at.q_proj, at.k_proj, at.v_proj))
            q = _heads(q_lin, getattr(at, "q_norm", None), H, hd)
            k = _heads(k_lin, getattr(at, "k_norm", None), Hkv, hd)
            v = _heads(v_lin, None, Hkv, hd)
            q_r, k_r = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            rep = H // Hkv
            k_h, v_h = k_r.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            causal = _visible(n, _window(cfg, kind))
            s = _capped(scaling * q_r @ k_h.transpose(-1, -2), attn_cap)
            o = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v_h
            o_flat = o.transpose(0, 1).reshape(n, H * hd)
            attn = _linear(o_flat, at.o_proj)
            attn_out = _rms(attn, post_attn)
            mid = h + attn_out
            m_in = _rms(mid, pre_mlp)
            mlp = layer.mlp
            zg, zu = _linear(m_in, mlp.gate_proj), _linear(m_in, mlp.up_proj)
            act = torch.nn.functional.gelu(zg, approximate="tanh") if gelu else torch.nn.functional.silu(zg)
            p = act * zu
            down = _linear(p, mlp.down_proj)
            down_out = _rms(down, post_mlp)
            out = mid + down_out
            saved.append(dict(causal=causal, cos=cos, sin=sin, h=h, a_in=a_in, q=(q, q_lin), k=(k, k_lin),
                              v=(v, v_lin), q_r=q_r, k_h=k_h, v_h=v_h,
                              o=o, o_flat=o_flat, attn=attn, attn_out=attn_out, mid=mid, m_in=m_in, zg=zg, zu=zu, p=p,
                              down=down, down_out=down_out, out=out))
            h = out
        f = _rms(h, base.norm)
        head = model.get_output_embeddings().weight.double()
        z_t, z_c = f[-1] @ head[target], f[-1] @ head[contrast]
        l_t, l_c = _capped(z_t, final_cap), _capped(z_c, final_cap)
        delta = float(l_t - l_c)

        r = torch.zeros_like(f)
        # ε-rule through the head for the difference objective (R = ℓ_t for the target's logit, −ℓ_c for the
        # contrast's), through a final soft-cap by the identity rule; final norm: identity
        r[-1] = f[-1] * (head[target] * _div(l_t, z_t) - head[contrast] * _div(l_c, z_c))
        per_layer: list[Tensor] = []
        for layer, sv in zip(reversed(base.layers), reversed(saved)):
            per_layer.append(r.sum(-1))
            at, mlp = layer.self_attn, layer.mlp
            r_mid = sv["mid"] * _div(r, sv["out"])  # residual: ε-rule on the sum
            r_down = sv["down_out"] * _div(r, sv["out"])  # then the identity rule of a post-MLP norm
            r_p = _eps_linear(sv["p"], sv["down"], mlp.down_proj, r_down)
            r_half = 0.5 * r_p  # uniform rule on act(zg) · zu; identity on the activation
            r_m_in = _eps_linear(sv["m_in"], sv["zg"], mlp.gate_proj, r_half) + \
                _eps_linear(sv["m_in"], sv["zu"], mlp.up_proj, r_half)
            r_mid = r_mid + r_m_in  # identity rule on the pre-MLP RMSNorm (or none)
            r_h = sv["h"] * _div(r_mid, sv["mid"])
            r_attn = sv["attn_out"] * _div(r_mid, sv["mid"])  # then the identity rule of a post-attention norm
            r_o = _eps_linear(sv["o_flat"], sv["attn"], at.o_proj, r_attn).view(n, H, hd).transpose(0, 1)
            r_qr, r_kh, r_vh = _attention_back(sv["q_r"], sv["k_h"], sv["v_h"], r_o, scaling,
                                                 sv["causal"], attn_cap)
            rep = H // Hkv
            r_kr = r_kh.view(Hkv, rep, n, hd).sum(1)  # repeated heads: their relevances add up
            r_v = r_vh.view(Hkv, rep, n, hd).sum(1)
            r_a_in, cos, sin = torch.zeros_like(sv["a_in"]), sv["cos"], sv["sin"]
            for (x, x_lin), r_rot, lin in ((sv["q"], r_qr, at.q_proj), (sv["k"], r_kr, at.k_proj),
                                           (sv["v"], r_v, at.v_proj)):
                if lin is not at.v_proj:  # rotary embedding: linear, ε-rule with J = cos·I + sin·rotate_half
                    rot = x * cos + _rotate_half(x) * sin
                    u = _div(r_rot, rot)
                    r_rot = x * (u * cos + _rotate_half_t(u * sin))
                r_lin = r_rot.transpose(0, 1).reshape(n, -1)  # identity rule on a q/k norm
                r_a_in = r_a_in + _eps_linear(sv["a_in"], x_lin, lin, r_lin)
            r = r_h + r_a_in  # identity rule on the input RMSNorm (or none)
        per_layer.reverse()
        return ExplicitRelevance(input=r.sum(-1), layers=per_layer, delta=delta)
