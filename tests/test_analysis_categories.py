"""Node ablation against a hand-written forward without hooks, and the category rule by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from failtrace.analysis.categories import categorize, node_ablation
from failtrace.errors import FailtraceError


def _manual_logits(model, ids, zeroed):
    """Run the decoder layer by layer (explicit causal mask, no hooks) and zero the listed (layer, pos) states."""
    base = model.model
    with torch.no_grad():
        h = base.embed_tokens(torch.tensor([ids]))
        n = len(ids)
        pos = torch.arange(n)[None]
        mask = torch.full((n, n), torch.finfo(h.dtype).min).triu(1)[None, None]
        pe = base.rotary_emb(h, position_ids=pos)
        for layer_idx, layer in enumerate(base.layers):
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
            h = h[0] if isinstance(h, tuple) else h
            for l, p in zeroed:
                if l == layer_idx:
                    h = h.clone()
                    h[0, p] = 0.0
        return model.lm_head(base.norm(h))[0, -1].double()


def test_node_ablation_matches_manual_recomputation(tiny):
    model = tiny("llama")
    n = 12
    ids = torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(5)).tolist()
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(3, n))  # embeddings + 2 decoder layers
    hidden[2, n - 1] = 50.0  # the last position is never ablated
    hidden[1, 0] = 40.0  # nor a special token
    special = [True] + [False] * (n - 1)
    budget = 6
    # independent ordering: flatten decoder rows, drop the excluded cells, sort by (-R, layer, position)
    cells = [(-hidden[r, i], r - 1, i) for r in (1, 2) for i in range(n) if i != n - 1 and not special[i]
             and hidden[r, i] > 0]
    order = [(l, i) for _v, l, i in sorted(cells)][:budget]
    ref = [_manual_logits(model, ids, order[:k]) for k in range(budget + 1)]
    stack = torch.stack(ref)
    for target in stack[0].argsort(descending=True).tolist():  # a pair whose order the ablation reverses
        gain = (stack[1:] - stack[1:, target:target + 1]).max(0).values
        gain[stack[0] >= stack[0, target]] = -np.inf
        if gain.max() > 0:
            contrast = int(gain.argmax())
            break
    want = [float(r[target] - r[contrast]) for r in ref]
    got = node_ablation(model, ids, hidden, target, contrast, budget=budget, special_mask=special, batch=4)
    assert [(d["layer"], d["position"]) for d in got["nodes"]] == order
    assert got["curve"] == pytest.approx(want, abs=1e-4)
    want_k = next((k for k in range(1, budget + 1) if want[k] < 0), None)
    assert want_k is not None and got["k"] == want_k and got["flipped"]


def test_node_ablation_checks_shapes(tiny):
    model = tiny("llama")
    with pytest.raises(FailtraceError, match="rows; the model needs 3"):
        node_ablation(model, [4, 5, 6], np.ones((2, 3)), 1, 2)
    with pytest.raises(FailtraceError, match="3 tokens, the context 4"):
        node_ablation(model, [4, 5, 6, 7], np.ones((3, 3)), 1, 2)


def test_categorize_by_hand():
    flipped = {"flipped": True, "k": 2, "budget": 10, "nodes": [{"layer": 3, "position": 4, "relevance": 2.0},
                                                               {"layer": 1, "position": 2, "relevance": 1.0},
                                                               {"layer": 0, "position": 1, "relevance": 0.5}]}
    held = {"flipped": False, "k": None, "budget": 10, "nodes": flipped["nodes"]}
    assert categorize(2, held)[0] == "M-IA"
    assert categorize(5, held, k_ia=5)[0] == "M-IA"
    assert categorize(6, held, k_ia=5)[0] == "NC-IA+AG"
    assert categorize(None, held)[0] == "NC-IA+AG"
    label, ev = categorize(None, flipped)
    assert label == "NC-IA+M-AG" and ev["ablation_k"] == 2 and ev["ablated_nodes"] == flipped["nodes"][:2]
    assert categorize(7, flipped, k_ia=7)[0] == "M-IA"


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3", "olmo3"])
def test_ablation_with_a_reused_prefix_matches_the_full_forward(tiny, family):
    """Ablated nodes all after position 20 of 40: with the prefix before them run once (reuse_above lowered) the
    curve equals the path that runs every token, and for llama the hand-written forward without hooks."""
    from failtrace.analysis.categories import ablated_delta

    model = tiny(family)
    n = 40
    ids = torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(6)).tolist()
    order = [(0, 37), (1, 31), (0, 36), (0, 25), (1, 38)]  # layer-0 nodes near the end: seen by sliding windows
    sets = [order[:k] for k in range(len(order) + 1)]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    target, contrast = [int(i) for i in logits.argsort(descending=True)[:2]]
    reused = ablated_delta(model, ids, sets, target, contrast, batch=4, reuse_above=16)
    full = ablated_delta(model, ids, sets, target, contrast, batch=4, reuse_above=10**9)
    assert reused == pytest.approx(full, abs=1e-4)
    assert len(set(round(v, 3) for v in full)) > 1  # the ablations change the value: the check is not vacuous
    if family == "llama":
        want = [float(r[target] - r[contrast]) for r in (_manual_logits(model, ids, s) for s in sets)]
        assert reused == pytest.approx(want, abs=1e-4)
