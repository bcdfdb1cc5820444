"""Pinhole camera: frames, look_at, projection, distortion, serialisation, depth factor."""

from __future__ import annotations

import numpy as np
import pytest

from dualpose.camera import Camera, depth_factor


def _random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_world_camera_round_trip_and_centre():
    cam = Camera(fx=1000, fy=1000, cx=500, cy=500, width=1000, height=1000,
                 R=_random_rotation(0), t=np.array([120.0, -40.0, 4500.0]))
    pts = np.random.default_rng(1).normal(0, 800, size=(5, 17, 3))
    cam_pts = cam.world_to_camera(pts)
    assert cam_pts.shape == (5, 17, 3)
    np.testing.assert_allclose(cam.camera_to_world(cam_pts), pts, atol=1e-9)
    # distances are preserved and the camera centre maps to the camera-frame origin
    np.testing.assert_allclose(np.linalg.norm(cam_pts[0, 1] - cam_pts[0, 0]), np.linalg.norm(pts[0, 1] - pts[0, 0]))
    np.testing.assert_allclose(cam.world_to_camera(cam.center_world), np.zeros(3), atol=1e-9)


@pytest.mark.parametrize("up", [(0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
def test_look_at_centres_the_target_and_keeps_up_up(up):
    up = np.array(up)
    target = np.array([200.0, 300.0, 900.0])
    side = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    eye = target + 4000.0 * side / np.linalg.norm(side) + 500.0 * up  # looking slightly down
    cam = Camera.look_at(eye, target, up=up, fx=1100.0, width=1000, height=1002)
    np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(cam.R) == pytest.approx(1.0)
    np.testing.assert_allclose(cam.center_world, eye, atol=1e-9)
    # the target is on the optical axis, at the image centre
    tc = cam.world_to_camera(target)
    np.testing.assert_allclose(tc[:2], 0.0, atol=1e-9)
    assert tc[2] == pytest.approx(np.linalg.norm(eye - target))
    np.testing.assert_allclose(cam.project_world(target), (500.0, 501.0), atol=1e-9)
    # a higher point appears higher in the image (smaller v), at the same u
    above = cam.project_world(target + 300.0 * up)
    assert above[1] < 501.0 - 50
    assert above[0] == pytest.approx(500.0, abs=1e-6)
    # camera x (image right) is forward x up, so the frame is right-handed with y down
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, up)
    assert cam.project_world(target + 300.0 * right / np.linalg.norm(right))[0] > 500.0 + 50


def test_look_at_rejects_degenerate_directions():
    with pytest.raises(ValueError, match="parallel to up"):
        Camera.look_at((0, 5000, 0), (0, 0, 0), up=(0, 1, 0), fx=1000, width=100, height=100)
    with pytest.raises(ValueError, match="coincide"):
        Camera.look_at((1, 2, 3), (1, 2, 3), fx=1000, width=100, height=100)


def test_projection_of_known_points():
    cam = Camera(fx=1000, fy=1100, cx=512, cy=384, width=1024, height=768)
    pts = np.array([[100.0, -50.0, 2000.0], [0.0, 0.0, 10.0], [-300.0, 600.0, 3000.0]])
    # u = fx X/Z + cx, v = fy Y/Z + cy
    np.testing.assert_allclose(cam.project(pts), [[562.0, 356.5], [512.0, 384.0], [412.0, 604.0]])
    with pytest.raises(ValueError, match="behind the camera"):
        cam.project(np.array([[0.0, 0.0, -1.0]]))


def test_zero_distortion_is_the_identity():
    cam = Camera(fx=1000, fy=1000, cx=500, cy=500, width=1000, height=1000)
    xy = np.random.default_rng(3).uniform(-0.5, 0.5, size=(4, 17, 2))
    np.testing.assert_array_equal(cam.distort(xy), xy)
    pts = np.concatenate([xy * 3000.0, np.full((4, 17, 1), 3000.0)], axis=-1)
    np.testing.assert_allclose(cam.project(pts, distort=True), cam.project(pts, distort=False))


def test_distortion_known_value():
    cam = Camera(fx=1000, fy=1000, cx=500, cy=500, width=1000, height=1000,
                 k=(0.1, 0.01, 0.0), p=(0.001, 0.002))
    # x = 0.1, y = 0.2: r2 = 0.05, radial = 1 + 0.1 * 0.05 + 0.01 * 0.05**2 = 1.005025
    # xd = 0.1 * radial + 2 p1 x y + p2 (r2 + 2 x^2) = 0.1005025 + 0.00004 + 0.00014
    # yd = 0.2 * radial + p1 (r2 + 2 y^2) + 2 p2 x y = 0.201005 + 0.00013 + 0.00008
    np.testing.assert_allclose(cam.distort(np.array([0.1, 0.2])), [0.1006825, 0.201215], rtol=0, atol=1e-12)
    np.testing.assert_allclose(cam.project(np.array([100.0, 200.0, 1000.0])), [600.6825, 701.215], atol=1e-9)
    np.testing.assert_allclose(cam.project(np.array([100.0, 200.0, 1000.0]), distort=False), [600.0, 700.0])
    # the principal point is a fixed point of the distortion
    np.testing.assert_allclose(cam.project(np.array([0.0, 0.0, 1000.0])), [500.0, 500.0])


def test_vectors_round_trip():
    cam = Camera(fx=1145.0, fy=1143.8, cx=512.5, cy=515.5, width=1000, height=1002, R=_random_rotation(4),
                 t=np.array([-346.0, 546.9, 5474.5]), k=(-0.207, 0.248, -0.0031), p=(-0.00094, -0.0013))
    back = Camera.from_vectors(cam.intrinsics_vector(), cam.rotation_vector(), cam.translation_vector(),
                               width=1000, height=1002, name="c1")
    assert back.intrinsics_vector().shape == (9,) and back.rotation_vector().shape == (9,)
    np.testing.assert_array_equal(back.intrinsics_vector(), cam.intrinsics_vector())
    np.testing.assert_array_equal(back.rotation_vector(), cam.rotation_vector())
    np.testing.assert_array_equal(back.translation_vector(), cam.translation_vector())
    assert (back.width, back.height, back.name) == (1000, 1002, "c1")
    pts = np.random.default_rng(5).normal(0, 500, size=(10, 3))
    # float32 storage: sub-millipixel agreement
    np.testing.assert_allclose(back.project_world(pts), cam.project_world(pts), atol=2e-2)


def test_from_vectors_reads_unknown_distortion_as_none():
    intr = np.array([1000, 1000, 500, 500, np.nan, np.nan, np.nan, np.nan, np.nan], dtype=np.float32)
    cam = Camera.from_vectors(intr, np.eye(3).reshape(9), np.zeros(3), width=1000, height=1000)
    assert cam.k == (0.0, 0.0, 0.0) and cam.p == (0.0, 0.0)
    np.testing.assert_allclose(cam.project(np.array([100.0, 200.0, 1000.0])), [600.0, 700.0])


def test_depth_factor_is_mm_per_pixel_at_root_depth():
    kp = np.zeros((2, 17, 3))
    kp[:, :, 2] = 4000.0
    kp[0, 0, 2], kp[1, 0, 2] = 5000.0, 2500.0
    f = depth_factor(kp, 1000.0)
    assert f.shape == (2,)
    np.testing.assert_allclose(f, [5.0, 2.5])
    np.testing.assert_allclose(depth_factor(kp, np.array([1000.0, 500.0])), [5.0, 5.0])
    np.testing.assert_allclose(depth_factor(kp, 1000.0, root=3), [4.0, 4.0])
    # meaning: moving a point at the root's depth by `factor` mm moves it by one pixel
    cam = Camera(fx=1000, fy=1000, cx=500, cy=500, width=1000, height=1000)
    root = np.array([30.0, -20.0, 5000.0])
    shift = cam.project(root + [f[0], 0.0, 0.0]) - cam.project(root)
    np.testing.assert_allclose(shift, [1.0, 0.0], atol=1e-9)
