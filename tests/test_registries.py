"""Registries: objectives, attribution methods (one line to add one) and the LRP rule table shared by patch and
graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import failtrace
from failtrace.attribution.methods import ATTRIBUTION_METHODS, MethodResult, get_method, register_method
from failtrace.attribution.objective import OBJECTIVES, objective_value, register_objective
from failtrace.errors import FailtraceError
from failtrace.lrp.methods import LRP_METHODS
from failtrace_testkit.toy import toy_loaded


def test_every_lrp_method_is_an_attribution_method_and_a_graph_method() -> None:
    assert set(LRP_METHODS) | {"ig"} <= set(ATTRIBUTION_METHODS)
    from failtrace.graph.closed_form import attention_factors

    for name, m in LRP_METHODS.items():
        assert attention_factors(name) == (m.q, m.k, m.v)
    assert (LRP_METHODS["attnlrp"].q, LRP_METHODS["attnlrp"].k, LRP_METHODS["attnlrp"].v) == (0.25, 0.25, 0.5)
    assert LRP_METHODS["gradxinput"].changes_nothing and not LRP_METHODS["cp-lrp"].changes_nothing


def test_objectives_by_name_match_their_formulas() -> None:
    logits = torch.tensor([[1.0, 4.0, -2.0, 0.5, 3.0]])
    assert float(objective_value(logits, "logit_diff", 1, 2)) == 6.0
    assert float(objective_value(logits, "max_logit", 1, None)) == 4.0
    assert float(objective_value(logits, "topk_mean", 1, None, k=2)) == pytest.approx(4.0 - (3.0 + 1.0) / 2)
    assert float(objective_value(logits, "vocab_mean", 1, None)) == pytest.approx(4.0 - 6.5 / 5)
    with pytest.raises(FailtraceError, match="unknown objective 'nope'; valid: logit_diff, max_logit"):
        objective_value(logits, "nope", 1, None)


def test_a_registered_method_and_objective_run_through_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    """One line registers a method; attribute() then uses it with the shared target/contrast preparation."""
    monkeypatch.setitem(OBJECTIVES, "double_target", lambda logits, t, c, k: 2 * logits[..., t])
    seen = {}

    def position_index(model, ids, objective, **options):  # relevance = position, value from a real forward
        seen["options"] = sorted(options)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        return MethodResult(np.arange(len(ids), dtype=float)[None], float(objective(logits)), logits)

    monkeypatch.setitem(ATTRIBUTION_METHODS, "position-index", position_index)
    lm = toy_loaded()
    attr = failtrace.attribute(lm, "abc", target="x", objective="double_target", method="position-index")
    assert attr.method == "position-index" and attr.objective == "double_target"
    np.testing.assert_array_equal(attr.input_relevance, np.arange(len(attr.tokens)))
    assert attr.delta_logit == pytest.approx(2 * attr.extra["target_logit"], rel=1e-5)
    assert seen["options"] == ["ig_steps", "seed", "use_checkpoint"]  # the options the registry documents
    with pytest.raises(FailtraceError, match="unknown method 'nope'; valid: attnlrp, cp-lrp, gradxinput, ig"):
        failtrace.attribute(lm, "abc", target="x", contrast="y", method="nope")


def test_lazy_registration_resolves_module_and_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ATTRIBUTION_METHODS, "lazy-ig", "failtrace.attribution.baselines:ig_method")
    from failtrace.attribution.baselines import ig_method

    assert get_method("lazy-ig") is ig_method
    register_method("tmp-one-line", ig_method)
    try:
        assert get_method("tmp-one-line") is ig_method
    finally:
        del ATTRIBUTION_METHODS["tmp-one-line"]


def test_register_objective_decorator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("failtrace.attribution.objective.OBJECTIVES", dict(OBJECTIVES))
    from failtrace.attribution import objective as obj

    @obj.register_objective("neg")
    def neg(logits, t, c, k):
        return -logits[..., t]

    assert float(obj.objective_value(torch.tensor([2.0, 5.0]), "neg", 1, None)) == -5.0
    assert register_objective is obj.register_objective


def test_one_benchmark_registry_for_python_cli_and_pipeline() -> None:
    import importlib

    from failtrace.benchmarks import registry
    from failtrace_testkit.toy import ToyBenchmark

    collect_mod = importlib.import_module("failtrace.failures.collect")  # the package exports a function "collect"

    assert collect_mod.resolve_benchmark is registry.resolve_benchmark  # the pipeline keeps no second registry
    assert not hasattr(collect_mod, "EXTRA_BENCHMARKS")
    ready = ToyBenchmark(name="toy-ready")
    registry.register_benchmark(ready)
    registry.register_benchmark("toy-built", "failtrace_testkit.toy:ToyBenchmark")  # one line, lazy
    try:
        assert registry.get_benchmark("toy-ready") is ready
        built = registry.get_benchmark("TOY-built", name="toy-built", mode="contains")
        assert isinstance(built, ToyBenchmark) and built.mode == "contains"
        assert {"toy-ready", "toy-built", "ifeval"} <= set(registry.benchmark_names())
        with pytest.raises(FailtraceError, match="takes no options"):
            registry.get_benchmark("toy-ready", mode="x")
        with pytest.raises(FailtraceError, match="bad options for benchmark 'toy-built'"):
            registry.get_benchmark("toy-built", colour="blue")
    finally:
        registry._REGISTRY.pop("toy-ready")
        registry._REGISTRY.pop("toy-built")


def test_a_method_registered_here_is_refused_for_ray_workers_before_any_work(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path) -> None:
    """Ray workers are fresh interpreters that know the built-in methods only: a method registered in this process
    would fail in every worker, case by case. ``analyse --workers`` refuses it at once, before a cluster starts or
    the store is read."""
    pytest.importorskip("ray")  # the [ray] extra: installed by scripts/setup.sh, so this runs in the suite
    import ray

    from failtrace.cases.settings import CaseSettings
    from failtrace.scale import analyse_on_ray

    monkeypatch.setitem(ATTRIBUTION_METHODS, "mine", lambda *a, **k: None)
    was_up = ray.is_initialized()
    with pytest.raises(FailtraceError, match=r"^mine is registered in this process only: the --workers processes "
                                             r"start fresh and know the built-in methods \(attnlrp, .*random\); "
                                             r"analyse without --workers$"):
        analyse_on_ray(None, CaseSettings(methods=("attnlrp", "mine")), 2)  # type: ignore[arg-type]
    assert ray.is_initialized() == was_up


def test_method_names_are_lower_case_and_a_bad_seed_is_said_before_any_pass() -> None:
    """The commands lower-case ``--method``, so a method registered as ``MyMethod`` could be listed but never chosen;
    names are refused unless lower case. The random baseline's seed is checked before the forward pass (it was
    numpy's bare ValueError after it, and 1.5 was read as 1)."""
    for bad in ("MyMethod", " x", "a,b", ""):
        with pytest.raises(FailtraceError, match="a method name is lower case"):
            register_method(bad, lambda *a, **k: None)
    lm = toy_loaded()
    for seed in (-1, 1.5, None, True):
        with pytest.raises(FailtraceError, match="seed must be an integer >= 0"):
            failtrace.attribute(lm, "abc", target="x", contrast="y", method="random", seed=seed)  # type: ignore
    assert failtrace.attribute(lm, "abc", target="x", contrast="y", method="random", seed=3).extra["seed"] == 3
