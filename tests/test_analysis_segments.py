"""Segments: token→character placement, per-benchmark segmenters, segment sums, normalisation.

References are independent of the code under test: the fast tokenizer's own offset mapping, hand-located substrings,
and (for IFEval) llm-steer-instruct's human-made ``prompt_without_instruction`` field.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import numpy as np
import pytest

from failtrace.analysis.segmenters import humaneval_spans, ifeval_spans, math_spans
from failtrace.analysis.segments import (
    normalize,
    relevant_segments,
    segment_labels,
    segment_relevance,
    spans_from_labels,
    token_char_spans,
    token_texts,
)
from failtrace.attribution.inputs import special_ids
from failtrace.benchmarks.base import Item
from failtrace.benchmarks.humaneval import INSTRUCTION as HE_INSTRUCTION
from failtrace.benchmarks.mathbench import INSTRUCTION as MATH_INSTRUCTION
from failtrace.models.chat import apply_chat_template
from failtrace_testkit.toy import toy_tokenizer

DATA = Path(__file__).parent / "data"


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def _mask(tok, ids):
    sp = special_ids(tok)
    return [i in sp for i in ids]


def _labels_by_char(tok, item, answer: str = ""):
    """Chat-render ``item`` with the byte-level toy tokenizer (one token per byte) and label every token."""
    ids = apply_chat_template(tok, item.prompt)
    n_prompt = len(ids)
    ids = ids + tok.encode(answer, add_special_tokens=False)
    labels = segment_labels(tok, ids, _mask(tok, ids), n_prompt, item)
    return ids, labels, token_texts(tok, ids)


def _text_of(texts, labels, name):
    return "".join(t for t, lab in zip(texts, labels) if lab == name)


def test_token_texts_reproduce_the_text_with_multibyte_characters():
    tok = toy_tokenizer()
    text = "naïve café → 日本 ok"
    ids = tok.encode(text, add_special_tokens=False)
    texts = token_texts(tok, ids)
    assert "".join(texts) == text
    assert len(ids) == len(text.encode("utf-8"))  # one id per byte: multi-byte characters span several tokens
    # the token that completes "ï" (2 bytes) carries it; the byte before it carries nothing
    i = text.encode("utf-8").index("ï".encode("utf-8")) + 1
    assert texts[i - 1] == "" and texts[i] == "ï"


def test_token_spans_match_the_tokenizer_offsets(bundled):
    tok = bundled.tokenizer
    msgs = [{"role": "user", "content": "Écris un poème — sans virgule, s'il te plaît. 日本語もOK."}]
    ids = apply_chat_template(tok, msgs)
    text, spans = token_char_spans(tok, ids)
    assert text == tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ids  # the rendered text re-tokenises to the same ids, so offsets are comparable
    checked = 0
    for (a, b), (oa, ob), t in zip(spans, enc["offset_mapping"], texts := token_texts(tok, ids), strict=True):
        if b > a:  # tokens that complete a character: same end; start may include bytes of earlier tokens
            assert b == ob, (t, (a, b), (oa, ob))
            checked += 1
    assert checked >= len(ids) * 3 // 4  # only tokens inside a multi-byte character are skipped
    assert "".join(texts) == text


def test_ifeval_labels_on_the_bundled_chat_template(bundled):
    tok = bundled.tokenizer
    prompt = "Write a poem about the sea. Do not use any commas in your response."
    item = Item(id="x", benchmark="ifeval", prompt=prompt,
                reference={"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
    ids = apply_chat_template(tok, item.prompt)
    answer = tok.encode("The sea", add_special_tokens=False)
    labels = segment_labels(tok, ids + answer, _mask(tok, ids + answer), len(ids), item)
    text = tok.decode(ids, skip_special_tokens=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ids
    sys_text = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # SmolLM2's default
    regions = {"system": (text.index(sys_text), text.index(sys_text) + len(sys_text)),
               "query": (text.index("Write"), text.index("sea.") + 4),
               "instruction": (text.index(" Do not"), text.index("response.") + 9)}
    specials = special_ids(tok)
    for i, (tid, (a, b)) in enumerate(zip(ids, enc["offset_mapping"])):
        first = a + (len(text[a:b]) - len(text[a:b].lstrip()) if text[a:b].strip() else 0)
        want = "special" if tid in specials else next((n for n, (s, e) in regions.items() if s <= first < e),
                                                      "special")
        assert labels[i] == want, (i, text[a:b], labels[i], want)
    assert labels[len(ids):] == ["answer"] * len(answer)
    assert set(labels) == {"special", "system", "query", "instruction", "answer"}


def _truth(prompt: str, without: str) -> np.ndarray:
    """Characters of ``prompt`` that llm-steer-instruct removed (True = instruction), by sequence alignment."""
    lab = np.ones(len(prompt), dtype=bool)
    for a, _b, size in difflib.SequenceMatcher(None, prompt, without, autojunk=False).get_matching_blocks():
        if size >= 4:
            lab[a:a + size] = False
    return lab


def test_ifeval_line_breaks_between_instruction_lines_are_instruction():
    """A real IFEval case labelled the newline tokens between its instruction lines ``query``: one lone query token
    inside the instruction, counted against URT and OIT as irrelevant text. A break before the task's next sentence,
    which is query, stays query."""
    prompt = "Write a story about a cat.\nDo not use any commas.\n\nYour answer must be in lowercase.\nThanks."
    item = Item(id="x", benchmark="ifeval", prompt=prompt, reference={
        "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [{}, {}]})
    spans = ifeval_spans(item, prompt)["instruction"]
    first, second = prompt.index("Do not"), prompt.index("Your answer")
    assert spans == [(first, second + len("Your answer must be in lowercase."))]  # one span, breaks included
    inside = {prompt[a:b] for a, b in spans}
    assert inside == {"Do not use any commas.\n\nYour answer must be in lowercase."}


def test_ifeval_rule_agrees_with_prompt_without_instruction():
    """61 real IFEval items (every 9th): character agreement with the human-made instruction-free prompts."""
    accs = []
    for d in _jsonl("ifeval_prompt_without_instruction_sample.jsonl"):
        item = Item(id=str(d["key"]), benchmark="ifeval", prompt=d["prompt"],
                    reference={"instruction_id_list": d["instruction_id_list"], "kwargs": d["kwargs"]})
        pred = np.zeros(len(d["prompt"]), dtype=bool)
        for a, b in ifeval_spans(item, d["prompt"])["instruction"]:
            pred[a:b] = True
        visible = np.array([not c.isspace() for c in d["prompt"]])
        accs.append(float((pred == _truth(d["prompt"], d["prompt_without_instruction"]))[visible].mean()))
    assert len(accs) == 61
    assert np.mean(accs) >= 0.90  # 0.938 when written; all 541 items: 0.909 (docs/ANALYSES.md)
    assert np.median(accs) == 1.0


def test_math_segments_on_a_real_problem():
    tok = toy_tokenizer()
    d = _jsonl("math500_sample.jsonl")[0]
    item = Item(id=d["unique_id"], benchmark="math", prompt=f"{d['problem']}\n\n{MATH_INSTRUCTION}")
    _ids, labels, texts = _labels_by_char(tok, item, answer="We have")
    assert _text_of(texts, labels, "problem") == d["problem"]
    assert _text_of(texts, labels, "instruction") == "\n\n" + MATH_INSTRUCTION  # the blank line before it too
    assert _text_of(texts, labels, "answer") == "We have"
    assert "query" not in labels  # the blank line was a stray `query` segment in every MATH case
    assert relevant_segments("math") == ("problem",)


@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/2", "HumanEval/12"])
def test_humaneval_segments_on_real_items(task):
    tok = toy_tokenizer()
    d = next(r for r in _jsonl("humaneval_sample.jsonl") if r["task_id"] == task)
    code = d["prompt"]
    item = Item(id=task, benchmark="humaneval", prompt=HE_INSTRUCTION.format(prompt=code),
                reference={"prompt": code, "entry_point": d["entry_point"]})
    _ids, labels, texts = _labels_by_char(tok, item)
    doc_start = code.index('"""', code.index(f"def {d['entry_point']}"))
    doc_end = code.index('"""', doc_start + 3) + 3
    line_start = code.rfind("\n", 0, code.index(">>>")) + 1  # by hand: the first example line starts the examples
    assert _text_of(texts, labels, "docstring") == code[doc_start:line_start]
    assert _text_of(texts, labels, "examples") == code[line_start:doc_end]
    assert _text_of(texts, labels, "signature") == code[:doc_start] + code[doc_end:]
    prose = HE_INSTRUCTION.split("{prompt}")
    assert _text_of(texts, labels, "instruction") == prose[0] + prose[1]


def test_trace_segments():
    tok = toy_tokenizer()
    call = '<tool_call>{"name": "find", "arguments": {"q": "x"}}</tool_call>'
    msgs = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Find x."},
            {"role": "assistant", "content": "Looking.\n" + call}, {"role": "tool", "content": "x is 3"}]
    item = Item(id="t", benchmark="traces", prompt=msgs)
    _ids, labels, texts = _labels_by_char(tok, item, answer="x=3")
    assert _text_of(texts, labels, "system") == "You are an agent."
    assert _text_of(texts, labels, "query") == "Find x."
    assert _text_of(texts, labels, "assistant") == "Looking.\n"
    assert _text_of(texts, labels, "tool_call") == call
    assert _text_of(texts, labels, "tool_result") == "x is 3"
    assert _text_of(texts, labels, "answer") == "x=3"
    special_text = _text_of(texts, labels, "special")
    assert special_text.count("<|im_start|>") == 5 and "assistant\n" in special_text


def test_trace_segments_cut_short_call_and_special_answer_tokens():
    """A trace cut off inside a call (no ``</tool_call>``) still labels the call's text ``tool_call``; a special id
    inside the answer (the model's own end-of-turn) is ``special``, not ``answer``."""
    tok = toy_tokenizer()
    cut = '<tool_call>{"name": "find", "argu'
    msgs = [{"role": "user", "content": "Find x."}, {"role": "assistant", "content": "Looking. " + cut}]
    item = Item(id="t", benchmark="traces", prompt=msgs)
    ids, labels, texts = _labels_by_char(tok, item, answer="x=3<|im_end|>")
    assert _text_of(texts, labels, "assistant") == "Looking. "
    assert _text_of(texts, labels, "tool_call") == cut
    assert _text_of(texts, labels, "answer") == "x=3"
    assert texts[-1] == "<|im_end|>" and _mask(tok, ids)[-1] and labels[-1] == "special"


@pytest.mark.parametrize("item_id", ["math-small-add", "py-count-a"])
def test_only_the_items_own_user_turn_is_cut(item_id):
    """A one-shot example turn is context: all of it is `earlier_user`, never the item's relevant segment, whichever
    benchmark it imitates (the math shot used to be cut into `problem`, the python shot left whole; then all of it was
    `query`, pooled in the report's segment figure with IFEval's real query)."""
    from failtrace.benchmarks.demo import demo_items

    tok = toy_tokenizer()
    item = next(i for i in demo_items() if i.id == item_id)
    shot, own = item.prompt[0]["content"], item.prompt[-1]["content"]
    _ids, labels, texts = _labels_by_char(tok, item, answer="ok")
    earlier = _text_of(texts, labels, "earlier_user")
    assert earlier.strip() == shot.strip() and "earlier_user" not in relevant_segments("demo", item)
    assert shot not in _text_of(texts, labels, "query")
    relevant = relevant_segments("demo", item)
    assert any(_text_of(texts, labels, name) for name in relevant)
    cut = "".join(t for t, lab in zip(texts, labels) if lab not in ("special", "system", "assistant", "answer",
                                                                      "query", "earlier_user"))
    assert sorted(cut.replace(" ", "")) == sorted(own.replace(" ", ""))  # the own turn is cut whole, as it is


def test_char_spans_override_the_segmenter():
    tok = toy_tokenizer()
    prompt = "Sort the list. Use Python only."
    item = Item(id="c", benchmark="ifeval", prompt=prompt,
                reference={"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
    ids = apply_chat_template(tok, item.prompt)
    labels = segment_labels(tok, ids, _mask(tok, ids), len(ids), item, char_spans={"instruction": [(15, 31)]})
    texts = token_texts(tok, ids)
    assert _text_of(texts, labels, "instruction") == "Use Python only."
    assert _text_of(texts, labels, "query") == "Sort the list. "


@pytest.mark.parametrize("prompt", ["s", "er", "user", "im"])
def test_a_short_message_is_found_after_its_header_not_inside_it(prompt):
    """A one- or two-character prompt also occurs in the template's own text (``<|im_start|>user``): it is placed
    where the template puts the message, so exactly its own characters are content and the header stays template."""
    tok = toy_tokenizer()
    item = Item(id="s", benchmark="toy", prompt=prompt, reference={})
    ids, labels, texts = _labels_by_char(tok, item)
    header = texts.index("\n")  # the byte-level toy tokenizer: <|im_start|>, u, s, e, r, \n, then the message
    assert "".join(texts[:header + 1]) == "<|im_start|>user\n"
    content = [i for i, lab in enumerate(labels) if lab not in ("special", "system")]
    assert content == list(range(header + 1, header + 1 + len(prompt))) and _text_of(texts, labels, "query") == prompt


def test_char_spans_count_from_the_untrimmed_prompt_when_the_template_trims():
    """A template that trims the message (Llama-3's ``| trim``) drops the leading newlines; user spans are offsets in
    the prompt as given, so they shift with it (they labelled 'ite a poem. N' and raised for the last sentence)."""
    tok = toy_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    prompt = "\n\nWrite a poem. No commas.  "
    item = Item(id="t", benchmark="toy", prompt=prompt, reference={})
    ids = apply_chat_template(tok, item.prompt)
    a, b = prompt.index("No commas."), prompt.index("No commas.") + len("No commas.")
    spans = {"instruction": [(a, b)], "task": [(prompt.index("Write"), prompt.index(" No"))],
             "tail": [(b, len(prompt))]}
    labels = segment_labels(tok, ids, _mask(tok, ids), len(ids), item, char_spans=spans)
    texts = token_texts(tok, ids)
    assert _text_of(texts, labels, "instruction") == "No commas."
    assert _text_of(texts, labels, "task") == "Write a poem."
    assert "tail" not in labels  # the trimmed trailing blanks are not in the rendered prompt: an empty span


def test_spans_and_segment_sums():
    labels = ["special", "system", "system", "query", "instruction", "query", "answer"]
    assert spans_from_labels(labels) == {"special": [[0, 1]], "system": [[1, 3]], "query": [[3, 4], [5, 6]],
                                         "instruction": [[4, 5]], "answer": [[6, 7]]}
    r = np.array([5.0, 0.5, -0.25, 1.0, -2.0, 0.125, 3.0])
    sums = segment_relevance(r, labels)
    assert sums == {"special": 5.0, "system": 0.25, "query": 1.125, "instruction": -2.0, "answer": 3.0}
    rng = np.random.default_rng(0)
    big = rng.normal(size=200)
    lab = [str(x) for x in rng.integers(0, 5, 200)]
    assert sum(segment_relevance(big, lab).values()) == pytest.approx(big.sum(), abs=1e-12)


def test_normalize_ignores_special_tokens():
    r = np.array([10.0, -2.0, 1.0, 0.5])
    assert normalize(r, [True, False, False, False]).tolist() == [5.0, -1.0, 0.5, 0.25]
    # no non-special token: the scale falls back to all tokens (failtrace.attribution.normalize)
    assert normalize(r, [True, True, True, True]).tolist() == (r / 10.0).tolist()


def test_demo_items_use_the_benchmark_they_imitate():
    tok = toy_tokenizer()
    item = Item(id="if-1", benchmark="demo", prompt="Describe a cat. Do not use any commas.",
                reference={"kind": "ifeval", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
    _ids, labels, texts = _labels_by_char(tok, item)
    assert _text_of(texts, labels, "instruction") == "Do not use any commas."
    assert _text_of(texts, labels, "query") == "Describe a cat. "
    assert "system" not in labels  # the toy template has no default system message
    assert relevant_segments("demo", item) == ("instruction",)
    math_item = Item(id="m", benchmark="demo", prompt="What is 2+3? Put only the final number in \\boxed{}.",
                     reference={"kind": "math", "answer": "5"})
    _ids, labels, texts = _labels_by_char(tok, math_item)
    assert _text_of(texts, labels, "problem") == "What is 2+3?"
    assert _text_of(texts, labels, "instruction") == " Put only the final number in \\boxed{}."
    assert "query" not in labels and relevant_segments("demo", math_item) == ("problem",)
    assert relevant_segments("toy") == ("query",)


def test_real_tau_bench_trace():
    """A real τ-bench airline context (sierra-research/tau-bench, MIT), converted by benchmarks.traces."""
    d = json.loads((DATA / "tau_bench_airline_item.json").read_text())
    item = Item(id=d["id"], benchmark="traces", prompt=d["messages"])
    _ids, labels, texts = _labels_by_char(toy_tokenizer(), item)
    by_role = {r: [m["content"] for m in d["messages"] if m["role"] == r] for r in ("system", "user", "tool")}
    assert _text_of(texts, labels, "system") == "".join(by_role["system"])
    assert _text_of(texts, labels, "query") == "".join(by_role["user"])
    assert _text_of(texts, labels, "tool_result") == "".join(by_role["tool"])
    calls, prose = "", ""
    for m in d["messages"]:
        if m["role"] == "assistant":
            c = m["content"]
            a = c.find("<tool_call>")
            if a >= 0:
                b = c.index("</tool_call>", a) + len("</tool_call>")
                calls, prose = calls + c[a:b], prose + c[:a] + c[b:]
            else:
                prose += c
    assert calls and _text_of(texts, labels, "tool_call") == calls
    assert _text_of(texts, labels, "assistant") == prose


_FOLDING_TEMPLATE = (  # Gemma-style: a system message is folded into the first user turn, there is no default one
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] + '\\n\\n' %}"
    "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}<|im_start|>{{ m['role'] }}\n{% if loop.first %}{{ sys }}{% endif %}{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("placed", [True, False])
def test_a_template_that_folds_the_system_message_into_the_user_turn_has_no_default_system(monkeypatch, placed):
    """Such a template rendered a sentinel system message right before the user's text; the text after it ("\\n\\n")
    was then searched for in the prompt and found inside the user's own text, so the user's first paragraph was
    taken for a default system message. Where the exact placement fails (a template that rewrites content) the user
    turn was then searched for after that bogus span, not found, and its text stayed labelled ``system``."""
    from failtrace.analysis import segments

    tok = toy_tokenizer()
    tok.chat_template = _FOLDING_TEMPLATE
    item = Item(id="if-2", benchmark="ifeval", prompt="Describe a cat.\n\nDo not use any commas.",
                reference={"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
    if not placed:
        monkeypatch.setattr(segments, "_placed", lambda *a: None)
    _ids, labels, texts = _labels_by_char(tok, item)
    assert "system" not in labels
    assert _text_of(texts, labels, "instruction") == "Do not use any commas."
    assert _text_of(texts, labels, "query") == "Describe a cat.\n\n"
    with_system = Item(id="if-3", benchmark="ifeval", prompt=[{"role": "system", "content": "Be brief."},
                                                              {"role": "user", "content": "Describe a dog."}])
    _ids, labels, texts = _labels_by_char(tok, with_system)  # a given system message is still found where folded
    assert _text_of(texts, labels, "system") == "Be brief."


_DEFAULT_SYSTEM_TEMPLATE = (  # SmolLM2's shape: a default system message when the messages bring none
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("content", ["a", "Hugging Face", "Describe a cat.\n\nBe brief."])
def test_a_default_system_message_is_found_whatever_the_user_wrote(content: str) -> None:
    """A user text that also occurs inside the default ("a", "Hugging Face") hid the default: it was labelled
    template text (special), not system."""
    from failtrace.analysis.segments import _default_system

    tok = toy_tokenizer()
    tok.chat_template = _DEFAULT_SYSTEM_TEMPLATE
    messages = [{"role": "user", "content": content}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    span = _default_system(tok, messages, text)
    default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert span is not None and text[span[0]:span[1]] == default


def test_a_folding_template_that_trims_the_message_has_no_default_system() -> None:
    """The fold check looked for the message as written; a template that trims it (Gemma's ``| trim``) then let a
    bogus span through: the user's first line taken for a default system message."""
    from failtrace.analysis.segments import _default_system

    tok = toy_tokenizer()
    tok.chat_template = _FOLDING_TEMPLATE.replace("{{ m['content'] }}", "{{ m['content'] | trim }}")
    messages = [{"role": "user", "content": "  What is 2+2?\nAnswer briefly.\n"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "What is 2+2?\nAnswer briefly.<|im_end|>" in text and _default_system(tok, messages, text) is None


def test_a_default_system_message_is_found_when_the_template_trims_the_message() -> None:
    """With ``| trim`` and a message ending in a line break, the message was not found after the sentinel, the
    bracket shrank to one character, and the default (found before the fold check) was lost."""
    from failtrace.analysis.segments import _default_system

    tok = toy_tokenizer()
    tok.chat_template = _DEFAULT_SYSTEM_TEMPLATE.replace("{{ m['content'] }}", "{{ m['content'] | trim }}")
    messages = [{"role": "user", "content": "What is 2+2?\n"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    span = _default_system(tok, messages, text)
    assert span is not None and text[span[0]:span[1]] == "You are a helpful AI assistant named SmolLM, trained by " \
                                                         "Hugging Face"
