"""2D keypoint sequences as common detectors write them (JSON), for 2D-only pretraining.

Files: ``keypoints``: one JSON file, or a folder whose ``*.json`` files are read in name order;
each file is one video (``video_id`` = file stem). Formats (option ``format``):

``coco17`` / ``halpe26``
    COCO results style, as written by MMPose, Detectron2, YOLO-pose (``coco17``) and AlphaPose
    (``halpe26``): a list of detections ``{"image_id" | "frame": ..., "keypoints": [x, y, c] * K,
    "score": s}``, or a dict with that list under ``"annotations"`` (and optional ``"images"``
    entries with ``width`` / ``height``). The frame number is ``"frame"`` if present, else
    ``"image_id"``: an integer, or a file name whose last number is the frame ("12.jpg",
    "frame_000012.png"). With several people in a frame the highest ``score`` wins.
``blazepose33``
    MediaPipe Pose landmarks per frame: a list of frames, or a dict with the list under
    ``"frames"``; each frame ``{"frame": i, "landmarks": [{"x", "y", "z", "visibility"} * 33]}``
    (``"landmarks": []`` or null when nobody was found; a frame may also be the bare list of
    33 landmarks, numbered by position). ``x``, ``y`` are normalised to [0, 1] and become pixels
    with the image size; ``visibility`` is the confidence.

A dict at the top level may carry ``"width"``, ``"height"`` and ``"fps"``; what the file states
wins, the options fill in the rest. Confidences are clipped to [0, 1] (heatmap scores can exceed
1). Frames without a detection become NaN joints with confidence 0, so every video covers its
frames densely from the first to the last detection. Output: 2D-only tables
(``kp3d`` and ``factor_2_5d`` NaN), split ``train``, one part per file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from dualpose.data.adapters import source_checks as chk
from dualpose.data.adapters.base import AdapterOptions, TablePart
from dualpose.data.schema import FrameColumns
from dualpose.errors import ConfigError, DataFormatError
from dualpose.keypoint_formats import convert_keypoints, get_format
from dualpose.skeleton import Skeleton

REQUIRED_FILES = ("keypoints",)
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
MAX_FRAME = 2**31 - 1  # frame numbers are stored as int32
MAX_DIGITS = 10  # digits of a frame number in a name ("frame_000012.png")
# Frames without a detection are filled densely: the span of frame numbers may exceed the number
# of detections by at most this factor (plus a small allowance), so a stray frame 2e9 cannot make
# a single file allocate gigabytes.
MAX_SPAN_FACTOR = 100
MAX_SPAN_ALLOWANCE = 10_000
MAX_JSON_DEPTH = 64  # detector output nests a few levels; deeper is refused before parsing


class Options(AdapterOptions):
    format: Literal["coco17", "halpe26", "blazepose33"] = "coco17"
    width: int | None = Field(None, gt=0)  # image size in pixels, when the file does not say
    height: int | None = Field(None, gt=0)
    fps: float | None = Field(None, gt=0)
    subject: str = "unknown"
    action: str = ""
    split: str = "train"


@dataclass
class _Video:
    frame: np.ndarray  # (M,) frame numbers with a detection
    kp2d: np.ndarray  # (M, J, 2) px, skeleton order
    conf: np.ndarray  # (M, J)
    width: int
    height: int
    fps: float


def convert(files: dict[str, Path], options: Options, dataset: str, skeleton: Skeleton) -> Iterator[TablePart]:
    fmt = get_format(options.format)
    if fmt.target.name != skeleton.name:
        raise ConfigError(f"format {fmt.name!r} converts to {fmt.target.name!r}; the skeleton is {skeleton.name!r}")
    root = Path(files["keypoints"])
    paths = sorted(root.glob("*.json")) if root.is_dir() else [root]
    if not paths:
        raise DataFormatError(root, "<folder>", "at least one *.json file")
    videos = [_read_video(p, options) for p in paths]  # validate every file before yielding
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        raise DataFormatError(root, "<file names>", "one file per video with distinct names")
    while videos:
        name, frames = names.pop(0), videos.pop(0)
        yield TablePart(f"{options.split}-{name}", _frame_columns(frames, name, options, dataset, skeleton))


def _nesting_depth(text: str) -> int:
    """Deepest bracket nesting outside strings (a cheap scan before the recursive parser runs)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise DataFormatError(path, "<file>", "a readable JSON file", str(exc)) from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, "<file>", "UTF-8 JSON", str(exc)) from None
    if _nesting_depth(text) > MAX_JSON_DEPTH:
        raise DataFormatError(path, "<file>", f"JSON nested at most {MAX_JSON_DEPTH} levels deep", "deeper nesting")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DataFormatError(path, "<file>", "valid JSON", str(exc) or type(exc).__name__) from None
    except ValueError as exc:  # integers beyond Python's digit limit, NaN/Infinity literals
        raise DataFormatError(path, "<file>", "valid JSON with finite numbers", str(exc)) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} (JSON has no NaN/Infinity)")


def _meta_number(doc: Any, key: str, option: float | None, path: Path, positive_int: bool) -> float:
    value = doc.get(key) if isinstance(doc, dict) else None
    if value is None and isinstance(doc, dict) and key in ("width", "height"):
        images = doc.get("images")
        if isinstance(images, list) and images and isinstance(images[0], dict):
            value = images[0].get(key)
    if value is None:
        value = option
    if value is None:
        raise DataFormatError(path, key, f"a {key} in the file or options.{key}", "neither")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or \
            (positive_int and float(value) != int(value)):
        raise DataFormatError(path, key, f"a positive {'integer' if positive_int else 'number'}", repr(value))
    return value


def _read_video(path: Path, options: Options) -> _Video:
    doc = _load_json(path)
    fmt = get_format(options.format)
    width = int(_meta_number(doc, "width", options.width, path, True))
    height = int(_meta_number(doc, "height", options.height, path, True))
    fps = float(_meta_number(doc, "fps", options.fps, path, False))
    if options.format == "blazepose33":
        frame, points, conf = _blazepose(doc, path, fmt.num_joints)
        points = points * np.array([width, height], dtype=np.float64)
    else:
        frame, points, conf = _coco_like(doc, path, fmt.num_joints)
    _check_detections(path, frame, points, conf, width, height)
    kp2d, conf17 = convert_keypoints(points, conf, fmt, source=path)
    return _Video(frame=frame, kp2d=kp2d, conf=conf17, width=width, height=height, fps=fps)


def _check_detections(path: Path, frame: np.ndarray, points: np.ndarray, conf: np.ndarray, width: int,
                      height: int) -> None:
    """Refuse input that would give confident garbage or an outsized allocation."""
    span = int(frame.max()) - int(frame.min()) + 1
    if span > MAX_SPAN_FACTOR * frame.size + MAX_SPAN_ALLOWANCE:
        raise DataFormatError(path, "frame", f"frame numbers spanning at most {MAX_SPAN_FACTOR} x the number of "
                              f"detections + {MAX_SPAN_ALLOWANCE}", f"{frame.size} detections spanning {span} frames")
    with np.errstate(invalid="ignore"):
        if not np.isfinite(conf).all():
            raise DataFormatError(path, "keypoints (confidence)", "finite confidences", "NaN/inf")
        seen = conf > 0
        if not seen.any():
            raise DataFormatError(path, "keypoints (confidence)", "some keypoint with confidence > 0",
                                  "all confidences are 0: the detector found nobody")
        if not np.isfinite(points[seen]).all():
            raise DataFormatError(path, "keypoints", "finite x, y wherever confidence > 0", "NaN/inf")
        limit = 10.0 * max(width, height)
        if (np.abs(points[seen]) > limit).any():
            raise DataFormatError(path, "keypoints", f"pixel coordinates within {limit:g} of the {width}x{height} image",
                                  f"{float(np.abs(points[seen]).max()):.3g}")
        spread = np.nanmax(np.where(seen[..., None], points, np.nan), axis=1) - \
            np.nanmin(np.where(seen[..., None], points, np.nan), axis=1)
    frames_with_pose = (seen.sum(axis=1) >= 2)
    if not frames_with_pose.any() or not (np.nan_to_num(spread[frames_with_pose]).max(axis=-1) > 0).any():
        raise DataFormatError(path, "keypoints", "a pose with at least two distinct detected keypoints",
                              "every detected skeleton collapses to one point")


def _records(doc: Any, path: Path, key: str) -> list:
    if isinstance(doc, dict):
        doc = chk.require_key(doc, key, path, key)
    if not isinstance(doc, list):
        raise DataFormatError(path, key, "a list of records", chk.describe(doc))
    return doc


def _frame_number(value: Any, path: Path, field: str) -> int:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and 0 <= value <= MAX_FRAME:
        return value
    if isinstance(value, str):
        m = _LAST_NUMBER.search(value)
        if m and len(m.group(1).lstrip("0")) <= MAX_DIGITS and int(m.group(1)) <= MAX_FRAME:
            return int(m.group(1))
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_FRAME:
        return int(value)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise DataFormatError(path, field, "a frame number (a non-negative integer, or a name ending in one)",
                          f"{shown} (frame numbers go up to {MAX_FRAME})")


def _coco_like(doc: Any, path: Path, joints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    records = _records(doc, path, "annotations")
    frames, scores, keypoints = [], [], []
    for i, rec in enumerate(records):  # JSON records are Python objects: one pass to collect them
        field = f"annotations[{i}]"
        if not isinstance(rec, dict):
            raise DataFormatError(path, field, "a detection object", chk.describe(rec))
        key = "frame" if "frame" in rec else "image_id"
        frames.append(_frame_number(chk.require_key(rec, key, path, f"{field}.{key}"), path, f"{field}.{key}"))
        kps = chk.require_key(rec, "keypoints", path, f"{field}.keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * joints:
            raise DataFormatError(path, f"{field}.keypoints", f"{3 * joints} numbers ([x, y, c] * {joints})",
                                  f"{len(kps)} values" if isinstance(kps, list) else chk.describe(kps))
        keypoints.append(kps)
        score = rec.get("score", 1.0)
        scores.append(score if isinstance(score, (int, float)) and not isinstance(score, bool) else np.nan)
    if not records:
        raise DataFormatError(path, "annotations", "at least one detection", "none")
    try:
        kps_arr = np.asarray(keypoints, dtype=np.float64).reshape(len(records), joints, 3)
    except (TypeError, ValueError) as exc:
        raise DataFormatError(path, "keypoints", "numbers", str(exc)) from None
    frame = np.asarray(frames, np.int64)
    score = np.asarray(scores, np.float64)
    if not np.isfinite(score).all():
        raise DataFormatError(path, f"annotations[{int(np.argmax(~np.isfinite(score)))}].score", "a number")
    # one detection per frame: the highest score (ties: the first)
    order = np.lexsort((np.arange(frame.size), -score, frame))
    first = np.r_[True, frame[order][1:] != frame[order][:-1]]
    best = order[first]
    return frame[best], kps_arr[best, :, :2], kps_arr[best, :, 2]


def _blazepose(doc: Any, path: Path, joints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    records = _records(doc, path, "frames")
    frames, rows, found = [], [], []
    for i, rec in enumerate(records):
        field = f"frames[{i}]"
        if isinstance(rec, dict):
            frames.append(_frame_number(rec.get("frame", i), path, f"{field}.frame"))
            marks = rec.get("landmarks")
        else:
            frames.append(i)
            marks = rec
        if not marks:
            rows.append([[np.nan] * 3] * joints)
            found.append(False)
            continue
        if not isinstance(marks, list) or len(marks) != joints:
            raise DataFormatError(path, f"{field}.landmarks", f"{joints} landmarks",
                                  f"{len(marks)}" if isinstance(marks, list) else chk.describe(marks))
        try:
            rows.append([[m["x"], m["y"], m.get("visibility", 1.0)] for m in marks])
        except (TypeError, KeyError) as exc:
            raise DataFormatError(path, f"{field}.landmarks", "objects with x, y (and visibility)", repr(exc)) from None
        found.append(True)
    if not any(found):
        raise DataFormatError(path, "frames", "at least one frame with landmarks", "none")
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataFormatError(path, "landmarks", "numbers", str(exc)) from None
    frame = np.asarray(frames, np.int64)
    if np.unique(frame).size != frame.size:
        raise DataFormatError(path, "frames", "one entry per frame number", "repeated frame numbers")
    keep = np.asarray(found)
    return frame[keep], arr[keep, :, :2], arr[keep, :, 2]


def _frame_columns(video: _Video, name: str, options: Options, dataset: str, skeleton: Skeleton) -> FrameColumns:
    """Dense frames from the first to the last detection; gaps are NaN with confidence 0."""
    frame, kp2d, conf = video.frame, video.kp2d, video.conf
    first = int(frame.min())
    n = int(frame.max()) - first + 1
    j = skeleton.num_joints
    dense_kp = np.full((n, j, 2), np.nan, np.float32)
    dense_conf = np.zeros((n, j), np.float32)
    dense_kp[frame - first] = kp2d
    dense_conf[frame - first] = np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0)
    missing = ~np.isfinite(dense_kp).all(axis=-1)
    dense_conf[missing] = 0.0
    dense_kp[missing] = np.nan
    return FrameColumns(
        dataset=dataset, split=options.split, subject=options.subject, action=options.action,
        video_id=name, camera_id="", frame=np.arange(first, first + n, dtype=np.int32),
        fps=video.fps, width=video.width, height=video.height,
        kp2d=dense_kp, conf=dense_conf, kp3d=None, factor_2_5d=None, valid=True,
    )
