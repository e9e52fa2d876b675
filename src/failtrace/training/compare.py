"""``compare --checkpoints``: re-score the base model's cases on the checkpoints ``failtrace finetune`` wrote.

Each checkpoint folder carries its metadata (:mod:`failtrace.training.checkpoints`): the base model's content
fingerprint picks the cases (those ``load_cases`` returns for it), and the trained / held-out case ids give each
row's ``split``; ``step`` is the checkpoint's step. Rows are keyed by (case id, the checkpoint's *content*
fingerprint, :func:`failtrace.models.fingerprint.model_fingerprint`), never by the folder name: a folder overwritten
in place by another run is a new model with new rows, and the old rows stay.

A checkpoint is scored on the case's own tokens: the same context ids, target and contrast (finetune never changes
the vocabulary; a checkpoint whose vocabulary differs from its base model's is refused), so step 0 reproduces the
case's Δℓ. On a row: Δℓ from a plain forward pass, AttnLRP input relevance for Δℓ, its segment sums (the benchmark's
segmenter) and k* by the case's masking spec.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failtrace.cases.compare import scored_fields
from failtrace.cases.record import Case
from failtrace.errors import FailtraceError
from failtrace.progress import tracked
from failtrace.store.comparisons import done_comparisons, write_comparison
from failtrace.store.store import ResultsStore


@dataclass
class CheckpointSummary:
    """What one ``compare --checkpoints`` call did, per checkpoint as given."""

    cases: int = 0
    case_ids: list[str] = field(default_factory=list)
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)  # case id -> (pair run id, item id)
    metas: dict[str, dict[str, Any]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    seconds: float = 0.0


def score_on_case_tokens(lm: Any, case: Case, item: Any, name: str, fingerprint: str) -> dict[str, Any]:
    """A comparison row for ``lm`` on the case's own context ids, target and contrast (same tokenizer)."""
    t0 = time.perf_counter()
    ids, special = [int(t) for t in case.token_ids], [bool(s) for s in case.special_mask]
    row = {"case_id": case.case_id, "model_fingerprint": fingerprint, "model": name, "item_id": case.item_id,
           "benchmark": case.benchmark, "reference": False, "token_ids": ids, "prompt_length": case.prompt_length,
           "position": len(ids), "target_text": case.target_text, "contrast_text": case.contrast_text,
           "notes": ["case tokens (same tokenizer)"], "tokens": list(case.tokens), "special_mask": special}
    return row | scored_fields(lm, ids, special, case.prompt_length, int(case.target_id), int(case.contrast_id),
                               item, case.masking) | {"seconds": round(time.perf_counter() - t0, 3)}


def checkpoint_row(lm: Any, case: Case, item: Any, name: str, fingerprint: str, meta: dict[str, Any],
                   run: str) -> dict[str, Any]:
    """One row on the case tokens, with the checkpoint's ``step``, the case's ``split`` in its run and the run."""
    from failtrace.training.checkpoints import split_of

    row = score_on_case_tokens(lm, case, item, name, fingerprint)
    split = split_of(meta, case.case_id, (case.pair_run_id, case.item_id))
    if split is None:
        row["notes"] = [*row["notes"], "case not in this run's trained or held-out set"]
    return row | {"step": int(meta["step"]), "split": split, "training_run": run}


def _vocab_of(folder: str) -> str:
    """The vocabulary digest of a checkpoint folder's tokenizer (read without loading the weights)."""
    from transformers import AutoTokenizer

    from failtrace.models.loading import _quiet_transformers
    from failtrace.training.checkpoints import vocab_digest

    try:
        with _quiet_transformers():
            return vocab_digest(AutoTokenizer.from_pretrained(folder))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FailtraceError(f"checkpoint {folder}: its tokenizer cannot be read ({str(exc).splitlines()[0][:200]}); "
                             f"the checkpoint is damaged") from None


def _load(folder: str, device: str) -> Any:
    from failtrace.models.loading import load_model

    return load_model(folder, device=device, progress=False)


def _cases_of(store: ResultsStore, base_fp: str, benchmark: str | None, limit: int | None) -> list[Case]:
    from failtrace.store.cases import load_cases

    cases = load_cases(store, benchmark=benchmark, model_fingerprint=base_fp)
    if not cases:
        raise FailtraceError(f"no cases of the checkpoints' base model (fingerprint {base_fp[:12]}…) in {store.path}; "
                             f"give the store the checkpoints were trained from (--store)")
    return cases[: limit or None]


def compare_checkpoints(store: ResultsStore, folders: Sequence[str], *, benchmark: str | None = None,
                        limit: int | None = None, device: str = "cpu", progress: bool = True,
                        models: Mapping[str, Any] | None = None) -> CheckpointSummary:
    """Score the base model's cases on every checkpoint folder (resumable: stored keys are skipped).

    Every folder's metadata, weight files and vocabulary are checked before any model is loaded, so a bad folder
    fails in seconds and leaves the store as it was; all must share one base model and its vocabulary, and no folder
    may be given twice. ``models`` maps folder → loaded model (tests); by default each is loaded in turn and freed.
    """
    from failtrace.models.fingerprint import model_fingerprint
    from failtrace.store.comparisons import fill_training_run
    from failtrace.training.checkpoints import (check_weights, read_metadata, training_run_id,
                                                vocab_digest)

    if not folders:
        raise FailtraceError("--checkpoints needs at least one checkpoint folder (e.g. ckpts/step-0)")
    seen: dict[Path, str] = {}
    for f in folders:
        if Path(f).resolve() in seen:
            again = seen[Path(f).resolve()]
            raise FailtraceError(f"--checkpoints names {f!r} twice" + (f" (as {again!r} too)" if again != f else "")
                                 + "; give each checkpoint once")
        seen[Path(f).resolve()] = f
    metas = {f: read_metadata(f) for f in folders}
    for f in folders if not models else ():  # every folder's weights whole before the first row is written
        check_weights(f)
    for f in folders:  # the cases' token ids must name the same tokens on every checkpoint
        vocab = vocab_digest(models[f].tokenizer) if models else _vocab_of(f)
        if vocab != metas[f].get("base_vocab_digest"):
            raise FailtraceError(f"checkpoint {f} has another vocabulary than its base model, so the cases' "
                                 f"token ids mean other tokens there; compare it with --models instead")
    bases = {m["base_model_fingerprint"] for m in metas.values()}
    if len(bases) > 1:
        first = metas[folders[0]]["base_model_fingerprint"]
        other = [f for f in folders if metas[f]["base_model_fingerprint"] != first]
        raise FailtraceError(f"the checkpoints come from different base models ({', '.join(other[:3])} "
                             f"{'is' if len(other) == 1 else 'are'} not from {folders[0]}'s); compare one base "
                             "model's checkpoints at a time")
    t0 = time.perf_counter()
    cases = _cases_of(store, bases.pop(), benchmark, limit)
    items = {c.case_id: store.get_item(c.benchmark, c.item_id) for c in cases}
    summary = CheckpointSummary(cases=len(cases), case_ids=[c.case_id for c in cases], metas=metas,
                                pairs={c.case_id: (c.pair_run_id, c.item_id) for c in cases})
    done = done_comparisons(store, checkpoint=True)
    before = set(done)  # what a rerun finds stored (a step-0 shared by two folders of this call is not "before")
    reused: set[tuple[str, str]] = set()  # rows, not folders: two step-0 folders share one model's rows
    for folder in folders:
        meta = metas[folder]
        lm = models[folder] if models else _load(folder, device)
        fp = model_fingerprint(lm)
        summary.fingerprints[folder] = fp
        run = training_run_id(meta)
        fill_training_run(store, fp, run)  # rows stored before runs were recorded: one series
        todo = [c for c in cases if (c.case_id, fp) not in done]
        reused |= {(c.case_id, fp) for c in cases if (c.case_id, fp) in before}
        summary.skipped = len(reused)
        summary.written[folder] = 0
        for case in tracked(todo, f"compare on {folder}", progress):
            row = checkpoint_row(lm, case, items[case.case_id], folder, fp, meta, run)
            summary.written[folder] += write_comparison(store, row)
            done.add((case.case_id, fp))
        del lm
        gc.collect()
    summary.seconds = time.perf_counter() - t0
    return summary
