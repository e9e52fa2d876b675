"""Build an attribution graph: one full relevance pass for the nodes, then edges layer by layer, streamed and pruned.

:func:`build_graph` takes a loaded model and a prompt (like :func:`failtrace.attribute`); :func:`graph_from_ids`
is the same on raw token ids and an objective function (used by the tests on tiny random models). The edge
algorithms (``edges=``) are described in :mod:`.settings`; ``method=`` is the LRP rule, as everywhere.

Only the rows of target nodes whose normalised |R| reaches ``retain_node_threshold`` (default: the node threshold)
and whose seed is not zero (at the top layer only the predicting position has one) are computed, and each transition
keeps at most ``edge_budget`` edges (the strongest; all of them for short inputs), so memory stays bounded for long
inputs: no dense n×n matrix is ever held for more than a block of rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from failtrace.attribution.contrast import prepare_contrast
from failtrace.attribution.engine import PassResult, relevance_pass
from failtrace.attribution.normalize import normalize
from failtrace.errors import FailtraceError
from failtrace.graph.closed_form import ClosedFormLayer, ClosedFormUnsupported
from failtrace.graph.edges_naive import NaiveEdges
from failtrace.graph.edges_packed import PackedEdges, batch_size_for
from failtrace.graph.edgestore import EdgeAccumulator, EdgeSet
from failtrace.graph.layers import (
    LayerCallCapture,
    LayerSplit,
    attn_block,
    mlp_block,
    split_from_roles,
    split_layer,
)
from failtrace.graph.prune import PruneSpec
from failtrace.graph.record import AttributionGraph, Stage
from failtrace.graph.settings import EDGE_ALGORITHMS, GraphSettings, graph_settings, parse_layers
from failtrace.lrp.patch import decoder_layers, lrp_rules
from failtrace.progress import progress_bar

Tensor = torch.Tensor
__all__ = ["EDGE_ALGORITHMS", "build_graph", "graph_from_ids", "parse_layers"]


def _rows_to_compute(row: np.ndarray, special: np.ndarray, threshold: float, final: int | None) -> Tensor:
    keep = np.abs(normalize(row, special)) >= threshold
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


@dataclass
class _Step:
    """One transition to compute: stages, the function from source states to target states, its seed."""

    source_stage: int
    target_stage: int
    make_fn: Callable[[], Callable[[Tensor], Tensor]]
    source: Tensor
    seed: Tensor
    token_local: bool  # the MLP transition mid → out: diagonal edges


class _EdgeBuilder:
    """Computes the edges of each layer of one graph, inside :func:`lrp_rules` and after the full pass."""

    def __init__(self, model: torch.nn.Module, cap: LayerCallCapture, res: PassResult, cfg: GraphSettings,
                 stages: list[Stage], relevance: np.ndarray, note: Callable[[str], None]) -> None:
        self.model, self.cap, self.res, self.cfg = model, cap, res, cfg
        self.relevance, self.note = relevance, note
        self.n = int(relevance.shape[1])
        self.stage_of = {(s.layer, s.kind): i for i, s in enumerate(stages)}
        self.algorithms_used: dict[int, str] = {}
        self.splits: dict[str, str] = {}  # layer structure found → layer class
        self._roles: dict[type, dict[str, str | None]] = {}
        self._unsplittable: set[type] = set()

    def _split(self, t: int) -> LayerSplit | None:
        """Attention block + MLP block of layer t; verified once per layer class, then reused by role names."""
        layer, kw, res = self.cap.layers[t], self.cap.kwargs[t], self.res
        roles = self._roles.get(type(layer))
        split = split_from_roles(layer, roles) if roles is not None else None
        if split is None and type(layer) not in self._unsplittable:
            split = split_layer(layer, kw, res.hidden[t][None], reference=res.hidden[t + 1][None])
            if split is not None:
                self._roles[type(layer)] = split.roles(layer)
                self.splits[split.describe()] = type(layer).__name__
            else:
                self._unsplittable.add(type(layer))
        if self.cfg.mid_nodes and split is None:
            raise FailtraceError(
                f"mid-nodes need each layer to be 'residual + attention block' then 'residual + MLP block'; "
                f"layer {t} ({type(layer).__name__}) does not match that form, so mid-nodes are unavailable "
                "for this model (run without --mid-nodes)")
        return split

    def _closed_form(self, t: int, split: LayerSplit | None) -> ClosedFormLayer | None:
        """The closed form of layer t, or None (with a note) where it does not apply."""
        layer, res = self.cap.layers[t], self.res
        if split is None:
            reason = f"layer {t} ({type(layer).__name__}) is not attention block then MLP block"
        else:
            try:
                return ClosedFormLayer(split, self.cap.kwargs[t], res.hidden[t], res.grads[t + 1],
                                       h_t_reference=res.hidden[t + 1])
            except ClosedFormUnsupported as exc:
                reason = f"layer {t}: {exc}"
        self.note(f"closed form does not cover {reason}; used packed for this layer")
        return None

    def _mid(self, t: int, split: LayerSplit, cf: ClosedFormLayer | None) -> tuple[Tensor, Tensor]:
        """The mid-node states h_mid and their modified gradient G; stores the mid-node relevance h_mid · G."""
        if cf is not None:
            h_mid, G, mid_rel = cf.h_mid, cf.G, cf.mid_relevance
        else:
            h_s, g_t = self.res.hidden[t], self.res.grads[t + 1]
            with torch.no_grad():
                h_mid = attn_block(split, self.cap.kwargs[t], h_s[None])[0]
            G, h_t_again = _mid_seed(split, h_mid, g_t)
            if not _close(h_t_again, self.res.hidden[t + 1]):
                raise FailtraceError(
                    f"mid-nodes: layer {t} ({type(self.cap.layers[t]).__name__}) is not computed as residual + "
                    "attention block then residual + MLP block like the first layer of its class; mid-nodes are "
                    "unavailable for this model (run without --mid-nodes)")
            mid_rel = (h_mid.double() * G.double()).sum(-1)
        self.relevance[self.stage_of[(t, "mid")]] = mid_rel.cpu().numpy()
        return h_mid, G

    def _check_rerun(self, t: int) -> None:
        """Naive and packed edges come from re-running layer t on its stored input: refuse a layer whose re-run is
        not the full pass's (one forward, next to the edges' one backward per kept target row)."""
        with torch.no_grad():
            again = self.cap.call(t, self.res.hidden[t][None])[0]
        if not _close(again, self.res.hidden[t + 1]):
            raise FailtraceError(
                f"re-running layer {t} ({type(self.cap.layers[t]).__name__}) from its stored input does not give its "
                "stored output, so its edges would not be this model's; graphs are unavailable for this model with "
                "this transformers")

    def _steps(self, t: int, split: LayerSplit | None, cf: ClosedFormLayer | None) -> list[_Step]:
        cfg, res, cap = self.cfg, self.res, self.cap
        src = 0 if t == cfg.first else self.stage_of[(t - 1, "resid")]
        out = self.stage_of[(t, "resid")]
        h_s, g_t = res.hidden[t], res.grads[t + 1]
        if not cfg.mid_nodes:
            if cf is None:  # the closed form checked its own recomputation of the layer against the stored one
                self._check_rerun(t)
            return [_Step(src, out, lambda: (lambda x: cap.call(t, x)), h_s, g_t, False)]
        assert split is not None
        h_mid, G = self._mid(t, split, cf)
        kw = cap.kwargs[t]
        mid = self.stage_of[(t, "mid")]
        return [_Step(src, mid, lambda: (lambda x: attn_block(split, kw, x)), h_s, G, False),
                _Step(mid, out, lambda: (lambda x: mlp_block(split, x)), h_mid, g_t, True)]

    def _transition(self, step: _Step, algorithm: str, cf: ClosedFormLayer | None, is_top: bool) -> EdgeSet:
        """Stream the rows of one transition into an accumulator (only rows with a kept target and a seed)."""
        cfg, n = self.cfg, self.n
        t1 = time.perf_counter()
        top_out = is_top and step.target_stage == self.stage_of[(cfg.last, "resid")]
        final = n - 1 if top_out else None  # the final node's row is always computed
        rows = _rows_to_compute(self.relevance[step.target_stage], cfg.special, cfg.retain, final)
        acc = EdgeAccumulator(n, cfg.edge_budget)
        zero_seed = (step.seed[rows] == 0).all(dim=-1).cpu()  # e.g. every row but the last at the top layer
        acc.add_zero_rows(rows[zero_seed])
        rows = rows[~zero_seed]
        info: dict[str, Any] = {}
        if cf is not None:
            if step.token_local:
                _stream(acc, rows, _diagonal_rows(cf.mid_relevance, n), max(1, cfg.budget_bytes // (4 * n)))
            else:
                _stream(acc, rows, lambda r: cf.rows(r).cpu(), cf.rows_per_chunk(cfg.budget_bytes))
        elif len(rows):
            if algorithm == "naive":
                comp: Any = NaiveEdges(step.make_fn(), step.source, step.seed)
            else:
                pack = cfg.batch_size or batch_size_for(n, self.model.config, cfg.budget_bytes)
                comp = PackedEdges(step.make_fn(), step.source, step.seed, pack)
            try:
                _stream(acc, rows, comp.rows, comp.rows_per_chunk(cfg.budget_bytes))
            finally:
                comp.close()
            if isinstance(comp, PackedEdges):
                info = {"batch_size": comp.batch_size, "mode": comp.mode}
                if comp.vmap_fallbacks:
                    info["vmap_fallbacks"] = comp.vmap_fallbacks
        return acc.finish(step.source_stage, step.target_stage, algorithm, time.perf_counter() - t1, info)

    def layer(self, t: int) -> list[EdgeSet]:
        """The transitions into layer t (one, or two with mid-nodes)."""
        wants_split = self.cfg.mid_nodes or self.cfg.edges in ("auto", "closed-form")
        split = self._split(t) if wants_split else None
        cf = self._closed_form(t, split) if self.cfg.edges in ("auto", "closed-form") else None
        algorithm = "closed-form" if cf is not None else ("packed" if self.cfg.edges != "naive" else "naive")
        self.algorithms_used[t] = algorithm
        is_top = t == self.cfg.last
        return [self._transition(step, algorithm, cf, is_top) for step in self._steps(t, split, cf)]


def _stages(relevance_pass_rows: np.ndarray, cfg: GraphSettings) -> tuple[list[Stage], np.ndarray]:
    """The stages (the one below the first layer, then [mid,] output per layer) and their relevance rows."""
    n = relevance_pass_rows.shape[1]
    stages = [Stage(cfg.first - 1, "embed" if cfg.first == 0 else "resid")]
    rows = [relevance_pass_rows[cfg.first]]
    for t in range(cfg.first, cfg.last + 1):
        if cfg.mid_nodes:
            stages.append(Stage(t, "mid"))
            rows.append(np.full(n, np.nan))  # filled by the edge builder
        stages.append(Stage(t, "resid"))
        rows.append(relevance_pass_rows[t + 1])
    return stages, np.stack(rows)


def _metadata(model: torch.nn.Module, cfg: GraphSettings, builder: _EdgeBuilder, notes: list[str],
              seconds: dict[str, float], value: float, extra: dict[str, Any] | None) -> dict[str, Any]:
    used = builder.algorithms_used
    fallbacks = sorted(t for t, m in used.items() if cfg.edges == "closed-form" and m != "closed-form")
    meta: dict[str, Any] = dict(extra or {})
    meta.update({
        "architecture": type(model).__name__, "lrp_method": cfg.method, "edge_method": cfg.edges,
        "methods_used": {str(k): v for k, v in used.items()}, "closed_form_fallback_layers": fallbacks,
        "layer_structure": sorted(builder.splits), "layers": [cfg.first, cfg.last], "mid_nodes": cfg.mid_nodes,
        "n_tokens": builder.n, "node_threshold": cfg.node_threshold, "retain_node_threshold": cfg.retain,
        "prune": str(cfg.prune), "edge_budget": cfg.edge_budget, "notes": notes,
        "seconds": {k: round(v, 4) for k, v in seconds.items()}, "objective_value": value,
    })
    return meta


def graph_from_ids(
    model: torch.nn.Module,
    input_ids: Sequence[int] | Tensor,
    objective: Callable[[Tensor], Tensor],
    *,
    tokens: list[str] | None = None,
    special_mask: list[bool] | None = None,
    edges: str = "auto",
    method: str = "attnlrp",
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

    ``edges``: the edge algorithm (auto, naive, packed, closed-form); ``method``: the LRP rule (attnlrp, cp-lrp,
    gradxinput). ``retain_node_threshold`` (default: ``node_threshold``) sets which target rows are computed; 0
    computes all. ``edge_budget``: edges kept per transition (``"auto"``: all for up to 512 tokens, else
    max(262144, 64·n); ``None``: all). ``notify`` receives human-readable notes (fallbacks) as they happen.
    """
    device = next(model.parameters()).device
    ids = torch.as_tensor(input_ids, device=device).reshape(-1)
    cfg = graph_settings(
        int(ids.numel()), len(decoder_layers(model)), edges=edges, method=method, layers=layers, mid_nodes=mid_nodes,
        node_threshold=node_threshold, prune=prune, retain_node_threshold=retain_node_threshold,
        edge_budget=edge_budget, memory_budget_mb=memory_budget_mb, batch_size=batch_size, special_mask=special_mask)
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        if notify is not None:
            notify(msg)

    t0 = time.perf_counter()
    with lrp_rules(model, method):
        with LayerCallCapture(model) as cap:  # the layers' call arguments, recorded during the full pass
            # state 0 = the first layer's real input: layer 0's edges come from re-running it on that
            res = relevance_pass(model, ids.tolist(), objective, method=method, patched=True).from_layer0()
        t_pass = time.perf_counter() - t0
        stages, relevance = _stages(res.relevance().cpu().numpy(), cfg)
        builder = _EdgeBuilder(model, cap, res, cfg, stages, relevance, note)
        layers = range(cfg.first, cfg.last + 1)
        bar = progress_bar(progress, f"graph edges ({edges}), layers", len(layers), transient=True)
        transitions = []
        try:
            for t in layers:
                transitions += builder.layer(t)
                bar.advance()
        finally:
            bar.close()
    t_total = time.perf_counter() - t0
    seconds = {"relevance_pass": t_pass, "edges": t_total - t_pass, "total": t_total}
    return AttributionGraph(
        tokens=list(tokens) if tokens is not None else [str(int(i)) for i in ids.tolist()],
        token_ids=[int(i) for i in ids.tolist()], special_mask=cfg.special.tolist(), stages=stages,
        relevance=relevance, transitions=transitions, objective_value=res.value,
        metadata=_metadata(model, cfg, builder, notes, seconds, res.value, metadata),
    )


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
    in :func:`failtrace.attribute`. Keyword arguments go to :func:`graph_from_ids` (``edges``, ``method``,
    ``layers``, ``mid_nodes``, ``node_threshold``, ``prune``, ``memory_budget_mb``, ``progress``, ...).
    An input longer than the model's context is refused unless ``allow_long``.
    """
    c = prepare_contrast(lm, prompt, target, contrast, answer_prefix=answer_prefix, chat=chat, thinking=thinking,
                         objective=objective, position=position, topk=topk, allow_long=allow_long)
    prep, tgt, con, fn = c.prep, c.target, c.contrast, c.fn
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
