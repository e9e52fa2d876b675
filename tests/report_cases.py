"""Hand-made cases and status rows for the report tests (not a test module: imported by them).

The cases look like real ones (chat-template tokens, whitespace, segments, six methods, flip curves consistent with
their k*), with seeded random relevance, so every number the report shows can be recomputed independently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from failtrace.cases.record import Case, MaskingSpec, CaseMethod
from failtrace.store.store import StatusRow

METHODS = ("attnlrp", "cp-lrp", "gradxinput", "ig", "attention", "random")

_PROMPTS = {
    "ifeval": ("Write a haiku about the sea (see https://en.wikipedia.org/wiki/Sea).",
               "Your answer must be in all lowercase letters.",
               ["The", " sea", " is", " calm"], "instruction"),
    "math": ("What is 17 * 3 + 4? Put the answer in \\boxed{}.", "",
             ["17", " *", " 3", " =", " 51", ",", " +", " 4", " =", " \\boxed{"], "problem"),
}


def _tokens(benchmark: str, i: int) -> tuple[list[str], list[bool], dict[str, list[list[int]]], int]:
    """Context tokens, special mask, segments (every token in exactly one) and prompt length."""
    query, instr, answer, _rel = _PROMPTS[benchmark]
    parts: list[tuple[str, list[str]]] = [
        ("special", ["<|im_start|>"]), ("template", ["system", "\n"]), ("system", ["You", " are", " helpful", "."]),
        ("special", ["<|im_end|>"]), ("template", ["\n"]), ("special", ["<|im_start|>"]),
        ("template", ["user", "\n"]),
        ("query", [w if j == 0 else " " + w for j, w in enumerate(query.split(" "))]),
    ]
    if instr:
        parts.append(("instruction", ["\n"] + [" " + w for w in instr.split(" ")] + ["\t"]))
    parts += [("special", ["<|im_end|>"]), ("template", ["\n"]), ("special", ["<|im_start|>"]),
              ("template", ["assistant", "\n"])]
    prompt_length = sum(len(p) for _s, p in parts)
    parts.append(("answer", answer[: 2 + i % (len(answer) - 1)]))
    toks = [t for _s, p in parts for t in p]
    labels = [s for s, p in parts for _t in p]
    spans: dict[str, list[list[int]]] = {}
    for j, lab in enumerate(labels):
        run = spans.setdefault(lab, [])
        if run and run[-1][1] == j:
            run[-1][1] = j + 1
        else:
            run.append([j, j + 1])
    return toks, [lab == "special" for lab in labels], spans, prompt_length


def _curve(delta: float, k_star: int | None, max_k: int, rng: np.random.Generator) -> list[float]:
    """A Δℓ curve for k = 0..K whose first negative entry is at k_star (none if k_star is None)."""
    out = [delta]
    for k in range(1, max_k + 1):
        if k_star is not None and k >= k_star:
            out.append(-abs(rng.normal(1.0, 0.3)) - 0.1)
        else:
            out.append(max(0.05, out[-1] * float(rng.uniform(0.5, 0.95))))
    return out


def make_case(i: int, benchmark: str, category: str | None, pattern: str | None, kstars: dict[str, int | None],
              pair_run_id: str = "pairs-1", max_k: int = 10, seed: int = 0) -> Case:
    """One case; ``kstars`` gives k* per method (methods not in it are absent from the case)."""
    rng = np.random.default_rng(seed * 1000 + i)
    toks, special, segments, plen = _tokens(benchmark, i)
    n = len(toks)
    delta = float(rng.uniform(0.5, 6.0))
    methods = {}
    for m, k in kstars.items():
        rel = rng.normal(0, 1, n) * np.where(special, 8.0, 1.0)  # special tokens soak up relevance
        curve = _curve(delta, k, max_k, rng)
        # the top token after masking: the target while Δℓ ≥ 0, then the contrast or a third token; a case whose
        # number is 3 mod 4 was "analysed before it was recorded" (none)
        tops = [] if i % 4 == 3 else [7 if v >= 0 else 8 if i % 3 == 0 else 9 for v in curve]
        texts = [{7: " The" if i % 2 else "\n", 8: " the", 9: "A"}[t] for t in tops]
        methods[m] = CaseMethod(method=m, input_relevance=[float(x) for x in rel],
                                  hidden_layer_sums=[float(x) for x in rng.normal(0, 1, 4)],
                                  flip_curve=curve, flip_k=k, seconds=0.1, flip_tops=tops, flip_top_texts=texts)
    rel_seg = ["instruction"] if benchmark == "ifeval" else ["query"]
    return Case(
        case_id=f"{benchmark[:2]}{i:04d}{seed:02d}cafe", pair_run_id=pair_run_id, run_id="collect-1",
        item_id=f"{benchmark}/{i}", benchmark=benchmark, model="tiny-model", model_fingerprint="f" * 64,
        token_ids=list(range(100, 100 + n)), tokens=toks, special_mask=special, prompt_length=plen, position=n,
        target_id=7, target_text=" The" if i % 2 else "\n", contrast_id=8, contrast_text=" the",
        delta_logit=delta, segments=segments, relevant_segments=rel_seg, methods=methods,
        masking=MaskingSpec(max_k=max_k), category=category,
        category_evidence={"k_star": kstars.get("attnlrp"), "k_ia": 5, "ablated": [[3, 12], [5, 14]]},
        pattern=pattern, pattern_evidence={"relevant_sum": -0.4, "top_irrelevant": [" sea", 0.31]},
        graph_summary={"strongest_path": "L0/12 -> L1/20 -> out", "score": 0.42},
    )


def status_row(benchmark: str, run_id: str, pair_run_id: str | None, failed: int, pairs: dict[str, int],
               items: int = 50) -> StatusRow:
    return StatusRow(benchmark=benchmark, model="tiny-model", run_id=run_id, pair_run_id=pair_run_id,
                     pair_settings={"top_k": 10}, items=items, generated=items, passed=items - failed - 1,
                     failed=failed, unverifiable=1, pairs=pairs, avg_prompt_tokens=41.5, avg_completion_tokens=80.25)


def sample() -> tuple[list[Case], list[StatusRow], list[dict[str, Any]]]:
    """Two benchmarks: 5 ifeval cases, 3 math cases, status rows (one collection run without pairs) and pair rows."""
    all6 = lambda a, b, c, d, e, f: dict(zip(METHODS, (a, b, c, d, e, f)))  # noqa: E731
    cases = [
        make_case(0, "ifeval", "M-IA", "URT", all6(1, 2, 3, None, 4, None)),
        make_case(1, "ifeval", "M-IA", "OIT", all6(2, 2, 5, 6, None, 9)),
        make_case(2, "ifeval", "NC-IA+M-AG", "URT+OIT", all6(None, None, 7, None, None, None)),
        make_case(3, "ifeval", "NC-IA+AG", "none", all6(3, 4, None, 2, 8, None)),
        make_case(4, "ifeval", "M-IA", "URT", all6(1, 1, 2, 2, 3, 10)),
        make_case(5, "math", "M-IA", "OIT", all6(2, 3, 2, 4, None, None), pair_run_id="pairs-2"),
        make_case(6, "math", "NC-IA+AG", "URT", all6(None, 6, None, None, None, None), pair_run_id="pairs-2"),
        make_case(7, "math", None, None, {"attnlrp": 4, "random": None}, pair_run_id="pairs-2"),
    ]
    rows = [
        status_row("ifeval", "collect-1", "pairs-1", 20,
                   {"clean": 5, "no_target": 6, "no_contrast": 4, "weak_preference": 2, "unbounded": 1,
                    "unverifiable": 0}),
        status_row("math", "collect-2", "pairs-2", 12,
                   {"clean": 3, "no_target": 2, "no_contrast": 5, "weak_preference": 0, "unbounded": 0,
                    "unverifiable": 1}, items=30),
        status_row("math", "collect-3", None, 9, {}, items=10),
    ]
    pairs = [{"benchmark": "ifeval", "pair_run_id": "pairs-1", "item_id": f"ifeval/{j}", "status": s,
              "reason": f"reason {j} <b>not bold</b>"} for j, s in enumerate(["clean", "no_target", "no_contrast"])]
    return cases, rows, pairs


def tiny_graph(case: Case) -> tuple[Any, list[int], int, int, Any]:
    """(model, ids, target, contrast, graph): a real AttnLRP graph of a 3-layer tiny Llama over as many token ids as
    ``case`` has tokens, the model's top two next tokens as target and contrast (the case's tokens label its nodes)."""
    import torch

    from failtrace.cases.build import logit_diff_fn
    from failtrace.graph.build import graph_from_ids
    from failtrace_testkit.tiny import tiny_model

    model = tiny_model("llama", layers=3)
    ids = [3 + (7 * i) % 120 for i in range(len(case.tokens))]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    target, contrast = [int(x) for x in logits.argsort(descending=True)[:2]]
    g = graph_from_ids(model, ids, logit_diff_fn(target, contrast), tokens=case.tokens, special_mask=case.special_mask)
    return model, ids, target, contrast, g
