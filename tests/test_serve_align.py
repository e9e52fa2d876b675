"""Aligning one tokenisation's relevance onto another by character spans (failtrace.serve.align) against explicit
interval arithmetic, on hand-made tokens and on two real tokenizers (the bundled SmolLM2 and the toy byte-level one)
of the same text wrapped in different chat markup."""

from __future__ import annotations

import random

import pytest

from failtrace.serve.align import char_map, project


def _spans(tokens: list[str]) -> list[tuple[int, int]]:
    out, at = [], 0
    for t in tokens:
        out.append((at, at + len(t)))
        at += len(t)
    return out


def _by_intervals(ref: list[str], other: list[str], values: list[float], shift: int = 0) -> list[float]:
    """Explicit: other token i spreads R_i / len_i over its characters; character c of the other text is character
    c - shift of the reference text (texts equal up to a prefix of ``shift`` extra characters in the other)."""
    out = []
    for a, b in _spans(ref):
        total = 0.0
        for (c, d), v in zip(_spans(other), values):
            c2, d2 = c - shift, d - shift
            overlap = max(0, min(b, d2) - max(a, c2, 0))
            total += v * overlap / (d - c) if d > c else 0.0
        out.append(total)
    return out


def test_hand_made_split_of_one_text() -> None:
    ref, other = ["Hel", "lo", " world"], ["H", "ello", " wor", "ld"]
    got = project(ref, other, [1.0, 2.0, 3.0, 4.0])
    assert got["values"] == pytest.approx([1 + 2 * 2 / 4, 2 * 2 / 4, 3 + 4])  # written out by hand
    assert got["spans"] == [[0, 1], [1, 1], [2, 3]] and got["unaligned"] == 0.0 and got["matched_chars"] == 1.0


def test_random_retokenisations_match_interval_arithmetic() -> None:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "x", "yy", "return", "(", ")", ":", "\n", "    "]
    for _ in range(20):
        text = "".join(rng.choice(words) + rng.choice(["", " "]) for _ in range(60))
        cut = lambda: sorted(rng.sample(range(1, len(text)), len(text) // 3))  # noqa: E731
        ref_bounds, bounds = [0, *cut(), len(text)], [0, *cut(), len(text)]
        ref = [text[a:b] for a, b in zip(ref_bounds, ref_bounds[1:]) if b > a]
        other = [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        assert "".join(ref) == "".join(other) == text
        values = [rng.uniform(-1, 1) for _ in other]
        got = project(ref, other, values)
        assert got["values"] == pytest.approx(_by_intervals(ref, other, values), abs=1e-9)
        assert sum(got["values"]) == pytest.approx(sum(values), abs=1e-9)  # mass is conserved


def test_other_markup_is_unaligned_and_mass_is_conserved() -> None:
    body = "Write a function that adds two numbers.\nAnswer: def add(a, b):"
    ref = ["<|im_start|>", "user", "\n"] + [body[i:i + 3] for i in range(0, len(body), 3)]
    head = "<start_of_turn>user\n"
    other = ["<start_of_turn>", "user", "\n"] + [body[i:i + 4] for i in range(0, len(body), 4)]
    values = [float(i + 1) for i in range(len(other))]
    got = project(ref, other, values)
    assert got["values"][0] is None  # the reference template token has no counterpart
    # the shared body: explicit interval arithmetic after the two heads (same length of body text)
    ref_body = ref[3:]
    want = _by_intervals(ref_body, other[3:], values[3:])
    assert got["values"][3:] == pytest.approx(want, abs=1e-9)
    placed = sum(v for v in got["values"] if v is not None)
    assert placed + got["unaligned"] == pytest.approx(sum(values), abs=1e-9)
    assert got["unaligned"] >= values[0] - 1e-9  # "<start_of_turn>" has nowhere to go
    # by hand: every reference character but those of "<|im_start|>" has a counterpart ("user\n" + body follow the
    # other head's own "<start_of_turn>", which was built from ``head``)
    ref_text = "".join(ref)
    assert "".join(other) == head + body and ref_text == "<|im_start|>user\n" + body
    assert got["matched_chars"] == pytest.approx((len(ref_text) - len("<|im_start|>")) / len(ref_text), abs=1e-12)


@pytest.mark.model  # loads the bundled model's tokenizer
def test_real_tokenizers_char_counts_land_exactly() -> None:
    """Relevance = the token's own length puts exactly 1 on each character, so every fully matched reference token
    receives its own length: a check of the spans that needs no second implementation of the matching."""
    from failtrace.attribution.inputs import decode_tokens
    from failtrace.models.chat import apply_chat_template
    from failtrace.models.loading import load_model
    from failtrace_testkit.toy import toy_tokenizer

    smol = load_model(progress=False).tokenizer
    toy = toy_tokenizer()
    msgs = [{"role": "user", "content": "Sort the list [3, 1, 2] and print it. Use Python."}]
    answer = "def main():\n    xs = sorted([3, 1, 2])\n    print(xs)\n"
    ref_ids = apply_chat_template(smol, msgs) + smol.encode(answer, add_special_tokens=False)
    other_ids = apply_chat_template(toy, msgs) + toy.encode(answer, add_special_tokens=False)
    ref, other = decode_tokens(smol, ref_ids), decode_tokens(toy, other_ids)
    assert ref != other and answer in "".join(ref) and answer in "".join(other)
    got = project(ref, other, [float(len(t)) for t in other])
    cmap = char_map("".join(ref), "".join(other))
    matched = set(int(c) for c in cmap if c >= 0)
    checked = 0
    for (a, b), v, tok in zip(_spans(ref), got["values"], ref):
        if b > a and all(c in matched for c in range(a, b)):
            assert v == pytest.approx(len(tok))
            checked += 1
    assert checked >= len(smol.encode(answer))  # at least the whole answer is aligned
