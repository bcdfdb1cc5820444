"""Metric scale, root trajectory and floor alignment for lifted poses.

A single uncalibrated camera cannot tell a small person near it from a tall one far away, so:

- **Scale** comes from a stature: the pose is scaled so that its median ankle-to-head-top chain
  equals ``stature_mm * CHAIN_TO_STATURE`` (default stature 1700 mm, recorded as assumed).
- **Root trajectory**: given the scaled root-relative pose P (mm, camera axes) and the 2D
  keypoints, the camera-frame root position T is the least-squares solution (weighted by the
  2D confidences) of the pinhole equations ``u - cx = f (X + Tx) / (Z + Tz)`` (and for v),
  which are linear in T. The intrinsics (``focal_px``, ``cx``, ``cy``) are the user's if known;
  otherwise the focal length is assumed to be ``max(width, height)`` (about a 53 degree field of
  view across the long side) and the principal point the image centre, and recorded as assumed.
- **Floor**: "up" is the median over frames of the ankles-to-shoulders direction (robust for
  upright motion). The world frame is right-handed: y up, z horizontal toward the camera, x to
  the camera's right; the floor (the 5th percentile of the lower ankle's height, minus the
  ankle's height above the sole) is y = 0, and x = z = 0 under the first frame's root.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualpose.infer import CHAIN_TO_STATURE, stature_chain
from dualpose.skeleton import Skeleton

ANKLE_HEIGHT_TO_STATURE = 0.039  # ankle joint above the sole, fraction of stature (Winter's segment table)
FLOOR_PERCENTILE = 5.0  # of the lower ankle's height over frames (robust to a few bad frames)
DEFAULT_FOCAL_PER_SIDE = 1.0  # assumed focal length, in units of the image's longer side


@dataclass(frozen=True)
class Intrinsics:
    focal_px: float
    cx: float
    cy: float
    assumed: bool

    @classmethod
    def resolve(cls, width: int, height: int, focal_px: float | None = None, cx: float | None = None,
                cy: float | None = None) -> "Intrinsics":
        return cls(float(focal_px or DEFAULT_FOCAL_PER_SIDE * max(width, height)),
                   float(width / 2 if cx is None else cx), float(height / 2 if cy is None else cy),
                   focal_px is None)


def stature_scale(poses: np.ndarray, skeleton: Skeleton, stature_mm: float) -> float:
    """Factor from the model's normalised units to millimetres for a person of ``stature_mm``."""
    chain = stature_chain(poses[np.isfinite(poses).all(axis=(1, 2))], skeleton)
    med = float(np.median(chain)) if chain.size else 0.0
    return stature_mm * CHAIN_TO_STATURE / med if med > 0 else float("nan")


def root_trajectory(poses_mm: np.ndarray, kp2d: np.ndarray, conf: np.ndarray, cam: Intrinsics) -> np.ndarray:
    """Camera-frame root positions (F, 3) mm from root-relative poses (F, J, 3) mm and 2D (F, J, 2) px.

    Frames with fewer than 2 usable joints are interpolated from their neighbours (NaN if none).
    """
    u = kp2d[..., 0] - cam.cx
    v = kp2d[..., 1] - cam.cy
    w = np.where((conf > 0) & np.isfinite(kp2d).all(-1) & np.isfinite(poses_mm).all(-1), conf, 0.0)
    u, v = np.nan_to_num(u), np.nan_to_num(v)
    x, y, z = (np.nan_to_num(poses_mm[..., i]) for i in range(3))
    f = cam.focal_px
    zeros = np.zeros_like(u)
    # rows per joint: [f, 0, -u] T = u z - f x ; [0, f, -v] T = v z - f y
    a = np.stack([np.stack([np.full_like(u, f), zeros, -u], -1), np.stack([zeros, np.full_like(u, f), -v], -1)], 2)
    b = np.stack([u * z - f * x, v * z - f * y], 2)  # (F, J, 2)
    a = a.reshape(len(u), -1, 3)
    b = b.reshape(len(u), -1)
    ww = np.repeat(w, 2, axis=1)
    ata = np.einsum("fk,fki,fkj->fij", ww, a, a)
    atb = np.einsum("fk,fki,fk->fi", ww, a, b)
    ok = (w > 0).sum(1) >= 2
    out = np.full((len(u), 3), np.nan)
    if ok.any():
        out[ok] = np.linalg.solve(ata[ok] + 1e-9 * np.eye(3), atb[ok][..., None])[..., 0]
    frames = np.arange(len(u))
    if ok.any() and not ok.all():
        for i in range(3):
            out[~ok, i] = np.interp(frames[~ok], frames[ok], out[ok, i])
    return out


def up_direction(poses_cam: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Unit "up" vector in camera coordinates: median of mid-ankles -> mid-shoulders, normalised."""
    ankles = poses_cam[:, [skeleton.index("l_ankle"), skeleton.index("r_ankle")]].mean(1)
    shoulders = poses_cam[:, [skeleton.index("l_shoulder"), skeleton.index("r_shoulder")]].mean(1)
    d = shoulders - ankles
    d = d[np.isfinite(d).all(-1)]
    d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
    up = np.median(d, axis=0) if len(d) else np.array([0.0, -1.0, 0.0])
    return up / max(np.linalg.norm(up), 1e-9)


def camera_to_world(up: np.ndarray) -> np.ndarray:
    """Rotation R (3, 3) with ``world = cam @ R.T``: y along ``up``, z horizontal toward the camera."""
    y = up / np.linalg.norm(up)
    forward = np.array([0.0, 0.0, 1.0])
    zf = forward - forward.dot(y) * y
    if np.linalg.norm(zf) < 1e-6:  # looking straight down/up: use the camera's y for z
        zf = np.array([0.0, 1.0, 0.0]) - y[1] * y
    z = -zf / np.linalg.norm(zf)
    x = np.cross(y, z)
    return np.stack([x, y, z])


def world_frame(cam_poses: list[np.ndarray], skeleton: Skeleton,
                stature_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """One world frame for every person of a video: (rotation R, origin) with
    ``world = cam @ R.T - origin``; ``cam_poses`` are camera-frame (F_i, J, 3) mm sequences."""
    cam = np.concatenate(cam_poses)
    rot = camera_to_world(up_direction(cam, skeleton))
    world = cam @ rot.T
    ankles = world[:, [skeleton.index("l_ankle"), skeleton.index("r_ankle")], 1].min(1)
    ankles = ankles[np.isfinite(ankles)]
    floor = (np.percentile(ankles, FLOOR_PERCENTILE) if ankles.size else 0.0) - ANKLE_HEIGHT_TO_STATURE * stature_mm
    first = np.flatnonzero(np.isfinite(world[:, skeleton.root]).all(-1))
    origin = world[first[0], skeleton.root].copy() if first.size else np.zeros(3)
    origin[1] = floor
    return rot, origin


def floor_aligned(poses_mm: np.ndarray, root_mm: np.ndarray, skeleton: Skeleton,
                  stature_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """World-frame poses (F, J, 3) mm (y up, floor y = 0) of one person, and the rotation camera -> world."""
    cam = poses_mm + root_mm[:, None, :]
    rot, origin = world_frame([cam], skeleton, stature_mm)
    return cam @ rot.T - origin, rot
