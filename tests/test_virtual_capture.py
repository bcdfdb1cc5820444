"""Virtual cameras and the detector-like 2D noise model."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from dualpose.camera import Camera
from dualpose.data.schema import read_keypoint_table, write_keypoint_table
from dualpose.data.synthetic_motion import generate_motion, make_subjects, sequence_seed
from dualpose.data.virtual_capture import (
    CaptureOptions,
    NoiseSettings,
    capture_motion,
    concat_frames,
    detector_noise,
    empty_frames,
    place_cameras,
)
from dualpose.skeleton import H36M_17 as SK

FPS = 50.0
BODY = make_subjects(2, seed=0)[0]
WALK = generate_motion(BODY, "walk", 3.0, FPS, sequence_seed(0, 0, "walk", 0))
QUIET = NoiseSettings(enabled=False)


def film(world=WALK, seed=0, **options) -> object:
    return capture_motion(world, FPS, CaptureOptions(**options), seed, dataset="synthetic", split="train",
                          subject="S1", action="walk", sequence="walk_1")


def cameras_of(frames) -> dict[str, Camera]:
    out = {}
    for cam_id in np.unique(frames.camera_id):
        row = int(np.flatnonzero(frames.camera_id == cam_id)[0])
        out[str(cam_id)] = Camera.from_vectors(frames.cam_intrinsics[row], frames.cam_rotation[row],
                                               frames.cam_translation[row], frames.width[row], frames.height[row])
    return out


def test_cameras_are_placed_like_human36m_and_see_every_joint():
    opts = CaptureOptions(cameras=4)
    cams = place_cameras(WALK, opts, np.random.default_rng(3))
    assert [c.name for c in cams] == ["cam0", "cam1", "cam2", "cam3"]
    centre = WALK[:, 0].mean(axis=0)
    azimuths = []
    for cam in cams:
        eye = cam.center_world
        horizontal = np.hypot(eye[0] - centre[0], eye[2] - centre[2])
        assert horizontal >= 4000.0 - 1e-6  # at least the nearest distance; moved back if the subject did not fit
        assert 1000.0 <= eye[1] <= 2000.0
        assert cam.focal == pytest.approx(1150.0, rel=0.08)
        cam_pts = cam.world_to_camera(WALK)
        assert (cam_pts[..., 2] > 500.0).all()  # every joint in front
        uv = cam.project(cam_pts)
        assert (uv >= 0).all() and (uv[..., 0] <= cam.width).all() and (uv[..., 1] <= cam.height).all()
        azimuths.append(np.arctan2(eye[0] - centre[0], eye[2] - centre[2]))
    gaps = np.diff(np.sort(np.unwrap(np.sort(azimuths))))
    assert gaps.min() > np.radians(30.0)  # spread around the subject


def test_a_camera_too_close_is_moved_back_until_the_subject_fits():
    opts = CaptureOptions(cameras=2, camera_distance_m=(1.0, 1.0))
    for cam in place_cameras(WALK, opts, np.random.default_rng(0)):
        assert (cam.world_to_camera(WALK)[..., 2] > 0).all()
        uv = cam.project_world(WALK)
        assert (uv[..., 0] >= 0).all() and (uv[..., 0] <= cam.width).all()
        assert np.hypot(*(cam.center_world - WALK[:, 0].mean(axis=0))[[0, 2]]) > 1000.0


def test_filmed_columns_are_consistent_with_the_cameras():
    frames = film(noise=QUIET, cameras=3)
    n = len(WALK)
    assert frames.num_frames == 3 * n
    assert sorted(set(frames.video_id)) == ["S1_walk_1.cam0", "S1_walk_1.cam1", "S1_walk_1.cam2"]
    for cam_id, cam in cameras_of(frames).items():
        rows = frames.camera_id == cam_id
        assert np.array_equal(frames.frame[rows], np.arange(n))
        # 3D is the world motion in this camera's frame, mm
        np.testing.assert_allclose(frames.kp3d[rows], cam.world_to_camera(WALK), atol=0.05)
        np.testing.assert_allclose(cam.camera_to_world(frames.kp3d[rows].astype(np.float64)), WALK, atol=0.5)
        # without noise, 2D is the exact projection and fully confident
        np.testing.assert_allclose(frames.kp2d[rows], cam.project(frames.kp3d[rows]), atol=1e-2)
        assert (frames.conf[rows] == 1.0).all()
        np.testing.assert_allclose(frames.factor_2_5d[rows], frames.kp3d[rows][:, 0, 2] / cam.focal, rtol=1e-6)
    assert (frames.fps == FPS).all() and (frames.width == 1000).all() and (frames.height == 1000).all()


def test_detector_noise_statistics():
    rng = np.random.default_rng(0)
    clean = np.full((4000, SK.num_joints, 2), 500.0)
    settings = NoiseSettings(outlier_rate=0.0, dropout_rate=0.0)
    noisy, conf = detector_noise(clean, FPS, settings, rng, 1000, 1000)
    err = noisy - clean
    per_joint = np.sqrt((err**2).mean(axis=(0, 2)))  # per-axis rms
    expected = np.hypot(settings.jitter_px, settings.drift_px)
    assert per_joint[SK.index("pelvis")] == pytest.approx(expected, rel=0.15)
    assert per_joint[SK.index("l_wrist")] == pytest.approx(2.0 * expected, rel=0.15)  # wrists noisier
    assert per_joint[SK.index("l_wrist")] > per_joint[SK.index("l_ankle")] > per_joint[SK.index("thorax")]
    # the drift is temporally correlated, the jitter is not
    clean_only = dict(outlier_rate=0.0, dropout_rate=0.0)
    drift_only, _ = detector_noise(clean, FPS, NoiseSettings(jitter_px=0.0, **clean_only), rng, 1000, 1000)
    jitter_only, _ = detector_noise(clean, FPS, NoiseSettings(drift_px=0.0, **clean_only), rng, 1000, 1000)

    def lag1(x):
        x = (x - clean).reshape(len(x), -1)
        return float((x[1:] * x[:-1]).mean() / (x * x).mean())

    assert lag1(drift_only) > 0.8
    assert abs(lag1(jitter_only)) < 0.05
    # confidence falls with the error
    magnitude = np.linalg.norm(err, axis=-1).ravel()
    assert np.corrcoef(magnitude, conf.ravel())[0, 1] < -0.3
    assert 0.0 < conf.min() and conf.max() <= 1.0


def test_outliers_and_dropouts():
    rng = np.random.default_rng(1)
    clean = np.full((5000, SK.num_joints, 2), 500.0)
    settings = NoiseSettings(jitter_px=0.0, drift_px=0.0, outlier_rate=0.02, outlier_px=(40.0, 60.0),
                             outlier_frames=4, dropout_rate=0.01, dropout_frames=6)
    noisy, conf = detector_noise(clean, FPS, settings, rng, 1000, 1000)
    dropped = np.isnan(noisy).any(axis=-1)
    assert np.isnan(noisy[dropped]).all() and (conf[dropped] == 0.0).all()
    assert dropped.mean() == pytest.approx(0.01, rel=0.25)
    err = np.linalg.norm(noisy - clean, axis=-1)
    gross = ~dropped & (err > 30.0)
    assert gross.mean() == pytest.approx(0.02, rel=0.25)
    assert conf[gross].max() <= 0.45
    assert conf[~dropped & (err < 1e-6)].min() > 0.8  # untouched joints stay confident
    # gross errors last several frames
    runs = gross[1:] & gross[:-1]
    assert runs.sum() > 0.4 * gross.sum()


def test_joints_outside_the_image_are_clipped_and_unsure():
    clean = np.full((10, SK.num_joints, 2), 500.0)
    clean[:, 0] = [1200.0, -50.0]
    noisy, conf = detector_noise(clean, FPS, NoiseSettings(outlier_rate=0.0, dropout_rate=0.0),
                                 np.random.default_rng(0), 1000, 1000)
    assert (noisy[:, 0] == [999.0, 0.0]).all()
    assert conf[:, 0].max() <= 0.3 and conf[:, 1].min() > 0.3


def test_capture_is_deterministic_and_seed_dependent():
    a, b, c = film(seed=[1, 2]), film(seed=[1, 2]), film(seed=[1, 3])
    for name in ("kp2d", "conf", "kp3d", "cam_rotation"):
        assert np.asarray(getattr(a, name)).tobytes() == np.asarray(getattr(b, name)).tobytes()
    assert not np.array_equal(a.cam_translation, c.cam_translation)


def test_keypoint_table_round_trip(tmp_path):
    frames = concat_frames([film(seed=0), film(seed=1, cameras=2), empty_frames()])
    # two filmings of the same sequence name would collide: give the second its own ids
    frames.video_id = np.where(np.arange(frames.num_frames) >= len(WALK) * 4,
                               np.char.add(frames.video_id.astype(str), "b"), frames.video_id)
    path = write_keypoint_table(frames, tmp_path / "t.parquet")
    back = read_keypoint_table(path)
    assert back.num_frames == frames.num_frames == 6 * len(WALK)
    order = np.lexsort((frames.frame, frames.video_id))
    assert np.array_equal(back.strings("video_id"), frames.video_id[order])
    assert np.array_equal(back.kp2d, frames.kp2d[order], equal_nan=True)
    assert np.array_equal(back.conf, frames.conf[order])
    assert np.array_equal(back.kp3d, frames.kp3d[order])
    assert np.array_equal(back.factor_2_5d, frames.factor_2_5d[order])
    assert np.array_equal(back.cam_intrinsics, frames.cam_intrinsics[order])
    starts, lengths = back.video_runs()
    assert (lengths == len(WALK)).all() and len(starts) == 6


def test_options_are_strict():
    with pytest.raises(ValidationError):
        CaptureOptions(camera_count=3)
    with pytest.raises(ValidationError):
        CaptureOptions(noise={"jitter": 1.0})
    with pytest.raises(ValidationError, match="low <= high"):
        CaptureOptions(camera_distance_m=(6.0, 4.0))
    with pytest.raises(ValueError, match="wrong shape|expected"):
        capture_motion(np.zeros((5, 16, 3)), FPS, CaptureOptions(), 0, dataset="d", split="train", subject="s",
                       action="a", sequence="q")
