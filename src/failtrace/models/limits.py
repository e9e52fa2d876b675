"""What a loaded model's config says about the inputs it was built for (used by collection and attribution)."""

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
