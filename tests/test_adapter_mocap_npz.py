"""3D motion npz adapter (``mocap_npz``): small files written here, and the real CMU file when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualpose.camera import Camera
from dualpose.data.adapters import get_adapter
from dualpose.data.adapters.mocap_npz import read_motion_npz, split_by_sequence
from dualpose.data.plausibility import check_motion
from dualpose.data.schema import read_keypoint_table, write_keypoint_table
from dualpose.data.synthetic_motion import generate_motion, make_subjects, sequence_seed
from dualpose.errors import DataFormatError
from dualpose.skeleton import H36M_17 as SK

CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu"
adapter = get_adapter("mocap_npz")
BODY = make_subjects(1, seed=4)[0]


def motion_arrays(actions=("walk", "squat", "walk", "squat", "jump"), frames=40) -> dict[str, np.ndarray]:
    """A file in the cmu_train.npz format (metres, y up) built from synthetic motion."""
    seqs = [generate_motion(BODY, a, frames / 30.0, 30.0, sequence_seed(0, 0, a, k)) / 1000.0
            for k, a in enumerate(actions)]
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    return {
        "positions": np.concatenate(seqs).astype(np.float32),
        "seq_starts": np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64),
        "seq_lengths": lengths,
        "seq_names": np.array([f"{a}/{a}_{k}" for k, a in enumerate(actions)]),
        "actions": np.array(actions),
        "fps": np.array(30),
        "joint_names": np.array(SK.joint_names),
        "joint_parents": np.array(SK.parents, dtype=np.int64),
        "source": np.array("test"),
    }


def write(tmp_path: Path, arrays: dict, name: str = "motion.npz") -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def convert(path: Path, **options):
    return {p.name: p.frames for p in adapter.convert({"motion": path}, adapter.Options(**options), "mocap", SK)}


def test_converts_metres_to_camera_frame_millimetres(tmp_path):
    arrays = motion_arrays()
    path = write(tmp_path, arrays)
    parts = convert(path, cameras=2, test_sequences=["jump/jump_4"])
    assert list(parts) == ["train", "test"]
    train, test = parts["train"], parts["test"]
    assert train.num_frames == 2 * 40 * 4 and test.num_frames == 2 * 40
    assert set(test.video_id) == {"cmu_jump-jump_4.cam0", "cmu_jump-jump_4.cam1"}
    assert set(train.action) == {"walk", "squat"} and set(train.subject) == {"cmu"}
    rows = test.camera_id == "cam1"
    row = int(np.flatnonzero(rows)[0])
    cam = Camera.from_vectors(test.cam_intrinsics[row], test.cam_rotation[row], test.cam_translation[row], 1000, 1000)
    world = cam.camera_to_world(test.kp3d[rows].astype(np.float64))
    np.testing.assert_allclose(world, arrays["positions"][160:200] * 1000.0, atol=0.5)
    assert (test.fps == 30.0).all()


def test_joint_order_in_the_file_is_mapped_by_name(tmp_path):
    arrays = motion_arrays(frames=10)
    perm = np.random.default_rng(0).permutation(SK.num_joints)
    inverse = np.argsort(perm)
    shuffled = dict(arrays)
    shuffled["positions"] = arrays["positions"][:, perm]
    shuffled["joint_names"] = arrays["joint_names"][perm]
    shuffled["joint_parents"] = np.array([inverse[p] if p >= 0 else -1 for p in np.array(SK.parents)[perm]])
    plain = read_motion_npz(write(tmp_path, arrays, "a.npz"))
    mapped = read_motion_npz(write(tmp_path, shuffled, "b.npz"))
    for a, b in zip(plain, mapped):
        assert np.array_equal(a.positions, b.positions)


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        (lambda a: a.pop("seq_lengths"), "seq_lengths", "a key of the motion npz format"),
        (lambda a: a.update(positions=a["positions"][:, :16]), "positions", "shape (N, 17, 3)"),
        (lambda a: a.update(positions=a["positions"].astype(np.int32)), "positions", "a float array"),
        (lambda a: a["positions"].__setitem__((57, 3, 1), np.nan), "positions", "finite values, got NaN/inf at row 57"),
        (lambda a: a.update(seq_lengths=a["seq_lengths"] + 1), "seq_starts/seq_lengths", "start + length <= 200"),
        (lambda a: a.update(seq_starts=a["seq_starts"][:3]), "seq_lengths", "shape (3,) like seq_starts"),
        (lambda a: a.update(actions=a["actions"][:4]), "actions", "shape (5,)"),
        (lambda a: a.update(seq_names=np.array(["x"] * 5)), "seq_names", "unique sequence names"),
        (lambda a: a.update(fps=np.array([30, 30])), "fps", "one positive number"),
        (lambda a: a.update(fps=np.array(-1.0)), "fps", "one positive number"),
        (lambda a: a.update(joint_names=np.array(list(SK.joint_names[:-1]) + ["wrist"])), "joint_names", "r_wrist"),
        (lambda a: a.update(joint_parents=np.zeros(17, np.int64)), "joint_parents", "the h36m17 tree"),
        (lambda a: a.update(seq_names=np.array([None] * 5, dtype=object)), "<arrays>", "no pickled objects"),
    ],
)
def test_bad_files_name_the_file_and_the_key(tmp_path, change, field, expected):
    arrays = motion_arrays()
    change(arrays)
    path = write(tmp_path, arrays)
    with pytest.raises(DataFormatError) as info:
        convert(path)
    err = info.value
    assert err.path == str(path) and err.field == field
    assert str(err).startswith(f"{path}: field '{field}': expected ")
    assert expected in str(err)


def test_unreadable_or_missing_file(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(DataFormatError, match="a readable .npz"):
        convert(garbage)
    with pytest.raises(DataFormatError, match="an existing .npz file"):
        convert(tmp_path / "absent.npz")


def test_split_by_sequence_is_seeded_stratified_or_explicit():
    names = [f"s{i}" for i in range(20)]
    actions = ["a"] * 10 + ["b"] * 5 + ["c"] * 5
    first = split_by_sequence(names, actions, 0.2, None, seed=0)
    assert first.tolist() == split_by_sequence(names, actions, 0.2, None, seed=0).tolist()
    assert first[:10].sum() == 2 and first[10:15].sum() == 1 and first[15:].sum() == 1
    assert first.tolist() != split_by_sequence(names, actions, 0.2, None, seed=1).tolist()
    assert split_by_sequence(names, actions, 0.0, None, 0).sum() == 0
    assert np.flatnonzero(split_by_sequence(names, actions, 0.2, ["s3", "s7"], 0)).tolist() == [3, 7]
    with pytest.raises(ValueError, match=r"test_sequences \['zz'\]"):
        split_by_sequence(names, actions, 0.2, ["zz"], 0)


def test_sequence_selection(tmp_path):
    path = write(tmp_path, motion_arrays(frames=10))
    parts = convert(path, sequences=["squat", "walk/walk_0"], test_fraction=0.0, cameras=1)
    assert sorted(set(parts["train"].video_id)) == ["cmu_squat-squat_1.cam0", "cmu_squat-squat_3.cam0",
                                                    "cmu_walk-walk_0.cam0"]
    assert parts["test"].num_frames == 0
    with pytest.raises(ValueError, match="match no sequence"):
        convert(path, sequences=["dance"])


def test_cmu_motion_converts_and_is_plausible(tmp_path):
    path = CMU / "cmu_train.npz"
    if not path.exists():
        pytest.skip("reason: CMU data folder ../shared/data/cmu absent")
    sequences = read_motion_npz(path)
    assert len(sequences) == 63 and sum(len(s.positions) for s in sequences) == 11_070
    for seq in sequences:
        report = check_motion(seq.positions, seq.fps)
        assert report.passed, f"{seq.name}: {report}"
    thigh = SK.bone_lengths(sequences[0].positions)[0, [c for _, c in SK.bones].index(SK.index("r_knee"))]
    assert thigh == pytest.approx(430.0, abs=15.0)  # README: thigh 0.43 m
    parts = convert(path, sequences=["running", "walking/walking_1"], cameras=2)
    total = sum(len(s.positions) for s in sequences if s.action == "running" or s.name == "walking/walking_1")
    assert parts["train"].num_frames + parts["test"].num_frames == 2 * total
    assert parts["test"].num_frames > 0
    for name, frames in parts.items():
        back = read_keypoint_table(write_keypoint_table(frames, tmp_path / f"{name}.parquet"))
        assert back.num_frames == frames.num_frames
        assert np.isfinite(back.kp3d).all()


def test_several_files_with_subjects_split_by_subject_and_reject_joint_flips(tmp_path):
    """The CMU benchmark's layout: cmu_train.npz (no subjects key) + an extra file with a subject per
    sequence; split by subject; a take with a one-frame joint flip is rejected and counted."""
    first = write(tmp_path, motion_arrays(("walk", "squat")), "a.npz")
    extra = motion_arrays(("walk", "jump", "squat"))
    extra["seq_names"] = np.array(["x/walk", "x/jump", "x/squat"])
    extra["subjects"] = np.array(["07", "08", "08"])
    flipped = extra["positions"].copy()
    flipped[40 + 10, SK.index("l_wrist")] += np.float32(1.0)  # 1 m in one frame: 30 m/s at 30 fps
    extra["positions"] = flipped
    second = write(tmp_path, extra, "b.npz")
    options = adapter.Options(cameras=1, test_subjects=["08"], max_joint_speed_ms=20.0)
    parts = list(adapter.convert({"motion": first, "extra": second}, options, "mocap", SK))
    train, test = (p.frames for p in parts)
    assert set(train.subject) == {"cmu", "07"} and set(test.subject) == {"08"}
    assert set(test.video_id) == {"08_x-squat.cam0"}  # x/jump had the flip
    assert parts[0].notes["rejected_sequences"] == 1 and parts[0].notes["rejected_names"] == ["x/jump"]
    # without the speed limit the flipped take is kept
    kept = list(adapter.convert({"motion": first, "extra": second},
                                adapter.Options(cameras=1, test_subjects=["08"]), "mocap", SK))
    assert set(kept[1].frames.video_id) == {"08_x-squat.cam0", "08_x-jump.cam0"}
    with pytest.raises(ValueError, match=r"test_subjects \['99'\] are not among the subjects"):
        list(adapter.convert({"motion": first}, adapter.Options(cameras=1, test_subjects=["99"]), "mocap", SK))
    clash = write(tmp_path, motion_arrays(("walk",)), "c.npz")
    with pytest.raises(DataFormatError, match="seq_names"):
        list(adapter.convert({"motion": first, "more": clash}, adapter.Options(cameras=1), "mocap", SK))
