"""Greedy decoding primitives shared by collection and pair-finding.

* :func:`greedy_generate` decodes a batch of prompts greedily with a KV cache. Prompts of different lengths are
  left-padded and masked (decoded one at a time for models with sliding-window layers, whose window counts cache
  positions, padding included); a batch of one is plain unpadded decoding. Finished rows leave the batch, so a long
  answer does not make the short ones pay for its steps.
* :func:`prefix_forward` runs one forward pass over ``prompt + completion`` and keeps the KV cache and the logits of
  the last positions: the next-token distribution at every completion position, from one pass.
* :func:`rollouts` forces k alternative tokens after a shared prefix and continues all k greedily *as one batch*:
  the prefix cache is sliced to the prefix length and expanded to k rows, so no prefix token is recomputed and no
  padding is needed (every row has the same length). :func:`rollouts_at` does the same for rows at *different*
  prefix lengths of one cache (k alternatives at each of several positions), masking each row's unused tail of the
  shared cache, and can end a row early once a callback says its verdict is decided.
* the tests prove that the cached, batched paths produce exactly the tokens of a from-scratch reference (a full
  forward pass per new token, no cache: ``failtrace_testkit.reference_decoding.naive_greedy``).

Completions are recorded as token ids exactly as generated, including the EOS token when the model stopped; the
text is decoded from the ids without the final EOS and without special tokens (:func:`decode_completion`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from failtrace.failures.decode import decode_rows, forward_logits, slides
from failtrace.failures.kvcache import cache_from_prefix, cache_tensors, new_cache
from failtrace.models.limits import require_finite

from failtrace.store.records import FINISH_EOS, FINISH_LENGTH, FINISH_WINDOW  # noqa: F401  (re-exported)


@dataclass
class Generated:
    """One greedy completion: token ids as generated (EOS included if the model stopped) and why it stopped."""

    token_ids: list[int]
    finish_reason: str  # FINISH_EOS, FINISH_LENGTH or FINISH_WINDOW


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a completion: the generation config's EOS id(s) and the tokenizer's EOS id."""
    ids: set[int] = set()
    gen_cfg = getattr(model, "generation_config", None)
    for source in (getattr(gen_cfg, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if source is None:
            continue
        if isinstance(source, int):
            ids.add(int(source))
        else:
            ids.update(int(t) for t in source)
    return frozenset(ids)


def pad_token_id(tokenizer: Any, eos: frozenset[int]) -> int:
    """The id fed for padding (its value never matters: padded positions are masked or their outputs ignored)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    return min(eos) if eos else 0


def decode_completion(tokenizer: Any, token_ids: Sequence[int], eos: frozenset[int]) -> str:
    """The completion text the checker sees: ids without the final EOS, decoded without special tokens."""
    ids = list(token_ids)
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    return str(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))


def finish_reason(token_ids: Sequence[int], eos: frozenset[int]) -> str:
    """``eos`` when the completion ended on an end-of-sequence token, else ``length`` (it hit the budget)."""
    return FINISH_EOS if token_ids and token_ids[-1] in eos else FINISH_LENGTH


def greedy_generate(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos: frozenset[int],
                    pad_id: int = 0, max_draft: int = 0, window: int | None = None) -> list[Generated]:
    """Greedy completions of ``prompts`` (lists of token ids) decoded as one left-padded batch; ``max_draft > 0``
    verifies lookup drafts (:mod:`failtrace.failures.decode`; the same tokens, fewer passes on repetitive text).
    ``window``: the model's context window; a row then stops where prompt + completion fill it (finish
    ``window``, when that comes before the budget), since every later token would sit at a position the model never
    saw."""
    import torch

    if not prompts:
        return []
    budgets = [max_new_tokens if window is None else min(max_new_tokens, window - len(p)) for p in prompts]
    if max(budgets) <= 0:
        return [Generated([], FINISH_LENGTH) for _ in prompts]
    if min(budgets) <= 0:
        raise ValueError("a prompt fills the context window: nothing can be generated after it")
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0:
        raise ValueError("cannot generate from an empty prompt")
    padded = width != min(len(p) for p in prompts)
    if padded and slides(model):  # left padding would shift a sliding window that counts cache positions
        return [greedy_generate(model, [p], max_new_tokens, eos, pad_id, max_draft, window)[0] for p in prompts]
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    cache = new_cache(width + max_new_tokens)
    with torch.no_grad():
        if padded:
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = forward_logits(model, keep=1, input_ids=ids, attention_mask=mask, position_ids=pos,
                                    past_key_values=cache, use_cache=True)
        else:
            logits = forward_logits(model, keep=1, input_ids=ids, past_key_values=cache, use_cache=True)
        require_finite(logits[:, -1])
        first = logits[:, -1].argmax(-1)
        outs = decode_rows(model, cache, first, budgets, eos, mask if padded else None,
                           contexts=prompts, max_draft=max_draft)[0]
    reasons = [finish_reason(o, eos) for o in outs]
    # a row that did not stop by itself ran to its own budget: the window's, where that is below the budget
    return [Generated(o, FINISH_WINDOW if r == FINISH_LENGTH and b < max_new_tokens else r)
            for o, r, b in zip(outs, reasons, budgets, strict=True)]


@dataclass
class PrefixState:
    """KV cache and next-token logits of one sequence (``prompt + completion prefix``), from one forward pass.

    ``logits[j]`` is the distribution over the token at sequence index ``length - n_logits + 1 + j``, i.e. the
    last row predicts the token after the whole sequence.
    """

    kv: list[tuple[Any, Any]]
    logits: Any  # (n_logits, vocab), float32 (float64 for a float64 model)
    length: int


def prefix_forward(model: Any, ids: Sequence[int], n_logits: int, keep_cache: bool = True) -> PrefixState:
    """One forward pass over ``ids``; keeps the KV cache (if asked) and the last ``n_logits`` next-token logits."""
    import torch

    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)
    cache = new_cache(len(ids)) if keep_cache else None
    with torch.no_grad():
        kwargs: dict[str, Any] = {"input_ids": x, "use_cache": keep_cache}
        if keep_cache:
            kwargs["past_key_values"] = cache
        logits = forward_logits(model, keep=n_logits, **kwargs)[0]
        require_finite(logits)
        if logits.dtype != torch.float64:
            logits = logits.float()
    return PrefixState(kv=cache_tensors(cache) if keep_cache else [], logits=logits, length=len(ids))


DEFAULT_ROLLOUT_CACHE_BYTES = 2 * 1024**3


def rollout_batch_limit(kv: Sequence[tuple[Any, Any]], length: int, budget: int,
                        max_bytes: int = DEFAULT_ROLLOUT_CACHE_BYTES) -> int:
    """How many rollout rows fit in ``max_bytes`` of KV cache (prefix + budget positions per row), at least 1."""
    per_position = sum(k.shape[1] * k.shape[-1] * k.element_size() + v.shape[1] * v.shape[-1] * v.element_size()
                       for k, v in kv)
    return max(1, int(max_bytes // max(1, per_position * (length + budget))))


def rollouts(model: Any, kv: Sequence[tuple[Any, Any]], prefix_length: int, forced: Sequence[int], budget: int,
             eos: frozenset[int], batch_size: int | None = None) -> list[list[int]]:
    """Greedy continuations after forcing each token of ``forced`` at position ``prefix_length``.

    ``kv`` is a batch-1 cache covering at least ``prefix_length`` positions; it is not modified. Each result starts
    with its forced token and has at most ``budget`` tokens (forced token included), ending at the first EOS.
    Rows are decoded together, ``batch_size`` at a time (default: all at once, unless their KV cache would pass
    2 GiB, as with very long prompts: then as many as fit).
    """
    if budget <= 0:
        raise ValueError("rollout budget must be at least 1 token (the forced token)")
    n = len(forced)
    return rollouts_at(model, kv, [prefix_length] * n, forced, [budget] * n, eos, batch_size)[0]


def rollouts_at(model: Any, kv: Sequence[tuple[Any, Any]], starts: Sequence[int], forced: Sequence[int],
                budgets: Sequence[int], eos: frozenset[int], batch_size: int | None = None,
                stop: Callable[[int, list[int]], bool] | None = None, stop_every: int = 8,
                on_end: Callable[[int, list[int], bool], bool] | None = None,
                contexts: Sequence[Sequence[int]] | None = None,
                max_draft: int = 0,
                references: Sequence[Sequence[int]] | None = None) -> tuple[list[list[int]], list[bool]]:
    """Rollouts at several prefix lengths in one batch: row i forces ``forced[i]`` after the first ``starts[i]``
    positions of ``kv`` and continues greedily for at most ``budgets[i]`` tokens (forced token included).

    The batch shares one slice of the cache, up to the longest prefix; a row with a shorter prefix masks the cache
    positions between its prefix and that end (attention weight exactly 0 there) and gets position ids counted over
    its real tokens, so it computes what a batch-1 rollout from its own prefix computes (for a model with
    sliding-window layers, whose window counts cache positions, only rows of one prefix length share a batch).
    ``stop`` (global row index,
    tokens so far) ends a row early, see :func:`decode_rows`; so does ``on_end`` (global row index), and once it
    returns True no further batch is started (rows never started come back empty). ``contexts`` (row i's tokens
    before its forced one), ``max_draft`` and ``references``: lookup drafts, see
    :func:`~failtrace.failures.decode.decode_rows`. Returns the sequences and which rows were stopped.
    """
    import torch

    if not forced:
        return [], []
    if min(budgets) <= 0:
        raise ValueError("rollout budget must be at least 1 token (the forced token)")
    device = kv[0][0].device
    step = batch_size or min(len(forced), rollout_batch_limit(kv, max(starts), max(budgets)))
    out: list[list[int]] = []
    stopped: list[bool] = []
    halted = [False]

    def row_end(i: int, toks: list[int], was_stopped: bool) -> bool:
        halted[0] = halted[0] or bool(on_end(i, toks, was_stopped))
        return halted[0]

    with torch.no_grad():
        for start, end_row in _chunks(starts, step, slides(model)):
            if halted[0]:
                out.extend([] for _ in range(start, end_row))
                stopped.extend(False for _ in range(start, end_row))
                continue
            rows = range(start, end_row)
            width = max(starts[i] for i in rows)
            cache = cache_from_prefix(kv, width, len(rows), width + max(budgets[i] for i in rows))
            first = torch.tensor([forced[i] for i in rows], dtype=torch.long, device=device)
            mask = None
            if any(starts[i] != width for i in rows):
                mask = torch.ones((len(rows), width), dtype=torch.long, device=device)
                for j, i in enumerate(rows):
                    mask[j, starts[i]:] = 0
            row_stop = None if stop is None else (lambda j, toks, base=start: stop(base + j, toks))
            end = None if on_end is None else (lambda j, toks, e, base=start: row_end(base + j, toks, e))
            seqs, ended = decode_rows(model, cache, first, [budgets[i] for i in rows], eos, mask, row_stop,
                                      stop_every, end, None if contexts is None else [contexts[i] for i in rows],
                                      max_draft, None if references is None else [references[i] for i in rows])
            out.extend(seqs)
            stopped.extend(ended)
    return out, stopped


def _chunks(starts: Sequence[int], step: int, by_start: bool) -> list[tuple[int, int]]:
    """Row ranges decoded as one batch: ``step`` rows at most and, with ``by_start``, one prefix length per batch
    (a sliding window counts cache positions, so the masked hole of a shorter prefix would shift it)."""
    out, begin = [], 0
    for i in range(1, len(starts) + 1):
        if i == len(starts) or i - begin == step or (by_start and starts[i] != starts[begin]):
            out.append((begin, i))
            begin = i
    return out
