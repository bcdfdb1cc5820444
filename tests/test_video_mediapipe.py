"""MediaPipe BlazePose: result conversion, and the worker run with a separate environment's Python.

The worker test needs an interpreter that can import mediapipe 0.10.21 (its own environment,
because MediaPipe needs protobuf<5): set DUALPOSE_MEDIAPIPE_PYTHON; it skips otherwise.
"""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from dualpose.errors import DataFormatError
from dualpose.video.detectors import landmarks_to_people, load_keypoint_file, run_mediapipe_worker
from dualpose.video.sample import make_scene
from tests.video_support import write_stick_video


def _marks(values):
    return SimpleNamespace(landmark=[SimpleNamespace(x=x, y=y, z=z, visibility=v) for x, y, z, v in values])


def test_landmarks_become_pixels_with_visibility_as_confidence():
    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.uniform(0, 1, (33, 3)), rng.uniform(0.5, 1, (33, 1))], -1)
    world = np.concatenate([rng.normal(0, 0.3, (33, 3)), np.ones((33, 1))], -1)
    people = landmarks_to_people(SimpleNamespace(pose_landmarks=_marks(vals), pose_world_landmarks=_marks(world)),
                                 640, 480)
    assert len(people) == 1
    np.testing.assert_allclose(people[0].keypoints, vals[:, :2] * [640, 480])
    np.testing.assert_allclose(people[0].confidence, vals[:, 3])
    np.testing.assert_allclose(people[0].world, world[:, :3])
    assert landmarks_to_people(SimpleNamespace(pose_landmarks=None), 640, 480) == []


def test_worker_output_schema_is_read_with_world_landmarks(tmp_path):
    rng = np.random.default_rng(1)
    frames = []
    for i in range(12):
        lm = [{"x": float(x), "y": float(y), "z": 0.0, "visibility": 0.9} for x, y in rng.uniform(0.3, 0.7, (33, 2))]
        wl = [{"x": float(x), "y": float(y), "z": float(z)} for x, y, z in rng.normal(0, 0.3, (33, 3))]
        frames.append({"frame": i, "landmarks": lm if i != 5 else [], "world_landmarks": wl if i != 5 else []})
    path = tmp_path / "bp.json"
    path.write_text(json.dumps({"width": 320, "height": 240, "fps": 25.0, "frames": frames}))
    det = load_keypoint_file(path, "blazepose33")
    assert det.num_frames == 12 and len(det.frame) == 11 and 5 not in det.frame
    assert det.extra["world"].shape == (11, 17, 3) and det.fps == 25.0


def test_worker_failure_is_reported_with_its_message(tmp_path):
    with pytest.raises(DataFormatError, match="mediapipe worker"):
        run_mediapipe_worker("/bin/false", tmp_path / "none.mp4", tmp_path / "out.json")


@pytest.mark.skipif(not os.environ.get("DUALPOSE_MEDIAPIPE_PYTHON"),
                    reason="set DUALPOSE_MEDIAPIPE_PYTHON to a Python with mediapipe 0.10.21 installed")
def test_mediapipe_worker_on_a_generated_video(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    scene = make_scene(seconds=0.5, fps=30.0, width=320, height=180)
    video = write_stick_video(tmp_path / "clip.mp4", scene.project()[1], 320, 180, 30.0)
    out = run_mediapipe_worker(os.environ["DUALPOSE_MEDIAPIPE_PYTHON"], video, tmp_path / "bp.json")
    doc = json.loads(out.read_text())
    assert (doc["width"], doc["height"], doc["fps"]) == (320, 180, 30.0)
    assert len(doc["frames"]) == 15 and doc["timing"]["frames"] == 15
    assert all(len(f["landmarks"]) in (0, 33) for f in doc["frames"])
    # a folder of images works the same way, with the frame rate given
    from PIL import Image

    from dualpose.video.decode import iter_frames

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(iter_frames(video, limit=6)):
        Image.fromarray(frame).save(folder / f"{i:03d}.png")
    doc = json.loads(run_mediapipe_worker(os.environ["DUALPOSE_MEDIAPIPE_PYTHON"], folder, tmp_path / "f.json",
                                          fps=12.5).read_text())
    assert (doc["width"], doc["height"], doc["fps"], len(doc["frames"])) == (320, 180, 12.5, 6)
