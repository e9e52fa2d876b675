"""A pool of Ray actors, each holding one loaded model, that runs per-item tasks and survives dying workers.

Ray gives the actors, the scheduling onto CPUs/GPUs and the restart of a dead actor (``max_restarts``); this module only
adds what a failtrace run needs on top: keep ``inflight`` tasks per actor, hand every result to the driver's callback as
it arrives (the driver is the only writer of the store), and when an actor dies put its in-flight items back in the
queue for any live actor. Only the item it was running (its oldest: an actor runs its tasks in the order they were sent)
is charged a try, up to ``max_attempts`` per item; after that the item is reported as errored with the reason. The items
queued behind it go back free: charging them made an innocent item unverifiable for good. An actor whose restarts are
used up is dropped; when none is left the pool raises (the items not done stay undone, and a rerun does them).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from failtrace.errors import FailtraceError
from failtrace.scale.work import DescribedModel, WorkerModel, ModelWorker

NAMESPACE = "failtrace"  # Ray namespace of failtrace's drivers: named worker pools are found across drivers


def require_ray() -> Any:
    """Import Ray, or explain how to install it (it is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise FailtraceError("--workers runs the stage on Ray, which is not installed; install the extra: "
                             "pip install 'failtrace[ray]'") from None
    return ray


def check_local_workers(workers: int) -> None:
    """A local cluster runs at most one worker per core: each loads the model and takes one (100000 ran for
    minutes before anything was refused). A joined cluster (``--ray-address``) is sized by its own nodes."""
    cores = os.cpu_count() or 1
    if workers > cores:
        raise FailtraceError(f"--workers {workers} is more than this machine's {cores} cores (each worker loads the "
                             f"model and takes at least one); give at most {cores}, or --ray-address for a cluster")


def ensure_ray(workers: int, address: str | None = None) -> bool:
    """Connect to Ray (``address``, e.g. ``auto``) or start a local cluster over this machine's cores.

    Returns True when this call started it (the caller shuts it down). An already connected process is reused.
    A local cluster gets this machine's cores, and at most that many workers (:func:`check_local_workers`). Its
    workers keep Ray's default niceness (15: Ray's daemons and the driver come first within the session);
    ``RAY_worker_niceness=0`` in the environment changes it, and each worker records its own. docs/SCALE.md has the
    measurements behind keeping the default.
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
    else:
        check_local_workers(workers)
    try:
        with _keeping_signal_handlers():
            if address:
                ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.ERROR)
            else:
                # "local": a cluster of its own, even where `ray start` runs here or left its address file
                # behind (Ray would join that one, and refuse num_cpus for it)
                ray.init(address="local", num_cpus=os.cpu_count() or 1, namespace=NAMESPACE,
                         include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise FailtraceError(f"could not start or join {where}: {str(exc).splitlines()[0][:300]}") from None
    return True


def shutdown_ray() -> None:
    """Stop the Ray cluster this process started, keeping the command's signal handlers (see below)."""
    with _keeping_signal_handlers():
        require_ray().shutdown()


@contextlib.contextmanager
def _keeping_signal_handlers() -> Iterator[None]:
    """Give SIGTERM and SIGINT back to the command after ``ray.init`` and ``ray.shutdown``. Starting a local cluster
    installs Ray's SIGTERM handler in the driver and shutting it down resets SIGTERM to the default action; either
    way a SIGTERM killed the command without closing the store, its one-line message or exit 143 (and, after the
    shutdown, before the summary was printed). The command's handler unwinds; leaving ``_cluster`` stops Ray."""
    import signal
    import threading

    kept: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # handlers can only be set from the main thread
        kept = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:  # None: set outside Python, nothing to give back
                signal.signal(sig, handler)


# The HTTP/2 client preface and an empty SETTINGS frame (RFC 9113 §3.4). A Ray cluster's address is its GCS, a
# gRPC server, which answers with its own SETTINGS frame; Ray ships no Python gRPC client to ask it more politely,
# so these 33 bytes are the whole handshake.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4  # frame type byte of a SETTINGS frame (the 4th byte of its 9-byte header)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) cluster address that takes no TCP connection, or that does not
    answer as a gRPC server, within ``timeout_s``: ``ray.init`` would retry either for minutes, printing its own log
    lines. ``auto`` and other forms are left to Ray (it answers those at once); so is a cluster with TLS on
    (``RAY_USE_TLS``), whose handshake is not plain HTTP/2."""
    import socket

    if "://" in address and not address.startswith("ray://"):
        return  # another scheme (e.g. anyscale://NAME): Ray's client builders answer it
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or "/" in host or (":" in host and not host.startswith("[")):
        return  # not HOST:PORT ([v6]:PORT included): Ray's own answer is the clearer one
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):  # '²' passes isdigit, then fails int()
        # Ray takes '-5' or ' 1' as a port and retries it for minutes
        raise FailtraceError(f"--ray-address {address!r} has no valid port (a number from 1 to 65535 after the "
                             "last ':'); use the address `ray start --head` printed, or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as conn:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            header = _first_bytes(conn, _H2_PREFACE, 9)
    except OSError as exc:
        raise FailtraceError(f"could not start or join the Ray cluster at {address}: nothing answers there "
                             f"({exc.strerror or exc}); start it with `ray start --head` or fix --ray-address") \
            from None
    if len(header) < 4 or header[3] != _H2_SETTINGS:
        raise FailtraceError(f"could not join a Ray cluster at {address}: something answers there, but not as Ray's "
                             "cluster service (no gRPC); use the address `ray start --head` printed, or auto")


def _first_bytes(conn: Any, hello: bytes, n: int) -> bytes:
    """Send ``hello`` and return the first ``n`` bytes of the answer (fewer if the peer closes or goes quiet)."""
    import socket

    conn.sendall(hello)
    data = b""
    try:
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionError):
        pass
    return data


def cpus_per_worker(workers: int, local: bool) -> int:
    """CPUs (= torch threads) per worker: a local cluster's cores split evenly; 1 on a joined cluster.

    Ray sets ``OMP_NUM_THREADS`` of an actor to its CPUs and the worker sets torch's threads to the same number, so
    N workers never run more threads than the cores they were given (no oversubscription). On a joined cluster the
    nodes may differ, and an actor's CPUs must fit on one node, so it asks for one (GPU workers barely use them).
    """
    if not local:
        return 1
    total = int(require_ray().cluster_resources().get("CPU", workers))
    return max(1, total // workers)


def shortfall_note(workers: int, cpus_each: float, gpus_each: int, name: str | None, timeout: float) -> str | None:
    """A line saying that the cluster's free CPUs (GPUs) are fewer than the workers still to start need, else None.

    Ray queues an actor until its resources are free (another job may hold them, or an autoscaler may add a node), so
    failtrace does not refuse: it says why nothing moves yet, instead of waiting silently up to ``timeout``. Workers of
    a named pool that already run need nothing new."""
    ray = require_ray()
    missing = workers
    if name is not None:
        missing = sum(1 for i in range(workers) if not _actor_exists(ray, f"{name}-{i}"))
    kind, each = ("GPU", gpus_each) if gpus_each else ("CPU", cpus_each)
    need = missing * each
    free = float(ray.available_resources().get(kind, 0.0))
    if need <= 0 or free >= need:
        return None
    total = float(ray.cluster_resources().get(kind, 0.0))
    return (f"note: the Ray cluster has {free:g} of its {total:g} {kind}s free; the {missing} worker(s) to start need "
            f"{need:g}, so they wait until that many are free (up to {timeout:.0f} s; `ray status` shows what holds "
            f"them)")


def _actor_exists(ray: Any, name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


@dataclass
class Task:
    """One item's work: the actor method, its arguments, and the failures seen so far."""

    key: str
    method: str
    args: tuple[Any, ...]
    errors: list[str] = field(default_factory=list)


class WorkerPool:
    """``workers`` Ray actors holding the model of ``spec`` (see the module docstring)."""

    def __init__(self, spec: WorkerModel, workers: int, *, max_attempts: int = 3, max_restarts: int = 2,
                 inflight: int = 2, cpus_per_worker: float = 1.0, name: str | None = None,
                 start_timeout: float = 900.0) -> None:
        if workers < 1:
            raise FailtraceError(f"--workers must be at least 1, got {workers}")
        if max_attempts < 1:
            raise FailtraceError(f"max_attempts must be at least 1, got {max_attempts}")
        ray = require_ray()
        self.spec, self.max_attempts, self.inflight, self.name = spec, max_attempts, inflight, name
        self.retried = 0  # items put back in the queue after their worker died
        gpus = 1 if spec.device.startswith("cuda") else 0
        note = shortfall_note(workers, cpus_per_worker, gpus, name, start_timeout)
        if note:
            print(note, file=sys.stderr, flush=True)
        actor_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus, max_restarts=max_restarts,
                               max_task_retries=0)(ModelWorker)
        if name is not None:  # named, detached actors outlive this driver: a later driver attaches to them
            self.actors = [actor_cls.options(name=f"{name}-{i}", lifetime="detached", get_if_exists=True)
                           .remote(spec, max(1, int(cpus_per_worker))) for i in range(workers)]
        else:
            self.actors = [actor_cls.remote(spec, max(1, int(cpus_per_worker))) for _ in range(workers)]
        try:
            hellos = _get_when_up(ray, lambda: [a.hello.remote() for a in self.actors], start_timeout)
        except ray.exceptions.RayActorError as exc:
            self.close(force=True)
            raise FailtraceError(f"a Ray worker could not load {spec.name}: {_reason(exc)}") from None
        except ray.exceptions.GetTimeoutError:
            self.close(force=True)
            raise FailtraceError(f"{workers} Ray worker(s) did not start within {start_timeout:.0f} s; does the "
                                 f"cluster have {workers} free {'GPUs' if gpus else 'CPUs'}? (`ray status`)") from None
        self.model: DescribedModel = hellos[0]["model"]
        self.helper: DescribedModel | None = hellos[0]["helper"]
        self.provenance = [h["provenance"] for h in hellos]
        self._busy: dict[int, int] = {}  # actor index -> tasks in flight
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """The content fingerprint of the workers' model (analyse keys cases by it); every worker must agree."""
        ray = require_ray()
        if self._fingerprint is None:
            try:
                prints = set(_get_when_up(ray, lambda: [a.fingerprint.remote() for a in self.actors], 900.0))
            except ray.exceptions.RayActorError as exc:
                raise FailtraceError(f"a Ray worker died while fingerprinting {self.spec.name}: "
                                     f"{_reason(exc)}") from None
            if len(prints) != 1:
                raise FailtraceError(f"the Ray workers loaded different model files for {self.spec.name} "
                                     f"({len(prints)} content fingerprints); give every node the same model")
            self._fingerprint = prints.pop()
        return self._fingerprint

    def check_prompts(self, items: list[Any], thinking: bool) -> None:
        """Refuse ``items`` when the workers' chat template refuses one's messages (asked of one worker: they share
        the model), as the serial path does before a run is recorded."""
        ray = require_ray()
        try:
            [refused] = _get_when_up(ray, lambda: [self.actors[0].refused_prompt.remote(items, thinking)], 900.0)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, ray.exceptions.GetTimeoutError) as exc:
            raise FailtraceError(f"a Ray worker could not render the prompts: {_reason(exc)}") from None
        if refused is not None:
            raise FailtraceError(refused)

    def busy_actors(self) -> list[Any]:
        """Handles of the actors that have work in flight right now (tests kill one of these)."""
        return [self.actors[i] for i, n in self._busy.items() if n > 0]

    def run(self, tasks: Iterable[Task], on_result: Callable[[Task, Any], None],
            on_error: Callable[[Task], None], max_attempts: int | None = None) -> None:
        """Run every task; ``on_result``/``on_error`` (the driver's writes) are called in this thread, one at a time.

        ``max_attempts`` overrides the pool's tries per item for this call.
        """
        ray = require_ray()
        attempts = self.max_attempts if max_attempts is None else max_attempts
        if attempts < 1:
            raise FailtraceError(f"max_attempts must be at least 1, got {attempts}")
        queue = collections.deque(tasks)
        live = set(range(len(self.actors)))
        self._busy = dict.fromkeys(live, 0)
        pending: dict[Any, tuple[int, Task | None]] = {}  # ref -> (actor, task); task None: a liveness probe
        order: dict[int, list[Any]] = {i: [] for i in live}  # each actor's task refs in flight, oldest first
        behind: set[Any] = set()  # refs that were waiting behind the task their actor died on
        probing: set[int] = set()
        while queue or any(t is not None for _, t in pending.values()):  # probes alone do not hold the run
            for i in sorted(live - probing):
                while queue and self._busy[i] < self.inflight:
                    task = queue.popleft()
                    ref = getattr(self.actors[i], task.method).remote(*task.args)
                    pending[ref] = (i, task)
                    order[i].append(ref)
                    self._busy[i] += 1
            if not pending:
                raise FailtraceError(f"every Ray worker died; {len(queue)} item(s) were not done (rerun to do them)")
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i, task = pending.pop(ref)
            if task is None:  # a probe of an actor that failed: it answers once restarted, or it is gone
                probing.discard(i)
                try:
                    ray.get(ref)
                except ray.exceptions.ActorUnavailableError:  # still restarting: ask again shortly
                    time.sleep(0.2)
                    probing.add(i)
                    pending[self.actors[i].hello.remote()] = (i, None)
                except ray.exceptions.RayActorError:
                    live.discard(i)
                continue
            self._busy[i] -= 1
            running = order[i][0] == ref  # an actor runs its tasks one at a time, in the order they were sent
            order[i].remove(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                if not running or ref in behind:  # it waited behind the task the actor died on: not charged
                    behind.discard(ref)
                    queue.appendleft(task)
                    self.retried += 1
                    if i in live and i not in probing:  # no new work for it until it answers again
                        probing.add(i)
                        pending[self.actors[i].hello.remote()] = (i, None)
                    continue
                behind.update(order[i])  # the rest of this actor's queue died with it, unrun
                task.errors.append(_reason(exc))
                if len(task.errors) < attempts:
                    queue.appendleft(task)
                    self.retried += 1
                else:
                    on_error(task)
                if i in live and i not in probing:
                    probing.add(i)
                    pending[self.actors[i].hello.remote()] = (i, None)
                continue
            except ray.exceptions.RayTaskError as exc:  # the work itself raised: as the serial path would
                raise exc.as_instanceof_cause() from None
            behind.discard(ref)
            on_result(task, value)

    def close(self, force: bool = False) -> None:
        """Stop the actors (their models are freed); named pools stay up for the next driver unless ``force``."""
        if self.name is not None and not force:
            return
        ray = require_ray()
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass


def _get_when_up(ray: Any, submit: Callable[[], list[Any]], timeout: float) -> list[Any]:
    """``ray.get`` of the calls ``submit()`` makes, submitted again while an actor is only *restarting* (Ray's
    ``ActorUnavailableError``: e.g. a driver attaching to a named pool right after one of its workers died), until
    ``timeout`` seconds; a dead actor's error and the timeout go to the caller as Ray raises them."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return list(ray.get(submit(), timeout=max(1.0, deadline - time.monotonic())))
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _reason(exc: BaseException) -> str:
    """One line: the innermost exception Ray's text quotes (e.g. the model loader's error), else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b[^:]*: ", line)]
    if raised:
        name, _, message = raised[-1].partition(":")
        text = f"{name.rsplit('.', 1)[-1]}:{message}"
    else:
        text = " / ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else (lines or [""])[0]
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text if len(text) <= 300 else text[:299] + '…'}"
