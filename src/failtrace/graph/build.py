"""Build an attribution graph: one full AttnLRP pass for the nodes, then edges layer by layer, streamed and pruned.

:func:`build_graph` takes a loaded model and a prompt (like :func:`failtrace.attribute`); :func:`graph_from_ids`
is the same on raw token ids and an objective function (used by the tests on tiny random models).

Edge methods (``method``):

* ``naive``: one backward per target token (the reference);
* ``packed``: B targets per backward as a batched vector-Jacobian product over one forward (:mod:`.edges_packed`);
* ``closed-form``: the per-head decomposition of :mod:`.closed_form`; layers it does not cover fall back to
  ``packed`` and a note says so;
* ``auto`` (default): ``closed-form`` where covered, else ``packed``.

Only the rows of target nodes whose normalised |R| reaches ``retain_node_threshold`` (default: the node threshold)
and whose seed is not zero (at the top layer only the predicting position has one) are computed, and each transition keeps at most ``edge_budget`` edges (the strongest; all of them for short inputs),
so memory stays bounded for long inputs: no dense n×n matrix is ever held for more than a block of rows.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from failtrace.attribution.engine import relevance_pass
from failtrace.errors import FailtraceError
from failtrace.graph.closed_form import ClosedFormLayer, ClosedFormUnsupported
from failtrace.graph.edges_naive import NaiveEdges
from failtrace.graph.edges_packed import PackedEdges, batch_size_for
from failtrace.graph.layers import (
    LayerCallCapture,
    LayerSplit,
    attn_block,
    mlp_block,
    split_from_roles,
    split_layer,
)
from failtrace.graph.prune import PruneSpec, check_node_threshold
from failtrace.graph.record import AttributionGraph, Stage
from failtrace.graph.edgestore import EdgeAccumulator
from failtrace.lrp.patch import decoder_layers, lrp_rules

Tensor = torch.Tensor
EDGE_METHODS: tuple[str, ...] = ("auto", "naive", "packed", "closed-form")
KEEP_ALL_EDGES_UP_TO = 512  # inputs up to this many tokens keep every edge (any re-pruning is exact)


def parse_layers(spec: str | Sequence[int] | tuple[int, int] | None, num_layers: int) -> tuple[int, int]:
    """Layer range (first, last), inclusive, from ``None`` (all), ``"A-B"``, ``"A"``, ``"A,B,C"`` (contiguous) or ints.

    Edges are computed into every layer of the range (from the stage below it), so the range must be contiguous.
    Negative numbers count from the end (``-1`` is the last layer).
    """
    valid = f"valid layers are 0..{num_layers - 1} (or negative, counting from the end)"
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return 0, num_layers - 1
    values: list[int]
    if isinstance(spec, str):
        text = spec.replace(" ", "")
        try:
            if "-" in text[1:] and "," not in text:
                cut = text.index("-", 1)
                lo, hi = int(text[:cut]), int(text[cut + 1:])
                values = [lo, hi]
                span = True
            else:
                values = [int(v) for v in text.split(",") if v]
                span = False
        except ValueError:
            raise FailtraceError(f"--layers {spec!r} is not a layer range like '10-29', a layer '5' or a list "
                                 f"'3,4,5'; {valid}") from None
    else:
        values = [int(v) for v in spec]
        span = isinstance(spec, tuple) and len(values) == 2
    if not values:
        raise FailtraceError(f"--layers {spec!r} names no layer; {valid}")
    resolved = []
    for v in values:
        r = v + num_layers if v < 0 else v
        if not 0 <= r < num_layers:
            raise FailtraceError(f"layer {v} is out of range: the model has {num_layers} layers; {valid}")
        resolved.append(r)
    if span:
        lo, hi = resolved
        if lo > hi:
            raise FailtraceError(f"--layers {spec!r}: the first layer {lo} is above the last {hi}")
        return lo, hi
    ordered = sorted(set(resolved))
    if ordered != list(range(ordered[0], ordered[-1] + 1)):
        raise FailtraceError(f"--layers {spec!r} is not contiguous; edges link consecutive layers, so give a range "
                             f"such as {ordered[0]}-{ordered[-1]}")
    return ordered[0], ordered[-1]


def _normalised_row(row: np.ndarray, special: np.ndarray) -> np.ndarray:
    mag = np.abs(row)
    pick = ~special if (~special).any() else np.ones_like(special)
    scale = float(mag[pick].max()) if pick.any() else 0.0
    return mag / scale if scale > 0 else np.zeros_like(mag)


def _rows_to_compute(row: np.ndarray, special: np.ndarray, threshold: float, final: int | None) -> Tensor:
    keep = _normalised_row(row, special) >= threshold
    if final is not None:
        keep[final] = True
    return torch.as_tensor(np.nonzero(keep)[0], dtype=torch.long)


def _mid_seed(split: LayerSplit, h_mid: Tensor, g_t: Tensor) -> tuple[Tensor, Tensor]:
    """G = modified gradient at the mid-node (one token-local backward of g_t through the MLP block), and h_t."""
    x = h_mid.detach()[None].clone().requires_grad_(True)
    with torch.enable_grad():
        out = mlp_block(split, x)
        (G,) = torch.autograd.grad(out, x, g_t.detach()[None].to(x.dtype))
    return G[0], out.detach()[0]


def _close(a: Tensor, b: Tensor) -> bool:
    """Recomputed and stored hidden states agree (float32: 1e-4 of the scale; half precision: 3e-2)."""
    tol = 1e-4 if a.dtype == torch.float32 else 3e-2
    return float((a - b.to(a.dtype)).abs().max()) <= tol * (float(b.abs().max()) + 1e-6)


def _stream(acc: EdgeAccumulator, rows: Tensor, rows_fn: Callable[[Tensor], Tensor], per_chunk: int) -> None:
    for start in range(0, len(rows), max(1, per_chunk)):
        chunk = rows[start:start + per_chunk]
        acc.add(chunk, rows_fn(chunk))


def _diagonal_rows(values: Tensor, n: int) -> Callable[[Tensor], Tensor]:
    """Rows of a diagonal edge matrix (a token-local transition) with the given diagonal."""

    def rows_fn(rows: Tensor) -> Tensor:
        out = torch.zeros(len(rows), n, dtype=torch.float32)
        out[torch.arange(len(rows)), rows] = values[rows].float().cpu()
        return out

    return rows_fn


def graph_from_ids(
    model: torch.nn.Module,
    input_ids: Sequence[int] | Tensor,
    objective: Callable[[Tensor], Tensor],
    *,
    tokens: list[str] | None = None,
    special_mask: list[bool] | None = None,
    method: str = "auto",
    lrp_method: str = "attnlrp",
    layers: str | Sequence[int] | tuple[int, int] | None = None,
    mid_nodes: bool = False,
    node_threshold: float = 0.01,
    prune: str | PruneSpec | None = "cumulative:0.85",
    retain_node_threshold: float | None = None,
    edge_budget: int | str | None = "auto",
    memory_budget_mb: float = 1024.0,
    batch_size: int | None = None,
    progress: bool = False,
    metadata: dict[str, Any] | None = None,
    notify: Callable[[str], None] | None = None,
) -> AttributionGraph:
    """Attribution graph of ``objective(logits at the last position)`` for ``input_ids`` (see the module docstring).

    ``retain_node_threshold`` (default: ``node_threshold``) sets which target rows are computed; 0 computes all.
    ``edge_budget``: edges kept per transition (``"auto"``: all for up to 512 tokens, else max(262144, 64·n);
    ``None``: all). ``notify`` receives human-readable notes (fallbacks) as they happen.
    """
    if method not in EDGE_METHODS:
        raise FailtraceError(f"unknown edge method {method!r}; valid: {', '.join(EDGE_METHODS)}")
    node_threshold = check_node_threshold(node_threshold)
    spec = PruneSpec.parse(prune)
    retain = node_threshold if retain_node_threshold is None else check_node_threshold(retain_node_threshold)
    if retain > node_threshold:
        raise FailtraceError(f"retain_node_threshold {retain:g} must not exceed the node threshold {node_threshold:g}")
    if memory_budget_mb <= 0:
        raise FailtraceError(f"memory budget must be positive, got {memory_budget_mb} MB")
    device = next(model.parameters()).device
    ids = torch.as_tensor(input_ids, device=device).reshape(-1)
    n = int(ids.numel())
    if n == 0:
        raise FailtraceError("the input is empty; give at least one token")
    num_layers = len(decoder_layers(model))
    first, last = parse_layers(layers, num_layers)
    if edge_budget == "auto":
        budget: int | None = None if n <= KEEP_ALL_EDGES_UP_TO else max(262_144, 64 * n)
    else:
        budget = None if edge_budget is None else int(edge_budget)
        if budget is not None and budget < 1:
            raise FailtraceError(f"edge budget must be at least 1 edge per transition, got {budget}")
    budget_bytes = int(memory_budget_mb * 2**20)
    special = np.asarray(special_mask if special_mask is not None else [False] * n, dtype=bool)
    if special.shape[0] != n:
        raise FailtraceError(f"special_mask has {special.shape[0]} entries for {n} tokens")
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        if notify is not None:
            notify(msg)

    t0 = time.perf_counter()
    with lrp_rules(model, lrp_method):
        with LayerCallCapture(model) as cap:  # the layers' call arguments, recorded during the full pass
            res = relevance_pass(model, ids.tolist(), objective, method=lrp_method, patched=True)
        t_pass = time.perf_counter() - t0
        R = res.relevance().cpu().numpy()  # [L+1, n]: embeddings, then each layer's output

        stages: list[Stage] = [Stage(first - 1, "embed" if first == 0 else "resid")]
        rel_rows: list[np.ndarray] = [R[first]]
        for t in range(first, last + 1):
            if mid_nodes:
                stages.append(Stage(t, "mid"))
                rel_rows.append(np.full(n, np.nan))
            stages.append(Stage(t, "resid"))
            rel_rows.append(R[t + 1])
        relevance = np.stack(rel_rows)
        transitions = []
        methods_used: dict[int, str] = {}
        splits: dict[str, str] = {}
        split_roles: dict[type, dict[str, str | None]] = {}
        unsplittable: set[type] = set()
        t_edges = time.perf_counter()
        layer_iter: Any = range(first, last + 1)
        if progress:
            from tqdm.auto import tqdm

            layer_iter = tqdm(layer_iter, desc=f"graph edges ({method})", unit="layer", leave=False)
        stage_of = {(s.layer, s.kind): i for i, s in enumerate(stages)}
        for t in layer_iter:
            layer = cap.layers[t]
            kw = cap.kwargs[t]
            h_s, g_t = res.hidden[t], res.grads[t + 1]
            h_t = res.hidden[t + 1]
            src_stage = 0 if t == first else stage_of[(t - 1, "resid")]
            out_stage = stage_of[(t, "resid")]
            is_top = t == last
            split = None
            if mid_nodes or method in ("auto", "closed-form"):
                # verified once per layer class; later layers are checked against their stored output where used
                roles = split_roles.get(type(layer))
                split = split_from_roles(layer, roles) if roles is not None else None
                if split is None and type(layer) not in unsplittable:
                    split = split_layer(layer, kw, h_s[None], reference=h_t[None])
                    if split is not None:
                        split_roles[type(layer)] = split.roles(layer)
                        splits[split.describe()] = type(layer).__name__
                    else:
                        unsplittable.add(type(layer))
            if mid_nodes and split is None:
                raise FailtraceError(
                    f"mid-nodes need each layer to be 'residual + attention block' then 'residual + MLP block'; "
                    f"layer {t} ({type(layer).__name__}) does not match that form, so mid-nodes are unavailable "
                    "for this model (run without --mid-nodes)")
            layer_method = method
            cf: ClosedFormLayer | None = None
            if method in ("auto", "closed-form"):
                if split is None:
                    reason = f"layer {t} ({type(layer).__name__}) is not attention block then MLP block"
                else:
                    try:
                        cf = ClosedFormLayer(split, kw, h_s, g_t, h_t_reference=h_t)
                        reason = ""
                    except ClosedFormUnsupported as exc:
                        reason = f"layer {t}: {exc}"
                if cf is None:
                    layer_method = "packed"
                    note(f"closed form does not cover {reason}; used packed for this layer")
                else:
                    layer_method = "closed-form"
            methods_used[t] = layer_method
            pack = batch_size or batch_size_for(n, model.config, budget_bytes)

            def computer(fn: Callable[[Tensor], Tensor], src: Tensor, seed: Tensor) -> Any:
                if layer_method == "naive":
                    return NaiveEdges(fn, src, seed)
                return PackedEdges(fn, src, seed, pack)

            # (source stage, target stage, rows function factory) for this layer
            if mid_nodes:
                assert split is not None
                mid_stage = stage_of[(t, "mid")]
                if cf is not None:
                    h_mid, G = cf.h_mid, cf.G
                    mid_rel = cf.mid_relevance
                else:
                    with torch.no_grad():
                        h_mid = attn_block(split, kw, h_s[None])[0]
                    G, h_t_again = _mid_seed(split, h_mid, g_t)
                    if not _close(h_t_again, h_t):
                        raise FailtraceError(
                            f"mid-nodes: layer {t} ({type(layer).__name__}) is not computed as residual + attention "
                            "block then residual + MLP block like the first layer of its class; mid-nodes are "
                            "unavailable for this model (run without --mid-nodes)")
                    mid_rel = (h_mid.double() * G.double()).sum(-1)
                relevance[mid_stage] = mid_rel.cpu().numpy()
                plan = [
                    (src_stage, mid_stage, lambda s=split, k=kw: (lambda x: attn_block(s, k, x)), h_s, G, False),
                    (mid_stage, out_stage, lambda s=split: (lambda x: mlp_block(s, x)), h_mid, g_t, True),
                ]
            else:
                plan = [(src_stage, out_stage, lambda tt=t: (lambda x: cap.call(tt, x)), h_s, g_t, False)]
            for s_idx, t_idx, make_fn, src, seed, token_local in plan:
                t1 = time.perf_counter()
                final = n - 1 if (is_top and t_idx == out_stage) else None
                rows = _rows_to_compute(relevance[t_idx], special, retain, final)
                acc = EdgeAccumulator(n, budget)
                zero_seed = (seed[rows] == 0).all(dim=-1).cpu()  # e.g. every row but the last at the top layer
                acc.add_zero_rows(rows[zero_seed])
                rows = rows[~zero_seed]
                info: dict[str, Any] = {}
                if cf is not None:
                    if token_local:
                        per = max(1, budget_bytes // (4 * n))
                        _stream(acc, rows, _diagonal_rows(cf.mid_relevance, n), per)
                    else:
                        _stream(acc, rows, lambda r: cf.rows(r).cpu(), cf.rows_per_chunk(budget_bytes))
                elif len(rows):
                    comp = computer(make_fn(), src, seed)
                    try:
                        _stream(acc, rows, comp.rows, comp.rows_per_chunk(budget_bytes))
                    finally:
                        comp.close()
                    if isinstance(comp, PackedEdges):
                        info = {"batch_size": comp.batch_size, "mode": comp.mode}
                        if comp.vmap_fallbacks:
                            info["vmap_fallbacks"] = comp.vmap_fallbacks
                transitions.append(acc.finish(s_idx, t_idx, layer_method, time.perf_counter() - t1, info))
            del cf
        t_edges = time.perf_counter() - t_edges
    t_total = time.perf_counter() - t0
    meta: dict[str, Any] = dict(metadata or {})
    fallbacks = sorted(t for t, m in methods_used.items() if method == "closed-form" and m != "closed-form")
    meta.update({
        "architecture": type(model).__name__,
        "lrp_method": lrp_method,
        "edge_method": method,
        "methods_used": {str(k): v for k, v in methods_used.items()},
        "closed_form_fallback_layers": fallbacks,
        "layer_structure": sorted(splits),
        "layers": [first, last],
        "mid_nodes": mid_nodes,
        "n_tokens": n,
        "node_threshold": node_threshold,
        "retain_node_threshold": retain,
        "prune": str(spec),
        "edge_budget": budget,
        "notes": notes,
        "seconds": {"relevance_pass": round(t_pass, 4), "edges": round(t_edges, 4), "total": round(t_total, 4)},
        "objective_value": res.value,
    })
    graph = AttributionGraph(
        tokens=list(tokens) if tokens is not None else [str(int(i)) for i in ids.tolist()],
        token_ids=[int(i) for i in ids.tolist()], special_mask=special.tolist(), stages=stages,
        relevance=relevance, transitions=transitions, objective_value=res.value, metadata=meta,
    )
    return graph


def build_graph(
    lm: Any,
    prompt: Any,
    target: int | str | None = None,
    contrast: int | str | None = None,
    *,
    answer_prefix: str | Sequence[int] | None = None,
    chat: bool = False,
    thinking: bool = False,
    objective: str = "logit_diff",
    position: int | None = None,
    topk: int = 10,
    allow_long: bool = False,
    **kwargs: Any,
) -> AttributionGraph:
    """Attribution graph for the preference of ``target`` over ``contrast`` after ``prompt`` (+ ``answer_prefix``).

    ``lm`` is a :class:`failtrace.models.LoadedModel`; prompt, target, contrast, answer prefix and objective work as
    in :func:`failtrace.attribute`. Keyword arguments go to :func:`graph_from_ids` (``method``, ``layers``,
    ``mid_nodes``, ``node_threshold``, ``prune``, ``lrp_method``, ``memory_budget_mb``, ``progress``, ...).
    An input longer than the model's context is refused unless ``allow_long``.
    """
    from failtrace.attribution.inputs import context_length, prepare_input, resolve_token
    from failtrace.attribution.objective import OBJECTIVES, objective_value
    from failtrace.attribution.record import TokenRef

    if objective not in OBJECTIVES:
        raise FailtraceError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    tok = lm.tokenizer
    prep = prepare_input(tok, prompt, chat=chat, answer_prefix=answer_prefix, thinking=thinking, position=position,
                         max_length=context_length(lm.model), allow_long=allow_long)
    tgt = resolve_token(tok, target, "target") if target is not None else None
    con = resolve_token(tok, contrast, "contrast") if contrast is not None else None
    if objective == "logit_diff" and con is None:
        raise FailtraceError("objective 'logit_diff' needs a contrast token; give --contrast or another --objective")
    if tgt is None:
        with torch.no_grad():
            ids = torch.tensor([prep.ids], device=next(lm.model.parameters()).device)
            logits = lm.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
        tid = int(logits[0, -1].argmax())
        tgt = TokenRef(tid, tok.decode([tid], clean_up_tokenization_spaces=False))
    if con is not None and con.id == tgt.id:
        raise FailtraceError(f"target and contrast are the same token ({tgt.text!r}, id {tgt.id}); pick two tokens")
    tgt_id, con_id = tgt.id, (None if con is None else con.id)

    def fn(logits: Tensor) -> Tensor:
        return objective_value(logits, objective, tgt_id, con_id, k=topk)

    meta = {
        "model": getattr(lm, "name", type(lm.model).__name__),
        "prompt": prompt if isinstance(prompt, str) else list(prompt),
        "answer_prefix": answer_prefix if answer_prefix is None or isinstance(answer_prefix, str)
        else list(answer_prefix),
        "chat": chat,
        "target": tgt.to_dict(),
        "contrast": None if con is None else con.to_dict(),
        "objective": objective,
        "prompt_length": prep.prompt_length,
    }
    if hasattr(lm, "describe"):
        try:
            meta["model_info"] = lm.describe()
        except Exception:  # metadata only; never fail a graph over it
            pass
    return graph_from_ids(lm.model, prep.ids, fn, tokens=prep.tokens, special_mask=prep.special_mask,
                          metadata=meta, **kwargs)
