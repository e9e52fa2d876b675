"""Segments: every context token belongs to exactly one named part of the input, and relevance sums per part.

Segment names: ``special`` (special ids and chat-template text such as role headers), ``system`` (the system
message, also a template's default one), the user turn split by the benchmark's segmenter (``instruction``,
``query``, ``problem``, ``signature``, ``docstring``, ``examples``; user text it does not name is ``query``), an
earlier user turn (``earlier_user``: a one-shot example, say; for agent traces, whose relevant segment is the whole
conversation's user text, it stays ``query``), agent turns (``assistant``, ``tool_call`` inside assistant turns,
``tool_result``), and ``answer`` (the tokens generated before the target: positions ``>= prompt_length``).

Tokens are placed on characters exactly: each token's text is the *increase* of the decoded text when the token is
appended (decode-accumulate), so the tokens' texts concatenate to ``tokenizer.decode(ids)`` (checked; a token that
completes a multi-byte character gets the character, the bytes before it get an empty span at the same place).
A token takes the segment of its first non-whitespace character (of its first character when it has none).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from failtrace.attribution.normalize import normalize  # noqa: F401  (re-exported: the one normalisation)

from failtrace.analysis.segmenters import SEGMENTERS, Spans
from failtrace.errors import FailtraceError

SEGMENT_NAMES: tuple[str, ...] = ("special", "system", "instruction", "query", "problem", "signature", "docstring",
                                  "examples", "assistant", "tool_call", "tool_result", "answer", "earlier_user")
# The segments that should decide the answer, per benchmark (failure patterns are relative to them).
RELEVANT_SEGMENTS: dict[str, tuple[str, ...]] = {
    "ifeval": ("instruction",),
    "math": ("problem",),
    "humaneval": ("docstring", "examples"),
    "traces": ("query", "tool_result"),
}
DEFAULT_RELEVANT: tuple[str, ...] = ("query",)
_TOOL_CALL = re.compile(r"<tool_call>.*?(?:</tool_call>|\Z)", re.DOTALL)
_ROLE_SEGMENT = {"system": "system", "assistant": "assistant", "tool": "tool_result", "ipython": "tool_result",
                 "function": "tool_result", "observation": "tool_result"}


def relevant_segments(benchmark: str, item: Any = None) -> tuple[str, ...]:
    """The segments that should decide the answer for ``benchmark`` (``query`` for unknown benchmarks); demo items
    (given ``item``) use the benchmark their ``reference["kind"]`` imitates."""
    if benchmark == "demo" and item is not None:
        from failtrace.analysis.segmenters import DEMO_KINDS

        benchmark = DEMO_KINDS.get(str(item.reference.get("kind")), benchmark)
    return RELEVANT_SEGMENTS.get(benchmark, DEFAULT_RELEVANT)


def token_texts(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """Each token's share of the decoded text (decode-accumulate); ``"".join`` equals ``decode(token_ids)``."""
    ids = [int(t) for t in token_ids]

    def dec(part: list[int]) -> str:
        return str(tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    out = [""] * len(ids)
    prefix, read = 0, 0  # window [prefix, read) is context already emitted; it keeps leading-space rules away
    for i in range(len(ids)):
        before = dec(ids[prefix:read]) if read > prefix else ""
        now = dec(ids[prefix:i + 1])
        if len(now) > len(before) and now.startswith(before) and not now.endswith("\ufffd"):
            out[i] = now[len(before):]
            prefix, read = read, i + 1
    full = dec(ids)
    if "".join(out) == full:
        return out
    out, prev = [""] * len(ids), ""  # exact fallback: the whole prefix each time (quadratic; rare)
    for i in range(len(ids)):
        now = dec(ids[:i + 1])
        if now.startswith(prev) and not now.endswith("\ufffd"):
            out[i], prev = now[len(prev):], now
    if "".join(out) != full:
        raise FailtraceError("cannot place tokens on characters: decoding token by token does not reproduce the text")
    return out


def token_char_spans(tokenizer: Any, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text and each token's [start, end) character span in it."""
    texts = token_texts(tokenizer, token_ids)
    spans, pos = [], 0
    for t in texts:
        spans.append((pos, pos + len(t)))
        pos += len(t)
    return "".join(texts), spans


def _messages(item: Any) -> list[dict[str, str]]:
    from failtrace.models.chat import chat_messages

    return chat_messages(item.prompt)


def _default_system(tokenizer: Any, messages: list[dict[str, str]], text: str) -> tuple[int, int] | None:
    """Where a template's own default system message sits in ``text`` (e.g. SmolLM2's), found by rendering the
    same messages with a sentinel system message: the rendering around the sentinel brackets the default, and the
    first message's text (as written or trimmed) must follow the bracket's end as it follows the sentinel's."""
    if any(m["role"] == "system" for m in messages):
        return None
    sentinel = "\x01FAILTRACE-SYSTEM\x01"
    try:
        with_sys = tokenizer.apply_chat_template([{"role": "system", "content": sentinel}, *messages],
                                                 tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that rejects a system message has no default one either
        return None
    if not isinstance(with_sys, str) or sentinel not in with_sys:
        return None
    head, tail = with_sys.split(sentinel, 1)
    if not text.startswith(head) or len(text) <= len(head):
        return None
    first = messages[0]["content"] if messages else ""
    at = tail.find(first) if first else len(tail)
    if at < 0 and first.strip():  # a template that trims the message (Gemma's ``| trim``)
        at = tail.find(first.strip())
    rest = tail[:max(1, at)]
    end = text.find(rest, len(head)) if rest else -1
    # a template that folds a system message into the first turn (Gemma's) renders the sentinel right before the
    # user's text, and ``rest`` ("\n\n") is then found inside that text: what follows it there is not the message
    follows = not first or any(c and text.startswith(c, end + len(rest)) for c in (first, first.strip()))
    return (len(head), end) if end > len(head) and follows else None


def _placed(tokenizer: Any, messages: list[dict[str, str]], text: str) -> list[tuple[int, str]] | None:
    """Where each message's content sits in ``text``, found from a rendering with one sentinel per message: the
    template text around the sentinels is the same in ``text``, so each content starts where its sentinel did,
    shifted by the earlier contents' lengths. A plain search from the start would find a short message ("s", "er")
    inside the template's own text (``<|im_start|>user``). Each placement is checked against ``text`` (the content
    as written or trimmed); None when any does not match (a template that rewrites content), so callers search."""
    marks = [f"\x02FT{i}\x02" for i in range(len(messages))]
    try:
        rendered = tokenizer.apply_chat_template([{**m, "content": s} for m, s in zip(messages, marks)],
                                                 tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that refuses the sentinel messages: fall back to searching
        return None
    if not isinstance(rendered, str) or any(rendered.count(s) != 1 for s in marks):
        return None
    out, shift = [], 0
    for msg, mark in zip(messages, marks):
        at = rendered.index(mark) + shift
        content = next((c for c in (msg["content"], msg["content"].strip()) if text.startswith(c, at)), None)
        if content is None:
            return None
        out.append((at, content))
        shift += len(content) - len(mark)
    return out


def _char_labels(tokenizer: Any, item: Any, text: str, char_spans: dict[str, Any] | None) -> list[str]:
    """One segment name per character of the rendered prompt ``text`` (``special`` outside every message)."""
    labels = ["special"] * len(text)
    messages = _messages(item)
    sys_span = _default_system(tokenizer, messages, text)
    cursor = 0
    if sys_span is not None:
        labels[sys_span[0]:sys_span[1]] = ["system"] * (sys_span[1] - sys_span[0])
        cursor = sys_span[1]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    placed = _placed(tokenizer, messages, text)
    for idx, msg in enumerate(messages):
        content, lead = msg["content"], 0
        if placed is not None:
            at, content = placed[idx]
        else:  # search after the previous message (a template that rewrites messages: no exact placement)
            at = text.find(content, cursor) if content else -1
            if at < 0 and content.strip():
                content = content.strip()
                at = text.find(content, cursor)
        if at < 0:
            continue  # the template dropped or rewrote this message: its characters stay template text
        if content != msg["content"]:  # the template trimmed it: user offsets count from the untrimmed text
            lead = len(msg["content"]) - len(msg["content"].lstrip())
        cursor = at + len(content)
        if msg["role"] == "user":
            # only the item's own turn (the last) is cut: an earlier user turn (a one-shot example) is context, and
            # its "problem" must not count as the item's relevant segment
            parts: Spans = {}
            if char_spans is not None and idx == last_user:
                parts = {str(k): [(min(max(int(a) - lead, 0), len(content)), min(max(int(b) - lead, 0), len(content)))
                                  for a, b in v] for k, v in char_spans.items()}
            elif idx == last_user:
                seg = SEGMENTERS.get(getattr(item, "benchmark", ""))
                parts = seg(item, content) if seg is not None else {}
            earlier = idx != last_user and getattr(item, "benchmark", "") != "traces"
            sub = ["earlier_user" if earlier else "query"] * len(content)  # (a report's "query" was the example too)
            for name, spans in parts.items():
                for a, b in spans:
                    if not 0 <= a <= b <= len(content):
                        raise FailtraceError(f"segment span {name} [{a}, {b}) is outside the user prompt "
                                             f"(0..{len(content)} characters)")
                    sub[a:b] = [name] * (b - a)
        else:
            name = _ROLE_SEGMENT.get(msg["role"], "query")
            sub = [name] * len(content)
            if name == "assistant":
                for m in _TOOL_CALL.finditer(content):
                    sub[m.start():m.end()] = ["tool_call"] * (m.end() - m.start())
        labels[at:at + len(content)] = sub
    return labels


def segment_labels(tokenizer: Any, token_ids: Sequence[int], special_mask: Sequence[bool], prompt_length: int,
                   item: Any, char_spans: dict[str, Any] | None = None) -> list[str]:
    """One segment name per context token (see the module docstring); ``char_spans`` (name -> [(start, end)] in the
    user-prompt text: the prompt string, or the last user message) replaces the benchmark's segmenter."""
    if len(special_mask) != len(token_ids):
        raise FailtraceError(f"special_mask has {len(special_mask)} entries for {len(token_ids)} tokens")
    prompt_length = max(0, min(int(prompt_length), len(token_ids)))
    text, spans = token_char_spans(tokenizer, list(token_ids)[:prompt_length])
    chars = _char_labels(tokenizer, item, text, char_spans) if text else []
    out = []
    for i in range(len(token_ids)):
        if special_mask[i]:
            out.append("special")
        elif i >= prompt_length:
            out.append("answer")
        else:
            a, b = spans[i]
            piece = text[a:b]
            off = len(piece) - len(piece.lstrip()) if piece.strip() else 0
            c = a + off
            out.append(chars[c] if c < len(chars) else (chars[-1] if chars else "special"))
    return out


def spans_from_labels(labels: Sequence[str]) -> dict[str, list[list[int]]]:
    """Segment name -> its runs of consecutive tokens as [start, end) spans, in order."""
    out: dict[str, list[list[int]]] = {}
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            out.setdefault(labels[start], []).append([start, i])
            start = i
    return out


def segment_relevance(relevance: Sequence[float] | np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Σ relevance over each segment's tokens (segments in order of first appearance); they add up to Σ R."""
    r = np.asarray(relevance, dtype=np.float64)
    if r.shape != (len(labels),):
        raise FailtraceError(f"relevance has shape {r.shape} for {len(labels)} segment labels")
    out: dict[str, float] = {}
    for name in dict.fromkeys(labels):
        out[name] = float(r[np.asarray(labels) == name].sum())
    return out
