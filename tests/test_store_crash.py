"""Crash safety: SIGKILL real collection and pair runs at varied moments, rerun, and check the store.

Each run is a separate Python process writing the same store (the toy model and a checker that sleeps a little, so
that kills land mid-run: during generation, during checks, and around commits). After every kill the store must
open, hold each finished item exactly once, and a rerun must complete the rest without duplicates; the final
records must equal what an uninterrupted run produces.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate
from failtrace.testing.toy import one_thread, toy_items, toy_loaded
from failtrace.models.chat import apply_chat_template
from failtrace.store import open_store

SRC = str(Path(__file__).resolve().parents[1] / "src")
N_ITEMS = 16

_WORKER = """
import sys
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads(1)
from failtrace.testing.toy import ToyBenchmark, toy_items, toy_loaded
from failtrace.failures.collect import collect
from failtrace.failures.pairs import PairSettings, find_pairs
from failtrace.store import open_store

stage, path = sys.argv[1], sys.argv[2]
lm = toy_loaded(0)
bench = ToyBenchmark(mode="contains", max_new_tokens=16, delay=0.03)
with open_store(path) as st:
    print("open", flush=True)
    if stage == "collect":
        collect(st, bench, toy_items({n}, needle="zz"), lm, progress=False,
                on_item=lambda it, gen, v: print("item", it.id, flush=True))
    else:
        find_pairs(st, PairSettings(top_k=2, max_positions=2), models={{lm.name: lm}}, benchmarks={{"toy": bench}},
                   progress=False, on_pair=lambda item_id, res: print("pair", item_id, flush=True))
print("finished", flush=True)
"""


def _spawn(script: Path, stage: str, store: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(script), stage, str(store)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def _kill_after(proc: subprocess.Popen[str], lines: int, jitter: float) -> int:
    """Read ``lines`` progress lines (``lines=0``: none at all), wait ``jitter`` s, SIGKILL; return lines read."""
    seen = 0
    assert proc.stdout is not None
    while seen < lines:
        line = proc.stdout.readline()
        if not line or line.startswith("finished"):
            break
        if line.startswith(("item", "pair")):
            seen += 1
    time.sleep(jitter)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return seen


def _check_store(store: Path, stage: str) -> tuple[int, int]:
    """The store opens; returns (generations, pairs), asserting no item appears twice."""
    with open_store(store) as st:
        counts = st.counts()
        for table, key in (("generations", "run_id, item_id"), ("verdicts", "run_id, item_id"),
                           ("pairs", "pair_run_id, item_id")):
            dup = st.con.execute(f"SELECT count(*) FROM (SELECT {key} FROM {table} GROUP BY {key} "
                                 f"HAVING count(*) > 1)").fetchone()[0]
            assert dup == 0, f"duplicate rows in {table} after killing {stage}"
        assert counts["generations"] == counts["verdicts"]  # one transaction: both or neither
        return counts["generations"], counts["pairs"]


@pytest.mark.slow
def test_sigkill_during_collect_and_pairs_loses_nothing_committed(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(src=SRC, n=N_ITEMS))
    store = tmp_path / "crash.duckdb"
    rng = random.Random(1234)

    # collect: killed while importing/creating the store, then after varied numbers of items with jitter
    last = 0
    for lines, jitter in ((0, rng.uniform(0.5, 3.0)), (2, 0.0), (3, rng.uniform(0.0, 0.05))):
        proc = _spawn(script, "collect", store)
        _kill_after(proc, lines, jitter)
        if store.exists():
            generated, _ = _check_store(store, "collect")
            assert generated >= last  # committed work is never lost
            last = generated
    assert 0 < last < N_ITEMS, "the kills should have interrupted collection midway"
    proc = _spawn(script, "collect", store)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "finished" in out
    assert out.count("item ") == N_ITEMS - last  # the rerun did only the missing items
    generated, _ = _check_store(store, "collect")
    assert generated == N_ITEMS

    # pairs: killed after a few failures, then resumed
    with open_store(store) as st:
        run_id = st.runs("collect")[0].run_id
        failures = len(st.results(run_id, status="fail"))
    assert failures == N_ITEMS
    for lines, jitter in ((2, rng.uniform(0.0, 0.03)),):
        proc = _spawn(script, "pairs", store)
        _kill_after(proc, lines, jitter)
        _check_store(store, "pairs")
    proc = _spawn(script, "pairs", store)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "finished" in out
    _, pairs = _check_store(store, "pairs")
    assert pairs == failures

    # the records equal an uninterrupted run's
    with one_thread():
        lm = toy_loaded(0)
        eos = eos_token_ids(lm.model, lm.tokenizer)
        with open_store(store, read_only=True) as st:
            rows = {r["item_id"]: r for r in st.results(run_id)}
            assert st.counts()["runs"] == 2 and st.counts()["run_items"] == N_ITEMS
        for it in toy_items(N_ITEMS, needle="zz"):
            prompt = apply_chat_template(lm.tokenizer, it.prompt)
            expected = greedy_generate(lm.model, [prompt], 16, eos)[0]
            assert rows[it.id]["token_ids"] == expected.token_ids
            text = decode_completion(lm.tokenizer, expected.token_ids, eos)
            assert rows[it.id]["completion"] == text
            assert rows[it.id]["status"] == ("pass" if "zz" in text else "fail")
