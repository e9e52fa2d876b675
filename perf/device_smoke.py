"""Device smoke: the pair search on CUDA finds what the exhaustive CPU reference finds (toy model, float64; not a
test: run on a lent GPU machine before a ``--device cuda`` benchmark, see perf/stage_device.sh).

Prints one line per toy item (greedy tokens equal on both devices, the pair found on CUDA, the CPU reference's) and
``SMOKE PASS n/n`` when every item agrees. It also imports what the benchmark needs there (duckdb, gguf, math-verify).
"""

from __future__ import annotations

import dataclasses
import time

import torch


def main() -> None:
    t0 = time.time()
    import duckdb
    import transformers

    import gguf  # noqa: F401  (the bundled model is a GGUF file)
    import math_verify  # noqa: F401  (the MATH checker)
    from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate
    from failtrace_testkit.reference_decoding import naive_greedy
    from failtrace.failures.pairs import PairFinder, PairSettings
    from failtrace_testkit.reference_search import _top, exhaustive_search
    from failtrace.models.chat import apply_chat_template
    from failtrace_testkit.toy import ToyBenchmark, toy_items, toy_loaded

    print("torch", torch.__version__, torch.cuda.get_device_name(0), "transformers", transformers.__version__,
          "duckdb", duckdb.__version__, flush=True)
    cpu = toy_loaded(0, "float64")
    gpu = toy_loaded(0, "float64")
    gpu.model.to("cuda")
    gpu = dataclasses.replace(gpu, device="cuda")
    eos = eos_token_ids(cpu.model, cpu.tokenizer)
    items = toy_items(6)
    ok = 0
    for idx, item in enumerate(items):
        prompt = apply_chat_template(cpu.tokenizer, item.prompt)
        comp = greedy_generate(cpu.model, [prompt], 16, eos)[0].token_ids
        same_greedy = comp == greedy_generate(gpu.model, [prompt], 16, eos)[0].token_ids
        # a needle that one alternative's rollout writes: a clean pair exists at or before position p
        p = min(2 + idx % 3, len(comp) - 1)
        alt = _top(cpu.model, prompt + comp[:p], comp[p], 3)[idx % 3]
        text = decode_completion(cpu.tokenizer, comp[:p] + naive_greedy(cpu.model, prompt + comp[:p], 16 - p, eos,
                                                                        forced=alt), eos)
        item.reference["needle"] = text[-4:]
        bench = ToyBenchmark(mode="contains")
        res = PairFinder(gpu, PairSettings(top_k=3, min_delta=0.0)).find(bench, item, prompt, comp, 16, "eos")
        ref = exhaustive_search(cpu, bench, item, prompt, comp, 16, 3, 64, naive=True)
        agree = (res.completion_offset, res.contrast_id) == (ref.offset, ref.contrast)
        ok += agree and same_greedy
        print(idx, "greedy same", same_greedy, "pair cuda", (res.completion_offset, res.contrast_id), "reference cpu",
              (ref.offset, ref.contrast), res.status, flush=True)
    print(f"SMOKE {'PASS' if ok == len(items) else 'FAIL'} {ok}/{len(items)} in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
