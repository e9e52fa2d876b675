"""``--store S --case ID`` for ``attribute`` and ``graph``: explain a stored case again, exactly as ``analyse`` did.

The input is the case's own token ids (the chat-rendered prompt plus the answer generated before the target), its
target and contrast ids, on the model, dtype and revision of the run that collected it. Nothing is re-tokenised, so
AttnLRP's input relevance equals the stored one, and the recomputed Δℓ is checked against the stored Δℓ.
"""

from __future__ import annotations

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
    delta_logit: float

    @property
    def label(self) -> str:
        return f"case {self.case_id[:12]} ({self.benchmark} {self.item_id})"


def check_case_options(store: Path | None, case: str | None, given: dict[str, bool]) -> None:
    """``--case`` needs ``--store`` and excludes the hand-made input; without it ``--prompt`` is needed.

    ``given`` maps each of :data:`HAND_OPTIONS` to whether the user passed it."""
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
    """The case ``case`` (an id or a unique prefix) of ``store``, opened read-only, with its collect run's model."""
    from failtrace.cli.checks import check_store_path
    from failtrace.cli.console import store_errors
    from failtrace.store.cases import find_case_id
    from failtrace.store.store import open_store

    check_store_path(store, create=False)
    with store_errors(store), open_store(store, read_only=True) as st:
        cid = find_case_id(st, case)
        row = st.con.execute(
            "SELECT run_id, benchmark, item_id, model, model_fingerprint, token_ids, prompt_length, target_id, "
            "contrast_id, delta_logit FROM cases WHERE case_id = ?", [cid]).fetchone()
        run = st.get_run(row[0])
    if run is None:
        raise FailtraceError(f"case {cid[:12]} names collection run {row[0]}, which {store} does not hold")
    ids, n = [int(t) for t in row[5]], int(row[6])
    return StoredCase(case_id=cid, benchmark=row[1], item_id=row[2], model=run.model, model_fingerprint=row[4],
                      dtype=run.dtype or "float32", revision=run.revision, prompt_ids=ids[:n], answer_ids=ids[n:],
                      target_id=int(row[7]), contrast_id=int(row[8]), delta_logit=float(row[9]))


def load_case_model(case: StoredCase, model: str | None, dtype: str | None,
                    note: Callable[[str], None]) -> Any:
    """The case's run model (or ``model``), in the run's dtype (or ``dtype``); a note when its content fingerprint
    is not the one that built the case, since then the numbers are another model's."""
    import failtrace
    from failtrace.models.fingerprint import model_fingerprint

    if model is None:
        lm = failtrace.load_model(case.model, dtype=dtype or case.dtype, revision=case.revision)
    else:
        lm = failtrace.load_model(model, dtype=dtype or case.dtype)
    if model_fingerprint(lm) != case.model_fingerprint:
        note(f"this model ({getattr(lm, 'name', model)}, {dtype or case.dtype}) is not the one that built "
             f"{case.label} (its content fingerprint differs), so the numbers below are this model's")
    return lm


def delta_check(case: StoredCase, value: float, objective: str) -> str:
    """One line comparing the recomputed Δℓ with the stored one (only the logit difference is stored)."""
    from failtrace.cases.build import DELTA_TOLERANCE

    if objective != "logit_diff":
        return (f"{case.label}: objective {objective} (the store holds Δℓ {case.delta_logit:.4f}, the logit "
                "difference)")
    diff = abs(value - case.delta_logit)
    same = "matches" if diff <= DELTA_TOLERANCE else f"differs by {diff:.2e} from"
    return f"{case.label}: Δℓ {value:.4f} {same} the stored {case.delta_logit:.4f}"
