"""The synthetic stores the perf scripts build by SQL stay stores of the current schema: every case they write reads
back through the library (a schema change had broken perf/bench_serve.py's INSERTs unnoticed, as no test ran it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from failtrace.store import open_store
from failtrace.store.cases import load_cases

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, ROOT / "perf" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_serve_store_reads_back_case_by_case(tmp_path: Path) -> None:
    bench = _script("bench_serve")
    path = tmp_path / "synth.duckdb"
    first = bench.build(path, items=60, tokens=8)
    with open_store(path, read_only=True) as st:
        cases = {c.case_id: c for c in load_cases(st)}
        rows = st.con.execute("SELECT count(*) FROM comparisons").fetchone()[0]
    # i in range(60) with i % 3 != 0 and i odd: 20 cases, plus the one 16k-token case
    assert len(cases) == 21 and first == min(cases)
    short = [c for c in cases.values() if len(c.tokens) == 8]
    assert len(short) == 20 and all(len(c.methods["attnlrp"].input_relevance) == 8 for c in short)
    long = next(c for c in cases.values() if len(c.tokens) == 16_000)
    assert not long.methods["attnlrp"].tops_recorded  # columns the script leaves out read as "not recorded"
    assert rows > 0
