"""A case's category and pattern in one sentence each, worded from their stored evidence.

The evidence (docs/ANALYSES.md) is a record of numbers and thresholds; a reader should not have to know that
``k_star`` ≤ ``k_ia`` makes M-IA or that ``relevant_sum`` ≥ −``theta`` makes URT. ``show``, the report and the
explorer all print these sentences, so the three say the same thing in the same words.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from failtrace.attribution.record import visible


def _tokens(n: int | None) -> str:
    return "token" if n == 1 else "tokens"


def _segment(name: Any) -> str:
    """A segment as a reader takes it: ``answer`` is the model's own output before the wrong token."""
    return "the model's answer so far" if name == "answer" else str(name)


def category_sentence(category: str | None, evidence: Mapping[str, Any] | None) -> str:
    """Why the computed category holds: what masking input tokens and zeroing graph nodes did."""
    ev = evidence or {}
    k_star, k_ia = ev.get("k_star"), ev.get("k_ia")
    if category is None or k_ia is None:
        return ""
    if category == "M-IA" and k_star is not None:
        return (f"masking the top {k_star} AttnLRP input {_tokens(k_star)} puts the contrast above the target "
                f"(k* = {k_star} ≤ K_IA = {k_ia}): the heatmap shows why")
    if k_star is None:  # the search stops at the curve's K (or found nothing it may mask)
        masked = "masking the top AttnLRP input tokens does not flip the prediction within the masking search"
    else:
        masked = (f"masking needs the top {k_star} AttnLRP input tokens to flip the prediction, more than K_IA = "
                  f"{k_ia}")
    ablation = ev.get("ablation") if isinstance(ev.get("ablation"), Mapping) else {}
    if category == "NC-IA+M-AG":
        k = ev.get("ablation_k") or ablation.get("k")
        nodes = f"the top {k} hidden {'state' if k == 1 else 'states'}" if k else "top hidden states"
        return f"{masked}; zeroing {nodes} of the graph does flip it: the graph shows why"
    budget = ev.get("ablation_budget") or ablation.get("budget")
    nodes = f"up to {budget} top hidden states" if budget else "the top hidden states"
    return (f"{masked}; zeroing {nodes} of the graph does not flip it either: neither view explains it on its "
            "own")



def _signed(x: float) -> str:
    """``+0.200`` / ``−0.105``: a sign always, and the minus sign the threshold beside it is written with."""
    return f"{x:+.3f}".replace("-", "−")

def pattern_sentence(pattern: str | None, evidence: Mapping[str, Any] | None, tokens: Sequence[str]) -> str:
    """Why the pattern holds: the relevant segments' summed relevance against −θ, and the strongest supporters that
    lie outside them."""
    ev = evidence or {}
    if pattern is None or "theta" not in ev:
        return ""
    names = list(ev.get("relevant_segments") or [])
    one = len(names) == 1
    segs = f"the relevant segment{'' if one else 's'} ({', '.join(names) or 'none'})"
    theta = ev["theta"]
    total = ev.get("relevant_sum")
    if ev.get("urt_decidable") is False or not isinstance(total, (int, float)) or not math.isfinite(total):
        why = ("a token there has no finite relevance" if ev.get("relevant_not_finite")
               else "no content token there" if ev.get("relevant_tokens") == 0 else "its sum is unknown")
        urt = f"URT is undecided for {segs} ({why})"
    elif pattern in ("URT", "URT+OIT"):
        urt = (f"{segs} sum{'s' if one else ''} to {_signed(ev['relevant_sum'])} (normalised), not below −θ = "
               f"−{theta:g}: {'it does' if one else 'they do'} not push against the target (URT)")
        first = (ev.get("top_supporters") or [{}])[0]
        if first.get("relevant") and 0 <= first.get("position", -1) < len(tokens):  # what the net sum may hide
            who = (f"the target's strongest supporter, {visible(tokens[first['position']])!r} [{first['position']}] "
                   f"({first.get('share', 0):.0%} of the positive relevance), is itself in {'it' if one else 'them'}")
            offset = float(ev["relevant_sum"]) < float(first.get("relevance", 0.0))  # others there pull it down
            urt += (f", in sum only: {who}, offset by tokens there that push against the target" if offset
                    else f"; {who}")
    else:
        urt = (f"{segs} sum{'s' if one else ''} to {_signed(ev['relevant_sum'])} (normalised), below −θ = −{theta:g}: "
               f"{'it pushes' if one else 'they push'} against the target")
    offenders = [t for t in ev.get("top_supporters") or [] if t.get("position") in set(ev.get("oit_tokens") or [])]
    m, share = ev.get("m", 3), ev.get("theta_share", 0.05)
    if offenders:
        named = ", ".join(f"{visible(tokens[t['position']]) if 0 <= t['position'] < len(tokens) else '?'!r} "
                          f"[{t['position']}] ({_segment(t.get('segment'))}, {t.get('share', 0):.0%})"
                          for t in offenders)
        oit = (f"outside {'it' if one else 'them'}, {named} {'is' if len(offenders) == 1 else 'are'} among the {m} "
               f"strongest supporters of the target, with at least {share:.0%} of the positive relevance (OIT)")
    else:
        oit = (f"no token outside {'it' if one else 'them'} is among the {m} strongest supporters with at least "
               f"{share:.0%} of the positive relevance")
    return f"{urt}; {oit}"


def verdict_rows(case: Any) -> list[tuple[str, str]]:
    """``[(label, sentence)]`` for a :class:`~failtrace.cases.record.Case`: why its computed category and its
    pattern hold (a category set by hand keeps the computed one's reason, labelled as computed)."""
    rows = []
    said = category_sentence(case.category, case.category_evidence)
    if said:
        rows.append((f"why {case.category}" + (" (computed)" if getattr(case, "override", None) else ""), said))
    said = pattern_sentence(case.pattern, case.pattern_evidence, case.tokens)
    if said:
        rows.append((f"why {case.pattern}", said))
    return rows
