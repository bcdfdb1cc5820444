"""The 3D panel of the rendered MP4: fixed scale, a view that glides instead of jumping."""

import numpy as np

from dualpose.skeleton import H36M_17
from dualpose.video.outputs import InferenceResult, LiftedTrack
from dualpose.video.render import Panel3D, view_rotation, View


def _track(track_id, frames, x0, rng):
    n = len(frames)
    pose = rng.normal(0, 150, (17, 3))
    pose[H36M_17.index("head_top"), 1] = 800.0
    world = np.repeat(pose[None], n, 0) + np.array([x0, 1000.0, 0.0])
    zeros = np.zeros((n, 17, 3), np.float32)
    return LiftedTrack(track_id, np.asarray(frames), np.zeros((n, 17, 2), np.float32), np.ones((n, 17), np.float32),
                       np.ones(n, bool), zeros, zeros, np.zeros((n, 3), np.float32), world.astype(np.float32), 1.0)


def test_view_glides_between_people_far_apart_and_keeps_its_scale():
    rng = np.random.default_rng(0)
    # person A for frames 0-59 at x = -3 m, then person B for frames 60-119 at x = +3 m
    result = InferenceResult([_track(0, range(60), -3000.0, rng), _track(1, range(60, 120), 3000.0, rng)],
                             H36M_17, 30.0, 640, 360, {})
    panel = Panel3D(result, 300)
    step = np.linalg.norm(np.diff(panel.centre, axis=0), axis=-1)
    assert step.max() < 6000.0 / 10  # the 6 m switch is spread over many frames, not one jump
    a_root, b_root = result.tracks[0].world_mm[0, 0], result.tracks[1].world_mm[0, 0]
    np.testing.assert_allclose(panel.centre[5], a_root, atol=1.0)  # settles on each person
    np.testing.assert_allclose(panel.centre[115], b_root, atol=1.0)
    # each person is drawn inside the panel while visible, at the same scale all along
    for frame, track in ((10, result.tracks[0]), (110, result.tracks[1])):
        k = frame - int(track.frame[0])
        pts = panel.project(track.world_mm[k], frame)
        assert ((pts > 0) & (pts < 300)).all()
    img = np.asarray(panel.draw([(result.tracks[0].world_mm[10], [(255, 0, 0)] * 16)], 10)).astype(int)
    assert ((img[..., 0] == 255) & (img[..., 1] == 0)).sum() > 20  # the skeleton is drawn


def test_view_rotation_is_a_rotation():
    r = view_rotation(View(azimuth_deg=35, elevation_deg=15))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) > 0
