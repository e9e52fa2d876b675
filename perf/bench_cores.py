"""Does this machine give two processes twice the work of one right now? The ceiling of any 2-worker speed-up.

Ray workers are processes; if two plain processes cannot do twice the work of one on this machine, no scheduler can.
Every mode runs the same one-thread workload for the same wall-clock window in 1 or 2 processes (all loaded first,
then started together at a fixed time), in rounds with the order rotated, and prints the total work per second and
its ratio to 1 process:

* ``decode``: greedy decoding with the bundled SmolLM2-135M (weights 540 MB: memory-bandwidth bound, like collect);
* ``matmul``: 256 x 256 float32 matmuls (cache-resident, compute bound: no memory-bandwidth limit).

Modes: ``1 proc``; ``2 procs`` in this session (as Ray workers are: they live in the driver's session); ``2 procs,
own sessions`` (each ``setsid``). With ``kernel.sched_autogroup_enabled = 1`` Linux shares the CPU between sessions
first, so under load from other sessions the last mode can get more than the second.

    PYTHONPATH=src .venv/bin/python perf/bench_cores.py [--seconds 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODES = (("1 proc", 1, False), ("2 procs", 2, False), ("2 procs, own sessions", 2, True))


def _child(workload: str, start: float, seconds: float) -> None:
    """Load, wait for ``start``, then work for ``seconds``; print the units of work done (tokens or matmuls)."""
    import torch

    torch.set_num_threads(1)
    if workload == "decode":
        from failtrace.failures.generation import greedy_generate
        from failtrace.models.loading import load_model

        lm = load_model("smollm2-135m-instruct", progress=False)
        prompt = lm.tokenizer("Write a long story about the sea and a lighthouse keeper.")["input_ids"]

        def step() -> int:
            return len(greedy_generate(lm.model, [prompt], 16, frozenset())[0].token_ids)
    else:
        a, b = torch.randn(256, 256), torch.randn(256, 256)

        def step() -> int:
            for _ in range(50):
                a @ b
            return 50
    time.sleep(max(0.0, start - time.time()))
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += step()
    print(json.dumps({"units": done, "seconds": time.perf_counter() - t0}), flush=True)


def _run(workload: str, procs: int, own_session: bool, seconds: float) -> float:
    """Units of work per second, summed over ``procs`` processes working at the same time."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    start = time.time() + (25 if workload == "decode" else 8)  # time to load before the common start
    kids = [subprocess.Popen([sys.executable, __file__, "--child", workload, str(start), str(seconds)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             start_new_session=own_session) for _ in range(procs)]
    rates = []
    for kid in kids:
        out, _ = kid.communicate(timeout=600)
        rec = json.loads(out.strip().splitlines()[-1])
        rates.append(rec["units"] / rec["seconds"])
    return sum(rates)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="work window per run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    print(f"{os.cpu_count()} cores; sched_autogroup_enabled "
          f"{autogroup.read_text().strip() if autogroup.exists() else 'n/a'}; load {os.getloadavg()[0]:.1f}")
    for workload in ("matmul", "decode"):
        rates: dict[str, list[float]] = {m[0]: [] for m in MODES}
        for r in range(args.rounds):
            order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
            for name, procs, own in order:
                rates[name].append(_run(workload, procs, own, args.seconds))
            print(f"[{workload}] round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}/s" for n, v in rates.items())
                  + f" (load {os.getloadavg()[0]:.1f})", flush=True)
        base = sum(rates["1 proc"]) / len(rates["1 proc"])
        for name, values in rates.items():
            mean = sum(values) / len(values)
            print(f"[{workload}] {name:<22} {mean:>9.1f} units/s  x 1 proc {mean / base:.2f}", flush=True)


if __name__ == "__main__":
    main()
