"""GPU training and inference throughput of the lifting model: bf16 vs fp32, eager vs compiled,
activation checkpointing, model FLOP utilisation (MFU) and the largest batch that fits.

Run on a CUDA machine (issue 11, item 3)::

    python benchmarks/gpu_perf.py --out gpu_perf.json                 # XS, B and L
    python benchmarks/gpu_perf.py --variants B --budget 120 --out b.json
    python benchmarks/gpu_perf.py --plan mfu --budget 300 --out mfu.json   # issue 11's headline figures first

What each figure is:

- a training step = forward + MPJPE loss + backward + AdamW step on random inputs (a fresh draw
  per timed step would only add the host-to-device copy; the data path is benchmarked apart);
  ``fp32`` runs with TF32 matrix units allowed (PyTorch's "high" matmul precision), ``bf16`` under
  ``torch.autocast(dtype=bfloat16)`` with fp32 master weights, as Accelerate's ``bf16`` does;
- times are CUDA-synchronised wall times, the median of ``--repeats`` steps after 3 warm-ups;
- FLOPs per step are counted once by ``torch.utils.flop_counter.FlopCounterMode`` on the eager
  model (matrix products and attention, the operations that dominate; element-wise work is not
  counted, as is usual for MFU); MFU = counted FLOPs / step time / the GPU's dense bf16 (or TF32)
  peak from its datasheet (H100 SXM: 989 / 495 TFLOP/s), which ``--peak-tflops`` overrides;
- "largest batch": doubling from ``--batch`` until a step runs out of memory, then bisection (to
  within 1/8 of the last good size), each try one real training step;
- ``compiled`` = ``backbone.compile_blocks()`` (regional ``torch.compile``; all blocks share one
  graph), its compile time reported separately.

Each configuration is guarded: an out-of-memory or compile failure is recorded, not fatal, and
``--budget`` seconds cap the whole run (remaining configurations are skipped and listed).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

DATASHEET_PEAK_TFLOPS = {  # dense, no sparsity: (bf16, tf32)
    "H100": (989.4, 494.7),
    "H200": (989.4, 494.7),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
}

# (variant, batch for the timed comparisons); XS at a batch large enough to leave the launch-bound regime
DEFAULT_PLAN = {"XS": 256, "B": 16, "L": 16}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_mem_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def reset_mem() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak(name: str, override: float | None) -> tuple[float, float]:
    if override:
        return override, override / 2
    for key, peaks in DATASHEET_PEAK_TFLOPS.items():
        if key in name:
            return peaks
    return float("nan"), float("nan")


def build(variant: str, batch: int, device: torch.device):
    from dualpose.model import DualPoseLifter, build_spec

    torch.manual_seed(0)
    spec = build_spec(variant)
    model = DualPoseLifter(spec).to(device)
    x = torch.randn(batch, spec.T, spec.num_joints, spec.in_channels, device=device)
    y = torch.randn(batch, spec.T, spec.num_joints, spec.out_channels, device=device)
    return spec, model, x, y


def train_step_fn(model, x, y, precision: str) -> Callable[[], None]:
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01, fused=x.is_cuda)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            pred = model(x)
        loss = (pred.float() - y).norm(dim=-1).mean()
        loss.backward()
        optim.step()
    return step


def infer_step_fn(model, x, precision: str) -> Callable[[], None]:
    model.eval()
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            model(x)
    return step


def timed(step: Callable[[], None], repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def count_flops(step: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    sync()
    return float(counter.get_total_flops())


# Model FLOPs of one training step per (variant, batch), counted without checkpointing: the MFU of a
# checkpointed step does not credit its recomputation.
MODEL_FLOPS: dict[tuple[str, int], float] = {}


def set_checkpointing(model, mode) -> None:
    from dualpose.model.blocks import set_activation_checkpointing

    set_activation_checkpointing(model, mode)


def measure(variant: str, batch: int, precision: str, ckpt, compiled: bool, mode: str, repeats: int,
            device: torch.device, peaks: tuple[float, float]) -> dict:
    reset_mem()
    spec, model, x, y = build(variant, batch, device)
    set_checkpointing(model, ckpt)
    record = {"variant": variant, "T": spec.T, "batch": batch, "precision": precision, "mode": mode,
              "checkpointing": str(ckpt), "compiled": compiled,
              "parameters": sum(p.numel() for p in model.parameters())}
    step = train_step_fn(model, x, y, precision) if mode == "train" else infer_step_fn(model, x, precision)
    if mode == "train" and (variant, batch) not in MODEL_FLOPS and not compiled and ckpt is False:
        MODEL_FLOPS[(variant, batch)] = count_flops(step)
    if mode == "train" and (variant, batch) in MODEL_FLOPS:
        record["flops_per_step"] = MODEL_FLOPS[(variant, batch)]
    if compiled:
        start = time.perf_counter()
        model.backbone.compile_blocks(dynamic=False)
        step()
        sync()
        record["compile_and_first_step_s"] = time.perf_counter() - start
    times = timed(step, repeats)
    median = statistics.median(times)
    record.update(seconds_median=median, seconds_min=min(times), repeats=repeats,
                  clips_per_s=batch / median, frames_per_s=batch * spec.T / median,
                  peak_gpu_mem_gib=peak_mem_gib())
    if "flops_per_step" in record:
        peak = peaks[0] if precision == "bf16" else peaks[1]
        record["tflops_per_s"] = record["flops_per_step"] / median / 1e12
        record["mfu"] = record["tflops_per_s"] / peak
    del model, x, y, step
    reset_mem()
    return record


def fits(variant: str, batch: int, precision: str, ckpt, device: torch.device) -> tuple[bool, float]:
    """One training step at ``batch``: (ran, peak GiB)."""
    reset_mem()
    try:
        spec, model, x, y = build(variant, batch, device)
        set_checkpointing(model, ckpt)
        train_step_fn(model, x, y, precision)()
        sync()
        return True, peak_mem_gib()
    except torch.OutOfMemoryError:
        return False, float("nan")
    finally:
        model = x = y = None  # noqa: F841
        reset_mem()


def largest_batch(variant: str, start: int, precision: str, ckpt, device: torch.device, deadline: float,
                  limit: int = 1 << 16) -> dict:
    good, good_mem, bad = 0, float("nan"), None
    batch = start
    while batch <= limit and time.monotonic() < deadline:
        ok, mem = fits(variant, batch, precision, ckpt, device)
        if not ok:
            bad = batch
            break
        good, good_mem = batch, mem
        batch *= 2
    while bad is not None and good and bad - good > max(1, good // 8) and time.monotonic() < deadline:
        mid = (good + bad) // 2
        ok, mem = fits(variant, mid, precision, ckpt, device)
        if ok:
            good, good_mem = mid, mem
        else:
            bad = mid
    return {"variant": variant, "precision": precision, "checkpointing": str(ckpt), "largest_batch": good,
            "first_failing_batch": bad, "peak_gpu_mem_gib_at_largest": good_mem,
            "complete": bad is not None or batch > limit}


def plan(variants: list[str], batch_override: dict[str, int]) -> list[tuple]:
    """(kind, variant, batch, precision, checkpointing, compiled, mode) in the order they run:
    eager timings of every variant first, then the largest batches, then the compiled models (the
    slowest to set up, so a tight budget drops them first)."""
    out = []
    for v in variants:
        b = batch_override.get(v, DEFAULT_PLAN[v])
        out += [("time", v, b, "fp32", False, False, "train"),
                ("time", v, b, "bf16", False, False, "train"),
                ("time", v, b, "bf16", "full", False, "train"),
                ("time", v, b, "bf16", "selective", False, "train"),
                ("time", v, 1, "bf16", False, False, "infer"),
                ("time", v, 64, "bf16", False, False, "infer")]
        if v == "XS":  # the batch XS trains at (launch-bound: not a quarter of the batch-256 time)
            out.append(("time", v, 64, "bf16", False, False, "train"))
    for v in variants:
        if v != "XS":
            out += [("largest", v, 16, "bf16", False, False, "train"),
                    ("largest", v, 16, "bf16", "full", False, "train"),
                    ("largest", v, 16, "bf16", "auto", False, "train"),
                    # a batch too large to keep every block's activations: auto vs full checkpointing
                    ("time", v, 64, "bf16", "auto", False, "train"),
                    ("time", v, 64, "bf16", "full", False, "train")]
    for v in variants:
        out.append(("time", v, batch_override.get(v, DEFAULT_PLAN[v]), "bf16", False, True, "train"))
    return out


# issue 11's GPU goal is bf16 MFU >= 40 % for B and L at T = 243: larger batches than the full plan's
MFU_BATCH = {"XS": 256, "B": 32, "L": 32}


def mfu_plan(variants: list[str], batch_override: dict[str, int]) -> list[tuple]:
    """The headline figures first, for a short lease: per variant (B and L before XS), bf16
    training eager then compiled at an MFU-sized batch, then the TF32 eager step."""
    order = [v for v in ("B", "L", "XS") if v in variants]
    out = []
    for v in order:
        b = batch_override.get(v, MFU_BATCH[v])
        out += [("time", v, b, "bf16", False, False, "train"), ("time", v, b, "bf16", False, True, "train")]
    for v in order:
        out.append(("time", v, batch_override.get(v, MFU_BATCH[v]), "fp32", False, False, "train"))
    return out


PLANS = {"full": plan, "mfu": mfu_plan}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_PLAN), choices=list(DEFAULT_PLAN))
    ap.add_argument("--batch", nargs="*", default=[], help="VARIANT=BATCH for the timed comparisons")
    ap.add_argument("--plan", choices=sorted(PLANS), default="full",
                    help="full: every comparison (eager first, compiled last); mfu: bf16 eager and compiled "
                         "training at MFU-sized batches first (B, L, then XS)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for the whole run")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: datasheet)")
    ap.add_argument("--out", type=Path, default=Path("gpu_perf.json"))
    ap.add_argument("--cpu-smoke", action="store_true", help="run the plan on the CPU (checks the script)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu_perf: no CUDA device (--cpu-smoke checks the script on the CPU)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    deadline = time.monotonic() + args.budget
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peaks = gpu_peak(name, args.peak_tflops)
    overrides = {k: int(v) for k, v in (item.split("=") for item in args.batch)}
    result = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
              "peak_tflops_bf16": peaks[0], "peak_tflops_tf32": peaks[1], "command": " ".join(sys.argv),
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "runs": [], "largest": [], "skipped": []}

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=2, default=float))

    for kind, v, b, prec, ckpt, compiled, mode in PLANS[args.plan](args.variants, overrides):
        label = f"{kind} {v} bs{b} {prec} ckpt={ckpt} compiled={compiled} {mode}"
        if time.monotonic() > deadline:
            result["skipped"].append(label)
            continue
        start = time.monotonic()
        try:
            if kind == "time":
                rec = measure(v, b, prec, ckpt, compiled, mode, args.repeats, device, peaks)
                result["runs"].append(rec)
                mfu = f" MFU {rec['mfu']:.1%}" if "mfu" in rec else ""
                print(f"{label}: {rec['seconds_median'] * 1e3:.1f} ms, {rec['clips_per_s']:.0f} clips/s, "
                      f"{rec['peak_gpu_mem_gib']:.1f} GiB{mfu}", flush=True)
            else:
                rec = largest_batch(v, b, prec, ckpt, device, deadline,
                                    limit=(1 << 16) if device.type == "cuda" else 2 * b)
                result["largest"].append(rec)
                print(f"{label}: largest batch {rec['largest_batch']} ({rec['peak_gpu_mem_gib_at_largest']:.1f} GiB), "
                      f"first failing {rec['first_failing_batch']}", flush=True)
        except torch.OutOfMemoryError:
            result["runs"].append({"variant": v, "batch": b, "precision": prec, "checkpointing": str(ckpt),
                                   "compiled": compiled, "mode": mode, "error": "out of memory"})
            print(f"{label}: out of memory", flush=True)
            reset_mem()
        except Exception as exc:  # a compile failure must not lose the other figures
            result["runs"].append({"variant": v, "batch": b, "precision": prec, "checkpointing": str(ckpt),
                                   "compiled": compiled, "mode": mode, "error": f"{type(exc).__name__}: {exc}"[:500]})
            print(f"{label}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            reset_mem()
        print(f"  ({time.monotonic() - start:.1f} s)", flush=True)
        save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
