"""Failure collection: greedy generation on benchmark items, checked by the benchmark's own checker.

For each item: the prompt is rendered with the model's chat template (thinking off unless asked), the model decodes
greedily up to ``max_new_tokens``, the completion (token ids exactly as generated, and its text) is checked, and
generation + verdict are committed to the results store in one transaction. A rerun of the same command finds the
same run (its id hashes model, revision, dtype, benchmark, budget and thinking mode) and only does the items that
have no committed result yet, so an interrupted collection resumes where it stopped.

``batch_size > 1`` decodes several prompts at once with left padding (:func:`greedy_generate`). In exact arithmetic
the tokens are the same as unbatched decoding (the tests check it in float64); in float32 a padded batch can differ
from batch 1 in the last bits and flip a near-tie, so the default is 1 for reproducible records. A killed batched
run loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from failtrace.benchmarks.base import Benchmark, Item, Verdict
from failtrace.benchmarks.registry import register_benchmark, resolve_benchmark  # re-exported: one registry
from failtrace.errors import FailtraceError
from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate, pad_token_id
from failtrace.store.schema import VERDICT_STATUSES
from failtrace.store.store import GenerationRecord, ResultsStore, RunRecord


def safe_check(benchmark: Benchmark, item: Item, completion: str) -> Verdict:
    """Run the checker; a checker that crashes or answers nonsense gives ``unverifiable`` with the reason."""
    try:
        verdict = benchmark.check(item, completion)
    except Exception as exc:  # a checker bug must not end a long run, nor count as pass or fail
        return Verdict("unverifiable", [f"checker raised {type(exc).__name__}: {str(exc)[:300]}"])
    if not isinstance(verdict, Verdict) or verdict.status not in VERDICT_STATUSES:
        return Verdict("unverifiable", [f"checker returned {verdict!r}, not a Verdict with a pass/fail status"])
    return verdict


def library_versions() -> dict[str, str]:
    """Versions recorded in every run next to the model's own description."""
    import duckdb
    import numpy
    import torch
    import transformers

    from failtrace import __version__

    return {"failtrace": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "duckdb": duckdb.__version__, "numpy": numpy.__version__,
            "platform": platform.platform()}


def _run_id(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def collect_run_record(loaded: Any, benchmark: str, max_new_tokens: int, thinking: bool, seed: int = 0,
                       data: str | None = None, batch_size: int = 1) -> RunRecord:
    """The run record of a collection; its id depends only on what changes the generations."""
    key = {"stage": "collect", "model": loaded.name, "source": loaded.source, "revision": loaded.revision,
           "dtype": loaded.dtype, "benchmark": benchmark, "max_new_tokens": int(max_new_tokens),
           "thinking": bool(thinking)}
    described = loaded.describe() if hasattr(loaded, "describe") else {}
    settings = {"max_new_tokens": int(max_new_tokens), "thinking": bool(thinking), "decoding": "greedy",
                "chat_template": True, "batch_size": int(batch_size), "model_info": described}
    return RunRecord(run_id=_run_id(key), stage="collect", benchmark=benchmark, model=loaded.name,
                     model_source=loaded.source, revision=loaded.revision, dtype=loaded.dtype, device=loaded.device,
                     seed=seed, versions=library_versions(), settings=settings, data=data)


@dataclass
class CollectSummary:
    """What one ``collect`` call did."""

    run_id: str
    items: int  # items this call was asked to do
    skipped: int  # already committed by an earlier call
    generated: int  # committed by this call
    passed: int
    failed: int
    unverifiable: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def items_per_minute(self) -> float:
        return 60.0 * self.generated / self.seconds if self.seconds > 0 else 0.0


def collect(
    store: ResultsStore,
    benchmark: Benchmark,
    items: Sequence[Item],
    loaded: Any,
    *,
    max_new_tokens: int | None = None,
    thinking: bool = False,
    batch_size: int = 1,
    seed: int = 0,
    data: str | None = None,
    progress: bool = True,
    on_item: Callable[[Item, GenerationRecord, Verdict], None] | None = None,
) -> CollectSummary:
    """Generate greedily for every item not yet done in this run, check it, and commit each result.

    ``loaded`` is a :class:`~failtrace.models.LoadedModel`. ``on_item`` is called after each commit.
    """
    from failtrace.models.chat import apply_chat_template

    if batch_size < 1:
        raise FailtraceError(f"--batch-size must be at least 1, got {batch_size}")
    budget = int(max_new_tokens if max_new_tokens is not None else benchmark.max_new_tokens)
    if budget < 1:
        raise FailtraceError(f"--max-new-tokens must be at least 1, got {budget}")
    t0 = time.perf_counter()
    run = collect_run_record(loaded, benchmark.name, budget, thinking, seed, data, batch_size)
    store.ensure_run(run)
    store.add_items(run.run_id, benchmark.name, list(items))
    done = store.done_item_ids(run.run_id)
    todo = [it for it in items if it.id not in done]
    summary = CollectSummary(run_id=run.run_id, items=len(items), skipped=len(items) - len(todo), generated=0,
                             passed=0, failed=0, unverifiable=0, seconds=0.0)
    eos = eos_token_ids(loaded.model, loaded.tokenizer)
    pad = pad_token_id(loaded.tokenizer, eos)
    prompts = {it.id: apply_chat_template(loaded.tokenizer, it.prompt, thinking=thinking) for it in todo}
    if batch_size > 1:  # similar lengths together: less padding
        todo = sorted(todo, key=lambda it: len(prompts[it.id]))
    bar = _progress(progress, f"collect {benchmark.name}", len(todo))
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            tg = time.perf_counter()
            outs = greedy_generate(loaded.model, [prompts[it.id] for it in batch], budget, eos, pad)
            per_item = (time.perf_counter() - tg) / len(batch)
            for it, out in zip(batch, outs, strict=True):
                text = decode_completion(loaded.tokenizer, out.token_ids, eos)
                gen = GenerationRecord(prompt_ids=prompts[it.id], token_ids=out.token_ids, completion=text,
                                       finish_reason=out.finish_reason, seconds=per_item)
                tc = time.perf_counter()
                verdict = safe_check(benchmark, it, text)
                if store.write_result(run.run_id, it, gen, verdict, time.perf_counter() - tc):
                    summary.generated += 1
                    if verdict.status == "pass":
                        summary.passed += 1
                    elif verdict.status == "fail":
                        summary.failed += 1
                    else:
                        summary.unverifiable += 1
                if on_item is not None:
                    on_item(it, gen, verdict)
                bar.advance()
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


class _Bar:
    """A rich progress bar on stderr (or nothing, when progress is off)."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self._progress = None
        if enabled and total > 0:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                                      transient=False)
            self._progress.start()
            self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def describe(self, text: str) -> None:
        """Change the bar's label (cases/analyse.py names the item in flight; main removed this as dead code)."""
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _progress(enabled: bool, description: str, total: int) -> _Bar:
    return _Bar(enabled, description, total)
