"""The Fig. 3 ablation view: on a hand-built graph with known answers, against brute-force path enumeration on random
layered graphs, and on a tiny model where zeroing the view's ablated states with plain torch hooks gives its Δℓ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from failtrace.analysis.ablation_view import ablated_count, ablation_view
from failtrace.errors import FailtraceError


def _evidence(nodes, curve, k=None):
    return {"nodes": [{"layer": l, "position": p, "relevance": 1.0 / (j + 1)} for j, (l, p) in enumerate(nodes)],
            "curve": curve, "k": k, "flipped": k is not None, "budget": len(nodes)}


# stages emb(0) L0(1) L1(2) L2(3); tokens 0..3; final = L2/3
HAND = {
    "stages": ["emb", "L0", "L1", "L2"],
    "nodes": [[0, t, 1.0] for t in range(4)] + [[1, t, 1.0] for t in range(4)]
    + [[2, 1, 1.0], [2, 2, 1.0], [2, 3, 1.0], [3, 2, 0.5], [3, 3, 2.0]],
    "edges": [[0, t, 1, t, 1.0] for t in range(4)]
    + [[1, 0, 2, 1, 1.0], [1, 1, 2, 1, 3.0], [1, 2, 2, 2, 1.0], [1, 3, 2, 3, 2.0], [1, 0, 2, 3, -2.0]]
    + [[2, 1, 3, 3, 1.0], [2, 2, 3, 2, 1.0], [2, 3, 3, 3, 3.0]],
    "objective_value": 2.0, "settings": {},
}


def test_hand_built_graph():
    # ablating L0/1 (decoder layer 0, token 1): it reaches the prediction via L1/1 only
    v = ablation_view(HAND, _evidence([(0, 1), (1, 2)], [2.0, -0.5, -0.7], k=1))
    assert v.final == (3, 3) and v.k == 1 and v.flipped
    assert (v.delta_before, v.delta_after) == (2.0, -0.5)
    assert [(a.layer, a.position, a.stage, a.in_graph) for a in v.ablated] == [(0, 1, 1, True)]
    assert sorted(tuple(v.edges[e][:4]) for e in v.downstream_edges) == [(1, 1, 2, 1), (2, 1, 3, 3)]
    assert v.downstream_nodes == [(1, 1), (2, 1), (3, 3)] and v.reaches_output
    # final L2/3 splits: L1/1 gets 1/4, L1/3 3/4; L1/1 splits: L0/0 1/4, L0/1 3/4 -> 1/4 * 3/4 = 3/16
    assert v.through_share == pytest.approx(3 / 16)

    # not flipped: every node tried is marked; L1/2 (layer 1) only reaches the dead end L2/2
    v = ablation_view(HAND, _evidence([(1, 2), (5, 0)], [2.0, 1.5, 1.2]))
    assert v.k == 2 and not v.flipped and v.delta_after == 1.2
    assert [a.in_graph for a in v.ablated] == [True, False]  # no stage L5
    assert v.ablated[1].stage is None and "L5/0" in v.notes[0]
    assert v.downstream_edges == [] and v.downstream_nodes == [] and not v.reaches_output
    assert v.through_share == 0.0

    # L0/0 reaches the prediction two ways (one of them opposing: A < 0)
    v = ablation_view(HAND, _evidence([(0, 0)], [2.0, 3.0]), k=1)
    assert sorted(tuple(v.edges[e][:4]) for e in v.downstream_edges) == [(1, 0, 2, 1), (1, 0, 2, 3), (2, 1, 3, 3),
                                                                         (2, 3, 3, 3)]
    assert v.through_share == pytest.approx(1 / 4 * 1 / 4 + 3 / 4 * 2 / 4)


def test_errors_and_counts():
    ev = _evidence([(0, 1), (1, 2)], [2.0, -0.5, -0.7], k=1)
    assert ablated_count(ev) == 1 and ablated_count(ev, 2) == 2 and ablated_count({**ev, "flipped": False}) == 2
    with pytest.raises(FailtraceError, match="evidence lists 2"):
        ablation_view(HAND, ev, k=3)
    with pytest.raises(FailtraceError, match="curve has 2 values"):
        ablation_view(HAND, {**ev, "curve": [2.0, 1.0]}, k=2)
    with pytest.raises(FailtraceError, match="not a pruned graph"):
        ablation_view([1, 2], ev)


# ---------------------------------------------------------------------------------------------------------------
def _random_graph(rng: np.random.Generator, stages: int = 5, n: int = 5) -> dict:
    edges = []
    for s in range(stages - 1):
        for t in range(n):
            for src in range(n):
                if rng.random() < 0.35:
                    edges.append([s, src, s + 1, t, float(rng.normal())])
    nodes = {(e[0], e[1]) for e in edges} | {(e[2], e[3]) for e in edges} | {(stages - 1, n - 1)}
    return {"stages": ["emb"] + [f"L{l}" for l in range(stages - 1)],
            "nodes": [[s, t, 1.0] for s, t in sorted(nodes)], "edges": edges}


def _paths_down(edges, node):
    """Every path from ``node`` down along incoming edges to a node without any, as lists of edge indices."""
    inc = [e for e, x in enumerate(edges) if (x[2], x[3]) == node]
    if not inc:
        return [[]]
    return [[e] + rest for e in inc for rest in _paths_down(edges, (edges[e][0], edges[e][1]))]


@pytest.mark.parametrize("seed", range(6))
def test_against_path_enumeration(seed):
    rng = np.random.default_rng(seed)
    g = _random_graph(rng)
    n_stage = len(g["stages"])
    final = (n_stage - 1, 4)
    picks = [(int(rng.integers(0, n_stage - 1)), int(rng.integers(0, 4))) for _ in range(3)]
    v = ablation_view(g, _evidence(picks, [1.0, 0.5, 0.2, -0.1]), n_tokens=5)
    ablated = {(layer + 1, pos) for layer, pos in picks}  # stage of decoder layer l is l + 1
    edges = g["edges"]
    paths = _paths_down(edges, final)
    on_path = set()
    share = 0.0
    for p in paths:
        nodes_up = [(edges[e][0], edges[e][1]) for e in p]  # the source of each edge, from the top down
        hits = [j for j, nd in enumerate(nodes_up) if nd in ablated]
        if hits:
            on_path.update(p[: hits[-1] + 1])  # every edge above the lowest ablated node lies on an ablated->final path
        frac = 1.0
        for e in p:
            tgt = (edges[e][2], edges[e][3])
            frac *= abs(edges[e][4]) / sum(abs(x[4]) for x in edges if (x[2], x[3]) == tgt)
        share += frac if hits else 0.0
    assert sorted(v.downstream_edges) == sorted(on_path)
    assert v.reaches_output == any(any((edges[e][0], edges[e][1]) in ablated for e in p) for p in paths)
    assert v.through_share == pytest.approx(share, abs=1e-12)
    split = 0.0  # the brute force itself: the fractions split the final node's mass completely
    for p in paths:
        split += float(np.prod([abs(edges[e][4]) / sum(abs(x[4]) for x in edges
                                                        if (x[2], x[3]) == (edges[e][2], edges[e][3])) for e in p]))
    assert split == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
def test_tiny_model_ablating_the_view_nodes_reproduces_delta_after():
    from failtrace.analysis.categories import node_ablation
    from failtrace.cases.build import graph_record, logit_diff_fn
    from failtrace.graph.build import graph_from_ids
    from failtrace_testkit.tiny import tiny_model

    model = tiny_model("llama", layers=3)
    n = 14
    ids = [3 + (11 * i) % 120 for i in range(n)]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    target, contrast = [int(x) for x in logits.argsort(descending=True)[:2]]
    graph = graph_from_ids(model, ids, logit_diff_fn(target, contrast), tokens=[f"t{i}" for i in ids],
                           special_mask=[False] * n, node_threshold=0.0)
    evidence = node_ablation(model, ids, graph.relevance, target, contrast, budget=4)
    record = graph_record(graph, graph.pruned)
    view = ablation_view(record, evidence, n_tokens=n)
    live = ablation_view(graph.pruned, evidence)  # the live pruned graph gives the same view
    assert live.downstream_edges == view.downstream_edges and live.through_share == view.through_share

    def delta_with_hooks(nodes):
        layers = model.model.layers

        def hook_for(layer_idx):
            def hook(_mod, _inp, out):
                h = (out[0] if isinstance(out, tuple) else out).clone()
                for l, p in nodes:
                    if l == layer_idx:
                        h[:, p] = 0
                return (h, *out[1:]) if isinstance(out, tuple) else h
            return hook

        handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
        try:
            with torch.no_grad():
                lg = model(torch.tensor([ids])).logits[0, -1].double()
        finally:
            for h in handles:
                h.remove()
        return float(lg[target] - lg[contrast])

    marked = [(a.layer, a.position) for a in view.ablated]
    assert len(marked) == view.k >= 1 and any(a.in_graph for a in view.ablated) and view.reaches_output
    assert view.downstream_edges and 0 < view.through_share <= 1
    assert delta_with_hooks([]) == pytest.approx(view.delta_before, abs=1e-4)
    assert delta_with_hooks(marked) == pytest.approx(view.delta_after, abs=1e-4)
    for j, a in enumerate(view.ablated):  # each step of the curve as well
        assert delta_with_hooks(marked[: j + 1]) == pytest.approx(a.delta_after, abs=1e-4)
    # every ablated node the graph kept is drawn as stage L{layer}
    for a in view.ablated:
        assert a.in_graph == ((a.stage, a.position) in {(s, t) for s, t, _r in record["nodes"]})
        assert record["stages"][a.stage] == f"L{a.layer}"
