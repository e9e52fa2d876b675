"""Collection: greedy decoding paths agree exactly, results are stored once with verdicts, reruns resume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from failtrace.benchmarks.base import Item, Verdict
from failtrace.errors import FailtraceError
from failtrace.failures.collect import collect, collect_run_record, register_benchmark, resolve_benchmark, safe_check
from failtrace.failures.generation import (
    decode_completion,
    eos_token_ids,
    greedy_generate,
)
from failtrace_testkit.reference_decoding import naive_greedy
from failtrace_testkit.toy import ToyBenchmark, one_thread, toy_items, toy_loaded
from failtrace.models.chat import apply_chat_template
from failtrace.store import open_store


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def toy64() -> object:
    return toy_loaded(0, dtype="float64")


@pytest.fixture(scope="module")
def toy32() -> object:
    return toy_loaded(0, dtype="float32")


def _prompts(lm: object, n: int) -> list[list[int]]:
    prompts = [apply_chat_template(lm.tokenizer, it.prompt) for it in toy_items(n)]  # type: ignore[attr-defined]
    prompts[1] = prompts[1] + prompts[2][5:]  # make lengths differ: the batch needs left padding
    prompts[3] = prompts[3][:-9] + prompts[3][-4:]
    return prompts


@pytest.mark.tf4  # generation with the KV cache, also on transformers 4.x
def test_batched_left_padded_greedy_equals_unbatched_and_naive(toy64: object) -> None:
    model, tok = toy64.model, toy64.tokenizer  # type: ignore[attr-defined]
    eos = eos_token_ids(model, tok)
    prompts = _prompts(toy64, 6)
    assert len({len(p) for p in prompts}) > 1
    batched = greedy_generate(model, prompts, 30, eos, 0)
    for p, b in zip(prompts, batched, strict=True):
        single = greedy_generate(model, [p], 30, eos, 0)[0]
        reference = naive_greedy(model, p, 30, eos)
        assert b.token_ids == single.token_ids == reference
        assert b.finish_reason == ("eos" if reference[-1] in eos else "length")
    # both ways of finishing occur, so row removal from the batch was exercised
    assert {b.finish_reason for b in batched} == {"eos", "length"}


def test_decode_completion_drops_only_the_final_eos(toy32: object) -> None:
    tok = toy32.tokenizer  # type: ignore[attr-defined]
    ids = tok.encode("ab", add_special_tokens=False)
    eos = frozenset({tok.eos_token_id})
    assert decode_completion(tok, [*ids, tok.eos_token_id], eos) == "ab"
    assert decode_completion(tok, ids, eos) == "ab"
    assert greedy_generate(toy32.model, [ids], 0, eos)[0].token_ids == []  # type: ignore[attr-defined]


def test_collect_stores_every_item_once_and_resumes(tmp_path: Path, toy32: object) -> None:
    bench = ToyBenchmark(mode="contains", max_new_tokens=20)
    items = toy_items(8, needle="-")
    path = tmp_path / "s.duckdb"
    seen: list[str] = []
    with open_store(path) as st:
        s1 = collect(st, bench, items[:5], toy32, progress=False, on_item=lambda it, g, v: seen.append(it.id))
        assert (s1.items, s1.skipped, s1.generated) == (5, 0, 5)
        assert s1.passed + s1.failed + s1.unverifiable == 5
        s2 = collect(st, bench, items, toy32, progress=False)
        assert (s2.items, s2.skipped, s2.generated) == (8, 5, 3)
        s3 = collect(st, bench, items, toy32, progress=False)
        assert s3.generated == 0 and s3.skipped == 8
        assert s1.run_id == s2.run_id == s3.run_id
        assert st.counts()["generations"] == 8 and st.counts()["verdicts"] == 8 and st.counts()["runs"] == 1
        rows = {r["item_id"]: r for r in st.results(s1.run_id)}
        run = st.get_run(s1.run_id)
    assert seen == [it.id for it in items[:5]]
    assert run is not None and run.versions["transformers"] and run.settings["max_new_tokens"] == 20
    eos = eos_token_ids(toy32.model, toy32.tokenizer)  # type: ignore[attr-defined]
    for it in items:
        prompt = apply_chat_template(toy32.tokenizer, it.prompt)  # type: ignore[attr-defined]
        expected = greedy_generate(toy32.model, [prompt], 20, eos)[0]  # type: ignore[attr-defined]
        row = rows[it.id]
        assert row["prompt_ids"] == prompt
        assert row["token_ids"] == expected.token_ids  # exactly as generated, EOS included
        assert row["finish_reason"] == expected.finish_reason
        text = decode_completion(toy32.tokenizer, expected.token_ids, eos)  # type: ignore[attr-defined]
        assert row["completion"] == text
        assert row["status"] == ("pass" if "-" in text else "fail")
        assert row["reasons"] == ([] if "-" in text else ["contains '-' not satisfied"])


@pytest.mark.tf4  # generation with the KV cache, also on transformers 4.x
def test_batched_collection_matches_batch_one_in_float64(tmp_path: Path, toy64: object) -> None:
    bench = ToyBenchmark(mode="contains", max_new_tokens=24)
    items = toy_items(7)
    with open_store(tmp_path / "a.duckdb") as a, open_store(tmp_path / "b.duckdb") as b:
        ra = collect(a, bench, items, toy64, progress=False, batch_size=1)
        rb = collect(b, bench, items, toy64, progress=False, batch_size=3)
        assert ra.run_id == rb.run_id  # the batch size does not change the run's identity
        ta = {r["item_id"]: r["token_ids"] for r in a.results(ra.run_id)}
        tb = {r["item_id"]: r["token_ids"] for r in b.results(rb.run_id)}
    assert ta == tb and len(ta) == 7


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_prompt_that_fills_the_context_window_is_unverifiable_not_generated(tmp_path: Path, toy32: object,
                                                                              batch_size: int) -> None:
    """Before: a prompt longer than the window was generated at positions the model never saw (a 17,548-token trace on
    SmolLM2's 8,192 took 167 s and was stored as an ordinary failure). The items beside it are untouched: their
    records equal a run without it, in-process and through the Ray worker's per-item function."""
    from failtrace.models.limits import context_length
    from failtrace.scale.work import collect_item

    window = context_length(toy32.model)  # type: ignore[attr-defined]
    items = toy_items(3)
    long = Item(id="long", benchmark="toy", prompt="a" * window, reference={"needle": "zz"})
    with open_store(tmp_path / "with.duckdb") as st:
        s = collect(st, ToyBenchmark(), [items[0], long, *items[1:]], toy32, max_new_tokens=6, batch_size=batch_size,
                    progress=False)
        rows = {r["item_id"]: r for r in st.results(s.run_id)}
    with open_store(tmp_path / "without.duckdb") as st:
        ref = {r["item_id"]: r for r in st.results(collect(st, ToyBenchmark(), items, toy32, max_new_tokens=6,
                                                               batch_size=batch_size, progress=False).run_id)}
    gone = rows.pop("long")
    assert gone["status"] == "unverifiable" and gone["finish_reason"] == "context" and gone["token_ids"] == []
    assert len(gone["prompt_ids"]) >= window and f"fills the model's context window of {window}" in gone["reasons"][0]
    assert s.unverifiable == s.not_generated == 1 and s.generated == 4
    assert {k: (r["token_ids"], r["status"]) for k, r in rows.items()} == \
        {k: (r["token_ids"], r["status"]) for k, r in ref.items()}
    on_ray = collect_item(toy32, ToyBenchmark(), long, 6, False)
    assert on_ray["generation"]["finish_reason"] == "context" and on_ray["verdict"]["status"] == "unverifiable"


def test_changed_settings_make_a_new_run(toy32: object) -> None:
    a = collect_run_record(toy32, "toy", 20, False)
    assert collect_run_record(toy32, "toy", 20, False).run_id == a.run_id
    assert collect_run_record(toy32, "toy", 21, False).run_id != a.run_id
    assert collect_run_record(toy32, "toy", 20, True).run_id != a.run_id
    assert collect_run_record(toy32, "other", 20, False).run_id != a.run_id


class _Crashy(ToyBenchmark):
    def check(self, item: Item, completion: str) -> Verdict:
        if item.id.endswith("1"):
            raise RuntimeError("checker bug")
        if item.id.endswith("2"):
            return "pass"  # type: ignore[return-value]
        return super().check(item, completion)


def test_checker_crash_or_nonsense_is_unverifiable(tmp_path: Path, toy32: object) -> None:
    bench = _Crashy(mode="never", max_new_tokens=4)
    v = safe_check(bench, toy_items(2)[1], "x")
    assert v.status == "unverifiable" and "checker raised RuntimeError: checker bug" in v.reasons[0]
    with open_store(tmp_path / "s.duckdb") as st:
        s = collect(st, bench, toy_items(3), toy32, progress=False)
        assert (s.failed, s.unverifiable) == (1, 2)
        statuses = {r["item_id"]: r["status"] for r in st.results(s.run_id)}
    assert statuses == {"q000": "fail", "q001": "unverifiable", "q002": "unverifiable"}


def test_bad_arguments_and_benchmark_lookup(tmp_path: Path, toy32: object) -> None:
    bench = ToyBenchmark()
    with open_store(tmp_path / "s.duckdb") as st:
        with pytest.raises(FailtraceError, match="batch-size"):
            collect(st, bench, toy_items(1), toy32, batch_size=0, progress=False)
        with pytest.raises(FailtraceError, match="max-new-tokens"):
            collect(st, bench, toy_items(1), toy32, max_new_tokens=0, progress=False)
    mine = ToyBenchmark(name="toy-registered-here")
    register_benchmark(mine)
    assert resolve_benchmark("toy-registered-here") is mine
    assert resolve_benchmark("x", overrides={"x": bench}) is bench


def test_progress_to_a_log_file_is_one_plain_line_per_step(capsys):
    """stderr captured (not a terminal, like ``nohup ... 2> log``): a line per step instead of rich's single final
    bar; with progress off, nothing at all."""
    from failtrace.progress import progress_bar as _progress

    bar = _progress(True, "pairs humaneval (m)", 3)
    for i in range(3):
        bar.advance(note="x: clean" if i == 2 else "")
    bar.close()
    bar.advance()  # after close: nothing more
    quiet = _progress(False, "pairs humaneval (m)", 3)
    quiet.advance()
    quiet.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split(",")[0] for ln in lines] == [f"pairs humaneval (m): {i}/3" for i in (1, 2, 3)]
    assert all(ln.endswith(" s") for ln in lines[:2]) and lines[2].endswith(" s (x: clean)")


def test_a_sub_steps_log_lines_are_at_most_one_per_five_seconds(capsys, monkeypatch):
    """A transient (sub-step) bar off a terminal, on a clock that moves 2 s per step: a line when 5 s have passed
    since the last one, and always the last step; an item bar (not transient) keeps its line per step."""
    import failtrace.progress as progress

    clock = iter(range(0, 1000, 2))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(clock)))
    bar = progress.progress_bar(True, "graph edges (auto), layers", 8, transient=True)  # starts at t = 0
    for _ in range(8):  # steps at t = 2, 4, ..., 16
        bar.advance()
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["graph edges (auto), layers: 3/8, 6 s", "graph edges (auto), layers: 6/8, 12 s",
                     "graph edges (auto), layers: 8/8, 16 s"]
    items = progress.progress_bar(True, "pairs x (m)", 3)
    for _ in range(3):
        items.advance()
    assert len(capsys.readouterr().err.strip().splitlines()) == 3


_STRICT_TEMPLATE = (  # as Gemma's and others do: a role the template does not know is refused with raise_exception
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Conversation roles must be system, user or assistant, got ' + m['role']) }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_chat_template_that_refuses_an_item_is_refused_before_the_run_is_recorded(tmp_path: Path) -> None:
    """The template's refusal (a jinja TemplateError) escaped as an unexpected error (exit 70, a crash log) after the
    run and its items were recorded: the store gained a run with nothing generated. It is now one FailtraceError
    naming the item and the roles, raised before anything is written; a resumed run keeps what it had."""
    lm = toy_loaded(0)
    lm.tokenizer.chat_template = _STRICT_TEMPLATE
    good = toy_items(2)
    bad = Item(id="with-tool", benchmark="toy", prompt=[{"role": "user", "content": "aa"},
                                                        {"role": "tool", "content": "bb"}], reference={"needle": "zz"})
    with open_store(tmp_path / "s.duckdb") as st:
        with pytest.raises(FailtraceError, match=r"item 'with-tool': the model's chat template refused the messages "
                                                 r"\(roles user, tool\): Conversation roles must be"):
            collect(st, ToyBenchmark(), [good[0], bad], lm, max_new_tokens=4, progress=False)
        assert st.runs() == [] and st.con.execute("SELECT count(*) FROM run_items").fetchone()[0] == 0
        run_id = collect(st, ToyBenchmark(), good, lm, max_new_tokens=4, progress=False).run_id
        before = (st.results(run_id), st.con.execute("SELECT count(*) FROM run_items").fetchone()[0])
        for batch_size in (1, 2):
            with pytest.raises(FailtraceError, match="item 'with-tool'"):
                collect(st, ToyBenchmark(), [*good, bad], lm, max_new_tokens=4, batch_size=batch_size,
                        progress=False)
        assert (st.results(run_id), st.con.execute("SELECT count(*) FROM run_items").fetchone()[0]) == before
    # what a Ray worker answers the driver before a run (the same rendering, the same words)
    from failtrace.failures.collect import first_refused_prompt

    assert first_refused_prompt(lm.tokenizer, good, False) is None
    assert first_refused_prompt(lm.tokenizer, [*good, bad], False).startswith(
        "item 'with-tool': the model's chat template refused the messages (roles user, tool)")


def test_a_prompt_near_the_window_is_generated_only_up_to_its_end(tmp_path: Path, toy32: object) -> None:
    """A prompt that fit with an answer that ran past the window was decoded on, at positions the model never saw
    (a trace of 8,185 tokens got 24 tokens on SmolLM2's 8,192, stored as an ordinary failure). Generation now stops
    where prompt + completion fill the window (finish ``window``: no budget could continue it); the tokens it keeps
    are the unbounded decoding's first ones, in-process, batched beside a short item, and in the Ray worker's
    function."""
    from failtrace.models.limits import context_length
    from failtrace.scale.work import collect_item

    tok, model = toy32.tokenizer, toy32.model  # type: ignore[attr-defined]
    window = context_length(model)
    overhead = len(apply_chat_template(tok, ""))
    near = Item(id="near", benchmark="toy", prompt="b" * (window - 3 - overhead), reference={"needle": "zz"})
    prompt = apply_chat_template(tok, near.prompt)
    assert len(prompt) == window - 3
    eos = eos_token_ids(model, tok)
    free = greedy_generate(model, [prompt], 12, eos)[0].token_ids  # what the old code stored
    assert len(free) > 3, "the toy model must not stop within 3 tokens here, or the test shows nothing"
    for batch_size in (1, 2):
        with open_store(tmp_path / f"s{batch_size}.duckdb") as st:
            run = collect(st, ToyBenchmark(), [toy_items(1)[0], near], toy32, max_new_tokens=12,
                          batch_size=batch_size, progress=False)
            row = next(r for r in st.results(run.run_id) if r["item_id"] == "near")
        assert row["token_ids"] == free[:3] and row["finish_reason"] == "window"  # not the budget: it was 12
        assert len(row["prompt_ids"]) + len(row["token_ids"]) == window
    on_ray = collect_item(toy32, ToyBenchmark(), near, 12, False)
    assert on_ray["generation"]["token_ids"] == free[:3] and on_ray["generation"]["finish_reason"] == "window"
    # a budget that ends exactly where the window does is the budget's stop, as always
    assert greedy_generate(model, [prompt], 3, eos, window=window)[0].finish_reason == "length"


def test_collect_says_when_answers_stopped_at_the_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command's notes spoke of such answers as cut at the budget (a larger --max-new-tokens "decides them"); they
    are now counted apart, with what can finish them."""
    import json

    from transformers import AutoTokenizer

    from failtrace.cli import main
    from failtrace_testkit.toy import save_toy_model

    register_benchmark(ToyBenchmark(name="toy-window", max_new_tokens=8))
    folder = save_toy_model(tmp_path / "model")
    prompt = apply_chat_template(AutoTokenizer.from_pretrained(folder), "Say 0")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"max_position_embeddings": len(prompt) + 2}))
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"id": "q0", "prompt": "Say 0", "needle": "-"}) + "\n")
    assert main(["collect", "-b", "toy-window", "-d", str(data), "-m", str(folder), "-s", str(tmp_path / "s.duckdb"),
                 "--no-progress"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    with open_store(tmp_path / "s.duckdb", read_only=True) as st:
        row = st.results(st.runs("collect")[0].run_id)[0]
    assert row["finish_reason"] == "window" and len(row["token_ids"]) == 2
    assert "note: 1 answer(s) of the run stopped where prompt and answer fill the model's context window" in err
    assert "stopped at the 8-token budget" not in err


def test_changed_item_content_is_refused_before_a_new_run_is_recorded(tmp_path: Path, toy32: object) -> None:
    """The refusal came after the new run (another budget) was written: `status` then listed an empty run."""
    items = toy_items(2)
    with open_store(tmp_path / "s.duckdb") as st:
        collect(st, ToyBenchmark(), items, toy32, max_new_tokens=4, progress=False)
        before = [r.run_id for r in st.runs()], st.con.execute("SELECT count(*) FROM run_items").fetchone()[0]
        changed = [Item(id=items[0].id, benchmark="toy", prompt="other text", reference={"needle": "zz"})]
        with pytest.raises(FailtraceError, match="already in .* with different content"):
            collect(st, ToyBenchmark(), changed, toy32, max_new_tokens=5, progress=False)
        assert ([r.run_id for r in st.runs()], st.con.execute("SELECT count(*) FROM run_items").fetchone()[0]) \
            == before


def test_the_built_in_items_are_one_source_however_named() -> None:
    """`failtrace demo` records its data as builtin:demo and `collect --data builtin` says builtin: a rerun on the
    demo's store was told "first collected from builtin:demo; the items of builtin are added to it" and recorded a
    second source."""
    from failtrace.failures.collect import _same_data

    assert _same_data("builtin:demo", "builtin") and _same_data("BUILTIN", "builtin:demo ")
    assert not _same_data("builtin", "builtinx.jsonl") and not _same_data("builtin", "data/builtin.jsonl")


def test_a_run_goes_on_only_with_the_weights_it_began_with(tmp_path: Path, toy32: object) -> None:
    """The run id depends on the model's name and source, not its weights: a folder trained again in place added the
    new weights' answers to the old run, without a word. The run now records its weights' content fingerprint and is
    refused with other weights (the store unchanged); a run recorded before it kept one gets it, once."""
    from failtrace.models.fingerprint import model_fingerprint

    bench = ToyBenchmark(mode="contains", max_new_tokens=6)
    items = toy_items(4, needle="-")
    other = toy_loaded(7, name=toy32.name)  # type: ignore[attr-defined]  # same name and source, other weights
    path = tmp_path / "s.duckdb"
    with open_store(path) as st:
        first = collect(st, bench, items[:2], toy32, progress=False)
        assert st.get_run(first.run_id).settings["model_fingerprint"] == model_fingerprint(toy32)
        said = (rf"run {first.run_id} of {other.name} was collected from other weights \(content fingerprint "
                r"[0-9a-f]{12}, now [0-9a-f]{12}\)")
        with pytest.raises(FailtraceError, match=said):
            collect(st, bench, items, other, progress=False)
        assert st.counts()["generations"] == 2
        # as a run of an older failtrace, which kept no fingerprint
        st.con.execute("UPDATE runs SET settings = json_remove(settings, '$.model_fingerprint')")
        again = collect(st, bench, items[:3], toy32, progress=False)
        assert again.run_id == first.run_id and again.generated == 1
        assert st.get_run(first.run_id).settings["model_fingerprint"] == model_fingerprint(toy32)
        # under other library versions a fingerprint proves nothing (transformers 4 and 5 write configs apart): the
        # run goes on, and the fingerprint now is the one the next resume is held to
        st.con.execute("UPDATE runs SET settings = json_insert(json_remove(settings, '$.fingerprint_versions'), "
                       "'$.fingerprint_versions', json('{\"transformers\": \"4.0\"}'))")
        upgraded = collect(st, bench, items, other, progress=False)
        assert upgraded.generated == 1 and st.get_run(first.run_id).settings["model_fingerprint"] == \
            model_fingerprint(other)
        with pytest.raises(FailtraceError, match="was collected from other weights"):
            collect(st, bench, items, toy32, progress=False)
