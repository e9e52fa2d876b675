"""A judge model's hint for the pair search: where the response first breaks the instruction (speed only).

A local model (any one ``load_model`` accepts; it may be the explained model itself) is shown the item's prompt and
the failed response and asked to quote the first few words of the response where it first breaks the instruction.
Its greedy answer is searched in the completion text (the quoted text, then shorter word prefixes of it, exact
then case-insensitive) and the character found is mapped to the completion token that holds its first byte. The
search rolls that position out first; strict recovery still decides, so a wrong or missing hint costs rollouts,
never a different pair. Nothing here is parsed loosely into a result: no match means no hint.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from failtrace.benchmarks.base import Item
from failtrace.failures.generation import eos_token_ids, greedy_generate, pad_token_id

JUDGE_PROMPT = (
    "Below are an instruction and a response to it. The response does not fully follow the instruction.\n"
    "Find the place where the response FIRST breaks the instruction, and quote the first few words of the response "
    "starting at that place, exactly as they are written. Reply with the quote only, in double quotes.\n\n"
    "### Instruction\n{prompt}\n\n### Response\n{response}\n\n### Where the response first breaks the instruction"
)
_QUOTED = re.compile(r"\"([^\"]+)\"|\u201c([^\u201d]+)\u201d|`([^`]+)`|'([^']{3,})'")
MIN_QUOTE_CHARS = 4


@dataclass
class Hint:
    """The judge's answer, the quote found in the completion (and its first character), and the token position."""

    answer: str
    quote: str | None = None
    char: int | None = None
    position: int | None = None

    def describe(self) -> str:
        """The hint in words, for logs: the completion offset the judge pointed at, or why there is none."""
        if self.position is None:
            return f"none (the judge's answer {self.answer.strip()[:60]!r} is not in the completion)"
        return f"completion offset {self.position} (quoted {self.quote[:40]!r})"  # type: ignore[index]


def prompt_text(prompt: str | list[dict[str, str]]) -> str:
    """The item's prompt as plain text (chat messages joined, system and user alike)."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(str(m.get("content", "")) for m in prompt)


def candidates(answer: str) -> list[str]:
    """Texts to look for: the first quoted span of the answer (else its first line), then shorter word prefixes."""
    text = answer.strip()
    m = _QUOTED.search(text)
    quote = next(g for g in m.groups() if g) if m else (text.splitlines() or [""])[0].strip(" \"'`\u201c\u201d")
    words = quote.split()
    out = [quote.strip()] + [" ".join(words[:n]) for n in range(len(words) - 1, 0, -1)]
    return [c for c in dict.fromkeys(out) if len(c) >= MIN_QUOTE_CHARS]


def locate(answer: str, completion: str) -> tuple[int | None, str | None]:
    """(first character, quote) of the judge's quote in the completion text, or (None, None)."""
    lower = completion.lower()
    for cand in candidates(answer):
        at = completion.find(cand)
        if at < 0:
            at = lower.find(cand.lower()) if len(lower) == len(completion) else -1
        if at >= 0:
            return at, cand
    return None, None


def token_at(tokenizer: Any, ids: Sequence[int], char: int) -> int | None:
    """The first token of ``ids`` whose decoded prefix reaches past character ``char`` (the token holding its first
    byte: a partly decoded character shows as U+FFFD, so it already counts), or None beyond the text."""
    for j in range(len(ids)):
        text = tokenizer.decode(list(ids[:j + 1]), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if len(text) > char:
            return j
    return None


class PositionJudge:
    """Asks a loaded model where a failed response first breaks its instruction (see the module docstring)."""

    def __init__(self, loaded: Any, max_new_tokens: int = 40) -> None:
        self.loaded = loaded
        self.max_new_tokens = max_new_tokens
        self.eos = eos_token_ids(loaded.model, loaded.tokenizer)

    @property
    def name(self) -> str:
        """The judge model's registry name or path."""
        return str(self.loaded.name)

    def ask(self, item: Item, completion: str) -> str:
        """The judge's greedy answer for one failed response."""
        from failtrace.models.chat import apply_chat_template

        question = JUDGE_PROMPT.format(prompt=prompt_text(item.prompt), response=completion)
        tok = self.loaded.tokenizer
        ids = apply_chat_template(tok, question) if getattr(tok, "chat_template", None) else \
            list(tok.encode(question))
        out = greedy_generate(self.loaded.model, [ids], self.max_new_tokens, self.eos, pad_token_id(tok, self.eos))
        return str(tok.decode(out[0].token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def hint(self, item: Item, completion: str, ids: Sequence[int], tokenizer: Any, eos: frozenset[int]) -> Hint:
        """The hinted completion offset for the failed completion ``ids`` (text ``completion``)."""
        hint = Hint(self.ask(item, completion))
        hint.char, hint.quote = locate(hint.answer, completion)
        if hint.char is not None:
            body = list(ids[:-1]) if ids and ids[-1] in eos else list(ids)
            hint.position = token_at(tokenizer, body, hint.char)
        return hint
