"""Pair-finding: cached batched rollouts equal naive decoding; results equal a brute-force search; statuses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from failtrace.benchmarks.base import Item, Verdict
from failtrace.errors import FailtraceError
from failtrace.failures.collect import collect
from failtrace.failures.generation import (
    decode_completion,
    eos_token_ids,
    greedy_generate,
    prefix_forward,
    rollout_batch_limit,
    rollouts,
)
from failtrace_testkit.reference_decoding import naive_greedy
from failtrace.failures.pairs import PairFinder, PairSettings, find_pairs
from failtrace_testkit.toy import ToyBenchmark, toy_items, toy_loaded
from failtrace.models.chat import apply_chat_template
from failtrace.store import PAIR_STATUSES, open_store

BUDGET = 16


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def lm(toy_lm: Any) -> Any:
    return toy_lm


@pytest.fixture(scope="module")
def helper() -> Any:
    return toy_loaded(1, dtype="float64")


def _case(lm: Any, index: int, budget: int = BUDGET) -> tuple[Item, list[int], list[int]]:
    item = toy_items(index + 1)[index]
    prompt = apply_chat_template(lm.tokenizer, item.prompt)
    eos = eos_token_ids(lm.model, lm.tokenizer)
    comp = greedy_generate(lm.model, [prompt], budget, eos)[0].token_ids
    return item, prompt, comp


def _alternatives(lm: Any, ids: list[int], target: int, k: int) -> list[int]:
    """Top-k next tokens after ``ids`` other than ``target``, from a fresh cache-free forward pass."""
    with torch.no_grad():
        row = lm.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
    return [t for t in torch.topk(row, k + 1).indices.tolist() if t != target][:k]


def _brute_force(lm: Any, bench: ToyBenchmark, item: Item, prompt: list[int], comp: list[int], k: int,
                 budget: int, max_positions: int = 64) -> tuple[int, int, int] | None:
    """Reference search: every rollout decoded from scratch without any cache, one at a time."""
    eos = eos_token_ids(lm.model, lm.tokenizer)
    for p in range(min(len(comp), max_positions)):
        for rank, alt in enumerate(_alternatives(lm, prompt + comp[:p], comp[p], k), start=1):
            seq = naive_greedy(lm.model, prompt + comp[:p], budget - p, eos, forced=alt)
            if bench.check(item, decode_completion(lm.tokenizer, comp[:p] + seq, eos)).passed:
                return p, alt, rank
    return None


def _needle_from_rollout(lm: Any, prompt: list[int], comp: list[int], p: int, rank: int, k: int,
                         budget: int = BUDGET) -> tuple[str, int]:
    """A prefix needle that only the rollout forcing the rank-th alternative at p satisfies."""
    eos = eos_token_ids(lm.model, lm.tokenizer)
    alt = _alternatives(lm, prompt + comp[:p], comp[p], k)[rank - 1]
    seq = naive_greedy(lm.model, prompt + comp[:p], budget - p, eos, forced=alt)
    return decode_completion(lm.tokenizer, comp[:p] + seq, eos), alt


@pytest.mark.tf4  # generation with the KV cache, also on transformers 4.x
def test_batched_cached_rollouts_equal_naive_greedy(lm: Any) -> None:
    eos = eos_token_ids(lm.model, lm.tokenizer)
    for index in (0, 5):
        _, prompt, comp = _case(lm, index, budget=24)
        state = prefix_forward(lm.model, prompt + comp, n_logits=len(comp) + 1)
        n = len(prompt)
        for p in (0, 2, len(comp) - 1):
            alts = _alternatives(lm, prompt + comp[:p], comp[p], 8)
            assert [t for t in torch.topk(state.logits[p], 9).indices.tolist() if t != comp[p]][:8] == alts
            batched = rollouts(lm.model, state.kv, n + p, alts, 24 - p, eos)
            in_pairs = rollouts(lm.model, state.kv, n + p, alts, 24 - p, eos, batch_size=3)
            naive = [naive_greedy(lm.model, prompt + comp[:p], 24 - p, eos, forced=a) for a in alts]
            assert batched == naive == in_pairs
            assert all(seq[0] == a and len(seq) <= 24 - p for seq, a in zip(batched, alts, strict=True))
            if eos & {t for seq in naive for t in seq}:  # some rollouts stop early: rows left the batch
                assert len({len(s) for s in batched}) > 1


@pytest.mark.tf4  # generation with the KV cache, also on transformers 4.x
def test_rollout_batches_shrink_to_fit_the_cache_budget(lm: Any) -> None:
    eos = eos_token_ids(lm.model, lm.tokenizer)
    _, prompt, comp = _case(lm, 3, budget=12)
    state = prefix_forward(lm.model, prompt + comp, n_logits=2)
    per_row = sum(2 * k.shape[1] * k.shape[-1] * 8 for k, _ in state.kv) * (len(prompt) + 12)
    assert rollout_batch_limit(state.kv, len(prompt), 12, max_bytes=1) == 1
    assert rollout_batch_limit(state.kv, len(prompt), 12, max_bytes=3 * per_row) == 3
    alts = [5, 9, 40, 77]
    assert rollouts(lm.model, state.kv, len(prompt), alts, 12, eos, batch_size=1) == \
        rollouts(lm.model, state.kv, len(prompt), alts, 12, eos)


@pytest.mark.parametrize(("index", "p_star", "rank_star"), [(1, 3, 2), (4, 0, 4), (6, 5, 1)])
def test_found_pair_matches_brute_force_with_known_answer(lm: Any, index: int, p_star: int, rank_star: int) -> None:
    item, prompt, comp = _case(lm, index)
    assert len(comp) > p_star
    needle, alt = _needle_from_rollout(lm, prompt, comp, p_star, rank_star, k=4)
    item.reference["needle"] = needle
    bench = ToyBenchmark(mode="prefix")
    res = PairFinder(lm, PairSettings(top_k=4, min_delta=0.0)).find(bench, item, prompt, comp, BUDGET)
    expected = _brute_force(lm, bench, item, prompt, comp, 4, BUDGET)
    assert expected == (p_star, alt, rank_star)
    assert (res.completion_offset, res.contrast_id, res.contrast_rank) == expected
    assert res.position == len(prompt) + p_star and res.target_id == comp[p_star]
    assert res.contrast_source == "model" and res.recovered_completion == needle
    assert res.positions_walked == p_star + 1
    blocks = [sum(min(2 ** i, 4) for i in range(j)) for j in range(8)]  # first position of each block: 0 1 3 7 ..
    block_end = min(b for b in blocks if b > p_star)  # positions batched with p_star (default position_batch 4)
    assert res.rollouts == 4 * min(block_end, len(comp))
    one = PairFinder(lm, PairSettings(top_k=4, min_delta=0.0, position_batch=1)).find(bench, item, prompt, comp,
                                                                                       BUDGET)
    assert one.rollouts == 4 * (p_star + 1) and one.to_dict() | {"seconds": 0} == res.to_dict() | {
        "seconds": 0, "rollouts": one.rollouts, "tokens_decoded": one.tokens_decoded, "checks": one.checks,
        "positions_rolled": one.positions_rolled,
        "reason": one.reason, "seconds_prefix": 0, "seconds_rollouts": 0, "seconds_check": 0} | {
        k: one.to_dict()[k] for k in ("seconds_prefix", "seconds_rollouts", "seconds_check")}
    assert res.checks <= res.rollouts + 1
    with torch.no_grad():
        row = lm.model(input_ids=torch.tensor([prompt + comp[:p_star]])).logits[0, -1]
    assert res.delta_logit == pytest.approx(float(row[comp[p_star]] - row[alt]), abs=1e-9)
    assert res.delta_logit >= 0
    others = [t for t in torch.argsort(row, descending=True).tolist() if t != comp[p_star]]  # target excluded
    assert res.contrast_model_rank == others.index(alt) + 1 == rank_star
    assert res.status == ("unbounded" if res.hit_length_limit else "clean" if res.delta_logit > 0
                          else "weak_preference")


@pytest.mark.parametrize("index", [2, 3, 7])
def test_substring_checker_matches_brute_force(lm: Any, index: int) -> None:
    """A needle that several rollouts may contain: the search must agree with brute force on the first one."""
    item, prompt, comp = _case(lm, index)
    text, _ = _needle_from_rollout(lm, prompt, comp, min(4, len(comp) - 1), 3, k=5)
    original = decode_completion(lm.tokenizer, comp, eos_token_ids(lm.model, lm.tokenizer))
    needle = next((text[i:i + 2] for i in range(len(text) - 1) if text[i:i + 2] not in original), text)
    item.reference["needle"] = needle
    bench = ToyBenchmark(mode="contains")
    assert not bench.check(item, original).passed
    res = PairFinder(lm, PairSettings(top_k=5, try_unbounded=True)).find(bench, item, prompt, comp, BUDGET)
    expected = _brute_force(lm, bench, item, prompt, comp, 5, BUDGET)
    assert expected is not None
    assert (res.completion_offset, res.contrast_id, res.contrast_rank) == expected


def test_min_delta_separates_clean_from_weak(lm: Any) -> None:
    item, prompt, comp = _case(lm, 1)
    needle, _ = _needle_from_rollout(lm, prompt, comp, 3, 2, k=4)
    item.reference["needle"] = needle
    bench = ToyBenchmark(mode="prefix")
    finish = "eos"  # judged as if the model had stopped: the statuses below are about Δℓ only
    loose = PairFinder(lm, PairSettings(top_k=4, min_delta=-1.0)).find(bench, item, prompt, comp, BUDGET, finish)
    assert loose.status == "clean"
    strict = PairFinder(lm, PairSettings(top_k=4, min_delta=loose.delta_logit)).find(bench, item, prompt, comp,
                                                                                    BUDGET, finish)
    assert strict.status == "weak_preference" and strict.contrast_id == loose.contrast_id


def test_no_target_no_contrast_and_position_cap(lm: Any, helper: Any) -> None:
    item, prompt, comp = _case(lm, 2)
    bench = ToyBenchmark(mode="never")
    res = PairFinder(lm, PairSettings(top_k=3, max_positions=4)).find(bench, item, prompt, comp, BUDGET, "eos")
    assert res.status == "no_target" and res.contrast_id is None
    assert res.positions_walked == 4 and res.rollouts == 12 and "capped by max-positions 4" in res.reason
    res = PairFinder(lm, PairSettings(top_k=3, max_positions=2), helper).find(bench, item, prompt, comp, BUDGET,
                                                                             "eos")
    assert res.status == "no_contrast" and res.positions_walked == 2
    # at each of the two positions: the model's own top-3, then the helper's top-3 that the model had not tried
    own = [_alternatives(lm, prompt + comp[:p], comp[p], 3) for p in range(2)]
    theirs = [_alternatives(helper, prompt + comp[:p], comp[p], 3) for p in range(2)]
    fresh = [[t for t in theirs[p] if t not in own[p]] for p in range(2)]
    assert res.rollouts == sum(len(o) for o in own) + sum(len(f) for f in fresh), (own, theirs)


def test_helper_supplies_a_contrast_outside_the_models_top_k(lm: Any, helper: Any) -> None:
    k, p_star = 3, 2
    for index in range(8):
        item, prompt, comp = _case(lm, index)
        if len(comp) <= p_star:
            continue
        own = _alternatives(lm, prompt + comp[:p_star], comp[p_star], k)
        theirs = _alternatives(helper, prompt + comp[:p_star], comp[p_star], k)
        fresh = [t for t in theirs if t not in own]
        if fresh:
            break
    else:  # pragma: no cover - depends on the seeds only
        pytest.fail("no position where the helper proposes a token outside the model's top-k")
    eos = eos_token_ids(lm.model, lm.tokenizer)
    seq = naive_greedy(lm.model, prompt + comp[:p_star], BUDGET - p_star, eos, forced=fresh[0])
    item.reference["needle"] = decode_completion(lm.tokenizer, comp[:p_star] + seq, eos)
    bench = ToyBenchmark(mode="prefix")
    assert _brute_force(lm, bench, item, prompt, comp, k, BUDGET) is None  # the model alone cannot recover
    res = PairFinder(lm, PairSettings(top_k=k, min_delta=-1, try_unbounded=True), helper).find(
        bench, item, prompt, comp, BUDGET)
    assert res.contrast_source == "helper" and res.contrast_id == fresh[0]
    assert res.contrast_rank == theirs.index(fresh[0]) + 1 and res.completion_offset == p_star
    with torch.no_grad():
        row = lm.model(input_ids=torch.tensor([prompt + comp[:p_star]])).logits[0, -1]
    others = [t for t in torch.argsort(row, descending=True).tolist() if t != comp[p_star]]  # the model's own order
    assert res.contrast_model_rank == others.index(fresh[0]) + 1 and res.contrast_model_rank > k
    alone = PairFinder(lm, PairSettings(top_k=k)).find(bench, item, prompt, comp, BUDGET)
    assert alone.status in ("no_target", "unbounded") and alone.contrast_id is None


def test_helper_with_another_tokenizer_is_refused(lm: Any) -> None:
    other = toy_loaded(1)
    other.tokenizer.add_tokens(["<extra-token>"])
    with pytest.raises(FailtraceError, match="different tokenizer"):
        PairFinder(lm, PairSettings(), other)


def test_unverifiable_and_unbounded(lm: Any) -> None:
    item, prompt, comp = _case(lm, 2)
    res = PairFinder(lm, PairSettings(top_k=3, max_positions=3)).find(
        ToyBenchmark(mode="contains", unverifiable_after=1), item, prompt, comp, BUDGET, "eos")
    assert res.status == "unverifiable" and res.unverifiable_rollouts == res.rollouts == 9
    eos = eos_token_ids(lm.model, lm.tokenizer)
    item.reference["needle"] = decode_completion(lm.tokenizer, comp, eos)[:2]  # the stored answer passes now
    res = PairFinder(lm, PairSettings()).find(ToyBenchmark(mode="prefix"), item, prompt, comp, BUDGET)
    assert res.status == "unverifiable" and res.rollouts == 0 and "now says 'pass'" in res.reason
    long_item, long_prompt, long_comp = _case(lm, 0, budget=6)
    assert long_comp[-1] not in eos and len(long_comp) == 6
    bench = ToyBenchmark(mode="never")
    res = PairFinder(lm, PairSettings(top_k=2, try_unbounded=True)).find(bench, long_item, long_prompt, long_comp, 6)
    assert res.status == "unbounded" and res.hit_length_limit and res.rollouts == 12
    res = PairFinder(lm, PairSettings(top_k=2)).find(bench, long_item, long_prompt, long_comp, 6)  # the default
    assert res.status == "unbounded" and res.rollouts == 0 and res.tokens_decoded == 0 and res.checks == 1
    assert "not searched" in res.reason and "--try-unbounded" in res.reason


def test_find_pairs_over_a_store_is_resumable(tmp_path: Path, lm: Any) -> None:
    bench = ToyBenchmark(mode="contains", max_new_tokens=BUDGET)
    items = toy_items(6, needle="zz")
    settings = PairSettings(top_k=3, max_positions=3)
    with open_store(tmp_path / "s.duckdb") as st:
        summary = collect(st, bench, items, lm, progress=False)
        assert summary.failed == 6
        first = find_pairs(st, settings, models={lm.name: lm}, benchmarks={"toy": bench}, limit=2, progress=False)
        assert first.processed == 2 and sum(first.statuses.values()) == 2
        rest = find_pairs(st, settings, models={lm.name: lm}, benchmarks={"toy": bench}, progress=False)
        assert rest.processed == summary.failed - 2 and rest.skipped == 2
        again = find_pairs(st, settings, models={lm.name: lm}, benchmarks={"toy": bench}, progress=False)
        assert again.processed == 0 and again.skipped == summary.failed
        assert first.pair_run_ids == rest.pair_run_ids == again.pair_run_ids
        other = find_pairs(st, PairSettings(top_k=2, max_positions=3), models={lm.name: lm},
                           benchmarks={"toy": bench}, progress=False)
        assert other.pair_run_ids != first.pair_run_ids and other.processed == summary.failed
        rows = st.pairs(first.pair_run_ids[0])
        failed_ids = {r["item_id"] for r in st.results(summary.run_id, status="fail")}
        assert {r["item_id"] for r in rows} == failed_ids and len(rows) == summary.failed
        assert all(r["status"] in PAIR_STATUSES for r in rows)
        status = [r for r in st.status_rows() if r.pair_run_id == first.pair_run_ids[0]][0]
        assert sum(status.pairs.values()) == summary.failed
        with pytest.raises(FailtraceError, match="no collection run"):
            find_pairs(st, settings, run_ids=["nope"], progress=False)
        with pytest.raises(FailtraceError, match="top-k"):
            find_pairs(st, PairSettings(top_k=0), progress=False)


def test_a_resumed_pair_run_records_other_speed_settings(tmp_path: Path, lm: Any) -> None:
    """Speed-only settings keep the run id; a call resuming it with other ones is recorded, not hidden."""
    bench = ToyBenchmark(mode="contains", max_new_tokens=BUDGET)
    items = toy_items(4, needle="zz")
    with open_store(tmp_path / "s.duckdb") as st:
        collect(st, bench, items, lm, progress=False)
        kw = {"models": {lm.name: lm}, "benchmarks": {"toy": bench}, "progress": False}
        first = find_pairs(st, PairSettings(top_k=2, max_positions=3), limit=1, **kw)
        same = find_pairs(st, PairSettings(top_k=2, max_positions=3), limit=1, **kw)
        assert "resumed_with" not in st.get_run(first.pair_run_ids[0]).settings  # same speed settings: nothing
        later = find_pairs(st, PairSettings(top_k=2, max_positions=3, order="margin", position_batch=2), **kw)
        assert later.pair_run_ids == same.pair_run_ids == first.pair_run_ids and later.processed == 2
        settings = st.get_run(first.pair_run_ids[0]).settings
        assert settings["order"] == "in-order"  # what the first call ran with
        [entry] = settings["resumed_with"]
        assert entry["order"] == "margin" and entry["position_batch"] == 2 and entry["failures"] == 2
        assert entry["changed"] == ["position_batch", "order"]
        done = find_pairs(st, PairSettings(top_k=2, max_positions=3, order="entropy"), **kw)
        assert done.processed == 0 and len(st.get_run(first.pair_run_ids[0]).settings["resumed_with"]) == 1


@dataclass
class AnyOf(ToyBenchmark):
    """Pass iff the completion is one of ``texts`` (recovered completions chosen by the test)."""

    texts: tuple[str, ...] = ()

    def check(self, item: Item, completion: str) -> Verdict:
        self.calls += 1
        return Verdict("pass" if completion in self.texts else "fail")


def _rollout_text(lm: Any, prompt: list[int], comp: list[int], p: int, alt: int) -> str:
    eos = eos_token_ids(lm.model, lm.tokenizer)
    seq = naive_greedy(lm.model, prompt + comp[:p], BUDGET - p, eos, forced=alt)
    return decode_completion(lm.tokenizer, comp[:p] + seq, eos)


def test_sibling_rows_only_before_the_blocks_own_answer_same_pair(lm: Any, helper: Any) -> None:
    """The sibling's rows are decoded in a second batch, only at a block's positions before its own first recovering
    one; against the exhaustive in-order search with the sibling: the same pair whichever recovers where (sibling
    earlier in the block, both at one position, the model earlier), and no sibling row where the model's own top-k
    recovers at the block's first position. Blocks of positions 3..6 (position_batch 4: blocks 0 | 1-2 | 3-6)."""
    from failtrace_testkit.reference_search import _top, exhaustive_search

    k = 3
    settings = PairSettings(top_k=k, min_delta=-100.0, position_batch=4, try_unbounded=True)
    cases = 0
    for index in range(10):
        item, prompt, comp = _case(lm, index)
        if len(comp) < 7:
            continue
        own = {p: _top(lm.model, prompt + comp[:p], comp[p], k) for p in (3, 5)}
        fresh = {p: [t for t in _top(helper.model, prompt + comp[:p], comp[p], k) if t not in own[p]]
                 for p in (3, 5)}
        if not fresh[3] or not fresh[5]:
            continue
        scenarios = {
            "sibling earlier": [(3, fresh[3][0]), (5, own[5][0])],
            "same position": [(3, own[3][1]), (3, fresh[3][0])],
            "model earlier": [(3, own[3][2]), (5, fresh[5][0])],
        }
        for name, wins in scenarios.items():
            bench = AnyOf(texts=tuple(_rollout_text(lm, prompt, comp, p, a) for p, a in wins))
            ref = exhaustive_search(lm, bench, item, prompt, comp, BUDGET, k, settings.max_positions, helper=helper,
                                    naive=True)
            res = PairFinder(lm, settings, helper).find(bench, item, prompt, comp, BUDGET, "eos")
            assert ref.offset is not None and ref.offset <= 3, (index, name)
            got = (res.completion_offset, res.contrast_id, res.contrast_source, res.contrast_rank)
            assert got == (ref.offset, ref.contrast, ref.source, ref.rank), (index, name, got, ref)
            if ref.offset == 3 and ref.source == "model":
                # the model's own answer at the block's first position: the sibling's rows of 3..6 never decoded
                before = sum(len(_top(lm.model, prompt + comp[:p], comp[p], k)) for p in range(3)) + sum(
                    len([t for t in _top(helper.model, prompt + comp[:p], comp[p], k)
                         if t not in _top(lm.model, prompt + comp[:p], comp[p], k)]) for p in range(3))
                assert res.rollouts <= before + 4 * k, (index, name, res.rollouts, before)
            cases += 1
        if cases >= 6:
            break
    assert cases >= 6
