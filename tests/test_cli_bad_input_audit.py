"""Regression tests from an adversarial audit of the error contract (docs/ERRORS.md), on a real analysed store.

Each test is a bad input a user makes that once broke the contract: Ctrl-C exited 0 with nothing said; a read-only
store was called "not a DuckDB file, or damaged"; export-dpo's unwritable --out went to a crash log, and an --out
naming the store itself overwrote the store; a bad --mask-token ran the whole analysis, exited 0 and recorded an
analysis run; an empty --methods meant "all"; a --benchmark typo cost a model load and then said "no cases of this
model"; pairs on a run of an unknown benchmark recorded a pair run before failing; a --store symlink to nothing was
"damaged" (after the model load); a store in a folder that takes no new files failed at its first commit as an
"unexpected" error; an unwritable FAILTRACE_CACHE gave a crash log; a mistyped registry model name was reported only
as an unreachable hub id; serve on a truncated store was an "unexpected" crash (exit 70) and with --review wrote to
that damaged file; a bad non-loopback --host printed two lines. Every check: the exit code, stderr exactly one
``error: ...`` line, no traceback, no crash log, and the store's sha256 unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from refusals import copy_store as _copy
from refusals import one_error_line as _one_error_line
from refusals import refusal_store
from serve_store import sha256

from failtrace.cli import main
from failtrace.store.store import open_store

SRC = str(Path(__file__).resolve().parents[1] / "src")


pytestmark = pytest.mark.usefixtures("cli_env")  # crash logs into the test folder, one thread (conftest)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store with collect + pairs + analyse on the toy model (5 cases of benchmark 'toy')."""
    info = refusal_store(tmp_path_factory.mktemp("audit"))
    (info["store"].parent / "must-not-load.gguf").write_bytes(b"NOPE, not a model")
    return info


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


# ---- Ctrl-C ----------------------------------------------------------------------------------------------------------


def test_ctrl_c_exits_130_with_one_line(toy: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """typer >= 0.22 turns Ctrl-C into a *returned* 130 without standalone mode; main used to drop it and exit 0."""
    from failtrace.store.store import ResultsStore

    def interrupted(self: ResultsStore) -> list[object]:
        raise KeyboardInterrupt

    monkeypatch.setattr(ResultsStore, "status_rows", interrupted)
    line = _one_error_line(main(["status", "-s", str(toy["store"])]), capsys, expected_code=130)
    assert line == "error: interrupted"  # status writes nothing: no promise of a resume
    assert sha256(toy["store"]) == toy["sha"] and not (tmp_path / "logs").exists()


def test_ctrl_c_in_finetune_says_how_it_resumes(toy: dict[str, Any], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """finetune never writes the store: the store writers' promise ("everything committed to the store") is wrong
    for it; it resumes from its own last saved step instead (tests/test_training.py)."""
    import failtrace.training.finetune as ft

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "finetune", interrupted)
    monkeypatch.setattr(ft, "require_trl", lambda: None)
    code = main(["finetune", "-s", str(toy["store"]), "--method", "sft", "--model", str(toy["model_dir"]),
                 "--out", str(tmp_path / "ck"), "--no-progress"])
    line = _one_error_line(code, capsys, expected_code=130)
    assert line.startswith("error: interrupted; the checkpoints saved so far stay in --out") and "store" not in line
    assert "rerun the same command to resume from the last saved step" in line
    assert sha256(toy["store"]) == toy["sha"]


def test_finetune_leaves_the_store_free_while_it_trains(toy: dict[str, Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """finetune held the store open for its whole run (it reads it once, at the start): compare --checkpoints on the
    steps saved so far, analyse or override were refused as "in use by process N (failtrace finetune)". The store
    is closed before training starts, and the checkpoints record its absolute path."""
    import failtrace.training.finetune as ft
    from failtrace.store.store import open_store

    store = _copy(toy, tmp_path)
    seen: list[Any] = []

    def trains(data: Any, *args: object, **kwargs: object) -> None:
        with open_store(store) as st:  # another command writing the store while this one trains
            seen.append((st.con.execute("SELECT count(*) FROM cases").fetchone()[0], data.store,
                         len(data.examples)))
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "finetune", trains)
    monkeypatch.setattr(ft, "require_trl", lambda: None)
    monkeypatch.chdir(tmp_path)
    code = main(["finetune", "-s", store.name, "--method", "sft", "--model", str(toy["model_dir"]),
                 "--out", str(tmp_path / "ck"), "--no-progress"])
    assert _one_error_line(code, capsys, expected_code=130).startswith("error: interrupted")
    assert len(seen) == 1 and seen[0][0] > 0 and seen[0][1] == str(store.absolute()) and seen[0][2] > 0, seen


def test_real_sigint_mid_analyse_keeps_the_store_and_resumes(toy: dict[str, Any], tmp_path: Path) -> None:
    """A real SIGINT, delivered right after the first case commits: exit 130, one line; the store opens with exactly
    that case, and a rerun analyses the other four and skips it."""
    store = _copy(toy, tmp_path)
    # a fresh setting (--max-k 4) so every clean pair is new work; the hook signals this very process
    # Python keeps SIGINT ignored when it starts with it ignored (as under `cmd &` in a non-interactive shell, which
    # is how CI may run the suite): restore the default handler, as an interactive terminal would have it
    script = ("import os, signal, sys; import failtrace.cases.analyse as a; real = a.commit_case\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "def hook(*args, **kw):\n    real(*args, **kw); os.kill(os.getpid(), signal.SIGINT)\n"
              "a.commit_case = hook\nfrom failtrace.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    args = ["analyse", "-s", str(store), "--max-k", "4", "--no-progress"]
    res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=_env(),
                         timeout=600)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 130, (res.stdout[-2000:], res.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), res.stderr
    assert "Traceback" not in res.stdout + res.stderr and "analysed now" not in res.stdout
    rerun = subprocess.run([sys.executable, "-m", "failtrace.cli", *args], capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "5 clean pairs, 1 already analysed, 4 analysed now" in rerun.stdout, rerun.stdout


# ---- a store the user may not write ------------------------------------------------------------------------------


@contextlib.contextmanager
def _not_the_owner(warm_up: list[str]) -> Iterator[None]:
    """Act as a user other than the files' owner: as root (who may write anything) switch the effective ids to
    nobody for the block; otherwise the permission bits already apply. ``warm_up`` (the same command on a missing
    store, run first as root) imports every module the command needs: nobody may not read the interpreter's files."""
    if os.geteuid() != 0:
        yield
        return
    main(warm_up)
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.parametrize("argv", [
    ["override", "--case", "q", "--category", "M-IA", "--reason", "r"],
    ["analyse", "--no-progress"],
], ids=["override", "analyse"])
def test_read_only_store_is_named_read_only_not_damaged(toy: dict[str, Any], argv: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="failtrace-ro-"))  # a folder the other user can reach and write in
    try:
        os.chmod(folder, 0o777)
        store = _copy(toy, folder)
        os.chmod(store, 0o444)
        with _not_the_owner([*argv, "-s", str(folder / "missing.duckdb")]):
            capsys.readouterr()
            code = main([*argv, "-s", str(store)])
        line = _one_error_line(code, capsys)
        assert f"cannot open results store {store} for writing: permission denied" in line, line
        assert "damaged" not in line.split("(")[0] and "not a DuckDB file" not in line
        assert sha256(store) == toy["sha"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_store_in_a_folder_that_takes_no_new_files(toy: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Store and lock file writable, their folder not: DuckDB cannot create the log at the first commit. Before: the
    override failed at its commit as an "unexpected TransactionException" (exit 70, crash log)."""
    folder = Path(tempfile.mkdtemp(prefix="failtrace-rodir-"))
    try:
        store = _copy(toy, folder)
        store.with_name(store.name + ".lock").touch()
        for f in (store, store.with_name(store.name + ".lock")):
            os.chmod(f, 0o666)
        os.chmod(folder, 0o555)
        from failtrace.store.cases import load_cases
        from failtrace.store.store import open_store

        with open_store(store, read_only=True) as st:
            case_id = load_cases(st)[0].case_id
        argv = ["override", "--case", case_id, "--category", "NC-IA+AG", "--reason", "r"]
        with _not_the_owner([*argv, "-s", str(folder / "missing.duckdb")]):
            capsys.readouterr()
            code = main([*argv, "-s", str(store)])
        line = _one_error_line(code, capsys)
        assert line.startswith(f"error: cannot write results store {store}: its folder {folder} does not accept new "
                               f"files"), line
        assert "copy.duckdb.wal" in line and sha256(store) == toy["sha"]
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("cmd", ["collect", "status", "analyse", "serve"])
def test_dangling_symlink_store_is_named(toy: dict[str, Any], tmp_path: Path, cmd: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: collect loaded the model, then called the store 'not a DuckDB file, or truncated or damaged'."""
    link = tmp_path / "runs.duckdb"
    link.symlink_to(tmp_path / "gone" / "runs.duckdb")
    data = tmp_path / "items.jsonl"
    data.write_text('{"key": 1, "prompt": "Say hi", "instruction_id_list": [], "kwargs": []}\n')
    argv = {"collect": ["collect", "-b", "ifeval", "-d", str(data), "--no-progress",
                        "-m", str(toy["store"].parent / "must-not-load.gguf")],
            "status": ["status"], "analyse": ["analyse", "--no-progress"], "serve": ["serve", "--port", "0"]}[cmd]
    line = _one_error_line(main([*argv, "-s", str(link)]), capsys)
    assert line == (f"error: --store {link} is a symbolic link to {tmp_path / 'gone' / 'runs.duckdb'}, which does "
                    f"not exist; fix the link or give the store's real path"), line
    assert not (tmp_path / "gone").exists()


# ---- export-dpo ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out,names", [
    ("{s}/p.jsonl", ["--out", "not a folder"]),  # under a file (the store)
    ("/proc/nope/p.jsonl", ["--out", "/proc/nope/p.jsonl", "cannot create anything"]),
], ids=["under-a-file", "unwritable"])
def test_export_dpo_out_checked_first(toy: dict[str, Any], tmp_path: Path, out: str, names: list[str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = out.replace("{s}", str(toy["store"]))
    line = _one_error_line(main(["export-dpo", "-s", str(toy["store"]), "-o", out]), capsys)
    for name in names:
        assert name in line, (name, line)
    assert ".part" not in line and not (tmp_path / "logs").exists(), "a handled error must not write a crash log"
    assert sha256(toy["store"]) == toy["sha"]


@pytest.mark.parametrize("how", ["same", "dotdot", "symlink", "hardlink", "wal"])
def test_export_dpo_never_overwrites_the_store(toy: dict[str, Any], tmp_path: Path, how: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Before: ``export-dpo -s runs.duckdb -o runs.duckdb`` replaced the store with five lines of JSON."""
    store = _copy(toy, tmp_path / "d")
    out = {"same": store, "dotdot": tmp_path / "d" / ".." / "d" / store.name, "symlink": tmp_path / "link.duckdb",
           "hardlink": tmp_path / "hard.duckdb", "wal": store.with_name(store.name + ".wal")}[how]
    if how == "symlink":
        out.symlink_to(store)
    if how == "hardlink":
        os.link(store, out)
    line = _one_error_line(main(["export-dpo", "-s", str(store), "-o", str(out)]), capsys)
    assert f"--out {out} is the results store's own file" in line, line
    assert sha256(store) == toy["sha"] and not store.with_name(store.name + ".wal").exists()


def test_export_dpo_tail_weight_and_new_folder(toy: dict[str, Any], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "sub" / "prefs.jsonl"
    line = _one_error_line(main(["export-dpo", "-s", str(toy["store"]), "-o", str(out), "--tail-weight", "2"]),
                           capsys)
    assert "--tail-weight" in line and "2.0" in line and not (tmp_path / "new").exists()
    assert main(["export-dpo", "-s", str(toy["store"]), "-o", str(out)]) == 0  # a missing folder is made
    assert "wrote 5 preference pairs" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 5 and sha256(toy["store"]) == toy["sha"]


def test_export_dpo_that_stops_midway_leaves_no_part_file(toy: dict[str, Any], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A case without its AttnLRP row stops the export after the records before it: one line, an existing --out
    kept as it was, and no half-written ``OUT.part`` left beside it (an outside check found 4 records there)."""
    store = _copy(toy, tmp_path / "d")
    with open_store(store) as st:
        last = st.con.execute("SELECT case_id FROM cases ORDER BY case_id DESC LIMIT 1").fetchone()[0]
        st.con.execute("DELETE FROM case_methods WHERE case_id = ? AND method = 'attnlrp'", [last])
    out = tmp_path / "prefs.jsonl"
    out.write_text("kept\n")
    line = _one_error_line(main(["export-dpo", "-s", str(store), "-o", str(out)]), capsys)
    assert "attnlrp" in line, line
    assert out.read_text() == "kept\n" and sorted(p.name for p in tmp_path.iterdir()) == ["d", "prefs.jsonl"]


@pytest.mark.parametrize("out", ["/dev/stdout", "-"])
def test_export_dpo_to_stdout_keeps_the_stream_json(toy: dict[str, Any], out: str, tmp_path: Path) -> None:
    """``--out /dev/stdout | consumer``: the records on stdout, the status line on stderr (it was a non-JSON line
    in the data stream). ``--out -`` is the same (it wrote a file named '-')."""
    res = subprocess.run([sys.executable, "-m", "failtrace.cli", "export-dpo", "-s", str(toy["store"]), "-o", out],
                         capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(records) == 5 and all("chosen" in r and "rejected" in r for r in records)
    assert res.stderr.strip() == "wrote 5 preference pairs to /dev/stdout"
    assert list(tmp_path.iterdir()) == []
    # standard output redirected to a file, appended to: the records are appended (reopening /dev/stdout wrote a
    # new file through OUT.part and renamed it over the one the shell had opened, losing what it held)
    log = tmp_path / "all.jsonl"
    log.write_text('{"kept": 1}\n')
    with log.open("a") as fh:
        res = subprocess.run([sys.executable, "-m", "failtrace.cli", "export-dpo", "-s", str(toy["store"]), "-o",
                              out], stdout=fh, stderr=subprocess.PIPE, text=True, env=_env(), timeout=300,
                             cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0] == {"kept": 1} and len(lines) == 6 and all("chosen" in r for r in lines[1:])
    assert res.stderr.strip() == "wrote 5 preference pairs to /dev/stdout" and sorted(tmp_path.iterdir()) == [log]


# ---- --benchmark with no cases -------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["export-dpo", "-o", "{t}/p.jsonl"],
    ["compare", "--models", "{x}", "{x}", "--no-progress"],
    ["finetune", "--method", "sft", "-o", "{t}/ck", "-m", "{x}", "--no-progress"],
], ids=["export-dpo", "compare", "finetune"])
def test_benchmark_without_cases_refused_before_any_model(toy: dict[str, Any], tmp_path: Path, argv: list[str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = str(toy["store"].parent / "must-not-load.gguf")
    args = [a.replace("{t}", str(tmp_path)).replace("{x}", bad) for a in argv]
    line = _one_error_line(main([*args, "-s", str(toy["store"]), "-b", "toyy"]), capsys)
    assert line == f"error: no cases of benchmark 'toyy' in {toy['store']}; benchmarks with cases: toy", line
    assert "must-not-load" not in line
    assert sha256(toy["store"]) == toy["sha"] and not (tmp_path / "ck").exists()


# ---- analyse -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra,names", [
    (["--mask-rule", "replace", "--mask-token", "-1"], ["--mask-token", ">= 0", "-1"]),
    (["--mask-rule", "replace", "--mask-token", "999999"], ["--mask-token 999999", "0..258"]),
    (["--methods", ""], ["--methods is empty"]),
], ids=["mask-token-negative", "mask-token-beyond-vocab", "methods-empty"])
def test_analyse_bad_settings_refused_and_store_unchanged(toy: dict[str, Any], tmp_path: Path, extra: list[str],
                                                          names: list[str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a bad --mask-token analysed nothing, exited 0 and recorded an analysis run; '' meant all methods."""
    store = _copy(toy, tmp_path)
    line = _one_error_line(main(["analyse", "-s", str(store), "--no-progress", *extra]), capsys)
    for name in names:
        assert name in line, (name, line)
    assert sha256(store) == toy["sha"]


# ---- pairs ---------------------------------------------------------------------------------------------------------


def test_pairs_unknown_benchmark_records_nothing(toy: dict[str, Any], tmp_path: Path) -> None:
    """A store whose runs are of a benchmark this process does not know (the toy one, registered only in-process by
    the tests): before, pairs recorded a pair run and then failed. A fresh process, as a user runs it."""
    store = _copy(toy, tmp_path)
    res = subprocess.run([sys.executable, "-m", "failtrace.cli", "pairs", "-s", str(store), "--no-progress"],
                         capture_output=True, text=True, env=_env(), timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: unknown benchmark 'toy'") and "Traceback" not in res.stdout + res.stderr
    assert sha256(store) == toy["sha"]


# ---- serve ---------------------------------------------------------------------------------------------------------


def _serve(args: list[str]) -> subprocess.CompletedProcess[str]:
    """The real command (a subprocess: had it started serving, the timeout ends it and the test fails)."""
    return subprocess.run([sys.executable, "-m", "failtrace.cli", "serve", "--port", "0", *args],
                          capture_output=True, text=True, env=_env(), timeout=120)


@pytest.mark.parametrize("cut", [300_000, 3_000_000])
@pytest.mark.parametrize("review", [False, True], ids=["read-only", "review"])
def test_serve_truncated_store_one_line_and_unchanged(toy: dict[str, Any], tmp_path: Path, cut: int,
                                                      review: bool) -> None:
    """A store cut short: its catalog opens, the case rows do not. Before: exit 70 (an "unexpected" IOException)
    and, with --review, the reviews table was written into the damaged file."""
    store = tmp_path / "cut.duckdb"
    store.write_bytes(toy["store"].read_bytes()[:cut])
    before = sha256(store)
    res = _serve(["-s", str(store), *(["--review"] if review else [])])
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(store) in lines[0], res.stderr
    assert "damaged or truncated" in lines[0] and "unexpected" not in lines[0]
    assert "Traceback" not in res.stdout + res.stderr
    assert sha256(store) == before


def test_serve_names_the_store_as_typed(toy: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """serve's errors named the store by its absolute path, every other command by the path as typed: a file that
    is no store (refused at open) and a store whose case rows are cut off (refused when the table is read)."""
    monkeypatch.chdir(tmp_path)
    Path("notes.duckdb").write_text("not a store")
    line = _one_error_line(main(["serve", "--store", "notes.duckdb", "--port", "0"]), capsys)
    assert line.startswith("error: cannot open results store notes.duckdb: it is not a DuckDB file"), line
    assert Path("notes.duckdb").read_text() == "not a store"
    Path("cut.duckdb").write_bytes(toy["store"].read_bytes()[:3_000_000])
    line = _one_error_line(main(["serve", "--store", "cut.duckdb", "--port", "0"]), capsys)
    assert line.startswith("error: results store cut.duckdb is damaged or truncated"), line  # (DuckDB's own words,
    # quoted after it, name the absolute path)


def test_serve_bad_public_host_is_one_line(toy: dict[str, Any]) -> None:
    """Before: the 'anyone can read the store' warning came first, so a bad host gave two lines."""
    res = _serve(["-s", str(toy["store"]), "--host", "999.1.1.1"])
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        res.stderr.strip()] and res.stderr.startswith("error: --host '999.1.1.1' does not resolve"), res.stderr
    assert sha256(toy["store"]) == toy["sha"]



# ---- model names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,hint", [
    ("smollm2", "did you mean the registry model 'smollm2-135m-instruct'?"),
    ("Gemma3", "did you mean the registry model 'gemma-3-270m'?"),
    ("no-such-model-xyz", "nor a registry name: `failtrace models` lists smollm2-135m-instruct,"),
    ("someorg/some-model", None),  # an owner/name is a hub id: no registry hint
])
def test_unknown_model_name_points_at_the_registry(name: str, hint: str | None, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A registry name mistyped was reported only as an unreachable hub id; now the closest registry name is named.
    The hub is made unreachable for real: its endpoint is a closed local port."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    line = _one_error_line(main(["attribute", "-p", "hi", "-m", name]), capsys)
    assert line.startswith(f"error: cannot load model {name!r}: it is not a local folder or .gguf file"), line
    assert "hub cannot be reached" in line
    if hint is None:
        assert "registry" not in line
    else:
        assert hint in line, line


def test_unwritable_model_cache_is_one_line_without_a_crash_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """FAILTRACE_CACHE under a file: the bundled model cannot be converted into it. Before: an OS error with a crash
    log naming the folder; now the cache and the setting to change are named, and no log is written."""
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("FAILTRACE_CACHE", str(tmp_path / "afile" / "cache"))
    line = _one_error_line(main(["attribute", "-p", "The capital of France is", "-t", " Paris", "-c", " Lyon",
                                 "-q"]), capsys)
    assert line == (f"error: cannot write the model cache {tmp_path / 'afile' / 'cache' / 'models'} (Not a "
                    f"directory); set FAILTRACE_CACHE to a writable folder"), line
    assert not (tmp_path / "logs").exists()
