"""Position order (in-order, margin, entropy), early stopping, prefix-final rules and position batches never change
which pair is found: every combination equals the exhaustive in-order search (toy models, float64)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from failtrace.benchmarks.base import Item, Verdict
from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate
from failtrace_testkit.reference_decoding import naive_greedy
from failtrace.failures.order import ORDERS, rank_positions
from failtrace.failures.pairs import PairFinder, PairSettings
from failtrace_testkit.reference_search import _top, exhaustive_search
from failtrace.models.chat import apply_chat_template
from failtrace_testkit.toy import ToyBenchmark, one_thread, toy_items, toy_loaded

BUDGET, K, POSITIONS = 14, 3, 10


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def models() -> list[Any]:
    with one_thread():
        return [toy_loaded(seed, dtype="float64") for seed in (0, 3)]


@dataclass
class Rules(ToyBenchmark):
    """Pass iff the needle occurs; ``forbidden`` fails whatever else (a prefix rule says so early); ``unknown``
    makes a non-passing text unverifiable."""

    forbidden: str | None = None
    unknown: str | None = None

    def check(self, item: Item, completion: str) -> Verdict:
        if self.forbidden and self.forbidden in completion:
            return Verdict("fail")
        if str(item.reference["needle"]) in completion:
            return Verdict("pass")
        return Verdict("unverifiable" if self.unknown and self.unknown in completion else "fail")

    def prefix_decides_fail(self, item: Item, prefix: str) -> str | None:
        return "forbidden" if self.forbidden and self.forbidden in prefix else None


@dataclass
class UpTo(ToyBenchmark):
    """Pass iff the needle occurs before the first ``end`` character; nothing after it is read (a final rule)."""

    end: str = "\n"

    def check(self, item: Item, completion: str) -> Verdict:
        head = completion.split(self.end, 1)[0]
        return Verdict("pass" if str(item.reference["needle"]) in head else "fail")

    def prefix_final(self, item: Item, prefix: str) -> bool:
        return self.end in prefix  # the first `end` is in the prefix: the head is fixed


def _case(lm: Any, index: int) -> tuple[Item, list[int], list[int]]:
    item = toy_items(index + 1)[index]
    prompt = apply_chat_template(lm.tokenizer, item.prompt)
    eos = eos_token_ids(lm.model, lm.tokenizer)
    return item, prompt, greedy_generate(lm.model, [prompt], BUDGET, eos)[0].token_ids


def _rollout_text(lm: Any, prompt: list[int], comp: list[int], p: int, rank: int) -> str:
    eos = eos_token_ids(lm.model, lm.tokenizer)
    alt = _top(lm.model, prompt + comp[:p], comp[p], K)[rank - 1]
    return decode_completion(lm.tokenizer, comp[:p] + naive_greedy(lm.model, prompt + comp[:p], BUDGET - p, eos,
                                                                     forced=alt), eos)


def _fresh(text: str, other: str, width: int = 2) -> str | None:
    """A substring of ``text`` (after its first character) that ``other`` lacks."""
    return next((text[i:i + width] for i in range(1, len(text) - width + 1) if text[i:i + width] not in other), None)


def _benchmarks(lm: Any, item: Item, prompt: list[int], comp: list[int], rng: random.Random) -> list[Any]:
    """Checkers whose first recovery sits at a random position (or nowhere), with and without prefix rules."""
    eos = eos_token_ids(lm.model, lm.tokenizer)
    original = decode_completion(lm.tokenizer, comp, eos)
    walk = min(len(comp), POSITIONS)
    p_star, rank = rng.randrange(1, walk), rng.randrange(1, K + 1)
    text = _rollout_text(lm, prompt, comp, p_star, rank)
    needle = _fresh(text, original) or "\x00"
    item.reference["needle"] = needle
    out: list[Any] = [Rules(), ToyBenchmark(mode="never")]
    later = [c for c in original[p_star:] if c not in text]
    if later:  # written by the model after p_star but absent from the recovering rollout: the rule fires
        out.append(Rules(forbidden=later[0]))
    late = _rollout_text(lm, prompt, comp, walk - 1, 1)
    marker = _fresh(late, original + text, width=1)
    if marker:  # a late position is unverifiable: before the answer in some orders, after it in order
        out.append(Rules(unknown=marker))
    head_end = next((c for c in text[text.find(needle) + len(needle):] if c not in original[:2]), None)
    if head_end and needle != "\x00":
        out.append(UpTo(end=head_end))
    return out


def _expect(lm: Any, bench: Any, item: Item, prompt: list[int], comp: list[int]) -> tuple[Any, float | None]:
    ref = exhaustive_search(lm, bench, item, prompt, comp, BUDGET, K, POSITIONS, naive=True)
    if ref.offset is None:
        return ref, None
    with torch.no_grad():
        row = lm.model(input_ids=torch.tensor([prompt + comp[:ref.offset]])).logits[0, -1]
    return ref, float(row[comp[ref.offset]] - row[ref.contrast])


def _variants() -> list[tuple[str, bool, int, bool]]:
    """Every order x early stop x position batch, halting at the answer; and in order without halting."""
    out = [(o, e, pb, True) for o in ORDERS for e in (True, False) for pb in (1, 3, 8)]
    return out + [("in-order", e, pb, False) for e in (True, False) for pb in (1, 3, 8)]


def test_every_order_batch_and_early_stop_equals_the_exhaustive_search(models: list[Any]) -> None:
    rng = random.Random(13)
    compared = found = stopped = final = reordered = unver = 0
    for lm in models:
        for index in (1, 6):
            item, prompt, comp = _case(lm, index)
            if len(comp) < 4:
                continue
            for bench in _benchmarks(lm, item, prompt, comp, rng):
                ref, delta = _expect(lm, bench, item, prompt, comp)
                status = ("unverifiable" if ref.unverifiable else "clean" if delta > 0 else "weak_preference") \
                    if ref.offset is not None else ("unverifiable" if ref.unverifiable else "no_target")
                plain = None
                for order, early, pb, halt in _variants():
                    s = PairSettings(top_k=K, min_delta=0.0, max_positions=POSITIONS, order=order,
                                     early_stop=early, position_batch=pb, stop_every=2,
                                     halt_at_answer=halt)
                    res = PairFinder(lm, s).find(bench, item, prompt, comp, BUDGET, "eos")
                    got = (res.completion_offset, res.contrast_id, res.contrast_rank, res.status,
                           res.unverifiable_rollouts)
                    assert got == (ref.offset, ref.contrast, ref.rank, status, ref.unverifiable), \
                        (order, early, pb, halt, type(bench).__name__)
                    if ref.offset is not None:
                        assert res.target_id == comp[ref.offset]
                        assert res.delta_logit == pytest.approx(delta, abs=1e-9)
                    plain = plain or res.recovered_completion
                    assert res.recovered_completion == plain  # whole, even when a final rule cut it
                    compared += 1
                    stopped += res.rollouts_stopped + res.positions_decided
                    final += res.rollouts_final
                    unver += res.unverifiable_rollouts != 0
                    reordered += order != "in-order" and res.positions_rolled > (ref.offset or 0) + 1
                found += ref.offset is not None

    # not vacuous: pairs found, rules fired (both kinds), orders rolled out positions past the answer first
    assert compared >= 200 and found >= 6 and stopped > 0 and final > 0 and reordered > 0 and unver > 0


def test_halting_at_the_answer_checks_the_same_rollouts_and_decodes_fewer_tokens(models: list[Any]) -> None:
    """Rows after a block's answer stop decoding once the answer is known: the same checks (rows are checked in
    order as they end, up to the answer), the same pair, never more tokens, and fewer where rows outlive it."""
    rng = random.Random(3)
    fewer = compared = 0
    for lm in models:
        for index in (1, 2, 6):
            item, prompt, comp = _case(lm, index)
            if len(comp) < 4:
                continue
            for bench in _benchmarks(lm, item, prompt, comp, rng):
                got = {}
                for halt in (True, False):
                    s = PairSettings(top_k=K, min_delta=0.0, max_positions=POSITIONS, position_batch=8,
                                     stop_every=2, halt_at_answer=halt)
                    got[halt] = PairFinder(lm, s).find(bench, item, prompt, comp, BUDGET, "eos")
                on, off = got[True], got[False]
                assert (on.completion_offset, on.contrast_id, on.status, on.recovered_completion) == \
                    (off.completion_offset, off.contrast_id, off.status, off.recovered_completion)
                assert on.checks == off.checks and on.unverifiable_rollouts == off.unverifiable_rollouts
                assert on.tokens_decoded <= off.tokens_decoded
                if off.completion_offset is None:  # no answer: nothing to halt at, the same work
                    assert on.tokens_decoded == off.tokens_decoded
                fewer += on.tokens_decoded < off.tokens_decoded
                compared += 1
    assert compared >= 6 and fewer > 0


@dataclass
class Keyed(Rules):
    """:class:`Rules` that says what its verdict depends on (three facts of the text) and counts its real calls."""

    calls: int = 0

    def verdict_key(self, item: Item, completion: str) -> str:
        needle = str(item.reference["needle"])
        return repr((needle in completion, bool(self.forbidden and self.forbidden in completion),
                     bool(self.unknown and self.unknown in completion)))

    def check(self, item: Item, completion: str) -> Verdict:
        self.calls += 1
        return super().check(item, completion)


def test_a_verdict_key_runs_the_checker_once_per_key_and_finds_the_same_pair(models: list[Any]) -> None:
    """Rollouts whose verdict key was checked before in the same search reuse that verdict: the same pair, status
    and unverifiable count as the exhaustive search, the same checks in all (made + reused), and the checker called
    only once per distinct key (at most 2^3 here, against dozens of checks)."""
    rng = random.Random(5)
    reused = compared = 0
    for lm in models:
        for index in (1, 6):
            item, prompt, comp = _case(lm, index)
            if len(comp) < 4:
                continue
            for plain in [b for b in _benchmarks(lm, item, prompt, comp, rng) if type(b) is Rules]:
                keyed = Keyed(forbidden=plain.forbidden, unknown=plain.unknown)
                ref, _ = _expect(lm, plain, item, prompt, comp)
                s = PairSettings(top_k=K, min_delta=0.0, max_positions=POSITIONS, position_batch=3, stop_every=2)
                a = PairFinder(lm, s).find(plain, item, prompt, comp, BUDGET, "eos")
                b = PairFinder(lm, s).find(keyed, item, prompt, comp, BUDGET, "eos")
                assert (b.completion_offset, b.contrast_id, b.contrast_rank, b.unverifiable_rollouts) == \
                    (ref.offset, ref.contrast, ref.rank, ref.unverifiable)
                assert (b.status, b.recovered_completion) == (a.status, a.recovered_completion)
                assert b.checks + b.checks_reused == a.checks + a.checks_reused
                assert b.checks == keyed.calls <= 8
                reused += b.checks_reused
                compared += 1
    assert compared >= 4 and reused > 10


def test_humaneval_verdict_key_is_the_code_the_sandbox_runs() -> None:
    """Completions with the same code (other prose) share a key and get the same sandboxed verdict; other code has
    another key."""
    from failtrace.benchmarks.humaneval import HumanEvalBenchmark
    from failtrace.benchmarks.sandbox import SandboxLimits

    ref = {"prompt": 'def add(a, b):\n    """a + b"""\n', "entry_point": "add",
           "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
    bench = HumanEvalBenchmark(limits=SandboxLimits(wall_s=5, cpu_s=5, memory_mb=512))
    item = Item(id="Toy/0", benchmark="humaneval", prompt=ref["prompt"], reference=ref)
    good, bad = "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n"
    texts = [f"Sure:\n```python\n{good}```\nIt adds.", f"```python\n{good}```", f"Here:\n```python\n{bad}```\nok",
             f"```py\n{bad}```\n\nThis subtracts, sorry."]
    keys = [bench.verdict_key(item, t) for t in texts]
    assert keys[0] == keys[1] != keys[2] == keys[3]
    assert [bench.check(item, t).status for t in texts] == ["pass", "pass", "fail", "fail"]


def test_math_verdict_key_is_the_last_boxed_answer() -> None:
    from failtrace.benchmarks.mathbench import MathBenchmark

    bench = MathBenchmark()
    item = Item(id="m", benchmark="math", prompt="1+1?", reference={"answer": "2"})
    texts = ["So \\boxed{3}. Wait, \\boxed{2}.", "The answer is \\boxed{2}", "\\boxed{2} no: \\boxed{3}",
             "It is 2.", "\\boxed{3}"]
    keys = [bench.verdict_key(item, t) for t in texts]
    assert keys[0] == keys[1] and keys[2] == keys[4] and len({keys[0], keys[2], keys[3]}) == 3
    assert [bench.check(item, t).status for t in texts] == ["pass", "pass", "fail", "fail", "fail"]


def test_in_order_never_needs_more_rollouts_than_another_order(models: list[Any]) -> None:
    """One position per block: any order must roll out every live position before the answer, so in-order (which
    rolls out exactly those and the answer) is the least; the others agree on the pair."""
    lm = models[0]
    rng = random.Random(7)
    longer = 0
    for index in (2, 5, 8):
        item, prompt, comp = _case(lm, index)
        if len(comp) < 4:
            continue
        bench = _benchmarks(lm, item, prompt, comp, rng)[0]
        runs = {o: PairFinder(lm, PairSettings(top_k=K, max_positions=POSITIONS, order=o, position_batch=1)).find(
            bench, item, prompt, comp, BUDGET, "eos") for o in ORDERS}
        base = runs["in-order"]
        for res in runs.values():
            assert (res.completion_offset, res.contrast_id) == (base.completion_offset, base.contrast_id)
            assert res.rollouts >= base.rollouts and res.positions_rolled >= base.positions_rolled
            longer += res.rollouts > base.rollouts
        assert base.positions_rolled == (base.completion_offset + 1 if base.found else min(len(comp), POSITIONS))
    assert longer > 0  # some order did pay for positions past the answer


def test_rank_positions_follows_margin_and_entropy() -> None:
    logits = torch.tensor([[5.0, 4.9, 0.0, 0.0],   # margin 0.1, fairly wide
                           [9.0, 0.0, 0.0, 0.0],   # margin 9, peaked
                           [1.0, 1.0, 1.0, 1.0],   # margin 0, uniform: the widest
                           [3.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    assert rank_positions([0, 1, 2, 3], logits, "in-order") == [0, 1, 2, 3]
    assert rank_positions([0, 1, 2, 3], logits, "margin") == [2, 0, 3, 1]
    ent = [-(torch.softmax(r, -1) * torch.log_softmax(r, -1)).sum().item() for r in logits]
    assert rank_positions([0, 1, 2, 3], logits, "entropy") == sorted(range(4), key=lambda i: -ent[i])
    assert rank_positions([0, 1, 3], logits, "margin", first=3) == [3, 0, 1]
    assert rank_positions([0, 1], logits, "margin", first=3) == [0, 1]  # a hint outside the walk is ignored
    assert rank_positions([1, 3], logits, "margin") == [3, 1]  # rows are taken by position, not by list index
