"""Pinhole cameras: intrinsics, Human3.6M-style distortion, world <-> camera, projection.

Conventions: world and camera coordinates in millimetres; the camera frame has x right, y down,
z forward (OpenCV); ``R`` and ``t`` map world to camera: ``X_cam = R @ X_world + t``.
Distortion follows OpenCV's Brown-Conrady model: radial k1, k2, k3 and tangential p1, p2.
(Human3.6M's own projection code uses slightly different tangential terms; its cameras are
projected with :func:`dualpose.data.h36m_cameras.project`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INTRINSICS_FIELDS = ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "p1", "p2")


@dataclass(frozen=True)
class Camera:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))
    k: tuple[float, float, float] = (0.0, 0.0, 0.0)
    p: tuple[float, float] = (0.0, 0.0)
    name: str = ""

    # ----------------------------------------------------------------- construction
    @classmethod
    def look_at(
        cls,
        eye: np.ndarray,
        target: np.ndarray,
        *,
        up: np.ndarray = (0.0, 1.0, 0.0),
        fx: float,
        fy: float | None = None,
        width: int,
        height: int,
        cx: float | None = None,
        cy: float | None = None,
        name: str = "",
    ) -> "Camera":
        """A camera at ``eye`` looking at ``target``; ``up`` is the world's up direction.

        Image y points down, so the camera's y axis is the projection of ``-up``.
        """
        eye = np.asarray(eye, dtype=np.float64)
        forward = np.asarray(target, dtype=np.float64) - eye
        if np.linalg.norm(forward) < 1e-8:
            raise ValueError("look_at: eye and target coincide")
        forward /= np.linalg.norm(forward)
        up = np.asarray(up, dtype=np.float64)
        right = np.cross(forward, up)
        if np.linalg.norm(right) < 1e-8:
            raise ValueError("look_at: the viewing direction is parallel to up")
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        R = np.stack([right, down, forward])  # rows: camera axes in world coordinates
        t = -R @ eye
        return cls(
            fx=float(fx), fy=float(fy if fy is not None else fx),
            cx=float(cx if cx is not None else width / 2), cy=float(cy if cy is not None else height / 2),
            width=int(width), height=int(height), R=R, t=t, name=name,
        )

    @classmethod
    def from_vectors(cls, intrinsics: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
                     width: int, height: int, name: str = "") -> "Camera":
        """From the keypoint table's ``cam_intrinsics`` (9,), ``cam_rotation`` (9,) and ``cam_translation`` (3,).

        Unknown (NaN) distortion coefficients are read as 0 (no distortion).
        """
        fx, fy, cx, cy, *dist = (float(v) for v in np.asarray(intrinsics).reshape(9))
        k1, k2, k3, p1, p2 = (0.0 if np.isnan(v) else v for v in dist)
        return cls(fx=fx, fy=fy, cx=cx, cy=cy, width=int(width), height=int(height),
                   R=np.asarray(rotation, dtype=np.float64).reshape(3, 3),
                   t=np.asarray(translation, dtype=np.float64).reshape(3),
                   k=(k1, k2, k3), p=(p1, p2), name=name)

    # ----------------------------------------------------------------- serialisation
    def intrinsics_vector(self) -> np.ndarray:
        return np.array([self.fx, self.fy, self.cx, self.cy, *self.k, *self.p], dtype=np.float32)

    def rotation_vector(self) -> np.ndarray:
        return np.asarray(self.R, dtype=np.float32).reshape(9)

    def translation_vector(self) -> np.ndarray:
        return np.asarray(self.t, dtype=np.float32).reshape(3)

    @property
    def focal(self) -> float:
        return 0.5 * (self.fx + self.fy)

    @property
    def center_world(self) -> np.ndarray:
        return -np.asarray(self.R).T @ np.asarray(self.t)

    # ----------------------------------------------------------------- geometry
    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world mm -> (..., 3) camera mm."""
        return np.asarray(points) @ np.asarray(self.R).T + np.asarray(self.t)

    def camera_to_world(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points) - np.asarray(self.t)) @ np.asarray(self.R)

    def distort(self, xy: np.ndarray) -> np.ndarray:
        """Apply radial + tangential distortion to normalised image coordinates (..., 2)."""
        k1, k2, k3 = self.k
        p1, p2 = self.p
        if not any((k1, k2, k3, p1, p2)):
            return xy
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([xd, yd], axis=-1)

    def project(self, points_cam: np.ndarray, distort: bool = True) -> np.ndarray:
        """(..., 3) camera-frame points -> (..., 2) pixels."""
        points_cam = np.asarray(points_cam, dtype=np.float64)
        z = points_cam[..., 2:3]
        if np.any(z <= 0):
            raise ValueError("project: points behind the camera (z <= 0)")
        xy = points_cam[..., :2] / z
        if distort:
            xy = self.distort(xy)
        return np.stack([self.fx * xy[..., 0] + self.cx, self.fy * xy[..., 1] + self.cy], axis=-1)

    def project_world(self, points_world: np.ndarray, distort: bool = True) -> np.ndarray:
        return self.project(self.world_to_camera(points_world), distort=distort)


def depth_factor(kp3d_cam: np.ndarray, focal: float | np.ndarray, root: int = 0) -> np.ndarray:
    """Millimetres per pixel at the root's depth: ``Z_root / f`` (the 2.5D factor), shape (...,)."""
    return np.asarray(kp3d_cam)[..., root, 2] / np.asarray(focal)
