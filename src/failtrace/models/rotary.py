"""Dynamic-NTK rotary embeddings without memory: every forward pass rotates as a fresh model would.

transformers' ``dynamic`` rotary scaling (θ' = θ·(s·n/L − (s − 1))^(d/(d−2)) for a sequence of n > L positions,
L the trained context, s the factor, d the rotary dimension) keeps the frequencies of the *longest* sequence the
module has seen until a sequence shorter than L comes: after a rollout of 300 tokens, the forward pass on a
200-token prefix rotates by θ'(300), not θ'(200). A case's Δℓ and relevance would then depend on what the model ran
before (its rollouts, another case, a Ray worker's history). :func:`forget_rotary_history` resets that memory
before every call of the rotary module: each call then rotates as a fresh model would, and along one cached
generation (whose lengths only grow) the frequencies are those a fresh model reaches step by step. Measured on a
tiny Llama (L = 8, s = 2): the same 12-token forward after a 24-token one differed by up to 3.3 in the logits; with
the reset, by 0.
"""

from __future__ import annotations

from typing import Any

_HOOKED = "_failtrace_rotary_reset"


def _dynamic(rope_type: Any) -> bool:
    kinds = rope_type.values() if isinstance(rope_type, dict) else [rope_type]
    return any("dynamic" in str(k) for k in kinds)


def _originals(module: Any) -> list[str]:
    """The saved initial frequencies: ``original_inv_freq`` (an attribute in transformers 4.x, a buffer in 5.x), or
    ``<layer type>_original_inv_freq`` per attention type."""
    names = [*vars(module), *(n for n, _ in module.named_buffers(recurse=False))]
    return [n for n in names if n.endswith("original_inv_freq")]


def _reset(module: Any) -> None:
    """Put a dynamic rotary module back in its initial state (transformers' own reset branch, for any length)."""
    original = getattr(module, "original_max_seq_len", None)
    for name in _originals(module):
        prefix = name[: -len("original_inv_freq")]  # "" or "<layer type>_"
        freq = getattr(module, name)
        module.register_buffer(f"{prefix}inv_freq", freq.to(getattr(module, f"{prefix}inv_freq").device),
                               persistent=False)
        if original is not None:
            setattr(module, f"{prefix}max_seq_len_cached", original)


def forget_rotary_history(model: Any) -> int:
    """Make ``model``'s dynamic-NTK rotary modules stateless (module docstring); returns how many were found.

    A forward pre-hook on each such module resets it before every call, so it holds whichever way the model is
    entered (the attribution engine calls the inner decoder with embeddings); other rotary types are left alone
    (they are stateless already), and a second call adds nothing."""
    modules = [m for m in model.modules() if _dynamic(getattr(m, "rope_type", None)) and _originals(m)]
    for m in modules:
        if not getattr(m, _HOOKED, False):
            m.register_forward_pre_hook(lambda module, _args: _reset(module))
            setattr(m, _HOOKED, True)
    return len(modules)
