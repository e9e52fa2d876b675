"""The records the results store reads and writes (runs, generations, status lines) and their JSON helpers."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from collections.abc import Mapping, Sequence
from typing import Any

from failtrace.benchmarks.base import Item
from failtrace.errors import FailtraceError
from failtrace.store.schema import CASE_KEYS

DEFAULT_STORE = "failtrace.duckdb"

# Why a stored generation ended (the generations table's finish_reason), the one list every stage reads:
FINISH_EOS = "eos"  # the model stopped by itself
FINISH_LENGTH = "length"  # at the token budget
FINISH_WINDOW = "window"  # where prompt + answer fill the model's context window, before the budget
FINISH_CONTEXT = "context"  # not generated: the prompt alone fills the context window
FINISH_CUT = (FINISH_LENGTH, FINISH_WINDOW)  # an answer cut before it stopped by itself
# in a pair's reason: the recovering rollout passed as cut at its budget, never having stopped (views say so)
RECOVERY_CUT = "-token budget without stopping"
TEXT_MOST = 2000  # the longest comment or override reason a person may store (the explorer's forms and the CLI)
# control characters other than tab and line breaks, C1 included (U+009B is an escape many terminals obey)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def text_problem(value: str) -> str | None:
    """Why ``value`` is not plain text to store, or None: a lone UTF-16 surrogate cannot be stored, and a control
    character (NUL, escape, ...) would be stored, exported and printed to a reader's terminal, where it acts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "holds an unpaired UTF-16 surrogate, which is not text"
    bad = _CONTROL.search(value)
    return f"holds the control character U+{ord(bad.group()):04X}; write plain text" if bad else None

# Columns holding JSON text: parsed back into objects by the JSONL export and the readers.
JSON_COLUMNS = {"versions", "settings", "prompt", "reference", "meta", "reasons", "details"}

# Each table's key: the order of exports and of comparisons between stores.
KEYS = {
    "runs": ("run_id",),
    "run_items": ("run_id", "ordinal", "item_id"),
    "items": ("benchmark", "item_id"),
    "generations": ("run_id", "item_id"),
    "verdicts": ("run_id", "item_id"),
    "pairs": ("pair_run_id", "item_id"),
    **CASE_KEYS,
}


def now() -> datetime:
    """UTC now without a time zone (DuckDB ``TIMESTAMP``)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def dumps(obj: Any) -> str:
    """Canonical JSON text (sorted keys) for the JSON-valued columns."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str)


_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(value: Any) -> Any:
    """``value`` with each lone surrogate in its strings (lists and dicts walked) written out as the text of its
    escape, ``\\ud800``: for text a checker quotes from a candidate (a HumanEval candidate raising
    ``ValueError(chr(0xd800))``, JSON a model wrote). Such a character is not UTF-8: DuckDB refused the item's whole
    commit and the run stopped there, and no terminal, web page or JSON export could carry it either."""
    if isinstance(value, str):
        return _SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), value)
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    return value


def loads(text: str, where: str, store: Any = None) -> Any:
    """A JSON text column's value; text that is not JSON means a damaged store, said in one line (not a bug's
    traceback). ``where``: the column (and row) it came from; ``store``: its path, for the message."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        name = f"results store {store}" if store else "the results store"
        raise FailtraceError(f"{name} holds text that is not JSON in {where} ({exc.msg} at character {exc.pos}); it "
                             f"is damaged; restore it from a copy, or write the stage again into another --store") \
            from None


def parse_json_columns(row: dict[str, Any], store: Any = None) -> dict[str, Any]:
    """Turn the JSON-text columns of one row back into objects (in place; returns the row)."""
    for k in JSON_COLUMNS & row.keys():
        if isinstance(row[k], str):
            row[k] = loads(row[k], f"column {k}", store)
    return row


def run_id_of(key: dict[str, Any]) -> str:
    """A run's id: 16 hex characters of the SHA-256 of its key as sorted JSON (the same key, the same run, so a
    rerun resumes it); collect, pairs, analyse and a finetune run's checkpoints all name runs so."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def content_hash(item: Item) -> str:
    """Hash of an item's prompt and reference: two items with one id but different content are refused."""
    payload = dumps({"prompt": item.prompt, "reference": item.reference})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@dataclass
class RunRecord:
    """One collection or pair-finding run: what produced the records that carry its ``run_id``."""

    run_id: str
    stage: str  # "collect" or "pairs"
    benchmark: str
    model: str
    parent_run_id: str | None = None
    model_source: str | None = None
    revision: str | None = None
    dtype: str | None = None
    device: str | None = None
    seed: int | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    data: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class GenerationRecord:
    """One greedy generation: prompt ids, completion ids exactly as generated, decoded text, finish reason."""

    prompt_ids: list[int]
    token_ids: list[int]
    completion: str
    finish_reason: str  # one of the FINISH_* above, or "error" (a Ray worker gave the item up)
    seconds: float = 0.0

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationRecord:
        return cls(prompt_ids=[int(t) for t in d["prompt_ids"]], token_ids=[int(t) for t in d["token_ids"]],
                   completion=d["completion"], finish_reason=d["finish_reason"], seconds=float(d.get("seconds") or 0))


@dataclass
class StatusRow:
    """One line of ``failtrace status``: a collection run and, if any, one pair-finding run over it."""

    benchmark: str
    model: str
    run_id: str
    pair_run_id: str | None
    pair_settings: dict[str, Any]
    items: int
    generated: int
    passed: int
    failed: int
    unverifiable: int
    pairs: dict[str, int]
    avg_prompt_tokens: float | None
    avg_completion_tokens: float | None
    # failures whose completion hit the length limit, and what continuing them to the rollout budget gave:
    # passes (an artefact of the budget, status unbounded) or still fails (a real failure, then searched).
    # None: unknown (a store read in its old layout).
    limit_hit: int | None = None
    continued_pass: int | None = None
    continued_fail: int | None = None
    failed_at_limit: int | None = None  # failures of the collection run whose completion hit the token budget
    not_generated: int = 0  # items whose prompt fills the model's context window (unverifiable, not in ``generated``)
    collection_settings: str = ""  # what tells collection runs apart (describe_collection_settings)

    @property
    def paired(self) -> int:
        """Failures the pair run has given a status so far (fewer than ``failed`` while it is partial)."""
        return sum(self.pairs.values())

    @property
    def not_paired(self) -> int:
        """Failures the pair run has not reached yet: while any are left, a clean rate is only a lower bound."""
        return max(0, self.failed - self.paired)

    @property
    def clean_rate(self) -> float | None:
        """Clean cases over failed items (``None`` when nothing failed)."""
        return self.pairs.get("clean", 0) / self.failed if self.failed else None

    @property
    def decidable_clean_rate(self) -> float | None:
        """Clean cases over *decidable* failures: failed items minus those left ``unbounded`` (a completion cut by
        the token limit can never be verified as recovered). ``None`` when none is decidable."""
        decidable = self.failed - self.pairs.get("unbounded", 0)
        return self.pairs.get("clean", 0) / decidable if decidable > 0 else None

    @property
    def pair_settings_text(self) -> str:
        """The pair run's settings in one line (:func:`describe_pair_settings`); "(no pairs run)" without one."""
        return "(no pairs run)" if self.pair_run_id is None else describe_pair_settings(self.pair_settings)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clean_rate"] = self.clean_rate
        d["decidable_clean_rate"] = self.decidable_clean_rate
        return d


def describe_collection_settings(dtype: str | None, settings: Mapping[str, Any] | None) -> str:
    """What tells two collection runs of one model and benchmark apart, in one short line: ``budget=256``, then
    ``dtype=…`` when not float32, ``thinking`` and the checker's options (IFEval's ``mode=loose``)."""
    st = settings or {}
    parts = [f"budget={st['max_new_tokens']}"] if st.get("max_new_tokens") else []
    parts += [f"dtype={dtype}"] if dtype and dtype != "float32" else []
    parts += ["thinking"] if st.get("thinking") else []
    parts += [f"{k}={v}" for k, v in (st.get("checker") or {}).items()]
    return " ".join(parts)


def describe_pair_settings(ps: Mapping[str, Any]) -> str:
    """Every setting that gives a pair run its id, in one short line, so two pair runs over one collection run always
    read differently (failures.pair_types.PairSettings.identity, failures.pairs.pair_run_record): ``k=3 Δ>1.0
    pos≤8``, then the rollout budget when it is not the collection's, ``try-unbounded`` for that flag and the sibling
    model (with its revision, and its dtype when not the model's). A setting not recorded is left out."""
    parts = [f"{name}{ps[key]}" for key, name in (("top_k", "k="), ("min_delta", "Δ>"), ("max_positions", "pos≤"))
             if ps.get(key) is not None]
    if ps.get("rollout_tokens") and ps.get("rollout_tokens") != ps.get("max_new_tokens"):
        parts.append(f"rollout≤{ps['rollout_tokens']}")
    if ps.get("try_unbounded"):
        parts.append("try-unbounded")
    if ps.get("helper_model"):
        info = ps.get("helper_info") or {}
        own = (ps.get("model_info") or {}).get("dtype")
        extra = "".join([f"@{info['revision']}" if info.get("revision") else "",
                         f" ({info['dtype']})" if info.get("dtype") and info.get("dtype") != own else ""])
        parts.append(f"sibling={ps['helper_model']}{extra}")
    return " ".join(parts) or "(settings not recorded)"


def pick_run_id(ids: Sequence[str], run_id: str, noun: str, where: Any) -> str:
    """The one id of ``ids`` that is ``run_id`` or starts with it (the report prints ids cut short); an unknown or
    ambiguous one is a one-line error naming ``noun`` ("pair run") and the ids there are."""
    if run_id in ids:
        return run_id
    hits = [i for i in ids if run_id and i.startswith(run_id)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise FailtraceError(f"{noun} id prefix {run_id!r} matches several in {where} ({', '.join(hits[:3])}"
                             f"{', ...' if len(hits) > 3 else ''}); give more characters")
    known = f"its {noun}s: {', '.join(ids[:4])}{', ...' if len(ids) > 4 else ''}" if ids else f"it has no {noun}s"
    raise FailtraceError(f"no {noun} {run_id!r} in {where}; {known} (`failtrace status` lists them)")
