"""Tiny randomly initialised decoders of the architectures failtrace supports, for tests, benchmarks and demos.

Built from transformers configs (no download), with a fixed seed, and with biases and norm weights randomised so
that bias handling and norm scales are actually exercised (transformers initialises them to 0 and 1).
"""

from __future__ import annotations

from typing import Any

import torch

ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "mistral", "olmo2", "olmo3", "gemma3")
# patched by the LRP rules but outside the closed form (attention logit soft-capping): edges fall back to packed
FALLBACK_ARCHITECTURES: tuple[str, ...] = ("gemma2",)


def with_rope_theta(config: Any, theta: float, local_theta: float | None = None,
                    scaling: dict[str, Any] | None = None) -> Any:
    """``config`` rotating by θ = ``theta`` (and its sliding layers by ``local_theta`` where the running transformers
    gives them a θ of their own: 5.x's per-attention-type ``rope_parameters``, 4.x's Gemma-3), written where that
    version reads it (5.x: ``rope_parameters``; 4.x: ``rope_theta`` / ``rope_local_base_freq``). ``scaling`` (a
    ``rope_type`` and its parameters, e.g. ``{"rope_type": "linear", "factor": 8.0}``) applies to the layers that
    ``theta`` turns (5.x: ``rope_parameters``, 4.x: ``rope_scaling``), as Gemma-3 4B scales its global layers only."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):  # transformers 5
        if "full_attention" in params or "sliding_attention" in params:
            for kind, sub in params.items():
                sub["rope_theta"] = local_theta if kind == "sliding_attention" and local_theta else theta
                if scaling and not (kind == "sliding_attention" and local_theta):
                    sub.update(scaling)
        else:
            params["rope_theta"] = theta
            params.update(scaling or {})
    else:
        config.rope_theta = theta
        if local_theta and hasattr(config, "rope_local_base_freq"):
            config.rope_local_base_freq = local_theta
        if scaling:
            config.rope_scaling = dict(scaling)
    return config


def tiny_config(arch: str, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                vocab: int = 128, sliding_window: int = 6, max_positions: int = 256) -> Any:
    """A small config for ``arch`` (one of :data:`ARCHITECTURES`); ``max_positions`` is its trained context (the L
    of dynamic rotary scaling)."""
    import transformers as tf

    common: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        initializer_range=0.2, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    if arch == "llama":
        return tf.LlamaConfig(**common)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)
    if arch == "qwen3":
        return tf.Qwen3Config(head_dim=hidden // heads, **common)
    if arch == "mistral":  # a sliding window shorter than the test inputs: a real (boolean) attention mask
        return tf.MistralConfig(sliding_window=sliding_window, head_dim=hidden // heads, **common)
    if arch == "olmo2":
        return tf.Olmo2Config(**common)
    if arch == "olmo3":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        return tf.Olmo3Config(sliding_window=sliding_window, layer_types=types, **common)
    if arch == "gemma3":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        return tf.Gemma3TextConfig(head_dim=hidden // heads, sliding_window=sliding_window, layer_types=types,
                                   query_pre_attn_scalar=hidden // heads, **common)
    if arch == "gemma2":
        return tf.Gemma2Config(head_dim=hidden // heads, sliding_window=sliding_window,
                               query_pre_attn_scalar=hidden // heads, attn_logit_softcapping=20.0,
                               final_logit_softcapping=15.0, **common)
    raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, rope: tuple[float, float] | None = None,
               rope_scaling: dict[str, Any] | None = None, **kwargs: Any) -> torch.nn.Module:
    """A tiny causal LM of architecture ``arch`` in eval mode (see :func:`tiny_config` for ``kwargs``); ``rope`` =
    (θ, sliding layers' θ) other than the family's defaults, ``rope_scaling`` a scaled rotation of the layers θ turns
    (:func:`with_rope_theta`)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, **kwargs)
    if rope is not None:
        with_rope_theta(config, *rope, scaling=rope_scaling)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif "norm" in name and p.dim() == 1:
                base = 0.0 if arch.startswith("gemma") else 1.0  # Gemma norms scale by (1 + w)
                p.copy_(base + torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()
