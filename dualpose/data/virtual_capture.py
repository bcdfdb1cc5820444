"""Film 3D motion with virtual cameras and a detector-like 2D noise model.

Cameras look like Human3.6M's: ~1150 px focal length at 1000 x 1000, 1-2 m high, 4-6 m from the
centre of the subject's trajectory, spread around it. A camera whose view would cut the
subject off is moved back (same direction) until every joint of the sequence projects inside
the image, so every joint is always in front of every camera.

The 2D noise imitates a heatmap detector: white jitter plus a temporally correlated drift,
both larger for wrists, ankles and elbows; occasional gross errors lasting a few frames (low
confidence); dropouts (NaN, confidence 0); confidence falls with the error. Everything is
vectorised over frames and joints.

Output: :class:`dualpose.data.schema.FrameColumns`, one video per camera, ``video_id`` =
``f"{subject}_{sequence}.{camera}"``, 3D in the camera frame (mm), ``factor_2_5d = Z_root / f``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dualpose.camera import Camera, depth_factor
from dualpose.data.adapters.base import AdapterOptions
from dualpose.data.schema import FrameColumns
from dualpose.data.synthetic_motion import smooth_noise
from dualpose.skeleton import H36M_17, Skeleton

DEFAULT_JOINT_NOISE_SCALE: dict[str, float] = {
    "l_wrist": 2.0, "r_wrist": 2.0, "l_elbow": 1.4, "r_elbow": 1.4,
    "l_ankle": 1.6, "r_ankle": 1.6, "l_knee": 1.2, "r_knee": 1.2,
    "l_hip": 1.3, "r_hip": 1.3, "head_top": 1.3,
}


class NoiseSettings(BaseModel):
    """Detector-like 2D noise, in pixels of the image."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    jitter_px: float = Field(1.5, ge=0)  # white, frame to frame
    drift_px: float = Field(3.0, ge=0)  # temporally correlated
    drift_seconds: float = Field(0.2, gt=0)  # correlation time of the drift
    joint_scale: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_JOINT_NOISE_SCALE))
    outlier_rate: float = Field(0.002, ge=0, le=1)  # expected fraction of joint-frames with a gross error
    outlier_px: tuple[float, float] = (25.0, 90.0)
    outlier_frames: int = Field(4, ge=1)  # longest gross error
    dropout_rate: float = Field(0.001, ge=0, le=1)  # expected fraction of joint-frames missing
    dropout_frames: int = Field(6, ge=1)
    out_of_image_confidence: float = Field(0.3, ge=0, le=1)  # factor for joints outside the image


class CaptureOptions(AdapterOptions):
    """Virtual camera rig and 2D noise; adapters that film 3D motion extend these options."""

    cameras: int = Field(4, ge=1)
    width: int = Field(1000, gt=0)
    height: int = Field(1000, gt=0)
    focal_px: float = Field(1150.0, gt=0)
    focal_jitter: float = Field(0.02, ge=0, lt=0.5)  # relative std of the focal length per camera
    principal_jitter_px: float = Field(4.0, ge=0)
    camera_distance_m: tuple[float, float] = (4.0, 6.0)  # from the trajectory centre
    camera_height_m: tuple[float, float] = (1.0, 2.0)
    azimuth_jitter_deg: float = Field(15.0, ge=0)  # around evenly spread directions
    fit_in_image: bool = True  # move a camera back until the whole motion projects inside
    image_margin: float = Field(0.02, ge=0, lt=0.5)  # fraction of the image size
    noise: NoiseSettings = Field(default_factory=NoiseSettings)

    @field_validator("camera_distance_m", "camera_height_m")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"expected (low, high) with low <= high, got {value}")
        return value


# ---------------------------------------------------------------------------- cameras
def _inside(uv: np.ndarray, cam: Camera, margin: float) -> bool:
    mx, my = margin * cam.width, margin * cam.height
    return bool(((uv[..., 0] >= mx) & (uv[..., 0] <= cam.width - mx)
                 & (uv[..., 1] >= my) & (uv[..., 1] <= cam.height - my)).all())


def place_cameras(world_mm: np.ndarray, options: CaptureOptions, rng: np.random.Generator,
                  root: int = 0, names: Sequence[str] | None = None, min_depth_mm: float = 500.0) -> list[Camera]:
    """Cameras spread around the trajectory centre of ``world_mm`` (F, J, 3), y up, all joints in front."""
    world_mm = np.asarray(world_mm, dtype=np.float64)
    pts = world_mm.reshape(-1, 3)
    centre = world_mm[:, root].mean(axis=0)
    target_y = float(pts[:, 1].mean()) + rng.normal(0.0, 80.0)
    target = np.array([centre[0], target_y, centre[2]])
    n = options.cameras
    names = list(names) if names is not None else [f"cam{k}" for k in range(n)]
    azimuths = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
    azimuths += np.radians(options.azimuth_jitter_deg) * rng.standard_normal(n)
    distances = rng.uniform(*options.camera_distance_m, size=n) * 1000.0
    heights = rng.uniform(*options.camera_height_m, size=n) * 1000.0
    fx = options.focal_px * (1.0 + options.focal_jitter * np.clip(rng.standard_normal(n), -3, 3))
    fy = fx * (1.0 + 0.002 * rng.standard_normal(n))  # near-square pixels
    principal = np.array([options.width, options.height]) / 2
    principal = principal + options.principal_jitter_px * rng.standard_normal((n, 2))
    cams = []
    for k in range(n):
        direction = np.array([np.sin(azimuths[k]), 0.0, np.cos(azimuths[k])])
        distance = distances[k]
        for _ in range(60):
            eye = np.array([centre[0], heights[k], centre[2]]) + distance * direction
            cam = Camera.look_at(eye, target, fx=fx[k], fy=fy[k], width=options.width,
                                 height=options.height, cx=principal[k, 0], cy=principal[k, 1], name=names[k])
            cam_pts = cam.world_to_camera(pts)
            if (cam_pts[:, 2] > min_depth_mm).all() and (
                    not options.fit_in_image or _inside(cam.project(cam_pts), cam, options.image_margin)):
                break
            distance *= 1.08
        else:
            raise ValueError(f"place_cameras: could not fit the motion into camera {names[k]!r}")
        cams.append(cam)
    return cams


# ---------------------------------------------------------------------------- 2D noise
def _event_runs(rng: np.random.Generator, shape: tuple[int, int], rate: float, max_len: int,
                values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Events covering about a fraction ``rate`` of the cells, each lasting 1..max_len frames.

    Returns a boolean mask (F, J) of covered cells and, when ``values`` (F, J, D) are given,
    the sum of the values of the events covering each cell (constant over an event).
    """
    n_frames, n_joints = shape
    starts = np.argwhere(rng.random(shape) < rate * 2.0 / (1 + max_len))  # (E, 2): frame, joint
    lengths = rng.integers(1, max_len + 1, size=len(starts))
    count = np.zeros((n_frames + max_len + 1, n_joints))
    np.add.at(count, (starts[:, 0], starts[:, 1]), 1.0)
    np.add.at(count, (starts[:, 0] + lengths, starts[:, 1]), -1.0)
    mask = np.cumsum(count, axis=0)[:n_frames] > 0.5
    if values is None:
        return mask, None
    acc = np.zeros((n_frames + max_len + 1, n_joints, values.shape[-1]))
    v = values[starts[:, 0], starts[:, 1]]
    np.add.at(acc, (starts[:, 0], starts[:, 1]), v)
    np.add.at(acc, (starts[:, 0] + lengths, starts[:, 1]), -v)
    return mask, np.cumsum(acc, axis=0)[:n_frames]


def joint_noise_scale(settings: NoiseSettings, skeleton: Skeleton) -> np.ndarray:
    """(J,) multiplier of the noise per joint (unknown names in ``joint_scale`` are an error)."""
    scale = np.ones(skeleton.num_joints)
    for name, value in settings.joint_scale.items():
        scale[skeleton.index(name)] = value
    return scale


def detector_noise(kp2d: np.ndarray, fps: float, settings: NoiseSettings, rng: np.random.Generator,
                   width: int, height: int, skeleton: Skeleton = H36M_17) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 2D keypoints and confidences from clean projections (F, J, 2) px -> ((F, J, 2), (F, J))."""
    kp2d = np.asarray(kp2d, dtype=np.float64)
    n_frames, n_joints = kp2d.shape[:2]
    if not settings.enabled:
        return kp2d.copy(), np.ones((n_frames, n_joints))
    scale = joint_noise_scale(settings, skeleton)[None, :, None]
    cutoff_hz = 1.0 / (2 * np.pi * settings.drift_seconds)
    drift = smooth_noise(rng, n_frames, n_joints * 2, fps, cutoff_hz).reshape(n_frames, n_joints, 2)
    noise = (settings.jitter_px * rng.standard_normal((n_frames, n_joints, 2)) + settings.drift_px * drift) * scale
    sigma = np.hypot(settings.jitter_px, settings.drift_px) * scale[..., 0]  # (1, J) expected per-axis std
    # gross errors: a displacement in a random direction, constant over the event
    angle = rng.uniform(0, 2 * np.pi, (n_frames, n_joints))
    magnitude = rng.uniform(*settings.outlier_px, (n_frames, n_joints))
    jumps = np.stack([np.cos(angle), np.sin(angle)], -1) * magnitude[..., None]
    outlier, offset = _event_runs(rng, (n_frames, n_joints), settings.outlier_rate,
                                  settings.outlier_frames, jumps)
    noise = noise + offset
    error = np.linalg.norm(noise, axis=-1)
    conf = np.exp(-0.5 * (error / (3.0 * np.maximum(sigma, 1e-6))) ** 2) * rng.uniform(0.85, 1.0, error.shape)
    conf = np.where(outlier, np.minimum(conf, rng.uniform(0.05, 0.45, error.shape)), conf)
    noisy = kp2d + noise
    outside = ((kp2d[..., 0] < 0) | (kp2d[..., 0] > width - 1) | (kp2d[..., 1] < 0) | (kp2d[..., 1] > height - 1))
    conf = np.where(outside, conf * settings.out_of_image_confidence, conf)
    noisy[..., 0] = np.clip(noisy[..., 0], 0, width - 1)
    noisy[..., 1] = np.clip(noisy[..., 1], 0, height - 1)
    dropped, _ = _event_runs(rng, (n_frames, n_joints), settings.dropout_rate,
                             settings.dropout_frames)
    noisy[dropped] = np.nan
    conf = np.where(dropped, 0.0, np.clip(conf, 0.02, 1.0))
    return noisy, conf


# ---------------------------------------------------------------------------- filming
def capture_motion(world_mm: np.ndarray, fps: float, options: CaptureOptions,
                   seed: int | Sequence[int] | np.random.SeedSequence, *, dataset: str, split: str, subject: str,
                   action: str, sequence: str, skeleton: Skeleton = H36M_17) -> FrameColumns:
    """Film one world-frame motion (F, J, 3) mm, y up, with ``options.cameras`` virtual cameras."""
    world_mm = np.asarray(world_mm, dtype=np.float64)
    if world_mm.ndim != 3 or world_mm.shape[1:] != (skeleton.num_joints, 3):
        raise ValueError(f"capture_motion: expected (F, {skeleton.num_joints}, 3) positions, got {world_mm.shape}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rig_seed, *cam_seeds = ss.spawn(1 + options.cameras)
    cameras = place_cameras(world_mm, options, np.random.default_rng(rig_seed), root=skeleton.root)
    parts = []
    n = len(world_mm)
    for cam, cam_seed in zip(cameras, cam_seeds):
        kp3d = cam.world_to_camera(world_mm)
        clean = cam.project(kp3d)
        kp2d, conf = detector_noise(clean, fps, options.noise, np.random.default_rng(cam_seed),
                                    cam.width, cam.height, skeleton)
        parts.append(FrameColumns(
            dataset=dataset, split=split, subject=subject, action=action,
            video_id=f"{subject}_{sequence}.{cam.name}", camera_id=cam.name,
            frame=np.arange(n, dtype=np.int32), fps=float(fps), width=cam.width, height=cam.height,
            kp2d=kp2d.astype(np.float32), conf=conf.astype(np.float32), kp3d=kp3d.astype(np.float32),
            factor_2_5d=depth_factor(kp3d, cam.focal, root=skeleton.root).astype(np.float32), valid=True,
            cam_intrinsics=cam.intrinsics_vector(), cam_rotation=cam.rotation_vector(),
            cam_translation=cam.translation_vector(),
        ))
    return concat_frames(parts, skeleton)


def concat_frames(parts: Sequence[FrameColumns], skeleton: Skeleton = H36M_17) -> FrameColumns:
    """One :class:`FrameColumns` from several (columns broadcast and checked, then concatenated)."""
    if not parts:
        return empty_frames(skeleton)
    cols = [p.normalised(None, skeleton) for p in parts]
    return FrameColumns(**{k: np.concatenate([c[k] for c in cols]) for k in cols[0]})


def empty_frames(skeleton: Skeleton = H36M_17) -> FrameColumns:
    """A table part with no rows (e.g. a split that received no sequence)."""
    j = skeleton.num_joints
    empty = np.zeros(0, dtype=str)
    return FrameColumns(
        dataset=empty, split=empty, subject=empty, action=empty, video_id=empty, camera_id=empty,
        frame=np.zeros(0, np.int32), fps=np.zeros(0, np.float32), width=np.zeros(0, np.int32),
        height=np.zeros(0, np.int32), kp2d=np.zeros((0, j, 2), np.float32), conf=np.zeros((0, j), np.float32),
        kp3d=np.zeros((0, j, 3), np.float32), factor_2_5d=np.zeros(0, np.float32), valid=np.zeros(0, bool),
        cam_intrinsics=np.zeros((0, 9), np.float32), cam_rotation=np.zeros((0, 9), np.float32),
        cam_translation=np.zeros((0, 3), np.float32),
    )
