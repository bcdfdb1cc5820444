"""Eager vs regionally compiled (``backbone.compile_blocks(dynamic=True)``) training step on CPU.

A probe, not the anchor protocol: one process, the median of 5 steps after one warm-up, eager
first, then the same model compiled (compilation time printed separately).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/perf_compile_train.py XS 4 1    # variant, batch, threads
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import median_seconds  # noqa: E402

from dualpose.model import DualPoseLifter, build_spec  # noqa: E402

torch.set_num_threads(int(sys.argv[3]))
variant, batch = sys.argv[1], int(sys.argv[2])
spec = build_spec(variant)
model = DualPoseLifter(spec).train()
x = torch.randn(batch, spec.T, spec.num_joints, spec.in_channels)
y = torch.randn(batch, spec.T, spec.num_joints, spec.out_channels)
optim = torch.optim.AdamW(model.parameters())


def step() -> None:
    optim.zero_grad()
    (model(x) - y).norm(dim=-1).mean().backward()
    optim.step()


for name in ("eager", "compiled"):
    if name == "compiled":
        t0 = time.perf_counter()
        model.backbone.compile_blocks(dynamic=True)
        step()
        print("compile + first step, s", time.perf_counter() - t0, flush=True)
    median = median_seconds(step, warmup=1, repeats=5)
    print(name, "s/step", median, "frames/s", batch * spec.T / median, flush=True)
