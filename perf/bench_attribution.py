"""Attribution cost on the bundled model, measured against a baseline from the same run.

Prints, at 64 / 512 / 2,048 tokens: AttnLRP time ÷ plain forward+backward time (goal ≤ 1.15), integrated gradients
(32 steps) ÷ AttnLRP (goal ≥ 25), and peak resident memory; then the largest input (doubling from 4,096) that
AttnLRP attributes within the memory budget (goal ≥ 16,384 tokens), each against a plain forward+backward at the
same length and with the same activation checkpointing; and one attribution on a randomly initialised
model with Qwen3-0.6B's published shape (random weights cost the same as trained ones).

Each measurement runs in a fresh subprocess so its peak RSS is its own. Run:  .venv/bin/python perf/bench_attribution.py
Options: --lengths 64,512,2048  --max-long 16384  --skip-long  --skip-qwen  --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                 rope_theta=1000000.0, tie_word_embeddings=True)


def _model(kind: str):
    import torch

    if kind == "bundled":
        import failtrace

        return failtrace.load_model(progress=False).model
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.Qwen3Config(**QWEN3_06B)
    cfg._attn_implementation = "sdpa"
    m = tf.AutoModelForCausalLM.from_config(cfg).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _one(kind: str, method: str, n: int, repeats: int) -> dict:
    """Time ``method`` on an n-token random input; returns seconds (median) and peak RSS in GiB."""
    import torch

    from failtrace.attribution import objective_value, relevance_pass
    from failtrace.attribution.baselines import integrated_gradients
    from failtrace.attribution.engine import CHECKPOINT_ABOVE, base_and_head, checkpointed_layers, final_logits
    from failtrace.lrp.patch import decoder_layers

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    model = _model(kind)
    vocab = model.config.vocab_size
    ids = torch.randint(100, min(vocab, 40000), (n,), generator=torch.Generator().manual_seed(n)).tolist()
    fn = lambda lg: objective_value(lg, "logit_diff", 1000, 2000)  # noqa: E731
    base, head = base_and_head(model)

    # The baseline gets the same memory setting as AttnLRP: above CHECKPOINT_ABOVE tokens both run every decoder
    # layer under activation checkpointing (recomputed in the backward pass), below it neither does.
    ckpt = n > CHECKPOINT_ABOVE

    def plain() -> None:
        with checkpointed_layers(decoder_layers(model), ckpt), torch.enable_grad():
            emb = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
            last = base(inputs_embeds=emb, use_cache=False).last_hidden_state[0, -1]
            fn(final_logits(model, head, last)).backward()

    runs = {
        "plain": plain,
        "attnlrp": lambda: relevance_pass(model, ids, fn, method="attnlrp"),
        "ig": lambda: integrated_gradients(model, ids, fn, steps=32),
    }
    run = runs[method]
    times = []
    for i in range(repeats + 1):  # first call warms up (repeats=0: one cold, timed call)
        t0 = time.perf_counter()
        run()
        if i or repeats == 0:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": statistics.median(times), "peak_gib": peak}


def measure(kind: str, method: str, n: int, repeats: int, timeout: float = 3600) -> dict | None:
    cmd = [sys.executable, __file__, "--one", kind, method, str(n), str(repeats)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=4)
    ap.add_argument("--lengths", default="64,512,2048")
    ap.add_argument("--max-long", type=int, default=16384)
    ap.add_argument("--budget-gib", type=float, default=24.0)
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--skip-qwen", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.one:
        kind, method, n, repeats = args.one
        print(json.dumps(_one(kind, method, int(n), int(repeats))))
        return
    # the memory budget also caps each child, so "within 24 GiB" is enforced, not just observed
    budget = int(args.budget_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (budget + 2**31, resource.RLIM_INFINITY))
    import torch

    threads = os.environ.get("BENCH_THREADS", os.cpu_count())
    print(f"bundled SmolLM2-135M-Instruct (30 layers), fp32, CPU threads={threads}, torch {torch.__version__}")
    print(f"{'tokens':>7} {'plain f+b s':>12} {'AttnLRP s':>10} {'LRP/plain':>10} {'IG32 s':>9} {'IG/LRP':>8} "
          f"{'peak GiB (plain/LRP/IG)':>24}")
    for n in [int(x) for x in args.lengths.split(",")]:
        p = measure("bundled", "plain", n, args.repeats)
        a = measure("bundled", "attnlrp", n, args.repeats)
        g = measure("bundled", "ig", n, 1)
        print(f"{n:>7} {p['seconds']:>12.3f} {a['seconds']:>10.3f} {a['seconds'] / p['seconds']:>10.3f} "
              f"{g['seconds']:>9.2f} {g['seconds'] / a['seconds']:>8.1f} "
              f"{p['peak_gib']:>8.2f}/{a['peak_gib']:.2f}/{g['peak_gib']:.2f}", flush=True)
    if not args.skip_long:
        n, best = 4096, None
        while n <= args.max_long:
            r = measure("bundled", "attnlrp", n, 0)
            if r is None or "error" in r or r["peak_gib"] > args.budget_gib:
                print(f"{n:>7} tokens: failed within {args.budget_gib:g} GiB ({r})")
                break
            b = measure("bundled", "plain", n, 0)
            cmp = (f"; plain f+b {b['seconds']:.1f} s (same checkpointing), LRP/plain {r['seconds'] / b['seconds']:.3f}"
                   if b and "seconds" in b else f"; plain f+b failed ({b})")
            print(f"{n:>7} tokens: AttnLRP {r['seconds']:.1f} s, peak {r['peak_gib']:.2f} GiB{cmp}", flush=True)
            best, n = n, n * 2
        print(f"largest input attributed within {args.budget_gib:g} GiB: {best} tokens")
    if not args.skip_qwen:
        for n in (512,):
            p = measure("qwen3-0.6b", "plain", n, 1)
            a = measure("qwen3-0.6b", "attnlrp", n, 1)
            print(f"Qwen3-0.6B shape (random weights), {n} tokens: plain f+b {p['seconds']:.2f} s, AttnLRP "
                  f"{a['seconds']:.2f} s (ratio {a['seconds'] / p['seconds']:.3f}), peak {a['peak_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
