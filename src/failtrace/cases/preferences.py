"""Token-level preference data from clean cases (``failtrace export-dpo``): one JSON object per case.

Sequence level (trl's conversational preference format, read by ``trl``'s DPO data utilities and ``datasets``):
``prompt`` = the item's chat messages, ``chosen`` = the assistant's recovered completion (answer prefix + contrast
+ the rollout that passed the benchmark's checker), ``rejected`` = the failed completion (answer prefix + target +
the greedy rest). Both answers share the answer prefix and diverge at the failure point.

Token level (in the case model's tokenisation): ``prefix_ids`` (the answer tokens before the failure point),
``rejected_decision_id`` = target, ``chosen_decision_id`` = contrast, and ``response_weights``: one weight per
response token up to and including the decision token,

    w_i = max(R_i, 0) / max_{j non-special} |R_j|   for the answer-prefix tokens i (AttnLRP relevance for
                                                    Δℓ = logit(target) − logit(contrast) at the failure point),
    w_decision = 1,

and ``tail_weight`` (0 unless asked) for every response token after the decision. Why: the decision token is what
the case explains, so it carries full weight; prefix tokens that pushed the model towards the wrong token carry their
normalised positive relevance (the same normalisation as everywhere, :func:`failtrace.attribution.normalize`).
Prefix tokens are identical in chosen and rejected, so in a DPO loss their weighted log-ratio terms cancel exactly;
they matter to one-sided losses (SFT, unlikelihood). ``context_weights`` gives the normalised signed relevance of
every context token (prompt included) for other uses. Format and derivation: docs/MODELS.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from failtrace.cases.record import Case
from failtrace.errors import FailtraceError
from failtrace.store.store import ResultsStore


def response_weights(case: Case, tail_weight: float = 0.0) -> dict[str, Any]:
    """The token-level fields of one case (see the module docstring)."""
    from failtrace.attribution.normalize import normalize

    attn = case.methods.get("attnlrp")
    if attn is None:
        raise FailtraceError(f"case {case.case_id} has no attnlrp attribution; re-run `failtrace analyse`")
    norm = normalize(np.asarray(attn.input_relevance, dtype=np.float64), case.special_mask)
    prefix = case.token_ids[case.prompt_length:]
    prefix_w = [0.0 if case.special_mask[case.prompt_length + i] else max(float(norm[case.prompt_length + i]), 0.0)
                for i in range(len(prefix))]
    return {"prompt_ids": case.token_ids[:case.prompt_length], "prefix_ids": list(prefix),
            "chosen_decision_id": case.contrast_id, "rejected_decision_id": case.target_id,
            "response_weights": [*prefix_w, 1.0], "tail_weight": float(tail_weight),
            "context_weights": [float(x) for x in norm]}


def _messages(prompt: Any) -> list[dict[str, str]]:
    from failtrace.models.chat import chat_messages

    return chat_messages(prompt)


def preference_record(case: Case, item: Any, pair: dict[str, Any], generation: dict[str, Any],
                      tail_weight: float = 0.0) -> dict[str, Any]:
    """One line of prefs.jsonl; FailtraceError when the pair has no recovered completion."""
    chosen = pair.get("recovered_completion")
    if not chosen:
        raise FailtraceError(f"case {case.case_id}: its pair has no recovered completion")
    rejected = generation["completion"]
    return {"prompt": _messages(item.prompt), "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "case_id": case.case_id, "pair_run_id": case.pair_run_id, "item_id": case.item_id,
            "benchmark": case.benchmark, "model": case.model,
            "model_fingerprint": case.model_fingerprint, "target_text": case.target_text,
            "contrast_text": case.contrast_text, "delta_logit": case.delta_logit,
            "flip_k": case.flip_k("attnlrp"), "category": case.effective_category,
            "rejected_ids": [int(t) for t in generation["token_ids"]],
            **response_weights(case, tail_weight)}


def training_cases(store: ResultsStore, cases: list[Case], which: str, nothing: str) -> tuple[list[Case], int]:
    """The cases fit to train on, and how many were left out: those whose pair a reviewer rejected (its newest
    accept or reject in the explorer's review log, :mod:`failtrace.store.reviews`): not a real failure point, or a
    wrong contrast, so not a preference to teach. FailtraceError when every one is (``which`` names the cases in
    it, ``nothing`` says what is then not done)."""
    from failtrace.store.reviews import rejected_pairs

    rejected = rejected_pairs(store.con)
    kept = [c for c in cases if (c.pair_run_id, c.item_id) not in rejected]
    if not kept:
        raise FailtraceError(f"every one of the {len(cases)} cases {which}in {store.path} has a pair rejected in "
                             f"review (failtrace serve --review); {nothing}")
    return kept, len(cases) - len(kept)


def preference_records(store: ResultsStore, cases: list[Case], tail_weight: float = 0.0) -> Iterator[dict[str, Any]]:
    """One :func:`preference_record` per case whose pair has a verified recovery (a case made by hand may have none:
    nothing honest to prefer or imitate), in the order of ``cases``."""
    pairs = {(p["pair_run_id"], p["item_id"]): p for p in store.pairs()}
    generations: dict[str, dict[str, dict[str, Any]]] = {}
    for case in cases:
        pair = pairs.get((case.pair_run_id, case.item_id))
        if pair is None or not pair.get("recovered_completion"):
            continue
        if case.run_id not in generations:
            generations[case.run_id] = {g["item_id"]: g for g in store.results(case.run_id)}
        yield preference_record(case, store.get_item(case.benchmark, case.item_id), pair,
                                generations[case.run_id][case.item_id], tail_weight)


@dataclass(frozen=True)
class DpoExport:
    """What ``export_dpo`` wrote: the file, its lines, and the cases left out because their pair was rejected."""

    path: Path
    records: int
    rejected: int


def export_dpo(store: ResultsStore, out: str | Path, benchmark: str | None = None,
               tail_weight: float = 0.0) -> DpoExport:
    """Write prefs.jsonl (atomically: ``.part`` then rename; a pipe or device in place) from the clean cases a
    reviewer has not rejected (:func:`training_cases`)."""
    from failtrace.store.cases import load_cases

    cases = load_cases(store, benchmark=benchmark)
    if not cases:
        where = f"of benchmark {benchmark!r} " if benchmark else ""
        raise FailtraceError(f"no cases {where}in {store.path}; run `failtrace analyse` first"
                             + (" (`failtrace status` lists the benchmarks)" if benchmark else ""))
    if not 0.0 <= tail_weight <= 1.0:
        raise FailtraceError(f"--tail-weight must be in [0, 1], got {tail_weight}")
    kept, rejected = training_cases(store, cases, f"of benchmark {benchmark!r} " if benchmark else "",
                                    "nothing to write")
    if str(out) in ("-", "/dev/stdout"):  # the process's own standard output, as it is: reopening /dev/stdout
        # opened the file it was redirected to anew (`>> all.jsonl` was truncated, or renamed over by OUT.part)
        n = sum(1 for rec in preference_records(store, kept, tail_weight)
                if sys.stdout.write(json.dumps(rec, ensure_ascii=False) + "\n") is not None)
        sys.stdout.flush()
        if n == 0:
            raise FailtraceError(f"none of the {len(kept)} cases in {store.path} has a pair with a recovered "
                                 f"completion")
        return DpoExport(Path("/dev/stdout"), n, rejected)
    path = Path(out)
    # A pipe, /dev/stdout or a device is written in place: renaming over it would replace it by a regular file. A
    # symbolic link is written through: the rename replaces the file it points at, never the link.
    direct = path.exists() and not path.is_file()
    if not direct and path.is_symlink():
        path = path.resolve()
    tmp = path if direct else path.with_name(path.name + ".part")
    if not direct and tmp.is_dir():
        raise FailtraceError(f"cannot write --out {path}: {tmp} is a folder, where {path.name} is first written "
                             f"before it is renamed into place; move that folder away")
    path.parent.mkdir(parents=True, exist_ok=True)  # like every other output: a missing folder is made
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for rec in preference_records(store, kept, tail_weight):
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        if n == 0:
            raise FailtraceError(f"none of the {len(kept)} cases in {store.path} has a pair with a recovered "
                                 f"completion")
    except BaseException:  # a case that stops the export (or ^C) leaves no half-written OUT.part behind
        if not direct:
            tmp.unlink(missing_ok=True)
        raise
    if not direct:
        tmp.replace(path)
    return DpoExport(path, n, rejected)
