"""The greedy decoding loop under collection, rollouts and the judge: rows of one KV cache, with lookup drafts.

:func:`decode_rows` continues a batch of rows greedily, each until EOS, its own budget, or a stop callback. With
``max_draft > 0`` and each row's context, a step may instead *verify drafts* (speculative decoding with drafts
looked up in the row's own tokens, :mod:`failtrace.failures.lookup`):

* drafts come from the row's own tokens and, where given, a reference text (a rollout's failing completion after
  the forced position, which the rollout often rejoins and then copies);
* every row feeds its last decided token followed by ``L`` draft tokens (a row without a draft feeds filler, which
  is checked like any draft), all rows the same width ``1 + L``, in one forward pass;
* row j keeps draft tokens only while each equals the model's argmax after the tokens before it, so its ``1 + a_j``
  valid positions and the argmax after the last of them are exactly what ``1 + a_j`` plain greedy steps give: the
  tokens are greedy decoding's whatever the drafts (up to floating-point rounding, as with any change of batch
  shape; tested against cache-free decoding);
* the rejected positions stay in the shared cache as *holes*, masked out of row j's attention; position ids count
  only a row's real tokens. Once holes make up a third of the cache, each row's real positions are gathered to the
  front (:func:`~failtrace.failures.kvcache.gather_positions`; attention reads keys as a set).

A pass of width ``1 + L`` costs more than a plain step, so drafts are verified only when most rows have one, a
pass feeds at most :data:`DRAFT_ROWS` token rows (a wide batch drafts less or not at all), and ``L`` adapts to what rows accepted (doubled when they took most of it, cut when they took little; a pass that
gains nothing pauses drafting for a few steps). Rows stuck in a loop, the longest rollouts of a small model, then
advance up to ``max_draft + 1`` tokens per pass. EOS, budgets and stop callbacks are applied token by token, so a
row ends exactly where plain decoding ends it. Models with sliding-window layers never draft (:func:`slides`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from failtrace.failures.kvcache import gather_positions, select_rows
from failtrace.failures.lookup import NgramDrafts

# Token rows (rows x window width) a drafting pass may feed. On a CPU a step's fixed cost (reading the weights) is
# about that of ~20-30 token rows of compute (SmolLM2-135M, one core: 137 ms for 8 rows x 1, 470 ms for 8 x 9), so
# up to this many a pass costs at most about two plain steps; wide batches draft fewer tokens per row or none.
DRAFT_ROWS = 48


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    """The name of the KV-cache argument of a model class's forward: ``cache`` in recent transformers 5.x (where
    ``past_key_values`` is a deprecated alias, to be removed), ``past_key_values`` in 4.x. Cached per class:
    :func:`forward_logits` runs once per decoded token."""
    import inspect

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


class _Drafting:
    """The adaptive draft length of one decoding call (see the module docstring)."""

    def __init__(self, max_draft: int) -> None:
        self.max_draft = max_draft
        self.length = min(2, max_draft)
        self.pause = 0  # plain steps left before drafts are tried again
        self.backoff = 2

    def wanted(self, have: int, rows: int) -> bool:
        """Whether to verify drafts this step, ``have`` of ``rows`` rows having one."""
        if self.pause > 0:
            self.pause -= 1
            return False
        return 2 * have >= rows

    def after(self, accepted: Sequence[int], length: int) -> None:
        """Adapt after a pass with ``length`` draft positions in which the rows accepted ``accepted``."""
        mean = sum(accepted) / len(accepted)
        if mean == 0:
            self.length, self.pause, self.backoff = 1, self.backoff, min(2 * self.backoff, 32)
            return
        self.backoff = 2
        if mean >= 0.5 * length:
            self.length = min(2 * length, self.max_draft)
        else:
            self.length = max(1, min(length, round(2 * mean)))


def decode_rows(model: Any, cache: Any, first: Any, budgets: Sequence[int], eos: frozenset[int],
                mask: Any | None = None, stop: Callable[[int, list[int]], bool] | None = None,
                stop_every: int = 8, on_end: Callable[[int, list[int], bool], bool] | None = None,
                contexts: Sequence[Sequence[int]] | None = None,
                max_draft: int = 0,
                references: Sequence[Sequence[int]] | None = None) -> tuple[list[list[int]], list[bool]]:
    """Greedy decoding of a batch of rows, each from its first token until EOS or its own budget (first included).

    ``mask`` (batch, context) marks the real cache positions of each row (left padding, or a hole between a row's
    shorter prefix and the shared cache's end), or is None when every row uses the whole cache. Every
    ``stop_every`` tokens, ``stop(row, tokens)`` may end a row early (its verdict is already decided); the second
    list says which rows ended so. Finished rows leave the batch, so no row pays for another's steps.
    ``on_end(row, tokens, stopped)`` is called as each row ends; when it returns True, decoding of every row ends
    there (rows still running keep the tokens they have). ``contexts`` (each row's tokens before ``first``) and
    ``max_draft > 0`` turn on lookup drafts (module docstring); ``references``, text each row may copy without
    having seen it (:class:`~failtrace.failures.lookup.NgramDrafts`), adds draft sources, never changes a token.
    """
    import torch

    outs: list[list[int]] = [[int(t)] for t in first.tolist()]
    done = [t[-1] in eos or len(t) >= b for t, b in zip(outs, budgets, strict=True)]
    stopped = [False] * len(outs)
    if on_end is not None and any(on_end(r, outs[r], False) for r in range(len(outs)) if done[r]):
        return outs, stopped
    drafts = None
    if max_draft > 0 and contexts is not None and not slides(model):
        refs = references if references is not None else [()] * len(outs)
        drafts = [NgramDrafts(list(c) + o, reference=f) for c, o, f in zip(contexts, outs, refs, strict=True)]
    plan = _Drafting(max(1, max_draft))
    rows = list(range(len(outs)))  # original row of each batch element still decoding
    device = first.device
    while True:
        keep = [j for j, r in enumerate(rows) if not done[r]]
        if not keep:
            break
        if len(keep) < len(rows):
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            select_rows(cache, idx)
            if mask is not None:
                mask = mask[idx]
            rows = [rows[j] for j in keep]
        width = 1
        windows = [[outs[r][-1]] for r in rows]
        if drafts is not None:
            room = min(plan.length, DRAFT_ROWS // len(rows) - 1,
                       max(budgets[r] - len(outs[r]) for r in rows))  # never past every budget
            guesses = [drafts[r].propose(room) for r in rows]
            if room > 0 and plan.wanted(sum(1 for g in guesses if g), len(rows)):
                width += room
                windows = [w + (g + w * room)[:room] for w, g in zip(windows, guesses)]  # filler: checked too
        if width > 1 and mask is None:
            mask = torch.ones((len(rows), _cache_length(cache)), dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {"input_ids": torch.tensor(windows, dtype=torch.long, device=device),
                                  "past_key_values": cache, "use_cache": True}
        if mask is not None:
            kwargs["position_ids"] = mask.sum(-1, keepdim=True) + torch.arange(width, device=device)
            kwargs["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], width)], dim=-1)
        preds = forward_logits(model, keep=width, **kwargs).argmax(-1).tolist()
        accepted = []
        for j, w in enumerate(windows):
            a = 0
            while a + 1 < width and w[a + 1] == preds[j][a]:
                a += 1
            accepted.append(a)
        if width > 1:
            plan.after(accepted, width - 1)
            keep_mask = torch.tensor([[1] * (a + 1) + [0] * (width - 1 - a) for a in accepted], dtype=mask.dtype,
                                     device=device)
            mask = torch.cat([mask, keep_mask], dim=-1)
            mask = _squeeze(cache, mask)
        elif mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        ended = []
        for j, r in enumerate(rows):
            new = windows[j][1:accepted[j] + 1] + [preds[j][accepted[j]]]
            for t in new:
                outs[r].append(t)
                if t in eos or len(outs[r]) >= budgets[r]:
                    done[r] = True
                elif stop is not None and len(outs[r]) % stop_every == 0 and stop(r, outs[r]):
                    done[r] = stopped[r] = True
                if done[r]:
                    ended.append(r)
                    break
            if drafts is not None and not done[r]:
                drafts[r].extend(new)
        if on_end is not None and any(on_end(r, outs[r], stopped[r]) for r in ended):
            break
    return outs, stopped


def slides(model: Any) -> bool:
    """Whether some layer of ``model`` attends through a sliding window. Such a window counts cache positions, so
    the holes drafts leave would shift it: these models decode without drafts."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    types = getattr(config, "layer_types", None)
    if types:
        return any("sliding" in str(t) for t in types)
    return getattr(config, "sliding_window", None) is not None and bool(getattr(config, "use_sliding_window", True))


def _squeeze(cache: Any, mask: Any) -> Any:
    """Gather each row's real positions to the front once holes are a third of the cache; the new mask."""
    import torch

    real = mask.sum(-1)
    length, most = int(mask.shape[-1]), int(real.max())
    if 3 * (length - most) < length:
        return mask
    order = torch.argsort(1 - mask, dim=-1, stable=True)[:, :most]  # real positions first, in their order
    gather_positions(cache, order)
    return (torch.arange(most, device=mask.device)[None, :] < real[:, None]).to(mask.dtype)


def _cache_length(cache: Any) -> int:
    return int(cache.get_seq_length())
