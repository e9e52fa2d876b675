"""Path scores and graph summaries on a tiny-model attribution graph, against brute-force path enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from failtrace.analysis.graph_summary import graph_summary, layer_bands
from failtrace.graph import graph_from_ids
from failtrace.graph.metrics import top_paths
from failtrace_testkit.tiny import tiny_model

N = 6


@pytest.fixture(scope="module")
def graph():
    from failtrace_testkit.toy import one_thread

    model = tiny_model("llama", layers=3)
    ids = torch.randint(3, 128, (N,), generator=torch.Generator().manual_seed(11)).tolist()
    with one_thread():  # the thread count is restored for the tests after this module
        return graph_from_ids(model, ids, lambda logits: logits[5] - logits[7],
                              tokens=[f"t{i}" for i in range(N)], special_mask=[True] + [False] * (N - 1),
                              edges="naive", node_threshold=0.0, retain_node_threshold=0.0, prune="global:0",
                              edge_budget=None)


def _brute(graph, pruned):
    """Every bottom → final path along kept edges: (score, sign, tokens), from dense matrices (no edge store); the
    sign is that of the part of R_final the path carries, R_final · Π_e A_e / R_target(e)."""
    dense = [graph.dense(t) for t in range(len(graph.transitions))]
    kept = [{(int(es.target[k]), int(es.source[k])) for k in keep}
            for es, keep in zip(graph.transitions, pruned.edge_keep)]
    out = []
    for seq in itertools.product(range(N), repeat=len(dense)):
        toks = list(seq) + [N - 1]
        if all((toks[k + 1], toks[k]) in kept[k] for k in range(len(dense))):
            w = [dense[k][toks[k + 1], toks[k]] for k in range(len(dense))]
            fr = [abs(w[k]) / np.abs(dense[k][toks[k + 1]]).sum() for k in range(len(dense))]
            # the part of R_final reaching the input: R_final · Π A_e / R_target(e); its sign, written out
            part = graph.relevance[-1, -1] * np.prod([w[k] / graph.relevance[graph.transitions[k].target_stage,
                                                                               toks[k + 1]] for k in range(len(dense))])
            out.append((float(np.prod(fr)), int(np.sign(part)), toks, min(fr)))
    return out


def test_scores_of_all_paths_sum_to_one(graph):
    pruned = graph.prune(0.0, "global:0")  # every non-zero edge
    brute = _brute(graph, pruned)
    assert len(brute) > 50
    assert sum(s for s, _sg, _t, _m in brute) == pytest.approx(1.0, abs=1e-6)
    both = top_paths(pruned, k=10_000, sign=1) + top_paths(pruned, k=10_000, sign=-1)
    assert len(both) == len(brute)
    assert sum(p["score"] for p in both) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("spec", ["cumulative:0.85", "cumulative:0.5", "global:0.05"])
def test_top_paths_match_brute_force_on_a_model_graph(graph, spec):
    pruned = graph.prune(0.0, spec)
    brute = _brute(graph, pruned)
    for sign in (1, -1):
        want = sorted(((s, t, m) for s, sg, t, m in brute if sg == sign), key=lambda x: -x[0])[:4]
        got = top_paths(pruned, k=4, sign=sign)
        assert [p["score"] for p in got] == pytest.approx([s for s, _t, _m in want], rel=1e-6)
        if got:
            assert [int(x.split("/")[1]) for x in got[0]["nodes"]] == want[0][1]
            assert got[0]["bottleneck"] == pytest.approx(want[0][2], rel=1e-6)
            assert abs(got[0]["flow"]) <= abs(graph.relevance[-1, -1]) + 1e-9


def test_layer_bands():
    assert layer_bands(list(range(30)), 3) == [list(range(10)), list(range(10, 20)), list(range(20, 30))]
    assert layer_bands([0, 1, 2, 3], 3) == [[0, 1], [2], [3]]
    assert layer_bands([0], 3) == [[0]]


def test_graph_summary(graph):
    pruned = graph.prune(0.0, "cumulative:0.85")
    labels = ["special", "system", "query", "query", "instruction", "answer"]
    s = graph_summary(pruned, labels, bands=2)
    assert [b["band"] for b in s["bands"]] == ["input", "L0-L1", "L2"]
    r_final = graph.relevance[-1, -1]
    assert s["final_relevance"] == pytest.approx(r_final)
    # by hand: stages are emb, L0, L1, L2 (rows 0..3); band L0-L1 = mean of rows 1 and 2
    rows = {"input": [0], "L0-L1": [1, 2], "L2": [3]}
    for band in s["bands"]:
        for seg in set(labels):
            idx = [i for i, lab in enumerate(labels) if lab == seg]
            want = np.mean([graph.relevance[r, idx].sum() for r in rows[band["band"]]])
            assert band["flow"][seg] == pytest.approx(want, rel=1e-9, abs=1e-12)
            assert band["share"][seg] == pytest.approx(want / r_final, rel=1e-9, abs=1e-12)
            assert band["kept_nodes"][seg] == sum(int(pruned.nodes[r, i]) for r in rows[band["band"]] for i in idx)
    # the top band's flows add up to the final stage's total relevance (Δℓ sits entirely on the last position)
    assert sum(s["bands"][-1]["flow"].values()) == pytest.approx(graph.relevance[3].sum())
    best = max((b for b in _brute(graph, pruned) if b[1] == 1), key=lambda b: b[0])
    assert s["strongest_path"]["score"] == pytest.approx(best[0], rel=1e-6)
    assert s["strongest_path"]["segment"] == labels[best[2][0]]
    content = [b for b in _brute(graph, pruned) if labels[b[2][0]] != "special"]
    best_c = max((b for b in content if b[1] == 1), key=lambda b: b[0])
    worst_c = max((b for b in content if b[1] == -1), key=lambda b: b[0])
    assert s["strongest_content_path"]["score"] == pytest.approx(best_c[0], rel=1e-6)
    assert s["strongest_content_path"]["input_token"] == best_c[2][0]
    assert s["strongest_opposing_content_path"]["score"] == pytest.approx(worst_c[0], rel=1e-6)
