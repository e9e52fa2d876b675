"""Batched multi-position rollouts and early stopping never change which pair is found (toy models, float64)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from failtrace.benchmarks.base import Item, Verdict
from failtrace.failures.generation import (
    decode_completion,
    eos_token_ids,
    greedy_generate,
    prefix_forward,
    rollouts_at,
)
from failtrace_testkit.reference_decoding import naive_greedy
from failtrace.failures.pairs import PairFinder, PairSettings, pair_run_record
from failtrace_testkit.reference_search import _top, exhaustive_search
from failtrace.models.chat import apply_chat_template
from failtrace.store.store import RunRecord
from failtrace_testkit.toy import ToyBenchmark, toy_items

BUDGET = 16


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def lm(toy_lm: Any) -> Any:
    return toy_lm


@dataclass
class Forbid(ToyBenchmark):
    """Pass iff the needle occurs and the forbidden character does not; a prefix with it fails whatever follows."""

    forbidden: str = "-"
    rule_calls: int = 0

    def check(self, item: Item, completion: str) -> Verdict:
        self.calls += 1
        ok = str(item.reference["needle"]) in completion and self.forbidden not in completion
        return Verdict("pass" if ok else "fail")

    def prefix_decides_fail(self, item: Item, prefix: str) -> str | None:
        self.rule_calls += 1
        return f"{self.forbidden!r} written" if self.forbidden in prefix else None


def _case(lm: Any, index: int, budget: int = BUDGET) -> tuple[Item, list[int], list[int]]:
    item = toy_items(index + 1)[index]
    prompt = apply_chat_template(lm.tokenizer, item.prompt)
    eos = eos_token_ids(lm.model, lm.tokenizer)
    return item, prompt, greedy_generate(lm.model, [prompt], budget, eos)[0].token_ids


def test_rollouts_at_several_prefix_lengths_equal_naive_greedy(lm: Any) -> None:
    eos = eos_token_ids(lm.model, lm.tokenizer)
    _, prompt, comp = _case(lm, 1, budget=20)
    n = len(prompt)
    state = prefix_forward(lm.model, prompt + comp, n_logits=2)
    starts = [0, 3, 3, 7, 1, 7]
    forced = [65, 80, 90, 40, 120, 7]
    budgets = [20 - p for p in starts]
    seqs, stopped = rollouts_at(lm.model, state.kv, [n + p for p in starts], forced, budgets, eos)
    naive = [naive_greedy(lm.model, prompt + comp[:p], b, eos, forced=a) for p, a, b in zip(starts, forced, budgets)]
    assert seqs == naive and stopped == [False] * len(starts)
    two, _ = rollouts_at(lm.model, state.kv, [n + p for p in starts], forced, budgets, eos, batch_size=4)
    assert two == naive
    # a stop rule ends rows only at multiples of stop_every, and a stopped row is a prefix of its full rollout
    seen: list[tuple[int, int]] = []

    def stop(i: int, toks: list[int]) -> bool:
        seen.append((i, len(toks)))
        return i % 2 == 0
    cut, ended = rollouts_at(lm.model, state.kv, [n + p for p in starts], forced, budgets, eos, stop=stop,
                             stop_every=3)
    assert all(length % 3 == 0 for _, length in seen)
    for i, (c, full) in enumerate(zip(cut, naive, strict=True)):
        assert full[:len(c)] == c
        if ended[i]:
            assert i % 2 == 0 and len(c) == 3 and len(full) > 3
        else:
            assert c == full
    assert any(ended)


def _compare(lm: Any, bench: Any, item: Item, prompt: list[int], comp: list[int], k: int, settings: PairSettings,
             budget: int = BUDGET) -> Any:
    res = PairFinder(lm, settings).find(bench, item, prompt, comp, budget, "eos")
    ref = exhaustive_search(lm, bench, item, prompt, comp, budget, k, settings.max_positions, naive=True)
    assert (res.completion_offset, res.contrast_id, res.contrast_rank) == (ref.offset, ref.contrast, ref.rank)
    if ref.offset is not None:
        with torch.no_grad():
            row = lm.model(input_ids=torch.tensor([prompt + comp[:ref.offset]])).logits[0, -1]
        assert res.delta_logit == pytest.approx(float(row[comp[ref.offset]] - row[ref.contrast]), abs=1e-9)
        assert res.status in ("clean", "weak_preference")
    else:
        assert res.status == "no_target"
    return res, ref


def test_early_stopping_and_batching_match_the_exhaustive_search(lm: Any) -> None:
    """The needle comes from a real rollout, the forbidden character from the stored completion but not that
    rollout: the rule fires on rollouts and on the completion's own prefixes, and a recovery exists."""
    k = 4
    eos = eos_token_ids(lm.model, lm.tokenizer)
    stopped = 0
    for index, p_needle, rank in ((1, 2, 3), (4, 1, 4), (6, 3, 1)):
        item, prompt, comp = _case(lm, index)
        alt = _top(lm.model, prompt + comp[:p_needle], comp[p_needle], k)[rank - 1]
        seq = naive_greedy(lm.model, prompt + comp[:p_needle], BUDGET - p_needle, eos, forced=alt)
        text = decode_completion(lm.tokenizer, comp[:p_needle] + seq, eos)
        original = decode_completion(lm.tokenizer, comp, eos)
        forbidden = next(c for c in original[p_needle:] if c not in text)
        item.reference["needle"] = text[-3:]
        bench = Forbid(forbidden=forbidden)
        results = [_compare(lm, bench, item, prompt, comp, k, PairSettings(top_k=k, min_delta=0.0, **kw))[0]
                   for kw in ({"early_stop": False, "position_batch": 1, "draft_tokens": 0}, {},
                              {"position_batch": 8, "stop_every": 1}, {"draft_from_completion": False},
                              {"position_batch": 3, "stop_every": 2, "rollout_batch_size": 5})]
        plain = results[0]
        assert plain.found and plain.rollouts_stopped == 0 and plain.positions_decided == 0
        for r in results[1:]:
            assert (r.status, r.completion_offset, r.contrast_id, r.recovered_completion) == \
                (plain.status, plain.completion_offset, plain.contrast_id, plain.recovered_completion)
        stopped += sum(r.rollouts_stopped for r in results)
    assert stopped > 0  # the rule did end rollouts: the comparison is not vacuous


def test_early_stopping_skips_positions_whose_own_prefix_fails(lm: Any) -> None:
    item, prompt, comp = _case(lm, 2)
    eos = eos_token_ids(lm.model, lm.tokenizer)
    text = decode_completion(lm.tokenizer, comp, eos)
    forbidden = text[3]  # written by the model at (about) its 4th character: later positions cannot recover
    item.reference["needle"] = "\x00never\x00"
    bench = Forbid(forbidden=forbidden)
    res, ref = _compare(lm, bench, item, prompt, comp, 3, PairSettings(top_k=3))
    assert res.status == "no_target" and res.positions_decided > 0
    assert res.rollouts + 3 * res.positions_decided == ref.rollouts  # every skipped position had k rollouts
    assert res.positions_walked == min(len(comp), 64) and "prefix already fails" in res.reason
    live = len(comp) - res.positions_decided if len(comp) <= 64 else 64 - res.positions_decided
    # the reason names where the prefix fails, and never points at --max-positions, which could not help
    assert f"the first {live} of {len(comp)} completion positions (from position {live} on" in res.reason
    assert "max-positions" not in res.reason


@dataclass
class EndsWith(ToyBenchmark):
    """Pass iff the text ends with the needle: a rollout cut at the budget fails, yet more tokens could pass it."""

    def check(self, item: Item, completion: str) -> Verdict:
        return Verdict("pass" if completion.endswith("\x00never\x00") else "fail")


@pytest.mark.parametrize("early_stop", [True, False])
def test_rollouts_cut_at_the_budget_with_the_verdict_open_are_counted_in_the_reason(lm: Any,
                                                                                     early_stop: bool) -> None:
    """A real IFEval failure ("wrap the answer in quotes") was called no_target while its fix, forced, ran to the
    budget and failed only for the missing closing quote. Not a status change: the reason counts such rollouts,
    here against naive greedy rollouts of every alternative."""
    item, prompt, comp = _case(lm, 3)
    eos = eos_token_ids(lm.model, lm.tokenizer)
    assert comp[-1] in eos and len(comp) < BUDGET  # a bounded failure: it is searched
    res = PairFinder(lm, PairSettings(top_k=3, max_positions=4, early_stop=early_stop)).find(
        EndsWith(), item, prompt, comp, BUDGET, "eos")
    cut = 0
    for p in range(4):
        for a in _top(lm.model, prompt + comp[:p], comp[p], 3):
            seq = naive_greedy(lm.model, prompt + comp[:p], BUDGET - p, eos, forced=a)
            cut += len(seq) >= BUDGET - p and seq[-1] not in eos
    assert res.status == "no_target" and 0 < cut < res.rollouts  # some rollouts stop by themselves, some are cut
    assert res.rollouts_cut_open == cut  # what pairs' closing hint counts
    assert (f"; {cut} rollouts were cut at the {BUDGET}-token rollout budget with the verdict still open (failing "
            f"so far; their text does not fix it): a larger --rollout-tokens could decide them") in res.reason


def test_rollout_budget_resolves_or_keeps_unbounded_failures(lm: Any) -> None:
    item, prompt, full = _case(lm, 1, budget=40)
    eos = eos_token_ids(lm.model, lm.tokenizer)
    assert full[-1] in eos and len(full) == 15
    comp = full[:8]  # what a collection with an 8-token budget stored: finish reason "length"
    never = ToyBenchmark(mode="never")
    res = PairFinder(lm, PairSettings(top_k=2)).find(never, item, prompt, comp, 8)
    assert res.status == "unbounded"
    longer = PairFinder(lm, PairSettings(top_k=2, rollout_tokens=24)).find(never, item, prompt, comp, 8)
    assert longer.status == "no_target" and "stops at 15 tokens" in longer.reason and longer.hit_length_limit
    # its positions 8..14 are not walked (a target there is not in the stored answer): the reason says so, and how
    assert "recovers in all 8 stored completion positions (the 7 after them, up to the continued completion's 15 " \
        "tokens, are not searched: a target there is not in the stored answer; collect with --max-new-tokens 15 " \
        "or more to search them)" in longer.reason
    assert longer.tokens_decoded >= 15 - 8  # the continuation counts as decoding (it read 0 when nothing else ran)
    again = PairFinder(lm, PairSettings(top_k=2, rollout_tokens=12)).find(never, item, prompt, comp, 8)
    assert again.status == "unbounded" and (again.continued, again.continued_tokens) == ("length", 12)
    assert "continued to the rollout budget (12 tokens), hit that too" in again.reason
    assert "--rollout-tokens continues it" not in again.reason  # it was just continued
    assert again.tokens_decoded == 12 - 8 and again.rollouts == 0
    short = len(decode_completion(lm.tokenizer, comp, eos))
    unclear = PairFinder(lm, PairSettings(top_k=2, rollout_tokens=24)).find(Longer(limit=short), item, prompt, comp, 8)
    assert unclear.status == "unbounded" and unclear.continued == "unverifiable"
    assert unclear.reason == "the completion hit the 8-token limit and, continued to 15 tokens (rollout budget 24), " \
        "could not be checked; not searched"
    item.reference["needle"] = decode_completion(lm.tokenizer, full, eos)
    artefact = PairFinder(lm, PairSettings(top_k=2, rollout_tokens=24)).find(ToyBenchmark(mode="prefix"), item,
                                                                             prompt, comp, 8)
    assert artefact.status == "unbounded" and "artefact of the budget" in artefact.reason and artefact.rollouts == 0
    assert artefact.tokens_decoded == 15 - 8
    # rollouts at the larger budget find exactly what the exhaustive search finds at that budget
    bench = Forbid(forbidden="\x7f")
    alt = _top(lm.model, prompt + comp[:1], comp[1], 3)[1]
    seq = naive_greedy(lm.model, prompt + comp[:1], 23, eos, forced=alt)
    item.reference["needle"] = decode_completion(lm.tokenizer, comp[:1] + seq, eos)[-4:]
    assert item.reference["needle"] not in decode_completion(lm.tokenizer, full, eos)
    res = PairFinder(lm, PairSettings(top_k=3, rollout_tokens=24)).find(bench, item, prompt, comp, 8)
    ref = exhaustive_search(lm, bench, item, prompt, comp, 24, 3, naive=True)
    assert (res.completion_offset, res.contrast_id) == (ref.offset, ref.contrast) and ref.offset is not None
    assert res.status in ("clean", "weak_preference")  # bounded now: the continued completion stops and fails


def test_run_identity_ignores_speed_only_settings(lm: Any) -> None:
    run = RunRecord(run_id="c1", stage="collect", parent_run_id=None, benchmark="toy", model=lm.name,
                    model_source="x", revision=None, dtype="float64", device="cpu", seed=0, versions={},
                    settings={"max_new_tokens": 32}, data=None)
    base = pair_run_record(run, lm, PairSettings(try_unbounded=True), None).run_id
    old_key = {"stage": "pairs", "parent": "c1", "helper": None, "top_k": 10, "min_delta": 1.0, "max_positions": 64,
               "try_unbounded": True}  # the key before these settings existed: stores keep their pair run ids
    assert base == hashlib.sha256(json.dumps(old_key, sort_keys=True).encode()).hexdigest()[:16]
    # the default skips unbounded failures (it records no recovery for them): a run of its own
    default = pair_run_record(run, lm, PairSettings(), None).run_id
    assert default == hashlib.sha256(json.dumps({**old_key, "try_unbounded": False},
                                                sort_keys=True).encode()).hexdigest()[:16] != base
    fast = PairSettings(position_batch=16, early_stop=False, stop_every=2, rollout_tokens=32, try_unbounded=True)
    assert pair_run_record(run, lm, fast, None).run_id == base
    assert pair_run_record(run, lm, PairSettings(rollout_tokens=64, try_unbounded=True), None).run_id != base


@dataclass
class Longer(ToyBenchmark):
    """Fails a text of at most ``limit`` characters; cannot judge a longer one."""

    limit: int = 0

    def check(self, item: Item, completion: str) -> Verdict:
        return Verdict("fail" if len(completion) <= self.limit else "unverifiable", ["too long to judge"])


@dataclass
class NoChar(ToyBenchmark):
    """Fail iff the completion holds ``ch``: text cut at the budget can pass where its continuation would fail."""

    ch: str = ","

    def check(self, item: Item, completion: str) -> Verdict:
        return Verdict("fail" if self.ch in completion else "pass")


def test_a_recovery_cut_at_the_budget_says_so(lm: Any) -> None:
    """A recovering rollout that reaches the budget without stopping passes on text cut there, as the failure was
    judged at that budget; its reason says so (it said nothing), and the same rollout continued further fails."""
    budget, eos = 14, eos_token_ids(lm.model, lm.tokenizer)
    for item in toy_items(12):
        prompt = apply_chat_template(lm.tokenizer, item.prompt)
        g = greedy_generate(lm.model, [prompt], budget, eos)[0]
        if g.finish_reason != "eos":
            continue
        comp, text = g.token_ids, decode_completion(lm.tokenizer, g.token_ids, eos)
        for p in range(len(comp)):
            alt = _top(lm.model, prompt + comp[:p], comp[p], 1)[0]
            cut = [alt] + greedy_generate(lm.model, [prompt + comp[:p] + [alt]], budget - p - 1, eos)[0].token_ids
            if cut[-1] in eos:
                continue
            longer = [alt] + greedy_generate(lm.model, [prompt + comp[:p] + [alt]], 80, eos)[0].token_ids
            short_text = decode_completion(lm.tokenizer, comp[:p] + cut, eos)
            long_text = decode_completion(lm.tokenizer, comp[:p] + longer, eos)
            chars = [c for c in long_text[len(short_text):] if c not in short_text and c in text and c.isascii()]
            if not chars:
                continue
            bench = NoChar(ch=chars[0])
            res = PairFinder(lm, PairSettings(top_k=1, min_delta=-1e9)).find(bench, item, prompt, comp, budget, "eos")
            if res.completion_offset != p:
                continue
            assert res.recovered_completion == short_text and bench.check(item, long_text).status == "fail"
            assert res.reason.endswith(f"; the recovering rollout reached the {budget}-token budget without stopping")
            # a rollout that stops within the budget carries no such note
            roomy = PairFinder(lm, PairSettings(top_k=1, min_delta=-1e9)).find(bench, item, prompt, comp, 200, "eos")
            assert roomy.completion_offset != p or "without stopping" not in roomy.reason
            return
    pytest.fail("no toy failure whose recovery is cut at the budget: the test would prove nothing")


def test_a_special_token_contrast_is_named_in_the_reason(lm: Any) -> None:
    """A non-EOS special id among the top-k can be the contrast; the checker reads text without it, so the reason
    says so (it did not), and a text contrast carries no such note."""
    eos = eos_token_ids(lm.model, lm.tokenizer)
    special = set(lm.tokenizer.all_special_ids) - eos
    budget = 14
    for item in toy_items(8):
        prompt = apply_chat_template(lm.tokenizer, item.prompt)
        comp = greedy_generate(lm.model, [prompt], budget, eos)[0].token_ids
        stored = decode_completion(lm.tokenizer, comp, eos)
        for p in range(min(len(comp), 10)):
            alt = next((a for a in _top(lm.model, prompt + comp[:p], comp[p], 10) if a in special), None)
            if alt is None:
                continue
            roll = [alt] + greedy_generate(lm.model, [prompt + comp[:p] + [alt]], budget - p - 1, eos)[0].token_ids
            text = decode_completion(lm.tokenizer, comp[:p] + roll, eos)
            needle = next((text[i:i + 2] for i in range(len(text) - 1) if text[i:i + 2] not in stored), None)
            if needle is None:
                continue
            item.reference["needle"] = needle
            res = PairFinder(lm, PairSettings(top_k=10, try_unbounded=True)).find(
                ToyBenchmark(mode="contains"), item, prompt, comp, budget)
            note = "the contrast is a special token: the checked text does not show it"
            assert (note in res.reason) == (res.contrast_id in special), (res.contrast_id, res.reason)
            if res.contrast_id in special:
                return
    pytest.fail("no toy failure recovered by a special token: the test would prove nothing")


def test_rollouts_stay_inside_the_context_window(lm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rollouts ran to the rollout budget whatever the prompt's length, past the model's window near its end (as
    collection did). Every rollout and continuation now ends by the window: prompt + completion <= window."""
    from failtrace.failures import search

    item, prompt, comp = _case(lm, 2)
    n, m = len(prompt), len(comp)
    assert m >= 4
    window = n + m + 2  # the stored completion fits; a rollout of the full budget (16) would not
    monkeypatch.setattr(lm.model.config, "max_position_embeddings", window)
    ends: list[int] = []
    real_rollouts, real_greedy = search.rollouts_at, search.greedy_generate

    def rollouts(model: Any, kv: Any, starts: list[int], tokens: list[int], budgets: list[int], *a: Any, **k: Any):
        out = real_rollouts(model, kv, starts, tokens, budgets, *a, **k)
        ends.extend(s + len(seq) for s, seq in zip(starts, out[0], strict=True))
        return out

    def greedy(model: Any, prompts: Any, budget: int, *a: Any, **k: Any):
        out = real_greedy(model, prompts, budget, *a, **k)
        ends.extend(len(p) + len(g.token_ids) for p, g in zip(prompts, out, strict=True))
        return out

    monkeypatch.setattr(search, "rollouts_at", rollouts)
    monkeypatch.setattr(search, "greedy_generate", greedy)
    for settings, finish in ((PairSettings(top_k=3), "eos"), (PairSettings(top_k=3, rollout_tokens=40), "eos"),
                             (PairSettings(top_k=3, rollout_tokens=40, try_unbounded=True), "length")):
        ends.clear()
        PairFinder(lm, settings).find(ToyBenchmark(mode="never"), item, prompt, comp, BUDGET, finish)
        assert len(ends) >= 3 * min(m, 4) and max(ends) <= window, (len(ends), max(ends), window)
        assert max(ends) > n + m  # rollouts did run on past the stored completion: the bound is what held them
    # a failure cut by the window is unbounded for good: no rollout budget continues it, and its reason says so (it
    # was told to try --rollout-tokens, which could never help)
    monkeypatch.setattr(lm.model.config, "max_position_embeddings", n + m)
    said = f"the completion reached the model's context window ({n + m} tokens with the prompt); no budget can"
    for settings in (PairSettings(top_k=3), PairSettings(top_k=3, rollout_tokens=40)):
        for finish in ("window", "length"):  # "length": a budget that ended exactly at the window's end
            res = PairFinder(lm, settings).find(ToyBenchmark(mode="never"), item, prompt, comp, m, finish)
            assert res.status == "unbounded" and res.reason.startswith(said), res.reason
    # continued by --rollout-tokens into the window: that, not the rollout budget asked for, stopped it
    k = m - 3  # a cut completion whose greedy continuation runs 2 more tokens without stopping (EOS comes last)
    monkeypatch.setattr(lm.model.config, "max_position_embeddings", n + k + 2)
    res = PairFinder(lm, PairSettings(top_k=3, rollout_tokens=40)).find(ToyBenchmark(mode="never"), item, prompt,
                                                                        comp[:k], k, "length")
    assert res.continued == "length" and res.continued_tokens == k + 2
    assert res.reason.startswith(f"the completion reached the model's context window ({n + k + 2} tokens with the "
                                 "prompt) when continued; no budget can continue it"), res.reason


@dataclass
class Final(ToyBenchmark):
    """Fails every completion; reads nothing after its first ``stop`` character (as HumanEval after a closed block)."""

    stop: str = "."

    def check(self, item: Item, completion: str) -> Verdict:
        return Verdict("fail")

    def prefix_final(self, item: Item, prefix: str) -> bool:
        return self.stop in prefix


def test_a_cut_completion_whose_text_fixes_the_verdict_is_searched(lm: Any) -> None:
    """A completion cut at the token budget was `unbounded` (never searched: "it could not be clean") even when its
    own text already fixed the verdict: a closed HumanEval block before 218 characters of prose, a comma under IFEval's
    "no commas". The benchmark's prefix rules now make it a decided failure, searched like a bounded one."""
    item, prompt, full = _case(lm, 1, budget=40)
    eos = eos_token_ids(lm.model, lm.tokenizer)
    comp = full[:8]  # finish reason "length"
    text = decode_completion(lm.tokenizer, comp, eos)
    written = next(c for c in text if not c.isspace())
    settings = PairSettings(top_k=2, max_positions=3)
    for bench, rule in ((Forbid(forbidden=written), "its text already fails whatever follows"),
                        (Final(stop=written), "the checker reads nothing after its text")):
        res = PairFinder(lm, settings).find(bench, item, prompt, comp, 8)
        assert res.status != "unbounded" and res.rollouts > 0 and res.hit_length_limit, res
        assert f"was cut at the 8-token limit but {rule}" in res.reason and "a decided failure" in res.reason
    unfixed = PairFinder(lm, settings).find(Forbid(forbidden="\x00"), item, prompt, comp, 8)
    assert unfixed.status == "unbounded" and unfixed.rollouts == 0  # nothing in its text decides it: as before
