"""Agent-trace messages and expected actions: chat messages as ``{role, content}`` text (past tool calls rendered in
the ``<tool_call>`` form) and the ``expected`` next action validated. Shared by the traces benchmark's loader and its
converters from published trace formats (:mod:`failtrace.benchmarks.traces`)."""

from __future__ import annotations

import ast
import json
from typing import Any


def render_tool_call(name: str, arguments: Any) -> str:
    """How a past tool call appears in the context: the common ``<tool_call>`` JSON form."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</tool_call>"


def json_arguments(raw: Any) -> Any:
    """Tool-call arguments as parsed JSON: a JSON string is parsed (kept as the string when it does not parse),
    None is {}."""
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError):  # not JSON, an int of more than 4,300 digits, nesting too deep
            return raw
    return {} if raw is None else raw


def openai_calls(message: dict[str, Any]) -> list[tuple[str, Any]]:
    """An OpenAI-style message's tool calls as (name, arguments); a list stored as its Python repr is read too."""
    calls = message.get("tool_calls") or []
    if isinstance(calls, str):  # some dumps store the list as its Python repr
        try:
            calls = ast.literal_eval(calls)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: "{[1]: 2}"
            calls = []
    out = []
    for call in calls if isinstance(calls, list) else []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out.append((fn["name"], json_arguments(fn.get("arguments"))))
    return out


def normalise_messages(messages: list[Any]) -> list[dict[str, str]]:
    """Chat messages as ``{role, content}`` strings; an assistant's tool calls are rendered into its content."""
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"message {i} must be an object with a 'role' string")
        content = message.get("content")
        if content is None:
            content = ""
        elif not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        calls = openai_calls(message) if message["role"] == "assistant" else []
        if calls:
            content = "\n".join([content, *(render_tool_call(n, a) for n, a in calls)]).strip("\n")
        out.append({"role": message["role"], "content": content})
    return out


ACTION_KINDS: tuple[str, ...] = ("tool", "answer", "reply", "command")


def parse_expected(expected: Any) -> dict[str, Any]:
    """Validate an ``expected`` action: exactly one of tool (+ arguments, an object), answer, reply, command, each a
    string with text in it (an empty one could never be met, or never missed: no honest verdict either way)."""
    if not isinstance(expected, dict):
        raise ValueError("'expected' must be an object like {\"tool\": ..., \"arguments\": {...}} or {\"answer\": ...}")
    # a key whose value is null is absent: a Parquet struct column or a hub dataset gives every row every field
    expected = {k: v for k, v in expected.items() if v is not None}
    kinds = [k for k in ACTION_KINDS if k in expected]
    if len(kinds) > 1:
        raise ValueError(f"'expected' holds {' and '.join(repr(k) for k in kinds)}: give exactly one action")
    if kinds and not (isinstance(expected[kinds[0]], str) and expected[kinds[0]].strip()):
        raise ValueError(f"'expected' {kinds[0]!r} must be a non-empty string, got {expected[kinds[0]]!r}"[:200])
    if isinstance(expected.get("tool"), str):
        arguments = json_arguments(expected.get("arguments"))
        if isinstance(arguments, str):  # a JSON string that does not parse: no call's arguments could equal it
            raise ValueError(f"'expected' arguments of {expected['tool']!r} are not valid JSON: {arguments[:60]!r}")
        if not isinstance(arguments, dict):  # a call's arguments are named: 5 or [1, 2] could never be equalled
            raise ValueError(f"'expected' arguments of {expected['tool']!r} must be an object of named arguments, "
                             f"got {type(arguments).__name__}")
        if _has_non_finite(arguments):  # Python's json reads NaN/Infinity; no call equals NaN, and JSON has neither
            raise ValueError(f"'expected' arguments of {expected['tool']!r} hold NaN or Infinity, which is not JSON "
                             "(and no answer equals NaN)")
        return {"tool": expected["tool"], "arguments": arguments}
    for kind in ("answer", "reply", "command"):
        if isinstance(expected.get(kind), str):
            return {kind: expected[kind]}
    raise ValueError("'expected' needs a 'tool' name, or an 'answer', 'reply' or 'command' string")


def _has_non_finite(value: Any) -> bool:
    """Whether a parsed JSON value holds a NaN or infinite float anywhere (iteratively: arguments can nest deep)."""
    stack = [value]
    while stack:
        x = stack.pop()
        if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
            return True
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False
