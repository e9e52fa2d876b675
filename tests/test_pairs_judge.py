"""The judge hint only orders positions: a right hint, a wrong hint and a real (toy) judge model all give the
exhaustive in-order search's pair; the right hint takes fewer rollouts than the wrong one. Quotes map to tokens."""

from __future__ import annotations

from typing import Any

import pytest

from failtrace.benchmarks.base import Item
from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate
from failtrace_testkit.reference_decoding import naive_greedy
from failtrace.failures.judge import PositionJudge, candidates, locate, token_at
from failtrace.failures.pairs import PairFinder, PairSettings
from failtrace_testkit.reference_search import _top, exhaustive_search
from failtrace.models.chat import apply_chat_template
from failtrace_testkit.toy import ToyBenchmark, toy_items, toy_loaded

BUDGET, K, POSITIONS = 14, 3, 12


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def lm(toy_lm: Any) -> Any:
    return toy_lm


class FixedJudge(PositionJudge):
    """A judge whose answer is given (the quote of a chosen position); the mapping to a token is the real one."""

    def __init__(self, loaded: Any, answer: str) -> None:
        super().__init__(loaded)
        self.answer = answer

    def ask(self, item: Item, completion: str) -> str:
        return f'The response first breaks it here: "{self.answer}"'


def _quote_of(tok: Any, comp: list[int], text: str, p: int) -> str | None:
    """A quote of ``text`` that starts at token p and occurs nowhere earlier (None when there is none)."""
    start = len(tok.decode(comp[:p], skip_special_tokens=True, clean_up_tokenization_spaces=False))
    for width in range(4, len(text) - start + 1):
        quote = text[start:start + width]
        if text.find(quote) == start and quote.strip() == quote and " " not in quote[:4]:
            return quote
    return None


def test_hints_order_positions_but_never_change_the_pair(lm: Any) -> None:
    eos = eos_token_ids(lm.model, lm.tokenizer)
    checked = 0
    for index in (0, 1, 7):
        item = toy_items(index + 1)[index]
        prompt = apply_chat_template(lm.tokenizer, item.prompt)
        comp = greedy_generate(lm.model, [prompt], BUDGET, eos)[0].token_ids
        original = decode_completion(lm.tokenizer, comp, eos)
        p_star = min(4, len(comp) - 3)
        alt = _top(lm.model, prompt + comp[:p_star], comp[p_star], K)[1]
        text = decode_completion(lm.tokenizer, comp[:p_star] + naive_greedy(lm.model, prompt + comp[:p_star],
                                                                            BUDGET - p_star, eos, forced=alt), eos)
        item.reference["needle"] = next(text[i:i + 2] for i in range(1, len(text)) if text[i:i + 2] not in original)
        bench = ToyBenchmark(mode="contains")
        ref = exhaustive_search(lm, bench, item, prompt, comp, BUDGET, K, POSITIONS, naive=True)
        if ref.offset is None or ref.offset < 2 or len(comp) - 1 <= ref.offset:
            continue
        quotes = {}
        for p in [ref.offset, *range(min(len(comp), POSITIONS) - 1, ref.offset + 1, -1)]:  # right, then latest
            quote = _quote_of(lm.tokenizer, comp, original, p)
            if quote is None:
                continue
            quotes[p] = quote
            if len(quotes) == 2 or ref.offset not in quotes:
                break
        if len(quotes) < 2:
            continue
        results = {}
        for name, (p, quote) in zip(("right", "wrong"), quotes.items(), strict=True):
            judge = FixedJudge(lm, quote)
            res = PairFinder(lm, PairSettings(top_k=K, max_positions=POSITIONS, position_batch=1), judge=judge).find(
                bench, item, prompt, comp, BUDGET, "eos")
            assert (res.completion_offset, res.contrast_id, res.contrast_rank) == (ref.offset, ref.contrast, ref.rank)
            assert res.judge_position == p and f"judge hint: completion offset {p}" in res.reason
            results[name] = res
        assert results["right"].rollouts < results["wrong"].rollouts  # the wrong hint rolled out a late position
        assert results["right"].rollouts == K * (ref.offset + 1)  # no waste: the hint, then everything before it
        checked += 1
    assert checked >= 2


def test_a_real_judge_model_and_an_unmatched_answer_leave_the_pair_alone(lm: Any) -> None:
    eos = eos_token_ids(lm.model, lm.tokenizer)
    item = toy_items(3)[2]
    prompt = apply_chat_template(lm.tokenizer, item.prompt)
    comp = greedy_generate(lm.model, [prompt], BUDGET, eos)[0].token_ids
    bench = ToyBenchmark(mode="never")
    ref = exhaustive_search(lm, bench, item, prompt, comp, BUDGET, K, 6, naive=True)
    for judge in (PositionJudge(toy_loaded(1)), FixedJudge(lm, "words that are nowhere")):
        res = PairFinder(lm, PairSettings(top_k=K, max_positions=6, order="margin"), judge=judge).find(
            bench, item, prompt, comp, BUDGET, "eos")
        assert res.status == "no_target" and ref.offset is None and res.rollouts == ref.rollouts
        assert "judge hint: " in res.reason and res.seconds_judge > 0
    assert res.judge_position is None and "is not in the completion" in res.reason


def test_quotes_are_found_and_mapped_to_the_token_that_holds_them(bundled: Any) -> None:
    tok = bundled.tokenizer
    text = "Sure! Here is my answer, with commas: apples, pears and plums. THE END is near."
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = enc["input_ids"], enc["offset_mapping"]
    for char in range(len(text)):
        owners = [i for i, (a, b) in enumerate(spans) if a <= char < b]
        if owners:  # the tokenizer's own offsets are the reference
            assert token_at(tok, ids, char) == owners[0]
    assert token_at(tok, ids, len(text)) is None
    assert locate('It breaks here: "apples, pears and"', text) == (text.index("apples"), "apples, pears and")
    assert locate("“with Commas: Bananas” is wrong", text) == (text.index("with commas"), "with Commas:")
    assert locate("nothing like it", text) == (None, None)
    assert candidates('"a b c d"') == ["a b c d", "a b c"]  # then shorter prefixes; "a b" is under 4 characters
    mixed = "caf\u00e9 \U0001F600 done"
    ids = tok.encode(mixed, add_special_tokens=False)
    j = token_at(tok, ids, mixed.index("\U0001F600"))
    assert "\U0001F600" not in tok.decode(ids[:j]) and tok.decode(ids[:j + 1]).endswith(("\ufffd", "\U0001F600"))
