"""Memory per worker and GPU-hours for a 1,000-item, 12k-token run on Qwen3-4B: the arithmetic of docs/SCALE.md.

Nothing here is measured: it is the estimate, written as code so that every number in the plan can be recomputed
and the formula checked. The one check against a measurement: the same formula for SmolLM2-135M at 16,384 tokens in
float32 against the peaks docs/PERF.md records (plain forward+backward 2.96 GiB, AttnLRP 4.75 GiB), which gives the
correction factor applied to AttnLRP below.

    python perf/plan_scale.py [--tokens 12288] [--items 1000] [--gpus 8]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GB = 1e9


@dataclass
class Shape:
    """A decoder's shape (from its config.json)."""

    params: float
    layers: int
    d: int  # hidden size
    q: int  # query heads * head dim
    kv: int  # key/value heads * head dim
    mlp: int  # intermediate size
    qk_norm: bool  # Qwen3 normalises q and k per head (one more saved copy of each)

    def saved_per_token_layer(self) -> int:
        """Values one decoder layer saves for its backward, per token (SDPA attention: no T x T matrix).

        Two norms (input and output each: 4d), q and k raw + rotated (+ normed with qk_norm), v, the attention
        output, and the gated MLP's gate, up, act(gate) and product (4 * mlp).
        """
        copies = 3 if self.qk_norm else 2
        return 4 * self.d + copies * (self.q + self.kv) + self.kv + self.q + 4 * self.mlp


QWEN3_4B = Shape(params=4.02e9, layers=36, d=2560, q=32 * 128, kv=8 * 128, mlp=9728, qk_norm=True)
SMOLLM2 = Shape(params=134.5e6, layers=30, d=576, q=9 * 64, kv=3 * 64, mlp=1536, qk_norm=False)


def plain_fb(s: Shape, t: int, b: int) -> float:
    """Peak bytes of one forward+backward under per-layer checkpointing: weights, every layer's input, one layer
    recomputed with its saved tensors and their gradients."""
    return s.params * b + (s.layers + 1) * t * s.d * b + 2 * s.saved_per_token_layer() * t * b


def attnlrp(s: Shape, t: int, b: int) -> float:
    """plain_fb plus the per-stage hidden relevance kept for the graph ((L+1) x T x d)."""
    return plain_fb(s, t, b) + (s.layers + 1) * t * s.d * b


def calibration() -> float:
    """The formula against the SmolLM2 16,384-token float32 peaks of docs/PERF.md; returns the AttnLRP factor."""
    gib = 2 ** 30
    est_plain, est_lrp = plain_fb(SMOLLM2, 16384, 4) / gib, attnlrp(SMOLLM2, 16384, 4) / gib
    print(f"check, SmolLM2-135M fp32 16,384 tokens: plain f+b estimated {est_plain:.2f} GiB vs measured 2.96; "
          f"AttnLRP estimated {est_lrp:.2f} GiB vs measured 4.75 (factor {4.75 / est_lrp:.2f} applied below)")
    return 4.75 / est_lrp


def ig_points(s: Shape, t: int, b: int) -> int:
    """Interpolation points per IG pass, from failtrace's own rule (``ig_batch_size``, checkpointed: long inputs)."""
    from types import SimpleNamespace

    import torch

    from failtrace.attribution.baselines import ig_batch_size

    cfg = SimpleNamespace(hidden_size=s.d, intermediate_size=s.mlp, num_hidden_layers=s.layers)
    return ig_batch_size(cfg, t, torch.bfloat16 if b == 2 else torch.float32, checkpointed=True)


def memory_table(t: int, factor: float) -> None:
    s = QWEN3_4B
    kv_bf16 = s.layers * 2 * s.kv * t * 2  # bf16 K and V of every layer
    print(f"\nQwen3-4B, {t:,} tokens; saved values per token per layer {s.saved_per_token_layer():,}; "
          f"KV cache (bf16) {kv_bf16 / t / 1e3:.0f} KB/token = {kv_bf16 / GB:.1f} GB")
    rows = []
    for b, name in ((2, "bf16"), (4, "fp32")):
        w, kv_cache = s.params * b, kv_bf16 * b // 2
        all_layers = s.layers * s.saved_per_token_layer() * t * b  # no checkpointing: every layer's saved tensors
        rows += [
            (f"collect ({name})", w + kv_cache + 3 * s.mlp * t * b),
            (f"pairs, 4 rollout rows ({name})", w + 5 * kv_cache + 3 * s.mlp * t * b),
            (f"AttnLRP / cp-lrp / gradxinput pass, checkpointed ({name})", attnlrp(s, t, b) * factor),
            (f"ig: checkpointed, {ig_points(s, t, b)} point(s) per pass (2 GB budget) ({name})",
             w + ig_points(s, t, b) * (plain_fb(s, t, b) - w)),
            (f"ig before 5 Dec 2026: batch 8, no checkpointing ({name})", w + 8 * all_layers),
            (f"attention: last layer's scores and weights, H x T x T each ({name})",
             w + 2 * (s.q // 128) * t * t * b),
            (f"attention before 5 Dec 2026: every layer's T x T weights ({name})",
             w + s.layers * (s.q // 128) * t * t * b),
            (f"flip search / node ablation, 8 masked copies, no grad ({name})", w + 8 * 3 * s.mlp * t * b),
        ]
    for name, value in rows:
        print(f"  {name:<72} {value / GB:>8.1f} GB")


def throughput(t: int, items: int, gpus: int) -> None:
    """GPU-hours per stage from FLOPs, bandwidth and the measured per-case ratios (docs/PERF.md)."""
    s = QWEN3_4B
    flops_fwd = 2 * 3.6e9 * t + 2 * s.layers * t * t * s.q  # non-embedding matmuls + causal attention (QK^T, AV)
    eff = 400e12  # effective bf16 FLOP/s on an H100/H200-class GPU (about 40% of peak): an assumption
    fwd = flops_fwd / eff
    lrp_pass = 1.18 * 4 * fwd  # checkpointed f+b = 4 forwards; AttnLRP/plain 1.18 at 16k tokens (measured, CPU)
    decode = 0.025  # s/token, batch-1 eager decoding of a 4B model, Python-bound: an assumption
    answer = 512  # generated tokens per item: an assumption
    failures, cases = 0.6 * items, 0.3 * items  # failure rate 60 %, clean pairs for half of them: assumptions
    collect = items * (fwd + answer * decode)
    # pairs: 6.0 rollouts and 167 tokens decoded per failure at a 64-token budget (measured, IFEval, CPU); tokens
    # scale with the budget; rollouts of one position are decoded together (a step costs about one batch-1 step)
    pair_steps = 167 * (answer / 64) / 3
    pairs = failures * (pair_steps * decode + 6 * fwd)
    analyse = cases * 39.2 * lrp_pass  # 39.2 AttnLRP passes per case (measured mean, bench_analyse, CPU)
    print(f"\nthroughput, {items:,} items, {t:,}-token contexts, {answer}-token answers: forward {fwd:.2f} s, "
          f"AttnLRP pass {lrp_pass:.2f} s")
    for name, sec, n in (("collect", collect, items), ("pairs", pairs, failures), ("analyse", analyse, cases)):
        print(f"  {name:<8} {n:>6.0f} units  {sec / n:>6.1f} s each  {sec / 3600:>6.1f} GPU-h  "
              f"{sec / 3600 / gpus:>5.2f} h on {gpus} GPUs")
    total = (collect + pairs + analyse) / 3600
    print(f"  total {total:.1f} GPU-h = {total / gpus:.1f} h on {gpus} GPUs (plus ~1-2 min start-up per worker)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=12288)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    factor = calibration()
    memory_table(args.tokens, factor)
    throughput(args.tokens, args.items, args.gpus)


if __name__ == "__main__":
    main()
