"""Draft tokens for greedy decoding, looked up in the row's own tokens (prompt-lookup drafting).

A rollout of a small model often repeats itself ("They are both going to a nightly event." forty times until the
budget) or copies text from its context (the prompt, the original completion). The next tokens after the last
n-gram's most recent earlier occurrence are then a good guess of what greedy decoding will produce. The guess is
only a *draft*: :func:`failtrace.failures.decode.decode_rows` feeds it to the model in one forward pass and keeps a
draft token only where it equals the model's own argmax, so the tokens decoded are greedy decoding's whatever the
draft (a wrong draft only costs the extra positions of that pass).

A row may also have a *reference*: text it is expected to resemble but has not seen. A rollout that forces one
token at position p of a failing completion often rejoins that completion a few tokens later and then copies it
for hundreds of tokens (a MATH solution worded differently in one place); its reference is the completion after
p. The reference is read forward: a match is taken at the earliest occurrence after the previous one used, so a
row in step with the reference is drafted from where it is, not from an earlier repeat of the same words.

Written here rather than taken from transformers' ``PromptLookupCandidateGenerator`` because that one serves
``generate`` with a batch of one, while the rollouts here are batches of rows that share one KV cache.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

NGRAM_SIZES = (8, 5, 3, 2)  # the longest match is tried first (a loop "A, B, C, B," needs more than
# 3 tokens to tell its two ", B," apart); single tokens match too often to be worth a pass


class NgramDrafts:
    """One row's tokens (context and decoded so far) with an index of where each n-gram last occurred, and an
    optional reference text indexed by every occurrence."""

    def __init__(self, tokens: Sequence[int], sizes: Sequence[int] = NGRAM_SIZES,
                 reference: Sequence[int] | None = None) -> None:
        self.tokens: list[int] = []
        self.sizes = tuple(sizes)
        # n -> n-gram -> end (exclusive) of its latest occurrence that is not the current suffix
        self.index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.reference = [int(t) for t in reference or ()]
        # n -> n-gram -> ends of all its occurrences in the reference, ascending
        self.ref_index: dict[int, dict[tuple[int, ...], list[int]]] = {n: {} for n in self.sizes}
        self.cursor = 0  # end of the reference match used last: the next one is looked for after it
        r = self.reference
        for n in self.sizes:
            for end in range(n, len(r)):  # an n-gram at the very end has nothing after it to propose
                self.ref_index[n].setdefault(tuple(r[end - n:end]), []).append(end)
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Append tokens; the n-gram that was the suffix before each becomes an earlier occurrence."""
        h = self.tokens
        for t in tokens:
            h.append(int(t))
            end = len(h) - 1  # the n-gram ending here is followed by the token just appended
            for n in self.sizes:
                if end >= n:
                    self.index[n][tuple(h[end - n:end])] = end

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest matching suffix n-gram: in the reference (its first
        occurrence after the last one used), else at its latest earlier occurrence in the row's own tokens,
        continued periodically past the end (a loop of period P repeats every P tokens); [] without a match."""
        h = self.tokens
        if k <= 0:
            return []
        for n in self.sizes:
            if len(h) < n:
                continue
            ends = self.ref_index[n].get(tuple(h[-n:]))
            if ends:
                at = bisect.bisect_right(ends, self.cursor)
                if at < len(ends):
                    self.cursor = ends[at]
                    return self.reference[ends[at]:ends[at] + k]
            start = self.index[n].get(tuple(h[-n:]))
            if start is None:
                continue
            period = len(h) - start  # the suffix recurs every ``period`` tokens if the text loops
            return [h[start + i] if start + i < len(h) else h[start + (i % period)] for i in range(k)]
        return []
