"""``--store S --case ID`` for ``attribute`` and ``graph``: explain a stored case again, exactly as ``analyse`` did.

The input is the case's own token ids (the chat-rendered prompt plus the answer generated before the target), its
target and contrast ids, on the model, dtype and revision of the run that collected it. Nothing is re-tokenised, so
AttnLRP's input relevance equals the stored one, and the recomputed Δℓ is checked against the stored Δℓ.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from failtrace.errors import FailtraceError

# The options that describe an input by hand; a stored case already fixes each of them.
HAND_OPTIONS = ("--prompt", "--target", "--contrast", "--chat", "--answer-prefix", "--position")


@dataclass(frozen=True)
class StoredCase:
    """What a stored case fixes: the model of its run and the exact input of its explained prediction."""

    case_id: str
    benchmark: str
    item_id: str
    model: str
    model_fingerprint: str
    dtype: str
    revision: str | None
    prompt_ids: list[int]
    answer_ids: list[int]
    target_id: int
    contrast_id: int
    delta_logit: float  # NaN when the store holds none
    tokens: list[str]  # the case's tokens as its own tokenizer decoded them
    run_id: str
    store: str
    settings: dict[str, Any]  # the analysis settings that built it (CaseSettings.identity())

    def setting(self, key: str) -> Any:
        """The analysis's value of ``key`` (what a re-run uses unless the user gives the option); a case whose stored
        settings lack it was built with ``analyse``'s default (:class:`~failtrace.cases.settings.CaseSettings`)."""
        from failtrace.cases.settings import CaseSettings

        value = self.settings.get(key)
        return getattr(CaseSettings(), key) if value is None else value

    @property
    def label(self) -> str:
        return f"case {self.case_id[:12]} ({self.benchmark} {self.item_id})"


def hand_options(prompt: str | None, target: str | None, contrast: str | None, chat: bool,
                 answer_prefix: str | None, position: int | None) -> dict[str, bool]:
    """Which of :data:`HAND_OPTIONS` the user passed."""
    values = (prompt is not None, target is not None, contrast is not None, chat, answer_prefix is not None,
              position is not None)
    return dict(zip(HAND_OPTIONS, values, strict=True))


def check_case_options(store: Path | None, case: str | None, given: dict[str, bool]) -> None:
    """``--case`` needs ``--store`` and excludes the hand-made input; without it ``--prompt`` is needed.

    ``given`` maps each of :data:`HAND_OPTIONS` to whether the user passed it (:func:`hand_options`)."""
    if case is None:
        if store is not None:
            raise FailtraceError("--store is only read with --case ID (a stored case to explain again); "
                                 "drop --store, or add --case")
        if not given.get("--prompt"):
            raise FailtraceError("give --prompt TEXT, or --store S --case ID to explain a stored case again")
        return
    if store is None:
        raise FailtraceError("--case needs --store (the results store that holds the case)")
    clash = [name for name in HAND_OPTIONS if given.get(name)]
    if clash:
        raise FailtraceError(f"--case takes the prompt, the answer so far, the target and the contrast from the "
                             f"store; drop {', '.join(clash)}")


def read_stored_case(store: Path, case: str) -> StoredCase:
    """The case ``case`` (an id or a unique prefix) of ``store``, opened read-only, with its collect run's model
    (empty when the store no longer holds that run: then ``--model`` must name one)."""
    from failtrace.cli.checks import check_store_path
    from failtrace.cli.console import store_errors
    from failtrace.store.cases import find_case_id
    from failtrace.store.store import open_store

    check_store_path(store, create=False)
    with store_errors(store), open_store(store, read_only=True) as st:
        cid = find_case_id(st, case)
        row = st.con.execute(
            "SELECT run_id, benchmark, item_id, model_fingerprint, token_ids, prompt_length, target_id, "
            "contrast_id, delta_logit, tokens, settings, model FROM cases WHERE case_id = ?", [cid]).fetchone()
        run = st.get_run(row[0])
    ids, n = [int(t) for t in row[4] or []], int(row[5])
    if not ids or not 0 < n <= len(ids):
        raise FailtraceError(f"case {cid[:12]} in {store} holds no usable token ids ({len(ids)} ids, prompt length "
                             f"{n}); `failtrace analyse` builds it again")
    try:
        tokens = [str(t) for t in json.loads(row[9] or "[]")]
    except (TypeError, ValueError):
        tokens = []
    try:
        settings = json.loads(row[10] or "{}")
    except (TypeError, ValueError):
        settings = {}
    model = (run.model if run else None) or row[11] or ""  # the case names its model too (a run may be gone)
    return StoredCase(case_id=cid, benchmark=row[1], item_id=row[2], model=model,
                      model_fingerprint=row[3], dtype=(run.dtype if run else None) or "float32",
                      revision=run.revision if run else None, prompt_ids=ids[:n], answer_ids=ids[n:],
                      target_id=int(row[6]), contrast_id=int(row[7]),
                      delta_logit=float("nan") if row[8] is None else float(row[8]), tokens=tokens,
                      run_id=row[0], store=str(store), settings=settings if isinstance(settings, dict) else {})


def load_case_model(case: StoredCase, model: str | None, dtype: str | None,
                    note: Callable[[str], None]) -> Any:
    """The case's run model (or ``model``), in the run's dtype (or ``dtype``).

    Refused when that model's tokenizer reads the stored ids as other tokens (the ids mean nothing there: compare
    re-tokenises a case for such a model); a note when its content fingerprint is not the case's, since then the
    numbers are another model's (or another dtype's)."""
    import failtrace
    from failtrace.attribution.inputs import decode_tokens
    from failtrace.models.fingerprint import model_fingerprint

    if model is None:
        if not case.model:
            raise FailtraceError(f"{case.label} names no model (nor does its collection run {case.run_id[:12]} in "
                                 f"{case.store}); pass --model")
        try:
            lm = failtrace.load_model(case.model, dtype=dtype or case.dtype, revision=case.revision)
        except FailtraceError as exc:
            raise FailtraceError(f"the model of {case.label}'s collection run, {case.model!r} in "
                                 f"{dtype or case.dtype}, does not load here ({exc}); pass --model (and --dtype) to "
                                 "use another copy") from None
    else:
        lm = failtrace.load_model(model, dtype=dtype or case.dtype)
    if model_fingerprint(lm) == case.model_fingerprint:  # the fingerprint covers the tokenizer: nothing to check
        return lm
    ids = case.prompt_ids + case.answer_ids
    if case.tokens and len(case.tokens) == len(ids) and max(ids) < len(lm.tokenizer) \
            and decode_tokens(lm.tokenizer, ids) != case.tokens:
        raise FailtraceError(f"{getattr(lm, 'name', model)}'s tokenizer reads {case.label}'s token ids as other "
                             f"text, so they cannot be explained on it; `failtrace compare --store {case.store} "
                             f"--models ...` re-tokenises a case's text for another model")
    other = f"{dtype}, not the case's {case.dtype}" if model is None and dtype and dtype != case.dtype \
        else "its content fingerprint differs"
    note(f"this is not the model that built {case.label} ({other}), so the numbers below are this model's")
    return lm


def random_seed_of(case: StoredCase) -> int:
    """The random baseline's seed the analysis gave this case (its settings' seed and the case id), so ``--method
    random`` on a stored case draws the order its analysis drew."""
    from failtrace.cases.build import random_seed
    from failtrace.cases.settings import CaseSettings

    return random_seed(CaseSettings(seed=int(case.setting("seed"))), case.case_id)


def case_input(case: StoredCase, objective: str) -> tuple[list[int], list[int], str, str | None]:
    """``(prompt ids, answer ids, target, contrast)`` for :func:`failtrace.attribute` / ``build_graph``: the case's
    own ids (the prompt as the chat template rendered it, then the answer so far); the contrast only for the logit
    difference, the one objective that uses it."""
    contrast = f"#{case.contrast_id}" if objective == "logit_diff" else None
    return case.prompt_ids, case.answer_ids, f"#{case.target_id}", contrast


def delta_check(case: StoredCase, value: float, objective: str) -> str:
    """One line comparing the recomputed Δℓ with the stored one (only the logit difference is stored)."""
    from failtrace.cases.build import DELTA_TOLERANCE

    if objective != "logit_diff":
        held = f"Δℓ {case.delta_logit:.4f}" if math.isfinite(case.delta_logit) else "no finite Δℓ"
        return f"{case.label}: {objective} {value:.4f} (the store holds only the logit difference, {held})"
    if not math.isfinite(case.delta_logit):
        return f"{case.label}: Δℓ {value:.4f} (the store holds no finite Δℓ to compare with)"
    diff = abs(value - case.delta_logit)
    same = "matches" if diff <= DELTA_TOLERANCE else f"differs by {diff:.2e} from"
    return f"{case.label}: Δℓ {value:.4f} {same} the stored {case.delta_logit:.4f}"


def provenance(case: StoredCase) -> dict[str, Any]:
    """What a written record says about where its input came from (its ids are already chat-rendered)."""
    return {"store": case.store, "case_id": case.case_id, "benchmark": case.benchmark, "item_id": case.item_id,
            "collection_run": case.run_id, "model_fingerprint": case.model_fingerprint,
            "stored_delta_logit": case.delta_logit if math.isfinite(case.delta_logit) else None}
