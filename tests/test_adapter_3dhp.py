"""MPI-INF-3DHP adapter on npz files written in the P-STMO / MotionAGFormer layout."""

from __future__ import annotations

import numpy as np

from dualpose.codec import PoseCodec
import pytest

from dualpose.data.adapters import mpi_inf_3dhp
from dualpose.data.schema import read_keypoint_table
from dualpose.errors import DataFormatError
from tests.fixtures_formats import (
    H36M_INDEX_OF_3DHP,
    RunsCode,
    convert_to_tables,
    threedhp_test_data,
    threedhp_train_data,
    write_3dhp_npz,
)

TRAIN_SEQS = {"S1 Seq1": 25, "S1 Seq2": 50, "S2 Seq1": 25}


def to_h36m_order(points_3dhp: np.ndarray) -> np.ndarray:
    out = np.empty_like(points_3dhp)
    out[:, H36M_INDEX_OF_3DHP] = points_3dhp
    return out


@pytest.fixture()
def files(tmp_path):
    train = threedhp_train_data(TRAIN_SEQS)
    test = threedhp_test_data()
    paths = {"train": write_3dhp_npz(tmp_path / "data_train_3dhp.npz", train),
             "test": write_3dhp_npz(tmp_path / "data_test_3dhp.npz", test)}
    return train, test, paths


def test_converts_train_and_test(tmp_path, files):
    train, test, paths = files
    out = convert_to_tables(mpi_inf_3dhp, paths, {}, tmp_path / "out", dataset="3dhp")
    assert list(out) == ["train-S1", "train-S2", "test"]
    t = read_keypoint_table(out["train-S1"])
    assert sorted(set(t.strings("video_id"))) == ["S1_Seq1.0", "S1_Seq1.2", "S1_Seq2.0", "S1_Seq2.2"]
    starts, lengths = t.video_runs()
    for s, n in zip(starts, lengths):
        vid = t.strings("video_id")[s]
        subject, rest = vid.split("_")
        seq, cam = rest.split(".")
        src = train[f"{subject} {seq}"][0][cam]
        np.testing.assert_allclose(t.kp3d[s:s + n], to_h36m_order(src["data_3d"]), rtol=1e-6)
        np.testing.assert_allclose(t.kp2d[s:s + n], to_h36m_order(src["data_2d"]), rtol=1e-6)
        np.testing.assert_array_equal(t.kp3d[s:s + n, 0], src["data_3d"][:, 14].astype(np.float32))  # root 14
        assert (t.fps[s:s + n] == TRAIN_SEQS[f"{subject} {seq}"]).all()
        assert t.strings("camera_id")[s] == cam and t.strings("action")[s] == seq
        np.testing.assert_array_equal(t.frame[s:s + n], np.arange(n))
    assert (t.width == 2048).all() and (t.height == 2048).all() and t.valid.all() and (t.conf == 1).all()
    assert np.isnan(t.cam_intrinsics).all()
    # a constant known without labels: one normalised target unit is 1000 mm
    np.testing.assert_allclose(t.factor_2_5d, 2 * 1000.0 / 2048)

    t = read_keypoint_table(out["test"])
    assert list(np.unique(t.strings("video_id"))) == ["TS1", "TS5"]
    ts5 = t.strings("video_id") == "TS5"
    assert (t.width[ts5] == 1920).all() and (t.height[ts5] == 1080).all() and (t.fps[ts5] == 50).all()
    assert (t.width[~ts5] == 2048).all() and (t.fps[~ts5] == 25).all()
    np.testing.assert_array_equal(t.valid[ts5], test["TS5"]["valid"].astype(bool))
    np.testing.assert_allclose(t.kp3d[ts5], to_h36m_order(test["TS5"]["data_3d"]))
    assert set(t.strings("split")) == {"test"}


def test_least_squares_scale_is_exact_for_a_fronto_parallel_pose():
    rng = np.random.default_rng(0)
    z = rng.uniform(2000, 6000, (4, 1, 1))
    xy = rng.normal(0, 300, (4, 17, 2))
    kp3d = np.concatenate([xy, np.broadcast_to(z, (4, 17, 1))], axis=-1)
    kp2d = 1400.0 * xy / z + 1000.0
    np.testing.assert_allclose(mpi_inf_3dhp.least_squares_scale(kp2d, kp3d, root=0), z[:, 0, 0] / 1400.0)
    assert np.isnan(mpi_inf_3dhp.least_squares_scale(np.zeros((1, 17, 2)), kp3d[:1], root=0)).all()


def test_integer_camera_keys_and_only_test_split(tmp_path):
    train = threedhp_train_data({"S3 Seq2": 50})
    train["S3 Seq2"][0] = {int(k): v for k, v in train["S3 Seq2"][0].items()}
    p = write_3dhp_npz(tmp_path / "train.npz", train)
    out = convert_to_tables(mpi_inf_3dhp, {"train": p, "test": tmp_path / "absent.npz"}, {"splits": ["train"]},
                            tmp_path / "out")
    assert sorted(set(read_keypoint_table(out["train-S3"]).strings("video_id"))) == ["S3_Seq2.0", "S3_Seq2.2"]
    test = write_3dhp_npz(tmp_path / "test.npz", threedhp_test_data(("TS2",)))
    out = convert_to_tables(mpi_inf_3dhp, {"train": tmp_path / "absent.npz", "test": test}, {"splits": ["test"]},
                            tmp_path / "out2")
    assert list(out) == ["test"]


def test_nan_allowed_only_in_invalid_frames(tmp_path):
    test = threedhp_test_data(("TS1",))
    test["TS1"]["data_2d"][0, 3] = np.nan  # frame 0 is invalid
    test["TS1"]["data_3d"][0, 5, 2] = np.nan
    p = write_3dhp_npz(tmp_path / "test.npz", test)
    out = convert_to_tables(mpi_inf_3dhp, {"train": p, "test": p}, {"splits": ["test"]}, tmp_path / "out")
    t = read_keypoint_table(out["test"])
    assert not t.valid[0] and np.isnan(t.kp3d[0]).all() and np.isfinite(t.kp3d[1:]).all()
    missing = H36M_INDEX_OF_3DHP[3]
    assert t.conf[0, missing] == 0 and np.isnan(t.kp2d[0, missing]).all() and (t.conf[1:] == 1).all()
    test["TS1"]["data_3d"][4, 5, 2] = np.nan  # frame 4 is valid
    write_3dhp_npz(p, test)
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(mpi_inf_3dhp, {"train": p, "test": p}, {"splits": ["test"]}, tmp_path / "out3")
    assert info.value.field == "data['TS1'].data_2d/data_3d" and info.value.got == "NaN/inf in valid frame 4"


def _mutated(kind, mutate):
    train = threedhp_train_data(TRAIN_SEQS)
    test = threedhp_test_data()
    mutate(train if kind == "train" else test)
    return train if kind == "train" else test


def _set(container, key, value):
    container[key] = value


@pytest.mark.parametrize("kind, mutate, field, expected", [
    ("train", lambda d: _set(d, "S1-Seq1", d.pop("S1 Seq1")), "data['S1-Seq1']", "sequence keys like 'S1 Seq1'"),
    ("train", lambda d: _set(d, "S2 Seq1", d["S2 Seq1"][0]), "data['S2 Seq1']", "a [cameras, fps] pair"),
    ("train", lambda d: d["S1 Seq2"].__setitem__(1, -5), "data['S1 Seq2'][1]", "the frame rate, a positive number"),
    ("train", lambda d: d["S1 Seq1"][0]["2"].pop("data_3d"), "data['S1 Seq1'][0]['2'].data_3d", "present"),
    ("train", lambda d: _set(d["S1 Seq1"][0]["0"], "data_3d", d["S1 Seq1"][0]["0"]["data_3d"][:-1]),
     "data['S1 Seq1'][0]['0'].data_3d", "shape (10, 17, 3)"),
    ("train", lambda d: _set(d["S1 Seq1"][0]["0"], "data_2d", d["S1 Seq1"][0]["0"]["data_2d"][:, :16]),
     "data['S1 Seq1'][0]['0'].data_2d", "shape (N, 17, 2)"),
    ("train", lambda d: d["S2 Seq1"][0]["0"]["data_2d"].__setitem__((3, 3, 0), np.nan),
     "data['S2 Seq1'][0]['0'].data_2d", "finite values (no NaN or inf)"),
    ("test", lambda d: d["TS5"].pop("valid"), "data['TS5'].valid", "present"),
    ("test", lambda d: d["TS1"]["valid"].__setitem__(2, 2.0), "data['TS1'].valid", "flags that are 0 or 1"),
    ("test", lambda d: _set(d, "TS7", d.pop("TS5")), "data['TS7']",
     "test sequences ['TS1', 'TS2', 'TS3', 'TS4', 'TS5', 'TS6'] (or set options.test_size and options.test_fps for it)"),
])
def test_bad_input(tmp_path, kind, mutate, field, expected):
    path = write_3dhp_npz(tmp_path / f"{kind}.npz", _mutated(kind, mutate))
    other = write_3dhp_npz(tmp_path / "other.npz", threedhp_test_data() if kind == "train" else threedhp_train_data(TRAIN_SEQS))
    files = {kind: path, ("test" if kind == "train" else "train"): other}
    out = tmp_path / "out"
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(mpi_inf_3dhp, files, {}, out)
    assert info.value.path == str(path)
    assert info.value.field == field
    assert info.value.expected == expected
    assert not out.exists()


def test_hostile_truncated_and_wrong_member(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    np.savez_compressed(evil, data={"TS1": {"valid": RunsCode(f"touch '{marker}'")}})
    with pytest.raises(DataFormatError, match="pickle global"):
        convert_to_tables(mpi_inf_3dhp, {"train": evil, "test": evil}, {"splits": ["test"]}, tmp_path / "out")
    assert not marker.exists()
    good = write_3dhp_npz(tmp_path / "t.npz", threedhp_test_data())
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(mpi_inf_3dhp, {"train": cut, "test": cut}, {"splits": ["test"]}, tmp_path / "out")
    assert info.value.path == str(cut)
    other = tmp_path / "other.npz"
    np.savez(other, positions=np.zeros(3))
    with pytest.raises(DataFormatError) as info:
        convert_to_tables(mpi_inf_3dhp, {"train": other, "test": other}, {"splits": ["test"]}, tmp_path / "out")
    assert (info.value.field, info.value.expected) == ("data", "a member of the .npz archive")
    assert not (tmp_path / "out").exists()


def test_test_labels_cannot_change_what_the_model_sees_or_how_it_is_decoded(tmp_path):
    """No oracle: scaling or perturbing the test set's 3D labels leaves every model input and the
    decoding factor unchanged, so predictions in mm cannot depend on test labels."""
    test = threedhp_test_data()
    perturbed = threedhp_test_data()
    rng = np.random.default_rng(0)
    for seq in perturbed.values():
        seq["data_3d"] = seq["data_3d"] * 1.3 + rng.normal(0, 50, seq["data_3d"].shape)
    tables = []
    for name, data in (("a", test), ("b", perturbed)):
        paths = {"test": write_3dhp_npz(tmp_path / f"{name}.npz", data)}
        out = convert_to_tables(mpi_inf_3dhp, paths, {"splits": ["test"]}, tmp_path / name, dataset="3dhp")
        tables.append(read_keypoint_table(out["test"]))
    a, b = tables
    assert not np.allclose(a.kp3d, b.kp3d, equal_nan=True)
    np.testing.assert_array_equal(a.kp2d, b.kp2d)
    np.testing.assert_array_equal(a.conf, b.conf)
    np.testing.assert_array_equal(a.factor_2_5d, b.factor_2_5d)
    codec = PoseCodec()
    pred = np.random.default_rng(1).normal(0, 0.3, a.kp3d.shape).astype(np.float32)
    np.testing.assert_array_equal(codec.decode_target(pred, a.factor_2_5d, a.width),
                                  codec.decode_target(pred, b.factor_2_5d, b.width))
    np.testing.assert_array_equal(codec.encode_input(a.kp2d, a.conf, a.width, a.height),
                                  codec.encode_input(b.kp2d, b.conf, b.width, b.height))
    # TS5 (1920 px wide) and TS1 (2048) decode one unit to the same 1000 mm
    mm = codec.decode_target(np.ones((len(a.width), 17, 3), np.float32), a.factor_2_5d, a.width)
    np.testing.assert_allclose(mm[:, 1:], 1000.0, rtol=1e-6)  # the root (joint 0) decodes to 0
