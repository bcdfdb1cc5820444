"""The keypoint table: one documented Parquet format that every adapter writes.

One row per frame per camera. Columns (J = joints of the skeleton named in the file metadata):

================  =====================================  =========================================
column            Arrow type                             meaning
================  =====================================  =========================================
dataset           dictionary<string>                     adapter name, e.g. ``h36m``
split             dictionary<string>                     ``train`` / ``test`` as the source says
subject           dictionary<string>                     e.g. ``S1``
action            dictionary<string>                     e.g. ``Walking``
video_id          dictionary<string>                     one camera's video; unique within a file
camera_id         dictionary<string>                     e.g. ``54138969``
frame             int32                                  frame index within the video
fps               float32                                frames per second of the video
width, height     int32                                  image size in pixels
kp2d              fixed_size_list<fixed_size_list<f32,2>,J>  2D keypoints, pixels
conf              fixed_size_list<f32,J>                 per-joint confidence in [0, 1]
kp3d              fixed_size_list<fixed_size_list<f32,3>,J>  3D, camera frame, millimetres; NaN if 2D-only
factor_2_5d       float32                                mm per pixel at the root's depth; NaN if 2D-only
valid             bool                                   frame counts in evaluation (3DHP flags)
cam_intrinsics    fixed_size_list<f32,9>                 fx fy cx cy k1 k2 k3 p1 p2 (NaN unknown)
cam_rotation      fixed_size_list<f32,9>                 world->camera rotation, row-major (NaN unknown)
cam_translation   fixed_size_list<f32,3>                 world->camera translation, mm (NaN unknown)
================  =====================================  =========================================

Rows are sorted by (video_id, frame) and each video is one contiguous run of rows, so a clip
is a (start row, length) pair. Missing 2D joints are NaN with confidence 0 (never nulls).
For the MotionBERT-style Human3.6M pickle, which has no camera-frame 3D, ``kp3d`` holds the
dataset's 2.5D pose (mm), whose root-relative form is that dataset's evaluation target.

Files are zstd-compressed, written atomically, with row groups of ``ROW_GROUP_SIZE`` rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dualpose.errors import DataFormatError
from dualpose.io.atomic import atomic_path
from dualpose.skeleton import H36M_17, Skeleton, get_skeleton

SCHEMA_VERSION = 1
ROW_GROUP_SIZE = 131_072
STRING_COLUMNS = ("dataset", "split", "subject", "action", "video_id", "camera_id")
NAN = np.float32("nan")


@dataclass
class FrameColumns:
    """Columnar frames as numpy arrays sharing the first axis N.

    String columns may be given as one ``str`` (broadcast to every row) or an (N,) array.
    """

    dataset: str | np.ndarray
    split: str | np.ndarray
    subject: str | np.ndarray
    action: str | np.ndarray
    video_id: str | np.ndarray
    camera_id: str | np.ndarray
    frame: np.ndarray  # (N,) int
    fps: float | np.ndarray
    width: int | np.ndarray
    height: int | np.ndarray
    kp2d: np.ndarray  # (N, J, 2) px
    conf: np.ndarray  # (N, J)
    kp3d: np.ndarray | None = None  # (N, J, 3) mm, camera frame
    factor_2_5d: float | np.ndarray | None = None  # (N,)
    valid: bool | np.ndarray = True
    cam_intrinsics: np.ndarray | None = None  # (9,) or (N, 9)
    cam_rotation: np.ndarray | None = None  # (3, 3) / (9,) or (N, 3, 3) / (N, 9)
    cam_translation: np.ndarray | None = None  # (3,) or (N, 3) mm

    @property
    def num_frames(self) -> int:
        return int(np.asarray(self.kp2d).shape[0])

    def normalised(self, source: str | os.PathLike | None, skeleton: Skeleton) -> dict[str, np.ndarray]:
        """Broadcast, cast and check every column; raise :class:`DataFormatError` naming the field."""
        n = self.num_frames
        j = skeleton.num_joints
        out: dict[str, np.ndarray] = {}

        def arr(name, value, shape, dtype, fill=None):
            if value is None:
                if fill is None:
                    raise DataFormatError(source, name, f"an array of shape {shape}", "nothing")
                return np.full(shape, fill, dtype=dtype)
            a = np.asarray(value)
            if a.ndim == len(shape) - 1 and a.shape == shape[1:]:
                a = np.broadcast_to(a, shape)
            elif a.ndim == 0:
                a = np.broadcast_to(a, shape)
            if a.shape != shape:
                raise DataFormatError(source, name, f"shape {shape}", f"shape {a.shape}")
            if dtype.kind == "f" and a.dtype.kind not in "fiu":
                raise DataFormatError(source, name, "a numeric array", f"dtype {a.dtype}")
            return np.ascontiguousarray(a, dtype=dtype)

        for name in STRING_COLUMNS:
            value = getattr(self, name)
            a = np.asarray(value)
            if a.ndim == 0:
                a = np.broadcast_to(a.astype(str), (n,))
            if a.shape != (n,):
                raise DataFormatError(source, name, f"one string per frame, shape ({n},)", f"shape {a.shape}")
            out[name] = a.astype(str)
        out["frame"] = arr("frame", self.frame, (n,), np.dtype(np.int32))
        out["fps"] = arr("fps", self.fps, (n,), np.dtype(np.float32))
        out["width"] = arr("width", self.width, (n,), np.dtype(np.int32))
        out["height"] = arr("height", self.height, (n,), np.dtype(np.int32))
        out["kp2d"] = arr("kp2d", self.kp2d, (n, j, 2), np.dtype(np.float32))
        out["conf"] = arr("conf", self.conf, (n, j), np.dtype(np.float32))
        out["kp3d"] = arr("kp3d", self.kp3d, (n, j, 3), np.dtype(np.float32), fill=NAN)
        out["factor_2_5d"] = arr("factor_2_5d", self.factor_2_5d, (n,), np.dtype(np.float32), fill=NAN)
        out["valid"] = arr("valid", self.valid, (n,), np.dtype(bool))
        out["cam_intrinsics"] = arr("cam_intrinsics", self.cam_intrinsics, (n, 9), np.dtype(np.float32), fill=NAN)
        rot = self.cam_rotation
        if rot is not None:
            rot = np.asarray(rot)
            if rot.shape[-2:] == (3, 3):
                rot = rot.reshape(*rot.shape[:-2], 9)
        out["cam_rotation"] = arr("cam_rotation", rot, (n, 9), np.dtype(np.float32), fill=NAN)
        out["cam_translation"] = arr("cam_translation", self.cam_translation, (n, 3), np.dtype(np.float32), fill=NAN)
        _check_values(source, out)
        return out


MAX_IMAGE_SIDE_PX = 100_000  # larger image sizes are taken for corrupt input, not a camera
MAX_FPS = 10_000.0
MAX_OUTSIDE_IMAGE = 10.0  # 2D keypoints at most this many image widths/heights outside the image
MAX_ABS_MM = 1e6  # 3D joints beyond 1 km from the camera are corrupt


def _check_values(source, cols: dict[str, np.ndarray]) -> None:
    if (cols["width"] <= 0).any() or (cols["height"] <= 0).any():
        raise DataFormatError(source, "width/height", "positive image sizes in pixels")
    if (cols["width"] > MAX_IMAGE_SIDE_PX).any() or (cols["height"] > MAX_IMAGE_SIDE_PX).any():
        raise DataFormatError(source, "width/height", f"image sizes of at most {MAX_IMAGE_SIDE_PX} pixels",
                              f"{int(max(cols['width'].max(), cols['height'].max()))}")
    if not np.isfinite(cols["fps"]).all() or (cols["fps"] <= 0).any() or (cols["fps"] > MAX_FPS).any():
        raise DataFormatError(source, "fps", f"a positive, finite frame rate (at most {MAX_FPS:g})")
    conf = cols["conf"]
    if not np.isfinite(conf).all() or (conf < 0).any() or (conf > 1).any():
        raise DataFormatError(source, "conf", "finite confidences in [0, 1]")
    bad2d = ~np.isfinite(cols["kp2d"]).all(axis=-1) & (conf > 0)
    if bad2d.any():
        row = int(np.argwhere(bad2d)[0, 0])
        raise DataFormatError(
            source, "kp2d", "finite 2D keypoints wherever confidence > 0 (missing joints: NaN with confidence 0)",
            f"NaN/inf at frame row {row}",
        )
    with np.errstate(invalid="ignore"):
        side = np.maximum(cols["width"], cols["height"]).astype(np.float64).reshape(-1, 1, 1)
        seen = (conf > 0)[..., None]  # joints with confidence 0 are missing: their coordinates are not used
        far = ((np.abs(cols["kp2d"]) > MAX_OUTSIDE_IMAGE * side) & seen).any(axis=(1, 2))
    if far.any():
        row = int(np.argmax(far))
        raise DataFormatError(source, "kp2d", f"pixel coordinates within {MAX_OUTSIDE_IMAGE:g} image sizes of the image "
                              "wherever confidence > 0",
                              f"{float(np.nanmax(np.abs(cols['kp2d'][row]))):.3g} px at frame row {row}")
    kp3d = cols["kp3d"]
    with np.errstate(invalid="ignore"):
        huge = (np.abs(kp3d) > MAX_ABS_MM).any(axis=(1, 2))
    if huge.any():
        row = int(np.argmax(huge))
        raise DataFormatError(source, "kp3d", f"millimetre coordinates within {MAX_ABS_MM:g} mm of the camera",
                              f"{float(np.nanmax(np.abs(kp3d[row]))):.3g} mm at frame row {row}")
    has3d = np.isfinite(kp3d).all(axis=(1, 2))
    if has3d.any():
        posed = kp3d[has3d]
        flat = (posed.max(axis=1) - posed.min(axis=1)).max(axis=-1) <= 0  # every joint at one point
        if flat.any():
            row = int(np.flatnonzero(has3d)[np.argmax(flat)])
            raise DataFormatError(source, "kp3d", "3D poses whose joints are not all at one point",
                                  f"a collapsed (e.g. all-zero) skeleton at frame row {row}")
    partial = ~has3d & ~np.isnan(kp3d).all(axis=(1, 2))
    if partial.any():
        row = int(np.argwhere(partial)[0, 0])
        raise DataFormatError(source, "kp3d", "all-finite 3D joints, or all NaN for 2D-only frames",
                              f"a partly NaN/inf pose at frame row {row}")


def _fixed_list(values: np.ndarray, inner_shape: tuple[int, ...]) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=pa.float32())
    arr = flat
    for size in reversed(inner_shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


def _dictionary(values: np.ndarray) -> pa.Array:
    uniques, codes = np.unique(values, return_inverse=True)
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(uniques.tolist(), pa.string()))


def arrow_schema(num_joints: int) -> pa.Schema:
    j = num_joints
    string = pa.dictionary(pa.int32(), pa.string())
    f32 = pa.float32()
    return pa.schema(
        [(name, string) for name in STRING_COLUMNS]
        + [
            ("frame", pa.int32()),
            ("fps", f32),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("kp2d", pa.list_(pa.list_(f32, 2), j)),
            ("conf", pa.list_(f32, j)),
            ("kp3d", pa.list_(pa.list_(f32, 3), j)),
            ("factor_2_5d", f32),
            ("valid", pa.bool_()),
            ("cam_intrinsics", pa.list_(f32, 9)),
            ("cam_rotation", pa.list_(f32, 9)),
            ("cam_translation", pa.list_(f32, 3)),
        ]
    )


def sort_order(video_id: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Stable order that makes every video one contiguous, frame-sorted run of rows."""
    _, codes = np.unique(video_id, return_inverse=True)
    return np.lexsort((frame, codes))


def to_arrow(frames: FrameColumns, skeleton: Skeleton = H36M_17, source=None) -> pa.Table:
    cols = frames.normalised(source, skeleton)
    order = sort_order(cols["video_id"], cols["frame"])
    if not np.array_equal(order, np.arange(order.size)):
        cols = {k: v[order] for k, v in cols.items()}
    vid = cols["video_id"]
    same_video = vid[1:] == vid[:-1]
    dup = same_video & (cols["frame"][1:] == cols["frame"][:-1])
    if dup.any():
        row = int(np.argmax(dup))
        raise DataFormatError(source, "frame", "unique frame indices within each video",
                              f"frame {cols['frame'][row]} twice in video {vid[row]!r}")
    j = skeleton.num_joints
    arrays = [_dictionary(cols[name]) for name in STRING_COLUMNS] + [
        pa.array(cols["frame"]),
        pa.array(cols["fps"]),
        pa.array(cols["width"]),
        pa.array(cols["height"]),
        _fixed_list(cols["kp2d"], (j, 2)),
        _fixed_list(cols["conf"], (j,)),
        _fixed_list(cols["kp3d"], (j, 3)),
        pa.array(cols["factor_2_5d"]),
        pa.array(cols["valid"]),
        _fixed_list(cols["cam_intrinsics"], (9,)),
        _fixed_list(cols["cam_rotation"], (9,)),
        _fixed_list(cols["cam_translation"], (3,)),
    ]
    schema = arrow_schema(j).with_metadata(
        {
            b"dualpose.schema_version": str(SCHEMA_VERSION).encode(),
            b"dualpose.skeleton": skeleton.name.encode(),
            b"dualpose.joint_names": json.dumps(list(skeleton.joint_names)).encode(),
        }
    )
    return pa.Table.from_arrays(arrays, schema=schema)


def write_keypoint_table(
    frames: FrameColumns | pa.Table,
    path: str | os.PathLike,
    skeleton: Skeleton = H36M_17,
    source: str | os.PathLike | None = None,
    row_group_size: int = ROW_GROUP_SIZE,
) -> Path:
    """Validate, sort and write one keypoint table atomically (zstd). Returns the path."""
    table = frames if isinstance(frames, pa.Table) else to_arrow(frames, skeleton, source=source)
    path = Path(path)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
    return path


@dataclass
class KeypointArrays:
    """A keypoint table in memory as contiguous numpy arrays (no per-row objects).

    String columns are integer codes into ``categories[name]``.
    """

    codes: dict[str, np.ndarray]
    categories: dict[str, list[str]]
    frame: np.ndarray
    fps: np.ndarray
    width: np.ndarray
    height: np.ndarray
    kp2d: np.ndarray
    conf: np.ndarray
    kp3d: np.ndarray
    factor_2_5d: np.ndarray
    valid: np.ndarray
    cam_intrinsics: np.ndarray
    cam_rotation: np.ndarray
    cam_translation: np.ndarray
    skeleton: Skeleton

    @property
    def num_frames(self) -> int:
        return int(self.frame.shape[0])

    def strings(self, name: str) -> np.ndarray:
        """Decode a string column to an (N,) array of str (allocates; use codes in hot paths)."""
        return np.asarray(self.categories[name], dtype=object)[self.codes[name]]

    def video_runs(self) -> tuple[np.ndarray, np.ndarray]:
        """(start row, length) of every video, in row order."""
        vid = self.codes["video_id"]
        if vid.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        starts = np.flatnonzero(np.r_[True, vid[1:] != vid[:-1]])
        lengths = np.diff(np.r_[starts, vid.size])
        return starts.astype(np.int64), lengths.astype(np.int64)

    @property
    def has_3d(self) -> np.ndarray:
        return np.isfinite(self.kp3d).all(axis=(1, 2))

    def select(self, rows: np.ndarray) -> "KeypointArrays":
        """Rows subset (boolean mask or indices), keeping categories."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "codes":
                kw["codes"] = {k: c[rows] for k, c in v.items()}
            elif isinstance(v, np.ndarray):
                kw[f.name] = v[rows]
            else:
                kw[f.name] = v
        return KeypointArrays(**kw)


def _fixed_to_numpy(col: pa.ChunkedArray | pa.Array, shape: tuple[int, ...], path, name) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    values = col
    while pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False)
    expected = n * int(np.prod(shape))
    if flat.size != expected:
        raise DataFormatError(path, name, f"{shape} values per row", f"{flat.size / max(n, 1):g}")
    return flat.reshape((n, *shape)).astype(np.float32, copy=False)


def _dict_codes(col: pa.ChunkedArray, path, name) -> tuple[np.ndarray, list[str]]:
    if not pa.types.is_dictionary(col.type):
        col = col.dictionary_encode()
    col = col.unify_dictionaries() if isinstance(col, pa.ChunkedArray) else col
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    if not chunks:
        return np.zeros(0, np.int32), []
    dictionary = chunks[0].dictionary.to_pylist()
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks]).astype(np.int32)
    return codes, dictionary


def read_keypoint_table(path: str | os.PathLike | list, filesystem=None, verify: bool = True) -> KeypointArrays:
    """Read one table (or several with the same skeleton, concatenated) into :class:`KeypointArrays`.

    ``verify`` (default) checks the values the schema promises (finite where it says finite, no
    nulls) and raises :class:`DataFormatError` naming the file; data-quality checks that measure
    how damaged a table is read with ``verify=False``.
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    tables = []
    for p in paths:
        try:
            t = pq.read_table(str(p), filesystem=filesystem)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataFormatError(p, "<file>", "a readable Parquet keypoint table", str(exc)) from exc
        tables.append((p, t))
    skeleton = None
    for p, t in tables:
        meta = t.schema.metadata or {}
        name = meta.get(b"dualpose.skeleton", b"").decode() or None
        if name is None:
            raise DataFormatError(p, "schema metadata dualpose.skeleton", "a DualPose keypoint table")
        try:
            sk = get_skeleton(name)
        except KeyError as exc:
            raise DataFormatError(p, "schema metadata dualpose.skeleton", "a known skeleton", repr(name)) from exc
        if skeleton is not None and sk != skeleton:
            raise DataFormatError(p, "schema metadata dualpose.skeleton", f"skeleton {skeleton.name}", name)
        skeleton = sk
        missing = set(arrow_schema(sk.num_joints).names) - set(t.column_names)
        if missing:
            raise DataFormatError(p, ", ".join(sorted(missing)), "the columns of the keypoint schema", "missing")
    assert skeleton is not None
    j = skeleton.num_joints
    src = paths[0] if len(paths) == 1 else f"{len(paths)} tables"
    if len(tables) == 1:
        table = tables[0][1]
    else:
        table = pa.concat_tables([t.cast(tables[0][1].schema) for _, t in tables]).unify_dictionaries()
    codes, cats = {}, {}
    for name in STRING_COLUMNS:
        codes[name], cats[name] = _dict_codes(table.column(name), src, name)

    for p, t in tables if verify else ():
        for name in t.column_names:
            if t.column(name).null_count:
                raise DataFormatError(p, name, "no missing (null) values", f"{t.column(name).null_count} nulls")

    def num(name, dtype):
        return table.column(name).to_numpy().astype(dtype, copy=False)

    arrays = KeypointArrays(
        codes=codes,
        categories=cats,
        frame=num("frame", np.int32),
        fps=num("fps", np.float32),
        width=num("width", np.int32),
        height=num("height", np.int32),
        kp2d=_fixed_to_numpy(table.column("kp2d"), (j, 2), src, "kp2d"),
        conf=_fixed_to_numpy(table.column("conf"), (j,), src, "conf"),
        kp3d=_fixed_to_numpy(table.column("kp3d"), (j, 3), src, "kp3d"),
        factor_2_5d=num("factor_2_5d", np.float32),
        valid=num("valid", bool),
        cam_intrinsics=_fixed_to_numpy(table.column("cam_intrinsics"), (9,), src, "cam_intrinsics"),
        cam_rotation=_fixed_to_numpy(table.column("cam_rotation"), (9,), src, "cam_rotation"),
        cam_translation=_fixed_to_numpy(table.column("cam_translation"), (3,), src, "cam_translation"),
        skeleton=skeleton,
    )
    # Our own tables are verified too: what the schema promises (finite where it says finite)
    # is what every reader downstream relies on.
    start = 0
    for p, t in tables if verify else ():  # per file, so that the error names the damaged one
        rows = slice(start, start + t.num_rows)
        start += t.num_rows
        _check_values(p, {"width": arrays.width[rows], "height": arrays.height[rows], "fps": arrays.fps[rows],
                          "conf": arrays.conf[rows], "kp2d": arrays.kp2d[rows], "kp3d": arrays.kp3d[rows]})
    return arrays
