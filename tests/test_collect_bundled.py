"""The decoding paths on the real bundled SmolLM2 model: our greedy loop equals transformers' generate, and the
cached batched rollouts equal rollouts decoded from scratch."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from failtrace.failures.generation import (
    eos_token_ids,
    greedy_generate,
    pad_token_id,
    prefix_forward,
    rollouts,
)
from failtrace.models.chat import apply_chat_template
from failtrace_testkit.reference_decoding import hf_greedy

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def bundled() -> Any:
    from failtrace.models.loading import load_model

    return load_model(progress=False)


def _hf_greedy(bundled: Any, ids: list[int], budget: int, eos: frozenset[int]) -> list[int]:
    """transformers' own greedy ``generate``: the reference, no failtrace decoding involved."""
    return hf_greedy(bundled.model, ids, budget, eos, pad_token_id(bundled.tokenizer, eos))


def test_greedy_generate_equals_transformers_generate(bundled: Any) -> None:
    eos = eos_token_ids(bundled.model, bundled.tokenizer)
    prompt = apply_chat_template(bundled.tokenizer, "What is the capital of France?")
    ours = greedy_generate(bundled.model, [prompt], 10, eos, pad_token_id(bundled.tokenizer, eos))[0]
    assert ours.token_ids == _hf_greedy(bundled, prompt, 10, eos)
    assert len(ours.token_ids) >= 2


def test_batched_rollouts_equal_from_scratch_on_the_bundled_model(bundled: Any) -> None:
    eos = eos_token_ids(bundled.model, bundled.tokenizer)
    pad = pad_token_id(bundled.tokenizer, eos)
    prompt = apply_chat_template(bundled.tokenizer, "Name a colour.")
    comp = greedy_generate(bundled.model, [prompt], 4, eos, pad)[0].token_ids
    state = prefix_forward(bundled.model, prompt + comp, n_logits=len(comp) + 1)
    p = 1
    alts = [t for t in torch.topk(state.logits[p], 4).indices.tolist() if t != comp[p]][:3]
    batched = rollouts(bundled.model, state.kv, len(prompt) + p, alts, 6, eos)
    for alt, seq in zip(alts, batched, strict=True):
        if alt in eos:
            assert seq == [alt]
            continue
        scratch = _hf_greedy(bundled, prompt + comp[:p] + [alt], 5, eos)
        assert seq == [alt, *scratch]
