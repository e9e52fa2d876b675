"""IFEval prefix rules are sound under the official checker, and the fast search equals the exhaustive one on real
IFEval items with the bundled model and the real checker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from failtrace.benchmarks.base import Item
from failtrace.benchmarks.ifeval import IFEvalBenchmark
from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate
from failtrace.failures.pairs import PairFinder, PairSettings
from failtrace.failures.prefix_rules import prefix_text
from failtrace_testkit.reference_search import exhaustive_search
from failtrace.models.chat import apply_chat_template
from failtrace_testkit.toy import one_thread


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _item(ids: list[str], kwargs: list[dict[str, Any]], prompt: str = "Answer the question.") -> Item:
    return Item(id="t", benchmark="ifeval", prompt=prompt, reference={"instruction_id_list": ids, "kwargs": kwargs})


TEXTS = [
    "Hello, world! this is a test",
    "all lowercase words here and there with no commas at all",
    "ALL CAPS TEXT WITH NO LOWER LETTERS, REALLY",
    '"A quoted answer, with a comma" and more',
    '  "quoted" reply without comma',
    "Repeat: what is the capital of France? Paris is the capital.",
    "what is the capital of france? it is paris",
    "The word banana appears; Banana again, and bananas once (banana).",
    "eee e e e eeee and so on",
    "Zebras graze. Zebra-like zebroids exist too!",
    "one two three four five six seven eight nine ten eleven",
    "caf\u00e9 na\u00efve \u00dcber, \u2019quotes\u2019 and \U0001F600 emoji",
    "\u0391\u03a3\u0391 \u03a0\u0395\u03a3 and then an answer.",  # ΑΣΑ ΠΕΣ: a capital sigma lowers by what follows
    "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3 \u03a3\u0391\u03a3.",  # ΟΔΥΣΣΕΥΣ ΣΑΣ.
    "\u0391\u03a3\u0345\u0392 \u03a3\u0345 and more",  # U+0345 is cased and case-ignorable: Σ's sigma waits past it
    "\u03a3\u0391\u03a3.\u0391 and more",  # ΣΑΣ.Α: "." is case-ignorable too, so it is σ, not ς, before the Α
]
CASES = [
    (["punctuation:no_comma"], [{}]),
    (["change_case:english_lowercase"], [{}]),
    (["change_case:english_capital"], [{}]),
    (["length_constraints:number_words"], [{"relation": "less than", "num_words": 6}]),
    (["keywords:letter_frequency"], [{"letter": "e", "let_frequency": 5, "let_relation": "less than"}]),
    (["keywords:frequency"], [{"keyword": "banana", "frequency": 2, "relation": "less than"}]),
    (["keywords:forbidden_words"], [{"forbidden_words": ["zebra", "paris"]}]),
    (["startend:quotation"], [{}]),
    (["combination:repeat_prompt"], [{"prompt_to_repeat": "What is the capital of France?"}]),
    (["combination:repeat_prompt"], [{"prompt_to_repeat": "\u0391\u03a3\u0391 \u03a0\u0395\u03a3"}]),
    (["combination:repeat_prompt"], [{"prompt_to_repeat": "\u0391\u03a3\u0345\u0392"}]),
    (["combination:repeat_prompt"], [{"prompt_to_repeat": "\u03a3\u0391\u03a3.\u0391"}]),
    (["punctuation:no_comma", "length_constraints:number_words"], [{}, {"relation": "at least", "num_words": 3}]),
]
CONTINUATIONS = ["", " ", "x", ".", "a", "\n", ", and", "ly", " THE END", " the end", '"', "s", "\u00e9", "\u0391",
                 ".\u0391", "\u0345", "\u0345\u0391", "'\u0391"]


@pytest.mark.parametrize(("ids", "kwargs"), CASES)
def test_a_decided_prefix_fails_whatever_follows(ids: list[str], kwargs: list[dict[str, Any]]) -> None:
    """Every character prefix of every text: when the rule decides, the official checker says fail for the prefix
    and for it followed by each continuation; a passing text never has a decided prefix."""
    bench = IFEvalBenchmark()
    item = _item(ids, kwargs)
    fired = 0
    for text in TEXTS:
        for j in range(1, len(text) + 1):
            why = bench.prefix_decides_fail(item, text[:j])
            if why is None:
                continue
            fired += 1
            for tail in CONTINUATIONS + [text[j:]]:
                verdict = bench.check(item, text[:j] + tail)
                assert verdict.status == "fail", (text[:j], tail, why)
    assert fired > 0  # every rule fires on some prefix: the soundness check is not vacuous
    assert IFEvalBenchmark(mode="loose").prefix_decides_fail(item, "Hello, WORLD") is None  # strict mode only


JSON_TEXTS = [
    '```json\n{"a": [1, 2]}\n```\nThis is the JSON.',
    '{"name": "x, y"} and more',
    'Sure! Here is {"a": 1}',
    '  ```JSON\n["x", "y"]```',
    '"just a string" trailing',
    '```\n{"k": "v}"}\n```',
    '```js\n{}\n```',
    "NaN",
    "[1, 2]\n\n```",
    "```Json {\"a\": 1}``` ok",
    "12 apples",
    "tru story",
]
JSON_TAILS = ["", " ", "x", "`", "```", "\n```", "}", "]", ' {"b": 2}', "e5", "\n```\nDone.", '"', "1"]


def test_the_json_rule_decides_only_what_the_official_check_fails() -> None:
    """Every character prefix of texts that are, are not and are nearly JSON (fences, trailing prose, strings with
    braces, NaN, numbers that may grow): when the rule decides, the official checker fails the prefix followed by
    each continuation; the rule fires both at the start and after a closed value."""
    bench = IFEvalBenchmark()
    item = _item(["detectable_format:json_format"], [{}])
    reasons = set()
    for text in JSON_TEXTS:
        for j in range(1, len(text) + 1):
            why = bench.prefix_decides_fail(item, text[:j])
            if why is None:
                continue
            reasons.add(why.split(": ", 1)[1].split()[0])
            for tail in JSON_TAILS + [text[j:]]:
                assert bench.check(item, text[:j] + tail).status == "fail", (text[:j], tail, why)
    assert reasons == {"the", "text"}  # both kinds fired: a first character, and text after a closed value
    passing = ['```json\n{"a": [1, 2]}\n```', '{"name": "x, y"}', '["x"]```', "NaN", "12"]
    for text in passing:  # a passing text never has a decided prefix
        assert bench.check(item, text).status == "pass"
        assert all(bench.prefix_decides_fail(item, text[:j]) is None for j in range(1, len(text) + 1))


def test_rules_need_the_checkers_own_arguments() -> None:
    bench = IFEvalBenchmark()
    # without num_words the official checker draws a random limit: nothing may be decided
    assert bench.prefix_decides_fail(_item(["length_constraints:number_words"], [{"relation": "less than"}]),
                                     "one two three four five six seven eight nine ten " * 50) is None
    # "at least" limits are never decided by a prefix, nor are unknown instruction ids
    assert bench.prefix_decides_fail(_item(["length_constraints:number_words"],
                                           [{"relation": "at least", "num_words": 2}]), "one two three") is None
    assert bench.prefix_decides_fail(_item(["punctuation:no_comma", "nope:unknown"], [{}, {}]), "a, b") is None
    # a forbidden word at the very end of the prefix may still grow into another word ("zebra" -> "zebras")
    words = _item(["keywords:forbidden_words"], [{"forbidden_words": ["zebra"]}])
    assert bench.prefix_decides_fail(words, "I saw a zebra") is None
    assert bench.check(words, "I saw a zebras herd").status == "pass"
    assert bench.prefix_decides_fail(words, "I saw a zebra ") is not None


def test_prefix_text_is_a_prefix_of_the_completion(bundled: Any) -> None:
    tok = bundled.tokenizer
    for text in ["caf\u00e9 \U0001F600\U0001F680 na\u00efve \u4e2d\u6587 done", "plain words, then \u00dcber"]:
        ids = tok.encode(text, add_special_tokens=False)
        full = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cut = [prefix_text(tok, ids[:j]) for j in range(len(ids) + 1)]
        assert all(full.startswith(c) for c in cut) and cut[-1] == full
        raw = [tok.decode(ids[:j], clean_up_tokenization_spaces=False) for j in range(len(ids))]
        assert any(not full.startswith(r) for r in raw)  # without the fix some decoded prefixes are not prefixes


ITEMS = [
    ("1001", "I am planning a trip to Japan, and I would like thee to write an itinerary for my journey in a "
             "Shakespearean style. You are not allowed to use any commas in your response.",
     ["punctuation:no_comma"], [{}]),
    ("1019", "Given the sentence \"Two young boys with toy guns and horns.\" can you ask a question? Please ensure "
             "that your response is in English, and in all lowercase letters. No capital letters are allowed.",
     ["change_case:english_lowercase"], [{}]),
    ("1187", "Can you give me two different formal alternatives to \"What's up? I'm going to the beach today\" and "
             "do not use any commas in your response.", ["punctuation:no_comma"], [{}]),
    ("1051", "Write a letter to a friend in all lowercase letters ask them to go and vote.",
     ["change_case:english_lowercase"], [{}]),
]


def test_real_items_fast_search_equals_exhaustive_search(bundled: Any) -> None:
    """Bundled model, official checker, short budget: the same pair (or none) as the exhaustive in-order search."""
    bench = IFEvalBenchmark()
    eos = eos_token_ids(bundled.model, bundled.tokenizer)
    budget, k, positions = 20, 3, 4
    compared = stopped = 0
    for key, prompt, ids, kwargs in ITEMS:
        item = Item(id=key, benchmark="ifeval", prompt=prompt,
                    reference={"instruction_id_list": ids, "kwargs": kwargs})
        prompt_ids = apply_chat_template(bundled.tokenizer, prompt)
        comp = greedy_generate(bundled.model, [prompt_ids], budget, eos)[0].token_ids
        if bench.check(item, decode_completion(bundled.tokenizer, comp, eos)).status != "fail":
            continue
        res = PairFinder(bundled, PairSettings(top_k=k, max_positions=positions, stop_every=2)).find(
            bench, item, prompt_ids, comp, budget, "eos")
        ref = exhaustive_search(bundled, bench, item, prompt_ids, comp, budget, k, positions, naive=True)
        assert (res.completion_offset, res.contrast_id, res.contrast_rank) == (ref.offset, ref.contrast, ref.rank)
        assert res.unverifiable_rollouts == ref.unverifiable
        compared += 1
        stopped += res.rollouts_stopped + res.positions_decided
    assert compared >= 2 and stopped > 0
