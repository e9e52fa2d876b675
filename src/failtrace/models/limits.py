"""What a loaded model can take: the inputs its config says it was built for, and the range of its dtype (used by
collection, the pair search and attribution)."""

from __future__ import annotations

from typing import Any


def context_length(model: Any) -> int | None:
    """The longest input the model was built for (its config's position limit), or None when it states none."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def require_finite(*values: Any) -> None:
    """Refuse a forward pass that overflowed (NaN or inf in these tensors): its argmax and relevance would be noise.

    Gemma-3 in float16 overflows, in plain transformers too. Raises FailtraceError naming the dtype to use instead.
    """
    import torch

    if bool(torch.stack([torch.isfinite(v).all() for v in values]).all()):  # one host sync for all of them
        return
    from failtrace.errors import FailtraceError

    dtype = values[0].dtype
    name = str(dtype).replace("torch.", "")
    instead = {torch.float16: "float32 or bfloat16", torch.bfloat16: "float32"}.get(dtype)
    raise FailtraceError(f"the model's forward pass is not finite in {name} on this input (its activations "
                         "overflow)" + (f": load it in {instead} (--dtype)" if instead else ""))
