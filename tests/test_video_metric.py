"""Metric scale, root trajectory, floor alignment and One-Euro smoothing, on known geometry."""

import numpy as np
import pytest

from dualpose.infer import CHAIN_TO_STATURE, stature_chain
from dualpose.skeleton import H36M_17
from dualpose.video.metric import (ANKLE_HEIGHT_TO_STATURE, Intrinsics, camera_to_world, floor_aligned,
                                   root_trajectory, stature_scale, up_direction)
from dualpose.video.sample import make_scene
from dualpose.video.smoothing import one_euro


@pytest.fixture(scope="module")
def scene():
    return make_scene(seconds=2.0, fps=30.0, seed=0)


def _camera_frame(scene, person=0):
    cam = scene.camera
    pts = cam.world_to_camera(scene.world_mm[person])
    return pts, cam.project(pts)


def test_root_trajectory_is_exact_for_exact_pose_and_keypoints(scene):
    cam_pts, px = _camera_frame(scene)
    root = cam_pts[:, 0]
    rel = cam_pts - root[:, None]
    intr = Intrinsics(scene.camera.fx, scene.camera.cx, scene.camera.cy, assumed=False)
    est = root_trajectory(rel, px, np.ones(px.shape[:2]), intr)
    np.testing.assert_allclose(est, root, atol=1e-3 * np.abs(root).max())
    # frames without keypoints are interpolated from their neighbours
    conf = np.ones(px.shape[:2])
    conf[10:14] = 0
    est2 = root_trajectory(rel, px, conf, intr)
    assert np.isfinite(est2).all() and np.abs(est2[10:14] - root[10:14]).max() < 30.0


def test_assumed_intrinsics_are_flagged():
    intr = Intrinsics.resolve(1920, 1080)
    assert (intr.focal_px, intr.cx, intr.cy, intr.assumed) == (1920.0, 960.0, 540.0, True)
    assert Intrinsics.resolve(1920, 1080, focal_px=1500.0, cx=900.0).assumed is False


def test_stature_scale_recovers_millimetres(scene):
    cam_pts, _ = _camera_frame(scene)
    rel = cam_pts - cam_pts[:, :1]
    units = rel / 731.0  # any unit
    scale = stature_scale(units, H36M_17, 1800.0)
    assert np.median(stature_chain(units * scale, H36M_17)) == pytest.approx(1800.0 * CHAIN_TO_STATURE, rel=1e-6)


def test_floor_alignment_puts_feet_on_the_floor_and_up_on_y(scene):
    cam_pts, _ = _camera_frame(scene)
    root = cam_pts[:, 0]
    stature = 1750.0
    world, rot = floor_aligned(cam_pts - root[:, None], root, H36M_17, stature)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    ankles = world[:, [H36M_17.index("l_ankle"), H36M_17.index("r_ankle")], 1].min(1)
    assert np.percentile(ankles, 5) == pytest.approx(ANKLE_HEIGHT_TO_STATURE * stature, abs=1e-6)
    # the synthetic walker is upright: the head is above the pelvis along the world's y
    head = world[:, H36M_17.index("head_top")]
    pelvis = world[:, 0]
    assert ((head - pelvis)[:, 1] > 400).all()
    # the scene's world is y up, so the recovered up direction equals the camera's view of +y
    up_cam = scene.camera.R @ np.array([0.0, 1.0, 0.0])
    assert np.degrees(np.arccos(np.clip(up_direction(cam_pts, H36M_17) @ up_cam, -1, 1))) < 8.0


def test_camera_to_world_for_a_level_camera():
    rot = camera_to_world(np.array([0.0, -1.0, 0.0]))  # level camera: up is -y (image y points down)
    np.testing.assert_allclose(rot, np.diag([1.0, -1.0, -1.0]), atol=1e-12)  # x right, y up, z toward camera


def test_one_euro_keeps_constants_reduces_jitter_and_restarts_at_gaps():
    rng = np.random.default_rng(0)
    const = np.full((50, 3), 7.0)
    np.testing.assert_allclose(one_euro(const, 30.0), const)
    t = np.arange(300) / 30.0
    clean = np.sin(2 * np.pi * 0.3 * t)[:, None] * 100
    noisy = clean + rng.normal(0, 5, clean.shape)
    smooth = one_euro(noisy, 30.0, min_cutoff_hz=1.0, beta=0.0)
    assert np.std(np.diff(smooth[20:, 0], 2)) < 0.3 * np.std(np.diff(noisy[20:, 0], 2))  # jitter
    # the speed term (beta) raises the cut-off when the signal moves: less lag, smaller error
    fast = one_euro(noisy, 30.0, min_cutoff_hz=1.0, beta=0.05)
    assert np.abs(fast[20:] - clean[20:]).mean() < 0.6 * np.abs(smooth[20:] - clean[20:]).mean()
    gap = noisy.copy()
    gap[100] = np.nan
    out = one_euro(gap, 30.0)
    assert np.isnan(out[100]).all() and out[101, 0] == gap[101, 0]  # restarts on the first frame after
    with pytest.raises(ValueError, match="fps must be > 0"):
        one_euro(const, 0.0)
