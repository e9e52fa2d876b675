"""Agent traces: given the conversation so far, the model must produce the next assistant turn.

Items are JSONL records ``{id, messages: [{role, content}, ...], expected}``, where ``expected`` is a tool call
``{"tool": name, "arguments": {...}}``, a final answer ``{"answer": text}``, a free-text turn to the user ``{"reply":
text}``, or (for SWE-agent's text actions) ``{"command": text}``. The checker finds the tool call in the completion
(``<tool_call>`` blocks, Llama-style ``<function=name>{...}</function>``, or a bare JSON object naming a tool with its
arguments, or alone, OpenAI ``tool_calls`` included) and compares tool name and arguments as normalised JSON; answers
and commands are compared as normalised text. A reply is judged by the kind of action only (text to the user, not a tool
call, not empty): its wording is one agent's choice (the traces' replies are GPT-4o's), no checker can tell another
wording wrong, and an exact-match rule would make nearly every reply step a failure no one-token contrast can recover.
Whether the wording matched anyway is kept in the verdict's details.

:func:`convert_trace` turns a tau-bench trajectory file or a SWE-agent ``.traj`` into such items, one per assistant
action, with the messages before it as context. Everything here is linear in the input size, so 10k+ token
conversations are no problem.
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from failtrace.benchmarks.base import Item, LoadReport, Verdict
from failtrace.benchmarks.loaders import build_items, items_from_records
from failtrace.benchmarks.trace_messages import json_arguments, normalise_messages, openai_calls, parse_expected
from failtrace.errors import FailtraceError

REQUIRED_FIELDS = ("id", "messages", "expected")
FORMATS = ("--data for traces is JSONL items {id, messages, expected}, a tau-bench trajectory list (.json, "
           "[{task_id, trial, traj}]) or a SWE-agent .traj ({history})")
_ARG_KEYS = ("arguments", "parameters", "args", "input", "kwargs", "action_input")
_NAME_KEYS = ("name", "tool", "tool_name", "function", "action")
_TOOL_CALL_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_FUNCTION_TAG = re.compile(r"<function=([\w.\-]+)>(.*?)</function>", re.DOTALL)
_FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


# --- finding a tool call in free text -----------------------------------------------------------------------------

def json_object_spans(text: str) -> Iterator[tuple[int, int]]:
    """Spans of top-level ``{...}`` groups, skipping braces inside JSON strings. One linear pass (trying
    ``json.raw_decode`` at every brace would be quadratic on long outputs)."""
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if depth and in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"' and depth:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                yield start, i + 1


def _load_object(span: str) -> Any:
    """The JSON (or Python literal) value of a ``{...}`` span, None when it is neither. Braces that Python cannot
    hash (``{{}}``), a number too long for ``int`` and nesting deeper than the recursion limit are text, not a
    checker crash."""
    try:
        return json.loads(span)
    except (ValueError, RecursionError):  # JSONDecodeError, and ValueError: int of more than 4,300 digits
        pass
    if len(span) < 100_000:  # Python-style dicts ('single quotes', True/None) are common in model output
        try:
            value = ast.literal_eval(span)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: {{}}, {[1]}
            return None
        try:  # keep only what JSON can hold (verdict details are stored as JSON): sets, bytes... become strings
            return json.loads(json.dumps(value, default=repr))
        except (TypeError, ValueError, RecursionError):
            return None
    return None


def as_tool_call(obj: Any) -> dict[str, Any] | None:
    """``{"name", "arguments"}`` if ``obj`` is a tool call in one of the common shapes, else None."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("tool_calls"), list) and obj["tool_calls"]:
        return as_tool_call(obj["tool_calls"][0])
    if isinstance(obj.get("function"), dict):
        return as_tool_call(obj["function"])
    name = next((obj[k] for k in _NAME_KEYS if isinstance(obj.get(k), str)), None)
    if name is None:
        return None
    args_key = next((k for k in _ARG_KEYS if k in obj), None)
    if args_key is None and set(obj) - set(_NAME_KEYS) - {"type", "id"}:
        return None  # a name but no arguments and other keys: some other JSON, not a call
    return {"name": name, "arguments": json_arguments(obj.get(args_key)) if args_key else {}}


def _tool_call_tag_calls(text: str) -> list[dict[str, Any]]:
    """The calls inside ``<tool_call>`` blocks, in order."""
    calls: list[dict[str, Any]] = []
    for body in _TOOL_CALL_TAG.findall(text):
        for start, end in json_object_spans(body):
            if (call := as_tool_call(_load_object(body[start:end]))) is not None:
                calls.append(call)
    return calls


def find_tool_calls(text: str) -> list[dict[str, Any]]:
    """Every tool call in ``text``, in order: tagged forms first, then bare JSON objects."""
    calls = _tool_call_tag_calls(text)
    for name, body in _FUNCTION_TAG.findall(text):
        obj = _load_object(body.strip() or "{}")
        calls.append({"name": name, "arguments": obj if obj is not None else body.strip()})
    if calls:
        return calls
    for start, end in json_object_spans(text):
        obj = _load_object(text[start:end])
        if (call := as_tool_call(obj)) is not None and _reads_as_call(obj, call["name"]):
            calls.append(call)
    return calls


def _reads_as_call(obj: dict[str, Any], name: str) -> bool:
    """Whether a bare JSON object in the text (no tool-call tag around it) is a call rather than data shown to the user:
    it has arguments (or the ``tool_calls``/``function`` wrapper), or it is a lone name that could be a tool's (a word,
    as OpenAI's ``^[a-zA-Z0-9_-]{1,64}$``, dots and colons allowed; a ``type`` ``function``, and then the call's ``id``,
    may come with it). ``{"name": "Mia Li"}`` in a reply is a person's profile, and was once taken for a call to a tool
    named 'Mia Li'. A lone one-word name (``{"name": "Mia"}``) still reads as a call."""
    if "tool_calls" in obj or isinstance(obj.get("function"), dict) or any(k in obj for k in _ARG_KEYS):
        return True
    typed = obj.get("type", "function") == "function"  # {"type": "user", "name": "alice"} is a record
    allowed = set(_NAME_KEYS) | {"type"} | ({"id"} if "type" in obj else set())  # a call's id, beside its type
    return typed and bool(_TOOL_NAME.fullmatch(name)) and set(obj) <= allowed


# --- comparison ---------------------------------------------------------------------------------------------------

def normalise_json(value: Any) -> Any:
    """Keys and strings stripped and NFC-normalised, ints and equal floats alike; booleans stay booleans."""
    if isinstance(value, dict):
        return {unicodedata.normalize("NFC", str(k)).strip(): normalise_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise_json(v) for v in value]
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value).strip()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def argument_differences(expected: Any, got: Any, path: str = "arguments") -> list[str]:
    """Human-readable differences between normalised expected and actual arguments (empty when equal)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        diffs = [f"{path}.{k}: missing" for k in expected if k not in got]
        diffs += [f"{path}.{k}: not expected" for k in got if k not in expected]
        for k in expected:
            if k in got:
                diffs += argument_differences(expected[k], got[k], f"{path}.{k}")
        return diffs
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        return [d for i, (e, g) in enumerate(zip(expected, got)) for d in argument_differences(e, g, f"{path}[{i}]")]
    same = expected == got and isinstance(expected, bool) == isinstance(got, bool)
    return [] if same else [f"{path}: expected {_short(expected)}, got {_short(got)}"]


def normalise_text(text: str) -> str:
    """Case-folded, whitespace collapsed, surrounding quotes and final punctuation dropped."""
    text = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return text.strip().strip("\"'`").rstrip(".!").strip()


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _command_text(completion: str) -> str:
    blocks = _FENCE.findall(completion)
    return " ".join((blocks[-1] if blocks else completion).split())


class TracesBenchmark:
    """Next-action prediction on agent traces (JSONL items, or a raw tau-bench / SWE-agent file converted on load)."""

    name = "traces"
    max_new_tokens = 256

    def load(self, source: str, limit: int | None = None) -> LoadReport:
        path = Path(source)
        if path.is_file() and path.suffix.lower() in (".json", ".traj"):
            raw = _read_json(path)
            if _is_raw_trace(raw):
                converted = convert_trace(raw, path.stem, source)
                records = ((f"action {i}", rec) for i, rec in enumerate(converted, start=1))
                return items_from_records(records, source, limit, REQUIRED_FIELDS, _to_item, formats=FORMATS)
        return build_items(source, limit, REQUIRED_FIELDS, _to_item, formats=FORMATS)

    def caveats(self, items: Sequence[Item]) -> list[str]:
        """A warning when some of these items come from tau-bench episodes that ended with reward < 1: their actions
        are a failing agent's, yet each is compared as the expected next action like any other (which of them went
        wrong, the file does not say). Counted over the items chosen, not the file."""
        rewards = [it.meta.get("reward") for it in items]
        failed = sum(1 for x in rewards if isinstance(x, (int, float)) and not isinstance(x, bool) and x < 1)
        if not failed:
            return []
        return [f"{failed} of the {len(items)} items come from episodes that ended with reward < 1 (the episode "
                "failed); their actions are still the expected ones, though one of them went wrong (an item's "
                "meta.reward gives its episode's reward)"]

    # Prefix rules for the pair search (failures.prefix_rules; the argument in docs/PAIRS.md). Text appended to a
    # prefix leaves every JSON object span the prefix closed, every <tool_call> block it closed and the blocks'
    # order as they were (all scans run left to right), so the calls found in a prefix stay, in the same order and
    # first, in every completion that starts with it.

    def prefix_decides_fail(self, item: Item, prefix: str) -> str | None:
        """An answer or a reply was expected and ``prefix`` already holds a tool call: every completion starting with
        it holds that call, and :meth:`check` fails any answer or reply that holds one."""
        expected = item.reference["expected"]
        if ("answer" in expected or "reply" in expected) and (calls := find_tool_calls(prefix)):
            wanted = "an answer" if "answer" in expected else "a reply"
            return f"made a tool call ({calls[0]['name']!r}) where {wanted} was expected"
        return None

    def prefix_final(self, item: Item, prefix: str) -> bool:
        """A tool call was expected and ``prefix`` holds a whole call inside ``<tool_call>`` tags: :meth:`check`
        judges the first call found, and that one is fixed (``<tool_call>`` calls come first; a bare or
        ``<function=...>`` call is not final: a later ``<tool_call>`` block would come before it)."""
        return "tool" in item.reference["expected"] and bool(_tool_call_tag_calls(prefix))

    def check(self, item: Item, completion: str) -> Verdict:
        expected = item.reference["expected"]
        calls = find_tool_calls(completion)
        details: dict[str, Any] = {"expected": expected, "tool_calls_found": calls[:5]}
        if "tool" in expected:
            if not calls:
                reason = f"no tool call found in the completion (expected a call to {expected['tool']!r})"
                return Verdict("fail", [reason], details)
            call = calls[0]
            if call["name"] != expected["tool"]:
                return Verdict("fail", [f"called {call['name']!r} instead of {expected['tool']!r}"], details)
            diffs = argument_differences(normalise_json(expected["arguments"]), normalise_json(call["arguments"]))
            if diffs:
                more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
                return Verdict("fail", [f"{expected['tool']} arguments differ: " + "; ".join(diffs[:5]) + more],
                               details | {"argument_differences": diffs})
            return Verdict("pass", [], details)
        if "answer" in expected:
            if calls:
                return Verdict("fail", [f"made a tool call ({calls[0]['name']!r}) where an answer was expected"],
                               details)
            if normalise_text(completion) == normalise_text(expected["answer"]):
                return Verdict("pass", [], details)
            reason = f"answer {_short(completion)} differs from the expected {_short(expected['answer'])}"
            return Verdict("fail", [reason], details)
        if "reply" in expected:
            if calls:
                return Verdict("fail", [f"made a tool call ({calls[0]['name']!r}) where a reply to the user was "
                                        "expected"], details)
            if not completion.strip():
                return Verdict("fail", ["an empty reply where a reply to the user was expected"], details)
            same = normalise_text(completion) == normalise_text(expected["reply"])
            return Verdict("pass", [], details | {"reply_matches_reference": same})
        got = _command_text(completion)
        if got == " ".join(expected["command"].split()):
            return Verdict("pass", [], details)
        return Verdict("fail", [f"command {_short(got)} differs from the expected {_short(expected['command'])}"],
                       details)


def _to_item(record: dict[str, Any], where: str) -> Item:
    rid = record["id"]
    if isinstance(rid, bool) or not (isinstance(rid, int) or (isinstance(rid, str) and rid.strip())):
        raise ValueError(f"'id' must be a non-empty string or an integer, got {rid!r}"[:200])
    if not isinstance(record["messages"], list) or not record["messages"]:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    messages = normalise_messages(record["messages"])
    expected = parse_expected(record["expected"])
    if record.get("meta") is not None and not isinstance(record["meta"], dict):  # 0, "" and false too
        raise ValueError("'meta' must be an object")
    meta = dict(record.get("meta") or {})
    meta["n_messages"] = len(messages)
    return Item(id=str(record["id"]), benchmark="traces", prompt=messages, reference={"expected": expected},
                meta=meta)


# --- converters from published trace formats ----------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark, as the item loaders allow
    except (ValueError, RecursionError):  # not JSON, not UTF-8 (both ValueErrors), an int of more than 4,300 digits
        return None  # e.g. JSON Lines under .json, or not UTF-8: the normal loader reports it precisely
    except OSError as exc:
        raise FailtraceError(f"cannot read {path}: {exc}") from exc


def _is_raw_trace(raw: Any) -> bool:
    """A raw trace by its keys (``history``, ``traj``), whatever their values: a wrong value is then named by the
    converter ("'history' must be a list ...") rather than read as a JSONL item that lacks id, messages, expected."""
    if isinstance(raw, dict):
        return "history" in raw or "traj" in raw
    return isinstance(raw, list) and bool(raw) and isinstance(raw[0], dict) and "traj" in raw[0]


def _expected_action(message: dict[str, Any]) -> dict[str, Any] | None:
    calls = openai_calls(message)
    if calls:
        return {"tool": calls[0][0], "arguments": calls[0][1]}
    if isinstance(message.get("action"), str) and message["action"].strip():  # SWE-agent text command
        return {"command": message["action"].strip()}
    content = message.get("content")
    if isinstance(content, str) and content.strip():  # a turn to the user: judged by its kind (module docstring)
        return {"reply": content}
    return None


def _items_from_messages(messages: list[dict[str, Any]], base_id: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One item per assistant action; the context is the normalised messages before it (rendered once, sliced)."""
    rendered = normalise_messages(messages)
    items = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or i == 0:
            continue
        expected = _expected_action(message)
        if expected is None:
            continue
        item_meta: dict[str, Any] = {**meta, "message_index": i}
        items.append({"id": f"{base_id}-m{i}", "messages": rendered[:i], "expected": expected, "meta": item_meta})
    return items


def convert_trace(raw: Any, name: str = "trace", where: str | None = None) -> list[dict[str, Any]]:
    """Items from a tau-bench trajectory list (``[{task_id, trial, traj, ...}]``) or a SWE-agent ``.traj``
    (``{history: [...]}``); ``name`` prefixes the item ids, ``where`` (default ``name``) names the file in errors.
    A trace with no assistant action to check is an error."""
    where = where or name
    items = _convert(raw, name, where)
    if not items:
        raise FailtraceError(f"{where}: the trace has no assistant action to check (an item is an assistant turn "
                             "after the first message with a tool call, a SWE-agent action or text)")
    return items


def _convert(raw: Any, name: str, where: str) -> list[dict[str, Any]]:
    if isinstance(raw, dict) and "history" in raw and not isinstance(raw["history"], list):
        raise FailtraceError(f"{where}: 'history' must be a list of messages (a SWE-agent .traj), got "
                             f"{type(raw['history']).__name__}")
    if isinstance(raw, dict) and isinstance(raw.get("history"), list):
        try:
            return _items_from_messages(raw["history"], f"swe-{name}", {"source": "swe-agent", "trace": name})
        except ValueError as exc:
            raise FailtraceError(f"{where}: 'history' {exc}") from None
    records = [raw] if isinstance(raw, dict) else raw
    if not isinstance(records, list):
        raise FailtraceError(f"{where}: not a tau-bench trajectory list or a SWE-agent .traj file")
    bad = next((n for n, r in enumerate(records) if not (isinstance(r, dict) and isinstance(r.get("traj"), list))),
               None)
    if bad is not None:
        raise FailtraceError(f"{where}: trajectory {bad + 1} is not an object with a 'traj' list of messages (a "
                             "tau-bench trajectory list holds only such objects)")
    items = []
    for n, rec in enumerate(records):
        base = f"tau-{rec.get('task_id', n)}-t{rec.get('trial', 0)}"
        meta = {"source": "tau-bench", "task_id": rec.get("task_id"), "trial": rec.get("trial"),
                "reward": rec.get("reward")}
        try:
            items += _items_from_messages(rec["traj"], base, meta)
        except ValueError as exc:
            task = rec.get("task_id", "?")
            raise FailtraceError(f"{where}: trajectory {n + 1} (task {task}): 'traj' {exc}") from None
    return items


def convert_trace_file(path: str | Path, out: str | Path | None = None) -> list[dict[str, Any]]:
    """Convert a trace file; with ``out``, also write the items as JSONL there."""
    path = Path(path)
    raw = _read_json(path)
    if raw is None:
        raise FailtraceError(f"{path}: not a JSON trace file")
    items = convert_trace(raw, path.stem, str(path))
    if out is not None:
        with Path(out).open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    return items
