"""Cross-model comparison on two tiny random models sharing the toy tokenizer (seeds 0 and 1 = "two models"):
Δℓ of every stored row against plain transformers (independently loaded), the flip curve against explicit masking,
segment sums, mapping flags, resumability, comparisons.jsonl and the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from cases_toy import build_toy_store, write_toy_cases
from failtrace.cases.compare import compare, one_token, rescore
from failtrace.models.loading import load_model
from failtrace.store import open_store
from failtrace.store.cases import load_cases
from failtrace.store.comparisons import load_comparisons
from failtrace_testkit.toy import one_thread, save_toy_model, toy_tokenizer


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def cmp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("compare")
    with one_thread():
        info = build_toy_store(root / "s.duckdb", root / "model0", n_items=8)
        save_toy_model(root / "model1", seed=1)
        names = [str(root / "model0"), str(root / "model1")]
        lms = {n: load_model(n, progress=False) for n in names}
        with open_store(info["store"]) as st:
            write_toy_cases(st, lms[names[0]], info)
            info["summary"] = compare(st, names, models=lms, progress=False)
            info["rows"] = load_comparisons(st)
            info["cases"] = load_cases(st)
    info.update(names=names, lms=lms, root=root)
    return info


def _plain(folder: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _masked_logits(model: Any, ids: list[int], masked: list[int]) -> torch.Tensor:
    with torch.no_grad():
        emb = model.get_input_embeddings()(torch.tensor([ids])).clone()
        emb[0, masked] = 0.0
        return model(inputs_embeds=emb, use_cache=False).logits[0, -1].double()


def _masked_delta(model: Any, ids: list[int], masked: list[int], t: int, c: int) -> float:
    row = _masked_logits(model, ids, masked)
    return float(row[t] - row[c])


def test_one_row_per_case_and_model(cmp: dict[str, Any]) -> None:
    rows, cases, names = cmp["rows"], cmp["cases"], cmp["names"]
    assert len(cases) >= 3 and len(rows) == 2 * len(cases)
    assert cmp["summary"].written == {names[0]: len(cases), names[1]: len(cases)}
    for case in cases:
        mine = [r for r in rows if r["case_id"] == case.case_id]
        assert [r["model"] for r in mine] == names and [r["reference"] for r in mine] == [True, False]
        assert mine[0]["model_fingerprint"] == case.model_fingerprint != mine[1]["model_fingerprint"]


def test_delta_equals_plain_transformers_on_both_models(cmp: dict[str, Any]) -> None:
    plain = {n: _plain(n) for n in cmp["names"]}
    mapped = [r for r in cmp["rows"] if r["mapped"]]
    # random models emit stray bytes: a target decoding to U+FFFD is not one token when re-encoded (3 bytes)
    clean_text = [c for c in cmp["cases"] if "\ufffd" not in c.target_text + c.contrast_text]
    assert sum(not r["reference"] for r in mapped) == len(clean_text) >= 2
    for r in mapped:
        ids = r["token_ids"]
        assert r["position"] == len(ids)
        got = _masked_delta(plain[r["model"]], ids, [], r["target_id"], r["contrast_id"])
        assert abs(got - r["delta_logit"]) < 1e-3
    # the two models disagree somewhere (else "comparison" would be vacuous)
    by_case: dict[str, list[float]] = {}
    for r in mapped:
        by_case.setdefault(r["case_id"], []).append(r["delta_logit"])
    assert any(len(v) == 2 and abs(v[0] - v[1]) > 1e-2 for v in by_case.values())


def test_same_tokenizer_maps_to_the_same_tokens(cmp: dict[str, Any]) -> None:
    cases = {c.case_id: c for c in cmp["cases"]}
    checked = 0
    for r in cmp["rows"]:
        case = cases[r["case_id"]]
        if r["reference"] or "\ufffd" in case.target_text + case.contrast_text:
            continue
        assert r["mapped"] and (r["target_id"], r["contrast_id"]) == (case.target_id, case.contrast_id)
        assert r["prompt_length"] == case.prompt_length
        checked += 1
    assert checked > 0


def test_flip_curve_and_segments_by_explicit_masking(cmp: dict[str, Any]) -> None:
    import numpy as np

    plain = _plain(cmp["names"][1])
    tok = toy_tokenizer()
    specials = set(tok.all_special_ids)
    rows = [r for r in cmp["rows"] if r["mapped"] and not r["reference"]]
    assert rows  # every check below is per row
    cases = {c.case_id: c for c in cmp["cases"]}
    tops_checked = 0
    for r in rows:
        rel = np.asarray(r["input_relevance"])
        assert abs(sum(r["segment_relevance"].values()) - rel.sum()) < 1e-9
        # same tokenizer, so the rebuilt context is the case's own: its stored template span is never masked
        case = cases[r["case_id"]]
        assert r["token_ids"] == case.token_ids and case.masking.skip_template
        template = {i for s, e in case.segments.get("special", []) for i in range(s, e)}
        order = [i for i in sorted(range(len(rel)), key=lambda i: (-rel[i], i))
                 if rel[i] > 0 and r["token_ids"][i] not in specials and i not in template]
        assert len(r["flip_tops"]) == len(r["flip_top_texts"]) == len(r["flip_curve"])
        for k, value in enumerate(r["flip_curve"]):
            logits = _masked_logits(plain, r["token_ids"], order[:k])
            assert abs(float(logits[r["target_id"]] - logits[r["contrast_id"]]) - value) < 1e-3
            best = logits.topk(2)  # the top token after masking k, where its lead is clear of float noise
            if float(best.values[0] - best.values[1]) > 1e-4:
                assert r["flip_tops"][k] == int(best.indices[0])
                tops_checked += 1
        assert r["flip_top_texts"] == [tok.decode([t]) for t in r["flip_tops"]]
        neg = [k for k, v in enumerate(r["flip_curve"]) if v < 0 and k >= 1]  # k* counts from one mask
        corrected = r["flip_curve"][0] < 0  # that model prefers the contrast unmasked: nothing to flip
        assert r["flip_curve"][0] == r["delta_logit"] or abs(r["flip_curve"][0] - r["delta_logit"]) < 1e-3
        assert r["flip_k"] == (None if corrected or not neg else neg[0])
    assert tops_checked >= len(rows)


def test_rows_stored_with_the_old_k_star_read_as_corrected(cmp: dict[str, Any], tmp_path: Path) -> None:
    """Rows written before first_flip stored k* = 1 where Δℓ < 0 unmasked; every reader now says None there."""
    import shutil

    import duckdb

    from failtrace.serve.comparedata import case_compare, figures

    path = tmp_path / "old.duckdb"
    shutil.copy(cmp["store"], path)
    with open_store(path) as st:
        [(case_id, fp, curve, k)] = st.con.execute(
            "SELECT case_id, model_fingerprint, flip_curve, flip_k FROM comparisons WHERE flip_curve[1] > 0 "
            "ORDER BY reference, case_id LIMIT 1").fetchall()
        old = [-abs(curve[0]) - 0.5, *curve[1:]]  # corrected unmasked, as an old row with k* = 1 stored
        st.con.execute("UPDATE comparisons SET flip_curve = ?, flip_k = 1 WHERE case_id = ? AND model_fingerprint = ?",
                       [old, case_id, fp])
        rows = {(r["case_id"], r["model_fingerprint"]): r["flip_k"] for r in load_comparisons(st)}
        st.export(tmp_path / "pq", "parquet")
        st.export(tmp_path / "js", "jsonl")
    assert rows[(case_id, fp)] is None
    assert [v for key, v in rows.items() if key != (case_id, fp)] == \
        [r["flip_k"] for r in cmp["rows"] if (r["case_id"], r["model_fingerprint"]) != (case_id, fp)]
    pq = duckdb.sql(f"SELECT flip_k FROM '{tmp_path / 'pq' / 'comparisons.parquet'}' WHERE case_id = '{case_id}' "
                    f"AND model_fingerprint = '{fp}'").fetchall()
    assert pq == [(None,)]
    js = [json.loads(x) for x in (tmp_path / "js" / "comparisons.jsonl").read_text().splitlines()]
    assert [x["flip_k"] for x in js if (x["case_id"], x["model_fingerprint"]) == (case_id, fp)] == [None]
    con = duckdb.connect(str(path), read_only=True)
    try:
        served = [m for m in case_compare(con.cursor(), case_id)["models"] if m["model_fingerprint"] == fp]
        assert [m["flip_k"] for m in served] == [None]
        assert figures(con.cursor())["rows"] == len(cmp["rows"])
    finally:
        con.close()


def test_unmapped_strings_are_flagged(cmp: dict[str, Any]) -> None:
    tok = toy_tokenizer()
    assert one_token(tok, "a") == tok.encode("a", add_special_tokens=False)[0]
    assert one_token(tok, "ab") is None and one_token(tok, "é") is None  # two bytes = two tokens here
    case = dataclasses.replace(cmp["cases"][0], target_text="ab")  # a copy: the module's fixture stays as built
    with open_store(cmp["store"]) as st:
        item = st.get_item(case.benchmark, case.item_id)
    lm = cmp["lms"][cmp["names"][1]]
    row = rescore(lm, case, item, "", "m", "fp")
    assert row["mapped"] is False and row["target_id"] is None and row["contrast_id"] is None
    assert row["delta_logit"] is None and "target" in row["notes"][-1]


def test_rerun_writes_nothing_and_export_has_the_fields(cmp: dict[str, Any], tmp_path: Path) -> None:
    with open_store(cmp["store"]) as st:
        again = compare(st, cmp["names"], models=cmp["lms"], progress=False)
        assert sum(again.written.values()) == 0 and again.skipped == len(cmp["cases"])
        files = st.export(tmp_path, "jsonl")
    assert tmp_path / "comparisons.jsonl" in files
    lines = [json.loads(x) for x in (tmp_path / "comparisons.jsonl").read_text().splitlines()]
    assert len(lines) == len(cmp["rows"])
    need = ["item_id", "model", "model_fingerprint", "token_ids", "position", "target_id", "contrast_id", "mapped",
            "delta_logit", "segment_relevance", "flip_k", "step", "split"]
    assert all(list(rec)[: len(need)] == need for rec in lines)


def test_cli_compare_and_errors(cmp: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from failtrace.cli import main

    store = str(cmp["store"])
    assert main(["compare", "--store", store, "--models", *cmp["names"], "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "corrected" in out and "mapped" in out
    # per model: how many of its mapped rows write the contrast there (its stored top token at k = 0), by hand
    table = {cells[0]: cells for cells in ([c.strip() for c in ln.split("│")[1:-1]] for ln in out.splitlines()
                                           if ln.startswith("│"))}
    for i, name in enumerate(cmp["names"]):  # of the corrected rows (Δℓ < 0), those whose top token is the contrast
        corrected = [r for r in cmp["rows"] if r["mapped"] and bool(r["reference"]) == (i == 0)
                     and r["delta_logit"] < 0]
        known = [r for r in corrected if r["flip_tops"]]
        want = "-" if corrected and not known else str(sum(r["flip_tops"][0] == r["contrast_id"] for r in known))
        assert len(known) == len(corrected) and table[name][5] == want, table
    assert table[cmp["names"][0]][5] == "0"  # the case's own model is never corrected on its own failures
    with open_store(store, read_only=True) as st:
        stored = st.con.execute("SELECT count(*) FROM comparisons").fetchone()[0]
    assert stored > 0
    assert main(["compare", "--store", store, "--models", *cmp["names"], "--no-progress"]) == 0  # nothing new
    again = " ".join(capsys.readouterr().out.split())
    others = stored - len({r["case_id"] for r in cmp["rows"]})  # the rows on other models (not the case's own)
    assert f"{others} rows stored before, not recomputed" in again, again
    before = hashlib.sha256(Path(store).read_bytes()).hexdigest()
    assert main(["compare", "--store", store, "--models", cmp["names"][0], "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --models needs at least two models"), err
    assert hashlib.sha256(Path(store).read_bytes()).hexdigest() == before  # a refusal writes nothing


def test_a_copy_of_a_compared_model_is_refused(cmp: dict[str, Any], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A second folder holding the same weights computes the same numbers; its rows share the first's keys (case,
    content fingerprint), so they were silently never written (a zero row in the table, exit 0)."""
    import shutil

    from failtrace.cli import main

    copies = [tmp_path / "model0-copy", tmp_path / "model1-copy"]
    for name, copy in zip(cmp["names"], copies, strict=True):
        shutil.copytree(name, copy)
    store = tmp_path / "s.duckdb"
    shutil.copy(cmp["store"], store)
    for names, same in (([cmp["names"][0], str(copies[0])], cmp["names"][0]),
                        ([*cmp["names"], str(copies[1])], cmp["names"][1])):
        assert main(["compare", "--store", str(store), "--models", *names, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"computes the same as {same!r}" in err, err


def test_a_reference_without_cases_fails_before_any_install(cmp: dict[str, Any], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing first a registry model that is not installed and has no case here is refused before its download
    (it used to install ~0.5 GB and then say it had no cases); so is a store without any case."""
    from failtrace.cases import compare as compare_mod
    from failtrace.cli import main
    from failtrace.models import install

    monkeypatch.setattr(install, "install_status", lambda spec: "missing")
    monkeypatch.setattr(compare_mod, "_default_loader", lambda device: pytest.fail("a model was loaded"))
    import hashlib

    def sha256(path: Path) -> str:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    before = sha256(cmp["store"])
    assert main(["compare", "--store", str(cmp["store"]), "--models", "qwen2.5-coder-1.5b-instruct", cmp["names"][0],
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no cases of model 'qwen2.5-coder-1.5b-instruct'" in err and "nothing was installed" in err
    assert sha256(cmp["store"]) == before
    with open_store(tmp_path / "empty.duckdb"):
        pass
    assert main(["compare", "--store", str(tmp_path / "empty.duckdb"), "--models", *cmp["names"],
                 "--no-progress"]) == 2
    assert "no cases in" in capsys.readouterr().err  # the CLI says so before any model
    from failtrace.errors import FailtraceError

    with open_store(tmp_path / "empty.duckdb") as st, pytest.raises(FailtraceError, match="no analysed cases"):
        compare(st, cmp["names"], progress=False)  # and so does the API, before loading anything


def test_export_dpo_fields_weights_and_datasets(cmp: dict[str, Any], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import datasets
    import numpy as np

    from failtrace.cli import main
    from failtrace.models.chat import apply_chat_template

    out = tmp_path / "prefs.jsonl"
    assert main(["export-dpo", "--store", str(cmp["store"]), "--out", str(out)]) == 0
    assert f"wrote {len(cmp['cases'])} preference pairs" in capsys.readouterr().out
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    cases = {c.case_id: c for c in cmp["cases"]}
    assert sorted(r["case_id"] for r in recs) == sorted(cases)  # one line per case, each checked below
    with open_store(cmp["store"], read_only=True) as st:
        pairs = {p["item_id"]: p for p in st.pairs()}
        gens = {g["item_id"]: g for g in st.results(cmp["run_id"])}
    tok = toy_tokenizer()
    for rec in recs:
        case = cases[rec["case_id"]]
        assert rec["chosen"] == [{"role": "assistant", "content": pairs[case.item_id]["recovered_completion"]}]
        assert rec["rejected"][0]["content"] == gens[case.item_id]["completion"]
        prefix = case.token_ids[case.prompt_length:]
        assert rec["prefix_ids"] == prefix and rec["rejected_ids"][: len(prefix) + 1] == [*prefix, case.target_id]
        rel = np.asarray(case.methods["attnlrp"].input_relevance)
        scale = np.abs(rel[~np.asarray(case.special_mask)]).max()
        special = case.special_mask[case.prompt_length:]
        want = [0.0 if special[i] else max(rel[case.prompt_length + i] / scale, 0.0) for i in range(len(prefix))]
        want.append(1.0)
        assert np.allclose(rec["response_weights"], want) and rec["tail_weight"] == 0.0
        # what trl does with the conversational format: the chat template over prompt + answer
        assert apply_chat_template(tok, rec["prompt"]) == rec["prompt_ids"]  # the case's own prompt tokens
        text = tok.apply_chat_template(rec["prompt"] + rec["chosen"], tokenize=False)
        assert text.endswith(rec["chosen"][0]["content"] + "<|im_end|>\n")
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert ds.num_rows == len(recs) and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert main(["export-dpo", "--store", str(cmp["store"]), "--out", str(out), "--tail-weight", "2"]) == 2


def _review(store: Path, decisions: list[tuple[Any, str]]) -> None:
    """Write review rows as a reviewer does: through the explorer's API in review mode."""
    from fastapi.testclient import TestClient

    from failtrace.serve.app import create_app

    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        for case, decision in decisions:
            r = c.post("/api/reviews", json={"pair_run_id": case.pair_run_id, "item_id": case.item_id,
                                             "decision": decision, "comment": decision})
            assert r.status_code == 201, r.text


def test_export_dpo_leaves_out_pairs_rejected_in_review(cmp: dict[str, Any], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A pair a reviewer rejected (not a real failure point, a wrong contrast) was still written as a preference to
    teach. The newest accept or reject of a pair holds: rejected then accepted stays in, accepted then rejected is
    out; and a store whose every pair is rejected writes nothing, in one line."""
    from failtrace.cli import main

    store = tmp_path / "reviewed.duckdb"
    store.write_bytes(cmp["store"].read_bytes())
    first, second = cmp["cases"][:2]
    _review(store, [(first, "accept"), (second, "reject"), (first, "reject"), (second, "accept")])
    out = tmp_path / "prefs.jsonl"
    assert main(["export-dpo", "--store", str(store), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"wrote {len(cmp['cases']) - 1} preference pairs to {out} (1 case left out: a reviewer rejected the " \
           "pair)" in said
    ids = [json.loads(x)["case_id"] for x in out.read_text().splitlines()]
    assert first.case_id not in ids and second.case_id in ids and len(ids) == len(cmp["cases"]) - 1
    _review(store, [(c, "reject") for c in cmp["cases"]])
    before = out.read_bytes()
    assert main(["export-dpo", "--store", str(store), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: every one of the {len(cmp['cases'])} cases in {store} has a pair rejected in review "
                   "(failtrace serve --review); nothing to write"]
    assert out.read_bytes() == before  # the earlier file is kept



def test_a_thinking_collection_is_rebuilt_with_thinking_where_the_model_has_it(cmp: dict[str, Any],
                                                                               tmp_path: Path) -> None:
    """compare rebuilt every context with thinking off, even for the cases of a ``--thinking`` collection: the
    other model was scored on a prompt its run never had. A template with a thinking mode now gets it on; one without
    gets the prompt as before and a note saying so."""
    import shutil

    from transformers import AutoTokenizer

    from failtrace.models.chat import apply_chat_template

    thinker = tmp_path / "thinker"
    shutil.copytree(cmp["names"][1], thinker)
    tok = AutoTokenizer.from_pretrained(thinker)
    tok.chat_template += "{% if add_generation_prompt and enable_thinking %}<think>\n{% endif %}"
    tok.save_pretrained(thinker)
    store = tmp_path / "s.duckdb"
    shutil.copy(cmp["store"], store)
    lms = {cmp["names"][0]: cmp["lms"][cmp["names"][0]], str(thinker): load_model(str(thinker), progress=False)}
    with open_store(store) as st:
        st.set_run_setting(cmp["run_id"], "thinking", True)
        compare(st, list(lms), models=lms, progress=False)
        rows = [r for r in load_comparisons(st) if r["model"] == str(thinker)]
        items = {r["case_id"]: st.get_item(r["benchmark"], r["item_id"]) for r in rows}
    assert len(rows) == len(cmp["cases"])
    for r in rows:
        on = apply_chat_template(lms[str(thinker)].tokenizer, items[r["case_id"]].prompt, thinking=True)
        off = apply_chat_template(lms[str(thinker)].tokenizer, items[r["case_id"]].prompt, thinking=False)
        assert on != off and r["prompt_length"] == len(on) and r["token_ids"][: len(on)] == on
        assert not any("thinking" in n for n in r["notes"])
    case = cmp["cases"][0]
    plain = cmp["lms"][cmp["names"][1]]  # the toy template never reads enable_thinking
    row = rescore(plain, case, items[case.case_id], "", "m", "fp", thinking=True)
    assert row["token_ids"] == apply_chat_template(plain.tokenizer, items[case.case_id].prompt)
    assert "thinking: the reference ran with thinking on; this model's template has no thinking mode" in row["notes"]


def test_a_context_longer_than_the_model_is_not_scored(cmp: dict[str, Any]) -> None:
    """A context past the other model's positions was scored anyway (a RoPE model extrapolates without an error;
    collection refuses such a prompt). It is now an unmapped row that says why; a context that fits exactly is
    scored."""
    from failtrace.cases.compare import rebuild_context

    case = next(c for c in cmp["cases"] if "\ufffd" not in c.target_text + c.contrast_text)
    with open_store(cmp["store"]) as st:
        item = st.get_item(case.benchmark, case.item_id)
    lm = load_model(cmp["names"][1], progress=False)  # its own copy: the config is changed below
    n = len(rebuild_context(lm.tokenizer, item, "")[0])
    lm.model.config.max_position_embeddings = n - 1
    row = rescore(lm, case, item, "", "m", "fp")
    assert row["mapped"] is False and row["delta_logit"] is None and row["flip_k"] is None
    assert row["notes"] == [f"context of {n} tokens is longer than this model's {n - 1} positions"]
    lm.model.config.max_position_embeddings = n
    assert rescore(lm, case, item, "", "m", "fp")["mapped"] is True


def test_a_target_the_joined_text_splits_otherwise_is_not_scored(cmp: dict[str, Any], bundled: Any) -> None:
    """Gemma tokenizes "…(s):↵    return" as "↵", "    ", "return", so after a rebuilt context ending in "↵   " its
    ' return' is a token it would never write there; the row was mapped and its Δℓ compared tokens ranked 517th and
    6,446th. Such a boundary is now checked, here on the bundled tokenizer and through rescore."""
    from failtrace.cases.compare import joins_apart

    tok = bundled.tokenizer
    for prefix, text, apart in (("hello", "world", True), ("The capital of France is", " Paris", False),
                                ("def f(s):\n   ", " return", False)):
        ids = tok.encode(prefix, add_special_tokens=False)
        (one,) = tok.encode(text, add_special_tokens=False)
        assert joins_apart(tok, prefix, ids, one, text) is apart, (prefix, text)
    case = next(c for c in cmp["cases"] if "\ufffd" not in c.target_text + c.contrast_text)
    with open_store(cmp["store"]) as st:
        item = st.get_item(case.benchmark, case.item_id)
    lm = load_model(cmp["names"][1], progress=False)  # its own copy: its tokenizer's encode is wrapped below
    assert rescore(lm, case, item, "ab", "m", "fp")["mapped"] is True  # byte tokens: every join splits the same
    plain = lm.tokenizer.encode

    def merging(text: str, **kw: Any) -> list[int]:  # a tokenizer that merges the prefix's end with the target
        ids = plain(text, **kw)
        return ids[:-2] + [ids[-1]] if text == "ab" + case.target_text else ids
    lm.tokenizer.encode = merging
    row = rescore(lm, case, item, "ab", "m", "fp")
    assert row["mapped"] is False and row["delta_logit"] is None and row["target_id"] is None
    assert row["notes"][-1] == ("the answer so far and the target tokenize otherwise when joined here: this model "
                                "would not reach that token from this context")


def test_compare_says_its_progress_in_a_log_one_line_per_case(cmp: dict[str, Any], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Off a terminal (``compare ... 2> log``) the progress is a line per case, as every long stage writes it; it
    was rich's ``track``, which off a terminal draws nothing until the end."""
    import shutil

    store = tmp_path / "s.duckdb"
    shutil.copy(cmp["store"], store)
    save_toy_model(tmp_path / "model2", seed=2)
    other = str(tmp_path / "model2")
    capsys.readouterr()
    with open_store(store) as st:
        done = compare(st, [cmp["names"][0], other], progress=True)
    n = len(cmp["cases"])
    assert done.written[other] == n
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(f"compare on {other}: ")]
    assert [ln.split(",")[0] for ln in lines] == [f"compare on {other}: {i}/{n}" for i in range(1, n + 1)]


def test_a_data_bar_in_a_log_says_megabytes_at_most_every_few_seconds(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A model's assembly from its chunk packages counts bytes: in a log, megabytes done of the total at most
    every 5 s and at the end (it was rich's byte bar, which off a terminal draws nothing until the end)."""
    import failtrace.progress as progress

    clock = iter(range(0, 1000, 2))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(clock)))
    bar = progress.progress_bar(True, "assembling model.safetensors", 8_000_000, data=True)
    for _ in range(8):  # 1 MB per step at t = 2, 4, ..., 16
        bar.advance(1_000_000)
    bar.close()
    assert capsys.readouterr().err.strip().splitlines() == [
        "assembling model.safetensors: 3/8 MB, 6 s", "assembling model.safetensors: 6/8 MB, 12 s",
        "assembling model.safetensors: 8/8 MB, 16 s"]
