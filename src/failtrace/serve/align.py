"""Align one model's per-token relevance to another tokenisation of (mostly) the same text, by character spans.

Another model sees the same item through its own chat template and tokenizer, so its tokens neither coincide with
the case's tokens nor cover exactly the same text. The explorer draws every model on the case's own tokens:

1. Each token list is laid end to end: token i covers characters [o_i, o_i + len(text_i)) of its model's text.
2. The two texts are matched with :class:`difflib.SequenceMatcher` on whitespace-led chunks (a word, or a run of
   punctuation, with the whitespace before it), which finds the shared prompt and answer and leaves each template's
   own markup unmatched; short unmatched stretches are matched again on the chunks without their leading whitespace
   (the same word after other whitespace). Inside a matched chunk character k of one text is character k of the
   other; a word is never matched to part of another word.
3. A token's relevance R_i is spread evenly over its characters (R_i / len(text_i) each); a case token receives the
   sum over its characters that are matched. So Σ_j projected_j + unaligned = Σ_i R_i exactly (mass is conserved;
   ``unaligned`` is the relevance on characters with no counterpart, e.g. the other template's markup).

difflib is used rather than a hand-written alignment; chunking by words keeps it fast (a character-level match of two
60k-character texts is quadratic in practice), and above 4000 chunks difflib's "popular element" heuristic is on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import Any

import numpy as np

_CHUNK = re.compile(r"\s*\w+|\s*[^\w\s]+|\s+")
_AUTOJUNK = 4000
_GAP = 200  # unmatched stretches of up to this many chunks on both sides are matched again without whitespace


def offsets(tokens: Sequence[str]) -> np.ndarray:
    """Character offsets o_0 = 0, o_{i+1} = o_i + len(token_i) (length n + 1)."""
    return np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int64)


def _chunks(text: str) -> tuple[list[str], list[int]]:
    parts, starts = [], []
    for m in _CHUNK.finditer(text):
        parts.append(m.group())
        starts.append(m.start())
    return parts, starts


def char_map(text_a: str, text_b: str) -> np.ndarray:
    """For each character of ``text_b``: the index of the same character in ``text_a``, or -1 when unmatched."""
    ca, sa = _chunks(text_a)
    cb, sb = _chunks(text_b)
    out = np.full(len(text_b), -1, dtype=np.int64)
    # Past _AUTOJUNK chunks difflib's own heuristic is used: a chunk in over 1 % of the other text (" the", " =")
    # cannot start a match, only extend one, which keeps long inputs near linear (measured in perf/bench_serve.py).
    big = max(len(ca), len(cb)) > _AUTOJUNK
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, ca, cb, autojunk=big).get_opcodes():
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2)):
                out[sb[j]:sb[j] + len(cb[j])] = np.arange(sa[i], sa[i] + len(ca[i]))
        elif tag == "replace" and i2 - i1 <= _GAP and j2 - j1 <= _GAP:
            # the same words with other whitespace before them (e.g. "\n\nWrite" vs "\nWrite"): match again on
            # the chunks without their leading whitespace, and map the words' own characters
            xa, xb = [c.lstrip() for c in ca[i1:i2]], [c.lstrip() for c in cb[j1:j2]]
            for m in SequenceMatcher(None, xa, xb, autojunk=False).get_matching_blocks():
                for k in range(m.size):
                    i, j = i1 + m.a + k, j1 + m.b + k
                    n = len(xa[m.a + k])
                    a0, b0 = sa[i] + len(ca[i]) - n, sb[j] + len(cb[j]) - n
                    out[b0:b0 + n] = np.arange(a0, a0 + n)
    return out


def project(ref_tokens: Sequence[str], tokens: Sequence[str], values: Sequence[float]) -> dict[str, Any]:
    """``values`` (one per token of ``tokens``) moved onto ``ref_tokens`` (module docstring).

    Returns ``values`` (per reference token: the projected sum, None when none of its characters is matched),
    ``spans`` (per reference token: [first, last] index of the other tokens overlapping it, or None), ``unaligned``
    (relevance on unmatched characters) and ``matched_chars`` (share of the reference text that is matched).
    """
    ref_off, off = offsets(ref_tokens), offsets(tokens)
    n_ref_chars, n_chars = int(ref_off[-1]), int(off[-1])
    vals = np.asarray(values, dtype=np.float64)
    lengths = np.diff(off)
    per_char = np.repeat(np.divide(vals, lengths, out=np.zeros_like(vals), where=lengths > 0), lengths)
    owner = np.repeat(np.arange(len(tokens)), lengths)  # other token of each character
    cmap = char_map("".join(ref_tokens), "".join(tokens))
    hit = cmap >= 0
    ref_chars = np.bincount(cmap[hit], weights=per_char[hit], minlength=n_ref_chars)
    matched = np.zeros(n_ref_chars, dtype=bool)
    matched[cmap[hit]] = True
    ref_owner = np.repeat(np.arange(len(ref_tokens)), np.diff(ref_off))  # reference token of each character
    sums = np.bincount(ref_owner, weights=ref_chars, minlength=len(ref_tokens))
    covered = np.bincount(ref_owner, weights=matched.astype(float), minlength=len(ref_tokens)) > 0
    big = np.iinfo(np.int64).max
    first = np.full(len(ref_tokens), big, dtype=np.int64)
    last = np.full(len(ref_tokens), -1, dtype=np.int64)
    np.minimum.at(first, ref_owner[cmap[hit]], owner[hit])
    np.maximum.at(last, ref_owner[cmap[hit]], owner[hit])
    zero_len = lengths == 0  # a token that decodes to "" has no characters: its relevance cannot be placed
    unaligned = float(per_char[~hit].sum() + vals[zero_len].sum())
    keep = covered & np.isfinite(sums)  # plain lists via tolist(): a per-element loop costs ~1 s at 16k tokens
    return {"values": [v if c else None for v, c in zip(sums.tolist(), keep.tolist())],
            "spans": [s if s[1] >= 0 else None for s in np.stack([first, last], axis=1).tolist()],
            "unaligned": unaligned, "matched_chars": float(matched.mean()) if n_ref_chars else 0.0,
            "n_chars": n_chars}
