r"""Closed-form edges of one decoder layer: all n×n edges for about the cost of a few attention forwards.

Notation (one layer, source stage h = h_s, target stage h_t; rows j are targets, columns i sources)::

    A[j, i] = Σ_k h^{(i,k)} ∂⟨h_t^{(j)}, g_t^{(j)}⟩ / ∂h^{(i,k)}          (modified, AttnLRP backward)

Everything below is about the *modified* Jacobian J̃: the Jacobian of the patched layer, in which normalisers are
frozen, the gated MLP uses the identity/uniform rules, and the gradients reaching q, k, v are scaled by
f_q = f_k = ¼, f_v = ½ (``attnlrp``; ``cp-lrp``: 0, 0, 1; ``gradxinput``: 1, 1, 1), read from the rule table
:data:`failtrace.lrp.methods.LRP_METHODS` that the patch installs.

**1. The MLP block is token-local.** h_t = h_mid + M(h_mid) with M acting on each token alone (pre/post norms with
frozen σ, gated MLP), so ∂h_t^{(j)}/∂h^{(i)} = (I + J̃_M^{(j)}) ∂h_mid^{(j)}/∂h^{(i)}. With
G_j = (I + J̃_M^{(j)})ᵀ g_t^{(j)}, obtained for *every* j by one backward pass through the MLP block (the seed
is g_t at all tokens at once; no token mixes with another), A[j, i] = Σ_k h^{(i,k)} ∂⟨h_mid^{(j)}, G_j⟩/∂h^{(i,k)}.
The same G is the modified gradient at the mid-node, so this also gives the mid-node relevance R_mid = h_mid·G and
the edges of the (purely diagonal) MLP transition mid → out: A_mlp[j, j] = R_mid^{(j)}.

**2. Attention block.** h_mid^{(j)} = h^{(j)} + N_post(W_o o_j + b_o) with, per query head a,
o_j^a = Σ_m p^a_{jm} v^a_m, p^a_{jm} = softmax_m(s^a_{jm} + mask), s^a_{jm} = c q^a_j·k^a_m (c = ``scaling``),
where q, k, v are the attention function's inputs (after q_proj/k_proj/v_proj with any biases, q_norm/k_norm,
rotary embedding; GQA: key/value head = a // group). Everything between o_j and h_mid^{(j)} is token-local and
linear in the modified backward (o_proj, frozen-σ post-norm, residual), so one backward of ⟨h_mid, G⟩ to the
attention output gives δ^a_j = ∂⟨h_mid^{(j)}, G_j⟩/∂o^a_j for all j at once.

Backward of attention for one target row j (ordinary calculus, then the AttnLRP factors):

* to v_i: p^a_{ji} δ^a_j, times f_v;
* to s_{jm}: E^a_{jm} = p^a_{jm}(δ^a_j·v^a_m − δ^a_j·o^a_j) (the softmax Jacobian, left as is by AttnLRP);
* to k_i: c E^a_{ji} q^a_j, times f_k;  to q_j: c Σ_m E^a_{jm} k^a_m, times f_q.

**3. Contracting with h (Euler / JVP).** For a token-local map x^{(i)} = φ(h^{(i)}) (here: h → q, k or v),
Σ_k h^{(i,k)} [J̃_φᵀ u]_k = (J̃_φ h^{(i)})·u. Call x̂ = J̃_φ h the *hat* quantity. With frozen normalisers φ is affine
in h^{(i)}, so by Euler's theorem x̂ is x minus the parts that do not scale with h: q̂ = q − (bias terms), e.g. for
Qwen2 k̂ = R_i ν_k(W_k N(h)) without b_k, and with LayerNorm the norm's bias is dropped too. Rather than writing
those formulas per architecture, the hats are computed as forward-mode JVPs of the patched q/k/v computation with
the tangent h itself (the detach-based rules give exactly J̃ in forward mode), which covers biases, GQA, RoPE
(linear), q_norm/k_norm of Qwen3/OLMo-2/Gemma-3 (frozen-σ norms are linear) and any pre-norm in one go.
Only the ordinary bias-carrying values enter the softmax term E (the backward uses the actual v and o).

Putting it together, per head a (then summed over heads) and with the residual contributing h^{(j)}·G_j::

    A[j, i] =  f_v  p_{ji} (δ_j·v̂_i)                       value path
            +  f_k  c E_{ji} (q_j·k̂_i)                      key path
            + [i = j] ( f_q c Σ_m E_{jm} (q̂_j·k_m)          query path (q_j depends on h^{(j)} only)
                        + h^{(j)}·G_j )                      residual

Each term is an n×n matrix per head built from three or four batched matrix products (QKᵀ, Δ V̂ᵀ, Δ Vᵀ, Q K̂ᵀ,
Q̂ Kᵀ), computed for blocks of target rows so that no full n×n matrix per head is held (see ``rows``).

**4. What is not covered (the caller falls back to the packed method and says so):** layers that are not
``h + attn-block`` then ``+ MLP-block`` (see :mod:`.layers`), attention logit soft-capping (Gemma-2), attention
sinks or position biases passed to the attention function, and any attention function call we do not see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD

from failtrace.graph.layers import LayerSplit, attention_function, attn_block, mlp_block
from failtrace.lrp.methods import LRP_METHODS

Tensor = torch.Tensor

CAPTURE_NAME = "failtrace_graph_capture"
# keyword arguments of the attention call that change the computation in ways the closed form does not model
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "attention_bias", "alibi")
_WHAT = {"softcap": "logit soft-capping", "s_aux": "attention sinks", "sinks": "attention sinks",
         "position_bias": "a position bias", "attention_bias": "an attention bias", "alibi": "ALiBi"}
_IGNORED_KWARGS = ("dropout", "sliding_window", "position_ids", "cache_position", "use_cache", "output_attentions",
                   "is_causal", "layer_idx")


class ClosedFormUnsupported(Exception):
    """This layer is outside what the closed form models; the caller falls back to the packed method."""


def attention_factors(rule: str) -> tuple[float, float, float]:
    """(f_q, f_k, f_v): the gradient factors the LRP method ``rule`` applies to q, k and v (the shared rule table)."""
    if rule not in LRP_METHODS:
        raise ClosedFormUnsupported(f"unknown attention rule {rule!r}")
    m = LRP_METHODS[rule]
    return m.q, m.k, m.v


@dataclass
class _Captured:
    query: Tensor
    key: Tensor
    value: Tensor
    q_hat: Tensor
    k_hat: Tensor
    v_hat: Tensor
    mask: Tensor | None
    scaling: float
    causal: bool
    out_leaf: Tensor
    module: Any


_ACTIVE: list[_Captured] = []
_REGISTERED = False


def _capture_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                       attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                       **kwargs: Any) -> tuple[Tensor, None]:
    """Attention function used while preparing a layer: records q, k, v and their tangents, returns a leaf output."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bad = [_WHAT.get(k, k) for k in _UNSUPPORTED_KWARGS if kwargs.get(k) is not None]
    if getattr(module, "attn_logit_softcapping", None) and _WHAT["softcap"] not in bad:
        bad.append(_WHAT["softcap"])
    if bad:
        raise ClosedFormUnsupported(f"its attention uses {' and '.join(bad)}")
    prim = [fwAD.unpack_dual(t) for t in (query, key, value)]
    if any(p.tangent is None for p in prim):
        raise ClosedFormUnsupported("q/k/v carry no forward-mode tangent (an op without forward-mode AD support)")
    q, k, v = (p.primal.detach() for p in prim)
    if scaling is None:
        scaling = 1.0 / math.sqrt(q.shape[-1])
    with torch.no_grad():
        clean = {kk: vv for kk, vv in kwargs.items() if kk not in _IGNORED_KWARGS}
        out, _ = sdpa_attention_forward(module, q, k, v, attention_mask, dropout=0.0, scaling=scaling, **clean)
    leaf = out.detach().requires_grad_(True)
    _ACTIVE.append(_Captured(
        query=q, key=k, value=v, q_hat=prim[0].tangent.detach(), k_hat=prim[1].tangent.detach(),
        v_hat=prim[2].tangent.detach(), mask=attention_mask, scaling=float(scaling),
        causal=bool(getattr(module, "is_causal", True)), out_leaf=leaf, module=module,
    ))
    return leaf, None


def _register() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(CAPTURE_NAME, _capture_attention)
        _REGISTERED = True


def _repeat_heads(x: Tensor, heads: int) -> Tensor:
    """[Hkv, n, d] → [H, n, d] with query head a using key/value head a // (H / Hkv)."""
    rep = heads // x.shape[0]
    return x if rep == 1 else x.repeat_interleave(rep, dim=0)


class ClosedFormLayer:
    """One decoder layer prepared for closed-form edges (see the module docstring for the derivation).

    Construction runs the attention block once (forward mode, tangent = the input itself) and the MLP block once
    (one backward), then :meth:`rows` gives any block of target rows of the edge matrix.
    """

    def __init__(self, split: LayerSplit, kwargs: dict[str, Any], h_s: Tensor, g_t: Tensor,
                 h_t_reference: Tensor | None = None, compute_dtype: torch.dtype = torch.float32) -> None:
        self.fq, self.fk, self.fv = attention_factors(getattr(split.attn, "_failtrace_rule", "gradxinput"))
        _register()
        self.dtype = compute_dtype
        n, d = h_s.shape
        self.n = n
        x = h_s.detach()[None].clone().requires_grad_(True)
        _ACTIVE.clear()
        try:
            with torch.enable_grad(), fwAD.dual_level(), attention_function([split.attn], CAPTURE_NAME):
                dual = fwAD.make_dual(x, x.detach())
                h_mid_dual = attn_block(split, kwargs, dual)  # its backward graph reaches the captured output leaf
                if len(_ACTIVE) != 1:
                    raise ClosedFormUnsupported(f"the attention function was called {len(_ACTIVE)} times, not once")
                cap = _ACTIVE[0]
                h_mid = fwAD.unpack_dual(h_mid_dual).primal.detach()
                # MLP block: token-local backward gives G (the modified gradient at the mid-node) for all tokens
                xm = h_mid.clone().requires_grad_(True)
                h_t = mlp_block(split, xm)
                (G,) = torch.autograd.grad(h_t, xm, g_t.detach()[None].to(h_t.dtype))
                (delta,) = torch.autograd.grad(h_mid_dual, cap.out_leaf, G)
        finally:
            _ACTIVE.clear()
        if h_t_reference is not None:
            ref = h_t_reference.to(h_t.dtype)
            err = float((h_t.detach()[0] - ref).abs().max())
            tol = (1e-4 if h_s.dtype == torch.float32 else 3e-2) * (float(ref.abs().max()) + 1e-6)
            if err > tol:
                raise ClosedFormUnsupported(f"the split layer does not reproduce the layer output (error {err:.2e})")
        self.h_mid = h_mid[0]
        self.G = G[0].detach()
        dt = compute_dtype
        heads = cap.query.shape[1]
        self.heads = heads
        self.q = cap.query[0].to(dt)                       # [H, n, dh]
        self.q_hat = cap.q_hat[0].to(dt)
        self.k = _repeat_heads(cap.key[0].to(dt), heads)   # [H, n, dh]
        self.k_hat = _repeat_heads(cap.k_hat[0].to(dt), heads)
        self.v = _repeat_heads(cap.value[0].to(dt), heads)
        self.v_hat = _repeat_heads(cap.v_hat[0].to(dt), heads)
        self.delta = delta[0].transpose(0, 1).to(dt)      # attention output is [1, n, H, dh] → [H, n, dh]
        self.o = cap.out_leaf.detach()[0].transpose(0, 1).to(dt)
        self.scaling = cap.scaling
        self.causal = cap.causal
        mask = cap.mask
        self.mask = None if mask is None else mask[0]      # [1 or H, q, kv]
        # columns after the last target row can be skipped when nothing attends to a later token
        self.lower_triangular = self.causal if self.mask is None else not bool(
            torch.triu(self._allowed(self.mask), diagonal=1).any())
        self.h_s = h_s.detach().to(dt)
        # Σ_m E_{jm}(q̂_j·k_m) and δ_j·o_j are row quantities; δ·o is needed per head for E
        self.delta_o = (self.delta * self.o).sum(-1)       # [H, n]
        self.residual = (self.h_s * self.G.to(dt)).sum(-1)  # [n]

    @property
    def mid_relevance(self) -> Tensor:
        """R at the mid-node (after attention, before the MLP): h_mid · G, float64."""
        return (self.h_mid.double() * self.G.double()).sum(-1)

    @staticmethod
    def _allowed(mask: Tensor) -> Tensor:
        """Boolean 'may attend' from a boolean or additive mask."""
        if mask.dtype == torch.bool:
            return mask
        return mask > torch.finfo(mask.dtype).min / 2

    def _scores(self, rows: Tensor, ncols: int) -> Tensor:
        """Softmax probabilities P[:, rows, :ncols] ([H, r, ncols]) with the layer's own mask."""
        s = torch.matmul(self.q[:, rows], self.k[:, :ncols].transpose(1, 2)) * self.scaling
        if self.mask is None:
            if self.causal:
                allowed = torch.arange(ncols, device=s.device)[None, :] <= rows[:, None]
                s = s.masked_fill(~allowed[None], float("-inf"))
        else:
            m = self.mask[:, rows][..., :ncols]
            if m.dtype == torch.bool:
                s = s.masked_fill(~m, float("-inf"))
            else:
                s = s + m.to(s.dtype)
        p = torch.softmax(s, dim=-1)
        return torch.nan_to_num(p, nan=0.0)  # a fully masked row (padding) has no edges

    def rows(self, rows: Tensor) -> Tensor:
        """Edge rows A[rows, :] (targets × all sources), ``rows`` a 1-D LongTensor; float32 on the layer's device."""
        rows = rows.to(self.q.device)
        ncols = int(rows.max()) + 1 if self.lower_triangular else self.n
        p = self._scores(rows, ncols)                                     # [H, r, c]
        d = self.delta[:, rows]                                           # [H, r, dh]
        out = torch.zeros(len(rows), self.n, dtype=self.dtype, device=p.device)
        # value path: f_v p_ji (δ_j·v̂_i)
        block = (p * torch.matmul(d, self.v_hat[:, :ncols].transpose(1, 2))).sum(0) * self.fv
        if self.fk or self.fq:
            # E_jm = p_jm (δ_j·v_m − δ_j·o_j)
            e = p * (torch.matmul(d, self.v[:, :ncols].transpose(1, 2)) - self.delta_o[:, rows, None])
            del p
            if self.fk:
                block += (e * torch.matmul(self.q[:, rows], self.k_hat[:, :ncols].transpose(1, 2))).sum(0) * (
                    self.fk * self.scaling)
            if self.fq:
                qk = torch.matmul(self.q_hat[:, rows], self.k[:, :ncols].transpose(1, 2))
                query = (e * qk).sum(dim=(0, 2)) * (self.fq * self.scaling)  # [r]
                block[torch.arange(len(rows), device=block.device), rows] += query
        block[torch.arange(len(rows), device=block.device), rows] += self.residual[rows]
        out[:, :ncols] = block
        return out

    def rows_per_chunk(self, budget_bytes: int) -> int:
        """How many target rows fit the memory budget (about six [H, r, n] temporaries)."""
        per_row = 6 * self.heads * self.n * torch.finfo(self.dtype).bits // 8
        return max(1, min(self.n, budget_bytes // max(per_row, 1)))
