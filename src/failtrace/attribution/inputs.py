"""Turn user input (text, chat messages or ids; target and contrast as ids or strings) into token ids."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence

from failtrace.attribution.record import TokenRef, visible
from failtrace.errors import FailtraceError, TokenizationError
from failtrace.models.chat import apply_chat_template

Prompt = str | Sequence[dict[str, str]] | Sequence[int]


@dataclass
class PreparedInput:
    """Token ids to run, how many belong to the prompt, and display strings."""

    ids: list[int]
    prompt_length: int
    tokens: list[str]
    special_mask: list[bool]


def whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (an int, a numpy integer), else None (a bool is no number)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _listed(value: Any) -> Any:
    """A numpy array or torch tensor as the list it holds; anything else as it is."""
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, (str, list, tuple)) else value


def _ids(value: Any) -> list[int] | None:
    """A non-empty list or tuple of whole numbers as ints, else None."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    ids = [whole(t) for t in value]
    return None if None in ids else ids  # type: ignore[return-value]


def _check_ids(ids: list[int], tokenizer: Any, what: str) -> list[int]:
    """Token ids inside the vocabulary (one out of range would be blamed on the model's weights later)."""
    vocab = len(tokenizer)
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise TokenizationError(f"{what} token ids out of range 0..{vocab - 1}: {bad[:5]}")
    return ids


def special_ids(tokenizer: Any) -> set[int]:
    """Ids the tokenizer treats as special (BOS/EOS, chat-template markers such as <|im_start|>)."""
    ids = set(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    for tid, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(tid))
    return ids


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (the string a user sees for that position)."""
    return [tokenizer.decode([int(i)], skip_special_tokens=False, clean_up_tokenization_spaces=False) for i in ids]


def ascii_digits(text: str) -> bool:
    """``'#ID'`` takes ASCII digits only ('²' and '７' pass ``isdigit``; the first then fails ``int``)."""
    return text.isascii() and text.isdigit()


def resolve_token(tokenizer: Any, spec: int | str, role: str) -> TokenRef:
    """A target/contrast given as an id or a string that must encode to exactly one token."""
    vocab = len(tokenizer)
    if isinstance(spec, bool):
        raise TokenizationError(f"{role} must be a token id or a string, got {spec!r}")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.startswith("#") and ascii_digits(spec[1:])):
        tid = int(spec[1:]) if isinstance(spec, str) else int(spec)
        if not 0 <= tid < vocab:
            raise TokenizationError(f"{role} id {tid} is out of range: the vocabulary has ids 0..{vocab - 1}")
        return TokenRef(tid, tokenizer.decode([tid], clean_up_tokenization_spaces=False))
    if not isinstance(spec, str) or spec == "":
        raise TokenizationError(f"{role} must be a non-empty string or a token id, got {spec!r}")
    ids = tokenizer.encode(spec, add_special_tokens=False)
    if len(ids) != 1:
        parts = " | ".join(repr(visible(t)) for t in decode_tokens(tokenizer, ids))
        hint = ""
        if not spec.startswith(" "):
            alt = tokenizer.encode(" " + spec, add_special_tokens=False)
            if len(alt) == 1:
                hint = f"; with a leading space, {(' ' + spec)!r} is one token (id {alt[0]})"
        raise TokenizationError(
            f"{role} {spec!r} encodes to {len(ids)} tokens ({parts}); it must be exactly one token{hint}. "
            f"Pass a single-token string or an id as '#ID'"
        )
    return TokenRef(int(ids[0]), tokenizer.decode([ids[0]], clean_up_tokenization_spaces=False))


class InputTooLongError(FailtraceError):
    """The input has more tokens than the model's context window and the caller did not allow that."""


def check_length(n_tokens: int, limit: int | None, allow_long: bool = False) -> None:
    """Refuse ``n_tokens`` beyond the context ``limit`` unless ``allow_long``.

    Beyond its context a model runs on positions it never saw in training (its output means little), and the cost
    grows with the length: a 21k-token prompt on an 8k model ran for 50 minutes before this check existed.
    """
    if limit is None or allow_long or n_tokens <= limit:
        return
    raise InputTooLongError(
        f"the input is {n_tokens:,} tokens, longer than the model's context window of {limit:,} tokens; shorten the "
        f"prompt (or explain an earlier token with --position), or pass --allow-long (allow_long=True) to run it "
        f"anyway"
    )


def prepare_input(
    tokenizer: Any,
    prompt: Prompt,
    chat: bool = False,
    answer_prefix: str | Sequence[int] | None = None,
    thinking: bool = False,
    position: int | None = None,
    *,
    max_length: int | None = None,
    allow_long: bool = False,
) -> PreparedInput:
    """Ids for prompt (+ answer prefix), truncated so that ``position`` (if given) is the last token.

    More than ``max_length`` ids (the model's context, see :func:`failtrace.models.limits.context_length`) is
    refused unless ``allow_long``.
    """
    prompt = _listed(prompt)
    if prompt is None or (isinstance(prompt, (str, list, tuple)) and len(prompt) == 0) or (
        isinstance(prompt, str) and not prompt.strip()
    ):
        raise FailtraceError("the prompt is empty; give some text, chat messages or token ids")
    given = _ids(prompt)
    if given is not None:
        ids = _check_ids(given, tokenizer, "prompt")
    elif isinstance(prompt, str) and not chat:
        ids = tokenizer.encode(prompt, add_special_tokens=True)
    elif isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt)):
        ids = apply_chat_template(tokenizer, prompt, thinking=thinking)  # type: ignore[arg-type]
    else:
        raise FailtraceError(f"a prompt is text, a list of chat messages ({{'role', 'content'}} dicts) or a list of "
                             f"token ids, not {type(prompt).__name__} {repr(prompt)[:60]}")
    prompt_length = len(ids)
    answer_prefix = _listed(answer_prefix)
    if isinstance(answer_prefix, str):
        ids = ids + tokenizer.encode(answer_prefix, add_special_tokens=False)
    elif answer_prefix is not None and answer_prefix != [] and answer_prefix != ():
        prefix = _ids(answer_prefix)
        if prefix is None:
            raise FailtraceError(f"answer_prefix is text or a list of token ids, not "
                                 f"{type(answer_prefix).__name__} {repr(answer_prefix)[:60]}")
        ids = ids + _check_ids(prefix, tokenizer, "answer_prefix")
    if position is not None:
        if whole(position) is None:  # True was token 1; 1.5 a TypeError in slicing
            raise FailtraceError(f"position must be a whole number (a token index), got {position!r}")
        position = whole(position)
        if not -len(ids) <= position < len(ids):
            raise FailtraceError(
                f"position {position} is out of range: the input has {len(ids)} tokens (valid 0..{len(ids) - 1}, or "
                f"-{len(ids)}..-1 counting from the end)"
            )
        ids = ids[: (position % len(ids)) + 1]
        prompt_length = min(prompt_length, len(ids))
    check_length(len(ids), max_length, allow_long)
    specials = special_ids(tokenizer)
    return PreparedInput(ids=ids, prompt_length=prompt_length, tokens=decode_tokens(tokenizer, ids),
                         special_mask=[i in specials for i in ids])
