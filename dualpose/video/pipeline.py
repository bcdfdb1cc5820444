"""``dualpose infer``: a video, an image folder or a keypoint file -> 3D per person -> files.

Steps (each timed, for benchmarks/video_speed.py): decode -> detector -> tracking -> lifter
(per track) -> bone lengths fixed per track -> metric scale, trajectory, floor, optional smoothing
(bone lengths imposed again on the smoothed poses) -> outputs -> rendering.

Why bones before scale: the stature scale and the root trajectory are then computed from a body
whose size does not change from frame to frame (the lengths are estimated in the model's units;
scaling is uniform, so they carry over to mm exactly). Why again after smoothing: the One-Euro
filter averages joint positions over time, which shortens rotating bones; the same per-track
lengths (in mm) are imposed on the smoothed poses so that every output keeps them.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dualpose.errors import DataFormatError
from dualpose.keypoint_formats import get_format
from dualpose.skeleton import H36M_17
from dualpose.video import decode
from dualpose.video.bones import BoneOptions, constrain_track, impose_bone_lengths
from dualpose.video.detectors import Detections, load_keypoint_file, people_to_detections
from dualpose.video.lift import Lifter
from dualpose.video.metric import Intrinsics, root_trajectory, stature_scale, world_frame
from dualpose.video.outputs import FORMATS, InferenceResult, LiftedTrack, write_outputs
from dualpose.video.smoothing import one_euro
from dualpose.video.tracking import TrackingOptions, build_tracks, dense_track, select_tracks

KEYPOINT_SUFFIXES = (".json",)


@dataclass
class InferOptions:
    keypoint_format: str = "coco17"  # for keypoint files
    detector: str = "mediapipe"  # for videos and image folders
    detector_python: str | None = None  # run MediaPipe with this interpreter (its own environment)
    keypoints_out: str | None = None  # where the worker's BlazePose JSON goes (default beside the video)
    person: str = "all"  # tracking.select_tracks rule
    fps: float | None = None  # overrides the source's frame rate
    width: int | None = None  # for keypoint files that lack the image size
    height: int | None = None
    stature_mm: float = 1700.0
    focal_px: float | None = None
    cx: float | None = None
    cy: float | None = None
    bones: str = "fixed"  # "fixed": one length per bone per track (dualpose.video.bones); "raw": as lifted
    bone_options: BoneOptions = field(default_factory=BoneOptions)
    smooth: bool = False
    smooth_min_cutoff_hz: float = 1.0
    smooth_beta: float = 0.01  # per mm/s
    formats: tuple[str, ...] = FORMATS
    render: bool = False
    viewer: bool = True
    render_height: int | None = None
    flip: bool = True
    stride: int | None = None  # lifting windows start every stride frames (default T // 3)
    device: str | None = None
    max_frames: int | None = None
    tracking: TrackingOptions = field(default_factory=TrackingOptions)


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[name] += now - t0
        return now


def source_kind(path: Path) -> str:
    if path.is_file() and path.suffix.lower() in KEYPOINT_SUFFIXES:
        return "keypoints"
    if path.is_dir():
        return "images"
    if path.is_file():
        return "video"
    raise DataFormatError(path, "<input>", "a video file, a folder of images or a keypoint JSON file", "not found")


def make_detector(name: str):
    if name == "mediapipe":
        from dualpose.video.detectors import MediaPipeDetector

        return MediaPipeDetector()
    raise ValueError(f"unknown detector {name!r}; built in: mediapipe (or give a keypoint JSON file)")


def _timed_frames(path: Path, timer: Timer, limit: int | None) -> Iterator[np.ndarray]:
    it = decode.iter_frames(path, limit)
    while True:
        t0 = time.perf_counter()
        try:
            frame = next(it)
        except StopIteration:
            return
        finally:
            timer.add("decode", t0)
        yield frame


def detect(path: Path, options: InferOptions, timer: Timer, detector=None) -> Detections:
    kind = source_kind(path)
    if kind == "keypoints":
        t0 = time.perf_counter()
        det = load_keypoint_file(path, options.keypoint_format, width=options.width, height=options.height,
                                 fps=options.fps)
        timer.add("read keypoints", t0)
        return det
    if detector is None and options.detector_python:
        from dualpose.video.detectors import run_mediapipe_worker

        if kind == "images" and options.fps is None:
            raise DataFormatError(path, "fps", "a frame rate for a folder of images (--fps)", "none given")
        t0 = time.perf_counter()
        stem = path.stem if path.is_file() else path.name
        out_json = Path(options.keypoints_out or path.with_name(stem + "_blazepose33.json"))
        run_mediapipe_worker(options.detector_python, path, out_json, options.max_frames, options.fps)
        timer.add("detector (worker, incl. decode)", t0)
        det = load_keypoint_file(out_json, "blazepose33", fps=options.fps)
        det.detector = "mediapipe-blazepose (worker)"
        return det
    info = decode.probe(path, options.fps)
    detector = detector or make_detector(options.detector)
    rows = []
    count = 0
    for i, frame in enumerate(_timed_frames(path, timer, options.max_frames)):
        t0 = time.perf_counter()
        rows.extend((i, p) for p in detector.detect(frame))
        timer.add("detector", t0)
        count = i + 1
    if not count:
        raise DataFormatError(path, "<frames>", "at least one frame", "none decoded")
    return people_to_detections(rows, get_format(detector.keypoint_format), width=info.width, height=info.height,
                                fps=info.fps, num_frames=count, source=str(path), detector=detector.name,
                                skeleton=H36M_17)


BONE_MODES = ("fixed", "raw")


def check_bones_option(options: InferOptions) -> None:
    if options.bones not in BONE_MODES:
        raise ValueError(f"--bones {options.bones!r}: expected one of {', '.join(BONE_MODES)}")


def lift_detections(det: Detections, lifter: Lifter, options: InferOptions, timer: Timer) -> InferenceResult:
    check_bones_option(options)
    fixed = options.bones == "fixed"
    t0 = time.perf_counter()
    tracks = select_tracks(det, build_tracks(det, options.tracking), options.person)
    t0 = timer.add("tracking", t0)
    cam = Intrinsics.resolve(det.width, det.height, options.focal_px, options.cx, options.cy)
    sk = lifter.skeleton
    lifted = []
    for track in tracks:
        frames, kp, conf = dense_track(det, track)
        t0 = time.perf_counter()
        pred = lifter.lift(kp, conf, det.width, det.height, det.fps, options.stride)
        t0 = timer.add("lifter", t0)
        valid = (conf > 0).sum(-1) >= options.tracking.min_joints
        raw = pred
        lengths = None
        if fixed:
            pred, lengths = constrain_track(raw, sk, conf, valid, options.bone_options)
            t0 = timer.add("bones", t0)
        scale = stature_scale(pred[valid], sk, options.stature_mm)
        mm = pred * scale
        root = root_trajectory(mm, kp, conf, cam)
        t = LiftedTrack(track.track_id, frames, kp, conf, valid, pred, mm.astype(np.float32),
                        root.astype(np.float32), np.empty(0), float(scale))
        if fixed:
            t.raw = {"poses_3d": raw, "poses_3d_mm": (raw * scale).astype(np.float32)}
            t.bone_lengths_mm = (lengths * scale).astype(np.float32)
        lifted.append(t)
        timer.add("metric", t0)
    t0 = time.perf_counter()
    if lifted:  # one world frame (up, floor, origin) shared by everybody in the video
        rot, origin = world_frame([t.poses_3d_mm + t.root_mm[:, None] for t in lifted], sk, options.stature_mm)
        for t in lifted:
            t.world_mm = ((t.poses_3d_mm + t.root_mm[:, None]) @ rot.T - origin).astype(np.float32)
            if t.raw:  # the same root and world frame: only the body differs
                t.raw["world_mm"] = ((t.raw["poses_3d_mm"] + t.root_mm[:, None]) @ rot.T - origin).astype(np.float32)
            if options.smooth:
                for key in ("poses_3d_mm", "world_mm"):
                    smooth = one_euro(getattr(t, key), det.fps, options.smooth_min_cutoff_hz, options.smooth_beta)
                    if t.bone_lengths_mm is not None and np.isfinite(t.bone_lengths_mm).all():
                        smooth = impose_bone_lengths(smooth, sk, t.bone_lengths_mm, t.valid,
                                                     options.bone_options.method, options.bone_options.iterations)
                    t.smoothed[key] = smooth.astype(np.float32)
    timer.add("metric", t0)
    meta = {"source": det.source, "detector": det.detector, "weights": lifter.name,
            "model_fps": lifter.model_fps, "flip_tta": lifter.flip, "person_rule": options.person,
            "stature_mm": options.stature_mm, "stature_assumed": True,
            "intrinsics": {"focal_px": cam.focal_px, "cx": cam.cx, "cy": cam.cy, "assumed": cam.assumed},
            "bone_lengths": {"mode": "fixed", "method": options.bone_options.method,
                             "symmetric": options.bone_options.symmetric,
                             "iterations": options.bone_options.iterations,
                             "estimate": "median over detected frames, weighted by the bone's lower 2D confidence"}
            if fixed else {"mode": "raw"},
            "smoothing": {"method": "one-euro", "min_cutoff_hz": options.smooth_min_cutoff_hz,
                          "beta": options.smooth_beta} if options.smooth else None,
            "num_frames": det.num_frames}
    return InferenceResult(lifted, sk, det.fps, det.width, det.height, meta)


@dataclass
class InferRun:
    result: InferenceResult
    files: dict[str, Path]
    seconds: dict[str, float]
    frames: int


def run_infer(source: str | os.PathLike, out_dir: str | os.PathLike, lifter: Lifter, options: InferOptions,
              detector=None, stature_given: bool = False) -> InferRun:
    """Everything ``dualpose infer`` does; returns the result, the files written and the timings."""
    source, out_dir = Path(source), Path(out_dir)
    if options.render and source.exists() and source_kind(source) == "keypoints":  # refuse before any work
        raise DataFormatError(source, "--render", "a video or image folder to draw on", "a keypoint file")
    check_bones_option(options)
    timer = Timer()
    det = detect(source, options, timer, detector)
    result = lift_detections(det, lifter, options, timer)
    result.meta["stature_assumed"] = not stature_given
    t0 = time.perf_counter()
    files = write_outputs(result, out_dir, options.formats)
    t0 = timer.add("outputs", t0)
    if options.viewer and result.tracks:
        from dualpose.video.viewer import write_viewer

        files["html"] = write_viewer(result, out_dir / "viewer.html", title=f"DualPose: {source.name}")
        t0 = timer.add("viewer", t0)
    if options.render and result.tracks:
        from dualpose.video.render import render_video

        render_timer = Timer()
        frames = _timed_frames(source, render_timer, options.max_frames)
        t0 = time.perf_counter()
        files["mp4"] = render_video(frames, result, out_dir / "render.mp4", height=options.render_height)
        timer.add("rendering", t0)
        timer.seconds["rendering"] -= render_timer.seconds["decode"]
        timer.seconds["decode (rendering pass)"] += render_timer.seconds["decode"]
    return InferRun(result, files, dict(timer.seconds), det.num_frames)
