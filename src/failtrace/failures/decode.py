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

A pass of width ``1 + L`` costs more than a plain step, so ``L`` is chosen each step by a cost model
(:class:`_Drafting`, :class:`PassCost`): a plain step costs ``F + rows`` row units, a drafting pass
``F + rows * (1 + s + c * L)`` (measured on a CPU), and row j is expected to gain ``q_j + q_j^2 + ... + q_j^L``
tokens, where ``q_j`` is how often its lookup guessed its next token right lately. ``q_j`` is measured for free:
every step, whether it drafts or not, compares each row's guess with the tokens greedy decoding then produced.
``L = 0`` (a plain step) wins whenever the guesses are poor or the batch is wide; rows stuck in a loop, the
longest rollouts of a small model, advance up to ``max_draft + 1`` tokens per pass. EOS, budgets and stop callbacks
are applied token by token, so a row ends exactly where plain decoding ends it. Models with sliding-window layers
never draft (:func:`slides`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from failtrace.failures.kvcache import gather_positions, select_rows
from failtrace.failures.lookup import NgramDrafts
from failtrace.models.forward import forward_logits
from failtrace.models.limits import require_finite

@dataclass(frozen=True)
class PassCost:
    """The cost of one decoding pass in units of one plain row's compute: ``fixed + rows`` for a plain step and
    ``fixed + rows * (1 + switch + per_draft * d)`` for a pass verifying ``d`` draft tokens per row.

    Measured by ``perf/bench_pass_cost.py`` (docs/PERF.md) on SmolLM2-135M, one CPU thread, 200-700 token caches: a
    plain pass costs ~95-110 ms plus ~6-12 ms per row; any pass wider than one token costs about one more row's
    worth per row (the masked many-token attention path), then ~0.45 of a row per draft token."""

    fixed: float
    switch: float
    per_draft: float

    def of(self, rows: int, drafts: int) -> float:
        """Cost of one pass over ``rows`` token rows with ``drafts`` drafted tokens each:
        fixed + rows·(1 + switch + per_draft·drafts), the bracket 1 when drafts = 0."""
        return self.fixed + rows * (1.0 + (self.switch + self.per_draft * drafts if drafts else 0.0))


CPU_COST = PassCost(fixed=10.0, switch=1.0, per_draft=0.45)
# Not measured (no accelerator was lent): a GPU pass is bound by latency until hundreds of token rows.
ACCELERATOR_COST = PassCost(fixed=256.0, switch=0.0, per_draft=1.0)
DRAFT_TOKEN_ROWS = 1024  # a memory bound: a pass keeps rows x width logits over the vocabulary
MEMORY = 0.9  # weight of the older evidence in each row's guess rate, per step


class _Drafting:
    """The draft length of each step: the one that decodes the most tokens per unit of cost (module docstring).

    Each row's guess rate is a decayed count of its lookup guesses that greedy decoding confirmed, ``(hits + 1) /
    (tries + 2)`` (a row starts at 1/2); a try is one guessed token compared with the decoded one, and a guess is
    compared only up to its first miss (the tokens after a miss were guessed from a wrong context)."""

    def __init__(self, max_draft: int, rows: int, cost: PassCost) -> None:
        self.max_draft = max_draft
        self.cost = cost
        self.hits = [0.0] * rows
        self.tries = [0.0] * rows

    def rate(self, row: int) -> float:
        """Row's draft acceptance rate, Laplace-smoothed ((hits + 1) / (tries + 2)) so a new row starts at 1/2."""
        return (self.hits[row] + 1.0) / (self.tries[row] + 2.0)

    def length(self, rows: Sequence[int], guesses: Sequence[Sequence[int]], room: int) -> int:
        """The draft length (0: a plain step) with the most expected tokens per cost for these rows and guesses."""
        n = len(rows)
        best, best_value = 0, n / self.cost.of(n, 0)
        rates = [self.rate(r) for r in rows]
        gain = 0.0
        for d in range(1, min(room, self.max_draft, DRAFT_TOKEN_ROWS // n - 1) + 1):
            gain += sum(q ** d for q, g in zip(rates, guesses) if len(g) >= d)  # E[accepted], geometric in q
            value = (n + gain) / self.cost.of(n, d)
            if value > best_value:
                best, best_value = d, value
        return best

    def learn(self, row: int, guess: Sequence[int], new: Sequence[int]) -> None:
        """Score ``guess`` against the tokens ``new`` greedy decoding produced at the same place."""
        hits = 0
        while hits < min(len(guess), len(new)) and guess[hits] == new[hits]:
            hits += 1
        tries = hits + int(hits < min(len(guess), len(new)))
        if tries:
            self.hits[row] = MEMORY * self.hits[row] + hits
            self.tries[row] = MEMORY * self.tries[row] + tries


def pass_cost(device: Any) -> PassCost:
    """The pass cost model of ``device``: measured on a CPU, a latency-bound guess elsewhere."""
    return CPU_COST if getattr(device, "type", str(device)) == "cpu" else ACCELERATOR_COST


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
    device = first.device
    plan = _Drafting(max(1, max_draft), len(outs), pass_cost(device))
    rows = list(range(len(outs)))  # original row of each batch element still decoding
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
        guesses: list[list[int]] = []
        if drafts is not None:
            guesses = [drafts[r].propose(max_draft) for r in rows]
            room = plan.length(rows, guesses, max(budgets[r] - len(outs[r]) for r in rows))  # never past every budget
            if room > 0:
                width += room
                windows = [w + (g + w * room)[:room] for w, g in zip(windows, guesses)]  # filler: checked too
        if width > 1 and mask is None:
            mask = torch.ones((len(rows), _cache_length(cache)), dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {"input_ids": torch.tensor(windows, dtype=torch.long, device=device),
                                  "past_key_values": cache, "use_cache": True}
        if mask is not None:
            kwargs["position_ids"] = mask.sum(-1, keepdim=True) + torch.arange(width, device=device)
            kwargs["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], width)], dim=-1)
        logits = forward_logits(model, keep=width, **kwargs)
        require_finite(logits)  # activations grow with the context: an overflow can start mid-answer
        preds = logits.argmax(-1).tolist()
        accepted = []
        for j, w in enumerate(windows):
            a = 0
            while a + 1 < width and w[a + 1] == preds[j][a]:
                a += 1
            accepted.append(a)
        if width > 1:
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
            if drafts is not None:
                plan.learn(r, guesses[j], new)
                if not done[r]:
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
