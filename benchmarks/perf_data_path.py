"""Data path against model consumption: how many training frames per second the feed
(:meth:`dualpose.train.feeds.ClipSet.batch`, the call the finetuning loop makes every step, with
the flip augmentation and flip draw) delivers, against how many the model consumes in a training
step at the same batch and T (the "after" training figures of benchmarks/perf_vs_anchor.py).

The feed is in-memory: every table row was encoded once, a batch is one fancy index of (B, T) row
indices plus the flip. A synthetic table of H36M size (1.56 M rows, 17 joints) stands in for the
real one, so the figure does not depend on a data set being present.

Usage::

    python benchmarks/perf_data_path.py --perf-json /tmp/perf.json   # ratios against a perf run
    python benchmarks/perf_data_path.py                              # feed throughput only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch

from dualpose.data.clips import SPLIT_CODE, ClipIndex
from dualpose.skeleton import get_skeleton
from dualpose.train.feeds import ClipSet, EncodedTable, flip_draw

PLAN = {"XS": (27, 4), "S": (81, 4), "B": (243, 2), "L": (243, 2)}  # T, training batch (anchors)


def feed_frames_per_s(T: int, batch: int, rows: int = 1_560_000, calls: int = 200) -> float:
    skeleton = get_skeleton("h36m17")
    j = skeleton.num_joints
    gen = torch.Generator().manual_seed(0)
    table = EncodedTable(arrays=SimpleNamespace(skeleton=skeleton), inputs=torch.randn(rows, j, 3, generator=gen),
                         targets=torch.randn(rows, j, 3, generator=gen), codec=None)  # type: ignore[arg-type]
    n = rows // T
    index = ClipIndex(clip_id=np.arange(n), split=np.full(n, SPLIT_CODE["train"], np.int8),
                      video=np.zeros(n, np.int32), start=np.arange(n, dtype=np.int64) * T,
                      length=np.full(n, T, np.int64), T=T, video_names=("synthetic",), strides={},
                      num_rows=rows, layout_digest="synthetic")
    clips = ClipSet(table, index, "train")
    rng = np.random.default_rng(0)
    times = []
    for step in range(calls):
        items = rng.integers(0, len(clips), batch)
        t0 = time.perf_counter()
        flip = flip_draw(0, step, batch, 0.5)
        out = clips.batch(items, flip)
        _ = out["input"].shape, out["target"].shape
        times.append(time.perf_counter() - t0)
    return batch * T / statistics.median(times[10:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--perf-json", help="raw results of benchmarks/perf_vs_anchor.py --json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = {}
    if args.perf_json:
        for r in json.load(open(args.perf_json)):
            if r["mode"] == "train" and r["side"] == "after":
                model[r["variant"]] = r["frames_per_s"]
    print("| variant (T) | batch | feed frames/s | model training frames/s | feed / model |")
    print("|---|---|---|---|---|")
    for variant, (T, batch) in PLAN.items():
        feed = feed_frames_per_s(T, batch)
        m = model.get(variant)
        print(f"| {variant} ({T}) | {batch} | {feed:,.0f} | {'-' if m is None else f'{m:,.0f}'} | "
              f"{'-' if m is None else f'{feed / m:,.0f}x'} |")


if __name__ == "__main__":
    main()
