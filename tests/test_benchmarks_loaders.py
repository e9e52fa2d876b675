"""Loading benchmark files: formats, bad lines, missing fields, empty files, limits, hub ids, unknown names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from failtrace.benchmarks import BENCHMARK_NAMES, get_benchmark, load_benchmark, loaders
from failtrace.errors import FailtraceError


def _math_record(i: int) -> dict:
    return {"problem": f"What is {i} + {i}?", "solution": f"It is \\boxed{{{2 * i}}}.", "answer": str(2 * i),
            "unique_id": f"p{i}"}


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_bad_lines_are_reported_with_line_numbers_and_the_rest_loads(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "m.jsonl", [
        json.dumps(_math_record(1)),
        '{"problem": "broken", ',                 # line 2: malformed JSON
        json.dumps({"solution": "no problem"}),  # line 3: missing field
        "[1, 2]",                                # line 4: not an object
        "",                                      # blank lines are fine
        json.dumps(_math_record(6)),
    ])
    report = get_benchmark("math").load(str(path))
    assert [item.id for item in report.items] == ["p1", "p6"]
    text = "\n".join(report.problems)
    # where it broke on its own line (column 23, just past its end), not the next line's column 1 (the newline was
    # parsed too)
    assert "line 2: malformed JSON (Expecting property name enclosed in double quotes at column 23, the end of the " \
        "line)" in text, text
    assert "line 3" in text and "'problem'" in text
    assert "line 4" in text and "JSON object" in text
    assert len(report.problems) == 3


def test_an_unpaired_surrogate_escape_costs_its_record_and_a_pair_loads(tmp_path: Path) -> None:
    # json reads "\ud800" into a str that cannot be encoded (nor stored); "\ud83d\ude00" is an emoji
    lone, pair = json.dumps(_math_record(1)).replace("What", "\\ud800"), json.dumps(_math_record(2))
    pair = pair.replace("What", "\\ud83d\\ude00")
    lines = _write_jsonl(tmp_path / "m.jsonl", [lone, pair])
    report = get_benchmark("math").load(str(lines))
    assert [item.id for item in report.items] == ["p2"] and report.items[0].prompt.startswith("\U0001f600")
    assert len(report.problems) == 1 and "line 1" in report.problems[0] and "surrogate" in report.problems[0]
    array = tmp_path / "m.json"
    array.write_text(f"[{lone}, {json.dumps(_math_record(3))}]", encoding="utf-8")
    report = get_benchmark("math").load(str(array))
    assert [item.id for item in report.items] == ["p3"]
    assert len(report.problems) == 1 and "item 1" in report.problems[0] and "surrogate" in report.problems[0]


@pytest.mark.parametrize("name", ["m.jsonl.gz", "M.JSONL.GZ", "m.Json.Gz"])
def test_gzip_files_are_read_whatever_the_case_of_their_suffix(tmp_path: Path, name: str) -> None:
    import gzip

    path = tmp_path / name
    records = [_math_record(1), _math_record(2)]
    text = "\n".join(json.dumps(r) for r in records) if "jsonl" in name.lower() else json.dumps(records)
    path.write_bytes(gzip.compress(text.encode()))
    report = get_benchmark("math").load(str(path))
    assert [item.id for item in report.items] == ["p1", "p2"] and report.problems == []


def test_limit_stops_reading(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "m.jsonl", [json.dumps(_math_record(1)), json.dumps(_math_record(2)),
                                               "not json at all", json.dumps(_math_record(4))])
    report = get_benchmark("math").load(str(path), limit=2)
    assert [i.id for i in report.items] == ["p1", "p2"]
    assert report.problems == []  # line 3 was never read
    with pytest.raises(FailtraceError, match="limit"):
        get_benchmark("math").load(str(path), limit=0)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(FailtraceError, match="empty"):
        get_benchmark("math").load(str(path))


def test_file_with_only_bad_lines_names_them(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", ["{oops", json.dumps({"x": 1})])
    with pytest.raises(FailtraceError, match="line 1.*line 2"):
        get_benchmark("math").load(str(path))


def test_json_array_object_and_jsonl_under_json_name(tmp_path: Path) -> None:
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps([_math_record(1), _math_record(2)]))
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"data": [_math_record(3)]}))
    lines = tmp_path / "l.json"
    lines.write_text(json.dumps(_math_record(4)) + "\n" + json.dumps(_math_record(5)) + "\n")
    bench = get_benchmark("math")
    assert [i.id for i in bench.load(str(arr)).items] == ["p1", "p2"]
    assert [i.id for i in bench.load(str(wrapped)).items] == ["p3"]
    assert [i.id for i in bench.load(str(lines)).items] == ["p4", "p5"]


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([_math_record(i) for i in range(5)]), path)
    report = get_benchmark("math").load(str(path), limit=3)
    assert [i.id for i in report.items] == ["p0", "p1", "p2"]
    assert report.items[0].reference["answer"] == "0"


def test_duplicate_ids_are_reported(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [json.dumps(_math_record(1)), json.dumps(_math_record(1))])
    report = get_benchmark("math").load(str(path))
    assert len(report.items) == 1
    assert "duplicate id 'p1'" in report.problems[0]


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FailtraceError, match="no such file"):
        get_benchmark("math").load(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FailtraceError, match="folder"):
        get_benchmark("math").load(str(tmp_path))
    import os

    fifo = tmp_path / "items.jsonl"  # a pipe (as /dev/stdin can be) was "no such file"
    os.mkfifo(fifo)
    for where in (fifo, Path("/dev/null")):
        with pytest.raises(FailtraceError, match=r"is not a regular file \(a device, a pipe or a socket\)"):
            get_benchmark("math").load(str(where))


def test_unknown_benchmark_lists_valid_names() -> None:
    with pytest.raises(FailtraceError) as err:
        get_benchmark("gsm8k")
    for name in ("ifeval", "math", "humaneval", "traces", "demo"):
        assert name in str(err.value)
    with pytest.raises(FailtraceError, match="valid names"):
        load_benchmark("nope", "x.jsonl")
    assert set(BENCHMARK_NAMES) == {"ifeval", "math", "humaneval", "traces", "demo"}


def test_hub_id_offline_says_to_pass_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(loaders, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(FailtraceError, match="local JSON/JSONL/Parquet file") as err:
        get_benchmark("ifeval").load("google/IFEval")
    assert "set HF_HUB_OFFLINE=1" in str(err.value)


def test_hub_id_in_offline_mode_does_not_say_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def not_cached(name: str, split: str) -> None:
        raise ConnectionError("Couldn't reach 'x' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", not_cached)
    with pytest.raises(FailtraceError, match="offline mode is set") as err:
        get_benchmark("ifeval").load("google/IFEval")
    assert "set HF_HUB_OFFLINE=1" not in str(err.value)


def test_hub_id_goes_through_datasets_when_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(name: str, split: str) -> list[dict]:
        calls.append((name, split))
        return [_math_record(7), _math_record(8)]

    monkeypatch.setattr(loaders, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    report = get_benchmark("math").load("HuggingFaceH4/MATH-500", limit=1)
    assert calls == [("HuggingFaceH4/MATH-500", "test")]
    assert [i.id for i in report.items] == ["p7"]
    get_benchmark("math").load("someone/math:train")
    assert calls[-1] == ("someone/math", "train")


def test_hub_failure_becomes_failtrace_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def broken(name: str, split: str) -> None:
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(loaders, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(FailtraceError, match="could not load hub dataset 'google/IFEval'"):
        get_benchmark("ifeval").load("google/IFEval")


def test_a_file_of_another_benchmark_is_one_complaint_not_the_same_five_times(tmp_path: Path) -> None:
    from failtrace.benchmarks.loaders import summarise_problems

    path = tmp_path / "ifeval.jsonl"
    path.write_text("".join(json.dumps({"key": i, "prompt": "p"}) + "\n" for i in range(8)) + "{oops\n")
    with pytest.raises(FailtraceError) as info:
        get_benchmark("math").load(str(path))
    message = str(info.value)
    assert message.startswith(f"no usable items in {path}: line 1 and 7 more: missing field(s) 'problem'")
    assert "line 9: " in message and message.count("missing field") == 1
    assert summarise_problems(["line 1: a", "line 2: b", "line 3: a", "odd"]) == "line 1 and 1 more: a; line 2: b; odd"
    assert summarise_problems([f"line {i}: m{i}" for i in range(8)], shown=5).endswith("line 4: m4; ... and 3 more")


def test_a_number_too_long_to_read_costs_its_line_not_the_load(tmp_path: Path) -> None:
    """An integer of more than 4,300 digits raises a plain ValueError in json.loads (Python's limit on int()), which
    the loaders did not catch: the whole collect ended in a crash log (exit 70). In JSONL it costs its line; in a
    JSON file it is one error naming the file."""
    big = "9" * 5000
    path = _write_jsonl(tmp_path / "m.jsonl", [json.dumps(_math_record(1)),
                                               json.dumps(_math_record(2))[:-1] + f', "n": {big}}}',
                                               json.dumps(_math_record(3))])
    report = get_benchmark("math").load(str(path))
    assert [item.id for item in report.items] == ["p1", "p3"]
    assert report.problems == ["m.jsonl line 2: a number too long to read (Exceeds the limit (4300 digits) for "
                               "integer string conversion: value has 5000 digits)"], report.problems
    whole = tmp_path / "m.json"
    whole.write_text(f'[{json.dumps(_math_record(1))}, {{"problem": "x", "answer": {big}}}]')
    with pytest.raises(FailtraceError, match=r"m\.json: holds a number too long to read"):
        get_benchmark("math").load(str(whole))


def test_a_parquet_value_python_cannot_represent_is_named(tmp_path: Path) -> None:
    """A date beyond year 9999 in any column (even one no benchmark reads) raised OverflowError out of the batch's
    conversion: a crash log. Now one error naming the rows."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    days = (datetime.date(9999, 12, 31) - datetime.date(1970, 1, 1)).days + 10
    table = pa.table({"problem": ["What is 1 + 1?"], "answer": ["2"], "unique_id": ["p1"],
                      "when": pa.array([days], type=pa.int32()).cast(pa.date32())})
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(FailtraceError, match=r"m\.parquet: rows 1-1 hold a value Python cannot represent \("):
        get_benchmark("math").load(str(tmp_path / "m.parquet"))


@pytest.mark.parametrize("uid, want", [(0, "0"), ("", "line-1"), (None, "line-1"), ("  ", "line-1")])
def test_a_falsy_math_id_is_still_an_id(tmp_path: Path, uid: object, want: str) -> None:
    """`unique_id: 0` was read as no id (a falsy `or`) and the row got its place in the file, `line-1`; an empty
    or blank id is still none."""
    path = _write_jsonl(tmp_path / "m.jsonl", [json.dumps({**_math_record(1), "unique_id": uid})])
    assert [item.id for item in get_benchmark("math").load(str(path)).items] == [want]
