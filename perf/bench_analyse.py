"""Cost of ``analyse`` per case relative to ONE AttnLRP pass at the same length, on the bundled model (not a test).

For a few cases (a benchmark-like prompt, the model's own greedy answer, a failure point inside it, the 2nd-ranked
token as contrast) it times, in the same process and with the same threads:

* the baseline: one AttnLRP relevance pass (forward + modified backward) over the case's context (median of 3);
* ``build_case`` with the default settings (six methods, masking search, graph, category, pattern, summary),

and prints the total as *passes-equivalent* (case seconds / baseline seconds; target ≤ 60) and where the time
goes: per method (relevance, then its masking search), the graph, and each analysis.

    .venv/bin/python perf/bench_analyse.py [--cases 2] [--threads 2] [--max-new-tokens 40]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from typing import Any

import torch

from failtrace.attribution.engine import relevance_pass
from failtrace.benchmarks.base import Item
from failtrace.cases.build import build_case, logit_diff_fn
from failtrace.cases.settings import CaseSettings
from failtrace.failures.generation import eos_token_ids, greedy_generate
from failtrace.models.chat import apply_chat_template
from failtrace.models.fingerprint import model_fingerprint
from failtrace.models.loading import load_model

PROMPTS: list[tuple[str, str]] = [
    ("math", "A shop sells pencils at 3 for 45 cents. How much do 7 pencils cost, in cents? "
             "Put only the final number in \\boxed{}."),
    ("ifeval", "Write a short poem about the sea. Your answer must contain exactly 3 bullet points in markdown "
               "format, and must not contain any commas."),
    ("humaneval", "Complete this Python function. Reply with only the code.\n\n```python\ndef add_even(xs):\n"
                  "    \"\"\"Return the sum of the even numbers in xs.\n    >>> add_even([1, 2, 4])\n    6\n"
                  "    \"\"\"\n```"),
]


def make_case_inputs(lm: Any, index: int, budget: int) -> tuple[dict[str, Any], Item, dict[str, Any]]:
    """A pair row as ``pairs`` would store it: failure point 3/4 into the greedy answer, contrast = 2nd choice."""
    bench, prompt = PROMPTS[index % len(PROMPTS)]
    item = Item(id=f"bench-{index}", benchmark=bench, prompt=prompt, reference={}, meta={})
    ids = apply_chat_template(lm.tokenizer, prompt)
    comp = greedy_generate(lm.model, [ids], budget, eos_token_ids(lm.model, lm.tokenizer))[0].token_ids
    p = max(0, (3 * len(comp)) // 4 - 1)
    with torch.no_grad():
        row = lm.model(input_ids=torch.tensor([ids + comp[:p]]), use_cache=False).logits[0, -1]
    top = torch.topk(row, 2).indices.tolist()
    target = comp[p]
    contrast = top[1] if top[0] == target else top[0]
    pair = {"pair_run_id": "bench", "run_id": "bench", "item_id": item.id, "status": "clean", "position": len(ids) + p,
            "completion_offset": p, "target_id": target, "contrast_id": contrast,
            "delta_logit": float(row[target] - row[contrast])}
    return pair, item, {"prompt_ids": ids, "token_ids": comp}


def one_pass_seconds(lm: Any, ids: list[int], target: int, contrast: int, repeats: int = 3) -> float:
    fn = logit_diff_fn(target, contrast)
    relevance_pass(lm.model, ids, fn, method="attnlrp")  # warm-up (rule installation, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        relevance_pass(lm.model, ids, fn, method="attnlrp")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _group(seconds: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for name, s in seconds.items():
        if name.startswith("method:") or name.startswith("flip:"):
            out[f"{name.split(':', 1)[1]} ({name.split(':', 1)[0]})"] += s
        else:
            out[name] += s
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(progress=False)
    fingerprint = model_fingerprint(lm)
    settings = CaseSettings().validate()
    print(f"model {lm.name} ({lm.dtype}, {torch.get_num_threads()} threads); methods {', '.join(settings.methods)}; "
          f"max_k {settings.max_k}, ig_steps {settings.ig_steps}, edges {settings.edge_method}")
    ratios = []
    for i in range(args.cases):
        pair, item, gen = make_case_inputs(lm, i, args.max_new_tokens)
        ctx = gen["prompt_ids"] + gen["token_ids"][:pair["completion_offset"]]
        base = one_pass_seconds(lm, ctx, pair["target_id"], pair["contrast_id"])
        t0 = time.perf_counter()
        case = build_case(lm, pair, item, gen, settings, fingerprint=fingerprint)
        total = time.perf_counter() - t0
        ratios.append(total / base)
        print(f"\ncase {i} ({item.benchmark}): {len(ctx)} tokens; one AttnLRP pass {base:.3f} s; case {total:.2f} s "
              f"= {total / base:.1f} passes-equivalent (target <= 60); category {case.category}, pattern "
              f"{case.pattern}, k* attnlrp {case.flip_k('attnlrp')}")
        for name, s in sorted(_group(case.seconds).items(), key=lambda kv: -kv[1]):
            print(f"  {name:<24} {s:8.3f} s  {s / base:6.1f} passes  {100 * s / total:5.1f}%")
    print(f"\nmean {statistics.mean(ratios):.1f} passes-equivalent per case over {len(ratios)} cases "
          f"(max {max(ratios):.1f}; target <= 60)")


if __name__ == "__main__":
    main()
