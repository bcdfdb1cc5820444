"""The result of ``dualpose infer`` and how it is written: npz, Parquet, CSV, JSON.

Rows are (track, frame) pairs; every file carries the joint names, units and axes (keys and
columns in docs/video.md). Each writer writes to a temporary name and renames, so an
interrupted run leaves no half-written file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dualpose.io.atomic import atomic_path
from dualpose.skeleton import Skeleton

FORMATS = ("npz", "parquet", "csv", "json")
RAW_KEYS = ("poses_3d", "poses_3d_mm", "world_mm")  # kept unconstrained as <key>_raw beside fixed bone lengths
AXES = {
    "poses_3d": "camera: x right, y down, z away from the camera; pelvis (root) at the origin",
    "poses_3d_mm": "camera: x right, y down, z away from the camera; pelvis (root) at the origin",
    "root_mm": "camera: x right, y down, z away from the camera; camera at the origin",
    "world_mm": "world: y up, z horizontal toward the camera, x to the camera's right; floor y = 0",
    "kp2d": "image: u right, v down, pixels from the top-left corner",
}
UNITS = {"poses_3d": "normalised (codec units: 2 / (factor_2_5d * width))", "poses_3d_mm": "mm",
         "bone_lengths_mm": "mm",
         "root_mm": "mm", "world_mm": "mm", "kp2d": "px", "conf2d": "[0, 1]", "time_s": "s"}


@dataclass
class LiftedTrack:
    track_id: int
    frame: np.ndarray  # (F,) video frame numbers, consecutive
    kp2d: np.ndarray  # (F, J, 2) px (NaN where not detected)
    conf2d: np.ndarray  # (F, J)
    valid: np.ndarray  # (F,) bool: the person was detected with enough joints in this frame
    poses_3d: np.ndarray  # (F, J, 3) normalised root-relative
    poses_3d_mm: np.ndarray  # (F, J, 3)
    root_mm: np.ndarray  # (F, 3)
    world_mm: np.ndarray  # (F, J, 3)
    scale_mm_per_unit: float
    smoothed: dict[str, np.ndarray] = field(default_factory=dict)  # "poses_3d_mm", "world_mm"
    # with fixed bone lengths: the unconstrained 3D ("poses_3d", "poses_3d_mm", "world_mm") and the lengths
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    bone_lengths_mm: np.ndarray | None = None  # (B,) in skeleton.bones order

    @property
    def confidence(self) -> np.ndarray:
        return self.conf2d.mean(-1)


@dataclass
class InferenceResult:
    tracks: list[LiftedTrack]
    skeleton: Skeleton
    fps: float
    width: int
    height: int
    meta: dict[str, Any]

    def rows(self) -> dict[str, np.ndarray]:
        """Every array stacked over (track, frame) rows, plus the smoothed and raw (unconstrained
        bone lengths) copies when present."""
        t = self.tracks
        out: dict[str, np.ndarray] = {
            "track": _cat([np.full(len(x.frame), x.track_id) for x in t], (0,), np.int32),
            "frame": _cat([x.frame for x in t], (0,), np.int64),
            "valid": _cat([x.valid for x in t], (0,), bool),
            "confidence": _cat([x.confidence for x in t], (0,), np.float32),
        }
        out["time_s"] = (out["frame"] / self.fps).astype(np.float64)
        j = self.skeleton.num_joints
        for key, shape in (("kp2d", (0, j, 2)), ("conf2d", (0, j)), ("poses_3d", (0, j, 3)),
                           ("poses_3d_mm", (0, j, 3)), ("root_mm", (0, 3)), ("world_mm", (0, j, 3))):
            out[key] = _cat([getattr(x, key) for x in t], shape, np.float32)
        for key in sorted({k for x in t for k in x.smoothed}):
            out[f"{key}_smooth"] = _cat([x.smoothed[key] for x in t], (0, j, 3), np.float32)
        for key in RAW_KEYS:
            if t and all(key in x.raw for x in t):
                out[f"{key}_raw"] = _cat([x.raw[key] for x in t], (0, j, 3), np.float32)
        return out


def _cat(parts: list[np.ndarray], empty: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty, dtype)


def metadata(result: InferenceResult) -> dict[str, Any]:
    return {**result.meta, "joint_names": list(result.skeleton.joint_names), "skeleton": result.skeleton.name,
            "bones": [list(b) for b in result.skeleton.bones], "fps": result.fps, "width": result.width,
            "height": result.height, "units": UNITS, "axes": AXES,
            "tracks": [{"id": x.track_id, "first_frame": int(x.frame[0]), "frames": int(len(x.frame)),
                        "detected_frames": int(x.valid.sum()), "scale_mm_per_unit": x.scale_mm_per_unit,
                        "bone_lengths_mm": None if x.bone_lengths_mm is None else
                        [float(v) if np.isfinite(v) else None for v in x.bone_lengths_mm]}
                       for x in result.tracks]}


def write_npz(result: InferenceResult, path: Path) -> Path:
    arrays = result.rows()
    arrays["joint_names"] = np.array(result.skeleton.joint_names)
    arrays["meta"] = np.array(json.dumps(metadata(result)))
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def table_columns(result: InferenceResult) -> dict[str, np.ndarray]:
    """Flat columns: ids, then per joint world (mm), (smoothed world), root-relative camera (mm),
    (raw world and camera: unconstrained bone lengths), 2D (px), confidence."""
    rows = result.rows()
    cols: dict[str, np.ndarray] = {k: rows[k] for k in ("track", "frame", "time_s", "valid", "confidence")}
    for i, axis in enumerate("xyz"):
        cols[f"root_{axis}_mm"] = rows["root_mm"][:, i]
    names = result.skeleton.joint_names
    groups = [("world", "world_mm", "xyz", "_mm"), ("cam", "poses_3d_mm", "xyz", "_mm"), ("img", "kp2d", "uv", "_px")]
    if "world_mm_smooth" in rows:
        groups.insert(1, ("world_smooth", "world_mm_smooth", "xyz", "_mm"))
    if "world_mm_raw" in rows:  # unconstrained bone lengths, after the constrained columns
        groups[-1:-1] = [("world_raw", "world_mm_raw", "xyz", "_mm"), ("cam_raw", "poses_3d_mm_raw", "xyz", "_mm")]
    for prefix, key, axes, unit in groups:
        for j, name in enumerate(names):
            for i, axis in enumerate(axes):
                cols[f"{prefix}_{name}_{axis}{unit}"] = rows[key][:, j, i]
    for j, name in enumerate(names):
        cols[f"conf_{name}"] = rows["conf2d"][:, j]
    return cols


def write_parquet(result: InferenceResult, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(table_columns(result))
    table = table.replace_schema_metadata({b"dualpose": json.dumps(metadata(result)).encode()})
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return path


def write_csv(result: InferenceResult, path: Path) -> Path:
    import polars as pl

    with atomic_path(path, suffix=".csv") as tmp:
        pl.DataFrame(table_columns(result)).write_csv(tmp, float_precision=2)
    return path


def write_json(result: InferenceResult, path: Path) -> Path:
    def r(a: np.ndarray, digits: int = 1) -> Any:  # rounded nested lists, null where not finite
        a = np.asarray(a, dtype=np.float64)
        out = np.round(a, digits).astype(object)
        out[~np.isfinite(a)] = None
        return out.tolist()

    doc = metadata(result)
    for meta, x in zip(doc["tracks"], result.tracks):
        meta.update(frame=x.frame.tolist(), valid=x.valid.tolist(), confidence=r(x.confidence, 3),
                    world_mm=r(x.world_mm), poses_3d_mm=r(x.poses_3d_mm), root_mm=r(x.root_mm),
                    kp2d=r(x.kp2d))
        for key, value in x.smoothed.items():
            meta[f"{key}_smooth"] = r(value)
        for key in ("world_mm", "poses_3d_mm"):
            if key in x.raw:
                meta[f"{key}_raw"] = r(x.raw[key])
    text = json.dumps(doc, allow_nan=False)
    with atomic_path(path, suffix=".json") as tmp:
        Path(tmp).write_text(text)
    return path


WRITERS = {"npz": write_npz, "parquet": write_parquet, "csv": write_csv, "json": write_json}


def write_outputs(result: InferenceResult, out_dir: Path, formats: tuple[str, ...] = FORMATS,
                  stem: str = "poses") -> dict[str, Path]:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown output formats {unknown}; known: {list(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return {fmt: WRITERS[fmt](result, out_dir / f"{stem}.{fmt}") for fmt in formats}
