"""The error contract of every command (docs/ERRORS.md), table-driven.

Each bad input must give: exit code 2, exactly one stderr line starting with ``error:`` that names the bad input, no
traceback anywhere, no crash log, and no change to any file in the work folder (the stores included: sha256 of every
file before and after). Cases marked ``early`` pass a model that must not be loaded (``must-not-load.gguf`` is not a
GGUF file): had the command loaded it before checking its input, the message would name that file instead.
The CLI runs in-process (fast); a few cases run as real processes too.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest
import torch

from failtrace.cli import main
from failtrace.failures.collect import register_benchmark
from failtrace_testkit.toy import ToyBenchmark, one_thread, save_toy_model

SRC = str(Path(__file__).resolve().parents[1] / "src")
LONG = "a" * 100_000  # 100,000 byte tokens for the toy tokenizer; the toy model's context is 4,096


pytestmark = pytest.mark.usefixtures("cli_env")  # crash logs into the test folder, one thread (conftest)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a toy model, a real store, and every kind of bad file the cases point at."""
    root = tmp_path_factory.mktemp("errors")
    register_benchmark(ToyBenchmark(name="toy-errors", max_new_tokens=4))
    with one_thread():
        save_toy_model(root / "model")
        (root / "items.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Say {i}", "needle": "-"})
                                                  + "\n" for i in range(2)))
        assert main(["collect", "-b", "toy-errors", "-d", str(root / "items.jsonl"), "-m", str(root / "model"),
                     "-s", str(root / "store.duckdb"), "--no-progress"]) == 0
    store = (root / "store.duckdb").read_bytes()
    rng = random.Random(0)
    files: dict[str, bytes] = {
        "must-not-load.gguf": b"NOPE, not a model",
        "bad.gguf": b"GGUF" + (99).to_bytes(4, "little") + bytes(16),
        "text.gguf": b"hello, I am text",
        "afile": b"x",
        "badcfg/config.json": b"{not json",
        "listcfg/config.json": b"[1, 2]",
        "noconfig/README": b"no config here",
        "bin.jsonl": bytes(rng.randrange(256) for _ in range(2000)) + b"\0",
        "latin.jsonl": '{"key": "café", "prompt": "x"}\n'.encode("latin-1"),
        "latin.json": '[{"key": "café"}]'.encode("latin-1"),
        "fake.jsonl.gz": b'{"key": 1}\n',
        "arrays.jsonl": b'[1, 2]\n"text"\n3\n',
        "notjson.json": b"{this is: not json",
        "deep.jsonl": b"[" * 100_000 + b"\n",
        "junk.parquet": bytes(rng.randrange(256) for _ in range(500)),
        "empty.jsonl": b"",
        "junk.duckdb": bytes(rng.randrange(256) for _ in range(20000)),
        "trunc.duckdb": store[:20_000],  # cut inside the catalog (the file is mostly reserved empty blocks)
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "adir").mkdir()
    (root / "data-folder").mkdir()
    (root / "demo-with-a-folder" / "runs.duckdb").mkdir(parents=True)  # where the demo's store file goes
    import duckdb

    con = duckdb.connect(str(root / "plain.duckdb"))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    return root


@dataclass
class Case:
    """One bad command line; ``{w}`` is the work folder, ``{m}`` the toy model, ``{x}`` the must-not-load model."""

    id: str
    argv: list[str]
    names: list[str]  # substrings the one error line must contain (the bad input, the reason)
    early: bool = field(default=False)


def _with(base: list[str], extra: tuple[str, ...]) -> list[str]:
    """``base`` + ``extra``, where an option ``extra`` sets (``-t X``, ``--out Y``) replaces ``base``'s value for it:
    an option given twice is refused (the last one no longer wins)."""
    given = {a for a in extra if a.startswith("-")}
    kept, i = [], 0
    while i < len(base):
        if base[i] in given and i + 1 < len(base) and not base[i + 1].startswith("-"):
            i += 2
            continue
        kept.append(base[i])
        i += 1
    return [*kept, *extra]


def _a(*extra: str, model: str = "{x}") -> list[str]:
    return _with(["attribute", "-p", "hello", "-t", "#70", "-c", "#71", "-q", "-m", model], extra)


def _g(*extra: str, model: str = "{x}") -> list[str]:
    return _with(["graph", "-p", "hello", "-t", "#70", "-c", "#71", "-q", "-m", model], extra)


def _c(*extra: str, data: str = "{w}/items.jsonl", bench: str = "toy-errors", model: str = "{x}",
       store: str = "{w}/store.duckdb") -> list[str]:
    return ["collect", "-b", bench, "-d", data, "-m", model, "-s", store, "--no-progress", *extra]


def _p(*extra: str, store: str = "{w}/store.duckdb") -> list[str]:
    return ["pairs", "-s", store, "--no-progress", *extra]


def _ft(*extra: str, store: str = "{w}/store.duckdb", model: str = "{x}") -> list[str]:
    return _with(["finetune", "-s", store, "--method", "sft", "--out", "{w}/ckpts", "-m", model, "--no-progress"],
                 extra)


def _ifeval(data: str) -> list[str]:
    return _c(data=data, bench="ifeval", store="{w}/new.duckdb")


CASES = [
    # attribute: numbers, names, output paths, models, inputs
    Case("attr-ig-steps-0", _a("--method", "ig", "--ig-steps", "0"), ["--ig-steps", "0"], early=True),
    Case("attr-ig-steps-negative", _a("--ig-steps", "-5"), ["--ig-steps", "-5"], early=True),
    Case("attr-ig-steps-not-a-number", _a("--ig-steps", "many"), ["--ig-steps"], early=True),
    Case("attr-ig-steps-without-ig", _a("--ig-steps", "8"), ["--ig-steps", "--method ig", "attnlrp"], early=True),
    Case("attr-ig-steps-huge", _a("--method", "ig", "--ig-steps", "99999999999"), ["--ig-steps", "10000"],
         early=True),  # refused before the model loads, not after
    Case("attr-method", _a("--method", "magic"), ["magic", "attnlrp"], early=True),
    Case("attr-objective", _a("--objective", "nope"), ["nope", "logit_diff"], early=True),
    Case("attr-dtype", _a("--dtype", "float8"), ["float8", "bfloat16"], early=True),
    Case("attr-json-unwritable", _a("--json", "/proc/nope/a.json"), ["--json", "/proc/nope/a.json"], early=True),
    Case("attr-json-is-folder", _a("--json", "{w}/adir"), ["--json", "adir", "folder"], early=True),
    Case("attr-html-unwritable", _a("--html", "/proc/nope/a.html"), ["--html", "/proc/nope/a.html"], early=True),
    Case("attr-png-is-folder", _a("--png", "{w}/adir"), ["--png", "adir", "folder"], early=True),
    Case("attr-png-suffix", _a("--png", "{w}/a.svg"), ["a.svg", ".png"], early=True),  # PNG bytes in a .svg
    Case("attr-json-under-a-file", _a("--json", "{w}/afile/a.json"), ["afile", "not a folder"], early=True),
    Case("attr-empty-prompt", ["attribute", "-p", "   ", "-m", "{x}"], ["prompt", "empty"], early=True),
    Case("attr-missing-prompt", ["attribute", "-m", "{x}"], ["--prompt"], early=True),
    Case("attr-unknown-option", _a("--frobnicate"), ["--frobnicate"], early=True),
    Case("attr-position-not-int", _a("--position", "end"), ["--position"], early=True),
    Case("attr-gguf-bad-version", _a(model="{w}/bad.gguf"), ["bad.gguf", "version 99"]),
    Case("attr-gguf-not-gguf", _a(model="{w}/text.gguf"), ["text.gguf", "not a GGUF"]),
    Case("attr-config-not-json", _a(model="{w}/badcfg"), ["config.json", "not valid JSON"]),
    Case("attr-config-not-object", _a(model="{w}/listcfg"), ["config.json", "list"]),
    Case("attr-folder-without-config", _a(model="{w}/noconfig"), ["noconfig", "config.json"]),
    Case("attr-model-missing-path", _a(model="{w}/no-such-model"), ["no-such-model", "no such file or folder"]),
    Case("attr-model-is-a-file", _a(model="{w}/afile"), ["afile", "not a .gguf"]),
    Case("attr-prompt-too-long", ["attribute", "-p", LONG, "-t", "#70", "-c", "#71", "-q", "-m", "{m}"],
         ["100,000 tokens", "4,096", "--allow-long"]),
    Case("attr-target-many-tokens", _a("-t", "hello", model="{m}"), ["'hello'", "one token"]),
    Case("attr-target-id-out-of-range", _a("-t", "#99999", model="{m}"), ["99999", "out of range"]),
    # '²' and '７' pass str.isdigit; '#²' was int('²'), a crash (exit 70); both are strings, and not one token
    Case("attr-target-superscript-id", _a("-t", "#²", model="{m}"), ["'#²'", "one token"]),
    Case("graph-contrast-fullwidth-id", ["graph", "-p", "hello", "-t", "#70", "-c", "#７０", "-q", "-m", "{m}"],
         ["'#７０'", "one token"]),
    Case("attr-position-out-of-range", _a("--position", "999", model="{m}"), ["position 999", "out of range"]),
    Case("attr-same-tokens", _a("-c", "#70", model="{m}"), ["same token"]),
    # graph
    Case("graph-top-k-0", _g("--top-k", "0"), ["--top-k", "0"], early=True),
    Case("graph-node-threshold-nan", _g("--node-threshold", "nan"), ["--node-threshold must be in [0, 1]", "nan"],
         early=True),
    Case("graph-node-threshold-above-1", _g("--node-threshold", "1.5"), ["--node-threshold must be in [0, 1]", "1.5"],
         early=True),
    Case("graph-memory-budget-0", _g("--memory-budget", "0"), ["--memory-budget", "0"], early=True),
    Case("graph-memory-budget-inf", _g("--memory-budget", "inf"), ["--memory-budget", "inf"], early=True),
    Case("graph-prune-above-1", _g("--prune", "cumulative:2"), ["cumulative", "2"], early=True),
    Case("graph-json-unwritable", _g("--json", "/proc/nope/g.json"), ["--json", "/proc/nope/g.json"], early=True),
    Case("graph-html-is-folder", _g("--html", "{w}/adir"), ["--html", "adir", "folder"], early=True),
    Case("graph-png-suffix", _g("--png", "{w}/g.jpg"), ["g.jpg", ".png"], early=True),
    Case("graph-svg-under-a-file", _g("--svg", "{w}/afile/g.svg"), ["afile", "not a folder"], early=True),
    Case("graph-dtype", _g("--dtype", "int4"), ["int4"], early=True),
    Case("graph-gguf-bad-version", _g(model="{w}/bad.gguf"), ["bad.gguf", "version"]),
    Case("graph-prompt-too-long", ["graph", "-p", LONG, "-t", "#70", "-c", "#71", "-q", "-m", "{m}"],
         ["100,000 tokens", "4,096"]),
    # collect: numbers, device, data files, stores, models
    Case("collect-limit-negative", _c("--limit", "-1"), ["--limit", "-1"], early=True),
    # the demo has no data file: a path given by mistake is refused (it was ignored, and stored as the run's data)
    Case("collect-demo-with-a-data-file", _c(data="{w}/nosuch.json", bench="demo"), ["nosuch.json", "--data builtin"],
         early=True),
    Case("collect-limit-0", _c("--limit", "0"), ["--limit", "0"], early=True),
    Case("collect-batch-size-0", _c("--batch-size", "0"), ["--batch-size", "0"], early=True),
    Case("collect-max-new-tokens-0", _c("--max-new-tokens", "0"), ["--max-new-tokens", "0"], early=True),
    Case("collect-seed-negative", _c("--seed", "-1"), ["--seed", "-1"], early=True),
    Case("collect-device-cuda-99", _c("--device", "cuda:99"), ["cuda:99"], early=True),
    Case("collect-device-unknown", _c("--device", "banana"), ["banana", "cpu"], early=True),
    Case("collect-dtype", _c("--dtype", "float8"), ["float8"], early=True),
    Case("collect-data-random-bytes", _ifeval("{w}/bin.jsonl"), ["bin.jsonl", "not a text file"], early=True),
    Case("collect-data-not-utf8-jsonl", _ifeval("{w}/latin.jsonl"), ["latin.jsonl", "not UTF-8"], early=True),
    Case("collect-data-not-utf8-json", _ifeval("{w}/latin.json"), ["latin.json", "not UTF-8"], early=True),
    Case("collect-traces-not-utf8-json", _c(data="{w}/latin.json", bench="traces", store="{w}/new.duckdb"),
         ["latin.json", "not UTF-8"], early=True),
    Case("collect-data-fake-gz", _ifeval("{w}/fake.jsonl.gz"), ["fake.jsonl.gz", "not gzip"], early=True),
    Case("collect-data-not-objects", _ifeval("{w}/arrays.jsonl"), ["arrays.jsonl", "expected a JSON object"],
         early=True),
    Case("collect-data-nested-too-deep", _ifeval("{w}/deep.jsonl"), ["deep.jsonl", "nested too deeply"], early=True),
    Case("collect-data-invalid-json", _ifeval("{w}/notjson.json"), ["notjson.json", "not valid JSON"], early=True),
    Case("collect-data-junk-parquet", _ifeval("{w}/junk.parquet"), ["junk.parquet", "Parquet"], early=True),
    Case("collect-data-folder", _ifeval("{w}/data-folder"), ["data-folder", "folder"], early=True),
    Case("collect-data-missing", _ifeval("{w}/nope.jsonl"), ["nope.jsonl", "no such file"], early=True),
    Case("collect-data-empty", _ifeval("{w}/empty.jsonl"), ["empty.jsonl", "empty"], early=True),
    Case("collect-store-unwritable", _c(store="/proc/nope/runs.duckdb"), ["--store", "/proc/nope/runs.duckdb"],
         early=True),
    Case("collect-store-is-folder", _c(store="{w}/adir"), ["--store", "adir", "folder"], early=True),
    Case("collect-store-random-bytes", _c(store="{w}/junk.duckdb"), ["junk.duckdb"], early=True),
    Case("collect-store-truncated", _c(store="{w}/trunc.duckdb"), ["trunc.duckdb"], early=True),
    Case("collect-store-not-failtrace", _c(store="{w}/plain.duckdb"), ["plain.duckdb", "not a failtrace"],
         early=True),
    Case("collect-unknown-benchmark", _c(bench="no-such-bench"), ["no-such-bench"], early=True),
    Case("collect-gguf-bad-version-existing-store", _c(model="{w}/bad.gguf"), ["bad.gguf", "version"]),
    Case("collect-config-not-json-new-store", _c(model="{w}/badcfg", store="{w}/new.duckdb"), ["config.json"]),
    # pairs
    Case("pairs-min-delta-nan", _p("--min-delta", "nan"), ["--min-delta", "nan"]),
    Case("pairs-min-delta-inf", _p("--min-delta", "inf"), ["--min-delta", "inf"]),
    Case("pairs-min-delta-negative", _p("--min-delta", "-1"), ["--min-delta", "-1"]),
    Case("pairs-top-k-0", _p("--top-k", "0"), ["--top-k", "0"]),
    Case("pairs-limit-negative", _p("--limit", "-1"), ["--limit", "-1"]),
    Case("pairs-max-positions-0", _p("--max-positions", "0"), ["--max-positions", "0"]),
    Case("pairs-rollout-batch-size-0", _p("--rollout-batch-size", "0"), ["--rollout-batch-size", "0"]),
    Case("pairs-device-cuda-99", _p("--device", "cuda:99"), ["cuda:99"]),
    Case("pairs-store-random-bytes", _p(store="{w}/junk.duckdb"), ["junk.duckdb"]),
    Case("pairs-store-truncated", _p(store="{w}/trunc.duckdb"), ["trunc.duckdb"]),
    Case("pairs-store-missing", _p(store="{w}/missing.duckdb"), ["missing.duckdb", "no results store"]),
    Case("pairs-store-is-folder", _p(store="{w}/adir"), ["adir", "folder"]),
    Case("pairs-helper-model-bad-gguf", _p("--helper-model", "{w}/bad.gguf"), ["bad.gguf"]),
    Case("pairs-unknown-run", _p("--run", "no-such-run"), ["no-such-run"]),
    Case("pairs-workers-0", _p("--workers", "0"), ["--workers", "0"]),
    Case("pairs-ray-address-without-workers", _p("--ray-address", "auto"), ["--ray-address", "--workers"]),
    # analyse (the store has no clean pairs; each of these must stop before looking)
    Case("analyse-workers-0", ["analyse", "-s", "{w}/store.duckdb", "--workers", "0"], ["--workers", "0"]),
    # one model-loading worker each: 100000 on a 2-core machine ran for minutes before anything was said
    Case("pairs-workers-beyond-the-cores", _p("--workers", "100000"), ["--workers 100000 is more than this machine's",
                                                                      "--ray-address for a cluster"]),
    Case("analyse-workers-beyond-the-cores", ["analyse", "-s", "{w}/store.duckdb", "--workers", "4096"],
         ["--workers 4096 is more than this machine's"]),
    Case("analyse-workers-negative", ["analyse", "-s", "{w}/store.duckdb", "--workers", "-2"], ["--workers", "-2"]),
    Case("analyse-ray-address-without-workers", ["analyse", "-s", "{w}/store.duckdb", "--ray-address", "auto"],
         ["--ray-address", "--workers"]),
    Case("analyse-device-unknown", ["analyse", "-s", "{w}/store.duckdb", "--device", "banana", "--workers", "2"],
         ["banana", "cpu"]),
    # status
    Case("status-store-random-bytes", ["status", "-s", "{w}/junk.duckdb"], ["junk.duckdb"]),
    Case("status-store-truncated", ["status", "-s", "{w}/trunc.duckdb"], ["trunc.duckdb"]),
    Case("status-store-text-file", ["status", "-s", "{w}/afile"], ["afile"]),
    Case("status-store-not-failtrace", ["status", "-s", "{w}/plain.duckdb"], ["plain.duckdb", "not a failtrace"]),
    Case("status-store-missing", ["status", "-s", "{w}/missing.duckdb"], ["missing.duckdb"]),
    Case("status-store-is-folder", ["status", "-s", "{w}/adir"], ["adir", "folder"]),
    # export
    Case("export-out-is-a-file", ["export", "-s", "{w}/store.duckdb", "-f", "jsonl", "-o", "{w}/afile"],
         ["--out", "afile", "not a folder"]),
    Case("export-out-unwritable", ["export", "-s", "{w}/store.duckdb", "-f", "parquet", "-o", "/proc/nope/x"],
         ["--out", "/proc/nope/x"]),
    Case("export-out-under-a-file", ["export", "-s", "{w}/store.duckdb", "-f", "jsonl", "-o", "{w}/afile/x"],
         ["afile", "not a folder"]),
    Case("status-store-name-too-long", ["status", "-s", "{w}/" + "a" * 300 + ".duckdb"], ["too long", "aaaa…aaa"]),
    Case("export-out-name-too-long", ["export", "-s", "{w}/store.duckdb", "-f", "jsonl", "-o", "{w}/" + "b" * 300],
         ["too long", "bbbb…bbb", "a shorter name"]),
    Case("export-format", ["export", "-s", "{w}/store.duckdb", "-f", "csv", "-o", "{w}/out"], ["--format", "csv"]),
    Case("export-store-random-bytes", ["export", "-s", "{w}/junk.duckdb", "-f", "jsonl", "-o", "{w}/out"],
         ["junk.duckdb"]),
    # report
    Case("report-out-is-a-file", ["report", "-s", "{w}/store.duckdb", "-o", "{w}/afile"], ["--out", "afile"]),
    Case("report-out-unwritable", ["report", "-s", "{w}/store.duckdb", "-o", "/proc/nope/report"],
         ["--out", "/proc/nope/report"]),
    Case("report-store-random-bytes", ["report", "-s", "{w}/junk.duckdb", "-o", "{w}/report"], ["junk.duckdb"]),
    Case("report-store-missing", ["report", "-s", "{w}/missing.duckdb", "-o", "{w}/report"], ["missing.duckdb"]),
    # finetune and compare --checkpoints
    Case("finetune-method", _ft("--method", "ppo"), ["--method", "ppo", "token-dpo"], early=True),
    Case("finetune-steps-0", _ft("--steps", "0"), ["--steps", "0"], early=True),
    Case("finetune-save-every-0", _ft("--save-every", "0"), ["--save-every", "0"], early=True),
    Case("finetune-steps-huge", _ft("--steps", "99999999999999999999"), ["--steps", "at most 1000000"], early=True),
    Case("finetune-held-out-1", _ft("--held-out", "1"), ["--held-out", "1"], early=True),
    Case("finetune-held-out-nan", _ft("--held-out", "nan"), ["--held-out", "nan"], early=True),
    Case("finetune-lr-0", _ft("--lr", "0"), ["--lr", "0"], early=True),
    Case("finetune-beta-negative", _ft("--beta", "-1"), ["--beta", "-1"], early=True),
    # β = 1e30 trained nothing (its gradient overflows) and said nothing; β with sft was recorded and did nothing
    Case("finetune-beta-huge", _ft("--method", "dpo", "--beta", "1e30"), ["--beta must be in (0, 1000]", "1e+30"],
         early=True),
    Case("finetune-beta-with-sft", _ft("--beta", "5"), ["--beta applies to --method dpo and token-dpo only"],
         early=True),
    Case("finetune-out-is-a-file", _ft("--out", "{w}/afile"), ["--out", "afile", "not a folder"], early=True),
    Case("finetune-store-missing", _ft(store="{w}/missing.duckdb"), ["missing.duckdb"], early=True),
    Case("finetune-store-random-bytes", _ft(store="{w}/junk.duckdb"), ["junk.duckdb"], early=True),
    Case("finetune-no-cases", _ft(), ["no cases in", "store.duckdb", "failtrace analyse"], early=True),
    Case("compare-checkpoint-not-a-checkpoint", ["compare", "-s", "{w}/store.duckdb", "--checkpoints", "{m}"],
         ["model", "failtrace_checkpoint.json"]),
    Case("compare-checkpoint-missing", ["compare", "-s", "{w}/store.duckdb", "--checkpoints", "{w}/nope"],
         ["nope", "not a folder"]),
    Case("compare-models-and-checkpoints", ["compare", "-s", "{w}/store.duckdb", "--checkpoints", "{m}",
                                            "--models", "{m}"], ["--models", "--checkpoints"]),
    Case("compare-neither", ["compare", "-s", "{w}/store.duckdb"], ["--models", "--checkpoints"]),
    Case("compare-folders-without-option", ["compare", "-s", "{w}/store.duckdb", "{m}", "{m}"],
         ["say what to compare", "came without an option before them"]),
    # demo and the command line itself
    Case("demo-out-is-a-file", ["demo", "--out", "{w}/afile", "-m", "{x}"], ["--out", "afile"], early=True),
    Case("demo-store-path-is-a-folder", ["demo", "--out", "{w}/demo-with-a-folder", "-m", "{x}"],
         ["--out", "runs.duckdb is a folder"], early=True),
    Case("demo-out-unwritable", ["demo", "--out", "/proc/nope/demo", "-m", "{x}"], ["/proc/nope/demo"], early=True),
    Case("demo-gguf-bad-version", ["demo", "--out", "{w}/demo-out", "-m", "{w}/bad.gguf"], ["bad.gguf"]),
    Case("unknown-command", ["frobnicate"], ["frobnicate"]),
    Case("option-without-value", ["status", "--store"], ["--store"]),
]
if not torch.cuda.is_available():  # on a CPU-only torch, plain ``cuda`` is a bad device too
    CASES.append(Case("collect-device-cuda-on-cpu-torch", _c("--device", "cuda"), ["cuda", "--device cpu"],
                      early=True))


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (stores, model, data): a failed command must change none of them."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _argv(case: Case, work: Path) -> list[str]:
    subs = {"{w}": str(work), "{m}": str(work / "model"), "{x}": str(work / "must-not-load.gguf")}
    out = []
    for arg in case.argv:
        for key, value in subs.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


def test_the_table_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert {c.argv[0] for c in CASES} >= {"attribute", "graph", "collect", "pairs", "status", "export", "demo",
                                          "report"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_error_line(case: Case, work: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(work)
    code = main(_argv(case, work))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for name in case.names:
        assert name in lines[0], (name, lines[0])
    if case.early:  # checked before loading the model: the must-not-load model was never opened
        assert "must-not-load" not in lines[0], lines[0]
    assert _snapshot(work) == before, "a failed command changed a file"
    assert not (tmp_path / "logs").exists(), "a handled error must not write a crash log"


def test_allow_long_lifts_the_context_check(work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model whose config says 16 positions: 40 tokens are refused, and run with --allow-long."""
    short = tmp_path / "short-model"
    short.mkdir()
    for f in (work / "model").iterdir():
        (short / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((short / "config.json").read_text())
    cfg["max_position_embeddings"] = 16
    (short / "config.json").write_text(json.dumps(cfg))
    args = ["attribute", "-p", "b" * 40, "-t", "#70", "-c", "#71", "-q", "-m", str(short), "--json",
            str(tmp_path / "a.json")]
    assert main([*args, "--png", str(tmp_path / "new" / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "40 tokens" in err and "16 tokens" in err and not (tmp_path / "a.json").exists()
    assert not (tmp_path / "new").exists()  # output folders are checked, not created, before the run
    assert main([*args, "--allow-long", "--png", str(tmp_path / "new" / "a.png")]) == 0
    rec = json.loads((tmp_path / "a.json").read_text())
    assert len(rec["tokens"]) == 40
    assert (tmp_path / "new" / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_unexpected_exception_is_one_line_and_a_log(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A bug (here: status_rows raising ZeroDivisionError) prints one line naming a log that holds the traceback."""
    from failtrace.store.store import ResultsStore

    def broken(self: ResultsStore) -> list[object]:
        return [1 / 0]

    monkeypatch.setattr(ResultsStore, "status_rows", broken)
    code = main(["status", "-s", str(work / "store.duckdb")])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 70 and len(lines) == 1 and "Traceback" not in out + err
    assert lines[0].startswith("error: unexpected ZeroDivisionError: division by zero; details in ")
    log = Path(lines[0].rsplit("details in ", 1)[1])
    assert log.parent == tmp_path / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "1 / 0" in text and "status -s" in text


@pytest.mark.parametrize(("make", "start"), [
    (lambda: OSError(errno.ENOSPC, "No space left on device"), "error: the disk is full (No space left"),
    (lambda: duckdb.TransactionException('Failed to commit: Could not write file "s.duckdb.wal": No space left on '
                                         'device'), "error: the disk is full (Failed to commit"),
    (lambda: OSError(errno.EROFS, "Read-only file system"), "error: cannot write or read a file: Read-only"),
])
def test_a_full_or_read_only_disk_is_one_line_not_a_bug(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], make: Any,
                                                       start: str) -> None:
    """Writes that fail for want of space (an open file's write has no file name; DuckDB's has no errno) are the
    machine's state, not failtrace's bug: exit 2 and a line that says so, not 'unexpected' and exit 70."""
    import failtrace.store.overrides as overrides

    def full(*args: object) -> dict[str, str]:
        raise make()

    monkeypatch.setattr(overrides, "set_override", full)
    code = main(["override", "-s", str(work / "store.duckdb"), "--case", "c", "--category", "M-IA", "--reason", "r"])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert err.startswith(start) and "details in " in err


def test_ctrl_c_inside_a_duckdb_query_is_an_interruption(work: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """DuckDB turns Ctrl-C during a query into its own RuntimeError('Query interrupted'): exit 130, not a bug."""
    from failtrace.store.store import ResultsStore

    def interrupted(self: ResultsStore) -> list[object]:
        raise RuntimeError("Query interrupted")

    monkeypatch.setattr(ResultsStore, "status_rows", interrupted)
    assert main(["status", "-s", str(work / "store.duckdb")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("error: interrupted") and len(err.strip().splitlines()) == 1


def test_sigterm_unwinds_like_ctrl_c_and_exits_143(work: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`kill PID` mid-command: the store is closed on the way out (as after Ctrl-C), one line, exit 128 + 15;
    the handler is only the command's (the previous one is back afterwards)."""
    import signal
    import time

    from failtrace.store.store import ResultsStore

    closed: list[bool] = []
    real_close = ResultsStore.close

    def close(self: ResultsStore) -> None:
        closed.append(True)
        real_close(self)

    def killed(self: ResultsStore) -> list[object]:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        return []

    monkeypatch.setattr(ResultsStore, "close", close)
    monkeypatch.setattr(ResultsStore, "status_rows", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["status", "-s", str(work / "store.duckdb")]) == 143
    err = capsys.readouterr().err
    assert err.startswith("error: interrupted") and len(err.strip().splitlines()) == 1 and closed
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_store_path_that_is_not_utf8(work: Path, tmp_path: Path) -> None:
    """A Latin-1 file name reaches Python as lone surrogates; DuckDB cannot open it: one line, no lock left, and a
    crash log can still be written for such a command line (it used to fail with its own traceback)."""
    from failtrace.cli.crashlog import write_crash_log

    odd = Path(os.fsdecode(bytes(tmp_path) + b"/s\xff.duckdb"))
    shutil.copy(work / "store.duckdb", odd)
    res = _run(["-m", "failtrace", "status", "-s", os.fsdecode(bytes(odd))], {"FAILTRACE_LOG_DIR": str(tmp_path)})
    assert res.returncode == 2 and "not UTF-8" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [odd.name]
    log = write_crash_log(ValueError("x"), ["status", "-s", str(odd)])
    assert log is not None and "s\\udcff.duckdb" in log.read_text(encoding="utf-8")


def _run(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           **env_extra}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def test_real_processes(work: Path, tmp_path: Path) -> None:
    """As a user runs it, in fresh interpreters: a bad model file, and a crash (injected)."""
    logs = {"FAILTRACE_LOG_DIR": str(tmp_path / "logs")}
    before = _snapshot(work)
    for module in ("failtrace", "failtrace.cli"):  # `python -m failtrace` is the same command as `failtrace`
        res = _run(["-m", module, "attribute", "-p", "hi", "-m", str(work / "bad.gguf"), "--json",
                    str(tmp_path / "a.json")], logs)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
        assert "bad.gguf" in res.stderr and "Traceback" not in res.stdout + res.stderr
    crash = ("import sys; import failtrace.store.store as s; "
             "s.ResultsStore.status_rows = lambda self: {}['missing']; "
             "from failtrace.cli import _entry; sys.argv[1:] = ['status', '-s', sys.argv[1]]; _entry()")
    res = _run(["-c", crash, str(work / "store.duckdb")], logs)
    assert res.returncode == 70 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: unexpected KeyError: 'missing'; details in ")
    log = Path(res.stderr.strip().rsplit("details in ", 1)[1])
    assert "Traceback (most recent call last)" in log.read_text() and "Traceback" not in res.stdout + res.stderr
    assert _snapshot(work) == before


def test_ctrl_c_while_the_cli_is_still_importing(tmp_path: Path) -> None:
    """A Ctrl-C before the CLI has finished importing (the first few hundred ms) is one line and exit 130.

    The interrupt is injected deterministically: a ``sitecustomize`` makes the import of ``failtrace.cli`` raise
    KeyboardInterrupt, as Python's default SIGINT handler would at that moment. Without the guard in
    ``failtrace._launch`` this prints Python's traceback.
    """
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'failtrace.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, _Interrupt())\n")
    script = Path(sys.executable).parent / "failtrace"  # the console script pip wrote from pyproject.toml
    assert script.exists(), script
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), SRC, os.environ.get("PYTHONPATH", "")]),
           "FAILTRACE_LOG_DIR": str(tmp_path / "logs")}
    for cmd in ([str(script), "status", "-s", str(tmp_path / "none.duckdb")], [sys.executable, "-m", "failtrace"]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 130, (cmd, res.returncode, res.stderr)
        assert res.stderr == "error: interrupted (while starting; nothing was run)\n", res.stderr
        assert res.stdout == "" and not (tmp_path / "logs").exists()


def test_a_closed_stdout_is_not_a_crash(work: Path, tmp_path: Path) -> None:
    """`failtrace status >&-` (stdout closed, so Python's sys.stdout is None) used to exit 70 on `.isatty()`."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "FAILTRACE_LOG_DIR": str(tmp_path / "logs")}
    res = subprocess.run(["sh", "-c", f'"{sys.executable}" -m failtrace status -s "{work / "store.duckdb"}" >&-'],
                         capture_output=False, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stderr == "" and not (tmp_path / "logs").exists()


def test_store_locked_by_another_writer(work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """While another process holds the store for writing, collect and pairs refuse in one line; nothing changes."""
    store = tmp_path / "locked.duckdb"
    store.write_bytes((work / "store.duckdb").read_bytes())
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
                               "sys.stdin.read()", str(store)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        digest = hashlib.sha256(store.read_bytes()).hexdigest()
        for argv in (_c(store=str(store), model=str(work / "must-not-load.gguf")),
                     _p(store=str(store))):
            argv = [a.replace("{w}", str(work)) for a in argv]
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: ") and len(err.splitlines()) == 1
            assert f"in use by process {holder.pid} " in err
            assert str(store) in err and "must-not-load" not in err
        assert hashlib.sha256(store.read_bytes()).hexdigest() == digest
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)


def test_no_arguments_shows_help_and_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert "attribute" in out + err and "collect" in out + err and "Traceback" not in out + err
    assert main(["pairs", "--help"]) == 0
    assert "--min-delta" in capsys.readouterr().out


def test_device_check_on_a_machine_with_two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU branch of check_device, on a (simulated: torch.cuda answers as on a 2-GPU machine) CUDA machine."""
    from failtrace.errors import FailtraceError
    from failtrace.models.checks import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda") == "cuda" and check_device("cuda:1") == "cuda:1" and check_device("cpu") == "cpu"
    with pytest.raises(FailtraceError, match=r"'cuda:2': this machine has 2 CUDA device\(s\); valid: cuda:0, cuda:1"):
        check_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FailtraceError, match="use --device cpu"):
        check_device("cuda:0")
    with pytest.raises(FailtraceError, match="'meta' is not supported"):
        check_device("meta")


@pytest.mark.parametrize("argv, where", [
    (["status", "-s"], "failtrace status"),  # reported by the group's parser: still the sub-command's help
    (["export", "-f", "jsonl"], "failtrace export"),
    (["nosuch"], "failtrace"),
])
def test_usage_errors_point_at_the_right_help(argv: list[str], where: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(f"; see '{where} --help'"), err
    assert ". ;" not in err and ".;" not in err


def test_help_version_and_flags(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """-h is --help; --version/-V print the version; a flag shows no value type (typer 0.29 printed ``<bool>``
    beside each, which invited ``--review true``); the command list wraps whole sentences (docstrings' own line
    breaks left ragged lines)."""
    from failtrace import __version__

    monkeypatch.setenv("COLUMNS", "100")
    for flag in ("--version", "-V"):
        assert main([flag]) == 0
        assert capsys.readouterr().out == f"failtrace {__version__}\n"
    assert main(["serve", "-h"]) == 0
    out = capsys.readouterr().out
    review = next(ln for ln in out.splitlines() if ln.startswith("│ --review"))
    assert "<bool>" not in out and "<int>" in out and "Allow recording reviews" in review, out
    assert main(["-h"]) == 0
    lines = [ln.strip("│ ") for ln in capsys.readouterr().out.splitlines()]
    status = lines.index(next(ln for ln in lines if ln.startswith("status ")))
    assert lines[status].endswith("length-limit"), lines[status]  # filled to the width, not broken at "clean rates"


def test_help_lists_commands_in_the_flows_order(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``failtrace --help`` groups the commands by use, the pipeline in the order it runs (collect before pairs
    before analyse before report), and leaves no registered command outside a group (they used to follow the
    modules' registration order: attribute, collect, pairs, export, status, ...)."""
    import typer

    from failtrace.cli import HELP_PANELS, app

    monkeypatch.setenv("COLUMNS", "100")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [ln.strip("│ ").split()[0] for ln in out.splitlines()
              if ln.startswith("│ ") and not ln.strip("│ ").startswith("-") and ln[2:3] != " "]
    assert listed == [n for names in HELP_PANELS.values() for n in names], listed
    assert set(listed) == set(typer.main.get_command(app).commands)
    headers = [ln.split("─ ")[1].split(" ─")[0] for ln in out.splitlines() if ln.startswith("╭─ ")]
    assert headers == ["Options", *HELP_PANELS]
    assert listed.index("collect") < listed.index("pairs") < listed.index("analyse") < listed.index("report")


@pytest.mark.parametrize("command", ["collect", "pairs", "analyse"])
def test_an_unreachable_ray_address_is_one_line_at_once(work: Path, tmp_path: Path, command: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: ray.init retried an address where nothing listens for minutes, printing Ray's own log lines. A
    device this machine lacks is not refused when the work runs on another cluster's nodes (as analyse did)."""
    store = tmp_path / "store.duckdb"
    store.write_bytes((work / "store.duckdb").read_bytes())
    extra = ["-b", "toy-errors", "-d", str(work / "items.jsonl"), "-m", str(work / "model")] \
        if command == "collect" else []
    code = main([command, "-s", str(store), *extra, "--workers", "1", "--ray-address", "127.0.0.1:1",
                 "--device", "cuda:3", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: could not start or join the Ray cluster at 127.0.0.1:1: nothing answers there")


@pytest.mark.parametrize("address", ["127.0.0.1:-5", "127.0.0.1: 1", "127.0.0.1:0", "127.0.0.1:70000",
                                     "ray://localhost:", "[::1]:x"])
def test_a_ray_address_whose_port_is_no_port_is_one_line(work: Path, tmp_path: Path, address: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a port that is not a number was left to Ray, which took ``-5`` and `` 1`` and retried them for
    minutes (printing its own GCS log lines); ``0`` and ``70000`` were tried as ports too."""
    store = tmp_path / "store.duckdb"
    store.write_bytes((work / "store.duckdb").read_bytes())
    code = main(["pairs", "-s", str(store), "--workers", "1", "--ray-address", address, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --ray-address {address!r} has no valid port"), err


def test_addresses_of_other_schemes_are_left_to_ray() -> None:
    """The port check is for HOST:PORT and ray://HOST:PORT; anyscale://NAME has no port and Ray's client builder
    answers it (the first port check refused it as "no valid port")."""
    from failtrace.scale.pool import check_reachable

    assert check_reachable("anyscale://my-cluster") is None and check_reachable("auto") is None


@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b""], ids=["http", "silent"])
def test_a_ray_address_where_something_else_answers_is_one_line(work: Path, tmp_path: Path, reply: bytes,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a port where a web server (or a silent service) listens passed the reachability check, and ray.init
    then retried it until Ctrl-C, printing Ray's GCS log. A Ray cluster speaks gRPC (HTTP/2); this one does not."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                if reply:
                    conn.sendall(reply)
                else:
                    conn.recv(64)  # says nothing: the client's timeout ends it

    threading.Thread(target=answer, daemon=True).start()
    store = tmp_path / "store.duckdb"
    store.write_bytes((work / "store.duckdb").read_bytes())
    try:
        code = main(["pairs", "-s", str(store), "--workers", "1", "--ray-address", f"127.0.0.1:{port}",
                     "--no-progress"])
    finally:
        listener.close()
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: could not join a Ray cluster at 127.0.0.1:{port}: something answers there, "
                          "but not as Ray's cluster service"), err


def test_a_running_explorer_is_named_as_the_holder(work: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only `failtrace serve` keeps the store open, and DuckDB then lets no other process write it; the
    writer's error said only "in use by process N (python3.11)". It now says the explorer holds it and what to do."""
    store = tmp_path / "served.duckdb"
    store.write_bytes((work / "store.duckdb").read_bytes())
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "failtrace", "serve", "--store", str(store), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert server.stdout is not None and "failtrace explorer on http://" in server.stdout.readline()
        digest = hashlib.sha256(store.read_bytes()).hexdigest()
        assert main([a.replace("{w}", str(work)) for a in _p(store=str(store))]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"error: results store {store} is held by the explorer "
                                                             f"(`failtrace serve`, process {server.pid})")
        assert "stop the explorer, or serve a copy of the store" in err
        assert hashlib.sha256(store.read_bytes()).hexdigest() == digest
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_status_beside_a_reviewing_explorer_says_who_holds_the_store(work: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --review` writes the store, so status reads a snapshot; its title said "a run is writing it"."""
    store = tmp_path / "reviewed.duckdb"
    store.write_bytes((work / "store.duckdb").read_bytes())
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "failtrace", "serve", "--review", "--store", str(store),
                               "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert server.stdout is not None and "failtrace explorer on http://" in server.stdout.readline()
        assert main(["status", "--store", str(store)]) == 0
        said = " ".join(capsys.readouterr().out.split())
        assert f"(snapshot: the explorer in review mode, process {server.pid}, holds it)" in said, said
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_an_explorer_beside_a_writer_says_it_shows_a_snapshot(work: Path, tmp_path: Path) -> None:
    """A read-only `serve` of a store another process writes (here a reviewing explorer) read a copy taken at start
    and said nothing: reviews written meanwhile never showed. Its first line and /api/meta now say so."""
    import urllib.request

    store = tmp_path / "reviewed.duckdb"
    store.write_bytes((work / "store.duckdb").read_bytes())
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [sys.executable, "-m", "failtrace", "serve", "--store", str(store), "--port", "0"]
    writer = subprocess.Popen(args + ["--review"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env)
    reader = None
    try:
        assert writer.stdout is not None and "failtrace explorer on http://" in writer.stdout.readline()
        reader = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert reader.stdout is not None
        line = reader.stdout.readline()
        note = f"snapshot: the explorer in review mode, process {writer.pid}, holds it"
        assert f"read-only; {note}: later writes are not shown until the explorer is started again)" in line, line
        url = line.split(" on ")[1].split()[0]
        for _ in range(200):  # the line is printed just before uvicorn listens
            try:
                meta = json.loads(urllib.request.urlopen(url + "/api/meta", timeout=30).read())
                break
            except OSError:
                time.sleep(0.1)
        assert meta["snapshot"] == note and meta["review"] is False
    finally:
        for proc in (writer, reader):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)


def test_every_model_option_says_the_same() -> None:
    """--model takes the same kinds of names in every command, so every command's help says it in the same words
    (collect said "Hub id, ..., or the bundled default", demo "Model (default: the bundled SmolLM2)")."""
    import typer

    from failtrace.cli import app
    from failtrace.cli.options import MODEL_HELP

    helps = {name: next((p.help for p in cmd.params if "--model" in getattr(p, "opts", ())), None)
             for name, cmd in typer.main.get_command(app).commands.items()}
    with_model = {name for name, text in helps.items() if text is not None}
    assert {"collect", "demo", "attribute", "graph", "finetune"} <= with_model
    assert {name: helps[name] for name in with_model} == {name: MODEL_HELP for name in with_model}


def test_a_missing_store_points_at_the_demos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """After `make demo` the store is out/runs.duckdb, while the README's tour writes --store runs.duckdb and every
    command defaults to failtrace.duckdb: the missing store's line names the demo's, when there is one here."""
    monkeypatch.chdir(tmp_path)
    assert main(["status", "--store", "runs.duckdb"]) == 2
    assert "out/runs.duckdb" not in capsys.readouterr().err  # no demo store here: no hint
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "runs.duckdb").write_bytes(b"")  # its existence is what the hint checks
    for argv in (["status", "--store", "runs.duckdb"], ["show"], ["serve", "--store", "x.duckdb"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.endswith("--store out/runs.duckdb)"), (argv, err)


def test_a_long_load_warning_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A data file's warning of 279 characters (tau-bench's failed-episode count) was wrapped at 200 columns, so a
    refused command printed three lines where one warning and one error were meant."""
    from failtrace.cli.pipeline import _warn_problems

    problem = "file.json: " + "word " * 60 + "[not markup]"
    _warn_problems([problem, "short"])
    assert capsys.readouterr().err == f"warning: {problem}\nwarning: short\n"


def test_ctrl_c_while_python_exits_is_no_traceback(tmp_path: Path) -> None:
    """A Ctrl-C (or SIGTERM) after the command has returned, while Python runs libraries' exit hooks (Ray stops its
    cluster from one; threads are joined), printed Python's ``Exception ignored in atexit callback`` traceback (seen
    with a third Ctrl-C on a Ray run). Now it ends the process at once: one line, exit 130 (143)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(  # an exit hook that takes a while, as Ray's does
        "import atexit, sys, time\n"
        "def _slow():\n"
        "    sys.stderr.write('exit hook\\n'); sys.stderr.flush(); time.sleep(60)\n"
        "atexit.register(_slow)\n")
    script = Path(sys.executable).parent / "failtrace"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), SRC, os.environ.get("PYTHONPATH", "")]),
           "FAILTRACE_LOG_DIR": str(tmp_path / "logs")}
    for cmd, sig, code in (([str(script)], signal.SIGINT, 130), ([str(script)], signal.SIGTERM, 143),
                           ([sys.executable, "-m", "failtrace.cli"], signal.SIGINT, 130)):
        proc = subprocess.Popen([*cmd, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        assert proc.stderr is not None
        assert proc.stderr.readline() == "exit hook\n"  # the command is done; Python is running its exit hooks
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == code, (sig, proc.returncode, err)
        assert err == "error: interrupted while exiting; the command itself had finished (its exit code: 0)\n", err
        assert "Usage" in out and not (tmp_path / "logs").exists()
