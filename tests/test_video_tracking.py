"""Person tracks: identity switches split by jumps in position or scale; selection rules."""

import numpy as np
import pytest

from dualpose.skeleton import H36M_17
from dualpose.video.detectors import Detections
from dualpose.video.tracking import TrackingOptions, build_tracks, dense_track, select_tracks


def _person(centre, size, frames, rng):
    base = rng.uniform(-0.5, 0.5, (17, 2)) * size
    base[0] = [-size / 2, -size / 2]
    base[1] = [size / 2, size / 2]  # the box is exactly size x size
    drift = np.linspace(0, 20, frames)[:, None, None]
    return np.asarray(centre) + base[None] + drift


def _detections(rows):
    """rows: list of (frame, (17, 2) points)."""
    rows = sorted(rows, key=lambda r: r[0])
    kp = np.array([p for _, p in rows], np.float32)
    return Detections(np.array([f for f, _ in rows]), kp, np.full(kp.shape[:2], 0.9, np.float32),
                      np.full(len(rows), 0.9, np.float32), 1280, 720, 30.0, max(f for f, _ in rows) + 1)


def test_a_single_person_detector_switching_people_gives_separate_tracks():
    rng = np.random.default_rng(0)
    a = _person([300, 360], 300, 90, rng)
    b = _person([1000, 380], 220, 90, rng)
    # frames 0-29 person A, 30-59 the detector jumps to B, 60-89 back to A (as MediaPipe did)
    rows = [(f, (a if f < 30 or f >= 60 else b)[f]) for f in range(90)]
    det = _detections(rows)
    tracks = build_tracks(det, TrackingOptions(max_gap=40))
    assert len(tracks) == 2
    frames = [set(det.frame[t.rows]) for t in tracks]
    assert frames[0] == set(range(30)) | set(range(60, 90))  # A continues after the gap
    assert frames[1] == set(range(30, 60))
    # without the long gap allowance, A's return is a third track
    assert len(build_tracks(det, TrackingOptions(max_gap=10))) == 3
    span, kp, conf = dense_track(det, tracks[0])
    assert span.tolist() == list(range(90)) and (conf[30:60] == 0).all() and np.isnan(kp[30:60]).all()


def test_a_jump_in_scale_alone_splits_a_track():
    rng = np.random.default_rng(1)
    near = _person([640, 360], 400, 40, rng)
    far = _person([650, 360], 200, 40, rng)  # same place, half the size: another person behind
    det = _detections([(f, (near if f < 20 else far)[f]) for f in range(40)])
    assert [len(t.rows) for t in build_tracks(det)] == [20, 20]


def test_two_people_per_frame_and_selection_rules():
    rng = np.random.default_rng(2)
    a = _person([300, 360], 300, 60, rng)  # large, left
    b = _person([660, 360], 150, 50, rng)  # small, central, shorter
    rows = [(f, a[f]) for f in range(60)] + [(f + 10, b[f]) for f in range(50)]
    det = _detections(rows)
    tracks = build_tracks(det)
    assert [len(t.rows) for t in tracks] == [60, 50]
    assert select_tracks(det, tracks, "longest")[0].track_id == 0
    assert select_tracks(det, tracks, "largest")[0].track_id == 0
    assert select_tracks(det, tracks, "central")[0].track_id == 1
    assert select_tracks(det, tracks, "first")[0].track_id == 0
    assert select_tracks(det, tracks, "id:1")[0].track_id == 1
    assert len(select_tracks(det, tracks, "all")) == 2
    with pytest.raises(ValueError, match="no track 7"):
        select_tracks(det, tracks, "id:7")
    with pytest.raises(ValueError, match="unknown person rule 'tallest'"):
        select_tracks(det, tracks, "tallest")


def test_short_tracks_are_dropped():
    rng = np.random.default_rng(3)
    a = _person([300, 360], 300, 30, rng)
    ghost = _person([1000, 200], 100, 5, rng)
    det = _detections([(f, a[f]) for f in range(30)] + [(f, ghost[f]) for f in range(5)])
    assert [len(t.rows) for t in build_tracks(det, TrackingOptions(min_frames=10))] == [30]
    assert H36M_17.num_joints == det.kp2d.shape[1]
