"""``attribute()``: contrastive relevance of every input token and hidden state for one next-token decision."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from failtrace.attribution.baselines import IG_STEPS
from failtrace.attribution.contrast import prepare_contrast
from failtrace.attribution.inputs import Prompt
from failtrace.attribution.methods import get_method
from failtrace.attribution.record import Attribution
from failtrace.models.loading import LoadedModel


def attribute(
    lm: LoadedModel,
    prompt: Prompt,
    target: int | str | None = None,
    contrast: int | str | None = None,
    *,
    answer_prefix: str | Sequence[int] | None = None,
    chat: bool = False,
    thinking: bool = False,
    objective: str = "logit_diff",
    method: str = "attnlrp",
    position: int | None = None,
    ig_steps: int = IG_STEPS,
    seed: int = 0,
    topk: int = 10,
    use_checkpoint: bool | None = None,
    allow_long: bool = False,
) -> Attribution:
    """Explain the model's preference for ``target`` over ``contrast`` after ``prompt`` (+ ``answer_prefix``).

    ``prompt``: raw text, chat messages (``[{"role", "content"}]``; or a string with ``chat=True``), or token ids.
    ``target`` / ``contrast``: token ids, ``"#ID"`` strings, or strings that encode to exactly one token. A missing
    target means the model's own greedy next token. ``method``: any registered attribution method
    (:mod:`failtrace.attribution.methods`: attnlrp (default), cp-lrp, gradxinput, ig, ...); ``seed``: the random
    baseline's. An input longer than the model's context is refused unless ``allow_long``.
    """
    run = get_method(method)
    c = prepare_contrast(lm, prompt, target, contrast, answer_prefix=answer_prefix, chat=chat, thinking=thinking,
                         objective=objective, position=position, topk=topk, allow_long=allow_long)
    t0 = time.perf_counter()
    res = run(lm.model, c.prep.ids, c.fn, ig_steps=ig_steps, use_checkpoint=use_checkpoint, seed=seed)
    logits = res.logits
    extra: dict[str, Any] = dict(res.extra)
    extra["seconds"] = round(time.perf_counter() - t0, 4)
    extra["target_logit"] = float(logits[c.target.id])
    if c.contrast is not None:
        extra["contrast_logit"] = float(logits[c.contrast.id])
    extra["target_rank"] = int((logits > logits[c.target.id]).sum())
    hidden = np.asarray(res.relevance, dtype=np.float64)
    return Attribution(
        model=lm.name, tokens=c.prep.tokens, token_ids=c.prep.ids, special_mask=c.prep.special_mask,
        target=c.target, contrast=c.contrast, objective=objective, method=method, delta_logit=float(res.value),
        input_relevance=hidden[0].copy(), hidden_relevance=hidden, prompt_length=c.prep.prompt_length,
        position=len(c.prep.ids) - 1, extra=extra,
    )
