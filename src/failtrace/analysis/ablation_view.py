"""The paper's Fig. 3 view of one case: its pruned attribution graph with the ablated nodes marked, Δℓ before and
after ablating them, and the part of the graph through which they reached the prediction.

Inputs: the pruned graph (the stored record of :func:`failtrace.cases.build.graph_record` — ``stages`` names,
``nodes`` ``[stage, token, R]``, ``edges`` ``[source stage, source token, target stage, target token, A]`` — or a
live :class:`~failtrace.graph.prune.PrunedGraph`) and the node-ablation evidence of
:func:`failtrace.analysis.categories.node_ablation` (``nodes`` in ablation order, ``curve`` = Δℓ after ablating the
first k, ``k`` = the flip).

* **Ablated nodes.** The first k of the evidence's nodes, k = the flip when it flipped, else every node tried (the
  whole budget: the view then shows that even that did not flip it). An explicit ``k`` overrides both. Node
  (decoder layer l, position i) is the stage named ``L{l}`` (the layer's output), token i; ``in_graph`` says whether
  the pruned graph kept it.
* **Δℓ.** ``delta_before`` = curve[0] (nothing ablated), ``delta_after`` = curve[k].
* **Downstream subgraph.** D = the kept nodes reachable from an ablated node along kept edges (upwards, the ablated
  nodes included); U = the kept nodes from which the final node (top stage, last position) is reachable. The
  downstream edges are the kept edges u → v with u ∈ D and v ∈ U (then v ∈ D and u ∈ U too): exactly the edges on
  some directed path from an ablated node to the prediction. The downstream nodes are D ∩ U.
* **Share through the ablated nodes.** The final node's mass 1 is split downwards: every node passes its mass to the
  sources of its kept incoming edges in proportion to |A| (the fractions f_e of :mod:`failtrace.graph.metrics`,
  but over the *kept* edges, the only ones stored), and an ablated node absorbs what reaches it. ``through_share`` =
  the absorbed mass = Σ over kept paths from the prediction down that meet an ablated node of Π f_e up to the first
  one met; 0 when no ablated node is in the graph, 1 when every path passes one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from failtrace.errors import FailtraceError

Node = tuple[int, int]  # (stage index, token position)
Edge = tuple[int, int, int, int, float]  # (source stage, source token, target stage, target token, A)


@dataclass(frozen=True)
class AblatedNode:
    """One ablated hidden state: decoder ``layer``, ``position``, the graph ``stage`` index it is (None when the graph
    has no stage for that layer), its AttnLRP relevance, whether the pruned graph kept it, and Δℓ once it and every
    node before it are ablated."""

    layer: int
    position: int
    stage: int | None
    relevance: float
    in_graph: bool
    delta_after: float | None


@dataclass(frozen=True)
class AblationView:
    """The data of the Fig. 3 view (module docstring); ``downstream_edges`` index ``edges``."""

    stages: list[str]
    nodes: list[tuple[int, int, float]]
    edges: list[Edge]
    final: Node
    ablated: list[AblatedNode]
    k: int
    flipped: bool
    delta_before: float
    delta_after: float
    downstream_nodes: list[Node]
    downstream_edges: list[int]
    reaches_output: bool
    through_share: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (lists, not tuples)."""
        d = asdict(self)
        d["nodes"] = [list(n) for n in self.nodes]
        d["edges"] = [list(e) for e in self.edges]
        d["final"] = list(self.final)
        d["downstream_nodes"] = [list(n) for n in self.downstream_nodes]
        return d


def _graph_parts(graph: Any, n_tokens: int | None) -> tuple[list[str], list[tuple[int, int, float]], list[Edge], Node]:
    """(stage names, nodes, edges, final node) of a stored record or a live PrunedGraph."""
    if isinstance(graph, Mapping):
        stages = [str(s) for s in graph["stages"]]
        nodes = [(int(s), int(t), float(r)) for s, t, r in graph["nodes"]]
        edges = [(int(a), int(b), int(c), int(d), float(w)) for a, b, c, d, w in graph["edges"]]
    elif hasattr(graph, "node_list") and hasattr(graph, "edges"):
        g = graph.graph
        stages = [st.name for st in g.stages]
        nodes = [(int(s), int(t), float(g.relevance[s, t])) for s, t in graph.node_list()]
        edges = [(int(a), int(b), int(c), int(d), float(w)) for a, b, c, d, w in graph.edges()]
        n_tokens = g.n_tokens if n_tokens is None else n_tokens
    else:
        raise FailtraceError(f"not a pruned graph: {type(graph).__name__}")
    if not stages:
        raise FailtraceError("the graph has no stages")
    top = len(stages) - 1
    if n_tokens is None:  # the pruned graph always keeps the final node: the top stage's last position
        tops = [t for s, t, _r in nodes if s == top]
        if not tops:
            raise FailtraceError("the graph keeps no node in its top stage; pass n_tokens")
        n_tokens = max(tops) + 1
    return stages, nodes, edges, (top, int(n_tokens) - 1)


def ablated_count(ablation: Mapping[str, Any], k: int | None = None) -> int:
    """How many of the evidence's nodes the view marks: ``k`` if given, the flip if it flipped, else all tried."""
    tried = len(ablation.get("nodes") or [])
    if k is None:
        k = ablation.get("k") if ablation.get("flipped") and ablation.get("k") else tried
    k = int(k)
    if not 0 <= k <= tried:
        raise FailtraceError(f"cannot mark {k} ablated nodes: the evidence lists {tried}")
    return k


def _reach(start: set[Node], step: Mapping[Node, list[Node]]) -> set[Node]:
    seen, todo = set(start), list(start)
    while todo:
        for nxt in step.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def through_share(edges: Sequence[Edge], final: Node, ablated: set[Node]) -> float:
    """Mass of the final node that reaches an ablated node when each node splits its mass over its kept incoming
    edges in proportion to |A| and ablated nodes absorb it (module docstring). Stage by stage from the top, so each
    node's mass is complete before it is split (every edge goes from a lower stage to a higher one)."""
    incoming: dict[Node, list[tuple[Node, float]]] = defaultdict(list)
    for ss, si, ts, ti, w in edges:
        if ts <= ss:
            raise FailtraceError(f"edge {ss}/{si} -> {ts}/{ti} does not go up a stage")
        incoming[(ts, ti)].append(((ss, si), abs(w)))
    mass: dict[Node, float] = defaultdict(float)
    mass[final] = 1.0
    absorbed = 0.0
    for node in sorted(set(incoming) | {final}, key=lambda n: -n[0]):
        m = mass.get(node, 0.0)
        if m == 0.0:
            continue
        if node in ablated:
            absorbed += m
            continue
        total = sum(a for _src, a in incoming.get(node, ()))
        for src, a in incoming.get(node, ()):
            if total > 0:
                mass[src] += m * a / total
    absorbed += sum(m for n, m in mass.items() if n in ablated and n not in incoming and n != final)
    return float(min(1.0, absorbed))


def ablation_view(graph: Any, ablation: Mapping[str, Any], *, k: int | None = None,
                  n_tokens: int | None = None) -> AblationView:
    """The Fig. 3 view of a case (module docstring): ``graph`` its pruned graph (stored record or PrunedGraph),
    ``ablation`` its node-ablation evidence (``case.category_evidence["ablation"]``)."""
    stages, nodes, edges, final = _graph_parts(graph, n_tokens)
    curve = [float(x) for x in ablation.get("curve") or []]
    k = ablated_count(ablation, k)
    if len(curve) <= k:
        raise FailtraceError(f"the ablation curve has {len(curve)} values; {k} ablated nodes need {k + 1}")
    stage_of = {name: s for s, name in enumerate(stages)}
    kept = {(s, t) for s, t, _r in nodes}
    notes: list[str] = []
    marked: list[AblatedNode] = []
    for j, nd in enumerate(list(ablation["nodes"])[:k]):
        layer, pos = int(nd["layer"]), int(nd["position"])
        s = stage_of.get(f"L{layer}")
        marked.append(AblatedNode(layer=layer, position=pos, stage=s, relevance=float(nd.get("relevance", 0.0)),
                                  in_graph=s is not None and (s, pos) in kept, delta_after=curve[j + 1]))
    missing = [f"L{a.layer}/{a.position}" for a in marked if not a.in_graph]
    if missing:
        notes.append(f"not in the pruned graph (below the node threshold or not connected): {', '.join(missing)}")
    sources = {(a.stage, a.position) for a in marked if a.in_graph and a.stage is not None}
    up: dict[Node, list[Node]] = defaultdict(list)
    down: dict[Node, list[Node]] = defaultdict(list)
    for ss, si, ts, ti, _w in edges:
        up[(ss, si)].append((ts, ti))
        down[(ts, ti)].append((ss, si))
    d_set = _reach(sources, up)
    u_set = _reach({final}, down)
    idx = [e for e, (ss, si, ts, ti, _w) in enumerate(edges) if (ss, si) in d_set and (ts, ti) in u_set]
    return AblationView(
        stages=stages, nodes=nodes, edges=edges, final=final, ablated=marked, k=k,
        flipped=curve[k] < 0 if k else False, delta_before=curve[0], delta_after=curve[k],
        downstream_nodes=sorted(d_set & u_set), downstream_edges=idx, reaches_output=final in d_set,
        through_share=through_share(edges, final, sources), notes=notes)
