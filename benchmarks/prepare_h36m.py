"""Benchmark: prepare a Human3.6M-sized MotionBERT pickle into keypoint tables.

Two steps, so that generating the input is not measured:

    python benchmarks/prepare_h36m.py generate /tmp/h36m_bench.pkl          # ~2.1M frames, ~1.7 GB
    python benchmarks/prepare_h36m.py run /tmp/h36m_bench.pkl /tmp/h36m_tables

``run`` does what ``dualpose prepare`` does for one data set (adapter, then ``to_arrow`` and
``write_keypoint_table`` for each part) in a fresh process and reports wall time and peak
resident memory (``ru_maxrss``). Targets: < 60 s and < 2 GB on a 2-core machine.

The generated file has the real layout and size: train 1,559,752 frames (S1, S5, S6, S7, S8) and
test 566,920 (S9, S11), 15 actions x 2 sub-actions x 4 cameras per subject, float32 arrays,
string columns as numpy unicode arrays (``--strings list`` for Python lists).
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import time
from pathlib import Path

import numpy as np

TRAIN_FRAMES = 1_559_752
TEST_FRAMES = 566_920
SUBJECTS = {"train": (1, 5, 6, 7, 8), "test": (9, 11)}
ACTIONS = {2: "Directions", 3: "Discussion", 4: "Eating", 5: "Greeting", 6: "Phoning", 7: "Posing",
           8: "Purchases", 9: "Sitting", 10: "SittingDown", 11: "Smoking", 12: "Photo", 13: "Waiting",
           14: "Walking", 15: "WalkDog", 16: "WalkTogether"}
CAMERAS = ("54138969", "55011271", "58860488", "60457274")


def _video_lengths(n_videos: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """Random lengths around 1000-5000 frames that add up to ``total`` exactly."""
    raw = rng.uniform(1000, 5000, n_videos)
    lengths = np.floor(raw / raw.sum() * total).astype(np.int64)
    lengths[: total - lengths.sum()] += 1
    assert lengths.sum() == total
    return lengths


def make_split(split: str, total: int, rng: np.random.Generator, strings: str) -> dict:
    videos = [(s, a, u, c) for s in SUBJECTS[split] for a in ACTIONS for u in (1, 2) for c in range(1, 5)]
    lengths = _video_lengths(len(videos), total, rng)
    sources = np.array([f"s_{s:02d}_act_{a:02d}_subact_{u:02d}_ca_{c:02d}" for s, a, u, c in videos])
    cams = np.array([CAMERAS[c - 1] for _, _, _, c in videos])
    actions = np.array([ACTIONS[a] for _, a, _, _ in videos])
    joint_2d = rng.uniform(200, 800, (total, 17, 2)).astype(np.float32)
    factor = rng.uniform(3.5, 6.5, total).astype(np.float32)
    joint3d_image = np.empty((total, 17, 3), np.float32)
    joint3d_image[..., :2] = joint_2d
    joint3d_image[..., 2] = rng.uniform(-60, 60, (total, 17))
    data = {
        "joint_2d": joint_2d,
        "confidence": rng.uniform(0, 1, (total, 17)).astype(np.float32),
        "joint3d_image": joint3d_image,
        "joints_2.5d_image": joint3d_image * factor[:, None, None],
        "2.5d_factor": factor,
        "camera_name": np.repeat(cams, lengths),
        "action": np.repeat(actions, lengths),
        "source": np.repeat(sources, lengths),
    }
    if strings == "list":
        for key in ("camera_name", "action", "source"):
            data[key] = data[key].tolist()
    return data


def generate(path: Path, strings: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = {"train": make_split("train", TRAIN_FRAMES, rng, strings),
            "test": make_split("test", TEST_FRAMES, rng, strings)}
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=4)
    print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB)")


def run(path: Path, out: Path) -> dict:
    from dualpose.data.adapters import h36m_pickle
    from dualpose.data.schema import to_arrow, write_keypoint_table
    from dualpose.io.atomic import atomic_dir
    from dualpose.skeleton import H36M_17

    start = time.perf_counter()
    parts = {}
    with atomic_dir(out) as tmp:
        t_part = time.perf_counter()
        for part in h36m_pickle.convert({"pickle": path}, h36m_pickle.Options(), "h36m", H36M_17):
            table = to_arrow(part.frames, H36M_17, source=f"h36m/{part.name}")
            write_keypoint_table(table, tmp / f"{part.name}.parquet", H36M_17)
            now = time.perf_counter()
            parts[part.name] = {"rows": table.num_rows, "seconds": round(now - t_part, 2)}
            del table, part
            t_part = now
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": round(seconds, 2), "peak_rss_gib": round(peak_kib / 2**20, 3),
            "rows": sum(p["rows"] for p in parts.values()), "parts": parts,
            "output_mib": round(sum(f.stat().st_size for f in out.glob("*.parquet")) / 2**20, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("pickle", type=Path)
    g.add_argument("--strings", choices=("array", "list"), default="array")
    g.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("pickle", type=Path)
    r.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "generate":
        generate(args.pickle, args.strings, args.seed)
    else:
        result = run(args.pickle, args.out)
        json.dump(result, sys.stdout, indent=2)
        print()


if __name__ == "__main__":
    main()
