"""Inference latency of one variant in PyTorch eager, PyTorch regional-compiled and onnxruntime.

Usage::

    python benchmarks/model_runtimes.py --variant XS --batch 1 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.mean(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="XS")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time inductor (regional) compilation")
    args = parser.parse_args()

    import onnxruntime as ort

    from dualpose.model import DualPoseLifter, build_spec
    from dualpose.model.export import INPUT_NAME, OUTPUT_NAME, export_onnx

    torch.set_num_threads(args.threads)
    spec = build_spec(args.variant)
    model = DualPoseLifter(spec).eval()
    x = torch.randn(args.batch, spec.T, spec.num_joints, spec.in_channels)
    frames = args.batch * spec.T
    rows = []

    with torch.no_grad():
        rows.append(("PyTorch eager", timed(lambda: model(x), args.repeats)))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {INPUT_NAME: x.numpy()}
        rows.append(("onnxruntime", timed(lambda: session.run([OUTPUT_NAME], feed), args.repeats)))
    if args.compile:
        start = time.perf_counter()
        model.backbone.compile_blocks()
        with torch.no_grad():
            model(x)
        cold = time.perf_counter() - start
        with torch.no_grad():
            rows.append((f"PyTorch compiled blocks (cold start {cold:.0f} s)", timed(lambda: model(x), args.repeats)))

    print(f"{args.variant}, T={spec.T}, batch {args.batch}, {args.threads} thread(s), mean of {args.repeats}")
    print("| runtime | ms/call | frames/s |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {1000 * seconds:.1f} | {frames / seconds:.0f} |")


if __name__ == "__main__":
    main()
