"""``analyse`` on a local Ray cluster (2 CPU workers) against the serial stage, with a worker and the driver killed.

A toy store with clean pairs (tests/cases_toy.py) is copied before anything is analysed; the serial stage analyses
one copy in this process, the Ray stage the others. Every stored field of every case must be the same, case by case
(timings and commit times aside): ``cases``, ``case_methods`` and ``case_graphs`` rows, and the analysis run ids.

Floats, arrays included, are compared EXACTLY (no tolerance): both sides run the same code on the same weights (the
workers load the model folder the serial side loads) with torch on one thread (``one_thread`` here,
``torch.set_num_threads(1)`` in each worker), so the CPU kernels do the same operations in the same order and the
results are bit-identical; a difference would mean the worker computed something else (another model, other
settings, another order of methods), which is what the test is there to catch.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ray  # a dev dependency (pyproject.toml): a broken install fails here, it is never skipped

from failtrace.cases.analyse import analyse
from failtrace.cases.settings import CaseSettings
from failtrace.scale import WorkerModel, WorkerPool, analyse_on_ray, ensure_ray
from failtrace.store import open_store
from failtrace_testkit.toy import one_thread

from cases_toy import build_toy_store

pytestmark = pytest.mark.slow
SRC = str(Path(__file__).resolve().parents[1] / "src")
POOL = "ft-test-analyse-pool"
SETTINGS = CaseSettings(ig_steps=8)
_TIMING = {"seconds", "created_at"}  # wall-clock fields: the only ones allowed to differ
_KEYS = {"cases": "case_id", "case_methods": "case_id, method", "case_graphs": "case_id"}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of the case tables, ordered by key, without timings; plus the analysis runs' ids."""
    with open_store(path, read_only=True) as st:
        out = {table: [{k: v for k, v in r.items() if k not in _TIMING}
                       for r in st._rows(f"SELECT * FROM {table} ORDER BY {key}")] for table, key in _KEYS.items()}
        out["analysis_runs"] = [{"run_id": r.run_id, "parent": r.parent_run_id} for r in st.runs("analyse")]
    return out


def _no_duplicates(path: Path) -> None:
    with open_store(path, read_only=True) as st:
        for table, key in _KEYS.items():
            n, distinct = st.con.execute(f"SELECT count(*), count(DISTINCT ({key})) FROM {table}").fetchone()
            assert n == distinct, table


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The toy store (not analysed), the serial analysis of a copy, a 2-CPU Ray cluster and a named pool of 2."""
    root = tmp_path_factory.mktemp("scale-analyse")
    with one_thread():
        info = build_toy_store(root / "base.duckdb", root / "model", n_items=12)
        assert len(info["clean"]) >= 5
        shutil.copy(root / "base.duckdb", root / "serial.duckdb")
        with open_store(root / "serial.duckdb") as st:
            serial = analyse(st, SETTINGS, progress=False)
    assert serial.analysed == len(info["clean"]) and not serial.errors
    assert ensure_ray(2)  # a local cluster as the CLI starts it
    pool = WorkerPool(WorkerModel(str(root / "model")), 2, name=POOL)
    yield {"root": root, "serial": root / "serial.duckdb", "pool": pool, "n": len(info["clean"]),
           "model": root / "model"}
    pool.close(force=True)
    ray.shutdown()


def _copy(cluster: Any, name: str) -> Path:
    path = cluster["root"] / f"{name}.duckdb"
    shutil.copy(cluster["root"] / "base.duckdb", path)
    return path


def _assert_same_as_serial(path: Path, cluster: Any) -> None:
    ref, got = _rows(cluster["serial"]), _rows(path)
    assert len(ref["cases"]) == cluster["n"] and len(ref["case_methods"]) == cluster["n"] * len(SETTINGS.methods)
    for table in ref:
        assert len(got[table]) == len(ref[table]), table
        for a, b in zip(ref[table], got[table], strict=True):
            assert a == b, (table, a.get("case_id"), [k for k in a if a[k] != b.get(k)])


def test_ray_cases_equal_the_serial_cases_field_by_field(cluster: Any) -> None:
    store = _copy(cluster, "ray")
    with open_store(store) as st:
        s = analyse_on_ray(st, SETTINGS, 2, pool=cluster["pool"], progress=False)
    assert s.analysed == cluster["n"] and s.skipped == 0 and not s.errors
    _assert_same_as_serial(store, cluster)
    with open_store(store) as st:
        run = st.runs("analyse")[0]
        workers = run.settings["scale"][0]["worker_info"]
        assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
        # each worker's own niceness (Ray's default +15 unless RAY_worker_niceness says otherwise, on top of the
        # niceness this test runs at, at most 19: never the driver's own), and as many torch threads as the CPUs
        # it was given (1 here), OMP_NUM_THREADS likewise
        nice = min(19, os.nice(0) + int(os.environ.get("RAY_worker_niceness", 15)))
        assert [(w["niceness"], w["torch_threads"], w["omp_num_threads"]) for w in workers] == [(nice, 1, "1")] * 2
        again = analyse_on_ray(st, SETTINGS, 2, pool=cluster["pool"], progress=False)  # resumable: nothing to do
    assert again.analysed == 0 and again.skipped == cluster["n"]
    with open_store(store) as st:  # a serial rerun finds the Ray cases under the same ids, and the reverse
        assert analyse(st, SETTINGS, progress=False).skipped == cluster["n"]


def test_a_worker_killed_mid_analyse_still_gives_every_case(cluster: Any) -> None:
    store = _copy(cluster, "killed")
    pool, killed = cluster["pool"], []

    def kill_one(case: Any) -> None:
        if not killed and pool.busy_actors():
            killed.append(pool.busy_actors()[0])
            ray.kill(killed[0], no_restart=False)  # Ray restarts it; its in-flight cases go to the other worker

    retried = pool.retried
    with open_store(store) as st:
        s = analyse_on_ray(st, SETTINGS, 2, pool=pool, progress=False, on_case=kill_one)
    assert killed and pool.retried > retried
    assert s.analysed == cluster["n"] and not s.errors
    _no_duplicates(store)
    _assert_same_as_serial(store, cluster)


_DRIVER = """
import sys, time
sys.path.insert(0, {src!r})
import ray
from failtrace.cases.settings import CaseSettings
from failtrace.scale import WorkerModel, WorkerPool, analyse_on_ray
from failtrace.store import open_store
ray.init(address={address!r}, namespace="failtrace", log_to_driver=False)
pool = WorkerPool(WorkerModel({model!r}), 2, name={pool!r})  # attaches to the running named workers
pause_after, seen = int(sys.argv[1]), []


def on_case(case):  # called right after the case's transaction committed
    seen.append(case.case_id)
    print("case", case.case_id, flush=True)
    if len(seen) == pause_after:  # hold still here until the test's SIGKILL: exactly this many are committed
        time.sleep(300)


with open_store({store!r}) as st:
    analyse_on_ray(st, CaseSettings(ig_steps=8), 2, pool=pool, progress=False, on_case=on_case)
print("finished", flush=True)
"""


def _driver(script: Path, kill_after: int | None) -> int:
    """Run the driver; SIGKILL it right after its ``kill_after``-th committed case (it waits there, so no more
    are committed, whatever the load); return the cases it printed."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    err = script.with_suffix(f".{kill_after or 0}.err")
    with err.open("w") as err_fh:
        proc = subprocess.Popen([sys.executable, str(script), str(kill_after or 0)], stdout=subprocess.PIPE,
                                stderr=err_fh, text=True, env=env)
    assert proc.stdout is not None
    cases = 0
    for line in proc.stdout:
        cases += line.startswith("case ")
        if kill_after and cases == kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    code = proc.wait(timeout=300)
    assert code == (-signal.SIGKILL if kill_after else 0), err.read_text()[-3000:]
    return cases


def test_driver_sigkill_and_rerun_lose_and_duplicate_no_case(cluster: Any) -> None:
    store = _copy(cluster, "driver")
    # the previous test killed a worker and Ray may still be restarting it: the new driver's pool waits for it
    # (ActorUnavailableError is retried, scale/pool.py), it does not fail
    script = cluster["root"] / "driver.py"
    script.write_text(_DRIVER.format(src=SRC, address=ray.get_runtime_context().gcs_address, pool=POOL,
                                     model=str(cluster["model"]), store=str(store)))
    _driver(script, 2)
    with open_store(store, read_only=True) as st:
        assert st.con.execute("SELECT count(*) FROM cases").fetchone()[0] == 2  # the other cases were in flight
    assert _driver(script, None) == cluster["n"] - 2  # the rerun did only what had no row yet
    _no_duplicates(store)
    _assert_same_as_serial(store, cluster)


def test_cli_analyse_with_workers_joins_the_cluster_and_equals_serial(cluster: Any,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``failtrace analyse --workers 2 --ray-address ...``: the command starts its own pool and stops it. Last in
    the file: the named pool is stopped first, so the cluster's 2 CPUs are free for the command's workers."""
    from failtrace.cli import main

    cluster["pool"].close(force=True)
    store = _copy(cluster, "cli")
    address = ray.get_runtime_context().gcs_address
    assert main(["analyse", "-s", str(store), "--ig-steps", "8", "--workers", "2", "--ray-address", address,
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{cluster['n']} analysed now" in out and "on 2 Ray workers" in out
    _assert_same_as_serial(store, cluster)
    with open_store(store, read_only=True) as st:
        scale = st.runs("analyse")[0].settings["scale"][0]
    assert scale["address"] == address and scale["workers"] == 2
    deadline = time.monotonic() + 60  # the command stopped its workers: their CPUs come back to the cluster
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
