"""Human3.6M as VideoPose3D prepares it: ``data_3d_h36m.npz`` (+ ``data_2d_h36m_cpn_ft_h36m_dbb.npz``).

Files: ``data_3d`` (always) and ``data_2d`` (when ``keypoints_2d: cpn``). Layout::

    data_3d: positions_3d = {subject: {action: (F, 32, 3) world metres}}   (object member)
    data_2d: positions_2d = {subject: {action: [4 x (F_c, 17, 2) px]}}      (object member,
             one array per camera in CAMERA_IDS order; F_c >= F, extra frames are dropped as
             VideoPose3D does; an empty array marks a missing video, which is skipped)
             metadata = {"keypoints_symmetry": [left, right], "num_joints": 17, ...}

Both are read with :func:`dualpose.io.safe_pickle.load_npz` (object members never reach the
stock unpickler). The 32 mocap joints are reduced to the 17 of the skeleton with
:data:`KEEP_JOINTS`, converted to millimetres and to each camera's frame with the dataset's
calibration (:mod:`dualpose.data.h36m_cameras`). ``keypoints_2d: gt`` projects that 3D with the
dataset's distortion model instead of reading detections. Confidence is 1 (neither source has
scores). ``factor_2_5d`` = root depth / mean focal length.

Actions: ``"Walking 1"`` -> action ``"Walking"``; S1's ``TakingPhoto`` / ``WalkingDog`` are the
other subjects' ``Photo`` / ``WalkDog`` (:data:`ACTION_ALIASES`). ``video_id`` =
``"S1_Walking 1.54138969"``. Parts: one per subject ("train-S1", "test-S9").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from dualpose.camera import depth_factor
from dualpose.data import h36m_cameras
from dualpose.data.adapters import source_checks as chk
from dualpose.data.adapters.base import AdapterOptions, TablePart
from dualpose.data.schema import FrameColumns
from dualpose.errors import ConfigError, DataFormatError
from dualpose.io.safe_pickle import load_npz
from dualpose.skeleton import Skeleton

REQUIRED_FILES = ("data_3d",)
MOCAP_JOINTS = 32
KEEP_JOINTS: tuple[int, ...] = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
"""Indices of the Human3.6M-17 joints among the 32 mocap joints (in the skeleton's order)."""
ACTION_ALIASES = {"TakingPhoto": "Photo", "WalkingDog": "WalkDog"}


class Options(AdapterOptions):
    keypoints_2d: Literal["cpn", "gt"] = "cpn"
    train_subjects: list[str] = Field(default_factory=lambda: ["S1", "S5", "S6", "S7", "S8"])
    test_subjects: list[str] = Field(default_factory=lambda: ["S9", "S11"])
    fps: float = Field(h36m_cameras.FPS, gt=0)

    @model_validator(mode="after")
    def _disjoint_subjects(self) -> Options:
        both = sorted(set(self.train_subjects) & set(self.test_subjects))
        if both:
            raise ValueError(f"subjects {both} are in both train_subjects and test_subjects")
        return self


@dataclass
class _Video:
    subject: str
    action_name: str  # as in the file, e.g. "Walking 1"
    camera_id: str
    world_m: np.ndarray  # (F, 32, 3)
    kp2d: np.ndarray | None  # (F, J, 2) detections, or None for ground-truth projection


def canonical_action(name: str) -> str:
    base = name.split(" ")[0]
    return ACTION_ALIASES.get(base, base)


def convert(files: dict[str, Path], options: Options, dataset: str, skeleton: Skeleton) -> Iterator[TablePart]:
    if len(KEEP_JOINTS) != skeleton.num_joints:
        raise ConfigError(f"adapter h36m_videopose yields {len(KEEP_JOINTS)} joints; skeleton "
                          f"{skeleton.name!r} has {skeleton.num_joints}")
    if options.keypoints_2d == "cpn" and "data_2d" not in files:
        raise ConfigError("adapter h36m_videopose with keypoints_2d: cpn needs files.data_2d "
                          "(data_2d_h36m_cpn_ft_h36m_dbb.npz); or set keypoints_2d: gt")
    path3d = Path(files["data_3d"])
    positions_3d = _object_member(path3d, "positions_3d")
    positions_2d = None
    path2d = None
    if options.keypoints_2d == "cpn":
        path2d = Path(files["data_2d"])
        positions_2d = _object_member(path2d, "positions_2d")
        _check_metadata(_object_member(path2d, "metadata"), path2d, skeleton)

    plan = [(split, s) for split, subjects in (("train", options.train_subjects), ("test", options.test_subjects))
            for s in subjects]
    videos = {s: _subject_videos(positions_3d, positions_2d, s, path3d, path2d, skeleton) for _, s in plan}
    del positions_3d, positions_2d
    for split, subject in plan:
        yield TablePart(f"{split}-{subject}", _frames(videos.pop(subject), split, dataset, options.fps))


def _object_member(path: Path, key: str) -> dict:
    arr = load_npz(path, [key])[key]
    if arr.dtype != object or arr.shape != ():
        raise DataFormatError(path, key, "a pickled dict (0-d object array)", chk.describe(arr))
    return chk.mapping(arr.item(), path, key)


def _check_metadata(meta: dict, path: Path, skeleton: Skeleton) -> None:
    if "num_joints" in meta and int(meta["num_joints"]) != skeleton.num_joints:
        raise DataFormatError(path, "metadata.num_joints", str(skeleton.num_joints), repr(meta["num_joints"]))
    if "keypoints_symmetry" in meta:
        sym = meta["keypoints_symmetry"]
        expected = [sorted(skeleton.left_joints), sorted(skeleton.right_joints)]
        try:
            got = [sorted(int(i) for i in sym[0]), sorted(int(i) for i in sym[1])]
        except (TypeError, ValueError, IndexError, KeyError):
            got = None
        if got != expected:
            raise DataFormatError(path, "metadata.keypoints_symmetry",
                                  f"left/right joints {expected} (the {skeleton.name} order)", repr(sym))


def _subject_videos(positions_3d: dict, positions_2d: dict | None, subject: str, path3d: Path,
                    path2d: Path | None, skeleton: Skeleton) -> list[_Video]:
    """Validate one subject's data (3D and, if given, 2D) and list its videos."""
    j = skeleton.num_joints
    if subject not in h36m_cameras.EXTRINSICS:
        raise ConfigError(f"Human3.6M has no camera calibration for subject {subject!r}; "
                          f"calibrated subjects: {h36m_cameras.SUBJECTS}")
    actions = chk.mapping(chk.require_key(positions_3d, subject, path3d, f"positions_3d[{subject!r}]"),
                          path3d, f"positions_3d[{subject!r}]")
    if positions_2d is not None:
        actions_2d = chk.mapping(chk.require_key(positions_2d, subject, path2d, f"positions_2d[{subject!r}]"),
                                 path2d, f"positions_2d[{subject!r}]")
    videos = []
    for action in sorted(actions):
        field = f"positions_3d[{subject!r}][{action!r}]"
        world = chk.float_array(actions[action], path3d, field, (None, MOCAP_JOINTS, 3))
        chk.check_finite(world, path3d, field)
        n = world.shape[0]
        per_camera: list[np.ndarray | None] = [None] * len(h36m_cameras.CAMERA_IDS)
        if positions_2d is not None:
            field2 = f"positions_2d[{subject!r}][{action!r}]"
            cams = chk.require_key(actions_2d, action, path2d, field2)
            if not isinstance(cams, (list, tuple)) or len(cams) != len(h36m_cameras.CAMERA_IDS):
                raise DataFormatError(path2d, field2, f"a list of {len(h36m_cameras.CAMERA_IDS)} per-camera arrays",
                                      chk.describe(cams) + (f" of length {len(cams)}" if isinstance(cams, (list, tuple)) else ""))
            for c, arr in enumerate(cams):
                fc = f"{field2}[{c}]"
                arr = chk.float_array(arr, path2d, fc, (None, j, 2))
                if arr.shape[0] == 0:
                    per_camera[c] = np.zeros((0, j, 2))  # missing video
                    continue
                if arr.shape[0] < n:
                    raise DataFormatError(path2d, fc, f"at least the {n} frames of the 3D sequence",
                                          f"{arr.shape[0]} frames")
                chk.check_finite(arr[:n], path2d, fc)
                per_camera[c] = arr[:n]
        for c, cam_id in enumerate(h36m_cameras.CAMERA_IDS):
            if per_camera[c] is not None and per_camera[c].shape[0] == 0:
                continue
            videos.append(_Video(subject, str(action), cam_id, world, per_camera[c]))
    return videos


def _frames(videos: list[_Video], split: str, dataset: str, fps: float) -> FrameColumns:
    """One subject's videos as frame columns (one pass per video, vectorised over frames)."""
    keep = np.asarray(KEEP_JOINTS)
    kp3d, kp2d, factor, frame, lengths = [], [], [], [], []
    intrinsics, rotation, translation, width, height = [], [], [], [], []
    for v in videos:
        intr = h36m_cameras.intrinsics(v.camera_id)
        r, t = h36m_cameras.world_to_camera_rt(v.subject, v.camera_id)
        cam = (v.world_m[:, keep].astype(np.float64) * 1000.0) @ r.T + t
        vec = intr.vector()
        kp3d.append(cam.astype(np.float32))
        kp2d.append((h36m_cameras.project(cam, vec) if v.kp2d is None else v.kp2d).astype(np.float32))
        factor.append(depth_factor(cam, 0.5 * (vec[0] + vec[1])).astype(np.float32))
        n = cam.shape[0]
        frame.append(np.arange(n, dtype=np.int32))
        lengths.append(n)
        intrinsics.append(vec)
        rotation.append(r.reshape(9))
        translation.append(t)
        width.append(intr.width)
        height.append(intr.height)
    lengths_a = np.asarray(lengths, np.int64)

    def per_row(values) -> np.ndarray:
        return np.repeat(np.asarray(values), lengths_a, axis=0)

    kp2d_a = np.concatenate(kp2d) if videos else np.zeros((0, len(KEEP_JOINTS), 2), np.float32)
    return FrameColumns(
        dataset=dataset,
        split=split,
        subject=per_row([v.subject for v in videos]),
        action=per_row([canonical_action(v.action_name) for v in videos]),
        video_id=per_row([f"{v.subject}_{v.action_name}.{v.camera_id}" for v in videos]),
        camera_id=per_row([v.camera_id for v in videos]),
        frame=np.concatenate(frame) if videos else np.zeros(0, np.int32),
        fps=fps,
        width=per_row(width),
        height=per_row(height),
        kp2d=kp2d_a,
        conf=np.ones(kp2d_a.shape[:2], np.float32),
        kp3d=np.concatenate(kp3d) if videos else np.zeros((0, len(KEEP_JOINTS), 3), np.float32),
        factor_2_5d=np.concatenate(factor) if videos else np.zeros(0, np.float32),
        valid=True,
        cam_intrinsics=per_row(np.asarray(intrinsics, np.float32).reshape(-1, 9)),
        cam_rotation=per_row(np.asarray(rotation, np.float32).reshape(-1, 9)),
        cam_translation=per_row(np.asarray(translation, np.float32).reshape(-1, 3)),
    )
