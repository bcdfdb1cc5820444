"""Is this human motion? Vectorised checks on one 3D joint sequence (F, J, 3) in millimetres.

Four checks, each a :class:`CheckResult` with the measured number, its threshold and pass/fail:

- ``bone_lengths``: every bone's length is constant within the sequence (relative std; limbs
  strictly, torso and head bones, which mocap conversions synthesise, with a looser limit).
- ``joint_angles``: knees and elbows bend within human range (flexion 0..``max_flexion_deg``)
  and knees do not bend forward (signed flexion about the hips' left-right axis).
- ``floor``: no foot joint goes below the floor; ``grounded``: the lowest foot is near the floor
  most of the time (catches wrong units, a wrong up axis, or a floating figure).
- ``smoothness``: the 99th percentile of joint accelerations (m/s^2) is humanly possible, and
  no single acceleration is a glitch (a joint jumping for a frame or two).

The default limits were set with margin over real motion capture (CMU walking, running,
jumping, basketball, soccer) so that real human motion passes and broken data does not.
Used by the tests and, later, by data-asset checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dualpose.skeleton import H36M_17, Skeleton


@dataclass(frozen=True)
class PlausibilityLimits:
    max_bone_rel_std: float = 0.01  # limbs: std / mean of each bone's length over the sequence
    max_torso_bone_rel_std: float = 0.05  # pelvis-hip, spine, neck and head bones
    max_flexion_deg: float = 165.0  # knees and elbows
    max_knee_hyperextension_deg: float = 10.0  # signed knee flexion may not go below -this
    floor_tolerance_mm: float = 20.0  # foot joints may dip this far below the floor
    max_median_foot_height_mm: float = 250.0  # median over frames of the lowest foot joint
    max_accel_p99_ms2: float = 120.0  # 99th percentile of joint acceleration magnitudes
    max_accel_ms2: float = 1000.0  # any single joint and frame: catches tracking glitches


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    value: float
    threshold: float
    detail: str = ""

    def __str__(self) -> str:
        mark = "ok" if self.passed else "FAIL"
        return f"{self.name}: {mark} ({self.detail or f'{self.value:.4g} vs {self.threshold:.4g}'})"


@dataclass
class PlausibilityReport:
    checks: dict[str, CheckResult] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks.values())

    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks.values() if not c.passed]

    def metrics(self) -> dict[str, float]:
        """Flat ``{check: value}`` numbers, e.g. for asset-check metadata."""
        return {name: float(c.value) for name, c in self.checks.items()}

    def __str__(self) -> str:
        return "; ".join(str(c) for c in self.checks.values())


def _as_sequence(poses: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (skeleton.num_joints, 3):
        raise ValueError(f"expected poses of shape (F, {skeleton.num_joints}, 3), got {poses.shape}")
    return poses


LIMB_JOINTS = ("knee", "ankle", "elbow", "wrist")


def limb_bones(skeleton: Skeleton) -> np.ndarray:
    """Boolean mask over ``skeleton.bones``: True for rigid limb segments (thigh, shank, upper arm, forearm).

    The other bones (pelvis-hip, spine, neck, head) link joints that motion-capture conversions
    synthesise from several markers or segments, so their length legitimately varies a little.
    """
    return np.array([any(k in skeleton.joint_names[c] for k in LIMB_JOINTS) for _, c in skeleton.bones])


def bone_length_constancy(poses: np.ndarray, skeleton: Skeleton = H36M_17,
                          max_rel_std: float = PlausibilityLimits.max_bone_rel_std,
                          max_torso_rel_std: float = PlausibilityLimits.max_torso_bone_rel_std) -> CheckResult:
    """Relative std of each bone's length over the frames; limbs and torso bones have their own limit.

    ``value`` is the largest ratio (relative std / its limit); the check passes when it is <= 1.
    """
    lengths = skeleton.bone_lengths(_as_sequence(poses, skeleton))  # (F, B)
    rel = lengths.std(axis=0) / np.maximum(lengths.mean(axis=0), 1e-9)
    limit = np.where(limb_bones(skeleton), max_rel_std, max_torso_rel_std)
    ratio = rel / limit
    worst = int(np.argmax(ratio))
    parent, child = skeleton.bones[worst]
    value = float(ratio[worst])
    return CheckResult(
        "bone_lengths", value <= 1.0, value, 1.0,
        f"worst bone {skeleton.joint_names[parent]}-{skeleton.joint_names[child]}: relative std "
        f"{rel[worst]:.2e} vs {limit[worst]:.0e}",
    )


def _limb(skeleton: Skeleton, side: str, names: tuple[str, str, str]) -> tuple[int, int, int] | None:
    try:
        return tuple(skeleton.index(f"{side}_{n}") for n in names)  # type: ignore[return-value]
    except KeyError:
        return None


def flexion_angles(poses: np.ndarray, a: int, b: int, c: int) -> np.ndarray:
    """Unsigned flexion at joint ``b`` in degrees, (F,): 0 = straight, 180 = folded back."""
    u = poses[:, b] - poses[:, a]
    v = poses[:, c] - poses[:, b]
    cos = np.einsum("fi,fi->f", u, v) / np.maximum(np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1), 1e-9)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def signed_knee_flexion(poses: np.ndarray, hip: int, knee: int, ankle: int, left_hip: int,
                        right_hip: int) -> np.ndarray:
    """Knee flexion in degrees, (F,), negative when the shank swings forward of the thigh.

    The sign comes from the rotation thigh -> shank about the pelvis' left direction
    (right hip -> left hip); a knee bending the natural way turns the shank backwards.
    """
    thigh = poses[:, knee] - poses[:, hip]
    shank = poses[:, ankle] - poses[:, knee]
    left = poses[:, left_hip] - poses[:, right_hip]
    left /= np.maximum(np.linalg.norm(left, axis=-1, keepdims=True), 1e-9)
    sin_part = np.einsum("fi,fi->f", np.cross(thigh, shank), left)
    cos_part = np.einsum("fi,fi->f", thigh, shank)
    return np.degrees(np.arctan2(sin_part, cos_part))


def joint_angle_limits(poses: np.ndarray, skeleton: Skeleton = H36M_17,
                       max_flexion_deg: float = PlausibilityLimits.max_flexion_deg,
                       max_knee_hyperextension_deg: float = PlausibilityLimits.max_knee_hyperextension_deg,
                       ) -> CheckResult:
    """Knee/elbow flexion within [0, max]; knees never bend forward beyond the tolerance."""
    poses = _as_sequence(poses, skeleton)
    worst_flex, worst_name = 0.0, ""
    min_signed = np.inf
    for side in ("l", "r"):
        for limb in (("hip", "knee", "ankle"), ("shoulder", "elbow", "wrist")):
            idx = _limb(skeleton, side, limb)
            if idx is None:
                continue
            flex = float(flexion_angles(poses, *idx).max()) if len(poses) else 0.0
            if flex > worst_flex:
                worst_flex, worst_name = flex, f"{side}_{limb[1]}"
            if limb[1] == "knee":
                lh, rh = _limb(skeleton, "l", ("hip",) * 3), _limb(skeleton, "r", ("hip",) * 3)
                if lh and rh and len(poses):
                    signed = signed_knee_flexion(poses, *idx, lh[0], rh[0])
                    min_signed = min(min_signed, float(signed.min()))
    if not np.isfinite(min_signed):
        min_signed = 0.0
    passed = worst_flex <= max_flexion_deg and min_signed >= -max_knee_hyperextension_deg
    return CheckResult(
        "joint_angles", passed, worst_flex, max_flexion_deg,
        f"max flexion {worst_flex:.1f} deg ({worst_name or '-'}) vs {max_flexion_deg:.0f}; "
        f"min signed knee flexion {min_signed:.1f} deg vs -{max_knee_hyperextension_deg:.0f}",
    )


def foot_joints(skeleton: Skeleton) -> list[int]:
    """The joints that touch the floor: names containing 'ankle' (else every leaf of the legs)."""
    feet = [i for i, n in enumerate(skeleton.joint_names) if "ankle" in n]
    if feet:
        return feet
    has_child = {p for p in skeleton.parents if p >= 0}
    return [i for i in range(skeleton.num_joints) if i not in has_child]


def feet_above_floor(poses: np.ndarray, skeleton: Skeleton = H36M_17, up_axis: int = 1, floor: float = 0.0,
                     tolerance_mm: float = PlausibilityLimits.floor_tolerance_mm,
                     max_median_foot_height_mm: float = PlausibilityLimits.max_median_foot_height_mm,
                     ) -> tuple[CheckResult, CheckResult]:
    """(floor, grounded): the lowest foot height over all frames, and its median over frames."""
    poses = _as_sequence(poses, skeleton)
    heights = poses[:, foot_joints(skeleton), up_axis] - floor  # (F, feet)
    lowest = heights.min(axis=1) if len(poses) else np.zeros(1)
    lo = float(lowest.min())
    med = float(np.median(lowest))
    return (
        CheckResult("floor", lo >= -tolerance_mm, lo, -tolerance_mm,
                    f"lowest foot {lo:.1f} mm above the floor vs >= {-tolerance_mm:.0f}"),
        CheckResult("grounded", med <= max_median_foot_height_mm, med, max_median_foot_height_mm,
                    f"median lowest foot {med:.1f} mm vs <= {max_median_foot_height_mm:.0f}"),
    )


def accelerations(poses: np.ndarray, fps: float) -> np.ndarray:
    """Joint acceleration magnitudes in m/s^2 from central second differences, (F-2, J)."""
    poses = np.asarray(poses, dtype=np.float64)
    acc = (poses[2:] - 2.0 * poses[1:-1] + poses[:-2]) * (fps * fps) / 1000.0
    return np.linalg.norm(acc, axis=-1)


def smoothness(poses: np.ndarray, fps: float, skeleton: Skeleton = H36M_17,
               max_accel_p99_ms2: float = PlausibilityLimits.max_accel_p99_ms2,
               max_accel_ms2: float = PlausibilityLimits.max_accel_ms2) -> CheckResult:
    """``value`` is the 99th percentile of accelerations; the maximum is checked too (glitches)."""
    poses = _as_sequence(poses, skeleton)
    if len(poses) < 3:
        return CheckResult("smoothness", True, 0.0, max_accel_p99_ms2, "fewer than 3 frames")
    acc = accelerations(poses, fps)
    p99 = float(np.percentile(acc, 99))
    frame, joint = np.unravel_index(int(np.argmax(acc)), acc.shape)
    peak = float(acc[frame, joint])
    return CheckResult("smoothness", p99 <= max_accel_p99_ms2 and peak <= max_accel_ms2, p99, max_accel_p99_ms2,
                       f"acceleration p99 {p99:.1f} m/s^2 vs {max_accel_p99_ms2:.0f}; max {peak:.1f} "
                       f"({skeleton.joint_names[joint]}, frame {frame + 1}) vs {max_accel_ms2:.0f}")


def check_motion(poses: np.ndarray, fps: float, skeleton: Skeleton = H36M_17, up_axis: int = 1,
                 floor: float = 0.0, limits: PlausibilityLimits = PlausibilityLimits()) -> PlausibilityReport:
    """All checks on one sequence of world-frame poses (F, J, 3) mm with ``up_axis`` up."""
    floor_check, grounded_check = feet_above_floor(poses, skeleton, up_axis, floor, limits.floor_tolerance_mm,
                                                   limits.max_median_foot_height_mm)
    report = PlausibilityReport()
    for check in (
        bone_length_constancy(poses, skeleton, limits.max_bone_rel_std, limits.max_torso_bone_rel_std),
        joint_angle_limits(poses, skeleton, limits.max_flexion_deg, limits.max_knee_hyperextension_deg),
        floor_check,
        grounded_check,
        smoothness(poses, fps, skeleton, limits.max_accel_p99_ms2, limits.max_accel_ms2),
    ):
        report.checks[check.name] = check
    return report
