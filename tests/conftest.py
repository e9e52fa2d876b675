"""Shared fixtures: tiny randomly initialised decoders of every supported family, and the real bundled model."""

from __future__ import annotations

import os
from typing import Any, Callable

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)


def _tiny_config(family: str) -> Any:
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(**TINY)
    if family == "qwen2":
        return tf.Qwen2Config(**TINY)
    if family == "qwen3":
        return tf.Qwen3Config(**TINY, head_dim=8)
    if family == "mistral":
        return tf.MistralConfig(**TINY, sliding_window=None)
    if family == "olmo2":
        return tf.Olmo2Config(**TINY)
    if family == "olmo3":
        return tf.Olmo3Config(**TINY, sliding_window=4)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**TINY, head_dim=8, sliding_window=4, query_pre_attn_scalar=8)
    if family == "gemma2":
        return tf.Gemma2Config(**TINY, head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
                               attn_logit_softcapping=5.0, final_logit_softcapping=3.0)
    raise ValueError(family)


FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "olmo2", "olmo3", "gemma3"]


def make_tiny(family: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """A tiny randomly initialised causal LM of ``family``; weights perturbed so norms are not all-ones."""
    import transformers as tf

    if family == "olmo3" and not hasattr(tf, "Olmo3Config"):  # both transformers used here (4.57, 5.x) ship it
        pytest.fail("this transformers release has no OLMo-3")
    torch.manual_seed(seed)
    cfg = _tiny_config(family)
    cfg._attn_implementation = "eager" if family == "gemma2" else "sdpa"
    model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights / biases: random so every rule is exercised away from trivial values
                p.add_(0.2 * torch.randn_like(p))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture
def tiny() -> Callable[..., torch.nn.Module]:
    return make_tiny


def pytest_configure(config: pytest.Config) -> None:
    """``-m tf4`` is the transformers 4.x run (Makefile: PYTHONPATH=.venv/tf4): on another transformers it would
    pass without testing 4.x at all, so it stops at once with one line."""
    if (config.getoption("markexpr", "") or "").strip() != "tf4":
        return
    import transformers

    if not transformers.__version__.startswith("4."):
        raise pytest.UsageError(
            f"-m tf4 is the transformers 4.x run, but transformers {transformers.__version__} was imported from "
            f"{os.path.dirname(transformers.__file__)}; run it as the Makefile does: "
            "PYTHONPATH=.venv/tf4 .venv/bin/python -m pytest -q -p no:cacheprovider -m tf4")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that takes the ``bundled`` fixture is marked ``model``, so ``-m "not model"`` never loads it."""
    for item in items:
        if "bundled" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def bundled() -> Any:
    """The real bundled SmolLM2-135M-Instruct (converted once per cache, then loaded in a few seconds)."""
    import failtrace

    return failtrace.load_model(progress=False)


@pytest.fixture
def single_thread():
    """One torch thread for the test (the toy pair-search tests compare exact float64 results; opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    from failtrace_testkit.toy import one_thread

    with one_thread():
        yield


@pytest.fixture
def cli_env(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, single_thread: None) -> None:
    """For tests of ``failtrace.cli.main``: crash logs go to the test's own folder (so a test can assert that none
    was written), torch on one thread. Opt in with ``pytestmark = pytest.mark.usefixtures("cli_env")``."""
    monkeypatch.setenv("FAILTRACE_LOG_DIR", str(tmp_path / "logs"))


@pytest.fixture(scope="module")
def toy_lm() -> Any:
    """The float64 toy model with its byte-level tokenizer (seed 0), loaded once per test module."""
    from failtrace_testkit.toy import one_thread, toy_loaded

    with one_thread():
        return toy_loaded(0, dtype="float64")


@pytest.fixture(scope="module", autouse=True)
def _benchmark_registry_per_module() -> Any:
    """Benchmarks a test module registers (several register a ``toy`` of their own settings) are undone after it,
    so no module passes or fails because of the order the modules ran in."""
    from failtrace.benchmarks import registry

    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
