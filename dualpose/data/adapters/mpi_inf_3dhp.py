"""MPI-INF-3DHP as P-STMO / MotionAGFormer prepare it: ``data_train_3dhp.npz`` and ``data_test_3dhp.npz``.

Files: ``train`` and ``test`` (only those of the selected ``splits`` are read). Layout, member
``data`` of each archive (a pickled dict, read with the restricted unpickler)::

    train: {"S1 Seq1": [cams, fps], ...}           S1..S8, Seq1/Seq2; fps 25 or 50
           cams = {"0": {"data_2d": (F, 17, 2) px, "data_3d": (F, 17, 3) mm}, ...}
           camera keys "0", "1", "2", "4", "5", "6", "7", "8" (str; int keys are accepted)
    test:  {"TS1": {"data_2d": (F, 17, 2), "data_3d": (F, 17, 3), "valid": (F,) 0/1}, ...}

Joints are the 17 test joints of 3DHP (root = pelvis, index 14), converted to the skeleton with
:func:`dualpose.keypoint_formats.convert_keypoints` (format ``mpi_inf_3dhp17``).

Assumptions (documented facts of the preparation scripts and the dataset's README):

- ``data_3d`` is ``univ_annot3``: camera-frame millimetres of the pose rescaled to the
  "universal" (Human3.6M-height) skeleton; ``data_2d`` is ``annot2``, pixels of the original
  images. So the 3D does not reproject exactly onto the 2D.
- Intrinsics are not in the files (``cam_intrinsics`` NaN), so the metric scale of a test
  frame cannot be known from its 2D. ``factor_2_5d`` is therefore a constant known without
  labels (as the references, which regress root-relative 3D in fixed units): ``2 * target_unit_mm
  / width``, so that one normalised target unit is ``target_unit_mm`` millimetres (default 1000:
  targets in metres). Predictions are decoded with the same constant; no test label enters it.
  (A per-frame least-squares fit of 2D to ground-truth 3D, :func:`least_squares_scale`, would be an
  oracle on the test set: it stays available for analysis only.)
- Image sizes: 2048 x 2048, except TS5 and TS6 at 1920 x 1080 (options). Test frame rates:
  TS1-TS4 25 fps, TS5-TS6 50 fps (options; the train fps is read from the file).
- ``valid`` becomes the ``valid`` column (train frames are all valid). Non-finite values are
  allowed only in invalid test frames; there they become NaN joints with confidence 0.

Parts: "train-S1" .. "train-S8" and "test". ``video_id``: "S1_Seq1.0" (train), "TS1" (test).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from dualpose.data.adapters import source_checks as chk
from dualpose.data.adapters.base import AdapterOptions, TablePart
from dualpose.data.schema import FrameColumns
from dualpose.errors import ConfigError, DataFormatError
from dualpose.io.safe_pickle import load_npz
from dualpose.keypoint_formats import convert_keypoints, get_format
from dualpose.skeleton import Skeleton

REQUIRED_FILES = ("train", "test")
FORMAT = "mpi_inf_3dhp17"


class Options(AdapterOptions):
    splits: list[str] = Field(default_factory=lambda: ["train", "test"])
    train_size: tuple[int, int] = (2048, 2048)  # width, height
    test_size: dict[str, tuple[int, int]] = Field(default_factory=lambda: {
        "TS1": (2048, 2048), "TS2": (2048, 2048), "TS3": (2048, 2048), "TS4": (2048, 2048),
        "TS5": (1920, 1080), "TS6": (1920, 1080)})
    test_fps: dict[str, float] = Field(default_factory=lambda: {
        "TS1": 25.0, "TS2": 25.0, "TS3": 25.0, "TS4": 25.0, "TS5": 50.0, "TS6": 50.0})
    target_unit_mm: float = Field(1000.0, gt=0)  # millimetres per normalised 3D target unit


@dataclass
class _Video:
    subject: str
    action: str
    video_id: str
    camera_id: str
    fps: float
    width: int
    height: int
    kp2d: np.ndarray  # (F, J, 2), skeleton order
    conf: np.ndarray  # (F, J)
    kp3d: np.ndarray  # (F, J, 3) camera mm
    valid: np.ndarray  # (F,) bool


def convert(files: dict[str, Path], options: Options, dataset: str, skeleton: Skeleton) -> Iterator[TablePart]:
    fmt = get_format(FORMAT)
    if fmt.target.num_joints != skeleton.num_joints or fmt.target.name != skeleton.name:
        raise ConfigError(f"adapter mpi_inf_3dhp converts to {fmt.target.name!r}; the skeleton is {skeleton.name!r}")
    unknown = sorted(set(options.splits) - {"train", "test"})
    if unknown:
        raise ConfigError(f"adapter mpi_inf_3dhp: unknown splits {unknown}; choose from ['train', 'test']")
    parts: list[tuple[str, list[_Video]]] = []  # validated, converted videos per part, before any yield
    if "train" in options.splits:
        parts += _train_parts(Path(files["train"]), options)
    if "test" in options.splits:
        parts.append(("test", _test_videos(Path(files["test"]), options)))
    while parts:
        name, videos = parts.pop(0)
        split = name.split("-")[0]
        yield TablePart(name, _frames(videos, split, dataset, options.target_unit_mm))
        del videos


def _data_member(path: Path) -> dict:
    arr = load_npz(path, ["data"])["data"]
    if arr.dtype != object or arr.shape != ():
        raise DataFormatError(path, "data", "a pickled dict (0-d object array)", chk.describe(arr))
    return chk.mapping(arr.item(), path, "data")


def _pose_arrays(entry: dict, path: Path, field: str, joints: int) -> tuple[np.ndarray, np.ndarray]:
    d2 = chk.float_array(chk.require_key(entry, "data_2d", path, f"{field}.data_2d"), path, f"{field}.data_2d",
                         (None, joints, 2))
    d3 = chk.float_array(chk.require_key(entry, "data_3d", path, f"{field}.data_3d"), path, f"{field}.data_3d",
                         (d2.shape[0], joints, 3))
    return d2, d3


def _train_parts(path: Path, options: Options) -> list[tuple[str, list[_Video]]]:
    data = _data_member(path)
    fmt = get_format(FORMAT)
    by_subject: dict[str, list[_Video]] = {}
    for key in sorted(data, key=str):
        field = f"data[{key!r}]"
        words = str(key).split(" ")
        if len(words) != 2 or not words[0].startswith("S") or not words[1].startswith("Seq"):
            raise DataFormatError(path, field, "sequence keys like 'S1 Seq1'", repr(key))
        subject, seq = words
        entry = data[key]
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise DataFormatError(path, field, "a [cameras, fps] pair", chk.describe(entry))
        cams = chk.mapping(entry[0], path, f"{field}[0]", "a dict of cameras")
        fps = entry[1]
        if isinstance(fps, np.ndarray) and fps.shape == ():
            fps = fps.item()
        if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or not fps > 0:
            raise DataFormatError(path, f"{field}[1]", "the frame rate, a positive number", repr(fps))
        for cam in sorted(cams, key=lambda c: int(c) if str(c).isdigit() else -1):
            cfield = f"{field}[0][{cam!r}]"
            if not str(cam).isdigit():
                raise DataFormatError(path, cfield, "camera keys that are numbers ('0' .. '13')", repr(cam))
            d2, d3 = _pose_arrays(chk.mapping(cams[cam], path, cfield), path, cfield, fmt.num_joints)
            chk.check_finite(d2, path, f"{cfield}.data_2d")
            chk.check_finite(d3, path, f"{cfield}.data_3d")
            kp2d, conf = convert_keypoints(d2, None, fmt, source=path)
            kp3d, _ = convert_keypoints(d3, None, fmt, source=path)
            width, height = options.train_size
            by_subject.setdefault(subject, []).append(_Video(
                subject=subject, action=seq, video_id=f"{subject}_{seq}.{cam}", camera_id=str(cam),
                fps=float(fps), width=width, height=height, kp2d=kp2d, conf=conf, kp3d=kp3d,
                valid=np.ones(kp2d.shape[0], bool)))
    del data
    return [(f"train-{s}", by_subject[s]) for s in sorted(by_subject, key=lambda s: (len(s), s))]


def _test_videos(path: Path, options: Options) -> list[_Video]:
    data = _data_member(path)
    fmt = get_format(FORMAT)
    videos = []
    for seq in sorted(data, key=str):
        field = f"data[{seq!r}]"
        if seq not in options.test_size or seq not in options.test_fps:
            raise DataFormatError(path, field, f"test sequences {sorted(options.test_size)} "
                                  "(or set options.test_size and options.test_fps for it)", repr(seq))
        entry = chk.mapping(data[seq], path, field)
        d2, d3 = _pose_arrays(entry, path, field, fmt.num_joints)
        n = d2.shape[0]
        valid = chk.require_key(entry, "valid", path, f"{field}.valid")
        if not isinstance(valid, np.ndarray) or valid.shape != (n,) or valid.dtype.kind not in "biuf":
            raise DataFormatError(path, f"{field}.valid", f"shape ({n},), one 0/1 flag per frame", chk.describe(valid))
        if not np.isin(valid, (0, 1)).all():
            raise DataFormatError(path, f"{field}.valid", "flags that are 0 or 1",
                                  f"{valid[~np.isin(valid, (0, 1))][0]!r}")
        valid = valid.astype(bool)
        finite = np.isfinite(d2).all(axis=(1, 2)) & np.isfinite(d3).all(axis=(1, 2))
        bad = valid & ~finite
        if bad.any():
            raise DataFormatError(path, f"{field}.data_2d/data_3d", "finite joints in every valid frame",
                                  f"NaN/inf in valid frame {int(np.argmax(bad))}")
        kp2d, conf = convert_keypoints(d2, None, fmt, source=path)
        kp3d, _ = convert_keypoints(d3, None, fmt, source=path)
        kp3d[~np.isfinite(kp3d).all(axis=(1, 2))] = np.nan  # a partly missing 3D pose is all missing
        width, height = options.test_size[seq]
        videos.append(_Video(subject=seq, action=seq, video_id=seq, camera_id=seq, fps=float(options.test_fps[seq]),
                             width=width, height=height, kp2d=kp2d, conf=conf, kp3d=kp3d, valid=valid))
    del data
    return videos


def least_squares_scale(kp2d: np.ndarray, kp3d: np.ndarray, root: int) -> np.ndarray:
    """Per-frame scale s (mm per px) minimising ``|s (uv - uv_root) - (xy - xy_root)|^2``; NaN if undefined.

    Uses the 3D labels: for analysis only, never to decode predictions (an oracle on test data)."""
    a = kp2d - kp2d[:, root:root + 1]
    b = kp3d[..., :2] - kp3d[:, root:root + 1, :2]
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (a * b).sum(axis=(1, 2)) / (a * a).sum(axis=(1, 2))
    return np.where(np.isfinite(s) & (s > 0), s, np.nan)


def constant_factor(width: np.ndarray, target_unit_mm: float) -> np.ndarray:
    """``factor_2_5d`` such that one normalised target unit is ``target_unit_mm`` (codec:
    ``mm = t * factor_2_5d * width / 2``): a constant known without labels."""
    return (2.0 * target_unit_mm / np.asarray(width, np.float64)).astype(np.float32)


def _frames(videos: list[_Video], split: str, dataset: str, target_unit_mm: float) -> FrameColumns:
    lengths = np.array([v.kp2d.shape[0] for v in videos], np.int64)

    def per_row(key: str) -> np.ndarray:
        return np.repeat(np.asarray([getattr(v, key) for v in videos]), lengths)

    def stacked(key: str) -> np.ndarray:
        return np.concatenate([getattr(v, key) for v in videos])

    kp2d = stacked("kp2d").astype(np.float32)
    kp3d = stacked("kp3d").astype(np.float32)
    width = per_row("width")
    return FrameColumns(
        dataset=dataset, split=split,
        subject=per_row("subject"), action=per_row("action"), video_id=per_row("video_id"),
        camera_id=per_row("camera_id"),
        frame=np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
        fps=per_row("fps"), width=width, height=per_row("height"),
        kp2d=kp2d, conf=stacked("conf"), kp3d=kp3d,
        factor_2_5d=constant_factor(width, target_unit_mm),
        valid=stacked("valid"),
    )
