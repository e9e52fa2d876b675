"""What every token-heatmap view shares: the colour convention, token display, number formatting, long-input
segment selection and the per-layer matrix (row scaling and column binning).

Colours: red backgrounds mark positive relevance (the token pushes the model towards the *target*, the wrong token it
chose), blue negative (towards the *contrast*, the right token). Intensity is ``attr.normalized`` (relevance divided
by the largest |R| among non-special tokens) clipped to [-1, 1]. Special tokens (BOS, chat markers) soak up relevance
as attention sinks, so they are drawn grey whatever their value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from failtrace.attribution.normalize import normalize
from failtrace.attribution.record import Attribution, visible
from failtrace.views.contrast import WHITE as WHITE_INK
from failtrace.views.contrast import white_or_black

# Endpoint colours of the diverging scale: positive -> red, negative -> blue, zero -> white.
RED = (220, 38, 38)
BLUE = (37, 99, 235)
WHITE = (255, 255, 255)
SPECIAL_BG = (205, 205, 205)
SPECIAL_MAP = (222, 222, 222)  # special-token columns in the per-layer map
ANSWER = "#7c3aed"  # violet: answer-prefix marking
MAX_LAYER_COLUMNS = 1000  # the per-layer map bins wider inputs to this many columns


def shown(token: str) -> str:
    """A token as displayed: visible whitespace, and '∅' for an empty decoded string so it can still be hovered."""
    v = visible(token)
    return v if v else "∅"


def quoted(ref: Any) -> str:
    """A :class:`~failtrace.attribution.record.TokenRef` (or None) as ‹visible text›."""
    if ref is None:
        return "—"
    return f"‹{visible(ref.text)}›"


def mix(value: float) -> tuple[int, int, int]:
    """Background colour for a normalised relevance: white blended towards red (positive) or blue (negative)."""
    a = min(1.0, abs(float(value))) if math.isfinite(value) else 0.0
    end = RED if value > 0 else BLUE
    return tuple(int(round(w + (e - w) * a)) for w, e in zip(WHITE, end))  # type: ignore[return-value]


def _white_above(sign: int) -> float:
    """The smallest |value| (in steps of 0.001) from which white text reads better than black on :func:`mix`'s
    colour of that sign; the scale darkens monotonically, so white stays the better ink above it."""
    return next((a / 1000 for a in range(1001) if white_or_black("#%02x%02x%02x" % mix(sign * a / 1000)) == WHITE_INK),
                2.0)


# |normalised R| from which a token's text is white (else black), per side of the scale: where the two inks read
# equally (WCAG 2 contrast), to 0.001: every shade reads at 4.5:1 or more (4.59:1 where they meet). A fixed 0.62
# put white on shades where it read at 2.6:1. The explorer and the report's method switch use the same thresholds
# (/api/meta's colors.white_text_above, the case data's white_above).
WHITE_TEXT_ABOVE = {1: _white_above(1), -1: _white_above(-1)}


def heat_ink(value: float) -> str:
    """The text colour of a token drawn on :func:`mix`'s background for ``value``: ``#ffffff`` or ``#000000``."""
    v = float(value) if math.isfinite(value) else 0.0
    return WHITE_INK if abs(v) >= WHITE_TEXT_ABOVE[1 if v > 0 else -1] else "#000000"


def rgb_array(values: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """:func:`mix` for a whole (rows, cols) array of values in [-1, 1] → (rows, cols, 3) uint8; ``grey`` columns
    grey."""
    a = np.abs(values)[..., None]
    end = np.where(values[..., None] > 0, np.array(RED, float), np.array(BLUE, float))
    rgb = 255.0 + (end - 255.0) * a
    rgb[:, grey, :] = SPECIAL_MAP
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def clipped(attr: Attribution) -> np.ndarray:
    """``attr.normalized`` clipped to [-1, 1], with non-finite values set to 0."""
    v = np.nan_to_num(np.asarray(attr.normalized, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(v, -1.0, 1.0)


def special_of(attr: Attribution) -> np.ndarray:
    """The record's special-token mask as a bool array of exactly ``len(attr.tokens)`` entries."""
    n = len(attr.tokens)
    m = np.zeros(n, dtype=bool)
    sm = np.asarray(attr.special_mask, dtype=bool)[:n]
    m[: len(sm)] = sm
    return m


def fmt(x: float, digits: int = 4) -> str:
    """A signed number with ``digits`` decimals, switching to scientific notation for tiny or huge magnitudes."""
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) < 10 ** (1 - digits) or abs(x) >= 1e5):
        return f"{x:+.{max(1, digits - 2)}e}"
    return f"{x:+.{digits}f}"


def share(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole`` ('n/a' when whole is ~0)."""
    if not (math.isfinite(part) and math.isfinite(whole)) or abs(whole) < 1e-12:
        return "n/a"
    return f"{100.0 * part / whole:.0f}%"


def sums(attr: Attribution) -> tuple[float, float, float]:
    """(Δℓ, Σ input R, Σ last-layer R) as shown in every view's header (NaN where there is no hidden relevance)."""
    h = hidden(attr)
    in_sum = attr.relevance_sum if len(attr.tokens) else 0.0
    return float(attr.delta_logit), in_sum, float(h[-1].sum()) if h is not None else float("nan")


NOT_DELTA_UNITS = {"attention": "attention weights", "random": "a random order"}  # relevance not in units of Δℓ
METHOD_TITLES = {"attnlrp": "AttnLRP", "cp-lrp": "CP-LRP", "gradxinput": "Gradient × input",
                 "ig": "Integrated gradients", "attention": "Raw attention", "random": "Random relevance"}
LRP_FAMILY = ("attnlrp", "cp-lrp")  # methods whose last layer starts from the objective: Σ last-layer R = Δℓ


def value_name(attr: Attribution) -> str:
    """What the attribution explains, as the views name it: Δℓ, or another objective's own symbol (ℓ(target))."""
    from failtrace.attribution.objective import objective_symbol

    return objective_symbol(attr.objective)


def value_row(attr: Attribution) -> tuple[str, str]:
    """The header row of the value explained: ("Δℓ", "5.2931"), or another objective's symbol and value."""
    return value_name(attr), f"{sums(attr)[0]:.4f}"


def ig_goal(attr: Attribution) -> float | None:
    """What integrated gradients' input sum tends to as its steps grow, f(x) − f(zero embeddings); None for other
    methods and runs that did not measure the baseline (an analysis's)."""
    if attr.method != "ig" or "baseline_value" not in attr.extra:
        return None
    return float(attr.delta_logit) - float(attr.extra["baseline_value"])


def sum_rows(attr: Attribution) -> list[tuple[str, str]]:
    """The header rows on relevance sums, true for the attribution's own method: the share of the value explained
    (:func:`value_name`) at the input only for methods in its units, and the last layer's sum only where it is the
    objective (the LRP family)."""
    delta, in_sum, last_sum = sums(attr)
    kind, name = NOT_DELTA_UNITS.get(attr.method), value_name(attr)
    rows = [("Σ input R", f"{in_sum:.4f} ({kind}, not in units of {name})" if kind else
             f"{in_sum:.4f} ({share(in_sum, delta)} of {name})")]
    if attr.method in LRP_FAMILY and math.isfinite(last_sum):
        rows.append(("Σ last-layer R", f"{last_sum:.4f}"))
    goal = ig_goal(attr)
    if goal is not None:
        rows.append(("IG completeness", f"Σ input R is {share(in_sum, goal)} of {name} − {name}(zero embeddings) "
                                        f"= {goal:.4f} at {attr.extra.get('ig_steps', '?')} steps"))
    return rows


def sum_note(attr: Attribution) -> str:
    """One sentence on how the input's relevance adds up for this method (whether it conserves Δℓ), from the
    numbers themselves: AttnLRP's softmax rule usually keeps only part of Δℓ at the input, CP-LRP keeps it whole."""
    delta, in_sum, last_sum = sums(attr)
    kind, value = NOT_DELTA_UNITS.get(attr.method), value_name(attr)
    name = METHOD_TITLES.get(attr.method, attr.method)
    if kind:
        return f"{name}: the relevance is {kind}, not a share of {value}; only its order means anything."
    goal = ig_goal(attr)
    if goal is not None:
        return (f"{name} add up to {value} minus its value at all-zero embeddings ({goal:.4g} here) only in the "
                f"limit of many steps: with {attr.extra.get('ig_steps', '?')} steps the input holds {in_sum:.4g} "
                f"({share(in_sum, goal)} of it); on RMSNorm models it can stay far off at any practical count.")
    if attr.method not in LRP_FAMILY:
        return f"{name} need not add up to {value}: the input holds {share(in_sum, delta)} of it."
    whole = math.isfinite(last_sum) and math.isclose(last_sum, delta, rel_tol=1e-3, abs_tol=1e-6)
    kept = f"the input keeps {share(in_sum, delta)} of {value}" + (" and the last layer holds all of it" if whole
                                                                   else "")
    conserved = math.isfinite(in_sum) and math.isclose(in_sum, delta, rel_tol=0.01, abs_tol=1e-6)
    return f"{name} {'conserves' if conserved else 'does not conserve'} relevance here: {kept}."


def spans_worth_showing(attr: Attribution, max_tokens: int, context: int = 8) -> list[tuple[int, int]]:
    """Choose at most ``max_tokens`` positions worth showing from a long input, as sorted half-open ranges.

    Always kept: the tokens just before the explained position (a fifth of the budget, at most 64), since they set
    up the prediction. The rest of the budget goes to the non-special tokens with the largest |relevance|, each with
    ``context`` tokens either side, in decreasing order of |relevance|. Returns ``[(0, n)]`` when everything fits.
    """
    n = len(attr.tokens)
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}")
    if n <= max_tokens:
        return [(0, n)] if n else []
    keep = np.zeros(n, dtype=bool)
    anchor = min(max(attr.position, 0), n - 1)
    tail = max(1, min(64, max_tokens // 5))
    keep[max(0, anchor - tail + 1) : anchor + 1] = True
    budget = max_tokens - int(keep.sum())
    mag = np.abs(np.nan_to_num(np.asarray(attr.input_relevance, dtype=np.float64)[:n]))
    special = special_of(attr)
    for p in np.argsort(-mag, kind="stable"):
        if budget <= 0:
            break
        if special[p] or mag[p] == 0:
            continue
        lo, hi = max(0, int(p) - context), min(n, int(p) + context + 1)
        new = np.flatnonzero(~keep[lo:hi]) + lo
        if new.size > budget:  # keep the positions nearest to p
            new = new[np.argsort(np.abs(new - p), kind="stable")[:budget]]
        keep[new] = True
        budget -= new.size
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def with_gaps(segments: list[tuple[int, int]], n: int) -> list[tuple[int, int, int]]:
    """``(hidden tokens before, start, end)`` per segment, plus a final empty segment when the tail is hidden."""
    out, prev_end = [], 0
    tail = [(n, n)] if segments and segments[-1][1] < n else []
    for a, b in segments + tail:
        out.append((a - prev_end, a, b))
        prev_end = b
    return out


def segments_note(segments: list[tuple[int, int]], n: int) -> str:
    """How a selection of segments relates to the whole input, for titles and notes ('' when nothing is hidden)."""
    count = sum(b - a for a, b in segments)
    if count >= n:
        return ""
    return (
        f"showing {count} of {n} positions in {len(segments)} segment{'s' if len(segments) != 1 else ''}: "
        "the largest-|R| tokens with context, and the tokens just before the prediction"
    )


def layer_names(num_rows: int) -> list[str]:
    """Row labels of ``hidden_relevance``: the embedding output, then decoder layers 0..L-1."""
    return ["emb"] + [f"L{i}" for i in range(num_rows - 1)]


def hidden(attr: Attribution) -> np.ndarray | None:
    """``hidden_relevance`` as a finite float (rows, n) array, or None if it is missing or malformed."""
    h = np.asarray(attr.hidden_relevance, dtype=np.float64)
    n = len(attr.tokens)
    if h.ndim != 2 or h.shape[0] == 0 or h.shape[1] != n or n == 0:
        return None
    return np.nan_to_num(h)


def row_scaled(h: np.ndarray, special: np.ndarray) -> np.ndarray:
    """Each row divided by its largest |R| over non-special columns, clipped to [-1, 1]."""
    return np.clip(normalize(h, special), -1.0, 1.0)


def bin_columns(h: np.ndarray, special: np.ndarray, max_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Reduce ``h`` (rows, n) to at most ``max_cols`` columns.

    Each bin of ``k`` consecutive positions is represented, row by row, by its value of largest magnitude (sign kept,
    non-special tokens preferred), so isolated spikes survive. Returns ``(values, representative positions,
    all-special mask per column, k)``.
    """
    rows, n = h.shape
    k = max(1, math.ceil(n / max_cols))
    if k == 1:
        pos = np.tile(np.arange(n), (rows, 1))
        return h, pos, special.copy(), 1
    nb = math.ceil(n / k)
    pad = nb * k - n
    hp = np.pad(h, ((0, 0), (0, pad))).reshape(rows, nb, k)
    sp = np.pad(special, (0, pad), constant_values=True).reshape(nb, k)
    score = np.where(sp[None, :, :], -1.0, np.abs(hp))
    arg = score.argmax(axis=2)
    vals = np.take_along_axis(hp, arg[:, :, None], axis=2)[:, :, 0]
    pos = arg + (np.arange(nb) * k)[None, :]
    return vals, np.minimum(pos, n - 1), sp.all(axis=1), k


def literal_text(fig: Any) -> Any:
    """Draw every text of a matplotlib ``fig`` literally, then return it: token text, model names and case ids may
    hold ``$`` pairs, which matplotlib would otherwise parse as mathtext (``'$$'`` and ``'$x^$'`` raise, ``'$5 or
    $6'`` loses its dollars). Call it after the last text is added and before layout or saving."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)
    return fig


def count_of(count: int, word: str) -> str:
    """``1 case``, ``2 cases``, ``1,200 cases``: a count and its noun, for terminal lines and the report's text."""
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


# Tokens of context before and after a masked token, in every view of the masking order: more after, because what
# follows a token tells look-alikes apart (seven "<" of "<tool_call>" in a trace differ only in the call's name).
MASK_BEFORE, MASK_AFTER = 4, 10
CLIP = 40  # characters of a token or of its context at most, so one long token cannot push a table's columns away


# What the per-method "Σ input R" column compares to, in every view that prints it.
SUM_NOTE = ("Σ input R: the relevance summed over the input tokens; for the gradient methods (attnlrp, cp-lrp, "
            "gradxinput, ig) it is in Δℓ's units but not equal to Δℓ: AttnLRP relaxes conservation, so it keeps "
            "part of Δℓ; IG's sum nears Δℓ minus Δℓ at all-zero embeddings only in the limit of many steps (on "
            "RMSNorm models it can be far off at any practical count); gradient × input has no sum rule. Attention "
            "and random are scores on their own scale, of which only the order is used")


def clipped_text(text: str, keep_end: bool = False, most: int = CLIP) -> str:
    """``text`` cut to ``most`` characters with '…' (keeping its end when ``keep_end``: the context before a token)."""
    if len(text) <= most:
        return text
    return "…" + text[-(most - 1):] if keep_end else text[:most - 1] + "…"


def masked_rows(case: Any, method: str, before: int = MASK_BEFORE, after: int = MASK_AFTER) -> list[dict[str, Any]]:
    """The tokens ``method``'s flip curve masked, in its order (:func:`failtrace.analysis.masking.masking_order`,
    the case's own rule): k, position, the token, up to ``before``/``after`` tokens around it, segment, R, and
    :func:`flip_points` (Δℓ and the top next token after masking the first k, whether it is among the first k*)."""
    from failtrace.analysis.masking import masking_order

    r = case.methods[method]
    labels = case.segment_labels()
    order = masking_order(r.input_relevance, case.special_mask, labels, case.masking)
    points = flip_points(r, len(order), case.contrast_id)
    return [{"k": k, "position": p, "token": case.tokens[p], "before": case.tokens[max(0, p - before):p],
             "after": case.tokens[p + 1:p + 1 + after], "segment": labels[p] or "",
             "relevance": float(r.input_relevance[p]), **point} for (k, p), point in zip(enumerate(order, 1), points)]


def flip_points(result: Any, n: int, contrast_id: int) -> list[dict[str, Any]]:
    """For k = 1..n, what a method's masking curve says after masking its first k tokens: ``delta_after`` (Δℓ; None
    where the curve was not computed), ``flips`` (k ≤ k*), ``top_after`` (the model's top next token; None in a case
    analysed before it was recorded) and ``top_is_contrast``. ``result``: a :class:`~failtrace.cases.record.
    CaseMethod` (the report and failtrace show have one; the explorer builds one from its row)."""
    r = result
    tops = r.flip_tops if r.tops_recorded else []
    return [{"delta_after": float(r.flip_curve[k]) if k < len(r.flip_curve) else None,
             "flips": r.flip_k is not None and k <= r.flip_k,
             "top_after": r.flip_top_texts[k] if k < len(tops) else None,
             "top_is_contrast": k < len(tops) and tops[k] == contrast_id} for k in range(1, n + 1)]


def k_star_label(result: Any) -> str:
    """k* of one method's result (or a comparison row's) as every view prints it: the number; "none" when its masking
    curve ran (it has at least Δℓ at k = 0; a case with nothing maskable ran a one-point curve) without a flip within
    K; "—" when the method or its curve is missing, or when Δℓ < 0 already (a model that is corrected: nothing to
    flip; never so for a case's own model)."""
    if result is None or not result.flip_curve:
        return "—"
    if result.flip_k is not None:
        return str(result.flip_k)
    return "—" if result.flip_curve[0] < 0 else "none"


def top_role(token: int, target_id: int | None, contrast_id: int | None) -> str:
    """Which of the pair a model's top next token is: "target", "contrast" or "other" (neither)."""
    return "target" if token == target_id else "contrast" if token == contrast_id else "other"


def writes(row: dict[str, Any]) -> tuple[str, str] | None:
    """A comparison row's top next token with nothing masked (what that model would write at the failure point):
    (its text, :func:`top_role`); None where it was not recorded (a row written before, or a pair not mapped)."""
    tops, texts = row.get("flip_tops") or [], row.get("flip_top_texts") or []
    if not tops or len(tops) != len(texts) or row.get("target_id") is None:
        return None
    return str(texts[0]), top_role(int(tops[0]), row.get("target_id"), row.get("contrast_id"))


def masked_caption(flip_k: int | None, rows: list[dict[str, Any]], mark: str = "") -> str:
    """What the masking-order rows say about the flip, claiming nothing beyond the computed curve: k* (with ``mark``,
    how the view marks the first k* rows) and, where it was recorded, the model's top next token at k*: Δℓ < 0 puts
    the contrast above the target, yet the model may then write a third token."""
    if not rows:
        return "no token with positive relevance to mask"
    if flip_k is not None:
        first = "the top token" if flip_k == 1 else f"the first {flip_k}"
        text = f"masking {first} puts the contrast above the target (k* = {flip_k}{', ' + mark if mark else ''})"
        top = rows[flip_k - 1].get("top_after") if flip_k <= len(rows) else None
        if top is not None:
            what = "the contrast" if rows[flip_k - 1].get("top_is_contrast") else "a third token, not the contrast"
            text += f"; the model's top next token is then ‹{shown(top)}›, {what}"
        return text
    computed = sum(row["delta_after"] is not None for row in rows)
    if not computed:
        return "the masking curve was not computed"
    return f"masking the first {computed} does not flip the prediction (k* none within them)"


def prose_line(text: str) -> str:
    """Prose on one terminal line: spaces stay spaces, a newline is '↵', every other control character a symbol
    (:func:`visible`), so that a model's answer can never move the cursor."""
    return "".join(" " if ch == " " else visible(ch) for ch in text)
