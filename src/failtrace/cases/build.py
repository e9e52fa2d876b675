"""``build_case``: one clean pair -> one :class:`Case` (attributions by every method, graph, analyses).

Steps, for context = prompt_ids + completion[:completion_offset] (so ``position = len(context)`` is the target's
index in the full sequence, the same number as ``pairs.position``):

1. Δℓ = logit(target) − logit(contrast) at the context's last index, from a plain forward pass (no LRP rules);
   it must equal the stored pair's Δℓ within 1e-3, else a note says by how much (e.g. another model file). The same
   logits give the model's top-k alternatives there (:mod:`failtrace.cases.alternatives`).
2. The attribution graph (closed-form edges where covered, pruned; :func:`failtrace.graph.build.graph_from_ids`).
   Its one full AttnLRP pass *is* the attnlrp attribution: its stage rows are AttnLRP's hidden relevance
   (row 0 = the input embeddings), so attnlrp costs no extra pass.
3. Per method: input relevance, per-stage hidden sums, segment relevance, flip curve and k* (masking).
4. Category (k* of attnlrp + node ablation evidence), failure pattern, graph summary.

The analyses are the functions of :mod:`failtrace.analysis` (defined in docs/ANALYSES.md); this module only
orchestrates them and times each step.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import torch

from failtrace.benchmarks.base import Item
from failtrace.cases.record import Case, CaseMethod, case_id
from failtrace.cases.settings import CaseSettings
from failtrace.errors import FailtraceError

DELTA_TOLERANCE = 1e-3


class _Clock:
    """Accumulates seconds per named step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> float:
        """Add the seconds since the last lap to stage ``name`` and return them."""
        now = time.perf_counter()
        dt = now - self._t
        self.seconds[name] = round(self.seconds.get(name, 0.0) + dt, 6)
        self._t = now
        return dt


def context_of(pair_row: dict[str, Any], generation: dict[str, Any]) -> list[int]:
    """prompt_ids + completion[:completion_offset], checked against the pair's position and target."""
    prompt = [int(t) for t in generation["prompt_ids"]]
    completion = [int(t) for t in generation["token_ids"]]
    offset = pair_row.get("completion_offset")
    if offset is None or pair_row.get("target_id") is None or pair_row.get("contrast_id") is None:
        raise FailtraceError(f"pair of item {pair_row.get('item_id')!r} has no failure point (status "
                             f"{pair_row.get('status')!r}); only clean pairs become cases")
    offset = int(offset)
    if not 0 <= offset < len(completion) or completion[offset] != int(pair_row["target_id"]):
        raise FailtraceError(f"pair of item {pair_row.get('item_id')!r} does not match its generation (offset "
                             f"{offset}, target {pair_row['target_id']}); the store is inconsistent")
    context = prompt + completion[:offset]
    if pair_row.get("position") is not None and int(pair_row["position"]) != len(context):
        raise FailtraceError(f"pair of item {pair_row.get('item_id')!r}: position {pair_row['position']} is not "
                             f"len(prompt) + offset = {len(context)}")
    return context


def logit_diff_fn(target_id: int, contrast_id: int) -> Any:
    """The explained objective: Δℓ = logit(target) − logit(contrast)."""

    def fn(logits: torch.Tensor) -> torch.Tensor:
        return logits[..., target_id] - logits[..., contrast_id]

    return fn


def plain_delta(model: Any, ids: list[int], target_id: int, contrast_id: int) -> float:
    """Δℓ from an ordinary forward pass (the reference every attribution explains)."""
    from failtrace.cases.alternatives import next_logits

    logits = next_logits(model, ids)
    return float(logits[target_id] - logits[contrast_id])


def random_seed(settings: CaseSettings, key: str) -> int:
    """The random baseline's seed: fixed by the settings' seed and the case id (another order per case)."""
    return int(hashlib.sha256(f"{settings.seed}:{key}".encode()).hexdigest()[:15], 16)


def method_relevance(lm: Any, method: str, ids: list[int], fn: Any, settings: CaseSettings, graph: Any,
                     key: str) -> tuple[np.ndarray, list[float], np.ndarray | None]:
    """(input relevance, per-stage hidden sums, full hidden relevance [S, n] or None) of one method, from the
    attribution registry (AttnLRP's is the graph's own pass, not a second one). A method that explains hidden states
    returns one row per stage; one that explains only the input, one row."""
    if method == "attnlrp":
        hidden = np.asarray(graph.relevance, dtype=np.float64)
        return hidden[0].copy(), hidden.sum(axis=1).tolist(), hidden
    from failtrace.attribution.methods import get_method

    res = get_method(method)(lm.model, ids, fn, ig_steps=settings.ig_steps, seed=random_seed(settings, key),
                             with_value=False)  # the case's Δℓ is the plain forward's: no pass for a value
    rel = np.asarray(res.relevance, dtype=np.float64)
    if rel.ndim != 2 or rel.shape[1] != len(ids):
        raise FailtraceError(f"method {method!r} returned relevance of shape {tuple(rel.shape)}; expected "
                             f"[rows, {len(ids)}] (row 0: the input tokens)")
    if rel.shape[0] == 1:
        return rel[0].copy(), [], None
    return rel[0].copy(), rel.sum(axis=1).tolist(), rel


def graph_record(graph: Any, pruned: Any) -> dict[str, Any]:
    """The pruned graph as stored: kept nodes [stage, token, R], kept edges [s, i, t, j, A], build settings."""
    meta = graph.metadata
    nodes = [[int(s), int(t), float(graph.relevance[s, t])] for s, t in pruned.node_list()]
    edges = [[int(a), int(b), int(c), int(d), float(w)] for a, b, c, d, w in pruned.edges()]
    settings = {k: meta.get(k) for k in ("lrp_method", "edge_method", "methods_used", "node_threshold",
                                         "retain_node_threshold", "prune", "edge_budget", "layers", "mid_nodes",
                                         "notes")}
    settings["coverage"] = [float(c) for c in pruned.coverage]
    return {"settings": settings, "stages": [st.name for st in graph.stages],
            "objective_value": float(graph.objective_value), "nodes": nodes, "edges": edges}


def _segments(lm: Any, context: list[int], special: list[bool], prompt_length: int,
              item: Item) -> tuple[list[str], dict[str, list[list[int]]], list[str]]:
    from failtrace.analysis.segments import relevant_segments, segment_labels, spans_from_labels

    labels = segment_labels(lm.tokenizer, context, special, prompt_length, item)
    return list(labels), spans_from_labels(labels), list(relevant_segments(item.benchmark, item))


def _attributions(lm: Any, context: list[int], fixed: list[bool], labels: list[str], target: int,
                  contrast: int, settings: CaseSettings, graph: Any, key: str,
                  clock: _Clock) -> tuple[dict[str, CaseMethod], np.ndarray]:
    """Every method's relevance, segment sums, flip curve and k* (``fixed``: positions never masked); also AttnLRP's
    hidden relevance [L+1, n]."""
    from failtrace.analysis.masking import flip_search
    from failtrace.analysis.segments import segment_relevance
    from failtrace.attribution.inputs import decode_tokens

    fn = logit_diff_fn(target, contrast)
    methods: dict[str, CaseMethod] = {}
    attn_hidden = np.asarray(graph.relevance, dtype=np.float64)
    for method in settings.methods:
        t0 = time.perf_counter()
        rel, sums, _ = method_relevance(lm, method, context, fn, settings, graph, key)
        clock.lap(f"method:{method}")
        flip = flip_search(lm.model, context, rel, fixed, target, contrast, settings.masking)
        clock.lap(f"flip:{method}")
        methods[method] = CaseMethod(
            method=method, input_relevance=[float(x) for x in rel], hidden_layer_sums=[float(x) for x in sums],
            segment_relevance={k: float(v) for k, v in segment_relevance(rel, labels).items()},
            flip_curve=[float(x) for x in flip.curve], flip_k=flip.k_star, seconds=round(time.perf_counter() - t0, 6),
            flip_tops=list(flip.tops), flip_top_texts=decode_tokens(lm.tokenizer, flip.tops))
    return methods, attn_hidden


def _category_and_pattern(lm: Any, context: list[int], special: list[bool], fixed: list[bool], labels: list[str],
                          relevant: list[str], target: int, contrast: int, attn: CaseMethod,
                          attn_hidden: np.ndarray, settings: CaseSettings,
                          clock: _Clock) -> tuple[str, dict[str, Any], str, dict[str, Any]]:
    """Node ablation (never at ``fixed`` positions, as input masking), the category, and the failure pattern."""
    from failtrace.analysis.categories import categorize, node_ablation
    from failtrace.analysis.patterns import failure_pattern

    kwargs: dict[str, Any] = {} if settings.ablation_budget is None else {"budget": settings.ablation_budget}
    ablation = node_ablation(lm.model, context, attn_hidden, target, contrast, special_mask=fixed, **kwargs)
    # the flip search stops at max_k, so no k* above it exists to test: the M-IA bound in force is the smaller one,
    # and the evidence names that one (with --max-k 3, k_ia 5 would claim a search that never ran)
    category, evidence = categorize(attn.flip_k, ablation, k_ia=min(settings.k_ia, settings.max_k))
    evidence = dict(evidence)
    evidence.setdefault("ablation", ablation)
    clock.lap("category")
    pattern, pattern_evidence = failure_pattern(np.asarray(attn.input_relevance), special, labels, relevant,
                                                **settings.pattern)
    clock.lap("pattern")
    return category, evidence, pattern, dict(pattern_evidence)


def build_case(lm: Any, pair_row: dict[str, Any], item: Item, generation: dict[str, Any],
               settings: CaseSettings | None = None, *, fingerprint: str | None = None,
               analysis_id: str = "") -> Case:
    """Explain one clean pair (see the module docstring). ``generation``: its ``prompt_ids`` and ``token_ids``."""
    from failtrace.analysis.graph_summary import graph_summary
    from failtrace.analysis.masking import never_masked
    from failtrace.attribution.inputs import decode_tokens, special_ids
    from failtrace.cases.alternatives import alternatives, next_logits
    from failtrace.graph.build import graph_from_ids
    from failtrace.models.fingerprint import model_fingerprint

    settings = (settings or CaseSettings()).validate()
    clock = _Clock()
    fingerprint = fingerprint or model_fingerprint(lm)
    context = context_of(pair_row, generation)
    target, contrast = int(pair_row["target_id"]), int(pair_row["contrast_id"])
    cid = case_id(pair_row["pair_run_id"], pair_row["item_id"], fingerprint, settings.identity())
    tokens = decode_tokens(lm.tokenizer, context)
    specials = special_ids(lm.tokenizer)
    special = [t in specials for t in context]
    prompt_length = len(generation["prompt_ids"])
    clock.lap("setup")

    logits = next_logits(lm.model, context)  # the plain forward pass: Δℓ and the top-k alternatives
    delta = float(logits[target] - logits[contrast])
    alts = alternatives(lm.tokenizer, logits, target, contrast)
    notes: list[str] = []
    stored = pair_row.get("delta_logit")
    if stored is not None and abs(delta - float(stored)) > DELTA_TOLERANCE:
        notes.append(f"recomputed Δℓ {delta:.6f} differs from the stored pair's {float(stored):.6f} by "
                     f"{abs(delta - float(stored)):.2e} (> {DELTA_TOLERANCE:g}): the model is not the one that "
                     f"found the pair, or it runs in another dtype/device")
    clock.lap("delta_check")
    graph = graph_from_ids(lm.model, context, logit_diff_fn(target, contrast), tokens=tokens, special_mask=special,
                           edges=settings.edge_method, method="attnlrp", node_threshold=settings.node_threshold,
                           prune=settings.prune)
    pruned = graph.pruned
    clock.lap("graph")
    labels, segments, relevant = _segments(lm, context, special, prompt_length, item)
    clock.lap("segments")
    fixed = never_masked(special, labels, settings.masking)  # one rule for input masking and node ablation
    if settings.skip_template and all(fixed):
        notes.append("every token is special or chat-template text, so nothing may be masked or ablated (k* and the "
                     "category say nothing); `analyse --mask-template` allows template text")
    methods, attn_hidden = _attributions(lm, context, fixed, labels, target, contrast, settings, graph, cid, clock)
    category, cat_evidence, pattern, pat_evidence = _category_and_pattern(
        lm, context, special, fixed, labels, relevant, target, contrast, methods["attnlrp"], attn_hidden, settings,
        clock)
    summary = graph_summary(pruned, labels, bands=settings.bands)
    stored_graph = graph_record(graph, pruned)
    clock.lap("graph_summary")
    return Case(
        case_id=cid, pair_run_id=pair_row["pair_run_id"], run_id=pair_row["run_id"], item_id=pair_row["item_id"],
        benchmark=item.benchmark, model=getattr(lm, "name", ""), model_fingerprint=fingerprint, token_ids=context,
        tokens=tokens, special_mask=special, prompt_length=prompt_length, position=len(context), target_id=target,
        target_text=pair_row.get("target_text") or lm.tokenizer.decode([target]), contrast_id=contrast,
        contrast_text=pair_row.get("contrast_text") or lm.tokenizer.decode([contrast]), delta_logit=delta,
        segments=segments, relevant_segments=relevant, methods=methods, masking=settings.masking,
        category=category, category_evidence=cat_evidence, pattern=pattern, pattern_evidence=pat_evidence,
        graph_summary=dict(summary), settings=settings.identity(), analysis_id=analysis_id, notes=notes,
        seconds=clock.seconds, graph=stored_graph, alternatives=alts,
    )
