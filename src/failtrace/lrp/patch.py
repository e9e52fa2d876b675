"""Install the AttnLRP rules on any Hugging Face decoder, generically and reversibly.

Nothing here copies a model's modeling file. The rules reach the model three ways:

* **norms, found by structure**: every leaf module with a 1-D ``weight`` whose output matches an RMSNorm,
  a (1 + w) RMSNorm (Gemma) or a LayerNorm formula on a probe input gets a forward that returns the module's own
  output with the normaliser frozen in the backward pass. A norm-like module that matches no formula is refused.
* **gated MLPs, found by structure**: modules with ``gate_proj``, ``up_proj``, ``down_proj`` and ``act_fn`` get a
  forward with the identity rule on the activation and the uniform rule on the gate product; it is checked to
  reproduce the original forward on a probe input before it is kept.
* **attention, through the transformers attention-function registry**: an attention function named
  ``failtrace_lrp`` is registered once; the model's ``_attn_implementation`` points at it while patched. It scales
  the gradients reaching q, k (¼) and v (½), which is exactly the uniform ε-rule on QKᵀ and on AV with the softmax
  left as is (see DESIGN.md), then calls transformers' own SDPA function, so the memory-efficient kernel is kept.
  Attention logit soft-capping (Gemma 2 style) runs through a small eager path with the identity rule on tanh.

Patching is scoped: :func:`lrp_rules` is a context manager that sets instance attributes only on the given model
and removes them on exit, so other models in the process are untouched.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

import torch
from torch import nn

from failtrace.errors import FailtraceError, UnsupportedModelError
from failtrace.lrp.methods import LRP_METHODS, lrp_method
from failtrace.lrp.rules import frozen_scale, identity_activation, scale_grad, uniform_product

METHODS: tuple[str, ...] = tuple(LRP_METHODS)
ATTN_NAME = "failtrace_lrp"
_REGISTER_LOCK = threading.Lock()
_REGISTERED = False
# Per model: what the structural probes found (norm kinds, verified MLPs, probe forward done), so that entering
# lrp_rules() a second time costs only attribute assignments. Keyed weakly: forgetting a model frees its entry.
_VERIFIED: "weakref.WeakKeyDictionary[nn.Module, dict[str, Any]]" = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------------------------

def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def _eager_softcap_attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float, softcap: float,
) -> torch.Tensor:
    """Attention with tanh logit soft-capping; the identity rule on tanh (its backward is cap·tanh(s/cap)/s)."""
    n_rep = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    capped = softcap * torch.tanh(scores / softcap)
    scores = identity_activation(scores, capped, at_zero=1.0)
    q_len, k_len = scores.shape[-2:]
    if attention_mask is None:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        scores = scores.masked_fill(~causal, float("-inf"))
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :k_len], float("-inf"))
    else:
        scores = scores + attention_mask[..., :k_len]
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous()


def lrp_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The registered attention function: AttnLRP / CP-LRP gradients around transformers' SDPA attention."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rule = LRP_METHODS[getattr(module, "_failtrace_rule", "gradxinput")]
    module._failtrace_calls = getattr(module, "_failtrace_calls", 0) + 1
    # the table's factors on the gradients reaching q, k, v (see failtrace.lrp.methods); 0 means detached
    query, key, value = (x.detach() if f == 0.0 else scale_grad(x, f)
                         for x, f in ((query, rule.q), (key, rule.k), (value, rule.v)))
    if scaling is None:
        scaling = 1.0 / math.sqrt(query.shape[-1])
    softcap = kwargs.get("softcap") or getattr(module, "attn_logit_softcapping", None)
    if softcap:
        return _eager_softcap_attention(module, query, key, value, attention_mask, scaling, float(softcap)), None
    kwargs.pop("softcap", None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling, **kwargs)


def _register_attention() -> None:
    """Register ``failtrace_lrp`` in transformers' attention and mask registries (once per process)."""
    global _REGISTERED
    with _REGISTER_LOCK:
        if _REGISTERED:
            return
        from transformers import AttentionInterface

        AttentionInterface.register(ATTN_NAME, lrp_attention)
        try:
            from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

            AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
        except ImportError as exc:  # pragma: no cover - transformers < 4.53 has no mask registry
            raise FailtraceError(f"failtrace needs transformers >= 4.56 (mask registry missing: {exc})") from None
        _REGISTERED = True


# ----------------------------------------------------------------------------------------------------------------
# norms
# ----------------------------------------------------------------------------------------------------------------

_NormKind = Literal["rms", "rms1p", "layer"]


def _eps_of(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps", "epsilon"):
        val = getattr(module, name, None)
        if isinstance(val, (int, float)):
            return float(val)
    return None


def _norm_scale(kind: _NormKind, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-element factor weight/σ applied by a norm (σ computed in fp32 as transformers does)."""
    xf = x.float()
    if kind == "layer":
        inv = torch.rsqrt(xf.var(dim=-1, keepdim=True, unbiased=False) + eps)
    else:
        inv = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    w = weight.float() + 1.0 if kind == "rms1p" else weight.float()
    return inv * w


def _norm_formula(kind: _NormKind, x: torch.Tensor, module: nn.Module, eps: float) -> torch.Tensor:
    xf = x.float()
    if kind == "layer":
        xf = xf - xf.mean(dim=-1, keepdim=True)
    out = xf * _norm_scale(kind, x, module.weight, eps)
    bias = getattr(module, "bias", None)
    if kind == "layer" and isinstance(bias, torch.Tensor):
        out = out + bias.float()
    return out


def _classify_norm(module: nn.Module) -> _NormKind | None:
    """Which norm formula reproduces this module on a probe input, or None if it is not a norm we know.

    Each formula is measured *element by element* (error over the element's own size) and the closest one is taken
    if it is within the dtype's rounding. A tolerance scaled by the largest output was wrong in half precision:
    Gemma-3's norm weights reach |w| = 300 in a few dimensions, so ``w`` passed for ``1 + w`` in all the others
    (bf16 Gemma-3-270M), and a norm with a bias no formula has passed for one that has none.
    """
    weight = getattr(module, "weight", None)
    eps = _eps_of(module)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or eps is None:
        return None
    gen = torch.Generator().manual_seed(0)
    probe = (torch.randn(2, 3, weight.shape[0], generator=gen) * 3 + 0.5).to(weight.device, weight.dtype)
    # measured: right formulas fit within 6e-3 in bf16, 8e-4 in fp16, ~1e-6 in fp32; wrong ones are off by > 1
    tol = 1e-3 if weight.dtype in (torch.float32, torch.float64) else 3e-2
    fits: dict[str, float] = {}
    with torch.no_grad():
        out = module.forward(probe).float()
        for kind in ("rms", "rms1p", "layer"):
            ref = _norm_formula(kind, probe, module, eps)
            if out.shape == ref.shape:  # a floor of 1% of the mean size keeps elements near zero finite
                scale = ref.abs() + 1e-2 * ref.abs().mean() + torch.finfo(torch.float32).tiny
                fits[kind] = float(((out - ref).abs() / scale).max())
    best = min(fits, key=fits.__getitem__) if fits else None
    return best if best is not None and fits[best] <= tol else None  # type: ignore[return-value]


def _is_norm_like(name: str, module: nn.Module) -> bool:
    cls = type(module).__name__.lower()
    return isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))) or "norm" in cls


def _make_norm_forward(module: nn.Module, kind: _NormKind, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
    original = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = original(x)
        if not x.requires_grad:
            return y
        return frozen_scale(x, y, _norm_scale(kind, x, module.weight, eps), center=(kind == "layer"))

    return forward


# ----------------------------------------------------------------------------------------------------------------
# gated MLPs
# ----------------------------------------------------------------------------------------------------------------

def _activation_limit_at_zero(act: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """f'(0) estimated numerically: the limit of f(x)/x used by the identity rule where x = 0."""
    h = torch.tensor([1e-4, -1e-4], dtype=torch.float64)
    with torch.no_grad():
        y = act(h)
    return float(((y[0] - y[1]) / (2e-4)).item())


def _is_gated_mlp(module: nn.Module) -> bool:
    return all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn"))


def _make_mlp_forward(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    act = module.act_fn
    at_zero = _activation_limit_at_zero(act)

    def forward(x: torch.Tensor) -> torch.Tensor:
        gate = module.gate_proj(x)
        activated = identity_activation(gate, act(gate), at_zero=at_zero)
        return module.down_proj(uniform_product(activated, module.up_proj(x)))

    return forward


# ----------------------------------------------------------------------------------------------------------------
# installation
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class PatchReport:
    """What was patched, so a caller (and the tests) can see the rules reached every layer."""

    method: str
    norms: dict[str, str] = field(default_factory=dict)
    mlps: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's list of layers, found generically (the longest ModuleList of the base model)."""
    best: nn.ModuleList | None = None
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and (best is None or len(mod) > len(best)):
            best = mod
    if best is None or len(best) == 0:
        raise UnsupportedModelError(f"{type(model).__name__}: no decoder layers (nn.ModuleList) found")
    return best


def attention_modules(layer: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention modules of one decoder layer (those with q/k/v projections, or a fused qkv_proj)."""
    return [(n, m) for n, m in layer.named_modules()
            if n and all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj")) or
            (n and hasattr(m, "qkv_proj"))]


def _set_attn_impl(model: nn.Module, name: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        try:
            setter(name)
            return
        except Exception:  # older transformers validate names strictly; fall back to the config attribute
            pass
    configs = [model.config] + [getattr(model.config, k) for k in ("text_config",) if hasattr(model.config, k)]
    for cfg in configs:
        cfg._attn_implementation = name


def _get_attn_impl(model: nn.Module) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


def _probe_forward(model: nn.Module, layers: nn.ModuleList) -> None:
    """Run a 4-token forward and require every layer's attention to have gone through the LRP function."""
    for layer in layers:
        for _, m in attention_modules(layer):
            m._failtrace_calls = 0
    vocab = int(model.config.vocab_size) if hasattr(model.config, "vocab_size") else 10
    ids = torch.arange(4, device=next(model.parameters()).device).unsqueeze(0) % max(vocab, 1)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    missed = [i for i, layer in enumerate(layers)
              if sum(getattr(m, "_failtrace_calls", 0) for _, m in attention_modules(layer)) == 0]
    if missed:
        raise UnsupportedModelError(
            f"{type(model).__name__}: attention in layers {missed[:5]} does not go through the transformers "
            "attention registry, so the AttnLRP attention rule cannot be installed; this architecture is not supported"
        )


@contextlib.contextmanager
def lrp_rules(model: nn.Module, method: str = "attnlrp") -> Iterator[PatchReport]:
    """Context manager: inside it, gradients of ``model`` follow the chosen LRP rules.

    ``method``: ``attnlrp`` (default), ``cp-lrp`` (attention weights constant) or ``gradxinput`` (no change).
    Unsupported architectures raise :class:`UnsupportedModelError` and leave the model as it was.
    """
    if not isinstance(model, nn.Module):  # e.g. the LoadedModel wrapper: its .model is the module
        hint = "; pass lm.model" if isinstance(getattr(model, "model", None), nn.Module) else ""
        raise FailtraceError(f"lrp_rules takes the torch model (an nn.Module), not {type(model).__name__}{hint}")
    rules = lrp_method(method)
    if getattr(model, "_failtrace_patched", False):
        raise FailtraceError("this model is already inside lrp_rules(); nesting is not supported")
    report = PatchReport(method=method)
    if rules.changes_nothing:
        yield report
        return
    _register_attention()
    layers = decoder_layers(model)
    patched: list[nn.Module] = []
    old_impl = _get_attn_impl(model)
    cache = _VERIFIED.get(model)
    norm_kinds: dict[str, Any] = cache["norms"] if cache else {}
    try:
        model._failtrace_patched = True
        for name, mod in model.named_modules():
            if _is_gated_mlp(mod) and rules.mlp_rules:
                mod.forward = _make_mlp_forward(mod)
                patched.append(mod)
                report.mlps.append(name)
            elif rules.frozen_norms and not list(mod.children()) and _is_norm_like(name, mod):
                kind = norm_kinds[name] if cache else _classify_norm(mod)
                if kind is None:
                    raise UnsupportedModelError(
                        f"{type(model).__name__}: module {name} ({type(mod).__name__}) looks like a norm but matches "
                        "no RMSNorm/LayerNorm formula, so the identity rule cannot be installed safely"
                    )
                eps = _eps_of(mod)
                assert eps is not None
                mod.forward = _make_norm_forward(mod, kind, eps)
                patched.append(mod)
                report.norms[name] = kind
        for i, layer in enumerate(layers):
            attn = attention_modules(layer)
            if not attn:
                raise UnsupportedModelError(f"{type(model).__name__}: layer {i} has no q/k/v attention module")
            for n, m in attn:
                m._failtrace_rule = method
                patched.append(m)
                report.attention.append(f"{i}.{n}")
            if not any(_is_gated_mlp(m) for m in layer.modules()):
                raise UnsupportedModelError(
                    f"{type(model).__name__}: layer {i} has no gated MLP (gate_proj/up_proj/down_proj/act_fn); "
                    "only gated-MLP decoders are supported"
                )
            if rules.frozen_norms and not any(m in patched for m in layer.modules() if _is_norm_like("", m)):
                raise UnsupportedModelError(f"{type(model).__name__}: layer {i} has no recognised norm")
        _set_attn_impl(model, ATTN_NAME)
        if cache is None:
            _verify_mlps(model, report)
            _probe_forward(model, layers)
            _VERIFIED[model] = {"norms": dict(report.norms)}
        yield report
    finally:
        for mod in patched:
            mod.__dict__.pop("forward", None)
            mod.__dict__.pop("_failtrace_rule", None)
            mod.__dict__.pop("_failtrace_calls", None)
        if old_impl is not None and _get_attn_impl(model) != old_impl:
            _set_attn_impl(model, old_impl)
        model.__dict__.pop("_failtrace_patched", None)


def _verify_mlps(model: nn.Module, report: PatchReport) -> None:
    """The rule-carrying MLP forward must reproduce the class's own forward on a probe input."""
    modules = dict(model.named_modules())
    for name in report.mlps[:1] + report.mlps[-1:]:
        mod = modules[name]
        d = mod.gate_proj.in_features
        w = mod.gate_proj.weight
        probe = torch.randn(1, 3, d, generator=torch.Generator().manual_seed(1)).to(w.device, w.dtype)
        with torch.no_grad():
            ours, theirs = mod.forward(probe).float(), type(mod).forward(mod, probe).float()
        finite = theirs.isfinite()  # an MLP that overflows on the probe must overflow alike (the pass refuses it)
        big = theirs[finite].abs().max().item() if finite.any() else 0.0
        if not torch.allclose(ours, theirs, rtol=1e-3, atol=1e-4 * (1 + big), equal_nan=True):
            raise UnsupportedModelError(
                f"{type(model).__name__}: MLP {name} ({type(mod).__name__}) does not compute "
                "down(act(gate(x)) * up(x)); the gated-MLP rules cannot be installed safely"
            )
