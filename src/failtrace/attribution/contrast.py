"""What to explain, prepared once for every method: the input ids, the target and contrast tokens, the objective.

:func:`failtrace.attribute` and :func:`failtrace.graph.build_graph` both start here, so a prompt, a target, a
contrast and an objective mean the same thing (and fail with the same messages) in every command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from failtrace.attribution.inputs import PreparedInput, Prompt, prepare_input, resolve_token, whole
from failtrace.models.forward import last_logits
from failtrace.models.limits import context_length
from failtrace.attribution.objective import check_objective, objective_value
from failtrace.attribution.record import TokenRef
from failtrace.errors import FailtraceError


@dataclass
class Contrast:
    """The prepared input, the resolved tokens and ``fn(logits) -> objective`` (differentiable)."""

    prep: PreparedInput
    target: TokenRef
    contrast: TokenRef | None
    objective: str
    fn: Callable[[torch.Tensor], torch.Tensor]


def greedy_token(lm: Any, ids: Sequence[int]) -> TokenRef:
    """The model's own greedy next token after ``ids``."""
    tid = int(last_logits(lm.model, ids).argmax())
    return TokenRef(tid, lm.tokenizer.decode([tid], clean_up_tokenization_spaces=False))


def check_fits_model(model: Any, ids: Sequence[int], scored: Sequence[int]) -> None:
    """Every input id must have a row in the model's embedding matrix, and every scored id a logit. The tokenizer's
    own range is checked when the tokens are resolved; this catches weights and a tokenizer that do not belong
    together (a smaller vocabulary), which would otherwise fail deep inside the forward pass."""
    emb = model.get_input_embeddings()
    rows = int(getattr(emb, "num_embeddings", 0) or emb.weight.shape[0])
    out = model.get_output_embeddings()
    logits = int(getattr(out, "out_features", 0) or getattr(model.config, "vocab_size", rows)) if out is not None \
        else int(getattr(model.config, "vocab_size", rows))
    for what, group, limit in (("input token", ids, rows), ("target/contrast", scored, logits)):
        bad = sorted({int(t) for t in group if not 0 <= int(t) < limit})
        if bad:
            raise FailtraceError(f"{what} id{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad[:5]))} "
                                 f"{'are' if len(bad) > 1 else 'is'} beyond this model's {limit} vocabulary rows: "
                                 f"its tokenizer and its weights do not belong together")


def prepare_contrast(
    lm: Any,
    prompt: Prompt,
    target: int | str | None = None,
    contrast: int | str | None = None,
    *,
    answer_prefix: str | Sequence[int] | None = None,
    chat: bool = False,
    thinking: bool = False,
    objective: str = "logit_diff",
    position: int | None = None,
    topk: int = 10,
    allow_long: bool = False,
) -> Contrast:
    """Tokenise the prompt (+ answer prefix), resolve target/contrast (a missing target: the greedy next token).

    ``lm`` is a :class:`failtrace.models.LoadedModel` (or anything with ``model`` and ``tokenizer``).
    """
    check_objective(objective)
    if not hasattr(lm, "tokenizer") or not hasattr(lm, "model"):  # e.g. lm.model, or None, given for lm
        raise FailtraceError(f"the model is failtrace.load_model(...)'s LoadedModel (model and tokenizer), not "
                             f"{type(lm).__name__}")
    if whole(topk) is None or topk < 1:
        raise FailtraceError(f"topk (the tokens topk_mean averages) must be a whole number >= 1, got {topk!r}")
    tok = lm.tokenizer
    prep = prepare_input(tok, prompt, chat=chat, answer_prefix=answer_prefix, thinking=thinking, position=position,
                         max_length=context_length(lm.model), allow_long=allow_long)
    tgt = resolve_token(tok, target, "target") if target is not None else None
    con = resolve_token(tok, contrast, "contrast") if contrast is not None else None
    if objective == "logit_diff" and con is None:
        raise FailtraceError("objective 'logit_diff' needs a contrast token; give --contrast or another --objective")
    if objective != "logit_diff" and con is not None:  # it would be recorded yet never enter the objective
        raise FailtraceError(f"objective {objective!r} does not use a contrast token; drop --contrast or use "
                             f"--objective logit_diff")
    check_fits_model(lm.model, prep.ids, [t.id for t in (tgt, con) if t is not None])
    own = tgt is None
    if own:
        tgt = greedy_token(lm, prep.ids)
    if con is not None and con.id == tgt.id:
        raise FailtraceError(
            f"the model's own next token (the default target) is the contrast {tgt.text!r} (id {tgt.id}): give "
            "another --contrast, or --target the token it should be compared with" if own else
            f"target and contrast are the same token ({tgt.text!r}, id {tgt.id}); pick two tokens")
    tgt_id, con_id = tgt.id, (None if con is None else con.id)

    def fn(logits: torch.Tensor) -> torch.Tensor:
        return objective_value(logits, objective, tgt_id, con_id, k=topk)

    return Contrast(prep=prep, target=tgt, contrast=con, objective=objective, fn=fn)
