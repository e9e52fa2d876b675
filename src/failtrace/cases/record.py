"""The case: one clean target/contrast pair made into the unit every analysis, the report and the explorer read.

Position convention (the one used everywhere from this stage on): ``token_ids`` is the *context*, i.e. the prompt
plus the completion tokens generated before the failure point. The explained logits are those the model produces at
the context's last index; the target is the *next* token, so ``position == len(token_ids)`` is the target's index in
the full sequence prompt + completion (the same number as ``pairs.position``). ``Attribution.position`` (the index of
the last *input* token) is therefore ``case.position - 1``.

Segments: every context token belongs to exactly one segment (see :mod:`failtrace.analysis.segments`); they are stored
as ``name -> [[start, end), ...]`` token spans, in order, covering ``0 .. len(token_ids)`` without overlap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Masking rules for the flip search (see docs/ANALYSES.md): zero the input embeddings of the masked positions, or
# replace their token ids by ``token_id``.
MASK_RULES: tuple[str, ...] = ("zero-embedding", "replace")
# The outcome categories and failure patterns (definitions: docs/ANALYSES.md); the one list of each, used by the
# analyses that compute them, the store, the report and the explorer.
CATEGORIES: tuple[str, ...] = ("M-IA", "NC-IA+M-AG", "NC-IA+AG")
PATTERNS: tuple[str, ...] = ("URT", "OIT", "URT+OIT", "none")
# Each category and pattern as every view names and defines it (failtrace status, the report, the explorer): (the
# name spelled out, what failtrace measures). The paper's project page (Tan et al., 2026; jzxycsjzy.github.io/
# Debug-XAI) calls them "Manifested by Input Attribution (M-IA)", "Manifested by Attribution Graph (NC-IA + M-AG)",
# "No Clue from Both (NC-IA+AG)", "Underweight Relevant Tokens (URT)" and "Overweight Irrelevant Tokens (OIT)";
# the NC-IA expansions below spell out each part of the acronym. The meanings are this tool's two interventions and
# thresholds (docs/ANALYSES.md).
CATEGORY_TEXT: dict[str, tuple[str, str]] = {
    "M-IA": ("Manifested by Input Attribution",
             "masking at most K_IA (default 5) top input tokens puts the contrast above the target"),
    "NC-IA+M-AG": ("No Clue from Input Attribution, Manifested by the Attribution Graph",
                   "masking at most K_IA top input tokens does not flip it, ablating the top hidden states of the "
                   "graph (the ablation budget, default 10) does"),
    "NC-IA+AG": ("No Clue from Input Attribution nor the Attribution Graph", "neither flips it"),
}
PATTERN_TEXT: dict[str, tuple[str, str]] = {
    "URT": ("Underweight Relevant Tokens", "the relevant segment does not push against the target"),
    "OIT": ("Overweight Irrelevant Tokens",
            "a token outside the relevant segments (the answer so far included) is among the target's strongest "
            "supporters"),
    "URT+OIT": ("both", "both hold"),
    "none": ("neither", "neither holds"),
}


@dataclass
class MaskingSpec:
    """How top-k masking is done: ``rule`` (``zero-embedding`` default, or ``replace`` with ``token_id``), up to
    ``max_k`` positions. Top-k = the k maskable positions with the largest positive relevance, ties broken by the
    lower position. Never maskable: special ids, and with ``skip_template`` (the default) also the chat template's
    own text (role headers such as ``assistant\n``, segment label ``special``): masking the turn the model answers
    flips a prediction for a reason that is not the input's (see :func:`failtrace.analysis.masking.never_masked`)."""

    rule: str = "zero-embedding"
    token_id: int | None = None
    max_k: int = 10
    skip_template: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The spec as stored with each case."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaskingSpec:
        """A stored spec; one stored before ``skip_template`` existed masked template text, so it reads False."""
        return cls(rule=str(d["rule"]), token_id=None if d.get("token_id") is None else int(d["token_id"]),
                   max_k=int(d["max_k"]), skip_template=bool(d.get("skip_template", False)))


@dataclass
class CaseMethod:
    """One attribution method's answer for a case.

    ``input_relevance``: one value per context token. ``hidden_layer_sums``: per stage (row 0 = embeddings, row l =
    decoder layer l-1 output) the summed relevance; empty for methods without hidden relevance (ig, attention,
    random). ``segment_relevance``: segment name -> summed input relevance (sums to the total input relevance).
    ``flip_curve``: Δℓ after masking the top-k positions, k = 0 .. K (index 0 is the unmasked Δℓ).
    ``flip_k``: the smallest k with Δℓ < 0, or ``None`` when none up to K.
    ``flip_tops`` / ``flip_top_texts``: the model's top next token after masking the top k (id and text, same
    indexing as the curve): whether a flipped prediction is the contrast or a third token. Empty in a case analysed
    before schema version 4 (not recorded).
    """

    method: str
    input_relevance: list[float]
    hidden_layer_sums: list[float] = field(default_factory=list)
    segment_relevance: dict[str, float] = field(default_factory=dict)
    flip_curve: list[float] = field(default_factory=list)
    flip_k: int | None = None
    seconds: float = 0.0
    flip_tops: list[int] = field(default_factory=list)
    flip_top_texts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def tops_recorded(self) -> bool:
        """Whether the top tokens after masking were recorded, one id and text per curve point."""
        return 0 < len(self.flip_curve) == len(self.flip_tops) == len(self.flip_top_texts)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseMethod:
        return cls(method=d["method"], input_relevance=[float(x) for x in d["input_relevance"]],
                   hidden_layer_sums=[float(x) for x in d.get("hidden_layer_sums") or []],
                   segment_relevance={str(k): float(v) for k, v in (d.get("segment_relevance") or {}).items()},
                   flip_curve=[float(x) for x in d.get("flip_curve") or []],
                   flip_k=None if d.get("flip_k") is None else int(d["flip_k"]), seconds=float(d.get("seconds") or 0),
                   flip_tops=[int(x) for x in d.get("flip_tops") or []],
                   flip_top_texts=[str(x) for x in d.get("flip_top_texts") or []])


@dataclass
class Case:
    """One clean pair, explained. Built by ``failtrace analyse``; see docs/ANALYSES.md for every field."""

    case_id: str
    pair_run_id: str
    run_id: str
    item_id: str
    benchmark: str
    model: str
    model_fingerprint: str
    token_ids: list[int]
    tokens: list[str]
    special_mask: list[bool]
    prompt_length: int  # context tokens that belong to the prompt; the rest is the answer generated so far
    position: int  # == len(token_ids): the target's index in the full sequence
    target_id: int
    target_text: str
    contrast_id: int
    contrast_text: str
    delta_logit: float
    segments: dict[str, list[list[int]]] = field(default_factory=dict)
    relevant_segments: list[str] = field(default_factory=list)  # the segments that should decide the answer
    methods: dict[str, CaseMethod] = field(default_factory=dict)
    masking: MaskingSpec = field(default_factory=MaskingSpec)
    category: str | None = None  # "M-IA" | "NC-IA+M-AG" | "NC-IA+AG"
    category_evidence: dict[str, Any] = field(default_factory=dict)
    pattern: str | None = None  # "URT" | "OIT" | "URT+OIT" | "none"
    pattern_evidence: dict[str, Any] = field(default_factory=dict)
    graph_summary: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    # Added by the cases stage (all optional, so older records still load):
    analysis_id: str = ""  # the analysis run (stage "analyse" in the runs table) that produced this case
    notes: list[str] = field(default_factory=list)  # e.g. the recomputed Δℓ differs from the stored pair's
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went (graph, method:X, flip:X, ...)
    graph: dict[str, Any] | None = None  # the pruned graph (see failtrace.store.cases.graph_record); None = not loaded
    override: dict[str, Any] | None = None  # newest person's label: {category, reason, created_at}
    # the reviewer's decision in force on its pair (failtrace serve --review): {decision, comment, created_at}
    review: dict[str, Any] | None = None
    # the model's top-k next tokens at the failure point (failtrace.cases.alternatives); None = not recorded
    alternatives: dict[str, Any] | None = None

    @property
    def effective_category(self) -> str | None:
        """The category a person set with ``failtrace override``, else the computed one."""
        return self.override["category"] if self.override else self.category

    @property
    def rejected(self) -> bool:
        """A reviewer rejected its pair: shown, but counted in no table, figure or training set."""
        return bool(self.review and self.review.get("decision") == "reject")

    def segment_labels(self) -> list[str]:
        """One segment name per context token (the inverse of ``segments``)."""
        labels = [""] * len(self.token_ids)
        for name, spans in self.segments.items():
            for start, end in spans:
                for i in range(start, end):
                    labels[i] = name
        return labels

    def flip_k(self, method: str = "attnlrp") -> int | None:
        return self.methods[method].flip_k if method in self.methods else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["methods"] = {m: r.to_dict() for m, r in self.methods.items()}
        d["masking"] = self.masking.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Case:
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in names}
        kw["methods"] = {m: CaseMethod.from_dict(r) for m, r in (d.get("methods") or {}).items()}
        kw["masking"] = MaskingSpec.from_dict(d["masking"]) if d.get("masking") else MaskingSpec()
        return cls(**kw)


def case_id(pair_run_id: str, item_id: str, model_fingerprint: str, settings: dict[str, Any]) -> str:
    """Deterministic id: the same pair, model content and analysis settings always give the same case id."""
    payload = json.dumps([pair_run_id, item_id, model_fingerprint, settings], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]
