"""A real results store with clean pairs on the toy model (collect + pairs), for the cases tests.

Each item's needle is the decoded rollout that forces the model's 2nd-ranked alternative at an early completion
position, so the toy checker (prefix rule) fails the greedy answer and the pair search finds a recovering token:
the same construction as tests/test_pairs.py. The model lives in a folder, so a subprocess (the CLI) can load it
by the path recorded in the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from failtrace.failures.collect import collect
from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate
from failtrace_testkit.reference_decoding import naive_greedy
from failtrace.failures.pairs import PairSettings, find_pairs
from failtrace.models.chat import apply_chat_template
from failtrace.models.loading import load_model
from failtrace.store import open_store
from failtrace_testkit.toy import ToyBenchmark, save_toy_model, toy_items

BUDGET = 16
PAIR_SETTINGS = PairSettings(top_k=3, min_delta=0.0, max_positions=8)


def _needles(lm: Any, items: list[Any]) -> None:
    eos = eos_token_ids(lm.model, lm.tokenizer)
    for it in items:
        prompt = apply_chat_template(lm.tokenizer, it.prompt)
        comp = greedy_generate(lm.model, [prompt], BUDGET, eos)[0].token_ids
        p = min(2, len(comp) - 1)
        with torch.no_grad():
            row = lm.model(input_ids=torch.tensor([prompt + comp[:p]]), use_cache=False).logits[0, -1]
        alt = [t for t in torch.topk(row, 3).indices.tolist() if t != comp[p]][1]
        seq = naive_greedy(lm.model, prompt + comp[:p], BUDGET - p, eos, forced=alt)
        it.reference["needle"] = decode_completion(lm.tokenizer, comp[:p] + seq, eos)


def build_toy_store(store: Path, model_dir: Path, n_items: int = 8, seed: int = 0) -> dict[str, Any]:
    """Write the toy model to ``model_dir`` and a store with collect + pairs at ``store``; returns what was made."""
    save_toy_model(model_dir, seed=seed)
    lm = load_model(str(model_dir), progress=False)
    items = toy_items(n_items)
    _needles(lm, items)
    bench = ToyBenchmark(mode="prefix", max_new_tokens=BUDGET)
    with open_store(store) as st:
        run = collect(st, bench, items, lm, progress=False)
        pairs = find_pairs(st, PAIR_SETTINGS, models={lm.name: lm}, benchmarks={"toy": bench}, progress=False)
        clean = [p for p in st.pairs(pairs.pair_run_ids[0]) if p["status"] == "clean"]
    return {"lm": lm, "run_id": run.run_id, "pair_run_id": pairs.pair_run_ids[0], "clean": clean,
            "model_dir": model_dir, "store": store}


def write_toy_cases(st: Any, lm: Any, info: dict[str, Any], analysis: int = 1) -> None:
    """Cases of the seed-0 model for the store's clean pairs: Δℓ, AttnLRP relevance, segments, flip curve. (Built
    here from the analysis functions rather than by ``analyse``, so this test needs only what ``compare`` reads.)
    ``analysis`` 2, 3, ...: the same pairs analysed again (new case ids, a newer analysis)."""
    from failtrace.analysis.masking import flip_search
    from failtrace.analysis.segments import segment_labels, segment_relevance, spans_from_labels
    from failtrace.attribution.engine import relevance_pass
    from failtrace.attribution.inputs import decode_tokens, special_ids
    from failtrace.cases.build import context_of, logit_diff_fn, plain_delta
    from failtrace.cases.record import Case, MaskingSpec, CaseMethod, case_id
    from failtrace.models.fingerprint import model_fingerprint
    from failtrace.store.cases import write_case

    fp, tok = model_fingerprint(lm), lm.tokenizer
    gens = {g["item_id"]: g for g in st.results(info["run_id"])}
    spec = MaskingSpec(max_k=4)
    for pair in info["clean"]:
        gen, item = gens[pair["item_id"]], st.get_item("toy", pair["item_id"])
        ctx, t, c = context_of(pair, gen), int(pair["target_id"]), int(pair["contrast_id"])
        special = [i in special_ids(tok) for i in ctx]
        rel = relevance_pass(lm.model, ctx, logit_diff_fn(t, c), method="attnlrp").relevance()[0].numpy()
        labels = segment_labels(tok, ctx, special, len(gen["prompt_ids"]), item)
        curve, k, _ = flip_search(lm.model, ctx, rel, special, t, c, spec)
        method = CaseMethod("attnlrp", [float(x) for x in rel], segment_relevance=segment_relevance(rel, labels),
                            flip_curve=curve, flip_k=k)
        write_case(st, Case(
            case_id=case_id(pair["pair_run_id"], pair["item_id"], fp, {"test": analysis}),
            pair_run_id=pair["pair_run_id"],
            run_id=info["run_id"], item_id=pair["item_id"], benchmark="toy", model=lm.name, model_fingerprint=fp,
            token_ids=ctx, tokens=decode_tokens(tok, ctx), special_mask=special,
            prompt_length=len(gen["prompt_ids"]), position=len(ctx), target_id=t, target_text=tok.decode([t]),
            contrast_id=c, contrast_text=tok.decode([c]), delta_logit=plain_delta(lm.model, ctx, t, c),
            segments=spans_from_labels(labels), methods={"attnlrp": method}, masking=spec,
            analysis_id="test" if analysis == 1 else f"test{analysis}"))
