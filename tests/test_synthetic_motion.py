"""Procedural motion: plausible on every action and subject, deterministic, and each action does what it says."""

from __future__ import annotations

import numpy as np
import pytest

from dualpose.data.plausibility import check_motion
from dualpose.data.synthetic_motion import (
    ACTIONS,
    HEIGHT_RANGE_MM,
    forward_kinematics,
    generate_motion,
    make_subjects,
    periodic_bump,
    rot_x,
    rot_y,
    rot_z,
    sequence_seed,
    smooth_noise,
    soft_clip,
)
from dualpose.skeleton import H36M_17 as SK

FPS = 50.0
SUBJECTS = make_subjects(5, seed=0)


def motion(action: str, subject: int = 0, k: int = 0, seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    return generate_motion(SUBJECTS[subject], action, seconds, FPS, sequence_seed(seed, subject, action, k))


def standing_pelvis_height(subject: int) -> float:
    body = SUBJECTS[subject]
    return -(body.offsets[SK.index("r_knee"), 1] + body.offsets[SK.index("r_ankle"), 1]) + body.ankle_height_mm


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_and_subject_is_plausible(action):
    for s in range(len(SUBJECTS)):
        pos = motion(action, s)
        assert pos.shape == (200, SK.num_joints, 3)
        report = check_motion(pos, FPS)
        assert report.passed, f"{SUBJECTS[s].name} {action}: {report}"
        # bone lengths are exactly the body's (forward kinematics)
        assert np.allclose(SK.bone_lengths(pos), SUBJECTS[s].bone_lengths()[None], atol=1e-6)
        # soles never below the floor, and they do reach it (within 2.5 cm for running strides)
        lowest_sole = pos[:, [SK.index("l_ankle"), SK.index("r_ankle")], 1].min(axis=1) - SUBJECTS[s].ankle_height_mm
        assert lowest_sole.min() >= -1e-6
        assert lowest_sole.min() < 25.0


def test_same_seed_same_bytes_different_seed_different_motion():
    a = motion("walk", 1, seed=7)
    b = motion("walk", 1, seed=7)
    assert a.tobytes() == b.tobytes()
    c = motion("walk", 1, seed=8)
    assert np.abs(a - c).max() > 50.0
    assert make_subjects(3, 5)[2].offsets.tobytes() == make_subjects(3, 5)[2].offsets.tobytes()
    assert not np.array_equal(make_subjects(3, 5)[0].offsets, make_subjects(3, 6)[0].offsets)


def test_sequences_have_independent_streams():
    # the same (subject, action, sequence) is the same motion whatever else is generated
    assert motion("run", 2, k=1).tobytes() == generate_motion(
        SUBJECTS[2], "run", 4.0, FPS, sequence_seed(0, 2, "run", 1)).tobytes()
    assert not np.allclose(motion("run", 2, k=0), motion("run", 2, k=1))


def test_subjects_differ_in_stature_and_proportions():
    heights = np.array([b.height_mm for b in SUBJECTS])
    assert heights.min() >= HEIGHT_RANGE_MM[0] and heights.max() <= HEIGHT_RANGE_MM[1]
    assert heights.max() - heights.min() > 200.0  # spread over the range
    bones = np.stack([b.bone_lengths() for b in SUBJECTS])
    assert len({tuple(np.round(row, 3)) for row in bones}) == len(SUBJECTS)
    ratios = bones / heights[:, None]
    assert np.ptp(ratios, axis=0).max() > 0.005  # proportions differ, not only the scale
    thigh = bones[:, [c for _, c in SK.bones].index(SK.index("r_knee"))]
    assert np.all((thigh > 350) & (thigh < 520))
    # left and right limbs are equally long
    for left, right in SK.flip_pairs:
        li, ri = [c for _, c in SK.bones].index(left), [c for _, c in SK.bones].index(right)
        assert np.allclose(bones[:, li], bones[:, ri])


def test_forward_kinematics_known_positions():
    offsets = np.zeros((3, 3))
    offsets[1] = [0.0, -10.0, 0.0]
    offsets[2] = [0.0, -5.0, 0.0]
    parents = (-1, 0, 1)
    rot = np.broadcast_to(np.eye(3), (1, 3, 3, 3)).copy()
    rot[0, 1] = rot_z(np.array(np.pi / 2))  # first bone turned 90 deg about z: points along +x
    rot[0, 2] = rot_x(np.array(np.pi / 2))  # second bone turned about x relative to the first
    pos = forward_kinematics(offsets, parents, np.array([[1.0, 2.0, 3.0]]), np.eye(3)[None], rot)
    assert pos[0] == pytest.approx(np.array([[1, 2, 3], [11, 2, 3], [11, 2, -2]], dtype=float))


def test_rotation_helpers_are_rotations():
    a = np.linspace(-3, 3, 7)
    for r in (rot_x(a), rot_y(a), rot_z(a)):
        assert np.allclose(r @ np.swapaxes(r, -1, -2), np.eye(3))
        assert np.allclose(np.linalg.det(r), 1.0)
    assert rot_y(np.array(np.pi / 2)) @ np.array([0, 0, 1.0]) == pytest.approx([1.0, 0.0, 0.0])


def test_signal_helpers():
    rng = np.random.default_rng(0)
    noise = smooth_noise(rng, 5000, 3, fps=50.0, cutoff_hz=1.0)
    assert noise.std(axis=0) == pytest.approx([1.0, 1.0, 1.0], abs=0.15)
    lag1 = np.mean(noise[1:] * noise[:-1]) / np.mean(noise * noise)
    assert lag1 > 0.95  # low-pass: neighbouring frames almost equal
    phase = np.linspace(0, 1, 101)
    bump = periodic_bump(phase, 0.25, 4.0)
    assert bump.max() == pytest.approx(1.0) and phase[np.argmax(bump)] == pytest.approx(0.25)
    x = np.linspace(-100, 300, 401)
    y = soft_clip(x, 0.0, 150.0, 3.0)
    assert y.min() >= 0.0 and y.max() <= 150.0
    assert y[x == 75.0] == pytest.approx(75.0, abs=1e-3)


def test_walk_and_run_travel_at_human_speeds():
    def speed(pos):
        step = np.linalg.norm(np.diff(pos[:, 0, [0, 2]], axis=0), axis=1)
        return step.sum() / (len(pos) / FPS) / 1000.0

    walks = [speed(motion("walk", s)) for s in range(5)]
    runs = [speed(motion("run", s)) for s in range(5)]
    assert 0.7 < min(walks) and max(walks) < 1.8
    assert 2.0 < min(runs) and max(runs) < 4.5


def test_squat_and_sit_lower_the_pelvis_and_jump_leaves_the_floor():
    for s in range(5):
        stand = standing_pelvis_height(s)
        assert motion("squat", s)[:, 0, 1].min() < 0.75 * stand
        assert motion("sit", s, seconds=6.0)[:, 0, 1].min() < 0.7 * stand
        jump = motion("jump", s)
        soles = jump[:, [SK.index("l_ankle"), SK.index("r_ankle")], 1].min(axis=1) - SUBJECTS[s].ankle_height_mm
        assert soles.max() > 100.0  # both feet off the floor
        assert motion("wave", s)[:, 0, 1].min() > 0.9 * stand  # waving: standing


def test_wave_raises_a_hand_above_the_head_and_turn_turns():
    for s in range(5):
        wave = motion("wave", s)
        wrists = wave[:, [SK.index("l_wrist"), SK.index("r_wrist")], 1].max(axis=1)
        assert (wrists - wave[:, SK.index("head_top"), 1]).max() > 0.0
        turn = motion("turn", s)
        left = turn[:, SK.index("l_hip")] - turn[:, SK.index("r_hip")]
        heading = np.unwrap(np.arctan2(left[:, 2], left[:, 0]))
        assert np.degrees(np.ptp(heading)) > 90.0


def test_unknown_action_is_rejected():
    with pytest.raises(ValueError, match="unknown action 'dance'"):
        generate_motion(SUBJECTS[0], "dance", 1.0, FPS, 0)
