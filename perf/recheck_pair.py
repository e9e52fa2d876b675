"""Re-check one stored pair independently of the pair search (not a test): Δℓ from one plain transformers forward
pass over prompt + completion prefix, and the contrast forced then decoded greedily by transformers' own
``generate`` (no failtrace cache, drafts or early stopping) to the collection's budget, judged by the benchmark's
checker. A clean pair must give the stored Δℓ and ``pass``.

    .venv/bin/python perf/recheck_pair.py --store he.duckdb --item HumanEval/10
"""

from __future__ import annotations

import argparse

import torch

from failtrace.benchmarks.registry import get_benchmark
from failtrace.models.loading import load_model
from failtrace.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--item", required=True, help="a failed item id with a stored pair")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open_store(args.store, read_only=True) as st:
        run = st.runs("collect")[0]
        row = next(r for r in st.results(run.run_id, status="fail") if r["item_id"] == args.item)
        pair = next(p for p in st.pairs() if p["item_id"] == args.item and p["contrast_id"] is not None)
        item = st.get_item(run.benchmark, args.item)
    lm = load_model(run.model, progress=False)
    off, target, contrast = pair["completion_offset"], pair["target_id"], pair["contrast_id"]
    prefix = [*row["prompt_ids"], *row["token_ids"][:off]]
    assert row["token_ids"][off] == target, "the stored target is not the completion's token there"
    with torch.no_grad():
        logits = lm.model(torch.tensor([prefix])).logits[0, -1]
    print(f"{args.item}: offset {off}, target {lm.tokenizer.decode([target])!r} -> contrast "
          f"{lm.tokenizer.decode([contrast])!r}; Δℓ plain forward {float(logits[target] - logits[contrast]):.4f}, "
          f"stored {pair['delta_logit']:.4f}")
    ids = torch.tensor([[*prefix, contrast]])
    with torch.no_grad():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=run.settings["max_new_tokens"] - off - 1,
                                pad_token_id=lm.tokenizer.eos_token_id)
    text = lm.tokenizer.decode([*row["token_ids"][:off], *out[0, len(prefix):].tolist()], skip_special_tokens=True)
    verdict = get_benchmark(run.benchmark).check(item, text)
    print(f"contrast forced, then transformers generate (greedy): checker says {verdict.status}"
          + (f" ({'; '.join(verdict.reasons[:2])})" if verdict.reasons else ""))
    print(text)


if __name__ == "__main__":
    main()
