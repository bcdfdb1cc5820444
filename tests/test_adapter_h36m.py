"""Human3.6M adapters (MotionBERT pickle, VideoPose3D npz) and the dataset's camera constants."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from pydantic import ValidationError

from dualpose.camera import Camera
from dualpose.data import h36m_cameras
from dualpose.data.adapters import h36m_pickle, h36m_videopose
from dualpose.data.schema import read_keypoint_table
from dualpose.errors import ConfigError, DataFormatError
from tests.fixtures_formats import (
    SMALL_H36M_VIDEOS,
    VIDEOPOSE_METADATA,
    convert_to_tables,
    h36m_pickle_data,
    moving_pose_17,
    qrot,
    reference_camera_to_world,
    reference_project,
    reference_world_to_camera,
    videopose_data,
    write_code_pickle,
    write_h36m_pickle,
    write_videopose_npz,
)


# ------------------------------------------------------------------------------------- cameras
def test_quaternion_matrix_matches_quaternion_rotation():
    rng = np.random.default_rng(0)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    v = rng.normal(size=(20, 3))
    np.testing.assert_allclose(v @ h36m_cameras.quaternion_to_matrix(q).T, qrot(q, v), atol=1e-12)


@pytest.mark.parametrize("subject", h36m_cameras.SUBJECTS)
def test_world_camera_round_trip_and_reference(subject):
    world = moving_pose_17(5, seed=1).reshape(-1, 3) * 1000.0
    for cam_id in h36m_cameras.CAMERA_IDS:
        cam = h36m_cameras.camera(subject, cam_id)
        assert np.linalg.det(cam.R) == pytest.approx(1.0, abs=1e-9)
        in_cam = cam.world_to_camera(world)
        np.testing.assert_allclose(in_cam, reference_world_to_camera(world, subject, cam_id), atol=1e-3)  # q is unit to ~1e-8
        np.testing.assert_allclose(cam.camera_to_world(in_cam), world, atol=1e-6)
        np.testing.assert_allclose(reference_camera_to_world(in_cam, subject, cam_id), world, atol=1e-3)
        assert (in_cam[:, 2] > 3000).all()  # the subject stands in front of every camera, metres away
        uv = h36m_cameras.project(in_cam, h36m_cameras.intrinsics(cam_id).vector())
        np.testing.assert_allclose(uv, reference_project(in_cam, cam_id), atol=1e-9)
        intr = h36m_cameras.intrinsics(cam_id)
        assert ((uv > 0) & (uv < [intr.width, intr.height])).all()


def test_camera_ids_and_sizes():
    assert h36m_cameras.camera_id_from_index(1) == "54138969"
    assert h36m_cameras.camera_id_from_index(4) == "60457274"
    sizes = {c: (i.width, i.height) for c, i in h36m_cameras.INTRINSICS.items()}
    assert sizes == {"54138969": (1000, 1002), "55011271": (1000, 1000), "58860488": (1000, 1000),
                     "60457274": (1000, 1002)}
    with pytest.raises(KeyError, match="ca_05"):
        h36m_cameras.camera_id_from_index(5)


# ------------------------------------------------------------------------------ pickle adapter
def test_pickle_converts_every_column(tmp_path):
    pkl = tmp_path / "h36m_sh_conf_cam_source_final.pkl"
    data = write_h36m_pickle(pkl)
    paths = convert_to_tables(h36m_pickle, {"pickle": pkl}, {}, tmp_path / "out", dataset="h36m")
    assert list(paths) == ["train-S1", "train-S5", "test-S9", "test-S11"]
    for split in ("train", "test"):
        src = data[split]
        parts = [paths[p] for p in sorted(paths) if p.startswith(split)]
        t = read_keypoint_table(parts)
        n = src["joint_2d"].shape[0]
        assert t.num_frames == n
        # rows are sorted by video; map them back to the pickle's rows by (source, frame)
        videos = t.strings("video_id")
        start_of = {s: int(np.flatnonzero(src["source"] == s)[0]) for s in np.unique(src["source"])}
        rows = np.array([start_of[v] for v in videos]) + t.frame
        np.testing.assert_array_equal(t.kp2d, src["joint_2d"][rows])
        np.testing.assert_array_equal(t.conf, src["confidence"][rows])
        np.testing.assert_array_equal(t.kp3d, src["joints_2.5d_image"][rows])
        np.testing.assert_array_equal(t.factor_2_5d, src["2.5d_factor"][rows])
        np.testing.assert_array_equal(t.strings("camera_id"), src["camera_name"][rows])
        np.testing.assert_array_equal(t.strings("action"), src["action"][rows])
        assert set(t.strings("split")) == {split} and set(t.strings("dataset")) == {"h36m"}
        subjects = np.array(["S" + str(int(v[2:4])) for v in videos])
        np.testing.assert_array_equal(t.strings("subject"), subjects)
        assert (t.fps == 50).all() and (t.width == 1000).all() and t.valid.all()
        tall = np.isin(t.strings("camera_id"), ["54138969", "60457274"])
        np.testing.assert_array_equal(t.height, np.where(tall, 1002, 1000))
        for i in np.unique(t.codes["video_id"], return_index=True)[1]:
            cam = h36m_cameras.camera(t.strings("subject")[i], t.strings("camera_id")[i])
            np.testing.assert_allclose(t.cam_intrinsics[i], cam.intrinsics_vector())
            np.testing.assert_allclose(t.cam_rotation[i], cam.rotation_vector())
            np.testing.assert_allclose(t.cam_translation[i], cam.translation_vector())
        starts, lengths = t.video_runs()
        for s, length in zip(starts, lengths):
            np.testing.assert_array_equal(t.frame[s:s + length], np.arange(length))


def test_pickle_string_lists_and_3d_confidence_give_the_same_tables(tmp_path):
    a = tmp_path / "a.pkl"
    b = tmp_path / "b.pkl"
    write_h36m_pickle(a)
    write_h36m_pickle(b, strings="list", confidence_3d=True, protocol=2)
    ta = read_keypoint_table(sorted(convert_to_tables(h36m_pickle, {"pickle": a}, {}, tmp_path / "oa").values()))
    tb = read_keypoint_table(sorted(convert_to_tables(h36m_pickle, {"pickle": b}, {}, tmp_path / "ob").values()))
    for name in ("kp2d", "conf", "kp3d", "factor_2_5d", "frame", "width", "height"):
        np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name))
    np.testing.assert_array_equal(ta.strings("video_id"), tb.strings("video_id"))


def test_pickle_repeated_source_continues_its_frame_count_and_split_parts(tmp_path):
    videos = {"train": [(1, 2, 1, 1), (5, 3, 1, 2), (1, 2, 1, 1)], "test": [(9, 2, 1, 1)]}
    data = h36m_pickle_data(videos, frames=lambda v: 4 + v)  # 4, 5, 6 frames
    pkl = tmp_path / "p.pkl"
    write_h36m_pickle(pkl, data)
    paths = convert_to_tables(h36m_pickle, {"pickle": pkl}, {"splits": ["train"], "part_by_subject": False},
                              tmp_path / "out")
    assert list(paths) == ["train"]
    t = read_keypoint_table(paths["train"])
    first = t.strings("video_id") == "s_01_act_02_subact_01_ca_01"
    np.testing.assert_array_equal(t.frame[first], np.arange(10))
    src = data["train"]
    np.testing.assert_array_equal(t.kp2d[first], np.concatenate([src["joint_2d"][:4], src["joint_2d"][9:]]))


def _break(path, mutate):
    data = h36m_pickle_data(SMALL_H36M_VIDEOS)
    mutate(data)
    write_h36m_pickle(path, data)


def _set_nan(d):
    d["test"]["joint_2d"][5, 3, 1] = np.nan


def _bad_cam(d):
    d["train"]["camera_name"][:9] = "55011271"


def _cam_changes(d):
    d["train"]["camera_name"][4] = "55011271"


def _bad_source(d):
    d["test"]["source"][:9] = "S9_Directions.54138969"


@pytest.mark.parametrize("mutate, field, expected", [
    (lambda d: d["train"].pop("joints_2.5d_image"), "train.joints_2.5d_image", "present"),
    (lambda d: d.pop("test"), "test", "present"),
    (lambda d: d["train"].update(joint_2d=d["train"]["joint_2d"][:, :16]), "train.joint_2d", "shape (N, 17, 2)"),
    (lambda d: d["train"].update(joint3d_image=d["train"]["joint3d_image"][:-1]),
     "train.joint3d_image", "shape (45, 17, 3)"),
    (lambda d: d["train"].update(joint_2d=d["train"]["joint_2d"].astype(np.int32)), "train.joint_2d",
     "a float array (float32 or float64)"),
    (lambda d: d["train"].update(action=d["train"]["action"][:-2]), "train.action", "shape (45,), one string per frame"),
    (_set_nan, "test.joint_2d", "finite values (no NaN or inf)"),
    (lambda d: d["train"]["confidence"].__setitem__((7, 2), 1.5), "train.confidence", "confidences in [0, 1]"),
    (lambda d: d["test"]["2.5d_factor"].__setitem__(3, 0.0), "test.2.5d_factor", "positive mm-per-pixel factors"),
    (_bad_cam, "train.camera_name", "camera 54138969 for source 's_01_act_02_subact_01_ca_01' (ca_01)"),
    (_cam_changes, "train.camera_name", "one value per video (source)"),
    (_bad_source, "test.source", "video names like 's_09_act_05_subact_02_ca_01'"),
    # a factor that does not relate the image-space 3D to the mm target (other frames, other units)
    (lambda d: d["test"]["2.5d_factor"].__setitem__(slice(10, 12), d["test"]["2.5d_factor"][10:12] * 1.1),
     "test.2.5d_factor", "joints_2.5d_image = joint3d_image * 2.5d_factor (root-relative, within 1% of the pose size)"),
    (lambda d: d["train"].update({"joints_2.5d_image": d["train"]["joints_2.5d_image"] / 1000.0}),
     "train.2.5d_factor", "joints_2.5d_image = joint3d_image * 2.5d_factor (root-relative, within 1% of the pose size)"),
])
def test_pickle_bad_input_names_file_and_field_and_writes_nothing(tmp_path, mutate, field, expected):
    pkl = tmp_path / "bad.pkl"
    _break(pkl, mutate)
    out = tmp_path / "out"
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(h36m_pickle, {"pickle": pkl}, {}, out)
    assert info.value.path == str(pkl)
    assert info.value.field == field
    assert info.value.expected == expected
    assert not out.exists() or not any(out.iterdir())


def test_pickle_non_string_entries(tmp_path):
    data = h36m_pickle_data(SMALL_H36M_VIDEOS, strings="list")
    data["train"]["action"][12] = 14  # an int inside the second video
    pkl = tmp_path / "p.pkl"
    write_h36m_pickle(pkl, data)
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(h36m_pickle, {"pickle": pkl}, {}, tmp_path / "out")
    assert (info.value.field, info.value.expected) == ("train.action", "strings")
    assert info.value.got == "int at index 12"
    data["train"]["camera_name"] = np.arange(45)
    write_h36m_pickle(pkl, data)
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(h36m_pickle, {"pickle": pkl}, {}, tmp_path / "out")
    assert (info.value.field, info.value.got) == ("train.camera_name", "dtype int64")


def test_pickle_truncated_or_hostile_file_writes_nothing(tmp_path):
    out = tmp_path / "out"
    pkl = tmp_path / "cut.pkl"
    write_h36m_pickle(pkl)
    pkl.write_bytes(pkl.read_bytes()[:-1000])
    with pytest.raises(DataFormatError, match="a complete, readable pickle"):
        convert_to_tables(h36m_pickle, {"pickle": pkl}, {}, out)
    marker = tmp_path / "pwned"
    evil = write_code_pickle(tmp_path / "evil.pkl", marker)
    with pytest.raises(DataFormatError, match="pickle global"):
        convert_to_tables(h36m_pickle, {"pickle": evil}, {}, out)
    assert not marker.exists()
    assert not out.exists() or not any(out.iterdir())
    not_dict = tmp_path / "list.pkl"
    not_dict.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(h36m_pickle, {"pickle": not_dict}, {}, out)
    assert info.value.field == "<top level>" and info.value.got == "a list"


# ----------------------------------------------------------------------- VideoPose3D adapter
SUBJECTS = {"S1": ["Walking 1", "TakingPhoto"], "S9": ["Directions"]}
VP_OPTIONS = {"train_subjects": ["S1"], "test_subjects": ["S9"]}


@pytest.fixture()
def videopose_files(tmp_path):
    pos3d, pos2d = videopose_data(SUBJECTS, frames=12, extra_2d_frames=3)
    return pos3d, pos2d, write_videopose_npz(tmp_path, pos3d, pos2d)


def test_videopose_cpn_camera_frame_and_projection(tmp_path, videopose_files):
    pos3d, pos2d, files = videopose_files
    paths = convert_to_tables(h36m_videopose, files, VP_OPTIONS, tmp_path / "out", dataset="h36m")
    assert list(paths) == ["train-S1", "test-S9"]
    t = read_keypoint_table([paths["train-S1"], paths["test-S9"]])
    assert t.num_frames == 3 * 4 * 12
    assert sorted(set(t.strings("video_id"))) == sorted(
        f"{s}_{a}.{c}" for s, acts in SUBJECTS.items() for a in acts for c in h36m_cameras.CAMERA_IDS)
    assert sorted(set(t.strings("action"))) == ["Directions", "Photo", "Walking"]
    assert (t.conf == 1).all() and (t.fps == 50).all()
    starts, lengths = t.video_runs()
    assert (lengths == 12).all()
    for s in starts:
        subject, rest = t.strings("video_id")[s].split("_", 1)
        action, cam_id = rest.rsplit(".", 1)
        rows = slice(s, s + 12)
        world_mm = pos3d[subject][action][:, h36m_videopose.KEEP_JOINTS].astype(np.float64) * 1000
        np.testing.assert_allclose(t.kp3d[rows], reference_world_to_camera(world_mm, subject, cam_id), atol=0.01)
        # the detections are stored as given (extra 2D frames dropped)
        cam_index = h36m_cameras.CAMERA_IDS.index(cam_id)
        np.testing.assert_array_equal(t.kp2d[rows], pos2d[subject][action][cam_index][:12])
        # the table's own camera reproduces the 2D: exactly with the dataset's model, sub-pixel with OpenCV's
        cam = Camera.from_vectors(t.cam_intrinsics[s], t.cam_rotation[s], t.cam_translation[s],
                                  int(t.width[s]), int(t.height[s]))
        assert np.abs(h36m_cameras.project(t.kp3d[rows], t.cam_intrinsics[s]) - t.kp2d[rows]).max() < 2e-3
        assert np.abs(cam.project(t.kp3d[rows]) - t.kp2d[rows]).max() < 1.0
        np.testing.assert_allclose(cam.camera_to_world(t.kp3d[rows].astype(np.float64)), world_mm, atol=0.05)
        np.testing.assert_allclose(t.factor_2_5d[rows], t.kp3d[rows, 0, 2] / cam.focal, rtol=1e-6)


def test_videopose_gt_projects_with_distortion(tmp_path):
    pos3d, pos2d = videopose_data({"S9": ["Walking 1"]}, frames=6)
    files = write_videopose_npz(tmp_path, pos3d, None)
    assert list(files) == ["data_3d"]
    paths = convert_to_tables(h36m_videopose, files, {"keypoints_2d": "gt", "train_subjects": [],
                                                      "test_subjects": ["S9"]}, tmp_path / "out")
    t = read_keypoint_table(paths["test-S9"])
    for s in t.video_runs()[0]:
        cam_index = h36m_cameras.CAMERA_IDS.index(t.strings("camera_id")[s])
        np.testing.assert_allclose(t.kp2d[s:s + 6], pos2d["S9"]["Walking 1"][cam_index], atol=2e-3)
    assert (t.conf == 1).all()


def _vp_break(tmp_path, mutate3d=None, mutate2d=None, metadata=None):
    pos3d, pos2d = videopose_data(SUBJECTS, frames=8)
    if mutate3d:
        mutate3d(pos3d)
    if mutate2d:
        mutate2d(pos2d)
    return write_videopose_npz(tmp_path, pos3d, pos2d, metadata)


@pytest.mark.parametrize("kind, mutate3d, mutate2d, metadata, field, expected", [
    ("data_3d", lambda p: p.pop("S9"), None, None, "positions_3d['S9']", "present"),
    ("data_3d", lambda p: p["S1"].update({"Walking 1": p["S1"]["Walking 1"][:, :17]}), None, None,
     "positions_3d['S1']['Walking 1']", "shape (N, 32, 3)"),
    ("data_3d", lambda p: p["S9"]["Directions"].__setitem__((2, 5, 0), np.inf), None, None,
     "positions_3d['S9']['Directions']", "finite values (no NaN or inf)"),
    ("data_2d", None, lambda p: p["S1"].pop("TakingPhoto"), None, "positions_2d['S1']['TakingPhoto']", "present"),
    ("data_2d", None, lambda p: p["S1"]["Walking 1"].pop(), None, "positions_2d['S1']['Walking 1']",
     "a list of 4 per-camera arrays"),
    ("data_2d", None, lambda p: p["S9"]["Directions"].__setitem__(2, p["S9"]["Directions"][2][:5]), None,
     "positions_2d['S9']['Directions'][2]", "at least the 8 frames of the 3D sequence"),
    ("data_2d", None, None, {**VIDEOPOSE_METADATA, "keypoints_symmetry": [[1, 2, 3, 14, 15, 16], [4, 5, 6, 11, 12, 13]]},
     "metadata.keypoints_symmetry", "left/right joints [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]] (the h36m17 order)"),
])
def test_videopose_bad_input(tmp_path, kind, mutate3d, mutate2d, metadata, field, expected):
    files = _vp_break(tmp_path, mutate3d, mutate2d, metadata)
    out = tmp_path / "out"
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(h36m_videopose, files, VP_OPTIONS, out)
    assert info.value.path == str(files[kind])
    assert info.value.field == field
    assert info.value.expected == expected
    assert not out.exists()


def test_videopose_hostile_npz_and_config_errors(tmp_path):
    from tests.fixtures_formats import RunsCode

    marker = tmp_path / "pwned"
    evil = tmp_path / "data_3d_h36m.npz"
    np.savez_compressed(evil, positions_3d={"S1": {"Walking": RunsCode(f"touch '{marker}'")}})
    with pytest.raises(DataFormatError, match="pickle global"):
        convert_to_tables(h36m_videopose, {"data_3d": evil}, {"keypoints_2d": "gt"}, tmp_path / "out")
    assert not marker.exists()
    with pytest.raises(ConfigError, match="needs files.data_2d"):
        convert_to_tables(h36m_videopose, {"data_3d": evil}, {}, tmp_path / "out")
    with pytest.raises(ValidationError, match="both train_subjects and test_subjects"):
        h36m_videopose.Options(train_subjects=["S1", "S9"], test_subjects=["S9"])


@pytest.mark.parametrize("name, files", [("h36m_pickle", ("pickle",)), ("h36m_videopose", ("data_3d",)),
                                         ("mpi_inf_3dhp", ("train", "test")), ("keypoints_json", ("keypoints",))])
def test_registered_adapters_follow_the_contract(name, files):
    from dualpose.data.adapters import get_adapter
    from dualpose.data.adapters.base import AdapterOptions

    adapter = get_adapter(name)
    assert adapter.REQUIRED_FILES == files
    assert issubclass(adapter.Options, AdapterOptions)
    adapter.Options()  # every option has a default
    with pytest.raises(ValidationError, match="extra"):
        adapter.Options.model_validate({"no_such_option": 1})
