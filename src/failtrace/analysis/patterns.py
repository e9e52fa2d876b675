"""Failure patterns relative to the segment that should decide the answer (paper Fig. 1, right).

Relevance explains Δℓ = logit(target) − logit(contrast): positive relevance pushes towards the wrong target,
negative towards the right contrast. With r = relevance normalised by the largest |R| among non-special tokens
(:func:`failtrace.analysis.segments.normalize`) and "content tokens" = tokens that are neither special ids nor
labelled ``special`` (chat-template text):

* **URT** (Underweight Relevant Tokens, the paper's name): the relevant tokens do not push against the target:
  Σ_{content i in a relevant segment} r_i ≥ −θ (default θ = 0.1). Undecided (never flagged) when the segmenter
  found no content token in the relevant segments (an empty sum says nothing about the model), or when one of them
  has no finite relevance (NaN: not computed; the sum is unknown).
* **OIT** (Overweight Irrelevant Tokens): among the m strongest supporters of the target (content tokens with
  the largest positive r; default m = 3) there is one outside the relevant segments whose share of the positive
  relevance, r_i / Σ_{content j, r_j > 0} r_j, is at least θ' (default 0.05).
* **URT+OIT** when both hold, **none** when neither does.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from failtrace.analysis.segments import normalize
from failtrace.cases.record import PATTERNS  # the one list of pattern names (re-exported here)
from failtrace.errors import FailtraceError

THETA = 0.1
THETA_SHARE = 0.05
TOP_M = 3


def failure_pattern(relevance: Sequence[float] | np.ndarray, special_mask: Sequence[bool], labels: Sequence[str],
                    relevant: Sequence[str], theta: float = THETA, theta_share: float = THETA_SHARE,
                    m: int = TOP_M) -> tuple[str, dict[str, Any]]:
    """The failure pattern (module docstring) and its evidence (sums, the top supporters, the thresholds)."""
    r = normalize(relevance, special_mask)
    if not (len(special_mask) == len(labels) == r.shape[0]):
        raise FailtraceError(f"relevance ({r.shape[0]}), special_mask ({len(special_mask)}) and labels "
                             f"({len(labels)}) must have one entry per token")
    content = np.array([not s and lab != "special" for s, lab in zip(special_mask, labels)], dtype=bool)
    in_rel = np.array([lab in set(relevant) for lab in labels], dtype=bool) & content
    unknown = int((in_rel & ~np.isfinite(r)).sum())  # relevance not computed there: the sum would be NaN
    decidable = bool(in_rel.any()) and not unknown
    rel_sum = float(r[in_rel].sum()) if decidable else None
    urt = decidable and rel_sum >= -theta
    positive = content & (r > 0)
    mass = float(r[positive].sum())
    order = sorted(np.nonzero(positive)[0].tolist(), key=lambda i: (-r[i], i))[:max(0, int(m))]
    top = [{"position": int(i), "segment": labels[i], "relevance": float(r[i]),
            "share": float(r[i] / mass) if mass > 0 else 0.0, "relevant": bool(in_rel[i])} for i in order]
    offenders = [t for t in top if not t["relevant"] and t["share"] >= theta_share]
    oit = bool(offenders)
    pattern = "URT+OIT" if urt and oit else "URT" if urt else "OIT" if oit else "none"
    evidence = {"relevant_segments": list(relevant), "relevant_tokens": int(in_rel.sum()),
                "urt_decidable": decidable, "relevant_not_finite": unknown,
                "relevant_sum": rel_sum, "top_supporters": top, "oit_tokens": [t["position"] for t in offenders],
                "theta": float(theta), "theta_share": float(theta_share), "m": int(m)}
    return pattern, evidence
