"""Procedural human motion on the Human3.6M 17-joint skeleton, deterministic from a seed.

A :class:`Body` holds one subject's rest-pose bone offsets (anthropometric proportions of the
stature, after Winter's segment tables, with a few per-cent individual variation). A motion is
driven by joint angles that are smooth functions of time (sinusoids and periodic bumps with
per-sequence random frequencies, amplitudes and phases, plus low-pass noise), turned into
positions by forward kinematics, so bone lengths are exact. Knee and elbow flexion stay in
[~2, 150] degrees (soft clamps, so the motion stays smooth), the feet are put on the floor by a
soft minimum over both soles (the lowest sole touches y = 0, never below), and stationary
actions keep the feet in place.

World frame: millimetres, y up, floor at y = 0. The body's own frame: x to the subject's left,
y up, z forward. Everything is vectorised over frames; Python loops run over joints only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dualpose.skeleton import H36M_17, Skeleton

ACTIONS: tuple[str, ...] = ("walk", "run", "jump", "squat", "wave", "turn", "sit")
DEG = np.pi / 180.0
GRAVITY_MM_S2 = 9810.0
HEIGHT_RANGE_MM = (1550.0, 1950.0)
GROUND_SMOOTHING_S = 0.04

# Rest-pose offset of each joint from its parent, as fractions of the stature (x left, y up,
# z forward). Legs and arms hang straight down. Head top lands at ~0.93 H, pelvis at ~0.53 H,
# as in Human3.6M (its "head top" is the top of the head joint, not the vertex).
_REST_FRACTIONS: dict[str, tuple[float, float, float]] = {
    "r_hip": (-0.072, 0.0, 0.0),
    "r_knee": (0.0, -0.245, 0.0),
    "r_ankle": (0.0, -0.246, 0.0),
    "spine": (0.0, 0.125, 0.008),
    "thorax": (0.0, 0.145, -0.004),
    "neck_nose": (0.0, 0.060, 0.030),
    "head_top": (0.0, 0.068, -0.024),
    "r_shoulder": (-0.088, -0.006, -0.004),
    "r_elbow": (0.0, -0.166, 0.0),
    "r_wrist": (0.0, -0.146, 0.0),
}
ANKLE_HEIGHT_FRACTION = 0.039  # ankle joint above the sole


@dataclass(frozen=True)
class Body:
    """One subject: rest-pose offsets (J, 3) in mm from each joint's parent (root row zero)."""

    name: str
    height_mm: float
    offsets: np.ndarray
    ankle_height_mm: float
    skeleton: Skeleton = H36M_17

    def bone_lengths(self) -> np.ndarray:
        """(num_bones,) in the order of ``skeleton.bones``."""
        return np.linalg.norm(self.offsets[[c for _, c in self.skeleton.bones]], axis=-1)


def _mirror(name: str) -> str | None:
    if name.startswith("r_"):
        return "l_" + name[2:]
    return None


def make_body(name: str, height_mm: float, rng: np.random.Generator, skeleton: Skeleton = H36M_17,
              variation: float = 0.03) -> Body:
    """A left/right-symmetric body of the given stature; each segment varies by ~``variation``."""
    offsets = np.zeros((skeleton.num_joints, 3))
    for joint, frac in _REST_FRACTIONS.items():
        scale = 1.0 + variation * np.clip(rng.standard_normal(), -2.0, 2.0)
        vec = np.asarray(frac) * height_mm * scale
        offsets[skeleton.index(joint)] = vec
        mirror = _mirror(joint)
        if mirror is not None:
            offsets[skeleton.index(mirror)] = vec * np.array([-1.0, 1.0, 1.0])
    return Body(name=name, height_mm=float(height_mm), offsets=offsets,
                ankle_height_mm=float(ANKLE_HEIGHT_FRACTION * height_mm), skeleton=skeleton)


def make_subjects(count: int, seed: int, heights_mm: tuple[float, float] = HEIGHT_RANGE_MM,
                  skeleton: Skeleton = H36M_17) -> list[Body]:
    """Subjects S1..Sn with statures spread over ``heights_mm``.

    Statures follow a golden-ratio sequence from a seeded start, so any first n subjects cover
    the range evenly and subject i is the same body whatever ``count`` is.
    """
    lo, hi = heights_mm
    start = np.random.default_rng(np.random.SeedSequence([seed, 0xB0D1])).uniform()
    bodies = []
    for i in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB0D2, i]))
        u = (start + i * 0.6180339887498949 + rng.uniform(-0.04, 0.04)) % 1.0
        bodies.append(make_body(f"S{i + 1}", lo + (hi - lo) * u, rng, skeleton))
    return bodies


# ---------------------------------------------------------------------------- rotations, FK
def rot_x(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def rot_y(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def rot_z(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def forward_kinematics(offsets: np.ndarray, parents: tuple[int, ...], root_position: np.ndarray,
                       root_rotation: np.ndarray, bone_rotations: np.ndarray) -> np.ndarray:
    """Joint positions (F, J, 3).

    Each bone (parent -> joint j) has its own rotation ``bone_rotations[:, j]`` relative to its
    parent bone's frame: ``G_j = G_parent @ R_j`` and ``p_j = p_parent + G_j @ offsets[j]``; the
    root has ``G_root = root_rotation`` (F, 3, 3) and ``p_root = root_position`` (F, 3).
    """
    n_frames, n_joints = bone_rotations.shape[:2]
    glob = np.empty((n_frames, n_joints, 3, 3))
    pos = np.empty((n_frames, n_joints, 3))
    for j, p in enumerate(parents):
        if p < 0:
            glob[:, j] = root_rotation
            pos[:, j] = root_position
            continue
        if p >= j:
            raise ValueError("forward_kinematics: parents must precede their children")
        glob[:, j] = glob[:, p] @ bone_rotations[:, j]
        pos[:, j] = pos[:, p] + glob[:, j] @ offsets[j]
    return pos


# ---------------------------------------------------------------------------- signals
def smooth_noise(rng: np.random.Generator, n_frames: int, channels: int, fps: float, cutoff_hz: float) -> np.ndarray:
    """Gaussian low-pass noise (n_frames, channels) with unit standard deviation per channel."""
    pad = int(np.ceil(2.0 * fps / cutoff_hz))
    n = n_frames + 2 * pad
    white = rng.standard_normal((n, channels))
    freqs = np.fft.rfftfreq(n, d=1.0 / fps)
    gain = np.exp(-0.5 * (freqs / cutoff_hz) ** 2)[:, None]
    out = np.fft.irfft(np.fft.rfft(white, axis=0) * gain, n=n, axis=0)
    scale = np.sqrt(np.sum(gain[:, 0] ** 2 * np.where(freqs > 0, 2.0, 1.0)) / n)  # theoretical std
    return out[pad:pad + n_frames] / max(scale, 1e-12)


def periodic_bump(phase: np.ndarray, centre: float, kappa: float) -> np.ndarray:
    """Smooth periodic bump in [0, 1] peaking at ``centre`` (phase in cycles); larger kappa, narrower."""
    return np.exp(kappa * (np.cos(2 * np.pi * (phase - centre)) - 1.0))


def smootherstep(x: np.ndarray) -> np.ndarray:
    """0 -> 1 with zero first and second derivatives at both ends."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (6 * x - 15) + 10)


def plateau(phase: np.ndarray, rise: float = 0.2, width: float = 0.6) -> np.ndarray:
    """Periodic 0 -> 1 -> 0 profile with rests at both levels (phase in cycles), C2-smooth."""
    u = 0.5 - 0.5 * np.cos(2 * np.pi * phase)
    return smootherstep((u - rise) / width)


def gaussian_smooth(x: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Gaussian smoothing of a 1D signal; edges are point-reflected (slope kept, no artificial kink)."""
    if sigma_frames <= 0 or len(x) < 2:
        return x.copy()
    radius = int(np.ceil(3 * sigma_frames))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_frames) ** 2)
    padded = np.pad(x, radius, mode="reflect", reflect_type="odd") if len(x) > radius else np.pad(x, radius, "edge")
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


def soft_clip(x: np.ndarray, lo: float, hi: float, width: float) -> np.ndarray:
    """Smooth clamp into (lo, hi): ~x inside, bends over within ``width`` of each bound."""
    return lo + width * np.logaddexp(0.0, (x - lo) / width) - width * np.logaddexp(0.0, (x - hi) / width)


def softmin(a: np.ndarray, b: np.ndarray, temperature: float) -> np.ndarray:
    """Smooth minimum, never above min(a, b) (by at most temperature * ln 2)."""
    return -temperature * np.logaddexp(-a / temperature, -b / temperature)


# ---------------------------------------------------------------------------- drive signals
class _Drive:
    """Anatomical angles (radians) per frame; columns [left, right] for paired joints."""

    def __init__(self, n_frames: int) -> None:
        f = n_frames
        self.yaw, self.pitch, self.roll = np.zeros(f), np.zeros(f), np.zeros(f)
        self.hip_flex, self.hip_abd, self.hip_rot = np.zeros((f, 2)), np.zeros((f, 2)), np.zeros((f, 2))
        self.knee = np.zeros((f, 2))
        self.sh_flex, self.sh_abd, self.sh_rot = np.zeros((f, 2)), np.zeros((f, 2)), np.zeros((f, 2))
        self.elbow = np.zeros((f, 2))
        self.lumbar = np.zeros((f, 3))  # forward flexion, lateral bend (to the right), twist (to the left)
        self.thoracic = np.zeros((f, 3))
        self.neck = np.zeros((f, 3))
        self.head = np.zeros((f, 3))
        self.path: np.ndarray | None = None  # (F, 2) root x, z in mm; None: feet stay in place
        self.lift = np.zeros(f)  # mm added above the grounded height (flight)
        self.ground_smoothing_s = GROUND_SMOOTHING_S

    def add_noise(self, rng: np.random.Generator, fps: float, scale_deg: float) -> None:
        n = len(self.yaw)
        groups = [
            ("pitch", 0.5), ("roll", 0.4), ("hip_flex", 1.0), ("hip_abd", 0.5), ("hip_rot", 1.0), ("knee", 0.8),
            ("sh_flex", 1.5), ("sh_abd", 1.0), ("sh_rot", 2.0), ("elbow", 1.5), ("lumbar", 0.7),
            ("thoracic", 0.7), ("neck", 1.5), ("head", 1.0),
        ]
        for name, weight in groups:
            arr = getattr(self, name)
            shape = arr.shape if arr.ndim == 2 else (n, 1)
            noise = smooth_noise(rng, n, shape[1], fps, cutoff_hz=0.8)
            if name in ("hip_flex", "knee"):  # mostly shared by both legs: planted feet stay level
                noise = 0.9 * smooth_noise(rng, n, 1, fps, cutoff_hz=0.8) + 0.45 * noise
            setattr(self, name, arr + (noise * weight * scale_deg * DEG).reshape(arr.shape))

    def clamp(self) -> None:
        """Human joint ranges (soft, so motion stays smooth)."""
        w = 3 * DEG
        self.knee = soft_clip(self.knee, 2 * DEG, 150 * DEG, w)
        self.elbow = soft_clip(self.elbow, 2 * DEG, 150 * DEG, w)
        self.hip_flex = soft_clip(self.hip_flex, -30 * DEG, 125 * DEG, w)
        self.hip_abd = soft_clip(self.hip_abd, -25 * DEG, 45 * DEG, w)
        self.hip_rot = soft_clip(self.hip_rot, -35 * DEG, 40 * DEG, w)
        self.sh_flex = soft_clip(self.sh_flex, -55 * DEG, 175 * DEG, w)
        self.sh_abd = soft_clip(self.sh_abd, -15 * DEG, 170 * DEG, w)
        self.sh_rot = soft_clip(self.sh_rot, -70 * DEG, 95 * DEG, w)


def _phase(t: np.ndarray, freq: float, rng: np.random.Generator) -> np.ndarray:
    return freq * t + rng.uniform(0.0, 1.0)


def _circle_path(drive: _Drive, t: np.ndarray, speed_mm_s: np.ndarray, radius_mm: float,
                 direction: float, rng: np.random.Generator) -> np.ndarray:
    """Heading (F,) of a walk around a circle (turning left for direction +1), with lean."""
    fps = 1.0 / (t[1] - t[0]) if len(t) > 1 else 50.0
    heading = rng.uniform(0, 2 * np.pi) + direction * np.cumsum(speed_mm_s / radius_mm) / fps
    heading += 4 * DEG * smooth_noise(rng, len(t), 1, fps, 0.3)[:, 0]
    step = speed_mm_s[:, None] * np.stack([np.sin(heading), np.cos(heading)], -1) / fps
    path = np.cumsum(step, axis=0)
    drive.path = path - path.mean(axis=0)
    drive.roll += -direction * np.arctan(speed_mm_s**2 / (GRAVITY_MM_S2 * radius_mm))
    return heading


def _gait(drive: _Drive, body: Body, t: np.ndarray, rng: np.random.Generator, *, running: bool) -> None:
    u = rng.uniform
    freq = u(1.25, 1.4) if running else u(0.8, 1.0)  # strides (two steps) per second
    hip_amp = (u(28, 36) if running else u(17, 24)) * DEG
    hip_off = (u(12, 18) if running else u(3, 7)) * DEG
    phase = _phase(t, freq, rng)  # cycles; left hip flexes forward at phase 0.25
    legs = np.stack([phase, phase + 0.5], -1)
    drive.hip_flex += hip_off + hip_amp * np.sin(2 * np.pi * legs)
    swing_peak = u(80, 95) if running else u(55, 65)
    stance_peak = u(20, 35) if running else u(8, 15)
    drive.knee += (swing_peak * DEG * periodic_bump(legs, 0.05 if running else 0.0, 1.6)
                   + stance_peak * DEG * periodic_bump(legs, 0.6 if running else 0.55, 4.0) + 4 * DEG)
    drive.hip_abd += 3 * DEG + 2 * DEG * np.sin(2 * np.pi * legs + 0.5)
    arm_amp = (u(25, 35) if running else u(10, 20)) * DEG
    drive.sh_flex += arm_amp * np.sin(2 * np.pi * (legs + 0.5)) + (10 if running else 3) * DEG
    drive.sh_abd += u(6, 12) * DEG
    elbow_base = u(80, 95) if running else u(12, 22)
    drive.elbow += (elbow_base + (12 if running else 10) * np.sin(2 * np.pi * (legs + 0.5))) * DEG
    drive.yaw += 5 * DEG * np.sin(2 * np.pi * phase)  # pelvis rotation with the stride
    drive.thoracic[:, 2] += -7 * DEG * np.sin(2 * np.pi * phase)  # shoulders counter-rotate
    drive.roll += 3 * DEG * np.sin(4 * np.pi * phase)
    lean = (u(8, 14) if running else u(1, 4)) * DEG
    drive.pitch += lean
    drive.neck[:, 0] -= lean * 0.6  # keep the gaze level
    leg = -(body.offsets[body.skeleton.index("r_knee"), 1] + body.offsets[body.skeleton.index("r_ankle"), 1])
    stride_mm = 2 * leg * (np.sin(hip_off + hip_amp) - np.sin(hip_off - hip_amp)) * (1.25 if running else 1.0)
    speed = np.full(len(t), stride_mm * freq)
    radius = u(2200, 3000) if running else u(1200, 1800)
    direction = rng.choice([-1.0, 1.0])
    heading = _circle_path(drive, t, speed, radius, direction, rng)
    drive.yaw += heading
    sway = (10 if running else 25) * np.sin(2 * np.pi * phase)  # mm, side to side with the stride
    drive.path += sway[:, None] * np.stack([np.cos(heading), -np.sin(heading)], -1)
    if running:
        drive.lift += u(20, 40) * (0.5 - 0.5 * np.cos(4 * np.pi * (phase - 0.2)))
        drive.ground_smoothing_s = 0.08


def _walk(drive, body, t, rng) -> None:
    _gait(drive, body, t, rng, running=False)


def _run(drive, body, t, rng) -> None:
    _gait(drive, body, t, rng, running=True)


def _crouch(drive: _Drive, depth: np.ndarray, thigh_deg: float, knee_deg: float, pitch_deg: float,
            lumbar_deg: float) -> None:
    """Lower the pelvis: thighs forward, knees flexed, trunk leaning; depth in [0, 1] (F,)."""
    pitch = pitch_deg * DEG * depth
    drive.pitch += pitch
    drive.lumbar[:, 0] += lumbar_deg * DEG * depth
    drive.hip_flex += (thigh_deg * DEG * depth + pitch)[:, None]
    drive.knee += (knee_deg * DEG * depth)[:, None]
    drive.neck[:, 0] -= 0.6 * (pitch + lumbar_deg * DEG * depth)


def _stance(drive: _Drive, t: np.ndarray, rng: np.random.Generator) -> None:
    """Quiet standing: slight weight shifts and relaxed arms."""
    u = rng.uniform
    shift = np.sin(2 * np.pi * _phase(t, u(0.15, 0.3), rng))
    drive.roll += 2 * DEG * shift
    drive.hip_abd += (4 * DEG + 2 * DEG * np.stack([shift, -shift], -1))
    drive.knee += 5 * DEG + 3 * DEG * np.stack([shift, -shift], -1).clip(0, None)
    drive.sh_abd += u(5, 10) * DEG
    drive.elbow += u(10, 25) * DEG
    drive.yaw += rng.uniform(0, 2 * np.pi)


def _jump(drive, body, t, rng) -> None:
    u = rng.uniform
    _stance(drive, t, rng)
    tau = _phase(t, 1.0 / u(1.1, 1.5), rng)  # cycles of one jump
    depth = u(0.7, 1.0)
    crouch = depth * periodic_bump(tau, 0.25, 4.0) + 0.6 * depth * periodic_bump(tau, 0.78, 6.0)
    _crouch(drive, crouch, thigh_deg=60, knee_deg=95, pitch_deg=25, lumbar_deg=10)
    flight = np.mod(tau - 0.40, 1.0) / 0.30
    drive.lift += np.where(flight < 1.0, u(120, 300) * np.sin(np.pi * np.clip(flight, 0, 1)) ** 2, 0.0)
    arms = -35 * periodic_bump(tau, 0.25, 2.0) + u(90, 130) * periodic_bump(tau, 0.55, 1.5)
    drive.sh_flex += arms[:, None] * DEG
    drive.elbow += 15 * DEG * periodic_bump(tau, 0.55, 1.5)[:, None]


def _squat(drive, body, t, rng) -> None:
    u = rng.uniform
    _stance(drive, t, rng)
    tau = _phase(t, 1.0 / u(2.5, 4.0), rng)
    depth = u(0.7, 1.0) * plateau(tau, rise=0.1, width=0.8)
    _crouch(drive, depth, thigh_deg=85, knee_deg=120, pitch_deg=25, lumbar_deg=15)
    drive.hip_abd += (10 * DEG * depth)[:, None]  # knees out
    drive.sh_flex += (u(60, 90) * DEG * depth)[:, None]  # arms forward for balance
    drive.elbow -= (10 * DEG * depth)[:, None]


def _sit(drive, body, t, rng) -> None:
    """Sit down on an (invisible) chair at knee height, stay, stand up."""
    u = rng.uniform
    _stance(drive, t, rng)
    tau = _phase(t, 1.0 / u(4.0, 6.0), rng)
    s = plateau(tau, rise=0.2, width=0.6)
    transit = np.sin(np.pi * s)  # lean forward while moving
    thigh = 88 * s
    shin_tilt = 18 * transit
    pitch = 30 * transit - 5 * s
    drive.pitch += pitch * DEG
    drive.lumbar[:, 0] += 10 * DEG * transit
    drive.hip_flex += ((thigh + pitch) * DEG)[:, None]
    drive.knee += ((thigh + shin_tilt) * DEG)[:, None]
    drive.neck[:, 0] -= 0.5 * pitch * DEG
    drive.sh_flex += ((25 * s + 20 * transit) * DEG)[:, None]
    drive.elbow += (35 * s * DEG)[:, None]
    drive.hip_abd += (5 * DEG * s)[:, None]


def _wave(drive, body, t, rng) -> None:
    u = rng.uniform
    _stance(drive, t, rng)
    arms = {"left": [0], "right": [1], "both": [0, 1]}[str(rng.choice(["left", "right", "both"], p=[0.4, 0.4, 0.2]))]
    tau = _phase(t, 1.0 / u(3.0, 5.0), rng)
    raised = plateau(tau, rise=0.15, width=0.6)
    wave = np.sin(2 * np.pi * _phase(t, u(1.5, 2.5), rng))
    for a in arms:
        drive.sh_abd[:, a] += u(90, 130) * DEG * raised
        drive.sh_rot[:, a] += 85 * DEG * raised
        drive.sh_flex[:, a] += u(10, 30) * DEG * raised
        drive.elbow[:, a] += (u(55, 75) + 25 * wave) * DEG * raised
    drive.neck[:, 2] += 10 * DEG * raised * (1 if arms == [0] else -1 if arms == [1] else 0)


def _turn(drive, body, t, rng) -> None:
    """Turn on the spot in bursts, stepping to follow."""
    u = rng.uniform
    _stance(drive, t, rng)
    fps = 1.0 / (t[1] - t[0]) if len(t) > 1 else 50.0
    burst = np.sin(np.pi * _phase(t, u(0.35, 0.6), rng)) ** 2
    rate = rng.choice([-1.0, 1.0]) * u(90, 150) * DEG * burst
    drive.yaw += np.cumsum(rate) / fps
    steps = np.sin(2 * np.pi * _phase(t, u(1.6, 2.0), rng))
    lift = np.stack([steps, -steps], -1).clip(0, None) ** 2 * burst[:, None]
    drive.hip_flex += 25 * DEG * lift
    drive.knee += 40 * DEG * lift
    drive.neck[:, 2] += 0.15 * rate / (90 * DEG) * 20 * DEG  # look into the turn
    drive.thoracic[:, 2] += 0.1 * rate / (90 * DEG) * 20 * DEG


_ACTION_DRIVERS: dict[str, Callable[[_Drive, Body, np.ndarray, np.random.Generator], None]] = {
    "walk": _walk, "run": _run, "jump": _jump, "squat": _squat, "wave": _wave, "turn": _turn, "sit": _sit,
}
assert set(_ACTION_DRIVERS) == set(ACTIONS)


# ---------------------------------------------------------------------------- assembly
def _limb_rotation(flex: np.ndarray, abd: np.ndarray, rot: np.ndarray, side: float, *, forward: float) -> np.ndarray:
    """Rotation of a hanging limb bone: flexion (forward for ``forward=-1`` about x), abduction, twist."""
    return rot_x(forward * flex) @ rot_z(side * abd) @ rot_y(side * rot)


def _trunk_rotation(angles: np.ndarray) -> np.ndarray:
    """(F, 3) forward flexion, lateral bend, twist -> rotation of an upward bone."""
    return rot_x(angles[:, 0]) @ rot_z(angles[:, 1]) @ rot_y(angles[:, 2])


def pose_from_drive(drive: _Drive, body: Body) -> np.ndarray:
    """Forward kinematics of the drive with the root at the origin (heading included): (F, J, 3)."""
    sk = body.skeleton
    n = len(drive.yaw)
    rot = np.broadcast_to(np.eye(3), (n, sk.num_joints, 3, 3)).copy()
    for col, side in ((0, 1.0), (1, -1.0)):
        p = "l" if side > 0 else "r"
        # hip flexion moves the thigh forward (-x rotation); internal rotation turns it inwards
        rot[:, sk.index(f"{p}_knee")] = _limb_rotation(drive.hip_flex[:, col], drive.hip_abd[:, col],
                                                      -drive.hip_rot[:, col], side, forward=-1.0)
        rot[:, sk.index(f"{p}_ankle")] = rot_x(drive.knee[:, col])  # the shank swings backwards
        rot[:, sk.index(f"{p}_elbow")] = _limb_rotation(drive.sh_flex[:, col], drive.sh_abd[:, col],
                                                       drive.sh_rot[:, col], side, forward=-1.0)
        rot[:, sk.index(f"{p}_wrist")] = rot_x(-drive.elbow[:, col])  # the forearm bends forwards
    rot[:, sk.index("spine")] = _trunk_rotation(drive.lumbar)
    rot[:, sk.index("thorax")] = _trunk_rotation(drive.thoracic)
    rot[:, sk.index("neck_nose")] = _trunk_rotation(drive.neck)
    rot[:, sk.index("head_top")] = _trunk_rotation(drive.head)
    root_rot = rot_y(drive.yaw) @ rot_x(drive.pitch) @ rot_z(drive.roll)
    return forward_kinematics(body.offsets, sk.parents, np.zeros((n, 3)), root_rot, rot)


def generate_motion(body: Body, action: str, seconds: float, fps: float,
                    seed: int | np.random.SeedSequence | list[int], noise_deg: float = 3.0) -> np.ndarray:
    """World-frame joint positions (F, J, 3) in mm (y up, floor y = 0) of ``action`` by ``body``."""
    if action not in _ACTION_DRIVERS:
        raise ValueError(f"unknown action {action!r}; known: {ACTIONS}")
    n = int(round(seconds * fps))
    if n < 1:
        raise ValueError(f"generate_motion: {seconds} s at {fps} fps gives no frames")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng = np.random.default_rng(ss)
    t = np.arange(n) / fps
    drive = _Drive(n)
    _ACTION_DRIVERS[action](drive, body, t, rng)
    drive.add_noise(rng, fps, noise_deg)
    drive.clamp()
    pos = pose_from_drive(drive, body)
    sk = body.skeleton
    ankles = [sk.index("l_ankle"), sk.index("r_ankle")]
    soles = pos[:, ankles, 1] - body.ankle_height_mm
    # root height that puts the lower sole on the floor; smoothed over ~40 ms (a foot strike is
    # not a step in velocity), then lifted so that no sole dips below the floor
    needed = -softmin(soles[:, 0], soles[:, 1], temperature=8.0)
    sigma = drive.ground_smoothing_s * fps
    ground = gaussian_smooth(needed, sigma)
    for _ in range(4):  # push up locally where smoothing cut into a foot contact
        ground += gaussian_smooth(2.0 * np.maximum(needed - ground, 0.0), sigma)
    ground += max(0.0, float((needed - ground).max()))
    if drive.path is None:  # feet stay where they are: the root moves over them
        feet_xz = pos[:, ankles][:, :, [0, 2]].mean(axis=1)
        root_xz = feet_xz[0][None] - feet_xz + 30.0 * smooth_noise(rng, n, 2, fps, 0.2)
    else:
        root_xz = drive.path
    offset = np.stack([root_xz[:, 0], ground + drive.lift, root_xz[:, 1]], -1)
    return pos + offset[:, None, :]


def sequence_seed(seed: int, subject_index: int, action: str, sequence_index: int) -> np.random.SeedSequence:
    """Independent stream per (subject, action, sequence): changing one leaves the others alone."""
    return np.random.SeedSequence([seed, subject_index, ACTIONS.index(action), sequence_index])
