"""Device smoke: the pair search on CUDA finds what the exhaustive CPU reference finds (toy model, float64; not a
test: run on a lent GPU machine before a --device cuda benchmark, perf/stage_device.sh)."""
import dataclasses, sys, time
import torch
t0 = time.time()
print("torch", torch.__version__, torch.cuda.get_device_name(0), flush=True)
import transformers, duckdb, gguf, math_verify  # noqa
print("transformers", transformers.__version__, "duckdb", duckdb.__version__, flush=True)
from failtrace_testkit.toy import toy_loaded, ToyBenchmark, toy_items
from failtrace.failures.pairs import PairFinder, PairSettings
from failtrace.failures.reference import exhaustive_search, _top
from failtrace.failures.generation import greedy_generate, eos_token_ids, naive_greedy, decode_completion
from failtrace.models.chat import apply_chat_template
from failtrace.store import open_store
from failtrace.benchmarks.registry import get_benchmark
cpu = toy_loaded(0, "float64")
gpu = toy_loaded(0, "float64")
gpu.model.to("cuda")
gpu = dataclasses.replace(gpu, device="cuda")
eos = eos_token_ids(cpu.model, cpu.tokenizer)
ok = 0
items = toy_items(6)
for idx, item in enumerate(items):
    prompt = apply_chat_template(cpu.tokenizer, item.prompt)
    comp = greedy_generate(cpu.model, [prompt], 16, eos)[0].token_ids
    comp_g = greedy_generate(gpu.model, [prompt], 16, eos)[0].token_ids
    p = min(2 + idx % 3, len(comp) - 1)
    alt = _top(cpu.model, prompt + comp[:p], comp[p], 3)[idx % 3]
    seq = naive_greedy(cpu.model, prompt + comp[:p], 16 - p, eos, forced=alt)
    text = decode_completion(cpu.tokenizer, comp[:p] + seq, eos)
    item.reference["needle"] = text[-4:]
    bench = ToyBenchmark(mode="contains")
    res = PairFinder(gpu, PairSettings(top_k=3, min_delta=0.0)).find(bench, item, prompt, comp, 16, "eos")
    ref = exhaustive_search(cpu, bench, item, prompt, comp, 16, 3, 64, naive=True)
    same = (res.completion_offset, res.contrast_id) == (ref.offset, ref.contrast)
    ok += same and comp == comp_g
    print(idx, "greedy same", comp == comp_g, "pair gpu", (res.completion_offset, res.contrast_id),
          "ref cpu", (ref.offset, ref.contrast), res.status, flush=True)
with open_store("/tmp/smoke.duckdb") as st:
    print("store ok", type(st).__name__)
print("math checker:", get_benchmark("math").name)
print(f"SMOKE {'PASS' if ok == len(items) else 'FAIL'} {ok}/{len(items)} in {time.time() - t0:.1f} s", flush=True)
