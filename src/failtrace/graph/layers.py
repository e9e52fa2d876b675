"""Re-running one decoder layer, or one of its two residual sub-blocks, from a stored hidden state.

Every edge method needs the map from the hidden state at a source stage to the hidden state at the next stage, under
the same AttnLRP rules as the full pass. The decoder layer is re-run as a module call with the keyword arguments it
received in the full forward pass (rotary ``position_embeddings``, the attention mask, position ids), captured by a
forward pre-hook (:class:`LayerCallCapture`).

For mid-nodes and for the closed form the layer is split into its two residual sub-blocks::

    h_mid = h_in  + post_attn( attn( pre_attn(h_in) ) )       (attention block)
    h_out = h_mid + post_mlp ( mlp ( pre_mlp (h_mid) ) )      (MLP block)

where each of the four norms may be absent: Llama/Qwen/Mistral have pre-norms only, OLMo-2/3 post-norms only,
Gemma-2/3 both. The split is found *generically*: every assignment of the layer's norm modules to the four roles is
tried and the first one that reproduces the layer's own output on the real input is kept (:func:`split_layer`).
Layers that match no assignment (parallel attention/MLP, extra residual branches, ...) are reported as not
splittable: mid-nodes are then unavailable and the closed form falls back to the packed method for them. The check
runs once per layer class; every later use compares the recomputed output with the stored one again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from failtrace.lrp.patch import decoder_layers

Tensor = torch.Tensor

# Attribute names transformers' decoders use for the norms around the two sub-blocks.
_NORM_NAMES = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
               "post_feedforward_layernorm")
_ATTN_NAMES = ("self_attn", "attention", "attn")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


def layer_output(out: Any) -> Tensor:
    """A decoder layer returns a tensor (transformers 5) or a tuple whose first element is the hidden state."""
    return out[0] if isinstance(out, (tuple, list)) else out


class LayerCallCapture:
    """Forward pre-hooks (``with_kwargs=True``) that record the keyword arguments of each decoder layer's call.

    Only the keyword arguments are kept (the hidden state comes from the full pass). Use as a context manager around
    one forward pass; ``kwargs[l]`` is then what layer ``l`` was called with.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = decoder_layers(model)
        self.kwargs: dict[int, dict[str, Any]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> LayerCallCapture:
        for idx, layer in enumerate(self.layers):
            def hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _idx: int = idx) -> None:
                kept = dict(kwargs)
                kept.pop("hidden_states", None)
                # positional arguments after the hidden state are rare; keep them under their position
                self.kwargs[_idx] = {"__args__": tuple(args[1:]), **kept}

            self._handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def call(self, idx: int, hidden: Tensor) -> Tensor:
        """Run decoder layer ``idx`` on ``hidden`` ([1, n, d]) with its captured keyword arguments."""
        kw = dict(self.kwargs[idx])
        args = kw.pop("__args__", ())
        return layer_output(self.layers[idx](hidden, *args, **kw))


def _find_child(layer: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        mod = getattr(layer, name, None)
        if isinstance(mod, nn.Module):
            return mod
    return None


def attention_module(layer: nn.Module) -> nn.Module | None:
    """The self-attention module of a decoder layer (``self_attn`` in every transformers decoder we know)."""
    return _find_child(layer, _ATTN_NAMES)


@dataclass
class LayerSplit:
    """The norms around a layer's attention and MLP sub-blocks (``None`` where the layer has no such norm)."""

    attn: nn.Module
    mlp: nn.Module
    pre_attn: nn.Module | None
    post_attn: nn.Module | None
    pre_mlp: nn.Module | None
    post_mlp: nn.Module | None

    def describe(self) -> str:
        """E.g. ``pre-norm`` (Llama), ``post-norm`` (OLMo-2), ``pre+post-norm`` (Gemma-3)."""
        pre = self.pre_attn is not None or self.pre_mlp is not None
        post = self.post_attn is not None or self.post_mlp is not None
        return {(True, False): "pre-norm", (False, True): "post-norm", (True, True): "pre+post-norm"}.get(
            (pre, post), "no-norm")

    def roles(self, layer: nn.Module) -> dict[str, str | None]:
        """The attribute names of the four norms in ``layer`` (to reuse the split on layers of the same class)."""
        names = {id(getattr(layer, n)): n for n in _NORM_NAMES if isinstance(getattr(layer, n, None), nn.Module)}
        return {role: (None if mod is None else names[id(mod)]) for role, mod in
                (("pre_attn", self.pre_attn), ("post_attn", self.post_attn), ("pre_mlp", self.pre_mlp),
                 ("post_mlp", self.post_mlp))}


def split_from_roles(layer: nn.Module, roles: dict[str, str | None]) -> LayerSplit | None:
    """A split of ``layer`` with the norm roles found on another layer of its class (unverified; None if absent)."""
    attn = attention_module(layer)
    mlp = _find_child(layer, _MLP_NAMES)
    if attn is None or mlp is None:
        return None
    mods: dict[str, nn.Module | None] = {}
    for role, name in roles.items():
        mod = None if name is None else getattr(layer, name, None)
        if name is not None and not isinstance(mod, nn.Module):
            return None
        mods[role] = mod
    return LayerSplit(attn=attn, mlp=mlp, **mods)


def _apply(norm: nn.Module | None, x: Tensor) -> Tensor:
    return x if norm is None else norm(x)


def attention_call_kwargs(kwargs: dict[str, Any], attn: nn.Module) -> dict[str, Any]:
    """The captured layer keyword arguments as the attention module expects them, without any KV cache: the block
    is recomputed on the whole context. The cache's name differs across transformers versions (``past_key_value``,
    ``past_key_values``, ``cache``) and every one defaults to None, so none is passed (passing the old name beside
    the new one makes transformers 5 warn on every layer). Transformers 4's Gemma-3 layer receives two rotary
    tables and hands its attention the local one when that attention is sliding, else the global one: so here."""
    drop = {"__args__", "use_cache", "past_key_value", "past_key_values", "cache"}
    out = {k: v for k, v in kwargs.items() if k not in drop}
    if "position_embeddings_global" in out and "position_embeddings_local" in out:
        local, glob = out.pop("position_embeddings_local"), out.pop("position_embeddings_global")
        out["position_embeddings"] = local if getattr(attn, "is_sliding", False) else glob
    return out


def attn_block(split: LayerSplit, kwargs: dict[str, Any], hidden: Tensor) -> Tensor:
    """h_mid = h + post_attn(attn(pre_attn(h))), the residual stream after the attention block."""
    out = split.attn(hidden_states=_apply(split.pre_attn, hidden), **attention_call_kwargs(kwargs, split.attn))
    return hidden + _apply(split.post_attn, layer_output(out))


def mlp_block(split: LayerSplit, hidden: Tensor) -> Tensor:
    """h_out = h_mid + post_mlp(mlp(pre_mlp(h_mid))); token-local."""
    return hidden + _apply(split.post_mlp, split.mlp(_apply(split.pre_mlp, hidden)))


def _candidates(layer: nn.Module) -> Iterator[dict[str, nn.Module | None]]:
    """Assignments of the layer's norm modules to the four roles, each present norm used exactly once."""
    present = {n: getattr(layer, n) for n in _NORM_NAMES if isinstance(getattr(layer, n, None), nn.Module)}
    roles = ("pre_attn", "post_attn", "pre_mlp", "post_mlp")
    # preferred role per name first, then the others (post_attention_layernorm is a pre-MLP norm in Llama)
    options: dict[str, tuple[str, ...]] = {
        "input_layernorm": ("pre_attn",),
        "post_attention_layernorm": ("pre_mlp", "post_attn"),
        "pre_feedforward_layernorm": ("pre_mlp",),
        "post_feedforward_layernorm": ("post_mlp",),
    }
    names = list(present)

    def rec(i: int, used: dict[str, nn.Module | None]) -> Iterator[dict[str, nn.Module | None]]:
        if i == len(names):
            yield {r: used.get(r) for r in roles}
            return
        for role in options[names[i]]:
            if role not in used:
                yield from rec(i + 1, {**used, role: present[names[i]]})

    yield from rec(0, {})


def split_layer(layer: nn.Module, kwargs: dict[str, Any], hidden: Tensor,
                reference: Tensor | None = None) -> LayerSplit | None:
    """The sub-block structure of ``layer``, verified on the real input ``hidden`` ([1, n, d]); None if no match.

    ``reference`` is the layer's output on ``hidden`` if already known (else the layer is run once).
    """
    attn = attention_module(layer)
    mlp = _find_child(layer, _MLP_NAMES)
    if attn is None or mlp is None or kwargs.get("__args__"):
        return None
    with torch.no_grad():
        if reference is None:
            kw = dict(kwargs)
            args = kw.pop("__args__", ())
            reference = layer_output(layer(hidden, *args, **kw))
        scale = float(reference.abs().max()) + 1e-6
        for roles in _candidates(layer):
            split = LayerSplit(attn=attn, mlp=mlp, **roles)
            try:
                mine = mlp_block(split, attn_block(split, kwargs, hidden))
            except Exception:  # a wrong guess may fail on shapes; try the next one
                continue
            tol = 1e-4 if hidden.dtype == torch.float32 else 2e-2
            if mine.shape == reference.shape and float((mine - reference).abs().max()) <= tol * scale:
                return split
    return None


@contextlib.contextmanager
def attention_function(modules: list[nn.Module], name: str) -> Iterator[None]:
    """Temporarily point the attention modules' config at the registered attention function ``name``."""
    configs = {id(m.config): m.config for m in modules if hasattr(m, "config")}
    old = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = name
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = old[k]


TransitionFn = Callable[[Tensor], Tensor]
