"""``attribute()``: contrastive relevance of every input token and hidden state for one next-token decision."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from failtrace.attribution.engine import relevance_pass
from failtrace.attribution.inputs import Prompt, context_length, prepare_input, resolve_token
from failtrace.attribution.objective import OBJECTIVES, objective_value
from failtrace.attribution.record import Attribution, TokenRef
from failtrace.errors import FailtraceError
from failtrace.models.loading import LoadedModel

ALL_METHODS: tuple[str, ...] = ("attnlrp", "cp-lrp", "gradxinput", "ig")


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
    ig_steps: int = 32,
    topk: int = 10,
    use_checkpoint: bool | None = None,
    allow_long: bool = False,
) -> Attribution:
    """Explain the model's preference for ``target`` over ``contrast`` after ``prompt`` (+ ``answer_prefix``).

    ``prompt``: raw text, chat messages (``[{"role", "content"}]``; or a string with ``chat=True``), or token ids.
    ``target`` / ``contrast``: token ids, ``"#ID"`` strings, or strings that encode to exactly one token. A missing
    target means the model's own greedy next token. ``method``: attnlrp (default), cp-lrp, gradxinput or ig.
    An input longer than the model's context is refused unless ``allow_long``.
    """
    if method not in ALL_METHODS:
        raise FailtraceError(f"unknown method {method!r}; valid: {', '.join(ALL_METHODS)}")
    if objective not in OBJECTIVES:
        raise FailtraceError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    tok = lm.tokenizer
    prep = prepare_input(tok, prompt, chat=chat, answer_prefix=answer_prefix, thinking=thinking, position=position,
                         max_length=context_length(lm.model), allow_long=allow_long)
    tgt = resolve_token(tok, target, "target") if target is not None else None
    con = resolve_token(tok, contrast, "contrast") if contrast is not None else None
    if objective == "logit_diff" and con is None:
        raise FailtraceError("objective 'logit_diff' needs a contrast token; give --contrast or another --objective")
    if tgt is None:
        tgt = _greedy_token(lm, prep.ids)
    if con is not None and con.id == tgt.id:
        raise FailtraceError(f"target and contrast are the same token ({tgt.text!r}, id {tgt.id}); pick two tokens")

    def fn(logits: torch.Tensor) -> torch.Tensor:
        return objective_value(logits, objective, tgt.id, None if con is None else con.id, k=topk)

    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if method == "ig":
        from failtrace.attribution.baselines import integrated_gradients

        inp, value, logits = integrated_gradients(lm.model, prep.ids, fn, steps=ig_steps)
        hidden = inp[None, :]
        extra["ig_steps"] = ig_steps
        extra["hidden_relevance"] = "input only (integrated gradients explains the embeddings)"
    else:
        res = relevance_pass(lm.model, prep.ids, fn, method=method, use_checkpoint=use_checkpoint)
        hidden = res.relevance().cpu().numpy()
        inp, value, logits = hidden[0], res.value, res.logits
    extra["seconds"] = round(time.perf_counter() - t0, 4)
    extra["target_logit"] = float(logits[tgt.id])
    if con is not None:
        extra["contrast_logit"] = float(logits[con.id])
    extra["target_rank"] = int((logits > logits[tgt.id]).sum())
    return Attribution(
        model=lm.name, tokens=prep.tokens, token_ids=prep.ids, special_mask=prep.special_mask, target=tgt,
        contrast=con, objective=objective, method=method, delta_logit=float(value),
        input_relevance=np.asarray(inp, dtype=np.float64), hidden_relevance=np.asarray(hidden, dtype=np.float64),
        prompt_length=prep.prompt_length, position=len(prep.ids) - 1, extra=extra,
    )


def _greedy_token(lm: LoadedModel, ids: list[int]) -> TokenRef:
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=False, logits_to_keep=1).logits
    tid = int(logits[0, -1].argmax())
    return TokenRef(tid, lm.tokenizer.decode([tid], clean_up_tokenization_spaces=False))
