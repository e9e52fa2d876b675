"""The per-item work of the collect, pairs and analyse stages as functions of (model, settings, item) -> record.

A Ray worker (:class:`ModelWorker`) holds one loaded model and runs these functions; it never touches the store.
The records are plain dicts (they cross process boundaries), turned back into store rows by the driver. The same
code the serial path runs does the work (:func:`~failtrace.failures.collect.finish_item`,
:func:`~failtrace.failures.pairs.pair_one`, :func:`~failtrace.cases.build.build_case`), so a record is the serial
path's record for that item. Nothing here imports Ray: the actor class is wrapped by ``ray.remote`` in
:mod:`failtrace.scale.pool`.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass, field
from typing import Any

from failtrace.benchmarks.base import Benchmark, Item


@dataclass(frozen=True)
class WorkerModel:
    """What a worker loads: the same arguments ``failtrace collect --model/--dtype/--device`` pass to load_model."""

    name: str
    dtype: str = "float32"
    device: str = "cpu"
    revision: str | None = None
    helper: str | None = None  # a pairs sibling/helper model, loaded next to the model


@dataclass
class DescribedModel:
    """A loaded model as the driver sees it: the fields run records use, without the weights."""

    name: str
    source: str
    dtype: str
    device: str
    revision: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    context: int | None = None  # the context window (the driver checks budgets against it before recording a run)
    thinking_mode: bool = True  # its chat template reads enable_thinking (the driver checks --thinking against it)
    content_fingerprint: str | None = None  # its weights' (a collection run records it and resumes only on it)

    def describe(self) -> dict[str, Any]:
        """The model's description, as stored next to every result."""
        return dict(self.info)

    @classmethod
    def of(cls, loaded: Any) -> DescribedModel:
        """Describe a loaded model for the driver: name, source, versions and context window, no weights."""
        from failtrace.models.chat import has_thinking_mode
        from failtrace.models.fingerprint import model_fingerprint
        from failtrace.models.limits import context_length

        return cls(name=loaded.name, source=loaded.source, dtype=loaded.dtype, device=loaded.device,
                   revision=loaded.revision, info=loaded.describe(), context=context_length(loaded.model),
                   thinking_mode=has_thinking_mode(loaded.tokenizer), content_fingerprint=model_fingerprint(loaded))


def worker_provenance(device: str) -> dict[str, Any]:
    """Where a worker runs: host, process, device (GPU name when on CUDA), threads, niceness, library versions and
    sandbox layers."""
    import torch

    from failtrace.failures.collect import library_versions

    prov: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "device": device,
                            "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "niceness": os.nice(0),
                            "versions": library_versions()}
    if device.startswith("cuda") and torch.cuda.is_available():
        prov["gpu"] = torch.cuda.get_device_name(torch.device(device))
        prov["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import ray

        prov["ray"] = ray.__version__
        prov["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests of this module, the serial path)
        pass
    try:  # generated code runs in the sandbox of the worker's own machine: record which layers it has there
        from failtrace.benchmarks.sandbox import isolation

        prov["sandbox_layers"] = isolation().layers()
    except Exception as exc:  # pragma: no cover - a machine where the probe itself fails
        prov["sandbox_layers"] = {"probe_failed": f"{type(exc).__name__}: {exc}"[:200]}
    return prov


def collect_item(loaded: Any, benchmark: Benchmark, item: Item, budget: int, thinking: bool) -> dict[str, Any]:
    """Generate greedily for one item and check it: ``{"generation", "verdict", "check_seconds"}``.

    Exactly the serial path with ``batch_size=1`` (chat template, greedy decoding, decode, the benchmark's checker).
    """
    import time

    from failtrace.failures.collect import finish_item, over_window, render_prompt
    from failtrace.failures.generation import eos_token_ids, greedy_generate, pad_token_id
    from failtrace.models.limits import context_length

    eos = eos_token_ids(loaded.model, loaded.tokenizer)
    prompt = render_prompt(loaded.tokenizer, item, thinking)
    window = context_length(loaded.model)
    long = over_window(prompt, window)
    if long is not None:
        return {"generation": long[0].to_dict(), "verdict": long[1].to_dict(), "check_seconds": 0.0}
    t = time.perf_counter()
    out = greedy_generate(loaded.model, [prompt], budget, eos, pad_token_id(loaded.tokenizer, eos), window=window)[0]
    gen, verdict, check_seconds = finish_item(loaded.tokenizer, benchmark, item, prompt, out, eos,
                                              time.perf_counter() - t)
    return {"generation": gen.to_dict(), "verdict": verdict.to_dict(), "check_seconds": check_seconds}


def pair_item(finder: Any, benchmark: Benchmark, item: Item, row: dict[str, Any], budget: int) -> dict[str, Any]:
    """The pair search on one stored failure (``row``: prompt_ids, token_ids, finish_reason): a pairs-table record."""
    from failtrace.failures.pairs import pair_one

    return pair_one(finder, benchmark, item, row, budget).to_dict()


def analyse_item(loaded: Any, settings: Any, pair_row: dict[str, Any], item: Item, generation: dict[str, Any],
                 fingerprint: str, analysis_id: str) -> dict[str, Any]:
    """Explain one clean pair (attributions by every method, graph, analyses): ``{"case": Case.to_dict()}``.

    A pair that cannot be analysed gives ``{"error": "item: reason"}``, the line the serial stage lists for it.
    ``generation``: the stored ``prompt_ids`` and ``token_ids`` of the pair's item.
    """
    from failtrace.cases.build import build_case
    from failtrace.errors import FailtraceError

    try:
        case = build_case(loaded, pair_row, item, generation, settings, fingerprint=fingerprint,
                          analysis_id=analysis_id)
    except FailtraceError as exc:
        return {"error": f"{pair_row['item_id']}: {exc}"}
    return {"case": case.to_dict()}


class ModelWorker:
    """One Ray actor: loads the model once (and the pairs helper, if any), then serves per-item calls."""

    def __init__(self, spec: WorkerModel, threads: int = 1) -> None:
        import torch

        from failtrace.models.loading import load_model

        torch.set_num_threads(max(1, threads))
        self.spec = spec
        self.loaded = load_model(spec.name, dtype=spec.dtype, device=spec.device, revision=spec.revision,
                                 progress=False)
        self.helper = None if spec.helper is None else load_model(spec.helper, dtype=spec.dtype, device=spec.device,
                                                                  progress=False)
        self._finders: dict[str, Any] = {}
        self._fingerprint: str | None = None

    def hello(self) -> dict[str, Any]:
        """The loaded models as run records need them, and this worker's provenance."""
        return {"model": DescribedModel.of(self.loaded),
                "helper": None if self.helper is None else DescribedModel.of(self.helper),
                "provenance": worker_provenance(self.spec.device)}

    def refused_prompt(self, items: list[Item], thinking: bool) -> str | None:
        """The chat template's refusal of the first item it refuses, else None (the driver asks before a run)."""
        from failtrace.failures.collect import first_refused_prompt

        return first_refused_prompt(self.loaded.tokenizer, items, thinking)

    def collect(self, benchmark: Benchmark, item: Item, budget: int, thinking: bool) -> dict[str, Any]:
        """Generate and judge one item (the same code as the in-process path)."""
        return collect_item(self.loaded, benchmark, item, budget, thinking)

    def pair(self, benchmark: Benchmark, settings: Any, item: Item, row: dict[str, Any],
             budget: int) -> dict[str, Any]:
        """Search one failure's pair, reusing one PairFinder per settings (its prefix caches survive between items)."""
        from failtrace.failures.pairs import PairFinder

        key = repr(settings)
        if key not in self._finders:
            self._finders[key] = PairFinder(self.loaded, settings, self.helper)
        return pair_item(self._finders[key], benchmark, item, row, budget)

    def fingerprint(self) -> str:
        """The loaded model's content fingerprint (analysis runs and case ids hash it)."""
        from failtrace.models.fingerprint import model_fingerprint

        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.loaded)
        return self._fingerprint

    def analyse(self, settings: Any, pair_row: dict[str, Any], item: Item, generation: dict[str, Any],
                fingerprint: str, analysis_id: str) -> dict[str, Any]:
        """One case. The LRP rules are installed on this actor's own model copy for each pass (actors run one
        call at a time, so two cases never share a patched model)."""
        return analyse_item(self.loaded, settings, pair_row, item, generation, fingerprint, analysis_id)
