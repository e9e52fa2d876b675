"""Decoding with lookup drafts gives exactly the tokens of cache-free greedy decoding, whatever the drafts (oracle,
corrupted, random), with holes squeezed out of the cache, per-row budgets, stop rules and halting as in plain
decoding; and the n-gram lookup proposes what a brute-force scan finds (float64 toy model)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import failtrace.failures.decode as decode
from failtrace.failures.generation import (eos_token_ids, greedy_generate, pad_token_id, prefix_forward,
                                          rollouts_at)
from failtrace_testkit.reference_decoding import naive_greedy
from failtrace.failures.lookup import NGRAM_SIZES, NgramDrafts
from failtrace_testkit.reference_decoding import hf_greedy
from failtrace_testkit.tiny import tiny_model
from failtrace_testkit.toy import one_thread, toy_model


def _brute_propose(h: list[int], k: int, sizes: tuple[int, ...] = NGRAM_SIZES) -> list[int]:
    """The latest earlier occurrence of the longest suffix n-gram, scanned from the end; periodic past the end."""
    for n in sizes:
        if len(h) < n:
            continue
        for end in range(len(h) - 1, n - 1, -1):
            if h[end - n:end] == h[-n:]:
                out = []
                for i in range(k):
                    out.append(h[end + i] if end + i < len(h) else out[i - (len(h) - end)])
                return out
    return []


def test_ngram_lookup_matches_a_brute_force_scan() -> None:
    rng = random.Random(0)
    for trial in range(40):
        vocab = rng.choice([2, 3, 5, 20])
        h = [rng.randrange(vocab) for _ in range(rng.randrange(1, 60))]
        d = NgramDrafts(h[:5])
        d.extend(h[5:])
        for k in (1, 4, 9):
            assert d.propose(k) == _brute_propose(h, k), (trial, h, k)
    loop = NgramDrafts([9, 1, 2, 3, 1, 2, 3, 1, 2])
    assert loop.propose(7) == [3, 1, 2, 3, 1, 2, 3]  # a loop of period 3 continues past the text's end
    assert NgramDrafts([1, 2, 3, 4]).propose(5) == []  # no n-gram recurs: no draft


def test_reference_lookup_reads_forward_as_a_brute_force_scan_does() -> None:
    """A row with a reference: the longest suffix n-gram is looked up in the reference first (its first occurrence
    after the last one used), then in the row's own tokens; checked against a scan of both, call after call."""
    rng = random.Random(1)
    for trial in range(60):
        vocab = rng.choice([2, 3, 6])
        ref = [rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
        h = [rng.randrange(vocab) for _ in range(rng.randrange(1, 12))]
        d = NgramDrafts(h, reference=ref)
        cursor = 0
        for step in range(15):
            k = rng.choice([1, 3, 8])
            want = None
            for n in NGRAM_SIZES:
                if len(h) < n:
                    continue
                ends = [e for e in range(n, len(ref)) if ref[e - n:e] == h[-n:] and e > cursor]
                if ends:
                    cursor = ends[0]
                    want = ref[cursor:cursor + k]
                    break
                if any(h[e - n:e] == h[-n:] for e in range(n, len(h))):
                    want = _brute_propose(h, k, (n,))
                    break
            assert d.propose(k) == (want or []), (trial, step, ref, h)
            new = ([rng.randrange(vocab)] if rng.random() < 0.3 else (want or [0])[:rng.randrange(1, 4)])
            h.extend(new)
            d.extend(new)
    # in step with a reference that repeats a phrase: drafted from where the row is, not from the first repeat
    d = NgramDrafts([7, 1, 2], reference=[1, 2, 3, 9, 1, 2, 4, 5])
    assert d.propose(2) == [3, 9]
    d.extend([3, 9, 1, 2])
    assert d.propose(3) == [4, 5]


@pytest.fixture()
def lm() -> Iterator[Any]:
    with one_thread():
        yield toy_model(3, dtype=torch.float64, stops=False)


class _Counter:
    """Counts forward passes and how many of them verified drafts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.passes = self.drafted = 0
        real = decode.forward_logits

        def counted(model: Any, keep: int | None = None, **kwargs: Any) -> Any:
            self.passes += 1
            self.drafted += int(kwargs["input_ids"].shape[1] > 1)
            return real(model, keep, **kwargs)

        monkeypatch.setattr(decode, "forward_logits", counted)


def _oracle(truth: list[list[int]], wrong: float, seed: int) -> type:
    """An NgramDrafts stand-in proposing the true greedy continuation of its row, each token replaced by a random
    one with probability ``wrong``."""
    rng = random.Random(seed)

    class Oracle:
        def __init__(self, tokens: list[int], reference: list[int] | None = None) -> None:
            self.tokens = list(tokens)
            self.ref = next(t for t in truth if t[:len(self.tokens)] == self.tokens)

        def extend(self, tokens: list[int]) -> None:
            self.tokens.extend(tokens)

        def propose(self, k: int) -> list[int]:
            true = self.ref[len(self.tokens):len(self.tokens) + k]
            return [t if rng.random() >= wrong else rng.randrange(259) for t in true]

    return Oracle


@pytest.mark.parametrize("wrong", [0.0, 0.3, 0.6, 1.0])
def test_rollouts_with_drafts_are_token_identical_to_cache_free_decoding(lm: Any, wrong: float,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    eos = frozenset({2})
    ids = [5, 17, 3, 99, 42, 8, 11, 12, 13, 14, 15]
    state = prefix_forward(lm, ids, n_logits=1)
    starts, forced, budgets = [6, 9, 11, 11, 7], [3, 4, 5, 6, 40], [70, 33, 90, 1, 64]
    truth = [ids[:s] + naive_greedy(lm, ids[:s], b, eos, forced=f) for s, f, b in zip(starts, forced, budgets)]
    monkeypatch.setattr(decode, "NgramDrafts", _oracle(truth, wrong, seed=1))
    squeezes = []
    real_gather = decode.gather_positions
    monkeypatch.setattr(decode, "gather_positions", lambda c, i: (squeezes.append(1), real_gather(c, i)))
    count = _Counter(monkeypatch)
    seqs, stopped = rollouts_at(lm, state.kv, starts, forced, budgets, eos,
                                contexts=[ids[:s] for s in starts], max_draft=8)
    assert [ids[:s] + q for s, q in zip(starts, seqs)] == truth
    assert stopped == [False] * 5
    assert count.drafted > 0
    if wrong == 0.0:  # every draft right: far fewer passes than the longest row has tokens
        assert count.passes < max(budgets) / 3
    if 0.0 < wrong < 1.0:  # drafts partly wrong: the holes they leave pile up and are squeezed out
        assert squeezes
    if wrong == 1.0:  # every draft wrong: drafting pauses, so most passes are plain steps
        assert count.drafted < count.passes / 4


def test_rollouts_drafted_from_the_completion_they_rejoin(lm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rollouts of a greedy completion, each with the completion after its position as reference: the tokens are
    cache-free greedy decoding's, and a rollout forcing the completion's own token (which then copies it) is
    drafted from the reference in far fewer passes than tokens; a wrong reference changes no token."""
    eos = frozenset({2})
    ids = [5, 17, 3, 99, 42, 8]
    comp = naive_greedy(lm, ids, 96, eos)
    full = ids + comp
    state = prefix_forward(lm, full, n_logits=1)
    pos = [10, 25, 40]
    starts = [len(ids) + p for p in pos]
    forced = [comp[10], 77, comp[40]]
    budgets = [len(comp) - p for p in pos]
    truth = [naive_greedy(lm, full[:s], b, eos, forced=f) for s, f, b in zip(starts, forced, budgets)]
    assert truth[0] == comp[10:] and truth[2] == comp[40:]
    contexts = [full[:s] for s in starts]
    runs = {}
    for name, refs in (("none", None), ("completion", [comp[p + 1:] for p in pos]),
                       ("shuffled", [random.Random(p).sample(comp, len(comp)) for p in pos])):
        count = _Counter(monkeypatch)
        seqs, _ = rollouts_at(lm, state.kv, starts, forced, budgets, eos, batch_size=1, contexts=contexts,
                              max_draft=8, references=refs)
        assert seqs == truth, name
        runs[name] = count.passes
    assert runs["completion"] < runs["none"]
    assert runs["completion"] < (budgets[0] + budgets[2]) / 3 + budgets[1]


def test_stop_rules_and_halting_end_rows_where_plain_decoding_does(lm: Any) -> None:
    eos = frozenset({2})
    ids = [7, 7, 21, 30, 31, 32]
    state = prefix_forward(lm, ids, n_logits=1)
    starts, forced = [3, 6, 6, 4], [100, 101, 102, 103]

    def stop(i: int, toks: list[int]) -> bool:
        return i % 2 == 0 and sum(toks) % 5 == 0  # an arbitrary rule, checked every 3 tokens

    def run(max_draft: int, halt_after: int | None) -> tuple[list[list[int]], list[bool], list[int]]:
        order: list[int] = []

        def on_end(i: int, toks: list[int], was_stopped: bool) -> bool:
            order.append(i)
            return halt_after is not None and i == halt_after

        seqs, stopped = rollouts_at(lm, state.kv, starts, forced, [50] * 4, eos, batch_size=2, stop=stop,
                                    stop_every=3, on_end=on_end, contexts=[ids[:s] for s in starts],
                                    max_draft=max_draft)
        return seqs, stopped, sorted(order)

    assert run(8, None) == run(0, None)
    seqs, stopped, ended = run(8, 1)
    plain_seqs, plain_stopped, _ = run(0, None)
    # halted as row 1 ended: row 0, still running or ended in the same pass, keeps a prefix of its tokens, and the
    # second batch never ran
    assert seqs[1] == plain_seqs[1] and plain_seqs[0][:len(seqs[0])] == seqs[0] and seqs[2:] == [[], []]
    assert 1 in ended and set(ended) <= {0, 1}


def test_sliding_window_models_decode_without_drafts(monkeypatch: pytest.MonkeyPatch) -> None:
    with one_thread():
        model = tiny_model("gemma3", dtype=torch.float64)
        assert decode.slides(model) and not decode.slides(tiny_model("llama"))
        count = _Counter(monkeypatch)
        prompt = [40, 41, 42, 43] * 4
        out = greedy_generate(model, [prompt], 20, frozenset({2}), max_draft=8)[0]
        assert count.drafted == 0
        assert out.token_ids == naive_greedy(model, prompt, 20, frozenset({2}))


def test_greedy_generate_with_drafts_on_the_bundled_model_matches_plain(bundled: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Real attention, a real loop: the small instruct model lists colours until the budget ("Red, Blue, Green,
    Blue, Red, ..."), next to a row that does not loop."""
    tok = bundled.tokenizer
    eos = eos_token_ids(bundled.model, tok)
    asks = ["List ten colours, one per line, and then list them again.",
            "Write a dialogue between two people going to a nightly event. Use exactly three bullet points."]
    prompts = [list(tok.apply_chat_template([{"role": "user", "content": a}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]) for a in asks]
    plain = greedy_generate(bundled.model, prompts, 120, eos)
    pad = pad_token_id(tok, eos)  # the plain batch (two rows, left-padded) is transformers' own generate, row by row
    assert [g.token_ids for g in plain] == [hf_greedy(bundled.model, p, 120, eos, pad) for p in prompts]
    drafted = greedy_generate(bundled.model, prompts, 120, eos, max_draft=8)
    assert [g.token_ids for g in drafted] == [g.token_ids for g in plain]
    count = _Counter(monkeypatch)
    alone = greedy_generate(bundled.model, prompts[:1], 120, eos, max_draft=8)[0]
    assert alone.token_ids == plain[0].token_ids and len(alone.token_ids) == 120
    assert count.passes < 120 / 2  # the loop was drafted: well under one pass per token


def _expected_accepted(q: float, d: int) -> float:
    """E[accepted draft tokens] by enumerating every hit/miss pattern of d guesses, each right with probability q:
    tokens are accepted up to the first miss."""
    total = 0.0
    for pattern in range(2 ** d):
        hits = [(pattern >> i) & 1 for i in range(d)]
        p = 1.0
        for h in hits:
            p *= q if h else 1 - q
        accepted = next((i for i, h in enumerate(hits) if not h), d)
        total += p * accepted
    return total


def test_draft_length_maximises_expected_tokens_per_cost_by_enumeration() -> None:
    """The chosen draft length is the argmax of (rows + expected accepted tokens) / the pass's cost, with the
    expectation computed by enumerating hit/miss patterns, for wide and narrow batches, good and poor guessers."""
    rng = random.Random(3)
    for _ in range(60):
        n, max_draft = rng.randint(1, 40), rng.choice([1, 4, 8])
        cost = rng.choice([decode.CPU_COST, decode.ACCELERATOR_COST, decode.PassCost(4.0, 0.0, 1.0)])
        plan = decode._Drafting(max_draft, n, cost)
        for r in range(n):  # a history of hits and misses per row
            for _ in range(rng.randint(0, 12)):
                plan.learn(r, [1], [1 if rng.random() < rng.random() else 2])
        guesses = [[0] * rng.choice([0, 2, 8]) for _ in range(n)]
        room = rng.randint(0, 9)
        value = {d: (n + sum(_expected_accepted(plan.rate(r), min(d, len(g))) for r, g in enumerate(guesses)))
                 / cost.of(n, d) for d in range(min(room, max_draft) + 1)}
        got = plan.length(list(range(n)), guesses, room)
        assert value[got] == pytest.approx(max(value.values())), (n, cost, room, value, got)


def test_guess_rate_counts_hits_up_to_the_first_miss() -> None:
    plan = decode._Drafting(8, 1, decode.CPU_COST)
    assert plan.rate(0) == 0.5
    plan.learn(0, [5, 6, 7, 8], [5, 6, 9])  # two hits, then a miss: three tries; the rest is not scored
    assert (plan.hits[0], plan.tries[0]) == (2.0, 3.0)
    plan.learn(0, [5], [5, 1])  # a hit with nothing after it to score: one try, no miss seen
    assert (plan.hits[0], plan.tries[0]) == pytest.approx((decode.MEMORY * 2 + 1, decode.MEMORY * 3 + 1))
    plan.learn(0, [], [4])  # no guess: nothing learned
    assert plan.tries[0] == pytest.approx(decode.MEMORY * 3 + 1)


@pytest.mark.parametrize(("rows", "most_drafted"), [(40, 0), (4, 2)])
def test_poor_guessers_on_a_cpu_stop_drafting(lm: Any, monkeypatch: pytest.MonkeyPatch, rows: int,
                                              most_drafted: int) -> None:
    """Rollouts whose drafts are always wrong: a wide batch never drafts (a pass of width 2 would cost more than
    the prior guess rate of 1/2 gains), a narrow one drafts only while its guess rate is still near the prior (the
    rate is learned on plain steps too); the tokens are plain decoding's."""
    eos = frozenset({2})
    ids = [5, 17, 3, 99, 42, 8, 11, 12, 13, 14, 15]
    state = prefix_forward(lm, ids, n_logits=1)
    starts = [6 + i % 5 for i in range(rows)]
    forced = [30 + i for i in range(rows)]
    truth = [ids[:s] + naive_greedy(lm, ids[:s], 24, eos, forced=f) for s, f in zip(starts, forced)]
    monkeypatch.setattr(decode, "NgramDrafts", _oracle(truth, 1.0, seed=2))
    count = _Counter(monkeypatch)
    seqs, _ = rollouts_at(lm, state.kv, starts, forced, [24] * rows, eos, batch_size=rows,
                          contexts=[ids[:s] for s in starts], max_draft=8)
    assert [ids[:s] + q for s, q in zip(starts, seqs)] == truth
    assert count.drafted <= most_drafted
    assert count.passes >= 20  # the rows ran (plain steps) rather than ending at once
