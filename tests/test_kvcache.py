"""The in-place growing KV cache holds exactly what transformers' dynamic cache holds, and decoding with it is
token-identical to cache-free decoding (float64, toy model)."""

from __future__ import annotations

import torch

from failtrace.failures.generation import eos_token_ids, greedy_generate, prefix_forward, rollouts_at
from failtrace_testkit.reference_decoding import naive_greedy
from failtrace.failures.kvcache import cache_tensors, growing_layer, new_cache, select_rows
import pytest

from failtrace_testkit.tiny import tiny_model
from failtrace_testkit.toy import one_thread, toy_loaded


def test_growing_layers_match_the_dynamic_cache_through_growth_and_row_selection() -> None:
    from transformers import DynamicCache

    assert growing_layer() is not None  # this transformers has cache layers: the fast path is the one tested
    gen = torch.Generator().manual_seed(0)
    grow, plain = new_cache(max_len=50), DynamicCache()
    rows = torch.tensor([0, 2, 3])
    for step, q in enumerate([7, 1, 1, 30, 1, 1, 9, 1]):  # past the first buffer, and up to max_len exactly
        batch = 4 if step < 5 else 3
        for layer in range(2):
            k = torch.randn(batch, 2, q, 3, generator=gen, dtype=torch.float64)
            v = torch.randn(batch, 2, q, 3, generator=gen, dtype=torch.float64)
            a = grow.update(k, v, layer)
            b = plain.update(k, v, layer)
            assert all(torch.equal(x, y) for x, y in zip(a, b))
        if step == 4:
            select_rows(grow, rows)
            select_rows(plain, rows)
        assert grow.get_seq_length() == plain.get_seq_length()
    for (k1, v1), (k2, v2) in zip(cache_tensors(grow), cache_tensors(plain)):
        assert torch.equal(k1, k2) and torch.equal(v1, v2) and k1.shape[-2] == 51
    assert type(grow.layers[0]).__name__ == "GrowingLayer"
    assert grow.layers[0]._kbuf.shape[-2] == 51  # grown once past max_len only because 51 tokens were written


def test_decoding_with_the_growing_cache_is_token_identical_to_no_cache() -> None:
    with one_thread():
        lm = toy_loaded(0, dtype="float64")
        eos = eos_token_ids(lm.model, lm.tokenizer)
        prompts = [[5, 17, 3, 99, 42, 8], [7, 7, 21], [11, 12, 13, 14, 15, 16, 17, 18, 19]]
        outs = greedy_generate(lm.model, prompts, 40, eos)
        for p, o in zip(prompts, outs, strict=True):
            assert o.token_ids == naive_greedy(lm.model, p, 40, eos)
        ids = prompts[2] + outs[2].token_ids[:6]
        state = prefix_forward(lm.model, ids, n_logits=1)
        starts, forced = [9, 12, 15, 15], [3, 4, 5, 6]
        seqs, _ = rollouts_at(lm.model, state.kv, starts, forced, [30, 30, 30, 30], eos)
        for s, f, got in zip(starts, forced, seqs, strict=True):
            assert got == naive_greedy(lm.model, ids[:s], 30, eos, forced=f)


@pytest.mark.parametrize("arch", ["gemma3", "mistral", "olmo3"])
def test_sliding_window_models_decode_batches_as_cache_free_decoding_does(arch: str) -> None:
    """A sliding window (6 here) counts cache positions: rows of other prefix lengths and left padding must not
    share a batch's cache (they did: the masked hole shifted the window, and the rollouts came out wrong)."""
    with one_thread():
        model = tiny_model(arch, dtype=torch.float64)
        eos = frozenset({2})
        ids = list(range(10, 30))
        state = prefix_forward(model, ids, n_logits=1)
        starts, forced = [8, 14, 20, 20], [3, 4, 5, 6]
        seqs, _ = rollouts_at(model, state.kv, starts, forced, [15] * 4, eos)
        for s, f, got in zip(starts, forced, seqs, strict=True):
            assert got == naive_greedy(model, ids[:s], 15, eos, forced=f)
        prompts = [ids[:9], ids, ids[3:15]]
        for p, out in zip(prompts, greedy_generate(model, prompts, 15, eos), strict=True):
            assert out.token_ids == naive_greedy(model, p, 15, eos)
