"""Human3.6M as MotionBERT distributes it: ``h36m_sh_conf_cam_source_final.pkl``.

Files: ``pickle``. Layout (per split ``train`` / ``test``, every array concatenated over videos,
N frames; extra keys such as ``c3d_frame`` are ignored)::

    joint_2d           (N, 17, 2) px, Stacked-Hourglass detections ((N, 17, 3) accepted: x, y used)
    confidence         (N, 17) or (N, 17, 1), in [0, 1]
    joint3d_image      (N, 17, 3) image-space 3D (px; validated, not stored)
    joints_2.5d_image  (N, 17, 3) mm-scale 2.5D pose (the evaluation target)
    2.5d_factor        (N,) mm per pixel
    camera_name        (N,) camera id, e.g. "54138969"
    action             (N,) action name
    source             (N,) video, "s_09_act_05_subact_02_ca_01"

Output (documented exception in :mod:`dualpose.data.schema`): ``kp3d`` = ``joints_2.5d_image``,
``factor_2_5d`` = ``2.5d_factor``. Subject ("S9") and camera come from ``source`` (which must agree
with ``camera_name``), ``video_id`` = ``source``, ``frame`` = running index within each source,
width/height from the camera (:mod:`dualpose.data.h36m_cameras`), the dataset's calibration in the
``cam_*`` columns. One part per split and subject ("train-S1"), so that memory stays bounded.

The file is loaded with the restricted unpickler (:mod:`dualpose.io.safe_pickle`) and both splits
are validated before the first part is yielded: bad input yields nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from dualpose.data import h36m_cameras
from dualpose.data.adapters import source_checks as chk
from dualpose.data.adapters.base import AdapterOptions, TablePart
from dualpose.data.schema import FrameColumns
from dualpose.errors import DataFormatError
from dualpose.io.safe_pickle import load_pickle
from dualpose.skeleton import Skeleton

REQUIRED_FILES = ("pickle",)
SOURCE_PATTERN = re.compile(r"^s_(\d+)_act_(\d+)_subact_(\d+)_ca_(\d+)$")
STRING_KEYS = ("camera_name", "action", "source")


class Options(AdapterOptions):
    splits: list[str] = Field(default_factory=lambda: ["train", "test"])  # keys of the pickle to convert
    part_by_subject: bool = True  # one table per split and subject ("train-S1"), else per split
    fps: float = Field(h36m_cameras.FPS, gt=0)


@dataclass
class _Split:
    """One validated split: arrays from the pickle (not copied) plus per-video metadata."""

    name: str
    kp2d: np.ndarray  # (N, J, 2) view
    conf: np.ndarray  # (N, J) view
    kp25d: np.ndarray  # (N, J, 3)
    factor: np.ndarray  # (N,)
    frame: np.ndarray  # (N,) int32, running index within each source
    run_start: np.ndarray  # (R,) first row of each run of one source
    run_length: np.ndarray  # (R,)
    run_source: np.ndarray  # (R,) str
    run_subject: np.ndarray  # (R,) str, "S9"
    run_camera: np.ndarray  # (R,) str
    run_action: np.ndarray  # (R,) str


def convert(files: dict[str, Path], options: Options, dataset: str, skeleton: Skeleton) -> Iterator[TablePart]:
    path = Path(files["pickle"])
    data = chk.mapping(load_pickle(path), path, "<top level>", "a dict with the splits " + str(options.splits))
    splits = [_validate_split(chk.require_key(data, s, path, s), path, s, skeleton) for s in options.splits]
    del data  # only the validated views stay referenced; each split is freed once written
    while splits:
        split = splits.pop(0)
        if options.part_by_subject:
            for subject in sorted(set(split.run_subject), key=lambda s: (len(s), s)):  # S1 .. S9, S11
                runs = np.flatnonzero(split.run_subject == subject)
                yield TablePart(f"{split.name}-{subject}", _frames(split, runs, dataset, options.fps))
        else:
            yield TablePart(split.name, _frames(split, np.arange(split.run_start.size), dataset, options.fps))
        del split


def _validate_split(raw, path: Path, name: str, skeleton: Skeleton) -> _Split:
    raw = chk.mapping(raw, path, name, "a dict of per-frame arrays")
    j = skeleton.num_joints

    def f(key: str) -> str:  # field names in errors: "train.joint_2d"
        return f"{name}.{key}"

    def get(key: str):
        return chk.require_key(raw, key, path, f(key))

    joint_2d = get("joint_2d")
    xy_c = isinstance(joint_2d, np.ndarray) and joint_2d.ndim == 3 and joint_2d.shape[2] == 3
    joint_2d = chk.float_array(joint_2d, path, f("joint_2d"), (None, j, 3 if xy_c else 2))
    n = joint_2d.shape[0]
    kp2d = joint_2d[..., :2]

    conf = get("confidence")
    if isinstance(conf, np.ndarray) and conf.ndim == 3:
        conf = chk.float_array(conf, path, f("confidence"), (n, j, 1))[..., 0]
    else:
        conf = chk.float_array(conf, path, f("confidence"), (n, j))
    joint3d_image = chk.float_array(get("joint3d_image"), path, f("joint3d_image"), (n, j, 3))
    kp25d = chk.float_array(get("joints_2.5d_image"), path, f("joints_2.5d_image"), (n, j, 3))
    factor = get("2.5d_factor")
    if isinstance(factor, np.ndarray) and factor.ndim == 2:
        factor = chk.float_array(factor, path, f("2.5d_factor"), (n, 1))[:, 0]
    factor = chk.float_array(factor, path, f("2.5d_factor"), (n,))

    chk.check_finite(kp2d, path, f("joint_2d"))
    chk.check_finite(conf, path, f("confidence"))
    chk.check_range(conf, path, f("confidence"), 0.0, 1.0, "confidences in [0, 1]")
    chk.check_finite(joint3d_image, path, f("joint3d_image"))
    chk.check_finite(kp25d, path, f("joints_2.5d_image"))
    chk.check_finite(factor, path, f("2.5d_factor"))
    chk.check_range(factor, path, f("2.5d_factor"), np.finfo(np.float32).tiny, None, "positive mm-per-pixel factors")

    check_factor_relation(joint3d_image, kp25d, factor, path, f)
    del joint3d_image

    source = chk.string_column(get("source"), n, path, f("source"))
    starts = chk.run_starts(source)
    lengths = np.diff(np.r_[starts, n])
    run_source = chk.run_values(source, starts, path, f("source"))
    del source
    run_camera = _constant_per_run(get("camera_name"), n, starts, path, f("camera_name"))
    run_action = _constant_per_run(get("action"), n, starts, path, f("action"))

    run_subject = np.empty(starts.size, dtype=object)
    for r, src in enumerate(run_source):  # one iteration per video, not per frame
        m = SOURCE_PATTERN.match(str(src))
        if m is None:
            raise DataFormatError(path, f("source"), "video names like 's_09_act_05_subact_02_ca_01'",
                                  f"{str(src)!r} at index {int(starts[r])}")
        subject, cam_index = int(m.group(1)), int(m.group(4))
        try:
            expected_cam = h36m_cameras.camera_id_from_index(cam_index)
        except KeyError as exc:
            raise DataFormatError(path, f("source"), str(exc.args[0]), repr(str(src))) from None
        if run_camera[r].strip() != expected_cam:
            raise DataFormatError(path, f("camera_name"), f"camera {expected_cam} for source {str(src)!r} (ca_{cam_index:02d})",
                                  f"{run_camera[r]!r} at index {int(starts[r])}")
        run_subject[r] = f"S{subject}"
    return _Split(
        name=name, kp2d=kp2d, conf=conf, kp25d=kp25d, factor=factor,
        frame=chk.running_index(run_source, lengths).astype(np.int32),
        run_start=starts, run_length=lengths, run_source=run_source,
        run_subject=run_subject.astype(str), run_camera=np.char.strip(run_camera),
        run_action=np.char.strip(run_action),
    )


FACTOR_TOLERANCE = 0.01  # of the pose's size: MotionBERT wrote joints_2.5d_image = joint3d_image * 2.5d_factor
_CHUNK_FRAMES = 200_000


def check_factor_relation(joint3d_image: np.ndarray, kp25d: np.ndarray, factor: np.ndarray, path, f) -> None:
    """The evaluation target must be the image-space 3D scaled by the 2.5D factor (root-relative,
    per frame): ``joints_2.5d_image - root = (joint3d_image - root) * 2.5d_factor`` within
    :data:`FACTOR_TOLERANCE` of the pose's mean joint distance from the root. A pickle whose
    factor belongs to other frames, or is in other units, would decode every prediction wrongly."""
    for lo in range(0, len(factor), _CHUNK_FRAMES):
        sl = slice(lo, lo + _CHUNK_FRAMES)
        rel25 = kp25d[sl] - kp25d[sl, :1]
        rel3 = (joint3d_image[sl] - joint3d_image[sl, :1]) * factor[sl, None, None]
        size = np.linalg.norm(rel25, axis=-1).mean(axis=-1)
        err = np.linalg.norm(rel25 - rel3, axis=-1).max(axis=-1)
        bad = err > FACTOR_TOLERANCE * np.maximum(size, 1e-6)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataFormatError(path, f("2.5d_factor"),
                                  "joints_2.5d_image = joint3d_image * 2.5d_factor (root-relative, within "
                                  f"{FACTOR_TOLERANCE:.0%} of the pose size)",
                                  f"off by {err[i]:.1f} mm on a {size[i]:.0f} mm pose at index {lo + i}")


def _constant_per_run(value, n: int, starts: np.ndarray, path: Path, field: str) -> np.ndarray:
    """The value of each run of ``source``; it must not change inside a run."""
    column = chk.string_column(value, n, path, field)
    changes = chk.run_starts(column)
    inside = np.setdiff1d(changes, starts, assume_unique=True)
    if inside.size:
        row = int(inside[0])
        raise DataFormatError(path, field, "one value per video (source)",
                              f"{column[row - 1]!r} then {column[row]!r} inside one video at index {row}")
    return chk.run_values(column, starts, path, field)


def _frames(split: _Split, runs: np.ndarray, dataset: str, fps: float) -> FrameColumns:
    lengths = split.run_length[runs]
    starts = split.run_start[runs]
    contiguous = runs.size and np.all(starts[1:] == starts[:-1] + lengths[:-1])
    if contiguous:
        rows = slice(int(starts[0]), int(starts[-1] + lengths[-1]))
    else:
        rows = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)]) if runs.size else slice(0, 0)

    cams = split.run_camera[runs]
    intr = {c: h36m_cameras.intrinsics(c) for c in np.unique(cams)}
    width = np.array([intr[c].width for c in cams], np.int32)
    height = np.array([intr[c].height for c in cams], np.int32)
    intrinsics = np.stack([intr[c].vector() for c in cams]) if runs.size else np.zeros((0, 9))
    rotation = np.full((runs.size, 9), np.nan)
    translation = np.full((runs.size, 3), np.nan)
    for i, (subject, cam) in enumerate(zip(split.run_subject[runs], cams)):  # per video
        if subject in h36m_cameras.EXTRINSICS:
            r, t = h36m_cameras.world_to_camera_rt(subject, cam)
            rotation[i], translation[i] = r.reshape(9), t

    def per_row(values: np.ndarray) -> np.ndarray:
        return np.repeat(values, lengths, axis=0)

    return FrameColumns(
        dataset=dataset,
        split=split.name,
        subject=per_row(split.run_subject[runs]),
        action=per_row(split.run_action[runs]),
        video_id=per_row(split.run_source[runs]),
        camera_id=per_row(cams),
        frame=split.frame[rows],
        fps=fps,
        width=per_row(width),
        height=per_row(height),
        kp2d=split.kp2d[rows],
        conf=split.conf[rows],
        kp3d=split.kp25d[rows],
        factor_2_5d=split.factor[rows],
        valid=True,
        cam_intrinsics=per_row(intrinsics.astype(np.float32)),
        cam_rotation=per_row(rotation.astype(np.float32)),
        cam_translation=per_row(translation.astype(np.float32)),
    )
