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
from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate, naive_greedy
from failtrace.failures.pairs import PairSettings, find_pairs
from failtrace.models.chat import apply_chat_template
from failtrace.models.loading import load_model
from failtrace.store import open_store
from failtrace.testing.toy import ToyBenchmark, save_toy_model, toy_items

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
