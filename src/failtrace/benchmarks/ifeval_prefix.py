"""IFEval prefix rules: when a response's beginning already fails one official check whatever follows.

The pair search ends a rollout as soon as its verdict can no longer change (DESIGN: early stopping). Each rule reads
the official checker's own parsed arguments and is sound only because that check is monotone in the text; checks not
listed here are never decided early. The verdict itself is always :meth:`IFEvalBenchmark.check`'s.
"""

from __future__ import annotations

import json
import re
from typing import Any

_LITERAL = re.compile(r"[\w' -]+")
# what the official JSON check removes, in its order, and the first characters json.loads accepts (NaN, Infinity)
_JSON_FENCES = ("```json", "```Json", "```JSON", "```")
_JSON_START = frozenset('{["-0123456789tfnNI')


def _json_prefix_fails(prefix: str) -> str | None:
    """Why no text starting with ``prefix`` passes IFEval's ``json_format`` check, or None.

    The check is ``json.loads(text.strip()`` minus the fences ``_JSON_FENCES`` (in order) at the start and one
    ```` ``` ```` at the end, ``.strip())``. ``prefix.strip()`` is a prefix of ``text.strip()``; each fence removal is
    fixed once the prefix is longer than the fence or differs from it. After them, the first non-space character
    ``c`` starts what ``json.loads`` reads unless it is a backtick (the end fence could remove it): ``c`` that no
    JSON value starts with decides. If ``c`` opens an object, array or string that closes within the prefix (its end
    is fixed by the closing character), any later non-space, non-backtick character is "Extra data" for every text.
    Hand-written: the official check has no prefix form.
    """
    rest = prefix.strip()
    for fence in _JSON_FENCES:
        if len(rest) < len(fence) and fence.startswith(rest):
            return None  # whether this fence is removed depends on what follows
        rest = rest.removeprefix(fence)
    rest = rest.lstrip()
    if not rest or rest[0] == "`":
        return None
    if rest[0] not in _JSON_START:
        return f"the response cannot be JSON: it starts with {rest[0]!r}"
    if rest[0] not in '{["':
        return None  # a number or literal may still grow (1 -> 1e5)
    try:
        _value, end = json.JSONDecoder().raw_decode(rest)
    except ValueError:
        return None  # not closed yet (or invalid; not decided here)
    extra = next((ch for ch in rest[end:] if not ch.isspace() and ch != "`"), None)
    return f"text follows the JSON value: {extra!r}" if extra is not None else None


def _lowered(prefix: str) -> str:
    """``prefix.lower()`` as far as it is a prefix of every longer text's ``lower()``.

    Python lowers a capital sigma by its context (Unicode's Final_Sigma: ς after a cased letter unless a cased
    letter follows, case-ignorable characters such as U+0345 or an apostrophe skipped). Only the last Σ can still
    depend on what comes next, and only on the first character after the case-ignorable ones. So it is asked of
    Python itself: lowered with a cased letter ("a") and with a character that is neither ("0") next, does the last
    Σ come out the same? If not it is left out, with what follows it. It is the only context-dependent lowering.
    """
    at = prefix.rfind("\u03a3")
    if at >= 0:
        where = len(prefix[:at].lower())  # σ and ς are one character, so Σ's index in any lowering
        if (prefix + "a").lower()[where] != (prefix + "0").lower()[where]:
            prefix = prefix[:at]
    return prefix.lower()


def prefix_fails(instruction_id: str, checker: Any, prefix: str) -> str | None:
    """A reason when no text starting with ``prefix`` can satisfy one official IFEval check (strict), else None.

    Each rule reads the official checker's own parsed arguments and holds because the check is monotone in the
    text: counts of regex matches, letters and ``\\w+`` words of a prefix never exceed those of a longer text, a
    character that breaks ``islower``/``isupper`` stays, and ``strip().lower()`` of the longer text starts with that
    of the prefix (lowered by :func:`_lowered`: a trailing capital sigma's lowercase is not known yet). No official
    check raises on any text (langdetect's errors are caught inside the checks), so a decided prefix means the
    verdict ``fail``, never ``unverifiable``. Checks not listed are never decided early.
    """
    if instruction_id == "punctuation:no_comma":
        return "a comma was written" if "," in prefix else None
    if instruction_id == "change_case:english_lowercase":
        return "an uppercase letter was written" if any(c.isupper() for c in prefix) else None
    if instruction_id == "change_case:english_capital":
        return "a lowercase letter was written" if any(c.islower() for c in prefix) else None
    less = getattr(checker, "_comparison_relation", None) == "less than"
    if instruction_id == "length_constraints:number_words" and less:
        from if_verifiable.ifeval import instructions_util

        words = instructions_util.count_words(prefix)
        return f"{words} words already (limit: less than {checker._num_words})" \
            if words >= checker._num_words else None
    if instruction_id == "keywords:letter_frequency" and less and len(checker._letter) == 1:
        count = prefix.lower().count(checker._letter)  # a-z only (the official check draws another letter otherwise)
        return f"letter {checker._letter!r} {count} times already" if count >= checker._frequency else None
    if instruction_id == "keywords:frequency" and less and _LITERAL.fullmatch(checker._keyword):
        count = len(re.findall(checker._keyword, prefix, flags=re.IGNORECASE))
        return f"{checker._keyword!r} {count} times already" if count >= checker._frequency else None
    if instruction_id == "keywords:forbidden_words":
        for word in checker._forbidden_words:
            if not _LITERAL.fullmatch(word):
                continue
            # a match that ends before the prefix does keeps its closing word boundary whatever follows
            if any(m.end() < len(prefix) for m in re.finditer(r"\b" + word + r"\b", prefix, flags=re.IGNORECASE)):
                return f"forbidden word {word!r} was written"
        return None
    if instruction_id == "startend:quotation":
        head = prefix.lstrip()
        return "the response does not start with a double quote" if head and head[0] != '"' else None
    if instruction_id == "detectable_format:json_format":
        return _json_prefix_fails(prefix)
    if instruction_id == "combination:repeat_prompt":
        said, wanted = _lowered(prefix.strip()), checker._prompt_to_repeat.strip().lower()
        ok = said.startswith(wanted) or wanted.startswith(said)
        return None if ok else "the response does not start by repeating the request"
    return None
