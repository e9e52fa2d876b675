"""Agent traces: tool-call parsing in common formats, argument comparison, answers, converters, long inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from failtrace.benchmarks import Item, get_benchmark
from failtrace.benchmarks.base import caveats
from failtrace.benchmarks.traces import (
    TracesBenchmark,
    convert_trace,
    convert_trace_file,
    find_tool_calls,
    json_object_spans,
)

EXPECTED_CALL = {"tool": "get_weather", "arguments": {"city": "Paris", "days": 3, "metric": True}}


def _item(expected: dict, messages: list[dict] | None = None) -> Item:
    messages = messages or [{"role": "user", "content": "Weather in Paris for 3 days, metric?"}]
    return Item(id="x", benchmark="traces", prompt=messages, reference={"expected": expected})


@pytest.mark.parametrize("completion", [
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "metric": true}}</tool_call>',
    'Sure.\n```json\n{"name": "get_weather", "arguments": {"days": 3.0, "city": " Paris ", "metric": true}}\n```',
    '{"tool": "get_weather", "args": {"city": "Paris", "days": 3, "metric": true}}',
    ('{"tool_calls": [{"type": "function", "function": {"name": "get_weather", '
     '"arguments": "{\\"city\\": \\"Paris\\", \\"days\\": 3, \\"metric\\": true}"}}]}'),
    '<function=get_weather>{"city": "Paris", "days": 3, "metric": true}</function>',
    "{'name': 'get_weather', 'parameters': {'city': 'Paris', 'days': 3, 'metric': True}}",
])
def test_tool_call_formats_pass(completion: str) -> None:
    verdict = TracesBenchmark().check(_item(EXPECTED_CALL), completion)
    assert verdict.status == "pass", verdict.reasons


def test_wrong_tool_or_arguments_fail_with_reasons() -> None:
    bench = TracesBenchmark()
    other = bench.check(_item(EXPECTED_CALL), '{"name": "get_time", "arguments": {"city": "Paris"}}')
    assert other.status == "fail" and other.reasons == ["called 'get_time' instead of 'get_weather'"]
    args = bench.check(_item(EXPECTED_CALL),
                       '{"name": "get_weather", "arguments": {"city": "Lyon", "days": 3, "metric": 1, "x": 0}}')
    assert args.status == "fail"
    reason = args.reasons[0]
    assert "arguments.city: expected 'Paris', got 'Lyon'" in reason
    assert "arguments.metric" in reason  # 1 is not true
    assert "arguments.x: not expected" in reason
    none = bench.check(_item(EXPECTED_CALL), "I would call the weather tool.")
    assert none.status == "fail" and "no tool call found" in none.reasons[0]


def test_details_stay_json_serialisable() -> None:
    verdict = TracesBenchmark().check(_item(EXPECTED_CALL), "{'name': 'get_weather', 'arguments': {'city': {1, 2}}}")
    assert verdict.status == "fail"
    stored = verdict.to_dict()
    # a Python set in the model's output must not break storing the verdict: it round-trips through JSON unchanged
    assert json.loads(json.dumps(stored)) == stored
    call = stored["details"]["tool_calls_found"]
    assert call == [{"name": "get_weather", "arguments": {"city": repr({1, 2})}}]  # the set, stored as its repr
    assert any(r.startswith("get_weather arguments differ:") and "arguments.city" in r for r in stored["reasons"])


def test_braces_inside_strings_do_not_confuse_the_scanner() -> None:
    text = 'note {"name": "echo", "arguments": {"text": "a } b { c"}} end'
    assert find_tool_calls(text) == [{"name": "echo", "arguments": {"text": "a } b { c"}}]
    assert find_tool_calls('{"just": "data"} and {"name": "x", "color": "red"}') == []


def test_data_shown_to_the_user_is_no_tool_call() -> None:
    """A reply holding a JSON object with a "name" (a profile, a record) failed as "made a tool call ('Mia Li')". A
    bare object is a call when it has arguments, or when it is a lone name that could be a tool's."""
    bench = TracesBenchmark()
    reply = _item({"reply": "Here is your profile."})
    for text in ('Your profile: {"name": "Mia Li"}', 'Sure! Details: {"name": "Mia", "id": 3}',
                 'Found: {"name": "get_weather", "city": "Paris"}', 'User: {"type": "user", "name": "alice"}'):
        verdict = bench.check(reply, text)
        assert verdict.status == "pass" and verdict.details["tool_calls_found"] == [], (text, verdict.reasons)
    for text, name in (('{"name": "list_users"}', "list_users"), ('{"name": "Mia Li", "arguments": {}}', "Mia Li"),
                       ('<tool_call>{"name": "Mia Li"}</tool_call>', "Mia Li"),
                       ('{"id": "call_0", "type": "function", "name": "get_time"}', "get_time")):
        verdict = bench.check(reply, text)
        assert verdict.status == "fail" and f"made a tool call ({name!r})" in verdict.reasons[0], text


def test_answers_and_commands() -> None:
    bench = TracesBenchmark()
    answer = _item({"answer": "Your flight is booked."})
    assert bench.check(answer, "  your flight is   BOOKED ").status == "pass"
    differs = bench.check(answer, "Your flight is cancelled.")
    assert differs.status == "fail" and "differs" in differs.reasons[0]
    called = bench.check(answer, '{"name": "book", "arguments": {}}')
    assert called.status == "fail" and "where an answer was expected" in called.reasons[0]
    reply = _item({"reply": "Order 12 is pending. Cancel it?"})  # a trace's free-text turn: judged by its kind
    other = bench.check(reply, "I see order 12 is pending. Shall I cancel it for you?")
    assert other.status == "pass" and other.details["reply_matches_reference"] is False
    assert bench.check(reply, " order 12 is PENDING.  cancel it?").details["reply_matches_reference"] is True
    tool = bench.check(reply, '<tool_call>{"name": "cancel_order", "arguments": {"order_id": 12}}</tool_call>')
    assert tool.status == "fail" and "where a reply to the user was expected" in tool.reasons[0]
    assert bench.check(reply, "  \n ").status == "fail"
    command = _item({"command": "find_file missing_colon.py"})
    assert bench.check(command, "DISCUSSION\nLet me look.\n```\nfind_file  missing_colon.py\n```").status == "pass"
    assert bench.check(command, "```\nls -a\n```").status == "fail"


def test_load_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    good = {"id": "a", "messages": [{"role": "user", "content": "hi"}], "expected": {"answer": "hello"}}
    path.write_text("\n".join([
        json.dumps(good),
        "{not json",
        json.dumps({"id": "b", "messages": [{"role": "user", "content": "hi"}]}),
        json.dumps({"id": "c", "messages": [{"content": "no role"}], "expected": {"answer": "x"}}),
        json.dumps({"id": "d", "messages": [{"role": "user", "content": "q"}], "expected": {"foo": 1}}),
    ]))
    report = get_benchmark("traces").load(str(path))
    assert [i.id for i in report.items] == ["a"]
    assert report.items[0].prompt == [{"role": "user", "content": "hi"}]
    problems = "\n".join(report.problems)
    for line in ("line 2", "line 3", "line 4", "line 5"):
        assert line in problems
    assert "'expected'" in problems


def _tau_like() -> list[dict]:
    """A made-up trajectory in tau-bench's layout (OpenAI messages, tool_calls with JSON-string arguments)."""
    return [{"task_id": 7, "trial": 1, "reward": 0.0, "info": {}, "traj": [
        {"role": "system", "content": "You are a shop agent."},
        {"role": "user", "content": "Cancel order 12."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_order", "arguments": '{"order_id": 12}'}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_order", "content": '{"status": "pending"}'},
        {"role": "assistant", "content": "Order 12 is pending. Cancel it?"},
        {"role": "user", "content": "Yes."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c2", "type": "function", "function": {"name": "cancel_order", "arguments": '{"order_id": 12}'}}]},
    ]}]


def test_tau_bench_converter(tmp_path: Path) -> None:
    items = convert_trace(_tau_like(), "shop")
    assert [i["id"] for i in items] == ["tau-7-t1-m2", "tau-7-t1-m4", "tau-7-t1-m6"]
    assert items[0]["expected"] == {"tool": "get_order", "arguments": {"order_id": 12}}
    assert items[1]["expected"] == {"reply": "Order 12 is pending. Cancel it?"}
    last = items[2]
    assert len(last["messages"]) == 6 and last["messages"][-1] == {"role": "user", "content": "Yes."}
    assert '<tool_call>{"name": "get_order"' in last["messages"][2]["content"]  # past calls are rendered
    raw = tmp_path / "traj.json"
    raw.write_text(json.dumps(_tau_like()))
    report = TracesBenchmark().load(str(raw))  # a raw tau-bench file loads directly
    assert [i.id for i in report.items] == [i["id"] for i in items]
    # the episode failed (reward 0): its actions are kept, and collect says so of the items it is given (it used
    # to be silent; then it spoke of the whole file, also when --item chose only items of episodes that succeeded)
    assert report.problems == [] and report.items[0].meta["reward"] == 0.0
    said = ("their actions are still the expected ones, though one of them went wrong (an item's meta.reward gives "
            "its episode's reward)")
    assert caveats(TracesBenchmark(), report.items) == [
        f"3 of the 3 items come from episodes that ended with reward < 1 (the episode failed); {said}"]
    won = tmp_path / "won.json"
    won.write_text(json.dumps([{**_tau_like()[0], "reward": 1.0}, {**_tau_like()[0], "trial": 2}]))
    both = TracesBenchmark().load(str(won)).items
    assert len(both) == 6 and caveats(TracesBenchmark(), both[:3]) == []
    assert caveats(TracesBenchmark(), both[2:4]) == [
        f"1 of the 2 items come from episodes that ended with reward < 1 (the episode failed); {said}"]
    out = tmp_path / "items.jsonl"
    convert_trace_file(raw, out)
    again = TracesBenchmark().load(str(out), limit=2)
    assert [i.id for i in again.items] == ["tau-7-t1-m2", "tau-7-t1-m4"]
    verdict = TracesBenchmark().check(again.items[0], '<tool_call>{"name": "get_order", "arguments": {"order_id": 12}}'
                                                      '</tool_call>')
    assert verdict.status == "pass"


def test_swe_agent_converter(tmp_path: Path) -> None:
    traj = {"environment": "toy", "trajectory": [], "info": {}, "history": [
        {"role": "system", "content": "You are a programmer.", "agent": "primary"},
        {"role": "user", "content": "Fix the bug in app.py", "agent": "primary"},
        {"role": "assistant", "content": "Let me look.\n```\nopen app.py\n```", "thought": "Let me look.",
         "action": "open app.py\n", "agent": "primary"},
        {"role": "user", "content": "[File: app.py (3 lines total)]", "agent": "primary"},
        {"role": "assistant", "content": "Edit it.", "action": "edit 1:1\nx = 1\nend_of_edit",
         "tool_calls": [{"function": {"name": "edit", "arguments": '{"start": 1, "end": 1, "text": "x = 1"}'},
                         "id": "c", "type": "function"}], "agent": "primary"},
    ]}
    path = tmp_path / "toy.traj"
    path.write_text(json.dumps(traj))
    report = TracesBenchmark().load(str(path))
    assert [i.id for i in report.items] == ["swe-toy-m2", "swe-toy-m4"]
    assert report.items[0].reference["expected"] == {"command": "open app.py"}
    assert report.items[1].reference["expected"] == {"tool": "edit",
                                                     "arguments": {"start": 1, "end": 1, "text": "x = 1"}}
    assert len(report.items[1].prompt) == 4


@pytest.mark.timeout(300)  # a hang guard, not a timing: a quadratic scan of these 400k characters takes hours
def test_long_inputs_are_linear() -> None:
    filler = "log line with {braces} and \"quotes\" " * 12_000  # ~430k characters, over 100k tokens
    messages = [{"role": "user", "content": "Summarise"}] + [
        {"role": "tool" if i % 2 else "assistant", "content": filler} for i in range(20)]
    items = convert_trace({"history": [*messages, {"role": "assistant", "content": "", "action": "submit"}]}, "big")
    bench = TracesBenchmark()
    loaded = [bench.check(_item({"tool": "submit", "arguments": {}}, items[-1]["messages"]),
                          filler + '{"name": "submit", "arguments": {}}')]
    spans = list(json_object_spans("{" * 200_000 + "}" * 200_000))
    assert loaded[0].status == "pass"
    assert spans == [(0, 400_000)]
    assert len(items[-1]["messages"]) == 21


def test_a_wrong_file_names_every_format_traces_read(tmp_path: Path) -> None:
    """A JSON file that is neither items nor a raw trace says which three layouts work; an unknown suffix lists
    .traj among the file types (a SWE-agent file is read directly)."""
    from failtrace.errors import FailtraceError

    wrong = tmp_path / "x.json"
    wrong.write_text('{"a": 1}')
    with pytest.raises(FailtraceError) as err:
        TracesBenchmark().load(str(wrong))
    msg = str(err.value)
    assert "missing field(s) 'id', 'messages', 'expected'" in msg
    assert "tau-bench trajectory list (.json" in msg and "SWE-agent .traj" in msg and "\n" not in msg
    odd = tmp_path / "x.txt"
    odd.write_text('{"a": 1}')
    with pytest.raises(FailtraceError, match=r"unknown file type; use one of .*\.traj"):
        TracesBenchmark().load(str(odd))


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("h.traj", {"history": ["x", {"role": "assistant", "content": "hi"}]},
     "'history' message 0 must be an object with a 'role' string"),
    ("t.json", [{"task_id": 7, "traj": [{"role": "user", "content": "hi"}, {"content": "x"}]}],
     "trajectory 1 (task 7): 'traj' message 1 must be an object with a 'role' string"),
    ("n.json", [{"task_id": 1, "traj": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}],
     "the trace has no assistant action to check"),
    # a raw trace's key with a value of the wrong kind was read as a JSONL item: "missing field(s) 'id', ..."
    ("s.traj", {"history": "nope"}, "'history' must be a list of messages (a SWE-agent .traj), got str"),
    ("i.traj", {"history": 5}, "'history' must be a list of messages (a SWE-agent .traj), got int"),
    ("x.json", [{"traj": "x"}], "trajectory 1 is not an object with a 'traj' list of messages"),
])
def test_a_broken_raw_trace_is_one_error_naming_the_file(tmp_path: Path, name: str, raw: object,
                                                         message: str) -> None:
    """A message that is not a {role, ...} object was a ValueError outside the loader's handling (exit 70)."""
    from failtrace.errors import FailtraceError

    path = tmp_path / name
    path.write_text(json.dumps(raw))
    with pytest.raises(FailtraceError) as info:
        TracesBenchmark().load(str(path))
    assert str(info.value).startswith(f"{path}: {message}")
    with pytest.raises(FailtraceError, match="^" + str(path).replace(".", r"\.")):  # the converter says the same
        convert_trace_file(path, tmp_path / "out.jsonl")


@pytest.mark.parametrize("meta", [5, 0, "", False, [1]])
def test_a_meta_that_is_not_an_object_is_named(tmp_path: Path, meta: object) -> None:
    """Was Python's own "'int' object is not iterable" (and 0, "" and false passed as no meta)."""
    from failtrace.errors import FailtraceError

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "hi"}],
                                "expected": {"reply": "x"}, "meta": meta}) + "\n")
    with pytest.raises(FailtraceError, match="line 1: 'meta' must be an object"):
        TracesBenchmark().load(str(path))


@pytest.mark.parametrize("second", [5, {"task_id": 2, "traj": "x"}])
def test_a_trajectory_list_names_its_bad_record(tmp_path: Path, second: object) -> None:
    from failtrace.errors import FailtraceError

    good = {"task_id": 1, "traj": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps([good, second]))
    with pytest.raises(FailtraceError, match=r"t\.json: trajectory 2 is not an object with a 'traj' list"):
        TracesBenchmark().load(str(path))


def test_expected_arguments_that_are_not_json_are_named(tmp_path: Path) -> None:
    """They were kept as a string, which no call's arguments can equal: an item that could never pass."""
    good = {"id": "ok", "messages": [{"role": "user", "content": "hi"}], "expected": {"reply": "x"}}
    bad = {"id": "bad", "messages": [{"role": "user", "content": "hi"}],
           "expected": {"tool": "get_weather", "arguments": "{bad json"}}
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    report = TracesBenchmark().load(str(path))
    assert [i.id for i in report.items] == ["ok"]
    assert report.problems == ["line 2: 'expected' arguments of 'get_weather' are not valid JSON: '{bad json'"]


def test_expected_arguments_with_nan_or_infinity_are_named(tmp_path: Path) -> None:
    """They were accepted: no answer equals NaN (the item could never pass), and export then wrote NaN, which is not
    JSON. Both the object form and the JSON-string form (Python's json reads NaN and Infinity) are refused."""
    rows = [{"id": "ok", "messages": [{"role": "user", "content": "hi"}], "expected": {"reply": "x"}},
            {"id": "nan", "messages": [{"role": "user", "content": "hi"}],
             "expected": {"tool": "f", "arguments": {"a": [1, {"b": float("nan")}]}}},
            {"id": "inf", "messages": [{"role": "user", "content": "hi"}],
             "expected": {"tool": "f", "arguments": '{"a": -Infinity}'}}]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = TracesBenchmark().load(str(path))
    assert [i.id for i in report.items] == ["ok"]
    said = "'expected' arguments of 'f' hold NaN or Infinity, which is not JSON (and no answer equals NaN)"
    assert report.problems == [f"line 2: {said}", f"line 3: {said}"]


@pytest.mark.parametrize(("expected", "said"), [
    ({"answer": ""}, "'expected' 'answer' must be a non-empty string, got ''"),
    ({"command": "   "}, "'expected' 'command' must be a non-empty string, got '   '"),
    ({"tool": ""}, "'expected' 'tool' must be a non-empty string, got ''"),
    ({"reply": ""}, "'expected' 'reply' must be a non-empty string, got ''"),
    ({"tool": 5}, "'expected' 'tool' must be a non-empty string, got 5"),
    ({"tool": "f", "arguments": {}, "answer": "x"}, "'expected' holds 'tool' and 'answer': give exactly one action"),
    ({"tool": "f", "arguments": 5}, "'expected' arguments of 'f' must be an object of named arguments, got int"),
    ({"tool": "f", "arguments": "[1, 2]"},
     "'expected' arguments of 'f' must be an object of named arguments, got list"),
])
def test_an_expected_action_that_no_completion_could_meet_is_named(tmp_path: Path, expected: dict[str, object],
                                                                   said: str) -> None:
    """These were stored and collected: an empty answer or command no completion can equal, an empty tool name no
    call can match, arguments that are not named, and two actions of which one was silently taken."""
    good = {"id": "ok", "messages": [{"role": "user", "content": "hi"}], "expected": {"reply": "x"}}
    bad = {"id": "bad", "messages": [{"role": "user", "content": "hi"}], "expected": expected}
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    report = TracesBenchmark().load(str(path))
    assert [i.id for i in report.items] == ["ok"] and report.problems == [f"line 2: {said}"]


@pytest.mark.parametrize("rid", [{"x": 1}, "", "  ", True, [1]])
def test_an_id_that_is_not_a_name_is_refused(tmp_path: Path, rid: object) -> None:
    """An object id was stored as its Python repr ("{'x': 1}"), an empty one as ""; an integer is its digits."""
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps({"id": i, "messages": [{"role": "user", "content": "hi"}],
                                        "expected": {"reply": "x"}}) + "\n" for i in (7, rid)))
    report = TracesBenchmark().load(str(path))
    assert [i.id for i in report.items] == ["7"]
    assert report.problems == [f"line 2: 'id' must be a non-empty string or an integer, got {rid!r}"]


RIGHT = '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "metric": true}}'
WRONG = '{"name": "get_weather", "arguments": {"city": "Lyon", "days": 3, "metric": true}}'
PREFIX_TEXTS = [  # completions the pair search's rollouts could produce: tagged, bare, Llama-style, several, prose
    f"<tool_call>{RIGHT}</tool_call>",
    f"<tool_call>\n{WRONG}\n</tool_call>\nLet me check that.",
    f"Sure. <tool_call>{{\"x\": 1}} {RIGHT}</tool_call><tool_call>{WRONG}</tool_call>",
    f"<tool_call>{{\"note\": \"a }} in a string\"}}</tool_call> text <tool_call>{WRONG}",
    f"I will call {WRONG} now",
    f'<function=get_weather>{{"city": "Paris", "days": 3, "metric": true}}</function>',
    f"<tool_call>{RIGHT}",
    "It is sunny in Paris.",
    '{"name": "Mia Li", "age": 3} is the profile',
]
PREFIX_TAILS = ["", " ", "}", "</tool_call>", f"<tool_call>{RIGHT}</tool_call>", f"<tool_call>{WRONG}</tool_call>",
                f"{RIGHT}", '"', "\n```json\n" + RIGHT + "\n```", f"<function=get_weather>{{}}</function>", "{",
                "<tool_call>", "Done."]
PREFIX_EXPECTED = [EXPECTED_CALL, {"answer": "It is sunny in Paris"}, {"reply": "It is sunny in Paris."},
                   {"command": "ls"}]


@pytest.mark.parametrize("expected", PREFIX_EXPECTED, ids=lambda e: next(iter(e)))
def test_prefix_rules_are_sound_on_every_character_prefix(expected: dict) -> None:
    """Every character prefix of completions with tagged, bare and Llama-style calls, several calls, braces in
    strings and prose, followed by each continuation: where ``prefix_decides_fail`` names a reason the checker
    fails every completion that starts with the prefix; where ``prefix_final`` says so the checker's verdict is the
    prefix's own for every one. Both rules fire (the check is not vacuous), and never on a command; once one fires
    on a text it fires on every longer prefix (the search relies on it: no later position is rolled out)."""
    bench, item = TracesBenchmark(), _item(expected)
    fired: dict[str, Any] = {"fail": 0, "final": set()}
    for text in PREFIX_TEXTS:
        decided = [j for j in range(len(text) + 1) if bench.prefix_decides_fail(item, text[:j]) is not None]
        finals = [j for j in range(len(text) + 1) if bench.prefix_final(item, text[:j])]
        for at in (decided, finals):
            assert at == list(range(at[0], len(text) + 1)) if at else True, (text, at)
        for j in range(len(text) + 1):
            prefix = text[:j]
            why, final = bench.prefix_decides_fail(item, prefix), bench.prefix_final(item, prefix)
            if why is None and not final:
                continue
            own = bench.check(item, prefix).status
            for tail in PREFIX_TAILS + [text[j:]]:
                status = bench.check(item, prefix + tail).status
                assert why is None or status == "fail", (prefix, tail, why)
                assert not final or status == own, (prefix, tail, own, status)
            fired["fail"] += why is not None
            if final:
                fired["final"].add(own)
    kind = next(iter(expected))
    assert (fired["fail"] > 0) == (kind in ("answer", "reply"))
    assert fired["final"] == ({"pass", "fail"} if kind == "tool" else set())  # final on right and wrong calls


def test_a_prefix_decides_no_more_than_it_holds() -> None:
    """A call still open, or only bare / Llama-style calls, is not final for an expected call; text without a call
    decides nothing for an answer."""
    bench = TracesBenchmark()
    call, answer = _item(EXPECTED_CALL), _item({"answer": "x"})
    assert not bench.prefix_final(call, f"<tool_call>{RIGHT[:-1]}")
    assert not bench.prefix_final(call, RIGHT) and not bench.prefix_final(call, PREFIX_TEXTS[5])
    assert bench.prefix_final(call, f"<tool_call>{RIGHT}") and bench.prefix_final(call, f"<tool_call>{WRONG}")
    assert bench.prefix_decides_fail(answer, "The answer is {") is None
    assert bench.prefix_decides_fail(answer, f"The answer is {RIGHT[:-1]}") is None
    assert bench.prefix_decides_fail(answer, f"The answer is {RIGHT}") == \
        "made a tool call ('get_weather') where an answer was expected"


def test_braces_python_cannot_hash_or_huge_numbers_are_text_not_a_checker_crash() -> None:
    """``{{}}`` (a Jinja example in a reply), ``{[1]}``, a 5,000-digit number and 2,000 nested lists made the
    checker raise (TypeError from ``ast.literal_eval``, ValueError and RecursionError from ``json.loads``): the
    verdict was ``unverifiable``, and a prefix rule that had fired stopped firing on a longer prefix. They are
    text that holds no call."""
    bench = TracesBenchmark()
    reply, call = _item({"reply": "x"}), _item(EXPECTED_CALL)
    for odd in ("{{}}", '{{"a": 1}}', "{[1]}", '{"n": ' + "9" * 5000 + "}", '{"a": ' + "[" * 2000 + "]" * 2000 + "}"):
        assert bench.check(reply, f"In Jinja, write {odd} to print nothing.").status == "pass", odd
        tagged = f"<tool_call>{RIGHT} {odd}"
        assert bench.prefix_final(call, tagged) and bench.check(call, tagged + "</tool_call>").status == "pass"
    huge = '{"name": "get_weather", "arguments": "{\\"days\\": ' + "9" * 5000 + '}"}'
    assert bench.check(call, f"<tool_call>{huge}</tool_call>").status == "fail"  # arguments kept as the string


def test_an_expected_action_with_null_keys_is_the_one_that_has_a_value(tmp_path: Path) -> None:
    """A Parquet struct column (or a hub dataset) gives every row every action key, the others null; each row was
    refused as "'expected' holds 'tool' and 'answer': give exactly one action". A null key is absent."""
    path = tmp_path / "t.jsonl"
    rows = [{"id": "a", "messages": [{"role": "user", "content": "hi"}],
             "expected": {"tool": "get_order", "arguments": {"id": 1}, "answer": None, "reply": None,
                          "command": None}},
            {"id": "b", "messages": [{"role": "user", "content": "hi"}],
             "expected": {"tool": None, "arguments": None, "answer": "hello", "reply": None, "command": None}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = get_benchmark("traces").load(str(path))
    assert report.problems == [] and [i.reference["expected"] for i in report.items] == [
        {"tool": "get_order", "arguments": {"id": 1}}, {"answer": "hello"}]


@pytest.mark.parametrize("name, text", [("traj.json", "\ufeff{}"), ("TRAJ.JSON", "{}")], ids=["bom", "upper-suffix"])
def test_a_raw_tau_file_with_a_bom_or_an_upper_case_suffix_converts(tmp_path: Path, name: str, text: str) -> None:
    """A byte-order mark, or `.JSON`, made the raw file read as JSON Lines items: "missing field(s) 'id',
    'messages', 'expected'" instead of converting it, as it is converted without them."""
    raw = tmp_path / name
    raw.write_text(text.replace("{}", json.dumps(_tau_like())), encoding="utf-8")
    report = TracesBenchmark().load(str(raw))
    assert [i.id for i in report.items] == ["tau-7-t1-m2", "tau-7-t1-m4", "tau-7-t1-m6"], report.problems


def test_tool_calls_that_python_cannot_hash_are_no_calls_not_a_crash(tmp_path: Path) -> None:
    """`tool_calls` stored as the string "{[1]: 2}" raised TypeError from ast.literal_eval out of the tau-bench
    converter: a crash log. It holds no call: the turn is read as a plain reply."""
    traj = _tau_like()
    traj[0]["traj"][2]["tool_calls"] = "{[1]: 2}"
    traj[0]["traj"][2]["content"] = "Looking it up."
    raw = tmp_path / "traj.json"
    raw.write_text(json.dumps(traj))
    report = TracesBenchmark().load(str(raw))
    assert report.items[0].reference["expected"] == {"reply": "Looking it up."}
