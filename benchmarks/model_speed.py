"""CPU speed and memory of the lifting model, per variant at its own clip length T.

Measures, each in a fresh subprocess (so that peak memory belongs to one measurement):

- inference (eval, no_grad) at batch 1 and batch 8: frames per second (batch x T / time per call);
- a training step (forward, MPJPE loss, backward, AdamW step): sequences per second;
- peak resident memory (ru_maxrss) of the process, and its growth over the model alone.

Usage::

    python benchmarks/model_speed.py                          # all variants, markdown table
    python benchmarks/model_speed.py --variants XS S --threads 2
    python benchmarks/model_speed.py one --variant XS --mode infer --batch 1   # one measurement (JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import model_step, rss_mib  # noqa: E402

DEFAULT_TRAIN_BATCH = {"XS": 8, "S": 8, "B": 2, "L": 2}


def measure(variant: str, mode: str, batch: int, repeats: int, threads: int) -> dict:
    import torch

    from dualpose.model import DualPoseLifter, build_spec

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = build_spec(variant)
    model = DualPoseLifter(spec)
    x = torch.randn(batch, spec.T, spec.num_joints, spec.in_channels)
    y = torch.randn(batch, spec.T, spec.num_joints, spec.out_channels)
    base_rss = rss_mib()
    step = model_step(model, x, y, mode)

    step()  # warm-up (allocator, optimiser state)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    best, mean = min(times), sum(times) / len(times)
    return {
        "variant": variant, "mode": mode, "batch": batch, "T": spec.T, "threads": threads,
        "seconds_best": best, "seconds_mean": mean, "repeats": repeats,
        "frames_per_s": batch * spec.T / mean, "sequences_per_s": batch / mean,
        "peak_rss_mib": rss_mib(), "model_rss_mib": base_rss,
    }


def run_one(variant: str, mode: str, batch: int, repeats: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "one", "--variant", variant, "--mode", mode, "--batch", str(batch),
           "--repeats", str(repeats), "--threads", str(threads)]
    load_before = os.getloadavg()[0]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="all", choices=["all", "one"])
    parser.add_argument("--variants", nargs="+", default=["XS", "S", "B", "L"])
    parser.add_argument("--variant", default="XS")
    parser.add_argument("--mode", choices=["infer", "train"], default="infer")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=0, help="timed calls (default: 5 for XS/S, 2 for B/L)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1: robust on a shared machine; 2 spins badly under load)")
    parser.add_argument("--json", help="also write all results to this JSON file")
    args = parser.parse_args()

    def repeats_for(variant: str) -> int:
        return args.repeats or (5 if variant in ("XS", "S") else 2)

    if args.command == "one":
        print(json.dumps(measure(args.variant, args.mode, args.batch, repeats_for(args.variant), args.threads)))
        return

    import torch

    print(f"# machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, threads {args.threads}")
    print("| variant | T | measurement | batch | s/call mean (best) | frames/s mean (best) | seq/s mean (best) "
          "| peak RSS MiB (model alone) | load avg before/after |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for variant in args.variants:
        plan = [("infer", 1), ("infer", 8), ("train", DEFAULT_TRAIN_BATCH.get(variant, 2))]
        for mode, batch in plan:
            r = run_one(variant, mode, batch, repeats_for(variant), args.threads)
            results.append(r)
            label = "inference" if mode == "infer" else "training step"
            frames, best = batch * r["T"], r["seconds_best"]
            print(f"| {variant} | {r['T']} | {label} | {batch} | {r['seconds_mean']:.3f} ({best:.3f}) | "
                  f"{r['frames_per_s']:.0f} ({frames / best:.0f}) | {r['sequences_per_s']:.2f} ({batch / best:.2f}) | "
                  f"{r['peak_rss_mib']:.0f} "
                  f"({r['model_rss_mib']:.0f}) | {r['load_before']:.1f}/{r['load_after']:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
