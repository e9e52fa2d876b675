"""failtrace finetune (trl SFT / DPO / token-dpo) and compare --checkpoints, on the toy model and a toy store.

Everything numerical is checked against plain torch / plain transformers: the training losses before and after
(recomputed from the checkpoint folders), the token-weighted DPO loss (per-token log-probs from plain logits and
the formula), and every stored Δℓ (a forward pass of ``AutoModelForCausalLM.from_pretrained(folder)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from cases_toy import build_toy_store, write_toy_cases
from failtrace.errors import FailtraceError
from failtrace.models.loading import load_model
from failtrace.store import open_store
from failtrace.store.cases import load_cases
from failtrace.store.comparisons import load_comparisons
from failtrace_testkit.toy import one_thread, save_toy_model, toy_model, toy_tokenizer
from failtrace.training.checkpoints import read_metadata
from failtrace.training.data import split_cases
from failtrace.training.finetune import FinetuneSettings, finetune

STEPS, EVERY, LR = 6, 3, 1e-3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A toy store with cases, and one finetune run per method (6 steps, checkpoints at 0, 3, 6)."""
    root = tmp_path_factory.mktemp("train")
    with one_thread():
        info = build_toy_store(root / "s.duckdb", root / "model0", n_items=8)
        lm = load_model(str(root / "model0"), progress=False)
        with open_store(info["store"]) as st:
            write_toy_cases(st, lm, info)
        results = {}
        with open_store(info["store"], read_only=True) as st:
            for method in ("sft", "dpo", "token-dpo"):
                results[method] = finetune(st, lm, root / method, FinetuneSettings(
                    method=method, steps=STEPS, save_every=EVERY, lr=LR, held_out=0.3, seed=0))
            cases = load_cases(st)
    return info | {"root": root, "lm": lm, "results": results, "cases": cases}


def _plain(folder: Path | str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _token_logps(model: Any, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log p(completion_t | prompt, completion_<t) for every completion token, from plain logits (float64)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].double()
    lp = torch.log_softmax(logits, dim=-1)[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
    return lp[len(prompt) - 1:]


def _examples(run: dict[str, Any]) -> dict[str, Any]:
    from failtrace.failures.generation import eos_token_ids
    from failtrace.models.fingerprint import model_fingerprint
    from failtrace.training.data import load_examples

    lm = run["lm"]
    with open_store(run["store"], read_only=True) as st:
        ex, _ = load_examples(st, lm.tokenizer, eos_token_ids(lm.model, lm.tokenizer), model_fingerprint(lm))
    return {e.case_id: e for e in ex}


def test_a_pair_rejected_in_review_is_not_trained_on(run: dict[str, Any], tmp_path: Path) -> None:
    """finetune reads its examples as export-dpo does: a pair whose newest review decision is reject is left out,
    and counted."""
    from fastapi.testclient import TestClient

    from failtrace.failures.generation import eos_token_ids
    from failtrace.models.fingerprint import model_fingerprint
    from failtrace.serve.app import create_app
    from failtrace.training.data import load_examples

    store = tmp_path / "reviewed.duckdb"
    store.write_bytes(Path(run["store"]).read_bytes())
    every = _examples(run)
    gone = sorted(every)[0]
    with open_store(store, read_only=True) as st:
        pair_run, item = st.con.execute("SELECT pair_run_id, item_id FROM cases WHERE case_id = ?", [gone]).fetchone()
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        assert c.post("/api/reviews", json={"pair_run_id": pair_run, "item_id": item, "decision": "reject",
                                            "comment": "wrong contrast"}).status_code == 201
    lm = run["lm"]
    with open_store(store, read_only=True) as st:
        kept, rejected = load_examples(st, lm.tokenizer, eos_token_ids(lm.model, lm.tokenizer), model_fingerprint(lm))
    assert rejected == 1 and sorted(e.case_id for e in kept) == sorted(set(every) - {gone})


def test_checkpoints_are_plain_transformers_folders_with_metadata(run: dict[str, Any]) -> None:
    from failtrace.models.fingerprint import model_fingerprint

    base = _plain(run["root"] / "model0")
    examples = _examples(run)
    for method, res in run["results"].items():
        assert [p.name for p in res.checkpoints] == ["step-0", "step-3", "step-6"]
        for folder in res.checkpoints:
            meta = read_metadata(folder)
            assert meta["method"] == method and meta["step"] == int(folder.name[5:])
            assert meta["base_model_fingerprint"] == model_fingerprint(run["lm"])
            assert sorted(meta["trained_case_ids"] + meta["held_out_case_ids"]) == sorted(examples)
            assert not set(meta["trained_case_ids"]) & set(meta["held_out_case_ids"])
            assert len(meta["held_out_case_ids"]) == math.floor(0.3 * len(examples) + 0.5) >= 1
        step0 = _plain(res.checkpoints[0]).state_dict()
        assert all(torch.equal(v, step0[k]) for k, v in base.state_dict().items())  # step 0 = untrained
        last = _plain(res.checkpoints[-1]).state_dict()
        assert max(float((v - step0[k]).abs().max()) for k, v in last.items()) > 1e-4  # training moved weights
        assert len(read_metadata(res.checkpoints[-1])["loss_history"]) == STEPS


def test_settings_refuse_a_seed_torch_cannot_take() -> None:
    """The API checks what the CLI checks (trl's set_seed crashed after step-0 was written)."""
    with pytest.raises(FailtraceError, match="--seed"):
        FinetuneSettings(method="sft", seed=2**31).check()
    FinetuneSettings(method="sft", seed=2**31 - 1).check()


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_a_tail_weight_is_refused_where_no_token_is_weighted(method: str) -> None:
    with pytest.raises(FailtraceError, match="token-dpo only"):
        FinetuneSettings(method=method, tail_weight=0.5).check()
    FinetuneSettings(method=method).check()
    FinetuneSettings(method="token-dpo", tail_weight=0.5).check()


def test_split_is_seeded_and_fixed() -> None:
    ids = [f"case{i}" for i in range(10)]
    trained, held = split_cases(ids, 0.3, seed=7)
    want = sorted(ids, key=lambda c: hashlib.sha256(f"7:{c}".encode()).hexdigest())[:3]
    assert sorted(held) == sorted(want) and sorted(trained + held) == sorted(ids)
    assert split_cases(list(reversed(ids)), 0.3, seed=7)[1] == [c for c in reversed(ids) if c in held]
    assert split_cases(["a", "b"], 0.9, seed=0)[0]  # at least one case stays trained
    assert split_cases(ids, 0.3, seed=7, items=ids) == (trained, held)  # one case per item: the same split


def test_an_items_cases_stay_on_one_side_of_the_split() -> None:
    """Two pair runs over one store give two cases of an item: split as case ids, finetune trained on an item and
    held it out too. Each item's cases now go together, ranked by their smallest hash."""
    ids = [f"case{i}" for i in range(12)]
    items = [f"item{i // 2}" for i in range(12)]  # two cases per item
    for seed in range(20):
        trained, held = split_cases(ids, 0.3, seed=seed, items=items)
        side = {items[ids.index(c)]: "t" for c in trained} | {items[ids.index(c)]: "h" for c in held}
        assert not {items[ids.index(c)] for c in trained} & {items[ids.index(c)] for c in held}, seed
        assert sum(v == "h" for v in side.values()) == 2 and sorted(trained + held) == sorted(ids)  # round(0.3 * 6)
        rank = sorted(set(items), key=lambda it: min(hashlib.sha256(f"{seed}:{c}".encode()).hexdigest()
                                                     for c, i in zip(ids, items) if i == it))
        assert {items[ids.index(c)] for c in held} == set(rank[:2])


def test_sft_lowers_the_completion_nll_on_trained_cases(run: dict[str, Any]) -> None:
    res, examples = run["results"]["sft"], _examples(run)
    before, after = _plain(res.checkpoints[0]), _plain(res.checkpoints[-1])

    def nll(model: Any) -> float:
        lps = [_token_logps(model, examples[c].prompt_ids, examples[c].chosen_ids) for c in res.trained]
        return float(-torch.cat(lps).mean())

    assert nll(after) < nll(before) - 0.05


@pytest.mark.parametrize("method", ["dpo", "token-dpo"])
def test_dpo_lowers_its_loss_on_trained_cases(run: dict[str, Any], method: str) -> None:
    """L = mean −log σ(β(s_w(y⁺) − s_w(y⁻))) with the step-0 model as reference: log 2 at step 0, lower after."""
    res, examples = run["results"][method], _examples(run)
    ref, pol = _plain(res.checkpoints[0]), _plain(res.checkpoints[-1])

    def loss(e: Any) -> float:
        ones = method == "dpo"
        wc = torch.ones(len(e.chosen_ids)) if ones else torch.tensor(e.chosen_weights)
        wr = torch.ones(len(e.rejected_ids)) if ones else torch.tensor(e.rejected_weights)
        sc = ((_token_logps(pol, e.prompt_ids, e.chosen_ids) - _token_logps(ref, e.prompt_ids, e.chosen_ids))
              * wc.double()).sum()
        sr = ((_token_logps(pol, e.prompt_ids, e.rejected_ids) - _token_logps(ref, e.prompt_ids, e.rejected_ids))
              * wr.double()).sum()
        return float(-torch.nn.functional.logsigmoid(0.1 * (sc - sr)))

    mean = sum(loss(examples[c]) for c in res.trained) / len(res.trained)
    assert mean < math.log(2) - 0.01


def _weighted_batch() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(3)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 250, (n,), generator=g).tolist()

    rows = []
    for n_prompt, n_c, n_r in ((5, 4, 6), (7, 3, 3)):
        rows.append({"prompt_ids": ids(n_prompt), "chosen_ids": ids(n_c), "rejected_ids": ids(n_r),
                     "chosen_weights": torch.rand(n_c, generator=g).tolist(),
                     "rejected_weights": torch.rand(n_r, generator=g).tolist()})
    return rows


def _dpo_trainer(kind: str, rows: list[dict[str, Any]], tmp: Path, models: tuple[Any, Any] | None = None,
                 tokenizer: Any = None) -> Any:
    from datasets import Dataset
    from trl import DPOConfig

    from failtrace.training.weighted_dpo import (
        PretokenizedDPOTrainer,
        TokenWeightedDPOTrainer,
        WeightedPreferenceCollator,
    )

    policy, ref = models or (toy_model(seed=0), toy_model(seed=1))  # a policy away from the reference: loss != log 2
    cfg = DPOConfig(output_dir=str(tmp), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to=[],
                    beta=0.1, max_length=None, per_device_train_batch_size=2)
    kwargs = dict(model=policy, ref_model=ref, args=cfg, processing_class=tokenizer or toy_tokenizer(),
                  train_dataset=Dataset.from_list(rows))
    if kind == "token-dpo":
        return TokenWeightedDPOTrainer(**kwargs, data_collator=WeightedPreferenceCollator(pad_token_id=0)), policy, ref
    return PretokenizedDPOTrainer(**kwargs), policy, ref


def test_token_dpo_loss_equals_the_explicit_weighted_formula(tmp_path: Path) -> None:
    rows = _weighted_batch()
    trainer, policy, ref = _dpo_trainer("token-dpo", rows, tmp_path / "w")
    batch = trainer.data_collator(rows)
    got = float(trainer.compute_loss(trainer.model, batch))
    pol_ref = (toy_model(seed=0), toy_model(seed=1))  # fresh, unpatched copies of the same weights
    losses, plain = [], []
    for r in rows:
        terms = []
        for side in ("chosen", "rejected"):
            ratio = (_token_logps(pol_ref[0], r["prompt_ids"], r[f"{side}_ids"])
                     - _token_logps(pol_ref[1], r["prompt_ids"], r[f"{side}_ids"]))
            terms.append((ratio * torch.tensor(r[f"{side}_weights"], dtype=torch.float64)).sum())
            terms.append(ratio.sum())
        losses.append(-torch.nn.functional.logsigmoid(0.1 * (terms[0] - terms[2])))
        plain.append(-torch.nn.functional.logsigmoid(0.1 * (terms[1] - terms[3])))
    want, want_plain = float(torch.stack(losses).mean()), float(torch.stack(plain).mean())
    assert abs(got - want) < 1e-5
    assert abs(want - want_plain) > 1e-3  # the weights matter on this batch
    dpo, _, _ = _dpo_trainer("dpo", rows, tmp_path / "p")  # and trl's own unweighted loss is the plain formula
    assert abs(float(dpo.compute_loss(dpo.model, dpo.data_collator(rows))) - want_plain) < 1e-5


@pytest.mark.model
def test_token_dpo_formula_on_the_bundled_model(bundled: Any, tmp_path: Path) -> None:
    """The same check on the real SmolLM2 (tied input/output embeddings, trl's fused head on its real vocabulary)."""
    import copy

    rows = _weighted_batch()
    policy = copy.deepcopy(bundled.model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    trainer, _, _ = _dpo_trainer("token-dpo", rows, tmp_path, (policy, copy.deepcopy(bundled.model)),
                                 copy.deepcopy(bundled.tokenizer))
    got = float(trainer.compute_loss(trainer.model, trainer.data_collator(rows)))
    plain_policy = copy.deepcopy(bundled.model)  # unpatched, the same perturbation
    with torch.no_grad():
        for p in plain_policy.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    losses = []
    for r in rows:
        s = [((_token_logps(plain_policy, r["prompt_ids"], r[f"{side}_ids"])
               - _token_logps(bundled.model, r["prompt_ids"], r[f"{side}_ids"]))
              * torch.tensor(r[f"{side}_weights"], dtype=torch.float64)).sum() for side in ("chosen", "rejected")]
        losses.append(-torch.nn.functional.logsigmoid(0.1 * (s[0] - s[1])))
    want = float(torch.stack(losses).mean())
    assert abs(want - math.log(2)) > 1e-3 and abs(got - want) < 1e-4


def test_compare_checkpoints_rows_step_split_and_plain_delta(run: dict[str, Any]) -> None:
    from failtrace.training.compare import compare_checkpoints

    res = run["results"]["dpo"]
    folders = [str(p) for p in res.checkpoints]
    with open_store(run["store"]) as st:
        summary = compare_checkpoints(st, folders, progress=False)
        rows = [r for r in load_comparisons(st) if r["model"] in folders]
    cases = {c.case_id: c for c in run["cases"]}
    assert len(rows) == len(folders) * len(cases) and summary.written == {f: len(cases) for f in folders}
    for folder in folders:
        plain, meta = _plain(folder), read_metadata(folder)
        for r in (r for r in rows if r["model"] == folder):
            assert r["model_fingerprint"] == summary.fingerprints[folder] and r["step"] == meta["step"]
            assert r["split"] == ("trained" if r["case_id"] in res.trained else "held-out")
            ids = r["token_ids"]
            with torch.no_grad():
                row = plain(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].double()
            assert abs(float(row[r["target_id"]] - row[r["contrast_id"]]) - r["delta_logit"]) < 1e-3
            if meta["step"] == 0:  # the untrained checkpoint reproduces the case
                assert abs(r["delta_logit"] - cases[r["case_id"]].delta_logit) < 1e-4
            assert abs(sum(r["segment_relevance"].values()) - sum(r["input_relevance"])) < 1e-9
    assert len(set(summary.fingerprints.values())) == len(folders)
    # compare's table: per split, corrected (Δℓ < 0) and how many of those the checkpoint would write as the contrast
    # (its plain argmax, recomputed here), so a trained model's "correction" is not claimed where it writes another
    from failtrace.cli.compare import checkpoint_table

    table, tally = checkpoint_table(rows, folders, summary), [0, 0]
    for folder, cells in zip(folders, table):
        plain = _plain(folder)
        for split, at in (("trained", 2), ("held-out", 6)):
            part = [r for r in rows if r["model"] == folder and r["split"] == split]
            fixed = [r for r in part if r["delta_logit"] < 0]
            with torch.no_grad():
                wrote = sum(int(plain(input_ids=torch.tensor([r["token_ids"]]), use_cache=False).logits[0, -1]
                                .argmax()) == r["contrast_id"] for r in fixed)
            assert cells[at:at + 4][0::2] == [str(len(part)), str(len(fixed))], (folder, split, cells)
            assert cells[at + 3] == str(wrote), (folder, split, cells)
            tally = [tally[0] + len(fixed), tally[1] + wrote]
    assert 0 < tally[1] < tally[0]  # both kinds of corrected case occur, so a swapped count would fail
    # every step's rows name the one run (the report draws it as one series); another run's steps name another
    from failtrace.training.checkpoints import training_run_id

    assert {r["training_run"] for r in rows} == {training_run_id(read_metadata(f)) for f in folders}
    assert len({r["training_run"] for r in rows}) == 1
    other = read_metadata(run["results"]["sft"].checkpoints[-1])
    assert training_run_id(other) != rows[0]["training_run"]


def test_a_rerun_records_the_run_on_rows_stored_before_runs_were(run: dict[str, Any], tmp_path: Path) -> None:
    """Rows compared before training_run existed read NULL; the same checkpoints compared again after the upgrade
    were skipped (stored) and split the run into two series. The rerun records the run on them."""
    from failtrace.report import compare_data as D
    from failtrace.training.checkpoints import training_run_id
    from failtrace.training.compare import compare_checkpoints

    folders = [str(p) for p in run["results"]["dpo"].checkpoints]
    store = tmp_path / "s.duckdb"
    shutil.copy(run["store"], store)
    with open_store(store) as st:
        st.con.execute("DROP TABLE IF EXISTS comparisons")  # earlier tests of this module compared these folders
        compare_checkpoints(st, folders[:2], progress=False)
        st.con.execute("UPDATE comparisons SET training_run = NULL")  # as an older failtrace stored them
        summary = compare_checkpoints(st, folders, progress=False)
        rows = [r for r in load_comparisons(st) if r["step"] is not None]
    n = len(run["cases"])
    assert summary.skipped == 2 * n and sum(summary.written.values()) == (len(folders) - 2) * n
    assert {r["training_run"] for r in rows} == {training_run_id(read_metadata(folders[0]))}
    assert {p["series"] for p in D.checkpoint_rows(rows)} == {D.series_of(folders[0])}  # one series


def test_a_rerun_counts_each_stored_row_once(run: dict[str, Any], tmp_path: Path) -> None:
    """Two runs' step-0 folders hold the same weights, so they share one model's rows. A rerun said "10 rows stored
    before" where the store held 5: it counted per folder. Now it counts the rows it found stored."""
    from failtrace.training.compare import compare_checkpoints

    folders = [str(run["results"][m].checkpoints[0]) for m in ("dpo", "sft")]
    store = tmp_path / "s.duckdb"
    shutil.copy(run["store"], store)
    with open_store(store) as st:
        st.con.execute("DROP TABLE IF EXISTS comparisons")
        first = compare_checkpoints(st, folders, progress=False)
        again = compare_checkpoints(st, folders, progress=False)
        stored = st.con.execute("SELECT count(*) FROM comparisons WHERE step IS NOT NULL").fetchone()[0]
    n = len(run["cases"])
    assert len(set(first.fingerprints.values())) == 1  # the same weights
    assert first.skipped == 0 and sum(first.written.values()) == n == stored
    assert again.skipped == stored and sum(again.written.values()) == 0


def test_a_trained_checkpoint_is_an_ordinary_model_folder(run: dict[str, Any]) -> None:
    """A trained step's config said use_cache false (trl's training setting: it generated without its KV cache), its
    weights were 0600 (safetensors' own mode: no one else on the machine could load them), and its metadata named
    the store as typed (a relative path means nothing from another folder)."""
    from failtrace.training.checkpoints import read_metadata

    umask = os.umask(0)
    os.umask(umask)
    base = json.loads((Path(run["root"]) / "model0" / "config.json").read_text()).get("use_cache", True)
    for method, result in run["results"].items():
        for folder in result.checkpoints:
            assert json.loads((folder / "config.json").read_text()).get("use_cache", True) == base is True, folder
            modes = {f.name: oct(f.stat().st_mode & 0o777) for f in folder.iterdir() if f.is_file()}
            assert set(modes.values()) == {oct(0o666 & ~umask)}, (method, modes)
            assert read_metadata(folder)["store"] == str(Path(run["store"]).absolute())
    # the base's own setting is what a checkpoint keeps (a base saved without its cache stays so), and the model
    # being trained keeps its training setting
    from failtrace.training.checkpoints import save_checkpoint

    model = run["lm"].model
    live = model.config.use_cache
    meta = read_metadata(run["results"]["sft"].checkpoints[0])
    saved = save_checkpoint(model, run["lm"].tokenizer, Path(run["root"]) / "cache-off", 0, meta, use_cache=not live)
    assert json.loads((saved / "config.json").read_text())["use_cache"] is (not live)
    assert model.config.use_cache is live


def test_a_folder_overwritten_in_place_is_a_new_model(run: dict[str, Any], tmp_path: Path) -> None:
    from failtrace.training.compare import compare_checkpoints

    out = tmp_path / "ck"
    shutil.copytree(run["results"]["sft"].out, out)
    folder = str(out / "step-6")
    with open_store(run["store"]) as st:
        first = compare_checkpoints(st, [folder], progress=False)
    from failtrace.training.checkpoints import save_checkpoint

    meta = json.loads((out / "step-6" / "failtrace_checkpoint.json").read_text())
    save_checkpoint(run["lm"].model, run["lm"].tokenizer, out, 99, meta)  # a later step of the same older run
    with open_store(run["store"], read_only=True) as st:  # overwrite ck/ with another run (another lr)
        again = finetune(st, run["lm"], out, FinetuneSettings(method="sft", steps=STEPS, save_every=EVERY, lr=LR / 10))
    # the older run's steps are gone, the one the new run did not write too (compare --checkpoints ck/step-* would
    # mix two runs); the others were set aside when it started and removed when it finished
    assert again.replaced == ["step-0", "step-3", "step-6", "step-99"] and not (out / "step-99").exists()
    assert {p.name for p in out.glob("step-*")} == {p.name for p in again.checkpoints}
    with open_store(run["store"]) as st:
        second = compare_checkpoints(st, [folder], progress=False)
        rows = [r for r in load_comparisons(st) if r["model"] == folder]
    assert first.fingerprints[folder] != second.fingerprints[folder]
    assert second.written[folder] == len(run["cases"]) and second.skipped == 0
    assert {r["model_fingerprint"] for r in rows} == {first.fingerprints[folder], second.fingerprints[folder]}
    plain = _plain(folder)  # the new rows are the new weights' numbers
    for r in (r for r in rows if r["model_fingerprint"] == second.fingerprints[folder]):
        with torch.no_grad():
            row = plain(input_ids=torch.tensor([r["token_ids"]]), use_cache=False).logits[0, -1].double()
        assert abs(float(row[r["target_id"]] - row[r["contrast_id"]]) - r["delta_logit"]) < 1e-3


def test_cli_finetune_compare_and_export(run: dict[str, Any], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from failtrace.cli import main
    from failtrace.models.fingerprint import model_fingerprint

    store, model = str(run["store"]), str(run["root"] / "model0")
    out = tmp_path / "ck"
    assert main(["finetune", "--store", store, "--model", model, "--method", "token-dpo", "--steps", "2",
                 "--save-every", "1", "--out", str(out), "--lr", "1e-3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "token-dpo:" in text and "3 checkpoints" in text
    assert main(["finetune", "--store", store, "--model", model, "--method", "sft", "--steps", "2",
                 "--save-every", "2", "--out", str(tmp_path / "bar")]) == 0  # with the progress bar
    shown = capsys.readouterr()
    assert "{'loss'" not in shown.out + shown.err and "'loss':" not in shown.out + shown.err  # no log dict per step
    losses = [ln for ln in text.splitlines() if ln.strip().startswith("step ")]
    assert [ln.split()[1] for ln in losses] == ["1", "2"]  # each logged step once (the last was printed twice)
    mask = os.umask(0)
    os.umask(mask)
    assert all((out / s).stat().st_mode & 0o777 == 0o777 & ~mask for s in ("step-0", "step-1", "step-2"))
    assert main(["compare", "--store", store, "--checkpoints", str(out / "step-0"), str(out / "step-2"),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "held-out" in text and "step-2" in text
    assert main(["export", "--store", store, "--format", "jsonl", "--out", str(tmp_path / "exp")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "exp" / "comparisons.jsonl").read_text().splitlines()]
    # rows are keyed by content: step-0 is the untrained model, already scored under another run's step-0 folder
    fps = {model_fingerprint(load_model(str(out / s), progress=False)): s for s in ("step-0", "step-2")}
    mine = [r for r in lines if r["model_fingerprint"] in fps]
    assert len(mine) == 2 * len(run["cases"])
    assert {r["step"] for r in mine} == {0, 2} and {r["split"] for r in mine} == {"trained", "held-out"}
    assert all(r["model"] == str(out / "step-2") for r in mine if fps[r["model_fingerprint"]] == "step-2")
    assert main(["compare", "--store", store, "--checkpoints", str(out / "step-0"), "--models", model]) == 2
    assert "not both" in capsys.readouterr().err
    other = str(save_toy_model(tmp_path / "other", seed=1))  # a model without cases here: named, and who has them
    assert main(["finetune", "--store", store, "--model", other, "--method", "sft", "--steps", "1",
                 "--out", str(tmp_path / "ck2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"no cases of model {other!r}" in err and f"its cases are of {model}:" in err
    renamed = tmp_path / "renamed.duckdb"  # cases under the other model's name, from other weights
    shutil.copy(store, renamed)
    with open_store(renamed) as st:
        st.con.execute("UPDATE cases SET model = ?", [other])
    assert main(["finetune", "--store", str(renamed), "--model", other, "--method", "sft", "--steps", "1",
                 "--out", str(tmp_path / "ck3"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the cases under that name were built from other weights" in err and "its cases are of" not in err


def test_finetune_never_replaces_what_it_did_not_write(run: dict[str, Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A step-N that is not a failtrace checkpoint (a user's folder, a file, the store's own folder) is refused
    before training; a checkpoint of an earlier run is replaced."""
    from failtrace.cli import main

    model = str(run["root"] / "model0")
    args = ["--model", model, "--method", "sft", "--steps", "1", "--no-progress"]
    user = tmp_path / "a" / "step-0"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    single = tmp_path / "b"
    single.mkdir()
    (single / "step-1").write_text("a file")
    inside = tmp_path / "c" / "step-0"  # a real checkpoint folder that also holds the store
    assert main(["finetune", "--store", str(run["store"]), *args, "--out", str(tmp_path / "c")]) == 0
    shutil.copy(run["store"], inside / "runs.duckdb")
    hidden = tmp_path / "d" / ".resume"  # someone's own .resume folder (finetune's resume state has identity.json)
    hidden.mkdir(parents=True)
    (hidden / "todo.txt").write_text("mine too")
    capsys.readouterr()
    for out, store, says in ((user.parent, run["store"], "step-0 is a folder without failtrace_checkpoint.json"),
                             (single, run["store"], "step-1 is a file"),
                             (inside.parent, inside / "runs.duckdb", "lies in"),
                             (hidden.parent, run["store"], ".resume is not finetune's resume state"),
                             # a run saved into a checkpoint: lost when a run into the checkpoint's --out replaces it
                             (inside, run["store"], f"--out {inside} is the checkpoint {inside.resolve()}"),
                             (inside / "more", run["store"], f"is inside the checkpoint {inside.resolve()}")):
        assert main(["finetune", "--store", str(store), *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1
    assert (user / "notes.txt").read_text() == "mine" and (single / "step-1").read_text() == "a file"
    assert (hidden / "todo.txt").read_text() == "mine too" and not list(hidden.parent.glob("step-*"))
    assert (inside / "runs.duckdb").exists() and not (inside / "more").exists()
    first = (inside / "failtrace_checkpoint.json").stat().st_mtime_ns
    assert main(["finetune", "--store", str(run["store"]), *args, "--out", str(inside.parent)]) == 0
    assert (inside / "failtrace_checkpoint.json").stat().st_mtime_ns != first  # our own checkpoint: replaced


@pytest.mark.parametrize(("field", "value", "says"), [
    ("step", "x", "step 'x' is not a whole number"), ("step", -5, "step -5 is not a whole number"),
    ("step", True, "step True"), ("held_out_case_ids", 5, "held_out_case_ids is not a list"),
    ("trained_case_ids", [1, 2], "trained_case_ids is not a list of case ids"),
])
def test_damaged_checkpoint_metadata_is_named(run: dict[str, Any], tmp_path: Path, field: str, value: Any,
                                              says: str) -> None:
    folder = tmp_path / "ck"
    shutil.copytree(run["results"]["sft"].checkpoints[0], folder)
    meta = json.loads((folder / "failtrace_checkpoint.json").read_text())
    (folder / "failtrace_checkpoint.json").write_text(json.dumps({**meta, field: value}))
    with pytest.raises(FailtraceError, match=re.escape(says)):
        read_metadata(folder)


def test_checkpoint_metadata_missing_one_key_names_that_key(run: dict[str, Any], tmp_path: Path) -> None:
    """It named all five keys whatever was missing."""
    folder = tmp_path / "ck"
    shutil.copytree(run["results"]["sft"].checkpoints[0], folder)
    meta = json.loads((folder / "failtrace_checkpoint.json").read_text())
    del meta["held_out_case_ids"]
    (folder / "failtrace_checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(FailtraceError, match=r"failtrace_checkpoint\.json lacks held_out_case_ids; the checkpoint"):
        read_metadata(folder)


def test_a_cut_checkpoint_later_in_the_list_fails_before_any_row(run: dict[str, Any], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """compare --checkpoints GOOD CUT: the cut weights were found at CUT's turn, after GOOD's rows were committed."""
    from failtrace.cli import main

    good, cut = tmp_path / "good", tmp_path / "cut"
    shutil.copytree(run["results"]["sft"].checkpoints[-1], good)
    shutil.copytree(run["results"]["sft"].checkpoints[0], cut)
    weights = next(cut.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1000])
    store = tmp_path / "s.duckdb"
    shutil.copy(run["store"], store)
    with open_store(store) as st:  # earlier tests compared GOOD's weights: without this it had no row to write
        st.con.execute("DROP TABLE IF EXISTS comparisons")
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    assert main(["compare", "--store", str(store), "--checkpoints", str(good), str(cut), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: checkpoint {cut}: {weights.name} cannot be read"), err
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before


def _ckpt_counts(text: str, folder: str) -> tuple[int, int]:
    """(trained, held-out) case counts of ``folder``'s line in compare --checkpoints' printed table."""
    import re  # columns are two or more spaces apart; a cell may hold single spaces ("1 of 2 recorded")

    cells = next(re.split(r"\s{2,}", ln.strip()) for ln in text.splitlines() if ln.startswith(folder + " "))
    return int(cells[2]), int(cells[6])  # folder, step, trained, mean Δℓ, corrected, writes, held-out


def test_model_rows_and_checkpoint_rows_never_stand_in_for_each_other(run: dict[str, Any], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The same weights as a --models model and as a checkpoint (every run's step 0 is the base model): each mode
    writes and counts its own rows, in either order; a step-0 row stored for one run is counted in the split of the
    run whose folder is given; the printed counts cover this call's cases only."""
    from failtrace.cli import main

    model, dpo = str(run["root"] / "model0"), run["results"]["dpo"]
    n = len(run["cases"])
    store = tmp_path / "s.duckdb"
    shutil.copy(run["store"], store)
    with open_store(store) as st:
        st.con.execute("DROP TABLE IF EXISTS comparisons")
        other = finetune(st, run["lm"], tmp_path / "other", FinetuneSettings(
            method="sft", steps=2, save_every=2, lr=LR, held_out=0.7, seed=1))
    step0, step6 = str(dpo.checkpoints[0]), str(dpo.checkpoints[-1])
    # checkpoints first, then the same base model as the reference of --models: its reference rows are written
    # given last step first (as a shell glob gives step-10 before step-2): the rows still read by step
    assert main(["compare", "-s", str(store), "--checkpoints", step6, step0, "--no-progress"]) == 0
    trained = sum(c.case_id in dpo.trained for c in run["cases"])
    text = capsys.readouterr().out
    assert [ln.split()[0] for ln in text.splitlines() if ln.split()[:1] in ([step0], [step6])] == [step0, step6]
    assert _ckpt_counts(text, step0) == _ckpt_counts(text, step6) == (trained, n - trained)
    assert main(["compare", "-s", str(store), "--models", model, step6, "--no-progress"]) == 0
    text = capsys.readouterr().out
    lines = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]] for ln in text.splitlines()
             if ln.count("│") >= 3 and (model in ln or step6 in ln)}
    assert lines[model][0] == lines[step6][0] == str(n)  # rows: the reference's and the checkpoint's own
    with open_store(store, read_only=True) as st:
        kinds = st.con.execute("SELECT step IS NULL, count(*) FROM comparisons GROUP BY 1 ORDER BY 1").fetchall()
    assert kinds == [(False, 2 * n), (True, 2 * n)]
    # another run (another seed and held-out share): its step 0 is the same model, counted in ITS split
    o0, o2 = str(other.checkpoints[0]), str(other.checkpoints[-1])
    assert main(["compare", "-s", str(store), "--checkpoints", o0, o2, "--limit", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    first3 = [c.case_id for c in run["cases"]][:3]
    want = (sum(c in other.trained for c in first3), sum(c not in other.trained for c in first3))
    assert _ckpt_counts(text, o0) == _ckpt_counts(text, o2) == want and want != (0, 0)
    assert text.startswith("3 cases on 2 checkpoints") and "note:" not in text  # one run: no note
    assert main(["compare", "-s", str(store), "--checkpoints", step6, o2, "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "note: these checkpoints come from 2 different finetune runs" in text and "dpo, sft" in text


def test_cases_the_run_never_saw_are_counted_in_a_note(run: dict[str, Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A case outside both splits (here: its pair rejected in review before training) got a row without a split,
    and the table's columns silently summed to fewer cases than the line above them counted."""
    from fastapi.testclient import TestClient

    from failtrace.cli import main
    from failtrace.serve.app import create_app

    store = tmp_path / "s.duckdb"
    shutil.copy(run["store"], store)
    gone = run["cases"][0]
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        assert c.post("/api/reviews", json={"pair_run_id": gone.pair_run_id, "item_id": gone.item_id,
                                            "decision": "reject", "comment": "no"}).status_code == 201
    with open_store(store, read_only=True) as st:
        result = finetune(st, run["lm"], tmp_path / "ck", FinetuneSettings(method="sft", steps=2, save_every=2, lr=LR))
    assert result.rejected == 1 and gone.case_id not in result.trained + result.held_out
    assert main(["compare", "-s", str(store), "--checkpoints", str(result.checkpoints[0]), "--no-progress"]) == 0
    text = capsys.readouterr().out
    n = len(run["cases"])
    assert f"note: 1 case of the {n} is in neither split of the run (not trained on" in text
    assert sum(_ckpt_counts(text, str(result.checkpoints[0]))) == n - 1


def test_checkpoints_twice_or_with_another_vocabulary_leave_the_store_unchanged(
        run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    from failtrace.cli import main
    from failtrace_testkit.toy import toy_tokenizer

    dpo = run["results"]["dpo"]
    store = tmp_path / "s.duckdb"
    shutil.copy(run["store"], store)
    fake = tmp_path / "fake"
    shutil.copytree(dpo.checkpoints[-1], fake)
    tok = toy_tokenizer()
    tok.add_tokens(["<extra-token>"])
    tok.save_pretrained(fake)
    other = tmp_path / "other-base"  # a checkpoint whose metadata names another base model
    shutil.copytree(dpo.checkpoints[-1], other)
    meta = json.loads((other / "failtrace_checkpoint.json").read_text())
    meta["base_model_fingerprint"] = "0" * 64
    (other / "failtrace_checkpoint.json").write_text(json.dumps(meta))
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    step0 = str(dpo.checkpoints[0])
    for args, words in ((["--checkpoints", step0, str(fake)], "another vocabulary"),
                        (["--checkpoints", step0, step0 + "/"], f"names {step0 + '/'!r} twice (as {step0!r} too)"),
                        (["--checkpoints", step0, step0], f"names {step0!r} twice; "),
                        (["--checkpoints", step0, str(other)], f"({other} is not from {step0}'s)")):
        assert main(["compare", "-s", str(store), *args, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and "Traceback" not in err
        assert hashlib.sha256(store.read_bytes()).hexdigest() == before  # refused before any row is written


def _steps_callback(stop_after: int | None = None, seen: list[int] | None = None) -> Any:
    """A trainer callback that records each finished step in ``seen`` and stops the run like Ctrl-C (KeyboardInterrupt)
    before step ``stop_after + 1``."""
    from transformers import TrainerCallback

    class Steps(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if stop_after is not None and state.global_step >= stop_after:
                raise KeyboardInterrupt
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if seen is not None:
                seen.append(state.global_step)
            return control

    return Steps()


@contextlib.contextmanager
def _with_callback(monkeypatch: pytest.MonkeyPatch, callback: Any) -> Iterator[None]:
    """Inside: every trainer finetune builds also runs ``callback``."""
    import failtrace.training.finetune as ft

    make = ft._trainer

    def build(*args: Any, **kwargs: Any) -> Any:
        trainer = make(*args, **kwargs)
        trainer.add_callback(callback)
        return trainer

    monkeypatch.setattr(ft, "_trainer", build)
    try:
        yield
    finally:
        monkeypatch.setattr(ft, "_trainer", make)


def _settings(**changes: Any) -> FinetuneSettings:
    return FinetuneSettings(**{"method": "sft", "steps": STEPS, "save_every": EVERY, "lr": LR, "held_out": 0.3,
                               "seed": 0, **changes})


def _stopped_after_step_4(run: dict[str, Any], out: Path, settings: FinetuneSettings,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    with _with_callback(monkeypatch, _steps_callback(stop_after=4)), pytest.raises(KeyboardInterrupt), \
            open_store(run["store"], read_only=True) as st:
        finetune(st, run["lm"], out, settings)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("method", ["sft", "token-dpo"])
def test_an_interrupted_finetune_resumes_and_ends_where_an_uninterrupted_one_does(
        run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """Stopped after step 4 (its newest saved step is 3), a rerun with the same settings continues from step 3: the
    step-6 weights and the loss history equal the uninterrupted run's (the module's run), and .resume is gone."""
    out, settings = tmp_path / method, _settings(method=method)
    _stopped_after_step_4(run, out, settings, monkeypatch)
    assert sorted(p.name for p in out.glob("step-*")) == ["step-0", "step-3"]
    assert sorted(p.name for p in (out / ".resume").glob("checkpoint-*")) == ["checkpoint-3"]
    done: list[int] = []
    with _with_callback(monkeypatch, _steps_callback(seen=done)), open_store(run["store"], read_only=True) as st:
        again = finetune(st, run["lm"], out, settings)
    ref = run["results"][method]
    assert done == [4, 5, 6]  # steps 1-3 were not trained again: weights, optimiser and RNG came from step 3
    assert again.resumed_from == 3 and [p.name for p in again.checkpoints] == ["step-0", "step-3", "step-6"]
    assert again.losses == ref.losses and again.trained == ref.trained
    for step in (3, 6):
        got, want = _weights(out / f"step-{step}"), _weights(ref.out / f"step-{step}")
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), step
    assert read_metadata(out / "step-6")["loss_history"] == read_metadata(ref.out / "step-6")["loss_history"]
    assert not (out / ".resume").exists()


def test_a_rerun_with_other_settings_starts_again_from_step_zero(run: dict[str, Any], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted run's state is only for the same identity: with another learning rate the rerun trains from
    step 0, and its step-3 weights differ from the interrupted run's."""
    out = tmp_path / "other"
    _stopped_after_step_4(run, out, _settings(), monkeypatch)
    before = _weights(out / "step-3")
    with open_store(run["store"], read_only=True) as st:
        other = finetune(st, run["lm"], out, _settings(lr=LR / 2))
    assert other.resumed_from is None and len(other.losses) == STEPS
    assert not all(torch.equal(before[k], v) for k, v in _weights(out / "step-3").items())


def test_cli_rerun_says_where_it_resumed(run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`failtrace finetune`, interrupted after step 4 (exit 130, the line says how to resume), then the same command:
    it continues from step 3 and says so."""
    from failtrace.cli import main

    out = tmp_path / "ck"
    args = ["finetune", "--store", str(run["store"]), "--model", str(run["root"] / "model0"), "--method", "sft",
            "--steps", str(STEPS), "--save-every", str(EVERY), "--lr", str(LR), "--out", str(out), "--no-progress"]
    with _with_callback(monkeypatch, _steps_callback(stop_after=4)):
        assert main(args) == 130
    assert "rerun the same command to resume from the last saved step" in capsys.readouterr().err
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "3 checkpoints" in text and "resumed from step 3" in text
    assert [ln.split()[1] for ln in text.splitlines() if ln.strip().startswith("step ")] == ["1", "2", "3", "4",
                                                                                            "5", "6"]


def test_without_resume_state_nothing_is_kept_and_a_rerun_starts_over(run: dict[str, Any], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--no-resume-state: no OUT/.resume at any point; after an interruption the rerun trains all steps again."""
    out, settings = tmp_path / "light", _settings(resume_state=False)
    _stopped_after_step_4(run, out, settings, monkeypatch)
    assert sorted(p.name for p in out.iterdir()) == ["step-0", "step-3"]
    with open_store(run["store"], read_only=True) as st, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        again = finetune(st, run["lm"], out, settings)
    assert not [w for w in seen if "gradient_checkpointing" in str(w.message)]  # transformers 5's deprecation note
    assert again.resumed_from is None and len(again.losses) == STEPS and not (out / ".resume").exists()
    assert again.losses == run["results"]["sft"].losses  # the same training, from step 0


def test_a_resume_state_missing_its_weights_or_with_an_empty_file_is_not_resumed_from(
        run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the trainer state, optimiser and scheduler files were required to exist: a checkpoint without its weights
    (a kill while .resume was being removed) was resumed from, and every rerun crashed in transformers ("Can't find
    a valid checkpoint", exit 70) until the user deleted .resume by hand. Now a checkpoint must be whole, weights
    included and no file empty; else the rerun trains from step 0 (and says so)."""
    from failtrace.training.resume import resume_point

    out = tmp_path / "gone"
    _stopped_after_step_4(run, out, _settings(), monkeypatch)
    ck = out / ".resume" / "checkpoint-3"
    identity = json.loads((out / ".resume" / "identity.json").read_text())
    assert resume_point(out, identity) == (ck, 3)
    weights = ck / "model.safetensors"
    saved = weights.read_bytes()
    weights.unlink()
    assert resume_point(out, identity) == (None, None)
    weights.write_bytes(saved)
    assert resume_point(out, identity) == (ck, 3)
    (ck / "optimizer.pt").write_bytes(b"")
    assert resume_point(out, identity) == (None, None)
    weights.unlink()
    with open_store(run["store"], read_only=True) as st:
        again = finetune(st, run["lm"], out, _settings())
    assert again.resumed_from is None and again.restarted_over == 3
    assert again.losses == run["results"]["sft"].losses


def test_a_trainer_state_cut_short_is_not_resumed_from(run: dict[str, Any], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while transformers wrote checkpoint-3's trainer_state.json (the file it writes last): that checkpoint
    is not whole, so the rerun starts from step 0 rather than failing on it."""
    from failtrace.training.resume import resume_point

    out = tmp_path / "cut"
    _stopped_after_step_4(run, out, _settings(), monkeypatch)
    state = out / ".resume" / "checkpoint-3" / "trainer_state.json"
    identity = json.loads((out / ".resume" / "identity.json").read_text())
    assert resume_point(out, identity) == (state.parent, 3)
    state.write_text(state.read_text()[:40])
    assert resume_point(out, identity) == (None, None)
    with open_store(run["store"], read_only=True) as st:
        again = finetune(st, run["lm"], out, _settings())
    assert again.resumed_from is None and again.losses == run["results"]["sft"].losses
    assert again.restarted_over == 3  # said, not silent: the rerun trained steps 1-3 again (the CLI's note)
    with open_store(run["store"], read_only=True) as st:  # a whole run: nothing to restart over
        assert finetune(st, run["lm"], tmp_path / "whole", _settings()).restarted_over is None
    # another run's step folder left in --out is not this run's step: an identity with other settings finds none
    other = {**identity, "settings": {**identity["settings"], "lr": identity["settings"]["lr"] / 2}}
    (out / ".resume").mkdir(exist_ok=True)
    (out / ".resume" / "identity.json").write_text(json.dumps(other))
    from failtrace.training.resume import unresumable_step

    assert sorted(p.name for p in out.glob("step-*")) == ["step-0", "step-3", "step-6"]
    assert unresumable_step(out, other) is None and unresumable_step(out, identity) is None  # (not its identity)


def test_quiet_transformers_nested_keeps_the_bars_off_until_the_outer_one_ends() -> None:
    """finetune silences transformers' bars around training, and each checkpoint save silences them again inside:
    the inner exit turned them back on, so every later trainer checkpoint printed a 'Writing model shards' bar."""
    from transformers.utils import logging as hf_logging

    from failtrace.models.loading import _quiet_transformers

    assert hf_logging.is_progress_bar_enabled()
    with _quiet_transformers():
        with _quiet_transformers():
            assert not hf_logging.is_progress_bar_enabled()
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()


def test_step_folders_are_numbered_in_ascii_digits_only() -> None:
    """``step-²`` passes ``str.isdigit`` and then fails ``int``; such a folder is no step (``step-７`` neither)."""
    from failtrace.training.checkpoints import numbered

    assert numbered("step-12", "step-") == 12 and numbered("checkpoint-0", "checkpoint-") == 0
    assert [numbered(n, "step-") for n in ("step-²", "step-７", "step-", "step-1a", "steps-1", "x-step-1")] == [None] * 6


def test_a_run_killed_while_saving_its_last_step_resumes_there_when_steps_is_no_multiple_of_save_every(
        run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--steps 5 --save-every 3: the trainer's last checkpoint is step 5 (it replaced step 3's), and failtrace saves
    step-5 after training. Killed while writing step-5, the rerun found only checkpoint-5, took it for no saved step
    (5 is no multiple of 3) and trained all five steps again. Now it continues from step 5: no step is trained again,
    and step-5 equals an uninterrupted run's."""
    import failtrace.training.checkpoints as ck

    settings = _settings(steps=5)
    with open_store(run["store"], read_only=True) as st:
        ref = finetune(st, run["lm"], tmp_path / "whole", settings)
    out, save = tmp_path / "killed", ck.save_checkpoint

    def killed_at_the_last_step(model: Any, tokenizer: Any, folder: Any, step: int, *args: Any, **kw: Any) -> Path:
        if step == 5:
            raise KeyboardInterrupt
        return save(model, tokenizer, folder, step, *args, **kw)

    monkeypatch.setattr(ck, "save_checkpoint", killed_at_the_last_step)
    with pytest.raises(KeyboardInterrupt), open_store(run["store"], read_only=True) as st:
        finetune(st, run["lm"], out, settings)
    monkeypatch.setattr(ck, "save_checkpoint", save)
    assert sorted(p.name for p in (out / ".resume").glob("checkpoint-*")) == ["checkpoint-5"]
    done: list[int] = []
    with _with_callback(monkeypatch, _steps_callback(seen=done)), open_store(run["store"], read_only=True) as st:
        again = finetune(st, run["lm"], out, settings)
    assert done == [] and again.resumed_from == 5 and again.restarted_over is None
    assert [p.name for p in again.checkpoints] == ["step-0", "step-3", "step-5"] and again.losses == ref.losses
    got, want = _weights(out / "step-5"), _weights(ref.out / "step-5")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert read_metadata(out / "step-5")["loss_history"] == read_metadata(ref.out / "step-5")["loss_history"]
    assert not (out / ".resume").exists()


def test_another_runs_step_folder_is_no_step_to_resume_from(run: dict[str, Any], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after step 4 (step-0, step-3, its trainer state at 3); then a run with other settings, killed
    after writing its own step-0 and before replacing the resume state. Rerun, the first run resumed from step 3
    beside the other run's step-0 (only the folders' presence was checked): one --out held two runs' steps. Now a
    step folder counts only when its metadata is this run's: the rerun starts from step 0 and says so."""
    import failtrace.training.resume as rs

    out, settings = tmp_path / "mixed", _settings()
    _stopped_after_step_4(run, out, settings, monkeypatch)

    def killed(*args: Any, **kw: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(rs, "start_resume", killed)
    with pytest.raises(KeyboardInterrupt), open_store(run["store"], read_only=True) as st:
        finetune(st, run["lm"], out, _settings(lr=LR / 2))
    monkeypatch.undo()
    assert read_metadata(out / "step-0")["settings"]["lr"] == LR / 2
    with open_store(run["store"], read_only=True) as st:
        again = finetune(st, run["lm"], out, settings)
    assert again.resumed_from is None and again.restarted_over == 3 and again.losses == run["results"]["sft"].losses
    assert all(read_metadata(out / f"step-{k}")["settings"]["lr"] == LR for k in (0, 3, 6))


def test_a_new_run_sets_an_earlier_runs_checkpoints_aside_until_it_finishes(run: dict[str, Any], tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A run into an --out that held another finished run replaced its step-0 at once, and stopped midway left the
    folder mixing both runs. Now the earlier run's step folders move whole into OUT/.earlier-run-*/ when the new
    run starts (said in a note), stay there intact if it is stopped, and are removed once a run finishes."""
    out = tmp_path / "ck"
    shutil.copytree(run["results"]["sft"].out, out)
    earlier = {p.name: (p / "failtrace_checkpoint.json").read_bytes() for p in out.glob("step-*")}
    notes: list[str] = []
    with _with_callback(monkeypatch, _steps_callback(stop_after=4)), pytest.raises(KeyboardInterrupt), \
            open_store(run["store"], read_only=True) as st:
        finetune(st, run["lm"], out, _settings(lr=LR / 2), on_note=notes.append)
    assert sorted(p.name for p in out.glob("step-*")) == ["step-0", "step-3"]
    assert all(read_metadata(p)["settings"]["lr"] == LR / 2 for p in out.glob("step-*"))  # the new run's alone
    (aside,) = out.glob(".earlier-run-*")
    assert {p.name: (p / "failtrace_checkpoint.json").read_bytes() for p in aside.glob("step-*")} == earlier
    assert len(notes) == 1 and str(aside) in notes[0] and "step-0" in notes[0], notes
    with open_store(run["store"], read_only=True) as st:
        done = finetune(st, run["lm"], out, _settings(lr=LR / 2))
    assert done.resumed_from == 3 and not list(out.glob(".earlier-run-*"))
    mine = tmp_path / "mine"  # what failtrace did not write is never set aside (and then deleted), from Python too
    (mine / "step-1").mkdir(parents=True)
    (mine / "step-1" / "notes.txt").write_text("a user's")
    with open_store(run["store"], read_only=True) as st, pytest.raises(FailtraceError, match="not a checkpoint"):
        finetune(st, run["lm"], mine, _settings(lr=LR / 3))
    assert (mine / "step-1" / "notes.txt").read_text() == "a user's" and not list(mine.glob(".earlier-run-*"))
    assert done.replaced == sorted(earlier) and {p.name for p in out.glob("step-*")} == {"step-0", "step-3", "step-6"}


def test_a_batch_larger_than_the_trained_cases_is_said(run: dict[str, Any], tmp_path: Path) -> None:
    """`--batch-size 50` on a handful of trained cases was taken without a word: every step trains on all of them,
    the same as any batch size at least their number."""
    notes: list[str] = []
    with open_store(run["store"], read_only=True) as st:
        done = finetune(st, run["lm"], tmp_path / "ck", _settings(steps=1, save_every=1, batch_size=50),
                        on_note=notes.append)
    n = len(done.trained)
    assert 0 < n < 50 and notes == [f"batch size 50 is more than the {n} trained cases: every step trains on those "
                                    f"{n}"], notes


def test_a_case_analysed_again_after_the_run_keeps_its_pairs_split(run: dict[str, Any], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The same pairs analysed again after training get new case ids, so every case was "in neither split" and the
    table's columns were empty. The run now records its pairs (pair run, item); an unlisted case of a listed pair
    takes that pair's split. A pair the run never saw (rejected in review) stays in neither: the test above."""
    from failtrace.cli import main
    from failtrace.store.cases import load_cases

    store = tmp_path / "s.duckdb"
    shutil.copy(run["store"], store)
    dpo = run["results"]["dpo"]
    with open_store(store) as st:
        st.con.execute("DROP TABLE IF EXISTS comparisons")
        write_toy_cases(st, run["lm"], run, analysis=2)
        again = load_cases(st)
    assert {c.case_id for c in again}.isdisjoint(dpo.trained + dpo.held_out) and len(again) == len(run["cases"])
    meta = read_metadata(dpo.checkpoints[-1])
    old = {c.case_id: (c.pair_run_id, c.item_id) for c in run["cases"]}
    assert sorted(meta["trained_pairs"]) == sorted(list(old[c]) for c in dpo.trained)
    assert main(["compare", "-s", str(store), "--checkpoints", str(dpo.checkpoints[-1]), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "neither split" not in text, text
    assert _ckpt_counts(text, str(dpo.checkpoints[-1])) == (len(dpo.trained), len(dpo.held_out))
    trained_pairs = {old[c] for c in dpo.trained}
    with open_store(store, read_only=True) as st:
        rows = st.con.execute("SELECT c.pair_run_id, c.item_id, m.split FROM comparisons m JOIN cases c USING "
                              "(case_id)").fetchall()
    assert len(rows) == len(again) and all((split == "trained") == ((p, i) in trained_pairs) for p, i, split in rows)


def test_a_rejected_pair_is_in_no_checkpoint_figure(run: dict[str, Any], tmp_path: Path) -> None:
    """The report left a pair a reviewer rejected out of its tables and Fig. 1-3, but Fig. 4-7 (across checkpoints)
    still drew its rows. Now no figure does (tables/fig6_checkpoints.csv is Fig. 6's data)."""
    import csv

    from fastapi.testclient import TestClient

    from failtrace.report.build import build_report_from_store
    from failtrace.serve.app import create_app
    from failtrace.training.compare import compare_checkpoints

    store = tmp_path / "s.duckdb"
    shutil.copy(run["store"], store)
    with open_store(store) as st:
        st.con.execute("DROP TABLE IF EXISTS comparisons")
        compare_checkpoints(st, [str(p) for p in run["results"]["sft"].checkpoints[:2]], progress=False)
    gone = run["cases"][0]
    with TestClient(create_app(store, review=True), base_url="http://127.0.0.1") as c:
        assert c.post("/api/reviews", json={"pair_run_id": gone.pair_run_id, "item_id": gone.item_id,
                                            "decision": "reject", "comment": "no"}).status_code == 201
    with open_store(store, read_only=True) as st:
        build_report_from_store(st, tmp_path / "rep", graphs=False)
    with (tmp_path / "rep" / "tables" / "fig6_checkpoints.csv").open(encoding="utf-8") as fh:
        drawn = {r["case_id"] for r in csv.DictReader(fh)}
    assert drawn == {c.case_id for c in run["cases"]} - {gone.case_id}
