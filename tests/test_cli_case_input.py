"""``attribute`` and ``graph`` with ``--store S --case ID``: a stored case explained again from its own token ids.

References: the recomputed Δℓ is checked against a plain transformers forward of the case's ids, the input relevance
against the one ``analyse`` stored, and the pruned graph against the stored pruned graph (same default settings).
Bad combinations are one line, exit code 2, and the store is left byte-identical."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve_store import analysed_toy_store, sha256  # noqa: E402

from failtrace.cli import main  # noqa: E402
from failtrace.store import open_store  # noqa: E402
from failtrace.store.cases import load_cases  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    info = analysed_toy_store(tmp_path_factory.mktemp("case_input"), n_items=4)
    with open_store(info["store"], read_only=True) as st:
        info["cases"] = load_cases(st, with_graph=True)
    assert info["cases"], "the toy store must hold at least one case"
    return info


def _plain_delta(model_dir: Path, ids: list[int], target: int, contrast: int) -> float:
    """Δℓ from transformers alone: no failtrace code between the ids and the logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    return float(logits[target] - logits[contrast])


def test_attribute_case_reproduces_the_stored_attribution(toy, tmp_path, capsys) -> None:
    case = toy["cases"][0]
    before = sha256(toy["store"])
    out = tmp_path / "a.json"
    assert main(["attribute", "--store", str(toy["store"]), "--case", case.case_id[:10], "--json", str(out),
                 "-q"]) == 0
    said = capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["token_ids"] == case.token_ids
    assert rec["prompt_length"] == case.prompt_length
    assert rec["target"]["id"] == case.target_id and rec["contrast"]["id"] == case.contrast_id
    plain = _plain_delta(toy["model_dir"], case.token_ids, case.target_id, case.contrast_id)
    assert rec["delta_logit"] == pytest.approx(plain, abs=1e-4)
    np.testing.assert_allclose(rec["input_relevance"], case.methods["attnlrp"].input_relevance, rtol=1e-4,
                               atol=1e-6)
    assert f"Δℓ {plain:.4f} matches the stored {case.delta_logit:.4f}" in said  # stdout, with the result
    assert rec["extra"]["case"]["case_id"] == case.case_id  # the record says where its ids came from
    from failtrace.attribution.record import Attribution
    from failtrace.views import heatmap_html

    page = heatmap_html(Attribution.from_dict(rec))  # and so does its heatmap's header
    assert f'<span class="k">case</span><span class="v">{case.case_id[:12]} (toy {case.item_id})</span>' in page
    assert sha256(toy["store"]) == before


def test_graph_case_reproduces_the_stored_graph(toy, tmp_path, capsys) -> None:
    case = toy["cases"][0]
    out = tmp_path / "g.json"
    assert main(["graph", "--store", str(toy["store"]), "--case", case.case_id, "--json", str(out), "-q"]) == 0
    assert "matches the stored" in capsys.readouterr().out  # with -q too: it is the result
    data = json.loads(out.read_text())
    assert data["metadata"]["case"]["case_id"] == case.case_id
    assert data["metadata"]["chat"] is True  # the case's ids are its collection's chat rendering (it said false)
    page = tmp_path / "g.html"  # the interactive page's title names the case too
    assert main(["graph", "--store", str(toy["store"]), "--case", case.case_id, "--html", str(page), "-q"]) == 0
    assert f"<title>case {case.case_id[:12]} (toy {case.item_id}) · " in page.read_text()
    stage = {s["id"]: i for i, s in enumerate(data["stages"])}
    got = {(stage[n["stage"]], n["token_index"]): n["relevance"] for n in data["nodes"]}
    want = {(int(s), int(t)): r for s, t, r in case.graph["nodes"]}
    assert got.keys() == want.keys()
    for key, r in want.items():
        assert got[key] == pytest.approx(r, rel=1e-4, abs=1e-6)
    assert len(data["links"]) == len(case.graph["edges"])


def test_another_model_is_named(toy, tmp_path, capsys) -> None:
    from failtrace_testkit.toy import save_toy_model

    other = tmp_path / "other"
    save_toy_model(other, seed=1)
    case = toy["cases"][0]
    assert main(["attribute", "--store", str(toy["store"]), "--case", case.case_id, "--model", str(other),
                 "-q"]) == 0
    said = capsys.readouterr()
    assert "is not the model that built" in said.err and "its content fingerprint differs" in said.err
    plain = _plain_delta(other, case.token_ids, case.target_id, case.contrast_id)
    assert abs(plain - case.delta_logit) > 1e-3, "the second toy model must compute another Δℓ"
    assert f"Δℓ {plain:.4f} differs by" in said.out


@pytest.mark.parametrize("command", ["attribute", "graph"])
@pytest.mark.parametrize("extra,msg", [
    ([], "give --prompt TEXT, or --store S --case ID"),
    (["--store", "STORE"], "--store is only read with --case ID"),
    (["--case", "abc"], "--case needs --store"),
    (["--store", "STORE", "--case", "CASE", "--prompt", "hi", "--chat"], "drop --prompt, --chat"),
    (["--store", "STORE", "--case", "CASE", "--target", "a", "--position", "2"], "drop --target, --position"),
    (["--store", "STORE", "--case", "no-such-case"], "no case 'no-such-case' in"),
])
def test_bad_combinations_are_one_line(toy, capsys, command, extra, msg) -> None:
    before = sha256(toy["store"])
    args = [{"STORE": str(toy["store"]), "CASE": toy["cases"][0].case_id}.get(a, a) for a in extra]
    assert main([command, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1
    assert sha256(toy["store"]) == before


def test_an_objective_without_contrast_drops_it(toy, tmp_path, capsys) -> None:
    from transformers import AutoModelForCausalLM

    case = toy["cases"][0]
    out = tmp_path / "m.json"
    assert main(["attribute", "--store", str(toy["store"]), "--case", case.case_id, "--objective", "max_logit",
                 "--json", str(out), "-q"]) == 0
    said = capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert f"max_logit {rec['delta_logit']:.4f} (the store holds only the logit difference" in said
    assert rec["contrast"] is None and rec["target"]["id"] == case.target_id
    model = AutoModelForCausalLM.from_pretrained(str(toy["model_dir"]), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([case.token_ids])).logits[0, -1]
    assert rec["delta_logit"] == pytest.approx(float(logits[case.target_id]), abs=1e-4)


def _swapped_tokenizer_model(folder: Path) -> Path:
    """The toy weights with a tokenizer whose byte ids are in reverse order: the same ids spell other text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from failtrace_testkit.toy import _CHAT_TEMPLATE, _SPECIALS, save_toy_model

    save_toy_model(folder, seed=0)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), reverse=True)
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate([*_SPECIALS, *alphabet])}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = _CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def test_a_model_whose_tokenizer_reads_other_text_is_refused(toy, tmp_path, capsys) -> None:
    """Stored ids mean nothing in another tokenizer (it explained them as garbage with exit 0)."""
    other = _swapped_tokenizer_model(tmp_path / "swapped")
    case = toy["cases"][0]
    capsys.readouterr()  # (saving the model printed a progress bar)
    assert main(["attribute", "--store", str(toy["store"]), "--case", case.case_id, "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "tokenizer reads" in err and "failtrace compare" in err and len(err.strip().splitlines()) == 1


def test_ids_beyond_the_weights_are_one_error(toy) -> None:
    """A tokenizer larger than the weights' vocabulary: an id past the embedding rows was an IndexError (exit 70)."""
    import failtrace
    from failtrace.errors import FailtraceError
    from failtrace_testkit.toy import toy_loaded

    lm = toy_loaded()
    lm.model.resize_token_embeddings(100)
    assert len(lm.tokenizer) > 200
    with pytest.raises(FailtraceError, match="input token id 200 is beyond this model's 100 vocabulary rows"):
        failtrace.attribute(lm, [5, 200, 7], target=3, contrast=4)
    with pytest.raises(FailtraceError, match="target/contrast id 150 is beyond"):
        failtrace.attribute(lm, [5, 6, 7], target=150, contrast=4)


def test_a_store_without_the_run_needs_model(toy, tmp_path, capsys) -> None:
    """A store that lost the collection run: the case's own model name is used; with none either, --model is
    required, and enough. An upper-case id finds the case; a stored Δℓ that is not finite says so instead of
    'differs by nan'."""
    import shutil

    store = tmp_path / "norun.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    with open_store(store) as st:
        st.con.execute("DELETE FROM runs WHERE stage = 'collect'")
        st.con.execute("UPDATE cases SET delta_logit = 'nan'::DOUBLE WHERE case_id = ?", [case.case_id])
    assert main(["attribute", "--store", str(store), "--case", case.case_id, "-q"]) == 0  # the case's model
    assert "the store holds no finite Δℓ to compare with" in capsys.readouterr().out
    with open_store(store) as st:
        st.con.execute("UPDATE cases SET model = '' WHERE case_id = ?", [case.case_id])
    assert main(["attribute", "--store", str(store), "--case", case.case_id, "-q"]) == 2
    err = capsys.readouterr().err
    assert "names no model (nor does its collection run" in err and "pass --model" in err
    assert main(["attribute", "--store", str(store), "--case", case.case_id[:10].upper(), "--model",
                 str(toy["model_dir"]), "--objective", "max_logit", "-q"]) == 0
    assert "(the store holds only the logit difference, no finite Δℓ)" in capsys.readouterr().out


def test_the_case_analysis_settings_are_the_defaults(toy, tmp_path, capsys) -> None:
    """A case analysed with other settings (ig steps, pruning, node threshold) is explained again with those unless
    the options are given: ig at the command's own 32 steps gave the opposite sign on a real case."""
    import shutil

    from failtrace.cases.analyse import analyse
    from failtrace.cases.settings import CaseSettings

    store = tmp_path / "other.duckdb"
    shutil.copy(toy["store"], store)
    settings = CaseSettings(methods=["attnlrp", "ig"], ig_steps=3, prune="cumulative:0.5", node_threshold=0.05)
    with open_store(store) as st:
        analyse(st, settings, progress=False)
        case = next(c for c in load_cases(st, with_graph=True) if c.settings["ig_steps"] == 3)
    capsys.readouterr()
    out = tmp_path / "ig.json"
    assert main(["attribute", "--store", str(store), "--case", case.case_id, "--method", "ig", "--json", str(out),
                 "-q"]) == 0
    np.testing.assert_allclose(json.loads(out.read_text())["input_relevance"], case.methods["ig"].input_relevance,
                               rtol=1e-4, atol=1e-6)
    assert main(["attribute", "--store", str(store), "--case", case.case_id, "--method", "ig", "--ig-steps", "8",
                 "--json", str(out), "-q"]) == 0  # given: used
    assert not np.allclose(json.loads(out.read_text())["input_relevance"], case.methods["ig"].input_relevance,
                           rtol=1e-4, atol=1e-6)
    g = tmp_path / "g.json"
    assert main(["graph", "--store", str(store), "--case", case.case_id, "--json", str(g), "-q"]) == 0
    data = json.loads(g.read_text())
    assert data["metadata"]["prune"] == "cumulative:0.5" and data["metadata"]["node_threshold"] == 0.05
    stage = {s["id"]: i for i, s in enumerate(data["stages"])}
    assert {(stage[n["stage"]], n["token_index"]) for n in data["nodes"]} == {(int(s), int(t)) for s, t, _ in
                                                                            case.graph["nodes"]}


def test_a_case_without_stored_settings_uses_analyse_defaults(toy, tmp_path, capsys) -> None:
    """Settings missing from a stored case are analyse's defaults (CaseSettings), not the command's: IG at 16 steps,
    not attribute's 32 for a prompt."""
    import shutil

    from failtrace.cases.settings import CaseSettings

    store = tmp_path / "nosettings.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    with open_store(store) as st:
        st.con.execute("UPDATE cases SET settings = '{}' WHERE case_id = ?", [case.case_id])
    out = tmp_path / "ig.json"
    assert main(["attribute", "--store", str(store), "--case", case.case_id, "--method", "ig", "--json", str(out),
                 "-q"]) == 0
    assert json.loads(out.read_text())["extra"]["ig_steps"] == CaseSettings().ig_steps == 16
    default = json.loads(out.read_text())["input_relevance"]
    for steps, same in (("16", True), ("32", False)):  # the steps were used, not only recorded
        assert main(["attribute", "--store", str(store), "--case", case.case_id, "--method", "ig", "--ig-steps",
                     steps, "--json", str(out), "-q"]) == 0
        assert np.allclose(json.loads(out.read_text())["input_relevance"], default, rtol=1e-5, atol=1e-7) == same


def test_the_random_baseline_of_a_stored_case_draws_the_order_its_analysis_drew(toy, tmp_path) -> None:
    """The random baseline's order is seeded per case (the analysis's seed and the case id); ``attribute --method
    random`` on a stored case used seed 0 and could not reproduce the stored order."""
    case = next(c for c in toy["cases"] if "random" in c.methods)
    out = tmp_path / "r.json"
    assert main(["attribute", "--store", str(toy["store"]), "--case", case.case_id, "--method", "random", "--json",
                 str(out), "-q"]) == 0
    rec = json.loads(out.read_text())
    np.testing.assert_allclose(rec["input_relevance"], case.methods["random"].input_relevance, rtol=0, atol=0)
