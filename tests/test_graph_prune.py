"""Pruning, subgraph connectivity, metrics and streaming storage, on hand-made graphs with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from failtrace.errors import FailtraceError
from failtrace.graph import AttributionGraph, PruneSpec, Stage, graph_from_ids, parse_layers, prune
from failtrace.graph.metrics import gini, top_paths, transition_metrics
from failtrace.graph.prune import check_node_threshold, select_edges
from failtrace.graph.edgestore import EdgeAccumulator
from failtrace_testkit.tiny import tiny_model


def _edge_set(dense: np.ndarray, s: int, t: int, budget: int | None = None):
    acc = EdgeAccumulator(dense.shape[0], budget)
    rows = torch.arange(dense.shape[0])
    acc.add(rows[:2], torch.tensor(dense[:2], dtype=torch.float32))  # two blocks: streaming
    acc.add(rows[2:], torch.tensor(dense[2:], dtype=torch.float32))
    return acc.finish(s, t, "test", 0.0)


A0 = np.array([[4.0, 0, 0, 0], [1.0, 3.0, 0, 0], [0.5, -2.2, 2.0, 0], [0.2, 0.1, -1.5, 5.0]])  # emb → L0
A1 = np.array([[3.0, 0, 0, 0], [0.3, 2.5, 0, 0], [0.0, 1.0, 2.0, 0], [1.9, -0.4, 1.2, 6.0]])  # no ties  # L0 → L1


def _graph(budget: int | None = None, special: list[bool] | None = None, rel: np.ndarray | None = None):
    if rel is None:
        rel = np.stack([A0.sum(0), A1.sum(0), A1.sum(1)])  # sources = column sums (conservation)
    return AttributionGraph(
        tokens=["<s>", "a", "b", "c"], token_ids=[1, 2, 3, 4], special_mask=special or [False] * 4,
        stages=[Stage(-1, "embed"), Stage(0, "resid"), Stage(1, "resid")], relevance=rel,
        transitions=[_edge_set(A0, 0, 1, budget), _edge_set(A1, 1, 2, budget)], objective_value=7.0,
        metadata={"node_threshold": 0.0, "prune": "cumulative:1", "retain_node_threshold": 0.0},
    )


def _brute_select(dense: np.ndarray, rows_ok: np.ndarray, p: float) -> set[tuple[int, int]]:
    """Independent reference: sort the kept rows' edges by |A| and take them until p of the mass is covered."""
    items = sorted(((abs(dense[j, i]), j, i) for j in range(dense.shape[0]) if rows_ok[j]
                    for i in range(dense.shape[1]) if dense[j, i] != 0), reverse=True)
    total = sum(m for m, _j, _i in items)
    out, acc = set(), 0.0
    for m, j, i in items:
        if acc >= p * total - 1e-12:
            break
        out.add((j, i))
        acc += m
    return out


def _brute_paths(g: AttributionGraph, dense: list[np.ndarray], kept: list[set[tuple[int, int]]]):
    """All bottom → final paths along the given edge sets, with their score (product over edges of |A| divided by
    the |A| row sum of the edge's target in the dense matrix) and sign (that of R_final · Π_e A_e / R_target(e): the
    part of the final relevance the path carries)."""
    n = g.n_tokens
    paths = []
    for seq in itertools.product(range(n), repeat=len(dense)):
        toks = list(seq) + [n - 1]
        if all((toks[k + 1], toks[k]) in kept[k] for k in range(len(dense))):
            w = [dense[k][toks[k + 1], toks[k]] for k in range(len(dense))]
            score = float(np.prod([abs(w[k]) / np.abs(dense[k][toks[k + 1]]).sum() for k in range(len(dense))]))
            part = g.relevance[-1, -1] * np.prod([w[k] / g.relevance[g.transitions[k].target_stage, toks[k + 1]]
                                                  for k in range(len(dense))])
            paths.append((score, int(np.sign(part)), toks))
    return paths


@pytest.mark.parametrize("p", [0.3, 0.5, 0.85, 1.0])
def test_cumulative_mass_and_connectivity(p):
    g = _graph()
    pr = prune(g, 0.0, f"cumulative:{p}")
    sel = [_brute_select(A0, np.ones(4, bool), p), _brute_select(A1, np.ones(4, bool), p)]
    # connectivity by hand: top transition keeps edges into the final node, then edges into their sources
    top = {(j, i) for (j, i) in sel[1] if j == 3}
    reach1 = {i for _j, i in top}
    low = {(j, i) for (j, i) in sel[0] if j in reach1}
    got = [{(int(es.target[k]), int(es.source[k])) for k in keep} for es, keep in zip(g.transitions, pr.edge_keep)]
    assert got == [low, top]
    expect_nodes = {(2, 3)} | {(1, i) for i in reach1} | {(0, i) for _j, i in low}
    assert set(pr.node_list()) == expect_nodes
    # coverage: kept mass over each transition's total mass
    for t, dense in enumerate((A0, A1)):
        kept_mass = sum(abs(dense[j, i]) for j, i in got[t])
        assert pr.coverage[t] == pytest.approx(kept_mass / np.abs(dense).sum())


@pytest.mark.parametrize("p", [0.4, 0.7, 0.9])
def test_cumulative_mass_counts_only_rows_the_node_threshold_keeps(p):
    """With a node threshold, p is a share of the mass into *kept* target nodes: L0 node 1 (1/6 of the stage's
    largest |R|) and the non-final L1 nodes (at most 3/8.7) fall below 0.5, and their rows neither count in the
    total nor give edges. Edges are chosen by that share first, then those from a dropped source node go (embedding
    nodes 1 and 2: 0.9/5.7 and 0.5/5.7)."""
    rel = np.stack([A0.sum(0), [5.2, 1.0, 3.2, 6.0], A1.sum(1)])
    g = _graph(rel=rel)
    sel = select_edges(g, 0.5, f"cumulative:{p}")
    nodes_ok = [np.array([True, False, False, True]), np.array([True, False, True, True]),
                np.array([False, False, False, True])]  # per stage: |R| / the stage's largest |R| >= 0.5
    for t, (es, dense) in enumerate(zip(g.transitions, (A0, A1))):
        got = {(int(es.target[k]), int(es.source[k])) for k in sel.chosen[t]}
        assert got == {(j, i) for j, i in _brute_select(dense, nodes_ok[t + 1], p) if nodes_ok[t][i]}, t
        assert sel.totals[t] == pytest.approx(np.abs(dense[nodes_ok[t + 1]]).sum()), t


def test_global_threshold_is_relative_to_final_node():
    g = _graph()
    r_final = abs(g.relevance[2, 3])
    pr = prune(g, 0.0, "global:0.2")
    thr = 0.2 * r_final
    for es, keep, dense in zip(g.transitions, pr.edge_keep, (A0, A1)):
        assert np.all(np.abs(es.weight[keep]) > thr)
    top = {(int(g.transitions[1].target[k]), int(g.transitions[1].source[k])) for k in pr.edge_keep[1]}
    assert top == {(3, i) for i in range(4) if abs(A1[3, i]) > thr}


def test_node_threshold_uses_non_special_scale():
    rel = np.stack([A0.sum(0), A1.sum(0), A1.sum(1)]).copy()
    rel[0] = [100.0, 1.0, 0.05, 0.5]  # the special BOS soaks up relevance; scale = 1.0 from token 'a'
    g = _graph(special=[True, False, False, False], rel=rel)
    pr = prune(g, 0.1, "cumulative:1")
    kept_emb = {i for s, i in pr.node_list() if s == 0}
    assert 2 not in kept_emb  # 0.05 / 1.0 < 0.1
    assert 0 in kept_emb  # special but far above the threshold (normalised 100)
    assert all(int(g.transitions[0].source[k]) != 2 for k in pr.edge_keep[0])


def test_reprune_needs_no_recomputation(tmp_path):
    g = _graph()
    path = g.save(tmp_path / "graph.json")
    loaded = AttributionGraph.load(path)  # no model anywhere: pruning works from stored edges alone
    for spec in ("cumulative:0.5", "cumulative:0.9", "global:0.1"):
        a, b = g.prune(0.0, spec), loaded.prune(0.0, spec)
        assert np.array_equal(a.nodes, b.nodes)
        assert [k.tolist() for k in a.edge_keep] == [k.tolist() for k in b.edge_keep]
    assert g.prune(0.0, "cumulative:0.3").num_edges < g.prune(0.0, "cumulative:0.95").num_edges


@pytest.mark.parametrize("bad", [-0.01, 1.5, float("nan"), float("inf")])
def test_bad_node_threshold(bad):
    with pytest.raises(FailtraceError, match=r"--node-threshold must be in \[0, 1\]"):
        check_node_threshold(bad)
    with pytest.raises(FailtraceError):
        _graph().prune(bad)


@pytest.mark.parametrize("spec,msg", [
    ("cumulative:0", r"\(0, 1\]"), ("cumulative:1.5", r"\(0, 1\]"), ("cumulative:-0.2", r"\(0, 1\]"),
    ("global:-1", ">= 0"), ("mass-ish:0.5", "unknown mode"), ("cumulative:abc", "not a number"),
])
def test_bad_prune_spec(spec, msg):
    with pytest.raises(FailtraceError, match=msg):
        PruneSpec.parse(spec)


def test_prune_spec_forms():
    assert PruneSpec.parse(None) == PruneSpec("cumulative", 0.85)
    assert PruneSpec.parse("0.7") == PruneSpec("cumulative", 0.7)
    assert PruneSpec.parse("global:0.05") == PruneSpec("global", 0.05)
    assert str(PruneSpec.parse("cumulative:1")) == "cumulative:1"


def test_node_threshold_below_retained_is_refused():
    g = _graph()
    g.metadata["retain_node_threshold"] = 0.05
    with pytest.raises(FailtraceError, match="rebuild the graph with retain_node_threshold <= 0.01"):
        g.prune(0.01)
    assert g.prune(0.05).num_nodes > 0


def test_budget_floor_and_incomplete_note():
    g = _graph(budget=3)
    for es, dense in zip(g.transitions, (A0, A1)):
        mags = np.sort(np.abs(dense[dense != 0]))[::-1]
        assert np.allclose(np.sort(np.abs(es.weight))[::-1], mags[:3])
        assert es.floor == pytest.approx(mags[3])
        np.testing.assert_allclose(es.row_mass, np.abs(dense).sum(1))  # exact even for dropped edges
        np.testing.assert_allclose(es.col_sum, dense.sum(0))
    pr = g.prune(0.0, "cumulative:0.99")
    assert any("stored edges cover" in note for note in pr.notes)
    assert not g.prune(0.0, "cumulative:0.3").notes  # reachable within the stored edges: exact, no note
    assert any("were not stored" in note for note in g.prune(0.0, "global:0.001").notes)


def test_gini_values():
    assert gini(np.array([1.0, 1, 1, 1])) == pytest.approx(0.0)
    assert gini(np.array([0.0, 0, 0, 1])) == pytest.approx(0.75)
    assert gini(np.array([])) == 0.0
    assert gini(np.array([-2.0, 2.0])) == pytest.approx(0.0)  # magnitudes


def test_transition_metrics():
    g = _graph()
    pr = g.prune(0.0, "cumulative:1")
    m = transition_metrics(pr)
    for t, dense in enumerate((A0, A1)):
        keep = pr.edge_keep[t]
        es = g.transitions[t]
        w = es.weight[keep].astype(float)
        assert m[t]["edges"] == len(keep)
        assert m[t]["mass"] == pytest.approx(np.abs(w).sum())
        diag = np.abs(w[es.source[keep] == es.target[keep]]).sum()
        assert m[t]["verticality"] == pytest.approx(diag / np.abs(w).sum())
        assert m[t]["verticality_all"] == pytest.approx(np.abs(np.diag(dense)).sum() / np.abs(dense).sum())


@pytest.mark.parametrize("spec", ["cumulative:1", "cumulative:0.85", "global:0.05"])
def test_top_paths_match_brute_force(spec):
    g = _graph()
    pr = g.prune(0.0, spec)
    kept = [{(int(es.target[k]), int(es.source[k])) for k in keep} for es, keep in zip(g.transitions, pr.edge_keep)]
    brute = _brute_paths(g, [A0, A1], kept)
    for sign in (1, -1):
        want = sorted((s for s, sg, _p in brute if sg == sign), reverse=True)[:3]
        got = top_paths(pr, k=3, sign=sign)
        assert [p["score"] for p in got] == pytest.approx(want, rel=1e-6)
        for p in got:
            toks = [int(x.split("/")[1]) for x in p["nodes"]]
            f0 = abs(A0[toks[1], toks[0]]) / np.abs(A0[toks[1]]).sum()
            f1 = abs(A1[toks[2], toks[1]]) / np.abs(A1[toks[2]]).sum()
            assert p["score"] == pytest.approx(f0 * f1) and p["bottleneck"] == pytest.approx(min(f0, f1))
            carried = g.relevance[2, 3] * A0[toks[1], toks[0]] / g.relevance[1, toks[1]] * A1[toks[2], toks[1]] \
                / g.relevance[2, 3]
            assert np.sign(carried) == sign == p["sign"]
            assert p["flow"] == pytest.approx(sign * f0 * f1 * abs(g.relevance[2, 3]))


def test_parse_layers():
    assert parse_layers(None, 30) == (0, 29)
    assert parse_layers("all", 30) == (0, 29)
    assert parse_layers("10-29", 30) == (10, 29)
    assert parse_layers("5", 30) == (5, 5)
    assert parse_layers("3,4,5", 30) == (3, 5)
    assert parse_layers("-3--1", 30) == (27, 29)
    assert parse_layers([7, 8], 30) == (7, 8)
    for bad, msg in [("30", "out of range: the model has 30 layers"), ("-31", "out of range"),
                     ("3,5", "not contiguous"), ("9-2", "above the last"), ("x", "not a layer range")]:
        with pytest.raises(FailtraceError, match=msg):
            parse_layers(bad, 30)


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_streaming_long_input_matches_unchunked(one_thread):
    """Many small row blocks and a small edge budget give exactly the strongest edges of the full computation."""
    model = tiny_model("llama", layers=2)
    ids = torch.randint(3, 128, (300,), generator=torch.Generator().manual_seed(3)).tolist()

    def objective(logits: torch.Tensor) -> torch.Tensor:
        return logits[5] - logits[7]

    full = graph_from_ids(model, ids, objective, edges="closed-form", node_threshold=0.0, edge_budget=None)
    small = graph_from_ids(model, ids, objective, edges="closed-form", node_threshold=0.0, edge_budget=2000,
                           memory_budget_mb=0.5)  # a few rows per block
    assert full.metadata["edge_budget"] is None and small.metadata["edge_budget"] == 2000
    for t in range(len(full.transitions)):
        dense = full.dense(t)
        es = small.transitions[t]
        want = min(2000, int(np.count_nonzero(dense)))  # the top layer has one non-zero row (the final token)
        assert len(es) == want and es.computed.all()
        top = np.sort(np.abs(dense).ravel())[::-1]
        np.testing.assert_allclose(np.sort(np.abs(es.weight))[::-1], top[:want], rtol=1e-5)
        np.testing.assert_allclose(es.col_sum, dense.sum(0), rtol=1e-4, atol=1e-6 * np.abs(dense).max())
    # pruning both at a level the budget covers gives the same subgraph
    a, b = full.prune(0.0, "cumulative:0.5"), small.prune(0.0, "cumulative:0.5")
    assert not b.notes
    assert np.array_equal(a.nodes, b.nodes) and a.num_edges == b.num_edges
