"""How fast can one inference call of a variant be on this CPU, at most? The matrix-product bound.

Issue 11 asks for XS inference at >= 2x MotionAGFormer (667 frames/s at batch 1 in
../shared/docs/perf-anchors.md, so >= 1,334 frames/s: <= 20 ms per 27-frame call). Both models run
the same matrix products (Linear layers, attention); no rewrite of the elementwise work can make a
call faster than those products alone. This script measures that bound directly:

1. the median eager forward (eval, no_grad) of the variant, as ``perf_vs_anchor.py`` times it;
2. every matrix product of one forward (``mm``, ``addmm``, ``bmm``, ``baddbmm``), recorded with
   its operand shapes by a ``TorchDispatchMode``, then **replayed alone**, back to back, on fresh
   tensors of those shapes: the time a perfect implementation would still spend if every other
   operator (GELU, softmax, LayerNorm, copies, kNN, Python) cost nothing;
3. the FLOPs of those products and the rate the replay reached, beside the rate of one large
   square product (this CPU's practical GEMM peak with the same library);
4. steps 1-2 again with bf16 weights and inputs (the CPU's ``avx512_bf16`` path), for reference:
   a lower-precision route is the only one whose bound lies past the goal when fp32's does not.

Usage (idle machine; the anchors' protocol: 2 threads, fp32)::

    OMP_NUM_THREADS=2 python benchmarks/matmul_bound.py --variant XS --batch 1 --out benchmarks/RESULTS-matmul-bound.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import median_seconds  # noqa: E402

MATMUL_OPS = {
    torch.ops.aten.mm.default: "mm",
    torch.ops.aten.addmm.default: "addmm",
    torch.ops.aten.bmm.default: "bmm",
    torch.ops.aten.baddbmm.default: "baddbmm",
}
PEER_INFER1 = {"XS": 667, "S": 273, "B": 140}  # MotionAGFormer, frames/s at batch 1 (perf-anchors.md)


class MatmulRecorder(TorchDispatchMode):
    """Records (op, operand shapes, extra kwargs) of every matrix product that runs inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[tuple[int, ...]], dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = MATMUL_OPS.get(func)
        if name is not None:
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            scalars = {k: v for k, v in kwargs.items() if k in ("alpha", "beta")}
            self.calls.append((name, shapes, scalars))
        return func(*args, **kwargs)


def matmul_flops(name: str, shapes: list[tuple[int, ...]]) -> int:
    """2 x M x N x K per product (times the batch for bmm/baddbmm); the bias add is not counted."""
    if name == "mm":
        (m, k), (_, n) = shapes
        return 2 * m * n * k
    if name == "addmm":
        (m, k), (_, n) = shapes[1], shapes[2]
        return 2 * m * n * k
    a, b = (shapes[0], shapes[1]) if name == "bmm" else (shapes[1], shapes[2])
    return 2 * a[0] * a[1] * a[2] * b[2]


def replay(calls: list, dtype: torch.dtype, warmup: int, repeats: int) -> float:
    """Median seconds of running exactly these products back to back (operands made once)."""
    ops = {"mm": torch.mm, "addmm": torch.addmm, "bmm": torch.bmm, "baddbmm": torch.baddbmm}
    prepared = [(ops[name], [torch.randn(s, dtype=dtype) for s in shapes], scalars) for name, shapes, scalars in calls]

    def run() -> None:
        for op, operands, scalars in prepared:
            op(*operands, **scalars)
    with torch.no_grad():
        return median_seconds(run, warmup, repeats)


def measure(variant: str, batch: int, dtype: torch.dtype, warmup: int, repeats: int) -> dict:
    from dualpose.model import DualPoseLifter, build_spec

    torch.manual_seed(0)
    spec = build_spec(variant)
    model = DualPoseLifter(spec).eval().to(dtype)
    x = torch.randn(batch, spec.T, spec.num_joints, spec.in_channels, dtype=dtype)
    with torch.no_grad():
        forward = median_seconds(lambda: model(x), warmup, repeats)
        recorder = MatmulRecorder()
        with recorder:
            model(x)
    calls = recorder.calls
    flops = sum(matmul_flops(name, shapes) for name, shapes, _ in calls)
    products = replay(calls, dtype, warmup, repeats)
    frames = batch * spec.T
    by_op: dict[str, int] = {}
    for name, _, _ in calls:
        by_op[name] = by_op.get(name, 0) + 1
    return {
        "dtype": str(dtype).replace("torch.", ""), "variant": variant, "batch": batch, "T": spec.T,
        "forward_ms": forward * 1e3, "forward_frames_per_s": frames / forward,
        "matmul_calls": len(calls), "matmul_calls_by_op": by_op, "matmul_gflop": flops / 1e9,
        "matmul_replay_ms": products * 1e3, "matmul_replay_gflop_per_s": flops / products / 1e9,
        "matmul_share_of_forward": products / forward,
        "bound_frames_per_s": frames / products,
    }


def gemm_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = median_seconds(lambda: torch.mm(a, b), 3, repeats)
    return 2 * n ** 3 / seconds / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="XS")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-bf16", action="store_true", help="fp32 only")
    ap.add_argument("--out", type=Path, help="write the JSON record here (printed either way)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = [torch.float32] + ([] if args.no_bf16 else [torch.bfloat16])
    record = {
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} python benchmarks/matmul_bound.py "
                   + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{args.threads} threads, load {os.getloadavg()[0]:.2f}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": [],
    }
    for dtype in dtypes:
        run = measure(args.variant, args.batch, dtype, args.warmup, args.repeats)
        run["gemm_peak_gflop_per_s_1024"] = gemm_peak(dtype)
        record["runs"].append(run)
    peer = PEER_INFER1.get(args.variant) if args.batch == 1 else None
    if peer:
        record["goal_frames_per_s"] = 2 * peer
        record["goal"] = f">= 2x MotionAGFormer's {peer} frames/s at batch 1 (perf-anchors.md)"
    record["load_after"] = round(os.getloadavg()[0], 2)
    text = json.dumps(record, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
