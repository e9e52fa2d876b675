"""Crash safety: SIGKILL real collection and pair runs mid-run, resume, and compare with an uninterrupted run.

Each run is a separate Python process writing the store (the toy model, and a checker that sleeps a little so that
kills land mid-run: during generation, during checks, around commits). After the kills and one resume, the store is
compared row by row with a store written by the same code with the same settings and never interrupted: the same
rows in every table (no item lost, none twice) with the same generations, verdicts and pairs. Only timing columns
(``seconds*``) and timestamps (``created_at``) may differ. With ``--batch-size 4`` a kill loses up to the 4 items of
the batch in flight; the resume regenerates that whole batch (batches are formed over all items, not over the ones
left), so the records still equal the uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from failtrace.store import TABLES, open_store
from failtrace.store.records import KEYS

SRC = str(Path(__file__).resolve().parents[1] / "src")
N_ITEMS = 16
# "d" occurs in 5 of the 16 toy completions: passes and failures, and pairs of several statuses (clean, weak,
# unbounded), so that the comparison covers every kind of record.
NEEDLE = "d"

# One process loads torch and the toy model once, then forks a fresh child per run (a real process with its own
# DuckDB connection, killed with a real SIGKILL): loading the model in every run would cost ~15 s each. The zygote
# runs with OMP_NUM_THREADS=1 from its start, so no OpenMP thread pool exists when it forks.
_ZYGOTE = """
import os, sys
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads(1)
from failtrace_testkit.toy import ToyBenchmark, toy_items, toy_loaded
from failtrace.failures.collect import collect
from failtrace.failures.pairs import PairSettings, find_pairs
from failtrace.store import open_store

from failtrace.benchmarks.base import Item

models = {{"f32": toy_loaded(0), "bf16": toy_loaded(0, dtype="bfloat16")}}
data = {{"f32": toy_items({n}, needle={needle!r}),
        # prompts of many lengths: batches need padding, and bfloat16 rounding makes the grouping matter
        "bf16": [Item(id=f"v{{i:02d}}", benchmark="toy", prompt=f"Question {{i}}: " + "say " * (i * 7 % 13) + "x",
                      reference={{"needle": {needle!r}}}) for i in range({n})]}}


def run(stages, path, batch, delay, variant):
    bench = ToyBenchmark(mode="contains", max_new_tokens=16, delay=delay)
    lm = models[variant]
    with open_store(path) as st:
        print("open", flush=True)
        if "collect" in stages:
            collect(st, bench, data[variant], lm, batch_size=batch, progress=False,
                    on_item=lambda it, gen, v: print("item", it.id, flush=True))
        if "pairs" in stages:
            find_pairs(st, PairSettings(top_k=4, max_positions=6), models={{lm.name: lm}},
                       benchmarks={{"toy": bench}}, progress=False,
                       on_pair=lambda item_id, res: print("pair", item_id, flush=True))
    print("finished", flush=True)


print("ready", flush=True)
for line in sys.stdin:
    stages, path, batch, delay, variant = line.split()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.read(go_r, 1)  # start once the parent has announced the pid
        try:
            run(stages.split(","), path, int(batch), float(delay), variant)
            code = 0
        except BaseException as exc:
            print("error", repr(exc), flush=True)
            code = 1
        os._exit(code)
    os.close(go_r)
    print("pid", pid, flush=True)
    os.write(go_w, b"x")
    os.close(go_w)
    _, status = os.waitpid(pid, 0)
    print("exit", os.waitstatus_to_exitcode(status), flush=True)
"""


class Zygote:
    """Starts runs (``collect``/``pairs`` in a forked child) and lets the test kill them at chosen moments."""

    def __init__(self, folder: Path) -> None:
        script = folder / "zygote.py"
        script.write_text(_ZYGOTE.format(src=SRC, n=N_ITEMS, needle=NEEDLE))
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the zygote process died"
        return line.strip()

    def _start(self, stages: str, store: Path, batch: int, delay: float) -> int:
        assert self.proc.stdin is not None
        variant = "f32" if batch == 1 else "bf16"  # batched runs: bfloat16 toy, prompts of many lengths
        self.proc.stdin.write(f"{stages} {store} {batch} {delay} {variant}\n")
        self.proc.stdin.flush()
        first = self._line()
        assert first.startswith("pid "), first
        return int(first.split()[1])

    def finish(self, stages: str, store: Path, batch: int = 1, delay: float = 0.0) -> list[str]:
        """Run to the end; returns the progress lines."""
        self._start(stages, store, batch, delay)
        lines = []
        while not (line := self._line()).startswith("exit"):
            lines.append(line)
        assert line == "exit 0" and lines[-1] == "finished", lines[-3:]
        return lines

    def kill_after(self, stages: str, store: Path, lines: int, jitter: float, batch: int = 1,
                   delay: float = 0.03) -> int:
        """Start a run, read ``lines`` progress lines (0: until the store is open), wait ``jitter`` s, SIGKILL it.

        Returns the progress lines read (each one reports a committed record).
        """
        pid = self._start(stages, store, batch, delay)
        seen = 0
        while True:
            line = self._line()
            assert not line.startswith(("finished", "exit", "error")), f"the run ended before the kill: {line}"
            seen += line.startswith(("item", "pair"))
            if seen >= lines and (lines or line == "open"):
                break
        time.sleep(jitter)
        os.kill(pid, signal.SIGKILL)
        while not (line := self._line()).startswith("exit"):
            seen += line.startswith(("item", "pair"))
        assert line == f"exit {-signal.SIGKILL}", line
        return seen

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Any:
    z = Zygote(tmp_path_factory.mktemp("crash"))
    yield z
    z.close()


_VOLATILE = {"created_at", "seconds", "seconds_prefix", "seconds_rollouts", "seconds_check"}


def _table(store: Path, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` in key order, without timing columns and timestamps."""
    with open_store(store, read_only=True) as st:
        rows = st._rows(f"SELECT * FROM {table} ORDER BY {', '.join(KEYS[table])}")
    return [{k: v for k, v in r.items() if k not in _VOLATILE} for r in rows]


def _compare(crashed: Path, reference: Path) -> dict[str, int]:
    """Assert both stores hold the same rows; returns rows per table."""
    sizes = {}
    for table in TABLES:
        got, want = _table(crashed, table), _table(reference, table)
        keys = [tuple(r[k] for k in KEYS[table]) for r in got]
        assert len(set(keys)) == len(keys), f"{table}: a key appears twice"
        want_keys = [tuple(r[k] for k in KEYS[table]) for r in want]
        assert keys == want_keys, f"{table}: lost {set(want_keys) - set(keys)}, extra {set(keys) - set(want_keys)}"
        if table == "runs":  # library versions and settings must match too; only the timestamp may differ
            got = [{**r, "versions": {**r["versions"], "platform": None}} for r in got]
            want = [{**r, "versions": {**r["versions"], "platform": None}} for r in want]
        for g, w in zip(got, want, strict=True):
            assert g == w, f"{table} row {tuple(g[k] for k in KEYS[table])} differs: {g} != {w}"
        sizes[table] = len(got)
    return sizes


def _committed(store: Path) -> tuple[int, int]:
    """(generations, pairs) committed so far; generations and verdicts are written together: equal counts."""
    with open_store(store, read_only=True) as st:
        counts = st.counts()
    assert counts["generations"] == counts["verdicts"]
    return counts["generations"], counts["pairs"]


@pytest.fixture(scope="module")
def reference(zygote: Zygote, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Uninterrupted runs (collect, then pairs) to compare against, for batch sizes 1 and 4."""
    out = {}
    for batch in (1, 4):
        out[batch] = tmp_path_factory.mktemp(f"ref{batch}") / "ref.duckdb"
        zygote.finish("collect,pairs", out[batch], batch)
    return out


@pytest.mark.slow
def test_sigkill_during_collect_and_pairs_loses_and_changes_nothing(zygote: Zygote, reference: dict[int, Path],
                                                                    tmp_path: Path) -> None:
    store = tmp_path / "crash.duckdb"
    # collect: killed right after opening the store, then twice more after a few items (with jitter)
    last = 0
    for lines, jitter in ((0, 0.0), (2, 0.0), (5, 0.02)):
        seen = zygote.kill_after("collect", store, lines, jitter)
        generated, _ = _committed(store)
        # every item reported as committed is there; at most one more (committed, killed before it was reported)
        assert last + seen <= generated <= last + seen + 1
        last = generated
    assert 7 <= last < N_ITEMS, "the kills should have interrupted collection midway"
    out = zygote.finish("collect", store)
    assert sum(x.startswith("item") for x in out) == N_ITEMS - last  # the resume did only the missing items

    # pairs: killed twice after a few failures, then resumed
    last = 0
    for lines, jitter in ((1, 0.0), (3, 0.05)):
        seen = zygote.kill_after("pairs", store, lines, jitter)
        _, paired = _committed(store)
        assert last + seen <= paired <= last + seen + 1
        last = paired
    assert last >= 4
    out = zygote.finish("pairs", store)
    sizes = _compare(store, reference[1])
    assert sum(x.startswith("pair") for x in out) == sizes["pairs"] - last
    assert sizes["generations"] == N_ITEMS and sizes["runs"] == 2 and 0 < sizes["pairs"] < N_ITEMS
    statuses = {r["status"] for r in _table(store, "pairs")}
    assert {"clean", "weak_preference", "unbounded"} <= statuses  # every kind of record was compared


@pytest.mark.slow
def test_sigkill_during_batched_collect_resumes_to_the_same_records(zygote: Zygote, reference: dict[int, Path],
                                                                    tmp_path: Path) -> None:
    store = tmp_path / "crash4.duckdb"
    last = 0
    for lines, jitter in ((1, 0.0), (2, 0.02)):  # mid-batch: after one or two of a batch's 4 commits
        seen = zygote.kill_after("collect", store, lines, jitter, batch=4, delay=0.05)
        generated, _ = _committed(store)
        assert last + seen <= generated <= last + seen + 1
        last = generated
    assert 0 < last < N_ITEMS and last % 4 != 0, f"the kills should land mid-batch ({last} committed)"
    zygote.finish("collect,pairs", store, batch=4)
    sizes = _compare(store, reference[4])
    assert sizes["generations"] == N_ITEMS and sizes["pairs"] > 0
