"""collect and pairs on a local Ray cluster (2 CPU workers) against the serial path, with workers and drivers killed.

One module-scoped cluster and one named pool of 2 workers (each loads the toy model from a saved folder) pay Ray's
start-up once. The reference is the serial stage run in this process on the same folder: every store row must be the
same item by item (timings and commit times aside), whatever the completion order, after a worker is killed mid-run,
and after the driver is SIGKILLed and rerun. Tests run in file order: the poisoned-item tests, which leave workers
restarting, come after those runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ray  # a dev dependency (pyproject.toml): a broken install fails here, it is never skipped

from failtrace.benchmarks.base import Item, Verdict
from failtrace.errors import FailtraceError
from failtrace.failures.collect import collect
from failtrace.failures.pairs import PairSettings, find_pairs
from failtrace.models.loading import load_model
from failtrace.scale import WorkerModel, WorkerPool, collect_on_ray, pairs_on_ray
from failtrace.store import open_store
from failtrace_testkit.toy import OptionedToy, ToyBenchmark, one_thread, save_toy_model, toy_items

pytestmark = pytest.mark.slow
SRC = str(Path(__file__).resolve().parents[1] / "src")
N_ITEMS = 12
SETTINGS = PairSettings(top_k=3, max_positions=3)
POOL = "ft-test-pool"
_TIMING = {"seconds", "seconds_prefix", "seconds_rollouts", "seconds_check", "created_at"}


class PoisonBenchmark(ToyBenchmark):
    """The toy checker, except that checking item ``poison`` kills the worker process (an OOM-like death)."""

    def check(self, item: Item, completion: str) -> Verdict:
        if item.id == "poison":
            os._exit(1)
        return super().check(item, completion)


def _bench(delay: float = 0.0) -> ToyBenchmark:
    return ToyBenchmark(mode="contains", max_new_tokens=12, delay=delay)


def _rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    """generations, verdicts and pairs rows keyed and sorted by item, without timings."""
    with open_store(path) as st:
        out = {}
        for table in ("generations", "verdicts", "pairs"):
            rows = st._rows(f"SELECT * FROM {table} ORDER BY item_id")
            out[table] = [{k: v for k, v in r.items() if k not in _TIMING} for r in rows]
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A local 2-CPU Ray cluster, the saved toy model, a named pool of 2 workers and the serial reference store."""
    root = tmp_path_factory.mktemp("scale")
    folder = save_toy_model(root / "toy")
    serial = root / "serial.duckdb"
    with one_thread(), open_store(serial) as st:
        lm = load_model(str(folder), progress=False)
        collect(st, _bench(), toy_items(N_ITEMS), lm, progress=False)
        find_pairs(st, SETTINGS, models={lm.name: lm}, benchmarks={"toy": _bench()}, progress=False)
    kept = signal.getsignal(signal.SIGTERM)  # ray.init installs its own; the tests after these get pytest's back
    ray.init(num_cpus=2, include_dashboard=False, namespace="failtrace", log_to_driver=False)
    pool = WorkerPool(WorkerModel(str(folder)), 2, name=POOL)
    try:
        yield {"root": root, "folder": folder, "serial": serial, "pool": pool}
        pool.close(force=True)
        ray.shutdown()
    finally:
        signal.signal(signal.SIGTERM, kept)


def _run_both(store: Path, cluster: Any, **kw: Any) -> tuple[Any, Any]:
    spec = WorkerModel(str(cluster["folder"]))
    with open_store(store) as st:
        c = collect_on_ray(st, kw.pop("bench", _bench()), toy_items(N_ITEMS), spec, 2, pool=cluster["pool"],
                           progress=False, **kw)
        p = pairs_on_ray(st, SETTINGS, 2, benchmarks={"toy": _bench()}, pool=cluster["pool"], progress=False)
    return c, p


def test_ray_rows_equal_the_serial_rows_item_by_item(cluster: Any) -> None:
    store = cluster["root"] / "ray.duckdb"
    c, p = _run_both(store, cluster)
    assert c.generated == N_ITEMS and p.processed == c.failed > 0
    ref, got = _rows(cluster["serial"]), _rows(store)
    for table in ref:
        assert len(got[table]) == len(ref[table]) > 0
        for a, b in zip(ref[table], got[table], strict=True):
            assert a == b, (table, a["item_id"])
    with open_store(store) as st:
        run = st.runs("collect")[0]
        workers = run.settings["scale"][0]["worker_info"]
        assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
        assert all(w["host"] and w["versions"]["torch"] and "sandbox_layers" in w for w in workers)
        assert st.runs("pairs")[0].settings["scale"][0]["workers"] == 2
    with open_store(cluster["serial"]) as st, open_store(store) as st2:  # same ids: a serial rerun resumes it
        assert {r.run_id for r in st.runs()} == {r.run_id for r in st2.runs()}


def test_a_ray_call_resuming_a_pair_run_records_other_speed_settings(cluster: Any) -> None:
    """As in the serial stage: same run id (speed-only settings), and the other settings are recorded."""
    store = cluster["root"] / "resume.duckdb"
    shutil.copy(cluster["serial"], store)
    with open_store(store) as st:
        [prun] = st.runs("pairs")
        gone = [r["item_id"] for r in st.pairs(prun.run_id)][:2]
        st.con.execute(f"DELETE FROM pairs WHERE item_id IN ({', '.join('?' * len(gone))})", gone)
        p = pairs_on_ray(st, PairSettings(top_k=3, max_positions=3, order="margin"), 2,
                         benchmarks={"toy": _bench()}, pool=cluster["pool"], progress=False)
        assert p.pair_run_ids == [prun.run_id] and p.processed == 2
        [entry] = st.get_run(prun.run_id).settings["resumed_with"]
        assert entry["order"] == "margin" and entry["failures"] == 2 and entry["changed"] == ["order"]


def test_a_real_cluster_address_passes_the_handshake_check(cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check that refuses a non-Ray service at --ray-address accepts Ray's own GCS (HTTP/2 SETTINGS frame),
    written HOST:PORT and ray://HOST:PORT (the frame is the same whichever gRPC service answers). The answers are
    recorded: the check did talk to the GCS, not return early, and what came back was a SETTINGS frame."""
    import failtrace.scale.pool as pool

    answers: list[bytes] = []
    first = pool._first_bytes

    def recorded(conn: Any, hello: bytes, n: int) -> bytes:
        answers.append(first(conn, hello, n))
        return answers[-1]

    monkeypatch.setattr(pool, "_first_bytes", recorded)
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    address = ray.get_runtime_context().gcs_address
    pool.check_reachable(address, timeout_s=5)
    pool.check_reachable(f"ray://{address}", timeout_s=5)
    assert len(answers) == 2 and all(len(a) == 9 and a[3] == pool._H2_SETTINGS for a in answers), answers


def test_workers_that_must_wait_for_busy_cpus_say_so_before_the_wait(cluster: Any,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: on a cluster whose CPUs another pool holds, a new pool waited silently (up to 900 s) for them. Now it
    prints one line saying how many are free and why it waits; attaching to the running named pool needs nothing."""
    from failtrace.scale.pool import shortfall_note

    assert shortfall_note(2, 1.0, 0, POOL, 900) is None  # both named workers run: nothing new to place
    spec = WorkerModel(str(cluster["folder"]))
    with pytest.raises(FailtraceError, match=r"did not start within 3 s; does the cluster have 1 free CPUs"):
        WorkerPool(spec, 1, start_timeout=3)
    err = capsys.readouterr().err
    assert "note: the Ray cluster has 0 of its 2 CPUs free; the 1 worker(s) to start need 1, so they wait" in err


def test_a_ray_call_on_a_finished_pair_run_starts_nothing(cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every failure already paired, and the call still started a cluster and loaded the model in each
    worker (12.7 s against 2.6 s serially) to learn that nothing was left. Now it counts them, and so does the serial
    stage without loading the model (a run's pair run id needs none without a helper)."""
    import failtrace.failures.pairs as serial
    import failtrace.scale.stages as stages

    def no_cluster(*a: Any, **k: Any) -> None:
        raise AssertionError("a cluster was started for a finished pair run")

    def no_model(*a: Any, **k: Any) -> None:
        raise AssertionError("a model was loaded for a finished pair run")

    store = cluster["root"] / "finished.duckdb"
    shutil.copy(cluster["serial"], store)
    monkeypatch.setattr(stages, "ensure_ray", no_cluster)
    monkeypatch.setattr(stages, "WorkerPool", no_cluster)
    monkeypatch.setattr(serial, "_run_model", no_model)
    with open_store(store) as st:
        s = find_pairs(st, SETTINGS, benchmarks={"toy": _bench()}, progress=False)
        assert s.processed == 0 and s.failures == s.skipped > 0
        [prun] = st.runs("pairs")
        n = len(st.pairs(prun.run_id))
        p = pairs_on_ray(st, SETTINGS, 2, benchmarks={"toy": _bench()}, progress=False)
        assert p.pair_run_ids == [prun.run_id] and p.processed == 0 and p.failures == p.skipped == n > 0
        with pytest.raises(FailtraceError, match="nothing answers there"):  # still said with nothing to do
            pairs_on_ray(st, SETTINGS, 2, benchmarks={"toy": _bench()}, address="127.0.0.1:1", progress=False)
        with pytest.raises(FailtraceError, match="toy"):  # an unknown benchmark too, as serially
            pairs_on_ray(st, SETTINGS, 2, benchmarks={"other": _bench()}, progress=False)
        st.con.execute("DELETE FROM pairs WHERE item_id = ?", [st.pairs(prun.run_id)[0]["item_id"]])
        with pytest.raises(AssertionError, match="a cluster was started"):  # one left: the workers are needed
            pairs_on_ray(st, SETTINGS, 2, benchmarks={"toy": _bench()}, progress=False)


def test_a_worker_killed_mid_run_still_gives_complete_results(cluster: Any) -> None:
    store = cluster["root"] / "killed.duckdb"
    pool, killed = cluster["pool"], []

    def kill_one(item: Item, gen: Any, verdict: Any) -> None:
        if not killed and pool.busy_actors():
            killed.append(pool.busy_actors()[0])
            ray.kill(killed[0], no_restart=False)  # Ray restarts it; its in-flight items go to the other worker

    retried = pool.retried
    _run_both(store, cluster, bench=_bench(delay=0.05), on_item=kill_one)
    assert killed and pool.retried > retried
    ref, got = _rows(cluster["serial"]), _rows(store)
    assert got == ref


_DRIVER = """
import sys
sys.path.insert(0, {src!r})
import ray
from failtrace.failures.pairs import PairSettings
from failtrace.scale import WorkerModel, WorkerPool, collect_on_ray, pairs_on_ray
from failtrace.store import open_store
from failtrace_testkit.toy import ToyBenchmark, toy_items
ray.init(address={address!r}, namespace="failtrace", log_to_driver=False)
spec = WorkerModel({folder!r})
pool = WorkerPool(spec, 2, name={pool!r})  # attaches to the running named workers
bench = ToyBenchmark(mode="contains", max_new_tokens=12, delay=0.05)
with open_store({store!r}) as st:
    collect_on_ray(st, bench, toy_items({n}), spec, 2, pool=pool, progress=False,
                   on_item=lambda it, g, v: print("item", it.id, flush=True))
    pairs_on_ray(st, PairSettings(top_k=3, max_positions=3), 2, benchmarks={{"toy": bench}}, pool=pool,
                 progress=False, on_pair=lambda i, r: print("pair", i, flush=True))
print("finished", flush=True)
"""


def _driver(script: Path, kill_after: str | None) -> int:
    """Run the driver; SIGKILL it after the progress line ``kill_after`` (item/pair N); return the lines seen."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line.split()[0])
        if kill_after and f"{seen[-1]} {seen.count(seen[-1])}" == kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=300) == (-signal.SIGKILL if kill_after else 0)
    return len(seen)


def test_driver_sigkill_and_rerun_lose_and_duplicate_nothing(cluster: Any) -> None:
    store = cluster["root"] / "driver.duckdb"
    script = cluster["root"] / "driver.py"
    script.write_text(_DRIVER.format(src=SRC, address=ray.get_runtime_context().gcs_address, pool=POOL,
                                     folder=str(cluster["folder"]), store=str(store), n=N_ITEMS))
    _driver(script, "item 4")  # killed during collect
    with open_store(store) as st:
        assert 4 <= st.counts()["generations"] < N_ITEMS
    _driver(script, "pair 2")  # killed during pairs
    with open_store(store) as st:
        assert st.counts()["generations"] == N_ITEMS and 2 <= st.counts()["pairs"]
    _driver(script, None)
    with open_store(store) as st:
        for table in ("generations", "verdicts", "pairs"):
            n, distinct = st.con.execute(f"SELECT count(*), count(DISTINCT item_id) FROM {table}").fetchone()
            assert n == distinct  # nothing duplicated
    assert _rows(store) == _rows(cluster["serial"])  # nothing lost, nothing different


POISON = Item(id="poison", benchmark="toy", prompt="Question: die", reference={"needle": "zz"})


def test_an_item_that_kills_every_worker_is_recorded_as_errored(cluster: Any) -> None:
    """Only the poisoned item is charged: q000, sent to the same worker behind it, died with it every time and was
    stored unverifiable too, for good (a rerun skips it), until only the task an actor was running was charged."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    store = cluster["root"] / "poison.duckdb"
    items = [POISON, *toy_items(3)]  # the poison first: q000 is queued behind it on the same worker
    with open_store(store) as st:
        s = collect_on_ray(st, PoisonBenchmark(mode="contains", max_new_tokens=12), items,
                           WorkerModel(str(cluster["folder"])), 2, pool=cluster["pool"], max_attempts=2,
                           progress=False)
        rows = {r["item_id"]: r for r in st.results(s.run_id)}
    assert s.generated == 4 and s.unverifiable == 1, {k: (r["status"], r["reasons"]) for k, r in rows.items()}
    poison = rows["poison"]
    assert poison["status"] == "unverifiable" and poison["finish_reason"] == "error"
    assert "died on this item 2 time(s)" in poison["reasons"][0] and len(poison["details"]["worker_errors"]) == 2
    ref = {r["item_id"]: r for r in _rows(cluster["serial"])["generations"]}
    for item_id in ("q000", "q001", "q002"):
        assert rows[item_id]["token_ids"] == ref[item_id]["token_ids"]
        assert rows[item_id]["status"] == next(r for r in _rows(cluster["serial"])["verdicts"]
                                               if r["item_id"] == item_id)["status"]


def test_a_failure_whose_pairs_worker_dies_is_unverifiable_and_its_neighbours_are_paired(cluster: Any) -> None:
    """The pairs stage's worker-death path (it once named constants it had not imported) records the poisoned
    failure as unverifiable with its token counts, and pairs the failures queued behind it as serially. One try per
    item and one worker: the failure sent right behind the poison died with it and was given up too, until only the
    task an actor was running was charged. Its own pool: the death uses up that pool's restarts, not the module's."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    from failtrace.store.records import FINISH_CUT

    root = cluster["root"]
    serial = root / "pairs-poison-serial.duckdb"  # collected and paired in-process with the harmless checker
    with one_thread(), open_store(serial) as st:
        lm = load_model(str(cluster["folder"]), progress=False)
        collect(st, _bench(), [POISON, *toy_items(3)], lm, progress=False)
        find_pairs(st, SETTINGS, models={lm.name: lm}, benchmarks={"toy": _bench()}, progress=False)
        want = {r["item_id"]: r for r in st._rows("SELECT * FROM pairs")}
        failed = {r["item_id"] for r in st._rows("SELECT item_id FROM verdicts WHERE status = 'fail'")}
    assert "poison" in failed and len(failed) >= 3  # the poison and failures queued behind it are searched
    store = root / "pairs-poison.duckdb"
    shutil.copy(serial, store)
    with open_store(store) as st:
        st.con.execute("DELETE FROM pairs")
        st.con.execute("DELETE FROM runs WHERE stage = 'pairs'")
    pool = WorkerPool(WorkerModel(str(cluster["folder"])), 1, cpus_per_worker=0)  # the module pool holds both CPUs
    try:
        with open_store(store) as st:
            s = pairs_on_ray(st, SETTINGS, 1, benchmarks={"toy": PoisonBenchmark(mode="contains", max_new_tokens=12)},
                             pool=pool, max_attempts=1, progress=False)
            got = {r["item_id"]: r for r in st._rows("SELECT * FROM pairs")}
            gen = st._rows("SELECT * FROM generations WHERE item_id = 'poison'")[0]
    finally:
        pool.close(force=True)
    assert s.statuses.get("unverifiable", 0) >= 1 and set(got) == failed
    poison = got.pop("poison")
    assert poison["status"] == "unverifiable" and "died on this item 1 time(s)" in poison["reason"]
    assert poison["prompt_tokens"] == len(gen["prompt_ids"]) and poison["completion_tokens"] == len(gen["token_ids"])
    assert poison["hit_length_limit"] == (gen["finish_reason"] in FINISH_CUT)
    skip = _TIMING | {"pair_run_id"}
    for item_id, row in got.items():
        assert {k: v for k, v in row.items() if k not in skip} == \
            {k: v for k, v in want[item_id].items() if k not in skip}, item_id


def test_a_budget_beyond_the_context_is_refused_before_a_run_is_recorded(cluster: Any) -> None:
    """The driver loads no model: the workers report the context window with the model's description, and the
    budget is checked against it (as in-process) before the run is recorded. The toy model's window is 4,096."""
    store = cluster["root"] / "budget.duckdb"
    with open_store(store) as st:
        with pytest.raises(FailtraceError, match=r"--max-new-tokens 4097 is more than .*window \(4096 tokens\)"):
            collect_on_ray(st, _bench(), toy_items(2), WorkerModel(str(cluster["folder"])), 2, pool=cluster["pool"],
                           max_new_tokens=4097, progress=False)
        assert st.runs() == []
    assert cluster["pool"].model.context == 4096


def test_a_prompt_the_template_refuses_is_refused_before_a_run_is_recorded(cluster: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """On Ray the run and its items were recorded first, then the first worker to render the refused prompt ended
    the command. The driver now asks a worker to render every prompt to do before the run is recorded, as the
    serial path renders them (the refusal itself: test_collect.py, on a template that refuses a role)."""
    assert cluster["pool"].check_prompts(toy_items(3), False) is None  # the workers answer: every prompt renders
    asked: list[list[str]] = []

    def refuse(items: list[Any], thinking: bool) -> None:
        asked.append([it.id for it in items])
        raise FailtraceError("item 'q001': the model's chat template refused the messages (roles user): no")

    monkeypatch.setattr(cluster["pool"], "check_prompts", refuse)
    store = cluster["root"] / "refused.duckdb"
    with open_store(store) as st:
        with pytest.raises(FailtraceError, match="item 'q001': the model's chat template refused"):
            collect_on_ray(st, _bench(), toy_items(2), WorkerModel(str(cluster["folder"])), 2, pool=cluster["pool"],
                           progress=False)
        assert st.runs() == [] and asked == [["q000", "q001"]]


def test_ray_paths_check_thinking_rollout_window_and_checker_options_as_serially(cluster: Any) -> None:
    """The driver has no tokenizer nor weights: the workers' description carries the template's thinking switch and
    the window; a run's checker options are recorded by collect_on_ray and rebuilt (or checked) by pairs_on_ray."""
    store = cluster["root"] / "checks.duckdb"
    items = toy_items(3, benchmark="toy-optioned", needle="")  # "" is in every text: only mode=never fails it
    spec = WorkerModel(str(cluster["folder"]))
    with open_store(store) as st:
        with pytest.raises(FailtraceError, match="chat template has no thinking mode"):
            collect_on_ray(st, OptionedToy(mode="never", max_new_tokens=12), items, spec, 2, pool=cluster["pool"],
                           thinking=True, progress=False)
        assert st.runs() == []
        c = collect_on_ray(st, OptionedToy(mode="never", max_new_tokens=12), items, spec, 2, pool=cluster["pool"],
                           progress=False)
        assert c.failed == 3 and st.get_run(c.run_id).settings["checker"] == {"mode": "never"}
        with pytest.raises(FailtraceError, match="collected with {'mode': 'never'}"):
            pairs_on_ray(st, SETTINGS, 2, benchmarks={"toy-optioned": OptionedToy()}, pool=cluster["pool"],
                         progress=False)
        with pytest.raises(FailtraceError, match=r"--rollout-tokens 4097 is more than .*window \(4096 tokens\)"):
            pairs_on_ray(st, PairSettings(top_k=2, max_positions=2, rollout_tokens=4097), 2,
                         benchmarks={"toy-optioned": OptionedToy(mode="never")}, pool=cluster["pool"],
                         progress=False)
        assert st.runs("pairs") == []
        pairs_on_ray(st, PairSettings(top_k=2, max_positions=2), 2,
                     benchmarks={"toy-optioned": OptionedToy(mode="never")}, pool=cluster["pool"], progress=False)
        statuses = [p["status"] for p in st.pairs()]
    assert len(statuses) == 3 and "unverifiable" not in statuses  # re-checked as collected: nothing passes


def test_cli_refuses_bad_scale_options_before_touching_anything(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from failtrace.cli import main

    store = tmp_path / "s.duckdb"
    base = ["collect", "--benchmark", "ifeval", "--data", "nope.jsonl", "--store", str(store)]
    assert main([*base, "--ray-address", "auto"]) == 2
    assert "error: --ray-address needs --workers N" in capsys.readouterr().err
    assert main([*base, "--workers", "2", "--batch-size", "2"]) == 2
    assert "error: --batch-size > 1 is not supported with --workers" in capsys.readouterr().err
    assert main([*base, "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not store.exists()


_TOO_MANY = """
import os, sys
sys.path.insert(0, {src!r})
import ray
from failtrace.errors import FailtraceError
from failtrace.scale import ensure_ray
cores = os.cpu_count() or 1
try:
    ensure_ray(cores + 1)
except FailtraceError as exc:
    print(exc)
print("initialized:", ray.is_initialized())
"""


def test_the_api_refuses_more_local_workers_than_cores_before_starting_ray(tmp_path: Path) -> None:
    """The CLI's refusal lives in ensure_ray itself: collect_on_ray(workers=4096) started a local cluster of 4096
    CPUs and loaded the model 4096 times. Nothing is started. (In a process of its own: this one may hold the
    module's cluster.)"""
    script = tmp_path / "too_many.py"
    script.write_text(_TOO_MANY.format(src=SRC))
    env = {**os.environ, "RAY_ADDRESS": ""}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env).stdout
    cores = os.cpu_count() or 1
    assert f"--workers {cores + 1} is more than this machine's {cores} cores" in out and "initialized: False" in out


_STALE = """
import sys
sys.path.insert(0, {src!r})
from failtrace.errors import FailtraceError
from failtrace.scale.pool import ensure_ray, shutdown_ray
try:
    print("started:", ensure_ray(1))
    shutdown_ray()
except FailtraceError as exc:
    print(exc)
"""


def test_a_local_run_starts_its_own_cluster_beside_another_clusters_address_file(tmp_path: Path) -> None:
    """`ray start --head` here (or one killed, leaving its address file) made every local --workers run fail:
    ray.init joined that cluster and refused num_cpus for it. (Ray's temp folder moved to tmp_path, in a process
    of its own: this one may hold the module's cluster.)"""
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="ftray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # a cluster that is gone
        script = tmp_path / "stale.py"
        script.write_text(_STALE.format(src=SRC))
        env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_tmp)}
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "started: True" in run.stdout, run.stdout + run.stderr[-2000:]


def test_calls_to_a_restarting_actor_are_submitted_again_until_it_answers() -> None:
    """A driver attaching to a named pool while Ray restarts one of its workers gets ``ActorUnavailableError``:
    the pool submits the calls again until they answer (or the timeout passes); a dead actor's error passes through."""
    from failtrace.scale.pool import _get_when_up

    class FakeRay:  # ray.get as Ray behaves for an actor that is restarting for its first ``down`` calls
        exceptions = ray.exceptions

        def __init__(self, down: int, then: BaseException | None = None) -> None:
            self.down, self.then, self.calls = down, then, 0

        def get(self, refs: list[Any], timeout: float) -> list[Any]:
            self.calls += 1
            if self.calls <= self.down:
                raise ray.exceptions.ActorUnavailableError("The actor is restarting.", None)
            if self.then is not None:
                raise self.then
            return [r * 10 for r in refs]

    submitted: list[int] = []

    def submit() -> list[int]:
        submitted.append(1)
        return [1, 2]

    fake = FakeRay(down=2)
    assert _get_when_up(fake, submit, timeout=30) == [10, 20]
    assert fake.calls == 3 and len(submitted) == 3  # submitted again after each "restarting"
    with pytest.raises(ray.exceptions.ActorUnavailableError):  # still restarting at the deadline: Ray's error
        _get_when_up(FakeRay(down=10**6), submit, timeout=0.0)
    dead = ray.exceptions.RayActorError()
    with pytest.raises(ray.exceptions.RayActorError) as info:  # a dead actor is not waited for
        _get_when_up(FakeRay(down=0, then=dead), submit, timeout=30)
    assert info.value is dead


_SIGNALS = """
import os, signal, sys
sys.path.insert(0, {src!r})
from failtrace.scale.pool import ensure_ray, shutdown_ray
seen = []
signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))  # the command's handler (cli.main)
assert ensure_ray(1)
os.kill(os.getpid(), signal.SIGTERM)
print("after start", seen, flush=True)
shutdown_ray()
os.kill(os.getpid(), signal.SIGTERM)
print("after shutdown", seen, flush=True)
"""


def test_starting_and_stopping_a_local_cluster_keeps_the_commands_sigterm_handler(tmp_path: Path) -> None:
    """ray.init installs Ray's SIGTERM handler in the driver and ray.shutdown resets SIGTERM to the default action:
    either way a SIGTERM (a scheduler, `kill`) killed `--workers` runs without the command's unwinding (store closed,
    one line, exit 143). Both signals here must reach the command's own handler, and the process must live."""
    script = tmp_path / "signals.py"
    script.write_text(_SIGNALS.format(src=SRC))
    env = {**os.environ, "RAY_ADDRESS": ""}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr[-2000:])
    sig = int(signal.SIGTERM)
    assert res.stdout.splitlines() == [f"after start [{sig}]", f"after shutdown [{sig}, {sig}]"]


def test_closing_lines_count_workers_in_the_singular_too() -> None:
    """collect/pairs/analyse end with "on N Ray workers"; with --workers 1 that read "on 1 Ray workers"."""
    from failtrace.cli.options import on_workers

    assert (on_workers(None), on_workers(0)) == ("", "")
    assert (on_workers(1), on_workers(3)) == (" on 1 Ray worker", " on 3 Ray workers")
