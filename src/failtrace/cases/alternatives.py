"""The model's top-k alternatives at a case's failure point, with their Δℓ, recorded at analyse time.

At the context's last index the model gives logits ℓ over the vocabulary. A case records the k highest-logit
tokens (plus the target and the contrast if they are not among them): id, decoded text, ℓ and rank (how many tokens
have a strictly larger logit; the greedy target has rank 0). For each alternative a, Δℓ(a) = ℓ(target) − ℓ(a): how
strongly the model preferred its wrong token over a; the case's own Δℓ is Δℓ(contrast). These are the candidates a
reviewer may pick another contrast from (``failtrace serve --review``).

The logits come from the same plain forward pass as the case's Δℓ, so recording them costs no extra pass.
"""

from __future__ import annotations

from typing import Any

ALT_K = 10


def next_logits(model: Any, ids: list[int]) -> Any:
    """The next-token logits at the last index of ``ids`` (a float64 tensor), from an ordinary forward pass."""
    from failtrace.models.forward import last_logits

    return last_logits(model, ids).double().cpu()


def alternatives(tokenizer: Any, logits: Any, target: int, contrast: int, k: int = ALT_K) -> dict[str, Any]:
    """The record stored per case (module docstring): ``{k, target_logit, token_ids, tokens, logits, ranks}``."""
    import torch

    top = torch.topk(logits, min(k, logits.shape[-1])).indices.tolist()
    ids = top + [t for t in dict.fromkeys((target, contrast)) if t not in top]
    values = [float(logits[t]) for t in ids]
    ranks = [int((logits > logits[t]).sum()) for t in ids]
    texts = [tokenizer.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False) for t in ids]
    return {"k": int(k), "target_logit": float(logits[target]), "token_ids": [int(t) for t in ids], "tokens": texts,
            "logits": values, "ranks": ranks}


def rows(record: dict[str, Any] | None, target: int, contrast: int) -> list[dict[str, Any]] | None:
    """The stored record as one dict per alternative with Δℓ = ℓ(target) − ℓ(a); None when nothing is stored."""
    if not record:
        return None
    t_logit = float(record["target_logit"])
    return [{"token_id": t, "text": s, "logit": v, "delta_logit": t_logit - v, "rank": r, "is_target": t == target,
             "is_contrast": t == contrast}
            for t, s, v, r in zip(record["token_ids"], record["tokens"], record["logits"], record["ranks"])]
