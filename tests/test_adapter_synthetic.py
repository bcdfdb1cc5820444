"""The embedded default data set (adapter ``synthetic``)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from dualpose.camera import Camera
from dualpose.data.adapters import get_adapter
from dualpose.data.plausibility import check_motion
from dualpose.data.schema import read_keypoint_table, write_keypoint_table
from dualpose.data.synthetic_motion import ACTIONS
from dualpose.skeleton import H36M_17

synthetic = get_adapter("synthetic")


def convert(**options):
    return {p.name: p.frames for p in synthetic.convert({}, synthetic.Options(**options), "synthetic", H36M_17)}


def test_default_size_and_split():
    opts = synthetic.Options()
    assert synthetic.REQUIRED_FILES == ()
    assert (opts.subjects, opts.cameras, opts.fps, opts.seconds, opts.sequences_per_action) == (5, 4, 50.0, 6.0, 1)
    assert opts.actions == list(ACTIONS) and opts.resolved_test_subjects() == ["S5"]
    per_subject = len(ACTIONS) * 1 * int(6.0 * 50) * 4
    assert per_subject * 5 == 42_000  # the documented default size


def test_small_conversion_parts_ids_and_plausible_3d(tmp_path):
    parts = convert(subjects=3, actions=["walk", "sit"], seconds=1.0, cameras=2, sequences_per_action=2)
    assert list(parts) == ["train", "test"]
    train, test = parts["train"], parts["test"]
    assert set(train.subject) == {"S1", "S2"} and set(test.subject) == {"S3"}
    assert train.num_frames == 2 * 2 * 2 * 2 * 50 and test.num_frames == 2 * 2 * 2 * 50
    assert set(train.split) == {"train"} and set(test.split) == {"test"}
    assert "S1_walk_2.cam1" in set(train.video_id) and "S3_sit_1.cam0" in set(test.video_id)
    assert len(set(train.video_id)) == 16
    for vid in set(test.video_id):
        rows = test.video_id == vid
        row = int(np.flatnonzero(rows)[0])
        cam = Camera.from_vectors(test.cam_intrinsics[row], test.cam_rotation[row], test.cam_translation[row],
                                  1000, 1000)
        world = cam.camera_to_world(test.kp3d[rows].astype(np.float64))
        assert check_motion(world, 50.0).passed
    for name, frames in parts.items():
        back = read_keypoint_table(write_keypoint_table(frames, tmp_path / f"{name}.parquet"))
        assert back.num_frames == frames.num_frames
        assert back.categories["dataset"] == ["synthetic"]


def test_deterministic_and_seeded():
    a = convert(subjects=2, actions=["jump"], seconds=0.5, cameras=1)["train"]
    b = convert(subjects=2, actions=["jump"], seconds=0.5, cameras=1)["train"]
    c = convert(subjects=2, actions=["jump"], seconds=0.5, cameras=1, seed=1)["train"]
    assert a.kp2d.tobytes() == b.kp2d.tobytes() and a.kp3d.tobytes() == b.kp3d.tobytes()
    assert not np.allclose(a.kp3d, c.kp3d)


def test_adding_subjects_keeps_the_existing_sequences():
    small = convert(subjects=2, actions=["wave"], seconds=0.5, cameras=1, test_subjects=[])["train"]
    large = convert(subjects=3, actions=["wave"], seconds=0.5, cameras=1, test_subjects=[])["train"]
    rows = np.isin(large.subject, ["S1", "S2"])
    assert np.array_equal(large.kp3d[rows], small.kp3d)


def test_options_are_validated():
    with pytest.raises(ValidationError, match="unknown actions \\['dance'\\]"):
        synthetic.Options(actions=["walk", "dance"])
    with pytest.raises(ValidationError, match="test_subjects \\['S9'\\]"):
        synthetic.Options(subjects=3, test_subjects=["S9"])
    with pytest.raises(ValidationError):
        synthetic.Options(subject=3)  # typo: unknown option
