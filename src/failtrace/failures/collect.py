"""Failure collection: greedy generation on benchmark items, checked by the benchmark's own checker.

For each item: the prompt is rendered with the model's chat template (thinking off unless asked), the model decodes
greedily up to ``max_new_tokens``, the completion (token ids exactly as generated, and its text) is checked, and
generation + verdict are committed to the results store in one transaction. A rerun of the same command finds the
same run (its id hashes model, revision, dtype, benchmark, budget and thinking mode) and only does the items that
have no committed result yet, so an interrupted collection resumes where it stopped.

``batch_size > 1`` decodes several prompts at once with left padding (:func:`greedy_generate`). In exact arithmetic
the tokens are the same as unbatched decoding (the tests check it in float64); in float32 a padded batch can differ
from batch 1 in the last bits and flip a near-tie, so the default is 1 for reproducible records. A killed batched
run loses at most the uncommitted items of the batch in flight (up to ``batch_size``); batches are cut over all the
items before the done ones are skipped, so a resume with the same items and batch size decodes the same batches
and its records equal an uninterrupted run's (see :func:`_batches`).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from failtrace.benchmarks.base import Benchmark, Item, Verdict, checker_options
from failtrace.benchmarks.registry import register_benchmark, resolve_benchmark  # re-exported: one registry
from failtrace.errors import FailtraceError
from failtrace.failures.generation import Generated, decode_completion, eos_token_ids, greedy_generate, pad_token_id
from failtrace.models.limits import context_length
from failtrace.progress import progress_bar
from failtrace.store.records import FINISH_CONTEXT, run_id_of
from failtrace.store.schema import VERDICT_STATUSES
from failtrace.store.store import GenerationRecord, ResultsStore, RunRecord


def safe_check(benchmark: Benchmark, item: Item, completion: str) -> Verdict:
    """Run the checker on the answer (a thinking block left out: :func:`~failtrace.benchmarks.base.
    without_thinking`); a checker that crashes or answers nonsense gives ``unverifiable`` with the reason."""
    from failtrace.benchmarks.base import without_thinking

    try:
        verdict = benchmark.check(item, without_thinking(completion))
    except Exception as exc:  # a checker bug must not end a long run, nor count as pass or fail
        return Verdict("unverifiable", [f"checker raised {type(exc).__name__}: {str(exc)[:300]}"])
    if not isinstance(verdict, Verdict) or verdict.status not in VERDICT_STATUSES:
        return Verdict("unverifiable", [f"checker returned {verdict!r}, not a Verdict with a pass/fail status"])
    return verdict


def finish_item(tokenizer: Any, benchmark: Benchmark, item: Item, prompt_ids: list[int], out: Generated,
                eos: frozenset[int], seconds: float) -> tuple[GenerationRecord, Verdict, float]:
    """Decode one generated completion and check it: the per-item record, shared by the serial and Ray paths."""
    text = decode_completion(tokenizer, out.token_ids, eos)
    gen = GenerationRecord(prompt_ids=prompt_ids, token_ids=out.token_ids, completion=text,
                           finish_reason=out.finish_reason, seconds=seconds)
    t = time.perf_counter()
    verdict = safe_check(benchmark, item, text)
    return gen, verdict, time.perf_counter() - t




def render_prompt(tokenizer: Any, item: Item, thinking: bool) -> list[int]:
    """``item``'s prompt through the chat template, as every collection path renders it; a template that refuses
    its messages is a FailtraceError naming the item."""
    from failtrace.models.chat import apply_chat_template

    try:
        return apply_chat_template(tokenizer, item.prompt, thinking=thinking)
    except FailtraceError as exc:
        raise FailtraceError(f"item {item.id!r}: {exc}") from None


def first_refused_prompt(tokenizer: Any, items: Sequence[Item], thinking: bool) -> str | None:
    """The error of the first of ``items`` whose prompt the chat template refuses, else None (a Ray worker answers
    this for the driver, which holds no tokenizer, before the run is recorded)."""
    for it in items:
        try:
            render_prompt(tokenizer, it, thinking)
        except FailtraceError as exc:
            return str(exc)
    return None


def over_window(prompt_ids: list[int], window: int | None) -> tuple[GenerationRecord, Verdict] | None:
    """The record of an item whose prompt alone fills the model's context window, or None when it fits. Such an
    item is not generated: every answer token would sit at positions the model never saw (a 17,548-token agent
    trace on SmolLM2's 8,192 was stored as an ordinary, garbled failure), so its verdict is ``unverifiable``."""
    if window is None or len(prompt_ids) < window:
        return None
    gen = GenerationRecord(prompt_ids=prompt_ids, token_ids=[], completion="", finish_reason=FINISH_CONTEXT)
    return gen, Verdict("unverifiable", [f"the prompt is {len(prompt_ids)} tokens, which fills the model's context "
                                         f"window of {window}; not generated"])


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


def collect_run_record(loaded: Any, benchmark: str, max_new_tokens: int, thinking: bool, seed: int = 0,
                       data: str | None = None, batch_size: int = 1,
                       checker: dict[str, Any] | None = None) -> RunRecord:
    """The run record of a collection; its id depends only on what changes the generations or their verdicts
    (``checker``: the benchmark's non-default checker options, e.g. IFEval's loose mode; none keeps older ids)."""
    key = {"stage": "collect", "model": loaded.name, "source": loaded.source, "revision": loaded.revision,
           "dtype": loaded.dtype, "benchmark": benchmark, "max_new_tokens": int(max_new_tokens),
           "thinking": bool(thinking)}
    described = loaded.describe() if hasattr(loaded, "describe") else {}
    settings = {"max_new_tokens": int(max_new_tokens), "thinking": bool(thinking), "decoding": "greedy",
                "chat_template": True, "batch_size": int(batch_size), "model_info": described}
    if checker:
        key["checker"] = settings["checker"] = dict(checker)
    return RunRecord(run_id=run_id_of(key), stage="collect", benchmark=benchmark, model=loaded.name,
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
    # the run id depends on the model and generation settings, not the data: a call with another --data file goes
    # on in the same run. Then: the run's first data file (this call's items are added to it); else None.
    more_data: str | None = None
    # a run resumed with another --batch-size: the one it began with (recorded in settings["resumed_with"]); else None
    first_batch_size: int | None = None
    not_generated: int = 0  # of ``generated``: committed unverifiable, the prompt filling the context window

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count(self, status: str, finish_reason: str = "") -> None:
        """Count one newly committed item with verdict ``status`` (finish reason ``context``: not generated)."""
        self.generated += 1
        self.not_generated += finish_reason == FINISH_CONTEXT
        if status == "pass":
            self.passed += 1
        elif status == "fail":
            self.failed += 1
        else:
            self.unverifiable += 1

def weights_fingerprint(model: Any) -> str | None:
    """The content fingerprint of a loaded model (a described one carries its worker's), None when unknown."""
    known = getattr(model, "content_fingerprint", None)
    if known is None and hasattr(model, "model") and hasattr(model, "tokenizer"):
        from failtrace.models.fingerprint import model_fingerprint

        known = model_fingerprint(model)
    return known


def same_weights(store: ResultsStore, run: RunRecord, fingerprint: str | None) -> bool:
    """Refuse to go on with a run whose generations came from other weights under the same name and settings (the
    run id depends on the model's name and source, not its weights: a folder trained again in place added the new
    model's answers to the old model's run, without a word). True when the caller is to record this fingerprint on
    the run once it goes on: a run recorded before runs kept one, or one begun under other library versions.

    The fingerprint hashes the config and tokenizer as the installed transformers writes them (4.x and 5.x differ),
    so under other versions than those that computed the recorded one (``settings["fingerprint_versions"]``, else the
    run's own) a difference proves nothing: the run goes on, and its fingerprint now is recorded for the next resume
    (an upgrade never locks a store's runs)."""
    if fingerprint is None:
        return False
    keys = ("transformers", "torch", "failtrace")
    now = {k: run.versions.get(k) for k in keys}
    run.settings["model_fingerprint"] = fingerprint
    run.settings["fingerprint_versions"] = now  # the libraries that computed it
    prior = store.get_run(run.run_id)
    settings = (prior.settings or {}) if prior is not None else {}
    had = settings.get("model_fingerprint")
    then = (settings.get("fingerprint_versions") or {k: (prior.versions or {}).get(k) for k in keys}) if prior else {}
    if had is not None and had != fingerprint:
        if then != now:  # other libraries computed it: a difference proves nothing
            return True
        raise FailtraceError(f"run {run.run_id} of {run.model} was collected from other weights (content "
                             f"fingerprint {had[:12]}, now {fingerprint[:12]}): the model's files changed since; "
                             "collect into another --store, or load the weights the run began with")
    return prior is not None and had is None


def start_run(store: ResultsStore, run: RunRecord, items: Sequence[Item], stored: dict[str, str]) -> str | None:
    """Record ``run`` (once) and the items it covers. A run resumed with another data file gets that file appended to
    its ``settings["more_data"]`` (the run's ``data`` stays the first file), and the first file is returned so the
    caller can say so; None otherwise. ``stored``: what ``store.check_items`` returned for ``items`` (the caller
    checks them before it records anything)."""
    prior = store.get_run(run.run_id)
    store.ensure_run(run)
    store.add_items(run.run_id, run.benchmark, list(items), checked=stored)
    if prior is None or prior.data is None or run.data is None or _same_data(prior.data, run.data):
        return None
    if not any(_same_data(d, run.data) for d in (prior.settings or {}).get("more_data", [])):
        store.append_run_setting(run.run_id, "more_data", run.data)
    return prior.data


def resumed_batch_size(store: ResultsStore, run: RunRecord, todo: Sequence[Item]) -> int | None:
    """The batch size run ``run`` began with, when this call decodes its remaining ``todo`` with another one (recorded
    in ``settings["resumed_with"]``): padded batches of other sizes can differ from the first call's in a logit's last
    bits, which can change a greedy token, so the caller says so. None when nothing is left or the size is the same."""
    stored = store.get_run(run.run_id)
    first = int(((stored.settings if stored else None) or {}).get("batch_size", 1))
    now = int(run.settings.get("batch_size", 1))
    if not todo or first == now:
        return None
    store.append_run_setting(run.run_id, "resumed_with", {"batch_size": now, "items": len(todo)})
    return first


def _same_data(a: str, b: str) -> bool:
    """Whether two --data values name the same source: one file however its path is written (``./x.jsonl``, an
    absolute path, a link), the built-in items however named (``failtrace demo`` records ``builtin:demo``, `collect
    --data builtin` says ``builtin``: a rerun was told it added another file), else the same text (a hub dataset
    id, or a file no longer there)."""
    if all(x.strip().lower().partition(":")[0] == "builtin" for x in (a, b)):
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return a == b


def check_budget(budget: int, model: str, window: int | None, given: bool, benchmark: str) -> None:
    """A generation budget beyond the model's context window (its config's position limit) is refused: the model
    never saw such positions, and an item that never stops would run for hours. ``given``: from --max-new-tokens
    (else the benchmark's default budget, named as such)."""
    if window is not None and budget > window:
        what = "--max-new-tokens" if given else f"the {benchmark} default budget"
        raise FailtraceError(f"{what} {budget} is more than {model}'s context window ({window} tokens); give "
                             f"--max-new-tokens {window} or less (the prompt shares the window)")


def run_budget(benchmark: Benchmark, max_new_tokens: int | None) -> int:
    """The run's token budget: ``--max-new-tokens`` or the benchmark's own (checked before any model is loaded)."""
    budget = int(max_new_tokens if max_new_tokens is not None else benchmark.max_new_tokens)
    if budget < 1:
        raise FailtraceError(f"--max-new-tokens must be at least 1, got {budget}")
    return budget


def open_run(store: ResultsStore, benchmark: Benchmark, items: Sequence[Item], model: Any, window: int | None,
             thinking_mode: bool, budget: int, budget_given: bool, *, thinking: bool, seed: int, data: str | None,
             batch_size: int, prepare: Callable[[list[Item]], None] | None = None,
             ) -> tuple[RunRecord, list[Item], CollectSummary]:
    """What a collect call does before decoding, in-process or on Ray (``model`` is a loaded or described model):
    check ``--thinking`` and the budget against the model, and run ``prepare`` on the items still to do (the serial
    path renders their prompts), all before a run is recorded (a refusal leaves the store as it was); then record the
    run and its items, and return the items it still has to do with the summary so far."""
    from failtrace.models.chat import check_thinking

    check_thinking(thinking_mode, model.name, thinking)
    check_budget(budget, model.name, window, budget_given, benchmark.name)
    run = collect_run_record(model, benchmark.name, budget, thinking, seed, data, batch_size,
                             checker_options(benchmark))
    unrecorded = same_weights(store, run, weights_fingerprint(model))
    done = store.done_item_ids(run.run_id)
    todo = [it for it in items if it.id not in done]
    stored = store.check_items(benchmark.name, items)  # the cheap checks first
    if prepare is not None:
        prepare(todo)
    more_data = start_run(store, run, items, stored)
    if unrecorded:
        for key in ("model_fingerprint", "fingerprint_versions"):
            store.set_run_setting(run.run_id, key, run.settings[key])
    summary = CollectSummary(run_id=run.run_id, items=len(items), skipped=len(items) - len(todo), generated=0,
                             passed=0, failed=0, unverifiable=0, seconds=0.0, more_data=more_data,
                             first_batch_size=resumed_batch_size(store, run, todo))
    return run, todo, summary


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
    from failtrace.models.chat import has_thinking_mode

    if batch_size < 1:
        raise FailtraceError(f"--batch-size must be at least 1, got {batch_size}")
    budget = run_budget(benchmark, max_new_tokens)
    t0 = time.perf_counter()
    window = context_length(getattr(loaded, "model", None))
    rendered: dict[str, np.ndarray] = {}  # int32: a list of Python ints per long trace would take ~30x the memory

    def render(todo: list[Item]) -> None:  # every prompt to decode (batches are cut over all items), before the run
        for it in items if batch_size > 1 else todo:
            rendered[it.id] = np.asarray(render_prompt(loaded.tokenizer, it, thinking), dtype=np.int32)

    run, todo, summary = open_run(store, benchmark, items, loaded, window,
                                  has_thinking_mode(loaded.tokenizer), budget, max_new_tokens is not None,
                                  thinking=thinking, seed=seed, data=data, batch_size=batch_size, prepare=render)
    done = {it.id for it in items} - {it.id for it in todo}
    eos = eos_token_ids(loaded.model, loaded.tokenizer)
    pad = pad_token_id(loaded.tokenizer, eos)
    batches = _batches(items if batch_size > 1 else todo, done, batch_size, lambda it: rendered[it.id].tolist(),
                       lambda it: len(rendered[it.id]))
    bar = progress_bar(progress, f"collect {benchmark.name}", len(todo))
    try:
        for whole, prompts in batches:
            long = {it.id: over_window(prompts[it.id], window) for it in whole}
            batch = [it for it in whole if long[it.id] is None]
            tg = time.perf_counter()
            outs = greedy_generate(loaded.model, [prompts[it.id] for it in batch], budget, eos, pad,
                                   window=window) if batch else []
            per_item = (time.perf_counter() - tg) / max(len(batch), 1)
            done_now = dict(zip([it.id for it in batch], outs, strict=True))
            for it in whole:
                if it.id in done:  # regenerated only to keep the batch as it was; its record is committed
                    continue
                skipped = long[it.id]
                gen, verdict, check_seconds = (*skipped, 0.0) if skipped else finish_item(
                    loaded.tokenizer, benchmark, it, prompts[it.id], done_now[it.id], eos, per_item)
                if store.write_result(run.run_id, it, gen, verdict, check_seconds):
                    summary.count(verdict.status, gen.finish_reason)
                if on_item is not None:
                    on_item(it, gen, verdict)
                bar.advance()
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _batches(items: Sequence[Item], done: set[str], batch_size: int, render: Callable[[Item], list[int]],
             size: Callable[[Item], int]) -> Iterator[tuple[list[Item], dict[str, list[int]]]]:
    """The batches to decode, with their prompt ids: those of ``items`` that hold an item not ``done``.

    With ``batch_size > 1`` the items are sorted by prompt length (less padding) and cut into batches *before*
    the done ones are dropped, so a resumed run decodes exactly the batches an uninterrupted run decodes: padding
    changes float rounding, and a regrouped batch could flip a near-tie. A batch cut by a kill is decoded again in
    full (its committed items are skipped), so at most ``batch_size - 1`` items are decoded twice per resume.
    """
    if batch_size == 1:
        for it in items:
            if it.id not in done:
                yield [it], {it.id: render(it)}
        return
    sizes = {it.id: size(it) for it in items}  # only the batch in hand is held as lists
    ordered = sorted(items, key=lambda it: sizes[it.id])  # stable: ties keep the data order
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start:start + batch_size]
        if any(it.id not in done for it in batch):
            yield batch, {it.id: render(it) for it in batch}
