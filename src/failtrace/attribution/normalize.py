"""Special-token-aware normalisation of relevance: the one place that decides what "normalised |R|" means.

Special tokens (BOS, chat-template markers) act as attention sinks and soak up relevance, so they would dominate any
max-normalised picture. The scale of a relevance vector is therefore its largest |R| among *non-special* tokens::

    scale(R) = max_{i : not special_i, R_i finite} |R_i|        (over all finite entries if every token is special)
    normalize(R) = R / scale(R)                                  (scale 1 when there is nothing to scale by)

Special tokens may then exceed 1 in magnitude. Non-finite entries (NaN: not computed) are ignored by the scale and
stay NaN. The heatmaps, the attribution record, the graph's node threshold and its pruning all use these two
functions, row by row along the last axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def relevance_scale(relevance: Any, special_mask: Any = None) -> Any:
    """Largest finite |R| over non-special tokens along the last axis (1.0 where it is 0 or there is none).

    A 1-D ``relevance`` gives a float; an [..., n] array gives an array of shape [...]. ``special_mask`` has n
    entries (None: no special tokens).
    """
    r = np.abs(np.asarray(relevance, dtype=np.float64))
    n = r.shape[-1] if r.ndim else 1
    special = np.zeros(n, dtype=bool) if special_mask is None else np.asarray(special_mask, dtype=bool).reshape(-1)
    if special.shape[0] != n:
        raise ValueError(f"special_mask has {special.shape[0]} entries for {n} tokens")
    finite = np.isfinite(r)
    pick = finite & ~special
    pick = np.where(pick.any(axis=-1, keepdims=True), pick, finite)  # every token special: use them all
    scale = np.where(pick, r, 0.0).max(axis=-1, initial=0.0)
    scale = np.where(scale > 0, scale, 1.0)
    return float(scale) if np.ndim(scale) == 0 else scale


def normalize(relevance: Any, special_mask: Any = None) -> np.ndarray:
    """``relevance / relevance_scale(relevance, special_mask)``, row by row along the last axis (sign kept)."""
    r = np.asarray(relevance, dtype=np.float64)
    scale = relevance_scale(r, special_mask)
    return r / (np.asarray(scale)[..., None] if r.ndim > 1 else scale)
