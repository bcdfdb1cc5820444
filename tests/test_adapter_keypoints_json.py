"""2D detector JSON (COCO-17, Halpe-26, BlazePose-33) -> 2D-only keypoint tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dualpose.data.adapters import keypoints_json
from dualpose.data.schema import read_keypoint_table
from dualpose.errors import DataFormatError
from dualpose.keypoint_formats import convert_keypoints
from dualpose.skeleton import H36M_17
from tests.fixtures_formats import convert_to_tables, detections_coco, write_blazepose_json, write_coco_json

META = {"width": 640, "height": 480, "fps": 30}


def test_coco_list_with_options(tmp_path):
    kps = detections_coco(6, 17, seed=1)
    path = write_coco_json(tmp_path / "walk.json", kps)
    out = convert_to_tables(keypoints_json, {"keypoints": path},
                            {"format": "coco17", "width": 640, "height": 480, "fps": 30, "subject": "me"},
                            tmp_path / "out", dataset="wild")
    assert list(out) == ["train-walk"]
    t = read_keypoint_table(out["train-walk"])
    expected, expected_conf = convert_keypoints(kps[..., :2], kps[..., 2], "coco17")
    np.testing.assert_allclose(t.kp2d, expected, rtol=1e-6)
    np.testing.assert_allclose(t.conf, expected_conf, rtol=1e-6)
    pelvis = H36M_17.index("pelvis")
    np.testing.assert_allclose(t.kp2d[:, pelvis], (kps[:, 11, :2] + kps[:, 12, :2]) / 2, rtol=1e-6)  # mid-hips
    np.testing.assert_array_equal(t.frame, np.arange(6))
    assert np.isnan(t.kp3d).all() and np.isnan(t.factor_2_5d).all() and not t.has_3d.any()
    assert set(t.strings("split")) == {"train"} and set(t.strings("video_id")) == {"walk"}
    assert set(t.strings("subject")) == {"me"} and set(t.strings("dataset")) == {"wild"}
    assert (t.width == 640).all() and (t.height == 480).all() and (t.fps == 30).all()


def test_highest_score_wins_and_gaps_are_missing_frames(tmp_path):
    kps = detections_coco(4, 17, seed=2)
    path = write_coco_json(tmp_path / "v.json", kps, frame_ids=["frame_000010.jpg", "11.jpg", "13.jpg", "14.jpg"],
                           extra_people={1: 0.5, 2: 0.99}, meta=META)
    t = read_keypoint_table(convert_to_tables(keypoints_json, {"keypoints": path}, {}, tmp_path / "out")["train-v"])
    np.testing.assert_array_equal(t.frame, [10, 11, 12, 13, 14])
    expected, _ = convert_keypoints(kps[..., :2], kps[..., 2], "coco17")
    np.testing.assert_allclose(t.kp2d[[0, 1, 4]], expected[[0, 1, 3]], rtol=1e-6)  # the 0.9 detection beats 0.5
    np.testing.assert_allclose(t.kp2d[3], expected[2] + 50, rtol=1e-6)  # 0.99 beats 0.9
    assert np.isnan(t.kp2d[2]).all() and (t.conf[2] == 0).all()
    assert (t.conf[[0, 1, 3, 4]] > 0).all()


def test_halpe26_uses_its_hip_neck_and_head(tmp_path):
    kps = detections_coco(3, 26, seed=3)
    path = write_coco_json(tmp_path / "alpha.json", kps, frame_ids=["0.jpg", "1.jpg", "2.jpg"], meta=META)
    t = read_keypoint_table(convert_to_tables(keypoints_json, {"keypoints": path}, {"format": "halpe26"},
                                              tmp_path / "out")["train-alpha"])
    np.testing.assert_allclose(t.kp2d[:, H36M_17.index("pelvis")], kps[:, 19, :2], rtol=1e-6)
    np.testing.assert_allclose(t.kp2d[:, H36M_17.index("thorax")], kps[:, 18, :2], rtol=1e-6)
    np.testing.assert_allclose(t.kp2d[:, H36M_17.index("head_top")], kps[:, 17, :2], rtol=1e-6)


def test_blazepose_normalised_to_pixels_and_empty_frames(tmp_path):
    rng = np.random.default_rng(4)
    lm = np.concatenate([rng.uniform(0.1, 0.9, (5, 33, 2)), rng.uniform(0.5, 1.0, (5, 33, 1))], axis=-1)
    path = write_blazepose_json(tmp_path / "mp.json", lm, meta={"width": 1768, "height": 994, "fps": 30},
                                empty_frames=(2,))
    t = read_keypoint_table(convert_to_tables(keypoints_json, {"keypoints": path}, {"format": "blazepose33"},
                                              tmp_path / "out")["train-mp"])
    size = np.array([1768, 994])
    keep = [0, 1, 3, 4]
    np.testing.assert_allclose(t.kp2d[keep, H36M_17.index("pelvis")], (lm[keep, 23, :2] + lm[keep, 24, :2]) / 2 * size,
                               rtol=1e-5)
    np.testing.assert_allclose(t.kp2d[keep, H36M_17.index("r_knee")], lm[keep, 26, :2] * size, rtol=1e-5)
    np.testing.assert_allclose(t.conf[keep, H36M_17.index("r_knee")], lm[keep, 26, 2], rtol=1e-6)
    assert np.isnan(t.kp2d[2]).all() and (t.conf[2] == 0).all()
    assert (t.width == 1768).all() and (t.height == 994).all()


def test_folder_of_files_gives_one_part_per_video(tmp_path):
    folder = tmp_path / "dets"
    folder.mkdir()
    for name, n in (("b", 3), ("a", 5)):
        write_coco_json(folder / f"{name}.json", detections_coco(n, 17, seed=n), meta=META)
    out = convert_to_tables(keypoints_json, {"keypoints": folder}, {"split": "test"}, tmp_path / "out")
    assert list(out) == ["test-a", "test-b"]
    t = read_keypoint_table([out["test-a"], out["test-b"]])
    _, lengths = t.video_runs()
    assert list(lengths) == [5, 3] and set(t.strings("split")) == {"test"}


def _coco_doc(tmp_path, mutate):
    path = write_coco_json(tmp_path / "bad.json", detections_coco(3, 17), meta=META)
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("mutate, field, expected", [
    (lambda d: d["annotations"][1].update(keypoints=[1.0] * 50), "annotations[1].keypoints",
     "51 numbers ([x, y, c] * 17)"),
    (lambda d: d["annotations"][2].pop("image_id"), "annotations[2].image_id", "present"),
    (lambda d: d["annotations"][0].update(image_id="cover.jpg"), "annotations[0].image_id",
     "a frame number (a non-negative integer, or a name ending in one)"),
    (lambda d: d["annotations"][0]["keypoints"].__setitem__(4, "x"), "keypoints", "numbers"),
    (lambda d: d.pop("width"), "width", "a width in the file or options.width"),
    (lambda d: d.update(fps=0), "fps", "a positive number"),
    (lambda d: d.update(annotations={"0": []}), "annotations", "a list of records"),
    (lambda d: d.update(annotations=[]), "annotations", "at least one detection"),
])
def test_bad_coco_input(tmp_path, mutate, field, expected):
    path = _coco_doc(tmp_path, mutate)
    out = tmp_path / "out"
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(keypoints_json, {"keypoints": path}, {}, out)
    assert info.value.path == str(path)
    assert info.value.field == field
    assert info.value.expected == expected
    assert not out.exists()


def test_bad_files_write_nothing(tmp_path):
    folder = tmp_path / "dets"
    folder.mkdir()
    write_coco_json(folder / "a.json", detections_coco(3, 17), meta=META)
    (folder / "b.json").write_text(json.dumps({"annotations": []})[:-3])  # truncated: a later file is bad
    out = tmp_path / "out"
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(keypoints_json, {"keypoints": folder}, {}, out)
    assert info.value.path == str(folder / "b.json") and info.value.expected == "valid JSON"
    assert not out.exists()
    lm = np.full((2, 32, 3), 0.5)
    path = write_blazepose_json(tmp_path / "mp.json", lm, meta=META)
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(keypoints_json, {"keypoints": path}, {"format": "blazepose33"}, out)
    assert (info.value.field, info.value.expected, info.value.got) == ("frames[0].landmarks", "33 landmarks", "32")
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(DataFormatError, match=r"at least one \*\.json file"):
        convert_to_tables(keypoints_json, {"keypoints": empty}, {}, out)
    assert not out.exists()
