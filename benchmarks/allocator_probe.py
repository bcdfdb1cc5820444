"""Does transparent huge-page allocation rescue the opt-in allocator setting? One B training step.

``DUALPOSE_MALLOC_TUNING=1`` (``dualpose/train/allocator.py``) fixes glibc's mmap threshold so freed
activations go back to the OS, at the price of a fresh mapping (and page faults) for every large
tensor. PyTorch's own ``THP_MEM_ALLOC_ENABLE=1`` aligns large CPU allocations to 2 MiB and asks
for huge pages (``madvise``), which cuts the number of faults by up to 512x. This measures B at
T = 243, batch 2, training, one process per setting (the median of 2 timed steps after 1 warm-up,
and the process's peak RSS)::

    OMP_NUM_THREADS=1 python benchmarks/allocator_probe.py default none
    OMP_NUM_THREADS=1 python benchmarks/allocator_probe.py tuned none
    THP_MEM_ALLOC_ENABLE=1 OMP_NUM_THREADS=1 python benchmarks/allocator_probe.py tuned none

Arguments: allocator (``default`` or ``tuned``), activation checkpointing (``none``, ``full``, ``auto``).
Results: ``benchmarks/RESULTS-allocator-probe.json`` and RESULTS-perf.md.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import median_seconds, model_step  # noqa: E402

from dualpose.model import DualPoseLifter, build_spec  # noqa: E402
from dualpose.model.blocks import set_activation_checkpointing  # noqa: E402


def main() -> None:
    allocator, ckpt = sys.argv[1], sys.argv[2]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    if allocator == "tuned":
        os.environ["DUALPOSE_MALLOC_TUNING"] = "1"
        from dualpose.train.allocator import tune_cpu_allocator
        if not tune_cpu_allocator():
            sys.exit("the allocator setting was not applied (glibc only)")
    elif allocator != "default":
        sys.exit(f"allocator must be 'default' or 'tuned', got {allocator!r}")
    spec = build_spec("B")
    model = DualPoseLifter(spec)
    set_activation_checkpointing(model, {"none": False, "full": "full", "auto": "auto"}[ckpt])
    x = torch.randn(2, spec.T, spec.num_joints, spec.in_channels)
    y = torch.randn(2, spec.T, spec.num_joints, spec.out_channels)
    median = median_seconds(model_step(model, x, y, "train"), warmup=1, repeats=2)
    print(json.dumps({"allocator": allocator, "checkpointing": ckpt,
                      "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                      "threads": torch.get_num_threads(), "seconds_median": median, "frames_per_s": 2 * spec.T / median,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
