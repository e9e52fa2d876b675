"""Target/contrast pairs with strict recovery: where did a failed completion go wrong, and what would have fixed it?

The search, for one failed item with prompt ids ``P`` (n tokens) and completion ids ``C`` (m tokens, exactly as
generated, EOS included when the model stopped):

1. The stored completion is checked again; if the checker no longer says ``fail`` (a flaky checker) the case is
   ``unverifiable``: recoveries measured against it would mean nothing.
2. One forward pass over ``P + C[:W-1]`` gives the KV cache and the model's next-token logits at every walked
   position, where ``W = min(m, max_positions)``. Nothing before a position is ever recomputed.
3. For p = 0, 1, ..., W-1 (completion offsets; the EOS position is walked too: continuing instead of stopping is an
   alternative like any other): the model's own token there is the *target* candidate ``C[p]``. Its top-k
   alternatives are the k highest-logit tokens other than ``C[p]``. Each one is forced after ``P + C[:p]`` and decoding
   continues greedily with the model, with the collection's budget (the rollout's completion ``C[:p] + [a] + ...`` has
   at most ``max_new_tokens`` tokens). The k rollouts share the prefix cache (sliced to ``n + p`` positions, expanded
   to k rows) and are decoded as one batch without padding. Rollouts are checked in rank order; the first that passes
   is the *contrast*. With a helper model (same tokenizer required), when none of the model's own alternatives
   recovers at p, the helper's top-k at p (computed once for all positions by one helper forward pass; tokens already
   tried are skipped) are rolled out the same way, still continued by the model being explained.
4. The first position with a recovering alternative is the failure point; the walk stops there. The preference is
   ``Δℓ = logit(target) − logit(contrast)`` from the model's logits at p (≥ 0, since the target is greedy's argmax).

Statuses: every failure ends with exactly one, decided in this order:

``unverifiable``
    the stored completion is no longer judged ``fail`` by the checker, or a rollout that could have been the
    answer (checked before the decision) was ``unverifiable``: the first recovering position is then unknown.
``unbounded``
    the completion hit the ``max_new_tokens`` limit (finish reason ``length``): the failure may be an artefact of the
    budget. The search still runs (unless switched off) and any target/contrast found is recorded for reference.
``clean``
    a recovering contrast was found and ``Δℓ > min_delta``.
``weak_preference``
    a recovering contrast was found but ``Δℓ ≤ min_delta``: the model barely preferred its token.
``no_contrast``
    a helper model was given and neither the model's nor the helper's top-k recovers at any walked position: even a
    stronger model's candidates cannot supply a contrast token.
``no_target``
    no helper model was given and no alternative in the model's own top-k recovers at any walked position: no single
    token choice of the model can be named as the failure point.

Cost bound: at most ``W · k`` rollouts (``2·W·k`` with a helper), each at most ``max_new_tokens - p`` tokens. The walk
is capped at ``max_positions`` (default 64) completion positions: a failure whose first recoverable position lies
beyond the cap is reported as ``no_target``/``no_contrast`` with the cap named in its reason.
``rollouts`` counts sequences decoded; ``checks`` counts checker calls (rollouts are checked in rank order and
checking stops at the first pass).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from failtrace.benchmarks.base import Benchmark, Item
from failtrace.errors import FailtraceError
from failtrace.failures.collect import _progress, library_versions, resolve_benchmark, safe_check
from failtrace.failures.generation import (
    FINISH_LENGTH,
    decode_completion,
    eos_token_ids,
    finish_reason,
    prefix_forward,
    rollouts,
)
from failtrace.store.schema import PAIR_STATUSES
from failtrace.store.store import ResultsStore, RunRecord


@dataclass
class PairSettings:
    """Knobs of the pair search (all of them are part of the pair run's identity)."""

    top_k: int = 10
    min_delta: float = 1.0
    max_positions: int = 64
    try_unbounded: bool = True
    rollout_batch_size: int | None = None  # rollouts decoded together (default: all k at once)

    def validate(self) -> None:
        if self.top_k < 1:
            raise FailtraceError(f"--top-k must be at least 1, got {self.top_k}")
        if self.max_positions < 1:
            raise FailtraceError(f"--max-positions must be at least 1, got {self.max_positions}")
        if self.rollout_batch_size is not None and self.rollout_batch_size < 1:
            raise FailtraceError(f"--rollout-batch-size must be at least 1, got {self.rollout_batch_size}")

    def identity(self) -> dict[str, Any]:
        """What changes the results (the rollout batch size only changes speed)."""
        return {"top_k": self.top_k, "min_delta": float(self.min_delta), "max_positions": self.max_positions,
                "try_unbounded": self.try_unbounded}


@dataclass
class PairResult:
    """The outcome of the pair search for one failure (one row of the ``pairs`` table)."""

    status: str
    reason: str = ""
    position: int | None = None  # index of the target token in the full sequence prompt + completion
    completion_offset: int | None = None  # the same position counted from the completion's first token
    target_id: int | None = None
    target_text: str | None = None
    contrast_id: int | None = None
    contrast_text: str | None = None
    contrast_source: str | None = None  # "model" or "helper"
    contrast_rank: int | None = None  # 1-based rank among its source's alternatives (target excluded)
    contrast_model_rank: int | None = None  # 1-based rank under the model's logits (target excluded)
    target_logit: float | None = None
    contrast_logit: float | None = None
    delta_logit: float | None = None
    recovered_completion: str | None = None
    rollouts: int = 0
    checks: int = 0
    positions_walked: int = 0
    unverifiable_rollouts: int = 0
    hit_length_limit: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    seconds_prefix: float = 0.0
    seconds_rollouts: float = 0.0
    seconds_check: float = 0.0

    @property
    def found(self) -> bool:
        """A recovering contrast was found (whatever the final status)."""
        return self.contrast_id is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairResult:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def visible(token: str) -> str:
    """A decoded token with its whitespace shown (space '·', newline '↵', tab '→'), for messages."""
    return token.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when two tokenizers map every token string to the same id."""
    if a is b:
        return True
    try:
        return bool(a.get_vocab() == b.get_vocab())
    except Exception:  # pragma: no cover - exotic tokenizers
        return False


@dataclass
class _Search:
    """Mutable counters of one search."""

    rollouts: int = 0
    checks: int = 0
    unverifiable: int = 0
    seconds_rollouts: float = 0.0
    seconds_check: float = 0.0
    notes: list[str] = field(default_factory=list)


class PairFinder:
    """Finds target/contrast pairs for the failures of one model (see the module docstring for the algorithm)."""

    def __init__(self, loaded: Any, settings: PairSettings | None = None, helper: Any | None = None) -> None:
        self.loaded = loaded
        self.settings = settings or PairSettings()
        self.settings.validate()
        self.helper = helper
        if helper is not None and not same_tokenizer(loaded.tokenizer, helper.tokenizer):
            raise FailtraceError(
                f"--helper-model {helper.name} uses a different tokenizer than {loaded.name} (their vocabularies "
                f"differ); the helper must share the model's tokenizer so its tokens can be forced into the model"
            )
        self.eos = eos_token_ids(loaded.model, loaded.tokenizer)

    def _token_text(self, token_id: int) -> str:
        return str(self.loaded.tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False))

    def _try(self, benchmark: Benchmark, item: Item, prefix: list[int], kv: Any, prefix_length: int,
             candidates: list[int], budget: int, search: _Search) -> tuple[int, int, str] | None:
        """Roll out every candidate; return (token, 1-based rank, text) of the best-ranked recovering one."""
        if not candidates:
            return None
        t = time.perf_counter()
        seqs = rollouts(self.loaded.model, kv, prefix_length, candidates, budget, self.eos,
                        self.settings.rollout_batch_size)
        search.seconds_rollouts += time.perf_counter() - t
        search.rollouts += len(candidates)
        for rank, (cand, seq) in enumerate(zip(candidates, seqs, strict=True), start=1):
            text = decode_completion(self.loaded.tokenizer, prefix + seq, self.eos)
            t = time.perf_counter()
            verdict = safe_check(benchmark, item, text)
            search.seconds_check += time.perf_counter() - t
            search.checks += 1
            if verdict.status == "pass":
                return cand, rank, text
            if verdict.status == "unverifiable":
                search.unverifiable += 1
        return None

    def find(self, benchmark: Benchmark, item: Item, prompt_ids: Sequence[int], completion_ids: Sequence[int],
             max_new_tokens: int, finish: str | None = None) -> PairResult:
        """Search the failure point of one failed completion; always returns a result with one status."""
        import torch

        t0 = time.perf_counter()
        prompt = [int(t) for t in prompt_ids]
        comp = [int(t) for t in completion_ids]
        n, m = len(prompt), len(comp)
        finish = finish or finish_reason(comp, self.eos)
        unbounded = finish == FINISH_LENGTH
        res = PairResult(status="no_target", prompt_tokens=n, completion_tokens=m, hit_length_limit=unbounded)
        search = _Search()

        def done(status: str, reason: str) -> PairResult:
            res.status, res.reason = status, reason
            res.rollouts, res.checks, res.unverifiable_rollouts = search.rollouts, search.checks, search.unverifiable
            res.seconds_rollouts, res.seconds_check = search.seconds_rollouts, search.seconds_check
            res.seconds = time.perf_counter() - t0
            assert status in PAIR_STATUSES
            return res

        text = decode_completion(self.loaded.tokenizer, comp, self.eos)
        t = time.perf_counter()
        verdict = safe_check(benchmark, item, text)
        search.seconds_check += time.perf_counter() - t
        search.checks += 1
        if verdict.status != "fail":
            why = "; ".join(verdict.reasons)[:300]
            return done("unverifiable", f"the checker now says {verdict.status!r} for the stored completion, not "
                                        f"'fail'{': ' + why if why else ''}; recoveries against it would mean nothing")
        if unbounded and not self.settings.try_unbounded:
            return done("unbounded", f"the completion hit the {max_new_tokens}-token limit; search skipped")
        k = self.settings.top_k
        walk = min(m, self.settings.max_positions)
        if walk == 0:
            return done("unbounded" if unbounded else "no_target", "the completion is empty: no position to walk")

        t = time.perf_counter()
        state = prefix_forward(self.loaded.model, prompt + comp[:walk - 1], n_logits=walk)
        helper_top: list[list[int]] | None = None
        if self.helper is not None:
            hstate = prefix_forward(self.helper.model, prompt + comp[:walk - 1], n_logits=walk, keep_cache=False)
            helper_top = torch.topk(hstate.logits, min(k + 1, hstate.logits.shape[-1]), dim=-1).indices.tolist()
        model_top = torch.topk(state.logits, min(k + 1, state.logits.shape[-1]), dim=-1).indices.tolist()
        vocab = int(state.logits.shape[-1])  # a helper with a padded embedding may rank ids the model lacks
        res.seconds_prefix = time.perf_counter() - t

        found: tuple[int, int, str] | None = None
        source = "model"
        p = 0
        for p in range(walk):
            target = comp[p]
            budget = max_new_tokens - p
            if budget < 1:
                break
            res.positions_walked = p + 1
            cands = [c for c in model_top[p] if c != target][:k]
            found = self._try(benchmark, item, comp[:p], state.kv, n + p, cands, budget, search)
            if found is None and helper_top is not None:
                tried = set(cands)
                ranked = [c for c in helper_top[p] if c != target and c < vocab][:k]
                extra = [c for c in ranked if c not in tried]
                found = self._try(benchmark, item, comp[:p], state.kv, n + p, extra, budget, search)
                if found is not None:
                    found = (found[0], ranked.index(found[0]) + 1, found[2])
                    source = "helper"
            if found is not None:
                break

        if found is not None:
            contrast, rank, recovered = found
            row = state.logits[p]
            target = comp[p]
            res.position, res.completion_offset = n + p, p
            res.target_id, res.target_text = target, self._token_text(target)
            res.contrast_id, res.contrast_text = contrast, self._token_text(contrast)
            res.contrast_source, res.contrast_rank = source, rank
            higher = int((row > row[contrast]).sum()) - int(bool(row[target] > row[contrast]))
            res.contrast_model_rank = higher + 1
            res.target_logit, res.contrast_logit = float(row[target]), float(row[contrast])
            res.delta_logit = res.target_logit - res.contrast_logit
            res.recovered_completion = recovered
            where = (f"at completion offset {p} (sequence position {n + p}): target '{visible(res.target_text)}' -> "
                     f"contrast '{visible(res.contrast_text)}' ({source} rank {rank}), Δℓ = {res.delta_logit:.3f}")
            if unbounded:
                return done("unbounded", f"the completion hit the {max_new_tokens}-token limit; a recovery was "
                                         f"found {where}")
            if search.unverifiable:
                return done("unverifiable", f"{search.unverifiable} rollout(s) checked before the recovery {where} "
                                            f"could not be verified, so it may not be the first recovering choice")
            if res.delta_logit > self.settings.min_delta:
                return done("clean", f"recovered {where}")
            return done("weak_preference", f"recovered {where}, but Δℓ <= min-delta {self.settings.min_delta}")

        capped = walk < m
        scope = (f"the first {walk} of {m} completion positions (capped by max-positions "
                 f"{self.settings.max_positions})" if capped else f"all {m} completion positions")
        if unbounded:
            return done("unbounded", f"the completion hit the {max_new_tokens}-token limit and no alternative "
                                     f"recovered in {scope}")
        if search.unverifiable:
            return done("unverifiable", f"no recovery in {scope}, but {search.unverifiable} rollout(s) could not "
                                        f"be verified")
        if self.helper is not None:
            return done("no_contrast", f"no alternative in the top-{k} of {self.loaded.name} or of helper "
                                       f"{self.helper.name} recovers in {scope}")
        return done("no_target", f"no alternative in the model's top-{k} recovers in {scope}")


# ---- the pairs stage over a results store ------------------------------------------------------------------------


@dataclass
class PairsSummary:
    """What one ``pairs`` call did."""

    pair_run_ids: list[str] = field(default_factory=list)
    failures: int = 0  # failures considered by this call
    skipped: int = 0  # already paired by an earlier call
    processed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rollouts: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pair_run_record(collect_run: RunRecord, loaded: Any, settings: PairSettings, helper: Any | None) -> RunRecord:
    """The record of a pair-finding run over ``collect_run``; its id hashes the run and the search settings."""
    helper_key = None if helper is None else {"model": helper.name, "source": helper.source,
                                              "revision": helper.revision, "dtype": helper.dtype}
    key = {"stage": "pairs", "parent": collect_run.run_id, "helper": helper_key, **settings.identity()}
    run_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    settings_d = {**settings.identity(), "rollout_batch_size": settings.rollout_batch_size,
                  "helper_model": None if helper is None else helper.name,
                  "helper_info": None if helper is None else helper.describe(),
                  "model_info": loaded.describe() if hasattr(loaded, "describe") else {},
                  "max_new_tokens": collect_run.settings.get("max_new_tokens")}
    return RunRecord(run_id=run_id, stage="pairs", parent_run_id=collect_run.run_id,
                     benchmark=collect_run.benchmark, model=collect_run.model, model_source=loaded.source,
                     revision=loaded.revision, dtype=loaded.dtype, device=loaded.device, seed=collect_run.seed,
                     versions=library_versions(), settings=settings_d, data=collect_run.data)


def collection_runs(store: ResultsStore, run_ids: Sequence[str] | None = None,
                    benchmark: str | None = None) -> list[RunRecord]:
    """The collection runs the pairs stage works on (all, or those named / of one benchmark); none is an error."""
    runs = store.runs("collect")
    if run_ids:
        unknown = set(run_ids) - {r.run_id for r in runs}
        if unknown:
            raise FailtraceError(f"no collection run {sorted(unknown)[0]!r} in {store.path}; `failtrace status` "
                                 f"lists the runs")
        runs = [r for r in runs if r.run_id in set(run_ids)]
    if benchmark is not None:
        runs = [r for r in runs if r.benchmark == benchmark]
    if not runs:
        raise FailtraceError(f"no collection runs{' for ' + benchmark if benchmark else ''} in {store.path}; "
                             f"run `failtrace collect` first")
    return runs


def pair_one(finder: PairFinder, bench: Benchmark, item: Item, row: Mapping[str, Any], budget: int) -> PairResult:
    """The per-item work of the stage: the pair search on one stored failure (``row`` from ``store.results``)."""
    return finder.find(bench, item, row["prompt_ids"], row["token_ids"], budget, row["finish_reason"])


def find_pairs(
    store: ResultsStore,
    settings: PairSettings | None = None,
    *,
    helper: Any | None = None,
    models: Mapping[str, Any] | None = None,
    benchmarks: Mapping[str, Benchmark] | None = None,
    run_ids: Sequence[str] | None = None,
    benchmark: str | None = None,
    limit: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    on_pair: Callable[[str, PairResult], None] | None = None,
) -> PairsSummary:
    """Run the pair search on every failed item of the store's collection runs that has no pair record yet.

    ``helper`` is a model name/path (loaded like ``--model``) or a loaded model. ``models`` maps a run's model name
    to an already loaded model (otherwise it is loaded with the run's dtype and revision); ``benchmarks`` maps
    benchmark names to objects (otherwise the registry is asked). ``run_ids``/``benchmark`` select runs; ``limit``
    caps the failures processed by this call. Each pair is committed on its own, so the stage resumes after a crash.
    """
    from failtrace.models.loading import load_model

    settings = settings or PairSettings()
    settings.validate()
    if limit is not None and limit < 1:
        raise FailtraceError(f"--limit must be at least 1, got {limit}")
    t0 = time.perf_counter()
    runs = collection_runs(store, run_ids, benchmark)
    summary = PairsSummary()
    loaded_cache: dict[tuple[str, str | None, str | None], Any] = {}
    helper_loaded = helper
    if isinstance(helper, str):
        helper_loaded = None  # loaded below with the first run's dtype
    remaining = limit
    for run in runs:
        if remaining is not None and remaining <= 0:
            break
        failures = store.results(run.run_id, status="fail")
        if not failures:
            continue
        if models and run.model in models:
            loaded = models[run.model]
        else:
            key = (run.model, run.dtype, run.revision)
            if key not in loaded_cache:
                loaded_cache[key] = load_model(run.model, dtype=run.dtype or "float32", device=device,
                                               revision=run.revision)
            loaded = loaded_cache[key]
        if isinstance(helper, str) and helper_loaded is None:
            helper_loaded = load_model(helper, dtype=run.dtype or "float32", device=device)
        finder = PairFinder(loaded, settings, helper_loaded)
        prun = pair_run_record(run, loaded, settings, helper_loaded)
        store.ensure_run(prun)
        summary.pair_run_ids.append(prun.run_id)
        bench = resolve_benchmark(run.benchmark, benchmarks)
        done_ids = store.done_pair_ids(prun.run_id)
        todo = [f for f in failures if f["item_id"] not in done_ids]
        summary.failures += len(failures)
        summary.skipped += len(failures) - len(todo)
        if remaining is not None:
            todo = todo[:remaining]
        budget = int(run.settings.get("max_new_tokens") or bench.max_new_tokens)
        bar = _progress(progress, f"pairs {run.benchmark} ({run.model})", len(todo))
        try:
            for row in todo:
                item = store.get_item(run.benchmark, row["item_id"])
                result = pair_one(finder, bench, item, row, budget)
                if store.write_pair(prun.run_id, run.run_id, item.id, run.benchmark, result.to_dict()):
                    summary.processed += 1
                    summary.statuses[result.status] = summary.statuses.get(result.status, 0) + 1
                    summary.rollouts += result.rollouts
                if on_pair is not None:
                    on_pair(item.id, result)
                bar.advance()
                if remaining is not None:
                    remaining -= 1
        finally:
            bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary
