"""Per-track bone-length consistency (dualpose/video/bones.py) and its place in `dualpose infer`."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dualpose.cli import app
from dualpose.skeleton import H36M_17, Skeleton
from dualpose.video.bones import (BoneOptions, constrain_track, estimate_bone_lengths, impose_bone_lengths,
                                  mirror_bones, weighted_median)
from dualpose.video.sample import SAMPLE_FILE
from tests.video_support import tiny_weights

SK = H36M_17
METHODS = ("chain", "fit")


def symmetric_lengths(skeleton: Skeleton, rng: np.random.Generator) -> np.ndarray:
    lengths = rng.uniform(80.0, 450.0, len(skeleton.bones))
    return 0.5 * (lengths + lengths[mirror_bones(skeleton)])


def random_directions(frames: int, skeleton: Skeleton, rng: np.random.Generator) -> np.ndarray:
    d = rng.normal(size=(frames, len(skeleton.bones), 3))
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def pose_from(dirs: np.ndarray, lengths: np.ndarray, skeleton: Skeleton, root: np.ndarray | None = None) -> np.ndarray:
    """Forward kinematics: (F, B, 3) unit directions and (F, B) or (B,) lengths -> (F, J, 3)."""
    lengths = np.broadcast_to(lengths, dirs.shape[:2])
    out = np.zeros((len(dirs), skeleton.num_joints, 3))
    if root is not None:
        out[:, skeleton.root] = root
    done = {skeleton.root}
    while len(done) < skeleton.num_joints:  # parents before children, whatever the joint order
        for b, (p, c) in enumerate(skeleton.bones):
            if p in done and c not in done:
                out[:, c] = out[:, p] + lengths[:, b, None] * dirs[:, b]
                done.add(c)
    return out


def unit_bones(poses: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    p = np.array([a for a, _ in skeleton.bones])
    c = np.array([b for _, b in skeleton.bones])
    v = poses[:, c] - poses[:, p]
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture
def noisy_track():
    """60 frames with true (symmetric) lengths, every bone's length off by up to +-20 % per frame."""
    rng = np.random.default_rng(7)
    lengths = symmetric_lengths(SK, rng)
    dirs = random_directions(60, SK, rng)
    factors = rng.uniform(0.8, 1.2, (60, len(SK.bones)))
    return pose_from(dirs, lengths * factors, SK), lengths, dirs


@pytest.mark.parametrize("method", METHODS)
def test_lengths_are_constant_after_the_step(noisy_track, method):
    poses, _, _ = noisy_track
    raw_lengths = SK.bone_lengths(poses)
    assert (raw_lengths.std(0) / raw_lengths.mean(0)).mean() > 0.05  # the input does vary
    fixed, lengths = constrain_track(poses, SK, options=BoneOptions(method))
    out = SK.bone_lengths(fixed)
    np.testing.assert_allclose(out, np.broadcast_to(lengths, out.shape), rtol=1e-5)
    assert (out.std(0) / out.mean(0)).max() < 1e-5
    np.testing.assert_array_equal(fixed[:, SK.root], poses[:, SK.root])  # the root stays


def test_chain_keeps_every_bone_direction(noisy_track):
    poses, _, dirs = noisy_track
    fixed, _ = constrain_track(poses, SK, options=BoneOptions("chain"))
    np.testing.assert_allclose(unit_bones(fixed, SK), dirs, atol=1e-9)


def test_fit_is_closer_to_the_prediction_than_chain(noisy_track):
    poses, _, _ = noisy_track
    lengths = estimate_bone_lengths(poses, SK)
    chain = impose_bone_lengths(poses, SK, lengths, method="chain")
    costs = [np.sum((impose_bone_lengths(poses, SK, lengths, method="fit", iterations=k) - poses) ** 2)
             for k in (1, 3, 10)]
    assert costs[0] < np.sum((chain - poses) ** 2)
    assert costs[0] >= costs[1] >= costs[2]  # block coordinate descent never goes up
    # directions move, but little: the fit stays near the predicted directions
    fit = impose_bone_lengths(poses, SK, lengths, method="fit")
    cos = np.sum(unit_bones(fit, SK) * unit_bones(poses, SK), -1)
    assert np.median(cos) > np.cos(np.radians(15)) and cos.min() < 1 - 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_a_consistent_track_is_unchanged(method):
    rng = np.random.default_rng(1)
    lengths = symmetric_lengths(SK, rng)
    poses = pose_from(random_directions(25, SK, rng), lengths, SK, root=np.array([100.0, -20.0, 3000.0]))
    fixed, est = constrain_track(poses, SK, options=BoneOptions(method))
    np.testing.assert_allclose(est, lengths, rtol=1e-9)
    np.testing.assert_allclose(fixed, poses, atol=1e-9)
    # per-side lengths that differ left to right also stay, with symmetric=False
    lengths[0] *= 1.3
    poses = pose_from(random_directions(25, SK, rng), lengths, SK)
    fixed, est = constrain_track(poses, SK, options=BoneOptions(method, symmetric=False))
    np.testing.assert_allclose(fixed, poses, atol=1e-9)


def test_step_commutes_with_translation_and_scale(noisy_track):
    poses, _, _ = noisy_track
    shift = np.array([250.0, -1000.0, 4000.0])
    a, la = constrain_track(poses, SK)
    b, lb = constrain_track(poses * 3.0 + shift, SK)
    np.testing.assert_allclose(b, a * 3.0 + shift, atol=1e-6)
    np.testing.assert_allclose(lb, la * 3.0, rtol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_invalid_and_nan_frames_are_untouched_and_not_counted(noisy_track, method):
    poses, _, _ = noisy_track
    poses = poses.copy()
    valid = np.ones(len(poses), bool)
    poses[5] *= 4.0  # a wild frame, flagged invalid
    valid[5] = False
    poses[9, 3] = np.nan  # a frame with a missing joint
    reference = estimate_bone_lengths(np.delete(poses, [5, 9], 0), SK)
    fixed, lengths = constrain_track(poses, SK, valid=valid, options=BoneOptions(method))
    np.testing.assert_allclose(lengths, reference)
    np.testing.assert_array_equal(fixed[5], poses[5])
    np.testing.assert_array_equal(fixed[9], poses[9])  # NaN stays NaN, the rest is as given
    ok = np.setdiff1d(np.arange(len(poses)), [5, 9])
    np.testing.assert_allclose(SK.bone_lengths(fixed[ok]), np.broadcast_to(lengths, (len(ok), len(lengths))),
                               rtol=1e-5)


def test_no_usable_frame_and_any_track_length():
    empty = np.zeros((0, SK.num_joints, 3))
    fixed, lengths = constrain_track(empty, SK)
    assert fixed.shape == empty.shape and np.isnan(lengths).all()
    nan = np.full((3, SK.num_joints, 3), np.nan)
    fixed, lengths = constrain_track(nan, SK)
    assert np.isnan(fixed).all() and np.isnan(lengths).all()
    rng = np.random.default_rng(2)
    one = pose_from(random_directions(1, SK, rng), symmetric_lengths(SK, rng), SK)
    fixed, _ = constrain_track(one, SK)
    np.testing.assert_allclose(fixed, one, atol=1e-9)


def test_weighted_median_and_confidence_weighting():
    assert weighted_median([1.0, 2.0, 10.0], [1.0, 1.0, 5.0]) == 10.0
    assert weighted_median([3.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == 2.0
    assert weighted_median([1.0, 2.0], [1.0, 1.0]) == 1.5
    assert np.isnan(weighted_median([1.0], [0.0]))
    # a track whose right shin is 400 mm in 3 confident frames and 600 mm in 4 unsure ones
    rng = np.random.default_rng(3)
    lengths = symmetric_lengths(SK, rng)
    per_frame = np.tile(lengths, (7, 1))
    shin = [b for b, (p, c) in enumerate(SK.bones) if c == SK.index("r_ankle")][0]
    per_frame[:, shin] = [400, 400, 400, 600, 600, 600, 600]
    poses = pose_from(random_directions(7, SK, rng), per_frame, SK)
    conf = np.full((7, SK.num_joints), 0.9)
    conf[3:, SK.index("r_ankle")] = 0.1
    assert estimate_bone_lengths(poses, SK, symmetric=False)[shin] == pytest.approx(600)
    assert estimate_bone_lengths(poses, SK, conf, symmetric=False)[shin] == pytest.approx(400)
    left = mirror_bones(SK)[shin]
    sym = estimate_bone_lengths(poses, SK, conf, symmetric=True)
    assert sym[shin] == sym[left] == pytest.approx(0.5 * (400 + lengths[left]))


def test_any_skeleton_from_its_parent_table():
    """No joint count is built in: a 5-joint skeleton whose joints are not in parent-first order."""
    sk = Skeleton("toy", ("hand_l", "root", "elbow_l", "hand_r", "elbow_r"), (2, -1, 1, 4, 1),
                  flip_pairs=((2, 4), (0, 3)), root=1)
    rng = np.random.default_rng(4)
    lengths = symmetric_lengths(sk, rng)
    dirs = random_directions(40, sk, rng)
    poses = pose_from(dirs, lengths * rng.uniform(0.8, 1.2, (40, len(sk.bones))), sk)
    for method in METHODS:
        fixed, est = constrain_track(poses, sk, options=BoneOptions(method))
        np.testing.assert_allclose(sk.bone_lengths(fixed), np.broadcast_to(est, (40, len(est))), rtol=1e-5)
    fixed, _ = constrain_track(poses, sk)
    np.testing.assert_allclose(unit_bones(fixed, sk), dirs, atol=1e-9)


def test_bad_input_is_refused_with_a_clear_message():
    good = np.zeros((4, SK.num_joints, 3))
    with pytest.raises(ValueError, match=r"poses: expected shape \(frames, 17, 3\) for skeleton 'h36m17', "
                                         r"got \(4, 16, 3\)"):
        constrain_track(np.zeros((4, 16, 3)), SK)
    with pytest.raises(ValueError, match=r"poses: expected shape .* got \(17, 3\)"):
        estimate_bone_lengths(np.zeros((17, 3)), SK)
    with pytest.raises(ValueError, match=r"valid: expected shape \(4,\)"):
        constrain_track(good, SK, valid=np.ones(5, bool))
    with pytest.raises(ValueError, match=r"conf: expected shape \(4, 17\)"):
        constrain_track(good, SK, conf=np.ones((4, 16)))
    with pytest.raises(ValueError, match=r"lengths: expected shape \(16,\)"):
        impose_bone_lengths(good, SK, np.ones(15))
    with pytest.raises(ValueError, match="lengths: expected finite lengths >= 0"):
        impose_bone_lengths(good, SK, np.full(16, np.nan))
    with pytest.raises(ValueError, match="bone method 'spline': expected one of chain, fit"):
        BoneOptions("spline")


# --------------------------------------------------------------------------- in `dualpose infer`
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("w") / "tiny")


def _cv(poses: np.ndarray) -> np.ndarray:
    lengths = SK.bone_lengths(poses)
    return lengths.std(0) / lengths.mean(0)


def test_infer_fixes_bones_by_default_and_keeps_the_raw_3d(tmp_path, weights):
    out = tmp_path / "fixed"
    res = CliRunner().invoke(app, ["infer", str(SAMPLE_FILE), "--weights", str(weights), "--out", str(out),
                                   "--smooth", "--no-viewer"])
    assert res.exit_code == 0, res.output
    with np.load(out / "poses.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    assert meta["bone_lengths"]["mode"] == "fixed" and meta["bone_lengths"]["method"] == "chain"
    n = len(arrays["frame"])
    for key in ("poses_3d_raw", "poses_3d_mm_raw", "world_mm_raw"):
        assert arrays[key].shape == (n, 17, 3), key
    assert not np.allclose(arrays["poses_3d_mm"], arrays["poses_3d_mm_raw"])
    for track in meta["tracks"]:
        rows = arrays["track"] == track["id"]
        lengths = np.array(track["bone_lengths_mm"])
        assert lengths.shape == (16,) and (lengths > 0).all()
        raw_cv = _cv(arrays["poses_3d_mm_raw"][rows]).mean()
        assert raw_cv > 0.01  # the untrained test lifter's bones do vary...
        for key in ("poses_3d_mm", "world_mm", "poses_3d_mm_smooth", "world_mm_smooth"):
            assert _cv(arrays[key][rows]).max() < 1e-5, key  # ...the outputs' do not, smoothed ones included
            np.testing.assert_allclose(SK.bone_lengths(arrays[key][rows]).mean(0), lengths, rtol=1e-4)
        # raw and fixed share the root trajectory and world frame: same pelvis in the world
        np.testing.assert_allclose(arrays["world_mm_raw"][rows, 0], arrays["world_mm"][rows, 0], atol=1e-3)
        np.testing.assert_allclose(SK.bone_lengths(arrays["world_mm_raw"][rows]),
                                   SK.bone_lengths(arrays["poses_3d_mm_raw"][rows]), rtol=1e-4, atol=1e-2)
    table = pq.read_table(out / "poses.parquet")
    names = table.column_names
    for prefix in ("world", "world_smooth", "cam", "world_raw", "cam_raw"):
        assert f"{prefix}_l_knee_x_mm" in names, prefix
    knee = SK.index("l_knee")
    np.testing.assert_allclose(table.column("cam_raw_l_knee_z_mm").to_numpy(), arrays["poses_3d_mm_raw"][:, knee, 2])
    np.testing.assert_allclose(table.column("world_raw_l_knee_y_mm").to_numpy(), arrays["world_mm_raw"][:, knee, 1])
    assert json.loads(table.schema.metadata[b"dualpose"])["tracks"][0]["bone_lengths_mm"] == \
        meta["tracks"][0]["bone_lengths_mm"]
    doc = json.loads((out / "poses.json").read_text())
    rows0 = arrays["track"] == doc["tracks"][0]["id"]
    np.testing.assert_allclose(np.array(doc["tracks"][0]["world_mm_raw"]), arrays["world_mm_raw"][rows0], atol=0.051)
    header = (out / "poses.csv").read_text().splitlines()[0].split(",")
    assert "cam_raw_head_top_z_mm" in header and "world_raw_head_top_z_mm" in header

    # --bones raw: the lifter's output as it is, no *_raw copies
    raw_out = tmp_path / "raw"
    res = CliRunner().invoke(app, ["infer", str(SAMPLE_FILE), "--weights", str(weights), "--out", str(raw_out),
                                   "--bones", "raw", "--formats", "npz,parquet", "--no-viewer"])
    assert res.exit_code == 0, res.output
    with np.load(raw_out / "poses.npz", allow_pickle=False) as z:
        assert not {"poses_3d_raw", "poses_3d_mm_raw", "world_mm_raw"} & set(z.files)
        np.testing.assert_allclose(z["poses_3d"], arrays["poses_3d_raw"], atol=1e-6)
        assert json.loads(str(z["meta"]))["bone_lengths"] == {"mode": "raw"}
        assert json.loads(str(z["meta"]))["tracks"][0]["bone_lengths_mm"] is None
    columns = pq.read_table(raw_out / "poses.parquet").column_names
    assert not any(c.startswith(("world_raw_", "cam_raw_")) for c in columns)


def test_infer_refuses_an_unknown_bones_mode_before_any_work(tmp_path, weights):
    out = tmp_path / "bad"
    res = CliRunner().invoke(app, ["infer", str(SAMPLE_FILE), "--weights", str(weights), "--out", str(out),
                                   "--bones", "stiff"])
    assert res.exit_code != 0
    assert "--bones 'stiff': expected one of fixed, raw" in res.output
    assert not out.exists()
