"""Graph edges: packed and closed form against the naive single-target reference, and conservation.

The reference is the definition itself: one backward pass per target token through the decoder layer module (or
its sub-block) under the AttnLRP rules. Node relevances come from the independent full backward pass of
:func:`failtrace.attribution.relevance_pass`, so the conservation check (Σ_j A[j, i] = R_s(i)) ties the edges to it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from failtrace.graph import AttributionGraph, graph_from_ids
from failtrace.graph import closed_form as cf_mod
from failtrace.graph.edges_packed import PackedEdges
from failtrace_testkit.tiny import ARCHITECTURES, tiny_model

N_TOKENS = 10
TOL = 2e-5  # relative to the transition's largest |edge|, float32


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models are faster on one thread, and the suite shares the machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _ids(n: int = N_TOKENS, seed: int = 0) -> list[int]:
    return torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _objective(logits: torch.Tensor) -> torch.Tensor:
    return logits[5] - logits[7]


def _build(model: torch.nn.Module, edges: str, **kw) -> AttributionGraph:
    kw.setdefault("node_threshold", 0.0)
    return graph_from_ids(model, _ids(), _objective, edges=edges, **kw)


def _max_rel_diff(a: AttributionGraph, b: AttributionGraph) -> float:
    assert len(a.transitions) == len(b.transitions)
    worst = 0.0
    for t in range(len(a.transitions)):
        da, db = a.dense(t), b.dense(t)
        worst = max(worst, float(np.abs(da - db).max() / max(np.abs(da).max(), 1e-12)))
    return worst


def _assert_conserves(g: AttributionGraph, tol: float = 1e-5) -> None:
    """Σ_j A[j, i] over targets equals the source node's relevance from the full pass, for every transition."""
    for t, es in enumerate(g.transitions):
        assert es.computed.all()
        src = g.relevance[es.source_stage]
        col = g.dense(t).sum(axis=0)
        scale = max(np.abs(src).max(), 1e-12)
        assert np.abs(col - src).max() / scale < tol, (t, g.stages[es.source_stage].name)


# Also run on transformers 4.x (make test: -m tf4), Gemma included: its 4.x layers get two rotary tables
# (position_embeddings_global/_local, mapped by layers.attention_call_kwargs) and Gemma-2's embeddings are scaled in
# the model's forward (state 0 is the first layer's real input: attribution.engine.relevance_pass).
@pytest.fixture(scope="module", params=[pytest.param(a, marks=[pytest.mark.tf4]) for a in ARCHITECTURES])
def arch_graphs(request):
    model = tiny_model(request.param)
    return request.param, {
        "naive": _build(model, "naive"),
        "packed": _build(model, "packed", batch_size=4),
        "closed-form": _build(model, "closed-form"),
        "naive-mid": _build(model, "naive", mid_nodes=True),
        "closed-form-mid": _build(model, "closed-form", mid_nodes=True),
    }


def test_packed_equals_naive(arch_graphs):
    arch, g = arch_graphs
    assert set(g["packed"].metadata["methods_used"].values()) == {"packed"}
    assert all(es.info["mode"] == "batched-vjp" and es.info["batch_size"] == 4 for es in g["packed"].transitions)
    assert _max_rel_diff(g["naive"], g["packed"]) < TOL, arch


def test_closed_form_equals_naive(arch_graphs):
    arch, g = arch_graphs
    assert set(g["closed-form"].metadata["methods_used"].values()) == {"closed-form"}, g["closed-form"].metadata
    assert _max_rel_diff(g["naive"], g["closed-form"]) < TOL, arch


def test_mid_nodes_closed_form_equals_naive(arch_graphs):
    arch, g = arch_graphs
    a, b = g["naive-mid"], g["closed-form-mid"]
    assert [s.name for s in a.stages] == ["emb", "L0.mid", "L0", "L1.mid", "L1"]
    # mid-node relevance: closed form (its own MLP backward) vs the naive path's separate computation
    mids = [i for i, s in enumerate(a.stages) if s.kind == "mid"]
    np.testing.assert_allclose(b.relevance[mids], a.relevance[mids], rtol=1e-4,
                               atol=1e-5 * np.abs(a.relevance[mids]).max())
    assert _max_rel_diff(a, b) < TOL, arch
    # the MLP transition is token-local: only diagonal edges
    for es in a.transitions:
        if a.stages[es.source_stage].kind == "mid":
            assert (es.source == es.target).all()


def test_conservation(arch_graphs):
    arch, g = arch_graphs
    for key in ("naive", "closed-form", "closed-form-mid", "naive-mid"):
        _assert_conserves(g[key])
    # the relevance of the final stage sums to the objective (the full pass conserves at the top)
    top = g["naive"].relevance[-1]
    assert abs(top.sum() - g["naive"].objective_value) < 1e-4 * max(1.0, abs(g["naive"].objective_value))


def test_edges_are_not_trivial(arch_graphs):
    """Off-diagonal edges exist and carry real mass, so the comparisons above test attention, not just residuals."""
    arch, g = arch_graphs
    dense = g["naive"].dense(len(g["naive"].transitions) - 1)
    off = dense - np.diag(np.diag(dense))
    assert np.abs(off).max() > 1e-3 * np.abs(dense).max(), arch
    assert np.allclose(np.triu(dense, 1), 0.0), "causal: no edge from a later token"


@pytest.mark.tf4
@pytest.mark.parametrize("broken", [(0.0, 0.25, 0.5), (0.25, 0.0, 0.5), (0.25, 0.25, 0.25)],
                         ids=["no-query-path", "no-key-path", "value-factor"])
def test_closed_form_check_is_sensitive(monkeypatch, broken):
    """Dropping any one term of the closed form makes it disagree with the naive reference."""
    model = tiny_model("qwen2")
    ref = _build(model, "naive")
    monkeypatch.setattr(cf_mod, "attention_factors", lambda rule: broken)  # the patch keeps the true rules
    bad = _build(model, "closed-form")
    assert _max_rel_diff(ref, bad) > 1e-3


@pytest.mark.tf4
@pytest.mark.parametrize("lrp_method", ["cp-lrp", "gradxinput"])
def test_other_lrp_methods(lrp_method):
    model = tiny_model("llama")
    ref = _build(model, "naive", method=lrp_method)
    cf = _build(model, "closed-form", method=lrp_method)
    assert _max_rel_diff(ref, cf) < TOL
    _assert_conserves(cf, tol=5e-5)  # the unfrozen norm's gradient cancels terms: a little more float32 noise


@pytest.mark.tf4
def test_packed_replicated_fallback(monkeypatch):
    """If the batched VJP raises, the replicated batch gives the same rows."""
    model = tiny_model("mistral")
    ref = _build(model, "naive")

    def boom(self, rows):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(PackedEdges, "_batched", boom)
    g = _build(model, "packed", batch_size=3)
    assert {es.info["mode"] for es in g.transitions} == {"replicated-batch"}
    assert _max_rel_diff(ref, g) < TOL


@pytest.mark.tf4
def test_packed_switches_when_vmap_loops(monkeypatch):
    """A vmap 'no batching rule' warning (per-sample loop) switches the transition to the replicated batch."""
    import warnings

    model = tiny_model("llama")
    ref = _build(model, "naive")
    original = torch.autograd.grad

    def noisy_grad(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            warnings.warn("There is a performance drop because we have not yet implemented the batching rule for "
                          "aten::fake_op", UserWarning)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", noisy_grad)
    g = _build(model, "packed", batch_size=3)
    assert {es.info["mode"] for es in g.transitions} == {"replicated-batch"}
    assert all("aten::fake_op" in es.info["vmap_fallbacks"][0] for es in g.transitions)
    assert _max_rel_diff(ref, g) < TOL


@pytest.mark.tf4
def test_gemma2_graphs_conserve():
    """Gemma-2 (soft-capping, outside the closed form) conserves with and without mid-nodes, on transformers 4 and 5.
    On 4.x it scales the embeddings by √d inside the model's forward, and the graph re-ran layer 0 from the unscaled
    embeddings: Σ of the first transition's edges was 0.24 against a relevance of 4.50, with no error."""
    model = tiny_model("gemma2")
    naive, packed = _build(model, "naive"), _build(model, "packed", batch_size=4)
    _assert_conserves(naive)
    _assert_conserves(_build(model, "naive", mid_nodes=True))
    assert _max_rel_diff(naive, packed) < TOL


@pytest.mark.tf4
def test_a_layer_that_does_not_rerun_alike_is_refused(monkeypatch):
    """Every edge of a layer comes from re-running it on its stored input: when that re-run does not give the stored
    output (as Gemma-2's layer 0 on transformers 4 did before), the graph is refused, not built with wrong edges."""
    from failtrace.errors import FailtraceError
    from failtrace.graph.layers import LayerCallCapture

    model = tiny_model("llama")
    real = LayerCallCapture.call
    monkeypatch.setattr(LayerCallCapture, "call", lambda self, idx, h: real(self, idx, h) * (1.01 if idx else 1.0))
    with pytest.raises(FailtraceError, match=r"re-running layer 1 \(LlamaDecoderLayer\)"):
        _build(model, "naive")


@pytest.mark.tf4
def test_closed_form_falls_back_for_softcapping():
    """Gemma-2's attention logit soft-capping is outside the closed form: packed is used, and a note says so."""
    model = tiny_model("gemma2")
    notes: list[str] = []
    g = _build(model, "closed-form", notify=notes.append)
    assert g.metadata["methods_used"] == {"0": "packed", "1": "packed"}
    assert g.metadata["closed_form_fallback_layers"] == [0, 1]
    assert len(notes) == 2 and "soft-capping" in notes[0] and "packed" in notes[0]
    ref = _build(model, "naive")
    assert _max_rel_diff(ref, g) < TOL
    auto = _build(model, "auto")
    assert auto.metadata["closed_form_fallback_layers"] == []  # auto accepts the fallback silently


@pytest.mark.tf4
def test_only_kept_rows_are_computed():
    """With a node threshold, rows of pruned target nodes are skipped and kept rows equal the reference."""
    model = tiny_model("olmo2")
    ref = _build(model, "naive")
    g = _build(model, "closed-form", node_threshold=0.3)
    special = np.asarray(ref.special_mask, dtype=bool)
    top = len(g.transitions) - 1
    skipped = 0
    for t, es in enumerate(g.transitions):
        rows = np.nonzero(es.computed)[0]
        skipped += int((~es.computed).sum())
        np.testing.assert_allclose(g.dense(t)[rows], ref.dense(t)[rows], atol=TOL * np.abs(ref.dense(t)).max())
        assert np.all(g.dense(t)[~es.computed] == 0)
        # by hand, from the unpruned reference's relevance: a target row is computed where its |R| is at least 0.3
        # of the stage's largest non-special |R|, and the final node's row (top transition, last position) always
        r = np.abs(ref.relevance[es.target_stage])
        want = r >= 0.3 * (r[~special].max() if (~special).any() else r.max())
        if t == top:
            want[-1] = True
        assert np.array_equal(es.computed, want), (t, es.computed, want)
    assert skipped > 0
    assert g.transitions[top].computed[-1] and g.stages[g.transitions[top].target_stage] == g.stages[-1]


@pytest.mark.tf4
def test_edge_budget_keeps_the_strongest():
    model = tiny_model("llama")
    full = _build(model, "closed-form")
    small = _build(model, "closed-form", edge_budget=7)
    for t, es in enumerate(small.transitions):
        dense = full.dense(t)
        mags = np.sort(np.abs(dense).ravel())[::-1]
        assert len(es) == 7
        np.testing.assert_allclose(np.sort(np.abs(es.weight))[::-1], mags[:7], rtol=1e-5)
        assert es.floor == pytest.approx(mags[7], rel=1e-5)
        # row sums stay exact even though edges were dropped
        np.testing.assert_allclose(es.row_sum, dense.sum(1), rtol=1e-4, atol=1e-6 * np.abs(dense).max())


@pytest.mark.model
def test_bundled_model_short_prompt(bundled):
    """SmolLM2-135M, all 30 layers, a short prompt: packed and closed form equal naive; edges conserve."""
    lm = bundled
    ids = lm.tokenizer.encode("The capital of France is")
    paris = lm.tokenizer.encode(" Paris", add_special_tokens=False)[0]
    lyon = lm.tokenizer.encode(" Lyon", add_special_tokens=False)[0]

    def objective(logits: torch.Tensor) -> torch.Tensor:
        return logits[paris] - logits[lyon]

    graphs = {m: graph_from_ids(lm.model, ids, objective, edges=m, node_threshold=0.0)
              for m in ("naive", "packed", "closed-form")}
    assert len(graphs["naive"].transitions) == 30
    assert set(graphs["closed-form"].metadata["methods_used"].values()) == {"closed-form"}
    assert _max_rel_diff(graphs["naive"], graphs["packed"]) < TOL
    assert _max_rel_diff(graphs["naive"], graphs["closed-form"]) < 1e-4
    _assert_conserves(graphs["closed-form"], tol=1e-4)
    mid_ref = graph_from_ids(lm.model, ids, objective, edges="naive", mid_nodes=True, layers="27-29",
                             node_threshold=0.0)
    mid_cf = graph_from_ids(lm.model, ids, objective, edges="closed-form", mid_nodes=True, layers="27-29",
                            node_threshold=0.0)
    assert [s.name for s in mid_cf.stages][:3] == ["L26", "L27.mid", "L27"]
    assert _max_rel_diff(mid_ref, mid_cf) < 1e-4
    _assert_conserves(mid_cf, tol=1e-4)


@pytest.fixture(scope="module")
def bundled():
    import failtrace

    old = torch.get_num_threads()
    lm = failtrace.load_model()
    yield lm
    torch.set_num_threads(old)


@pytest.mark.tf4
def test_layer_without_the_two_block_form(monkeypatch):
    """A layer that does not split into attention block + MLP block: no mid-nodes (clear error), packed edges."""
    import failtrace.graph.build as build_mod
    from failtrace.errors import FailtraceError

    monkeypatch.setattr(build_mod, "split_layer", lambda *a, **k: None)
    model = tiny_model("llama")
    with pytest.raises(FailtraceError, match="mid-nodes are unavailable for this model"):
        _build(model, "auto", mid_nodes=True)
    notes: list[str] = []
    g = _build(model, "auto", notify=notes.append)
    assert g.metadata["methods_used"] == {"0": "packed", "1": "packed"}
    assert "is not attention block then MLP block" in notes[0]
    assert _max_rel_diff(_build(model, "naive"), g) < TOL


@pytest.mark.tf4
def test_attention_blocks_are_called_without_a_cache_argument_warning():
    """The attention block is recomputed without a KV cache; passing transformers' old cache name beside the new one
    warned once per layer and graph (seen by API users: the CLI silences FutureWarnings)."""
    import warnings

    model = tiny_model("llama")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        g = _build(model, "closed-form", mid_nodes=True)
    assert set(g.metadata["methods_used"].values()) == {"closed-form"}
    assert g.metadata["closed_form_fallback_layers"] == []
    cache_words = [str(w.message) for w in seen if "past_key_value" in str(w.message) or "`cache`" in str(w.message)]
    assert cache_words == []


def test_gradient_times_input_gives_the_final_node_no_relevance():
    """Why `failtrace graph` refuses --method gradxinput: the final norm is scale-invariant, so the objective f of
    the last layer's output h satisfies f(c·h) = f(h), and by Euler's theorem h·∇f = 0 there (up to the norm's
    eps). The graph's final node then carries nothing to prune by or read from; AttnLRP's carries Δℓ."""
    model = tiny_model("llama")
    for method, expect_zero in (("gradxinput", True), ("attnlrp", False)):
        g = _build(model, "naive", method=method)
        stage, pos = g.final_node
        final = float(g.relevance[stage][pos])
        if expect_zero:
            assert abs(final) < 1e-3 * abs(g.objective_value), (final, g.objective_value)
        else:
            assert final == pytest.approx(g.objective_value, rel=1e-4)
