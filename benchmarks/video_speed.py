"""End-to-end speed of `dualpose infer` on CPU, split into decode / detector / lifter / rendering.

Runs the Sports2D demo video (fetched with `pip download`, as in video_quality.py) through:
MediaPipe BlazePose in its own environment (--mediapipe-python; the worker times its OpenCV
decode and its detector separately), then tracking, lifting (flip TTA) and the outputs in this
process, and the MP4 rendering (whose second decode, by imageio-ffmpeg, is timed apart).
Speed does not depend on trained values, so by default the lifter is a randomly initialised
model of the variant asked for (--variant XS = 12 blocks x 64 channels, T = 27); --weights
times given weights instead. Thread count: torch's default unless --threads.

    python benchmarks/video_speed.py --mediapipe-python /path/to/mp-env/bin/python [--variant XS]

Writes benchmarks/RESULTS-video-speed.md (--out) with the command and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.video_quality import sports2d_video  # noqa: E402
from dualpose.model.backbone import DualPoseLifter  # noqa: E402
from dualpose.model.config import build_spec  # noqa: E402
from dualpose.model.weights import save_weights  # noqa: E402
from dualpose.video.lift import Lifter  # noqa: E402
from dualpose.video.pipeline import InferOptions, run_infer  # noqa: E402
from dualpose.weights import resolve_weights  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mediapipe-python", default=os.environ.get("DUALPOSE_MEDIAPIPE_PYTHON"), required=False)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--variant", default="XS")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", default="/tmp/dualpose-video-quality")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS-video-speed.md"))
    args = ap.parse_args()
    if not args.mediapipe_python:
        ap.error("needs --mediapipe-python (or DUALPOSE_MEDIAPIPE_PYTHON): an environment with mediapipe 0.10.21")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/video_speed.py " + " ".join(sys.argv[1:])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    video = sports2d_video(workdir)
    with tempfile.TemporaryDirectory() as tmp:
        if args.weights:
            folder, label = resolve_weights(args.weights), args.weights
        else:
            spec = build_spec(args.variant)
            folder = save_weights(DualPoseLifter(spec), spec, Path(tmp) / "w")
            label = f"random-init {args.variant} ({spec.depth} x {spec.dim}, T = {spec.T})"
        lifter = Lifter.from_weights(folder, device="cpu")
        landmarks = Path(tmp) / "demo_blazepose33.json"
        t0 = time.perf_counter()
        run = run_infer(video, Path(tmp) / "out", lifter,
                        InferOptions(detector_python=args.mediapipe_python, keypoints_out=str(landmarks),
                                     render=True, viewer=True, device="cpu"))
        total = time.perf_counter() - t0
        timing = json.loads(landmarks.read_text())["timing"]
        # the lifter alone again with non-overlapping windows (--stride T): each frame predicted once
        t1 = time.perf_counter()
        for t in run.result.tracks:
            lifter.lift(t.kp2d, t.conf2d, run.result.width, run.result.height, run.result.fps, stride=lifter.window)
        lift_stride_t = time.perf_counter() - t1
    frames = run.frames
    s = run.seconds
    worker = s.get("detector (worker, incl. decode)", 0.0)
    parts = [
        ("decode (OpenCV, in the MediaPipe worker)", timing["decode_s"]),
        ("detector (MediaPipe BlazePose, complexity 1)", timing["detector_s"]),
        ("worker start-up and JSON (MediaPipe process)", worker - timing["decode_s"] - timing["detector_s"]),
        ("read keypoints + tracking", s.get("read keypoints", 0.0) + s.get("tracking", 0.0)),
        (f"lifter ({label}, flip TTA, {len(run.result.tracks)} tracks)", s.get("lifter", 0.0)),
        (f"lifter with --stride {lifter.window} (no window overlap; not in the total)", lift_stride_t),
        ("scale, trajectory, floor", s.get("metric", 0.0)),
        ("outputs (npz, Parquet, CSV, JSON) + HTML viewer", s.get("outputs", 0.0) + s.get("viewer", 0.0)),
        ("decode for rendering (imageio-ffmpeg)", s.get("decode (rendering pass)", 0.0)),
        ("rendering (draw + H.264 encode)", s.get("rendering", 0.0)),
    ]
    det_lift = timing["detector_s"] + s.get("lifter", 0.0)
    lines = ["# Video speed: `dualpose infer` end to end on CPU", "",
             f"Produced by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
             f"Machine: {os.cpu_count()} CPU cores; load average (1/5/15 min) at start: {load} (other jobs on "
             "the cores make these figures lower bounds). torch threads: "
             f"{torch.get_num_threads()}.",
             f"Input: Sports2D demo.mp4, {frames} frames, {run.result.width}x{run.result.height}.", "",
             "| step | seconds | frames/s |", "|---|---:|---:|"]
    for name, sec in parts:
        lines.append(f"| {name} | {sec:.2f} | {frames / sec:.1f} |" if sec > 0 else f"| {name} | {sec:.2f} | — |")
    lines += [f"| **end to end (wall)** | {total:.2f} | {frames / total:.1f} |",
              f"| detector + lifter (issue 9 target >= 25 frames/s) | {det_lift:.2f} | {frames / det_lift:.1f} |",
              f"| detector + lifter with --stride {lifter.window} | {timing['detector_s'] + lift_stride_t:.2f} | "
              f"{frames / (timing['detector_s'] + lift_stride_t):.1f} |", ""]
    out = Path(args.out)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text("\n".join(lines) + "\n")
    os.replace(tmp_out, out)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
