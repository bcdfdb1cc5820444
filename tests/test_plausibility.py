"""Human-motion plausibility checks: known numbers on constructed poses, and real CMU motion passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualpose.data.plausibility import (
    PlausibilityLimits,
    accelerations,
    bone_length_constancy,
    check_motion,
    feet_above_floor,
    flexion_angles,
    joint_angle_limits,
    limb_bones,
    signed_knee_flexion,
    smoothness,
)
from dualpose.data.synthetic_motion import forward_kinematics, make_body, rot_x
from dualpose.skeleton import H36M_17 as SK

CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu"
BODY = make_body("T", 1750.0, np.random.default_rng(0))


def standing(n_frames: int = 10, knee_deg: float = 0.0) -> np.ndarray:
    """Rest pose (legs straight, arms down) facing +z, both knees flexed by ``knee_deg``; floor at 0."""
    rot = np.broadcast_to(np.eye(3), (n_frames, SK.num_joints, 3, 3)).copy()
    for ankle in ("l_ankle", "r_ankle"):
        rot[:, SK.index(ankle)] = rot_x(np.full(n_frames, np.radians(knee_deg)))
    upright = np.broadcast_to(np.eye(3), (n_frames, 3, 3))
    pos = forward_kinematics(BODY.offsets, SK.parents, np.zeros((n_frames, 3)), upright, rot)
    pos[..., 1] -= pos[:, [SK.index("l_ankle"), SK.index("r_ankle")], 1].min() - BODY.ankle_height_mm
    return pos


def test_standing_pose_passes_every_check():
    report = check_motion(standing(), fps=50)
    assert report.passed, str(report)
    assert set(report.checks) == {"bone_lengths", "joint_angles", "floor", "grounded", "smoothness"}
    assert report.metrics()["floor"] == pytest.approx(BODY.ankle_height_mm)


def test_bone_length_constancy_reports_the_relative_std():
    pos = standing(10)
    knee, ankle = SK.index("r_knee"), SK.index("r_ankle")
    pos[5:, ankle] = pos[5:, knee] + 1.05 * (pos[5:, ankle] - pos[5:, knee])  # shank 5 % longer in half the frames
    check = bone_length_constancy(pos)
    assert not check.passed
    rel = 0.025 / 1.025  # lengths L and 1.05 L, half each
    assert check.value == pytest.approx(rel / PlausibilityLimits.max_bone_rel_std)
    assert "r_knee-r_ankle" in check.detail


def test_limb_bones_are_thigh_shank_upper_arm_forearm():
    names = [SK.joint_names[c] for (_, c), limb in zip(SK.bones, limb_bones(SK)) if limb]
    assert sorted(names) == sorted(["r_knee", "r_ankle", "l_knee", "l_ankle",
                                    "l_elbow", "l_wrist", "r_elbow", "r_wrist"])


def test_knee_flexion_angle_and_sign():
    bent = standing(3, knee_deg=60.0)
    assert flexion_angles(bent, SK.index("r_hip"), SK.index("r_knee"), SK.index("r_ankle")) == pytest.approx(60.0)
    signed = signed_knee_flexion(bent, SK.index("r_hip"), SK.index("r_knee"), SK.index("r_ankle"),
                                 SK.index("l_hip"), SK.index("r_hip"))
    assert signed == pytest.approx(60.0)
    assert joint_angle_limits(bent).passed

    forward = standing(3, knee_deg=-30.0)  # shank swung forwards: a knee bending the wrong way
    check = joint_angle_limits(forward)
    assert not check.passed
    assert "min signed knee flexion -30.0" in check.detail


def test_overflexed_elbow_fails():
    pos = standing(2)
    s, e, w = SK.index("l_shoulder"), SK.index("l_elbow"), SK.index("l_wrist")
    pos[:, w] = pos[:, e] + 0.99 * (pos[:, s] - pos[:, e])  # forearm folded back onto the upper arm
    check = joint_angle_limits(pos)
    assert not check.passed and check.value > 170


def test_floor_and_grounded():
    below = standing(4)
    below[..., 1] -= BODY.ankle_height_mm + 50.0  # ankles 50 mm under the floor
    floor, grounded = feet_above_floor(below)
    assert not floor.passed and floor.value == pytest.approx(-50.0)
    assert grounded.passed

    floating = standing(4)
    floating[..., 1] += 1000.0
    floor, grounded = feet_above_floor(floating)
    assert floor.passed and not grounded.passed
    assert grounded.value == pytest.approx(1000.0 + BODY.ankle_height_mm)

    lying = standing(4)[..., [0, 2, 1]]  # y and z swapped: the up axis is now 2
    assert feet_above_floor(lying, up_axis=2)[0].value == pytest.approx(BODY.ankle_height_mm)


def test_accelerations_are_exact_for_constant_acceleration():
    fps = 50.0
    t = np.arange(20) / fps
    pos = standing(20)
    pos += (0.5 * 3000.0 * t**2)[:, None, None] * np.array([1.0, 0.0, 0.0])  # 3 m/s^2 along x
    assert accelerations(pos, fps) == pytest.approx(np.full((18, SK.num_joints), 3.0))
    assert smoothness(pos, fps).passed

    pos[10, SK.index("l_wrist"), 1] += 300.0  # a 30 cm glitch in one frame: 2 * 0.3 m * 50^2 = 1500 m/s^2
    check = smoothness(pos, fps)
    assert not check.passed
    assert check.value < PlausibilityLimits.max_accel_p99_ms2  # the percentile alone would miss it
    assert "max 1500.0 (l_wrist, frame 10)" in check.detail


def test_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(F, 17, 3\)"):
        check_motion(np.zeros((5, 16, 3)), fps=50)


def test_cmu_motion_capture_is_plausible():
    path = CMU / "cmu_train.npz"
    if not path.exists():
        pytest.skip("reason: CMU data folder ../shared/data/cmu absent")
    d = np.load(path, allow_pickle=False)
    positions = d["positions"] * 1000.0
    failures = []
    for start, length, name in zip(d["seq_starts"], d["seq_lengths"], d["seq_names"]):
        report = check_motion(positions[start:start + length], fps=float(d["fps"]))
        if not report.passed:
            failures.append(f"{name}: {report}")
    assert not failures, failures
