"""One forward pass that returns logits, the same way for every stage that needs them.

transformers renamed two arguments across versions: ``logits_to_keep`` (older models and 4.x releases before it
have none; without it a pass keeps T × vocabulary logits, 7.5 GB at 12k tokens on Qwen3) and the KV-cache argument
(``cache`` in recent 5.x, where ``past_key_values`` is a deprecated alias; ``past_key_values`` in 4.x). Every caller
goes through :func:`forward_logits`, so a model without ``logits_to_keep`` works everywhere or nowhere.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    """The name of the KV-cache argument of a model class's forward (module docstring). Cached per class:
    :func:`forward_logits` runs once per decoded token."""
    try:
        return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return "past_key_values"


def forward_logits(model: Any, keep: int | None = None, **kwargs: Any) -> Any:
    """Call ``model`` and return its logits, asking for only the last ``keep`` positions where supported.
    A ``past_key_values`` argument is passed under the name this transformers version uses."""
    if "past_key_values" in kwargs and _cache_argument(type(model)) != "past_key_values":
        kwargs["cache"] = kwargs.pop("past_key_values")
    if keep is not None:
        try:
            return model(logits_to_keep=keep, **kwargs).logits[:, -keep:]
        except TypeError:  # models without logits_to_keep
            pass
    out = model(**kwargs).logits
    return out if keep is None else out[:, -keep:]


def last_logits(model: Any, ids: Sequence[int]) -> Any:
    """The next-token logits after ``ids`` (one sequence, no cache, no gradient): a vector over the vocabulary."""
    import torch  # here, not at import: the explorer reads stored results without loading torch

    with torch.no_grad():
        x = torch.tensor([list(ids)], device=next(model.parameters()).device)
        return forward_logits(model, keep=1, input_ids=x, use_cache=False)[0, -1]
