"""Per-benchmark segmenters: character spans of the segments inside an item's user-prompt text.

A segmenter takes an :class:`~failtrace.benchmarks.base.Item` and the user message text and returns
``name -> [(start, end), ...]`` character spans in that text; characters it does not name are ``query``.
:mod:`failtrace.analysis.segments` maps them onto tokens. Rules (exact definitions in docs/ANALYSES.md):

* **ifeval** — the prompt is split into sentences (NLTK Punkt, English parameters, plus line breaks). A sentence after
  the first is ``instruction`` when it contains a cue of one of the item's instruction ids (a fixed phrase list per
  id, plus literal kwargs values such as the end phrase). In the first sentence (the task) only a trailing clause is:
  from the last connector ("that", "without", "and", ", " ...) before its first cue to the sentence end. Quantity
  phrases ("with at least 300 words", "300+ word") are ``instruction`` anywhere. Failure mode: cue words that belong
  to the task ("Write a JSON schema" for a JSON-format instruction) pull task text into ``instruction``, and
  constraints phrased without any cue stay ``query``; measured against llm-steer-instruct's
  ``prompt_without_instruction`` in docs/ANALYSES.md.
* **math** — the problem text is ``problem``; the appended "Please reason step by step ..." line is ``instruction``.
* **humaneval** — the instruction preamble and code fences are ``instruction``; in the code, the entry point's
  docstring is ``docstring`` from its first line up to the first example line (a line starting with ``>>>`` or with
  "example"/"for example"/"e.g."), from there to the docstring's end ``examples``; every other code line ``signature``.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

Spans = dict[str, list[tuple[int, int]]]

# Phrases (regular expressions, case-insensitive) that state an IFEval instruction of the given id.
IFEVAL_CUES: dict[str, tuple[str, ...]] = {
    "punctuation:no_comma": (r"\bcommas?\b",),
    "length_constraints:number_words": (r"\bwords?\b",),
    "length_constraints:number_sentences": (r"\bsentences?\b",),
    "length_constraints:number_paragraphs": (r"\bparagraphs?\b", r"\*\*\*", r"divider"),
    "length_constraints:nth_paragraph_first_word": (r"\bparagraphs?\b", r"first word", r"start with"),
    "keywords:forbidden_words": (r"\bkeywords?\b", r"\bnot (?:to )?(?:use|include|say|mention|contain)",
                                 r"\bwithout (?:using|saying|mentioning|including|the word)", r"\bavoid",
                                 r"should not (?:appear|be)", r"\bcannot\b", r"\bforbidden\b", r"\bexclude",
                                 r"\bthe words?\b"),
    "keywords:existence": (r"\bkeywords?\b", r"\binclude\b", r"\bmention\b", r"\bcontain"),
    "keywords:frequency": (r"\btimes?\b", r"\bkeywords?\b", r"\bappear", r"\bat least\b", r"\bat most\b",
                           r"\bonce\b", r"\btwice\b", r"\bthe words?\b"),
    "keywords:letter_frequency": (r"\bletter\s+['\"]?\w['\"]?(?:\s|$|[,.])",),
    "change_case:english_lowercase": (r"lower ?case", r"\bcapital", r"\bcapitalized?\b"),
    "change_case:english_capital": (r"\bcapital", r"upper ?case", r"\bcaps\b", r"\bcapitalized?\b"),
    "change_case:capital_word_frequency": (r"\bcapital", r"\bcaps\b", r"upper ?case", r"\bcapitalized?\b"),
    "detectable_format:title": (r"\btitle\b", r"<<", r"angular"),
    "detectable_format:json_format": (r"\bjson\b",),
    "detectable_format:multiple_sections": (r"\bsections?\b",),
    "detectable_format:number_bullet_lists": (r"\bbullet", r"markdown", r"^\s*\* "),
    "detectable_format:number_highlighted_sections": (r"highlight", r"itali", r"markdown", r"\*[^*\s][^*]*\*"),
    "detectable_format:constrained_response": (r"my answer is", r"\boptions?\b", r"one of the following"),
    "detectable_content:number_placeholders": (r"placeholders?", r"square brackets"),
    "detectable_content:postscript": (r"\bP\.\s?P?\.?\s?S\.?", r"postscript"),
    "startend:end_checker": (r"\bend (?:your|it|with)", r"\bfinish", r"exact phrase", r"\bconclude",
                             r"no other words"),
    "startend:quotation": (r"quotation", r"double quotes?", r"\bquotes\b"),
    "combination:two_responses": (r"two (?:different |alternative )?(?:responses|answers)", r"\*{6}",
                                  r"asterisk"),
    "combination:repeat_prompt": (r"\brepl?eat", r"word for word", r"start with"),
    "language:response_language": (r"\blanguage\b", r"\bno other language"),
}

# ISO 639-1 codes used by IFEval's language instruction -> the English name that appears in the prompt.
_LANGUAGES = {"ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "de": "German", "fa": "Persian", "fi": "Finnish",
              "gu": "Gujarati", "hi": "Hindi", "it": "Italian", "kn": "Kannada", "ko": "Korean", "mr": "Marathi",
              "ne": "Nepali", "pa": "Punjabi", "pt": "Portuguese", "ru": "Russian", "sw": "Swahili", "ta": "Tamil",
              "te": "Telugu", "th": "Thai", "ur": "Urdu", "vi": "Vietnamese", "es": "Spanish", "fr": "French",
              "ja": "Japanese", "zh": "Chinese", "en": "English"}
# kwargs whose literal value marks an instruction sentence. Not forbidden words or keywords: the task text itself
# usually contains them (that is what makes the instruction hard).
_KWARG_TEXT = ("end_phrase", "postscript_marker", "section_spliter", "first_word")


@functools.lru_cache(maxsize=1)
def _sentence_splitter() -> Any:
    from failtrace.benchmarks.ifeval import english_sentence_tokenizer

    return english_sentence_tokenizer()


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentences of ``text`` as character spans: Punkt sentences, further split at line breaks; blanks dropped."""
    out: list[tuple[int, int]] = []
    for start, end in _sentence_splitter().span_tokenize(text):
        piece = text[start:end]
        pos = 0
        for line in piece.split("\n"):
            s = start + pos
            pos += len(line) + 1
            if line.strip():
                lead = len(line) - len(line.lstrip())
                out.append((s + lead, s + len(line.rstrip())))
    return out


def ifeval_cue_patterns(instruction_ids: list[str], kwargs: list[dict[str, Any]]) -> list[re.Pattern[str]]:
    """The compiled cues for an item: the fixed phrases of its instruction ids and the literal kwargs values."""
    pats: list[str] = []
    for iid, kw in zip(instruction_ids, kwargs or [{} for _ in instruction_ids]):
        pats.extend(IFEVAL_CUES.get(iid, ()))
        for key in _KWARG_TEXT:
            val = (kw or {}).get(key)
            for v in (val if isinstance(val, list) else [val]):
                if isinstance(v, str) and v.strip():
                    pats.append(re.escape(v.strip()))
        lang = (kw or {}).get("language")
        if isinstance(lang, str) and lang in _LANGUAGES:
            pats.append(r"\b" + _LANGUAGES[lang] + r"\b")
    return [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in pats]


# A length/count constraint written inside a sentence ("with at least 300 words", "300+ word", "of exactly 2
# paragraphs"): marked as instruction even inside the task sentence.
_QUANTITY = re.compile(
    r"(?:\b(?:with|of|in|using|that(?:'s| is| has)?|which (?:is|has)|containing|having)\s+)?"
    r"(?:\b(?:at least|at most|less than|more than|fewer than|exactly|no more than|no less than|under|over|"
    r"around|about|only)\s+)?\b\d+\+?(?:\s+or\s+(?:more|less|fewer))?\s*-?\s*"
    r"(?:words?|sentences?|paragraphs?|bullet(?: points?)?|sections?|placeholders?|times|highlighted sections?)\b"
    r"(?:\s+or\s+(?:more|less|fewer))?(?:\s+long)?",
    re.IGNORECASE)


# Words that open a trailing constraint clause inside the task sentence ("... about the UK without using commas").
_CONNECTOR = re.compile(r"\s(?:that|which|without|but|and|using|with|while)\s|,\s", re.IGNORECASE)


def _trailing_clause(text: str, s: int, e: int, pats: list[re.Pattern[str]],
                     quantities: list[tuple[int, int]]) -> tuple[int, int] | None:
    """In the task sentence [s, e): from the last connector before the first cue (outside quantity phrases and
    after the sentence's first word) to the sentence end; None when there is no such cue or connector."""
    first_word = s + len(text[s:e].split(" ", 1)[0])
    starts = [m.start() for p in pats for m in p.finditer(text, s, e)
              if not any(a <= m.start() < b for a, b in quantities)]
    if not starts:
        return None
    # a connector may itself open the cue ("... without using the word X"): it starts before the cue's first letter
    cons = [m.start() for m in _CONNECTOR.finditer(text, first_word, e) if m.start() < min(starts)]
    return (cons[-1] + 1, e) if cons else None


def ifeval_spans(item: Any, text: str) -> Spans:
    """``instruction`` sentences and quantity phrases of an IFEval prompt (rule in the module docstring)."""
    ids = list(item.reference.get("instruction_id_list", []))
    pats = ifeval_cue_patterns(ids, list(item.reference.get("kwargs", [])))
    sents = sentence_spans(text)
    hits = [any(p.search(text, s, e) for p in pats) for s, e in sents]
    spans: list[tuple[int, int]] = []
    for n, ((s, e), hit) in enumerate(zip(sents, hits)):
        if hit and n > 0:
            spans.append((s, e))
            continue
        quantities = [(m.start(), m.end()) for m in _QUANTITY.finditer(text, s, e)]
        spans += quantities
        if hit:  # the task sentence: only a trailing clause that holds a cue
            clause = _trailing_clause(text, s, e, pats, quantities)
            if clause is not None:
                spans.append(clause)
    return {"instruction": _merge(spans, text)}


def _merge(spans: list[tuple[int, int]], text: str = "") -> list[tuple[int, int]]:
    """Overlapping spans as one; with ``text``, also spans only whitespace apart (the line break between two
    instruction lines belongs to them: left out, it was a lone ``query`` token between them)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and (s <= out[-1][1] or (text and text[out[-1][1]:s].isspace())):
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def math_spans(item: Any, text: str) -> Spans:
    """``problem``: the problem statement; ``instruction``: the answer-format request after it (MATH's "Please
    reason step by step ... \\boxed{}." line, or any last sentence that mentions ``\\boxed``), with the blank line
    the benchmark puts before it (left unnamed, it was a stray ``query`` segment in every MATH case)."""
    from failtrace.benchmarks.mathbench import INSTRUCTION

    at = text.rfind(INSTRUCTION)
    if at < 0:
        sents = sentence_spans(text)
        if len(sents) > 1 and "\\boxed" in text[sents[-1][0]:sents[-1][1]]:
            at = sents[-1][0]
    if at <= 0:
        return {"problem": [(0, len(text))]}
    end = len(text[:at].rstrip())
    return {"problem": [(0, end)], "instruction": [(end, len(text))]}


_EXAMPLE_LINE = re.compile(r"^\s*(>>>|(for )?examples?\b|e\.g\.)", re.IGNORECASE)


def humaneval_spans(item: Any, text: str) -> Spans:
    """``signature`` / ``docstring`` / ``examples`` in the code, ``instruction`` around it."""
    code = str(item.reference.get("prompt") or "")
    at = text.find(code) if code else -1
    if at < 0:
        return {}
    spans: Spans = {"instruction": [(0, at), (at + len(code), len(text))], "signature": [], "docstring": [],
                    "examples": []}
    entry = str(item.reference.get("entry_point") or "")
    m = None
    for m in re.finditer(r"^[ \t]*def\s+" + re.escape(entry) + r"\b", code, re.MULTILINE):
        pass
    doc = re.search(r'("""|\'\'\')(.*?)(\1|\Z)', code[m.end():], re.DOTALL) if m else None
    if doc is None:
        spans["signature"].append((at, at + len(code)))
        return spans
    d0, d1 = m.end() + doc.start(), m.end() + doc.end()  # type: ignore[union-attr]
    ex = None
    pos = d0
    for line in code[d0:d1].splitlines(keepends=True):
        if pos > d0 and _EXAMPLE_LINE.match(line):
            ex = pos
            break
        pos += len(line)
    spans["signature"] += [(at, at + d0), (at + d1, at + len(code))]
    spans["docstring"].append((at + d0, at + (ex if ex is not None else d1)))
    if ex is not None:
        spans["examples"].append((at + ex, at + d1))
    return spans


# The demo benchmark (benchmarks/demo.py) imitates these three; its items say which in reference["kind"].
DEMO_KINDS: dict[str, str] = {"ifeval": "ifeval", "math": "math", "python": "humaneval"}


def demo_spans(item: Any, text: str) -> Spans:
    """Demo items are segmented like the benchmark their ``reference["kind"]`` imitates."""
    kind = DEMO_KINDS.get(str(item.reference.get("kind")))
    return SEGMENTERS[kind](item, text) if kind else {}


SEGMENTERS: dict[str, Callable[[Any, str], Spans]] = {
    "ifeval": ifeval_spans,
    "math": math_spans,
    "humaneval": humaneval_spans,
    "demo": demo_spans,
}
