"""Regression tests from a second sweep of the error contract (docs/ERRORS.md): about 230 bad inputs, each run
against a copy of a real store whose sha256 was compared before and after.

What broke the contract then: an output option (``attribute --json/--html/--png``, ``graph --json/--html/
--circuit-tracer-json``, ``export-dpo --out``) naming an existing store overwrote it with exit 0; ``compare`` with a
bad second model wrote the first model's rows before failing; ``override`` on a store that had lost a table quietly
recreated it (and ``export`` read such a store with exit 0); a store of schema version 0 was read; a text file named
``*.jsonl`` given as a store was called "lacks a table"; an empty value (``--data ""``, ``--store ""``, ``-o ""``,
``--layers ""``) silently meant a default (the packaged data, the current folder, every layer); ``--seed`` beyond 32
bits was blamed on the store and left an empty one behind; ``--max-new-tokens`` beyond the model's context and
``--contrast`` with an objective that ignores it were accepted; two outputs naming one file wrote it twice;
``export-dpo --out`` renamed its file over a symbolic link or a pipe (as root: over ``/dev/stdout``).
Every check: exit code 2, stderr exactly one ``error: ...`` line, no traceback, and the store's bytes unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from refusals import copy_store as _copy
from refusals import one_error_line as _one_error_line
from refusals import refusal_store
from serve_store import sha256

from failtrace.cli import main

pytestmark = pytest.mark.usefixtures("cli_env")  # crash logs into the test folder, one thread (conftest)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store with collect + pairs + analyse on the toy model (cases of benchmark 'toy'), and its sha256."""
    return refusal_store(tmp_path_factory.mktemp("sweep"))


_PROMPT = ["--chat", "-p", "What is the capital of France?", "-t", " Paris", "-c", " Lyon", "-q"]


@pytest.mark.parametrize("argv", [
    ["attribute", *_PROMPT, "--json", "{s}"],
    ["attribute", *_PROMPT, "--html", "{s}"],
    ["attribute", *_PROMPT, "--png", "{s}.png"],  # a store may have any name
    ["graph", *_PROMPT, "--json", "{s}"],
    ["graph", *_PROMPT, "--html", "{s}"],
    ["graph", *_PROMPT, "--circuit-tracer-json", "{s}"],
    ["export-dpo", "--store", "{toy}", "--out", "{s}"],  # another store than the one read
], ids=["attr-json", "attr-html", "attr-png", "graph-json", "graph-html", "graph-ct", "export-dpo"])
def test_an_output_never_overwrites_a_store(toy: dict[str, Any], tmp_path: Path, argv: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Before: exit 0 and 'wrote …', the store replaced by a JSON, HTML or PNG file. Refused before any model load
    (``-m`` names a file that is not a model)."""
    store = _copy(toy, tmp_path)
    if "{s}.png" in argv:
        store = store.rename(tmp_path / "store.duckdb.png")
    args = [a.replace("{s}.png", str(store)).replace("{s}", str(store)).replace("{toy}", str(toy["store"]))
            for a in argv]
    if argv[0] != "export-dpo":
        args += ["-m", str(tmp_path / "must-not-load.gguf")]
    line = _one_error_line(main(args), capsys)
    assert f"{store} is a DuckDB results store; failtrace never writes over one" in line, line
    assert sha256(store) == toy["sha"] and sha256(toy["store"]) == toy["sha"]


@pytest.mark.parametrize("argv,msg", [
    (["attribute", *_PROMPT, "--json", "{d}/a.json", "--html", "{d}/a.json"], "--json and --html name the same file"),
    (["graph", *_PROMPT, "--json", "{d}/g", "--circuit-tracer-json", "{d}/./g"],
     "--json and --circuit-tracer-json name the same file"),
    (["graph", *_PROMPT, "--svg", "{d}/a.png"], "--svg {d}/a.png: expected a file name ending in .svg"),
])
def test_outputs_one_file_each_and_pictures_by_suffix(tmp_path: Path, argv: list[str], msg: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Before: both writes ran (the second replaced the first). ``graph`` takes a picture's format from its name
    (``attribute --png`` always writes PNG, so any name is fine there)."""
    args = [a.replace("{d}", str(tmp_path)) for a in argv] + ["-m", str(tmp_path / "must-not-load.gguf")]
    line = _one_error_line(main(args), capsys)
    assert msg.replace("{d}", str(tmp_path)) in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,option", [
    (["status", "--store", ""], "--store"),
    (["export", "--store", "{s}", "--format", "jsonl", "-o", ""], "-o"),
    (["report", "--store", "{s}", "--out="], "--out"),
    (["collect", "-b", "ifeval", "-d", ""], "-d"),
    (["collect", "-b", "ifeval", "-d", "x.jsonl", "--model", ""], "--model"),
    (["pairs", "--store", "{s}", "--sibling", ""], "--sibling"),
    (["graph", *_PROMPT, "--layers", ""], "--layers"),
])
def test_an_empty_value_is_refused_not_a_default(toy: dict[str, Any], tmp_path: Path, argv: list[str], option: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Before: exit 0 with the packaged data, the default model, the current folder or every layer."""
    store = _copy(toy, tmp_path)
    line = _one_error_line(main([a.replace("{s}", str(store)) for a in argv]), capsys)
    assert line.startswith(f"error: {option} is empty; give a value"), line
    assert sha256(store) == toy["sha"] and sorted(p.name for p in tmp_path.iterdir()) == ["copy.duckdb"]


def test_answer_prefix_and_title_may_be_empty() -> None:
    """The options whose empty value means something (no prefix, an empty title) pass the empty-value check, and an
    option's value is never read as an option (``-p "--json="`` is a prompt)."""
    import typer

    from failtrace.cli import app
    from failtrace.cli.options import refuse_empty_values

    command = typer.main.get_command(app)
    refuse_empty_values(command, ["attribute", "-p", "x", "--answer-prefix", ""])
    refuse_empty_values(command, ["attribute", "-p", "x", "--answer-prefix="])
    refuse_empty_values(command, ["report", "--title", ""])
    refuse_empty_values(command, ["attribute", "-p", "--json=", "--answer-prefix", "--model="])  # option values
    with pytest.raises(Exception, match="--model is empty"):
        refuse_empty_values(command, ["attribute", "-p", "x", "--model", ""])


def _damaged(toy: dict[str, Any], folder: Path, sql: str) -> tuple[Path, str]:
    store = _copy(toy, folder)
    con = duckdb.connect(str(store))
    con.execute(sql)
    con.close()
    return store, sha256(store)


@pytest.mark.parametrize("argv", [
    ["override", "--case", "x", "--category", "M-IA", "--reason", "r"],
    ["status"],
    ["export", "--format", "jsonl", "-o", "{d}/exp"],
], ids=["override", "status", "export"])
def test_a_store_that_lost_a_table_is_called_damaged(toy: dict[str, Any], tmp_path: Path, argv: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Before: override recreated the lost table (the file changed) and export wrote its files with exit 0."""
    store, sha = _damaged(toy, tmp_path, "DROP TABLE pairs")
    line = _one_error_line(main([*[a.replace("{d}", str(tmp_path)) for a in argv], "-s", str(store)]), capsys)
    assert line.startswith(f"error: results store {store} lacks table(s) pairs of its schema version 4; it is "
                           f"damaged"), line
    assert sha256(store) == sha and not (tmp_path / "exp").exists()


@pytest.mark.parametrize("argv", [
    ["status"], ["export", "--format", "jsonl", "-o", "{d}/exp"], ["report", "-o", "{d}/exp"],
    ["override", "--case", "x", "--category", "M-IA", "--reason", "r"],
], ids=["status", "export", "report", "override"])
def test_a_store_that_lost_a_column_is_called_damaged(toy: dict[str, Any], tmp_path: Path, argv: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Before (third sweep): report and export read a store without ``cases.pattern`` with exit 0 (the report
    called every case unlabelled); only status noticed."""
    store, sha = _damaged(toy, tmp_path, "ALTER TABLE cases DROP COLUMN pattern")
    line = _one_error_line(main([*[a.replace("{d}", str(tmp_path)) for a in argv], "-s", str(store)]), capsys)
    assert line == (f"error: results store {store} lacks column(s) cases.pattern of its schema version 4; it is "
                    f"damaged; the file was left unchanged. Restore it from a copy or give another --store"), line
    assert sha256(store) == sha and not (tmp_path / "exp").exists()


def test_text_that_is_not_json_in_a_case_is_called_damaged(toy: dict[str, Any], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Before (third sweep): hand-corrupted case JSON made report exit 70 ("unexpected JSONDecodeError")."""
    store, sha = _damaged(toy, tmp_path, "UPDATE cases SET segments = '{not json' WHERE case_id = "
                                         "(SELECT min(case_id) FROM cases)")
    for argv in (["report", "-o", str(tmp_path / "rep")], ["export", "-f", "jsonl", "-o", str(tmp_path / "exp")]):
        line = _one_error_line(main([*argv, "-s", str(store)]), capsys)
        assert line.startswith(f"error: results store {store} holds text that is not JSON in cases.segments of "
                               f"case "), line
        assert "it is damaged; restore it from a copy" in line
    assert sha256(store) == sha and not (tmp_path / "rep" / "index.html").exists()


def test_text_that_is_not_json_in_alternatives_is_called_damaged(toy: dict[str, Any], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    store, sha = _damaged(toy, tmp_path, "UPDATE case_alternatives SET tokens = '[oops'")
    line = _one_error_line(main(["export", "-f", "jsonl", "-o", str(tmp_path / "exp"), "-s", str(store)]), capsys)
    assert "holds text that is not JSON in case_alternatives.tokens of case " in line, line
    assert sha256(store) == sha and not list((tmp_path / "exp").glob("*.part"))  # no half file left behind


def test_schema_version_zero_is_refused_on_read(toy: dict[str, Any], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    store, sha = _damaged(toy, tmp_path, "UPDATE schema_version SET version = 0")
    line = _one_error_line(main(["status", "-s", str(store)]), capsys)
    assert "has schema version 0, which no failtrace wrote" in line and sha256(store) == sha


@pytest.mark.parametrize("name", ["notes.jsonl", "table.csv", "empty.duckdb"])
def test_a_file_that_is_not_duckdb_is_named_so(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a text file named *.jsonl or *.csv was 'lacks a table failtrace needs (Catalog Error: Cannot launch
    in-memory database in read-only mode!)'."""
    path = tmp_path / name
    path.write_text("" if name.startswith("empty") else '{"a": 1}\n')
    for argv in (["status"], ["override", "--case", "x", "--category", "M-IA", "--reason", "r"]):
        line = _one_error_line(main([*argv, "-s", str(path)]), capsys)
        assert line.startswith(f"error: cannot open results store {path}: it is not a DuckDB file"), line
        assert path.read_text() == ("" if name.startswith("empty") else '{"a": 1}\n')


def _items(tmp_path: Path) -> Path:
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"key": 1, "prompt": "Say hi", "instruction_id_list": ["punctuation:no_comma"],
                                "kwargs": [{}]}) + "\n")
    return data


def test_seed_beyond_32_bits_refused_before_any_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the store was blamed ('could not be used … INT32'), and an empty new store was left behind."""
    store = tmp_path / "new.duckdb"
    line = _one_error_line(main(["collect", "-b", "ifeval", "-d", str(_items(tmp_path)), "-s", str(store),
                                 "--seed", str(2**31), "-m", str(tmp_path / "must-not-load.gguf")]), capsys)
    assert "--seed" in line and "at most 2147483647" in line, line
    assert not store.exists()
    # finetune too (it crashed in trl's set_seed with exit 70, after writing step-0)
    line = _one_error_line(main(["finetune", "-s", str(store), "--method", "sft", "--seed", str(2**31),
                                 "--out", str(tmp_path / "ck"), "-m", str(tmp_path / "must-not-load.gguf")]), capsys)
    assert "--seed" in line and "at most 2147483647" in line, line
    assert not (tmp_path / "ck").exists()


def test_budget_beyond_the_context_refused_and_no_store_left(toy: dict[str, Any], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The toy model's context is 4,096 tokens; before, --max-new-tokens 999999999999 ran with exit 0."""
    argv = ["collect", "-b", "ifeval", "-d", str(_items(tmp_path)), "-m", str(toy["model_dir"]), "--no-progress",
            "--max-new-tokens", "4097", "-s"]
    store = tmp_path / "new.duckdb"
    line = _one_error_line(main([*argv, str(store)]), capsys)
    assert line == (f"error: --max-new-tokens 4097 is more than {toy['model_dir']}'s context window (4096 tokens); "
                    f"give --max-new-tokens 4096 or less (the prompt shares the window)"), line
    assert not store.exists() and not (tmp_path / "new.duckdb.lock").exists()
    existing = _copy(toy, tmp_path)  # an existing store: refused the same, and left as it was (no run recorded)
    assert main([*argv, str(existing)]) == 2 and sha256(existing) == toy["sha"]


def test_compare_checks_every_model_before_writing(toy: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the first model was loaded and its rows written, then the bad second model failed (store changed)."""
    store = _copy(toy, tmp_path)
    ref = str(toy["model_dir"])
    broken = tmp_path / "broken"  # passes the pre-checks (a folder with a JSON config), fails in transformers
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    for second, msg in ((str(tmp_path / "gone" / "model"), "no such file or folder"),
                        (str(tmp_path / "notes.txt"), "is a file but not a .gguf file"),
                        (str(broken), "cannot load"),
                        (ref, "names"), (ref + "/.", "names")):  # the same folder twice, however written
        (tmp_path / "notes.txt").write_text("not a model")
        line = _one_error_line(main(["compare", "-s", str(store), "-m", ref, second, "--no-progress"]), capsys)
        assert msg in line, (second, line)
        assert sha256(store) == toy["sha"], second


def test_output_checks_never_read_a_pipe(tmp_path: Path) -> None:
    """Before: the store-header check opened every output for reading, so ``--json /dev/stdout`` (a pipe or a
    terminal) or a named pipe blocked the command forever. Run in a child process so a regression fails, not hangs."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = ("from pathlib import Path; from failtrace.cli.checks import check_outputs; "
            f"check_outputs((Path({str(fifo)!r}), '--json', 'a.json')); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_export_dpo_writes_through_a_link_and_into_a_pipe(toy: dict[str, Any], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the ``.part`` file was renamed over ``--out``, replacing a symbolic link by a plain file and, as root,
    ``/dev/stdout`` itself by a regular file. Now a link is written through and a pipe is written in place."""
    import os
    import threading

    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert main(["export-dpo", "-s", str(toy["store"]), "-o", str(link)]) == 0
    assert link.is_symlink() and len(real.read_text().splitlines()) == 5
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    assert main(["export-dpo", "-s", str(toy["store"]), "-o", str(fifo)]) == 0
    reader.join(timeout=30)
    assert len(got) == 1 and len(got[0].splitlines()) == 5 and not fifo.is_file()
    assert not list(tmp_path.glob("*.part")) and sha256(toy["store"]) == toy["sha"]
    capsys.readouterr()


def test_pairs_top_k_beyond_the_vocabulary_records_nothing(toy: dict[str, Any], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Before: accepted (torch.topk was clipped to the vocabulary), i.e. every token of the vocabulary rolled out at
    every position under a recorded pair run."""
    from cases_toy import BUDGET

    from failtrace.failures.collect import register_benchmark
    from failtrace_testkit.toy import ToyBenchmark

    register_benchmark(ToyBenchmark(mode="prefix", max_new_tokens=BUDGET))  # the toy store's benchmark, for the CLI
    vocab = json.loads((toy["model_dir"] / "config.json").read_text())["vocab_size"]
    store = _copy(toy, tmp_path)
    line = _one_error_line(main(["pairs", "-s", str(store), "--top-k", str(vocab), "--no-progress"]), capsys)
    assert f"--top-k {vocab} is not below" in line and f"give at most {vocab - 1}" in line, line
    assert sha256(store) == toy["sha"]


@pytest.mark.parametrize("argv", [
    ["export", "--store", "{s}", "--format", "jsonl", "--out", "{s}.wal"],
    ["report", "--store", "{s}", "--no-graphs", "--out", "{s}.wal"],
    ["report", "--store", "{s}", "--no-graphs", "--out", "{s}.lock"],
    ["export-dpo", "--store", "{toy}", "--out", "{s}.wal"],  # the log of another store than the one read
    ["attribute", *_PROMPT, "--json", "{s}.wal", "-m", "{tmp}/must-not-load.gguf"],
    ["collect", "-b", "ifeval", "-d", "{items}", "--store", "{s}.wal", "-m", "{tmp}/must-not-load.gguf"],
], ids=["export-wal", "report-wal", "report-lock", "export-dpo-wal", "attribute-wal", "store-is-a-wal"])
def test_an_output_never_takes_a_stores_log_or_lock(toy: dict[str, Any], tmp_path: Path, argv: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before: ``export/report --out <store>.wal`` made a folder there with exit 0, and every later open of the
    store failed replaying its "log" (a folder). Refused; nothing is created at that path and the store still opens."""
    store = _copy(toy, tmp_path)
    args = [a.replace("{s}", str(store)).replace("{toy}", str(toy["store"])).replace("{tmp}", str(tmp_path))
            .replace("{items}", str(_items(tmp_path))) for a in argv]
    suffix = ".lock" if "{s}.lock" in argv else ".wal"
    line = _one_error_line(main(args), capsys)
    assert f"is the {suffix[1:]} file of the results store {store}" in line, line
    assert not (tmp_path / f"copy.duckdb{suffix}").exists()
    assert sha256(store) == toy["sha"]
    assert main(["status", "--store", str(store)]) == 0, capsys.readouterr().err


def test_collect_item_and_a_second_data_file(toy: dict[str, Any], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--item collects just the named items (an unknown id is one line, and no run is recorded); a second data file
    collected into the same run (same model and settings) is said and recorded in settings["more_data"]."""
    from failtrace.store import open_store

    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    row = lambda k: json.dumps({"key": k, "prompt": f"Say hi {k}",  # noqa: E731
                                "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
    first.write_text("".join(row(k) + "\n" for k in (1, 2, 3)))
    second.write_text("".join(row(k) + "\n" for k in (7, 8)))
    store = tmp_path / "s.duckdb"
    base = ["collect", "-b", "ifeval", "-m", str(toy["model_dir"]), "--no-progress", "--max-new-tokens", "2",
            "-s", str(store)]
    line = _one_error_line(main([*base, "-d", str(first), "--item", "3", "--item", "9"]), capsys)
    assert line == f"error: no item '9' in {first}; its ids are like '1', '2', '3'", line
    assert not store.exists()
    assert main([*base, "-d", str(first), "--item", "3", "--item", " 1 "]) == 0  # pasted with spaces: as --case
    padded = tmp_path / "padded.jsonl"  # and an id the data file itself pads is still named by its text
    padded.write_text(row(" 5 ") + "\n")
    assert main([*base[:-2], "-s", str(tmp_path / "p.duckdb"), "-d", str(padded), "--item", "5"]) == 0, \
        capsys.readouterr().err
    assert "was first collected" not in capsys.readouterr().err
    with open_store(store, read_only=True) as st:
        (run,) = st.runs("collect")
        assert sorted(r["item_id"] for r in st.results(run.run_id)) == ["1", "3"]
    assert main([*base, "-d", f"{tmp_path}/./a.jsonl", "--item", "2"]) == 0  # the same file, written otherwise
    assert "was first collected" not in capsys.readouterr().err
    assert main([*base, "-d", str(second)]) == 0
    err = capsys.readouterr().err
    assert f"note: run {run.run_id} was first collected from {first}; the items of {second} are added to it" in err
    with open_store(store, read_only=True) as st:
        again = st.get_run(run.run_id)
        assert again.data == str(first) and again.settings["more_data"] == [str(second)]
        assert sorted(r["item_id"] for r in st.results(run.run_id)) == ["1", "2", "3", "7", "8"]


def test_a_folder_as_the_store_to_read_names_the_stores_in_it(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Before: report/status --store FOLDER suggested FOLDER/failtrace.duckdb, a file that may not exist; a command
    that reads a store names the ones there (or says there are none); collect, which may create one, still
    suggests a file name."""
    folder = tmp_path / "runs"
    folder.mkdir()
    line = _one_error_line(main(["status", "--store", str(folder)]), capsys)
    assert line == f"error: --store {folder} is a folder and holds no .duckdb store; give a store file (failtrace " \
                   "collect --store FILE makes one)"
    for name in ("b.duckdb", "a.duckdb"):
        (folder / name).write_bytes(b"")
    line = _one_error_line(main(["report", "--store", str(folder), "--out", str(tmp_path / "r")]), capsys)
    assert line == f"error: --store {folder} is a folder; give the store file in it: {folder / 'a.duckdb'}, " \
                   f"{folder / 'b.duckdb'}"
    line = _one_error_line(main(["collect", "-b", "ifeval", "-d", str(_items(tmp_path)), "--store", str(folder)]),
                           capsys)
    assert line == f"error: --store {folder} is a folder; give a file path such as {folder / 'failtrace.duckdb'}"
    assert not (tmp_path / "r").exists()


def test_compare_help_shows_no_positional_model(capsys: pytest.CaptureFixture[str]) -> None:
    """The usage line read `failtrace compare [OPTIONS] [MODEL]...`, but a model without --models/--checkpoints
    before it is refused; the extra names of `--models A B C` are now read from the command's context."""
    code = main(["compare", "--help"])
    out = capsys.readouterr().out
    assert code == 0 and "Usage: failtrace compare [OPTIONS]" in out and "MODEL]..." not in out
    line = _one_error_line(main(["compare", "-s", "x.duckdb", "a", "b"]), capsys)
    assert line.endswith("a b came without an option before them"), line


def test_a_refused_command_leaves_an_older_store_unmigrated(toy: dict[str, Any], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A store of schema version 3 (case_methods without the top tokens after masking): commands that stop on bad
    input leave it byte for byte, still version 3 (before: each one migrated it to version 4 while it opened the
    store, then printed its error); the first command that writes migrates it, and its old rows read the same."""
    store, sha = _damaged(toy, tmp_path, "ALTER TABLE case_methods DROP COLUMN flip_top_texts; "
                                         "ALTER TABLE case_methods DROP COLUMN flip_tops; "
                                         "UPDATE schema_version SET version = 3")
    con = duckdb.connect(str(store), read_only=True)
    case_id, category = con.execute("SELECT case_id, category FROM cases ORDER BY case_id LIMIT 1").fetchone()
    con.close()
    for argv in (["pairs", "--item", "nope"], ["analyse", "--pair-run", "zzz"],
                 ["override", "--case", case_id, "--category", category, "--reason", "the same"],
                 ["compare", "-m", str(toy["model_dir"]), str(tmp_path / "gone"), "--no-progress"]):
        line = _one_error_line(main([argv[0], "-s", str(store), *argv[1:]]), capsys)
        assert sha256(store) == sha, (argv, line)
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 3
    con.close()
    other = next(c for c in ("M-IA", "NC-IA+M-AG", "NC-IA+AG") if c != category)
    assert main(["override", "-s", str(store), "--case", case_id, "--category", other, "--reason", "r"]) == 0
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 4
    tops = con.execute("SELECT count(*) FROM case_methods WHERE flip_tops IS NULL").fetchone()[0]
    assert tops == con.execute("SELECT count(*) FROM case_methods").fetchone()[0] > 0  # old rows: not recorded
    con.close()


@pytest.mark.parametrize("command", ["status", "show", "analyse", "export", "serve", "collect"])
@pytest.mark.parametrize("suffix", [".lock", ".wal"])
def test_a_stores_log_or_lock_as_the_store_names_the_store(toy: dict[str, Any], tmp_path: Path, command: str,
                                                           suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--store X.lock`` (or ``X.wal``) of an existing store X, whether that file exists yet or not: before, a
    reader said "no results store at X.lock; run failtrace collect --store X.lock first", which collect refuses."""
    store = _copy(toy, tmp_path)
    side = store.with_name(store.name + suffix)
    extra = {"export": ["--format", "jsonl", "-o", str(tmp_path / "exp")],
             "collect": ["--benchmark", "demo", "--data", "builtin"]}.get(command, [])
    for exists in (False, True):
        if exists:
            side.write_bytes(b"")
        line = _one_error_line(main([command, "--store", str(side), *extra]), capsys)
        assert line == (f"error: --store {side} is the {suffix[1:]} file of the results store {store}, not a store; "
                        f"give the store itself: --store {store}"), exists
    assert sha256(store) == toy["sha"] and not (tmp_path / "exp").exists()


def test_analyse_on_a_version_1_store_migrates_it_and_analyses(toy: dict[str, Any], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A version-1 store (no case tables yet) is migrated by analyse's first write; before, analyse read the cases
    table first and called the store damaged (once migration moved from open to the first write)."""
    from failtrace.store.schema import PAIR_COLUMNS_V3

    drops = "; ".join([f"DROP TABLE {t}" for t in ("case_methods", "case_graphs", "overrides", "case_alternatives",
                                                   "cases")]
                      + [f"ALTER TABLE pairs DROP COLUMN {name}" for name, _ in PAIR_COLUMNS_V3])
    store, sha = _damaged(toy, tmp_path, drops + "; UPDATE schema_version SET version = 1")
    line = _one_error_line(main(["analyse", "-s", str(store), "--pair-run", "zzz", "--no-progress"]), capsys)
    assert "zzz" in line and sha256(store) == sha  # refused before any write: still version 1, byte for byte
    assert main(["analyse", "-s", str(store), "--methods", "attnlrp", "--limit", "1", "--no-progress"]) == 0
    assert "1 analysed now" in capsys.readouterr().out
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 4
    assert con.execute("SELECT count(*) FROM case_methods WHERE len(flip_tops) = len(flip_curve)").fetchone()[0] == 1
    con.close()


def test_collect_item_names_only_its_own_problems(toy: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`collect --item 1` warned about every record of the file it skipped (a user saw IFEval's letter_frequency
    warnings for lines they never chose); now one note counts them, and asking for a skipped record shows why."""
    good = {"prompt": "Say hi", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    bad = {"key": 3, "prompt": "Count", "instruction_id_list": ["keywords:letter_frequency"],
           "kwargs": [{"letter": "#", "let_frequency": 2, "let_relation": "at least"}]}
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ({**good, "key": 1}, {**good, "key": 2}, bad)))
    argv = ["collect", "-b", "ifeval", "-d", str(data), "-m", str(toy["model_dir"]), "--no-progress",
            "--max-new-tokens", "2", "-s", str(tmp_path / "s.duckdb")]
    assert main([*argv, "--item", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and f"note: 1 other record(s) of {data} were skipped" in err
    assert main([*argv, "--item", "3"]) == 2
    err = capsys.readouterr().err
    assert "warning: line 3: keywords:letter_frequency does not accept letter='#'" in err
    assert err.rstrip().splitlines()[-1].startswith("error: no item '3' in")


def test_an_output_path_that_goes_up_out_of_a_missing_folder_is_refused_first(
        toy: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`attribute --json nofile/../../../proc/a.json` loaded the model, computed the attribution, made `nofile/`
    and failed only when it wrote: the early check walked up the path by its text, past a `..` the operating
    system cannot take out of a folder that does not exist. Now the path is refused before anything runs."""
    monkeypatch.chdir(tmp_path)
    for args in (["report", "-s", str(toy["store"]), "--out", "nofile/../../x"],
                 ["export", "-s", str(toy["store"]), "-f", "jsonl", "--out", "missing/../exp"],
                 ["export-dpo", "-s", str(toy["store"]), "-o", "nofile/../../proc/a.jsonl"]):
        line = _one_error_line(main(args), capsys)
        assert "'..' after " in line and "which does not exist; give the path without it" in line, (args, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made
    assert sha256(toy["store"]) == toy["sha"]


def test_a_huge_argument_is_not_echoed_whole(toy: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """A 20,000-character --item id came back whole in the error line of show, pairs, collect and analyse."""
    from failtrace.errors import LONGEST_WORD

    huge = "x" * 20_000
    for args in (["show", "-s", str(toy["store"]), "--item", huge],
                 ["analyse", "-s", str(toy["store"]), "--pair-run", huge, "--no-progress"]):
        line = _one_error_line(main(args), capsys)
        assert len(line) < 2 * LONGEST_WORD and "… (20,0" in line and " characters)" in line, (args[0], line[:300])
    assert sha256(toy["store"]) == toy["sha"]


def test_an_option_given_as_another_options_value_is_said(toy: dict[str, Any],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`collect ... --item --store s.duckdb`: --item took "--store" as its id and click said "Got unexpected extra
    argument(s) (s.duckdb)". The forgotten value is now said as such."""
    for args in (["show", "--item", "--store", str(toy["store"])],
                 ["collect", "-b", "demo", "-d", "builtin", "--item", "--store", str(toy["store"])],
                 ["pairs", "--item", "--no-progress", "-s", str(toy["store"])]):
        line = _one_error_line(main(args), capsys)
        after = args[args.index("--item") + 1]
        assert line.startswith(f"error: --item has no value: the next word is the option {after}; give --item its "
                               "value first"), line
    assert main(["show", "-s", str(toy["store"]), "--item=--store"]) == 2  # written with '=', it is the value
    assert "no such item was collected" in capsys.readouterr().err
    assert sha256(toy["store"]) == toy["sha"]


@pytest.mark.parametrize("argv", [["report", "--store", "{toy}", "--no-progress"],
                                  ["export", "--store", "{toy}", "--format", "jsonl"],
                                  ["demo", "--no-progress"]], ids=["report", "export", "demo"])
def test_an_out_folder_that_is_a_link_to_nothing_is_said(toy: dict[str, Any], tmp_path: Path, argv: list[str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`--out L` where L is a symbolic link to a missing folder: the report said "cannot access L: File exists" with
    a crash log, export "cannot create --out folder L: File exists". Now the link and its target are named."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "missing")
    args = [a.replace("{toy}", str(toy["store"])) for a in argv] + ["--out", str(link)]
    line = _one_error_line(main(args), capsys)
    assert line == (f"error: --out {link} is a symbolic link to {tmp_path / 'missing'}, which does not exist; create "
                    f"that folder, fix the link, or give another --out"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and sha256(toy["store"]) == toy["sha"]


def test_an_out_link_that_is_relative_or_a_loop_is_said_as_such(toy: dict[str, Any], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A relative link's target was printed as written ('missing', not where that is), and a loop was called a link
    to a folder that does not exist."""
    (tmp_path / "rel").symlink_to("missing")
    (tmp_path / "loop").symlink_to("loop")
    base = ["export", "--store", str(toy["store"]), "--format", "jsonl", "--out"]
    line = _one_error_line(main([*base, str(tmp_path / "rel")]), capsys)
    assert f"is a symbolic link to {tmp_path / 'missing'}, which does not exist" in line, line
    line = _one_error_line(main([*base, str(tmp_path / "loop")]), capsys)
    assert line == (f"error: --out {tmp_path / 'loop'} is a symbolic link that leads back to itself (a loop); fix the "
                    "link or give another --out"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop", "rel"]


def test_a_file_output_linked_into_a_missing_folder_makes_no_folder_there(toy: dict[str, Any], tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`export-dpo --out L` where L links to a file in a folder that does not exist printed "wrote 5 preference
    pairs to T" and made T's folders (at the root of the file system, for /nonexistent/dir/x). Now the link and the
    missing folder are named, nothing is made; a loop is said to be one; a link to a new file in an existing folder
    is still written through."""
    link, loop, fine = tmp_path / "l.jsonl", tmp_path / "loop.jsonl", tmp_path / "fine.jsonl"
    link.symlink_to(tmp_path / "gone" / "deeper" / "x.jsonl")
    chain = tmp_path / "chain.jsonl"  # a link to that link: the end of the chain is what counts
    chain.symlink_to(link)
    loop.symlink_to(loop)
    fine.symlink_to(tmp_path / "target.jsonl")
    base = ["export-dpo", "--store", str(toy["store"]), "--out"]
    line = _one_error_line(main([*base, str(link)]), capsys)
    assert line == (f"error: --out {link} is a symbolic link to {tmp_path / 'gone' / 'deeper' / 'x.jsonl'}, whose "
                    f"folder {tmp_path / 'gone' / 'deeper'} does not exist; create that folder, fix the link, or give "
                    f"another --out"), line
    line = _one_error_line(main([*base, str(chain)]), capsys)
    assert line.startswith(f"error: --out {chain} is a symbolic link to "), line
    assert f"whose folder {tmp_path / 'gone' / 'deeper'} does not exist" in line, line
    line = _one_error_line(main([*base, str(loop)]), capsys)
    assert line == (f"error: --out {loop} is a symbolic link that leads back to itself (a loop); fix the link or give "
                    "another --out"), line
    assert not (tmp_path / "gone").exists()
    line = _one_error_line(main(["export-dpo", "--store", str(loop), "--out", str(tmp_path / "p.jsonl")]), capsys)
    assert line.startswith(f"error: --store {loop} is a symbolic link"), line  # was a RuntimeError's crash log
    (tmp_path / "p.jsonl.part").mkdir()  # was "cannot access p.jsonl.part: Is a directory" and a crash log
    line = _one_error_line(main([*base, str(tmp_path / "p.jsonl")]), capsys)
    assert line == (f"error: cannot write --out {tmp_path / 'p.jsonl'}: {tmp_path / 'p.jsonl.part'} is a folder, "
                    "where p.jsonl is first written before it is renamed into place; move that folder away"), line
    assert main([*base, str(fine)]) == 0 and fine.is_symlink() and (tmp_path / "target.jsonl").stat().st_size > 0
    assert sha256(toy["store"]) == toy["sha"]


@pytest.mark.parametrize("argv, twice", [
    (["show", "--store", "{toy}", "--case", "abc", "--case", "def"], "--case"),
    (["show", "-s", "{toy}", "--store={toy}"], "--store"),  # a short and a long name of one option
    (["override", "-s", "{toy}", "--case", "abc", "--category", "M-IA", "--reason", "a", "--reason", "b"],
     "--reason"),
], ids=["show-case", "show-store", "override-reason"])
def test_an_option_given_twice_is_refused_not_the_last_one_kept(toy: dict[str, Any], argv: list[str], twice: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--store a --store b` silently used b (for `override`, the store written to), `--case X --case Y` showed Y.
    A repeatable option (`analyse --pair-run`) may still be given many times."""
    args = [a.replace("{toy}", str(toy["store"])) for a in argv]
    line = _one_error_line(main(args), capsys)
    assert line.startswith(f"error: {twice} is given twice; give it once"), line
    assert sha256(toy["store"]) == toy["sha"]


def test_item_ids_are_read_without_surrounding_spaces(toy: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """`show --item " q000"` said "no such item was collected" where `--case` is read without its spaces; an id of
    only spaces is refused as an empty one is."""
    from failtrace.store import open_store

    with open_store(toy["store"], read_only=True) as st:
        item = st.con.execute("SELECT item_id FROM cases ORDER BY item_id LIMIT 1").fetchone()[0]
    assert main(["show", "-s", str(toy["store"]), "--item", item]) == 0
    plain = capsys.readouterr().out
    assert main(["show", "-s", str(toy["store"]), "--item", f" {item}\t"]) == 0
    assert capsys.readouterr().out == plain and item in plain
    for argv in (["show", "-s", str(toy["store"]), "--item", "  "],
                 ["pairs", "-s", str(toy["store"]), "--item", " ", "--no-progress"]):
        line = _one_error_line(main(argv), capsys)
        assert "--item" in line and "got only spaces; give an item id" in line, line
    assert sha256(toy["store"]) == toy["sha"]


def test_a_file_output_inside_a_link_to_nothing_is_named(toy: dict[str, Any], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`--out dangling/x.jsonl` (a folder on the way is a link to nothing, or a loop) passed the checks and ended in
    a crash log when the writer made the folder ("File exists"). Now the link is named and nothing is made."""
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "loop").symlink_to("loop")
    for out, says in ((tmp_path / "dangling" / "x.jsonl", f"{tmp_path / 'dangling'} is a symbolic link to "
                       f"{tmp_path / 'gone'}, which does not exist; create that folder, fix the link, or give "
                       "another --out"),
                      (tmp_path / "dangling" / "deeper" / "x.jsonl", f"{tmp_path / 'dangling'} is a symbolic link"),
                      (tmp_path / "loop" / "x.jsonl", f"{tmp_path / 'loop'} is a symbolic link that leads back to "
                       "itself (a loop); fix the link or give another --out")):
        line = _one_error_line(main(["export-dpo", "--store", str(toy["store"]), "--out", str(out)]), capsys)
        assert line.startswith(f"error: --out {out}: ") and says in line, line
    line = _one_error_line(main(["export", "--store", str(toy["store"]), "--format", "jsonl", "--out",
                                 str(tmp_path / "dangling" / "exp")]), capsys)  # a folder output below one too
    assert line.startswith(f"error: --out {tmp_path / 'dangling' / 'exp'}: {tmp_path / 'dangling'} is a symbolic "
                           "link to"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "loop"] and not (tmp_path / "gone").exists()
    assert sha256(toy["store"]) == toy["sha"]
