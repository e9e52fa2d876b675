"""``analyse`` on a real toy store (collect + pairs): stored cases against independent computations, resumability,
keying by settings and by model content, an interrupted run resumed with nothing lost or duplicated."""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import failtrace
from failtrace.cases.analyse import analyse
from failtrace.cases.record import CATEGORIES, PATTERNS, case_id
from failtrace.cases.settings import DEFAULT_METHODS, CaseSettings
from failtrace.errors import FailtraceError
from failtrace.models.fingerprint import model_fingerprint
from failtrace.store import open_store
from failtrace.store.cases import load_case_graph, load_cases
from failtrace_testkit.toy import one_thread, save_toy_model

from cases_toy import build_toy_store

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cases")
    with one_thread():
        info = build_toy_store(root / "s.duckdb", root / "model")
        assert len(info["clean"]) >= 3
        with open_store(info["store"]) as st:
            info["summary"] = analyse(st, progress=False)
    return info


def _raw(store: Path, sql: str) -> list[tuple[Any, ...]]:
    import duckdb

    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _plain_logits(model: Any, ids: list[int], masked: list[int] = ()) -> torch.Tensor:
    """Last-position logits from plain transformers, optionally with the embeddings of ``masked`` set to zero."""
    with torch.no_grad():
        emb = model.get_input_embeddings()(torch.tensor([ids])).clone()
        emb[0, list(masked)] = 0.0
        return model(inputs_embeds=emb, use_cache=False).logits[0, -1].double()


def test_cases_equal_independent_computations(toy: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = toy["summary"]
    assert summary.analysed == len(toy["clean"]) and not summary.errors
    plain = AutoModelForCausalLM.from_pretrained(str(toy["model_dir"])).eval()  # fresh weights, no failtrace code
    plain_tok = AutoTokenizer.from_pretrained(str(toy["model_dir"]))
    raw = {item: (list(p), list(c), off, t, d) for item, p, c, off, t, d in _raw(
        toy["store"], "SELECT g.item_id, g.prompt_ids, g.token_ids, p.completion_offset, p.target_id, p.delta_logit "
                      "FROM generations g JOIN pairs p USING (run_id, item_id) WHERE p.status = 'clean'")}
    with open_store(toy["store"], read_only=True) as st:
        cases = load_cases(st)
        graphs = {c.case_id: load_case_graph(st, c.case_id) for c in cases}
    assert sorted(c.item_id for c in cases) == sorted(raw)
    for case in cases:
        prompt, comp, off, target, stored_delta = raw[case.item_id]
        assert case.token_ids == prompt + comp[:off] and case.position == len(case.token_ids) == len(prompt) + off
        assert case.target_id == target == comp[off] and case.prompt_length == len(prompt)
        logits = _plain_logits(plain, case.token_ids)
        reference = float(logits[case.target_id] - logits[case.contrast_id])
        assert abs(case.delta_logit - reference) < 1e-3 and abs(case.delta_logit - stored_delta) < 1e-3
        assert case.notes == [] and set(case.methods) == set(DEFAULT_METHODS)
        # storage and wiring (the stored relevance is the one attribute() gives); the LRP math itself is checked
        # against explicit formulas in test_lrp_rules.py and IG by completeness in test_baselines_ig.py
        for method in ("attnlrp", "cp-lrp", "gradxinput"):
            direct = failtrace.attribute(toy["lm"], case.token_ids, target=case.target_id,
                                         contrast=case.contrast_id, method=method)
            assert direct.position == case.position - 1
            np.testing.assert_allclose(case.methods[method].input_relevance, direct.input_relevance, rtol=1e-5,
                                       atol=1e-7)
            np.testing.assert_allclose(case.methods[method].hidden_layer_sums,
                                       direct.hidden_relevance.sum(axis=1), rtol=1e-5, atol=1e-7)
        ig = failtrace.attribute(toy["lm"], case.token_ids, target=case.target_id, contrast=case.contrast_id,
                                 method="ig", ig_steps=16)
        np.testing.assert_allclose(case.methods["ig"].input_relevance, ig.input_relevance, rtol=1e-5, atol=1e-7)
        _check_segments_and_masking(case, plain, plain_tok)
        assert case.category in CATEGORIES and case.pattern in PATTERNS
        k_attn = case.methods["attnlrp"].flip_k
        assert (case.category == "M-IA") == (k_attn is not None and k_attn <= CaseSettings().k_ia)
        graph = graphs[case.case_id]
        n_stages = len(graph["stages"])
        assert [n_stages - 1, case.position - 1] in [n[:2] for n in graph["nodes"]] and graph["edges"]
        assert graph["settings"]["prune"] == "cumulative:0.85" and graph["objective_value"] == pytest.approx(
            case.delta_logit, abs=1e-3)


def test_category_and_pattern_are_of_the_cases_own_relevance(toy: dict[str, Any]) -> None:
    """The category's node ablation and the failure pattern are recomputed here from AttnLRP's relevance of the
    case's context (``attribute``), the stored segment spans and a fresh plain-transformers model: a case whose
    ablation or pattern was fed other relevance (another method's, a sign slip, another case's) differs."""
    from transformers import AutoModelForCausalLM

    from failtrace.analysis.categories import categorize, node_ablation
    from failtrace.analysis.patterns import failure_pattern

    plain = AutoModelForCausalLM.from_pretrained(str(toy["model_dir"])).eval()
    settings = CaseSettings()
    with open_store(toy["store"], read_only=True) as st:
        cases = load_cases(st)
    assert cases
    for case in cases:
        labels: list[str | None] = [None] * len(case.token_ids)
        for label, spans in case.segments.items():
            for start, end in spans:
                labels[start:end] = [label] * (end - start)
        assert None not in labels
        direct = failtrace.attribute(toy["lm"], case.token_ids, target=case.target_id, contrast=case.contrast_id,
                                     method="attnlrp")
        pattern, evidence = failure_pattern(direct.input_relevance, case.special_mask, labels,
                                            case.relevant_segments)
        assert case.pattern == pattern
        _assert_close(case.pattern_evidence, json.loads(json.dumps(evidence)))
        budget = {} if settings.ablation_budget is None else {"budget": settings.ablation_budget}
        ablation = node_ablation(plain, case.token_ids, direct.hidden_relevance, case.target_id, case.contrast_id,
                                 special_mask=_fixed(case), **budget)
        stored = case.category_evidence["ablation"]
        assert [(n["layer"], n["position"]) for n in stored["nodes"]] == [
            (n["layer"], n["position"]) for n in ablation["nodes"]]
        assert stored["k"] == ablation["k"] and stored["flipped"] == ablation["flipped"]
        np.testing.assert_allclose(stored["curve"], ablation["curve"], atol=1e-4)
        category, _ = categorize(case.methods["attnlrp"].flip_k, ablation, k_ia=settings.k_ia)
        assert case.category == category


def _assert_close(got: Any, want: Any, path: str = "") -> None:
    """Equal structure, numbers within 1e-5 (relative) / 1e-7: JSON-like values, recursively."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), path
        for k in want:
            _assert_close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), path
    else:
        assert got == want, path


def _fixed(case: Any) -> list[bool]:
    """Positions masking and ablation may not pick, from the stored spans: special ids and, by default, every token of
    the ``special`` segment (the chat template's own text)."""
    template = {i for s, e in case.segments.get("special", []) for i in range(s, e)}
    assert case.masking.skip_template
    return [bool(sp) or i in template for i, sp in enumerate(case.special_mask)]


def _check_segments_and_masking(case: Any, plain: Any, plain_tok: Any) -> None:
    covered = sorted((s, e) for spans in case.segments.values() for s, e in spans)
    assert covered[0][0] == 0 and covered[-1][1] == len(case.token_ids)
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))  # no gap, no overlap
    assert case.special_mask == [t in (0, 1, 2) for t in case.token_ids]  # the toy tokenizer's three specials
    for m, res in case.methods.items():
        assert sum(res.segment_relevance.values()) == pytest.approx(sum(res.input_relevance), abs=1e-9)
        # top-k by hand: not special nor template text, positive relevance, largest first, ties to the lower position
        fixed = _fixed(case)
        order = sorted((i for i, r in enumerate(res.input_relevance) if r > 0 and not fixed[i]),
                       key=lambda i: (-res.input_relevance[i], i))
        assert len(res.flip_curve) == min(case.masking.max_k, len(order)) + 1
        assert res.flip_curve[0] == pytest.approx(case.delta_logit, abs=1e-4)
        flips = [k for k in range(1, len(res.flip_curve)) if res.flip_curve[k] < 0]
        assert res.flip_k == (flips[0] if flips else None)
        for k in {1, res.flip_k or 1}:
            logits = _plain_logits(plain, case.token_ids, order[:k])
            assert res.flip_curve[k] == pytest.approx(float(logits[case.target_id] - logits[case.contrast_id]),
                                                      abs=1e-4), m
        # the top next token after masking the top k, k = 0..K: plain transformers' argmax (where its lead is clear
        # of float noise), and its text as the tokenizer decodes that id alone
        assert len(res.flip_tops) == len(res.flip_top_texts) == len(res.flip_curve)
        for k, top in enumerate(res.flip_tops):
            best = _plain_logits(plain, case.token_ids, order[:k]).topk(2)
            if float(best.values[0] - best.values[1]) > 1e-4:
                assert top == int(best.indices[0]), (m, k)
        assert res.flip_top_texts == [plain_tok.decode([t]) for t in res.flip_tops]


def test_rerun_does_no_work_and_other_methods_never_mix(toy: dict[str, Any]) -> None:
    n = len(toy["clean"])
    with open_store(toy["store"]) as st:
        again = analyse(st, progress=False)
        assert again.analysed == 0 and again.skipped == n and again.analysis_ids == toy["summary"].analysis_ids
        first_ids = {c.case_id for c in load_cases(st)}
        other = analyse(st, CaseSettings(methods=("attnlrp", "random"), max_k=3), progress=False)
        assert other.analysed == n and other.analysis_ids != again.analysis_ids
        latest = load_cases(st)
        everything = load_cases(st, latest=False)
    assert {c.case_id for c in latest}.isdisjoint(first_ids) and len(latest) == n
    assert all(set(c.methods) == {"attnlrp", "random"} and c.masking.max_k == 3 for c in latest)
    # the search stopped at 3, so the M-IA bound in force (and in the evidence) is 3, not the default k_ia 5
    assert all(c.category_evidence["k_ia"] == 3 and (c.category == "M-IA") == (c.methods["attnlrp"].flip_k is not None)
               for c in latest)
    assert len(everything) == 2 * n
    rows = _raw(toy["store"], "SELECT count(*), count(DISTINCT case_id) FROM cases")
    assert rows == [(2 * n, 2 * n)]


def test_another_model_file_at_the_same_path_gives_new_cases(tmp_path: Path) -> None:
    info = build_toy_store(tmp_path / "s.duckdb", tmp_path / "model", n_items=4)
    settings = CaseSettings(methods=("attnlrp",), max_k=2)
    with open_store(info["store"]) as st:
        old = analyse(st, settings, limit=2, progress=False)
        old_cases = load_cases(st)
    save_toy_model(tmp_path / "model", seed=1)  # same path, other weights
    with open_store(info["store"]) as st:
        new = analyse(st, settings, limit=2, progress=False)
        new_cases = load_cases(st)
        by_fp = load_cases(st, model_fingerprint=old_cases[0].model_fingerprint, latest=False)
    assert old.analysed == new.analysed == 2 and new.analysis_ids != old.analysis_ids
    assert {c.case_id for c in new_cases}.isdisjoint({c.case_id for c in old_cases})
    assert new_cases[0].model_fingerprint != old_cases[0].model_fingerprint
    assert {c.case_id for c in by_fp} == {c.case_id for c in old_cases}
    assert all(c.notes and "differs from the stored pair" in c.notes[0] for c in new_cases)
    assert all(not c.notes for c in old_cases)


_KILLABLE = """
import sys
sys.path.insert(0, {src!r})
from failtrace.cases.analyse import analyse
from failtrace.store import open_store
with open_store({store!r}) as st:
    analyse(st, progress=False, on_case=lambda c: print("committed", c.case_id, flush=True))
"""


def test_killed_analyse_resumes_with_nothing_lost_or_duplicated(toy: dict[str, Any], tmp_path: Path) -> None:
    store = tmp_path / "copy.duckdb"  # a copy of the module's store, its cases removed
    shutil.copy(toy["store"], store)
    with open_store(store) as st:
        st.con.execute("DELETE FROM case_methods; DELETE FROM case_graphs; DELETE FROM cases")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE.format(src=SRC, store=str(store))],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[:1] == ["committed"], first
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with open_store(store) as st:
        before = {r[0] for r in st.con.execute("SELECT case_id FROM cases").fetchall()}
        assert first[1] in before and len(before) < len(toy["clean"])
        resumed = analyse(st, progress=False)
        fp = model_fingerprint(toy["lm"])
        ident = CaseSettings().validate().identity()
    expected = {case_id(toy["pair_run_id"], p["item_id"], fp, ident) for p in toy["clean"]}
    assert resumed.analysed == len(expected) - len(before) and resumed.skipped == len(before)
    per_table = _raw(store, "SELECT (SELECT count(*) FROM cases), (SELECT count(DISTINCT case_id) FROM cases), "
                            "(SELECT count(*) FROM case_methods), (SELECT count(*) FROM case_graphs)")
    assert per_table == [(len(expected), len(expected), len(expected) * len(DEFAULT_METHODS), len(expected))]
    assert {r[0] for r in _raw(store, "SELECT case_id FROM cases")} == expected


def test_cases_jsonl_fields_and_position_convention(toy: dict[str, Any], tmp_path: Path) -> None:
    from failtrace.cli import main

    assert main(["export", "--store", str(toy["store"]), "--format", "jsonl", "--out", str(tmp_path / "x")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "x" / "cases.jsonl").read_text().splitlines()]
    gens = {g["item_id"]: g for g in map(json.loads, (tmp_path / "x" / "generations.jsonl").read_text().splitlines())}
    pairs = {(p["pair_run_id"], p["item_id"]): p
             for p in map(json.loads, (tmp_path / "x" / "pairs.jsonl").read_text().splitlines())}
    assert len(lines) >= len(toy["clean"])
    required = {"item_id", "model_fingerprint", "token_ids", "tokens", "special_mask", "position", "target_id",
                "contrast_id", "delta_logit", "segments", "segment_relevance", "input_relevance", "flip_k",
                "masking", "category", "pattern"}
    for rec in lines:
        assert required <= set(rec)
        g, p = gens[rec["item_id"]], pairs[(rec["pair_run_id"], rec["item_id"])]
        n = len(rec["token_ids"])
        assert rec["position"] == n == p["position"]  # the target's index in the full sequence
        full = g["prompt_ids"] + g["token_ids"]
        assert rec["token_ids"] == full[:n] and full[n] == rec["target_id"] == p["target_id"]
        assert rec["contrast_id"] == p["contrast_id"] and len(rec["tokens"]) == len(rec["special_mask"]) == n
        assert rec["masking"]["rule"] == "zero-embedding" and rec["masking"]["token_id"] is None
        assert set(rec["input_relevance"]) == set(rec["flip_k"]) == set(rec["segment_relevance"])
        assert all(len(v) == n for v in rec["input_relevance"].values())
        assert all(k is None or 1 <= k <= rec["masking"]["max_k"] for k in rec["flip_k"].values())
        assert rec["category"] in CATEGORIES and rec["pattern"] in PATTERNS


def test_a_context_with_nothing_maskable_says_so(tmp_path: Path) -> None:
    """An empty prompt explained at the first answer token: the context is the chat template's text and special
    ids only, so nothing is masked or ablated, and the case's notes say why k* and the category mean nothing."""
    from failtrace.benchmarks.base import Item
    from failtrace.failures.collect import collect
    from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate
    from failtrace_testkit.reference_decoding import naive_greedy
    from failtrace.failures.pairs import PairSettings, find_pairs
    from failtrace.models.chat import apply_chat_template
    from failtrace.models.loading import load_model
    from failtrace_testkit.toy import ToyBenchmark

    with one_thread():
        lm = load_model(str(save_toy_model(tmp_path / "model")), progress=False)
        eos = eos_token_ids(lm.model, lm.tokenizer)
        prompt = apply_chat_template(lm.tokenizer, "")
        first = greedy_generate(lm.model, [prompt], 16, eos)[0].token_ids[0]
        with torch.no_grad():
            row = lm.model(input_ids=torch.tensor([prompt]), use_cache=False).logits[0, -1]
        printable = [t for t in torch.topk(row, 10).indices.tolist()
                     if lm.tokenizer.decode([t]).isprintable() and "\ufffd" not in lm.tokenizer.decode([t])]
        alt = next(t for t in printable if t != first)
        needle = decode_completion(lm.tokenizer, naive_greedy(lm.model, prompt, 16, eos, forced=alt), eos)
        bench = ToyBenchmark(mode="prefix", max_new_tokens=16)
        with open_store(tmp_path / "s.duckdb") as st:
            collect(st, bench, [Item(id="empty", benchmark="toy", prompt="", reference={"needle": needle})], lm,
                    progress=False)
            find_pairs(st, PairSettings(top_k=10, min_delta=0.0, max_positions=8), models={lm.name: lm},
                       benchmarks={"toy": bench}, progress=False)
            assert [(p["status"], p["position"]) for p in st.pairs()] == [("clean", len(prompt))]
            analyse(st, CaseSettings(methods=("attnlrp", "random")), progress=False)
            (c,) = load_cases(st)
    assert c.token_ids == prompt and c.segments == {"special": [[0, len(prompt)]]}  # template text and ids only
    assert any("nothing may be masked or ablated" in n for n in c.notes)
    assert all(len(m.flip_curve) == 1 and m.flip_k is None for m in c.methods.values())
    assert c.category_evidence["ablation"]["nodes"] == []


@pytest.mark.parametrize("pattern, message", [
    ({"theta_shar": 0.1}, "unknown pattern setting 'theta_shar'; valid: theta, theta_share, m"),
    ({"m": 0.9}, "pattern setting m (top supporters looked at) must be an integer >= 1, got 0.9"),
    ({"m": 0}, "must be an integer >= 1, got 0"),
    ({"theta": True}, "pattern setting theta must be a finite number, got True"),
    ({"theta": float("nan")}, "pattern setting theta must be a finite number"),
])
def test_pattern_settings_are_checked_before_any_work(pattern: dict[str, Any], message: str) -> None:
    """A mistyped key used to pass and end the whole run with a TypeError at the first case; m = 0.9 was cut to 0."""
    with pytest.raises(FailtraceError, match=re.escape(message)):
        CaseSettings(pattern=pattern).validate()
    assert CaseSettings(pattern={"theta": 0.2, "theta_share": 0.1, "m": 2}).validate().pattern["m"] == 2


def test_export_says_which_files_it_replaced_and_removed(toy: dict[str, Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Exporting into a folder that holds files of the export's names replaced them without a word; now the files
    replaced and the ones removed (tables this store lacks) are named, and a user's other file is left alone."""
    from failtrace.cli import main

    out = tmp_path / "exp"
    out.mkdir()
    (out / "cases.jsonl").write_text("my own notes\n")
    (out / "comparisons.jsonl").write_text("{}\n")  # the toy store has no comparisons table
    (out / "mine.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["export", "--store", str(toy["store"]), "--format", "jsonl", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "replaced the files of the same names that were there: cases.jsonl" in said
    assert "removed comparisons.jsonl (tables this store does not hold" in said
    assert (out / "mine.txt").read_text() == "keep me" and not (out / "comparisons.jsonl").exists()
    assert (out / "cases.jsonl").read_text() != "my own notes\n"
    assert main(["export", "--store", str(toy["store"]), "--format", "jsonl", "--out", str(tmp_path / "new")]) == 0
    said, err = capsys.readouterr()
    assert "replaced" not in said and "removed" not in said and "also holds" not in err
    # the other format's files are kept (the same store in both formats is a fair folder) and named
    (out / "reviews.parquet").write_text("another store's")
    assert main(["export", "--store", str(toy["store"]), "--format", "parquet", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    jsonl = sorted(f.name for f in out.glob("*.jsonl"))
    assert len(jsonl) > 4 and f"note: {out} also holds {len(jsonl)} jsonl files of an earlier export " \
        f"({', '.join(jsonl[:4])} and {len(jsonl) - 4} more), left as they were" in err, err
    assert (out / "mine.txt").read_text() == "keep me" and not (out / "reviews.parquet").exists()


def test_a_registered_method_is_analysed_shown_and_ordered_like_the_built_in_ones(
        toy: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The attribution registry is the one list of methods: a method registered there (docs/ARCHITECTURE.md, "Where
    to add things") is accepted by ``analyse``, stored with its own relevance, flip curve and the case's own seed,
    shown by ``show --method``, and ordered by the report as the registry orders it. Before, the analysis kept its
    own hard-coded list of six and refused it."""
    from failtrace.attribution.methods import ATTRIBUTION_METHODS, MethodResult, register_method
    from failtrace.cli import main
    from failtrace.report.tables import methods_of

    seeds: list[int] = []

    def by_position(model: Any, ids: list[int], objective: Any, *, seed: int = 0, **_: Any) -> MethodResult:
        seeds.append(seed)  # later tokens more relevant: the masking order is from the last token back
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
        return MethodResult(np.arange(len(ids), dtype=np.float64)[None, :], float(objective(logits)), logits)

    register_method("by-position", by_position)
    try:
        methods = CaseSettings.parse_methods("by-position, attnlrp")
        assert methods == ("attnlrp", "by-position")
        with open_store(toy["store"]) as st:
            done = analyse(st, CaseSettings(methods=methods, max_k=2), progress=False)
            cases = load_cases(st)  # the newest analysis of each pair run: this one
        assert done.analysed == len(toy["clean"]) == len(cases) and len(set(seeds)) == len(cases)
        for case in cases:
            got = case.methods["by-position"]
            assert got.input_relevance == [float(i) for i in range(len(case.tokens))]
            # its flip curve masks its own top tokens (the last maskable ones), recomputed here by plain forwards
            fixed = _fixed(case)
            order = [i for i in range(len(case.tokens) - 1, -1, -1) if not fixed[i]][:2]
            plain = _plain_logits(toy["lm"].model, case.token_ids, order[:1])
            want = float(plain[case.target_id] - plain[case.contrast_id])
            assert got.flip_curve[1] == pytest.approx(want, abs=1e-4)
        assert methods_of(cases) == ["attnlrp", "by-position"]
        capsys.readouterr()
        assert main(["show", "--store", str(toy["store"]), "--case", cases[0].case_id, "--method", "by-position"]) == 0
        assert "by-position" in capsys.readouterr().out
    finally:
        ATTRIBUTION_METHODS.pop("by-position")
    # where it is not registered (another process), the store's own methods are still shown, and in the list of
    # valid ones when a name is wrong
    assert main(["show", "--store", str(toy["store"]), "--case", cases[0].case_id, "--method", "by-position"]) == 0
    assert "by-position" in capsys.readouterr().out
    assert main(["show", "--store", str(toy["store"]), "--method", "by-pos"]) == 2
    assert capsys.readouterr().err.strip().endswith("valid: attnlrp, cp-lrp, gradxinput, ig, attention, random, "
                                                    "by-position")


def test_an_analysis_spends_no_pass_on_a_value_it_never_reads(toy: dict[str, Any]) -> None:
    """The registry's attention and random methods compute the objective's value with a plain forward pass (the
    record ``failtrace attribute`` writes); an analysis takes Δℓ from its own plain pass, so it asks them not to:
    random then runs no forward pass at all and attention one (its attention weights). Asked, the value is the
    plain forward's Δℓ."""
    from failtrace.attribution.methods import get_method
    from failtrace.cases.build import logit_diff_fn, method_relevance

    lm = toy["lm"]
    with open_store(toy["store"]) as st:
        case = load_cases(st)[0]
    ids = list(case.token_ids)
    fn = logit_diff_fn(case.target_id, case.contrast_id)
    calls = {"n": 0}
    from failtrace.attribution.engine import base_and_head

    base = base_and_head(lm.model)[0]  # the decoder: every pass runs it, whether through the LM head or not
    hook = base.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        for method, passes in (("random", 0), ("attention", 1)):
            calls["n"] = 0
            rel, sums, hidden = method_relevance(lm, method, ids, fn, CaseSettings(), None, case.case_id)
            assert calls["n"] == passes and len(rel) == len(ids) and sums == [] and hidden is None, method
    finally:
        hook.remove()
    plain = _plain_logits(lm.model, ids)
    for method in ("random", "attention"):
        res = get_method(method)(lm.model, ids, fn, seed=3)
        assert res.value == pytest.approx(float(plain[case.target_id] - plain[case.contrast_id]), abs=1e-4)
